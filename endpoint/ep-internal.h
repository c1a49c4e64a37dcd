/* Shared by the image and physical endpoints (endpoint/ only). */
#ifndef LSM_EP_INTERNAL_H
#define LSM_EP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "image.h"
#include "io.h"

/* A file's size and modification time, to see a write during the copy.  A
 * write lands in the mtime at the kernel's timestamp granularity, so a
 * write in the same tick as the file's previous change can go unseen;
 * block devices have no such stamp and are not checked. */
struct ep_stamp {
    bool valid;               /* false for block devices */
    uint64_t size;
    struct timespec mtime;
};

/* A layer's image file and, if it has one, its external data file. */
struct ep_layer_stamp {
    struct ep_stamp image, data;
};

int ep_layer_stamp_take(const struct lsm_image *l, struct ep_layer_stamp *ls);
int ep_layer_stamp_check(const struct lsm_image *l, const struct ep_layer_stamp *ls);

/* A second descriptor of the file behind l (path, open as fd): it must be
 * the same file (a rename since the open would make it another one). */
int ep_reopen_same(const struct lsm_image *l, const char *path, int fd,
                   enum lsm_direct_mode direct, struct lsm_file **out);

#endif
