/* Small pure helpers: byte order, alignment, overflow-checked arithmetic,
 * size strings. */
#ifndef LSM_UTIL_H
#define LSM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <endian.h>
#include <spawn.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define KiB (1024ULL)
#define MiB (1024ULL * KiB)
#define GiB (1024ULL * MiB)
#define TiB (1024ULL * GiB)

static inline uint16_t be16_get(const void *p) { uint16_t v; __builtin_memcpy(&v, p, 2); return be16toh(v); }
static inline uint32_t be32_get(const void *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return be32toh(v); }
static inline uint64_t be64_get(const void *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return be64toh(v); }
static inline void be16_put(void *p, uint16_t v) { v = htobe16(v); __builtin_memcpy(p, &v, 2); }
static inline void be32_put(void *p, uint32_t v) { v = htobe32(v); __builtin_memcpy(p, &v, 4); }
static inline void be64_put(void *p, uint64_t v) { v = htobe64(v); __builtin_memcpy(p, &v, 8); }

static inline bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }
/* a must be a power of two */
static inline uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }
static inline bool is_aligned(uint64_t v, uint64_t a) { return (v & (a - 1)) == 0; }
static inline uint64_t div_round_up(uint64_t n, uint64_t d) { return n / d + (n % d != 0); }

/* Parse a size with an optional suffix (k, M, G, T, P, E; powers of 1024;
 * "B" for bytes; a bare number is bytes).  Returns 0 or -EINVAL/-ERANGE. */
int lsm_parse_size(const char *s, uint64_t *out);
/* Format bytes as "1.5 GiB" (qemu-img style) into buf. */
const char *lsm_format_size(uint64_t v, char *buf, size_t len);
/* Monotonic clock in nanoseconds. */
uint64_t lsm_now_ns(void);

/* Spawn attributes for a helper program (lvm, an offload or extension
 * command): default dispositions for every signal, an empty signal mask
 * (the caller may block or ignore signals the program expects to work),
 * and a process group of its own (a time-out kills the group; a Ctrl-C
 * meant for us does not reach it).  attr is initialised by the caller.
 * Returns 0 or a positive errno, as posix_spawn does. */
int lsm_spawnattr_own_group(posix_spawnattr_t *attr);

#endif
