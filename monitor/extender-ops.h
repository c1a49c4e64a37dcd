/* Internal: the table the libvirt module (extender-libvirt.c) exports
 * and extender.c calls through (the program starts without libvirt). */
#ifndef LSM_EXTENDER_OPS_H
#define LSM_EXTENDER_OPS_H

#include "extender.h"

struct lsm_extender_ops {
    int (*start)(const struct lsm_extender_opts *o, struct lsm_extender **out);
    void (*stop)(struct lsm_extender *x);
    int (*subscribe)(struct lsm_extender *x, lsm_monitor_cb cb, void *opaque);
    void (*set_replicating)(struct lsm_extender *x, bool on);
    void (*kick)(struct lsm_extender *x);
    int (*refresh)(struct lsm_extender *x, int timeout_ms);
    void (*status)(struct lsm_extender *x, struct lsm_extender_status *st);
    int (*error)(struct lsm_extender *x);
    int (*wait)(struct lsm_extender *x, int timeout_ms);
};

#endif
