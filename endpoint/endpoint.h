/* Endpoints: one table of operations for both ends of a copy.
 *
 * The copy engine talks to its source and its destination only through
 * struct lsm_ep (the shape of nbdcopy's rw_ops): a table of operations, a
 * set of capabilities and per-instance state.  Each backend is one file of
 * endpoint/ that fills the table with designated initialisers:
 *
 *   file.c    a raw file or block device over io/ (either end)
 *   image.c   a qcow2/raw chain (or one layer) as a guest-order source
 *   phys.c    one qcow2 layer's file in host order (a physical copy)
 *   qcow2.c   a qcow2 destination (guest offsets in, host clusters out)
 *   null.c    reads zeroes, discards writes (tests, bench)
 *   nbd.c     an NBD export (loadable module lsm-endpoint-nbd)
 * Their create functions are in backends.h, which the engine never
 * includes.
 *
 * Contract.
 *   Ownership.  An endpoint is made by its backend's create function and
 *   freed by lsm_ep_close(); it never owns what its creator hands it (an
 *   lsm_file, an lsm_image, a qcow2 writer) unless the create function says
 *   so.  Nothing is registered globally: a flow picks the backends.
 *
 *   Commands.  read, write, zero and trim take a struct lsm_ep_cmd that the
 *   caller owns and fills (op-specific fields below, done, user) and must
 *   keep until its done callback ran.  The call returns 0 when the command
 *   was accepted: done is then called exactly once, later, from
 *   lsm_loop_run() on the loop's thread, never from inside the submitting
 *   call (so a caller may submit from its own callback).  It returns -errno
 *   (with a message, no callback) when the command was refused at once.
 *   On completion cmd->result is 0 (every byte transferred: backends
 *   retry short transfers themselves) or -errno with a message recorded
 *   by lsm_error() at the moment of failure.  Commands may complete in any
 *   order; overlapping commands in flight at the same time have no
 *   defined order (the engine never issues them).
 *
 *   Flow control.  There is no limit on accepted commands: the local
 *   backends queue on the loop's lsm_io and keep what does not fit in a
 *   backlog that the loop drains; the caller bounds its own requests.
 *
 *   Synchronous operations.  extents, flush, checkpoint, finish, check,
 *   expect and copy_range run to completion in the call.  They may only
 *   be called with no command of this endpoint in flight (flush and
 *   checkpoint say so: they are the engine's drain points).
 *
 *   Threads.  An endpoint and its loop are used by one thread at a time.
 *
 *   Library layer: never prints; errors are -errno with lsm_error().
 */
#ifndef LSM_ENDPOINT_H
#define LSM_ENDPOINT_H

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "io.h"

struct lsm_ep;
struct lsm_loop;

/* ---- Extents ---- */

enum lsm_ep_kind {
    LSM_EP_ABSENT = 0,   /* not present in what is copied: leave to the backing file */
    LSM_EP_ZERO,         /* reads as zeroes */
    LSM_EP_DATA,         /* data */
};

struct lsm_ep_extent {
    uint64_t start, length;
    enum lsm_ep_kind kind;
    /* DATA only, may be NULL: where the endpoint will find the bytes, as a
     * cookie that means something only to this endpoint (the image
     * endpoint: the layer's lsm_file; loc_off: the host offset of start).
     * A read command over a range of one such extent that passes the
     * cookie back (with loc_off advanced by the distance from start) lets
     * the endpoint read without a second look-up, and asynchronously. */
    const void *loc;
    uint64_t loc_off;
};

/* ---- Commands ---- */

enum lsm_ep_op { LSM_EP_OP_READ, LSM_EP_OP_WRITE, LSM_EP_OP_ZERO, LSM_EP_OP_TRIM };

/* zero flags (nbdcopy's and NBD's meaning) */
#define LSM_EP_MAY_TRIM  0x1u   /* the range may be deallocated as long as it reads as zeroes */
#define LSM_EP_FAST_ZERO 0x2u   /* fail with -ENOTSUP rather than zero slowly (writing zeroes) */

struct lsm_ep_cmd;
typedef void (*lsm_ep_done_fn)(struct lsm_ep_cmd *cmd);

struct lsm_ep_cmd {
    /* set by the caller */
    enum lsm_ep_op op;
    unsigned flags;           /* zero: LSM_EP_MAY_TRIM, LSM_EP_FAST_ZERO */
    void *buf;                /* read, write: caps.mem_align-aligned for the fast path */
    int buf_index;            /* a buffer registered with the loop containing buf, or -1 */
    uint64_t offset, len;
    const void *loc;          /* read: an extent's cookie for [offset, offset+len), or NULL */
    uint64_t loc_off;
    lsm_ep_done_fn done;
    void *user;
    /* set by the endpoint before done */
    int result;               /* 0 or -errno (message recorded) */
    /* private to the endpoint and the loop */
    struct lsm_ep *ep;
    unsigned parts;           /* parts still outstanding, +1 while being submitted */
    struct lsm_ep_cmd *next_ready;
};

/* ---- Capabilities ---- */

struct lsm_ep_caps {
    uint64_t size;            /* bytes of the endpoint's address space */
    bool read_only;
    bool can_extents;         /* extents says more than "all data" */
    bool can_zero;            /* zero without writing a buffer of zeroes */
    bool can_fast_zero;       /* LSM_EP_FAST_ZERO is honoured */
    bool can_trim;
    bool can_flush;           /* flush makes writes durable (false: nothing to flush) */
    bool multi_conn;          /* several connections see one consistent image */
    bool reads_zero;          /* destination reads as zeroes now: zero ranges need nothing */
    bool host_order;          /* source: its extents are a file's layout, copied as they are
                                 (a physical copy): data extents are taken as runs */
    uint32_t block_min;       /* smallest I/O unit (1: any) */
    uint32_t block_pref;      /* preferred I/O unit */
    uint64_t max_request;     /* largest read or write (0: no limit) */
    uint32_t mem_align;       /* buffer alignment for the fast path (1: any) */
    uint32_t zero_align;      /* zero: offset and length alignment it needs (1: any) */
    uint32_t granule;         /* destination: its allocation granule (qcow2: the cluster;
                                 file: a block); a source in host order: its cluster */
    uint32_t hole_min;        /* destination: shortest zero run worth a zero request
                                 inside data (shorter ones are written as data) */
    uint64_t deferred;        /* source: [0, deferred) is copied last, after a flush of
                                 everything else (a physical copy's header cluster) */
    bool pad_writes;          /* destination: a write's buffer has room up to the granule
                                 after len, and the endpoint may zero-fill it (qcow2's
                                 last cluster) */
};

/* ---- Operations ---- */

struct lsm_ep_ops {
    const char *name;         /* "file", "image", "physical", "qcow2", "null", "nbd" */

    /* Extents of [off, off+len): fills out[0..n) contiguously from off
     * (the last may end before off+len, never after it) and returns n >= 1,
     * or -errno.  Cheap when called with increasing offsets (each call
     * where the previous ended).  NULL: the whole range is data. */
    int (*extents)(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                   unsigned max);

    /* Asynchronous commands (see the contract above).  NULL: not supported. */
    int (*read)(struct lsm_ep *ep, struct lsm_ep_cmd *cmd);
    int (*write)(struct lsm_ep *ep, struct lsm_ep_cmd *cmd);
    int (*zero)(struct lsm_ep *ep, struct lsm_ep_cmd *cmd);
    int (*trim)(struct lsm_ep *ep, struct lsm_ep_cmd *cmd);

    /* Make every completed write durable.  NULL: nothing to do. */
    int (*flush)(struct lsm_ep *ep);
    /* Flush, and make the endpoint's own metadata consistent on disk so
     * that what completed so far survives a crash (a journal's drain
     * point).  NULL: flush is enough. */
    int (*checkpoint)(struct lsm_ep *ep);
    /* The destination is complete: write what is left of its metadata and
     * make everything durable (qcow2: the writer's finish).  NULL: flush. */
    int (*finish)(struct lsm_ep *ep);
    /* Source: after the copy, -errno if it changed under us.  NULL: 0. */
    int (*check)(struct lsm_ep *ep);
    /* Destination: about `bytes` of data are coming (after the plan's
     * pre-pass), so it may reserve room.  NULL: nothing. */
    int (*expect)(struct lsm_ep *ep, uint64_t bytes);

    /* Offload, offered by a destination for a given source: copy up to len
     * bytes of the source's data at src_off (with the extent cookie
     * loc/loc_off) to dst_off without the data passing through the
     * engine.  Returns bytes copied (> 0), 0 when offload does not apply
     * to this pair (the caller stops asking), or -errno. */
    int64_t (*copy_range)(struct lsm_ep *dst, struct lsm_ep *src, uint64_t src_off,
                          const void *loc, uint64_t loc_off, uint64_t dst_off, uint64_t len);
    /* Source: the local file and offset that hold [off, off+len) of data
     * (from its cookie), for a destination's copy_range; -ENOTSUP if
     * none. */
    int (*file_at)(struct lsm_ep *ep, uint64_t off, const void *loc, uint64_t loc_off,
                   struct lsm_file **file, uint64_t *file_off);

    /* Foreign descriptor (an endpoint with its own connection, not on the
     * loop's lsm_io): the descriptor to poll and the events wanted now, or
     * -1 when nothing is pending; then notify with what poll saw. */
    int (*poll_fd)(struct lsm_ep *ep, short *events);
    int (*notify)(struct lsm_ep *ep, short revents);

    void (*close)(struct lsm_ep *ep);
};

struct lsm_ep {
    const struct lsm_ep_ops *ops;
    struct lsm_ep_caps caps;
    const char *name;         /* for messages: the path or URI (the backend's copy) */
    struct lsm_loop *loop;
    void *priv;
    /* A destination never flushed (copy -t unsafe, as qemu-img's
     * cache=unsafe): lsm_ep_flush does nothing, and the file and NBD
     * backends send no background syncs or flushes.  Set by the caller
     * before the first write.  A finish that is more than a flush (the
     * qcow2 writer's) still runs. */
    bool no_flush;
};

/* Calls through the table, with the defaults above. */
int lsm_ep_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                   unsigned max);
int lsm_ep_submit(struct lsm_ep *ep, struct lsm_ep_cmd *cmd);
int lsm_ep_flush(struct lsm_ep *ep);
int lsm_ep_checkpoint(struct lsm_ep *ep);
int lsm_ep_finish(struct lsm_ep *ep);
int lsm_ep_check(struct lsm_ep *ep);
int lsm_ep_expect(struct lsm_ep *ep, uint64_t bytes);
/* Run one command to completion (driving the loop): 0 or -errno.  Only
 * when nothing else is in flight on the loop. */
int lsm_ep_run(struct lsm_ep *ep, struct lsm_ep_cmd *cmd);
void lsm_ep_close(struct lsm_ep *ep);

/* ---- The loop ----
 *
 * One loop drives every endpoint of a copy on one thread.  It owns the
 * lsm_io (io/io.h) on which the local backends (file, image, phys, qcow2)
 * queue their reads and writes, so that the source reads and the
 * destination writes share one io_uring ring, and it polls the
 * descriptors of foreign endpoints (NBD) added with lsm_loop_add_fd().
 *
 * lsm_loop_run() pushes queued I/O to the kernel, then delivers finished
 * commands: those already finished (a synchronous backend's, or a
 * failure) first, without waiting; otherwise it waits for at least one.
 * With only local endpoints the wait is one blocking lsm_io_reap(), as
 * the engine did before endpoints existed.  With foreign descriptors it
 * poll()s them, in slices of at most 1 ms while local I/O is also in
 * flight (the reap is then non-blocking) and of at most 50 ms otherwise. */

struct lsm_loop_config {
    enum lsm_io_kind io_kind;
    unsigned depth;           /* lsm_io queue depth (0: 64) */
    bool fixed_buffers;
};

int lsm_loop_create(const struct lsm_loop_config *cfg, struct lsm_loop **out);
/* Waits for local I/O still in flight; commands not delivered are dropped.
 * Endpoints may be closed before or after; foreign ones still added are
 * detached (their loop pointer becomes NULL). */
void lsm_loop_destroy(struct lsm_loop *loop);
const char *lsm_loop_io_name(const struct lsm_loop *loop);
/* Buffers and files for fixed I/O (see lsm_io_register_*). */
int lsm_loop_register_buffers(struct lsm_loop *loop, const struct iovec *iov, unsigned n);
int lsm_loop_register_file(struct lsm_loop *loop, struct lsm_file *f);
/* A foreign endpoint whose poll_fd/notify the loop drives (at most 8). */
int lsm_loop_add_fd(struct lsm_loop *loop, struct lsm_ep *ep);
void lsm_loop_remove_fd(struct lsm_loop *loop, struct lsm_ep *ep);
/* Deliver finished commands, waiting for one if none is finished and any
 * is outstanding.  Returns the number delivered (0: nothing outstanding),
 * or -errno when the loop cannot go on (a failed reap: what is in flight
 * is not known any more). */
int lsm_loop_run(struct lsm_loop *loop);
/* The message of the first command that failed on this loop (recorded
 * when it failed: later failures and lsm_error_clear() calls do not
 * change it), or NULL; and forgetting it. */
const char *lsm_loop_first_error(const struct lsm_loop *loop);
void lsm_loop_clear_error(struct lsm_loop *loop);
/* Commands accepted and not delivered yet. */
unsigned lsm_loop_outstanding(const struct lsm_loop *loop);

/* ---- For backends (the files of endpoint/ only) ---- */

/* Start a command: parts = 1 (the submission itself), counted outstanding. */
void lsm_loop_cmd_begin(struct lsm_loop *loop, struct lsm_ep *ep, struct lsm_ep_cmd *cmd);
/* One part of cmd ended with err (0 or -errno; the first error is kept);
 * when none is left the command is queued for delivery. */
void lsm_loop_cmd_put(struct lsm_loop *loop, struct lsm_ep_cmd *cmd, int err);
/* Called on a short read (n < len bytes at file_off into buf; n may be 0)
 * to supply the rest: 0 or -errno. */
typedef int (*lsm_loop_short_fn)(struct lsm_ep *ep, struct lsm_ep_cmd *cmd, void *buf,
                                 uint64_t len, uint64_t file_off);
/* Queue one part of cmd as I/O on f (READ or WRITE, len > 0, aligned for
 * f).  A short transfer is retried for the rest; a short read calls
 * on_short if given (else it fails with -EIO).  Returns 0 or -errno (the
 * part then counts as failed: the caller only puts its submission). */
int lsm_loop_file_io(struct lsm_loop *loop, struct lsm_ep_cmd *cmd, enum lsm_io_op op,
                     struct lsm_file *f, void *buf, uint64_t len, uint64_t off,
                     lsm_loop_short_fn on_short);

#endif
