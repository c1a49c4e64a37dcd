/* clone-structure as a library: describe the source chain, lay it out in
 * the destination (a domain or a job file), check every destination
 * against every source file, then create. */
#include <errno.h>
#include <string.h>

#include "clone.h"
#include "error.h"
#include "extend-policy.h"

int lsm_clone_structure(const struct lsm_clone_opts *o, struct lsm_chain_desc *src,
                        struct lsm_jobfile *job)
{
    memset(src, 0, sizeof *src);
    memset(job, 0, sizeof *job);
    int r;
    const char *src_top = o->src_top;
    if (o->jobfile) {
        if ((r = lsm_jobfile_load(o->jobfile, job)) < 0)
            return r;
        if (!src_top)
            src_top = job->v[0].src_path;
    } else if (!o->dst_domain) {
        return lsm_error(-EINVAL, "no destination domain");
    }
    if (!src_top)
        return lsm_error(-EINVAL, "missing SRC_TOP");
    if ((r = lsm_chain_describe(src_top, o->src_fmt, src)) < 0)
        return r;
    if (!o->jobfile) {
        struct lsm_domain *dom;
        if ((r = lsm_domain_open(o->dst_kind, o->dst_domain, &dom)) < 0)
            return r;
        r = lsm_jobfile_for_domain(src, dom, job);
        lsm_domain_close(dom);
        if (r < 0)
            return r;
    } else if ((r = lsm_jobfile_check_sources(src, job)) < 0) {
        return r;
    }
    /* no destination may be a file of the source chain, or another
     * destination, whatever path spells it: checked before any write */
    if ((r = lsm_jobfile_check_destinations(src, job)) < 0)
        return r;
    if (o->cancel && *o->cancel)
        return lsm_error(-EINTR, "interrupted by a signal; nothing was created");
    uint64_t top_min = 0;
    if (o->top_policy && src->v[0].format == LSM_FMT_QCOW2)
        top_min = lsm_extend_initial_size(o->top_policy, src->v[0].used_end,
                                          src->v[0].virtual_size, true);
    return lsm_chain_clone_sized(src, job, o->reuse, o->cancel, top_min);
}
