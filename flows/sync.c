/* sync as a library: the checks of the two chains, then the volumes copied
 * as jobs, up to `parallel` at once, from a loop on the caller's thread
 * that starts them, forwards a cancel and sums their progress. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"
#include "cleanup.h"
#include "config.h"
#include "error.h"
#include "fileid.h"
#include "journal.h"
#include "limiter.h"
#include "qcow2/qcow2-ident.h"
#include "sync.h"
#include "util.h"
#ifdef HAVE_LIBSODIUM
#include "checksum.h"
#endif

#define POLL_MS 20

static const char *const type_names[] = { "ALL", "INTERNAL", "LEAF" };

const char *lsm_sync_type_name(enum lsm_sync_type t)
{
    return (unsigned)t < ARRAY_SIZE(type_names) ? type_names[t] : "?";
}

int lsm_sync_type_parse(const char *s, enum lsm_sync_type *out)
{
    for (unsigned i = 0; i < ARRAY_SIZE(type_names); i++)
        if (!strcasecmp(s, type_names[i])) {
            *out = (enum lsm_sync_type)i;
            return 0;
        }
    return -EINVAL;
}

/* ---- Checks: the two chains and the volume pairs ---- */

struct sync_plan {
    struct lsm_jobfile job;
    struct lsm_chain_desc src, dst;
    bool nbd;                       /* the job's destinations are NBD exports */
    bool nbd_src;                   /* the job's sources are NBD exports (a pull) */
};

static void plan_free(struct sync_plan *p)
{
    lsm_chain_desc_free(&p->src);
    lsm_chain_desc_free(&p->dst);
    lsm_jobfile_free(&p->job);
}

static int oom(void)
{
    return lsm_error(-ENOMEM, "out of memory");
}

/* A job whose destinations are NBD exports (docs/nbd.md, "sync"), each
 * serving one destination layer alone.  An export does not say what backs
 * it, nor which file it serves, so the chain's order and the identity
 * checks cannot be done: what is checked is that every destination is an
 * export (a job mixing exports and local volumes is refused: the local
 * half's chain could not be checked either), no two entries name the same
 * URI, a format the job gives is the source's, no type is given, and each
 * export's size is its source volume's virtual size. */
static const char *end_path(const struct lsm_jobfile *job, unsigned i, bool src)
{
    return src ? job->v[i].src_path : job->v[i].dst_path;
}

static int count_nbd(const struct lsm_jobfile *job, bool src, unsigned *first)
{
    unsigned n = 0;
    for (unsigned i = job->n; i-- > 0;)
        if (lsm_is_nbd_uri(end_path(job, i, src))) {
            n++;
            *first = i;
        }
    return (int)n;
}

/* A job whose sources (src) or destinations are NBD exports must name
 * every one of them so: -EINVAL naming the first export and the first
 * local volume otherwise.  why: the reason, for the message. */
static int check_all_nbd(const char *jobfile, const struct lsm_jobfile *job, bool src,
                         const char *why)
{
    unsigned k = 0;
    unsigned n = (unsigned)count_nbd(job, src, &k);
    if (!n || n == job->n)
        return 0;
    unsigned l = 0;
    while (l < job->n && lsm_is_nbd_uri(end_path(job, l, src)))
        l++;
    const char *what = src ? "source" : "destination";
    return lsm_error(-EINVAL, "job file '%s' mixes NBD exports (volume %u: '%s') and local "
                     "volumes (volume %u: '%s') as %ss: %sname every %s as an NBD URI or none",
                     jobfile, k, end_path(job, k, src), l, end_path(job, l, src), what, why,
                     what);
}

static int nbd_check_job(const char *jobfile, const struct lsm_jobfile *job)
{
    unsigned k = 0, ks = 0;
    if (count_nbd(job, true, &ks) && count_nbd(job, false, &k))
        return lsm_error(-EINVAL, "job file '%s': volume %u: source '%s' and volume %u: "
                         "destination '%s' are both NBD exports: one end of a sync must be "
                         "local (its chain is what the order is checked against)", jobfile, ks,
                         job->v[ks].src_path, k, job->v[k].dst_path);
    int r = check_all_nbd(jobfile, job, true, "");
    return r < 0 ? r : check_all_nbd(jobfile, job, false, "the local volumes' chain cannot be "
                                     "checked through an export; ");
}

/* Whether a sync of type t copies volume i (top first) of an n-volume chain. */
static bool copies(enum lsm_sync_type t, unsigned i)
{
    return t == LSM_SYNC_ALL || (t == LSM_SYNC_LEAF ? i == 0 : i > 0);
}

/* The size of volume i's export (one connection, closed again). */
static int export_size(unsigned i, const char *uri, uint64_t *size)
{
    struct lsm_image *img = NULL;
    int r = lsm_image_open(uri, LSM_FMT_RAW, 0, &img);
    if (r < 0) {
        lsm_error_prefix("volume %u", i);
        return r;
    }
    *size = img->virtual_size;
    lsm_image_close(img);
    return 0;
}

static int nbd_check_destinations(const struct lsm_chain_desc *src, struct lsm_jobfile *job,
                                  enum lsm_sync_type type)
{
    for (unsigned i = 0; i < job->n; i++) {
        struct lsm_volume_pair *p = &job->v[i];
        const struct lsm_volume_desc *sv = &src->v[i];
        if (p->dst_type_given)
            return lsm_error(-EINVAL, "volume %u: destination '%s' is an NBD export: it has no "
                             "\"type\"", i, p->dst_path);
        if (p->dst_fmt != LSM_FMT_AUTO && p->dst_fmt != sv->format)
            return lsm_error(-EINVAL, "volume %u: destination '%s' is given as %s, but its source "
                             "'%s' is %s", i, p->dst_path, lsm_format_name(p->dst_fmt),
                             sv->path, lsm_format_name(sv->format));
        for (unsigned k = 0; k < i; k++)
            if (!strcmp(job->v[k].dst_path, p->dst_path))
                return lsm_error(-EINVAL, "volumes %u and %u have the same destination ('%s')",
                                 k, i, p->dst_path);
    }
    /* Sizes of the exports this sync writes (the others need not be
     * served: the leaf's, say, while INTERNAL runs and the VM host mirrors
     * the leaf), one export at a time (a qemu-nbd without --shared serves
     * one client at a time: this connection is closed before the copy
     * connects). */
    for (unsigned i = 0; i < job->n; i++) {
        struct lsm_volume_pair *p = &job->v[i];
        const struct lsm_volume_desc *sv = &src->v[i];
        free(p->dst_backing);
        p->dst_backing = NULL;
        p->dst_type = LSM_DOMAIN_FILE;
        if (!copies(type, i))
            continue;
        uint64_t size;
        int r = export_size(i, p->dst_path, &size);
        if (r < 0)
            return r;
        if (size != sv->virtual_size)
            return lsm_error(-EINVAL, "volume %u: destination %s is %" PRIu64 " bytes, but its "
                             "source '%s' is %" PRIu64 " bytes: not a layer of this chain's "
                             "structure", i, p->dst_path, size, sv->path, sv->virtual_size);
    }
    return 0;
}

/* A pull (docs/nbd.md, "sync from NBD exports"): every source is an export
 * serving one source layer alone, every destination a local volume of a
 * chain made by clone-structure.  What is known is the destination chain:
 * it is described and checked as a local sync checks it (entry i+1's
 * destination backs entry i's, the job lists the whole chain, a format or
 * type given is what is there), and the source descriptions are made from
 * it: each layer's format and cluster size are its destination's, its
 * size the export's.  Checked: no two entries name the same URI, a source
 * format given is the destination's, each export this sync reads is the
 * size of its destination volume.  An export does not say what backs it:
 * the job's order (top first) is the destination chain's, and that the
 * exports serve those layers is the job's to say. */
static int nbd_plan_sources(const struct lsm_sync_opts *o, struct sync_plan *p)
{
    struct lsm_jobfile *job = &p->job;
    int r;
    if (o->copy.offload_required || o->copy.offload_mode == LSM_OFFLOAD_ONLY ||
        o->copy.offload_cmd)
        return lsm_error(-EINVAL, "offload (-C, --offload=NAME, --offload-cmd) needs source "
                         "files: NBD exports give their data over the connection");
    for (unsigned i = 0; i < job->n; i++)
        for (unsigned k = 0; k < i; k++)
            if (!strcmp(job->v[k].src_path, job->v[i].src_path))
                return lsm_error(-EINVAL, "volumes %u and %u have the same source ('%s')", k, i,
                                 job->v[i].src_path);
    if ((r = lsm_chain_describe_flags(job->v[0].dst_path, job->v[0].dst_fmt,
                                      LSM_OPEN_INCOMPLETE_OK, &p->dst)) < 0)
        return r;
    if ((r = lsm_jobfile_check_chain(job, &p->dst)) < 0)
        return r;
    p->src.v = calloc(job->n, sizeof *p->src.v);
    if (!p->src.v)
        return oom();
    p->src.n = job->n;
    for (unsigned i = 0; i < job->n; i++) {
        struct lsm_volume_pair *jp = &job->v[i];
        const struct lsm_volume_desc *d = &p->dst.v[i];
        struct lsm_volume_desc *sv = &p->src.v[i];
        if (d->type == LSM_DOMAIN_BLOCK)
            return lsm_error(-EINVAL, "volume %u: destination '%s' is a block device: a sync "
                             "from NBD exports does not know how much room each layer needs; "
                             "sync into files", i, jp->dst_path);
        if (jp->src_fmt != LSM_FMT_AUTO && jp->src_fmt != d->format)
            return lsm_error(-EINVAL, "volume %u: source '%s' is given as %s, but its "
                             "destination '%s' is %s", i, jp->src_path,
                             lsm_format_name(jp->src_fmt), d->path, lsm_format_name(d->format));
        if (!(sv->path = strdup(jp->src_path)) || !(sv->name = strdup(jp->src_path)))
            return oom();
        sv->format = d->format;
        sv->type = LSM_DOMAIN_FILE;
        sv->cluster_size = d->cluster_size;
        sv->backing_fmt = d->backing_fmt;
        sv->virtual_size = d->virtual_size;
        jp->dst_type = d->type;
        free(jp->dst_backing);
        jp->dst_backing = NULL;
        if (d->backing_name && !(jp->dst_backing = strdup(d->backing_name)))
            return oom();
        if (!copies(o->type, i))
            continue;
        /* One export at a time (a qemu-nbd without --shared serves one
         * client): closed before the copy connects. */
        uint64_t size;
        if ((r = export_size(i, jp->src_path, &size)) < 0)
            return r;
        if (size != d->virtual_size)
            return lsm_error(-EINVAL, "volume %u: source %s is %" PRIu64 " bytes, but its "
                             "destination '%s' is %" PRIu64 " bytes: not the layer this "
                             "volume is a copy of", i, jp->src_path, size, d->path,
                             d->virtual_size);
        /* its own data is at most all of it (the export's map is read
         * by the copy, not before) */
        sv->data_bytes = size;
    }
    return 0;
}

/* Everything before the first write: describe both chains, and check that
 * no destination is a file of the source chain, that the destinations form
 * one chain of the source's structure, and (job file) that its entries are
 * those chains. */
static int plan_prepare(const struct lsm_sync_opts *o, struct sync_plan *p)
{
    struct lsm_jobfile *job = &p->job;
    const char *jobfile = o->jobfile;
    int r;
    if (jobfile && (r = lsm_jobfile_load(jobfile, job)) < 0)
        return r;
    if (jobfile && (r = nbd_check_job(jobfile, job)) < 0)
        return r;
    unsigned first_nbd = 0;
    p->nbd = jobfile && count_nbd(job, false, &first_nbd) > 0;
    p->nbd_src = jobfile && count_nbd(job, true, &first_nbd) > 0;
    if (p->nbd_src)
        return nbd_plan_sources(o, p);
    if (!jobfile && (!o->src_top || !o->dst_top))
        return lsm_error(-EINVAL, "need SRC_TOP and DST_TOP");
    if (!jobfile && (lsm_is_nbd_uri(o->src_top) || lsm_is_nbd_uri(o->dst_top)))
        return lsm_error(-EINVAL, "%s: an NBD export does not show the chain behind it: name "
                         "every volume in a job file (--job; docs/nbd.md)",
                         lsm_is_nbd_uri(o->src_top) ? o->src_top : o->dst_top);
    const char *src_top = jobfile ? job->v[0].src_path : o->src_top;
    const char *dst_top = jobfile ? job->v[0].dst_path : o->dst_top;
    if ((r = lsm_chain_describe(src_top, jobfile ? job->v[0].src_fmt : LSM_FMT_AUTO, &p->src)) < 0)
        return r;
    /* A job names its source volumes: they must be the source chain, in
     * order.  Its destinations are checked against every file of the
     * source chain before the destination chain is even opened. */
    if (p->nbd) {
        if ((r = lsm_jobfile_check_sources(&p->src, job)) < 0)
            return r;
        if (o->checksum)
            return lsm_error(-EINVAL, "--checksum: an NBD export of one layer alone is not the "
                             "guest view of its volume (checksum the destination chain "
                             "once it is served whole)");
        if (o->copy.offload_required || o->copy.offload_mode == LSM_OFFLOAD_ONLY ||
            o->copy.offload_cmd)
            return lsm_error(-EINVAL, "offload (-C, --offload=NAME, --offload-cmd) needs "
                             "destination files: NBD exports take their data over the "
                             "connection");
        return nbd_check_destinations(&p->src, job, o->type);
    }
    if (jobfile && ((r = lsm_jobfile_check_sources(&p->src, job)) < 0 ||
                    (r = lsm_jobfile_check_destinations(&p->src, job)) < 0))
        return r;
    if (!jobfile) {
        /* the top first: if it is a source file, say so, whatever else is wrong below it */
        struct lsm_volume_pair top = { .dst_path = (char *)dst_top };
        struct lsm_jobfile one = { .n = 1, .v = &top };
        if ((r = lsm_jobfile_check_destinations(&p->src, &one)) < 0)
            return r;
    }
    /* A destination volume an interrupted sync left incomplete is what
     * this sync finishes. */
    if ((r = lsm_chain_describe_flags(dst_top, jobfile ? job->v[0].dst_fmt : LSM_FMT_AUTO,
                                      LSM_OPEN_INCOMPLETE_OK, &p->dst)) < 0)
        return r;
    if (jobfile) {
        /* one destination chain: entry i+1's destination backs entry i's */
        if ((r = lsm_jobfile_check_chain(job, &p->dst)) < 0)
            return r;
        for (unsigned i = 0; i < job->n; i++) {
            job->v[i].dst_type = p->dst.v[i].type;
            free(job->v[i].dst_backing);
            job->v[i].dst_backing = NULL;
            if (p->dst.v[i].backing_name &&
                !(job->v[i].dst_backing = strdup(p->dst.v[i].backing_name)))
                return oom();
        }
        /* again with the types that are there (a job may omit "type") */
        if ((r = lsm_jobfile_check_destinations(&p->src, job)) < 0)
            return r;
    } else {
        /* destination pairs from the destination chain as it is */
        job->v = calloc(p->dst.n, sizeof *job->v);
        if (!job->v)
            return oom();
        job->n = p->dst.n;
        for (unsigned i = 0; i < p->dst.n; i++) {
            struct lsm_volume_pair *v = &job->v[i];
            const struct lsm_volume_desc *d = &p->dst.v[i];
            v->src_path = strdup(i < p->src.n ? p->src.v[i].path : "");
            v->dst_path = strdup(d->path);
            v->dst_backing = d->backing_name ? strdup(d->backing_name) : NULL;
            v->dst_type = d->type;
            v->src_fmt = i < p->src.n ? p->src.v[i].format : LSM_FMT_AUTO;
            v->dst_fmt = d->format;
            if (!v->src_path || !v->dst_path || (d->backing_name && !v->dst_backing))
                return oom();
        }
        /* no volume of the destination chain (as QEMU resolves its backing
         * names) may be a file of the source chain */
        if ((r = lsm_jobfile_check_destinations(&p->src, job)) < 0)
            return r;
    }
    return lsm_chain_same_structure(&p->src, &p->dst);
}

/* ---- The volumes, as jobs ---- */

struct sync_ctx;

struct vol {
    struct sync_ctx *ctx;
    struct lsm_sync_volume *out;
    const struct lsm_volume_desc *src;
    const struct lsm_volume_pair *pair;
    uint64_t done;                  /* data bytes (the old progress callback's) */
    struct lsm_job_progress jp;     /* by class */
    struct lsm_job *job;            /* while running */
    unsigned k;                     /* place in the sync, base first */
    char *journal;                  /* with a sync journal: this volume's copy journal */
    bool resume;                    /* that journal exists: the copy resumes it */
};

struct sync_ctx {
    const struct lsm_sync_opts *o;
    pthread_mutex_t lock;
    struct vol *vols;
    unsigned nvols;
    uint64_t total;
    struct lsm_copy_opts base;      /* per-volume options */
    struct lsm_limiter *limiter;    /* the sync's: every volume under it */
    /* The sync journal (o->journal), or NULL; its lock is jlock (taken by
     * the volumes' copies as each one finishes). */
    pthread_mutex_t jlock;
    struct lsm_journal *sj;
    struct lsm_journal_file *ids;   /* 2 per volume: source, destination */
    bool nbd;                       /* destinations are NBD exports (one layer each) */
    bool nbd_src;                   /* sources are NBD exports (one layer each) */
};

/* ---- The sync journal (docs/resume.md, "sync") ----
 *
 * An engine journal (journal.h) with one 512-byte "granule" per volume:
 * granule k done means volume k (base first) is synced and durable.  Its
 * options say the sync type and the number of volumes; its files are two
 * per volume, source and destination.  A destination is compared only
 * once its volume is done (size 0, no mtime, no hash before: a volume in
 * progress is its copy journal's to check); sources always.  An NBD end
 * (a push's destinations, a pull's sources) is what a copy journal records
 * for an export: its URI, dev and ino 0, its size (the plan checked it
 * against the local end), no modification time; a resume must name the
 * same URI.  Its blocks are the volume's copy journal's to check. */

#define SJ_UNIT 512u

static char *vol_journal_path(const char *journal, unsigned k)
{
    char *p;
    return asprintf(&p, "%s.%u", journal, k) < 0 ? NULL : p;
}

/* The identity of one file as the copy journal records it (stat after
 * open, block devices by st_rdev; qcow2: the hash of its header and L1
 * table).  full false: only which file it is. */
static int file_ident(const char *path, enum lsm_format fmt, const char *role, unsigned k,
                      bool full, struct lsm_journal_file *f)
{
    lsm_journal_file_clear(f);
    if (asprintf(&f->role, "%s (volume %u)", role, k) < 0) {
        f->role = NULL;
        return oom();
    }
    if (!(f->path = strdup(path)))
        return oom();
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", path);
    bool blk = S_ISBLK(sb.st_mode);
    f->dev = blk ? (uint64_t)sb.st_rdev : (uint64_t)sb.st_dev;
    f->ino = blk ? 0 : (uint64_t)sb.st_ino;
    f->mtime_ns = -1;
    if (!full)
        return 0;
    off_t end = blk ? lseek(fd, 0, SEEK_END) : sb.st_size;
    if (end < 0)
        return lsm_error_errno(-errno, "cannot size %s", path);
    f->size = (uint64_t)end;
    f->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    if (fmt == LSM_FMT_QCOW2) {
        int r = qcow2_ident_hash(fd, &f->hash);
        if (r < 0)
            return r;
        f->has_hash = r > 0;
    }
    return 0;
}

/* Whether the sync's sources (dst false) or its destinations are exports
 * (a job names all of them so, or none). */
static bool vol_nbd_end(const struct sync_ctx *ctx, bool dst)
{
    return dst ? ctx->nbd : ctx->nbd_src;
}

/* The identity of volume k's source (dst false) or destination: an
 * export's as above, a file's by file_ident. */
static int vol_ident(struct sync_ctx *ctx, unsigned k, bool dst, bool full)
{
    const struct vol *v = &ctx->vols[k];
    const char *role = dst ? "destination" : "source";
    const char *path = dst ? v->pair->dst_path : v->src->path;
    struct lsm_journal_file *f = &ctx->ids[2 * k + dst];
    if (!vol_nbd_end(ctx, dst))
        return file_ident(path, v->src->format, role, k, full, f);
    lsm_journal_file_clear(f);
    if (asprintf(&f->role, "%s (volume %u)", role, k) < 0) {
        f->role = NULL;
        return oom();
    }
    if (!(f->path = strdup(path)))
        return oom();
    f->mtime_ns = -1;
    f->size = v->src->virtual_size;
    return 0;
}

/* Resume: every export is named by the URI the journal recorded for it
 * (lsm_journal_check_files has compared the rest). */
static int sj_check_uris(const struct sync_ctx *ctx)
{
    for (unsigned k = 0; k < ctx->nvols; k++)
        for (int dst = 0; dst < 2; dst++) {
            if (!vol_nbd_end(ctx, dst))
                continue;
            const struct lsm_journal_file *a = &ctx->sj->files[2 * k + dst];
            const struct lsm_journal_file *b = &ctx->ids[2 * k + dst];
            if (!a->path || strcmp(a->path, b->path))
                return lsm_error(-ESTALE, "%s %s is not the export this journal was written for "
                                 "(it names %s)", b->role, b->path, a->path ? a->path : "none");
        }
    return 0;
}

static json_object *sj_options(const struct sync_ctx *ctx)
{
    json_object *j = json_object_new_object();
    if (!j)
        return NULL;
    json_object_object_add(j, "sync", json_object_new_string(lsm_sync_type_name(ctx->o->type)));
    json_object_object_add(j, "volumes", json_object_new_int64(ctx->nvols));
    return j;
}

static bool sj_done(const struct sync_ctx *ctx, unsigned k)
{
    uint64_t end;
    return lsm_journal_done_at(ctx->sj, (uint64_t)k * SJ_UNIT, &end);
}

/* Every volume's identities now (destinations in full where done says). */
static int sj_idents(struct sync_ctx *ctx, const bool *done)
{
    for (unsigned k = 0; k < ctx->nvols; k++) {
        int r = vol_ident(ctx, k, false, true);
        if (r == 0)
            r = vol_ident(ctx, k, true, done[k]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The journal is none of the files the sync reads or writes (exports are
 * not files: the journal cannot be one). */
static int sj_alias(const struct sync_ctx *ctx, const char *journal)
{
    struct lsm_filekey kj = { 0 };
    int r = lsm_filekey_get(journal, &kj);
    for (unsigned k = 0; r == 0 && k < ctx->nvols; k++) {
        const char *paths[2] = { ctx->vols[k].src->path, ctx->vols[k].pair->dst_path };
        for (int i = 0; i < 2 && r == 0; i++) {
            if (vol_nbd_end(ctx, i))
                continue;
            struct lsm_filekey kf = { 0 };
            r = lsm_filekey_get(paths[i], &kf);
            if (r == 0 && lsm_filekey_same(&kj, &kf))
                r = lsm_error(-EINVAL, "refusing journal %s: it is %s, which this sync %s",
                              journal, paths[i], i ? "writes" : "reads");
            lsm_filekey_free(&kf);
        }
    }
    lsm_filekey_free(&kj);
    return r;
}

/* A volume journal left by a kill after its volume was recorded done (the
 * copy had not removed it yet): checked to be a journal, then removed. */
static void sj_drop_volume_journal(const char *path)
{
    struct lsm_journal *j = NULL;
    if (lsm_journal_load(path, &j) == 0)
        unlink(path);
    lsm_journal_free(j);
    lsm_error_clear();
}

/* 1 if path is a qcow2 image (version 3) whose header lacks lsm-sync's
 * incomplete bit, 0 if it has it or is no such image, -errno. */
static int qcow2_finished(const char *path)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open %s", path);
    uint8_t h[80];
    ssize_t n = pread(fd, h, sizeof h, 0);
    if (n < 0)
        return lsm_error_errno(-errno, "cannot read %s", path);
    if (n < (ssize_t)sizeof h || memcmp(h, "QFI\xfb", 4) || h[4] | h[5] | h[6] || h[7] < 3)
        return 0;
    return !(h[72] & 0x80);     /* bit 63 of the big-endian incompatible features */
}

/* Before any volume starts: a new journal saved, or the journal of an
 * interrupted sync loaded and checked against this one. */
static int sj_open(struct sync_ctx *ctx, struct lsm_sync_result *res)
{
    const struct lsm_sync_opts *o = ctx->o;
    const char *journal = o->journal;
    unsigned n = ctx->nvols;
    if (!n)
        return 0;
    int r = sj_alias(ctx, journal);
    if (r < 0)
        return r;
    ctx->ids = calloc(2 * (size_t)n, sizeof *ctx->ids);
    _cleanup_free_ bool *done = calloc(n, sizeof *done);
    if (!ctx->ids || !done)
        return oom();
    for (unsigned k = 0; k < n; k++)
        if (!(ctx->vols[k].journal = vol_journal_path(journal, k)))
            return oom();
    struct stat sb;
    if (!o->resume) {
        /* A journal is never overwritten by a new sync. */
        if (lstat(journal, &sb) == 0)
            return lsm_error(-EEXIST, "journal %s exists: add --resume to continue its sync, "
                             "or remove it", journal);
        for (unsigned k = 0; k < n; k++)
            if (lstat(ctx->vols[k].journal, &sb) == 0)
                return lsm_error(-EEXIST, "volume journal %s exists (of an earlier sync with "
                                 "journal %s): resume that sync, or remove it",
                                 ctx->vols[k].journal, journal);
        json_object *opts = sj_options(ctx);
        if (!opts)
            return oom();
        if ((r = lsm_journal_new(journal, (uint64_t)n * SJ_UNIT, SJ_UNIT, opts, &ctx->sj)) < 0 ||
            (r = sj_idents(ctx, done)) < 0 ||
            (r = lsm_journal_set_files(ctx->sj, ctx->ids, 2 * (size_t)n)) < 0)
            return r;
        return lsm_journal_save(ctx->sj);
    }
    if ((r = lsm_journal_load(journal, &ctx->sj)) < 0)
        return r;
    res->resumed = true;
    json_object *want = sj_options(ctx);
    if (!want)
        return oom();
    bool same = ctx->sj->size == (uint64_t)n * SJ_UNIT && ctx->sj->granule == SJ_UNIT &&
                ctx->sj->options && json_object_equal(want, ctx->sj->options);
    json_object_put(want);
    if (!same)
        return lsm_error(-ESTALE, "cannot resume from %s: it was written for another sync "
                         "(not a --type=%s sync of these %u volumes)", journal,
                         lsm_sync_type_name(o->type), n);
    for (unsigned k = 0; k < n; k++)
        done[k] = sj_done(ctx, k);
    if ((r = sj_idents(ctx, done)) < 0)
        return r;
    if ((r = lsm_journal_check_files(ctx->sj, ctx->ids, 2 * (size_t)n)) < 0 ||
        (r = sj_check_uris(ctx)) < 0) {
        lsm_error_prefix("cannot resume from %s", journal);
        return r;
    }
    for (unsigned k = 0; k < n; k++) {
        struct vol *v = &ctx->vols[k];
        bool have = lstat(v->journal, &sb) == 0;
        /* (An export has no such bit: a push's volume killed there is
         * finished by its copy journal, which has everything done.) */
        if (!done[k] && have && v->src->format == LSM_FMT_QCOW2 && !ctx->nbd) {
            /* The copy's journal is saved only after the writer marked the
             * destination incomplete, and the mark goes only when the
             * writer finishes, after the last data and the source's check:
             * a finished destination beside its copy journal is a volume
             * killed between its end and the sync journal's save. */
            if ((r = qcow2_finished(v->pair->dst_path)) < 0)
                return r;
            if (r == 1) {
                done[k] = true;
                if ((r = vol_ident(ctx, k, true, true)) < 0 ||
                    (r = lsm_journal_set_files(ctx->sj, ctx->ids, 2 * (size_t)n)) < 0 ||
                    (r = lsm_journal_mark(ctx->sj, (uint64_t)k * SJ_UNIT, SJ_UNIT)) < 0)
                    return r;
                lsm_journal_commit(ctx->sj);
            }
        }
        if (done[k]) {
            v->out->result = 0;
            v->out->already_done = true;
            v->done = v->out->bytes;
            v->jp.bytes_done = v->jp.bytes_skipped = v->jp.bytes_total;
            if (have)
                sj_drop_volume_journal(v->journal);
        } else {
            v->resume = have;
        }
    }
    /* saved by this run from now on (so that success removes it) */
    return lsm_journal_save(ctx->sj);
}

/* The copy of v reports everything durable (its record callback with
 * len 0, after the writer finished): v is done in the sync journal before
 * the copy removes its own journal, so a kill in between costs nothing. */
static int sj_volume_done(struct vol *v)
{
    struct sync_ctx *ctx = v->ctx;
    unsigned k = v->k;
    pthread_mutex_lock(&ctx->jlock);
    int r = vol_ident(ctx, k, true, true);
    if (r == 0)
        r = lsm_journal_set_files(ctx->sj, ctx->ids, 2 * (size_t)ctx->nvols);
    if (r == 0)
        r = lsm_journal_mark(ctx->sj, (uint64_t)k * SJ_UNIT, SJ_UNIT);
    if (r == 0) {
        lsm_journal_commit(ctx->sj);
        r = lsm_journal_save(ctx->sj);
    }
    pthread_mutex_unlock(&ctx->jlock);
    return r;
}

static int vol_record(void *opaque, uint64_t start, uint64_t len)
{
    (void)start;
    return len ? 0 : sj_volume_done(opaque);
}

/* ---- Checksums of the destination volumes ---- */

static int checksum_volumes(struct sync_ctx *ctx)
{
#ifdef HAVE_LIBSODIUM
    const struct lsm_sync_opts *o = ctx->o;
    for (unsigned k = 0; k < ctx->nvols; k++) {
        struct vol *v = &ctx->vols[k];
        struct lsm_image *img = NULL;
        int r = lsm_image_open(v->pair->dst_path, v->src->format, 0, &img);
        if (r < 0)
            return r;
        struct lsm_checksum_opts co = {
            .alg = o->checksum_alg,
            .block_size = o->checksum_block_size,
            .cancel = o->cancel,
        };
        struct lsm_checksum_result cr;
        r = lsm_checksum_image(img, &co, &cr);
        lsm_image_close(img);
        if (r == -ECANCELED)
            return lsm_error(-EINTR, "interrupted during the checksum of %s", v->pair->dst_path);
        if (r < 0) {
            lsm_error_prefix("checksum of %s", v->pair->dst_path);
            return r;
        }
        snprintf(v->out->checksum, sizeof v->out->checksum, "%s", cr.hex);
        v->out->checksummed = true;
    }
    return 0;
#else
    (void)ctx;
    return lsm_error(-ENOTSUP, "--checksum: lsm-sync was built without libsodium");
#endif
}

/* With ctx->lock held. */
static void publish(struct sync_ctx *ctx)
{
    const struct lsm_sync_opts *o = ctx->o;
    if (o->progress) {
        uint64_t sum = 0;
        for (unsigned i = 0; i < ctx->nvols; i++)
            sum += ctx->vols[i].done;
        o->progress(o->opaque, sum, ctx->total);
    }
    if (o->job) {
        struct lsm_job_progress s = { 0 };
        for (unsigned i = 0; i < ctx->nvols; i++) {
            const struct lsm_job_progress *p = &ctx->vols[i].jp;
            s.bytes_total += p->bytes_total;
            s.bytes_done += p->bytes_done;
            s.bytes_written += p->bytes_written;
            s.bytes_zeroed += p->bytes_zeroed;
            s.bytes_skipped += p->bytes_skipped;
            s.bytes_redone += p->bytes_redone;
        }
        lsm_job_progress(o->job, &s);
    }
}

static void vol_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct vol *v = opaque;
    (void)total;
    pthread_mutex_lock(&v->ctx->lock);
    v->done = MIN(done, v->out->bytes);
    publish(v->ctx);
    pthread_mutex_unlock(&v->ctx->lock);
}

static void vol_job_progress(void *opaque, const struct lsm_job_progress *p)
{
    struct vol *v = opaque;
    pthread_mutex_lock(&v->ctx->lock);
    uint64_t planned = v->jp.bytes_total;
    v->jp = *p;
    v->jp.bytes_total = MAX(p->bytes_total, planned);
    lsm_job_progress(v->job, p);
    if (v->ctx->o->job)
        publish(v->ctx);
    pthread_mutex_unlock(&v->ctx->lock);
}

static void vol_warn(void *opaque, const char *msg)
{
    struct vol *v = opaque;
    if (!v->ctx->o->warn)
        return;
    pthread_mutex_lock(&v->ctx->lock);
    v->ctx->o->warn(v->ctx->o->opaque, msg);
    pthread_mutex_unlock(&v->ctx->lock);
}

static int vol_run(struct lsm_job *job, void *arg)
{
    struct vol *v = arg;
    struct lsm_copy_opts o = v->ctx->base;
    o.src_path = v->src->path;
    o.src_fmt = v->src->format;
    o.dst_path = v->pair->dst_path;
    o.dst_fmt = v->src->format;
    o.no_create = true;
    if (v->ctx->nbd) {
        /* an export serving one destination layer alone: its guest view,
         * written with the source's own layer only */
        o.dst_fmt = LSM_FMT_RAW;
        o.one_layer = true;
    }
    if (v->ctx->nbd_src) {
        /* an export serving one source layer alone, read as raw: a qcow2
         * layer by its allocation depth (only what it allocates is
         * copied, a zero cluster as a zero cluster), a raw base whole */
        o.src_fmt = LSM_FMT_RAW;
        o.one_layer = v->src->format == LSM_FMT_QCOW2;
    }
    /* Only this volume's own layer: the destination's backing is already
     * the destination chain below it. */
    o.backing = v->ctx->nbd ? NULL : v->pair->dst_backing;
    o.backing_fmt = v->ctx->nbd ? LSM_FMT_AUTO : v->src->backing_fmt;
    o.cluster_size = v->ctx->nbd ? 0 : v->src->cluster_size;
    o.cancel = lsm_job_cancel_flag(job);
    o.limiter = lsm_job_limiter(job);
    o.progress = vol_progress;
    o.job_progress = vol_job_progress;
    o.warn = vol_warn;
    o.opaque = v;
    if (v->ctx->sj) {
        o.journal = v->journal;
        o.resume = v->resume;
        o.record = vol_record;
    }
    lsm_job_set_phase(job, "extending");
    /* Block destinations: make room for the copy first. */
    int r = v->ctx->nbd || v->ctx->nbd_src ? 0 : lsm_jobfile_ensure_room(v->pair, v->src);
    if (r < 0)
        return r;
    if (lsm_job_cancelled(job))
        return lsm_error(-EINTR, "interrupted");
    lsm_job_set_phase(job, "copying");
    memset(&v->out->st, 0, sizeof v->out->st);
    return lsm_copy(&o, &v->out->st);
}

static bool cancelled(const struct lsm_sync_opts *o)
{
    return o->cancel && *o->cancel;
}

static int vol_start(struct sync_ctx *ctx, struct vol *v)
{
    struct lsm_job_opts jo = { .kind = "copy", .parent = ctx->limiter };
    int r = lsm_job_create(&jo, vol_run, v, NULL, &v->job);
    if (r < 0)
        return r;
    if ((r = lsm_job_start(v->job)) < 0) {
        lsm_job_free(v->job);
        v->job = NULL;
    }
    return r;
}

/* The job of v has returned: its result into v->out. */
static void vol_reap(struct sync_ctx *ctx, struct vol *v)
{
    struct lsm_job_status st;
    lsm_job_get_status(v->job, &st);
    pthread_mutex_lock(&ctx->lock);
    v->out->result = st.error;
    if (st.error < 0)
        snprintf(v->out->error, sizeof v->out->error, "%s", st.message);
    else
        v->done = v->out->bytes;
    /* The final count, from the result (the progress carried it while the
     * copy ran). */
    v->jp.bytes_redone = v->out->st.bytes_redone;
    publish(ctx);
    pthread_mutex_unlock(&ctx->lock);
    lsm_job_free(v->job);
    v->job = NULL;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { 0, (long)ms * 1000000L };
    nanosleep(&ts, NULL);
}

static int run_volumes(struct sync_ctx *ctx, unsigned parallel, struct lsm_sync_result *res)
{
    const struct lsm_sync_opts *o = ctx->o;
    unsigned next = 0, running = 0;
    bool failed = false, forwarded = false;
    int first_err = 0;
    char first_msg[LSM_JOB_MESSAGE_MAX] = "";
    for (;;) {
        while (running < parallel && next < ctx->nvols && !failed && !cancelled(o)) {
            struct vol *v = &ctx->vols[next++];
            if (v->out->already_done)
                continue;
            int r = vol_start(ctx, v);
            if (r < 0) {
                v->out->result = r;
                snprintf(v->out->error, sizeof v->out->error, "%s", lsm_last_error());
                failed = true;
                break;
            }
            running++;
        }
        if (!running)
            break;
        if (cancelled(o) && !forwarded) {
            for (unsigned i = 0; i < ctx->nvols; i++)
                if (ctx->vols[i].job)
                    lsm_job_cancel(ctx->vols[i].job);
            forwarded = true;
        }
        bool reaped = false;
        for (unsigned i = 0; i < ctx->nvols; i++) {
            struct vol *v = &ctx->vols[i];
            if (!v->job || lsm_job_wait(v->job, 0) < 0)
                continue;
            vol_reap(ctx, v);
            running--;
            reaped = true;
            if (v->out->result < 0)
                failed = true;
        }
        if (!reaped)
            sleep_ms(POLL_MS);
    }
    for (unsigned i = 0; i < ctx->nvols; i++) {
        const struct lsm_sync_volume *v = ctx->vols[i].out;
        res->bytes_redone += v->st.bytes_redone;
        if (v->result == 0)
            res->bytes_done += v->bytes;
        else if (v->result < 0 && !first_err) {
            first_err = v->result;
            snprintf(first_msg, sizeof first_msg, "%s", v->error);
        }
    }
    res->cancelled = cancelled(o);
    if (first_err) {
        /* the first volume's message; res->v has them all */
        const struct lsm_sync_volume *v = NULL;
        for (unsigned i = 0; i < ctx->nvols && !v; i++)
            if (ctx->vols[i].out->result < 0)
                v = ctx->vols[i].out;
        return lsm_error(first_err, "%s -> %s: %s; the destination volume is incomplete",
                         v->src_path, v->dst_path, first_msg);
    }
    if (res->cancelled)
        return lsm_error(-EINTR, "interrupted; the destination chain is incomplete");
    return 0;
}

void lsm_sync_result_free(struct lsm_sync_result *res)
{
    for (unsigned i = 0; i < res->nvols; i++) {
        free(res->v[i].src_path);
        free(res->v[i].dst_path);
    }
    free(res->v);
    memset(res, 0, sizeof *res);
}

static int check_opts(const struct lsm_sync_opts *o)
{
    if (o->resume && !o->journal)
        return lsm_error(-EINVAL, "resume needs a journal");
    if (!o->checksum)
        return 0;
#ifdef HAVE_LIBSODIUM
    return lsm_blkhash_check_block_size(o->checksum_block_size ? o->checksum_block_size
                                                                : LSM_BLKHASH_DEFAULT_BLOCK);
#else
    return lsm_error(-ENOTSUP, "--checksum: lsm-sync was built without libsodium");
#endif
}

int lsm_sync(const struct lsm_sync_opts *o, struct lsm_sync_result *res)
{
    memset(res, 0, sizeof *res);
    res->type = o->type;
    struct sync_plan plan = { 0 };
    struct sync_ctx ctx = { .o = o };
    pthread_mutex_init(&ctx.jlock, NULL);
    int r = check_opts(o);
    if (r == 0)
        r = plan_prepare(o, &plan);
    if (r < 0)
        goto out_plan;
    if (o->job)
        lsm_job_set_phase(o->job, "copying");

    /* volumes to copy, base first */
    struct lsm_chain_desc *src = &plan.src;
    unsigned first = o->type == LSM_SYNC_INTERNAL ? 1 : 0;
    unsigned last = o->type == LSM_SYNC_LEAF ? 0 : src->n - 1;
    unsigned n = first <= last ? last - first + 1 : 0;
    res->v = calloc(n ? n : 1, sizeof *res->v);
    ctx.vols = calloc(n ? n : 1, sizeof *ctx.vols);
    if (!res->v || !ctx.vols) {
        r = oom();
        goto out_plan;
    }
    for (unsigned k = 0; k < n; k++) {
        unsigned i = last - k;
        struct lsm_sync_volume *out = &res->v[k];
        out->src_path = strdup(src->v[i].path);
        out->dst_path = strdup(plan.job.v[i].dst_path);
        res->nvols = k + 1;
        if (!out->src_path || !out->dst_path) {
            r = oom();
            goto out_plan;
        }
        out->bytes = src->v[i].data_bytes;
        out->result = 1;
        struct vol *v = &ctx.vols[k];
        v->k = k;
        v->ctx = &ctx;
        v->out = out;
        v->src = &src->v[i];
        v->pair = &plan.job.v[i];
        v->jp.bytes_total = src->v[i].virtual_size;
        res->bytes_total += out->bytes;
    }
    ctx.nvols = n;
    ctx.nbd = plan.nbd;
    ctx.nbd_src = plan.nbd_src;
    ctx.total = res->bytes_total;
    if (o->journal && (r = sj_open(&ctx, res)) < 0)
        goto out_plan;

    unsigned parallel = o->parallel ? o->parallel : LSM_SYNC_DEFAULT_PARALLEL;
    parallel = MIN(parallel, (unsigned)LSM_SYNC_MAX_PARALLEL);
    if (parallel > n)
        parallel = n ? n : 1;
    ctx.base = o->copy;
    uint64_t buffer = o->copy.buffer_size ? o->copy.buffer_size : LSM_SYNC_DEFAULT_BUFFER;
    if (o->copy.buffer_size || parallel > 1)
        ctx.base.buffer_size = buffer / parallel;
    if ((r = lsm_limiter_create(0, o->limiter, &ctx.limiter)) < 0) {
        r = lsm_error(r, "cannot create a rate limiter");
        goto out_plan;
    }
    pthread_mutex_init(&ctx.lock, NULL);
    pthread_mutex_lock(&ctx.lock);
    publish(&ctx);
    pthread_mutex_unlock(&ctx.lock);

    res->started = true;
    uint64_t t0 = lsm_now_ns();
    r = run_volumes(&ctx, parallel, res);
    if (r == 0 && o->checksum) {
        if (o->job)
            lsm_job_set_phase(o->job, "checksum");
        r = checksum_volumes(&ctx);
    }
    res->seconds = (double)(lsm_now_ns() - t0) / 1e9;
    if (r == 0 && ctx.sj)
        lsm_journal_remove(ctx.sj);    /* the volumes' copies removed theirs */
    else if (ctx.sj && ctx.sj->saved)
        res->journal_kept = true;
    if (r == 0 && o->job)
        lsm_job_set_phase(o->job, "done");
    pthread_mutex_destroy(&ctx.lock);
    lsm_limiter_free(ctx.limiter);
out_plan:
    for (unsigned k = 0; ctx.vols && k < ctx.nvols; k++)
        free(ctx.vols[k].journal);
    if (ctx.ids)
        for (unsigned k = 0; k < 2 * ctx.nvols; k++)
            lsm_journal_file_clear(&ctx.ids[k]);
    free(ctx.ids);
    lsm_journal_free(ctx.sj);
    pthread_mutex_destroy(&ctx.jlock);
    free(ctx.vols);
    plan_free(&plan);
    return r;
}

/* ---- The sync as a job ---- */

struct sync_job {
    struct lsm_sync_opts o;
    char *src_top, *dst_top, *jobfile, *journal;
    struct lsm_sync_result res;
};

static void sync_job_free(void *p)
{
    struct sync_job *sj = p;
    if (!sj)
        return;
    lsm_sync_result_free(&sj->res);
    free(sj->src_top);
    free(sj->dst_top);
    free(sj->jobfile);
    free(sj->journal);
    free(sj);
}

static int sync_job_run(struct lsm_job *job, void *arg)
{
    struct sync_job *sj = arg;
    sj->o.job = job;
    sj->o.cancel = lsm_job_cancel_flag(job);
    sj->o.limiter = lsm_job_limiter(job);
    lsm_job_set_phase(job, "checking");
    return lsm_sync(&sj->o, &sj->res);
}

static int dup_str(const char *s, char **out)
{
    *out = NULL;
    return s && !(*out = strdup(s)) ? -ENOMEM : 0;
}

int lsm_sync_job_create(const struct lsm_sync_opts *o, const struct lsm_job_opts *jo,
                        struct lsm_job **out)
{
    struct sync_job *sj = calloc(1, sizeof *sj);
    if (!sj)
        return oom();
    sj->o = *o;
    if (dup_str(o->src_top, &sj->src_top) < 0 || dup_str(o->dst_top, &sj->dst_top) < 0 ||
        dup_str(o->jobfile, &sj->jobfile) < 0 || dup_str(o->journal, &sj->journal) < 0) {
        sync_job_free(sj);
        return oom();
    }
    sj->o.src_top = sj->src_top;
    sj->o.dst_top = sj->dst_top;
    sj->o.jobfile = sj->jobfile;
    sj->o.journal = sj->journal;
    sj->o.cancel = NULL;
    sj->o.limiter = NULL;
    sj->o.job = NULL;
    struct lsm_job_opts jopts = jo ? *jo : (struct lsm_job_opts){ 0 };
    if (!jopts.kind)
        jopts.kind = "sync";
    int r = lsm_job_create(&jopts, sync_job_run, sj, sync_job_free, out);
    if (r < 0)
        sync_job_free(sj);
    return r;
}

const struct lsm_sync_result *lsm_sync_job_result(struct lsm_job *job)
{
    if (lsm_job_wait(job, 0) < 0)
        return NULL;
    return &((struct sync_job *)lsm_job_arg(job))->res;
}
