/* An example lsm-sync offload plugin: lsm-offload-example.so.
 *
 * It "offloads" by copying with pread/pwrite in the plugin itself, which
 * is no offload at all: it shows the shape of a backend (probe, limits,
 * copy returning what is done, cancel, close, the version handshake) and
 * gives the test suite a plugin whose behaviour it can steer:
 *
 *   LSM_OFFLOAD_EXAMPLE_MAX=N      limits.max_bytes = N
 *   LSM_OFFLOAD_EXAMPLE_FAIL_AT=O  a copy reaching destination offset O
 *                                  stops there and reports a short copy
 *                                  (after writing garbage beyond it, as a
 *                                  half-failed array copy might)
 *   LSM_OFFLOAD_EXAMPLE_REFUSE=1   probe says "not for this pair"
 *   LSM_OFFLOAD_EXAMPLE_ABI=V      claim interface version V
 *
 * Build against the installed header (see docs/offload.md):
 *
 *   cc -shared -fPIC -O2 -Wall -o lsm-offload-example.so offload-example.c
 *   install -m 644 lsm-offload-example.so /usr/lib/x86_64-linux-gnu/lsm-sync/
 *   lsm-sync copy --offload=example SRC DST
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lsm-offload.h>

#define BUF_SIZE 65536

struct example {
    int sfd, dfd;
    char *buf;                 /* aligned: the descriptors may be O_DIRECT */
    uint64_t fail_at;          /* UINT64_MAX: never */
    volatile sig_atomic_t cancel;
};

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    unsigned long long n = strtoull(v, &end, 0);
    return *end ? dflt : (uint64_t)n;
}

static int ex_probe(const struct lsm_offload_endpoint *src, const struct lsm_offload_endpoint *dst,
                    void **handle, struct lsm_offload_limits *limits, char *msg, size_t msglen)
{
    if (env_u64("LSM_OFFLOAD_EXAMPLE_REFUSE", 0)) {
        snprintf(msg, msglen, "the example plugin was told to refuse %s -> %s", src->path,
                 dst->path);
        return 0;
    }
    struct example *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->sfd = src->fd;
    x->dfd = dst->fd;
    size_t align = 4096;
    if (src->direct_align > align)
        align = src->direct_align;
    if (dst->direct_align > align)
        align = dst->direct_align;
    if (posix_memalign((void **)&x->buf, align, BUF_SIZE)) {
        free(x);
        return -ENOMEM;
    }
    x->fail_at = env_u64("LSM_OFFLOAD_EXAMPLE_FAIL_AT", UINT64_MAX);
    limits->max_bytes = env_u64("LSM_OFFLOAD_EXAMPLE_MAX", 0);
    /* O_DIRECT descriptors need aligned offsets and lengths too */
    uint32_t a = src->direct_align > dst->direct_align ? src->direct_align : dst->direct_align;
    limits->alignment = a > 512 ? a : 512;
    limits->timeout_ms = 10000;
    *handle = x;
    return 1;
}

static int64_t ex_copy(void *h, uint64_t src_off, uint64_t dst_off, uint64_t len, char *msg,
                       size_t msglen)
{
    struct example *x = h;
    char *buf = x->buf;
    uint64_t done = 0;
    while (done < len) {
        if (x->cancel) {
            snprintf(msg, msglen, "cancelled");
            return (int64_t)done;
        }
        if (dst_off + done >= x->fail_at) {
            /* Leave garbage after what we report, as a failing array may. */
            memset(buf, 0xee, BUF_SIZE);
            size_t g = len - done < BUF_SIZE ? (size_t)(len - done) : BUF_SIZE;
            if (pwrite(x->dfd, buf, g, (off_t)(dst_off + done)) < 0)
                (void)0;
            snprintf(msg, msglen, "the example plugin was told to fail at offset %llu",
                     (unsigned long long)x->fail_at);
            return (int64_t)done;
        }
        size_t want = len - done < BUF_SIZE ? (size_t)(len - done) : BUF_SIZE;
        if (x->fail_at != UINT64_MAX && dst_off + done < x->fail_at &&
            x->fail_at - (dst_off + done) < want)
            want = (size_t)(x->fail_at - (dst_off + done));
        ssize_t n = pread(x->sfd, buf, want, (off_t)(src_off + done));
        if (n < 0) {
            snprintf(msg, msglen, "read: %s", strerror(errno));
            return done ? (int64_t)done : -errno;
        }
        if (n == 0) {
            snprintf(msg, msglen, "source ends at %llu", (unsigned long long)(src_off + done));
            return (int64_t)done;
        }
        ssize_t w = pwrite(x->dfd, buf, (size_t)n, (off_t)(dst_off + done));
        if (w != n) {
            snprintf(msg, msglen, "write: %s", w < 0 ? strerror(errno) : "short write");
            return (int64_t)done;
        }
        done += (uint64_t)n;
    }
    return (int64_t)done;
}

static void ex_cancel(void *h)
{
    ((struct example *)h)->cancel = 1;
}

static void ex_close(void *h)
{
    struct example *x = h;
    free(x->buf);
    free(x);
}

static struct lsm_offload_ops example_ops = {
    .abi_version = LSM_OFFLOAD_ABI_VERSION,
    .size = sizeof(struct lsm_offload_ops),
    .name = "example",
    .description = "example plugin: copies with pread/pwrite (for tests and as a template)",
    .probe = ex_probe,
    .copy = ex_copy,
    .cancel = ex_cancel,
    .close = ex_close,
};

__attribute__((visibility("default")))
const struct lsm_offload_ops *lsm_offload_init(uint32_t abi_version)
{
    if (abi_version != LSM_OFFLOAD_ABI_VERSION)
        return NULL;
    example_ops.abi_version = (uint32_t)env_u64("LSM_OFFLOAD_EXAMPLE_ABI", LSM_OFFLOAD_ABI_VERSION);
    return &example_ops;
}
