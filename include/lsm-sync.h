/* lsm-sync.h: the public C interface of liblsm-sync.
 *
 * liblsm-sync copies VM disk images (raw, qcow2; an NBD URI as a source)
 * and syncs qcow2 chains layer by layer, as the lsm-sync program does, from
 * a program of one's own: start a copy or a sync as a transfer that runs on
 * a thread of its own, watch it, change its bandwidth, cancel it, wait for
 * it; compute the block checksum of an image.  docs/library.md describes
 * the interface, its ownership and threading rules and its versioning.
 *
 * Everything here is opaque handles and functions, except one status
 * structure that the caller allocates and that says its own size.  The
 * library never prints.  Functions that can fail return 0 (or a count) on
 * success and a negative errno on failure, and record one line of text
 * that lsm_last_error() returns on the same thread (for a transfer's own
 * failure: lsm_transfer_error()).
 *
 * Compile with `pkg-config --cflags --libs lsm-sync`.
 */
#ifndef LSM_SYNC_PUBLIC_H
#define LSM_SYNC_PUBLIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The interface version this header describes (the linker map's
 * LSM_SYNC_0.1).  lsm_library_version() is the library's release
 * ("0.1.0"). */
#define LSM_SYNC_API_MAJOR 0
#define LSM_SYNC_API_MINOR 1
const char *lsm_library_version(void);

/* The text recorded by the last failing call on this thread ("" if none). */
const char *lsm_last_error(void);

/* ---- Context: settings shared by the transfers started from it ---- */

struct lsm_ctx;

int lsm_ctx_new(struct lsm_ctx **out);
/* Free a context.  Transfers started from it keep what they need of it: it
 * may be freed before them. */
void lsm_ctx_free(struct lsm_ctx *ctx);
/* A bandwidth in bytes/s (0: unlimited) shared by every transfer started
 * from ctx, whatever their own limits; may change while they run. */
int lsm_ctx_set_bandwidth(struct lsm_ctx *ctx, uint64_t bytes_per_s);
/* The memory that the buffers of all copies in the process may take
 * (bytes; 0: unlimited, the default).  This budget is the process's, not
 * the context's: -EBUSY while any transfer of the process is alive. */
int lsm_ctx_set_memory_limit(struct lsm_ctx *ctx, uint64_t bytes);

/* ---- Options of a copy or a sync ---- */

struct lsm_copy_options;

/* Every option starts at the default of the lsm-sync program. */
int lsm_copy_options_new(struct lsm_copy_options **out);
void lsm_copy_options_free(struct lsm_copy_options *o);
/* This transfer's own bandwidth, bytes/s (0: unlimited); under the
 * context's. */
int lsm_copy_options_set_bandwidth(struct lsm_copy_options *o, uint64_t bytes_per_s);
/* Requests in flight (1..1024; 0: 16) and their size (a power of two
 * from 4 KiB to 64 MiB; 0: 1 MiB). */
int lsm_copy_options_set_requests(struct lsm_copy_options *o, unsigned n);
int lsm_copy_options_set_request_size(struct lsm_copy_options *o, uint64_t bytes);
/* The buffers of the transfer (0: 32 MiB), from the process's memory
 * limit. */
int lsm_copy_options_set_buffer_size(struct lsm_copy_options *o, uint64_t bytes);
/* O_DIRECT: "auto" (the default: direct where the file system takes it),
 * "always", "never". */
int lsm_copy_options_set_direct(struct lsm_copy_options *o, const char *mode);
/* Copy: non-zero writes into an existing destination (qemu-img convert
 * -n) instead of creating it; with target_is_zero it already reads as
 * zeroes (--target-is-zero). */
int lsm_copy_options_set_existing(struct lsm_copy_options *o, int existing, int target_is_zero);
/* Copy: read a source that another process holds for writing (-U). */
int lsm_copy_options_set_force_share(struct lsm_copy_options *o, int force_share);
/* Copy to qcow2: the destination's cluster size (0: the source's; 64 KiB
 * from raw). */
int lsm_copy_options_set_cluster_size(struct lsm_copy_options *o, uint32_t bytes);
/* Copy: only the source's own layer, over BACKING of format FMT ("raw",
 * "qcow2"), which the new qcow2 destination names as its backing file
 * (qemu-img convert -B BACKING -F FMT).  NULL clears it. */
int lsm_copy_options_set_backing(struct lsm_copy_options *o, const char *backing,
                                 const char *fmt);
/* Sync: volumes copied at once (1..64; 0: 4). */
int lsm_copy_options_set_parallel(struct lsm_copy_options *o, unsigned n);
/* Durable progress (lsm-sync copy/sync --journal, docs/resume.md): the
 * done ranges are saved to the file JOURNAL every 5 s or 1 GiB; a
 * transfer that fails or is cancelled then keeps its destination and the
 * journal, and one started again with resume non-zero and the same
 * source, destination and journal copies only what is not done (the
 * files must be unchanged: a change is refused).  A sync keeps, beside
 * JOURNAL, one journal per volume in progress.  The journal goes when the
 * transfer succeeds.  Without resume an existing journal is refused.
 * NULL clears it. */
int lsm_copy_options_set_journal(struct lsm_copy_options *o, const char *journal, int resume);

/* ---- Transfers ---- */

struct lsm_transfer;

/* Start copying the guest view of SRC (format "raw", "qcow2", or NULL or
 * "auto" to probe; SRC may be an nbd:// URI) to DST ("raw" or "qcow2";
 * NULL: raw), with options o (NULL: the defaults).  Nothing is written
 * before the checks pass: DST is refused when it is a file of SRC's chain
 * under any name, or when another process holds it.  Without
 * lsm_copy_options_set_existing an existing regular file DST is emptied
 * after those checks (as qemu-img convert does).  A DST the copy created is
 * removed if the copy fails or is cancelled; one that existed is never
 * removed.  Progress counts guest bytes (host bytes of the file when a
 * qcow2 is copied to qcow2 as it is laid out).  The strings and o are
 * copied: the caller may free them at once. */
int lsm_copy_start(struct lsm_ctx *ctx, const char *src, const char *src_fmt,
                   const char *dst, const char *dst_fmt,
                   const struct lsm_copy_options *o, struct lsm_transfer **out);

/* Sync types (lsm-sync sync --type). */
enum {
    LSM_SYNC_TYPE_ALL = 0,       /* every volume of the chain */
    LSM_SYNC_TYPE_INTERNAL = 1,  /* every volume but the leaf */
    LSM_SYNC_TYPE_LEAF = 2,      /* only the leaf */
};
/* Start a sync of the chains that the job file JOBFILE describes
 * (docs/chains.md: the JSON that lsm-sync clone-structure --output=json
 * prints), each destination volume receiving its source volume's own
 * layer.  Of o, the bandwidth, requests, request size, buffer size,
 * direct and parallel options are used.  A JOBFILE that cannot be read
 * fails at once with its -errno (-ENOENT, -EACCES). */
int lsm_sync_start_file(struct lsm_ctx *ctx, const char *jobfile, int type,
                        const struct lsm_copy_options *o, struct lsm_transfer **out);
/* The same with the job file's JSON text in memory. */
int lsm_sync_start_json(struct lsm_ctx *ctx, const char *json, int type,
                        const struct lsm_copy_options *o, struct lsm_transfer **out);

enum {
    LSM_TRANSFER_RUNNING = 1,    /* started, working */
    LSM_TRANSFER_CANCELLING = 2, /* cancel asked, not stopped yet */
    LSM_TRANSFER_FINISHED = 3,   /* complete and durable */
    LSM_TRANSFER_CANCELLED = 4,  /* stopped by a cancel */
    LSM_TRANSFER_FAILED = 5,     /* stopped by an error (lsm_transfer_error) */
};

/* A snapshot of a transfer.  Set size to sizeof(struct
 * lsm_transfer_status) before the call.  Later versions of the library
 * only append members: the library fills the members that fit in size
 * (at least LSM_TRANSFER_STATUS_SIZE_0_1) and zeroes the rest of size, and
 * sets size to the bytes it filled. */
struct lsm_transfer_status {
    uint32_t size;
    uint32_t state;              /* LSM_TRANSFER_* */
    uint64_t bytes_total;        /* guest bytes to go through, as known so far */
    uint64_t bytes_done;         /* written + zeroed + skipped */
    uint64_t bytes_written;      /* data written */
    uint64_t bytes_zeroed;       /* ranges made (or known to be) zero */
    uint64_t bytes_skipped;      /* nothing to do (unallocated in the copied layer) */
    uint64_t bandwidth;          /* the transfer's own limit, bytes/s (0: unlimited) */
    double percent;              /* 100 * done / total */
    double elapsed_s;
    double rate;                 /* bytes/s of bytes_done over the last few seconds */
    double eta_s;                /* seconds left; < 0 while not known */
    int32_t error;               /* FAILED: -errno */
    char phase[32];              /* "copying", "flushing", ... */
};
#define LSM_TRANSFER_STATUS_SIZE_0_1 (offsetof(struct lsm_transfer_status, phase) + 32)

/* Any thread, any time between start and free. */
int lsm_transfer_get_status(struct lsm_transfer *t, struct lsm_transfer_status *st);
/* Change the transfer's own bandwidth (0: unlimited), within a second. */
int lsm_transfer_set_bandwidth(struct lsm_transfer *t, uint64_t bytes_per_s);
/* Ask the transfer to stop; returns at once.  It stops within a second
 * (lsm_transfer_wait): CANCELLED, or FINISHED if it completed anyway. */
void lsm_transfer_cancel(struct lsm_transfer *t);
/* Wait up to timeout_ms (< 0: forever): 0 once the transfer has stopped,
 * -ETIMEDOUT otherwise. */
int lsm_transfer_wait(struct lsm_transfer *t, int timeout_ms);
/* Once stopped: 0 (finished) or -errno (-ECANCELED when cancelled);
 * -EBUSY while it runs. */
int lsm_transfer_result(struct lsm_transfer *t);
/* Once stopped with an error: its text, owned by t until
 * lsm_transfer_free; "" otherwise (and while it runs). */
const char *lsm_transfer_error(struct lsm_transfer *t);
/* Cancel if still running, wait, free. */
void lsm_transfer_free(struct lsm_transfer *t);

/* ---- Checksum ---- */

/* Size of the hex text lsm_checksum() writes, its NUL included. */
#define LSM_CHECKSUM_HEX_SIZE 65
/* The block checksum (what `lsm-sync checksum` prints, docs/checksum.md)
 * of the guest view of the image at PATH (format as for lsm_copy_start)
 * and its backing chain, with algorithm ALG (NULL: "sha256"), into hex
 * (at least LSM_CHECKSUM_HEX_SIZE bytes).  Runs on the calling thread;
 * reads only (the image is opened read-only and locked as QEMU locks: an
 * image another process holds for writing is refused with -EAGAIN).
 * -ENOTSUP from a library built without libsodium. */
int lsm_checksum(struct lsm_ctx *ctx, const char *path, const char *fmt, const char *alg,
                 char *hex, size_t hex_size);

#ifdef __cplusplus
}
#endif

#endif
