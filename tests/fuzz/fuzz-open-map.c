/* libFuzzer target: open an arbitrary file as an image (format probed, chain
 * followed), walk its whole map in chain mode and in one-layer mode, read a
 * few ranges and the format information (snapshots, bitmap directory and content), then each internal snapshot's view
 * (lsm_qcow2_load_snapshot, copy -l) the same way, close.  The same bytes
 * also go through the extender's header parser (lsm_qcow2_geometry_parse,
 * the full-size cap).
 *
 * The input is written to a file in a private directory, so relative backing
 * names resolve inside that directory (to missing files, or back to the input
 * itself: a loop the reader must detect).  Reads are bounded here; the map
 * walk is not: the reader must be fast whatever the virtual size.
 *
 * Built with -Dfuzzing=true (clang, -fsanitize=fuzzer,address,undefined).
 * fuzz-replay.c feeds the seed corpus to the same function in every build,
 * so the corpus runs as an ordinary test.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "image.h"
#include "qcow2/qcow2-measure.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define READ_MAX (64 * 1024)     /* largest single pread */
#define READS_MAX 16             /* preads per input */

static char dir[64];
static char path[96];

static void remove_dir(void)
{
    if (path[0])
        unlink(path);
    if (dir[0])
        rmdir(dir);
}

static int setup(void)
{
    if (dir[0])
        return 0;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/lsm-fuzz.XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    snprintf(path, sizeof(path), "%s/input", dir);
    atexit(remove_dir);
    return 0;
}

static void write_input(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror("fuzz: open input");
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("fuzz: write input");
            abort();
        }
        done += (size_t)n;
    }
    close(fd);
}

/* Read [off, off+len) clamped to the image and to READ_MAX. */
static void read_range(struct lsm_image *img, uint8_t *buf, uint64_t off, uint64_t len)
{
    if (off >= img->virtual_size)
        return;
    if (len > img->virtual_size - off)
        len = img->virtual_size - off;
    if (len > READ_MAX)
        len = READ_MAX;
    if (len)
        (void)lsm_image_pread(img, buf, len, off);
}

static void walk(struct lsm_image *img, unsigned flags, uint8_t *buf, unsigned *reads)
{
    struct lsm_map_iter it;
    struct lsm_extent e;
    uint64_t expect = 0;

    lsm_map_iter_init(&it, img, 0, img->virtual_size, flags);
    while (lsm_map_iter_next(&it, &e) == 1) {
        /* Extents are contiguous, non-empty and inside the image. */
        if (e.start != expect || e.length == 0 || e.start + e.length < e.start ||
            e.start + e.length > img->virtual_size)
            abort();
        expect = e.start + e.length;
        if ((e.flags & LSM_EXT_DATA) && *reads < READS_MAX) {
            (*reads)++;
            read_range(img, buf, e.start, e.length);
            /* and the last bytes of the extent, across its end if possible */
            if (e.length > 512)
                read_range(img, buf, e.start + e.length - 512, 1024);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t buf[READ_MAX];
    struct lsm_image *img = NULL;
    unsigned reads = 0;

    /* The extender's header parser (qcow2-measure.c) on the same bytes: a
     * geometry it accepts gives a cap of 0 (unknown) or at least the
     * capacity. */
    struct lsm_qcow2_geometry g;
    if (lsm_qcow2_geometry_parse(data, size, &g) == 0) {
        uint64_t full = lsm_qcow2_full_size_of(&g);
        if (full && full < g.capacity)
            abort();
    }

    setup();
    write_input(data, size);
    lsm_error_clear();
    if (lsm_image_open(path, LSM_FMT_AUTO, 0, &img) < 0) {
        /* A refusal must come with a message. */
        if (!*lsm_last_error())
            abort();
        return 0;
    }

    unsigned n = lsm_chain_length(img);
    for (unsigned d = 0; d < n; d++) {
        struct lsm_image *layer = lsm_chain_layer(img, d);
        struct lsm_qcow2_info qi;
        struct lsm_snapshot_info *snaps = NULL;
        if (!layer)
            abort();
        if (lsm_qcow2_get_info(layer, &qi) == 0) {
            int ns = lsm_qcow2_get_snapshots(layer, &snaps);
            if (ns >= 0)
                lsm_snapshots_free(snaps, ns);
            struct lsm_bitmap_info *bm = NULL;
            lsm_error_clear();
            int nb = lsm_qcow2_get_bitmaps(layer, &bm);
            if (nb < 0 && !*lsm_last_error())
                abort();
            /* their content (copy --bitmaps), when small */
            for (int i = 0; i < nb; i++) {
                uint64_t blen = lsm_bitmap_bytes(layer->virtual_size, bm[i].granularity);
                if (blen > (1u << 20))
                    continue;
                uint8_t *bb = malloc(blen ? blen : 1);
                if (!bb)
                    abort();
                lsm_error_clear();
                if (lsm_qcow2_read_bitmap(layer, &bm[i], bb, (size_t)blen) < 0 && !*lsm_last_error())
                    abort();
                free(bb);
            }
            if (nb > 0)
                lsm_bitmaps_free(bm, nb);
        }
        (void)lsm_image_actual_size(layer);
    }

    walk(img, 0, buf, &reads);
    walk(img, LSM_MAP_ONE_LAYER, buf, &reads);

    /* Fixed places: the start, the middle, the end, across the end. */
    uint64_t vs = img->virtual_size;
    read_range(img, buf, 0, READ_MAX);
    read_range(img, buf, vs / 2, 4096);
    read_range(img, buf, vs > 4096 ? vs - 4096 : 0, READ_MAX);
    if (vs > 1)
        read_range(img, buf, vs - 1, 1);

    /* copy -l: every snapshot's view of the top layer, walked the same way. */
    struct lsm_snapshot_info *snaps = NULL;
    int ns = lsm_qcow2_get_snapshots(img, &snaps);
    for (int i = 0; i < ns && i < 4; i++) {
        lsm_error_clear();
        if (lsm_qcow2_load_snapshot(img, snaps[i].id, LSM_SNAPSHOT_ID) < 0) {
            if (!*lsm_last_error())
                abort();
            continue;
        }
        reads = 0;
        walk(img, 0, buf, &reads);
        walk(img, LSM_MAP_ONE_LAYER, buf, &reads);
    }
    if (ns > 0)
        lsm_snapshots_free(snaps, ns);

    lsm_image_close(img);
    return 0;
}
