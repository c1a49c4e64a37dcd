/* Private to io/: the backend tables and the helpers they share. */
#ifndef LSM_IO_INTERNAL_H
#define LSM_IO_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "io.h"

#ifdef HAVE_LIBURING
extern const struct lsm_io_ops lsm_uring_ops;
#endif
#ifdef HAVE_LIBAIO
extern const struct lsm_io_ops lsm_aio_ops;
#endif
extern const struct lsm_io_ops lsm_psync_ops;
extern const struct lsm_io_ops lsm_fault_ops;

/* Wrap inner (which the wrapper then owns) with the fault injector described
 * by spec (the LSM_IO_FAULT syntax).  On failure inner is left alone. */
int lsm_fault_wrap(struct lsm_io *inner, const char *spec, struct lsm_io **out);
const char *lsm_fault_name(const struct lsm_io *io);

/* Run one request synchronously (pread/pwrite loops, lsm_file_zero,
 * fdatasync); returns what goes into req->result (bytes, 0 for a flush, or
 * -errno).  A failed zero also records lsm_file_zero's message. */
int64_t lsm_io_exec_sync(struct lsm_io_req *req);

/* Requests completed without the kernel's help (synthetic completions):
 * a ring of at most cap pointers, cap = depth, so it never overflows. */
struct lsm_doneq {
    struct lsm_io_req **r;
    unsigned cap, head, count;
};
int lsm_doneq_init(struct lsm_doneq *q, unsigned cap);
void lsm_doneq_free(struct lsm_doneq *q);
static inline void lsm_doneq_push(struct lsm_doneq *q, struct lsm_io_req *req)
{
    q->r[(q->head + q->count) % q->cap] = req;
    q->count++;
}
/* Move up to max finished requests to done; returns how many. */
static inline unsigned lsm_doneq_pop(struct lsm_doneq *q, struct lsm_io_req **done, unsigned max)
{
    unsigned n = 0;
    while (q->count && n < max) {
        done[n++] = q->r[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    return n;
}

/* errno name ("EPERM") or number ("1") to a positive errno; 0 if unknown. */
int lsm_errno_parse(const char *s);

#endif
