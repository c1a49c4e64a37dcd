/* The public interface of liblsm-sync (include/lsm-sync.h) on real images,
 * built against that header and the shared library only; run by
 * tests/functional/library.sh:
 *
 *   libapi-check SRC_RAW DST_RAW JOB_JSON HELD_RAW
 *
 * SRC_RAW holds at least 24 MiB of data; DST_RAW does not exist; JOB_JSON
 * is a job file (clone-structure --output=json) whose destination chain
 * the script compares after; HELD_RAW is an image another process holds
 * for writing (qemu-io).  The script also checks DST_RAW.128k.qcow2 (a
 * copy with 128 KiB clusters) and DST_RAW.held (a copy of HELD_RAW).  One
 * line per case ("ok NAME" or "FAIL NAME: why"); exit 1 if any failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lsm-sync.h>

static int failed;

#define CHECK(name, cond, ...)                                               \
    do {                                                                     \
        if (cond) {                                                          \
            printf("ok %s\n", name);                                         \
        } else {                                                             \
            failed = 1;                                                      \
            printf("FAIL %s: ", name);                                       \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* The result of a transfer that started (r == 0), waited for up to a
 * minute; the start's error otherwise. */
static int run_to_end(int r, struct lsm_transfer *t)
{
    if (r < 0)
        return r;
    lsm_transfer_wait(t, 60000);
    return lsm_transfer_result(t);
}

/* The message of what failed: the transfer's, or the call's when there is
 * no transfer. */
static const char *why_failed(struct lsm_transfer *t)
{
    return t ? lsm_transfer_error(t) : lsm_last_error();
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: libapi-check SRC_RAW DST_RAW JOB_JSON HELD_RAW\n");
        return 2;
    }
    const char *src = argv[1], *dst = argv[2], *jobjson = argv[3], *held = argv[4];
    const uint64_t MiB = 1 << 20;
    int r;

    CHECK("version", !strcmp(lsm_library_version(), "0.1.0"), "'%s'", lsm_library_version());

    /* Bad arguments: -EINVAL with a message, never a crash. */
    struct lsm_ctx *ctx = NULL;
    struct lsm_copy_options *o = NULL;
    struct lsm_transfer *t = NULL;
    CHECK("ctx-null", lsm_ctx_new(NULL) == -EINVAL && *lsm_last_error(), "'%s'", lsm_last_error());
    if (lsm_ctx_new(&ctx) < 0 || lsm_copy_options_new(&o) < 0) {
        printf("FAIL setup: %s\n", lsm_last_error());
        return 1;
    }
    CHECK("requests-range", lsm_copy_options_set_requests(o, 5000) == -EINVAL &&
          strstr(lsm_last_error(), "1024"), "'%s'", lsm_last_error());
    CHECK("request-size-pow2", lsm_copy_options_set_request_size(o, 12345) == -EINVAL,
          "'%s'", lsm_last_error());
    CHECK("direct-word", lsm_copy_options_set_direct(o, "sometimes") == -EINVAL &&
          strstr(lsm_last_error(), "sometimes"), "'%s'", lsm_last_error());
    CHECK("backing-needs-format", lsm_copy_options_set_backing(o, "base.qcow2", NULL) == -EINVAL,
          "'%s'", lsm_last_error());
    CHECK("zero-needs-existing", lsm_copy_options_set_existing(o, 0, 1) == -EINVAL,
          "'%s'", lsm_last_error());
    CHECK("parallel-range", lsm_copy_options_set_parallel(o, 65) == -EINVAL, "'%s'", lsm_last_error());
    CHECK("cluster-size-pow2", lsm_copy_options_set_cluster_size(o, 96 * 1024) == -EINVAL &&
          strstr(lsm_last_error(), "power of two"), "'%s'", lsm_last_error());
    CHECK("copy-no-dst", lsm_copy_start(ctx, src, "raw", NULL, NULL, o, &t) == -EINVAL && !t,
          "'%s'", lsm_last_error());
    CHECK("copy-bad-dst-format", lsm_copy_start(ctx, src, "raw", dst, "auto", o, &t) == -EINVAL &&
          access(dst, F_OK) != 0, "'%s'", lsm_last_error());
    CHECK("sync-bad-type", lsm_sync_start_json(ctx, "{}", 7, o, &t) == -EINVAL, "'%s'", lsm_last_error());
    char hex[LSM_CHECKSUM_HEX_SIZE];
    CHECK("checksum-small-buffer", lsm_checksum(ctx, src, "raw", NULL, hex, 10) == -EINVAL,
          "'%s'", lsm_last_error());
    CHECK("checksum-bad-alg", lsm_checksum(ctx, src, "raw", "md4", hex, sizeof hex) < 0 &&
          *lsm_last_error(), "'%s'", lsm_last_error());

    /* A copy held to 8 MiB/s by the context's limit. */
    lsm_ctx_set_bandwidth(ctx, 8 * MiB);
    lsm_copy_options_set_request_size(o, 1 * MiB);
    r = lsm_copy_start(ctx, src, "raw", dst, "raw", o, &t);
    CHECK("copy-start", r == 0 && t, "%d %s", r, lsm_last_error());
    if (r < 0)
        return 1;
    lsm_copy_options_free(o);          /* the transfer keeps its own */
    o = NULL;
    CHECK("wait-timeout", lsm_transfer_wait(t, 1000) == -ETIMEDOUT, "'%s'", lsm_last_error());
    CHECK("result-busy", lsm_transfer_result(t) == -EBUSY && !*lsm_transfer_error(t), "running");
    CHECK("memory-limit-busy", lsm_ctx_set_memory_limit(ctx, 64 * MiB) == -EBUSY &&
          strstr(lsm_last_error(), "alive"), "'%s'", lsm_last_error());

    /* Status: the size decides what is filled. */
    struct lsm_transfer_status st = { .size = 8 };
    CHECK("status-too-small", lsm_transfer_get_status(t, &st) == -EINVAL, "'%s'", lsm_last_error());
    struct {
        struct lsm_transfer_status s;
        unsigned char more[16];
    } big;
    memset(&big, 0xff, sizeof big);
    big.s.size = sizeof big;
    r = lsm_transfer_get_status(t, &big.s);
    int zeroed = 1;
    for (size_t i = 0; i < sizeof big.more; i++)
        zeroed &= big.more[i] == 0;
    CHECK("status-larger", r == 0 && big.s.size == sizeof(struct lsm_transfer_status) && zeroed &&
          big.s.state == LSM_TRANSFER_RUNNING, "r %d size %u zeroed %d state %u", r, big.s.size, zeroed,
          big.s.state);
    uint64_t done1 = big.s.bytes_done;
    CHECK("status-limited", done1 >= 1 * MiB && done1 <= 20 * MiB && big.s.bytes_total >= 24 * MiB,
          "done %llu of %llu after 1 s at 8 MiB/s (phase %s)", (unsigned long long)done1,
          (unsigned long long)big.s.bytes_total, big.s.phase);
    struct lsm_transfer_status s01;
    memset(&s01, 0xff, sizeof s01);
    s01.size = LSM_TRANSFER_STATUS_SIZE_0_1;
    CHECK("status-0.1", lsm_transfer_get_status(t, &s01) == 0 && s01.size == LSM_TRANSFER_STATUS_SIZE_0_1,
          "size %u", s01.size);

    /* The transfer's own bandwidth: seen in its status. */
    r = lsm_transfer_set_bandwidth(t, 4 * MiB);
    struct lsm_transfer_status sb = { .size = sizeof sb };
    lsm_transfer_get_status(t, &sb);
    CHECK("transfer-bandwidth", r == 0 && sb.bandwidth == 4 * MiB, "r %d bandwidth %llu '%s'", r,
          (unsigned long long)sb.bandwidth, lsm_last_error());
    lsm_transfer_set_bandwidth(t, 0);

    /* The context may go first; the limit off lets the copy finish. */
    lsm_ctx_set_bandwidth(ctx, 0);
    lsm_ctx_free(ctx);
    ctx = NULL;
    r = lsm_transfer_wait(t, 30000);
    int res = lsm_transfer_result(t);
    struct lsm_transfer_status fin = { .size = sizeof fin };
    lsm_transfer_get_status(t, &fin);
    CHECK("copy-finished", r == 0 && res == 0 && fin.state == LSM_TRANSFER_FINISHED &&
          fin.bytes_done == fin.bytes_total && !*lsm_transfer_error(t),
          "wait %d result %d state %u done %llu/%llu '%s'", r, res, fin.state,
          (unsigned long long)fin.bytes_done, (unsigned long long)fin.bytes_total, lsm_transfer_error(t));
    lsm_transfer_free(t);
    t = NULL;

    /* A journaled copy cancelled after 1.5 s at 8 MiB/s keeps its
     * destination and journal; started again with resume it finishes and
     * the journal goes (the script compares DST_RAW.resumed). */
    lsm_ctx_new(&ctx);
    char rdst[4096], jpath[4096];
    snprintf(rdst, sizeof rdst, "%s.resumed", dst);
    snprintf(jpath, sizeof jpath, "%s.journal", dst);
    lsm_copy_options_new(&o);
    CHECK("journal-resume-needs-journal", lsm_copy_options_set_journal(o, NULL, 1) == -EINVAL,
          "'%s'", lsm_last_error());
    lsm_copy_options_set_request_size(o, 1 * MiB);
    lsm_copy_options_set_journal(o, jpath, 0);
    lsm_ctx_set_bandwidth(ctx, 8 * MiB);
    r = lsm_copy_start(ctx, src, "raw", rdst, "raw", o, &t);
    CHECK("journal-start", r == 0, "%d %s", r, lsm_last_error());
    if (r == 0) {
        lsm_transfer_wait(t, 1500);
        lsm_transfer_cancel(t);
        r = lsm_transfer_wait(t, 10000);
        res = lsm_transfer_result(t);
        CHECK("journal-cancelled-kept", r == 0 && res == -ECANCELED && access(jpath, F_OK) == 0 &&
              access(rdst, F_OK) == 0, "wait %d result %d journal %s destination %s", r, res,
              access(jpath, F_OK) == 0 ? "kept" : "gone", access(rdst, F_OK) == 0 ? "kept" : "gone");
        lsm_transfer_free(t);
        t = NULL;
        /* without resume the journal there is refused */
        r = lsm_copy_start(ctx, src, "raw", rdst, "raw", o, &t);
        if (r == 0) {
            lsm_transfer_wait(t, 10000);
            r = lsm_transfer_result(t);
            lsm_transfer_free(t);
            t = NULL;
        }
        CHECK("journal-exists-refused", r < 0 && access(jpath, F_OK) == 0, "%d", r);
        lsm_ctx_set_bandwidth(ctx, 0);
        lsm_copy_options_set_journal(o, jpath, 1);
        r = lsm_copy_start(ctx, src, "raw", rdst, "raw", o, &t);
        if (r == 0) {
            r = lsm_transfer_wait(t, 30000);
            res = lsm_transfer_result(t);
        } else {
            res = r;
        }
        CHECK("journal-resumed", r == 0 && res == 0 && access(jpath, F_OK) != 0,
              "wait %d result %d '%s' journal %s", r, res, why_failed(t),
              access(jpath, F_OK) == 0 ? "left" : "gone");
        lsm_transfer_free(t);
        t = NULL;
    }
    lsm_copy_options_free(o);
    o = NULL;
    lsm_ctx_free(ctx);

    /* A sync from the job file's text. */
    lsm_ctx_new(&ctx);
    const char *json = slurp(jobjson);
    r = json ? lsm_sync_start_json(ctx, json, LSM_SYNC_TYPE_ALL, NULL, &t) : -ENOENT;
    CHECK("sync-start", r == 0, "%d %s", r, lsm_last_error());
    if (r == 0) {
        r = lsm_transfer_wait(t, 60000);
        res = lsm_transfer_result(t);
        CHECK("sync-finished", r == 0 && res == 0, "wait %d result %d '%s'", r, res, lsm_transfer_error(t));
        lsm_transfer_free(t);
        t = NULL;
    }
    /* A job file that is not JSON: the transfer fails with its message. */
    r = lsm_sync_start_json(ctx, "{ not json", LSM_SYNC_TYPE_ALL, NULL, &t);
    if (r == 0) {
        lsm_transfer_wait(t, 10000);
        res = lsm_transfer_result(t);
        struct lsm_transfer_status fs = { .size = sizeof fs };
        lsm_transfer_get_status(t, &fs);
        CHECK("sync-bad-json", res == -EINVAL && fs.state == LSM_TRANSFER_FAILED && fs.error == res &&
              strstr(lsm_transfer_error(t), "job file"), "result %d state %u '%s'", res, fs.state,
              lsm_transfer_error(t));
        lsm_transfer_free(t);
        t = NULL;
    } else {
        CHECK("sync-bad-json", r == -EINVAL && strstr(lsm_last_error(), "job file"), "'%s'", lsm_last_error());
    }
    /* The writer's metadata caches (about 4 MiB for 64K clusters) come
     * from the memory limit too: refused under 4 MiB, copied under 16. */
    char qdst[4096];
    snprintf(qdst, sizeof qdst, "%s.qcow2", dst);
    for (int pass = 0; pass < 2; pass++) {
        uint64_t limit = pass ? 16 * MiB : 4 * MiB;
        struct lsm_copy_options *qo = NULL;
        r = lsm_ctx_set_memory_limit(ctx, limit);
        if (r == 0)
            r = lsm_copy_options_new(&qo);
        if (r == 0)
            r = lsm_copy_options_set_buffer_size(qo, 1 * MiB);
        if (r == 0)
            r = lsm_copy_options_set_request_size(qo, 1 * MiB);
        if (r == 0)
            r = lsm_copy_start(ctx, src, "raw", qdst, "qcow2", qo, &t);
        if (r == 0)
            r = lsm_transfer_wait(t, 60000);
        int qres = r == 0 ? lsm_transfer_result(t) : r;
        if (pass == 0)
            CHECK("memory-limit-metadata", qres == -ENOMEM && t &&
                  strstr(lsm_transfer_error(t), "metadata"), "result %d '%s'", qres,
                  why_failed(t));
        else
            CHECK("memory-limit-metadata-fits", qres == 0, "result %d '%s'", qres,
                  why_failed(t));
        lsm_copy_options_free(qo);
        lsm_transfer_free(t);
        t = NULL;
    }
    CHECK("memory-limit-idle", lsm_ctx_set_memory_limit(ctx, 0) == 0, "'%s'", lsm_last_error());

    /* A qcow2 destination with the cluster size asked for (the script
     * reads it with qemu-img info). */
    char cdst[4096];
    snprintf(cdst, sizeof cdst, "%s.128k.qcow2", dst);
    lsm_copy_options_new(&o);
    r = lsm_copy_options_set_cluster_size(o, 128 * 1024);
    if (r == 0)
        r = lsm_copy_start(ctx, src, "raw", cdst, "qcow2", o, &t);
    r = run_to_end(r, t);
    CHECK("cluster-size-copy", r == 0, "%d '%s'", r, why_failed(t));
    lsm_transfer_free(t);
    t = NULL;

    /* An image another process holds for writing: refused (QEMU's
     * locks), nothing created; read with force-share. */
    char hdst[4096];
    snprintf(hdst, sizeof hdst, "%s.held", dst);
    r = lsm_copy_start(ctx, held, "raw", hdst, "raw", o, &t);
    r = run_to_end(r, t);
    const char *why = why_failed(t);
    CHECK("held-refused", r == -EAGAIN && strstr(why, "lock") && access(hdst, F_OK) != 0,
          "%d '%s' destination %s", r, why, access(hdst, F_OK) == 0 ? "left" : "absent");
    lsm_transfer_free(t);
    t = NULL;
    r = lsm_copy_options_set_force_share(o, 1);
    if (r == 0)
        r = lsm_copy_start(ctx, held, "raw", hdst, "raw", o, &t);
    r = run_to_end(r, t);
    CHECK("held-force-share", r == 0, "%d '%s'", r, why_failed(t));
    lsm_transfer_free(t);
    t = NULL;
    lsm_copy_options_free(o);
    o = NULL;

    /* A sync from the job file by its path (the chain synced above again:
     * a sync into volumes that hold their data already), and a path that
     * does not exist. */
    r = lsm_sync_start_file(ctx, jobjson, LSM_SYNC_TYPE_ALL, NULL, &t);
    r = run_to_end(r, t);
    CHECK("sync-file", r == 0, "%d '%s'", r, why_failed(t));
    lsm_transfer_free(t);
    t = NULL;
    r = lsm_sync_start_file(ctx, "/nonexistent/job.json", LSM_SYNC_TYPE_ALL, NULL, &t);
    if (r == 0) {
        lsm_transfer_wait(t, 10000);
        r = lsm_transfer_result(t);
    }
    why = why_failed(t);
    CHECK("sync-file-missing", r == -ENOENT && strstr(why, "/nonexistent/job.json"), "%d '%s'", r, why);
    lsm_transfer_free(t);
    t = NULL;
    lsm_ctx_free(ctx);
    return failed;
}
