/* The extender's policy options, shared by monitor and migrate. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>

#include "cli.h"
#include "error.h"
#include "extend-opts.h"

static bool number(const char *cmd, const char *opt, const char *arg, double lo, double hi,
                   double *out)
{
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || !(v >= lo && v <= hi)) {
        cli_usage_error(cmd, "%s must be a number from %g to %g, not '%s'", opt, lo, hi, arg);
        return false;
    }
    *out = v;
    return true;
}

int cli_extend_policy_option(const char *cmd, int c, const char *arg,
                             struct lsm_extend_policy *p)
{
    double d;
    bool ok;
    switch (c) {
    case CLI_OPT_CHUNK:
        ok = cli_parse_size(cmd, "--chunk", arg, &p->chunk);
        break;
    case CLI_OPT_CHUNK_REPL:
        ok = cli_parse_size(cmd, "--chunk-replicating", arg, &p->chunk_replicating);
        break;
    case CLI_OPT_WATERMARK:
        ok = cli_parse_size(cmd, "--watermark", arg, &p->watermark);
        break;
    case CLI_OPT_WATERMARK_REPL:
        ok = cli_parse_size(cmd, "--watermark-replicating", arg, &p->watermark_replicating);
        break;
    case CLI_OPT_EXTENT:
        ok = cli_parse_size(cmd, "--extent", arg, &p->extent);
        break;
    case CLI_OPT_SAFETY:
        if ((ok = number(cmd, "--safety", arg, 1, 100, &d)))
            p->safety = d;
        break;
    case CLI_OPT_LATENCY:
        if ((ok = number(cmd, "--latency", arg, 0.001, 600, &d)))
            p->default_latency_ns = (uint64_t)(d * 1e9);
        break;
    case CLI_OPT_MAX_RATIO:
        if ((ok = number(cmd, "--max-ratio", arg, 1, 10, &d)))
            p->max_ratio = d;
        break;
    case CLI_OPT_RETRIES: {
        char *end;
        errno = 0;
        unsigned long v = strtoul(arg, &end, 10);
        ok = !errno && end != arg && !*end && arg[0] != '-' && v <= 1000;
        if (ok)
            p->max_retries = (unsigned)v;
        else
            cli_usage_error(cmd, "--retries must be an integer from 0 to 1000, not '%s'", arg);
        break;
    }
    default:
        return 0;
    }
    return ok ? 1 : -1;
}

int cli_extend_policy_check(const char *cmd, const struct lsm_extend_policy *p)
{
    if (lsm_extend_policy_check(p) < 0)
        return cli_usage_error(cmd, "%s", lsm_last_error());
    return 0;
}
