/* Storage domain dispatch. */
#include <stdlib.h>
#include <string.h>

#include "domain.h"
#include "error.h"

int lsm_domain_open(enum lsm_domain_kind kind, const char *where, struct lsm_domain **out)
{
    struct lsm_domain *d = calloc(1, sizeof *d);
    if (!d || !(d->where = strdup(where))) {
        free(d);
        return lsm_error(-ENOMEM, "out of memory");
    }
    d->kind = kind;
    d->ops = kind != LSM_DOMAIN_BLOCK ? &lsm_domain_file_ops
             : strchr(where, '/') ? &lsm_domain_loop_ops : &lsm_domain_lvm_ops;
    int r = d->ops->open(d, where);
    if (r < 0) {
        free(d->where);
        free(d);
        return r;
    }
    *out = d;
    return 0;
}

void lsm_domain_close(struct lsm_domain *d)
{
    if (!d)
        return;
    if (d->ops->close)
        d->ops->close(d);
    free(d->where);
    free(d);
}
