/* lsm-sync serve: the storage pool manager's worker, a JSON-RPC 2.0
 * service on a Unix stream socket (docs/serve.md).
 *
 * One thread runs the loop (epoll): the listening socket, every client,
 * a timer that watches the tasks, and the termination signals.  Nothing
 * on it waits on a task: each task is a job (engine/job.h) on its own
 * thread, and the loop only takes status snapshots, cancels, changes
 * limits and joins jobs that have returned.  What the loop does that may
 * take a moment: the fsync of a task's record (state changes only) and
 * the realpath/stat of a request's paths.
 *
 * Library layer: never prints; what the service has to say (a client
 * refused, a record that cannot be read) goes to opts->log.
 */
#ifndef LSM_SERVE_SERVER_H
#define LSM_SERVE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

#define LSM_SERVE_MAX_REQUEST   (1u << 20)    /* bytes per request line */
#define LSM_SERVE_MAX_CLIENTS   128
#define LSM_SERVE_MAX_TASKS     64            /* --max-tasks default */
#define LSM_SERVE_STALL_TIMEOUT 600           /* seconds without progress */

struct lsm_serve_opts {
    const char *socket_path;     /* bind here (unless listen_fd >= 0) */
    int listen_fd;               /* socket activation: a listening socket, or -1 */
    const char *state_dir;       /* NULL: tasks are not persisted */
    bool have_group;
    gid_t group;                 /* socket 0660 with this group */
    const uid_t *allow_uids;     /* besides the service's own uid */
    size_t n_allow;
    const char *const *roots;    /* --domain-root */
    size_t n_roots;
    unsigned max_tasks;          /* running at once (0: LSM_SERVE_MAX_TASKS) */
    uint64_t max_bandwidth;      /* bytes/s for all tasks together (0: unlimited) */
    uint64_t memory;             /* bytes for all copy buffers (0: 32 MiB per task) */
    unsigned stall_timeout;      /* seconds (0: LSM_SERVE_STALL_TIMEOUT; UINT32_MAX: never) */
    size_t max_request;          /* bytes (0: LSM_SERVE_MAX_REQUEST) */
    uint64_t checkpoint_bytes;   /* copies' journal checkpoints (0: the engine's 1 GiB) */
    unsigned checkpoint_ms;      /* (0: the engine's 5 s) */
    void (*log)(void *opaque, const char *msg);
    void *log_opaque;
};

/* Run until SIGTERM or SIGINT (blocked in the calling thread and read from
 * a signalfd; call before starting other threads).  Returns 0 after a
 * clean stop (running tasks are stopped and stay recorded as running, so
 * that the next start resumes them) or -errno with a message when the
 * service cannot start. */
int lsm_serve_run(const struct lsm_serve_opts *o);

#endif
