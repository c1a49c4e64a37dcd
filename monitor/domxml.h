/* The disks of a libvirt domain XML (virDomainGetXMLDesc), as the libvirt
 * modules need them: mirror-libvirt.c (the active layer and a running
 * copy), extender-libvirt.c (the indexes of the top and of the mirror
 * target) and vm-snapshot-libvirt.c (every disk's name).
 *
 * The XML comes from libvirtd, but it is still text read from outside the
 * process: the reader takes any bytes, refuses what is not well-formed
 * XML, and keeps nothing it cannot use (a <disk> without <target dev=> is
 * skipped; an index that is not a number is -1).  Fuzzed by
 * tests/fuzz/fuzz-domxml.c.
 *
 * Compiled into each module that uses it (the modules are separate shared
 * objects and the library does not link libxml2).
 */
#ifndef LSM_DOMXML_H
#define LSM_DOMXML_H

#include <stdbool.h>
#include <stddef.h>

struct lsm_domxml_source {
    char *path;     /* dev= (block) or file= (file), NULL if neither */
    int index;      /* libvirt's index= of the layer, -1 if absent or not a number */
    char *format;   /* its image format: the disk's <driver type=> for the
                     * active layer, <format type=> (or format=) of a
                     * <mirror>; "qcow2", "raw", ... or NULL */
};

struct lsm_domxml_disk {
    char *target;       /* <target dev=>: vda, sdb, ... (never NULL) */
    char *device;       /* device=: disk, cdrom, ... or NULL */
    char *type;         /* type=: file, block, network, ... or NULL */
    char *alias;        /* <alias name=> or NULL */
    struct lsm_domxml_source src;   /* <source> of the active layer */
    bool has_backing;   /* a <backingStore> with a <source> */
    bool has_mirror;    /* a <mirror> (a block copy or commit running) */
    char *mirror_ready; /* its ready=: "yes", "pivot", "abort", or NULL */
    struct lsm_domxml_source mirror; /* its <source>, or the old file= form */
};

/* Every <disk> under <domain><devices> of xml (len bytes, not necessarily
 * NUL-terminated), in document order, into *disks (*n of them; free with
 * lsm_domxml_free).  -EBADMSG if xml is not well-formed XML (the message
 * names the domain `name`), -ENOMEM. */
int lsm_domxml_disks(const char *xml, size_t len, const char *name,
                     struct lsm_domxml_disk **disks, unsigned *n);

/* The disk whose target is `target`, or NULL. */
const struct lsm_domxml_disk *lsm_domxml_find(const struct lsm_domxml_disk *disks, unsigned n,
                                              const char *target);

void lsm_domxml_free(struct lsm_domxml_disk *disks, unsigned n);

#endif
