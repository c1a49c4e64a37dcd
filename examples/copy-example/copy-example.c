/* An example program driving copies with liblsm-sync: copy-example.
 *
 *   copy-example [-f SRCFMT] [-O DSTFMT] [-r BYTES_PER_S] SRC DST
 *
 * copies the guest view of SRC (raw, qcow2 or an nbd:// URI; the format is
 * probed unless -f) to a new DST (raw unless -O qcow2), printing progress
 * once a second and the block checksum of DST at the end.  SIGINT or
 * SIGTERM cancel the copy (a DST it created is removed).  Exit status: 0
 * when DST is complete, 1 when the copy failed or was cancelled, 2 for bad
 * usage.
 *
 * Build against the installed library:
 *
 *   cc -O2 -Wall -o copy-example copy-example.c $(pkg-config --cflags --libs lsm-sync)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lsm-sync.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: copy-example [-f SRCFMT] [-O DSTFMT] [-r BYTES_PER_S] SRC DST\n");
    return 2;
}

static const char *state_name(uint32_t s)
{
    switch (s) {
    case LSM_TRANSFER_RUNNING: return "running";
    case LSM_TRANSFER_CANCELLING: return "cancelling";
    case LSM_TRANSFER_FINISHED: return "finished";
    case LSM_TRANSFER_CANCELLED: return "cancelled";
    case LSM_TRANSFER_FAILED: return "failed";
    }
    return "?";
}

static void print_status(struct lsm_transfer *t)
{
    struct lsm_transfer_status st = { .size = sizeof st };
    if (lsm_transfer_get_status(t, &st) < 0) {
        fprintf(stderr, "copy-example: status: %s\n", lsm_last_error());
        return;
    }
    printf("%s %6.2f%% %llu/%llu bytes (written %llu, zeroed %llu, skipped %llu) %.1f MiB/s\n",
           state_name(st.state), st.percent, (unsigned long long)st.bytes_done,
           (unsigned long long)st.bytes_total, (unsigned long long)st.bytes_written,
           (unsigned long long)st.bytes_zeroed, (unsigned long long)st.bytes_skipped,
           st.rate / (1 << 20));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *src_fmt = NULL, *dst_fmt = "raw";
    unsigned long long rate = 0;
    int c;
    while ((c = getopt(argc, argv, "f:O:r:")) != -1) {
        switch (c) {
        case 'f': src_fmt = optarg; break;
        case 'O': dst_fmt = optarg; break;
        case 'r': {
            char *end;
            errno = 0;
            rate = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg)
                return usage();
            break;
        }
        default: return usage();
        }
    }
    if (argc - optind != 2)
        return usage();
    const char *src = argv[optind], *dst = argv[optind + 1];

    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    printf("liblsm-sync %s\n", lsm_library_version());
    struct lsm_ctx *ctx = NULL;
    struct lsm_copy_options *opts = NULL;
    struct lsm_transfer *t = NULL;
    int rc = 1;
    if (lsm_ctx_new(&ctx) < 0 || lsm_copy_options_new(&opts) < 0 ||
        lsm_copy_options_set_bandwidth(opts, rate) < 0) {
        fprintf(stderr, "copy-example: %s\n", lsm_last_error());
        goto out;
    }
    if (lsm_copy_start(ctx, src, src_fmt, dst, dst_fmt, opts, &t) < 0) {
        fprintf(stderr, "copy-example: %s\n", lsm_last_error());
        goto out;
    }
    lsm_copy_options_free(opts);   /* the transfer has its own copy */
    opts = NULL;

    /* Watch it: a status line a second until it stops. */
    for (;;) {
        int w = lsm_transfer_wait(t, 1000);
        if (w == 0)
            break;
        if (w != -ETIMEDOUT) {
            fprintf(stderr, "copy-example: %s\n", lsm_last_error());
            goto out;
        }
        if (stop)
            lsm_transfer_cancel(t);
        print_status(t);
    }
    print_status(t);
    int r = lsm_transfer_result(t);
    if (r < 0) {
        fprintf(stderr, "copy-example: copy failed: %s\n", lsm_transfer_error(t));
        goto out;
    }
    char hex[LSM_CHECKSUM_HEX_SIZE];
    r = lsm_checksum(ctx, dst, dst_fmt, NULL, hex, sizeof hex);
    if (r == -ENOTSUP) {
        printf("checksum not available: %s\n", lsm_last_error());
    } else if (r < 0) {
        fprintf(stderr, "copy-example: checksum: %s\n", lsm_last_error());
        goto out;
    } else {
        printf("checksum sha256 %s\n", hex);
    }
    rc = 0;
out:
    lsm_transfer_free(t);
    lsm_copy_options_free(opts);
    lsm_ctx_free(ctx);
    return rc;
}
