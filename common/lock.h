/* Image locks that interoperate with QEMU.
 *
 * QEMU's file driver (block/file-posix.c) expresses the permissions a user
 * of an image takes, and the ones it lets others take, as shared
 * open-file-description byte-range locks (F_OFD_SETLK, F_RDLCK) on single
 * bytes of the image file:
 *   byte 100 + i   held: "I use permission i"
 *   byte 200 + i   held: "I do not let others use permission i"
 * with i the bit number of the permission (LSM_PERM_* below, the values of
 * QEMU's BLK_PERM_*).  Taking permissions means: lock our bytes, then test
 * (F_OFD_GETLK, F_WRLCK) that nobody else holds 200 + i for a permission we
 * use, nor 100 + i for a permission we do not share.  The locks belong to
 * the open file description: they last until the descriptor (and every
 * dup of it) is closed, and a second descriptor of the same file opened by
 * this process is "another user" like any other process.  So lock ONE
 * descriptor per file and keep it for the whole operation.
 *
 * What lsm-sync takes (as measured from qemu-io 7.2 in /proc/locks):
 *   reader:              CONSISTENT_READ, sharing all but WRITE and RESIZE
 *                        (a qcow2 or raw node opened read-only)
 *   reader, force share: CONSISTENT_READ, sharing everything (qemu-img -U)
 *   writer:              CONSISTENT_READ | WRITE | RESIZE, sharing
 *                        CONSISTENT_READ | WRITE_UNCHANGED (a qcow2 node over
 *                        its file, opened read-write)
 */
#ifndef LSM_LOCK_H
#define LSM_LOCK_H

#include <stdbool.h>

#define LSM_PERM_CONSISTENT_READ  0x1u
#define LSM_PERM_WRITE            0x2u
#define LSM_PERM_WRITE_UNCHANGED  0x4u
#define LSM_PERM_RESIZE           0x8u
#define LSM_PERM_ALL              0xfu

/* Take perm on fd, sharing shared, the way QEMU does (see above).  name is
 * the file's name for the message.  A conflict returns -EAGAIN with
 * 'Failed to get "write" lock on NAME: Is another process using the
 * image?' (QEMU's words; 'shared "write"' when the other side uses what we
 * do not share); the bytes this call locked are released again.  Other
 * failures (a file system without OFD locks) return -errno with a message.
 * fd must be open for reading and hold no locks of ours yet. */
int lsm_lock_perms(int fd, const char *name, unsigned perm, unsigned shared);

/* The reader's and the writer's permissions (see above). */
int lsm_lock_read(int fd, const char *name, bool force_share);
int lsm_lock_write(int fd, const char *name);

/* Release every lock byte of fd now.  Call it before the last close of a
 * locked descriptor: the kernel keeps an open file description (and its
 * locks) alive while anything still references it, and io_uring drops its
 * references some time after the ring is torn down, even after the process
 * exited; a qemu-img run right after lsm-sync would see a stale lock. */
void lsm_lock_release(int fd);

#endif
