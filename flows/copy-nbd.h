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

/* ---- Journals with NBD ends (docs/resume.md, "NBD ends") ----
 *
 * An export has no dev/ino or modification time: in a journal it is its
 * URI (informative), dev and ino 0, its size, and a hash of blocks of
 * LSM_COPY_NBD_PROBE_LEN bytes at the probe offsets the entry lists.  A
 * source's probes are fixed places (its start, middle and end); a
 * destination's are blocks the journal counts as done, chosen again at
 * every checkpoint after the flush, read back from the export. */
#define LSM_COPY_NBD_PROBE_LEN 4096

struct lsm_image;
struct lsm_journal;
struct lsm_journal_file;
struct json_object;

/* Fill f (role and path allocated: lsm_journal_file_clear) for the export
 * ep at uri, hashing the n probes (reads through ep: nothing else may be
 * in flight on its loop).  n 0: no hash. */
int lsm_copy_nbd_ident(struct lsm_ep *ep, const char *role, const char *uri,
                       const uint64_t *probes, unsigned n, struct lsm_journal_file *f);
/* A copy's file list for an NBD source: the source (fixed probes) and an
 * empty last slot for the destination. */
int lsm_copy_nbd_src_idents(struct lsm_ep *ep, const char *uri, struct lsm_journal_file **out,
                            size_t *nout);
/* Resume: the journal's file idx (an NBD end) against now (its identity
 * computed over the journal's probes): -ESTALE "ROLE URI is not the export
 * this journal was written for (...)" when the size or the blocks
 * differ. */
int lsm_copy_nbd_check_ident(const struct lsm_journal *jl, size_t idx,
                             const struct lsm_journal_file *now);

/* copy.c's, shared with the NBD destination's journal: the identities of
 * a source chain plus the destination's slot, and the comparison of the
 * job's options with a journal's (-ESTALE naming the first that differs). */
int lsm_copy_journal_src_idents(struct lsm_image *img, struct lsm_journal_file **out,
                                size_t *nout);
int lsm_copy_journal_check_options(struct json_object *want, struct json_object *have);

#endif
