/* The NBD endpoint: an NBD export (nbd://, nbd+unix://, nbds://...) as a
 * read-only source through libnbd.  Extents come from the base:allocation
 * metadata context when the server offers it (otherwise the whole export is
 * data).  Reads are asynchronous: each read command sends NBD reads
 * (nbd_aio_pread, at most NBD_MAX_READ bytes each) and the loop polls the
 * handle's socket through poll_fd / notify, so the pipeline keeps as many
 * reads in flight as it has requests.  Block status and connecting wait
 * for the server inside the call (the extents op is synchronous).
 *
 * Every wait on the server is bounded.  The handle is driven with libnbd's
 * asynchronous calls (nbd_aio_connect_uri, nbd_aio_pread,
 * nbd_aio_block_status) and poll() on nbd_aio_get_fd() in slices of at most
 * CANCEL_POLL_MS, so that:
 *   - connecting (TCP, Unix or vsock connect, TLS, handshake, option
 *     negotiation) ends after connect_ms with -ETIMEDOUT.  The one step
 *     not bounded here is libnbd's getaddrinfo() of a host name in an
 *     nbd:// URI, which runs inside nbd_aio_connect_uri and is bounded by
 *     the resolver's own time-outs (resolv.conf); numeric addresses and
 *     Unix sockets need no look-up;
 *   - each command (one read of at most NBD_MAX_READ bytes, one block status
 *     window) ends after request_ms with -ETIMEDOUT, naming the server and
 *     the offset: a read's deadline is looked at every time the loop asks
 *     poll_fd what to wait for (at most 50 ms apart), a block status's in
 *     its own wait; a read that times out gives up every read in flight;
 *   - the copy's cancel flag (SIGINT/SIGTERM) is looked at every slice and
 *     ends any wait with -EINTR.
 * After a time-out or a cancel the connection is in an unknown state: the
 * handle is marked broken, no further command is sent on it, and close
 * drops the socket without waiting for the server.  A command the server
 * fails is not sent again: the protocol's error codes (EPERM, EIO, ENOMEM,
 * EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN) have no EAGAIN or EINTR,
 * so no answer says that trying again would help. */
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

#define NBD_STATUS_WINDOW (1 * GiB)   /* bytes asked per block status call */
#define NBD_MAX_READ (32 * MiB)
#define CANCEL_POLL_MS 50             /* longest poll() slice between looks at the cancel flag */
#define DISCONNECT_MS 1000            /* bound on the polite disconnect at close */

struct nbd_ext {
    uint64_t start, length;
    enum lsm_ep_kind kind;
};

/* One NBD read in flight: a chunk of a read command.  Parts live until
 * close (libnbd may call a completion after we gave up on it). */
struct nbd_part {
    struct nbd_src *ns;
    struct lsm_ep_cmd *cmd;
    uint64_t off, deadline_ns;
    bool live;                   /* in flight, not given up */
    struct nbd_part *next;       /* free list or in-flight list */
    struct nbd_part *all;        /* every part, for close */
};

struct nbd_src {
    struct lsm_ep ep;
    struct nbd_part *free_parts, *inflight_head, *inflight_tail, *all_parts;
    unsigned inflight;
    struct nbd_handle *h;
    char *uri;
    volatile sig_atomic_t *cancel;
    unsigned connect_ms, request_ms;
    bool broken;                 /* timed out or cancelled: send nothing more */
    bool have_status;
    uint64_t pos;                /* next offset to ask the server about */
    struct nbd_ext *ext;
    size_t n, cap, next;
    int cb_err;
};

static int nbd_fail(struct nbd_src *ns, const char *what)
{
    int err = nbd_get_errno();
    return lsm_error(err > 0 ? -err : -EIO, "%s %s: %s", what, ns->uri, nbd_get_error());
}

static bool cancelled(const struct nbd_src *ns)
{
    return ns->cancel && *ns->cancel;
}

/* One poll() slice of at most slice_ms on the handle's socket, then let
 * libnbd move on.  0, or -errno with a message. */
static int poll_once(struct nbd_src *ns, int slice_ms)
{
    int fd = nbd_aio_get_fd(ns->h);
    unsigned dir = nbd_aio_get_direction(ns->h);
    struct pollfd p = { .fd = fd, .events = 0 };
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        p.events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        p.events |= POLLOUT;
    int r = poll(&p, fd >= 0 ? 1 : 0, slice_ms);
    if (r < 0) {
        if (errno == EINTR)
            return 0;    /* the caller looks at the cancel flag */
        return lsm_error_errno(-errno, "cannot poll the connection to %s", ns->uri);
    }
    if (r == 0)
        return 0;
    /* An error or hang-up is seen by reading. */
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        if (nbd_aio_notify_read(ns->h) == -1)
            return nbd_fail(ns, "lost the connection to");
    } else if (p.revents & POLLOUT) {
        if (nbd_aio_notify_write(ns->h) == -1)
            return nbd_fail(ns, "lost the connection to");
    }
    return 0;
}

static void abandon_all(struct nbd_src *ns, int err);

/* Wait for the command with this cookie (a block status request; reads go
 * through the loop).  what/off name it in messages.  0 when it succeeded,
 * or -errno with a message. */
static int wait_cmd(struct nbd_src *ns, int64_t cookie, const char *what, uint64_t off)
{
    uint64_t deadline = lsm_now_ns() + (uint64_t)ns->request_ms * 1000000u;
    for (;;) {
        int c = nbd_aio_command_completed(ns->h, cookie);
        if (c == 1)
            return 0;
        if (c == -1) {
            int err = nbd_get_errno();
            err = err > 0 ? -err : -EIO;
            return lsm_error(err, "NBD server %s failed %s at offset %" PRIu64 ": %s",
                             ns->uri, what, off, nbd_get_error());
        }
        if (cancelled(ns)) {
            int e = lsm_error(-EINTR, "interrupted while waiting for NBD server %s", ns->uri);
            abandon_all(ns, e);
            return e;
        }
        uint64_t now = lsm_now_ns();
        if (now >= deadline) {
            int e = lsm_error(-ETIMEDOUT, "NBD server %s did not answer %s at offset %" PRIu64
                              " within %u.%03u s", ns->uri, what, off,
                              ns->request_ms / 1000, ns->request_ms % 1000);
            abandon_all(ns, e);
            return e;
        }
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        int r = poll_once(ns, (int)MIN(left_ms, (uint64_t)CANCEL_POLL_MS));
        if (r < 0) {
            abandon_all(ns, r);
            return r;
        }
    }
}

static int add_ext(struct nbd_src *ns, uint64_t start, uint64_t length, enum lsm_ep_kind kind)
{
    if (ns->n && ns->ext[ns->n - 1].kind == kind &&
        ns->ext[ns->n - 1].start + ns->ext[ns->n - 1].length == start) {
        ns->ext[ns->n - 1].length += length;
        return 0;
    }
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? 2 * ns->cap : 256;
        struct nbd_ext *e = realloc(ns->ext, cap * sizeof(*e));
        if (!e)
            return -ENOMEM;
        ns->ext = e;
        ns->cap = cap;
    }
    ns->ext[ns->n++] = (struct nbd_ext){ start, length, kind };
    return 0;
}

static int status_cb(void *opaque, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error)
{
    struct nbd_src *ns = opaque;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
        return 0;
    uint64_t pos = offset;
    for (size_t i = 0; i + 1 < nr_entries; i += 2) {
        uint64_t len = entries[i];
        uint32_t flags = entries[i + 1];
        if (pos >= ns->ep.caps.size)
            break;
        if (len > ns->ep.caps.size - pos)
            len = ns->ep.caps.size - pos;
        if (!len)
            break;
        /* A hole without the zero flag reads as whatever the server says:
         * copy it as data to be safe. */
        enum lsm_ep_kind kind = (flags & LIBNBD_STATE_ZERO) ? LSM_EP_ZERO : LSM_EP_DATA;
        if (add_ext(ns, pos, len, kind) < 0) {
            ns->cb_err = -ENOMEM;
            *error = ENOMEM;
            return -1;
        }
        pos += len;
    }
    return 0;
}

static int block_status(struct nbd_src *ns, uint64_t count)
{
    ns->n = ns->next = 0;
    ns->cb_err = 0;
    nbd_extent_callback cb = { .callback = status_cb, .user_data = ns };
    int64_t cookie = nbd_aio_block_status(ns->h, count, ns->pos, cb, NBD_NULL_COMPLETION, 0);
    if (cookie == -1)
        return nbd_fail(ns, "cannot ask for the block status of");
    int r = wait_cmd(ns, cookie, "a block status request", ns->pos);
    if (ns->cb_err)
        return lsm_error(ns->cb_err, "out of memory for the extents of %s", ns->uri);
    return r;
}

/* Extents from the cache of the last block status window, asking the
 * server for the next window when off is outside it. */
static int nbd_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                       unsigned max)
{
    struct nbd_src *ns = ep->priv;
    uint64_t size = ep->caps.size;
    if (off >= size || len > size - off)
        return lsm_error(-EINVAL, "internal: extents of %s asked past its end", ns->uri);
    /* the cached extent holding off */
    while (ns->next < ns->n && ns->ext[ns->next].start + ns->ext[ns->next].length <= off)
        ns->next++;
    if (ns->next == ns->n || ns->ext[ns->next].start > off) {
        if (ns->broken)
            return lsm_error(-EIO, "the connection to NBD server %s was abandoned", ns->uri);
        ns->n = ns->next = 0;
        ns->pos = off;
        uint64_t count = MIN(len, NBD_STATUS_WINDOW);
        if (!ns->have_status) {
            if (add_ext(ns, off, count, LSM_EP_DATA) < 0)
                return lsm_error(-ENOMEM, "out of memory for the extents of %s", ns->uri);
        } else {
            int r = block_status(ns, count);
            if (r < 0)
                return r;
            if (!ns->n || ns->ext[0].start != off)
                return lsm_error(-EIO, "NBD server %s returned no extents at offset %" PRIu64,
                                 ns->uri, off);
        }
    }
    unsigned k = 0;
    uint64_t cur = off, end = off + len;
    while (k < max && ns->next < ns->n && cur < end) {
        const struct nbd_ext *x = &ns->ext[ns->next];
        uint64_t xend = MIN(x->start + x->length, end);
        out[k++] = (struct lsm_ep_extent){ .start = cur, .length = xend - cur, .kind = x->kind };
        cur = xend;
        if (cur == x->start + x->length)
            ns->next++;
    }
    return (int)k;
}

/* ---- Reads: asynchronous, driven by the loop (poll_fd / notify) ---- */

static void unlink_part(struct nbd_src *ns, struct nbd_part *p)
{
    struct nbd_part **pp = &ns->inflight_head, *prev = NULL;
    while (*pp && *pp != p) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = p->next;
    if (ns->inflight_tail == p)
        ns->inflight_tail = prev;
    ns->inflight--;
    p->next = ns->free_parts;
    ns->free_parts = p;
}

/* libnbd's completion of one read (from inside notify, or from a wait of
 * a block status request on the same handle). */
static int read_done(void *user, int *error)
{
    struct nbd_part *p = user;
    if (!p->live)
        return 1;    /* given up on (time-out, cancel, lost connection) */
    struct nbd_src *ns = p->ns;
    struct lsm_ep_cmd *cmd = p->cmd;
    p->live = false;
    int err = 0;
    if (*error)
        err = lsm_error(-*error, "cannot read %s at offset %" PRIu64 ": NBD server: %s",
                        ns->uri, p->off, strerror(*error));
    unlink_part(ns, p);
    lsm_loop_cmd_put(ns->ep.loop, cmd, err);
    return 1;    /* retire the command */
}

/* Give up on every read in flight with err (message recorded): the
 * connection is in an unknown state, nothing more is sent on it. */
static void abandon_all(struct nbd_src *ns, int err)
{
    ns->broken = true;
    while (ns->inflight_head) {
        struct nbd_part *p = ns->inflight_head;
        p->live = false;
        unlink_part(ns, p);
        lsm_loop_cmd_put(ns->ep.loop, p->cmd, err);
    }
}

static struct nbd_part *get_part(struct nbd_src *ns)
{
    struct nbd_part *p = ns->free_parts;
    if (p) {
        ns->free_parts = p->next;
        return p;
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->ns = ns;
    p->all = ns->all_parts;
    ns->all_parts = p;
    return p;
}

static int nbd_read(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct nbd_src *ns = ep->priv;
    uint64_t size = ep->caps.size;
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    char *buf = cmd->buf;
    uint64_t off = cmd->offset, len = cmd->len;
    int r = 0;
    while (len && r == 0) {
        if (off >= size) {
            memset(buf, 0, len);
            break;
        }
        if (ns->broken) {
            r = lsm_error(-EIO, "cannot read %s at offset %" PRIu64 ": the connection was abandoned",
                          ns->uri, off);
            break;
        }
        uint64_t n = MIN(MIN(len, size - off), NBD_MAX_READ);
        struct nbd_part *p = get_part(ns);
        if (!p) {
            r = lsm_error(-ENOMEM, "out of memory");
            break;
        }
        p->cmd = cmd;
        p->off = off;
        p->deadline_ns = lsm_now_ns() + (uint64_t)ns->request_ms * 1000000u;
        p->live = true;
        p->next = NULL;
        /* in flight before the call: libnbd may complete it inside */
        if (ns->inflight_tail)
            ns->inflight_tail->next = p;
        else
            ns->inflight_head = p;
        ns->inflight_tail = p;
        ns->inflight++;
        cmd->parts++;
        nbd_completion_callback cb = { .callback = read_done, .user_data = p };
        if (nbd_aio_pread(ns->h, buf, n, off, cb, 0) == -1) {
            r = nbd_fail(ns, "cannot send a read to");
            lsm_error_prefix("cannot read %s at offset %" PRIu64, ns->uri, off);
            if (p->live) {
                p->live = false;
                unlink_part(ns, p);
                cmd->parts--;
            }
            break;
        }
        buf += n;
        off += n;
        len -= n;
    }
    lsm_loop_cmd_put(ep->loop, cmd, r);
    return 0;
}

/* The loop asks what to wait for: first the time-outs and the cancel flag
 * (looked at every loop slice, at most 50 ms apart while reads wait). */
static int nbd_poll_fd(struct lsm_ep *ep, short *events)
{
    struct nbd_src *ns = ep->priv;
    if (!ns->inflight || ns->broken)
        return -1;
    if (cancelled(ns)) {
        abandon_all(ns, lsm_error(-EINTR, "interrupted while waiting for NBD server %s", ns->uri));
        return -1;
    }
    const struct nbd_part *oldest = ns->inflight_head;
    if (lsm_now_ns() >= oldest->deadline_ns) {
        abandon_all(ns, lsm_error(-ETIMEDOUT, "cannot read %s at offset %" PRIu64 ": no answer "
                                  "from the NBD server within %u.%03u s", ns->uri, oldest->off,
                                  ns->request_ms / 1000, ns->request_ms % 1000));
        return -1;
    }
    unsigned dir = nbd_aio_get_direction(ns->h);
    *events = 0;
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        *events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        *events |= POLLOUT;
    return nbd_aio_get_fd(ns->h);
}

static int nbd_notify(struct lsm_ep *ep, short revents)
{
    struct nbd_src *ns = ep->priv;
    int r = 0;
    /* An error or hang-up is seen by reading. */
    if (revents & (POLLIN | POLLHUP | POLLERR))
        r = nbd_aio_notify_read(ns->h);
    else if (revents & POLLOUT)
        r = nbd_aio_notify_write(ns->h);
    if (r == -1) {
        int e = nbd_fail(ns, "lost the connection to");
        abandon_all(ns, e);
    }
    return 0;
}

static int src_check(struct lsm_ep *ep)
{
    struct nbd_src *ns = ep->priv;
    int64_t size = nbd_get_size(ns->h);    /* from the handshake: no round trip */
    if (size < 0)
        return nbd_fail(ns, "cannot get the size of");
    if ((uint64_t)size != ep->caps.size)
        return lsm_error(-EIO, "source %s changed size during the copy", ns->uri);
    return 0;
}

/* Tell a server that answers that we are going: NBD_CMD_DISC, then wait at
 * most DISCONNECT_MS (and not past a cancel) for it to close. */
static void disconnect(struct nbd_src *ns)
{
    if (ns->broken || !nbd_aio_is_ready(ns->h) || nbd_aio_disconnect(ns->h, 0) == -1)
        return;
    uint64_t deadline = lsm_now_ns() + (uint64_t)DISCONNECT_MS * 1000000u;
    while (!nbd_aio_is_closed(ns->h) && !nbd_aio_is_dead(ns->h) && !cancelled(ns)) {
        uint64_t now = lsm_now_ns();
        if (now >= deadline)
            break;
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        if (poll_once(ns, (int)MIN(left_ms, (uint64_t)CANCEL_POLL_MS)) < 0)
            break;
    }
}

static void src_close(struct lsm_ep *ep)
{
    struct nbd_src *ns = ep->priv;
    if (ns->ep.loop)
        lsm_loop_remove_fd(ns->ep.loop, &ns->ep);
    if (ns->inflight) {   /* never delivered now: do not wait for them */
        ns->broken = true;
        for (struct nbd_part *p = ns->inflight_head; p; p = p->next)
            p->live = false;
    }
    if (ns->h) {
        disconnect(ns);
        nbd_close(ns->h);      /* closes the socket; never waits for the server */
    }
    while (ns->all_parts) {    /* after nbd_close: no completion can come any more */
        struct nbd_part *p = ns->all_parts;
        ns->all_parts = p->all;
        free(p);
    }
    free(ns->ext);
    free(ns->uri);
    free(ns);
}

static const struct lsm_ep_ops nbd_ops = {
    .name = "nbd",
    .extents = nbd_extents,
    .read = nbd_read,
    .check = src_check,
    .poll_fd = nbd_poll_fd,
    .notify = nbd_notify,
    .close = src_close,
};

/* Drive the handshake started by nbd_aio_connect_uri to the ready state. */
static int wait_connected(struct nbd_src *ns)
{
    uint64_t deadline = lsm_now_ns() + (uint64_t)ns->connect_ms * 1000000u;
    for (;;) {
        if (nbd_aio_is_ready(ns->h))
            return 0;
        if (nbd_aio_is_dead(ns->h) || nbd_aio_is_closed(ns->h))
            return nbd_fail(ns, "cannot connect to");
        if (cancelled(ns)) {
            ns->broken = true;
            return lsm_error(-EINTR, "interrupted while connecting to NBD server %s", ns->uri);
        }
        uint64_t now = lsm_now_ns();
        if (now >= deadline) {
            ns->broken = true;
            return lsm_error(-ETIMEDOUT, "cannot connect to NBD server %s: no answer within "
                             "%u.%03u s", ns->uri, ns->connect_ms / 1000, ns->connect_ms % 1000);
        }
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        int r = poll_once(ns, (int)MIN(left_ms, (uint64_t)CANCEL_POLL_MS));
        if (r < 0) {
            ns->broken = true;
            lsm_error_prefix("cannot connect to NBD server %s", ns->uri);
            return r;
        }
    }
}

int lsm_ep_nbd_create(struct lsm_loop *loop, const char *uri, volatile sig_atomic_t *cancel,
                      unsigned connect_ms, unsigned request_ms, struct lsm_ep **out)
{
    struct nbd_src *ns = calloc(1, sizeof(*ns));
    if (!ns || !(ns->uri = strdup(uri))) {
        free(ns);
        return lsm_error(-ENOMEM, "out of memory");
    }
    ns->ep = (struct lsm_ep){
        .ops = &nbd_ops,
        .name = ns->uri,
        .loop = loop,
        .priv = ns,
        .caps = {
            .read_only = true,
            .block_min = 1,
            .block_pref = 64 * 1024,
            .mem_align = 1,
            .zero_align = 1,
            .granule = 4096,
        },
    };
    ns->cancel = cancel;
    ns->connect_ms = connect_ms ? connect_ms : LSM_NBD_CONNECT_TIMEOUT_MS;
    ns->request_ms = request_ms ? request_ms : LSM_NBD_REQUEST_TIMEOUT_MS;
    int r;
    ns->h = nbd_create();
    if (!ns->h) {
        r = lsm_error(-ENOMEM, "cannot create an NBD handle: %s", nbd_get_error());
        goto fail;
    }
    if (nbd_add_meta_context(ns->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
        nbd_aio_connect_uri(ns->h, uri) == -1) {
        r = nbd_fail(ns, "cannot connect to");
        goto fail;
    }
    if ((r = wait_connected(ns)) < 0)
        goto fail;
    int64_t size = nbd_get_size(ns->h);
    if (size < 0) {
        r = nbd_fail(ns, "cannot get the size of");
        goto fail;
    }
    ns->ep.caps.size = (uint64_t)size;
    ns->have_status = nbd_can_meta_context(ns->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    ns->ep.caps.can_extents = ns->have_status;
    ns->ep.caps.multi_conn = nbd_can_multi_conn(ns->h) == 1;
    if ((r = lsm_loop_add_fd(loop, &ns->ep)) < 0)
        goto fail;
    *out = &ns->ep;
    return 0;
fail:
    src_close(&ns->ep);
    return r;
}
