/* The copy engine: extents in, requests out, between two endpoints.
 *
 *   source endpoint (endpoint/endpoint.h: extents, asynchronous reads,
 *                    a check after the copy)
 *     -> plan (struct lsm_plan: destination-granule-aligned runs: skip /
 *        zero / data / mixed; a source in host order (a physical copy)
 *        gives its data extents as runs directly)
 *     -> pipeline (many requests in flight on one loop; reads complete out
 *        of order, writes are issued as each request's reads complete)
 *     -> destination endpoint (writes, zeroes, flush, finish; optionally
 *        copy_range for offload)
 *
 * The engine names no backend: what is a file, a qcow2 image or an NBD
 * export is decided in flows/ (flows/copy.h has lsm_copy(), the copy from
 * paths).  It never prints: failures return -errno with a message recorded
 * by lsm_error(); progress and records go to callbacks.
 */
#ifndef LSM_COPY_H
#define LSM_COPY_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkhash.h"
#include "endpoint.h"
#include "job.h"

struct lsm_journal;
struct lsm_limiter;

/* ---- Plan: granule-aligned runs ----
 *
 * The destination has a granularity (its cluster size, or a block size for
 * raw).  The plan merges the source's extents into runs whose ends are
 * granule-aligned (except at the end of the disk):
 *   SKIP   nothing to do (absent in the copied layer)
 *   ZERO   reads as zeroes
 *   DATA   one extent's data, contiguous at the extent's cookie loc/loc_off
 *          (loc may be NULL: the endpoint finds the bytes itself)
 *   MIXED  granules mixing kinds or discontiguous cookies: read without a
 *          cookie (the endpoint reads the guest range as it can)
 */
enum lsm_run_kind { LSM_RUN_SKIP, LSM_RUN_ZERO, LSM_RUN_DATA, LSM_RUN_MIXED };

struct lsm_run {
    uint64_t start, length;
    enum lsm_run_kind kind;
    const void *loc;          /* DATA: the extent's cookie (may be NULL) and offset */
    uint64_t loc_off;
};

#define LSM_PLAN_EXTENTS 64

struct lsm_plan {
    struct lsm_ep *src;
    uint64_t size;
    uint64_t granule;
    uint64_t pos;             /* next offset to plan */
    bool one_layer_zero_mixed;/* ZERO+ABSENT in one granule must be read (backing under dst) */
    bool have_cur;
    struct lsm_ep_extent cur; /* current source extent, cut at pos */
    struct lsm_ep_extent buf[LSM_PLAN_EXTENTS];
    unsigned nbuf, next;      /* extents fetched, next to use */
    uint64_t fetched;         /* where the fetched extents end */
};

/* Plan [0, size) of src (size <= src->caps.size). */
void lsm_plan_init(struct lsm_plan *p, struct lsm_ep *src, uint64_t size, uint64_t granule,
                   bool absent_zero_mixed_is_data);
/* 1 with *r filled, 0 at the end, -errno. */
int lsm_plan_next(struct lsm_plan *p, struct lsm_run *r);

/* ---- Small helpers (unit-tested) ---- */

/* True if len bytes at buf are all zero (word-wise; buf 8-byte aligned). */
bool lsm_is_zero(const void *buf, size_t len);

/* Token bucket: rate bytes per second, burst bytes. */
struct lsm_ratelimit {
    uint64_t rate;            /* 0: unlimited */
    uint64_t burst;
    double tokens;
    uint64_t last_ns;
};
void lsm_ratelimit_init(struct lsm_ratelimit *rl, uint64_t rate, uint64_t burst, uint64_t now_ns);
/* Take `bytes` tokens at now_ns: returns 0 if taken, else the nanoseconds
 * to wait before asking again (nothing taken).  A request larger than the
 * burst is allowed once the bucket is full. */
uint64_t lsm_ratelimit_take(struct lsm_ratelimit *rl, uint64_t bytes, uint64_t now_ns);

/* ---- The pipeline ---- */

/* Completed-extent recorder: [start, start+len) of the source's address
 * space (guest offsets, or file offsets for a source in host order) is
 * written to the destination (not yet flushed: a resumer must treat ranges
 * as durable only after the copy's final flush, signalled by a call with
 * len == 0).  Return <0 to abort. */
typedef int (*lsm_copy_record_fn)(void *opaque, uint64_t start, uint64_t len);
/* Progress: bytes done of bytes total. */
typedef void (*lsm_copy_progress_fn)(void *opaque, uint64_t done, uint64_t total);
/* Progress by class (a job's view): total is the source's size (guest
 * bytes; host bytes of the file for a physical copy), done is written +
 * zeroed + skipped, and reaches total when the copy succeeds.  Called as
 * requests complete and ranges are skipped or zeroed; cheap callers only. */
typedef void (*lsm_copy_job_progress_fn)(void *opaque, const struct lsm_job_progress *p);

struct lsm_engine_params {
    uint64_t size;                    /* bytes to copy from offset 0 (0: the source's size) */
    unsigned requests;                /* requests in flight (0: 16) */
    uint64_t request_size;            /* bytes per request, a power of two >= 4096 (0: 1 MiB) */
    uint64_t buffer_size;             /* memory for buffers (0: 32 MiB), reserved from the
                                         process-wide budget (budget.h) */
    uint64_t rate;                    /* bytes/s (0: unlimited): a private limiter,
                                         under `limiter` when both are set */
    struct lsm_limiter *limiter;      /* a shared limiter (a job's), or NULL; its rate
                                         may change while the copy runs */
    bool offload;                     /* ask the destination's copy_range for data runs */
    bool offload_required;            /* -C: a data run the destination does not offload
                                         fails the copy (-EOPNOTSUPP) */
    /* --salvage (qemu-img convert's): a failed source read is read again
     * in pieces of LSM_SALVAGE_UNIT (or the source's block size), and the
     * pieces that still fail are copied as zeroes, each range reported
     * through warn; a lost connection (-ENOTCONN, -ESHUTDOWN, -ECONNRESET,
     * -EPIPE), a time-out or a cancel still fails the copy. */
    bool salvage;
    void (*warn)(void *opaque, const char *msg);   /* uses `opaque` below */
    uint64_t sparse_size;             /* -S: zero runs inside data shorter than this (rounded
                                         up to the destination's granule) are written;
                                         0: the destination's hole_min */
    bool allocate_all;                /* -S 0 (qemu-img's "no sparse detection"): every run
                                         but SKIP is written as data, zeroes included (no
                                         zero commands, no holes); SKIP runs (absent in a
                                         copied layer: the backing file shows) stay skipped */
    /* Called once the data is in and flushed, right before the
     * destination's finish (e.g. metadata the flow adds to a qcow2
     * destination: its bitmaps); NULL: none.  <0 fails the copy. */
    int (*before_finish)(void *opaque);
    void *before_finish_opaque;
    bool absent_zero_mixed_is_data;   /* one layer over a backing file: a granule mixing
                                         absent and zero ranges is read and written */
    /* The block hash (blkhash.h) of what is read, from the request
     * buffers as their reads complete and from the zero runs: meaningful
     * for a guest-order copy of the whole view (the flow refuses the rest).
     * Needs libsodium (-ENOTSUP without). */
    bool checksum;
    enum lsm_blkhash_alg checksum_alg;
    uint32_t checksum_block_size;     /* 0: 4 MiB */
    /* Durable progress (journal.h, docs/resume.md), guest order only: every
     * range recorded is marked in the journal, and runs it has done are
     * skipped (counted as skipped and as already done).  Every
     * checkpoint_bytes of data (0: 1 GiB) or checkpoint_ms (0: 5000), and
     * once before the first write, the pipeline stops issuing, drains (every
     * completed write delivered) and calls checkpoint(opaque, frontier):
     * the flow makes the destination durable and consistent
     * (lsm_ep_checkpoint) and saves the journal; frontier is the offset
     * below which everything is done or recorded.  Before each request or
     * zero run the journal notes how far work has started
     * (lsm_journal_note_reached).  Data copied inside [redo_lo, redo_hi)
     * (the interrupted run's work past its last checkpoint) counts as
     * redone. */
    struct lsm_journal *journal;
    uint64_t checkpoint_bytes;
    unsigned checkpoint_ms;
    uint64_t redo_lo, redo_hi;
    int (*checkpoint)(void *checkpoint_opaque, uint64_t frontier);
    void *checkpoint_opaque;
    volatile sig_atomic_t *cancel;    /* set non-zero to stop (signal handler) */
    lsm_copy_record_fn record;
    lsm_copy_progress_fn progress;
    lsm_copy_job_progress_fn job_progress;
    void *opaque;
};

struct lsm_engine_stats {
    uint64_t bytes_total;    /* bytes planned to copy (data) */
    uint64_t bytes_done;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t bytes_zeroed;   /* zero ranges made zero (or already zero) */
    uint64_t bytes_skipped;  /* absent / unallocated ranges */
    uint64_t bytes_offloaded;
    uint64_t bytes_already_done;/* journal: done before (also in bytes_skipped) */
    uint64_t bytes_redone;   /* journal: data in [redo_lo, redo_hi) copied again */
    unsigned checkpoints;    /* journal: checkpoints after the first */
    double checkpoint_seconds;/* time spent in checkpoints (drain excluded) */
    bool offload;            /* some bytes went through the destination's copy_range */
    uint64_t bytes_salvaged; /* params.salvage: unreadable bytes copied as zeroes */
    unsigned salvaged_ranges;
    bool checksummed;        /* params.checksum: checksum holds the digest (lower-case hex) */
    char checksum[LSM_BLKHASH_HEX_LEN];
};

/* Copy src to dst (both on one loop): plan, pipeline, then the source's
 * check, a flush of the destination, the source's deferred range (written
 * last), and the destination's finish (which makes it durable).  Returns 0
 * (destination complete and durable) or -errno with a message; -ENOMEM
 * when the memory budget has not even one request's worth free.  The engine opens,
 * creates, locks and removes nothing: that is the flow's. */
#define LSM_SALVAGE_UNIT 4096

int lsm_engine_copy(struct lsm_ep *src, struct lsm_ep *dst, const struct lsm_engine_params *p,
                    struct lsm_engine_stats *st);

#endif
