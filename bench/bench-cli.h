/* Command-layer parts of 'lsm-sync bench': results of a whole run, the
 * normal and JSON reports, the SVG plot.  Only this layer prints. */
#ifndef LSM_BENCH_CLI_H
#define LSM_BENCH_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "jobfile.h"
#include "run.h"

/* One job section: its numjobs clones, run together. */
struct bench_group {
    struct bench_job *job;
    unsigned id;
    struct bench_prep prep;
    struct bench_thread *threads;   /* numjobs of them */
    unsigned nthreads;              /* started */
    double proc_usr_sec, proc_sys_sec;  /* whole process while the clones ran */
    bool ran;
};

struct bench_report {
    struct bench_group *groups;
    size_t ngroups;
    uint64_t sample_ns;
};

/* Sum of a group's clones (or one clone when first == last). */
struct bench_agg {
    struct bench_dir_stats dir[2];
    uint64_t start_ns, end_ns;
    double usr_sec, sys_sec;
    uint64_t verified;
    int error;
    const char *errmsg;
    const char *engine;
    bool interrupted;
    unsigned njobs;
};
/* agg must be zeroed by the caller before the first add */
void bench_agg_add(struct bench_agg *agg, const struct bench_thread *t);
uint64_t bench_agg_runtime_ns(const struct bench_agg *agg);

void bench_report_normal(FILE *f, const struct bench_report *rep);
int bench_report_json(FILE *f, const struct bench_report *rep);
/* Write the SVG; on failure prints nothing and returns -errno with a message. */
int bench_plot_svg(const char *path, const struct bench_report *rep);

/* "1.50GiB" style, 3 significant digits (binary units) */
const char *bench_fmt_bin(double bytes, char *buf, size_t len);
/* "4KiB", "1MiB", "1536B": exact, for block sizes */
const char *bench_fmt_exact(uint64_t v, char *buf, size_t len);
/* "12.3k" style */
const char *bench_fmt_count(double v, char *buf, size_t len);

#endif
