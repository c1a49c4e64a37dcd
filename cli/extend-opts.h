/* The watermark extender's policy options (monitor/extend-policy.h), one
 * spelling for every command that runs the extender: monitor and migrate. */
#ifndef LSM_CLI_EXTEND_OPTS_H
#define LSM_CLI_EXTEND_OPTS_H

#include "extend-policy.h"

/* getopt values of the options below; a command's own start at 256. */
enum {
    CLI_OPT_CHUNK = 1000, CLI_OPT_CHUNK_REPL, CLI_OPT_WATERMARK, CLI_OPT_WATERMARK_REPL,
    CLI_OPT_SAFETY, CLI_OPT_EXTENT, CLI_OPT_MAX_RATIO, CLI_OPT_RETRIES, CLI_OPT_LATENCY,
};

/* Entries of a command's struct option array. */
#define CLI_EXTEND_POLICY_LONGOPTS                                               \
    { "chunk", required_argument, NULL, CLI_OPT_CHUNK },                         \
    { "chunk-replicating", required_argument, NULL, CLI_OPT_CHUNK_REPL },        \
    { "watermark", required_argument, NULL, CLI_OPT_WATERMARK },                 \
    { "watermark-replicating", required_argument, NULL, CLI_OPT_WATERMARK_REPL },\
    { "safety", required_argument, NULL, CLI_OPT_SAFETY },                       \
    { "extent", required_argument, NULL, CLI_OPT_EXTENT },                       \
    { "max-ratio", required_argument, NULL, CLI_OPT_MAX_RATIO },                 \
    { "retries", required_argument, NULL, CLI_OPT_RETRIES },                     \
    { "latency", required_argument, NULL, CLI_OPT_LATENCY }

/* Their lines of --help. */
#define CLI_EXTEND_POLICY_HELP                                                            \
    "  --chunk=SIZE             extension step (default 1G)\n"                           \
    "  --chunk-replicating=SIZE extension step while a mirror runs (default 2G)\n"       \
    "  --watermark=SIZE         minimum free space before extending (default 512M)\n"    \
    "  --watermark-replicating=SIZE  the same while a mirror runs (default 3G)\n"        \
    "  --safety=F               headroom = max(watermark, write rate x extension\n"      \
    "                           latency x F) (default 2)\n"                              \
    "  --latency=S              extension latency assumed until three are measured\n"  \
    "                           (default 6)\n"                                           \
    "  --extent=SIZE            sizes are multiples of this (default 128M)\n"            \
    "  --max-ratio=F            never beyond F x the virtual size (default 1.1)\n"       \
    "  --retries=N              retries of a transient failure (default 5)\n"

/* Option c with argument arg: 1 if it was one of the above (stored in p),
 * 0 if it is not one of them, -1 after a usage error was printed. */
int cli_extend_policy_option(const char *cmd, int c, const char *arg,
                             struct lsm_extend_policy *p);

/* The usage error for a policy that cannot work (lsm_extend_policy_check),
 * or 0. */
int cli_extend_policy_check(const char *cmd, const struct lsm_extend_policy *p);

#endif
