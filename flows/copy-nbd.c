/* NBD in the copy flow (copy-nbd.h, docs/nbd.md): the NBD endpoint opened
 * from its module, and the copy to an NBD destination.
 *
 * A destination export is never created, truncated or removed: it exists
 * on the server, the copy writes guest offsets [0, size of SRC) into it and
 * leaves the rest, and a failure leaves it incomplete (said so) but never
 * gone.  The source is opened first (an image chain read-only with QEMU's
 * shared lock, or an NBD export), then the destination; an NBD source and
 * destination naming the same URI are refused.  Exit 0 only after the
 * engine's final flush (NBD_CMD_FLUSH on every connection) succeeded.
 *
 * With --journal (docs/resume.md, "NBD ends") every checkpoint flushes
 * the export on every connection, then reads back a few blocks the journal
 * counts as done and records their hash; a resume reads the same blocks
 * and refuses an export where they differ or whose size changed. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backends.h"
#include "cleanup.h"
#include "config.h"
#include "copy-nbd.h"
#include "error.h"
#include "fileid.h"
#include "journal.h"
#include "module.h"
#include "util.h"

int lsm_copy_open_nbd(const struct lsm_copy_opts *o, struct lsm_loop *loop, const char *uri,
                      bool writable, struct lsm_ep **out)
{
#ifdef HAVE_LIBNBD
    typeof(&lsm_ep_nbd_open) nbd_open =
        (typeof(&lsm_ep_nbd_open))lsm_module_symbol("endpoint-nbd", "lsm_ep_nbd_open");
    if (!nbd_open)
        return -ENOTSUP;
    struct lsm_ep_nbd_opts no = {
        .uri = uri,
        .writable = writable,
        .reads_zero = writable && o->target_is_zero,
        .connections = o->nbd_connections,
        .retries = -1,
        .connect_ms = o->nbd_timeout_ms,
        .request_ms = o->nbd_timeout_ms,
        .cancel = o->cancel,
        /* with a journal, SIGINT/SIGTERM leave time for the last checkpoint */
        .cancel_grace_ms = o->journal ? 500 : 0,
        /* a source serving one layer alone (sync's NBD sources) */
        .one_layer = !writable && o->one_layer,
        .layer_align = o->cluster_size,
    };
    return nbd_open(loop, &no, out);
#else
    (void)o;
    (void)loop;
    (void)writable;
    (void)out;
    return lsm_error(-ENOTSUP, "cannot open %s: lsm-sync was built without libnbd", uri);
#endif
}

void lsm_copy_nbd_defaults(const struct lsm_copy_opts *o, unsigned *requests,
                           uint64_t *request_size, uint64_t *buffer_size)
{
    if (!lsm_is_nbd_uri(o->src_path) && !lsm_is_nbd_uri(o->dst_path))
        return;
    if (!o->requests)
        *requests = LSM_COPY_NBD_REQUESTS;
    if (!o->request_size)
        *request_size = LSM_COPY_NBD_REQUEST_SIZE;
    if (!o->buffer_size)
        *buffer_size = (uint64_t)*requests * *request_size;
}

static int check_opts(const struct lsm_copy_opts *o)
{
    if (o->dst_fmt != LSM_FMT_RAW)
        return lsm_error(-EINVAL, "an NBD destination is the guest view: -O raw only, not %s",
                         lsm_format_name(o->dst_fmt));
    if (o->backing)
        return lsm_error(-EINVAL, "-B needs a qcow2 destination file, not %s", o->dst_path);
    if (o->physical == LSM_PHYSICAL_ALWAYS)
        return lsm_error(-EINVAL, "--physical needs a qcow2 destination file, not %s",
                         o->dst_path);
    if (o->offload_required || o->offload_mode == LSM_OFFLOAD_ONLY || o->offload_cmd)
        return lsm_error(-EINVAL, "offload (-C, --offload=NAME, --offload-cmd) needs a destination "
                         "file, not %s", o->dst_path);
    if (o->bitmaps)
        return lsm_error(-EINVAL, "--bitmaps needs a qcow2 destination file, not %s", o->dst_path);
    const struct lsm_create_opts *co = &o->create;
    if (co->qcow2_version || co->refcount_bits || co->lazy_refcounts || co->extended_l2 ||
        co->compression_type || co->prealloc)
        return lsm_error(-EINVAL, "creation options (-o, -S 0) have no effect on an NBD "
                         "destination: %s exists on its server", o->dst_path);
    if (o->snapshot && lsm_is_nbd_uri(o->src_path))
        return lsm_error(-EINVAL, "-l needs a qcow2 source: %s has no snapshots", o->src_path);
    if (o->resume && !o->journal)
        return lsm_error(-EINVAL, "--resume needs --journal");
    if (o->unsafe && o->journal)
        return lsm_error(-EINVAL, "-t unsafe is not combined with --journal: a checkpoint "
                         "records only what is durable");
    if (o->one_layer && lsm_is_nbd_uri(o->src_path))
        return lsm_error(-EINVAL, "one layer of %s cannot be copied: an NBD export does not "
                         "show its layers", o->src_path);
    /* A journal is fine (sync --journal's volumes): the plan it records
     * has reads_zero false, as the one-layer copy sets it before the
     * journal is set up, so a resume writes the zero ranges too; ranges
     * the layer does not allocate are skipped in both runs. */
    if (o->one_layer && (o->target_is_zero || o->checksum || o->snapshot))
        return lsm_error(-EINVAL, "a copy of one layer to %s takes no --target-is-zero, "
                         "--checksum or -l", o->dst_path);
    if (o->journal && o->checksum)
        return lsm_error(-EINVAL, "--checksum covers one uninterrupted copy: not with --journal");
    if (o->request_size && (!is_pow2(o->request_size) || o->request_size < 4096))
        return lsm_error(-EINVAL, "request size must be a power of two of at least 4096 bytes");
    if (!strcmp(o->src_path, o->dst_path))
        return lsm_error(-EINVAL, "refusing to write %s: it is the source", o->dst_path);
    return 0;
}

/* ---- Journals with NBD ends ---- */

#define NBD_PROBES 5    /* a destination's probes per checkpoint */

static uint64_t probe_hash(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int lsm_copy_nbd_ident(struct lsm_ep *ep, const char *role, const char *uri,
                       const uint64_t *probes, unsigned n, struct lsm_journal_file *f)
{
    memset(f, 0, sizeof *f);
    f->mtime_ns = -1;
    f->size = ep->caps.size;
    f->role = strdup(role);
    f->path = strdup(uri);
    if (!f->role || !f->path) {
        lsm_journal_file_clear(f);
        return lsm_error(-ENOMEM, "out of memory");
    }
    if (!n)
        return 0;
    size_t align = MAX((size_t)ep->caps.mem_align, (size_t)64);
    _cleanup_free_ unsigned char *buf = aligned_alloc(align, LSM_COPY_NBD_PROBE_LEN);
    if (!buf) {
        lsm_journal_file_clear(f);
        return lsm_error(-ENOMEM, "out of memory");
    }
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned i = 0; i < n && i < LSM_JOURNAL_MAX_PROBES; i++) {
        if (probes[i] >= f->size) {
            lsm_journal_file_clear(f);
            return lsm_error(-ESTALE, "%s %s is smaller than the journal says", role, uri);
        }
        uint64_t len = MIN((uint64_t)LSM_COPY_NBD_PROBE_LEN, f->size - probes[i]);
        struct lsm_ep_cmd cmd = { .op = LSM_EP_OP_READ, .buf = buf, .buf_index = -1,
                                  .offset = probes[i], .len = len };
        int r = lsm_ep_run(ep, &cmd);
        if (r < 0) {
            lsm_journal_file_clear(f);
            lsm_error_prefix("cannot read %s back for the journal", uri);
            return r;
        }
        unsigned char off[8];
        for (int b = 0; b < 8; b++)
            off[b] = (unsigned char)(probes[i] >> (8 * b));
        h = probe_hash(probe_hash(h, off, sizeof off), buf, len);
        f->probes[i] = probes[i];
    }
    f->nprobes = MIN(n, (unsigned)LSM_JOURNAL_MAX_PROBES);
    f->hash = h ^ (h >> 29);
    f->has_hash = true;
    return 0;
}

int lsm_copy_nbd_src_idents(struct lsm_ep *ep, const char *uri, struct lsm_journal_file **out,
                            size_t *nout)
{
    struct lsm_journal_file *v = calloc(2, sizeof *v);
    if (!v)
        return lsm_error(-ENOMEM, "out of memory");
    /* its start, middle and last block */
    uint64_t size = ep->caps.size, p[3];
    unsigned n = 0;
    uint64_t want[3] = { 0, size / 2 / LSM_COPY_NBD_PROBE_LEN * LSM_COPY_NBD_PROBE_LEN,
                         size > LSM_COPY_NBD_PROBE_LEN ? (size - 1) / LSM_COPY_NBD_PROBE_LEN *
                                                         LSM_COPY_NBD_PROBE_LEN : 0 };
    for (unsigned i = 0; i < 3 && size; i++)
        if (!n || want[i] > p[n - 1])
            p[n++] = want[i];
    int r = lsm_copy_nbd_ident(ep, "source", uri, p, n, &v[0]);
    if (r == 0 && (!(v[1].role = strdup("destination")) || !(v[1].path = strdup(""))))
        r = lsm_error(-ENOMEM, "out of memory");
    if (r < 0) {
        lsm_journal_file_clear(&v[0]);
        lsm_journal_file_clear(&v[1]);
        free(v);
        return r;
    }
    *out = v;
    *nout = 2;
    return 0;
}

int lsm_copy_nbd_check_ident(const struct lsm_journal *jl, size_t idx,
                             const struct lsm_journal_file *now)
{
    if (idx >= jl->nfiles)
        return lsm_error(-ESTALE, "the journal has %zu files: not the same job", jl->nfiles);
    const struct lsm_journal_file *a = &jl->files[idx];
    const char *why = NULL;
    if (strcmp(a->role, now->role) || a->dev || a->ino || !lsm_is_nbd_uri(a->path))
        why = "the journal names a file";
    else if (a->size != now->size)
        why = "its size changed";
    else if (a->has_hash != now->has_hash || (a->has_hash && a->hash != now->hash))
        why = "blocks written before the last checkpoint differ";
    if (why)
        return lsm_error(-ESTALE, "%s %s is not the export this journal was written for (%s)",
                         now->role, now->path, why);
    return 0;
}

/* The journal of a copy to an NBD destination: copy.c's flow_journal,
 * with the destination identified by its blocks. */
struct nbd_journal {
    const struct lsm_copy_opts *o;
    struct lsm_ep *dst;
    struct lsm_journal *j;
    struct lsm_journal_file *files;   /* the sources, then the destination */
    size_t nfiles;
    bool first;                       /* the checkpoint before the first write */
    uint64_t frontier0, reached0;     /* resume: the interrupted run's window */
};

static json_object *nbd_journal_options(uint64_t size, uint64_t granule, bool reads_zero)
{
    json_object *j = json_object_new_object();
    json_object_object_add(j, "format", json_object_new_string("raw"));
    json_object_object_add(j, "destination", json_object_new_string("nbd"));
    if (granule) {
        json_object_object_add(j, "size", json_object_new_int64((int64_t)size));
        json_object_object_add(j, "granule", json_object_new_int64((int64_t)granule));
        json_object_object_add(j, "reads_zero", json_object_new_boolean(reads_zero));
    }
    return j;
}

/* Whether the block of ep at off holds a byte other than zero (-errno
 * when it cannot be read). */
static int block_nonzero(struct lsm_ep *ep, unsigned char *buf, uint64_t off)
{
    uint64_t len = MIN((uint64_t)LSM_COPY_NBD_PROBE_LEN, ep->caps.size - off);
    struct lsm_ep_cmd cmd = { .op = LSM_EP_OP_READ, .buf = buf, .buf_index = -1,
                              .offset = off, .len = len };
    int r = lsm_ep_run(ep, &cmd);
    if (r < 0)
        return r;
    for (uint64_t i = 0; i < len; i++)
        if (buf[i])
            return 1;
    return 0;
}

/* Up to NBD_PROBES done blocks below the frontier, among NBD_CANDIDATES
 * spread over it: those holding data first (a fresh export reads as zeroes
 * where the copy skipped zeroes, so zero blocks tell it from the right one
 * only where data was expected), zero ones only to fill up.  Returns the
 * count or -errno. */
#define NBD_CANDIDATES 16
static int nbd_dst_probes(const struct lsm_journal *j, struct lsm_ep *dst, uint64_t frontier,
                          uint64_t *p)
{
    uint64_t cand[NBD_CANDIDATES + 1];
    unsigned nc = 0;
    for (unsigned k = 0; k <= NBD_CANDIDATES && frontier; k++) {
        uint64_t off = k == NBD_CANDIDATES ? frontier - 1 : frontier / NBD_CANDIDATES * k;
        off -= off % j->granule;
        uint64_t end;
        if (off < j->size && off < dst->caps.size && lsm_journal_done_at(j, off, &end) &&
            (!nc || off > cand[nc - 1]))
            cand[nc++] = off;
    }
    if (!nc)
        return 0;
    size_t align = MAX((size_t)dst->caps.mem_align, (size_t)64);
    _cleanup_free_ unsigned char *buf = aligned_alloc(align, LSM_COPY_NBD_PROBE_LEN);
    if (!buf)
        return lsm_error(-ENOMEM, "out of memory");
    bool data[NBD_CANDIDATES + 1];
    unsigned n = 0;
    for (unsigned i = 0; i < nc; i++) {
        int r = block_nonzero(dst, buf, cand[i]);
        if (r < 0) {
            lsm_error_prefix("cannot read %s back for the journal", dst->name);
            return r;
        }
        data[i] = r > 0;
    }
    /* With enough data blocks, NBD_PROBES of them spread over those found
     * (the first and the last included); else every data block and zero
     * ones while room is left; in increasing order. */
    unsigned ndata = 0, di[NBD_CANDIDATES + 1];
    for (unsigned i = 0; i < nc; i++)
        if (data[i])
            di[ndata++] = i;
    if (ndata >= NBD_PROBES) {
        for (unsigned k = 0; k < NBD_PROBES; k++)
            p[n++] = cand[di[k * (ndata - 1) / (NBD_PROBES - 1)]];
        return (int)n;
    }
    unsigned zeros = NBD_PROBES - ndata;
    for (unsigned i = 0; i < nc && n < NBD_PROBES; i++) {
        if (data[i])
            p[n++] = cand[i];
        else if (zeros) {
            p[n++] = cand[i];
            zeros--;
        }
    }
    return (int)n;
}

static int nbd_journal_checkpoint(void *opaque, uint64_t frontier)
{
    struct nbd_journal *nj = opaque;
    int r = lsm_ep_flush(nj->dst);    /* NBD_CMD_FLUSH on every connection */
    if (r < 0)
        return r;
    lsm_journal_commit(nj->j);        /* what was recorded is durable now */
    struct lsm_journal_file *df = &nj->files[nj->nfiles - 1];
    uint64_t p[NBD_PROBES];
    int n = nbd_dst_probes(nj->j, nj->dst, frontier, p);
    if (n < 0)
        return n;
    struct lsm_journal_file nf;
    r = lsm_copy_nbd_ident(nj->dst, "destination", nj->o->dst_path, p, (unsigned)n, &nf);
    if (r < 0)
        return r;
    lsm_journal_file_clear(df);
    *df = nf;
    r = lsm_journal_set_files(nj->j, nj->files, nj->nfiles);
    if (r < 0)
        return r;
    nj->j->frontier = frontier;
    r = lsm_journal_save(nj->j);
    if (r < 0)
        return r;
    if (nj->first) {
        nj->first = false;
        if (nj->o->resume && (nj->frontier0 || nj->reached0)) {
            /* Keep the interrupted run's window: its work past the frontier
             * is what this run redoes. */
            nj->j->frontier = nj->frontier0;
            r = lsm_journal_save(nj->j);
            if (r == 0)
                r = lsm_journal_note_reached(nj->j, nj->reached0);
        }
    }
    return r;
}

static void nbd_journal_free(struct nbd_journal *nj)
{
    lsm_journal_free(nj->j);
    if (nj->files)
        for (size_t i = 0; i < nj->nfiles; i++)
            lsm_journal_file_clear(&nj->files[i]);
    free(nj->files);
}

/* Before anything is opened: the journal is new (refused if it exists),
 * or loaded and checked for what can be checked without the ends. */
static int nbd_journal_load(const struct lsm_copy_opts *o, struct lsm_journal **jl)
{
    struct stat sb;
    if (!o->resume) {
        if (lstat(o->journal, &sb) == 0)
            return lsm_error(-EEXIST, "journal %s exists: add --resume to continue its copy, or "
                             "remove it", o->journal);
        return 0;
    }
    int r = lsm_journal_load(o->journal, jl);
    if (r < 0)
        return r;
    json_object *early = nbd_journal_options(0, 0, false);
    r = lsm_copy_journal_check_options(early, (*jl)->options);
    json_object_put(early);
    if (r < 0)
        lsm_error_prefix("cannot resume from %s", o->journal);
    return r;
}

/* Both ends are open: identities, then a new journal or the loaded one
 * checked against this job (options, sources, the export's blocks).
 * Takes jl. */
static int nbd_journal_setup(struct nbd_journal *nj, struct lsm_image *img, struct lsm_ep *src,
                             struct lsm_journal *jl, uint64_t size)
{
    const struct lsm_copy_opts *o = nj->o;
    uint64_t granule = MAX(nj->dst->caps.granule, 512u);
    bool rz = nj->dst->caps.reads_zero;
    json_object *rzj;
    if (jl && json_object_object_get_ex(jl->options, "reads_zero", &rzj) &&
        json_object_is_type(rzj, json_type_boolean))
        /* the plan of the killed run: where it skipped zeroes, nothing was written */
        rz = nj->dst->caps.reads_zero = json_object_get_boolean(rzj);
    int r = img ? lsm_copy_journal_src_idents(img, &nj->files, &nj->nfiles)
                : lsm_copy_nbd_src_idents(src, o->src_path, &nj->files, &nj->nfiles);
    if (r < 0) {
        lsm_journal_free(jl);
        return r;
    }
    struct lsm_journal_file *df = &nj->files[nj->nfiles - 1];
    lsm_journal_file_clear(df);
    const struct lsm_journal_file *jd = jl && jl->nfiles == nj->nfiles ? &jl->files[jl->nfiles - 1]
                                                                       : NULL;
    r = lsm_copy_nbd_ident(nj->dst, "destination", o->dst_path, jd ? jd->probes : NULL,
                           jd ? jd->nprobes : 0, df);
    json_object *opts = r == 0 ? nbd_journal_options(size, granule, rz) : NULL;
    if (r < 0 || !opts) {
        lsm_journal_free(jl);
        return r < 0 ? r : lsm_error(-ENOMEM, "out of memory");
    }
    nj->first = true;
    if (!jl)
        return lsm_journal_new(o->journal, size, granule, opts, &nj->j);
    nj->j = jl;
    r = lsm_copy_journal_check_options(opts, jl->options);
    json_object_put(opts);
    if (r == 0 && jl->nfiles != nj->nfiles)   /* another source chain: says so */
        r = lsm_journal_check_files(jl, nj->files, nj->nfiles);
    if (r == 0 && !img)
        r = lsm_copy_nbd_check_ident(jl, 0, &nj->files[0]);
    if (r == 0)
        r = lsm_copy_nbd_check_ident(jl, nj->nfiles - 1, df);
    if (r == 0)
        r = lsm_journal_check_files(jl, nj->files, nj->nfiles);
    if (r < 0) {
        lsm_error_prefix("cannot resume from %s", o->journal);
        return r;
    }
    nj->frontier0 = jl->frontier;
    nj->reached0 = jl->reached;
    return 0;
}

/* The journal is none of the source's files. */
static int nbd_journal_alias(const struct lsm_copy_opts *o, struct lsm_image *img)
{
    if (!img)
        return 0;
    struct lsm_fileid id;
    int r = lsm_fileid_path(o->journal, &id);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    struct lsm_fileid_set ids = { 0 };
    r = lsm_image_add_ids(img, &ids);
    const struct lsm_fileid_entry *e = r == 0 ? lsm_fileid_set_find(&ids, &id) : NULL;
    if (e)
        r = lsm_error(-EINVAL, "refusing journal %s: it is %s, which this copy reads",
                      o->journal, e->name);
    lsm_fileid_set_free(&ids);
    return r;
}

int lsm_copy_nbd_dst(const struct lsm_copy_opts *o, struct lsm_copy_stats *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t t0 = lsm_now_ns();
    struct lsm_image *img = NULL;
    struct lsm_loop *loop = NULL;
    struct lsm_ep *src = NULL, *dst = NULL;
    struct lsm_engine_stats es = { 0 };
    struct nbd_journal nj = { .o = o };
    struct lsm_journal *jl = NULL;
    bool written = false;      /* the engine ran: the export may be partly written */
    int r = check_opts(o);
    if (r == 0 && o->journal)
        r = nbd_journal_load(o, &jl);
    if (r < 0) {
        lsm_journal_free(jl);
        return r;
    }

    unsigned m = o->requests ? o->requests : 16;
    uint64_t rsize = o->request_size, bsize = o->buffer_size;
    lsm_copy_nbd_defaults(o, &m, &rsize, &bsize);
    struct lsm_loop_config lc = { .io_kind = o->io_kind, .depth = MAX(2 * m, 32u),
                                  .fixed_buffers = true };
    /* The source first, read-only: nothing is written before it opened. */
    if (lsm_is_nbd_uri(o->src_path)) {
        r = lsm_loop_create(&lc, &loop);
        if (r == 0)
            r = lsm_copy_open_nbd(o, loop, o->src_path, false, &src);
    } else {
        r = lsm_image_open(o->src_path, o->src_fmt, o->force_share ? LSM_OPEN_FORCE_SHARE : 0,
                           &img);
        if (r < 0) {
            st->src_busy = r == -EAGAIN;
            goto out;
        }
        /* -l: the snapshot's view replaces the active one before anything is read. */
        if (o->snapshot && (r = lsm_qcow2_load_snapshot(img, o->snapshot, o->snapshot_key)) < 0)
            goto out;
        if (o->journal && (r = nbd_journal_alias(o, img)) < 0)
            goto out;
        r = lsm_loop_create(&lc, &loop);
        enum lsm_direct_mode sdirect = o->src_direct_set ? o->src_direct : o->direct;
        /* one layer: the ranges the layer does not allocate are absent
         * (skipped), whether or not it has a backing file */
        if (r == 0)
            r = lsm_ep_image_create(loop, img, o->one_layer, sdirect, &src);
    }
    if (r < 0)
        goto out;
    snprintf(st->io_name, sizeof(st->io_name), "%s", lsm_loop_io_name(loop));

    r = lsm_copy_open_nbd(o, loop, o->dst_path, true, &dst);
    if (r < 0)
        goto out;
    dst->no_flush = o->unsafe;
    uint64_t vsize = src->caps.size;
    if (dst->caps.size < vsize) {
        r = lsm_error(-ENOSPC, "destination %s is smaller (%" PRIu64 " bytes) than %s (%" PRIu64
                      " bytes)", o->dst_path, dst->caps.size, o->src_path, vsize);
        goto out;
    }
    /* One layer: the export serves the layer alone, so it reads as zeroes
     * where the layer allocates nothing, and the backing under it shows
     * there once the chain is put together again: every zero range of
     * the source layer is written (WRITE_ZEROES: a zero cluster of that
     * layer). */
    if (o->one_layer)
        dst->caps.reads_zero = false;
    if (o->journal) {
        nj.dst = dst;
        r = nbd_journal_setup(&nj, img, src, jl, vsize);
        jl = NULL;
        if (r < 0)
            goto out;
    }
    written = true;

    struct lsm_engine_params ep;
    lsm_copy_engine_params(o, &ep);
    ep.size = vsize;
    ep.requests = m;
    ep.request_size = rsize;
    ep.buffer_size = bsize;
    /* a granule mixing zeroes and absent ranges is read through the chain */
    ep.absent_zero_mixed_is_data = o->one_layer;
    ep.journal = nj.j;
    ep.checkpoint_bytes = o->checkpoint_bytes;
    ep.checkpoint_ms = o->checkpoint_ms;
    ep.redo_lo = nj.frontier0;
    ep.redo_hi = nj.reached0;
    ep.checkpoint = nj.j ? nbd_journal_checkpoint : NULL;
    ep.checkpoint_opaque = &nj;
    r = lsm_engine_copy(src, dst, &ep, &es);
    if (r == 0 && nj.j)
        lsm_journal_remove(nj.j);   /* the job is complete: only the file we saved */

out:
    if (r < 0 && !*lsm_last_error())
        lsm_error_errno(r, "copy failed");
    /* An export is never removed: once written to, it is incomplete. */
    if (r < 0 && written)
        st->dst_incomplete = true;
    if (r < 0 && nj.j && nj.j->saved)
        st->journal_kept = true;    /* the journal names the export: --resume */
    lsm_copy_take_engine_stats(st, &es);
    lsm_loop_destroy(loop);
    lsm_ep_close(dst);
    lsm_ep_close(src);
    nbd_journal_free(&nj);
    lsm_journal_free(jl);
    if (img)
        lsm_image_close(img);
    st->seconds = (double)(lsm_now_ns() - t0) / 1e9;
    return r < 0 ? r : 0;
}
