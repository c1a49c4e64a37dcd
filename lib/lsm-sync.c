/* The public interface of liblsm-sync (include/lsm-sync.h) over the job
 * API: a transfer is a job (engine/job.h) made by lsm_copy_job_create or
 * lsm_sync_job_create, under the limiter of its context.  Nothing of the
 * internal structures reaches the caller: options are kept here and turned
 * into struct lsm_copy_opts / struct lsm_sync_opts at start, status is
 * copied member by member into the caller's versioned structure.
 *
 * Library layer: never prints. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <lsm-sync.h>

#include "budget.h"
#include "checksum.h"
#include "cleanup.h"
#include "config.h"
#include "copy-job.h"
#include "error.h"
#include "fileio.h"
#include "image.h"
#include "job.h"
#include "limiter.h"
#include "sync.h"

_Static_assert(LSM_CHECKSUM_HEX_SIZE >= LSM_BLKHASH_HEX_LEN, "checksum text size");
_Static_assert(sizeof(((struct lsm_transfer_status *)0)->phase) >= LSM_JOB_PHASE_MAX,
               "phase size");

struct lsm_ctx {
    pthread_mutex_t mu;
    unsigned refs;                 /* the caller's and one per transfer */
    struct lsm_limiter *limiter;   /* parent of every transfer's job */
};

struct lsm_copy_options {
    uint64_t bandwidth;
    unsigned requests;
    uint64_t request_size, buffer_size;
    enum lsm_direct_mode direct;
    bool existing, target_is_zero, force_share;
    uint32_t cluster_size;
    char *backing;
    enum lsm_format backing_fmt;
    unsigned parallel;
    char *journal;
    bool resume;
};

struct lsm_transfer {
    struct lsm_job *job;
    struct lsm_ctx *ctx;
    int jobfile_fd;                /* lsm_sync_start_json: the memory file read by the job */
    pthread_mutex_t mu;
    bool stopped;                  /* the job returned: result and error below are final */
    int result;
    char error[LSM_JOB_MESSAGE_MAX];
};

/* Transfers alive in the process (the memory budget is the process's). */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned live_transfers;

const char *lsm_library_version(void)
{
    return LSM_VERSION;
}

/* ---- Context ---- */

int lsm_ctx_new(struct lsm_ctx **out)
{
    if (!out)
        return lsm_error(-EINVAL, "lsm_ctx_new: no place for the context");
    *out = NULL;
    struct lsm_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return lsm_error(-ENOMEM, "out of memory");
    int r = lsm_limiter_create(0, NULL, &ctx->limiter);
    if (r < 0) {
        free(ctx);
        return r;
    }
    pthread_mutex_init(&ctx->mu, NULL);
    ctx->refs = 1;
    *out = ctx;
    return 0;
}

static void ctx_unref(struct lsm_ctx *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    bool last = --ctx->refs == 0;
    pthread_mutex_unlock(&ctx->mu);
    if (!last)
        return;
    lsm_limiter_free(ctx->limiter);
    pthread_mutex_destroy(&ctx->mu);
    free(ctx);
}

void lsm_ctx_free(struct lsm_ctx *ctx)
{
    if (ctx)
        ctx_unref(ctx);
}

int lsm_ctx_set_bandwidth(struct lsm_ctx *ctx, uint64_t bytes_per_s)
{
    if (!ctx)
        return lsm_error(-EINVAL, "lsm_ctx_set_bandwidth: no context");
    lsm_limiter_set_rate(ctx->limiter, bytes_per_s);
    return 0;
}

int lsm_ctx_set_memory_limit(struct lsm_ctx *ctx, uint64_t bytes)
{
    if (!ctx)
        return lsm_error(-EINVAL, "lsm_ctx_set_memory_limit: no context");
    int r = 0;
    pthread_mutex_lock(&live_mu);
    if (live_transfers > 0)
        r = lsm_error(-EBUSY, "the memory limit is the process's: it cannot change while "
                              "%u transfer(s) are alive", live_transfers);
    else
        lsm_budget_init(bytes);
    pthread_mutex_unlock(&live_mu);
    return r;
}

/* ---- Options ---- */

int lsm_copy_options_new(struct lsm_copy_options **out)
{
    if (!out)
        return lsm_error(-EINVAL, "lsm_copy_options_new: no place for the options");
    *out = calloc(1, sizeof **out);
    if (!*out)
        return lsm_error(-ENOMEM, "out of memory");
    return 0;
}

void lsm_copy_options_free(struct lsm_copy_options *o)
{
    if (!o)
        return;
    free(o->backing);
    free(o->journal);
    free(o);
}

#define CHECK_OPTS(o, fn)                                                    \
    do {                                                                     \
        if (!(o))                                                            \
            return lsm_error(-EINVAL, "%s: no options object", fn);          \
    } while (0)

int lsm_copy_options_set_bandwidth(struct lsm_copy_options *o, uint64_t bytes_per_s)
{
    CHECK_OPTS(o, __func__);
    o->bandwidth = bytes_per_s;
    return 0;
}

int lsm_copy_options_set_requests(struct lsm_copy_options *o, unsigned n)
{
    CHECK_OPTS(o, __func__);
    if (n > 1024)
        return lsm_error(-EINVAL, "requests in flight must be between 1 and 1024 (0: the default), not %u", n);
    o->requests = n;
    return 0;
}

int lsm_copy_options_set_request_size(struct lsm_copy_options *o, uint64_t bytes)
{
    CHECK_OPTS(o, __func__);
    if (bytes && ((bytes & (bytes - 1)) || bytes < 4096 || bytes > (64ULL << 20)))
        return lsm_error(-EINVAL, "the request size must be a power of two from 4 KiB to 64 MiB "
                                  "(0: the default), not %llu", (unsigned long long)bytes);
    o->request_size = bytes;
    return 0;
}

int lsm_copy_options_set_buffer_size(struct lsm_copy_options *o, uint64_t bytes)
{
    CHECK_OPTS(o, __func__);
    if (bytes && bytes < 4096)
        return lsm_error(-EINVAL, "the buffer size must be at least 4 KiB (0: the default), not %llu",
                         (unsigned long long)bytes);
    o->buffer_size = bytes;
    return 0;
}

int lsm_copy_options_set_direct(struct lsm_copy_options *o, const char *mode)
{
    CHECK_OPTS(o, __func__);
    enum lsm_direct_mode d;
    if (!mode || lsm_direct_parse(mode, &d) < 0)
        return lsm_error(-EINVAL, "direct mode '%s': auto, always or never", mode ? mode : "(null)");
    o->direct = d;
    return 0;
}

int lsm_copy_options_set_existing(struct lsm_copy_options *o, int existing, int target_is_zero)
{
    CHECK_OPTS(o, __func__);
    if (target_is_zero && !existing)
        return lsm_error(-EINVAL, "target_is_zero is for an existing destination");
    o->existing = existing != 0;
    o->target_is_zero = target_is_zero != 0;
    return 0;
}

int lsm_copy_options_set_force_share(struct lsm_copy_options *o, int force_share)
{
    CHECK_OPTS(o, __func__);
    o->force_share = force_share != 0;
    return 0;
}

int lsm_copy_options_set_cluster_size(struct lsm_copy_options *o, uint32_t bytes)
{
    CHECK_OPTS(o, __func__);
    if (bytes && ((bytes & (bytes - 1)) || bytes < 512 || bytes > (2u << 20)))
        return lsm_error(-EINVAL, "the cluster size must be a power of two from 512 to 2 MiB "
                                  "(0: the default), not %u", bytes);
    o->cluster_size = bytes;
    return 0;
}

int lsm_copy_options_set_backing(struct lsm_copy_options *o, const char *backing, const char *fmt)
{
    CHECK_OPTS(o, __func__);
    if (!backing) {
        free(o->backing);
        o->backing = NULL;
        o->backing_fmt = LSM_FMT_AUTO;
        return 0;
    }
    enum lsm_format f;
    if (!fmt || lsm_format_parse(fmt, &f) < 0)
        return lsm_error(-EINVAL, "the backing file needs its format: raw or qcow2, not '%s'",
                         fmt ? fmt : "(null)");
    char *b = strdup(backing);
    if (!b)
        return lsm_error(-ENOMEM, "out of memory");
    free(o->backing);
    o->backing = b;
    o->backing_fmt = f;
    return 0;
}

int lsm_copy_options_set_parallel(struct lsm_copy_options *o, unsigned n)
{
    CHECK_OPTS(o, __func__);
    if (n > LSM_SYNC_MAX_PARALLEL)
        return lsm_error(-EINVAL, "parallel volumes must be between 1 and %d (0: the default), not %u",
                         LSM_SYNC_MAX_PARALLEL, n);
    o->parallel = n;
    return 0;
}

int lsm_copy_options_set_journal(struct lsm_copy_options *o, const char *journal, int resume)
{
    CHECK_OPTS(o, __func__);
    char *j = NULL;
    if (journal && !*journal)
        return lsm_error(-EINVAL, "the journal must be named (NULL: none)");
    if (journal && !(j = strdup(journal)))
        return lsm_error(-ENOMEM, "out of memory");
    if (!journal && resume)
        return lsm_error(-EINVAL, "resume needs a journal");
    free(o->journal);
    o->journal = j;
    o->resume = resume != 0;
    return 0;
}

/* ---- Transfers ---- */

static int parse_fmt(const char *what, const char *name, enum lsm_format dflt, bool auto_ok,
                     enum lsm_format *out)
{
    if (!name || (auto_ok && !strcmp(name, "auto"))) {
        *out = dflt;
        return 0;
    }
    if (lsm_format_parse(name, out) < 0)
        return lsm_error(-EINVAL, "%s format '%s': raw or qcow2%s", what, name,
                         auto_ok ? " (or auto)" : "");
    return 0;
}

/* A transfer around a created (not started) job: started here.  Takes a
 * reference on ctx and counts the transfer alive. */
static int transfer_start(struct lsm_ctx *ctx, struct lsm_job *job, int jobfile_fd,
                          struct lsm_transfer **out)
{
    struct lsm_transfer *t = calloc(1, sizeof *t);
    if (!t) {
        lsm_job_free(job);
        if (jobfile_fd >= 0)
            close(jobfile_fd);
        return lsm_error(-ENOMEM, "out of memory");
    }
    t->job = job;
    t->ctx = ctx;
    t->jobfile_fd = jobfile_fd;
    pthread_mutex_init(&t->mu, NULL);
    pthread_mutex_lock(&ctx->mu);
    ctx->refs++;
    pthread_mutex_unlock(&ctx->mu);
    pthread_mutex_lock(&live_mu);
    live_transfers++;
    pthread_mutex_unlock(&live_mu);
    int r = lsm_job_start(job);
    if (r < 0) {
        lsm_transfer_free(t);
        return lsm_error(r, "cannot start the transfer's thread");
    }
    *out = t;
    return 0;
}

static void fill_job_opts(struct lsm_ctx *ctx, const struct lsm_copy_options *o, const char *kind,
                          struct lsm_job_opts *jo)
{
    *jo = (struct lsm_job_opts){
        .kind = kind,
        .rate_limit = o ? o->bandwidth : 0,
        .parent = ctx->limiter,
    };
}

int lsm_copy_start(struct lsm_ctx *ctx, const char *src, const char *src_fmt, const char *dst,
                   const char *dst_fmt, const struct lsm_copy_options *o, struct lsm_transfer **out)
{
    if (out)
        *out = NULL;
    if (!ctx || !out)
        return lsm_error(-EINVAL, "lsm_copy_start: no context or no place for the transfer");
    if (!src || !*src || !dst || !*dst)
        return lsm_error(-EINVAL, "lsm_copy_start: the source and the destination must be named");
    struct lsm_copy_opts co = { .src_path = src, .dst_path = dst };
    int r;
    if ((r = parse_fmt("source", src_fmt, LSM_FMT_AUTO, true, &co.src_fmt)) < 0 ||
        (r = parse_fmt("destination", dst_fmt, LSM_FMT_RAW, false, &co.dst_fmt)) < 0)
        return r;
    if (o) {
        co.requests = o->requests;
        co.request_size = o->request_size;
        co.buffer_size = o->buffer_size;
        co.direct = o->direct;
        co.no_create = o->existing;
        co.target_is_zero = o->target_is_zero;
        co.force_share = o->force_share;
        co.cluster_size = o->cluster_size;
        co.backing = o->backing;
        co.backing_fmt = o->backing_fmt;
        co.journal = o->journal;
        co.resume = o->resume;
    }
    struct lsm_job_opts jo;
    fill_job_opts(ctx, o, "copy", &jo);
    struct lsm_job *job;
    if ((r = lsm_copy_job_create(&co, &jo, &job)) < 0)
        return r;
    return transfer_start(ctx, job, -1, out);
}

static int sync_start(struct lsm_ctx *ctx, const char *jobfile, int jobfile_fd, int type,
                      const struct lsm_copy_options *o, struct lsm_transfer **out)
{
    struct lsm_sync_opts so = { .jobfile = jobfile };
    switch (type) {
    case LSM_SYNC_TYPE_ALL: so.type = LSM_SYNC_ALL; break;
    case LSM_SYNC_TYPE_INTERNAL: so.type = LSM_SYNC_INTERNAL; break;
    case LSM_SYNC_TYPE_LEAF: so.type = LSM_SYNC_LEAF; break;
    default:
        if (jobfile_fd >= 0)
            close(jobfile_fd);
        return lsm_error(-EINVAL, "sync type %d: LSM_SYNC_TYPE_ALL, _INTERNAL or _LEAF", type);
    }
    if (o) {
        so.parallel = o->parallel;
        so.copy.requests = o->requests;
        so.copy.request_size = o->request_size;
        so.copy.buffer_size = o->buffer_size;
        so.copy.direct = o->direct;
        so.journal = o->journal;
        so.resume = o->resume;
    }
    struct lsm_job_opts jo;
    fill_job_opts(ctx, o, "sync", &jo);
    struct lsm_job *job;
    int r = lsm_sync_job_create(&so, &jo, &job);
    if (r < 0) {
        if (jobfile_fd >= 0)
            close(jobfile_fd);
        return r;
    }
    return transfer_start(ctx, job, jobfile_fd, out);
}

int lsm_sync_start_file(struct lsm_ctx *ctx, const char *jobfile, int type,
                        const struct lsm_copy_options *o, struct lsm_transfer **out)
{
    if (out)
        *out = NULL;
    if (!ctx || !out)
        return lsm_error(-EINVAL, "lsm_sync_start_file: no context or no place for the transfer");
    if (!jobfile || !*jobfile)
        return lsm_error(-EINVAL, "lsm_sync_start_file: no job file");
    /* A job file that cannot be read fails here with its errno (-ENOENT,
     * -EACCES), not later as one that does not parse. */
    if (access(jobfile, R_OK) < 0)
        return lsm_error_errno(-errno, "cannot read job file %s", jobfile);
    return sync_start(ctx, jobfile, -1, type, o, out);
}

int lsm_sync_start_json(struct lsm_ctx *ctx, const char *json, int type,
                        const struct lsm_copy_options *o, struct lsm_transfer **out)
{
    if (out)
        *out = NULL;
    if (!ctx || !out)
        return lsm_error(-EINVAL, "lsm_sync_start_json: no context or no place for the transfer");
    if (!json)
        return lsm_error(-EINVAL, "lsm_sync_start_json: no JSON text");
    /* The job reads its job file on its own thread: give it one in memory
     * (nothing on disk to leave behind), open until the transfer is freed. */
    _cleanup_close_ int fd = memfd_create("lsm-sync-job", MFD_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot make the job file in memory");
    size_t len = strlen(json);
    ssize_t w = lsm_pwrite_all(fd, json, len, 0);
    if (w < 0 || (size_t)w != len)
        return lsm_error_errno(w < 0 ? (int)w : -EIO, "cannot write the job file in memory");
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return sync_start(ctx, path, LSM_STEAL_FD(fd), type, o, out);
}

/* Once the job returned: its result and message, kept in t. */
static bool settle(struct lsm_transfer *t)
{
    pthread_mutex_lock(&t->mu);
    bool stopped = t->stopped;
    pthread_mutex_unlock(&t->mu);
    if (stopped)
        return true;
    if (lsm_job_wait(t->job, 0) != 0)
        return false;
    struct lsm_job_status js;
    lsm_job_get_status(t->job, &js);
    pthread_mutex_lock(&t->mu);
    if (!t->stopped) {
        t->result = lsm_job_result(t->job);
        if (js.state == LSM_JOB_ABORTED && t->result < 0)
            t->result = -ECANCELED;
        if (t->result < 0) {
            snprintf(t->error, sizeof t->error, "%s",
                     js.message[0] ? js.message
                                   : (t->result == -ECANCELED ? "cancelled" : strerror(-t->result)));
        }
        t->stopped = true;
    }
    pthread_mutex_unlock(&t->mu);
    return true;
}

int lsm_transfer_get_status(struct lsm_transfer *t, struct lsm_transfer_status *st)
{
    if (!t || !st)
        return lsm_error(-EINVAL, "lsm_transfer_get_status: no transfer or no status");
    size_t size = st->size;
    if (size < LSM_TRANSFER_STATUS_SIZE_0_1)
        return lsm_error(-EINVAL, "lsm_transfer_get_status: status size %zu is less than version "
                                  "0.1's %zu (set size = sizeof(struct lsm_transfer_status))",
                         size, (size_t)LSM_TRANSFER_STATUS_SIZE_0_1);
    struct lsm_job_status js;
    lsm_job_get_status(t->job, &js);
    struct lsm_transfer_status s = { 0 };
    switch (js.state) {
    case LSM_JOB_INIT:
    case LSM_JOB_RUNNING: s.state = LSM_TRANSFER_RUNNING; break;
    case LSM_JOB_ABORTING: s.state = LSM_TRANSFER_CANCELLING; break;
    case LSM_JOB_FINISHED: s.state = LSM_TRANSFER_FINISHED; break;
    case LSM_JOB_ABORTED: s.state = LSM_TRANSFER_CANCELLED; break;
    case LSM_JOB_FAILED: s.state = LSM_TRANSFER_FAILED; break;
    }
    s.bytes_total = js.progress.bytes_total;
    s.bytes_done = js.progress.bytes_done;
    s.bytes_written = js.progress.bytes_written;
    s.bytes_zeroed = js.progress.bytes_zeroed;
    s.bytes_skipped = js.progress.bytes_skipped;
    s.bandwidth = js.rate_limit;
    s.percent = js.percent;
    s.elapsed_s = js.elapsed_s;
    s.rate = js.rate;
    s.eta_s = js.eta_s;
    s.error = js.state == LSM_JOB_FAILED ? js.error : 0;
    snprintf(s.phase, sizeof s.phase, "%s", js.phase);
    size_t n = size < sizeof s ? size : sizeof s;
    s.size = (uint32_t)n;
    memcpy(st, &s, n);
    if (size > n)
        memset((char *)st + n, 0, size - n);
    return 0;
}

int lsm_transfer_set_bandwidth(struct lsm_transfer *t, uint64_t bytes_per_s)
{
    if (!t)
        return lsm_error(-EINVAL, "lsm_transfer_set_bandwidth: no transfer");
    return lsm_job_set_rate_limit(t->job, bytes_per_s);
}

void lsm_transfer_cancel(struct lsm_transfer *t)
{
    if (t)
        lsm_job_cancel(t->job);
}

int lsm_transfer_wait(struct lsm_transfer *t, int timeout_ms)
{
    if (!t)
        return lsm_error(-EINVAL, "lsm_transfer_wait: no transfer");
    int r = lsm_job_wait(t->job, timeout_ms);
    if (r == -ETIMEDOUT)
        return lsm_error(r, "the transfer is still running after %d ms", timeout_ms);
    if (r < 0)
        return lsm_error(r, "cannot wait for the transfer");
    settle(t);
    return 0;
}

int lsm_transfer_result(struct lsm_transfer *t)
{
    if (!t)
        return lsm_error(-EINVAL, "lsm_transfer_result: no transfer");
    if (!settle(t))
        return lsm_error(-EBUSY, "the transfer is still running");
    return t->result;   /* final once settled */
}

const char *lsm_transfer_error(struct lsm_transfer *t)
{
    if (!t || !settle(t))
        return "";
    return t->error;    /* written once, before stopped was set */
}

void lsm_transfer_free(struct lsm_transfer *t)
{
    if (!t)
        return;
    lsm_job_free(t->job);
    if (t->jobfile_fd >= 0)
        close(t->jobfile_fd);
    pthread_mutex_destroy(&t->mu);
    ctx_unref(t->ctx);
    pthread_mutex_lock(&live_mu);
    live_transfers--;
    pthread_mutex_unlock(&live_mu);
    free(t);
}

/* ---- Checksum ---- */

int lsm_checksum(struct lsm_ctx *ctx, const char *path, const char *fmt, const char *alg,
                 char *hex, size_t hex_size)
{
    if (!ctx || !path || !*path || !hex)
        return lsm_error(-EINVAL, "lsm_checksum: no context, image or place for the checksum");
    if (hex_size < LSM_BLKHASH_HEX_LEN)
        return lsm_error(-EINVAL, "lsm_checksum: %zu bytes are too few for the checksum (%d)",
                         hex_size, LSM_BLKHASH_HEX_LEN);
    hex[0] = '\0';
#ifndef LSM_HAVE_CMD_CHECKSUM
    (void)fmt;
    (void)alg;
    return lsm_error(-ENOTSUP, "checksum: liblsm-sync was built without libsodium");
#else
    struct lsm_checksum_opts co = { .alg = LSM_BLKHASH_SHA256 };
    enum lsm_format f;
    int r;
    if ((r = parse_fmt("image", fmt, LSM_FMT_AUTO, true, &f)) < 0)
        return r;
    if (alg && (r = lsm_blkhash_alg_parse(alg, &co.alg)) < 0)
        return r;
    struct lsm_image *img;
    if ((r = lsm_image_open(path, f, 0, &img)) < 0)
        return r;
    struct lsm_checksum_result res;
    r = lsm_checksum_image(img, &co, &res);
    lsm_image_close(img);
    if (r < 0)
        return r;
    snprintf(hex, hex_size, "%s", res.hex);
    return 0;
#endif
}
