/* sync (syncImageData) as a library: copy the data of the volumes of a
 * chain, layer by layer (each destination volume receives only its source
 * volume's own layer), into a destination chain of the same structure.
 *
 * The volumes of a chain are independent copies (each of its own layer
 * into its own volume): up to `parallel` of them run at once, each as a job
 * (job.h) under one limiter, their buffers drawn from the process-wide
 * memory budget.  The command line, the worker service and migrate call
 * this.
 *
 * Library layer: never prints. */
#ifndef LSM_FLOWS_SYNC_H
#define LSM_FLOWS_SYNC_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "flow-copy.h"
#include "job.h"

enum lsm_sync_type { LSM_SYNC_ALL, LSM_SYNC_INTERNAL, LSM_SYNC_LEAF };
/* "ALL", "INTERNAL", "LEAF" */
const char *lsm_sync_type_name(enum lsm_sync_type t);
/* Case-insensitive; -EINVAL (no message) for anything else. */
int lsm_sync_type_parse(const char *s, enum lsm_sync_type *out);

/* Volumes copied at once by default: enough to overlap the latency of one
 * volume's small or sparse layer with another's data, few enough that the
 * buffer memory (divided between them) still keeps 8 requests of 1 MiB in
 * flight per volume at the default 32 MiB. */
#define LSM_SYNC_DEFAULT_PARALLEL 4
#define LSM_SYNC_MAX_PARALLEL 64
#define LSM_SYNC_DEFAULT_BUFFER (32ULL << 20)

struct lsm_sync_opts {
    enum lsm_sync_type type;
    /* The chains: SRC_TOP and DST_TOP, or a job file (docs/chains.md) that
     * names every volume (then src_top and dst_top are NULL). */
    const char *src_top, *dst_top;
    const char *jobfile;
    unsigned parallel;            /* 0: LSM_SYNC_DEFAULT_PARALLEL; at most the volumes */
    /* Per volume: io_kind, direct, requests, request_size, rate (a limit
     * per volume copy), checkpoint_bytes and checkpoint_ms (with journal).
     * buffer_size is for the whole sync (0: 32 MiB), divided between the
     * volumes copied at once.  Paths, formats, backing, journal, resume,
     * checksum, cancel, limiter and callbacks in here are ignored. */
    struct lsm_copy_opts copy;
    /* Durable progress (docs/resume.md, "sync"): the sync's journal at
     * journal (which volumes are done, with the identities of their source
     * and destination), and beside it, for each volume in progress, its
     * copy's journal (journal.N, N the volume's place, base first: 0, 1,
     * ...).  A new sync refuses a journal (or a volume journal) that
     * exists; resume continues the sync it describes: volumes done are not
     * copied again (their files must be unchanged), the others resume
     * from their copy's journal.  All of them go when the sync succeeds. */
    const char *journal;
    bool resume;
    /* Each destination volume's block hash (blkhash.h; what `lsm-sync
     * checksum` gives for it: its guest view, the chain below it
     * included), read back once every volume is synced.  Needs
     * libsodium. */
    bool checksum;
    enum lsm_blkhash_alg checksum_alg;
    uint32_t checksum_block_size;     /* 0: 4 MiB */
    struct lsm_limiter *limiter;  /* every volume's copy under it (a job's, a global one), or NULL */
    volatile sig_atomic_t *cancel;/* set non-zero to stop (seen within 50 ms) */
    /* Called with a lock held, from the volumes' threads. */
    lsm_copy_progress_fn progress;/* data bytes of all volumes: done of total (the maps') */
    lsm_copy_warn_fn warn;
    void *opaque;
    /* When set (lsm_sync_job_create does it): the job's progress is the sum
     * of the volumes' progress by class, its phase "copying". */
    struct lsm_job *job;
};

struct lsm_sync_volume {
    char *src_path, *dst_path;
    uint64_t bytes;                  /* this layer's data, from its map */
    int result;                      /* 0 synced, < 0 failed (-errno), 1 not started */
    char error[LSM_JOB_MESSAGE_MAX]; /* failed: the message */
    struct lsm_copy_stats st;        /* synced: the copy's statistics */
    bool already_done;               /* resume: synced before, not copied by this run */
    bool checksummed;                /* opts.checksum: checksum holds the digest (hex) */
    char checksum[LSM_BLKHASH_HEX_LEN];
};

struct lsm_sync_result {
    enum lsm_sync_type type;
    bool started;                    /* the checks passed and copying began */
    unsigned nvols;
    struct lsm_sync_volume *v;       /* the volumes copied, base first */
    uint64_t bytes_total;            /* sum of bytes */
    uint64_t bytes_done;             /* of the volumes synced */
    double seconds;                  /* copying */
    bool cancelled;
    bool resumed;                    /* opts.resume: a journal was continued */
    uint64_t bytes_redone;           /* resume: the volumes' bytes_redone, summed */
    bool journal_kept;               /* on failure: the journal is kept for a resume */
};

/* Run a sync.  0: every volume synced, durable.  -errno with a message:
 * either a check failed before anything was written (res->started false;
 * nothing written), or a volume failed or the sync was cancelled
 * (res->started true; res->v says which volume did what; a failed volume
 * is incomplete, volumes not started are as they were).  After the first
 * failure no further volume starts; those running finish.  res is always
 * filled (free it with lsm_sync_result_free). */
int lsm_sync(const struct lsm_sync_opts *o, struct lsm_sync_result *res);
void lsm_sync_result_free(struct lsm_sync_result *res);

/* A sync as a job: the options copied (strings duplicated), o->cancel,
 * o->limiter and o->job replaced by the job's own (give jo->parent for a
 * global limiter); the callbacks, if any, are called on the job's
 * threads.  jo->kind defaults to "sync". */
int lsm_sync_job_create(const struct lsm_sync_opts *o, const struct lsm_job_opts *jo,
                        struct lsm_job **out);
/* The sync's result once lsm_job_wait() returned 0 (NULL before); owned by
 * the job. */
const struct lsm_sync_result *lsm_sync_job_result(struct lsm_job *job);

#endif
