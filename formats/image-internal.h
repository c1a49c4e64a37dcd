/* Shared between formats/ files only. */
#ifndef LSM_IMAGE_INTERNAL_H
#define LSM_IMAGE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "image.h"

extern const struct lsm_image_ops lsm_raw_ops;
extern const struct lsm_image_ops lsm_qcow2_ops;

/* pread until len bytes or EOF; *got = bytes read. */
int lsm_pread_full(int fd, void *buf, size_t len, uint64_t off, size_t *got);
/* pread, zero-filling what lies past the end of the file (QEMU reads past
 * EOF as zeroes). */
int lsm_pread_zerofill(int fd, void *buf, size_t len, uint64_t off);
/* Holes of a host file as QEMU's file driver reports them (LSM_BS_DATA or
 * LSM_BS_ZERO, plus LSM_BS_EOF). */
int lsm_file_block_status(int fd, uint64_t file_size, bool is_blockdev,
                          uint64_t offset, uint64_t bytes, uint64_t *pnum);

#endif
