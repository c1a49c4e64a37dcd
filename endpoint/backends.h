/* The endpoint backends' create functions (endpoint.h has the table and
 * the loop).  Flows include this; the engine does not: it sees endpoints
 * only through struct lsm_ep.
 *
 * Library layer: never prints. */
#ifndef LSM_ENDPOINT_BACKENDS_H
#define LSM_ENDPOINT_BACKENDS_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "endpoint.h"

struct lsm_image;
struct qcow2_writer;

/* file.c: f (not owned) as an endpoint of size bytes.  Create it after the
 * last lsm_file_set_direct on f: its alignment is read here. */
#define LSM_EP_FILE_READ_ONLY  0x1u
#define LSM_EP_FILE_READS_ZERO 0x2u   /* reads as zeroes now (created, truncated, --target-is-zero) */
int lsm_ep_file_create(struct lsm_loop *loop, struct lsm_file *f, uint64_t size, unsigned flags,
                       struct lsm_ep **out);
/* Offer copy_range on a file endpoint made by lsm_ep_file_create: each
 * range goes down ol (not owned; it outlives the endpoint), and what ol
 * leaves of it goes through the pipeline. */
struct lsm_offload;
void lsm_ep_file_set_offload(struct lsm_ep *ep, struct lsm_offload *ol);

/* null.c: size bytes that read as zeroes (extents: one zero extent);
 * writes, zeroes and trims are discarded. */
int lsm_ep_null_create(struct lsm_loop *loop, uint64_t size, struct lsm_ep **out);

/* image.c: the guest view of the chain below img (or, with one_layer, of
 * img's own layer: absent where img does not decide the content).  Data
 * extents are read asynchronously at their host offset through a second,
 * read-only lsm_file per layer (O_DIRECT per `direct`), opened on first
 * use; compressed and mixed ranges through the reader, synchronously.
 * check fails if a layer's size or modification time changed since the
 * endpoint was made.  img is not owned. */
int lsm_ep_image_create(struct lsm_loop *loop, struct lsm_image *img, bool one_layer,
                        enum lsm_direct_mode direct, struct lsm_ep **out);

/* phys.c: one qcow2 layer's image file in host order (offsets are file
 * offsets, size is the file size): DATA extents are the runs of host
 * clusters in use (refcount > 0), the rest ABSENT; caps.host_order.
 * Creating it validates the layer: the whole map is walked with the
 * reader (what `map` refuses, this refuses), and every host cluster the
 * map points at and every metadata table the reader lists must be in use.
 * The header cluster is caps.deferred: reads of it return the copy taken
 * at create, and check fails if the file's size, modification time or
 * header cluster changed since.  img is not owned. */
int lsm_ep_phys_create(struct lsm_loop *loop, struct lsm_image *img, enum lsm_direct_mode direct,
                       struct lsm_ep **out);

/* qcow2.c: a qcow2 destination over the writer w (not owned) on f (not
 * owned; the descriptor w writes).  Guest offsets in; data goes to the
 * host clusters qcow2_writer_alloc hands out, zero ranges become zero
 * clusters, finish is the writer's finish.  reads_zero: zero ranges need
 * nothing (a new image without a backing file, or --target-is-zero).
 * LSM_EP_QCOW2_RESERVE: the image is new, so expect() may extend the file
 * ahead of the writer (ext4 serialises O_DIRECT writes that extend a
 * file); finish trims what was not used.  LSM_EP_QCOW2_TRIM: finish
 * truncates the file to the image's final size (a resumed image, past
 * whose end the interrupted run may have left clusters).  checkpoint:
 * flush, then the writer's checkpoint (its tables consistent on disk, the
 * image still marked incomplete). */
#define LSM_EP_QCOW2_RESERVE 0x1u
#define LSM_EP_QCOW2_TRIM    0x2u
int lsm_ep_qcow2_create(struct lsm_loop *loop, struct qcow2_writer *w, struct lsm_file *f,
                        bool reads_zero, unsigned flags, struct lsm_ep **out);

/* nbd.c (module lsm-endpoint-nbd, symbols "lsm_ep_nbd_open" and
 * "lsm_ep_nbd_create"): an NBD export, as a
 * read-only source or (writable) a destination (docs/nbd.md).  Extents
 * from base:allocation; data with NBD_CMD_READ / WRITE, zeroes with
 * WRITE_ZEROES (FAST_ZERO when the command asks and the server offers it,
 * NO_HOLE when the command does not allow a hole), flush with
 * NBD_CMD_FLUSH on every connection (and one in the background every
 * flush_every bytes written).  `connections` connections (0: the
 * default below) when the server advertises multi-conn, one otherwise.
 * A destination reads_zero when the caller says so (--target-is-zero) or
 * when the server's base:allocation says every byte reads as zero (asked
 * at open for exports of at most 4 GiB).  No wait on the server is
 * unbounded: connecting fails with -ETIMEDOUT after connect_ms, each
 * request after request_ms (0 for either: the defaults below); *cancel
 * (may be NULL) is looked at at least every 50 ms while waiting, and a
 * set flag ends the wait with -EINTR.  A request the server fails with a
 * transient error (EIO, ENOMEM) is sent again at most `retries` times
 * (-1: the default), with a doubling backoff from 100 ms.  After a
 * time-out, a cancel or a lost connection the endpoint sends nothing more
 * and its close does not wait for the server. */
#define LSM_NBD_CONNECT_TIMEOUT_MS 30000
#define LSM_NBD_REQUEST_TIMEOUT_MS 60000
#define LSM_NBD_MAX_CONNECTIONS 8
#define LSM_NBD_CONNECTIONS 4
#define LSM_NBD_RETRIES 3
#define LSM_NBD_FLUSH_EVERY (32ull << 20)
struct lsm_ep_nbd_opts {
    const char *uri;
    bool writable;                  /* a destination */
    bool reads_zero;                /* destination: known to read as zeroes */
    unsigned connections;           /* 0: LSM_NBD_CONNECTIONS (1 without multi-conn) */
    int retries;                    /* -1: LSM_NBD_RETRIES */
    unsigned connect_ms, request_ms;
    /* A destination: a background NBD_CMD_FLUSH every this many bytes of
     * writes and zeroes completed (0: LSM_NBD_FLUSH_EVERY; UINT64_MAX:
     * never), so that the final flush has little left to do. */
    uint64_t flush_every;
    volatile sig_atomic_t *cancel;
    /* After *cancel is set, requests in flight and a flush may still
     * complete for this long (at most 900 ms) before every wait ends with
     * -EINTR: a journaled copy drains and checkpoints then.  0: at once. */
    unsigned cancel_grace_ms;
    /* A source serving one qcow2 layer alone (qemu-nbd with "backing":
     * null; sync's NBD sources, docs/nbd.md): needs qemu:allocation-depth
     * (-ENOTSUP otherwise); depth 0 is ABSENT, the rest as base:allocation
     * says.  layer_align (the destination's cluster size, or 0): a depth
     * change off a multiple of it is -EINVAL (such a cluster could not be
     * copied). */
    bool one_layer;
    uint64_t layer_align;
};
int lsm_ep_nbd_open(struct lsm_loop *loop, const struct lsm_ep_nbd_opts *o, struct lsm_ep **out);
/* A source over one connection (lsm_ep_nbd_open with the defaults). */
int lsm_ep_nbd_create(struct lsm_loop *loop, const char *uri, volatile sig_atomic_t *cancel,
                      unsigned connect_ms, unsigned request_ms, struct lsm_ep **out);

#endif
