/* The copy pipeline, between two endpoints on one loop.
 *
 * One thread, one loop: runs come from the plan (or, for a source in host
 * order, from its data extents directly, its deferred range last); adjacent
 * runs are coalesced into requests of up to request_size bytes, each owning
 * one aligned buffer of the pool.  A request issues one read command per
 * piece that the source can read in one go (a run's cookie, contiguous;
 * mixed granules without one); when its reads complete, in whatever order,
 * its buffer is checked for zeroes chunk by chunk and the non-zero runs are
 * written at once.  Zero runs become nothing (destination already reads
 * zeroes) or zero commands.  At the end: the source's check, the deferred
 * range after a flush, then the destination's finish (durable).
 *
 * Drain point: when nothing is being issued and lsm_loop_outstanding() is
 * 0, every completed write has been delivered; a flush (or checkpoint) of
 * the destination then makes everything recorded so far durable.  The end
 * of the copy is such a point; a periodic checkpoint stops issuing
 * (fill()), lets run_pipeline drain, and does the same.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "config.h"
#include "copy.h"
#ifdef HAVE_LIBSODIUM
#include "copysum.h"
#endif
#include "error.h"
#include "journal.h"
#include "limiter.h"
#include "util.h"

#define DEFAULT_REQUESTS 16
#define DEFAULT_REQUEST_SIZE (1 * MiB)
#define DEFAULT_BUFFER_SIZE (32 * MiB)
#define DEFAULT_CHECKPOINT_BYTES (1 * GiB)
#define DEFAULT_CHECKPOINT_MS 5000

struct ctx;
struct creq;

struct slot {
    struct lsm_ep_cmd cmd;
    struct creq *owner;
    int err;                    /* salvage: the read's failure */
    struct slot *next_salvage;
};

struct creq {
    struct ctx *c;
    uint64_t start, len;        /* range of the source's address space */
    char *buf;                  /* NULL for a zero run */
    int buf_index;
    unsigned nslots, used;
    unsigned pending;
    unsigned salvaging;         /* reads waiting in ctx.salvage_q */
    bool writing;
    bool zero_run;              /* one zero command for a ZERO run */
    struct slot *slots;
    struct creq *next;          /* free list */
};

struct ctx {
    const struct lsm_engine_params *p;
    struct lsm_engine_stats *st;
    struct lsm_ep *src, *dst;
    struct lsm_loop *loop;
    struct lsm_bufpool *pool;
    bool fixed;
    uint64_t size;

    /* run source */
    struct lsm_plan plan;
    bool host_order;            /* src in host order: its data extents are the runs */
    uint64_t deferred;          /* bytes below this are copied last */
    struct lsm_ep_extent dbuf[LSM_PLAN_EXTENTS];
    unsigned dn, dnext;
    uint64_t dpos;

    bool have_run;
    struct lsm_run run;
    bool runs_done;

    uint64_t granule, rsize, zchunk, min_hole;
    unsigned max_active, active;
    struct creq *reqs, *free_reqs;
    struct creq *held;          /* built, waiting for the rate limit */
    struct lsm_limiter *lim;    /* p->limiter, or own_lim */
    struct lsm_limiter *own_lim;/* p->rate: private, under p->limiter */
    uint64_t rl_wait_ns;
    uint64_t budget_reserved;   /* buffer bytes taken from the memory budget */
    uint64_t run_zeroed;        /* bytes_zeroed by whole ZERO runs (not inside requests) */
    struct lsm_copysum *sum;    /* p->checksum */

    bool offload;               /* data runs are offered to the destination's copy_range */
    uint64_t offload_skip_end;  /* runs below this offset: pipeline only (the rest of a
                                   range the destination did not offload) */
    int err;
    char errmsg[1024];          /* the first failure's message */
    struct slot *salvage_q;     /* failed reads to read again piece by piece (p->salvage) */

    /* journal (NULL: none): see the journal_* hooks */
    struct lsm_journal *j;
    bool have_rest;
    struct lsm_run rest;        /* the rest of a run cut where the done state changes */
    bool ck_pending;            /* draining for a checkpoint */
    uint64_t ck_bytes, ck_ns;   /* bytes_done and time at the last checkpoint */
    uint64_t ck_every_bytes, ck_every_ns;
};

static bool cancelled(struct ctx *c)
{
    return c->p->cancel && *c->p->cancel;
}

/* Keep the first failure and its message (recorded just before). */
static int set_err(struct ctx *c, int err)
{
    if (!c->err) {
        c->err = err;
        snprintf(c->errmsg, sizeof(c->errmsg), "%s", lsm_last_error());
    }
    return err;
}

/* A command failed: its message is the loop's first failure (kept when it
 * failed; by delivery the thread's message may be a later one's). */
static void set_cmd_err(struct ctx *c, int err)
{
    const char *m = lsm_loop_first_error(c->loop);
    if (!c->err && m) {
        c->err = err;
        snprintf(c->errmsg, sizeof(c->errmsg), "%s", m);
    }
    set_err(c, err);
}

static void journal_record(struct ctx *c, uint64_t start, uint64_t len);

static int record(struct ctx *c, uint64_t start, uint64_t len)
{
    journal_record(c, start, len);
    if (!c->p->record)
        return 0;
    int r = c->p->record(c->p->opaque, start, len);
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
    if (!c->p->job_progress)
        return;
    const struct lsm_engine_stats *st = c->st;
    uint64_t in_data_zero = st->bytes_zeroed - MIN(c->run_zeroed, st->bytes_zeroed);
    struct lsm_job_progress jp = {
        .bytes_total = c->size,
        .bytes_written = st->bytes_done - MIN(in_data_zero, st->bytes_done),
        .bytes_zeroed = st->bytes_zeroed,
        .bytes_skipped = st->bytes_skipped,
        .bytes_redone = st->bytes_redone,   /* (within bytes_written) */
    };
    jp.bytes_done = jp.bytes_written + jp.bytes_zeroed + jp.bytes_skipped;
    if (final && jp.bytes_done < jp.bytes_total) {
        /* a copy in host order does not visit the ranges nothing uses */
        jp.bytes_skipped += jp.bytes_total - jp.bytes_done;
        jp.bytes_done = jp.bytes_total;
    }
    if (jp.bytes_total < jp.bytes_done)
        jp.bytes_total = jp.bytes_done;
    c->p->job_progress(c->p->opaque, &jp);
}

static void progress(struct ctx *c)
{
    if (c->p->progress)
        c->p->progress(c->p->opaque, c->st->bytes_done, c->st->bytes_total);
    job_progress(c, false);
}

/* The bandwidth limit: p->limiter (shared, its rate may change while we
 * run) and p->rate (a private limiter under it). */
static int limiter_setup(struct ctx *c)
{
    c->lim = c->p->limiter;
    if (c->p->rate) {
        int r = lsm_limiter_create(c->p->rate, c->p->limiter, &c->own_lim);
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

/* The checksum: the block hash of what is read, fed with each request's
 * buffer once its reads are complete and with each zero run. */
static int checksum_setup(struct ctx *c)
{
    if (!c->p->checksum)
        return 0;
#ifdef HAVE_LIBSODIUM
    /* blocks in assembly: at most the two ends of each request in flight */
    return lsm_copysum_new(c->p->checksum_alg,
                           c->p->checksum_block_size ? c->p->checksum_block_size
                                                     : LSM_BLKHASH_DEFAULT_BLOCK,
                           c->size, 2 * c->max_active + 2, &c->sum);
#else
    return lsm_error(-ENOTSUP, "--checksum: lsm-sync was built without libsodium");
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
 *   journal_checkpoint  drained: the flow's checkpoint (destination, journal)
 */

static void take_run(struct ctx *c, uint64_t n);

static void journal_record(struct ctx *c, uint64_t start, uint64_t len)
{
    if (c->j && len && lsm_journal_mark(c->j, start, len) < 0)
        set_err(c, -ENOMEM);
}

/* Data copied again after a resume: the part of [start, start+len) that
 * the interrupted run had started past its last checkpoint. */
static void journal_count_redone(struct ctx *c, uint64_t start, uint64_t len)
{
    uint64_t lo = MAX(start, c->p->redo_lo), hi = MIN(start + len, c->p->redo_hi);
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
                    c->rest.loc_off += n;
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
    return c->runs_done ? c->size : c->plan.pos;
}

/* The pipeline is drained: the flow makes everything recorded durable and
 * says so in the journal. */
static int journal_checkpoint(struct ctx *c)
{
    uint64_t t0 = lsm_now_ns();
    int r = c->p->checkpoint ? c->p->checkpoint(c->p->checkpoint_opaque, journal_frontier(c))
                             : lsm_ep_checkpoint(c->dst);
    if (r < 0) {
        if (!*lsm_last_error())
            lsm_error(r, "cannot checkpoint %s", c->dst->name);
        return set_err(c, r);
    }
    c->st->checkpoints++;
    c->ck_pending = false;
    c->ck_bytes = c->st->bytes_done;
    c->ck_ns = lsm_now_ns();
    c->st->checkpoint_seconds += (double)(c->ck_ns - t0) / 1e9;
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

/* Next run of a source in host order: its data extents from `deferred` on
 * (what is below is written last).  Runs keep the source's extent
 * boundaries: every one starts on a cluster, and only the last one (at the
 * end of a file whose size is not a multiple of the cluster) may end off
 * it. */
static int direct_next(struct ctx *c, struct lsm_run *r)
{
    for (;;) {
        if (c->dnext == c->dn) {
            if (c->dpos >= c->size)
                return 0;
            int n = lsm_ep_extents(c->src, c->dpos, c->size - c->dpos, c->dbuf, LSM_PLAN_EXTENTS);
            if (n < 0)
                return n;
            if (n == 0 || c->dbuf[0].start != c->dpos)
                return lsm_error(-EIO, "source %s: bad extents at offset %" PRIu64,
                                 c->src->name, c->dpos);
            c->dn = (unsigned)n;
            c->dnext = 0;
            c->dpos = c->dbuf[n - 1].start + c->dbuf[n - 1].length;
        }
        const struct lsm_ep_extent *e = &c->dbuf[c->dnext++];
        uint64_t start = e->start, len = e->length;
        if (e->kind != LSM_EP_DATA || start + len <= c->deferred)
            continue;
        uint64_t cut = start < c->deferred ? c->deferred - start : 0;
        r->start = start + cut;
        r->length = len - cut;
        r->kind = LSM_RUN_DATA;
        r->loc = e->loc;
        r->loc_off = e->loc_off + cut;
        return 1;
    }
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
            int r = c->host_order ? direct_next(c, &c->run) : lsm_plan_next(&c->plan, &c->run);
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
        c->run.loc_off += n;
}

/* ---- Commands ---- */

static void slot_done(struct lsm_ep_cmd *cmd);

static struct slot *new_slot(struct creq *q, enum lsm_ep_op op, uint64_t buf_off, uint64_t off,
                             uint64_t len)
{
    if (q->used >= q->nslots)
        return NULL;
    struct slot *s = &q->slots[q->used++];
    memset(&s->cmd, 0, sizeof(s->cmd));
    s->cmd.op = op;
    s->cmd.buf = q->buf ? q->buf + buf_off : NULL;
    s->cmd.buf_index = q->buf ? q->buf_index : -1;
    s->cmd.offset = off;
    s->cmd.len = len;
    s->cmd.done = slot_done;
    s->cmd.user = s;
    s->owner = q;
    return s;
}

static void submit_slot(struct ctx *c, struct lsm_ep *ep, struct slot *s)
{
    s->owner->pending++;
    int r = lsm_ep_submit(ep, &s->cmd);
    if (r < 0) {
        s->owner->pending--;
        set_err(c, r);
    }
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
    if (!q->zero_run) {
        c->st->bytes_done += q->len;
        journal_count_redone(c, q->start, q->len);
    }
    record(c, q->start, q->len);
    free_req(c, q);
    progress(c);
}

static struct creq *get_req(struct ctx *c)
{
    struct creq *q = c->free_reqs;
    assert(q);
    c->free_reqs = q->next;
    c->active++;
    q->buf = NULL;
    q->buf_index = -1;
    q->len = 0;
    q->used = 0;
    q->pending = 0;
    q->salvaging = 0;
    q->writing = false;
    q->zero_run = false;
    return q;
}

static int emit_data(struct ctx *c, struct creq *q, uint64_t pos, uint64_t len)
{
    struct slot *s = new_slot(q, LSM_EP_OP_WRITE, pos, q->start + pos, len);
    if (!s)
        return set_err(c, lsm_error(-EOVERFLOW, "internal: too many writes in one request"));
    submit_slot(c, c->dst, s);
    return c->err;
}

static int emit_zero(struct ctx *c, struct creq *q, uint64_t pos, uint64_t len)
{
    const struct lsm_ep_caps *dc = &c->dst->caps;
    if (dc->reads_zero) {
        c->st->bytes_zeroed += len;
        return 0;
    }
    if (!is_aligned((q->start + pos) | len, dc->zero_align))
        /* Too small or unaligned to zero on an O_DIRECT device (the end of
         * a physical copy's file, say): the buffer holds the zeroes. */
        return emit_data(c, q, pos, len);
    struct slot *s = new_slot(q, LSM_EP_OP_ZERO, pos, q->start + pos, len);
    if (!s)
        return set_err(c, lsm_error(-EOVERFLOW, "internal: too many zero commands in one request"));
    s->cmd.flags = LSM_EP_MAY_TRIM;
    submit_slot(c, c->dst, s);
    if (!c->err)
        c->st->bytes_zeroed += len;
    return c->err;
}

/* Issue q's writes with zero detection, chunk by chunk.  Zero runs
 * shorter than min_hole inside data are written as data (large writes,
 * unfragmented files); longer ones become zero commands (holes, zero
 * clusters) or nothing. */
static void emit_detected(struct ctx *c, struct creq *q)
{
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
                    return;
                if (emit_zero(c, q, zstart, p - zstart) < 0)
                    return;
                dstart = p;
            }
            zstart = none;
        }
        if (dstart == none)
            dstart = p;
    }
    if (c->err)
        return;
    if (zstart != none && (dstart == none || q->len - zstart >= min_hole)) {
        if (dstart == none || emit_data(c, q, dstart, zstart - dstart) == 0)
            emit_zero(c, q, zstart, q->len - zstart);
    } else if (dstart != none) {
        emit_data(c, q, dstart, q->len - dstart);
    }
}

/* Reads of q are complete: issue its writes (-S 0: every byte as data, no
 * zero detection). */
static void start_writes(struct ctx *c, struct creq *q)
{
    checksum_feed(c, q->start, q->buf, q->len);
    q->writing = true;
    q->used = 0;
    q->pending++;   /* held while issuing */
    if (c->p->allocate_all)
        emit_data(c, q, 0, q->len);
    else
        emit_detected(c, q);
    if (--q->pending)
        return;
    if (c->err)
        free_req(c, q);
    else
        req_done(c, q);
}

/* --salvage applies to this failure of a read? */
static bool salvageable(const struct ctx *c, int err)
{
    return c->p->salvage && err != -ECANCELED && err != -EINTR && err != -ENOTCONN &&
           err != -ESHUTDOWN && err != -ECONNRESET && err != -EPIPE && err != -ETIMEDOUT &&
           err != -ENOMEM;
}

static void slot_done(struct lsm_ep_cmd *cmd)
{
    struct slot *s = cmd->user;
    struct creq *q = s->owner;
    struct ctx *c = q->c;
    q->pending--;
    if (cmd->result < 0 && cmd->op == LSM_EP_OP_READ && !c->err && salvageable(c, cmd->result)) {
        /* read again by the pipeline's loop, outside this callback */
        lsm_error_clear();
        s->err = cmd->result;
        s->next_salvage = c->salvage_q;
        c->salvage_q = s;
        q->salvaging++;
        return;
    }
    if (cmd->result < 0)
        set_cmd_err(c, cmd->result);
    else if (cmd->op == LSM_EP_OP_READ)
        c->st->bytes_read += cmd->len;
    else if (cmd->op == LSM_EP_OP_WRITE)
        c->st->bytes_written += cmd->len;
    if (q->pending || q->salvaging)
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

/* One failed read of the salvage queue, again in pieces: what still fails
 * reads as zeroes, one warning per unreadable range. */
static void salvage_slot(struct ctx *c, struct slot *s)
{
    struct creq *q = s->owner;
    const struct lsm_ep_cmd *f = &s->cmd;
    uint64_t unit = MAX((uint64_t)LSM_SALVAGE_UNIT, MAX((uint64_t)c->src->caps.block_min,
                                                        (uint64_t)c->src->caps.mem_align));
    char *base = q->buf + (f->offset - q->start);
    uint64_t bad_start = 0, bad_len = 0;
    int bad_err = s->err;
    for (uint64_t d = 0; d < f->len && !c->err; ) {
        uint64_t n = MIN(unit - (f->offset + d) % unit, f->len - d);
        struct lsm_ep_cmd rd = { .op = LSM_EP_OP_READ, .buf = base + d, .buf_index = -1,
                                 .offset = f->offset + d, .len = n, .loc = f->loc,
                                 .loc_off = f->loc_off + d };
        int r = lsm_ep_run(c->src, &rd);
        if (r < 0 && !salvageable(c, r)) {
            set_err(c, r);
            break;
        }
        if (r < 0) {
            lsm_error_clear();
            memset(base + d, 0, n);
            if (bad_len && bad_start + bad_len == f->offset + d) {
                bad_len += n;
            } else {
                bad_start = f->offset + d;
                bad_len = n;
            }
            bad_err = r;
            c->st->bytes_salvaged += n;
        } else {
            c->st->bytes_read += n;
        }
        bool last = d + n == f->len;
        if (bad_len && (r == 0 || last)) {
            c->st->salvaged_ranges++;
            if (c->p->warn) {
                char msg[256];
                snprintf(msg, sizeof msg, "cannot read %s at offset %" PRIu64 " (%" PRIu64
                         " bytes): %s; copied as zeroes (--salvage)", c->src->name, bad_start,
                         bad_len, strerror(-bad_err));
                c->p->warn(c->p->opaque, msg);
            }
            bad_len = 0;
        }
        d += n;
    }
    q->salvaging--;
    if (q->pending || q->salvaging)
        return;
    if (c->err)
        free_req(c, q);
    else
        start_writes(c, q);
}

/* Read again what failed (p->salvage), one failed read at a time; a read
 * of lsm_ep_run delivers other completions meanwhile, which may queue
 * more. */
static void salvage(struct ctx *c)
{
    while (c->salvage_q) {
        struct slot *s = c->salvage_q;
        c->salvage_q = s->next_salvage;
        salvage_slot(c, s);
    }
}

/* Build one data request from runs.  Returns 1 with *out, 0 if no buffer
 * is free now. */
static int build_request(struct ctx *c, struct creq **out)
{
    int idx;
    char *buf = lsm_bufpool_get(c->pool, &idx);
    if (!buf)
        return 0;
    struct creq *q = get_req(c);
    q->buf = buf;
    q->buf_index = c->fixed ? idx : -1;
    q->start = c->run.start;

    while (q->len < c->rsize && peek_run(c) == 1 &&
           (c->run.kind == LSM_RUN_DATA || c->run.kind == LSM_RUN_MIXED ||
            (c->run.kind == LSM_RUN_ZERO && c->p->allocate_all)) &&
           c->run.start == q->start + q->len) {
        uint64_t n = MIN(c->run.length, c->rsize - q->len);
        if (c->run.kind == LSM_RUN_ZERO) {
            /* -S 0: zeroes written as data, from the buffer (no read) */
            memset(q->buf + q->len, 0, n);
            q->len += n;
            take_run(c, n);
            continue;
        }
        const void *loc = c->run.kind == LSM_RUN_DATA ? c->run.loc : NULL;
        struct slot *prev = q->used ? &q->slots[q->used - 1] : NULL;
        if (prev && prev->cmd.loc == loc && prev->cmd.offset + prev->cmd.len == c->run.start &&
            (!loc || prev->cmd.loc_off + prev->cmd.len == c->run.loc_off)) {
            prev->cmd.len += n;   /* contiguous in the source and in the buffer */
        } else {
            struct slot *s = new_slot(q, LSM_EP_OP_READ, q->len, c->run.start, n);
            if (!s) {
                set_err(c, lsm_error(-EOVERFLOW, "internal: too many reads in one request"));
                break;
            }
            s->cmd.loc = loc;
            s->cmd.loc_off = c->run.loc_off;
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
    q->pending++;   /* held while issuing */
    for (unsigned i = 0; i < nreads && !c->err; i++)
        submit_slot(c, c->src, &q->slots[i]);
    if (--q->pending)
        return;
    if (c->err)
        free_req(c, q);
    else
        start_writes(c, q);
}

/* A ZERO run on a destination that does not read as zeroes: one zero
 * command of its own (no buffer). */
static void start_zero_run(struct ctx *c)
{
    if (journal_note(c, c->run.start + c->run.length) < 0)
        return;
    struct creq *q = get_req(c);
    q->zero_run = true;
    q->writing = true;
    q->start = c->run.start;
    q->len = c->run.length;
    c->have_run = false;
    struct slot *s = new_slot(q, LSM_EP_OP_ZERO, 0, q->start, q->len);
    s->cmd.flags = LSM_EP_MAY_TRIM;
    c->st->bytes_zeroed += q->len;
    c->run_zeroed += q->len;
    checksum_feed(c, q->start, NULL, q->len);
    submit_slot(c, c->dst, s);
    if (!q->pending)
        free_req(c, q);
}

/* Offload up to len bytes of the current data run through the
 * destination's copy_range (the file endpoint's offload ladder,
 * offload/offload.h); 1 if bytes were copied, 0 if the run (or what is left
 * of it) goes through the pipeline, <0 on error.  What the destination
 * leaves of the range is copied by the pipeline without asking again
 * (offload_skip_end), over anything a failed rung wrote: offload falls back
 * per range, never for the whole copy. */
static int try_offload(struct ctx *c, uint64_t len)
{
    struct lsm_run *r = &c->run;
    if (!r->loc || r->start < c->offload_skip_end)
        return 0;
    int64_t n = c->dst->ops->copy_range(c->dst, c->src, r->start, r->loc, r->loc_off, r->start, len);
    if (n < 0)
        return set_err(c, (int)n);
    if ((uint64_t)n < len)
        c->offload_skip_end = r->start + len;
    if (n == 0)
        return 0;
    uint64_t start = r->start;
    c->st->offload = true;
    c->st->bytes_offloaded += (uint64_t)n;
    c->st->bytes_done += (uint64_t)n;
    take_run(c, (uint64_t)n);
    record(c, start, (uint64_t)n);
    progress(c);
    job_progress(c, false);
    return 1;
}

/* -C: the run at c->run is about to go through the pipeline.  (The flow
 * that made the destination adds why its offload declined, if it knows.) */
static int offload_refused(struct ctx *c)
{
    struct lsm_run *r = &c->run;
    const char *why = r->kind == LSM_RUN_MIXED || !r->loc
                          ? "the data is not contiguous in one source file"
                          : "the destination did not offload it";
    return set_err(c, lsm_error(-EOPNOTSUPP, "cannot offload %s to %s at offset %" PRIu64
                                " (-C: offload required): %s",
                                c->src->name, c->dst->name, r->start, why));
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
        case LSM_RUN_ZERO:
            if (c->p->allocate_all)
                break;   /* -S 0: a request writes the zeroes */
            if (c->dst->caps.reads_zero) {   /* nothing to do */
                c->st->bytes_skipped += r->length;
                checksum_feed(c, r->start, NULL, r->length);
                record(c, r->start, r->length);
                c->have_run = false;
                job_progress(c, false);
                continue;
            }
            start_zero_run(c);
            continue;
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
        if (c->p->offload_required) {
            offload_refused(c);
            return;
        }
        struct creq *q = NULL;
        if (build_request(c, &q) <= 0)
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

static int run_pipeline(struct ctx *c)
{
    for (;;) {
        c->rl_wait_ns = 0;
        salvage(c);
        journal_tick(c);
        fill(c);
        if (!lsm_loop_outstanding(c->loop)) {
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
        int n = lsm_loop_run(c->loop);
        if (n < 0) {
            /* We cannot know what is in flight any more. */
            set_err(c, n);
            return c->err;
        }
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

/* The source's deferred range [0, deferred): read and written after
 * everything else is durable (its check proved the source unchanged); the
 * destination's finish then makes it durable too. */
static int copy_deferred(struct ctx *c)
{
    uint64_t len = c->deferred;
    int idx;
    char *buf = lsm_bufpool_get(c->pool, &idx);
    if (!buf)
        return lsm_error(-EIO, "internal: no buffer for the deferred range");
    struct lsm_ep_cmd rd = { .op = LSM_EP_OP_READ, .buf = buf, .buf_index = c->fixed ? idx : -1,
                             .offset = 0, .len = len };
    int r = lsm_ep_run(c->src, &rd);
    if (r == 0) {
        struct lsm_ep_cmd wr = rd;
        wr.op = LSM_EP_OP_WRITE;
        r = lsm_ep_run(c->dst, &wr);
    }
    lsm_bufpool_put(c->pool, buf);
    if (r < 0)
        return r;
    /* (made durable by the destination's finish, which comes next) */
    c->st->bytes_read += len;
    c->st->bytes_written += len;
    c->st->bytes_done += len;
    c->st->bytes_total += len;
    return record(c, 0, len);
}

int lsm_engine_copy(struct lsm_ep *src, struct lsm_ep *dst, const struct lsm_engine_params *p,
                    struct lsm_engine_stats *st)
{
    memset(st, 0, sizeof(*st));
    struct ctx cx = { .p = p, .st = st, .src = src, .dst = dst, .loop = src->loop };
    struct ctx *c = &cx;
    int r;
    lsm_loop_clear_error(c->loop);

    unsigned m = p->requests ? p->requests : DEFAULT_REQUESTS;
    uint64_t rsize = p->request_size ? p->request_size : DEFAULT_REQUEST_SIZE;
    uint64_t budget = p->buffer_size ? p->buffer_size : DEFAULT_BUFFER_SIZE;
    if (!is_pow2(rsize) || rsize < 4096)
        return lsm_error(-EINVAL, "request size must be a power of two of at least 4096 bytes");
    if (src->loop != dst->loop)
        return lsm_error(-EINVAL, "internal: the source and the destination are on different loops");
    c->size = p->size ? p->size : src->caps.size;
    if (c->size > src->caps.size)
        return lsm_error(-EINVAL, "internal: copy of %" PRIu64 " bytes from a source of %" PRIu64,
                         c->size, src->caps.size);
    c->host_order = src->caps.host_order;
    c->j = p->journal;
    if (c->j && c->host_order)
        return lsm_error(-EINVAL, "a journal needs a copy in guest order: not from %s's %s endpoint",
                         src->name, src->ops->name);
    c->deferred = MIN(src->caps.deferred, c->size);
    c->granule = c->host_order ? src->caps.granule : dst->caps.granule;
    if (!is_pow2(c->granule) || !is_pow2(dst->caps.granule))
        return lsm_error(-EINVAL, "internal: granule %" PRIu64 " is not a power of two", c->granule);

    /* Pre-pass: bytes to copy, known up front. */
    struct lsm_run run;
    if (c->host_order) {
        while ((r = direct_next(c, &run)) > 0)
            st->bytes_total += run.length;
        c->dn = c->dnext = 0;
        c->dpos = 0;
    } else {
        lsm_plan_init(&c->plan, src, c->size, c->granule, p->absent_zero_mixed_is_data);
        while ((r = lsm_plan_next(&c->plan, &run)) > 0)
            if (run.kind == LSM_RUN_DATA || run.kind == LSM_RUN_MIXED ||
                (run.kind == LSM_RUN_ZERO && p->allocate_all))
                st->bytes_total += run.length -
                                   (p->journal ? journal_done_in(p->journal, run.start, run.length) : 0);
        lsm_plan_init(&c->plan, src, c->size, c->granule, p->absent_zero_mixed_is_data);
    }
    if (r < 0)
        return r;
    r = lsm_ep_expect(dst, st->bytes_total);
    if (r < 0)
        return r;

    /* Pipeline resources. */
    c->rsize = MAX(align_up(rsize, c->granule), c->granule);
    if (dst->caps.max_request && c->rsize > dst->caps.max_request)
        return lsm_error(-EINVAL, "request size %" PRIu64 " above %s's largest (%" PRIu64 ")",
                         c->rsize, dst->name, dst->caps.max_request);
    /* Zero detection: per destination granule (for qcow2 every zero
     * cluster stays unallocated); zero runs shorter than the destination's
     * hole_min inside data are written. */
    c->zchunk = dst->caps.granule;
    c->min_hole = MAX(dst->caps.hole_min, c->zchunk);
    if (p->sparse_size)             /* -S */
        c->min_hole = MAX(c->zchunk, align_up(p->sparse_size, c->zchunk));
    if (budget < c->rsize)
        budget = c->rsize;
    r = budget_take(c, MIN((uint64_t)m, budget / c->rsize) * c->rsize);
    if (r < 0)
        goto out;
    c->max_active = (unsigned)(c->budget_reserved / c->rsize);
    size_t align = MAX(4096u, MAX(src->caps.mem_align, dst->caps.mem_align));
    r = lsm_bufpool_create(c->max_active * c->rsize, c->rsize, align, &c->pool);
    if (r < 0)
        goto out;
    {
        struct iovec *iov = lsm_bufpool_iovecs(c->pool);
        if (iov) {
            c->fixed = lsm_loop_register_buffers(c->loop, iov, c->pool->count) == 0;
            free(iov);
        }
        lsm_error_clear();
    }
    uint64_t unit = MIN(MIN(c->granule, c->zchunk), 4096);
    unsigned nslots = (unsigned)(c->rsize / unit + 4);
    c->reqs = calloc(c->max_active, sizeof(*c->reqs));
    if (!c->reqs) {
        r = lsm_error(-ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < c->max_active; i++) {
        c->reqs[i].c = c;
        c->reqs[i].slots = calloc(nslots, sizeof(struct slot));
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
    /* offload copies bytes the checksum would not see */
    c->offload = p->offload && !p->checksum && dst->ops->copy_range;

    if (c->j) {
        /* Before the first write: the journal names what will be written
         * (and a qcow2 destination gets consistent metadata at once). */
        c->ck_every_bytes = p->checkpoint_bytes ? p->checkpoint_bytes : DEFAULT_CHECKPOINT_BYTES;
        c->ck_every_ns = (p->checkpoint_ms ? p->checkpoint_ms : DEFAULT_CHECKPOINT_MS) * 1000000ULL;
        r = journal_checkpoint(c);
        if (r < 0)
            goto out;
        st->checkpoints = 0;
    }
    progress(c);
    r = run_pipeline(c);
    if (r < 0)
        goto out;

    /* Durable before success, and the source unchanged (for a deferred
     * range this also proves that what is written below is current). */
    r = lsm_ep_check(src);
    if (r < 0)
        goto out;
    r = checksum_finish(c);
    if (r < 0)
        goto out;
    if (c->deferred) {
        r = lsm_ep_flush(dst);
        if (r == 0)
            r = copy_deferred(c);
        if (r < 0)
            goto out;
    }
    if (p->before_finish) {
        r = p->before_finish(p->before_finish_opaque);
        if (r < 0)
            goto out;
    }
    r = lsm_ep_finish(dst);
    if (r < 0)
        goto out;
    r = record(c, 0, 0);   /* everything reported so far is durable */
    progress(c);
    if (r == 0)
        job_progress(c, true);

out:
    if (r < 0 && c->err && c->errmsg[0])
        lsm_error(r, "%s", c->errmsg);   /* the first failure, not a later one */
    else if (r < 0 && !*lsm_last_error())
        lsm_error_errno(r, "copy failed");
    /* Nothing of ours may stay in flight past here: the buffers go. */
    while (lsm_loop_outstanding(c->loop) && lsm_loop_run(c->loop) > 0)
        ;
    if (c->held)
        free_req(c, c->held);
    if (!lsm_loop_outstanding(c->loop)) {
        if (c->pool)
            lsm_bufpool_destroy(c->pool);
        lsm_budget_release(c->budget_reserved);
    }   /* (else the pool is leaked: the kernel may still write into it) */
    lsm_limiter_free(c->own_lim);
    checksum_free(c);
    if (c->reqs)
        for (unsigned i = 0; i < c->max_active; i++)
            free(c->reqs[i].slots);
    free(c->reqs);
    return r < 0 ? r : 0;
}
