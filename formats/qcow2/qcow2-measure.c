/* The size of a fully allocated qcow2 (qcow2-measure.h). */
#include <errno.h>

#include "qcow2-format.h"
#include "qcow2-measure.h"
#include "util.h"

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

uint64_t lsm_qcow2_full_size(uint64_t capacity, uint64_t cluster_size, unsigned refcount_bits,
                             bool extended_l2)
{
    if (!is_pow2(cluster_size) || cluster_size < 512 || cluster_size > 2 * MiB ||
        !refcount_bits || refcount_bits > 64 || !is_pow2(refcount_bits))
        return 0;
    if (capacity > (UINT64_MAX >> 2))
        return 0;
    uint64_t c = cluster_size;
    uint64_t data = div_up(capacity, c);                   /* data clusters */
    uint64_t l2e = extended_l2 ? 16 : 8;
    uint64_t l2 = div_up(data * l2e, c);                   /* L2 table clusters */
    /* L1: one 8-byte entry per L2 table, in whole clusters. */
    uint64_t l1 = div_up(l2 * 8, c);
    uint64_t fixed = 1 + l1 + l2 + data;                   /* header + the above */
    /* Refcount blocks cover every cluster, themselves and the refcount
     * table included: grow both until they cover the total. */
    uint64_t per_block = c * 8 / refcount_bits;            /* entries per block */
    uint64_t blocks = 0, table = 0;
    for (;;) {
        uint64_t nb = div_up(fixed + blocks + table, per_block);
        uint64_t nt = div_up(nb * 8, c);
        if (nb == blocks && nt == table)
            break;
        blocks = MAX(blocks, nb);
        table = MAX(table, nt);
    }
    return (fixed + blocks + table) * c;
}

int lsm_qcow2_geometry_parse(const void *buf, size_t len, struct lsm_qcow2_geometry *g)
{
    const uint8_t *h = buf;
    *g = (struct lsm_qcow2_geometry){ 0 };
    if (len < QCOW2_V2_HEADER_LENGTH || be32_get(h) != QCOW2_MAGIC)
        return -EINVAL;
    uint32_t version = be32_get(h + 4);
    uint32_t cbits = be32_get(h + 20);
    if ((version != 2 && version != 3) || cbits < QCOW2_MIN_CLUSTER_BITS ||
        cbits > QCOW2_MAX_CLUSTER_BITS)
        return -EINVAL;
    g->cluster_size = 1ULL << cbits;
    g->capacity = be64_get(h + 24);
    g->encrypted = be32_get(h + 32) != QCOW2_CRYPT_NONE;
    g->nb_snapshots = be32_get(h + 60);
    g->refcount_bits = 16;
    size_t hlen = QCOW2_V2_HEADER_LENGTH;
    if (version == 3) {
        if (len < QCOW2_V3_MIN_HEADER_LENGTH)
            return -EINVAL;
        uint64_t incompat = be64_get(h + 72);
        uint64_t autoclear = be64_get(h + 88);
        uint32_t order = be32_get(h + 96);
        hlen = be32_get(h + 100);
        if (order > QCOW2_MAX_REFCOUNT_ORDER || hlen < QCOW2_V3_MIN_HEADER_LENGTH ||
            hlen > g->cluster_size)
            return -EINVAL;
        g->refcount_bits = 1u << order;
        g->extended_l2 = incompat & QCOW2_INCOMPAT_EXTL2;
        g->data_file = incompat & QCOW2_INCOMPAT_DATA_FILE;
        g->bitmaps = autoclear & QCOW2_AUTOCLEAR_BITMAPS;
    }
    /* Header extensions (v3 and v2 alike): look for bitmaps and a data
     * file; stop at the end marker, refuse to guess past the buffer. */
    size_t off = align_up(hlen, 8);
    for (;;) {
        if (off + 8 > len || off + 8 > g->cluster_size)
            return -EINVAL;
        uint32_t type = be32_get(h + off), elen = be32_get(h + off + 4);
        if (type == QCOW2_EXT_END)
            break;
        if (type == QCOW2_EXT_BITMAPS)
            g->bitmaps = true;
        if (type == QCOW2_EXT_DATA_FILE)
            g->data_file = true;
        off += 8 + align_up((uint64_t)elen, 8);
    }
    return 0;
}

uint64_t lsm_qcow2_full_size_of(const struct lsm_qcow2_geometry *g)
{
    if (g->nb_snapshots || g->bitmaps || g->encrypted || g->data_file)
        return 0;
    return lsm_qcow2_full_size(g->capacity, g->cluster_size, g->refcount_bits, g->extended_l2);
}
