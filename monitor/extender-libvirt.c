/* The watermark extender on libvirt (extender.h): the event-loop thread,
 * one worker per drive, thresholds, block stats, resume.  A loadable module
 * (lsm-extender-libvirt.so) so the program starts without libvirt.
 *
 * Where the numbers come from:
 *   - allocation, capacity: virDomainListGetStats with the backing chain
 *     (block.N.name / backingIndex / allocation / capacity), matched by
 *     the side's index.  For a qcow2 on a block device libvirt's allocation
 *     is QEMU's write high-water mark.  libvirt 9.0 reports the block
 *     copy's destination there too, under its own index (seen); should a
 *     libvirt not, its allocation is what its own threshold event said
 *     (threshold + excess): the source's allocation is never used in its
 *     place.
 *   - physical: the volume's own size (BLKGETSIZE64), the one the backend
 *     changes, read again after every extension.
 *   - indexes: the live domain XML (<source index=...> of the top and of
 *     <mirror>), read on every check.
 */
#include "config.h"

#ifdef HAVE_LIBVIRT

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"
#include "domxml.h"
#include "error.h"
#include "extend-backend.h"
#include "extender-ops.h"
#include "fileio.h"
#include "qcow2/qcow2-measure.h"
#include "util.h"

#define DEFAULT_URI "qemu:///system"
#define LOOP_TICK_MS 200
#define MAX_SUBSCRIBERS 8
#define SRC 0
#define DST 1

static const char *const side_names[2] = { "source", "mirror" };

struct side {
    enum lsm_side_state state;
    char *path;
    int index;                  /* libvirt's index, -1 unknown */
    char target[48];
    struct lsm_extend_volume vol;
    bool vol_ok;
    uint64_t alloc, phys, cap;
    bool have_stats;
    bool armed;
    uint64_t armed_at;          /* the armed threshold */
    struct lsm_extend_rate rate;
    struct lsm_extend_trigger trig;
    uint64_t event_ns;          /* when the pending request came */
    bool exceeded;              /* a threshold event since the last extension */
    unsigned retries;
    uint64_t retry_at;
    unsigned extensions, arm_failures;
    uint64_t headroom, max_size;
    uint64_t growth;            /* what it may write during an extension */
    bool raw;                   /* a raw image (libvirt's format): never extended */
    uint64_t full, full_cap;    /* a full image's size and the capacity its
                                 * header gave (0: not a qcow2, or one a full
                                 * allocation does not describe) */
    char error[512];
    bool enospc, other_error;
    unsigned pause_mark;        /* extensions when the ENOSPC came (0 if
                                 * it came before we started) */
};

struct drive {
    struct lsm_extender *x;
    char disk[32];
    char *alias;
    struct side side[2];
    pthread_t thread;
    bool started;
    bool kicked;
    uint64_t checked_gen;       /* the kick generation its last check began after */
    pthread_cond_t cond;
};

struct subscriber {
    lsm_monitor_cb cb;
    void *opaque;
};

struct lsm_extender {
    virConnectPtr conn;
    virDomainPtr dom;
    char *domain;
    char *extend_cmd;
    struct lsm_extend_policy policy;
    int poll_ms, cmd_timeout_ms;
    bool no_resume, forced_replicating;

    pthread_mutex_t lock;       /* everything below */
    /* Test hook: LSM_TEST_ARM_FAIL=N fails this extender's first N
     * threshold sets as a refusing libvirt would (the re-arm at the next
     * check is what tests/functional/monitor-extend.sh then sees). */
    int arm_fail;
    pthread_cond_t cond;        /* lsm_extender_wait */
    pthread_mutex_t deliver;    /* one event at a time to subscribers */
    struct subscriber subs[MAX_SUBSCRIBERS];
    unsigned nsubs;
    struct drive drives[LSM_EXTENDER_MAX_DRIVES];
    unsigned ndrives;

    pthread_t loop;
    bool loop_started;
    atomic_bool stop;
    int cb_ids[4];
    int timer;
    bool close_cb;
    uint64_t t0;

    uint64_t kick_gen;          /* bumped by every kick (lsm_extender_refresh) */
    bool replicating;           /* a mirror is seen on some drive */
    bool paused;
    const char *refused_why;
    unsigned resumes;
    uint64_t events[4];
    struct lsm_extend_latency lat;
    struct lsm_lat_hist hist[LSM_PHASES];
    int error;
    char errmsg[512];
    bool domain_stopped;
};

/* Copy as much of src as fits, NUL-terminated. */
static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static const char *virt_msg(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "unknown libvirt error";
}

static void quiet_error(void *opaque, virErrorPtr err)
{
    (void)opaque;
    (void)err;
}

static int global_init(void)
{
    static bool done;
    if (done)
        return 0;
    virSetErrorFunc(NULL, quiet_error);
    if (virInitialize() < 0)
        return lsm_error(-EIO, "cannot initialise libvirt: %s", virt_msg());
    if (virEventRegisterDefaultImpl() < 0)
        return lsm_error(-EIO, "cannot start libvirt's event loop: %s", virt_msg());
    done = true;
    return 0;
}

static uint64_t since(struct lsm_extender *x)
{
    return lsm_now_ns() - x->t0;
}

static void deliver(struct lsm_extender *x, struct lsm_monitor_event *ev)
{
    ev->time_ns = since(x);
    pthread_mutex_lock(&x->deliver);
    pthread_mutex_lock(&x->lock);
    unsigned n = x->nsubs;
    struct subscriber subs[MAX_SUBSCRIBERS];
    memcpy(subs, x->subs, sizeof subs);
    pthread_mutex_unlock(&x->lock);
    for (unsigned i = 0; i < n; i++)
        subs[i].cb(ev, subs[i].opaque);
    pthread_mutex_unlock(&x->deliver);
}

static void kick_locked(struct drive *d)
{
    d->kicked = true;
    pthread_cond_signal(&d->cond);
}

/* Kick every drive; returns the new kick generation.  x->lock held. */
static uint64_t kick_all_locked(struct lsm_extender *x)
{
    for (unsigned k = 0; k < x->ndrives; k++)
        kick_locked(&x->drives[k]);
    return ++x->kick_gen;
}

/* ---- the live XML ---- */

struct layout_side {
    char *path;
    int index;
    char *format;
};

struct layout {
    char *type, *alias;
    struct layout_side side[2];
};

static void layout_free(struct layout *l)
{
    free(l->type);
    free(l->alias);
    for (int i = 0; i < 2; i++) {
        free(l->side[i].path);
        free(l->side[i].format);
    }
    memset(l, 0, sizeof *l);
}

/* Disk `target` of the live XML; -ENOENT if there is none.  With target
 * NULL, fills names[] with the block-backed disks instead. */
static int read_layout(struct lsm_extender *x, const char *target, struct layout *l,
                       char names[][32], unsigned *nnames)
{
    memset(l, 0, sizeof *l);
    l->side[0].index = l->side[1].index = -1;
    _cleanup_free_ char *xml = virDomainGetXMLDesc(x->dom, 0);
    if (!xml)
        return lsm_error(-EIO, "cannot read the XML of domain '%s': %s", x->domain, virt_msg());
    struct lsm_domxml_disk *disks;
    unsigned n;
    int r = lsm_domxml_disks(xml, strlen(xml), x->domain, &disks, &n);
    if (r < 0)
        return r;
    if (nnames)
        *nnames = 0;
    bool found = false;
    for (unsigned i = 0; i < n && !found; i++) {
        struct lsm_domxml_disk *d = &disks[i];
        if (d->device && strcmp(d->device, "disk"))
            continue;
        if (!target) {
            if (d->type && !strcmp(d->type, "block") && nnames &&
                *nnames < LSM_EXTENDER_MAX_DRIVES && strlen(d->target) < 32)
                copy_str(names[(*nnames)++], 32, d->target);
            continue;
        }
        if (strcmp(d->target, target))
            continue;
        /* the strings move to l */
        l->type = d->type;
        l->alias = d->alias;
        l->side[SRC].path = d->src.path;
        l->side[SRC].index = d->src.index;
        l->side[SRC].format = d->src.format;
        if (d->has_mirror) {
            l->side[DST].path = d->mirror.path;
            l->side[DST].index = d->mirror.index;
            l->side[DST].format = d->mirror.format;
        }
        d->type = d->alias = d->src.path = d->src.format = NULL;
        if (d->has_mirror)
            d->mirror.path = d->mirror.format = NULL;
        found = true;
    }
    lsm_domxml_free(disks, n);
    if (target && !found)
        return lsm_error(-ENOENT, "domain '%s' has no disk '%s'", x->domain, target);
    return 0;
}

/* ---- block stats ---- */

struct stat_entry {
    char name[32];
    int index;
    uint64_t alloc, cap, phys;
};

/* The block stats of the whole chain of every disk. */
static int read_stats(struct lsm_extender *x, struct stat_entry *e, unsigned max, unsigned *n)
{
    virDomainPtr doms[] = { x->dom, NULL };
    virDomainStatsRecordPtr *recs = NULL;
    *n = 0;
    int r = virDomainListGetStats(doms, VIR_DOMAIN_STATS_BLOCK, &recs,
                                  VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING);
    if (r < 0)
        return lsm_error(-EIO, "cannot read the block stats of domain '%s': %s", x->domain,
                         virt_msg());
    if (r >= 1) {
        virTypedParameterPtr p = recs[0]->params;
        int np = recs[0]->nparams;
        unsigned count = 0;
        virTypedParamsGetUInt(p, np, "block.count", &count);
        for (unsigned i = 0; i < count && *n < max; i++) {
            char key[64];
            const char *name = NULL;
            unsigned idx = 0;
            snprintf(key, sizeof key, "block.%u.name", i);
            if (virTypedParamsGetString(p, np, key, &name) != 1 || !name || strlen(name) >= 32)
                continue;
            snprintf(key, sizeof key, "block.%u.backingIndex", i);
            if (virTypedParamsGetUInt(p, np, key, &idx) != 1)
                continue;
            struct stat_entry *s = &e[(*n)++];
            memset(s, 0, sizeof *s);
            copy_str(s->name, sizeof s->name, name);
            s->index = (int)idx;
            unsigned long long v;
            snprintf(key, sizeof key, "block.%u.allocation", i);
            if (virTypedParamsGetULLong(p, np, key, &v) == 1)
                s->alloc = v;
            snprintf(key, sizeof key, "block.%u.capacity", i);
            if (virTypedParamsGetULLong(p, np, key, &v) == 1)
                s->cap = v;
            snprintf(key, sizeof key, "block.%u.physical", i);
            if (virTypedParamsGetULLong(p, np, key, &v) == 1)
                s->phys = v;
        }
    }
    virDomainStatsRecordListFree(recs);
    return 0;
}

/* ---- per-side bookkeeping (under x->lock) ---- */

static void side_reset(struct side *s)
{
    if (s->vol_ok)
        lsm_extend_volume_clear(&s->vol);
    free(s->path);
    memset(s, 0, sizeof *s);
    s->index = -1;
}

static bool replicating_locked(struct lsm_extender *x)
{
    return x->forced_replicating || x->replicating;
}

static void side_policy_locked(struct lsm_extender *x, struct side *s, uint64_t now)
{
    double rate = lsm_extend_rate_recent(&s->rate);
    (void)now;
    uint64_t lat = lsm_extend_latency_recent(&x->lat);
    s->headroom = lsm_extend_headroom(&x->policy, rate, lat, replicating_locked(x));
    s->growth = lsm_extend_growth(&x->policy, rate, lat);
    /* The chunk must cover the headroom, or every extension would leave
     * the side below it again: the policy's next size handles that. */
    s->max_size = lsm_extend_max_size(&x->policy, s->cap,
                                      lsm_extend_measured(s->cap, s->full, s->full_cap, s->alloc));
    /* A raw image is as large as the guest's disk already: its cap is its
     * size (status shows it; never extended, no threshold). */
    if (s->raw)
        s->max_size = s->phys;
}

/* A qcow2 volume's full size from its header (read only, the first 64 KiB);
 * *full = 0 for anything else: the cap then falls back to the ratio. */
static void read_full_size(const char *path, uint64_t *full, uint64_t *cap)
{
    *full = *cap = 0;
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    _cleanup_free_ uint8_t *buf = malloc(64 * KiB);
    if (!buf)
        return;
    ssize_t got = lsm_pread_all(fd, buf, 64 * KiB, 0);
    struct lsm_qcow2_geometry g;
    if (got < 0 || lsm_qcow2_geometry_parse(buf, (size_t)got, &g) < 0)
        return;
    *full = lsm_qcow2_full_size_of(&g);
    *cap = g.capacity;
}

/* Bring the drive's sides in line with the XML: a new path or index (a
 * pivot, a snapshot, a new or finished mirror) starts the side afresh. */
static int update_layout(struct drive *d)
{
    struct lsm_extender *x = d->x;
    struct layout l;
    int r = read_layout(x, d->disk, &l, NULL, NULL);
    if (r < 0)
        return r;
    /* Probing runs the backends' look-ups (sysfs): outside the lock. */
    struct lsm_extend_volume vols[2];
    int pr[2] = { -1, -1 };
    char perr[2][512] = { "", "" };
    uint64_t full[2] = { 0, 0 }, full_cap[2] = { 0, 0 };
    pthread_mutex_lock(&x->lock);
    bool changed[2];
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        const char *np = l.side[i].path;
        changed[i] = (np == NULL) != (s->path == NULL) || (np && strcmp(np, s->path)) ||
                     l.side[i].index != s->index;
    }
    pthread_mutex_unlock(&x->lock);
    for (int i = 0; i < 2; i++) {
        if (!changed[i] || !l.side[i].path)
            continue;
        pr[i] = lsm_extend_volume_probe(l.side[i].path, x->extend_cmd, x->cmd_timeout_ms,
                                        &vols[i]);
        read_full_size(l.side[i].path, &full[i], &full_cap[i]);
        if (pr[i] < 0)
            copy_str(perr[i], sizeof perr[i], lsm_last_error());
    }
    bool any_mirror = false;
    pthread_mutex_lock(&x->lock);
    free(d->alias);
    d->alias = LSM_STEAL(l.alias);
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        if (!changed[i])
            continue;
        uint64_t cap = s->cap;
        side_reset(s);
        if (!l.side[i].path)
            continue;
        s->path = LSM_STEAL(l.side[i].path);
        s->index = l.side[i].index;
        s->cap = cap;
        s->full = full[i];
        s->full_cap = full_cap[i];
        s->raw = !lsm_extend_format_grows(l.side[i].format);
        if (s->index >= 0)
            snprintf(s->target, sizeof s->target, "%s[%d]", d->disk, s->index);
        else
            copy_str(s->target, sizeof s->target, d->disk);
        if (pr[i] < 0 && s->raw) {
            /* never extended: no backend needed */
            s->state = LSM_SIDE_RAW;
        } else if (pr[i] < 0) {
            s->state = LSM_SIDE_FAILED;
            copy_str(s->error, sizeof s->error, perr[i]);
        } else {
            s->vol = vols[i];
            s->vol_ok = true;
            s->state = s->vol.kind == LSM_EXTEND_FILE ? LSM_SIDE_UNMANAGED
                       : s->raw                       ? LSM_SIDE_RAW
                                                      : LSM_SIDE_WATCHING;
        }
    }
    for (unsigned k = 0; k < x->ndrives; k++)
        if (x->drives[k].side[DST].path)
            any_mirror = true;
    x->replicating = any_mirror;
    pthread_mutex_unlock(&x->lock);
    layout_free(&l);
    return 0;
}

/* Stats and sizes of both sides. */
static int measure(struct drive *d)
{
    struct lsm_extender *x = d->x;
    struct stat_entry e[64];
    unsigned n = 0;
    int r = read_stats(x, e, ARRAY_SIZE(e), &n);
    if (r < 0)
        return r;
    uint64_t now = lsm_now_ns();
    pthread_mutex_lock(&x->lock);
    uint64_t src_cap = 0;
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        s->have_stats = false;
        for (unsigned k = 0; k < n; k++)
            if (!strcmp(e[k].name, d->disk) && e[k].index == s->index && s->index >= 0) {
                s->alloc = e[k].alloc;
                if (e[k].cap)
                    s->cap = e[k].cap;
                s->phys = e[k].phys;
                s->have_stats = true;
            }
        if (i == SRC)
            src_cap = s->cap;
    }
    /* No stats for the top (an old libvirt): the disk's block info. */
    bool need_info = !d->side[SRC].have_stats && d->side[SRC].path;
    pthread_mutex_unlock(&x->lock);
    virDomainBlockInfo bi;
    bool got_info = need_info && virDomainGetBlockInfo(x->dom, d->disk, &bi, 0) == 0;
    pthread_mutex_lock(&x->lock);
    if (got_info) {
        d->side[SRC].alloc = bi.allocation;
        d->side[SRC].cap = bi.capacity;
        d->side[SRC].have_stats = true;
        src_cap = bi.capacity;
    }
    /* The destination has the guest's size too (replicate checks it). */
    if (d->side[DST].path && !d->side[DST].cap)
        d->side[DST].cap = src_cap;
    struct lsm_extend_volume vols[2];
    bool want[2];
    for (int i = 0; i < 2; i++) {
        want[i] = d->side[i].vol_ok && d->side[i].vol.kind != LSM_EXTEND_FILE;
        if (want[i])
            vols[i] = d->side[i].vol;   /* a shallow copy, read only below */
    }
    pthread_mutex_unlock(&x->lock);
    /* The device's own size: what the backend changes.  vols[] points to
     * strings the side owns; only this drive's worker resets sides. */
    uint64_t phys[2] = { 0, 0 };
    int pr[2] = { 0, 0 };
    for (int i = 0; i < 2; i++)
        if (want[i])
            pr[i] = lsm_extend_volume_size(&vols[i], &phys[i]);
    pthread_mutex_lock(&x->lock);
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        if (!want[i] || pr[i] < 0) {
            if (s->raw)
                s->max_size = s->phys;  /* libvirt's physical: no backend */
            continue;
        }
        s->phys = phys[i];
        if (s->have_stats)
            lsm_extend_rate_add(&s->rate, &x->policy, now, s->alloc);
        side_policy_locked(x, s, now);
    }
    pthread_mutex_unlock(&x->lock);
    return 0;
}

/* ---- extending ---- */

struct grow_job {
    const struct lsm_extend_volume *vol;
    uint64_t size;
    int r;
    struct lsm_extend_timing t;
    char msg[512];
};

static void *grow_thread(void *arg)
{
    struct grow_job *j = arg;
    j->r = lsm_extend_volume_grow(j->vol, j->size, &j->t);
    if (j->r < 0)
        copy_str(j->msg, sizeof j->msg, lsm_last_error());
    return NULL;
}

static void fail_side_locked(struct lsm_extender *x, struct side *s, int err, const char *msg)
{
    s->state = LSM_SIDE_FAILED;
    copy_str(s->error, sizeof s->error, msg);
    if (!x->error) {
        x->error = err ? err : -EIO;
        copy_str(x->errmsg, sizeof x->errmsg, msg);
    }
    pthread_cond_broadcast(&x->cond);
}

static int arm(struct drive *d, int i, uint64_t threshold);

static void extend_sides(struct drive *d, const bool need[2])
{
    struct lsm_extender *x = d->x;
    struct grow_job job[2];
    uint64_t old[2] = { 0, 0 };
    uint64_t t_start = lsm_now_ns(), first_event = t_start;
    memset(job, 0, sizeof job);

    pthread_mutex_lock(&x->lock);
    bool repl = replicating_locked(x);
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        if (!need[i])
            continue;
        if (s->trig.pending && s->event_ns && s->event_ns < first_event)
            first_event = s->event_ns;
        lsm_extend_trigger_start(&s->trig);
        s->state = LSM_SIDE_EXTENDING;
        old[i] = s->phys;
        job[i].vol = &s->vol;
        job[i].size = lsm_extend_next_size_growing(&x->policy, s->alloc, s->phys, s->headroom,
                                                   s->growth, s->max_size, repl);
    }
    pthread_mutex_unlock(&x->lock);

    for (int i = 0; i < 2; i++) {
        if (!need[i])
            continue;
        struct lsm_monitor_event ev = {
            .type = LSM_MON_EXTENDING, .disk = d->disk, .side = side_names[i],
            .target = d->side[i].target, .path = d->side[i].path,
            .allocation = d->side[i].alloc, .old_size = old[i], .new_size = job[i].size,
        };
        deliver(x, &ev);
    }

    /* Both at once: the destination on a helper thread. */
    pthread_t helper;
    bool helper_ok = false;
    if (need[DST] && need[SRC])
        helper_ok = pthread_create(&helper, NULL, grow_thread, &job[DST]) == 0;
    if (need[DST] && !helper_ok)
        grow_thread(&job[DST]);
    if (need[SRC])
        grow_thread(&job[SRC]);
    if (helper_ok)
        pthread_join(helper, NULL);

    /* Re-arm what grew, at its new size. */
    uint64_t t_r0 = lsm_now_ns();
    uint64_t newsize[2] = { 0, 0 };
    for (int i = 0; i < 2; i++) {
        if (!need[i] || job[i].r < 0)
            continue;
        uint64_t sz = 0;
        if (lsm_extend_volume_size(job[i].vol, &sz) == 0)
            newsize[i] = sz;
        pthread_mutex_lock(&x->lock);
        struct side *s = &d->side[i];
        if (newsize[i])
            s->phys = newsize[i];
        side_policy_locked(x, s, t_r0);
        uint64_t th = lsm_extend_threshold(s->phys, s->headroom, s->max_size);
        s->armed = false;
        pthread_mutex_unlock(&x->lock);
        if (th)
            arm(d, i, th);
    }
    uint64_t t_end = lsm_now_ns();

    uint64_t ph[LSM_PHASES] = { 0 };
    ph[LSM_PHASE_WAIT] = t_start - first_event;
    ph[LSM_PHASE_EXTEND_DST] = need[DST] ? job[DST].t.extend_ns : 0;
    ph[LSM_PHASE_EXTEND_SRC] = need[SRC] ? job[SRC].t.extend_ns : 0;
    ph[LSM_PHASE_REFRESH] = MAX(need[DST] ? job[DST].t.refresh_ns : 0,
                                need[SRC] ? job[SRC].t.refresh_ns : 0);
    ph[LSM_PHASE_REARM] = t_end - t_r0;
    ph[LSM_PHASE_TOTAL] = t_end - first_event;

    bool any_ok = false;
    struct lsm_monitor_event evs[2];
    memset(evs, 0, sizeof evs);
    pthread_mutex_lock(&x->lock);
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        if (!need[i])
            continue;
        lsm_extend_trigger_done(&s->trig);
        struct lsm_monitor_event *ev = &evs[i];
        ev->disk = d->disk;
        ev->side = side_names[i];
        ev->target = s->target;
        ev->path = s->path;
        ev->old_size = old[i];
        ev->allocation = s->alloc;
        ev->merged = s->trig.merged;
        if (job[i].r == 0) {
            any_ok = true;
            s->extensions++;
            s->retries = 0;
            s->exceeded = false;
            s->event_ns = 0;
            s->state = s->phys >= s->max_size ? LSM_SIDE_AT_MAX : LSM_SIDE_WATCHING;
            ev->type = LSM_MON_EXTENDED;
            ev->new_size = s->phys;
            memcpy(ev->phase_ns, ph, sizeof ph);
            continue;
        }
        enum lsm_extend_failure f = lsm_extend_classify(job[i].r);
        ev->failure = f;
        ev->new_size = job[i].size;
        if (f == LSM_EXTEND_FAIL_TRANSIENT) {
            s->retries++;
            uint64_t delay = lsm_extend_retry_delay(&x->policy, s->retries);
            if (delay) {
                s->state = LSM_SIDE_RETRYING;
                s->retry_at = lsm_now_ns() + delay;
                /* The request stands: retried when retry_at comes. */
                s->trig.pending = true;
                ev->type = LSM_MON_EXTEND_RETRY;
                ev->attempt = s->retries;
                ev->delay_ns = delay;
                copy_str(s->error, sizeof s->error, job[i].msg);
                ev->message = s->error;
                continue;
            }
            char m[600];
            snprintf(m, sizeof m, "%s (gave up after %u attempts)", job[i].msg, s->retries);
            fail_side_locked(x, s, job[i].r, m);
        } else {
            fail_side_locked(x, s, job[i].r, job[i].msg);
        }
        ev->type = LSM_MON_FAILED;
        ev->message = s->error;
    }
    if (any_ok) {
        lsm_extend_latency_add(&x->lat, ph[LSM_PHASE_TOTAL]);
        for (int p = 0; p < LSM_PHASES; p++) {
            if ((p == LSM_PHASE_EXTEND_DST && !need[DST]) ||
                (p == LSM_PHASE_EXTEND_SRC && !need[SRC]))
                continue;
            lsm_lat_hist_add(&x->hist[p], ph[p]);
        }
    }
    pthread_mutex_unlock(&x->lock);
    for (int i = 0; i < 2; i++)
        if (need[i])
            deliver(x, &evs[i]);
}

/* Arm side i's threshold.  A failed set is retried at the next check. */
static int arm(struct drive *d, int i, uint64_t threshold)
{
    struct lsm_extender *x = d->x;
    struct side *s = &d->side[i];
    char target[48];
    pthread_mutex_lock(&x->lock);
    copy_str(target, sizeof target, s->target);
    bool indexed = s->index >= 0;
    bool injected = indexed && x->arm_fail > 0;
    if (injected)
        x->arm_fail--;
    pthread_mutex_unlock(&x->lock);
    int r = indexed && !injected ? virDomainSetBlockThreshold(x->dom, target, threshold, 0) : -1;
    char msg[512];
    if (r < 0)
        snprintf(msg, sizeof msg, "cannot set the block threshold of %s to %" PRIu64 ": %s",
                 target, threshold,
                 injected ? "failure injected (LSM_TEST_ARM_FAIL)"
                          : indexed ? virt_msg() : "libvirt gave it no index");
    pthread_mutex_lock(&x->lock);
    s->armed = r == 0;
    if (r == 0)
        s->armed_at = threshold;
    else
        s->arm_failures++;
    /* A set that keeps failing is retried at every check: reported the
     * first time and then at each power of two, not twice a second. */
    unsigned nf = s->arm_failures;
    pthread_mutex_unlock(&x->lock);
    if (r < 0 && (nf & (nf - 1)) != 0)
        return r;
    struct lsm_monitor_event ev = {
        .type = r == 0 ? LSM_MON_ARMED : LSM_MON_ARM_FAILED, .disk = d->disk,
        .side = side_names[i], .target = target, .threshold = threshold,
        .message = r == 0 ? NULL : msg,
    };
    deliver(x, &ev);
    return r;
}

/* ---- resume ---- */

static void maybe_resume(struct lsm_extender *x)
{
    if (x->no_resume)
        return;
    int state = 0, reason = 0;
    if (virDomainGetState(x->dom, &state, &reason, 0) < 0)
        return;
    if (state != VIR_DOMAIN_PAUSED || reason != VIR_DOMAIN_PAUSED_IOERROR)
        return;
    /* The errors QEMU has for each disk: the truth about why it paused. */
    virDomainDiskErrorPtr errs = NULL;
    int nerr = virDomainGetDiskErrors(x->dom, NULL, 0, 0);
    if (nerr > 0) {
        errs = calloc((size_t)nerr, sizeof *errs);
        if (errs)
            nerr = virDomainGetDiskErrors(x->dom, errs, (unsigned)nerr, 0);
        else
            nerr = 0;
    }
    struct lsm_extend_resume_drive rd[LSM_EXTENDER_MAX_DRIVES + 8];
    unsigned n = 0;
    pthread_mutex_lock(&x->lock);
    x->paused = true;
    for (unsigned k = 0; k < x->ndrives; k++) {
        struct drive *d = &x->drives[k];
        struct lsm_extend_resume_drive *r = &rd[n++];
        memset(r, 0, sizeof *r);
        r->managed = true;
        r->extended = true;
        r->free_bytes = UINT64_MAX;
        for (int i = 0; i < 2; i++) {
            struct side *s = &d->side[i];
            if (!s->path)
                continue;
            bool enospc = s->enospc, other = s->other_error;
            for (int e = 0; e < nerr && errs; e++)
                if (errs[e].disk && !strcmp(errs[e].disk, d->disk)) {
                    if (errs[e].error == VIR_DOMAIN_DISK_ERROR_NO_SPACE)
                        enospc = enospc || i == SRC || s->enospc;
                    else if (errs[e].error != VIR_DOMAIN_DISK_ERROR_NONE)
                        other = true;
                }
            if (other)
                r->paused_other = true;
            if (!enospc)
                continue;
            r->paused_enospc = true;
            if (s->state == LSM_SIDE_FAILED)
                r->failed = true;
            if (!s->vol_ok || s->vol.kind == LSM_EXTEND_FILE || s->raw)
                r->managed = false;
            if (s->extensions <= s->pause_mark)
                r->extended = false;
            uint64_t fr = s->phys > s->alloc ? s->phys - s->alloc : 0;
            r->free_bytes = MIN(r->free_bytes, fr);
            r->headroom = MAX(r->headroom, s->headroom);
            if (s->phys >= s->max_size)
                r->at_max = true;
        }
    }
    /* Disks that paused the VM but are not watched here. */
    for (int e = 0; e < nerr && errs && n < ARRAY_SIZE(rd); e++) {
        bool known = false;
        for (unsigned k = 0; k < x->ndrives; k++)
            if (errs[e].disk && !strcmp(errs[e].disk, x->drives[k].disk))
                known = true;
        if (known || errs[e].error == VIR_DOMAIN_DISK_ERROR_NONE)
            continue;
        struct lsm_extend_resume_drive *r = &rd[n++];
        memset(r, 0, sizeof *r);
        r->paused_enospc = errs[e].error == VIR_DOMAIN_DISK_ERROR_NO_SPACE;
        r->paused_other = !r->paused_enospc;
    }
    const char *why = NULL;
    bool ok = lsm_extend_may_resume(rd, n, &why);
    bool report = !ok && why != x->refused_why;
    if (!ok)
        x->refused_why = why;
    pthread_mutex_unlock(&x->lock);
    for (int e = 0; e < nerr && errs; e++)
        free(errs[e].disk);
    free(errs);
    if (!ok) {
        if (report) {
            struct lsm_monitor_event ev = { .type = LSM_MON_RESUME_REFUSED, .reason = why };
            deliver(x, &ev);
        }
        return;
    }
    if (virDomainResume(x->dom) < 0) {
        char m[512];
        snprintf(m, sizeof m, "cannot resume domain '%s': %s", x->domain, virt_msg());
        struct lsm_monitor_event ev = { .type = LSM_MON_RESUME_REFUSED, .reason = m };
        deliver(x, &ev);
        return;
    }
    pthread_mutex_lock(&x->lock);
    x->resumes++;
    x->refused_why = NULL;
    pthread_mutex_unlock(&x->lock);
    struct lsm_monitor_event ev = { .type = LSM_MON_RESUMED };
    deliver(x, &ev);
}

/* ---- the worker ---- */

static void check_drive(struct drive *d)
{
    struct lsm_extender *x = d->x;
    if (update_layout(d) < 0 || measure(d) < 0)
        return;     /* the domain may be going away: the next check tells */
    uint64_t now = lsm_now_ns();
    bool need[2] = { false, false };
    uint64_t want_th[2] = { 0, 0 };
    bool rearm[2] = { false, false };
    pthread_mutex_lock(&x->lock);
    for (int i = 0; i < 2; i++) {
        struct side *s = &d->side[i];
        if (!s->path || !s->vol_ok || s->vol.kind == LSM_EXTEND_FILE || s->raw ||
            s->state == LSM_SIDE_FAILED)
            continue;
        if (s->state == LSM_SIDE_RETRYING && now < s->retry_at)
            continue;
        if (lsm_extend_needed(s->alloc, s->phys, s->headroom, s->max_size,
                              s->exceeded || s->state == LSM_SIDE_RETRYING)) {
            if (!s->trig.pending && !s->trig.running) {
                lsm_extend_trigger_event(&s->trig);
                s->event_ns = now;
            }
            need[i] = true;
            continue;
        }
        if (s->phys >= s->max_size) {
            s->state = LSM_SIDE_AT_MAX;
            continue;
        }
        want_th[i] = lsm_extend_threshold(s->phys, s->headroom, s->max_size);
        /* Re-arm when not armed, or when the headroom moved by more than
         * one extent (the rate changed). */
        uint64_t diff = s->armed_at > want_th[i] ? s->armed_at - want_th[i]
                                                 : want_th[i] - s->armed_at;
        rearm[i] = want_th[i] && (!s->armed || diff > x->policy.extent);
    }
    pthread_mutex_unlock(&x->lock);

    if (need[SRC] || need[DST])
        extend_sides(d, need);
    bool past = false;
    for (int i = 0; i < 2; i++)
        if (rearm[i] && arm(d, i, want_th[i]) == 0) {
            /* Past it already?  The event would never come. */
            pthread_mutex_lock(&x->lock);
            past = past || d->side[i].alloc >= want_th[i];
            pthread_mutex_unlock(&x->lock);
        }
    pthread_mutex_lock(&x->lock);
    bool paused = x->paused;
    if (past)
        d->kicked = true;
    pthread_mutex_unlock(&x->lock);
    if (paused || need[SRC] || need[DST])
        maybe_resume(x);
}

static void *drive_main(void *arg)
{
    struct drive *d = arg;
    struct lsm_extender *x = d->x;
    pthread_mutex_lock(&x->lock);
    while (!atomic_load(&x->stop)) {
        /* A side still without a few samples of its rate is sampled sooner
         * (lsm_extend_poll_ns). */
        uint64_t poll = (uint64_t)x->poll_ms * 1000000ULL, wait = poll;
        for (int i = 0; i < 2; i++)
            if (d->side[i].path && d->side[i].have_stats) {
                uint64_t w = lsm_extend_poll_ns(&d->side[i].rate, poll);
                wait = w < wait ? w : wait;
            }
        uint64_t next = lsm_now_ns() + wait;
        for (int i = 0; i < 2; i++)
            if (d->side[i].state == LSM_SIDE_RETRYING && d->side[i].retry_at < next)
                next = d->side[i].retry_at;
        while (!atomic_load(&x->stop) && !d->kicked && lsm_now_ns() < next) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t left = next - lsm_now_ns();
            if (left > 200000000ULL)
                left = 200000000ULL;
            uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec + left;
            ts.tv_sec = (time_t)(abs_ns / 1000000000ULL);
            ts.tv_nsec = (long)(abs_ns % 1000000000ULL);
            pthread_cond_timedwait(&d->cond, &x->lock, &ts);
        }
        if (atomic_load(&x->stop))
            break;
        d->kicked = false;
        uint64_t gen = x->kick_gen;
        bool stopped = x->domain_stopped;
        pthread_mutex_unlock(&x->lock);
        if (!stopped)
            check_drive(d);
        pthread_mutex_lock(&x->lock);
        d->checked_gen = gen;
        pthread_cond_broadcast(&x->cond);   /* lsm_extender_refresh */
    }
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

/* ---- libvirt's events (on the loop thread) ---- */

static struct drive *drive_by_disk(struct lsm_extender *x, const char *disk)
{
    for (unsigned k = 0; k < x->ndrives; k++)
        if (!strcmp(x->drives[k].disk, disk))
            return &x->drives[k];
    return NULL;
}

static void on_threshold(virConnectPtr conn, virDomainPtr dom, const char *dev,
                         const char *path, unsigned long long threshold,
                         unsigned long long excess, void *opaque)
{
    struct lsm_extender *x = opaque;
    (void)conn;
    (void)dom;
    char disk[32] = "";
    int index = -1;
    if (dev) {
        const char *br = strchr(dev, '[');
        size_t len = br ? (size_t)(br - dev) : strlen(dev);
        if (len < sizeof disk) {
            memcpy(disk, dev, len);
            disk[len] = '\0';
        }
        if (br)
            index = atoi(br + 1);
    }
    struct lsm_monitor_event ev = {
        .type = LSM_MON_THRESHOLD, .disk = disk, .target = dev, .path = path,
        .threshold = threshold, .excess = excess,
    };
    pthread_mutex_lock(&x->lock);
    x->events[0]++;
    struct drive *d = drive_by_disk(x, disk);
    /* libvirt also reports the plain name (vda) for the top: we armed the
     * indexed one, whose own event comes too. */
    if (d && index >= 0) {
        for (int i = 0; i < 2; i++) {
            struct side *s = &d->side[i];
            if (!s->path || s->index != index)
                continue;
            ev.side = side_names[i];
            s->armed = false;
            s->exceeded = true;
            if (threshold + excess > s->alloc)
                s->alloc = threshold + excess;
            if (lsm_extend_trigger_event(&s->trig))
                s->event_ns = lsm_now_ns();
            ev.merged = s->trig.merged;
            kick_locked(d);
        }
    }
    pthread_mutex_unlock(&x->lock);
    deliver(x, &ev);
}

static void on_io_error(virConnectPtr conn, virDomainPtr dom, const char *src_path,
                        const char *dev_alias, int action, const char *reason, void *opaque)
{
    struct lsm_extender *x = opaque;
    (void)conn;
    (void)dom;
    (void)action;
    struct lsm_monitor_event ev = { .type = LSM_MON_IO_ERROR, .path = src_path,
                                    .reason = reason };
    bool enospc = reason && !strcmp(reason, "enospc");
    pthread_mutex_lock(&x->lock);
    x->events[1]++;
    for (unsigned k = 0; k < x->ndrives; k++) {
        struct drive *d = &x->drives[k];
        bool by_alias = dev_alias && d->alias && !strcmp(dev_alias, d->alias);
        for (int i = 0; i < 2; i++) {
            struct side *s = &d->side[i];
            bool match = s->path && src_path && !strcmp(s->path, src_path);
            if (!match && !(by_alias && i == SRC && !src_path))
                continue;
            ev.disk = d->disk;
            ev.side = side_names[i];
            if (enospc) {
                if (!s->enospc)
                    s->pause_mark = s->extensions;
                s->enospc = true;
                s->exceeded = true;
                if (lsm_extend_trigger_event(&s->trig))
                    s->event_ns = lsm_now_ns();
            } else {
                s->other_error = true;
            }
            kick_locked(d);
        }
    }
    pthread_mutex_unlock(&x->lock);
    deliver(x, &ev);
}

static const char *lifecycle_name(int event, int detail, char *buf, size_t len)
{
    static const char *const ev[] = { "defined", "undefined", "started", "suspended",
                                      "resumed", "stopped", "shutdown", "pmsuspended",
                                      "crashed" };
    const char *e = event >= 0 && (size_t)event < ARRAY_SIZE(ev) ? ev[event] : "unknown";
    const char *dt = NULL;
    if (event == VIR_DOMAIN_EVENT_SUSPENDED) {
        static const char *const s[] = { "paused", "migrated", "ioerror", "watchdog",
                                         "restored", "from-snapshot", "api-error",
                                         "postcopy", "postcopy-failed" };
        if (detail >= 0 && (size_t)detail < ARRAY_SIZE(s))
            dt = s[detail];
    } else if (event == VIR_DOMAIN_EVENT_RESUMED) {
        static const char *const s[] = { "unpaused", "migrated", "from-snapshot",
                                         "postcopy", "postcopy-failed" };
        if (detail >= 0 && (size_t)detail < ARRAY_SIZE(s))
            dt = s[detail];
    }
    if (dt)
        snprintf(buf, len, "%s/%s", e, dt);
    else
        snprintf(buf, len, "%s/%d", e, detail);
    return buf;
}

static void on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                         void *opaque)
{
    struct lsm_extender *x = opaque;
    (void)conn;
    (void)dom;
    char why[64];
    struct lsm_monitor_event ev = { .type = LSM_MON_LIFECYCLE,
                                    .reason = lifecycle_name(event, detail, why, sizeof why) };
    bool stopped = false;
    pthread_mutex_lock(&x->lock);
    x->events[2]++;
    if (event == VIR_DOMAIN_EVENT_SUSPENDED && detail == VIR_DOMAIN_EVENT_SUSPENDED_IOERROR) {
        x->paused = true;
        x->refused_why = NULL;
        kick_all_locked(x);
    } else if (event == VIR_DOMAIN_EVENT_RESUMED) {
        x->paused = false;
        for (unsigned k = 0; k < x->ndrives; k++)
            for (int i = 0; i < 2; i++) {
                struct side *s = &x->drives[k].side[i];
                s->enospc = s->other_error = false;
            }
    } else if (event == VIR_DOMAIN_EVENT_STOPPED || event == VIR_DOMAIN_EVENT_CRASHED) {
        stopped = !x->domain_stopped;
        x->domain_stopped = true;
        pthread_cond_broadcast(&x->cond);
    }
    pthread_mutex_unlock(&x->lock);
    deliver(x, &ev);
    if (stopped) {
        struct lsm_monitor_event st = { .type = LSM_MON_DOMAIN_STOPPED, .reason = why };
        deliver(x, &st);
    }
}

static void on_block_job(virConnectPtr conn, virDomainPtr dom, const char *disk, int type,
                         int status, void *opaque)
{
    struct lsm_extender *x = opaque;
    (void)conn;
    (void)dom;
    struct lsm_monitor_event ev = { .type = LSM_MON_BLOCK_JOB, .disk = disk, .job_type = type,
                                    .job_status = status };
    pthread_mutex_lock(&x->lock);
    x->events[3]++;
    /* A pivot, an abort or a new mirror changes what is watched. */
    struct drive *d = disk ? drive_by_disk(x, disk) : NULL;
    if (d)
        kick_locked(d);
    pthread_mutex_unlock(&x->lock);
    deliver(x, &ev);
}

/* libvirtd went away (or the connection broke): nothing can be watched
 * or extended any more, which the caller must know. */
static void on_close(virConnectPtr conn, int reason, void *opaque)
{
    struct lsm_extender *x = opaque;
    (void)conn;
    static const char *const why[] = { "an error", "end of file", "keepalive time-out",
                                       "a client request" };
    pthread_mutex_lock(&x->lock);
    if (!x->error) {
        x->error = -ENOTCONN;
        snprintf(x->errmsg, sizeof x->errmsg, "lost the connection to libvirt (%s): "
                 "domain '%s' is no longer watched", reason >= 0 && reason < 4 ? why[reason]
                                                                              : "unknown", x->domain);
    }
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
}

static void on_tick(int timer, void *opaque)
{
    (void)timer;
    (void)opaque;
}

static void *loop_main(void *arg)
{
    struct lsm_extender *x = arg;
    while (!atomic_load(&x->stop))
        if (virEventRunDefaultImpl() < 0)
            break;
    return NULL;
}

/* ---- ops ---- */

static void ext_stop(struct lsm_extender *x)
{
    if (!x)
        return;
    atomic_store(&x->stop, true);
    pthread_mutex_lock(&x->lock);
    for (unsigned k = 0; k < x->ndrives; k++)
        pthread_cond_broadcast(&x->drives[k].cond);
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
    for (unsigned k = 0; k < x->ndrives; k++)
        if (x->drives[k].started)
            pthread_join(x->drives[k].thread, NULL);
    if (x->loop_started)
        pthread_join(x->loop, NULL);
    for (int i = 0; i < 4; i++)
        if (x->cb_ids[i] >= 0)
            virConnectDomainEventDeregisterAny(x->conn, x->cb_ids[i]);
    if (x->timer >= 0)
        virEventRemoveTimeout(x->timer);
    if (x->close_cb)
        virConnectUnregisterCloseCallback(x->conn, on_close);
    for (unsigned k = 0; k < x->ndrives; k++) {
        for (int i = 0; i < 2; i++)
            side_reset(&x->drives[k].side[i]);
        free(x->drives[k].alias);
    }
    for (unsigned k = 0; k < LSM_EXTENDER_MAX_DRIVES; k++)
        pthread_cond_destroy(&x->drives[k].cond);
    if (x->dom)
        virDomainFree(x->dom);
    if (x->conn)
        virConnectClose(x->conn);
    pthread_mutex_destroy(&x->lock);
    pthread_mutex_destroy(&x->deliver);
    pthread_cond_destroy(&x->cond);
    free(x->domain);
    free(x->extend_cmd);
    free(x);
}

static int ext_subscribe(struct lsm_extender *x, lsm_monitor_cb cb, void *opaque)
{
    pthread_mutex_lock(&x->lock);
    int r = 0;
    if (x->nsubs >= MAX_SUBSCRIBERS)
        r = lsm_error(-ENOSPC, "too many subscribers to the extender's events");
    else
        x->subs[x->nsubs++] = (struct subscriber){ cb, opaque };
    pthread_mutex_unlock(&x->lock);
    return r;
}

static void ext_kick(struct lsm_extender *x)
{
    pthread_mutex_lock(&x->lock);
    kick_all_locked(x);
    pthread_mutex_unlock(&x->lock);
}

static void ext_set_replicating(struct lsm_extender *x, bool on)
{
    pthread_mutex_lock(&x->lock);
    x->forced_replicating = on;
    pthread_mutex_unlock(&x->lock);
    ext_kick(x);
}

static void ext_status(struct lsm_extender *x, struct lsm_extender_status *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&x->lock);
    st->ndrives = x->ndrives;
    for (unsigned k = 0; k < x->ndrives; k++) {
        struct drive *d = &x->drives[k];
        struct lsm_extender_drive_status *o = &st->drive[k];
        copy_str(o->disk, sizeof o->disk, d->disk);
        for (int i = 0; i < 2; i++) {
            struct side *s = &d->side[i];
            struct lsm_extender_side_status *os = &o->side[i];
            if (!s->path)
                continue;
            os->state = s->state;
            copy_str(os->path, sizeof os->path, s->path);
            copy_str(os->target, sizeof os->target, s->target);
            os->kind = s->vol_ok ? lsm_extend_kind_name(s->vol.kind) : "unknown";
            os->armed = s->armed;
            os->allocation = s->alloc;
            os->physical = s->phys;
            os->capacity = s->cap;
            os->threshold = s->armed ? s->armed_at : 0;
            os->headroom = s->headroom;
            os->max_size = s->max_size;
            os->rate_bps = lsm_extend_rate_bps(&s->rate, x->policy.rate_window_ns);
            os->planned_rate_bps = lsm_extend_rate_recent(&s->rate);
            os->extensions = s->extensions;
            os->merged = s->trig.merged;
            os->retries = s->retries;
            os->arm_failures = s->arm_failures;
            copy_str(os->error, sizeof os->error, s->error);
        }
    }
    st->replicating = replicating_locked(x);
    st->paused = x->paused;
    st->domain_stopped = x->domain_stopped;
    st->resumes = x->resumes;
    memcpy(st->events, x->events, sizeof st->events);
    st->latency_ns = lsm_extend_latency_recent(&x->lat);
    memcpy(st->phase, x->hist, sizeof st->phase);
    pthread_mutex_unlock(&x->lock);
}

static int ext_error(struct lsm_extender *x)
{
    pthread_mutex_lock(&x->lock);
    int e = x->error;
    char m[512];
    copy_str(m, sizeof m, x->errmsg);
    pthread_mutex_unlock(&x->lock);
    if (e)
        lsm_error(e, "%s", m);
    return e;
}

/* timeout_ms from now on x->cond's clock (CLOCK_REALTIME). */
static struct timespec realtime_deadline(int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec +
                      (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ULL;
    ts.tv_sec = (time_t)(abs_ns / 1000000000ULL);
    ts.tv_nsec = (long)(abs_ns % 1000000000ULL);
    return ts;
}

static int ext_wait(struct lsm_extender *x, int timeout_ms)
{
    struct timespec ts = realtime_deadline(timeout_ms);
    pthread_mutex_lock(&x->lock);
    int r = 0;
    while (!x->error && !x->domain_stopped && !atomic_load(&x->stop))
        if (pthread_cond_timedwait(&x->cond, &x->lock, &ts) != 0)
            break;
    r = x->error || x->domain_stopped;
    pthread_mutex_unlock(&x->lock);
    return r;
}

/* Kick, then wait until every drive has finished a check that began after
 * the kick (its stats read anew: the chain as it is now). */
static int ext_refresh(struct lsm_extender *x, int timeout_ms)
{
    struct timespec ts = realtime_deadline(timeout_ms);
    pthread_mutex_lock(&x->lock);
    uint64_t gen = kick_all_locked(x);
    int r = 0;
    for (;;) {
        bool done = true;
        for (unsigned k = 0; k < x->ndrives; k++)
            done = done && x->drives[k].checked_gen >= gen;
        if (done)
            break;
        if (x->domain_stopped || atomic_load(&x->stop)) {
            r = -ESRCH;
            break;
        }
        if (pthread_cond_timedwait(&x->cond, &x->lock, &ts) != 0) {
            r = -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&x->lock);
    if (r == -ESRCH)
        return lsm_error(r, "the domain stopped while its drives were being measured");
    if (r < 0)
        return lsm_error(r, "the drives were not measured within %d ms", timeout_ms);
    return 0;
}

static int init_sync(struct lsm_extender *x)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_mutex_init(&x->lock, NULL);
    pthread_mutex_init(&x->deliver, NULL);
    pthread_cond_init(&x->cond, NULL);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    for (unsigned k = 0; k < LSM_EXTENDER_MAX_DRIVES; k++)
        pthread_cond_init(&x->drives[k].cond, &ca);
    pthread_condattr_destroy(&ca);
    return 0;
}

static int ext_start(const struct lsm_extender_opts *o, struct lsm_extender **out)
{
    if (!o->domain)
        return lsm_error(-EINVAL, "the extender needs a domain");
    if (o->ndisks > LSM_EXTENDER_MAX_DRIVES)
        return lsm_error(-E2BIG, "at most %d disks", LSM_EXTENDER_MAX_DRIVES);
    int r = global_init();
    if (r < 0)
        return r;
    const char *uri = o->uri ? o->uri : DEFAULT_URI;

    struct lsm_extender *x = calloc(1, sizeof *x);
    if (!x)
        return lsm_error(-ENOMEM, "out of memory");
    init_sync(x);
    /* Every field ext_stop looks at is valid from here on. */
    x->ndrives = LSM_EXTENDER_MAX_DRIVES;
    for (unsigned k = 0; k < LSM_EXTENDER_MAX_DRIVES; k++)
        for (int i = 0; i < 2; i++)
            x->drives[k].side[i].index = -1;
    x->ndrives = 0;
    for (int i = 0; i < 4; i++)
        x->cb_ids[i] = -1;
    x->timer = -1;
    x->t0 = lsm_now_ns();
    x->policy = o->policy;
    x->poll_ms = o->poll_ms > 0 ? o->poll_ms : 500;
    const char *arm_fail = getenv("LSM_TEST_ARM_FAIL");
    x->arm_fail = arm_fail ? atoi(arm_fail) : 0;
    x->cmd_timeout_ms = o->extend_cmd_timeout_ms > 0 ? o->extend_cmd_timeout_ms : 60000;
    x->no_resume = o->no_resume;
    x->forced_replicating = o->replicating;
    x->domain = strdup(o->domain);
    x->extend_cmd = o->extend_cmd ? strdup(o->extend_cmd) : NULL;
    if (!x->domain || (o->extend_cmd && !x->extend_cmd)) {
        ext_stop(x);
        return lsm_error(-ENOMEM, "out of memory");
    }
    if (o->cb)
        x->subs[x->nsubs++] = (struct subscriber){ o->cb, o->opaque };

    x->conn = virConnectOpen(uri);
    if (!x->conn) {
        virErrorPtr e = virGetLastError();
        r = e && e->domain == VIR_FROM_RPC && e->code == VIR_ERR_SYSTEM_ERROR
                ? lsm_error(-ECONNREFUSED, "cannot connect to libvirt at %s: is libvirtd "
                            "running? (%s)", uri, virt_msg())
                : lsm_error(-ENOTCONN, "cannot connect to libvirt at %s: %s", uri, virt_msg());
        ext_stop(x);
        return r;
    }
    x->dom = virDomainLookupByName(x->conn, o->domain);
    if (!x->dom && strlen(o->domain) == 36)
        x->dom = virDomainLookupByUUIDString(x->conn, o->domain);
    if (!x->dom) {
        virErrorPtr e = virGetLastError();
        r = e && e->code == VIR_ERR_NO_DOMAIN
                ? lsm_error(-ENOENT, "no domain '%s' at %s", o->domain, uri)
                : lsm_error(-EIO, "cannot look up domain '%s' at %s: %s", o->domain, uri,
                            virt_msg());
        ext_stop(x);
        return r;
    }
    int active = virDomainIsActive(x->dom);
    if (active <= 0) {
        r = active < 0 ? lsm_error(-EIO, "cannot query domain '%s': %s", o->domain, virt_msg())
                       : lsm_error(-EINVAL, "domain '%s' is not running", o->domain);
        ext_stop(x);
        return r;
    }

    /* The drives. */
    char names[LSM_EXTENDER_MAX_DRIVES][32];
    unsigned nnames = 0;
    if (o->ndisks) {
        for (unsigned k = 0; k < o->ndisks; k++) {
            if (strlen(o->disks[k]) >= 32) {
                ext_stop(x);
                return lsm_error(-EINVAL, "disk name '%s' is too long", o->disks[k]);
            }
            for (unsigned j = 0; j < k; j++)
                if (!strcmp(o->disks[j], o->disks[k])) {
                    ext_stop(x);
                    return lsm_error(-EINVAL, "disk '%s' is named twice", o->disks[k]);
                }
            copy_str(names[nnames++], 32, o->disks[k]);
        }
    } else {
        struct layout l;
        r = read_layout(x, NULL, &l, names, &nnames);
        layout_free(&l);
        if (r < 0) {
            ext_stop(x);
            return r;
        }
        if (!nnames) {
            ext_stop(x);
            return lsm_error(-ENOENT, "domain '%s' has no disk on a block device: name the "
                             "disks to watch with --disk", o->domain);
        }
    }
    for (unsigned k = 0; k < nnames; k++) {
        struct drive *d = &x->drives[x->ndrives++];
        d->x = x;
        copy_str(d->disk, sizeof d->disk, names[k]);
        r = update_layout(d);
        if (r == 0 && d->side[SRC].state == LSM_SIDE_FAILED)
            r = lsm_error(-ENOTSUP, "disk %s: %s", d->disk, d->side[SRC].error);
        if (r < 0) {
            ext_stop(x);
            return r;
        }
    }
    /* Named disks on files are kept: a mirror onto a block device (file to
     * block) may start later.  Found ones are block-backed anyway. */
    bool any = o->ndisks > 0;
    for (unsigned k = 0; k < x->ndrives; k++)
        if ((x->drives[k].side[SRC].state != LSM_SIDE_UNMANAGED &&
             x->drives[k].side[SRC].state != LSM_SIDE_RAW) ||
            x->drives[k].side[DST].path)
            any = true;
    if (!any) {
        ext_stop(x);
        return lsm_error(-ENOENT, "no disk of domain '%s' is on a volume that needs "
                         "extending (all are regular files or raw images)", o->domain);
    }

    /* Events, then the threads.  Without an event callback the periodic
     * check still works: registration failures are not fatal, but the
     * threshold callback is what makes the extender fast, so it is. */
    x->cb_ids[0] = virConnectDomainEventRegisterAny(
        x->conn, x->dom, VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD,
        VIR_DOMAIN_EVENT_CALLBACK(on_threshold), x, NULL);
    if (x->cb_ids[0] < 0) {
        r = lsm_error(-EIO, "cannot register for block threshold events of domain '%s': %s",
                      o->domain, virt_msg());
        ext_stop(x);
        return r;
    }
    x->cb_ids[1] = virConnectDomainEventRegisterAny(
        x->conn, x->dom, VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
        VIR_DOMAIN_EVENT_CALLBACK(on_io_error), x, NULL);
    x->cb_ids[2] = virConnectDomainEventRegisterAny(
        x->conn, x->dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
        VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), x, NULL);
    x->cb_ids[3] = virConnectDomainEventRegisterAny(
        x->conn, x->dom, VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
        VIR_DOMAIN_EVENT_CALLBACK(on_block_job), x, NULL);
    /* Not fatal if refused: the checks' RPCs fail then, and stop tells. */
    x->close_cb = virConnectRegisterCloseCallback(x->conn, on_close, x, NULL) == 0;
    /* Keepalive, so a dead daemon is noticed (5 s x 3). */
    virConnectSetKeepAlive(x->conn, 5, 3);
    /* Bounds each run of the loop, so stop is seen within a tick. */
    x->timer = virEventAddTimeout(LOOP_TICK_MS, on_tick, NULL, NULL);
    if (x->timer < 0) {
        r = lsm_error(-EIO, "cannot add a timer to libvirt's event loop: %s", virt_msg());
        ext_stop(x);
        return r;
    }
    if (pthread_create(&x->loop, NULL, loop_main, x) != 0) {
        ext_stop(x);
        return lsm_error(-EAGAIN, "cannot start the extender's event thread");
    }
    x->loop_started = true;
    /* A VM already paused when we start: maybe_resume decides from the
     * disks' errors. */
    int state = 0, reason = 0;
    if (virDomainGetState(x->dom, &state, &reason, 0) == 0 && state == VIR_DOMAIN_PAUSED &&
        reason == VIR_DOMAIN_PAUSED_IOERROR)
        x->paused = true;
    for (unsigned k = 0; k < x->ndrives; k++) {
        struct drive *d = &x->drives[k];
        d->kicked = true;   /* a first check at once */
        if (pthread_create(&d->thread, NULL, drive_main, d) != 0) {
            ext_stop(x);
            return lsm_error(-EAGAIN, "cannot start the extender's thread for %s", d->disk);
        }
        d->started = true;
    }
    *out = x;
    return 0;
}

const struct lsm_extender_ops lsm_extender_libvirt_ops = {
    .start = ext_start,
    .stop = ext_stop,
    .subscribe = ext_subscribe,
    .set_replicating = ext_set_replicating,
    .kick = ext_kick,
    .refresh = ext_refresh,
    .status = ext_status,
    .error = ext_error,
    .wait = ext_wait,
};

#endif /* HAVE_LIBVIRT */
