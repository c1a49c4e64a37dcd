/* The identity of a qcow2 image's metadata, for the copy journal: a 64-bit
 * hash of its header cluster and its L1 table as they are on disk.  Cheap
 * (the header cluster plus at most 32 MiB of L1) and meant to detect change,
 * not tampering: it is no cryptographic digest.  The qcow2 writer rewrites
 * neither between its checkpoints, so a destination's hash after a
 * checkpoint is its hash at the next resume unless something else wrote it.
 */
#ifndef LSM_QCOW2_IDENT_H
#define LSM_QCOW2_IDENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 1 and *hash if fd holds a qcow2 header, 0 if it does not (no qcow2 magic),
 * -errno with a message on read errors or an L1 table out of bounds.
 * fd may be O_DIRECT (reads are 4096-aligned). */
int qcow2_ident_hash(int fd, uint64_t *hash);
/* The same hash of a header cluster and an L1 table in memory (hdr_len:
 * the cluster size; l1_len: 8 bytes per entry). */
uint64_t qcow2_ident_hash_buffers(const void *hdr, size_t hdr_len, const void *l1, size_t l1_len);

#endif
