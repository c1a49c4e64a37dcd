/* Storage domains: where volumes live.  One ops table per kind:
 *   file  - a directory; a volume is a file named like its source volume
 *   block - an LVM volume group; a volume is a logical volume (thin in the
 *           sense of "allocated as needed": created small, extended);
 *           or a loop domain (a directory, see below) of loop devices
 * The chain code (clone-structure, sync) never names a kind. */
#ifndef LSM_DOMAIN_H
#define LSM_DOMAIN_H

#include <stdbool.h>
#include <stdint.h>

enum lsm_domain_kind { LSM_DOMAIN_FILE, LSM_DOMAIN_BLOCK };

struct lsm_domain;

struct lsm_domain_ops {
    const char *name;                       /* "file", "block" */
    /* where: a directory (file) or a volume group name (block) */
    int (*open)(struct lsm_domain *d, const char *where);
    void (*close)(struct lsm_domain *d);
    /* Path a volume named `name` has (or would have) in the domain; malloc'd. */
    char *(*volume_path)(struct lsm_domain *d, const char *name);
    /* 1 if it exists, 0 if not, -errno on error. */
    int (*volume_exists)(struct lsm_domain *d, const char *name);
    /* Create a volume able to hold at least `size` bytes (block: rounded up
     * to the extent size; file: an empty file, `size` is only checked
     * against free space).  -EEXIST if it exists; -ENOSPC with a message
     * naming the domain when there is no room. */
    int (*create_volume)(struct lsm_domain *d, const char *name, uint64_t size);
    /* Grow a volume to at least `size` bytes (file: nothing to do). */
    int (*extend_volume)(struct lsm_domain *d, const char *name, uint64_t size);
    int (*remove_volume)(struct lsm_domain *d, const char *name);
    /* Current capacity in bytes (block: LV size; file: file size). */
    int (*volume_size)(struct lsm_domain *d, const char *name, uint64_t *size);
};

struct lsm_domain {
    const struct lsm_domain_ops *ops;
    enum lsm_domain_kind kind;
    char *where;            /* directory or VG name */
    uint64_t extent_size;   /* block: VG extent size in bytes; file: 0 */
    void *priv;
};

int lsm_domain_open(enum lsm_domain_kind kind, const char *where, struct lsm_domain **out);
void lsm_domain_close(struct lsm_domain *d);

extern const struct lsm_domain_ops lsm_domain_file_ops;
extern const struct lsm_domain_ops lsm_domain_lvm_ops;
extern const struct lsm_domain_ops lsm_domain_loop_ops;

/* Loop block domains (domain-loop.c): a directory holding this directory,
 * whose volumes are loop devices linked as DIR/NAME.  lsm_domain_open with
 * LSM_DOMAIN_BLOCK opens one when `where` contains a '/' (an LVM volume
 * group name never does). */
#define LSM_LOOP_MARKER ".lsm-loop"
/* 1 with the domain directory (resolved) and volume name when path is
 * DIR/NAME in a loop domain, 0 when it is not, -errno with a message. */
int lsm_loop_domain_of(const char *path, char **where, char **name);
/* When path is in a loop domain: check every volume of the domain, attach
 * again those whose loop is gone (fixing their links), refuse (-errno, one
 * message) a link whose loop device backs another file.  0 otherwise. */
int lsm_loop_domain_check_path(const char *path);

/* Extension chunk used when sizing qcow2 volumes on block domains. */
#define LSM_BLOCK_CHUNK (1024ULL * 1024 * 1024)
/* Bigger chunk while replicating (watermark extender). */
#define LSM_BLOCK_CHUNK_REPLICATING (2ULL * 1024 * 1024 * 1024)

#endif
