/* lsm-offload.h: the interface between lsm-sync and an offload backend.
 *
 * An offload backend copies a range from one open file or block device to
 * another without the data passing through lsm-sync's buffers: a storage
 * array's own copy engine, a SCSI EXTENDED COPY, a server-side copy.  A
 * backend is a shared object named lsm-offload-NAME.so in lsm-sync's module
 * directory (or $LSM_MODULE_DIR) that exports one function,
 *
 *     const struct lsm_offload_ops *lsm_offload_init(uint32_t abi_version);
 *
 * lsm-sync calls it with LSM_OFFLOAD_ABI_VERSION as it was built; the
 * backend returns its table, or NULL if it does not speak that version.
 * lsm-sync then checks the table's abi_version (equal to its own) and
 * size (at least the size of the table it knows) before using it.  A new
 * version of this header only appends members to the structures (older
 * backends then report a smaller size) or changes LSM_OFFLOAD_ABI_VERSION.
 *
 * Threads and ownership: lsm-sync calls probe, copy and close from one
 * thread, one call at a time per handle; cancel may be called from any
 * thread or from a signal handler while copy runs.  The descriptors belong
 * to lsm-sync (never close them); the source's is open read-only and must
 * never be written.  Backends do not print: they put one line of text
 * (no newline) into the msg buffer they are given.
 *
 * Data safety contract: copy returns how many bytes, counted from the start
 * of the range, are on the destination complete and correct.  What lies
 * after that in the range may have been partly written; lsm-sync writes it
 * again by other means.  Nothing outside [dst_off, dst_off + len) may be
 * written.  A backend must not return success for bytes it is not sure of.
 *
 * docs/offload.md describes the ladder that calls backends and how to
 * write and install one (examples/offload-example builds against this
 * header as installed).
 */
#ifndef LSM_OFFLOAD_PUBLIC_H
#define LSM_OFFLOAD_PUBLIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LSM_OFFLOAD_ABI_VERSION 1
#define LSM_OFFLOAD_INIT_SYMBOL "lsm_offload_init"

enum lsm_offload_kind {
    LSM_OFFLOAD_KIND_FILE = 1,      /* a regular file */
    LSM_OFFLOAD_KIND_BLOCK = 2,     /* a block device */
};

/* One end of a copy, as lsm-sync knows it. */
struct lsm_offload_endpoint {
    int fd;                         /* source: read-only; destination: read-write */
    const char *path;               /* the name the user gave (for messages) */
    uint32_t kind;                  /* enum lsm_offload_kind */
    uint32_t logical_block_size;    /* block devices: the logical block size; files: 1 */
    uint64_t size;                  /* bytes */
    uint32_t direct_align;          /* fd is open with O_DIRECT: buffers, offsets and lengths
                                       of I/O through it aligned to this; 0 when buffered */
    uint32_t reserved;
};

/* What a backend can do for a pair, filled by probe.  lsm-sync only asks
 * for ranges that respect these limits. */
struct lsm_offload_limits {
    uint64_t max_bytes;             /* most bytes one copy call is asked for (0: no limit) */
    uint64_t min_bytes;             /* shorter ranges are not worth offloading (0: any) */
    uint32_t alignment;             /* offsets and lengths are multiples of this (a power of two; 0 or 1: any) */
    uint32_t timeout_ms;            /* the longest one copy call may take (informational) */
};

struct lsm_offload_ops {
    uint32_t abi_version;           /* LSM_OFFLOAD_ABI_VERSION the backend was built with */
    uint32_t size;                  /* sizeof(struct lsm_offload_ops) the backend was built with */
    const char *name;               /* NAME of lsm-offload-NAME.so */
    const char *description;        /* one line */

    /* Can this backend copy from src to dst?  1: yes, *handle and *limits
     * set (limits come zeroed); 0: not for this pair, msg says why (the
     * caller falls back); -errno: an error, msg says what failed. */
    int (*probe)(const struct lsm_offload_endpoint *src, const struct lsm_offload_endpoint *dst,
                 void **handle, struct lsm_offload_limits *limits, char *msg, size_t msglen);

    /* Copy len bytes from src_off on the source to dst_off on the
     * destination.  Returns the number of bytes from the start of the
     * range that are complete on the destination (0 to len); when it is
     * less than len, msg says why.  -EXDEV or -EOPNOTSUPP: this pair cannot
     * be offloaded after all (nothing counted as done; the caller stops
     * asking for this pair); another -errno: nothing counted as done. */
    int64_t (*copy)(void *handle, uint64_t src_off, uint64_t dst_off, uint64_t len,
                    char *msg, size_t msglen);

    /* Make a running copy return soon (it then reports what was done).
     * Must be async-signal-safe.  May be NULL. */
    void (*cancel)(void *handle);

    /* Release the handle. */
    void (*close)(void *handle);
};

typedef const struct lsm_offload_ops *(*lsm_offload_init_fn)(uint32_t abi_version);

#ifdef __cplusplus
}
#endif

#endif
