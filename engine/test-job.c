/* Unit tests of the job library's pure parts: token buckets in a tree
 * (time passed in), the memory budget, and the job object's states,
 * progress snapshots, cancel and wait (small functions on real threads). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "error.h"
#include "job.h"
#include "limiter.h"
#include "util.h"

#define S 1000000000ULL   /* ns in a second */

/* ---- limiter ---- */

static void test_limiter_unlimited(void **state)
{
    (void)state;
    assert_int_equal(lsm_limiter_take(NULL, 1 * GiB, 1), 0);
    struct lsm_limiter *l;
    assert_int_equal(lsm_limiter_create(0, NULL, &l), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(lsm_limiter_take(l, 1 * GiB, 1 + (uint64_t)i), 0);
    assert_int_equal(lsm_limiter_rate(l), 0);
    lsm_limiter_free(l);
}

/* Taking as fast as allowed for 10 s of simulated time gives the rate
 * (plus at most one burst). */
static uint64_t drain(struct lsm_limiter *l, uint64_t req, uint64_t t0, uint64_t t1)
{
    uint64_t t = t0, got = 0;
    while (t < t1) {
        uint64_t w = lsm_limiter_take(l, req, t);
        if (w == 0)
            got += req;
        else
            t += w;
    }
    return got;
}

static void test_limiter_rate(void **state)
{
    (void)state;
    struct lsm_limiter *l;
    assert_int_equal(lsm_limiter_create(100 * MiB, NULL, &l), 0);
    uint64_t got = drain(l, 1 * MiB, S, 11 * S);
    /* 1000 MiB in 10 s, plus the initial burst of 10 MiB */
    assert_true(got >= 1000 * MiB && got <= 1012 * MiB);
    lsm_limiter_free(l);
}

static void test_limiter_burst_min(void **state)
{
    (void)state;
    struct lsm_limiter *l;
    /* 1 MiB/s: the burst is 1 MiB (not a tenth of the rate), so one 1 MiB
     * request passes at once and the next waits about a second */
    assert_int_equal(lsm_limiter_create(1 * MiB, NULL, &l), 0);
    assert_int_equal(lsm_limiter_take(l, 1 * MiB, S), 0);
    uint64_t w = lsm_limiter_take(l, 1 * MiB, S);
    assert_true(w > S - S / 100 && w <= S);
    /* a request larger than the burst passes once the bucket is full */
    assert_int_equal(lsm_limiter_take(l, 4 * MiB, 2 * S), 0);
    w = lsm_limiter_take(l, 1 * MiB, 2 * S);
    assert_true(w >= 4 * S - S / 100);
    lsm_limiter_free(l);
}

static void test_limiter_tree(void **state)
{
    (void)state;
    struct lsm_limiter *g, *a, *b;
    assert_int_equal(lsm_limiter_create(100 * MiB, NULL, &g), 0);
    assert_int_equal(lsm_limiter_create(0, g, &a), 0);
    assert_int_equal(lsm_limiter_create(20 * MiB, g, &b), 0);
    /* a alone is held to the global rate */
    uint64_t got = drain(a, 1 * MiB, S, 6 * S);
    assert_true(got >= 500 * MiB && got <= 512 * MiB);
    /* b is held to its own rate, and what it takes is taken from g too */
    uint64_t t = 10 * S, got_a = 0, got_b = 0;
    /* both ask every millisecond, the one first in turn alternating */
    for (unsigned i = 0; t < 20 * S; i++, t += S / 1000) {
        for (unsigned k = 0; k < 2; k++) {
            if ((i + k) % 2) {
                while (!lsm_limiter_take(a, 256 * KiB, t))
                    got_a += 256 * KiB;
            } else {
                while (!lsm_limiter_take(b, 256 * KiB, t))
                    got_b += 256 * KiB;
            }
        }
    }
    print_message("tree: a %" PRIu64 " MiB, b %" PRIu64 " MiB\n", (uint64_t)(got_a / MiB), (uint64_t)(got_b / MiB));
    assert_true(got_b >= 195 * MiB && got_b <= 205 * MiB);
    assert_true(got_a + got_b >= 990 * MiB && got_a + got_b <= 1015 * MiB);
    /* a waiting child takes nothing from its parent */
    lsm_limiter_set_rate(b, 1 * MiB);
    uint64_t t2 = 30 * S;
    assert_int_equal(lsm_limiter_take(b, 1 * MiB, t2), 0);      /* fresh burst */
    assert_true(lsm_limiter_take(b, 1 * MiB, t2) > 0);          /* b empty */
    /* g has its full burst (10 MiB) left for a */
    for (int i = 0; i < 9; i++)
        assert_int_equal(lsm_limiter_take(a, 1 * MiB, t2), 0);
    lsm_limiter_free(b);
    lsm_limiter_free(a);
    lsm_limiter_free(g);
}

static void test_limiter_set_rate(void **state)
{
    (void)state;
    struct lsm_limiter *l;
    assert_int_equal(lsm_limiter_create(10 * MiB, NULL, &l), 0);
    uint64_t got = drain(l, 1 * MiB, S, 3 * S);
    assert_true(got >= 20 * MiB && got <= 22 * MiB);
    lsm_limiter_set_rate(l, 50 * MiB);
    assert_int_equal(lsm_limiter_rate(l), 50 * MiB);
    got = drain(l, 1 * MiB, 3 * S, 5 * S);
    assert_true(got >= 99 * MiB && got <= 106 * MiB);
    lsm_limiter_set_rate(l, 0);
    assert_int_equal(lsm_limiter_take(l, 1 * GiB, 5 * S), 0);
    lsm_limiter_set_rate(l, 10 * MiB);          /* from unlimited: a full burst */
    assert_int_equal(lsm_limiter_take(l, 1 * MiB, 5 * S), 0);
    lsm_limiter_free(l);
}

/* ---- budget ---- */

static void test_budget(void **state)
{
    (void)state;
    uint64_t used, total;
    lsm_budget_init(0);
    assert_int_equal(lsm_budget_reserve(1 * MiB, 8 * MiB, 1 * MiB), 8 * MiB);
    lsm_budget_release(8 * MiB);
    lsm_budget_usage(&used, &total);
    assert_int_equal(used, 0);
    assert_int_equal(total, 0);

    lsm_budget_init(10 * MiB);
    assert_int_equal(lsm_budget_reserve(1 * MiB, 4 * MiB, 1 * MiB), 4 * MiB);
    assert_int_equal(lsm_budget_reserve(1 * MiB, 4 * MiB, 1 * MiB), 4 * MiB);
    /* 2 MiB free: less than wanted, in units */
    assert_int_equal(lsm_budget_reserve(1 * MiB, 4 * MiB, 3 * MiB / 2), 3 * MiB / 2);
    lsm_budget_usage(&used, &total);
    assert_int_equal(used, 19 * MiB / 2);
    assert_int_equal(total, 10 * MiB);
    /* half a MiB free: not even the minimum */
    assert_int_equal(lsm_budget_reserve(1 * MiB, 4 * MiB, 1 * MiB), 0);
    /* the minimum, when free, even if a unit does not fit */
    assert_int_equal(lsm_budget_reserve(256 * KiB, 1 * MiB, 1 * MiB), 256 * KiB);
    lsm_budget_release(4 * MiB);
    lsm_budget_release(4 * MiB);
    lsm_budget_release(3 * MiB / 2);
    lsm_budget_release(256 * KiB);
    lsm_budget_usage(&used, NULL);
    assert_int_equal(used, 0);
    lsm_budget_release(1);          /* a caller's bug: does not wrap */
    lsm_budget_usage(&used, NULL);
    assert_int_equal(used, 0);
    lsm_budget_init(0);
}

/* ---- jobs ---- */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Counts to total in steps, polling the cancel flag. */
static int counting_fn(struct lsm_job *job, void *arg)
{
    uint64_t total = *(uint64_t *)arg;
    struct lsm_job_progress p = { .bytes_total = total };
    lsm_job_set_phase(job, "counting");
    while (p.bytes_done < total) {
        if (lsm_job_cancelled(job))
            return lsm_error(-ECANCELED, "counting stopped at %" PRIu64, p.bytes_done);
        uint64_t wait = lsm_limiter_take(lsm_job_limiter(job), 1 * MiB, lsm_now_ns());
        if (wait) {
            sleep_ms((unsigned)MIN(wait / 1000000 + 1, 20));
            continue;
        }
        p.bytes_done += 1 * MiB;
        p.bytes_written += 1 * MiB;
        lsm_job_progress(job, &p);
    }
    return 0;
}

static int failing_fn(struct lsm_job *job, void *arg)
{
    (void)job;
    (void)arg;
    return lsm_error(-ENOSPC, "no room on the destination");
}

static void test_job_finish(void **state)
{
    (void)state;
    uint64_t total = 50 * MiB;
    struct lsm_job *j;
    struct lsm_job_opts o = { .kind = "count" };
    assert_int_equal(lsm_job_create(&o, counting_fn, &total, NULL, &j), 0);
    struct lsm_job_status st;
    lsm_job_get_status(j, &st);
    assert_int_equal(st.state, LSM_JOB_INIT);
    assert_string_equal(lsm_job_kind(j), "count");
    assert_int_equal(lsm_job_wait(j, 10), -EINVAL);     /* never started */
    assert_int_equal(lsm_job_start(j), 0);
    assert_int_equal(lsm_job_start(j), -EBUSY);
    assert_int_equal(lsm_job_wait(j, 5000), 0);
    assert_int_equal(lsm_job_result(j), 0);
    lsm_job_get_status(j, &st);
    assert_int_equal(st.state, LSM_JOB_FINISHED);
    assert_string_equal(st.phase, "counting");
    assert_int_equal(st.progress.bytes_done, total);
    assert_true(st.percent == 100.0);
    assert_true(st.eta_s == 0);
    lsm_job_free(j);
}

static void test_job_rate_cancel(void **state)
{
    (void)state;
    uint64_t total = 1 * TiB;
    struct lsm_limiter *g;
    assert_int_equal(lsm_limiter_create(40 * MiB, NULL, &g), 0);
    struct lsm_job *j;
    struct lsm_job_opts o = { .kind = "count", .parent = g };
    assert_int_equal(lsm_job_create(&o, counting_fn, &total, NULL, &j), 0);
    assert_int_equal(lsm_job_start(j), 0);
    assert_int_equal(lsm_job_wait(j, 1500), -ETIMEDOUT);
    struct lsm_job_status st;
    lsm_job_get_status(j, &st);
    assert_int_equal(st.state, LSM_JOB_RUNNING);
    /* the global limit holds it: 40 MiB/s, rate over the last seconds */
    assert_true(st.rate > 30.0 * MiB && st.rate < 50.0 * MiB);
    assert_true(st.eta_s > 0);
    assert_true(st.percent < 1);
    /* the job's own limit, lower */
    assert_int_equal(lsm_job_set_rate_limit(j, 10 * MiB), 0);
    lsm_job_get_status(j, &st);
    assert_int_equal(st.rate_limit, 10 * MiB);
    lsm_job_get_status(j, &st);
    uint64_t d0 = st.progress.bytes_done;
    sleep_ms(1000);
    lsm_job_get_status(j, &st);
    uint64_t d1 = st.progress.bytes_done;
    assert_true(d1 - d0 <= 14 * MiB);
    uint64_t t0 = lsm_now_ns();
    lsm_job_cancel(j);
    lsm_job_get_status(j, &st);
    assert_true(st.state == LSM_JOB_ABORTING || st.state == LSM_JOB_ABORTED);
    assert_int_equal(lsm_job_wait(j, 1000), 0);
    assert_true(lsm_now_ns() - t0 < S);
    assert_int_equal(lsm_job_result(j), -ECANCELED);
    lsm_job_get_status(j, &st);
    assert_int_equal(st.state, LSM_JOB_ABORTED);
    assert_int_equal(st.error, -ECANCELED);
    assert_non_null(strstr(st.message, "counting stopped"));
    lsm_job_free(j);
    lsm_limiter_free(g);
}

static void test_job_fail(void **state)
{
    (void)state;
    struct lsm_job *j;
    struct lsm_job_opts o = { .kind = "fail" };
    assert_int_equal(lsm_job_create(&o, failing_fn, NULL, NULL, &j), 0);
    assert_int_equal(lsm_job_start(j), 0);
    assert_int_equal(lsm_job_wait(j, -1), 0);
    struct lsm_job_status st;
    lsm_job_get_status(j, &st);
    assert_int_equal(st.state, LSM_JOB_FAILED);
    assert_int_equal(st.error, -ENOSPC);
    assert_string_equal(st.message, "no room on the destination");
    assert_string_equal(lsm_job_state_name(st.state), "failed");
    lsm_job_free(j);
}

static int freed;
static void free_counter(void *p)
{
    (void)p;
    freed++;
}

static void test_job_cancel_before_start(void **state)
{
    (void)state;
    uint64_t total = 1 * MiB;
    struct lsm_job *j;
    assert_int_equal(lsm_job_create(NULL, counting_fn, &total, free_counter, &j), 0);
    lsm_job_cancel(j);
    assert_int_equal(lsm_job_start(j), -ECANCELED);
    assert_int_equal(lsm_job_wait(j, -1), 0);
    assert_int_equal(lsm_job_result(j), -ECANCELED);
    lsm_job_free(j);
    assert_int_equal(freed, 1);
    /* free of a running job cancels and waits */
    total = 1 * TiB;
    assert_int_equal(lsm_job_create(NULL, counting_fn, &total, free_counter, &j), 0);
    assert_int_equal(lsm_job_start(j), 0);
    lsm_job_free(j);
    assert_int_equal(freed, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limiter_unlimited),
        cmocka_unit_test(test_limiter_rate),
        cmocka_unit_test(test_limiter_burst_min),
        cmocka_unit_test(test_limiter_tree),
        cmocka_unit_test(test_limiter_set_rate),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_job_finish),
        cmocka_unit_test(test_job_rate_cancel),
        cmocka_unit_test(test_job_fail),
        cmocka_unit_test(test_job_cancel_before_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
