/* lsm-sync sync: syncImageData.  Copy the data of the volumes of a chain,
 * layer by layer (each destination volume receives only its source
 * volume's own layer), into a destination chain of the same structure. */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>

#include "chain.h"
#include "cli.h"
#include "json-util.h"
#include "flow-copy.h"
#include "progress.h"
#include "util.h"

enum sync_type { SYNC_ALL, SYNC_INTERNAL, SYNC_LEAF };

static volatile sig_atomic_t sync_cancel;

static void on_signal(int sig)
{
    (void)sig;
    sync_cancel = 1;
}

struct sync_vol {
    unsigned index;              /* in the chain, 0 = leaf */
    struct lsm_volume_desc *src;
    struct lsm_volume_pair *pair;
    uint64_t total;              /* bytes planned (from the map) */
    uint64_t done;
    int result;                  /* 0 ok, <0 failed, 1 not run */
    char error[1024];
    struct lsm_copy_stats st;
};

struct sync_ctx {
    struct sync_vol *vols;
    unsigned nvols;
    unsigned next;               /* next volume to start */
    pthread_mutex_t lock;
    struct cli_progress progress;
    uint64_t total;
    bool failed;
    struct lsm_copy_opts base;   /* shared options */
};

static struct sync_ctx *g_ctx;

static void sync_progress_all(void *opaque, uint64_t done, uint64_t total)
{
    struct sync_vol *v = opaque;
    (void)total;
    pthread_mutex_lock(&g_ctx->lock);
    v->done = MIN(done, v->total);
    uint64_t sum = 0;
    for (unsigned i = 0; i < g_ctx->nvols; i++)
        sum += g_ctx->vols[i].done;
    cli_progress_update(&g_ctx->progress, sum, g_ctx->total);
    pthread_mutex_unlock(&g_ctx->lock);
}

static void sync_warn(void *opaque, const char *msg)
{
    (void)opaque;
    pthread_mutex_lock(&g_ctx->lock);
    cli_progress_break(&g_ctx->progress);
    cli_warn("%s", msg);
    pthread_mutex_unlock(&g_ctx->lock);
}

static int run_volume(struct sync_ctx *ctx, struct sync_vol *v)
{
    struct lsm_copy_opts o = ctx->base;
    o.src_path = v->src->path;
    o.src_fmt = v->src->format;
    o.dst_path = v->pair->dst_path;
    o.dst_fmt = v->src->format;
    o.no_create = true;
    /* Only this volume's own layer: the destination's backing is already
     * the destination chain below it. */
    o.backing = v->pair->dst_backing;
    o.backing_fmt = v->src->backing_fmt;
    o.cluster_size = v->src->cluster_size;
    o.progress = sync_progress_all;
    o.opaque = v;

    /* Block destinations: make room for the copy first. */
    int r = lsm_job_ensure_room(v->pair, v->src);
    if (r < 0)
        return r;
    memset(&v->st, 0, sizeof v->st);
    return lsm_copy(&o, &v->st);
}

static void *worker(void *arg)
{
    struct sync_ctx *ctx = arg;
    for (;;) {
        pthread_mutex_lock(&ctx->lock);
        if (ctx->next >= ctx->nvols || ctx->failed || sync_cancel) {
            pthread_mutex_unlock(&ctx->lock);
            return NULL;
        }
        struct sync_vol *v = &ctx->vols[ctx->next++];
        pthread_mutex_unlock(&ctx->lock);
        int r = run_volume(ctx, v);
        pthread_mutex_lock(&ctx->lock);
        v->result = r;
        if (r < 0) {
            snprintf(v->error, sizeof v->error, "%s", lsm_last_error());
            ctx->failed = true;
        } else {
            v->done = v->total;
        }
        pthread_mutex_unlock(&ctx->lock);
    }
}

static void sync_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync sync --type=ALL|INTERNAL|LEAF [options] (SRC_TOP DST_TOP | --job FILE)\n\n"
        "Copy the data of a chain's volumes into a destination chain of the same\n"
        "structure (made by clone-structure), layer by layer: each destination volume\n"
        "receives only its source volume's own layer.  ALL: every volume; INTERNAL:\n"
        "every volume but the leaf (which is being mirrored); LEAF: only the leaf.\n\n"
        "  --type=TYPE          ALL, INTERNAL or LEAF (required)\n"
        "  --job FILE           explicit source/destination volumes (docs/chains.md)\n"
        "  --parallel N         copy up to N volumes at once (default 1)\n"
        "  -p                   progress bar\n"
        "  --progress=json      one JSON progress object per line on stdout\n"
        "  --output=FMT         human (default) or json summary\n"
        "  --io=KIND            auto, uring, aio or psync\n"
        "  --direct=MODE        auto, always or never (O_DIRECT)\n"
        "  -m N                 requests in flight per volume (default 16)\n"
        "  -s SIZE              request size (default 1M)\n"
        "  --buffer-size=SIZE   memory budget for buffers, shared by all volumes (default 32M)\n"
        "  --rate=BYTES         bandwidth limit per volume copy, bytes per second\n");
}

int cmd_sync(int argc, char **argv)
{
    enum { OPT_TYPE = 256, OPT_JOB, OPT_PAR, OPT_PROGRESS, OPT_OUTPUT, OPT_IO, OPT_DIRECT, OPT_BUF, OPT_RATE };
    static const struct option opts[] = {
        { "type", required_argument, NULL, OPT_TYPE },
        { "job", required_argument, NULL, OPT_JOB },
        { "parallel", required_argument, NULL, OPT_PAR },
        { "progress", required_argument, NULL, OPT_PROGRESS },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "io", required_argument, NULL, OPT_IO },
        { "direct", required_argument, NULL, OPT_DIRECT },
        { "buffer-size", required_argument, NULL, OPT_BUF },
        { "rate", required_argument, NULL, OPT_RATE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int type = -1;
    const char *jobfile = NULL;
    unsigned parallel = 1;
    enum cli_progress_mode pmode = CLI_PROGRESS_NONE;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    struct lsm_copy_opts base = { 0 };
    uint64_t v64;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "pm:s:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_TYPE:
            if (!strcasecmp(optarg, "ALL")) type = SYNC_ALL;
            else if (!strcasecmp(optarg, "INTERNAL")) type = SYNC_INTERNAL;
            else if (!strcasecmp(optarg, "LEAF")) type = SYNC_LEAF;
            else return cli_usage_error("sync", "--type must be ALL, INTERNAL or LEAF, not '%s'", optarg);
            break;
        case OPT_JOB: jobfile = optarg; break;
        case OPT_PAR:
            if (lsm_parse_size(optarg, &v64) < 0 || v64 < 1 || v64 > 64)
                return cli_usage_error("sync", "--parallel must be 1 to 64");
            parallel = (unsigned)v64;
            break;
        case 'p': pmode = CLI_PROGRESS_BAR; break;
        case OPT_PROGRESS:
            if (strcmp(optarg, "json"))
                return cli_usage_error("sync", "--progress takes 'json'");
            pmode = CLI_PROGRESS_JSON;
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output("sync", optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_IO:
            if (lsm_io_kind_parse(optarg, &base.io_kind) < 0)
                return cli_usage_error("sync", "--io must be auto, uring, aio or psync");
            break;
        case OPT_DIRECT:
            if (lsm_direct_parse(optarg, &base.direct) < 0)
                return cli_usage_error("sync", "--direct must be auto, always or never");
            break;
        case 'm':
            if (lsm_parse_size(optarg, &v64) < 0 || v64 < 1 || v64 > 1024)
                return cli_usage_error("sync", "-m must be 1 to 1024");
            base.requests = (unsigned)v64;
            break;
        case 's':
            if (!cli_parse_size("sync", "-s", optarg, &base.request_size))
                return EXIT_USAGE;
            break;
        case OPT_BUF:
            if (!cli_parse_size("sync", "--buffer-size", optarg, &base.buffer_size))
                return EXIT_USAGE;
            break;
        case OPT_RATE:
            if (!cli_parse_size("sync", "--rate", optarg, &base.rate))
                return EXIT_USAGE;
            break;
        case 'h':
            sync_usage(stdout);
            return 0;
        default:
            return cli_usage_error("sync", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (type < 0)
        return cli_usage_error("sync", "--type is required (ALL, INTERNAL or LEAF)");
    if (jobfile ? optind != argc : optind != argc - 2)
        return cli_usage_error("sync", jobfile ? "SRC_TOP and DST_TOP go in the job file" : "need SRC_TOP and DST_TOP");

    struct lsm_job job = { 0 };
    struct lsm_chain_desc src = { 0 }, dst = { 0 };
    int rc = 0;
    if (jobfile && lsm_job_load(jobfile, &job) < 0)
        return cli_fail("sync");
    const char *src_top = jobfile ? job.v[0].src_path : argv[optind];
    const char *dst_top = jobfile ? job.v[0].dst_path : argv[optind + 1];
    if (lsm_chain_describe(src_top, jobfile ? job.v[0].src_fmt : LSM_FMT_AUTO, &src) < 0) {
        rc = cli_fail("sync");
        goto out;
    }
    /* A job names its source volumes: they must be the source chain, in
     * order.  Its destinations are checked against every file of the
     * source chain before the destination chain is even opened. */
    if (jobfile && (lsm_job_check_sources(&src, &job) < 0 || lsm_job_check_destinations(&src, &job) < 0)) {
        rc = cli_fail("sync");
        goto out;
    }
    if (!jobfile) {
        /* the top first: if it is a source file, say so, whatever else is wrong below it */
        struct lsm_volume_pair top = { .dst_path = (char *)dst_top };
        struct lsm_job one = { .n = 1, .v = &top };
        if (lsm_job_check_destinations(&src, &one) < 0) {
            rc = cli_fail("sync");
            goto out;
        }
    }
    /* A destination volume an interrupted sync left incomplete is what
     * this sync finishes. */
    if (lsm_chain_describe_flags(dst_top, jobfile ? job.v[0].dst_fmt : LSM_FMT_AUTO,
                                 LSM_OPEN_INCOMPLETE_OK, &dst) < 0) {
        rc = cli_fail("sync");
        goto out;
    }
    if (jobfile) {
        /* one destination chain: entry i+1's destination backs entry i's */
        if (lsm_job_check_chain(&job, &dst) < 0) {
            rc = cli_fail("sync");
            goto out;
        }
        for (unsigned i = 0; i < job.n; i++) {
            job.v[i].dst_type = dst.v[i].type;
            free(job.v[i].dst_backing);
            job.v[i].dst_backing = NULL;
            if (dst.v[i].backing_name && !(job.v[i].dst_backing = strdup(dst.v[i].backing_name))) {
                cli_error("sync", "out of memory");
                rc = EXIT_OPERATIONAL;
                goto out;
            }
        }
        /* again with the types that are there (a job may omit "type") */
        if (lsm_job_check_destinations(&src, &job) < 0) {
            rc = cli_fail("sync");
            goto out;
        }
    } else {
        /* destination pairs from the destination chain as it is */
        job.v = calloc(dst.n, sizeof *job.v);
        if (!job.v) {
            cli_error("sync", "out of memory");
            rc = EXIT_OPERATIONAL;
            goto out;
        }
        job.n = dst.n;
        for (unsigned i = 0; i < dst.n; i++) {
            struct lsm_volume_pair *p = &job.v[i];
            p->src_path = strdup(i < src.n ? src.v[i].path : "");
            p->dst_path = strdup(dst.v[i].path);
            p->dst_backing = dst.v[i].backing_name ? strdup(dst.v[i].backing_name) : NULL;
            p->dst_type = dst.v[i].type;
            p->src_fmt = i < src.n ? src.v[i].format : LSM_FMT_AUTO;
            p->dst_fmt = dst.v[i].format;
            if (!p->src_path || !p->dst_path || (dst.v[i].backing_name && !p->dst_backing)) {
                cli_error("sync", "out of memory");
                rc = EXIT_OPERATIONAL;
                goto out;
            }
        }
        /* no volume of the destination chain (as QEMU resolves its backing
         * names) may be a file of the source chain */
        if (lsm_job_check_destinations(&src, &job) < 0) {
            rc = cli_fail("sync");
            goto out;
        }
    }
    if (lsm_chain_same_structure(&src, &dst) < 0) {
        rc = cli_fail("sync");
        goto out;
    }

    /* volumes to copy, base first */
    unsigned first = type == SYNC_INTERNAL ? 1 : 0;
    unsigned last = type == SYNC_LEAF ? 0 : src.n - 1;
    struct sync_ctx ctx = { 0 };
    pthread_mutex_init(&ctx.lock, NULL);
    ctx.nvols = first <= last ? last - first + 1 : 0;
    ctx.vols = calloc(ctx.nvols ? ctx.nvols : 1, sizeof *ctx.vols);
    if (!ctx.vols) {
        cli_error("sync", "out of memory");
        rc = EXIT_OPERATIONAL;
        goto out;
    }
    for (unsigned k = 0; k < ctx.nvols; k++) {
        unsigned i = last - k;
        struct sync_vol *v = &ctx.vols[k];
        v->index = i;
        v->src = &src.v[i];
        v->pair = &job.v[i];
        v->total = src.v[i].data_bytes;
        v->result = 1;
        ctx.total += v->total;
    }
    if (parallel > ctx.nvols)
        parallel = ctx.nvols ? ctx.nvols : 1;
    base.cancel = &sync_cancel;
    base.warn = sync_warn;
    if (base.buffer_size)
        base.buffer_size /= parallel;
    else if (parallel > 1)
        base.buffer_size = (32ULL << 20) / parallel;
    ctx.base = base;
    g_ctx = &ctx;
    cli_progress_init(&ctx.progress, pmode);

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    uint64_t t0 = lsm_now_ns();
    pthread_t tids[64];
    unsigned started = 0;
    for (unsigned t = 1; t < parallel; t++)
        if (pthread_create(&tids[started], NULL, worker, &ctx) == 0)
            started++;
    worker(&ctx);
    for (unsigned t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    double secs = (double)(lsm_now_ns() - t0) / 1e9;

    uint64_t done = 0;
    for (unsigned k = 0; k < ctx.nvols; k++)
        done += ctx.vols[k].result == 0 ? ctx.vols[k].total : 0;
    if (!ctx.failed && !sync_cancel)
        cli_progress_finish(&ctx.progress, ctx.total, ctx.total);
    else
        cli_progress_break(&ctx.progress);

    for (unsigned k = 0; k < ctx.nvols; k++) {
        struct sync_vol *v = &ctx.vols[k];
        if (v->result < 0) {
            cli_error("sync", "%s -> %s: %s; the destination volume is incomplete",
                      v->src->path, v->pair->dst_path, v->error);
            rc = EXIT_OPERATIONAL;
        }
    }
    if (!rc && sync_cancel) {
        cli_error("sync", "interrupted; the destination chain is incomplete");
        rc = EXIT_OPERATIONAL;
    }
    if (output == CLI_OUTPUT_JSON) {
        json_object *o = json_object_new_object(), *a = json_object_new_array();
        static const char *tn[] = { "ALL", "INTERNAL", "LEAF" };
        json_object_object_add(o, "type", json_object_new_string(tn[type]));
        json_object_object_add(o, "bytes-total", json_object_new_int64((int64_t)ctx.total));
        json_object_object_add(o, "bytes-done", json_object_new_int64((int64_t)done));
        json_object_object_add(o, "seconds", json_object_new_double(secs));
        for (unsigned k = 0; k < ctx.nvols; k++) {
            struct sync_vol *v = &ctx.vols[k];
            json_object *e = json_object_new_object();
            json_object_object_add(e, "source", lsm_json_string(v->src->path));
            json_object_object_add(e, "destination", lsm_json_string(v->pair->dst_path));
            json_object_object_add(e, "bytes", json_object_new_int64((int64_t)v->total));
            json_object_object_add(e, "status", json_object_new_string(
                v->result == 0 ? "synced" : v->result < 0 ? "failed" : "not-started"));
            if (v->result == 0) {
                json_object_object_add(e, "io", json_object_new_string(v->st.io_name));
                json_object_object_add(e, "physical", json_object_new_boolean(v->st.physical));
            }
            json_object_array_add(a, e);
        }
        json_object_object_add(o, "volumes", a);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                          JSON_C_TO_STRING_SPACED |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else if (!rc && pmode != CLI_PROGRESS_JSON) {
        char b[32];
        printf("synced %u volume%s (%s) in %.2f s\n", ctx.nvols, ctx.nvols == 1 ? "" : "s",
               lsm_format_size(ctx.total, b, sizeof b), secs);
    }
    free(ctx.vols);
    pthread_mutex_destroy(&ctx.lock);
out:
    lsm_chain_desc_free(&src);
    lsm_chain_desc_free(&dst);
    lsm_job_free(&job);
    return rc;
}
