/* The plan: source extents merged into destination-granule-aligned runs.
 *
 * A run of whole granules of one source extent keeps the extent's kind (and
 * for data its host offset, so it can be read asynchronously).  A granule
 * that several extents share becomes one run: SKIP if all of it is absent,
 * ZERO if all of it reads as zeroes, DATA if all of it is data contiguous in
 * one file, otherwise MIXED (the pipeline reads it with the source's
 * guest-visible pread).
 */
#include <inttypes.h>

#include "copy.h"
#include "error.h"
#include "util.h"

void lsm_plan_init(struct lsm_plan *p, struct lsm_copy_src *src, uint64_t granule,
                   bool absent_zero_mixed_is_data)
{
    p->src = src;
    p->granule = granule;
    p->pos = 0;
    p->one_layer_zero_mixed = absent_zero_mixed_is_data;
    p->have_cur = false;
    p->eof = false;
}

static int fetch(struct lsm_plan *p)
{
    if (p->have_cur)
        return 0;
    int r = p->src->ops->next(p->src, &p->cur);
    if (r < 0)
        return r;
    if (r == 0 || p->cur.length == 0)
        return lsm_error(-EIO, "source %s: extents end at offset %" PRIu64 " before the end (%" PRIu64 ")",
                         p->src->ops->name, p->pos, p->src->size);
    if (p->cur.start != p->pos)
        return lsm_error(-EIO, "source %s: extent at %" PRIu64 " where %" PRIu64 " was expected",
                         p->src->ops->name, p->cur.start, p->pos);
    if (p->cur.start + p->cur.length > p->src->size)
        p->cur.length = p->src->size - p->cur.start;
    p->have_cur = true;
    return 0;
}

/* Consume n bytes from the front of the current extent. */
static void consume(struct lsm_plan *p, uint64_t n)
{
    if (n >= p->cur.length) {
        p->have_cur = false;
    } else {
        p->cur.start += n;
        p->cur.length -= n;
        if (p->cur.kind == LSM_SRC_DATA)
            p->cur.host += n;
    }
    p->pos += n;
}

static enum lsm_run_kind run_kind(enum lsm_src_kind k)
{
    switch (k) {
    case LSM_SRC_ABSENT: return LSM_RUN_SKIP;
    case LSM_SRC_ZERO: return LSM_RUN_ZERO;
    default: return LSM_RUN_DATA;
    }
}

int lsm_plan_next(struct lsm_plan *p, struct lsm_run *r)
{
    uint64_t size = p->src->size;
    uint64_t g = p->granule;
    if (p->pos >= size)
        return 0;
    int ret = fetch(p);
    if (ret < 0)
        return ret;

    uint64_t cend = p->cur.start + p->cur.length;
    if (cend == size || cend - p->pos >= g) {
        uint64_t rend = cend == size ? size : align_down(cend, g);
        r->start = p->pos;
        r->length = rend - p->pos;
        r->kind = run_kind(p->cur.kind);
        r->file = p->cur.file;
        r->host = p->cur.host;
        consume(p, r->length);
        return 1;
    }

    /* The current extent ends inside the granule: gather its pieces. */
    uint64_t gstart = p->pos;
    uint64_t gend = MIN(gstart + g, size);
    bool any_absent = false, any_zero = false, any_data = false, contiguous = true;
    struct lsm_file *file = NULL;
    uint64_t host = 0, next_host = 0;
    while (p->pos < gend) {
        ret = fetch(p);
        if (ret < 0)
            return ret;
        uint64_t n = MIN(p->cur.start + p->cur.length, gend) - p->pos;
        switch (p->cur.kind) {
        case LSM_SRC_ABSENT: any_absent = true; break;
        case LSM_SRC_ZERO: any_zero = true; break;
        case LSM_SRC_DATA:
            if (!any_data) {
                file = p->cur.file;
                host = p->cur.host;
            } else if (p->cur.file != file || p->cur.host != next_host) {
                contiguous = false;
            }
            next_host = p->cur.host + n;
            any_data = true;
            break;
        }
        consume(p, n);
    }
    r->start = gstart;
    r->length = gend - gstart;
    r->file = NULL;
    r->host = 0;
    if (!any_data && !any_zero)
        r->kind = LSM_RUN_SKIP;
    else if (!any_data && (!any_absent || !p->one_layer_zero_mixed))
        r->kind = LSM_RUN_ZERO;
    else if (any_data && !any_zero && !any_absent && contiguous && file) {
        r->kind = LSM_RUN_DATA;
        r->file = file;
        r->host = host;
    } else
        r->kind = LSM_RUN_MIXED;
    return 1;
}
