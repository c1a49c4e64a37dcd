/* The NBD source: an NBD export (nbd://, nbd+unix://, nbds://...) as an
 * lsm_copy_src through libnbd.  Extents come from the base:allocation
 * metadata context when the server offers it (otherwise the whole export is
 * data); data is read with nbd_pread, synchronously, so the pipeline reads
 * NBD data one request at a time and overlaps only the destination writes.
 * (An asynchronous path would drive nbd_aio_pread beside the io/ ring.) */
#include <inttypes.h>
#include <libnbd.h>
#include <stdlib.h>
#include <string.h>

#include "copy.h"
#include "error.h"
#include "util.h"

#define NBD_STATUS_WINDOW (1 * GiB)   /* bytes asked per block status call */
#define NBD_MAX_READ (32 * MiB)

struct nbd_ext {
    uint64_t start, length;
    enum lsm_src_kind kind;
};

struct nbd_src {
    struct lsm_copy_src s;
    struct nbd_handle *h;
    char *uri;
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

static int src_rewind(struct lsm_copy_src *s)
{
    struct nbd_src *ns = s->priv;
    ns->pos = 0;
    ns->n = ns->next = 0;
    return 0;
}

static int add_ext(struct nbd_src *ns, uint64_t start, uint64_t length, enum lsm_src_kind kind)
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
        if (pos + len > ns->s.size)
            len = ns->s.size - pos;
        if (!len)
            break;
        /* A hole without the zero flag reads as whatever the server says:
         * copy it as data to be safe. */
        enum lsm_src_kind kind = (flags & LIBNBD_STATE_ZERO) ? LSM_SRC_ZERO : LSM_SRC_DATA;
        if (add_ext(ns, pos, len, kind) < 0) {
            ns->cb_err = -ENOMEM;
            *error = ENOMEM;
            return -1;
        }
        pos += len;
    }
    return 0;
}

static int src_next(struct lsm_copy_src *s, struct lsm_src_extent *e)
{
    struct nbd_src *ns = s->priv;
    if (ns->next == ns->n) {
        if (ns->pos >= s->size)
            return 0;
        ns->n = ns->next = 0;
        uint64_t count = MIN(s->size - ns->pos, NBD_STATUS_WINDOW);
        if (!ns->have_status) {
            add_ext(ns, ns->pos, count, LSM_SRC_DATA);
        } else {
            nbd_extent_callback cb = { .callback = status_cb, .user_data = ns };
            ns->cb_err = 0;
            if (nbd_block_status(ns->h, count, ns->pos, cb, 0) == -1)
                return ns->cb_err ? lsm_error(ns->cb_err, "out of memory")
                                  : nbd_fail(ns, "cannot get the block status of");
            if (!ns->n)
                return lsm_error(-EIO, "NBD server %s returned no extents at offset %" PRIu64,
                                 ns->uri, ns->pos);
        }
        ns->pos = ns->ext[ns->n - 1].start + ns->ext[ns->n - 1].length;
    }
    struct nbd_ext *x = &ns->ext[ns->next++];
    e->start = x->start;
    e->length = x->length;
    e->kind = x->kind;
    e->file = NULL;      /* read with pread */
    e->host = 0;
    return 1;
}

static int src_pread(struct lsm_copy_src *s, void *buf, uint64_t len, uint64_t off)
{
    struct nbd_src *ns = s->priv;
    char *p = buf;
    while (len) {
        if (off >= s->size) {
            memset(p, 0, len);
            return 0;
        }
        uint64_t n = MIN(MIN(len, s->size - off), NBD_MAX_READ);
        if (nbd_pread(ns->h, p, n, off, 0) == -1)
            return nbd_fail(ns, "cannot read");
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int src_check(struct lsm_copy_src *s)
{
    struct nbd_src *ns = s->priv;
    int64_t size = nbd_get_size(ns->h);
    if (size < 0)
        return nbd_fail(ns, "cannot get the size of");
    if ((uint64_t)size != s->size)
        return lsm_error(-EIO, "source %s changed size during the copy", ns->uri);
    return 0;
}

static void src_close(struct lsm_copy_src *s)
{
    struct nbd_src *ns = s->priv;
    if (ns->h) {
        nbd_shutdown(ns->h, 0);
        nbd_close(ns->h);
    }
    free(ns->ext);
    free(ns->uri);
    free(ns);
}

static const struct lsm_src_ops nbd_src_ops = {
    .name = "nbd",
    .rewind = src_rewind,
    .next = src_next,
    .pread = src_pread,
    .check = src_check,
    .close = src_close,
};

int lsm_nbd_source_create(const char *uri, struct lsm_copy_src **out)
{
    struct nbd_src *ns = calloc(1, sizeof(*ns));
    if (!ns || !(ns->uri = strdup(uri))) {
        free(ns);
        return lsm_error(-ENOMEM, "out of memory");
    }
    ns->s.ops = &nbd_src_ops;
    ns->s.priv = ns;
    int r;
    ns->h = nbd_create();
    if (!ns->h) {
        r = lsm_error(-ENOMEM, "cannot create an NBD handle: %s", nbd_get_error());
        goto fail;
    }
    if (nbd_add_meta_context(ns->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
        nbd_connect_uri(ns->h, uri) == -1) {
        r = nbd_fail(ns, "cannot connect to");
        goto fail;
    }
    int64_t size = nbd_get_size(ns->h);
    if (size < 0) {
        r = nbd_fail(ns, "cannot get the size of");
        goto fail;
    }
    ns->s.size = (uint64_t)size;
    ns->have_status = nbd_can_meta_context(ns->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    *out = &ns->s;
    return 0;
fail:
    src_close(&ns->s);
    return r;
}
