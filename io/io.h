/* The I/O path: one table of operations per backend (io_uring, libaio,
 * psync), fio's queue / submit / reap shape.  The engine and the bench
 * harness talk only to struct lsm_io; they never name a backend.
 *
 * Requests are owned by the caller.  lsm_io_queue() adds one; when the
 * backend's queue is full it returns -EAGAIN and the caller must reap first.
 * lsm_io_submit() pushes what was queued to the kernel.  lsm_io_reap() waits
 * (submitting first whatever is still queued, so queue + reap costs one
 * system call with io_uring) for at least min_done completions and returns up to max pointers to
 * finished requests, each with ->result set (bytes transferred, or -errno).
 * A short transfer is reported as such; retrying is the caller's business.
 * WRITE_ZEROES completes with len, FLUSH with 0.  -EAGAIN from
 * lsm_io_queue() is flow control and records no message; every other
 * failure records one (common/error.h).  lsm_io_reap() never waits for more
 * than are in flight, so it cannot hang on an empty queue.
 *
 * Threads: an lsm_io is used by one thread at a time.  With io_uring the
 * ring is created disabled and binds (SINGLE_ISSUER|DEFER_TASKRUN) to the
 * thread that first submits or reaps: create it anywhere, then keep to that
 * thread.  lsm_io_destroy() waits for requests still in flight.
 *
 * Environment (for tests):
 *   LSM_TEST_URING_ERRNO=EPERM (an errno name or number): io_uring setup
 *     fails with that errno as a kernel refusing io_uring would, so that
 *     LSM_IO_AUTO's fallback to aio, then psync, can be exercised.
 *   LSM_IO_FAULT=OP:N:ERR[,OP:N:ERR...]: lsm_io_create() wraps the chosen
 *     backend in a fault injector.  OP is read, write, zero, flush or any; N
 *     is the 1-based index of the request of that kind (counted at queue
 *     time, per lsm_io); ERR is EIO, ENOSPC or short (half the bytes transferred; not for
 *     flush).  The request is still performed; only its result is
 *     rewritten.  lsm_io_name() then says e.g. "uring+fault".
 */
#ifndef LSM_IO_H
#define LSM_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

enum lsm_io_kind {
    LSM_IO_AUTO = 0,   /* uring, then aio, then psync */
    LSM_IO_URING,
    LSM_IO_AIO,
    LSM_IO_PSYNC,
};
const char *lsm_io_kind_name(enum lsm_io_kind k);
int lsm_io_kind_parse(const char *s, enum lsm_io_kind *out);

enum lsm_io_op {
    LSM_OP_READ,
    LSM_OP_WRITE,
    LSM_OP_WRITE_ZEROES,  /* len bytes of zeroes at offset; no buffer */
    LSM_OP_FLUSH,         /* fdatasync */
};

struct lsm_file;

struct lsm_io_req {
    enum lsm_io_op op;
    struct lsm_file *file;
    void *buf;
    int buf_index;        /* index of a registered buffer containing buf, or -1 */
    uint64_t offset;
    uint64_t len;
    int64_t result;       /* set on completion: bytes or -errno */
    uint64_t submit_ns;   /* set by lsm_io_queue (monotonic) */
    uint64_t complete_ns; /* set on completion */
    void *user;           /* caller's */
};

struct lsm_io_config {
    unsigned depth;           /* max requests in flight (queue depth) */
    bool fixed_buffers;       /* use registered buffers where supported */
    unsigned max_workers;     /* io-wq / psync thread bound (0: backend default) */
};

struct lsm_io;

struct lsm_io_ops {
    const char *name;
    int (*init)(struct lsm_io *io, const struct lsm_io_config *cfg);
    void (*destroy)(struct lsm_io *io);
    /* optional: register buffers (iovecs) for fixed I/O; -ENOTSUP if not
     * supported or cfg.fixed_buffers is off; replaces an earlier set */
    int (*register_buffers)(struct lsm_io *io, const struct iovec *iov, unsigned n);
    /* optional: register files; the backend records the index in file
     * (io_uring: 64 slots, the file stays referenced until destroy) */
    int (*register_file)(struct lsm_io *io, struct lsm_file *f);
    int (*queue)(struct lsm_io *io, struct lsm_io_req *req);
    int (*submit)(struct lsm_io *io);
    int (*reap)(struct lsm_io *io, unsigned min_done, struct lsm_io_req **done, unsigned max);
};

struct lsm_io {
    const struct lsm_io_ops *ops;
    enum lsm_io_kind kind;
    struct lsm_io_config cfg;
    unsigned in_flight;   /* queued or submitted, not yet reaped */
    void *priv;
};

/* Create a backend.  With LSM_IO_AUTO, io_uring is tried first and the next
 * backend taken when the ring is refused (ENOSYS, EPERM, EACCES, ...). */
int lsm_io_create(enum lsm_io_kind kind, const struct lsm_io_config *cfg, struct lsm_io **out);
void lsm_io_destroy(struct lsm_io *io);
const char *lsm_io_name(const struct lsm_io *io);
int lsm_io_register_buffers(struct lsm_io *io, const struct iovec *iov, unsigned n);
int lsm_io_register_file(struct lsm_io *io, struct lsm_file *f);
int lsm_io_queue(struct lsm_io *io, struct lsm_io_req *req);
int lsm_io_submit(struct lsm_io *io);
int lsm_io_reap(struct lsm_io *io, unsigned min_done, struct lsm_io_req **done, unsigned max);

/* ---- Files (io/file.c) ---- */

enum lsm_direct_mode { LSM_DIRECT_AUTO = 0, LSM_DIRECT_ALWAYS, LSM_DIRECT_NEVER };
int lsm_direct_parse(const char *s, enum lsm_direct_mode *out);

#define LSM_FILE_READ     0x1u
#define LSM_FILE_WRITE    0x2u
#define LSM_FILE_CREATE   0x4u   /* create with O_EXCL: must not exist... */
#define LSM_FILE_MAY_EXIST 0x8u  /* ...unless this is given: then an existing file
                                  * is opened as it is (never truncated) */

struct lsm_file {
    int fd;
    char *path;
    bool direct;              /* opened with O_DIRECT */
    bool direct_refused;      /* AUTO fell back to buffered I/O */
    bool is_blockdev;
    uint32_t mem_align;       /* buffer alignment for O_DIRECT (1 if buffered) */
    uint32_t offset_align;    /* offset/length alignment for O_DIRECT (1 if buffered) */
    uint64_t size;            /* file size or device size at open */
    int reg_index;            /* registered file index, or -1 */
    bool zero_reads_zero;     /* BLKZEROOUT/punch reads back zeroes */
    bool created;             /* this open created the file (O_CREAT|O_EXCL) */
};

/* Open path with flags (LSM_FILE_*) and the O_DIRECT mode; AUTO falls back
 * to buffered I/O when the file system refuses O_DIRECT (sets
 * direct_refused so the caller can print one warning).  The file is opened
 * once, with lsm_open_disk (regular files and block devices only, never
 * waiting on a FIFO, never O_TRUNC); O_DIRECT is set on that descriptor.
 * On failure a file this call created is removed again. */
int lsm_file_open(const char *path, unsigned flags, enum lsm_direct_mode direct,
                  struct lsm_file **out);
/* Switch O_DIRECT on or off on f's descriptor (same descriptor, same
 * locks) and learn the alignment again.  Only with no I/O in flight. */
int lsm_file_set_direct(struct lsm_file *f, bool on);
/* Remove f->path if f->created and the name still leads to f's file (not
 * something put there since).  1 if removed, else 0.  Call before close. */
int lsm_file_remove_created(struct lsm_file *f);
/* Wrap an fd that is already open (not owned). */
int lsm_file_from_fd(int fd, const char *path, struct lsm_file **out);
void lsm_file_close(struct lsm_file *f);
/* Make [offset, offset+len) read as zeroes: PUNCH_HOLE (if may_unmap) or
 * ZERO_RANGE on files, both with KEEP_SIZE (zero inside the file; size the
 * target first); on block devices fallocate PUNCH_HOLE (a discard that
 * guarantees zeroes, if may_unmap) or BLKZEROOUT; written zeroes as the
 * last resort (which, unlike the rest, extends a file). Synchronous. */
int lsm_file_zero(struct lsm_file *f, uint64_t offset, uint64_t len, bool may_unmap);
int lsm_file_truncate(struct lsm_file *f, uint64_t size);
/* Preallocate [offset, offset+len) of a regular file as qemu-img's
 * preallocation=falloc (fallocate: allocated, reads as zeroes) or, with
 * full, =full (zeroes written; offset, len and the end aligned for
 * O_DIRECT by the caller, or the descriptor buffered). */
int lsm_file_preallocate(struct lsm_file *f, uint64_t offset, uint64_t len, bool full);
int lsm_file_sync(struct lsm_file *f);

/* Offload: copy_file_range / FICLONERANGE between files on one file
 * system.  Returns bytes copied (may be short), or -EXDEV/-EOPNOTSUPP/-EINVAL
 * when offload does not apply (caller falls back), or another -errno. */
int64_t lsm_file_copy_range(struct lsm_file *src, uint64_t src_off,
                            struct lsm_file *dst, uint64_t dst_off, uint64_t len);
int lsm_file_clone_range(struct lsm_file *src, uint64_t src_off,
                         struct lsm_file *dst, uint64_t dst_off, uint64_t len);

/* ---- Buffers (io/buffers.c) ---- */

/* A fixed set of aligned buffers of buf_size bytes under a memory budget.
 * Allocated once (one mmap on a huge-page boundary, with MADV_HUGEPAGE so
 * that a buffer is few physical segments), registered with the backend if
 * it can.
 * align is a power of two up to the page size; buf_size a multiple of it;
 * count = budget / buf_size, at least 1. */
struct lsm_bufpool {
    void *base;
    size_t map_len;
    size_t buf_size;
    unsigned count;
    unsigned nfree;
    unsigned *free_stack;
};
int lsm_bufpool_create(size_t budget, size_t buf_size, size_t align, struct lsm_bufpool **out);
/* The same with flags: LSM_BUFPOOL_SMALL_PAGES asks for plain pages (no
 * huge-page alignment, MADV_NOHUGEPAGE), to measure what callers with
 * scattered buffers get. */
#define LSM_BUFPOOL_SMALL_PAGES 1u
int lsm_bufpool_create_flags(size_t budget, size_t buf_size, size_t align, unsigned flags,
                             struct lsm_bufpool **out);
void lsm_bufpool_destroy(struct lsm_bufpool *p);
/* NULL when none is free; *index is the buffer's index (for fixed I/O). */
void *lsm_bufpool_get(struct lsm_bufpool *p, int *index);
void lsm_bufpool_put(struct lsm_bufpool *p, void *buf);
/* iovecs describing every buffer (for lsm_io_register_buffers); malloc'd. */
struct iovec *lsm_bufpool_iovecs(struct lsm_bufpool *p);

#endif
