/* Whole-buffer positioned I/O: loop over short transfers and EINTR. */
#ifndef LSM_FILEIO_H
#define LSM_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Read up to len bytes at off: returns the bytes read (less than len only
 * at end of file) or -errno.  A short read that ends off a 512-byte
 * boundary is taken as end of file (with O_DIRECT, retrying there would
 * fail with EINVAL). */
ssize_t lsm_pread_all(int fd, void *buf, size_t len, uint64_t off);
/* Write len bytes at off: returns len, the bytes written before a write
 * that wrote nothing, or -errno. */
ssize_t lsm_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

#endif
