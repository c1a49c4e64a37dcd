/* Bandwidth limiters: token buckets in a tree, safe to share between
 * threads.
 *
 * A take locks the limiter and then each parent in turn (always child
 * before parent: a tree gives every thread the same order, so no two takes
 * can deadlock), refills every bucket for the time passed, and takes the
 * bytes from all of them only if none asks to wait.  A job waiting on its
 * own limit therefore never holds back the tokens of the global one. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "limiter.h"
#include "util.h"

#define LIMITER_DEPTH_MAX 8   /* job under global; room for a few levels more */

struct lsm_limiter {
    pthread_mutex_t mu;
    struct lsm_limiter *parent;
    uint64_t rate;            /* bytes/s, 0: unlimited */
    uint64_t burst;
    double tokens;
    uint64_t last_ns;         /* when tokens were last refilled (0: never) */
};

static uint64_t burst_of(uint64_t rate)
{
    return MAX(rate / 10, 1 * MiB);
}

int lsm_limiter_create(uint64_t rate, struct lsm_limiter *parent, struct lsm_limiter **out)
{
    unsigned depth = 1;
    for (struct lsm_limiter *p = parent; p; p = p->parent)
        if (++depth > LIMITER_DEPTH_MAX)
            return -EINVAL;
    struct lsm_limiter *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    pthread_mutex_init(&l->mu, NULL);
    l->parent = parent;
    l->rate = rate;
    l->burst = burst_of(rate);
    l->tokens = (double)l->burst;
    *out = l;
    return 0;
}

void lsm_limiter_free(struct lsm_limiter *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void lsm_limiter_set_rate(struct lsm_limiter *l, uint64_t rate)
{
    pthread_mutex_lock(&l->mu);
    bool was_unlimited = l->rate == 0;
    l->rate = rate;
    l->burst = burst_of(rate);
    /* From unlimited, start with a full bucket; otherwise keep what was
     * saved (or owed), within the new burst. */
    if (was_unlimited || l->tokens > (double)l->burst)
        l->tokens = (double)l->burst;
    pthread_mutex_unlock(&l->mu);
}

uint64_t lsm_limiter_rate(struct lsm_limiter *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t r = l->rate;
    pthread_mutex_unlock(&l->mu);
    return r;
}

/* With l->mu held: refill for the time up to now_ns, then the wait before
 * bytes may be taken (0: now). */
static uint64_t bucket_wait(struct lsm_limiter *l, uint64_t bytes, uint64_t now_ns)
{
    if (l->last_ns == 0 || now_ns < l->last_ns) {
        /* first use, or a clock from another origin (tests): no refill */
        l->last_ns = now_ns;
    } else if (now_ns > l->last_ns) {
        if (l->rate) {
            l->tokens += (double)(now_ns - l->last_ns) * (double)l->rate / 1e9;
            if (l->tokens > (double)l->burst)
                l->tokens = (double)l->burst;
        }
        l->last_ns = now_ns;
    }
    if (!l->rate)
        return 0;
    /* A request larger than the burst passes once the bucket is full and
     * drives it negative: the long-run rate still holds. */
    double need = MIN((double)bytes, (double)l->burst);
    if (l->tokens >= need)
        return 0;
    double wait = (need - l->tokens) * 1e9 / (double)l->rate;
    return wait < 1 ? 1 : (uint64_t)wait;
}

uint64_t lsm_limiter_take(struct lsm_limiter *l, uint64_t bytes, uint64_t now_ns)
{
    if (!l)
        return 0;
    struct lsm_limiter *chain[LIMITER_DEPTH_MAX];
    unsigned n = 0;
    uint64_t wait = 0;
    for (struct lsm_limiter *p = l; p && n < LIMITER_DEPTH_MAX; p = p->parent) {
        pthread_mutex_lock(&p->mu);
        chain[n++] = p;
        wait = MAX(wait, bucket_wait(p, bytes, now_ns));
    }
    if (wait == 0)
        for (unsigned i = 0; i < n; i++)
            if (chain[i]->rate)
                chain[i]->tokens -= (double)bytes;
    while (n)
        pthread_mutex_unlock(&chain[--n]->mu);
    return wait;
}
