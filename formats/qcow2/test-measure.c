/* lsm_qcow2_full_size against `qemu-img measure` and the header parser. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "qcow2-format.h"
#include "qcow2-measure.h"
#include "util.h"

/* Obtained with qemu-img 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18):
 *   qemu-img measure --size SIZE -O qcow2 -o cluster_size=C[,refcount_bits=R][,extended_l2=on]
 * "fully allocated size".  tests/functional/qcow2-measure.sh compares more
 * geometries with the qemu-img installed. */
static const struct {
    uint64_t size, cluster;
    unsigned rbits;
    bool extl2;
    uint64_t qemu;
} cases[] = {
    { 1ULL << 30, 65536, 16, false, 1074135040ULL },
    { 100ULL << 30, 65536, 16, false, 107390828544ULL },
    { 10ULL << 30, 4096, 16, false, 10763706368ULL },
    { 10ULL << 30, 2097152, 16, false, 10747904000ULL },
    { 1ULL << 40, 65536, 16, false, 1099679662080ULL },
    { 100ULL << 30, 65536, 1, false, 107387748352ULL },
    { 100ULL << 30, 65536, 64, false, 107400658944ULL },
    { 100ULL << 30, 65536, 16, true, 107403935744ULL },
    { 100ULL << 30, 131072, 16, true, 107389386752ULL },
    { 10ULL << 30, 512, 16, false, 10951259648ULL },
    { 3ULL << 30, 524288, 8, false, 3223846912ULL },
    { 1000ULL << 20, 65536, 16, false, 1048969216ULL },
    { 16ULL << 40, 2097152, 16, false, 17592278319104ULL },
    { 2ULL << 40, 65536, 32, false, 2199426170880ULL },
    { 100ULL << 30, 1048576, 4, true, 107380473856ULL },
    { 123456789, 65536, 16, false, 123797504ULL },
};

static void test_against_qemu(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint64_t ours = lsm_qcow2_full_size(cases[i].size, cases[i].cluster, cases[i].rbits,
                                            cases[i].extl2);
        print_message("size %llu cluster %llu refcount %u extl2 %d: ours %llu qemu %llu\n",
                      (unsigned long long)cases[i].size, (unsigned long long)cases[i].cluster,
                      cases[i].rbits, cases[i].extl2, (unsigned long long)ours,
                      (unsigned long long)cases[i].qemu);
        /* Never below qemu-img's number; at most a few clusters above. */
        assert_true(ours >= cases[i].qemu);
        assert_true(ours - cases[i].qemu <= 4 * cases[i].cluster);
    }
}

static void test_bad_geometry(void **state)
{
    (void)state;
    assert_int_equal(lsm_qcow2_full_size(1 << 30, 3000, 16, false), 0);
    assert_int_equal(lsm_qcow2_full_size(1 << 30, 256, 16, false), 0);
    assert_int_equal(lsm_qcow2_full_size(1 << 30, 4 << 20, 16, false), 0);
    assert_int_equal(lsm_qcow2_full_size(1 << 30, 65536, 0, false), 0);
    assert_int_equal(lsm_qcow2_full_size(1 << 30, 65536, 12, false), 0);
    assert_int_equal(lsm_qcow2_full_size(1 << 30, 65536, 128, false), 0);
    /* An empty image still has its header and refcount metadata. */
    assert_true(lsm_qcow2_full_size(0, 65536, 16, false) >= 3 * 65536);
}

static void header(uint8_t *b, uint32_t version, unsigned cbits, uint64_t size)
{
    memset(b, 0, 4096);
    be32_put(b, QCOW2_MAGIC);
    be32_put(b + 4, version);
    be32_put(b + 20, cbits);
    be64_put(b + 24, size);
    if (version == 3) {
        be32_put(b + 96, 4);
        be32_put(b + 100, 112);
    }
}

static void test_parse(void **state)
{
    (void)state;
    uint8_t b[4096];
    struct lsm_qcow2_geometry g;
    header(b, 3, 16, 100ULL << 30);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_int_equal(g.cluster_size, 65536);
    assert_int_equal(g.refcount_bits, 16);
    assert_int_equal(g.capacity, 100ULL << 30);
    assert_false(g.extended_l2);
    assert_int_equal(lsm_qcow2_full_size_of(&g), lsm_qcow2_full_size(100ULL << 30, 65536, 16,
                                                                     false));
    /* extended L2 and refcount order */
    be64_put(b + 72, QCOW2_INCOMPAT_EXTL2);
    be32_put(b + 96, 6);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_true(g.extended_l2);
    assert_int_equal(g.refcount_bits, 64);
    /* internal snapshots: unknown */
    be32_put(b + 60, 1);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_int_equal(lsm_qcow2_full_size_of(&g), 0);
    be32_put(b + 60, 0);
    /* a bitmaps extension (autoclear bit clear): unknown */
    be32_put(b + 112, QCOW2_EXT_BITMAPS);
    be32_put(b + 116, 24);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_true(g.bitmaps);
    assert_int_equal(lsm_qcow2_full_size_of(&g), 0);
    /* the autoclear bit alone */
    memset(b + 112, 0, 32);
    be64_put(b + 88, QCOW2_AUTOCLEAR_BITMAPS);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_int_equal(lsm_qcow2_full_size_of(&g), 0);
    /* encrypted: unknown */
    header(b, 2, 16, 1 << 30);
    be32_put(b + 32, QCOW2_CRYPT_AES);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_int_equal(lsm_qcow2_full_size_of(&g), 0);
    /* v2 defaults to 16-bit refcounts */
    header(b, 2, 12, 1 << 30);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), 0);
    assert_int_equal(g.refcount_bits, 16);
    assert_int_equal(g.cluster_size, 4096);
    /* not qcow2, truncated, bad cluster bits, extensions past the buffer */
    assert_int_equal(lsm_qcow2_geometry_parse(b, 50, &g), -EINVAL);
    b[0] = 0;
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), -EINVAL);
    header(b, 3, 8, 1 << 30);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), -EINVAL);
    header(b, 3, 16, 1 << 30);
    be32_put(b + 112, QCOW2_EXT_FEATURE_TABLE);
    be32_put(b + 116, 8000);
    assert_int_equal(lsm_qcow2_geometry_parse(b, sizeof b, &g), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_qemu),
        cmocka_unit_test(test_bad_geometry),
        cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
