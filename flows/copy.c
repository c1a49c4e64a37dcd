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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends.h"
#include "cleanup.h"
#include "config.h"
#include "error.h"
#include "fileid.h"
#include "flow-copy.h"
#include "lock.h"
#include "module.h"
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
    return lsm_blkhash_check_block_size(o->checksum_block_size ? o->checksum_block_size
                                                               : LSM_BLKHASH_DEFAULT_BLOCK);
#else
    return lsm_error(-ENOTSUP, "--checksum: lsm-sync was built without libsodium");
#endif
}

/* The NBD source endpoint, from its module (libnbd is loaded only for
 * NBD sources). */
static int open_nbd(const struct lsm_copy_opts *o, struct lsm_loop *loop, struct lsm_ep **out)
{
#ifdef HAVE_LIBNBD
    typeof(&lsm_ep_nbd_create) nbd_create =
        (typeof(&lsm_ep_nbd_create))lsm_module_symbol("endpoint-nbd", "lsm_ep_nbd_create");
    if (!nbd_create)
        return -ENOTSUP;
    return nbd_create(loop, o->src_path, o->cancel, o->nbd_timeout_ms, o->nbd_timeout_ms, out);
#else
    (void)loop;
    (void)out;
    return lsm_error(-ENOTSUP, "cannot read %s: lsm-sync was built without libnbd", o->src_path);
#endif
}

/* The destination as this copy sees it. */
struct dst {
    struct lsm_file *f;
    struct qcow2_writer *w;     /* qcow2 destination in guest order, else NULL */
    bool created;               /* this copy created the file (O_EXCL): remove on failure */
    bool fresh;                 /* empty at the start (created, or emptied after the checks) */
    bool touched;               /* checks passed: writing may have begun (for an
                                   opened qcow2, the writer knows: see the end) */
    bool reads_zero;
};

int lsm_copy(const struct lsm_copy_opts *o, struct lsm_copy_stats *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t t0 = lsm_now_ns();
    struct dst d = { 0 };
    struct lsm_image *img = NULL;
    struct lsm_loop *loop = NULL;
    struct lsm_ep *src = NULL, *dep = NULL;
    struct lsm_fileid_set srcids = { 0 };
    struct lsm_engine_stats es = { 0 };
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

    /* One loop for both ends: one io_uring ring for the source reads and
     * the destination writes. */
    unsigned m = o->requests ? o->requests : DEFAULT_REQUESTS;
    struct lsm_loop_config lc = { .io_kind = o->io_kind, .depth = MAX(2 * m, 32u),
                                  .fixed_buffers = true };
    bool nbd = lsm_is_nbd_uri(o->src_path);
    if (nbd) {
        if (o->backing)
            return lsm_error(-EINVAL, "-B needs an image source: %s has no layers", o->src_path);
        if (o->physical == LSM_PHYSICAL_ALWAYS)
            return lsm_error(-EINVAL, "--physical needs a qcow2 source, not %s", o->src_path);
        r = lsm_loop_create(&lc, &loop);
        if (r < 0)
            return r;
        r = open_nbd(o, loop, &src);
        if (r < 0)
            goto out;
    } else {
        r = lsm_image_open(o->src_path, o->src_fmt,
                           o->force_share ? LSM_OPEN_FORCE_SHARE : 0, &img);
        if (r < 0) {
            st->src_busy = r == -EAGAIN;
            return r;
        }
        r = lsm_loop_create(&lc, &loop);
        if (r < 0)
            goto out;
    }
    snprintf(st->io_name, sizeof(st->io_name), "%s", lsm_loop_io_name(loop));

    /* Physical copy? */
    bool physical = false;
    if (!img) {
        /* an NBD export: guest order */
    } else if (o->physical == LSM_PHYSICAL_ALWAYS) {
        r = physical_applies(o, img, true);
        if (r < 0)
            goto out;
        physical = true;
    } else if (o->physical == LSM_PHYSICAL_AUTO && !o->checksum) {
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
        r = lsm_ep_image_create(loop, img, o->backing != NULL, sdirect, &src);
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
    /* Created only with O_EXCL, never opened with O_TRUNC: only a file this
     * copy created is removed on failure.  An existing file is opened as it
     * is, checked (a regular file or block device, not a source file, not
     * locked by anyone), and only then emptied. */
    unsigned fflags = LSM_FILE_READ | LSM_FILE_WRITE |
                      (o->no_create ? 0 : LSM_FILE_CREATE | LSM_FILE_MAY_EXIST);
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
    if (!o->no_create && !d.created && !d.f->is_blockdev) {
        r = lsm_file_truncate(d.f, 0);
        if (r < 0)
            goto out;
    }
    d.fresh = !o->no_create && !d.f->is_blockdev;
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
        if (o->no_create) {
            /* Nothing is written before the writer's first change
             * (qcow2_writer_changed), so its refusals leave DST as it was. */
            d.touched = false;
            r = qcow2_writer_open(d.f->fd, d.f->offset_align, &d.w);
            if (r < 0)
                goto out;
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
            };
            r = qcow2_writer_create(d.f->fd, d.f->offset_align, &co, &d.w);
            if (r < 0)
                goto out;
            d.reads_zero = !o->backing;
        }
    } else {
        if (o->no_create || d.f->is_blockdev) {
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
            d.reads_zero = true;
        }
    }

    /* Offload (reflink, copy_file_range) applies to raw data copied as it
     * is: a raw source without a backing file, a raw destination. */
    bool offload = o->offload && !o->checksum && !physical && !d.w && img &&
                   img->format == LSM_FMT_RAW && !img->backing;
    if (d.w)
        r = lsm_ep_qcow2_create(loop, d.w, d.f, d.reads_zero, d.fresh, &dep);
    else
        r = lsm_ep_file_create(loop, d.f, dsize,
                               (d.reads_zero ? LSM_EP_FILE_READS_ZERO : 0) |
                               (offload ? LSM_EP_FILE_OFFLOAD : 0), &dep);
    if (r < 0)
        goto out;

    struct lsm_engine_params ep = {
        .size = physical ? img->file_size : vsize,
        .requests = m,
        .request_size = o->request_size,
        .buffer_size = o->buffer_size,
        .rate = o->rate,
        .limiter = o->limiter,
        .offload = offload,
        .checksum = o->checksum,
        .checksum_alg = o->checksum_alg,
        .checksum_block_size = o->checksum_block_size,
        .absent_zero_mixed_is_data = o->backing != NULL,
        .cancel = o->cancel,
        .record = o->record,
        .progress = o->progress,
        .job_progress = o->job_progress,
        .opaque = o->opaque,
    };
    r = lsm_engine_copy(src, dep, &ep, &es);
    if (r < 0)
        goto out;

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
    st->offload = es.offload;
    st->bytes_total = es.bytes_total;
    st->bytes_done = es.bytes_done;
    st->bytes_read = es.bytes_read;
    st->bytes_written = es.bytes_written;
    st->bytes_zeroed = es.bytes_zeroed;
    st->bytes_skipped = es.bytes_skipped;
    st->bytes_offloaded = es.bytes_offloaded;
    st->checksummed = es.checksummed;
    memcpy(st->checksum, es.checksum, sizeof(st->checksum));
    lsm_loop_destroy(loop);   /* waits for anything still in flight */
    lsm_ep_close(dep);
    lsm_ep_close(src);
    if (d.w) {
        if (qcow2_writer_changed(d.w))
            d.touched = true;
        qcow2_writer_close(d.w);
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
    if (img)
        lsm_image_close(img);
    st->seconds = (double)(lsm_now_ns() - t0) / 1e9;
    return r < 0 ? r : 0;
}
