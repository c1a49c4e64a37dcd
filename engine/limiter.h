/* Bandwidth limiters: token buckets that are safe to share between
 * threads, in a tree (a job's limiter under a process-wide one).  Taking
 * bytes from a limiter takes them from it and from every parent; the wait
 * returned is the longest any of them asks for.
 *
 * Library layer: never prints. */
#ifndef LSM_LIMITER_H
#define LSM_LIMITER_H

#include <stdint.h>

struct lsm_limiter;

/* rate in bytes/s (0: unlimited), parent may be NULL.  The burst is a tenth
 * of a second of the rate, at least 1 MiB. */
int lsm_limiter_create(uint64_t rate, struct lsm_limiter *parent, struct lsm_limiter **out);
void lsm_limiter_free(struct lsm_limiter *l);
/* Change the rate at once (0: unlimited); the next take sees it. */
void lsm_limiter_set_rate(struct lsm_limiter *l, uint64_t rate);
uint64_t lsm_limiter_rate(struct lsm_limiter *l);
/* Take bytes at now_ns (monotonic): 0 if taken from the limiter and all its
 * parents, else the nanoseconds to wait before asking again (nothing
 * taken, from any of them).  NULL l: always 0. */
uint64_t lsm_limiter_take(struct lsm_limiter *l, uint64_t bytes, uint64_t now_ns);

#endif
