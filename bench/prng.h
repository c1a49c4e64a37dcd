/* Seeded pseudo-random numbers for offsets and buffer contents:
 * splitmix64 expands a seed, xoshiro256** generates.  Not cryptographic;
 * fast and reproducible (same seed, same sequence). */
#ifndef LSM_BENCH_PRNG_H
#define LSM_BENCH_PRNG_H

#include <stdint.h>

struct bench_prng {
    uint64_t s[4];
};

static inline uint64_t bench_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline void bench_prng_seed(struct bench_prng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = bench_splitmix64(&x);
}

static inline uint64_t bench_rotl(uint64_t v, int k)
{
    return (v << k) | (v >> (64 - k));
}

static inline uint64_t bench_prng_next(struct bench_prng *r)
{
    uint64_t *s = r->s;
    uint64_t out = bench_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = bench_rotl(s[3], 45);
    return out;
}

/* Uniform in [0, n), n > 0, without modulo bias (multiply-shift with
 * rejection of the short first interval). */
static inline uint64_t bench_prng_below(struct bench_prng *r, uint64_t n)
{
    unsigned __int128 m = (unsigned __int128)bench_prng_next(r) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (unsigned __int128)bench_prng_next(r) * n;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

#endif
