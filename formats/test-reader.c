/* Unit tests of the reader: header parsing, every kind of L2 entry, chain
 * resolution and extent merging.  Images are built byte by byte here so
 * each field can be set to exactly the value under test. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <zlib.h>

#include "error.h"
#include "image.h"
#include "qcow2/qcow2-format.h"
#include "util.h"

/* Layout (cluster size C): 0 header, 1 refcount table, 2 refcount block,
 * 3 L1, 4 L2, 5.. data. */
struct spec {
    unsigned version, cbits;
    bool extl2;
    uint64_t vsize;
    uint64_t incompat;
    uint32_t crypt, hdr_len, refcount_order;
    uint8_t compression_type;
    const char *backing;
    const char *backing_fmt;
    uint64_t l1_override;      /* if non-zero: L1[0] */
    uint64_t l1_offset;        /* 0: cluster 3 */
    uint32_t l1_size;          /* 0: computed */
    uint32_t reftable_clusters;/* 0: 1 */
    uint64_t l2[64][2];        /* (entry, bitmap) for the first entries */
    unsigned nl2;
    unsigned data_clusters;    /* file length = (5 + data_clusters) clusters */
    int truncate_to;           /* >0: cut the file there */
};

static char tmpdir[] = "/tmp/lsm-reader-XXXXXX";
static char path[256];

static void build(const struct spec *s)
{
    unsigned cb = s->cbits ? s->cbits : 9;
    uint64_t C = 1ULL << cb;
    unsigned ncl = 5 + s->data_clusters;
    size_t len = ncl * C;
    uint8_t *b = calloc(1, len);
    unsigned version = s->version ? s->version : 3;
    unsigned l2_bits = cb - (s->extl2 ? 4 : 3);
    uint64_t vsize = s->vsize ? s->vsize : (C << l2_bits);
    uint32_t l1_size = s->l1_size ? s->l1_size : (uint32_t)div_round_up(vsize, C << l2_bits);
    be32_put(b + 0, QCOW2_MAGIC);
    be32_put(b + 4, version);
    be32_put(b + 20, cb);
    be64_put(b + 24, vsize);
    be32_put(b + 32, s->crypt);
    be32_put(b + 36, l1_size);
    be64_put(b + 40, s->l1_offset ? s->l1_offset : 3 * C);
    be64_put(b + 48, 1 * C);
    be32_put(b + 56, s->reftable_clusters ? s->reftable_clusters : 1);
    size_t ext = 72;
    if (version == 3) {
        be64_put(b + 72, s->incompat | (s->extl2 ? QCOW2_INCOMPAT_EXTL2 : 0));
        be32_put(b + 96, s->refcount_order ? s->refcount_order : 4);
        be32_put(b + 100, s->hdr_len ? s->hdr_len : 112);
        b[104] = s->compression_type;
        ext = s->hdr_len ? s->hdr_len : 112;
    }
    if (s->backing_fmt) {
        be32_put(b + ext, QCOW2_EXT_BACKING_FORMAT);
        be32_put(b + ext + 4, (uint32_t)strlen(s->backing_fmt));
        memcpy(b + ext + 8, s->backing_fmt, strlen(s->backing_fmt));
        ext += 8 + align_up(strlen(s->backing_fmt), 8);
    }
    if (s->backing) {
        size_t bl = strlen(s->backing);
        be64_put(b + 8, ext + 8);
        be32_put(b + 16, (uint32_t)bl);
        memcpy(b + ext + 8, s->backing, MIN(bl, C - ext - 8));
    }
    /* refcount table -> block; every cluster of the file has refcount 1 */
    be64_put(b + C, 2 * C);
    for (unsigned i = 0; i < ncl && i < C / 2; i++)
        be16_put(b + 2 * C + 2 * i, 1);
    be64_put(b + 3 * C, s->l1_override ? s->l1_override : (4 * C) | QCOW2_OFLAG_COPIED);
    unsigned esz = s->extl2 ? 16 : 8;
    for (unsigned i = 0; i < s->nl2; i++) {
        be64_put(b + 4 * C + i * esz, s->l2[i][0]);
        if (s->extl2)
            be64_put(b + 4 * C + i * esz + 8, s->l2[i][1]);
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(b, 1, s->truncate_to > 0 ? (size_t)s->truncate_to : len, f);
    fclose(f);
    free(b);
}

static int open_spec(const struct spec *s, struct lsm_image **img)
{
    build(s);
    return lsm_image_open(path, LSM_FMT_AUTO, 0, img);
}

static void expect_refused(const struct spec *s, const char *msg_part)
{
    struct lsm_image *img = NULL;
    int r = open_spec(s, &img);
    if (r == 0)
        lsm_image_close(img);
    assert_true(r < 0);
    if (msg_part && !strstr(lsm_last_error(), msg_part))
        fail_msg("message '%s' lacks '%s'", lsm_last_error(), msg_part);
}

static int setup(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(tmpdir));
    snprintf(path, sizeof path, "%s/img.qcow2", tmpdir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- header ---- */

static void test_header_good(void **state)
{
    (void)state;
    struct spec s = { 0 };
    struct lsm_image *img;
    assert_int_equal(open_spec(&s, &img), 0);
    assert_int_equal(img->format, LSM_FMT_QCOW2);
    assert_int_equal(img->cluster_size, 512);
    assert_int_equal(img->virtual_size, 512 * 64);
    struct lsm_qcow2_info qi;
    assert_int_equal(lsm_qcow2_get_info(img, &qi), 0);
    assert_int_equal(qi.version, 3);
    assert_int_equal(qi.refcount_bits, 16);
    assert_string_equal(qi.compression, "zlib");
    lsm_image_close(img);

    struct spec v2 = { .version = 2 };
    assert_int_equal(open_spec(&v2, &img), 0);
    assert_int_equal(lsm_qcow2_get_info(img, &qi), 0);
    assert_int_equal(qi.version, 2);
    lsm_image_close(img);

    /* virtual size counts whole sectors, like QEMU */
    struct spec odd = { .vsize = 1000 };
    assert_int_equal(open_spec(&odd, &img), 0);
    assert_int_equal(img->virtual_size, 512);
    lsm_image_close(img);
}

static void test_header_bad(void **state)
{
    (void)state;
    expect_refused(&(struct spec){ .version = 4 }, "version");
    expect_refused(&(struct spec){ .cbits = 8 }, "cluster size");
    expect_refused(&(struct spec){ .cbits = 22 }, "cluster size");
    expect_refused(&(struct spec){ .hdr_len = 100 }, "header");
    expect_refused(&(struct spec){ .hdr_len = 1024 }, "exceeds the cluster size");
    expect_refused(&(struct spec){ .incompat = 1ULL << 7 }, "incompatible feature");
    expect_refused(&(struct spec){ .crypt = 1 }, "encrypted");
    expect_refused(&(struct spec){ .crypt = 2 }, "encrypted");
    expect_refused(&(struct spec){ .crypt = 3 }, "encryption");
    expect_refused(&(struct spec){ .refcount_order = 7 }, "refcount");
    expect_refused(&(struct spec){ .vsize = 1ULL << 63 }, "too large");
    expect_refused(&(struct spec){ .vsize = 1ULL << 40, .l1_size = 1 }, "L1 table is too small");
    expect_refused(&(struct spec){ .l1_offset = 3 * 512 + 8 }, "not aligned");
    expect_refused(&(struct spec){ .l1_offset = 1ULL << 40 }, "beyond the end");
    expect_refused(&(struct spec){ .l1_offset = 1 * 512 }, "overlaps");
    expect_refused(&(struct spec){ .l1_size = 1u << 30 }, "too large");
    expect_refused(&(struct spec){ .reftable_clusters = 100 }, "refcount table");
    expect_refused(&(struct spec){ .compression_type = 1 }, "bit must be set");
    expect_refused(&(struct spec){ .compression_type = 7, .incompat = QCOW2_INCOMPAT_COMPRESSION }, "compression type");
    expect_refused(&(struct spec){ .incompat = QCOW2_INCOMPAT_COMPRESSION }, "zlib");
    expect_refused(&(struct spec){ .extl2 = true, .cbits = 12 }, "subcluster");
    expect_refused(&(struct spec){ .truncate_to = 50 }, "too short");
    expect_refused(&(struct spec){ .backing_fmt = "vmdk", .backing = "x.vmdk" }, "vmdk");
}

static void test_header_backing(void **state)
{
    (void)state;
    struct lsm_image *img;
    build(&(struct spec){ .backing = "base.raw", .backing_fmt = "raw" });
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, LSM_OPEN_NO_BACKING, &img), 0);
    assert_string_equal(img->backing_name, "base.raw");
    assert_int_equal(img->backing_fmt, LSM_FMT_RAW);
    lsm_image_close(img);
    /* the chain open fails clearly when the backing file is missing */
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), -ENOENT);
    assert_non_null(strstr(lsm_last_error(), "does not exist"));
    char longname[1100];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    expect_refused(&(struct spec){ .cbits = 12, .backing = longname }, "too long");
}

/* ---- L2 entries ---- */

struct run { uint64_t start, len; unsigned flags; uint64_t off; };

static void expect_map(const struct spec *s, const struct run *want, unsigned n)
{
    struct lsm_image *img;
    assert_int_equal(open_spec(s, &img), 0);
    struct lsm_map_iter it;
    struct lsm_extent e;
    lsm_map_iter_init(&it, img, 0, img->virtual_size, 0);
    unsigned i = 0;
    int r;
    while ((r = lsm_map_iter_next(&it, &e)) > 0) {
        assert_true(i < n);
        if (e.start != want[i].start || e.length != want[i].len || e.flags != want[i].flags ||
            ((e.flags & LSM_EXT_OFFSET) && e.offset != want[i].off))
            fail_msg("extent %u: got start %llu len %llu flags %#x off %llu, want %llu %llu %#x %llu", i,
                     (unsigned long long)e.start, (unsigned long long)e.length, e.flags,
                     (unsigned long long)e.offset, (unsigned long long)want[i].start,
                     (unsigned long long)want[i].len, want[i].flags, (unsigned long long)want[i].off);
        i++;
    }
    assert_int_equal(r, 0);
    assert_int_equal(i, n);
    lsm_image_close(img);
}

#define P LSM_EXT_PRESENT
#define Z LSM_EXT_ZERO
#define D LSM_EXT_DATA
#define O LSM_EXT_OFFSET
#define CMP LSM_EXT_COMPRESSED

static void test_l2_standard(void **state)
{
    (void)state;
    const uint64_t C = 512;
    struct spec s = { .data_clusters = 4, .nl2 = 6 };
    s.l2[0][0] = (5 * C) | QCOW2_OFLAG_COPIED;            /* normal */
    s.l2[1][0] = (6 * C) | QCOW2_OFLAG_COPIED;            /* normal, contiguous: merges */
    s.l2[2][0] = (8 * C) | QCOW2_OFLAG_COPIED;            /* normal, not contiguous */
    s.l2[3][0] = QCOW2_OFLAG_ZERO;                        /* zero, plain */
    s.l2[4][0] = (7 * C) | QCOW2_OFLAG_ZERO;              /* zero, allocated */
    s.l2[5][0] = 0;                                       /* unallocated */
    const struct run want[] = {
        { 0, 2 * C, P | D | O, 5 * C },
        { 2 * C, C, P | D | O, 8 * C },
        { 3 * C, C, P | Z, 0 },
        { 4 * C, C, P | Z | O, 7 * C },
        { 5 * C, 59 * C, Z, 0 },                          /* no backing: zero, not present */
    };
    expect_map(&s, want, ARRAY_SIZE(want));
}

static void test_l2_bad(void **state)
{
    (void)state;
    struct spec s = { .cbits = 12, .data_clusters = 1, .nl2 = 1 };
    struct lsm_image *img;
    struct lsm_extent e;
    s.l2[0][0] = (5 * 4096 + 512) | QCOW2_OFLAG_COPIED;   /* unaligned data cluster */
    assert_int_equal(open_spec(&s, &img), 0);
    assert_int_equal(lsm_chain_block_status(img, 0, 4096, &e), -EIO);
    assert_non_null(strstr(lsm_last_error(), "not aligned"));
    lsm_image_close(img);

    /* unaligned L2 table (the L1 mask keeps bits 9 and up: use 4 KiB clusters) */
    struct spec t = { .cbits = 12, .l1_override = (4 * 4096 + 512) };
    assert_int_equal(open_spec(&t, &img), 0);
    assert_int_equal(lsm_chain_block_status(img, 0, 512, &e), -EIO);
    lsm_image_close(img);
    struct spec u = { .l1_override = 1ULL << 40 };        /* L2 table past EOF */
    assert_int_equal(open_spec(&u, &img), 0);
    assert_int_equal(lsm_chain_block_status(img, 0, 512, &e), -EIO);
    assert_non_null(strstr(lsm_last_error(), "beyond the end"));
    lsm_image_close(img);
}

static void test_l2_compressed(void **state)
{
    (void)state;
    const uint64_t C = 512;
    uint8_t plain[512], comp[600];
    for (unsigned i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)(i * 7);
    z_stream z = { 0 };
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = plain;
    z.avail_in = sizeof plain;
    z.next_out = comp;
    z.avail_out = sizeof comp;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    size_t clen = sizeof comp - z.avail_out;
    deflateEnd(&z);

    struct spec s = { .data_clusters = 3, .nl2 = 2 };
    uint64_t coff = 5 * C + 100;                          /* byte-aligned host offset */
    uint64_t nsec = div_round_up(100 + clen, 512);        /* sectors touched */
    s.l2[0][0] = QCOW2_OFLAG_COMPRESSED | ((nsec - 1) << qcow2_csize_shift(9)) | coff;
    s.l2[1][0] = QCOW2_OFLAG_COMPRESSED | ((nsec - 1) << qcow2_csize_shift(9)) | coff;
    build(&s);
    FILE *f = fopen(path, "r+b");
    fseek(f, (long)coff, SEEK_SET);
    fwrite(comp, 1, clen, f);
    fclose(f);
    struct lsm_image *img;
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), 0);
    struct lsm_extent e;
    assert_int_equal(lsm_chain_block_status(img, 0, 4 * C, &e), 0);
    assert_int_equal(e.flags, P | D | CMP);
    assert_int_equal(e.length, C);                        /* compressed clusters one by one */
    uint8_t out[1024];
    assert_int_equal(lsm_image_pread(img, out, sizeof out, 0), 0);
    assert_memory_equal(out, plain, 512);
    assert_memory_equal(out + 512, plain, 512);
    /* merged by the iterator: both compressed clusters form one extent */
    struct lsm_map_iter it;
    lsm_map_iter_init(&it, img, 0, img->virtual_size, 0);
    assert_int_equal(lsm_map_iter_next(&it, &e), 1);
    assert_int_equal(e.length, 2 * C);
    lsm_image_close(img);
}

static void test_l2_extended(void **state)
{
    (void)state;
    const uint64_t C = 16384, SC = C / 32;
    struct spec s = { .cbits = 14, .extl2 = true, .data_clusters = 2, .nl2 = 3 };
    /* cluster 0: subclusters 0-3 data, 4-7 zero, rest unallocated */
    s.l2[0][0] = (5 * C) | QCOW2_OFLAG_COPIED;
    s.l2[0][1] = 0xfULL | (0xf0ULL << 32);
    /* cluster 1: no host cluster, subclusters 0-1 zero */
    s.l2[1][0] = 0;
    s.l2[1][1] = 0x3ULL << 32;
    /* cluster 2: all data */
    s.l2[2][0] = (6 * C) | QCOW2_OFLAG_COPIED;
    s.l2[2][1] = QCOW2_SUB_ALL_ALLOC;
    const struct run want[] = {
        { 0, 4 * SC, P | D | O, 5 * C },
        { 4 * SC, 4 * SC, P | Z | O, 5 * C + 4 * SC },
        /* unallocated subclusters of an allocated cluster keep their host
         * offset in QEMU's map (OFFSET_VALID without DATA or ZERO) */
        { 8 * SC, 24 * SC, Z | O, 5 * C + 8 * SC },
        { C, 2 * SC, P | Z, 0 },
        { C + 2 * SC, 30 * SC, Z, 0 },
        { 2 * C, C, P | D | O, 6 * C },
        { 3 * C, (1024 - 3) * C, Z, 0 },
    };
    expect_map(&s, want, ARRAY_SIZE(want));

    /* a subcluster both allocated and zero is invalid */
    struct spec bad = { .cbits = 14, .extl2 = true, .data_clusters = 1, .nl2 = 1 };
    bad.l2[0][0] = (5 * C) | QCOW2_OFLAG_COPIED;
    bad.l2[0][1] = 0x1ULL | (0x1ULL << 32);
    struct lsm_image *img;
    struct lsm_extent e;
    assert_int_equal(open_spec(&bad, &img), 0);
    assert_int_equal(lsm_chain_block_status(img, 0, C, &e), -EIO);
    assert_non_null(strstr(lsm_last_error(), "subcluster"));
    lsm_image_close(img);
}

/* ---- chains ---- */

static void test_resolve_backing(void **state)
{
    (void)state;
    int err;
    char *p;
    p = lsm_resolve_backing("d3/top.qcow2", "../d2/mid.qcow2", &err);
    assert_string_equal(p, "d3/../d2/mid.qcow2");
    free(p);
    p = lsm_resolve_backing("top.qcow2", "mid.qcow2", &err);
    assert_string_equal(p, "mid.qcow2");
    free(p);
    p = lsm_resolve_backing("/a/b/top.qcow2", "/abs/base.raw", &err);
    assert_string_equal(p, "/abs/base.raw");
    free(p);
    p = lsm_resolve_backing("/a/b/top.qcow2", "base.raw", &err);
    assert_string_equal(p, "/a/b/base.raw");
    free(p);
    assert_null(lsm_resolve_backing("top.qcow2", "json:{\"file\":{}}", &err));
    assert_int_equal(err, -ENOTSUP);
    assert_null(lsm_resolve_backing("top.qcow2", "nbd://host/x", &err));
    assert_int_equal(err, -ENOTSUP);
    assert_null(lsm_resolve_backing("top.qcow2", "", &err));
    assert_int_equal(err, -EINVAL);
    /* a colon after a slash is a file name, not a protocol */
    p = lsm_resolve_backing("top.qcow2", "./a:b", &err);
    assert_string_equal(p, "./a:b");
    free(p);
}

static void test_chain_loop(void **state)
{
    (void)state;
    /* img.qcow2 names itself */
    struct spec s = { .backing = "img.qcow2", .backing_fmt = "qcow2" };
    expect_refused(&s, "loop");
}

static void test_chain_depth_and_shorter_backing(void **state)
{
    (void)state;
    /* top (32K) over a raw base of 1 KiB: past the base reads as zero, at depth 0 */
    char base[300];
    snprintf(base, sizeof base, "%s/base.raw", tmpdir);
    FILE *f = fopen(base, "wb");
    fputs("hello", f);
    fclose(f);
    struct spec s = { .backing = "base.raw", .backing_fmt = "raw" };
    /* raw base: 5 bytes of data then zeroes up to the whole sector, at
     * depth 1 (QEMU's file driver does not round the data extent); beyond
     * the base: zero at depth 0 */
    const struct run want[] = {
        { 0, 5, P | D | O, 0 },
        { 5, 507, P | Z | O, 5 },
        { 512, 31 * 1024 + 512, Z, 0 },
    };
    struct lsm_image *img;
    assert_int_equal(open_spec(&s, &img), 0);
    assert_int_equal(lsm_chain_length(img), 2);
    struct lsm_map_iter it;
    struct lsm_extent e;
    lsm_map_iter_init(&it, img, 0, img->virtual_size, 0);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(lsm_map_iter_next(&it, &e), 1);
        assert_int_equal(e.depth, 1);
        assert_int_equal(e.flags, want[i].flags);
        assert_int_equal(e.start, want[i].start);
        assert_int_equal(e.length, want[i].len);
    }
    assert_int_equal(lsm_map_iter_next(&it, &e), 1);
    assert_int_equal(e.depth, 0);
    assert_int_equal(e.flags, want[2].flags);
    assert_int_equal(e.start + e.length, img->virtual_size);
    uint8_t buf[8];
    assert_int_equal(lsm_image_pread(img, buf, 8, 0), 0);
    assert_memory_equal(buf, "hello\0\0\0", 8);
    /* one-layer iteration: nothing of the top layer is present */
    lsm_map_iter_init(&it, img, 0, img->virtual_size, LSM_MAP_ONE_LAYER);
    assert_int_equal(lsm_map_iter_next(&it, &e), 1);
    assert_int_equal(e.flags, 0);
    assert_int_equal(e.length, img->virtual_size);
    lsm_image_close(img);
    unlink(base);
}

static void test_probe(void **state)
{
    (void)state;
    struct lsm_image *img;
    FILE *f = fopen(path, "wb");
    fputs("not an image at all", f);
    fclose(f);
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), 0);
    assert_int_equal(img->format, LSM_FMT_RAW);
    assert_int_equal(img->virtual_size, 512);   /* whole sectors */
    lsm_image_close(img);
    f = fopen(path, "wb");
    fwrite("QFI\xfb\0\0\0\1", 1, 8, f);
    fclose(f);
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), -ENOTSUP);
    f = fopen(path, "wb");
    fwrite("LUKS\xba\xbe\0\1", 1, 8, f);
    fclose(f);
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), -ENOTSUP);
    assert_non_null(strstr(lsm_last_error(), "LUKS"));

    /* Formats QEMU reads and we do not are refused by name, never raw. */
#define BYTES(s) s, sizeof(s) - 1
    static const struct { const char *bytes; size_t len, at; const char *name; } foreign[] = {
        { BYTES("conectix"), 0, "VPC" },
        { BYTES("vhdxfile"), 0, "VHDX" },
        { BYTES("\x7f\x10\xda\xbe"), 0x40, "VDI" },
        { BYTES("KDMV"), 0, "VMDK" },
        { BYTES("# Disk DescriptorFile\n  \r\nversion=1\r\n"), 0, "VMDK" },
        { BYTES("WithoutFreeSpace\2\0\0\0"), 0, "Parallels" },
        { BYTES("QED\0"), 0, "QED" },
    };
#undef BYTES
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        char buf[1024] = { 0 };
        memcpy(buf + foreign[i].at, foreign[i].bytes, foreign[i].len);
        f = fopen(path, "wb");
        fwrite(buf, 1, sizeof buf, f);
        fclose(f);
        assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), -ENOTSUP);
        assert_non_null(strstr(lsm_last_error(), foreign[i].name));
        /* -f raw reads it as raw, as QEMU does. */
        assert_int_equal(lsm_image_open(path, LSM_FMT_RAW, 0, &img), 0);
        lsm_image_close(img);
    }
    /* A DMG is recognised by its UDIF trailer in the last 512 bytes. */
    char dmg[1536] = { 0 };
    memcpy(dmg + 1024, "koly\0\0\0\4\0\0\2\0", 12);
    f = fopen(path, "wb");
    fwrite(dmg, 1, sizeof dmg, f);
    fclose(f);
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), -ENOTSUP);
    assert_non_null(strstr(lsm_last_error(), "DMG"));
    /* An empty line before "version=" is not a descriptor (QEMU agrees). */
    f = fopen(path, "wb");
    fputs("\nversion=1\n", f);
    fclose(f);
    assert_int_equal(lsm_image_open(path, LSM_FMT_AUTO, 0, &img), 0);
    assert_int_equal(img->format, LSM_FMT_RAW);
    lsm_image_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_good),
        cmocka_unit_test(test_header_bad),
        cmocka_unit_test(test_header_backing),
        cmocka_unit_test(test_l2_standard),
        cmocka_unit_test(test_l2_bad),
        cmocka_unit_test(test_l2_compressed),
        cmocka_unit_test(test_l2_extended),
        cmocka_unit_test(test_resolve_backing),
        cmocka_unit_test(test_chain_loop),
        cmocka_unit_test(test_chain_depth_and_shorter_backing),
        cmocka_unit_test(test_probe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
