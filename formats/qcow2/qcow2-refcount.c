/* qcow2 refcounts: lookups, QEMU's metadata-preallocation heuristic, and
 * the host clusters in use (for physical copies). */
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "image-internal.h"
#include "qcow2.h"
#include "util.h"

static uint64_t refcount_at(const struct qcow2_state *s, const uint8_t *block, uint64_t i)
{
    unsigned bits = 1u << s->refcount_order;
    switch (bits) {
    case 64: return be64_get(block + i * 8);
    case 32: return be32_get(block + i * 4);
    case 16: return be16_get(block + i * 2);
    case 8: return block[i];
    default: {
        uint64_t bit = i * bits;
        return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    }
}

/* The refcount block covering cluster_index, or NULL (refcount 0). */
static int get_block(struct lsm_image *img, uint64_t cluster_index, const uint8_t **block)
{
    struct qcow2_state *s = img->priv;
    uint64_t ti = cluster_index >> s->refblock_bits;
    *block = NULL;
    if (ti >= s->reftable_entries)
        return 0;
    uint64_t off = s->reftable[ti] & QCOW2_REFT_OFFSET_MASK;
    if (!off)
        return 0;
    if (off & (s->cluster_size - 1))
        return lsm_error(-EIO, "corrupt image: refcount block offset 0x%" PRIx64 " is not aligned (refcount table index %" PRIu64 ")",
                         off, ti);
    if (off > img->file_size || s->cluster_size > img->file_size - off)
        return lsm_error(-EIO, "corrupt image: refcount block at 0x%" PRIx64 " is beyond the end of the file",
                         off);
    return qcow2_cache_get(s->rb_cache, img->fd, off, block);
}

int qcow2_get_refcount(struct lsm_image *img, uint64_t cluster_index, uint64_t *refcount)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *block;
    int r = get_block(img, cluster_index, &block);
    if (r < 0)
        return r;
    *refcount = block ? refcount_at(s, block, cluster_index & ((1ULL << s->refblock_bits) - 1)) : 0;
    return 0;
}

/* QEMU marks an image "metadata preallocated" when more clusters have a
 * non-zero refcount than the file has blocks allocated (with 10% slack);
 * block status then asks the file system for holes in data clusters. */
int qcow2_detect_metadata_preallocation(struct lsm_image *img)
{
    struct qcow2_state *s = img->priv;
    if (img->is_blockdev)
        return 0;
    struct stat st;
    if (fstat(img->fd, &st) < 0)
        return -errno;
    uint64_t file_length = align_up((uint64_t)st.st_size, 512);
    uint64_t real_clusters = ((uint64_t)st.st_blocks * 512) / s->cluster_size;
    uint64_t threshold = MAX(real_clusters * 10 / 9, real_clusters + 2);
    uint64_t end = div_round_up(file_length, s->cluster_size);
    uint64_t count = 0;
    for (uint64_t i = 0; i < end && count < threshold; i++) {
        uint64_t rc;
        int r = qcow2_get_refcount(img, i, &rc);
        if (r < 0)
            return r;
        count += rc != 0;
    }
    return count >= threshold;
}

int lsm_qcow2_for_each_used_run(struct lsm_image *img, lsm_host_run_fn fn, void *opaque)
{
    if (img->format != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "'%s' is not a qcow2 image", img->filename);
    struct qcow2_state *s = img->priv;
    uint64_t end = div_round_up(img->file_size, s->cluster_size);
    uint64_t run_start = 0, run_len = 0;
    uint64_t per_block = 1ULL << s->refblock_bits;
    for (uint64_t i = 0; i < end;) {
        const uint8_t *block;
        int r = get_block(img, i, &block);
        if (r < 0)
            return r;
        uint64_t stop = MIN(end, (i | (per_block - 1)) + 1);
        for (; i < stop; i++) {
            bool used = block && refcount_at(s, block, i & (per_block - 1));
            if (used) {
                if (!run_len)
                    run_start = i;
                run_len++;
            } else if (run_len) {
                r = fn(opaque, run_start << s->cluster_bits, run_len << s->cluster_bits);
                if (r < 0)
                    return r;
                run_len = 0;
            }
        }
    }
    if (run_len) {
        uint64_t off = run_start << s->cluster_bits;
        uint64_t len = MIN(run_len << s->cluster_bits, img->file_size - off);
        return fn(opaque, off, len);
    }
    return 0;
}

int lsm_qcow2_for_each_metadata(struct lsm_image *img, lsm_host_run_fn fn, void *opaque)
{
    if (img->format != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "'%s' is not a qcow2 image", img->filename);
    struct qcow2_state *s = img->priv;
    int r = fn(opaque, 0, s->cluster_size);
    if (r == 0 && s->l1_size)
        r = fn(opaque, s->h.l1_table_offset, (uint64_t)s->l1_size * 8);
    for (uint32_t i = 0; r == 0 && i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2)
            r = fn(opaque, l2, s->cluster_size);
    }
    if (r == 0)
        r = fn(opaque, s->h.refcount_table_offset, (uint64_t)s->h.refcount_table_clusters << s->cluster_bits);
    for (uint32_t i = 0; r == 0 && i < s->reftable_entries; i++) {
        uint64_t rb = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if (rb)
            r = fn(opaque, rb, s->cluster_size);
    }
    return r;
}
