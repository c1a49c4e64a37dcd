/* Volume generations (generation.h). */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "generation.h"
#include "lvm.h"
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

int lsm_generation_from_tags(const char *tags, uint64_t *out)
{
    const size_t plen = strlen(LSM_GENERATION_TAG_PREFIX);
    int found = 0;
    uint64_t v = 0;
    for (const char *p = tags; *p;) {
        const char *end = strchrnul(p, ',');
        size_t len = (size_t)(end - p);
        if (len >= plen && !strncmp(p, LSM_GENERATION_TAG_PREFIX, plen)) {
            const char *num = p + plen;
            size_t nlen = len - plen;
            /* One spelling per number, so that --deltag names it exactly. */
            if (nlen > 1 && num[0] == '0')
                return -EINVAL;
            if (lsm_generation_parse(num, nlen, &v) < 0 || memchr(num, '\n', nlen))
                return -EINVAL;
            found++;
        }
        p = *end ? end + 1 : end;
    }
    if (found > 1)
        return -EUCLEAN;
    *out = found ? v : 0;
    return 0;
}

/* Where a volume's generation lives: a file beside it, or the tags of an
 * LV (tags: as the lvs that found the LV printed them). */
struct gen_loc {
    char *file;
    char *vg, *lv, *tags;
};

static void gen_loc_free(struct gen_loc *l)
{
    free(l->file);
    free(l->vg);
    free(l->lv);
    free(l->tags);
}

static bool under_dev(const char *dir)
{
    return !strcmp(dir, "/dev") || !strncmp(dir, "/dev/", 5);
}

static int gen_locate(const char *volume, struct gen_loc *loc)
{
    memset(loc, 0, sizeof *loc);
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
        /* Never a file in /dev: a block volume's generation is a tag of
         * its LV, which has to exist to have one. */
        if (under_dev(rd))
            return lsm_error(-ENOENT, "%s: no such volume (the generation of a logical volume "
                             "is kept in its tags)", volume);
        if (asprintf(&loc->file, "%s/%s.generation", strcmp(rd, "/") ? rd : "", name) < 0)
            return lsm_error(-ENOMEM, "out of memory");
        return 0;
    }
    if (S_ISBLK(st.st_mode)) {
        int r = lsm_lvm_lv_of_devno(st.st_rdev, &loc->vg, &loc->lv, &loc->tags);
        if (r == -ENODEV)
            return lsm_error(-ENOTSUP, "%s (device %u:%u) is not an active logical volume: "
                             "generations are kept for files and logical volumes only",
                             volume, major(st.st_rdev), minor(st.st_rdev));
        if (r < 0)
            lsm_error_prefix("%s", volume);
        return r;
    }
    if (!S_ISREG(st.st_mode))
        return lsm_error(-ENOTSUP, "%s: generations are kept for files and logical volumes only", volume);
    _cleanup_free_ char *r = realpath(volume, NULL);
    if (!r)
        return lsm_error_errno(-errno, "%s", volume);
    if (asprintf(&loc->file, "%s.generation", r) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    return 0;
}

static int parse_lv_gen(const struct gen_loc *loc, const char *tags, uint64_t *out)
{
    int r = lsm_generation_from_tags(tags, out);
    if (r == -EUCLEAN)
        return lsm_error(-EUCLEAN, "%s/%s has more than one generation tag (%s): remove all but the "
                         "right one with lvchange --deltag", loc->vg, loc->lv, tags);
    if (r < 0)
        return lsm_error(r, "%s/%s has a generation tag that is not %sN (N decimal, no leading zero): %s",
                         loc->vg, loc->lv, LSM_GENERATION_TAG_PREFIX, tags);
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

static int read_loc(const struct gen_loc *loc, uint64_t *out)
{
    return loc->file ? read_gen(loc->file, out) : parse_lv_gen(loc, loc->tags, out);
}

static int write_lv_gen(const struct gen_loc *loc, uint64_t cur, uint64_t next)
{
    char del[48], add[48];
    snprintf(del, sizeof del, "%s%" PRIu64, LSM_GENERATION_TAG_PREFIX, cur);
    snprintf(add, sizeof add, "%s%" PRIu64, LSM_GENERATION_TAG_PREFIX, next);
    int r = lsm_lvm_lv_retag(loc->vg, loc->lv, cur ? del : NULL, add);
    if (r < 0)
        return r;
    /* Read it back, so that an lvchange that exited 0 without the change,
     * or a writer outside this process that set another number meanwhile,
     * fails the bump instead of passing unseen.  Two writers outside one
     * process that both bump from the same N both find N + 1 here: as for
     * files, the orchestrator's locking keeps them apart (generation.h). */
    _cleanup_free_ char *tags = NULL;
    r = lsm_lvm_lv_tags(loc->vg, loc->lv, &tags);
    if (r < 0)
        return r;
    uint64_t now;
    r = parse_lv_gen(loc, tags, &now);
    if (r < 0)
        return r;
    if (now != next)
        return lsm_error(-ESTALE, "%s/%s has generation %" PRIu64 " after setting %" PRIu64,
                         loc->vg, loc->lv, now, next);
    return 0;
}

/* The lock is held from finding the volume (for an LV: one lvs that also
 * reads its tags) to the end of the change. */
int lsm_generation_get(const char *volume, uint64_t *out)
{
    struct gen_loc loc;
    pthread_mutex_lock(&gen_lock);
    int r = gen_locate(volume, &loc);
    if (r == 0)
        r = read_loc(&loc, out);
    pthread_mutex_unlock(&gen_lock);
    gen_loc_free(&loc);
    return r;
}

int lsm_generation_bump(const char *volume, uint64_t expected)
{
    struct gen_loc loc;
    uint64_t cur;
    pthread_mutex_lock(&gen_lock);
    int r = gen_locate(volume, &loc);
    if (r == 0)
        r = read_loc(&loc, &cur);
    if (r == 0 && cur != expected)
        r = lsm_error(-ESTALE, "%s has generation %" PRIu64 ", not the expected %" PRIu64,
                      volume, cur, expected);
    if (r == 0 && expected >= LSM_GENERATION_MAX)
        r = lsm_error(-EOVERFLOW, "%s: generation %" PRIu64 " cannot grow", volume, expected);
    if (r == 0 && loc.file) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%" PRIu64 "\n", expected + 1);
        r = lsm_write_file_atomic(loc.file, buf, (size_t)n, 0644);
    } else if (r == 0) {
        r = write_lv_gen(&loc, cur, expected + 1);
    }
    pthread_mutex_unlock(&gen_lock);
    gen_loc_free(&loc);
    return r;
}
