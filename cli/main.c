/* lsm-sync: command dispatch.  Each command lives in its own cmd-*.c. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "cli.h"
#include "util.h"

static const struct lsm_command commands[] = {
    { "info", "show information about an image or a backing chain", cmd_info },
    { "map", "show the allocation of an image chain (like qemu-img map)", cmd_map },
#ifdef LSM_HAVE_CMD_COPY
    { "copy", "copy a volume, skipping unallocated extents", cmd_copy },
#endif
    { "clone-structure", "create a chain's volumes, empty, in another storage domain", cmd_clone_structure },
    { "sync", "copy the data of a chain's volumes layer by layer (syncImageData)", cmd_sync },
    { "compare", "compare what a guest sees in two images or chains", cmd_compare },
#ifdef LSM_HAVE_CMD_CHECKSUM
    { "checksum", "print the block-based checksum of an image's or a chain's guest view", cmd_checksum },
#endif
#ifdef LSM_HAVE_CMD_REPLICATE
    { "replicate", "mirror an active volume (libvirt or device-mapper) and pivot", cmd_replicate },
#endif
#ifdef LSM_HAVE_CMD_SERVE
    { "serve", "run the worker service: JSON-RPC image tasks on a Unix socket", cmd_serve },
    { "task", "list, watch, stop and clear the tasks of a running service", cmd_task },
#endif
#ifdef LSM_HAVE_CMD_MIGRATE
    { "migrate", "move a running VM's disks to another storage domain (snapshot, mirror, sync, pivot)", cmd_migrate },
#endif
#ifdef LSM_HAVE_CMD_MONITOR
    { "monitor", "extend a running VM's thin volumes ahead of its writes (watermark extender)", cmd_monitor },
#endif
#ifdef LSM_HAVE_CMD_BENCH
    { "bench", "measure the I/O path with fio-style jobs", cmd_bench },
#endif
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: lsm-sync [--version] [--help] COMMAND [ARGS...]\n\n"
               "Block-layer copy engine for live storage migration.\n\nCommands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun 'lsm-sync COMMAND --help' for a command's options.\n");
}

void cli_error(const char *what, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "lsm-sync: %s: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_fail(const char *what)
{
    const char *msg = lsm_last_error();
    cli_error(what, "%s", *msg ? msg : "failed");
    return EXIT_OPERATIONAL;
}

int cli_fail_busy(const char *what)
{
    cli_error(what, "%s (-U/--force-share reads it anyway)", lsm_last_error());
    return EXIT_OPERATIONAL;
}

bool cli_open_image(const char *what, const char *path, enum lsm_format fmt, unsigned flags,
                    struct lsm_image **out)
{
    int r = lsm_image_open(path, fmt, flags, out);
    if (r == 0)
        return true;
    if (r == -EAGAIN && !(flags & LSM_OPEN_FORCE_SHARE))
        cli_fail_busy(what);
    else
        cli_fail(what);
    return false;
}

int cli_usage_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "lsm-sync: %s: ", command);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'lsm-sync %s --help' for more information.\n", command);
    return EXIT_USAGE;
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "lsm-sync: warning: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

bool cli_parse_size(const char *command, const char *option, const char *arg, uint64_t *out)
{
    if (lsm_parse_size(arg, out) < 0) {
        cli_usage_error(command, "invalid size for %s: '%s'", option, arg);
        return false;
    }
    return true;
}

bool cli_parse_output(const char *command, const char *arg, enum cli_output *out)
{
    if (!strcmp(arg, "human"))
        *out = CLI_OUTPUT_HUMAN;
    else if (!strcmp(arg, "json"))
        *out = CLI_OUTPUT_JSON;
    else {
        cli_usage_error(command, "--output must be 'human' or 'json', not '%s'", arg);
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    /* A closed pipe on stdout must give an error, not kill us silently. */
    signal(SIGPIPE, SIG_IGN);

    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("lsm-sync %s\n", LSM_VERSION);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        if (!strcmp(cmd, commands[i].name)) {
            int rc = commands[i].run(argc - 1, argv + 1);
            if (fflush(stdout) != 0 || ferror(stdout)) {
                cli_error(cmd, "cannot write output: %m");
                return EXIT_OPERATIONAL;
            }
            return rc;
        }
    fprintf(stderr, "lsm-sync: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
