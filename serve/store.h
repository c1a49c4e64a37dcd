/* The service's state directory: one JSON record per task, written
 * atomically (a temporary file in the same directory, fsync, rename over
 * the record, fsync of the directory), so that after a SIGKILL, a crash or
 * a power loss each task's record is either the previous one or the new
 * one, never a mix.
 *
 *   DIR/tasks/ID.json       the record of task ID (lsm_task_record)
 *   DIR/tasks/.ID.json.tmp  a write in progress (removed at open: only this
 *                           store writes names of that shape here)
 *
 * Library layer: never prints. */
#ifndef LSM_SERVE_STORE_H
#define LSM_SERVE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>

#include "job.h"

#define LSM_TASK_ID_MAX 64
#define LSM_TASK_RECORD_MAX (1u << 20)    /* bytes: larger records are refused */
#define LSM_TASK_RECORD_VERSION 1

/* A file by identity: device, inode and birth time (statx btime), so that
 * a file made later with a reused inode number is not taken for it. */
struct lsm_created_file {
    uint64_t dev, ino;
    int64_t btime_ns;          /* 0: the file system keeps no birth time */
};
/* The identity of path itself (a symlink is not followed): 0, or -errno
 * (no message recorded). */
int lsm_created_file_get(const char *path, struct lsm_created_file *out);
/* True only if path is that file, birth time included (never when the file
 * system has no birth time). */
bool lsm_created_file_is(const char *path, const struct lsm_created_file *f);

/* What a task's record holds. */
struct lsm_task_record {
    char id[LSM_TASK_ID_MAX + 1];
    char method[32];               /* copyVolume, syncImageData, ... */
    json_object *params;           /* the request's params, as validated (owned) */
    enum lsm_job_state state;      /* as last recorded */
    int64_t created, started, finished;   /* unix seconds; 0: not yet */
    unsigned runs;                 /* times the work was started (1 + restarts) */
    uint64_t bandwidth;            /* the task's own limit, bytes/s (0: none) */
    int error;                     /* FAILED: -errno */
    char message[512];             /* FAILED, or a note ("restarted from zero ...") */
    json_object *progress;         /* the last progress snapshot (owned, may be NULL) */
    json_object *result;           /* FINISHED: the method's result (owned, may be NULL) */
    /* The destination file this task created, once it exists (so that a
     * restart may replace it, and clearTask remove it, and only it). */
    bool have_created;
    struct lsm_created_file created_file;
};

void lsm_task_record_free(struct lsm_task_record *r);
/* The record as JSON (new object), and back.  Parsing checks every member's
 * type and range: -EINVAL with a message for anything else. */
json_object *lsm_task_record_to_json(const struct lsm_task_record *r);
int lsm_task_record_parse(const char *buf, size_t len, struct lsm_task_record *out);

const char *lsm_task_state_name(enum lsm_job_state s);
int lsm_task_state_parse(const char *s, enum lsm_job_state *out);

struct lsm_store;
/* Open (creating DIR and DIR/tasks, mode 0700, when missing) and remove
 * leftover temporary files. */
int lsm_store_open(const char *dir, struct lsm_store **out);
void lsm_store_close(struct lsm_store *s);
int lsm_store_write(struct lsm_store *s, const struct lsm_task_record *r);
/* Remove ID's record (and make the removal durable).  Absent: 0. */
int lsm_store_remove(struct lsm_store *s, const char *id);
/* Call fn for every record, in no order; fn takes over the record's
 * members (free them with lsm_task_record_free).  A record that cannot be
 * read or parsed is passed to bad (its name and the message) and left in
 * place. */
int lsm_store_load(struct lsm_store *s,
                   void (*fn)(void *opaque, struct lsm_task_record *r),
                   void (*bad)(void *opaque, const char *name, const char *msg), void *opaque);

/* Atomic replace of a small file by path: PATH.tmp-PID beside it, fsync,
 * rename, fsync of the directory.  Used for the volume generations too. */
int lsm_write_file_atomic(const char *path, const void *buf, size_t len, unsigned mode);

#endif
