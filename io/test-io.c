/* Unit tests for io/: every backend built in, files, buffers, fault
 * injection, offload.  Tests that need something this machine lacks (root
 * for mounts, xfs with reflink) skip with the reason printed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "io.h"
#include "util.h"

struct fixture {
    char dir[256];
    char mnt[300];
    char img[300];
    char loopdev[64];
    bool mounted;
};

static int setup_dir(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    /* /var/tmp rather than /tmp: tmpfs there would hide O_DIRECT. */
    const char *base = getenv("LSM_TEST_DIR");
    snprintf(fx->dir, sizeof fx->dir, "%s/lsm-test-io.XXXXXX", base ? base : "/var/tmp");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

static int teardown_dir(void **state)
{
    struct fixture *fx = *state;
    if (fx->mounted && umount2(fx->mnt, 0) < 0)
        umount2(fx->mnt, MNT_DETACH);
    if (fx->loopdev[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "losetup -d %s", fx->loopdev);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot detach %s\n", fx->loopdev);
    }
    nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

static void path_in(struct fixture *fx, char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", fx->dir, name);
}

static uint8_t pattern_byte(uint64_t off)
{
    return (uint8_t)((off * 2654435761u) >> 13) | 1;   /* never 0 */
}

static void fill_pattern(uint8_t *p, uint64_t off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        p[i] = pattern_byte((off + i) / 512 * 7 + (off + i) % 512);
}

static bool check_pattern(const uint8_t *p, uint64_t off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern_byte((off + i) / 512 * 7 + (off + i) % 512))
            return false;
    return true;
}

static bool all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

/* Wait for one completion; fail the test on an error. */
static struct lsm_io_req *reap_one(struct lsm_io *io)
{
    struct lsm_io_req *done[1];
    int n = lsm_io_reap(io, 1, done, 1);
    if (n != 1)
        fail_msg("reap: %d (%s)", n, lsm_last_error());
    assert_true(done[0]->complete_ns >= done[0]->submit_ns);
    return done[0];
}

static void queue_or_reap(struct lsm_io *io, struct lsm_io_req *req,
                          void (*on_done)(struct lsm_io_req *))
{
    for (;;) {
        int r = lsm_io_queue(io, req);
        if (r == 0)
            return;
        assert_int_equal(r, -EAGAIN);
        assert_int_equal(io->in_flight, io->cfg.depth);
        assert_int_equal(lsm_io_submit(io), 0);
        on_done(reap_one(io));
    }
}

static void drain(struct lsm_io *io, void (*on_done)(struct lsm_io_req *))
{
    assert_int_equal(lsm_io_submit(io), 0);
    struct lsm_io_req *done[8];
    while (io->in_flight) {
        int n = lsm_io_reap(io, 1, done, ARRAY_SIZE(done));
        if (n <= 0)
            fail_msg("reap: %d (%s)", n, lsm_last_error());
        for (int i = 0; i < n; i++)
            on_done(done[i]);
    }
    assert_int_equal(lsm_io_reap(io, 1, done, 1), 0);   /* nothing left: no hang */
}

#define BLK (64 * 1024u)
#define NBLK 128u
#define FILE_SIZE ((uint64_t)BLK * NBLK)

static struct lsm_bufpool *g_pool;

static void check_full_write(struct lsm_io_req *req)
{
    if (req->result != (int64_t)req->len)
        fail_msg("write at %llu: %lld (%s)", (unsigned long long)req->offset,
                 (long long)req->result, strerror((int)-req->result));
    lsm_bufpool_put(g_pool, req->buf);
}

static void check_read_pattern(struct lsm_io_req *req)
{
    assert_int_equal(req->result, (int64_t)req->len);
    assert_true(check_pattern(req->buf, req->offset, req->len));
    lsm_bufpool_put(g_pool, req->buf);
}

static void check_ok(struct lsm_io_req *req)
{
    if (req->result < 0)
        fail_msg("op %d: %s", req->op, strerror((int)-req->result));
}

static void ignore_result(struct lsm_io_req *req)
{
    (void)req;
}

static void shuffle(unsigned *v, unsigned n)
{
    for (unsigned i = n - 1; i > 0; i--) {
        unsigned j = (unsigned)rand() % (i + 1);
        unsigned t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* Write a pattern with depth requests in flight in random order, flush,
 * read it back, zero a range, read a short block at EOF. */
static void run_backend(void **state, enum lsm_io_kind kind, bool fixed)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "data");

    struct lsm_io_config cfg = { .depth = 16, .fixed_buffers = fixed };
    struct lsm_io *io;
    int r = lsm_io_create(kind, &cfg, &io);
    if (r < 0)
        fail_msg("create %s: %s", lsm_io_kind_name(kind), lsm_last_error());
    assert_int_equal(io->kind, kind);
    assert_string_equal(lsm_io_name(io), lsm_io_kind_name(kind));

    struct lsm_file *f;
    r = lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE, LSM_DIRECT_AUTO, &f);
    if (r < 0)
        fail_msg("open: %s", lsm_last_error());
    assert_int_equal(lsm_file_truncate(f, FILE_SIZE), 0);

    assert_int_equal(lsm_bufpool_create(32 * BLK, BLK, MAX(f->mem_align, 512u), &g_pool), 0);
    if (fixed) {
        struct iovec *iov = lsm_bufpool_iovecs(g_pool);
        assert_non_null(iov);
        r = lsm_io_register_buffers(io, iov, g_pool->count);
        free(iov);
        if (r < 0)
            fail_msg("register buffers: %s", lsm_last_error());
        r = lsm_io_register_file(io, f);
        if (r < 0)
            fail_msg("register file: %s", lsm_last_error());
        assert_int_equal(f->reg_index, 0);
        assert_int_equal(lsm_io_register_file(io, f), 0);   /* again: same slot */
        assert_int_equal(f->reg_index, 0);
    } else if (kind == LSM_IO_URING) {
        struct iovec iov = { g_pool->base, BLK };
        assert_int_equal(lsm_io_register_buffers(io, &iov, 1), -ENOTSUP);  /* fixed_buffers off */
    } else {
        assert_int_equal(lsm_io_register_buffers(io, NULL, 0), -ENOTSUP);
        assert_int_equal(lsm_io_register_file(io, f), -ENOTSUP);
        assert_int_equal(f->reg_index, -1);
    }

    struct lsm_io_req reqs[NBLK];
    unsigned order[NBLK];
    for (unsigned i = 0; i < NBLK; i++)
        order[i] = i;
    shuffle(order, NBLK);

    /* Writes: out of order, queue until -EAGAIN, one submit per batch. */
    for (unsigned k = 0; k < NBLK; k++) {
        unsigned i = order[k];
        struct lsm_io_req *req = &reqs[i];
        memset(req, 0, sizeof *req);
        while (!(req->buf = lsm_bufpool_get(g_pool, &req->buf_index))) {
            assert_int_equal(lsm_io_submit(io), 0);
            check_full_write(reap_one(io));
        }
        req->op = LSM_OP_WRITE;
        req->file = f;
        req->offset = (uint64_t)i * BLK;
        req->len = BLK;
        fill_pattern(req->buf, req->offset, BLK);
        queue_or_reap(io, req, check_full_write);
        if (k % 5 == 4)
            assert_int_equal(lsm_io_submit(io), 0);
    }
    drain(io, check_full_write);

    struct lsm_io_req fl = { .op = LSM_OP_FLUSH, .file = f, .buf_index = -1 };
    assert_int_equal(lsm_io_queue(io, &fl), 0);
    assert_int_equal(reap_one(io), &fl);
    assert_int_equal(fl.result, 0);

    /* Read back, out of order. */
    shuffle(order, NBLK);
    for (unsigned k = 0; k < NBLK; k++) {
        unsigned i = order[k];
        struct lsm_io_req *req = &reqs[i];
        memset(req, 0, sizeof *req);
        while (!(req->buf = lsm_bufpool_get(g_pool, &req->buf_index))) {
            assert_int_equal(lsm_io_submit(io), 0);
            check_read_pattern(reap_one(io));
        }
        req->op = LSM_OP_READ;
        req->file = f;
        req->offset = (uint64_t)i * BLK;
        req->len = BLK;
        queue_or_reap(io, req, check_read_pattern);
    }
    drain(io, check_read_pattern);
    assert_int_equal(g_pool->nfree, g_pool->count);

    /* Write zeroes over blocks 3..5 (and a second range), in flight with a read. */
    struct lsm_io_req z1 = { .op = LSM_OP_WRITE_ZEROES, .file = f, .buf_index = -1,
                             .offset = 3 * BLK, .len = 3 * BLK };
    struct lsm_io_req z2 = { .op = LSM_OP_WRITE_ZEROES, .file = f, .buf_index = -1,
                             .offset = 100 * BLK, .len = BLK };
    assert_int_equal(lsm_io_queue(io, &z1), 0);
    assert_int_equal(lsm_io_queue(io, &z2), 0);
    drain(io, check_ok);
    assert_int_equal(z1.result, 3 * BLK);
    assert_int_equal(z2.result, BLK);

    int idx;
    uint8_t *buf = lsm_bufpool_get(g_pool, &idx);
    for (unsigned i = 2; i <= 6; i++) {
        struct lsm_io_req rd = { .op = LSM_OP_READ, .file = f, .buf = buf, .buf_index = idx,
                                 .offset = (uint64_t)i * BLK, .len = BLK };
        assert_int_equal(lsm_io_queue(io, &rd), 0);
        assert_int_equal(lsm_io_submit(io), 0);
        assert_ptr_equal(reap_one(io), &rd);
        assert_int_equal(rd.result, BLK);
        if (i >= 3 && i <= 5)
            assert_true(all_zero(buf, BLK));
        else
            assert_true(check_pattern(buf, rd.offset, BLK));
    }

    /* Short read at EOF: 4 KiB left, 64 KiB asked. */
    struct lsm_io_req eof = { .op = LSM_OP_READ, .file = f, .buf = buf, .buf_index = idx,
                              .offset = FILE_SIZE - 4096, .len = BLK };
    assert_int_equal(lsm_io_queue(io, &eof), 0);
    assert_int_equal(lsm_io_submit(io), 0);
    assert_ptr_equal(reap_one(io), &eof);
    assert_int_equal(eof.result, 4096);
    assert_true(check_pattern(buf, eof.offset, 4096));
    /* At EOF: 0. */
    eof.offset = FILE_SIZE;
    assert_int_equal(lsm_io_queue(io, &eof), 0);
    assert_ptr_equal(reap_one(io), &eof);   /* reap submits what is queued */
    assert_int_equal(eof.result, 0);

    /* A request the kernel refuses completes with the error, alone. */
    if (f->direct) {
        struct lsm_io_req bad = { .op = LSM_OP_READ, .file = f, .buf = buf + 1, .buf_index = -1,
                                  .offset = 1, .len = 4095 };
        struct lsm_io_req good = { .op = LSM_OP_READ, .file = f, .buf = buf + BLK / 2,
                                   .buf_index = -1, .offset = 0, .len = 4096 };
        assert_int_equal(lsm_io_queue(io, &bad), 0);
        assert_int_equal(lsm_io_queue(io, &good), 0);
        drain(io, ignore_result);
        assert_int_equal(bad.result, -EINVAL);
        assert_int_equal(good.result, 4096);
    }
    if (fixed) {
        /* Proof that READ_FIXED is used: a buffer outside registered
         * buffer 0 is refused by the kernel (EFAULT) rather than read. */
        void *outside = NULL;
        assert_int_equal(posix_memalign(&outside, 4096, 4096), 0);
        struct lsm_io_req rd = { .op = LSM_OP_READ, .file = f, .buf = outside, .buf_index = 0,
                                 .offset = 0, .len = 4096 };
        assert_int_equal(lsm_io_queue(io, &rd), 0);
        assert_ptr_equal(reap_one(io), &rd);
        assert_int_equal(rd.result, -EFAULT);
        free(outside);
    }
    lsm_bufpool_put(g_pool, buf);

    lsm_io_destroy(io);
    lsm_file_close(f);
    lsm_bufpool_destroy(g_pool);
    g_pool = NULL;
}

static const enum lsm_io_kind all_kinds[] = {
#ifdef HAVE_LIBURING
    LSM_IO_URING,
#endif
#ifdef HAVE_LIBAIO
    LSM_IO_AIO,
#endif
    LSM_IO_PSYNC,
};

/* WRITE_ZEROES of [off, off+len) through every backend, each followed by a
 * read of the range (buf: len bytes, aligned for f). */
static void zero_all_backends(struct lsm_file *f, uint64_t off, uint64_t len, uint8_t *buf)
{
    for (unsigned k = 0; k < ARRAY_SIZE(all_kinds); k++) {
        struct lsm_io *io;
        struct lsm_io_config cfg = { .depth = 2 };
        assert_int_equal(lsm_io_create(all_kinds[k], &cfg, &io), 0);
        for (int round = 0; round < 2; round++) {   /* the second one after a fallback */
            memset(buf, 0xee, len);
            struct lsm_io_req w = { .op = LSM_OP_WRITE, .file = f, .buf = buf, .buf_index = -1,
                                    .offset = off, .len = len };
            struct lsm_io_req z = { .op = LSM_OP_WRITE_ZEROES, .file = f, .buf_index = -1,
                                    .offset = off, .len = len };
            struct lsm_io_req r = { .op = LSM_OP_READ, .file = f, .buf = buf, .buf_index = -1,
                                    .offset = off, .len = len };
            struct lsm_io_req *seq[] = { &w, &z, &r };
            for (unsigned i = 0; i < ARRAY_SIZE(seq); i++) {
                assert_int_equal(lsm_io_queue(io, seq[i]), 0);
                assert_int_equal(lsm_io_submit(io), 0);
                assert_ptr_equal(reap_one(io), seq[i]);
                if (seq[i]->result != (int64_t)len)
                    fail_msg("%s: op %d: %lld", lsm_io_name(io), seq[i]->op,
                             (long long)seq[i]->result);
            }
            assert_true(all_zero(buf, len));
        }
        lsm_io_destroy(io);
    }
}

static void test_uring(void **state)
{
#ifdef HAVE_LIBURING
    run_backend(state, LSM_IO_URING, false);
#else
    printf("SKIP: built without liburing\n");
    skip();
#endif
}

static void test_uring_fixed(void **state)
{
#ifdef HAVE_LIBURING
    run_backend(state, LSM_IO_URING, true);
#else
    printf("SKIP: built without liburing\n");
    skip();
#endif
}

static void test_aio(void **state)
{
#ifdef HAVE_LIBAIO
    run_backend(state, LSM_IO_AIO, false);
#else
    printf("SKIP: built without libaio\n");
    skip();
#endif
}

static void test_psync(void **state)
{
    run_backend(state, LSM_IO_PSYNC, false);
}

static int thread_count(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

/* At depth 1 the psync backend starts no worker: reap() does the request
 * in the caller's thread (fio's psync), with the same results. */
static void test_psync_inline(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "inline");
    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_NEVER, &f), 0);
    int before = thread_count();
    struct lsm_io *io;
    struct lsm_io_config cfg = { .depth = 1 };
    assert_int_equal(lsm_io_create(LSM_IO_PSYNC, &cfg, &io), 0);
    assert_int_equal(thread_count(), before);

    static uint8_t wbuf[65536], rbuf[65536];
    fill_pattern(wbuf, 4096, sizeof wbuf);
    struct lsm_io_req w = { .op = LSM_OP_WRITE, .file = f, .buf = wbuf, .buf_index = -1,
                            .offset = 4096, .len = sizeof wbuf };
    struct lsm_io_req r = { .op = LSM_OP_READ, .file = f, .buf = rbuf, .buf_index = -1,
                            .offset = 4096, .len = sizeof rbuf };
    assert_int_equal(lsm_io_queue(io, &w), 0);
    assert_int_equal(lsm_io_queue(io, &r), -EAGAIN);    /* depth 1 */
    assert_int_equal(lsm_io_submit(io), 0);
    assert_ptr_equal(reap_one(io), &w);
    assert_int_equal(w.result, sizeof wbuf);
    assert_true(w.complete_ns >= w.submit_ns);
    assert_int_equal(lsm_io_queue(io, &r), 0);
    assert_int_equal(lsm_io_submit(io), 0);
    assert_ptr_equal(reap_one(io), &r);
    assert_int_equal(r.result, sizeof rbuf);
    assert_memory_equal(rbuf, wbuf, sizeof rbuf);

    /* destroyed with a request still staged: it is done, not lost */
    memset(rbuf, 0, sizeof rbuf);
    assert_int_equal(lsm_io_queue(io, &r), 0);
    lsm_io_destroy(io);
    assert_int_equal(r.result, sizeof rbuf);
    assert_memory_equal(rbuf, wbuf, sizeof rbuf);
    lsm_file_close(f);
}

static void test_auto_fallback(void **state)
{
    (void)state;
    struct lsm_io_config cfg = { .depth = 4 };
    struct lsm_io *io;

    setenv("LSM_TEST_URING_ERRNO", "EPERM", 1);
#ifdef HAVE_LIBURING
    assert_int_equal(lsm_io_create(LSM_IO_URING, &cfg, &io), -EPERM);
    assert_non_null(strstr(lsm_last_error(), "Operation not permitted"));
#endif
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), 0);
#ifdef HAVE_LIBAIO
    assert_int_equal(io->kind, LSM_IO_AIO);
    assert_string_equal(lsm_io_name(io), "aio");
#else
    assert_int_equal(io->kind, LSM_IO_PSYNC);
#endif
    lsm_io_destroy(io);

    /* An errno that is not a refusal is an error, not a fallback. */
    setenv("LSM_TEST_URING_ERRNO", "EIO", 1);
#ifdef HAVE_LIBURING
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), -EIO);
    setenv("LSM_TEST_URING_ERRNO", "EBOGUS", 1);
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "EBOGUS"));
#endif
    setenv("LSM_TEST_URING_ERRNO", "38", 1);   /* ENOSYS by number */
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), 0);
    assert_int_not_equal(io->kind, LSM_IO_URING);
    lsm_io_destroy(io);
    unsetenv("LSM_TEST_URING_ERRNO");

#ifdef HAVE_LIBURING
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), 0);
    assert_int_equal(io->kind, LSM_IO_URING);
    lsm_io_destroy(io);
#endif
    cfg.depth = 0;
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), -EINVAL);
}

static void test_parse(void **state)
{
    (void)state;
    enum lsm_io_kind k;
    enum lsm_direct_mode d;
    assert_int_equal(lsm_io_kind_parse("uring", &k), 0); assert_int_equal(k, LSM_IO_URING);
    assert_int_equal(lsm_io_kind_parse("aio", &k), 0); assert_int_equal(k, LSM_IO_AIO);
    assert_int_equal(lsm_io_kind_parse("psync", &k), 0); assert_int_equal(k, LSM_IO_PSYNC);
    assert_int_equal(lsm_io_kind_parse("auto", &k), 0); assert_int_equal(k, LSM_IO_AUTO);
    assert_int_equal(lsm_io_kind_parse("posix", &k), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "posix"));
    for (int i = LSM_IO_AUTO; i <= LSM_IO_PSYNC; i++) {
        assert_int_equal(lsm_io_kind_parse(lsm_io_kind_name(i), &k), 0);
        assert_int_equal(k, i);
    }
    assert_int_equal(lsm_direct_parse("auto", &d), 0); assert_int_equal(d, LSM_DIRECT_AUTO);
    assert_int_equal(lsm_direct_parse("always", &d), 0); assert_int_equal(d, LSM_DIRECT_ALWAYS);
    assert_int_equal(lsm_direct_parse("never", &d), 0); assert_int_equal(d, LSM_DIRECT_NEVER);
    assert_int_equal(lsm_direct_parse("maybe", &d), -EINVAL);
}

static void test_direct_alignment(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "aligned");
    struct lsm_file *f;
    int r = lsm_file_open(path, LSM_FILE_WRITE | LSM_FILE_CREATE, LSM_DIRECT_ALWAYS, &f);
    if (r == -EINVAL) {
        printf("SKIP: %s\n", lsm_last_error());
        skip();
    }
    assert_int_equal(r, 0);
    assert_true(f->direct);
    assert_false(f->direct_refused);
    assert_false(f->is_blockdev);
    assert_true(is_pow2(f->mem_align) && is_pow2(f->offset_align));
    assert_true(f->offset_align >= 512 && f->offset_align <= 65536);
    printf("O_DIRECT on %s: memory alignment %u, offset alignment %u\n", fx->dir,
           f->mem_align, f->offset_align);
    lsm_file_close(f);

    /* CREATE without TRUNC: must not exist. */
    assert_int_equal(lsm_file_open(path, LSM_FILE_WRITE | LSM_FILE_CREATE, LSM_DIRECT_AUTO, &f), -EEXIST);
    assert_non_null(strstr(lsm_last_error(), path));
    /* Sources open read-only. */
    chmod(path, 0444);
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_AUTO, &f), 0);
    assert_int_equal(fcntl(f->fd, F_GETFL) & O_ACCMODE, O_RDONLY);
    assert_int_equal(f->size, 0);
    lsm_file_close(f);
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_NEVER, &f), 0);
    assert_false(f->direct);
    assert_int_equal(f->mem_align, 1);
    lsm_file_close(f);
    assert_int_equal(lsm_file_open(fx->dir, LSM_FILE_READ, LSM_DIRECT_NEVER, &f), -EISDIR);
    assert_int_equal(lsm_file_open(path, LSM_FILE_CREATE, LSM_DIRECT_NEVER, &f), -EINVAL);
    path_in(fx, path, sizeof path, "missing");
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_AUTO, &f), -ENOENT);
    assert_non_null(strstr(lsm_last_error(), "cannot open"));
    assert_non_null(strstr(lsm_last_error(), "No such file"));

    int fd = open(fx->dir, O_RDONLY | O_DIRECTORY);
    assert_true(fd >= 0);
    assert_int_equal(lsm_file_from_fd(fd, fx->dir, &f), -EISDIR);
    close(fd);
}

static void test_buffered_fallback(void **state)
{
    struct fixture *fx = *state;
    snprintf(fx->mnt, sizeof fx->mnt, "%s/mnt", fx->dir);
    assert_int_equal(mkdir(fx->mnt, 0700), 0);
    /* ramfs has no direct I/O (tmpfs has it since Linux 6.6). */
    if (mount("ramfs", fx->mnt, "ramfs", 0, NULL) < 0) {
        printf("SKIP: cannot mount ramfs on %s to get a file system without O_DIRECT: %s\n",
               fx->mnt, strerror(errno));
        skip();
    }
    fx->mounted = true;
    char path[512];
    snprintf(path, sizeof path, "%s/f", fx->mnt);

    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_WRITE | LSM_FILE_CREATE, LSM_DIRECT_ALWAYS, &f), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "O_DIRECT"));
    assert_int_equal(access(path, F_OK), -1);   /* not left behind */

    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_AUTO, &f), 0);
    assert_true(f->direct_refused);
    assert_false(f->direct);
    assert_int_equal(f->mem_align, 1);
    assert_int_equal(f->offset_align, 1);

    /* Buffered I/O through the default backend works on it. */
    struct lsm_io *io;
    struct lsm_io_config cfg = { .depth = 2 };
    assert_int_equal(lsm_io_create(LSM_IO_AUTO, &cfg, &io), 0);
    char wbuf[100], rbuf[100];
    memset(wbuf, 'x', sizeof wbuf);
    struct lsm_io_req w = { .op = LSM_OP_WRITE, .file = f, .buf = wbuf, .buf_index = -1,
                            .offset = 7, .len = sizeof wbuf };
    assert_int_equal(lsm_io_queue(io, &w), 0);
    assert_ptr_equal(reap_one(io), &w);
    assert_int_equal(w.result, sizeof wbuf);
    struct lsm_io_req rd = { .op = LSM_OP_READ, .file = f, .buf = rbuf, .buf_index = -1,
                             .offset = 7, .len = sizeof rbuf };
    assert_int_equal(lsm_io_queue(io, &rd), 0);
    assert_ptr_equal(reap_one(io), &rd);
    assert_int_equal(rd.result, sizeof rbuf);
    assert_memory_equal(wbuf, rbuf, sizeof rbuf);
    lsm_io_destroy(io);
    /* No fallocate on ramfs: zeroes are written, by every backend. */
    zero_all_backends(f, 0, 50, (uint8_t *)wbuf);
    assert_int_equal(lsm_file_zero(f, 60, 40, true), 0);
    assert_int_equal(pread(f->fd, rbuf, sizeof rbuf, 7), sizeof rbuf);
    for (unsigned i = 0; i < sizeof rbuf; i++)
        assert_int_equal(rbuf[i], i + 7 < 50 || (i + 7 >= 60 && i + 7 < 100) ? 0 : 'x');
    lsm_file_close(f);
    /* Existing file, AUTO: still falls back. */
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_AUTO, &f), 0);
    assert_true(f->direct_refused);
    assert_int_equal(f->size, 107);
    lsm_file_close(f);
}

static void fault_run(const char *spec, enum lsm_io_kind kind, int64_t *results, unsigned n)
{
    char path[] = "/var/tmp/lsm-test-fault.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    struct lsm_file *f;
    assert_int_equal(lsm_file_from_fd(fd, path, &f), 0);

    setenv("LSM_IO_FAULT", spec, 1);
    struct lsm_io_config cfg = { .depth = 4 };
    struct lsm_io *io;
    int r = lsm_io_create(kind, &cfg, &io);
    unsetenv("LSM_IO_FAULT");
    if (r < 0)
        fail_msg("create with LSM_IO_FAULT=%s: %s", spec, lsm_last_error());
    assert_non_null(strstr(lsm_io_name(io), "+fault"));

    static char buf[4096];
    memset(buf, 'a', sizeof buf);
    struct lsm_io_req reqs[16];
    assert_true(n <= ARRAY_SIZE(reqs));
    for (unsigned i = 0; i < n; i++) {
        reqs[i] = (struct lsm_io_req){ .op = LSM_OP_WRITE, .file = f, .buf = buf,
                                       .buf_index = -1, .offset = i * 4096ull, .len = 4096 };
        if (i == n - 1) {
            /* The last is a read of block 0, once the writes are done. */
            drain(io, ignore_result);
            reqs[i].op = LSM_OP_READ;
            reqs[i].offset = 0;
        }
        queue_or_reap(io, &reqs[i], ignore_result);
    }
    drain(io, ignore_result);
    for (unsigned i = 0; i < n; i++)
        results[i] = reqs[i].result;
    assert_int_equal(io->in_flight, 0);
    lsm_io_destroy(io);
    lsm_file_close(f);
    close(fd);
}

static void test_fault(void **state)
{
    (void)state;
    int64_t res[10];
    enum lsm_io_kind kinds[] = { LSM_IO_AUTO, LSM_IO_PSYNC,
#ifdef HAVE_LIBAIO
                                 LSM_IO_AIO,
#endif
    };
    for (unsigned k = 0; k < ARRAY_SIZE(kinds); k++) {
        fault_run("write:3:EIO", kinds[k], res, 10);
        for (unsigned i = 0; i < 10; i++)
            assert_int_equal(res[i], i == 2 ? -EIO : 4096);

        fault_run("write:1:ENOSPC,write:9:ENOSPC,read:1:short", kinds[k], res, 10);
        for (unsigned i = 0; i < 10; i++)
            assert_int_equal(res[i], (i == 0 || i == 8) ? -ENOSPC : i == 9 ? 2048 : 4096);

        fault_run("any:10:EIO", kinds[k], res, 10);
        for (unsigned i = 0; i < 10; i++)
            assert_int_equal(res[i], i == 9 ? -EIO : 4096);
    }

    const char *bad[] = { "write", "write:0:EIO", "write:1:EPERM", "flush:1:short", "copy:1:EIO",
                          "write:1:EIO,", "write:1:EIO:x", "write:x:EIO" };
    struct lsm_io_config cfg = { .depth = 4 };
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++) {
        struct lsm_io *io;
        setenv("LSM_IO_FAULT", bad[i], 1);
        int r = lsm_io_create(LSM_IO_PSYNC, &cfg, &io);
        unsetenv("LSM_IO_FAULT");
        if (r != -EINVAL)
            fail_msg("LSM_IO_FAULT=%s: %d", bad[i], r);
        assert_non_null(strstr(lsm_last_error(), "LSM_IO_FAULT"));
    }
}

static void test_file_zero(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "zero");
    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_NEVER, &f), 0);
    assert_true(f->zero_reads_zero);
    static uint8_t buf[1 << 20];
    fill_pattern(buf, 0, sizeof buf);
    assert_int_equal(pwrite(f->fd, buf, sizeof buf, 0), sizeof buf);

    assert_int_equal(lsm_file_zero(f, 4096, 8192, true), 0);        /* punch */
    assert_int_equal(lsm_file_zero(f, 65536, 100000, false), 0);    /* zero range */
    assert_int_equal(lsm_file_zero(f, 300001, 7, false), 0);         /* unaligned */
    assert_int_equal(lsm_file_zero(f, 0, 0, true), 0);
    struct stat st;
    assert_int_equal(fstat(f->fd, &st), 0);
    assert_int_equal(st.st_size, sizeof buf);                        /* KEEP_SIZE */

    static uint8_t rb[1 << 20];
    assert_int_equal(pread(f->fd, rb, sizeof rb, 0), sizeof rb);
    for (size_t i = 0; i < sizeof rb; i += 1) {
        bool zero = (i >= 4096 && i < 12288) || (i >= 65536 && i < 165536) ||
                    (i >= 300001 && i < 300008);
        if (zero ? rb[i] != 0 : rb[i] != buf[i])
            fail_msg("byte %zu: %u", i, rb[i]);
    }
    assert_int_equal(lsm_file_zero(f, UINT64_MAX - 10, 100, false), -EINVAL);
    assert_int_equal(lsm_file_sync(f), 0);
    lsm_file_close(f);
}

static void test_bufpool(void **state)
{
    (void)state;
    struct lsm_bufpool *p;
    assert_int_equal(lsm_bufpool_create(1 << 20, 65536, 4096, &p), 0);
    assert_int_equal(p->count, 16);
    assert_int_equal(p->nfree, 16);
    void *bufs[16];
    bool seen[16] = { false };
    for (int i = 0; i < 16; i++) {
        int idx = -1;
        bufs[i] = lsm_bufpool_get(p, &idx);
        assert_non_null(bufs[i]);
        assert_true(idx >= 0 && idx < 16 && !seen[idx]);
        seen[idx] = true;
        assert_ptr_equal(bufs[i], (char *)p->base + (size_t)idx * 65536);
        assert_true(is_aligned((uintptr_t)bufs[i], 4096));
        memset(bufs[i], i, 65536);   /* writable, no overlap (ASan would say) */
    }
    assert_null(lsm_bufpool_get(p, NULL));
    struct iovec *iov = lsm_bufpool_iovecs(p);
    assert_non_null(iov);
    for (int i = 0; i < 16; i++) {
        assert_ptr_equal(iov[i].iov_base, (char *)p->base + (size_t)i * 65536);
        assert_int_equal(iov[i].iov_len, 65536);
    }
    free(iov);
    for (int i = 0; i < 16; i++)
        lsm_bufpool_put(p, bufs[i]);
    assert_int_equal(p->nfree, 16);
    lsm_bufpool_destroy(p);

    /* from 256 KiB on, the region starts on a huge-page boundary and is
     * whole huge pages */
    assert_int_equal(lsm_bufpool_create(5 << 20, 1 << 20, 4096, &p), 0);
    assert_int_equal(p->count, 5);
    assert_true(is_aligned((uintptr_t)p->base, 2u << 20));
    assert_int_equal(p->map_len, 6u << 20);   /* whole huge pages */
    memset(p->base, 0x5a, p->map_len);
    lsm_bufpool_destroy(p);
    assert_int_equal(lsm_bufpool_create(3 * 1000000, 1000000, 64, &p), 0);
    assert_true(is_aligned((uintptr_t)p->base, 2u << 20));
    assert_int_equal(p->map_len, 4u << 20);   /* whole huge pages */
    memset(p->base, 0xa5, 3000000);
    lsm_bufpool_destroy(p);

    assert_int_equal(lsm_bufpool_create(1000, 65536, 4096, &p), 0);   /* at least one */
    assert_int_equal(p->count, 1);
    lsm_bufpool_destroy(p);
    assert_int_equal(lsm_bufpool_create(1 << 20, 65536 + 512, 4096, &p), -EINVAL);
    assert_int_equal(lsm_bufpool_create(1 << 20, 65536, 3000, &p), -EINVAL);
    assert_int_equal(lsm_bufpool_create(1 << 20, 0, 4096, &p), -EINVAL);
}

static int run_cmd(const char *cmd)
{
    int st = system(cmd);
    return (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
}

static void test_offload(void **state)
{
    struct fixture *fx = *state;
    char cmd[1024];
    snprintf(fx->img, sizeof fx->img, "%s/xfs.img", fx->dir);
    snprintf(fx->mnt, sizeof fx->mnt, "%s/mnt", fx->dir);
    assert_int_equal(mkdir(fx->mnt, 0700), 0);
    int fd = open(fx->img, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 300 << 20), 0);
    close(fd);
    snprintf(cmd, sizeof cmd, "mkfs.xfs -q -m reflink=1 '%s' >/dev/null 2>&1", fx->img);
    if (run_cmd(cmd) != 0) {
        printf("SKIP: mkfs.xfs -m reflink=1 failed (xfsprogs missing?)\n");
        skip();
    }
    snprintf(cmd, sizeof cmd, "mount -o loop '%s' '%s' >/dev/null 2>&1", fx->img, fx->mnt);
    if (run_cmd(cmd) != 0) {
        printf("SKIP: cannot mount an xfs image with -o loop (not root, or no loop devices)\n");
        skip();
    }
    fx->mounted = true;

    char sp[600], dp[600];
    snprintf(sp, sizeof sp, "%s/src", fx->mnt);
    snprintf(dp, sizeof dp, "%s/dst", fx->mnt);
    struct lsm_file *src, *dst;
    assert_int_equal(lsm_file_open(sp, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_NEVER, &src), 0);
    assert_int_equal(lsm_file_open(dp, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_AUTO, &dst), 0);
    size_t len = 4 << 20;
    uint8_t *buf = malloc(len), *rb = malloc(len);
    assert_non_null(buf);
    assert_non_null(rb);
    fill_pattern(buf, 0, len);
    assert_int_equal(pwrite(src->fd, buf, len, 0), (ssize_t)len);
    assert_int_equal(lsm_file_sync(src), 0);

    int r = lsm_file_clone_range(src, 0, dst, 0, 1 << 20);
    if (r < 0)
        fail_msg("clone: %s", lsm_last_error());
    int64_t n = lsm_file_copy_range(src, 1 << 20, dst, 1 << 20, 2 << 20);
    if (n < 0)
        fail_msg("copy_file_range: %s", lsm_last_error());
    assert_int_equal(n, 2 << 20);
    /* Past the end of the source: short. */
    n = lsm_file_copy_range(src, 3 << 20, dst, 3 << 20, 2 << 20);
    assert_int_equal(n, 1 << 20);
    /* Unaligned clone does not apply: EINVAL, the caller falls back. */
    assert_int_equal(lsm_file_clone_range(src, 1, dst, 1, 4096), -EINVAL);

    int plain = open(dp, O_RDONLY);
    assert_true(plain >= 0);
    assert_int_equal(pread(plain, rb, len, 0), (ssize_t)len);
    close(plain);
    assert_memory_equal(buf, rb, len);
    free(buf);
    free(rb);
    lsm_file_close(src);
    lsm_file_close(dst);

    /* Across file systems: copy_file_range either copies or says EXDEV. */
    char other[600];
    path_in(fx, other, sizeof other, "other");
    struct lsm_file *o;
    assert_int_equal(lsm_file_open(other, LSM_FILE_WRITE | LSM_FILE_CREATE, LSM_DIRECT_NEVER, &o), 0);
    assert_int_equal(lsm_file_open(sp, LSM_FILE_READ, LSM_DIRECT_NEVER, &src), 0);
    r = lsm_file_clone_range(src, 0, o, 0, 65536);
    assert_true(r == -EXDEV || r == -EOPNOTSUPP);
    lsm_file_close(src);
    lsm_file_close(o);
}

struct thread_arg {
    struct lsm_io *io;
    struct lsm_file *f;
    int64_t result;
};

static void *use_in_thread(void *p)
{
    struct thread_arg *a = p;
    static char buf[4096];
    memset(buf, 'q', sizeof buf);
    struct lsm_io_req w = { .op = LSM_OP_WRITE, .file = a->f, .buf = buf, .buf_index = -1,
                            .offset = 0, .len = sizeof buf };
    a->result = lsm_io_queue(a->io, &w);
    if (a->result == 0)
        a->result = lsm_io_submit(a->io);
    struct lsm_io_req *done[1];
    if (a->result == 0)
        a->result = lsm_io_reap(a->io, 1, done, 1) == 1 ? w.result : -1;
    return NULL;
}

/* An lsm_io may be created by one thread and driven by another (the ring
 * binds to its first user, not its creator). */
static void test_other_thread(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "thread");
    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_NEVER, &f), 0);
    for (unsigned k = 0; k < ARRAY_SIZE(all_kinds); k++) {
        struct lsm_io_config cfg = { .depth = 4 };
        struct thread_arg a = { .f = f };
        assert_int_equal(lsm_io_create(all_kinds[k], &cfg, &a.io), 0);
        if (all_kinds[k] == LSM_IO_URING)
            assert_int_equal(lsm_io_register_file(a.io, f), 0);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, use_in_thread, &a), 0);
        pthread_join(t, NULL);
        if (a.result != 4096)
            fail_msg("%s from another thread: %lld (%s)", lsm_io_name(a.io),
                     (long long)a.result, lsm_last_error());
        /* Destroy from the thread that used it is not required either. */
        lsm_io_destroy(a.io);
    }
    lsm_file_close(f);
}

/* Requests the kernel fails complete with the errno; nothing hangs. */
static void test_errors(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "ro");
    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_WRITE | LSM_FILE_CREATE, LSM_DIRECT_NEVER, &f), 0);
    assert_int_equal(lsm_file_truncate(f, 65536), 0);
    lsm_file_close(f);
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_AUTO, &f), 0);

    void *buf = NULL;
    assert_int_equal(posix_memalign(&buf, 4096, 4096), 0);
    memset(buf, 1, 4096);
    for (unsigned k = 0; k < ARRAY_SIZE(all_kinds); k++) {
        struct lsm_io *io;
        struct lsm_io_config cfg = { .depth = 3 };
        assert_int_equal(lsm_io_create(all_kinds[k], &cfg, &io), 0);
        struct lsm_io_req w = { .op = LSM_OP_WRITE, .file = f, .buf = buf, .buf_index = -1,
                                .offset = 0, .len = 4096 };
        struct lsm_io_req z = { .op = LSM_OP_WRITE_ZEROES, .file = f, .buf_index = -1,
                                .offset = 0, .len = 4096 };
        struct lsm_io_req r = { .op = LSM_OP_READ, .file = f, .buf = buf, .buf_index = -1,
                                .offset = 4096, .len = 4096 };
        assert_int_equal(lsm_io_queue(io, &w), 0);
        assert_int_equal(lsm_io_queue(io, &z), 0);
        assert_int_equal(lsm_io_queue(io, &r), 0);
        struct lsm_io_req extra = r;
        assert_int_equal(lsm_io_queue(io, &extra), -EAGAIN);
        drain(io, ignore_result);
        if (w.result != -EBADF || z.result != -EBADF || r.result != 4096)
            fail_msg("%s: write %lld zero %lld read %lld", lsm_io_name(io), (long long)w.result,
                     (long long)z.result, (long long)r.result);
        lsm_io_destroy(io);
    }
    free(buf);
    lsm_file_close(f);
}

/* Polling: reap(min_done = 0) must eventually see a completion without
 * anyone waiting (io_uring with DEFER_TASKRUN only posts completions when
 * the ring is entered). */
static void test_poll(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "poll");
    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_AUTO, &f), 0);
    assert_int_equal(lsm_file_truncate(f, 1 << 20), 0);
    void *buf = NULL;
    assert_int_equal(posix_memalign(&buf, 4096, 65536), 0);
    for (unsigned k = 0; k < ARRAY_SIZE(all_kinds); k++) {
        struct lsm_io *io;
        struct lsm_io_config cfg = { .depth = 4 };
        assert_int_equal(lsm_io_create(all_kinds[k], &cfg, &io), 0);
        for (int submit_first = 0; submit_first < 2; submit_first++) {
            struct lsm_io_req rd = { .op = LSM_OP_READ, .file = f, .buf = buf, .buf_index = -1,
                                     .offset = 0, .len = 65536 };
            assert_int_equal(lsm_io_queue(io, &rd), 0);
            if (submit_first)
                assert_int_equal(lsm_io_submit(io), 0);
            struct lsm_io_req *done[4];
            int n = 0;
            uint64_t deadline = lsm_now_ns() + 10ull * 1000000000;
            while (n == 0 && lsm_now_ns() < deadline) {
                n = lsm_io_reap(io, 0, done, 4);   /* submits what is queued */
                assert_true(n >= 0);
            }
            if (n != 1)
                fail_msg("%s: polling never saw the completion", lsm_io_name(io));
            assert_ptr_equal(done[0], &rd);
            assert_int_equal(rd.result, 65536);
        }
        lsm_io_destroy(io);
    }
    free(buf);
    lsm_file_close(f);
}

static void test_blockdev(void **state)
{
    struct fixture *fx = *state;
    snprintf(fx->img, sizeof fx->img, "%s/disk.img", fx->dir);
    int fd = open(fx->img, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 64 << 20), 0);
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "losetup --find --show '%s' 2>/dev/null", fx->img);
    FILE *p = popen(cmd, "r");
    if (!p || !fgets(fx->loopdev, sizeof fx->loopdev, p) || strncmp(fx->loopdev, "/dev/", 5)) {
        fx->loopdev[0] = 0;
        if (p)
            pclose(p);
        printf("SKIP: cannot attach a loop device (not root, or no loop devices)\n");
        skip();
    }
    pclose(p);
    fx->loopdev[strcspn(fx->loopdev, "\n")] = 0;

    struct lsm_file *f;
    int r = lsm_file_open(fx->loopdev, LSM_FILE_READ | LSM_FILE_WRITE, LSM_DIRECT_AUTO, &f);
    if (r < 0)
        fail_msg("open %s: %s", fx->loopdev, lsm_last_error());
    assert_true(f->is_blockdev);
    assert_true(f->direct);
    assert_int_equal(f->size, 64 << 20);
    assert_true(is_pow2(f->offset_align) && f->offset_align >= 512);
    printf("%s: O_DIRECT alignment memory %u, offset %u\n", fx->loopdev, f->mem_align,
           f->offset_align);
    assert_int_equal(lsm_file_truncate(f, 128 << 20), -ENOSPC);
    assert_int_equal(lsm_file_truncate(f, 64 << 20), 0);

    void *buf = NULL;
    assert_int_equal(posix_memalign(&buf, 4096, 1 << 20), 0);
    zero_all_backends(f, 1 << 20, 1 << 20, buf);
    assert_true(f->zero_reads_zero);

    memset(buf, 0x5a, 1 << 20);
    assert_int_equal(pwrite(f->fd, buf, 1 << 20, 4 << 20), 1 << 20);
    assert_int_equal(lsm_file_zero(f, 4 << 20, 65536, true), 0);
    assert_int_equal(lsm_file_zero(f, (4 << 20) + 65536, 65536, false), 0);
    assert_int_equal(pread(f->fd, buf, 1 << 20, 4 << 20), 1 << 20);
    assert_true(all_zero(buf, 131072));
    assert_int_equal(((uint8_t *)buf)[131072], 0x5a);
    free(buf);
    lsm_file_close(f);
}

#ifdef HAVE_LIBAIO
#include <dlfcn.h>
#include <libaio.h>

/* io_submit interposed (this executable's definition wins over libaio's)
 * to make the kernel take only part of a batch: each call takes at most
 * aio_take iocbs and the call after a partial one says EAGAIN.  aio_take
 * < 0: pass through; 0: always EAGAIN. */
static int aio_take = -1;
static bool aio_refuse_next;
static unsigned aio_refusals;

int io_submit(io_context_t ctx, long nr, struct iocb **iocbs)
{
    static int (*real)(io_context_t, long, struct iocb **);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "io_submit");
    if (aio_take < 0)
        return real(ctx, nr, iocbs);
    if (aio_take == 0 || aio_refuse_next) {
        aio_refuse_next = false;
        aio_refusals++;
        return -EAGAIN;
    }
    aio_refuse_next = true;
    return real(ctx, MIN(nr, (long)aio_take), iocbs);
}

static void test_aio_partial_submit(void **state)
{
    struct fixture *fx = *state;
    char path[512];
    path_in(fx, path, sizeof path, "partial");
    struct lsm_file *f;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_AUTO, &f), 0);
    enum { N = 12, SZ = 8192 };
    uint8_t *buf = NULL;
    assert_int_equal(posix_memalign((void **)&buf, 4096, N * SZ), 0);

    for (int take = 3; take >= 0; take -= 3) {
        struct lsm_io *io;
        struct lsm_io_config cfg = { .depth = 8 };
        assert_int_equal(lsm_io_create(LSM_IO_AIO, &cfg, &io), 0);
        fill_pattern(buf, (uint64_t)take, N * SZ);
        struct lsm_io_req reqs[N];
        aio_take = take;
        for (int i = 0; i < N; i++) {
            reqs[i] = (struct lsm_io_req){ .op = LSM_OP_WRITE, .file = f, .buf = buf + i * SZ,
                                           .buf_index = -1, .offset = (uint64_t)i * SZ, .len = SZ };
            queue_or_reap(io, &reqs[i], check_ok);
            if (i % 4 == 3)
                assert_int_equal(lsm_io_submit(io), 0);
        }
        drain(io, check_ok);
        aio_take = -1;
        assert_true(aio_refusals > 0);   /* the interposer was in the path */
        aio_refusals = 0;
        for (int i = 0; i < N; i++)
            assert_int_equal(reqs[i].result, SZ);
        lsm_io_destroy(io);

        memset(buf, 0, N * SZ);
        assert_int_equal(pread(f->fd, buf, N * SZ, 0), N * SZ);
        assert_true(check_pattern(buf, (uint64_t)take, N * SZ));
    }
    free(buf);
    lsm_file_close(f);
}
#else
static void test_aio_partial_submit(void **state)
{
    (void)state;
    printf("SKIP: built without libaio\n");
    skip();
}
#endif

int main(void)
{
    srand(12345);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_bufpool),
        cmocka_unit_test_setup_teardown(test_uring, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_uring_fixed, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_aio, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_psync, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_psync_inline, setup_dir, teardown_dir),
        cmocka_unit_test(test_auto_fallback),
        cmocka_unit_test_setup_teardown(test_direct_alignment, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_buffered_fallback, setup_dir, teardown_dir),
        cmocka_unit_test(test_fault),
        cmocka_unit_test_setup_teardown(test_file_zero, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_offload, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_blockdev, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_other_thread, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_poll, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_aio_partial_submit, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
