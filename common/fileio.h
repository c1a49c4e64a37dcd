/* Whole-buffer positioned I/O: loop over short transfers and EINTR. */
#ifndef LSM_FILEIO_H
#define LSM_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Read up to len bytes at off: returns the bytes read (less than len only
 * at end of file) or -errno.  A short read that ends off a 512-byte
 * boundary is taken as end of file (with O_DIRECT, retrying there would
 * fail with EINVAL). */
ssize_t lsm_pread_all(int fd, void *buf, size_t len, uint64_t off);
/* Write len bytes at off: returns len, the bytes written before a write
 * that wrote nothing, or -errno. */
ssize_t lsm_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* Open a disk (an image, a backing or data file, a destination): path with
 * oflags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, then fstat on the descriptor.
 * Anything but a regular file or a block device (a FIFO, a character
 * device, a socket, a directory) is closed again and refused with one line
 * naming what it is, so that opening never waits on a FIFO's writer or a
 * terminal.  O_NONBLOCK is cleared before returning (io_uring would take it
 * as "never block").  what names the role in messages ("backing file",
 * "destination"; NULL for none).  Returns the descriptor (st filled when
 * non-NULL) or -errno with a message.  Nothing is ever unlinked here: with
 * O_CREAT|O_EXCL a refused file cannot be one this call created. */
int lsm_open_disk(const char *path, int oflags, mode_t mode, const char *what,
                  struct stat *st);

#endif
