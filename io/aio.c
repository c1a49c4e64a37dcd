/* Linux native AIO backend (libaio).
 *
 * Reads and writes go through io_submit/io_getevents (asynchronous only
 * with O_DIRECT, as with any user of the interface); WRITE_ZEROES and FLUSH
 * run synchronously at queue time and complete through a queue that the
 * next reap() returns first.  io_submit may take only part of a batch
 * (EAGAIN): the rest stays pending and is pushed again by submit()/reap().
 */
#include <libaio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "io-internal.h"
#include "util.h"

struct aio {
    io_context_t ctx;
    struct iocb *iocbs;          /* depth of them */
    struct iocb **free_iocbs;    /* stack */
    unsigned nfree;
    struct iocb **pending;       /* prepared, not yet taken by io_submit */
    unsigned npending;
    unsigned in_kernel;          /* submitted, not yet reaped */
    struct io_event *events;
    struct lsm_doneq doneq;      /* synthetic completions */
};

static void aio_free(struct aio *a)
{
    free(a->iocbs);
    free(a->free_iocbs);
    free(a->pending);
    free(a->events);
    lsm_doneq_free(&a->doneq);
    free(a);
}

static int aio_init(struct lsm_io *io, const struct lsm_io_config *cfg)
{
    struct aio *a = calloc(1, sizeof *a);
    if (!a)
        return lsm_error_errno(-ENOMEM, "cannot allocate the aio backend");
    unsigned d = cfg->depth;
    a->iocbs = calloc(d, sizeof *a->iocbs);
    a->free_iocbs = calloc(d, sizeof *a->free_iocbs);
    a->pending = calloc(d, sizeof *a->pending);
    a->events = calloc(d, sizeof *a->events);
    if (!a->iocbs || !a->free_iocbs || !a->pending || !a->events ||
        lsm_doneq_init(&a->doneq, d) < 0) {
        aio_free(a);
        return lsm_error_errno(-ENOMEM, "cannot allocate the aio backend");
    }
    for (unsigned i = 0; i < d; i++)
        a->free_iocbs[i] = &a->iocbs[d - 1 - i];
    a->nfree = d;

    int r = io_setup((int)d, &a->ctx);
    if (r < 0) {
        aio_free(a);
        return lsm_error_errno(r, "cannot create an aio context of %u requests%s", d,
                               r == -EAGAIN ? " (fs.aio-max-nr reached?)" : "");
    }
    io->priv = a;
    return 0;
}

static void aio_destroy(struct lsm_io *io)
{
    struct aio *a = io->priv;
    io_destroy(a->ctx);   /* waits for whatever is still in the kernel */
    aio_free(a);
}

static int aio_queue(struct lsm_io *io, struct lsm_io_req *req)
{
    struct aio *a = io->priv;

    if (req->op == LSM_OP_WRITE_ZEROES || req->op == LSM_OP_FLUSH) {
        req->result = lsm_io_exec_sync(req);
        lsm_doneq_push(&a->doneq, req);
        return 0;
    }
    if (!a->nfree)
        return -EAGAIN;   /* cannot happen: one iocb per depth slot */
    struct iocb *cb = a->free_iocbs[--a->nfree];
    if (req->op == LSM_OP_READ)
        io_prep_pread(cb, req->file->fd, req->buf, req->len, (long long)req->offset);
    else
        io_prep_pwrite(cb, req->file->fd, req->buf, req->len, (long long)req->offset);
    cb->data = req;
    a->pending[a->npending++] = cb;
    return 0;
}

/* Push pending iocbs.  An iocb the kernel rejects outright (io_submit
 * fails on the first one) completes with that error, so a bad request
 * never fails the batch; EAGAIN leaves the rest pending.  Always 0: every
 * failure is carried by a request. */
static int aio_push(struct aio *a)
{
    unsigned start = 0;
    while (start < a->npending) {
        int r = io_submit(a->ctx, (long)(a->npending - start), a->pending + start);
        if (r > 0) {
            start += (unsigned)r;
            a->in_kernel += (unsigned)r;
            continue;
        }
        if (r == -EINTR)
            continue;
        if (r == 0 || r == -EAGAIN)
            break;
        /* This iocb is bad (misaligned O_DIRECT, bad fd...): fail it alone. */
        struct iocb *cb = a->pending[start++];
        struct lsm_io_req *req = cb->data;
        req->result = r;
        a->free_iocbs[a->nfree++] = cb;
        lsm_doneq_push(&a->doneq, req);
    }
    if (start) {
        memmove(a->pending, a->pending + start, (a->npending - start) * sizeof *a->pending);
        a->npending -= start;
    }
    return 0;
}

static int aio_submit(struct lsm_io *io)
{
    return aio_push(io->priv);
}

static unsigned aio_take_events(struct aio *a, int n, struct lsm_io_req **done)
{
    for (int i = 0; i < n; i++) {
        struct io_event *ev = &a->events[i];
        struct lsm_io_req *req = ev->data;
        req->result = (long)ev->res;   /* bytes, or -errno */
        a->free_iocbs[a->nfree++] = ev->obj;
        done[i] = req;
    }
    a->in_kernel -= (unsigned)n;
    return (unsigned)n;
}

static int aio_reap(struct lsm_io *io, unsigned min_done, struct lsm_io_req **done, unsigned max)
{
    struct aio *a = io->priv;
    if (a->npending)
        aio_push(a);
    unsigned got = lsm_doneq_pop(&a->doneq, done, max);

    while (got < max) {
        if (a->npending) {
            aio_push(a);
            got += lsm_doneq_pop(&a->doneq, done + got, max - got);
            if (a->npending && a->in_kernel == 0 && got < max) {
                /* The kernel takes nothing (EAGAIN with an empty
                 * context): do one synchronously rather than hang. */
                struct iocb *cb = a->pending[0];
                memmove(a->pending, a->pending + 1, --a->npending * sizeof *a->pending);
                struct lsm_io_req *req = cb->data;
                req->result = lsm_io_exec_sync(req);
                a->free_iocbs[a->nfree++] = cb;
                done[got++] = req;
                continue;
            }
        }
        if (a->in_kernel == 0)
            break;
        unsigned want = got < min_done ? min_done - got : 0;
        want = MIN(want, a->in_kernel);
        unsigned room = MIN(max - got, a->in_kernel);
        struct timespec zero = { 0, 0 };
        int n = io_getevents(a->ctx, (long)want, (long)room, a->events, want ? NULL : &zero);
        if (n == -EINTR)
            continue;
        if (n < 0) {
            if (got)
                break;
            return lsm_error_errno(n, "cannot wait for aio completions");
        }
        got += aio_take_events(a, n, done + got);
        if (got >= min_done)
            break;
    }
    return (int)got;
}

const struct lsm_io_ops lsm_aio_ops = {
    .name = "aio",
    .init = aio_init,
    .destroy = aio_destroy,
    .queue = aio_queue,
    .submit = aio_submit,
    .reap = aio_reap,
};
