/* The null endpoint: size bytes that read as zeroes; writes, zeroes and
 * trims are accepted and discarded.  Every command completes at once,
 * delivered by the loop.  For tests and for measuring one end of a copy
 * alone (bench). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backends.h"
#include "endpoint.h"
#include "error.h"

static int null_extents(struct lsm_ep *ep, uint64_t off, uint64_t len, struct lsm_ep_extent *out,
                        unsigned max)
{
    out[0] = (struct lsm_ep_extent){ .start = off, .length = len, .kind = LSM_EP_ZERO };
    return 1;
}

static int null_cmd(struct lsm_ep *ep, struct lsm_ep_cmd *cmd)
{
    if (cmd->offset > ep->caps.size || cmd->len > ep->caps.size - cmd->offset)
        return lsm_error(-EINVAL, "null endpoint: range %llu+%llu past its end (%llu)",
                         (unsigned long long)cmd->offset, (unsigned long long)cmd->len,
                         (unsigned long long)ep->caps.size);
    lsm_loop_cmd_begin(ep->loop, ep, cmd);
    if (cmd->op == LSM_EP_OP_READ)
        memset(cmd->buf, 0, cmd->len);
    lsm_loop_cmd_put(ep->loop, cmd, 0);
    return 0;
}

static void null_close(struct lsm_ep *ep)
{
    free(ep);
}

static const struct lsm_ep_ops null_ops = {
    .name = "null",
    .extents = null_extents,
    .read = null_cmd,
    .write = null_cmd,
    .zero = null_cmd,
    .trim = null_cmd,
    .close = null_close,
};

int lsm_ep_null_create(struct lsm_loop *loop, uint64_t size, struct lsm_ep **out)
{
    struct lsm_ep *ep = calloc(1, sizeof(*ep));
    if (!ep)
        return lsm_error(-ENOMEM, "out of memory");
    *ep = (struct lsm_ep){
        .ops = &null_ops,
        .name = "null",
        .loop = loop,
        .caps = {
            .size = size,
            .can_extents = true,
            .can_zero = true,
            .can_fast_zero = true,
            .can_trim = true,
            .multi_conn = true,
            .reads_zero = true,
            .block_min = 1,
            .block_pref = 4096,
            .mem_align = 1,
            .zero_align = 1,
            .granule = 4096,
            .hole_min = 4096,
        },
    };
    *out = ep;
    return 0;
}
