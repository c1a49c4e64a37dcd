/* readcmp: compare the guest-visible content of an image read three ways:
 * through lsm_image_pread (our reader), from a raw file made by
 * `qemu-img convert -O raw` of the same image, and through libqcow (an
 * independent qcow2 reader) when --libqcow is given.
 *
 *   readcmp [--libqcow] IMAGE RAW
 *
 * Exit: 0 same content as qemu-img convert, 1 a difference (first differing
 * offset printed), 2 usage or our reader failed, 3 libqcow could not open or
 * read the image (not ours to judge: the caller reports it).  The last line
 * says what libqcow made of it: "libqcow: equal", "libqcow: disagrees ...",
 * "libqcow: refused", "libqcow: not compared (...)".
 *
 * libqcow 20201213 is a partial reference: it has no extended L2 and no zstd,
 * ignores the v3 zero flag of allocated clusters, returns parent data for a
 * whole request that starts in an unallocated cluster (so it is read one
 * cluster at a time here) and hangs reading past the end of a shorter parent
 * (such chains are not given to it).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libqcow.h>

#include "error.h"
#include "image.h"

#define CHUNK (1024 * 1024)
#define LIBQCOW_MAX_LAYERS 64

static void libqcow_fail(const char *what, const char *file, libqcow_error_t **error)
{
    char msg[512] = "";
    if (*error) {
        libqcow_error_sprint(*error, msg, sizeof(msg));
        libqcow_error_free(error);
    }
    /* libqcow messages can span lines; keep the first one */
    msg[strcspn(msg, "\n")] = '\0';
    fprintf(stderr, "readcmp: libqcow: %s %s: %s\n", what, file, msg);
}

struct qchain {
    libqcow_file_t *files[LIBQCOW_MAX_LAYERS];
    int n;
    uint64_t granule;    /* smallest cluster size in the chain */
};

static void qchain_close(struct qchain *q)
{
    for (int i = 0; i < q->n; i++) {
        libqcow_file_close(q->files[i], NULL);
        libqcow_file_free(&q->files[i], NULL);
    }
    q->n = 0;
}

/* Open every layer of img's chain with libqcow and link the parents.
 * Returns 0, 1 if the chain has a layer libqcow cannot stand for (raw, or
 * smaller than the top), -1 if libqcow refused. */
static int qchain_open(struct qchain *q, struct lsm_image *img)
{
    unsigned n = lsm_chain_length(img);
    if (n > LIBQCOW_MAX_LAYERS)
        return 1;
    q->granule = UINT64_MAX;
    for (unsigned d = 0; d < n; d++) {
        struct lsm_image *layer = lsm_chain_layer(img, d);
        if (layer->format != LSM_FMT_QCOW2 || !layer->cluster_size)
            return 1;
        /* libqcow 20201213 loops forever reading past a parent's end */
        if (layer->virtual_size < img->virtual_size)
            return 1;
        if (layer->cluster_size < q->granule)
            q->granule = layer->cluster_size;
    }
    for (unsigned d = 0; d < n; d++) {
        struct lsm_image *layer = lsm_chain_layer(img, d);
        libqcow_error_t *error = NULL;
        libqcow_file_t *f = NULL;
        if (libqcow_file_initialize(&f, &error) != 1) {
            libqcow_fail("initialize for", layer->filename, &error);
            qchain_close(q);
            return -1;
        }
        if (libqcow_file_open(f, layer->filename, LIBQCOW_OPEN_READ, &error) != 1) {
            libqcow_fail("open", layer->filename, &error);
            libqcow_file_free(&f, NULL);
            qchain_close(q);
            return -1;
        }
        q->files[q->n++] = f;
        if (d > 0 && libqcow_file_set_parent_file(q->files[d - 1], f, &error) != 1) {
            libqcow_fail("set parent of", lsm_chain_layer(img, d - 1)->filename, &error);
            qchain_close(q);
            return -1;
        }
    }
    return 0;
}

static uint64_t first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
    size_t i = 0;
    while (i < len && a[i] == b[i])
        i++;
    return i;
}

int main(int argc, char **argv)
{
    bool use_libqcow = false;
    int argi = 1;
    if (argi < argc && !strcmp(argv[argi], "--libqcow")) {
        use_libqcow = true;
        argi++;
    }
    if (argc - argi != 2) {
        fprintf(stderr, "usage: readcmp [--libqcow] IMAGE RAW\n");
        return 2;
    }
    const char *image = argv[argi], *raw = argv[argi + 1];

    struct lsm_image *img = NULL;
    if (lsm_image_open(image, LSM_FMT_AUTO, 0, &img) < 0) {
        fprintf(stderr, "readcmp: %s\n", lsm_last_error());
        return 2;
    }
    int rawfd = open(raw, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (rawfd < 0 || fstat(rawfd, &st) < 0) {
        fprintf(stderr, "readcmp: %s: %s\n", raw, strerror(errno));
        lsm_image_close(img);
        return 2;
    }
    uint64_t size = img->virtual_size;
    int rc = 0;
    if ((uint64_t)st.st_size != size) {
        printf("%s: virtual size %" PRIu64 ", qemu-img convert gave %" PRIu64 " bytes\n",
               image, size, (uint64_t)st.st_size);
        rc = 1;
    }

    struct qchain q = { .n = 0 };
    const char *qstate = "not asked";
    char qmsg[200];
    if (use_libqcow) {
        int r = qchain_open(&q, img);
        if (r < 0) {
            qstate = "refused";
            rc = rc ? rc : 3;
        } else if (r > 0) {
            qstate = "not compared (a layer is not qcow2, or smaller than the top)";
        } else {
            size64_t msize = 0;
            libqcow_error_t *error = NULL;
            if (libqcow_file_get_media_size(q.files[0], &msize, &error) != 1) {
                libqcow_fail("media size of", image, &error);
                qstate = "refused";
                rc = rc ? rc : 3;
                qchain_close(&q);
            } else if (msize != size) {
                printf("%s: virtual size %" PRIu64 ", libqcow says %" PRIu64 "\n",
                       image, size, (uint64_t)msize);
                rc = 1;
            } else {
                qstate = "equal";
            }
        }
    }

    uint8_t *a = malloc(CHUNK), *b = malloc(CHUNK), *c = malloc(CHUNK);
    if (!a || !b || !c) {
        fprintf(stderr, "readcmp: out of memory\n");
        return 2;
    }
    for (uint64_t off = 0; rc == 0 && off < size; off += CHUNK) {
        size_t len = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
        int r = lsm_image_pread(img, a, len, off);
        if (r < 0) {
            fprintf(stderr, "readcmp: lsm_image_pread at %" PRIu64 ": %s\n", off, lsm_last_error());
            rc = 2;
            break;
        }
        ssize_t got = pread(rawfd, b, len, (off_t)off);
        if (got != (ssize_t)len) {
            fprintf(stderr, "readcmp: %s: short read at %" PRIu64 "\n", raw, off);
            rc = 2;
            break;
        }
        if (memcmp(a, b, len)) {
            printf("%s: differs from qemu-img convert at offset %" PRIu64 "\n",
                   image, off + first_diff(a, b, len));
            rc = 1;
            break;
        }
        if (q.n) {
            /* libqcow 20201213 returns parent data for a whole request
             * that starts in a cluster the top does not allocate: read it
             * one (smallest) cluster at a time. */
            libqcow_error_t *error = NULL;
            ssize_t qgot = 0;
            while (qgot >= 0 && (size_t)qgot < len) {
                size_t piece = q.granule - (off + (size_t)qgot) % q.granule;
                if (piece > len - (size_t)qgot)
                    piece = len - (size_t)qgot;
                ssize_t got1 = libqcow_file_read_buffer_at_offset(q.files[0], c + qgot, piece,
                                                                 (off64_t)(off + (size_t)qgot), &error);
                qgot = got1 == (ssize_t)piece ? qgot + got1 : -1;
            }
            if (qgot != (ssize_t)len) {
                libqcow_fail("read", image, &error);
                qstate = "refused";
                qchain_close(&q);
                rc = 3;
                break;
            }
            if (memcmp(a, c, len)) {
                /* Our reader agrees with QEMU here: the difference is
                 * libqcow's (it ignores the v3 zero flag of allocated
                 * clusters, for one).  Report it, compare no further. */
                uint64_t at = first_diff(a, c, len);
                snprintf(qmsg, sizeof(qmsg), "disagrees at offset %" PRIu64
                         " (0x%02x, libqcow 0x%02x; qemu-img agrees with us)",
                         off + at, a[at], c[at]);
                qstate = qmsg;
                qchain_close(&q);
            }
        }
    }
    if (rc == 0 || rc == 3)
        printf("%s: %" PRIu64 " bytes equal to qemu-img convert; libqcow: %s\n", image, size, qstate);

    free(a);
    free(b);
    free(c);
    qchain_close(&q);
    close(rawfd);
    lsm_image_close(img);
    return rc;
}
