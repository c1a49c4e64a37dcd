/* The copy from paths (flow-copy.h): everything around the engine.
 *
 * Order matters for the data: the source is opened (read-only, QEMU's
 * shared lock) and, for a physical copy, validated before anything is
 * opened for writing; the destination is checked by identity against every
 * file of the source before it is opened and again on the opened
 * descriptor; it is created only with O_EXCL and never opened with O_TRUNC,
 * so only a file this copy created is ever removed; an existing one is
 * emptied only after it was checked and write-locked.  Then the endpoints
 * are made on one loop and the engine runs.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends.h"
#include "budget.h"
#include "cleanup.h"
#include "config.h"
#include "copy-nbd.h"
#include "error.h"
#include "fileid.h"
#include "flow-copy.h"
#include "journal.h"
#include "json-util.h"
#include "lock.h"
#include "module.h"
#include "qcow2/qcow2-format.h"
#include "qcow2/qcow2-ident.h"
#include "qcow2/qcow2-writer.h"
#include "util.h"

#define DEFAULT_REQUESTS 16

static void warn(const struct lsm_copy_opts *o, const char *fmt, ...) LSM_PRINTF(2, 3);
static void warn(const struct lsm_copy_opts *o, const char *fmt, ...)
{
    if (!o->warn)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    o->warn(o->opaque, msg);
}

static_assert(LSM_COMPRESSION_ZLIB == QCOW2_COMPRESSION_ZLIB &&
              LSM_COMPRESSION_ZSTD == QCOW2_COMPRESSION_ZSTD, "compression type values");
static_assert((int)LSM_PREALLOC_METADATA == (int)QCOW2_PREALLOC_METADATA &&
              (int)LSM_PREALLOC_FALLOC == (int)QCOW2_PREALLOC_FALLOC &&
              (int)LSM_PREALLOC_FULL == (int)QCOW2_PREALLOC_FULL, "preallocation modes");

/* --bitmaps: the persistent bitmaps of SRC's top layer go to the qcow2
 * destination, as qemu-img convert --bitmaps copies them; an inconsistent
 * one (in use: a VM had it open) is refused, or skipped with
 * --skip-broken-bitmaps. */
#define MAX_BITMAP_BYTES (256ULL << 20)
static int check_bitmaps(const struct lsm_copy_opts *o, struct lsm_image *img)
{
    if (o->dst_fmt != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "--bitmaps needs a qcow2 destination");
    struct lsm_bitmap_info *bm;
    int n = lsm_qcow2_get_bitmaps(img, &bm);
    if (n < 0)
        return n;
    int r = 0;
    if (n > 0 && o->create.qcow2_version == 2 && !o->no_create)
        r = lsm_error(-EINVAL, "--bitmaps: a compat=0.10 destination cannot hold bitmaps");
    for (int i = 0; i < n && r == 0; i++) {
        if (bm[i].in_use && !o->skip_broken_bitmaps)
            r = lsm_error(-EINVAL, "Cannot copy inconsistent bitmap '%s' of %s (it is in use); "
                          "--skip-broken-bitmaps skips it", bm[i].name, img->filename);
        else if (lsm_bitmap_bytes(img->virtual_size, bm[i].granularity) > MAX_BITMAP_BYTES)
            r = lsm_error(-EFBIG, "bitmap '%s' of %s is over %llu MiB", bm[i].name,
                          img->filename, MAX_BITMAP_BYTES >> 20);
    }
    lsm_bitmaps_free(bm, n);
    return r;
}

struct bitmap_copy {
    const struct lsm_copy_opts *o;
    struct lsm_image *img;
    struct qcow2_writer *w;
};

/* The engine's before_finish hook: the bitmaps go into the writer's
 * metadata, which its finish then writes. */
static int copy_bitmaps(void *opaque)
{
    const struct bitmap_copy *bc = opaque;
    const struct lsm_copy_opts *o = bc->o;
    struct lsm_bitmap_info *bm;
    int n = lsm_qcow2_get_bitmaps(bc->img, &bm);
    if (n < 0)
        return n;
    int r = 0;
    for (int i = 0; i < n && r == 0; i++) {
        if (bm[i].in_use) {
            warn(o, "skipping the inconsistent bitmap '%s' of %s", bm[i].name, bc->img->filename);
            continue;
        }
        /* The destination may be larger (-n): granules past SRC stay clear. */
        uint64_t slen = lsm_bitmap_bytes(bc->img->virtual_size, bm[i].granularity);
        uint64_t dlen = lsm_bitmap_bytes(qcow2_writer_virtual_size(bc->w), bm[i].granularity);
        uint8_t *buf = calloc(1, MAX(dlen, slen) ? MAX(dlen, slen) : 1);
        if (!buf) {
            r = lsm_error(-ENOMEM, "out of memory for bitmap '%s'", bm[i].name);
            break;
        }
        r = lsm_qcow2_read_bitmap(bc->img, &bm[i], buf, (size_t)slen);
        if (r == 0)
            r = qcow2_writer_add_bitmap(bc->w, bm[i].name, (unsigned)__builtin_ctzll(bm[i].granularity),
                                        bm[i].autoload, buf, dlen);
        free(buf);
    }
    lsm_bitmaps_free(bm, n);
    if (r < 0)
        lsm_error_prefix("cannot copy the bitmaps of %s", o->src_path);
    return r;
}

/* The metadata caches of a reader or a writer, from the process budget
 * (engine/budget.h) beside the engine's buffers: all of it or -ENOMEM. */
static int reserve_meta(uint64_t bytes, const char *what, uint64_t *reserved)
{
    if (!bytes)
        return 0;
    if (!lsm_budget_reserve(bytes, bytes, 0)) {
        uint64_t used, total;
        lsm_budget_usage(&used, &total);
        return lsm_error(-ENOMEM, "memory budget: the metadata of %s needs %" PRIu64 " KiB, "
                         "%" PRIu64 " of %" PRIu64 " KiB are in use", what, bytes >> 10,
                         used >> 10, total >> 10);
    }
    *reserved += bytes;
    return 0;
}

void lsm_copy_engine_params(const struct lsm_copy_opts *o, struct lsm_engine_params *ep)
{
    *ep = (struct lsm_engine_params){
        .rate = o->rate,
        .limiter = o->limiter,
        .salvage = o->salvage,
        .warn = o->warn,
        .sparse_size = o->sparse_size,
        .allocate_all = o->allocate_all,
        .checksum = o->checksum,
        .checksum_alg = o->checksum_alg,
        .checksum_block_size = o->checksum_block_size,
        .cancel = o->cancel,
        .record = o->record,
        .progress = o->progress,
        .job_progress = o->job_progress,
        .opaque = o->opaque,
    };
}

void lsm_copy_take_engine_stats(struct lsm_copy_stats *st, const struct lsm_engine_stats *es)
{
    st->offload = es->offload;
    st->bytes_total = es->bytes_total;
    st->bytes_done = es->bytes_done;
    st->bytes_read = es->bytes_read;
    st->bytes_written = es->bytes_written;
    st->bytes_zeroed = es->bytes_zeroed;
    st->bytes_skipped = es->bytes_skipped;
    st->bytes_offloaded = es->bytes_offloaded;
    st->bytes_already_done = es->bytes_already_done;
    st->bytes_redone = es->bytes_redone;
    st->checkpoints = es->checkpoints;
    st->checkpoint_seconds = es->checkpoint_seconds;
    st->bytes_salvaged = es->bytes_salvaged;
    st->salvaged_ranges = es->salvaged_ranges;
    st->checksummed = es->checksummed;
    memcpy(st->checksum, es->checksum, sizeof(st->checksum));
}

/* Decide whether a physical copy applies: one qcow2 layer (or -B) copied to
 * a new qcow2 keeping its cluster size, clean, no snapshots, no data file. */
static int physical_applies(const struct lsm_copy_opts *o, struct lsm_image *img, bool explain)
{
    if (img->format != LSM_FMT_QCOW2)
        return explain ? lsm_error(-EINVAL, "--physical needs a qcow2 source") : 0;
    if (o->dst_fmt != LSM_FMT_QCOW2)
        return explain ? lsm_error(-EINVAL, "--physical needs a qcow2 destination (-O qcow2)") : 0;
    if (o->no_create)
        return explain ? lsm_error(-EINVAL, "--physical cannot write into an existing destination (-n)") : 0;
    if (img->backing && !o->backing)
        return explain ? lsm_error(-EINVAL, "--physical copies one layer: %s has a backing file, give -B", img->filename) : 0;
    if (o->cluster_size && o->cluster_size != img->cluster_size)
        return explain ? lsm_error(-EINVAL, "--physical keeps the cluster size") : 0;
    if (o->snapshot || o->bitmaps || o->salvage)
        return explain ? lsm_error(-EINVAL, "--physical copies the layer's clusters as they are: "
                                   "not with %s", o->snapshot ? "-l" : o->bitmaps ? "--bitmaps"
                                   : "--salvage (zeroes in place of metadata)") : 0;
    const struct lsm_create_opts *co = &o->create;
    if (co->qcow2_version || co->refcount_bits || co->lazy_refcounts || co->extended_l2 ||
        co->compression_type || co->prealloc || co->compress || o->sparse_size ||
        o->allocate_all)
        return explain ? lsm_error(-EINVAL, "--physical keeps the source's layout: creation "
                                   "options (-o) and -S do not apply") : 0;
    struct lsm_qcow2_info qi;
    int r = lsm_qcow2_get_info(img, &qi);
    if (r < 0)
        return r;
    if (qi.corrupt || qi.dirty)
        return explain ? lsm_error(-EINVAL, "--physical: %s is marked %s", img->filename,
                                   qi.corrupt ? "corrupt" : "dirty") : 0;
    if (qi.data_file)
        return explain ? lsm_error(-EINVAL, "--physical: %s has an external data file", img->filename) : 0;
    if (explain)
        return 1;
    /* auto: conservative */
    if (qi.nb_snapshots || qi.nb_bitmaps)
        return 0;
    return 1;
}

bool lsm_is_nbd_uri(const char *s)
{
    static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://",
                                           "nbd+vsock://", "nbds+vsock://" };
    for (size_t i = 0; i < ARRAY_SIZE(schemes); i++)
        if (!strncmp(s, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

/* -EINVAL with a message if dst (the opened fd, or the path when fd < 0)
 * is one of the source's files; 0 if not or if nothing is there yet. */
static int dst_alias(const struct lsm_fileid_set *ids, const char *dst, int fd)
{
    struct lsm_fileid id;
    int r = fd >= 0 ? lsm_fileid_fd(fd, dst, &id) : lsm_fileid_path(dst, &id);
    if (r == -ENOENT && fd < 0)
        return 0;
    if (r < 0)
        return r;
    const struct lsm_fileid_entry *e = lsm_fileid_set_find(ids, &id);
    if (e)
        return lsm_error(-EINVAL, "refusing to write %s: it is the same file as %s, which this copy reads",
                         dst, e->name);
    return 0;
}

/* -B: the backing file DST will name (resolved from DST's directory, as
 * QEMU resolves it) must not be DST itself, or the copy would empty the
 * very file it names as its backing. */
static int dst_is_own_backing(const struct lsm_copy_opts *o)
{
    if (!o->backing)
        return 0;
    int err;
    _cleanup_free_ char *bpath = lsm_resolve_backing(o->dst_path, o->backing, &err);
    /* By identity, or, for a DST that does not exist yet, by the place it
     * will be created at: "-B out.qcow2 SRC out.qcow2" is refused before
     * DST is created naming itself. */
    struct lsm_filekey kb = { 0 }, kd = { 0 };
    bool same = bpath && lsm_filekey_get(bpath, &kb) == 0 &&
                lsm_filekey_get(o->dst_path, &kd) == 0 && lsm_filekey_same(&kb, &kd);
    lsm_filekey_free(&kb);
    lsm_filekey_free(&kd);
    lsm_error_clear();   /* unresolvable or missing names are for the writer to judge */
    if (same)
        return lsm_error(-EINVAL, "refusing to write %s: it is its own backing file (-B %s)",
                         o->dst_path, o->backing);
    return 0;
}

/* --checksum: the whole guest view, in guest order. */
static int checksum_check_opts(const struct lsm_copy_opts *o)
{
    if (!o->checksum)
        return 0;
#ifdef HAVE_LIBSODIUM
    if (o->backing)
        return lsm_error(-EINVAL, "--checksum needs a copy of the whole guest view: not with -B");
    if (o->physical == LSM_PHYSICAL_ALWAYS)
        return lsm_error(-EINVAL, "--checksum needs a guest-order copy: not with --physical");
    if (o->journal)
        /* a resume skips what the journal has done: those bytes are never
         * read, so the digest could not cover them */
        return lsm_error(-EINVAL, "--checksum covers one uninterrupted copy: not with --journal");
    return lsm_blkhash_check_block_size(o->checksum_block_size ? o->checksum_block_size
                                                               : LSM_BLKHASH_DEFAULT_BLOCK);
#else
    return lsm_error(-ENOTSUP, "--checksum: lsm-sync was built without libsodium");
#endif
}

/* The NBD source endpoint, from its module (copy-nbd.c). */
static int open_nbd(const struct lsm_copy_opts *o, struct lsm_loop *loop, struct lsm_ep **out)
{
    return lsm_copy_open_nbd(o, loop, o->src_path, false, out);
}

/* The destination as this copy sees it. */
struct dst {
    const char *path;
    struct lsm_file *f;
    struct qcow2_writer *w;     /* qcow2 destination in guest order, else NULL */
    struct lsm_ep *ep;
    uint64_t size;              /* guest size */
    bool created;               /* this copy created the file (O_EXCL): remove on failure */
    bool fresh;                 /* empty at the start (created, or emptied after the checks) */
    bool touched;               /* checks passed: writing may have begun (for an
                                   opened qcow2, the writer knows: see the end) */
    bool reads_zero;
};

/* ---- The journal (docs/resume.md): identities, options, checkpoints ----
 *
 * The engine marks ranges, skips what is done and drains at checkpoints;
 * what a checkpoint writes and what a resume compares is here. */

struct flow_journal {
    const struct lsm_copy_opts *o;
    struct dst *d;
    struct lsm_ep *src;               /* an NBD source (no image): identified by its blocks */
    struct lsm_journal *j;
    struct lsm_journal_file *files;   /* identities: sources, then the destination */
    size_t nfiles;
    bool first;                       /* the checkpoint before the first write */
    unsigned count;                   /* checkpoints after that one */
    uint64_t frontier0, reached0;     /* resume: the interrupted run's window */
};

/* Test hook: LSM_TEST_CHECKPOINT_KILL=N:WHERE kills the process with
 * SIGKILL at the N-th checkpoint (1 = the first after the one before any
 * write), WHERE "writer" right after the qcow2 writer's checkpoint (the
 * journal not yet updated) or "save" right after the journal is saved
 * (tests/functional/resume.sh). */
static void journal_test_kill(struct flow_journal *fj, const char *where)
{
    const char *e = getenv("LSM_TEST_CHECKPOINT_KILL");
    char *colon;
    if (!e || !(colon = strchr(e, ':')) || strcmp(colon + 1, where))
        return;
    if (strtoul(e, NULL, 10) == fj->count + 1 && fj->j->saved && !fj->first)
        raise(SIGKILL);
}

static json_object *journal_options(const struct lsm_copy_opts *o, uint64_t granule,
                                    uint64_t size, uint32_t cluster, bool reads_zero)
{
    json_object *j = json_object_new_object();
    json_object_object_add(j, "format", json_object_new_string(o->dst_fmt == LSM_FMT_QCOW2 ?
                                                               "qcow2" : "raw"));
    json_object_object_add(j, "size", json_object_new_int64((int64_t)size));
    json_object_object_add(j, "granule", json_object_new_int64((int64_t)granule));
    json_object_object_add(j, "cluster_size", json_object_new_int64(cluster));
    json_object_object_add(j, "one_layer", json_object_new_boolean(o->backing != NULL));
    json_object_object_add(j, "backing", o->backing ? lsm_json_string(o->backing) : NULL);
    json_object_object_add(j, "backing_format", o->backing_fmt == LSM_FMT_AUTO ? NULL :
                           json_object_new_string(lsm_format_name(o->backing_fmt)));
    json_object_object_add(j, "reads_zero", json_object_new_boolean(reads_zero));
    /* -S 0: a resume without it would leave holes in what remains.  Only
     * when set, so that journals written before the key existed (which
     * never had it) still resume. */
    if (o->allocate_all)
        json_object_object_add(j, "allocate_all", json_object_new_boolean(true));
    return j;
}

/* -ESTALE naming the first option that differs. */
int lsm_copy_journal_check_options(json_object *want, json_object *have)
{
    json_object_object_foreach(want, key, val) {
        json_object *h = NULL;
        if (!json_object_object_get_ex(have, key, &h) || !json_object_equal(val, h))
            return lsm_error(-ESTALE, "the journal was written for another copy (its %s is %s, "
                             "this one's %s)", key, h ? json_object_to_json_string(h) : "missing",
                             json_object_to_json_string(val));
    }
    return 0;
}

/* Identities of every file of the source chain, plus a last slot for the
 * destination (filled at each checkpoint).  Also copy-nbd.c's, for an NBD
 * destination. */
int lsm_copy_journal_src_idents(struct lsm_image *img, struct lsm_journal_file **out, size_t *nout)
{
    unsigned n = lsm_chain_length(img);
    struct lsm_journal_file *v = calloc(2 * (size_t)n + 1, sizeof *v);
    if (!v)
        return lsm_error(-ENOMEM, "out of memory");
    size_t k = 0;
    int r = 0;
    for (unsigned i = 0; i < n && r == 0; i++) {
        struct lsm_image *l = lsm_chain_layer(img, i);
        for (int data = 0; data < 2 && r == 0; data++) {
            int fd = data ? l->data_fd : l->fd;
            if (data && (fd < 0 || fd == l->fd))
                continue;
            struct lsm_journal_file *f = &v[k++];
            struct stat sb;
            if (asprintf(&f->role, "%s%s%.0u", data ? "data file of " : "",
                         i ? "backing " : "source", i) < 0) {
                f->role = NULL;
                r = lsm_error(-ENOMEM, "out of memory");
                break;
            }
            f->path = strdup(data && l->data_filename ? l->data_filename : l->filename);
            if (!f->path) {
                r = lsm_error(-ENOMEM, "out of memory");
                break;
            }
            if (fstat(fd, &sb) < 0) {
                r = lsm_error_errno(-errno, "cannot stat %s", f->path);
                break;
            }
            bool blk = S_ISBLK(sb.st_mode);
            f->dev = blk ? (uint64_t)sb.st_rdev : (uint64_t)sb.st_dev;
            f->ino = blk ? 0 : (uint64_t)sb.st_ino;
            f->size = data || blk ? (uint64_t)sb.st_size : l->file_size;
            if (blk)
                f->size = l->file_size;
            f->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
            if (!data && l->format == LSM_FMT_QCOW2) {
                r = qcow2_ident_hash(fd, &f->hash);
                f->has_hash = r > 0;
                if (r > 0)
                    r = 0;
            }
        }
    }
    /* the destination's slot */
    if (r == 0 && (!(v[k].role = strdup("destination")) || !(v[k].path = strdup(""))))
        r = lsm_error(-ENOMEM, "out of memory");
    if (r < 0) {
        for (size_t i = 0; i <= k; i++)
            lsm_journal_file_clear(&v[i]);
        free(v);
        return r;
    }
    *out = v;
    *nout = k + 1;
    return 0;
}

/* The journal is neither a source file nor the destination, by identity
 * or by the place it will be created at. */
static int journal_alias(const struct lsm_copy_opts *o, const struct lsm_fileid_set *srcids)
{
    struct lsm_fileid id;
    int r = lsm_fileid_path(o->journal, &id);
    if (r == 0) {
        const struct lsm_fileid_entry *e = lsm_fileid_set_find(srcids, &id);
        if (e)
            return lsm_error(-EINVAL, "refusing journal %s: it is %s, which this copy reads",
                             o->journal, e->name);
    } else if (r != -ENOENT) {
        return r;
    }
    struct lsm_filekey kj = { 0 }, kd = { 0 };
    r = lsm_filekey_get(o->journal, &kj);
    if (r == 0)
        r = lsm_filekey_get(o->dst_path, &kd);
    bool same = r == 0 && lsm_filekey_same(&kj, &kd);
    lsm_filekey_free(&kj);
    lsm_filekey_free(&kd);
    if (r < 0)
        return r;
    if (same)
        return lsm_error(-EINVAL, "refusing journal %s: it is the destination", o->journal);
    return 0;
}

/* The destination's identity as this checkpoint leaves it. */
static int journal_dst_ident(struct dst *d, struct lsm_journal_file *f)
{
    struct stat sb;
    if (fstat(d->f->fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", d->path);
    f->dev = S_ISBLK(sb.st_mode) ? (uint64_t)sb.st_rdev : (uint64_t)sb.st_dev;
    f->ino = S_ISBLK(sb.st_mode) ? 0 : (uint64_t)sb.st_ino;
    f->mtime_ns = -1;       /* written after every checkpoint */
    f->has_hash = f->has_hash_next = false;
    /* A qcow2 grows past its checkpoint: its header and L1 say what the
     * checkpoint left (qcow2-ident.h); a raw file keeps its size. */
    f->size = d->w ? 0 : (S_ISBLK(sb.st_mode) ? d->f->size : (uint64_t)sb.st_size);
    if (d->w) {
        int r = qcow2_ident_hash(d->f->fd, &f->hash);
        if (r < 0)
            return r;
        f->has_hash = r > 0;
    }
    return 0;
}

/* The engine's checkpoint: it has drained; make everything recorded
 * durable (the destination's checkpoint), then say so in the journal. */
static int journal_checkpoint(void *opaque, uint64_t frontier)
{
    struct flow_journal *fj = opaque;
    struct dst *d = fj->d;
    int r = lsm_ep_flush(d->ep);
    if (r < 0)
        return r;
    struct lsm_journal_file *df = &fj->files[fj->nfiles - 1];
    if (d->w && fj->j->saved) {
        /* A kill while the writer writes its metadata leaves the image at
         * this checkpoint or the last one: the journal (still with the
         * last one's done ranges) accepts both. */
        r = qcow2_writer_checkpoint_hash(d->w, &df->hash_next);
        df->has_hash_next = r == 0;
        if (r == 0)
            r = lsm_journal_set_files(fj->j, fj->files, fj->nfiles);
        if (r == 0)
            r = lsm_journal_save(fj->j);
        if (r < 0) {
            lsm_error_prefix("cannot checkpoint %s", d->path);
            return r;
        }
    }
    r = lsm_ep_checkpoint(d->ep);   /* qcow2: the writer's checkpoint */
    if (r < 0)
        return r;
    if (d->w)
        journal_test_kill(fj, "writer");
    lsm_journal_commit(fj->j);       /* what was recorded is durable now */
    r = journal_dst_ident(d, df);
    if (r == 0)
        r = lsm_journal_set_files(fj->j, fj->files, fj->nfiles);
    if (r < 0)
        return r;
    fj->j->frontier = frontier;
    r = lsm_journal_save(fj->j);
    if (r < 0)
        return r;
    journal_test_kill(fj, "save");
    if (!fj->first)
        fj->count++;
    if (fj->first) {
        fj->first = false;
        if (fj->o->resume && (fj->frontier0 || fj->reached0)) {
            /* Keep the interrupted run's window: its work past the frontier
             * is what this run redoes. */
            fj->j->frontier = fj->frontier0;
            r = lsm_journal_save(fj->j);
            if (r == 0)
                r = lsm_journal_note_reached(fj->j, fj->reached0);
        }
    }
    return r;
}

/* The destination is open: a new journal, or the loaded one checked
 * against this job (options, then every file).  Takes jl. */
static int journal_setup(struct flow_journal *fj, struct lsm_image *img, struct lsm_journal *jl,
                         uint64_t granule, uint32_t cluster)
{
    const struct lsm_copy_opts *o = fj->o;
    struct dst *d = fj->d;
    json_object *opts = journal_options(o, granule, d->size, cluster, d->reads_zero);
    if (!opts) {
        lsm_journal_free(jl);
        return lsm_error(-ENOMEM, "out of memory");
    }
    int r = img ? lsm_copy_journal_src_idents(img, &fj->files, &fj->nfiles)
                : lsm_copy_nbd_src_idents(fj->src, o->src_path, &fj->files, &fj->nfiles);
    if (r == 0)
        r = journal_dst_ident(d, &fj->files[fj->nfiles - 1]);
    if (r == 0) {
        free(fj->files[fj->nfiles - 1].path);
        fj->files[fj->nfiles - 1].path = strdup(d->path);
    }
    if (r < 0) {
        json_object_put(opts);
        lsm_journal_free(jl);
        return r;
    }
    fj->first = true;
    if (!jl)
        return lsm_journal_new(o->journal, d->size, granule, opts, &fj->j);
    fj->j = jl;
    r = lsm_copy_journal_check_options(opts, jl->options);
    json_object_put(opts);
    if (r == 0 && !img)
        r = lsm_copy_nbd_check_ident(jl, 0, &fj->files[0]);
    if (r == 0)
        r = lsm_journal_check_files(jl, fj->files, fj->nfiles);
    if (r < 0) {
        lsm_error_prefix("cannot resume from %s", o->journal);
        return r;
    }
    fj->frontier0 = jl->frontier;
    fj->reached0 = jl->reached;
    return 0;
}

static void journal_free(struct flow_journal *fj)
{
    lsm_journal_free(fj->j);
    if (fj->files)
        for (size_t i = 0; i < fj->nfiles; i++)
            lsm_journal_file_clear(&fj->files[i]);
    free(fj->files);
}

int lsm_copy(const struct lsm_copy_opts *o, struct lsm_copy_stats *st)
{
    if (lsm_is_nbd_uri(o->dst_path))
        return lsm_copy_nbd_dst(o, st);
    memset(st, 0, sizeof(*st));
    uint64_t t0 = lsm_now_ns();
    struct dst d = { .path = o->dst_path };
    struct flow_journal fj = { .o = o, .d = &d };
    struct lsm_journal *jl = NULL;
    struct lsm_image *img = NULL;
    struct lsm_loop *loop = NULL;
    struct lsm_ep *src = NULL, *dep = NULL;
    struct lsm_fileid_set srcids = { 0 };
    struct lsm_engine_stats es = { 0 };
    struct lsm_offload *ol = NULL;
    struct bitmap_copy bitmap_copy = { .o = o };
    uint64_t meta_reserved = 0;     /* from the process budget */
    int r;

    if (o->request_size && (!is_pow2(o->request_size) || o->request_size < 4096))
        return lsm_error(-EINVAL, "request size must be a power of two of at least 4096 bytes");
    if (o->dst_fmt != LSM_FMT_RAW && o->dst_fmt != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "destination format must be raw or qcow2");
    if (o->backing_fmt != LSM_FMT_AUTO && !o->backing)
        return lsm_error(-EINVAL, "a backing format (-F) needs a backing file (-B)");
    if (o->backing && o->dst_fmt != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "a backing file (-B) needs a qcow2 destination (-O qcow2)");
    if (o->target_is_zero && !o->no_create)
        return lsm_error(-EINVAL, "--target-is-zero needs -n");
    if ((r = checksum_check_opts(o)) < 0)
        return r;
    /* A resume writes into the destination the journal names: never
     * created, never emptied. */
    bool no_create = o->no_create || o->resume;
    if (o->resume && !o->journal)
        return lsm_error(-EINVAL, "--resume needs --journal");
    if (o->unsafe && o->journal)
        return lsm_error(-EINVAL, "-t unsafe is not combined with --journal: a checkpoint "
                         "records only what is durable");
    if (o->journal) {
        if (o->physical == LSM_PHYSICAL_ALWAYS)
            return lsm_error(-EINVAL, "--journal copies in guest order: not with --physical");
        struct stat sb;
        if (!o->resume && lstat(o->journal, &sb) == 0)
            return lsm_error(-EEXIST, "journal %s exists: add --resume to continue its copy, or "
                             "remove it", o->journal);
        if (o->resume) {
            r = lsm_journal_load(o->journal, &jl);
            if (r < 0)
                return r;
            /* what can be compared before DST is opened */
            json_object *early = journal_options(o, 0, 0, 0, false);
            json_object_object_del(early, "granule");
            json_object_object_del(early, "size");
            json_object_object_del(early, "cluster_size");
            json_object_object_del(early, "reads_zero");
            r = lsm_copy_journal_check_options(early, jl->options);
            json_object_put(early);
            if (r < 0) {
                lsm_journal_free(jl);
                lsm_error_prefix("cannot resume from %s", o->journal);
                return r;
            }
        }
    }

    /* One loop for both ends: one io_uring ring for the source reads and
     * the destination writes. */
    unsigned m = o->requests ? o->requests : DEFAULT_REQUESTS;
    uint64_t rsize = o->request_size, bsize = o->buffer_size;
    lsm_copy_nbd_defaults(o, &m, &rsize, &bsize);   /* an NBD source: its defaults */
    struct lsm_loop_config lc = { .io_kind = o->io_kind, .depth = MAX(2 * m, 32u),
                                  .fixed_buffers = true };
    bool nbd = lsm_is_nbd_uri(o->src_path);
    if (nbd) {
        if (o->backing && !o->one_layer)
            return lsm_error(-EINVAL, "-B needs an image source: %s has no layers", o->src_path);
        if (o->physical == LSM_PHYSICAL_ALWAYS)
            return lsm_error(-EINVAL, "--physical needs a qcow2 source, not %s", o->src_path);
        if (o->snapshot)
            return lsm_error(-EINVAL, "-l needs a qcow2 source, not %s", o->src_path);
        if (o->bitmaps)
            return lsm_error(-EINVAL, "--bitmaps needs an image source: %s has no bitmaps",
                             o->src_path);
        r = lsm_loop_create(&lc, &loop);
        if (r < 0)
            goto out;
        r = open_nbd(o, loop, &src);
        if (r < 0)
            goto out;
    } else {
        r = lsm_image_open(o->src_path, o->src_fmt,
                           o->force_share ? LSM_OPEN_FORCE_SHARE : 0, &img);
        if (r < 0) {
            st->src_busy = r == -EAGAIN;
            goto out;
        }
        r = lsm_loop_create(&lc, &loop);
        if (r < 0)
            goto out;
    }
    snprintf(st->io_name, sizeof(st->io_name), "%s", lsm_loop_io_name(loop));

    /* -l: the snapshot's view replaces the active one before anything is read. */
    if (o->snapshot && img) {
        r = lsm_qcow2_load_snapshot(img, o->snapshot, o->snapshot_key);
        if (r < 0)
            goto out;
    }

    if (img) {
        r = reserve_meta(lsm_image_meta_bytes(img), o->src_path, &meta_reserved);
        if (r < 0)
            goto out;
    }

    /* --bitmaps: refused up front what would fail at the end. */
    if (o->bitmaps && img) {
        r = check_bitmaps(o, img);
        if (r < 0)
            goto out;
    }

    /* Physical copy? */
    bool physical = false;
    if (!img) {
        /* an NBD export: guest order */
    } else if (o->physical == LSM_PHYSICAL_ALWAYS) {
        r = physical_applies(o, img, true);
        if (r < 0)
            goto out;
        physical = true;
    } else if (o->physical == LSM_PHYSICAL_AUTO && !o->checksum && !o->journal) {
        r = physical_applies(o, img, false);
        if (r < 0)
            goto out;
        physical = r > 0;
    }
    lsm_error_clear();
    st->physical = physical;

    /* The source, before anything is opened for writing: a physical source
     * validates the whole layer here, and both kinds take the stamps their
     * check compares after the copy. */
    enum lsm_direct_mode sdirect = o->src_direct_set ? o->src_direct : o->direct;
    if (physical)
        r = lsm_ep_phys_create(loop, img, sdirect, &src);
    else if (!src)
        /* -B copies the source's top layer only when it has (or names) a
         * backing file; a source without one reads as zero where it is
         * unallocated, and that is written (as qemu-img does), not left to
         * the destination's backing file. */
        r = lsm_ep_image_create(loop, img, o->backing && (img->backing || img->backing_name),
                                sdirect, &src);
    if (r < 0)
        goto out;

    /* Destination. */
    uint32_t cluster = 0;
    if (o->dst_fmt == LSM_FMT_QCOW2) {
        cluster = o->cluster_size ? o->cluster_size
                                  : (img && img->cluster_size ? img->cluster_size : 64 * KiB);
        if (!is_pow2(cluster) || cluster < 512 || cluster > 2 * MiB) {
            r = lsm_error(-EINVAL, "invalid cluster size %u", cluster);
            goto out;
        }
    }
    /* Never a file of the source, whatever path spells it: checked by
     * identity before anything is opened for writing, and again on the
     * opened descriptor before the first write or truncate. */
    if (img) {
        r = lsm_image_add_ids(img, &srcids);
        if (r < 0)
            goto out;
    }
    r = dst_alias(&srcids, o->dst_path, -1);
    if (r < 0)
        goto out;
    r = dst_is_own_backing(o);
    if (r < 0)
        goto out;
    if (o->journal) {
        r = journal_alias(o, &srcids);
        if (r < 0)
            goto out;
    }
    /* Created only with O_EXCL, never opened with O_TRUNC: only a file this
     * copy created is removed on failure.  An existing file is opened as it
     * is, checked (a regular file or block device, not a source file, not
     * locked by anyone), and only then emptied. */
    unsigned fflags = LSM_FILE_READ | LSM_FILE_WRITE |
                      (no_create ? 0 : LSM_FILE_CREATE | LSM_FILE_MAY_EXIST);
    r = lsm_file_open(o->dst_path, fflags, o->direct, &d.f);
    if (r < 0)
        goto out;
    d.created = d.f->created;
    r = dst_alias(&srcids, o->dst_path, d.f->fd);
    if (r < 0)
        goto out;
    /* QEMU's write lock, for the whole copy, on the one descriptor. */
    r = lsm_lock_write(d.f->fd, o->dst_path);
    if (r < 0) {
        /* Another writer opened what we created: it is theirs now. */
        if (r == -EAGAIN)
            d.created = d.f->created = false;
        goto out;
    }
    d.touched = true;
    if (!no_create && !d.created && !d.f->is_blockdev) {
        r = lsm_file_truncate(d.f, 0);
        if (r < 0)
            goto out;
    }
    d.fresh = !no_create && !d.f->is_blockdev;
    if (cluster && d.f->offset_align > cluster) {
        /* Cluster smaller than the O_DIRECT alignment: buffered I/O. */
        if (o->direct == LSM_DIRECT_ALWAYS) {
            r = lsm_error(-EINVAL, "cannot use O_DIRECT on %s: cluster size %u below its alignment %u",
                          o->dst_path, cluster, d.f->offset_align);
            goto out;
        }
        r = lsm_file_set_direct(d.f, false);
        if (r < 0)
            goto out;
    } else if (d.f->direct_refused) {
        warn(o, "%s does not support O_DIRECT; using buffered I/O", o->dst_path);
    }
    st->direct = d.f->direct;

    uint64_t vsize = img ? img->virtual_size : src->caps.size;
    uint64_t dsize = vsize;             /* the destination endpoint's size */
    if (physical && d.f->is_blockdev) {
        /* A device keeps what it held: zero runs must be written as zeroes
         * (a skipped one would leave old bytes inside a used cluster), and
         * an old header must go before the first write, so that an
         * interrupted copy is no qcow2 (ours comes last). */
        dsize = img->file_size;
        d.reads_zero = false;
        if (d.f->size < img->file_size) {
            r = lsm_error(-ENOSPC, "destination %s is smaller (%" PRIu64 " bytes) than %s (%" PRIu64 " bytes)",
                          o->dst_path, d.f->size, o->src_path, img->file_size);
            goto out;
        }
        uint64_t hlen = src->caps.deferred;
        r = lsm_file_zero(d.f, 0, align_up(hlen, MAX(d.f->offset_align, 512u)), true);
        if (r < 0) {
            lsm_error_prefix("cannot zero the header of %s", o->dst_path);
            goto out;
        }
    } else if (physical) {
        dsize = img->file_size;
        d.reads_zero = true;
        r = lsm_file_truncate(d.f, img->file_size);
        if (r < 0)
            goto out;
    } else if (o->dst_fmt == LSM_FMT_QCOW2) {
        if (no_create) {
            /* Nothing is written before the writer's first change
             * (qcow2_writer_changed), so its refusals leave DST as it was. */
            d.touched = false;
            r = o->resume ? qcow2_writer_resume(d.f->fd, d.f->offset_align, &d.w)
                          : qcow2_writer_open(d.f->fd, d.f->offset_align, &d.w);
            if (r < 0)
                goto out;
            if (o->create.compress && (r = qcow2_writer_compress_existing(d.w)) < 0) {
                lsm_error_prefix("-c into %s", o->dst_path);
                goto out;
            }
            if (o->journal && qcow2_writer_version(d.w) == 2) {
                r = lsm_error(-ENOTSUP, "--journal cannot be used with %s, a version 2 "
                              "(compat=0.10) qcow2: an interrupted copy marks its destination "
                              "incomplete in a version 3 header field; copy without --journal",
                              o->dst_path);
                goto out;
            }
            if (qcow2_writer_virtual_size(d.w) < vsize) {
                r = lsm_error(-EINVAL, "destination %s is smaller (%" PRIu64 " bytes) than %s (%" PRIu64 " bytes)",
                              o->dst_path, qcow2_writer_virtual_size(d.w), o->src_path, vsize);
                goto out;
            }
            d.reads_zero = o->target_is_zero;
        } else {
            struct qcow2_create_opts co = {
                .size = align_up(vsize, 512),
                .cluster_bits = (unsigned)__builtin_ctz(cluster),
                .backing_name = o->backing,
                .backing_fmt = o->backing_fmt,
                .version = o->create.qcow2_version,
                .refcount_bits = o->create.refcount_bits,
                .lazy_refcounts = o->create.lazy_refcounts,
                .extended_l2 = o->create.extended_l2,
                .compression_type = o->create.compression_type,
                .compress = o->create.compress,
            };
            r = qcow2_writer_create(d.f->fd, d.f->offset_align, &co, &d.w);
            if (r < 0)
                goto out;
            if (o->create.prealloc != LSM_PREALLOC_OFF) {
                r = qcow2_writer_preallocate(d.w, (enum qcow2_prealloc)o->create.prealloc);
                if (r < 0)
                    goto out;
            }
            d.reads_zero = !o->backing;
        }
    } else {
        if (no_create || d.f->is_blockdev) {
            if (d.f->size < vsize) {
                r = lsm_error(-ENOSPC, "destination %s is smaller (%" PRIu64 " bytes) than %s (%" PRIu64 " bytes)",
                              o->dst_path, d.f->size, o->src_path, vsize);
                d.touched = false;   /* only its size was read: not incomplete */
                goto out;
            }
            d.reads_zero = o->target_is_zero;
        } else {
            r = lsm_file_truncate(d.f, vsize);
            if (r < 0)
                goto out;
            if (o->create.prealloc == LSM_PREALLOC_FALLOC || o->create.prealloc == LSM_PREALLOC_FULL) {
                r = lsm_file_preallocate(d.f, 0, vsize, o->create.prealloc == LSM_PREALLOC_FULL);
                if (r < 0)
                    goto out;
            } else if (o->create.prealloc != LSM_PREALLOC_OFF) {
                r = lsm_error(-EINVAL, "unsupported preallocation mode for a raw destination: metadata");
                goto out;
            }
            d.reads_zero = true;
        }
    }

    d.size = vsize;
    if (jl && jl->options) {
        /* A resumed destination reads as zero where the first run found it so. */
        json_object *rz;
        if (json_object_object_get_ex(jl->options, "reads_zero", &rz) &&
            json_object_is_type(rz, json_type_boolean))
            d.reads_zero = json_object_get_boolean(rz);
    }

    /* The offload ladder (offload/offload.h) for any source whose data
     * runs sit contiguously in a layer file (raw, qcow2 without
     * compression, a chain) to a raw destination; not with a checksum (it
     * hashes what the pipeline reads) or a journal (it records what the
     * pipeline wrote). */
    struct lsm_offload_opts oo = {
        .mode = o->offload_mode ? o->offload_mode : o->offload ? LSM_OFFLOAD_AUTO : LSM_OFFLOAD_NEVER,
        .name = o->offload_name,
        .command = o->offload_cmd,
        .command_timeout_s = o->offload_timeout_s,
        .cancel = o->cancel,
    };
    bool can_offload = !physical && !d.w && !o->checksum && !o->journal && img;
    if (o->offload_required && (!can_offload || oo.mode == LSM_OFFLOAD_NEVER)) {
        r = lsm_error(-EOPNOTSUPP, "cannot offload %s to %s (-C: offload required): %s",
                      o->src_path, o->dst_path,
                      oo.mode == LSM_OFFLOAD_NEVER ? "--offload=never"
                      : !img                       ? "an NBD source is not offloaded"
                      : physical                   ? "a physical copy is not offloaded"
                      : d.w                        ? "only raw destinations are offloaded"
                      : o->checksum                ? "--checksum reads every byte"
                                                   : "--journal is not combined with offload");
        goto out;
    }
    if (oo.mode != LSM_OFFLOAD_NEVER && can_offload) {
        r = lsm_offload_create(&oo, &ol);
        if (r < 0)
            goto out;
    }
    if (d.w)
        r = lsm_ep_qcow2_create(loop, d.w, d.f, d.reads_zero,
                                (d.fresh ? LSM_EP_QCOW2_RESERVE : 0) |
                                /* finish trims what an interrupted run left past the end */
                                (o->resume && !d.f->is_blockdev ? LSM_EP_QCOW2_TRIM : 0), &dep);
    else
        r = lsm_ep_file_create(loop, d.f, dsize,
                               d.reads_zero ? LSM_EP_FILE_READS_ZERO : 0, &dep);
    if (r < 0)
        goto out;
    d.ep = dep;
    dep->no_flush = o->unsafe;
    if (ol)
        lsm_ep_file_set_offload(dep, ol);
    if (o->journal) {
        fj.src = src;
        r = journal_setup(&fj, img, jl, dep->caps.granule, cluster);
        jl = NULL;
        if (r < 0)
            goto out;
    }

    if (d.w) {
        r = reserve_meta(qcow2_writer_meta_bytes(d.w), o->dst_path, &meta_reserved);
        if (r < 0)
            goto out;
    }
    bitmap_copy.img = img;
    bitmap_copy.w = d.w;
    struct lsm_engine_params ep;
    lsm_copy_engine_params(o, &ep);
    ep.size = physical ? img->file_size : vsize;
    ep.requests = m;
    ep.request_size = rsize;
    ep.buffer_size = bsize;
    ep.offload = ol != NULL;
    ep.offload_required = o->offload_required;
    ep.before_finish = d.w && o->bitmaps && img ? copy_bitmaps : NULL;
    ep.before_finish_opaque = &bitmap_copy;
    ep.absent_zero_mixed_is_data = o->backing && img && (img->backing || img->backing_name);
    ep.journal = fj.j;
    ep.checkpoint_bytes = o->checkpoint_bytes;
    ep.checkpoint_ms = o->checkpoint_ms;
    ep.redo_lo = fj.frontier0;
    ep.redo_hi = fj.reached0;
    ep.checkpoint = fj.j ? journal_checkpoint : NULL;
    ep.checkpoint_opaque = &fj;
    r = lsm_engine_copy(src, dep, &ep, &es);
    if (r == -EOPNOTSUPP && o->offload_required && ol && *lsm_offload_reason(ol)) {
        char why[768];
        snprintf(why, sizeof why, "%s", lsm_last_error());
        lsm_error(r, "%s: %s", why, lsm_offload_reason(ol));
    }
    if (r < 0)
        goto out;
    if (fj.j)
        lsm_journal_remove(fj.j);   /* the job is complete: only the file we saved */

    if (physical) {
        /* The engine wrote the header cluster last (the copy the source
         * validated, proved current by its check): point it at the new
         * backing name if -B gives another one. */
        bool same = o->backing && img->backing_name && !strcmp(o->backing, img->backing_name) &&
                    o->backing_fmt == img->backing_fmt;
        if (o->backing && !same) {
            r = qcow2_set_backing(d.f->fd, d.f->offset_align, o->backing, o->backing_fmt);
            if (r < 0) {
                lsm_error_prefix("cannot set the backing file of %s", o->dst_path);
                goto out;
            }
            r = lsm_file_sync(d.f);
            if (r < 0)
                goto out;
        }
    }

out:
    if (r < 0 && !*lsm_last_error())
        lsm_error_errno(r, "copy failed");
    lsm_copy_take_engine_stats(st, &es);
    if (ol) {
        struct lsm_offload_counts oc;
        lsm_offload_get_counts(ol, &oc);
        st->bytes_reflinked = oc.reflink;
        st->bytes_copy_range = oc.copy_range;
        st->bytes_plugin = oc.plugin;
        st->bytes_offload_cmd = oc.command;
        snprintf(st->offload_plugin, sizeof st->offload_plugin, "%s", oc.plugin_name);
        snprintf(st->offload_fallback, sizeof st->offload_fallback, "%.255s", oc.first_fallback);
    }
    lsm_loop_destroy(loop);   /* waits for anything still in flight */
    lsm_ep_close(dep);
    lsm_ep_close(src);
    lsm_offload_free(ol);   /* after the endpoint that used it */
    if (d.w) {
        if (qcow2_writer_changed(d.w))
            d.touched = true;
        qcow2_writer_close(d.w);
    }
    if (r < 0 && fj.j && fj.j->saved) {
        /* The journal names the destination: both stay for --resume. */
        d.created = false;
        st->journal_kept = true;
    }
    if (r < 0 && d.f) {
        /* Removed only if this copy created it and the name still leads
         * to it; anything else was there before and is left in place. */
        if (d.created && lsm_file_remove_created(d.f))
            st->dst_removed = true;
        else if (d.touched)
            st->dst_incomplete = true;
    }
    if (d.f) {
        lsm_lock_release(d.f->fd);
        lsm_file_close(d.f);
    }
    lsm_fileid_set_free(&srcids);
    journal_free(&fj);
    lsm_journal_free(jl);
    if (img)
        lsm_image_close(img);
    lsm_budget_release(meta_reserved);   /* the caches are freed */
    st->seconds = (double)(lsm_now_ns() - t0) / 1e9;
    return r < 0 ? r : 0;
}
