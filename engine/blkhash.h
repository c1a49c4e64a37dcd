/* Block-based hash of a disk's guest-visible content (the construction of
 * ovirt-imageio's checksum API and of blkhash before its segmented variant):
 *
 *     digest = H( H(block 0) || H(block 1) || ... || H(block N-1) )
 *
 * over fixed-size blocks of block_size bytes; the last block is shorter when
 * the size is not a multiple of block_size and is hashed as it is (no
 * padding); the size itself is not hashed.  An empty input gives H("").
 * H is SHA-256 or BLAKE2b with a 32-byte output (not a truncated
 * BLAKE2b-512); the outer hash is the same H.  SHA-256 comes from OpenSSL's
 * libcrypto when the build has it, from libsodium otherwise; BLAKE2b from
 * libsodium.  docs/checksum.md says more.
 *
 * Zero blocks cost nothing: the digest of an all-zero block is computed once
 * per object, so a run of zero blocks only feeds 32 bytes per block to the
 * outer hash.
 *
 * Two ways to feed an object, never mixed on one object:
 *   - by block index, in any order: lsm_blkhash_block() hashes one whole
 *     block, lsm_blkhash_set_digest() takes a block digest computed
 *     elsewhere (another thread), lsm_blkhash_zero_blocks() says a run of
 *     blocks is all zeroes.  Each block must be given exactly once.  Blocks
 *     ahead of the first missing one wait in a pending list (one entry per
 *     digest, and one per zero run: adjacent zero runs join), at most
 *     LSM_BLKHASH_MAX_PENDING entries; a caller with at most K block digests
 *     outstanding needs at most 2K + 1, however many zero runs it sends.
 *   - as a byte stream: lsm_blkhash_update() and lsm_blkhash_zero(), in
 *     order, like any hash function.  No block is buffered: the current
 *     block's inner hash state is kept instead.
 * lsm_blkhash_final() needs every block (or every byte) of the size given
 * at creation.
 *
 * Not thread-safe: callers that hash blocks in several threads compute the
 * block digests there (lsm_blkhash_digest_of()) and hand them in under their
 * own lock.  Pure: no I/O, nothing printed; errors are -errno with a message
 * (common/error.h).
 */
#ifndef LSM_BLKHASH_H
#define LSM_BLKHASH_H

#include <stddef.h>
#include <stdint.h>

enum lsm_blkhash_alg {
    LSM_BLKHASH_SHA256 = 0,
    LSM_BLKHASH_BLAKE2B,        /* BLAKE2b, 32-byte output */
};

#define LSM_BLKHASH_DIGEST_LEN    32                     /* both algorithms */
#define LSM_BLKHASH_HEX_LEN       (2 * LSM_BLKHASH_DIGEST_LEN + 1)
#define LSM_BLKHASH_DEFAULT_BLOCK (4u << 20)
#define LSM_BLKHASH_MIN_BLOCK     (64u << 10)
#define LSM_BLKHASH_MAX_BLOCK     (64u << 20)
#define LSM_BLKHASH_MAX_PENDING   65536

/* "sha256" / "blake2b" (the names ovirt-imageio's API uses). */
const char *lsm_blkhash_alg_name(enum lsm_blkhash_alg alg);
/* -EINVAL with a message for an unknown name. */
int lsm_blkhash_alg_parse(const char *name, enum lsm_blkhash_alg *out);
/* -EINVAL with a message unless block_size is a power of two in
 * [LSM_BLKHASH_MIN_BLOCK, LSM_BLKHASH_MAX_BLOCK]. */
int lsm_blkhash_check_block_size(uint64_t block_size);

struct lsm_blkhash;

/* A hash of `size` bytes in blocks of block_size.  -EINVAL for a bad
 * algorithm or block size, -ENOMEM, -EIO if the crypto library cannot start. */
int lsm_blkhash_new(enum lsm_blkhash_alg alg, uint32_t block_size, uint64_t size,
                    struct lsm_blkhash **out);
void lsm_blkhash_free(struct lsm_blkhash *h);

/* Number of blocks, and the length of block i (block_size, or less for the
 * last one; 0 past the end). */
uint64_t lsm_blkhash_nblocks(const struct lsm_blkhash *h);
uint32_t lsm_blkhash_block_len(const struct lsm_blkhash *h, uint64_t i);

/* H(data[0..len)): one block's digest, computable in any thread (it does
 * not touch h beyond reading its algorithm).  -EIO if the hash
 * implementation fails (libcrypto cannot allocate, say). */
int lsm_blkhash_digest_of(const struct lsm_blkhash *h, const void *data, size_t len,
                          uint8_t out[LSM_BLKHASH_DIGEST_LEN]);

/* ---- by block index, any order ---- */

/* Block i's digest.  -EINVAL if i is past the end or was already given,
 * -ENOBUFS if the pending list is full. */
int lsm_blkhash_set_digest(struct lsm_blkhash *h, uint64_t i,
                           const uint8_t digest[LSM_BLKHASH_DIGEST_LEN]);
/* Hash block i from its content: len must be lsm_blkhash_block_len(h, i). */
int lsm_blkhash_block(struct lsm_blkhash *h, uint64_t i, const void *data, size_t len);
/* Blocks [first, first + count) are all zeroes (count 0 is a no-op). */
int lsm_blkhash_zero_blocks(struct lsm_blkhash *h, uint64_t first, uint64_t count);

/* ---- as a byte stream, in order ---- */

/* The next len bytes of the input.  -EINVAL past the size. */
int lsm_blkhash_update(struct lsm_blkhash *h, const void *data, size_t len);
/* The next len bytes are zeroes (whole blocks take the precomputed digest). */
int lsm_blkhash_zero(struct lsm_blkhash *h, uint64_t len);

/* ---- result ---- */

/* The digest, once every block has been given: -EINVAL with the first
 * missing block's index otherwise.  The object is spent afterwards. */
int lsm_blkhash_final(struct lsm_blkhash *h, uint8_t out[LSM_BLKHASH_DIGEST_LEN]);
/* Lower-case hex of a digest, NUL-terminated. */
void lsm_blkhash_hex(const uint8_t digest[LSM_BLKHASH_DIGEST_LEN],
                     char out[LSM_BLKHASH_HEX_LEN]);

#endif
