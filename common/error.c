#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

#define ERRBUF 1024
static __thread char errbuf[ERRBUF];

int lsm_error(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return err;
}

int lsm_error_errno(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof errbuf)
        snprintf(errbuf + n, sizeof errbuf - n, ": %s", strerror(err < 0 ? -err : err));
    return err;
}

void lsm_error_prefix(const char *fmt, ...)
{
    char prefix[ERRBUF], old[ERRBUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, errbuf, sizeof old);
    size_t n = strnlen(prefix, sizeof errbuf - 3);
    memcpy(errbuf, prefix, n);
    memcpy(errbuf + n, ": ", 2);
    n += 2;
    size_t rest = strnlen(old, sizeof old);
    if (rest > sizeof errbuf - 1 - n)
        rest = sizeof errbuf - 1 - n;
    memcpy(errbuf + n, old, rest);
    errbuf[n + rest] = '\0';
}

const char *lsm_last_error(void)
{
    return errbuf;
}

void lsm_error_clear(void)
{
    errbuf[0] = '\0';
}
