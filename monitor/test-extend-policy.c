/* Unit tests of the extender's policy (extend-policy.c) and latency
 * histogram (lat-hist.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "error.h"
#include "extend-policy.h"
#include "lat-hist.h"
#include "util.h"

#define SEC 1000000000ULL

static struct lsm_extend_policy pol(void)
{
    struct lsm_extend_policy p;
    lsm_extend_policy_default(&p);
    return p;
}

static void test_defaults(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    assert_int_equal(lsm_extend_policy_check(&p), 0);
    assert_int_equal(lsm_extend_chunk(&p, false), 1 * GiB);
    assert_int_equal(lsm_extend_chunk(&p, true), 2 * GiB);
    p.extent = 3 * MiB;
    assert_int_equal(lsm_extend_policy_check(&p), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "power of two"));
    p = pol();
    p.safety = 0.5;
    assert_int_equal(lsm_extend_policy_check(&p), -EINVAL);
    p = pol();
    p.chunk = 64 * MiB;     /* below one 128 MiB extent */
    assert_int_equal(lsm_extend_policy_check(&p), -EINVAL);
}

/* headroom = max(watermark, rate x latency x safety) */
static void test_headroom(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    /* Idle: the watermark. */
    assert_int_equal(lsm_extend_headroom(&p, 0, 3 * SEC, false), 512 * MiB);
    /* 50 MiB/s x 2 s x 2 = 200 MiB < 512 MiB. */
    assert_int_equal(lsm_extend_headroom(&p, 50.0 * MiB, 2 * SEC, false), 512 * MiB);
    /* 200 MiB/s x 3 s x 2 = 1200 MiB. */
    assert_int_equal(lsm_extend_headroom(&p, 200.0 * MiB, 3 * SEC, false), 1200 * MiB);
    /* No latency measured yet: the default (6 s). */
    assert_int_equal(lsm_extend_headroom(&p, 200.0 * MiB, 0, false), 2400 * MiB);
    /* Replicating: the larger floor. */
    assert_int_equal(lsm_extend_headroom(&p, 0, 3 * SEC, true), 3 * GiB);
    assert_int_equal(lsm_extend_headroom(&p, 200.0 * MiB, 10 * SEC, true), 4000 * MiB);
    /* Absurd rates saturate instead of wrapping. */
    assert_int_equal(lsm_extend_headroom(&p, 1e30, 10 * SEC, false), UINT64_MAX);
}

static void test_measured(void **state)
{
    (void)state;
    struct lsm_extend_policy p;
    lsm_extend_policy_default(&p);
    /* 100 GiB at 64 KiB clusters: qemu-img measure says 107390828544 bytes
     * fully allocated; plus 400 MiB of margin, rounded to the 128 MiB
     * extent: 100.5 GiB instead of 1.1 x 100 GiB = 110 GiB. */
    uint64_t full = 107390828544ULL;
    uint64_t m = lsm_extend_measured(100 * GiB, full, 100 * GiB, 5 * GiB);
    assert_int_equal(m, full + 400 * MiB);
    assert_int_equal(lsm_extend_max_size(&p, 100 * GiB, m), 100 * GiB + 512 * MiB);
    assert_true(lsm_extend_max_size(&p, 100 * GiB, m) >= full);
    /* small: the margin is at least 1 MiB */
    assert_int_equal(lsm_extend_measured(128 * MiB, 128 * MiB + 65536 * 4, 128 * MiB, 0),
                     128 * MiB + 65536 * 4 + 1 * MiB);
    /* every doubt: the ratio */
    assert_int_equal(lsm_extend_measured(100 * GiB, 0, 100 * GiB, 0), 0);
    assert_int_equal(lsm_extend_measured(0, full, 100 * GiB, 0), 0);
    assert_int_equal(lsm_extend_measured(100 * GiB, full, 90 * GiB, 0), 0);  /* resized */
    assert_int_equal(lsm_extend_measured(100 * GiB, full, 100 * GiB, full + 1), 0);
    assert_int_equal(lsm_extend_measured(100 * GiB, 99 * GiB, 100 * GiB, 0), 0);
    assert_true(lsm_extend_max_size(&p, 100 * GiB, 0) >= 110 * GiB);
}

static void test_max_size(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    /* 1.1 x 10 GiB = 11 GiB, a multiple of 128 MiB. */
    assert_int_equal(lsm_extend_max_size(&p, 10 * GiB, 0), 11 * GiB);
    /* 1.1 x 1 GiB = 1126.4 MiB -> 1152 MiB. */
    assert_int_equal(lsm_extend_max_size(&p, 1 * GiB, 0), 1152 * MiB);
    /* A measured full size wins, rounded to the extent. */
    assert_int_equal(lsm_extend_max_size(&p, 10 * GiB, 10 * GiB + 2 * MiB), 10 * GiB + 128 * MiB);
    p.extent = 4 * MiB;
    assert_int_equal(lsm_extend_max_size(&p, 1 * GiB, 0), 1128 * MiB);
}

static void test_format_grows(void **state)
{
    (void)state;
    assert_true(lsm_extend_format_grows("qcow2"));
    assert_true(lsm_extend_format_grows(NULL));   /* unknown: as before */
    assert_false(lsm_extend_format_grows("raw"));
}

static void test_threshold_and_needed(void **state)
{
    (void)state;
    uint64_t max = 11 * GiB;
    assert_int_equal(lsm_extend_threshold(2 * GiB, 512 * MiB, max), 1536 * MiB);
    /* headroom larger than the volume: threshold 1 (fires at once). */
    assert_int_equal(lsm_extend_threshold(256 * MiB, 512 * MiB, max), 1);
    /* At the maximum: no threshold. */
    assert_int_equal(lsm_extend_threshold(max, 512 * MiB, max), 0);

    assert_false(lsm_extend_needed(1 * GiB, 2 * GiB, 512 * MiB, max, false));
    assert_true(lsm_extend_needed(1600 * MiB, 2 * GiB, 512 * MiB, max, false));
    /* Exactly at the threshold: free == headroom is still enough. */
    assert_false(lsm_extend_needed(1536 * MiB, 2 * GiB, 512 * MiB, max, false));
    /* Allocation past the end (a write that failed) needs one. */
    assert_true(lsm_extend_needed(3 * GiB, 2 * GiB, 512 * MiB, max, false));
    /* An event says so even if the allocation read back is lower. */
    assert_true(lsm_extend_needed(1 * GiB, 2 * GiB, 512 * MiB, max, true));
    /* Never past the maximum, event or not. */
    assert_false(lsm_extend_needed(max, max, 512 * MiB, max, true));
}

static void test_next_size(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    uint64_t max = 11 * GiB;
    /* The usual case (at the threshold): one chunk more. */
    assert_int_equal(lsm_extend_next_size(&p, 1536 * MiB, 2 * GiB, 512 * MiB, max, false),
                     3 * GiB);
    /* Replicating: two. */
    assert_int_equal(lsm_extend_next_size(&p, 1536 * MiB, 2 * GiB, 512 * MiB, max, true),
                     4 * GiB);
    /* Written past the threshold meanwhile: the headroom and a whole chunk
     * stay free after it, rounded up to the extent. */
    assert_int_equal(lsm_extend_next_size(&p, 1600 * MiB, 2 * GiB, 512 * MiB, max, false),
                     3200 * MiB);
    /* Far behind (missed events): allocation + headroom + chunk, rounded up. */
    assert_int_equal(lsm_extend_next_size(&p, 2 * GiB + 1, 2 * GiB, 512 * MiB, max, false),
                     3 * GiB + 512 * MiB + 128 * MiB);
    /* A large adaptive headroom grows the step with it. */
    assert_int_equal(lsm_extend_next_size(&p, 1 * GiB, 2 * GiB, 3 * GiB, max, false),
                     5 * GiB);
    /* Capped at the maximum... */
    assert_int_equal(lsm_extend_next_size(&p, 10 * GiB, 10 * GiB + 512 * MiB, 512 * MiB, max,
                                          false), max);
    /* ... and at the maximum, unchanged. */
    assert_int_equal(lsm_extend_next_size(&p, max, max, 512 * MiB, max, false), max);
    /* Odd physical sizes are rounded to the extent. */
    assert_int_equal(lsm_extend_next_size(&p, 0, 100 * MiB, 512 * MiB, max, false),
                     1536 * MiB);
}

static void test_growth(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    /* rate x latency x safety, no minimum. */
    assert_int_equal(lsm_extend_growth(&p, 0, 3 * SEC), 0);
    assert_int_equal(lsm_extend_growth(&p, 200.0 * MiB, 3 * SEC), 1200 * MiB);
    /* No measured latency: the default (6 s). */
    assert_int_equal(lsm_extend_growth(&p, 100.0 * MiB, 0), 1200 * MiB);
    assert_int_equal(lsm_extend_growth(&p, 1e30, 10 * SEC), UINT64_MAX);
}

static void test_next_size_growing(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    uint64_t max = 100 * GiB;
    /* No growth: the same as lsm_extend_next_size. */
    assert_int_equal(lsm_extend_next_size_growing(&p, 1536 * MiB, 2 * GiB, 512 * MiB, 0, max,
                                                  false),
                     lsm_extend_next_size(&p, 1536 * MiB, 2 * GiB, 512 * MiB, max, false));
    /* 200 MiB/s, 3 s: headroom 1200 MiB and growth 1200 MiB on top of the
     * allocation, and a chunk: 10 GiB + 2400 MiB + 1 GiB, rounded up. */
    uint64_t g = lsm_extend_growth(&p, 200.0 * MiB, 3 * SEC);
    uint64_t h = lsm_extend_headroom(&p, 200.0 * MiB, 3 * SEC, false);
    assert_int_equal(lsm_extend_next_size_growing(&p, 10 * GiB, 11 * GiB, h, g, max, false),
                     10 * GiB + 2432 * MiB + 1 * GiB);
    /* So after an extension as slow as the latency planned for, at the
     * rate planned for, the headroom and a chunk are still free. */
    uint64_t next = lsm_extend_next_size_growing(&p, 10 * GiB, 11 * GiB, h, g, max, false);
    uint64_t alloc_after = 10 * GiB + 600 * MiB;
    assert_true(next - alloc_after >= h + p.chunk);
    /* Growth never takes it past the maximum, and a growth that would
     * overflow saturates there. */
    assert_int_equal(lsm_extend_next_size_growing(&p, 98 * GiB, 99 * GiB, h, g, max, false),
                     max);
    assert_int_equal(lsm_extend_next_size_growing(&p, 10 * GiB, 11 * GiB, h, UINT64_MAX, max,
                                                  true), max);
    /* A small growth never shrinks the step below one chunk. */
    assert_int_equal(lsm_extend_next_size_growing(&p, 1 * GiB, 3 * GiB, 512 * MiB, 1 * MiB,
                                                  max, false), 4 * GiB);
    /* At the maximum, unchanged. */
    assert_int_equal(lsm_extend_next_size_growing(&p, max, max, h, g, max, false), max);
}

static void test_initial_size(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    /* A new overlay (nothing in use): watermark + chunk while replicating
     * (3 GiB + 2 GiB), so the threshold sits one chunk above the start. */
    assert_int_equal(lsm_extend_initial_size(&p, 0, 100 * GiB, true), 5 * GiB);
    /* Not replicating: 512 MiB + 1 GiB. */
    assert_int_equal(lsm_extend_initial_size(&p, 0, 100 * GiB, false), 1536 * MiB);
    /* Data in use already: on top of it, rounded up to the extent. */
    assert_int_equal(lsm_extend_initial_size(&p, 100 * MiB + 1, 100 * GiB, true),
                     5 * GiB + 128 * MiB);
    /* Never beyond the maximum (1.1 x 1 GiB rounded up to 128 MiB). */
    assert_int_equal(lsm_extend_initial_size(&p, 0, 1 * GiB, true), 1152 * MiB);
    /* The test's policy in migrate-block: 1 MiB extent and chunk, 2 MiB
     * watermark: 3 MiB. */
    p.extent = p.chunk = p.chunk_replicating = 1 * MiB;
    p.watermark = p.watermark_replicating = 2 * MiB;
    assert_int_equal(lsm_extend_initial_size(&p, 0, 64 * MiB, true), 3 * MiB);
}

static void test_classify_and_retry(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    assert_int_equal(lsm_extend_classify(0), LSM_EXTEND_FAIL_NONE);
    assert_int_equal(lsm_extend_classify(-ENOSPC), LSM_EXTEND_FAIL_NO_SPACE);
    assert_int_equal(lsm_extend_classify(-EDQUOT), LSM_EXTEND_FAIL_NO_SPACE);
    assert_int_equal(lsm_extend_classify(-ENOENT), LSM_EXTEND_FAIL_FATAL);
    assert_int_equal(lsm_extend_classify(-EACCES), LSM_EXTEND_FAIL_FATAL);
    assert_int_equal(lsm_extend_classify(-EIO), LSM_EXTEND_FAIL_TRANSIENT);
    assert_int_equal(lsm_extend_classify(-ETIMEDOUT), LSM_EXTEND_FAIL_TRANSIENT);
    assert_int_equal(lsm_extend_classify(-EAGAIN), LSM_EXTEND_FAIL_TRANSIENT);
    assert_string_equal(lsm_extend_failure_name(LSM_EXTEND_FAIL_NO_SPACE), "no-space");

    /* 0.5, 1, 2, 4, 8 s, then no more. */
    assert_int_equal(lsm_extend_retry_delay(&p, 0), 0);
    assert_int_equal(lsm_extend_retry_delay(&p, 1), SEC / 2);
    assert_int_equal(lsm_extend_retry_delay(&p, 2), SEC);
    assert_int_equal(lsm_extend_retry_delay(&p, 4), 4 * SEC);
    assert_int_equal(lsm_extend_retry_delay(&p, 5), 8 * SEC);
    assert_int_equal(lsm_extend_retry_delay(&p, 6), 0);
    p.max_retries = 100;
    assert_int_equal(lsm_extend_retry_delay(&p, 90), 8 * SEC);
}

static void test_trigger_merges(void **state)
{
    (void)state;
    struct lsm_extend_trigger t = { 0 };
    assert_true(lsm_extend_trigger_event(&t));
    /* A second event before the extension starts, and two while it runs:
     * merged, no new extension. */
    assert_false(lsm_extend_trigger_event(&t));
    lsm_extend_trigger_start(&t);
    assert_false(lsm_extend_trigger_event(&t));
    assert_false(lsm_extend_trigger_event(&t));
    assert_int_equal(t.merged, 3);
    lsm_extend_trigger_done(&t);
    /* After it, a new event starts a new one. */
    assert_true(lsm_extend_trigger_event(&t));
}

static void test_rate(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    struct lsm_extend_rate r = { 0 };
    assert_true(lsm_extend_rate_bps(&r, 10 * SEC) == 0);
    lsm_extend_rate_add(&r, &p, 0, 0);
    assert_true(lsm_extend_rate_bps(&r, 10 * SEC) == 0);
    /* 100 MiB/s for 5 s, sampled every second. */
    for (uint64_t s = 1; s <= 5; s++)
        lsm_extend_rate_add(&r, &p, s * SEC, s * 100 * MiB);
    double bps = lsm_extend_rate_bps(&r, 10 * SEC);
    assert_true(bps > 99.0 * MiB && bps < 101.0 * MiB);
    /* Then 300 MiB/s: a 2 s window sees only the new rate. */
    for (uint64_t s = 6; s <= 40; s++)
        lsm_extend_rate_add(&r, &p, s * SEC, 500 * MiB + (s - 5) * 300 * MiB);
    bps = lsm_extend_rate_bps(&r, 2 * SEC);
    assert_true(bps > 299.0 * MiB && bps < 301.0 * MiB);
    /* Two samples further apart than the window still give a rate. */
    struct lsm_extend_rate r2 = { 0 };
    lsm_extend_rate_add(&r2, &p, 0, 0);
    lsm_extend_rate_add(&r2, &p, 20 * SEC, 2000 * MiB);
    bps = lsm_extend_rate_bps(&r2, 10 * SEC);
    assert_true(bps > 99.0 * MiB && bps < 101.0 * MiB);
    /* Shrinking allocation (a new, smaller top after a pivot): 0, not
     * a huge unsigned difference. */
    lsm_extend_rate_add(&r2, &p, 21 * SEC, 10 * MiB);
    assert_true(lsm_extend_rate_bps(&r2, 10 * SEC) == 0);

    /* The peak is held: a burst of 400 MiB/s, then 30 s idle, still
     * plans for 400; after the hold (60 s) it is forgotten. */
    struct lsm_extend_rate r3 = { 0 };
    uint64_t a = 0;
    for (uint64_t s = 0; s <= 10; s++) {
        lsm_extend_rate_add(&r3, &p, s * SEC, a);
        a += 400 * MiB;
    }
    a -= 400 * MiB;
    for (uint64_t s = 11; s <= 40; s++)
        lsm_extend_rate_add(&r3, &p, s * SEC, a);
    bps = lsm_extend_rate_recent(&r3);
    assert_true(bps > 399.0 * MiB && bps < 401.0 * MiB);
    for (uint64_t s = 41; s <= 80; s++)
        lsm_extend_rate_add(&r3, &p, s * SEC, a);
    assert_true(lsm_extend_rate_recent(&r3) == 0);
}

/* A side is sampled five times as often until its rate has a few samples. */
static void test_poll_warm(void **state)
{
    (void)state;
    struct lsm_extend_policy p = pol();
    struct lsm_extend_rate r = { 0 };
    const uint64_t poll = SEC / 2;
    for (unsigned k = 0; k < LSM_EXTEND_RATE_WARM; k++) {
        assert_int_equal(lsm_extend_poll_ns(&r, poll), poll / 5);
        lsm_extend_rate_add(&r, &p, k * (poll / 5), k * 10 * MiB);
    }
    assert_int_equal(lsm_extend_poll_ns(&r, poll), poll);
    /* by then the rate is known: 10 MiB per 100 ms */
    double bps = lsm_extend_rate_bps(&r, 2 * SEC);
    assert_true(bps > 99.0 * MiB && bps < 101.0 * MiB);
}

static void test_latency(void **state)
{
    (void)state;
    struct lsm_extend_latency l = { 0 };
    assert_int_equal(lsm_extend_latency_recent(&l), 0);
    lsm_extend_latency_add(&l, 3 * SEC);
    lsm_extend_latency_add(&l, 1 * SEC);
    /* Two are not enough to plan with. */
    assert_int_equal(lsm_extend_latency_recent(&l), 0);
    lsm_extend_latency_add(&l, 1 * SEC);
    assert_int_equal(lsm_extend_latency_recent(&l), 3 * SEC);
    /* The slow one ages out after LSM_EXTEND_LAT_SAMPLES newer ones. */
    for (int i = 0; i < LSM_EXTEND_LAT_SAMPLES; i++)
        lsm_extend_latency_add(&l, SEC / 2);
    assert_int_equal(lsm_extend_latency_recent(&l), SEC / 2);
}

static void test_resume(void **state)
{
    (void)state;
    const char *why;
    struct lsm_extend_resume_drive ok = {
        .paused_enospc = true, .managed = true, .extended = true,
        .free_bytes = 1 * GiB, .headroom = 512 * MiB,
    };
    struct lsm_extend_resume_drive idle = { .managed = true, .free_bytes = 0, .headroom = 1 };
    struct lsm_extend_resume_drive d[2] = { ok, idle };
    assert_true(lsm_extend_may_resume(d, 2, &why));
    assert_null(why);

    /* Not paused for ENOSPC at all. */
    d[0].paused_enospc = false;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    assert_non_null(strstr(why, "no drive reported ENOSPC"));
    /* Another error on some drive. */
    d[0] = ok;
    d[1].paused_other = true;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    assert_non_null(strstr(why, "other than ENOSPC"));
    d[1] = idle;
    /* A drive we do not extend. */
    d[1] = ok;
    d[1].managed = false;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    assert_non_null(strstr(why, "does not manage"));
    /* Not extended since the pause. */
    d[1] = ok;
    d[1].extended = false;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    /* Extended but not enough yet. */
    d[1] = ok;
    d[1].free_bytes = 100 * MiB;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    assert_non_null(strstr(why, "headroom"));
    /* Its extension failed. */
    d[1] = ok;
    d[1].failed = true;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    assert_non_null(strstr(why, "failed"));
    /* At its maximum. */
    d[1] = ok;
    d[1].at_max = true;
    assert_false(lsm_extend_may_resume(d, 2, &why));
    /* Both paused drives fine. */
    d[1] = ok;
    assert_true(lsm_extend_may_resume(d, 2, NULL));
}

static void test_lat_hist(void **state)
{
    (void)state;
    struct lsm_lat_hist h = { 0 };
    assert_int_equal(lsm_lat_hist_percentile(&h, 50), 0);
    for (int i = 1; i <= 100; i++)
        lsm_lat_hist_add(&h, (uint64_t)i * 10000000ULL);   /* 10 ms .. 1 s */
    assert_int_equal(h.count, 100);
    assert_int_equal(h.min_ns, 10000000ULL);
    assert_int_equal(h.max_ns, 1000000000ULL);
    assert_int_equal(lsm_lat_hist_mean(&h), 505000000ULL);
    /* Never below the true percentile, at most 25% above it. */
    uint64_t p50 = lsm_lat_hist_percentile(&h, 50);
    assert_true(p50 >= 500000000ULL && p50 <= 625000000ULL);
    uint64_t p100 = lsm_lat_hist_percentile(&h, 100);
    assert_int_equal(p100, 1000000000ULL);
    uint64_t p1 = lsm_lat_hist_percentile(&h, 1);
    assert_true(p1 >= 10000000ULL && p1 <= 12500000ULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_headroom),
        cmocka_unit_test(test_max_size),
        cmocka_unit_test(test_measured),
        cmocka_unit_test(test_format_grows),
        cmocka_unit_test(test_threshold_and_needed),
        cmocka_unit_test(test_next_size),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_next_size_growing),
        cmocka_unit_test(test_initial_size),
        cmocka_unit_test(test_classify_and_retry),
        cmocka_unit_test(test_trigger_merges),
        cmocka_unit_test(test_rate),
        cmocka_unit_test(test_poll_warm),
        cmocka_unit_test(test_latency),
        cmocka_unit_test(test_resume),
        cmocka_unit_test(test_lat_hist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
