/* Volume generations: the fencing counter of the storage pool manager.
 *
 * A task may carry the generation the orchestrator expects its
 * destination volume to have.  The service refuses the task when the
 * volume's generation is another one, and increments it when the task
 * finishes successfully, so that a second orchestrator (or a retry of an
 * old request) holding a stale generation is refused.
 *
 * Where it lives: in a small file beside the volume, so that every host
 * that sees the storage domain sees the same counter (vdsm keeps its
 * generation in the volume's metadata the same way):
 *
 *   DIR/NAME             the volume (a regular file; realpath resolved)
 *   DIR/NAME.generation  "N\n" in decimal; absent means generation 0
 *
 * Block volumes (an LV has no directory to put a file in) are refused
 * with -ENOTSUP when a generation is given.  The file is replaced
 * atomically (store.h: lsm_write_file_atomic), under a process-wide mutex
 * so that two tasks of this service cannot both bump from N; two services
 * on two hosts are fenced by the orchestrator's own locking, as with vdsm.
 *
 * Library layer: never prints. */
#ifndef LSM_SERVE_GENERATION_H
#define LSM_SERVE_GENERATION_H

#include <stddef.h>
#include <stdint.h>

#define LSM_GENERATION_MAX (UINT64_C(1) << 53)   /* JSON-safe integers */

/* Parse the file's content: decimal digits, an optional newline, nothing
 * else, at most LSM_GENERATION_MAX.  -EINVAL otherwise. */
int lsm_generation_parse(const char *buf, size_t len, uint64_t *out);
/* The generation of volume (0 when its generation file does not exist).
 * -ENOTSUP for a block device, -errno with a message otherwise. */
int lsm_generation_get(const char *volume, uint64_t *out);
/* If the generation is expected, make it expected + 1 (0); else -ESTALE
 * with a message saying both. */
int lsm_generation_bump(const char *volume, uint64_t expected);

#endif
