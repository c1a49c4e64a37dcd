/* migrate (migrate.h, docs/migrate.md): snapshot, clone-structure,
 * replicate, sync --type=INTERNAL and pivot of some disks of a running
 * domain, with its own journal, rollback before the commit point and
 * resume after a kill. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"
#include "checksum.h"
#include "cleanup.h"
#include "clone.h"
#include "config.h"
#include "error.h"
#include "extender.h"
#include "fileio.h"
#include "json-util.h"
#include "migrate.h"
#include "mirror.h"
#include "qcow2/qcow2-writer.h"
#include "sync.h"
#include "util.h"
#include "vm-snapshot.h"

#define JOURNAL_VERSION 1
#define DEFAULT_STALL_MS 30000
#define DEFAULT_READY_MS 600000
#define DEFAULT_PIVOT_MS 60000
#define POLL_MS 200
#define PRESIZE_MEASURE_MS 30000   /* the extender measuring the drives before pre-sizing */
#define REPORT_NS 1000000000ULL
#define MAX_DST 64

int lsm_migrate_sync_writes_parse(const char *s, enum lsm_migrate_sync_writes *out)
{
    if (!strcmp(s, "auto"))
        *out = LSM_MIGRATE_SW_AUTO;
    else if (!strcmp(s, "always"))
        *out = LSM_MIGRATE_SW_ALWAYS;
    else if (!strcmp(s, "never"))
        *out = LSM_MIGRATE_SW_NEVER;
    else
        return -EINVAL;
    return 0;
}

const char *lsm_migrate_outcome_name(enum lsm_migrate_outcome o)
{
    switch (o) {
    case LSM_MIGRATE_DONE: return "done";
    case LSM_MIGRATE_ROLLED_BACK: return "rolled-back";
    case LSM_MIGRATE_PARTIAL: return "partial";
    case LSM_MIGRATE_STOPPED: return "stopped";
    }
    return "unknown";
}

/* One disk being moved. */
struct mdisk {
    char disk[32];
    char *old_leaf;          /* the leaf before the snapshot */
    char *overlay;           /* the snapshot's overlay (this run names and creates it) */
    bool overlay_block;
    bool overlay_made;       /* journal: this run may have created it (the name is the run's) */
    unsigned ndst;
    char *dst[MAX_DST];      /* destination volumes, top first; dst[0] the mirror's target */
    bool dst_planned;        /* journal: none of dst[] existed when planned: ours to remove */
    bool synced, sync_writes, pivoted, snapshotted;
    unsigned restarts;
    struct lsm_mirror *m;
    struct lsm_job *job;
    struct lsm_mirror_status st;
    uint64_t best_remaining, best_ns;
    uint64_t sync_done, sync_total;
    char digest[LSM_BLKHASH_HEX_LEN];   /* verified: the internal layers' guest view */
};

struct mig {
    const struct lsm_migrate_opts *o;
    char *uri, *domain, *dst_domain, *journal;
    int lockfd;              /* STATE_DIR/DOMAIN.lock, flock'd while this run works */
    enum lsm_domain_kind dst_kind;
    enum lsm_migrate_sync_writes sync_writes;
    char run[48];
    const char *phase;
    unsigned n;
    struct mdisk d[LSM_MIGRATE_MAX_DISKS];
    struct lsm_extender *x;
    struct lsm_extend_policy policy;   /* the extender's, and the new leaves' sizes */
    /* counted on the extender's thread (atomics): extensions per disk and
     * side, pauses of the VM on an I/O error */
    unsigned extensions[LSM_MIGRATE_MAX_DISKS][2];
    unsigned pauses;
    bool cloned;             /* journal: the killed run's phase was past the clone */
    bool committed;
    uint64_t t0, last_report;
    unsigned removed;
    char left[256];          /* what a rollback could not remove */
};

static double elapsed(const struct mig *g)
{
    return (double)(lsm_now_ns() - g->t0) / 1e9;
}

static void report(struct mig *g, const char *fmt, ...) LSM_PRINTF(2, 3);
static void report(struct mig *g, const char *fmt, ...)
{
    if (!g->o->progress)
        return;
    char msg[768];
    struct lsm_migrate_progress p = { .phase = g->phase, .elapsed_s = elapsed(g), .ndisks = g->n };
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        p.message = msg;
    }
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        p.disk[i] = (struct lsm_migrate_disk_progress){
            .disk = d->disk, .mirror = lsm_mirror_phase_name(d->st.phase), .cur = d->st.cur,
            .end = d->st.end, .sync_writes = d->sync_writes, .synced = d->synced,
            .pivoted = d->pivoted,
        };
        p.sync_done += d->sync_done;
        p.sync_total += d->sync_total;
    }
    g->last_report = lsm_now_ns();
    g->o->progress(&p, g->o->opaque);
}

static bool cancelled(const struct mig *g)
{
    return g->o->cancel && *g->o->cancel;
}

/* ---- the journal ---- */

static int save(struct mig *g)
{
    json_object *doc = json_object_new_object();
    json_object_object_add(doc, "version", json_object_new_int(JOURNAL_VERSION));
    json_object_object_add(doc, "domain", lsm_json_string(g->domain));
    if (g->uri)
        json_object_object_add(doc, "uri", lsm_json_string(g->uri));
    json_object_object_add(doc, "run", json_object_new_string(g->run));
    json_object_object_add(doc, "phase", json_object_new_string(g->phase));
    json_object_object_add(doc, "committed", json_object_new_boolean(g->committed));
    json_object_object_add(doc, "dst_kind",
                           json_object_new_string(g->dst_kind == LSM_DOMAIN_BLOCK ? "block" : "file"));
    json_object_object_add(doc, "dst_domain", lsm_json_string(g->dst_domain));
    json_object *disks = json_object_new_array();
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "disk", lsm_json_string(d->disk));
        json_object_object_add(o, "old_leaf", lsm_json_string(d->old_leaf));
        json_object_object_add(o, "overlay", lsm_json_string(d->overlay));
        json_object_object_add(o, "overlay_block", json_object_new_boolean(d->overlay_block));
        json_object_object_add(o, "overlay_made", json_object_new_boolean(d->overlay_made));
        json_object *dst = json_object_new_array();
        for (unsigned k = 0; k < d->ndst; k++)
            json_object_array_add(dst, lsm_json_string(d->dst[k]));
        json_object_object_add(o, "destination", dst);
        json_object_object_add(o, "dst_planned", json_object_new_boolean(d->dst_planned));
        json_object_object_add(o, "synced", json_object_new_boolean(d->synced));
        json_object_object_add(o, "sync_writes", json_object_new_boolean(d->sync_writes));
        json_object_object_add(o, "pivoted", json_object_new_boolean(d->pivoted));
        json_object_array_add(disks, o);
    }
    json_object_object_add(doc, "disks", disks);
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
    if (!text) {
        json_object_put(doc);
        return lsm_error(-ENOMEM, "out of memory");
    }
    /* As engine/journal.c: a temporary file beside it, fsync, rename, fsync
     * of the directory; a kill leaves the old journal or the new one. */
    _cleanup_free_ char *tmp = NULL;
    _cleanup_free_ char *dircopy = strdup(g->journal);
    if (!dircopy || asprintf(&tmp, "%s.tmp.%ld.%" PRIu64, g->journal, (long)getpid(),
                             lsm_now_ns()) < 0) {
        tmp = NULL;
        json_object_put(doc);
        return lsm_error(-ENOMEM, "out of memory");
    }
    int r = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        json_object_put(doc);
        return lsm_error_errno(-errno, "cannot create %s", tmp);
    }
    size_t len = strlen(text);
    ssize_t w = lsm_pwrite_all(fd, text, len, 0);
    if (w < 0 || (size_t)w < len)
        r = lsm_error_errno(w < 0 ? (int)w : -ENOSPC, "cannot write %s", tmp);
    else if (pwrite(fd, "\n", 1, (off_t)len) != 1)
        r = lsm_error_errno(-errno, "cannot write %s", tmp);
    else if (fsync(fd) < 0)
        r = lsm_error_errno(-errno, "cannot sync %s", tmp);
    json_object_put(doc);
    close(fd);
    if (r == 0 && rename(tmp, g->journal) < 0)
        r = lsm_error_errno(-errno, "cannot rename %s to %s", tmp, g->journal);
    if (r < 0) {
        unlink(tmp);    /* the temporary file this call created */
        return r;
    }
    int dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        r = lsm_error_errno(-errno, "cannot sync the directory of %s", g->journal);
    if (dfd >= 0)
        close(dfd);
    return r;
}

/* Temporary files of saves a kill interrupted: JOURNAL.tmp.PID.NS, PID gone. */
static void remove_dead_temporaries(const struct mig *g)
{
    _cleanup_free_ char *dircopy = strdup(g->journal);
    _cleanup_free_ char *basecopy = strdup(g->journal);
    if (!dircopy || !basecopy)
        return;
    const char *dir = dirname(dircopy), *base = basename(basecopy);
    DIR *dp = opendir(dir);
    if (!dp)
        return;
    size_t bl = strlen(base);
    struct dirent *e;
    while ((e = readdir(dp))) {
        long pid;
        if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp.", 5) ||
            sscanf(e->d_name + bl + 5, "%ld.", &pid) != 1 || pid <= 0)
            continue;
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/%ld", pid);
        if (access(proc, F_OK) == 0)
            continue;
        _cleanup_free_ char *p = NULL;
        if (asprintf(&p, "%s/%s", dir, e->d_name) >= 0)
            unlink(p);
        else
            p = NULL;
    }
    closedir(dp);
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int jbool(json_object *o, const char *key, bool *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
        return -EINVAL;
    *out = json_object_get_boolean(v);
    return 0;
}

static int dupstr(char **dst, const char *s)
{
    if (!s)
        return -EINVAL;
    free(*dst);
    *dst = strdup(s);
    return *dst ? 0 : -ENOMEM;
}

static int parse_journal(struct mig *g, const char *text, const char *name);

static int load(struct mig *g)
{
    _cleanup_free_ char *text = NULL;
    FILE *f = fopen(g->journal, "re");
    if (!f) {
        if (errno == ENOENT)
            return lsm_error(-ENOENT, "no migration of domain '%s' is recorded in %s",
                             g->domain, g->journal);
        return lsm_error_errno(-errno, "cannot open %s", g->journal);
    }
    size_t cap = 0, len = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            if (cap > (1u << 20)) {
                fclose(f);
                return lsm_error(-EINVAL, "%s: too large for a migration journal", g->journal);
            }
            char *n = realloc(text, cap = cap ? cap * 2 : 8192);
            if (!n) {
                fclose(f);
                return lsm_error(-ENOMEM, "out of memory");
            }
            text = n;
        }
        size_t k = fread(text + len, 1, cap - len - 1, f);
        len += k;
        if (k == 0)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad)
        return lsm_error(-EIO, "cannot read %s", g->journal);
    text[len] = 0;
    return parse_journal(g, text, g->journal);
}

/* The journal's text (NAME: where it came from, for the message). */
static int parse_journal(struct mig *g, const char *text, const char *name)
{
    json_object *doc = json_tokener_parse(text);
    int r = -EINVAL;
    json_object *v, *disks;
    const char *s;
    if (!doc || !json_object_is_type(doc, json_type_object))
        goto bad;
    if (!json_object_object_get_ex(doc, "version", &v) || json_object_get_int(v) != JOURNAL_VERSION)
        goto bad;
    if (!(s = jstr(doc, "domain")) || strcmp(s, g->domain))
        goto bad;
    if ((jstr(doc, "uri") && dupstr(&g->uri, jstr(doc, "uri"))) ||
        dupstr(&g->dst_domain, jstr(doc, "dst_domain")))
        goto bad;
    if (!(s = jstr(doc, "run")) || strlen(s) >= sizeof g->run)
        goto bad;
    strcpy(g->run, s);
    if (!(s = jstr(doc, "dst_kind")) || (strcmp(s, "file") && strcmp(s, "block")))
        goto bad;
    g->dst_kind = strcmp(s, "block") ? LSM_DOMAIN_FILE : LSM_DOMAIN_BLOCK;
    if (jbool(doc, "committed", &g->committed))
        goto bad;
    s = jstr(doc, "phase");
    /* not "pivot": a pivot the killed run asked for may still land; the
     * rollback path is the one that looks for it */
    g->cloned = s && (!strcmp(s, "replicate") || !strcmp(s, "sync"));
    if (!json_object_object_get_ex(doc, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array) || json_object_array_length(disks) == 0 ||
        json_object_array_length(disks) > LSM_MIGRATE_MAX_DISKS)
        goto bad;
    g->n = (unsigned)json_object_array_length(disks);
    for (unsigned i = 0; i < g->n; i++) {
        json_object *o = json_object_array_get_idx(disks, i), *dst;
        struct mdisk *d = &g->d[i];
        if (!json_object_is_type(o, json_type_object) || !(s = jstr(o, "disk")) ||
            strlen(s) >= sizeof d->disk)
            goto bad;
        strcpy(d->disk, s);
        if (dupstr(&d->old_leaf, jstr(o, "old_leaf")) || dupstr(&d->overlay, jstr(o, "overlay")) ||
            jbool(o, "overlay_block", &d->overlay_block) ||
            jbool(o, "overlay_made", &d->overlay_made) ||
            jbool(o, "dst_planned", &d->dst_planned) || jbool(o, "synced", &d->synced) ||
            jbool(o, "sync_writes", &d->sync_writes) || jbool(o, "pivoted", &d->pivoted))
            goto bad;
        if (!json_object_object_get_ex(o, "destination", &dst) ||
            !json_object_is_type(dst, json_type_array) || json_object_array_length(dst) > MAX_DST)
            goto bad;
        d->ndst = (unsigned)json_object_array_length(dst);
        for (unsigned k = 0; k < d->ndst; k++) {
            json_object *e = json_object_array_get_idx(dst, k);
            if (!json_object_is_type(e, json_type_string) ||
                dupstr(&d->dst[k], json_object_get_string(e)))
                goto bad;
        }
    }
    r = 0;
bad:
    json_object_put(doc);
    if (r < 0) {
        for (unsigned i = 0; i < g->n; i++)
            g->d[i].ndst = 0;
        return lsm_error(-EINVAL, "%s is not a migration journal of domain '%s' "
                         "(or is damaged): look at it, then remove it by hand", name,
                         g->domain);
    }
    return 0;
}

/* ---- steps ---- */

static int fail_point(struct mig *g, const char *phase)
{
    g->phase = phase;
    if (cancelled(g))
        return lsm_error(-EINTR, "interrupted by a signal");
    if (g->o->fail_at && !strcmp(g->o->fail_at, phase))
        return lsm_error(-EIO, "failure injected at the start of the %s phase (--fail-at)",
                         phase);
    return 0;
}

static bool needs_extender(const struct mig *g);

static int open_mirrors(struct mig *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        if (d->m)
            continue;
        /* with the extender running it owns libvirt's event loop: poll */
        struct lsm_mirror_target t = { .uri = g->uri, .domain = g->domain, .disk = d->disk,
                                       .no_events = needs_extender(g) };
        int r = lsm_mirror_open("libvirt", &t, &d->m);
        if (r < 0)
            return r;
    }
    return 0;
}

/* What the disk reads and writes now, and the destination of its mirror. */
static int disk_paths(struct mdisk *d, char **source, char **mirror)
{
    return lsm_mirror_paths(d->m, source, mirror);
}

static bool exists(const char *p)
{
    struct stat st;
    return p && lstat(p, &st) == 0;
}

/* /dev/VG/LV -> VG and LV (malloc'd); -EINVAL for anything else. */
static int split_lv(const char *path, char **vg, char **lv)
{
    /* a volume of a loop domain: the domain is its directory (domain.h) */
    int l = lsm_loop_domain_of(path, vg, lv);
    if (l != 0) {
        lsm_error_clear();
        return l < 0 ? l : 0;
    }
    if (strncmp(path, "/dev/", 5))
        return -EINVAL;
    const char *a = path + 5, *slash = strchr(a, '/');
    if (!slash || slash == a || !slash[1] || strchr(slash + 1, '/'))
        return -EINVAL;
    *vg = strndup(a, (size_t)(slash - a));
    *lv = strdup(slash + 1);
    if (!*vg || !*lv) {
        free(*vg);
        free(*lv);
        return -ENOMEM;
    }
    return 0;
}

/* The overlay's path: next to the leaf, its name (up to an earlier
 * migration's ".mig-" suffix) plus ".mig-RUN" (file), or
 * an LV of the leaf's VG with that name (block). */
static int name_overlay(struct mig *g, struct mdisk *d)
{
    struct stat st;
    if (stat(d->old_leaf, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s (the leaf of %s)", d->old_leaf, d->disk);
    d->overlay_block = S_ISBLK(st.st_mode);
    /* A leaf that is itself an earlier migration's overlay keeps its first
     * name: LEAF.mig-OLD gets LEAF.mig-RUN, not LEAF.mig-OLD.mig-RUN (names
     * would grow by one suffix per migration past NAME_MAX, or LVM's 127). */
    const char *base = strrchr(d->old_leaf, '/');
    base = base ? base + 1 : d->old_leaf;
    const char *cut = strstr(base, ".mig-");
    int keep = cut && cut > base ? (int)(cut - d->old_leaf) : (int)strlen(d->old_leaf);
    if (asprintf(&d->overlay, "%.*s.mig-%s", keep, d->old_leaf, g->run) < 0) {
        d->overlay = NULL;
        return lsm_error(-ENOMEM, "out of memory");
    }
    if (d->overlay_block) {
        _cleanup_free_ char *vg = NULL, *lv = NULL;
        if (split_lv(d->old_leaf, &vg, &lv) < 0)
            return lsm_error(-ENOTSUP, "the leaf of %s, %s, is a block device that is not "
                             "/dev/VG/LV nor in a loop domain: cannot place the snapshot's overlay beside it",
                             d->disk, d->old_leaf);
    }
    if (exists(d->overlay))
        return lsm_error(-EEXIST, "%s exists: not overwriting it", d->overlay);
    return 0;
}

static int write_overlay(struct mig *g, struct mdisk *d, const struct lsm_volume_desc *leaf)
{
    int r;
    int flags = O_RDWR;
    if (d->overlay_block) {
        _cleanup_free_ char *vg = NULL, *lv = NULL, *name = NULL;
        if ((r = split_lv(d->old_leaf, &vg, &lv)) < 0)
            return lsm_error(r, "cannot parse %s", d->old_leaf);
        name = strdup(basename(d->overlay));
        struct lsm_domain *dom;
        if (!name)
            return lsm_error(-ENOMEM, "out of memory");
        if ((r = lsm_domain_open(LSM_DOMAIN_BLOCK, vg, &dom)) < 0)
            return r;
        /* the guest writes it from the snapshot on, and the extender
         * watches it only from the replicate phase */
        r = dom->ops->create_volume(dom, name, lsm_extend_initial_size(&g->policy, 0,
                                                                       leaf->virtual_size, true));
        lsm_domain_close(dom);
        if (r < 0)
            return r;
    } else {
        flags |= O_CREAT | O_EXCL;
    }
    _cleanup_close_ int fd = lsm_open_disk(d->overlay, flags, 0644, "overlay", NULL);
    if (fd < 0)
        return fd;
    unsigned cbits = 16;
    if (leaf->format == LSM_FMT_QCOW2 && leaf->cluster_size)
        cbits = (unsigned)__builtin_ctz(leaf->cluster_size);
    _cleanup_free_ char *leafcopy = strdup(d->old_leaf);
    if (!leafcopy)
        return lsm_error(-ENOMEM, "out of memory");
    struct qcow2_create_opts co = {
        .size = leaf->virtual_size,
        .cluster_bits = cbits,
        /* file: the leaf beside it, by name; block: its /dev/VG/LV */
        .backing_name = d->overlay_block ? d->old_leaf : basename(leafcopy),
        .backing_fmt = leaf->format,
    };
    struct qcow2_writer *w = NULL;
    r = qcow2_writer_create(fd, 512, &co, &w);
    if (r == 0)
        r = qcow2_writer_finish(w);
    qcow2_writer_close(w);
    if (r < 0) {
        lsm_error_prefix("%s", d->overlay);
        return r;
    }
    if (fsync(fd) < 0)
        return lsm_error_errno(-errno, "cannot sync %s", d->overlay);
    return 0;
}

static int remove_volume_at(enum lsm_domain_kind kind, const char *path)
{
    _cleanup_free_ char *dircopy = strdup(path), *namecopy = strdup(path);
    if (!dircopy || !namecopy)
        return lsm_error(-ENOMEM, "out of memory");
    const char *where = dirname(dircopy), *name = basename(namecopy);
    _cleanup_free_ char *vg = NULL, *lv = NULL;
    if (kind == LSM_DOMAIN_BLOCK) {
        if (split_lv(path, &vg, &lv) < 0)
            return lsm_error(-EINVAL, "%s is not /dev/VG/LV", path);
        where = vg;
    }
    struct lsm_domain *dom;
    int r = lsm_domain_open(kind, where, &dom);
    if (r < 0)
        return r;
    r = dom->ops->remove_volume(dom, name);
    lsm_domain_close(dom);
    return r;
}

static int snapshot(struct mig *g)
{
    int r;
    struct lsm_vm_snapshot_disk sd[LSM_MIGRATE_MAX_DISKS];
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        struct lsm_chain_desc leaf;
        if ((r = lsm_chain_describe(d->old_leaf, LSM_FMT_AUTO, &leaf)) < 0)
            return r;
        if (exists(d->overlay)) {
            lsm_chain_desc_free(&leaf);
            return lsm_error(-EEXIST, "%s exists: not overwriting it", d->overlay);
        }
        /* recorded before it exists: a kill in between leaves a file with
         * this run's name, which only this run can have made */
        d->overlay_made = true;
        if ((r = save(g)) < 0 || (r = write_overlay(g, d, &leaf.v[0])) < 0) {
            /* someone else's file appeared under this name (O_EXCL): not ours */
            if (r == -EEXIST)
                d->overlay_made = false;
            lsm_chain_desc_free(&leaf);
            return r;
        }
        lsm_chain_desc_free(&leaf);
        sd[i] = (struct lsm_vm_snapshot_disk){ .disk = d->disk, .overlay = d->overlay,
                                               .block = d->overlay_block };
    }
    if (cancelled(g))
        return lsm_error(-EINTR, "interrupted by a signal");
    if ((r = lsm_vm_snapshot(g->uri, g->domain, sd, g->n)) < 0)
        return r;
    for (unsigned i = 0; i < g->n; i++)
        g->d[i].snapshotted = true;
    if (g->x)
        lsm_extender_kick(g->x);   /* new tops: re-arm on the overlays */
    report(g, "live snapshot of %u disk%s taken", g->n, g->n == 1 ? "" : "s");
    return save(g);
}

/* Lay each chain out in the destination, refuse volumes that exist, record
 * them (ours from here on), then clone-structure. */
static int clone_chains(struct mig *g)
{
    int r;
    struct lsm_domain *dom;
    if ((r = lsm_domain_open(g->dst_kind, g->dst_domain, &dom)) < 0)
        return r;
    for (unsigned i = 0; i < g->n && r == 0; i++) {
        struct mdisk *d = &g->d[i];
        struct lsm_chain_desc src;
        struct lsm_jobfile job = { 0 };
        if ((r = lsm_chain_describe(d->overlay, LSM_FMT_AUTO, &src)) < 0)
            break;
        r = lsm_jobfile_for_domain(&src, dom, &job);
        if (r == 0)
            r = lsm_jobfile_check_destinations(&src, &job);
        if (r == 0 && job.n > MAX_DST)
            r = lsm_error(-E2BIG, "the chain of %s has %u volumes (at most %d)", d->disk, job.n,
                          MAX_DST);
        for (unsigned k = 0; r == 0 && k < job.n; k++) {
            if (exists(job.v[k].dst_path))
                r = lsm_error(-EEXIST, "destination volume %s exists: migrate creates its "
                              "volumes and overwrites none", job.v[k].dst_path);
            for (unsigned j = 0; r == 0 && j < i; j++)
                for (unsigned l = 0; r == 0 && l < g->d[j].ndst; l++)
                    if (!strcmp(g->d[j].dst[l], job.v[k].dst_path))
                        r = lsm_error(-EINVAL, "%s and %s would both use destination volume %s",
                                      g->d[j].disk, d->disk, job.v[k].dst_path);
        }
        for (unsigned k = 0; r == 0 && k < job.n; k++)
            if (dupstr(&d->dst[k], job.v[k].dst_path))
                r = lsm_error(-ENOMEM, "out of memory");
        if (r == 0)
            d->ndst = job.n;
        lsm_jobfile_free(&job);
        lsm_chain_desc_free(&src);
    }
    lsm_domain_close(dom);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < g->n; i++)
        g->d[i].dst_planned = true;
    if ((r = save(g)) < 0)
        return r;
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        struct lsm_clone_opts co = { .src_top = d->overlay, .dst_kind = g->dst_kind,
                                     .dst_domain = g->dst_domain, .cancel = g->o->cancel,
                                     .top_policy = &g->policy };
        struct lsm_chain_desc src;
        struct lsm_jobfile job;
        r = lsm_clone_structure(&co, &src, &job);
        if (r == 0 && (job.n != d->ndst || strcmp(job.v[0].dst_path, d->dst[0])))
            r = lsm_error(-EIO, "clone-structure of %s made another layout than planned",
                          d->disk);
        lsm_chain_desc_free(&src);
        lsm_jobfile_free(&job);
        if (r < 0)
            return r;
        report(g, "%s: %u volumes created, top %s", d->disk, d->ndst, d->dst[0]);
    }
    return 0;
}

/* Before the snapshot: the destination of every disk's chain as it will
 * be (the overlay on top of today's chain) must be free and no source
 * file, so that a bad destination is refused before the domain changes. */
static int precheck(struct mig *g)
{
    int r;
    struct lsm_domain *dom;
    if ((r = lsm_domain_open(g->dst_kind, g->dst_domain, &dom)) < 0)
        return r;
    char *seen[LSM_MIGRATE_MAX_DISKS * (MAX_DST + 1)];
    unsigned nseen = 0;
    for (unsigned i = 0; i < g->n && r == 0; i++) {
        struct mdisk *d = &g->d[i];
        struct lsm_chain_desc src;
        struct lsm_jobfile job = { 0 };
        if ((r = lsm_chain_describe(d->old_leaf, LSM_FMT_AUTO, &src)) < 0)
            break;
        r = lsm_jobfile_for_domain(&src, dom, &job);
        if (r == 0)
            r = lsm_jobfile_check_destinations(&src, &job);
        if (r == 0 && job.n + 1 > MAX_DST)
            r = lsm_error(-E2BIG, "the chain of %s has %u volumes (at most %d)", d->disk,
                          job.n + 1, MAX_DST - 1);
        _cleanup_free_ char *ocopy = strdup(d->overlay);
        char *otop = ocopy ? dom->ops->volume_path(dom, basename(ocopy)) : NULL;
        if (r == 0 && !otop)
            r = lsm_error(-ENOMEM, "out of memory");
        for (unsigned k = 0; r == 0 && k <= job.n; k++) {
            const char *p = k == job.n ? otop : job.v[k].dst_path;
            if (exists(p))
                r = lsm_error(-EEXIST, "destination volume %s exists: migrate creates its "
                              "volumes and overwrites none", p);
            for (unsigned j = 0; r == 0 && j < nseen; j++)
                if (!strcmp(seen[j], p))
                    r = lsm_error(-EINVAL, "two disks would use destination volume %s", p);
        }
        for (unsigned k = 0; r == 0 && k <= job.n; k++) {
            seen[nseen] = strdup(k == job.n ? otop : job.v[k].dst_path);
            if (!seen[nseen])
                r = lsm_error(-ENOMEM, "out of memory");
            else
                nseen++;
        }
        free(otop);
        lsm_jobfile_free(&job);
        lsm_chain_desc_free(&src);
    }
    for (unsigned j = 0; j < nseen; j++)
        free(seen[j]);
    lsm_domain_close(dom);
    return r;
}

static bool needs_extender(const struct mig *g)
{
    if (g->dst_kind == LSM_DOMAIN_BLOCK)
        return true;
    for (unsigned i = 0; i < g->n; i++)
        if (g->d[i].overlay_block)
            return true;
    return false;
}

/* On the extender's thread: count what the result reports. */
static void on_extender_event(const struct lsm_monitor_event *ev, void *opaque)
{
    struct mig *g = opaque;
    if (ev->type == LSM_MON_LIFECYCLE && ev->reason && !strcmp(ev->reason, "suspended/ioerror")) {
        __atomic_add_fetch(&g->pauses, 1, __ATOMIC_RELAXED);
        return;
    }
    if (ev->type != LSM_MON_EXTENDED || !ev->disk || !ev->side)
        return;
    for (unsigned i = 0; i < g->n; i++)
        if (!strcmp(g->d[i].disk, ev->disk))
            __atomic_add_fetch(&g->extensions[i][!strcmp(ev->side, "mirror")], 1,
                               __ATOMIC_RELAXED);
}

static int start_extender(struct mig *g)
{
    if (g->x || !needs_extender(g))
        return 0;
    /* the mirrors again, without events: the extender owns the loop */
    for (unsigned i = 0; i < g->n; i++) {
        lsm_mirror_close(g->d[i].m);
        g->d[i].m = NULL;
    }
    int r = open_mirrors(g);
    if (r < 0)
        return r;
    const char *disks[LSM_MIGRATE_MAX_DISKS];
    for (unsigned i = 0; i < g->n; i++)
        disks[i] = g->d[i].disk;
    struct lsm_extender_opts xo = { .uri = g->uri, .domain = g->domain, .disks = disks,
                                    .ndisks = g->n, .replicating = true, .policy = g->policy,
                                    .cb = on_extender_event, .opaque = g };
    r = lsm_extender_start(&xo, &g->x);
    if (r < 0)
        return r;
    report(g, "watermark extender running");
    return 0;
}

/* The cap for pre-sizing a destination top: the extender's own cap for
 * the mirror's side when it has one (a full qcow2 of its geometry, read
 * from its header), else the source top's when that is a qcow2 the
 * extender measured (the destination is a qcow2 of the same virtual size;
 * the extender caps the destination by its own header once the mirror
 * runs), else max_ratio x the virtual size.  A raw source's cap is its
 * capacity: no cap for a qcow2. */
static uint64_t presize_cap(const struct lsm_extend_policy *p,
                            const struct lsm_extender_drive_status *dr)
{
    const struct lsm_extender_side_status *src = &dr->side[0], *dst = &dr->side[1];
    if (dst->state != LSM_SIDE_NONE && dst->state != LSM_SIDE_RAW && dst->max_size &&
        dst->capacity == src->capacity)
        return dst->max_size;
    if (src->max_size && src->max_size > src->capacity)
        return src->max_size;
    return lsm_extend_max_size(p, src->capacity, 0);
}

/* Just before a disk's mirror starts, its destination top on a block
 * domain is grown to what the extender would give the source top now: its
 * allocation plus the source's headroom (adaptive: the guest's measured
 * write rate) plus its growth during an extension plus a chunk, capped as
 * above.  Sized at clone time only, it
 * may be full before the extender has armed its threshold: the mirror's
 * bulk copy writes the source top's whole allocation at once (a mirror
 * onto a full volume fails).  The drives are measured anew first; a
 * source top still reporting no allocation keeps its clone-time size. */
static int presize_destination(struct mig *g, struct mdisk *d)
{
    if (g->dst_kind != LSM_DOMAIN_BLOCK || !g->x || !d->ndst)
        return 0;
    _cleanup_free_ struct lsm_extender_status *st = calloc(1, sizeof *st);
    if (!st)
        return lsm_error(-ENOMEM, "out of memory");
    /* measured after the snapshot, not what the last periodic check saw
     * (which may predate the new top, or be none yet) */
    int r = lsm_extender_refresh(g->x, PRESIZE_MEASURE_MS);
    if (r < 0)
        return lsm_error(r, "%s: cannot size its destination before mirroring: %s", d->disk,
                         lsm_last_error());
    lsm_extender_status(g->x, st);
    const struct lsm_extender_drive_status *dr = NULL;
    for (unsigned k = 0; k < st->ndrives; k++)
        if (!strcmp(st->drive[k].disk, d->disk))
            dr = &st->drive[k];
    const struct lsm_extender_side_status *src = dr ? &dr->side[0] : NULL;
    if (!src || !src->allocation || !src->capacity)
        return 0;
    uint64_t headroom = MAX(src->headroom, lsm_extend_headroom(&g->policy, 0, 0, true));
    uint64_t cap = presize_cap(&g->policy, dr);
    uint64_t growth = lsm_extend_growth(&g->policy, src->planned_rate_bps, st->latency_ns);
    uint64_t size = lsm_extend_next_size_growing(&g->policy, src->allocation, 0, headroom, growth,
                                                 cap, true);
    _cleanup_free_ char *vg = NULL, *lv = NULL;
    r = split_lv(d->dst[0], &vg, &lv);
    if (r < 0)
        return lsm_error(r, "%s is not a volume of a block domain", d->dst[0]);
    struct lsm_domain *dom;
    if ((r = lsm_domain_open(LSM_DOMAIN_BLOCK, vg, &dom)) < 0)
        return r;
    r = dom->ops->extend_volume(dom, lv, size);
    lsm_domain_close(dom);
    if (r < 0)
        return r;
    char b1[32], b2[32];
    char b3[32];
    report(g, "%s: destination %s grown to at least %s before mirroring (source allocation "
           "%s, cap %s)", d->disk, d->dst[0], lsm_format_size(size, b1, sizeof b1),
           lsm_format_size(src->allocation, b2, sizeof b2), lsm_format_size(cap, b3, sizeof b3));
    return 0;
}

static int start_mirror(struct mig *g, struct mdisk *d)
{
    struct lsm_mirror_start_opts so = { .dst = d->dst[0], .dst_fmt = LSM_FMT_QCOW2,
                                        .bandwidth = g->o->bandwidth,
                                        .sync_writes = d->sync_writes };
    /* never a mirror of the destination onto itself: a disk already on it
     * pivoted (a killed run's pivot that libvirtd finished meanwhile) */
    _cleanup_free_ char *src = NULL;
    int r = disk_paths(d, &src, NULL);
    if (r < 0)
        return r;
    if (src && lsm_same_file(src, d->dst[0])) {
        d->pivoted = true;
        g->committed = true;
        return lsm_error(-EALREADY, "%s runs on its destination %s already (a pivot the killed "
                         "run had asked for)", d->disk, d->dst[0]);
    }
    if ((r = presize_destination(g, d)) < 0)
        return r;
    r = lsm_mirror_start(d->m, &so);
    if (r < 0)
        return r;
    d->best_remaining = UINT64_MAX;
    d->best_ns = lsm_now_ns();
    memset(&d->st, 0, sizeof d->st);
    d->st.phase = LSM_MIRROR_COPYING;
    if (g->x)
        lsm_extender_kick(g->x);
    return 0;
}

static int replicate(struct mig *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        _cleanup_free_ char *mirror = NULL;
        int r = disk_paths(d, NULL, &mirror);
        if (r < 0)
            return r;
        if (mirror && lsm_same_file(mirror, d->dst[0])) {
            /* the convergence watch starts from now (watch()) */
            d->best_remaining = UINT64_MAX;
            d->best_ns = lsm_now_ns();
            report(g, "%s: mirror onto %s already running", d->disk, d->dst[0]);
            continue;
        }
        if (mirror)
            return lsm_error(-EBUSY, "%s is being mirrored onto %s, not by this migration",
                             d->disk, mirror);
        d->sync_writes = g->sync_writes == LSM_MIGRATE_SW_ALWAYS || d->sync_writes;
        if ((r = start_mirror(g, d)) < 0)
            return r;
        report(g, "%s: mirroring onto %s (%s writes)", d->disk, d->dst[0],
               d->sync_writes ? "synchronous" : "background");
    }
    return save(g);
}

/* The journal of a disk's sync (flows/sync.h), beside the migration's:
 * STATE/DOMAIN.sync-DISK.json, its volumes' journals .0, .1, ... beside
 * it.  A resume continues it. */
static int sync_journal(const struct mig *g, const struct mdisk *d, char *buf, size_t len)
{
    size_t n = strlen(g->journal);
    if (n < 5 || strcmp(g->journal + n - 5, ".json"))
        return lsm_error(-EINVAL, "%s: a journal name without .json", g->journal);
    int k = snprintf(buf, len, "%.*s.sync-%s.json", (int)(n - 5), g->journal, d->disk);
    if (k < 0 || (size_t)k >= len)
        return lsm_error(-ENAMETOOLONG, "%s: name too long", g->journal);
    return 0;
}

/* The sync's journals of a disk whose destination is being removed: the
 * sync's, its volumes' (.N) and the temporaries of saves a kill cut short
 * (.tmp.*, .N.tmp.*): every file of the state directory whose name starts
 * with the sync journal's, a name only this disk's migration uses. */
static void remove_sync_journals(const struct mig *g, const struct mdisk *d)
{
    char p[PATH_MAX];
    if (sync_journal(g, d, p, sizeof p) < 0) {
        lsm_error_clear();
        return;
    }
    char *slash = strrchr(p, '/');
    const char *base = slash ? slash + 1 : p;
    _cleanup_free_ char *dir = slash ? strndup(p, (size_t)(slash - p)) : strdup(".");
    DIR *dh = dir ? opendir(*dir ? dir : "/") : NULL;
    if (!dh)
        return;
    size_t n = strlen(base);
    struct dirent *e;
    while ((e = readdir(dh)))
        if (!strncmp(e->d_name, base, n) && (!e->d_name[n] || e->d_name[n] == '.'))
            unlinkat(dirfd(dh), e->d_name, 0);
    closedir(dh);
}

static int start_syncs(struct mig *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        if (d->synced)
            continue;
        /* sync --type=INTERNAL of the overlay's chain, that is every volume
         * below the overlay: run as ALL of the chain from the old leaf
         * down, so that the sync never opens the overlay's destination,
         * which QEMU holds as the mirror's target without sharing
         * consistent reads (a sync from the top fails on its lock). */
        if (d->ndst < 2)
            return lsm_error(-EINVAL, "%s: no internal layers to sync", d->disk);
        char jpath[PATH_MAX];
        int r = sync_journal(g, d, jpath, sizeof jpath);
        if (r < 0)
            return r;
        struct lsm_sync_opts so = { .type = LSM_SYNC_ALL, .src_top = d->old_leaf,
                                    .dst_top = d->dst[1], .parallel = g->o->parallel,
                                    .journal = jpath, .resume = exists(jpath) };
        so.copy.rate = g->o->sync_rate;
        if (so.resume)
            report(g, "%s: resuming the sync from its journal %s", d->disk, jpath);
        struct lsm_job_opts jo = { .kind = "sync" };
        r = lsm_sync_job_create(&so, &jo, &d->job);
        if (r < 0)
            return r;
        if ((r = lsm_job_start(d->job)) < 0)
            return lsm_error(r, "cannot start the sync of %s", d->disk);
    }
    return 0;
}

static void stop_syncs(struct mig *g)
{
    for (unsigned i = 0; i < g->n; i++)
        if (g->d[i].job) {
            lsm_job_free(g->d[i].job);   /* cancels and waits */
            g->d[i].job = NULL;
        }
}

/* Why a mirror is not ready yet, for the deadline's message. */
static void not_ready_reason(struct mig *g, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = 0;
    for (unsigned i = 0; i < g->n && used < len; i++) {
        struct mdisk *d = &g->d[i];
        if (d->st.phase == LSM_MIRROR_READY)
            continue;
        char b1[32];
        uint64_t left = d->st.end > d->st.cur ? d->st.end - d->st.cur : 0;
        int k = snprintf(buf + used, len - used, "%s%s %s at %u%% (%s left%s%s)",
                         used ? "; " : "", d->disk, lsm_mirror_phase_name(d->st.phase),
                         lsm_mirror_percent(&d->st), lsm_format_size(left, b1, sizeof b1),
                         d->sync_writes ? ", synchronous writes" : "",
                         d->restarts ? ", restarted" : "");
        if (k > 0)
            used += (size_t)k;
    }
}

/* Until every sync finished and every mirror is ready: the syncs' results,
 * the mirrors' phases, convergence, the deadline, the extender. */
static int watch(struct mig *g)
{
    int64_t ready_ms = g->o->ready_timeout_ms ? g->o->ready_timeout_ms : DEFAULT_READY_MS;
    uint64_t stall_ns = (uint64_t)(g->o->stall_ms ? g->o->stall_ms : DEFAULT_STALL_MS) * 1000000ULL;
    uint64_t synced_at = 0;
    for (;;) {
        if (cancelled(g))
            return lsm_error(-EINTR, "interrupted by a signal");
        if (g->x && lsm_extender_error(g->x) < 0) {
            lsm_error_prefix("the watermark extender failed");
            return -EIO;
        }
        bool all_synced = true, all_ready = true;
        uint64_t now = lsm_now_ns();
        for (unsigned i = 0; i < g->n; i++) {
            struct mdisk *d = &g->d[i];
            if (d->job) {
                struct lsm_job_status js;
                lsm_job_get_status(d->job, &js);
                d->sync_done = js.progress.bytes_done;
                d->sync_total = js.progress.bytes_total;
                if (lsm_job_wait(d->job, 0) == 0) {
                    lsm_job_get_status(d->job, &js);   /* final: with its message */
                    int r = lsm_job_result(d->job);
                    if (r < 0)
                        return lsm_error(r, "the sync of %s failed: %s", d->disk,
                                         js.message[0] ? js.message : "unknown error");
                    lsm_job_free(d->job);
                    d->job = NULL;
                    d->synced = true;
                    d->sync_done = d->sync_total;
                    if ((r = save(g)) < 0)
                        return r;
                    report(g, "%s: internal layers synced", d->disk);
                }
            }
            if (!d->synced)
                all_synced = false;
            int r = lsm_mirror_status(d->m, &d->st);
            if (r < 0)
                return r;
            if (d->st.phase == LSM_MIRROR_FAILED)
                return lsm_error(-EIO, "the mirror of %s failed", d->disk);
            if (d->st.phase == LSM_MIRROR_NONE)
                return lsm_error(-EIO, "the mirror of %s is gone (cancelled outside lsm-sync?)",
                                 d->disk);
            if (d->st.phase == LSM_MIRROR_READY)
                continue;
            all_ready = false;
            if (d->st.end == 0)
                continue;
            uint64_t left = d->st.end > d->st.cur ? d->st.end - d->st.cur : 0;
            if (left < d->best_remaining) {
                d->best_remaining = left;
                d->best_ns = now;
            } else if (now - d->best_ns >= stall_ns && !d->sync_writes &&
                       g->sync_writes == LSM_MIGRATE_SW_AUTO) {
                /* QEMU cannot switch a running copy to write-blocking: cancel
                 * it (the VM stays on its source) and start again. */
                char b1[32];
                if ((r = lsm_mirror_abort(d->m, NULL)) < 0)
                    return r;
                d->sync_writes = true;
                d->restarts++;
                if ((r = start_mirror(g, d)) < 0 || (r = save(g)) < 0)
                    return r;
                report(g, "%s: not converging (%s left for %.0f s): restarted with synchronous "
                       "writes", d->disk, lsm_format_size(left, b1, sizeof b1),
                       (double)stall_ns / 1e9);
            }
        }
        if (all_synced && !synced_at)
            synced_at = now;
        if (all_synced && all_ready)
            return 0;
        if (synced_at && ready_ms >= 0 && now - synced_at >= (uint64_t)ready_ms * 1000000ULL) {
            char why[400];
            not_ready_reason(g, why, sizeof why);
            return lsm_error(-ETIMEDOUT, "the mirrors were not ready %.0f s after the sync: %s",
                             (double)ready_ms / 1000, why);
        }
        if (now - g->last_report >= REPORT_NS)
            report(g, NULL);
        struct timespec ts = { 0, POLL_MS * 1000000L };
        nanosleep(&ts, NULL);
    }
}

/* Pivot every disk not pivoted yet.  The first success is the commit
 * point.  Before it a failure returns at once (the caller rolls back);
 * after it every disk is tried until the deadline. */
static int pivot(struct mig *g, char *reason, size_t reason_len)
{
    int64_t ms = g->o->pivot_timeout_ms ? g->o->pivot_timeout_ms : DEFAULT_PIVOT_MS;
    uint64_t deadline = lsm_now_ns() + (uint64_t)(ms < 0 ? 0 : ms) * 1000000ULL;
    int first = 0;
    size_t used = 0;
    reason[0] = 0;
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        if (d->pivoted)
            continue;
        int r = 0;
        /* tests: a failure of every pivot after the first one */
        if (g->committed && g->o->fail_at && !strcmp(g->o->fail_at, "commit"))
            r = lsm_error(-EIO, "%s: failure injected past the commit point (--fail-at "
                          "commit)", d->disk);
        /* tests: the pivot held not ready (-EAGAIN) until the deadline:
         * pivot-wait the first one, commit-wait every one after it */
        const char *hold = g->o->fail_at;
        if (hold && strcmp(hold, g->committed ? "commit-wait" : "pivot-wait"))
            hold = NULL;
        while (r == 0) {
            _cleanup_free_ char *active = NULL;
            r = hold ? lsm_error(-EAGAIN, "not ready (injected by --fail-at %s)", hold)
                     : lsm_mirror_finish(d->m, false, 0, &d->st, &active);
            if (r == 0)
                break;
            if (r != -EAGAIN || (ms >= 0 && lsm_now_ns() >= deadline))
                break;
            if (!g->committed && cancelled(g)) {
                r = lsm_error(-EINTR, "interrupted by a signal");
                break;
            }
            struct timespec ts = { 0, POLL_MS * 1000000L };
            nanosleep(&ts, NULL);
            r = 0;   /* not ready yet: ask again */
        }
        if (r == 0) {
            d->pivoted = true;
            g->committed = true;
            if (g->x)
                lsm_extender_kick(g->x);   /* new indexes: re-arm */
            int s = save(g);
            report(g, "%s: pivoted to %s", d->disk, d->dst[0]);
            if (s < 0 && !first)
                first = s;
            continue;
        }
        if (r == -EAGAIN) {
            /* (the last error is the reason: a prefix, not an argument of
             * lsm_error, which writes the buffer it would read) */
            lsm_error_prefix("%s was not ready to pivot within %.0f s", d->disk,
                             (double)ms / 1000);
            r = -ETIMEDOUT;
        }
        if (!g->committed)
            return r;
        /* past the commit point: the disk keeps mirroring; go on */
        int k = snprintf(reason + used, reason_len - used, "%s%s", used ? "; " : "",
                         lsm_last_error());
        if (k > 0 && (size_t)k < reason_len - used)
            used += (size_t)k;
        if (!first)
            first = r;
    }
    return first;
}

/* How long a resume or rollback waits for a pivot or abort still in
 * progress (asked for by a killed run) before it looks at the disks. */
static int64_t settle_ms(const struct mig *g)
{
    int64_t ms = g->o->pivot_timeout_ms ? g->o->pivot_timeout_ms : DEFAULT_PIVOT_MS;
    return ms < 0 ? -1 : ms;
}

/* Undo everything before the commit point: abort the mirrors, remove the
 * destination volumes this migration created, and the overlays the VM
 * does not use.  Returns 0 when nothing of it is left. */
static int rollback(struct mig *g, bool keep_snapshot)
{
    int first = 0;
    g->phase = "rollback";
    stop_syncs(g);
    bool mirrors_gone = true;
    /* a disk found pivoted ends it: the others' mirrors are the resume's */
    for (unsigned i = 0; i < g->n && !g->committed; i++) {
        struct mdisk *d = &g->d[i];
        if (!d->m)
            continue;
        _cleanup_free_ char *mirror = NULL;
        int r = lsm_mirror_settle(d->m, settle_ms(g));
        if (r == 0)
            r = disk_paths(d, NULL, &mirror);
        if (r == 0 && mirror) {
            if (d->ndst && lsm_same_file(mirror, d->dst[0]))
                r = lsm_mirror_abort(d->m, NULL);
            else
                r = lsm_error(-EBUSY, "%s is being mirrored onto %s, not by this migration: "
                              "left alone", d->disk, mirror);
            if (r == 0)
                report(g, "%s: mirror aborted, the disk stays on its source", d->disk);
        }
        /* A pivot asked for by a killed run can still land between our
         * look and the abort (libvirt serialises the calls): the disk then
         * runs on its destination, which must stay. */
        if (r == 0 || r == -ENOENT) {
            _cleanup_free_ char *src = NULL;
            int p = disk_paths(d, &src, NULL);
            if (p == 0 && src && d->ndst && lsm_same_file(src, d->dst[0])) {
                d->pivoted = true;
                g->committed = true;
                r = lsm_error(-EALREADY, "%s pivoted to %s while being rolled back (a pivot "
                              "the killed run had asked for)", d->disk, d->dst[0]);
            } else if (p < 0) {
                r = p;
            } else if (r == -ENOENT) {
                lsm_error_clear();     /* the job ended by itself: on its source */
                r = 0;
            }
        }
        if (r < 0) {
            mirrors_gone = false;
            if (!first)
                first = r;
        }
        memset(&d->st, 0, sizeof d->st);
    }
    size_t used = strlen(g->left);
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        /* the destination: only with every mirror stopped (QEMU writes them) */
        for (unsigned k = 0; mirrors_gone && d->dst_planned && k < d->ndst; k++) {
            if (!exists(d->dst[k]))
                continue;
            int r = remove_volume_at(g->dst_kind, d->dst[k]);
            if (r == 0) {
                g->removed++;
                continue;
            }
            if (!first)
                first = r;
            int n = snprintf(g->left + used, sizeof g->left - used, "%s%s", used ? ", " : "",
                             d->dst[k]);
            if (n > 0 && (size_t)n < sizeof g->left - used)
                used += (size_t)n;
        }
        if (mirrors_gone && d->dst_planned) {
            remove_sync_journals(g, d);
            d->dst_planned = false;
            d->ndst = 0;
            d->synced = false;
        }
    }
    /* overlays: removed only while the VM does not use them */
    for (unsigned i = 0; i < g->n && !keep_snapshot && !g->committed; i++) {
        struct mdisk *d = &g->d[i];
        if (!d->overlay_made || !exists(d->overlay))
            continue;
        _cleanup_free_ char *src = NULL;
        int r = d->m ? disk_paths(d, &src, NULL) : -ENOENT;
        if (r == 0 && src && !lsm_same_file(src, d->overlay)) {
            r = remove_volume_at(d->overlay_block ? LSM_DOMAIN_BLOCK : LSM_DOMAIN_FILE,
                                 d->overlay);
            if (r == 0) {
                g->removed++;
                d->overlay_made = false;
            }
        }
        if (r < 0 && !first)
            first = r;
    }
    return first;
}

#ifdef HAVE_LIBSODIUM
static int guest_digest(struct mig *g, const char *path, struct lsm_checksum_result *cr)
{
    struct lsm_image *img = NULL;
    int r = lsm_image_open(path, LSM_FMT_AUTO, 0, &img);
    if (r < 0)
        return r;
    struct lsm_checksum_opts co = { .cancel = g->o->cancel };
    r = lsm_checksum_image(img, &co, cr);
    lsm_image_close(img);
    if (r == -ECANCELED)
        return lsm_error(-EINTR, "interrupted by a signal");
    if (r < 0)
        lsm_error_prefix("checksum of %s", path);
    return r;
}
#endif

/* Before the commit point: the guest view of every disk's synced internal
 * layers (the top one, its chain below it) against the source's, block
 * hash against block hash (checksum.h).  The layers below the overlay no
 * longer change, so equal digests mean the destination shows the guest
 * what the source does once the mirror's overlay is on top. */
static int verify(struct mig *g)
{
    if (g->o->no_checksum)
        return 0;
#ifdef HAVE_LIBSODIUM
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        if (d->digest[0] || d->ndst < 2)
            continue;
        struct lsm_checksum_result src, dst;
        int r = guest_digest(g, d->old_leaf, &src);
        if (r == 0)
            r = guest_digest(g, d->dst[1], &dst);
        if (r < 0)
            return r;
        if (strcmp(src.hex, dst.hex))
            return lsm_error(-EIO, "%s: the synced layers differ from the source's (block hash "
                             "%s on %s, %s on %s)", d->disk, dst.hex, d->dst[1], src.hex,
                             d->old_leaf);
        snprintf(d->digest, sizeof d->digest, "%s", src.hex);
        report(g, "%s: internal layers verified: %s (sha256 block hash of %s and of %s)",
               d->disk, d->digest, d->old_leaf, d->dst[1]);
    }
#else
    report(g, "not verified: lsm-sync was built without libsodium (no block hash)");
#endif
    return 0;
}

enum start { FROM_SNAPSHOT, FROM_CLONE, FROM_REPLICATE };

/* Every destination volume the journal lists is there, and was this
 * run's (planned while none of them existed). */
static bool clone_intact(const struct mig *g)
{
    for (unsigned i = 0; i < g->n; i++) {
        const struct mdisk *d = &g->d[i];
        if (!d->dst_planned || d->ndst < 2)
            return false;
        for (unsigned k = 0; k < d->ndst; k++)
            if (!exists(d->dst[k]))
                return false;
    }
    return true;
}

/* From the snapshot, the clone or the replicate phase to the pivot. */
static int forward(struct mig *g, enum start from, char *reason, size_t reason_len)
{
    int r;
    if (from == FROM_SNAPSHOT) {
        /* the extender first: the guest writes the new overlay from the
         * snapshot on, and the mirror starts only after the clone */
        if ((r = fail_point(g, "snapshot")) < 0 || (r = save(g)) < 0 ||
            (r = start_extender(g)) < 0 || (r = snapshot(g)) < 0)
            return r;
    }
    if (from <= FROM_CLONE &&
        ((r = fail_point(g, "clone")) < 0 || (r = save(g)) < 0 || (r = clone_chains(g)) < 0))
        return r;
    if ((r = fail_point(g, "replicate")) < 0 || (r = start_extender(g)) < 0 ||
        (r = replicate(g)) < 0)
        return r;
    if (g->x)
        lsm_extender_set_replicating(g->x, true);
    if ((r = fail_point(g, "sync")) < 0 || (r = save(g)) < 0 || (r = start_syncs(g)) < 0)
        return r;
    report(g, "syncing the internal layers of %u disk%s", g->n, g->n == 1 ? "" : "s");
    if ((r = watch(g)) < 0 || (r = verify(g)) < 0)
        return r;
    if ((r = fail_point(g, "pivot")) < 0 || (r = save(g)) < 0)
        return r;
    report(g, "every mirror is ready: pivoting");
    return pivot(g, reason, reason_len);
}

static void fill_result(struct mig *g, struct lsm_migrate_result *res)
{
    res->ndisks = g->n;
    res->committed = g->committed;
    res->removed = g->removed;
    res->journal = g->journal ? strdup(g->journal) : NULL;
    for (unsigned i = 0; i < g->n; i++) {
        struct mdisk *d = &g->d[i];
        struct lsm_migrate_disk_result *o = &res->disk[i];
        snprintf(o->disk, sizeof o->disk, "%s", d->disk);
        o->dst_top = d->ndst ? strdup(d->dst[0]) : NULL;
        o->overlay = d->overlay && (d->snapshotted || d->overlay_made) ? strdup(d->overlay) : NULL;
        o->sync_writes = d->sync_writes;
        o->restarts = d->restarts;
        snprintf(o->checksum, sizeof o->checksum, "%s", d->digest);
        if (d->m && disk_paths(d, &o->active, NULL) < 0)
            o->active = NULL;
        o->on_destination = o->active && d->ndst && lsm_same_file(o->active, d->dst[0]);
    }
    res->extender = g->x != NULL;
    res->pauses = __atomic_load_n(&g->pauses, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < g->n; i++)
        for (int k = 0; k < 2; k++)
            res->disk[i].extensions[k] = __atomic_load_n(&g->extensions[i][k], __ATOMIC_RELAXED);
    res->seconds = elapsed(g);
}

/* What parse_journal fills in. */
static void journal_fields_free(struct mig *g)
{
    for (unsigned i = 0; i < LSM_MIGRATE_MAX_DISKS; i++) {
        struct mdisk *d = &g->d[i];
        free(d->old_leaf);
        free(d->overlay);
        for (unsigned k = 0; k < MAX_DST; k++)
            free(d->dst[k]);
    }
    free(g->uri);
    free(g->dst_domain);
}

static void mig_free(struct mig *g)
{
    stop_syncs(g);
    lsm_extender_stop(g->x);
    for (unsigned i = 0; i < LSM_MIGRATE_MAX_DISKS; i++)
        lsm_mirror_close(g->d[i].m);
    journal_fields_free(g);
    if (g->lockfd >= 0)
        close(g->lockfd);    /* the lock file stays: removing it would race a waiter */
    free(g->domain);
    free(g->journal);
}

int lsm_migrate_journal_check(const char *domain, const char *text)
{
    struct mig *g = calloc(1, sizeof *g);
    if (!g)
        return lsm_error(-ENOMEM, "out of memory");
    g->domain = (char *)domain;     /* only read */
    int r = parse_journal(g, text, "the journal");
    journal_fields_free(g);
    free(g);
    return r;
}

static int setup(struct mig *g, const struct lsm_migrate_opts *o)
{
    if (!o->domain || !*o->domain)
        return lsm_error(-EINVAL, "no domain");
    if (strchr(o->domain, '/') || o->domain[0] == '.')
        return lsm_error(-EINVAL, "domain name '%s' cannot name a journal file", o->domain);
    const char *dir = o->state_dir ? o->state_dir : LSM_MIGRATE_DEFAULT_STATE_DIR;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return lsm_error_errno(-errno, "cannot create the state directory %s", dir);
    g->domain = strdup(o->domain);
    g->uri = o->uri ? strdup(o->uri) : NULL;
    g->dst_domain = o->dst_domain ? strdup(o->dst_domain) : NULL;
    g->dst_kind = o->dst_kind;
    g->sync_writes = o->sync_writes;
    if (!g->domain || asprintf(&g->journal, "%s/%s.json", dir, o->domain) < 0) {
        g->journal = NULL;
        return lsm_error(-ENOMEM, "out of memory");
    }
    /* one run per domain at a time: a --resume while the killed run is in
     * fact still alive would fight it */
    _cleanup_free_ char *lockpath = NULL;
    if (asprintf(&lockpath, "%s/%s.lock", dir, o->domain) < 0) {
        lockpath = NULL;
        return lsm_error(-ENOMEM, "out of memory");
    }
    g->lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (g->lockfd < 0)
        return lsm_error_errno(-errno, "cannot open %s", lockpath);
    if (flock(g->lockfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return lsm_error(-EBUSY, "another lsm-sync migrate of domain '%s' is running "
                             "(it holds %s)", o->domain, lockpath);
        return lsm_error_errno(-errno, "cannot lock %s", lockpath);
    }
    remove_dead_temporaries(g);
    if (o->mode == LSM_MIGRATE_START) {
        if (o->ndisks == 0)
            return lsm_error(-EINVAL, "no disk to migrate (--disk)");
        if (o->ndisks > LSM_MIGRATE_MAX_DISKS)
            return lsm_error(-EINVAL, "at most %d disks", LSM_MIGRATE_MAX_DISKS);
        if (!o->dst_domain)
            return lsm_error(-EINVAL, "no destination domain (--dst-dir or --dst-vg)");
        if (exists(g->journal))
            return lsm_error(-EEXIST, "a migration of domain '%s' is recorded in %s: finish "
                             "it with --resume or undo it with --rollback", o->domain,
                             g->journal);
        for (unsigned i = 0; i < o->ndisks; i++) {
            if (strlen(o->disks[i]) >= sizeof g->d[i].disk)
                return lsm_error(-EINVAL, "disk name '%s' is too long", o->disks[i]);
            for (unsigned j = 0; j < i; j++)
                if (!strcmp(o->disks[i], o->disks[j]))
                    return lsm_error(-EINVAL, "disk %s named twice", o->disks[i]);
            strcpy(g->d[i].disk, o->disks[i]);
        }
        g->n = o->ndisks;
        struct lsm_domain *dom;
        int r = lsm_domain_open(g->dst_kind, g->dst_domain, &dom);
        if (r < 0)
            return r;
        lsm_domain_close(dom);
        snprintf(g->run, sizeof g->run, "%" PRIx64 "-%ld", (uint64_t)time(NULL), (long)getpid());
        return 0;
    }
    int r = load(g);
    if (r < 0)
        return r;
    /* what the command line gives must be what the journal says */
    if (o->ndisks) {
        bool same = o->ndisks == g->n;
        for (unsigned i = 0; same && i < g->n; i++)
            same = !strcmp(o->disks[i], g->d[i].disk);
        if (!same)
            return lsm_error(-EINVAL, "%s records other disks than --disk names", g->journal);
    }
    if (o->dst_domain && (strcmp(o->dst_domain, g->dst_domain) || o->dst_kind != g->dst_kind))
        return lsm_error(-EINVAL, "%s records destination %s, not %s", g->journal,
                         g->dst_domain, o->dst_domain);
    return 0;
}

/* Resume past the commit point: every disk's layers were synced before
 * the first pivot; the others' mirrors are restarted if needed, then
 * pivoted. */
static int finish_pivots(struct mig *g, char *pivot_why, size_t pivot_why_len)
{
    char why[400];
    int r;
    g->phase = "replicate";
    r = start_extender(g);
    for (unsigned i = 0; i < g->n && r == 0; i++)
        if (!g->d[i].pivoted && !g->d[i].synced)
            r = lsm_error(-EIO, "%s: the journal says its layers were not synced, yet a "
                          "disk pivoted", g->d[i].disk);
    unsigned todo = 0;
    for (unsigned i = 0; i < g->n; i++)
        todo += !g->d[i].pivoted;
    if (r == 0 && todo) {
        for (unsigned i = 0; i < g->n && r == 0; i++) {
            struct mdisk *d = &g->d[i];
            if (d->pivoted)
                continue;
            _cleanup_free_ char *mirror = NULL;
            r = disk_paths(d, NULL, &mirror);
            if (r == 0 && !mirror)
                r = start_mirror(g, d);
            else if (r == 0 && !lsm_same_file(mirror, d->dst[0]))
                r = lsm_error(-EBUSY, "%s is being mirrored onto %s, not by this "
                              "migration", d->disk, mirror);
            d->best_remaining = UINT64_MAX;
            d->best_ns = lsm_now_ns();
        }
        g->phase = "pivot";
        /* not watch(): it looks at every disk, and the pivoted ones have
         * no mirror any more */
        uint64_t t = lsm_now_ns();
        while (r == 0) {
            bool ready = true;
            for (unsigned i = 0; i < g->n && r == 0; i++) {
                struct mdisk *d = &g->d[i];
                if (d->pivoted)
                    continue;
                r = lsm_mirror_status(d->m, &d->st);
                if (r == 0 && (d->st.phase == LSM_MIRROR_FAILED ||
                               d->st.phase == LSM_MIRROR_NONE))
                    r = lsm_error(-EIO, "the mirror of %s %s", d->disk,
                                  d->st.phase == LSM_MIRROR_NONE ? "is gone" : "failed");
                ready = ready && d->st.phase == LSM_MIRROR_READY;
            }
            if (r < 0 || ready)
                break;
            int64_t ms = g->o->ready_timeout_ms ? g->o->ready_timeout_ms : DEFAULT_READY_MS;
            if (ms >= 0 && lsm_now_ns() - t >= (uint64_t)ms * 1000000ULL) {
                not_ready_reason(g, why, sizeof why);
                r = lsm_error(-ETIMEDOUT, "the mirrors were not ready within %.0f s: %s",
                              (double)ms / 1000, why);
                break;
            }
            if (lsm_now_ns() - g->last_report >= REPORT_NS)
                report(g, NULL);
            struct timespec ts = { 0, POLL_MS * 1000000L };
            nanosleep(&ts, NULL);
        }
        g->phase = "pivot";
        if (r == 0)
            r = pivot(g, pivot_why, pivot_why_len);
    }
    return r;
}

/* A disk turned out pivoted (a killed run's pivot that libvirtd finished
 * meanwhile) while going forward or rolling back: past the commit point
 * now.  Say why (the error that found it), then pivot the others. */
static int late_pivot(struct mig *g, char *pivot_why, size_t pivot_why_len)
{
    report(g, "%s: past the commit point, pivoting the others", lsm_last_error());
    lsm_error_clear();
    return finish_pivots(g, pivot_why, pivot_why_len);
}

int lsm_migrate(const struct lsm_migrate_opts *o, struct lsm_migrate_result *res)
{
    memset(res, 0, sizeof *res);
    struct mig g = { .o = o, .phase = "setup", .t0 = lsm_now_ns(), .lockfd = -1 };
    char why[512] = "";
    if (o->extend_policy)
        g.policy = *o->extend_policy;
    else
        lsm_extend_policy_default(&g.policy);
    int r = lsm_extend_policy_check(&g.policy);
    if (r == 0)
        r = setup(&g, o);
    if (r == 0)
        r = open_mirrors(&g);
    if (r < 0) {
        /* nothing was done */
        res->outcome = o->mode == LSM_MIGRATE_START ? LSM_MIGRATE_ROLLED_BACK : LSM_MIGRATE_STOPPED;
        snprintf(res->reason, sizeof res->reason, "%s", lsm_last_error());
        res->failed_phase = strdup("setup");
        fill_result(&g, res);
        mig_free(&g);
        return r;
    }

    bool from_snapshot = true;
    if (o->mode == LSM_MIGRATE_START) {
        for (unsigned i = 0; i < g.n && r == 0; i++) {
            struct mdisk *d = &g.d[i];
            _cleanup_free_ char *mirror = NULL;
            r = disk_paths(d, &d->old_leaf, &mirror);
            if (r == 0 && !d->old_leaf)
                r = lsm_error(-ENOTSUP, "%s has no local source (a network disk?): not supported",
                              d->disk);
            if (r == 0 && mirror)
                r = lsm_error(-EBUSY, "%s already has a block job (mirror onto %s)", d->disk,
                              mirror);
            if (r == 0)
                r = name_overlay(&g, d);
        }
        if (r == 0)
            r = precheck(&g);
        g.phase = "snapshot";
        if (r == 0)
            r = save(&g);
        if (r < 0) {
            snprintf(res->reason, sizeof res->reason, "%s", lsm_last_error());
            res->outcome = LSM_MIGRATE_ROLLED_BACK;
            res->failed_phase = strdup("setup");
            if (exists(g.journal) && r != -EEXIST)
                unlink(g.journal);     /* the one this run wrote */
            fill_result(&g, res);
            mig_free(&g);
            lsm_error(r, "%s", res->reason);
            return r;
        }
        report(&g, "migrating %u disk%s of domain %s to %s", g.n, g.n == 1 ? "" : "s", g.domain,
               g.dst_domain);
    } else {
        /* where the killed run got to, from the domain itself */
        for (unsigned i = 0; i < g.n && r == 0; i++) {
            struct mdisk *d = &g.d[i];
            _cleanup_free_ char *src = NULL;
            /* a pivot or abort the killed run asked for is carried out by
             * libvirtd without it: look once it has ended */
            r = lsm_mirror_settle(d->m, settle_ms(&g));
            if (r == 0)
                r = disk_paths(d, &src, NULL);
            if (r < 0)
                break;
            d->pivoted = src && d->ndst && lsm_same_file(src, d->dst[0]);
            d->snapshotted = d->pivoted || (src && lsm_same_file(src, d->overlay));
            if (d->pivoted)
                g.committed = true;
        }
        unsigned snaps = 0;
        for (unsigned i = 0; i < g.n; i++)
            snaps += g.d[i].snapshotted;
        if (r == 0 && snaps && snaps != g.n && !g.committed)
            r = lsm_error(-EIO, "only %u of %u disks run on their snapshot overlays: not "
                          "touching anything", snaps, g.n);
        if (r < 0) {
            snprintf(res->reason, sizeof res->reason, "%s", lsm_last_error());
            res->outcome = LSM_MIGRATE_STOPPED;
            res->failed_phase = strdup("resume");
            fill_result(&g, res);
            mig_free(&g);
            lsm_error(r, "%s", res->reason);
            return r;
        }
        from_snapshot = snaps == 0;
        report(&g, "%s of domain %s (journal %s): %s", o->mode == LSM_MIGRATE_RESUME ?
               "resuming the migration" : "rolling back the migration", g.domain, g.journal,
               g.committed ? "past the commit point" : from_snapshot ? "before the snapshot"
                                                                     : "snapshot taken");
        if (o->mode == LSM_MIGRATE_ROLLBACK && g.committed) {
            r = lsm_error(-EBUSY, "past the commit point (a disk already runs on its "
                          "destination): it cannot be rolled back; finish it with --resume");
            snprintf(res->reason, sizeof res->reason, "%s", lsm_last_error());
            res->outcome = LSM_MIGRATE_PARTIAL;
            fill_result(&g, res);
            mig_free(&g);
            lsm_error(r, "%s", res->reason);
            return r;
        }
    }

    char pivot_why[512] = "";
    if (o->mode == LSM_MIGRATE_ROLLBACK) {
        r = rollback(&g, false);
    } else if (g.committed) {
        r = finish_pivots(&g, pivot_why, sizeof pivot_why);
    } else {
        enum start from = from_snapshot ? FROM_SNAPSHOT : FROM_CLONE;
        if (o->mode == LSM_MIGRATE_RESUME && !from_snapshot && g.cloned && clone_intact(&g)) {
            /* the killed run's clone is whole: keep it, its mirrors (or
             * start them again) and its syncs' journals */
            from = FROM_REPLICATE;
            report(&g, "the killed run's destination volumes are all there: resuming from the "
                   "replicate phase");
        } else if (o->mode == LSM_MIGRATE_RESUME) {
            /* before the commit point the destination is redone from the
             * start: abort what runs, remove what was created (and an
             * overlay the VM does not use), keep a snapshot taken */
            r = rollback(&g, !from_snapshot);
            if (r == 0)
                report(&g, "the killed run's destination side removed: starting again from the "
                       "%s", from_snapshot ? "snapshot" : "clone");
            else if (g.committed)
                r = late_pivot(&g, pivot_why, sizeof pivot_why);   /* a disk pivoted meanwhile */
        }
        if (r == 0 && !g.committed) {
            r = forward(&g, from, pivot_why, sizeof pivot_why);
            if (r == -EALREADY && g.committed) {
                r = late_pivot(&g, pivot_why, sizeof pivot_why);
            } else if (r < 0 && !g.committed) {
                snprintf(why, sizeof why, "%s", lsm_last_error());
                int rb = g.committed ? -EALREADY : rollback(&g, false);
                if (rb < 0 && g.committed) {
                    r = late_pivot(&g, pivot_why, sizeof pivot_why);
                    goto end;
                }
                res->failed_phase = strdup(g.phase);
                fill_result(&g, res);
                snprintf(res->reason, sizeof res->reason, "%s", why);
                if (rb == 0) {
                    res->outcome = LSM_MIGRATE_ROLLED_BACK;
                    unlink(g.journal);
                    lsm_error(r, "%s; rolled back: every disk stays on its source, %u volume%s "
                              "this run created removed", why, g.removed,
                              g.removed == 1 ? "" : "s");
                } else {
                    res->outcome = LSM_MIGRATE_STOPPED;
                    /* the rollback's error, copied: save() can replace it,
                     * and lsm_error() formats into the buffer it is in */
                    char rb_why[512];
                    snprintf(rb_why, sizeof rb_why, "%s", lsm_last_error());
                    save(&g);
                    lsm_error(r, "%s; the rollback did not finish (%s)%s%s: run --rollback "
                              "again", why, rb_why, g.left[0] ? "; left: " : "", g.left);
                }
                g.phase = "rollback";
                report(&g, "%s", lsm_last_error());
                mig_free(&g);
                return r;
            }
        }
    }

end:
    if (r == 0 || !g.committed) {
        if (r == 0 && o->mode == LSM_MIGRATE_ROLLBACK) {
            res->outcome = LSM_MIGRATE_ROLLED_BACK;
            unlink(g.journal);
            g.phase = "rollback";
            report(&g, "rolled back: every disk on its source, %u volume%s removed", g.removed,
                   g.removed == 1 ? "" : "s");
        } else if (r == 0) {
            res->outcome = LSM_MIGRATE_DONE;
            unlink(g.journal);
            g.phase = "done";
            report(&g, "every disk runs on its destination");
        } else {
            snprintf(why, sizeof why, "%s", lsm_last_error());
            res->outcome = LSM_MIGRATE_STOPPED;
            snprintf(res->reason, sizeof res->reason, "%s", why);
            save(&g);
            lsm_error(r, "%s%s%s", why, g.left[0] ? "; left: " : "", g.left);
        }
    } else {
        /* past the commit point */
        snprintf(why, sizeof why, "%s", pivot_why[0] ? pivot_why : lsm_last_error());
        res->outcome = LSM_MIGRATE_PARTIAL;
        res->failed_phase = strdup(g.phase);
        snprintf(res->reason, sizeof res->reason, "%s", why);
        save(&g);
        lsm_error(r, "past the commit point, not every disk pivoted: %s; the others keep "
                  "mirroring: run --resume", why);
    }
    fill_result(&g, res);
    mig_free(&g);
    return r;
}

void lsm_migrate_result_free(struct lsm_migrate_result *res)
{
    for (unsigned i = 0; i < res->ndisks; i++) {
        free(res->disk[i].active);
        free(res->disk[i].dst_top);
        free(res->disk[i].overlay);
    }
    free(res->journal);
    free(res->failed_phase);
    memset(res, 0, sizeof *res);
}
