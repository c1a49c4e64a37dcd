/* Extension backends (extend-backend.h): loop, LVM, file, command. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "extend-backend.h"
#include "util.h"

extern char **environ;

#define LOOP_MAJOR_NR 7
#define OUTPUT_KEEP 4096

const char *lsm_extend_kind_name(enum lsm_extend_kind k)
{
    switch (k) {
    case LSM_EXTEND_FILE: return "file";
    case LSM_EXTEND_LOOP: return "loop";
    case LSM_EXTEND_LVM: return "lvm";
    case LSM_EXTEND_CMD: return "cmd";
    }
    return "unknown";
}

/* ---- running a program ---- */

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Output as one line: runs of white space become one space. */
static char *squash(const char *buf, size_t len, int status)
{
    char *m = malloc(len + 48);
    if (!m)
        return NULL;
    size_t o = 0;
    bool space = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (isspace(c) || !isprint(c)) {
            space = o > 0;
            continue;
        }
        if (space)
            m[o++] = ' ';
        space = false;
        m[o++] = (char)c;
    }
    if (!o)
        o = (size_t)snprintf(m, 48, "exited with status %d and no output", status);
    m[o] = '\0';
    return m;
}

int lsm_run_program(const char *const *argv, int timeout_ms, int *status, char **output)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return lsm_error_errno(-errno, "cannot run %s: pipe", argv[0]);
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int e = posix_spawn_file_actions_init(&fa);
    if (e) {
        close(pfd[0]);
        close(pfd[1]);
        return lsm_error_errno(-e, "cannot run %s", argv[0]);
    }
    e = posix_spawnattr_init(&attr);
    if (e) {
        posix_spawn_file_actions_destroy(&fa);
        close(pfd[0]);
        close(pfd[1]);
        return lsm_error_errno(-e, "cannot run %s", argv[0]);
    }
    e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    /* pfd[1] may be 1 or 2 if the caller closed those: dup2 onto itself
     * would keep close-on-exec, so go through a descriptor above them. */
    int wfd = pfd[1];
    if (!e && wfd <= 2) {
        wfd = fcntl(pfd[1], F_DUPFD_CLOEXEC, 3);
        if (wfd < 0)
            e = errno;
    }
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, wfd, 1);
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, wfd, 2);
    if (!e)
        e = lsm_spawnattr_own_group(&attr);
    pid_t pid = -1;
    if (!e)
        e = posix_spawnp(&pid, argv[0], &fa, &attr, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(pfd[1]);
    if (wfd != pfd[1] && wfd >= 0)
        close(wfd);
    if (e) {
        close(pfd[0]);
        return lsm_error_errno(-e, "cannot run %s", argv[0]);
    }

    char buf[OUTPUT_KEEP];
    size_t len = 0;
    uint64_t deadline = timeout_ms > 0 ? lsm_now_ns() + (uint64_t)timeout_ms * 1000000ULL : 0;
    bool timed_out = false;
    int rfd = pfd[0];
    while (rfd >= 0) {
        int wait_ms = -1;
        if (deadline) {
            uint64_t now = lsm_now_ns();
            if (now >= deadline) {
                timed_out = true;
                break;
            }
            wait_ms = (int)((deadline - now) / 1000000ULL) + 1;
        }
        struct pollfd p = { .fd = rfd, .events = POLLIN };
        int n = poll(&p, 1, wait_ms);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        char tmp[1024];
        ssize_t r = read(rfd, tmp, sizeof tmp);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            break;
        size_t keep = MIN((size_t)r, sizeof buf - len);
        memcpy(buf + len, tmp, keep);
        len += keep;
    }
    close(pfd[0]);
    if (timed_out) {
        kill(-pid, SIGTERM);
        for (int i = 0; i < 20; i++) {
            if (waitpid(pid, NULL, WNOHANG) == pid)
                goto reaped;
            sleep_ns(50000000ULL);
        }
        kill(-pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    reaped:
        return lsm_error(-ETIMEDOUT, "%s did not finish within %d.%03d s (killed)", argv[0],
                         timeout_ms / 1000, timeout_ms % 1000);
    }
    int st;
    pid_t w;
    while ((w = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
        ;
    if (w < 0)
        return lsm_error_errno(-errno, "cannot wait for %s", argv[0]);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    if (output) {
        *output = squash(buf, len, *status);
        if (!*output)
            return lsm_error(-ENOMEM, "cannot run %s: out of memory", argv[0]);
    }
    return 0;
}

/* ---- probing ---- */

/* First line of /sys/dev/block/MAJ:MIN/REL, malloc'd; NULL if absent. */
static char *sys_read(dev_t rdev, const char *rel)
{
    char p[128];
    snprintf(p, sizeof p, "/sys/dev/block/%u:%u/%s", major(rdev), minor(rdev), rel);
    FILE *f = fopen(p, "re");
    if (!f)
        return NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == ' '))
        line[--n] = '\0';
    return line;
}

/* Split a dm name of an LV ("vg-lv", with '-' in either doubled) into its
 * VG and LV names. */
static int split_dm_name(const char *name, char **vg, char **lv)
{
    size_t n = strlen(name);
    _cleanup_free_ char *a = malloc(n + 1), *b = malloc(n + 1);
    if (!a || !b)
        return -ENOMEM;
    size_t i = 0, o = 0;
    for (; i < n; i++) {
        if (name[i] == '-') {
            if (name[i + 1] == '-') {
                a[o++] = '-';
                i++;
                continue;
            }
            break;
        }
        a[o++] = name[i];
    }
    a[o] = '\0';
    if (i >= n || !o)
        return -EINVAL;
    i++;
    o = 0;
    for (; i < n; i++) {
        if (name[i] == '-') {
            if (name[i + 1] != '-')
                return -EINVAL;     /* a third part: a hidden or sub volume */
            i++;
        }
        b[o++] = name[i];
    }
    b[o] = '\0';
    if (!o)
        return -EINVAL;
    *vg = LSM_STEAL(a);
    *lv = LSM_STEAL(b);
    return 0;
}

int lsm_extend_volume_probe(const char *path, const char *extend_cmd, int cmd_timeout_ms,
                            struct lsm_extend_volume *v)
{
    memset(v, 0, sizeof *v);
    struct stat st;
    if (stat(path, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", path);
    v->path = strdup(path);
    if (!v->path)
        return lsm_error(-ENOMEM, "out of memory");
    if (S_ISREG(st.st_mode)) {
        v->kind = LSM_EXTEND_FILE;
        return 0;
    }
    if (!S_ISBLK(st.st_mode)) {
        lsm_extend_volume_clear(v);
        return lsm_error(-EINVAL, "%s is neither a regular file nor a block device", path);
    }
    if (extend_cmd) {
        v->kind = LSM_EXTEND_CMD;
        v->cmd = extend_cmd;
        v->cmd_timeout_ms = cmd_timeout_ms;
        return 0;
    }
    if (major(st.st_rdev) == LOOP_MAJOR_NR) {
        _cleanup_free_ char *backing = sys_read(st.st_rdev, "loop/backing_file");
        _cleanup_free_ char *limit = sys_read(st.st_rdev, "loop/sizelimit");
        _cleanup_free_ char *off = sys_read(st.st_rdev, "loop/offset");
        if (!backing) {
            lsm_extend_volume_clear(v);
            return lsm_error(-ENXIO, "loop device %s has no backing file", path);
        }
        if (limit && strcmp(limit, "0")) {
            lsm_extend_volume_clear(v);
            return lsm_error(-ENOTSUP, "loop device %s has a size limit (%s bytes): it cannot "
                             "be extended by growing its file", path, limit);
        }
        if (strstr(backing, " (deleted)")) {
            lsm_extend_volume_clear(v);
            return lsm_error(-ENOENT, "the backing file of loop device %s was deleted", path);
        }
        v->kind = LSM_EXTEND_LOOP;
        v->backing = LSM_STEAL(backing);
        v->offset = off ? strtoull(off, NULL, 10) : 0;
        return 0;
    }
    _cleanup_free_ char *uuid = sys_read(st.st_rdev, "dm/uuid");
    _cleanup_free_ char *name = sys_read(st.st_rdev, "dm/name");
    if (uuid && name && !strncmp(uuid, "LVM-", 4)) {
        if (split_dm_name(name, &v->vg, &v->lv) < 0) {
            lsm_extend_volume_clear(v);
            return lsm_error(-ENOTSUP, "%s (%s) is not a plain logical volume", path, name);
        }
        v->kind = LSM_EXTEND_LVM;
        return 0;
    }
    lsm_extend_volume_clear(v);
    return lsm_error(-ENOTSUP, "%s is a block device that is neither a loop device nor an LVM "
                     "logical volume: extend it with --extend-cmd", path);
}

void lsm_extend_volume_clear(struct lsm_extend_volume *v)
{
    free(v->path);
    free(v->backing);
    free(v->vg);
    free(v->lv);
    memset(v, 0, sizeof *v);
}

int lsm_extend_volume_size(const struct lsm_extend_volume *v, uint64_t *size)
{
    _cleanup_close_ int fd = open(v->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open %s", v->path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", v->path);
    if (S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, size) < 0)
            return lsm_error_errno(-errno, "cannot get the size of %s", v->path);
        return 0;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* ---- growing ---- */

static int grow_loop(const struct lsm_extend_volume *v, uint64_t size,
                     struct lsm_extend_timing *t)
{
    char b[32];
    lsm_format_size(size, b, sizeof b);
    uint64_t t0 = lsm_now_ns();
    /* O_WRONLY without O_TRUNC or O_CREAT: the file must be there and is
     * only ever made longer. */
    _cleanup_close_ int fd = open(v->backing, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot extend %s to %s: cannot open its backing "
                               "file %s", v->path, b, v->backing);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", v->backing);
    if (!S_ISREG(st.st_mode))
        return lsm_error(-ENOTSUP, "cannot extend %s: its backing file %s is not a regular "
                         "file", v->path, v->backing);
    if (size > UINT64_MAX - v->offset || size + v->offset > (uint64_t)INT64_MAX)
        return lsm_error(-EFBIG, "cannot extend %s to %s: too large", v->path, b);
    uint64_t want = size + v->offset, cur = (uint64_t)st.st_size;
    if (want > cur) {
        /* Reserve the blocks: a full file system says so now. */
        if (fallocate(fd, 0, (off_t)cur, (off_t)(want - cur)) < 0) {
            int e = errno;
            /* Never truncated back on failure: another extender may have
             * grown the file meanwhile, and a file left a little longer
             * harms nothing (the device ends where it ended). */
            if (e != EOPNOTSUPP)
                return lsm_error_errno(-e, "cannot extend %s to %s: cannot grow its backing "
                                       "file %s", v->path, b, v->backing);
            if (ftruncate(fd, (off_t)want) < 0)
                return lsm_error_errno(-errno, "cannot extend %s to %s: cannot grow its "
                                       "backing file %s", v->path, b, v->backing);
        }
    }
    uint64_t t1 = lsm_now_ns();
    _cleanup_close_ int dfd = open(v->path, O_RDONLY | O_CLOEXEC);
    if (dfd < 0)
        return lsm_error_errno(-errno, "cannot open %s", v->path);
    if (ioctl(dfd, LOOP_SET_CAPACITY, 0) < 0)
        return lsm_error_errno(-errno, "cannot extend %s to %s: LOOP_SET_CAPACITY", v->path, b);
    if (t) {
        t->extend_ns = t1 - t0;
        t->refresh_ns = lsm_now_ns() - t1;
    }
    return 0;
}

/* Run "lvm CMD [--config $LSM_LVM_CONFIG] ARGS..." (LSM_LVM names another
 * binary, as in domains/domain-lvm.c). */
static int lvm_run(const char *const *args, int *status, char **out)
{
    const char *bin = getenv("LSM_LVM");
    const char *cfg = getenv("LSM_LVM_CONFIG");
    const char *argv[16];
    size_t n = 0;
    argv[n++] = bin && *bin ? bin : "lvm";
    argv[n++] = args[0];
    if (cfg && *cfg) {
        argv[n++] = "--config";
        argv[n++] = cfg;
    }
    for (size_t i = 1; args[i] && n < ARRAY_SIZE(argv) - 1; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return lsm_run_program(argv, 120000, status, out);
}

/* The VG's extent size and free bytes (vgs). */
static int vg_space(const char *vg, uint64_t *extent, uint64_t *free_bytes)
{
    const char *args[] = { "vgs", "--noheadings", "--units", "b", "--nosuffix",
                           "-o", "vg_extent_size,vg_free", vg, NULL };
    int status = 0;
    _cleanup_free_ char *out = NULL;
    int r = lvm_run(args, &status, &out);
    if (r < 0)
        return r;
    if (status)
        return lsm_error(-EIO, "cannot query volume group %s: vgs: %s", vg, out);
    /* The output is one line; the last two words are the numbers (a
     * warning, if any, comes before them). */
    char *last = strrchr(out, ' ');
    char *end1, *end2;
    if (!last)
        return lsm_error(-EIO, "cannot query volume group %s: vgs printed \"%.80s\"", vg, out);
    *last = '\0';
    char *prev = strrchr(out, ' ');
    prev = prev ? prev + 1 : out;
    errno = 0;
    unsigned long long e = strtoull(prev, &end1, 10), f = strtoull(last + 1, &end2, 10);
    if (errno || *end1 || *end2 || end1 == prev || end2 == last + 1 || !e || !is_pow2(e))
        return lsm_error(-EIO, "cannot query volume group %s: vgs printed \"%.80s %s\"", vg,
                         out, last + 1);
    *extent = e;
    *free_bytes = f;
    return 0;
}

static int grow_lvm(const struct lsm_extend_volume *v, uint64_t size,
                    struct lsm_extend_timing *t)
{
    char sz[32], fr[32], nd[32], full[512], lsize[32];
    lsm_format_size(size, sz, sizeof sz);
    snprintf(full, sizeof full, "%s/%s", v->vg, v->lv);
    uint64_t t0 = lsm_now_ns();
    uint64_t cur, extent, free_bytes;
    int r = lsm_extend_volume_size(v, &cur);
    if (r < 0)
        return r;
    r = vg_space(v->vg, &extent, &free_bytes);
    if (r < 0)
        return r;
    uint64_t bytes = align_up(size, extent);
    /* The VG's room first: the usual "full" gets a precise message
     * without a failed lvextend. */
    if (free_bytes < bytes - cur)
        return lsm_error(-ENOSPC, "cannot extend %s to %s: volume group %s has %s free, %s "
                         "more needed", full, sz, v->vg, lsm_format_size(free_bytes, fr, sizeof fr),
                         lsm_format_size(bytes - cur, nd, sizeof nd));
    snprintf(lsize, sizeof lsize, "%" PRIu64 "b", bytes);
    const char *ext_args[] = { "lvextend", "-L", lsize, full, NULL };
    int status = 0;
    _cleanup_free_ char *out = NULL;
    r = lvm_run(ext_args, &status, &out);
    if (r < 0) {
        lsm_error_prefix("cannot extend %s to %s", full, sz);
        return r;
    }
    if (status) {
        /* Ask again rather than parse the message: someone else may have
         * extended it, or taken the room meanwhile. */
        uint64_t now_size = 0;
        if (lsm_extend_volume_size(v, &now_size) == 0 && now_size >= size)
            return 0;
        int err = -EIO;
        if (vg_space(v->vg, &extent, &free_bytes) == 0 && free_bytes < bytes - cur)
            err = -ENOSPC;
        return lsm_error(err, "cannot extend %s to %s: lvextend: %s", full, sz, out);
    }
    uint64_t t1 = lsm_now_ns();
    const char *ref_args[] = { "lvchange", "--refresh", full, NULL };
    _cleanup_free_ char *out2 = NULL;
    r = lvm_run(ref_args, &status, &out2);
    if (r < 0) {
        lsm_error_prefix("cannot refresh %s", full);
        return r;
    }
    if (status)
        return lsm_error(-EIO, "cannot refresh %s: lvchange --refresh: %s", full, out2);
    if (t) {
        t->extend_ns = t1 - t0;
        t->refresh_ns = lsm_now_ns() - t1;
    }
    return 0;
}

static int grow_cmd(const struct lsm_extend_volume *v, uint64_t size,
                    struct lsm_extend_timing *t)
{
    char b[32], sz[32];
    lsm_format_size(size, b, sizeof b);
    snprintf(sz, sizeof sz, "%" PRIu64, size);
    const char *argv[] = { v->cmd, v->path, sz, NULL };
    uint64_t t0 = lsm_now_ns();
    int status = 0;
    _cleanup_free_ char *out = NULL;
    int r = lsm_run_program(argv, v->cmd_timeout_ms, &status, &out);
    if (r < 0) {
        lsm_error_prefix("cannot extend %s to %s", v->path, b);
        return r;
    }
    if (t) {
        t->extend_ns = lsm_now_ns() - t0;
        t->refresh_ns = 0;
    }
    if (status == ENOSPC)
        return lsm_error(-ENOSPC, "cannot extend %s to %s: %s says there is no space: %s",
                         v->path, b, v->cmd, out);
    if (status)
        return lsm_error(-EIO, "cannot extend %s to %s: %s exited with status %d: %s",
                         v->path, b, v->cmd, status, out);
    return 0;
}

int lsm_extend_volume_grow(const struct lsm_extend_volume *v, uint64_t size,
                           struct lsm_extend_timing *t)
{
    if (t)
        memset(t, 0, sizeof *t);
    uint64_t cur;
    int r = lsm_extend_volume_size(v, &cur);
    if (r < 0)
        return r;
    if (cur >= size)
        return 0;
    switch (v->kind) {
    case LSM_EXTEND_FILE:
        return 0;
    case LSM_EXTEND_LOOP:
        r = grow_loop(v, size, t);
        break;
    case LSM_EXTEND_LVM:
        r = grow_lvm(v, size, t);
        break;
    case LSM_EXTEND_CMD:
        r = grow_cmd(v, size, t);
        break;
    }
    if (r < 0)
        return r;
    r = lsm_extend_volume_size(v, &cur);
    if (r < 0)
        return r;
    if (cur < size) {
        char b1[32], b2[32];
        return lsm_error(-EIO, "%s was extended to %s but is %s", v->path,
                         lsm_format_size(size, b1, sizeof b1), lsm_format_size(cur, b2, sizeof b2));
    }
    return 0;
}
