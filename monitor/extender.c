/* The extender's entry points (extender.h): names, and the calls into the
 * libvirt module, loaded on first use (common/module.h). */
#include <stddef.h>

#include "config.h"
#include "error.h"
#include "extender-ops.h"
#include "module.h"

const char *lsm_monitor_event_name(enum lsm_monitor_event_type t)
{
    switch (t) {
    case LSM_MON_THRESHOLD: return "threshold";
    case LSM_MON_IO_ERROR: return "io-error";
    case LSM_MON_LIFECYCLE: return "lifecycle";
    case LSM_MON_BLOCK_JOB: return "block-job";
    case LSM_MON_ARMED: return "armed";
    case LSM_MON_ARM_FAILED: return "arm-failed";
    case LSM_MON_EXTENDING: return "extending";
    case LSM_MON_EXTENDED: return "extended";
    case LSM_MON_EXTEND_RETRY: return "retry";
    case LSM_MON_FAILED: return "failed";
    case LSM_MON_RESUMED: return "resumed";
    case LSM_MON_RESUME_REFUSED: return "resume-refused";
    case LSM_MON_DOMAIN_STOPPED: return "domain-stopped";
    }
    return "unknown";
}

const char *lsm_extend_phase_name(enum lsm_extend_phase p)
{
    switch (p) {
    case LSM_PHASE_WAIT: return "wait";
    case LSM_PHASE_EXTEND_DST: return "extend_destination";
    case LSM_PHASE_EXTEND_SRC: return "extend_source";
    case LSM_PHASE_REFRESH: return "refresh";
    case LSM_PHASE_REARM: return "rearm";
    case LSM_PHASE_TOTAL: return "total";
    case LSM_PHASES: break;
    }
    return "unknown";
}

const char *lsm_side_state_name(enum lsm_side_state s)
{
    switch (s) {
    case LSM_SIDE_NONE: return "none";
    case LSM_SIDE_UNMANAGED: return "unmanaged";
    case LSM_SIDE_WATCHING: return "watching";
    case LSM_SIDE_EXTENDING: return "extending";
    case LSM_SIDE_RETRYING: return "retrying";
    case LSM_SIDE_AT_MAX: return "at-max";
    case LSM_SIDE_FAILED: return "failed";
    case LSM_SIDE_RAW: return "raw";
    }
    return "unknown";
}

#ifdef LSM_HAVE_EXTENDER_LIBVIRT
static const struct lsm_extender_ops *ops(void)
{
    static const struct lsm_extender_ops *o;
    if (!o)
        o = lsm_module_symbol("extender-libvirt", "lsm_extender_libvirt_ops");
    return o;
}
#else
static const struct lsm_extender_ops *ops(void)
{
    lsm_error(-ENOTSUP, "this build has no libvirt: the extender is not available");
    return NULL;
}
#endif

int lsm_extender_start(const struct lsm_extender_opts *o, struct lsm_extender **out)
{
    int r = lsm_extend_policy_check(&o->policy);
    if (r < 0)
        return r;
    const struct lsm_extender_ops *t = ops();
    if (!t)
        return -ENOTSUP;
    return t->start(o, out);
}

/* A handle exists only if start succeeded, so ops() is loaded below. */
void lsm_extender_stop(struct lsm_extender *x)
{
    if (x)
        ops()->stop(x);
}

int lsm_extender_subscribe(struct lsm_extender *x, lsm_monitor_cb cb, void *opaque)
{
    return ops()->subscribe(x, cb, opaque);
}

void lsm_extender_set_replicating(struct lsm_extender *x, bool on)
{
    ops()->set_replicating(x, on);
}

void lsm_extender_kick(struct lsm_extender *x)
{
    ops()->kick(x);
}

int lsm_extender_refresh(struct lsm_extender *x, int timeout_ms)
{
    return ops()->refresh(x, timeout_ms);
}

void lsm_extender_status(struct lsm_extender *x, struct lsm_extender_status *st)
{
    ops()->status(x, st);
}

int lsm_extender_error(struct lsm_extender *x)
{
    return ops()->error(x);
}

int lsm_extender_wait(struct lsm_extender *x, int timeout_ms)
{
    return ops()->wait(x, timeout_ms);
}
