/* The plan: source extents merged into destination-granule-aligned runs.
 *
 * A run of whole granules of one source extent keeps the extent's kind (and
 * for data its cookie, so it can be read asynchronously).  A granule
 * that several extents share becomes one run: SKIP if all of it is absent,
 * ZERO if all of it reads as zeroes, DATA if all of it is data contiguous in
 * one place, otherwise MIXED (the pipeline reads it without a cookie: the
 * source endpoint reads the range as it can).
 */
#include <inttypes.h>

#include "copy.h"
#include "error.h"
#include "util.h"

void lsm_plan_init(struct lsm_plan *p, struct lsm_ep *src, uint64_t size, uint64_t granule,
                   bool absent_zero_mixed_is_data)
{
    p->src = src;
    p->size = size;
    p->nbuf = p->next = 0;
    p->fetched = 0;
    p->granule = granule;
    p->pos = 0;
    p->one_layer_zero_mixed = absent_zero_mixed_is_data;
    p->have_cur = false;
}

static int fetch(struct lsm_plan *p)
{
    if (p->have_cur)
        return 0;
    if (p->next == p->nbuf) {
        if (p->fetched >= p->size)
            return lsm_error(-EIO, "source %s: extents end at offset %" PRIu64 " before the end (%" PRIu64 ")",
                             p->src->name, p->pos, p->size);
        int n = lsm_ep_extents(p->src, p->fetched, p->size - p->fetched, p->buf, LSM_PLAN_EXTENTS);
        if (n < 0)
            return n;
        if (n == 0)
            return lsm_error(-EIO, "source %s: no extents at offset %" PRIu64, p->src->name, p->fetched);
        p->nbuf = (unsigned)n;
        p->next = 0;
        const struct lsm_ep_extent *last = &p->buf[n - 1];
        p->fetched = last->start + last->length;
    }
    p->cur = p->buf[p->next++];
    if (p->cur.length == 0)
        return lsm_error(-EIO, "source %s: empty extent at offset %" PRIu64, p->src->name, p->pos);
    if (p->cur.start != p->pos)
        return lsm_error(-EIO, "source %s: extent at %" PRIu64 " where %" PRIu64 " was expected",
                         p->src->name, p->cur.start, p->pos);
    if (p->cur.start + p->cur.length > p->size)
        p->cur.length = p->size - p->cur.start;
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
        if (p->cur.kind == LSM_EP_DATA)
            p->cur.loc_off += n;
    }
    p->pos += n;
}

static enum lsm_run_kind run_kind(enum lsm_ep_kind k)
{
    switch (k) {
    case LSM_EP_ABSENT: return LSM_RUN_SKIP;
    case LSM_EP_ZERO: return LSM_RUN_ZERO;
    default: return LSM_RUN_DATA;
    }
}

int lsm_plan_next(struct lsm_plan *p, struct lsm_run *r)
{
    uint64_t size = p->size;
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
        r->loc = p->cur.loc;
        r->loc_off = p->cur.loc_off;
        consume(p, r->length);
        return 1;
    }

    /* The current extent ends inside the granule: gather its pieces. */
    uint64_t gstart = p->pos;
    uint64_t gend = MIN(gstart + g, size);
    bool any_absent = false, any_zero = false, any_data = false, contiguous = true;
    const void *loc = NULL;
    uint64_t host = 0, next_host = 0;
    while (p->pos < gend) {
        ret = fetch(p);
        if (ret < 0)
            return ret;
        uint64_t n = MIN(p->cur.start + p->cur.length, gend) - p->pos;
        switch (p->cur.kind) {
        case LSM_EP_ABSENT: any_absent = true; break;
        case LSM_EP_ZERO: any_zero = true; break;
        case LSM_EP_DATA:
            if (!any_data) {
                loc = p->cur.loc;
                host = p->cur.loc_off;
            } else if (p->cur.loc != loc || p->cur.loc_off != next_host) {
                contiguous = false;
            }
            next_host = p->cur.loc_off + n;
            any_data = true;
            break;
        }
        consume(p, n);
    }
    r->start = gstart;
    r->length = gend - gstart;
    r->loc = NULL;
    r->loc_off = 0;
    if (!any_data && !any_zero)
        r->kind = LSM_RUN_SKIP;
    else if (!any_data && (!any_absent || !p->one_layer_zero_mixed))
        r->kind = LSM_RUN_ZERO;
    else if (any_data && !any_zero && !any_absent && contiguous && loc) {
        r->kind = LSM_RUN_DATA;
        r->loc = loc;
        r->loc_off = host;
    } else
        r->kind = LSM_RUN_MIXED;
    return 1;
}
