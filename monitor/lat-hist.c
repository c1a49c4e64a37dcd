/* Latency histogram (lat-hist.h). */
#include <math.h>

#include "lat-hist.h"
#include "util.h"

static unsigned bucket_of(uint64_t us)
{
    if (us < 4)
        return (unsigned)us;
    unsigned lg = 63u - (unsigned)__builtin_clzll(us);      /* >= 2 */
    unsigned sub = (unsigned)((us >> (lg - 2)) & 3);
    unsigned b = 4 * (lg - 1) + sub;
    return MIN(b, LSM_LAT_HIST_BUCKETS - 1);
}

/* Exclusive upper bound of a bucket, in microseconds. */
static uint64_t bucket_high(unsigned b)
{
    if (b < 4)
        return b + 1;
    unsigned lg = b / 4 + 1, sub = b % 4;
    if (lg >= 62)
        return UINT64_MAX / 1000;
    return (1ULL << lg) + ((uint64_t)(sub + 1) << (lg - 2));
}

void lsm_lat_hist_add(struct lsm_lat_hist *h, uint64_t ns)
{
    h->buckets[bucket_of(ns / 1000)]++;
    if (!h->count || ns < h->min_ns)
        h->min_ns = ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
    h->count++;
    h->sum_ns = h->sum_ns > UINT64_MAX - ns ? UINT64_MAX : h->sum_ns + ns;
}

uint64_t lsm_lat_hist_percentile(const struct lsm_lat_hist *h, double pct)
{
    if (!h->count)
        return 0;
    uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < LSM_LAT_HIST_BUCKETS; b++) {
        seen += h->buckets[b];
        if (seen >= rank) {
            uint64_t v = bucket_high(b) * 1000;
            return MAX(h->min_ns, MIN(v, h->max_ns));
        }
    }
    return h->max_ns;
}

uint64_t lsm_lat_hist_mean(const struct lsm_lat_hist *h)
{
    return h->count ? h->sum_ns / h->count : 0;
}
