/* Backend-independent part of mirroring: the backend table, waiting for
 * READY, and the checks around pivot and abort. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cleanup.h"
#include "config.h"
#include "error.h"
#include "mirror.h"
#include "module.h"
#include "util.h"

/* Backends are loadable modules (common/module.h): libvirt and
 * libdevmapper are mapped only when a mirror is opened.  A new backend adds
 * itself here (under its own HAVE_ macro) with its module and table names. */
static const struct {
    const char *name, *module, *symbol;
} backends[] = {
#ifdef LSM_HAVE_MIRROR_LIBVIRT
    { "libvirt", "mirror-libvirt", "lsm_mirror_libvirt_ops" },
#endif
#ifdef LSM_HAVE_MIRROR_DM
    { "dm", "mirror-dm", "lsm_mirror_dm_ops" },
#endif
    { NULL, NULL, NULL },
};

static const char *backend_names[ARRAY_SIZE(backends)];

const char *const *lsm_mirror_backends(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(backends); i++)
        backend_names[i] = backends[i].name;
    return backend_names;
}

const char *lsm_mirror_phase_name(enum lsm_mirror_phase p)
{
    switch (p) {
    case LSM_MIRROR_NONE: return "none";
    case LSM_MIRROR_COPYING: return "copying";
    case LSM_MIRROR_READY: return "ready";
    case LSM_MIRROR_FAILED: return "failed";
    }
    return "unknown";
}

unsigned lsm_mirror_percent(const struct lsm_mirror_status *st)
{
    if (st->end == 0)
        return 0;
    if (st->cur >= st->end)
        return 100;
    /* Never say 100 before the end; no overflow for any 64-bit size. */
    unsigned p = (unsigned)((double)st->cur * 100.0 / (double)st->end);
    return p > 99 ? 99 : p;
}

int lsm_mirror_open(const char *backend, const struct lsm_mirror_target *t,
                    struct lsm_mirror **out)
{
    const struct lsm_mirror_ops *ops = NULL;
    size_t i;
    for (i = 0; backends[i].name; i++)
        if (!strcmp(backends[i].name, backend))
            break;
    if (!backends[i].name)
        return lsm_error(-ENOTSUP, "mirroring backend '%s' is not available in this build",
                         backend);
    ops = lsm_module_symbol(backends[i].module, backends[i].symbol);
    if (!ops)
        return -ENOTSUP;

    struct lsm_mirror *m = calloc(1, sizeof *m);
    if (!m)
        return lsm_error_errno(-ENOMEM, "cannot open the %s mirror", backend);
    m->ops = ops;
    int r = ops->open(m, t);
    if (r < 0) {
        free(m);
        return r;
    }
    *out = m;
    return 0;
}

void lsm_mirror_close(struct lsm_mirror *m)
{
    if (!m)
        return;
    m->ops->close(m);
    free(m);
}

int lsm_mirror_start(struct lsm_mirror *m, const struct lsm_mirror_start_opts *o)
{
    return m->ops->start(m, o);
}

int lsm_mirror_status(struct lsm_mirror *m, struct lsm_mirror_status *st)
{
    memset(st, 0, sizeof *st);
    return m->ops->status(m, st);
}

int lsm_mirror_paths(struct lsm_mirror *m, char **source, char **mirror)
{
    if (source)
        *source = NULL;
    if (mirror)
        *mirror = NULL;
    return m->ops->paths(m, source, mirror);
}

/* How often the status is polled while waiting by a backend without a
 * wait op; a backend with one chooses (with events, READY is seen as soon as
 * it is reported and the poll is the fallback). */
#define POLL_MS 500
#define MAX_WAIT_MS 5000

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int lsm_mirror_wait_ready(struct lsm_mirror *m, int64_t timeout_ms,
                          struct lsm_mirror_status *st)
{
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
                                       : lsm_now_ns() + (uint64_t)timeout_ms * 1000000ULL;
    for (;;) {
        int r = lsm_mirror_status(m, st);
        if (r < 0)
            return r;
        switch (st->phase) {
        case LSM_MIRROR_READY:
            return 0;
        case LSM_MIRROR_FAILED:
            return lsm_error(-EIO, "mirror of %s failed (%u%% copied); the VM stays on its "
                             "source", m->what, lsm_mirror_percent(st));
        case LSM_MIRROR_NONE:
            return lsm_error(-ENOENT, "%s has no mirror (it ended or was never started)",
                             m->what);
        case LSM_MIRROR_COPYING:
            break;
        }
        uint64_t now = lsm_now_ns();
        if (now >= deadline)
            return lsm_error(-ETIMEDOUT, "mirror of %s not ready after %.0f s (%u%% copied)",
                             m->what, (double)timeout_ms / 1000.0, lsm_mirror_percent(st));
        int ms = m->ops->wait ? MAX_WAIT_MS : POLL_MS;
        if (deadline != UINT64_MAX && (deadline - now) / 1000000ULL < (uint64_t)ms)
            ms = (int)((deadline - now) / 1000000ULL) + 1;
        if (m->ops->wait) {
            r = m->ops->wait(m, ms);
            if (r < 0)
                return r;
        } else {
            sleep_ms(ms);
        }
    }
}

/* After pivot/abort: read back which source the target uses now and check
 * it is `expected`. */
static int check_active(struct lsm_mirror *m, const char *expected, const char *after,
                        char **active)
{
    _cleanup_free_ char *src = NULL;
    _cleanup_free_ char *mirror = NULL;
    int r = lsm_mirror_paths(m, &src, &mirror);
    if (r < 0) {
        lsm_error_prefix("after %s", after);
        return r;
    }
    if (mirror)
        return lsm_error(-EIO, "after %s %s still has a mirror to %s", after, m->what, mirror);
    if (!src || !lsm_same_file(src, expected))
        return lsm_error(-EIO, "after %s %s uses %s, not %s", after, m->what,
                         src ? src : "no source", expected);
    if (active)
        *active = LSM_STEAL(src);
    return 0;
}

int lsm_mirror_finish(struct lsm_mirror *m, bool wait, int64_t timeout_ms,
                      struct lsm_mirror_status *st_out, char **active)
{
    struct lsm_mirror_status st;
    int r = lsm_mirror_status(m, &st);
    if (r < 0)
        return r;
    if (st.phase == LSM_MIRROR_NONE)
        return lsm_error(-ENOENT, "%s has no mirror to finish", m->what);
    if (st.phase == LSM_MIRROR_FAILED)
        return lsm_error(-EIO, "mirror of %s failed; abort it to stay on the source", m->what);
    if (st.phase != LSM_MIRROR_READY) {
        if (!wait)
            return lsm_error(-EAGAIN, "not ready yet (%u%% copied)",
                             lsm_mirror_percent(&st));
        r = lsm_mirror_wait_ready(m, timeout_ms, &st);
        if (r < 0)
            return r;
    }

    _cleanup_free_ char *dst = NULL;
    r = lsm_mirror_paths(m, NULL, &dst);
    if (r < 0)
        return r;
    if (!dst)
        return lsm_error(-EIO, "%s is ready but its mirror destination is unknown", m->what);
    if (st_out)
        *st_out = st;
    r = m->ops->pivot(m);
    if (r < 0)
        return r;
    return check_active(m, dst, "pivot", active);
}

int lsm_mirror_abort(struct lsm_mirror *m, char **active)
{
    struct lsm_mirror_status st;
    int r = lsm_mirror_status(m, &st);
    if (r < 0)
        return r;
    if (st.phase == LSM_MIRROR_NONE)
        return lsm_error(-ENOENT, "%s has no mirror to abort", m->what);

    _cleanup_free_ char *src = NULL;
    r = lsm_mirror_paths(m, &src, NULL);
    if (r < 0)
        return r;
    if (!src)
        return lsm_error(-EIO, "the source of %s is unknown", m->what);
    r = m->ops->cancel(m);
    if (r < 0)
        return r;
    return check_active(m, src, "abort", active);
}

int lsm_mirror_settle(struct lsm_mirror *m, int64_t timeout_ms)
{
    if (!m->ops->switching)
        return 0;
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
                                       : lsm_now_ns() + (uint64_t)timeout_ms * 1000000ULL;
    for (;;) {
        int r = m->ops->switching(m);
        if (r < 0)
            return r;
        if (r == 0) {
            /* A block copy the killed process asked for may still be being
             * set up in libvirtd: the disk's XML has no <mirror> yet, and a
             * caller that read it would think no mirror runs (and remove
             * its destination under it).  A job query is run by libvirt
             * only between the domain's other jobs, so once it returns the
             * copy, if any, is in the XML.  Another kind of job (-EBUSY)
             * is not ours to wait for. */
            struct lsm_mirror_status st;
            r = lsm_mirror_status(m, &st);
            if (r == -EBUSY) {
                lsm_error_clear();
                r = 0;
            }
            return r;
        }
        if (lsm_now_ns() >= deadline)
            return lsm_error(-ETIMEDOUT, "a pivot or abort of the mirror of %s was still in "
                             "progress after %.0f s", m->what, (double)timeout_ms / 1000.0);
        sleep_ms(POLL_MS / 5);
    }
}

bool lsm_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) < 0 || stat(b, &sb) < 0)
        return strcmp(a, b) == 0;
    if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode))
        return sa.st_rdev == sb.st_rdev;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
