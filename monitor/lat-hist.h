/* A small latency histogram for the extender's status (pure, no
 * allocation).  Microsecond resolution; each power of two is split into 4
 * buckets, so a reported percentile is within 19% of the true value (the
 * bucket's upper bound is reported: never an underestimate).  Exact count,
 * minimum, maximum and sum. */
#ifndef LSM_LAT_HIST_H
#define LSM_LAT_HIST_H

#include <stdint.h>

#define LSM_LAT_HIST_BUCKETS (4 * 40)

struct lsm_lat_hist {
    uint64_t count, min_ns, max_ns, sum_ns;
    uint32_t buckets[LSM_LAT_HIST_BUCKETS];
};

void lsm_lat_hist_add(struct lsm_lat_hist *h, uint64_t ns);
/* The smallest bucket bound below which pct percent of the samples lie,
 * clamped to [min, max]; 0 when empty. */
uint64_t lsm_lat_hist_percentile(const struct lsm_lat_hist *h, double pct);
uint64_t lsm_lat_hist_mean(const struct lsm_lat_hist *h);

#endif
