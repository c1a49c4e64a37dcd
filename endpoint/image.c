/* The image endpoint: the reader's extents of a chain (or of one layer) as
 * a read-only, guest-order source.
 *
 * Extents walk an lsm_map_iter; a data extent with a host offset carries
 * its layer's second, read-only lsm_file (O_DIRECT per the creator's mode)
 * as its cookie, so that a read passing it back goes to the loop's lsm_io
 * at the host offset.  What cannot (compressed clusters, ranges mixing
 * layers or kinds, an unaligned end) is read through the reader,
 * synchronously, inside the submitting call.
 *
 * Every layer's size and modification time are stamped at create and
 * compared by check (ep-internal.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backends.h"
#include "endpoint.h"
#include "ep-internal.h"
#include "error.h"
#include "image.h"
#include "util.h"

struct image_ep {
    struct lsm_ep ep;
    struct lsm_image *img;
    bool one_layer;
    enum lsm_direct_mode direct;
    struct lsm_map_iter it;
    uint64_t it_pos;           /* where the iterator's next extent starts */
    bool it_valid;
    unsigned nlayers;
    struct lsm_file **files;   /* per depth, opened on first use */
    int *open_err;             /* per depth: 0 or the error of the first open */
    struct ep_layer_stamp *stamps; /* per depth, taken at create */
};

static struct lsm_file *layer_file(struct image_ep *ie, struct lsm_image *layer, unsigned depth)
{
    if (depth >= ie->nlayers || ie->open_err[depth])
        return NULL;
    if (ie->files[depth])
        return ie->files[depth];
    const char *path = layer->data_filename ? layer->data_filename : layer->filename;
    struct lsm_file *f = NULL;
    int r = ep_reopen_same(layer, path, layer->data_fd, ie->direct, &f);
    if (r < 0) {
        /* Reads of this layer then go through the reader (synchronous). */
        ie->open_err[depth] = r;
        lsm_error_clear();
        return NULL;
    }
    ie->files[depth] = f;
    return f;
}

static int image_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                         unsigned max)
{
    struct image_ep *ie = ep->priv;
    uint64_t size = ep->caps.size;
    if (off >= size || len > size - off)
        return lsm_error(-EINVAL, "internal: extents of %s asked past its end", ep->name);
    if (!ie->it_valid || ie->it_pos != off) {
        lsm_map_iter_init(&ie->it, ie->img, off, size - off, ie->one_layer ? LSM_MAP_ONE_LAYER : 0);
        ie->it_pos = off;
        ie->it_valid = true;
    }
    unsigned n = 0;
    uint64_t end = off + len;
    while (n < max && ie->it_pos < end) {
        struct lsm_extent x;
        int r = lsm_map_iter_next(&ie->it, &x);
        if (r < 0) {
            ie->it_valid = false;
            return r;
        }
        if (r == 0 || x.start != ie->it_pos || !x.length) {
            ie->it_valid = false;
            return lsm_error(-EIO, "source %s: extents end at offset %" PRIu64 " before the end (%" PRIu64 ")",
                             ep->name, ie->it_pos, size);
        }
        struct lsm_ep_extent *e = &out[n++];
        e->start = x.start;
        e->length = x.length;
        e->loc = NULL;
        e->loc_off = 0;
        if (x.flags & LSM_EXT_ZERO) {
            e->kind = LSM_EP_ZERO;
        } else if (x.flags & LSM_EXT_DATA) {
            e->kind = LSM_EP_DATA;
            if ((x.flags & LSM_EXT_OFFSET) && !(x.flags & LSM_EXT_COMPRESSED) && x.layer) {
                e->loc = layer_file(ie, x.layer, x.depth);
                e->loc_off = x.offset;
            }
        } else if (ie->one_layer && !(x.flags & LSM_EXT_PRESENT)) {
            e->kind = LSM_EP_ABSENT;
        } else {
            e->kind = LSM_EP_ZERO;   /* end of chain: reads as zeroes */
        }
        ie->it_pos = x.start + x.length;
        if (ie->it_pos > end) {
            /* The caller asked for less: it will ask again from end. */
            e->length = end - e->start;
            ie->it_valid = false;
            break;
        }
    }
    return (int)n;
}

/* Guest-visible read through the reader; zeroes past the end. */
static int guest_pread(struct image_ep *ie, void *buf, uint64_t len, uint64_t off)
{
    uint64_t size = ie->ep.caps.size, n = len;
    if (off >= size)
        n = 0;
    else if (off + len > size)
        n = size - off;
    if (n < len)
        memset((char *)buf + n, 0, len - n);
    if (!n)
        return 0;
    int r = lsm_image_pread(ie->img, buf, n, off);
    if (r < 0) {
        lsm_error_prefix("cannot read %s at offset %" PRIu64, ie->ep.name, off);
        return r;
    }
    return 0;
}

/* A short asynchronous read (the end of a file whose size is not a multiple
 * of the O_DIRECT alignment, or a source that shrank: check says so at the
 * end): the rest through the reader, buffered. */
static int on_short(struct lsm_ep *ep, struct lsm_ep_cmd *cmd, void *buf, uint64_t len,
                    uint64_t file_off)
{
    uint64_t guest = cmd->offset + (uint64_t)((char *)buf - (char *)cmd->buf);
    return guest_pread(ep->priv, buf, len, guest);
}

static int image_read(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct image_ep *ie = ep->priv;
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    /* The cookie is one of our layer files (image_extents). */
    struct lsm_file *f = (struct lsm_file *)cmd->loc;
    uint64_t an = 0;   /* bytes read asynchronously */
    if (f && is_aligned(cmd->loc_off, f->offset_align) &&
        is_aligned((uintptr_t)cmd->buf, f->mem_align))
        an = align_down(cmd->len, f->offset_align);
    int r = 0;
    if (an)
        r = lsm_loop_file_io(ep->loop, cmd, LSM_OP_READ, f, cmd->buf, an, cmd->loc_off, on_short);
    if (r == 0 && an < cmd->len)
        r = guest_pread(ie, (char *)cmd->buf + an, cmd->len - an, cmd->offset + an);
    lsm_loop_cmd_put(ep->loop, cmd, r);
    return 0;
}

static int image_check(struct lsm_ep *ep)
{
    struct image_ep *ie = ep->priv;
    unsigned d = 0;
    for (struct lsm_image *l = ie->img; l && d < ie->nlayers; l = l->backing, d++) {
        int r = ep_layer_stamp_check(l, &ie->stamps[d]);
        if (r < 0)
            return r;
    }
    return 0;
}

static int image_file_at(struct lsm_ep *ep, uint64_t off, const void *loc, uint64_t loc_off,
                         struct lsm_file **file, uint64_t *file_off)
{
    if (!loc)
        return -ENOTSUP;
    *file = (struct lsm_file *)loc;
    *file_off = loc_off;
    return 0;
}

static void image_close(struct lsm_ep *ep)
{
    struct image_ep *ie = ep->priv;
    for (unsigned i = 0; i < ie->nlayers; i++)
        if (ie->files && ie->files[i])
            lsm_file_close(ie->files[i]);
    free(ie->files);
    free(ie->open_err);
    free(ie->stamps);
    free(ie);
}

static const struct lsm_ep_ops image_ops = {
    .name = "image",
    .extents = image_extents,
    .read = image_read,
    .check = image_check,
    .file_at = image_file_at,
    .close = image_close,
};

int lsm_ep_image_create(struct lsm_loop *loop, struct lsm_image *img, bool one_layer,
                        enum lsm_direct_mode direct, struct lsm_ep **out)
{
    struct image_ep *ie = calloc(1, sizeof(*ie));
    if (!ie)
        return lsm_error(-ENOMEM, "out of memory");
    ie->img = img;
    ie->one_layer = one_layer;
    ie->direct = direct;
    ie->nlayers = one_layer ? 1 : lsm_chain_length(img);
    ie->files = calloc(ie->nlayers, sizeof(*ie->files));
    ie->open_err = calloc(ie->nlayers, sizeof(*ie->open_err));
    ie->stamps = calloc(ie->nlayers, sizeof(*ie->stamps));
    ie->ep = (struct lsm_ep){
        .ops = &image_ops,
        .name = img->filename,
        .loop = loop,
        .priv = ie,
        .caps = {
            .size = img->virtual_size,
            .read_only = true,
            .can_extents = true,
            .multi_conn = true,
            .block_min = 1,
            .block_pref = img->cluster_size ? img->cluster_size : 4096,
            .mem_align = 4096,
            .zero_align = 1,
            .granule = img->cluster_size ? img->cluster_size : 4096,
        },
    };
    if (!ie->files || !ie->open_err || !ie->stamps) {
        image_close(&ie->ep);
        return lsm_error(-ENOMEM, "out of memory");
    }
    unsigned d = 0;
    for (struct lsm_image *l = img; l && d < ie->nlayers; l = l->backing, d++) {
        int r = ep_layer_stamp_take(l, &ie->stamps[d]);
        if (r < 0) {
            image_close(&ie->ep);
            return r;
        }
    }
    *out = &ie->ep;
    return 0;
}
