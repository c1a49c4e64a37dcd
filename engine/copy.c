/* The copy pipeline.
 *
 * One thread, one event loop: runs come from the plan (or, for a physical
 * copy, from the data extents of the physical source: the used host
 * clusters of a qcow2 layer, header cluster last); adjacent runs are
 * coalesced into requests of up to request_size bytes, each owning one
 * aligned buffer of the pool.  A request issues one asynchronous read per
 * host-contiguous piece (and reads compressed / mixed granules
 * synchronously); when its reads complete, in whatever order, its buffer is
 * checked for zeroes chunk by chunk and the non-zero runs are written at
 * once (for a qcow2 destination at host clusters from qcow2_writer_alloc).
 * Zero runs become nothing (destination already reads zeroes), holes or
 * zero clusters.  At the end: flush, then the qcow2 writer's finish.
 */
#include <assert.h>
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "config.h"
#include "copy.h"
#include "module.h"
#include "error.h"
#include "fileid.h"
#include "lock.h"
#include "qcow2/qcow2-format.h"
#include "qcow2/qcow2-writer.h"
#include "util.h"

#define DEFAULT_REQUESTS 16
#define DEFAULT_REQUEST_SIZE (1 * MiB)
#define DEFAULT_BUFFER_SIZE (32 * MiB)
#define RAW_MIN_HOLE (64 * KiB)
#define REAP_BATCH 64

/* ---- Destination ---- */

struct dst {
    const char *path;
    struct lsm_file *f;
    struct qcow2_writer *w;     /* qcow2 destination, else NULL */
    uint32_t cluster;           /* qcow2 cluster size */
    uint64_t size;              /* guest size written */
    bool reads_zero;            /* zero ranges need nothing */
    bool created;               /* this copy created the file (O_EXCL): remove on failure */
    bool fresh;                 /* empty at the start (created, or emptied after the checks) */
    bool touched;               /* checks passed: writing may have begun (for an
                                   opened qcow2, the writer knows: see lsm_copy's end) */
    bool reserved;              /* file extended ahead of the writer */
    int tail_fd;                /* buffered fd for an unaligned tail (raw) */
};

/* Host offset for writing guest [guest, guest+len): for a qcow2
 * destination, the first host-contiguous run (*mapped bytes of it, cluster
 * aligned, possibly past len at the end of the disk). */
static int dst_map(struct dst *d, uint64_t guest, uint64_t len, uint64_t *host, uint64_t *mapped)
{
    if (!d->w) {
        *host = guest;
        *mapped = len;
        return 0;
    }
    int r = qcow2_writer_alloc(d->w, guest, align_up(len, d->cluster), host, mapped);
    if (r < 0) {
        lsm_error_prefix("cannot allocate clusters in %s at guest offset %" PRIu64, d->path, guest);
        return r;
    }
    return 0;
}

static int dst_zero(struct dst *d, uint64_t guest, uint64_t len)
{
    if (d->reads_zero)
        return 0;
    int r;
    if (d->w) {
        r = qcow2_writer_zero(d->w, guest, align_up(len, d->cluster));
        if (r < 0)
            lsm_error_prefix("cannot write zero clusters in %s at offset %" PRIu64, d->path, guest);
    } else {
        r = lsm_file_zero(d->f, guest, len, true);
        if (r < 0)
            lsm_error_prefix("cannot zero %s at offset %" PRIu64, d->path, guest);
    }
    return r;
}

/* A buffered descriptor of the destination for its unaligned tail: the
 * same file reopened through /proc/self/fd (not by its path, which may lead
 * elsewhere by now) and checked to be it.  It takes no locks: those are on
 * d->f->fd, and a second set would conflict with them. */
static int dst_open_tail(struct dst *d)
{
    if (!d->f->direct) {
        d->tail_fd = dup(d->f->fd);
        if (d->tail_fd < 0)
            return lsm_error_errno(-errno, "cannot duplicate the descriptor of %s", d->path);
        return 0;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", d->f->fd);
    d->tail_fd = open(proc, O_WRONLY | O_CLOEXEC);
    if (d->tail_fd < 0)
        return lsm_error_errno(-errno, "cannot reopen %s (through %s) for buffered writes", d->path, proc);
    struct lsm_fileid a, b;
    int r = lsm_fileid_fd(d->f->fd, d->path, &a);
    if (r == 0)
        r = lsm_fileid_fd(d->tail_fd, d->path, &b);
    if (r == 0 && !lsm_fileid_same(&a, &b))
        r = lsm_error(-ESTALE, "cannot reopen %s for buffered writes: %s leads to another file", d->path, proc);
    if (r < 0) {
        close(d->tail_fd);
        d->tail_fd = -1;
    }
    return r;
}

/* Synchronous buffered write of an unaligned piece (end of a raw disk). */
static int dst_write_tail(struct dst *d, const void *buf, uint64_t len, uint64_t off)
{
    if (d->tail_fd < 0) {
        int r = dst_open_tail(d);
        if (r < 0)
            return r;
    }
    while (len) {
        ssize_t n = pwrite(d->tail_fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return lsm_error_errno(-errno, "cannot write to %s at offset %" PRIu64, d->path, off);
        if (n == 0)
            return lsm_error(-EIO, "cannot write to %s at offset %" PRIu64 ": short write", d->path, off);
        buf = (const char *)buf + n;
        len -= (uint64_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* ---- Pipeline state ---- */

struct creq;

struct ioslot {
    struct lsm_io_req req;
    struct creq *owner;
    struct ioslot *next;        /* backlog */
};

struct creq {
    uint64_t start, len;        /* guest range */
    char *buf;
    int buf_index;
    unsigned nslots, used;
    unsigned pending;
    bool writing;
    struct ioslot *slots;
    struct creq *next;          /* free list */
};

struct ctx {
    const struct lsm_copy_opts *o;
    struct lsm_copy_stats *st;
    struct lsm_copy_src *src;
    const char *src_name;
    struct dst *d;
    struct lsm_io *io;
    struct lsm_bufpool *pool;
    bool fixed;

    /* run source */
    struct lsm_plan plan;
    bool physical;              /* src is the physical source: offsets are host offsets */
    uint64_t phys_skip_before;  /* physical: bytes below this are deferred (header) */

    bool have_run;
    struct lsm_run run;
    bool runs_done;

    uint64_t granule, rsize, zchunk, min_hole;
    unsigned max_active, active;
    struct creq *reqs, *free_reqs;
    struct creq *held;          /* built, waiting for the rate limit */
    struct ioslot *backlog_head, *backlog_tail;
    unsigned in_flight;
    struct lsm_ratelimit rl;
    uint64_t rl_wait_ns;

    bool offload, offload_clone;
    int err;
};

static bool cancelled(struct ctx *c)
{
    return c->o->cancel && *c->o->cancel;
}

static int set_err(struct ctx *c, int err)
{
    if (!c->err)
        c->err = err;
    return err;
}

static int record(struct ctx *c, uint64_t start, uint64_t len)
{
    if (!c->o->record)
        return 0;
    int r = c->o->record(c->o->opaque, start, len);
    if (r < 0) {
        if (!*lsm_last_error())
            lsm_error(r, "progress recorder failed at offset %" PRIu64, start);
        return set_err(c, r);
    }
    return 0;
}

static void progress(struct ctx *c)
{
    if (c->o->progress)
        c->o->progress(c->o->opaque, c->st->bytes_done, c->st->bytes_total);
}

/* Next run of a physical copy: the physical source's data extents (host
 * clusters in use) from phys_skip_before on; the header cluster below it is
 * written last, by lsm_copy.  Runs keep the source's extent boundaries:
 * every one starts on a cluster, and only the last one (at the end of a
 * file whose size is not a multiple of the cluster) may end off it. */
static int phys_next(struct ctx *c, struct lsm_run *r)
{
    struct lsm_src_extent e;
    int ret;
    while ((ret = c->src->ops->next(c->src, &e)) > 0) {
        uint64_t host = e.start, len = e.length;
        if (e.kind != LSM_SRC_DATA || host + len <= c->phys_skip_before)
            continue;
        if (host < c->phys_skip_before) {
            len -= c->phys_skip_before - host;
            host = c->phys_skip_before;
        }
        r->start = host;
        r->length = len;
        r->kind = LSM_RUN_DATA;
        r->file = e.file;
        r->host = host;
        return 1;
    }
    return ret;
}

static int peek_run(struct ctx *c)
{
    if (c->have_run)
        return 1;
    if (c->runs_done)
        return 0;
    int r = c->physical ? phys_next(c, &c->run) : lsm_plan_next(&c->plan, &c->run);
    if (r < 0)
        return set_err(c, r);
    if (r == 0) {
        c->runs_done = true;
        return 0;
    }
    c->have_run = true;
    return 1;
}

static void take_run(struct ctx *c, uint64_t n)
{
    if (n >= c->run.length) {
        c->have_run = false;
        return;
    }
    c->run.start += n;
    c->run.length -= n;
    if (c->run.kind == LSM_RUN_DATA)
        c->run.host += n;
}

/* ---- I/O submission ---- */

static void queue_slot(struct ctx *c, struct ioslot *s)
{
    s->next = NULL;
    s->owner->pending++;
    if (c->backlog_head) {
        c->backlog_tail->next = s;
        c->backlog_tail = s;
        return;
    }
    int r = lsm_io_queue(c->io, &s->req);
    if (r == -EAGAIN) {
        c->backlog_head = c->backlog_tail = s;
        return;
    }
    if (r < 0) {
        s->owner->pending--;
        lsm_error_errno(r, "cannot queue I/O on %s", s->req.file->path);
        set_err(c, r);
        return;
    }
    c->in_flight++;
}

static void flush_backlog(struct ctx *c)
{
    while (c->backlog_head) {
        struct ioslot *s = c->backlog_head;
        int r = lsm_io_queue(c->io, &s->req);
        if (r == -EAGAIN)
            return;
        c->backlog_head = s->next;
        if (!c->backlog_head)
            c->backlog_tail = NULL;
        if (r < 0) {
            s->owner->pending--;
            lsm_error_errno(r, "cannot queue I/O on %s", s->req.file->path);
            set_err(c, r);
            continue;
        }
        c->in_flight++;
    }
}

static struct ioslot *new_slot(struct creq *q, enum lsm_io_op op, struct lsm_file *f,
                               uint64_t buf_off, uint64_t off, uint64_t len)
{
    if (q->used >= q->nslots)
        return NULL;
    struct ioslot *s = &q->slots[q->used++];
    memset(&s->req, 0, sizeof(s->req));
    s->req.op = op;
    s->req.file = f;
    s->req.buf = q->buf + buf_off;
    s->req.buf_index = q->buf_index;
    s->req.offset = off;
    s->req.len = len;
    s->req.user = s;
    s->owner = q;
    return s;
}

static void free_req(struct ctx *c, struct creq *q)
{
    if (q->buf)
        lsm_bufpool_put(c->pool, q->buf);
    q->buf = NULL;
    q->next = c->free_reqs;
    c->free_reqs = q;
    c->active--;
}

static void req_done(struct ctx *c, struct creq *q)
{
    c->st->bytes_done += q->len;
    record(c, q->start, q->len);
    free_req(c, q);
    progress(c);
}

static int emit_data(struct ctx *c, struct creq *q, uint64_t pos, uint64_t len);

static int emit_zero(struct ctx *c, struct creq *q, uint64_t pos, uint64_t len)
{
    struct dst *d = c->d;
    if (!d->w && !d->reads_zero && !is_aligned((q->start + pos) | len, d->f->offset_align))
        /* Too small or unaligned to zero on an O_DIRECT device (the end of
         * a physical copy's file, say): the buffer holds the zeroes. */
        return emit_data(c, q, pos, len);
    int r = dst_zero(d, q->start + pos, len);
    if (r < 0)
        return set_err(c, r);
    c->st->bytes_zeroed += len;
    return 0;
}

static int emit_data(struct ctx *c, struct creq *q, uint64_t pos, uint64_t len)
{
    struct dst *d = c->d;
    uint64_t wlen = d->w ? align_up(len, d->cluster) : len;
    if (wlen > len)   /* last cluster past the end of the disk */
        memset(q->buf + pos + len, 0, wlen - len);
    /* A qcow2 destination may map the range in several host-contiguous
     * pieces (clusters it already has, new ones): one write each, at most
     * one per cluster, so the slots of the request suffice. */
    while (wlen) {
        uint64_t guest = q->start + pos, host = guest, n = wlen;
        if (!c->physical) {
            int r = dst_map(d, guest, wlen, &host, &n);
            if (r < 0)
                return set_err(c, r);
        }
        uint64_t alen = align_down(n, d->f->offset_align);
        if (alen < n && !d->w) {
            /* unaligned end of a raw disk: buffered write */
            int t = dst_write_tail(d, q->buf + pos + alen, n - alen, host + alen);
            if (t < 0)
                return set_err(c, t);
            c->st->bytes_written += n - alen;
        } else {
            alen = n;
        }
        if (alen) {
            struct ioslot *s = new_slot(q, LSM_OP_WRITE, d->f, pos, host, alen);
            if (!s)
                return set_err(c, lsm_error(-EOVERFLOW, "internal: too many writes in one request"));
            queue_slot(c, s);
        }
        pos += n;
        wlen -= n;
    }
    return 0;
}

/* Reads of q are complete: detect zeroes chunk by chunk and issue the
 * writes.  Zero runs shorter than min_hole inside data are written as data
 * (large writes, unfragmented files); longer ones become holes / zero
 * clusters or nothing. */
static void start_writes(struct ctx *c, struct creq *q)
{
    q->writing = true;
    q->used = 0;
    const uint64_t none = UINT64_MAX;
    uint64_t z = c->zchunk, min_hole = c->min_hole;
    uint64_t dstart = none, zstart = none;
    for (uint64_t p = 0; p < q->len && !c->err; p += z) {
        uint64_t n = MIN(z, q->len - p);
        if (lsm_is_zero(q->buf + p, n)) {
            if (zstart == none)
                zstart = p;
            continue;
        }
        if (zstart != none) {
            if (dstart == none || p - zstart >= min_hole) {
                if (dstart != none && emit_data(c, q, dstart, zstart - dstart) < 0)
                    break;
                if (emit_zero(c, q, zstart, p - zstart) < 0)
                    break;
                dstart = p;
            }
            zstart = none;
        }
        if (dstart == none)
            dstart = p;
    }
    if (!c->err) {
        if (zstart != none && (dstart == none || q->len - zstart >= min_hole)) {
            if (dstart == none || emit_data(c, q, dstart, zstart - dstart) == 0)
                emit_zero(c, q, zstart, q->len - zstart);
        } else if (dstart != none) {
            emit_data(c, q, dstart, q->len - dstart);
        }
    }
    if (!q->pending)
        req_done(c, q);
}

/* Issue one request built from runs.  Returns 1 if a request was started,
 * 0 if nothing to do now (no run, no buffer, rate limit), <0 on error. */
static int build_request(struct ctx *c, struct creq **out)
{
    int idx;
    char *buf = lsm_bufpool_get(c->pool, &idx);
    if (!buf)
        return 0;
    struct creq *q = c->free_reqs;
    assert(q);
    c->free_reqs = q->next;
    c->active++;
    q->buf = buf;
    q->buf_index = c->fixed ? idx : -1;
    q->start = c->run.start;
    q->len = 0;
    q->used = 0;
    q->pending = 0;
    q->writing = false;

    while (q->len < c->rsize && peek_run(c) == 1 &&
           (c->run.kind == LSM_RUN_DATA || c->run.kind == LSM_RUN_MIXED) &&
           c->run.start == q->start + q->len) {
        uint64_t n = MIN(c->run.length, c->rsize - q->len);
        uint64_t bo = q->len;
        struct lsm_file *f = c->run.kind == LSM_RUN_DATA ? c->run.file : NULL;
        uint64_t an = 0;   /* bytes read asynchronously */
        if (f && is_aligned(c->run.host, f->offset_align) &&
            is_aligned((uintptr_t)(q->buf + bo), f->mem_align))
            an = align_down(n, f->offset_align);
        if (an) {
            struct ioslot *prev = q->used ? &q->slots[q->used - 1] : NULL;
            if (prev && prev->req.file == f && prev->req.offset + prev->req.len == c->run.host &&
                (char *)prev->req.buf + prev->req.len == q->buf + bo) {
                prev->req.len += an;
            } else {
                struct ioslot *s = new_slot(q, LSM_OP_READ, f, bo, c->run.host, an);
                if (!s) {
                    set_err(c, lsm_error(-EOVERFLOW, "internal: too many reads in one request"));
                    break;
                }
            }
        }
        if (an < n) {
            int r = c->src->ops->pread(c->src, q->buf + bo + an, n - an, c->run.start + an);
            if (r < 0) {
                lsm_error_prefix("cannot read %s at offset %" PRIu64, c->src_name, c->run.start + an);
                set_err(c, r);
                break;
            }
            c->st->bytes_read += n - an;
        }
        q->len += n;
        take_run(c, n);
    }
    *out = q;
    return 1;
}

static void start_request(struct ctx *c, struct creq *q)
{
    unsigned nreads = q->used;
    if (!nreads) {
        start_writes(c, q);
        return;
    }
    for (unsigned i = 0; i < nreads; i++)
        queue_slot(c, &q->slots[i]);
}

/* copy_file_range is worth it only where it is a real offload: a server-side
 * copy on a network file system.  On a local file system without reflink
 * the kernel copies through the page cache in one thread: measured on ext4
 * here, 5-19 s for 512 MiB against 0.9-1.9 s through the O_DIRECT pipeline.
 * (Reflink-capable local file systems take the clone path first.) */
static bool copy_range_offloads(int fd)
{
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0)
        return false;
    switch ((unsigned long)sf.f_type) {
    case 0x6969UL:        /* NFS */
    case 0xFE534D42UL:    /* SMB2 */
    case 0xFF534D42UL:    /* CIFS */
    case 0x00C36400UL:    /* Ceph */
    case 0x47504653UL:    /* GPFS */
        return true;
    default:
        return false;
    }
}

/* Offload up to len bytes of the current raw data run (clone, then
 * copy_file_range); returns 1 if bytes were copied, 0 if offload does not
 * apply (it is then disabled), <0 on error. */
static int try_offload(struct ctx *c, uint64_t len)
{
    struct lsm_run *r = &c->run;
    uint64_t done = 0;
    if (!r->file)
        return 0;
    if (c->offload_clone) {
        int ret = lsm_file_clone_range(r->file, r->host, c->d->f, r->start, len);
        if (ret == 0) {
            done = len;
        } else if (ret == -EXDEV || ret == -EOPNOTSUPP || ret == -EINVAL || ret == -ENOTTY ||
                   ret == -ENOSYS) {
            lsm_error_clear();
            c->offload_clone = false;
            if (!copy_range_offloads(c->d->f->fd)) {
                c->offload = false;
                return 0;
            }
        } else {
            return set_err(c, ret);
        }
    }
    while (done < len) {
        int64_t n = lsm_file_copy_range(r->file, r->host + done, c->d->f, r->start + done,
                                        len - done);
        if (n == -EXDEV || n == -EOPNOTSUPP || n == -EINVAL || n == -ENOSYS) {
            lsm_error_clear();
            c->offload = false;
            break;
        }
        if (n < 0)
            return set_err(c, (int)n);
        if (n == 0)
            return set_err(c, lsm_error(-EIO, "cannot copy %s to %s at offset %" PRIu64 ": short copy",
                                        c->src_name, c->d->path, r->start + done));
        done += (uint64_t)n;
        if (cancelled(c))
            break;
    }
    if (!done)
        return 0;
    uint64_t start = r->start;
    c->st->offload = true;
    c->st->bytes_offloaded += done;
    c->st->bytes_done += done;
    take_run(c, done);
    record(c, start, done);
    progress(c);
    return 1;
}

/* Start what can be started. */
static void fill(struct ctx *c)
{
    while (!c->err && !cancelled(c)) {
        if (c->held) {
            uint64_t wait = lsm_ratelimit_take(&c->rl, c->held->len, lsm_now_ns());
            if (wait) {
                c->rl_wait_ns = wait;
                return;
            }
            struct creq *q = c->held;
            c->held = NULL;
            start_request(c, q);
            continue;
        }
        if (c->active >= c->max_active)
            return;
        if (peek_run(c) != 1)
            return;
        struct lsm_run *r = &c->run;
        switch (r->kind) {
        case LSM_RUN_SKIP:
            c->st->bytes_skipped += r->length;
            record(c, r->start, r->length);
            c->have_run = false;
            continue;
        case LSM_RUN_ZERO: {
            int ret = dst_zero(c->d, r->start, r->length);
            if (ret < 0) {
                set_err(c, ret);
                return;
            }
            if (c->d->reads_zero)
                c->st->bytes_skipped += r->length;   /* nothing to do */
            else
                c->st->bytes_zeroed += r->length;
            record(c, r->start, r->length);
            c->have_run = false;
            continue;
        }
        default:
            break;
        }
        if (c->offload && r->kind == LSM_RUN_DATA) {
            uint64_t len = r->length;
            if (c->rl.rate) {
                len = MIN(len, c->rsize);
                uint64_t wait = lsm_ratelimit_take(&c->rl, len, lsm_now_ns());
                if (wait) {
                    c->rl_wait_ns = wait;
                    return;
                }
            }
            int ret = try_offload(c, len);
            if (ret < 0)
                return;
            if (ret > 0)
                continue;
        }
        struct creq *q = NULL;
        int ret = build_request(c, &q);
        if (ret <= 0)
            return;
        if (c->err) {
            free_req(c, q);
            return;
        }
        if (c->rl.rate) {
            c->held = q;
            continue;
        }
        start_request(c, q);
    }
}

static void complete(struct ctx *c, struct lsm_io_req *req)
{
    struct ioslot *s = req->user;
    struct creq *q = s->owner;
    c->in_flight--;
    q->pending--;
    bool rd = req->op == LSM_OP_READ;
    if (rd && req->result >= 0 && (uint64_t)req->result < req->len && c->src && !c->err) {
        /* Short read: the end of a file whose size is not a multiple of the
         * O_DIRECT alignment (or a source that shrank: src->check says so
         * at the end).  Read the rest through the reader, buffered. */
        uint64_t n = (uint64_t)req->result;
        uint64_t bo = (uint64_t)((char *)req->buf - q->buf) + n;
        int r = c->src->ops->pread(c->src, q->buf + bo, req->len - n, q->start + bo);
        if (r < 0) {
            lsm_error_prefix("cannot read %s at offset %" PRIu64, c->src_name, q->start + bo);
            set_err(c, r);
        }
        c->st->bytes_read += req->len;
    } else if (req->result < 0 || (uint64_t)req->result < req->len) {
        if (req->result < 0) {
            if (!c->err) {
                if (rd)
                    lsm_error_errno((int)req->result, "cannot read %s at offset %" PRIu64,
                                    req->file->path, req->offset);
                else
                    lsm_error_errno((int)req->result, "cannot write to %s at offset %" PRIu64,
                                    req->file->path, req->offset);
            }
            set_err(c, (int)req->result);
        } else if (req->result == 0) {
            if (!c->err) {
                if (rd)
                    lsm_error(-EIO, "cannot read %s at offset %" PRIu64 ": unexpected end of file "
                              "(did the source change size?)", req->file->path, req->offset);
                else
                    lsm_error(-EIO, "cannot write to %s at offset %" PRIu64 ": short write",
                              req->file->path, req->offset);
            }
            set_err(c, -EIO);
        } else if (!c->err) {
            /* Short transfer: issue the rest. */
            uint64_t n = (uint64_t)req->result;
            if (rd)
                c->st->bytes_read += n;
            else
                c->st->bytes_written += n;
            req->buf = (char *)req->buf + n;
            req->offset += n;
            req->len -= n;
            queue_slot(c, s);
            return;
        }
    } else if (rd) {
        c->st->bytes_read += req->len;
    } else {
        c->st->bytes_written += req->len;
    }
    if (q->pending)
        return;
    if (c->err) {
        free_req(c, q);
        return;
    }
    if (!q->writing)
        start_writes(c, q);
    else
        req_done(c, q);
}

static int run_pipeline(struct ctx *c)
{
    struct lsm_io_req *done[REAP_BATCH];
    for (;;) {
        c->rl_wait_ns = 0;
        fill(c);
        flush_backlog(c);
        if (c->in_flight) {
            int r = lsm_io_submit(c->io);
            if (r < 0 && r != -EAGAIN && r != -EINTR) {
                lsm_error_errno(r, "cannot submit I/O");
                set_err(c, r);
            }
        }
        if (!c->in_flight && !c->backlog_head) {
            if (c->err || cancelled(c))
                break;
            if (!c->held && c->runs_done && !c->have_run && !c->active)
                break;
            if (c->rl_wait_ns) {
                struct timespec ts = { (time_t)(c->rl_wait_ns / 1000000000ULL),
                                       (long)(c->rl_wait_ns % 1000000000ULL) };
                nanosleep(&ts, NULL);
                continue;
            }
            if (!c->held && !c->have_run && c->runs_done && c->active) {
                set_err(c, lsm_error(-EIO, "internal: %u requests stuck", c->active));
                break;
            }
            continue;
        }
        int n = lsm_io_reap(c->io, 1, done, REAP_BATCH);
        if (n == -EINTR)
            continue;
        if (n < 0) {
            lsm_error_errno(n, "cannot reap I/O completions");
            set_err(c, n);
            /* We cannot know what is in flight any more. */
            return c->err;
        }
        for (int i = 0; i < n; i++)
            complete(c, done[i]);
    }
    if (!c->err && cancelled(c))
        set_err(c, lsm_error(-EINTR, "interrupted"));
    if (c->held)
        free_req(c, c->held), c->held = NULL;
    return c->err;
}

/* ---- Setup ---- */

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

static int copy_bitmaps(const struct lsm_copy_opts *o, struct lsm_image *img, struct qcow2_writer *w)
{
    struct lsm_bitmap_info *bm;
    int n = lsm_qcow2_get_bitmaps(img, &bm);
    if (n < 0)
        return n;
    int r = 0;
    for (int i = 0; i < n && r == 0; i++) {
        if (bm[i].in_use) {
            warn(o, "skipping the inconsistent bitmap '%s' of %s", bm[i].name, img->filename);
            continue;
        }
        /* The destination may be larger (-n): granules past SRC stay clear. */
        uint64_t slen = lsm_bitmap_bytes(img->virtual_size, bm[i].granularity);
        uint64_t dlen = lsm_bitmap_bytes(qcow2_writer_virtual_size(w), bm[i].granularity);
        uint8_t *buf = calloc(1, MAX(dlen, slen) ? MAX(dlen, slen) : 1);
        if (!buf) {
            r = lsm_error(-ENOMEM, "out of memory for bitmap '%s'", bm[i].name);
            break;
        }
        r = lsm_qcow2_read_bitmap(img, &bm[i], buf, (size_t)slen);
        if (r == 0)
            r = qcow2_writer_add_bitmap(w, bm[i].name, (unsigned)__builtin_ctzll(bm[i].granularity),
                                        bm[i].autoload, buf, dlen);
        free(buf);
    }
    lsm_bitmaps_free(bm, n);
    return r;
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
    if (o->snapshot || o->bitmaps)
        return explain ? lsm_error(-EINVAL, "--physical copies the layer's clusters as they are: "
                                   "not with %s", o->snapshot ? "-l" : "--bitmaps") : 0;
    const struct lsm_create_opts *co = &o->create;
    if (co->qcow2_version || co->refcount_bits || co->lazy_refcounts || co->extended_l2 ||
        co->compression_type || co->prealloc || o->sparse_size)
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

static void src_close(struct lsm_copy_src *s)
{
    if (s)
        s->ops->close(s);
}

int lsm_copy(const struct lsm_copy_opts *o, struct lsm_copy_stats *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t t0 = lsm_now_ns();
    struct ctx cx = { .o = o, .st = st };
    struct ctx *c = &cx;
    struct dst d = { .path = o->dst_path, .tail_fd = -1 };
    struct lsm_image *img = NULL;
    struct lsm_copy_src *src = NULL;
    struct lsm_fileid_set srcids = { 0 };
    int r;

    unsigned m = o->requests ? o->requests : DEFAULT_REQUESTS;
    uint64_t rsize = o->request_size ? o->request_size : DEFAULT_REQUEST_SIZE;
    uint64_t budget = o->buffer_size ? o->buffer_size : DEFAULT_BUFFER_SIZE;
    if (!is_pow2(rsize) || rsize < 4096)
        return lsm_error(-EINVAL, "request size must be a power of two of at least 4096 bytes");
    if (o->dst_fmt != LSM_FMT_RAW && o->dst_fmt != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "destination format must be raw or qcow2");
    if (o->backing_fmt != LSM_FMT_AUTO && !o->backing)
        return lsm_error(-EINVAL, "a backing format (-F) needs a backing file (-B)");
    if (o->backing && o->dst_fmt != LSM_FMT_QCOW2)
        return lsm_error(-EINVAL, "a backing file (-B) needs a qcow2 destination (-O qcow2)");
    if (o->target_is_zero && !o->no_create)
        return lsm_error(-EINVAL, "--target-is-zero needs -n");

    c->src_name = o->src_path;
    if (lsm_is_nbd_uri(o->src_path)) {
        if (o->backing)
            return lsm_error(-EINVAL, "-B needs an image source: %s has no layers", o->src_path);
        if (o->physical == LSM_PHYSICAL_ALWAYS)
            return lsm_error(-EINVAL, "--physical needs a qcow2 source, not %s", o->src_path);
        if (o->snapshot)
            return lsm_error(-EINVAL, "-l needs a qcow2 source, not %s", o->src_path);
        if (o->bitmaps)
            return lsm_error(-EINVAL, "--bitmaps needs an image source: %s has no bitmaps",
                             o->src_path);
#ifdef HAVE_LIBNBD
        /* libnbd lives in a module: loaded only for NBD sources */
        typeof(&lsm_nbd_source_create) nbd_create =
            (typeof(&lsm_nbd_source_create))lsm_module_symbol("source-nbd", "lsm_nbd_source_create");
        if (!nbd_create)
            return -ENOTSUP;
        r = nbd_create(o->src_path, o->cancel, o->nbd_timeout_ms, o->nbd_timeout_ms, &src);
        if (r < 0)
            return r;
#else
        return lsm_error(-ENOTSUP, "cannot read %s: lsm-sync was built without libnbd", o->src_path);
#endif
    } else {
        r = lsm_image_open(o->src_path, o->src_fmt,
                           o->force_share ? LSM_OPEN_FORCE_SHARE : 0, &img);
        if (r < 0) {
            st->src_busy = r == -EAGAIN;
            return r;
        }
    }

    /* -l: the snapshot's view replaces the active one before anything is read. */
    if (o->snapshot && img) {
        r = lsm_qcow2_load_snapshot(img, o->snapshot, o->snapshot_key);
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
    } else if (o->physical == LSM_PHYSICAL_AUTO) {
        r = physical_applies(o, img, false);
        if (r < 0)
            goto out;
        physical = r > 0;
    }
    lsm_error_clear();
    c->physical = physical;
    st->physical = physical;

    /* The source, before anything is opened for writing: a physical source
     * validates the whole layer here, and both kinds take the stamps their
     * check compares after the copy. */
    if (physical)
        r = lsm_phys_source_create(img, o->src_direct_set ? o->src_direct : o->direct, &src);
    else if (!src)
        r = lsm_image_source_create(img, o->backing != NULL,
                                    o->src_direct_set ? o->src_direct : o->direct, &src);
    if (r < 0)
        goto out;
    c->src = src;

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

    uint64_t vsize = img ? img->virtual_size : src->size;
    if (physical && d.f->is_blockdev) {
        /* A device keeps what it held: zero runs must be written as zeroes
         * (a skipped one would leave old bytes inside a used cluster), and
         * an old header must go before the first write, so that an
         * interrupted copy is no qcow2 (ours comes last). */
        d.size = img->file_size;
        d.reads_zero = false;
        if (d.f->size < img->file_size) {
            r = lsm_error(-ENOSPC, "destination %s is smaller (%" PRIu64 " bytes) than %s (%" PRIu64 " bytes)",
                          o->dst_path, d.f->size, o->src_path, img->file_size);
            goto out;
        }
        size_t hlen;
        lsm_phys_source_header(src, &hlen);
        r = lsm_file_zero(d.f, 0, align_up(hlen, MAX(d.f->offset_align, 512u)), true);
        if (r < 0) {
            lsm_error_prefix("cannot zero the header of %s", o->dst_path);
            goto out;
        }
    } else if (physical) {
        d.size = img->file_size;
        d.reads_zero = true;
        r = lsm_file_truncate(d.f, img->file_size);
        if (r < 0)
            goto out;
    } else if (o->dst_fmt == LSM_FMT_QCOW2) {
        d.cluster = cluster;
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
            d.cluster = cluster = qcow2_writer_cluster_size(d.w);
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
        d.size = vsize;
    } else {
        d.size = vsize;
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
    c->d = &d;

    /* Runs. */
    if (physical) {
        size_t hlen;
        lsm_phys_source_header(src, &hlen);
        c->phys_skip_before = hlen;   /* header last */
        c->granule = img->cluster_size;
        /* Pre-pass: bytes to copy, known up front. */
        struct lsm_run run;
        while ((r = phys_next(c, &run)) > 0)
            st->bytes_total += run.length;
        if (r < 0)
            goto out;
        src->ops->rewind(src);
    } else {
        c->granule = d.w ? cluster : MAX(4096u, d.f->offset_align);
        /* Pre-pass: bytes to copy, known up front. */
        lsm_plan_init(&c->plan, src, c->granule, o->backing != NULL);
        struct lsm_run run;
        while ((r = lsm_plan_next(&c->plan, &run)) > 0)
            if (run.kind == LSM_RUN_DATA || run.kind == LSM_RUN_MIXED)
                st->bytes_total += run.length;
        if (r < 0)
            goto out;
        src->ops->rewind(src);
        lsm_plan_init(&c->plan, src, c->granule, o->backing != NULL);
    }

    /* A new qcow2 grows at its end: reserve the room first, because ext4
     * runs O_DIRECT writes that extend a file one at a time (measured: a
     * guest-order 8 GiB copy took 21 s against 14 s for qemu-img before
     * this).  Over-estimate (data, L2 tables, refcounts); finish trims. */
    if (d.w && d.fresh) {
        uint64_t cs = cluster, clusters = div_round_up(vsize, cs);
        uint64_t room = qcow2_writer_end(d.w) + align_up(st->bytes_total, cs) +
                        align_up(clusters * 16, cs) + align_up(clusters * 8, cs) + 16 * cs;
        if (ftruncate(d.f->fd, (off_t)room) == 0)
            d.reserved = true;
    }

    /* Pipeline resources. */
    c->rsize = MAX(align_up(rsize, c->granule), c->granule);
    /* Zero detection: per cluster for a qcow2 destination (every zero
     * cluster stays unallocated); per 4K for raw and physical copies, where
     * only zero runs of RAW_MIN_HOLE or more are left as holes. */
    if (d.w) {
        c->zchunk = c->min_hole = cluster;
    } else {
        c->zchunk = MAX(4096u, d.f->offset_align);
        c->min_hole = MAX(c->zchunk, RAW_MIN_HOLE);
    }
    if (o->sparse_size)             /* -S */
        c->min_hole = MAX(c->zchunk, align_up(o->sparse_size, c->zchunk));
    if (budget < c->rsize)
        budget = c->rsize;
    c->max_active = (unsigned)MIN((uint64_t)m, budget / c->rsize);
    if (!c->max_active)
        c->max_active = 1;
    r = lsm_bufpool_create(c->max_active * c->rsize, c->rsize, 4096, &c->pool);
    if (r < 0)
        goto out;
    struct lsm_io_config cfg = {
        .depth = MAX(2 * m, 32u),
        .fixed_buffers = true,
    };
    r = lsm_io_create(o->io_kind, &cfg, &c->io);
    if (r < 0)
        goto out;
    snprintf(st->io_name, sizeof(st->io_name), "%s", lsm_io_name(c->io));
    {
        struct iovec *iov = lsm_bufpool_iovecs(c->pool);
        if (iov) {
            c->fixed = lsm_io_register_buffers(c->io, iov, c->pool->count) == 0;
            free(iov);
        }
        lsm_error_clear();
        if (lsm_io_register_file(c->io, d.f) < 0)
            lsm_error_clear();
    }
    unsigned nslots = (unsigned)(c->rsize / MIN(c->granule, 4096) + 4);
    if (c->rsize / 512 + 4 > nslots && c->granule < 4096)
        nslots = (unsigned)(c->rsize / c->granule + 4);
    c->reqs = calloc(c->max_active, sizeof(*c->reqs));
    if (!c->reqs) {
        r = lsm_error(-ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < c->max_active; i++) {
        c->reqs[i].slots = calloc(nslots, sizeof(struct ioslot));
        if (!c->reqs[i].slots) {
            r = lsm_error(-ENOMEM, "out of memory");
            goto out;
        }
        c->reqs[i].nslots = nslots;
        c->reqs[i].next = c->free_reqs;
        c->free_reqs = &c->reqs[i];
    }
    if (o->rate)
        lsm_ratelimit_init(&c->rl, o->rate, MAX(c->rsize, o->rate / 10), lsm_now_ns());
    c->offload = o->offload && !physical && !d.w && img && img->format == LSM_FMT_RAW && !img->backing;
    c->offload_clone = c->offload;

    progress(c);
    r = run_pipeline(c);
    if (r < 0)
        goto out;

    /* Durable before success (and the source unchanged: for a physical
     * copy this also proves that the header written below is current). */
    r = src->ops->check(src);
    if (r < 0)
        goto out;
    if (!d.w) {   /* (qcow2_writer_finish flushes the data before its header) */
        r = lsm_file_sync(d.f);
        if (r < 0) {
            lsm_error_prefix("cannot flush %s", o->dst_path);
            goto out;
        }
    }
    if (d.tail_fd >= 0 && fdatasync(d.tail_fd) < 0) {
        r = lsm_error_errno(-errno, "cannot flush %s", o->dst_path);
        goto out;
    }
    if (physical) {
        /* The header cluster last: until now the file is no qcow2.  It is
         * the copy the source took when it validated the layer, and the
         * check above proved it still current. */
        size_t cs;
        const void *hdr = lsm_phys_source_header(src, &cs);
        if (is_aligned(cs, d.f->offset_align)) {   /* an aligned buffer for O_DIRECT */
            int idx;
            char *buf = lsm_bufpool_get(c->pool, &idx);
            memcpy(buf, hdr, cs);
            ssize_t n = pwrite(d.f->fd, buf, cs, 0);
            lsm_bufpool_put(c->pool, buf);
            if (n != (ssize_t)cs) {
                r = n < 0 ? lsm_error_errno(-errno, "cannot write to %s at offset 0", o->dst_path)
                          : lsm_error(-EIO, "cannot write to %s at offset 0: short write", o->dst_path);
                goto out;
            }
        } else {   /* a file smaller than its header cluster */
            r = dst_write_tail(&d, hdr, cs, 0);
            if (r < 0)
                goto out;
            if (fdatasync(d.tail_fd) < 0) {
                r = lsm_error_errno(-errno, "cannot flush %s", o->dst_path);
                goto out;
            }
        }
        st->bytes_read += cs;
        st->bytes_written += cs;
        st->bytes_done += cs;
        st->bytes_total += cs;
        r = lsm_file_sync(d.f);
        if (r < 0)
            goto out;
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
        record(c, 0, cs);
    }
    if (d.w && o->bitmaps && img) {
        r = copy_bitmaps(o, img, d.w);
        if (r < 0) {
            lsm_error_prefix("cannot copy the bitmaps of %s", o->src_path);
            goto out;
        }
    }
    if (d.w) {
        r = qcow2_writer_finish(d.w);
        if (r < 0) {
            lsm_error_prefix("cannot finish %s", o->dst_path);
            goto out;
        }
        /* Drop the room reserved for the copy (see below); past the end
         * of the image, so not needed for durability. */
        if (d.reserved && ftruncate(d.f->fd, (off_t)qcow2_writer_final_size(d.w)) < 0) {
            r = lsm_error_errno(-errno, "cannot truncate %s", o->dst_path);
            goto out;
        }
    }
    r = record(c, 0, 0);   /* everything reported so far is durable */
    progress(c);

out:
    if (r < 0 && !*lsm_last_error())
        lsm_error_errno(r, "copy failed");
    if (c->io)
        lsm_io_destroy(c->io);
    if (c->pool)
        lsm_bufpool_destroy(c->pool);
    if (c->reqs)
        for (unsigned i = 0; i < c->max_active; i++)
            free(c->reqs[i].slots);
    free(c->reqs);
    src_close(src);
    if (d.w) {
        if (qcow2_writer_changed(d.w))
            d.touched = true;
        qcow2_writer_close(d.w);
    }
    if (d.tail_fd >= 0)
        close(d.tail_fd);
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
