/* qcow2 reader: header, header extensions, L1 and refcount tables,
 * snapshots.  Every field read from the file is checked before use; a bad
 * image gives one message and -EINVAL/-ENOTSUP, never a large allocation
 * or a read past a buffer. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "config.h"
#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "image-internal.h"
#include "qcow2.h"
#include "util.h"

#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_SNAPSHOT_TABLE (64u * 1024 * 1024)
#define QCOW2_MAX_BITMAPS 65535
/* Metadata cache budgets (bytes) */
#define L2_CACHE_BUDGET (8u * 1024 * 1024)
#define RB_CACHE_BUDGET (1u * 1024 * 1024)

static void parse_header(const uint8_t *b, struct qcow2_header *h)
{
    h->magic = be32_get(b + 0);
    h->version = be32_get(b + 4);
    h->backing_file_offset = be64_get(b + 8);
    h->backing_file_size = be32_get(b + 16);
    h->cluster_bits = be32_get(b + 20);
    h->size = be64_get(b + 24);
    h->crypt_method = be32_get(b + 32);
    h->l1_size = be32_get(b + 36);
    h->l1_table_offset = be64_get(b + 40);
    h->refcount_table_offset = be64_get(b + 48);
    h->refcount_table_clusters = be32_get(b + 56);
    h->nb_snapshots = be32_get(b + 60);
    h->snapshots_offset = be64_get(b + 64);
    if (h->version >= 3) {
        h->incompatible_features = be64_get(b + 72);
        h->compatible_features = be64_get(b + 80);
        h->autoclear_features = be64_get(b + 88);
        h->refcount_order = be32_get(b + 96);
        h->header_length = be32_get(b + 100);
        h->compression_type = b[104];
    } else {
        h->incompatible_features = 0;
        h->compatible_features = 0;
        h->autoclear_features = 0;
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LENGTH;
        h->compression_type = 0;
    }
}

/* A table of entries*entry_len bytes at offset: cluster aligned, no
 * overflow, inside the file. */
static int check_table(struct lsm_image *img, struct qcow2_state *s, const char *what,
                       uint64_t offset, uint64_t entries, uint64_t entry_len)
{
    if (entries > INT64_MAX / entry_len)
        return lsm_error(-EINVAL, "%s is too large (%" PRIu64 " entries)", what, entries);
    uint64_t size = entries * entry_len;
    if (offset > (uint64_t)INT64_MAX - size)
        return lsm_error(-EINVAL, "%s offset 0x%" PRIx64 " is out of range", what, offset);
    if (offset & (s->cluster_size - 1))
        return lsm_error(-EINVAL, "%s offset 0x%" PRIx64 " is not aligned to the cluster size",
                         what, offset);
    if (size && offset + size > align_up(img->file_size, s->cluster_size))
        return lsm_error(-EINVAL, "%s (offset 0x%" PRIx64 ", %" PRIu64 " bytes) extends beyond the end of the file",
                         what, offset, size);
    if (size && offset < s->cluster_size)
        return lsm_error(-EINVAL, "%s at offset 0x%" PRIx64 " overlaps the header", what, offset);
    return 0;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static int read_extensions(struct lsm_image *img, struct qcow2_state *s,
                           const uint8_t *cl, uint64_t start, uint64_t end)
{
    uint64_t off = start;
    while (off < end) {
        if (end - off < sizeof(struct qcow2_ext_header))
            return lsm_error(-EINVAL, "header extension at offset %" PRIu64 " is truncated", off);
        uint32_t magic = be32_get(cl + off);
        uint32_t len = be32_get(cl + off + 4);
        off += 8;
        if (len > end - off)
            return lsm_error(-EINVAL, "header extension 0x%08x is too large (%u bytes)", magic, len);
        const uint8_t *data = cl + off;
        switch (magic) {
        case QCOW2_EXT_END:
            return 0;
        case QCOW2_EXT_BACKING_FORMAT:
            if (len >= sizeof s->backing_fmt)
                return lsm_error(-EINVAL, "backing format extension is too long (%u bytes)", len);
            memcpy(s->backing_fmt, data, len);
            s->backing_fmt[len] = '\0';
            break;
        case QCOW2_EXT_DATA_FILE:
            if (len == 0 || len > 4096 || memchr(data, '\0', len))
                return lsm_error(-EINVAL, "external data file name in the header is invalid");
            free(s->data_file_name);
            s->data_file_name = strndup((const char *)data, len);
            if (!s->data_file_name)
                return lsm_error(-ENOMEM, "out of memory");
            break;
        case QCOW2_EXT_BITMAPS:
            s->has_bitmaps_ext = true;
            if (len != 24)
                return lsm_error(-EINVAL, "bitmaps extension has an invalid length (%u)", len);
            if (s->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) {
                uint32_t nb = be32_get(data);
                if (nb > QCOW2_MAX_BITMAPS)
                    return lsm_error(-EINVAL, "too many persistent bitmaps (%u)", nb);
                s->nb_bitmaps = nb;
                s->bitmap_dir_size = be64_get((const uint8_t *)data + 8);
                s->bitmap_dir_offset = be64_get((const uint8_t *)data + 16);
            }
            break;
        case QCOW2_EXT_CRYPTO:
            s->has_crypto_ext = true;
            if (s->h.crypt_method != QCOW2_CRYPT_LUKS)
                return lsm_error(-EINVAL, "crypto header extension in an image that is not LUKS-encrypted");
            break;
        default:   /* feature table and unknown extensions: kept, not needed */
            break;
        }
        off += align_up(len, 8);
    }
    return 0;
}

static int read_snapshots(struct lsm_image *img, struct qcow2_state *s)
{
    uint32_t n = s->h.nb_snapshots;
    if (!n)
        return 0;
    if (n > QCOW2_MAX_SNAPSHOTS)
        return lsm_error(-EINVAL, "too many internal snapshots (%u)", n);
    int r = check_table(img, s, "snapshot table", s->h.snapshots_offset, n,
                        sizeof(struct qcow2_snapshot_header));
    if (r < 0)
        return r;
    s->snaps = calloc(n, sizeof *s->snaps);
    if (!s->snaps)
        return lsm_error(-ENOMEM, "out of memory");
    uint64_t off = s->h.snapshots_offset;
    uint64_t table_end = off;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t hb[sizeof(struct qcow2_snapshot_header)];
        size_t got;
        r = lsm_pread_full(img->fd, hb, sizeof hb, off, &got);
        if (r < 0)
            return lsm_error_errno(r, "cannot read the snapshot table");
        if (got < sizeof hb)
            return lsm_error(-EINVAL, "snapshot table extends beyond the end of the file");
        uint64_t l1_off = be64_get(hb);
        uint32_t l1_size = be32_get(hb + 8);
        uint16_t id_len = be16_get(hb + 12), name_len = be16_get(hb + 14);
        uint32_t extra = be32_get(hb + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA)
            return lsm_error(-EINVAL, "snapshot %u has too much extra data (%u bytes)", i, extra);
        if (l1_size > QCOW2_MAX_L1_BYTES / 8)
            return lsm_error(-EINVAL, "snapshot %u has an L1 table that is too large", i);
        r = check_table(img, s, "snapshot L1 table", l1_off, l1_size, 8);
        if (r < 0)
            return r;
        uint64_t ent = sizeof hb + (uint64_t)extra + id_len + name_len;
        uint8_t *rest = malloc(extra + id_len + name_len + 1);
        if (!rest)
            return lsm_error(-ENOMEM, "out of memory");
        r = lsm_pread_full(img->fd, rest, extra + id_len + name_len, off + sizeof hb, &got);
        if (r < 0 || got < (size_t)extra + id_len + name_len) {
            free(rest);
            return r < 0 ? lsm_error_errno(r, "cannot read the snapshot table")
                         : lsm_error(-EINVAL, "snapshot table extends beyond the end of the file");
        }
        struct lsm_snapshot_info *sn = &s->snaps[i];
        s->nb_snaps = (int)i + 1;
        sn->id = strndup((char *)rest + extra, id_len);
        sn->name = strndup((char *)rest + extra + id_len, name_len);
        sn->date_sec = be32_get(hb + 16);
        sn->date_nsec = be32_get(hb + 20);
        sn->vm_clock_nsec = be64_get(hb + 24);
        sn->vm_state_size = be32_get(hb + 32);
        sn->disk_size = s->h.size;
        sn->icount = UINT64_MAX;
        sn->l1_offset = l1_off;
        sn->l1_size = l1_size;
        if (extra >= 16)
            sn->vm_state_size = be64_get(rest + 0);
        if (extra >= 16)
            sn->disk_size = be64_get(rest + 8);
        if (extra >= 24)
            sn->icount = be64_get(rest + 16);
        free(rest);
        if (!sn->id || !sn->name)
            return lsm_error(-ENOMEM, "out of memory");
        off = align_up(off + ent, 8);
        table_end = off;
        if (table_end - s->h.snapshots_offset > QCOW2_MAX_SNAPSHOT_TABLE)
            return lsm_error(-EINVAL, "snapshot table is too large");
    }
    if (table_end > align_up(img->file_size, s->cluster_size))
        return lsm_error(-EINVAL, "snapshot table extends beyond the end of the file");
    return 0;
}

static void qcow2_close(struct lsm_image *img)
{
    struct qcow2_state *s = img->priv;
    if (!s)
        return;
    free(s->l1);
    free(s->reftable);
    qcow2_cache_free(s->l2_cache);
    qcow2_cache_free(s->rb_cache);
    free(s->data_file_name);
    lsm_snapshots_free(s->snaps, s->nb_snaps);
    free(s->cbuf);
    free(s->dbuf);
    free(s);
    img->priv = NULL;
}

static int open_data_file(struct lsm_image *img, struct qcow2_state *s)
{
    if (!s->data_file_name)
        return lsm_error(-EINVAL, "image uses an external data file but names none");
    int err;
    char *path = lsm_resolve_backing(img->filename, s->data_file_name, &err);
    if (!path) {
        lsm_error_prefix("external data file");
        return err;
    }
    int fd = lsm_open_disk(path, O_RDONLY, 0, "external data file", NULL);
    if (fd < 0) {
        free(path);
        return fd;
    }
    img->data_fd = fd;
    img->data_filename = path;
    return 0;
}

/* Buffers for the header reads: aligned, and whole 4 KiB units, so that
 * the writer's O_DIRECT descriptors can be read too. */
#define HDR_ALIGN 4096u

static void *hdr_alloc(size_t len)
{
    void *p = NULL;
    if (posix_memalign(&p, HDR_ALIGN, align_up(len, HDR_ALIGN)) != 0)
        return NULL;
    memset(p, 0, align_up(len, HDR_ALIGN));
    return p;
}

int qcow2_parse_header(struct lsm_image *img, struct qcow2_state *s, unsigned flags)
{
    _cleanup_free_ uint8_t *hb = hdr_alloc(HDR_ALIGN);
    size_t got;
    if (!hb)
        return lsm_error(-ENOMEM, "out of memory");
    int r = lsm_pread_full(img->fd, hb, HDR_ALIGN, 0, &got);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the qcow2 header");
    if (got < QCOW2_V2_HEADER_LENGTH)
        return lsm_error(-EINVAL, "file is too short for a qcow2 header (%zu bytes)", got);
    struct qcow2_header *h = &s->h;
    parse_header(hb, h);
    if (h->magic != QCOW2_MAGIC)
        return lsm_error(-EINVAL, "not a qcow2 image (bad magic)");
    if (h->version != 2 && h->version != 3)
        return lsm_error(-ENOTSUP, "unsupported qcow2 version %u", h->version);
    if (h->version == 3 && got < QCOW2_V3_MIN_HEADER_LENGTH)
        return lsm_error(-EINVAL, "file is too short for a qcow2 v3 header");
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return lsm_error(-EINVAL, "unsupported cluster size: 2^%u bytes (must be 512 B to 2 MiB)",
                         h->cluster_bits);
    s->cluster_bits = h->cluster_bits;
    s->cluster_size = 1u << s->cluster_bits;
    img->cluster_size = s->cluster_size;

    if (h->version == 3) {
        if (h->header_length < QCOW2_V3_MIN_HEADER_LENGTH)
            return lsm_error(-EINVAL, "qcow2 header is too short (header_length %u)", h->header_length);
        if (h->header_length > s->cluster_size)
            return lsm_error(-EINVAL, "qcow2 header_length %u exceeds the cluster size", h->header_length);
        if (h->header_length <= 104)
            h->compression_type = 0;
    }
    if (h->backing_file_offset > s->cluster_size)
        return lsm_error(-EINVAL, "invalid backing file offset 0x%" PRIx64, h->backing_file_offset);

    if ((h->incompatible_features & QCOW2_INCOMPAT_LSM_INCOMPLETE) &&
        !(flags & QCOW2_PARSE_INCOMPLETE_OK))
        return lsm_error(-EINVAL, "incomplete copy (an lsm-sync write into it was interrupted): "
                         "run the copy again");
    uint64_t unknown = h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN &
                       ~((flags & QCOW2_PARSE_INCOMPLETE_OK) ? QCOW2_INCOMPAT_LSM_INCOMPLETE : 0);
    if (unknown)
        return lsm_error(-ENOTSUP, "unsupported qcow2 incompatible feature bits 0x%" PRIx64, unknown);
    if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
        return lsm_error(-EINVAL, "refcount width 2^%u bits is too large (at most 64)", h->refcount_order);
    if (h->crypt_method != QCOW2_CRYPT_NONE) {
        if (h->crypt_method == QCOW2_CRYPT_AES || h->crypt_method == QCOW2_CRYPT_LUKS)
            return lsm_error(-ENOTSUP, "encrypted images are not supported (%s encryption)",
                             h->crypt_method == QCOW2_CRYPT_AES ? "AES" : "LUKS");
        return lsm_error(-EINVAL, "invalid encryption method %u", h->crypt_method);
    }

    /* compression type */
    s->compression_type = h->compression_type;
    if (s->compression_type != QCOW2_COMPRESSION_ZLIB && s->compression_type != QCOW2_COMPRESSION_ZSTD)
        return lsm_error(-ENOTSUP, "unknown compression type %u", s->compression_type);
    if (s->compression_type == QCOW2_COMPRESSION_ZLIB) {
        if (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)
            return lsm_error(-EINVAL, "compression type incompatible bit is set for zlib");
    } else if (!(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        return lsm_error(-EINVAL, "compression type incompatible bit must be set for zstd");
    }

    s->extl2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    s->l2_entry_bytes = s->extl2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extl2 ? 4 : 3);
    s->l2_entries = 1u << s->l2_bits;
    s->subclusters = s->extl2 ? QCOW2_EXTL2_SUBCLUSTERS : 1;
    s->subcluster_bits = s->cluster_bits - (s->extl2 ? 5 : 0);
    if (s->subcluster_bits < QCOW2_MIN_CLUSTER_BITS)
        return lsm_error(-EINVAL, "unsupported subcluster size: %u bytes (extended L2 needs clusters of 16 KiB or more)",
                         1u << s->subcluster_bits);

    s->refcount_order = h->refcount_order;
    s->refblock_bits = s->cluster_bits + 3 - s->refcount_order;

    /* Virtual size: QEMU counts whole sectors. */
    if (h->size > (uint64_t)INT64_MAX)
        return lsm_error(-EINVAL, "virtual size %" PRIu64 " is too large", h->size);
    img->virtual_size = h->size & ~511ULL;

    /* Whole first cluster: header extensions and backing name live here. */
    size_t clen = align_up(s->cluster_size, HDR_ALIGN);
    _cleanup_free_ uint8_t *cl = hdr_alloc(clen);
    if (!cl)
        return lsm_error(-ENOMEM, "out of memory");
    r = lsm_pread_zerofill(img->fd, cl, clen, 0);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the qcow2 header");
    uint64_t ext_end = h->backing_file_offset ? h->backing_file_offset : s->cluster_size;
    r = read_extensions(img, s, cl, h->header_length, ext_end);
    if (r < 0)
        return r;

    if (h->backing_file_offset) {
        uint32_t len = h->backing_file_size;
        if (len > QCOW2_MAX_BACKING_NAME || len > s->cluster_size - h->backing_file_offset)
            return lsm_error(-EINVAL, "backing file name is too long (%u bytes)", len);
        if (len) {
            img->backing_name = strndup((const char *)cl + h->backing_file_offset, len);
            if (!img->backing_name)
                return lsm_error(-ENOMEM, "out of memory");
            if (strlen(img->backing_name) != len)
                return lsm_error(-EINVAL, "backing file name contains a NUL byte");
        }
    }
    if (s->backing_fmt[0] && img->backing_name) {
        r = lsm_format_parse(s->backing_fmt, &img->backing_fmt);
        if (r < 0)
            return lsm_error(-ENOTSUP, "backing file format '%s' is not supported (only raw and qcow2)",
                             s->backing_fmt);
    }

    /* External data file */
    s->has_data_file = h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
    s->data_file_raw = s->has_data_file && (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    if (!s->has_data_file && s->data_file_name) {
        free(s->data_file_name);
        s->data_file_name = NULL;
    }

    /* Refcount table */
    if (h->refcount_table_clusters == 0)
        return lsm_error(-EINVAL, "image does not contain a reference count table");
    if (h->refcount_table_clusters > (QCOW2_MAX_REFTABLE_BYTES >> s->cluster_bits) &&
        h->refcount_table_clusters > 1)
        return lsm_error(-EINVAL, "reference count table is too large (%u clusters)",
                         h->refcount_table_clusters);
    s->reftable_entries = (uint32_t)(((uint64_t)h->refcount_table_clusters << s->cluster_bits) / 8);
    r = check_table(img, s, "refcount table", h->refcount_table_offset, s->reftable_entries, 8);
    if (r < 0)
        return r;

    /* L1 table */
    if (h->l1_size > QCOW2_MAX_L1_BYTES / 8)
        return lsm_error(-EINVAL, "active L1 table is too large (%u entries)", h->l1_size);
    uint64_t l1_span = (uint64_t)s->cluster_size << s->l2_bits;   /* bytes per L1 entry */
    uint64_t l1_needed = div_round_up(h->size, l1_span);
    if (l1_needed > INT32_MAX)
        return lsm_error(-EINVAL, "image is too big (virtual size %" PRIu64 ")", h->size);
    if (h->l1_size < l1_needed)
        return lsm_error(-EINVAL, "L1 table is too small (%u entries for a virtual size of %" PRIu64 ")",
                         h->l1_size, h->size);
    r = check_table(img, s, "L1 table", h->l1_table_offset, h->l1_size, 8);
    if (r < 0)
        return r;
    if (overlaps(h->l1_table_offset, (uint64_t)h->l1_size * 8,
                 h->refcount_table_offset, (uint64_t)s->reftable_entries * 8))
        return lsm_error(-EINVAL, "L1 table overlaps the refcount table");
    return 0;
}

static int qcow2_do_open(struct lsm_image *img, struct qcow2_state *s)
{
    int r = qcow2_parse_header(img, s, (img->open_flags & LSM_OPEN_INCOMPLETE_OK) ?
                                        QCOW2_PARSE_INCOMPLETE_OK : 0);
    if (r < 0)
        return r;
    struct qcow2_header *h = &s->h;
    s->l1_size = h->l1_size;
    if (s->l1_size) {
        s->l1 = malloc((size_t)s->l1_size * 8);
        if (!s->l1)
            return lsm_error(-ENOMEM, "out of memory");
        r = lsm_pread_zerofill(img->fd, s->l1, (size_t)s->l1_size * 8, h->l1_table_offset);
        if (r < 0)
            return lsm_error_errno(r, "cannot read the L1 table");
        for (uint32_t i = 0; i < s->l1_size; i++)
            s->l1[i] = be64toh(s->l1[i]);
    }
    s->reftable = malloc((size_t)s->reftable_entries * 8);
    if (!s->reftable)
        return lsm_error(-ENOMEM, "out of memory");
    r = lsm_pread_zerofill(img->fd, s->reftable, (size_t)s->reftable_entries * 8,
                           h->refcount_table_offset);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the refcount table");
    for (uint32_t i = 0; i < s->reftable_entries; i++)
        s->reftable[i] = be64toh(s->reftable[i]);

    r = read_snapshots(img, s);
    if (r < 0)
        return r;

    unsigned l2_slots = MAX(2u, MIN(64u, L2_CACHE_BUDGET >> s->cluster_bits));
    unsigned rb_slots = MAX(2u, MIN(16u, RB_CACHE_BUDGET >> s->cluster_bits));
    s->l2_cache = qcow2_cache_new(l2_slots, s->cluster_size);
    s->rb_cache = qcow2_cache_new(rb_slots, s->cluster_size);
    if (!s->l2_cache || !s->rb_cache)
        return lsm_error(-ENOMEM, "out of memory");
    s->meta_bytes = (uint64_t)s->l1_size * 8 + (uint64_t)s->reftable_entries * 8 +
                    (uint64_t)(l2_slots + rb_slots) * s->cluster_size;
    s->prealloc_state = -1;

    if (s->has_data_file) {
        r = open_data_file(img, s);
        if (r < 0)
            return r;
    }
    return 0;
}

static int qcow2_open(struct lsm_image *img)
{
    struct qcow2_state *s = calloc(1, sizeof *s);
    if (!s)
        return lsm_error(-ENOMEM, "out of memory");
    img->priv = s;
    int r = qcow2_do_open(img, s);
    if (r < 0) {
        if (img->data_fd >= 0 && img->data_fd != img->fd) {
            close(img->data_fd);
            img->data_fd = img->fd;
        }
        qcow2_close(img);
    }
    return r;
}

uint64_t lsm_image_meta_bytes(const struct lsm_image *img)
{
    uint64_t n = 0;
    for (; img; img = img->backing)
        if (img->format == LSM_FMT_QCOW2 && img->priv)
            n += ((const struct qcow2_state *)img->priv)->meta_bytes;
    return n;
}

int lsm_qcow2_get_info(struct lsm_image *img, struct lsm_qcow2_info *out)
{
    if (img->format != LSM_FMT_QCOW2)
        return -EINVAL;
    struct qcow2_state *s = img->priv;
    memset(out, 0, sizeof *out);
    out->version = s->h.version;
    out->refcount_bits = 1u << s->refcount_order;
    out->lazy_refcounts = s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    out->corrupt = s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT;
    out->dirty = s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY;
    out->extended_l2 = s->extl2;
    out->compression = s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib";
    out->data_file = s->has_data_file ? s->data_file_name : NULL;
    out->data_file_raw = s->data_file_raw;
    out->nb_snapshots = (unsigned)s->nb_snaps;
    out->nb_bitmaps = s->nb_bitmaps;
    out->header_length = s->h.header_length;
    return 0;
}

int lsm_qcow2_get_snapshots(struct lsm_image *img, struct lsm_snapshot_info **out)
{
    *out = NULL;
    if (img->format != LSM_FMT_QCOW2)
        return 0;
    struct qcow2_state *s = img->priv;
    if (!s->nb_snaps)
        return 0;
    struct lsm_snapshot_info *a = calloc((size_t)s->nb_snaps, sizeof *a);
    if (!a)
        return lsm_error(-ENOMEM, "out of memory");
    for (int i = 0; i < s->nb_snaps; i++) {
        a[i] = s->snaps[i];
        a[i].id = strdup(s->snaps[i].id);
        a[i].name = strdup(s->snaps[i].name);
        if (!a[i].id || !a[i].name) {
            lsm_snapshots_free(a, i + 1);
            return lsm_error(-ENOMEM, "out of memory");
        }
    }
    *out = a;
    return s->nb_snaps;
}

/* Bitmap directory entries (docs/interop/qcow2.txt, "Bitmaps"). */
#define BME_FLAG_IN_USE    (1u << 0)
#define BME_FLAG_AUTO      (1u << 1)
#define BME_FLAG_EXTRA_OK  (1u << 2)
#define BME_TYPE_DIRTY_TRACKING 1
#define BME_MIN_GRANULARITY_BITS 9
#define BME_MAX_GRANULARITY_BITS 31
#define BME_MAX_NAME_SIZE 1023
#define BME_MAX_TABLE_SIZE 0x8000000u
#define BITMAP_DIR_MAX_BYTES (64u * 1024 * 1024)

int lsm_qcow2_get_bitmaps(struct lsm_image *img, struct lsm_bitmap_info **out)
{
    *out = NULL;
    if (img->format != LSM_FMT_QCOW2)
        return 0;
    struct qcow2_state *s = img->priv;
    if (!s->nb_bitmaps)
        return 0;
    uint64_t dsize = s->bitmap_dir_size;
    if (dsize < 24 || dsize > BITMAP_DIR_MAX_BYTES)
        return lsm_error(-EINVAL, "corrupt image: bitmap directory size %" PRIu64 " is invalid", dsize);
    int r = check_table(img, s, "bitmap directory", s->bitmap_dir_offset, dsize, 1);
    if (r < 0)
        return r;
    _cleanup_free_ uint8_t *dir = malloc(dsize);
    if (!dir)
        return lsm_error(-ENOMEM, "out of memory");
    size_t got;
    r = lsm_pread_full(img->fd, dir, dsize, s->bitmap_dir_offset, &got);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the bitmap directory");
    if (got < dsize)
        return lsm_error(-EINVAL, "corrupt image: bitmap directory extends beyond the end of the file");
    struct lsm_bitmap_info *a = calloc(s->nb_bitmaps, sizeof *a);
    if (!a)
        return lsm_error(-ENOMEM, "out of memory");
    uint64_t off = 0;
    unsigned n = 0;
    for (; n < s->nb_bitmaps; n++) {
        if (dsize - off < 24) {
            r = lsm_error(-EINVAL, "corrupt image: bitmap directory is too short for %u bitmaps",
                          s->nb_bitmaps);
            break;
        }
        const uint8_t *e = dir + off;
        uint64_t toff = be64_get(e);
        uint32_t tsize = be32_get(e + 8), flags = be32_get(e + 12), extra = be32_get(e + 20);
        uint8_t type = e[16], gbits = e[17];
        uint16_t nlen = be16_get(e + 18);
        uint64_t elen = align_up(24 + (uint64_t)extra + nlen, 8);
        if (elen > dsize - off) {
            r = lsm_error(-EINVAL, "corrupt image: bitmap %u overflows the bitmap directory", n);
            break;
        }
        if (type != BME_TYPE_DIRTY_TRACKING || gbits < BME_MIN_GRANULARITY_BITS ||
            gbits > BME_MAX_GRANULARITY_BITS || nlen == 0 || nlen > BME_MAX_NAME_SIZE ||
            tsize > BME_MAX_TABLE_SIZE || (flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO | BME_FLAG_EXTRA_OK)) ||
            (extra && !(flags & BME_FLAG_EXTRA_OK))) {
            r = lsm_error(-EINVAL, "corrupt image: bitmap %u has an invalid directory entry", n);
            break;
        }
        r = check_table(img, s, "bitmap table", toff, tsize, 8);
        if (r < 0)
            break;
        a[n].name = strndup((const char *)e + 24 + extra, nlen);
        if (!a[n].name) {
            r = lsm_error(-ENOMEM, "out of memory");
            break;
        }
        a[n].granularity = 1ULL << gbits;
        a[n].in_use = flags & BME_FLAG_IN_USE;
        a[n].autoload = flags & BME_FLAG_AUTO;
        a[n].table_offset = toff;
        a[n].table_size = tsize;
        off += elen;
    }
    if (r < 0) {
        lsm_bitmaps_free(a, (int)n + 1);
        return r;
    }
    *out = a;
    return (int)n;
}

uint64_t lsm_bitmap_bytes(uint64_t virtual_size, uint64_t granularity)
{
    return div_round_up(div_round_up(virtual_size, granularity), 8);
}

int lsm_qcow2_read_bitmap(struct lsm_image *img, const struct lsm_bitmap_info *b, uint8_t *buf,
                          size_t len)
{
    if (img->format != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "%s is not a qcow2 image", img->filename);
    struct qcow2_state *s = img->priv;
    uint64_t cs = s->cluster_size;
    uint64_t need = div_round_up(len, cs);
    if (len != lsm_bitmap_bytes(img->virtual_size, b->granularity) || need > b->table_size)
        return lsm_error(-EINVAL, "corrupt image: the table of bitmap '%s' has %u entries, its "
                         "size needs %" PRIu64, b->name, b->table_size, need);
    /* the table was bounds-checked by lsm_qcow2_get_bitmaps */
    _cleanup_free_ uint64_t *t = malloc(need ? need * 8 : 8);
    if (!t)
        return lsm_error(-ENOMEM, "out of memory");
    int r = lsm_pread_zerofill(img->fd, t, need * 8, b->table_offset);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the table of bitmap '%s'", b->name);
    for (uint64_t i = 0; i < need; i++) {
        uint64_t e = be64toh(t[i]);
        uint64_t off = e & 0x00fffffffffffe00ULL;
        size_t n = (size_t)MIN(cs, len - i * cs);
        uint8_t *p = buf + i * cs;
        if ((e & 0xff000000000001feULL) || (off && (e & 1)) || (off & (cs - 1)))
            return lsm_error(-EINVAL, "corrupt image: bitmap '%s' has an invalid table entry %"
                             PRIu64 " (0x%" PRIx64 ")", b->name, i, e);
        if (!off) {
            memset(p, (e & 1) ? 0xff : 0, n);
            continue;
        }
        if (off >= align_up(img->file_size, cs) || off < cs)
            return lsm_error(-EINVAL, "corrupt image: bitmap '%s' points outside the file "
                             "(0x%" PRIx64 ")", b->name, off);
        r = lsm_pread_zerofill(img->fd, p, n, off);
        if (r < 0)
            return lsm_error_errno(r, "cannot read bitmap '%s' at 0x%" PRIx64, b->name, off);
    }
    return 0;
}

void lsm_bitmaps_free(struct lsm_bitmap_info *b, int n)
{
    if (!b)
        return;
    for (int i = 0; i < n; i++)
        free(b[i].name);
    free(b);
}

static int find_snapshot(const struct qcow2_state *s, const char *key, bool by_id)
{
    for (int i = 0; i < s->nb_snaps; i++)
        if (!strcmp(by_id ? s->snaps[i].id : s->snaps[i].name, key))
            return i;
    return -1;
}

int lsm_qcow2_load_snapshot(struct lsm_image *img, const char *key, enum lsm_snapshot_key how)
{
    if (img->format != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "%s is not a qcow2 image: it has no internal snapshots",
                         img->filename);
    struct qcow2_state *s = img->priv;
    int i = -1;
    if (how != LSM_SNAPSHOT_NAME)
        i = find_snapshot(s, key, true);
    if (i < 0 && how != LSM_SNAPSHOT_ID)
        i = find_snapshot(s, key, false);
    if (i < 0)
        return lsm_error(-ENOENT, "%s has no internal snapshot with %s '%s'", img->filename,
                         how == LSM_SNAPSHOT_ID ? "id" : how == LSM_SNAPSHOT_NAME ? "name"
                                                 : "id or name", key);
    const struct lsm_snapshot_info *sn = &s->snaps[i];
    /* Its L1 table was bounds-checked by read_snapshots.  As in qemu-img
     * convert -l, the view keeps the image's current virtual size: entries
     * past a smaller snapshot's L1 table read as unallocated. */
    uint64_t *l1 = NULL;
    if (sn->l1_size) {
        l1 = malloc((size_t)sn->l1_size * 8);
        if (!l1)
            return lsm_error(-ENOMEM, "out of memory");
        int r = lsm_pread_zerofill(img->fd, l1, (size_t)sn->l1_size * 8, sn->l1_offset);
        if (r < 0) {
            free(l1);
            return lsm_error_errno(r, "cannot read the L1 table of snapshot '%s'", sn->name);
        }
        for (uint32_t k = 0; k < sn->l1_size; k++)
            l1[k] = be64toh(l1[k]);
    }
    /* The L2 cache is keyed by host offset: entries stay valid. */
    free(s->l1);
    s->l1 = l1;
    s->l1_size = sn->l1_size;
    return 0;
}

void lsm_snapshots_free(struct lsm_snapshot_info *sn, int n)
{
    if (!sn)
        return;
    for (int i = 0; i < n; i++) {
        free(sn[i].id);
        free(sn[i].name);
    }
    free(sn);
}

const struct lsm_image_ops lsm_qcow2_ops = {
    .name = "qcow2",
    .open = qcow2_open,
    .close = qcow2_close,
    .block_status = qcow2_block_status,
    .pread_data = qcow2_pread_data,
};
