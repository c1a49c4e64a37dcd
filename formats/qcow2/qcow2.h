/* qcow2 reader: private state shared by qcow2*.c. */
#ifndef LSM_QCOW2_H
#define LSM_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "qcow2-format.h"

/* A bounded cache of metadata tables (L2 tables, refcount blocks), each
 * table_size bytes, read whole from the file. */
struct qcow2_cache;
struct qcow2_cache *qcow2_cache_new(unsigned slots, size_t table_size);
void qcow2_cache_free(struct qcow2_cache *c);
/* *table points into the cache until the next get. Reads past EOF return zeroes. */
int qcow2_cache_get(struct qcow2_cache *c, int fd, uint64_t offset, const uint8_t **table);

struct qcow2_state {
    struct qcow2_header h;        /* host byte order */
    unsigned cluster_bits;
    uint32_t cluster_size;
    bool extl2;
    unsigned l2_entry_bytes;      /* 8, or 16 with extended L2 */
    unsigned l2_bits;             /* log2(entries per L2 table) */
    uint32_t l2_entries;
    unsigned subcluster_bits;
    unsigned subclusters;         /* per cluster: 1 or 32 */

    uint64_t *l1;
    uint32_t l1_size;

    uint64_t *reftable;
    uint32_t reftable_entries;
    unsigned refcount_order;      /* refcount bits = 1 << order */
    unsigned refblock_bits;       /* log2(refcounts per block) */

    struct qcow2_cache *l2_cache;
    struct qcow2_cache *rb_cache;
    uint64_t meta_bytes;          /* L1, refcount table and both caches, as allocated at open */

    unsigned compression_type;
    bool has_data_file;
    bool data_file_raw;
    char *data_file_name;
    char backing_fmt[16];
    unsigned nb_bitmaps;
    uint64_t bitmap_dir_offset;   /* from the bitmaps extension (when nb_bitmaps) */
    uint64_t bitmap_dir_size;
    bool has_bitmaps_ext;         /* a bitmaps extension is present (whatever the autoclear bit) */
    bool has_crypto_ext;

    struct lsm_snapshot_info *snaps;
    int nb_snaps;

    int prealloc_state;           /* -1 unknown, 0 no, 1 metadata preallocation */

    /* compressed clusters: buffers and the last decompressed cluster */
    uint8_t *cbuf, *dbuf;
    uint64_t dbuf_key;            /* L2 descriptor of the cluster in dbuf, 0 = none */
};

static inline struct qcow2_state *qcow2_s(struct lsm_image *img)
{
    return img->priv;
}

/* qcow2.c: the one header parser, shared by the reader and the writer.
 * Reads and validates the header, its extensions, the backing name and
 * format, and the location of the refcount and L1 tables (overflow-safe,
 * inside img->file_size) from img->fd.  Uses img->fd, img->file_size;
 * sets s->h and the geometry fields of s, img->cluster_size,
 * img->virtual_size, img->backing_name, img->backing_fmt and, with an
 * external data file, s->data_file_name (the caller frees both strings).
 * Reads no table.  An image carrying QCOW2_INCOMPAT_LSM_INCOMPLETE is
 * refused unless flags has QCOW2_PARSE_INCOMPLETE_OK. */
#define QCOW2_PARSE_INCOMPLETE_OK 0x1u
int qcow2_parse_header(struct lsm_image *img, struct qcow2_state *s, unsigned flags);

/* qcow2-cluster.c */
int qcow2_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                       uint64_t *pnum, uint64_t *map);
int qcow2_pread_data(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset);

/* qcow2-refcount.c */
int qcow2_get_refcount(struct lsm_image *img, uint64_t cluster_index, uint64_t *refcount);
/* 1 if the image looks metadata-preallocated (QEMU's heuristic), 0 if not. */
int qcow2_detect_metadata_preallocation(struct lsm_image *img);

/* qcow2-compress.c: decompress src into exactly dst_len bytes. */
int qcow2_decompress(unsigned type, const uint8_t *src, size_t src_len,
                     uint8_t *dst, size_t dst_len);

#endif
