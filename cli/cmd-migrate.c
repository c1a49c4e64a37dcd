/* lsm-sync migrate: the whole live storage migration of some disks of a
 * running domain (flows/migrate.h, docs/migrate.md).  Parses, prints. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "cleanup.h"
#include "cli.h"
#include "extend-opts.h"
#include "json-util.h"
#include "migrate.h"
#include "mirror.h"
#include "sync.h"
#include "util.h"

#define CMD "migrate"

static volatile sig_atomic_t migrate_cancel;

static void on_signal(int sig)
{
    (void)sig;
    migrate_cancel = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync migrate [OPTIONS] DOMAIN --disk DISK [--disk DISK...] (--dst-dir DIR | --dst-vg VG | --dst-loop DIR)\n"
        "       lsm-sync migrate [OPTIONS] DOMAIN --resume\n"
        "       lsm-sync migrate [OPTIONS] DOMAIN --rollback\n\n"
        "Move the named disks of a running libvirt domain to another storage domain while\n"
        "it runs: a live snapshot of all of them at once, clone-structure, a mirror of each\n"
        "disk's new leaf, sync --type=INTERNAL of the layers below, then the pivots.  Before\n"
        "the first pivot (the commit point) any failure or signal rolls back: the VM stays\n"
        "on its source and what this run created on the destination is removed.\n\n"
        "  --connect=URI            libvirt connection (default qemu:///system)\n"
        "  -d, --disk=DISK          a disk target to move (vda); repeat for several\n"
        "  --dst-dir=DIR            destination file domain (a directory)\n"
        "  --dst-vg=VG              destination block domain (an LVM volume group)\n"
        "  --dst-loop=DIR           destination block domain of loop devices (docs/chains.md)\n"
        "  --state-dir=DIR          where the journal lives (default %s)\n"
        "  --resume                 finish the migration the journal records\n"
        "  --rollback               undo it (refused past the commit point)\n"
        "  --sync-writes=MODE       auto (default: restart a mirror that does not converge\n"
        "                           with synchronous writes), always, never\n"
        "  --stall-timeout=S        auto: no progress for S seconds is not converging (30)\n"
        "  --ready-timeout=S        every mirror ready within S s of the sync's end (600)\n"
        "  --pivot-timeout=S        every pivot done within S s (60)\n"
        "  --bandwidth=BYTES        mirrors' bulk copy limit, bytes/s (suffixes: 4M)\n"
        "  --rate=BYTES             each volume copy of the sync, bytes/s\n"
        "  --parallel=N             volumes of one disk's sync copied at once\n"
        "  --no-checksum            do not compare the block hashes of the synced layers'\n"
        "                           guest view and the source's before the first pivot\n"
        "  -p                       progress on stderr\n"
        "  --progress[=bar|json]    --progress or --progress=bar: the same as -p;\n"
        "                           --progress=json: JSON lines on stderr\n"
        "  --output=FMT             human (default) or json\n"
        "The watermark extender (block domains; lsm-sync monitor --help; it runs with the\n"
        "replicating values, and the new leaves are made as large as its first extension\n"
        "would make them):\n"
        CLI_EXTEND_POLICY_HELP
        "  --fail-at=PHASE          tests: fail at the start of PHASE (" LSM_MIGRATE_PHASES "),\n"
        "                           or with commit every pivot after the first;\n"
        "                           pivot-wait: the first pivot is not ready until the\n"
        "                           --pivot-timeout deadline; commit-wait: every one after it\n",
        LSM_MIGRATE_DEFAULT_STATE_DIR);
}

enum {
    OPT_DST_DIR = 256, OPT_DST_VG, OPT_DST_LOOP, OPT_STATE_DIR, OPT_RESUME, OPT_ROLLBACK, OPT_SYNC_WRITES,
    OPT_STALL, OPT_READY, OPT_PIVOT, OPT_BANDWIDTH, OPT_RATE, OPT_PARALLEL, OPT_PROGRESS,
    OPT_FAIL_AT, OPT_CONNECT, OPT_OUTPUT, OPT_NO_CHECKSUM,
};

static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "connect", required_argument, NULL, OPT_CONNECT },
    { "disk", required_argument, NULL, 'd' },
    { "dst-dir", required_argument, NULL, OPT_DST_DIR },
    { "dst-vg", required_argument, NULL, OPT_DST_VG },
    { "dst-loop", required_argument, NULL, OPT_DST_LOOP },
    { "state-dir", required_argument, NULL, OPT_STATE_DIR },
    { "resume", no_argument, NULL, OPT_RESUME },
    { "rollback", no_argument, NULL, OPT_ROLLBACK },
    { "sync-writes", required_argument, NULL, OPT_SYNC_WRITES },
    { "stall-timeout", required_argument, NULL, OPT_STALL },
    { "ready-timeout", required_argument, NULL, OPT_READY },
    { "pivot-timeout", required_argument, NULL, OPT_PIVOT },
    { "bandwidth", required_argument, NULL, OPT_BANDWIDTH },
    { "rate", required_argument, NULL, OPT_RATE },
    { "parallel", required_argument, NULL, OPT_PARALLEL },
    { "progress", optional_argument, NULL, OPT_PROGRESS },
    { "output", required_argument, NULL, OPT_OUTPUT },
    { "fail-at", required_argument, NULL, OPT_FAIL_AT },
    { "no-checksum", no_argument, NULL, OPT_NO_CHECKSUM },
    CLI_EXTEND_POLICY_LONGOPTS,
    { NULL, 0, NULL, 0 },
};

enum progress_mode { PROGRESS_NONE, PROGRESS_HUMAN, PROGRESS_JSON };

static void on_progress(const struct lsm_migrate_progress *p, void *opaque)
{
    enum progress_mode mode = *(enum progress_mode *)opaque;
    if (mode == PROGRESS_NONE)
        return;
    if (mode == PROGRESS_HUMAN) {
        if (p->message) {
            fprintf(stderr, "migrate: [%6.1f s] %s: %s\n", p->elapsed_s, p->phase, p->message);
            return;
        }
        char b1[32], b2[32];
        fprintf(stderr, "migrate: [%6.1f s] %s: sync %s of %s", p->elapsed_s, p->phase,
                lsm_format_size(p->sync_done, b1, sizeof b1),
                lsm_format_size(p->sync_total, b2, sizeof b2));
        for (unsigned i = 0; i < p->ndisks; i++) {
            struct lsm_mirror_status st = { .cur = p->disk[i].cur, .end = p->disk[i].end };
            fprintf(stderr, "; %s mirror %s %u%%", p->disk[i].disk, p->disk[i].mirror,
                    lsm_mirror_percent(&st));
        }
        fputc('\n', stderr);
        return;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "phase", json_object_new_string(p->phase));
    if (p->message)
        json_object_object_add(o, "message", lsm_json_string(p->message));
    json_object_object_add(o, "elapsed", json_object_new_double(round(p->elapsed_s * 1000) / 1000));
    json_object_object_add(o, "sync_done", json_object_new_int64((int64_t)p->sync_done));
    json_object_object_add(o, "sync_total", json_object_new_int64((int64_t)p->sync_total));
    json_object *disks = json_object_new_array();
    for (unsigned i = 0; i < p->ndisks; i++) {
        const struct lsm_migrate_disk_progress *d = &p->disk[i];
        json_object *e = json_object_new_object();
        json_object_object_add(e, "disk", lsm_json_string(d->disk));
        json_object_object_add(e, "mirror", json_object_new_string(d->mirror));
        json_object_object_add(e, "cur", json_object_new_int64((int64_t)d->cur));
        json_object_object_add(e, "end", json_object_new_int64((int64_t)d->end));
        json_object_object_add(e, "sync_writes", json_object_new_boolean(d->sync_writes));
        json_object_object_add(e, "synced", json_object_new_boolean(d->synced));
        json_object_object_add(e, "pivoted", json_object_new_boolean(d->pivoted));
        json_object_array_add(disks, e);
    }
    json_object_object_add(o, "disks", disks);
    fprintf(stderr, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    fflush(stderr);
    json_object_put(o);
}

static bool parse_seconds(const char *opt, const char *arg, int64_t *ms)
{
    char *end;
    errno = 0;
    double s = strtod(arg, &end);
    if (errno || end == arg || *end || !(s >= 0) || s > 1e7) {
        cli_usage_error(CMD, "%s takes seconds, not '%s'", opt, arg);
        return false;
    }
    *ms = (int64_t)(s * 1000);
    if (*ms == 0)
        *ms = 1;
    return true;
}

static void print_result(const struct lsm_migrate_result *res, enum cli_output out)
{
    if (out == CLI_OUTPUT_JSON) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "outcome",
                               json_object_new_string(lsm_migrate_outcome_name(res->outcome)));
        json_object_object_add(o, "committed", json_object_new_boolean(res->committed));
        if (res->failed_phase)
            json_object_object_add(o, "failed_phase", json_object_new_string(res->failed_phase));
        if (res->reason[0])
            json_object_object_add(o, "reason", lsm_json_string(res->reason));
        json_object_object_add(o, "removed", json_object_new_int((int)res->removed));
        if (res->journal)
            json_object_object_add(o, "journal", lsm_json_string(res->journal));
        json_object_object_add(o, "seconds", json_object_new_double(round(res->seconds * 1000) / 1000));
        json_object *disks = json_object_new_array();
        for (unsigned i = 0; i < res->ndisks; i++) {
            const struct lsm_migrate_disk_result *d = &res->disk[i];
            json_object *e = json_object_new_object();
            json_object_object_add(e, "disk", lsm_json_string(d->disk));
            json_object_object_add(e, "on", json_object_new_string(d->on_destination ? "destination" : "source"));
            if (d->active)
                json_object_object_add(e, "active", lsm_json_string(d->active));
            if (d->dst_top)
                json_object_object_add(e, "destination", lsm_json_string(d->dst_top));
            if (d->overlay)
                json_object_object_add(e, "overlay", lsm_json_string(d->overlay));
            json_object_object_add(e, "sync_writes", json_object_new_boolean(d->sync_writes));
            json_object_object_add(e, "restarts", json_object_new_int((int)d->restarts));
            if (d->checksum[0])
                json_object_object_add(e, "checksum", json_object_new_string(d->checksum));
            if (res->extender) {
                json_object *x = json_object_new_object();
                json_object_object_add(x, "source", json_object_new_int((int)d->extensions[0]));
                json_object_object_add(x, "mirror", json_object_new_int((int)d->extensions[1]));
                json_object_object_add(e, "extensions", x);
            }
            json_object_array_add(disks, e);
        }
        json_object_object_add(o, "disks", disks);
        if (res->extender)
            json_object_object_add(o, "pauses", json_object_new_int((int)res->pauses));
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
        json_object_put(o);
        return;
    }
    printf("migration %s in %.1f s\n", lsm_migrate_outcome_name(res->outcome), res->seconds);
    for (unsigned i = 0; i < res->ndisks; i++) {
        const struct lsm_migrate_disk_result *d = &res->disk[i];
        printf("%s: on its %s: %s%s\n", d->disk, d->on_destination ? "destination" : "source",
               d->active ? d->active : "(unknown)",
               d->restarts ? " (mirror restarted with synchronous writes)" : "");
        if (res->extender && (d->extensions[0] || d->extensions[1]))
            printf("%s: extended %u time%s on the source, %u on the mirror\n", d->disk,
                   d->extensions[0], d->extensions[0] == 1 ? "" : "s", d->extensions[1]);
    }
    if (res->extender)
        printf("the VM paused %u time%s on an I/O error while the extender ran\n", res->pauses,
               res->pauses == 1 ? "" : "s");
    if (res->removed)
        printf("removed %u volume%s this run had created\n", res->removed,
               res->removed == 1 ? "" : "s");
    if (res->outcome != LSM_MIGRATE_DONE && res->outcome != LSM_MIGRATE_ROLLED_BACK && res->journal)
        printf("journal kept: %s\n", res->journal);
}

int cmd_migrate(int argc, char **argv)
{
    struct lsm_migrate_opts o = { .mode = LSM_MIGRATE_START };
    struct lsm_extend_policy policy;
    lsm_extend_policy_default(&policy);
    bool have_policy = false;
    const char *disks[LSM_MIGRATE_MAX_DISKS];
    enum progress_mode pmode = PROGRESS_NONE;
    enum cli_output out = CLI_OUTPUT_HUMAN;
    bool have_dst = false;
    _cleanup_free_ char *loop_abs = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "hd:p", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case OPT_CONNECT:
            o.uri = optarg;
            break;
        case 'd':
            if (o.ndisks == LSM_MIGRATE_MAX_DISKS)
                return cli_usage_error(CMD, "at most %d disks", LSM_MIGRATE_MAX_DISKS);
            if (!*optarg)
                return cli_usage_error(CMD, "--disk needs a disk target (vda)");
            disks[o.ndisks++] = optarg;
            break;
        case OPT_DST_DIR:
        case OPT_DST_VG:
        case OPT_DST_LOOP:
            if (have_dst)
                return cli_usage_error(CMD, "give one destination: --dst-dir, --dst-vg or --dst-loop");
            have_dst = true;
            o.dst_kind = c == OPT_DST_DIR ? LSM_DOMAIN_FILE : LSM_DOMAIN_BLOCK;
            o.dst_domain = optarg;
            if (c == OPT_DST_LOOP) {
                /* a loop domain is named by its absolute path (a '/') */
                free(loop_abs);
                if (!(loop_abs = realpath(optarg, NULL))) {
                    fprintf(stderr, "lsm-sync %s: loop domain '%s': %s\n", CMD, optarg, strerror(errno));
                    return EXIT_FAILURE;
                }
                o.dst_domain = loop_abs;
            }
            break;
        case OPT_STATE_DIR:
            o.state_dir = optarg;
            break;
        case OPT_RESUME:
        case OPT_ROLLBACK:
            if (o.mode != LSM_MIGRATE_START)
                return cli_usage_error(CMD, "--resume and --rollback exclude each other");
            o.mode = c == OPT_RESUME ? LSM_MIGRATE_RESUME : LSM_MIGRATE_ROLLBACK;
            break;
        case OPT_SYNC_WRITES:
            if (lsm_migrate_sync_writes_parse(optarg, &o.sync_writes) < 0)
                return cli_usage_error(CMD, "--sync-writes must be auto, always or never, not '%s'",
                                       optarg);
            break;
        case OPT_STALL: {
            int64_t ms;
            if (!parse_seconds("--stall-timeout", optarg, &ms))
                return EXIT_USAGE;
            o.stall_ms = ms > UINT32_MAX ? UINT32_MAX : (unsigned)ms;
            break;
        }
        case OPT_READY:
            if (!parse_seconds("--ready-timeout", optarg, &o.ready_timeout_ms))
                return EXIT_USAGE;
            break;
        case OPT_PIVOT:
            if (!parse_seconds("--pivot-timeout", optarg, &o.pivot_timeout_ms))
                return EXIT_USAGE;
            break;
        case OPT_BANDWIDTH:
            if (!cli_parse_size(CMD, "--bandwidth", optarg, &o.bandwidth))
                return EXIT_USAGE;
            break;
        case OPT_RATE:
            if (!cli_parse_size(CMD, "--rate", optarg, &o.sync_rate))
                return EXIT_USAGE;
            break;
        case OPT_PARALLEL: {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || end == optarg || *end || v == 0 || v > LSM_SYNC_MAX_PARALLEL)
                return cli_usage_error(CMD, "--parallel takes 1..%d, not '%s'",
                                       LSM_SYNC_MAX_PARALLEL, optarg);
            o.parallel = (unsigned)v;
            break;
        }
        case 'p':
            pmode = PROGRESS_HUMAN;
            break;
        case OPT_PROGRESS:
            if (!optarg || !strcmp(optarg, "bar"))
                pmode = PROGRESS_HUMAN;
            else if (!strcmp(optarg, "json"))
                pmode = PROGRESS_JSON;
            else
                return cli_usage_error(CMD, "--progress must be 'bar' or 'json', not '%s'", optarg);
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output(CMD, optarg, &out))
                return EXIT_USAGE;
            break;
        case OPT_NO_CHECKSUM:
            o.no_checksum = true;
            break;
        case OPT_FAIL_AT: {
            static const char *const phases[] = { "snapshot", "clone", "replicate", "sync",
                                                  "pivot", "commit", "pivot-wait",
                                                  "commit-wait" };
            bool ok = false;
            for (size_t i = 0; i < ARRAY_SIZE(phases); i++)
                ok = ok || !strcmp(optarg, phases[i]);
            if (!ok)
                return cli_usage_error(CMD, "--fail-at takes a phase (%s), commit, pivot-wait "
                                       "or commit-wait, not '%s'",
                                       LSM_MIGRATE_PHASES, optarg);
            o.fail_at = optarg;
            break;
        }
        default:
            switch (cli_extend_policy_option(CMD, c, optarg, &policy)) {
            case 1:
                have_policy = true;
                break;
            case 0:
                return cli_usage_error(CMD, "unknown option");
            default:
                return EXIT_USAGE;
            }
        }
    }
    if (have_policy) {
        int bad = cli_extend_policy_check(CMD, &policy);
        if (bad)
            return bad;
        o.extend_policy = &policy;
    }
    if (optind >= argc)
        return cli_usage_error(CMD, "missing DOMAIN");
    if (optind + 1 < argc)
        return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind + 1]);
    o.domain = argv[optind];
    if (o.mode == LSM_MIGRATE_START) {
        if (o.ndisks == 0)
            return cli_usage_error(CMD, "name the disks to move with --disk");
        if (!have_dst)
            return cli_usage_error(CMD, "give the destination: --dst-dir DIR or --dst-vg VG");
    }
    o.disks = disks;
    o.cancel = &migrate_cancel;
    o.progress = on_progress;
    o.opaque = &pmode;

    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct lsm_migrate_result res;
    int r = lsm_migrate(&o, &res);
    /* refused before anything was done: the one line on stderr says it */
    bool refused = res.failed_phase && !strcmp(res.failed_phase, "setup");
    if (!refused || out == CLI_OUTPUT_JSON)
        print_result(&res, out);
    if (r < 0)
        cli_error(CMD, "%s", lsm_last_error());
    lsm_migrate_result_free(&res);
    return r < 0 ? EXIT_OPERATIONAL : 0;
}
