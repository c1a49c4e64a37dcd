/* Command-layer parts of 'lsm-sync bench': results of a whole run, the
 * normal and JSON reports, the SVG plot.  Only this layer prints. */
#ifndef LSM_BENCH_CLI_H
#define LSM_BENCH_CLI_H

#include <pthread.h>
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
    pthread_t *tids;
    unsigned nthreads;              /* started */
    double proc_usr_sec, proc_sys_sec;  /* whole process while the clones ran */
    bool ran;
};

/* One disk's /proc/diskstats counters over the run (fio's disk_util). */
struct bench_disk_util {
    char name[64];
    unsigned major, minor;
    uint64_t read_ios, read_merges, read_ticks, write_ios, write_merges, write_ticks;
    uint64_t io_ticks, in_queue;     /* ms */
    double util;                     /* percent of the run the disk was busy */
};

struct bench_report {
    struct bench_group *groups;
    size_t ngroups;
    uint64_t sample_ns;
    struct bench_disk_util disks[8];
    size_t ndisks;
};

/* disk_util: the disks under the jobs' files, and their counters now
 * (start) or the difference since start (finish, with the run's length).
 * Disks /proc/diskstats does not list (tmpfs, overlay) are left out. */
void bench_disk_util_start(struct bench_report *rep);
void bench_disk_util_finish(struct bench_report *rep, uint64_t elapsed_ns);

/* Sum of a group's clones (or one clone when first == last). */
struct bench_agg {
    struct bench_dir_stats dir[2];
    struct bench_dir_stats sync;
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
