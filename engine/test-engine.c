/* Unit tests of the copy engine: zero detection, token bucket, the plan
 * over a fake source endpoint, whole copies of raw files through lsm_copy
 * (recorder hook, rate limit), and the engine between null endpoints. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends.h"
#include "flow-copy.h"
#include "error.h"
#include "util.h"

/* ---- lsm_is_zero ---- */

static void test_is_zero(void **state)
{
    (void)state;
    static uint64_t words[1024];
    unsigned char *b = (unsigned char *)words;
    memset(words, 0, sizeof(words));
    assert_true(lsm_is_zero(b, sizeof(words)));
    assert_true(lsm_is_zero(b, 0));
    for (size_t pos = 0; pos < 64; pos++) {
        for (size_t len = 1; len < 80; len++) {
            memset(words, 0, sizeof(words));
            assert_true(lsm_is_zero(b + pos, len));
            b[pos + len - 1] = 1;
            assert_false(lsm_is_zero(b + pos, len));
            b[pos + len - 1] = 0;
            b[pos] = 0x80;
            assert_false(lsm_is_zero(b + pos, len));
            b[pos] = 0;
            if (pos)
                b[pos - 1] = 1;         /* outside: ignored */
            b[pos + len] = 1;
            assert_true(lsm_is_zero(b + pos, len));
        }
    }
    memset(words, 0, sizeof(words));
    b[sizeof(words) - 1] = 2;
    assert_false(lsm_is_zero(b, sizeof(words)));
}

/* ---- token bucket ---- */

static void test_ratelimit(void **state)
{
    (void)state;
    struct lsm_ratelimit rl;
    const uint64_t s = 1000000000ULL;
    lsm_ratelimit_init(&rl, 1000000, 100000, 0);     /* 1 MB/s, burst 100 kB */
    assert_int_equal(lsm_ratelimit_take(&rl, 100000, 0), 0);   /* the burst */
    uint64_t w = lsm_ratelimit_take(&rl, 50000, 0);
    assert_true(w >= s / 20 - 1000 && w <= s / 20 + 1000);     /* 50 ms */
    assert_int_equal(lsm_ratelimit_take(&rl, 50000, s / 20), 0);
    /* Long run: 10 MB in 100 kB steps at 1 MB/s takes ~10 s of virtual time. */
    lsm_ratelimit_init(&rl, 1000000, 100000, 0);
    uint64_t now = 0, moved = 0;
    while (moved < 10000000) {
        uint64_t wait = lsm_ratelimit_take(&rl, 100000, now);
        if (wait)
            now += wait;
        else
            moved += 100000;
    }
    assert_true(now >= 9 * s && now <= 10 * s + s / 10);
    /* A request larger than the burst passes when the bucket is full. */
    lsm_ratelimit_init(&rl, 1000, 10, 0);
    assert_int_equal(lsm_ratelimit_take(&rl, 5000, 0), 0);
    assert_true(lsm_ratelimit_take(&rl, 10, 0) > 0);
    /* Unlimited */
    lsm_ratelimit_init(&rl, 0, 0, 0);
    assert_int_equal(lsm_ratelimit_take(&rl, UINT64_MAX / 2, 0), 0);
}

/* ---- plan over a fake source ---- */

/* A source endpoint that hands out a fixed array of extents in order,
 * whatever it is asked (so a bad array reaches the plan as it is). */
struct fake_src {
    struct lsm_ep ep;
    const struct lsm_ep_extent *ext;
    size_t n, pos;
};

static int fake_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                        unsigned max)
{
    struct fake_src *f = ep->priv;
    unsigned k = 0;
    while (k < max && f->pos < f->n)
        out[k++] = f->ext[f->pos++];
    return (int)k;
}

static const struct lsm_ep_ops fake_ops = {
    .name = "fake", .extents = fake_extents,
};

static struct lsm_file file_a, file_b;

#define D(s, l, f, h) { s, l, LSM_EP_DATA, f, h }
#define Z(s, l) { s, l, LSM_EP_ZERO, NULL, 0 }
#define A(s, l) { s, l, LSM_EP_ABSENT, NULL, 0 }

static int plan_all(const struct lsm_ep_extent *ext, size_t n, uint64_t size, uint64_t g,
                    bool mixed_data, struct lsm_run *out, size_t max)
{
    struct fake_src f = { .ep = { .ops = &fake_ops, .name = "fake", .caps = { .size = size } },
                          .ext = ext, .n = n };
    f.ep.priv = &f;
    static struct lsm_plan p;   /* large: not on the stack */
    lsm_plan_init(&p, &f.ep, size, g, mixed_data);
    size_t k = 0;
    int r;
    uint64_t pos = 0;
    while ((r = lsm_plan_next(&p, &out[k])) > 0) {
        assert_int_equal(out[k].start, pos);          /* contiguous */
        pos += out[k].length;
        /* granule-aligned ends except at the end */
        assert_true(pos == size || pos % g == 0);
        k++;
        assert_true(k < max);
    }
    if (r < 0)
        return r;
    assert_int_equal(pos, size);
    return (int)k;
}

static void test_plan_aligned(void **state)
{
    (void)state;
    const uint64_t K = 1024;
    struct lsm_ep_extent ext[] = {
        D(0, 128 * K, &file_a, 65536), Z(128 * K, 64 * K), A(192 * K, 64 * K),
        D(256 * K, 64 * K, &file_a, 1 << 20),
    };
    struct lsm_run r[16];
    int n = plan_all(ext, 4, 320 * K, 64 * K, true, r, 16);
    assert_int_equal(n, 4);
    assert_int_equal(r[0].kind, LSM_RUN_DATA);
    assert_int_equal(r[0].length, 128 * K);
    assert_int_equal(r[0].loc_off, 65536);
    assert_ptr_equal(r[0].loc, &file_a);
    assert_int_equal(r[1].kind, LSM_RUN_ZERO);
    assert_int_equal(r[2].kind, LSM_RUN_SKIP);
    assert_int_equal(r[3].kind, LSM_RUN_DATA);
    assert_int_equal(r[3].loc_off, 1 << 20);
}

static void test_plan_mixed(void **state)
{
    (void)state;
    const uint64_t K = 1024;
    /* 4K data extents inside 64K granules. */
    struct lsm_ep_extent ext[] = {
        D(0, 4 * K, &file_a, 0), D(4 * K, 4 * K, &file_a, 4 * K),  /* contiguous */
        Z(8 * K, 56 * K),                                           /* granule 0: mixed */
        D(64 * K, 32 * K, &file_a, 100 * K), D(96 * K, 32 * K, &file_a, 132 * K), /* contiguous data */
        D(128 * K, 32 * K, &file_a, 0), D(160 * K, 32 * K, &file_b, 32 * K),     /* other file */
        Z(192 * K, 32 * K), A(224 * K, 32 * K),                    /* zero + absent */
        D(256 * K, 70 * K, &file_a, 512 * K),                      /* crosses a granule, ends unaligned at EOF */
    };
    struct lsm_run r[16];
    int n = plan_all(ext, ARRAY_SIZE(ext), 326 * K, 64 * K, true, r, 16);
    assert_int_equal(n, 5);
    assert_int_equal(r[0].kind, LSM_RUN_MIXED);
    assert_int_equal(r[1].kind, LSM_RUN_DATA);
    assert_int_equal(r[1].start, 64 * K);
    assert_int_equal(r[1].length, 64 * K);
    assert_int_equal(r[1].loc_off, 100 * K);
    assert_int_equal(r[2].kind, LSM_RUN_MIXED);
    assert_int_equal(r[3].kind, LSM_RUN_MIXED);      /* zero + absent with a backing under dst */
    assert_int_equal(r[4].kind, LSM_RUN_DATA);       /* to EOF, unaligned end */
    assert_int_equal(r[4].start, 256 * K);
    assert_int_equal(r[4].length, 70 * K);
    assert_int_equal(r[4].loc_off, 512 * K);

    /* Without a backing under the destination, zero + absent is zero. */
    n = plan_all(ext, ARRAY_SIZE(ext), 326 * K, 64 * K, false, r, 16);
    assert_int_equal(n, 5);
    assert_int_equal(r[3].kind, LSM_RUN_ZERO);

    /* Small granules keep the extents. */
    n = plan_all(ext, ARRAY_SIZE(ext), 326 * K, 4 * K, false, r, 16);
    assert_true(n > 5);
    assert_int_equal(r[0].kind, LSM_RUN_DATA);
    assert_int_equal(r[0].length, 4 * K);
}

static void test_plan_bad_source(void **state)
{
    (void)state;
    struct lsm_ep_extent gap[] = { D(0, 4096, &file_a, 0), D(8192, 4096, &file_a, 0) };
    struct lsm_run r[8];
    assert_int_equal(plan_all(gap, 2, 12288, 4096, false, r, 8), -EIO);
    struct lsm_ep_extent shortx[] = { D(0, 4096, &file_a, 0) };
    assert_int_equal(plan_all(shortx, 1, 12288, 4096, false, r, 8), -EIO);
    lsm_error_clear();
}

/* ---- whole copies of raw files ---- */

/* The recorder keeps every range it is given, so a test can check that the
 * ranges cover the disk exactly: no byte twice, none left out, nothing
 * after the final (len == 0) call. */
#define REC_MAX 4096
struct rec {
    uint64_t start[REC_MAX], len[REC_MAX];
    unsigned calls;
    bool final;
    bool after_final;    /* a range recorded after the final call */
    bool overflow;
    int fail_after;
};

static int rec_fn(void *opaque, uint64_t start, uint64_t len)
{
    struct rec *r = opaque;
    if (len == 0) {
        r->final = true;
        return 0;
    }
    if (r->final)
        r->after_final = true;
    if (r->calls < REC_MAX) {
        r->start[r->calls] = start;
        r->len[r->calls] = len;
    } else {
        r->overflow = true;
    }
    r->calls++;
    if (r->fail_after && (int)r->calls >= r->fail_after)
        return lsm_error(-ECANCELED, "recorder says stop at %llu", (unsigned long long)start);
    return 0;
}

static int cmp_u64_pair(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The recorded ranges, sorted, tile [0, size) exactly.  Returns a
 * description of the first overlap or gap, or NULL. */
static const char *rec_tiles(const struct rec *r, uint64_t size, char *why, size_t n)
{
    if (r->overflow)
        return snprintf(why, n, "more than %d ranges recorded", REC_MAX), why;
    uint64_t (*v)[2] = malloc(sizeof(*v) * (r->calls ? r->calls : 1));
    assert_non_null(v);
    for (unsigned i = 0; i < r->calls; i++) {
        v[i][0] = r->start[i];
        v[i][1] = r->len[i];
    }
    qsort(v, r->calls, sizeof(*v), cmp_u64_pair);
    uint64_t pos = 0;
    const char *res = NULL;
    for (unsigned i = 0; i < r->calls && !res; i++) {
        if (v[i][0] < pos)
            res = (snprintf(why, n, "overlap: [%llu, +%llu) starts before %llu",
                            (unsigned long long)v[i][0], (unsigned long long)v[i][1],
                            (unsigned long long)pos), why);
        else if (v[i][0] > pos)
            res = (snprintf(why, n, "gap: [%llu, %llu) not recorded",
                            (unsigned long long)pos, (unsigned long long)v[i][0]), why);
        pos = v[i][0] + v[i][1];
    }
    if (!res && pos != size)
        res = (snprintf(why, n, "ranges end at %llu, the disk at %llu",
                        (unsigned long long)pos, (unsigned long long)size), why);
    free(v);
    return res;
}

static char tmpdir[64];

static void make_src(const char *path, uint64_t size)
{
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    char *buf = malloc(MiB);
    for (uint64_t off = 0; off < size; off += 3 * MiB) {   /* 1 MiB data, 2 MiB hole */
        for (size_t i = 0; i < MiB; i++)
            buf[i] = (char)(i * 7 + off / MiB);
        assert_int_equal(pwrite(fd, buf, MIN(MiB, size - off), (off_t)off), (ssize_t)MIN(MiB, size - off));
    }
    free(buf);
    close(fd);
}

static bool same_content(const char *a, const char *b)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

static void test_copy_recorder(void **state)
{
    (void)state;
    char src[128], dst[128];
    snprintf(src, sizeof(src), "%s/src.raw", tmpdir);
    snprintf(dst, sizeof(dst), "%s/dst.raw", tmpdir);
    make_src(src, 20 * MiB + 4096);
    static struct rec rec;   /* large: not on the stack */
    memset(&rec, 0, sizeof(rec));
    struct lsm_copy_opts o = {
        .src_path = src, .src_fmt = LSM_FMT_RAW, .dst_path = dst, .dst_fmt = LSM_FMT_RAW,
        .io_kind = LSM_IO_PSYNC, .record = rec_fn, .opaque = &rec,
    };
    struct lsm_copy_stats st;
    int r = lsm_copy(&o, &st);
    if (r < 0)
        fprintf(stderr, "copy: %s\n", lsm_last_error());
    assert_int_equal(r, 0);
    assert_true(same_content(src, dst));
    char why[160];
    const char *bad = rec_tiles(&rec, 20 * MiB + 4096, why, sizeof(why));
    if (bad)
        fprintf(stderr, "recorder: %s\n", bad);
    assert_null(bad);   /* every byte reported exactly once */
    assert_true(rec.final);
    assert_false(rec.after_final);
    assert_true(st.bytes_skipped + st.bytes_zeroed + st.bytes_done >= 20 * MiB);

    /* The recorder can stop the copy.  A destination that existed before
     * is not removed (only what this copy created is)... */
    static struct rec stop;   /* large: not on the stack */
    memset(&stop, 0, sizeof(stop));
    stop.fail_after = 3;
    o.opaque = &stop;
    r = lsm_copy(&o, &st);
    assert_int_equal(r, -ECANCELED);
    assert_false(st.dst_removed);
    assert_true(st.dst_incomplete);
    assert_int_equal(access(dst, F_OK), 0);
    lsm_error_clear();
    /* ...and the destination this copy created is removed. */
    assert_int_equal(unlink(dst), 0);
    memset(&stop, 0, sizeof(stop));
    stop.fail_after = 3;
    r = lsm_copy(&o, &st);
    assert_int_equal(r, -ECANCELED);
    assert_true(st.dst_removed);
    assert_int_not_equal(access(dst, F_OK), 0);
    lsm_error_clear();
    unlink(src);
}

/* Physical copies record host ranges: every cluster in use exactly once
 * (the header cluster last), nothing else. */
struct runs {
    uint64_t v[2 * 64];
    unsigned n;
};

static int add_run(void *opaque, uint64_t host, uint64_t len)
{
    struct runs *r = opaque;
    assert_true(r->n < 64);
    r->v[2 * r->n] = host;
    r->v[2 * r->n + 1] = len;
    r->n++;
    return 0;
}

static void test_copy_recorder_physical(void **state)
{
    (void)state;
    char src[128], dst[128], cmd[512];
    snprintf(src, sizeof(src), "%s/psrc.qcow2", tmpdir);
    snprintf(dst, sizeof(dst), "%s/pdst.qcow2", tmpdir);
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 '%s' 64M && "
             "qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 40M 64k' -c 'write -c -P 3 8M 64k' '%s' >/dev/null",
             src, src);
    if (system(cmd) != 0)
        skip();   /* no qemu-img / qemu-io here */
    static struct rec rec;
    memset(&rec, 0, sizeof(rec));
    struct lsm_copy_opts o = {
        .src_path = src, .src_fmt = LSM_FMT_QCOW2, .dst_path = dst, .dst_fmt = LSM_FMT_QCOW2,
        .physical = LSM_PHYSICAL_ALWAYS, .io_kind = LSM_IO_PSYNC, .record = rec_fn, .opaque = &rec,
    };
    struct lsm_copy_stats st;
    int r = lsm_copy(&o, &st);
    if (r < 0)
        fprintf(stderr, "copy: %s\n", lsm_last_error());
    assert_int_equal(r, 0);
    assert_true(st.physical);
    assert_true(same_content(src, dst));
    assert_true(rec.final);
    assert_false(rec.after_final);
    assert_int_equal(rec.start[rec.calls - 1], 0);   /* the header last */

    struct lsm_image *img = NULL;
    assert_int_equal(lsm_image_open(src, LSM_FMT_QCOW2, LSM_OPEN_NO_BACKING, &img), 0);
    struct runs want = { .n = 0 };
    assert_int_equal(lsm_qcow2_for_each_used_run(img, add_run, &want), 0);
    lsm_image_close(img);

    /* Sorted and merged where adjacent, the records are the used runs. */
    uint64_t (*v)[2] = malloc(sizeof(*v) * rec.calls);
    assert_non_null(v);
    for (unsigned i = 0; i < rec.calls; i++) {
        v[i][0] = rec.start[i];
        v[i][1] = rec.len[i];
    }
    qsort(v, rec.calls, sizeof(*v), cmp_u64_pair);
    unsigned k = 0;
    for (unsigned i = 0; i < rec.calls; i++) {
        assert_true(k < want.n);
        assert_int_equal(v[i][0], want.v[2 * k]);   /* no gap, no overlap */
        uint64_t end = v[i][0] + v[i][1];
        while (i + 1 < rec.calls && v[i + 1][0] == end) {
            i++;
            end = v[i][0] + v[i][1];
        }
        assert_true(i + 1 >= rec.calls || v[i + 1][0] > end);
        assert_int_equal(end, want.v[2 * k] + want.v[2 * k + 1]);
        k++;
    }
    assert_int_equal(k, want.n);
    free(v);
    unlink(src);
    unlink(dst);
}

/* The checker itself: an overlap that a gap makes up for in the total is
 * caught (a byte count alone passed it). */
static void test_rec_tiles(void **state)
{
    (void)state;
    char why[160];
    struct rec *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    rec_fn(r, 0, 4096);
    rec_fn(r, 8192, 4096);
    rec_fn(r, 4096, 4096);
    assert_null(rec_tiles(r, 12288, why, sizeof(why)));
    assert_non_null(rec_tiles(r, 16384, why, sizeof(why)));   /* short */
    memset(r, 0, sizeof(*r));
    rec_fn(r, 0, 8192);
    rec_fn(r, 4096, 4096);    /* overlap ... */
    rec_fn(r, 12288, 4096);   /* ... and a gap at 8192: total still 16384 */
    assert_non_null(rec_tiles(r, 16384, why, sizeof(why)));
    memset(r, 0, sizeof(*r));
    rec_fn(r, 4096, 4096);    /* gap at 0 */
    assert_non_null(rec_tiles(r, 4096 * 2, why, sizeof(why)));
    free(r);
}

static void test_copy_rate(void **state)
{
    (void)state;
    char src[128], dst[128];
    snprintf(src, sizeof(src), "%s/rsrc.raw", tmpdir);
    snprintf(dst, sizeof(dst), "%s/rdst.raw", tmpdir);
    /* 6 MiB of data (one 1 MiB run every 3 MiB over 18 MiB) at 8 MiB/s with
     * a 1 MiB burst: at least ~0.6 s. */
    make_src(src, 18 * MiB);
    struct lsm_copy_opts o = {
        .src_path = src, .src_fmt = LSM_FMT_RAW, .dst_path = dst, .dst_fmt = LSM_FMT_RAW,
        .io_kind = LSM_IO_PSYNC, .rate = 8 * MiB, .offload = false,
    };
    struct lsm_copy_stats st;
    uint64_t t0 = lsm_now_ns();
    int r = lsm_copy(&o, &st);
    double secs = (double)(lsm_now_ns() - t0) / 1e9;
    if (r < 0)
        fprintf(stderr, "copy: %s\n", lsm_last_error());
    assert_int_equal(r, 0);
    assert_true(same_content(src, dst));
    assert_int_equal(st.bytes_done, 6 * MiB);
    assert_true(secs >= 0.55);
    assert_true(secs < 5);
    unlink(src);
    unlink(dst);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/var/tmp/test-engine.XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_is_zero),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test(test_plan_aligned),
        cmocka_unit_test(test_plan_mixed),
        cmocka_unit_test(test_plan_bad_source),
        cmocka_unit_test(test_rec_tiles),
        cmocka_unit_test(test_copy_recorder),
        cmocka_unit_test(test_copy_recorder_physical),
        cmocka_unit_test(test_copy_rate),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        r = r ? r : 1;
    return r;
}
