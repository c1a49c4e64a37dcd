/* The block hash of a chain's guest view (see checksum.h).
 *
 * The calling thread walks the map block by block: whole blocks of a zero
 * extent go to the hash as zero runs; a block with data gets a buffer, its
 * data pieces are read into it and its zero pieces cleared, and the full
 * buffer is queued.  Worker threads take queued buffers, hash them and hand
 * the block digests in by index (the order they finish in does not matter),
 * then give the buffers back.  The reader waits for a free buffer, which is
 * the flow control. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checksum.h"
#include "cleanup.h"
#include "error.h"
#include "image.h"

struct block_buf {
    uint8_t *data;
    uint64_t index;
    uint32_t len;
};

struct ctx {
    pthread_mutex_t lock;
    pthread_cond_t work;           /* queue not empty, or stop */
    pthread_cond_t freed;          /* a buffer came back, or a worker failed */
    struct lsm_blkhash *h;         /* under lock */
    struct block_buf *bufs;
    size_t nbufs;
    struct block_buf **free_list;  /* stack */
    size_t nfree;
    struct block_buf **queue;      /* ring of nbufs */
    size_t qhead, qlen;
    bool stop;
    int err;                       /* first worker error */
    char errmsg[256];              /* its message (the workers' own is thread-local) */
};

static void *worker(void *arg)
{
    struct ctx *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->qlen == 0 && !c->stop)
            pthread_cond_wait(&c->work, &c->lock);
        if (c->qlen == 0)
            break;
        struct block_buf *b = c->queue[c->qhead];
        c->qhead = (c->qhead + 1) % c->nbufs;
        c->qlen--;
        pthread_mutex_unlock(&c->lock);

        uint8_t d[LSM_BLKHASH_DIGEST_LEN];
        int r = lsm_blkhash_digest_of(c->h, b->data, b->len, d);   /* reads only the algorithm */

        pthread_mutex_lock(&c->lock);
        if (r == 0)
            r = lsm_blkhash_set_digest(c->h, b->index, d);
        if (r < 0 && !c->err) {
            c->err = r;
            snprintf(c->errmsg, sizeof(c->errmsg), "%s", lsm_last_error());
        }
        c->free_list[c->nfree++] = b;
        pthread_cond_signal(&c->freed);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* The worker's error, as this thread's error. */
static int worker_error(struct ctx *c)
{
    return lsm_error(c->err, "%s", c->errmsg);
}

static int get_buf(struct ctx *c, struct block_buf **out)
{
    pthread_mutex_lock(&c->lock);
    while (c->nfree == 0 && !c->err)
        pthread_cond_wait(&c->freed, &c->lock);
    int r = c->err;
    if (!r)
        *out = c->free_list[--c->nfree];
    pthread_mutex_unlock(&c->lock);
    return r ? worker_error(c) : 0;
}

static void submit(struct ctx *c, struct block_buf *b, uint64_t index, uint32_t len)
{
    b->index = index;
    b->len = len;
    pthread_mutex_lock(&c->lock);
    c->queue[(c->qhead + c->qlen) % c->nbufs] = b;
    c->qlen++;
    pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->lock);
}

static int zero_blocks(struct ctx *c, uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&c->lock);
    int r = c->err ? c->err : lsm_blkhash_zero_blocks(c->h, first, count);
    bool theirs = c->err != 0;
    pthread_mutex_unlock(&c->lock);
    return theirs ? worker_error(c) : r;
}

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > 4 ? 4 : (unsigned)n;
}

/* After each piece: the job's cancel flag and progress (checksum.h). */
static int step(const struct lsm_checksum_opts *o, const struct lsm_image *img, uint64_t pos,
                const struct lsm_checksum_result *res)
{
    if (o->cancel && *o->cancel)
        return lsm_error(-ECANCELED, "checksum of %s cancelled at offset %" PRIu64, img->filename, pos);
    if (o->progress)
        o->progress(o->opaque, pos, img->virtual_size, res->bytes_read);
    return 0;
}

/* Walk the map of img and feed every block to c->h. */
static int walk(struct ctx *c, struct lsm_image *img, const struct lsm_checksum_opts *o,
                struct lsm_checksum_result *res)
{
    const uint64_t size = img->virtual_size, bs = res->block_size;
    struct block_buf *cur = NULL;     /* the current block's buffer, once it has data */
    struct lsm_map_iter it;
    struct lsm_extent e;
    int r;

    lsm_map_iter_init(&it, img, 0, size, 0);
    while ((r = lsm_map_iter_next(&it, &e)) > 0) {
        const uint64_t t = e.start + e.length;
        const bool zero = e.flags & LSM_EXT_ZERO;
        uint64_t pos = e.start;
        while (pos < t) {
            const uint64_t b = pos / bs, bstart = b * bs;
            const uint32_t blen = lsm_blkhash_block_len(c->h, b);
            const uint64_t bend = bstart + blen;
            if (zero && pos == bstart) {
                /* Whole blocks of zeroes, the short last one included. */
                uint64_t count = (t - bstart) / bs;
                if (t == size && (t - bstart) % bs)
                    count++;
                if (count) {
                    r = zero_blocks(c, b, count);
                    if (r < 0)
                        return r;
                    res->zero_blocks += count;
                    pos = bstart + count * bs < t ? bstart + count * bs : t;
                    if ((r = step(o, img, pos, res)) < 0)
                        return r;
                    continue;
                }
            }
            const uint64_t piece_end = t < bend ? t : bend;
            const uint64_t n = piece_end - pos;
            if (!zero) {
                if (!cur) {
                    r = get_buf(c, &cur);
                    if (r < 0)
                        return r;
                    memset(cur->data, 0, pos - bstart);   /* zero pieces seen so far */
                }
                r = lsm_image_pread(img, cur->data + (pos - bstart), n, pos);
                if (r < 0) {
                    /* Back to the free list: the caller joins the workers. */
                    pthread_mutex_lock(&c->lock);
                    c->free_list[c->nfree++] = cur;
                    pthread_mutex_unlock(&c->lock);
                    return r;
                }
                res->bytes_read += n;
            } else if (cur) {
                memset(cur->data + (pos - bstart), 0, n);
            }
            pos = piece_end;
            if ((r = step(o, img, pos, res)) < 0) {
                if (cur) {
                    pthread_mutex_lock(&c->lock);
                    c->free_list[c->nfree++] = cur;
                    pthread_mutex_unlock(&c->lock);
                }
                return r;
            }
            if (pos == bend) {
                if (cur) {
                    submit(c, cur, b, blen);
                    cur = NULL;
                } else {
                    /* Zero pieces only (zero clusters over unallocated ones,
                     * say): still nothing read. */
                    r = zero_blocks(c, b, 1);
                    if (r < 0)
                        return r;
                    res->zero_blocks++;
                }
            }
        }
    }
    if (r == 0 && cur)     /* the map ended inside a block: a reader bug */
        return lsm_error(-EIO, "the map of %s ends before its size", img->filename);
    return r;
}

int lsm_checksum_image(struct lsm_image *img, const struct lsm_checksum_opts *opts,
                       struct lsm_checksum_result *res)
{
    static const struct lsm_checksum_opts defaults = { 0 };
    const struct lsm_checksum_opts *o = opts ? opts : &defaults;
    uint32_t bs = o->block_size ? o->block_size : LSM_BLKHASH_DEFAULT_BLOCK;
    uint64_t budget = o->mem_budget ? o->mem_budget : LSM_CHECKSUM_DEFAULT_BUDGET;
    unsigned nthreads = o->threads ? o->threads : default_threads();
    if (nthreads > LSM_CHECKSUM_MAX_THREADS)
        nthreads = LSM_CHECKSUM_MAX_THREADS;

    memset(res, 0, sizeof(*res));
    res->alg = o->alg;
    res->block_size = bs;
    res->size = img->virtual_size;

    struct ctx c = { .lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER,
                     .freed = PTHREAD_COND_INITIALIZER };
    int r = lsm_blkhash_new(o->alg, bs, img->virtual_size, &c.h);
    if (r < 0)
        return r;

    c.nbufs = budget / bs < 2 ? 2 : budget / bs;
    /* No more buffers than blocks with data could need at once. */
    uint64_t nblocks = lsm_blkhash_nblocks(c.h);
    if (c.nbufs > nblocks)
        c.nbufs = nblocks ? nblocks : 1;
    _cleanup_free_ struct block_buf *bufs = calloc(c.nbufs, sizeof(*bufs));
    _cleanup_free_ struct block_buf **free_list = calloc(c.nbufs, sizeof(*free_list));
    _cleanup_free_ struct block_buf **queue = calloc(c.nbufs, sizeof(*queue));
    pthread_t threads[LSM_CHECKSUM_MAX_THREADS];
    unsigned started = 0;
    if (!bufs || !free_list || !queue) {
        r = lsm_error(-ENOMEM, "cannot allocate checksum buffers");
        goto out;
    }
    c.bufs = bufs;
    c.free_list = free_list;
    c.queue = queue;
    for (size_t i = 0; i < c.nbufs; i++) {
        void *p;
        if (posix_memalign(&p, 4096, bs) != 0) {
            r = lsm_error(-ENOMEM, "cannot allocate %zu checksum buffers of %" PRIu32 " bytes",
                          c.nbufs, bs);
            goto out;
        }
        bufs[i].data = p;
        free_list[c.nfree++] = &bufs[i];
    }
    for (; started < nthreads; started++) {
        int e = pthread_create(&threads[started], NULL, worker, &c);
        if (e) {
            r = lsm_error_errno(-e, "cannot start a checksum thread");
            goto out;
        }
    }

    r = walk(&c, img, o, res);  /* the reader's messages name the file */

out:
    pthread_mutex_lock(&c.lock);
    c.stop = true;
    pthread_cond_broadcast(&c.work);
    pthread_mutex_unlock(&c.lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (r == 0 && c.err)
        r = worker_error(&c);
    if (r == 0)
        r = lsm_blkhash_final(c.h, res->digest);
    if (r == 0)
        lsm_blkhash_hex(res->digest, res->hex);
    if (bufs)
        for (size_t i = 0; i < c.nbufs; i++)
            free(bufs[i].data);
    lsm_blkhash_free(c.h);
    pthread_mutex_destroy(&c.lock);
    pthread_cond_destroy(&c.work);
    pthread_cond_destroy(&c.freed);
    return r;
}
