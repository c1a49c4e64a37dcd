/* A fixed pool of aligned I/O buffers: one anonymous mapping cut into
 * count = budget / buf_size equal buffers, handed out from a stack of free
 * indexes.  One region keeps registration with io_uring to one iovec per
 * buffer and makes a stray pointer easy to catch.
 *
 * The region starts on a huge-page boundary and asks for transparent huge
 * pages.  This is for the device, not the TLB: an O_DIRECT request is
 * built from the buffer's physical pages, and a queue limits how many
 * discontiguous segments one request may carry (254 on virtio-blk).  A
 * 1 MiB buffer of scattered 4 KiB pages is 256 segments, so the block layer
 * splits every such request in two and can no longer merge neighbours;
 * measured on this project's machine, sequential 1 MiB reads reached the
 * disk as ~550 KiB requests and ran at 0.7x of fio's, whose buffers
 * happened to be contiguous.  Huge pages make a buffer of up to 2 MiB one
 * segment.  Where THP is off the pool works as before. */
#include <assert.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "io.h"
#include "util.h"

#define HUGE_ALIGN ((size_t)2 << 20)

static void *map_anon(size_t len)
{
    return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/* The pool's mapping of at least bytes.  From 256 KiB on (unless plain
 * pages are asked for) it is whole huge pages on a HUGE_ALIGN boundary
 * with MADV_HUGEPAGE, so that a pool of one 1 MiB buffer is contiguous too
 * (at most 2 MiB more memory); below, plain pages. */
static void *map_buffers(size_t bytes, unsigned flags, size_t *map_len)
{
    if ((flags & LSM_BUFPOOL_SMALL_PAGES) || bytes < HUGE_ALIGN / 8) {
        void *p = map_anon(bytes);
#ifdef MADV_NOHUGEPAGE
        if (p != MAP_FAILED && (flags & LSM_BUFPOOL_SMALL_PAGES))
            (void)madvise(p, bytes, MADV_NOHUGEPAGE);   /* also with THP=always */
#endif
        *map_len = bytes;
        return p;
    }
    bytes = align_up(bytes, HUGE_ALIGN);
    /* map one huge page more and trim both ends to the boundary */
    char *raw = map_anon(bytes + HUGE_ALIGN);
    if (raw == MAP_FAILED)
        return MAP_FAILED;
    char *base = (char *)align_up((uintptr_t)raw, HUGE_ALIGN);
    size_t head = (size_t)(base - raw);
    if (head)
        munmap(raw, head);
    munmap(base + bytes, HUGE_ALIGN - head);
#ifdef MADV_HUGEPAGE
    (void)madvise(base, bytes, MADV_HUGEPAGE);   /* advice: THP may be off */
#endif
    *map_len = bytes;
    return base;
}

int lsm_bufpool_create(size_t budget, size_t buf_size, size_t align, struct lsm_bufpool **out)
{
    return lsm_bufpool_create_flags(budget, buf_size, align, 0, out);
}

int lsm_bufpool_create_flags(size_t budget, size_t buf_size, size_t align, unsigned flags,
                             struct lsm_bufpool **out)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        page = 4096;
    if (!is_pow2(align) || align > (size_t)page)
        return lsm_error(-EINVAL, "cannot create a buffer pool: alignment %zu is not a power of two up to %ld",
                         align, page);
    if (buf_size == 0 || buf_size % align)
        return lsm_error(-EINVAL, "cannot create a buffer pool: buffer size %zu is not a multiple of %zu",
                         buf_size, align);
    size_t count = MAX(budget / buf_size, (size_t)1);
    if (count > UINT32_MAX || count > SIZE_MAX / buf_size)
        return lsm_error(-EINVAL, "cannot create a buffer pool of %zu buffers of %zu bytes",
                         count, buf_size);

    struct lsm_bufpool *p = calloc(1, sizeof *p);
    if (!p)
        return lsm_error_errno(-ENOMEM, "cannot create a buffer pool");
    p->free_stack = calloc(count, sizeof *p->free_stack);
    if (!p->free_stack) {
        free(p);
        return lsm_error_errno(-ENOMEM, "cannot create a buffer pool of %zu buffers", count);
    }
    size_t bytes = count * buf_size;
    size_t map_len;
    void *base = map_buffers(bytes, flags, &map_len);
    if (base == MAP_FAILED) {
        int err = -errno;
        free(p->free_stack);
        free(p);
        return lsm_error_errno(err, "cannot map %zu bytes of I/O buffers", bytes);
    }
    p->base = base;
    p->map_len = map_len;
    p->buf_size = buf_size;
    p->count = (unsigned)count;
    /* Hand out low addresses first: index 0 on top of the stack. */
    for (unsigned i = 0; i < p->count; i++)
        p->free_stack[i] = p->count - 1 - i;
    p->nfree = p->count;
    *out = p;
    return 0;
}

void lsm_bufpool_destroy(struct lsm_bufpool *p)
{
    if (!p)
        return;
    munmap(p->base, p->map_len);
    free(p->free_stack);
    free(p);
}

void *lsm_bufpool_get(struct lsm_bufpool *p, int *index)
{
    if (!p->nfree)
        return NULL;
    unsigned i = p->free_stack[--p->nfree];
    if (index)
        *index = (int)i;
    return (char *)p->base + (size_t)i * p->buf_size;
}

void lsm_bufpool_put(struct lsm_bufpool *p, void *buf)
{
    size_t off = (size_t)((char *)buf - (char *)p->base);
    assert((char *)buf >= (char *)p->base && off % p->buf_size == 0);
    assert(off / p->buf_size < p->count && p->nfree < p->count);
    p->free_stack[p->nfree++] = (unsigned)(off / p->buf_size);
}

struct iovec *lsm_bufpool_iovecs(struct lsm_bufpool *p)
{
    struct iovec *iov = calloc(p->count, sizeof *iov);
    if (!iov) {
        lsm_error_errno(-ENOMEM, "cannot describe %u I/O buffers", p->count);
        return NULL;
    }
    for (unsigned i = 0; i < p->count; i++) {
        iov[i].iov_base = (char *)p->base + (size_t)i * p->buf_size;
        iov[i].iov_len = p->buf_size;
    }
    return iov;
}
