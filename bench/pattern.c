#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "error.h"
#include "pattern.h"
#include "prng.h"

static uint64_t block_seed(uint64_t offset, uint64_t seed)
{
    uint64_t x = seed ^ (offset * 0x9e3779b97f4a7c15ULL);
    return bench_splitmix64(&x);
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The body: bytes after the header, from the block's own generator. */
static void fill_body(unsigned char *p, size_t len, uint64_t bseed)
{
    struct bench_prng r;
    bench_prng_seed(&r, bseed);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = bench_prng_next(&r);
        memcpy(p + i, &v, 8);
    }
    if (i < len) {
        uint64_t v = bench_prng_next(&r);
        memcpy(p + i, &v, len - i);
    }
}

static void fill_header(unsigned char *p, size_t len, uint64_t offset, uint64_t seed)
{
    memcpy(p, BENCH_PATTERN_MAGIC, 8);
    put_le64(p + 8, offset);
    put_le64(p + 16, seed);
    uint32_t l = (uint32_t)len;
    for (int i = 0; i < 4; i++)
        p[24 + i] = (unsigned char)(l >> (8 * i));
    memset(p + 28, 0, 4);
}

void bench_pattern_fill(void *buf, size_t len, uint64_t offset, uint64_t seed)
{
    unsigned char *p = buf;
    if (len < BENCH_PATTERN_HEADER) {
        fill_body(p, len, block_seed(offset, seed));
        return;
    }
    fill_header(p, len, offset, seed);
    fill_body(p + BENCH_PATTERN_HEADER, len - BENCH_PATTERN_HEADER, block_seed(offset, seed));
}

int bench_pattern_check(const void *buf, size_t len, uint64_t offset, uint64_t seed,
                        const char *path)
{
    const unsigned char *p = buf;
    if (len >= BENCH_PATTERN_HEADER) {
        if (memcmp(p, BENCH_PATTERN_MAGIC, 8) != 0)
            return lsm_error(-EBADMSG, "verify failed at offset %" PRIu64 " of %s: "
                             "no pattern header (block never written, or overwritten)",
                             offset, path);
        uint64_t hoff = get_le64(p + 8), hseed = get_le64(p + 16);
        if (hoff != offset)
            return lsm_error(-EBADMSG, "verify failed at offset %" PRIu64 " of %s: "
                             "found the block written for offset %" PRIu64 " (misplaced block)",
                             offset, path, hoff);
        if (hseed != seed)
            return lsm_error(-EBADMSG, "verify failed at offset %" PRIu64 " of %s: "
                             "block written with seed %" PRIu64 ", expected %" PRIu64,
                             offset, path, hseed, seed);
        unsigned char hdr[BENCH_PATTERN_HEADER];
        fill_header(hdr, len, offset, seed);
        if (memcmp(p, hdr, sizeof hdr) != 0)
            return lsm_error(-EBADMSG, "verify failed at offset %" PRIu64 " of %s: "
                             "block header names another block size", offset, path);
        p += BENCH_PATTERN_HEADER;
        len -= BENCH_PATTERN_HEADER;
    }
    /* regenerate the body in chunks and compare */
    struct bench_prng r;
    bench_prng_seed(&r, block_seed(offset, seed));
    size_t base = len == 0 ? 0 : (size_t)(p - (const unsigned char *)buf);
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = bench_prng_next(&r);
        size_t n = len - i < 8 ? len - i : 8;
        if (memcmp(p + i, &v, n) != 0) {
            size_t j = 0;
            while (j < n && p[i + j] == ((unsigned char *)&v)[j])
                j++;
            return lsm_error(-EBADMSG, "verify failed at offset %" PRIu64 " of %s: "
                             "data differs at byte %zu of the block (offset %" PRIu64 ")",
                             offset, path, base + i + j, offset + base + i + j);
        }
    }
    return 0;
}

void bench_fill_random(void *buf, size_t len, uint64_t seed)
{
    fill_body(buf, len, seed);
}

void bench_scramble(void *buf, size_t len, uint64_t offset, uint64_t stamp)
{
    unsigned char *p = buf;
    uint64_t x = stamp;
    size_t at = (size_t)(bench_splitmix64(&x) % (512 / 8 - 1)) * 8;   /* 0..496 */
    for (size_t s = 0; s + 512 <= len; s += 512) {
        put_le64(p + s + at, offset + s);
        put_le64(p + s + at + 8, stamp);
    }
}
