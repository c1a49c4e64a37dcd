/* The process-wide memory budget.  Every buffer pool and every metadata
 * cache of a copy draws what it allocates from one budget, so that several
 * jobs in one process (the worker service) stay within --memory together.
 * Thread-safe.  Without lsm_budget_init() the budget is unlimited.
 *
 * Library layer: never prints. */
#ifndef LSM_BUDGET_H
#define LSM_BUDGET_H

#include <stdint.h>

/* Set the total (bytes; 0: unlimited).  Call before any job starts. */
void lsm_budget_init(uint64_t total);
/* Reserve up to want bytes, at least min: returns what was reserved
 * (between min and want, in multiples of unit when unit > 0), or 0 when not
 * even min is free (then -ENOMEM is the caller's to report, with a message
 * naming the budget).  min <= want. */
uint64_t lsm_budget_reserve(uint64_t min, uint64_t want, uint64_t unit);
void lsm_budget_release(uint64_t bytes);
/* In use and total (0: unlimited), for status output. */
void lsm_budget_usage(uint64_t *used, uint64_t *total);

#endif
