/* Unit tests of the endpoint layer: the null endpoint, the loop (delivery
 * outside the submitting call, backlog past the queue depth, foreign
 * descriptors), the file endpoint (aligned and unaligned pieces, zero),
 * and the engine between endpoints. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends.h"
#include "copy.h"
#include "endpoint.h"
#include "error.h"
#include "util.h"

static char tmpdir[64];

struct done_count {
    unsigned calls;
    int last;
};

static void count_done(struct lsm_ep_cmd *cmd)
{
    struct done_count *d = cmd->user;
    d->calls++;
    d->last = cmd->result;
}

static struct lsm_loop *new_loop(enum lsm_io_kind k, unsigned depth)
{
    struct lsm_loop_config cfg = { .io_kind = k, .depth = depth };
    struct lsm_loop *l = NULL;
    assert_int_equal(lsm_loop_create(&cfg, &l), 0);
    return l;
}

static void test_null(void **state)
{
    (void)state;
    struct lsm_loop *l = new_loop(LSM_IO_PSYNC, 8);
    assert_int_equal(lsm_loop_run(l), 0);   /* nothing outstanding: returns at once */
    struct lsm_ep *ep = NULL;
    assert_int_equal(lsm_ep_null_create(l, 1 * MiB, &ep), 0);
    assert_int_equal(ep->caps.size, 1 * MiB);
    assert_true(ep->caps.reads_zero);
    assert_false(ep->caps.read_only);

    struct lsm_ep_extent e[4];
    assert_int_equal(lsm_ep_extents(ep, 4096, 8192, e, 4), 1);
    assert_int_equal(e[0].start, 4096);
    assert_int_equal(e[0].length, 8192);
    assert_int_equal(e[0].kind, LSM_EP_ZERO);

    static char buf[65536];
    memset(buf, 0xaa, sizeof(buf));
    struct done_count dc = { 0 };
    struct lsm_ep_cmd rd = { .op = LSM_EP_OP_READ, .buf = buf, .buf_index = -1, .offset = 0,
                             .len = sizeof(buf), .done = count_done, .user = &dc };
    assert_int_equal(lsm_ep_submit(ep, &rd), 0);
    assert_int_equal(dc.calls, 0);          /* never inside the submitting call */
    assert_int_equal(lsm_loop_outstanding(l), 1);
    assert_int_equal(lsm_loop_run(l), 1);
    assert_int_equal(dc.calls, 1);
    assert_int_equal(dc.last, 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0);

    struct lsm_ep_cmd wr = rd, z = rd;
    wr.op = LSM_EP_OP_WRITE;
    z.op = LSM_EP_OP_ZERO;
    z.flags = LSM_EP_FAST_ZERO;
    assert_int_equal(lsm_ep_submit(ep, &wr), 0);
    assert_int_equal(lsm_ep_submit(ep, &z), 0);
    assert_int_equal(lsm_loop_run(l), 2);
    assert_int_equal(dc.calls, 3);
    /* past the end: refused at once, no callback */
    struct lsm_ep_cmd bad = rd;
    bad.offset = 1 * MiB - 4096;
    assert_int_equal(lsm_ep_submit(ep, &bad), -EINVAL);
    assert_int_equal(lsm_loop_outstanding(l), 0);
    assert_int_equal(dc.calls, 3);
    lsm_error_clear();
    assert_int_equal(lsm_ep_flush(ep), 0);
    assert_int_equal(lsm_ep_finish(ep), 0);
    lsm_ep_close(ep);
    lsm_loop_destroy(l);
}

/* The file endpoint over each backend: more commands than the queue depth
 * (the backlog), an unaligned tail, zero, and reading it all back. */
static void file_roundtrip(enum lsm_io_kind kind)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/f.raw", tmpdir);
    unlink(path);
    const uint64_t size = 32 * 65536 + 100;   /* not a multiple of any alignment */
    struct lsm_file *f = NULL;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_AUTO, &f), 0);
    assert_int_equal(lsm_file_truncate(f, size), 0);
    struct lsm_loop *l = new_loop(kind, 4);
    struct lsm_ep *ep = NULL;
    assert_int_equal(lsm_ep_file_create(l, f, size, LSM_EP_FILE_READS_ZERO, &ep), 0);
    assert_true(ep->caps.reads_zero);
    assert_true(is_pow2(ep->caps.granule));
    assert_true(ep->caps.hole_min >= ep->caps.granule);

    uint8_t *buf = NULL;
    assert_int_equal(posix_memalign((void **)&buf, 4096, 33 * 65536), 0);
    for (uint64_t i = 0; i < size; i++)
        buf[i] = (uint8_t)(i * 13 + 7);
    static struct lsm_ep_cmd cmds[33];
    struct done_count dc = { 0 };
    unsigned n = 0;
    for (uint64_t off = 0; off < size; off += 65536, n++) {
        cmds[n] = (struct lsm_ep_cmd){ .op = LSM_EP_OP_WRITE, .buf = buf + off, .buf_index = -1,
                                       .offset = off, .len = MIN(65536, size - off),
                                       .done = count_done, .user = &dc };
        assert_int_equal(lsm_ep_submit(ep, &cmds[n]), 0);
    }
    assert_int_equal(n, 33);
    while (lsm_loop_outstanding(l))
        assert_true(lsm_loop_run(l) > 0);
    assert_int_equal(dc.calls, 33);
    assert_int_equal(dc.last, 0);
    /* zero one 64K block in the middle */
    struct lsm_ep_cmd z = { .op = LSM_EP_OP_ZERO, .flags = LSM_EP_MAY_TRIM, .offset = 5 * 65536,
                            .len = 65536 };
    assert_int_equal(lsm_ep_run(ep, &z), 0);
    assert_int_equal(lsm_ep_flush(ep), 0);

    uint8_t *back = NULL;
    assert_int_equal(posix_memalign((void **)&back, 4096, 33 * 65536), 0);
    memset(back, 0xee, 33 * 65536);
    struct lsm_ep_cmd rd = { .op = LSM_EP_OP_READ, .buf = back, .buf_index = -1, .offset = 0,
                             .len = size };
    assert_int_equal(lsm_ep_run(ep, &rd), 0);
    for (uint64_t i = 0; i < size; i++) {
        uint8_t want = (i >= 5 * 65536 && i < 6 * 65536) ? 0 : (uint8_t)(i * 13 + 7);
        if (back[i] != want)
            fail_msg("byte %llu: %u, want %u", (unsigned long long)i, back[i], want);
    }
    lsm_ep_close(ep);
    lsm_loop_destroy(l);
    lsm_file_close(f);
    free(buf);
    free(back);
    unlink(path);
}

static void test_file_psync(void **state)
{
    (void)state;
    file_roundtrip(LSM_IO_PSYNC);
}

static void test_file_auto(void **state)
{
    (void)state;
    file_roundtrip(LSM_IO_AUTO);
}

static void test_read_only(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/ro.raw", tmpdir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 65536), 0);
    close(fd);
    struct lsm_file *f = NULL;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_NEVER, &f), 0);
    struct lsm_loop *l = new_loop(LSM_IO_PSYNC, 8);
    struct lsm_ep *ep = NULL;
    assert_int_equal(lsm_ep_file_create(l, f, 65536, LSM_EP_FILE_READ_ONLY, &ep), 0);
    static char buf[4096];
    struct done_count dc = { 0 };
    struct lsm_ep_cmd wr = { .op = LSM_EP_OP_WRITE, .buf = buf, .buf_index = -1, .len = 4096,
                             .done = count_done, .user = &dc };
    assert_int_equal(lsm_ep_submit(ep, &wr), -EROFS);
    assert_non_null(strstr(lsm_last_error(), "read-only"));
    assert_int_equal(dc.calls, 0);
    assert_int_equal(lsm_loop_outstanding(l), 0);
    lsm_error_clear();
    lsm_ep_close(ep);
    lsm_loop_destroy(l);
    lsm_file_close(f);
    unlink(path);
}

/* A foreign endpoint: commands complete when a byte arrives on a pipe, as
 * an NBD connection's replies would.  The loop must poll it. */
struct pipe_ep {
    struct lsm_ep ep;
    int rfd, wfd;
    struct lsm_ep_cmd *pending;
};

static int pipe_read(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct pipe_ep *pe = ep->priv;
    assert_null(pe->pending);
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    pe->pending = cmd;
    return 0;
}

static int pipe_poll_fd(struct lsm_ep *ep, short *events)
{
    struct pipe_ep *pe = ep->priv;
    if (!pe->pending)
        return -1;
    *events = POLLIN;
    return pe->rfd;
}

static int pipe_notify(struct lsm_ep *ep, short revents)
{
    struct pipe_ep *pe = ep->priv;
    char c;
    if (!(revents & POLLIN) || read(pe->rfd, &c, 1) != 1 || !pe->pending)
        return 0;
    struct lsm_ep_cmd *cmd = pe->pending;
    pe->pending = NULL;
    memset(cmd->buf, c, cmd->len);
    lsm_loop_cmd_put(ep->loop, cmd, 0);
    return 0;
}

static const struct lsm_ep_ops pipe_ops = {
    .name = "pipe", .read = pipe_read, .poll_fd = pipe_poll_fd, .notify = pipe_notify,
};

static void test_foreign_fd(void **state)
{
    (void)state;
    struct lsm_loop *l = new_loop(LSM_IO_AUTO, 8);
    int p[2];
    assert_int_equal(pipe(p), 0);
    struct pipe_ep pe = { .ep = { .ops = &pipe_ops, .name = "pipe", .caps = { .size = 4096 } },
                          .rfd = p[0], .wfd = p[1] };
    pe.ep.priv = &pe;
    pe.ep.loop = l;
    assert_int_equal(lsm_loop_add_fd(l, &pe.ep), 0);
    static char buf[4096];
    struct done_count dc = { 0 };
    struct lsm_ep_cmd rd = { .op = LSM_EP_OP_READ, .buf = buf, .buf_index = -1, .len = 4096,
                             .done = count_done, .user = &dc };
    assert_int_equal(lsm_ep_submit(&pe.ep, &rd), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_int_equal(lsm_loop_run(l), 1);
    assert_int_equal(dc.calls, 1);
    assert_int_equal(buf[4095], 'x');

    /* Together with local I/O on the same loop: both are delivered. */
    struct lsm_ep *nul = NULL;
    char path[128];
    snprintf(path, sizeof(path), "%s/mix.raw", tmpdir);
    struct lsm_file *f = NULL;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_NEVER, &f), 0);
    assert_int_equal(lsm_file_truncate(f, 65536), 0);
    assert_int_equal(lsm_ep_file_create(l, f, 65536, 0, &nul), 0);
    static char wbuf[4096];
    struct lsm_ep_cmd wr = { .op = LSM_EP_OP_WRITE, .buf = wbuf, .buf_index = -1, .len = 4096,
                             .done = count_done, .user = &dc };
    assert_int_equal(lsm_ep_submit(&pe.ep, &rd), 0);
    assert_int_equal(lsm_ep_submit(nul, &wr), 0);
    assert_int_equal(write(p[1], "y", 1), 1);
    while (lsm_loop_outstanding(l))
        assert_true(lsm_loop_run(l) > 0);
    assert_int_equal(dc.calls, 3);
    assert_int_equal(buf[0], 'y');
    lsm_loop_remove_fd(l, &pe.ep);
    lsm_ep_close(nul);
    lsm_loop_destroy(l);
    lsm_file_close(f);
    close(p[0]);
    close(p[1]);
    unlink(path);
}

static int count_rec(void *opaque, uint64_t start, uint64_t len)
{
    uint64_t *sum = opaque;
    *sum += len;
    return 0;
}

/* The engine between endpoints: null to null is all skipped (a zero
 * source onto a destination that reads zeroes); a file to null reads all
 * its data. */
static void test_engine_null(void **state)
{
    (void)state;
    struct lsm_loop *l = new_loop(LSM_IO_AUTO, 32);
    struct lsm_ep *src = NULL, *dst = NULL;
    assert_int_equal(lsm_ep_null_create(l, 64 * MiB, &src), 0);
    assert_int_equal(lsm_ep_null_create(l, 64 * MiB, &dst), 0);
    uint64_t recorded = 0;
    struct lsm_engine_params p = { .record = count_rec, .opaque = &recorded };
    struct lsm_engine_stats st;
    assert_int_equal(lsm_engine_copy(src, dst, &p, &st), 0);
    assert_int_equal(st.bytes_skipped, 64 * MiB);
    assert_int_equal(st.bytes_total, 0);
    assert_int_equal(recorded, 64 * MiB);
    lsm_ep_close(src);

    /* a raw file (all data) onto null */
    char path[128];
    snprintf(path, sizeof(path), "%s/e.raw", tmpdir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(fd >= 0);
    static char blk[65536];
    memset(blk, 0x5a, sizeof(blk));
    for (int i = 0; i < 64; i++)
        assert_int_equal(write(fd, blk, sizeof(blk)), (ssize_t)sizeof(blk));
    close(fd);
    struct lsm_file *f = NULL;
    assert_int_equal(lsm_file_open(path, LSM_FILE_READ, LSM_DIRECT_AUTO, &f), 0);
    assert_int_equal(lsm_ep_file_create(l, f, 64 * 65536, LSM_EP_FILE_READ_ONLY, &src), 0);
    recorded = 0;
    assert_int_equal(lsm_engine_copy(src, dst, &p, &st), 0);
    assert_int_equal(st.bytes_total, 64 * 65536);
    assert_int_equal(st.bytes_read, 64 * 65536);
    assert_int_equal(st.bytes_written, 64 * 65536);
    assert_int_equal(recorded, 64 * 65536);
    lsm_ep_close(src);
    lsm_ep_close(dst);
    lsm_loop_destroy(l);
    lsm_file_close(f);
    unlink(path);
}

/* A bad request size is refused before anything is read. */
static void test_engine_params(void **state)
{
    (void)state;
    struct lsm_loop *l = new_loop(LSM_IO_PSYNC, 8);
    struct lsm_ep *src = NULL, *dst = NULL;
    assert_int_equal(lsm_ep_null_create(l, MiB, &src), 0);
    assert_int_equal(lsm_ep_null_create(l, MiB, &dst), 0);
    struct lsm_engine_params p = { .request_size = 3000 };
    struct lsm_engine_stats st;
    assert_int_equal(lsm_engine_copy(src, dst, &p, &st), -EINVAL);
    lsm_error_clear();
    p.request_size = 0;
    p.size = 2 * MiB;   /* more than the source has */
    assert_int_equal(lsm_engine_copy(src, dst, &p, &st), -EINVAL);
    lsm_error_clear();
    lsm_ep_close(src);
    lsm_ep_close(dst);
    lsm_loop_destroy(l);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/var/tmp/test-endpoint.XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null),
        cmocka_unit_test(test_file_psync),
        cmocka_unit_test(test_file_auto),
        cmocka_unit_test(test_read_only),
        cmocka_unit_test(test_foreign_fd),
        cmocka_unit_test(test_engine_null),
        cmocka_unit_test(test_engine_params),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        r = r ? r : 1;
    return r;
}
