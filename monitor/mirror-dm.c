/* The device-mapper mirroring backend: the target is an active dm device
 * with a single linear target (an LV, or a dm linear device over the
 * volume).  start swaps its table for a dm-mirror one, source leg first and
 * destination second; the kernel copies the regions and sends every write to
 * both legs.  pivot swaps in a linear table onto the destination, cancel the
 * original linear table.  docs/replicate-dm.md has the why of each choice.
 *
 * No state is kept outside the kernel: `replicate start` and a later
 * `replicate status/finish/abort` are different processes, so every op reads
 * the live table again.  The original table is the mirror's first leg with
 * its offset (we only mirror single linear targets, so that is all it was).
 *
 * Every table swap is reload (into the inactive slot), suspend, resume: the
 * device's users see one atomic switch.  A failed step clears the inactive
 * table and resumes what was live, so an error leaves the device as it was.
 */
#include "config.h"

#ifdef HAVE_DEVMAPPER

#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "cleanup.h"
#include "error.h"
#include "mirror.h"
#include "util.h"

LSM_DEFINE_CLEANUP(struct dm_task *, dm_task_destroy)

/* Region size: 1024 sectors = 512 KiB (docs/replicate-dm.md). */
#define DEFAULT_REGION_SECTORS 1024u
/* Smallest region we ask for: one page.  The kernel takes any power of two
 * from 2 sectors, but sub-page regions only multiply the bookkeeping. */
#define MIN_REGION_SECTORS 8u

#define SECTOR 512u

/* ---- libdevmapper's messages ---- */

/* libdevmapper prints its errors on stderr by default; monitor/ never
 * prints, so we keep the last error-level message to add to ours when the
 * ioctl's errno alone does not say what went wrong. */
static __thread char dm_msg[256];

/* libdevmapper's log levels (its internal _LOG_* values): the low three bits
 * are the level, higher bits are flags (print on stderr, once). */
#define DMLOG_LEVEL_MASK 7
#define DMLOG_ERR 3

static void keep_dm_message(int level, const char *file, int line, int dm_errno_or_class,
                            const char *f, ...)
{
    (void)file;
    (void)line;
    (void)dm_errno_or_class;
    if ((level & DMLOG_LEVEL_MASK) > DMLOG_ERR)
        return;
    va_list ap;
    va_start(ap, f);
    vsnprintf(dm_msg, sizeof dm_msg, f, ap);
    va_end(ap);
}

static void global_init(void)
{
    static bool done;
    if (done)
        return;
    dm_log_with_errno_init(keep_dm_message);
    /* No udev cookies: we never create or remove devices, only swap tables,
     * and the test VM runs no udev at all (see the doc). */
    dm_udev_set_sync_support(0);
    done = true;
}

/* Record "cannot WHAT: ERRNO TEXT" from a failed dm_task_run. */
static int task_error(struct dm_task *dmt, const char *fmt, ...) LSM_PRINTF(2, 3);
static int task_error(struct dm_task *dmt, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    int err = dmt ? dm_task_get_errno(dmt) : 0;
    if (err > 0)
        return lsm_error_errno(-err, "%s", what);
    return lsm_error(-EIO, "%s: %s", what, dm_msg[0] ? dm_msg : "device-mapper error");
}

/* A task on device NAME (NULL: set by the caller). */
static int new_task(int type, const char *name, struct dm_task **out)
{
    dm_msg[0] = '\0';
    struct dm_task *dmt = dm_task_create(type);
    if (!dmt) {
        /* No driver (no /dev/mapper/control, dm-mod not loaded) fails here. */
        if (dm_msg[0])
            return lsm_error(-ENODEV, "cannot use device-mapper%s%s: %s", name ? " for " : "",
                             name ? name : "", dm_msg);
        return lsm_error(-ENOMEM, "cannot create a device-mapper task%s%s",
                         name ? " for " : "", name ? name : "");
    }
    if (name && !dm_task_set_name(dmt, name)) {
        dm_task_destroy(dmt);
        return lsm_error(-EINVAL, "invalid device-mapper name '%s'", name);
    }
    dm_task_no_open_count(dmt);
    *out = dmt;
    return 0;
}

static int run_task(struct dm_task *dmt)
{
    dm_msg[0] = '\0';
    return dm_task_run(dmt) ? 0 : -1;
}

/* ---- state ---- */

struct dm_mirror {
    char *name;            /* device-mapper name: what every task names */
};

enum table_kind { TABLE_LINEAR, TABLE_MIRROR };

/* A live table we can work with: one linear target, or one mirror target
 * of the shape we load (core log, two legs, handle_errors). */
struct table {
    enum table_kind kind;
    uint64_t len;          /* sectors */
    dev_t src;             /* linear device / first leg */
    uint64_t src_off;      /* sectors */
    dev_t dst;             /* mirror: second leg */
    uint32_t region;       /* mirror: region size in sectors */
};

static int parse_devnum(const char *s, dev_t *out)
{
    unsigned maj, min;
    char end;
    if (sscanf(s, "%u:%u%c", &maj, &min, &end) != 2)
        return -EINVAL;
    *out = makedev(maj, min);
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return -EINVAL;
    *out = v;
    return 0;
}

/* Split params into at most max words in place; returns the count. */
static size_t split(char *s, char **w, size_t max)
{
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(s, " ", &save); t && n < max;
         t = strtok_r(NULL, " ", &save))
        w[n++] = t;
    return n;
}

/* Is "core 1 REGION 2 SRC OFF DST 0 1 handle_errors" ours?  Fills t. */
static bool parse_our_mirror(char *params, struct table *t)
{
    char *w[16];
    uint64_t region, off, dst_off, nfeat;
    if (split(params, w, ARRAY_SIZE(w)) != 10)
        return false;
    if (strcmp(w[0], "core") || strcmp(w[1], "1") || parse_u64(w[2], &region) < 0 ||
        strcmp(w[3], "2") || parse_devnum(w[4], &t->src) < 0 || parse_u64(w[5], &off) < 0 ||
        parse_devnum(w[6], &t->dst) < 0 || parse_u64(w[7], &dst_off) < 0 || dst_off != 0 ||
        parse_u64(w[8], &nfeat) < 0 || nfeat != 1 || strcmp(w[9], "handle_errors") ||
        region > UINT32_MAX)
        return false;
    t->kind = TABLE_MIRROR;
    t->src_off = off;
    t->region = (uint32_t)region;
    return true;
}

/* The live table of NAME.  -EINVAL with the reason for anything we do not
 * handle (several targets, another target type, a mirror not ours). */
static int read_table(const char *name, struct table *t)
{
    _cleanup_(dm_task_destroyp) struct dm_task *dmt = NULL;
    int r = new_task(DM_DEVICE_TABLE, name, &dmt);
    if (r < 0)
        return r;
    if (run_task(dmt) < 0)
        return task_error(dmt, "cannot read the table of %s", name);

    memset(t, 0, sizeof *t);
    uint64_t start, length;
    char *type = NULL, *params = NULL;
    unsigned n = 0;
    void *next = NULL;
    char first_type[32] = "";
    _cleanup_free_ char *first_params = NULL;
    uint64_t first_start = 0, first_len = 0;
    do {
        next = dm_get_next_target(dmt, next, &start, &length, &type, &params);
        if (!type)
            break;
        if (n++ == 0) {
            snprintf(first_type, sizeof first_type, "%s", type);
            first_params = strdup(params ? params : "");
            if (!first_params)
                return lsm_error_errno(-ENOMEM, "cannot read the table of %s", name);
            first_start = start;
            first_len = length;
        }
    } while (next);

    if (n == 0)
        return lsm_error(-EINVAL, "%s has no active table", name);
    if (n > 1)
        return lsm_error(-EINVAL, "%s has %u targets: only a device with a single linear "
                         "target can be mirrored", name, n);
    if (first_start != 0 || first_len == 0)
        return lsm_error(-EINVAL, "%s has an odd table (one target at sector %" PRIu64
                         ", %" PRIu64 " sectors)", name, first_start, first_len);
    t->len = first_len;

    if (!strcmp(first_type, "linear")) {
        char *w[3];
        if (split(first_params, w, ARRAY_SIZE(w)) != 2 || parse_devnum(w[0], &t->src) < 0 ||
            parse_u64(w[1], &t->src_off) < 0)
            return lsm_error(-EINVAL, "cannot parse the linear table of %s", name);
        t->kind = TABLE_LINEAR;
        return 0;
    }
    if (!strcmp(first_type, "mirror")) {
        if (parse_our_mirror(first_params, t))
            return 0;
        return lsm_error(-EINVAL, "%s is a mirror that lsm-sync did not make: leave it to "
                         "the tool that did (LVM?)", name);
    }
    return lsm_error(-EINVAL, "%s is a %s device: only a single linear target can be "
                     "mirrored", name, first_type);
}

static int get_info(const char *name, struct dm_info *info)
{
    _cleanup_(dm_task_destroyp) struct dm_task *dmt = NULL;
    int r = new_task(DM_DEVICE_INFO, name, &dmt);
    if (r < 0)
        return r;
    if (run_task(dmt) < 0 || !dm_task_get_info(dmt, info))
        return task_error(dmt, "cannot query device-mapper device %s", name);
    if (!info->exists)
        return lsm_error(-ENOENT, "no device-mapper device '%s'", name);
    return 0;
}

/* A table may be swapped only on a device that runs normally: a suspended
 * one is in someone else's hands (another tool changing it). */
static int check_live(const char *name)
{
    struct dm_info info;
    int r = get_info(name, &info);
    if (r < 0)
        return r;
    if (info.suspended)
        return lsm_error(-EBUSY, "%s is suspended (another tool is changing its table?); "
                         "leave it until it is resumed", name);
    if (!info.live_table)
        return lsm_error(-EINVAL, "%s has no active table", name);
    return 0;
}

/* /dev/NAME of a block device number, from sysfs (no udev needed: devtmpfs
 * names nodes after the kernel names). */
static char *devnum_path(dev_t d)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/sys/dev/block/%u:%u/uevent", major(d), minor(d));
    FILE *f = fopen(p, "re");
    char *out = NULL;
    if (f) {
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "DEVNAME=", 8))
                continue;
            line[strcspn(line, "\n")] = '\0';
            if (asprintf(&out, "/dev/%s", line + 8) < 0)
                out = NULL;
            break;
        }
        fclose(f);
    }
    struct stat st;
    if (out && stat(out, &st) == 0 && S_ISBLK(st.st_mode) && st.st_rdev == d)
        return out;
    free(out);
    if (asprintf(&out, "/dev/block/%u:%u", major(d), minor(d)) < 0)
        return NULL;
    return out;
}

/* ---- open / close ---- */

static void dmm_close(struct lsm_mirror *m)
{
    struct dm_mirror *d = m->priv;
    if (!d)
        return;
    free(d->name);
    free(d);
    m->priv = NULL;
}

/* The dm name of DEVICE: a path to a block device (/dev/mapper/NAME,
 * /dev/VG/LV, /dev/dm-N) or, without a '/', a dm name. */
static int resolve_name(const char *dev, char **name)
{
    _cleanup_(dm_task_destroyp) struct dm_task *dmt = NULL;
    int r;
    if (!strchr(dev, '/')) {
        r = new_task(DM_DEVICE_INFO, dev, &dmt);
        if (r < 0)
            return r;
    } else {
        struct stat st;
        if (stat(dev, &st) < 0)
            return lsm_error_errno(-errno, "no device %s", dev);
        if (!S_ISBLK(st.st_mode))
            return lsm_error(-EINVAL, "%s is not a block device", dev);
        if (!dm_is_dm_major(major(st.st_rdev)))
            return lsm_error(-EINVAL, "%s is not a device-mapper device: put a dm linear "
                             "device over it to mirror it", dev);
        r = new_task(DM_DEVICE_INFO, NULL, &dmt);
        if (r < 0)
            return r;
        if (!dm_task_set_major_minor(dmt, (int)major(st.st_rdev), (int)minor(st.st_rdev), 0))
            return lsm_error(-EINVAL, "cannot look up %s by device number", dev);
    }
    struct dm_info info;
    if (run_task(dmt) < 0 || !dm_task_get_info(dmt, &info))
        return task_error(dmt, "cannot query device-mapper device %s", dev);
    if (!info.exists)
        return lsm_error(-ENOENT, "no device-mapper device '%s'", dev);
    const char *n = dm_task_get_name(dmt);
    if (!n || !*n)
        return lsm_error(-EIO, "device-mapper gave no name for %s", dev);
    *name = strdup(n);
    if (!*name)
        return lsm_error_errno(-ENOMEM, "cannot open %s", dev);
    return 0;
}

static int dmm_open(struct lsm_mirror *m, const struct lsm_mirror_target *t)
{
    if (!t->disk || !*t->disk)
        return lsm_error(-EINVAL, "the dm backend needs a DEVICE");
    if (t->domain)
        return lsm_error(-EINVAL, "the dm backend takes a DEVICE, not a domain");
    global_init();

    _cleanup_free_ char *name = NULL;
    int r = resolve_name(t->disk, &name);
    if (r < 0)
        return r;
    struct table tab;
    r = read_table(name, &tab);
    if (r < 0)
        return r;

    struct dm_mirror *d = calloc(1, sizeof *d);
    if (!d)
        return lsm_error_errno(-ENOMEM, "cannot open %s", t->disk);
    d->name = LSM_STEAL(name);
    m->priv = d;
    m->what = d->name;
    return 0;
}

/* ---- table swaps ---- */

static int clear_inactive(const char *name)
{
    _cleanup_(dm_task_destroyp) struct dm_task *dmt = NULL;
    if (new_task(DM_DEVICE_CLEAR, name, &dmt) < 0)
        return -1;
    return run_task(dmt);
}

static int resume(const char *name, struct dm_task **failed)
{
    struct dm_task *dmt;
    int r = new_task(DM_DEVICE_RESUME, name, &dmt);
    if (r < 0)
        return r;
    /* We never create devices: no /dev node work on resume. */
    dm_task_set_add_node(dmt, DM_ADD_NODE_ON_CREATE);
    r = run_task(dmt);
    if (r < 0 && failed) {
        *failed = dmt;
        return r;
    }
    dm_task_destroy(dmt);
    return r;
}

/* Called while the device is suspended with the new table loaded but not
 * live: a last check that may refuse the swap (the old table is resumed). */
typedef int (*swap_check_fn)(const char *name);

/* Replace the live table of NAME by one target TYPE PARAMS of len sectors.
 * noflush: suspend without flushing (see the callers).  `what` names the
 * table in messages ("mirror", "linear"). */
static int swap_table(const char *name, uint64_t len, const char *type, const char *params,
                      bool noflush, swap_check_fn check, const char *what)
{
    _cleanup_(dm_task_destroyp) struct dm_task *load = NULL;
    int r = new_task(DM_DEVICE_RELOAD, name, &load);
    if (r < 0)
        return r;
    if (!dm_task_add_target(load, 0, len, type, params))
        return lsm_error(-ENOMEM, "cannot build the %s table for %s", what, name);
    if (run_task(load) < 0) {
        /* The kernel's reason for a refused table goes to its log only. */
        if (dm_task_get_errno(load) == EINVAL)
            return lsm_error(-EINVAL, "cannot load the %s table '%s %s' on %s: %s (the "
                             "kernel log says why)", what, type, params, name,
                             strerror(EINVAL));
        return task_error(load, "cannot load the %s table on %s", what, name);
    }

    _cleanup_(dm_task_destroyp) struct dm_task *susp = NULL;
    r = new_task(DM_DEVICE_SUSPEND, name, &susp);
    if (r < 0) {
        clear_inactive(name);
        return r;
    }
    if (noflush)
        dm_task_no_flush(susp);
    if (run_task(susp) < 0) {
        r = task_error(susp, "cannot suspend %s to switch it to the %s table", name, what);
        clear_inactive(name);
        /* A failed suspend may have left it half-way: make sure it runs. */
        resume(name, NULL);
        return r;
    }

    if (check) {
        r = check(name);
        if (r < 0) {
            if (clear_inactive(name) < 0 || resume(name, NULL) < 0)
                lsm_error_prefix("%s stays SUSPENDED (dmsetup resume %s lets its I/O go on)",
                                 name, name);
            return r;
        }
    }

    _cleanup_(dm_task_destroyp) struct dm_task *res = NULL;
    if (resume(name, &res) < 0) {
        int err = res ? dm_task_get_errno(res) : 0;
        /* The kernel keeps the old table when the swap fails: drop the new
         * one and resume the old. */
        bool back = clear_inactive(name) == 0 && resume(name, NULL) == 0;
        return lsm_error_errno(err > 0 ? -err : -EIO, "cannot resume %s with the %s table "
                               "(%s%s%s)", name, what,
                               back ? "it runs on its previous table"
                                    : "it stays SUSPENDED: dmsetup resume ",
                               back ? "" : name, back ? "" : " lets its I/O go on");
    }
    return 0;
}

/* ---- status ---- */

struct mirror_state {
    unsigned legs;
    uint64_t in_sync, total;   /* regions */
    char health[8];            /* one character per leg */
};

static const char *health_name(char c)
{
    switch (c) {
    case 'A': return "alive";
    case 'D': return "dead (a write failed)";
    case 'S': return "failed to synchronise";
    case 'R': return "failed a read";
    case 'F': return "failed a flush";
    case 'U': return "failed (unclassified error)";
    }
    return "in an unknown state";
}

/* Parse the mirror's status line: "2 SRC DST IN_SYNC/TOTAL 1 HEALTH LOG...".
 * Returns 1 if the live target is a mirror, 0 if not. */
static int read_mirror_state(const char *name, struct mirror_state *ms)
{
    _cleanup_(dm_task_destroyp) struct dm_task *dmt = NULL;
    int r = new_task(DM_DEVICE_STATUS, name, &dmt);
    if (r < 0)
        return r;
    if (run_task(dmt) < 0)
        return task_error(dmt, "cannot read the status of %s", name);
    uint64_t start, length;
    char *type = NULL, *params = NULL;
    void *next = dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
    if (!type || strcmp(type, "mirror") || next)
        return 0;

    _cleanup_free_ char *copy = strdup(params ? params : "");
    if (!copy)
        return lsm_error_errno(-ENOMEM, "cannot read the status of %s", name);
    char *w[16];
    size_t n = split(copy, w, ARRAY_SIZE(w));
    uint64_t legs;
    memset(ms, 0, sizeof *ms);
    if (n < 1 || parse_u64(w[0], &legs) < 0 || legs < 1 || legs >= sizeof ms->health ||
        n < legs + 4)
        goto bad;
    ms->legs = (unsigned)legs;
    char *counts = w[1 + legs], *slash = strchr(counts, '/');
    if (!slash)
        goto bad;
    *slash = '\0';
    if (parse_u64(counts, &ms->in_sync) < 0 || parse_u64(slash + 1, &ms->total) < 0 ||
        ms->in_sync > ms->total || strcmp(w[2 + legs], "1") || strlen(w[3 + legs]) != legs)
        goto bad;
    memcpy(ms->health, w[3 + legs], legs);
    return 1;
bad:
    return lsm_error(-EIO, "cannot parse the mirror status of %s: '%s'", name,
                     params ? params : "");
}

/* Every leg alive?  If not, records a message naming the first bad one. */
static int check_health(const char *name, const struct mirror_state *ms,
                        const struct table *t)
{
    for (unsigned i = 0; i < ms->legs; i++) {
        if (ms->health[i] == 'A')
            continue;
        _cleanup_free_ char *leg = NULL;
        if (t && t->kind == TABLE_MIRROR)
            leg = devnum_path(i == 0 ? t->src : t->dst);
        return lsm_error(-EIO, "%s leg %s of the mirror on %s is %s (%c)",
                         i == 0 ? "source" : "destination", leg ? leg : "?", name,
                         health_name(ms->health[i]), ms->health[i]);
    }
    return 0;
}

static int dmm_status(struct lsm_mirror *m, struct lsm_mirror_status *st)
{
    struct dm_mirror *d = m->priv;
    struct table t;
    int r = read_table(d->name, &t);
    if (r < 0)
        return r;
    memset(st, 0, sizeof *st);
    if (t.kind != TABLE_MIRROR) {
        st->phase = LSM_MIRROR_NONE;
        return 0;
    }
    struct mirror_state ms;
    r = read_mirror_state(d->name, &ms);
    if (r < 0)
        return r;
    if (r == 0) {              /* swapped between the two reads */
        st->phase = LSM_MIRROR_NONE;
        return 0;
    }
    st->end = t.len * SECTOR;
    uint64_t region_bytes = (uint64_t)t.region * SECTOR;
    st->cur = ms.in_sync == ms.total ? st->end : MIN(ms.in_sync * region_bytes, st->end);
    if (ms.legs != 2) {
        lsm_error(-EIO, "the mirror on %s has %u legs, not 2", d->name, ms.legs);
        st->phase = LSM_MIRROR_FAILED;
        return 0;
    }
    if (check_health(d->name, &ms, &t) < 0) {
        /* The message naming the leg stays in lsm_last_error(). */
        st->phase = LSM_MIRROR_FAILED;
        return 0;
    }
    st->phase = ms.in_sync == ms.total ? LSM_MIRROR_READY : LSM_MIRROR_COPYING;
    return 0;
}

/* ---- start ---- */

static int dmm_start(struct lsm_mirror *m, const struct lsm_mirror_start_opts *o)
{
    struct dm_mirror *d = m->priv;
    char b1[32], b2[32];

    if (!o->dst)
        return lsm_error(-EINVAL, "no destination to mirror %s to", d->name);
    if (o->dst_fmt != LSM_FMT_AUTO && o->dst_fmt != LSM_FMT_RAW)
        return lsm_error(-EINVAL, "the dm backend writes raw block devices: --format=%s does "
                         "not apply", lsm_format_name(o->dst_fmt));
    if (o->bandwidth)
        return lsm_error(-ENOTSUP, "dm-mirror has no per-device bandwidth limit (--bandwidth); "
                         "the dm_mirror module's raid1_resync_throttle is system-wide");
    if (o->buf_size)
        return lsm_error(-ENOTSUP, "dm-mirror copies one region at a time: --buf-size does "
                         "not apply (choose --granularity)");
    /* o->sync_writes: dm-mirror always completes a write only once every
     * leg has it; nothing to ask for. */

    struct table t;
    int r = read_table(d->name, &t);
    if (r < 0)
        return r;
    if (t.kind == TABLE_MIRROR) {
        _cleanup_free_ char *cur = devnum_path(t.dst);
        return lsm_error(-EBUSY, "%s is already being mirrored to %s: finish or abort it "
                         "first", d->name, cur ? cur : "another device");
    }
    struct dm_info info;
    r = get_info(d->name, &info);
    if (r < 0)
        return r;
    if (info.suspended)
        return lsm_error(-EBUSY, "%s is suspended (another tool is changing its table?); "
                         "leave it until it is resumed", d->name);
    if (info.read_only)
        return lsm_error(-EINVAL, "%s is read-only: there are no writes to mirror; copy it "
                         "instead", d->name);

    /* The destination: a block device, big enough, not a leg already, and
     * not in use (O_EXCL fails on a mounted or claimed device). */
    struct stat st;
    if (stat(o->dst, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat destination %s", o->dst);
    if (!S_ISBLK(st.st_mode))
        return lsm_error(-EINVAL, "destination %s is not a block device: the dm backend "
                         "mirrors onto block devices", o->dst);
    if (st.st_rdev == t.src)
        return lsm_error(-EINVAL, "destination %s is the device %s already reads and writes",
                         o->dst, d->name);
    if (st.st_rdev == makedev(info.major, info.minor))
        return lsm_error(-EINVAL, "destination %s is %s itself", o->dst, d->name);
    {
        _cleanup_close_ int fd = open(o->dst, O_RDONLY | O_EXCL | O_CLOEXEC);
        if (fd < 0 && errno == EBUSY)
            return lsm_error(-EBUSY, "destination %s is in use (mounted, or held by another "
                             "device)", o->dst);
        if (fd < 0)
            return lsm_error_errno(-errno, "cannot open destination %s", o->dst);
        uint64_t size;
        if (ioctl(fd, BLKGETSIZE64, &size) < 0)
            return lsm_error_errno(-errno, "cannot get the size of %s", o->dst);
        if (size / SECTOR < t.len)
            return lsm_error(-ENOSPC, "destination %s is too small: %s, %s needs %s", o->dst,
                             lsm_format_size(size, b1, sizeof b1), d->name,
                             lsm_format_size(t.len * SECTOR, b2, sizeof b2));
    }

    uint64_t region = DEFAULT_REGION_SECTORS;
    if (o->granularity) {
        region = o->granularity / SECTOR;
        if (!is_pow2(o->granularity) || region < MIN_REGION_SECTORS || region > UINT32_MAX)
            return lsm_error(-EINVAL, "the dm backend needs a power-of-two region size of "
                             "at least %u bytes, not %" PRIu64, MIN_REGION_SECTORS * SECTOR,
                             o->granularity);
        if (region > t.len)
            return lsm_error(-EINVAL, "region size %s is larger than %s (%s)",
                             lsm_format_size(o->granularity, b1, sizeof b1), d->name,
                             lsm_format_size(t.len * SECTOR, b2, sizeof b2));
    }
    /* The kernel wants region <= device length: small devices get the
     * largest power of two that fits. */
    while (region > t.len && region > MIN_REGION_SECTORS)
        region /= 2;
    if (region > t.len)
        return lsm_error(-EINVAL, "%s is too small to mirror (%" PRIu64 " sectors)", d->name,
                         t.len);

    char params[160];
    snprintf(params, sizeof params, "core 1 %" PRIu64 " 2 %u:%u %" PRIu64 " %u:%u 0 1 "
             "handle_errors", region, major(t.src), minor(t.src), t.src_off,
             major(st.st_rdev), minor(st.st_rdev));
    /* linear -> mirror: a plain (flushing) suspend; linear holds nothing. */
    return swap_table(d->name, t.len, "mirror", params, false, NULL, "mirror");
}

/* ---- pivot / cancel ---- */

/* While suspended, all writes have ended: the mirror must be complete and
 * healthy, or the destination misses data. */
static int check_in_sync(const char *name)
{
    struct table t;
    int r = read_table(name, &t);
    if (r < 0)
        return r;
    struct mirror_state ms;
    r = read_mirror_state(name, &ms);
    if (r < 0)
        return r;
    if (r == 0 || t.kind != TABLE_MIRROR)
        return lsm_error(-EIO, "%s is no longer mirrored: not pivoting", name);
    r = check_health(name, &ms, &t);
    if (r < 0) {
        lsm_error_prefix("not pivoting");
        return r;
    }
    if (ms.in_sync != ms.total)
        return lsm_error(-EAGAIN, "%s fell out of sync (%" PRIu64 " of %" PRIu64 " regions): "
                         "not pivoting", name, ms.in_sync, ms.total);
    return 0;
}

/* Mirror -> linear swaps suspend without flushing: with handle_errors,
 * dm-mirror holds the writes that failed on a leg until its table is
 * replaced, and a flushing suspend would fail them with EIO although the
 * other leg has them.  Without the flush they are requeued to the new
 * table. */
/* The live mirror table of d, before leaving it ("pivot to", "cancel"). */
static int live_mirror_table(struct dm_mirror *d, const char *what, struct table *t)
{
    int r = read_table(d->name, t);
    if (r < 0)
        return r;
    if (t->kind != TABLE_MIRROR)
        return lsm_error(-ENOENT, "%s has no mirror to %s", d->name, what);
    return check_live(d->name);
}

static int dmm_pivot(struct lsm_mirror *m)
{
    struct dm_mirror *d = m->priv;
    struct table t;
    int r = live_mirror_table(d, "pivot to", &t);
    if (r < 0)
        return r;
    char params[64];
    snprintf(params, sizeof params, "%u:%u 0", major(t.dst), minor(t.dst));
    return swap_table(d->name, t.len, "linear", params, true, check_in_sync,
                      "linear (destination)");
}

static int dmm_cancel(struct lsm_mirror *m)
{
    struct dm_mirror *d = m->priv;
    struct table t;
    int r = live_mirror_table(d, "cancel", &t);
    if (r < 0)
        return r;
    char params[64];
    snprintf(params, sizeof params, "%u:%u %" PRIu64, major(t.src), minor(t.src), t.src_off);
    return swap_table(d->name, t.len, "linear", params, true, NULL, "original linear");
}

static int dmm_paths(struct lsm_mirror *m, char **source, char **mirror)
{
    struct dm_mirror *d = m->priv;
    struct table t;
    int r = read_table(d->name, &t);
    if (r < 0)
        return r;
    _cleanup_free_ char *src = devnum_path(t.src);
    _cleanup_free_ char *dst = t.kind == TABLE_MIRROR ? devnum_path(t.dst) : NULL;
    if (!src || (t.kind == TABLE_MIRROR && !dst))
        return lsm_error_errno(-ENOMEM, "cannot name the legs of %s", d->name);
    if (source)
        *source = LSM_STEAL(src);
    if (mirror)
        *mirror = LSM_STEAL(dst);
    return 0;
}

const struct lsm_mirror_ops lsm_mirror_dm_ops = {
    .name = "dm",
    .open = dmm_open,
    .close = dmm_close,
    .start = dmm_start,
    .status = dmm_status,
    .wait = NULL,          /* polled: see docs/replicate-dm.md */
    .pivot = dmm_pivot,
    .cancel = dmm_cancel,
    .paths = dmm_paths,
};

#endif /* HAVE_DEVMAPPER */
