/* io_uring backend (liburing >= 2.3).
 *
 * queue() only fills SQEs; submit() makes one io_uring_enter for the batch;
 * reap() takes CQEs in batches.  The ring is created disabled and enabled by
 * the first thread that submits, so with SINGLE_ISSUER|DEFER_TASKRUN the
 * ring binds to the thread that uses it rather than the one that built it.
 *
 * WRITE_ZEROES is IORING_OP_FALLOCATE(ZERO_RANGE|KEEP_SIZE) on regular
 * files; on block devices, or once the file system said EOPNOTSUPP, it runs
 * synchronously through lsm_file_zero() and completes through a queue that
 * the next reap() returns first.
 */
#include <assert.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "error.h"
#include "io-internal.h"
#include "util.h"

#define URING_MAX_FILES 64u
#define URING_CQE_BATCH 64u

struct uring {
    struct io_uring ring;
    bool enabled;            /* created with IORING_SETUP_R_DISABLED until first use */
    unsigned unsubmitted;    /* SQEs filled since the last io_uring_submit */
    unsigned nbufs;          /* registered buffers */
    int *files;              /* fds in the registered (sparse) file table */
    unsigned nfiles;         /* slots used */
    bool zero_sync;          /* fallocate refused once: zero synchronously */
    struct lsm_doneq doneq;  /* synthetic completions */
};

static int uring_init(struct lsm_io *io, const struct lsm_io_config *cfg)
{
    /* Test hook (io.h): fail as a kernel refusing io_uring would. */
    const char *test_errno = getenv("LSM_TEST_URING_ERRNO");
    if (test_errno && *test_errno) {
        int err = lsm_errno_parse(test_errno);
        if (!err)
            return lsm_error(-EINVAL, "LSM_TEST_URING_ERRNO=%s is not an errno name or number",
                             test_errno);
        return lsm_error_errno(-err, "cannot create an io_uring of %u entries (LSM_TEST_URING_ERRNO)",
                               cfg->depth);
    }

    struct uring *u = calloc(1, sizeof *u);
    if (!u)
        return lsm_error_errno(-ENOMEM, "cannot allocate the io_uring backend");
    int r = lsm_doneq_init(&u->doneq, cfg->depth);
    if (r < 0) {
        free(u);
        return lsm_error_errno(r, "cannot allocate the io_uring backend");
    }

    struct io_uring_params p = { 0 };
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
    r = io_uring_queue_init_params(cfg->depth, &u->ring, &p);
    if (r == -EINVAL) {
        /* Before 6.1: no SINGLE_ISSUER / DEFER_TASKRUN. */
        memset(&p, 0, sizeof p);
        r = io_uring_queue_init_params(cfg->depth, &u->ring, &p);
        u->enabled = true;
    }
    if (r < 0) {
        lsm_doneq_free(&u->doneq);
        free(u);
        return lsm_error_errno(r, "cannot create an io_uring of %u entries", cfg->depth);
    }

    /* Bound the io-wq workers (buffered I/O and fallocate go there).  An
     * old kernel without the call just keeps its default. */
    unsigned workers[2] = { cfg->max_workers, cfg->max_workers };
    (void)io_uring_register_iowq_max_workers(&u->ring, workers);

    io->priv = u;
    return 0;
}

static void uring_destroy(struct lsm_io *io)
{
    struct uring *u = io->priv;
    io_uring_queue_exit(&u->ring);
    free(u->files);
    lsm_doneq_free(&u->doneq);
    free(u);
}

static int uring_enable(struct uring *u)
{
    if (u->enabled)
        return 0;
    /* liburing 2.3 declares io_uring_enable_rings() but does not export
     * it: make the register call ourselves. */
    if (syscall(__NR_io_uring_register, u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
        return lsm_error_errno(-errno, "cannot enable the io_uring");
    u->enabled = true;
    return 0;
}

static int uring_register_buffers(struct lsm_io *io, const struct iovec *iov, unsigned n)
{
    struct uring *u = io->priv;
    if (!io->cfg.fixed_buffers)
        return lsm_error(-ENOTSUP, "fixed buffers are disabled in the I/O configuration");
    if (io->in_flight)
        return lsm_error(-EBUSY, "cannot register buffers with %u requests in flight", io->in_flight);
    if (u->nbufs) {
        io_uring_unregister_buffers(&u->ring);
        u->nbufs = 0;
    }
    int r = io_uring_register_buffers(&u->ring, iov, n);
    if (r < 0)
        return lsm_error_errno(r, "cannot register %u buffers with the io_uring%s", n,
                               r == -ENOMEM ? " (locked memory limit?)" : "");
    u->nbufs = n;
    return 0;
}

static int uring_register_file(struct lsm_io *io, struct lsm_file *f)
{
    struct uring *u = io->priv;
    int r;

    if (f->reg_index >= 0 && (unsigned)f->reg_index < u->nfiles && u->files[f->reg_index] == f->fd)
        return 0;
    if (!u->files) {
        u->files = malloc(URING_MAX_FILES * sizeof *u->files);
        if (!u->files)
            return lsm_error_errno(-ENOMEM, "cannot register %s with the io_uring", f->path);
        r = io_uring_register_files_sparse(&u->ring, URING_MAX_FILES);
        if (r < 0) {
            /* Before 5.19: a table of -1 entries does the same. */
            for (unsigned i = 0; i < URING_MAX_FILES; i++)
                u->files[i] = -1;
            r = io_uring_register_files(&u->ring, u->files, URING_MAX_FILES);
        }
        if (r < 0) {
            free(u->files);
            u->files = NULL;
            return lsm_error_errno(r, "cannot create the io_uring file table for %s", f->path);
        }
    }
    if (u->nfiles >= URING_MAX_FILES)
        return lsm_error(-ENOSPC, "cannot register %s with the io_uring: all %u slots are used",
                         f->path, URING_MAX_FILES);
    r = io_uring_register_files_update(&u->ring, u->nfiles, &f->fd, 1);
    if (r < 0)
        return lsm_error_errno(r, "cannot register %s with the io_uring", f->path);
    u->files[u->nfiles] = f->fd;
    f->reg_index = (int)u->nfiles++;
    return 0;
}

static struct io_uring_sqe *uring_get_sqe(struct uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) {
        /* Cannot happen while in_flight <= depth = SQ size, but do not
         * depend on it: push what is there and try again. */
        int r = uring_enable(u);
        if (r == 0)
            r = io_uring_submit(&u->ring);
        if (r >= 0) {
            u->unsubmitted -= MIN((unsigned)r, u->unsubmitted);
            sqe = io_uring_get_sqe(&u->ring);
        }
    }
    return sqe;
}

static int uring_queue(struct lsm_io *io, struct lsm_io_req *req)
{
    struct uring *u = io->priv;
    struct lsm_file *f = req->file;

    if (req->op == LSM_OP_WRITE_ZEROES && (f->is_blockdev || u->zero_sync)) {
        req->result = lsm_io_exec_sync(req);
        lsm_doneq_push(&u->doneq, req);
        return 0;
    }

    struct io_uring_sqe *sqe = uring_get_sqe(u);
    if (!sqe)
        return lsm_error(-EBUSY, "cannot queue a request on %s: the io_uring submission queue is full",
                         f->path);

    bool fixed_file = f->reg_index >= 0 && (unsigned)f->reg_index < u->nfiles &&
                      u->files[f->reg_index] == f->fd;
    int fd = fixed_file ? f->reg_index : f->fd;
    bool fixed_buf = io->cfg.fixed_buffers && req->buf_index >= 0 &&
                     (unsigned)req->buf_index < u->nbufs;

    switch (req->op) {
    case LSM_OP_READ:
        if (fixed_buf)
            io_uring_prep_read_fixed(sqe, fd, req->buf, (unsigned)req->len, req->offset,
                                     req->buf_index);
        else
            io_uring_prep_read(sqe, fd, req->buf, (unsigned)req->len, req->offset);
        break;
    case LSM_OP_WRITE:
        if (fixed_buf)
            io_uring_prep_write_fixed(sqe, fd, req->buf, (unsigned)req->len, req->offset,
                                      req->buf_index);
        else
            io_uring_prep_write(sqe, fd, req->buf, (unsigned)req->len, req->offset);
        break;
    case LSM_OP_WRITE_ZEROES:
        io_uring_prep_fallocate(sqe, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                                (off_t)req->offset, (off_t)req->len);
        break;
    case LSM_OP_FLUSH:
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        break;
    }
    if (fixed_file)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data(sqe, req);
    u->unsubmitted++;
    return 0;
}

static int uring_submit(struct lsm_io *io)
{
    struct uring *u = io->priv;
    if (!u->unsubmitted)
        return 0;
    int r = uring_enable(u);
    if (r < 0)
        return r;
    do
        r = io_uring_submit(&u->ring);
    while (r == -EINTR);
    if (r == -EAGAIN || r == -EBUSY)
        return 0;   /* short of resources: reap() pushes them again */
    if (r < 0)
        return lsm_error_errno(r, "cannot submit %u requests to the io_uring%s", u->unsubmitted,
                               r == -EEXIST ? " (it belongs to another thread)" : "");
    /* The kernel stops at an SQE it cannot even prepare (that one
     * completes with an error); the rest stay queued for the next call. */
    u->unsubmitted -= MIN((unsigned)r, u->unsubmitted);
    return 0;
}

/* Fill in one completion; the fallocate fallback happens here. */
static void uring_complete(struct uring *u, struct lsm_io_req *req, int res)
{
    if (req->op == LSM_OP_WRITE_ZEROES) {
        if (res == -EOPNOTSUPP || res == -EINVAL) {
            /* No ZERO_RANGE here (or no FALLOCATE in this kernel's
             * io_uring): do it the slow way from now on. */
            u->zero_sync = true;
            req->result = lsm_io_exec_sync(req);
            return;
        }
        req->result = res < 0 ? res : (int64_t)req->len;
        return;
    }
    req->result = res;
}

static int uring_reap(struct lsm_io *io, unsigned min_done, struct lsm_io_req **done, unsigned max)
{
    struct uring *u = io->priv;
    unsigned got = lsm_doneq_pop(&u->doneq, done, max);
    bool polled = false;
    int r = uring_enable(u);
    if (r < 0)
        return got ? (int)got : r;

    while (got < max) {
        struct io_uring_cqe *cqes[URING_CQE_BATCH];
        unsigned n = io_uring_peek_batch_cqe(&u->ring, cqes, MIN(max - got, URING_CQE_BATCH));
        for (unsigned i = 0; i < n; i++) {
            struct lsm_io_req *req = io_uring_cqe_get_data(cqes[i]);
            uring_complete(u, req, cqes[i]->res);
            done[got++] = req;
        }
        io_uring_cq_advance(&u->ring, n);
        if (n)
            continue;
        if (got >= min_done) {
            /* With DEFER_TASKRUN completions are only posted when we
             * enter the kernel: look once before saying "nothing yet". */
            if (polled || got > 0) {
                if (u->unsubmitted)
                    (void)uring_submit(io);   /* a failure shows at the next call */
                break;
            }
            polled = true;
            if (u->unsubmitted) {
                r = io_uring_submit_and_get_events(&u->ring);
                if (r >= 0)
                    u->unsubmitted -= MIN((unsigned)r, u->unsubmitted);
            } else {
                r = io_uring_get_events(&u->ring);
            }
        } else if (u->unsubmitted) {
            r = io_uring_submit_and_wait(&u->ring, min_done - got);
            if (r >= 0)
                u->unsubmitted -= MIN((unsigned)r, u->unsubmitted);
        } else {
            struct io_uring_cqe *cqe;
            r = io_uring_wait_cqe_nr(&u->ring, &cqe, min_done - got);
        }
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            if (got)
                break;
            return lsm_error_errno(r, "cannot wait for io_uring completions");
        }
    }
    return (int)got;
}

const struct lsm_io_ops lsm_uring_ops = {
    .name = "uring",
    .init = uring_init,
    .destroy = uring_destroy,
    .register_buffers = uring_register_buffers,
    .register_file = uring_register_file,
    .queue = uring_queue,
    .submit = uring_submit,
    .reap = uring_reap,
};
