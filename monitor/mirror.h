/* Active-layer mirroring: keep a running VM's disk (or an active device)
 * written to both its source and a destination until they hold the same
 * data, then switch to the destination (pivot) or stay on the source (abort).
 *
 * Every backend is one file that fills a struct lsm_mirror_ops; the command
 * line and the migration flow only call the lsm_mirror_* functions below and
 * never name a backend.  Backends:
 *   - "libvirt" (mirror-libvirt.c): virDomainBlockCopy on a running domain's
 *     disk; the target is DOMAIN + DISK (a target name such as vda).
 *   - "dm" (to come, mirror-dm.c): a device-mapper mirror table over an
 *     active dm device; the target is that DEVICE.
 *
 * Life of a mirror, whatever the backend:
 *     NONE --start--> COPYING --(in sync)--> READY --finish--> NONE (on DST)
 *                       |                      |
 *                       +--(error)--> FAILED   +--abort--> NONE (on source)
 * While COPYING or READY every write of the VM reaches both sides.  READY
 * stays READY under further writes (the backend keeps both sides in step);
 * finish pivots only from READY.  abort is allowed in every phase and leaves
 * the VM on its source with nothing lost.
 *
 * Errors: negative errno with a message (error.h); nothing here prints.
 */
#ifndef LSM_MIRROR_H
#define LSM_MIRROR_H

#include <stdbool.h>
#include <stdint.h>

#include "image.h"

enum lsm_mirror_phase {
    LSM_MIRROR_NONE = 0,   /* no mirror on this disk/device */
    LSM_MIRROR_COPYING,    /* bulk copy running; writes reach both sides */
    LSM_MIRROR_READY,      /* in sync: finish may pivot */
    LSM_MIRROR_FAILED,     /* the mirror failed; the VM stays on the source */
};

/* "none", "copying", "ready", "failed" */
const char *lsm_mirror_phase_name(enum lsm_mirror_phase p);

struct lsm_mirror_status {
    enum lsm_mirror_phase phase;
    uint64_t cur, end;     /* progress in bytes; end == 0: not known yet */
    bool from_event;       /* the phase was learned from an event, not a poll */
};

/* Progress in percent (0..100), rounded down; 100 only when cur == end > 0. */
unsigned lsm_mirror_percent(const struct lsm_mirror_status *st);

/* What the mirror works on.  Backends take the fields they need and ignore
 * the others (open fails with a message if one they need is missing). */
struct lsm_mirror_target {
    const char *uri;       /* libvirt: connection URI (NULL: qemu:///system) */
    const char *domain;    /* libvirt: domain name or UUID */
    const char *disk;      /* libvirt: disk target (vda); dm: the device */
    /* libvirt: register no block-job event callback, so that status never
     * runs libvirt's event loop (another thread owns it: the extender, see
     * extender.h); READY is then learned by polling only. */
    bool no_events;
};

struct lsm_mirror_start_opts {
    const char *dst;           /* prepared destination (file or block device) */
    enum lsm_format dst_fmt;   /* LSM_FMT_AUTO: probed from DST's header */
    uint64_t bandwidth;        /* bytes/s during the bulk copy; 0: unlimited */
    uint64_t granularity;      /* dirty-tracking granularity; 0: backend default */
    uint64_t buf_size;         /* bytes in flight; 0: backend default */
    bool sync_writes;          /* guest writes complete only once on both sides */
};

struct lsm_mirror;

struct lsm_mirror_ops {
    const char *name;
    /* Connect and find the target; fill m->priv.  Unknown target: -ENOENT. */
    int (*open)(struct lsm_mirror *m, const struct lsm_mirror_target *t);
    void (*close)(struct lsm_mirror *m);
    /* Check DST and start mirroring.  A mirror already there: -EBUSY. */
    int (*start)(struct lsm_mirror *m, const struct lsm_mirror_start_opts *o);
    /* Current phase and progress. */
    int (*status)(struct lsm_mirror *m, struct lsm_mirror_status *st);
    /* Optional: block until something happened that may change the status
     * (an event) or for at most timeout_ms; the backend may return sooner
     * to be polled.  NULL: the caller sleeps and polls. */
    int (*wait)(struct lsm_mirror *m, int timeout_ms);
    /* Switch to the destination; called only in READY.  Returns once the
     * switch is done. */
    int (*pivot)(struct lsm_mirror *m);
    /* Stop mirroring, stay on the source.  Returns once stopped. */
    int (*cancel)(struct lsm_mirror *m);
    /* Paths (malloc'd): what the target reads and writes now, and the
     * destination of the running mirror (NULL if none).  Either pointer may
     * be NULL if the caller does not want it. */
    int (*paths)(struct lsm_mirror *m, char **source, char **mirror);
    /* Optional: 1 while a pivot or an abort that somebody asked for (this
     * process or one that was killed after asking) is still being carried
     * out, 0 when none is.  NULL: the backend's switches are synchronous in
     * the process that asks for them (nothing outlives it). */
    int (*switching)(struct lsm_mirror *m);
};

struct lsm_mirror {
    const struct lsm_mirror_ops *ops;
    const char *what;      /* "vda of domain d1" / "/dev/dm-3": for messages */
    void *priv;
};

/* Backend names compiled in, NULL-terminated. */
const char *const *lsm_mirror_backends(void);

/* Open backend NAME on target t. */
int lsm_mirror_open(const char *backend, const struct lsm_mirror_target *t,
                    struct lsm_mirror **out);
void lsm_mirror_close(struct lsm_mirror *m);

int lsm_mirror_start(struct lsm_mirror *m, const struct lsm_mirror_start_opts *o);
int lsm_mirror_status(struct lsm_mirror *m, struct lsm_mirror_status *st);
/* See struct lsm_mirror_ops.paths. */
int lsm_mirror_paths(struct lsm_mirror *m, char **source, char **mirror);

/* Wait until READY.  timeout_ms < 0: no limit.  A mirror that fails or
 * disappears while waiting is an error; -ETIMEDOUT when time is up. */
int lsm_mirror_wait_ready(struct lsm_mirror *m, int64_t timeout_ms,
                          struct lsm_mirror_status *st);

/* Pivot to the destination.  Not READY and !wait: -EAGAIN with
 * "not ready yet (N% copied)".  With wait, waits up to
 * timeout_ms (< 0: no limit) first.  On success *active (malloc'd, may be
 * NULL if not wanted) is the source the target uses afterwards, read back
 * from the backend; it is checked to be the destination.  *st (may be NULL)
 * is the status that allowed the pivot. */
int lsm_mirror_finish(struct lsm_mirror *m, bool wait, int64_t timeout_ms,
                      struct lsm_mirror_status *st, char **active);

/* Cancel the mirror and stay on the source; *active as for finish, checked
 * to be the source the target used before. */
int lsm_mirror_abort(struct lsm_mirror *m, char **active);

/* Wait until no pivot or abort is in progress on the target (see
 * struct lsm_mirror_ops.switching), polling for at most timeout_ms (< 0:
 * no limit); -ETIMEDOUT if one still is; then query the job once (libvirt
 * runs the query after a block copy still being set up).  A process that
 * resumes after a kill calls this before reading which file the target
 * uses: a pivot the killed process asked for may still be finishing, or
 * its block copy still starting. */
int lsm_mirror_settle(struct lsm_mirror *m, int64_t timeout_ms);

/* Do two paths name the same file or device (same inode, or the same
 * device number for block devices)?  Falls back to comparing the strings
 * when either cannot be stat'ed. */
bool lsm_same_file(const char *a, const char *b);

#endif
