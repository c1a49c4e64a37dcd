/* Backend selection and dispatch: the engine's only door to the I/O path.
 * The per-backend tables live in uring.c, aio.c, psync.c and fault.c; this
 * file keeps the bookkeeping every backend shares (in_flight, timestamps,
 * the depth limit) so that the tables stay small. */
#include <assert.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "io-internal.h"
#include "util.h"

#define LSM_IO_MAX_DEPTH 4096u
#define LSM_IO_DEFAULT_WORKERS 4u
/* Linux moves at most this much in one read/write (MAX_RW_COUNT). */
#define LSM_IO_MAX_LEN 0x7ffff000ull

static const char *const kind_names[] = {
    [LSM_IO_AUTO] = "auto",
    [LSM_IO_URING] = "uring",
    [LSM_IO_AIO] = "aio",
    [LSM_IO_PSYNC] = "psync",
};

const char *lsm_io_kind_name(enum lsm_io_kind k)
{
    if ((unsigned)k < ARRAY_SIZE(kind_names))
        return kind_names[k];
    return "unknown";
}

int lsm_io_kind_parse(const char *s, enum lsm_io_kind *out)
{
    static const struct { const char *name; enum lsm_io_kind kind; } names[] = {
        { "auto", LSM_IO_AUTO },
        { "uring", LSM_IO_URING }, { "io_uring", LSM_IO_URING },
        { "aio", LSM_IO_AIO }, { "libaio", LSM_IO_AIO },
        { "psync", LSM_IO_PSYNC },
    };
    for (size_t i = 0; s && i < ARRAY_SIZE(names); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].kind;
            return 0;
        }
    }
    return lsm_error(-EINVAL, "unknown I/O backend '%s' (expected auto, uring, aio or psync)",
                     s ? s : "");
}

int lsm_direct_parse(const char *s, enum lsm_direct_mode *out)
{
    static const struct { const char *name; enum lsm_direct_mode mode; } names[] = {
        { "auto", LSM_DIRECT_AUTO },
        { "always", LSM_DIRECT_ALWAYS }, { "on", LSM_DIRECT_ALWAYS },
        { "never", LSM_DIRECT_NEVER }, { "off", LSM_DIRECT_NEVER },
    };
    for (size_t i = 0; s && i < ARRAY_SIZE(names); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].mode;
            return 0;
        }
    }
    return lsm_error(-EINVAL, "unknown direct I/O mode '%s' (expected auto, always or never)",
                     s ? s : "");
}

int lsm_errno_parse(const char *s)
{
#define E(x) { #x, x }
    static const struct { const char *name; int err; } names[] = {
        E(EPERM), E(ENOENT), E(EINTR), E(EIO), E(ENXIO), E(EBADF), E(EAGAIN),
        E(ENOMEM), E(EACCES), E(EFAULT), E(EBUSY), E(EEXIST), E(EXDEV),
        E(ENODEV), E(EINVAL), E(ENFILE), E(EMFILE), E(EFBIG), E(ENOSPC),
        E(EROFS), E(ENOSYS), E(EOPNOTSUPP), E(ENOTSUP), E(ETIMEDOUT), E(EDQUOT),
    };
#undef E
    if (!s || !*s)
        return 0;
    if (isdigit((unsigned char)*s)) {
        char *end;
        long v = strtol(s, &end, 10);
        return (*end || v <= 0 || v > 4095) ? 0 : (int)v;
    }
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].err;
    return 0;
}

int lsm_doneq_init(struct lsm_doneq *q, unsigned cap)
{
    q->r = calloc(cap, sizeof *q->r);
    if (!q->r)
        return -ENOMEM;
    q->cap = cap;
    q->head = q->count = 0;
    return 0;
}

void lsm_doneq_free(struct lsm_doneq *q)
{
    free(q->r);
    q->r = NULL;
}

static int try_backend(const struct lsm_io_ops *ops, enum lsm_io_kind kind,
                       const struct lsm_io_config *cfg, struct lsm_io **out)
{
    struct lsm_io *io = calloc(1, sizeof *io);
    if (!io)
        return lsm_error_errno(-ENOMEM, "cannot allocate the %s I/O backend", ops->name);
    io->ops = ops;
    io->kind = kind;
    io->cfg = *cfg;
    int r = ops->init(io, &io->cfg);
    if (r < 0) {
        free(io);
        return r;
    }
    *out = io;
    return 0;
}

/* The kernel (or its configuration) refuses the backend: try the next. */
static inline bool refused(int r)
{
    return r == -ENOSYS || r == -EPERM || r == -EACCES || r == -EOPNOTSUPP ||
           r == -ENOMEM;
}

static int create_backend(enum lsm_io_kind kind, const struct lsm_io_config *cfg,
                          struct lsm_io **out)
{
    int r;

    switch (kind) {
    case LSM_IO_URING:
#ifdef HAVE_LIBURING
        return try_backend(&lsm_uring_ops, LSM_IO_URING, cfg, out);
#else
        return lsm_error(-ENOTSUP, "cannot use io_uring: lsm-sync was built without liburing");
#endif
    case LSM_IO_AIO:
#ifdef HAVE_LIBAIO
        return try_backend(&lsm_aio_ops, LSM_IO_AIO, cfg, out);
#else
        return lsm_error(-ENOTSUP, "cannot use libaio: lsm-sync was built without libaio");
#endif
    case LSM_IO_PSYNC:
        return try_backend(&lsm_psync_ops, LSM_IO_PSYNC, cfg, out);
    case LSM_IO_AUTO:
        break;
    default:
        return lsm_error(-EINVAL, "unknown I/O backend %d", (int)kind);
    }

#ifdef HAVE_LIBURING
    r = try_backend(&lsm_uring_ops, LSM_IO_URING, cfg, out);
    if (r == 0 || !refused(r))
        return r;
#endif
#ifdef HAVE_LIBAIO
    r = try_backend(&lsm_aio_ops, LSM_IO_AIO, cfg, out);
    /* io_setup also says EAGAIN when fs.aio-max-nr is used up and EINVAL
     * when depth exceeds it. */
    if (r == 0 || !(refused(r) || r == -EAGAIN || r == -EINVAL))
        return r;
#endif
    (void)r;
    return try_backend(&lsm_psync_ops, LSM_IO_PSYNC, cfg, out);
}

int lsm_io_create(enum lsm_io_kind kind, const struct lsm_io_config *cfg, struct lsm_io **out)
{
    struct lsm_io_config c = { 0 };
    if (cfg)
        c = *cfg;
    if (c.depth == 0 || c.depth > LSM_IO_MAX_DEPTH)
        return lsm_error(-EINVAL, "cannot create the I/O backend: queue depth %u is not in 1..%u",
                         c.depth, LSM_IO_MAX_DEPTH);
    if (c.max_workers == 0)
        c.max_workers = LSM_IO_DEFAULT_WORKERS;

    struct lsm_io *io;
    int r = create_backend(kind, &c, &io);
    if (r < 0)
        return r;

    const char *fault = getenv("LSM_IO_FAULT");
    if (fault && *fault) {
        struct lsm_io *w;
        r = lsm_fault_wrap(io, fault, &w);
        if (r < 0) {
            lsm_io_destroy(io);
            return r;
        }
        io = w;
    }
    *out = io;
    return 0;
}

void lsm_io_destroy(struct lsm_io *io)
{
    if (!io)
        return;
    /* Wait for what the kernel still owns: a read completing into memory
     * the caller has already reused would be silent corruption. */
    struct lsm_io_req *done[64];
    while (io->in_flight > 0) {
        if (lsm_io_submit(io) < 0)
            break;
        if (lsm_io_reap(io, 1, done, ARRAY_SIZE(done)) <= 0)
            break;
    }
    io->ops->destroy(io);
    free(io);
}

const char *lsm_io_name(const struct lsm_io *io)
{
    if (io->ops == &lsm_fault_ops)
        return lsm_fault_name(io);
    return io->ops->name;
}

int lsm_io_register_buffers(struct lsm_io *io, const struct iovec *iov, unsigned n)
{
    if (!io->ops->register_buffers)
        return lsm_error(-ENOTSUP, "the %s backend has no registered buffers", io->ops->name);
    return io->ops->register_buffers(io, iov, n);
}

int lsm_io_register_file(struct lsm_io *io, struct lsm_file *f)
{
    if (!io->ops->register_file)
        return lsm_error(-ENOTSUP, "the %s backend has no registered files", io->ops->name);
    return io->ops->register_file(io, f);
}

int lsm_io_queue(struct lsm_io *io, struct lsm_io_req *req)
{
    assert(req && req->file && req->file->fd >= 0);
    assert(req->op <= LSM_OP_FLUSH);
    assert(req->buf || (req->op != LSM_OP_READ && req->op != LSM_OP_WRITE));

    if (io->in_flight >= io->cfg.depth)
        return -EAGAIN;     /* flow control, not an error: reap first */
    if ((req->op == LSM_OP_READ || req->op == LSM_OP_WRITE) && req->len > LSM_IO_MAX_LEN)
        return lsm_error(-EINVAL, "cannot %s %llu bytes of %s in one request (at most %llu)",
                         req->op == LSM_OP_READ ? "read" : "write",
                         (unsigned long long)req->len, req->file->path,
                         (unsigned long long)LSM_IO_MAX_LEN);
    if (req->offset > INT64_MAX || req->len > INT64_MAX - req->offset)
        return lsm_error(-EINVAL, "request at offset %llu length %llu on %s is out of range",
                         (unsigned long long)req->offset, (unsigned long long)req->len,
                         req->file->path);

    req->result = 0;
    req->complete_ns = 0;
    req->submit_ns = lsm_now_ns();
    int r = io->ops->queue(io, req);
    if (r < 0)
        return r;
    io->in_flight++;
    return 0;
}

int lsm_io_submit(struct lsm_io *io)
{
    return io->ops->submit(io);
}

int lsm_io_reap(struct lsm_io *io, unsigned min_done, struct lsm_io_req **done, unsigned max)
{
    if (max == 0 || io->in_flight == 0)
        return 0;
    /* Waiting for more than can ever complete would hang. */
    min_done = MIN(min_done, MIN(max, io->in_flight));
    int n = io->ops->reap(io, min_done, done, MIN(max, io->in_flight));
    if (n <= 0)
        return n;
    uint64_t now = lsm_now_ns();
    for (int i = 0; i < n; i++)
        if (!done[i]->complete_ns)
            done[i]->complete_ns = now;
    assert((unsigned)n <= io->in_flight);
    io->in_flight -= n;
    return n;
}
