/* A copy as a job: the options copied into the job's argument, lsm_copy()
 * run on the job's thread, the caller's callbacks forwarded. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "copy-job.h"
#include "error.h"

struct copy_job {
    struct lsm_copy_opts o;      /* the copy's options: strings below, our callbacks */
    struct lsm_copy_opts user;   /* the caller's callbacks and opaque */
    char *src_path, *dst_path, *backing, *journal;
    struct lsm_job *job;
    struct lsm_copy_stats st;
};

static void copy_job_free(void *p)
{
    struct copy_job *cj = p;
    if (!cj)
        return;
    free(cj->src_path);
    free(cj->dst_path);
    free(cj->backing);
    free(cj->journal);
    free(cj);
}

static int fwd_record(void *opaque, uint64_t start, uint64_t len)
{
    struct copy_job *cj = opaque;
    return cj->user.record ? cj->user.record(cj->user.opaque, start, len) : 0;
}

static void fwd_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct copy_job *cj = opaque;
    if (cj->user.progress)
        cj->user.progress(cj->user.opaque, done, total);
}

static void fwd_job_progress(void *opaque, const struct lsm_job_progress *p)
{
    struct copy_job *cj = opaque;
    lsm_job_progress(cj->job, p);
    if (cj->user.job_progress)
        cj->user.job_progress(cj->user.opaque, p);
}

static void fwd_warn(void *opaque, const char *msg)
{
    struct copy_job *cj = opaque;
    if (cj->user.warn)
        cj->user.warn(cj->user.opaque, msg);
}

static int copy_job_run(struct lsm_job *job, void *arg)
{
    struct copy_job *cj = arg;
    cj->job = job;
    cj->o.cancel = lsm_job_cancel_flag(job);
    cj->o.limiter = lsm_job_limiter(job);
    lsm_job_set_phase(job, "copying");
    int r = lsm_copy(&cj->o, &cj->st);
    lsm_job_set_phase(job, r == 0 ? "done" : "stopped");
    if (r == -EINTR && lsm_job_cancelled(job))
        lsm_error(r, "copy of %s to %s cancelled", cj->src_path, cj->dst_path);
    return r;
}

static int dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s && !(*out = strdup(s)))
        return lsm_error(-ENOMEM, "out of memory");
    return 0;
}

int lsm_copy_job_create(const struct lsm_copy_opts *o, const struct lsm_job_opts *jo,
                        struct lsm_job **out)
{
    struct copy_job *cj = calloc(1, sizeof(*cj));
    if (!cj)
        return lsm_error(-ENOMEM, "out of memory");
    cj->o = *o;
    cj->user = *o;
    if (dup_opt(o->src_path, &cj->src_path) < 0 || dup_opt(o->dst_path, &cj->dst_path) < 0 ||
        dup_opt(o->backing, &cj->backing) < 0 || dup_opt(o->journal, &cj->journal) < 0) {
        copy_job_free(cj);
        return -ENOMEM;
    }
    cj->o.src_path = cj->src_path;
    cj->o.dst_path = cj->dst_path;
    cj->o.backing = cj->backing;
    cj->o.journal = cj->journal;
    cj->o.record = o->record ? fwd_record : NULL;
    cj->o.progress = o->progress ? fwd_progress : NULL;
    cj->o.job_progress = fwd_job_progress;
    cj->o.warn = o->warn ? fwd_warn : NULL;
    cj->o.opaque = cj;
    cj->o.cancel = NULL;      /* set to the job's on its thread */
    cj->o.limiter = NULL;

    struct lsm_job_opts jopts = jo ? *jo : (struct lsm_job_opts){ 0 };
    if (!jopts.kind)
        jopts.kind = "copy";
    int r = lsm_job_create(&jopts, copy_job_run, cj, copy_job_free, out);
    if (r < 0) {
        copy_job_free(cj);
        return r;
    }
    cj->job = *out;
    return 0;
}

int lsm_copy_job_stats(struct lsm_job *job, struct lsm_copy_stats *st)
{
    if (lsm_job_wait(job, 0) < 0)
        return -EBUSY;
    struct copy_job *cj = lsm_job_arg(job);
    *st = cj->st;
    return 0;
}
