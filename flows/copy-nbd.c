/* NBD in the copy flow (copy-nbd.h, docs/nbd.md): the NBD endpoint opened
 * from its module, and the copy to an NBD destination.
 *
 * A destination export is never created, truncated or removed: it exists
 * on the server, the copy writes guest offsets [0, size of SRC) into it and
 * leaves the rest, and a failure leaves it incomplete (said so) but never
 * gone.  The source is opened first (an image chain read-only with QEMU's
 * shared lock, or an NBD export), then the destination; an NBD source and
 * destination naming the same URI are refused.  Exit 0 only after the
 * engine's final flush (NBD_CMD_FLUSH on every connection) succeeded. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "backends.h"
#include "config.h"
#include "copy-nbd.h"
#include "error.h"
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
    if (o->journal || o->resume)
        return lsm_error(-EINVAL, "--journal needs a destination file: %s cannot be identified "
                         "on resume", o->dst_path);
    if (o->request_size && (!is_pow2(o->request_size) || o->request_size < 4096))
        return lsm_error(-EINVAL, "request size must be a power of two of at least 4096 bytes");
    if (!strcmp(o->src_path, o->dst_path))
        return lsm_error(-EINVAL, "refusing to write %s: it is the source", o->dst_path);
    return 0;
}

int lsm_copy_nbd_dst(const struct lsm_copy_opts *o, struct lsm_copy_stats *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t t0 = lsm_now_ns();
    struct lsm_image *img = NULL;
    struct lsm_loop *loop = NULL;
    struct lsm_ep *src = NULL, *dst = NULL;
    struct lsm_engine_stats es = { 0 };
    bool written = false;      /* the engine ran: the export may be partly written */
    int r = check_opts(o);
    if (r < 0)
        return r;

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
        r = lsm_loop_create(&lc, &loop);
        enum lsm_direct_mode sdirect = o->src_direct_set ? o->src_direct : o->direct;
        if (r == 0)
            r = lsm_ep_image_create(loop, img, false, sdirect, &src);
    }
    if (r < 0)
        goto out;
    snprintf(st->io_name, sizeof(st->io_name), "%s", lsm_loop_io_name(loop));

    r = lsm_copy_open_nbd(o, loop, o->dst_path, true, &dst);
    if (r < 0)
        goto out;
    uint64_t vsize = src->caps.size;
    if (dst->caps.size < vsize) {
        r = lsm_error(-ENOSPC, "destination %s is smaller (%" PRIu64 " bytes) than %s (%" PRIu64
                      " bytes)", o->dst_path, dst->caps.size, o->src_path, vsize);
        goto out;
    }
    written = true;

    struct lsm_engine_params ep;
    lsm_copy_engine_params(o, &ep);
    ep.size = vsize;
    ep.requests = m;
    ep.request_size = rsize;
    ep.buffer_size = bsize;
    r = lsm_engine_copy(src, dst, &ep, &es);

out:
    if (r < 0 && !*lsm_last_error())
        lsm_error_errno(r, "copy failed");
    /* An export is never removed: once written to, it is incomplete. */
    if (r < 0 && written)
        st->dst_incomplete = true;
    lsm_copy_take_engine_stats(st, &es);
    lsm_loop_destroy(loop);
    lsm_ep_close(dst);
    lsm_ep_close(src);
    if (img)
        lsm_image_close(img);
    st->seconds = (double)(lsm_now_ns() - t0) / 1e9;
    return r < 0 ? r : 0;
}
