#include <math.h>
#include <string.h>

#include "hist.h"

void bench_hist_init(struct bench_hist *h)
{
    memset(h, 0, sizeof *h);
}

unsigned bench_hist_index(uint64_t v)
{
    if (v < 2 * BENCH_HIST_SUB)
        return (unsigned)v;
    unsigned k = 63u - (unsigned)__builtin_clzll(v);          /* k >= 7 */
    unsigned shift = k - BENCH_HIST_SUB_BITS;
    unsigned sub = (unsigned)(v >> shift) - BENCH_HIST_SUB;   /* 0..63 */
    return (k - BENCH_HIST_SUB_BITS + 1) * BENCH_HIST_SUB + sub;
}

uint64_t bench_hist_bucket_low(unsigned idx)
{
    if (idx < 2 * BENCH_HIST_SUB)
        return idx;
    unsigned g = idx / BENCH_HIST_SUB;          /* >= 2 */
    unsigned sub = idx % BENCH_HIST_SUB;
    unsigned shift = g - 1;                     /* k - 6 with k = g + 5 */
    return (uint64_t)(BENCH_HIST_SUB + sub) << shift;
}

uint64_t bench_hist_bucket_width(unsigned idx)
{
    if (idx < 2 * BENCH_HIST_SUB)
        return 1;
    return 1ULL << (idx / BENCH_HIST_SUB - 1);
}

uint64_t bench_hist_bucket_value(unsigned idx)
{
    return bench_hist_bucket_low(idx) + (bench_hist_bucket_width(idx) - 1) / 2;
}

void bench_hist_merge(struct bench_hist *into, const struct bench_hist *from)
{
    if (from->count == 0)
        return;
    if (into->count == 0 || from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
    into->count += from->count;
    into->sum += from->sum;
    into->sumsq += from->sumsq;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
        into->buckets[i] += from->buckets[i];
}

double bench_hist_mean(const struct bench_hist *h)
{
    return h->count ? (double)(h->sum / h->count) : 0.0;
}

double bench_hist_stddev(const struct bench_hist *h)
{
    if (h->count < 2)
        return 0.0;
    long double n = (long double)h->count;
    long double var = (h->sumsq - h->sum * h->sum / n) / (n - 1);
    return var > 0 ? sqrt((double)var) : 0.0;
}

uint64_t bench_hist_percentile(const struct bench_hist *h, double pct)
{
    if (h->count == 0)
        return 0;
    if (pct <= 0)
        return h->min;
    if (pct >= 100)
        return h->max;
    /* nearest rank: the smallest sample with at least pct% at or below it */
    long double want = (long double)pct / 100.0L * (long double)h->count;
    uint64_t rank = (uint64_t)want;
    if ((long double)rank < want)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t v = bench_hist_bucket_value(i);
            if (v < h->min)
                v = h->min;
            if (v > h->max)
                v = h->max;
            return v;
        }
    }
    return h->max;
}
