/* qcow2 cluster mapping: L1 -> L2 -> (sub)cluster types and host offsets,
 * and reads of a layer's own data (plain and compressed clusters).
 *
 * Block status walks whole L2 tables from the cache: one call covers a run
 * of (sub)clusters of the same type (and, for allocated ones, contiguous host
 * offsets) up to the end of the L2 table; runs of empty L1 entries are
 * answered at once, so an empty 8 TiB image maps in a few microseconds. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "image-internal.h"
#include "qcow2.h"
#include "util.h"

enum sc_type {
    SC_NORMAL,
    SC_COMPRESSED,
    SC_ZERO_PLAIN,
    SC_ZERO_ALLOC,
    SC_UNALLOC_PLAIN,
    SC_UNALLOC_ALLOC,
    SC_INVALID,
};

static enum sc_type cluster_type(const struct qcow2_state *s, uint64_t e, uint64_t bitmap,
                                 unsigned sc)
{
    if (e & QCOW2_OFLAG_COMPRESSED)
        return SC_COMPRESSED;
    bool has_offset = e & QCOW2_L2E_OFFSET_MASK;
    /* offset 0 is a valid host offset in an external data file; COPIED
     * tells allocated clusters apart there */
    bool allocated = has_offset || (s->has_data_file && (e & QCOW2_OFLAG_COPIED));
    if (!s->extl2) {
        if (e & QCOW2_OFLAG_ZERO)
            return has_offset ? SC_ZERO_ALLOC : SC_ZERO_PLAIN;
        return allocated ? SC_NORMAL : SC_UNALLOC_PLAIN;
    }
    if (allocated) {
        if ((bitmap >> 32) & bitmap)
            return SC_INVALID;
        if (bitmap & QCOW2_SUB_ZERO(sc))
            return SC_ZERO_ALLOC;
        if (bitmap & QCOW2_SUB_ALLOC(sc))
            return SC_NORMAL;
        return SC_UNALLOC_ALLOC;
    }
    if (bitmap & QCOW2_SUB_ALL_ALLOC)
        return SC_INVALID;
    if (bitmap & QCOW2_SUB_ZERO(sc))
        return SC_ZERO_PLAIN;
    return SC_UNALLOC_PLAIN;
}

/* Number of subclusters from sc on with the same type as sc (>= 1). */
static unsigned sc_range(const struct qcow2_state *s, enum sc_type t, uint64_t bitmap, unsigned sc)
{
    if (!s->extl2 || t == SC_COMPRESSED)
        return s->subclusters - sc;
    uint32_t below = sc ? (uint32_t)((1ULL << sc) - 1) : 0;   /* subclusters before sc */
    uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32), v;
    switch (t) {
    case SC_NORMAL:
        v = ~(alloc | below);
        return (v ? (unsigned)__builtin_ctz(v) : 32) - sc;
    case SC_ZERO_PLAIN:
    case SC_ZERO_ALLOC:
        v = ~(zero | below);
        return (v ? (unsigned)__builtin_ctz(v) : 32) - sc;
    default:   /* unallocated: until the next allocated or zero subcluster */
        v = (alloc | zero) & ~below;
        return (v ? (unsigned)__builtin_ctz(v) : 32) - sc;
    }
}

static inline uint64_t l2_get(const struct qcow2_state *s, const uint8_t *t, uint32_t i)
{
    return be64_get(t + (size_t)i * s->l2_entry_bytes);
}

static inline uint64_t l2_bitmap(const struct qcow2_state *s, const uint8_t *t, uint32_t i)
{
    return s->extl2 ? be64_get(t + (size_t)i * 16 + 8) : 0;
}

static int load_l2(struct lsm_image *img, struct qcow2_state *s, uint32_t l1_index,
                   const uint8_t **table)
{
    uint64_t l2_off = s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;
    if (l2_off & (s->cluster_size - 1))
        return lsm_error(-EIO, "corrupt image: L2 table offset 0x%" PRIx64 " is not aligned (L1 index %u)",
                         l2_off, l1_index);
    if (l2_off < s->cluster_size)
        return lsm_error(-EIO, "corrupt image: L2 table at offset 0x%" PRIx64 " overlaps the header (L1 index %u)",
                         l2_off, l1_index);
    if (l2_off > img->file_size || s->cluster_size > img->file_size - l2_off)
        return lsm_error(-EIO, "corrupt image: L2 table at offset 0x%" PRIx64 " is beyond the end of the file (L1 index %u)",
                         l2_off, l1_index);
    return qcow2_cache_get(s->l2_cache, img->fd, l2_off, table);
}

/* Like QEMU's qcow2_get_host_offset: the type of the subcluster at offset
 * and how many bytes from offset share it (limited to `bytes` and to the end
 * of the L2 table).  *host is the host offset of `offset` for allocated types
 * and the raw L2 descriptor for compressed clusters. */
static int get_host_offset(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                           uint64_t *pnum, uint64_t *host, enum sc_type *type)
{
    struct qcow2_state *s = img->priv;
    uint64_t in_cluster = offset & (s->cluster_size - 1);
    uint64_t l1_span_bits = s->cluster_bits + s->l2_bits;
    uint64_t l1_index = offset >> l1_span_bits;
    uint32_t l2_index = (uint32_t)((offset >> s->cluster_bits) & (s->l2_entries - 1));
    uint64_t to_table_end = ((uint64_t)(s->l2_entries - l2_index) << s->cluster_bits) - in_cluster;

    *host = 0;
    if (l1_index >= s->l1_size || !(s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK)) {
        /* Unallocated L2 table: extend over following empty L1 entries. */
        uint64_t avail = to_table_end;
        uint64_t i = l1_index + 1;
        while (avail < bytes && (i >= s->l1_size || !(s->l1[i] & QCOW2_L1E_OFFSET_MASK))) {
            avail += 1ULL << l1_span_bits;
            i++;
        }
        *pnum = MIN(avail, bytes);
        *type = SC_UNALLOC_PLAIN;
        return 0;
    }

    const uint8_t *t;
    int r = load_l2(img, s, (uint32_t)l1_index, &t);
    if (r < 0)
        return r;

    uint64_t need = MIN(bytes, to_table_end) + in_cluster;
    uint32_t nb_clusters = (uint32_t)div_round_up(need, s->cluster_size);
    unsigned sc0 = (unsigned)(in_cluster >> s->subcluster_bits);

    uint64_t e = l2_get(s, t, l2_index);
    uint64_t bm = l2_bitmap(s, t, l2_index);
    enum sc_type t0 = cluster_type(s, e, bm, sc0);
    if (t0 == SC_INVALID)
        return lsm_error(-EIO, "corrupt image: invalid subcluster bitmap 0x%016" PRIx64 " for guest offset 0x%" PRIx64,
                         bm, offset - in_cluster);

    /* Like QEMU: the zero flag is a v3 feature; in a version 2 image it is
     * corruption, not zeroes. */
    if (s->h.version < 3 && (t0 == SC_ZERO_PLAIN || t0 == SC_ZERO_ALLOC))
        return lsm_error(-EIO, "corrupt image: zero cluster entry in a version 2 (compat 0.10) image "
                         "(guest offset 0x%" PRIx64 ", L1 index %" PRIu64 ", L2 index %u)",
                         offset - in_cluster, l1_index, l2_index);
    uint64_t host_cluster = e & QCOW2_L2E_OFFSET_MASK;
    if (t0 == SC_COMPRESSED) {
        if (s->has_data_file)
            return lsm_error(-EIO, "corrupt image: compressed cluster in an image with an external data file");
        *host = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
    } else if (t0 == SC_NORMAL || t0 == SC_ZERO_ALLOC || t0 == SC_UNALLOC_ALLOC) {
        if (host_cluster & (s->cluster_size - 1))
            return lsm_error(-EIO, "corrupt image: cluster offset 0x%" PRIx64 " is not aligned (guest offset 0x%" PRIx64 ")",
                             host_cluster, offset - in_cluster);
        if (s->data_file_raw && host_cluster != offset - in_cluster)
            return lsm_error(-EIO, "corrupt image: external data file offset 0x%" PRIx64 " does not match guest offset 0x%" PRIx64,
                             host_cluster, offset - in_cluster);
        *host = host_cluster + in_cluster;
    }

    /* count subclusters of the same type (contiguous host clusters) */
    uint64_t count = 0;
    bool check_offset = (t0 == SC_NORMAL || t0 == SC_ZERO_ALLOC || t0 == SC_UNALLOC_ALLOC);
    uint64_t expect = host_cluster;
    for (uint32_t i = 0; i < nb_clusters; i++) {
        unsigned first_sc = i == 0 ? sc0 : 0;
        uint64_t ei = i == 0 ? e : l2_get(s, t, l2_index + i);
        uint64_t bi = i == 0 ? bm : l2_bitmap(s, t, l2_index + i);
        enum sc_type ti = i == 0 ? t0 : cluster_type(s, ei, bi, first_sc);
        if (ti == SC_INVALID) {
            if (i == 0)
                return -EIO;
            break;          /* reported when the walk reaches it */
        }
        if (i == 0 && t0 == SC_COMPRESSED) {
            count = s->subclusters - sc0;
            break;          /* compressed clusters one by one */
        }
        if (i > 0) {
            if (ti != t0)
                break;
            if (check_offset) {
                expect += s->cluster_size;
                if ((ei & QCOW2_L2E_OFFSET_MASK) != expect)
                    break;
            }
        }
        unsigned n = sc_range(s, ti, bi, first_sc);
        count += n;
        if (first_sc + n < s->subclusters)
            break;
    }

    uint64_t avail = ((count + sc0) << s->subcluster_bits);
    if (avail > need)
        avail = need;
    *pnum = avail - in_cluster;
    *type = t0;
    return 0;
}

static int detect_prealloc(struct lsm_image *img, struct qcow2_state *s)
{
    if (s->prealloc_state < 0) {
        int r = qcow2_detect_metadata_preallocation(img);
        s->prealloc_state = r == 1;
    }
    return s->prealloc_state;
}

int qcow2_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                       uint64_t *pnum, uint64_t *map)
{
    struct qcow2_state *s = img->priv;
    uint64_t host;
    enum sc_type t;
    int r = get_host_offset(img, offset, bytes, pnum, &host, &t);
    if (r < 0)
        return r;
    int st = 0;
    if (t == SC_NORMAL || t == SC_ZERO_ALLOC || t == SC_UNALLOC_ALLOC) {
        *map = host;
        st |= LSM_BS_OFFSET;
    }
    if (t == SC_ZERO_PLAIN || t == SC_ZERO_ALLOC)
        st |= LSM_BS_ZERO;
    else if (t != SC_UNALLOC_PLAIN && t != SC_UNALLOC_ALLOC)
        st |= LSM_BS_DATA;
    if (t == SC_COMPRESSED)
        st |= LSM_BS_COMPRESSED;
    if ((st & LSM_BS_DATA) && (st & LSM_BS_OFFSET) && detect_prealloc(img, s))
        st |= LSM_BS_RECURSE;
    return st;
}

/* Read and decompress the compressed cluster described by L2 descriptor d. */
static int read_compressed(struct lsm_image *img, struct qcow2_state *s, uint64_t d)
{
    if (s->dbuf_key == d && s->dbuf)
        return 0;
    unsigned shift = qcow2_csize_shift(s->cluster_bits);
    uint64_t coff = d & qcow2_coffset_mask(s->cluster_bits);
    uint64_t nsec = ((d >> shift) & qcow2_csize_mask(s->cluster_bits)) + 1;
    uint64_t csize = nsec * 512 - (coff & 511);
    if (!s->cbuf) {
        /* descriptor allows up to (csize_mask + 1) sectors: at most 2x the cluster */
        s->cbuf = malloc((size_t)s->cluster_size * 2 + 512);
        s->dbuf = malloc(s->cluster_size);
        if (!s->cbuf || !s->dbuf)
            return lsm_error(-ENOMEM, "out of memory");
    }
    if (csize > (uint64_t)s->cluster_size * 2 + 512)
        return lsm_error(-EIO, "corrupt image: compressed cluster of %" PRIu64 " bytes", csize);
    if (coff >= img->file_size)
        return lsm_error(-EIO, "corrupt image: compressed cluster at 0x%" PRIx64 " is beyond the end of the file",
                         coff);
    int r = lsm_pread_zerofill(img->fd, s->cbuf, csize, coff);
    if (r < 0)
        return lsm_error_errno(r, "cannot read compressed cluster at 0x%" PRIx64, coff);
    s->dbuf_key = 0;
    r = qcow2_decompress(s->compression_type, s->cbuf, csize, s->dbuf, s->cluster_size);
    if (r < 0) {
        lsm_error_prefix("compressed cluster at 0x%" PRIx64, coff);
        return r;
    }
    s->dbuf_key = d;
    return 0;
}

int qcow2_pread_data(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset)
{
    struct qcow2_state *s = img->priv;
    uint8_t *p = buf;
    while (len) {
        uint64_t n, host;
        enum sc_type t;
        int r = get_host_offset(img, offset, len, &n, &host, &t);
        if (r < 0)
            return r;
        switch (t) {
        case SC_NORMAL:
            r = lsm_pread_zerofill(img->data_fd, p, n, host);
            if (r < 0)
                return lsm_error_errno(r, "cannot read data at host offset 0x%" PRIx64, host);
            break;
        case SC_COMPRESSED: {
            r = read_compressed(img, s, host);
            if (r < 0)
                return r;
            uint64_t in = offset & (s->cluster_size - 1);
            memcpy(p, s->dbuf + in, n);
            break;
        }
        default:
            /* zero or unallocated: the generic layer does not call us for
             * those, but keep reads safe */
            memset(p, 0, n);
            break;
        }
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}
