/* Chains across storage domains: describe, compare structure, check the
 * identities of a job (nothing aliases a source file), lay out in a
 * domain or from a job file, clone the structure empty. */
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "cleanup.h"
#include "error.h"
#include "qcow2/qcow2-format.h"
#include "qcow2/qcow2-writer.h"
#include "util.h"

static int find_used_end(void *opaque, uint64_t off, uint64_t len)
{
    uint64_t *end = opaque;
    if (off + len > *end)
        *end = off + len;
    return 0;
}

static int describe_one(struct lsm_image *img, struct lsm_volume_desc *v)
{
    v->path = strdup(img->filename);
    const char *base = strrchr(img->filename, '/');
    v->name = strdup(base ? base + 1 : img->filename);
    if (!v->path || !v->name)
        return lsm_error(-ENOMEM, "out of memory");
    int r = lsm_fileid_fd(img->fd, img->filename, &v->id);
    if (r < 0)
        return r;
    v->format = img->format;
    v->type = img->is_blockdev ? LSM_DOMAIN_BLOCK : LSM_DOMAIN_FILE;
    v->virtual_size = img->virtual_size;
    v->cluster_size = img->cluster_size;
    if (img->backing_name && !(v->backing_name = strdup(img->backing_name)))
        return lsm_error(-ENOMEM, "out of memory");
    v->backing_fmt = img->backing ? img->backing->format : img->backing_fmt;
    struct lsm_qcow2_info qi;
    if (lsm_qcow2_get_info(img, &qi) == 0) {
        v->qcow2_version = qi.version;
        v->refcount_bits = qi.refcount_bits;
        v->extended_l2 = qi.extended_l2;
        v->lazy_refcounts = qi.lazy_refcounts;
        v->compression_type = strcmp(qi.compression, "zstd") ? QCOW2_COMPRESSION_ZLIB
                                                              : QCOW2_COMPRESSION_ZSTD;
        if (qi.data_file)
            return lsm_error(-ENOTSUP, "'%s' uses an external data file, which chains across domains do not support",
                             img->filename);
        r = lsm_qcow2_for_each_used_run(img, find_used_end, &v->used_end);
        if (r < 0)
            return r;
    } else {
        v->used_end = img->virtual_size;
    }
    /* own data bytes: what a sync of this volume copies */
    struct lsm_map_iter it;
    struct lsm_extent e;
    lsm_map_iter_init(&it, img, 0, img->virtual_size, LSM_MAP_ONE_LAYER);
    while ((r = lsm_map_iter_next(&it, &e)) > 0)
        if ((e.flags & LSM_EXT_DATA) && !(e.flags & LSM_EXT_ZERO))
            v->data_bytes += e.length;
    return r;
}

int lsm_chain_describe(const char *top, enum lsm_format fmt, struct lsm_chain_desc *out)
{
    return lsm_chain_describe_flags(top, fmt, 0, out);
}

int lsm_chain_describe_flags(const char *top, enum lsm_format fmt, unsigned flags,
                             struct lsm_chain_desc *out)
{
    memset(out, 0, sizeof *out);
    struct lsm_image *img;
    /* force share: see chain.h */
    int r = lsm_image_open(top, fmt, (flags & ~LSM_OPEN_NO_BACKING) | LSM_OPEN_FORCE_SHARE, &img);
    if (r < 0)
        return r;
    out->n = lsm_chain_length(img);
    out->v = calloc(out->n, sizeof *out->v);
    if (!out->v) {
        lsm_image_close(img);
        return lsm_error(-ENOMEM, "out of memory");
    }
    r = lsm_image_add_ids(img, &out->ids);
    if (r < 0) {
        lsm_image_close(img);
        lsm_chain_desc_free(out);
        return r;
    }
    unsigned i = 0;
    for (struct lsm_image *l = img; l; l = l->backing, i++) {
        r = describe_one(l, &out->v[i]);
        if (r < 0) {
            if (!strstr(lsm_last_error(), l->filename))
                lsm_error_prefix("%s", l->filename);
            break;
        }
    }
    lsm_image_close(img);
    if (r < 0)
        lsm_chain_desc_free(out);
    return r < 0 ? r : 0;
}

void lsm_chain_desc_free(struct lsm_chain_desc *c)
{
    for (unsigned i = 0; c->v && i < c->n; i++) {
        free(c->v[i].path);
        free(c->v[i].name);
        free(c->v[i].backing_name);
    }
    free(c->v);
    c->v = NULL;
    c->n = 0;
    lsm_fileid_set_free(&c->ids);
}

int lsm_chain_same_structure(const struct lsm_chain_desc *a, const struct lsm_chain_desc *b)
{
    if (a->n != b->n)
        return lsm_error(-EINVAL, "chains differ in length: %u volumes in '%s', %u in '%s'",
                         a->n, a->v[0].path, b->n, b->v[0].path);
    for (unsigned i = 0; i < a->n; i++) {
        const struct lsm_volume_desc *x = &a->v[i], *y = &b->v[i];
        if (x->format != y->format)
            return lsm_error(-EINVAL, "volume %u differs in format: '%s' is %s, '%s' is %s", i,
                             x->path, lsm_format_name(x->format), y->path, lsm_format_name(y->format));
        if (x->virtual_size != y->virtual_size)
            return lsm_error(-EINVAL, "volume %u differs in virtual size: '%s' has %" PRIu64 " bytes, '%s' %" PRIu64,
                             i, x->path, x->virtual_size, y->path, y->virtual_size);
        if (x->cluster_size != y->cluster_size)
            return lsm_error(-EINVAL, "volume %u differs in cluster size: '%s' has %u, '%s' %u", i,
                             x->path, x->cluster_size, y->path, y->cluster_size);
    }
    return 0;
}

uint64_t lsm_volume_needed_size(const struct lsm_volume_desc *v)
{
    if (v->format == LSM_FMT_RAW)
        return v->virtual_size;
    /* A guest-order copy writes at most the source's data clusters plus
     * metadata of similar size; the source's used end bounds both. */
    return align_up(v->used_end, v->cluster_size ? v->cluster_size : 512) + LSM_BLOCK_CHUNK;
}

/* ---- job files ---- */

static void pair_free(struct lsm_volume_pair *p)
{
    free(p->src_path);
    free(p->dst_path);
    free(p->dst_backing);
}

void lsm_jobfile_free(struct lsm_jobfile *j)
{
    for (unsigned i = 0; j->v && i < j->n; i++)
        pair_free(&j->v[i]);
    free(j->v);
    j->v = NULL;
    j->n = 0;
}

/* Backing name that dst (at path `from`) should use to reach `to`: the
 * bare name when both sit in one directory, else the absolute path. */
static char *backing_ref(const char *from, const char *to, enum lsm_domain_kind to_type)
{
    if (to_type == LSM_DOMAIN_FILE) {
        const char *fs = strrchr(from, '/'), *ts = strrchr(to, '/');
        size_t fl = fs ? (size_t)(fs - from) : 0, tl = ts ? (size_t)(ts - to) : 0;
        if (fl == tl && !strncmp(from, to, fl))
            return strdup(ts ? ts + 1 : to);
    }
    if (to[0] == '/')
        return strdup(to);
    char *abs = realpath(to, NULL);   /* exists once created */
    if (abs)
        return abs;
    char *cwd = getcwd(NULL, 0), *p = NULL;
    if (cwd && asprintf(&p, "%s/%s", cwd, to) < 0)
        p = NULL;
    free(cwd);
    return p;
}

static int fill_backing_names(struct lsm_jobfile *j)
{
    for (unsigned i = 0; i + 1 < j->n; i++) {
        j->v[i].dst_backing = backing_ref(j->v[i].dst_path, j->v[i + 1].dst_path, j->v[i + 1].dst_type);
        if (!j->v[i].dst_backing)
            return lsm_error(-ENOMEM, "out of memory");
    }
    return 0;
}

int lsm_jobfile_for_domain(const struct lsm_chain_desc *src, struct lsm_domain *dom, struct lsm_jobfile *out)
{
    memset(out, 0, sizeof *out);
    out->v = calloc(src->n, sizeof *out->v);
    if (!out->v)
        return lsm_error(-ENOMEM, "out of memory");
    out->n = src->n;
    for (unsigned i = 0; i < src->n; i++) {
        for (unsigned k = 0; k < i; k++)
            if (!strcmp(src->v[k].name, src->v[i].name)) {
                lsm_jobfile_free(out);
                return lsm_error(-EINVAL, "two volumes of the chain are named '%s' ('%s' and '%s'); use --job to name them",
                                 src->v[i].name, src->v[k].path, src->v[i].path);
            }
        struct lsm_volume_pair *p = &out->v[i];
        p->src_path = strdup(src->v[i].path);
        p->src_fmt = src->v[i].format;
        p->dst_path = dom->ops->volume_path(dom, src->v[i].name);
        p->dst_fmt = src->v[i].format;
        p->dst_type = dom->kind;
        if (!p->src_path || !p->dst_path) {
            lsm_jobfile_free(out);
            return lsm_error(-ENOMEM, "out of memory");
        }
    }
    int r = fill_backing_names(out);
    if (r < 0)
        lsm_jobfile_free(out);
    return r;
}

static const char *jget_str(json_object *o, const char *k)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int parse_endpoint(json_object *o, const char *what, unsigned i, char **path,
                          enum lsm_format *fmt, enum lsm_domain_kind *type, bool *type_given)
{
    if (!o || !json_object_is_type(o, json_type_object))
        return lsm_error(-EINVAL, "volume %u: \"%s\" must be an object", i, what);
    const char *p = jget_str(o, "path"), *f = jget_str(o, "format"), *t = jget_str(o, "type");
    if (!p || !p[0])
        return lsm_error(-EINVAL, "volume %u: %s.path is missing", i, what);
    *fmt = LSM_FMT_AUTO;
    if (f && lsm_format_parse(f, fmt) < 0)
        return lsm_error(-EINVAL, "volume %u: %s.format '%s' is not raw or qcow2", i, what, f);
    if (type) {
        *type_given = t != NULL;
        if (!t || !strcmp(t, "file"))
            *type = LSM_DOMAIN_FILE;
        else if (!strcmp(t, "block"))
            *type = LSM_DOMAIN_BLOCK;
        else
            return lsm_error(-EINVAL, "volume %u: %s.type '%s' is not file or block", i, what, t);
    }
    *path = strdup(p);
    return *path ? 0 : lsm_error(-ENOMEM, "out of memory");
}

int lsm_jobfile_load(const char *file, struct lsm_jobfile *out)
{
    memset(out, 0, sizeof *out);
    json_object *root = json_object_from_file(file);
    if (!root)
        return lsm_error(-EINVAL, "cannot parse job file '%s': %s", file, json_util_get_last_err());
    json_object *vols;
    int r = 0;
    if (!json_object_object_get_ex(root, "volumes", &vols) || !json_object_is_type(vols, json_type_array) ||
        json_object_array_length(vols) == 0) {
        r = lsm_error(-EINVAL, "job file '%s': \"volumes\" must be a non-empty array (top first)", file);
        goto out;
    }
    size_t n = json_object_array_length(vols);
    if (n > LSM_MAX_CHAIN_DEPTH) {
        r = lsm_error(-EINVAL, "job file '%s': too many volumes (%zu)", file, n);
        goto out;
    }
    out->v = calloc(n, sizeof *out->v);
    if (!out->v) {
        r = lsm_error(-ENOMEM, "out of memory");
        goto out;
    }
    out->n = (unsigned)n;
    for (unsigned i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(vols, i), *s = NULL, *d = NULL;
        json_object_object_get_ex(e, "source", &s);
        json_object_object_get_ex(e, "destination", &d);
        struct lsm_volume_pair *p = &out->v[i];
        r = parse_endpoint(s, "source", i, &p->src_path, &p->src_fmt, NULL, NULL);
        if (r == 0)
            r = parse_endpoint(d, "destination", i, &p->dst_path, &p->dst_fmt, &p->dst_type,
                               &p->dst_type_given);
        if (r < 0) {
            lsm_error_prefix("job file '%s'", file);
            goto out;
        }
    }
    r = fill_backing_names(out);
out:
    json_object_put(root);
    if (r < 0)
        lsm_jobfile_free(out);
    return r;
}

/* ---- identity checks ---- */

/* The VG and LV name of /dev/VG/LV */
static int split_lv_path(const char *path, char **vg, char **lv)
{
    /* DIR/NAME in a loop domain: the domain is DIR */
    int l = lsm_loop_domain_of(path, vg, lv);
    if (l != 0)
        return l < 0 ? l : 0;
    const char *p = path;
    if (strncmp(p, "/dev/", 5))
        return lsm_error(-EINVAL, "block volume '%s' is not of the form /dev/VG/LV nor in a loop domain", path);
    p += 5;
    const char *s = strchr(p, '/');
    if (!s || s == p || !s[1] || strchr(s + 1, '/'))
        return lsm_error(-EINVAL, "block volume '%s' is not of the form /dev/VG/LV nor in a loop domain", path);
    *vg = strndup(p, (size_t)(s - p));
    *lv = strdup(s + 1);
    return *vg && *lv ? 0 : lsm_error(-ENOMEM, "out of memory");
}


/* Index of the volume of c that id is, or -1. */
static int volume_index(const struct lsm_chain_desc *c, const struct lsm_fileid *id)
{
    for (unsigned i = 0; i < c->n; i++)
        if (lsm_fileid_same(&c->v[i].id, id))
            return (int)i;
    return -1;
}

/* Refuse id (destination of volume i, spelled path) if it is a file of src. */
static int check_not_source(const struct lsm_chain_desc *src, const struct lsm_fileid *id,
                            unsigned i, const char *path)
{
    const struct lsm_fileid_entry *e = lsm_fileid_set_find(&src->ids, id);
    if (!e)
        return 0;
    int k = volume_index(src, id);
    if (k >= 0)
        return lsm_error(-EINVAL, "the destination of volume %u, '%s', is source volume %d '%s'; "
                         "refusing to write into the source chain", i, path, k, src->v[k].path);
    return lsm_error(-EINVAL, "the destination of volume %u, '%s', is '%s', a file of the source chain; "
                     "refusing to write into it", i, path, e->name);
}

int lsm_jobfile_check_sources(const struct lsm_chain_desc *src, const struct lsm_jobfile *job)
{
    if (job->n != src->n)
        return lsm_error(-EINVAL, "the job lists %u volume%s but the chain of '%s' has %u",
                         job->n, job->n == 1 ? "" : "s", src->v[0].path, src->n);
    for (unsigned i = 0; i < job->n; i++) {
        const struct lsm_volume_pair *p = &job->v[i];
        struct lsm_fileid id;
        int r = lsm_fileid_path(p->src_path, &id);
        if (r == -ENOENT)
            return lsm_error(r, "volume %u: source '%s' does not exist", i, p->src_path);
        if (r < 0)
            return r;
        if (!lsm_fileid_same(&id, &src->v[i].id)) {
            int k = volume_index(src, &id);
            if (k >= 0)
                return lsm_error(-EINVAL, "volume %u: source '%s' is volume %d of the chain of '%s', not volume %u "
                                 "('%s'); list the volumes top first, each backed by the next",
                                 i, p->src_path, k, src->v[0].path, i, src->v[i].path);
            return lsm_error(-EINVAL, "volume %u: source '%s' is not in the chain of '%s' (its volume %u is '%s')",
                             i, p->src_path, src->v[0].path, i, src->v[i].path);
        }
        if (p->src_fmt != LSM_FMT_AUTO && p->src_fmt != src->v[i].format)
            return lsm_error(-EINVAL, "volume %u: source '%s' is %s, not %s", i, p->src_path,
                             lsm_format_name(src->v[i].format), lsm_format_name(p->src_fmt));
    }
    return 0;
}

int lsm_jobfile_check_destinations(const struct lsm_chain_desc *src, const struct lsm_jobfile *job)
{
    struct lsm_filekey *keys = calloc(job->n ? job->n : 1, sizeof *keys);
    if (!keys)
        return lsm_error(-ENOMEM, "out of memory");
    int r = 0;
    unsigned got = 0;
    for (unsigned i = 0; i < job->n && r == 0; i++, got++) {
        const char *path = job->v[i].dst_path;
        r = lsm_filekey_get(path, &keys[i]);
        if (r < 0)
            break;
        if (keys[i].exists)
            r = check_not_source(src, &keys[i].id, i, path);
        struct stat st;
        /* a FIFO or a device node is never a volume: not opened, not waited on */
        if (r == 0 && keys[i].exists && stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
            r = lsm_error(-EINVAL, "the destination of volume %u, '%s', is not a regular file or a block device",
                          i, path);
        if (r == 0 && job->v[i].dst_type == LSM_DOMAIN_BLOCK) {
            /* block volumes are LVs: extended and removed through LVM */
            _cleanup_free_ char *vg = NULL, *lv = NULL;
            r = split_lv_path(path, &vg, &lv);
        }
        for (unsigned k = 0; k < i && r == 0; k++)
            if (lsm_filekey_same(&keys[k], &keys[i]))
                r = lsm_error(-EINVAL, "volumes %u and %u have the same destination ('%s' and '%s')",
                              k, i, job->v[k].dst_path, path);
    }
    for (unsigned i = 0; i < got; i++)
        lsm_filekey_free(&keys[i]);
    free(keys);
    return r;
}

int lsm_jobfile_check_chain(const struct lsm_jobfile *job, const struct lsm_chain_desc *dst)
{
    for (unsigned i = 0; i < job->n; i++) {
        const struct lsm_volume_pair *p = &job->v[i];
        if (i >= dst->n)
            return lsm_error(-EINVAL, "volume %u: destination '%s' is not in the destination chain: "
                             "'%s' (the destination of volume %u) has no backing file",
                             i, p->dst_path, dst->v[i - 1].path, i - 1);
        struct lsm_fileid id;
        int r = lsm_fileid_path(p->dst_path, &id);
        if (r == -ENOENT)
            return lsm_error(r, "volume %u: destination '%s' does not exist (clone-structure creates it)",
                             i, p->dst_path);
        if (r < 0)
            return r;
        if (!lsm_fileid_same(&id, &dst->v[i].id) && i == 0)
            return lsm_error(-EINVAL, "volume 0: destination '%s' changed while it was being read", p->dst_path);
        if (!lsm_fileid_same(&id, &dst->v[i].id))
            return lsm_error(-EINVAL, "volume %u: destination '%s' is not the backing file of '%s' "
                             "(the destination of volume %u), which is '%s'",
                             i, p->dst_path, dst->v[i - 1].path, i - 1, dst->v[i].path);
        if (p->dst_fmt != LSM_FMT_AUTO && p->dst_fmt != dst->v[i].format)
            return lsm_error(-EINVAL, "volume %u: destination '%s' is %s, not %s", i, p->dst_path,
                             lsm_format_name(dst->v[i].format), lsm_format_name(p->dst_fmt));
        if (p->dst_type_given && p->dst_type != dst->v[i].type)
            return lsm_error(-EINVAL, "volume %u: destination '%s' is a %s, but the job says \"type\": \"%s\"",
                             i, p->dst_path, dst->v[i].type == LSM_DOMAIN_BLOCK ? "block device" : "file",
                             p->dst_type == LSM_DOMAIN_BLOCK ? "block" : "file");
    }
    if (dst->n > job->n)
        return lsm_error(-EINVAL, "the job lists %u volume%s but its destination chain has %u: "
                         "'%s' (the destination of volume %u) is backed by '%s'",
                         job->n, job->n == 1 ? "" : "s", dst->n, dst->v[job->n - 1].path, job->n - 1,
                         dst->v[job->n].path);
    return 0;
}

/* ---- clone ---- */

/* Domain and volume name for a destination path. */
static int dst_domain(const struct lsm_volume_pair *p, struct lsm_domain **dom, char **name)
{
    _cleanup_free_ char *where = NULL;
    if (p->dst_type == LSM_DOMAIN_BLOCK) {
        int r = split_lv_path(p->dst_path, &where, name);
        if (r < 0)
            return r;
    } else {
        _cleanup_free_ char *a = strdup(p->dst_path), *b = strdup(p->dst_path);
        if (!a || !b)
            return lsm_error(-ENOMEM, "out of memory");
        where = strdup(dirname(a));
        *name = strdup(basename(b));
        if (!where || !*name)
            return lsm_error(-ENOMEM, "out of memory");
    }
    return lsm_domain_open(p->dst_type, where, dom);
}

int lsm_jobfile_ensure_room(const struct lsm_volume_pair *p, const struct lsm_volume_desc *v)
{
    if (p->dst_type != LSM_DOMAIN_BLOCK)
        return 0;
    struct lsm_domain *dom;
    _cleanup_free_ char *name = NULL;
    int r = dst_domain(p, &dom, &name);
    if (r < 0)
        return r;
    r = dom->ops->extend_volume(dom, name, lsm_volume_needed_size(v));
    lsm_domain_close(dom);
    return r;
}

/* Write an empty image of v's structure into the destination of p.  The
 * descriptor is checked before the first write: a regular file (file
 * domain) or a block device (block domain), and not a file of src (the
 * path may have changed since lsm_jobfile_check_destinations). */
static int write_empty_image(const struct lsm_chain_desc *src, unsigned i, const struct lsm_volume_pair *p,
                             bool reused)
{
    const struct lsm_volume_desc *v = &src->v[i];
    /* O_NONBLOCK|O_NOCTTY: never wait on what the path names */
    _cleanup_close_ int fd = open(p->dst_path, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open '%s'", p->dst_path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat '%s'", p->dst_path);
    if (p->dst_type == LSM_DOMAIN_FILE ? !S_ISREG(st.st_mode) : !S_ISBLK(st.st_mode))
        return lsm_error(-EINVAL, "destination volume '%s' is not a %s", p->dst_path,
                         p->dst_type == LSM_DOMAIN_FILE ? "regular file" : "block device");
    struct lsm_fileid id;
    int r = lsm_fileid_fd(fd, p->dst_path, &id);
    if (r == 0)
        r = check_not_source(src, &id, i, p->dst_path);
    if (r < 0)
        return r;
    /* a reused file starts empty: nothing of its old content survives */
    if (reused && p->dst_type == LSM_DOMAIN_FILE && ftruncate(fd, 0) < 0)
        return lsm_error_errno(-errno, "cannot empty '%s'", p->dst_path);
    if (v->format == LSM_FMT_RAW) {
        if (p->dst_type == LSM_DOMAIN_FILE && ftruncate(fd, (off_t)v->virtual_size) < 0)
            r = lsm_error_errno(-errno, "cannot size '%s'", p->dst_path);
    } else {
        struct qcow2_create_opts o = {
            .size = v->virtual_size,
            .cluster_bits = (unsigned)__builtin_ctz(v->cluster_size),
            .refcount_bits = v->refcount_bits,
            .extended_l2 = v->extended_l2,
            .backing_name = p->dst_backing,
            .backing_fmt = p->dst_backing ? v->backing_fmt : LSM_FMT_AUTO,
            .compression_type = v->compression_type,
        };
        struct qcow2_writer *w = NULL;
        r = qcow2_writer_create(fd, 512, &o, &w);
        if (r == 0)
            r = qcow2_writer_finish(w);
        qcow2_writer_close(w);
        if (r < 0)
            lsm_error_prefix("%s", p->dst_path);
    }
    if (r == 0 && fsync(fd) < 0)
        r = lsm_error_errno(-errno, "cannot sync '%s'", p->dst_path);
    return r;
}

static bool cancelled(const volatile sig_atomic_t *cancel)
{
    return cancel && *cancel;
}

/* Remove the volumes of job that created[] marks; returns how many could
 * not be removed (the first one's path in *failed). */
static unsigned remove_created(const struct lsm_jobfile *job, const bool *created, const char **failed)
{
    unsigned left = 0;
    for (unsigned k = 0; k < job->n; k++) {
        if (!created[k])
            continue;
        struct lsm_domain *dom;
        _cleanup_free_ char *name = NULL;
        int r = dst_domain(&job->v[k], &dom, &name);
        if (r == 0) {
            r = dom->ops->remove_volume(dom, name);
            lsm_domain_close(dom);
        }
        if (r < 0 && !left++)
            *failed = job->v[k].dst_path;
    }
    return left;
}

int lsm_chain_clone(const struct lsm_chain_desc *src, const struct lsm_jobfile *job, bool reuse,
                    const volatile sig_atomic_t *cancel)
{
    return lsm_chain_clone_sized(src, job, reuse, cancel, 0);
}

int lsm_chain_clone_sized(const struct lsm_chain_desc *src, const struct lsm_jobfile *job,
                          bool reuse, const volatile sig_atomic_t *cancel, uint64_t top_min)
{
    if (src->n != job->n)
        return lsm_error(-EINVAL, "the job lists %u volumes but the chain has %u", job->n, src->n);
    _cleanup_free_ bool *created = calloc(job->n, sizeof *created);
    if (!created)
        return lsm_error(-ENOMEM, "out of memory");
    int r = 0;
    unsigned ncreated = 0;
    /* every refusal that can be known now comes before the first write */
    for (unsigned i = 0; i < job->n && r == 0; i++) {
        const struct lsm_volume_pair *p = &job->v[i];
        if (p->dst_fmt != LSM_FMT_AUTO && p->dst_fmt != src->v[i].format)
            return lsm_error(-ENOTSUP, "'%s': converting %s to %s is not supported by clone-structure",
                             p->dst_path, lsm_format_name(src->v[i].format), lsm_format_name(p->dst_fmt));
        struct lsm_domain *dom = NULL;
        _cleanup_free_ char *name = NULL;
        r = dst_domain(p, &dom, &name);
        if (r < 0)
            return r;
        int ex = dom->ops->volume_exists(dom, name);
        lsm_domain_close(dom);
        if (ex < 0)
            return ex;
        if (ex && !reuse)
            return lsm_error(-EEXIST, "destination volume '%s' already exists (use --reuse to overwrite it)",
                             p->dst_path);
        struct stat st;
        if (ex && stat(p->dst_path, &st) < 0)
            return lsm_error_errno(-errno, "cannot stat '%s'", p->dst_path);
        if (ex && (p->dst_type == LSM_DOMAIN_FILE ? !S_ISREG(st.st_mode) : !S_ISBLK(st.st_mode)))
            return lsm_error(-EINVAL, "destination volume '%s' is not a %s", p->dst_path,
                             p->dst_type == LSM_DOMAIN_FILE ? "regular file" : "block device");
    }
    /* base first, so every backing file exists when its child names it */
    for (unsigned i = job->n; i-- > 0;) {
        const struct lsm_volume_desc *v = &src->v[i];
        const struct lsm_volume_pair *p = &job->v[i];
        if (cancelled(cancel)) {
            r = -EINTR;
            break;
        }
        if (p->dst_fmt != LSM_FMT_AUTO && p->dst_fmt != v->format) {
            r = lsm_error(-ENOTSUP, "'%s': converting %s to %s is not supported by clone-structure",
                          p->dst_path, lsm_format_name(v->format), lsm_format_name(p->dst_fmt));
            break;
        }
        struct lsm_domain *dom = NULL;
        _cleanup_free_ char *name = NULL;
        r = dst_domain(p, &dom, &name);
        if (r < 0)
            break;
        int ex = dom->ops->volume_exists(dom, name);
        uint64_t need = p->dst_type == LSM_DOMAIN_BLOCK ? lsm_volume_needed_size(v) : v->virtual_size;
        /* a leaf the extender grows: the policy's size, not one more chunk
         * of LSM_BLOCK_CHUNK (1 GiB, whatever the policy), but never less
         * than the data the copy onto it starts from */
        if (i == 0 && p->dst_type == LSM_DOMAIN_BLOCK && top_min)
            need = MAX(top_min, align_up(v->used_end, v->cluster_size ? v->cluster_size : 512));
        if (ex < 0) {
            r = ex;
        } else if (ex && !reuse) {
            r = lsm_error(-EEXIST, "destination volume '%s' already exists (use --reuse to overwrite it)",
                          p->dst_path);
        } else if (ex) {
            r = dom->ops->extend_volume(dom, name, need);
        } else {
            /* create_volume fails with -EEXIST rather than take over a
             * volume that appeared meanwhile: what it made is ours */
            r = dom->ops->create_volume(dom, name, need);
            if (r == 0) {
                created[i] = true;
                ncreated++;
            }
        }
        lsm_domain_close(dom);
        if (r == 0 && cancelled(cancel))
            r = -EINTR;
        if (r == 0)
            r = write_empty_image(src, i, p, ex > 0);
        if (r < 0)
            break;
    }
    /* the last moment a signal still undoes the run */
    if (r == 0 && cancelled(cancel))
        r = -EINTR;
    if (r < 0) {
        char saved[1024];
        if (r == -EINTR)
            snprintf(saved, sizeof saved, "interrupted by a signal");
        else
            snprintf(saved, sizeof saved, "%s", lsm_last_error());
        const char *failed = NULL;
        unsigned left = remove_created(job, created, &failed);
        char why[512];
        snprintf(why, sizeof why, "%s", lsm_last_error());
        if (left)
            lsm_error(r, "%s; %u of the %u volume%s this run created could not be removed (the first: '%s': %s)",
                      saved, left, ncreated, ncreated == 1 ? "" : "s", failed, why);
        else if (ncreated)
            lsm_error(r, "%s; removed the %u volume%s this run created", saved, ncreated,
                      ncreated == 1 ? "" : "s");
        else
            lsm_error(r, "%s", saved);
    }
    return r;
}
