/* Unit tests of the block hash: known vectors (computed with Python's
 * hashlib from the construction in docs/checksum.md: sha256 and
 * blake2b(digest_size=32), 64 KiB blocks), zero runs against hashed
 * zeroes, out-of-order block digests against the byte stream, misuse. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "blkhash.h"
#include "error.h"

#define BS (64u << 10)

/* The pattern of the vectors: byte k is (k * 31 + 7) % 251. */
static uint8_t *pattern(size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t k = 0; k < n; k++)
        p[k] = (uint8_t)((k * 31 + 7) % 251);
    return p;
}

/* The pattern with blocks 1 and 3 cleared (the "mixed" vectors). */
#define MIXED_SIZE (5 * BS + 100)
static uint8_t *mixed(void)
{
    uint8_t *p = pattern(MIXED_SIZE);
    memset(p + BS, 0, BS);
    memset(p + 3 * BS, 0, BS);
    return p;
}

struct vector {
    enum lsm_blkhash_alg alg;
    const char *name;
    const char *hex;
};

static const struct vector vectors[] = {
    { LSM_BLKHASH_SHA256, "empty", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { LSM_BLKHASH_SHA256, "short1000", "a5f998fc390196f6d0c72a3494f38548e21d312ec821426b73b31f5e192ba8eb" },
    { LSM_BLKHASH_SHA256, "pat3+12345", "b26b465f17935633d1531b016cefe3d0aea63b1fa82ad79e9217670849ffc316" },
    { LSM_BLKHASH_SHA256, "mixed", "9fe88753a2996f1e8ca21e391af9e80ca82ff81af48a5c4378bdc65a9f252936" },
    { LSM_BLKHASH_SHA256, "zeros5+100", "e42b3c74407648b23e61f90b7447b7347edba9e5d792dd2b5036034bbc0a698d" },
    { LSM_BLKHASH_BLAKE2B, "empty", "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8" },
    { LSM_BLKHASH_BLAKE2B, "short1000", "4e2c60ac0461dfdf8ae733dc7303494ba34d753fd04e623da43ec76c97f0bb1a" },
    { LSM_BLKHASH_BLAKE2B, "pat3+12345", "0aebedaa12451be072913cb8cf80f09ac759164ed3e9b3688c6b9e177bcc9e88" },
    { LSM_BLKHASH_BLAKE2B, "mixed", "a8e0fdd229b0af0cc897fee75a5c64064ec13042e8f9b0635e26097e7ef3bc00" },
    { LSM_BLKHASH_BLAKE2B, "zeros5+100", "08b4d44645ac6b3930825c2cc09249fa7ac86e87d9b08224b1fad669197e9b8f" },
};

static const char *expected(enum lsm_blkhash_alg alg, const char *name)
{
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
        if (vectors[i].alg == alg && !strcmp(vectors[i].name, name))
            return vectors[i].hex;
    fail_msg("no vector %s", name);
    return NULL;
}

static void assert_final(struct lsm_blkhash *h, const char *hex)
{
    uint8_t d[LSM_BLKHASH_DIGEST_LEN];
    char got[LSM_BLKHASH_HEX_LEN];
    assert_int_equal(lsm_blkhash_final(h, d), 0);
    lsm_blkhash_hex(d, got);
    assert_string_equal(got, hex);
    lsm_blkhash_free(h);
}

/* The whole input as one stream, then in odd pieces. */
static void check_stream(enum lsm_blkhash_alg alg, const uint8_t *data, size_t n, const char *hex)
{
    struct lsm_blkhash *h;
    assert_int_equal(lsm_blkhash_new(alg, BS, n, &h), 0);
    assert_int_equal(lsm_blkhash_update(h, data, n), 0);
    assert_final(h, hex);

    assert_int_equal(lsm_blkhash_new(alg, BS, n, &h), 0);
    for (size_t pos = 0, step = 1; pos < n; step = step * 3 + 1) {
        size_t len = step < n - pos ? step : n - pos;
        assert_int_equal(lsm_blkhash_update(h, data + pos, len), 0);
        pos += len;
    }
    assert_final(h, hex);
}

static void test_vectors(void **state)
{
    (void)state;
    for (int a = 0; a < 2; a++) {
        enum lsm_blkhash_alg alg = a ? LSM_BLKHASH_BLAKE2B : LSM_BLKHASH_SHA256;
        uint8_t *p = pattern(3 * BS + 12345);
        check_stream(alg, p, 0, expected(alg, "empty"));
        check_stream(alg, p, 1000, expected(alg, "short1000"));
        check_stream(alg, p, 3 * BS + 12345, expected(alg, "pat3+12345"));
        free(p);
        p = mixed();
        check_stream(alg, p, MIXED_SIZE, expected(alg, "mixed"));
        free(p);
    }
}

static void test_empty_and_short(void **state)
{
    (void)state;
    struct lsm_blkhash *h;
    /* No block at all: H(""), also by index. */
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, BS, 0, &h), 0);
    assert_int_equal(lsm_blkhash_nblocks(h), 0);
    assert_int_equal(lsm_blkhash_zero_blocks(h, 0, 0), 0);
    assert_final(h, expected(LSM_BLKHASH_SHA256, "empty"));
    /* One short block by index. */
    uint8_t *p = pattern(1000);
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_BLAKE2B, BS, 1000, &h), 0);
    assert_int_equal(lsm_blkhash_nblocks(h), 1);
    assert_int_equal(lsm_blkhash_block_len(h, 0), 1000);
    assert_int_equal(lsm_blkhash_block(h, 0, p, 999), -EINVAL);   /* wrong length */
    assert_int_equal(lsm_blkhash_block(h, 0, p, 1000), 0);
    assert_final(h, expected(LSM_BLKHASH_BLAKE2B, "short1000"));
    free(p);
}

/* Zero runs (by index and as a stream) equal hashing the zeroes. */
static void test_zero(void **state)
{
    (void)state;
    const size_t n = 5 * BS + 100;
    uint8_t *z = calloc(1, n);
    assert_non_null(z);
    for (int a = 0; a < 2; a++) {
        enum lsm_blkhash_alg alg = a ? LSM_BLKHASH_BLAKE2B : LSM_BLKHASH_SHA256;
        const char *hex = expected(alg, "zeros5+100");
        check_stream(alg, z, n, hex);
        struct lsm_blkhash *h;
        /* One run of every block, the short last one included. */
        assert_int_equal(lsm_blkhash_new(alg, BS, n, &h), 0);
        assert_int_equal(lsm_blkhash_zero_blocks(h, 0, 6), 0);
        assert_final(h, hex);
        /* Runs out of order. */
        assert_int_equal(lsm_blkhash_new(alg, BS, n, &h), 0);
        assert_int_equal(lsm_blkhash_zero_blocks(h, 5, 1), 0);
        assert_int_equal(lsm_blkhash_zero_blocks(h, 2, 3), 0);
        assert_int_equal(lsm_blkhash_zero_blocks(h, 0, 2), 0);
        assert_final(h, hex);
        /* As a stream: whole blocks, then pieces across a block end. */
        assert_int_equal(lsm_blkhash_new(alg, BS, n, &h), 0);
        assert_int_equal(lsm_blkhash_zero(h, n), 0);
        assert_final(h, hex);
        assert_int_equal(lsm_blkhash_new(alg, BS, n, &h), 0);
        assert_int_equal(lsm_blkhash_zero(h, 10), 0);
        assert_int_equal(lsm_blkhash_zero(h, 2 * BS), 0);
        assert_int_equal(lsm_blkhash_update(h, z, 7), 0);
        assert_int_equal(lsm_blkhash_zero(h, n - 2 * BS - 17), 0);
        assert_final(h, hex);
    }
    free(z);
}

/* Blocks of the mixed input by index in several orders, data blocks as
 * digests or contents and zero blocks as runs: always the stream's value. */
static void test_out_of_order(void **state)
{
    (void)state;
    static const uint64_t orders[][6] = {
        { 0, 1, 2, 3, 4, 5 },
        { 5, 4, 3, 2, 1, 0 },
        { 2, 5, 0, 3, 1, 4 },
        { 4, 0, 5, 1, 3, 2 },
    };
    uint8_t *p = mixed();
    for (int a = 0; a < 2; a++) {
        enum lsm_blkhash_alg alg = a ? LSM_BLKHASH_BLAKE2B : LSM_BLKHASH_SHA256;
        for (size_t o = 0; o < sizeof(orders) / sizeof(orders[0]); o++) {
            struct lsm_blkhash *h;
            assert_int_equal(lsm_blkhash_new(alg, BS, MIXED_SIZE, &h), 0);
            assert_int_equal(lsm_blkhash_nblocks(h), 6);
            for (int k = 0; k < 6; k++) {
                uint64_t i = orders[o][k];
                uint32_t len = lsm_blkhash_block_len(h, i);
                if (i == 1 || i == 3) {
                    assert_int_equal(lsm_blkhash_zero_blocks(h, i, 1), 0);
                } else if (k % 2) {
                    uint8_t d[LSM_BLKHASH_DIGEST_LEN];
                    assert_int_equal(lsm_blkhash_digest_of(h, p + i * BS, len, d), 0);
                    assert_int_equal(lsm_blkhash_set_digest(h, i, d), 0);
                } else {
                    assert_int_equal(lsm_blkhash_block(h, i, p + i * BS, len), 0);
                }
            }
            assert_final(h, expected(alg, "mixed"));
        }
    }
    free(p);
}

/* Block 0 late, then more single zero blocks than the pending list could
 * hold if adjacent runs did not join, in both directions and across a
 * digest; then the data blocks. */
static void test_many_zero_runs(void **state)
{
    (void)state;
    const uint64_t n = 3 * (uint64_t)LSM_BLKHASH_MAX_PENDING;
    const uint64_t size = n * BS;
    struct lsm_blkhash *h, *ref;
    uint8_t *p = pattern(BS);
    uint8_t d[LSM_BLKHASH_DIGEST_LEN], want[LSM_BLKHASH_DIGEST_LEN];
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, BS, size, &h), 0);
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, BS, size, &ref), 0);
    /* Reference: data, zeroes, data at n/2, zeroes. */
    assert_int_equal(lsm_blkhash_update(ref, p, BS), 0);
    assert_int_equal(lsm_blkhash_zero(ref, (n / 2 - 1) * BS), 0);
    assert_int_equal(lsm_blkhash_update(ref, p, BS), 0);
    assert_int_equal(lsm_blkhash_zero(ref, (n - n / 2 - 1) * BS), 0);
    assert_int_equal(lsm_blkhash_final(ref, want), 0);
    lsm_blkhash_free(ref);

    for (uint64_t i = 2; i < n / 2; i++)                  /* forwards */
        assert_int_equal(lsm_blkhash_zero_blocks(h, i, 1), 0);
    for (uint64_t i = n - 1; i > n / 2; i--)              /* backwards */
        assert_int_equal(lsm_blkhash_zero_blocks(h, i, 1), 0);
    assert_int_equal(lsm_blkhash_zero_blocks(h, 1, 1), 0);   /* joins on its right */
    assert_int_equal(lsm_blkhash_block(h, n / 2, p, BS), 0);
    assert_int_equal(lsm_blkhash_block(h, 0, p, BS), 0);
    assert_int_equal(lsm_blkhash_final(h, d), 0);
    assert_memory_equal(d, want, sizeof(d));
    lsm_blkhash_free(h);
    free(p);
}

static void test_misuse(void **state)
{
    (void)state;
    struct lsm_blkhash *h;
    uint8_t d[LSM_BLKHASH_DIGEST_LEN] = { 0 };
    enum lsm_blkhash_alg alg;
    assert_int_equal(lsm_blkhash_alg_parse("blake2b", &alg), 0);
    assert_int_equal(alg, LSM_BLKHASH_BLAKE2B);
    assert_int_equal(lsm_blkhash_alg_parse("md5", &alg), -EINVAL);
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, 4096, 10, &h), -EINVAL);
    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, 3 * BS, 10, &h), -EINVAL);
    assert_int_equal(lsm_blkhash_check_block_size(64u << 20), 0);
    assert_int_equal(lsm_blkhash_check_block_size(128u << 20), -EINVAL);

    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, BS, 4 * BS, &h), 0);
    assert_int_equal(lsm_blkhash_set_digest(h, 4, d), -EINVAL);          /* past the end */
    assert_int_equal(lsm_blkhash_zero_blocks(h, 3, 2), -EINVAL);
    assert_int_equal(lsm_blkhash_set_digest(h, 2, d), 0);
    assert_int_equal(lsm_blkhash_set_digest(h, 2, d), -EINVAL);          /* twice, pending */
    assert_int_equal(lsm_blkhash_zero_blocks(h, 1, 2), -EINVAL);         /* overlaps 2 */
    assert_int_equal(lsm_blkhash_set_digest(h, 0, d), 0);
    assert_int_equal(lsm_blkhash_set_digest(h, 0, d), -EINVAL);          /* twice, folded */
    assert_int_equal(lsm_blkhash_update(h, d, 1), -EINVAL);              /* mixed modes */
    assert_int_equal(lsm_blkhash_final(h, d), -EINVAL);                  /* block 1 missing */
    assert_non_null(strstr(lsm_last_error(), "block 1 of 4"));
    assert_int_equal(lsm_blkhash_set_digest(h, 1, d), 0);                /* drains 2 */
    assert_int_equal(lsm_blkhash_set_digest(h, 3, d), 0);
    assert_int_equal(lsm_blkhash_final(h, d), 0);
    assert_int_equal(lsm_blkhash_final(h, d), -EINVAL);                  /* spent */
    lsm_blkhash_free(h);

    assert_int_equal(lsm_blkhash_new(LSM_BLKHASH_SHA256, BS, 100, &h), 0);
    assert_int_equal(lsm_blkhash_zero(h, 101), -EINVAL);
    assert_int_equal(lsm_blkhash_zero(h, 60), 0);
    assert_int_equal(lsm_blkhash_update(h, d, 32), 0);
    assert_int_equal(lsm_blkhash_final(h, d), -EINVAL);                  /* 8 bytes short */
    assert_non_null(strstr(lsm_last_error(), "92 of 100 bytes"));
    lsm_blkhash_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_empty_and_short),
        cmocka_unit_test(test_zero),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_many_zero_runs),
        cmocka_unit_test(test_misuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
