/* NBD exports as images (docs/nbd.md): what `map`, `info`, `compare` and
 * `checksum` read when they are given an NBD URI instead of a file.  Built
 * as the module lsm-formats-nbd (libnbd is loaded only when a URI names an
 * export); formats/image.c opens it from lsm_image_open.
 *
 * An export is one raw layer without backing, read-only: the server
 * interprets the format (qemu-nbd -f qcow2 serves the guest view of a
 * chain).  This is what qemu-img sees through the same URI, and block
 * status follows QEMU's NBD client (block/nbd.c) so that `map` prints what
 * `qemu-img map` prints:
 *   - from the base:allocation context: a zero extent is ZERO, an extent
 *     without the hole flag is DATA; without the context the whole export
 *     is DATA;
 *   - every range has a valid offset, the guest offset itself (qemu-img map
 *     shows "offset" = "start" for an NBD export);
 *   - a hole without the zero flag (a server that does not know what it
 *     reads as) is reported as DATA, so that it is read, never assumed to
 *     be zeroes: qemu-img map would show it neither data nor zero.
 * qemu:allocation-depth is not asked for: QEMU's NBD client does not read
 * it either, so depth is 0 everywhere, as qemu-img map shows it.
 *
 * Requests are synchronous (one in flight: these commands read in guest
 * order), driven with libnbd's nbd_aio_* calls and nbd_poll so that every
 * wait is bounded: NBD_CONNECT_MS to connect (the name look-up of an
 * nbd:// host runs inside libnbd and has the resolver's own time-outs) and
 * NBD_REQUEST_MS per request, then -ETIMEDOUT naming the server.  The
 * extents of one reply (a window of NBD_STATUS_WINDOW bytes) are kept, so
 * that mapping a fragmented export costs one round trip per window, not per
 * extent. */
#include <errno.h>
#include <libnbd.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "image-internal.h"
#include "util.h"

#define NBD_CONNECT_MS 30000
#define NBD_REQUEST_MS 60000
#define NBD_STATUS_WINDOW (1 * GiB)
#define NBD_MAX_READ (32 * MiB)       /* NBD's usual largest request */

struct nbd_ext {
    uint64_t start, length;
    uint32_t flags;                   /* LIBNBD_STATE_* */
};

struct nbd_img {
    struct nbd_handle *h;
    const char *uri;
    bool have_status;
    uint64_t max_read;
    /* the extents of the last block status reply, in order */
    struct nbd_ext *ext;
    size_t n, cap;
    int cb_err;                       /* set by the extent callback */
};

static int nbd_fail(struct nbd_img *n, const char *what)
{
    int err = nbd_get_errno();
    return lsm_error(err > 0 ? -err : -EIO, "%s NBD server %s: %s", what, n->uri,
                     nbd_get_error());
}

/* Drive the handle until cookie completes (cookie 0: until it is ready
 * after connecting), at most ms milliseconds. */
static int nbd_wait(struct nbd_img *n, int64_t cookie, unsigned ms, const char *what,
                    uint64_t off)
{
    uint64_t deadline = lsm_now_ns() + (uint64_t)ms * 1000000;
    for (;;) {
        if (cookie) {
            int c = nbd_aio_command_completed(n->h, cookie);
            if (c == 1)
                return 0;
            if (c == -1) {
                int err = nbd_get_errno();
                return lsm_error(err > 0 ? -err : -EIO, "cannot %s %s at offset %llu: %s", what,
                                 n->uri, (unsigned long long)off, nbd_get_error());
            }
        } else {
            if (nbd_aio_is_ready(n->h))
                return 0;
            if (nbd_aio_is_dead(n->h) || nbd_aio_is_closed(n->h))
                return nbd_fail(n, "cannot connect to");
        }
        uint64_t now = lsm_now_ns();
        if (now >= deadline) {
            if (!cookie)
                return lsm_error(-ETIMEDOUT, "cannot connect to NBD server %s: no answer within "
                                 "%u s", n->uri, ms / 1000);
            return lsm_error(-ETIMEDOUT, "cannot %s %s at offset %llu: no answer within %u s",
                             what, n->uri, (unsigned long long)off, ms / 1000);
        }
        int left = (int)MIN((deadline - now + 999999) / 1000000, (uint64_t)1000);
        if (nbd_poll(n->h, left) == -1) {
            if (!cookie)
                return nbd_fail(n, "cannot connect to");
            int err = nbd_get_errno();
            return lsm_error(err > 0 ? -err : -EIO, "cannot %s %s at offset %llu: %s", what,
                             n->uri, (unsigned long long)off, nbd_get_error());
        }
    }
}

static void nbd_img_close(struct lsm_image *img)
{
    struct nbd_img *n = img->priv;
    if (!n)
        return;
    if (n->h)
        nbd_close(n->h);   /* read-only: nothing to flush, the socket is dropped */
    free(n->ext);
    free(n);
    img->priv = NULL;
}

static int nbd_img_open(struct lsm_image *img)
{
    struct nbd_img *n = calloc(1, sizeof(*n));
    if (!n)
        return lsm_error(-ENOMEM, "out of memory");
    img->priv = n;
    n->uri = img->filename;
    int r;
    n->h = nbd_create();
    if (!n->h) {
        r = lsm_error(-ENOMEM, "cannot create an NBD handle: %s", nbd_get_error());
        goto fail;
    }
    if (nbd_add_meta_context(n->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
        nbd_aio_connect_uri(n->h, n->uri) == -1) {
        r = nbd_fail(n, "cannot connect to");
        goto fail;
    }
    if ((r = nbd_wait(n, 0, NBD_CONNECT_MS, "connect to", 0)) < 0)
        goto fail;
    int64_t size = nbd_get_size(n->h);
    if (size < 0) {
        r = nbd_fail(n, "cannot get the size of the export of");
        goto fail;
    }
    n->have_status = nbd_can_meta_context(n->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    int64_t bmax = nbd_get_block_size(n->h, LIBNBD_SIZE_MAXIMUM);
    n->max_read = bmax > 0 ? MIN((uint64_t)bmax, NBD_MAX_READ) : NBD_MAX_READ;
    img->virtual_size = img->file_size = (uint64_t)size;
    img->cluster_size = 0;
    return 0;
fail:
    nbd_img_close(img);
    return r;
}

static int extent_cb(void *user_data, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error)
{
    struct nbd_img *n = user_data;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || *error)
        return 0;
    if (nr_entries & 1) {
        n->cb_err = -EPROTO;
        return 0;
    }
    if (nr_entries / 2 > n->cap) {
        struct nbd_ext *e = realloc(n->ext, nr_entries / 2 * sizeof(*e));
        if (!e) {
            n->cb_err = -ENOMEM;
            return 0;
        }
        n->ext = e;
        n->cap = nr_entries / 2;
    }
    n->n = 0;
    uint64_t pos = offset;
    for (size_t i = 0; i + 1 < nr_entries; i += 2) {
        if (!entries[i])
            break;     /* a zero-length extent is a protocol error: keep what came before */
        n->ext[n->n++] = (struct nbd_ext){ pos, entries[i], entries[i + 1] };
        pos += entries[i];
    }
    return 0;
}

/* The cached extent holding offset, or NULL. */
static const struct nbd_ext *cached(const struct nbd_img *n, uint64_t offset)
{
    for (size_t i = 0; i < n->n; i++)
        if (offset >= n->ext[i].start && offset - n->ext[i].start < n->ext[i].length)
            return &n->ext[i];
    return NULL;
}

static int nbd_img_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                                uint64_t *pnum, uint64_t *map)
{
    struct nbd_img *n = img->priv;
    *map = offset;
    if (!n->have_status) {
        *pnum = bytes;
        return LSM_BS_DATA | LSM_BS_OFFSET;
    }
    const struct nbd_ext *e = cached(n, offset);
    if (!e) {
        uint64_t count = MIN(img->virtual_size - offset, NBD_STATUS_WINDOW);
        n->n = 0;
        n->cb_err = 0;
        int64_t c = nbd_aio_block_status(n->h, count, offset,
                                         (nbd_extent_callback){ .callback = extent_cb,
                                                                .user_data = n },
                                         NBD_NULL_COMPLETION, 0);
        if (c == -1)
            return nbd_fail(n, "cannot ask for block status of");
        int r = nbd_wait(n, c, NBD_REQUEST_MS, "get the block status of", offset);
        if (r < 0)
            return r;
        if (n->cb_err)
            return lsm_error(n->cb_err, "cannot get the block status of %s at offset %llu: %s",
                             n->uri, (unsigned long long)offset,
                             n->cb_err == -ENOMEM ? "out of memory" : "bad reply from the server");
        e = cached(n, offset);
        if (!e)
            return lsm_error(-EPROTO, "cannot get the block status of %s at offset %llu: the "
                             "server's reply does not describe it", n->uri,
                             (unsigned long long)offset);
    }
    *pnum = MIN(e->start + e->length - offset, bytes);
    if (e->flags & LIBNBD_STATE_ZERO)
        return LSM_BS_ZERO | LSM_BS_OFFSET;
    return LSM_BS_DATA | LSM_BS_OFFSET;    /* data, or a hole not known to read as zeroes */
}

static int nbd_img_pread_data(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset)
{
    struct nbd_img *n = img->priv;
    char *p = buf;
    while (len) {
        uint64_t k = MIN(len, n->max_read);
        int64_t c = nbd_aio_pread(n->h, p, k, offset, NBD_NULL_COMPLETION, 0);
        if (c == -1)
            return nbd_fail(n, "cannot read from");
        int r = nbd_wait(n, c, NBD_REQUEST_MS, "read", offset);
        if (r < 0)
            return r;
        p += k;
        offset += k;
        len -= k;
    }
    return 0;
}

const struct lsm_image_ops lsm_nbd_image_ops = {
    .name = "nbd",
    .open = nbd_img_open,
    .close = nbd_img_close,
    .block_status = nbd_img_block_status,
    .pread_data = nbd_img_pread_data,
};
