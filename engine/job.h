/* Jobs: a long-running piece of work (a copy, a sync of a chain, a
 * checksum) that a program starts, watches, throttles, cancels and waits
 * for, from any thread.
 *
 * A job runs one function on a thread of its own.  The function reports
 * progress through lsm_job_progress() (cheap: a mutex and a few stores),
 * looks at lsm_job_cancelled() (or hands lsm_job_cancel_flag() to code that
 * polls a flag) at least every 50 ms, and takes its bandwidth from
 * lsm_job_limiter().  Everything else here may be called from any thread
 * at any time between create and free.
 *
 * States (the worker service's names): INIT (created, not started),
 * RUNNING, ABORTING (cancel asked, the function has not returned yet),
 * FINISHED (returned 0), ABORTED (returned after a cancel: the work is left
 * resumable where the function supports it), FAILED (returned -errno; the
 * message recorded with lsm_error() on the job's thread is kept).
 *
 * Library layer: never prints. */
#ifndef LSM_JOB_H
#define LSM_JOB_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

struct lsm_limiter;

enum lsm_job_state {
    LSM_JOB_INIT = 0,
    LSM_JOB_RUNNING,
    LSM_JOB_ABORTING,
    LSM_JOB_FINISHED,
    LSM_JOB_ABORTED,
    LSM_JOB_FAILED,
};
const char *lsm_job_state_name(enum lsm_job_state s);   /* "init", "running", ... */

/* Progress by class, in bytes of the job's address space (guest bytes for
 * image copies).  total may grow while the job runs (a chain's volumes are
 * planned one after the other); it is never computed by a whole-image
 * pre-scan. */
struct lsm_job_progress {
    uint64_t bytes_total;     /* to do, as known so far */
    uint64_t bytes_done;      /* done: written + zeroed + skipped */
    uint64_t bytes_written;   /* data written */
    uint64_t bytes_zeroed;    /* ranges made (or known to be) zero */
    uint64_t bytes_skipped;   /* nothing to do (absent, or already done before a resume) */
    uint64_t bytes_redone;    /* done again after a resume (work past the last checkpoint) */
};

#define LSM_JOB_PHASE_MAX 32
#define LSM_JOB_MESSAGE_MAX 512

/* A consistent snapshot. */
struct lsm_job_status {
    enum lsm_job_state state;
    char phase[LSM_JOB_PHASE_MAX];     /* the function's words: "copying", "flushing", ... */
    struct lsm_job_progress progress;
    double percent;                    /* 100 * done / total (0 while total is 0) */
    double elapsed_s;
    double rate;                       /* bytes/s of bytes_done over the last few seconds */
    double eta_s;                      /* from completed work; < 0 when not known yet */
    uint64_t rate_limit;               /* bytes/s, 0: unlimited */
    int error;                         /* FAILED: -errno */
    char message[LSM_JOB_MESSAGE_MAX]; /* FAILED: the message */
};

struct lsm_job;
/* The work.  Returns 0 or -errno with a message (lsm_error()).  arg is the
 * creator's; free_arg (may be NULL) is called on it by lsm_job_free(). */
typedef int (*lsm_job_fn)(struct lsm_job *job, void *arg);

struct lsm_job_opts {
    const char *kind;               /* "copy", "sync", ...: for status output */
    uint64_t rate_limit;            /* bytes/s, 0: unlimited */
    struct lsm_limiter *parent;     /* a shared (global) limiter, or NULL */
};

int lsm_job_create(const struct lsm_job_opts *o, lsm_job_fn fn, void *arg,
                   void (*free_arg)(void *), struct lsm_job **out);
/* Start the thread.  -EBUSY if already started, -ECANCELED if cancelled
 * before it started (then the job is ABORTED and never runs). */
int lsm_job_start(struct lsm_job *job);
void lsm_job_get_status(struct lsm_job *job, struct lsm_job_status *st);
const char *lsm_job_kind(const struct lsm_job *job);
/* The arg given to lsm_job_create (for the code that made the job). */
void *lsm_job_arg(struct lsm_job *job);
/* Change the job's own limit while it runs (0: unlimited); takes effect on
 * the next request the job issues, within a second. */
int lsm_job_set_rate_limit(struct lsm_job *job, uint64_t bytes_per_s);
/* Ask the job to stop.  Returns at once; the job reaches ABORTED within a
 * second (lsm_job_wait to know), or FINISHED if the function completed
 * anyway.  A job not started yet becomes ABORTED at once (result
 * -ECANCELED). */
void lsm_job_cancel(struct lsm_job *job);
/* Wait up to timeout_ms (< 0: forever) for the function to return: 0 once
 * it has (then the state is final), -ETIMEDOUT otherwise, -EINVAL for a job
 * never started (it would never return).  Records no message. */
int lsm_job_wait(struct lsm_job *job, int timeout_ms);
/* The function's result once it returned (0 or -errno); -EBUSY before. */
int lsm_job_result(struct lsm_job *job);
/* Cancel, wait, free. */
void lsm_job_free(struct lsm_job *job);

/* ---- For the job's function (its own thread) ---- */
void lsm_job_set_phase(struct lsm_job *job, const char *phase);
void lsm_job_progress(struct lsm_job *job, const struct lsm_job_progress *p);
bool lsm_job_cancelled(struct lsm_job *job);
/* A flag set by lsm_job_cancel, for code that polls a flag (the copy's
 * opts.cancel). */
volatile sig_atomic_t *lsm_job_cancel_flag(struct lsm_job *job);
/* The job's limiter (its own limit, under opts.parent). */
struct lsm_limiter *lsm_job_limiter(struct lsm_job *job);

#endif
