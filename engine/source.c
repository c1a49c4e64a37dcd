/* The image sources.
 *
 * The image source: the reader's extents of a chain (or of one layer) as an
 * lsm_copy_src.  Data extents carry a second, read-only lsm_file of the
 * layer that holds them (O_DIRECT per the caller's mode) so the pipeline
 * reads them asynchronously at their host offset.
 *
 * The physical source: the host clusters in use of one qcow2 layer, in host
 * order, as extents of the image *file* (offsets are file offsets).  Before
 * it hands out anything it walks the layer's whole map with the reader (so
 * it refuses what `map` refuses) and checks that every data cluster the map
 * points at, and every metadata table the reader lists, has a non-zero
 * refcount (a cluster outside the used runs would not be copied).
 *
 * Both record each file's size and modification time when they are made
 * and their check op compares them after the copy (the physical source also
 * compares the header cluster, which the copy writes last).  A write lands
 * in the file's mtime at the kernel's timestamp granularity, so a write in
 * the same tick as the file's previous change can go unseen; block devices
 * have no such stamp and are not checked.  (The reader's own descriptors
 * are used, so a file renamed or replaced meanwhile is still the one read.)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "copy.h"
#include "error.h"
#include "fileid.h"
#include "util.h"

/* ---- Change detection (both sources) ---- */

struct stamp {
    bool valid;               /* false for block devices */
    uint64_t size;
    struct timespec mtime;
};

static int stamp_take(int fd, const char *name, struct stamp *st)
{
    struct stat sb;
    st->valid = false;
    if (fd < 0)
        return 0;
    if (fstat(fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", name);
    if (!S_ISREG(sb.st_mode))
        return 0;
    st->valid = true;
    st->size = (uint64_t)sb.st_size;
    st->mtime = sb.st_mtim;
    return 0;
}

static int stamp_check(int fd, const char *name, const struct stamp *st)
{
    struct stat sb;
    if (!st->valid)
        return 0;
    if (fstat(fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", name);
    if ((uint64_t)sb.st_size != st->size)
        return lsm_error(-EIO, "source %s changed size during the copy (%" PRIu64 " -> %" PRIu64 " bytes)",
                         name, st->size, (uint64_t)sb.st_size);
    if (sb.st_mtim.tv_sec != st->mtime.tv_sec || sb.st_mtim.tv_nsec != st->mtime.tv_nsec)
        return lsm_error(-EIO, "source %s was written during the copy (its modification time changed)",
                         name);
    return 0;
}

/* A layer's image file and, if it has one, its external data file. */
struct layer_stamp {
    struct stamp image, data;
};

static int layer_stamp_take(const struct lsm_image *l, struct layer_stamp *ls)
{
    int r = stamp_take(l->fd, l->filename, &ls->image);
    if (r == 0 && ls->image.valid && ls->image.size != l->file_size)
        return lsm_error(-EIO, "source %s changed size since it was opened (%" PRIu64 " -> %" PRIu64 " bytes)",
                         l->filename, l->file_size, ls->image.size);
    if (r == 0 && l->data_fd != l->fd)
        r = stamp_take(l->data_fd, l->data_filename ? l->data_filename : l->filename, &ls->data);
    return r;
}

static int layer_stamp_check(const struct lsm_image *l, const struct layer_stamp *ls)
{
    int r = stamp_check(l->fd, l->filename, &ls->image);
    if (r == 0 && l->data_fd != l->fd)
        r = stamp_check(l->data_fd, l->data_filename ? l->data_filename : l->filename, &ls->data);
    return r;
}

/* A second descriptor of the file behind l: it must be the same file (a
 * rename since the open would make it another one). */
static int reopen_same(const struct lsm_image *l, const char *path, int fd,
                       enum lsm_direct_mode direct, struct lsm_file **out)
{
    struct lsm_file *f = NULL;
    int r = lsm_file_open(path, LSM_FILE_READ, direct, &f);
    if (r < 0)
        return r;
    struct lsm_fileid a, b;
    r = lsm_fileid_fd(fd, l->filename, &a);
    if (r == 0)
        r = lsm_fileid_fd(f->fd, path, &b);
    if (r == 0 && !lsm_fileid_same(&a, &b))
        r = lsm_error(-ESTALE, "%s was replaced while it was being opened", path);
    if (r < 0) {
        lsm_file_close(f);
        return r;
    }
    *out = f;
    return 0;
}

/* ---- The image source ---- */

struct image_src {
    struct lsm_copy_src s;
    struct lsm_image *img;
    bool one_layer;
    enum lsm_direct_mode direct;
    struct lsm_map_iter it;
    unsigned nlayers;
    struct lsm_file **files;   /* per depth, opened on first use */
    int *open_err;             /* per depth: 0 or the error of the first open */
    struct layer_stamp *stamps; /* per depth, taken at create */
};

static int src_rewind(struct lsm_copy_src *s)
{
    struct image_src *is = s->priv;
    lsm_map_iter_init(&is->it, is->img, 0, is->img->virtual_size,
                      is->one_layer ? LSM_MAP_ONE_LAYER : 0);
    return 0;
}

static struct lsm_file *layer_file(struct image_src *is, struct lsm_image *layer, unsigned depth)
{
    if (depth >= is->nlayers || is->open_err[depth])
        return NULL;
    if (is->files[depth])
        return is->files[depth];
    const char *path = layer->data_filename ? layer->data_filename : layer->filename;
    struct lsm_file *f = NULL;
    int r = reopen_same(layer, path, layer->data_fd, is->direct, &f);
    if (r < 0) {
        /* Reads of this layer then go through the reader (synchronous). */
        is->open_err[depth] = r;
        lsm_error_clear();
        return NULL;
    }
    is->files[depth] = f;
    return f;
}

static int src_next(struct lsm_copy_src *s, struct lsm_src_extent *e)
{
    struct image_src *is = s->priv;
    struct lsm_extent x;
    int r = lsm_map_iter_next(&is->it, &x);
    if (r <= 0)
        return r;
    e->start = x.start;
    e->length = x.length;
    e->file = NULL;
    e->host = 0;
    if (x.flags & LSM_EXT_ZERO)
        e->kind = LSM_SRC_ZERO;
    else if (x.flags & LSM_EXT_DATA) {
        e->kind = LSM_SRC_DATA;
        if ((x.flags & LSM_EXT_OFFSET) && !(x.flags & LSM_EXT_COMPRESSED) && x.layer) {
            e->file = layer_file(is, x.layer, x.depth);
            e->host = x.offset;
        }
    } else if (is->one_layer && !(x.flags & LSM_EXT_PRESENT))
        e->kind = LSM_SRC_ABSENT;
    else
        e->kind = LSM_SRC_ZERO;   /* end of chain: reads as zeroes */
    return 1;
}

static int src_pread(struct lsm_copy_src *s, void *buf, uint64_t len, uint64_t off)
{
    struct image_src *is = s->priv;
    uint64_t n = len;
    if (off >= s->size)
        n = 0;
    else if (off + len > s->size)
        n = s->size - off;
    if (n < len)
        memset((char *)buf + n, 0, len - n);
    if (!n)
        return 0;
    int r = lsm_image_pread(is->img, buf, n, off);
    return r < 0 ? r : 0;
}

static int src_check(struct lsm_copy_src *s)
{
    struct image_src *is = s->priv;
    unsigned d = 0;
    for (struct lsm_image *l = is->img; l && d < is->nlayers; l = l->backing, d++) {
        int r = layer_stamp_check(l, &is->stamps[d]);
        if (r < 0)
            return r;
    }
    return 0;
}

static void src_close(struct lsm_copy_src *s)
{
    struct image_src *is = s->priv;
    for (unsigned i = 0; i < is->nlayers; i++)
        if (is->files[i])
            lsm_file_close(is->files[i]);
    free(is->files);
    free(is->open_err);
    free(is->stamps);
    free(is);
}

static const struct lsm_src_ops image_src_ops = {
    .name = "image",
    .rewind = src_rewind,
    .next = src_next,
    .pread = src_pread,
    .check = src_check,
    .close = src_close,
};

int lsm_image_source_create(struct lsm_image *img, bool one_layer,
                            enum lsm_direct_mode direct, struct lsm_copy_src **out)
{
    struct image_src *is = calloc(1, sizeof(*is));
    if (!is)
        return lsm_error(-ENOMEM, "out of memory");
    is->img = img;
    is->one_layer = one_layer;
    is->direct = direct;
    is->nlayers = one_layer ? 1 : lsm_chain_length(img);
    is->files = calloc(is->nlayers, sizeof(*is->files));
    is->open_err = calloc(is->nlayers, sizeof(*is->open_err));
    is->stamps = calloc(is->nlayers, sizeof(*is->stamps));
    is->s.ops = &image_src_ops;
    is->s.size = img->virtual_size;
    is->s.priv = is;
    if (!is->files || !is->open_err || !is->stamps) {
        src_close(&is->s);
        return lsm_error(-ENOMEM, "out of memory");
    }
    unsigned d = 0;
    for (struct lsm_image *l = img; l && d < is->nlayers; l = l->backing, d++) {
        int r = layer_stamp_take(l, &is->stamps[d]);
        if (r < 0) {
            src_close(&is->s);
            return r;
        }
    }
    src_rewind(&is->s);
    *out = &is->s;
    return 0;
}

/* ---- The physical source ---- */

struct phys_src {
    struct lsm_copy_src s;
    struct lsm_image *img;
    struct lsm_file *file;     /* second descriptor for asynchronous reads */
    uint64_t *runs;            /* pairs: host offset, length; ascending, disjoint */
    size_t nruns, pos;
    uint64_t cursor;           /* next extent starts here */
    struct layer_stamp stamp;
    uint8_t *header;           /* the first header_len bytes at create */
    size_t header_len;
};

static int phys_collect(void *opaque, uint64_t host, uint64_t len)
{
    struct phys_src *ps = opaque;
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

/* Is [host, host+len) inside one used run (cluster-rounded)? */
static bool phys_covered(const struct phys_src *ps, uint64_t host, uint64_t len)
{
    uint64_t cs = ps->img->cluster_size;
    size_t lo = 0, hi = ps->nruns;
    while (lo < hi) {   /* first run starting after host */
        size_t mid = lo + (hi - lo) / 2;
        if (ps->runs[2 * mid] <= host)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!lo)
        return false;
    uint64_t rs = ps->runs[2 * (lo - 1)], rl = ps->runs[2 * (lo - 1) + 1];
    uint64_t rend = align_up(rs + rl, cs);
    return host + len >= host && host + len <= rend;
}

static int phys_check_meta(void *opaque, uint64_t host, uint64_t len)
{
    struct phys_src *ps = opaque;
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
static int phys_validate(struct phys_src *ps)
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

static int phys_rewind(struct lsm_copy_src *s)
{
    struct phys_src *ps = s->priv;
    ps->pos = 0;
    ps->cursor = 0;
    return 0;
}

static int phys_next(struct lsm_copy_src *s, struct lsm_src_extent *e)
{
    struct phys_src *ps = s->priv;
    if (ps->cursor >= s->size)
        return 0;
    e->start = ps->cursor;
    e->file = NULL;
    e->host = 0;
    if (ps->pos < ps->nruns && ps->runs[2 * ps->pos] == ps->cursor) {
        e->kind = LSM_SRC_DATA;
        e->length = MIN(ps->runs[2 * ps->pos + 1], s->size - ps->cursor);
        e->file = ps->file;
        e->host = ps->cursor;
        ps->pos++;
    } else {
        uint64_t end = ps->pos < ps->nruns ? MIN(ps->runs[2 * ps->pos], s->size) : s->size;
        e->kind = LSM_SRC_ABSENT;
        e->length = end - ps->cursor;
    }
    ps->cursor += e->length;
    return 1;
}

static int phys_pread(struct lsm_copy_src *s, void *buf, uint64_t len, uint64_t off)
{
    struct phys_src *ps = s->priv;
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

static int phys_check(struct lsm_copy_src *s)
{
    struct phys_src *ps = s->priv;
    int r = layer_stamp_check(ps->img, &ps->stamp);
    if (r < 0)
        return r;
    _cleanup_free_ uint8_t *now = malloc(ps->header_len ? ps->header_len : 1);
    if (!now)
        return lsm_error(-ENOMEM, "out of memory");
    r = phys_pread(s, now, ps->header_len, 0);
    if (r < 0)
        return r;
    if (memcmp(now, ps->header, ps->header_len))
        return lsm_error(-EIO, "source %s changed during the copy (its header was rewritten)",
                         ps->img->filename);
    return 0;
}

static void phys_close(struct lsm_copy_src *s)
{
    struct phys_src *ps = s->priv;
    if (ps->file)
        lsm_file_close(ps->file);
    free(ps->runs);
    free(ps->header);
    free(ps);
}

static const struct lsm_src_ops phys_src_ops = {
    .name = "physical",
    .rewind = phys_rewind,
    .next = phys_next,
    .pread = phys_pread,
    .check = phys_check,
    .close = phys_close,
};

int lsm_phys_source_create(struct lsm_image *img, enum lsm_direct_mode direct,
                           struct lsm_copy_src **out)
{
    if (img->format != LSM_FMT_QCOW2 || !img->cluster_size)
        return lsm_error(-EINVAL, "'%s' is not a qcow2 image", img->filename);
    struct phys_src *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return lsm_error(-ENOMEM, "out of memory");
    ps->img = img;
    ps->s.ops = &phys_src_ops;
    ps->s.size = img->file_size;
    ps->s.priv = ps;
    /* Stamp first: a write from here on shows in the check. */
    int r = layer_stamp_take(img, &ps->stamp);
    if (r == 0)
        r = lsm_qcow2_for_each_used_run(img, phys_collect, ps);
    if (r == 0)
        r = phys_validate(ps);
    if (r == 0) {
        ps->header_len = (size_t)MIN((uint64_t)img->cluster_size, img->file_size);
        ps->header = malloc(ps->header_len ? ps->header_len : 1);
        r = ps->header ? phys_pread(&ps->s, ps->header, ps->header_len, 0)
                       : lsm_error(-ENOMEM, "out of memory");
    }
    if (r == 0)
        r = reopen_same(img, img->filename, img->fd, direct, &ps->file);
    if (r < 0) {
        phys_close(&ps->s);
        return r;
    }
    *out = &ps->s;
    return 0;
}

const void *lsm_phys_source_header(struct lsm_copy_src *s, size_t *len)
{
    struct phys_src *ps = s->priv;
    *len = ps->header_len;
    return ps->header;
}
