/* The copy from paths: `lsm-sync copy`, and each volume of `sync`.
 *
 * lsm_copy() does everything around the engine (engine/copy.h): it opens
 * and probes SRC (an image chain, or an NBD URI), decides whether a
 * physical copy applies, checks that DST is no file of the source under
 * any name, takes QEMU's locks, creates DST with O_EXCL (or opens it as it
 * is, checks it, and only then empties it), makes the endpoints
 * (endpoint/backends.h), runs lsm_engine_copy() on one loop, and on failure
 * removes DST only if this copy created it.
 *
 * Library layer: never prints; failures return -errno with a message
 * recorded by lsm_error(); warnings and progress go to callbacks.
 */
#ifndef LSM_FLOW_COPY_H
#define LSM_FLOW_COPY_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "copy.h"
#include "offload.h"
#include "image.h"
#include "io.h"

enum lsm_physical_mode { LSM_PHYSICAL_AUTO = 0, LSM_PHYSICAL_ALWAYS, LSM_PHYSICAL_NEVER };

/* A warning for the user (e.g. O_DIRECT refused, buffered I/O used). */
typedef void (*lsm_copy_warn_fn)(void *opaque, const char *msg);

/* Creation options of a new destination (qemu-img's -o): zero values are
 * the defaults.  Ignored with -n (the destination exists). */
/* The qcow2 header's compression type values (QCOW2_COMPRESSION_*). */
enum { LSM_COMPRESSION_ZLIB = 0, LSM_COMPRESSION_ZSTD = 1 };
enum lsm_prealloc { LSM_PREALLOC_OFF = 0, LSM_PREALLOC_METADATA, LSM_PREALLOC_FALLOC, LSM_PREALLOC_FULL };
struct lsm_create_opts {
    unsigned qcow2_version;           /* 0 or 3 (compat=1.1), 2 (compat=0.10) */
    unsigned refcount_bits;           /* 0: 16 */
    bool lazy_refcounts;
    bool extended_l2;
    unsigned compression_type;        /* LSM_COMPRESSION_* (0: zlib) */
    enum lsm_prealloc prealloc;       /* qcow2: all four; raw: off, falloc, full */
    bool compress;                    /* -c: compressed clusters in a new qcow2 (callers refuse it with
                                         prealloc and journal, and set physical NEVER) */
};

struct lsm_copy_opts {
    const char *src_path;
    enum lsm_format src_fmt;          /* AUTO probes */
    const char *dst_path;
    enum lsm_format dst_fmt;          /* RAW (default) or QCOW2 */
    const char *backing;              /* -B: copy only SRC's own layer */
    enum lsm_format backing_fmt;      /* -F */
    bool no_create;                   /* -n */
    bool force_share;                 /* -U: read a source another process writes */
    bool target_is_zero;              /* with -n: DST already reads as zeroes */
    bool one_layer;                   /* NBD destination (sync's job files, docs/nbd.md): DST
                                         serves one destination layer alone; only SRC's own
                                         layer is copied: data written, zero ranges always
                                         sent as WRITE_ZEROES (they hide the backing), ranges
                                         the layer does not allocate left as they are.
                                         With an NBD source and a local DST (sync's NBD
                                         sources): SRC serves one qcow2 layer alone, read
                                         with qemu:allocation-depth (depth 0 left as it is;
                                         cluster_size: DST's clusters) */
    enum lsm_physical_mode physical;
    enum lsm_io_kind io_kind;
    enum lsm_direct_mode direct;      /* destination, and source unless src_direct_set */
    bool unsafe;                      /* -t unsafe: the destination is never flushed
                                         (lsm_ep.no_flush): no fsync of a raw file, no
                                         NBD_CMD_FLUSH, no background ones, so exit 0 does
                                         not mean durable and a writeback error after
                                         write() returned is not seen; a qcow2 file is
                                         still synced by its writer.  Refused with journal. */
    enum lsm_direct_mode src_direct;  /* -T: the source's mode when src_direct_set */
    bool src_direct_set;
    bool offload;                     /* --offload=auto (when offload_mode is NEVER) */
    enum lsm_offload_mode offload_mode; /* --offload=NAME: LSM_OFFLOAD_ONLY (offload/offload.h) */
    const char *offload_name;         /* with LSM_OFFLOAD_ONLY */
    const char *offload_cmd;          /* --offload-cmd */
    unsigned offload_timeout_s;       /* --offload-timeout (0: LSM_OFFLOAD_CMD_TIMEOUT_S) */
    bool offload_required;            /* -C: fail where data cannot be offloaded */
    unsigned requests;                /* -m (0: 16) */
    uint64_t request_size;            /* -s (0: 1 MiB) */
    uint64_t buffer_size;             /* memory budget (0: 32 MiB) */
    uint64_t rate;                    /* bytes/s (0: unlimited): a private limiter,
                                         under `limiter` when both are set */
    struct lsm_limiter *limiter;      /* a shared limiter (a job's), or NULL; its rate
                                         may change while the copy runs */
    uint32_t cluster_size;            /* qcow2 destination (0: the source's, 64K for raw) */
    struct lsm_create_opts create;    /* -o: the other creation options */
    const char *snapshot;             /* -l: copy this internal snapshot's view of SRC */
    enum lsm_snapshot_key snapshot_key;   /* how -l names it (id, name, either) */
    bool bitmaps;                     /* --bitmaps: copy SRC's persistent dirty bitmaps
                                         (its top layer's) into the qcow2 destination */
    bool skip_broken_bitmaps;         /* skip in-use (inconsistent) ones instead of failing */
    bool salvage;                     /* --salvage: unreadable source ranges copied as zeroes,
                                         each reported through warn (engine/copy.h) */
    uint64_t sparse_size;             /* -S: zero runs of at least this many bytes (rounded
                                         up to the zero-detection unit) are left
                                         unallocated (0: the default, 64K for raw and one
                                         cluster for qcow2). */
    bool allocate_all;                /* -S 0: no sparse detection, everything the copy
                                         covers is written as data, zeroes included (a
                                         fully allocated DST; with -B what the backing
                                         file provides stays unallocated), as qemu-img
                                         convert -S 0 writes it; with -c every cluster
                                         is compressed, zero ones too */

    /* --checksum: the block hash (blkhash.h; what `lsm-sync checksum`
     * computes) of the guest view copied, from the buffers as the copy
     * reads them.  Needs a copy of the whole guest view in guest order:
     * refused with backing (-B) and with PHYSICAL_ALWAYS; AUTO then copies
     * in guest order, and offload is not used.  Needs libsodium. */
    bool checksum;
    enum lsm_blkhash_alg checksum_alg;
    uint32_t checksum_block_size;     /* 0: 4 MiB */

    /* Durable progress (docs/resume.md): with journal, the done ranges go to
     * that file at checkpoints, every checkpoint_bytes of data or
     * checkpoint_ms, whichever comes first; resume continues the job the
     * journal describes (DST must be the one it names, nothing changed). */
    const char *journal;
    bool resume;
    uint64_t checkpoint_bytes;        /* 0: 1 GiB */
    unsigned checkpoint_ms;           /* 0: 5000 */

    unsigned nbd_timeout_ms;          /* NBD source or destination: connect and per-request
                                         time-out (0: 30 s to connect, 60 s per request) */
    unsigned nbd_connections;         /* NBD: connections where the server offers multi-conn
                                         (0: 4; docs/nbd.md) */
    volatile sig_atomic_t *cancel;    /* set non-zero to stop (signal handler) */
    lsm_copy_record_fn record;        /* guest ranges (host ranges for a physical copy) */
    lsm_copy_progress_fn progress;
    lsm_copy_job_progress_fn job_progress;
    lsm_copy_warn_fn warn;
    void *opaque;
};

struct lsm_copy_stats {
    char io_name[16];
    bool direct;             /* destination written with O_DIRECT */
    bool physical;           /* physical (host-order) copy */
    bool offload;            /* some bytes were offloaded (any rung of the ladder) */
    uint64_t bytes_total;    /* bytes planned to copy (data) */
    uint64_t bytes_done;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t bytes_zeroed;   /* zero ranges made zero (or already zero) */
    uint64_t bytes_skipped;  /* absent / unallocated ranges */
    uint64_t bytes_offloaded;          /* the sum of the four offload rungs below */
    uint64_t bytes_reflinked;          /* offload rungs (offload/offload.h) */
    uint64_t bytes_copy_range;
    uint64_t bytes_plugin;             /* by the plugin offload_plugin */
    uint64_t bytes_offload_cmd;
    char offload_plugin[32];
    char offload_fallback[256];        /* why the first data range offered was not offloaded */
    uint64_t bytes_salvaged;           /* --salvage: unreadable bytes copied as zeroes */
    unsigned salvaged_ranges;
    uint64_t bytes_already_done;/* resume: done before (also in bytes_skipped) */
    uint64_t bytes_redone;   /* resume: data the interrupted run had started past its last
                                checkpoint (between the journal's frontier and reached mark) */
    unsigned checkpoints;
    double checkpoint_seconds;/* time spent in checkpoints (drain excluded) */
    double seconds;
    bool dst_incomplete;     /* on failure: an existing destination may be partly written */
    bool dst_removed;        /* on failure: destination created by us removed */
    bool journal_kept;       /* on failure: the journal is kept for a resume */
    bool src_busy;           /* on failure: another process holds the source for writing */
    bool checksummed;        /* opts.checksum: checksum holds the digest (lower-case hex) */
    char checksum[LSM_BLKHASH_HEX_LEN];
};

/* Run a copy.  Returns 0 (destination complete and durable) or -errno with
 * a message.  The destination is refused (-EINVAL, nothing written) when it
 * is any file of the source chain under whatever name, and (-EAGAIN) when
 * another process holds it (QEMU's image locks, common/lock.h); the copy
 * holds the write lock until it returns.  On failure a destination this
 * copy created (O_EXCL) is removed; anything that existed before is never
 * removed (dst_incomplete says whether it may have been written).
 * The buffers (at most buffer_size) are reserved from the process-wide
 * memory budget (budget.h) for the copy's duration; -ENOMEM when not even
 * one request's worth is free. */
int lsm_copy(const struct lsm_copy_opts *o, struct lsm_copy_stats *st);

/* nbd://, nbds://, nbd+unix://, nbds+unix://, nbd+vsock://, nbds+vsock:// */
bool lsm_is_nbd_uri(const char *s);

#endif
