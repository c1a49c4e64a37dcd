/* The copy engine: extents in, requests out.
 *
 *   source (struct lsm_copy_src: extents + reads + a check after the copy;
 *           the image source, the physical source, the NBD source)
 *     -> plan (struct lsm_plan: granule-aligned runs: skip / zero / data /
 *        mixed; a physical copy takes the physical source's data extents
 *        as runs directly)
 *     -> pipeline (many requests in flight through io/; reads complete out
 *        of order, writes are issued as each read completes)
 *     -> destination (private to copy.c: a raw file/device, or a qcow2
 *        writer for guest-order qcow2 output; a physical copy writes the
 *        file as it is)
 *
 * The engine never prints: failures return -errno with a message recorded
 * by lsm_error(); warnings and progress go to callbacks.
 */
#ifndef LSM_COPY_H
#define LSM_COPY_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkhash.h"
#include "image.h"
#include "io.h"
#include "job.h"
#include "offload.h"

struct lsm_limiter;

/* ---- Extent source ----
 *
 * A source hands out guest-ordered extents and reads guest ranges.  The
 * image source (engine/source.c) wraps the reader's lsm_map_iter; an NBD
 * source fills the same table with NBD block status and pread. */
enum lsm_src_kind {
    LSM_SRC_ABSENT = 0,   /* not present in the copied layer(s): leave to backing */
    LSM_SRC_ZERO,         /* reads as zeroes */
    LSM_SRC_DATA,         /* data */
};

struct lsm_src_extent {
    uint64_t start, length;
    enum lsm_src_kind kind;
    /* DATA only: where an asynchronous read finds the bytes.  file NULL (or
     * compressed data) means: read it with ops->pread. */
    struct lsm_file *file;
    uint64_t host;
};

struct lsm_copy_src;
struct lsm_src_ops {
    const char *name;
    /* Restart iteration at guest offset 0. */
    int (*rewind)(struct lsm_copy_src *s);
    /* Next extent: 1 with *e filled (extents are contiguous and cover the
     * whole size in order), 0 at the end, or -errno. */
    int (*next)(struct lsm_copy_src *s, struct lsm_src_extent *e);
    /* Synchronous guest-visible read of [off, off+len) (any alignment; past
     * the end reads zeroes). */
    int (*pread)(struct lsm_copy_src *s, void *buf, uint64_t len, uint64_t off);
    /* Called after the copy: -errno if the source changed under us. */
    int (*check)(struct lsm_copy_src *s);
    void (*close)(struct lsm_copy_src *s);
};

struct lsm_copy_src {
    const struct lsm_src_ops *ops;
    uint64_t size;          /* guest-visible size */
    void *priv;
};

/* The image source: extents of the chain below img (or of img's own layer
 * with one_layer, absent where img does not decide the content).  Data
 * extents are read through a second, read-only O_DIRECT (per `direct`)
 * lsm_file per layer.  The source does not own img. */
int lsm_image_source_create(struct lsm_image *img, bool one_layer,
                            enum lsm_direct_mode direct, struct lsm_copy_src **out);

/* The physical source: one qcow2 layer's image file in host order (offsets
 * are file offsets, size is the file size).  DATA extents are the runs of
 * host clusters in use (refcount > 0), read asynchronously through a second
 * read-only descriptor; the rest is ABSENT.  pread reads the file (zeroes
 * past its end).  Creating it validates the layer first: the whole map is
 * walked with the reader (what `map` refuses, this refuses) and every host
 * cluster the map points at, and every metadata table the reader lists
 * (lsm_qcow2_for_each_metadata), must be in use.  check fails if the file's size,
 * modification time or header cluster changed since it was created.  The
 * source does not own img. */
int lsm_phys_source_create(struct lsm_image *img, enum lsm_direct_mode direct,
                           struct lsm_copy_src **out);
/* The header cluster (at most the file size) as read at create. */
const void *lsm_phys_source_header(struct lsm_copy_src *s, size_t *len);

/* The NBD source (with libnbd): extents from base:allocation, data read
 * with NBD_CMD_READ.  lsm_is_nbd_uri() recognises nbd://, nbds://,
 * nbd+unix://, nbds+unix://, nbd+vsock:// and nbds+vsock:// names.
 *
 * No wait on the server is unbounded: connecting (socket, handshake,
 * negotiation; a host name's look-up is left to the resolver's time-outs)
 * fails with -ETIMEDOUT after connect_ms, and each command
 * after request_ms (0 for either: the defaults below); the message names
 * the server and the offset.  *cancel (may be NULL) is looked at at least
 * every 50 ms while waiting, and a set flag ends the wait with -EINTR.
 * After a time-out or a cancel the source sends nothing more and its close
 * does not wait for the server. */
#define LSM_NBD_CONNECT_TIMEOUT_MS 30000
#define LSM_NBD_REQUEST_TIMEOUT_MS 60000
bool lsm_is_nbd_uri(const char *s);
int lsm_nbd_source_create(const char *uri, volatile sig_atomic_t *cancel, unsigned connect_ms,
                          unsigned request_ms, struct lsm_copy_src **out);

/* ---- Plan: granule-aligned runs ----
 *
 * The destination has a granularity (its cluster size, or a block size for
 * raw).  The plan merges the source extents into runs whose ends are
 * granule-aligned (except at the end of the disk):
 *   SKIP   nothing to do (absent in the copied layer)
 *   ZERO   reads as zeroes
 *   DATA   one extent's data, contiguous at src extent `file`/`host`
 *   MIXED  granules mixing kinds or discontiguous hosts: read with ops->pread
 */
enum lsm_run_kind { LSM_RUN_SKIP, LSM_RUN_ZERO, LSM_RUN_DATA, LSM_RUN_MIXED };

struct lsm_run {
    uint64_t start, length;
    enum lsm_run_kind kind;
    struct lsm_file *file;   /* DATA: file and host offset (file may be NULL) */
    uint64_t host;
};

struct lsm_plan {
    struct lsm_copy_src *src;
    uint64_t granule;
    uint64_t pos;             /* next guest offset to plan */
    bool one_layer_zero_mixed;/* ZERO+ABSENT in one granule must be read (backing under dst) */
    bool have_cur;
    struct lsm_src_extent cur; /* current source extent, cut at pos */
    bool eof;
};

void lsm_plan_init(struct lsm_plan *p, struct lsm_copy_src *src, uint64_t granule,
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

/* ---- The copy ---- */

enum lsm_physical_mode { LSM_PHYSICAL_AUTO = 0, LSM_PHYSICAL_ALWAYS, LSM_PHYSICAL_NEVER };

/* Completed-extent recorder: [start, start+len) of the guest (or, for a
 * physical copy, of the host file) is written to the destination (not yet
 * flushed: a resumer must treat ranges as durable only after the copy's
 * final flush, signalled by a call with len == 0).  Return <0 to abort. */
typedef int (*lsm_copy_record_fn)(void *opaque, uint64_t start, uint64_t len);
/* Progress: bytes done of bytes total. */
typedef void (*lsm_copy_progress_fn)(void *opaque, uint64_t done, uint64_t total);
/* Progress by class (a job's view): total is the source's size (guest
 * bytes; host bytes of the file for a physical copy), done is written +
 * zeroed + skipped, and reaches total when the copy succeeds.  Called as
 * requests complete and ranges are skipped or zeroed; cheap callers only. */
typedef void (*lsm_copy_job_progress_fn)(void *opaque, const struct lsm_job_progress *p);
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
    enum lsm_physical_mode physical;
    enum lsm_io_kind io_kind;
    enum lsm_direct_mode direct;      /* destination, and source unless src_direct_set */
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
    uint64_t sparse_size;             /* -S: zero runs of at least this many bytes (rounded
                                         up to the zero-detection unit) are left
                                         unallocated (0: the default, 64K for raw and one
                                         cluster for qcow2).  The command line makes -S 0
                                         (allocate everything) create.prealloc FULL. */

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

    unsigned nbd_timeout_ms;          /* NBD source: connect and per-request time-out
                                         (0: 30 s to connect, 60 s per request) */
    volatile sig_atomic_t *cancel;    /* set non-zero to stop (signal handler) */
    lsm_copy_record_fn record;
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
    uint64_t bytes_already_done;/* resume: done before (also in bytes_skipped) */
    uint64_t bytes_redone;   /* resume: data the interrupted run had started past its last
                                checkpoint (between the journal's frontier and reached mark) */
    unsigned checkpoints;
    double checkpoint_seconds;/* time spent in checkpoints (drain excluded) */
    uint64_t bytes_reflinked;          /* offload rungs (offload/offload.h) */
    uint64_t bytes_copy_range;
    uint64_t bytes_plugin;             /* by the plugin offload_plugin */
    uint64_t bytes_offload_cmd;
    char offload_plugin[32];
    char offload_fallback[256];        /* why the first data range offered was not offloaded */
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

#endif
