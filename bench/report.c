/* The end-of-run reports: fio-like text and fio-modelled JSON. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "bench-cli.h"
#include "config.h"
#include "error.h"
#include "json-util.h"
#include "util.h"

static const double percentiles[] = { 50.0, 90.0, 99.0, 99.9, 99.99 };
/* fio's default percentile_list, for the JSON */
static const double fio_percentiles[] = { 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99,
                                          99.5, 99.9, 99.95, 99.99 };

void bench_agg_add(struct bench_agg *agg, const struct bench_thread *t)
{
    for (int d = 0; d < 2; d++) {
        agg->dir[d].bytes += t->dir[d].bytes;
        agg->dir[d].ios += t->dir[d].ios;
        bench_hist_merge(&agg->dir[d].clat, &t->dir[d].clat);
        bench_hist_merge(&agg->dir[d].slat, &t->dir[d].slat);
        bench_hist_merge(&agg->dir[d].lat, &t->dir[d].lat);
    }
    agg->sync.ios += t->sync.ios;
    bench_hist_merge(&agg->sync.clat, &t->sync.clat);
    if (agg->njobs == 0 || t->start_ns < agg->start_ns)
        agg->start_ns = t->start_ns;
    if (t->end_ns > agg->end_ns)
        agg->end_ns = t->end_ns;
    agg->usr_sec += t->usr_sec;
    agg->sys_sec += t->sys_sec;
    agg->verified += t->verified;
    if (t->error && !agg->error) {
        agg->error = t->error;
        agg->errmsg = t->errmsg;
    }
    if (!agg->engine || !*agg->engine)
        agg->engine = t->engine;
    agg->interrupted |= t->interrupted;
    agg->njobs++;
}

uint64_t bench_agg_runtime_ns(const struct bench_agg *agg)
{
    return agg->end_ns > agg->start_ns ? agg->end_ns - agg->start_ns : 0;
}

const char *bench_fmt_bin(double v, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
    unsigned i = 0;
    while (v >= 1000 && i + 1 < ARRAY_SIZE(units)) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%.0f%s", v, units[i]);
    else
        snprintf(buf, len, "%.*f%s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[i]);
    return buf;
}

static const char *fmt_dec(double v, char *buf, size_t len)
{
    static const char *const units[] = { "B", "kB", "MB", "GB", "TB", "PB" };
    unsigned i = 0;
    while (v >= 1000 && i + 1 < ARRAY_SIZE(units)) {
        v /= 1000;
        i++;
    }
    snprintf(buf, len, "%.*f%s", i == 0 ? 0 : v < 10 ? 2 : v < 100 ? 1 : 0, v, units[i]);
    return buf;
}

const char *bench_fmt_count(double v, char *buf, size_t len)
{
    static const char *const units[] = { "", "k", "M", "G" };
    unsigned i = 0;
    while (v >= 1000 && i + 1 < ARRAY_SIZE(units)) {
        v /= 1000;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%.0f", v);
    else
        snprintf(buf, len, "%.*f%s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[i]);
    return buf;
}

const char *bench_fmt_exact(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB" };
    unsigned i = 0;
    while (i + 1 < ARRAY_SIZE(units) && v >= 1024 && v % 1024 == 0) {
        v /= 1024;
        i++;
    }
    snprintf(buf, len, "%" PRIu64 "%s", v, units[i]);
    return buf;
}

static double per_sec(uint64_t n, uint64_t ns)
{
    return ns ? (double)n * 1e9 / (double)ns : 0.0;
}

/* All clones of a group; CPU from the whole process (with the backends'
 * worker threads), where a single clone's entry has only its own thread. */
static void group_sum(const struct bench_group *g, struct bench_agg *sum)
{
    memset(sum, 0, sizeof *sum);
    for (unsigned i = 0; i < g->nthreads; i++)
        bench_agg_add(sum, &g->threads[i]);
    sum->usr_sec = g->proc_usr_sec;
    sum->sys_sec = g->proc_sys_sec;
}

/* ---- normal ---- */

static void print_dir(FILE *f, const char *label, const struct bench_dir_stats *s,
                      uint64_t runtime_ns)
{
    char b1[32], b2[32], b3[32], b4[32];
    uint64_t ms = runtime_ns / 1000000;
    fprintf(f, "  %s: IOPS=%s, BW=%s/s (%s/s)(%s/%" PRIu64 "msec)\n", label,
            bench_fmt_count(per_sec(s->ios, runtime_ns), b1, sizeof b1),
            bench_fmt_bin(per_sec(s->bytes, runtime_ns), b2, sizeof b2),
            fmt_dec(per_sec(s->bytes, runtime_ns), b3, sizeof b3),
            bench_fmt_bin((double)s->bytes, b4, sizeof b4), ms);
    const struct bench_hist *h = &s->clat;
    if (h->count == 0)
        return;
    /* the unit that keeps the typical (mean) latency readable */
    const char *unit = "nsec";
    double div = 1, mean = bench_hist_mean(h);
    if (mean >= 10e6) {
        unit = "msec";
        div = 1e6;
    } else if (mean >= 10e3) {
        unit = "usec";
        div = 1e3;
    }
    fprintf(f, "    clat (%s): min=%.0f, max=%.0f, avg=%.2f\n", unit, (double)h->min / div,
            (double)h->max / div, mean / div);
    fprintf(f, "     clat percentiles (%s):", unit);
    for (size_t i = 0; i < ARRAY_SIZE(percentiles); i++)
        fprintf(f, "%s %.2fth=[%.0f]", i ? "," : "", percentiles[i],
                (double)bench_hist_percentile(h, percentiles[i]) / div);
    fputc('\n', f);
}

static void print_job(FILE *f, const struct bench_group *g, const struct bench_agg *a)
{
    const struct bench_job *job = g->job;
    char bs[32];
    uint64_t rt = bench_agg_runtime_ns(a);
    fprintf(f, "%s: (groupid=%u, jobs=%u): err=%2d: rw=%s, bs=%s, iodepth=%u, ioengine=%s, "
            "direct=%d%s\n", job->name, g->id, a->njobs, -a->error, bench_rw_name(job->rw),
            bench_fmt_exact(job->bs, bs, sizeof bs), job->iodepth,
            a->engine && *a->engine ? a->engine : bench_engine_name(job->ioengine),
            job->direct, a->interrupted ? " (interrupted)" : "");
    if (job->description)
        fprintf(f, "  Description  : [%s]\n", job->description);
    if (a->dir[BENCH_DIR_READ].ios || bench_rw_reads(job->rw))
        print_dir(f, "read", &a->dir[BENCH_DIR_READ], rt);
    if (a->dir[BENCH_DIR_WRITE].ios || bench_rw_writes(job->rw))
        print_dir(f, "write", &a->dir[BENCH_DIR_WRITE], rt);
    double secs = (double)rt / 1e9;
    fprintf(f, "  cpu          : usr=%.2f%%, sys=%.2f%%\n",
            secs > 0 ? 100.0 * a->usr_sec / secs / a->njobs : 0.0,
            secs > 0 ? 100.0 * a->sys_sec / secs / a->njobs : 0.0);
    if (job->verify == BENCH_VERIFY_PATTERN)
        fprintf(f, "  verify       : %" PRIu64 " blocks checked\n", a->verified);
    if (a->error)
        fprintf(f, "  error        : %s\n", a->errmsg && *a->errmsg ? a->errmsg : strerror(-a->error));
}

static void print_group_line(FILE *f, const char *label, const struct bench_group *g, int d,
                             const struct bench_agg *sum)
{
    char b1[32], b2[32], b3[32], b4[32];
    uint64_t rt = bench_agg_runtime_ns(sum);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (unsigned i = 0; i < g->nthreads; i++) {
        uint64_t r = g->threads[i].end_ns - g->threads[i].start_ns;
        lo = MIN(lo, r);
        hi = MAX(hi, r);
    }
    const struct bench_dir_stats *s = &sum->dir[d];
    fprintf(f, "  %5s: bw=%s/s (%s/s), io=%s (%s), run=%" PRIu64 "-%" PRIu64 "msec\n", label,
            bench_fmt_bin(per_sec(s->bytes, rt), b1, sizeof b1),
            fmt_dec(per_sec(s->bytes, rt), b2, sizeof b2),
            bench_fmt_bin((double)s->bytes, b3, sizeof b3), fmt_dec((double)s->bytes, b4, sizeof b4),
            lo / 1000000, hi / 1000000);
}

void bench_report_normal(FILE *f, const struct bench_report *rep)
{
    static struct bench_agg a, sum;     /* large (histograms): not on the stack */
    for (size_t gi = 0; gi < rep->ngroups; gi++) {
        const struct bench_group *g = &rep->groups[gi];
        if (!g->ran || g->nthreads == 0)
            continue;
        group_sum(g, &sum);
        if (g->job->group_reporting || g->nthreads == 1) {
            print_job(f, g, &sum);
        } else {
            for (unsigned i = 0; i < g->nthreads; i++) {
                memset(&a, 0, sizeof a);
                bench_agg_add(&a, &g->threads[i]);
                print_job(f, g, &a);
            }
        }
        /* jobs that run together share a group id; the lines below sum
         * this job's clones only, so they say so when it is not alone */
        bool alone = true;
        for (size_t k = 0; k < rep->ngroups; k++)
            if (k != gi && rep->groups[k].ran && rep->groups[k].id == g->id)
                alone = false;
        if (alone)
            fprintf(f, "\nRun status group %u (all jobs):\n", g->id);
        else
            fprintf(f, "\nRun status group %u (job %s):\n", g->id, g->job->name);
        if (sum.dir[BENCH_DIR_READ].ios || bench_rw_reads(g->job->rw))
            print_group_line(f, "READ", g, BENCH_DIR_READ, &sum);
        if (sum.dir[BENCH_DIR_WRITE].ios || bench_rw_writes(g->job->rw))
            print_group_line(f, "WRITE", g, BENCH_DIR_WRITE, &sum);
        if (gi + 1 < rep->ngroups)
            fputc('\n', f);
    }
}

/* ---- JSON ---- */

#define JADD(obj, key, val) json_object_object_add((obj), (key), (val))

/* fio's latency object: min, max, mean, stddev, N [, percentile] */
static struct json_object *json_lat(const struct bench_hist *h, bool pct)
{
    struct json_object *c = json_object_new_object();
    JADD(c, "min", json_object_new_int64((int64_t)h->min));
    JADD(c, "max", json_object_new_int64((int64_t)h->max));
    JADD(c, "mean", json_object_new_double(bench_hist_mean(h)));
    JADD(c, "stddev", json_object_new_double(bench_hist_stddev(h)));
    JADD(c, "N", json_object_new_int64((int64_t)h->count));
    if (pct && h->count) {     /* fio leaves the percentiles out when there are none */
        struct json_object *p = json_object_new_object();
        for (size_t i = 0; i < ARRAY_SIZE(fio_percentiles); i++) {
            char key[32];
            snprintf(key, sizeof key, "%f", fio_percentiles[i]);
            JADD(p, key, json_object_new_int64(
                     (int64_t)bench_hist_percentile(h, fio_percentiles[i])));
        }
        JADD(c, "percentile", p);
    }
    return c;
}

static struct json_object *json_dir(const struct bench_dir_stats *s, uint64_t runtime_ns)
{
    struct json_object *o = json_object_new_object();
    double bw = per_sec(s->bytes, runtime_ns);
    JADD(o, "io_bytes", json_object_new_int64((int64_t)s->bytes));
    JADD(o, "io_kbytes", json_object_new_int64((int64_t)(s->bytes / 1024)));
    JADD(o, "bw_bytes", json_object_new_int64((int64_t)bw));
    JADD(o, "bw", json_object_new_int64((int64_t)(bw / 1024)));
    JADD(o, "iops", json_object_new_double(per_sec(s->ios, runtime_ns)));
    JADD(o, "runtime", json_object_new_int64((int64_t)(runtime_ns / 1000000)));
    JADD(o, "total_ios", json_object_new_int64((int64_t)s->ios));
    JADD(o, "short_ios", json_object_new_int(0));
    JADD(o, "drop_ios", json_object_new_int(0));
    JADD(o, "slat_ns", json_lat(&s->slat, false));
    JADD(o, "clat_ns", json_lat(&s->clat, true));
    JADD(o, "lat_ns", json_lat(&s->lat, false));
    return o;
}

/* Options as fio prints them: strings, as given; like fio, a bare
 * boolean key (time_based, stonewall, ...) is not listed */
static struct json_object *json_opts(const struct bench_job *job, bool global)
{
    struct json_object *o = json_object_new_object();
    for (size_t i = 0; i < job->nopts; i++)
        if (job->opts[i].global == global && job->opts[i].value)
            JADD(o, job->opts[i].key, lsm_json_string(job->opts[i].value));
    return o;
}

/* A monotonic time as milliseconds since the epoch */
static int64_t wall_ms(uint64_t mono_ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t real = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return (real - ((int64_t)lsm_now_ns() - (int64_t)mono_ns)) / 1000000;
}

static struct json_object *json_job(const struct bench_group *g, const struct bench_agg *a)
{
    const struct bench_job *job = g->job;
    struct json_object *o = json_object_new_object();
    uint64_t rt = bench_agg_runtime_ns(a);
    double secs = (double)rt / 1e9;
    JADD(o, "jobname", lsm_json_string(job->name));
    JADD(o, "groupid", json_object_new_int((int)g->id));
    JADD(o, "error", json_object_new_int(-a->error));
    if (a->error)
        JADD(o, "error_message", lsm_json_string(a->errmsg ? a->errmsg : ""));
    JADD(o, "numjobs", json_object_new_int((int)a->njobs));
    JADD(o, "interrupted", json_object_new_boolean(a->interrupted));
    /* fio's fields first, then lsm-sync's own */
    JADD(o, "elapsed", json_object_new_int64((int64_t)((a->end_ns > a->start_ns ?
                                                        a->end_ns - a->start_ns : 0) / 1000000000ULL + 1)));
    struct json_object *opts = json_opts(job, false);
    JADD(o, "job options", opts);
    JADD(o, "read", json_dir(&a->dir[BENCH_DIR_READ], rt));
    JADD(o, "write", json_dir(&a->dir[BENCH_DIR_WRITE], rt));
    static const struct bench_dir_stats none;   /* no trims here */
    JADD(o, "trim", json_dir(&none, rt));
    struct json_object *sync = json_object_new_object();
    JADD(sync, "total_ios", json_object_new_int64((int64_t)a->sync.ios));
    JADD(sync, "lat_ns", json_lat(&a->sync.clat, true));
    JADD(o, "sync", sync);
    JADD(o, "job_runtime", json_object_new_int64((int64_t)(rt / 1000000)));
    JADD(o, "usr_cpu", json_object_new_double(secs > 0 ? 100.0 * a->usr_sec / secs / a->njobs : 0));
    JADD(o, "sys_cpu", json_object_new_double(secs > 0 ? 100.0 * a->sys_sec / secs / a->njobs : 0));
    JADD(o, "ioengine", lsm_json_string(a->engine && *a->engine ? a->engine
                                        : bench_engine_name(job->ioengine)));
    JADD(o, "elapsed_ms", json_object_new_int64((int64_t)(rt / 1000000)));
    if (job->verify)
        JADD(o, "verified_blocks", json_object_new_int64((int64_t)a->verified));
    if (job->description)
        JADD(o, "desc", lsm_json_string(job->description));
    struct json_object *own = json_object_new_object();
    JADD(own, "engine", lsm_json_string(a->engine && *a->engine ? a->engine
                                        : bench_engine_name(job->ioengine)));
    JADD(own, "size", json_object_new_int64((int64_t)g->prep.size));
    JADD(own, "bs", json_object_new_int64((int64_t)job->bs));
    JADD(own, "iodepth", json_object_new_int((int)job->iodepth));
    JADD(own, "start_ms", json_object_new_int64(wall_ms(a->start_ns)));
    JADD(own, "end_ms", json_object_new_int64(wall_ms(a->end_ns)));
    JADD(o, "lsm-sync", own);
    return o;
}

int bench_report_json(FILE *f, const struct bench_report *rep)
{
    static struct bench_agg a, sum;
    struct json_object *root = json_object_new_object();
    struct json_object *jobs = json_object_new_array();
    struct json_object *groups = json_object_new_array();
    time_t now = time(NULL);
    /* fio-parsing tools look for "fio version"; the value says who wrote it */
    JADD(root, "fio version", json_object_new_string("lsm-sync-" LSM_VERSION));
    JADD(root, "lsm-sync version", json_object_new_string("lsm-sync-" LSM_VERSION));
    JADD(root, "timestamp", json_object_new_int64((int64_t)now));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    JADD(root, "timestamp_ms", json_object_new_int64((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000));
    char tbuf[64];
    struct tm tm;
    strftime(tbuf, sizeof tbuf, "%a %b %e %H:%M:%S %Y", localtime_r(&now, &tm));
    JADD(root, "time", json_object_new_string(tbuf));
    for (size_t gi = 0; gi < rep->ngroups; gi++)
        if (rep->groups[gi].job) {
            JADD(root, "global options", json_opts(rep->groups[gi].job, true));
            break;
        }
    for (size_t gi = 0; gi < rep->ngroups; gi++) {
        const struct bench_group *g = &rep->groups[gi];
        if (!g->ran || g->nthreads == 0)
            continue;
        group_sum(g, &sum);
        if (g->job->group_reporting || g->nthreads == 1) {
            json_object_array_add(jobs, json_job(g, &sum));
        } else {
            for (unsigned i = 0; i < g->nthreads; i++) {
                memset(&a, 0, sizeof a);
                bench_agg_add(&a, &g->threads[i]);
                json_object_array_add(jobs, json_job(g, &a));
            }
        }
        json_object_array_add(groups, json_job(g, &sum));
    }
    JADD(root, "jobs", jobs);
    JADD(root, "groups", groups);
    if (rep->ndisks) {
        struct json_object *du = json_object_new_array();
        for (size_t i = 0; i < rep->ndisks; i++) {
            const struct bench_disk_util *d = &rep->disks[i];
            struct json_object *o = json_object_new_object();
            JADD(o, "name", lsm_json_string(d->name));
            JADD(o, "read_ios", json_object_new_int64((int64_t)d->read_ios));
            JADD(o, "write_ios", json_object_new_int64((int64_t)d->write_ios));
            JADD(o, "read_merges", json_object_new_int64((int64_t)d->read_merges));
            JADD(o, "write_merges", json_object_new_int64((int64_t)d->write_merges));
            JADD(o, "read_ticks", json_object_new_int64((int64_t)d->read_ticks));
            JADD(o, "write_ticks", json_object_new_int64((int64_t)d->write_ticks));
            JADD(o, "in_queue", json_object_new_int64((int64_t)d->in_queue));
            JADD(o, "util", json_object_new_double(d->util));
            json_object_array_add(du, o);
        }
        JADD(root, "disk_util", du);
    }
    const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
                                                   JSON_C_TO_STRING_NOSLASHESCAPE);
    int r = fprintf(f, "%s\n", s) < 0 ? -EIO : 0;
    json_object_put(root);
    return r;
}

/* ---- disk_util ---- */

/* Counters of major:minor from /proc/diskstats; false if it is not listed. */
static bool diskstats_read(unsigned major, unsigned minor, struct bench_disk_util *d)
{
    FILE *f = fopen("/proc/diskstats", "re");
    if (!f)
        return false;
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned ma, mi;
        char name[64];
        unsigned long long v[11];
        if (sscanf(line, " %u %u %63s %llu %llu %*u %llu %llu %llu %*u %llu %*u %llu %llu",
                   &ma, &mi, name, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &v[7]) != 11 || ma != major || mi != minor)
            continue;
        snprintf(d->name, sizeof d->name, "%s", name);
        d->major = ma;
        d->minor = mi;
        d->read_ios = v[0];
        d->read_merges = v[1];
        d->read_ticks = v[2];
        d->write_ios = v[3];
        d->write_merges = v[4];
        d->write_ticks = v[5];
        d->io_ticks = v[6];
        d->in_queue = v[7];
        found = true;
    }
    fclose(f);
    return found;
}

static void disk_add_path(struct bench_report *rep, const char *path)
{
    struct stat st;
    if (!path || stat(path, &st) < 0)
        return;
    dev_t dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
    unsigned ma = major(dev), mi = minor(dev);
    for (size_t i = 0; i < rep->ndisks; i++)
        if (rep->disks[i].major == ma && rep->disks[i].minor == mi)
            return;
    if (rep->ndisks == ARRAY_SIZE(rep->disks))
        return;
    struct bench_disk_util d = { 0 };
    if (diskstats_read(ma, mi, &d))
        rep->disks[rep->ndisks++] = d;
}

void bench_disk_util_start(struct bench_report *rep)
{
    rep->ndisks = 0;
    for (size_t i = 0; i < rep->ngroups; i++) {
        const struct bench_job *job = rep->groups[i].job;
        if (!job)
            continue;
        disk_add_path(rep, job->rw == BENCH_RW_COPY ? job->src : job->filename);
        if (job->rw == BENCH_RW_COPY)
            disk_add_path(rep, job->dst);
    }
}

void bench_disk_util_finish(struct bench_report *rep, uint64_t elapsed_ns)
{
    size_t n = 0;
    for (size_t i = 0; i < rep->ndisks; i++) {
        struct bench_disk_util *d = &rep->disks[i], now;
        if (!diskstats_read(d->major, d->minor, &now))
            continue;
        now.read_ios -= d->read_ios;
        now.read_merges -= d->read_merges;
        now.read_ticks -= d->read_ticks;
        now.write_ios -= d->write_ios;
        now.write_merges -= d->write_merges;
        now.write_ticks -= d->write_ticks;
        now.io_ticks -= d->io_ticks;
        now.in_queue -= d->in_queue;
        double ms = (double)elapsed_ns / 1e6;
        now.util = ms > 0 ? 100.0 * (double)now.io_ticks / ms : 0;
        if (now.util > 100)
            now.util = 100;
        rep->disks[n++] = now;
    }
    rep->ndisks = n;
}
