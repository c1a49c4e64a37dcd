/* Unit tests of the SCSI third-party copy parsers and builders. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "scsi.h"

/* VPD 0x83 as the Linux LIO target returns it: a T10 vendor designator,
 * the NAA 6 designator of the LU, then target-port ones. */
static const uint8_t lio_vpd83[] = {
    0x00, 0x83, 0x00, 0x38,
    /* T10 vendor ID, ASCII, LU */
    0x02, 0x01, 0x00, 0x0c, 'L', 'I', 'O', '-', 'O', 'R', 'G', ' ', 'x', 'y', 'z', '1',
    /* NAA 6, binary, LU, 16 bytes */
    0x01, 0x03, 0x00, 0x10, 0x60, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0, 0x12,
    0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12,
    /* relative target port, binary, target port association */
    0x61, 0x94, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
    /* NAA 5 (8 bytes) of the target port: association 1, must be ignored */
    0x01, 0x13, 0x00, 0x08, 0x50, 0x01, 0x40, 0x51, 0x11, 0x22, 0x33, 0x44,
};

static void test_vpd83_lio(void **state)
{
    (void)state;
    struct scsi_designator d;
    assert_int_equal(scsi_parse_vpd83(lio_vpd83, sizeof lio_vpd83, &d), 0);
    assert_int_equal(d.type, 3);
    assert_int_equal(d.code_set, 1);
    assert_int_equal(d.len, 16);
    assert_int_equal(d.id[0], 0x60);
    assert_int_equal(d.id[15], 0x12);
}

static void test_vpd83_prefers_naa_over_eui(void **state)
{
    (void)state;
    const uint8_t p[] = {
        0x00, 0x83, 0x00, 0x18,
        0x01, 0x02, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8,                      /* EUI-64 */
        0x01, 0x03, 0x00, 0x08, 0x51, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* NAA 5 */
    };
    struct scsi_designator d;
    assert_int_equal(scsi_parse_vpd83(p, sizeof p, &d), 0);
    assert_int_equal(d.type, 3);
    assert_int_equal(d.len, 8);
    assert_int_equal(d.id[0], 0x51);
    /* a short buffer: what is there is parsed (the EUI-64 one) */
    assert_int_equal(scsi_parse_vpd83(p, 16, &d), 0);
    assert_int_equal(d.type, 2);
    /* ... but a descriptor cut in the middle is malformed */
    assert_int_equal(scsi_parse_vpd83(p, 20, &d), -EINVAL);
}

static void test_vpd83_bad(void **state)
{
    (void)state;
    struct scsi_designator d;
    uint8_t p[sizeof lio_vpd83];
    memcpy(p, lio_vpd83, sizeof p);
    p[1] = 0x80;
    assert_int_equal(scsi_parse_vpd83(p, sizeof p, &d), -EINVAL);
    memcpy(p, lio_vpd83, sizeof p);
    p[7] = 0xff;      /* designator longer than the page */
    assert_int_equal(scsi_parse_vpd83(p, sizeof p, &d), -EINVAL);
    /* no usable designator: only ASCII and port ones */
    const uint8_t only_ascii[] = { 0x00, 0x83, 0x00, 0x08, 0x02, 0x01, 0x00, 0x04, 'a', 'b', 'c', 'd' };
    assert_int_equal(scsi_parse_vpd83(only_ascii, sizeof only_ascii, &d), -ENOENT);
    assert_int_equal(scsi_parse_vpd83(p, 3, &d), -EINVAL);
}

static void test_inquiry(void **state)
{
    (void)state;
    uint8_t b[36] = { 0x00, 0x00, 0x06, 0x02, 0x1f, 0x08 };
    memcpy(b + 8, "LIO-ORG ", 8);
    memcpy(b + 16, "FILEIO          ", 16);
    struct scsi_inquiry q;
    assert_int_equal(scsi_parse_inquiry(b, sizeof b, &q), 0);
    assert_true(q.tpc);
    assert_int_equal(q.peripheral_type, 0);
    assert_string_equal(q.vendor, "LIO-ORG");
    assert_string_equal(q.product, "FILEIO");
    b[5] = 0;
    assert_int_equal(scsi_parse_inquiry(b, sizeof b, &q), 0);
    assert_false(q.tpc);
    assert_int_equal(scsi_parse_inquiry(b, 35, &q), -EINVAL);
}

static void test_vpd00(void **state)
{
    (void)state;
    const uint8_t p[] = { 0x00, 0x00, 0x00, 0x05, 0x00, 0x80, 0x83, 0x86, 0xb0 };
    assert_int_equal(scsi_vpd_lists_page(p, sizeof p, 0x83), 1);
    assert_int_equal(scsi_vpd_lists_page(p, sizeof p, 0x8f), 0);
    assert_int_equal(scsi_vpd_lists_page(p, 2, 0x8f), -EINVAL);
}

/* RECEIVE COPY RESULTS operating parameters as LIO builds them. */
static void lio_opparams(uint8_t *p)
{
    memset(p, 0, 54);
    p[3] = 42;                          /* available data */
    p[4] = 1;                           /* SNLID */
    p[9] = 2;                           /* max target descriptors */
    p[11] = 1;                          /* max segment descriptors */
    p[14] = 0x04;                       /* max descriptor list length 1024 */
    p[16] = 0x10;                       /* max segment length 256 MiB */
    p[37] = 9;                          /* data segment granularity 512 */
    p[43] = 2;
    p[44] = 0x02;
    p[45] = 0xe4;
}

static void test_opparams(void **state)
{
    (void)state;
    uint8_t p[54];
    lio_opparams(p);
    struct scsi_tpc_limits l;
    assert_int_equal(scsi_parse_rcr_opparams(p, sizeof p, &l), 0);
    assert_true(l.snlid);
    assert_int_equal(l.max_cscd, 2);
    assert_int_equal(l.max_segments, 1);
    assert_int_equal(l.max_desc_list, 1024);
    assert_int_equal(l.max_segment_len, 256u << 20);
    assert_int_equal(l.data_seg_gran_log2, 9);
    assert_true(l.b2b && l.id_cscd && l.have_descriptor_list);
    p[43] = 200;    /* more codes than there are bytes */
    assert_int_equal(scsi_parse_rcr_opparams(p, sizeof p, &l), -EINVAL);
    assert_int_equal(scsi_parse_rcr_opparams(p, 40, &l), -EINVAL);
}

static void test_vpd8f(void **state)
{
    (void)state;
    uint8_t p[4 + 36 + 32 + 8 + 36];
    memset(p, 0, sizeof p);
    p[1] = 0x8f;
    p[3] = sizeof p - 4;
    uint8_t *d = p + 4;
    /* ROD token limits: length 0x20 */
    d[0] = 0x00; d[1] = 0x00; d[3] = 0x20;
    d[15] = 30;                         /* maximum inactivity 30 s */
    d[19] = 20;                         /* default inactivity 20 s */
    d += 36;
    /* Parameter data: length 0x1c */
    d[1] = 0x04; d[3] = 0x1c;
    d[9] = 4;                           /* CSCD */
    d[11] = 8;                          /* segments */
    d[14] = 0x02;                       /* list 512 */
    d += 32;
    /* Supported descriptors */
    d[1] = 0x08; d[3] = 4; d[4] = 2; d[5] = 0x02; d[6] = 0xe4;
    d += 8;
    /* General copy operations */
    d[0] = 0x80; d[1] = 0x01; d[3] = 0x20;
    d[14] = 0x01;                       /* max segment length 256 bytes */
    d[16] = 12;                         /* granularity 4 KiB */
    struct scsi_tpc_limits l;
    assert_int_equal(scsi_parse_vpd8f(p, sizeof p, &l), 0);
    assert_true(l.from_vpd);
    assert_int_equal(l.default_inactivity_s, 20);
    assert_int_equal(l.max_inactivity_s, 30);
    assert_int_equal(l.max_cscd, 4);
    assert_int_equal(l.max_segments, 8);
    assert_int_equal(l.max_desc_list, 512);
    assert_int_equal(l.max_segment_len, 256);
    assert_int_equal(l.data_seg_gran_log2, 12);
    assert_true(l.b2b && l.id_cscd);
    /* a descriptor that runs past the page */
    p[4 + 36 + 3] = 0xff;
    assert_int_equal(scsi_parse_vpd8f(p, sizeof p, &l), -EINVAL);
    /* no parameter data and no general copy operations */
    const uint8_t empty[] = { 0x00, 0x8f, 0x00, 0x00 };
    assert_int_equal(scsi_parse_vpd8f(empty, sizeof empty, &l), -ENOENT);
}

static void test_plan_lio(void **state)
{
    (void)state;
    uint8_t p[54];
    lio_opparams(p);
    struct scsi_tpc_limits l;
    assert_int_equal(scsi_parse_rcr_opparams(p, sizeof p, &l), 0);
    struct scsi_segment s[8];
    uint64_t cov;
    /* 512-byte blocks: one segment of at most 65535 blocks per command */
    assert_int_equal(scsi_plan_segments(10, 20, 200000, 512, &l, s, 8, &cov), 1);
    assert_int_equal(cov, 65535);
    assert_int_equal(s[0].src_lba, 10);
    assert_int_equal(s[0].dst_lba, 20);
    assert_int_equal(s[0].blocks, 65535);
    /* 4 KiB blocks: the 256 MiB segment length caps it below 65535 */
    l.max_segment_len = 1u << 20;
    assert_int_equal(scsi_plan_segments(0, 0, 1000, 4096, &l, s, 8, &cov), 1);
    assert_int_equal(cov, 256);
    /* many segments allowed, list length is the limit: (512 - 64) / 28 = 16 */
    l.max_segments = 100;
    l.max_desc_list = 512;
    l.max_segment_len = 125 * 512;
    l.data_seg_gran_log2 = 0;
    assert_int_equal(scsi_plan_segments(0, 100, 1000, 512, &l, s, 8, &cov), 8);
    assert_int_equal(cov, 1000);
    assert_int_equal(s[7].src_lba, 7 * 125);
    assert_int_equal(s[7].blocks, 125);
    /* granularity of 64 KiB with 512-byte blocks rounds segments to 128 blocks */
    l.max_segments = 2;
    l.data_seg_gran_log2 = 16;
    l.max_segment_len = 100000;     /* 195 blocks -> 128 */
    assert_int_equal(scsi_plan_segments(0, 0, 1000, 512, &l, s, 8, &cov), 2);
    assert_int_equal(s[0].blocks, 128);
    assert_int_equal(cov, 256);
    /* limits that allow nothing */
    l.max_desc_list = 80;
    assert_int_equal(scsi_plan_segments(0, 0, 10, 512, &l, s, 8, &cov), -EINVAL);
    l.max_desc_list = 0;
    l.max_cscd = 1;
    assert_int_equal(scsi_plan_segments(0, 0, 10, 512, &l, s, 8, &cov), -EINVAL);
    l.max_cscd = 2;
    assert_int_equal(scsi_plan_segments(0, 0, 10, 0, &l, s, 8, &cov), -EINVAL);
}

static void test_build_xcopy(void **state)
{
    (void)state;
    struct scsi_designator a = { .code_set = 1, .type = 3, .len = 16 }, b = a;
    for (int i = 0; i < 16; i++) {
        a.id[i] = (uint8_t)(0x60 + i);
        b.id[i] = (uint8_t)(0x90 + i);
    }
    struct scsi_segment s[2] = { { .src_lba = 0x0102030405060708ull, .dst_lba = 9, .blocks = 0xabcd },
                                 { .src_lba = 1, .dst_lba = 2, .blocks = 3 } };
    uint8_t out[200];
    int n = scsi_build_xcopy(out, sizeof out, &a, &b, 512, 7, true, s, 2);
    assert_int_equal(n, 16 + 64 + 56);
    assert_int_equal(out[0], 0);          /* no list id */
    assert_int_equal(out[1], 0x18);
    assert_int_equal(out[2] << 8 | out[3], 64);
    assert_int_equal(out[11], 56);
    /* CSCD 0: source */
    assert_int_equal(out[16], 0xe4);
    assert_int_equal(out[16 + 4], 1);
    assert_int_equal(out[16 + 5], 3);
    assert_int_equal(out[16 + 7], 16);
    assert_memory_equal(out + 16 + 8, a.id, 16);
    assert_int_equal(out[16 + 30] << 8 | out[16 + 31], 512);
    /* CSCD 1: destination */
    assert_memory_equal(out + 48 + 8, b.id, 16);
    /* segment 0 */
    const uint8_t *g = out + 80;
    assert_int_equal(g[0], 0x02);
    assert_int_equal(g[3], 0x18);
    assert_int_equal(g[5], 0);
    assert_int_equal(g[7], 1);
    assert_int_equal(g[10], 0xab);
    assert_int_equal(g[11], 0xcd);
    assert_int_equal(g[12], 0x01);
    assert_int_equal(g[19], 0x08);
    assert_int_equal(g[27], 9);
    n = scsi_build_xcopy(out, sizeof out, &a, &b, 512, 7, false, s, 1);
    assert_int_equal(n, 108);
    assert_int_equal(out[0], 7);
    assert_int_equal(out[1], 0x10);
    assert_int_equal(scsi_build_xcopy(out, 100, &a, &b, 512, 7, false, s, 1), -E2BIG);
    assert_int_equal(scsi_build_xcopy(out, sizeof out, &a, &b, 512, 7, false, s, 0), -EINVAL);
    b.len = 0;
    assert_int_equal(scsi_build_xcopy(out, sizeof out, &a, &b, 512, 7, false, s, 1), -EINVAL);
}

static void test_cdbs(void **state)
{
    (void)state;
    uint8_t c[16];
    scsi_cdb_xcopy(c, 0x01020304);
    assert_int_equal(c[0], 0x83);
    assert_int_equal(c[1], 0);
    assert_int_equal(c[10], 1);
    assert_int_equal(c[13], 4);
    scsi_cdb_rcr(c, SCSI_RCR_OPERATING_PARAMS, 0, 256);
    assert_int_equal(c[0], 0x84);
    assert_int_equal(c[1], 3);
    assert_int_equal(c[12], 1);
    uint8_t i6[6];
    scsi_cdb_inquiry(i6, true, 0x83, 512);
    assert_int_equal(i6[0], 0x12);
    assert_int_equal(i6[1], 1);
    assert_int_equal(i6[2], 0x83);
    assert_int_equal(i6[3], 2);
    assert_int_equal(i6[4], 0);
}

static void test_sense(void **state)
{
    (void)state;
    /* fixed: COPY ABORTED, copy target device not reachable */
    uint8_t f[18] = { 0xf0, 0, 0x0a, 0, 0, 0, 5, 10, 0, 0, 0, 1, 0x0d, 0x02 };
    struct scsi_sense s;
    assert_int_equal(scsi_parse_sense(f, sizeof f, &s), 0);
    assert_int_equal(s.key, SCSI_SK_COPY_ABORTED);
    assert_int_equal(s.asc, 0x0d);
    assert_int_equal(s.ascq, 0x02);
    assert_true(s.info_valid);
    assert_int_equal(s.info, 5);
    assert_true(s.csi_valid);
    assert_int_equal(s.csi, 1);
    assert_true(scsi_sense_means_unsupported(&s));
    char m[160];
    scsi_sense_str(&s, m, sizeof m);
    assert_string_equal(m, "COPY ABORTED: copy target device not reachable (ASC 0x0d, ASCQ 0x02)");
    /* descriptor: ILLEGAL REQUEST, invalid command operation code */
    const uint8_t d[] = { 0x72, 0x05, 0x20, 0x00, 0, 0, 0, 12,
                          0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34 };
    assert_int_equal(scsi_parse_sense(d, sizeof d, &s), 0);
    assert_int_equal(s.key, SCSI_SK_ILLEGAL_REQUEST);
    assert_int_equal(s.asc, 0x20);
    assert_true(s.info_valid);
    assert_int_equal(s.info, 0x1234);
    assert_true(scsi_sense_means_unsupported(&s));
    /* a medium error is a fault, not "unsupported" */
    uint8_t me[14] = { 0x70, 0, 0x03, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0x11, 0x00 };
    assert_int_equal(scsi_parse_sense(me, sizeof me, &s), 0);
    assert_false(scsi_sense_means_unsupported(&s));
    scsi_sense_str(&s, m, sizeof m);
    assert_string_equal(m, "MEDIUM ERROR: unrecovered read error (ASC 0x11, ASCQ 0x00)");
    /* unknown ASC */
    me[12] = 0x77;
    scsi_parse_sense(me, sizeof me, &s);
    scsi_sense_str(&s, m, sizeof m);
    assert_string_equal(m, "MEDIUM ERROR (ASC 0x77, ASCQ 0x00)");
    /* additional length shorter than the buffer bounds ASC */
    uint8_t sh[18] = { 0x70, 0, 0x0a, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0x0d, 0x02 };
    assert_int_equal(scsi_parse_sense(sh, sizeof sh, &s), 0);
    assert_int_equal(s.asc, 0);
    assert_int_equal(scsi_parse_sense(sh, 0, &s), -EINVAL);
    sh[0] = 0x7f;
    assert_int_equal(scsi_parse_sense(sh, sizeof sh, &s), -EINVAL);
}

static void test_copy_status(void **state)
{
    (void)state;
    uint8_t p[12] = { 0, 0, 0, 8, 0x02, 0x00, 0x03, 0x02, 0, 0, 0, 5 };
    struct scsi_copy_status cs;
    assert_int_equal(scsi_parse_copy_status(p, sizeof p, &cs), 0);
    assert_int_equal(cs.status, 2);
    assert_int_equal(cs.segments_processed, 3);
    assert_int_equal(cs.transfer_bytes, 5ull << 20);
    p[7] = 6;
    p[8] = 0xff;
    assert_int_equal(scsi_parse_copy_status(p, sizeof p, &cs), 0);
    assert_int_equal(cs.transfer_bytes, UINT64_MAX);
    p[7] = 7;
    assert_int_equal(scsi_parse_copy_status(p, sizeof p, &cs), -EINVAL);
    assert_int_equal(scsi_parse_copy_status(p, 11, &cs), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vpd83_lio),
        cmocka_unit_test(test_vpd83_prefers_naa_over_eui),
        cmocka_unit_test(test_vpd83_bad),
        cmocka_unit_test(test_inquiry),
        cmocka_unit_test(test_vpd00),
        cmocka_unit_test(test_opparams),
        cmocka_unit_test(test_vpd8f),
        cmocka_unit_test(test_plan_lio),
        cmocka_unit_test(test_build_xcopy),
        cmocka_unit_test(test_cdbs),
        cmocka_unit_test(test_sense),
        cmocka_unit_test(test_copy_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
