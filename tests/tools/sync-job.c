/* sync-job: a sync of a chain run as a job (flows/sync.h), watched from
 * another thread.
 *
 *   sync-job RATE_MIB SRC_TOP DST_TOP [cancel]
 *
 * Runs lsm_sync_job_create(--type=ALL, parallel 4, each volume's copy
 * limited to RATE_MIB MiB/s) and polls its status every 50 ms; prints one
 * line per check, "name value ... ok|FAILED":
 *   - progress: bytes_done never decreases and never passes bytes_total,
 *     and the sum the job reports is the sum of its volumes';
 *   - without "cancel": the job finishes, done == total, every volume
 *     synced, and the elapsed time is below the sum of the volumes' times
 *     at RATE (they ran in parallel);
 *   - with "cancel": cancelled after 0.5 s, the wait returns within a
 *     second and the job is aborted.
 * Exit: 0 all checks held, 1 a check failed, 2 usage or set-up error. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "job.h"
#include "sync.h"
#include "util.h"
#include "tool-check.h"

int main(int argc, char **argv)
{
    if (argc != 4 && !(argc == 5 && !strcmp(argv[4], "cancel"))) {
        fprintf(stderr, "usage: sync-job RATE_MIB SRC_TOP DST_TOP [cancel]\n");
        return 2;
    }
    uint64_t rate = strtoull(argv[1], NULL, 10) * MiB;
    bool cancel = argc == 5;
    struct lsm_sync_opts so = {
        .type = LSM_SYNC_ALL,
        .src_top = argv[2],
        .dst_top = argv[3],
        .parallel = 4,
        .copy = { .rate = rate },
    };
    struct lsm_job *job;
    double t0 = now_s();
    if (lsm_sync_job_create(&so, NULL, &job) < 0 || lsm_job_start(job) < 0) {
        fprintf(stderr, "sync-job: %s\n", lsm_last_error());
        return 2;
    }
    struct lsm_job_status st;
    uint64_t last = 0, max_total = 0;
    bool monotonic = true, bounded = true, cancelled = false;
    double t_cancel = 0;
    while (lsm_job_wait(job, 50) == -ETIMEDOUT) {
        lsm_job_get_status(job, &st);
        if (st.progress.bytes_done < last)
            monotonic = false;
        if (st.progress.bytes_done > st.progress.bytes_total)
            bounded = false;
        if (st.progress.bytes_done !=
            st.progress.bytes_written + st.progress.bytes_zeroed + st.progress.bytes_skipped)
            bounded = false;
        last = st.progress.bytes_done;
        max_total = MAX(max_total, st.progress.bytes_total);
        if (cancel && !cancelled && now_s() - t0 >= 0.5) {
            lsm_job_cancel(job);
            t_cancel = now_s();
            cancelled = true;
        }
    }
    double elapsed = now_s() - t0;
    lsm_job_get_status(job, &st);
    check(monotonic && bounded, "progress done %" PRIu64 " of %" PRIu64 " (written %" PRIu64
          " zeroed %" PRIu64 " skipped %" PRIu64 ")", st.progress.bytes_done,
          st.progress.bytes_total, st.progress.bytes_written, st.progress.bytes_zeroed,
          st.progress.bytes_skipped);
    const struct lsm_sync_result *res = lsm_sync_job_result(job);
    check(res != NULL, "result");
    if (!res)
        return 1;
    if (cancel) {
        double wait = now_s() - t_cancel;
        check(cancelled && wait < 1.0 && st.state == LSM_JOB_ABORTED,
              "cancel %.3f s state %s: %s", wait, lsm_job_state_name(st.state), st.message);
    } else {
        check(st.state == LSM_JOB_FINISHED && st.progress.bytes_done == st.progress.bytes_total &&
                  st.percent == 100.0,
              "finished %s %.1f%%%s%s", lsm_job_state_name(st.state), st.percent,
              st.message[0] ? ": " : "", st.message);
        /* the volumes' times at RATE one after the other, against what it took */
        double serial = 0, longest = 0;
        bool all = res->nvols > 1;
        for (unsigned i = 0; i < res->nvols; i++) {
            double t = (double)res->v[i].bytes / (double)rate;
            serial += t;
            longest = MAX(longest, t);
            all = all && res->v[i].result == 0;
        }
        check(all, "volumes %u synced", res->nvols);
        check(elapsed < longest + (serial - longest) / 2,
              "parallel %.2f s serial %.2f s longest %.2f s", elapsed, serial, longest);
    }
    lsm_job_free(job);
    return failures ? 1 : 0;
}
