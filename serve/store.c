/* The service's state directory (store.h). */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "rpc.h"
#include "store.h"

static const char *const state_names[] = {
    [LSM_JOB_INIT] = "init",         [LSM_JOB_RUNNING] = "running",
    [LSM_JOB_ABORTING] = "aborting", [LSM_JOB_FINISHED] = "finished",
    [LSM_JOB_ABORTED] = "aborted",   [LSM_JOB_FAILED] = "failed",
};

int lsm_created_file_get(const char *path, struct lsm_created_file *out)
{
    struct statx sx;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_INO | STATX_BTIME, &sx) < 0)
        return -errno;
    out->dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    out->ino = sx.stx_ino;
    out->btime_ns = (sx.stx_mask & STATX_BTIME)
                        ? (int64_t)sx.stx_btime.tv_sec * 1000000000 + sx.stx_btime.tv_nsec : 0;
    if (out->btime_ns < 0)
        out->btime_ns = 0;
    return 0;
}

bool lsm_created_file_is(const char *path, const struct lsm_created_file *f)
{
    struct lsm_created_file now;
    if (f->btime_ns == 0 || lsm_created_file_get(path, &now) < 0)
        return false;
    return now.dev == f->dev && now.ino == f->ino && now.btime_ns == f->btime_ns;
}

const char *lsm_task_state_name(enum lsm_job_state s)
{
    if ((unsigned)s < sizeof state_names / sizeof state_names[0] && state_names[s])
        return state_names[s];
    return "unknown";
}

int lsm_task_state_parse(const char *s, enum lsm_job_state *out)
{
    for (unsigned i = 0; i < sizeof state_names / sizeof state_names[0]; i++) {
        if (state_names[i] && !strcmp(s, state_names[i])) {
            *out = (enum lsm_job_state)i;
            return 0;
        }
    }
    return -EINVAL;
}

void lsm_task_record_free(struct lsm_task_record *r)
{
    if (r->params)
        json_object_put(r->params);
    if (r->progress)
        json_object_put(r->progress);
    if (r->result)
        json_object_put(r->result);
    memset(r, 0, sizeof *r);
}

json_object *lsm_task_record_to_json(const struct lsm_task_record *r)
{
    json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "version", json_object_new_int(LSM_TASK_RECORD_VERSION));
    json_object_object_add(o, "taskId", json_object_new_string(r->id));
    json_object_object_add(o, "method", json_object_new_string(r->method));
    json_object_object_add(o, "params", r->params ? json_object_get(r->params) : json_object_new_object());
    json_object_object_add(o, "state", json_object_new_string(lsm_task_state_name(r->state)));
    json_object_object_add(o, "created", json_object_new_int64(r->created));
    json_object_object_add(o, "started", json_object_new_int64(r->started));
    json_object_object_add(o, "finished", json_object_new_int64(r->finished));
    json_object_object_add(o, "runs", json_object_new_int64(r->runs));
    json_object_object_add(o, "bandwidth", json_object_new_uint64(r->bandwidth));
    json_object_object_add(o, "error", json_object_new_int(r->error));
    json_object_object_add(o, "message", json_object_new_string(r->message));
    if (r->progress)
        json_object_object_add(o, "progress", json_object_get(r->progress));
    if (r->result)
        json_object_object_add(o, "result", json_object_get(r->result));
    if (r->have_created) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "dev", json_object_new_uint64(r->created_file.dev));
        json_object_object_add(c, "ino", json_object_new_uint64(r->created_file.ino));
        json_object_object_add(c, "btime_ns", json_object_new_int64(r->created_file.btime_ns));
        json_object_object_add(o, "createdFile", c);
    }
    return o;
}

static int get_typed(json_object *o, const char *key, json_type t, bool required, json_object **v)
{
    if (!json_object_object_get_ex(o, key, v) || !*v) {
        if (required)
            return lsm_error(-EINVAL, "task record: \"%s\" is missing", key);
        return 1;
    }
    if (!json_object_is_type(*v, t))
        return lsm_error(-EINVAL, "task record: \"%s\" has the wrong type", key);
    return 0;
}

static int get_i64(json_object *o, const char *key, int64_t min, int64_t max, int64_t *out)
{
    json_object *v;
    int r = get_typed(o, key, json_type_int, true, &v);
    if (r)
        return r;
    errno = 0;
    int64_t x = json_object_get_int64(v);
    if (errno || x < min || x > max)
        return lsm_error(-EINVAL, "task record: \"%s\" is out of range", key);
    *out = x;
    return 0;
}

static int get_u64(json_object *o, const char *key, uint64_t *out)
{
    json_object *v;
    int r = get_typed(o, key, json_type_int, true, &v);
    if (r)
        return r;
    if (json_object_get_int64(v) < 0 && json_object_get_uint64(v) <= (uint64_t)INT64_MAX)
        return lsm_error(-EINVAL, "task record: \"%s\" is negative", key);
    *out = json_object_get_uint64(v);
    return 0;
}

static int copy_string(json_object *o, const char *key, char *buf, size_t size, bool required)
{
    json_object *v;
    int r = get_typed(o, key, json_type_string, required, &v);
    if (r)
        return r < 0 ? r : 0;
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    if (n >= size || strlen(s) != n)
        return lsm_error(-EINVAL, "task record: \"%s\" is too long or holds a NUL", key);
    memcpy(buf, s, n + 1);
    return 0;
}

int lsm_task_record_parse(const char *buf, size_t len, struct lsm_task_record *out)
{
    memset(out, 0, sizeof *out);
    if (len > LSM_TASK_RECORD_MAX)
        return lsm_error(-EFBIG, "task record: larger than %u bytes", LSM_TASK_RECORD_MAX);
    if (memchr(buf, '\0', len))
        return lsm_error(-EINVAL, "task record: NUL byte");
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return lsm_error(-ENOMEM, "task record: out of memory");
    json_object *o = json_tokener_parse_ex(tok, buf, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    if (!o || jerr != json_tokener_success) {
        if (o)
            json_object_put(o);
        return lsm_error(-EINVAL, "task record: not valid JSON");
    }
    int r = -EINVAL;
    json_object *v;
    int64_t i;
    if (!json_object_is_type(o, json_type_object)) {
        lsm_error(-EINVAL, "task record: not a JSON object");
        goto out;
    }
    if ((r = get_i64(o, "version", 0, INT32_MAX, &i)) < 0)
        goto out;
    if (i != LSM_TASK_RECORD_VERSION) {
        r = lsm_error(-EINVAL, "task record: version %" PRId64 " (this lsm-sync reads %d)", i,
                      LSM_TASK_RECORD_VERSION);
        goto out;
    }
    if ((r = copy_string(o, "taskId", out->id, sizeof out->id, true)) < 0)
        goto out;
    if (!lsm_rpc_valid_task_id(out->id)) {
        r = lsm_error(-EINVAL, "task record: invalid task id");
        goto out;
    }
    if ((r = copy_string(o, "method", out->method, sizeof out->method, true)) < 0)
        goto out;
    if ((r = get_typed(o, "params", json_type_object, true, &v)) < 0)
        goto out;
    out->params = json_object_get(v);
    char state[16];
    if ((r = copy_string(o, "state", state, sizeof state, true)) < 0)
        goto out;
    if (lsm_task_state_parse(state, &out->state) < 0) {
        r = lsm_error(-EINVAL, "task record: unknown state");
        goto out;
    }
    if ((r = get_i64(o, "created", 0, INT64_MAX, &out->created)) < 0
        || (r = get_i64(o, "started", 0, INT64_MAX, &out->started)) < 0
        || (r = get_i64(o, "finished", 0, INT64_MAX, &out->finished)) < 0)
        goto out;
    if ((r = get_i64(o, "runs", 0, UINT_MAX, &i)) < 0)
        goto out;
    out->runs = (unsigned)i;
    if ((r = get_u64(o, "bandwidth", &out->bandwidth)) < 0)
        goto out;
    if ((r = get_i64(o, "error", -4095, 0, &i)) < 0)
        goto out;
    out->error = (int)i;
    if ((r = copy_string(o, "message", out->message, sizeof out->message, true)) < 0)
        goto out;
    if ((r = get_typed(o, "progress", json_type_object, false, &v)) < 0)
        goto out;
    if (r == 0)
        out->progress = json_object_get(v);
    if ((r = get_typed(o, "result", json_type_object, false, &v)) < 0)
        goto out;
    if (r == 0)
        out->result = json_object_get(v);
    if ((r = get_typed(o, "createdFile", json_type_object, false, &v)) < 0)
        goto out;
    if (r == 0) {
        if ((r = get_u64(v, "dev", &out->created_file.dev)) < 0 || (r = get_u64(v, "ino", &out->created_file.ino)) < 0
            || (r = get_i64(v, "btime_ns", 0, INT64_MAX, &out->created_file.btime_ns)) < 0)
            goto out;
        out->have_created = true;
    }
    r = 0;
out:
    json_object_put(o);
    if (r < 0)
        lsm_task_record_free(out);
    return r;
}

struct lsm_store {
    int dirfd;      /* DIR/tasks */
    char *path;
};

static bool is_tmp_name(const char *n)
{
    size_t l = strlen(n);
    return n[0] == '.' && l > 9 && !strcmp(n + l - 9, ".json.tmp");
}

int lsm_store_open(const char *dir, struct lsm_store **out)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return lsm_error_errno(-errno, "cannot create the state directory %s", dir);
    _cleanup_free_ char *tasks = NULL;
    if (asprintf(&tasks, "%s/tasks", dir) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    if (mkdir(tasks, 0700) < 0 && errno != EEXIST)
        return lsm_error_errno(-errno, "cannot create %s", tasks);
    _cleanup_close_ int fd = open(tasks, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open %s", tasks);
    /* Remove the temporary files an interrupted write left. */
    int dfd = dup(fd);
    if (dfd < 0)
        return lsm_error_errno(-errno, "cannot read %s", tasks);
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return lsm_error_errno(-errno, "cannot read %s", tasks);
    }
    struct dirent *de;
    while ((de = readdir(d)))
        if (is_tmp_name(de->d_name))
            unlinkat(fd, de->d_name, 0);
    closedir(d);
    struct lsm_store *s = calloc(1, sizeof *s);
    if (!s)
        return lsm_error(-ENOMEM, "out of memory");
    s->path = LSM_STEAL(tasks);
    s->dirfd = LSM_STEAL_FD(fd);
    *out = s;
    return 0;
}

void lsm_store_close(struct lsm_store *s)
{
    if (!s)
        return;
    close(s->dirfd);
    free(s->path);
    free(s);
}

static int write_at(int dirfd, const char *dirname, const char *tmp, const char *name,
                    const void *buf, size_t len, unsigned mode)
{
    _cleanup_close_ int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot create %s/%s", dirname, tmp);
    ssize_t w = lsm_pwrite_all(fd, buf, len, 0);
    int r = 0;
    if (w < 0 || (size_t)w != len)
        r = lsm_error_errno(w < 0 ? (int)w : -EIO, "cannot write %s/%s", dirname, tmp);
    else if (fsync(fd) < 0)
        r = lsm_error_errno(-errno, "cannot fsync %s/%s", dirname, tmp);
    else if (renameat(dirfd, tmp, dirfd, name) < 0)
        r = lsm_error_errno(-errno, "cannot rename %s/%s to %s", dirname, tmp, name);
    else if (fsync(dirfd) < 0)
        r = lsm_error_errno(-errno, "cannot fsync %s", dirname);
    if (r < 0)
        unlinkat(dirfd, tmp, 0);
    return r;
}

int lsm_store_write(struct lsm_store *s, const struct lsm_task_record *r)
{
    json_object *o = lsm_task_record_to_json(r);
    if (!o)
        return lsm_error(-ENOMEM, "out of memory");
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char name[LSM_TASK_ID_MAX + 16], tmp[LSM_TASK_ID_MAX + 16];
    snprintf(name, sizeof name, "%s.json", r->id);
    snprintf(tmp, sizeof tmp, ".%s.json.tmp", r->id);
    int ret;
    size_t len = text ? strlen(text) : 0;
    if (!text)
        ret = lsm_error(-ENOMEM, "out of memory");
    else if (len > LSM_TASK_RECORD_MAX)
        ret = lsm_error(-EFBIG, "task %s: record larger than %u bytes", r->id, LSM_TASK_RECORD_MAX);
    else
        ret = write_at(s->dirfd, s->path, tmp, name, text, len, 0600);
    json_object_put(o);
    return ret;
}

int lsm_store_remove(struct lsm_store *s, const char *id)
{
    char name[LSM_TASK_ID_MAX + 16];
    snprintf(name, sizeof name, "%s.json", id);
    if (unlinkat(s->dirfd, name, 0) < 0) {
        if (errno == ENOENT)
            return 0;
        return lsm_error_errno(-errno, "cannot remove %s/%s", s->path, name);
    }
    if (fsync(s->dirfd) < 0)
        return lsm_error_errno(-errno, "cannot fsync %s", s->path);
    return 0;
}

int lsm_store_load(struct lsm_store *s,
                   void (*fn)(void *opaque, struct lsm_task_record *r),
                   void (*bad)(void *opaque, const char *name, const char *msg), void *opaque)
{
    int dfd = dup(s->dirfd);
    if (dfd < 0)
        return lsm_error_errno(-errno, "cannot read %s", s->path);
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return lsm_error_errno(-errno, "cannot read %s", s->path);
    }
    rewinddir(d);
    struct dirent *de;
    char *buf = malloc(LSM_TASK_RECORD_MAX + 1);
    if (!buf) {
        closedir(d);
        return lsm_error(-ENOMEM, "out of memory");
    }
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (de->d_name[0] == '.' || l < 6 || strcmp(de->d_name + l - 5, ".json"))
            continue;
        int fd = openat(s->dirfd, de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0) {
            lsm_error_errno(-errno, "cannot open");
            bad(opaque, de->d_name, lsm_last_error());
            continue;
        }
        struct stat st;
        ssize_t n = -EINVAL;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
            n = lsm_pread_all(fd, buf, LSM_TASK_RECORD_MAX + 1, 0);
        close(fd);
        struct lsm_task_record rec;
        if (n < 0) {
            bad(opaque, de->d_name, "not a readable regular file");
            continue;
        }
        if (lsm_task_record_parse(buf, (size_t)n, &rec) < 0) {
            bad(opaque, de->d_name, lsm_last_error());
            continue;
        }
        char want[LSM_TASK_ID_MAX + 16];
        snprintf(want, sizeof want, "%s.json", rec.id);
        if (strcmp(want, de->d_name)) {
            bad(opaque, de->d_name, "the task id inside is not the file's name");
            lsm_task_record_free(&rec);
            continue;
        }
        fn(opaque, &rec);
    }
    free(buf);
    closedir(d);
    return 0;
}

int lsm_write_file_atomic(const char *path, const void *buf, size_t len, unsigned mode)
{
    _cleanup_free_ char *dir = strdup(path);
    if (!dir)
        return lsm_error(-ENOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    const char *name = path;
    if (slash) {
        name = path + (slash - dir) + 1;
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
    } else {
        strcpy(dir, ".");
    }
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return lsm_error_errno(-errno, "cannot open the directory of %s", path);
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, ".%s.tmp-%ld", name, (long)getpid()) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    return write_at(dfd, dir, tmp, name, buf, len, mode);
}
