/* NBD in the copy flow (docs/nbd.md): the NBD endpoint opened from its
 * module (libnbd is loaded only when a URI names an export), the copy to
 * an NBD destination, and the defaults a copy with an NBD end uses.
 *
 * Library layer: never prints; -errno with a message (lsm_error()). */
#ifndef LSM_FLOW_COPY_NBD_H
#define LSM_FLOW_COPY_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include "endpoint.h"
#include "flow-copy.h"

/* Defaults of a copy with an NBD end (measured: docs/nbd.md). */
#define LSM_COPY_NBD_REQUESTS 64
#define LSM_COPY_NBD_REQUEST_SIZE (256 * 1024)

/* The NBD endpoint for uri: a source, or (writable) a destination, with the
 * options of o (connections, time-outs, cancel, --target-is-zero). */
int lsm_copy_open_nbd(const struct lsm_copy_opts *o, struct lsm_loop *loop, const char *uri,
                      bool writable, struct lsm_ep **out);

/* With an NBD end and the value not given in o: the NBD defaults for
 * requests in flight, request size and buffer budget. */
void lsm_copy_nbd_defaults(const struct lsm_copy_opts *o, unsigned *requests,
                           uint64_t *request_size, uint64_t *buffer_size);

/* lsm_copy() for an NBD destination (lsm_is_nbd_uri(o->dst_path)): SRC an
 * image chain or an NBD export, DST written in guest order and flushed; a
 * destination export is never created or removed (on failure
 * st->dst_incomplete). */
int lsm_copy_nbd_dst(const struct lsm_copy_opts *o, struct lsm_copy_stats *st);

/* Shared by the copy flows (copy.c, copy-nbd.c): the engine parameters
 * that come straight from o (rate, limiter, salvage, sparse size, checksum,
 * cancel and the callbacks; the caller sets the size, the request geometry
 * and what is its own), and the engine's counts into st. */
struct lsm_engine_params;
struct lsm_engine_stats;
void lsm_copy_engine_params(const struct lsm_copy_opts *o, struct lsm_engine_params *ep);
void lsm_copy_take_engine_stats(struct lsm_copy_stats *st, const struct lsm_engine_stats *es);

#endif
