/* How the extender grows one volume: one backend per kind of volume.
 *
 *   file  a regular file: nothing to do (the file system allocates as QEMU
 *         writes); the extender does not watch such volumes.
 *   loop  a loop device over a file: the file is grown with fallocate (so a
 *         full file system fails now, with ENOSPC, not later as an I/O error
 *         in the guest), then LOOP_SET_CAPACITY.  Loop devices with a size
 *         limit are refused.
 *   lvm   a device-mapper device that is an LVM logical volume (its dm uuid
 *         starts with "LVM-"): the VG's free space is checked first (-ENOSPC
 *         with the VG named), then `lvm lvextend -L BYTESb VG/LV` and
 *         `lvm lvchange --refresh` (what another host that has the LV active
 *         needs; here it checks the table).  LSM_LVM and LSM_LVM_CONFIG are
 *         honoured as domains/domain-lvm.c does (the monitor layer does not
 *         include domains/).
 *   cmd   --extend-cmd: CMD VOLUME NEWSIZE (bytes) is run without a shell,
 *         stdin on /dev/null, in its own process group, killed after the
 *         time-out (-ETIMEDOUT).  Exit 0: done (the size is then checked);
 *         exit 28 (ENOSPC): out of space, not retried; anything else: a
 *         transient failure.  Its output becomes the message.
 *
 * Sizes are bytes.  Nothing here prints; errors are -errno with a message
 * (error.h).  Calls block (lvextend takes 0.1-2 s); the extender runs them
 * on its worker threads. */
#ifndef LSM_EXTEND_BACKEND_H
#define LSM_EXTEND_BACKEND_H

#include <stdint.h>

enum lsm_extend_kind {
    LSM_EXTEND_FILE,
    LSM_EXTEND_LOOP,
    LSM_EXTEND_LVM,
    LSM_EXTEND_CMD,
};

const char *lsm_extend_kind_name(enum lsm_extend_kind k);

struct lsm_extend_volume {
    enum lsm_extend_kind kind;
    char *path;            /* the volume as the VM opens it */
    char *backing;         /* loop: the backing file */
    uint64_t offset;       /* loop: offset into the backing file */
    char *vg, *lv;         /* lvm */
    const char *cmd;       /* cmd: the program (not owned) */
    int cmd_timeout_ms;
};

/* Durations of one grow call, nanoseconds. */
struct lsm_extend_timing {
    uint64_t extend_ns;    /* fallocate / lvextend / CMD */
    uint64_t refresh_ns;   /* LOOP_SET_CAPACITY / lvchange --refresh */
};

/* Find out what PATH is.  extend_cmd (may be NULL) makes every block
 * device a "cmd" volume. */
int lsm_extend_volume_probe(const char *path, const char *extend_cmd, int cmd_timeout_ms,
                            struct lsm_extend_volume *v);
void lsm_extend_volume_clear(struct lsm_extend_volume *v);

/* The volume's size now (block device: BLKGETSIZE64; file: st_size). */
int lsm_extend_volume_size(const struct lsm_extend_volume *v, uint64_t *size);

/* Grow the volume to at least size bytes; never shrinks (a volume already
 * that large is left alone).  On success the new size is checked with
 * lsm_extend_volume_size.  t may be NULL. */
int lsm_extend_volume_grow(const struct lsm_extend_volume *v, uint64_t size,
                           struct lsm_extend_timing *t);

/* Run argv[0] (searched in PATH) with argv, stdin on /dev/null, stdout and
 * stderr captured together (the first 4 KiB kept, as one line, in *output,
 * malloc'd, may be NULL if unwanted), in its own process group with default
 * signal dispositions.  timeout_ms <= 0: no limit; on time-out the group is
 * killed (SIGTERM, SIGKILL a second later) and -ETIMEDOUT returned.
 * Returns 0 with *status the exit status (128 + signal), or -errno. */
int lsm_run_program(const char *const *argv, int timeout_ms, int *status, char **output);

#endif
