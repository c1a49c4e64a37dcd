/* The process-wide memory budget: one counter under one mutex. */
#include <pthread.h>

#include "budget.h"
#include "util.h"

static pthread_mutex_t budget_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t budget_total;   /* 0: unlimited */
static uint64_t budget_used;

void lsm_budget_init(uint64_t total)
{
    pthread_mutex_lock(&budget_mu);
    budget_total = total;
    pthread_mutex_unlock(&budget_mu);
}

uint64_t lsm_budget_reserve(uint64_t min, uint64_t want, uint64_t unit)
{
    if (want < min)
        want = min;
    if (want == 0)
        return 0;
    pthread_mutex_lock(&budget_mu);
    uint64_t got = want;
    if (budget_total) {
        uint64_t free_bytes = budget_used < budget_total ? budget_total - budget_used : 0;
        got = MIN(want, free_bytes);
        if (unit)
            got -= got % unit;
        if (got < min)
            got = free_bytes >= min ? min : 0;
    }
    if (got)
        budget_used += got;
    pthread_mutex_unlock(&budget_mu);
    return got;
}

void lsm_budget_release(uint64_t bytes)
{
    pthread_mutex_lock(&budget_mu);
    /* releasing more than is in use is a caller's bug: do not wrap */
    budget_used = bytes <= budget_used ? budget_used - bytes : 0;
    pthread_mutex_unlock(&budget_mu);
}

void lsm_budget_usage(uint64_t *used, uint64_t *total)
{
    pthread_mutex_lock(&budget_mu);
    if (used)
        *used = budget_used;
    if (total)
        *total = budget_total;
    pthread_mutex_unlock(&budget_mu);
}
