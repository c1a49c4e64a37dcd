/* qcow2 writer: see qcow2-writer.h for the contract.
 *
 * Layout of an image we create:
 *   cluster 0            header, header extensions, backing file name
 *   clusters 1..n        L1 table (sized for the virtual size, written at finish)
 *   then, in call order  L2 tables (allocated on demand) and data runs
 *   at finish            refcount table, then refcount blocks, at the end
 *                        (or, when it still covers the image, in the area
 *                        the last checkpoint placed at the end then)
 *
 * Refcounts: the writer never frees, so every cluster below the end of the
 * image has refcount 1, except a "free set": in an image we opened, the
 * clusters that had refcount 0, leaked clusters (refcount 1 but referenced by
 * nothing), and its old refcount table and blocks; in an image opened
 * incomplete (its refcounts stale), every cluster nothing references.
 * Host clusters of compressed clusters (created with compress) are the other
 * exception: each counts the compressed clusters that touch it, kept as
 * runs of 16-bit counters (struct cseg) written over the default.
 * finish() therefore never needs the refcounts in memory: it streams
 * refcount blocks computed from the end of the image, the free set and
 * the compressed runs.
 * Clusters already allocated are rewritten in place; zeroed ones keep their
 * host cluster (a preallocation), so nothing is ever freed while open.
 *
 * The incomplete mark (QCOW2_INCOMPAT_LSM_INCOMPLETE) goes to disk before
 * the first change (mark_incomplete) and is cleared by the last header
 * write of finish; opening writes nothing.
 *
 * Memory: the L1 table (at most 32 MiB, QEMU's limit), one bit per L1 entry
 * ("fresh" L2 tables: allocated but never written, read back as zeroes), a
 * small LRU write-back cache of L2 tables, and the free set as sorted ranges.
 * Opening also uses, temporarily, a bitmap of referenced clusters (at most
 * 16 MiB; skipped for larger images, which then keep any leaks they have;
 * an incomplete image that large is refused, its refcounts cannot be
 * rebuilt without it).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "config.h"
#include "error.h"
#include "fileio.h"
#include "image-internal.h"
#include "qcow2.h"
#include "qcow2-ident.h"
#include "qcow2-writer.h"
#include "util.h"

#define BUF_ALIGN 4096u
/* L2 cache: at most this many tables, and at most this many bytes (but
 * always at least L2_CACHE_MIN tables). */
#define L2_CACHE_MAX_TABLES 64u
#define L2_CACHE_MAX_BYTES (8u * 1024 * 1024)
#define L2_CACHE_MIN 4u
/* Chunk for streaming refcount structures. */
#define STREAM_BYTES (1u * 1024 * 1024)
/* Host offsets must fit in bits 9..55 of L1/L2 entries. */
#define QCOW2_MAX_HOST_OFFSET (1ULL << 56)
/* Bound on the number of free ranges kept when opening an image. */
#define MAX_FREE_RANGES (1u << 20)
/* Opening an image uses a temporary bitmap of referenced clusters (to find
 * leaks and clusters used twice) when it needs at most this many bytes. */
#define MAX_REFMAP_BYTES (16u * 1024 * 1024)
/* In an opened regular file, clusters in use (by the refcounts, or by the
 * references of an incomplete image) may lie at most this far past the end
 * of the file: leaks of a crashed QEMU, clusters an interrupted writer
 * allocated but never wrote.  More is a corrupt image, whose refcount
 * structures finish would have to write up to that end. */
#define MAX_PAST_EOF (1ULL << 30)
/* Compressed output: bytes per compression job (at least a cluster), and
 * the compression threads: four, as QEMU's qcow2 driver compresses at most
 * four clusters at a time (QCOW2_MAX_THREADS), whatever the processors. */
#define COMPRESS_BATCH_BYTES (1u * 1024 * 1024)
#define COMPRESS_THREADS 4u
#define COMPRESS_MAX_THREADS COMPRESS_THREADS

struct l2_slot {
    uint64_t l1_index;          /* UINT64_MAX: empty */
    uint8_t *table;             /* one cluster, big-endian entries; NULL until first use */
    uint64_t lru;
    bool dirty;
};

struct crange {                 /* [start, end) in clusters */
    uint64_t start, end;
};

/* Compressed host clusters: refcounts of the clusters first..first+n-1 are
 * counts[base..base+n-1] (a run grows while compressed data is appended
 * contiguously; clusters in increasing order). */
struct cseg {
    uint64_t first;
    uint64_t n;
    size_t base;
};

struct cpool;

struct qcow2_writer {
    int fd;
    uint32_t align;
    bool is_blockdev;
    uint64_t dev_size;          /* block devices: usable size in bytes */

    unsigned cluster_bits;
    uint32_t cluster_size;
    unsigned refcount_order;
    bool extended_l2;
    unsigned l2_entry_size;     /* 8 or 16 */
    uint64_t l2_entries;        /* entries per L2 table */
    uint64_t size;              /* virtual size */
    uint64_t guest_end;         /* size rounded up to clusters */

    uint32_t l1_size;
    uint64_t l1_offset;
    uint8_t *l1;                /* big-endian; l1_buf_len bytes */
    size_t l1_buf_len;
    uint8_t *fresh;             /* bit per L1 entry */

    uint8_t *hdr;               /* first cluster as it goes to disk */
    size_t hdr_write_len;       /* bytes of hdr rewritten (multiple of align) */

    uint64_t next_free;         /* end of the image in bytes (cluster aligned) */

    struct l2_slot *cache;
    unsigned cache_n;
    uint64_t lru_clock;

    struct crange *free;        /* sorted, disjoint, non-adjacent */
    size_t nfree, free_cap;

    bool marked;                /* the incomplete bit is on disk (and in hdr) */
    uint64_t open_limit;        /* opening: clusters in use must end below this (bytes) */
    bool rebuild;               /* opened incomplete: refcounts are rebuilt from the references */
    bool resume;                /* opened by qcow2_writer_resume: garbage past the references is reused */

    /* Refcount area of the last checkpoint (clusters; rc_nrt 0: none): the
     * table (rc_nrt clusters) then the blocks (rc_nrb), rewritten in place by
     * later checkpoints and by finish while they cover the image. */
    uint64_t rc_start, rc_nrt, rc_nrb;
    bool hdr_dirty;             /* hdr names an area the header on disk does not */

    int failed;                 /* first write error: the writer is unusable */
    bool finished;

    /* Created images (the create path's options). */
    bool has_backing;
    uint8_t *hdr_v2;            /* version 2: the header finish writes instead of hdr */
    size_t hdr_v2_len;          /* its bytes in use, rounded up to align */
    uint64_t open_clusters;     /* opened image: guest clusters with a host cluster */

    /* Persistent bitmaps added (qcow2_writer_add_bitmap), written into the
     * directory and the header extension at finish. */
    struct wbitmap {
        char *name;
        unsigned gbits;
        bool autoload;
        uint64_t table_offset;
        uint32_t table_size;
    } *bitmaps;
    unsigned nbitmaps;

    /* Compressed output (qcow2_create_opts.compress). */
    bool compress;
    unsigned ctype;             /* QCOW2_COMPRESSION_* */
    uint64_t cpos;              /* next free byte in the partly filled compressed host
                                   cluster (0: none) */
    uint32_t ccount;            /* references to that cluster so far */
    uint32_t cmax;              /* most references one compressed host cluster takes */
    uint8_t *stage;             /* compressed bytes [sbase, sbase + slen) not yet written */
    size_t stage_cap, slen;
    uint64_t sbase;             /* aligned to align */
    struct cseg *csegs;
    size_t ncsegs, csegs_cap;
    uint16_t *ccounts;
    size_t nccounts, ccounts_cap;
    struct cpool *pool;         /* created by the first compressed write */
    pthread_mutex_t mu;         /* compressing: the writer's state, shared with the workers */
    int async_err;              /* a worker's failure, reported by the next call */
    char async_msg[512];
};

/* ---- small helpers ------------------------------------------------------ */

static uint64_t area_capacity(const struct qcow2_writer *w);


static void *aligned_alloc_zero(size_t len)
{
    void *p = NULL;
    if (len == 0)
        len = BUF_ALIGN;
    if (posix_memalign(&p, BUF_ALIGN, align_up(len, BUF_ALIGN)) != 0)
        return NULL;
    memset(p, 0, align_up(len, BUF_ALIGN));
    return p;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    ssize_t n = lsm_pread_all(fd, buf, len, off);
    if (n < 0)
        return (int)n;
    memset((char *)buf + n, 0, len - (size_t)n);   /* past end of file reads as zeroes */
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    ssize_t n = lsm_pwrite_all(fd, buf, len, off);
    if (n < 0)
        return (int)n;
    return (size_t)n < len ? -ENOSPC : 0;   /* a write that wrote nothing */
}

static const char *fmt_name(enum lsm_format f)
{
    switch (f) {
    case LSM_FMT_RAW: return "raw";
    case LSM_FMT_QCOW2: return "qcow2";
    default: return NULL;
    }
}

static int get_device(int fd, bool *is_blockdev, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat the destination");
    *is_blockdev = S_ISBLK(st.st_mode);
    if (*is_blockdev) {
        uint64_t sz;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
            return lsm_error_errno(-errno, "cannot get the size of the destination device");
        *size = sz;
    } else if (S_ISREG(st.st_mode)) {
        *size = (uint64_t)st.st_size;
    } else {
        return lsm_error(-EINVAL, "destination is neither a regular file nor a block device");
    }
    return 0;
}

static uint64_t l1_get(const struct qcow2_writer *w, uint64_t i)
{
    return be64_get(w->l1 + i * 8);
}

static void l1_put(struct qcow2_writer *w, uint64_t i, uint64_t v)
{
    be64_put(w->l1 + i * 8, v);
}

static bool fresh_test(const struct qcow2_writer *w, uint64_t i)
{
    return w->fresh[i / 8] & (1u << (i % 8));
}

static void fresh_set(struct qcow2_writer *w, uint64_t i, bool v)
{
    if (v)
        w->fresh[i / 8] |= (uint8_t)(1u << (i % 8));
    else
        w->fresh[i / 8] &= (uint8_t)~(1u << (i % 8));
}

static int writer_failed(struct qcow2_writer *w, int err)
{
    if (!w->failed)
        w->failed = err;
    return err;
}

static int check_usable(const struct qcow2_writer *w)
{
    if (w->finished)
        return lsm_error(-EINVAL, "qcow2 writer: image already finished");
    if (w->failed)
        return lsm_error_errno(w->failed, "qcow2 writer: an earlier metadata write failed");
    return 0;
}

/* A failure on a worker: kept (with its message) for the next call. */
static void async_fail(struct qcow2_writer *w, int err)
{
    if (w->async_err)
        return;
    w->async_err = err;
    snprintf(w->async_msg, sizeof w->async_msg, "%s", lsm_last_error());
}

static int check_async(const struct qcow2_writer *w)
{
    if (w->async_err)
        return lsm_error(w->async_err, "%s", w->async_msg);
    return 0;
}

/* Reserve `bytes` at the end of the image; does not move next_free. */
static int check_room(const struct qcow2_writer *w, uint64_t bytes, const char *what)
{
    uint64_t end = w->next_free + bytes;
    if (end < w->next_free || end > QCOW2_MAX_HOST_OFFSET)
        return lsm_error(-EFBIG, "cannot allocate %s: image would exceed the qcow2 limit of 64 PiB", what);
    if (w->is_blockdev && end > w->dev_size)
        return lsm_error(-ENOSPC, "cannot allocate %s: image needs %" PRIu64
                         " bytes but the device holds %" PRIu64 ": No space left on device",
                         what, end, w->dev_size);
    return 0;
}

/* Before the first change to an image: put the incomplete bit on disk,
 * durably, so that nothing opens a half-written image as complete. */
static int mark_incomplete(struct qcow2_writer *w)
{
    if (w->marked)
        return 0;
    uint8_t *f = w->hdr + offsetof(struct qcow2_header, incompatible_features);
    be64_put(f, be64_get(f) | QCOW2_INCOMPAT_LSM_INCOMPLETE);
    int r = pwrite_full(w->fd, w->hdr, w->hdr_write_len, 0);
    if (r < 0)
        return writer_failed(w, lsm_error_errno(r, "cannot mark the image incomplete (header at 0x0)"));
    if (fdatasync(w->fd) < 0)
        return writer_failed(w, lsm_error_errno(-errno, "cannot sync the incomplete mark in the header"));
    w->marked = true;
    return 0;
}

/* ---- free set ----------------------------------------------------------- */

static int free_add(struct qcow2_writer *w, uint64_t start, uint64_t end)
{
    if (start >= end)
        return 0;
    if (w->nfree && w->free[w->nfree - 1].end == start) {
        w->free[w->nfree - 1].end = end;
        return 0;
    }
    if (w->nfree == w->free_cap) {
        if (w->free_cap >= MAX_FREE_RANGES)
            return lsm_error(-EFBIG, "image free space is too fragmented (over %u free ranges)",
                             MAX_FREE_RANGES);
        size_t cap = w->free_cap ? w->free_cap * 2 : 64;
        struct crange *n = realloc(w->free, cap * sizeof *n);
        if (!n)
            return lsm_error(-ENOMEM, "cannot allocate the free-cluster list");
        w->free = n;
        w->free_cap = cap;
    }
    w->free[w->nfree++] = (struct crange){ start, end };
    return 0;
}

static int crange_cmp(const void *a, const void *b)
{
    const struct crange *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort, merge overlapping or adjacent ranges, drop everything at or past limit. */
static void free_normalize(struct qcow2_writer *w, uint64_t limit)
{
    if (!w->nfree)
        return;
    qsort(w->free, w->nfree, sizeof *w->free, crange_cmp);
    size_t o = 0;
    for (size_t i = 0; i < w->nfree; i++) {
        struct crange r = w->free[i];
        if (r.end > limit)
            r.end = limit;
        if (r.start >= r.end)
            continue;
        if (o && w->free[o - 1].end >= r.start) {
            if (r.end > w->free[o - 1].end)
                w->free[o - 1].end = r.end;
        } else {
            w->free[o++] = r;
        }
    }
    w->nfree = o;
}

static bool free_contains(const struct qcow2_writer *w, uint64_t c)
{
    size_t lo = 0, hi = w->nfree;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (w->free[mid].end <= c)
            lo = mid + 1;
        else if (w->free[mid].start > c)
            hi = mid;
        else
            return true;
    }
    return false;
}

/* ---- L2 cache ----------------------------------------------------------- */

static int l2_write_slot(struct qcow2_writer *w, struct l2_slot *s)
{
    uint64_t off = l1_get(w, s->l1_index) & QCOW2_L1E_OFFSET_MASK;
    int r = pwrite_full(w->fd, s->table, w->cluster_size, off);
    if (r < 0)
        return writer_failed(w, lsm_error_errno(r, "cannot write L2 table at 0x%" PRIx64, off));
    s->dirty = false;
    fresh_set(w, s->l1_index, false);
    return 0;
}

/* Get the L2 table of L1 entry l1i (which must point to a table). */
static int l2_get(struct qcow2_writer *w, uint64_t l1i, struct l2_slot **out)
{
    struct l2_slot *victim = NULL;
    for (unsigned i = 0; i < w->cache_n; i++) {
        struct l2_slot *s = &w->cache[i];
        if (s->l1_index == l1i) {
            s->lru = ++w->lru_clock;
            *out = s;
            return 0;
        }
        if (!victim || (victim->l1_index != UINT64_MAX &&
                        (s->l1_index == UINT64_MAX || s->lru < victim->lru)))
            victim = s;
    }
    if (victim->l1_index != UINT64_MAX && victim->dirty) {
        int r = l2_write_slot(w, victim);
        if (r < 0)
            return r;
    }
    victim->l1_index = UINT64_MAX;
    if (!victim->table) {
        victim->table = aligned_alloc_zero(w->cluster_size);
        if (!victim->table)
            return lsm_error(-ENOMEM, "cannot allocate an L2 table buffer");
    }
    uint64_t off = l1_get(w, l1i) & QCOW2_L1E_OFFSET_MASK;
    assert(off != 0);
    if (fresh_test(w, l1i)) {
        memset(victim->table, 0, w->cluster_size);
    } else {
        int r = pread_full(w->fd, victim->table, w->cluster_size, off);
        if (r < 0)
            return lsm_error_errno(r, "cannot read L2 table at 0x%" PRIx64, off);
    }
    victim->l1_index = l1i;
    victim->dirty = false;
    victim->lru = ++w->lru_clock;
    *out = victim;
    return 0;
}

/* ---- allocation --------------------------------------------------------- */

static int check_guest_range(const struct qcow2_writer *w, uint64_t guest, uint64_t len,
                             const char *what)
{
    if (len == 0 || !is_aligned(guest, w->cluster_size) || !is_aligned(len, w->cluster_size))
        return lsm_error(-EINVAL, "cannot %s guest range 0x%" PRIx64 "+0x%" PRIx64
                         ": not aligned to the cluster size %u", what, guest, len, w->cluster_size);
    if (guest >= w->guest_end || len > w->guest_end - guest)
        return lsm_error(-EINVAL, "cannot %s guest range 0x%" PRIx64 "+0x%" PRIx64
                         ": beyond the virtual size %" PRIu64, what, guest, len, w->size);
    return 0;
}

/* Host offset of guest cluster c (0: no host cluster; zero clusters with a
 * preallocated offset return it). */
static int lookup(struct qcow2_writer *w, uint64_t c, uint64_t *off)
{
    uint64_t l1i = c / w->l2_entries;
    *off = 0;
    if ((l1_get(w, l1i) & QCOW2_L1E_OFFSET_MASK) == 0)
        return 0;
    struct l2_slot *s;
    int r = l2_get(w, l1i, &s);
    if (r < 0)
        return r;
    uint64_t e = be64_get(s->table + (c % w->l2_entries) * w->l2_entry_size);
    if (e & QCOW2_OFLAG_COMPRESSED)
        return lsm_error(-EINVAL, "guest cluster at 0x%" PRIx64 " is compressed: it cannot be "
                         "rewritten", c << w->cluster_bits);
    *off = e & QCOW2_L2E_OFFSET_MASK;
    return 0;
}

/* L1 entries of [guest, guest+len) without an L2 table. */
static uint64_t count_new_tables(const struct qcow2_writer *w, uint64_t guest, uint64_t len)
{
    uint64_t first = (guest >> w->cluster_bits) / w->l2_entries;
    uint64_t last = (((guest + len) >> w->cluster_bits) - 1) / w->l2_entries;
    uint64_t n = 0;
    for (uint64_t l1i = first; l1i <= last; l1i++)
        if ((l1_get(w, l1i) & QCOW2_L1E_OFFSET_MASK) == 0)
            n++;
    return n;
}

/* Give every L1 entry of the range an L2 table (fresh: zero on read). */
static void alloc_tables(struct qcow2_writer *w, uint64_t guest, uint64_t len)
{
    uint64_t first = (guest >> w->cluster_bits) / w->l2_entries;
    uint64_t last = (((guest + len) >> w->cluster_bits) - 1) / w->l2_entries;
    for (uint64_t l1i = first; l1i <= last; l1i++) {
        if ((l1_get(w, l1i) & QCOW2_L1E_OFFSET_MASK) == 0) {
            l1_put(w, l1i, w->next_free | QCOW2_OFLAG_COPIED);
            fresh_set(w, l1i, true);
            w->next_free += w->cluster_size;
        }
    }
}

/* Fill the entries of the range.  host == UINT64_MAX marks zero clusters,
 * keeping the host cluster of a data cluster as a preallocation (its
 * refcount stays 1, so a later alloc reuses it); otherwise the clusters
 * become data at host, host + cluster size, ... */
static int fill_entries(struct qcow2_writer *w, uint64_t guest, uint64_t len, uint64_t host)
{
    uint64_t c = guest >> w->cluster_bits, end = c + (len >> w->cluster_bits);
    while (c < end) {
        uint64_t l1i = c / w->l2_entries;
        uint64_t idx = c % w->l2_entries;
        uint64_t n = MIN(end - c, w->l2_entries - idx);
        struct l2_slot *s;
        int r = l2_get(w, l1i, &s);
        if (r < 0)
            return writer_failed(w, r);
        for (uint64_t i = idx; i < idx + n; i++) {
            uint8_t *e = s->table + i * w->l2_entry_size;
            if (host == UINT64_MAX) {
                uint64_t off = be64_get(e) & QCOW2_L2E_OFFSET_MASK;
                uint64_t copied = off ? QCOW2_OFLAG_COPIED : 0;
                if (w->extended_l2) {
                    be64_put(e, off | copied);
                    be64_put(e + 8, QCOW2_SUB_ALL_ZERO);
                } else {
                    be64_put(e, off | copied | QCOW2_OFLAG_ZERO);
                }
            } else {
                be64_put(e, host | QCOW2_OFLAG_COPIED);
                if (w->extended_l2)
                    be64_put(e + 8, QCOW2_SUB_ALL_ALLOC);
                host += w->cluster_size;
            }
        }
        s->dirty = true;
        c += n;
    }
    return 0;
}

static int writer_alloc(struct qcow2_writer *w, uint64_t guest, uint64_t len, uint64_t *host,
                        uint64_t *mapped)
{
    int r = check_usable(w);
    if (r < 0)
        return r;
    r = check_guest_range(w, guest, len, "allocate");
    if (r < 0)
        return r;
    uint64_t c0 = guest >> w->cluster_bits, n = len >> w->cluster_bits;
    uint64_t first, off, run = 1;
    r = lookup(w, c0, &first);
    if (r < 0)
        return r;
    if (first) {
        /* Clusters that have a host cluster are rewritten in place: the
         * longest run that is host-contiguous. */
        for (; run < n; run++) {
            r = lookup(w, c0 + run, &off);
            if (r < 0)
                return r;
            if (off != first + (run << w->cluster_bits))
                break;
        }
        r = mark_incomplete(w);
        if (r < 0)
            return r;
        *host = first;
        *mapped = run << w->cluster_bits;
        return fill_entries(w, guest, *mapped, first);
    }
    /* Unallocated clusters: a new run at the end of the image. */
    for (; run < n; run++) {
        r = lookup(w, c0 + run, &off);
        if (r < 0)
            return r;
        if (off)
            break;
    }
    uint64_t rlen = run << w->cluster_bits;
    uint64_t new_tables = count_new_tables(w, guest, rlen);
    if (new_tables > (UINT64_MAX - rlen) >> w->cluster_bits)
        return lsm_error(-EFBIG, "cannot allocate guest range 0x%" PRIx64 ": too large", guest);
    r = check_room(w, (new_tables << w->cluster_bits) + rlen, "data clusters");
    if (r < 0)
        return r;
    r = mark_incomplete(w);
    if (r < 0)
        return r;
    alloc_tables(w, guest, rlen);
    *host = w->next_free;
    *mapped = rlen;
    w->next_free += rlen;
    return fill_entries(w, guest, rlen, *host);
}

int qcow2_writer_alloc(struct qcow2_writer *w, uint64_t guest, uint64_t len, uint64_t *host,
                       uint64_t *mapped)
{
    if (!w->compress)
        return writer_alloc(w, guest, len, host, mapped);
    pthread_mutex_lock(&w->mu);
    int r = check_async(w);
    if (r == 0)
        r = writer_alloc(w, guest, len, host, mapped);
    pthread_mutex_unlock(&w->mu);
    return r;
}

static int zero_as_data(struct qcow2_writer *w, uint64_t guest, uint64_t len);
static int writer_zero(struct qcow2_writer *w, uint64_t guest, uint64_t len);

int qcow2_writer_zero(struct qcow2_writer *w, uint64_t guest, uint64_t len)
{
    if (!w->compress)
        return writer_zero(w, guest, len);
    pthread_mutex_lock(&w->mu);
    int r = check_async(w);
    if (r == 0)
        r = writer_zero(w, guest, len);
    pthread_mutex_unlock(&w->mu);
    return r;
}

static int writer_zero(struct qcow2_writer *w, uint64_t guest, uint64_t len)
{
    int r = check_usable(w);
    if (r < 0)
        return r;
    r = check_guest_range(w, guest, len, "zero");
    if (r < 0)
        return r;
    for (uint64_t c = guest >> w->cluster_bits; w->compress && c < (guest + len) >> w->cluster_bits; c++) {
        uint64_t off;
        r = lookup(w, c, &off);   /* (refuses a compressed cluster) */
        if (r < 0)
            return r;
    }
    if (w->hdr_v2)
        return zero_as_data(w, guest, len);
    r = check_room(w, count_new_tables(w, guest, len) << w->cluster_bits, "L2 tables");
    if (r < 0)
        return r;
    r = mark_incomplete(w);
    if (r < 0)
        return r;
    alloc_tables(w, guest, len);
    return fill_entries(w, guest, len, UINT64_MAX);
}

unsigned qcow2_writer_version(const struct qcow2_writer *w)
{
    return w->hdr_v2 ? 2 : 3;
}

uint32_t qcow2_writer_cluster_size(const struct qcow2_writer *w)
{
    return w->cluster_size;
}

uint64_t qcow2_writer_virtual_size(const struct qcow2_writer *w)
{
    return w->size;
}


/* Set entry i of a refcount block (which holds 0 there) to v. */
static void refcount_put(uint8_t *block, uint64_t i, unsigned order, uint64_t v)
{
    switch (order) {
    case 0: block[i / 8] = (uint8_t)((block[i / 8] & ~(1u << (i % 8))) | (v & 1) << (i % 8)); break;
    case 1: block[i / 4] = (uint8_t)((block[i / 4] & ~(3u << (2 * (i % 4)))) | (v & 3) << (2 * (i % 4))); break;
    case 2: block[i / 2] = (uint8_t)((block[i / 2] & ~(15u << (4 * (i % 2)))) | (v & 15) << (4 * (i % 2))); break;
    case 3: block[i] = (uint8_t)v; break;
    case 4: be16_put(block + 2 * i, (uint16_t)v); break;
    case 5: be32_put(block + 4 * i, (uint32_t)v); break;
    default: be64_put(block + 8 * i, v); break;
    }
}

/* ---- compressed clusters ------------------------------------------------ */

/* Compression runs off the caller's thread: qcow2_writer_write_compressed
 * copies the data into a free job (waiting for one when all are taken) and
 * returns; COMPRESS_THREADS worker threads each compress a whole job, then
 * place it under the writer's lock (L2 entries, refcounts, the staged
 * write).  zlib at level 6
 * compresses 64 KiB clusters at a few tens of MB/s per core, far slower
 * than the I/O around it, so the event loop that calls the writer keeps
 * reading while the workers compress.  Jobs: one more than the workers,
 * each holding a batch of input and of output. */
enum { JOB_FREE, JOB_QUEUED, JOB_BUSY };

struct cjob {
    int state;
    uint64_t seq;               /* queued in this order: oldest first */
    uint64_t guest;
    size_t n;                   /* clusters */
    uint8_t *in, *out;          /* n clusters each (out: cs - 1 bytes used per cluster) */
    ssize_t *olen;
};

struct cpool {
    pthread_mutex_t mu;         /* the jobs' states; taken after w->mu, never before */
    pthread_cond_t work, freed;
    unsigned nthreads;
    pthread_t th[COMPRESS_MAX_THREADS];
    struct qcow2_compressor *comp[COMPRESS_MAX_THREADS];
    struct cjob jobs[COMPRESS_MAX_THREADS + 1];
    unsigned njobs;
    size_t batch;               /* clusters per job */
    uint64_t seq;
    bool quit;
    struct qcow2_writer *w;
};

struct cworker {
    struct cpool *p;
    unsigned id;
};

static int place_job(struct qcow2_writer *w, struct cjob *j);

static struct cjob *oldest_queued(struct cpool *p)
{
    struct cjob *best = NULL;
    for (unsigned i = 0; i < p->njobs; i++)
        if (p->jobs[i].state == JOB_QUEUED && (!best || p->jobs[i].seq < best->seq))
            best = &p->jobs[i];
    return best;
}

static void *cpool_main(void *arg)
{
    struct cworker *cw = arg;
    struct cpool *p = cw->p;
    struct qcow2_compressor *comp = p->comp[cw->id];
    uint32_t cs = p->w->cluster_size;
    free(cw);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct cjob *j = NULL;
        while (!p->quit && !(j = oldest_queued(p)))
            pthread_cond_wait(&p->work, &p->mu);
        if (p->quit)
            break;
        j->state = JOB_BUSY;
        pthread_mutex_unlock(&p->mu);
        for (size_t i = 0; i < j->n; i++)
            j->olen[i] = qcow2_compress(comp, j->in + i * cs, cs, j->out + i * cs, cs - 1);
        pthread_mutex_lock(&p->w->mu);
        int r = place_job(p->w, j);
        if (r < 0)
            async_fail(p->w, r);
        pthread_mutex_unlock(&p->w->mu);
        pthread_mutex_lock(&p->mu);
        j->state = JOB_FREE;
        pthread_cond_broadcast(&p->freed);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Wait until every job is placed. */
static void cpool_drain(struct cpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        bool busy = false;
        for (unsigned i = 0; i < p->njobs; i++)
            busy |= p->jobs[i].state != JOB_FREE;
        if (!busy)
            break;
        pthread_cond_wait(&p->freed, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
}

/* Stop the workers (a job being compressed is finished and placed; queued
 * ones are dropped: the image stays incomplete) and free the pool. */
static void cpool_free(struct cpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->th[i], NULL);
    for (unsigned i = 0; i < COMPRESS_MAX_THREADS; i++)
        qcow2_compressor_free(p->comp[i]);
    for (unsigned i = 0; i < p->njobs; i++) {
        free(p->jobs[i].in);
        free(p->jobs[i].out);
        free(p->jobs[i].olen);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->freed);
    free(p);
}

static int cpool_new(struct qcow2_writer *w, struct cpool **out)
{
    struct cpool *p = calloc(1, sizeof *p);
    if (!p)
        return lsm_error(-ENOMEM, "cannot allocate the compression threads");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->freed, NULL);
    p->w = w;
    uint32_t cs = w->cluster_size;
    p->batch = MAX(1u, COMPRESS_BATCH_BYTES / cs);
    unsigned nt = COMPRESS_THREADS;
    int r = 0;
    p->njobs = nt + 1;
    for (unsigned i = 0; r == 0 && i < p->njobs; i++) {
        struct cjob *j = &p->jobs[i];
        j->in = aligned_alloc_zero(p->batch * cs);   /* (aligned: stored clusters are written from it) */
        j->out = malloc(p->batch * cs);
        j->olen = calloc(p->batch, sizeof *j->olen);
        if (!j->in || !j->out || !j->olen)
            r = lsm_error(-ENOMEM, "cannot allocate the compression buffers");
    }
    for (unsigned i = 0; r == 0 && i < nt; i++)
        r = qcow2_compressor_new(w->ctype, &p->comp[i]);
    for (unsigned i = 0; r == 0 && i < nt; i++) {
        struct cworker *cw = malloc(sizeof *cw);
        if (!cw) {
            r = lsm_error(-ENOMEM, "cannot allocate a compression thread");
            break;
        }
        *cw = (struct cworker){ p, i };
        int e = pthread_create(&p->th[p->nthreads], NULL, cpool_main, cw);
        if (e) {
            free(cw);
            r = lsm_error_errno(-e, "cannot start a compression thread");
            break;
        }
        p->nthreads++;
    }
    if (r < 0) {
        cpool_free(p);
        return r;
    }
    *out = p;
    return 0;
}

/* One more reference to host cluster hc (clusters come in increasing order). */
static int cref_add(struct qcow2_writer *w, uint64_t hc)
{
    struct cseg *g = w->ncsegs ? &w->csegs[w->ncsegs - 1] : NULL;
    if (g && hc == g->first + g->n - 1) {
        w->ccounts[g->base + g->n - 1]++;
        return 0;
    }
    if (w->nccounts == w->ccounts_cap) {
        size_t cap = w->ccounts_cap ? w->ccounts_cap * 2 : 1024;
        uint16_t *n = realloc(w->ccounts, cap * sizeof *n);
        if (!n)
            return lsm_error(-ENOMEM, "cannot allocate compressed-cluster refcounts");
        w->ccounts = n;
        w->ccounts_cap = cap;
    }
    if (!g || hc != g->first + g->n) {
        if (w->ncsegs == w->csegs_cap) {
            size_t cap = w->csegs_cap ? w->csegs_cap * 2 : 64;
            struct cseg *n = realloc(w->csegs, cap * sizeof *n);
            if (!n)
                return lsm_error(-ENOMEM, "cannot allocate compressed-cluster refcounts");
            w->csegs = n;
            w->csegs_cap = cap;
        }
        g = &w->csegs[w->ncsegs++];
        *g = (struct cseg){ hc, 0, w->nccounts };
    }
    w->ccounts[w->nccounts++] = 1;
    g->n++;
    return 0;
}

/* Write the staged compressed bytes (padded with zeroes to align: the
 * padding lies in clusters of ours); the last partial aligned block stays
 * staged, as the next compressed cluster may continue it. */
static int stage_flush(struct qcow2_writer *w, bool keep_tail)
{
    if (!w->slen)
        return 0;
    size_t len = align_up(w->slen, w->align);
    memset(w->stage + w->slen, 0, len - w->slen);
    int r = pwrite_full(w->fd, w->stage, len, w->sbase);
    if (r < 0)
        return writer_failed(w, lsm_error_errno(r, "cannot write compressed clusters at 0x%" PRIx64,
                                                w->sbase));
    size_t keep = keep_tail ? w->slen % w->align : 0;
    size_t whole = w->slen - w->slen % w->align;
    if (keep)
        memmove(w->stage, w->stage + whole, keep);
    w->sbase += keep_tail ? whole : len;
    w->slen = keep;
    return 0;
}

/* Place a compressed cluster of clen bytes (< cluster size) for guest
 * cluster gc: after the previous one when that host cluster has room for
 * another reference (and, if it spills over, is the last cluster of the
 * image), else in a new host cluster at the end. */
static int put_compressed(struct qcow2_writer *w, uint64_t gc, const uint8_t *data, size_t clen)
{
    uint64_t cs = w->cluster_size;
    uint64_t guest = gc << w->cluster_bits;
    int r = check_room(w, count_new_tables(w, guest, cs) << w->cluster_bits, "L2 tables");
    if (r < 0)
        return r;
    alloc_tables(w, guest, cs);
    uint64_t pos = w->cpos;
    bool cont = pos && w->ccount < w->cmax &&
                (pos + clen <= align_up(pos, cs) || align_up(pos, cs) == w->next_free);
    uint64_t spill = 0;   /* bytes of new clusters taken at the end */
    if (cont) {
        if (pos + clen > align_up(pos, cs))
            spill = cs;
    } else {
        pos = w->next_free;
        spill = cs;
    }
    if (pos + clen > qcow2_coffset_mask(w->cluster_bits))
        return lsm_error(-EFBIG, "cannot write a compressed cluster at 0x%" PRIx64
                         ": beyond what a compressed cluster descriptor can address", pos);
    if (spill) {
        r = check_room(w, spill, "compressed clusters");
        if (r < 0)
            return r;
        w->next_free += spill;
    }
    /* Staging: contiguous with what is staged, or a fresh start. */
    if (!(w->slen && w->sbase + w->slen == pos)) {
        r = stage_flush(w, false);
        if (r < 0)
            return r;
        w->sbase = align_down(pos, w->align);
        /* The bytes of the aligned block before pos: written already (by
         * the previous compressed cluster's flush, kept in the stage), or
         * the start of a new cluster (pos aligned). */
        assert(w->sbase == pos);
    }
    if (w->slen + clen > w->stage_cap) {
        r = stage_flush(w, true);
        if (r < 0)
            return r;
    }
    memcpy(w->stage + w->slen, data, clen);
    w->slen += clen;

    /* References: the host clusters the sectors of the data touch. */
    uint64_t first = pos >> w->cluster_bits, last = (pos + clen - 1) >> w->cluster_bits;
    for (uint64_t hc = first; hc <= last; hc++) {
        r = cref_add(w, hc);
        if (r < 0)
            return r;
    }
    uint64_t end = pos + clen;
    if (is_aligned(end, cs)) {
        w->cpos = 0;
        w->ccount = 0;
    } else {
        w->ccount = last == first && cont ? w->ccount + 1 : 1;
        w->cpos = end;
    }

    uint64_t nsec = ((pos + clen - 1) >> 9) - (pos >> 9);
    struct l2_slot *s;
    r = l2_get(w, gc / w->l2_entries, &s);
    if (r < 0)
        return writer_failed(w, r);
    uint8_t *e = s->table + (gc % w->l2_entries) * w->l2_entry_size;
    be64_put(e, QCOW2_OFLAG_COMPRESSED | (nsec << qcow2_csize_shift(w->cluster_bits)) | pos);
    if (w->extended_l2)
        be64_put(e + 8, 0);
    s->dirty = true;
    return 0;
}

bool qcow2_writer_compressing(const struct qcow2_writer *w)
{
    return w->compress;
}

/* Place a compressed job (with w->mu held): each cluster compressed, or
 * stored as it is; its L2 entries hold placeholders until then. */
static int place_job(struct qcow2_writer *w, struct cjob *j)
{
    int r = check_async(w);
    if (r == 0)
        r = check_usable(w);
    if (r < 0)
        return r;
    uint64_t cs = w->cluster_size;
    for (size_t i = 0; i < j->n;) {
        uint64_t g = j->guest + i * cs, gc = g >> w->cluster_bits;
        ssize_t clen = j->olen[i];
        if (clen < 0)
            return lsm_error_errno((int)clen, "cannot compress guest cluster at 0x%" PRIx64, g);
        if (clen > 0) {
            r = put_compressed(w, gc, j->out + i * cs, (size_t)clen);
            if (r < 0)
                return r;
            i++;
            continue;
        }
        /* Clusters that do not compress below a cluster are stored as they
         * are (as QEMU does): the run of them, in as few writes as the
         * allocation allows. */
        size_t k = i;
        while (k < j->n && j->olen[k] == 0)
            k++;
        for (uint64_t c = gc; c < gc + (k - i); c++) {
            struct l2_slot *s;
            r = l2_get(w, c / w->l2_entries, &s);
            if (r < 0)
                return writer_failed(w, r);
            memset(s->table + (c % w->l2_entries) * w->l2_entry_size, 0, w->l2_entry_size);
        }
        for (uint64_t done = 0, len = (k - i) * cs; done < len;) {
            uint64_t host, mapped;
            r = writer_alloc(w, g + done, len - done, &host, &mapped);
            if (r < 0)
                return r;
            r = pwrite_full(w->fd, j->in + i * cs + done, mapped, host);
            if (r < 0)
                return writer_failed(w, lsm_error_errno(r, "cannot write data clusters at 0x%" PRIx64,
                                                        host));
            done += mapped;
        }
        i = k;
    }
    return stage_flush(w, true);
}

/* Check the range and put placeholders (the compressed flag alone) in its
 * L2 entries, so that it is written once (with w->mu held). */
static int reserve_compressed(struct qcow2_writer *w, uint64_t guest, uint64_t len)
{
    int r = check_async(w);
    if (r == 0)
        r = check_usable(w);
    if (r < 0)
        return r;
    if (!w->compress)
        return lsm_error(-EINVAL, "qcow2 writer: compressed writes need an image created with "
                         "compression");
    r = check_guest_range(w, guest, len, "compress");
    if (r < 0)
        return r;
    uint64_t c0 = guest >> w->cluster_bits, end = (guest + len) >> w->cluster_bits;
    for (uint64_t c = c0; c < end; c++) {
        uint64_t off;
        r = lookup(w, c, &off);    /* (refuses a compressed or reserved cluster) */
        if (r < 0)
            return r;
        if (off)
            return lsm_error(-EINVAL, "cannot compress guest cluster at 0x%" PRIx64
                             ": it has a host cluster already", c << w->cluster_bits);
    }
    r = check_room(w, count_new_tables(w, guest, len) << w->cluster_bits, "L2 tables");
    if (r < 0)
        return r;
    r = mark_incomplete(w);
    if (r < 0)
        return r;
    if (!w->pool) {
        r = cpool_new(w, &w->pool);
        if (r < 0)
            return r;
    }
    alloc_tables(w, guest, len);
    for (uint64_t c = c0; c < end; c++) {
        struct l2_slot *s;
        r = l2_get(w, c / w->l2_entries, &s);
        if (r < 0)
            return writer_failed(w, r);
        uint8_t *e = s->table + (c % w->l2_entries) * w->l2_entry_size;
        memset(e, 0, w->l2_entry_size);
        be64_put(e, QCOW2_OFLAG_COMPRESSED);
        s->dirty = true;
    }
    return 0;
}

int qcow2_writer_write_compressed(struct qcow2_writer *w, uint64_t guest, const void *buf,
                                  uint64_t len)
{
    pthread_mutex_lock(&w->mu);
    int r = reserve_compressed(w, guest, len);
    pthread_mutex_unlock(&w->mu);
    if (r < 0)
        return r;
    struct cpool *p = w->pool;
    uint64_t cs = w->cluster_size;
    const uint8_t *src = buf;
    for (uint64_t done = 0; done < len;) {
        size_t n = (size_t)MIN((uint64_t)p->batch, (len - done) >> w->cluster_bits);
        pthread_mutex_lock(&p->mu);
        struct cjob *j = NULL;
        for (;;) {
            for (unsigned i = 0; i < p->njobs && !j; i++)
                if (p->jobs[i].state == JOB_FREE)
                    j = &p->jobs[i];
            if (j)
                break;
            pthread_cond_wait(&p->freed, &p->mu);
        }
        memcpy(j->in, src + done, n * cs);
        j->guest = guest + done;
        j->n = n;
        j->seq = p->seq++;
        j->state = JOB_QUEUED;
        pthread_cond_signal(&p->work);
        pthread_mutex_unlock(&p->mu);
        done += (uint64_t)n * cs;
    }
    return 0;
}

/* Refcounts of the compressed host clusters in [lo, hi) into block (whose
 * first entry is cluster lo0). */
static void apply_crefs(const struct qcow2_writer *w, uint8_t *block, uint64_t lo0, uint64_t lo,
                        uint64_t hi)
{
    size_t a = 0, b = w->ncsegs;
    while (a < b) {          /* first segment ending after lo */
        size_t m = a + (b - a) / 2;
        if (w->csegs[m].first + w->csegs[m].n <= lo)
            a = m + 1;
        else
            b = m;
    }
    for (size_t i = a; i < w->ncsegs && w->csegs[i].first < hi; i++) {
        const struct cseg *g = &w->csegs[i];
        uint64_t from = MAX(g->first, lo), to = MIN(g->first + g->n, hi);
        for (uint64_t c = from; c < to; c++)
            refcount_put(block, c - lo0, w->refcount_order, w->ccounts[g->base + (c - g->first)]);
    }
}

/* ---- header area -------------------------------------------------------- */

struct hdr_ext {
    uint32_t type;
    uint32_t len;
    const void *data;
};

/* Lay out header (hlen bytes), extensions, end marker and backing name in a
 * zeroed cluster buffer out; sets the backing offset/size fields.  Returns
 * the bytes used or -ENOSPC. */
static long layout_header(uint8_t *out, uint32_t cluster_size, const uint8_t *header, uint32_t hlen,
                          const struct hdr_ext *exts, size_t nexts, const char *backing)
{
    size_t pos = hlen;
    size_t blen = backing ? strlen(backing) : 0;
    size_t need = hlen + 8 + blen;
    for (size_t i = 0; i < nexts; i++)
        need += 8 + align_up(exts[i].len, 8);
    if (need > cluster_size)
        return -ENOSPC;
    memset(out, 0, cluster_size);
    memcpy(out, header, hlen);
    for (size_t i = 0; i < nexts; i++) {
        be32_put(out + pos, exts[i].type);
        be32_put(out + pos + 4, exts[i].len);
        if (exts[i].len)
            memcpy(out + pos + 8, exts[i].data, exts[i].len);
        pos += 8 + align_up(exts[i].len, 8);
    }
    pos += 8;                   /* end of extensions (zeroes) */
    if (backing) {
        memcpy(out + pos, backing, blen);
        be64_put(out + offsetof(struct qcow2_header, backing_file_offset), pos);
        be32_put(out + offsetof(struct qcow2_header, backing_file_size), (uint32_t)blen);
        pos += blen;
    } else {
        be64_put(out + offsetof(struct qcow2_header, backing_file_offset), 0);
        be32_put(out + offsetof(struct qcow2_header, backing_file_size), 0);
    }
    return (long)pos;
}

struct feature_name {
    uint8_t type, bit;
    char name[46];
} __attribute__((packed));
static_assert(sizeof(struct feature_name) == 48, "feature name table entry");

static const struct feature_name feature_table[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
    { 0, 63, "lsm-sync incomplete copy" },
};
#define MAX_HDR_EXTS 64

/* The extensions of a header area the reader validated (qcow2_parse_header):
 * every extension but skip_type, into exts (at most MAX_HDR_EXTS - 2, room
 * for two more); *area_end is where the old extensions and backing name
 * end.  Like QEMU, the area ends at the backing file name when that comes
 * first (old images store the name right after the header). */
static int collect_exts(const uint8_t *old, uint32_t cs, uint32_t hlen, uint32_t skip_type,
                        struct hdr_ext *exts, size_t *n_out, size_t *area_end)
{
    uint64_t boff = be64_get(old + offsetof(struct qcow2_header, backing_file_offset));
    uint32_t bsize = be32_get(old + offsetof(struct qcow2_header, backing_file_size));
    size_t ext_end = boff > hlen && boff < cs ? boff : cs;
    size_t n = 0, end = hlen;
    for (size_t pos = hlen; pos + 8 <= ext_end;) {
        uint32_t type = be32_get(old + pos), len = be32_get(old + pos + 4);
        if (type == QCOW2_EXT_END) {
            end = pos + 8;
            break;
        }
        if (len > ext_end - pos - 8)
            return lsm_error(-EINVAL, "corrupt image: header extension 0x%x overflows the "
                             "first cluster", type);
        if (type != skip_type) {
            if (n == MAX_HDR_EXTS - 2)
                return lsm_error(-ENOTSUP, "too many header extensions");
            exts[n++] = (struct hdr_ext){ type, len, old + pos + 8 };
        }
        pos += 8 + align_up(len, 8);
        end = pos;
    }
    if (boff && boff <= cs && bsize <= cs - boff)
        end = MAX(end, boff + bsize);
    *n_out = n;
    *area_end = end;
    return 0;
}

/* In an opened image, name our incomplete bit in its feature-name table, or
 * in a new table with that one entry (QEMU then says "Unsupported qcow2
 * feature(s): lsm-sync incomplete copy"), in memory: it reaches the disk
 * with the mark.  Like create, only when the first cluster keeps room for
 * the longest backing name and format qcow2_set_backing() may write; left
 * as it is when the table names the bit already. */
static void name_incomplete_feature(struct qcow2_writer *w, uint32_t hlen, const char *backing)
{
    struct hdr_ext exts[MAX_HDR_EXTS];
    size_t n, end;
    lsm_error_clear();
    if (collect_exts(w->hdr, w->cluster_size, hlen, QCOW2_EXT_END, exts, &n, &end) < 0) {
        lsm_error_clear();
        return;
    }
    const struct feature_name *ours = &feature_table[ARRAY_SIZE(feature_table) - 1];
    size_t k;
    for (k = 0; k < n && exts[k].type != QCOW2_EXT_FEATURE_TABLE; k++)
        ;
    if (k == n)
        exts[n++] = (struct hdr_ext){ QCOW2_EXT_FEATURE_TABLE, 0, NULL };
    if (exts[k].len % sizeof *ours || exts[k].len > w->cluster_size - sizeof *ours)
        return;
    const uint8_t *t = exts[k].data;
    for (size_t i = 0; i < exts[k].len; i += sizeof *ours)
        if (t[i] == ours->type && t[i + 1] == ours->bit)
            return;
    _cleanup_free_ uint8_t *table = malloc(exts[k].len + sizeof *ours);
    _cleanup_free_ uint8_t *neu = aligned_alloc_zero(w->cluster_size);
    if (!table || !neu)
        return;
    if (exts[k].len)
        memcpy(table, t, exts[k].len);
    memcpy(table + exts[k].len, ours, sizeof *ours);
    exts[k] = (struct hdr_ext){ QCOW2_EXT_FEATURE_TABLE, exts[k].len + (uint32_t)sizeof *ours, table };
    long used = layout_header(neu, w->cluster_size, w->hdr, hlen, exts, n, backing);
    size_t blen = backing ? strlen(backing) : 0;
    if (used < 0 || (size_t)used - blen + QCOW2_MAX_BACKING_NAME + 16 > w->cluster_size)
        return;
    memcpy(w->hdr, neu, w->cluster_size);
}

/* ---- create ------------------------------------------------------------- */

static int validate_opts(const struct qcow2_create_opts *o, unsigned *cbits, unsigned *rorder)
{
    unsigned cb = o->cluster_bits ? o->cluster_bits : 16;
    unsigned rb = o->refcount_bits ? o->refcount_bits : 16;
    if (cb < QCOW2_MIN_CLUSTER_BITS || cb > QCOW2_MAX_CLUSTER_BITS)
        return lsm_error(-EINVAL, "invalid cluster_bits %u: must be %d..%d",
                         cb, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    if (!is_pow2(rb) || rb > 64)
        return lsm_error(-EINVAL, "invalid refcount_bits %u: must be a power of two from 1 to 64", rb);
    if (o->extended_l2 && cb < 14)
        return lsm_error(-EINVAL, "extended L2 entries need a cluster size of at least 16 KiB");
    if (o->size % 512)
        return lsm_error(-EINVAL, "invalid virtual size %" PRIu64 ": not a multiple of 512", o->size);
    if (o->size > (uint64_t)INT64_MAX - (1ULL << cb))
        return lsm_error(-EINVAL, "invalid virtual size %" PRIu64 ": too large", o->size);
    if (o->compression_type != QCOW2_COMPRESSION_ZLIB && o->compression_type != QCOW2_COMPRESSION_ZSTD)
        return lsm_error(-EINVAL, "invalid compression type %u", o->compression_type);
    if (o->backing_name) {
        size_t n = strlen(o->backing_name);
        if (n == 0 || n > QCOW2_MAX_BACKING_NAME)
            return lsm_error(-EINVAL, "invalid backing file name length %zu: must be 1..%d",
                             n, QCOW2_MAX_BACKING_NAME);
    }
    if (o->backing_fmt != LSM_FMT_AUTO && !fmt_name(o->backing_fmt))
        return lsm_error(-EINVAL, "invalid backing format %d", (int)o->backing_fmt);
    *cbits = cb;
    *rorder = (unsigned)__builtin_ctz(rb);
    return 0;
}

static struct qcow2_writer *writer_new(int fd, uint32_t align, unsigned cbits)
{
    struct qcow2_writer *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->fd = fd;
    w->align = align;
    w->cluster_bits = cbits;
    w->cluster_size = 1u << cbits;
    return w;
}

/* Everything that depends on the geometry: L1 buffer, fresh bits, cache. */
static int writer_setup(struct qcow2_writer *w)
{
    w->l2_entry_size = w->extended_l2 ? 16 : 8;
    w->l2_entries = w->cluster_size / w->l2_entry_size;
    w->guest_end = align_up(w->size, w->cluster_size);
    w->l1_buf_len = align_up((uint64_t)w->l1_size * 8, MAX(w->align, BUF_ALIGN));
    w->l1 = aligned_alloc_zero(w->l1_buf_len);
    w->fresh = calloc(1, w->l1_size / 8 + 1);
    unsigned n = L2_CACHE_MAX_BYTES / w->cluster_size;
    w->cache_n = MAX(L2_CACHE_MIN, MIN(L2_CACHE_MAX_TABLES, n));
    w->cache = calloc(w->cache_n, sizeof *w->cache);
    if (!w->l1 || !w->fresh || !w->cache || !(w->hdr = aligned_alloc_zero(w->cluster_size)))
        return lsm_error(-ENOMEM, "cannot allocate qcow2 writer tables");
    for (unsigned i = 0; i < w->cache_n; i++)
        w->cache[i].l1_index = UINT64_MAX;
    return 0;
}

uint64_t qcow2_writer_meta_bytes(const struct qcow2_writer *w)
{
    uint64_t n = w->l1_buf_len + w->l1_size / 8 + 1 + (uint64_t)(w->cache_n + 1) * w->cluster_size;
    if (w->compress) {
        /* the jobs' input and output buffers (cpool_new) and the staging
         * buffer; the per-host-cluster counts come on top (2 bytes each) */
        uint64_t batch = MAX(1u, COMPRESS_BATCH_BYTES / w->cluster_size) * (uint64_t)w->cluster_size;
        n += (COMPRESS_THREADS + 1) * 2 * batch + MAX(w->cluster_size, COMPRESS_BATCH_BYTES) +
             w->align;
    }
    return n;
}

static int check_align(uint32_t align, uint32_t cluster_size)
{
    if (!is_pow2(align) || align > cluster_size)
        return lsm_error(-EINVAL, "I/O alignment %u must be a power of two no larger than "
                         "the cluster size %u", align, cluster_size);
    return 0;
}

/* What a version 2 image cannot have: refused as qemu-img refuses it. */
static int validate_version(const struct qcow2_create_opts *o)
{
    if (o->version != 0 && o->version != 2 && o->version != 3)
        return lsm_error(-EINVAL, "invalid qcow2 version %u: must be 2 or 3", o->version);
    if (o->version != 2)
        return 0;
    if (o->refcount_bits && o->refcount_bits != 16)
        return lsm_error(-EINVAL, "refcount widths other than 16 bits need compat=1.1 (qcow2 version 3)");
    if (o->extended_l2)
        return lsm_error(-EINVAL, "extended L2 entries need compat=1.1 (qcow2 version 3)");
    if (o->compression_type != QCOW2_COMPRESSION_ZLIB)
        return lsm_error(-EINVAL, "compression types other than zlib need compat=1.1 (qcow2 version 3)");
    if (o->lazy_refcounts)
        return lsm_error(-EINVAL, "lazy refcounts need compat=1.1 (qcow2 version 3)");
    return 0;
}

/* The version 2 header of a created image, laid out now (it only differs
 * from the version 3 one in the fields finish sets): the first 72 bytes of
 * h with version 2, the backing format extension, the backing name.  No
 * feature name table: version 2 has no feature bits. */
static int layout_v2_header(struct qcow2_writer *w, const struct qcow2_header *h3,
                            const struct qcow2_create_opts *o)
{
    struct qcow2_header h = *h3;
    be32_put(&h.version, 2);
    struct hdr_ext exts[1];
    size_t n = 0;
    const char *bf = o->backing_name ? fmt_name(o->backing_fmt) : NULL;
    if (bf)
        exts[n++] = (struct hdr_ext){ QCOW2_EXT_BACKING_FORMAT, (uint32_t)strlen(bf), bf };
    if (!(w->hdr_v2 = aligned_alloc_zero(w->cluster_size)))
        return lsm_error(-ENOMEM, "cannot allocate a header buffer");
    long used = layout_header(w->hdr_v2, w->cluster_size, (const uint8_t *)&h,
                              QCOW2_V2_HEADER_LENGTH, exts, n, o->backing_name);
    if (used < 0)
        return lsm_error(-EINVAL, "backing file name of %zu bytes does not fit in a %u-byte "
                         "header cluster", strlen(o->backing_name), w->cluster_size);
    w->hdr_v2_len = align_up((uint64_t)used, w->align);
    return 0;
}

/* At finish: the version 2 header takes the refcount table fields and
 * replaces the version 3 one, rewriting at least as far as that reached. */
static void use_v2_header(struct qcow2_writer *w)
{
    static_assert(offsetof(struct qcow2_header, refcount_table_clusters) ==
                  offsetof(struct qcow2_header, refcount_table_offset) + 8, "refcount fields");
    size_t off = offsetof(struct qcow2_header, refcount_table_offset);
    memcpy(w->hdr_v2 + off, w->hdr + off, 12);
    uint8_t *t = w->hdr;
    w->hdr = w->hdr_v2;
    w->hdr_v2 = t;
    w->hdr_write_len = MAX(w->hdr_write_len, w->hdr_v2_len);
}

/* Version 2 has no zero flag: the range becomes data clusters holding
 * zeroes, written here, except clusters without a host cluster in an image
 * without a backing file (they read as zeroes already; with a backing file
 * they would read its data). */
static int zero_as_data(struct qcow2_writer *w, uint64_t guest, uint64_t len)
{
    size_t blen = MAX(w->cluster_size, STREAM_BYTES);
    _cleanup_free_ uint8_t *zero = aligned_alloc_zero(blen);
    if (!zero)
        return lsm_error(-ENOMEM, "cannot allocate a zero buffer");
    uint64_t run = 0;           /* clusters from guest on that get zeroes */
    while (len) {
        if (run == 0) {
            while (run < len) {
                uint64_t off = 1;
                int r = w->has_backing ? 0 : lookup(w, (guest + run) >> w->cluster_bits, &off);
                if (r < 0)
                    return r;
                if (!off)
                    break;
                run += w->cluster_size;
            }
            if (run == 0) {
                guest += w->cluster_size;
                len -= w->cluster_size;
                continue;
            }
        }
        uint64_t host, mapped;
        int r = writer_alloc(w, guest, run, &host, &mapped);
        if (r < 0)
            return r;
        for (uint64_t done = 0; done < mapped;) {
            size_t n = (size_t)MIN((uint64_t)blen, mapped - done);
            r = pwrite_full(w->fd, zero, n, host + done);
            if (r < 0)
                return writer_failed(w, lsm_error_errno(r, "cannot write zeroes at 0x%" PRIx64,
                                                        host + done));
            done += n;
        }
        guest += mapped;
        len -= mapped;
        run -= mapped;
    }
    return 0;
}

int qcow2_writer_preallocate(struct qcow2_writer *w, enum qcow2_prealloc mode)
{
    int r = check_usable(w);
    if (r < 0)
        return r;
    if (mode != QCOW2_PREALLOC_METADATA && mode != QCOW2_PREALLOC_FALLOC && mode != QCOW2_PREALLOC_FULL)
        return lsm_error(-EINVAL, "invalid preallocation mode %d", (int)mode);
    if (w->compress)
        return lsm_error(-EINVAL, "Compression and preallocation not supported at the same time");
    if (w->has_backing)
        return lsm_error(-EINVAL, "preallocation with a backing file is not supported (the "
                         "preallocated clusters would hide the backing file's data)");
    for (uint64_t i = 0; i < w->l1_size; i++)
        if (l1_get(w, i))
            return lsm_error(-EINVAL, "preallocation must come before the first allocation");
    size_t blen = STREAM_BYTES;
    _cleanup_free_ uint8_t *zero = mode == QCOW2_PREALLOC_FULL ? aligned_alloc_zero(blen) : NULL;
    if (mode == QCOW2_PREALLOC_FULL && !zero)
        return lsm_error(-ENOMEM, "cannot allocate a zero buffer");
    for (uint64_t guest = 0; guest < w->guest_end;) {
        uint64_t host, mapped;
        r = qcow2_writer_alloc(w, guest, w->guest_end - guest, &host, &mapped);
        if (r < 0)
            return r;
        if (mode == QCOW2_PREALLOC_FALLOC &&
            fallocate(w->fd, 0, (off_t)host, (off_t)mapped) < 0)
            return writer_failed(w, lsm_error_errno(-errno, "cannot preallocate (falloc) %" PRIu64
                                                    " bytes at 0x%" PRIx64, mapped, host));
        for (uint64_t done = 0; zero && done < mapped;) {
            size_t n = (size_t)MIN((uint64_t)blen, mapped - done);
            r = pwrite_full(w->fd, zero, n, host + done);
            if (r < 0)
                return writer_failed(w, lsm_error_errno(r, "cannot write zeroes at 0x%" PRIx64,
                                                        host + done));
            done += n;
        }
        guest += mapped;
    }
    return 0;
}

int qcow2_writer_create(int fd, uint32_t align, const struct qcow2_create_opts *o,
                        struct qcow2_writer **out)
{
    unsigned cbits = 0, rorder = 0;
    int r = validate_opts(o, &cbits, &rorder);
    if (r < 0)
        return r;
    r = validate_version(o);
    if (r < 0)
        return r;
    r = check_align(align, 1u << cbits);
    if (r < 0)
        return r;

    struct qcow2_writer *w = writer_new(fd, align, cbits);
    if (!w)
        return lsm_error(-ENOMEM, "cannot allocate the qcow2 writer");
    w->refcount_order = rorder;
    w->extended_l2 = o->extended_l2;
    w->size = o->size;
    w->has_backing = o->backing_name != NULL;
    w->compress = o->compress;
    if (w->compress)
        pthread_mutex_init(&w->mu, NULL);
    w->ctype = o->compression_type;
    w->cmax = rorder >= 4 ? UINT16_MAX : (uint32_t)((1ULL << (1u << rorder)) - 1);

    uint64_t l2_entries = w->cluster_size / (o->extended_l2 ? 16 : 8);
    uint64_t l1_size = div_round_up(div_round_up(o->size, w->cluster_size), l2_entries);
    if (l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        qcow2_writer_close(w);
        return lsm_error(-EFBIG, "virtual size %" PRIu64 " needs an L1 table of %" PRIu64
                         " bytes, over the limit of %u: use larger clusters",
                         o->size, l1_size * 8, QCOW2_MAX_L1_BYTES);
    }
    w->l1_size = (uint32_t)l1_size;
    r = writer_setup(w);
    if (r < 0)
        goto fail;
    if (w->compress) {
#ifndef HAVE_ZSTD
        if (w->ctype == QCOW2_COMPRESSION_ZSTD) {
            r = lsm_error(-ENOTSUP, "built without zstd: cannot write zstd-compressed clusters");
            goto fail;
        }
#endif
        w->stage_cap = MAX(w->cluster_size, COMPRESS_BATCH_BYTES) + align;
        if (!(w->stage = aligned_alloc_zero(w->stage_cap))) {
            r = lsm_error(-ENOMEM, "cannot allocate the compressed-cluster buffer");
            goto fail;
        }
    }
    r = get_device(fd, &w->is_blockdev, &w->dev_size);
    if (r < 0)
        goto fail;

    uint64_t l1_clusters = div_round_up(l1_size * 8, w->cluster_size);
    w->l1_offset = l1_size ? w->cluster_size : 0;   /* like QEMU: no L1 table for size 0 */
    w->next_free = (1 + l1_clusters) << cbits;
    if (w->is_blockdev && w->next_free > w->dev_size) {
        r = lsm_error(-ENOSPC, "device of %" PRIu64 " bytes is too small for the qcow2 header "
                      "and L1 table (%" PRIu64 " bytes)", w->dev_size, w->next_free);
        goto fail;
    }

    struct qcow2_header h = { 0 };
    be32_put(&h.magic, QCOW2_MAGIC);
    be32_put(&h.version, 3);
    be32_put(&h.cluster_bits, cbits);
    be64_put(&h.size, o->size);
    be32_put(&h.l1_size, w->l1_size);
    be64_put(&h.l1_table_offset, w->l1_offset);
    uint64_t incompat = QCOW2_INCOMPAT_LSM_INCOMPLETE | (o->extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
    if (o->compression_type != QCOW2_COMPRESSION_ZLIB)
        incompat |= QCOW2_INCOMPAT_COMPRESSION;
    be64_put(&h.incompatible_features, incompat);
    be64_put(&h.compatible_features, o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
    be32_put(&h.refcount_order, rorder);
    be32_put(&h.header_length, sizeof h);
    h.compression_type = (uint8_t)o->compression_type;

    struct hdr_ext exts[2];
    size_t n = 0;
    const char *bf = o->backing_name ? fmt_name(o->backing_fmt) : NULL;
    if (bf)
        exts[n++] = (struct hdr_ext){ QCOW2_EXT_BACKING_FORMAT, (uint32_t)strlen(bf), bf };
    /* The feature name table is optional: include it only when it leaves
     * room for the longest backing name and format qcow2_set_backing() may
     * add later (clusters of 2 KiB and more). */
    if (sizeof h + 8 + sizeof feature_table + 8 + 8 + 8 + QCOW2_MAX_BACKING_NAME <= w->cluster_size)
        exts[n++] = (struct hdr_ext){ QCOW2_EXT_FEATURE_TABLE, sizeof feature_table, feature_table };
    long used = layout_header(w->hdr, w->cluster_size, (const uint8_t *)&h, sizeof h,
                              exts, n, o->backing_name);
    if (used < 0) {
        r = lsm_error(-EINVAL, "backing file name of %zu bytes does not fit in a %u-byte "
                      "header cluster", strlen(o->backing_name), w->cluster_size);
        goto fail;
    }
    w->hdr_write_len = align_up((uint64_t)used, align);
    if (o->version == 2) {
        r = layout_v2_header(w, &h, o);
        if (r < 0)
            goto fail;
    }

    /* The whole first cluster, marked incomplete: whatever was there
     * before (an old image on a reused device) no longer opens. */
    r = pwrite_full(fd, w->hdr, w->cluster_size, 0);
    if (r < 0) {
        r = lsm_error_errno(r, "cannot write the qcow2 header at 0x0");
        goto fail;
    }
    if (fdatasync(fd) < 0) {
        r = lsm_error_errno(-errno, "cannot sync the qcow2 header");
        goto fail;
    }
    w->marked = true;
    *out = w;
    return 0;
fail:
    qcow2_writer_close(w);
    return r;
}

/* ---- open --------------------------------------------------------------- */

static uint64_t refcount_get(const uint8_t *block, uint64_t i, unsigned order)
{
    switch (order) {
    case 0: return (block[i / 8] >> (i % 8)) & 1;
    case 1: return (block[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (block[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return block[i];
    case 4: return be16_get(block + 2 * i);
    case 5: return be32_get(block + 4 * i);
    default: return be64_get(block + 8 * i);
    }
}

/* Read the refcount structures: refuse refcounts above 1, build the free
 * set (refcount 0), add the old table and blocks to the free set (the new
 * ones replace them at finish), and find the last used cluster. */
static int scan_refcounts(struct qcow2_writer *w, uint64_t rt_off, uint32_t rt_clusters,
                          uint64_t *used_end)
{
    uint64_t cs = w->cluster_size;
    uint64_t rb_entries = cs * 8 >> w->refcount_order;
    uint64_t rt_entries = (uint64_t)rt_clusters * cs / 8;
    _cleanup_free_ uint8_t *rt = aligned_alloc_zero(cs);
    _cleanup_free_ uint8_t *rb = aligned_alloc_zero(cs);
    _cleanup_free_ struct crange *meta = NULL;
    size_t nmeta = 0, meta_cap = 0;
    int r;
    if (!rt || !rb)
        return lsm_error(-ENOMEM, "cannot allocate refcount buffers");

    *used_end = 0;
    for (uint64_t j = 0; j < rt_entries; j++) {
        if (j % (cs / 8) == 0) {
            uint64_t off = rt_off + j * 8;
            r = pread_full(w->fd, rt, cs, off);
            if (r < 0)
                return lsm_error_errno(r, "cannot read refcount table at 0x%" PRIx64, off);
        }
        uint64_t e = be64_get(rt + (j % (cs / 8)) * 8);
        uint64_t first = j * rb_entries;
        if (e & ~QCOW2_REFT_OFFSET_MASK)
            return lsm_error(-EINVAL, "corrupt image: refcount table entry %" PRIu64
                             " has reserved bits set", j);
        uint64_t off = e & QCOW2_REFT_OFFSET_MASK;
        if (off == 0) {
            r = free_add(w, first, first + rb_entries);
            if (r < 0)
                return r;
            continue;
        }
        if (!is_aligned(off, cs))
            return lsm_error(-EINVAL, "corrupt image: refcount block at unaligned offset 0x%" PRIx64, off);
        r = pread_full(w->fd, rb, cs, off);
        if (r < 0)
            return lsm_error_errno(r, "cannot read refcount block at 0x%" PRIx64, off);
        if (nmeta == meta_cap) {
            size_t cap = meta_cap ? meta_cap * 2 : 64;
            struct crange *m = realloc(meta, cap * sizeof *m);
            if (!m)
                return lsm_error(-ENOMEM, "cannot allocate the refcount block list");
            meta = m;
            meta_cap = cap;
        }
        meta[nmeta++] = (struct crange){ off / cs, off / cs + 1 };
        for (uint64_t i = 0; i < rb_entries; i++) {
            uint64_t v = refcount_get(rb, i, w->refcount_order);
            if (v > 1)
                return lsm_error(-ENOTSUP, "cluster at 0x%" PRIx64 " has refcount %" PRIu64
                                 ": shared clusters (internal snapshots?) cannot be maintained",
                                 (first + i) * cs, v);
            if (v == 0) {
                r = free_add(w, first + i, first + i + 1);
                if (r < 0)
                    return r;
            } else {
                *used_end = first + i + 1;
            }
        }
    }
    /* Clusters not covered by the refcount table are free too. */
    r = free_add(w, rt_entries * rb_entries, UINT64_MAX);
    if (r < 0)
        return r;
    for (size_t i = 0; i < nmeta; i++) {
        r = free_add(w, meta[i].start, meta[i].end);
        if (r < 0)
            return r;
    }
    return free_add(w, rt_off / cs, rt_off / cs + rt_clusters);
}

/* Referenced clusters, one bit each, while opening an image.  bits is NULL
 * when the image is too large for it (then clusters used twice and leaks
 * are not found).  In a rebuild the map grows as references are found. */
struct refmap {
    uint8_t *bits;
    uint64_t nbits;
    uint64_t max_end;           /* last referenced cluster + 1 */
};

static int refmap_grow(struct refmap *m, uint64_t nbits)
{
    if (nbits <= m->nbits)
        return 0;
    uint64_t want = MAX(nbits, 2 * m->nbits);
    if (want / 8 + 1 > MAX_REFMAP_BYTES)
        want = nbits;
    if (want / 8 + 1 > MAX_REFMAP_BYTES)
        return lsm_error(-EFBIG, "incomplete image is too large to rebuild its refcounts "
                         "(%" PRIu64 " clusters): recreate it", nbits);
    uint8_t *b = realloc(m->bits, want / 8 + 1);
    if (!b)
        return lsm_error(-ENOMEM, "cannot allocate the cluster map");
    memset(b + (m->bits ? m->nbits / 8 + 1 : 0), 0, want / 8 + 1 - (m->bits ? m->nbits / 8 + 1 : 0));
    m->bits = b;
    m->nbits = want;
    return 0;
}

static bool refmap_test(const struct refmap *m, uint64_t c)
{
    return c < m->nbits && (m->bits[c / 8] & (1u << (c % 8)));
}

/* A referenced host cluster must be in use (refcount 1) and, when the map
 * is kept, referenced once.  In a rebuild the refcounts are stale: any
 * cluster below the limit of the device or the format may be referenced. */
static int check_ref(const struct qcow2_writer *w, struct refmap *m, uint64_t off, uint64_t end,
                     const char *what)
{
    uint64_t c = off >> w->cluster_bits;
    if (!is_aligned(off, w->cluster_size))
        return lsm_error(-EINVAL, "corrupt image: %s at unaligned offset 0x%" PRIx64, what, off);
    if (w->rebuild) {
        uint64_t limit = w->open_limit;
        if (off >= limit || limit - off < w->cluster_size)
            return lsm_error(-EINVAL, "corrupt image: %s at 0x%" PRIx64 " lies past the end of "
                             "the %s", what, off, w->is_blockdev ? "device" : "file");
        int r = refmap_grow(m, c + 1);
        if (r < 0)
            return r;
    } else if (c >= end || free_contains(w, c)) {
        return lsm_error(-EINVAL, "corrupt image: %s at 0x%" PRIx64 " has refcount 0 "
                         "(run qemu-img check -r all)", what, off);
    }
    if (m->bits) {
        if (refmap_test(m, c))
            return lsm_error(-EINVAL, "corrupt image: %s at 0x%" PRIx64 " is used twice "
                             "(run qemu-img check -r all)", what, off);
        m->bits[c / 8] |= (uint8_t)(1u << (c % 8));
    }
    m->max_end = MAX(m->max_end, c + 1);
    return 0;
}

/* Clusters below end that nothing references and that are not free yet
 * (leaks, e.g. after a crash of QEMU; in a rebuild, everything
 * unreferenced) join the free set: refcount 0 after finish. */
static int free_leaks(struct qcow2_writer *w, const struct refmap *m, uint64_t end)
{
    size_t nold = w->nfree, fi = 0;
    uint64_t c = 0;
    while (c < end) {
        while (fi < nold && w->free[fi].end <= c)
            fi++;
        if (fi < nold && w->free[fi].start <= c) {
            c = w->free[fi].end;
            continue;
        }
        uint64_t stop = fi < nold ? MIN(end, w->free[fi].start) : end;
        for (; c < stop; c++) {
            if (refmap_test(m, c))
                continue;
            uint64_t s0 = c;
            while (c < stop && !refmap_test(m, c))
                c++;
            int r = free_add(w, s0, c);     /* appended: sorted again below */
            if (r < 0)
                return r;
            if (c == stop)
                break;
        }
    }
    free_normalize(w, end);
    return 0;
}

/* Walk L1 and every L2 table: no compressed clusters, every reference
 * points to a used cluster and has the COPIED flag (refcount 1). */
static int scan_l2(struct qcow2_writer *w, struct refmap *m, uint64_t end)
{
    _cleanup_free_ uint8_t *t = aligned_alloc_zero(w->cluster_size);
    if (!t)
        return lsm_error(-ENOMEM, "cannot allocate an L2 buffer");
    for (uint64_t i = 0; i < w->l1_size; i++) {
        uint64_t e = l1_get(w, i);
        uint64_t off = e & QCOW2_L1E_OFFSET_MASK;
        if (e & QCOW2_L1E_RESERVED_MASK)
            return lsm_error(-EINVAL, "corrupt image: L1 entry %" PRIu64 " has reserved bits set", i);
        if (off == 0)
            continue;
        int r = check_ref(w, m, off, end, "L2 table");
        if (r < 0)
            return r;
        if (!(e & QCOW2_OFLAG_COPIED))
            return lsm_error(-EINVAL, "corrupt image: L1 entry %" PRIu64 " lacks the COPIED flag "
                             "(run qemu-img check -r all)", i);
        r = pread_full(w->fd, t, w->cluster_size, off);
        if (r < 0)
            return lsm_error_errno(r, "cannot read L2 table at 0x%" PRIx64, off);
        for (uint64_t k = 0; k < w->l2_entries; k++) {
            uint64_t l2e = be64_get(t + k * w->l2_entry_size);
            uint64_t guest = (i * w->l2_entries + k) << w->cluster_bits;
            if (l2e & QCOW2_OFLAG_COMPRESSED)
                return lsm_error(-ENOTSUP, "image has compressed clusters (guest offset 0x%"
                                 PRIx64 "): cannot add clusters to it", guest);
            if (l2e & QCOW2_L2E_STD_RESERVED)
                return lsm_error(-EINVAL, "corrupt image: L2 entry for guest offset 0x%" PRIx64
                                 " has reserved bits set", guest);
            if (w->hdr_v2 && (l2e & QCOW2_OFLAG_ZERO))      /* as the reader and QEMU */
                return lsm_error(-EINVAL, "corrupt image: zero cluster entry in a version 2 "
                                 "(compat 0.10) image at guest offset 0x%" PRIx64, guest);
            uint64_t hoff = l2e & QCOW2_L2E_OFFSET_MASK;
            if (hoff == 0)
                continue;
            r = check_ref(w, m, hoff, end, "data cluster");
            if (r < 0)
                return r;
            w->open_clusters++;
            if (!(l2e & QCOW2_OFLAG_COPIED))
                return lsm_error(-EINVAL, "corrupt image: L2 entry for guest offset 0x%" PRIx64
                                 " lacks the COPIED flag (run qemu-img check -r all)", guest);
        }
    }
    return 0;
}

/* The reader's header validation (qcow2_parse_header), then what the
 * writer cannot maintain. */
static int parse_open_header(struct qcow2_writer *w, uint64_t fsize, struct qcow2_state *s,
                             char **backing)
{
    struct lsm_image img = {
        .ops = &lsm_qcow2_ops, .format = LSM_FMT_QCOW2, .filename = (char *)"destination",
        .fd = w->fd, .data_fd = w->fd, .is_blockdev = w->is_blockdev, .file_size = fsize,
    };
    int r = qcow2_parse_header(&img, s, QCOW2_PARSE_INCOMPLETE_OK);
    *backing = img.backing_name;
    free(s->data_file_name);
    s->data_file_name = NULL;
    if (r < 0)
        return r;
    const struct qcow2_header *h = &s->h;
    if (h->header_length % 8)
        return lsm_error(-EINVAL, "corrupt image: invalid header length %u", h->header_length);
    uint64_t incompat = h->incompatible_features;
    if (incompat & QCOW2_INCOMPAT_DIRTY)
        return lsm_error(-ENOTSUP, "image is dirty (refcounts may be stale): "
                         "run qemu-img check -r all first");
    if (incompat & QCOW2_INCOMPAT_CORRUPT)
        return lsm_error(-ENOTSUP, "image is marked corrupt");
    if ((incompat & QCOW2_INCOMPAT_DATA_FILE) || s->has_data_file)
        return lsm_error(-ENOTSUP, "images with an external data file are not supported");
    if (h->nb_snapshots != 0)
        return lsm_error(-ENOTSUP, "image has %u internal snapshots: cannot add clusters to it",
                         h->nb_snapshots);
    if ((h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) || s->has_bitmaps_ext)
        return lsm_error(-ENOTSUP, "image has persistent dirty bitmaps: cannot maintain them");
    if (s->has_crypto_ext)
        return lsm_error(-ENOTSUP, "encrypted images are not supported");
    if (h->size > (uint64_t)INT64_MAX - s->cluster_size)
        return lsm_error(-EINVAL, "corrupt image: invalid virtual size %" PRIu64, h->size);
    return 0;
}

/* An opened version 2 (compat=0.10) image works like a created one: a
 * version 3 header with the incomplete bit while the writer works (every
 * extension of the old header and its backing name kept, in a 112-byte
 * header), and at finish the old version 2 header cluster again, as it
 * was but for the refcount table fields (see use_v2_header). */
static int open_v2_header(struct qcow2_writer *w, const char *backing)
{
    uint32_t cs = w->cluster_size;
    struct hdr_ext exts[MAX_HDR_EXTS];
    size_t n = 0, end = QCOW2_V2_HEADER_LENGTH;
    uint64_t boff = be64_get(w->hdr + offsetof(struct qcow2_header, backing_file_offset));
    /* (A backing name right after the header: no room for extensions.) */
    if (boff != QCOW2_V2_HEADER_LENGTH) {
        int r = collect_exts(w->hdr, cs, QCOW2_V2_HEADER_LENGTH, QCOW2_EXT_END, exts, &n, &end);
        if (r < 0)
            return r;
    }
    struct qcow2_header h3 = { 0 };
    memcpy(&h3, w->hdr, QCOW2_V2_HEADER_LENGTH);
    be32_put(&h3.version, 3);
    be32_put(&h3.refcount_order, 4);
    be32_put(&h3.header_length, sizeof h3);
    uint8_t *neu = aligned_alloc_zero(cs);
    if (!neu)
        return lsm_error(-ENOMEM, "cannot allocate a header buffer");
    if (layout_header(neu, cs, (const uint8_t *)&h3, sizeof h3, exts, n, backing) < 0) {
        free(neu);
        return lsm_error(-ENOSPC, "the header extensions and backing file name of this version 2 "
                         "image leave no room in its %u-byte first cluster for the 40 more "
                         "bytes of the version 3 header the writer marks it incomplete with", cs);
    }
    w->hdr_v2 = w->hdr;
    w->hdr_v2_len = cs;
    w->hdr = neu;
    return 0;
}

static int writer_open(int fd, uint32_t align, bool resume, struct qcow2_writer **out)
{
    if (!is_pow2(align) || align > (1u << QCOW2_MAX_CLUSTER_BITS))
        return lsm_error(-EINVAL, "invalid I/O alignment %u", align);
    bool is_blockdev = false;
    uint64_t fsize = 0;
    int r = get_device(fd, &is_blockdev, &fsize);
    if (r < 0)
        return r;
    struct qcow2_state st = { 0 };
    struct qcow2_writer tmp = { .fd = fd, .is_blockdev = is_blockdev, .dev_size = fsize };
    _cleanup_free_ char *backing = NULL;
    r = parse_open_header(&tmp, fsize, &st, &backing);
    if (r < 0)
        return r;
    const struct qcow2_header *h = &st.h;
    unsigned cbits = h->cluster_bits;
    r = check_align(align, 1u << cbits);
    if (r < 0)
        return r;

    struct qcow2_writer *w = writer_new(fd, align, cbits);
    uint64_t used_end = 0, end;
    struct refmap m = { 0 };
    if (!w)
        return lsm_error(-ENOMEM, "cannot allocate the qcow2 writer");
    w->is_blockdev = is_blockdev;
    if (is_blockdev)
        w->dev_size = fsize;
    w->extended_l2 = st.extl2;
    w->refcount_order = h->refcount_order;
    w->ctype = h->compression_type;
    w->size = h->size;
    w->l1_size = h->l1_size;
    w->l1_offset = h->l1_table_offset;
    uint64_t rt_off = h->refcount_table_offset;
    uint32_t rt_clusters = h->refcount_table_clusters;
    /* Opened incomplete (an earlier writer was interrupted): the marker is
     * on disk already, and the refcounts on disk may miss clusters that
     * writer allocated; rebuild them from the references. */
    w->rebuild = w->marked = h->incompatible_features & QCOW2_INCOMPAT_LSM_INCOMPLETE;
    w->resume = resume;
    if (resume && !w->rebuild) {
        r = lsm_error(-EINVAL, "image is not marked incomplete by lsm-sync: nothing to resume");
        goto fail;
    }
    uint8_t *hdr = aligned_alloc_zero(w->cluster_size);
    if (!hdr) {
        r = lsm_error(-ENOMEM, "cannot allocate a header buffer");
        goto fail;
    }
    r = pread_full(fd, hdr, w->cluster_size, 0);
    if (r < 0) {
        free(hdr);
        r = lsm_error_errno(r, "cannot read the qcow2 header");
        goto fail;
    }
    r = writer_setup(w);
    if (r < 0) {
        free(hdr);
        goto fail;
    }
    free(w->hdr);
    w->hdr = hdr;
    w->hdr_write_len = w->cluster_size;
    w->has_backing = backing != NULL;
    uint32_t hlen = h->header_length;
    if (h->version == 2) {
        r = open_v2_header(w, backing);
        if (r < 0)
            goto fail;
        hlen = sizeof(struct qcow2_header);
    }
    /* We do not maintain any autoclear feature: clear them (the spec's rule
     * for writers that do not know them). */
    be64_put(w->hdr + offsetof(struct qcow2_header, autoclear_features), 0);
    if (!w->marked)
        name_incomplete_feature(w, hlen, backing);

    if (w->l1_size) {
        r = pread_full(fd, w->l1, align_up((uint64_t)w->l1_size * 8, align), w->l1_offset);
        if (r < 0) {
            r = lsm_error_errno(r, "cannot read L1 table at 0x%" PRIx64, w->l1_offset);
            goto fail;
        }
    }
    w->open_limit = is_blockdev ? fsize : MIN(QCOW2_MAX_HOST_OFFSET,
                                              align_up(fsize, w->cluster_size) + MAX_PAST_EOF);
    r = scan_refcounts(w, rt_off, rt_clusters, &used_end);
    if (r < 0)
        goto fail;
    if (used_end > w->open_limit >> cbits) {
        r = lsm_error(-EINVAL, "corrupt image: its refcounts count clusters up to 0x%" PRIx64
                      ", far past the end of the %s", used_end << cbits,
                      is_blockdev ? "device" : "file");
        goto fail;
    }
    /* The end of the image: past the last used cluster and, for a regular
     * file, past its end (never overwrite anything that is there). */
    end = used_end;
    /* A resumed image of ours: what lies past its refcounts and references
     * is what the interrupted writer wrote after its last checkpoint and
     * never referenced, garbage that new clusters reuse. */
    if (!w->is_blockdev && !w->resume)
        end = MAX(end, div_round_up(fsize, w->cluster_size));
    if (end == 0 || end > (QCOW2_MAX_HOST_OFFSET >> cbits)) {
        r = lsm_error(-EINVAL, "corrupt image: invalid end of image");
        goto fail;
    }
    /* Free set limited to below the end; old refcount structures are in it. */
    free_normalize(w, end);
    /* Walk everything the image references: the header, L1, L2 tables and
     * data (the old refcount structures are in the free set already). */
    if (end / 8 + 1 <= MAX_REFMAP_BYTES) {
        r = refmap_grow(&m, end);
        if (r < 0)
            goto fail;
    } else if (w->rebuild) {
        r = refmap_grow(&m, end);       /* fails: too large */
        goto fail;
    }
    r = check_ref(w, &m, 0, end, "header");
    if (r < 0)
        goto fail;
    if (w->l1_size) {
        uint64_t c0 = w->l1_offset >> cbits;
        uint64_t nc = div_round_up((uint64_t)w->l1_size * 8, w->cluster_size);
        for (uint64_t c = c0; c < c0 + nc; c++) {
            r = check_ref(w, &m, c << cbits, end, "L1 table");
            if (r < 0)
                goto fail;
        }
    }
    r = scan_l2(w, &m, end);
    if (r < 0)
        goto fail;
    if (w->rebuild) {
        /* Everything referenced is in use; nothing else is. */
        end = MAX(end, m.max_end);
        r = refmap_grow(&m, end);
        if (r < 0)
            goto fail;
        w->nfree = 0;
    }
    if (m.bits) {
        r = free_leaks(w, &m, end);
        if (r < 0)
            goto fail;
    }
    free(m.bits);
    m.bits = NULL;
    w->next_free = end << cbits;
    if (w->is_blockdev && w->next_free > w->dev_size) {
        r = lsm_error(-EINVAL, "corrupt image: it ends past the end of the device");
        goto fail;
    }
    /* Nothing is written until the first change (mark_incomplete). */
    *out = w;
    return 0;
fail:
    free(m.bits);
    qcow2_writer_close(w);
    return r;
}

int qcow2_writer_compress_existing(struct qcow2_writer *w)
{
    if (w->compress)
        return 0;
    if (w->marked)
        return lsm_error(-EINVAL, "compression must be chosen before the first change to the image");
    if (w->open_clusters)
        return lsm_error(-ENOTSUP, "compressed clusters can only go where the image has none: it "
                         "has %" PRIu64 " allocated clusters (qemu-img convert -c -n fails on "
                         "them too)", w->open_clusters);
#ifndef HAVE_ZSTD
    if (w->ctype == QCOW2_COMPRESSION_ZSTD)
        return lsm_error(-ENOTSUP, "built without zstd: cannot write zstd-compressed clusters");
#endif
    w->stage_cap = MAX(w->cluster_size, COMPRESS_BATCH_BYTES) + w->align;
    if (!(w->stage = aligned_alloc_zero(w->stage_cap)))
        return lsm_error(-ENOMEM, "cannot allocate the compressed-cluster buffer");
    unsigned rorder = w->refcount_order;
    w->cmax = rorder >= 4 ? UINT16_MAX : (uint32_t)((1ULL << (1u << rorder)) - 1);
    pthread_mutex_init(&w->mu, NULL);
    w->compress = true;
    return 0;
}

int qcow2_writer_open(int fd, uint32_t align, struct qcow2_writer **out)
{
    return writer_open(fd, align, false, out);
}

int qcow2_writer_resume(int fd, uint32_t align, struct qcow2_writer **out)
{
    return writer_open(fd, align, true, out);
}

/* ---- finish ------------------------------------------------------------- */

static int flush_l2(struct qcow2_writer *w)
{
    for (unsigned i = 0; i < w->cache_n; i++) {
        struct l2_slot *s = &w->cache[i];
        if (s->l1_index != UINT64_MAX && s->dirty) {
            int r = l2_write_slot(w, s);
            if (r < 0)
                return r;
        }
    }
    /* Tables allocated but never loaded (cannot happen through alloc/zero,
     * which fill every table they create; kept for robustness). */
    uint8_t *zero = NULL;
    for (uint64_t i = 0; i < w->l1_size; i++) {
        if (!fresh_test(w, i))
            continue;
        if (!zero && !(zero = aligned_alloc_zero(w->cluster_size)))
            return lsm_error(-ENOMEM, "cannot allocate an L2 buffer");
        uint64_t off = l1_get(w, i) & QCOW2_L1E_OFFSET_MASK;
        int r = pwrite_full(w->fd, zero, w->cluster_size, off);
        if (r < 0) {
            free(zero);
            return writer_failed(w, lsm_error_errno(r, "cannot write L2 table at 0x%" PRIx64, off));
        }
        fresh_set(w, i, false);
    }
    free(zero);
    return 0;
}

/* Set refcount 1 for entries [from, to) of a refcount block. */
static void refcount_set_ones(uint8_t *block, uint64_t from, uint64_t to, unsigned order)
{
    if (order <= 3) {
        unsigned per_byte = 8u >> order;
        static const uint8_t pattern[] = { 0xff, 0x55, 0x11, 0x01 };
        while (from < to && from % per_byte) {
            block[from / per_byte] |= (uint8_t)(1u << ((from % per_byte) << order));
            from++;
        }
        uint64_t whole = (to - from) / per_byte;
        memset(block + from / per_byte, pattern[order], whole);
        from += whole * per_byte;
        while (from < to) {
            block[from / per_byte] |= (uint8_t)(1u << ((from % per_byte) << order));
            from++;
        }
        return;
    }
    for (uint64_t i = from; i < to; i++) {
        switch (order) {
        case 4: be16_put(block + 2 * i, 1); break;
        case 5: be32_put(block + 4 * i, 1); break;
        default: be64_put(block + 8 * i, 1); break;
        }
    }
}

/* Refcount table and blocks for an image of e clusters, placed at its end:
 * they count themselves, so iterate to a fixed point. */
static void refcount_layout(const struct qcow2_writer *w, uint64_t e, uint64_t *nrt_out,
                            uint64_t *nrb_out)
{
    uint64_t rb_entries = (uint64_t)w->cluster_size * 8 >> w->refcount_order;
    uint64_t nrb = 0, nrt = 0;
    for (;;) {
        uint64_t total = e + nrt + nrb;
        uint64_t nrb2 = div_round_up(total, rb_entries);
        uint64_t nrt2 = div_round_up(nrb2 * 8, w->cluster_size);
        if (nrb2 == nrb && nrt2 == nrt)
            break;
        nrb = nrb2;
        nrt = nrt2;
    }
    *nrt_out = nrt;
    *nrb_out = nrb;
}

bool qcow2_writer_changed(const struct qcow2_writer *w)
{
    return w->marked;
}

uint64_t qcow2_writer_end(const struct qcow2_writer *w)
{
    return w->next_free;
}

uint64_t qcow2_writer_final_size(const struct qcow2_writer *w)
{
    if (w->finished || (w->rc_nrt && area_capacity(w) >= w->next_free >> w->cluster_bits))
        return w->next_free;
    uint64_t nrt, nrb;
    refcount_layout(w, w->next_free >> w->cluster_bits, &nrt, &nrb);
    return w->next_free + ((nrt + nrb) << w->cluster_bits);
}

/* ---- persistent bitmaps ---------------------------------------------- */

/* Write len bytes of buf (a multiple of the cluster size, aligned) at the
 * end of the image; *off is where. */
static int append_clusters(struct qcow2_writer *w, const uint8_t *buf, uint64_t len, uint64_t *off,
                           const char *what)
{
    int r = check_room(w, len, what);
    if (r < 0)
        return r;
    r = mark_incomplete(w);
    if (r < 0)
        return r;
    *off = w->next_free;
    r = pwrite_full(w->fd, buf, len, w->next_free);
    if (r < 0)
        return writer_failed(w, lsm_error_errno(r, "cannot write the %s at 0x%" PRIx64, what, *off));
    w->next_free += len;
    return 0;
}

int qcow2_writer_add_bitmap(struct qcow2_writer *w, const char *name, unsigned granularity_bits,
                            bool autoload, const uint8_t *data, uint64_t len)
{
    int r = check_usable(w);
    if (r < 0)
        return r;
    if (w->hdr_v2)
        return lsm_error(-ENOTSUP, "version 2 (compat=0.10) images cannot have persistent bitmaps");
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > 1023)
        return lsm_error(-EINVAL, "invalid bitmap name length %zu", nlen);
    if (granularity_bits < 9 || granularity_bits > 31)
        return lsm_error(-EINVAL, "invalid bitmap granularity 2^%u", granularity_bits);
    uint64_t want = div_round_up(div_round_up(w->size, 1ULL << granularity_bits), 8);
    if (len != want)
        return lsm_error(-EINVAL, "bitmap '%s' has %" PRIu64 " bytes, the image needs %" PRIu64,
                         name, len, want);
    for (unsigned i = 0; i < w->nbitmaps; i++)
        if (!strcmp(w->bitmaps[i].name, name))
            return lsm_error(-EEXIST, "bitmap '%s' is there already", name);
    if (w->nbitmaps >= 65535)
        return lsm_error(-ENOSPC, "too many bitmaps");
    uint64_t cs = w->cluster_size, n = div_round_up(len, cs);
    if (n > 0x8000000u)
        return lsm_error(-EFBIG, "bitmap '%s' needs too large a table", name);
    uint64_t tbytes = align_up(n * 8, cs);
    _cleanup_free_ uint8_t *table = aligned_alloc_zero(tbytes ? tbytes : cs);
    _cleanup_free_ uint8_t *cl = aligned_alloc_zero(cs);
    struct wbitmap *nb = realloc(w->bitmaps, (w->nbitmaps + 1) * sizeof *nb);
    if (!table || !cl || !nb)
        return lsm_error(-ENOMEM, "cannot allocate bitmap buffers");
    w->bitmaps = nb;
    /* Data clusters: all zeroes or all ones need none (table bit 0). */
    for (uint64_t i = 0; i < n; i++) {
        size_t m = (size_t)MIN(cs, len - i * cs);
        const uint8_t *p = data + i * cs;
        bool zero = true, ones = m == cs;
        for (size_t k = 0; k < m && (zero || ones); k++) {
            zero &= p[k] == 0;
            ones &= p[k] == 0xff;
        }
        if (zero || ones) {
            be64_put(table + i * 8, ones ? 1 : 0);
            continue;
        }
        memset(cl, 0, cs);
        memcpy(cl, p, m);
        uint64_t off;
        r = append_clusters(w, cl, cs, &off, "bitmap data");
        if (r < 0)
            return r;
        be64_put(table + i * 8, off);
    }
    uint64_t toff = 0;
    if (n) {
        r = append_clusters(w, table, tbytes, &toff, "bitmap table");
        if (r < 0)
            return r;
    }
    char *nm = strdup(name);
    if (!nm)
        return lsm_error(-ENOMEM, "out of memory");
    w->bitmaps[w->nbitmaps++] = (struct wbitmap){ nm, granularity_bits, autoload, toff, (uint32_t)n };
    return 0;
}

/* At finish, before the refcounts: the bitmap directory at the end, and
 * the bitmaps extension with the autoclear bit in the header. */
static int write_bitmap_directory(struct qcow2_writer *w)
{
    uint64_t dsize = 0;
    for (unsigned i = 0; i < w->nbitmaps; i++)
        dsize += align_up(24 + strlen(w->bitmaps[i].name), 8);
    uint64_t cs = w->cluster_size, dbytes = align_up(dsize, cs);
    _cleanup_free_ uint8_t *dir = aligned_alloc_zero(dbytes);
    if (!dir)
        return lsm_error(-ENOMEM, "cannot allocate the bitmap directory");
    uint8_t *e = dir;
    for (unsigned i = 0; i < w->nbitmaps; i++) {
        const struct wbitmap *b = &w->bitmaps[i];
        size_t nlen = strlen(b->name);
        be64_put(e, b->table_offset);
        be32_put(e + 8, b->table_size);
        be32_put(e + 12, b->autoload ? 2u : 0u);        /* auto; never in use */
        e[16] = 1;                                      /* dirty tracking */
        e[17] = (uint8_t)b->gbits;
        be16_put(e + 18, (uint16_t)nlen);
        be32_put(e + 20, 0);                            /* no extra data */
        memcpy(e + 24, b->name, nlen);
        e += align_up(24 + nlen, 8);
    }
    uint64_t doff;
    int r = append_clusters(w, dir, dbytes, &doff, "bitmap directory");
    if (r < 0)
        return r;

    /* The header: every extension it has, plus the bitmaps one. */
    uint32_t hlen = be32_get(w->hdr + offsetof(struct qcow2_header, header_length));
    struct hdr_ext exts[MAX_HDR_EXTS];
    size_t n = 0, end = 0;
    r = collect_exts(w->hdr, w->cluster_size, hlen, QCOW2_EXT_BITMAPS, exts, &n, &end);
    if (r < 0)
        return r;
    uint8_t bext[24];
    be32_put(bext, w->nbitmaps);
    be32_put(bext + 4, 0);
    be64_put(bext + 8, dsize);
    be64_put(bext + 16, doff);
    exts[n++] = (struct hdr_ext){ QCOW2_EXT_BITMAPS, sizeof bext, bext };
    uint64_t boff = be64_get(w->hdr + offsetof(struct qcow2_header, backing_file_offset));
    uint32_t bsize = be32_get(w->hdr + offsetof(struct qcow2_header, backing_file_size));
    char backing[QCOW2_MAX_BACKING_NAME + 1] = "";
    if (boff && bsize <= QCOW2_MAX_BACKING_NAME && boff + bsize <= w->cluster_size)
        memcpy(backing, w->hdr + boff, bsize);
    _cleanup_free_ uint8_t *neu = aligned_alloc_zero(w->cluster_size);
    if (!neu)
        return lsm_error(-ENOMEM, "cannot allocate a header buffer");
    long used = layout_header(neu, w->cluster_size, w->hdr, hlen, exts, n, boff ? backing : NULL);
    if (used < 0)
        return writer_failed(w, lsm_error(-ENOSPC, "the bitmaps extension does not fit in the "
                                          "header cluster (%u bytes)", w->cluster_size));
    uint8_t *ac = neu + offsetof(struct qcow2_header, autoclear_features);
    be64_put(ac, be64_get(ac) | QCOW2_AUTOCLEAR_BITMAPS);
    memcpy(w->hdr, neu, w->cluster_size);
    w->hdr_write_len = MAX(w->hdr_write_len, align_up((uint64_t)used, w->align));
    return 0;
}

/* Write a refcount table of nrt clusters at cluster rt_c, its nrb blocks
 * right after it, counting clusters [0, total): refcount 1 except the free
 * set.  The area must lie below total and outside the free set. */
static int write_refcount_area(struct qcow2_writer *w, uint64_t rt_c, uint64_t nrt, uint64_t nrb,
                               uint64_t total)
{
    uint64_t cs = w->cluster_size;
    uint64_t rb_entries = cs * 8 >> w->refcount_order;
    uint64_t rt_off = rt_c * cs, rb_off = (rt_c + nrt) * cs;
    size_t chunk = MAX(cs, STREAM_BYTES);
    _cleanup_free_ uint8_t *buf = aligned_alloc_zero(chunk);
    if (!buf)
        return lsm_error(-ENOMEM, "cannot allocate a refcount buffer");

    /* Refcount table: entry b points to refcount block b. */
    uint64_t per_chunk = chunk / 8;
    for (uint64_t b0 = 0; b0 < nrt * cs / 8; b0 += per_chunk) {
        uint64_t n = MIN(per_chunk, nrt * cs / 8 - b0);
        memset(buf, 0, chunk);
        for (uint64_t b = b0; b < b0 + n && b < nrb; b++)
            be64_put(buf + (b - b0) * 8, rb_off + b * cs);
        uint64_t off = rt_off + b0 * 8;
        int r = pwrite_full(w->fd, buf, n * 8, off);
        if (r < 0)
            return writer_failed(w, lsm_error_errno(r, "cannot write refcount table at 0x%" PRIx64, off));
    }

    /* Refcount blocks: 1 below total, except the free set. */
    size_t fi = 0;
    uint64_t blocks_per_chunk = chunk / cs;
    for (uint64_t b0 = 0; b0 < nrb; b0 += blocks_per_chunk) {
        uint64_t nb = MIN(blocks_per_chunk, nrb - b0);
        memset(buf, 0, nb * cs);
        for (uint64_t b = b0; b < b0 + nb; b++) {
            uint8_t *block = buf + (b - b0) * cs;
            uint64_t lo = b * rb_entries, hi = MIN((b + 1) * rb_entries, total);
            uint64_t c = lo;
            while (c < hi) {
                while (fi < w->nfree && w->free[fi].end <= c)
                    fi++;
                uint64_t stop = hi;
                if (fi < w->nfree && w->free[fi].start <= c) {
                    c = MIN(w->free[fi].end, hi);       /* skip free clusters */
                    continue;
                }
                if (fi < w->nfree)
                    stop = MIN(stop, w->free[fi].start);
                refcount_set_ones(block, c - lo, stop - lo, w->refcount_order);
                c = stop;
            }
            if (w->ncsegs)
                apply_crefs(w, block, lo, lo, hi);
        }
        uint64_t off = rb_off + b0 * cs;
        int r = pwrite_full(w->fd, buf, nb * cs, off);
        if (r < 0)
            return writer_failed(w, lsm_error_errno(r, "cannot write refcount block at 0x%" PRIx64, off));
    }
    return 0;
}

/* Clusters the checkpoint area counts. */
static uint64_t area_capacity(const struct qcow2_writer *w)
{
    return w->rc_nrb * ((uint64_t)w->cluster_size * 8 >> w->refcount_order);
}

/* The checkpoint area no longer counts the image: it becomes free space
 * (refcount 0; never reused, like all free clusters). */
static int drop_area(struct qcow2_writer *w)
{
    if (!w->rc_nrt)
        return 0;
    int r = free_add(w, w->rc_start, w->rc_start + w->rc_nrt + w->rc_nrb);
    if (r < 0)
        return r;
    free_normalize(w, w->next_free >> w->cluster_bits);
    w->rc_nrt = w->rc_nrb = 0;
    return 0;
}

static int write_refcounts(struct qcow2_writer *w, uint64_t *rt_off_out, uint32_t *rt_clusters_out)
{
    uint64_t cs = w->cluster_size;
    uint64_t e = w->next_free >> w->cluster_bits;
    if (w->rc_nrt && area_capacity(w) >= e) {
        /* The last checkpoint's area still covers the image: in place. */
        int r = write_refcount_area(w, w->rc_start, w->rc_nrt, w->rc_nrb, e);
        if (r < 0)
            return r;
        *rt_off_out = w->rc_start * cs;
        *rt_clusters_out = (uint32_t)w->rc_nrt;
        return 0;
    }
    int r = drop_area(w);
    if (r < 0)
        return r;
    uint64_t nrb, nrt;
    refcount_layout(w, e, &nrt, &nrb);
    if (nrt * cs > QCOW2_MAX_REFTABLE_BYTES)
        return lsm_error(-EFBIG, "image of %" PRIu64 " clusters needs a refcount table of %"
                         PRIu64 " bytes, over QEMU's limit of %u: use larger clusters or "
                         "fewer refcount bits", e, nrt * cs, QCOW2_MAX_REFTABLE_BYTES);
    r = check_room(w, (nrt + nrb) * cs, "refcount structures");
    if (r < 0)
        return writer_failed(w, r);
    uint64_t total = e + nrt + nrb;
    r = write_refcount_area(w, e, nrt, nrb, total);
    if (r < 0)
        return r;
    w->next_free = total * cs;
    *rt_off_out = e * cs;
    *rt_clusters_out = (uint32_t)nrt;
    return 0;
}

/* Write the cached L2 tables and the L1 table. */
static int write_tables(struct qcow2_writer *w)
{
    int r = flush_l2(w);
    if (r < 0)
        return r;
    if (w->l1_size) {
        size_t len = align_up((uint64_t)w->l1_size * 8, w->align);
        r = pwrite_full(w->fd, w->l1, len, w->l1_offset);
        if (r < 0)
            return writer_failed(w, lsm_error_errno(r, "cannot write L1 table at 0x%" PRIx64,
                                                    w->l1_offset));
    }
    return 0;
}

/* The refcount area the next checkpoint writes: the current one while it
 * covers the image, else a new one at the end (the header in memory names
 * it; hdr_dirty until the header is on disk). */
static int prepare_area(struct qcow2_writer *w)
{
    uint64_t cs = w->cluster_size;
    uint64_t e = w->next_free >> w->cluster_bits;
    if (w->rc_nrt && area_capacity(w) >= e)
        return 0;
    /* Sized for twice the image as it is now: areas move O(log(size))
     * times, and the old ones (free space) add up to less than the last. */
    uint64_t nrt, nrb;
    refcount_layout(w, 2 * e, &nrt, &nrb);
    if (nrt * cs > QCOW2_MAX_REFTABLE_BYTES)
        refcount_layout(w, e, &nrt, &nrb);
    if (nrt * cs > QCOW2_MAX_REFTABLE_BYTES)
        return lsm_error(-EFBIG, "image of %" PRIu64 " clusters needs a refcount table "
                         "over QEMU's limit of %u: use larger clusters or fewer refcount "
                         "bits", e, QCOW2_MAX_REFTABLE_BYTES);
    int r = check_room(w, (nrt + nrb) * cs, "checkpoint refcount structures");
    if (r < 0)
        return r;
    r = drop_area(w);
    if (r < 0)
        return r;
    w->rc_start = e;
    w->rc_nrt = nrt;
    w->rc_nrb = nrb;
    w->next_free += (nrt + nrb) * cs;
    be64_put(w->hdr + offsetof(struct qcow2_header, refcount_table_offset), w->rc_start * cs);
    be32_put(w->hdr + offsetof(struct qcow2_header, refcount_table_clusters), (uint32_t)w->rc_nrt);
    w->hdr_dirty = true;
    return 0;
}

static int check_checkpoint(const struct qcow2_writer *w)
{
    /* A resumed writer would finish a version 3 image: nothing on disk
     * says the image was version 2. */
    if (w->hdr_v2)
        return lsm_error(-ENOTSUP, "checkpoints are not supported in version 2 (compat=0.10) "
                         "images: a resumed copy would finish a version 3 image");
    if (w->compress)
        return lsm_error(-ENOTSUP, "checkpoints are not supported with compressed clusters: "
                         "a compressed copy cannot be resumed");
    return check_usable(w);
}

int qcow2_writer_checkpoint_hash(struct qcow2_writer *w, uint64_t *hash)
{
    int r = check_checkpoint(w);
    if (r == 0)
        r = mark_incomplete(w);
    if (r == 0)
        r = prepare_area(w);
    if (r < 0)
        return r;
    *hash = qcow2_ident_hash_buffers(w->hdr, w->cluster_size, w->l1, (size_t)w->l1_size * 8);
    return 0;
}

int qcow2_writer_checkpoint(struct qcow2_writer *w)
{
    int r = check_checkpoint(w);
    if (r == 0)
        r = mark_incomplete(w);
    if (r == 0)
        r = write_tables(w);
    if (r == 0)
        r = prepare_area(w);
    if (r < 0)
        return r;
    r = write_refcount_area(w, w->rc_start, w->rc_nrt, w->rc_nrb, w->next_free >> w->cluster_bits);
    if (r < 0)
        return r;
    if (fdatasync(w->fd) < 0)
        return writer_failed(w, lsm_error_errno(-errno, "cannot sync qcow2 metadata"));
    if (!w->hdr_dirty)
        return 0;
    /* The header names the new area last: until it is on disk, the old
     * area (free now, but never overwritten) still describes the image. */
    r = pwrite_full(w->fd, w->hdr, w->hdr_write_len, 0);
    if (r < 0)
        return writer_failed(w, lsm_error_errno(r, "cannot write the qcow2 header at 0x0"));
    if (fdatasync(w->fd) < 0)
        return writer_failed(w, lsm_error_errno(-errno, "cannot sync the qcow2 header"));
    w->hdr_dirty = false;
    return 0;
}

int qcow2_writer_finish(struct qcow2_writer *w)
{
    cpool_drain(w->pool);   /* (the workers are idle from here on) */
    int r = check_async(w);
    if (r == 0)
        r = check_usable(w);
    if (r < 0)
        return r;
    r = mark_incomplete(w);
    if (r < 0)
        return r;
    r = stage_flush(w, false);
    if (r < 0)
        return r;
    r = write_tables(w);
    if (r < 0)
        return r;
    if (w->nbitmaps) {
        r = write_bitmap_directory(w);
        if (r < 0)
            return r;
    }
    uint64_t rt_off = 0;
    uint32_t rt_clusters = 0;
    r = write_refcounts(w, &rt_off, &rt_clusters);
    if (r < 0)
        return r;
    if (fdatasync(w->fd) < 0)
        return writer_failed(w, lsm_error_errno(-errno, "cannot sync qcow2 metadata"));

    be64_put(w->hdr + offsetof(struct qcow2_header, refcount_table_offset), rt_off);
    be32_put(w->hdr + offsetof(struct qcow2_header, refcount_table_clusters), rt_clusters);
    /* The last header write: the image is complete once it is on disk. */
    if (w->hdr_v2) {
        use_v2_header(w);
    } else {
        uint8_t *f = w->hdr + offsetof(struct qcow2_header, incompatible_features);
        be64_put(f, be64_get(f) & ~QCOW2_INCOMPAT_LSM_INCOMPLETE);
    }
    r = pwrite_full(w->fd, w->hdr, w->hdr_write_len, 0);
    if (r < 0)
        return writer_failed(w, lsm_error_errno(r, "cannot write the qcow2 header at 0x0"));
    if (fdatasync(w->fd) < 0)
        return writer_failed(w, lsm_error_errno(-errno, "cannot sync the qcow2 header"));
    w->finished = true;
    return 0;
}

void qcow2_writer_close(struct qcow2_writer *w)
{
    if (!w)
        return;
    if (w->cache)
        for (unsigned i = 0; i < w->cache_n; i++)
            free(w->cache[i].table);
    free(w->cache);
    free(w->l1);
    free(w->fresh);
    free(w->hdr);
    free(w->hdr_v2);
    for (unsigned i = 0; i < w->nbitmaps; i++)
        free(w->bitmaps[i].name);
    free(w->bitmaps);
    free(w->free);
    cpool_free(w->pool);
    if (w->compress)
        pthread_mutex_destroy(&w->mu);
    free(w->stage);
    free(w->csegs);
    free(w->ccounts);
    free(w);
}

/* ---- set_backing -------------------------------------------------------- */

int qcow2_set_backing(int fd, uint32_t align, const char *backing_name, enum lsm_format backing_fmt)
{
    if (!is_pow2(align) || align > (1u << QCOW2_MAX_CLUSTER_BITS))
        return lsm_error(-EINVAL, "invalid I/O alignment %u", align);
    if (backing_name && (strlen(backing_name) == 0 || strlen(backing_name) > QCOW2_MAX_BACKING_NAME))
        return lsm_error(-EINVAL, "invalid backing file name length %zu: must be 1..%d",
                         strlen(backing_name), QCOW2_MAX_BACKING_NAME);
    if (backing_fmt != LSM_FMT_AUTO && !fmt_name(backing_fmt))
        return lsm_error(-EINVAL, "invalid backing format %d", (int)backing_fmt);

    /* The reader's validation of the whole header area first. */
    bool is_blockdev = false;
    uint64_t fsize = 0;
    int r = get_device(fd, &is_blockdev, &fsize);
    if (r < 0)
        return r;
    struct qcow2_state st = { 0 };
    struct lsm_image img = {
        .ops = &lsm_qcow2_ops, .format = LSM_FMT_QCOW2, .filename = (char *)"destination",
        .fd = fd, .data_fd = fd, .is_blockdev = is_blockdev, .file_size = fsize,
    };
    r = qcow2_parse_header(&img, &st, 0);
    free(img.backing_name);
    free(st.data_file_name);
    if (r < 0)
        return r;
    uint32_t cs = st.cluster_size;
    r = check_align(align, cs);
    if (r < 0)
        return r;
    if (backing_name && st.data_file_raw)
        return lsm_error(-EINVAL, "images with a raw external data file cannot have a backing file");

    _cleanup_free_ uint8_t *old = aligned_alloc_zero(cs);
    _cleanup_free_ uint8_t *neu = aligned_alloc_zero(cs);
    if (!old || !neu)
        return lsm_error(-ENOMEM, "cannot allocate a header buffer");
    r = pread_full(fd, old, cs, 0);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the qcow2 header");
    uint32_t hlen = st.h.header_length;

    /* Keep every extension but the backing format. */
    struct hdr_ext exts[MAX_HDR_EXTS];
    size_t n = 0, old_end = hlen;
    r = collect_exts(old, cs, hlen, QCOW2_EXT_BACKING_FORMAT, exts, &n, &old_end);
    if (r < 0)
        return r;

    const char *bf = backing_name ? fmt_name(backing_fmt) : NULL;
    if (bf)
        exts[n++] = (struct hdr_ext){ QCOW2_EXT_BACKING_FORMAT, (uint32_t)strlen(bf), bf };
    long used = layout_header(neu, cs, old, hlen, exts, n, backing_name);
    if (used < 0)
        return lsm_error(-ENOSPC, "backing file name and header extensions do not fit in the "
                         "first cluster (%u bytes)", cs);
    /* Rewrite as far as the old or the new content reaches. */
    size_t len = align_up(MAX((size_t)used, old_end), align);
    if (len > cs)
        len = cs;
    r = pwrite_full(fd, neu, len, 0);
    if (r < 0)
        return lsm_error_errno(r, "cannot write the qcow2 header at 0x0");
    if (fdatasync(fd) < 0)
        return lsm_error_errno(-errno, "cannot sync the qcow2 header");
    return 0;
}
