/* lsm-sync replicate: active-layer replication of a running VM's disk
 * (monitor/mirror.h).  start / status / finish / abort. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "cleanup.h"
#include "cli.h"
#include "json-util.h"
#include "mirror.h"
#include "util.h"

#define CMD "replicate"

static void usage(FILE *f)
{
    const char *const *b = lsm_mirror_backends();
    fprintf(f,
        "Usage: lsm-sync replicate start  [OPTIONS] DOMAIN DISK DST\n"
        "       lsm-sync replicate status [OPTIONS] DOMAIN DISK\n"
        "       lsm-sync replicate finish [OPTIONS] [--wait [--timeout S]] DOMAIN DISK [DST]\n"
        "       lsm-sync replicate abort  [OPTIONS] DOMAIN DISK\n"
        "       lsm-sync replicate start|status|finish|abort --backend=dm [OPTIONS] DEVICE [DST]\n\n"
        "Mirror the active layer of a running VM's disk onto DST, a prepared image whose\n"
        "backing chain already holds the copied lower layers; every guest write reaches\n"
        "both until finish switches the VM to DST (pivot) or abort leaves it on its source.\n"
        "DISK is the disk's target name (vda).  finish with DST equal to the disk's source\n"
        "cancels like abort.  With --backend=dm the target is an active device-mapper\n"
        "device (an LV or a dm linear device) and DST a block device at least as large.\n\n"
        "  --backend=NAME       mirroring backend (default libvirt; built in:");
    for (; *b; b++)
        fprintf(f, " %s", *b);
    fprintf(f, ")\n"
        "  --connect=URI        libvirt connection (default qemu:///system)\n"
        "  --output=FMT         human (default) or json\n"
        " start:\n"
        "  -f, --format=FMT     DST's format, qcow2 or raw (default: probed from DST)\n"
        "  --bandwidth=N        bulk-copy bandwidth limit in MiB/s (as virsh blockcopy)\n"
        "  --bytes              --bandwidth is in bytes/s (suffixes allowed: 512K, 4M)\n"
        "  --granularity=N      dirty-tracking granularity in bytes (power of two)\n"
        "  --buf-size=N         bytes in flight\n"
        "  --sync-writes        guest writes complete only once on both sides (converges\n"
        "                       under heavy writes)\n"
        " finish:\n"
        "  --wait               wait until the mirror is ready, then pivot\n"
        "  --timeout=S          give up waiting after S seconds (exit 1)\n");
}

enum {
    OPT_BACKEND = 256, OPT_BANDWIDTH, OPT_GRANULARITY, OPT_BUF_SIZE, OPT_SYNC_WRITES,
    OPT_WAIT, OPT_TIMEOUT, OPT_BYTES, OPT_CONNECT, OPT_OUTPUT,
};

static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "backend", required_argument, NULL, OPT_BACKEND },
    { "connect", required_argument, NULL, OPT_CONNECT },
    { "output", required_argument, NULL, OPT_OUTPUT },
    { "format", required_argument, NULL, 'f' },
    { "bandwidth", required_argument, NULL, OPT_BANDWIDTH },
    { "bytes", no_argument, NULL, OPT_BYTES },
    { "granularity", required_argument, NULL, OPT_GRANULARITY },
    { "buf-size", required_argument, NULL, OPT_BUF_SIZE },
    { "sync-writes", no_argument, NULL, OPT_SYNC_WRITES },
    { "wait", no_argument, NULL, OPT_WAIT },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { NULL, 0, NULL, 0 },
};

enum sub { SUB_START, SUB_STATUS, SUB_FINISH, SUB_ABORT };

struct args {
    enum sub sub;
    const char *sub_name;
    char what[32];                 /* "replicate start" */
    const char *backend;
    struct lsm_mirror_target target;
    struct lsm_mirror_start_opts start;
    const char *dst;               /* start: DST; finish: optional DST */
    enum cli_output output;
    bool wait;
    int64_t timeout_ms;
};

LSM_DEFINE_CLEANUP(struct lsm_mirror *, lsm_mirror_close)
LSM_DEFINE_CLEANUP(json_object *, json_object_put)

static json_object *status_json(const struct args *a, const struct lsm_mirror_status *st)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "backend", lsm_json_string(a->backend));
    if (a->target.domain)
        json_object_object_add(o, "domain", lsm_json_string(a->target.domain));
    json_object_object_add(o, "disk", lsm_json_string(a->target.disk));
    json_object_object_add(o, "phase", json_object_new_string(lsm_mirror_phase_name(st->phase)));
    json_object_object_add(o, "cur", json_object_new_uint64(st->cur));
    json_object_object_add(o, "end", json_object_new_uint64(st->end));
    json_object_object_add(o, "percent", json_object_new_int((int)lsm_mirror_percent(st)));
    json_object_object_add(o, "from_event", json_object_new_boolean(st->from_event));
    return o;
}

static void add_path(json_object *o, const char *key, const char *path)
{
    json_object_object_add(o, key, path ? lsm_json_string(path) : NULL);
}

static void print_json(json_object *o)
{
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                               JSON_C_TO_STRING_NOSLASHESCAPE));
}

static int run_start(const struct args *a, struct lsm_mirror *m)
{
    if (lsm_mirror_start(m, &a->start) < 0)
        return cli_fail(a->what);
    struct lsm_mirror_status st;
    if (lsm_mirror_status(m, &st) < 0)
        return cli_fail(a->what);
    if (a->output == CLI_OUTPUT_JSON) {
        _cleanup_(json_object_putp) json_object *o = status_json(a, &st);
        add_path(o, "destination", a->start.dst);
        print_json(o);
    } else {
        printf("mirroring %s to %s: %s, %u%% copied\n", m->what, a->start.dst,
               lsm_mirror_phase_name(st.phase), lsm_mirror_percent(&st));
    }
    return 0;
}

static int run_status(const struct args *a, struct lsm_mirror *m)
{
    struct lsm_mirror_status st;
    _cleanup_free_ char *src = NULL;
    _cleanup_free_ char *mirror = NULL;
    char why[1024] = "";
    lsm_error_clear();
    if (lsm_mirror_status(m, &st) < 0)
        return cli_fail(a->what);
    /* a backend that sees a failed mirror says why (e.g. which leg died) */
    if (st.phase == LSM_MIRROR_FAILED)
        snprintf(why, sizeof why, "%s", lsm_last_error());
    if (lsm_mirror_paths(m, &src, &mirror) < 0)
        return cli_fail(a->what);
    if (a->output == CLI_OUTPUT_JSON) {
        _cleanup_(json_object_putp) json_object *o = status_json(a, &st);
        add_path(o, "source", src);
        add_path(o, "destination", mirror);
        if (why[0])
            json_object_object_add(o, "error", lsm_json_string(why));
        print_json(o);
        return 0;
    }
    if (st.phase == LSM_MIRROR_NONE) {
        printf("%s: no mirror; source %s\n", m->what, src ? src : "unknown");
        return 0;
    }
    char b1[32], b2[32];
    printf("%s: %s, %u%% (%s of %s); source %s, destination %s\n", m->what,
           lsm_mirror_phase_name(st.phase), lsm_mirror_percent(&st),
           lsm_format_size(st.cur, b1, sizeof b1), lsm_format_size(st.end, b2, sizeof b2),
           src ? src : "unknown", mirror ? mirror : "unknown");
    if (why[0])
        printf("%s: failed: %s\n", m->what, why);
    return 0;
}

static int report_end(const struct args *a, struct lsm_mirror *m, const char *done,
                      const char *active, const struct lsm_mirror_status *st)
{
    if (a->output == CLI_OUTPUT_JSON) {
        _cleanup_(json_object_putp) json_object *o = json_object_new_object();
        json_object_object_add(o, "backend", lsm_json_string(a->backend));
        if (a->target.domain)
            json_object_object_add(o, "domain", lsm_json_string(a->target.domain));
        json_object_object_add(o, "disk", lsm_json_string(a->target.disk));
        json_object_object_add(o, "result", json_object_new_string(done));
        add_path(o, "source", active);
        if (st)
            json_object_object_add(o, "ready_from_event",
                                   json_object_new_boolean(st->from_event));
        print_json(o);
    } else if (!strcmp(done, "pivoted")) {
        printf("pivoted: %s now uses %s\n", m->what, active);
    } else {
        printf("aborted: %s stays on %s\n", m->what, active);
    }
    return 0;
}

static int run_abort(const struct args *a, struct lsm_mirror *m)
{
    _cleanup_free_ char *active = NULL;
    if (lsm_mirror_abort(m, &active) < 0)
        return cli_fail(a->what);
    return report_end(a, m, "aborted", active, NULL);
}

static int run_finish(const struct args *a, struct lsm_mirror *m)
{
    if (a->dst) {
        /* diskReplicateFinish(src, dst): dst == src means "stay". */
        _cleanup_free_ char *src = NULL;
        _cleanup_free_ char *mirror = NULL;
        if (lsm_mirror_paths(m, &src, &mirror) < 0)
            return cli_fail(a->what);
        if (src && lsm_same_file(a->dst, src))
            return run_abort(a, m);
        if (mirror && !lsm_same_file(a->dst, mirror)) {
            cli_error(a->what, "%s is neither the source (%s) nor the mirror destination "
                      "(%s) of %s", a->dst, src ? src : "unknown", mirror, m->what);
            return EXIT_OPERATIONAL;
        }
    }
    _cleanup_free_ char *active = NULL;
    struct lsm_mirror_status st;
    int r = lsm_mirror_finish(m, a->wait, a->timeout_ms, &st, &active);
    if (r == -EAGAIN) {
        cli_error(a->what, "%s; retry with --wait", lsm_last_error());
        return EXIT_OPERATIONAL;
    }
    if (r < 0)
        return cli_fail(a->what);
    return report_end(a, m, "pivoted", active, &st);
}

static bool parse_args(int argc, char **argv, struct args *a, int *rc)
{
    uint64_t v;
    const char *bandwidth = NULL;
    bool bytes = false;
    int c;
    *rc = EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            *rc = 0;
            return false;
        case OPT_BACKEND:
            a->backend = optarg;
            break;
        case OPT_CONNECT:
            a->target.uri = optarg;
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output(a->what, optarg, &a->output))
                return false;
            break;
        case 'f':
            if (lsm_format_parse(optarg, &a->start.dst_fmt) < 0) {
                cli_usage_error(a->what, "--format must be qcow2 or raw, not '%s'", optarg);
                return false;
            }
            break;
        case OPT_BANDWIDTH:
            bandwidth = optarg;
            break;
        case OPT_BYTES:
            bytes = true;
            break;
        case OPT_GRANULARITY:
            if (!cli_parse_size(a->what, "--granularity", optarg, &v))
                return false;
            if (!is_pow2(v) || v < 512 || v > 64 * MiB) {
                cli_usage_error(a->what, "--granularity must be a power of two from 512 to 64M");
                return false;
            }
            a->start.granularity = v;
            break;
        case OPT_BUF_SIZE:
            if (!cli_parse_size(a->what, "--buf-size", optarg, &a->start.buf_size))
                return false;
            break;
        case OPT_SYNC_WRITES:
            a->start.sync_writes = true;
            break;
        case OPT_WAIT:
            a->wait = true;
            break;
        case OPT_TIMEOUT: {
            char *end;
            double s = strtod(optarg, &end);
            if (end == optarg || *end || !(s > 0) || s > 1e9) {
                cli_usage_error(a->what, "--timeout must be a positive number of seconds, "
                                "not '%s'", optarg);
                return false;
            }
            a->timeout_ms = (int64_t)ceil(s * 1000.0);
            break;
        }
        default:
            cli_usage_error(a->what, "invalid option");
            return false;
        }
    }

    /* virsh blockcopy's units: MiB/s, or bytes/s with --bytes. */
    if (bytes && !bandwidth) {
        cli_usage_error(a->what, "--bytes needs --bandwidth");
        return false;
    }
    if (bandwidth && bytes) {
        if (!cli_parse_size(a->what, "--bandwidth", bandwidth, &a->start.bandwidth))
            return false;
    } else if (bandwidth) {
        char *end;
        errno = 0;
        unsigned long long mib = strtoull(bandwidth, &end, 10);
        if (errno || end == bandwidth || *end || bandwidth[0] == '-' || mib > (UINT64_MAX >> 20)) {
            cli_usage_error(a->what, "--bandwidth is a whole number of MiB/s (as in virsh "
                            "blockcopy), not '%s'; add --bytes for bytes/s", bandwidth);
            return false;
        }
        a->start.bandwidth = (uint64_t)mib << 20;
    }

    bool start_opts = a->start.dst_fmt != LSM_FMT_AUTO || a->start.bandwidth ||
                      a->start.granularity || a->start.buf_size || a->start.sync_writes;
    if (start_opts && a->sub != SUB_START) {
        cli_usage_error(a->what, "--format, --bandwidth, --granularity, --buf-size and "
                        "--sync-writes are options of 'replicate start'");
        return false;
    }
    if ((a->wait || a->timeout_ms >= 0) && a->sub != SUB_FINISH) {
        cli_usage_error(a->what, "--wait and --timeout are options of 'replicate finish'");
        return false;
    }
    if (a->timeout_ms >= 0 && !a->wait) {
        cli_usage_error(a->what, "--timeout needs --wait");
        return false;
    }

    /* Positional arguments: the target (DOMAIN DISK for libvirt, DEVICE for
     * device-mapper), then DST where the subcommand takes one. */
    int ntarget = !strcmp(a->backend, "libvirt") ? 2 : 1;
    const char *target_names = ntarget == 2 ? "DOMAIN DISK" : "DEVICE";
    int nargs = argc - optind;
    int min = ntarget + (a->sub == SUB_START);
    int max = ntarget + (a->sub == SUB_START || a->sub == SUB_FINISH);
    if (nargs < min || nargs > max) {
        cli_usage_error(a->what, "expected %s%s", target_names,
                        a->sub == SUB_START ? " DST" : a->sub == SUB_FINISH ? " [DST]" : "");
        return false;
    }
    if (ntarget == 2) {
        a->target.domain = argv[optind];
        a->target.disk = argv[optind + 1];
    } else {
        a->target.disk = argv[optind];
    }
    if (nargs > ntarget)
        a->dst = argv[optind + ntarget];
    a->start.dst = a->dst;
    return true;
}

int cmd_replicate(int argc, char **argv)
{
    static const char *const subs[] = { "start", "status", "finish", "abort" };
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    struct args a = { .backend = "libvirt", .timeout_ms = -1, .sub_name = argv[1] };
    size_t i;
    for (i = 0; i < ARRAY_SIZE(subs); i++)
        if (!strcmp(argv[1], subs[i]))
            break;
    if (i == ARRAY_SIZE(subs))
        return cli_usage_error(CMD, "unknown subcommand '%s' (start, status, finish, abort)",
                               argv[1]);
    a.sub = (enum sub)i;
    snprintf(a.what, sizeof a.what, CMD " %s", subs[i]);

    int rc;
    if (!parse_args(argc - 1, argv + 1, &a, &rc))
        return rc;

    _cleanup_(lsm_mirror_closep) struct lsm_mirror *m = NULL;
    if (lsm_mirror_open(a.backend, &a.target, &m) < 0)
        return cli_fail(a.what);
    switch (a.sub) {
    case SUB_START: return run_start(&a, m);
    case SUB_STATUS: return run_status(&a, m);
    case SUB_FINISH: return run_finish(&a, m);
    case SUB_ABORT: return run_abort(&a, m);
    }
    return EXIT_USAGE;
}
