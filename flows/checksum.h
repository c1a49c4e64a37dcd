/* The block hash (blkhash.h) of an image's or a chain's guest view.
 *
 * The extents come from the chain's map (lsm_map_iter): a block that the
 * map says reads as zeroes (ZERO, or unallocated down to the end of the
 * chain) is never read and costs one precomputed digest.  A block holding
 * data is read into one block-sized buffer, one request per map extent in
 * it: a block inside one data extent is a single block-sized request at a
 * block-aligned offset; the zero parts of a mixed block are filled in from
 * the map, not read.  Reads are made by the calling thread through
 * lsm_image_pread(), and the full blocks are hashed by worker
 * threads meanwhile, so reading and hashing overlap.  The image is only
 * touched from the calling thread.
 *
 * Memory: the block buffers are the only allocation that grows with the
 * options; there are at most max(2, mem_budget / block_size) of them (no
 * more than the image has blocks), so they take
 * at most max(mem_budget, 2 * block_size).  Nothing grows with the image
 * size (the block hash's pending list holds at most 2 entries per buffer
 * plus one).  The reader's own caches (formats/) are outside this budget.
 *
 * Never prints; -errno with a message (common/error.h).
 */
#ifndef LSM_CHECKSUM_H
#define LSM_CHECKSUM_H

#include <signal.h>
#include <stdint.h>

#include "blkhash.h"

struct lsm_image;

#define LSM_CHECKSUM_DEFAULT_BUDGET (64u << 20)
#define LSM_CHECKSUM_MAX_THREADS    8

struct lsm_checksum_opts {
    enum lsm_blkhash_alg alg;      /* default LSM_BLKHASH_SHA256 (0) */
    uint32_t block_size;           /* 0: LSM_BLKHASH_DEFAULT_BLOCK */
    uint64_t mem_budget;           /* 0: LSM_CHECKSUM_DEFAULT_BUDGET */
    unsigned threads;              /* hashing threads; 0: one per online CPU, at most 4 */
    /* For a job (the worker service): *cancel (may be NULL) is looked at
     * after every piece read or block of zeroes, and a set flag ends the
     * walk with -ECANCELED; progress (may be NULL) is called on the calling
     * thread after every piece with the guest bytes walked, the size and
     * the bytes read so far (a callback that sleeps throttles the reads). */
    volatile sig_atomic_t *cancel;
    void (*progress)(void *opaque, uint64_t done, uint64_t total, uint64_t bytes_read);
    void *opaque;
};

struct lsm_checksum_result {
    uint8_t digest[LSM_BLKHASH_DIGEST_LEN];
    char hex[LSM_BLKHASH_HEX_LEN];
    enum lsm_blkhash_alg alg;
    uint32_t block_size;
    uint64_t size;                 /* guest size hashed (img->virtual_size) */
    uint64_t bytes_read;           /* data read from the image */
    uint64_t zero_blocks;          /* blocks answered from the map */
};

/* Digest of the guest view of img (and its backing chain, if it was opened
 * with one).  img is read from the calling thread only. */
int lsm_checksum_image(struct lsm_image *img, const struct lsm_checksum_opts *opts,
                       struct lsm_checksum_result *res);

#endif
