/* A copy as a job (job.h): lsm_copy() on the job's thread, with the job's
 * cancel flag, limiter and progress.
 *
 * Library layer: never prints. */
#ifndef LSM_COPY_JOB_H
#define LSM_COPY_JOB_H

#include "flow-copy.h"
#include "job.h"

/* Create (not start) a job that runs lsm_copy(o).  The options are copied
 * (the paths duplicated): the caller may free its own at once.  The job
 * sets the copy's cancel flag, limiter and job progress to its own; the
 * caller's record, progress, job_progress and warn callbacks, if any, are
 * still called (with the caller's opaque, on the job's thread).  o->cancel
 * and o->limiter are not used: cancel the job and give jo->parent and
 * jo->rate_limit instead (o->rate, if set, is a private limit under the
 * job's).  jo->kind defaults to "copy". */
int lsm_copy_job_create(const struct lsm_copy_opts *o, const struct lsm_job_opts *jo,
                        struct lsm_job **out);
/* The copy's statistics, once lsm_job_wait() has returned 0 for the job
 * (before: -EBUSY).  job must be one made by lsm_copy_job_create. */
int lsm_copy_job_stats(struct lsm_job *job, struct lsm_copy_stats *st);

#endif
