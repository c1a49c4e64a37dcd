/* lsm_vm_snapshot (vm-snapshot.h): the call into the libvirt module,
 * loaded on first use (common/module.h). */
#include "config.h"
#include "error.h"
#include "module.h"
#include "vm-snapshot.h"

typedef int (*snapshot_fn)(const char *uri, const char *domain,
                           const struct lsm_vm_snapshot_disk *d, unsigned n);

int lsm_vm_snapshot(const char *uri, const char *domain, const struct lsm_vm_snapshot_disk *d,
                    unsigned n)
{
#ifdef LSM_HAVE_VM_SNAPSHOT_LIBVIRT
    snapshot_fn fn = (snapshot_fn)lsm_module_symbol("vm-snapshot-libvirt",
                                                     "lsm_vm_snapshot_libvirt");
    if (!fn)
        return -ENOTSUP;
    return fn(uri, domain, d, n);
#else
    (void)uri;
    (void)domain;
    (void)d;
    (void)n;
    return lsm_error(-ENOTSUP, "this build has no libvirt: a live snapshot is not available");
#endif
}
