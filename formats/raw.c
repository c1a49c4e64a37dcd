/* raw images: regular files (allocation from SEEK_DATA/SEEK_HOLE) and block
 * devices (all data).  Offsets map 1:1 to the file. */
#include <string.h>

#include "error.h"
#include "image-internal.h"
#include "util.h"

static int raw_open(struct lsm_image *img)
{
    /* QEMU counts lengths in whole sectors: a 1000-byte file is 1024 bytes
     * long, the tail reading as zeroes. */
    img->virtual_size = img->is_blockdev ? img->file_size : align_up(img->file_size, 512);
    img->cluster_size = 0;
    return 0;
}

static int raw_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                            uint64_t *pnum, uint64_t *map)
{
    int st = lsm_file_block_status(img->fd, img->file_size, img->is_blockdev,
                                   offset, bytes, pnum);
    if (*pnum == 0) {           /* cannot happen within virtual_size */
        *pnum = bytes;
        st = LSM_BS_ZERO;
    }
    *map = offset;
    return (st & (LSM_BS_DATA | LSM_BS_ZERO)) | LSM_BS_OFFSET;
}

static int raw_pread_data(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset)
{
    int r = lsm_pread_zerofill(img->fd, buf, len, offset);
    if (r < 0)
        return lsm_error_errno(r, "cannot read '%s' at offset %llu", img->filename,
                               (unsigned long long)offset);
    return 0;
}

const struct lsm_image_ops lsm_raw_ops = {
    .name = "raw",
    .open = raw_open,
    .block_status = raw_block_status,
    .pread_data = raw_pread_data,
};
