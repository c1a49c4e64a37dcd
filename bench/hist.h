/* Log-linear latency histogram (HDR style).
 *
 * Values below 128 have a bucket each.  Above, every power-of-two range
 * [2^k, 2^(k+1)) is split into 64 equal buckets, so a bucket is at most
 * 1/64 of its lower bound wide; reporting its midpoint is off by at most
 * 1/128 (0.79%) of the true value.  Fixed size, no allocation, mergeable
 * by adding counts.  Values are nanoseconds but nothing here cares. */
#ifndef LSM_BENCH_HIST_H
#define LSM_BENCH_HIST_H

#include <stdbool.h>
#include <stdint.h>

#define BENCH_HIST_SUB_BITS 6
#define BENCH_HIST_SUB (1u << BENCH_HIST_SUB_BITS)
/* group 0 holds 0..63, group g >= 1 holds [2^(g+5), 2^(g+6)); g <= 58 */
#define BENCH_HIST_GROUPS (64 - BENCH_HIST_SUB_BITS + 1)
#define BENCH_HIST_BUCKETS (BENCH_HIST_GROUPS * BENCH_HIST_SUB)

struct bench_hist {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    long double sum;
    long double sumsq;      /* for the standard deviation */
    uint64_t buckets[BENCH_HIST_BUCKETS];
};

void bench_hist_init(struct bench_hist *h);
unsigned bench_hist_index(uint64_t v);
/* Smallest value that falls in bucket idx, and the bucket's width. */
uint64_t bench_hist_bucket_low(unsigned idx);
uint64_t bench_hist_bucket_width(unsigned idx);
/* The value reported for bucket idx (its midpoint). */
uint64_t bench_hist_bucket_value(unsigned idx);

static inline void bench_hist_add(struct bench_hist *h, uint64_t v)
{
    h->buckets[bench_hist_index(v)]++;
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += v;
    h->sumsq += (long double)v * v;
}

void bench_hist_merge(struct bench_hist *into, const struct bench_hist *from);
double bench_hist_mean(const struct bench_hist *h);
/* Sample standard deviation (fio's: n - 1 in the divisor); 0 below 2 samples. */
double bench_hist_stddev(const struct bench_hist *h);
/* The value below which pct percent of the samples lie (nearest rank),
 * clamped to [min, max]; 0 when empty. */
uint64_t bench_hist_percentile(const struct bench_hist *h, double pct);

#endif
