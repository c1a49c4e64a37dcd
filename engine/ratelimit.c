/* Small helpers of the copy engine: zero detection and a token bucket. */
#include <string.h>

#include "copy.h"
#include "util.h"

bool lsm_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    /* Head up to 8-byte alignment, then words, four at a time. */
    while (len && ((uintptr_t)p & 7)) {
        if (*p)
            return false;
        p++;
        len--;
    }
    const uint64_t *w = (const uint64_t *)p;
    size_t n = len / 8;
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
            return false;
    for (; i < n; i++)
        if (w[i])
            return false;
    p += n * 8;
    for (len &= 7; len; len--, p++)
        if (*p)
            return false;
    return true;
}

void lsm_ratelimit_init(struct lsm_ratelimit *rl, uint64_t rate, uint64_t burst, uint64_t now_ns)
{
    rl->rate = rate;
    rl->burst = burst ? burst : rate;
    rl->tokens = (double)rl->burst;
    rl->last_ns = now_ns;
}

uint64_t lsm_ratelimit_take(struct lsm_ratelimit *rl, uint64_t bytes, uint64_t now_ns)
{
    if (!rl->rate)
        return 0;
    if (now_ns > rl->last_ns) {
        rl->tokens += (double)(now_ns - rl->last_ns) * (double)rl->rate / 1e9;
        if (rl->tokens > (double)rl->burst)
            rl->tokens = (double)rl->burst;
        rl->last_ns = now_ns;
    }
    /* Requests larger than the burst pass when the bucket is full and drive
     * it negative, so the long-run rate still holds. */
    double need = MIN((double)bytes, (double)rl->burst);
    if (rl->tokens >= need) {
        rl->tokens -= (double)bytes;
        return 0;
    }
    double wait = (need - rl->tokens) * 1e9 / (double)rl->rate;
    return wait < 1 ? 1 : (uint64_t)wait;
}
