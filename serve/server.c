/* lsm-sync serve: the loop, the clients, the tasks (server.h). */
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "budget.h"
#include "cleanup.h"
#include "confine.h"
#include "error.h"
#include "job.h"
#include "json-util.h"
#include "limiter.h"
#include "rpc.h"
#include "server.h"
#include "store.h"
#include "util.h"
#include "work.h"

#define TICK_MS 200
#define MAX_WBUF (64u << 20)    /* a client that reads nothing is dropped past this */

struct task {
    struct task *next;
    struct lsm_task_record rec;
    struct lsm_job *job;          /* while the work runs in this process */
    struct serve_work *work;      /* owned by job (free_arg) */
    uint64_t last_done;           /* stall detection */
    char last_phase[LSM_JOB_PHASE_MAX];
    uint64_t last_change_ns;
    bool stalled;
};

struct client {
    struct client *next;
    int fd;
    uid_t uid;
    char *rbuf;
    size_t rlen, rcap;
    bool discarding;              /* skipping the rest of an oversized line */
    char *wbuf;
    size_t wlen, woff, wcap;
    bool want_out;
    bool closing;                 /* close once wbuf is sent */
    bool read_off;                /* EPOLLIN removed (closing) */
    bool refused;                 /* uid not allowed: input is dropped */
    uint64_t refused_ns;
};

struct server {
    const struct lsm_serve_opts *o;
    int ep, lfd, sfd, tfd, lockfd;
    bool own_socket;
    dev_t sock_dev;
    ino_t sock_ino;
    struct lsm_store *store;
    struct serve_env env;
    struct lsm_limiter *global;
    char *journal_dir;
    struct task *tasks;
    struct client *clients;
    unsigned nclients;
    unsigned max_tasks;
    unsigned stall_timeout;
    size_t max_request;
    uint64_t start_ns;
    bool stop;
};

static void slog(struct server *s, const char *fmt, ...) LSM_PRINTF(2, 3);
static void slog(struct server *s, const char *fmt, ...)
{
    if (!s->o->log)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    s->o->log(s->o->log_opaque, buf);
}

/* ---- Tasks ---- */

static bool final_state(enum lsm_job_state st)
{
    return st == LSM_JOB_FINISHED || st == LSM_JOB_ABORTED || st == LSM_JOB_FAILED;
}

static struct task *find_task(struct server *s, const char *id)
{
    for (struct task *t = s->tasks; t; t = t->next)
        if (!strcmp(t->rec.id, id))
            return t;
    return NULL;
}

static unsigned running_tasks(struct server *s)
{
    unsigned n = 0;
    for (struct task *t = s->tasks; t; t = t->next)
        n += t->job != NULL;
    return n;
}

static int persist(struct server *s, struct task *t)
{
    if (!s->store)
        return 0;
    int r = lsm_store_write(s->store, &t->rec);
    if (r < 0)
        slog(s, "task %s: cannot record its state: %s", t->rec.id, lsm_last_error());
    return r;
}

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* A double with a fixed number of decimals in the JSON text. */
static json_object *jdouble(double v, int decimals)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return json_object_new_double_s(v, buf);
}

static json_object *progress_json(const struct lsm_job_status *st)
{
    json_object *p = json_object_new_object();
    if (!p)
        return NULL;
    json_object_object_add(p, "percent", jdouble(st->percent, 2));
    json_object_object_add(p, "bytes_done", json_object_new_uint64(st->progress.bytes_done));
    json_object_object_add(p, "bytes_total", json_object_new_uint64(st->progress.bytes_total));
    json_object_object_add(p, "bytes_written", json_object_new_uint64(st->progress.bytes_written));
    json_object_object_add(p, "bytes_zeroed", json_object_new_uint64(st->progress.bytes_zeroed));
    json_object_object_add(p, "bytes_skipped", json_object_new_uint64(st->progress.bytes_skipped));
    json_object_object_add(p, "bytes_redone", json_object_new_uint64(st->progress.bytes_redone));
    json_object_object_add(p, "rate", json_object_new_uint64((uint64_t)(st->rate > 0 ? st->rate : 0)));
    json_object_object_add(p, "elapsed", jdouble(st->elapsed_s, 1));
    if (st->eta_s >= 0)
        json_object_object_add(p, "time_left", jdouble(st->eta_s, 1));
    return p;
}

/* Start (or restart) the work of t.  0, or an RPC code with msg. */
static int start_task(struct server *s, struct task *t, bool resumed, bool check_gen, char *msg)
{
    struct serve_work *w = NULL;
    int code = serve_work_prepare(&s->env, &t->rec, resumed, check_gen, &w, msg);
    if (code < 0)
        return code;
    if (!resumed)
        t->rec.bandwidth = serve_work_bandwidth(w);
    struct lsm_job_opts jo = { .kind = t->rec.method, .rate_limit = t->rec.bandwidth, .parent = s->global };
    struct lsm_job *job = NULL;
    if (lsm_job_create(&jo, serve_work_run, w, serve_work_free, &job) < 0) {
        snprintf(msg, LSM_RPC_MSG_MAX, "%s", lsm_last_error());
        serve_work_free(w);
        return LSM_RPC_E_FAILED;
    }
    t->rec.state = LSM_JOB_RUNNING;
    t->rec.started = now_s();
    t->rec.runs++;
    t->rec.finished = 0;
    t->rec.error = 0;
    if (!resumed)
        t->rec.message[0] = '\0';
    /* Recorded as running before the work starts: a crash from here on
     * finds the task and runs it again.  A new task that cannot be recorded
     * is refused (a client must not be told of a task a crash would lose). */
    if (persist(s, t) < 0 && !resumed) {
        snprintf(msg, LSM_RPC_MSG_MAX, "cannot record the task: %s", lsm_last_error());
        lsm_job_free(job);          /* and the work (free_arg) */
        t->rec.state = LSM_JOB_INIT;
        t->rec.runs--;
        return LSM_RPC_E_FAILED;
    }
    t->job = job;
    t->work = w;
    t->last_change_ns = lsm_now_ns();
    t->last_done = 0;
    t->last_phase[0] = '\0';
    t->stalled = false;
    if (lsm_job_start(job) < 0) {
        snprintf(msg, LSM_RPC_MSG_MAX, "%s", lsm_last_error());
        lsm_job_free(job);
        t->job = NULL;
        t->work = NULL;
        t->rec.state = LSM_JOB_FAILED;
        t->rec.error = -EAGAIN;
        snprintf(t->rec.message, sizeof t->rec.message, "cannot start the task's thread");
        t->rec.finished = now_s();
        persist(s, t);
        return LSM_RPC_E_FAILED;
    }
    return 0;
}

/* The loop's look at a running task. */
static void watch_task(struct server *s, struct task *t, uint64_t now)
{
    if (!t->job)
        return;
    struct lsm_created_file f;
    if (serve_work_take_created(t->work, &f)) {
        t->rec.have_created = true;
        t->rec.created_file = f;
        persist(s, t);
    }
    struct lsm_job_status st;
    lsm_job_get_status(t->job, &st);
    if (lsm_job_wait(t->job, 0) == 0) {
        /* The work returned: its final state. */
        lsm_job_get_status(t->job, &st);
        if (t->rec.progress)
            json_object_put(t->rec.progress);
        t->rec.progress = progress_json(&st);
        if (t->rec.result)
            json_object_put(t->rec.result);
        t->rec.result = st.state == LSM_JOB_FINISHED ? serve_work_result(t->work) : NULL;
        t->rec.state = st.state;
        t->rec.error = st.state == LSM_JOB_FINISHED ? 0 : st.error;
        if (st.state == LSM_JOB_FAILED || st.state == LSM_JOB_ABORTED)
            snprintf(t->rec.message, sizeof t->rec.message, "%s", st.message);
        if (t->stalled && st.state != LSM_JOB_FINISHED) {
            t->rec.state = LSM_JOB_FAILED;
            t->rec.error = -ETIMEDOUT;
            snprintf(t->rec.message, sizeof t->rec.message,
                     "no progress for %u seconds: stopped", s->stall_timeout);
        }
        if (t->rec.state != LSM_JOB_FINISHED && t->rec.error == 0)
            t->rec.error = -ECANCELED;
        t->rec.finished = now_s();
        lsm_job_free(t->job);
        t->job = NULL;
        t->work = NULL;
        persist(s, t);
        return;
    }
    if (t->rec.state == LSM_JOB_RUNNING && st.state == LSM_JOB_ABORTING) {
        t->rec.state = LSM_JOB_ABORTING;
        persist(s, t);
    }
    /* Liveness: progress is done bytes or a new phase. */
    if (st.progress.bytes_done != t->last_done || strcmp(st.phase, t->last_phase)) {
        t->last_done = st.progress.bytes_done;
        snprintf(t->last_phase, sizeof t->last_phase, "%s", st.phase);
        t->last_change_ns = now;
    } else if (!t->stalled && s->stall_timeout != UINT32_MAX
               && now - t->last_change_ns > (uint64_t)s->stall_timeout * 1000000000ULL
               && st.state == LSM_JOB_RUNNING) {
        t->stalled = true;
        slog(s, "task %s: no progress for %u seconds: stopping it", t->rec.id, s->stall_timeout);
        lsm_job_cancel(t->job);
    }
}

static void free_task(struct task *t)
{
    if (t->job)
        lsm_job_free(t->job);
    lsm_task_record_free(&t->rec);
    free(t);
}

/* ---- Replies ---- */

static void client_send(struct server *s, struct client *c, char *line);

static void reply_result(struct server *s, struct client *c, const struct lsm_rpc_req *rq,
                         json_object *res)
{
    if (!rq->has_id) {      /* a notification: no reply */
        json_object_put(res);
        return;
    }
    client_send(s, c, lsm_rpc_result(rq->id, res));
}

static void reply_error(struct server *s, struct client *c, const struct lsm_rpc_req *rq,
                        int code, const char *msg, int err)
{
    if (rq && !rq->has_id && code != LSM_RPC_PARSE_ERROR && code != LSM_RPC_INVALID_REQUEST)
        return;
    json_object *data = NULL;
    if (err < 0) {
        data = json_object_new_object();
        json_object_object_add(data, "errno", json_object_new_int(-err));
        json_object_object_add(data, "name", json_object_new_string(strerrorname_np(-err) ? strerrorname_np(-err) : "E?"));
    }
    client_send(s, c, lsm_rpc_error(rq ? rq->id : NULL, code, msg, data));
}

/* ---- Methods ---- */

static json_object *task_status(struct server *s, struct task *t)
{
    (void)s;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "taskId", json_object_new_string(t->rec.id));
    json_object_object_add(o, "method", json_object_new_string(t->rec.method));
    if (t->job) {
        struct lsm_job_status st;
        lsm_job_get_status(t->job, &st);
        enum lsm_job_state state = st.state;
        if (state == LSM_JOB_INIT)
            state = LSM_JOB_RUNNING;
        if (final_state(state))        /* returned; the loop records it at its next tick */
            state = st.state == LSM_JOB_FINISHED ? LSM_JOB_RUNNING : LSM_JOB_ABORTING;
        json_object_object_add(o, "state", json_object_new_string(lsm_task_state_name(state)));
        json_object_object_add(o, "phase", json_object_new_string(st.phase));
        json_object_object_add(o, "progress", progress_json(&st));
        json_object_object_add(o, "bandwidth", json_object_new_uint64(st.rate_limit));
    } else {
        json_object_object_add(o, "state", json_object_new_string(lsm_task_state_name(t->rec.state)));
        if (t->rec.progress)
            json_object_object_add(o, "progress", json_object_get(t->rec.progress));
        json_object_object_add(o, "bandwidth", json_object_new_uint64(t->rec.bandwidth));
    }
    if (t->rec.error) {
        json_object *e = json_object_new_object();
        const char *name = strerrorname_np(-t->rec.error);
        json_object_object_add(e, "errno", json_object_new_int(-t->rec.error));
        json_object_object_add(e, "name", json_object_new_string(name ? name : "E?"));
        json_object_object_add(e, "message", lsm_json_string(t->rec.message));
        json_object_object_add(o, "error", e);
    }
    if (t->rec.result && !t->job)
        json_object_object_add(o, "result", json_object_get(t->rec.result));
    json_object_object_add(o, "runs", json_object_new_int64(t->rec.runs));
    if (t->rec.message[0] && !t->rec.error)
        json_object_object_add(o, "note", lsm_json_string(t->rec.message));
    return o;
}

static json_object *task_info(struct server *s, struct task *t)
{
    json_object *o = task_status(s, t);
    json_object_object_add(o, "params", json_object_get(t->rec.params));
    json_object_object_add(o, "created", json_object_new_int64(t->rec.created));
    json_object_object_add(o, "started", json_object_new_int64(t->rec.started));
    json_object_object_add(o, "finished", json_object_new_int64(t->rec.finished));
    return o;
}

static struct task *param_task(struct server *s, struct client *c, const struct lsm_rpc_req *rq,
                               const char *const *known)
{
    char msg[LSM_RPC_MSG_MAX];
    const char *id;
    int code = lsm_rpc_param_check_known(rq->params, known, msg);
    if (code == 0)
        code = lsm_rpc_param_string(rq->params, "taskId", true, &id, msg);
    if (code) {
        reply_error(s, c, rq, code, msg, 0);
        return NULL;
    }
    struct task *t = find_task(s, id);
    if (!t) {
        snprintf(msg, sizeof msg, "no task %.64s", id);
        reply_error(s, c, rq, LSM_RPC_E_NO_TASK, msg, -ENOENT);
    }
    return t;
}

static const char *const only_task_id[] = { "taskId", NULL };

static void make_task_id(char *buf)
{
    unsigned char b[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, b, sizeof b) != (ssize_t)sizeof b) {
        uint64_t x = lsm_now_ns() ^ ((uint64_t)getpid() << 32);
        for (size_t i = 0; i < sizeof b; i++, x = x * 6364136223846793005ULL + 1442695040888963407ULL)
            b[i] = (unsigned char)(x >> 56);
    }
    if (fd >= 0)
        close(fd);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);  /* a version 4 UUID */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

static void m_new_task(struct server *s, struct client *c, const struct lsm_rpc_req *rq)
{
    char msg[LSM_RPC_MSG_MAX];
    const char *id = NULL;
    int code = lsm_rpc_param_string(rq->params, "taskId", false, &id, msg);
    if (code < 0) {
        reply_error(s, c, rq, code, msg, 0);
        return;
    }
    if (code == 0 && !lsm_rpc_valid_task_id(id)) {
        reply_error(s, c, rq, LSM_RPC_INVALID_PARAMS,
                    "parameter \"taskId\" must be 1 to 64 of A-Z a-z 0-9 - _ . (not starting with .)", 0);
        return;
    }
    if (id) {
        struct task *old = find_task(s, id);
        if (old) {
            /* A retry of the same request gets the same task; the same
             * request for a task that failed or was stopped runs it again
             * (from its journal, when it has one). */
            if (!strcmp(old->rec.method, rq->method) && json_object_equal(old->rec.params, rq->params)) {
                if (!old->job && (old->rec.state == LSM_JOB_FAILED || old->rec.state == LSM_JOB_ABORTED)) {
                    if (running_tasks(s) >= s->max_tasks) {
                        snprintf(msg, sizeof msg, "%u tasks are running (--max-tasks); try again later",
                                 s->max_tasks);
                        reply_error(s, c, rq, LSM_RPC_E_BUSY, msg, -EBUSY);
                        return;
                    }
                    enum lsm_job_state was = old->rec.state;
                    char note[sizeof old->rec.message];
                    snprintf(note, sizeof note, "submitted again after it %s (run %u)",
                             was == LSM_JOB_FAILED ? "failed" : "was stopped", old->rec.runs);
                    code = start_task(s, old, true, true, msg);
                    if (code < 0) {
                        reply_error(s, c, rq, code, msg, 0);
                        return;
                    }
                    snprintf(old->rec.message, sizeof old->rec.message, "%s", note);
                }
                json_object *res = json_object_new_object();
                json_object_object_add(res, "taskId", json_object_new_string(old->rec.id));
                reply_result(s, c, rq, res);
            } else {
                snprintf(msg, sizeof msg, "task %s exists with other parameters", id);
                reply_error(s, c, rq, LSM_RPC_E_BUSY, msg, -EEXIST);
            }
            return;
        }
    }
    if (running_tasks(s) >= s->max_tasks) {
        snprintf(msg, sizeof msg, "%u tasks are running (--max-tasks); try again later", s->max_tasks);
        reply_error(s, c, rq, LSM_RPC_E_BUSY, msg, -EBUSY);
        return;
    }
    struct task *t = calloc(1, sizeof *t);
    if (!t) {
        reply_error(s, c, rq, LSM_RPC_INTERNAL_ERROR, "out of memory", -ENOMEM);
        return;
    }
    if (id)
        snprintf(t->rec.id, sizeof t->rec.id, "%s", id);
    else
        do
            make_task_id(t->rec.id);
        while (find_task(s, t->rec.id));
    snprintf(t->rec.method, sizeof t->rec.method, "%s", rq->method);
    t->rec.params = json_object_get(rq->params);
    t->rec.state = LSM_JOB_INIT;
    t->rec.created = now_s();
    code = start_task(s, t, false, true, msg);
    if (code < 0) {
        bool recorded = t->rec.state != LSM_JOB_INIT;
        reply_error(s, c, rq, code, msg, 0);
        if (!recorded) {
            free_task(t);
            return;
        }
    } else {
        json_object *res = json_object_new_object();
        json_object_object_add(res, "taskId", json_object_new_string(t->rec.id));
        reply_result(s, c, rq, res);
    }
    t->next = s->tasks;
    s->tasks = t;
}

static void m_get_status(struct server *s, struct client *c, const struct lsm_rpc_req *rq, bool info)
{
    struct task *t = param_task(s, c, rq, only_task_id);
    if (t)
        reply_result(s, c, rq, info ? task_info(s, t) : task_status(s, t));
}

static void m_get_all(struct server *s, struct client *c, const struct lsm_rpc_req *rq, bool info)
{
    static const char *const none[] = { NULL };
    char msg[LSM_RPC_MSG_MAX];
    int code = lsm_rpc_param_check_known(rq->params, none, msg);
    if (code) {
        reply_error(s, c, rq, code, msg, 0);
        return;
    }
    /* Oldest first. */
    unsigned n = 0;
    for (struct task *t = s->tasks; t; t = t->next)
        n++;
    struct task **v = calloc(n ? n : 1, sizeof *v);
    json_object *a = json_object_new_array();
    if (!v || !a) {
        free(v);
        json_object_put(a);
        reply_error(s, c, rq, LSM_RPC_INTERNAL_ERROR, "out of memory", -ENOMEM);
        return;
    }
    unsigned i = n;
    for (struct task *t = s->tasks; t; t = t->next)
        v[--i] = t;
    for (i = 0; i < n; i++)
        json_object_array_add(a, info ? task_info(s, v[i]) : task_status(s, v[i]));
    free(v);
    json_object *res = json_object_new_object();
    json_object_object_add(res, "tasks", a);
    reply_result(s, c, rq, res);
}

static void m_stop(struct server *s, struct client *c, const struct lsm_rpc_req *rq)
{
    struct task *t = param_task(s, c, rq, only_task_id);
    if (!t)
        return;
    if (!t->job) {
        char msg[LSM_RPC_MSG_MAX];
        snprintf(msg, sizeof msg, "task %s is %s", t->rec.id, lsm_task_state_name(t->rec.state));
        reply_error(s, c, rq, LSM_RPC_E_TASK_STATE, msg, 0);
        return;
    }
    lsm_job_cancel(t->job);
    if (t->rec.state != LSM_JOB_ABORTING) {
        t->rec.state = LSM_JOB_ABORTING;
        persist(s, t);
    }
    json_object *res = json_object_new_object();
    json_object_object_add(res, "taskId", json_object_new_string(t->rec.id));
    json_object_object_add(res, "state", json_object_new_string("aborting"));
    reply_result(s, c, rq, res);
}

static void m_clear(struct server *s, struct client *c, const struct lsm_rpc_req *rq)
{
    struct task *t = param_task(s, c, rq, only_task_id);
    if (!t)
        return;
    if (t->job) {
        char msg[LSM_RPC_MSG_MAX];
        snprintf(msg, sizeof msg, "task %s is still %s: stop it (stopTask) and wait for it first",
                 t->rec.id, lsm_task_state_name(t->rec.state));
        reply_error(s, c, rq, LSM_RPC_E_TASK_STATE, msg, -EBUSY);
        return;
    }
    /* Nothing of the task is left: its journal, and the destination it
     * created and did not finish (a stopped copy with a journal keeps it
     * for a resume), only if it is still that very file. */
    int jr = serve_work_remove_journals(&s->env, t->rec.id);
    if (jr < 0) {
        reply_error(s, c, rq, LSM_RPC_E_FAILED, "cannot remove the task's journal", jr);
        return;
    }
    json_object *dst;
    if (t->rec.state != LSM_JOB_FINISHED && t->rec.have_created && !strcmp(t->rec.method, "copyVolume")
        && json_object_object_get_ex(t->rec.params, "destination", &dst)
        && json_object_is_type(dst, json_type_string)
        && lsm_created_file_is(json_object_get_string(dst), &t->rec.created_file)) {
        if (unlink(json_object_get_string(dst)) < 0 && errno != ENOENT) {
            reply_error(s, c, rq, LSM_RPC_E_FAILED, "cannot remove the incomplete destination the task created", -errno);
            return;
        }
        slog(s, "task %s cleared: removed the incomplete %s it had created", t->rec.id,
             json_object_get_string(dst));
    }
    if (s->store && lsm_store_remove(s->store, t->rec.id) < 0) {
        reply_error(s, c, rq, LSM_RPC_E_FAILED, lsm_last_error(), -EIO);
        return;
    }
    for (struct task **pp = &s->tasks; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    json_object *res = json_object_new_object();
    json_object_object_add(res, "taskId", json_object_new_string(t->rec.id));
    free_task(t);
    reply_result(s, c, rq, res);
}

static void m_bandwidth(struct server *s, struct client *c, const struct lsm_rpc_req *rq)
{
    static const char *const known[] = { "taskId", "bandwidth", NULL };
    char msg[LSM_RPC_MSG_MAX];
    uint64_t bw;
    int code = lsm_rpc_param_uint(rq->params, "bandwidth", true, UINT64_C(1) << 50, &bw, msg);
    if (code) {
        reply_error(s, c, rq, code, msg, 0);
        return;
    }
    struct task *t = param_task(s, c, rq, known);
    if (!t)
        return;
    if (t->job)
        lsm_job_set_rate_limit(t->job, bw);
    t->rec.bandwidth = bw;
    persist(s, t);
    json_object *res = json_object_new_object();
    json_object_object_add(res, "taskId", json_object_new_string(t->rec.id));
    json_object_object_add(res, "bandwidth", json_object_new_uint64(bw));
    reply_result(s, c, rq, res);
}

static void m_ping(struct server *s, struct client *c, const struct lsm_rpc_req *rq)
{
    json_object *res = json_object_new_object();
    json_object_object_add(res, "version", json_object_new_string(LSM_VERSION));
    json_object_object_add(res, "uptime", jdouble(
                               (double)(lsm_now_ns() - s->start_ns) / 1e9, 1));
    reply_result(s, c, rq, res);
}

static const char *const rpc_methods[] = {
    "cloneImageStructure", "syncImageData", "copyVolume", "checksumVolume", "getTaskStatus",
    "getTaskInfo", "getAllTasksStatuses", "getAllTasksInfo", "stopTask", "clearTask",
    "setTaskBandwidth", "ping", "getCapabilities", NULL,
};

static bool method_available(const char *m)
{
#ifndef HAVE_LIBSODIUM
    if (!strcmp(m, "checksumVolume"))
        return false;
#endif
    return true;
}

static void m_capabilities(struct server *s, struct client *c, const struct lsm_rpc_req *rq)
{
    json_object *res = json_object_new_object(), *a = json_object_new_array();
    for (int i = 0; rpc_methods[i]; i++)
        if (method_available(rpc_methods[i]))
            json_object_array_add(a, json_object_new_string(rpc_methods[i]));
    json_object_object_add(res, "version", json_object_new_string(LSM_VERSION));
    json_object_object_add(res, "methods", a);
    a = json_object_new_array();
    json_object_array_add(a, json_object_new_string("raw"));
    json_object_array_add(a, json_object_new_string("qcow2"));
    json_object_object_add(res, "formats", a);
    a = json_object_new_array();
    json_object_array_add(a, json_object_new_string("ALL"));
    json_object_array_add(a, json_object_new_string("INTERNAL"));
    json_object_array_add(a, json_object_new_string("LEAF"));
    json_object_object_add(res, "syncTypes", a);
#ifdef HAVE_LIBSODIUM
    a = json_object_new_array();
    json_object_array_add(a, json_object_new_string("sha256"));
    json_object_array_add(a, json_object_new_string("blake2b"));
    json_object_object_add(res, "checksumAlgorithms", a);
#endif
    json_object_object_add(res, "maxTasks", json_object_new_int64(s->max_tasks));
    json_object_object_add(res, "maxBandwidth", json_object_new_uint64(s->o->max_bandwidth));
    json_object_object_add(res, "maxRequestBytes", json_object_new_uint64(s->max_request));
    json_object_object_add(res, "persistent", json_object_new_boolean(s->store != NULL));
    json_object_object_add(res, "resume", json_object_new_string(
                               serve_work_has_journal() && s->env.journal_dir ? "journal" : "restart"));
    json_object_object_add(res, "generations", json_object_new_boolean(true));
    a = json_object_new_array();
    for (size_t i = 0; i < s->env.confine.n; i++)
        json_object_array_add(a, lsm_json_string(s->env.confine.roots[i]));
    json_object_object_add(res, "domainRoots", a);
    reply_result(s, c, rq, res);
}

static void dispatch(struct server *s, struct client *c, const char *line, size_t len)
{
    struct lsm_rpc_req rq;
    const char *why = NULL;
    int code = lsm_rpc_parse(line, len, &rq, &why);
    if (code) {
        /* The id, when it could be read, goes back with the error. */
        struct lsm_rpc_req any = { .id = rq.id, .has_id = true };
        reply_error(s, c, &any, code, why, 0);
        lsm_rpc_req_free(&rq);
        return;
    }
    const char *m = rq.method;
    if (serve_is_task_method(m) && method_available(m))
        m_new_task(s, c, &rq);
    else if (!strcmp(m, "getTaskStatus"))
        m_get_status(s, c, &rq, false);
    else if (!strcmp(m, "getTaskInfo"))
        m_get_status(s, c, &rq, true);
    else if (!strcmp(m, "getAllTasksStatuses"))
        m_get_all(s, c, &rq, false);
    else if (!strcmp(m, "getAllTasksInfo"))
        m_get_all(s, c, &rq, true);
    else if (!strcmp(m, "stopTask"))
        m_stop(s, c, &rq);
    else if (!strcmp(m, "clearTask"))
        m_clear(s, c, &rq);
    else if (!strcmp(m, "setTaskBandwidth"))
        m_bandwidth(s, c, &rq);
    else if (!strcmp(m, "ping"))
        m_ping(s, c, &rq);
    else if (!strcmp(m, "getCapabilities"))
        m_capabilities(s, c, &rq);
    else {
        char msg[LSM_RPC_MSG_MAX];
        snprintf(msg, sizeof msg, "no method \"%.64s\"%s", m,
                 serve_is_task_method(m) ? " in this build" : "");
        reply_error(s, c, &rq, LSM_RPC_METHOD_NOT_FOUND, msg, 0);
    }
    lsm_rpc_req_free(&rq);
}

/* ---- Clients ---- */

static void client_close(struct server *s, struct client *c)
{
    /* Read what the peer sent and we did not (a bounded amount): a Unix
     * socket closed with unread data resets the peer, which may then lose
     * the last reply we sent it (the refusal of a uid, say). */
    char sink[4096];
    for (int i = 0; i < 256 && recv(c->fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++)
        ;
    for (struct client **pp = &s->clients; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->rbuf);
    free(c->wbuf);
    free(c);
    s->nclients--;
}

static void client_update_events(struct server *s, struct client *c)
{
    bool want = c->wlen > c->woff;
    if (want == c->want_out && !(c->closing && !c->read_off))
        return;
    /* A closing client is not read any more (its end of file would wake
     * the loop for ever): only what is left to send. */
    uint32_t events = (c->closing ? 0 : EPOLLIN) | (want ? EPOLLOUT : 0);
    struct epoll_event ev = { .events = events, .data.ptr = c };
    epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
    c->read_off = c->closing;
}

static void client_flush(struct server *s, struct client *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            c->closing = true;      /* the peer went away */
            c->woff = c->wlen;
            break;
        }
        c->woff += (size_t)n;
    }
    if (c->woff == c->wlen)
        c->woff = c->wlen = 0;
    client_update_events(s, c);
}

static void client_send(struct server *s, struct client *c, char *line)
{
    if (!line) {
        c->closing = true;          /* out of memory: drop the client, not the service */
        return;
    }
    size_t n = strlen(line);
    if (c->wlen + n + 1 > MAX_WBUF) {
        free(line);
        c->closing = true;
        c->wlen = c->woff = 0;
        return;
    }
    if (c->wlen + n + 1 > c->wcap) {
        size_t cap = MAX(c->wcap * 2, c->wlen + n + 1);
        char *b = realloc(c->wbuf, cap);
        if (!b) {
            free(line);
            c->closing = true;
            return;
        }
        c->wbuf = b;
        c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, line, n);
    c->wbuf[c->wlen + n] = '\n';
    c->wlen += n + 1;
    free(line);
    client_flush(s, c);
}

static bool uid_allowed(struct server *s, uid_t uid)
{
    if (uid == geteuid())
        return true;
    for (size_t i = 0; i < s->o->n_allow; i++)
        if (s->o->allow_uids[i] == uid)
            return true;
    return false;
}

static void accept_clients(struct server *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                slog(s, "accept: %s", strerror(errno));
            return;
        }
        struct ucred cr;
        socklen_t l = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0 || l != sizeof cr) {
            slog(s, "a client without peer credentials: refused");
            close(fd);
            continue;
        }
        bool refused = !uid_allowed(s, cr.uid);
        if (refused)
            slog(s, "client pid %ld uid %ld refused (not the service's uid nor an --allow-uid)",
                 (long)cr.pid, (long)cr.uid);
        if (s->nclients >= LSM_SERVE_MAX_CLIENTS) {
            slog(s, "more than %u clients: one refused", LSM_SERVE_MAX_CLIENTS);
            close(fd);
            continue;
        }
        struct client *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->uid = cr.uid;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = s->clients;
        s->clients = c;
        s->nclients++;
        if (refused) {
            /* One error and the end of our side; what it sends is read and
             * dropped (never taken as a request) until it closes, or for a
             * second at most (on_tick): closing at once with its request
             * unread would reset the connection and could lose the error. */
            c->refused = true;
            c->refused_ns = lsm_now_ns();
            client_send(s, c, lsm_rpc_error(NULL, LSM_RPC_E_ACCESS, "permission denied: uid not allowed", NULL));
            shutdown(c->fd, SHUT_WR);
        }
    }
}

static void client_read(struct server *s, struct client *c)
{
    if (c->refused) {
        char sink[4096];
        for (int i = 0; i < 64; i++) {
            ssize_t n = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                c->closing = true;
                return;
            }
            if (n < 0 && errno == EAGAIN)
                return;
        }
        return;
    }
    for (int rounds = 0; rounds < 16 && !c->closing; rounds++) {
        if (c->rcap - c->rlen < 65536) {
            size_t cap = c->rcap ? c->rcap * 2 : 65536;
            if (cap > s->max_request + 65536)
                cap = s->max_request + 65536;
            if (cap <= c->rcap) {
                cap = c->rcap;
            } else {
                char *b = realloc(c->rbuf, cap);
                if (!b) {
                    c->closing = true;
                    return;
                }
                c->rbuf = b;
                c->rcap = cap;
            }
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                c->closing = true;
            return;
        }
        if (n == 0) {
            c->closing = true;      /* replies already queued are still sent */
            return;
        }
        size_t start = c->rlen;
        c->rlen += (size_t)n;
        /* Every complete line. */
        size_t pos = 0;
        for (size_t i = start; i < c->rlen; i++) {
            if (c->rbuf[i] != '\n')
                continue;
            if (c->discarding) {
                c->discarding = false;
            } else {
                size_t len = i - pos;
                if (len && c->rbuf[pos + len - 1] == '\r')
                    len--;
                bool blank = true;
                for (size_t k = pos; k < pos + len && blank; k++)
                    blank = c->rbuf[k] == ' ' || c->rbuf[k] == '\t';
                if (len > s->max_request) {
                    char msg[96];
                    snprintf(msg, sizeof msg, "request larger than %zu bytes", s->max_request);
                    reply_error(s, c, NULL, LSM_RPC_INVALID_REQUEST, msg, 0);
                } else if (!blank) {
                    dispatch(s, c, c->rbuf + pos, len);
                }
            }
            pos = i + 1;
        }
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
        if (c->rlen > s->max_request) {
            /* No newline within the limit: answer once, skip to the next line. */
            if (!c->discarding) {
                char msg[96];
                snprintf(msg, sizeof msg, "request larger than %zu bytes", s->max_request);
                reply_error(s, c, NULL, LSM_RPC_INVALID_REQUEST, msg, 0);
            }
            c->discarding = true;
            c->rlen = 0;
        }
    }
}

/* ---- The socket ---- */

static int bind_socket(struct server *s, const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path)
        return lsm_error(-ENAMETOOLONG, "socket path %s is longer than %zu bytes", path,
                         sizeof sa.sun_path - 1);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return lsm_error_errno(-errno, "socket");
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            close(fd);
            return lsm_error(-EEXIST, "%s exists and is not a socket", path);
        }
        /* A socket file: in use if someone answers, else left by a service
         * that died, and replaced. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int r = probe >= 0 ? connect(probe, (struct sockaddr *)&sa, sizeof sa) : -1;
        int err = errno;
        if (probe >= 0)
            close(probe);
        if (r == 0 || err != ECONNREFUSED) {
            close(fd);
            return lsm_error(-EADDRINUSE, "%s: another service is listening there", path);
        }
        unlink(path);
    }
    mode_t old = umask(0177);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    umask(old);
    if (r < 0) {
        close(fd);
        return lsm_error_errno(-err, "cannot bind %s", path);
    }
    if (lstat(path, &st) == 0) {
        s->sock_dev = st.st_dev;
        s->sock_ino = st.st_ino;
    }
    s->own_socket = true;
    if (s->o->have_group && (chown(path, (uid_t)-1, s->o->group) < 0 || chmod(path, 0660) < 0)) {
        err = errno;
        close(fd);
        unlink(path);
        return lsm_error_errno(-err, "cannot give %s to group %ld", path, (long)s->o->group);
    }
    if (listen(fd, 64) < 0) {
        err = errno;
        close(fd);
        unlink(path);
        return lsm_error_errno(-err, "cannot listen on %s", path);
    }
    return fd;
}

static int check_listen_fd(int fd)
{
    int type = 0, acc = 0;
    socklen_t l = sizeof type;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0 || type != SOCK_STREAM)
        return lsm_error(-ENOTSOCK, "the socket passed by the service manager is not a stream socket");
    l = sizeof acc;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) < 0 || !acc)
        return lsm_error(-EINVAL, "the socket passed by the service manager is not listening");
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 || ss.ss_family != AF_UNIX)
        return lsm_error(-EAFNOSUPPORT, "the socket passed by the service manager is not a Unix socket");
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return lsm_error_errno(-errno, "the socket passed by the service manager");
    return 0;
}

/* ---- Restart ---- */

static void load_one(void *opaque, struct lsm_task_record *r)
{
    struct server *s = opaque;
    struct task *t = calloc(1, sizeof *t);
    if (!t) {
        lsm_task_record_free(r);
        return;
    }
    t->rec = *r;
    memset(r, 0, sizeof *r);
    t->next = s->tasks;
    s->tasks = t;
}

static void load_bad(void *opaque, const char *name, const char *msg)
{
    struct server *s = opaque;
    slog(s, "state directory: task record %s left as it is: %s", name, msg);
}

static void resume_tasks(struct server *s)
{
    for (struct task *t = s->tasks; t; t = t->next) {
        if (final_state(t->rec.state))
            continue;
        if (t->rec.state == LSM_JOB_ABORTING) {
            t->rec.state = LSM_JOB_ABORTED;
            t->rec.error = -ECANCELED;
            snprintf(t->rec.message, sizeof t->rec.message,
                     "stopped: the service ended while the task was being stopped");
            t->rec.finished = now_s();
            persist(s, t);
            continue;
        }
        if (running_tasks(s) >= s->max_tasks) {
            t->rec.state = LSM_JOB_FAILED;
            t->rec.error = -EBUSY;
            snprintf(t->rec.message, sizeof t->rec.message,
                     "not restarted after the service stopped: --max-tasks tasks were running");
            t->rec.finished = now_s();
            persist(s, t);
            continue;
        }
        _cleanup_free_ char *journal = serve_work_journal_path(&s->env, t->rec.id);
        struct stat jb;
        bool from_journal = serve_work_has_journal() && journal && stat(journal, &jb) == 0;
        snprintf(t->rec.message, sizeof t->rec.message, from_journal
                 ? "the service stopped during run %u; continued from its journal"
                 : "the service stopped during run %u; restarted from the beginning (no journal)",
                 t->rec.runs);
        char msg[LSM_RPC_MSG_MAX];
        int code = start_task(s, t, true, false, msg);
        if (code < 0 && !final_state(t->rec.state)) {
            t->rec.state = LSM_JOB_FAILED;
            t->rec.error = -EINVAL;
            snprintf(t->rec.message, sizeof t->rec.message, "cannot restart: %s", msg);
            t->rec.finished = now_s();
            persist(s, t);
        }
        slog(s, "task %s: %s", t->rec.id, code < 0 ? t->rec.message : "restarted");
    }
}

/* ---- The loop ---- */

static void on_tick(struct server *s)
{
    uint64_t now = lsm_now_ns();
    for (struct task *t = s->tasks; t; t = t->next)
        watch_task(s, t, now);
    for (struct client *c = s->clients, *next; c; c = next) {
        next = c->next;
        if (c->refused && now - c->refused_ns > 1000000000ULL)
            client_close(s, c);
    }
}

static void shutdown_tasks(struct server *s)
{
    /* Stop the work but keep the records as they are (running): the next
     * start runs them again. */
    for (struct task *t = s->tasks; t; t = t->next)
        if (t->job)
            lsm_job_cancel(t->job);
    for (struct task *t = s->tasks; t; t = t->next) {
        if (t->job) {
            lsm_job_wait(t->job, -1);
            lsm_job_free(t->job);
            t->job = NULL;
            t->work = NULL;
        }
    }
}

static void cleanup_server(struct server *s)
{
    while (s->clients)
        client_close(s, s->clients);
    while (s->tasks) {
        struct task *t = s->tasks;
        s->tasks = t->next;
        free_task(t);
    }
    if (s->own_socket && s->o->socket_path) {
        struct stat st;
        if (lstat(s->o->socket_path, &st) == 0 && st.st_dev == s->sock_dev && st.st_ino == s->sock_ino)
            unlink(s->o->socket_path);
    }
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->sfd >= 0)
        close(s->sfd);
    if (s->tfd >= 0)
        close(s->tfd);
    if (s->ep >= 0)
        close(s->ep);
    if (s->lockfd >= 0)
        close(s->lockfd);
    lsm_store_close(s->store);
    lsm_confine_free(&s->env.confine);
    lsm_limiter_free(s->global);
    free(s->journal_dir);
}

int lsm_serve_run(const struct lsm_serve_opts *o)
{
    struct server srv = { .o = o, .ep = -1, .lfd = -1, .sfd = -1, .tfd = -1, .lockfd = -1 };
    struct server *s = &srv;
    int r;
    s->start_ns = lsm_now_ns();
    s->max_tasks = o->max_tasks ? o->max_tasks : LSM_SERVE_MAX_TASKS;
    s->stall_timeout = o->stall_timeout ? o->stall_timeout : LSM_SERVE_STALL_TIMEOUT;
    s->max_request = o->max_request ? o->max_request : LSM_SERVE_MAX_REQUEST;
    /* Half of a task's share for its copy buffers: the other half is for
     * the metadata caches of its chain, which come from the same budget
     * (flows/copy.c). */
    s->env.buffer_size = o->memory ? o->memory / s->max_tasks / 2 : 0;
    s->env.checkpoint_bytes = o->checkpoint_bytes;
    s->env.checkpoint_ms = o->checkpoint_ms;
    if (s->env.buffer_size > 32 * MiB)
        s->env.buffer_size = 32 * MiB;
    if (o->memory)
        lsm_budget_init(o->memory);
    for (size_t i = 0; i < o->n_roots; i++) {
        if ((r = lsm_confine_add_root(&s->env.confine, o->roots[i])) < 0)
            goto fail;
    }
    if ((r = lsm_limiter_create(o->max_bandwidth, NULL, &s->global)) < 0)
        goto fail;
    if (o->state_dir) {
        if ((r = lsm_store_open(o->state_dir, &s->store)) < 0)
            goto fail;
        if (serve_work_has_journal()) {
            if (asprintf(&s->journal_dir, "%s/journals", o->state_dir) < 0) {
                r = lsm_error(-ENOMEM, "out of memory");
                goto fail;
            }
            if (mkdir(s->journal_dir, 0700) < 0 && errno != EEXIST) {
                r = lsm_error_errno(-errno, "cannot create %s", s->journal_dir);
                goto fail;
            }
            s->env.journal_dir = s->journal_dir;
        }
        /* One service per state directory. */
        _cleanup_free_ char *lock = NULL;
        if (asprintf(&lock, "%s/lock", o->state_dir) < 0) {
            r = lsm_error(-ENOMEM, "out of memory");
            goto fail;
        }
        s->lockfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (s->lockfd < 0) {
            r = lsm_error_errno(-errno, "cannot open %s", lock);
            goto fail;
        }
        if (flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
            r = errno == EWOULDBLOCK ? lsm_error(-EBUSY, "%s: another service uses this state directory", o->state_dir)
                                     : lsm_error_errno(-errno, "cannot lock %s", lock);
            goto fail;
        }
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    s->sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    if (s->sfd < 0 || s->tfd < 0 || s->ep < 0) {
        r = lsm_error_errno(-errno, "cannot set up the event loop");
        goto fail;
    }
    struct itimerspec its = { .it_interval = { 0, TICK_MS * 1000000L }, .it_value = { 0, TICK_MS * 1000000L } };
    timerfd_settime(s->tfd, 0, &its, NULL);
    if (o->listen_fd >= 0) {
        if ((r = check_listen_fd(o->listen_fd)) < 0)
            goto fail;
        s->lfd = o->listen_fd;
    } else {
        if ((r = bind_socket(s, o->socket_path)) < 0)
            goto fail;
        s->lfd = r;
    }
    /* The records of the last run, and the tasks it left unfinished. */
    if (s->store) {
        if ((r = lsm_store_load(s->store, load_one, load_bad, s)) < 0)
            goto fail;
        resume_tasks(s);
    }
    {
        unsigned n = 0;
        for (struct task *t = s->tasks; t; t = t->next)
            n++;
        slog(s, "listening on %s; %u task%s recorded", o->listen_fd >= 0 ? "the socket from the service manager"
             : o->socket_path, n, n == 1 ? "" : "s");
    }
    static char lkey, skey, tkey;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &lkey };
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->lfd, &ev);
    ev.data.ptr = &skey;
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->sfd, &ev);
    ev.data.ptr = &tkey;
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->tfd, &ev);

    while (!s->stop) {
        struct epoll_event evs[32];
        int n = epoll_wait(s->ep, evs, 32, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = lsm_error_errno(-errno, "epoll_wait");
            goto fail;
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &lkey) {
                accept_clients(s);
            } else if (p == &skey) {
                struct signalfd_siginfo si;
                while (read(s->sfd, &si, sizeof si) == (ssize_t)sizeof si)
                    if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                        s->stop = true;
            } else if (p == &tkey) {
                uint64_t ticks;
                while (read(s->tfd, &ticks, sizeof ticks) == (ssize_t)sizeof ticks)
                    ;
                on_tick(s);
            } else {
                struct client *c = p;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    client_read(s, c);
                if (evs[i].events & EPOLLOUT)
                    client_flush(s, c);
                if (c->closing && c->wlen == c->woff)
                    client_close(s, c);
                else if (c->closing)
                    client_update_events(s, c);
            }
        }
    }
    slog(s, "stopping: running tasks stop now and run again at the next start");
    shutdown_tasks(s);
    cleanup_server(s);
    return 0;
fail:
    shutdown_tasks(s);
    cleanup_server(s);
    return r;
}
