/* lsm-sync copy: copy one volume, skipping what is not allocated. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "flow-copy.h"
#include "json-out.h"
#include "progress.h"
#include "util.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    stop_requested = sig;
}

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync copy [OPTIONS] SRC DST\n\n"
        "Copy the guest-visible content of SRC (and its backing chain) to DST,\n"
        "skipping unallocated ranges.  Options shared with qemu-img convert mean the same.\n\n"
        "  -f FMT               source format (raw, qcow2; default: probe)\n"
        "  -O FMT               destination format (raw, qcow2; default: raw)\n"
        "  -B BACKING           copy only SRC's own layer; DST's backing file is BACKING\n"
        "  -F FMT               format of BACKING (required with -B, as in qemu-img 7.2)\n"
        "  -n                   DST exists: neither create nor truncate it\n"
        "  -U, --force-share    read SRC even if another process (a running VM) writes it\n"
        "  --target-is-zero     with -n (or an NBD DST): DST already reads as zeroes (zero\n"
        "                       ranges are skipped)\n"
        "  -o OPTIONS           creation options: cluster_size (default: the source's),\n"
        "                       compat=0.10|1.1, preallocation=off|metadata|falloc|full,\n"
        "                       lazy_refcounts, refcount_bits, extended_l2,\n"
        "                       compression_type, backing_file, backing_fmt; -o help lists\n"
        "  -S SIZE              zero runs of SIZE or more stay unallocated (a multiple of\n"
        "                       512 up to 16M; default 64K raw, one cluster qcow2);\n"
        "                       -S 0: no sparse detection, everything written (zeroes\n"
        "                       as data; also with -n; with -B what the backing file\n"
        "                       provides stays unallocated)\n"
        "  --cluster-size=N     same as -o cluster_size=N\n"
        "  -c                   compress (qemu-img's -c): a qcow2 DST (new, or with -n one\n"
        "                       without allocated clusters) whose data clusters are\n"
        "                       compressed (-o compression_type=zlib|zstd) where that\n"
        "                       makes them smaller (with -S 0 all, zero ones too); not\n"
        "                       with --journal, --physical or preallocation\n"
        "  -l SNAPSHOT          copy an internal snapshot's view of SRC (qcow2):\n"
        "                       snapshot.id=ID, snapshot.name=NAME or ID_OR_NAME\n"
        "  --salvage            a source range that cannot be read is copied as zeroes,\n"
        "                       with a warning naming it (qemu-img's --salvage)\n"
        "  --bitmaps            copy SRC's persistent dirty bitmaps (qcow2 DST)\n"
        "  --skip-broken-bitmaps  with --bitmaps: skip inconsistent (in-use) bitmaps\n"
        "                       instead of failing\n"
        "  -t CACHE, -T CACHE   destination / source cache mode: none, directsync: O_DIRECT;\n"
        "                       writeback, writethrough, unsafe: buffered; -t unsafe: DST is\n"
        "                       never flushed (exit 0 does not mean durable)\n"
        "  -W                   accepted: writes are always issued out of order\n"
        "  -r RATE              same as --rate\n"
        "  -q                   quiet: no progress output\n"
        "  --physical           copy the qcow2 layer's host clusters in host order\n"
        "  --no-physical        never choose a physical copy automatically\n"
        "  --io=auto|uring|aio|psync   I/O backend (default auto)\n"
        "  --direct=auto|always|never  O_DIRECT (default auto: buffered where refused)\n"
        "  --offload=auto|never|NAME   offload data extents to raw destinations: reflink,\n"
        "                       copy_file_range (network file systems), SCSI EXTENDED COPY\n"
        "                       (xcopy: two LUNs of one target), --offload-cmd; falling back\n"
        "                       per extent; NAME uses only reflink, copy_file_range, command\n"
        "                       or the plugin lsm-offload-NAME.so (default auto)\n"
        "  --offload-cmd=CMD    offload through a vendor's tool: CMD copy SRC SRC_OFFSET DST\n"
        "                       DST_OFFSET LENGTH must print \"copied N\" and exit 0\n"
        "                       (exit 3: cannot copy this pair); see docs/offload.md\n"
        "  --offload-timeout=SECONDS   kill CMD after SECONDS (default 300)\n"
        "  -C                   offload required: fail where data cannot be offloaded\n"
        "  -m REQUESTS          requests in flight (default 16)\n"
        "  --request-size=SIZE  request size (default 1M; was -s, now only compare's\n"
        "                       strict, as in qemu-img)\n"
        "  --buffer-size=SIZE   memory budget for buffers (default 32M)\n"
        "  --rate=BYTES         bandwidth limit in bytes per second (suffixes allowed)\n"
        "  --checksum[=ALGO]    also compute the block checksum of the guest view copied\n"
        "                       (sha256, the default, or blake2b; 4 MiB blocks): the value\n"
        "                       `lsm-sync checksum` gives for SRC and DST; printed as\n"
        "                       CHECKSUM  DST on stdout (in the JSON summary with --output=json)\n"
        "  --timeout=SECONDS    NBD source or destination: give up connecting, or waiting\n"
        "                       for one request, after SECONDS (default: 30 to connect,\n"
        "                       60 per request)\n"
        "  --connections=N      NBD: connections to a server that offers multi-conn\n"
        "                       (1 to 8, default 4; always 1 without multi-conn)\n"
        "  --journal=FILE       keep the job's durable progress in FILE (refused if FILE\n"
        "                       exists, unless --resume); removed when the copy completes;\n"
        "                       not with a compat=0.10 qcow2 DST\n"
        "  --resume             continue the copy FILE describes after a kill: only what\n"
        "                       was not durable is copied; refused if SRC or DST changed\n"
        "  --checkpoint-interval=SIZE[,SECONDS]  with --journal: flush DST and save the\n"
        "                       journal after SIZE of data or SECONDS (default 1G,5)\n"
        "  -p                   progress on stdout: a bar on a terminal, otherwise\n"
        "                       qemu-img's records \"    (NN.NN/100%%)\\r\"\n"
        "  --progress[=bar|json]  --progress or --progress=bar: the same as -p;\n"
        "                       --progress=json: one JSON object per line on stdout\n"
        "  -v                   print a summary\n"
        "  --output=FMT         human (default) or json: the summary as JSON on stdout\n");
}

enum {
    OPT_PHYSICAL = 256, OPT_NO_PHYSICAL, OPT_IO, OPT_DIRECT, OPT_OFFLOAD, OPT_BUFSIZE,
    OPT_RATE, OPT_REQUEST_SIZE, OPT_PROGRESS, OPT_OUTPUT, OPT_TARGET_IS_ZERO, OPT_TIMEOUT, OPT_CLUSTER_SIZE,
    OPT_OFFLOAD_CMD, OPT_OFFLOAD_TIMEOUT,
    OPT_CHECKSUM, OPT_CONNECTIONS,
    OPT_JOURNAL, OPT_RESUME, OPT_CHECKPOINT,
    OPT_BITMAPS, OPT_SKIP_BROKEN_BITMAPS, OPT_SALVAGE,
};

static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "cluster-size", required_argument, NULL, OPT_CLUSTER_SIZE },
    { "physical", no_argument, NULL, OPT_PHYSICAL },
    { "no-physical", no_argument, NULL, OPT_NO_PHYSICAL },
    { "io", required_argument, NULL, OPT_IO },
    { "direct", required_argument, NULL, OPT_DIRECT },
    { "offload", required_argument, NULL, OPT_OFFLOAD },
    { "offload-cmd", required_argument, NULL, OPT_OFFLOAD_CMD },
    { "offload-timeout", required_argument, NULL, OPT_OFFLOAD_TIMEOUT },
    { "buffer-size", required_argument, NULL, OPT_BUFSIZE },
    { "rate", required_argument, NULL, OPT_RATE },
    { "request-size", required_argument, NULL, OPT_REQUEST_SIZE },
    { "progress", optional_argument, NULL, OPT_PROGRESS },
    { "output", required_argument, NULL, OPT_OUTPUT },
    { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "connections", required_argument, NULL, OPT_CONNECTIONS },
    { "checksum", optional_argument, NULL, OPT_CHECKSUM },
    { "journal", required_argument, NULL, OPT_JOURNAL },
    { "resume", no_argument, NULL, OPT_RESUME },
    { "checkpoint-interval", required_argument, NULL, OPT_CHECKPOINT },
    { "verbose", no_argument, NULL, 'v' },
    { "force-share", no_argument, NULL, 'U' },
    { "bitmaps", no_argument, NULL, OPT_BITMAPS },
    { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN_BITMAPS },
    { "salvage", no_argument, NULL, OPT_SALVAGE },
    { NULL, 0, NULL, 0 },
};

struct cli_copy {
    struct cli_progress prog;
};

static void on_warn(void *opaque, const char *msg)
{
    struct cli_copy *cc = opaque;
    cli_progress_break(&cc->prog);
    cli_warn("%s", msg);
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct cli_copy *cc = opaque;
    cli_progress_update(&cc->prog, done, total);
}

bool cli_parse_checksum(const char *command, const char *arg, struct lsm_copy_opts *o)
{
    o->checksum = true;
    o->checksum_alg = LSM_BLKHASH_SHA256;
    if (!arg)
        return true;
    if (!strcmp(arg, "sha256"))
        return true;
    if (!strcmp(arg, "blake2b")) {
        o->checksum_alg = LSM_BLKHASH_BLAKE2B;
        return true;
    }
    cli_usage_error(command, "--checksum takes sha256 or blake2b, not '%s'", arg);
    return false;
}

const char *cli_checksum_alg_name(enum lsm_blkhash_alg alg)
{
    return alg == LSM_BLKHASH_BLAKE2B ? "blake2b" : "sha256";
}

bool cli_parse_checkpoint(const char *command, char *arg, struct lsm_copy_opts *o)
{
    uint64_t v;
    char *comma = strchr(arg, ',');
    if (comma)
        *comma = '\0';
    if (!cli_parse_size(command, "--checkpoint-interval", arg, &v))
        return false;
    if (v < MiB) {
        cli_usage_error(command, "--checkpoint-interval: SIZE must be at least 1M");
        return false;
    }
    o->checkpoint_bytes = v;
    if (comma) {
        char *end;
        errno = 0;
        double sec = strtod(comma + 1, &end);
        if (errno || end == comma + 1 || *end || !(sec >= 0.01 && sec <= 86400)) {
            cli_usage_error(command, "--checkpoint-interval: SECONDS must be a "
                            "number from 0.01 to 86400, not '%s'", comma + 1);
            return false;
        }
        o->checkpoint_ms = (unsigned)(sec * 1000 + 0.5);
    }
    return true;
}

static void print_summary(const struct lsm_copy_opts *o, const struct lsm_copy_stats *st,
                          enum cli_output output, bool verbose)
{
    double rate = st->seconds > 0 ? (double)st->bytes_done / st->seconds : 0;
    if (output == CLI_OUTPUT_JSON) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, "source", lsm_json_string(o->src_path));
        json_object_object_add(j, "destination", lsm_json_string(o->dst_path));
        json_object_object_add(j, "io", lsm_json_string(st->io_name));
        json_object_object_add(j, "direct", json_object_new_boolean(st->direct));
        json_object_object_add(j, "physical", json_object_new_boolean(st->physical));
        json_object_object_add(j, "offload", json_object_new_boolean(st->offload));
        json_object_object_add(j, "bytes_total", json_object_new_int64((int64_t)st->bytes_total));
        json_object_object_add(j, "bytes_read", json_object_new_int64((int64_t)st->bytes_read));
        json_object_object_add(j, "bytes_written", json_object_new_int64((int64_t)st->bytes_written));
        json_object_object_add(j, "bytes_zeroed", json_object_new_int64((int64_t)st->bytes_zeroed));
        json_object_object_add(j, "bytes_skipped", json_object_new_int64((int64_t)st->bytes_skipped));
        json_object_object_add(j, "bytes_offloaded", json_object_new_int64((int64_t)st->bytes_offloaded));
        json_object *paths = json_object_new_object();
        json_object_object_add(paths, "reflink", json_object_new_int64((int64_t)st->bytes_reflinked));
        json_object_object_add(paths, "copy_file_range", json_object_new_int64((int64_t)st->bytes_copy_range));
        json_object_object_add(paths, "plugin", json_object_new_int64((int64_t)st->bytes_plugin));
        json_object_object_add(paths, "plugin_name", lsm_json_string(st->offload_plugin));
        json_object_object_add(paths, "command", json_object_new_int64((int64_t)st->bytes_offload_cmd));
        json_object_object_add(paths, "software", json_object_new_int64((int64_t)st->bytes_written));
        json_object_object_add(j, "offload_paths", paths);
        if (*st->offload_fallback)
            json_object_object_add(j, "offload_fallback", lsm_json_string(st->offload_fallback));
        if (o->salvage) {
            json_object_object_add(j, "bytes_salvaged", json_object_new_int64((int64_t)st->bytes_salvaged));
            json_object_object_add(j, "salvaged_ranges", json_object_new_int64(st->salvaged_ranges));
        }
        if (o->journal) {
            json_object_object_add(j, "bytes_already_done", json_object_new_int64((int64_t)st->bytes_already_done));
            json_object_object_add(j, "bytes_redone", json_object_new_int64((int64_t)st->bytes_redone));
            json_object_object_add(j, "checkpoints", json_object_new_int64(st->checkpoints));
            json_object_object_add(j, "checkpoint_seconds", cli_json_fixed(st->checkpoint_seconds, "%.3f"));
        }
        json_object_object_add(j, "seconds", cli_json_fixed(st->seconds, "%.3f"));
        json_object_object_add(j, "rate", json_object_new_int64((int64_t)rate));
        if (st->checksummed) {
            /* the fields of `lsm-sync checksum --output=json` */
            json_object *c = json_object_new_object();
            json_object_object_add(c, "algorithm", json_object_new_string(cli_checksum_alg_name(o->checksum_alg)));
            json_object_object_add(c, "block_size", json_object_new_int64(
                o->checksum_block_size ? o->checksum_block_size : LSM_BLKHASH_DEFAULT_BLOCK));
            json_object_object_add(c, "checksum", json_object_new_string(st->checksum));
            json_object_object_add(j, "checksum", c);
        }
        cli_json_print_line(stdout, j);
        json_object_put(j);
        return;
    }
    if (st->checksummed)
        printf("%s  %s\n", st->checksum, o->dst_path);   /* as `lsm-sync checksum` prints it */
    if (!verbose)
        return;
    char b1[32], b2[32], b3[32], b4[32], b5[32];
    fprintf(stderr, "lsm-sync: copied %s to %s: %s read, %s written, %s zeroed, %s skipped "
            "in %.3f s (%s/s)\n", o->src_path, o->dst_path,
            lsm_format_size(st->bytes_read, b1, sizeof(b1)),
            lsm_format_size(st->bytes_written, b2, sizeof(b2)),
            lsm_format_size(st->bytes_zeroed, b3, sizeof(b3)),
            lsm_format_size(st->bytes_skipped, b4, sizeof(b4)), st->seconds,
            lsm_format_size((uint64_t)rate, b5, sizeof(b5)));
    fprintf(stderr, "lsm-sync: io: %s, %s%s%s\n", st->io_name, st->direct ? "O_DIRECT" : "buffered",
            st->physical ? ", physical (host order)" : "",
            st->offload ? ", offloaded" : "");
    if (st->offload) {
        char r1[32], r2[32], r3[32], r4[32], r5[32];
        fprintf(stderr, "lsm-sync: offload: %s reflink, %s copy_file_range, %s plugin%s%s%s, "
                "%s command, %s software\n",
                lsm_format_size(st->bytes_reflinked, r1, sizeof(r1)),
                lsm_format_size(st->bytes_copy_range, r2, sizeof(r2)),
                lsm_format_size(st->bytes_plugin, r3, sizeof(r3)),
                *st->offload_plugin ? " (" : "", st->offload_plugin, *st->offload_plugin ? ")" : "",
                lsm_format_size(st->bytes_offload_cmd, r4, sizeof(r4)),
                lsm_format_size(st->bytes_written, r5, sizeof(r5)));
    }
    if (*st->offload_fallback)
        fprintf(stderr, "lsm-sync: offload fell back to the software copy: %s\n", st->offload_fallback);
    if (st->bytes_salvaged) {
        char r1[32];
        fprintf(stderr, "lsm-sync: --salvage: %s in %u range%s could not be read and were copied "
                "as zeroes\n", lsm_format_size(st->bytes_salvaged, r1, sizeof(r1)),
                st->salvaged_ranges, st->salvaged_ranges == 1 ? "" : "s");
    }
}

static int set_cluster_size(const char *arg, struct lsm_copy_opts *o)
{
    uint64_t v;
    if (!cli_parse_size("copy", "cluster_size", arg, &v))
        return EXIT_USAGE;
    if (!is_pow2(v) || v < 512 || v > 2 * MiB)
        return cli_usage_error("copy", "cluster size must be a power of two from 512 to 2M");
    o->cluster_size = (uint32_t)v;
    return 0;
}

/* qemu-img's cache modes: the ones that bypass the page cache open with
 * O_DIRECT, the others buffered. */
static bool parse_cache(const char *arg, const char *opt, enum lsm_direct_mode *out)
{
    if (!strcmp(arg, "none") || !strcmp(arg, "directsync"))
        *out = LSM_DIRECT_ALWAYS;
    else if (!strcmp(arg, "writeback") || !strcmp(arg, "writethrough") || !strcmp(arg, "unsafe"))
        *out = LSM_DIRECT_NEVER;
    else {
        cli_usage_error("copy", "invalid cache mode for %s: '%s' (none, directsync, "
                        "writeback, writethrough, unsafe)", opt, arg);
        return false;
    }
    return true;
}

/* qemu's boolean option values. */
static bool parse_onoff(const char *name, const char *val, bool *out)
{
    if (!strcmp(val, "on") || !strcmp(val, "true") || !strcmp(val, "yes"))
        *out = true;
    else if (!strcmp(val, "off") || !strcmp(val, "false") || !strcmp(val, "no"))
        *out = false;
    else {
        cli_usage_error("copy", "Parameter '%s' expects 'on' or 'off', not '%s'", name, val);
        return false;
    }
    return true;
}

/* One NAME=VALUE creation option into o (and the -o-only flags). */
static int set_create_opt(const char *kv, const char *val, struct lsm_copy_opts *o)
{
    struct lsm_create_opts *co = &o->create;
    uint64_t v;
    if (!strcmp(kv, "cluster_size"))
        return set_cluster_size(val, o);
    if (!strcmp(kv, "backing_file")) {
        o->backing = val;
        return 0;
    }
    if (!strcmp(kv, "backing_fmt")) {
        if (lsm_format_parse(val, &o->backing_fmt) < 0)
            return cli_usage_error("copy", "unknown format for backing_fmt: '%s'", val);
        return 0;
    }
    if (!strcmp(kv, "compat")) {
        if (!strcmp(val, "1.1") || !strcmp(val, "v3"))
            co->qcow2_version = 3;
        else if (!strcmp(val, "0.10") || !strcmp(val, "v2"))
            co->qcow2_version = 2;
        else
            return cli_usage_error("copy", "Invalid parameter value for 'compat': '%s' "
                                   "(0.10, v2, 1.1 or v3)", val);
        return 0;
    }
    if (!strcmp(kv, "preallocation")) {
        if (!strcmp(val, "off"))
            co->prealloc = LSM_PREALLOC_OFF;
        else if (!strcmp(val, "metadata"))
            co->prealloc = LSM_PREALLOC_METADATA;
        else if (!strcmp(val, "falloc"))
            co->prealloc = LSM_PREALLOC_FALLOC;
        else if (!strcmp(val, "full"))
            co->prealloc = LSM_PREALLOC_FULL;
        else
            return cli_usage_error("copy", "Parameter 'preallocation' does not accept value '%s' "
                                   "(off, metadata, falloc, full)", val);
        return 0;
    }
    if (!strcmp(kv, "lazy_refcounts"))
        return parse_onoff(kv, val, &co->lazy_refcounts) ? 0 : EXIT_USAGE;
    if (!strcmp(kv, "extended_l2"))
        return parse_onoff(kv, val, &co->extended_l2) ? 0 : EXIT_USAGE;
    if (!strcmp(kv, "refcount_bits")) {
        if (!cli_parse_size("copy", "refcount_bits", val, &v))
            return EXIT_USAGE;
        if (!is_pow2(v) || v > 64)
            return cli_usage_error("copy", "Refcount width must be a power of two and may not "
                                   "exceed 64 bits, not '%s'", val);
        co->refcount_bits = (unsigned)v;
        return 0;
    }
    if (!strcmp(kv, "compression_type")) {
        if (!strcmp(val, "zlib"))
            co->compression_type = LSM_COMPRESSION_ZLIB;
        else if (!strcmp(val, "zstd"))
            co->compression_type = LSM_COMPRESSION_ZSTD;
        else
            return cli_usage_error("copy", "Parameter 'compression_type' does not accept value "
                                   "'%s' (zlib, zstd)", val);
        return 0;
    }
    return cli_usage_error("copy", "Invalid parameter '%s'", kv);
}

/* -o NAME=VALUE[,NAME=VALUE...]: the creation options this writer has. */
static int parse_create_opts(char *arg, struct lsm_copy_opts *o, bool *help)
{
    char *save = NULL;
    for (char *kv = strtok_r(arg, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        if (!strcmp(kv, "help") || !strcmp(kv, "?")) {
            *help = true;
            continue;
        }
        char *val = strchr(kv, '=');
        if (!val)
            return cli_usage_error("copy", "Invalid parameter '%s'", kv);
        *val++ = '\0';
        int r = set_create_opt(kv, val, o);
        if (r)
            return r;
    }
    return 0;
}

/* The combinations qemu-img refuses, refused before anything is opened. */
static int check_create_opts(const struct lsm_copy_opts *o, bool have_o)
{
    const struct lsm_create_opts *co = &o->create;
    if (have_o && o->no_create)
        return cli_usage_error("copy", "-o has no effect when skipping image creation (-n)");
    if (o->dst_fmt == LSM_FMT_RAW) {
        if (co->qcow2_version || co->refcount_bits || co->lazy_refcounts || co->extended_l2 ||
            co->compression_type || o->cluster_size)
            return cli_usage_error("copy", "-O raw takes only the creation option preallocation");
        if (co->prealloc == LSM_PREALLOC_METADATA)
            return cli_usage_error("copy", "Unsupported preallocation mode for raw: metadata");
        return 0;
    }
    if (co->qcow2_version == 2) {
        const char *what = co->refcount_bits && co->refcount_bits != 16 ? "refcount widths other than 16 bits"
                         : co->extended_l2 ? "extended L2 entries"
                         : co->lazy_refcounts ? "lazy refcounts"
                         : co->compression_type ? "compression types other than zlib" : NULL;
        if (what)
            return cli_usage_error("copy", "%s need compat=1.1 (qcow2 version 3)", what);
    }
    if (co->extended_l2 && o->cluster_size && o->cluster_size < 16 * KiB)
        return cli_usage_error("copy", "extended_l2=on needs a cluster size of at least 16K");
    if (co->prealloc != LSM_PREALLOC_OFF && o->backing)
        return cli_usage_error("copy", "preallocation with a backing file is not supported");
    return 0;
}

static void create_opts_help(void)
{
    printf("Supported options:\n"
           "  backing_file=FILE      (qcow2) as -B\n"
           "  backing_fmt=FMT        (qcow2) as -F\n"
           "  cluster_size=SIZE      (qcow2) 512 to 2M, a power of two\n"
           "  compat=0.10|1.1        (qcow2) version 2 or 3 (default 1.1)\n"
           "  compression_type=zlib|zstd  (qcow2, version 3) the type in the header\n"
           "  extended_l2=on|off     (qcow2, version 3) subclusters; clusters of 16K or more\n"
           "  lazy_refcounts=on|off  (qcow2, version 3) the compatible feature bit\n"
           "  preallocation=off|metadata|falloc|full  (qcow2; raw: off, falloc, full)\n"
           "  refcount_bits=N        (qcow2) 1 to 64, a power of two (version 2: 16)\n");
}

static bool parse_fmt(const char *arg, const char *opt, enum lsm_format *out)
{
    if (lsm_format_parse(arg, out) < 0) {
        cli_usage_error("copy", "unknown format for %s: '%s'", opt, arg);
        return false;
    }
    return true;
}

/* --offload, --offload-cmd and --offload-timeout of copy and sync. */
bool cli_parse_offload(const char *command, enum cli_offload_opt which, const char *arg,
                       struct lsm_copy_opts *o)
{
    switch (which) {
    case CLI_OFFLOAD_MODE:
        if (lsm_offload_mode_parse(arg, &o->offload_mode, &o->offload_name) < 0)
            return cli_usage_error(command, "--offload must be auto, never or a name, not '%s'", arg), false;
        o->offload = o->offload_mode != LSM_OFFLOAD_NEVER;
        return true;
    case CLI_OFFLOAD_CMD:
        if (!*arg)
            return cli_usage_error(command, "--offload-cmd needs a command"), false;
        o->offload_cmd = arg;
        return true;
    case CLI_OFFLOAD_TIMEOUT: {
        char *end;
        errno = 0;
        unsigned long t = strtoul(arg, &end, 10);
        if (errno || end == arg || *end || t < 1 || t > 86400 || *arg == '-')
            return cli_usage_error(command, "--offload-timeout must be 1 to 86400 seconds, not '%s'",
                                   arg), false;
        o->offload_timeout_s = (unsigned)t;
        return true;
    }
    }
    return false;
}

int cmd_copy(int argc, char **argv)
{
    struct lsm_copy_opts o = {
        .dst_fmt = LSM_FMT_RAW,
        .offload = true,
    };
    struct lsm_copy_stats st;
    enum cli_progress_mode pmode = CLI_PROGRESS_NONE;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    bool verbose = false, quiet = false, opts_help = false, have_o = false;
    bool skip_broken = false, sparse_set = false;
    uint64_t v;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:O:B:F:nUcm:pvqWr:t:T:o:S:Cl:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case 'f':
            if (!parse_fmt(optarg, "-f", &o.src_fmt))
                return EXIT_USAGE;
            break;
        case 'O':
            if (!parse_fmt(optarg, "-O", &o.dst_fmt))
                return EXIT_USAGE;
            break;
        case 'B':
            o.backing = optarg;
            break;
        case 'F':
            if (!parse_fmt(optarg, "-F", &o.backing_fmt))
                return EXIT_USAGE;
            break;
        case 'n':
            o.no_create = true;
            break;
        case 'U':
            o.force_share = true;
            break;
        case OPT_TARGET_IS_ZERO:
            o.target_is_zero = true;
            break;
        case OPT_CLUSTER_SIZE: {
            int r = set_cluster_size(optarg, &o);
            if (r)
                return r;
            break;
        }
        case 'o': {
            int r = parse_create_opts(optarg, &o, &opts_help);
            if (r)
                return r;
            have_o = true;
            break;
        }
        case 'S':
            /* qemu-img's limits: a multiple of 512 up to 16M; 0 allocates everything. */
            if (!cli_parse_size("copy", "-S", optarg, &v))
                return EXIT_USAGE;
            if (v % 512 || v > 16 * MiB)
                return cli_usage_error("copy", "Invalid buffer size for sparse output specified. "
                                       "Valid sizes are multiples of 512 up to 16777216. Select 0 "
                                       "to disable sparse detection (fully allocates output).");
            o.sparse_size = v;
            sparse_set = true;
            break;
        case 'l':
            /* qemu-img's forms: snapshot.id=ID, snapshot.name=NAME, or
             * ID_OR_NAME (by id first, then by name). */
            if (!strncmp(optarg, "snapshot.id=", 12)) {
                o.snapshot = optarg + 12;
                o.snapshot_key = LSM_SNAPSHOT_ID;
            } else if (!strncmp(optarg, "snapshot.name=", 14)) {
                o.snapshot = optarg + 14;
                o.snapshot_key = LSM_SNAPSHOT_NAME;
            } else if (strchr(optarg, '=') || strchr(optarg, ',')) {
                return cli_usage_error("copy", "-l takes snapshot.id=ID, snapshot.name=NAME "
                                       "or ID_OR_NAME, not '%s'", optarg);
            } else {
                o.snapshot = optarg;
                o.snapshot_key = LSM_SNAPSHOT_ID_OR_NAME;
            }
            if (!*o.snapshot)
                return cli_usage_error("copy", "-l: empty snapshot id or name");
            break;
        case OPT_SALVAGE:
            o.salvage = true;
            break;
        case OPT_BITMAPS:
            o.bitmaps = true;
            break;
        case OPT_SKIP_BROKEN_BITMAPS:
            skip_broken = true;
            break;
        case 'c':
            o.create.compress = true;
            break;
        case 't':
            if (!parse_cache(optarg, "-t", &o.direct))
                return EXIT_USAGE;
            o.unsafe = !strcmp(optarg, "unsafe");
            break;
        case 'T':
            if (!parse_cache(optarg, "-T", &o.src_direct))
                return EXIT_USAGE;
            o.src_direct_set = true;
            break;
        case 'W':
            break;
        case 'q':
            quiet = true;
            break;
        case 'm':
            if (!cli_parse_size("copy", "-m", optarg, &v))
                return EXIT_USAGE;
            if (v < 1 || v > 1024)
                return cli_usage_error("copy", "-m must be between 1 and 1024");
            o.requests = (unsigned)v;
            break;
        case OPT_REQUEST_SIZE:
            if (!cli_parse_size("copy", "--request-size", optarg, &v))
                return EXIT_USAGE;
            if (!is_pow2(v) || v < 4096 || v > 64 * MiB)
                return cli_usage_error("copy", "--request-size must be a power of two from 4K to 64M");
            o.request_size = v;
            break;
        case OPT_BUFSIZE:
            if (!cli_parse_size("copy", "--buffer-size", optarg, &v))
                return EXIT_USAGE;
            if (v < 4096)
                return cli_usage_error("copy", "--buffer-size must be at least 4K");
            o.buffer_size = v;
            break;
        case 'r':
        case OPT_RATE:
            if (!cli_parse_size("copy", c == 'r' ? "-r" : "--rate", optarg, &v))
                return EXIT_USAGE;
            o.rate = v;
            break;
        case OPT_CHECKSUM:
            if (!cli_parse_checksum("copy", optarg, &o))
                return EXIT_USAGE;
            break;
        case OPT_JOURNAL:
            if (!*optarg)
                return cli_usage_error("copy", "--journal needs a file name");
            o.journal = optarg;
            break;
        case OPT_RESUME:
            o.resume = true;
            break;
        case OPT_CHECKPOINT:
            if (!cli_parse_checkpoint("copy", optarg, &o))
                return EXIT_USAGE;
            break;
        case OPT_TIMEOUT: {
            char *end;
            errno = 0;
            double sec = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(sec >= 0.001 && sec <= 86400))
                return cli_usage_error("copy", "--timeout must be a number of seconds from "
                                       "0.001 to 86400, not '%s'", optarg);
            o.nbd_timeout_ms = (unsigned)(sec * 1000 + 0.5);
            break;
        }
        case OPT_CONNECTIONS:
            if (!cli_parse_size("copy", "--connections", optarg, &v))
                return EXIT_USAGE;
            if (v < 1 || v > 8)
                return cli_usage_error("copy", "--connections must be between 1 and 8");
            o.nbd_connections = (unsigned)v;
            break;
        case 'p':
            pmode = CLI_PROGRESS_BAR;
            break;
        case OPT_PROGRESS:
            if (!cli_parse_progress("copy", optarg, &pmode))
                return EXIT_USAGE;
            break;
        case 'v':
            verbose = true;
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output("copy", optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_PHYSICAL:
            o.physical = LSM_PHYSICAL_ALWAYS;
            break;
        case OPT_NO_PHYSICAL:
            o.physical = LSM_PHYSICAL_NEVER;
            break;
        case OPT_IO:
            if (lsm_io_kind_parse(optarg, &o.io_kind) < 0)
                return cli_usage_error("copy", "--io must be auto, uring, aio or psync, not '%s'", optarg);
            break;
        case OPT_DIRECT:
            if (lsm_direct_parse(optarg, &o.direct) < 0)
                return cli_usage_error("copy", "--direct must be auto, always or never, not '%s'", optarg);
            break;
        case OPT_OFFLOAD:
        case OPT_OFFLOAD_CMD:
        case OPT_OFFLOAD_TIMEOUT:
            if (!cli_parse_offload("copy", c == OPT_OFFLOAD ? CLI_OFFLOAD_MODE
                                   : c == OPT_OFFLOAD_CMD ? CLI_OFFLOAD_CMD : CLI_OFFLOAD_TIMEOUT,
                                   optarg, &o))
                return EXIT_USAGE;
            break;
        case 'C':
            o.offload_required = true;
            break;
        default:
            return cli_usage_error("copy", "invalid option");
        }
    }
    if (opts_help) {
        create_opts_help();
        return 0;
    }
    if (quiet)
        pmode = CLI_PROGRESS_NONE;
    if (o.offload_cmd && !o.offload)
        return cli_usage_error("copy", "--offload-cmd cannot be used with --offload=never");
    if (o.offload_cmd && o.offload_mode == LSM_OFFLOAD_ONLY && strcmp(o.offload_name, "command"))
        return cli_usage_error("copy", "--offload-cmd needs --offload=auto or --offload=command");
    if (argc - optind != 2)
        return cli_usage_error("copy", "expected SRC and DST");
    o.src_path = argv[optind];
    o.dst_path = argv[optind + 1];
    if (o.backing_fmt != LSM_FMT_AUTO && !o.backing)
        return cli_usage_error("copy", "-F needs -B");
    if (o.backing && o.backing_fmt == LSM_FMT_AUTO)
        return cli_usage_error("copy", "Use of backing file requires explicit backing format");
    if (o.backing && o.dst_fmt != LSM_FMT_QCOW2)
        return cli_usage_error("copy", "-B needs -O qcow2");
    if (o.target_is_zero && !o.no_create && !lsm_is_nbd_uri(o.dst_path))
        return cli_usage_error("copy", "--target-is-zero needs -n");
    int rc = check_create_opts(&o, have_o);
    if (rc)
        return rc;
    if (skip_broken && !o.bitmaps)
        return cli_usage_error("copy", "--skip-broken-bitmaps needs --bitmaps");
    o.skip_broken_bitmaps = skip_broken;
    if (o.bitmaps && o.dst_fmt != LSM_FMT_QCOW2)
        return cli_usage_error("copy", "--bitmaps needs -O qcow2 (raw has no bitmaps)");
    if (sparse_set && o.sparse_size == 0) {
        /* -S 0: no sparse detection, as qemu-img writes it: every range the
         * copy covers written as data, zeroes included; with -B what the
         * backing file provides stays unallocated (SKIP runs), what the
         * source's layer has, zero clusters too, becomes data. */
        if (o.physical == LSM_PHYSICAL_ALWAYS)
            return cli_usage_error("copy", "--physical keeps the source's layout: not with -S 0");
        if (o.offload_required)
            return cli_usage_error("copy", "-C (offload required) cannot be used with -S 0: "
                                   "the zeroes are written by lsm-sync");
        o.allocate_all = true;
    }
    if (o.resume && !o.journal)
        return cli_usage_error("copy", "--resume needs --journal");
    if (o.unsafe && o.journal)
        return cli_usage_error("copy", "-t unsafe is not combined with --journal: a checkpoint "
                               "records only what is durable");
    if ((o.checkpoint_bytes || o.checkpoint_ms) && !o.journal)
        return cli_usage_error("copy", "--checkpoint-interval needs --journal");
    if (o.journal && o.physical == LSM_PHYSICAL_ALWAYS)
        return cli_usage_error("copy", "--journal copies in guest order: not with --physical");
    /* Until it finishes, the writer marks the image incomplete in the
     * version 3 header's incompatible features, which version 2 lacks: a
     * resumed writer would find a version 3 header and finish a version 3
     * image.  Only the writer that created the image makes its version 2
     * header at the end. */
    if (o.journal && o.create.qcow2_version == 2)
        return cli_usage_error("copy", "--journal cannot be used with compat=0.10: an interrupted "
                               "copy is marked incomplete in a header field that version 2 "
                               "lacks, so it could not be resumed as version 2 (use "
                               "compat=1.1, or no --journal)");
    if (o.create.compress) {
        /* -c: qemu-img's refusals in its words where it has them. */
        if (o.dst_fmt != LSM_FMT_QCOW2)
            return cli_usage_error("copy", "Compression not supported for this file format");
        if (o.create.prealloc != LSM_PREALLOC_OFF)
            return cli_usage_error("copy", "Compression and preallocation not supported at the same time");
        if (o.journal)
            return cli_usage_error("copy", "-c with --journal is not supported: a compressed copy "
                                   "cannot be checkpointed and resumed");
        if (o.physical == LSM_PHYSICAL_ALWAYS)
            return cli_usage_error("copy", "--physical copies host clusters as they are: not with -c");
        if (o.offload_required)
            return cli_usage_error("copy", "-C (offload required) cannot be used with -c: "
                                   "compressed data is written by lsm-sync");
        o.physical = LSM_PHYSICAL_NEVER;
    }
    /* --progress=json with --output=json: both on stdout, one object per
     * line, the summary last. */

    struct cli_copy cc;
    cli_progress_init(&cc.prog, pmode);
    o.opaque = &cc;
    o.warn = on_warn;
    if (pmode != CLI_PROGRESS_NONE)
        o.progress = on_progress;
    o.cancel = &stop_requested;

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    struct sigaction old_int, old_term;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    int r = lsm_copy(&o, &st);

    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);

    if (r < 0) {
        cli_progress_break(&cc.prog);
        const char *msg = lsm_last_error();
        if (stop_requested)
            msg = stop_requested == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)";
        if (st.journal_kept)
            cli_error("copy", "%s; %s is incomplete: continue with --journal=%s --resume",
                      *msg ? msg : "failed", o.dst_path, o.journal);
        else if (st.dst_incomplete)
            cli_error("copy", "%s; %s is incomplete", *msg ? msg : "failed", o.dst_path);
        else if (st.dst_removed)
            cli_error("copy", "%s; %s removed", *msg ? msg : "failed", o.dst_path);
        else if (st.src_busy && !o.force_share)
            cli_fail_busy("copy");
        else
            cli_error("copy", "%s", *msg ? msg : "failed");
        return EXIT_OPERATIONAL;
    }
    cli_progress_finish(&cc.prog, st.bytes_done, st.bytes_total);
    print_summary(&o, &st, output, verbose);
    return 0;
}
