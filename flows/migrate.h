/* migrate as a library: the whole live storage migration of some disks of
 * a running libvirt domain to another storage domain (docs/migrate.md).
 *
 *   1. snapshot  one live external disk-only snapshot of every named disk
 *                at once (DISK_ONLY | REUSE_EXT | NO_METADATA | ATOMIC) onto
 *                overlays this flow creates next to each current leaf;
 *   2. clone     clone-structure of each disk's chain (overlay included) to
 *                the destination domain;
 *   3. replicate a shallow block copy (REUSE_EXT) of each disk onto its
 *                cloned overlay, in background mode; the watermark extender
 *                runs when a block volume is involved;
 *   4. sync      sync --type=INTERNAL of every disk, all at once (the layers
 *                below the overlays no longer change);
 *   5. pivot     once every mirror is ready, every disk in turn.
 *
 * Commit point: the first successful pivot.  Before it every failure, a
 * cancel and a --rollback abort every mirror, keep the VM on its source
 * and remove what this run created on the destination (and the overlays
 * the VM does not use).  After it the VM writes to the destination, so
 * nothing is rolled back: the remaining disks are pivoted, and a disk whose
 * pivot misses the deadline keeps mirroring (both sides in step) and is
 * reported; a resume pivots it.
 *
 * State: a small JSON journal (STATE_DIR/DOMAIN.json) written atomically
 * at every step; a run killed half way is finished (resume) or undone
 * (rollback) from it.
 *
 * Library layer: never prints; -errno with a message (error.h). */
#ifndef LSM_FLOWS_MIGRATE_H
#define LSM_FLOWS_MIGRATE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "blkhash.h"
#include "domain.h"

struct lsm_extend_policy;

#define LSM_MIGRATE_MAX_DISKS 16
#define LSM_MIGRATE_DEFAULT_STATE_DIR "/var/lib/lsm-sync/migrate"

enum lsm_migrate_sync_writes {
    LSM_MIGRATE_SW_AUTO,      /* background; restarted synchronous when not converging */
    LSM_MIGRATE_SW_ALWAYS,    /* synchronous writes from the start */
    LSM_MIGRATE_SW_NEVER,     /* background only (not converging: fails at the deadline) */
};
/* "auto", "always", "never"; -EINVAL (no message) for anything else. */
int lsm_migrate_sync_writes_parse(const char *s, enum lsm_migrate_sync_writes *out);

enum lsm_migrate_mode {
    LSM_MIGRATE_START,        /* a new migration (refused when a journal exists) */
    LSM_MIGRATE_RESUME,       /* finish the journal's migration */
    LSM_MIGRATE_ROLLBACK,     /* undo it (refused past the commit point) */
};

/* Parse TEXT as the journal of DOMAIN's migration, as --resume and
 * --rollback read it, and free what was read: 0, or -EINVAL with a
 * message.  (For the fuzz target, tests/fuzz/fuzz-migrate-journal.c.) */
int lsm_migrate_journal_check(const char *domain, const char *text);

/* The phases, in order; "rollback" and "done" end a run. */
#define LSM_MIGRATE_PHASES "snapshot, clone, replicate, sync, pivot"

struct lsm_migrate_disk_progress {
    const char *disk;
    const char *mirror;       /* mirror phase: none, copying, ready, failed */
    uint64_t cur, end;        /* the mirror's progress */
    bool sync_writes;
    bool synced, pivoted;
};

struct lsm_migrate_progress {
    const char *phase;        /* snapshot, clone, replicate, sync, pivot, rollback, done */
    const char *message;      /* what just happened, or NULL (a periodic report) */
    uint64_t sync_done, sync_total;   /* sync: bytes of every disk's internal layers */
    double elapsed_s;
    unsigned ndisks;
    struct lsm_migrate_disk_progress disk[LSM_MIGRATE_MAX_DISKS];
};
typedef void (*lsm_migrate_progress_fn)(const struct lsm_migrate_progress *p, void *opaque);

struct lsm_migrate_opts {
    enum lsm_migrate_mode mode;
    const char *uri;                  /* NULL: qemu:///system */
    const char *domain;
    /* START: the disks (targets) and the destination.  RESUME and
     * ROLLBACK take them from the journal (given, they must match). */
    const char *const *disks;
    unsigned ndisks;
    enum lsm_domain_kind dst_kind;
    const char *dst_domain;           /* directory or VG; NULL on resume/rollback */
    const char *state_dir;            /* NULL: LSM_MIGRATE_DEFAULT_STATE_DIR */
    enum lsm_migrate_sync_writes sync_writes;
    unsigned stall_ms;                /* auto: restart after the remaining work did not
                                         shrink for this long (0: 30 s) */
    int64_t ready_timeout_ms;         /* after the sync, every mirror ready within (0: 600 s) */
    int64_t pivot_timeout_ms;         /* every pivot done within (0: 60 s) */
    uint64_t bandwidth;               /* mirrors' bulk copy, bytes/s (0: unlimited) */
    uint64_t sync_rate;               /* each volume copy of the sync, bytes/s (0: unlimited) */
    unsigned parallel;                /* volumes per disk's sync at once (0: the sync default) */
    /* The watermark extender's policy (NULL: lsm_extend_policy_default);
     * the new leaves on block domains (the snapshot's overlay, the
     * destination top) are made as large as its first extension would
     * make them (lsm_extend_initial_size). */
    const struct lsm_extend_policy *extend_policy;
    /* Do not check, before the first pivot, that the synced internal
     * layers show the guest what the source's do (their block hashes). */
    bool no_checksum;
    const char *fail_at;              /* tests: fail at the start of this phase, or
                                         "commit": every pivot after the first fails;
                                         "pivot-wait": the first pivot, "commit-wait":
                                         every one after it, not ready (-EAGAIN) until
                                         the pivot deadline */
    volatile sig_atomic_t *cancel;    /* set non-zero to stop (a signal handler) */
    lsm_migrate_progress_fn progress; /* called on the calling thread */
    void *opaque;
};

enum lsm_migrate_outcome {
    LSM_MIGRATE_DONE,         /* every disk runs on the destination; journal removed */
    LSM_MIGRATE_ROLLED_BACK,  /* every disk on its source, this run's destination volumes
                                 removed; journal removed */
    LSM_MIGRATE_PARTIAL,      /* past the commit point, some disks not pivoted (journal kept) */
    LSM_MIGRATE_STOPPED,      /* failed where nothing could be cleaned (journal kept) */
};
const char *lsm_migrate_outcome_name(enum lsm_migrate_outcome o);

struct lsm_migrate_disk_result {
    char disk[32];
    char *active;             /* what the disk uses now (NULL: not known) */
    char *dst_top;            /* the destination leaf (NULL before the clone) */
    char *overlay;            /* the snapshot's overlay (NULL before the snapshot) */
    unsigned extensions[2];   /* by the extender: [0] the source top, [1] the mirror's */
    /* verified: the block hash (checksum.h, sha256, 4 MiB blocks) of the
     * internal layers' guest view, equal on both sides; "" if not verified */
    char checksum[LSM_BLKHASH_HEX_LEN];
    bool on_destination;
    bool sync_writes;         /* the mirror ran (or was restarted) with synchronous writes */
    unsigned restarts;        /* restarts for convergence */
};

struct lsm_migrate_result {
    enum lsm_migrate_outcome outcome;
    bool committed;           /* a disk pivoted */
    unsigned ndisks;
    struct lsm_migrate_disk_result disk[LSM_MIGRATE_MAX_DISKS];
    unsigned removed;         /* destination volumes (and unused overlays) removed */
    char *journal;            /* the journal's path */
    char *failed_phase;       /* where it failed, or NULL */
    char reason[512];         /* why it failed or rolled back (empty when done) */
    double seconds;
    bool extender;            /* the watermark extender ran (a block volume to watch) */
    unsigned pauses;          /* times the VM paused on an I/O error while it ran */
};

/* Run (or resume, or roll back) a migration.  0: res->outcome DONE (or
 * ROLLED_BACK for an asked-for rollback).  -errno with a message otherwise:
 * res (always filled; lsm_migrate_result_free) says what state everything
 * is in. */
int lsm_migrate(const struct lsm_migrate_opts *o, struct lsm_migrate_result *res);
void lsm_migrate_result_free(struct lsm_migrate_result *res);

#endif
