/* The NBD endpoint: an NBD export (nbd://, nbd+unix://, nbds://...) through
 * libnbd, as a source (read-only) or a destination, over one or several
 * connections (docs/nbd.md).
 *
 * Commands are asynchronous.  Each read, write, zero or trim command is cut
 * into NBD requests ("parts": at most NBD_MAX_IO bytes of data, NBD_MAX_ZERO
 * of zeroes), each sent with nbd_aio_* on the connection with the fewest
 * bytes in flight.  Every connection is a small endpoint of its own on the
 * loop (lsm_loop_add_fd), whose poll_fd / notify drive its handle's socket,
 * so that the copy keeps as many requests in flight as it has buffers, on
 * every connection, in the same loop as the local endpoint.  Several
 * connections are opened only when the server advertises multi-conn (every
 * connection then sees the writes of the others once they completed).
 *
 * Extents come from the base:allocation metadata context (otherwise the
 * whole export is data), a window of NBD_STATUS_WINDOW bytes per block
 * status request.  The extents op is synchronous, but the next window is
 * asked for as soon as one is answered (on the first connection), so that
 * when the copy's plan reaches it the answer is usually there already: no
 * pre-pass over the whole disk and, on a steady copy, no stall.
 *
 * Zeroes are NBD_CMD_WRITE_ZEROES (without NO_HOLE: the server may punch a
 * hole, unless the command does not allow it, LSM_EP_MAY_TRIM absent),
 * with FAST_ZERO when the command asks for it and the server offers it
 * (-ENOTSUP at once when it asks and the server does not); a server
 * without WRITE_ZEROES gets writes of a zero buffer.  Flush asks every
 * connection (NBD_CMD_FLUSH) when the server can flush.  Before that, every
 * flush_every bytes of writes and zeroes completed, one flush is sent in
 * the background (nothing waits for it; one at a time, on one connection:
 * with multi-conn it covers what completed on every one), so that the
 * server's writeback overlaps the copy; a server that fails one fails the
 * final flush (a failed flush is not retried: what it covered may be lost).
 *
 * Every wait on the server is bounded.  The handles are driven with libnbd's
 * asynchronous calls and poll() in slices of at most CANCEL_POLL_MS, so:
 *   - connecting (TCP, Unix or vsock connect, TLS, handshake, option
 *     negotiation) ends after connect_ms with -ETIMEDOUT.  The one step not
 *     bounded here is libnbd's getaddrinfo() of a host name in an nbd://
 *     URI, which runs inside nbd_aio_connect_uri and is bounded by the
 *     resolver's own time-outs; numeric addresses and Unix sockets need no
 *     look-up;
 *   - each request ends after request_ms with -ETIMEDOUT, naming the server
 *     and the offset: the oldest request of each connection is looked at
 *     every time the loop asks poll_fd what to wait for (at most 50 ms
 *     apart), a synchronous wait (block status, flush) in its own loop;
 *   - the copy's cancel flag (SIGINT/SIGTERM) is looked at every slice and
 *     ends any wait with -EINTR.
 * After a time-out, a cancel or a lost connection the endpoint is broken:
 * every request in flight on every connection fails, nothing more is sent,
 * and close drops the sockets without waiting for the server.
 *
 * Retries.  A request the server answers with EIO or ENOMEM (its storage
 * or its memory, which a later attempt may find working; nbdkit's error
 * filter injects EIO) is sent again, at most `retries` times, after a
 * backoff of RETRY_BASE_MS doubling each time; then the command fails
 * naming the offset.  The protocol's other errors (EPERM, EINVAL, ENOSPC,
 * EOVERFLOW, ENOTSUP, ESHUTDOWN) are final.  A read, write, zero or trim
 * sent again is harmless: each is idempotent, and no other request of the
 * copy overlaps it. */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "backends.h"
#include "endpoint.h"
#include "error.h"
#include "util.h"

#define NBD_STATUS_WINDOW (256 * MiB)  /* bytes asked per block status request */
#define NBD_MAX_IO (32 * MiB)          /* largest read or write request (NBD's usual limit) */
#define NBD_MAX_ZERO (1 * GiB)         /* largest zero or trim request */
#define ZERO_BUF (1 * MiB)             /* writes of zeroes when the server cannot zero */
#define CANCEL_POLL_MS 50              /* longest poll() slice between looks at the cancel flag */
#define DISCONNECT_MS 1000             /* bound on the polite disconnect at close */
#define RETRY_BASE_MS 100              /* first backoff; doubles per attempt */

struct nbd_ep;
struct nbd_conn;

struct nbd_ext {
    uint64_t start, length;
    enum lsm_ep_kind kind;
};

/* One block status request and its answer. */
struct nbd_status {
    struct nbd_ep *ne;
    struct nbd_ext *ext;
    size_t n, cap;
    /* one_layer: qemu:allocation-depth's answer (kind ABSENT for depth 0,
     * DATA for in this layer), merged into ext once both are in */
    struct nbd_ext *dext;
    size_t dn, dcap;
    uint64_t start;
    int64_t cookie;              /* > 0: asked, not yet collected */
    uint64_t deadline_ns;
    bool valid;                  /* ext[0..n) is an answer starting at start */
    int cb_err;
};

/* One NBD request: a part of a command.  Parts live until close (libnbd
 * may call a completion after we gave up on it). */
struct nbd_part {
    struct nbd_ep *ne;
    struct nbd_conn *c;          /* where it was last sent */
    struct lsm_ep_cmd *cmd;
    enum lsm_ep_op op;
    char *buf;
    uint64_t off, len;
    uint32_t flags;              /* LIBNBD_CMD_FLAG_* */
    uint64_t deadline_ns;        /* in flight: give up after */
    uint64_t not_before_ns;      /* waiting for a retry: send again after */
    unsigned tries;
    bool live;                   /* in flight or waiting for a retry, not given up */
    struct nbd_part *next;       /* free list, a connection's in-flight list, or retry list */
    struct nbd_part *all;        /* every part, for close */
};

/* One connection: a small endpoint of its own on the loop (poll_fd and
 * notify only), with its own queue of requests. */
struct nbd_conn {
    struct lsm_ep shell;
    struct nbd_ep *ne;
    struct nbd_handle *h;
    struct nbd_part *head, *tail;  /* in flight, oldest first */
    unsigned inflight;
    uint64_t bytes;              /* bytes in flight (data and zeroes) */
    bool added;                  /* on the loop */
};

struct nbd_ep {
    struct lsm_ep ep;
    struct nbd_conn conns[LSM_NBD_MAX_CONNECTIONS];
    unsigned nconns;
    struct nbd_part *free_parts, *all_parts, *retry_head;
    unsigned nretry;
    char *uri;
    volatile sig_atomic_t *cancel;
    unsigned cancel_grace_ms;    /* after the cancel flag is set, requests go on this long */
    uint64_t cancel_seen_ns;     /* when the flag was first seen set (0: not yet) */
    unsigned connect_ms, request_ms, retries;
    bool broken;                 /* timed out, cancelled or lost: send nothing more */
    bool have_status, can_zero, can_fast_zero, can_flush, can_trim;
    /* A source serving one qcow2 layer alone (backing null): extents from
     * base:allocation and qemu:allocation-depth, depth 0 ABSENT; every
     * change of depth on a multiple of layer_align. */
    bool one_layer;
    uint64_t layer_align;
    /* Background flushes (a destination): every flush_every bytes of
     * writes and zeroes completed, one NBD_CMD_FLUSH that nothing waits
     * for, so that the server's writeback overlaps the copy and the final
     * flush (which still covers everything) has little left to do. */
    uint64_t flush_every;        /* 0: never */
    uint64_t unflushed;          /* bytes completed since the last one was sent */
    bool bg_due, bg_inflight;
    struct nbd_conn *bg_conn;    /* where the one in flight was sent */
    uint64_t bg_deadline_ns;
    int bg_err;                  /* errno the server failed one with (0: none) */
    struct nbd_status st[2];     /* the window in use, and the next one asked ahead */
    unsigned cur;
    size_t next;                 /* next extent of st[cur] to look at */
    char *zero_buf;
};

static int conn_fail(struct nbd_ep *ne, struct nbd_conn *c, const char *what)
{
    (void)c;
    int err = nbd_get_errno();
    return lsm_error(err > 0 ? -err : -EIO, "%s %s: %s", what, ne->uri, nbd_get_error());
}

/* The cancel flag, once cancel_grace_ms have passed since it was first
 * seen set (a journaled copy drains and checkpoints in that time). */
static bool cancelled(struct nbd_ep *ne)
{
    if (!ne->cancel || !*ne->cancel)
        return false;
    if (!ne->cancel_grace_ms)
        return true;
    uint64_t now = lsm_now_ns();
    if (!ne->cancel_seen_ns)
        ne->cancel_seen_ns = now;
    return now - ne->cancel_seen_ns >= (uint64_t)ne->cancel_grace_ms * 1000000u;
}

static const char *op_name(enum lsm_ep_op op)
{
    switch (op) {
    case LSM_EP_OP_READ: return "read";
    case LSM_EP_OP_WRITE: return "write";
    case LSM_EP_OP_ZERO: return "zero";
    case LSM_EP_OP_TRIM: return "trim";
    }
    return "?";
}

static void abandon_all(struct nbd_ep *ne, int err);

/* One poll() slice of at most slice_ms on one connection's socket, then
 * let libnbd move on.  0, or -errno with a message. */
static int poll_once(struct nbd_conn *c, int slice_ms)
{
    int fd = nbd_aio_get_fd(c->h);
    unsigned dir = nbd_aio_get_direction(c->h);
    struct pollfd p = { .fd = fd, .events = 0 };
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        p.events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        p.events |= POLLOUT;
    int r = poll(&p, fd >= 0 ? 1 : 0, slice_ms);
    if (r < 0) {
        if (errno == EINTR)
            return 0;    /* the caller looks at the cancel flag */
        return lsm_error_errno(-errno, "cannot poll the connection to %s", c->ne->uri);
    }
    if (r == 0)
        return 0;
    /* An error or hang-up is seen by reading. */
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        if (nbd_aio_notify_read(c->h) == -1)
            return conn_fail(c->ne, c, "lost the connection to");
    } else if (p.revents & POLLOUT) {
        if (nbd_aio_notify_write(c->h) == -1)
            return conn_fail(c->ne, c, "lost the connection to");
    }
    return 0;
}

/* Wait on c for the command with this cookie (block status, flush: the
 * synchronous operations).  what/off name it in messages.  0 when it
 * succeeded, or -errno with a message; a time-out, a cancel or a lost
 * connection break the endpoint. */
static int wait_cmd(struct nbd_conn *c, int64_t cookie, uint64_t deadline, const char *what,
                    uint64_t off)
{
    struct nbd_ep *ne = c->ne;
    for (;;) {
        int done = nbd_aio_command_completed(c->h, cookie);
        if (done == 1)
            return 0;
        if (done == -1) {
            int err = nbd_get_errno();
            err = err > 0 ? -err : -EIO;
            return lsm_error(err, "NBD server %s failed %s at offset %" PRIu64 ": %s",
                             ne->uri, what, off, nbd_get_error());
        }
        if (cancelled(ne)) {
            int e = lsm_error(-EINTR, "interrupted while waiting for NBD server %s", ne->uri);
            abandon_all(ne, e);
            return e;
        }
        uint64_t now = lsm_now_ns();
        if (now >= deadline) {
            int e = lsm_error(-ETIMEDOUT, "NBD server %s did not answer %s at offset %" PRIu64
                              " within %u.%03u s", ne->uri, what, off,
                              ne->request_ms / 1000, ne->request_ms % 1000);
            abandon_all(ne, e);
            return e;
        }
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        int r = poll_once(c, (int)MIN(left_ms, (uint64_t)CANCEL_POLL_MS));
        if (r < 0) {
            abandon_all(ne, r);
            return r;
        }
    }
}

static uint64_t deadline_after(unsigned ms)
{
    return lsm_now_ns() + (uint64_t)ms * 1000000u;
}

/* ---- Extents: base:allocation, one window asked ahead ---- */

static int push_ext(struct nbd_ext **ext, size_t *n, size_t *cap, uint64_t start,
                    uint64_t length, enum lsm_ep_kind kind)
{
    if (*n && (*ext)[*n - 1].kind == kind && (*ext)[*n - 1].start + (*ext)[*n - 1].length == start) {
        (*ext)[*n - 1].length += length;
        return 0;
    }
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 256;
        struct nbd_ext *e = realloc(*ext, c * sizeof(*e));
        if (!e)
            return -ENOMEM;
        *ext = e;
        *cap = c;
    }
    (*ext)[(*n)++] = (struct nbd_ext){ start, length, kind };
    return 0;
}

static int add_ext(struct nbd_status *s, uint64_t start, uint64_t length, enum lsm_ep_kind kind)
{
    return push_ext(&s->ext, &s->n, &s->cap, start, length, kind);
}

#define CONTEXT_ALLOCATION_DEPTH "qemu:allocation-depth"

static int status_cb(void *opaque, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error)
{
    struct nbd_status *s = opaque;
    uint64_t size = s->ne->ep.caps.size;
    bool depth = s->ne->one_layer && !strcmp(metacontext, CONTEXT_ALLOCATION_DEPTH);
    if (!depth && strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        return 0;
    uint64_t pos = offset;
    if (depth && s->dn)
        pos = s->dext[s->dn - 1].start + s->dext[s->dn - 1].length;
    else if (!depth && s->n)   /* a second reply chunk continues the first */
        pos = s->ext[s->n - 1].start + s->ext[s->n - 1].length;
    for (size_t i = 0; i + 1 < nr_entries; i += 2) {
        uint64_t len = entries[i];
        uint32_t flags = entries[i + 1];
        if (pos >= size)
            break;
        if (len > size - pos)
            len = size - pos;
        if (!len)
            break;
        /* A hole without the zero flag reads as whatever the server says:
         * copy it as data to be safe. */
        enum lsm_ep_kind kind = (flags & LIBNBD_STATE_ZERO) ? LSM_EP_ZERO : LSM_EP_DATA;
        if (depth)   /* the depth of the layer that decides: 0 none, 1 this one */
            kind = flags ? LSM_EP_DATA : LSM_EP_ABSENT;
        if ((depth ? push_ext(&s->dext, &s->dn, &s->dcap, pos, len, kind)
                   : add_ext(s, pos, len, kind)) < 0) {
            s->cb_err = -ENOMEM;
            *error = ENOMEM;
            return -1;
        }
        pos += len;
    }
    return 0;
}

/* One layer: s->ext (base:allocation) cut by s->dext (allocation depth)
 * into the layer's own extents: where the depth is 0 ABSENT, elsewhere
 * what base:allocation says (a zero cluster of this layer is ZERO: it
 * hides the backing).  The window ends where the shorter answer ends.
 * The copy writes whole destination clusters, and the export reads as
 * zeroes where the layer allocates nothing (its backing is null), so a
 * cluster both allocated and not in this layer cannot be copied: a depth
 * change off a multiple of layer_align is refused. */
static int merge_depth(struct nbd_ep *ne, struct nbd_status *s)
{
    if (!s->dn || s->dext[0].start != s->start)
        return lsm_error(-EIO, "NBD server %s returned no allocation depth at offset %" PRIu64,
                         ne->uri, s->start);
    struct nbd_ext *out = NULL;
    size_t n = 0, cap = 0, i = 0, j = 0;
    uint64_t pos = s->start;
    while (i < s->n && j < s->dn) {
        const struct nbd_ext *a = &s->ext[i], *d = &s->dext[j];
        uint64_t end = MIN(a->start + a->length, d->start + d->length);
        enum lsm_ep_kind kind = d->kind == LSM_EP_ABSENT ? LSM_EP_ABSENT : a->kind;
        if (push_ext(&out, &n, &cap, pos, end - pos, kind) < 0) {
            free(out);
            return lsm_error(-ENOMEM, "out of memory for the extents of %s", ne->uri);
        }
        pos = end;
        if (pos == a->start + a->length)
            i++;
        if (pos == d->start + d->length) {
            j++;
            if (ne->layer_align > 1 && pos % ne->layer_align && pos < ne->ep.caps.size &&
                j < s->dn && s->dext[j].kind != d->kind) {
                free(out);
                return lsm_error(-EINVAL, "%s: its layer's allocation changes at offset %" PRIu64
                                 ", not on a cluster (%" PRIu64 " bytes) of the destination: "
                                 "one layer cannot be copied into clusters of another size",
                                 ne->uri, pos, ne->layer_align);
            }
        }
    }
    /* A window that ends inside a cluster ends at the cluster's start
     * instead: the next window then sees the whole cluster, and its depth
     * changes are checked there. */
    uint64_t a = ne->layer_align;
    if (a > 1 && pos % a && pos < ne->ep.caps.size && pos - pos % a > s->start) {
        uint64_t cut = pos - pos % a;
        while (n && out[n - 1].start >= cut)
            n--;
        out[n - 1].length = cut - out[n - 1].start;
    }
    free(s->ext);
    s->ext = out;
    s->n = n;
    s->cap = cap;
    return 0;
}

/* Ask for the window at off (on the first connection), without waiting. */
static int status_ask(struct nbd_ep *ne, struct nbd_status *s, uint64_t off)
{
    s->n = 0;
    s->dn = 0;
    s->valid = false;
    s->cb_err = 0;
    s->start = off;
    uint64_t count = MIN(ne->ep.caps.size - off, NBD_STATUS_WINDOW);
    nbd_extent_callback cb = { .callback = status_cb, .user_data = s };
    int64_t cookie = nbd_aio_block_status(ne->conns[0].h, count, off, cb, NBD_NULL_COMPLETION, 0);
    if (cookie == -1)
        return conn_fail(ne, &ne->conns[0], "cannot ask for the block status of");
    s->cookie = cookie;
    s->deadline_ns = deadline_after(ne->request_ms);
    return 0;
}

/* Collect the answer to s (waiting for it). */
static int status_wait(struct nbd_ep *ne, struct nbd_status *s)
{
    int64_t cookie = s->cookie;
    s->cookie = 0;
    /* Asked ahead, it may have waited unread while nothing polled the
     * connection: the time-out counts from now at the earliest. */
    uint64_t deadline = MAX(s->deadline_ns, deadline_after(ne->request_ms));
    int r = wait_cmd(&ne->conns[0], cookie, deadline, "a block status request", s->start);
    if (s->cb_err)
        return lsm_error(s->cb_err, "out of memory for the extents of %s", ne->uri);
    if (r < 0)
        return r;
    if (!s->n || s->ext[0].start != s->start)
        return lsm_error(-EIO, "NBD server %s returned no extents at offset %" PRIu64,
                         ne->uri, s->start);
    if (ne->one_layer && (r = merge_depth(ne, s)) < 0)
        return r;
    s->valid = true;
    return 0;
}

static uint64_t status_end(const struct nbd_status *s)
{
    return s->ext[s->n - 1].start + s->ext[s->n - 1].length;
}

/* Make st[cur] the window holding off: the one asked ahead if it starts
 * there, else a new request; then ask for the window after it. */
static int status_load(struct nbd_ep *ne, uint64_t off)
{
    struct nbd_status *ahead = &ne->st[ne->cur ^ 1];
    int r;
    if (ahead->cookie && ahead->start == off) {
        ne->cur ^= 1;
        r = status_wait(ne, ahead);
    } else {
        if (ahead->cookie) {     /* asked for elsewhere: collect and drop it */
            r = status_wait(ne, ahead);
            ahead->valid = false;
            if (r < 0)
                return r;
        }
        r = status_ask(ne, &ne->st[ne->cur], off);
        if (r == 0)
            r = status_wait(ne, &ne->st[ne->cur]);
    }
    ne->next = 0;
    if (r < 0)
        return r;
    uint64_t end = status_end(&ne->st[ne->cur]);
    if (end < ne->ep.caps.size)
        r = status_ask(ne, &ne->st[ne->cur ^ 1], end);
    return r;
}

static int nbd_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                       unsigned max)
{
    struct nbd_ep *ne = ep->priv;
    uint64_t size = ep->caps.size;
    if (off >= size || len > size - off)
        return lsm_error(-EINVAL, "internal: extents of %s asked past its end", ne->uri);
    if (!ne->have_status) {
        out[0] = (struct lsm_ep_extent){ .start = off, .length = len, .kind = LSM_EP_DATA };
        return 1;
    }
    struct nbd_status *s = &ne->st[ne->cur];
    if (s->valid && s->start <= off && ne->next < s->n && s->ext[ne->next].start > off)
        ne->next = 0;    /* backwards (not the engine's way, but allowed) */
    while (s->valid && ne->next < s->n && s->ext[ne->next].start + s->ext[ne->next].length <= off)
        ne->next++;
    if (!s->valid || ne->next == s->n || s->ext[ne->next].start > off) {
        if (ne->broken)
            return lsm_error(-EIO, "the connection to NBD server %s was abandoned", ne->uri);
        int r = status_load(ne, off);
        if (r < 0)
            return r;
        s = &ne->st[ne->cur];
    }
    unsigned k = 0;
    uint64_t cur = off, end = off + len;
    while (k < max && ne->next < s->n && cur < end) {
        const struct nbd_ext *x = &s->ext[ne->next];
        uint64_t xend = MIN(x->start + x->length, end);
        out[k++] = (struct lsm_ep_extent){ .start = cur, .length = xend - cur, .kind = x->kind };
        cur = xend;
        if (cur == x->start + x->length)
            ne->next++;
    }
    return (int)k;
}

/* ---- Requests: asynchronous, driven by the loop through each connection ---- */

static void unlink_part(struct nbd_conn *c, struct nbd_part *p)
{
    struct nbd_part **pp = &c->head, *prev = NULL;
    while (*pp && *pp != p) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = p->next;
    if (c->tail == p)
        c->tail = prev;
    c->inflight--;
    c->bytes -= p->len;
    p->next = NULL;
}

static void free_part(struct nbd_ep *ne, struct nbd_part *p)
{
    p->live = false;
    p->next = ne->free_parts;
    ne->free_parts = p;
}

static int part_done(void *user, int *error);

/* Send p on the connection with the fewest bytes in flight.  0, or -errno
 * with a message (p is then not in flight). */
static int send_part(struct nbd_ep *ne, struct nbd_part *p)
{
    struct nbd_conn *c = &ne->conns[0];
    for (unsigned i = 1; i < ne->nconns; i++)
        if (ne->conns[i].bytes < c->bytes)
            c = &ne->conns[i];
    p->c = c;
    p->deadline_ns = deadline_after(ne->request_ms);
    p->next = NULL;
    /* in flight before the call: libnbd may complete it inside */
    if (c->tail)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
    c->inflight++;
    c->bytes += p->len;
    nbd_completion_callback cb = { .callback = part_done, .user_data = p };
    int64_t cookie = -1;
    switch (p->op) {
    case LSM_EP_OP_READ:
        cookie = nbd_aio_pread(c->h, p->buf, p->len, p->off, cb, 0);
        break;
    case LSM_EP_OP_WRITE:
        cookie = nbd_aio_pwrite(c->h, p->buf, p->len, p->off, cb, 0);
        break;
    case LSM_EP_OP_ZERO:
        cookie = nbd_aio_zero(c->h, p->len, p->off, cb, p->flags);
        break;
    case LSM_EP_OP_TRIM:
        cookie = nbd_aio_trim(c->h, p->len, p->off, cb, 0);
        break;
    }
    if (cookie == -1) {
        int r = conn_fail(ne, c, "cannot send a request to");
        lsm_error_prefix("cannot %s %s at offset %" PRIu64, op_name(p->op), ne->uri, p->off);
        unlink_part(c, p);
        return r;
    }
    return 0;
}

static bool transient(int err)
{
    return err == EIO || err == ENOMEM;
}

/* libnbd's completion of one request (from inside a notify, or from a
 * synchronous wait on the same handle). */
static int part_done(void *user, int *error)
{
    struct nbd_part *p = user;
    if (!p->live)
        return 1;    /* given up on (time-out, cancel, lost connection) */
    struct nbd_ep *ne = p->ne;
    unlink_part(p->c, p);
    if (*error && transient(*error) && p->tries < ne->retries && !ne->broken) {
        /* again after a backoff (poll_fd sends it when it is due) */
        p->not_before_ns = lsm_now_ns() + ((uint64_t)RETRY_BASE_MS << p->tries) * 1000000u;
        p->tries++;
        p->next = ne->retry_head;
        ne->retry_head = p;
        ne->nretry++;
        return 1;
    }
    int err = 0;
    if (!*error && ne->flush_every && !ne->ep.no_flush && p->op != LSM_EP_OP_READ) {
        /* (sent from poll_fd: no libnbd call inside its own callback) */
        ne->unflushed += p->len;
        if (ne->unflushed >= ne->flush_every)
            ne->bg_due = true;
    }
    if (*error)
        err = lsm_error(-*error, "cannot %s %s at offset %" PRIu64 " (%" PRIu64 " bytes)%s: "
                        "NBD server: %s", op_name(p->op), ne->uri, p->off, p->len,
                        p->tries ? " after retries" : "", strerror(*error));
    struct lsm_ep_cmd *cmd = p->cmd;
    free_part(ne, p);
    lsm_loop_cmd_put(ne->ep.loop, cmd, err);
    return 1;    /* retire the command */
}

/* Send the retries that are due. */
static void send_retries(struct nbd_ep *ne)
{
    uint64_t now = lsm_now_ns();
    struct nbd_part **pp = &ne->retry_head;
    while (*pp) {
        struct nbd_part *p = *pp;
        if (p->not_before_ns > now) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        ne->nretry--;
        int r = send_part(ne, p);
        if (r < 0) {
            struct lsm_ep_cmd *cmd = p->cmd;
            free_part(ne, p);
            lsm_loop_cmd_put(ne->ep.loop, cmd, r);
        }
    }
}

/* The background flush's completion (see flush_every). */
static int bg_done(void *user, int *error)
{
    struct nbd_ep *ne = user;
    ne->bg_inflight = false;
    if (*error && !ne->bg_err)
        ne->bg_err = *error;
    return 1;
}

/* Send the background flush that is due, on the connection with the fewest
 * bytes in flight: with multi-conn a flush on one connection covers the
 * writes completed on every one, and without it there is one connection.
 * Nothing waits for it; the final flush still covers everything. */
static void send_bg_flush(struct nbd_ep *ne)
{
    if (ne->bg_inflight || ne->broken || (ne->cancel && *ne->cancel))
        return;
    struct nbd_conn *c = &ne->conns[0];
    for (unsigned i = 1; i < ne->nconns; i++)
        if (ne->conns[i].bytes < c->bytes)
            c = &ne->conns[i];
    nbd_completion_callback cb = { .callback = bg_done, .user_data = ne };
    ne->bg_due = false;
    ne->unflushed = 0;
    ne->bg_inflight = true;    /* before the call: libnbd may complete it inside */
    ne->bg_conn = c;
    ne->bg_deadline_ns = deadline_after(ne->request_ms);
    if (nbd_aio_flush(c->h, cb, 0) == -1) {
        ne->bg_inflight = false;
        abandon_all(ne, conn_fail(ne, c, "cannot send a flush to"));
        return;
    }
}

/* Give up on every request in flight or waiting with err (message
 * recorded): the connections are in an unknown state, nothing more is
 * sent on them. */
static void abandon_all(struct nbd_ep *ne, int err)
{
    ne->broken = true;
    ne->bg_inflight = false;    /* given up on: nothing waits for it */
    for (unsigned i = 0; i < ne->nconns; i++) {
        struct nbd_conn *c = &ne->conns[i];
        while (c->head) {
            struct nbd_part *p = c->head;
            unlink_part(c, p);
            struct lsm_ep_cmd *cmd = p->cmd;
            free_part(ne, p);
            lsm_loop_cmd_put(ne->ep.loop, cmd, err);
        }
    }
    while (ne->retry_head) {
        struct nbd_part *p = ne->retry_head;
        ne->retry_head = p->next;
        ne->nretry--;
        struct lsm_ep_cmd *cmd = p->cmd;
        free_part(ne, p);
        lsm_loop_cmd_put(ne->ep.loop, cmd, err);
    }
}

static struct nbd_part *get_part(struct nbd_ep *ne)
{
    struct nbd_part *p = ne->free_parts;
    if (p) {
        ne->free_parts = p->next;
    } else {
        p = calloc(1, sizeof(*p));
        if (!p)
            return NULL;
        p->ne = ne;
        p->all = ne->all_parts;
        ne->all_parts = p;
    }
    p->next = NULL;
    p->tries = 0;
    p->live = true;
    return p;
}

/* Cut cmd into requests of at most `max` bytes and send them. */
static int submit(struct lsm_ep *ep, struct lsm_ep_cmd *cmd, enum lsm_ep_op op, uint32_t flags)
{
    struct nbd_ep *ne = ep->priv;
    uint64_t size = ep->caps.size;
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    char *buf = cmd->buf;
    uint64_t off = cmd->offset, len = cmd->len;
    bool zero_writes = op == LSM_EP_OP_ZERO && !ne->can_zero;
    uint64_t max = op == LSM_EP_OP_READ || op == LSM_EP_OP_WRITE ? NBD_MAX_IO
                 : zero_writes ? ZERO_BUF : NBD_MAX_ZERO;
    int r = 0;
    if (op != LSM_EP_OP_READ && (off > size || len > size - off))
        r = lsm_error(-EINVAL, "cannot %s %s at offset %" PRIu64 ": past its end (%" PRIu64
                      " bytes)", op_name(op), ne->uri, off, size);
    while (len && r == 0) {
        if (op == LSM_EP_OP_READ && off >= size) {
            memset(buf, 0, len);
            break;
        }
        if (ne->broken) {
            r = lsm_error(-EIO, "cannot %s %s at offset %" PRIu64 ": the connection was abandoned",
                          op_name(op), ne->uri, off);
            break;
        }
        uint64_t n = MIN(MIN(len, size - off), max);
        struct nbd_part *p = get_part(ne);
        if (!p) {
            r = lsm_error(-ENOMEM, "out of memory");
            break;
        }
        p->cmd = cmd;
        p->op = zero_writes ? LSM_EP_OP_WRITE : op;
        p->buf = zero_writes ? ne->zero_buf : buf;
        p->off = off;
        p->len = n;
        p->flags = flags;
        cmd->parts++;
        r = send_part(ne, p);
        if (r < 0) {
            cmd->parts--;
            free_part(ne, p);
            break;
        }
        if (buf)
            buf += n;
        off += n;
        len -= n;
    }
    lsm_loop_cmd_put(ep->loop, cmd, r);
    return 0;
}

static int nbd_read(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    return submit(ep, cmd, LSM_EP_OP_READ, 0);
}

static int nbd_write(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    return submit(ep, cmd, LSM_EP_OP_WRITE, 0);
}

static int ep_zero(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct nbd_ep *ne = ep->priv;
    uint32_t flags = 0;
    if (cmd->flags & LSM_EP_FAST_ZERO) {
        if (!ne->can_fast_zero)
            return lsm_error(-ENOTSUP, "NBD server %s offers no fast zero", ne->uri);
        flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    if (!(cmd->flags & LSM_EP_MAY_TRIM))
        flags |= LIBNBD_CMD_FLAG_NO_HOLE;   /* allocated zeroes (preallocation) */
    if (!ne->can_zero && !ne->zero_buf) {
        ne->zero_buf = calloc(1, ZERO_BUF);
        if (!ne->zero_buf)
            return lsm_error(-ENOMEM, "out of memory");
    }
    return submit(ep, cmd, LSM_EP_OP_ZERO, flags);
}

static int ep_trim(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct nbd_ep *ne = ep->priv;
    if (!ne->can_trim)
        return lsm_error(-ENOTSUP, "NBD server %s does not trim", ne->uri);
    return submit(ep, cmd, LSM_EP_OP_TRIM, 0);
}

/* A connection's poll_fd, asked by the loop before every poll: first the
 * cancel flag, the time-out of its oldest request and the retries that
 * are due (at most 50 ms apart while requests wait). */
static int conn_poll_fd(struct lsm_ep *shell, short *events)
{
    struct nbd_conn *c = shell->priv;
    struct nbd_ep *ne = c->ne;
    if (ne->broken)
        return -1;
    if (ne->bg_due && c == &ne->conns[0])
        send_bg_flush(ne);
    bool bg_here = ne->bg_inflight && ne->bg_conn == c;
    if (!c->inflight && !ne->nretry && !bg_here)
        return -1;
    if (cancelled(ne)) {
        abandon_all(ne, lsm_error(-EINTR, "interrupted while waiting for NBD server %s", ne->uri));
        return -1;
    }
    if (ne->nretry && c == &ne->conns[0])
        send_retries(ne);
    if (c->inflight && lsm_now_ns() >= c->head->deadline_ns) {
        /* The answer may be waiting unread (the loop was busy elsewhere):
         * read what is there before giving up. */
        int e = poll_once(c, 0);
        if (e < 0) {
            abandon_all(ne, e);
            return -1;
        }
    }
    if (c->inflight && lsm_now_ns() >= c->head->deadline_ns) {
        const struct nbd_part *p = c->head;
        abandon_all(ne, lsm_error(-ETIMEDOUT, "cannot %s %s at offset %" PRIu64 ": no answer "
                                  "from the NBD server within %u.%03u s", op_name(p->op), ne->uri,
                                  p->off, ne->request_ms / 1000, ne->request_ms % 1000));
        return -1;
    }
    if (bg_here && lsm_now_ns() >= ne->bg_deadline_ns) {
        int e = poll_once(c, 0);
        if (e < 0) {
            abandon_all(ne, e);
            return -1;
        }
        if (ne->bg_inflight && lsm_now_ns() >= ne->bg_deadline_ns) {
            abandon_all(ne, lsm_error(-ETIMEDOUT, "cannot flush %s: no answer from the NBD "
                                      "server within %u.%03u s", ne->uri, ne->request_ms / 1000,
                                      ne->request_ms % 1000));
            return -1;
        }
        bg_here = ne->bg_inflight && ne->bg_conn == c;
    }
    if (ne->broken)
        return -1;
    *events = 0;
    if (c->inflight || bg_here) {
        unsigned dir = nbd_aio_get_direction(c->h);
        if (dir & LIBNBD_AIO_DIRECTION_READ)
            *events |= POLLIN;
        if (dir & LIBNBD_AIO_DIRECTION_WRITE)
            *events |= POLLOUT;
    }
    /* Nothing in flight here but a retry waiting: polled for nothing, so
     * that the loop comes back within its slice. */
    return nbd_aio_get_fd(c->h);
}

static int conn_notify(struct lsm_ep *shell, short revents)
{
    struct nbd_conn *c = shell->priv;
    int r = 0;
    /* An error or hang-up is seen by reading. */
    if (revents & (POLLIN | POLLHUP | POLLERR))
        r = nbd_aio_notify_read(c->h);
    else if (revents & POLLOUT)
        r = nbd_aio_notify_write(c->h);
    if (r == -1)
        abandon_all(c->ne, conn_fail(c->ne, c, "lost the connection to"));
    return 0;
}

static const struct lsm_ep_ops conn_ops = {
    .name = "nbd-connection",
    .poll_fd = conn_poll_fd,
    .notify = conn_notify,
};

/* NBD_CMD_FLUSH on every connection, then wait for all. */
static int ep_flush(struct lsm_ep *ep)
{
    struct nbd_ep *ne = ep->priv;
    if (ne->ep.caps.read_only || !ne->can_flush)
        return 0;
    if (ne->broken)
        return lsm_error(-EIO, "cannot flush %s: the connection was abandoned", ne->uri);
    if (ne->bg_err)
        return lsm_error(-ne->bg_err, "NBD server %s failed a flush: %s", ne->uri,
                         strerror(ne->bg_err));
    ne->bg_due = false;
    ne->unflushed = 0;     /* covered by this one */
    int64_t cookies[LSM_NBD_MAX_CONNECTIONS];
    for (unsigned i = 0; i < ne->nconns; i++) {
        cookies[i] = nbd_aio_flush(ne->conns[i].h, NBD_NULL_COMPLETION, 0);
        if (cookies[i] == -1) {
            int r = conn_fail(ne, &ne->conns[i], "cannot flush");
            abandon_all(ne, r);
            return r;
        }
    }
    uint64_t deadline = deadline_after(ne->request_ms);
    int r = 0;
    for (unsigned i = 0; i < ne->nconns; i++) {
        int e = wait_cmd(&ne->conns[i], cookies[i], deadline, "a flush", 0);
        if (e < 0 && r == 0)
            r = e;
        if (ne->broken)
            break;
    }
    if (r == 0 && ne->bg_err)   /* (answered while these were waited for) */
        r = lsm_error(-ne->bg_err, "NBD server %s failed a flush: %s", ne->uri,
                      strerror(ne->bg_err));
    return r;
}

static int nbd_check(struct lsm_ep *ep)
{
    struct nbd_ep *ne = ep->priv;
    int64_t size = nbd_get_size(ne->conns[0].h);    /* from the handshake: no round trip */
    if (size < 0)
        return conn_fail(ne, &ne->conns[0], "cannot get the size of");
    if ((uint64_t)size != ep->caps.size)
        return lsm_error(-EIO, "source %s changed size during the copy", ne->uri);
    return 0;
}

/* Tell a server that answers that we are going: NBD_CMD_DISC, then wait at
 * most until deadline (and not past a cancel) for it to close. */
static void disconnect(struct nbd_ep *ne, struct nbd_conn *c, uint64_t deadline)
{
    if (ne->broken || !nbd_aio_is_ready(c->h) || nbd_aio_disconnect(c->h, 0) == -1)
        return;
    while (!nbd_aio_is_closed(c->h) && !nbd_aio_is_dead(c->h) && !cancelled(ne)) {
        uint64_t now = lsm_now_ns();
        if (now >= deadline)
            break;
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        if (poll_once(c, (int)MIN(left_ms, (uint64_t)CANCEL_POLL_MS)) < 0)
            break;
    }
}

static void nbd_close_ep(struct lsm_ep *ep)
{
    struct nbd_ep *ne = ep->priv;
    bool busy = ne->nretry;
    for (unsigned i = 0; i < ne->nconns; i++)
        busy |= ne->conns[i].inflight > 0;
    if (busy) {   /* never delivered now: do not wait for them */
        ne->broken = true;
        for (struct nbd_part *p = ne->all_parts; p; p = p->all)
            p->live = false;
    }
    uint64_t deadline = deadline_after(DISCONNECT_MS);
    for (unsigned i = 0; i < ne->nconns; i++) {
        struct nbd_conn *c = &ne->conns[i];
        if (c->added && c->shell.loop)
            lsm_loop_remove_fd(c->shell.loop, &c->shell);
        if (c->h) {
            disconnect(ne, c, deadline);
            nbd_close(c->h);    /* closes the socket; never waits for the server */
        }
    }
    while (ne->all_parts) {     /* after nbd_close: no completion can come any more */
        struct nbd_part *p = ne->all_parts;
        ne->all_parts = p->all;
        free(p);
    }
    free(ne->st[0].ext);
    free(ne->st[1].ext);
    free(ne->st[0].dext);
    free(ne->st[1].dext);
    free(ne->zero_buf);
    free(ne->uri);
    free(ne);
}

static const struct lsm_ep_ops nbd_src_ops = {
    .name = "nbd",
    .extents = nbd_extents,
    .read = nbd_read,
    .check = nbd_check,
    .close = nbd_close_ep,
};

static const struct lsm_ep_ops nbd_dst_ops = {
    .name = "nbd",
    .extents = nbd_extents,
    .read = nbd_read,
    .write = nbd_write,
    .zero = ep_zero,
    .trim = ep_trim,
    .flush = ep_flush,
    .close = nbd_close_ep,
};

/* Drive the handshakes started by nbd_aio_connect_uri on conns[0..n) to
 * the ready state, together (one poll of every socket still connecting),
 * so that n connections cost the round trips of one. */
static int wait_connected(struct nbd_ep *ne, struct nbd_conn *conns, unsigned n)
{
    uint64_t deadline = deadline_after(ne->connect_ms);
    for (;;) {
        struct pollfd pf[LSM_NBD_MAX_CONNECTIONS];
        struct nbd_conn *pc[LSM_NBD_MAX_CONNECTIONS];
        unsigned k = 0;
        for (unsigned i = 0; i < n; i++) {
            struct nbd_conn *c = &conns[i];
            if (nbd_aio_is_ready(c->h))
                continue;
            if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))
                return conn_fail(ne, c, "cannot connect to");
            unsigned dir = nbd_aio_get_direction(c->h);
            pf[k] = (struct pollfd){ .fd = nbd_aio_get_fd(c->h), .events = 0 };
            if (dir & LIBNBD_AIO_DIRECTION_READ)
                pf[k].events |= POLLIN;
            if (dir & LIBNBD_AIO_DIRECTION_WRITE)
                pf[k].events |= POLLOUT;
            pc[k++] = c;
        }
        if (!k)
            return 0;
        if (cancelled(ne)) {
            ne->broken = true;
            return lsm_error(-EINTR, "interrupted while connecting to NBD server %s", ne->uri);
        }
        uint64_t now = lsm_now_ns();
        if (now >= deadline) {
            ne->broken = true;
            return lsm_error(-ETIMEDOUT, "cannot connect to NBD server %s: no answer within "
                             "%u.%03u s", ne->uri, ne->connect_ms / 1000, ne->connect_ms % 1000);
        }
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        int r = poll(pf, k, (int)MIN(left_ms, (uint64_t)CANCEL_POLL_MS));
        if (r < 0 && errno != EINTR) {
            ne->broken = true;
            return lsm_error_errno(-errno, "cannot connect to NBD server %s: poll", ne->uri);
        }
        for (unsigned i = 0; i < k && r > 0; i++) {
            int e = 0;
            /* An error or hang-up is seen by reading. */
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
                e = nbd_aio_notify_read(pc[i]->h);
            else if (pf[i].revents & POLLOUT)
                e = nbd_aio_notify_write(pc[i]->h);
            if (e == -1) {
                ne->broken = true;
                return conn_fail(ne, pc[i], "cannot connect to");
            }
        }
    }
}

static int start_connect(struct nbd_ep *ne, struct nbd_conn *c)
{
    c->ne = ne;
    c->h = nbd_create();
    if (!c->h)
        return lsm_error(-ENOMEM, "cannot create an NBD handle: %s", nbd_get_error());
    if (nbd_add_meta_context(c->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
        (ne->one_layer && nbd_add_meta_context(c->h, CONTEXT_ALLOCATION_DEPTH) == -1) ||
        nbd_aio_connect_uri(c->h, ne->uri) == -1)
        return conn_fail(ne, c, "cannot connect to");
    return 0;
}

/* A destination that reads as zeroes (every extent zero, by the server's
 * base:allocation) needs no zeroing: asked window by window, stopping at
 * the first data extent, at most 16 windows (4 GiB) ahead of the copy:
 * beyond that it is cheaper to zero than to ask. */
static int probe_reads_zero(struct nbd_ep *ne, bool *out)
{
    *out = false;
    uint64_t size = ne->ep.caps.size, off = 0;
    if (!ne->have_status || size > 16 * NBD_STATUS_WINDOW)
        return 0;
    struct nbd_status *s = &ne->st[0];
    while (off < size) {
        int r = status_ask(ne, s, off);
        if (r == 0)
            r = status_wait(ne, s);
        s->valid = false;
        if (r < 0)
            return r;
        for (size_t i = 0; i < s->n; i++)
            if (s->ext[i].kind != LSM_EP_ZERO)
                return 0;
        off = status_end(s);
    }
    *out = true;
    return 0;
}

int lsm_ep_nbd_open(struct lsm_loop *loop, const struct lsm_ep_nbd_opts *o, struct lsm_ep **out)
{
    struct nbd_ep *ne = calloc(1, sizeof(*ne));
    if (!ne || !(ne->uri = strdup(o->uri))) {
        free(ne);
        return lsm_error(-ENOMEM, "out of memory");
    }
    ne->ep = (struct lsm_ep){
        .ops = o->writable ? &nbd_dst_ops : &nbd_src_ops,
        .name = ne->uri,
        .loop = loop,
        .priv = ne,
        .caps = {
            .read_only = !o->writable,
            .block_min = 1,
            .block_pref = 64 * 1024,
            .mem_align = 1,
            .zero_align = 1,
            .granule = 4096,
            .hole_min = 64 * 1024,
        },
    };
    ne->st[0].ne = ne->st[1].ne = ne;
    ne->one_layer = !o->writable && o->one_layer;
    ne->layer_align = o->layer_align;
    ne->cancel = o->cancel;
    ne->cancel_grace_ms = MIN(o->cancel_grace_ms, 900u);
    ne->connect_ms = o->connect_ms ? o->connect_ms : LSM_NBD_CONNECT_TIMEOUT_MS;
    ne->request_ms = o->request_ms ? o->request_ms : LSM_NBD_REQUEST_TIMEOUT_MS;
    ne->retries = o->retries < 0 ? LSM_NBD_RETRIES : (unsigned)o->retries;
    ne->flush_every = !o->writable || o->flush_every == UINT64_MAX ? 0
                    : o->flush_every ? o->flush_every : LSM_NBD_FLUSH_EVERY;
    unsigned want = o->connections ? o->connections : LSM_NBD_CONNECTIONS;
    int r;
    if (want > LSM_NBD_MAX_CONNECTIONS) {
        r = lsm_error(-EINVAL, "at most %u NBD connections", LSM_NBD_MAX_CONNECTIONS);
        goto fail;
    }
    ne->nconns = 1;
    if ((r = start_connect(ne, &ne->conns[0])) < 0 || (r = wait_connected(ne, ne->conns, 1)) < 0)
        goto fail;
    struct nbd_handle *h = ne->conns[0].h;
    int64_t size = nbd_get_size(h);
    if (size < 0) {
        r = conn_fail(ne, &ne->conns[0], "cannot get the size of");
        goto fail;
    }
    ne->ep.caps.size = (uint64_t)size;
    if (o->writable && nbd_is_read_only(h) == 1) {
        r = lsm_error(-EROFS, "cannot write to %s: the NBD server exports it read-only", ne->uri);
        goto fail;
    }
    ne->have_status = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    if (ne->one_layer && (!ne->have_status ||
                          nbd_can_meta_context(h, CONTEXT_ALLOCATION_DEPTH) != 1)) {
        r = lsm_error(-ENOTSUP, "%s does not offer %s%s: which ranges belong to the layer it "
                      "serves cannot be told (serve each layer with qemu-nbd; docs/nbd.md)",
                      ne->uri, ne->have_status ? "" : "base:allocation and ",
                      CONTEXT_ALLOCATION_DEPTH);
        goto fail;
    }
    ne->can_zero = nbd_can_zero(h) == 1;
    ne->can_fast_zero = ne->can_zero && nbd_can_fast_zero(h) == 1;
    ne->can_trim = nbd_can_trim(h) == 1;
    ne->can_flush = nbd_can_flush(h) == 1;
    if (!ne->can_flush)
        ne->flush_every = 0;    /* nothing to flush (libnbd would refuse the command) */
    ne->ep.caps.can_extents = ne->have_status;
    ne->ep.caps.multi_conn = nbd_can_multi_conn(h) == 1;
    if (o->writable) {
        ne->ep.caps.can_zero = ne->can_zero;
        ne->ep.caps.can_fast_zero = ne->can_fast_zero;
        ne->ep.caps.can_trim = ne->can_trim;
        ne->ep.caps.can_flush = ne->can_flush;
    }
    int64_t pref = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
    if (pref > 0 && is_pow2((uint64_t)pref) && pref <= (int64_t)(2 * MiB))
        ne->ep.caps.block_pref = (uint32_t)pref;
    int64_t bmin = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    if (bmin > 1 && is_pow2((uint64_t)bmin) && bmin <= 4096) {
        ne->ep.caps.block_min = (uint32_t)bmin;
        ne->ep.caps.zero_align = (uint32_t)bmin;
    }
    /* Several connections only where every one sees the others' writes. */
    unsigned n = ne->ep.caps.multi_conn ? want : 1;
    for (unsigned i = 1; i < n; i++) {
        ne->nconns = i + 1;
        if ((r = start_connect(ne, &ne->conns[i])) < 0)
            goto fail;
    }
    if (n > 1 && (r = wait_connected(ne, ne->conns + 1, n - 1)) < 0)
        goto fail;
    for (unsigned i = 1; i < n; i++) {
        if (nbd_get_size(ne->conns[i].h) != size) {
            r = lsm_error(-EIO, "NBD server %s gave connection %u another size", ne->uri, i + 1);
            goto fail;
        }
    }
    if (o->writable && o->reads_zero)
        ne->ep.caps.reads_zero = true;
    else if (o->writable && (r = probe_reads_zero(ne, &ne->ep.caps.reads_zero)) < 0)
        goto fail;
    for (unsigned i = 0; i < ne->nconns; i++) {
        struct nbd_conn *c = &ne->conns[i];
        c->shell = (struct lsm_ep){ .ops = &conn_ops, .name = ne->uri, .loop = loop, .priv = c };
        if ((r = lsm_loop_add_fd(loop, &c->shell)) < 0)
            goto fail;
        c->added = true;
    }
    *out = &ne->ep;
    return 0;
fail:
    nbd_close_ep(&ne->ep);
    return r;
}

int lsm_ep_nbd_create(struct lsm_loop *loop, const char *uri, volatile sig_atomic_t *cancel,
                      unsigned connect_ms, unsigned request_ms, struct lsm_ep **out)
{
    struct lsm_ep_nbd_opts o = {
        .uri = uri,
        .cancel = cancel,
        .connect_ms = connect_ms,
        .request_ms = request_ms,
        .connections = 1,
        .retries = -1,
    };
    return lsm_ep_nbd_open(loop, &o, out);
}
