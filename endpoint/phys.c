/* The physical endpoint: the host clusters in use of one qcow2 layer, in
 * host order, as a read-only source whose offsets are offsets in the image
 * *file*.  Before it hands out anything it walks the layer's whole map
 * with the reader (so it refuses what `map` refuses) and checks that every
 * data cluster the map points at, and every metadata table the reader
 * lists, has a non-zero refcount (a cluster outside the used runs would
 * not be copied).
 *
 * The header cluster is deferred (caps.deferred): a copy writes it last,
 * after everything else is durable, so that an interrupted copy is no
 * qcow2.  Reads of it return the copy taken when the layer was validated,
 * and check (after the copy) proves that copy still current: the file's
 * size, modification time and header cluster are what they were. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends.h"
#include "cleanup.h"
#include "endpoint.h"
#include "ep-internal.h"
#include "error.h"
#include "image.h"
#include "util.h"

struct phys_ep {
    struct lsm_ep ep;
    struct lsm_image *img;
    struct lsm_file *file;     /* second descriptor for asynchronous reads */
    uint64_t *runs;            /* pairs: host offset, length; ascending, disjoint */
    size_t nruns;
    struct ep_layer_stamp stamp;
    uint8_t *header;           /* the first header_len bytes at create */
    size_t header_len;
};

static int phys_collect(void *opaque, uint64_t host, uint64_t len)
{
    struct phys_ep *ps = opaque;
    size_t n = ps->nruns;
    if (n && ps->runs[2 * (n - 1)] + ps->runs[2 * (n - 1) + 1] == host) {
        ps->runs[2 * (n - 1) + 1] += len;
        return 0;
    }
    if ((n & (n - 1)) == 0) {   /* grow at powers of two */
        size_t cap = n ? 2 * n : 64;
        uint64_t *p = realloc(ps->runs, cap * 2 * sizeof(*p));
        if (!p)
            return lsm_error(-ENOMEM, "out of memory");
        ps->runs = p;
    }
    ps->runs[2 * n] = host;
    ps->runs[2 * n + 1] = len;
    ps->nruns++;
    return 0;
}

/* Index of the first run starting after host. */
static size_t run_after(const struct phys_ep *ps, uint64_t host)
{
    size_t lo = 0, hi = ps->nruns;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ps->runs[2 * mid] <= host)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Is [host, host+len) inside one used run (cluster-rounded)? */
static bool phys_covered(const struct phys_ep *ps, uint64_t host, uint64_t len)
{
    uint64_t cs = ps->img->cluster_size;
    size_t lo = run_after(ps, host);
    if (!lo)
        return false;
    uint64_t rs = ps->runs[2 * (lo - 1)], rl = ps->runs[2 * (lo - 1) + 1];
    uint64_t rend = align_up(rs + rl, cs);
    return host + len >= host && host + len <= rend;
}

static int phys_check_meta(void *opaque, uint64_t host, uint64_t len)
{
    struct phys_ep *ps = opaque;
    if (!phys_covered(ps, host, len))
        return lsm_error(-EIO, "corrupt image %s: metadata at host offset 0x%" PRIx64 " is in a "
                         "cluster whose refcount is zero (qemu-img check -r all repairs it; "
                         "--no-physical copies the guest view)", ps->img->filename, host);
    return 0;
}

/* The layer's map, walked by the reader: refuses what `map` refuses.  Then
 * every host cluster it points at, and every metadata table the reader
 * found, must be counted in the refcounts (a physical copy copies only
 * those).  Compressed clusters, for which the map gives no host offset,
 * and the snapshot and bitmap tables are not checked. */
static int phys_validate(struct phys_ep *ps)
{
    struct lsm_image *img = ps->img;
    struct lsm_map_iter it;
    struct lsm_extent x;
    int r;
    lsm_map_iter_init(&it, img, 0, img->virtual_size, LSM_MAP_ONE_LAYER);
    while ((r = lsm_map_iter_next(&it, &x)) > 0) {
        if (!(x.flags & LSM_EXT_OFFSET) || (x.flags & LSM_EXT_COMPRESSED) || x.depth != 0)
            continue;
        if (!phys_covered(ps, x.offset, x.length))
            return lsm_error(-EIO, "corrupt image %s: guest offset %" PRIu64 " is mapped to host "
                             "offset 0x%" PRIx64 ", a cluster whose refcount is zero (qemu-img check "
                             "-r all repairs it; --no-physical copies the guest view)",
                             img->filename, x.start, x.offset);
    }
    if (r < 0) {
        lsm_error_prefix("cannot copy %s physically", img->filename);
        return r;
    }
    return lsm_qcow2_for_each_metadata(img, phys_check_meta, ps);
}

static int phys_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                        unsigned max)
{
    struct phys_ep *ps = ep->priv;
    uint64_t size = ep->caps.size;
    if (off >= size || len > size - off)
        return lsm_error(-EINVAL, "internal: extents of %s asked past its end", ep->name);
    uint64_t end = off + len, cur = off;
    size_t i = run_after(ps, cur);
    /* a run starting at or before cur that covers it */
    if (i && ps->runs[2 * (i - 1)] + ps->runs[2 * (i - 1) + 1] > cur)
        i--;
    unsigned n = 0;
    while (n < max && cur < end) {
        struct lsm_ep_extent *e = &out[n++];
        e->start = cur;
        e->loc = NULL;
        e->loc_off = 0;
        if (i < ps->nruns && ps->runs[2 * i] <= cur) {
            e->kind = LSM_EP_DATA;
            e->length = MIN(ps->runs[2 * i] + ps->runs[2 * i + 1], end) - cur;
            e->loc = ps->file;
            e->loc_off = cur;
            i++;
        } else {
            uint64_t next = i < ps->nruns ? MIN(ps->runs[2 * i], end) : end;
            e->kind = LSM_EP_ABSENT;
            e->length = next - cur;
        }
        cur += e->length;
    }
    return (int)n;
}

/* The file, buffered; zeroes past its end. */
static int file_pread(struct phys_ep *ps, void *buf, uint64_t len, uint64_t off)
{
    char *p = buf;
    while (len) {
        ssize_t n = pread(ps->img->fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return lsm_error_errno(-errno, "cannot read %s at offset %" PRIu64, ps->img->filename, off);
        if (n == 0) {   /* past the end of the file */
            memset(p, 0, len);
            break;
        }
        p += n;
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

/* Reads of the header cluster return the copy validated at create. */
static int phys_pread(struct phys_ep *ps, void *buf, uint64_t len, uint64_t off)
{
    if (off < ps->header_len) {
        uint64_t n = MIN(len, ps->header_len - off);
        memcpy(buf, ps->header + off, n);
        buf = (char *)buf + n;
        off += n;
        len -= n;
    }
    return len ? file_pread(ps, buf, len, off) : 0;
}

static int on_short(struct lsm_ep *ep, struct lsm_ep_cmd *cmd, void *buf, uint64_t len,
                    uint64_t file_off)
{
    return file_pread(ep->priv, buf, len, file_off);
}

static int phys_read(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct phys_ep *ps = ep->priv;
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    struct lsm_file *f = ps->file;
    uint64_t an = 0;
    if (cmd->offset >= ps->header_len && is_aligned(cmd->offset, f->offset_align) &&
        is_aligned((uintptr_t)cmd->buf, f->mem_align))
        an = align_down(cmd->len, f->offset_align);
    int r = 0;
    if (an)
        r = lsm_loop_file_io(ep->loop, cmd, LSM_OP_READ, f, cmd->buf, an, cmd->offset, on_short);
    if (r == 0 && an < cmd->len)
        r = phys_pread(ps, (char *)cmd->buf + an, cmd->len - an, cmd->offset + an);
    lsm_loop_cmd_put(ep->loop, cmd, r);
    return 0;
}

static int phys_check(struct lsm_ep *ep)
{
    struct phys_ep *ps = ep->priv;
    int r = ep_layer_stamp_check(ps->img, &ps->stamp);
    if (r < 0)
        return r;
    _cleanup_free_ uint8_t *now = malloc(ps->header_len ? ps->header_len : 1);
    if (!now)
        return lsm_error(-ENOMEM, "out of memory");
    r = file_pread(ps, now, ps->header_len, 0);
    if (r < 0)
        return r;
    if (memcmp(now, ps->header, ps->header_len))
        return lsm_error(-EIO, "source %s changed during the copy (its header was rewritten)",
                         ps->img->filename);
    return 0;
}

static int phys_file_at(struct lsm_ep *ep, uint64_t off, const void *loc, uint64_t loc_off,
                        struct lsm_file **file, uint64_t *file_off)
{
    struct phys_ep *ps = ep->priv;
    *file = ps->file;
    *file_off = off;
    return 0;
}

static void phys_close(struct lsm_ep *ep)
{
    struct phys_ep *ps = ep->priv;
    if (ps->file)
        lsm_file_close(ps->file);
    free(ps->runs);
    free(ps->header);
    free(ps);
}

static const struct lsm_ep_ops phys_ops = {
    .name = "physical",
    .extents = phys_extents,
    .read = phys_read,
    .check = phys_check,
    .file_at = phys_file_at,
    .close = phys_close,
};

int lsm_ep_phys_create(struct lsm_loop *loop, struct lsm_image *img, enum lsm_direct_mode direct,
                       struct lsm_ep **out)
{
    if (img->format != LSM_FMT_QCOW2 || !img->cluster_size)
        return lsm_error(-EINVAL, "'%s' is not a qcow2 image", img->filename);
    struct phys_ep *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return lsm_error(-ENOMEM, "out of memory");
    ps->img = img;
    ps->ep = (struct lsm_ep){
        .ops = &phys_ops,
        .name = img->filename,
        .loop = loop,
        .priv = ps,
        .caps = {
            .size = img->file_size,
            .read_only = true,
            .can_extents = true,
            .host_order = true,
            .block_min = 1,
            .block_pref = img->cluster_size,
            .mem_align = 4096,
            .zero_align = 1,
            .granule = img->cluster_size,
        },
    };
    /* Stamp first: a write from here on shows in the check. */
    int r = ep_layer_stamp_take(img, &ps->stamp);
    if (r == 0)
        r = lsm_qcow2_for_each_used_run(img, phys_collect, ps);
    if (r == 0)
        r = phys_validate(ps);
    if (r == 0) {
        ps->header_len = (size_t)MIN((uint64_t)img->cluster_size, img->file_size);
        ps->header = malloc(ps->header_len ? ps->header_len : 1);
        r = ps->header ? file_pread(ps, ps->header, ps->header_len, 0)
                       : lsm_error(-ENOMEM, "out of memory");
    }
    if (r == 0)
        r = ep_reopen_same(img, img->filename, img->fd, direct, &ps->file);
    if (r < 0) {
        phys_close(&ps->ep);
        return r;
    }
    ps->ep.caps.deferred = ps->header_len;
    *out = &ps->ep;
    return 0;
}
