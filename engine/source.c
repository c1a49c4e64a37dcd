/* The image source: the reader's extents of a chain (or of one layer) as an
 * lsm_copy_src.  Data extents carry a second, read-only lsm_file of the
 * layer that holds them (O_DIRECT per the caller's mode) so the pipeline
 * reads them asynchronously at their host offset. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "copy.h"
#include "error.h"
#include "util.h"

struct image_src {
    struct lsm_copy_src s;
    struct lsm_image *img;
    bool one_layer;
    enum lsm_direct_mode direct;
    struct lsm_map_iter it;
    unsigned nlayers;
    struct lsm_file **files;   /* per depth, opened on first use */
    int *open_err;             /* per depth: 0 or the error of the first open */
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
    int r = lsm_file_open(path, LSM_FILE_READ, is->direct, &f);
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
    for (struct lsm_image *l = is->img; l; l = is->one_layer ? NULL : l->backing) {
        struct stat sb;
        if (l->is_blockdev)
            continue;
        if (fstat(l->fd, &sb) < 0)
            return lsm_error_errno(-errno, "cannot stat %s", l->filename);
        if ((uint64_t)sb.st_size != l->file_size)
            return lsm_error(-EIO, "source %s changed size during the copy (%" PRIu64 " -> %" PRIu64 " bytes)",
                             l->filename, l->file_size, (uint64_t)sb.st_size);
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
    if (!is->files || !is->open_err) {
        free(is->files);
        free(is->open_err);
        free(is);
        return lsm_error(-ENOMEM, "out of memory");
    }
    is->s.ops = &image_src_ops;
    is->s.size = img->virtual_size;
    is->s.priv = is;
    src_rewind(&is->s);
    *out = &is->s;
    return 0;
}
