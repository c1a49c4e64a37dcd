/* What the test programs in tests/tools share: a checked line of output
 * ("... ok" or "... FAILED", failures counted for the exit status) and the
 * monotonic clock in seconds. */
#ifndef LSM_TOOL_CHECK_H
#define LSM_TOOL_CHECK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include "util.h"

static int failures;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3), unused));
static void check(bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(" %s\n", ok ? "ok" : "FAILED");
    fflush(stdout);
    if (!ok)
        failures++;
}

static inline double now_s(void)
{
    return (double)lsm_now_ns() / 1e9;
}

#endif
