/* A live external disk-only snapshot of several disks of a running domain
 * at once (libvirt), onto overlays the caller has created: the first step
 * of the migrate flow (flows/migrate.h), so that the leaf the mirror copies
 * is small and the layers below it stop changing.
 *
 * Errors: -errno with a message (error.h); nothing here prints. */
#ifndef LSM_VM_SNAPSHOT_H
#define LSM_VM_SNAPSHOT_H

#include <stdbool.h>

#include "image.h"

struct lsm_vm_snapshot_disk {
    const char *disk;       /* target (vda) */
    const char *overlay;    /* the prepared overlay: a qcow2 backed by the disk's current leaf */
    bool block;             /* the overlay is a block device (<source dev=>), else a file */
};

/* One virDomainSnapshotCreateXML with DISK_ONLY | REUSE_EXT | NO_METADATA
 * | ATOMIC: every disk named becomes its overlay, or none does (ATOMIC);
 * every other disk of the domain is left out (snapshot='no').  The domain
 * must be running. */
int lsm_vm_snapshot(const char *uri, const char *domain, const struct lsm_vm_snapshot_disk *d,
                    unsigned n);

#endif
