/* The libvirt mirroring backend: virDomainBlockCopy on a running domain's
 * disk, shallow onto a prepared destination whose backing chain already
 * holds the copied lower layers.
 *
 * READY is learned two ways.  VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 events arrive
 * through libvirt's default event loop, which runs only while we wait (the
 * wait op runs virEventRunDefaultImpl with a timer bounding it).  Events are
 * not replayed to a process that connects later (a `status` run minutes after
 * `start`), so status also polls: virDomainGetBlockJobInfo says whether a
 * copy job runs and gives progress, and the live domain XML says
 * <mirror ... ready='yes'> once libvirt's job state is ready (which is what
 * its pivot checks).  cur == end is no proof of that (see virt_status).
 */
#include "config.h"

#ifdef HAVE_LIBVIRT

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"
#include "domxml.h"
#include "error.h"
#include "image.h"
#include "mirror.h"
#include "util.h"

LSM_DEFINE_CLEANUP(virConnectPtr, virConnectClose)
LSM_DEFINE_CLEANUP(virDomainPtr, virDomainFree)

#define DEFAULT_URI "qemu:///system"

struct virt_mirror {
    virConnectPtr conn;
    virDomainPtr dom;
    char *uri;
    char *domain;
    char *disk;
    char *what;                    /* "vda of domain d1" */
    int cb_id;                     /* block job event callback, or -1 */
    /* Last block-job event for our disk: -1 none, else a
     * virConnectDomainEventBlockJobStatus value. */
    int event;
    unsigned nevents;              /* block-job events seen for our disk */
};

/* What the live domain XML says about one disk. */
struct disk_info {
    char *type;            /* file, block, network, ... */
    char *source;          /* <source file=|dev=> of the active layer */
    bool has_backing;      /* <backingStore> with a <source> */
    bool has_mirror;
    char *mirror_source;   /* destination of the running copy */
    char *mirror_ready;    /* "yes", "pivot", "abort" or NULL */
};

static void disk_info_free(struct disk_info *di)
{
    free(di->type);
    free(di->source);
    free(di->mirror_source);
    free(di->mirror_ready);
    memset(di, 0, sizeof *di);
}

static const char *virt_msg(void)
{
    const char *msg = virGetLastErrorMessage();
    return msg && *msg ? msg : "unknown libvirt error";
}

/* libvirt prints every error on stderr unless told otherwise; we report
 * them through lsm_error() instead. */
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
    /* Must be registered before the connection is opened for events to be
     * delivered on it. */
    if (virEventRegisterDefaultImpl() < 0)
        return lsm_error(-EIO, "cannot start libvirt's event loop: %s", virt_msg());
    done = true;
    return 0;
}

/* ---- domain XML ---- */

/* Find disk `target` in the live XML.  -ENOENT (with the list of disks in
 * the message) if there is none. */
static int get_disk(struct virt_mirror *vm, const char *target, struct disk_info *di)
{
    memset(di, 0, sizeof *di);
    _cleanup_free_ char *xml = virDomainGetXMLDesc(vm->dom, 0);
    if (!xml)
        return lsm_error(-EIO, "cannot read the XML of domain '%s': %s", vm->domain,
                         virt_msg());
    struct lsm_domxml_disk *disks;
    unsigned n;
    int r = lsm_domxml_disks(xml, strlen(xml), vm->domain, &disks, &n);
    if (r < 0)
        return r;
    const struct lsm_domxml_disk *d = lsm_domxml_find(disks, n, target);
    if (d) {
        /* the strings move to di */
        struct lsm_domxml_disk *m = &disks[d - disks];
        di->type = m->type;
        di->source = m->src.path;
        di->has_backing = m->has_backing;
        di->has_mirror = m->has_mirror;
        di->mirror_source = m->mirror.path;
        di->mirror_ready = m->mirror_ready;
        m->type = m->src.path = m->mirror.path = m->mirror_ready = NULL;
        lsm_domxml_free(disks, n);
        return 0;
    }
    char names[256] = "";
    size_t used = 0;
    for (unsigned i = 0; i < n && used < sizeof names; i++) {
        int k = snprintf(names + used, sizeof names - used, "%s%s", used ? ", " : "",
                         disks[i].target);
        if (k > 0)
            used += (size_t)k;
    }
    lsm_domxml_free(disks, n);
    return lsm_error(-ENOENT, "domain '%s' has no disk '%s' (its disks: %s)", vm->domain,
                     target, used ? names : "none");
}

/* ---- events ---- */

static void on_block_job(virConnectPtr conn, virDomainPtr dom, const char *disk, int type,
                         int status, void *opaque)
{
    struct virt_mirror *vm = opaque;
    (void)conn;
    (void)dom;
    if (!disk || strcmp(disk, vm->disk) || type != VIR_DOMAIN_BLOCK_JOB_TYPE_COPY)
        return;
    vm->event = status;
    vm->nevents++;
}

static void on_timer(int timer, void *opaque)
{
    (void)timer;
    (void)opaque;
}

/* Run libvirt's event loop once: until an event (or any I/O on the
 * connection) or timeout_ms.  Block-job events are dispatched from here. */
static int run_events(int timeout_ms)
{
    int id = virEventAddTimeout(timeout_ms, on_timer, NULL, NULL);
    if (id < 0)
        return lsm_error(-EIO, "cannot add a timer to libvirt's event loop: %s", virt_msg());
    int r = virEventRunDefaultImpl();
    virEventRemoveTimeout(id);
    if (r < 0)
        return lsm_error(-EIO, "libvirt's event loop failed: %s", virt_msg());
    return 0;
}

/* How long one wait lasts when events work: polling is only the fallback
 * then.  Without an event callback we poll at the caller's pace. */
#define EVENT_POLL_MS 2000
#define NO_EVENT_POLL_MS 500
/* libvirt's loop may return at once without anything for us: seen here, a
 * descriptor it watches stays readable and its poll timeout is 0.  Pump it
 * no faster than this then, so waiting costs no CPU and no RPCs. */
#define PUMP_MS 20

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int virt_wait(struct lsm_mirror *m, int timeout_ms)
{
    struct virt_mirror *vm = m->priv;
    int limit = vm->cb_id >= 0 ? EVENT_POLL_MS : NO_EVENT_POLL_MS;
    if (timeout_ms > limit)
        timeout_ms = limit;
    uint64_t start = lsm_now_ns();
    uint64_t end = start + (uint64_t)timeout_ms * 1000000ULL;
    unsigned seen = vm->nevents;
    for (;;) {
        uint64_t t0 = lsm_now_ns();
        if (t0 >= end)
            return 0;
        int r = run_events((int)((end - t0) / 1000000ULL) + 1);
        if (r < 0)
            return r;
        if (vm->nevents != seen)
            return 0;
        uint64_t t1 = lsm_now_ns();
        if (t1 - t0 < PUMP_MS * 1000000ULL / 2 && t1 < end)
            sleep_ms(PUMP_MS);
    }
}

/* ---- ops ---- */

static void virt_close(struct lsm_mirror *m)
{
    struct virt_mirror *vm = m->priv;
    if (!vm)
        return;
    if (vm->cb_id >= 0)
        virConnectDomainEventDeregisterAny(vm->conn, vm->cb_id);
    if (vm->dom)
        virDomainFree(vm->dom);
    if (vm->conn)
        virConnectClose(vm->conn);
    free(vm->uri);
    free(vm->domain);
    free(vm->disk);
    free(vm->what);
    free(vm);
    m->priv = NULL;
}

static int connect_error(const char *uri)
{
    virErrorPtr e = virGetLastError();
    /* A socket that is not there or refuses: the daemon is not running. */
    if (e && e->domain == VIR_FROM_RPC && e->code == VIR_ERR_SYSTEM_ERROR)
        return lsm_error(-ECONNREFUSED, "cannot connect to libvirt at %s: is libvirtd "
                         "running? (%s)", uri, virt_msg());
    return lsm_error(-ENOTCONN, "cannot connect to libvirt at %s: %s", uri, virt_msg());
}

static virDomainPtr lookup_domain(virConnectPtr conn, const char *name)
{
    virDomainPtr d = virDomainLookupByName(conn, name);
    if (!d && strlen(name) == 36) {
        virErrorPtr e = virGetLastError();
        if (e && e->code == VIR_ERR_NO_DOMAIN)
            d = virDomainLookupByUUIDString(conn, name);
    }
    return d;
}

static int virt_open(struct lsm_mirror *m, const struct lsm_mirror_target *t)
{
    if (!t->domain || !t->disk)
        return lsm_error(-EINVAL, "the libvirt backend needs a domain and a disk target");
    int r = global_init();
    if (r < 0)
        return r;
    const char *uri = t->uri ? t->uri : DEFAULT_URI;

    _cleanup_(virConnectClosep) virConnectPtr conn = virConnectOpen(uri);
    if (!conn)
        return connect_error(uri);
    _cleanup_(virDomainFreep) virDomainPtr dom = lookup_domain(conn, t->domain);
    if (!dom) {
        virErrorPtr e = virGetLastError();
        if (e && e->code == VIR_ERR_NO_DOMAIN)
            return lsm_error(-ENOENT, "no domain '%s' at %s", t->domain, uri);
        return lsm_error(-EIO, "cannot look up domain '%s' at %s: %s", t->domain, uri,
                         virt_msg());
    }
    int active = virDomainIsActive(dom);
    if (active < 0)
        return lsm_error(-EIO, "cannot query domain '%s': %s", t->domain, virt_msg());
    if (!active)
        return lsm_error(-EINVAL, "domain '%s' is not running: only a running domain's disk "
                         "can be mirrored", t->domain);

    struct virt_mirror *vm = calloc(1, sizeof *vm);
    if (!vm)
        return lsm_error_errno(-ENOMEM, "cannot open domain '%s'", t->domain);
    vm->cb_id = -1;
    vm->event = -1;
    m->priv = vm;
    vm->uri = strdup(uri);
    vm->domain = strdup(t->domain);
    vm->disk = strdup(t->disk);
    if (asprintf(&vm->what, "%s of domain %s", t->disk, t->domain) < 0)
        vm->what = NULL;
    if (!vm->uri || !vm->domain || !vm->disk || !vm->what) {
        virt_close(m);
        return lsm_error_errno(-ENOMEM, "cannot open domain '%s'", t->domain);
    }
    vm->conn = LSM_STEAL(conn);
    vm->dom = LSM_STEAL(dom);
    m->what = vm->what;

    struct disk_info di;
    r = get_disk(vm, vm->disk, &di);
    disk_info_free(&di);
    if (r < 0) {
        virt_close(m);
        return r;
    }
    /* Without events we still have polling: a failure here is not fatal. */
    if (t->no_events)
        return 0;
    vm->cb_id = virConnectDomainEventRegisterAny(vm->conn, vm->dom,
                                                 VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                                                 VIR_DOMAIN_EVENT_CALLBACK(on_block_job),
                                                 vm, NULL);
    return 0;
}

static const char *job_type_name(int type)
{
    switch (type) {
    case VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: return "pull";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: return "copy";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: return "commit";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: return "active commit";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP: return "backup";
    }
    return "unknown";
}

static int job_info(struct virt_mirror *vm, virDomainBlockJobInfo *info)
{
    memset(info, 0, sizeof *info);
    int r = virDomainGetBlockJobInfo(vm->dom, vm->disk, info, 0);
    if (r < 0)
        return lsm_error(-EIO, "cannot query the block job of %s: %s", vm->what, virt_msg());
    return r;
}

/* The guest-visible size and the format of a prepared destination. */
static int probe_dst(const char *dst, bool is_blk, enum lsm_format *fmt, uint64_t *vsize,
                     bool *has_backing)
{
    _cleanup_close_ int fd = open(dst, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open destination %s", dst);
    int r = lsm_probe_format(fd, fmt);
    if (r < 0) {
        lsm_error_prefix("destination %s", dst);
        return r;
    }
    *has_backing = false;
    if (*fmt == LSM_FMT_QCOW2) {
        uint8_t h[32];
        ssize_t n = pread(fd, h, sizeof h, 0);
        if (n < 0)
            return lsm_error_errno(-errno, "cannot read the header of %s", dst);
        if (n < (ssize_t)sizeof h)
            return lsm_error(-EINVAL, "destination %s: truncated qcow2 header", dst);
        *has_backing = be64_get(h + 8) != 0;
        *vsize = be64_get(h + 24);
        return 0;
    }
    if (is_blk) {
        uint64_t sz;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
            return lsm_error_errno(-errno, "cannot get the size of %s", dst);
        *vsize = sz;
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", dst);
    *vsize = (uint64_t)st.st_size;
    return 0;
}

/* Escape for an XML attribute value in single quotes. */
static char *xml_escape(const char *s)
{
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += strchr("&<>'\"", *p) ? 6 : 1;
    char *out = malloc(n), *o = out;
    if (!out)
        return NULL;
    for (const char *p = s; *p; p++) {
        const char *e = NULL;
        switch (*p) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '\'': e = "&apos;"; break;
        case '"': e = "&quot;"; break;
        }
        if (e) {
            memcpy(o, e, strlen(e));
            o += strlen(e);
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static int virt_start(struct lsm_mirror *m, const struct lsm_mirror_start_opts *o)
{
    struct virt_mirror *vm = m->priv;
    char b1[32], b2[32];

    /* 1. Nothing running on the disk already. */
    virDomainBlockJobInfo info;
    int r = job_info(vm, &info);
    if (r < 0)
        return r;
    if (r > 0) {
        struct lsm_mirror_status st = { .cur = info.cur, .end = info.end };
        return lsm_error(-EBUSY, "%s already has a block job (%s, %u%% done): finish or "
                         "abort it first", vm->what, job_type_name(info.type),
                         lsm_mirror_percent(&st));
    }
    struct disk_info di;
    r = get_disk(vm, vm->disk, &di);
    if (r < 0)
        return r;
    bool src_backing = di.has_backing;
    bool busy = di.has_mirror;
    _cleanup_free_ char *src = LSM_STEAL(di.source);
    disk_info_free(&di);
    if (busy)
        return lsm_error(-EBUSY, "%s is already being mirrored: finish or abort it first",
                         vm->what);

    /* 2. The destination: there, a file or a device, not the source. */
    struct stat st;
    if (stat(o->dst, &st) < 0) {
        if (errno == ENOENT)
            return lsm_error(-ENOENT, "destination %s does not exist: prepare it first "
                             "(qemu-img create -f qcow2 -b BACKING -F FMT %s SIZE)", o->dst,
                             o->dst);
        return lsm_error_errno(-errno, "cannot stat destination %s", o->dst);
    }
    bool is_blk = S_ISBLK(st.st_mode);
    if (!is_blk && !S_ISREG(st.st_mode))
        return lsm_error(-EINVAL, "destination %s is neither a regular file nor a block "
                         "device", o->dst);
    if (src && lsm_same_file(src, o->dst))
        return lsm_error(-EINVAL, "destination %s is the source of %s", o->dst, vm->what);

    /* 3. Its format and guest-visible size match. */
    enum lsm_format fmt = LSM_FMT_RAW;
    uint64_t dst_size = 0;
    bool dst_backing = false;
    r = probe_dst(o->dst, is_blk, &fmt, &dst_size, &dst_backing);
    if (r < 0)
        return r;
    if (o->dst_fmt != LSM_FMT_AUTO && o->dst_fmt != fmt)
        return lsm_error(-EINVAL, "destination %s is %s, not %s", o->dst,
                         fmt == LSM_FMT_QCOW2 ? "a qcow2 image" : "raw (no qcow2 header)",
                         lsm_format_name(o->dst_fmt));
    virDomainBlockInfo bi;
    if (virDomainGetBlockInfo(vm->dom, vm->disk, &bi, 0) < 0)
        return lsm_error(-EIO, "cannot get the size of %s: %s", vm->what, virt_msg());
    if (dst_size != bi.capacity)
        return lsm_error(-EINVAL, "destination %s has a virtual size of %s (%" PRIu64
                         " bytes) but %s has %s (%llu bytes)", o->dst,
                         lsm_format_size(dst_size, b1, sizeof b1), dst_size, vm->what,
                         lsm_format_size(bi.capacity, b2, sizeof b2), bi.capacity);
    /* A shallow copy writes only the top layer: a destination without the
     * lower layers beneath would lose them. */
    if (src_backing && fmt == LSM_FMT_QCOW2 && !dst_backing)
        return lsm_error(-EINVAL, "destination %s has no backing file but %s has a backing "
                         "chain: a shallow copy would lose it (create it with -b)", o->dst,
                         vm->what);
    if (src_backing && fmt == LSM_FMT_RAW)
        return lsm_error(-EINVAL, "destination %s is raw but %s has a backing chain: a shallow "
                         "copy needs a qcow2 destination backed by the copied chain", o->dst,
                         vm->what);

    /* 4. The destination disk and the tunables. */
    _cleanup_free_ char *esc = xml_escape(o->dst);
    if (!esc)
        return lsm_error_errno(-ENOMEM, "cannot start the copy of %s", vm->what);
    _cleanup_free_ char *xml = NULL;
    if (asprintf(&xml, "<disk type='%s'><source %s='%s'/><driver type='%s'/></disk>",
                 is_blk ? "block" : "file", is_blk ? "dev" : "file", esc,
                 lsm_format_name(fmt)) < 0)
        return lsm_error_errno(-ENOMEM, "cannot start the copy of %s", vm->what);

    virTypedParameterPtr params = NULL;
    int nparams = 0, maxparams = 0;
    r = 0;
    if (o->bandwidth &&
        virTypedParamsAddULLong(&params, &nparams, &maxparams, VIR_DOMAIN_BLOCK_COPY_BANDWIDTH,
                                o->bandwidth) < 0)
        r = -ENOMEM;
    if (!r && o->granularity) {
        if (o->granularity > UINT_MAX)
            r = lsm_error(-EINVAL, "granularity %" PRIu64 " is too large", o->granularity);
        else if (virTypedParamsAddUInt(&params, &nparams, &maxparams,
                                       VIR_DOMAIN_BLOCK_COPY_GRANULARITY,
                                       (unsigned)o->granularity) < 0)
            r = -ENOMEM;
    }
    if (!r && o->buf_size &&
        virTypedParamsAddULLong(&params, &nparams, &maxparams, VIR_DOMAIN_BLOCK_COPY_BUF_SIZE,
                                o->buf_size) < 0)
        r = -ENOMEM;
    if (r == -ENOMEM)
        r = lsm_error(-ENOMEM, "cannot set the copy parameters: %s", virt_msg());

    unsigned flags = VIR_DOMAIN_BLOCK_COPY_SHALLOW | VIR_DOMAIN_BLOCK_COPY_REUSE_EXT |
                     VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
    if (o->sync_writes)
        flags |= VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES;
    vm->event = -1;
    if (!r && virDomainBlockCopy(vm->dom, vm->disk, xml, params, nparams, flags) < 0)
        r = lsm_error(-EIO, "cannot start copying %s to %s: %s", vm->what, o->dst, virt_msg());
    virTypedParamsFree(params, nparams);
    return r;
}

static int virt_status(struct lsm_mirror *m, struct lsm_mirror_status *st)
{
    struct virt_mirror *vm = m->priv;
    virDomainBlockJobInfo info;
    int r = job_info(vm, &info);
    if (r < 0)
        return r;
    if (r == 0) {
        /* The job is gone: an event seen while we waited says why. */
        st->phase = vm->event == VIR_DOMAIN_BLOCK_JOB_FAILED ? LSM_MIRROR_FAILED
                                                              : LSM_MIRROR_NONE;
        st->from_event = vm->event == VIR_DOMAIN_BLOCK_JOB_FAILED;
        return 0;
    }
    if (info.type != VIR_DOMAIN_BLOCK_JOB_TYPE_COPY)
        return lsm_error(-EBUSY, "%s runs a %s job, not a copy", vm->what,
                         job_type_name(info.type));
    st->cur = info.cur;
    st->end = info.end;
    /* Events that arrived during the calls above are queued by libvirt
     * until its loop runs: dispatch them before looking at vm->event. */
    if (vm->cb_id >= 0) {
        r = run_events(0);
        if (r < 0)
            return r;
    }
    if (vm->event == VIR_DOMAIN_BLOCK_JOB_READY) {
        st->phase = LSM_MIRROR_READY;
        st->from_event = true;
        return 0;
    }
    if (vm->event == VIR_DOMAIN_BLOCK_JOB_FAILED) {
        st->phase = LSM_MIRROR_FAILED;
        st->from_event = true;
        return 0;
    }
    struct disk_info di;
    r = get_disk(vm, vm->disk, &di);
    if (r < 0)
        return r;
    /* The job reports ready through <mirror ready='yes'>: that is libvirt's
     * own job state, the one its pivot checks.  cur == end follows QEMU's
     * ready flag, which libvirt's state catches up with only once it has
     * processed QEMU's event: in between a pivot is refused as "not ready"
     * (seen).  Only without a <mirror> element (not seen with a libvirt
     * that has BLOCK_JOB_2) do we fall back to cur == end. */
    if (di.has_mirror)
        st->phase = di.mirror_ready && !strcmp(di.mirror_ready, "yes") ? LSM_MIRROR_READY
                                                                       : LSM_MIRROR_COPYING;
    else
        st->phase = info.end > 0 && info.cur == info.end ? LSM_MIRROR_READY
                                                         : LSM_MIRROR_COPYING;
    disk_info_free(&di);
    /* The READY event may have come in with the reply that said ready. */
    if (st->phase == LSM_MIRROR_READY && vm->cb_id >= 0) {
        r = run_events(0);
        if (r < 0)
            return r;
        st->from_event = vm->event == VIR_DOMAIN_BLOCK_JOB_READY;
    }
    return 0;
}


static int virt_pivot(struct lsm_mirror *m)
{
    struct virt_mirror *vm = m->priv;
    /* Tests: be killed while libvirtd carries the pivot out (the state a
     * SIGKILL during the call leaves, reached every time). */
    const char *kill_env = getenv("LSM_TEST_PIVOT_KILL");
    bool die = kill_env && *kill_env == '1';
    unsigned flags = VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT | (die ? VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC : 0);
    if (virDomainBlockJobAbort(vm->dom, vm->disk, flags) < 0)
        return lsm_error(-EIO, "cannot pivot %s to its copy: %s", vm->what, virt_msg());
    if (die)
        raise(SIGKILL);
    return 0;
}

static int virt_cancel(struct lsm_mirror *m)
{
    struct virt_mirror *vm = m->priv;
    if (virDomainBlockJobAbort(vm->dom, vm->disk, 0) < 0)
        return lsm_error(-EIO, "cannot cancel the copy of %s: %s", vm->what, virt_msg());
    return 0;
}

static int virt_paths(struct lsm_mirror *m, char **source, char **mirror)
{
    struct virt_mirror *vm = m->priv;
    struct disk_info di;
    int r = get_disk(vm, vm->disk, &di);
    if (r < 0)
        return r;
    if (source)
        *source = LSM_STEAL(di.source);
    if (mirror)
        *mirror = LSM_STEAL(di.mirror_source);
    disk_info_free(&di);
    return 0;
}

/* libvirt marks a job it is pivoting or aborting with <mirror ready='pivot'>
 * or 'abort' until QEMU's job has ended and the disk's source is updated.
 * A client killed after asking does not stop it: libvirtd carries the call
 * out without it. */
static int virt_switching(struct lsm_mirror *m)
{
    struct virt_mirror *vm = m->priv;
    struct disk_info di;
    int r = get_disk(vm, vm->disk, &di);
    if (r < 0)
        return r;
    r = di.has_mirror && di.mirror_ready &&
        (!strcmp(di.mirror_ready, "pivot") || !strcmp(di.mirror_ready, "abort"));
    disk_info_free(&di);
    return r;
}

const struct lsm_mirror_ops lsm_mirror_libvirt_ops = {
    .name = "libvirt",
    .open = virt_open,
    .close = virt_close,
    .start = virt_start,
    .status = virt_status,
    .wait = virt_wait,
    .pivot = virt_pivot,
    .cancel = virt_cancel,
    .paths = virt_paths,
    .switching = virt_switching,
};

#endif /* HAVE_LIBVIRT */
