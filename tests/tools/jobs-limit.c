/* jobs-limit: four copy jobs in one process under one global limiter, as
 * the worker service runs them; measures what the job library promises.
 *
 *   jobs-limit LIMIT_MIB SRC1 DST1 SRC2 DST2 SRC3 DST3 SRC4 DST4 CSRC CDST
 *
 * Each SRCn is copied to DSTn (qcow2 when the name ends in .qcow2, else
 * raw) as a job under a global limiter of LIMIT_MIB MiB/s; CSRC to CDST is
 * a fifth job, cancelled after a second.  The sources should hold data (not
 * zeroes) so that bytes written measure the rate.  Checks, each printed as
 * one line "name value ... ok|FAILED":
 *   - aggregate: bytes written by the four over seconds 1 to 4, at most
 *     10% above the limit (the limiter's promise) and at least 75% of it
 *     (it does not hold them back; lower would be the machine: a CI run
 *     with other tests on both cores measured 42.7 of 48 MiB/s);
 *   - change: at 2 s job 1's own limit is set to an eighth of the global
 *     one; from 3 s to 4 s (a second after the change) it writes at most
 *     that plus a burst; then it is set back to unlimited;
 *   - cancel: the fifth job's wait returns within a second of the cancel,
 *     ABORTED, and CDST (created by the copy) is gone;
 *   - all four FINISHED, done == total.
 * The caller compares the results with qemu-img compare.
 * Exit: 0 all checks held, 1 a check failed, 2 usage or set-up error. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "copy-job.h"
#include "error.h"
#include "job.h"
#include "limiter.h"
#include "util.h"
#include "tool-check.h"

#define NJOBS 4

static void sleep_until(double t)
{
    double d = t - now_s();
    if (d <= 0)
        return;
    struct timespec ts = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
    nanosleep(&ts, NULL);
}

static uint64_t written(struct lsm_job *j)
{
    struct lsm_job_status st;
    lsm_job_get_status(j, &st);
    return st.progress.bytes_written;
}

static uint64_t written_all(struct lsm_job **jobs)
{
    uint64_t sum = 0;
    for (int i = 0; i < NJOBS; i++)
        sum += written(jobs[i]);
    return sum;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int make_job(const char *src, const char *dst, struct lsm_limiter *global,
                    struct lsm_job **out)
{
    struct lsm_copy_opts o = {
        .src_path = src,
        .dst_path = dst,
        .dst_fmt = ends_with(dst, ".qcow2") ? LSM_FMT_QCOW2 : LSM_FMT_RAW,
        .io_kind = LSM_IO_AUTO,
        .direct = LSM_DIRECT_AUTO,
    };
    struct lsm_job_opts jo = { .kind = "copy", .parent = global };
    int r = lsm_copy_job_create(&o, &jo, out);
    if (r < 0)
        return r;
    return lsm_job_start(*out);
}

int main(int argc, char **argv)
{
    if (argc != 2 + 2 * (NJOBS + 1)) {
        fprintf(stderr, "usage: jobs-limit LIMIT_MIB SRC1 DST1 ... SRC4 DST4 CSRC CDST\n");
        return 2;
    }
    uint64_t limit = strtoull(argv[1], NULL, 10) * MiB;
    if (!limit) {
        fprintf(stderr, "jobs-limit: bad limit %s\n", argv[1]);
        return 2;
    }
    struct lsm_limiter *global;
    if (lsm_limiter_create(limit, NULL, &global) < 0)
        return 2;
    struct lsm_job *jobs[NJOBS] = { 0 }, *cj = NULL;
    const char *cdst = argv[2 + 2 * NJOBS + 1];

    double t0 = now_s();
    for (int i = 0; i < NJOBS; i++)
        if (make_job(argv[2 + 2 * i], argv[3 + 2 * i], global, &jobs[i]) < 0) {
            fprintf(stderr, "jobs-limit: %s\n", lsm_last_error());
            return 2;
        }
    if (make_job(argv[2 + 2 * NJOBS], cdst, global, &cj) < 0) {
        fprintf(stderr, "jobs-limit: %s\n", lsm_last_error());
        return 2;
    }

    /* cancel the fifth job after a second */
    sleep_until(t0 + 1);
    uint64_t w1 = written_all(jobs) + written(cj);
    double t1 = now_s();
    lsm_job_cancel(cj);
    int wr = lsm_job_wait(cj, 2000);
    double cancel_s = now_s() - t1;
    struct lsm_job_status st;
    lsm_job_get_status(cj, &st);
    check(wr == 0 && cancel_s < 1.0 && st.state == LSM_JOB_ABORTED,
          "cancel %.3f s state %s", cancel_s, lsm_job_state_name(st.state));
    check(access(cdst, F_OK) < 0 && errno == ENOENT, "cancel-removed %s", cdst);
    uint64_t cj_done = written(cj);
    lsm_job_free(cj);

    /* at 2 s, job 1 gets its own limit of an eighth of the global one */
    sleep_until(t0 + 2);
    uint64_t small = limit / 8;
    lsm_job_set_rate_limit(jobs[0], small);
    sleep_until(t0 + 3);
    uint64_t j3 = written(jobs[0]);
    double tj3 = now_s();
    sleep_until(t0 + 4);
    uint64_t j4 = written(jobs[0]);
    double tj4 = now_s();
    uint64_t w4 = written_all(jobs) + cj_done;
    double t4 = now_s();
    lsm_job_set_rate_limit(jobs[0], 0);

    double agg = (double)(w4 - w1) / (t4 - t1);
    check(agg >= 0.75 * (double)limit && agg <= 1.1 * (double)limit,
          "aggregate %.1f MiB/s limit %.1f MiB/s", agg / MiB, (double)limit / MiB);
    double j_rate = (double)(j4 - j3) / (tj4 - tj3);
    /* a second after the change: at most the new limit plus a request or two */
    check(j_rate <= (double)small * 1.1 + 2.0 * MiB / (tj4 - tj3),
          "change %.1f MiB/s new-limit %.1f MiB/s", j_rate / MiB, (double)small / MiB);

    for (int i = 0; i < NJOBS; i++) {
        lsm_job_wait(jobs[i], -1);
        lsm_job_get_status(jobs[i], &st);
        check(st.state == LSM_JOB_FINISHED && st.progress.bytes_done == st.progress.bytes_total &&
                  st.progress.bytes_total > 0,
              "job%d %s %" PRIu64 "/%" PRIu64 " written %" PRIu64 "%s%s", i + 1,
              lsm_job_state_name(st.state), st.progress.bytes_done, st.progress.bytes_total,
              st.progress.bytes_written, st.message[0] ? ": " : "", st.message);
        lsm_job_free(jobs[i]);
    }
    printf("elapsed %.2f s\n", now_s() - t0);
    lsm_limiter_free(global);
    return failures ? 1 : 0;
}
