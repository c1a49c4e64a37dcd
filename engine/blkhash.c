/* Block-based hash (see blkhash.h): an outer hash over the block digests in
 * block order, with the blocks that arrive early parked in a sorted pending
 * list until every block before them has been folded in. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "config.h"
#ifdef HAVE_LIBCRYPTO
#include <openssl/evp.h>
#endif

#include "blkhash.h"
#include "error.h"

/* One hash computation of either algorithm.  SHA-256 goes through OpenSSL's
 * libcrypto when the build has it (it uses the CPU's SHA extensions, several
 * times faster than libsodium's portable SHA-256); BLAKE2b with a 32-byte
 * output always comes from libsodium (OpenSSL 3.0 has only BLAKE2b-512).
 * An EVP call that fails marks the state failed; the caller checks. */
struct hstate {
    union {
        crypto_hash_sha256_state sha256;
        crypto_generichash_state blake2b;   /* 64-byte aligned by libsodium's type */
    } u;
#ifdef HAVE_LIBCRYPTO
    EVP_MD_CTX *evp;                        /* sha256 */
#endif
    bool failed;
};

static void hs_init(enum lsm_blkhash_alg alg, struct hstate *s)
{
    s->failed = false;
    if (alg == LSM_BLKHASH_SHA256) {
#ifdef HAVE_LIBCRYPTO
        if (!s->evp)
            s->evp = EVP_MD_CTX_new();
        s->failed = !s->evp || EVP_DigestInit_ex(s->evp, EVP_sha256(), NULL) != 1;
#else
        crypto_hash_sha256_init(&s->u.sha256);
#endif
    } else {
        crypto_generichash_init(&s->u.blake2b, NULL, 0, LSM_BLKHASH_DIGEST_LEN);
    }
}

static void hs_update(enum lsm_blkhash_alg alg, struct hstate *s, const void *p, size_t n)
{
    if (alg == LSM_BLKHASH_SHA256) {
#ifdef HAVE_LIBCRYPTO
        if (!s->failed)
            s->failed = EVP_DigestUpdate(s->evp, p, n) != 1;
#else
        crypto_hash_sha256_update(&s->u.sha256, p, n);
#endif
    } else {
        crypto_generichash_update(&s->u.blake2b, p, n);
    }
}

static void hs_final(enum lsm_blkhash_alg alg, struct hstate *s, uint8_t out[LSM_BLKHASH_DIGEST_LEN])
{
    if (alg == LSM_BLKHASH_SHA256) {
#ifdef HAVE_LIBCRYPTO
        unsigned len = 0;
        if (!s->failed)
            s->failed = EVP_DigestFinal_ex(s->evp, out, &len) != 1 || len != LSM_BLKHASH_DIGEST_LEN;
#else
        crypto_hash_sha256_final(&s->u.sha256, out);
#endif
    } else {
        crypto_generichash_final(&s->u.blake2b, out, LSM_BLKHASH_DIGEST_LEN);
    }
}

/* Release what hs_init allocated (the state can be initialised again). */
static void hs_release(struct hstate *s)
{
#ifdef HAVE_LIBCRYPTO
    EVP_MD_CTX_free(s->evp);
    s->evp = NULL;
#else
    (void)s;
#endif
}

_Static_assert(crypto_hash_sha256_BYTES == LSM_BLKHASH_DIGEST_LEN, "sha256 digest length");
_Static_assert(crypto_generichash_BYTES_MIN <= LSM_BLKHASH_DIGEST_LEN &&
               LSM_BLKHASH_DIGEST_LEN <= crypto_generichash_BYTES_MAX, "blake2b digest length");

/* Zeroes to feed a hash from, so that no block-sized buffer is needed. */
static const uint8_t zero_chunk[64 << 10];

/* Blocks [first, first + count) waiting for the blocks before them: one
 * digest (count 1), or a run of zero blocks. */
struct pending {
    uint64_t first, count;
    bool zero;
    uint8_t digest[LSM_BLKHASH_DIGEST_LEN];
};

enum feed_mode { FEED_NONE, FEED_INDEXED, FEED_STREAM };

struct lsm_blkhash {
    struct hstate outer;          /* over the block digests folded so far */
    struct hstate inner;          /* stream mode: the current block */
    enum lsm_blkhash_alg alg;
    uint32_t block_size;
    uint64_t size, nblocks;
    uint64_t next;                /* blocks [0, next) are folded into outer */
    uint32_t stream_fill;         /* stream mode: bytes of block next seen */
    enum feed_mode mode;
    bool spent;
    bool have_zero_full, have_zero_last;
    uint8_t zero_full[LSM_BLKHASH_DIGEST_LEN];   /* H(block_size zeroes) */
    uint8_t zero_last[LSM_BLKHASH_DIGEST_LEN];   /* H(zeroes) of a short last block */
    struct pending *pend;         /* sorted by first, not overlapping, all > next */
    size_t npend, cap;
};

const char *lsm_blkhash_alg_name(enum lsm_blkhash_alg alg)
{
    return alg == LSM_BLKHASH_SHA256 ? "sha256" : "blake2b";
}

int lsm_blkhash_alg_parse(const char *name, enum lsm_blkhash_alg *out)
{
    if (!strcmp(name, "sha256"))
        *out = LSM_BLKHASH_SHA256;
    else if (!strcmp(name, "blake2b"))
        *out = LSM_BLKHASH_BLAKE2B;
    else
        return lsm_error(-EINVAL, "unknown checksum algorithm '%s' (sha256 or blake2b)", name);
    return 0;
}

int lsm_blkhash_check_block_size(uint64_t bs)
{
    if (bs < LSM_BLKHASH_MIN_BLOCK || bs > LSM_BLKHASH_MAX_BLOCK || (bs & (bs - 1)))
        return lsm_error(-EINVAL, "block size %" PRIu64 " is not a power of two from 64 KiB to 64 MiB",
                         bs);
    return 0;
}

int lsm_blkhash_new(enum lsm_blkhash_alg alg, uint32_t block_size, uint64_t size,
                    struct lsm_blkhash **out)
{
    if (alg != LSM_BLKHASH_SHA256 && alg != LSM_BLKHASH_BLAKE2B)
        return lsm_error(-EINVAL, "unknown checksum algorithm %d", (int)alg);
    int r = lsm_blkhash_check_block_size(block_size);
    if (r < 0)
        return r;
    /* Thread-safe and idempotent; picks the fastest implementations. */
    if (sodium_init() < 0)
        return lsm_error(-EIO, "cannot initialise libsodium");
    void *mem;
    if (posix_memalign(&mem, 64, sizeof(struct lsm_blkhash)) != 0)
        return lsm_error(-ENOMEM, "cannot allocate a block hash");
    struct lsm_blkhash *h = mem;
    memset(h, 0, sizeof(*h));
    h->alg = alg;
    h->block_size = block_size;
    h->size = size;
    h->nblocks = size / block_size + (size % block_size != 0);
    hs_init(alg, &h->outer);
    if (h->outer.failed) {
        lsm_blkhash_free(h);
        return lsm_error(-ENOMEM, "cannot start a %s hash", lsm_blkhash_alg_name(alg));
    }
    *out = h;
    return 0;
}

void lsm_blkhash_free(struct lsm_blkhash *h)
{
    if (!h)
        return;
    free(h->pend);
    hs_release(&h->outer);
    hs_release(&h->inner);
    sodium_memzero(h, sizeof(*h));
    free(h);
}

uint64_t lsm_blkhash_nblocks(const struct lsm_blkhash *h)
{
    return h->nblocks;
}

uint32_t lsm_blkhash_block_len(const struct lsm_blkhash *h, uint64_t i)
{
    if (i >= h->nblocks)
        return 0;
    if (i == h->nblocks - 1 && h->size % h->block_size)
        return (uint32_t)(h->size % h->block_size);
    return h->block_size;
}

int lsm_blkhash_digest_of(const struct lsm_blkhash *h, const void *data, size_t len,
                          uint8_t out[LSM_BLKHASH_DIGEST_LEN])
{
    struct hstate s = { .failed = false };
    hs_init(h->alg, &s);
    hs_update(h->alg, &s, data, len);
    hs_final(h->alg, &s, out);
    hs_release(&s);
    if (s.failed)
        return lsm_error(-EIO, "the %s implementation failed", lsm_blkhash_alg_name(h->alg));
    return 0;
}

/* H(len zeroes); false if the implementation failed. */
static bool zero_digest(enum lsm_blkhash_alg alg, uint64_t len, uint8_t out[LSM_BLKHASH_DIGEST_LEN])
{
    struct hstate s = { .failed = false };
    hs_init(alg, &s);
    while (len) {
        size_t n = len < sizeof(zero_chunk) ? (size_t)len : sizeof(zero_chunk);
        hs_update(alg, &s, zero_chunk, n);
        len -= n;
    }
    hs_final(alg, &s, out);
    hs_release(&s);
    return !s.failed;
}

/* Fold count zero blocks from h->next on. */
static void fold_zero(struct lsm_blkhash *h, uint64_t count)
{
    uint64_t end = h->next + count;
    uint64_t full_end = end;
    if (end == h->nblocks && h->size % h->block_size)
        full_end = end - 1;            /* the short last block is the other digest */
    if (h->next < full_end && !h->have_zero_full) {
        if (!zero_digest(h->alg, h->block_size, h->zero_full))
            h->outer.failed = true;           /* sticky: final reports it */
        h->have_zero_full = true;
    }
    for (; h->next < full_end; h->next++)
        hs_update(h->alg, &h->outer, h->zero_full, LSM_BLKHASH_DIGEST_LEN);
    if (h->next < end) {
        if (!h->have_zero_last) {
            if (!zero_digest(h->alg, lsm_blkhash_block_len(h, h->next), h->zero_last))
                h->outer.failed = true;
            h->have_zero_last = true;
        }
        hs_update(h->alg, &h->outer, h->zero_last, LSM_BLKHASH_DIGEST_LEN);
        h->next++;
    }
}

static void fold_digest(struct lsm_blkhash *h, const uint8_t digest[LSM_BLKHASH_DIGEST_LEN])
{
    hs_update(h->alg, &h->outer, digest, LSM_BLKHASH_DIGEST_LEN);
    h->next++;
}

/* Fold every pending entry that has become next in line. */
static void drain(struct lsm_blkhash *h)
{
    size_t done = 0;
    while (done < h->npend && h->pend[done].first == h->next) {
        struct pending *p = &h->pend[done++];
        if (p->zero)
            fold_zero(h, p->count);
        else
            fold_digest(h, p->digest);
    }
    if (done) {
        memmove(h->pend, h->pend + done, (h->npend - done) * sizeof(*h->pend));
        h->npend -= done;
    }
}

static int check_feed(struct lsm_blkhash *h, enum feed_mode mode)
{
    if (h->spent)
        return lsm_error(-EINVAL, "block hash already finished");
    if (h->mode != FEED_NONE && h->mode != mode)
        return lsm_error(-EINVAL, "block hash fed both by block index and as a stream");
    h->mode = mode;
    return 0;
}

/* Blocks [first, first + count), count >= 1: fold now, or park. */
static int add_blocks(struct lsm_blkhash *h, uint64_t first, uint64_t count, bool zero,
                      const uint8_t *digest)
{
    int r = check_feed(h, FEED_INDEXED);
    if (r < 0)
        return r;
    if (first >= h->nblocks || count > h->nblocks - first)
        return lsm_error(-EINVAL, "blocks %" PRIu64 "-%" PRIu64 " are past the end (%" PRIu64 " blocks)",
                         first, first + count - 1, h->nblocks);
    if (first < h->next)
        return lsm_error(-EINVAL, "block %" PRIu64 " given twice", first);
    if (first == h->next) {
        if (zero)
            fold_zero(h, count);
        else
            fold_digest(h, digest);
        drain(h);
        return 0;
    }
    /* Insert before the first entry that starts after `first`. */
    size_t lo = 0, hi = h->npend;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->pend[mid].first <= first)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && h->pend[lo - 1].first + h->pend[lo - 1].count > first)
        return lsm_error(-EINVAL, "block %" PRIu64 " given twice", first);
    if (lo < h->npend && h->pend[lo].first < first + count)
        return lsm_error(-EINVAL, "block %" PRIu64 " given twice", h->pend[lo].first);
    /* A zero run next to a pending zero run joins it, so that the list holds
     * at most one zero run between two digests, however many pieces the
     * caller sends. */
    if (zero) {
        struct pending *prev = lo > 0 ? &h->pend[lo - 1] : NULL;
        struct pending *nxt = lo < h->npend ? &h->pend[lo] : NULL;
        bool join_prev = prev && prev->zero && prev->first + prev->count == first;
        bool join_next = nxt && nxt->zero && first + count == nxt->first;
        if (join_prev && join_next) {
            prev->count += count + nxt->count;
            memmove(nxt, nxt + 1, (h->npend - lo - 1) * sizeof(*h->pend));
            h->npend--;
            return 0;
        }
        if (join_prev) {
            prev->count += count;
            return 0;
        }
        if (join_next) {
            nxt->first = first;
            nxt->count += count;
            return 0;
        }
    }
    if (h->npend == h->cap) {
        if (h->cap >= LSM_BLKHASH_MAX_PENDING)
            return lsm_error(-ENOBUFS, "more than %d blocks wait for block %" PRIu64,
                             LSM_BLKHASH_MAX_PENDING, h->next);
        size_t cap = h->cap ? h->cap * 2 : 16;
        struct pending *p = realloc(h->pend, cap * sizeof(*p));
        if (!p)
            return lsm_error(-ENOMEM, "cannot grow the block hash's pending list");
        h->pend = p;
        h->cap = cap;
    }
    memmove(h->pend + lo + 1, h->pend + lo, (h->npend - lo) * sizeof(*h->pend));
    struct pending *p = &h->pend[lo];
    p->first = first;
    p->count = count;
    p->zero = zero;
    if (!zero)
        memcpy(p->digest, digest, LSM_BLKHASH_DIGEST_LEN);
    h->npend++;
    return 0;
}

int lsm_blkhash_set_digest(struct lsm_blkhash *h, uint64_t i,
                           const uint8_t digest[LSM_BLKHASH_DIGEST_LEN])
{
    return add_blocks(h, i, 1, false, digest);
}

int lsm_blkhash_block(struct lsm_blkhash *h, uint64_t i, const void *data, size_t len)
{
    if (i < h->nblocks && len != lsm_blkhash_block_len(h, i))
        return lsm_error(-EINVAL, "block %" PRIu64 " has %u bytes, not %zu",
                         i, lsm_blkhash_block_len(h, i), len);
    uint8_t d[LSM_BLKHASH_DIGEST_LEN];
    int r = lsm_blkhash_digest_of(h, data, len, d);
    if (r < 0)
        return r;
    return add_blocks(h, i, 1, false, d);
}

int lsm_blkhash_zero_blocks(struct lsm_blkhash *h, uint64_t first, uint64_t count)
{
    if (count == 0)
        return check_feed(h, FEED_INDEXED);
    return add_blocks(h, first, count, true, NULL);
}

static uint64_t stream_pos(const struct lsm_blkhash *h)
{
    return h->next * h->block_size + h->stream_fill;
}

int lsm_blkhash_update(struct lsm_blkhash *h, const void *data, size_t len)
{
    int r = check_feed(h, FEED_STREAM);
    if (r < 0)
        return r;
    if (len > h->size - stream_pos(h))
        return lsm_error(-EINVAL, "%zu more bytes would pass the end (%" PRIu64 " bytes)",
                         len, h->size);
    const uint8_t *p = data;
    while (len) {
        uint32_t blen = lsm_blkhash_block_len(h, h->next);
        if (h->stream_fill == 0)
            hs_init(h->alg, &h->inner);
        size_t n = blen - h->stream_fill;
        if (n > len)
            n = len;
        hs_update(h->alg, &h->inner, p, n);
        p += n;
        len -= n;
        h->stream_fill += (uint32_t)n;
        if (h->stream_fill == blen) {
            uint8_t d[LSM_BLKHASH_DIGEST_LEN];
            hs_final(h->alg, &h->inner, d);
            if (h->inner.failed)
                h->outer.failed = true;
            fold_digest(h, d);
            h->stream_fill = 0;
        }
    }
    return 0;
}

int lsm_blkhash_zero(struct lsm_blkhash *h, uint64_t len)
{
    int r = check_feed(h, FEED_STREAM);
    if (r < 0)
        return r;
    if (len > h->size - stream_pos(h))
        return lsm_error(-EINVAL, "%" PRIu64 " more bytes would pass the end (%" PRIu64 " bytes)",
                         len, h->size);
    while (len) {
        uint32_t blen = lsm_blkhash_block_len(h, h->next);
        if (h->stream_fill == 0 && len >= blen) {
            /* Whole blocks: the precomputed digest, nothing hashed. */
            uint64_t count = len / h->block_size;
            if (count > h->nblocks - h->next)
                count = h->nblocks - h->next;
            if (count == 0)
                count = 1;                    /* the short last block */
            uint64_t first = h->next;
            fold_zero(h, count);
            for (uint64_t b = first; b < h->next; b++)
                len -= lsm_blkhash_block_len(h, b);
            continue;
        }
        size_t n = len < sizeof(zero_chunk) ? (size_t)len : sizeof(zero_chunk);
        if (n > blen - h->stream_fill)
            n = blen - h->stream_fill;
        r = lsm_blkhash_update(h, zero_chunk, n);
        if (r < 0)
            return r;
        len -= n;
    }
    return 0;
}

int lsm_blkhash_final(struct lsm_blkhash *h, uint8_t out[LSM_BLKHASH_DIGEST_LEN])
{
    if (h->spent)
        return lsm_error(-EINVAL, "block hash already finished");
    if (h->next != h->nblocks) {
        if (h->mode == FEED_STREAM)
            return lsm_error(-EINVAL, "only %" PRIu64 " of %" PRIu64 " bytes were hashed",
                             stream_pos(h), h->size);
        return lsm_error(-EINVAL, "block %" PRIu64 " of %" PRIu64 " is missing",
                         h->next, h->nblocks);
    }
    hs_final(h->alg, &h->outer, out);
    h->spent = true;
    if (h->outer.failed)
        return lsm_error(-EIO, "the %s implementation failed", lsm_blkhash_alg_name(h->alg));
    return 0;
}

void lsm_blkhash_hex(const uint8_t digest[LSM_BLKHASH_DIGEST_LEN], char out[LSM_BLKHASH_HEX_LEN])
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < LSM_BLKHASH_DIGEST_LEN; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[2 * LSM_BLKHASH_DIGEST_LEN] = '\0';
}
