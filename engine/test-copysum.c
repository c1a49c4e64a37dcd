/* Unit test of the copy's block hash (copysum.h): pieces in any order,
 * data and zero runs, whole and partial blocks, give the digest of the
 * byte stream. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "copysum.h"
#include "util.h"

#define BLK (64u << 10)

static void stream_digest(const uint8_t *buf, uint64_t size, uint8_t out[LSM_BLKHASH_DIGEST_LEN])
{
    struct lsm_blkhash *h;
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, BLK, size, &h), 0);
    assert_int_equal(lsm_blkhash_update(h, buf, size), 0);
    assert_int_equal(lsm_blkhash_final(h, out), 0);
    lsm_blkhash_free(h);
}

struct piece {
    uint64_t off, len;
};

static void run_case(uint64_t size, unsigned seed)
{
    uint8_t *buf = malloc(size);
    assert_non_null(buf);
    srand(seed);
    for (uint64_t i = 0; i < size; i++)
        buf[i] = (uint8_t)rand();
    /* zero stretches: whole blocks and pieces of blocks */
    memset(buf + 2 * BLK, 0, 3 * BLK);
    memset(buf + 6 * BLK + 100, 0, BLK);
    uint8_t want[LSM_BLKHASH_DIGEST_LEN], got[LSM_BLKHASH_DIGEST_LEN];
    stream_digest(buf, size, want);

    /* cut into pieces of 4K..160K, then shuffle them */
    struct piece pcs[4096];
    unsigned n = 0;
    for (uint64_t off = 0; off < size; n++) {
        uint64_t len = MIN(size - off, (uint64_t)(4096 * (1 + rand() % 40)));
        pcs[n] = (struct piece){ off, len };
        off += len;
    }
    for (unsigned i = n - 1; i > 0; i--) {
        unsigned j = (unsigned)rand() % (i + 1);
        struct piece t = pcs[i];
        pcs[i] = pcs[j];
        pcs[j] = t;
    }
    struct lsm_copysum *s;
    assert_int_equal(lsm_copysum_new(LSM_BLKHASH_SHA256, BLK, size, 4096, &s), 0);
    for (unsigned i = 0; i < n; i++) {
        const uint8_t *p = buf + pcs[i].off;
        bool zero = true;
        for (uint64_t k = 0; k < pcs[i].len && zero; k++)
            zero = !p[k];
        if (zero)
            assert_int_equal(lsm_copysum_zero(s, pcs[i].off, pcs[i].len), 0);
        else
            assert_int_equal(lsm_copysum_data(s, pcs[i].off, p, pcs[i].len), 0);
    }
    assert_int_equal(lsm_copysum_final(s, got), 0);
    assert_memory_equal(got, want, sizeof want);
    lsm_copysum_free(s);
    free(buf);
}

static void test_pieces(void **state)
{
    (void)state;
    run_case(10 * BLK + 12345, 1);     /* a short last block */
    run_case(16 * BLK, 2);
    run_case(9 * BLK, 3);
}

static void test_whole(void **state)
{
    (void)state;
    /* in order, whole blocks and a zero run over several blocks */
    uint64_t size = 8 * BLK;
    uint8_t *buf = calloc(1, size);
    assert_non_null(buf);
    memset(buf, 0x5a, 2 * BLK);
    uint8_t want[LSM_BLKHASH_DIGEST_LEN], got[LSM_BLKHASH_DIGEST_LEN];
    stream_digest(buf, size, want);
    struct lsm_copysum *s;
    assert_int_equal(lsm_copysum_new(LSM_BLKHASH_SHA256, BLK, size, 2, &s), 0);
    assert_int_equal(lsm_copysum_zero(s, 2 * BLK, 6 * BLK), 0);
    assert_int_equal(lsm_copysum_data(s, 0, buf, 2 * BLK), 0);
    assert_int_equal(lsm_copysum_final(s, got), 0);
    assert_memory_equal(got, want, sizeof want);
    lsm_copysum_free(s);
    free(buf);
}

static void test_errors(void **state)
{
    (void)state;
    struct lsm_copysum *s;
    uint8_t d[LSM_BLKHASH_DIGEST_LEN], b[4096] = { 1 };
    assert_int_equal(lsm_copysum_new(LSM_BLKHASH_SHA256, BLK, 4 * BLK, 1, &s), 0);
    assert_int_equal(lsm_copysum_data(s, 4 * BLK, b, 1), -EINVAL);      /* past the end */
    assert_int_equal(lsm_copysum_data(s, 0, b, sizeof b), 0);
    assert_int_equal(lsm_copysum_data(s, BLK, b, sizeof b), -ENOBUFS);  /* max 1 partial */
    assert_int_equal(lsm_copysum_final(s, d), -EINVAL);                 /* incomplete */
    lsm_copysum_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_whole),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
