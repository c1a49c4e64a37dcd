/* The watermark extender's policy (extend-policy.h): pure functions. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "error.h"
#include "extend-policy.h"
#include "util.h"

void lsm_extend_policy_default(struct lsm_extend_policy *p)
{
    memset(p, 0, sizeof *p);
    p->chunk = 1 * GiB;
    p->chunk_replicating = 2 * GiB;
    p->watermark = 512 * MiB;
    p->watermark_replicating = 3 * GiB;
    p->safety = 2.0;
    p->extent = 128 * MiB;
    p->max_ratio = 1.1;
    p->max_retries = 5;
    p->retry_base_ns = 500000000ULL;
    p->retry_max_ns = 8000000000ULL;
    p->rate_window_ns = 2000000000ULL;
    p->rate_hold_ns = 60000000000ULL;
    p->default_latency_ns = 6000000000ULL;
}

int lsm_extend_policy_check(const struct lsm_extend_policy *p)
{
    if (!p->extent || !is_pow2(p->extent))
        return lsm_error(-EINVAL, "the extent size must be a power of two, not %llu",
                         (unsigned long long)p->extent);
    if (p->chunk < p->extent || p->chunk_replicating < p->extent)
        return lsm_error(-EINVAL, "the chunk must be at least one extent (%llu bytes)",
                         (unsigned long long)p->extent);
    if (!(p->safety >= 1.0) || p->safety > 100.0)
        return lsm_error(-EINVAL, "the safety factor must be between 1 and 100");
    if (!(p->max_ratio >= 1.0) || p->max_ratio > 10.0)
        return lsm_error(-EINVAL, "the maximum size ratio must be between 1 and 10");
    if (p->retry_base_ns == 0 || p->retry_max_ns < p->retry_base_ns)
        return lsm_error(-EINVAL, "the retry delays must be positive and the maximum "
                         "no smaller than the first");
    if (p->rate_window_ns == 0)
        return lsm_error(-EINVAL, "the rate window must be positive");
    return 0;
}

uint64_t lsm_extend_chunk(const struct lsm_extend_policy *p, bool replicating)
{
    return replicating ? p->chunk_replicating : p->chunk;
}

/* Saturating conversion of a non-negative double to bytes. */
static uint64_t to_bytes(double v)
{
    if (!(v > 0))
        return 0;
    if (v >= 1.8e19)
        return UINT64_MAX;
    return (uint64_t)ceil(v);
}

uint64_t lsm_extend_headroom(const struct lsm_extend_policy *p, double rate_bps,
                             uint64_t latency_ns, bool replicating)
{
    if (!latency_ns)
        latency_ns = p->default_latency_ns;
    double adaptive = rate_bps * ((double)latency_ns / 1e9) * p->safety;
    return MAX(replicating ? p->watermark_replicating : p->watermark, to_bytes(adaptive));
}

uint64_t lsm_extend_growth(const struct lsm_extend_policy *p, double rate_bps,
                           uint64_t latency_ns)
{
    if (!latency_ns)
        latency_ns = p->default_latency_ns;
    return to_bytes(rate_bps * ((double)latency_ns / 1e9) * p->safety);
}

static uint64_t round_up_sat(uint64_t v, uint64_t a)
{
    if (v > UINT64_MAX - (a - 1))
        return align_down(UINT64_MAX, a);
    return align_up(v, a);
}

uint64_t lsm_extend_max_size(const struct lsm_extend_policy *p, uint64_t capacity,
                             uint64_t measured)
{
    uint64_t m = measured ? measured : to_bytes((double)capacity * p->max_ratio);
    return round_up_sat(m, p->extent);
}

uint64_t lsm_extend_measured(uint64_t capacity, uint64_t full_size, uint64_t image_capacity,
                             uint64_t allocation)
{
    if (!full_size || !capacity || image_capacity != capacity || allocation > full_size ||
        full_size < capacity)
        return 0;
    uint64_t margin = MAX(capacity / 256, 1 * MiB);
    return full_size > UINT64_MAX - margin ? 0 : full_size + margin;
}

bool lsm_extend_format_grows(const char *format)
{
    return !format || strcmp(format, "raw") != 0;
}

uint64_t lsm_extend_threshold(uint64_t physical, uint64_t headroom, uint64_t max_size)
{
    if (physical >= max_size)
        return 0;
    if (headroom >= physical)
        return 1;
    return physical - headroom;
}

bool lsm_extend_needed(uint64_t allocation, uint64_t physical, uint64_t headroom,
                       uint64_t max_size, bool exceeded_event)
{
    if (physical >= max_size)
        return false;
    if (exceeded_event)
        return true;
    /* free < headroom, with allocation possibly past physical (an image
     * that already failed a write reports its attempted end). */
    return allocation > physical || physical - allocation < headroom;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t lsm_extend_next_size_growing(const struct lsm_extend_policy *p, uint64_t allocation,
                                      uint64_t physical, uint64_t headroom, uint64_t growth,
                                      uint64_t max_size, bool replicating)
{
    if (physical >= max_size)
        return physical;
    uint64_t chunk = lsm_extend_chunk(p, replicating);
    uint64_t planned = add_sat(add_sat(add_sat(allocation, growth), headroom), chunk);
    uint64_t want = round_up_sat(MAX(add_sat(physical, chunk), planned), p->extent);
    return MIN(want, max_size);
}

uint64_t lsm_extend_next_size(const struct lsm_extend_policy *p, uint64_t allocation,
                              uint64_t physical, uint64_t headroom, uint64_t max_size,
                              bool replicating)
{
    return lsm_extend_next_size_growing(p, allocation, physical, headroom, 0, max_size,
                                        replicating);
}

uint64_t lsm_extend_initial_size(const struct lsm_extend_policy *p, uint64_t allocation,
                                 uint64_t capacity, bool replicating)
{
    uint64_t headroom = lsm_extend_headroom(p, 0, 0, replicating);
    return lsm_extend_next_size(p, allocation, 0, headroom, lsm_extend_max_size(p, capacity, 0),
                                replicating);
}

/* ---- failures ---- */

const char *lsm_extend_failure_name(enum lsm_extend_failure f)
{
    switch (f) {
    case LSM_EXTEND_FAIL_NONE: return "none";
    case LSM_EXTEND_FAIL_TRANSIENT: return "transient";
    case LSM_EXTEND_FAIL_NO_SPACE: return "no-space";
    case LSM_EXTEND_FAIL_FATAL: return "fatal";
    }
    return "unknown";
}

enum lsm_extend_failure lsm_extend_classify(int err)
{
    switch (-err) {
    case 0:
        return LSM_EXTEND_FAIL_NONE;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return LSM_EXTEND_FAIL_NO_SPACE;
    case ENOENT:
    case ENODEV:
    case ENXIO:
    case EINVAL:
    case EPERM:
    case EACCES:
    case EROFS:
    case ENOTSUP:
    case ENOTBLK:
    case E2BIG:
        return LSM_EXTEND_FAIL_FATAL;
    default:
        /* EIO, EAGAIN, EBUSY, ETIMEDOUT, EINTR, ENOMEM, a lock held by
         * another LVM command, a manager that did not answer: retry. */
        return LSM_EXTEND_FAIL_TRANSIENT;
    }
}

uint64_t lsm_extend_retry_delay(const struct lsm_extend_policy *p, unsigned attempt)
{
    if (attempt == 0 || attempt > p->max_retries)
        return 0;
    uint64_t d = p->retry_base_ns;
    for (unsigned i = 1; i < attempt && d < p->retry_max_ns; i++)
        d = d > UINT64_MAX / 2 ? UINT64_MAX : d * 2;
    return MIN(d, p->retry_max_ns);
}

/* ---- duplicate events ---- */

bool lsm_extend_trigger_event(struct lsm_extend_trigger *t)
{
    if (t->pending || t->running) {
        t->merged++;
        return false;
    }
    t->pending = true;
    return true;
}

void lsm_extend_trigger_start(struct lsm_extend_trigger *t)
{
    t->pending = false;
    t->running = true;
}

void lsm_extend_trigger_done(struct lsm_extend_trigger *t)
{
    t->running = false;
}

/* ---- recent write rate ---- */

void lsm_extend_rate_add(struct lsm_extend_rate *r, const struct lsm_extend_policy *p,
                         uint64_t now_ns, uint64_t allocation)
{
    r->t[r->head] = now_ns;
    r->alloc[r->head] = allocation;
    r->head = (r->head + 1) % LSM_EXTEND_RATE_SAMPLES;
    if (r->n < LSM_EXTEND_RATE_SAMPLES)
        r->n++;
    double cur = lsm_extend_rate_bps(r, p->rate_window_ns);
    if (cur >= r->peak_bps || now_ns - r->peak_t > p->rate_hold_ns) {
        r->peak_bps = cur;
        r->peak_t = now_ns;
    }
}

double lsm_extend_rate_recent(const struct lsm_extend_rate *r)
{
    return r->peak_bps;
}

double lsm_extend_rate_bps(const struct lsm_extend_rate *r, uint64_t window_ns)
{
    if (r->n < 2)
        return 0;
    unsigned newest = (r->head + LSM_EXTEND_RATE_SAMPLES - 1) % LSM_EXTEND_RATE_SAMPLES;
    uint64_t tn = r->t[newest], an = r->alloc[newest];
    /* The oldest sample inside the window (at least the one before the
     * newest, so that two samples further apart than the window still
     * give a rate). */
    unsigned oldest = (newest + LSM_EXTEND_RATE_SAMPLES - 1) % LSM_EXTEND_RATE_SAMPLES;
    for (unsigned back = 2; back < r->n; back++) {
        unsigned i = (newest + LSM_EXTEND_RATE_SAMPLES - back) % LSM_EXTEND_RATE_SAMPLES;
        if (tn - r->t[i] > window_ns)
            break;
        oldest = i;
    }
    uint64_t t0 = r->t[oldest], a0 = r->alloc[oldest];
    if (tn <= t0 || an <= a0)
        return 0;
    return (double)(an - a0) / ((double)(tn - t0) / 1e9);
}

uint64_t lsm_extend_poll_ns(const struct lsm_extend_rate *r, uint64_t poll_ns)
{
    return r->n < LSM_EXTEND_RATE_WARM ? poll_ns / 5 : poll_ns;
}

void lsm_extend_latency_add(struct lsm_extend_latency *l, uint64_t ns)
{
    l->ns[l->head] = ns;
    l->head = (l->head + 1) % LSM_EXTEND_LAT_SAMPLES;
    if (l->n < LSM_EXTEND_LAT_SAMPLES)
        l->n++;
}

uint64_t lsm_extend_latency_recent(const struct lsm_extend_latency *l)
{
    uint64_t m = 0;
    /* Too few to know how much it varies: 0, so the caller plans with the
     * default (at least as large as any seen, see lsm_extend_headroom). */
    if (l->n < LSM_EXTEND_LAT_MIN)
        return 0;
    for (unsigned i = 0; i < l->n; i++)
        m = MAX(m, l->ns[i]);
    return m;
}

/* ---- resuming ---- */

bool lsm_extend_may_resume(const struct lsm_extend_resume_drive *d, unsigned n,
                           const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    bool any = false;
    for (unsigned i = 0; i < n; i++) {
        if (d[i].paused_other) {
            *why = "a drive reported an I/O error other than ENOSPC";
            return false;
        }
        if (!d[i].paused_enospc)
            continue;
        any = true;
        if (d[i].failed) {
            *why = "extending a drive that ran out of space failed";
            return false;
        }
        if (!d[i].managed) {
            *why = "a drive the extender does not manage ran out of space";
            return false;
        }
        if (!d[i].extended) {
            *why = "a drive that ran out of space has not been extended since";
            return false;
        }
        if (d[i].at_max) {
            *why = "a drive that ran out of space is at its maximum size";
            return false;
        }
        if (d[i].free_bytes < d[i].headroom) {
            *why = "a drive that ran out of space has not got its headroom yet";
            return false;
        }
    }
    if (!any) {
        *why = "no drive reported ENOSPC";
        return false;
    }
    *why = NULL;
    return true;
}
