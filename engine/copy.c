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
 * With a journal (docs/resume.md): checkpoints in between (drain, flush,
 * writer checkpoint, journal saved), and on resume runs the journal has
 * done are skipped; the journal_* functions are the whole of it.
 */
#include <assert.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "budget.h"
#include "cleanup.h"
#include "config.h"
#include "copy.h"
#ifdef HAVE_LIBSODIUM
#include "copysum.h"
#endif
#include "module.h"
#include "error.h"
#include "fileid.h"
#include "limiter.h"
#include "journal.h"
#include "json-util.h"
#include "lock.h"
#include "qcow2/qcow2-format.h"
#include "qcow2/qcow2-ident.h"
#include "qcow2/qcow2-writer.h"
#include "util.h"

#define DEFAULT_REQUESTS 16
#define DEFAULT_REQUEST_SIZE (1 * MiB)
#define DEFAULT_BUFFER_SIZE (32 * MiB)
#define RAW_MIN_HOLE (64 * KiB)
#define REAP_BATCH 64
#define DEFAULT_CHECKPOINT_BYTES (1 * GiB)
#define DEFAULT_CHECKPOINT_MS 5000

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
    struct lsm_limiter *lim;    /* o->limiter, or own_lim */
    struct lsm_limiter *own_lim;/* o->rate: private, under o->limiter */
    uint64_t rl_wait_ns;
    uint64_t budget_reserved;   /* buffer bytes taken from the memory budget */
    uint64_t run_zeroed;        /* bytes_zeroed by whole ZERO runs (not inside requests) */
    struct lsm_copysum *sum;    /* opts.checksum */

    bool offload;               /* data runs are offered to the ladder ol */
    struct lsm_offload *ol;
    uint64_t offload_skip_end;  /* runs below this guest offset: pipeline only */
    int err;

    /* journal (NULL: none): see the journal_* hooks */
    struct lsm_journal *j;
    struct lsm_journal_file *files;   /* identities: sources, then the destination */
    size_t nfiles;
    bool have_rest;
    struct lsm_run rest;        /* the rest of a run cut where the done state changes */
    bool ck_pending;            /* draining for a checkpoint */
    uint64_t ck_bytes, ck_ns;   /* bytes_done and time at the last checkpoint */
    uint64_t ck_every_bytes, ck_every_ns;
    bool ck_bytes_valid;        /* past the first checkpoint (the one before any write) */
    uint64_t redo_lo, redo_hi;  /* resume: [frontier, reached) of the interrupted run */
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

static void journal_record(struct ctx *c, uint64_t start, uint64_t len);

static int record(struct ctx *c, uint64_t start, uint64_t len)
{
    journal_record(c, start, len);
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

/* Progress by class for a job (lsm_copy_job_progress_fn).  st->bytes_done
 * counts data requests completed, including the zero clusters found inside
 * them, which st->bytes_zeroed counts too. */
static void job_progress(struct ctx *c, bool final)
{
    if (!c->o->job_progress)
        return;
    const struct lsm_copy_stats *st = c->st;
    uint64_t in_data_zero = st->bytes_zeroed - MIN(c->run_zeroed, st->bytes_zeroed);
    struct lsm_job_progress p = {
        .bytes_total = c->src ? c->src->size : 0,
        .bytes_written = st->bytes_done - MIN(in_data_zero, st->bytes_done),
        .bytes_zeroed = st->bytes_zeroed,
        .bytes_skipped = st->bytes_skipped,
    };
    p.bytes_done = p.bytes_written + p.bytes_zeroed + p.bytes_skipped;
    if (final && p.bytes_done < p.bytes_total) {
        /* a physical copy does not visit the host ranges nothing uses */
        p.bytes_skipped += p.bytes_total - p.bytes_done;
        p.bytes_done = p.bytes_total;
    }
    if (p.bytes_total < p.bytes_done)
        p.bytes_total = p.bytes_done;
    c->o->job_progress(c->o->opaque, &p);
}

static void progress(struct ctx *c)
{
    if (c->o->progress)
        c->o->progress(c->o->opaque, c->st->bytes_done, c->st->bytes_total);
    job_progress(c, false);
}

/* The bandwidth limit: o->limiter (shared, its rate may change while we
 * run) and o->rate (a private limiter under it). */
static int limiter_setup(struct ctx *c)
{
    c->lim = c->o->limiter;
    if (c->o->rate) {
        int r = lsm_limiter_create(c->o->rate, c->o->limiter, &c->own_lim);
        if (r < 0)
            return lsm_error(r, "cannot create a rate limiter");
        c->lim = c->own_lim;
    }
    return 0;
}

/* 0: len bytes may go now (taken); else nanoseconds to wait, at most 50 ms
 * so that a changed limit and a cancel are seen soon. */
static uint64_t limiter_wait(struct ctx *c, uint64_t len)
{
    uint64_t w = lsm_limiter_take(c->lim, len, lsm_now_ns());
    return MIN(w, 50ULL * 1000 * 1000);
}

/* The buffer pool's memory, from the process-wide budget: at least one
 * request, at most want. */
static int budget_take(struct ctx *c, uint64_t want)
{
    c->budget_reserved = lsm_budget_reserve(c->rsize, MAX(want, c->rsize), c->rsize);
    if (!c->budget_reserved) {
        uint64_t used, total;
        lsm_budget_usage(&used, &total);
        return lsm_error(-ENOMEM, "the memory budget is exhausted: %" PRIu64 " of %" PRIu64
                         " bytes in use, a copy needs at least %" PRIu64,
                         used, total, c->rsize);
    }
    return 0;
}

/* --checksum: the block hash of the guest view, fed with each request's
 * buffer once its reads are complete and with each zero run. */
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

static int checksum_setup(struct ctx *c)
{
#ifdef HAVE_LIBSODIUM
    if (!c->o->checksum)
        return 0;
    /* blocks in assembly: at most the two ends of each request in flight */
    return lsm_copysum_new(c->o->checksum_alg,
                           c->o->checksum_block_size ? c->o->checksum_block_size
                                                     : LSM_BLKHASH_DEFAULT_BLOCK,
                           c->src->size, 2 * c->max_active + 2, &c->sum);
#else
    return 0;
#endif
}

static void checksum_feed(struct ctx *c, uint64_t start, const void *buf, uint64_t len)
{
#ifdef HAVE_LIBSODIUM
    if (!c->sum || c->err)
        return;
    int r = buf ? lsm_copysum_data(c->sum, start, buf, len) : lsm_copysum_zero(c->sum, start, len);
    if (r < 0)
        set_err(c, r);
#endif
}

static int checksum_finish(struct ctx *c)
{
#ifdef HAVE_LIBSODIUM
    if (!c->sum)
        return 0;
    uint8_t d[LSM_BLKHASH_DIGEST_LEN];
    int r = lsm_copysum_final(c->sum, d);
    if (r < 0)
        return r;
    lsm_blkhash_hex(d, c->st->checksum);
    c->st->checksummed = true;
#endif
    return 0;
}

static void checksum_free(struct ctx *c)
{
#ifdef HAVE_LIBSODIUM
    lsm_copysum_free(c->sum);
#endif
    c->sum = NULL;
}

/* ---- Journal hooks (durable progress and resume) ----
 *
 * Small on purpose: the pipeline calls each at one place.
 *   journal_record      a completed range (from record())
 *   journal_skip_done   a run from the plan: cut away what the journal has done
 *   journal_note        work is about to start up to an offset
 *   journal_tick        time for a checkpoint? (then fill() starts nothing new)
 *   journal_checkpoint  drained: flush, writer checkpoint, save the journal
 */

static void take_run(struct ctx *c, uint64_t n);

static int set_err(struct ctx *c, int err);

static void journal_record(struct ctx *c, uint64_t start, uint64_t len)
{
    if (c->j && lsm_journal_mark(c->j, start, len) < 0)
        set_err(c, -ENOMEM);
}

/* Data copied again after a resume: the part of [start, start+len) that
 * the interrupted run had started past its last checkpoint. */
static void journal_count_redone(struct ctx *c, uint64_t start, uint64_t len)
{
    uint64_t lo = MAX(start, c->redo_lo), hi = MIN(start + len, c->redo_hi);
    if (lo < hi)
        c->st->bytes_redone += hi - lo;
}

/* Called with a fresh run in c->run: skip its done prefix (counted as
 * skipped, not recorded again) and cut it where the done state changes, the
 * rest kept in c->rest.  Returns true if nothing of the run is left. */
static bool journal_skip_done(struct ctx *c)
{
    while (c->have_run) {
        uint64_t end;
        bool done = lsm_journal_done_at(c->j, c->run.start, &end);
        uint64_t n = MIN(end - c->run.start, c->run.length);
        if (!done) {
            if (n < c->run.length) {
                c->rest = c->run;
                c->rest.start += n;
                c->rest.length -= n;
                if (c->rest.kind == LSM_RUN_DATA)
                    c->rest.host += n;
                c->have_rest = true;
                c->run.length = n;
            }
            return false;
        }
        c->st->bytes_skipped += n;
        c->st->bytes_already_done += n;
        take_run(c, n);
    }
    return true;
}

static int journal_note(struct ctx *c, uint64_t end)
{
    if (!c->j)
        return 0;
    int r = lsm_journal_note_reached(c->j, end);
    return r < 0 ? set_err(c, r) : 0;
}

static void journal_tick(struct ctx *c)
{
    if (!c->j || c->ck_pending)
        return;
    if (c->st->bytes_done - c->ck_bytes >= c->ck_every_bytes ||
        lsm_now_ns() - c->ck_ns >= c->ck_every_ns)
        c->ck_pending = true;
}

/* Where the plan stands: everything below is done or recorded. */
static uint64_t journal_frontier(struct ctx *c)
{
    if (c->have_run)
        return c->run.start;
    if (c->have_rest)
        return c->rest.start;
    return c->runs_done ? c->d->size : c->plan.pos;
}

/* The destination's identity as this checkpoint leaves it. */
static int journal_dst_ident(struct ctx *c, struct lsm_journal_file *f)
{
    struct stat sb;
    if (fstat(c->d->f->fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", c->d->path);
    f->dev = S_ISBLK(sb.st_mode) ? (uint64_t)sb.st_rdev : (uint64_t)sb.st_dev;
    f->ino = S_ISBLK(sb.st_mode) ? 0 : (uint64_t)sb.st_ino;
    f->mtime_ns = -1;       /* written after every checkpoint */
    f->has_hash = f->has_hash_next = false;
    /* A qcow2 grows past its checkpoint: its header and L1 say what the
     * checkpoint left (qcow2-ident.h); a raw file keeps its size. */
    f->size = c->d->w ? 0 : (S_ISBLK(sb.st_mode) ? c->d->f->size : (uint64_t)sb.st_size);
    if (c->d->w) {
        int r = qcow2_ident_hash(c->d->f->fd, &f->hash);
        if (r < 0)
            return r;
        f->has_hash = r > 0;
    }
    return 0;
}

/* Test hook: LSM_TEST_CHECKPOINT_KILL=N:WHERE kills the process with
 * SIGKILL at the N-th checkpoint (1 = the first after the one before any
 * write), WHERE "writer" right after the qcow2 writer's checkpoint (the
 * journal not yet updated) or "save" right after the journal is saved
 * (tests/functional/resume.sh). */
static void journal_test_kill(struct ctx *c, const char *where)
{
    const char *e = getenv("LSM_TEST_CHECKPOINT_KILL");
    char *colon;
    if (!e || !(colon = strchr(e, ':')) || strcmp(colon + 1, where))
        return;
    if (strtoul(e, NULL, 10) == c->st->checkpoints + 1 && c->j->saved && c->ck_bytes_valid)
        raise(SIGKILL);
}

/* The pipeline is drained: make everything recorded durable, then say so. */
static int journal_checkpoint(struct ctx *c)
{
    uint64_t t0 = lsm_now_ns();
    struct dst *d = c->d;
    int r = lsm_file_sync(d->f);
    if (r < 0) {
        lsm_error_prefix("cannot flush %s", d->path);
        return set_err(c, r);
    }
    if (d->tail_fd >= 0 && fdatasync(d->tail_fd) < 0)
        return set_err(c, lsm_error_errno(-errno, "cannot flush %s", d->path));
    struct lsm_journal_file *df = &c->files[c->nfiles - 1];
    if (d->w && c->j->saved) {
        /* A kill while the writer writes its metadata leaves the image at
         * this checkpoint or the last one: the journal (still with the
         * last one's done ranges) accepts both. */
        r = qcow2_writer_checkpoint_hash(d->w, &df->hash_next);
        df->has_hash_next = r == 0;
        if (r == 0)
            r = lsm_journal_set_files(c->j, c->files, c->nfiles);
        if (r == 0)
            r = lsm_journal_save(c->j);
        if (r < 0) {
            lsm_error_prefix("cannot checkpoint %s", d->path);
            return set_err(c, r);
        }
    }
    if (d->w) {
        r = qcow2_writer_checkpoint(d->w);
        if (r < 0) {
            lsm_error_prefix("cannot checkpoint %s", d->path);
            return set_err(c, r);
        }
        journal_test_kill(c, "writer");
    }
    lsm_journal_commit(c->j);       /* what was recorded is durable now */
    r = journal_dst_ident(c, df);
    if (r == 0)
        r = lsm_journal_set_files(c->j, c->files, c->nfiles);
    if (r < 0)
        return set_err(c, r);
    c->j->frontier = journal_frontier(c);
    r = lsm_journal_save(c->j);
    if (r < 0)
        return set_err(c, r);
    journal_test_kill(c, "save");
    c->st->checkpoints++;
    c->ck_pending = false;
    c->ck_bytes = c->st->bytes_done;
    c->ck_ns = lsm_now_ns();
    c->st->checkpoint_seconds += (double)(c->ck_ns - t0) / 1e9;
    return 0;
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
    for (;;) {
        if (c->have_run)
            return 1;
        if (c->have_rest) {
            c->run = c->rest;
            c->have_rest = false;
        } else {
            if (c->runs_done)
                return 0;
            int r = c->physical ? phys_next(c, &c->run) : lsm_plan_next(&c->plan, &c->run);
            if (r < 0)
                return set_err(c, r);
            if (r == 0) {
                c->runs_done = true;
                return 0;
            }
        }
        c->have_run = true;
        if (!c->j || !journal_skip_done(c))
            return 1;
    }
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
    journal_count_redone(c, q->start, q->len);
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
    if (d->w && qcow2_writer_compressing(d->w)) {   /* -c: the writer compresses and writes */
        int r = qcow2_writer_write_compressed(d->w, q->start + pos, q->buf + pos, wlen);
        if (r < 0) {
            lsm_error_prefix("cannot write compressed clusters in %s at guest offset %" PRIu64, d->path, q->start + pos);
            return set_err(c, r);
        }
        c->st->bytes_written += wlen;
        return 0;
    }
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
    checksum_feed(c, q->start, q->buf, q->len);
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

/* Offload up to len bytes of the current data run through the ladder
 * (offload/offload.c); returns 1 if bytes were copied, 0 if the run (or
 * what is left of it) goes through the pipeline, <0 on error.  Whatever
 * the ladder leaves of the range is copied by the pipeline without asking
 * the ladder again (offload_skip_end), over anything a failed rung wrote. */
static int try_offload(struct ctx *c, uint64_t len)
{
    struct lsm_run *r = &c->run;
    if (!r->file || r->start < c->offload_skip_end)
        return 0;
    int64_t n = lsm_offload_range(c->ol, r->file, r->host, c->d->f, r->start, len);
    if (n < 0)
        return set_err(c, (int)n);
    if ((uint64_t)n < len)
        c->offload_skip_end = r->start + len;
    if (!n)
        return 0;
    uint64_t start = r->start, done = (uint64_t)n;
    c->st->offload = true;
    c->st->bytes_offloaded += done;
    c->st->bytes_done += done;
    take_run(c, done);
    record(c, start, done);
    progress(c);
    job_progress(c, false);
    return 1;
}

/* -C: the run at c->run is about to go through the pipeline. */
static int offload_refused(struct ctx *c)
{
    struct lsm_run *r = &c->run;
    const char *why = c->ol && *lsm_offload_reason(c->ol) ? lsm_offload_reason(c->ol)
                      : r->kind == LSM_RUN_MIXED || !r->file
                          ? "the data is not contiguous in one source file"
                          : "no offload applies";
    return set_err(c, lsm_error(-EOPNOTSUPP, "cannot offload %s to %s at offset %" PRIu64
                                " (-C: offload required): %s",
                                c->src_name, c->d->path, r->start, why));
}

/* Start what can be started. */
static void fill(struct ctx *c)
{
    while (!c->err && !cancelled(c)) {
        if (c->held) {
            uint64_t wait = limiter_wait(c, c->held->len);
            if (wait) {
                c->rl_wait_ns = wait;
                return;
            }
            struct creq *q = c->held;
            c->held = NULL;
            start_request(c, q);
            continue;
        }
        if (c->ck_pending || c->active >= c->max_active)
            return;
        if (peek_run(c) != 1)
            return;
        struct lsm_run *r = &c->run;
        switch (r->kind) {
        case LSM_RUN_SKIP:
            c->st->bytes_skipped += r->length;
            record(c, r->start, r->length);
            c->have_run = false;
            job_progress(c, false);
            continue;
        case LSM_RUN_ZERO: {
            if (journal_note(c, r->start + r->length) < 0)
                return;
            int ret = dst_zero(c->d, r->start, r->length);
            if (ret < 0) {
                set_err(c, ret);
                return;
            }
            if (c->d->reads_zero)
                c->st->bytes_skipped += r->length;   /* nothing to do */
            else {
                c->st->bytes_zeroed += r->length;
                c->run_zeroed += r->length;
            }
            checksum_feed(c, r->start, NULL, r->length);   /* (reads as zero either way) */
            record(c, r->start, r->length);
            c->have_run = false;
            job_progress(c, false);
            continue;
        }
        default:
            break;
        }
        if (c->offload && r->kind == LSM_RUN_DATA) {
            uint64_t len = r->length;
            if (c->lim) {
                len = MIN(len, c->rsize);
                uint64_t wait = limiter_wait(c, len);
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
        if (c->o->offload_required) {
            offload_refused(c);
            return;
        }
        struct creq *q = NULL;
        int ret = build_request(c, &q);
        if (ret <= 0)
            return;
        if (!c->err)
            journal_note(c, q->start + q->len);
        if (c->err) {
            free_req(c, q);
            return;
        }
        if (c->lim) {
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
        journal_tick(c);
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
            if (c->ck_pending && !c->active && !c->held) {
                if (journal_checkpoint(c) < 0)
                    break;
                continue;
            }
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
    if (c->held)
        free_req(c, c->held), c->held = NULL;
    if (!c->err && cancelled(c)) {
        /* Drained: what completed is made durable, so that a resume redoes
         * nothing (a failed checkpoint is the error then). */
        if (c->j && c->j->saved && !c->active)
            journal_checkpoint(c);
        if (!c->err)
            set_err(c, lsm_error(-EINTR, "interrupted"));
    }
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

/* ---- Journal set-up ---- */

/* What a resume must find unchanged besides the files: the job's shape. */
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
    return j;
}

/* -ESTALE naming the first option that differs. */
static int journal_check_options(json_object *want, json_object *have)
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
 * destination (filled at each checkpoint). */
static int journal_src_idents(struct lsm_image *img, struct lsm_journal_file **out, size_t *nout)
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

/* Data bytes of [start, start+len) the journal has done. */
static uint64_t journal_done_in(const struct lsm_journal *j, uint64_t start, uint64_t len)
{
    uint64_t n = 0, end = start + len;
    while (start < end) {
        uint64_t e;
        bool done = lsm_journal_done_at(j, start, &e);
        e = MIN(MAX(e, start + 1), end);
        if (done)
            n += e - start;
        start = e;
    }
    return n;
}

static void src_close(struct lsm_copy_src *s)
{
    if (s)
        s->ops->close(s);
}

/* The destination is open, the plan set: a new journal, or the loaded one
 * checked against this job (options, then every file).  Takes jl. */
static int journal_setup(struct ctx *c, struct lsm_image *img, struct lsm_journal *jl,
                         uint32_t cluster)
{
    const struct lsm_copy_opts *o = c->o;
    struct dst *d = c->d;
    if (jl && jl->options) {
        /* A resumed destination reads as zero where the first run found it so. */
        json_object *rz;
        if (json_object_object_get_ex(jl->options, "reads_zero", &rz) &&
            json_object_is_type(rz, json_type_boolean))
            d->reads_zero = json_object_get_boolean(rz);
    }
    json_object *opts = journal_options(o, c->granule, d->size, cluster, d->reads_zero);
    if (!opts) {
        lsm_journal_free(jl);
        return lsm_error(-ENOMEM, "out of memory");
    }
    int r = journal_src_idents(img, &c->files, &c->nfiles);
    if (r == 0)
        r = journal_dst_ident(c, &c->files[c->nfiles - 1]);
    if (r == 0) {
        free(c->files[c->nfiles - 1].path);
        c->files[c->nfiles - 1].path = strdup(d->path);
    }
    if (r < 0) {
        json_object_put(opts);
        lsm_journal_free(jl);
        return r;
    }
    if (!jl) {
        r = lsm_journal_new(o->journal, d->size, c->granule, opts, &c->j);
        return r;
    }
    c->j = jl;
    r = journal_check_options(opts, jl->options);
    json_object_put(opts);
    if (r == 0)
        r = lsm_journal_check_files(jl, c->files, c->nfiles);
    if (r < 0) {
        lsm_error_prefix("cannot resume from %s", o->journal);
        return r;
    }
    c->redo_lo = jl->frontier;
    c->redo_hi = jl->reached;
    /* bytes_total: what is left to copy */
    struct lsm_plan p;
    struct lsm_run run;
    uint64_t left = 0;
    lsm_plan_init(&p, c->src, c->granule, o->backing != NULL);
    while ((r = lsm_plan_next(&p, &run)) > 0)
        if (run.kind == LSM_RUN_DATA || run.kind == LSM_RUN_MIXED)
            left += run.length - journal_done_in(jl, run.start, run.length);
    if (r < 0)
        return r;
    c->st->bytes_total = left;
    c->src->ops->rewind(c->src);
    lsm_plan_init(&c->plan, c->src, c->granule, o->backing != NULL);
    /* finish trims what the interrupted run left past the image's end */
    if (d->w && !d->f->is_blockdev)
        d->reserved = true;
    return 0;
}

static int journal_first_checkpoint(struct ctx *c)
{
    const struct lsm_copy_opts *o = c->o;
    c->ck_every_bytes = o->checkpoint_bytes ? o->checkpoint_bytes : DEFAULT_CHECKPOINT_BYTES;
    c->ck_every_ns = (o->checkpoint_ms ? o->checkpoint_ms : DEFAULT_CHECKPOINT_MS) * 1000000ULL;
    uint64_t frontier = c->j->frontier, reached = c->j->reached;
    int r = journal_checkpoint(c);
    if (r < 0)
        return r;
    if (o->resume && (frontier || reached)) {
        /* Keep the interrupted run's window: its work past the frontier is
         * what this run redoes. */
        c->j->frontier = frontier;
        r = lsm_journal_save(c->j);
        if (r == 0)
            r = lsm_journal_note_reached(c->j, reached);
        if (r < 0)
            return set_err(c, r);
    }
    c->st->checkpoints = 0;
    c->ck_bytes_valid = true;
    return 0;
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
    if ((r = checksum_check_opts(o)) < 0)
        return r;
    /* A resume writes into the destination the journal names: never
     * created, never emptied. */
    bool no_create = o->no_create || o->resume;
    struct lsm_journal *jl = NULL;
    if (o->resume && !o->journal)
        return lsm_error(-EINVAL, "--resume needs --journal");
    if (o->journal) {
        if (lsm_is_nbd_uri(o->src_path))
            return lsm_error(-EINVAL, "--journal needs an image source: %s cannot be identified "
                             "on resume", o->src_path);
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
            r = journal_check_options(early, jl->options);
            json_object_put(early);
            if (r < 0) {
                lsm_journal_free(jl);
                lsm_error_prefix("cannot resume from %s", o->journal);
                return r;
            }
        }
    }

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
            lsm_journal_free(jl);
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
    } else if (o->physical == LSM_PHYSICAL_AUTO && !o->checksum && !o->journal) {
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
        if (no_create) {
            /* Nothing is written before the writer's first change
             * (qcow2_writer_changed), so its refusals leave DST as it was. */
            d.touched = false;
            r = o->resume ? qcow2_writer_resume(d.f->fd, d.f->offset_align, &d.w)
                          : qcow2_writer_open(d.f->fd, d.f->offset_align, &d.w);
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
        d.size = vsize;
    } else {
        d.size = vsize;
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
    if (o->journal) {
        r = journal_setup(c, img, jl, cluster);
        jl = NULL;
        if (r < 0)
            goto out;
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
    r = budget_take(c, MIN((uint64_t)m, budget / c->rsize) * c->rsize);
    if (r < 0)
        goto out;
    c->max_active = (unsigned)(c->budget_reserved / c->rsize);
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
    r = limiter_setup(c);
    if (r < 0)
        goto out;
    r = checksum_setup(c);
    if (r < 0)
        goto out;
    {
        /* Any source whose data runs sit contiguously in a layer file
         * (raw, qcow2 without compression, a chain) to a raw destination;
         * not with a checksum (it hashes what the pipeline reads) or a
         * journal (it records what the pipeline wrote). */
        struct lsm_offload_opts oo = {
            .mode = o->offload_mode ? o->offload_mode
                                    : o->offload ? LSM_OFFLOAD_AUTO : LSM_OFFLOAD_NEVER,
            .name = o->offload_name,
            .command = o->offload_cmd,
            .command_timeout_s = o->offload_timeout_s,
            .cancel = o->cancel,
        };
        bool can = !physical && !d.w && !o->checksum && !c->j;
        if (o->offload_required && (!can || oo.mode == LSM_OFFLOAD_NEVER)) {
            r = lsm_error(-EOPNOTSUPP, "cannot offload %s to %s (-C: offload required): %s",
                          c->src_name, o->dst_path,
                          oo.mode == LSM_OFFLOAD_NEVER ? "--offload=never"
                          : physical ? "a physical copy is not offloaded"
                          : d.w      ? "only raw destinations are offloaded"
                          : o->checksum ? "--checksum reads every byte"
                                        : "--journal is not combined with offload");
            goto out;
        }
        if (oo.mode != LSM_OFFLOAD_NEVER && can) {
            r = lsm_offload_create(&oo, &c->ol);
            if (r < 0)
                goto out;
            c->offload = c->ol != NULL;
        }
    }

    if (c->j) {
        /* Before the first write: the journal names what it will write
         * (a qcow2 destination gets consistent metadata at once). */
        r = journal_first_checkpoint(c);
        if (r < 0)
            goto out;
    }
    progress(c);
    r = run_pipeline(c);
    if (r < 0)
        goto out;

    /* Durable before success (and the source unchanged: for a physical
     * copy this also proves that the header written below is current). */
    r = src->ops->check(src);
    if (r < 0)
        goto out;
    r = checksum_finish(c);
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
    if (r == 0)
        job_progress(c, true);
    if (r == 0 && c->j)
        lsm_journal_remove(c->j);   /* the job is complete: only the file we saved */

out:
    if (r < 0 && !*lsm_last_error())
        lsm_error_errno(r, "copy failed");
    if (c->ol) {
        struct lsm_offload_counts oc;
        lsm_offload_get_counts(c->ol, &oc);
        st->bytes_reflinked = oc.reflink;
        st->bytes_copy_range = oc.copy_range;
        st->bytes_plugin = oc.plugin;
        st->bytes_offload_cmd = oc.command;
        snprintf(st->offload_plugin, sizeof st->offload_plugin, "%s", oc.plugin_name);
        snprintf(st->offload_fallback, sizeof st->offload_fallback, "%.255s", oc.first_fallback);
        lsm_offload_free(c->ol);
        c->ol = NULL;
    }
    if (c->io)
        lsm_io_destroy(c->io);
    if (c->pool)
        lsm_bufpool_destroy(c->pool);
    lsm_budget_release(c->budget_reserved);
    lsm_limiter_free(c->own_lim);
    checksum_free(c);
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
    if (r < 0 && c->j && c->j->saved) {
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
    lsm_journal_free(c->j);
    lsm_journal_free(jl);
    if (c->files)
        for (size_t i = 0; i < c->nfiles; i++)
            lsm_journal_file_clear(&c->files[i]);
    free(c->files);
    if (img)
        lsm_image_close(img);
    st->seconds = (double)(lsm_now_ns() - t0) / 1e9;
    return r < 0 ? r : 0;
}
