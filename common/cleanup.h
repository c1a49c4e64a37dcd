/* Scope-bound cleanup helpers (GCC/Clang cleanup attribute). */
#ifndef LSM_CLEANUP_H
#define LSM_CLEANUP_H

#include <stdlib.h>
#include <unistd.h>
#include <errno.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void lsm_freep(void *p)
{
    free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(lsm_freep)

static inline void lsm_closep(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
    }
}
#define _cleanup_close_ _cleanup_(lsm_closep)

/* Define a cleanup function for a pointer type: DEFINE_CLEANUP(struct x *, x_free) */
#define LSM_DEFINE_CLEANUP(type, func)              \
    static inline void func##p(type *p)             \
    {                                               \
        if (*p)                                     \
            func(*p);                               \
    }

/* Hand ownership out of a cleanup-managed variable. */
#define LSM_STEAL(p) ({ __typeof__(p) _tmp = (p); (p) = NULL; _tmp; })
#define LSM_STEAL_FD(fd) ({ int _tmp = (fd); (fd) = -1; _tmp; })

#endif
