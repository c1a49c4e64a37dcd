/* Error reporting for library layers.
 *
 * Every function that can fail returns 0 (or a non-negative count) on
 * success and a negative errno on failure.  A human message travels
 * separately in thread-local storage: the function that detects a failure
 * records it with lsm_error()/lsm_error_errno(); callers may add context
 * with lsm_error_prefix(); the command line prints lsm_last_error().
 * Library code never prints.
 */
#ifndef LSM_ERROR_H
#define LSM_ERROR_H

#include <errno.h>

#define LSM_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Record "MESSAGE" and return err (a negative errno). */
int lsm_error(int err, const char *fmt, ...) LSM_PRINTF(2, 3);
/* Record "MESSAGE: strerror(-err)" and return err (a negative errno). */
int lsm_error_errno(int err, const char *fmt, ...) LSM_PRINTF(2, 3);
/* Prepend "PREFIX: " to the recorded message. */
void lsm_error_prefix(const char *fmt, ...) LSM_PRINTF(1, 2);
/* The recorded message, or "" if none. */
const char *lsm_last_error(void);
void lsm_error_clear(void);

#endif
