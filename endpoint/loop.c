/* The loop: one lsm_io for every local endpoint, poll() for foreign
 * descriptors, and the delivery of finished commands (endpoint.h).
 *
 * A command is counted outstanding from lsm_loop_cmd_begin until its done
 * callback ran.  Its parts (I/O on the lsm_io, or the backend's own work)
 * are counted in cmd->parts; the last lsm_loop_cmd_put moves it to the
 * ready list, which lsm_loop_run delivers in order.  Callbacks therefore
 * never run inside a submitting call. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "endpoint.h"
#include "error.h"
#include "util.h"

#define REAP_BATCH 64
#define MAX_FDS 8
#define MIXED_SLICE_MS 1
#define IDLE_SLICE_MS 50

struct part {
    struct lsm_io_req req;
    struct lsm_ep_cmd *cmd;
    lsm_loop_short_fn on_short;
    struct part *next;        /* free list or backlog */
};

struct lsm_loop {
    struct lsm_io *io;
    struct part *free_parts;
    struct part *backlog_head, *backlog_tail;
    unsigned queued;          /* parts on the lsm_io (queued or submitted) */
    unsigned outstanding;
    struct lsm_ep_cmd *ready_head, *ready_tail;
    struct lsm_ep *fds[MAX_FDS];
    unsigned nfds;
    int first_err;            /* the first command failure, and its message */
    char first_msg[1024];
    /* every part ever allocated, freed at destroy */
    struct part **chunks;
    unsigned nchunks;
};

int lsm_loop_create(const struct lsm_loop_config *cfg, struct lsm_loop **out)
{
    struct lsm_loop *l = calloc(1, sizeof(*l));
    if (!l)
        return lsm_error(-ENOMEM, "out of memory");
    struct lsm_io_config ic = {
        .depth = cfg && cfg->depth ? cfg->depth : 64,
        .fixed_buffers = cfg ? cfg->fixed_buffers : false,
    };
    int r = lsm_io_create(cfg ? cfg->io_kind : LSM_IO_AUTO, &ic, &l->io);
    if (r < 0) {
        free(l);
        return r;
    }
    *out = l;
    return 0;
}

void lsm_loop_destroy(struct lsm_loop *l)
{
    if (!l)
        return;
    lsm_io_destroy(l->io);   /* waits for what is in flight */
    for (unsigned i = 0; i < l->nfds; i++)
        l->fds[i]->loop = NULL;   /* detached: their close must not come back here */
    for (unsigned i = 0; i < l->nchunks; i++)
        free(l->chunks[i]);
    free(l->chunks);
    free(l);
}

const char *lsm_loop_io_name(const struct lsm_loop *l)
{
    return lsm_io_name(l->io);
}

int lsm_loop_register_buffers(struct lsm_loop *l, const struct iovec *iov, unsigned n)
{
    return lsm_io_register_buffers(l->io, iov, n);
}

int lsm_loop_register_file(struct lsm_loop *l, struct lsm_file *f)
{
    return lsm_io_register_file(l->io, f);
}

int lsm_loop_add_fd(struct lsm_loop *l, struct lsm_ep *ep)
{
    if (l->nfds >= MAX_FDS)
        return lsm_error(-EMFILE, "too many foreign endpoints on one loop");
    l->fds[l->nfds++] = ep;
    return 0;
}

void lsm_loop_remove_fd(struct lsm_loop *l, struct lsm_ep *ep)
{
    for (unsigned i = 0; i < l->nfds; i++)
        if (l->fds[i] == ep) {
            l->fds[i] = l->fds[--l->nfds];
            return;
        }
}

const char *lsm_loop_first_error(const struct lsm_loop *l)
{
    return l->first_err ? l->first_msg : NULL;
}

void lsm_loop_clear_error(struct lsm_loop *l)
{
    l->first_err = 0;
    l->first_msg[0] = 0;
}

unsigned lsm_loop_outstanding(const struct lsm_loop *l)
{
    return l->outstanding;
}

void lsm_loop_cmd_begin(struct lsm_loop *l, struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    cmd->ep = ep;
    cmd->parts = 1;
    cmd->result = 0;
    cmd->next_ready = NULL;
    l->outstanding++;
}

void lsm_loop_cmd_put(struct lsm_loop *l, struct lsm_ep_cmd *cmd, int err)
{
    if (err < 0 && !cmd->result)
        cmd->result = err;
    if (err < 0 && !l->first_err) {
        /* Kept now: the thread's message may be another by delivery. */
        l->first_err = err;
        snprintf(l->first_msg, sizeof(l->first_msg), "%s", lsm_last_error());
    }
    if (--cmd->parts)
        return;
    cmd->next_ready = NULL;
    if (l->ready_tail)
        l->ready_tail->next_ready = cmd;
    else
        l->ready_head = cmd;
    l->ready_tail = cmd;
}

static struct part *part_get(struct lsm_loop *l)
{
    if (!l->free_parts) {
        enum { N = 64 };
        struct part **c = realloc(l->chunks, (l->nchunks + 1) * sizeof(*c));
        if (!c)
            return NULL;
        l->chunks = c;
        struct part *p = calloc(N, sizeof(*p));
        if (!p)
            return NULL;
        l->chunks[l->nchunks++] = p;
        for (unsigned i = 0; i < N; i++) {
            p[i].next = l->free_parts;
            l->free_parts = &p[i];
        }
    }
    struct part *p = l->free_parts;
    l->free_parts = p->next;
    return p;
}

static void part_free(struct lsm_loop *l, struct part *p)
{
    p->next = l->free_parts;
    l->free_parts = p;
}

/* Queue p on the lsm_io, or behind the backlog.  0 or -errno. */
static int part_queue(struct lsm_loop *l, struct part *p)
{
    p->next = NULL;
    if (!l->backlog_head) {
        int r = lsm_io_queue(l->io, &p->req);
        if (r == 0) {
            l->queued++;
            return 0;
        }
        if (r != -EAGAIN)
            return lsm_error_errno(r, "cannot queue I/O on %s", p->req.file->path);
    }
    if (l->backlog_tail)
        l->backlog_tail->next = p;
    else
        l->backlog_head = p;
    l->backlog_tail = p;
    return 0;
}

static void backlog_flush(struct lsm_loop *l)
{
    while (l->backlog_head) {
        struct part *p = l->backlog_head;
        int r = lsm_io_queue(l->io, &p->req);
        if (r == -EAGAIN)
            return;
        l->backlog_head = p->next;
        if (!l->backlog_head)
            l->backlog_tail = NULL;
        if (r < 0) {
            lsm_error_errno(r, "cannot queue I/O on %s", p->req.file->path);
            struct lsm_ep_cmd *cmd = p->cmd;
            part_free(l, p);
            lsm_loop_cmd_put(l, cmd, r);
            continue;
        }
        l->queued++;
    }
}

int lsm_loop_file_io(struct lsm_loop *l, struct lsm_ep_cmd *cmd, enum lsm_io_op op,
                     struct lsm_file *f, void *buf, uint64_t len, uint64_t off,
                     lsm_loop_short_fn on_short)
{
    struct part *p = part_get(l);
    if (!p)
        return lsm_error(-ENOMEM, "out of memory");
    memset(&p->req, 0, sizeof(p->req));
    p->req.op = op;
    p->req.file = f;
    p->req.buf = buf;
    p->req.buf_index = cmd->buf_index;
    p->req.offset = off;
    p->req.len = len;
    p->req.user = p;
    p->cmd = cmd;
    p->on_short = on_short;
    cmd->parts++;
    int r = part_queue(l, p);
    if (r < 0) {
        cmd->parts--;
        part_free(l, p);
    }
    return r;
}

/* A part's I/O finished. */
static void part_done(struct lsm_loop *l, struct part *p)
{
    struct lsm_io_req *req = &p->req;
    struct lsm_ep_cmd *cmd = p->cmd;
    bool rd = req->op == LSM_OP_READ;
    int err = 0;
    l->queued--;
    if (req->result >= 0 && (uint64_t)req->result < req->len) {
        uint64_t n = (uint64_t)req->result;
        if (rd && p->on_short) {
            /* The end of a file not a multiple of the O_DIRECT alignment
             * (or one that shrank: the source's check says so): the
             * backend supplies the rest. */
            err = p->on_short(cmd->ep, cmd, (char *)req->buf + n, req->len - n, req->offset + n);
        } else if (n == 0) {
            err = rd ? lsm_error(-EIO, "cannot read %s at offset %" PRIu64 ": unexpected end of file "
                                 "(did the source change size?)", req->file->path, req->offset)
                     : lsm_error(-EIO, "cannot write to %s at offset %" PRIu64 ": short write",
                                 req->file->path, req->offset);
        } else if (!cmd->result) {
            /* Short transfer: issue the rest. */
            req->buf = (char *)req->buf + n;
            req->offset += n;
            req->len -= n;
            err = part_queue(l, p);
            if (err == 0)
                return;
        }
    } else if (req->result < 0 && req->op == LSM_OP_FLUSH) {
        err = lsm_error_errno((int)req->result, "cannot sync %s", req->file->path);
    } else if (req->result < 0) {
        err = rd ? lsm_error_errno((int)req->result, "cannot read %s at offset %" PRIu64,
                                   req->file->path, req->offset)
                 : lsm_error_errno((int)req->result, "cannot write to %s at offset %" PRIu64,
                                   req->file->path, req->offset);
    }
    part_free(l, p);
    lsm_loop_cmd_put(l, cmd, err);
}

static int deliver(struct lsm_loop *l)
{
    int n = 0;
    while (l->ready_head) {
        struct lsm_ep_cmd *cmd = l->ready_head;
        l->ready_head = cmd->next_ready;
        if (!l->ready_head)
            l->ready_tail = NULL;
        l->outstanding--;
        n++;
        cmd->done(cmd);
    }
    return n;
}

static int reap(struct lsm_loop *l, unsigned min_done)
{
    struct lsm_io_req *done[REAP_BATCH];
    int n = lsm_io_reap(l->io, min_done, done, REAP_BATCH);
    if (n == -EINTR)
        return 0;
    if (n < 0)
        return lsm_error_errno(n, "cannot reap I/O completions");
    for (int i = 0; i < n; i++)
        part_done(l, done[i]->user);
    return n;
}

/* poll() the foreign descriptors that wait for something, for at most
 * ms: the number of descriptors polled (0: none waits), or -errno. */
static int poll_fds(struct lsm_loop *l, int ms)
{
    struct pollfd pf[MAX_FDS];
    struct lsm_ep *eps[MAX_FDS];
    unsigned n = 0;
    for (unsigned i = 0; i < l->nfds; i++) {
        short ev = 0;
        int fd = l->fds[i]->ops->poll_fd(l->fds[i], &ev);
        if (fd < 0)
            continue;
        pf[n] = (struct pollfd){ .fd = fd, .events = ev };
        eps[n++] = l->fds[i];
    }
    if (!n)
        return 0;
    int r = poll(pf, n, ms);
    if (r < 0)
        return errno == EINTR ? (int)n : lsm_error_errno(-errno, "cannot poll");
    for (unsigned i = 0; i < n && r > 0; i++) {
        if (!pf[i].revents)
            continue;
        r--;
        int e = eps[i]->ops->notify(eps[i], pf[i].revents);
        if (e < 0)
            return e;
    }
    return (int)n;
}

int lsm_loop_run(struct lsm_loop *l)
{
    for (;;) {
        backlog_flush(l);
        if (l->queued) {
            int r = lsm_io_submit(l->io);
            if (r < 0 && r != -EAGAIN && r != -EINTR)
                return lsm_error_errno(r, "cannot submit I/O");
        }
        if (l->ready_head)
            return deliver(l);
        if (!l->outstanding)
            return 0;
        int polled = 0;
        if (l->nfds) {
            /* Foreign descriptors: poll them, and reap without blocking. */
            polled = poll_fds(l, l->queued ? MIXED_SLICE_MS : IDLE_SLICE_MS);
            if (polled < 0)
                return polled;
            if (polled && l->queued) {
                int r = reap(l, 0);
                if (r < 0)
                    return r;
            }
        }
        if (polled || l->ready_head)   /* (poll_fd may fail commands: a time-out) */
            continue;
        if (!l->queued && !l->backlog_head)
            return lsm_error(-EIO, "internal: %u commands outstanding and nothing in flight",
                             l->outstanding);
        int r = reap(l, 1);
        if (r < 0)
            return r;
    }
}

/* ---- Calls through the table ---- */

int lsm_ep_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                   unsigned max)
{
    if (!max || !len)
        return lsm_error(-EINVAL, "internal: empty extents request");
    if (ep->ops->extents)
        return ep->ops->extents(ep, off, len, out, max);
    out[0] = (struct lsm_ep_extent){ .start = off, .length = len, .kind = LSM_EP_DATA };
    return 1;
}

int lsm_ep_submit(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    int (*fn)(struct lsm_ep *, struct lsm_ep_cmd *) = NULL;
    const char *what = "?";
    switch (cmd->op) {
    case LSM_EP_OP_READ: fn = ep->ops->read; what = "read"; break;
    case LSM_EP_OP_WRITE: fn = ep->ops->write; what = "write"; break;
    case LSM_EP_OP_ZERO: fn = ep->ops->zero; what = "zero"; break;
    case LSM_EP_OP_TRIM: fn = ep->ops->trim; what = "trim"; break;
    }
    if (!fn)
        return lsm_error(-ENOTSUP, "cannot %s %s: not supported by its %s endpoint", what,
                         ep->name, ep->ops->name);
    if ((cmd->op == LSM_EP_OP_WRITE || cmd->op == LSM_EP_OP_ZERO || cmd->op == LSM_EP_OP_TRIM) &&
        ep->caps.read_only)
        return lsm_error(-EROFS, "cannot %s %s: read-only", what, ep->name);
    return fn(ep, cmd);
}

int lsm_ep_flush(struct lsm_ep *ep)
{
    if (ep->no_flush)
        return 0;
    return ep->ops->flush ? ep->ops->flush(ep) : 0;
}

int lsm_ep_checkpoint(struct lsm_ep *ep)
{
    return ep->ops->checkpoint ? ep->ops->checkpoint(ep) : lsm_ep_flush(ep);
}

int lsm_ep_finish(struct lsm_ep *ep)
{
    return ep->ops->finish ? ep->ops->finish(ep) : lsm_ep_flush(ep);
}

int lsm_ep_check(struct lsm_ep *ep)
{
    return ep->ops->check ? ep->ops->check(ep) : 0;
}

int lsm_ep_expect(struct lsm_ep *ep, uint64_t bytes)
{
    return ep->ops->expect ? ep->ops->expect(ep, bytes) : 0;
}

static void run_done(struct lsm_ep_cmd *cmd)
{
    *(bool *)cmd->user = true;
}

int lsm_ep_run(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    bool fin = false;
    cmd->done = run_done;
    cmd->user = &fin;
    int r = lsm_ep_submit(ep, cmd);
    if (r < 0)
        return r;
    while (!fin) {
        r = lsm_loop_run(ep->loop);
        if (r < 0)
            return r;
        if (r == 0 && !fin)
            return lsm_error(-EIO, "internal: command lost");
    }
    return cmd->result;
}

void lsm_ep_close(struct lsm_ep *ep)
{
    if (ep)
        ep->ops->close(ep);
}
