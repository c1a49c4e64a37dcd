/* qcow2 on-disk layout (docs/interop/qcow2.txt).  All fields big-endian;
 * structs are packed and size-checked; convert with be*_get/put. */
#ifndef LSM_QCOW2_FORMAT_H
#define LSM_QCOW2_FORMAT_H

#include <assert.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu          /* "QFI\xfb" */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_REFCOUNT_ORDER 6       /* 64 bits */
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_MIN_HEADER_LENGTH 104

/* Incompatible features */
#define QCOW2_INCOMPAT_DIRTY        (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1fULL
/* lsm-sync's own: set while an lsm-sync writer changes the image, cleared
 * by the last header write of a complete copy.  QEMU refuses to open an
 * image with an incompatible bit it does not know ("Unsupported qcow2
 * feature(s)"); our reader refuses it too; qcow2_writer_open accepts it so
 * that a retry can finish the copy (docs/format-notes.md). */
#define QCOW2_INCOMPAT_LSM_INCOMPLETE (1ULL << 63)
/* Compatible features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
/* Autoclear features */
#define QCOW2_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)

#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES  1
#define QCOW2_CRYPT_LUKS 2

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types */
#define QCOW2_EXT_END             0x00000000u
#define QCOW2_EXT_BACKING_FORMAT  0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE   0x6803f857u
#define QCOW2_EXT_CRYPTO          0x0537be77u
#define QCOW2_EXT_BITMAPS         0x23852875u
#define QCOW2_EXT_DATA_FILE       0x44415441u

struct qcow2_header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* version 3 */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    /* optional, header_length >= 112 */
    uint8_t compression_type;
    uint8_t padding[7];
} __attribute__((packed));
static_assert(sizeof(struct qcow2_header) == 112, "qcow2 header layout");
static_assert(__builtin_offsetof(struct qcow2_header, incompatible_features) == 72, "v2 part");
static_assert(__builtin_offsetof(struct qcow2_header, compression_type) == 104, "v3 part");

struct qcow2_ext_header {
    uint32_t magic;
    uint32_t len;
} __attribute__((packed));
static_assert(sizeof(struct qcow2_ext_header) == 8, "extension header");

/* Snapshot table entry (fixed part; followed by extra data, id, name, padding to 8) */
struct qcow2_snapshot_header {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint16_t id_str_size;
    uint16_t name_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size;
    uint32_t extra_data_size;
} __attribute__((packed));
static_assert(sizeof(struct qcow2_snapshot_header) == 40, "snapshot header");

/* L1 entry */
#define QCOW2_L1E_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffULL
/* L2 entry (standard descriptor) */
#define QCOW2_OFLAG_COPIED      (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED  (1ULL << 62)
#define QCOW2_OFLAG_ZERO        (1ULL << 0)
#define QCOW2_L2E_OFFSET_MASK   0x00fffffffffffe00ULL
#define QCOW2_L2E_STD_RESERVED  0x3f000000000001feULL
/* Refcount table entry */
#define QCOW2_REFT_OFFSET_MASK  0xfffffffffffffe00ULL

/* Extended L2: the second 64 bits of an entry */
#define QCOW2_EXTL2_SUBCLUSTERS 32
#define QCOW2_SUB_ALLOC(i)      (1ULL << (i))
#define QCOW2_SUB_ZERO(i)       (1ULL << ((i) + 32))
#define QCOW2_SUB_ALL_ALLOC     0x00000000ffffffffULL
#define QCOW2_SUB_ALL_ZERO      0xffffffff00000000ULL

/* Compressed cluster descriptor: offset bits and sector-count bits depend
 * on cluster_bits: x = 62 - (cluster_bits - 8). */
static inline unsigned qcow2_csize_shift(unsigned cluster_bits) { return 62 - (cluster_bits - 8); }
static inline uint64_t qcow2_coffset_mask(unsigned cluster_bits)
{
    return (1ULL << qcow2_csize_shift(cluster_bits)) - 1;
}
static inline uint64_t qcow2_csize_mask(unsigned cluster_bits)
{
    return (1ULL << (cluster_bits - 8)) - 1;
}

#endif
