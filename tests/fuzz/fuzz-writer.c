/* libFuzzer target: the qcow2 writer on an arbitrary existing image.
 *
 * The input goes to a memfd (a regular file the writer may extend), then:
 * qcow2_writer_open; on success a few qcow2_writer_alloc / qcow2_writer_zero
 * calls at places derived from the input (first, middle and last clusters,
 * with host-contiguous runs checked against the contract), sometimes a
 * checkpoint followed by one more allocation, sometimes a close without
 * finish and a second open (or, after a checkpoint, qcow2_writer_resume)
 * of the image left marked incomplete, sometimes a persistent bitmap added
 * (qcow2_writer_add_bitmap: the bitmaps extension joins the header's others
 * at finish), then finish, close.  Inputs marked incomplete (bit 63)
 * exercise the resume path on metadata from the input.
 * A second pass runs qcow2_set_backing on a fresh copy of the input with a
 * name and a format taken from its last bytes.  The writer must refuse bad
 * images with a message, never crash, read out of bounds or allocate
 * without bound.  Growth of the memfd is bounded by the writer itself: it
 * refuses images whose clusters in use lie more than 1 GiB past the end of
 * the file, and appends only a few clusters here plus the refcount
 * structures for that end.
 *
 * Built with -Dfuzzing=true (clang, -fsanitize=fuzzer,address,undefined);
 * fuzz-replay.c feeds the seed corpus to the same function in every build.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "image.h"
#include "qcow2/qcow2-writer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CALLS 8

static int input_fd(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-writer", MFD_CLOEXEC);
    if (fd < 0) {
        perror("fuzz: memfd_create");
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("fuzz: write input");
            abort();
        }
        done += (size_t)n;
    }
    return fd;
}

static void refused_with_message(int r)
{
    if (r < 0 && !*lsm_last_error())
        abort();
}

static void writer_pass(const uint8_t *data, size_t size)
{
    int fd = input_fd(data, size);
    struct qcow2_writer *w = NULL;
    lsm_error_clear();
    int r = qcow2_writer_open(fd, 512, &w);
    refused_with_message(r);
    if (r < 0) {
        close(fd);
        return;
    }
    uint64_t cs = qcow2_writer_cluster_size(w);
    uint64_t vs = qcow2_writer_virtual_size(w);
    uint64_t nc = (vs + cs - 1) / cs;
    uint8_t sel = size ? data[size / 2] : 0;
    for (unsigned i = 0; i < MAX_CALLS && nc && r == 0; i++) {
        uint64_t c;
        switch (i % 4) {
        case 0: c = 0; break;
        case 1: c = nc - 1; break;
        case 2: c = nc / 2; break;
        default: c = (sel * 2654435761u + i) % nc; break;
        }
        uint64_t n = 1 + (uint64_t)((sel >> i) & 3);
        if (n > nc - c)
            n = nc - c;
        uint64_t guest = c * cs, len = n * cs;
        lsm_error_clear();
        if ((sel >> i) & 1) {
            r = qcow2_writer_zero(w, guest, len);
        } else {
            while (len && r == 0) {
                uint64_t host = 0, mapped = 0, end = qcow2_writer_end(w);
                r = qcow2_writer_alloc(w, guest, len, &host, &mapped);
                if (r < 0)
                    break;
                /* the contract: a cluster-aligned run inside the range, in
                 * the image (below its end after the call) */
                if (mapped == 0 || mapped > len || mapped % cs || host % cs ||
                    host + mapped > qcow2_writer_end(w) || qcow2_writer_end(w) < end)
                    abort();
                guest += mapped;
                len -= mapped;
            }
        }
        refused_with_message(r);
    }
    if (r == 0 && (sel & 0x40)) {
        /* a checkpoint, then more changes after it */
        lsm_error_clear();
        r = qcow2_writer_checkpoint(w);
        refused_with_message(r);
        if (r == 0 && nc) {
            uint64_t host = 0, mapped = 0;
            lsm_error_clear();
            r = qcow2_writer_alloc(w, (nc - 1) * cs, cs, &host, &mapped);
            refused_with_message(r);
        }
    }
    if (r == 0 && (sel & 0x80) && qcow2_writer_changed(w)) {
        /* interrupted: a second writer must reopen the marked image
         * (rebuilding its refcounts; with 0x40, resuming after the
         * checkpoint) or refuse it with a message */
        qcow2_writer_close(w);
        w = NULL;
        lsm_error_clear();
        r = (sel & 0x40) ? qcow2_writer_resume(fd, 512, &w) : qcow2_writer_open(fd, 512, &w);
        refused_with_message(r);
    }
    uint8_t sel2 = size ? data[size / 3] : 0;
    if (r == 0 && (sel2 & 1) && vs / 65536 / 8 <= (1u << 16)) {
        /* copy --bitmaps: a bitmap added to the opened image (its header
         * gets the bitmaps extension at finish) */
        uint64_t blen = (vs + 65536 * 8 - 1) / (65536 * 8);
        uint8_t *b = calloc(1, blen ? blen : 1);
        if (!b)
            abort();
        if (blen)
            b[0] = sel;
        lsm_error_clear();
        r = qcow2_writer_add_bitmap(w, "fuzz", 16, true, b, blen);
        refused_with_message(r);
        free(b);
    }
    if (r == 0) {
        lsm_error_clear();
        r = qcow2_writer_finish(w);
        refused_with_message(r);
    }
    qcow2_writer_close(w);
    close(fd);
}

static void set_backing_pass(const uint8_t *data, size_t size)
{
    int fd = input_fd(data, size);
    char name[64] = "base.qcow2";
    enum lsm_format fmt = LSM_FMT_QCOW2;
    if (size >= 2) {
        uint8_t k = data[size - 1];
        fmt = k % 3 == 0 ? LSM_FMT_AUTO : k % 3 == 1 ? LSM_FMT_RAW : LSM_FMT_QCOW2;
        size_t nl = 1 + data[size - 2] % (sizeof name - 1);
        memset(name, 'a' + k % 26, nl);
        name[nl] = '\0';
    }
    lsm_error_clear();
    int r = qcow2_set_backing(fd, 512, (size & 1) ? NULL : name, fmt);
    refused_with_message(r);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    writer_pass(data, size);
    set_backing_pass(data, size);
    return 0;
}
