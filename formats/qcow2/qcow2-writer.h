/* qcow2 writer: creates v3 (and v2) images and allocates data clusters for the copy
 * engine.  The engine writes the data itself (through io/) at the host
 * offsets the writer hands out; the writer owns all metadata (header, L1,
 * L2, refcount table and blocks).
 *
 * Honesty on disk: before its first change to an image the writer sets
 * lsm-sync's own incompatible feature bit (QCOW2_INCOMPAT_LSM_INCOMPLETE,
 * bit 63, named "lsm-sync incomplete copy" in the feature table of images
 * we create) in the header and syncs it.  QEMU refuses to open such an
 * image ("Unsupported qcow2 feature(s)"), so does our reader; only
 * qcow2_writer_open accepts it, so a retry can finish the copy.  Only
 * qcow2_writer_finish() (after every data write has completed) writes the
 * metadata, syncs, writes the header with the bit cleared, and syncs
 * again.  Every image it finishes passes `qemu-img check` with no errors
 * or leaks (docs/format-notes.md).
 *
 * Layout: header cluster, L1 table, then L2 tables (allocated on demand)
 * and data runs in call order, and at finish the refcount table and blocks
 * at the end (or in the area of the last checkpoint, when it still covers
 * the image: see qcow2_writer_checkpoint).  Refcounts are rebuilt at finish: every cluster below the end
 * has refcount 1 except, in an opened image, clusters that were free, leaked
 * clusters and the old refcount structures (refcount 0, not leaks); in an
 * opened incomplete image, every cluster nothing references; and host
 * clusters holding compressed clusters, which count them (see
 * qcow2_writer_write_compressed).  Memory stays
 * bounded: the L1 table (<= 32 MiB), one bit per L1 entry, an LRU cache of at
 * most 64 L2 tables / 8 MiB (at least 4 tables), and the free ranges of an
 * opened image.  Metadata I/O uses 4096-aligned buffers and offsets/lengths
 * aligned to `align`, so the fd may be O_DIRECT.
 *
 * Errors: negative errno with a message in lsm_last_error().  After a
 * metadata write fails, the writer refuses every further call with that
 * error (the image stays marked incomplete); close it.  The writer never closes
 * or truncates the fd, and preallocates only in qcow2_writer_preallocate.
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
    unsigned version;           /* 3 (0: 3, compat=1.1) or 2 (compat=0.10): see below */
    bool lazy_refcounts;        /* the compatible feature bit (version 3 only) */
    bool compress;              /* data goes in through qcow2_writer_write_compressed */
};

/* Version 2 (compat=0.10) images: refcount_bits 16, no extended L2, zlib,
 * no lazy refcounts (-EINVAL otherwise, as qemu-img refuses them).  While
 * the writer works the image is a version 3 header with the incomplete bit
 * (version 2 has no feature bits to carry it); finish writes the version 2
 * header as its last write.  Version 2 has no zero clusters:
 * qcow2_writer_zero allocates the range and writes zeroes into it. */

struct qcow2_writer;

/* Start a new image on fd (a truncated regular file or a block device;
 * O_DIRECT or not: all metadata I/O is aligned to `align`, which must be <=
 * the cluster size).  Writes the first cluster at once, marked incomplete:
 * the file holds no complete qcow2 until finish. */
int qcow2_writer_create(int fd, uint32_t align, const struct qcow2_create_opts *o,
                        struct qcow2_writer **out);
/* Preallocation of a created image (qemu-img's -o preallocation=): every
 * cluster of the virtual size gets its L2 entry and host cluster now, in
 * guest order after its L2 tables, so the copy's allocations reuse them in
 * place.  METADATA leaves the host clusters as holes in the file (its size
 * set with ftruncate), FALLOC fallocates them, FULL writes zeroes into them.
 * Call right after qcow2_writer_create, before any alloc or zero. */
enum qcow2_prealloc { QCOW2_PREALLOC_METADATA = 1, QCOW2_PREALLOC_FALLOC, QCOW2_PREALLOC_FULL };
int qcow2_writer_preallocate(struct qcow2_writer *w, enum qcow2_prealloc mode);

/* Open an existing qcow2 (made by qemu-img, by us, or left incomplete by an
 * interrupted writer) to rewrite its content.  Writes nothing: every check
 * that can refuse runs here, and the incomplete mark goes to disk with the
 * first alloc, zero or finish.  The header is validated by the reader's
 * parser (qcow2_parse_header).  Refuses images with features it cannot
 * maintain (-ENOTSUP): internal snapshots, refcounts above 1,
 * compressed clusters, external data file, encryption, persistent bitmaps,
 * dirty or corrupt bit; and inconsistent ones (-EINVAL): references to free
 * clusters (except in an incomplete image, whose refcounts are rebuilt from
 * its references), clusters used twice, missing COPIED flags, the zero flag
 * in a version 2 image.  A version 2 (compat=0.10) image is worked on as a
 * created one is (see above): a version 3 header with the incomplete bit,
 * and at finish its own version 2 header again (extensions and backing name
 * as they were, the new refcount table).  Leaked
 * clusters (refcount 1, referenced by nothing) end up free.  Unknown
 * autoclear bits are cleared.  New clusters go after the last used or
 * referenced cluster (and after the end of a regular file). */
int qcow2_writer_open(int fd, uint32_t align, struct qcow2_writer **out);
/* Right after qcow2_writer_open: data goes in through
 * qcow2_writer_write_compressed from now on (copy -c -n), compressed with
 * the header's compression type.  Refuses (-ENOTSUP, nothing written) an
 * image with any allocated cluster: compressed clusters never overwrite
 * (qemu-img convert -c -n fails on them too). */
int qcow2_writer_compress_existing(struct qcow2_writer *w);

/* Open an image this writer left marked incomplete (an interrupted copy
 * that checkpointed: see qcow2_writer_checkpoint) to continue it.  Like
 * qcow2_writer_open (refcounts are rebuilt from the references), except
 * that it refuses an image without the incomplete mark (-EINVAL), and that
 * clusters past the last one the refcounts or the references use are
 * reused: there lies only what the interrupted writer wrote after its last
 * checkpoint and never referenced (a regular file is not truncated; finish's
 * size is where the image ends).  Mappings that reached disk after the last
 * checkpoint are kept: the caller rewrites every range it has not recorded
 * as done, and alloc rewrites such clusters in place. */
int qcow2_writer_resume(int fd, uint32_t align, struct qcow2_writer **out);

/* True once the image carries the incomplete mark on disk (a created
 * image from the start; an opened one from its first change, or when it
 * was opened incomplete).  A failure before that left the file as it was. */
bool qcow2_writer_changed(const struct qcow2_writer *w);
uint32_t qcow2_writer_cluster_size(const struct qcow2_writer *w);
/* 2 for a version 2 (compat=0.10) image, created or opened, else 3.
 * Version 2 images do not checkpoint (-ENOTSUP): a resumed writer would
 * finish a version 3 image. */
unsigned qcow2_writer_version(const struct qcow2_writer *w);
uint64_t qcow2_writer_virtual_size(const struct qcow2_writer *w);

/* End of the image so far in bytes (header, L1, L2 tables, data runs): the
 * next allocation starts here (after any new L2 tables). */
uint64_t qcow2_writer_end(const struct qcow2_writer *w);
/* Size the image will have if finish is called now: the end plus the
 * refcount table and blocks finish appends (e.g. to extend a logical volume
 * beforehand).  After finish: the final size. */
uint64_t qcow2_writer_final_size(const struct qcow2_writer *w);

/* Map the cluster-aligned guest range [guest, guest+len) for writing (len a
 * multiple of the cluster size; the last cluster may extend past the
 * virtual size; -EINVAL otherwise) and return its first host-contiguous
 * run: *host is the host offset of the cluster at guest, *mapped the length
 * of the run (a multiple of the cluster size, 0 < *mapped <= len); call
 * again for guest + *mapped.  Clusters that have a host cluster (data, or
 * zero with a preallocated offset) are reused in place and become data;
 * a run of clusters without one gets new clusters at the end of the image
 * (new L2 tables may sit before them).  The caller writes every byte of
 * the run.  On a block device the image must fit in the device (-ENOSPC;
 * nothing changes).  Memory is bounded: L2 tables are written back as
 * needed. */
int qcow2_writer_alloc(struct qcow2_writer *w, uint64_t guest, uint64_t len, uint64_t *host,
                       uint64_t *mapped);
/* Compressed output (an image created with compress; -EINVAL otherwise):
 * write the cluster-aligned guest range [guest, guest+len) from buf (len
 * bytes, a multiple of the cluster size; the last cluster may extend past
 * the virtual size, the caller zero-pads it, as qemu-img does).  Each
 * cluster is compressed as QEMU compresses it (the header's compression
 * type: raw deflate at zlib's default level, window 2^12, or a zstd frame
 * at zstd's default level); if the result is smaller than a cluster it is
 * written as a compressed cluster right after the previous one (host
 * clusters shared by several, each reference counted; a new host cluster
 * when the refcount width is full or the previous one is not the last
 * cluster of the image), else the cluster is written as it is, a data
 * cluster.  Every cluster of the range must have no host cluster yet
 * (-EINVAL): each guest cluster is written once, and qcow2_writer_alloc
 * and qcow2_writer_zero refuse compressed ones (the range is reserved when
 * this call returns).  Asynchronous: the data is copied into one of five
 * jobs of 1 MiB (at least a cluster; the call waits while all five are
 * taken) and the call returns; four worker threads (QEMU's qcow2 driver
 * compresses at most four clusters at once), started by the first call,
 * compress the jobs and write them under the writer's lock.  A failure
 * there (an I/O error, no room) is returned, with its message, by the next
 * write_compressed, alloc, zero or finish; finish waits for every job.
 * Memory: the five jobs' input and output (2 x 5 MiB with clusters up to
 * 1 MiB, 2 x 5 clusters above), 1 MiB (at least a cluster) of staged
 * compressed bytes (the aligned block in which the compressed data ends
 * stays in memory for the next one), and for the refcounts of compressed
 * host clusters 2 bytes per host cluster holding compressed data (and 24
 * bytes per run of them).
 * Images with compressed clusters do not checkpoint (-ENOTSUP: no resume)
 * and do not preallocate (-EINVAL, as qemu-img refuses it). */
bool qcow2_writer_compressing(const struct qcow2_writer *w);
int qcow2_writer_write_compressed(struct qcow2_writer *w, uint64_t guest, const void *buf,
                                  uint64_t len);
/* Mark the cluster-aligned guest range as zero clusters (reads as zero
 * whatever the backing file holds): the v3 zero flag, or all 32 zero bits
 * with extended L2.  A data cluster keeps its host cluster as a
 * preallocation (refcount 1; a later alloc reuses it); others get none.
 * Zero ranges need L2 tables like data: without a backing file,
 * unallocated clusters already read as zeroes (qemu-img map then says
 * present=false).  In a version 2 image: data clusters holding zeroes
 * (allocated like qcow2_writer_alloc, the zeroes written by the writer),
 * except clusters without a host cluster in an image without a backing
 * file, which read as zeroes already and are left so. */
int qcow2_writer_zero(struct qcow2_writer *w, uint64_t guest, uint64_t len);
/* Checkpoint: after the caller's data writes have completed and been
 * flushed, write the cached L2 tables, the L1 table and refcounts that count
 * every cluster below the end, fdatasync, and (when the refcounts moved)
 * the header naming them, fdatasync.  The file is then a consistent qcow2
 * (what `qemu-img check` would pass) but for the incomplete mark, which
 * stays until finish; qcow2_writer_resume continues it after a kill.  The
 * refcounts live in an area sized for twice the image at the time, rewritten
 * in place while it covers the image, else replaced by a new one at the end
 * (the old one becomes free space); finish reuses it.  Between checkpoints
 * the header and the L1 table on disk do not change. */
int qcow2_writer_checkpoint(struct qcow2_writer *w);
/* Before a checkpoint: the hash (qcow2-ident.h) the image's header and L1
 * table will have once qcow2_writer_checkpoint has written them, for a
 * journal that must accept either state after a kill in between.  Places
 * the refcount area the checkpoint will write (in memory); no data write
 * or alloc may come between the two calls. */
int qcow2_writer_checkpoint_hash(struct qcow2_writer *w, uint64_t *hash);
/* Add a persistent dirty bitmap (a created or opened version 3 image):
 * data is its content (bit i: granule i), len bytes for the virtual size at
 * 2^granularity_bits bytes per bit.  Its data clusters (none for clusters
 * of all zeroes or all ones) and table are written at the end of the image
 * now; finish writes the bitmap directory and the header's bitmaps
 * extension with the autoclear bit.  Version 2 images: -ENOTSUP. */
int qcow2_writer_add_bitmap(struct qcow2_writer *w, const char *name, unsigned granularity_bits,
                            bool autoload, const uint8_t *data, uint64_t len);
/* Write every piece of metadata, fdatasync, then the header with the
 * incomplete bit cleared (its last write), fdatasync.  After this returns 0
 * the image is complete. */
int qcow2_writer_finish(struct qcow2_writer *w);
/* Free the writer (not the fd); without finish an image the writer changed
 * stays marked incomplete (a writer that changed nothing left it as it
 * was).  NULL is accepted. */
void qcow2_writer_close(struct qcow2_writer *w);

/* Rewrite the backing name and format of a complete qcow2 in place (for
 * physical copies whose backing name changes); the header is validated by
 * the reader's parser first.  backing_name NULL removes
 * the backing file; backing_fmt AUTO writes no backing-format extension.
 * Other header extensions (feature table, bitmaps, data file, unknown) are
 * kept.  Fails with -ENOSPC if the name and header extensions do not fit in
 * the first cluster.  Images we create with clusters of 2 KiB or more always
 * have room for a 1023-byte name (they only carry the optional feature
 * table when it leaves that room). */
int qcow2_set_backing(int fd, uint32_t align, const char *backing_name, enum lsm_format backing_fmt);

/* The most memory the writer holds for metadata (its L1 table, one bit per
 * L1 entry, the L2 cache and the header buffer; the free ranges of an
 * opened image come on top; with compression, also its jobs' and staging
 * buffers): what a copy reserves from the process budget for its
 * destination. */
uint64_t qcow2_writer_meta_bytes(const struct qcow2_writer *w);

#endif
