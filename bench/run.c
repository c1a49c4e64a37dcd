#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backends.h"
#include "cleanup.h"
#include "config.h"
#include "endpoint.h"
#include "error.h"
#include "io.h"
#include "jobfile.h"
#include "module.h"
#include "pattern.h"
#include "prng.h"
#include "run.h"
#include "util.h"

#define LAYOUT_CHUNK (1u << 20)

/* ---- Preparing files ---- */

static int file_size_of(const char *path, bool *exists, bool *blockdev, uint64_t *size)
{
    struct stat st;
    *exists = *blockdev = false;
    *size = 0;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return lsm_error_errno(-errno, "cannot stat %s", path);
    }
    *exists = true;
    if (S_ISBLK(st.st_mode)) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return lsm_error_errno(-errno, "cannot open %s", path);
        if (ioctl(fd, BLKGETSIZE64, size) < 0)
            return lsm_error_errno(-errno, "cannot get the size of %s", path);
        *blockdev = true;
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return lsm_error(-EINVAL, "%s is neither a regular file nor a block device", path);
    *size = (uint64_t)st.st_size;
    return 0;
}

/* Write [from, size) of path with the verify pattern of block size bs,
 * so that reads find real data (and verify=pattern can check it). */
static int layout(const char *path, uint64_t from, uint64_t size, uint64_t bs, uint64_t seed)
{
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot create %s", path);
    uint64_t chunk = bs >= LAYOUT_CHUNK ? bs : LAYOUT_CHUNK / bs * bs;
    _cleanup_free_ unsigned char *buf = malloc(chunk);
    if (!buf)
        return lsm_error(-ENOMEM, "out of memory for a %" PRIu64 "-byte layout buffer", chunk);
    from = from / bs * bs;
    for (uint64_t off = from; off < size;) {
        uint64_t n = MIN(chunk, size - off);
        for (uint64_t b = 0; b < n; b += bs)
            bench_pattern_fill(buf + b, MIN(bs, n - b), off + b, seed);
        ssize_t w = pwrite(fd, buf, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return lsm_error_errno(-errno, "cannot lay out %s at offset %" PRIu64, path, off);
        }
        off += (uint64_t)w;
    }
    if (fsync(fd) < 0)
        return lsm_error_errno(-errno, "cannot sync %s", path);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    return 0;
}

/* Make a file to be written exist with size bytes allocated. */
static int preallocate(const char *path, uint64_t size)
{
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot create %s", path);
    int r = posix_fallocate(fd, 0, (off_t)size);
    if (r != 0 && ftruncate(fd, (off_t)size) < 0)
        return lsm_error_errno(-errno, "cannot extend %s to %" PRIu64 " bytes", path, size);
    return 0;
}

/* Size and preparation of one file; reads says whether the job reads it. */
static int prepare_file(const struct bench_job *job, const char *path, bool reads,
                        uint64_t want, uint64_t *size, struct bench_prep *prep)
{
    bool exists, blockdev;
    uint64_t have;
    int r = file_size_of(path, &exists, &blockdev, &have);
    if (r < 0)
        return r;
    if (want == 0) {
        if (!exists)
            return lsm_error(-ENOENT, "%s does not exist: give size= to create it", path);
        if (have == 0)
            return lsm_error(-EINVAL, "%s is empty: give size= to fill it", path);
        want = have;
    }
    if (blockdev) {
        if (want > have)
            return lsm_error(-EINVAL, "size %" PRIu64 " is larger than %s (%" PRIu64 " bytes)",
                             want, path, have);
    } else if (!exists || have < want) {
        if (reads) {
            if ((r = layout(path, exists ? have : 0, want, job->bs, job->randseed)) < 0)
                return r;
            prep->laid_out = true;
        } else {
            if ((r = preallocate(path, want)) < 0)
                return r;
            prep->created = true;
        }
    }
    *size = want;
    return 0;
}

/* A block device the job writes: hold it with O_EXCL (see run.h).  Regular
 * files and paths that do not exist yet are not claimed; anything else is
 * refused later by prepare_file(). */
static int claim_written(const struct bench_job *job, const char *path, struct bench_prep *prep)
{
    if (job->allow_mounted_write)
        return 0;
    /* O_NONBLOCK: a FIFO or a tty at that path must not block this open;
     * O_EXCL without O_CREAT is meaningful for block devices only. */
    _cleanup_close_ int fd = open(path, O_RDONLY | O_EXCL | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        if (errno == EBUSY)
            return lsm_error(-EBUSY, "%s is mounted or held by another program (exclusive "
                             "open: device busy); refusing to write to it "
                             "(allow_mounted_write=1 to write anyway)", path);
        return lsm_error_errno(-errno, "cannot open %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", path);
    if (!S_ISBLK(st.st_mode))
        return 0;
    if (prep->nclaims == sizeof prep->claim_fd / sizeof prep->claim_fd[0])
        return lsm_error(-EINVAL, "too many devices in one job");
    prep->claim_fd[prep->nclaims++] = fd;
    fd = -1;
    return 0;
}

void bench_prep_release(struct bench_prep *prep)
{
    while (prep->nclaims)
        close(prep->claim_fd[--prep->nclaims]);
}

/* ---- NBD exports (filename=nbd://..., or ioengine=nbd uri=...) ----
 *
 * The job's requests go through the NBD endpoint (endpoint/nbd.c, the
 * module lsm-endpoint-nbd) and its loop, as a copy's do: asynchronous
 * reads and writes, iodepth of them in flight, spread over the
 * connections the server allows.  An export is never created, laid out or
 * resized: the job works on [offset, offset + size) of what is there. */

static int nbd_open(struct lsm_loop *loop, const char *uri, bool writable, unsigned depth,
                    volatile sig_atomic_t *cancel, struct lsm_ep **out)
{
#ifdef HAVE_LIBNBD
    typeof(&lsm_ep_nbd_open) open_fn =
        (typeof(&lsm_ep_nbd_open))lsm_module_symbol("endpoint-nbd", "lsm_ep_nbd_open");
    if (!open_fn)
        return -ENOTSUP;
    struct lsm_ep_nbd_opts no = {
        .uri = uri,
        .writable = writable,
        .reads_zero = writable,     /* never asked: the job writes what it writes */
        .connections = depth < LSM_NBD_CONNECTIONS ? depth : 0,
        .retries = 0,               /* a benchmark reports errors, it does not hide them */
        .cancel = cancel,
    };
    return open_fn(loop, &no, out);
#else
    (void)loop;
    (void)writable;
    (void)depth;
    (void)cancel;
    (void)out;
    return lsm_error(-ENOTSUP, "cannot open %s: lsm-sync was built without libnbd", uri);
#endif
}

/* The export's size (a connection made and dropped). */
static int nbd_size(const char *uri, bool writable, uint64_t *size)
{
    struct lsm_loop_config lc = { .io_kind = LSM_IO_AUTO, .depth = 32 };
    struct lsm_loop *loop = NULL;
    struct lsm_ep *ep = NULL;
    int r = lsm_loop_create(&lc, &loop);
    if (r == 0)
        r = nbd_open(loop, uri, writable, 1, NULL, &ep);
    if (r == 0)
        *size = ep->caps.size;
    lsm_ep_close(ep);
    lsm_loop_destroy(loop);
    return r;
}

static int prepare_files(const struct bench_job *job, struct bench_prep *prep)
{
    uint64_t size = 0;
    int r;
    if (job->rw != BENCH_RW_COPY && bench_is_nbd_uri(job->filename)) {
        if ((r = nbd_size(job->filename, bench_rw_writes(job->rw), &size)) < 0)
            return r;
        uint64_t want = job->size ? job->offset + job->size : size;
        if (want > size)
            return lsm_error(-EINVAL, "size %" PRIu64 " is larger than the export %s (%" PRIu64
                             " bytes): an export is not resized", want, job->filename, size);
        size = want;
        goto sized;
    }
    if (job->rw == BENCH_RW_COPY) {
        if ((r = claim_written(job, job->dst, prep)) < 0)
            return r;
    } else if (bench_rw_writes(job->rw)) {
        if ((r = claim_written(job, job->filename, prep)) < 0)
            return r;
    }
    uint64_t want = job->size ? job->offset + job->size : 0;
    if (job->rw == BENCH_RW_COPY) {
        if ((r = prepare_file(job, job->src, true, want, &size, prep)) < 0)
            return r;
        uint64_t dsize;
        if ((r = prepare_file(job, job->dst, false, size, &dsize, prep)) < 0)
            return r;
    } else {
        if ((r = prepare_file(job, job->filename, bench_rw_reads(job->rw), want, &size,
                              prep)) < 0)
            return r;
    }
sized:
    if (size <= job->offset)
        return lsm_error(-EINVAL, "job '%s': offset %" PRIu64 " is at or past the end of the "
                         "file (%" PRIu64 " bytes)", job->name, job->offset, size);
    size -= job->offset;
    size = size / job->bs * job->bs;
    if (size == 0)
        return lsm_error(-EINVAL, "job '%s': the file is smaller than one block (bs=%" PRIu64 ")",
                         job->name, job->bs);
    prep->size = size;
    /* invalidate=1 (fio's default): start from a cold page cache */
    if (job->invalidate && !bench_is_nbd_uri(job->filename)) {
        const char *files[2] = { job->rw == BENCH_RW_COPY ? job->src : job->filename,
                                 job->rw == BENCH_RW_COPY ? job->dst : NULL };
        for (int i = 0; i < 2 && files[i]; i++) {
            _cleanup_close_ int fd = open(files[i], O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return lsm_error_errno(-errno, "cannot open %s", files[i]);
            (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        }
    }
    return 0;
}

int bench_prepare(const struct bench_job *job, struct bench_prep *prep)
{
    memset(prep, 0, sizeof *prep);
    int r = prepare_files(job, prep);
    if (r < 0)
        bench_prep_release(prep);
    return r;
}

/* ---- One clone ---- */

struct slot {
    struct lsm_io_req req;
    struct lsm_ep_cmd cmd;         /* an NBD export: the request as an endpoint command */
    struct run *run;
    unsigned index;
    uint64_t prep_ns;              /* when the request was chosen */
};

enum phase { PHASE_MAIN, PHASE_VERIFY };

struct run;
struct run {
    struct bench_thread *t;
    const struct bench_job *job;
    struct lsm_io *io;
    struct lsm_file *file, *dst;   /* dst only for copy */
    struct lsm_bufpool *pool;      /* depth buffers of bs bytes, slot i has buffer i */
    struct slot *slots;
    unsigned *free_stack, nfree;
    struct slot **pending;         /* prepared, not yet queued */
    unsigned npending;
    struct lsm_io_req **done;
    unsigned ndone;                /* NBD: delivered by the loop, not yet completed */
    struct lsm_loop *loop;         /* NBD: the loop and the export, instead of io and file */
    struct lsm_ep *ep;
    unsigned inflight;
    uint64_t nblocks;
    uint64_t issued;               /* main-phase requests issued */
    uint64_t writes_scrambled;     /* stamp of scramble_buffers */
    uint64_t seq_next;
    uint64_t verify_cursor;
    uint64_t *written;             /* bitmap of blocks written (verify) */
    struct bench_prng prng;
    enum phase phase;
    bool no_more;                  /* stop issuing in this phase */
    bool fixed;
    uint64_t deadline_ns;          /* 0: none */
    uint64_t measure_ns;           /* start of the measured part (after ramp_time) */
    uint64_t rate_t0, rate_issued; /* rate_iops */
    uint64_t throttled_until;      /* non-zero: waiting for rate_iops */
    uint64_t writes_since_sync;    /* fsync=N */
    uint64_t len_next;             /* bssplit: length of the request being chosen */
    uint64_t next_sample_ns;
    uint64_t sample_t0;
    uint64_t sample_bytes[2], sample_ios[2];
};

static bool bit_get(const uint64_t *bm, uint64_t i)
{
    return bm[i / 64] >> (i % 64) & 1;
}

static void bit_set(uint64_t *bm, uint64_t i)
{
    bm[i / 64] |= 1ULL << (i % 64);
}

static int fail(struct run *r, int err)
{
    if (!r->t->error) {
        r->t->error = err;
        snprintf(r->t->errmsg, sizeof r->t->errmsg, "%s", lsm_last_error());
    }
    r->no_more = true;
    return err;
}

static void add_sample(struct run *r, uint64_t now)
{
    struct bench_thread *t = r->t;
    if (t->nsamples == t->samples_cap) {
        size_t cap = t->samples_cap ? t->samples_cap * 2 : 256;
        struct bench_sample *s = realloc(t->samples, cap * sizeof *s);
        if (!s)
            return;            /* the plot loses points; the numbers do not */
        t->samples = s;
        t->samples_cap = cap;
    }
    struct bench_sample *s = &t->samples[t->nsamples++];
    s->t0_ns = r->sample_t0 - t->epoch_ns;
    s->t1_ns = now - t->epoch_ns;
    for (int d = 0; d < 2; d++) {
        s->bytes[d] = t->dir[d].bytes - r->sample_bytes[d];
        s->ios[d] = t->dir[d].ios - r->sample_ios[d];
        r->sample_bytes[d] = t->dir[d].bytes;
        r->sample_ios[d] = t->dir[d].ios;
    }
    s->p99_ns = bench_hist_percentile(t->interval, 99.0);
    bench_hist_init(t->interval);
    r->sample_t0 = now;
}

/* Choose the next request of the current phase; false when there is none. */
static bool next_request(struct run *r, uint64_t now, struct slot *s)
{
    const struct bench_job *job = r->job;
    struct lsm_io_req *req = &s->req;
    uint64_t block;
    enum lsm_io_op op;

    if (r->no_more)
        return false;
    if (r->phase == PHASE_VERIFY) {
        while (r->verify_cursor < r->nblocks && !bit_get(r->written, r->verify_cursor))
            r->verify_cursor++;
        if (r->verify_cursor >= r->nblocks || __atomic_load_n(r->t->stop, __ATOMIC_RELAXED)) {
            r->no_more = true;
            return false;
        }
        block = r->verify_cursor++;
        op = LSM_OP_READ;
        req->file = r->file;
    } else {
        if (__atomic_load_n(r->t->stop, __ATOMIC_RELAXED)) {
            r->t->interrupted = true;
            r->no_more = true;
            return false;
        }
        if ((r->deadline_ns && now >= r->deadline_ns) ||
            (!job->time_based && r->issued >= r->nblocks)) {
            r->no_more = true;
            return false;
        }
        if (job->rate_iops) {
            uint64_t allowed = (now - r->rate_t0) * job->rate_iops / 1000000000ULL + 1;
            if (r->rate_issued >= allowed) {
                r->throttled_until = r->rate_t0 + r->rate_issued * 1000000000ULL / job->rate_iops;
                return false;
            }
        }
        struct lsm_file *target = job->rw == BENCH_RW_COPY ? r->dst : r->file;
        if (job->fsync && r->writes_since_sync >= job->fsync) {
            /* fsync=N: a data sync after every N writes, in the queue like fio's */
            r->writes_since_sync = 0;
            req->op = LSM_OP_FLUSH;
            req->file = target;
            req->offset = req->len = 0;
            s->prep_ns = now;
            return true;
        }
        r->throttled_until = 0;
        r->rate_issued++;
        uint64_t len = job->bs;
        if (job->nbssplit) {
            unsigned pick = (unsigned)bench_prng_below(&r->prng, 100), acc = 0;
            for (unsigned i = 0; i < job->nbssplit; i++) {
                acc += job->bssplit[i].pct;
                if (pick < acc) {
                    len = job->bssplit[i].bs;
                    break;
                }
            }
        }
        uint64_t units = len / job->bs;    /* bssplit sizes are multiples of the smallest */
        if (units == 0 || units > r->nblocks)
            units = 1, len = job->bs;
        if (bench_rw_random(job->rw)) {
            block = bench_prng_below(&r->prng, r->nblocks - units + 1);
        } else {
            if (r->seq_next + units > r->nblocks)
                r->seq_next = 0;        /* time_based: wrap around */
            block = r->seq_next;
            r->seq_next += units;
        }
        r->len_next = len;
        switch (job->rw) {
        case BENCH_RW_READ: case BENCH_RW_RANDREAD: case BENCH_RW_COPY:
            op = LSM_OP_READ;
            break;
        case BENCH_RW_WRITE: case BENCH_RW_RANDWRITE:
            op = LSM_OP_WRITE;
            break;
        default:
            op = bench_prng_below(&r->prng, 100) < job->rwmixread ? LSM_OP_READ : LSM_OP_WRITE;
            break;
        }
        req->file = r->file;
        r->issued += units;
        if (job->fsync && (op == LSM_OP_WRITE || job->rw == BENCH_RW_COPY))
            r->writes_since_sync++;
    }
    req->op = op;
    req->offset = job->offset + block * job->bs;
    req->len = r->phase == PHASE_MAIN ? r->len_next : job->bs;
    s->prep_ns = now;
    if (op == LSM_OP_WRITE && job->verify == BENCH_VERIFY_PATTERN)
        bench_pattern_fill(req->buf, req->len, req->offset, job->randseed);
    else if (op == LSM_OP_WRITE && job->scramble_buffers)
        bench_scramble(req->buf, req->len, req->offset, ++r->writes_scrambled);
    return true;
}

/* What a request works on, for messages. */
static const char *req_name(const struct run *r, const struct lsm_io_req *req)
{
    return req->file ? req->file->path : r->ep ? r->ep->name : "?";
}

/* A request finished. */
static void complete(struct run *r, struct slot *s, uint64_t now)
{
    struct bench_thread *t = r->t;
    const struct bench_job *job = r->job;
    struct lsm_io_req *req = &s->req;
    const char *what = req->op == LSM_OP_WRITE ? "write" : "read";

    if (req->op == LSM_OP_FLUSH) {
        if (req->result < 0) {
            lsm_error_errno((int)req->result, "cannot sync %s", req->file->path);
            fail(r, (int)req->result);
        } else {
            uint64_t c = req->complete_ns ? req->complete_ns : now;
            if (c >= r->measure_ns) {
                bench_hist_add(&t->sync.clat, c > req->submit_ns ? c - req->submit_ns : 0);
                t->sync.ios++;
            }
        }
        r->free_stack[r->nfree++] = s->index;
        return;
    }
    if (req->result < 0) {
        lsm_error_errno((int)req->result, "%s of %" PRIu64 " bytes at offset %" PRIu64 " of %s",
                        what, req->len, req->offset, req_name(r, req));
        fail(r, (int)req->result);
    } else if ((uint64_t)req->result != req->len) {
        lsm_error(-EIO, "short %s at offset %" PRIu64 " of %s: %" PRId64 " of %" PRIu64 " bytes",
                  what, req->offset, req_name(r, req), req->result, req->len);
        fail(r, -EIO);
    } else {
        uint64_t block = (req->offset - job->offset) / job->bs;
        uint64_t c = req->complete_ns ? req->complete_ns : now;
        if (r->phase == PHASE_MAIN && c >= r->measure_ns) {
            int d = req->op == LSM_OP_WRITE ? BENCH_DIR_WRITE : BENCH_DIR_READ;
            uint64_t lat = c > req->submit_ns ? c - req->submit_ns : 0;
            bench_hist_add(&t->dir[d].clat, lat);
            bench_hist_add(&t->dir[d].slat, req->submit_ns > s->prep_ns ?
                                            req->submit_ns - s->prep_ns : 0);
            bench_hist_add(&t->dir[d].lat, c > s->prep_ns ? c - s->prep_ns : 0);
            if (t->interval)
                bench_hist_add(t->interval, lat);
            t->dir[d].bytes += req->len;
            t->dir[d].ios++;
            t->end_ns = c;
        }
        if (job->verify == BENCH_VERIFY_PATTERN) {
            if (req->op == LSM_OP_WRITE) {
                bit_set(r->written, block);
            } else if (r->phase == PHASE_VERIFY || job->rw != BENCH_RW_RANDRW ||
                       bit_get(r->written, block)) {
                int e = bench_pattern_check(req->buf, req->len, req->offset, job->randseed,
                                            req_name(r, req));
                if (e < 0)
                    fail(r, e);
                else
                    t->verified++;
            }
        }
        if (job->rw == BENCH_RW_COPY && req->op == LSM_OP_READ && !t->error) {
            /* the block goes on to the destination */
            req->op = LSM_OP_WRITE;
            req->file = r->dst;
            s->prep_ns = now;
            r->pending[r->npending++] = s;
            return;
        }
    }
    r->free_stack[r->nfree++] = s->index;
}

static void submit(struct run *r, int *err)
{
    int q = lsm_io_submit(r->io);
    if (q < 0) {
        lsm_error_prefix("cannot submit requests for %s", r->file->path);
        *err = fail(r, q);
    }
}

/* Take a progress sample when one is due, then prepare a request for
 * every free slot (both I/O paths, before they submit). */
static void prepare_requests(struct run *r, uint64_t now)
{
    struct bench_thread *t = r->t;
    if (r->phase == PHASE_MAIN && t->sample_ns && now >= r->next_sample_ns) {
        add_sample(r, now);
        r->next_sample_ns += t->sample_ns;
        if (r->next_sample_ns <= now)
            r->next_sample_ns = now + t->sample_ns;
    }
    while (r->nfree > 0 && !t->error) {
        struct slot *s = &r->slots[r->free_stack[r->nfree - 1]];
        if (!next_request(r, now, s))
            break;
        r->nfree--;
        r->pending[r->npending++] = s;
    }
}

/* Issue, submit and reap until the phase has nothing more to do. */
static int run_phase(struct run *r)
{
    struct bench_thread *t = r->t;
    unsigned depth = r->job->iodepth;
    int err = 0;

    for (;;) {
        uint64_t now = lsm_now_ns();
        prepare_requests(r, now);
        /* queue them, the oldest prepared first, and submit every
         * iodepth_batch_submit of them (fio's default 1: each at once) */
        unsigned batch = r->job->iodepth_batch_submit ? r->job->iodepth_batch_submit : depth;
        unsigned queued = 0, i = 0;
        for (; i < r->npending; i++) {
            struct slot *s = r->pending[i];
            if (t->error) {
                r->free_stack[r->nfree++] = s->index;   /* drop what was not sent */
                continue;
            }
            int q = lsm_io_queue(r->io, &s->req);
            if (q == -EAGAIN)
                break;
            if (q < 0) {
                lsm_error_prefix("cannot queue a request for %s", s->req.file->path);
                err = fail(r, q);
                r->free_stack[r->nfree++] = s->index;
            } else if (++queued >= batch) {
                submit(r, &err);
                queued = 0;
            }
        }
        memmove(r->pending, r->pending + i, (r->npending - i) * sizeof *r->pending);
        r->npending -= i;
        if (queued > 0)
            submit(r, &err);
        if (r->io->in_flight == 0 && r->npending == 0) {
            if (r->throttled_until && !r->no_more && !t->error) {
                /* rate_iops: nothing to wait for but the next slot */
                uint64_t now2 = lsm_now_ns();
                if (r->throttled_until > now2) {
                    uint64_t d = r->throttled_until - now2;
                    struct timespec ts = { (time_t)(d / 1000000000ULL), (long)(d % 1000000000ULL) };
                    nanosleep(&ts, NULL);
                }
                continue;
            }
            break;
        }
        if (r->io->in_flight == 0) {
            /* pending but nothing in flight: the queue refused with nothing to wait for */
            err = fail(r, lsm_error(-EIO, "the %s backend refused a request with none in flight",
                                    lsm_io_name(r->io)));
            continue;
        }
        int n = lsm_io_reap(r->io, 1, r->done, depth);
        if (n < 0) {
            lsm_error_prefix("cannot reap completions for %s", r->file->path);
            err = fail(r, n);
            if (n != -EINTR)
                return err;          /* cannot drain: give up (the caller tears down) */
            continue;
        }
        now = lsm_now_ns();
        for (int k = 0; k < n; k++)
            complete(r, (struct slot *)r->done[k]->user, now);
        if (r->phase == PHASE_MAIN) {
            for (int d = 0; d < 2; d++) {
                __atomic_store_n(&t->live_bytes[d], t->dir[d].bytes, __ATOMIC_RELAXED);
                __atomic_store_n(&t->live_ios[d], t->dir[d].ios, __ATOMIC_RELAXED);
            }
        }
    }
    return err ? err : t->error;
}

/* An NBD command delivered by the loop: its result into the slot's request. */
static void nbd_done(struct lsm_ep_cmd *cmd)
{
    struct slot *s = cmd->user;
    s->req.result = cmd->result < 0 ? cmd->result : (int64_t)cmd->len;
    s->req.complete_ns = lsm_now_ns();
    s->run->done[s->run->ndone++] = &s->req;
}

/* run_phase for an NBD export: each request prepared is submitted to the
 * endpoint at once (iodepth of them in flight), and the loop delivers
 * them. */
static int run_phase_nbd(struct run *r)
{
    struct bench_thread *t = r->t;
    int err = 0;

    for (;;) {
        uint64_t now = lsm_now_ns();
        prepare_requests(r, now);
        for (unsigned i = 0; i < r->npending; i++) {
            struct slot *s = r->pending[i];
            if (t->error) {
                r->free_stack[r->nfree++] = s->index;
                continue;
            }
            s->cmd = (struct lsm_ep_cmd){
                .op = s->req.op == LSM_OP_WRITE ? LSM_EP_OP_WRITE : LSM_EP_OP_READ,
                .buf = s->req.buf, .buf_index = -1,
                .offset = s->req.offset, .len = s->req.len,
                .done = nbd_done, .user = s,
            };
            s->req.submit_ns = lsm_now_ns();
            int q = lsm_ep_submit(r->ep, &s->cmd);
            if (q < 0) {
                err = fail(r, q);
                r->free_stack[r->nfree++] = s->index;
            } else {
                r->inflight++;
            }
        }
        r->npending = 0;
        if (r->inflight == 0) {
            if (r->throttled_until && !r->no_more && !t->error) {
                uint64_t now2 = lsm_now_ns();
                if (r->throttled_until > now2) {
                    uint64_t d = r->throttled_until - now2;
                    struct timespec ts = { (time_t)(d / 1000000000ULL), (long)(d % 1000000000ULL) };
                    nanosleep(&ts, NULL);
                }
                continue;
            }
            break;
        }
        r->ndone = 0;
        int n = lsm_loop_run(r->loop);
        if (n < 0) {
            err = fail(r, n);
            return err;              /* cannot drain: the caller tears down */
        }
        now = lsm_now_ns();
        for (unsigned k = 0; k < r->ndone; k++) {
            r->inflight--;
            complete(r, (struct slot *)r->done[k]->user, now);
        }
        if (r->phase == PHASE_MAIN) {
            for (int d = 0; d < 2; d++) {
                __atomic_store_n(&t->live_bytes[d], t->dir[d].bytes, __ATOMIC_RELAXED);
                __atomic_store_n(&t->live_ios[d], t->dir[d].ios, __ATOMIC_RELAXED);
            }
        }
    }
    return err ? err : t->error;
}

static double tv_sec(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static int open_file(struct run *r, const char *path, bool write, struct lsm_file **out)
{
    int e = lsm_file_open(path, LSM_FILE_READ | (write ? LSM_FILE_WRITE : 0),
                          r->job->direct ? LSM_DIRECT_ALWAYS : LSM_DIRECT_NEVER, out);
    if (e < 0)
        return e;
    struct lsm_file *f = *out;
    if (f->offset_align > 1 && r->job->bs % f->offset_align)
        return lsm_error(-EINVAL, "bs=%" PRIu64 " is not a multiple of the O_DIRECT alignment "
                         "of %s (%u bytes)", r->job->bs, path, f->offset_align);
    if (r->job->registerfiles) {
        e = lsm_io_register_file(r->io, f);
        if (e < 0 && e != -ENOTSUP && e != -EOPNOTSUPP)
            return e;
    }
    return 0;
}

static int run_clone(struct run *r)
{
    struct bench_thread *t = r->t;
    const struct bench_job *job = r->job;
    unsigned depth = job->iodepth;
    int e;

    bool copy = job->rw == BENCH_RW_COPY;
    bool nbd = !copy && bench_is_nbd_uri(job->filename);
    size_t align;
    if (nbd) {
        struct lsm_loop_config lc = { .io_kind = job->ioengine, .depth = MAX(depth, 32u) };
        if ((e = lsm_loop_create(&lc, &r->loop)) < 0)
            return e;
        if ((e = nbd_open(r->loop, job->filename, bench_rw_writes(job->rw), depth, NULL,
                          &r->ep)) < 0)
            return e;
        snprintf(t->engine, sizeof t->engine, "nbd");
        align = MAX(1u, r->ep->caps.mem_align);
    } else {
        struct lsm_io_config cfg = { .depth = depth, .fixed_buffers = job->fixedbufs };
        if ((e = lsm_io_create(job->ioengine, &cfg, &r->io)) < 0)
            return e;
        snprintf(t->engine, sizeof t->engine, "%s", lsm_io_name(r->io));

        if ((e = open_file(r, copy ? job->src : job->filename,
                           !copy && bench_rw_writes(job->rw), &r->file)) < 0)
            return e;
        if (copy && (e = open_file(r, job->dst, true, &r->dst)) < 0)
            return e;
        align = MAX(1u, r->file->mem_align);
    }

    /* The io/ buffer pool: page- and huge-page-aligned, as the copy engine's,
     * so that a request reaches the device in as few segments as fio's. */
    if (r->dst)
        align = MAX(align, r->dst->mem_align);
    uint64_t maxbs = bench_job_max_bs(job);
    if ((e = lsm_bufpool_create_flags((size_t)maxbs * depth, maxbs, align,
                                      job->mem == BENCH_MEM_PAGES ? LSM_BUFPOOL_SMALL_PAGES : 0,
                                      &r->pool)) < 0)
        return e;
    bench_fill_random(r->pool->base, (size_t)maxbs * depth, job->randseed + 1000003u * t->index);

    r->slots = calloc(depth, sizeof *r->slots);
    r->free_stack = calloc(depth, sizeof *r->free_stack);
    r->pending = calloc(depth, sizeof *r->pending);
    r->done = calloc(depth, sizeof *r->done);
    if (!r->slots || !r->free_stack || !r->pending || !r->done)
        return lsm_error(-ENOMEM, "out of memory");
    r->nblocks = t->size / job->bs;
    if (job->verify == BENCH_VERIFY_PATTERN && bench_rw_writes(job->rw) &&
        !(r->written = calloc(div_round_up(r->nblocks, 64), sizeof *r->written)))
        return lsm_error(-ENOMEM, "out of memory for the verify map");

    if (job->fixedbufs && !nbd) {
        _cleanup_free_ struct iovec *iov = lsm_bufpool_iovecs(r->pool);
        if (!iov)
            return -ENOMEM;
        e = lsm_io_register_buffers(r->io, iov, r->pool->count);
        if (e == 0)
            r->fixed = true;
        else if (e != -ENOTSUP && e != -EOPNOTSUPP)
            return e;
    }
    for (unsigned i = 0; i < depth; i++) {
        struct slot *s = &r->slots[i];
        s->index = i;
        int b;
        s->req.buf = lsm_bufpool_get(r->pool, &b);    /* index 0 first: buffer i */
        s->req.buf_index = r->fixed ? b : -1;
        s->req.user = s;
        s->run = r;
        r->free_stack[r->nfree++] = depth - 1 - i;
    }
    /* randrepeat=0: different offsets on every run */
    bench_prng_seed(&r->prng, (job->randrepeat ? job->randseed : job->randseed ^ lsm_now_ns()) ^
                              (0x100000001b3ULL * (t->index + 1)));
    if (t->sample_ns && !(t->interval = malloc(sizeof *t->interval)))
        return lsm_error(-ENOMEM, "out of memory");
    if (t->interval)
        bench_hist_init(t->interval);

    /* the measured part */
    struct rusage ru0, ru1;
    getrusage(RUSAGE_THREAD, &ru0);
    uint64_t start = lsm_now_ns();
    r->measure_ns = start + job->ramp_time_ns;   /* ramp_time: run, but do not count */
    t->start_ns = t->end_ns = r->measure_ns;
    r->sample_t0 = start;
    r->rate_t0 = start;
    r->next_sample_ns = start + t->sample_ns;
    if (job->runtime_ns)
        r->deadline_ns = r->measure_ns + job->runtime_ns;
    r->phase = PHASE_MAIN;
    e = nbd ? run_phase_nbd(r) : run_phase(r);
    if (e == 0 && job->end_fsync && bench_rw_writes(job->rw) && !t->interrupted) {
        struct lsm_file *f = job->rw == BENCH_RW_COPY ? r->dst : r->file;
        uint64_t s0 = lsm_now_ns();
        if (nbd)
            e = lsm_ep_flush(r->ep);    /* NBD_CMD_FLUSH on every connection */
        else if (fsync(f->fd) < 0)
            e = lsm_error_errno(-errno, "cannot sync %s", f->path);
        uint64_t s1 = lsm_now_ns();
        bench_hist_add(&t->sync.clat, s1 - s0);
        t->sync.ios++;
        t->end_ns = s1;
    }
    uint64_t end = lsm_now_ns();
    getrusage(RUSAGE_THREAD, &ru1);
    if (t->end_ns < start)
        t->end_ns = end;
    t->usr_sec = tv_sec(ru1.ru_utime) - tv_sec(ru0.ru_utime);
    t->sys_sec = tv_sec(ru1.ru_stime) - tv_sec(ru0.ru_stime);
    if (t->sample_ns && (t->nsamples == 0 || end - r->sample_t0 >= t->sample_ns / 10))
        add_sample(r, end);
    if (e < 0)
        return e;

    /* verify=pattern after writing: read back every block written */
    if (r->written && !t->interrupted) {
        r->phase = PHASE_VERIFY;
        r->no_more = false;
        e = nbd ? run_phase_nbd(r) : run_phase(r);
    }
    return e;
}

static void run_free(struct run *r)
{
    /* with requests still in flight (a failed reap) the backend cancels or
     * waits for them when destroyed, before their buffers go */
    if (r->io)
        lsm_io_destroy(r->io);
    if (r->loop)
        lsm_loop_destroy(r->loop);  /* drops what is still in flight */
    lsm_ep_close(r->ep);
    lsm_bufpool_destroy(r->pool);
    if (r->file)
        lsm_file_close(r->file);
    if (r->dst)
        lsm_file_close(r->dst);
    free(r->slots);
    free(r->free_stack);
    free(r->pending);
    free(r->done);
    free(r->written);
}

void *bench_thread_main(void *arg)
{
    struct bench_thread *t = arg;
    struct run r = { .t = t, .job = t->job };
    lsm_error_clear();
    int e = run_clone(&r);
    if (e < 0 && !t->error) {
        t->error = e;
        snprintf(t->errmsg, sizeof t->errmsg, "%s", lsm_last_error());
    }
    run_free(&r);
    free(t->interval);
    t->interval = NULL;
    __atomic_store_n(&t->finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

void bench_thread_free(struct bench_thread *t)
{
    free(t->samples);
    free(t->interval);
    t->samples = NULL;
    t->interval = NULL;
    t->nsamples = t->samples_cap = 0;
}
