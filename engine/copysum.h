/* The block hash (blkhash.h) of what a copy reads, fed in the order the
 * copy's requests complete.
 *
 * A copy in guest order hands every guest range exactly once, as data
 * (a request's buffer, once its reads are complete) or as zeroes (a zero
 * run), in any order.  Whole blocks given at once are hashed (or taken as
 * zero) directly; a block given in pieces is assembled in a block-sized
 * buffer, allocated on its first piece (zeroed, so zero pieces only count)
 * and freed when its last piece arrives.  The copy has at most
 * `in flight / block size + 2` blocks in assembly at a time; more than
 * max_partial is refused (-ENOBUFS).
 *
 * Not thread-safe (the copy's pipeline thread owns it).  Pure: no I/O,
 * nothing printed; -errno with a message. */
#ifndef LSM_COPYSUM_H
#define LSM_COPYSUM_H

#include <stddef.h>
#include <stdint.h>

#include "blkhash.h"

struct lsm_copysum;

int lsm_copysum_new(enum lsm_blkhash_alg alg, uint32_t block_size, uint64_t size,
                    unsigned max_partial, struct lsm_copysum **out);
void lsm_copysum_free(struct lsm_copysum *s);
/* [off, off+len) holds buf. */
int lsm_copysum_data(struct lsm_copysum *s, uint64_t off, const void *buf, uint64_t len);
/* [off, off+len) reads as zeroes. */
int lsm_copysum_zero(struct lsm_copysum *s, uint64_t off, uint64_t len);
/* The digest once every byte was given (-EINVAL otherwise). */
int lsm_copysum_final(struct lsm_copysum *s, uint8_t digest[LSM_BLKHASH_DIGEST_LEN]);

#endif
