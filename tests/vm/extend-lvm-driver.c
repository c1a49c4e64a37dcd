/* Test driver: the extender's policy and its LVM backend (monitor/
 * extend-policy.c, monitor/extend-backend.c) on a real LV, without libvirt
 * (the booted-kernel harness has none).  Polls the volume's allocation
 * directly (the highest non-zero MiB: a qcow2 grows at its end) every
 * POLL_MS, extends it by the policy while the writer (PID) runs, prints
 * one line per extension:
 *     extended OLD NEW TOTAL_NS EXTEND_NS REFRESH_NS
 * and exits 0 when the writer has exited, 1 on a failed extension.
 *
 *   extend-lvm-driver DEVICE PID CHUNK EXTENT WATERMARK */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "extend-backend.h"
#include "extend-policy.h"
#include "util.h"

#define POLL_MS 200
#define BLOCK (1024 * 1024)

static uint64_t highest_nonzero(int fd, uint64_t size)
{
    static char buf[BLOCK];
    uint64_t off = align_down(size, BLOCK);
    while (off > 0) {
        off -= BLOCK;
        ssize_t n = pread(fd, buf, BLOCK, (off_t)off);
        if (n <= 0)
            continue;
        for (ssize_t i = n - 1; i >= 0; i--)
            if (buf[i])
                return off + (uint64_t)i + 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s DEVICE PID CHUNK EXTENT WATERMARK\n", argv[0]);
        return 2;
    }
    struct lsm_extend_policy p;
    lsm_extend_policy_default(&p);
    pid_t pid = (pid_t)atoi(argv[2]);
    if (lsm_parse_size(argv[3], &p.chunk) < 0 || lsm_parse_size(argv[4], &p.extent) < 0 ||
        lsm_parse_size(argv[5], &p.watermark) < 0 || lsm_extend_policy_check(&p) < 0) {
        fprintf(stderr, "bad policy: %s\n", lsm_last_error());
        return 2;
    }
    struct lsm_extend_volume v;
    if (lsm_extend_volume_probe(argv[1], NULL, 0, &v) < 0) {
        fprintf(stderr, "%s\n", lsm_last_error());
        return 1;
    }
    if (v.kind != LSM_EXTEND_LVM) {
        fprintf(stderr, "%s is a %s volume, not lvm\n", argv[1], lsm_extend_kind_name(v.kind));
        return 1;
    }
    printf("volume %s/%s\n", v.vg, v.lv);
    fflush(stdout);
    struct lsm_extend_rate rate = { 0 };
    struct lsm_extend_latency lat = { 0 };
    uint64_t maxsz = lsm_extend_max_size(&p, 1 * GiB, 0);
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    for (;;) {
        bool alive = kill(pid, 0) == 0;
        uint64_t phys;
        if (lsm_extend_volume_size(&v, &phys) < 0) {
            fprintf(stderr, "%s\n", lsm_last_error());
            return 1;
        }
        uint64_t t0 = lsm_now_ns();
        uint64_t alloc = highest_nonzero(fd, phys);
        lsm_extend_rate_add(&rate, &p, t0, alloc);
        double bps = lsm_extend_rate_recent(&rate);
        uint64_t latency = lsm_extend_latency_recent(&lat);
        uint64_t head = lsm_extend_headroom(&p, bps, latency, false);
        if (alive && lsm_extend_needed(alloc, phys, head, maxsz, false)) {
            /* as the extender: the writes during this extension planned too */
            uint64_t next = lsm_extend_next_size_growing(&p, alloc, phys, head,
                                                         lsm_extend_growth(&p, bps, latency),
                                                         maxsz, false);
            struct lsm_extend_timing t;
            if (lsm_extend_volume_grow(&v, next, &t) < 0) {
                printf("failed %" PRIu64 " %" PRIu64 ": %s\n", phys, next, lsm_last_error());
                return 1;
            }
            uint64_t now_size = 0;
            lsm_extend_volume_size(&v, &now_size);
            uint64_t total = lsm_now_ns() - t0;
            lsm_extend_latency_add(&lat, total);
            printf("extended %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                   " alloc %" PRIu64 " headroom %" PRIu64 "\n", phys, now_size, total,
                   t.extend_ns, t.refresh_ns, alloc, head);
            fflush(stdout);
            continue;
        }
        if (!alive)
            break;
        struct timespec ts = { 0, POLL_MS * 1000000L };
        nanosleep(&ts, NULL);
    }
    close(fd);
    lsm_extend_volume_clear(&v);
    return 0;
}
