/* The work of the service's tasks (work.h). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "chain.h"
#include "cleanup.h"
#include "confine.h"
#include "copy.h"
#include "error.h"
#include "generation.h"
#include "image.h"
#include "json-util.h"
#include "limiter.h"
#include "rpc.h"
#include "store.h"
#include "clone.h"
#include "fileio.h"
#include "sync.h"
#include "util.h"
#include "work.h"
#ifdef HAVE_LIBSODIUM
#include "checksum.h"
#endif

enum method { M_COPY, M_CHECKSUM, M_CLONE, M_SYNC };

const char *const serve_task_methods[] = {
    [M_COPY] = "copyVolume",
    [M_CHECKSUM] = "checksumVolume",
    [M_CLONE] = "cloneImageStructure",
    [M_SYNC] = "syncImageData",
    NULL,
};

bool serve_is_task_method(const char *method)
{
    for (int i = 0; serve_task_methods[i]; i++)
        if (!strcmp(method, serve_task_methods[i]))
            return true;
    return false;
}

static const char *const formats[] = { "raw", "qcow2", NULL };
static const enum lsm_format format_of[] = { LSM_FMT_RAW, LSM_FMT_QCOW2 };

struct serve_work {
    pthread_mutex_t mu;
    enum method method;
    const struct serve_env *env;
    struct lsm_job *job;

    char *src, *dst, *backing;   /* resolved (backing: as given, written into dst) */
    enum lsm_format src_fmt, dst_fmt, backing_fmt;
    bool create, force_share;
    bool have_gen;
    uint64_t gen;
    bool want_checksum;
    int alg;                     /* enum lsm_blkhash_alg */
    uint32_t block_size;
    uint64_t bandwidth;
    char *dst_dir, *dst_vg;      /* clone */
    bool reuse;
    int sync_type;               /* enum lsm_sync_type */
    json_object *volumes;        /* an explicit layout (docs/chains.md's job file), resolved */

    bool resumed, check_gen;
    char *journal;               /* this task's journal (copies, syncs), or NULL */
    char *id;                    /* the task's id */
    bool have_created;           /* the record's createdFile */
    struct lsm_created_file created;

    /* Outputs, under mu. */
    bool created_known, created_taken;
    struct lsm_created_file out_file;
    json_object *result;

    /* The job's thread only. */
    uint64_t throttled;          /* checksum: bytes read already taken from the limiter */
};

void serve_work_free(void *arg)
{
    struct serve_work *w = arg;
    if (!w)
        return;
    free(w->src);
    free(w->dst);
    free(w->backing);
    free(w->dst_dir);
    free(w->dst_vg);
    free(w->journal);
    free(w->id);
    if (w->volumes)
        json_object_put(w->volumes);
    if (w->result)
        json_object_put(w->result);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

uint64_t serve_work_bandwidth(const struct serve_work *w)
{
    return w->bandwidth;
}

bool serve_work_take_created(struct serve_work *w, struct lsm_created_file *f)
{
    pthread_mutex_lock(&w->mu);
    bool r = w->created_known && !w->created_taken;
    if (r) {
        w->created_taken = true;
        *f = w->out_file;
    }
    pthread_mutex_unlock(&w->mu);
    return r;
}

json_object *serve_work_result(struct serve_work *w)
{
    pthread_mutex_lock(&w->mu);
    json_object *r = w->result ? json_object_get(w->result) : NULL;
    pthread_mutex_unlock(&w->mu);
    return r;
}

/* ---- Preparing (the loop's thread) ---- */

#define P_OK(expr)          \
    do {                    \
        int _r = (expr);    \
        if (_r < 0)         \
            return _r;      \
    } while (0)

static int param_format(json_object *p, const char *name, bool required, enum lsm_format *out,
                        char *msg)
{
    int i;
    int r = lsm_rpc_param_enum(p, name, required, formats, &i, msg);
    if (r == 0)
        *out = format_of[i];
    return r;
}

/* A path parameter: a string holding an absolute path. */
static int param_abs(json_object *p, const char *name, const char **out, char *msg)
{
    int r = lsm_rpc_param_string(p, name, true, out, msg);
    if (r)
        return r;
    if ((*out)[0] != '/') {
        snprintf(msg, LSM_RPC_MSG_MAX, "parameter \"%s\" must be an absolute path", name);
        return LSM_RPC_INVALID_PARAMS;
    }
    return 0;
}

/* Resolve and confine a path parameter (after every type check); errors
 * become RPC codes. */
static int confine(const struct serve_env *env, const char *name, const char *path,
                   bool must_exist, char **out, char *msg)
{
    int r = lsm_confine_path(&env->confine, path, must_exist, out);
    if (r < 0) {
        snprintf(msg, LSM_RPC_MSG_MAX, "%s: %s", name, lsm_last_error());
        return r == -EACCES ? LSM_RPC_E_ACCESS : LSM_RPC_E_FAILED;
    }
    return 0;
}

static int param_common(struct serve_work *w, json_object *p, char *msg)
{
    int r = lsm_rpc_param_uint(p, "bandwidth", false, UINT64_C(1) << 50, &w->bandwidth, msg);
    return r < 0 ? r : 0;
}

static int check_generation(struct serve_work *w, const char *volume, char *msg)
{
    if (!w->have_gen || !w->check_gen)
        return 0;
    uint64_t cur;
    int r = lsm_generation_get(volume, &cur);
    if (r < 0) {
        snprintf(msg, LSM_RPC_MSG_MAX, "%s", lsm_last_error());
        return LSM_RPC_E_FAILED;
    }
    if (cur != w->gen) {
        snprintf(msg, LSM_RPC_MSG_MAX, "%s has generation %" PRIu64 ", not the expected %" PRIu64,
                 volume, cur, w->gen);
        return LSM_RPC_E_GENERATION;
    }
    return 0;
}

static const char *const copy_known[] = {
    "taskId", "source", "sourceFormat", "destination", "destinationFormat", "backing",
    "backingFormat", "create", "forceShare", "bandwidth", "generation", "checksum", NULL,
};
static const char *const checksum_known[] = {
    "taskId", "volume", "format", "algorithm", "blockSize", "forceShare", "bandwidth", NULL,
};
static const char *const clone_known[] = {
    "taskId", "source", "format", "destinationDir", "destinationVg", "reuse", "bandwidth", "volumes", NULL,
};

static int prepare_copy(struct serve_work *w, json_object *p, char *msg)
{
    const char *src, *dst;
    P_OK(lsm_rpc_param_check_known(p, copy_known, msg));
    P_OK(param_abs(p, "source", &src, msg));
    P_OK(param_format(p, "sourceFormat", true, &w->src_fmt, msg));
    P_OK(param_abs(p, "destination", &dst, msg));
    P_OK(param_format(p, "destinationFormat", true, &w->dst_fmt, msg));
    const char *b;
    int r = lsm_rpc_param_string(p, "backing", false, &b, msg);
    P_OK(r);
    if (r == 0) {
        if (!(w->backing = strdup(b)))
            return LSM_RPC_INTERNAL_ERROR;
        P_OK(param_format(p, "backingFormat", true, &w->backing_fmt, msg));
        if (w->dst_fmt != LSM_FMT_QCOW2) {
            snprintf(msg, LSM_RPC_MSG_MAX, "\"backing\" needs destinationFormat \"qcow2\"");
            return LSM_RPC_INVALID_PARAMS;
        }
    } else if (json_object_object_get_ex(p, "backingFormat", NULL)) {
        snprintf(msg, LSM_RPC_MSG_MAX, "\"backingFormat\" without \"backing\"");
        return LSM_RPC_INVALID_PARAMS;
    }
    w->create = true;
    P_OK(lsm_rpc_param_bool(p, "create", false, &w->create, msg));
    P_OK(lsm_rpc_param_bool(p, "forceShare", false, &w->force_share, msg));
    json_object *c;
    if (json_object_object_get_ex(p, "checksum", &c)) {
#ifdef HAVE_LIBSODIUM
        static const char *const algs[] = { "sha256", "blake2b", NULL };
        int i;
        if (json_object_is_type(c, json_type_boolean)) {
            w->want_checksum = json_object_get_boolean(c);
            w->alg = LSM_BLKHASH_SHA256;
        } else {
            P_OK(lsm_rpc_param_enum(p, "checksum", true, algs, &i, msg));
            w->want_checksum = true;
            enum lsm_blkhash_alg a;
            lsm_blkhash_alg_parse(algs[i], &a);
            w->alg = (int)a;
        }
#else
        (void)c;
        snprintf(msg, LSM_RPC_MSG_MAX, "\"checksum\": this lsm-sync was built without libsodium");
        return LSM_RPC_INVALID_PARAMS;
#endif
    }
    P_OK(param_common(w, p, msg));
    r = lsm_rpc_param_uint(p, "generation", false, LSM_GENERATION_MAX, &w->gen, msg);
    P_OK(r);
    w->have_gen = r == 0;
    /* The types are right: now the file system. */
    P_OK(confine(w->env, "source", src, true, &w->src, msg));
    P_OK(confine(w->env, "destination", dst, false, &w->dst, msg));
    P_OK(check_generation(w, w->dst, msg));
    return 0;
}

static int prepare_checksum(struct serve_work *w, json_object *p, char *msg)
{
#ifdef HAVE_LIBSODIUM
    const char *vol;
    P_OK(lsm_rpc_param_check_known(p, checksum_known, msg));
    P_OK(param_abs(p, "volume", &vol, msg));
    P_OK(param_format(p, "format", true, &w->src_fmt, msg));
    static const char *const algs[] = { "sha256", "blake2b", NULL };
    int i = 0;
    P_OK(lsm_rpc_param_enum(p, "algorithm", false, algs, &i, msg));
    enum lsm_blkhash_alg a;
    lsm_blkhash_alg_parse(algs[i], &a);
    w->alg = (int)a;
    uint64_t bs = 0;
    int r = lsm_rpc_param_uint(p, "blockSize", false, 1u << 30, &bs, msg);
    P_OK(r);
    if (r == 0 && (bs < 4096 || !is_pow2(bs))) {
        snprintf(msg, LSM_RPC_MSG_MAX, "\"blockSize\" must be a power of two of at least 4096");
        return LSM_RPC_INVALID_PARAMS;
    }
    w->block_size = (uint32_t)bs;
    P_OK(lsm_rpc_param_bool(p, "forceShare", false, &w->force_share, msg));
    P_OK(param_common(w, p, msg));
    P_OK(confine(w->env, "volume", vol, true, &w->src, msg));
    return 0;
#else
    (void)w;
    (void)p;
    (void)checksum_known;
    snprintf(msg, LSM_RPC_MSG_MAX, "checksumVolume: this lsm-sync was built without libsodium");
    return LSM_RPC_METHOD_NOT_FOUND;
#endif
}

/* "volumes": the layout of a job file (docs/chains.md), top first, every
 * format explicit and every path absolute and under the roots.  The
 * resolved copy goes to w->volumes; w->src/dst and their formats are the
 * first entry's (the tops). */
#define MAX_VOLUMES 256
static int param_volumes(struct serve_work *w, json_object *p, bool dst_must_exist, char *msg)
{
    json_object *a;
    if (!json_object_object_get_ex(p, "volumes", &a) || !json_object_is_type(a, json_type_array)) {
        snprintf(msg, LSM_RPC_MSG_MAX, "parameter \"volumes\" must be an array");
        return LSM_RPC_INVALID_PARAMS;
    }
    size_t n = json_object_array_length(a);
    if (n < 1 || n > MAX_VOLUMES) {
        snprintf(msg, LSM_RPC_MSG_MAX, "parameter \"volumes\" must have 1 to %d entries", MAX_VOLUMES);
        return LSM_RPC_INVALID_PARAMS;
    }
    static const char *const entry_known[] = { "source", "destination", NULL };
    static const char *const src_known[] = { "path", "format", NULL };
    static const char *const dst_known[] = { "path", "format", "type", NULL };
    static const char *const dtypes[] = { "file", "block", NULL };
    /* Types first, for every entry; then the file system. */
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(a, i), *sv, *dv;
        const char *path;
        enum lsm_format f;
        int t;
        if (!e || !json_object_is_type(e, json_type_object)
            || !json_object_object_get_ex(e, "source", &sv) || !json_object_is_type(sv, json_type_object)
            || !json_object_object_get_ex(e, "destination", &dv) || !json_object_is_type(dv, json_type_object)) {
            snprintf(msg, LSM_RPC_MSG_MAX, "volumes[%zu] must be {\"source\": {...}, \"destination\": {...}}", i);
            return LSM_RPC_INVALID_PARAMS;
        }
        int r = lsm_rpc_param_check_known(e, entry_known, msg);
        if (r == 0)
            r = lsm_rpc_param_check_known(sv, src_known, msg);
        if (r == 0)
            r = lsm_rpc_param_check_known(dv, dst_known, msg);
        if (r == 0)
            r = param_abs(sv, "path", &path, msg);
        if (r == 0)
            r = param_format(sv, "format", true, &f, msg);
        if (r == 0)
            r = param_abs(dv, "path", &path, msg);
        if (r == 0)
            r = param_format(dv, "format", true, &f, msg);
        if (r == 0)
            r = lsm_rpc_param_enum(dv, "type", false, dtypes, &t, msg);
        if (r < 0) {
            char inner[LSM_RPC_MSG_MAX];
            snprintf(inner, sizeof inner, "%s", msg);
            snprintf(msg, LSM_RPC_MSG_MAX, "volumes[%zu]: %.200s", i, inner);
            return r;
        }
    }
    json_object *out = json_object_new_array();
    if (!out)
        return LSM_RPC_INTERNAL_ERROR;
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(a, i), *sv, *dv, *v;
        json_object_object_get_ex(e, "source", &sv);
        json_object_object_get_ex(e, "destination", &dv);
        char *rs = NULL, *rd = NULL;
        json_object_object_get_ex(sv, "path", &v);
        int r = confine(w->env, "source", json_object_get_string(v), true, &rs, msg);
        json_object_object_get_ex(dv, "path", &v);
        if (r == 0)
            r = confine(w->env, "destination", json_object_get_string(v), dst_must_exist, &rd, msg);
        if (r < 0) {
            free(rs);
            json_object_put(out);
            return r;
        }
        json_object *ne = json_object_new_object(), *ns = json_object_new_object(), *nd = json_object_new_object();
        json_object_object_add(ns, "path", json_object_new_string(rs));
        json_object_object_get_ex(sv, "format", &v);
        json_object_object_add(ns, "format", json_object_get(v));
        json_object_object_add(nd, "path", json_object_new_string(rd));
        json_object_object_get_ex(dv, "format", &v);
        json_object_object_add(nd, "format", json_object_get(v));
        if (json_object_object_get_ex(dv, "type", &v))
            json_object_object_add(nd, "type", json_object_get(v));
        json_object_object_add(ne, "source", ns);
        json_object_object_add(ne, "destination", nd);
        json_object_array_add(out, ne);
        if (i == 0) {
            w->src = rs;
            w->dst = rd;
            json_object_object_get_ex(sv, "format", &v);
            lsm_format_parse(json_object_get_string(v), &w->src_fmt);
            json_object_object_get_ex(dv, "format", &v);
            lsm_format_parse(json_object_get_string(v), &w->dst_fmt);
        } else {
            free(rs);
            free(rd);
        }
    }
    w->volumes = json_object_new_object();
    if (!w->volumes) {
        json_object_put(out);
        return LSM_RPC_INTERNAL_ERROR;
    }
    json_object_object_add(w->volumes, "volumes", out);
    return 0;
}

static const char *const sync_known[] = {
    "taskId", "source", "format", "destination", "destinationFormat", "syncType", "bandwidth",
    "generation", "volumes", NULL,
};

static int prepare_sync(struct serve_work *w, json_object *p, char *msg)
{
    static const char *const types[] = { "ALL", "INTERNAL", "LEAF", NULL };
    static const enum lsm_sync_type type_of[] = { LSM_SYNC_ALL, LSM_SYNC_INTERNAL, LSM_SYNC_LEAF };
    const char *src, *dst;
    int t;
    P_OK(lsm_rpc_param_check_known(p, sync_known, msg));
    if (json_object_object_get_ex(p, "volumes", NULL)) {
        static const char *const with_volumes[] = { "taskId", "volumes", "syncType", "bandwidth", "generation", NULL };
        if (lsm_rpc_param_check_known(p, with_volumes, msg)) {
            snprintf(msg, LSM_RPC_MSG_MAX, "\"volumes\" names the chains: no \"source\", \"destination\" or formats with it");
            return LSM_RPC_INVALID_PARAMS;
        }
        P_OK(lsm_rpc_param_enum(p, "syncType", true, types, &t, msg));
        w->sync_type = (int)type_of[t];
        P_OK(param_common(w, p, msg));
        int r = lsm_rpc_param_uint(p, "generation", false, LSM_GENERATION_MAX, &w->gen, msg);
        P_OK(r);
        w->have_gen = r == 0;
        P_OK(param_volumes(w, p, true, msg));
        P_OK(check_generation(w, w->dst, msg));
        return 0;
    }
    P_OK(param_abs(p, "source", &src, msg));
    P_OK(param_format(p, "format", true, &w->src_fmt, msg));
    P_OK(param_abs(p, "destination", &dst, msg));
    w->dst_fmt = w->src_fmt;
    P_OK(param_format(p, "destinationFormat", false, &w->dst_fmt, msg));
    P_OK(lsm_rpc_param_enum(p, "syncType", true, types, &t, msg));
    w->sync_type = (int)type_of[t];
    P_OK(param_common(w, p, msg));
    int r = lsm_rpc_param_uint(p, "generation", false, LSM_GENERATION_MAX, &w->gen, msg);
    P_OK(r);
    w->have_gen = r == 0;
    P_OK(confine(w->env, "source", src, true, &w->src, msg));
    P_OK(confine(w->env, "destination", dst, true, &w->dst, msg));
    P_OK(check_generation(w, w->dst, msg));
    return 0;
}

static int prepare_clone(struct serve_work *w, json_object *p, char *msg)
{
    const char *src, *dir = NULL, *vg = NULL;
    P_OK(lsm_rpc_param_check_known(p, clone_known, msg));
    if (json_object_object_get_ex(p, "volumes", NULL)) {
        static const char *const with_volumes[] = { "taskId", "volumes", "reuse", "bandwidth", NULL };
        if (lsm_rpc_param_check_known(p, with_volumes, msg)) {
            snprintf(msg, LSM_RPC_MSG_MAX, "\"volumes\" names every volume: no \"source\", \"format\" or destination domain with it");
            return LSM_RPC_INVALID_PARAMS;
        }
        P_OK(lsm_rpc_param_bool(p, "reuse", false, &w->reuse, msg));
        P_OK(param_common(w, p, msg));
        return param_volumes(w, p, false, msg);
    }
    P_OK(param_abs(p, "source", &src, msg));
    P_OK(param_format(p, "format", true, &w->src_fmt, msg));
    bool has_dir = json_object_object_get_ex(p, "destinationDir", NULL);
    bool has_vg = json_object_object_get_ex(p, "destinationVg", NULL);
    if (has_dir == has_vg) {
        snprintf(msg, LSM_RPC_MSG_MAX, "give exactly one of \"destinationDir\" and \"destinationVg\"");
        return LSM_RPC_INVALID_PARAMS;
    }
    if (has_dir)
        P_OK(param_abs(p, "destinationDir", &dir, msg));
    else
        P_OK(lsm_rpc_param_string(p, "destinationVg", true, &vg, msg));
    P_OK(lsm_rpc_param_bool(p, "reuse", false, &w->reuse, msg));
    P_OK(param_common(w, p, msg));
    P_OK(confine(w->env, "source", src, true, &w->src, msg));
    if (dir) {
        P_OK(confine(w->env, "destinationDir", dir, true, &w->dst_dir, msg));
    } else {
        char *devpath = NULL;
        if (asprintf(&devpath, "/dev/%s", vg) < 0)
            return LSM_RPC_INTERNAL_ERROR;
        /* A VG's volumes are /dev/VG/LV: the roots must admit /dev/VG. */
        bool ok = !strchr(vg, '/') && lsm_confine_under(&w->env->confine, devpath);
        free(devpath);
        if (!ok) {
            snprintf(msg, LSM_RPC_MSG_MAX, "destinationVg: /dev/%.64s is outside the domain roots", vg);
            return LSM_RPC_E_ACCESS;
        }
        if (!(w->dst_vg = strdup(vg)))
            return LSM_RPC_INTERNAL_ERROR;
    }
    return 0;
}

bool serve_work_has_journal(void)
{
    return true;
}

char *serve_work_journal_path(const struct serve_env *env, const char *id)
{
    char *p = NULL;
    if (!env->journal_dir || asprintf(&p, "%s/%s.journal", env->journal_dir, id) < 0)
        return NULL;
    return p;
}

int serve_work_remove_journals(const struct serve_env *env, const char *id)
{
    _cleanup_free_ char *name = NULL;
    if (!env->journal_dir)
        return 0;
    if (asprintf(&name, "%s.journal", id) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    DIR *d = opendir(env->journal_dir);
    if (!d)
        return lsm_error_errno(-errno, "cannot read %s", env->journal_dir);
    size_t n = strlen(name);
    int r = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        /* NAME, or NAME.N (N digits only: a sync's volume journals) */
        const char *rest = e->d_name + n;
        if (strncmp(e->d_name, name, n))
            continue;
        if (*rest) {
            if (*rest++ != '.' || !*rest)
                continue;
            while (isdigit((unsigned char)*rest))
                rest++;
            if (*rest)
                continue;
        }
        if (unlinkat(dirfd(d), e->d_name, 0) < 0 && errno != ENOENT && r == 0)
            r = lsm_error_errno(-errno, "cannot remove %s/%s", env->journal_dir, e->d_name);
    }
    closedir(d);
    return r;
}

int serve_work_prepare(const struct serve_env *env, const struct lsm_task_record *rec,
                       bool resumed, bool check_gen, struct serve_work **out, char *msg)
{
    struct serve_work *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(msg, LSM_RPC_MSG_MAX, "out of memory");
        return LSM_RPC_INTERNAL_ERROR;
    }
    pthread_mutex_init(&w->mu, NULL);
    w->env = env;
    w->resumed = resumed;
    w->check_gen = check_gen;
    if (!(w->id = strdup(rec->id))) {
        serve_work_free(w);
        snprintf(msg, LSM_RPC_MSG_MAX, "out of memory");
        return LSM_RPC_INTERNAL_ERROR;
    }
    w->have_created = rec->have_created;
    w->created = rec->created_file;
    int r;
    snprintf(msg, LSM_RPC_MSG_MAX, "out of memory");
    if (!strcmp(rec->method, "copyVolume")) {
        w->method = M_COPY;
        r = prepare_copy(w, rec->params, msg);
        if (r == 0 && serve_work_has_journal() && env->journal_dir
            && !(w->journal = serve_work_journal_path(env, rec->id)))
            r = LSM_RPC_INTERNAL_ERROR;
    } else if (!strcmp(rec->method, "checksumVolume")) {
        w->method = M_CHECKSUM;
        r = prepare_checksum(w, rec->params, msg);
    } else if (!strcmp(rec->method, "syncImageData")) {
        w->method = M_SYNC;
        r = prepare_sync(w, rec->params, msg);
        if (r == 0 && serve_work_has_journal() && env->journal_dir
            && !(w->journal = serve_work_journal_path(env, rec->id)))
            r = LSM_RPC_INTERNAL_ERROR;
    } else if (!strcmp(rec->method, "cloneImageStructure")) {
        w->method = M_CLONE;
        r = prepare_clone(w, rec->params, msg);
    } else {
        snprintf(msg, LSM_RPC_MSG_MAX, "%s is not available in this build", rec->method);
        r = LSM_RPC_METHOD_NOT_FOUND;
    }
    if (r < 0) {
        serve_work_free(w);
        return r;
    }
    *out = w;
    return 0;
}

/* ---- Running (the job's thread) ---- */

static void copy_progress(void *opaque, const struct lsm_job_progress *p)
{
    struct serve_work *w = opaque;
    /* The first progress comes after the destination is open (and, with
     * create, made by this copy with O_EXCL): remember which file it is, so
     * that a restart after a crash may replace it and nothing else. */
    if (w->create && !w->created_known) {
        struct lsm_created_file f;
        if (lsm_created_file_get(w->dst, &f) == 0) {
            pthread_mutex_lock(&w->mu);
            w->out_file = f;
            w->created_known = true;
            pthread_mutex_unlock(&w->mu);
        }
    }
    lsm_job_progress(w->job, p);
}

static void copy_warn(void *opaque, const char *msg)
{
    (void)opaque;
    (void)msg;      /* O_DIRECT refused and the like: the result says "direct" */
}

static int set_result(struct serve_work *w, json_object *res)
{
    if (!res)
        return lsm_error(-ENOMEM, "out of memory");
    pthread_mutex_lock(&w->mu);
    if (w->result)
        json_object_put(w->result);
    w->result = res;
    pthread_mutex_unlock(&w->mu);
    return 0;
}

#ifdef HAVE_LIBSODIUM
/* Take bytes from the task's limiter (under the service's), sleeping in
 * slices of at most 50 ms so that a cancel is seen at once. */
static void throttle(struct lsm_job *job, uint64_t bytes)
{
    struct lsm_limiter *l = lsm_job_limiter(job);
    while (bytes && !lsm_job_cancelled(job)) {
        uint64_t chunk = MIN(bytes, 1 * MiB);
        uint64_t wait = lsm_limiter_take(l, chunk, lsm_now_ns());
        if (wait == 0) {
            bytes -= chunk;
            continue;
        }
        uint64_t ns = MIN(wait, 50ULL * 1000 * 1000);
        struct timespec ts = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) };
        nanosleep(&ts, NULL);
    }
}

static void checksum_progress(void *opaque, uint64_t done, uint64_t total, uint64_t bytes_read)
{
    struct serve_work *w = opaque;
    struct lsm_job_progress p = { .bytes_total = total, .bytes_done = done, .bytes_skipped = done };
    lsm_job_progress(w->job, &p);
    if (bytes_read > w->throttled) {
        uint64_t d = bytes_read - w->throttled;
        w->throttled = bytes_read;
        throttle(w->job, d);
    }
}

static int checksum_of(struct serve_work *w, const char *path, enum lsm_format fmt, unsigned flags,
                       json_object **out)
{
    struct lsm_image *img = NULL;
    int r = lsm_image_open(path, fmt, flags, &img);
    if (r < 0)
        return r;
    struct lsm_checksum_opts co = {
        .alg = (enum lsm_blkhash_alg)w->alg,
        .block_size = w->block_size,
        .cancel = lsm_job_cancel_flag(w->job),
        .progress = checksum_progress,
        .opaque = w,
    };
    w->throttled = 0;
    struct lsm_checksum_result res;
    r = lsm_checksum_image(img, &co, &res);
    lsm_image_close(img);
    if (r < 0)
        return r;
    json_object *o = json_object_new_object();
    if (!o)
        return lsm_error(-ENOMEM, "out of memory");
    json_object_object_add(o, "algorithm", json_object_new_string(lsm_blkhash_alg_name(res.alg)));
    json_object_object_add(o, "block_size", json_object_new_int64(res.block_size));
    json_object_object_add(o, "checksum", json_object_new_string(res.hex));
    *out = o;
    return 0;
}
#endif

static int run_copy(struct lsm_job *job, struct serve_work *w)
{
    int r;
    lsm_job_set_phase(job, "checking");
    /* Every file of the source chain under the roots, and every backing
     * format written in its image (the service does not probe). */
    r = lsm_confine_chain(&w->env->confine, w->src, w->src_fmt, 0);
    if (r < 0)
        return r;
    if (w->env->confine.n) {
        if (w->backing) {
            /* The backing name is resolved as QEMU will: relative to dst. */
            _cleanup_free_ char *bp = NULL;
            if (w->backing[0] == '/') {
                bp = strdup(w->backing);
            } else {
                const char *slash = strrchr(w->dst, '/');
                if (asprintf(&bp, "%.*s/%s", (int)(slash - w->dst), w->dst, w->backing) < 0)
                    bp = NULL;
            }
            if (!bp)
                return lsm_error(-ENOMEM, "out of memory");
            _cleanup_free_ char *res = NULL;
            r = lsm_confine_path(&w->env->confine, bp, true, &res);
            if (r < 0)
                return r;
        }
    }
    /* With a journal: continue what it says is durable (the destination
     * it names, opened as with create false).  A journal left under this
     * task's name when the task is new is stale (only this service writes
     * there) and goes. */
    bool resume = false;
    if (w->journal) {
        struct stat jb;
        bool have_journal = stat(w->journal, &jb) == 0;
        if (have_journal && w->resumed)
            resume = true;
        else if (have_journal)
            unlink(w->journal);
    }
    if (resume && w->create && w->have_created && !lsm_created_file_is(w->dst, &w->created))
        return lsm_error(-EEXIST, "%s is not the file this task created; nothing was changed "
                         "(its journal is kept)", w->dst);
    if (w->resumed && w->create && !resume) {
        struct stat sb;
        if (lstat(w->dst, &sb) == 0) {
            if (!w->have_created || !lsm_created_file_is(w->dst, &w->created))
                return lsm_error(-EEXIST, "%s exists and is not the file this task created "
                                 "before the service stopped; nothing was changed", w->dst);
            /* Ours, partly written by the interrupted run: made again. */
            if (unlink(w->dst) < 0)
                return lsm_error_errno(-errno, "cannot remove the partial %s", w->dst);
        }
    }
    struct lsm_copy_stats st = { 0 };
    struct lsm_copy_opts o = {
        .src_path = w->src,
        .src_fmt = w->src_fmt,
        .dst_path = w->dst,
        .dst_fmt = w->dst_fmt,
        .backing = w->backing,
        .backing_fmt = w->backing_fmt,
        .no_create = !w->create,
        .force_share = w->force_share,
        .buffer_size = w->env->buffer_size,
        .limiter = lsm_job_limiter(job),
        .cancel = lsm_job_cancel_flag(job),
        .job_progress = copy_progress,
        .warn = copy_warn,
        .opaque = w,
    };
    o.journal = w->journal;
    o.resume = resume;
    o.checkpoint_bytes = w->env->checkpoint_bytes;
    o.checkpoint_ms = w->env->checkpoint_ms;
    if (resume)
        o.no_create = true;     /* the destination the journal names, as it is */
#ifdef HAVE_LIBSODIUM
    /* The checksum from the copy's own buffers; with a backing (one layer
     * copied) or a journal (a resumed run does not read what was done) the
     * guest view is not all read, so it is a second pass. */
    if (w->want_checksum && !w->backing && !w->journal) {
        o.checksum = true;
        o.checksum_alg = (enum lsm_blkhash_alg)w->alg;
    }
#endif
    w->job = job;
    lsm_job_set_phase(job, "copying");
    r = lsm_copy(&o, &st);
    /* Restarted after the service died: the kernel may drop the dead
     * process's image locks a moment after it is gone (an io_uring holds
     * its files until the ring is torn down), so a lock conflict is tried
     * again for a few seconds before it counts. */
    for (int i = 0; r == -EAGAIN && w->resumed && i < 20 && !lsm_job_cancelled(job); i++) {
        struct timespec ts = { 0, 250 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        memset(&st, 0, sizeof st);
        r = lsm_copy(&o, &st);
    }
    if (st.bytes_redone) {
        /* the final count, from the result (the progress carried it while
         * the copy ran) */
        struct lsm_job_status js;
        lsm_job_get_status(job, &js);
        js.progress.bytes_redone = st.bytes_redone;
        lsm_job_progress(job, &js.progress);
    }
    if (r < 0)
        return r;
    json_object *res = json_object_new_object();
    if (!res)
        return lsm_error(-ENOMEM, "out of memory");
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", st.seconds);
    json_object_object_add(res, "bytes_written", json_object_new_uint64(st.bytes_written));
    json_object_object_add(res, "bytes_zeroed", json_object_new_uint64(st.bytes_zeroed));
    json_object_object_add(res, "bytes_skipped", json_object_new_uint64(st.bytes_skipped));
    json_object_object_add(res, "seconds", json_object_new_double_s(st.seconds, secs));
    json_object_object_add(res, "direct", json_object_new_boolean(st.direct));
#ifdef HAVE_LIBSODIUM
    if (w->want_checksum && st.checksummed) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "algorithm", json_object_new_string(lsm_blkhash_alg_name((enum lsm_blkhash_alg)w->alg)));
        json_object_object_add(c, "block_size", json_object_new_int64(LSM_BLKHASH_DEFAULT_BLOCK));
        json_object_object_add(c, "checksum", json_object_new_string(st.checksum));
        json_object_object_add(res, "checksum", c);
    } else if (w->want_checksum) {
        lsm_job_set_phase(job, "checksum");
        json_object *c = NULL;
        r = checksum_of(w, w->dst, w->dst_fmt, 0, &c);
        if (r < 0) {
            json_object_put(res);
            lsm_error_prefix("checksum of %s", w->dst);
            return r;
        }
        json_object_object_add(res, "checksum", c);
    }
#endif
    if (w->have_gen) {
        r = lsm_generation_bump(w->dst, w->gen);
        if (r < 0) {
            json_object_put(res);
            return r;
        }
        json_object_object_add(res, "generation", json_object_new_uint64(w->gen + 1));
    }
    return set_result(w, res);
}

#ifdef HAVE_LIBSODIUM
static int run_checksum(struct lsm_job *job, struct serve_work *w)
{
    lsm_job_set_phase(job, "checking");
    int cr = lsm_confine_chain(&w->env->confine, w->src, w->src_fmt, 0);
    if (cr < 0)
        return cr;
    lsm_job_set_phase(job, "checksum");
    json_object *c = NULL;
    int r = checksum_of(w, w->src, w->src_fmt, w->force_share ? LSM_OPEN_FORCE_SHARE : 0, &c);
    if (r < 0)
        return r;
    return set_result(w, c);
}
#endif

/* The layout as a job file the flows read: a memfd, named through
 * /proc/self/fd (nothing is written to any directory).  Returns the fd
 * (close it after use) with its name in path. */
static int volumes_file(const struct serve_work *w, char *path, size_t len)
{
    const char *text = json_object_to_json_string_ext(w->volumes, JSON_C_TO_STRING_PLAIN);
    int fd = memfd_create("lsm-serve-volumes", MFD_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "memfd_create");
    size_t n = strlen(text);
    ssize_t wr = lsm_pwrite_all(fd, text, n, 0);
    if (wr < 0 || (size_t)wr != n) {
        close(fd);
        return lsm_error(-EIO, "cannot write the volumes' layout");
    }
    snprintf(path, len, "/proc/self/fd/%d", fd);
    return fd;
}

/* Every volume of the layout: its source chain and its destination. */
static int confine_volumes(const struct serve_work *w, bool dst_exists)
{
    json_object *a;
    json_object_object_get_ex(w->volumes, "volumes", &a);
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *e = json_object_array_get_idx(a, i), *v, *p, *f;
        enum lsm_format fmt;
        json_object_object_get_ex(e, "source", &v);
        json_object_object_get_ex(v, "path", &p);
        json_object_object_get_ex(v, "format", &f);
        lsm_format_parse(json_object_get_string(f), &fmt);
        int r = lsm_confine_chain(&w->env->confine, json_object_get_string(p), fmt, 0);
        if (r == 0 && dst_exists) {
            json_object_object_get_ex(e, "destination", &v);
            json_object_object_get_ex(v, "path", &p);
            json_object_object_get_ex(v, "format", &f);
            lsm_format_parse(json_object_get_string(f), &fmt);
            r = lsm_confine_chain(&w->env->confine, json_object_get_string(p), fmt, LSM_OPEN_INCOMPLETE_OK);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

static json_object *clone_result(const struct lsm_chain_desc *src, const struct lsm_jobfile *jf)
{
    json_object *res = json_object_new_object();
    json_object *a = json_object_new_array();
    json_object_object_add(res, "top", lsm_json_string(jf->v[0].dst_path));
    for (unsigned i = 0; i < jf->n; i++) {
        json_object *v = json_object_new_object();
        json_object_object_add(v, "source", lsm_json_string(jf->v[i].src_path));
        json_object_object_add(v, "path", lsm_json_string(jf->v[i].dst_path));
        json_object_object_add(v, "format", json_object_new_string(lsm_format_name(src->v[i].format)));
        json_object_object_add(v, "type", json_object_new_string(
                                   jf->v[i].dst_type == LSM_DOMAIN_BLOCK ? "block" : "file"));
        if (jf->v[i].dst_backing)
            json_object_object_add(v, "backing", lsm_json_string(jf->v[i].dst_backing));
        json_object_array_add(a, v);
    }
    json_object_object_add(res, "volumes", a);
    return res;
}

static int run_clone_volumes(struct lsm_job *job, struct serve_work *w)
{
    lsm_job_set_phase(job, "checking");
    int r = confine_volumes(w, false);
    if (r < 0)
        return r;
    char path[64];
    int fd = volumes_file(w, path, sizeof path);
    if (fd < 0)
        return fd;
    struct lsm_chain_desc src = { 0 };
    struct lsm_jobfile jf = { 0 };
    struct lsm_clone_opts co = {
        .src_fmt = w->src_fmt,
        .jobfile = path,
        .reuse = w->reuse,
        .cancel = lsm_job_cancel_flag(job),
    };
    lsm_job_set_phase(job, "creating");
    r = lsm_clone_structure(&co, &src, &jf);
    close(fd);
    json_object *res = r == 0 ? clone_result(&src, &jf) : NULL;
    lsm_chain_desc_free(&src);
    lsm_jobfile_free(&jf);
    if (r < 0)
        return r;
    return set_result(w, res);
}

static int run_clone(struct lsm_job *job, struct serve_work *w)
{
    if (w->volumes)
        return run_clone_volumes(job, w);
    lsm_job_set_phase(job, "checking");
    int r;
    if ((r = lsm_confine_chain(&w->env->confine, w->src, w->src_fmt, 0)) < 0)
        return r;
    struct lsm_chain_desc src = { 0 };
    struct lsm_jobfile jf = { 0 };
    r = lsm_chain_describe(w->src, w->src_fmt, &src);
    if (r < 0)
        return r;
    struct lsm_domain *dom = NULL;
    r = lsm_domain_open(w->dst_vg ? LSM_DOMAIN_BLOCK : LSM_DOMAIN_FILE,
                        w->dst_vg ? w->dst_vg : w->dst_dir, &dom);
    if (r == 0) {
        r = lsm_jobfile_for_domain(&src, dom, &jf);
        lsm_domain_close(dom);
    }
    for (unsigned i = 0; r == 0 && i < jf.n; i++) {
        _cleanup_free_ char *res = NULL;
        r = lsm_confine_path(&w->env->confine, jf.v[i].dst_path, false, &res);
    }
    if (r == 0)
        r = lsm_jobfile_check_destinations(&src, &jf);
    if (r == 0) {
        lsm_job_set_phase(job, "creating");
        r = lsm_chain_clone(&src, &jf, w->reuse, lsm_job_cancel_flag(job));
    }
    json_object *res = r == 0 ? clone_result(&src, &jf) : NULL;
    lsm_chain_desc_free(&src);
    lsm_jobfile_free(&jf);
    if (r < 0)
        return r;
    return set_result(w, res);
}

/* The top of a chain is what the caller says it is: the sync opens it with
 * its own probe, which must agree. */
static int check_top_format(const char *path, enum lsm_format want)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lsm_error_errno(-errno, "%s", path);
    enum lsm_format got = LSM_FMT_AUTO;
    int r = lsm_probe_format(fd, &got);
    close(fd);
    if (r < 0)
        return r;
    if (got != want)
        return lsm_error(-EINVAL, "%s is %s, not %s as the request says", path,
                         lsm_format_name(got), lsm_format_name(want));
    return 0;
}

static int run_sync(struct lsm_job *job, struct serve_work *w)
{
    lsm_job_set_phase(job, "checking");
    /* Every file of both chains under the roots, every backing format
     * written in its image (nothing probed), the tops as the request says. */
    int r;
    char path[64];
    int fd = -1;
    if (w->volumes) {
        /* The layout's formats are explicit and the flows open each volume
         * with them. */
        r = confine_volumes(w, true);
        if (r == 0 && (fd = volumes_file(w, path, sizeof path)) < 0)
            r = fd;
    } else {
        r = lsm_confine_chain(&w->env->confine, w->src, w->src_fmt, 0);
        if (r == 0)
            r = lsm_confine_chain(&w->env->confine, w->dst, w->dst_fmt, LSM_OPEN_INCOMPLETE_OK);
        if (r == 0)
            r = check_top_format(w->src, w->src_fmt);
        if (r == 0)
            r = check_top_format(w->dst, w->dst_fmt);
    }
    if (r < 0)
        return r;
    struct lsm_sync_opts so = {
        .type = (enum lsm_sync_type)w->sync_type,
        .src_top = w->volumes ? NULL : w->src,
        .dst_top = w->volumes ? NULL : w->dst,
        .jobfile = w->volumes ? path : NULL,
        .limiter = lsm_job_limiter(job),
        .cancel = lsm_job_cancel_flag(job),
        .job = job,
    };
    so.copy.buffer_size = w->env->buffer_size;
    /* With a journal: a restarted sync continues from it (volumes done are
     * not copied again, the others resume from their copy journals); a
     * journal left under this task's name when the task is new is stale
     * (only this service writes there) and goes, with its volumes'. */
    struct stat jb;
    if (w->journal && stat(w->journal, &jb) == 0 && !w->resumed &&
        (r = serve_work_remove_journals(w->env, w->id)) < 0)
        goto out_fd;
    so.journal = w->journal;
    so.resume = w->journal && stat(w->journal, &jb) == 0;
    so.copy.checkpoint_bytes = w->env->checkpoint_bytes;
    so.copy.checkpoint_ms = w->env->checkpoint_ms;
    struct lsm_sync_result res;
    r = lsm_sync(&so, &res);
    /* Restarted after the service died: locks the dead process's rings
     * still hold (see run_copy).  They may be met before the sync starts
     * or by a volume's copy after it started; a sync run again completes
     * the chain either way (each volume is copied whole into its
     * destination), so the whole sync is tried again. */
    for (int i = 0; r == -EAGAIN && w->resumed && i < 20 && !lsm_job_cancelled(job); i++) {
        lsm_sync_result_free(&res);
        struct timespec ts = { 0, 250 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        /* the first try may have saved the journal: continue it */
        so.resume = w->journal && stat(w->journal, &jb) == 0;
        r = lsm_sync(&so, &res);
    }
    if (r < 0)
        lsm_sync_result_free(&res);
out_fd:
    if (fd >= 0)
        close(fd);
    if (r < 0)
        return r;
    json_object *o = json_object_new_object(), *a = json_object_new_array();
    json_object_object_add(o, "syncType", json_object_new_string(lsm_sync_type_name(res.type)));
    json_object_object_add(o, "bytes_total", json_object_new_uint64(res.bytes_total));
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", res.seconds);
    json_object_object_add(o, "seconds", json_object_new_double_s(res.seconds, secs));
    json_object_object_add(o, "resumed", json_object_new_boolean(res.resumed));
    json_object_object_add(o, "bytes_redone", json_object_new_uint64(res.bytes_redone));
    for (unsigned i = 0; i < res.nvols; i++) {
        json_object *v = json_object_new_object();
        json_object_object_add(v, "source", lsm_json_string(res.v[i].src_path));
        json_object_object_add(v, "destination", lsm_json_string(res.v[i].dst_path));
        json_object_object_add(v, "status", json_object_new_string(res.v[i].already_done ? "already-synced" : "synced"));
        json_object_object_add(v, "bytes_written", json_object_new_uint64(res.v[i].st.bytes_written));
        json_object_object_add(v, "bytes_redone", json_object_new_uint64(res.v[i].st.bytes_redone));
        json_object_array_add(a, v);
    }
    json_object_object_add(o, "volumes", a);
    lsm_sync_result_free(&res);
    if (w->have_gen) {
        r = lsm_generation_bump(w->dst, w->gen);
        if (r < 0) {
            json_object_put(o);
            return r;
        }
        json_object_object_add(o, "generation", json_object_new_uint64(w->gen + 1));
    }
    return set_result(w, o);
}

int serve_work_run(struct lsm_job *job, void *arg)
{
    struct serve_work *w = arg;
    w->job = job;
    switch (w->method) {
    case M_COPY:
        return run_copy(job, w);
#ifdef HAVE_LIBSODIUM
    case M_CHECKSUM:
        return run_checksum(job, w);
#endif
    case M_CLONE:
        return run_clone(job, w);
    case M_SYNC:
        return run_sync(job, w);
    default:
        return lsm_error(-ENOSYS, "this method is not available in this build");
    }
}
