/* Disk images and backing chains: the extent source of the engine.
 *
 * An lsm_image is one layer (a raw file or block device, a qcow2 file, or
 * an NBD export read through the module lsm-formats-nbd, formats/nbd.c,
 * for map, info, compare and checksum; copies to and from NBD use the NBD
 * endpoint, endpoint/nbd.c) plus a link to its backing layer.  Each format is a table
 * of operations (struct lsm_image_ops) filled by one file; nothing above
 * formats/ names a format's internals.
 *
 * Block status follows QEMU's block layer so that `lsm-sync map` means what
 * `qemu-img map` means:
 *   - lsm_image_block_status() describes ONE layer (like bdrv_block_status),
 *   - lsm_chain_block_status() walks down the chain to the first layer that
 *     says DATA or ZERO (like qemu-img's get_block_status),
 *   - struct lsm_map_iter merges adjacent equal runs (like img_map).
 */
#ifndef LSM_IMAGE_H
#define LSM_IMAGE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum lsm_format {
    LSM_FMT_AUTO = 0,       /* probe */
    LSM_FMT_RAW,
    LSM_FMT_QCOW2,
};

const char *lsm_format_name(enum lsm_format f);
/* "raw"/"qcow2" -> format; returns -EINVAL for anything else. */
int lsm_format_parse(const char *name, enum lsm_format *out);

/* Block-status flags of one layer. */
#define LSM_BS_DATA        0x01u  /* reads come from this layer's data */
#define LSM_BS_ZERO        0x02u  /* reads as zeroes */
#define LSM_BS_OFFSET      0x04u  /* *map is a byte offset in layer->data_fd */
#define LSM_BS_ALLOCATED   0x08u  /* this layer decides the content (present) */
#define LSM_BS_COMPRESSED  0x10u  /* data is compressed: read with lsm_image_pread */
#define LSM_BS_EOF         0x20u  /* the run ends at the end of the layer */
#define LSM_BS_RECURSE     0x40u  /* (driver) ask the file for holes (metadata prealloc) */

struct lsm_image;

struct lsm_image_ops {
    const char *name;
    /* Open the layer on img->fd (read-only); fill virtual_size, backing_name,
     * backing_fmt, data_fd, cluster_size.  Bad input: negative errno with a message. */
    int (*open)(struct lsm_image *img);
    void (*close)(struct lsm_image *img);
    /* Status of [offset, offset+bytes) in this layer only.  bytes > 0 and
     * offset + bytes <= virtual_size.  Sets *pnum (0 < *pnum <= bytes), *map
     * (valid with LSM_BS_OFFSET) and returns LSM_BS_* flags or -errno.
     * Unallocated ranges return neither DATA nor ZERO; the generic layer
     * adds ALLOCATED / ZERO-at-end-of-chain. */
    int (*block_status)(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                        uint64_t *pnum, uint64_t *map);
    /* Read [offset, offset+len) of this layer's own content into buf.  Ranges
     * not allocated in this layer are left for the caller (the generic
     * lsm_image_pread handles backing files), so the driver is only called
     * on ranges that block_status reported as DATA. */
    int (*pread_data)(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset);
};

struct lsm_image {
    const struct lsm_image_ops *ops;
    enum lsm_format format;
    char *filename;          /* as given to open (or as resolved for backing files) */
    int fd;                  /* the image file, O_RDONLY */
    int data_fd;             /* where LSM_BS_OFFSET offsets point (fd, or external data file) */
    char *data_filename;     /* external data file, if any */
    bool is_blockdev;
    uint64_t file_size;      /* size of the image file (or device) */
    uint64_t virtual_size;   /* guest-visible size */
    uint32_t cluster_size;   /* 0 for raw */

    char *backing_name;      /* as written in the image (NULL if none) */
    char *backing_path;      /* resolved the way QEMU resolves it */
    enum lsm_format backing_fmt; /* from the header extension, or AUTO */
    struct lsm_image *backing;   /* opened backing layer (chain open) */
    unsigned depth;          /* 0 for the top of the chain */

    unsigned open_flags;     /* LSM_OPEN_* flags the image was opened with */
    void *priv;              /* format private state */
};

/* Flags for lsm_image_open */
#define LSM_OPEN_NO_BACKING  0x1u   /* open one layer, do not follow backing files */
#define LSM_OPEN_FORCE_SHARE 0x2u   /* read what another process writes (qemu-img -U) */
/* Also open qcow2 layers an interrupted lsm-sync writer left marked
 * incomplete (docs/format-notes.md): for describing a destination chain
 * that a retry will finish, never for reading its data as the guest's. */
#define LSM_OPEN_INCOMPLETE_OK 0x4u

/* Maximum backing chain length accepted. */
#define LSM_MAX_CHAIN_DEPTH 256

/* nbd://, nbds://, nbd+unix://, nbds+unix://, nbd+vsock://, nbds+vsock://:
 * lsm_image_open reads such a path as an NBD export (one raw layer, no
 * backing, fd and data_fd -1: no locks, no file identity, no actual size;
 * -f other than raw is refused). */
bool lsm_image_is_nbd_uri(const char *s);

/* Open one image (and, unless LSM_OPEN_NO_BACKING, its whole backing chain),
 * read-only.  fmt AUTO probes.  Every file (layers and external data files)
 * is opened with lsm_open_disk (regular files and block devices only, never
 * waiting on a FIFO) and locked for reading the way QEMU locks
 * (common/lock.h) on img->fd / img->data_fd, which stay open until
 * lsm_image_close: an image another process holds for writing (a running
 * VM's active layer) is refused with -EAGAIN unless LSM_OPEN_FORCE_SHARE;
 * backing files that a VM only reads are fine.  Other descriptors this
 * process opens on these files must not take locks of their own.  On error
 * returns -errno with a message that names the file. */
int lsm_image_open(const char *path, enum lsm_format fmt, unsigned flags,
                   struct lsm_image **out);
/* Close an image and every backing layer below it. */
void lsm_image_close(struct lsm_image *img);
/* Probe the format of an open file. */
int lsm_probe_format(int fd, enum lsm_format *out);
/* Resolve a backing name the way QEMU does: relative names are relative to
 * the directory of the image that names them.  Returns a malloc'd path, or
 * NULL with -errno in *err (protocols and json: names are refused). */
char *lsm_resolve_backing(const char *image_path, const char *backing_name, int *err);

/* Add the identity (common/fileid.h) of every file of the chain from img
 * down to set: each layer's image file and its external data file, named
 * by their paths.  -errno with a message. */
struct lsm_fileid_set;
int lsm_image_add_ids(struct lsm_image *img, struct lsm_fileid_set *set);

/* Number of layers from img down (1 for no backing). */
unsigned lsm_chain_length(const struct lsm_image *img);
/* Layer at depth d below img (0 = img). */
struct lsm_image *lsm_chain_layer(struct lsm_image *img, unsigned d);

/* One-layer status, with the generic adjustments QEMU's block layer makes:
 * ALLOCATED where DATA or ZERO; ZERO for unallocated ranges of a layer
 * without backing or beyond the end of a shorter backing; holes of the
 * host file for metadata-preallocated qcow2.  Returns flags or -errno. */
int lsm_image_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                           uint64_t *pnum, uint64_t *map);

/* An extent of a chain: what `qemu-img map --output=json` prints per entry. */
#define LSM_EXT_PRESENT    0x1u
#define LSM_EXT_ZERO       0x2u
#define LSM_EXT_DATA       0x4u
#define LSM_EXT_OFFSET     0x8u   /* offset is valid (host offset in layer->data_fd) */
#define LSM_EXT_COMPRESSED 0x10u

struct lsm_extent {
    uint64_t start;
    uint64_t length;
    unsigned depth;            /* layer that answered (0 = top) */
    unsigned flags;            /* LSM_EXT_* */
    uint64_t offset;           /* host offset, valid with LSM_EXT_OFFSET */
    struct lsm_image *layer;   /* layer at depth */
};

/* Status of the chain from img down at offset: walks layers until DATA or
 * ZERO, like qemu-img map.  *e covers at least one byte. */
int lsm_chain_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                           struct lsm_extent *e);

/* Iterate merged extents over [start, end) of a chain (or of one layer only
 * with LSM_MAP_ONE_LAYER: unallocated runs then report present=false at
 * depth 0 and are not looked up below). */
#define LSM_MAP_ONE_LAYER 0x1u
struct lsm_map_iter {
    struct lsm_image *img;
    uint64_t pos, end;
    unsigned flags;
    bool have_next;
    struct lsm_extent next;   /* look-ahead */
};
void lsm_map_iter_init(struct lsm_map_iter *it, struct lsm_image *img,
                       uint64_t start, uint64_t end, unsigned flags);
/* 1 with *e filled, 0 at the end, or -errno. */
int lsm_map_iter_next(struct lsm_map_iter *it, struct lsm_extent *e);

/* Guest-visible read of the chain from img down (backing files, zero
 * clusters, compressed clusters, ranges past a shorter backing). */
int lsm_image_pread(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset);
/* Read this layer's own content of a DATA range (compressed or not). */
int lsm_image_pread_data(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset);

/* Format-specific information for `info`. */
struct lsm_qcow2_info {
    unsigned version;             /* 2 or 3 */
    unsigned refcount_bits;
    bool lazy_refcounts;
    bool corrupt;
    bool dirty;
    bool extended_l2;
    const char *compression;      /* "zlib" or "zstd" */
    const char *data_file;        /* NULL if none */
    bool data_file_raw;
    unsigned nb_snapshots;
    unsigned nb_bitmaps;
    uint64_t header_length;
};
/* The memory the readers of img's chain hold for metadata (each qcow2
 * layer's L1 and refcount tables and its L2 and refcount-block caches, all
 * allocated when it is opened, so this is also their most): what a copy
 * reserves from the process budget for its source. */
uint64_t lsm_image_meta_bytes(const struct lsm_image *img);

/* Fills *out for a qcow2 layer; -EINVAL for other formats. */
int lsm_qcow2_get_info(struct lsm_image *img, struct lsm_qcow2_info *out);

/* Internal snapshot description (for info). */
struct lsm_snapshot_info {
    char *id, *name;
    uint64_t vm_state_size, disk_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;              /* UINT64_MAX if absent */
    uint64_t l1_offset;           /* the snapshot's L1 table (validated at open) */
    uint32_t l1_size;
};
/* Returns the number of snapshots and a malloc'd array in *out (free with
 * lsm_snapshots_free). */
int lsm_qcow2_get_snapshots(struct lsm_image *img, struct lsm_snapshot_info **out);
void lsm_snapshots_free(struct lsm_snapshot_info *s, int n);
/* Persistent dirty bitmaps of a qcow2 layer, as the bitmap directory
 * describes them (what qemu-img info lists).  Returns the number and a
 * malloc'd array in *out (free with lsm_bitmaps_free); 0 for other formats,
 * images without the bitmaps extension, or whose autoclear bit says a
 * program without bitmap support changed them (QEMU ignores those too).
 * A corrupt directory is -EINVAL with a message. */
struct lsm_bitmap_info {
    char *name;
    uint64_t granularity;         /* bytes */
    bool in_use, autoload;        /* the in-use and auto flags */
    uint64_t table_offset;
    uint32_t table_size;          /* entries */
};
int lsm_qcow2_get_bitmaps(struct lsm_image *img, struct lsm_bitmap_info **out);
void lsm_bitmaps_free(struct lsm_bitmap_info *b, int n);
/* Bytes of a bitmap's data: one bit per granule of the virtual size. */
uint64_t lsm_bitmap_bytes(uint64_t virtual_size, uint64_t granularity);
/* Read bitmap b's data (bit i: granule i, bit 0 of a byte first) into buf,
 * len = lsm_bitmap_bytes(img->virtual_size, b->granularity).  Table entries
 * are checked (reserved bits, alignment, inside the file); unallocated
 * clusters read as zeroes or, with bit 0, as ones. */
int lsm_qcow2_read_bitmap(struct lsm_image *img, const struct lsm_bitmap_info *b, uint8_t *buf,
                          size_t len);

/* Read an internal snapshot's view instead of the active one (qemu-img
 * convert -l): the snapshot's L1 table replaces the active one; the
 * virtual size and the backing chain stay the image's (as in qemu-img, a
 * snapshot taken before a resize reads as unallocated past its table).
 * Call right after lsm_image_open, before any read or map.  The snapshot
 * is found by id, by name, or (ID_OR_NAME) by id and then by name, as
 * qemu-img looks it up.  -ENOENT with a message if there is none. */
enum lsm_snapshot_key { LSM_SNAPSHOT_ID_OR_NAME, LSM_SNAPSHOT_ID, LSM_SNAPSHOT_NAME };
int lsm_qcow2_load_snapshot(struct lsm_image *img, const char *key, enum lsm_snapshot_key how);

/* Host clusters in use (refcount > 0) of a qcow2 layer, in host order:
 * calls fn for each maximal run.  Used by physical copies. */
typedef int (*lsm_host_run_fn)(void *opaque, uint64_t host_offset, uint64_t length);
int lsm_qcow2_for_each_used_run(struct lsm_image *img, lsm_host_run_fn fn, void *opaque);
/* The host ranges of a qcow2 layer's active metadata, as the reader found
 * them: the header cluster, the L1 table, every L2 table the L1 table
 * points at, the refcount table and every refcount block.  (Not listed:
 * snapshot tables and their L1 tables, bitmap directories and tables.)
 * Calls fn for each; stops at its first negative return. */
int lsm_qcow2_for_each_metadata(struct lsm_image *img, lsm_host_run_fn fn, void *opaque);

/* Actual (allocated) size of the image file in bytes (st_blocks * 512). */
int64_t lsm_image_actual_size(struct lsm_image *img);

#endif
