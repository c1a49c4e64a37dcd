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
        "  -o cluster_size=N    cluster size of a qcow2 DST (default: the source's);\n"
        "                       also backing_file=B,backing_fmt=F (as -B/-F); -o help lists\n"
        "  --cluster-size=N     same as -o cluster_size=N\n"
        "  -c                   compress (qemu-img): not supported yet, fails with exit 1\n"
        "  -t CACHE, -T CACHE   destination / source cache mode: none, directsync: O_DIRECT;\n"
        "                       writeback, writethrough, unsafe: buffered\n"
        "  -W                   accepted: writes are always issued out of order\n"
        "  -r RATE              same as --rate\n"
        "  -q                   quiet: no progress output\n"
        "  --physical           copy the qcow2 layer's host clusters in host order\n"
        "  --no-physical        never choose a physical copy automatically\n"
        "  --io=auto|uring|aio|psync   I/O backend (default auto)\n"
        "  --direct=auto|always|never  O_DIRECT (default auto: buffered where refused)\n"
        "  --offload=auto|never        reflink / copy_file_range for raw to raw\n"
        "  -m REQUESTS          requests in flight (default 16)\n"
        "  -s SIZE              request size (default 1M)\n"
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
        "                       exists, unless --resume); removed when the copy completes\n"
        "  --resume             continue the copy FILE describes after a kill: only what\n"
        "                       was not durable is copied; refused if SRC or DST changed\n"
        "  --checkpoint-interval=SIZE[,SECONDS]  with --journal: flush DST and save the\n"
        "                       journal after SIZE of data or SECONDS (default 1G,5)\n"
        "  -p                   progress bar\n"
        "  --progress=json      one JSON object per line on stdout\n"
        "  -v                   print a summary\n"
        "  --output=json        print the summary as JSON on stdout\n");
}

enum {
    OPT_PHYSICAL = 256, OPT_NO_PHYSICAL, OPT_IO, OPT_DIRECT, OPT_OFFLOAD, OPT_BUFSIZE,
    OPT_RATE, OPT_PROGRESS, OPT_OUTPUT, OPT_TARGET_IS_ZERO, OPT_TIMEOUT, OPT_CLUSTER_SIZE,
    OPT_CHECKSUM, OPT_CONNECTIONS,
    OPT_JOURNAL, OPT_RESUME, OPT_CHECKPOINT,
};

static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "cluster-size", required_argument, NULL, OPT_CLUSTER_SIZE },
    { "physical", no_argument, NULL, OPT_PHYSICAL },
    { "no-physical", no_argument, NULL, OPT_NO_PHYSICAL },
    { "io", required_argument, NULL, OPT_IO },
    { "direct", required_argument, NULL, OPT_DIRECT },
    { "offload", required_argument, NULL, OPT_OFFLOAD },
    { "buffer-size", required_argument, NULL, OPT_BUFSIZE },
    { "rate", required_argument, NULL, OPT_RATE },
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

/* --checksum[=ALGO] */
static bool parse_checksum(const char *arg, struct lsm_copy_opts *o)
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
    cli_usage_error("copy", "--checksum takes sha256 or blake2b, not '%s'", arg);
    return false;
}

static const char *checksum_alg_name(enum lsm_blkhash_alg alg)
{
    return alg == LSM_BLKHASH_BLAKE2B ? "blake2b" : "sha256";
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
            json_object_object_add(c, "algorithm", json_object_new_string(checksum_alg_name(o->checksum_alg)));
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
            st->offload ? ", offloaded (reflink/copy_file_range)" : "");
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

/* Creation options accepted with the one value the writer makes. */
static const struct fixed_opt {
    const char *name, *value, *note;
} fixed_opts[] = {
    { "lazy_refcounts", "off", "" },
    { "refcount_bits", "16", " yet (16 only)" },
    { "extended_l2", "off", " yet" },
    { "compression_type", "zlib", "" },
    { "preallocation", "off", " yet" },
};

static const struct fixed_opt *fixed_opt(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(fixed_opts); i++)
        if (!strcmp(name, fixed_opts[i].name))
            return &fixed_opts[i];
    return NULL;
}

/* -o NAME=VALUE[,NAME=VALUE...]: the creation options this writer has. */
static int parse_create_opts(char *arg, struct lsm_copy_opts *o, bool *help)
{
    const struct fixed_opt *fixed;
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
        int r = 0;
        if (!strcmp(kv, "cluster_size"))
            r = set_cluster_size(val, o);
        else if (!strcmp(kv, "backing_file"))
            o->backing = val;
        else if (!strcmp(kv, "backing_fmt")) {
            if (lsm_format_parse(val, &o->backing_fmt) < 0)
                r = cli_usage_error("copy", "unknown format for backing_fmt: '%s'", val);
        } else if (!strcmp(kv, "compat")) {
            if (strcmp(val, "1.1") && strcmp(val, "v3"))
                r = cli_usage_error("copy", "compat=%s is not supported yet: the qcow2 "
                                    "writer makes version 3 (compat=1.1) images", val);
        } else if ((fixed = fixed_opt(kv))) {
            if (strcmp(val, fixed->value))
                r = cli_usage_error("copy", "%s=%s is not supported%s", kv, val, fixed->note);
        } else
            r = cli_usage_error("copy", "Invalid parameter '%s'", kv);
        if (r)
            return r;
    }
    return 0;
}

static void create_opts_help(void)
{
    printf("Supported options:\n"
           "  backing_file=FILE      (qcow2) as -B\n"
           "  backing_fmt=FMT        (qcow2) as -F\n"
           "  cluster_size=SIZE      (qcow2) 512 to 2M, a power of two\n"
           "  compat=1.1             (qcow2) version 3, the only one written\n"
           "  compression_type=zlib\n"
           "  extended_l2=off\n"
           "  lazy_refcounts=off\n"
           "  preallocation=off\n"
           "  refcount_bits=16\n");
}

static bool parse_fmt(const char *arg, const char *opt, enum lsm_format *out)
{
    if (lsm_format_parse(arg, out) < 0) {
        cli_usage_error("copy", "unknown format for %s: '%s'", opt, arg);
        return false;
    }
    return true;
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
    bool verbose = false, quiet = false, opts_help = false;
    uint64_t v;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:O:B:F:nUcm:s:pvqWr:t:T:o:", longopts, NULL)) != -1) {
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
            break;
        }
        case 'c':
            cli_error("copy", "-c (compressed qcow2 output) is not supported yet; "
                      "for the cluster size use -o cluster_size=SIZE");
            return EXIT_OPERATIONAL;
        case 't':
            if (!parse_cache(optarg, "-t", &o.direct))
                return EXIT_USAGE;
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
        case 's':
            if (!cli_parse_size("copy", "-s", optarg, &v))
                return EXIT_USAGE;
            if (!is_pow2(v) || v < 4096 || v > 64 * MiB)
                return cli_usage_error("copy", "-s must be a power of two from 4K to 64M");
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
            if (!parse_checksum(optarg, &o))
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
        case OPT_CHECKPOINT: {
            char *comma = strchr(optarg, ',');
            if (comma)
                *comma = '\0';
            if (!cli_parse_size("copy", "--checkpoint-interval", optarg, &v))
                return EXIT_USAGE;
            if (v < MiB)
                return cli_usage_error("copy", "--checkpoint-interval: SIZE must be at least 1M");
            o.checkpoint_bytes = v;
            if (comma) {
                char *end;
                errno = 0;
                double sec = strtod(comma + 1, &end);
                if (errno || end == comma + 1 || *end || !(sec >= 0.01 && sec <= 86400))
                    return cli_usage_error("copy", "--checkpoint-interval: SECONDS must be a "
                                           "number from 0.01 to 86400, not '%s'", comma + 1);
                o.checkpoint_ms = (unsigned)(sec * 1000 + 0.5);
            }
            break;
        }
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
            if (!optarg || !strcmp(optarg, "bar"))
                pmode = CLI_PROGRESS_BAR;
            else if (!strcmp(optarg, "json"))
                pmode = CLI_PROGRESS_JSON;
            else
                return cli_usage_error("copy", "--progress must be 'bar' or 'json', not '%s'", optarg);
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
            if (!strcmp(optarg, "auto"))
                o.offload = true;
            else if (!strcmp(optarg, "never"))
                o.offload = false;
            else
                return cli_usage_error("copy", "--offload must be auto or never, not '%s'", optarg);
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
    if (o.resume && !o.journal)
        return cli_usage_error("copy", "--resume needs --journal");
    if ((o.checkpoint_bytes || o.checkpoint_ms) && !o.journal)
        return cli_usage_error("copy", "--checkpoint-interval needs --journal");
    if (o.journal && o.physical == LSM_PHYSICAL_ALWAYS)
        return cli_usage_error("copy", "--journal copies in guest order: not with --physical");
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
