/* Volume generations (generation.h). */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "generation.h"
#include "store.h"

static pthread_mutex_t gen_lock = PTHREAD_MUTEX_INITIALIZER;

int lsm_generation_parse(const char *buf, size_t len, uint64_t *out)
{
    if (len && buf[len - 1] == '\n')
        len--;
    if (len == 0 || len > 16)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(buf[i] - '0');
    }
    if (v > LSM_GENERATION_MAX)
        return -EINVAL;
    *out = v;
    return 0;
}

static int gen_file(const char *volume, char **out)
{
    struct stat st;
    if (stat(volume, &st) < 0) {
        if (errno != ENOENT)
            return lsm_error_errno(-errno, "%s", volume);
        /* A volume to be created: its generation file may exist (a volume
         * removed and made again keeps its counter). */
        _cleanup_free_ char *d = strdup(volume);
        if (!d)
            return lsm_error(-ENOMEM, "out of memory");
        char *slash = strrchr(d, '/');
        const char *name = slash ? volume + (slash - d) + 1 : volume;
        if (slash)
            *slash = '\0';
        _cleanup_free_ char *rd = realpath(slash ? (*d ? d : "/") : ".", NULL);
        if (!rd)
            return lsm_error_errno(-errno, "directory of %s", volume);
        if (!*name)
            return lsm_error(-EINVAL, "%s: not a file name", volume);
        if (asprintf(out, "%s/%s.generation", strcmp(rd, "/") ? rd : "", name) < 0)
            return lsm_error(-ENOMEM, "out of memory");
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return lsm_error(-ENOTSUP, "%s: generations are kept for file volumes only", volume);
    _cleanup_free_ char *r = realpath(volume, NULL);
    if (!r)
        return lsm_error_errno(-errno, "%s", volume);
    if (asprintf(out, "%s.generation", r) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    return 0;
}

static int read_gen(const char *file, uint64_t *out)
{
    _cleanup_close_ int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) {
            *out = 0;
            return 0;
        }
        return lsm_error_errno(-errno, "cannot open %s", file);
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return lsm_error(-EINVAL, "%s is not a regular file", file);
    char buf[32];
    ssize_t n = lsm_pread_all(fd, buf, sizeof buf, 0);
    if (n < 0)
        return lsm_error_errno((int)n, "cannot read %s", file);
    if (lsm_generation_parse(buf, (size_t)n, out) < 0)
        return lsm_error(-EINVAL, "%s does not hold a generation (a decimal number)", file);
    return 0;
}

int lsm_generation_get(const char *volume, uint64_t *out)
{
    _cleanup_free_ char *file = NULL;
    int r = gen_file(volume, &file);
    if (r < 0)
        return r;
    pthread_mutex_lock(&gen_lock);
    r = read_gen(file, out);
    pthread_mutex_unlock(&gen_lock);
    return r;
}

int lsm_generation_bump(const char *volume, uint64_t expected)
{
    _cleanup_free_ char *file = NULL;
    int r = gen_file(volume, &file);
    if (r < 0)
        return r;
    pthread_mutex_lock(&gen_lock);
    uint64_t cur;
    r = read_gen(file, &cur);
    if (r == 0 && cur != expected)
        r = lsm_error(-ESTALE, "%s has generation %" PRIu64 ", not the expected %" PRIu64,
                      volume, cur, expected);
    if (r == 0 && expected >= LSM_GENERATION_MAX)
        r = lsm_error(-EOVERFLOW, "%s: generation %" PRIu64 " cannot grow", volume, expected);
    if (r == 0) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%" PRIu64 "\n", expected + 1);
        r = lsm_write_file_atomic(file, buf, (size_t)n, 0644);
    }
    pthread_mutex_unlock(&gen_lock);
    return r;
}
