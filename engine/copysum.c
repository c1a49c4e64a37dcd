/* The block hash of a copy, from pieces in any order: blocks in assembly
 * in a short list (a copy has a handful at a time). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "copysum.h"
#include "error.h"
#include "util.h"

struct partial {
    uint64_t index;
    uint64_t filled;
    uint8_t *buf;
};

struct lsm_copysum {
    struct lsm_blkhash *h;
    uint64_t block, size;
    unsigned max_partial, npartial;
    struct partial *partial;
};

int lsm_copysum_new(enum lsm_blkhash_alg alg, uint32_t block_size, uint64_t size,
                    unsigned max_partial, struct lsm_copysum **out)
{
    struct lsm_copysum *s = calloc(1, sizeof *s);
    if (!s)
        return lsm_error(-ENOMEM, "out of memory");
    s->partial = calloc(max_partial ? max_partial : 1, sizeof *s->partial);
    int r = s->partial ? lsm_blkhash_new(alg, block_size, size, &s->h)
                       : lsm_error(-ENOMEM, "out of memory");
    if (r < 0) {
        free(s->partial);
        free(s);
        return r;
    }
    s->block = block_size;
    s->size = size;
    s->max_partial = max_partial ? max_partial : 1;
    *out = s;
    return 0;
}

void lsm_copysum_free(struct lsm_copysum *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->npartial; i++)
        free(s->partial[i].buf);
    free(s->partial);
    lsm_blkhash_free(s->h);
    free(s);
}

static struct partial *find_partial(struct lsm_copysum *s, uint64_t index)
{
    for (unsigned i = 0; i < s->npartial; i++)
        if (s->partial[i].index == index)
            return &s->partial[i];
    return NULL;
}

/* Piece [pos, pos+len) of block index: data (buf) or zeroes (buf NULL). */
static int piece(struct lsm_copysum *s, uint64_t index, uint64_t pos, const uint8_t *buf,
                 uint64_t len)
{
    uint32_t blen = lsm_blkhash_block_len(s->h, index);
    struct partial *p = find_partial(s, index);
    if (!p && pos == 0 && len == blen)
        return buf ? lsm_blkhash_block(s->h, index, buf, blen)
                   : lsm_blkhash_zero_blocks(s->h, index, 1);
    if (!p) {
        if (s->npartial == s->max_partial)
            return lsm_error(-ENOBUFS, "checksum: more than %u blocks in assembly", s->max_partial);
        p = &s->partial[s->npartial];
        *p = (struct partial){ .index = index, .buf = calloc(1, blen) };
        if (!p->buf)
            return lsm_error(-ENOMEM, "out of memory");
        s->npartial++;
    }
    if (buf)
        memcpy(p->buf + pos, buf, len);
    p->filled += len;
    if (p->filled < blen)
        return 0;
    if (p->filled > blen)
        return lsm_error(-EINVAL, "checksum: block %" PRIu64 " given twice", index);
    int r = lsm_blkhash_block(s->h, index, p->buf, blen);
    free(p->buf);
    *p = s->partial[--s->npartial];
    return r;
}

static int feed(struct lsm_copysum *s, uint64_t off, const uint8_t *buf, uint64_t len)
{
    if (off > s->size || len > s->size - off)
        return lsm_error(-EINVAL, "checksum: range past the end of the disk");
    while (len) {
        uint64_t index = off / s->block, pos = off % s->block;
        uint64_t n = MIN(len, s->block - pos);
        if (!buf && pos == 0 && n == s->block && !find_partial(s, index)) {
            /* a run of whole zero blocks at once */
            uint64_t count = len / s->block;
            uint64_t k = 0;
            while (k < count && !find_partial(s, index + k))
                k++;
            int r = lsm_blkhash_zero_blocks(s->h, index, k);
            if (r < 0)
                return r;
            off += k * s->block;
            len -= k * s->block;
            continue;
        }
        int r = piece(s, index, pos, buf, n);
        if (r < 0)
            return r;
        off += n;
        len -= n;
        if (buf)
            buf += n;
    }
    return 0;
}

int lsm_copysum_data(struct lsm_copysum *s, uint64_t off, const void *buf, uint64_t len)
{
    return feed(s, off, buf, len);
}

int lsm_copysum_zero(struct lsm_copysum *s, uint64_t off, uint64_t len)
{
    return feed(s, off, NULL, len);
}

int lsm_copysum_final(struct lsm_copysum *s, uint8_t digest[LSM_BLKHASH_DIGEST_LEN])
{
    if (s->npartial)
        return lsm_error(-EINVAL, "checksum: block %" PRIu64 " incomplete", s->partial[0].index);
    return lsm_blkhash_final(s->h, digest);
}
