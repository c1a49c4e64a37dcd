/* compare as a library: walk both chains' block status together, skip
 * what reads as zero in both, read and compare the rest in 1 MiB chunks. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "flow-copy.h"
#include "error.h"
#include "util.h"

#define CMP_CHUNK (1024 * 1024)

/* Offset of the first non-zero byte, or len.  (Most chunks are equal:
 * the word-wise check and memcmp answer those; the byte scan only runs
 * where a difference is.) */
static size_t first_nonzero(const uint8_t *p, size_t len)
{
    if (lsm_is_zero(p, len))
        return len;
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return i;
    return len;
}

static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
    if (!memcmp(a, b, len))
        return len;
    for (size_t i = 0; i < len; i++)
        if (a[i] != b[i])
            return i;
    return len;
}

int lsm_compare_images(struct lsm_image *a, struct lsm_image *b, bool strict,
                       const volatile sig_atomic_t *cancel, struct lsm_compare_result *res)
{
    memset(res, 0, sizeof *res);
    res->size_mismatch = a->virtual_size != b->virtual_size;
    if (strict && res->size_mismatch) {
        res->outcome = LSM_COMPARE_SIZE;
        return 0;
    }
    uint8_t *ba = malloc(CMP_CHUNK), *bb = malloc(CMP_CHUNK);
    if (!ba || !bb) {
        free(ba);
        free(bb);
        return lsm_error(-ENOMEM, "out of memory");
    }
    int r = 0;
    uint64_t common = MIN(a->virtual_size, b->virtual_size);
    uint64_t total = MAX(a->virtual_size, b->virtual_size);
    for (uint64_t off = 0; off < total && r == 0 && res->outcome == LSM_COMPARE_IDENTICAL;) {
        if (cancel && *cancel) {
            r = lsm_error(-EINTR, "interrupted");
            break;
        }
        struct lsm_extent ea, eb;
        bool in_a = off < a->virtual_size, in_b = off < b->virtual_size;
        uint64_t limit = off < common ? common : total;
        uint64_t want = MIN(limit - off, 1ULL << 30);
        if (in_a && (r = lsm_chain_block_status(a, off, want, &ea)) < 0)
            break;
        if (in_b && (r = lsm_chain_block_status(b, off, want, &eb)) < 0)
            break;
        uint64_t n = want;
        if (in_a)
            n = MIN(n, ea.length);
        if (in_b)
            n = MIN(n, eb.length);
        bool za = !in_a || (ea.flags & LSM_EXT_ZERO), zb = !in_b || (eb.flags & LSM_EXT_ZERO);
        if (strict && in_a && in_b && (ea.flags & LSM_EXT_PRESENT) != (eb.flags & LSM_EXT_PRESENT)) {
            res->outcome = LSM_COMPARE_BLOCK_STATUS;
            res->offset = off;
            break;
        }
        if (za && zb) {
            off += n;
            continue;
        }
        for (uint64_t done = 0; done < n;) {
            size_t len = (size_t)MIN((uint64_t)CMP_CHUNK, n - done);
            uint64_t o = off + done;
            if (!za && (r = lsm_image_pread(a, ba, len, o)) < 0)
                break;
            if (!zb && (r = lsm_image_pread(b, bb, len, o)) < 0)
                break;
            r = 0;
            size_t d = za ? first_nonzero(bb, len) : zb ? first_nonzero(ba, len) : first_diff(ba, bb, len);
            if (d < len) {
                res->outcome = LSM_COMPARE_CONTENT;
                res->offset = o + d;
                break;
            }
            done += len;
        }
        off += n;
    }
    free(ba);
    free(bb);
    return r < 0 ? r : 0;
}
