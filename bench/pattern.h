/* verify=pattern: every bs block carries a header naming its offset and
 * the job's seed, followed by bytes generated from (seed, offset).  A block
 * written to the wrong place, a stale block and a flipped bit are each
 * told apart in the message. */
#ifndef LSM_BENCH_PATTERN_H
#define LSM_BENCH_PATTERN_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_PATTERN_MAGIC "LSMBVRFY"
#define BENCH_PATTERN_HEADER 32   /* magic 8, offset 8, seed 8, length 4, pad 4 */

/* Fill buf (len bytes, the block at offset) with the pattern. */
void bench_pattern_fill(void *buf, size_t len, uint64_t offset, uint64_t seed);
/* 0 if buf holds the pattern of the block at offset; otherwise -EBADMSG
 * with an lsm_error() message naming the offset and what was wrong. */
int bench_pattern_check(const void *buf, size_t len, uint64_t offset, uint64_t seed,
                        const char *path);
/* Bytes of a plain (non-verify) write buffer. */
void bench_fill_random(void *buf, size_t len, uint64_t seed);
/* scramble_buffers: make a plain write buffer unlike every earlier write,
 * cheaply, so that storage that deduplicates or compresses cannot turn
 * repeated buffers into no work.  Every 512-byte sector gets 16 bytes
 * (its offset in the file and stamp) at a place that moves with stamp. */
void bench_scramble(void *buf, size_t len, uint64_t offset, uint64_t stamp);

#endif
