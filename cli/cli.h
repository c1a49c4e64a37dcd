/* Shared helpers of the command line: the only layer that prints. */
#ifndef LSM_CLI_H
#define LSM_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include "error.h"
#include "blkhash.h"
#include "image.h"

#define EXIT_OPERATIONAL 1
#define EXIT_USAGE 2

struct lsm_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);   /* argv[0] is the command name */
};

/* "lsm-sync: WHAT: MESSAGE" on stderr. */
void cli_error(const char *what, const char *fmt, ...) LSM_PRINTF(2, 3);
/* Print the library's last error for WHAT; returns EXIT_OPERATIONAL. */
int cli_fail(const char *what);
/* cli_fail for a lock conflict of a reader (-EAGAIN from lsm_image_open):
 * the message says that -U/--force-share reads the image anyway. */
int cli_fail_busy(const char *what);
/* Open an image (and its chain, per flags) for a reading command: on failure
 * print one line (with the -U hint when another process holds it) and
 * return false. */
bool cli_open_image(const char *what, const char *path, enum lsm_format fmt, unsigned flags,
                    struct lsm_image **out);
/* Usage error for COMMAND: message plus a hint; returns EXIT_USAGE. */
int cli_usage_error(const char *command, const char *fmt, ...) LSM_PRINTF(2, 3);
/* "lsm-sync: warning: ..." */
void cli_warn(const char *fmt, ...) LSM_PRINTF(1, 2);
/* Parse a size option; prints a usage error and returns false on bad input. */
bool cli_parse_size(const char *command, const char *option, const char *arg, uint64_t *out);

/* --output=human|json */
enum cli_output { CLI_OUTPUT_HUMAN, CLI_OUTPUT_JSON };
bool cli_parse_output(const char *command, const char *arg, enum cli_output *out);

/* copy's and sync's --offload, --offload-cmd and --offload-timeout into o
 * (cli/cmd-copy.c); false after a usage error was printed. */
struct lsm_copy_opts;
enum cli_offload_opt { CLI_OFFLOAD_MODE, CLI_OFFLOAD_CMD, CLI_OFFLOAD_TIMEOUT };
bool cli_parse_offload(const char *command, enum cli_offload_opt which, const char *arg,
                       struct lsm_copy_opts *o);
/* copy's and sync's --checksum[=ALGO] and --checkpoint-interval=SIZE[,SECONDS]
 * (cli/cmd-copy.c; arg is cut at its comma); false after a usage error. */
bool cli_parse_checksum(const char *command, const char *arg, struct lsm_copy_opts *o);
bool cli_parse_checkpoint(const char *command, char *arg, struct lsm_copy_opts *o);
const char *cli_checksum_alg_name(enum lsm_blkhash_alg alg);

/* Commands (one file each). */
int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_copy(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_clone_structure(int argc, char **argv);
int cmd_sync(int argc, char **argv);
int cmd_replicate(int argc, char **argv);
int cmd_checksum(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_task(int argc, char **argv);
int cmd_monitor(int argc, char **argv);
int cmd_migrate(int argc, char **argv);

#endif
