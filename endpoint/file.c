/* The file endpoint: a raw file or block device over io/.
 *
 * Reads and writes aligned to the file's O_DIRECT alignment go to the
 * loop's lsm_io asynchronously.  An unaligned piece (the end of a disk
 * whose size is not a multiple of the alignment) goes synchronously
 * through a second, buffered descriptor of the same file: reopened through
 * /proc/self/fd (not by its path, which may lead elsewhere by now) and
 * checked to be it; it takes no locks (those are on the main descriptor,
 * and a second set would conflict with them).  Zero and trim are
 * fallocate/BLKZEROOUT (lsm_file_zero), synchronous, delivered through the
 * loop.  Given an offload ladder (lsm_ep_file_set_offload) the endpoint
 * offers copy_range: each range goes down the ladder (reflink,
 * copy_file_range where that is a server-side copy, a plugin, a command;
 * offload/offload.h), and what it leaves is the pipeline's.
 *
 * Background syncs (a writable regular file on io_uring or psync): after
 * every LSM_FILE_SYNC_EVERY bytes of writes and zeroes submitted, one
 * fdatasync is queued on the loop that nothing waits for, one at a time,
 * so that the final flush finds little left to commit (the allocation of
 * the extents an O_DIRECT copy into a growing file makes, and the disk's
 * cache).  A failed one is remembered and fails the final flush: Linux
 * reports a writeback error to one fsync only.  Not on block devices (no
 * allocation to commit) nor on libaio (which runs a flush synchronously on
 * the loop's thread: it would stall the copy).  LSM_FILE_SYNC_EVERY in the
 * environment (bytes; 0: never) overrides the default, for tests and the
 * benchmark. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "backends.h"
#include "endpoint.h"
#include "error.h"
#include "fileid.h"
#include "offload.h"
#include "util.h"

#define RAW_MIN_HOLE (64 * KiB)
#define FILE_SYNC_EVERY (32ull << 20)

struct file_ep {
    struct lsm_ep ep;
    struct lsm_file *f;
    int tail_fd;              /* buffered descriptor, opened on first use */
    struct lsm_offload *ol;   /* not owned; NULL: no copy_range */
    /* Background syncs (see the top). */
    uint64_t sync_every;      /* 0: never */
    uint64_t unsynced;        /* bytes submitted since the last one started */
    bool sync_busy;           /* one in flight (sync_cmd) */
    int sync_err;             /* the first failure, reported by flush */
    struct lsm_ep_cmd sync_cmd;
};

static void bg_sync_done(struct lsm_ep_cmd *cmd)
{
    struct file_ep *fe = cmd->user;
    fe->sync_busy = false;
    if (cmd->result < 0 && !fe->sync_err)
        fe->sync_err = cmd->result;
}

/* Count len bytes submitted; start a background sync when enough are. */
static void bg_sync_account(struct lsm_ep *ep, uint64_t len)
{
    struct file_ep *fe = ep->priv;
    if (!fe->sync_every || ep->no_flush)
        return;
    fe->unsynced += len;
    if (fe->unsynced < fe->sync_every || fe->sync_busy || fe->sync_err)
        return;
    fe->unsynced = 0;
    struct lsm_ep_cmd *c = &fe->sync_cmd;
    *c = (struct lsm_ep_cmd){ .op = LSM_EP_OP_WRITE, .buf_index = -1, .done = bg_sync_done,
                              .user = fe };
    fe->sync_busy = true;
    lsm_loop_cmd_begin(ep->loop, ep, c);
    int r = lsm_loop_file_io(ep->loop, c, LSM_OP_FLUSH, fe->f, NULL, 0, 0, NULL);
    lsm_loop_cmd_put(ep->loop, c, r);
}

static int open_tail(struct file_ep *fe)
{
    struct lsm_file *f = fe->f;
    if (!f->direct) {
        fe->tail_fd = dup(f->fd);
        if (fe->tail_fd < 0)
            return lsm_error_errno(-errno, "cannot duplicate the descriptor of %s", f->path);
        return 0;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
    fe->tail_fd = open(proc, (fe->ep.caps.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fe->tail_fd < 0)
        return lsm_error_errno(-errno, "cannot reopen %s (through %s) for buffered I/O", f->path, proc);
    struct lsm_fileid a, b;
    int r = lsm_fileid_fd(f->fd, f->path, &a);
    if (r == 0)
        r = lsm_fileid_fd(fe->tail_fd, f->path, &b);
    if (r == 0 && !lsm_fileid_same(&a, &b))
        r = lsm_error(-ESTALE, "cannot reopen %s for buffered I/O: %s leads to another file",
                      f->path, proc);
    if (r < 0) {
        close(fe->tail_fd);
        fe->tail_fd = -1;
    }
    return r;
}

static int tail_write(struct file_ep *fe, const void *buf, uint64_t len, uint64_t off)
{
    if (fe->tail_fd < 0) {
        int r = open_tail(fe);
        if (r < 0)
            return r;
    }
    while (len) {
        ssize_t n = pwrite(fe->tail_fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return lsm_error_errno(-errno, "cannot write to %s at offset %" PRIu64, fe->f->path, off);
        if (n == 0)
            return lsm_error(-EIO, "cannot write to %s at offset %" PRIu64 ": short write",
                             fe->f->path, off);
        buf = (const char *)buf + n;
        len -= (uint64_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Buffered read; zeroes past the end of the file. */
static int tail_read(struct file_ep *fe, void *buf, uint64_t len, uint64_t off)
{
    if (fe->tail_fd < 0) {
        int r = open_tail(fe);
        if (r < 0)
            return r;
    }
    char *p = buf;
    while (len) {
        ssize_t n = pread(fe->tail_fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return lsm_error_errno(-errno, "cannot read %s at offset %" PRIu64, fe->f->path, off);
        if (n == 0) {
            memset(p, 0, len);
            break;
        }
        p += n;
        len -= (uint64_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int on_short(struct lsm_ep *ep, struct lsm_ep_cmd *cmd, void *buf, uint64_t len,
                    uint64_t file_off)
{
    return tail_read(ep->priv, buf, len, file_off);
}

/* The aligned front of [off, off+len) goes asynchronously, the rest
 * synchronously through the buffered descriptor. */
static int file_rw(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct file_ep *fe = ep->priv;
    struct lsm_file *f = fe->f;
    bool rd = cmd->op == LSM_EP_OP_READ;
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    uint64_t an = 0;
    if (is_aligned(cmd->offset, f->offset_align) && is_aligned((uintptr_t)cmd->buf, f->mem_align))
        an = align_down(cmd->len, f->offset_align);
    int r = 0;
    if (an)
        r = lsm_loop_file_io(ep->loop, cmd, rd ? LSM_OP_READ : LSM_OP_WRITE, f, cmd->buf, an,
                             cmd->offset, rd ? on_short : NULL);
    if (r == 0 && an < cmd->len) {
        char *p = (char *)cmd->buf + an;
        r = rd ? tail_read(fe, p, cmd->len - an, cmd->offset + an)
               : tail_write(fe, p, cmd->len - an, cmd->offset + an);
    }
    lsm_loop_cmd_put(ep->loop, cmd, r);
    if (!rd)
        bg_sync_account(ep, cmd->len);
    return 0;
}

static int file_zero(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    struct file_ep *fe = ep->priv;
    if (cmd->flags & LSM_EP_FAST_ZERO)
        return lsm_error(-ENOTSUP, "cannot zero %s fast", fe->f->path);
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    int r = 0;
    if (cmd->len) {
        r = lsm_file_zero(fe->f, cmd->offset, cmd->len,
                          cmd->op == LSM_EP_OP_TRIM || (cmd->flags & LSM_EP_MAY_TRIM));
        if (r < 0)
            lsm_error_prefix("cannot zero %s at offset %" PRIu64, fe->f->path, cmd->offset);
    }
    lsm_loop_cmd_put(ep->loop, cmd, r);
    bg_sync_account(ep, cmd->len);
    return 0;
}

static int file_flush(struct lsm_ep *ep)
{
    struct file_ep *fe = ep->priv;
    /* A background sync still in flight ends first (nothing else is). */
    while (fe->sync_busy && lsm_loop_run(ep->loop) > 0)
        ;
    if (fe->sync_busy)
        return lsm_error(-EIO, "cannot flush %s: a background sync did not end", fe->f->path);
    if (fe->sync_err) {
        /* Reported once by the kernel: keep failing every flush after it. */
        return lsm_error_errno(fe->sync_err, "cannot flush %s (a background sync failed)",
                               fe->f->path);
    }
    int r = lsm_file_sync(fe->f);
    if (r < 0) {
        lsm_error_prefix("cannot flush %s", fe->f->path);
        return r;
    }
    if (fe->tail_fd >= 0 && fdatasync(fe->tail_fd) < 0)
        return lsm_error_errno(-errno, "cannot flush %s", fe->f->path);
    return 0;
}

/* Down the ladder: the bytes it moved from the start of the range (0 to
 * len), or <0 on an error that fails the copy. */
static int64_t file_copy_range(struct lsm_ep *dst, struct lsm_ep *src, uint64_t src_off,
                               const void *loc, uint64_t loc_off, uint64_t dst_off, uint64_t len)
{
    struct file_ep *fe = dst->priv;
    if (!fe->ol || !src->ops->file_at)
        return 0;
    struct lsm_file *sf = NULL;
    uint64_t foff = 0;
    if (src->ops->file_at(src, src_off, loc, loc_off, &sf, &foff) < 0 || !sf) {
        lsm_error_clear();
        return 0;
    }
    return lsm_offload_range(fe->ol, sf, foff, fe->f, dst_off, len);
}

void lsm_ep_file_set_offload(struct lsm_ep *ep, struct lsm_offload *ol)
{
    struct file_ep *fe = ep->priv;
    fe->ol = ol;
}

static int file_file_at(struct lsm_ep *ep, uint64_t off, const void *loc, uint64_t loc_off,
                        struct lsm_file **file, uint64_t *file_off)
{
    struct file_ep *fe = ep->priv;
    *file = fe->f;
    *file_off = off;
    return 0;
}

static void file_close(struct lsm_ep *ep)
{
    struct file_ep *fe = ep->priv;
    if (fe->tail_fd >= 0)
        close(fe->tail_fd);
    free(fe);
}

static const struct lsm_ep_ops file_ops = {
    .name = "file",
    .read = file_rw,
    .write = file_rw,
    .zero = file_zero,
    .trim = file_zero,
    .flush = file_flush,
    .copy_range = file_copy_range,
    .file_at = file_file_at,
    .close = file_close,
};

int lsm_ep_file_create(struct lsm_loop *loop, struct lsm_file *f, uint64_t size, unsigned flags,
                       struct lsm_ep **out)
{
    struct file_ep *fe = calloc(1, sizeof(*fe));
    if (!fe)
        return lsm_error(-ENOMEM, "out of memory");
    fe->f = f;
    fe->tail_fd = -1;
    uint32_t g = MAX(4096u, f->offset_align);
    fe->ep = (struct lsm_ep){
        .ops = &file_ops,
        .name = f->path,
        .loop = loop,
        .priv = fe,
        .caps = {
            .size = size,
            .read_only = (flags & LSM_EP_FILE_READ_ONLY) != 0,
            .can_zero = true,
            .can_trim = true,
            .can_flush = true,
            .multi_conn = true,
            .reads_zero = (flags & LSM_EP_FILE_READS_ZERO) != 0,
            .block_min = f->offset_align,
            .block_pref = g,
            .mem_align = f->mem_align,
            .zero_align = f->offset_align,
            .granule = g,
            .hole_min = (uint32_t)MAX((uint64_t)g, RAW_MIN_HOLE),
        },
    };
    if (!fe->ep.caps.read_only && !f->is_blockdev &&
        strncmp(lsm_loop_io_name(loop), "aio", 3) != 0) {
        fe->sync_every = FILE_SYNC_EVERY;
        const char *e = getenv("LSM_FILE_SYNC_EVERY");
        if (e && *e)
            fe->sync_every = strtoull(e, NULL, 0);
    }
    if (!fe->ep.caps.read_only && lsm_loop_register_file(loop, f) < 0)
        lsm_error_clear();   /* fixed files are an optimisation */
    *out = &fe->ep;
    return 0;
}
