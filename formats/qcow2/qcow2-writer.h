/* qcow2 writer: creates v3 images and allocates data clusters for the copy
 * engine.  The engine writes the data itself (through io/) at the host
 * offsets the writer hands out; the writer owns all metadata (header, L1,
 * L2, refcount table and blocks).
 *
 * Honesty on disk: while a writer is open the image's magic is cleared, so
 * an interrupted copy leaves a file no tool opens as qcow2.  Only
 * qcow2_writer_finish() (after every data write has completed) writes the
 * metadata, syncs, writes the header with its magic, and syncs again.
 * Every image it finishes passes `qemu-img check` with no errors or leaks.
 */
#ifndef LSM_QCOW2_WRITER_H
#define LSM_QCOW2_WRITER_H

#include <stdbool.h>
#include <stdint.h>
#include "image.h"

struct qcow2_create_opts {
    uint64_t size;              /* virtual size, multiple of 512 */
    unsigned cluster_bits;      /* 9..21 (0: 16) */
    unsigned refcount_bits;     /* 1..64, power of two (0: 16) */
    bool extended_l2;           /* cluster_bits >= 14 */
    const char *backing_name;   /* stored as given (NULL: none) */
    enum lsm_format backing_fmt;/* stored in the backing-format extension (AUTO: none) */
    unsigned compression_type;  /* QCOW2_COMPRESSION_* (header field only) */
};

struct qcow2_writer;

/* Start a new image on fd (a truncated regular file or a block device;
 * O_DIRECT or not: all metadata I/O is aligned to `align`, which must be <=
 * the cluster size).  The file holds no valid qcow2 until finish. */
int qcow2_writer_create(int fd, uint32_t align, const struct qcow2_create_opts *o,
                        struct qcow2_writer **out);
/* Open an existing qcow2 (made by qemu-img create or by us, with no data
 * clusters allocated yet or some) to add clusters; clears its magic until
 * finish.  Refuses images with features it cannot maintain. */
int qcow2_writer_open(int fd, uint32_t align, struct qcow2_writer **out);

uint32_t qcow2_writer_cluster_size(const struct qcow2_writer *w);
uint64_t qcow2_writer_virtual_size(const struct qcow2_writer *w);

/* Allocate host clusters for the cluster-aligned guest range [guest,
 * guest+len) (len a multiple of the cluster size; the last cluster may
 * extend past the virtual size).  The host range is contiguous: *host is
 * the offset of the first cluster.  The range must not be allocated yet
 * (-EEXIST).  Memory is bounded: L2 tables are written back as needed. */
int qcow2_writer_alloc(struct qcow2_writer *w, uint64_t guest, uint64_t len, uint64_t *host);
/* Mark the cluster-aligned guest range as zero clusters (reads as zero
 * whatever the backing file holds). */
int qcow2_writer_zero(struct qcow2_writer *w, uint64_t guest, uint64_t len);
/* Write every piece of metadata, fdatasync, then the header with the
 * magic, fdatasync.  After this returns 0 the image is complete. */
int qcow2_writer_finish(struct qcow2_writer *w);
/* Free the writer; without finish the image stays invalid (magic cleared). */
void qcow2_writer_close(struct qcow2_writer *w);

/* Rewrite the backing name and format of a complete qcow2 in place (for
 * physical copies whose backing name changes).  Fails with -ENOSPC if the
 * name and header extensions do not fit in the first cluster. */
int qcow2_set_backing(int fd, uint32_t align, const char *backing_name, enum lsm_format backing_fmt);

#endif
