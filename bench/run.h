/* Running bench jobs through io/io.h: preparing the files (fio's layout
 * step) and one thread per numjobs clone, each with its own lsm_io.
 * Library code: results and messages are returned, never printed. */
#ifndef LSM_BENCH_RUN_H
#define LSM_BENCH_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "jobfile.h"

enum { BENCH_DIR_READ = 0, BENCH_DIR_WRITE = 1 };

/* One interval of the time series (for --plot). */
struct bench_sample {
    uint64_t t0_ns, t1_ns;  /* interval, relative to the bench epoch */
    uint64_t bytes[2];
    uint64_t ios[2];
    uint64_t p99_ns;        /* completion latency p99 of the interval (0: no I/O) */
};

struct bench_dir_stats {
    uint64_t bytes;
    uint64_t ios;
    struct bench_hist clat;     /* queued to completed (fio's clat) */
    struct bench_hist slat;     /* prepared to queued (fio's slat) */
    struct bench_hist lat;      /* prepared to completed (fio's lat) */
};

/* What bench_prepare() found or did. */
struct bench_prep {
    uint64_t size;          /* bytes each clone works on (a multiple of bs) */
    bool laid_out;          /* wrote the (source) file before a reading job */
    bool created;           /* created or extended a file to write into */
    unsigned nclaims;       /* block devices the job writes, held open O_EXCL */
    int claim_fd[2];
};

/* Find the job's size and make its files exist: a file a job reads is
 * written in full (verify pattern, buffered, then dropped from the page
 * cache); a file only written is preallocated.  Block devices are used
 * as they are.  The job works on [offset, offset + size) of its file; with
 * invalidate (fio's default) its files are then dropped from the page cache
 * (posix_fadvise DONTNEED), once for all its clones.
 *
 * Before anything is written: a block device the job writes (filename of
 * write, randwrite and randrw; dst of copy) is opened with O_EXCL, as fio
 * and the kernel's own users (mount, mkfs, LVM, md) do.  EBUSY means that
 * a file system is mounted on it (or on one of its partitions) or another
 * program holds it, and the job is refused with -EBUSY naming the device,
 * unless it sets allow_mounted_write (fio's key).  The exclusive descriptor
 * stays open in prep until bench_prep_release(), so that nothing mounts the
 * device while the job runs.  On failure nothing is left held. */
int bench_prepare(const struct bench_job *job, struct bench_prep *prep);
/* Drop the exclusive holds of bench_prepare() (safe on a zeroed prep and
 * twice). */
void bench_prep_release(struct bench_prep *prep);

struct bench_thread {
    /* set by the caller */
    const struct bench_job *job;
    unsigned index;             /* clone number, 0..numjobs-1 */
    uint64_t size;              /* from bench_prep */
    uint64_t epoch_ns;          /* time 0 of the samples */
    uint64_t sample_ns;         /* sampling interval; 0: no time series */
    const int *stop;            /* non-zero: stop issuing, drain, report */

    /* live, read by other threads with __atomic loads */
    uint64_t live_bytes[2];
    uint64_t live_ios[2];
    int finished;

    /* results */
    struct bench_dir_stats dir[2];
    struct bench_dir_stats sync;   /* fsync=N and end_fsync: ios and clat only */
    uint64_t start_ns, end_ns;  /* measuring start (after ramp_time), last completion (absolute) */
    double usr_sec, sys_sec;    /* CPU time of the thread while measuring */
    int error;                  /* 0 or a negative errno */
    char errmsg[512];
    char engine[16];            /* backend actually used */
    bool interrupted;           /* stopped early by *stop */
    uint64_t verified;          /* blocks whose pattern was checked */
    struct bench_sample *samples;
    size_t nsamples, samples_cap;
    struct bench_hist *interval;   /* private */
};

/* pthread entry: arg is a struct bench_thread. */
void *bench_thread_main(void *arg);
void bench_thread_free(struct bench_thread *t);

#endif
