/* libFuzzer target: the domain XML reader of the libvirt modules
 * (monitor/domxml.c), what the mirror, the extender and the live snapshot
 * read from virDomainGetXMLDesc.
 *
 * The input is the XML's bytes.  lsm_domxml_disks must refuse what is not
 * well-formed XML with a message, and otherwise return disks whose
 * targets are set and whose indexes are -1 or more; it never crashes,
 * reads out of bounds or leaks.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "domxml.h"
#include "error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lsm_domxml_disk *d;
    unsigned n;
    lsm_error_clear();
    int r = lsm_domxml_disks((const char *)data, size, "vm1", &d, &n);
    if (r < 0) {
        if ((r != -EBADMSG && r != -ENOMEM) || !*lsm_last_error() || d || n)
            abort();
        return 0;
    }
    for (unsigned i = 0; i < n; i++) {
        if (!d[i].target || d[i].src.index < -1 || d[i].mirror.index < -1)
            abort();
        if (!d[i].has_mirror && (d[i].mirror.path || d[i].mirror_ready))
            abort();
        if (lsm_domxml_find(d, n, d[i].target) > &d[i])
            abort();
    }
    lsm_domxml_free(d, n);
    return 0;
}
