/* Tests for the qcow2 writer (formats/qcow2/qcow2-writer.c).
 *
 * Images are checked with QEMU's own tools: `qemu-img check` (no errors, no
 * leaks), `qemu-img compare` against a raw file filled the same way, and
 * `qemu-img map --output=json` against the allocation the test made.  Tests
 * that need qemu-img are skipped, with the reason printed, when it is
 * missing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "qcow2-format.h"
#include "qcow2-writer.h"
#include "util.h"

static char tmpdir[256];
static bool have_qemu_img;
static char loopdev[128];         /* attached loop device, detached at teardown */

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x243f6a8885a308d3ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static const char *path(const char *name)
{
    static char bufs[4][512];
    static int i;
    char *b = bufs[i++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", tmpdir, name);
    return b;
}

/* Run a shell command; returns its exit status, output (stdout+stderr) in
 * *out if out is not NULL (free it). */
static int LSM_PRINTF(2, 3) run(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
    FILE *f = popen(full, "r");
    assert_non_null(f);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[len] = '\0';
    int st = pclose(f);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    if (out)
        *out = buf;
    else
        free(buf);
    return rc;
}

#define NEED_QEMU_IMG()                                                     \
    do {                                                                    \
        if (!have_qemu_img) {                                               \
            print_message("SKIP: qemu-img not found in PATH\n");            \
            skip();                                                         \
        }                                                                   \
    } while (0)

static void *abuf(size_t len)
{
    void *p = NULL;
    assert_int_equal(posix_memalign(&p, 4096, align_up(len ? len : 1, 4096)), 0);
    return p;
}

/* Recognisable content: each 8-byte word holds a function of its guest
 * offset and a seed (0 seed: the "backing" pattern). */
static void fill(uint8_t *buf, size_t len, uint64_t guest, uint64_t seed)
{
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t v = ((guest + i) / 8 + 1) * 0x9e3779b97f4a7c15ULL ^ seed;
        memcpy(buf + i, &v, 8);
    }
}

static void xpwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    ssize_t n = pwrite(fd, buf, len, (off_t)off);
    if (n != (ssize_t)len)
        fail_msg("pwrite %zu at 0x%" PRIx64 ": %s", len, off, n < 0 ? strerror(errno) : "short");
}

/* ---- model of an image and its verification ----------------------------- */

enum { ST_UNALLOC = 0, ST_DATA = 1, ST_ZERO = 2, ST_QEMU_DATA = 3 /* written by qemu-io */ };

struct model {
    uint64_t size;
    uint32_t cs;
    uint64_t nclusters;
    uint8_t *state;
    uint64_t *host;
    bool backing;           /* unallocated clusters come from depth 1 */
    bool v2;                /* version 2: zeroed clusters are data holding zeroes */
};

static void model_init(struct model *m, uint64_t size, uint32_t cs, bool backing)
{
    m->size = size;
    m->cs = cs;
    m->nclusters = div_round_up(size, cs);
    m->state = calloc(m->nclusters + 1, 1);
    m->host = calloc(m->nclusters + 1, sizeof *m->host);
    m->backing = backing;
    m->v2 = false;          /* callers that open a version 2 image set it */
    assert_non_null(m->state);
    assert_non_null(m->host);
}

static void model_free(struct model *m)
{
    free(m->state);
    free(m->host);
}

static void expect_check_clean(const char *img)
{
    char *out;
    int rc = run(&out, "qemu-img check %s", img);
    if (rc != 0 || !strstr(out, "No errors were found") || strstr(out, "leaked"))
        fail_msg("qemu-img check %s: exit %d\n%s", img, rc, out);
    free(out);
}

static void expect_compare(const char *img, const char *ref)
{
    char *out;
    int rc = run(&out, "qemu-img compare -f qcow2 -F raw %s %s", img, ref);
    if (rc != 0)
        fail_msg("qemu-img compare %s %s: exit %d\n%s", img, ref, rc, out);
    free(out);
}

static bool jbool(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) && json_object_get_boolean(v);
}

static int64_t jint(json_object *o, const char *k, int64_t dflt)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) ? json_object_get_int64(v) : dflt;
}

/* qemu-img map must show exactly the model: data clusters at the host
 * offsets the writer returned, zero clusters as zero, the rest unallocated. */
static void expect_map(const char *img, const struct model *m)
{
    char *out;
    int rc = run(&out, "qemu-img map -f qcow2 --output=json %s", img);
    if (rc != 0)
        fail_msg("qemu-img map %s: exit %d\n%s", img, rc, out);
    json_object *arr = json_tokener_parse(out);
    if (!arr || !json_object_is_type(arr, json_type_array))
        fail_msg("qemu-img map output is not a JSON array:\n%.2000s", out);
    uint64_t covered = 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        uint64_t start = (uint64_t)jint(e, "start", -1), len = (uint64_t)jint(e, "length", 0);
        int64_t depth = jint(e, "depth", -1), offset = jint(e, "offset", -1);
        bool data = jbool(e, "data"), zero = jbool(e, "zero"), present = jbool(e, "present");
        assert_int_equal(start, covered);
        covered += len;
        for (uint64_t c = start / m->cs; c * m->cs < start + len; c++) {
            switch (m->state[c]) {
            case ST_DATA:
                if (!data || zero || depth != 0 || offset < 0 || !present ||
                    (uint64_t)offset + (c * m->cs - start) != m->host[c])
                    fail_msg("map of %s: cluster %" PRIu64 " should be data at 0x%" PRIx64
                             ", entry start=%" PRIu64 " data=%d zero=%d depth=%" PRId64
                             " offset=0x%" PRIx64, img, c, m->host[c], start, data, zero,
                             depth, (uint64_t)offset);
                break;
            case ST_QEMU_DATA:
                if (!data || depth != 0 || !present)
                    fail_msg("map of %s: cluster %" PRIu64 " should be data", img, c);
                break;
            case ST_ZERO:
                if (m->v2 ? depth != 0 || !present : data || !zero || depth != 0 || !present)
                    fail_msg("map of %s: cluster %" PRIu64 " should be zero (data=%d zero=%d "
                             "depth=%" PRId64 ")", img, c, data, zero, depth);
                break;
            default:
                if (m->backing ? depth < 1 : (present || data || !zero))
                    fail_msg("map of %s: cluster %" PRIu64 " should be unallocated (data=%d "
                             "zero=%d present=%d depth=%" PRId64 ")", img, c, data, zero,
                             present, depth);
            }
        }
    }
    assert_int_equal(covered, m->size);
    json_object_put(arr);
    free(out);
}

/* An unfinished image: qemu-img refuses it as qcow2 and probes it as raw. */
/* An unfinished image carries our incompatible bit: QEMU refuses it,
 * naming the feature when the image has our feature table. */
static void expect_incomplete(const char *img, bool named)
{
    char *out;
    int rc = run(&out, "qemu-img info -f qcow2 %s", img);
    if (rc == 0)
        fail_msg("qemu-img opens the unfinished %s as qcow2:\n%s", img, out);
    if (!strstr(out, "Unsupported qcow2 feature") ||
        (named && !strstr(out, "lsm-sync incomplete copy")))
        fail_msg("qemu-img refuses the unfinished %s for another reason:\n%s", img, out);
    free(out);
    rc = run(&out, "qemu-img check %s", img);
    if (rc == 0)
        fail_msg("qemu-img check accepts the unfinished %s:\n%s", img, out);
    free(out);
}

/* Not a complete qcow2 for QEMU (whatever the file holds). */
static void expect_not_complete(const char *img)
{
    char *out;
    int rc = run(&out, "qemu-img info -f qcow2 %s", img);
    if (rc == 0)
        fail_msg("qemu-img opens the unfinished %s as qcow2:\n%s", img, out);
    free(out);
}

/* The whole range mapped at once (fresh clusters, or a contiguous run). */
static int alloc_all(struct qcow2_writer *w, uint64_t guest, uint64_t len, uint64_t *host)
{
    uint64_t mapped = 0;
    int r = qcow2_writer_alloc(w, guest, len, host, &mapped);
    if (r == 0 && mapped != len)
        fail_msg("alloc 0x%" PRIx64 "+0x%" PRIx64 " mapped 0x%" PRIx64 " only", guest, len, mapped);
    return r;
}

/* QEMU can keep using the image: overwrite, allocate (its refcount code
 * must grow our structures), discard, and the image stays clean. */
static void expect_qemu_can_write(const char *img, uint64_t size, uint32_t cs)
{
    uint64_t mid = align_down(size / 2, 512), len = MIN((uint64_t)3 * cs, size - mid);
    uint64_t first = MIN((uint64_t)2 * cs, size);
    char *out;
    int rc = run(&out, "qemu-io -f qcow2 -c 'write -P 0xab 0 %" PRIu64 "' -c 'write -P 0xcd %"
                 PRIu64 " %" PRIu64 "' -c 'discard 0 %u' %s", first, mid, len,
                 cs, img);
    if (rc != 0)
        fail_msg("qemu-io on %s: exit %d\n%s", img, rc, out);
    free(out);
    expect_check_clean(img);
}

static void verify(const char *img, const char *ref, const struct model *m)
{
    expect_check_clean(img);
    expect_compare(img, ref);
    expect_map(img, m);
}

/* ---- operations on a writer, mirrored in a raw reference ----------------- */

struct op {
    uint64_t c, n;          /* clusters */
    bool zero;
};

struct pending {            /* a data write the "engine" still has to do */
    uint64_t guest, host, len;
};

/* Pick non-overlapping runs over the unallocated clusters of the model:
 * some crossing L2 boundaries, one at the very end, random ones. */
static size_t plan_ops(const struct model *m, uint64_t l2_entries, size_t nrandom,
                       unsigned maxlen, struct op *ops)
{
    uint8_t *taken = calloc(m->nclusters, 1);
    size_t n = 0;
    assert_non_null(taken);
    for (uint64_t c = 0; c < m->nclusters; c++)
        taken[c] = m->state[c] != ST_UNALLOC;
    struct op want[3 + 4096];
    size_t nw = 0;
    if (m->nclusters > l2_entries + 1)
        want[nw++] = (struct op){ l2_entries - 1, 2, false };
    if (m->nclusters > 3 * l2_entries + 10 && l2_entries <= 512)
        want[nw++] = (struct op){ l2_entries * 1 + 5, 2 * l2_entries + 3, false };
    want[nw++] = (struct op){ m->nclusters - 1, 1, false };
    for (size_t i = 0; i < nrandom && nw < ARRAY_SIZE(want); i++) {
        uint64_t len = 1 + rnd() % maxlen;
        if (len > m->nclusters)
            len = 1;
        want[nw++] = (struct op){ rnd() % (m->nclusters - len + 1), len, rnd() % 3 == 0 };
    }
    for (size_t i = 0; i < nw; i++) {
        bool ok = true;
        for (uint64_t c = want[i].c; c < want[i].c + want[i].n && ok; c++)
            ok = !taken[c];
        if (!ok)
            continue;
        memset(taken + want[i].c, 1, want[i].n);
        ops[n++] = want[i];
    }
    free(taken);
    return n;
}

static int op_cmp(const void *a, const void *b)
{
    const struct op *x = a, *y = b;
    return x->c < y->c ? -1 : x->c > y->c;
}

enum order { ORDER_SEQ, ORDER_REVERSE, ORDER_RANDOM };
static const char *order_name[] = { "sequential", "reverse", "random" };

static void order_ops(struct op *ops, size_t n, enum order order)
{
    qsort(ops, n, sizeof *ops, op_cmp);
    if (order == ORDER_REVERSE) {
        for (size_t i = 0; i < n / 2; i++) {
            struct op t = ops[i];
            ops[i] = ops[n - 1 - i];
            ops[n - 1 - i] = t;
        }
    } else if (order == ORDER_RANDOM) {
        for (size_t i = n; i > 1; i--) {
            size_t j = rnd() % i;
            struct op t = ops[i - 1];
            ops[i - 1] = ops[j];
            ops[j] = t;
        }
    }
}

/* Apply ops to the writer and the model; data writes happen afterwards in
 * random order (the engine completes out of order), at the returned host
 * offsets in img_fd and at the guest offsets in ref_fd. */
static void apply_ops(struct qcow2_writer *w, struct model *m, const struct op *ops, size_t n,
                      int img_fd, int ref_fd, uint64_t seed)
{
    struct pending *p = calloc(n + 1, sizeof *p);
    size_t np = 0;
    uint64_t cs = m->cs, expect_min = 0;
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        uint64_t guest = ops[i].c * cs, len = ops[i].n * cs;
        if (ops[i].zero) {
            int r = qcow2_writer_zero(w, guest, len);
            if (r < 0)
                fail_msg("zero 0x%" PRIx64 "+0x%" PRIx64 ": %s", guest, len, lsm_last_error());
            for (uint64_t c = ops[i].c; c < ops[i].c + ops[i].n; c++)
                m->state[c] = ST_ZERO;
            if (m->backing) {           /* the reference reads zeroes there now */
                uint64_t l = MIN(len, m->size - guest);
                uint8_t *z = calloc(1, l);
                xpwrite(ref_fd, z, l, guest);
                free(z);
            }
        } else {
            uint64_t host;
            int r = alloc_all(w, guest, len, &host);
            if (r < 0)
                fail_msg("alloc 0x%" PRIx64 "+0x%" PRIx64 ": %s", guest, len, lsm_last_error());
            assert_true(is_aligned(host, cs));
            assert_true(host >= expect_min);    /* appended at the end of the file */
            assert_int_equal(qcow2_writer_end(w), host + len);
            expect_min = host + len;
            for (uint64_t c = ops[i].c; c < ops[i].c + ops[i].n; c++) {
                m->state[c] = ST_DATA;
                m->host[c] = host + (c - ops[i].c) * cs;
            }
            p[np++] = (struct pending){ guest, host, len };
        }
    }
    for (size_t i = np; i > 1; i--) {
        size_t j = rnd() % i;
        struct pending t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    for (size_t i = 0; i < np; i++) {
        uint8_t *buf = abuf(p[i].len);
        fill(buf, p[i].len, p[i].guest, seed);
        xpwrite(img_fd, buf, p[i].len, p[i].host);
        if (p[i].guest < m->size)
            xpwrite(ref_fd, buf, MIN(p[i].len, m->size - p[i].guest), p[i].guest);
        free(buf);
    }
    free(p);
}

static int open_ref(const char *name, uint64_t size)
{
    int fd = open(path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    return fd;
}

/* Make a raw file of size bytes filled with the backing pattern. */
static void make_base(const char *name, uint64_t size)
{
    int fd = open_ref(name, size);
    size_t chunk = 1 << 20;
    uint8_t *buf = abuf(chunk);
    for (uint64_t off = 0; off < size; off += chunk) {
        size_t l = MIN(chunk, size - off);
        fill(buf, l, off, 0);
        xpwrite(fd, buf, l, off);
    }
    free(buf);
    close(fd);
}

/* ---- the matrix ---------------------------------------------------------- */

struct config {
    unsigned cluster_bits, refcount_bits;
    bool extended_l2;
    uint64_t size;
};

static void run_config(const struct config *cf, enum order order)
{
    uint32_t cs = 1u << cf->cluster_bits;
    bool direct = cs >= 4096;
    uint32_t align = direct ? 4096 : 512;
    struct model m;
    model_init(&m, cf->size, cs, false);
    print_message("  cluster %u refcount_bits %u extended_l2 %d size %" PRIu64 " %s%s\n",
                  cs, cf->refcount_bits, cf->extended_l2, cf->size, order_name[order],
                  direct ? " O_DIRECT" : "");

    const char *img = path("m.qcow2"), *ref = path("m.raw");
    int fd = open(img, O_RDWR | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0644);
    assert_true(fd >= 0);
    int rfd = open_ref("m.raw", cf->size);
    struct qcow2_create_opts o = {
        .size = cf->size, .cluster_bits = cf->cluster_bits,
        .refcount_bits = cf->refcount_bits, .extended_l2 = cf->extended_l2,
    };
    struct qcow2_writer *w;
    int r = qcow2_writer_create(fd, align, &o, &w);
    if (r < 0)
        fail_msg("create: %s", lsm_last_error());
    assert_int_equal(qcow2_writer_cluster_size(w), cs);
    assert_int_equal(qcow2_writer_virtual_size(w), cf->size);

    uint64_t l2_entries = cs / (cf->extended_l2 ? 16 : 8);
    size_t nrandom = (size_t)MIN(200, MAX(8, (8u << 20) / (3 * cs)));
    struct op *ops = calloc(4096, sizeof *ops);
    assert_non_null(ops);
    size_t n = plan_ops(&m, l2_entries, nrandom, cs >= (1u << 21) ? 2 : 5, ops);
    order_ops(ops, n, order);
    apply_ops(w, &m, ops, n, fd, rfd, 0x1234 + order);

    uint64_t final = qcow2_writer_final_size(w);
    assert_true(final > qcow2_writer_end(w));
    r = qcow2_writer_finish(w);
    if (r < 0)
        fail_msg("finish: %s", lsm_last_error());
    assert_int_equal(qcow2_writer_final_size(w), final);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal((uint64_t)st.st_size, final);          /* refcounts end the file */
    qcow2_writer_close(w);
    close(fd);
    close(rfd);
    verify(img, ref, &m);
    if (order == ORDER_RANDOM)
        expect_qemu_can_write(img, cf->size, cs);
    free(ops);
    model_free(&m);
}

static void test_matrix(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    static const unsigned cbits[] = { 9, 12, 16, 21 };
    static const unsigned rbits[] = { 1, 16, 64 };
    for (size_t i = 0; i < ARRAY_SIZE(cbits); i++) {
        for (size_t j = 0; j < ARRAY_SIZE(rbits); j++) {
            for (int ext = 0; ext <= (cbits[i] >= 14); ext++) {
                uint64_t size;
                switch (cbits[i]) {
                case 9: size = 8 * MiB; break;          /* 256 L2 tables: cache evictions */
                case 12: size = 64 * MiB + 1536; break; /* tail past the virtual size */
                case 16: size = 1536 * MiB + 512; break;
                default: size = 600 * GiB + 3 * MiB; break;
                }
                struct config cf = { cbits[i], rbits[j], ext, size };
                for (int order = ORDER_SEQ; order <= ORDER_RANDOM; order++)
                    run_config(&cf, (enum order)order);
            }
        }
    }
}

/* ---- focused tests ------------------------------------------------------- */

static struct qcow2_writer *create_simple(const char *name, uint64_t size, unsigned cbits, int *fd)
{
    *fd = open(path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(*fd >= 0);
    struct qcow2_create_opts o = { .size = size, .cluster_bits = cbits };
    struct qcow2_writer *w;
    int r = qcow2_writer_create(*fd, 512, &o, &w);
    if (r < 0)
        fail_msg("create: %s", lsm_last_error());
    return w;
}

static void test_invalid_opts(void **state)
{
    (void)state;
    int fd = open(path("inv.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    char longname[1100];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    struct { struct qcow2_create_opts o; uint32_t align; int err; } cases[] = {
        { { .size = 1 * MiB, .cluster_bits = 8 }, 512, -EINVAL },
        { { .size = 1 * MiB, .cluster_bits = 22 }, 512, -EINVAL },
        { { .size = 1 * MiB, .refcount_bits = 3 }, 512, -EINVAL },
        { { .size = 1 * MiB, .refcount_bits = 128 }, 512, -EINVAL },
        { { .size = 1 * MiB, .cluster_bits = 13, .extended_l2 = true }, 512, -EINVAL },
        { { .size = 1000 }, 512, -EINVAL },
        { { .size = UINT64_MAX - 511 }, 512, -EINVAL },
        { { .size = 1 * MiB, .backing_name = longname }, 512, -EINVAL },
        { { .size = 1 * MiB, .backing_name = "" }, 512, -EINVAL },
        { { .size = 1 * MiB, .compression_type = 7 }, 512, -EINVAL },
        { { .size = 1 * MiB, .cluster_bits = 9 }, 4096, -EINVAL },      /* align > cluster */
        { { .size = 1 * MiB }, 3000, -EINVAL },                         /* align not a power of 2 */
        { { .size = 8 * TiB, .cluster_bits = 9 }, 512, -EFBIG },        /* L1 over 32 MiB */
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct qcow2_writer *w = NULL;
        lsm_error_clear();
        int r = qcow2_writer_create(fd, cases[i].align, &cases[i].o, &w);
        if (r != cases[i].err)
            fail_msg("case %zu: got %d, want %d (%s)", i, r, cases[i].err, lsm_last_error());
        assert_true(strlen(lsm_last_error()) > 0);
    }
    /* 512-byte clusters cannot hold a 1000-byte backing name. */
    memset(longname, 'b', 1000);
    longname[1000] = '\0';
    struct qcow2_create_opts o = { .size = 1 * MiB, .cluster_bits = 9, .backing_name = longname };
    struct qcow2_writer *w = NULL;
    assert_int_equal(qcow2_writer_create(fd, 512, &o, &w), -EINVAL);
    close(fd);
}

static void test_bad_ranges(void **state)
{
    (void)state;
    int fd;
    struct qcow2_writer *w = create_simple("bad.qcow2", 10 * MiB + 512, 16, &fd);
    uint64_t host, cs = 65536;
    assert_int_equal(alloc_all(w, 0, cs, &host), 0);
    assert_int_equal(host % cs, 0);
    uint64_t h0 = host, mapped;
    assert_int_equal(alloc_all(w, 0, cs, &host), 0);                  /* again: in place */
    assert_int_equal(host, h0);
    assert_int_equal(qcow2_writer_alloc(w, 0, 2 * cs, &host, &mapped), 0);
    assert_int_equal(host, h0);
    assert_int_equal(mapped, cs);                                     /* cluster 1 is not contiguous */
    assert_int_equal(qcow2_writer_zero(w, 0, cs), 0);                 /* zero over data */
    assert_int_equal(alloc_all(w, 0, cs, &host), 0);                  /* reuses the preallocation */
    assert_int_equal(host, h0);
    assert_int_equal(qcow2_writer_zero(w, 2 * cs, cs), 0);
    assert_int_equal(qcow2_writer_zero(w, 2 * cs, 2 * cs), 0);        /* zero twice: fine */
    assert_int_equal(alloc_all(w, 512, cs, &host), -EINVAL);
    assert_int_equal(alloc_all(w, cs, 512, &host), -EINVAL);
    assert_int_equal(alloc_all(w, cs, 0, &host), -EINVAL);
    assert_int_equal(alloc_all(w, 11 * MiB, cs, &host), -EINVAL);
    assert_int_equal(alloc_all(w, 10 * MiB, 2 * cs, &host), -EINVAL);
    /* the last cluster extends past the virtual size: allowed */
    assert_int_equal(alloc_all(w, 10 * MiB, cs, &host), 0);
    uint64_t h2;
    assert_int_equal(alloc_all(w, 5 * cs, 3 * cs, &h2), 0);
    assert_int_equal(h2, host + cs);                                  /* contiguous at the end */
    assert_int_equal(qcow2_writer_finish(w), 0);
    assert_int_equal(alloc_all(w, 9 * cs, cs, &host), -EINVAL);   /* after finish */
    assert_int_equal(qcow2_writer_finish(w), -EINVAL);
    qcow2_writer_close(w);
    close(fd);
    if (have_qemu_img)
        expect_check_clean(path("bad.qcow2"));
}

static void test_backing(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    uint64_t size = 8 * MiB;
    make_base("base.raw", size);
    assert_int_equal(run(NULL, "qemu-img convert -f raw -O qcow2 %s %s", path("base.raw"),
                         path("base.qcow2")), 0);
    static const enum lsm_format fmts[] = { LSM_FMT_RAW, LSM_FMT_QCOW2, LSM_FMT_AUTO };
    static const char *names[] = { "base.raw", "base.qcow2", "base.raw" };
    for (size_t k = 0; k < ARRAY_SIZE(fmts); k++) {
        for (int ext = 0; ext <= 1; ext++) {
            struct model m;
            model_init(&m, size, 65536, true);
            int fd = open(path("top.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
            assert_true(fd >= 0);
            assert_int_equal(run(NULL, "cp %s %s", path("base.raw"), path("top-ref.raw")), 0);
            int rfd = open(path("top-ref.raw"), O_RDWR);
            assert_true(rfd >= 0);
            struct qcow2_create_opts o = { .size = size, .extended_l2 = ext,
                                           .backing_name = names[k], .backing_fmt = fmts[k] };
            struct qcow2_writer *w;
            if (qcow2_writer_create(fd, 512, &o, &w) < 0)
                fail_msg("create: %s", lsm_last_error());
            struct op ops[64];
            size_t n = plan_ops(&m, 65536 / (ext ? 16 : 8), 40, 4, ops);
            order_ops(ops, n, ORDER_RANDOM);
            apply_ops(w, &m, ops, n, fd, rfd, 77);
            assert_int_equal(qcow2_writer_finish(w), 0);
            qcow2_writer_close(w);
            close(fd);
            close(rfd);
            char *out;
            assert_int_equal(run(&out, "qemu-img info --output=json %s", path("top.qcow2")), 0);
            char want[128];
            snprintf(want, sizeof want, "\"backing-filename\": \"%s\"", names[k]);
            if (!strstr(out, want))
                fail_msg("info lacks %s:\n%s", want, out);
            snprintf(want, sizeof want, "\"backing-filename-format\": \"%s\"",
                     k == 1 ? "qcow2" : "raw");
            if ((fmts[k] != LSM_FMT_AUTO) != (strstr(out, want) != NULL))
                fail_msg("info backing format (want %s for fmt %d):\n%s", want, (int)fmts[k], out);
            free(out);
            expect_check_clean(path("top.qcow2"));
            /* Without a format in the image qemu-img probes the base: fine for reading. */
            assert_int_equal(run(&out, "qemu-img compare -F raw %s %s", path("top.qcow2"),
                                 path("top-ref.raw")), 0);
            free(out);
            expect_map(path("top.qcow2"), &m);
            model_free(&m);
        }
    }
}

static void test_huge(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    uint64_t size = 8 * TiB, cs = 65536;
    struct model m;
    model_init(&m, size, cs, false);
    int fd = open(path("huge.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    int rfd = open_ref("huge.raw", size);
    assert_true(fd >= 0);
    struct qcow2_create_opts o = { .size = size };
    struct qcow2_writer *w;
    assert_int_equal(qcow2_writer_create(fd, 512, &o, &w), 0);
    uint64_t nc = size / cs;
    struct op ops[] = {
        { 0, 3, false }, { nc / 2, 1, false }, { nc / 2 + 1, 16, true },
        { nc - 1, 1, false }, { nc / 3, 2, true }, { nc / 4 - 1, 2, false },
    };
    apply_ops(w, &m, ops, ARRAY_SIZE(ops), fd, rfd, 5);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    print_message("  8 TiB image: file size %" PRIu64 " bytes\n", (uint64_t)st.st_size);
    assert_true((uint64_t)st.st_size < 64 * MiB);
    close(fd);
    close(rfd);
    verify(path("huge.qcow2"), path("huge.raw"), &m);
    model_free(&m);
    unlink(path("huge.raw"));
}

/* Open images made by qemu-img (with a raw backing file), add clusters,
 * finish; then open our own output again, twice more. */
static void test_open_existing(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    uint64_t size = 8 * MiB;
    make_base("obase.raw", size);
    static const char *opts[] = {
        "cluster_size=65536",
        "cluster_size=65536,lazy_refcounts=on",
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=65536,extended_l2=on,refcount_bits=64",
        "cluster_size=512,refcount_bits=2",
        "cluster_size=2097152,refcount_bits=8",
        /* version 2: no zero clusters (zeroed ranges become data) */
        "cluster_size=65536,compat=0.10",
        "cluster_size=4096,compat=0.10",
    };
    for (size_t k = 0; k < ARRAY_SIZE(opts); k++) {
        uint32_t cs = (uint32_t)strtoul(strchr(opts[k], '=') + 1, NULL, 10);
        bool ext = strstr(opts[k], "extended_l2=on") != NULL;
        print_message("  qemu-img create -o %s\n", opts[k]);
        assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 -o %s -b obase.raw -F raw %s",
                             path("o.qcow2"), opts[k], path("o.qcow2")), 0);
        assert_int_equal(run(NULL, "cp %s %s", path("obase.raw"), path("o-ref.raw")), 0);
        struct model m;
        model_init(&m, size, cs, true);
        m.v2 = strstr(opts[k], "compat=0.10") != NULL;
        /* QEMU writes some data first: 3 clusters at 1 MiB */
        assert_int_equal(run(NULL, "qemu-io -f qcow2 -c 'write -P 0x5a 1M %u' %s >/dev/null && "
                             "qemu-io -f raw -c 'write -P 0x5a 1M %u' %s >/dev/null", 3 * cs,
                             path("o.qcow2"), 3 * cs, path("o-ref.raw")), 0);
        for (uint64_t c = MiB / cs; c <= (MiB + 3 * cs - 1) / cs; c++)
            m.state[c] = ST_QEMU_DATA;
        for (int gen = 0; gen < 3; gen++) {
            bool direct = cs >= 4096 && gen != 2;
            int fd = open(path("o.qcow2"), O_RDWR | (direct ? O_DIRECT : 0));
            int rfd = open(path("o-ref.raw"), O_RDWR);
            assert_true(fd >= 0 && rfd >= 0);
            struct qcow2_writer *w;
            int r = qcow2_writer_open(fd, direct ? 4096 : 512, &w);
            if (r < 0)
                fail_msg("open (generation %d): %s", gen, lsm_last_error());
            assert_int_equal(qcow2_writer_cluster_size(w), cs);
            assert_int_equal(qcow2_writer_virtual_size(w), size);
            /* Opening writes nothing. */
            expect_check_clean(path("o.qcow2"));
            struct op ops[64];
            size_t n = plan_ops(&m, cs / (ext ? 16 : 8), 12, cs >= (1u << 21) ? 1 : 4, ops);
            order_ops(ops, n, gen == 2 ? ORDER_RANDOM : ORDER_SEQ);
            apply_ops(w, &m, ops, n, fd, rfd, 1000 + gen);
            /* While it changes, the image is marked incomplete, and the
             * bit is named in its feature table where the first cluster
             * has room (not with 512-byte clusters). */
            if (n)
                expect_incomplete(path("o.qcow2"), cs >= 2048);
            r = qcow2_writer_finish(w);
            if (r < 0)
                fail_msg("finish (generation %d): %s", gen, lsm_last_error());
            qcow2_writer_close(w);
            close(fd);
            close(rfd);
            verify(path("o.qcow2"), path("o-ref.raw"), &m);
            if (gen == 2) {
                assert_int_equal(run(NULL, "cp %s %s", path("o.qcow2"), path("o-copy.qcow2")), 0);
                expect_qemu_can_write(path("o-copy.qcow2"), size, cs);
            }
            char *out;
            assert_int_equal(run(&out, "qemu-img info %s", path("o.qcow2")), 0);
            if (!strstr(out, "backing file: obase.raw") || !strstr(out, "backing file format: raw"))
                fail_msg("backing lost:\n%s", out);
            if (!strstr(out, m.v2 ? "compat: 0.10" : "compat: 1.1"))
                fail_msg("version changed:\n%s", out);
            free(out);
        }
        model_free(&m);
    }
}

/* An opened image with leaked clusters (refcount 1, unreferenced: what a
 * QEMU crash leaves) comes out clean; one with a cluster used twice is
 * refused. */
static void test_open_leaks(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const char *img = path("leak.qcow2");
    /* qemu-img's layout for 64 KiB clusters: refcount block at 0x20000 */
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 %s 16M && "
                         "printf '\\000\\001\\000\\001' | dd of=%s bs=1 seek=%d conv=notrunc "
                         "status=none && truncate -s %d %s", img, img, img, 0x20008, 0x60000, img), 0);
    assert_int_equal(run(NULL, "qemu-img check %s", img), 3);      /* leaks */
    int fd = open(img, O_RDWR);
    struct qcow2_writer *w;
    if (qcow2_writer_open(fd, 512, &w) < 0)
        fail_msg("open: %s", lsm_last_error());
    uint64_t host;
    assert_int_equal(alloc_all(w, 0, 65536, &host), 0);
    assert_int_equal(host, 0x70000);        /* after the end of the file and a new L2 table */
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    expect_check_clean(img);

    /* two L2 entries pointing to the same cluster */
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 %s 16M && "
                         "qemu-io -c 'write 0 128k' %s >/dev/null && "
                         "printf '\\200\\000\\000\\000\\000\\005\\000\\000' | "
                         "dd of=%s bs=1 seek=%d conv=notrunc status=none",
                         img, img, img, img, 0x40008), 0);
    assert_true(run(NULL, "qemu-img check %s", img) != 0);
    fd = open(img, O_RDWR);
    lsm_error_clear();
    assert_int_equal(qcow2_writer_open(fd, 512, &w), -EINVAL);
    print_message("  cluster used twice: refused (%s)\n", lsm_last_error());
    assert_non_null(strstr(lsm_last_error(), "used twice"));
    close(fd);
}

static void expect_open_refused(const char *what, const char *img)
{
    int fd = open(img, O_RDWR);
    assert_true(fd >= 0);
    struct qcow2_writer *w = NULL;
    lsm_error_clear();
    int r = qcow2_writer_open(fd, 512, &w);
    close(fd);
    if (r >= 0)
        fail_msg("%s: open accepted an image it cannot maintain", what);
    print_message("  %s: refused (%s)\n", what, lsm_last_error());
    assert_true(strlen(lsm_last_error()) > 0);
    /* untouched */
    assert_int_equal(run(NULL, "qemu-img check %s", img), 0);
}

static void test_open_refuses(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const char *img = path("ref.qcow2");
    assert_int_equal(run(NULL, "qemu-img create -q -f qcow2 %s 4M && qemu-io -c 'write 0 1M' %s "
                         ">/dev/null && qemu-img snapshot -c snap1 %s", img, img, img), 0);
    expect_open_refused("internal snapshot", img);

    make_base("c.raw", 4 * MiB);
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 %s 4M && "
                         "qemu-io -c 'write -c -P 0x55 0 64k' %s >/dev/null", img, img, img), 0);
    expect_open_refused("compressed clusters", img);

    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 %s 4M && "
                         "qemu-img bitmap --add %s bm0", img, img, img), 0);
    expect_open_refused("persistent bitmap", img);

    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 -o data_file=%s %s 4M",
                         img, path("ext.raw"), img), 0);
    expect_open_refused("external data file", img);

    /* not qcow2 at all */
    int fd = open(path("c.raw"), O_RDWR);
    struct qcow2_writer *w;
    assert_int_equal(qcow2_writer_open(fd, 512, &w), -EINVAL);
    close(fd);
}

/* Interrupted writers leave the incomplete mark; a new writer finishes
 * the image (refcounts rebuilt from its references, even for clusters the
 * interrupted writer allocated past the old refcounts). */
static void test_interrupted(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    int fd;
    struct qcow2_writer *w = create_simple("int.qcow2", 16 * MiB, 16, &fd);
    uint64_t host;
    assert_int_equal(alloc_all(w, 0, 4 * 65536, &host), 0);
    assert_int_equal(qcow2_writer_zero(w, 8 * 65536, 65536), 0);
    qcow2_writer_close(w);          /* no finish */
    close(fd);
    expect_incomplete(path("int.qcow2"), true);

    /* qemu-img's image with data, rewritten in part, abandoned, finished by
     * a second writer. */
    const char *img = path("int2.qcow2"), *ref = path("int2.raw");
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 %s 16M && "
                         "qemu-io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 8M 1M' %s >/dev/null && "
                         "qemu-img convert -O raw %s %s", img, img, img, img, ref), 0);
    uint8_t before[4096], after[4096];
    fd = open(img, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, before, sizeof before, 0), (ssize_t)sizeof before);
    assert_int_equal(qcow2_writer_open(fd, 512, &w), 0);
    assert_int_equal(pread(fd, after, sizeof after, 0), (ssize_t)sizeof after);
    assert_memory_equal(before, after, sizeof before);      /* open wrote nothing */
    int rfd = open(ref, O_RDWR);
    assert_true(rfd >= 0);
    uint8_t *buf = abuf(2 * 65536);
    /* new clusters (past the old refcounts' end) and one in place */
    assert_int_equal(alloc_all(w, 4 * MiB, 2 * 65536, &host), 0);
    fill(buf, 2 * 65536, 4 * MiB, 5);
    xpwrite(fd, buf, 2 * 65536, host);
    xpwrite(rfd, buf, 2 * 65536, 4 * MiB);
    assert_int_equal(alloc_all(w, 65536, 65536, &host), 0);
    fill(buf, 65536, 65536, 6);
    xpwrite(fd, buf, 65536, host);
    xpwrite(rfd, buf, 65536, 65536);
    qcow2_writer_close(w);          /* interrupted: only the mark reached the disk */
    close(fd);
    expect_incomplete(img, true);
    /* our reader refuses it and says why; the writer accepts it */
    struct lsm_image *ri = NULL;
    lsm_error_clear();
    assert_true(lsm_image_open(img, LSM_FMT_AUTO, 0, &ri) < 0);
    print_message("  reader: %s\n", lsm_last_error());
    assert_non_null(strstr(lsm_last_error(), "incomplete copy"));
    fd = open(img, O_RDWR);
    assert_int_equal(qcow2_writer_open(fd, 512, &w), 0);
    assert_int_equal(alloc_all(w, 4 * MiB, 2 * 65536, &host), 0);
    fill(buf, 2 * 65536, 4 * MiB, 5);
    xpwrite(fd, buf, 2 * 65536, host);
    assert_int_equal(alloc_all(w, 65536, 65536, &host), 0);
    fill(buf, 65536, 65536, 6);
    xpwrite(fd, buf, 65536, host);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    close(rfd);
    free(buf);
    expect_check_clean(img);
    expect_compare(img, ref);
}

/* Checkpoints: the image on disk is a clean qcow2 but for the incomplete
 * bit (a copy with the bit cleared passes qemu-img check and holds what was
 * written before it); a writer killed after a checkpoint is continued by
 * qcow2_writer_resume, which reuses the clusters allocated after the
 * checkpoint and never referenced; the finished image is clean. */
static void test_checkpoint_resume(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const char *img = path("ck.qcow2"), *ref = path("ck.raw"), *cp = path("ck-copy.qcow2");
    assert_int_equal(run(NULL, "rm -f %s; truncate -s 64M %s", ref, ref), 0);
    int rfd = open(ref, O_RDWR);
    assert_true(rfd >= 0);
    int fd;
    struct qcow2_writer *w = create_simple("ck.qcow2", 64 * MiB, 16, &fd);
    uint8_t *buf = abuf(16 * 65536);
    uint64_t host, ck_end, g8 = 8 * MiB, host8;
    fill(buf, 16 * 65536, 0, 1);
    assert_int_equal(alloc_all(w, 0, 16 * 65536, &host), 0);
    xpwrite(fd, buf, 16 * 65536, host);
    xpwrite(rfd, buf, 16 * 65536, 0);
    assert_int_equal(qcow2_writer_zero(w, 2 * MiB, 4 * 65536), 0);
    assert_int_equal(fdatasync(fd), 0);
    assert_int_equal(qcow2_writer_checkpoint(w), 0);
    ck_end = qcow2_writer_end(w);
    /* a second checkpoint rewrites the area in place: the end stays */
    assert_int_equal(qcow2_writer_checkpoint(w), 0);
    assert_int_equal(qcow2_writer_end(w), ck_end);
    /* the checkpointed image, bit 63 cleared in a copy: clean, its data */
    assert_int_equal(run(NULL, "cp %s %s && printf '\\000' | dd of=%s bs=1 seek=72 conv=notrunc "
                         "status=none", img, cp, cp), 0);
    expect_check_clean(cp);
    expect_compare(cp, ref);
    expect_incomplete(img, true);
    /* after the checkpoint: new clusters, then a kill (no finish) */
    fill(buf, 4 * 65536, g8, 2);
    assert_int_equal(alloc_all(w, g8, 4 * 65536, &host8), 0);
    assert_true(host8 >= ck_end);
    xpwrite(fd, buf, 4 * 65536, host8);
    qcow2_writer_close(w);
    close(fd);
    expect_incomplete(img, true);

    /* resume: the garbage past the checkpoint is reused */
    fd = open(img, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(qcow2_writer_resume(fd, 512, &w), 0);
    assert_int_equal(qcow2_writer_end(w), ck_end);
    assert_int_equal(alloc_all(w, g8, 4 * 65536, &host), 0);
    assert_int_equal(host, host8);
    xpwrite(fd, buf, 4 * 65536, host);
    xpwrite(rfd, buf, 4 * 65536, g8);
    /* what the checkpoint made durable is mapped in place */
    assert_int_equal(alloc_all(w, 0, 65536, &host), 0);
    fill(buf, 65536, 0, 1);
    xpwrite(fd, buf, 65536, host);
    assert_int_equal(qcow2_writer_checkpoint(w), 0);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    expect_check_clean(img);
    expect_compare(img, ref);

    /* a complete image is not resumed */
    fd = open(img, O_RDWR);
    lsm_error_clear();
    assert_int_equal(qcow2_writer_resume(fd, 512, &w), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "not marked incomplete"));
    close(fd);
    close(rfd);
    free(buf);
}

/* An image whose L2 tables were written back by an interrupted writer
 * (more L2 tables than the cache holds) references clusters its old
 * refcounts do not count: a second writer rebuilds them and finishes. */
static void test_interrupted_evicted(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const char *img = path("int3.qcow2"), *ref = path("int3.raw");
    uint64_t size = 64 * MiB, cs = 512;
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 -o cluster_size=512 %s 64M && "
                         "qemu-io -c 'write -P 0x33 0 64k' %s >/dev/null",
                         img, img, img), 0);
    int rfd = open_ref("int3.raw", size);
    int fd = open(img, O_RDWR);
    assert_true(fd >= 0 && rfd >= 0);
    uint8_t *pat = abuf(cs);
    memset(pat, 0x33, cs);
    for (uint64_t g = 0; g < 65536; g += cs)
        xpwrite(rfd, pat, cs, g);
    struct qcow2_writer *w;
    uint64_t host;
    uint8_t *buf = abuf(cs);
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(qcow2_writer_open(fd, 512, &w), 0);
        /* one cluster in each of 300 L2 tables (64 entries each): evictions */
        for (uint64_t i = 0; i < 300; i++) {
            uint64_t g = i * 64 * cs + cs * (i % 7);
            if (g >= size)
                break;
            assert_int_equal(alloc_all(w, g, cs, &host), 0);
            fill(buf, cs, g, 9);
            xpwrite(fd, buf, cs, host);
            if (pass == 0)
                xpwrite(rfd, buf, cs, g);
        }
        if (pass == 0) {
            qcow2_writer_close(w);      /* interrupted */
            expect_incomplete(img, false);
        }
    }
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    close(rfd);
    free(buf);
    free(pat);
    expect_check_clean(img);
    expect_compare(img, ref);
}

/* Rewriting an image that already holds data: clusters are reused in
 * place, zero over data keeps a preallocation, new clusters go at the end;
 * standard and extended L2. */
static void test_overwrite(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    static const char *opts[] = { "cluster_size=65536", "cluster_size=65536,extended_l2=on",
                                  "cluster_size=4096,refcount_bits=1" };
    for (size_t k = 0; k < ARRAY_SIZE(opts); k++) {
        const char *img = path("ow.qcow2"), *ref = path("ow.raw");
        uint64_t cs = strstr(opts[k], "4096") ? 4096 : 65536;
        print_message("  overwrite, %s\n", opts[k]);
        /* qemu writes 0..4 clusters and 8..10, and a partial (subcluster)
         * write at 12 (extended L2: some subclusters allocated) */
        assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 -o %s %s 4M && "
                             "qemu-io -c 'write -P 0x41 0 %" PRIu64 "' -c 'write -P 0x42 %" PRIu64
                             " %" PRIu64 "' -c 'write -P 0x43 %" PRIu64 " 4096' %s >/dev/null && "
                             "qemu-img convert -O raw %s %s",
                             img, opts[k], img, 4 * cs, 8 * cs, 2 * cs, 12 * cs + 8192 % cs,
                             img, img, ref), 0);
        int fd = open(img, O_RDWR), rfd = open(ref, O_RDWR);
        assert_true(fd >= 0 && rfd >= 0);
        struct qcow2_writer *w;
        if (qcow2_writer_open(fd, 512, &w) < 0)
            fail_msg("open: %s", lsm_last_error());
        uint8_t *buf = abuf(8 * cs);
        uint64_t guest = cs, left = 9 * cs, host, mapped;
        /* clusters 1..9: reused 1..3, new 4..7, reused 8..9: three runs */
        int runs = 0;
        while (left) {
            assert_int_equal(qcow2_writer_alloc(w, guest, left, &host, &mapped), 0);
            assert_true(mapped > 0 && mapped <= left && is_aligned(mapped, cs));
            fill(buf, mapped, guest, 21);
            xpwrite(fd, buf, mapped, host);
            xpwrite(rfd, buf, mapped, guest);
            guest += mapped;
            left -= mapped;
            runs++;
        }
        assert_int_equal(runs, 3);
        /* zero over data (cluster 0) and over the partial cluster 12 */
        uint8_t *z = calloc(1, cs);
        assert_int_equal(qcow2_writer_zero(w, 0, cs), 0);
        xpwrite(rfd, z, cs, 0);
        assert_int_equal(qcow2_writer_zero(w, 12 * cs, cs), 0);
        xpwrite(rfd, z, cs, 12 * cs);
        assert_int_equal(qcow2_writer_finish(w), 0);
        qcow2_writer_close(w);
        expect_check_clean(img);
        expect_compare(img, ref);
        /* and again: cluster 0 is reused from its preallocation */
        assert_int_equal(qcow2_writer_open(fd, 512, &w), 0);
        uint64_t end = qcow2_writer_end(w);
        assert_int_equal(qcow2_writer_alloc(w, 0, cs, &host, &mapped), 0);
        assert_int_equal(mapped, cs);
        assert_true(host < end);
        fill(buf, cs, 0, 22);
        xpwrite(fd, buf, cs, host);
        xpwrite(rfd, buf, cs, 0);
        assert_int_equal(qcow2_writer_finish(w), 0);
        assert_int_equal(qcow2_writer_end(w) > end, true);  /* only new refcount structures */
        qcow2_writer_close(w);
        close(fd);
        close(rfd);
        free(buf);
        free(z);
        expect_check_clean(img);
        expect_compare(img, ref);
        expect_qemu_can_write(img, 4 * MiB, (uint32_t)cs);
    }
}

static void test_set_backing(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    uint64_t size = 4 * MiB;
    make_base("sa.raw", size);
    int fd = open_ref("sb.raw", size);          /* a different base: zeroes + one pattern */
    uint8_t *buf = abuf(65536);
    fill(buf, 65536, 0, 99);
    xpwrite(fd, buf, 65536, 65536);
    close(fd);
    assert_int_equal(run(NULL, "qemu-img convert -f raw -O qcow2 %s %s", path("sb.raw"),
                         path("sb.qcow2")), 0);

    fd = open(path("s.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    struct qcow2_create_opts o = { .size = size, .backing_name = "sa.raw", .backing_fmt = LSM_FMT_RAW };
    struct qcow2_writer *w;
    assert_int_equal(qcow2_writer_create(fd, 512, &o, &w), 0);
    uint64_t host;
    assert_int_equal(alloc_all(w, 3 * 65536, 65536, &host), 0);
    fill(buf, 65536, 3 * 65536, 7);
    xpwrite(fd, buf, 65536, host);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);

    char *out;
    assert_int_equal(qcow2_set_backing(fd, 512, "sb.qcow2", LSM_FMT_QCOW2), 0);
    expect_check_clean(path("s.qcow2"));
    assert_int_equal(run(&out, "qemu-img info %s", path("s.qcow2")), 0);
    if (!strstr(out, "backing file: sb.qcow2") || !strstr(out, "backing file format: qcow2"))
        fail_msg("set_backing not visible:\n%s", out);
    free(out);
    /* reference: sb content with our cluster */
    assert_int_equal(run(NULL, "cp %s %s", path("sb.raw"), path("s-ref.raw")), 0);
    int rfd = open(path("s-ref.raw"), O_RDWR);
    xpwrite(rfd, buf, 65536, 3 * 65536);
    close(rfd);
    expect_compare(path("s.qcow2"), path("s-ref.raw"));

    /* a long name, then no format, then no backing at all */
    char longname[1001];
    memset(longname, 'x', 1000);
    longname[1000] = '\0';
    assert_int_equal(qcow2_set_backing(fd, 512, longname, LSM_FMT_RAW), 0);
    assert_int_equal(qcow2_set_backing(fd, 512, "sa.raw", LSM_FMT_AUTO), 0);
    assert_int_equal(run(&out, "qemu-img info %s", path("s.qcow2")), 0);
    if (!strstr(out, "backing file: sa.raw") || strstr(out, "backing file format"))
        fail_msg("set_backing without format:\n%s", out);
    free(out);
    expect_check_clean(path("s.qcow2"));
    assert_int_equal(qcow2_set_backing(fd, 512, NULL, LSM_FMT_AUTO), 0);
    assert_int_equal(run(&out, "qemu-img info %s", path("s.qcow2")), 0);
    if (strstr(out, "backing file"))
        fail_msg("backing not removed:\n%s", out);
    free(out);
    expect_check_clean(path("s.qcow2"));
    close(fd);

    /* qemu-img's image with a bitmap: the extension and feature table stay. */
    const char *q = path("sq.qcow2");
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 %s 4M && "
                         "qemu-img bitmap --add %s bm0", q, q, q), 0);
    fd = open(q, O_RDWR | O_DIRECT);
    assert_true(fd >= 0);
    assert_int_equal(qcow2_set_backing(fd, 4096, "sa.raw", LSM_FMT_RAW), 0);
    close(fd);
    expect_check_clean(q);
    assert_int_equal(run(&out, "qemu-img info %s", q), 0);
    if (!strstr(out, "bm0") || !strstr(out, "backing file: sa.raw"))
        fail_msg("bitmap or backing lost:\n%s", out);
    free(out);

    /* version 2 (compat=0.10) images, with and without a backing file */
    const char *v2 = path("sv2.qcow2");
    assert_int_equal(run(NULL, "rm -f %s; qemu-img create -q -f qcow2 -o compat=0.10 -b sa.raw "
                         "-F raw %s", v2, v2), 0);
    fd = open(v2, O_RDWR);
    assert_int_equal(qcow2_set_backing(fd, 512, "sb.qcow2", LSM_FMT_QCOW2), 0);
    close(fd);
    expect_check_clean(v2);
    assert_int_equal(run(&out, "qemu-img info %s", v2), 0);
    if (!strstr(out, "backing file: sb.qcow2") || !strstr(out, "backing file format: qcow2") ||
        !strstr(out, "compat: 0.10"))
        fail_msg("set_backing on a v2 image:\n%s", out);
    free(out);

    /* 512-byte clusters: a 1000-byte name does not fit. */
    int fd2;
    w = create_simple("s512.qcow2", size, 9, &fd2);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    assert_int_equal(qcow2_set_backing(fd2, 512, longname, LSM_FMT_RAW), -ENOSPC);
    assert_int_equal(qcow2_set_backing(fd2, 512, "sa.raw", LSM_FMT_RAW), 0);
    close(fd2);
    expect_check_clean(path("s512.qcow2"));
    free(buf);
}

/* Creation options (copy -o): a version 2 image over a backing file, whose
 * zero range becomes zero data clusters; what version 2 refuses;
 * preallocation; a persistent bitmap. */
static void test_create_options(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const uint64_t size = 4 * MiB, cs = 65536;
    make_base("cbase.raw", size);
    assert_int_equal(run(NULL, "cp %s %s", path("cbase.raw"), path("cref.raw")), 0);

    /* version 2, backing file: data at cluster 0, zero at cluster 2 */
    int fd = open(path("v2.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    int rfd = open(path("cref.raw"), O_RDWR);
    assert_true(fd >= 0 && rfd >= 0);
    struct qcow2_create_opts o = { .size = size, .version = 2, .backing_name = "cbase.raw",
                                   .backing_fmt = LSM_FMT_RAW };
    struct qcow2_writer *w;
    if (qcow2_writer_create(fd, 512, &o, &w) < 0)
        fail_msg("create v2: %s", lsm_last_error());
    uint8_t *buf = abuf(cs);
    uint64_t host, mapped;
    assert_int_equal(qcow2_writer_alloc(w, 0, cs, &host, &mapped), 0);
    fill(buf, cs, 0, 99);
    xpwrite(fd, buf, cs, host);
    xpwrite(rfd, buf, cs, 0);
    assert_int_equal(qcow2_writer_zero(w, 2 * cs, cs), 0);
    memset(buf, 0, cs);
    xpwrite(rfd, buf, cs, 2 * cs);
    /* no bitmaps in version 2 */
    uint8_t bm[8] = { 0 };
    assert_int_equal(qcow2_writer_add_bitmap(w, "b", 16, true, bm, sizeof bm), -ENOTSUP);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    close(rfd);
    char *out;
    assert_int_equal(run(&out, "qemu-img info --output=json %s", path("v2.qcow2")), 0);
    if (!strstr(out, "\"compat\": \"0.10\"") || !strstr(out, "\"backing-filename-format\": \"raw\""))
        fail_msg("not a version 2 image with its backing format:\n%s", out);
    free(out);
    expect_check_clean(path("v2.qcow2"));
    expect_compare(path("v2.qcow2"), path("cref.raw"));
    /* the zero range is a data cluster (version 2 has no zero flag) */
    assert_int_equal(run(&out, "qemu-img map --output=json %s", path("v2.qcow2")), 0);
    if (!strstr(out, "\"start\": 131072, \"length\": 65536, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true"))
        fail_msg("cluster 2 is not a data cluster of the top layer:\n%s", out);
    free(out);

    /* what version 2 cannot have */
    static const struct qcow2_create_opts bad[] = {
        { .size = size, .version = 2, .lazy_refcounts = true },
        { .size = size, .version = 2, .refcount_bits = 8 },
        { .size = size, .version = 2, .extended_l2 = true },
        { .size = size, .version = 2, .compression_type = QCOW2_COMPRESSION_ZSTD },
        { .size = size, .version = 4 },
    };
    for (size_t k = 0; k < ARRAY_SIZE(bad); k++) {
        fd = open(path("bad.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
        lsm_error_clear();
        assert_int_equal(qcow2_writer_create(fd, 512, &bad[k], &w), -EINVAL);
        assert_true(*lsm_last_error());
        close(fd);
    }

    /* preallocation: every cluster allocated, the data reused in place;
     * refused with a backing file */
    static const enum qcow2_prealloc modes[] = { QCOW2_PREALLOC_METADATA, QCOW2_PREALLOC_FALLOC,
                                                 QCOW2_PREALLOC_FULL };
    for (size_t k = 0; k < ARRAY_SIZE(modes); k++) {
        fd = open(path("pre.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
        struct qcow2_create_opts po = { .size = size, .lazy_refcounts = true };
        assert_int_equal(qcow2_writer_create(fd, 512, &po, &w), 0);
        assert_int_equal(qcow2_writer_preallocate(w, modes[k]), 0);
        uint64_t end = qcow2_writer_end(w);
        assert_int_equal(qcow2_writer_alloc(w, cs, cs, &host, &mapped), 0);
        assert_true(host < end);            /* reused, not appended */
        assert_int_equal(qcow2_writer_end(w), end);
        fill(buf, cs, cs, 5);
        xpwrite(fd, buf, cs, host);
        /* a persistent bitmap: granules 0 and 2 of 64 dirty */
        memset(bm, 0, sizeof bm);
        bm[0] = 0x05;
        assert_int_equal(qcow2_writer_add_bitmap(w, "dirty", 16, true, bm, sizeof bm), 0);
        assert_int_equal(qcow2_writer_add_bitmap(w, "dirty", 16, true, bm, sizeof bm), -EEXIST);
        assert_int_equal(qcow2_writer_add_bitmap(w, "short", 16, true, bm, 4), -EINVAL);
        assert_int_equal(qcow2_writer_finish(w), 0);
        qcow2_writer_close(w);
        close(fd);
        expect_check_clean(path("pre.qcow2"));
        assert_int_equal(run(&out, "qemu-img map --output=json %s", path("pre.qcow2")), 0);
        if (strstr(out, "\"data\": false"))
            fail_msg("preallocation %d left unallocated clusters:\n%s", (int)modes[k], out);
        free(out);
        assert_int_equal(run(&out, "qemu-img info --output=json %s", path("pre.qcow2")), 0);
        if (!strstr(out, "\"lazy-refcounts\": true") || !strstr(out, "\"name\": \"dirty\""))
            fail_msg("lazy refcounts or the bitmap missing:\n%s", out);
        free(out);
    }
    fd = open(path("pre.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    struct qcow2_create_opts bo = { .size = size, .backing_name = "cbase.raw", .backing_fmt = LSM_FMT_RAW };
    assert_int_equal(qcow2_writer_create(fd, 512, &bo, &w), 0);
    lsm_error_clear();
    assert_int_equal(qcow2_writer_preallocate(w, QCOW2_PREALLOC_METADATA), -EINVAL);
    assert_true(*lsm_last_error());
    qcow2_writer_close(w);
    close(fd);
    free(buf);
}

static void test_zstd(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    int fd = open(path("z.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    struct qcow2_create_opts o = { .size = 1 * MiB, .compression_type = QCOW2_COMPRESSION_ZSTD };
    struct qcow2_writer *w;
    assert_int_equal(qcow2_writer_create(fd, 512, &o, &w), 0);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    uint8_t h[512];
    assert_int_equal(pread(fd, h, sizeof h, 0), (ssize_t)sizeof h);
    close(fd);
    assert_true(be64_get(h + 72) & QCOW2_INCOMPAT_COMPRESSION);
    assert_int_equal(h[104], QCOW2_COMPRESSION_ZSTD);
    assert_int_equal(be32_get(h + 100), 112);
    char *out;
    int rc = run(&out, "qemu-img info %s", path("z.qcow2"));
    if (rc == 0 && !strstr(out, "compression type: zstd"))
        fail_msg("info:\n%s", out);
    if (rc != 0)
        print_message("  qemu-img cannot open zstd images here (built without zstd?)\n");
    else
        expect_check_clean(path("z.qcow2"));
    free(out);
}

/* ---- compressed clusters ------------------------------------------------ */

/* Content of guest cluster i for the compression tests: kind 0 compresses
 * well (few distinct bytes), 1 is random (does not compress: stored as a
 * data cluster), 2 is half random (compresses to about half a cluster, so
 * compressed clusters straddle host clusters), 3 is all zeroes written as
 * data (compresses to a few bytes). */
static void fill_kind(uint8_t *b, size_t cs, unsigned kind, uint64_t i)
{
    switch (kind) {
    case 0:
        for (size_t k = 0; k < cs; k++)
            b[k] = (uint8_t)("lsm-sync compressed "[(k / 7 + i) % 20]);
        break;
    case 1:
        for (size_t k = 0; k + 8 <= cs; k += 8) {
            uint64_t v = rnd();
            memcpy(b + k, &v, 8);
        }
        break;
    case 2:
        memset(b, 0, cs);
        for (size_t k = 0; k + 8 <= cs / 2; k += 8) {
            uint64_t v = rnd();
            memcpy(b + k, &v, 8);
        }
        break;
    default:
        memset(b, 0, cs);
        break;
    }
}

struct ccfg {
    unsigned cbits, refcount_bits, version;
    bool extended_l2;
    unsigned type;
    uint64_t size;
};

/* Write every guest cluster of an image with a kind from a fixed pattern
 * (some left unallocated, some zero clusters, whole ranges at once), the
 * same into a raw reference; check, compare, and see compressed clusters
 * in qemu-img map. */
static void run_compress(const struct ccfg *cf)
{
    char name[64], ref[80];
    snprintf(name, sizeof name, "c%u-%u-%u-%d-%u.qcow2", cf->cbits, cf->refcount_bits, cf->version,
             cf->extended_l2, cf->type);
    snprintf(ref, sizeof ref, "%s.raw", name);
    int fd = open(path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    int rfd = open_ref(ref, cf->size);
    struct qcow2_create_opts o = {
        .size = cf->size, .cluster_bits = cf->cbits, .refcount_bits = cf->refcount_bits,
        .version = cf->version, .extended_l2 = cf->extended_l2, .compression_type = cf->type,
        .compress = true,
    };
    struct qcow2_writer *w;
    int r = qcow2_writer_create(fd, 512, &o, &w);
    if (r == -ENOTSUP) {   /* zstd without libzstd */
        print_message("  %s: %s\n", name, lsm_last_error());
        close(fd);
        close(rfd);
        return;
    }
    assert_int_equal(r, 0);
    assert_true(qcow2_writer_compressing(w));
    uint64_t cs = 1ULL << cf->cbits, n = div_round_up(cf->size, cs);
    /* runs of up to 5 clusters, each written with one call */
    static const unsigned pattern[] = { 0, 0, 2, 1, 0, 4, 2, 2, 2, 5, 0, 3, 1, 1, 0, 2, 0, 0, 0 };
    uint8_t *buf = abuf(5 * cs);
    uint64_t compressible = 0;
    for (uint64_t c = 0, k = 0; c < n; k++) {
        uint64_t run_len = MIN(1 + k % 5, n - c);
        unsigned kind = pattern[k % (sizeof pattern / sizeof *pattern)];
        if (kind == 4) {            /* unallocated */
            c += run_len;
            continue;
        }
        if (kind == 5) {            /* zero clusters */
            assert_int_equal(qcow2_writer_zero(w, c * cs, run_len * cs), 0);
            c += run_len;
            continue;
        }
        for (uint64_t j = 0; j < run_len; j++)
            fill_kind(buf + j * cs, cs, kind, c + j);
        uint64_t end = MIN((c + run_len) * cs, cf->size);
        memset(buf + (end - c * cs), 0, (c + run_len) * cs - end);   /* past the end */
        assert_int_equal(qcow2_writer_write_compressed(w, c * cs, buf, run_len * cs), 0);
        xpwrite(rfd, buf, end - c * cs, c * cs);
        if (kind != 1)
            compressible += run_len;
        c += run_len;
    }
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    free(buf);
    close(rfd);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    close(fd);
    if (!have_qemu_img)
        return;
    char *out;
    if (cf->type == QCOW2_COMPRESSION_ZSTD) {
        int rc = run(&out, "qemu-img info %s", path(name));
        free(out);
        if (rc != 0) {
            print_message("  %s: qemu-img cannot open zstd images here\n", name);
            return;
        }
    }
    expect_check_clean(path(name));
    expect_compare(path(name), path(ref));
    /* qemu-img check counts the compressed clusters: every one but the
     * random ones (qemu-img 7.2's map does not say which are compressed) */
    assert_int_equal(run(&out, "qemu-img check --output=json %s", path(name)), 0);
    json_object *chk = json_tokener_parse(out);
    assert_non_null(chk);
    int64_t nc = jint(chk, "compressed-clusters", -1);
    json_object_put(chk);
    free(out);
    if (nc != (int64_t)compressible)
        fail_msg("%s: qemu-img check counts %" PRId64 " compressed clusters, expected %" PRIu64,
                 name, nc, compressible);
}

static void test_compress(void **state)
{
    (void)state;
    static const struct ccfg cfgs[] = {
        { 16, 16, 3, false, QCOW2_COMPRESSION_ZLIB, 20 * MiB + 12345 * 512 },
        { 16, 16, 3, false, QCOW2_COMPRESSION_ZSTD, 20 * MiB + 12345 * 512 },
        { 16, 16, 2, false, QCOW2_COMPRESSION_ZLIB, 7 * MiB },
        { 16, 1, 3, false, QCOW2_COMPRESSION_ZLIB, 7 * MiB },
        { 16, 2, 3, false, QCOW2_COMPRESSION_ZLIB, 7 * MiB },
        { 16, 64, 3, true, QCOW2_COMPRESSION_ZLIB, 7 * MiB },
        { 9, 16, 3, false, QCOW2_COMPRESSION_ZLIB, 2 * MiB + 512 },   /* many L2 tables */
        { 12, 8, 3, false, QCOW2_COMPRESSION_ZSTD, 5 * MiB + 1024 },
        { 21, 16, 3, false, QCOW2_COMPRESSION_ZLIB, 41 * MiB + 512 },
        { 21, 16, 3, true, QCOW2_COMPRESSION_ZSTD, 41 * MiB },
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++)
        run_compress(&cfgs[i]);
}

/* What the compressed path refuses. */
static void test_compress_refusals(void **state)
{
    (void)state;
    int fd;
    struct qcow2_writer *w = create_simple("cr-plain.qcow2", 4 * MiB, 16, &fd);
    uint8_t *buf = abuf(2 * 65536);
    fill_kind(buf, 65536, 0, 0);
    fill_kind(buf + 65536, 65536, 0, 1);
    assert_false(qcow2_writer_compressing(w));
    assert_int_equal(qcow2_writer_write_compressed(w, 0, buf, 65536), -EINVAL);
    qcow2_writer_close(w);
    close(fd);

    fd = open(path("cr.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    struct qcow2_create_opts o = { .size = 4 * MiB, .compress = true };
    assert_int_equal(qcow2_writer_create(fd, 512, &o, &w), 0);
    assert_int_equal(qcow2_writer_preallocate(w, QCOW2_PREALLOC_METADATA), -EINVAL);
    assert_int_equal(qcow2_writer_write_compressed(w, 512, buf, 65536), -EINVAL);     /* unaligned */
    assert_int_equal(qcow2_writer_write_compressed(w, 0, buf, 2 * 65536), 0);
    assert_int_equal(qcow2_writer_write_compressed(w, 65536, buf, 65536), -EINVAL);   /* again */
    uint64_t host, mapped;
    assert_int_equal(qcow2_writer_alloc(w, 0, 65536, &host, &mapped), -EINVAL);
    assert_int_equal(qcow2_writer_zero(w, 65536, 65536), -EINVAL);
    uint64_t hash;
    assert_int_equal(qcow2_writer_checkpoint_hash(w, &hash), -ENOTSUP);
    assert_int_equal(qcow2_writer_checkpoint(w), -ENOTSUP);
    /* the refusals changed nothing: the image finishes clean */
    assert_int_equal(qcow2_writer_alloc(w, 2 * 65536, 65536, &host, &mapped), 0);
    xpwrite(fd, buf, 65536, host);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    free(buf);
    if (have_qemu_img)
        expect_check_clean(path("cr.qcow2"));
}

/* 64 GiB, every cluster allocated, no data written: the writer's memory
 * stays bounded (measured in a child process). */
static void test_memory(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    uint64_t size = 64 * GiB;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rusage before, after;
        getrusage(RUSAGE_SELF, &before);
        int fd = open(path("mem.qcow2"), O_RDWR | O_CREAT | O_TRUNC, 0644);
        struct qcow2_create_opts o = { .size = size };
        struct qcow2_writer *w;
        int r = qcow2_writer_create(fd, 512, &o, &w);
        uint64_t host;
        /* allocate in engine-sized pieces, a few out of order */
        for (uint64_t g = 0; r == 0 && g < size; g += 4 * MiB) {
            uint64_t gg = (g / (4 * MiB)) % 64 == 1 ? g + 4 * MiB : (g / (4 * MiB)) % 64 == 2 ? g - 4 * MiB : g;
            r = alloc_all(w, gg, 4 * MiB, &host);
        }
        if (r == 0)
            r = qcow2_writer_finish(w);
        qcow2_writer_close(w);
        close(fd);
        getrusage(RUSAGE_SELF, &after);
        long delta = after.ru_maxrss - before.ru_maxrss;    /* KiB */
        char msg[256];
        int len = snprintf(msg, sizeof msg, "%d %ld %s", r, delta, r ? lsm_last_error() : "");
        if (write(pfd[1], msg, (size_t)len) < 0)
            _exit(2);
        _exit(0);
    }
    close(pfd[1]);
    char msg[256] = { 0 };
    ssize_t n = read(pfd[0], msg, sizeof msg - 1);
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    assert_true(n > 0);
    int r;
    long delta;
    assert_int_equal(sscanf(msg, "%d %ld", &r, &delta), 2);
    if (r != 0)
        fail_msg("64 GiB run failed: %s", msg);
    struct stat sb;
    assert_int_equal(stat(path("mem.qcow2"), &sb), 0);
    print_message("  64 GiB fully allocated: writer max RSS growth %ld KiB, file size %" PRIu64
                  ", on disk %" PRIu64 " KiB\n", delta, (uint64_t)sb.st_size,
                  (uint64_t)sb.st_blocks / 2);
    assert_true(delta < 64 * 1024);
    assert_true((uint64_t)sb.st_blocks * 512 < 64 * MiB);      /* sparse: metadata only */
    expect_check_clean(path("mem.qcow2"));
    char *out;
    assert_int_equal(run(&out, "qemu-img map -f qcow2 --output=json %s", path("mem.qcow2")), 0);
    json_object *arr = json_tokener_parse(out);
    assert_non_null(arr);
    uint64_t data = 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        assert_true(jbool(e, "data"));
        data += (uint64_t)jint(e, "length", 0);
    }
    assert_int_equal(data, size);
    json_object_put(arr);
    free(out);
    unlink(path("mem.qcow2"));
}

static void test_enospc(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const char *mnt = path("small");
    mkdir(mnt, 0755);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=2m") < 0) {
        print_message("SKIP: cannot mount a small tmpfs: %s\n", strerror(errno));
        skip();
    }
    char img[600];
    snprintf(img, sizeof img, "%s/e.qcow2", mnt);
    int fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    struct qcow2_create_opts o = { .size = 64 * MiB };
    struct qcow2_writer *w;
    assert_int_equal(qcow2_writer_create(fd, 512, &o, &w), 0);
    uint64_t host, len = 4 * MiB;
    assert_int_equal(alloc_all(w, 0, len, &host), 0);
    uint8_t *buf = abuf(len);
    fill(buf, len, 0, 3);
    ssize_t n = pwrite(fd, buf, len, (off_t)host);
    assert_true(n < (ssize_t)len);          /* the engine sees ENOSPC on its data */
    free(buf);
    assert_int_equal(alloc_all(w, 32 * MiB, 4 * 65536, &host), 0);
    lsm_error_clear();
    int r = qcow2_writer_finish(w);
    print_message("  finish on a full tmpfs: %d (%s)\n", r, lsm_last_error());
    assert_int_equal(r, -ENOSPC);
    assert_non_null(strstr(lsm_last_error(), "No space left on device"));
    assert_int_equal(qcow2_writer_finish(w), -ENOSPC);      /* stays failed */
    assert_int_equal(alloc_all(w, 40 * MiB, 65536, &host), -ENOSPC);
    qcow2_writer_close(w);
    close(fd);
    expect_incomplete(img, true);
    umount(mnt);
}

/* Like QEMU's iotest 026 for ENOSPC: a small tmpfs is filled so that the
 * writer runs out of room at every possible metadata write (create, L2
 * eviction during alloc, L2 flush, L1, refcount table and blocks).  Each
 * run either completes with a clean image or fails with -ENOSPC and a
 * message, leaving a file that does not open as qcow2. */
static void test_enospc_sweep(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    const char *mnt = path("sweep");
    mkdir(mnt, 0755);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=4m") < 0) {
        print_message("SKIP: cannot mount a small tmpfs: %s\n", strerror(errno));
        skip();
    }
    char img[600], filler[600];
    snprintf(img, sizeof img, "%s/s.qcow2", mnt);
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    unsigned ok = 0, failed = 0, in_create = 0, in_alloc = 0, in_finish = 0;
    for (uint64_t room = 0; room <= 600 * KiB; room += 8 * KiB) {
        unlink(img);
        unlink(filler);
        struct statvfs sv;
        assert_int_equal(statvfs(mnt, &sv), 0);
        uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
        int ffd = open(filler, O_RDWR | O_CREAT | O_TRUNC, 0644);
        assert_true(ffd >= 0);
        if (avail > room)
            assert_int_equal(fallocate(ffd, 0, 0, (off_t)(avail - room)), 0);
        close(ffd);

        int fd = open(img, O_RDWR | O_CREAT | O_TRUNC, 0644);
        assert_true(fd >= 0);
        struct qcow2_create_opts o = { .size = 256 * MiB, .cluster_bits = 12 };
        struct qcow2_writer *w = NULL;
        uint64_t saved_rng = rng_state, host;
        rng_state = 42;         /* the same sequence of calls every time */
        lsm_error_clear();
        int r = qcow2_writer_create(fd, 512, &o, &w);
        int stage = 0;
        for (int i = 0; r == 0 && i < 400; i++) {
            uint64_t g = (rnd() % 65536) * 4096;
            stage = 1;
            r = i % 8 == 7 ? qcow2_writer_zero(w, g, 4096) : alloc_all(w, g, 4096, &host);
        }
        if (r == 0) {
            stage = 2;
            r = qcow2_writer_finish(w);
        }
        rng_state = saved_rng;
        qcow2_writer_close(w);
        close(fd);
        if (r == 0) {
            ok++;
            expect_check_clean(img);
            continue;
        }
        failed++;
        in_create += stage == 0;
        in_alloc += stage == 1;
        in_finish += stage == 2;
        if (r != -ENOSPC || !strstr(lsm_last_error(), "No space left on device"))
            fail_msg("room %" PRIu64 ": got %d (%s)", room, r, lsm_last_error());
        if (stage == 0)
            expect_not_complete(img);
        else
            expect_incomplete(img, true);
    }
    print_message("  %u runs completed, %u failed cleanly with ENOSPC (create %u, alloc %u, "
                  "finish %u)\n", ok, failed, in_create, in_alloc, in_finish);
    assert_true(ok > 0 && in_alloc > 0 && in_finish > 0);
    unlink(img);
    unlink(filler);
    umount(mnt);
}

/* A block device (loop device) smaller than the data: -ENOSPC from alloc,
 * and a finished image on the device passes qemu-img check. */
static void test_blockdev(void **state)
{
    (void)state;
    NEED_QEMU_IMG();
    assert_int_equal(run(NULL, "rm -f %s; truncate -s 8M %s", path("loop.img"), path("loop.img")), 0);
    char *out;
    if (run(&out, "losetup -f --show %s", path("loop.img")) != 0 || strncmp(out, "/dev/", 5)) {
        print_message("SKIP: no loop device: %s\n", out);
        free(out);
        skip();
    }
    char *dev = loopdev;
    snprintf(loopdev, sizeof loopdev, "%.*s", (int)strcspn(out, "\n"), out);
    free(out);
    int fd = open(dev, O_RDWR | O_DIRECT);
    assert_true(fd >= 0);
    struct qcow2_create_opts o = { .size = 1 * GiB };
    struct qcow2_writer *w;
    assert_int_equal(qcow2_writer_create(fd, 4096, &o, &w), 0);
    uint64_t host;
    lsm_error_clear();
    assert_int_equal(alloc_all(w, 0, 16 * MiB, &host), -ENOSPC);
    assert_non_null(strstr(lsm_last_error(), "No space"));
    assert_int_equal(alloc_all(w, 0, 4 * MiB, &host), 0);
    uint8_t *buf = abuf(4 * MiB);
    fill(buf, 4 * MiB, 0, 11);
    xpwrite(fd, buf, 4 * MiB, host);
    assert_int_equal(qcow2_writer_zero(w, 512 * MiB, 1 * MiB), 0);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    struct stat st;
    assert_int_equal(stat(path("loop.img"), &st), 0);
    assert_int_equal(st.st_size, 8 * MiB);                 /* never truncated */
    int rc = run(&out, "qemu-img check -f qcow2 %s", dev);
    if (rc != 0)
        fail_msg("check on %s: %s", dev, out);
    free(out);
    /* reopen the device image and add a cluster */
    fd = open(dev, O_RDWR);
    assert_int_equal(qcow2_writer_open(fd, 512, &w), 0);
    assert_int_equal(alloc_all(w, 8 * MiB, 65536, &host), 0);
    assert_int_equal(qcow2_writer_finish(w), 0);
    qcow2_writer_close(w);
    close(fd);
    rc = run(&out, "qemu-img check -f qcow2 %s", dev);
    run(NULL, "losetup -d %s", dev);
    loopdev[0] = '\0';
    if (rc != 0)
        fail_msg("check on %s after reopen: %s", dev, out);
    free(out);
    free(buf);
}

static int setup(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    /* O_DIRECT needs a real file system, not tmpfs: prefer /var/tmp. */
    snprintf(tmpdir, sizeof tmpdir, "%s/lsm-writer-XXXXXX", base ? base : "/var/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    have_qemu_img = run(NULL, "qemu-img --version") == 0;
    if (!have_qemu_img)
        print_message("qemu-img not found: image checks will be skipped\n");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[1024];
    if (loopdev[0])
        run(NULL, "losetup -d %s", loopdev);
    snprintf(cmd, sizeof cmd, "umount %s/small %s/sweep 2>/dev/null; rm -rf %s",
             tmpdir, tmpdir, tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_invalid_opts),
        cmocka_unit_test(test_bad_ranges),
        cmocka_unit_test(test_interrupted),
        cmocka_unit_test(test_interrupted_evicted),
        cmocka_unit_test(test_checkpoint_resume),
        cmocka_unit_test(test_overwrite),
        cmocka_unit_test(test_zstd),
        cmocka_unit_test(test_compress),
        cmocka_unit_test(test_compress_refusals),
        cmocka_unit_test(test_create_options),
        cmocka_unit_test(test_backing),
        cmocka_unit_test(test_set_backing),
        cmocka_unit_test(test_open_existing),
        cmocka_unit_test(test_open_refuses),
        cmocka_unit_test(test_open_leaks),
        cmocka_unit_test(test_huge),
        cmocka_unit_test(test_enospc),
        cmocka_unit_test(test_enospc_sweep),
        cmocka_unit_test(test_blockdev),
        cmocka_unit_test(test_matrix),
    };
    /* TEST_FILTER=test_matrix runs one test (cmocka glob). */
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
