/* Block storage domains: an LVM volume group whose logical volumes are the
 * volumes.
 *
 * Everything goes through the lvm tool (lvm vgs/lvs/lvcreate/lvextend/
 * lvremove/vgmknodes), started with posix_spawn from an argv array (no
 * shell), with stdin on /dev/null and stdout/stderr captured: stdout is
 * parsed (--noheadings --units b --nosuffix), stderr becomes the message of
 * a failure.  When LSM_LVM_CONFIG is set its value is passed to every
 * command as --config (the VM harness uses it to switch udev off), and
 * LSM_LVM names another lvm binary (tests).
 *
 * Failures are classified by asking LVM again rather than by parsing its
 * messages where that is possible: a failed lvcreate is -EEXIST when the
 * volume now exists and -ENOSPC when the group lacks the room; space and
 * existence are also checked before a change so the usual case gets a
 * precise message without a failed LVM command.  The message text is only
 * a fallback.
 *
 * Sizes are bytes and always whole extents; volume_size() asks the kernel
 * (BLKGETSIZE64 on /dev/VG/LV) and falls back to lvs for an inactive
 * volume.  Calls block while lvm runs (about 0.1-0.5 s per command on real
 * hardware, a few seconds under TCG); waitpid() needs SIGCHLD not to be
 * ignored by the caller. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
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
#include <unistd.h>

#include "cleanup.h"
#include "domain.h"
#include "error.h"
#include "lvm.h"
#include "util.h"

extern char **environ;

/* LVM's NAME_LEN is 128 including the terminating NUL. */
#define LVM_NAME_MAX 127
/* Output kept from one command; the rest is read and dropped. */
#define LVM_OUTPUT_MAX (16u << 20)
#define LVM_MAX_ARGS 24

struct lvm_priv {
    char *vg;
    bool owns_where;
};

struct lvm_run {
    int status;         /* exit status, or 128 + signal */
    char *out;          /* NUL-terminated stdout */
    char *err;          /* NUL-terminated stderr */
    char *msg;          /* stderr as one line, for messages */
};

static void lvm_run_free(struct lvm_run *r)
{
    free(r->out);
    free(r->err);
    free(r->msg);
    memset(r, 0, sizeof *r);
}

static const char *lvm_binary(void)
{
    const char *b = getenv("LSM_LVM");
    return b && *b ? b : "lvm";
}

/* ---- names ---------------------------------------------------------- */

static bool lvm_name_chars_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!(isascii(c) && isalnum(c)) && c != '+' && c != '_' && c != '.' && c != '-')
            return false;
    }
    return true;
}

/* Rules from lvm(8) "VALID NAMES"; what means returns the reason. */
static const char *lvm_name_problem(const char *name, bool is_lv)
{
    if (!name || !*name)
        return "it is empty";
    if (strlen(name) > LVM_NAME_MAX)
        return "it is longer than 127 characters";
    if (!lvm_name_chars_ok(name))
        return "only a-z A-Z 0-9 + _ . - are allowed";
    if (name[0] == '-')
        return "it must not begin with a hyphen";
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return "\".\" and \"..\" are reserved";
    if (!is_lv)
        return NULL;
    static const char *const prefixes[] = { "snapshot", "pvmove" };
    for (size_t i = 0; i < ARRAY_SIZE(prefixes); i++)
        if (!strncmp(name, prefixes[i], strlen(prefixes[i])))
            return "names beginning with \"snapshot\" or \"pvmove\" are reserved";
    /* Strings LVM uses in the names of the hidden parts of mirror, raid,
     * thin, cache and vdo volumes (the list of lvm(8), LVM 2.03). */
    static const char *const parts[] = {
        "_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare",
        "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
    };
    for (size_t i = 0; i < ARRAY_SIZE(parts); i++)
        if (strstr(name, parts[i]))
            return "it contains a suffix LVM reserves for hidden volumes (like _mimage or _tmeta)";
    return NULL;
}

static int check_lv_name(const char *vg, const char *name)
{
    const char *why = lvm_name_problem(name, true);
    if (why)
        return lsm_error(-EINVAL, "invalid logical volume name \"%s\" in %s: %s",
                         name ? name : "", vg, why);
    return 0;
}

/* ---- running lvm ----------------------------------------------------- */

/* Move fd above the standard descriptors so dup2 onto 1 or 2 always
 * happens (and clears close-on-exec) even when the caller closed them. */
static int fd_above_stdio(int fd)
{
    if (fd > 2)
        return fd;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int e = errno;
    close(fd);
    errno = e;
    return n;
}

/* The environment for lvm: the caller's, plus C locale (stable output)
 * and no warnings about descriptors the caller has open. */
static char **lvm_environ(void)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strncmp(environ[i], "LC_ALL=", 7) ||
            !strncmp(environ[i], "LVM_SUPPRESS_FD_WARNINGS=", 25))
            continue;
        env[j++] = environ[i];
    }
    env[j++] = (char *)"LC_ALL=C";
    env[j++] = (char *)"LVM_SUPPRESS_FD_WARNINGS=1";
    env[j] = NULL;
    return env;
}

struct sink {
    int fd;
    char *buf;
    size_t len, cap;
};

static int sink_read(struct sink *s)
{
    char tmp[8192];
    ssize_t n = read(s->fd, tmp, sizeof tmp);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 1 : -errno;
    if (n == 0)
        return 0;
    size_t keep = MIN((size_t)n, LVM_OUTPUT_MAX - s->len);
    if (keep) {
        if (!s->buf || s->len + keep + 1 > s->cap) {
            size_t cap = MAX(s->cap * 2, s->len + keep + 1);
            char *b = realloc(s->buf, cap);
            if (!b)
                return -ENOMEM;
            s->buf = b;
            s->cap = cap;
        }
        memcpy(s->buf + s->len, tmp, keep);
        s->len += keep;
    }
    return 1;
}

static char *sink_take(struct sink *s)
{
    char *b = s->buf ? s->buf : malloc(1);
    if (b)
        b[s->len] = '\0';
    s->buf = NULL;
    return b;
}

/* stderr as one line: lines trimmed and joined with "; ". */
static char *one_line(const char *text, int status)
{
    size_t len = strlen(text);
    char *m = malloc(2 * len + 40);
    if (!m)
        return NULL;
    size_t o = 0;
    const char *p = text;
    while (*p) {
        const char *eol = strchrnul(p, '\n');
        const char *a = p, *b = eol;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (b > a) {
            if (o) {
                memcpy(m + o, "; ", 2);
                o += 2;
            }
            memcpy(m + o, a, (size_t)(b - a));
            o += (size_t)(b - a);
        }
        p = *eol ? eol + 1 : eol;
    }
    if (!o)
        o = (size_t)snprintf(m, 40, "exited with status %d and no message", status);
    m[o] = '\0';
    return m;
}

/* Run "lvm CMD [--config C] ARGS...".  args[0] is the command.  Returns
 * 0 with r filled (r->status may be non-zero), or -errno when lvm could
 * not be run at all (message recorded). */
static int lvm_exec(const char *const *args, struct lvm_run *r)
{
    const char *argv[LVM_MAX_ARGS + 4];
    size_t n = 0;
    const char *bin = lvm_binary();
    argv[n++] = bin;
    argv[n++] = args[0];
    const char *cfg = getenv("LSM_LVM_CONFIG");
    if (cfg && *cfg) {
        argv[n++] = "--config";
        argv[n++] = cfg;
    }
    for (size_t i = 1; args[i]; i++) {
        if (n >= ARRAY_SIZE(argv) - 1)
            return lsm_error(-E2BIG, "too many arguments for lvm %s", args[0]);
        argv[n++] = args[i];
    }
    argv[n] = NULL;

    memset(r, 0, sizeof *r);
    int out[2] = { -1, -1 }, err[2] = { -1, -1 };
    int ret = 0;
    char **env = NULL;
    bool fa_init = false, attr_init = false;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    struct sink so = { .fd = -1 }, se = { .fd = -1 };
    pid_t pid = -1;

    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        ret = lsm_error_errno(-errno, "cannot run %s %s: pipe", bin, args[0]);
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        out[i] = fd_above_stdio(out[i]);
        err[i] = fd_above_stdio(err[i]);
        if (out[i] < 0 || err[i] < 0) {
            ret = lsm_error_errno(-errno, "cannot run %s %s: fcntl", bin, args[0]);
            goto out;
        }
    }
    env = lvm_environ();
    if (!env) {
        ret = lsm_error(-ENOMEM, "cannot run %s %s: out of memory", bin, args[0]);
        goto out;
    }

    int e = posix_spawn_file_actions_init(&fa);
    if (!e) {
        fa_init = true;
        e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    }
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    if (!e) {
        e = posix_spawnattr_init(&attr);
        attr_init = !e;
    }
    /* Default dispositions and an empty mask (the caller may block or
     * ignore signals, SIGPIPE and SIGINT, that lvm expects to work), and a
     * process group of its own: a Ctrl-C meant for us does not cut an
     * lvcreate short, so we know whether the LV exists and can remove what
     * we created before exiting. */
    if (!e)
        e = lsm_spawnattr_own_group(&attr);
    if (!e)
        e = posix_spawnp(&pid, bin, &fa, &attr, (char *const *)argv, env);
    if (e) {
        pid = -1;
        ret = lsm_error_errno(-e, "cannot run %s %s", bin, args[0]);
        goto out;
    }
    close(out[1]);
    close(err[1]);
    out[1] = err[1] = -1;

    so.fd = out[0];
    se.fd = err[0];
    while (so.fd >= 0 || se.fd >= 0) {
        struct pollfd p[2] = { { .fd = so.fd, .events = POLLIN }, { .fd = se.fd, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            ret = lsm_error_errno(-errno, "cannot read the output of %s %s", bin, args[0]);
            break;
        }
        struct sink *sinks[2] = { &so, &se };
        for (int i = 0; i < 2; i++) {
            if (sinks[i]->fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            int rr = sink_read(sinks[i]);
            if (rr < 0 && !ret)
                ret = lsm_error_errno(rr, "cannot read the output of %s %s", bin, args[0]);
            if (rr <= 0)
                sinks[i]->fd = -1;      /* closed below through out[0]/err[0] */
        }
        if (ret)
            break;
    }
    /* Closed before waiting: a child still writing gets EPIPE, not stuck. */
    close(out[0]);
    close(err[0]);
    out[0] = err[0] = -1;

    int st;
    pid_t w;
    while ((w = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
        ;
    if (w < 0) {
        if (!ret)
            ret = lsm_error_errno(-errno, "cannot wait for %s %s", bin, args[0]);
        goto out;
    }
    if (ret)
        goto out;
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    r->out = sink_take(&so);
    r->err = sink_take(&se);
    if (!r->out || !r->err) {
        ret = lsm_error(-ENOMEM, "cannot run %s %s: out of memory", bin, args[0]);
        goto out;
    }
    if (r->status) {
        r->msg = one_line(r->err, r->status);
        if (!r->msg)
            ret = lsm_error(-ENOMEM, "cannot run %s %s: out of memory", bin, args[0]);
    }

out:
    if (ret)
        lvm_run_free(r);
    free(so.buf);
    free(se.buf);
    for (int i = 0; i < 2; i++) {
        if (out[i] >= 0)
            close(out[i]);
        if (err[i] >= 0)
            close(err[i]);
    }
    if (fa_init)
        posix_spawn_file_actions_destroy(&fa);
    if (attr_init)
        posix_spawnattr_destroy(&attr);
    free(env);
    return ret;
}

/* errno for a failed command when asking LVM again could not tell. */
static int lvm_guess_errno(const struct lvm_run *r)
{
    const char *e = r->err ? r->err : "";
    if (strstr(e, "Insufficient free space") || strstr(e, "insufficient free"))
        return -ENOSPC;
    if (strstr(e, "already exists"))
        return -EEXIST;
    if (strstr(e, "not found") || strstr(e, "Failed to find"))
        return -ENOENT;
    if (strstr(e, "in use") || strstr(e, "is open"))
        return -EBUSY;
    return -EIO;
}

/* Parse whitespace-separated unsigned numbers; false unless exactly n. */
static bool parse_u64s(const char *s, uint64_t *v, int n)
{
    for (int i = 0; i < n; i++) {
        while (isspace((unsigned char)*s))
            s++;
        if (!isdigit((unsigned char)*s))
            return false;
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (errno || (*end && !isspace((unsigned char)*end)))
            return false;
        v[i] = x;
        s = end;
    }
    while (isspace((unsigned char)*s))
        s++;
    return *s == '\0';
}

static const char *vg_of(struct lsm_domain *d)
{
    return ((struct lvm_priv *)d->priv)->vg;
}

/* Extent size and free bytes of the group. */
static int vg_query(struct lsm_domain *d, const char *vg, uint64_t *extent, uint64_t *free_bytes)
{
    const char *args[] = { "vgs", "--noheadings", "--units", "b", "--nosuffix",
                           "-o", "vg_extent_size,vg_free", vg, NULL };
    struct lvm_run r;
    int ret = lvm_exec(args, &r);
    if (ret)
        return ret;
    uint64_t v[2];
    if (r.status) {
        ret = lsm_error(lvm_guess_errno(&r), "cannot query volume group %s: vgs: %s", vg, r.msg);
    } else if (!parse_u64s(r.out, v, 2) || v[0] == 0) {
        ret = lsm_error(-EIO, "cannot query volume group %s: vgs printed \"%.80s\"", vg, r.out);
    } else {
        *extent = v[0];
        if (free_bytes)
            *free_bytes = v[1];
    }
    lvm_run_free(&r);
    (void)d;
    return ret;
}

/* Whether the LV exists and its size in bytes (from LVM's metadata). */
static int lv_query(struct lsm_domain *d, const char *name, bool *exists, uint64_t *size)
{
    const char *vg = vg_of(d);
    _cleanup_free_ char *sel = NULL;
    if (asprintf(&sel, "lv_name=\"%s\"", name) < 0)
        return lsm_error(-ENOMEM, "cannot look up %s/%s: out of memory", vg, name);
    const char *args[] = { "lvs", "--noheadings", "--units", "b", "--nosuffix",
                           "--separator", ":", "-o", "lv_name,lv_size", "-S", sel, vg, NULL };
    struct lvm_run r;
    int ret = lvm_exec(args, &r);
    if (ret)
        return ret;
    if (r.status) {
        ret = lsm_error(lvm_guess_errno(&r), "cannot look up %s/%s: lvs: %s", vg, name, r.msg);
        lvm_run_free(&r);
        return ret;
    }
    *exists = false;
    size_t nlen = strlen(name);
    for (char *line = r.out; *line;) {
        char *eol = strchrnul(line, '\n');
        char *next = *eol ? eol + 1 : eol;
        *eol = '\0';
        while (isspace((unsigned char)*line))
            line++;
        if (!strncmp(line, name, nlen) && line[nlen] == ':') {
            uint64_t v;
            if (!parse_u64s(line + nlen + 1, &v, 1)) {
                ret = lsm_error(-EIO, "cannot look up %s/%s: lvs printed \"%.80s\"", vg, name, line);
                break;
            }
            *exists = true;
            if (size)
                *size = v;
            break;
        }
        line = next;
    }
    lvm_run_free(&r);
    return ret;
}

/* Whole extents holding at least size bytes (at least one extent). */
static int round_to_extent(struct lsm_domain *d, const char *name, uint64_t size, uint64_t *out)
{
    uint64_t ext = d->extent_size;
    uint64_t n = div_round_up(size ? size : 1, ext);
    if (n > UINT64_MAX / ext)
        return lsm_error(-EFBIG, "cannot size %s/%s to %" PRIu64 " bytes: too large",
                         vg_of(d), name, size);
    *out = n * ext;
    return 0;
}

static char *lv_path(const char *vg, const char *name)
{
    char *p;
    if (asprintf(&p, "/dev/%s/%s", vg, name) < 0)
        return NULL;
    return p;
}

/* With udev running, lvcreate returns after the node exists.  Without it
 * (activation/udev_rules=0, as in the test VM) LVM makes the nodes itself;
 * if they are still missing, vgmknodes repairs /dev/VG and /dev/mapper. */
static int ensure_node(struct lsm_domain *d, const char *name)
{
    const char *vg = vg_of(d);
    _cleanup_free_ char *path = lv_path(vg, name);
    if (!path)
        return lsm_error(-ENOMEM, "cannot check the device node of %s/%s: out of memory", vg, name);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISBLK(st.st_mode))
        return 0;
    const char *args[] = { "vgmknodes", vg, NULL };
    struct lvm_run r;
    int ret = lvm_exec(args, &r);
    if (ret)
        return ret;
    if (r.status)
        ret = lsm_error(-EIO, "created %s/%s but %s is missing and vgmknodes failed: %s",
                        vg, name, path, r.msg);
    else if (stat(path, &st) < 0)
        ret = lsm_error_errno(-errno, "created %s/%s but its device node %s did not appear",
                              vg, name, path);
    else if (!S_ISBLK(st.st_mode))
        ret = lsm_error(-ENOTBLK, "created %s/%s but %s is not a block device", vg, name, path);
    lvm_run_free(&r);
    return ret;
}

/* ---- the ops --------------------------------------------------------- */

static int lvm_open(struct lsm_domain *d, const char *where)
{
    const char *why = lvm_name_problem(where, false);
    if (why)
        return lsm_error(-EINVAL, "invalid volume group name \"%s\": %s", where ? where : "", why);
    struct lvm_priv *p = calloc(1, sizeof *p);
    if (!p || !(p->vg = strdup(where))) {
        free(p);
        return lsm_error(-ENOMEM, "cannot open block domain %s: out of memory", where);
    }
    uint64_t ext;
    int ret = vg_query(d, where, &ext, NULL);
    if (ret) {
        free(p->vg);
        free(p);
        return ret;
    }
    if (!d->where) {
        d->where = strdup(where);
        if (!d->where) {
            free(p->vg);
            free(p);
            return lsm_error(-ENOMEM, "cannot open block domain %s: out of memory", where);
        }
        p->owns_where = true;
    }
    d->kind = LSM_DOMAIN_BLOCK;
    d->extent_size = ext;
    d->priv = p;
    return 0;
}

static void lvm_close(struct lsm_domain *d)
{
    struct lvm_priv *p = d->priv;
    if (!p)
        return;
    if (p->owns_where) {
        free(d->where);
        d->where = NULL;
    }
    free(p->vg);
    free(p);
    d->priv = NULL;
}

static char *lvm_volume_path(struct lsm_domain *d, const char *name)
{
    if (check_lv_name(vg_of(d), name)) {
        errno = EINVAL;
        return NULL;
    }
    char *p = lv_path(vg_of(d), name);
    if (!p) {
        lsm_error(-ENOMEM, "cannot make the path of %s/%s: out of memory", vg_of(d), name);
        errno = ENOMEM;
    }
    return p;
}

static int lvm_volume_exists(struct lsm_domain *d, const char *name)
{
    int ret = check_lv_name(vg_of(d), name);
    if (ret)
        return ret;
    bool exists;
    ret = lv_query(d, name, &exists, NULL);
    return ret ? ret : exists;
}

static int lvm_create_volume(struct lsm_domain *d, const char *name, uint64_t size)
{
    const char *vg = vg_of(d);
    char sz[32], fr[32];
    int ret = check_lv_name(vg, name);
    if (ret)
        return ret;
    uint64_t bytes = 0;
    ret = round_to_extent(d, name, size, &bytes);
    if (ret)
        return ret;
    lsm_format_size(bytes, sz, sizeof sz);

    bool exists;
    ret = lv_query(d, name, &exists, NULL);
    if (ret)
        return ret;
    if (exists)
        return lsm_error(-EEXIST, "cannot create %s/%s: a logical volume of that name exists", vg, name);
    uint64_t ext, free_bytes;
    ret = vg_query(d, vg, &ext, &free_bytes);
    if (ret)
        return ret;
    if (free_bytes < bytes)
        return lsm_error(-ENOSPC, "cannot create %s/%s of %s: volume group %s has only %s free",
                         vg, name, sz, vg, lsm_format_size(free_bytes, fr, sizeof fr));

    char lsize[32];
    snprintf(lsize, sizeof lsize, "%" PRIu64 "b", bytes);
    const char *args[] = { "lvcreate", "-n", name, "-L", lsize, "-y", "-Wn", "-Zn", vg, NULL };
    struct lvm_run r;
    ret = lvm_exec(args, &r);
    if (ret) {
        lsm_error_prefix("cannot create %s/%s of %s", vg, name, sz);
        return ret;
    }
    if (r.status) {
        /* Ask again: another process may have won a race. */
        int guess = lvm_guess_errno(&r);
        char *msg = LSM_STEAL(r.msg);
        lvm_run_free(&r);
        if (lv_query(d, name, &exists, NULL) == 0 && exists)
            guess = -EEXIST;
        else if (vg_query(d, vg, &ext, &free_bytes) == 0 && free_bytes < bytes)
            guess = -ENOSPC;
        ret = lsm_error(guess, "cannot create %s/%s of %s: lvcreate: %s", vg, name, sz, msg);
        free(msg);
        return ret;
    }
    lvm_run_free(&r);
    /* Created but unusable: remove it, so that a failure leaves nothing
     * this call made (the caller removes only what succeeded). */
    ret = ensure_node(d, name);
    if (ret) {
        char saved[512];
        snprintf(saved, sizeof saved, "%s", lsm_last_error());
        const char *rm[] = { "lvremove", "-f", NULL, NULL };
        char full[2 * LVM_NAME_MAX + 2];
        snprintf(full, sizeof full, "%s/%s", vg, name);
        rm[2] = full;
        struct lvm_run rr = { 0 };
        bool removed = lvm_exec(rm, &rr) == 0 && rr.status == 0;
        if (!removed && rr.msg)
            lsm_error(ret, "%s; removing it failed too: %s", saved, rr.msg);
        else if (!removed)
            lsm_error(ret, "%s; removing it failed too", saved);
        else
            lsm_error(ret, "%s", saved);
        lvm_run_free(&rr);
    }
    return ret;
}

static int lvm_extend_volume(struct lsm_domain *d, const char *name, uint64_t size)
{
    const char *vg = vg_of(d);
    char sz[32], fr[32], nd[32];
    int ret = check_lv_name(vg, name);
    if (ret)
        return ret;
    lsm_format_size(size, sz, sizeof sz);
    bool exists;
    uint64_t cur = 0;
    ret = lv_query(d, name, &exists, &cur);
    if (ret)
        return ret;
    if (!exists)
        return lsm_error(-ENOENT, "cannot extend %s/%s to %s: no such logical volume", vg, name, sz);
    if (cur >= size)
        return 0;
    uint64_t bytes = 0;
    ret = round_to_extent(d, name, size, &bytes);
    if (ret)
        return ret;
    uint64_t ext, free_bytes;
    ret = vg_query(d, vg, &ext, &free_bytes);
    if (ret)
        return ret;
    if (free_bytes < bytes - cur)
        return lsm_error(-ENOSPC, "cannot extend %s/%s to %s: volume group %s has %s free, %s more needed",
                         vg, name, sz, vg, lsm_format_size(free_bytes, fr, sizeof fr),
                         lsm_format_size(bytes - cur, nd, sizeof nd));

    char lsize[32], full[2 * LVM_NAME_MAX + 2];
    snprintf(lsize, sizeof lsize, "%" PRIu64 "b", bytes);
    snprintf(full, sizeof full, "%s/%s", vg, name);
    const char *args[] = { "lvextend", "-L", lsize, full, NULL };
    struct lvm_run r;
    ret = lvm_exec(args, &r);
    if (ret) {
        lsm_error_prefix("cannot extend %s/%s to %s", vg, name, sz);
        return ret;
    }
    if (r.status) {
        int guess = lvm_guess_errno(&r);
        char *msg = LSM_STEAL(r.msg);
        lvm_run_free(&r);
        /* Someone else may have extended it meanwhile. */
        if (lv_query(d, name, &exists, &cur) == 0) {
            if (exists && cur >= size) {
                free(msg);
                return 0;
            }
            if (!exists)
                guess = -ENOENT;
            else if (vg_query(d, vg, &ext, &free_bytes) == 0 && free_bytes < bytes - cur)
                guess = -ENOSPC;
        }
        ret = lsm_error(guess, "cannot extend %s/%s to %s: lvextend: %s", vg, name, sz, msg);
        free(msg);
        return ret;
    }
    lvm_run_free(&r);
    return 0;
}

static int lvm_remove_volume(struct lsm_domain *d, const char *name)
{
    const char *vg = vg_of(d);
    int ret = check_lv_name(vg, name);
    if (ret)
        return ret;
    char full[2 * LVM_NAME_MAX + 2];
    snprintf(full, sizeof full, "%s/%s", vg, name);
    const char *args[] = { "lvremove", "-f", full, NULL };
    struct lvm_run r;
    ret = lvm_exec(args, &r);
    if (ret) {
        lsm_error_prefix("cannot remove %s", full);
        return ret;
    }
    if (r.status) {
        int guess = lvm_guess_errno(&r);
        char *msg = LSM_STEAL(r.msg);
        lvm_run_free(&r);
        bool exists;
        if (lv_query(d, name, &exists, NULL) == 0 && !exists)
            guess = -ENOENT;
        else if (guess == -ENOENT)
            guess = -EIO;       /* it is there: "not found" was about something else */
        ret = lsm_error(guess, "cannot remove %s: lvremove: %s", full, msg);
        free(msg);
        return ret;
    }
    lvm_run_free(&r);
    return 0;
}

static int lvm_volume_size(struct lsm_domain *d, const char *name, uint64_t *size)
{
    const char *vg = vg_of(d);
    int ret = check_lv_name(vg, name);
    if (ret)
        return ret;
    _cleanup_free_ char *path = lv_path(vg, name);
    if (!path)
        return lsm_error(-ENOMEM, "cannot get the size of %s/%s: out of memory", vg, name);
    /* An active volume: the kernel's size, without running lvm. */
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        struct stat st;
        uint64_t v;
        if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &v) == 0) {
            *size = v;
            return 0;
        }
    }
    /* Inactive, or no node: LVM's metadata. */
    bool exists;
    uint64_t v = 0;
    ret = lv_query(d, name, &exists, &v);
    if (ret)
        return ret;
    if (!exists)
        return lsm_error(-ENOENT, "cannot get the size of %s/%s: no such logical volume", vg, name);
    *size = v;
    return 0;
}

/* ---- outside a domain (lvm.h) ----------------------------------------- */

/* Next line of out (NUL-terminated in place), leading blanks skipped; NULL
 * at the end. */
static char *next_line(char **cursor)
{
    char *line = *cursor;
    if (!*line)
        return NULL;
    char *eol = strchrnul(line, '\n');
    *cursor = *eol ? eol + 1 : eol;
    *eol = '\0';
    while (isspace((unsigned char)*line))
        line++;
    return line;
}

int lsm_lvm_lv_of_devno(dev_t dev, char **vg, char **lv, char **tags)
{
    unsigned maj = major(dev), min = minor(dev);
    const char *args[] = { "lvs", "--noheadings", "--separator", ":",
                           "-o", "vg_name,lv_name,lv_kernel_major,lv_kernel_minor,lv_tags", NULL };
    struct lvm_run r;
    int ret = lvm_exec(args, &r);
    if (ret) {
        lsm_error_prefix("cannot find the logical volume of device %u:%u", maj, min);
        return ret;
    }
    if (r.status) {
        ret = lsm_error(lvm_guess_errno(&r), "cannot find the logical volume of device %u:%u: lvs: %s",
                        maj, min, r.msg);
        lvm_run_free(&r);
        return ret;
    }
    ret = 1;    /* not found yet */
    char *cur = r.out, *line;
    while ((line = next_line(&cur))) {
        /* VG:LV:MAJOR:MINOR:TAGS; an inactive LV prints -1 for both
         * numbers.  LVM names have no ':' (lvm(8) "VALID NAMES"), tags may
         * (so they come last, the rest of the line, trailing blanks cut). */
        char *f[5];
        int n = 0;
        for (char *p = line; n < 5;) {
            f[n++] = p;
            if (n == 5)
                break;
            char *c = strchr(p, ':');
            if (!c)
                break;
            *c = '\0';
            p = c + 1;
        }
        if (n != 5)
            continue;
        size_t tlen = strlen(f[4]);
        while (tlen && isspace((unsigned char)f[4][tlen - 1]))
            tlen--;
        char *end;
        errno = 0;
        long a = strtol(f[2], &end, 10);
        if (errno || *end || a < 0)
            continue;
        long b = strtol(f[3], &end, 10);
        if (errno || *end || b < 0)
            continue;
        if ((unsigned long)a != maj || (unsigned long)b != min)
            continue;
        if (lvm_name_problem(f[0], false) || lvm_name_problem(f[1], false)) {
            ret = lsm_error(-EIO, "lvs printed an invalid name for device %u:%u: \"%.80s\"", maj, min, line);
            break;
        }
        *vg = strdup(f[0]);
        *lv = strdup(f[1]);
        if (tags)
            *tags = strndup(f[4], tlen);
        if (!*vg || !*lv || (tags && !*tags)) {
            free(*vg);
            free(*lv);
            *vg = *lv = NULL;
            if (tags) {
                free(*tags);
                *tags = NULL;
            }
            ret = lsm_error(-ENOMEM, "out of memory");
        } else {
            ret = 0;
        }
        break;
    }
    lvm_run_free(&r);
    if (ret == 1)
        ret = lsm_error(-ENODEV, "device %u:%u is not an active logical volume", maj, min);
    return ret;
}

int lsm_lvm_lv_tags(const char *vg, const char *lv, char **tags)
{
    const char *why = lvm_name_problem(vg, false);
    if (why)
        return lsm_error(-EINVAL, "invalid volume group name \"%s\": %s", vg ? vg : "", why);
    int ret = check_lv_name(vg, lv);
    if (ret)
        return ret;
    char full[2 * LVM_NAME_MAX + 2];
    snprintf(full, sizeof full, "%s/%s", vg, lv);
    const char *args[] = { "lvs", "--noheadings", "-o", "lv_tags", full, NULL };
    struct lvm_run r;
    ret = lvm_exec(args, &r);
    if (ret) {
        lsm_error_prefix("cannot read the tags of %s", full);
        return ret;
    }
    if (r.status) {
        ret = lsm_error(lvm_guess_errno(&r), "cannot read the tags of %s: lvs: %s", full, r.msg);
        lvm_run_free(&r);
        return ret;
    }
    /* One line (maybe empty: no tags); trailing blanks trimmed. */
    char *cur = r.out;
    char *line = next_line(&cur);
    if (!line)
        line = cur;
    size_t len = strlen(line);
    while (len && isspace((unsigned char)line[len - 1]))
        len--;
    char *extra = next_line(&cur);
    if (extra && *extra) {
        ret = lsm_error(-EIO, "cannot read the tags of %s: lvs printed more than one line", full);
    } else if (!(*tags = strndup(line, len))) {
        ret = lsm_error(-ENOMEM, "out of memory");
    }
    lvm_run_free(&r);
    return ret;
}

int lsm_lvm_lv_retag(const char *vg, const char *lv, const char *del, const char *add)
{
    const char *why = lvm_name_problem(vg, false);
    if (why)
        return lsm_error(-EINVAL, "invalid volume group name \"%s\": %s", vg ? vg : "", why);
    int ret = check_lv_name(vg, lv);
    if (ret)
        return ret;
    char full[2 * LVM_NAME_MAX + 2];
    snprintf(full, sizeof full, "%s/%s", vg, lv);
    const char *args[8];
    size_t n = 0;
    args[n++] = "lvchange";
    if (del) {
        args[n++] = "--deltag";
        args[n++] = del;
    }
    args[n++] = "--addtag";
    args[n++] = add;
    args[n++] = full;
    args[n] = NULL;
    struct lvm_run r;
    ret = lvm_exec(args, &r);
    if (ret) {
        lsm_error_prefix("cannot change the tags of %s", full);
        return ret;
    }
    if (r.status)
        ret = lsm_error(lvm_guess_errno(&r), "cannot change the tags of %s (tag %s%s%s): lvchange: %s",
                        full, add, del ? " instead of " : "", del ? del : "", r.msg);
    lvm_run_free(&r);
    return ret;
}

const struct lsm_domain_ops lsm_domain_lvm_ops = {
    .name = "block",
    .open = lvm_open,
    .close = lvm_close,
    .volume_path = lvm_volume_path,
    .volume_exists = lvm_volume_exists,
    .create_volume = lvm_create_volume,
    .extend_volume = lvm_extend_volume,
    .remove_volume = lvm_remove_volume,
    .volume_size = lvm_volume_size,
};
