/* The work of the service's tasks: one function per method, run as a job
 * (engine/job.h) on its own thread.
 *
 *   serve_work_prepare()  on the service's loop: check and copy a request's
 *                         params (types, formats, paths under the domain
 *                         roots, the destination's generation); cheap, no
 *                         image is opened
 *   serve_work_run()      the job's function: the chain checks under the
 *                         domain roots, the copy/checksum/clone/sync, the
 *                         generation bump; progress through the job
 *
 * What the work leaves for the loop to persist (the file it created, its
 * result) sits under the work's mutex: serve_work_take_*.
 *
 * Library layer: never prints. */
#ifndef LSM_SERVE_WORK_H
#define LSM_SERVE_WORK_H

#include <stdbool.h>
#include <stdint.h>
#include <json-c/json.h>

#include "confine.h"
#include "job.h"

struct serve_work;

/* What every task shares. */
struct serve_env {
    struct lsm_confine confine;
    uint64_t buffer_size;        /* each copy's buffers (bytes) */
    const char *journal_dir;     /* STATE/journals, or NULL: copies keep no journal */
    uint64_t checkpoint_bytes;   /* journal checkpoints (0: the engine's defaults) */
    unsigned checkpoint_ms;
};

/* Copies and syncs keep a journal (engine/copy.h's journal and resume;
 * flows/sync.h's, with a copy journal per volume beside it), so that a
 * restarted or re-submitted copy or sync continues from what was durable. */
bool serve_work_has_journal(void);
/* The journal of task id (malloc'd), or NULL without a journal dir. */
char *serve_work_journal_path(const struct serve_env *env, const char *id);
/* Remove the journal of task id and the volume journals of a sync beside
 * it (JOURNAL.N).  0, or -errno (with a message) for the first that could
 * not be removed; none there is 0. */
int serve_work_remove_journals(const struct serve_env *env, const char *id);

/* The methods that make tasks. */
extern const char *const serve_task_methods[];   /* NULL-terminated */
bool serve_is_task_method(const char *method);

/* Check params of method (a task method) and make the work.  Returns 0, or
 * an RPC error code (rpc.h) with msg (LSM_RPC_MSG_MAX bytes).  resumed: the
 * task ran before (the service stopped during it, or it is re-submitted
 * after it failed or was stopped): the work continues from its journal when
 * there is one, else may replace the destination file this task created
 * (created).  check_gen: check the expected generation now (a new
 * or re-submitted task; a task restarted after the service stopped was
 * checked when it was accepted). */
struct lsm_task_record;
int serve_work_prepare(const struct serve_env *env, const struct lsm_task_record *rec,
                       bool resumed, bool check_gen, struct serve_work **out, char *msg);
void serve_work_free(void *work);
/* The job function (arg: the work). */
int serve_work_run(struct lsm_job *job, void *work);
/* The bandwidth the params asked for (0: none). */
uint64_t serve_work_bandwidth(const struct serve_work *w);

/* The destination file the work created, once it exists: true once (the
 * loop records it). */
struct lsm_created_file;
bool serve_work_take_created(struct serve_work *w, struct lsm_created_file *f);
/* The result (a new reference, or NULL) and a note for the record. */
json_object *serve_work_result(struct serve_work *w);

#endif
