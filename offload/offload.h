/* The offload ladder: for each data extent of a copy, the ways of moving
 * it without passing the bytes through the copy's buffers, tried in order,
 * falling back per extent (never for the whole copy):
 *
 *   reflink (FICLONERANGE, shared blocks on one file system)
 *     -> copy_file_range (a server-side copy on NFS 4.2, SMB, Ceph, GPFS)
 *     -> a plugin (lsm-offload-NAME.so, include/lsm-offload.h; in auto
 *        mode the XCOPY backend, for two block devices)
 *     -> the --offload-cmd command (a vendor's own tool)
 *     -> (the caller's software copy, for whatever is left)
 *
 * A rung that cannot serve a source/destination pair at all (different
 * file systems, not SCSI, no 3PC, another target) is dropped for that
 * pair; a rung that fails on one range is not tried again for the rest of
 * that range, and is dropped for the pair after two failures in a row.
 * Bytes a rung reports as done are complete on the destination; the rest
 * of a range the caller copies itself, over whatever a failed rung may
 * have written there.
 *
 * The ladder is library code: it never prints; fatal errors return -errno
 * with a message (lsm_error); the reason a range was not offloaded is kept
 * for -C ("offload required") and verbose output.
 *
 * The engine (engine/copy.c) creates one ladder per copy and calls
 * lsm_offload_range for each data run whose bytes sit contiguously in a
 * source file.  CORE's endpoint layer is meant to own this call. */
#ifndef LSM_OFFLOAD_H
#define LSM_OFFLOAD_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "io.h"

enum lsm_offload_mode {
    LSM_OFFLOAD_NEVER = 0,
    LSM_OFFLOAD_AUTO,        /* every rung that applies */
    LSM_OFFLOAD_ONLY,        /* one named rung: reflink, copy_file_range, command or a plugin */
};

#define LSM_OFFLOAD_CMD_TIMEOUT_S 300

struct lsm_offload;

struct lsm_offload_opts {
    enum lsm_offload_mode mode;
    const char *name;               /* ONLY: the rung */
    const char *command;            /* --offload-cmd (NULL: none) */
    unsigned command_timeout_s;     /* one invocation (0: LSM_OFFLOAD_CMD_TIMEOUT_S) */
    volatile sig_atomic_t *cancel;  /* looked at between calls */
};

/* Bytes each rung moved. */
struct lsm_offload_counts {
    uint64_t reflink, copy_range, plugin, command;
    char plugin_name[32];           /* the plugin that moved bytes ("" if none) */
    char first_fallback[256];       /* why the first range not (all) offloaded was not ("" if none) */
};

/* Parse --offload=auto|never|NAME.  0 or -EINVAL. */
int lsm_offload_mode_parse(const char *arg, enum lsm_offload_mode *mode, const char **name);

/* Create a ladder.  With ONLY and a plugin name the plugin is loaded now
 * (missing module, or one of another interface version: -ENOENT/-ENOEXEC
 * with a message).  mode NEVER returns 0 with *out NULL. */
int lsm_offload_create(const struct lsm_offload_opts *o, struct lsm_offload **out);

/* Offload [src_off, src_off + len) of src to dst_off on dst.  Returns the
 * bytes done from the start of the range (0 to len; the caller copies the
 * rest), or -errno on an error that must end the copy (message recorded). */
int64_t lsm_offload_range(struct lsm_offload *ol, struct lsm_file *src, uint64_t src_off,
                          struct lsm_file *dst, uint64_t dst_off, uint64_t len);

/* Why the last range was not (all) offloaded ("" if it was). */
const char *lsm_offload_reason(const struct lsm_offload *ol);

void lsm_offload_get_counts(const struct lsm_offload *ol, struct lsm_offload_counts *out);

/* Ask a running plugin copy to return soon (async-signal-safe). */
void lsm_offload_cancel(struct lsm_offload *ol);

void lsm_offload_free(struct lsm_offload *ol);

/* Run the --offload-cmd protocol once (exported for the unit test):
 * CMD copy SRC SRC_OFFSET DST DST_OFFSET LENGTH through /bin/sh -c, with
 * stdin on /dev/null.  Returns bytes done (the "copied N" line of its
 * output, exit status 0), -EOPNOTSUPP (exit status 3: not for this pair),
 * -ETIMEDOUT, -EINTR (cancelled) or another -errno; why gets one line. */
int64_t lsm_offload_run_command(const char *cmd, const char *src, uint64_t src_off,
                                const char *dst, uint64_t dst_off, uint64_t len,
                                unsigned timeout_s, volatile sig_atomic_t *cancel, char *why,
                                size_t whylen);

#endif
