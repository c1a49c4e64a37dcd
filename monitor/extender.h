/* The watermark extender: keeps the thin volumes of a running VM's drives
 * (the source top and, while a mirror runs, its destination) ahead of the
 * guest's writes, so that the VM never pauses for lack of space.
 *
 * Threads and ownership.  lsm_extender_start connects to libvirt and starts
 *   - one event-loop thread, which owns libvirt's event loop for the
 *     process: it receives BLOCK_THRESHOLD, IO_ERROR_REASON, LIFECYCLE and
 *     BLOCK_JOB_2 for the domain, records them and hands each to every
 *     subscriber; it never waits for an extension;
 *   - one worker thread per drive, which measures allocation, arms the
 *     thresholds, extends (the destination on a helper thread, at the same
 *     time as the source: block to block, neither waits for the other),
 *     retries and resumes.
 * Subscribers are called from either kind of thread, one event at a time
 * (a lock serialises delivery), and must not block or call back into the
 * extender.  The extender is the only user of libvirt's default event loop
 * while it runs: code that needs block-job events (the migrate flow) takes
 * them from lsm_extender_subscribe instead of running the loop itself.
 *
 * What is watched.  The drives named in opts (all disks backed by a block
 * device when none is named); for each, the top of its chain by its indexed
 * name (vda[N]) and, once libvirt reports a <mirror>, the mirror's
 * destination (its own index).  A side backed by a regular file needs
 * nothing and is only reported.  After a block job event (pivot, abort,
 * new mirror) and on every periodic check the live XML is read again, so a
 * pivot or a snapshot that changes indexes re-arms the new names.
 *
 * Events first, polling second: a threshold (physical - headroom, see
 * extend-policy.h) is armed on every side, re-armed after every extension
 * and after a failed set; a side found past it when arming is extended at
 * once; and every poll_ms the allocation is read anyway (missed events,
 * the destination when libvirt cannot arm it).
 *
 * Failures (extend-policy.h): no space in the VG, pool or file system, or
 * a failure retrying cannot fix: the side goes to FAILED at once, an event
 * says why, and lsm_extender_error returns it; transient ones are retried
 * with backoff up to max_retries, then the side fails too.
 *
 * Resume: a VM that paused for an I/O error is resumed only when
 * lsm_extend_may_resume says so (ENOSPC on drives this extender extended
 * since, all of them with their headroom again).
 *
 * Errors: -errno with a message (error.h); nothing here prints. */
#ifndef LSM_EXTENDER_H
#define LSM_EXTENDER_H

#include <stdbool.h>
#include <stdint.h>

#include "extend-policy.h"
#include "lat-hist.h"

enum lsm_monitor_event_type {
    /* libvirt's events, as received */
    LSM_MON_THRESHOLD,      /* target, path, threshold, excess */
    LSM_MON_IO_ERROR,       /* disk (when known), path, reason, action */
    LSM_MON_LIFECYCLE,      /* reason ("suspended/ioerror", "resumed/unpaused", ...) */
    LSM_MON_BLOCK_JOB,      /* disk, job_type, job_status */
    /* what the extender did */
    LSM_MON_ARMED,          /* side, target, threshold */
    LSM_MON_ARM_FAILED,     /* side, target, message */
    LSM_MON_EXTENDING,      /* side, old_size, new_size, allocation */
    LSM_MON_EXTENDED,       /* side, old_size, new_size, timing */
    LSM_MON_EXTEND_RETRY,   /* side, attempt, delay_ns, message */
    LSM_MON_FAILED,         /* side, failure, message: the side stays failed */
    LSM_MON_RESUMED,        /* the VM was resumed */
    LSM_MON_RESUME_REFUSED, /* reason: why not */
    LSM_MON_DOMAIN_STOPPED, /* the domain went away; the extender idles */
};

const char *lsm_monitor_event_name(enum lsm_monitor_event_type t);

/* Per-phase latency of one extension, nanoseconds.  wait: from the event
 * (or the check that found it) to the start of the extension; extend_dst,
 * extend_src: the backends' extend calls (concurrent, so the total is not
 * their sum); refresh: the slower side's refresh; rearm: setting the new
 * thresholds; total: event to re-armed. */
enum lsm_extend_phase {
    LSM_PHASE_WAIT, LSM_PHASE_EXTEND_DST, LSM_PHASE_EXTEND_SRC, LSM_PHASE_REFRESH,
    LSM_PHASE_REARM, LSM_PHASE_TOTAL, LSM_PHASES
};
const char *lsm_extend_phase_name(enum lsm_extend_phase p);

struct lsm_monitor_event {
    enum lsm_monitor_event_type type;
    uint64_t time_ns;           /* since the extender started */
    const char *disk;           /* vda, or NULL */
    const char *side;           /* "source", "mirror" or NULL */
    const char *target;         /* vda[3] */
    const char *path;
    const char *reason;
    const char *message;
    uint64_t threshold, excess;
    uint64_t allocation, old_size, new_size;
    int job_type, job_status;
    unsigned attempt, merged;
    uint64_t delay_ns;
    enum lsm_extend_failure failure;
    uint64_t phase_ns[LSM_PHASES];   /* EXTENDED: the phases, 0 if not run */
};

typedef void (*lsm_monitor_cb)(const struct lsm_monitor_event *ev, void *opaque);

#define LSM_EXTENDER_MAX_DRIVES 16

struct lsm_extender_opts {
    const char *uri;            /* NULL: qemu:///system */
    const char *domain;         /* name or UUID */
    const char *const *disks;   /* targets (vda); NULL/0: every block-backed disk */
    unsigned ndisks;
    struct lsm_extend_policy policy;
    const char *extend_cmd;     /* every block volume through this program */
    int extend_cmd_timeout_ms;  /* its time-out (<= 0: 60 s) */
    int poll_ms;                /* periodic allocation check (<= 0: 500) */
    bool no_resume;             /* never resume a paused VM */
    bool replicating;           /* the replicating chunk even with no mirror seen */
    lsm_monitor_cb cb;          /* first subscriber (may be NULL) */
    void *opaque;
};

enum lsm_side_state {
    LSM_SIDE_NONE = 0,          /* no such side (no mirror) */
    LSM_SIDE_UNMANAGED,         /* a regular file: nothing to do */
    LSM_SIDE_WATCHING,          /* threshold armed (or polled) */
    LSM_SIDE_EXTENDING,
    LSM_SIDE_RETRYING,
    LSM_SIDE_AT_MAX,            /* at its maximum size */
    LSM_SIDE_FAILED,
    LSM_SIDE_RAW,               /* a raw image: its size is the guest's, never extended */
};
const char *lsm_side_state_name(enum lsm_side_state s);

struct lsm_extender_side_status {
    enum lsm_side_state state;
    char path[256];
    char target[48];            /* vda[3] */
    const char *kind;           /* "loop", "lvm", "cmd", "file" (static) */
    bool armed;
    uint64_t allocation, physical, capacity, threshold, headroom, max_size;
    double rate_bps;            /* over the rate window */
    double planned_rate_bps;    /* the held peak the headroom is planned for */
    unsigned extensions, merged, retries, arm_failures;
    char error[512];            /* FAILED: why */
};

struct lsm_extender_drive_status {
    char disk[32];
    struct lsm_extender_side_status side[2];   /* [0] source, [1] mirror */
};

struct lsm_extender_status {
    unsigned ndrives;
    struct lsm_extender_drive_status drive[LSM_EXTENDER_MAX_DRIVES];
    bool replicating;
    bool paused;
    bool domain_stopped;
    unsigned resumes;
    uint64_t events[4];         /* threshold, io-error, lifecycle, block-job */
    uint64_t latency_ns;        /* the recent latency the policy uses */
    struct lsm_lat_hist phase[LSM_PHASES];
};

struct lsm_extender;

/* Connect, find the drives, start the threads.  Errors: no such domain or
 * disk (-ENOENT), the domain not running (-EINVAL), a drive whose volume no
 * backend can extend (-ENOTSUP), no drive to watch (-ENOENT); nothing is
 * started then. */
int lsm_extender_start(const struct lsm_extender_opts *o, struct lsm_extender **out);
/* Stop the threads (within about 200 ms, plus an extension that is
 * running: it is let finish, never cut short) and free. */
void lsm_extender_stop(struct lsm_extender *x);

/* Another subscriber (at most 8). */
int lsm_extender_subscribe(struct lsm_extender *x, lsm_monitor_cb cb, void *opaque);
/* The migrate flow: replication starts or ends (chunk_replicating or chunk). */
void lsm_extender_set_replicating(struct lsm_extender *x, bool on);
/* Check every drive now (after the caller changed the chain: snapshot,
 * pivot, new mirror). */
void lsm_extender_kick(struct lsm_extender *x);
/* Kick, and wait up to timeout_ms until every drive has been measured
 * since: a status read after it describes the chain as it is now.
 * Errors: -ETIMEDOUT, -ESRCH (the domain stopped, or the extender is
 * stopping). */
int lsm_extender_refresh(struct lsm_extender *x, int timeout_ms);
/* A copy of the state. */
void lsm_extender_status(struct lsm_extender *x, struct lsm_extender_status *st);
/* 0, or the first failure that left a side FAILED (its -errno; the
 * message is recorded again in the calling thread). */
int lsm_extender_error(struct lsm_extender *x);
/* Wait up to timeout_ms for a failure or for the domain to stop: 1 if one
 * happened, 0 on time-out. */
int lsm_extender_wait(struct lsm_extender *x, int timeout_ms);

#endif
