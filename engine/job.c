/* Jobs: one function on a thread of its own, watched from any thread.
 *
 * Everything the watchers read lives under one mutex: the state, the
 * phase, the progress and a small ring of (time, bytes done) samples from
 * which the rate over the last few seconds is computed.  The cancel flag
 * is a sig_atomic_t outside the mutex so that copy code can poll it as it
 * polls a signal handler's flag. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "job.h"
#include "limiter.h"
#include "util.h"

#define RATE_SAMPLE_NS  (200ULL * 1000 * 1000)   /* one sample per 200 ms at most */
#define RATE_WINDOW_NS  (5ULL * 1000 * 1000 * 1000) /* rate over the last 5 s */
#define RATE_SAMPLES    32                        /* > window / sample interval */

struct rate_sample {
    uint64_t t_ns;
    uint64_t done;
};

struct lsm_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *kind;
    lsm_job_fn fn;
    void *arg;
    void (*free_arg)(void *);
    struct lsm_limiter *limiter;

    pthread_t thread;
    bool started;             /* thread created */
    bool returned;            /* fn returned (or cancelled before start) */
    volatile sig_atomic_t cancel;

    enum lsm_job_state state;
    char phase[LSM_JOB_PHASE_MAX];
    struct lsm_job_progress progress;
    uint64_t start_ns, end_ns;
    struct rate_sample samples[RATE_SAMPLES];
    unsigned nsamples, sample_head;   /* ring: head is the next slot */
    int result;
    char message[LSM_JOB_MESSAGE_MAX];
};

const char *lsm_job_state_name(enum lsm_job_state s)
{
    switch (s) {
    case LSM_JOB_INIT: return "init";
    case LSM_JOB_RUNNING: return "running";
    case LSM_JOB_ABORTING: return "aborting";
    case LSM_JOB_FINISHED: return "finished";
    case LSM_JOB_ABORTED: return "aborted";
    case LSM_JOB_FAILED: return "failed";
    }
    return "unknown";
}

int lsm_job_create(const struct lsm_job_opts *o, lsm_job_fn fn, void *arg,
                   void (*free_arg)(void *), struct lsm_job **out)
{
    struct lsm_job *j = calloc(1, sizeof(*j));
    if (!j)
        return lsm_error(-ENOMEM, "cannot allocate a job");
    j->kind = strdup(o && o->kind ? o->kind : "job");
    if (!j->kind) {
        free(j);
        return lsm_error(-ENOMEM, "cannot allocate a job");
    }
    int r = lsm_limiter_create(o ? o->rate_limit : 0, o ? o->parent : NULL, &j->limiter);
    if (r < 0) {
        free(j->kind);
        free(j);
        return lsm_error(r, "cannot create the job's rate limiter");
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->fn = fn;
    j->arg = arg;
    j->free_arg = free_arg;
    j->state = LSM_JOB_INIT;
    *out = j;
    return 0;
}

/* With mu held. */
static void add_sample(struct lsm_job *j, uint64_t now, bool force)
{
    if (!force && j->nsamples) {
        unsigned last = (j->sample_head + RATE_SAMPLES - 1) % RATE_SAMPLES;
        if (now - j->samples[last].t_ns < RATE_SAMPLE_NS)
            return;
    }
    j->samples[j->sample_head] = (struct rate_sample){ now, j->progress.bytes_done };
    j->sample_head = (j->sample_head + 1) % RATE_SAMPLES;
    if (j->nsamples < RATE_SAMPLES)
        j->nsamples++;
}

static void *job_thread(void *opaque)
{
    struct lsm_job *j = opaque;
    lsm_error_clear();
    int r = j->fn(j, j->arg);

    pthread_mutex_lock(&j->mu);
    j->result = r;
    j->end_ns = lsm_now_ns();
    if (r == 0)
        j->state = LSM_JOB_FINISHED;
    else
        j->state = j->cancel ? LSM_JOB_ABORTED : LSM_JOB_FAILED;
    if (r < 0) {
        const char *m = lsm_last_error();
        if (!m[0])
            m = j->cancel ? "cancelled" : strerror(-r);
        snprintf(j->message, sizeof(j->message), "%s", m);
    }
    j->returned = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

int lsm_job_start(struct lsm_job *job)
{
    pthread_mutex_lock(&job->mu);
    if (job->started || job->returned) {
        pthread_mutex_unlock(&job->mu);
        return job->returned && !job->started ? -ECANCELED : -EBUSY;
    }
    job->start_ns = lsm_now_ns();
    job->state = LSM_JOB_RUNNING;
    add_sample(job, job->start_ns, true);
    int r = -pthread_create(&job->thread, NULL, job_thread, job);
    if (r < 0) {
        job->state = LSM_JOB_INIT;
        job->nsamples = job->sample_head = 0;
        pthread_mutex_unlock(&job->mu);
        return lsm_error_errno(r, "cannot start a thread for the %s job", job->kind);
    }
    job->started = true;
    pthread_mutex_unlock(&job->mu);
    return 0;
}

const char *lsm_job_kind(const struct lsm_job *job)
{
    return job->kind;
}

void *lsm_job_arg(struct lsm_job *job)
{
    return job->arg;
}

/* With mu held: bytes/s of bytes_done over the last RATE_WINDOW_NS to now. */
static double rate_of(const struct lsm_job *j, uint64_t now)
{
    if (!j->nsamples)
        return 0;
    /* the oldest sample still inside the window (or the newest at all) */
    const struct rate_sample *best = NULL;
    for (unsigned i = 0; i < j->nsamples; i++) {
        const struct rate_sample *s =
            &j->samples[(j->sample_head + RATE_SAMPLES - 1 - i) % RATE_SAMPLES];
        if (best && now - s->t_ns > RATE_WINDOW_NS)
            break;
        best = s;
    }
    if (!best || now <= best->t_ns || j->progress.bytes_done < best->done)
        return 0;
    return (double)(j->progress.bytes_done - best->done) * 1e9 / (double)(now - best->t_ns);
}

void lsm_job_get_status(struct lsm_job *job, struct lsm_job_status *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t lim = lsm_limiter_rate(job->limiter);
    pthread_mutex_lock(&job->mu);
    uint64_t now = job->returned && job->end_ns ? job->end_ns : lsm_now_ns();
    st->state = job->state;
    memcpy(st->phase, job->phase, sizeof(st->phase));
    st->progress = job->progress;
    const struct lsm_job_progress *p = &job->progress;
    st->percent = p->bytes_total ? 100.0 * (double)MIN(p->bytes_done, p->bytes_total) /
                                       (double)p->bytes_total
                                 : 0;
    st->elapsed_s = job->start_ns ? (double)(now - job->start_ns) / 1e9 : 0;
    st->rate = job->started ? rate_of(job, now) : 0;
    if (job->state == LSM_JOB_FINISHED)
        st->eta_s = 0;
    else if (job->state == LSM_JOB_RUNNING && p->bytes_total && st->rate > 0)
        st->eta_s = (double)(p->bytes_total - MIN(p->bytes_done, p->bytes_total)) / st->rate;
    else
        st->eta_s = -1;
    st->rate_limit = lim;
    if (job->returned) {
        st->error = job->result;
        if (job->result < 0)
            memcpy(st->message, job->message, sizeof(st->message));
    }
    pthread_mutex_unlock(&job->mu);
}

int lsm_job_set_rate_limit(struct lsm_job *job, uint64_t bytes_per_s)
{
    lsm_limiter_set_rate(job->limiter, bytes_per_s);
    return 0;
}

void lsm_job_cancel(struct lsm_job *job)
{
    pthread_mutex_lock(&job->mu);
    job->cancel = 1;
    if (!job->started && !job->returned) {
        /* never started: nothing to stop */
        job->state = LSM_JOB_ABORTED;
        job->result = -ECANCELED;
        snprintf(job->message, sizeof(job->message), "cancelled before it started");
        job->returned = true;
        pthread_cond_broadcast(&job->cv);
    } else if (job->state == LSM_JOB_RUNNING) {
        job->state = LSM_JOB_ABORTING;
    }
    pthread_mutex_unlock(&job->mu);
}

int lsm_job_wait(struct lsm_job *job, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    int r = 0;
    pthread_mutex_lock(&job->mu);
    while (!job->returned) {
        if (!job->started) {
            r = -EINVAL;    /* never started: it would never return */
            break;
        }
        if (timeout_ms < 0) {
            pthread_cond_wait(&job->cv, &job->mu);
        } else if (timeout_ms == 0 ||
                   pthread_cond_clockwait(&job->cv, &job->mu, CLOCK_MONOTONIC, &deadline) ==
                       ETIMEDOUT) {
            if (!job->returned)
                r = -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&job->mu);
    return r;
}

int lsm_job_result(struct lsm_job *job)
{
    pthread_mutex_lock(&job->mu);
    int r = job->returned ? job->result : -EBUSY;
    pthread_mutex_unlock(&job->mu);
    return r;
}

void lsm_job_free(struct lsm_job *job)
{
    if (!job)
        return;
    lsm_job_cancel(job);
    if (job->started) {
        lsm_job_wait(job, -1);
        pthread_join(job->thread, NULL);
    }
    if (job->free_arg)
        job->free_arg(job->arg);
    lsm_limiter_free(job->limiter);
    pthread_cond_destroy(&job->cv);
    pthread_mutex_destroy(&job->mu);
    free(job->kind);
    free(job);
}

void lsm_job_set_phase(struct lsm_job *job, const char *phase)
{
    pthread_mutex_lock(&job->mu);
    snprintf(job->phase, sizeof(job->phase), "%s", phase ? phase : "");
    pthread_mutex_unlock(&job->mu);
}

void lsm_job_progress(struct lsm_job *job, const struct lsm_job_progress *p)
{
    pthread_mutex_lock(&job->mu);
    job->progress = *p;
    add_sample(job, lsm_now_ns(), false);
    pthread_mutex_unlock(&job->mu);
}

bool lsm_job_cancelled(struct lsm_job *job)
{
    return job->cancel != 0;
}

volatile sig_atomic_t *lsm_job_cancel_flag(struct lsm_job *job)
{
    return &job->cancel;
}

struct lsm_limiter *lsm_job_limiter(struct lsm_job *job)
{
    return job->limiter;
}
