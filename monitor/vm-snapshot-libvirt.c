/* The libvirt half of vm-snapshot.h: one atomic external disk-only
 * snapshot of the named disks onto overlays that already exist. */
#include "config.h"

#ifdef HAVE_LIBVIRT

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cleanup.h"
#include "domxml.h"
#include "error.h"
#include "vm-snapshot.h"

LSM_DEFINE_CLEANUP(virConnectPtr, virConnectClose)
LSM_DEFINE_CLEANUP(virDomainPtr, virDomainFree)
LSM_DEFINE_CLEANUP(virDomainSnapshotPtr, virDomainSnapshotFree)

static const char *virt_msg(void)
{
    const char *msg = virGetLastErrorMessage();
    return msg && *msg ? msg : "unknown libvirt error";
}

static void quiet_error(void *opaque, virErrorPtr err)
{
    (void)opaque;
    (void)err;
}

/* s with the five XML specials escaped, appended to *buf (malloc'd). */
static int append(char **buf, size_t *len, const char *s, bool escape)
{
    for (; *s; s++) {
        const char *piece = NULL;
        char one[2] = { *s, 0 };
        if (escape && *s == '&') piece = "&amp;";
        else if (escape && *s == '<') piece = "&lt;";
        else if (escape && *s == '>') piece = "&gt;";
        else if (escape && *s == '\'') piece = "&apos;";
        else if (escape && *s == '"') piece = "&quot;";
        else piece = one;
        size_t pl = strlen(piece);
        char *n = realloc(*buf, *len + pl + 1);
        if (!n)
            return -ENOMEM;
        memcpy(n + *len, piece, pl + 1);
        *buf = n;
        *len += pl;
    }
    return 0;
}

int lsm_vm_snapshot_libvirt(const char *uri, const char *domain,
                            const struct lsm_vm_snapshot_disk *d, unsigned n);

int lsm_vm_snapshot_libvirt(const char *uri, const char *domain,
                            const struct lsm_vm_snapshot_disk *d, unsigned n)
{
    if (!uri)
        uri = "qemu:///system";
    virSetErrorFunc(NULL, quiet_error);
    if (virInitialize() < 0)
        return lsm_error(-EIO, "cannot initialise libvirt: %s", virt_msg());
    _cleanup_(virConnectClosep) virConnectPtr conn = virConnectOpen(uri);
    if (!conn)
        return lsm_error(-ENOTCONN, "cannot connect to libvirt at %s: %s", uri, virt_msg());
    _cleanup_(virDomainFreep) virDomainPtr dom = virDomainLookupByName(conn, domain);
    if (!dom)
        return lsm_error(-ENOENT, "no domain '%s' at %s: %s", domain, uri, virt_msg());

    /* Every disk of the domain must be named in the snapshot: the ones we
     * do not move get snapshot='no'. */
    _cleanup_free_ char *live = virDomainGetXMLDesc(dom, 0);
    if (!live)
        return lsm_error(-EIO, "cannot read the XML of domain '%s': %s", domain, virt_msg());
    struct lsm_domxml_disk *disks;
    unsigned ndisks;
    int r = lsm_domxml_disks(live, strlen(live), domain, &disks, &ndisks);
    if (r < 0)
        return r;

    _cleanup_free_ char *xml = NULL;
    size_t len = 0;
    r = append(&xml, &len, "<domainsnapshot><disks>", false);
    unsigned found = 0;
    for (unsigned k = 0; k < ndisks && !r; k++) {
        const char *dev = disks[k].target;
        const struct lsm_vm_snapshot_disk *mine = NULL;
        for (unsigned i = 0; i < n; i++)
            if (!strcmp(d[i].disk, dev))
                mine = &d[i];
        r = append(&xml, &len, "<disk name='", false);
        if (!r)
            r = append(&xml, &len, dev, true);
        if (r)
            break;
        if (!mine) {
            r = append(&xml, &len, "' snapshot='no'/>", false);
            continue;
        }
        found++;
        r = append(&xml, &len, mine->block ? "' snapshot='external' type='block'>"
                                             "<driver type='qcow2'/><source dev='"
                                           : "' snapshot='external' type='file'>"
                                             "<driver type='qcow2'/><source file='", false);
        if (!r)
            r = append(&xml, &len, mine->overlay, true);
        if (!r)
            r = append(&xml, &len, "'/></disk>", false);
    }
    lsm_domxml_free(disks, ndisks);
    if (!r)
        r = append(&xml, &len, "</disks></domainsnapshot>", false);
    if (r)
        return lsm_error(-ENOMEM, "cannot build the snapshot of domain '%s'", domain);
    if (found != n)
        return lsm_error(-ENOENT, "domain '%s' lacks a disk to snapshot (%u of %u found)",
                         domain, found, n);

    unsigned flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT |
                     VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
    _cleanup_(virDomainSnapshotFreep) virDomainSnapshotPtr snap =
        virDomainSnapshotCreateXML(dom, xml, flags);
    if (!snap)
        return lsm_error(-EIO, "cannot take the live snapshot of domain '%s': %s", domain,
                         virt_msg());
    return 0;
}

#endif /* HAVE_LIBVIRT */
