/* The qcow2 destination: the writer (formats/qcow2/qcow2-writer.h) as an
 * endpoint.  Guest offsets in: a write maps its clusters with
 * qcow2_writer_alloc (clusters it has are reused in place, new ones go at
 * the end of the image) and writes each host-contiguous run through the
 * loop's lsm_io; a zero makes zero clusters (metadata only, in the writer's
 * memory until it writes its tables back); finish is the writer's finish,
 * which flushes the data before its metadata and header.
 *
 * The writer needs whole clusters: a write's length is rounded up to the
 * cluster (caps.pad_writes: the last cluster of a disk whose size is not a
 * multiple of it is zero-filled in the caller's buffer). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends.h"
#include "endpoint.h"
#include "error.h"
#include "qcow2/qcow2-writer.h"
#include "util.h"

struct qcow2_ep {
    struct lsm_ep ep;
    struct qcow2_writer *w;
    struct lsm_file *f;
    uint32_t cluster;
    bool reserve;             /* new image: expect() may extend the file */
    bool reserved;            /* finish truncates to the final size */
};

static int q_write(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct qcow2_ep *qe = ep->priv;
    if (!is_aligned(cmd->offset, qe->cluster))
        return lsm_error(-EINVAL, "internal: unaligned write to %s at offset %" PRIu64,
                         ep->name, cmd->offset);
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    uint64_t len = cmd->len, wlen = align_up(len, qe->cluster);
    if (wlen > len)   /* last cluster past the end of the disk */
        memset((char *)cmd->buf + len, 0, wlen - len);
    uint64_t pos = 0;
    int r = 0;
    /* One write per host-contiguous run (clusters it already has, new ones). */
    while (wlen && r == 0) {
        uint64_t guest = cmd->offset + pos, host = 0, n = 0;
        r = qcow2_writer_alloc(qe->w, guest, wlen, &host, &n);
        if (r < 0) {
            lsm_error_prefix("cannot allocate clusters in %s at guest offset %" PRIu64, ep->name, guest);
            break;
        }
        r = lsm_loop_file_io(ep->loop, cmd, LSM_OP_WRITE, qe->f, (char *)cmd->buf + pos, n, host, NULL);
        pos += n;
        wlen -= n;
    }
    lsm_loop_cmd_put(ep->loop, cmd, r);
    return 0;
}

static int q_zero(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct qcow2_ep *qe = ep->priv;
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    int r = qcow2_writer_zero(qe->w, cmd->offset, align_up(cmd->len, qe->cluster));
    if (r < 0)
        lsm_error_prefix("cannot write zero clusters in %s at offset %" PRIu64, ep->name, cmd->offset);
    lsm_loop_cmd_put(ep->loop, cmd, r);
    return 0;
}

static int q_flush(struct lsm_ep *ep)
{
    struct qcow2_ep *qe = ep->priv;
    int r = lsm_file_sync(qe->f);
    if (r < 0)
        lsm_error_prefix("cannot flush %s", ep->name);
    return r;
}

/* A new qcow2 grows at its end: reserve the room first, because ext4 runs
 * O_DIRECT writes that extend a file one at a time (measured: a guest-order
 * 8 GiB copy took 21 s against 14 s for qemu-img before this).
 * Over-estimate (data, L2 tables, refcounts); finish trims. */
static int q_expect(struct lsm_ep *ep, uint64_t bytes)
{
    struct qcow2_ep *qe = ep->priv;
    if (!qe->reserve || qe->reserved)
        return 0;
    uint64_t cs = qe->cluster, clusters = div_round_up(ep->caps.size, cs);
    uint64_t room = qcow2_writer_end(qe->w) + align_up(bytes, cs) + align_up(clusters * 16, cs) +
                    align_up(clusters * 8, cs) + 16 * cs;
    if (ftruncate(qe->f->fd, (off_t)room) == 0)
        qe->reserved = true;
    return 0;
}

static int q_finish(struct lsm_ep *ep)
{
    struct qcow2_ep *qe = ep->priv;
    int r = qcow2_writer_finish(qe->w);   /* (flushes the data before its header) */
    if (r < 0) {
        lsm_error_prefix("cannot finish %s", ep->name);
        return r;
    }
    /* Drop the room reserved for the copy; past the end of the image, so
     * not needed for durability. */
    if (qe->reserved && ftruncate(qe->f->fd, (off_t)qcow2_writer_final_size(qe->w)) < 0)
        return lsm_error_errno(-errno, "cannot truncate %s", ep->name);
    return 0;
}

/* Flush the data, then the writer's checkpoint: its tables and refcounts
 * consistent on disk, the image still marked incomplete. */
static int q_checkpoint(struct lsm_ep *ep)
{
    struct qcow2_ep *qe = ep->priv;
    int r = q_flush(ep);
    if (r < 0)
        return r;
    r = qcow2_writer_checkpoint(qe->w);
    if (r < 0)
        lsm_error_prefix("cannot checkpoint %s", ep->name);
    return r;
}

static void q_close(struct lsm_ep *ep)
{
    free(ep->priv);
}

static const struct lsm_ep_ops qcow2_ops = {
    .name = "qcow2",
    .write = q_write,
    .zero = q_zero,
    .flush = q_flush,
    .checkpoint = q_checkpoint,
    .finish = q_finish,
    .expect = q_expect,
    .close = q_close,
};

int lsm_ep_qcow2_create(struct lsm_loop *loop, struct qcow2_writer *w, struct lsm_file *f,
                        bool reads_zero, unsigned flags, struct lsm_ep **out)
{
    struct qcow2_ep *qe = calloc(1, sizeof(*qe));
    if (!qe)
        return lsm_error(-ENOMEM, "out of memory");
    qe->w = w;
    qe->f = f;
    qe->cluster = qcow2_writer_cluster_size(w);
    qe->reserve = (flags & LSM_EP_QCOW2_RESERVE) != 0;
    qe->reserved = (flags & LSM_EP_QCOW2_TRIM) != 0;
    qe->ep = (struct lsm_ep){
        .ops = &qcow2_ops,
        .name = f->path,
        .loop = loop,
        .priv = qe,
        .caps = {
            .size = qcow2_writer_virtual_size(w),
            .can_zero = true,
            .can_fast_zero = true,
            .can_flush = true,
            .reads_zero = reads_zero,
            .block_min = qe->cluster,
            .block_pref = qe->cluster,
            .mem_align = f->mem_align,
            .zero_align = 1,
            .granule = qe->cluster,
            .hole_min = qe->cluster,
            .pad_writes = true,
        },
    };
    if (lsm_loop_register_file(loop, f) < 0)
        lsm_error_clear();   /* fixed files are an optimisation */
    *out = &qe->ep;
    return 0;
}
