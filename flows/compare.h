/* compare as a library: guest-visible comparison of two images or chains,
 * with qemu-img compare's rules.  Ranges that read as zero in both chains
 * (unallocated, zero clusters, holes) are not read.
 *
 * Library layer: never prints. */
#ifndef LSM_FLOWS_COMPARE_H
#define LSM_FLOWS_COMPARE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "image.h"

enum lsm_compare_outcome {
    LSM_COMPARE_IDENTICAL = 0,
    LSM_COMPARE_CONTENT,        /* content differs at offset */
    LSM_COMPARE_SIZE,           /* strict: the sizes differ */
    LSM_COMPARE_BLOCK_STATUS,   /* strict: allocation differs at offset */
};

struct lsm_compare_result {
    enum lsm_compare_outcome outcome;
    uint64_t offset;            /* CONTENT: first differing byte; BLOCK_STATUS: the extent */
    bool size_mismatch;         /* the sizes differ (not strict: the rest reads as zeroes) */
};

/* Compare what a guest sees in a and b.  Not strict: images of different
 * sizes are identical when the extra part reads as zeroes (as qemu-img
 * compare).  Strict: different sizes, or a range present in one and not
 * the other, make them different.  Returns 0 with *res filled, or -errno
 * with a message (a read failed; -EINTR when *cancel became non-zero,
 * cancel may be NULL). */
int lsm_compare_images(struct lsm_image *a, struct lsm_image *b, bool strict,
                       const volatile sig_atomic_t *cancel, struct lsm_compare_result *res);

#endif
