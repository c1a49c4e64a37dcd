/* lsm-sync bench: fio-style jobs on the project's own I/O path. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench-cli.h"
#include "cleanup.h"
#include "cli/cli.h"
#include "util.h"

#define CMD "bench"
#define SAMPLE_NS 100000000ULL      /* time series: 100 ms */
#define PROGRESS_NS 500000000ULL    /* live line: twice a second */

static int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    __atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
}

static void usage(FILE *f)
{
    fprintf(f,
"Usage: lsm-sync bench [OPTIONS] JOBFILE...\n"
"       lsm-sync bench [OPTIONS] [--KEY=VALUE...] --name=JOB [--KEY=VALUE...]...\n"
"\n"
"Measure the I/O path (io_uring, libaio, psync) with fio-style jobs.  Job files\n"
"are INI like fio's: [global] then one [section] per job, key=value lines.\n"
"On the command line, options before the first --name are global.\n"
"\n"
"Job keys:\n"
"  rw=read|write|randread|randwrite|randrw|copy   bs=SIZE (4k)   iodepth=N (1)\n"
"  iodepth_batch_submit=N (1: submit each request at once; 0: iodepth)\n"
"  ioengine=uring|aio|psync|auto|nbd (auto)   direct=0|1   size=SIZE   runtime=TIME\n"
"  filename=nbd://HOST/EXPORT, nbd+unix:///EXPORT?socket=PATH (or uri=): an NBD export\n"
"  time_based   numjobs=N   filename=PATH (copy: SRC:DST, or src= dst=)\n"
"  rwmixread=PCT (50)   fixedbufs   registerfiles   verify=pattern|none\n"
"  mem=mmaphuge|malloc (mmaphuge: buffers in transparent huge pages, as the\n"
"    copy engine's; malloc: plain pages, fio's default)\n"
"  scramble_buffers=0|1 (1: stamp every 512 bytes of a write, against dedup)\n"
"  randseed=N   name=NAME   stonewall   group_reporting\n"
"  allow_mounted_write=0|1 (0: refuse to write to a block device that is\n"
"    mounted or held by another program, as fio does)\n"
"  Sizes take k, m, g, t suffixes (powers of 1024); times us, ms, s, m, h (default s).\n"
"\n"
"Options:\n"
"  --output-format=normal|json   report format (normal)\n"
"  --plot=FILE.svg               draw bandwidth and p99 latency over time\n"
"  --eta=auto|always|never       live progress line on stderr (auto: if a terminal)\n"
"  -h, --help                    this help\n"
"\n"
"Exit status: 0 done, 1 an I/O or verify error or interrupted (SIGINT/SIGTERM;\n"
"the report of what was done is printed first), 2 bad options or job file.\n");
}

enum eta_mode { ETA_AUTO, ETA_ALWAYS, ETA_NEVER };

struct opts {
    bool json;
    const char *plot;
    enum eta_mode eta;
    char **files;
    int nfiles;
    char **jobopts;
    int njobopts;
};

/* Value of "--opt=v" or "--opt v"; NULL (and a usage message) if missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (a[n] == '=')
        return a + n + 1;
    if (*i + 1 < argc) {
        (*i)++;
        return argv[*i];
    }
    cli_usage_error(CMD, "%s needs a value", name);
    return NULL;
}

static bool is_opt(const char *a, const char *name)
{
    size_t n = strlen(name);
    return !strncmp(a, name, n) && (a[n] == '\0' || a[n] == '=');
}

/* Returns -1 to go on, or an exit status. */
static int parse_args(int argc, char **argv, struct opts *o, char **jobbuf)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (is_opt(a, "--output-format")) {
            if (!(v = opt_value(argc, argv, &i, "--output-format")))
                return EXIT_USAGE;
            if (!strcmp(v, "json"))
                o->json = true;
            else if (!strcmp(v, "normal"))
                o->json = false;
            else
                return cli_usage_error(CMD, "--output-format must be 'normal' or 'json', "
                                       "not '%s'", v);
        } else if (is_opt(a, "--plot")) {
            if (!(v = opt_value(argc, argv, &i, "--plot")))
                return EXIT_USAGE;
            o->plot = v;
        } else if (is_opt(a, "--eta")) {
            if (!(v = opt_value(argc, argv, &i, "--eta")))
                return EXIT_USAGE;
            if (!strcmp(v, "auto"))
                o->eta = ETA_AUTO;
            else if (!strcmp(v, "always"))
                o->eta = ETA_ALWAYS;
            else if (!strcmp(v, "never"))
                o->eta = ETA_NEVER;
            else
                return cli_usage_error(CMD, "--eta must be 'auto', 'always' or 'never', not '%s'",
                                       v);
        } else if (!strncmp(a, "--", 2) && a[2]) {
            /* a job option: "--key=value", "--key value" or a bare boolean "--key" */
            const char *eq = strchr(a, '=');
            if (!eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 &&
                bench_key_known(a + 2) && !bench_key_is_bool(a + 2)) {
                size_t n = strlen(a) + strlen(argv[i + 1]) + 2;
                char *joined = malloc(n);
                if (!joined) {
                    cli_error(CMD, "out of memory");
                    return EXIT_OPERATIONAL;
                }
                snprintf(joined, n, "%s=%s", a, argv[i + 1]);
                jobbuf[o->njobopts] = joined;
                o->jobopts[o->njobopts++] = joined;
                i++;
            } else {
                o->jobopts[o->njobopts++] = argv[i];
            }
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(CMD, "unknown option '%s'", a);
        } else {
            o->files[o->nfiles++] = argv[i];
        }
    }
    if (o->nfiles && o->njobopts)
        return cli_usage_error(CMD, "job options on the command line ('%s') cannot be mixed "
                               "with a job file", o->jobopts[0]);
    if (!o->nfiles && !o->njobopts)
        return cli_usage_error(CMD, "no jobs: give a job file or job options "
                               "(--name=j1 --rw=randread --filename=PATH ...)");
    return -1;
}

/* ---- live progress ---- */

static char rw_letter(enum bench_rw rw)
{
    switch (rw) {
    case BENCH_RW_READ: return 'R';
    case BENCH_RW_RANDREAD: return 'r';
    case BENCH_RW_WRITE: return 'W';
    case BENCH_RW_RANDWRITE: return 'w';
    case BENCH_RW_RANDRW: return 'm';
    case BENCH_RW_COPY: return 'c';
    }
    return '?';
}

struct progress {
    uint64_t last_ns, last_bytes, last_ios;
    bool shown;
};

static void progress_line(struct progress *p, const struct bench_group *g, uint64_t start_ns,
                          uint64_t now)
{
    const struct bench_job *job = g->job;
    uint64_t bytes = 0, ios = 0;
    unsigned running = 0;
    for (unsigned i = 0; i < g->nthreads; i++) {
        const struct bench_thread *t = &g->threads[i];
        for (int d = 0; d < 2; d++) {
            bytes += __atomic_load_n(&t->live_bytes[d], __ATOMIC_RELAXED);
            ios += __atomic_load_n(&t->live_ios[d], __ATOMIC_RELAXED);
        }
        running += !__atomic_load_n(&t->finished, __ATOMIC_ACQUIRE);
    }
    double dt = p->last_ns && now > p->last_ns ? (double)(now - p->last_ns) / 1e9 : 0;
    double bw = dt > 0 ? (double)(bytes - p->last_bytes) / dt : 0;
    double iops = dt > 0 ? (double)(ios - p->last_ios) / dt : 0;
    p->last_ns = now;
    p->last_bytes = bytes;
    p->last_ios = ios;

    double elapsed = (double)(now - start_ns) / 1e9;
    double frac = 0, eta = 0;
    if (job->runtime_ns) {
        frac = elapsed / ((double)job->runtime_ns / 1e9);
        eta = (double)job->runtime_ns / 1e9 - elapsed;
    }
    if (!job->time_based) {
        uint64_t total = g->prep.size * g->nthreads * (job->rw == BENCH_RW_COPY ? 2 : 1);
        double f = total ? (double)bytes / (double)total : 0;
        if (f > frac) {
            frac = f;
            eta = f > 0 ? elapsed / f - elapsed : 0;
        }
    }
    if (frac > 1)
        frac = 1;
    if (eta < 0)
        eta = 0;
    char b1[32], b2[32];
    unsigned e = (unsigned)(eta + 0.5);
    fprintf(stderr, "\rJobs: %u [%c] [%.1f%% done] [%s/s][%s IOPS] [eta %02um:%02us]\033[K",
            running, rw_letter(job->rw), frac * 100, bench_fmt_bin(bw, b1, sizeof b1),
            bench_fmt_count(iops, b2, sizeof b2), e / 60, e % 60);
    fflush(stderr);
    p->shown = true;
}

/* ---- running ---- */

/* Start the clones of one job; they run until they finish. */
static int group_start(struct bench_group *g, uint64_t epoch)
{
    struct bench_job *job = g->job;
    g->threads = calloc(job->numjobs, sizeof *g->threads);
    g->tids = calloc(job->numjobs, sizeof *g->tids);
    if (!g->threads || !g->tids) {
        cli_error(CMD, "out of memory for %u jobs", job->numjobs);
        return EXIT_OPERATIONAL;
    }
    /* the clones leave SIGINT/SIGTERM to this thread */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = 0;
    for (unsigned i = 0; i < job->numjobs; i++) {
        struct bench_thread *t = &g->threads[i];
        t->job = job;
        t->index = i;
        t->size = g->prep.size;
        t->epoch_ns = epoch;
        t->sample_ns = SAMPLE_NS;
        t->stop = &stop_flag;
        int e = pthread_create(&g->tids[i], NULL, bench_thread_main, t);
        if (e != 0) {
            cli_error(CMD, "%s: cannot start job thread %u: %s", job->name, i, strerror(e));
            __atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
            rc = EXIT_OPERATIONAL;
            break;
        }
        g->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    g->ran = true;
    return rc;
}

static bool group_done(const struct bench_group *g)
{
    for (unsigned i = 0; i < g->nthreads; i++)
        if (!__atomic_load_n(&g->threads[i].finished, __ATOMIC_ACQUIRE))
            return false;
    return true;
}

/* Wait for the jobs of one stonewall batch (they run at the same time, as
 * fio's sections without stonewall do).  The progress line follows the
 * first job of the batch that is still running. */
static void batch_wait(struct bench_group *gv, size_t n, bool show)
{
    uint64_t start = lsm_now_ns(), next = start + PROGRESS_NS;
    struct progress p = { .last_ns = start };
    size_t shown = n;
    for (;;) {
        size_t running = n;
        for (size_t k = 0; k < n && running == n; k++)
            if (!group_done(&gv[k]))
                running = k;
        if (running == n)
            break;
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        uint64_t now = lsm_now_ns();
        if (show && now >= next) {
            if (running != shown) {
                p = (struct progress){ .last_ns = p.last_ns, .shown = p.shown };
                shown = running;
            }
            progress_line(&p, &gv[running], start, now);
            next = now + PROGRESS_NS;
        }
    }
    for (size_t k = 0; k < n; k++) {
        struct bench_group *g = &gv[k];
        for (unsigned i = 0; i < g->nthreads; i++)
            pthread_join(g->tids[i], NULL);
        free(g->tids);
        g->tids = NULL;
    }
    if (p.shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}

int cmd_bench(int argc, char **argv)
{
    struct opts o = { 0 };
    _cleanup_free_ char **files = calloc(argc, sizeof *files);
    _cleanup_free_ char **jobopts = calloc(argc, sizeof *jobopts);
    _cleanup_free_ char **jobbuf = calloc(argc, sizeof *jobbuf);   /* joined "--k=v" */
    if (!files || !jobopts || !jobbuf) {
        cli_error(CMD, "out of memory");
        return EXIT_OPERATIONAL;
    }
    o.files = files;
    o.jobopts = jobopts;
    struct bench_jobs jobs = { 0 };
    struct bench_report rep = { .sample_ns = SAMPLE_NS };
    int rc = parse_args(argc, argv, &o, jobbuf);
    if (rc >= 0)
        goto out;
    rc = 0;

    lsm_error_clear();
    int e = 0;
    for (int i = 0; i < o.nfiles && e == 0; i++)
        e = bench_jobfile_load(o.files[i], &jobs);
    if (o.njobopts)
        e = bench_args_parse(o.njobopts, o.jobopts, &jobs);
    if (e < 0) {
        cli_error(CMD, "%s", lsm_last_error());
        rc = e == -EINVAL ? EXIT_USAGE : EXIT_OPERATIONAL;
        goto out;
    }

    rep.groups = calloc(jobs.n, sizeof *rep.groups);
    if (!rep.groups) {
        cli_error(CMD, "out of memory");
        rc = EXIT_OPERATIONAL;
        goto out;
    }
    rep.ngroups = jobs.n;

    bool show = o.eta == ETA_ALWAYS || (o.eta == ETA_AUTO && isatty(STDERR_FILENO));
    struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND }, oint, oterm;
    sigemptyset(&sa.sa_mask);
    __atomic_store_n(&stop_flag, 0, __ATOMIC_RELAXED);
    sigaction(SIGINT, &sa, &oint);
    sigaction(SIGTERM, &sa, &oterm);

    /* fio's synchronous engine does one request at a time, whatever iodepth */
    for (size_t i = 0; i < jobs.n; i++)
        if (jobs.v[i].ioengine == LSM_IO_PSYNC && jobs.v[i].iodepth > 1) {
            fprintf(stderr, "%s: note: both iodepth >= 1 and synchronous I/O engine are "
                    "selected, queue depth will be capped at 1\n", jobs.v[i].name);
            jobs.v[i].iodepth = 1;
        }

    /* Jobs run in batches: a job with stonewall waits for every job before
     * it; the jobs between two stonewalls run at the same time (fio's
     * semantics).  The time series leaves out the layout steps: each
     * batch's samples continue where the previous batch's ended. */
    uint64_t timeline = 0;
    bool failed = false;
    unsigned groupid = 0;
    for (size_t i = 0; i < jobs.n; i++)
        rep.groups[i].job = &jobs.v[i];
    bench_disk_util_start(&rep);
    uint64_t run_t0 = lsm_now_ns();
    for (size_t first = 0; first < jobs.n && !failed &&
                           !__atomic_load_n(&stop_flag, __ATOMIC_RELAXED);) {
        size_t end = first + 1;
        while (end < jobs.n && !jobs.v[end].stonewall)
            end++;
        size_t prepared = first;
        for (size_t i = first; i < end; i++) {
            struct bench_group *g = &rep.groups[i];
            g->job = &jobs.v[i];
            /* reporting groups: stonewall and new_group start one, as in fio */
            if (i > 0 && (g->job->stonewall || g->job->new_group))
                groupid++;
            g->id = groupid;
            lsm_error_clear();
            if ((e = bench_prepare(g->job, &g->prep)) < 0) {
                cli_error(CMD, "%s: %s", g->job->name, lsm_last_error());
                failed = true;
                break;
            }
            prepared = i + 1;
            if (g->prep.laid_out && !o.json)
                fprintf(stderr, "%s: laid out %s (%" PRIu64 " bytes)\n", g->job->name,
                        g->job->rw == BENCH_RW_COPY ? g->job->src : g->job->filename,
                        g->prep.size);
        }
        uint64_t t0 = lsm_now_ns();
        struct rusage ru0, ru1;
        getrusage(RUSAGE_SELF, &ru0);
        for (size_t i = first; i < prepared && !failed; i++)
            if (group_start(&rep.groups[i], t0 - timeline) != 0)
                failed = true;
        batch_wait(&rep.groups[first], prepared - first, show);
        getrusage(RUSAGE_SELF, &ru1);
        timeline += lsm_now_ns() - t0;
        /* CPU of the whole process (also io-wq and psync workers, which the
         * clones' per-thread figures miss), shared by the batch's jobs */
        double usr = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                     (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
        double sys = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                     (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
        for (size_t i = first; i < prepared; i++) {
            struct bench_group *g = &rep.groups[i];
            g->proc_usr_sec = usr / (double)(prepared - first);
            g->proc_sys_sec = sys / (double)(prepared - first);
            bench_prep_release(&g->prep);
            for (unsigned k = 0; k < g->nthreads; k++)
                if (g->threads[k].error) {
                    cli_error(CMD, "%s: %s", g->job->name, g->threads[k].errmsg);
                    failed = true;
                    break;
                }
        }
        first = end;
    }
    bench_disk_util_finish(&rep, lsm_now_ns() - run_t0);
    bool interrupted = __atomic_load_n(&stop_flag, __ATOMIC_RELAXED) != 0;
    sigaction(SIGINT, &oint, NULL);
    sigaction(SIGTERM, &oterm, NULL);
    if (interrupted)
        fprintf(stderr, "lsm-sync: bench: interrupted; reporting what was done\n");

    if (o.json) {
        if (bench_report_json(stdout, &rep) < 0) {
            cli_error(CMD, "cannot write the report: %m");
            failed = true;
        }
    } else {
        bench_report_normal(stdout, &rep);
    }
    if (o.plot) {
        lsm_error_clear();
        if (bench_plot_svg(o.plot, &rep) < 0) {
            cli_error(CMD, "%s", lsm_last_error());
            failed = true;
        }
    }
    rc = failed || interrupted ? EXIT_OPERATIONAL : 0;

out:
    for (size_t i = 0; i < rep.ngroups; i++) {
        for (unsigned k = 0; k < rep.groups[i].nthreads; k++)
            bench_thread_free(&rep.groups[i].threads[k]);
        free(rep.groups[i].threads);
    }
    free(rep.groups);
    bench_jobs_free(&jobs);
    for (int i = 0; i < argc; i++)
        free(jobbuf[i]);
    return rc;
}
