/* Volume generations: the fencing counter of the storage pool manager.
 *
 * A task may carry the generation the orchestrator expects its
 * destination volume to have.  The service refuses the task when the
 * volume's generation is another one, and increments it when the task
 * finishes successfully, so that a second orchestrator (or a retry of an
 * old request) holding a stale generation is refused.
 *
 * Where it lives: where every host that sees the storage domain sees it
 * (vdsm keeps its generation in the volume's metadata the same way):
 *
 *   file volume DIR/NAME (a regular file; realpath resolved): a file
 *     DIR/NAME.generation holding "N\n" in decimal
 *   block volume (a block device that is an active LV, found by its device
 *     number with lvs, whatever path names it): the LV's tag lsm_gen_N
 *
 * Absent (no file, no tag) means generation 0.  A file is replaced
 * atomically (store.h: lsm_write_file_atomic); a tag with one
 * "lvchange --deltag lsm_gen_N --addtag lsm_gen_N+1", which LVM 2.03
 * commits as one metadata change, and read back afterwards.  Other block
 * devices are refused with -ENOTSUP.  All under a process-wide mutex so
 * that two tasks of this service cannot both bump from N; two services on
 * two hosts are fenced by the orchestrator's own locking, as with vdsm.
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
#define LSM_GENERATION_TAG_PREFIX "lsm_gen_"

/* Parse an LV's tags as lvs prints them (comma-separated): the N of its
 * one tag lsm_gen_N, 0 when it has none.  -EINVAL when that tag's N is not
 * decimal as lsm_generation_parse takes it or has a leading zero, -EUCLEAN
 * when there are two or more generation tags. */
int lsm_generation_from_tags(const char *tags, uint64_t *out);
/* The generation of volume (0 when it has no generation file or tag).
 * -ENOTSUP for a block device that is no active LV, -errno with a message
 * otherwise. */
int lsm_generation_get(const char *volume, uint64_t *out);
/* If the generation is expected, make it expected + 1 (0); else -ESTALE
 * with a message saying both. */
int lsm_generation_bump(const char *volume, uint64_t expected);

#endif
