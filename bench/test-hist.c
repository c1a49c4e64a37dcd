/* Unit tests for bench/hist.c (error bound, percentiles, merge) and
 * bench/pattern.c (verify catches misplaced and corrupted blocks). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "error.h"
#include "hist.h"
#include "pattern.h"
#include "prng.h"

/* Every value maps to a bucket that contains it, and the reported value
 * is within 1/128 of it (HDR-style: 64 linear buckets per power of two). */
static void check_value(uint64_t v)
{
    unsigned i = bench_hist_index(v);
    assert_true(i < BENCH_HIST_BUCKETS);
    uint64_t low = bench_hist_bucket_low(i), w = bench_hist_bucket_width(i);
    assert_true(v >= low);
    assert_true(v - low < w);
    uint64_t rep = bench_hist_bucket_value(i);
    uint64_t err = rep > v ? rep - v : v - rep;
    /* err / v <= 1/128, in integers */
    assert_true((unsigned __int128)err * 128 <= (unsigned __int128)v);
}

static void test_error_bound(void **state)
{
    (void)state;
    for (uint64_t v = 0; v < 1 << 20; v++)
        check_value(v);
    for (int k = 20; k < 64; k++) {
        uint64_t p = 1ULL << k;
        check_value(p - 1);
        check_value(p);
        check_value(p + 1);
        check_value(p + (p >> 1));
    }
    check_value(UINT64_MAX);
    struct bench_prng r;
    bench_prng_seed(&r, 42);
    for (int n = 0; n < 1000000; n++) {
        uint64_t v = bench_prng_next(&r) >> bench_prng_below(&r, 64);
        check_value(v);
    }
}

static void test_buckets_contiguous(void **state)
{
    (void)state;
    for (unsigned i = 0; i + 1 < BENCH_HIST_BUCKETS; i++)
        assert_int_equal(bench_hist_bucket_low(i) + bench_hist_bucket_width(i),
                         bench_hist_bucket_low(i + 1));
    assert_int_equal(bench_hist_index(UINT64_MAX), BENCH_HIST_BUCKETS - 1);
}

static void test_percentiles(void **state)
{
    (void)state;
    struct bench_hist *h = malloc(sizeof *h);
    assert_non_null(h);
    bench_hist_init(h);
    assert_int_equal(bench_hist_percentile(h, 50), 0);
    /* 1..100000 us in ns: pXX is XX% of the maximum */
    for (uint64_t v = 1; v <= 100000; v++)
        bench_hist_add(h, v * 1000);
    assert_int_equal(h->count, 100000);
    assert_int_equal(h->min, 1000);
    assert_int_equal(h->max, 100000000);
    double mean = bench_hist_mean(h);
    assert_true(mean > 50000499.0 && mean < 50000501.0);
    static const double pcts[] = { 50, 90, 99, 99.9, 99.99 };
    for (size_t i = 0; i < sizeof pcts / sizeof pcts[0]; i++) {
        double want = pcts[i] / 100 * 100000000.0;
        double got = (double)bench_hist_percentile(h, pcts[i]);
        assert_true(got >= want * (1 - 1.0 / 128) && got <= want * (1 + 1.0 / 128));
    }
    assert_int_equal(bench_hist_percentile(h, 100), 100000000);

    struct bench_hist *g = malloc(sizeof *g);
    assert_non_null(g);
    bench_hist_init(g);
    bench_hist_add(g, 7);
    bench_hist_merge(g, h);
    assert_int_equal(g->count, 100001);
    assert_int_equal(g->min, 7);
    assert_int_equal(bench_hist_percentile(g, 0.0001), 7);
    free(g);
    free(h);
}

static void test_prng_below_uniform(void **state)
{
    (void)state;
    struct bench_prng r;
    bench_prng_seed(&r, 1);
    unsigned counts[10] = { 0 };
    for (int i = 0; i < 100000; i++) {
        uint64_t v = bench_prng_below(&r, 10);
        assert_true(v < 10);
        counts[v]++;
    }
    for (int i = 0; i < 10; i++)
        assert_true(counts[i] > 9500 && counts[i] < 10500);
}

static void test_pattern(void **state)
{
    (void)state;
    enum { BS = 4096 };
    unsigned char *a = malloc(BS), *b = malloc(BS);
    assert_non_null(a);
    assert_non_null(b);
    bench_pattern_fill(a, BS, 8192, 99);
    assert_int_equal(bench_pattern_check(a, BS, 8192, 99, "f"), 0);

    /* the right block at the wrong place */
    assert_int_equal(bench_pattern_check(a, BS, 12288, 99, "f"), -EBADMSG);
    assert_string_equal(lsm_last_error(), "verify failed at offset 12288 of f: found the block "
                        "written for offset 8192 (misplaced block)");
    assert_int_equal(bench_pattern_check(a, BS, 8192, 98, "f"), -EBADMSG);

    /* one flipped byte in the body */
    memcpy(b, a, BS);
    b[1000] ^= 0x40;
    assert_int_equal(bench_pattern_check(b, BS, 8192, 99, "f"), -EBADMSG);
    assert_string_equal(lsm_last_error(), "verify failed at offset 8192 of f: data differs at "
                        "byte 1000 of the block (offset 9192)");

    /* zeroes: no header */
    memset(b, 0, BS);
    assert_int_equal(bench_pattern_check(b, BS, 0, 99, "f"), -EBADMSG);

    /* a different block's body with a forged header is still caught */
    bench_pattern_fill(b, BS, 0, 99);
    memcpy(b, a, 32);
    assert_int_equal(bench_pattern_check(b, BS, 8192, 99, "f"), -EBADMSG);
    free(a);
    free(b);
}

static void test_scramble(void **state)
{
    (void)state;
    enum { BS = 65536 };
    unsigned char *a = malloc(BS), *b = malloc(BS);
    assert_non_null(a);
    assert_non_null(b);
    bench_fill_random(a, BS, 7);
    memcpy(b, a, BS);
    bench_scramble(a, BS, 1 << 20, 1);
    bench_scramble(b, BS, 1 << 20, 2);
    /* every sector differs from the same sector of another write */
    for (size_t s = 0; s < BS; s += 512)
        assert_true(memcmp(a + s, b + s, 512) != 0);
    /* and from its neighbours in the same write */
    for (size_t s = 512; s < BS; s += 512)
        assert_true(memcmp(a + s, a + s - 512, 512) != 0);
    /* deterministic, and a partial sector at the end is left alone */
    memcpy(b, a, BS);
    bench_scramble(b, BS - 100, 1 << 20, 1);
    assert_memory_equal(a, b, BS);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_bound),
        cmocka_unit_test(test_buckets_contiguous),
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_prng_below_uniform),
        cmocka_unit_test(test_pattern),
        cmocka_unit_test(test_scramble),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
