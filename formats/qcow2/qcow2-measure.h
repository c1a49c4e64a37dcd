/* The size a fully allocated qcow2 needs, and the header fields that size
 * depends on.  Pure (no I/O): the extender (monitor/extender-libvirt.c)
 * reads the header and caps a thin volume's growth with the result.
 *
 * lsm_qcow2_full_size() is never below `qemu-img measure`'s "fully
 * allocated size" for the same geometry (test-qcow2-measure checks it
 * against numbers from qemu-img 7.2). */
#ifndef LSM_QCOW2_MEASURE_H
#define LSM_QCOW2_MEASURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes a qcow2 with every cluster of `capacity` allocated needs: header
 * cluster, L1 table, L2 tables, refcount table and blocks (covering
 * themselves too), data.  cluster_size a power of two (512 B - 2 MiB),
 * refcount_bits 1..64 a power of two.  0 for a bad geometry. */
uint64_t lsm_qcow2_full_size(uint64_t capacity, uint64_t cluster_size, unsigned refcount_bits,
                             bool extended_l2);

/* What a header says about the image's growth. */
struct lsm_qcow2_geometry {
    uint64_t capacity;
    uint64_t cluster_size;
    unsigned refcount_bits;
    bool extended_l2;
    uint32_t nb_snapshots;   /* internal snapshots (their tables and COW) */
    bool bitmaps;            /* a persistent bitmaps extension (or its bit) */
    bool encrypted;          /* crypt_method != none */
    bool data_file;          /* an external data file */
};

/* Parse the first `len` bytes of an image (the header and its extensions:
 * pass at least the first 64 KiB or the whole file if shorter).  -EINVAL
 * for a buffer that is not a qcow2 header this code understands (the
 * extensions running past the buffer included). */
int lsm_qcow2_geometry_parse(const void *buf, size_t len, struct lsm_qcow2_geometry *g);

/* The cap for an image of geometry g: lsm_qcow2_full_size(), or 0 ("not
 * known: use the ratio") when the image carries what a full allocation
 * does not count: internal snapshots, persistent bitmaps, encryption, an
 * external data file. */
uint64_t lsm_qcow2_full_size_of(const struct lsm_qcow2_geometry *g);

#endif
