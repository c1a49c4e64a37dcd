/* lsm-sync monitor: run the watermark extender (monitor/extender.h) on a
 * running domain until SIGINT or SIGTERM, printing what it sees and does. */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "cleanup.h"
#include "cli.h"
#include "extend-backend.h"
#include "extend-opts.h"
#include "extender.h"
#include "json-util.h"
#include "util.h"

#define CMD "monitor"

static void usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync monitor [OPTIONS] DOMAIN\n\n"
        "Keep the thin volumes of a running domain's disks ahead of the guest's writes:\n"
        "a block threshold on each disk's top volume (and on the destination of a running\n"
        "block copy) fires before the volume fills, and the volume is extended by a chunk\n"
        "(loop device: its file is grown and LOOP_SET_CAPACITY; LVM: lvextend and\n"
        "lvchange --refresh; or --extend-cmd).  Runs until SIGINT or SIGTERM and prints\n"
        "every event and extension, then a summary with the latency of each phase.\n"
        "A VM paused for ENOSPC on a disk it extended is resumed once every paused disk\n"
        "has its headroom again.  Exit status 1 when an extension failed for good (no\n"
        "space left in the volume group or file system, or a failure retrying cannot fix).\n\n"
        "  --connect=URI            libvirt connection (default qemu:///system)\n"
        "  -d, --disk=TARGET        a disk to watch (vda); repeatable; default: every disk\n"
        "                           on a block device\n"
        "  --output=FMT             human (default) or json (one JSON object per line)\n"
        CLI_EXTEND_POLICY_HELP
        "  --poll-interval=MS       allocation and write-rate check (default 500)\n"
        "  --extend-cmd=CMD         extend block volumes by running CMD VOLUME NEWSIZE\n"
        "                           (bytes); exit 0 done, 28 no space, other: retried\n"
        "  --extend-cmd-timeout=S   kill CMD after S seconds (default 60)\n"
        "  --replicating            use the replicating chunk from the start\n"
        "  --no-resume              never resume a paused domain\n"
        "  --status-interval=S      print the status every S seconds (default: at exit)\n");
}

enum {
    OPT_POLL = 256, OPT_CMD, OPT_CMD_TIMEOUT, OPT_REPLICATING, OPT_NO_RESUME,
    OPT_STATUS_INTERVAL, OPT_CONNECT, OPT_OUTPUT,
};

static const struct option longopts[] = {
    { "help", no_argument, NULL, 'h' },
    { "connect", required_argument, NULL, OPT_CONNECT },
    { "disk", required_argument, NULL, 'd' },
    { "output", required_argument, NULL, OPT_OUTPUT },
    CLI_EXTEND_POLICY_LONGOPTS,
    { "poll-interval", required_argument, NULL, OPT_POLL },
    { "extend-cmd", required_argument, NULL, OPT_CMD },
    { "extend-cmd-timeout", required_argument, NULL, OPT_CMD_TIMEOUT },
    { "replicating", no_argument, NULL, OPT_REPLICATING },
    { "no-resume", no_argument, NULL, OPT_NO_RESUME },
    { "status-interval", required_argument, NULL, OPT_STATUS_INTERVAL },
    { NULL, 0, NULL, 0 },
};

static enum cli_output output = CLI_OUTPUT_HUMAN;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void print_json(json_object *o)
{
    pthread_mutex_lock(&out_lock);
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                               JSON_C_TO_STRING_NOSLASHESCAPE));
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static double secs(uint64_t ns)
{
    return (double)ns / 1e9;
}

static void add_str(json_object *o, const char *k, const char *v)
{
    if (v)
        json_object_object_add(o, k, lsm_json_string(v));
}

static void on_event(const struct lsm_monitor_event *ev, void *opaque)
{
    (void)opaque;
    const char *name = lsm_monitor_event_name(ev->type);
    if (output == CLI_OUTPUT_JSON) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "event", json_object_new_string(name));
        json_object_object_add(o, "time", json_object_new_double(secs(ev->time_ns)));
        add_str(o, "disk", ev->disk && *ev->disk ? ev->disk : NULL);
        add_str(o, "side", ev->side);
        add_str(o, "target", ev->target);
        add_str(o, "path", ev->path);
        add_str(o, "reason", ev->reason);
        add_str(o, "message", ev->message);
        switch (ev->type) {
        case LSM_MON_THRESHOLD:
            json_object_object_add(o, "threshold", json_object_new_uint64(ev->threshold));
            json_object_object_add(o, "excess", json_object_new_uint64(ev->excess));
            json_object_object_add(o, "merged", json_object_new_int((int)ev->merged));
            break;
        case LSM_MON_BLOCK_JOB:
            json_object_object_add(o, "job_type", json_object_new_int(ev->job_type));
            json_object_object_add(o, "job_status", json_object_new_int(ev->job_status));
            break;
        case LSM_MON_ARMED:
            json_object_object_add(o, "threshold", json_object_new_uint64(ev->threshold));
            break;
        case LSM_MON_EXTENDING:
        case LSM_MON_EXTENDED:
        case LSM_MON_EXTEND_RETRY:
        case LSM_MON_FAILED:
            json_object_object_add(o, "allocation", json_object_new_uint64(ev->allocation));
            json_object_object_add(o, "old_size", json_object_new_uint64(ev->old_size));
            json_object_object_add(o, "new_size", json_object_new_uint64(ev->new_size));
            if (ev->type == LSM_MON_EXTENDED) {
                json_object *ph = json_object_new_object();
                for (int p = 0; p < LSM_PHASES; p++)
                    json_object_object_add(ph, lsm_extend_phase_name(p),
                                           json_object_new_double(secs(ev->phase_ns[p])));
                json_object_object_add(o, "phases", ph);
                json_object_object_add(o, "merged", json_object_new_int((int)ev->merged));
            }
            if (ev->type == LSM_MON_EXTEND_RETRY) {
                json_object_object_add(o, "attempt", json_object_new_int((int)ev->attempt));
                json_object_object_add(o, "delay", json_object_new_double(secs(ev->delay_ns)));
            }
            if (ev->type == LSM_MON_FAILED)
                json_object_object_add(o, "failure", json_object_new_string(
                                           lsm_extend_failure_name(ev->failure)));
            break;
        default:
            break;
        }
        print_json(o);
        json_object_put(o);
        return;
    }
    char b1[32], b2[32], b3[32];
    pthread_mutex_lock(&out_lock);
    printf("%9.3f %-14s", secs(ev->time_ns), name);
    if (ev->target)
        printf(" %s", ev->target);
    else if (ev->disk && *ev->disk)
        printf(" %s", ev->disk);
    if (ev->side)
        printf(" (%s)", ev->side);
    switch (ev->type) {
    case LSM_MON_THRESHOLD:
        printf(" crossed %s by %s", lsm_format_size(ev->threshold, b1, sizeof b1),
               lsm_format_size(ev->excess, b2, sizeof b2));
        break;
    case LSM_MON_ARMED:
        printf(" at %s", lsm_format_size(ev->threshold, b1, sizeof b1));
        break;
    case LSM_MON_BLOCK_JOB:
        printf(" type %d status %d", ev->job_type, ev->job_status);
        break;
    case LSM_MON_EXTENDING:
        printf(" %s -> %s (allocation %s)", lsm_format_size(ev->old_size, b1, sizeof b1),
               lsm_format_size(ev->new_size, b2, sizeof b2),
               lsm_format_size(ev->allocation, b3, sizeof b3));
        break;
    case LSM_MON_EXTENDED:
        printf(" %s -> %s in %.3f s (wait %.3f, extend %.3f/%.3f, refresh %.3f, rearm %.3f)",
               lsm_format_size(ev->old_size, b1, sizeof b1),
               lsm_format_size(ev->new_size, b2, sizeof b2), secs(ev->phase_ns[LSM_PHASE_TOTAL]),
               secs(ev->phase_ns[LSM_PHASE_WAIT]), secs(ev->phase_ns[LSM_PHASE_EXTEND_DST]),
               secs(ev->phase_ns[LSM_PHASE_EXTEND_SRC]), secs(ev->phase_ns[LSM_PHASE_REFRESH]),
               secs(ev->phase_ns[LSM_PHASE_REARM]));
        break;
    case LSM_MON_EXTEND_RETRY:
        printf(" attempt %u in %.1f s", ev->attempt, secs(ev->delay_ns));
        break;
    case LSM_MON_FAILED:
        printf(" [%s]", lsm_extend_failure_name(ev->failure));
        break;
    default:
        break;
    }
    if (ev->reason)
        printf(": %s", ev->reason);
    if (ev->message)
        printf(": %s", ev->message);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static json_object *hist_json(const struct lsm_lat_hist *h)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "count", json_object_new_uint64(h->count));
    json_object_object_add(o, "min", json_object_new_double(secs(h->min_ns)));
    json_object_object_add(o, "mean", json_object_new_double(secs(lsm_lat_hist_mean(h))));
    json_object_object_add(o, "p50", json_object_new_double(secs(lsm_lat_hist_percentile(h, 50))));
    json_object_object_add(o, "p90", json_object_new_double(secs(lsm_lat_hist_percentile(h, 90))));
    json_object_object_add(o, "p99", json_object_new_double(secs(lsm_lat_hist_percentile(h, 99))));
    json_object_object_add(o, "max", json_object_new_double(secs(h->max_ns)));
    return o;
}

static void print_status(struct lsm_extender *x, const char *domain)
{
    struct lsm_extender_status st;
    lsm_extender_status(x, &st);
    if (output == CLI_OUTPUT_JSON) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "event", json_object_new_string("status"));
        json_object_object_add(o, "domain", lsm_json_string(domain));
        json_object_object_add(o, "replicating", json_object_new_boolean(st.replicating));
        json_object_object_add(o, "paused", json_object_new_boolean(st.paused));
        json_object_object_add(o, "domain_stopped", json_object_new_boolean(st.domain_stopped));
        json_object_object_add(o, "resumes", json_object_new_int((int)st.resumes));
        json_object *evs = json_object_new_object();
        static const char *const names[4] = { "threshold", "io-error", "lifecycle", "block-job" };
        for (int i = 0; i < 4; i++)
            json_object_object_add(evs, names[i], json_object_new_uint64(st.events[i]));
        json_object_object_add(o, "events", evs);
        json_object_object_add(o, "latency", json_object_new_double(secs(st.latency_ns)));
        json_object *drives = json_object_new_array();
        for (unsigned k = 0; k < st.ndrives; k++) {
            json_object *d = json_object_new_object();
            json_object_object_add(d, "disk", lsm_json_string(st.drive[k].disk));
            for (int i = 0; i < 2; i++) {
                const struct lsm_extender_side_status *s = &st.drive[k].side[i];
                if (s->state == LSM_SIDE_NONE)
                    continue;
                json_object *so = json_object_new_object();
                json_object_object_add(so, "state", json_object_new_string(lsm_side_state_name(s->state)));
                json_object_object_add(so, "path", lsm_json_string(s->path));
                json_object_object_add(so, "target", lsm_json_string(s->target));
                json_object_object_add(so, "kind", json_object_new_string(s->kind));
                json_object_object_add(so, "armed", json_object_new_boolean(s->armed));
                json_object_object_add(so, "allocation", json_object_new_uint64(s->allocation));
                json_object_object_add(so, "physical", json_object_new_uint64(s->physical));
                json_object_object_add(so, "capacity", json_object_new_uint64(s->capacity));
                json_object_object_add(so, "threshold", json_object_new_uint64(s->threshold));
                json_object_object_add(so, "headroom", json_object_new_uint64(s->headroom));
                json_object_object_add(so, "max_size", json_object_new_uint64(s->max_size));
                json_object_object_add(so, "write_rate", json_object_new_double(s->rate_bps));
                json_object_object_add(so, "planned_rate", json_object_new_double(s->planned_rate_bps));
                json_object_object_add(so, "extensions", json_object_new_int((int)s->extensions));
                json_object_object_add(so, "merged_events", json_object_new_int((int)s->merged));
                json_object_object_add(so, "retries", json_object_new_int((int)s->retries));
                json_object_object_add(so, "arm_failures", json_object_new_int((int)s->arm_failures));
                if (*s->error)
                    json_object_object_add(so, "error", lsm_json_string(s->error));
                json_object_object_add(d, i == 0 ? "source" : "mirror", so);
            }
            json_object_array_add(drives, d);
        }
        json_object_object_add(o, "drives", drives);
        json_object *ph = json_object_new_object();
        for (int p = 0; p < LSM_PHASES; p++)
            json_object_object_add(ph, lsm_extend_phase_name(p), hist_json(&st.phase[p]));
        json_object_object_add(o, "phases", ph);
        print_json(o);
        json_object_put(o);
        return;
    }
    char b[6][32];
    pthread_mutex_lock(&out_lock);
    printf("status of %s:%s%s, %u resumes, events: %" PRIu64 " threshold, %" PRIu64
           " io-error, %" PRIu64 " lifecycle, %" PRIu64 " block-job\n", domain,
           st.replicating ? " replicating" : "", st.paused ? " paused" : "", st.resumes,
           st.events[0], st.events[1], st.events[2], st.events[3]);
    for (unsigned k = 0; k < st.ndrives; k++)
        for (int i = 0; i < 2; i++) {
            const struct lsm_extender_side_status *s = &st.drive[k].side[i];
            if (s->state == LSM_SIDE_NONE)
                continue;
            printf("  %s %-6s %-9s %s (%s): allocation %s, size %s of max %s, headroom %s, "
                   "%.1f MiB/s, %u extensions%s%s\n", st.drive[k].disk, i ? "mirror" : "source",
                   lsm_side_state_name(s->state), s->path, s->kind,
                   lsm_format_size(s->allocation, b[0], 32), lsm_format_size(s->physical, b[1], 32),
                   lsm_format_size(s->max_size, b[2], 32), lsm_format_size(s->headroom, b[3], 32),
                   s->rate_bps / (double)MiB, s->extensions, *s->error ? ": " : "", s->error);
        }
    printf("  %-20s %6s %8s %8s %8s %8s %8s (seconds)\n", "phase", "count", "min", "p50", "p90",
           "p99", "max");
    for (int p = 0; p < LSM_PHASES; p++) {
        const struct lsm_lat_hist *h = &st.phase[p];
        printf("  %-20s %6" PRIu64 " %8.3f %8.3f %8.3f %8.3f %8.3f\n", lsm_extend_phase_name(p),
               h->count, secs(h->min_ns), secs(lsm_lat_hist_percentile(h, 50)),
               secs(lsm_lat_hist_percentile(h, 90)), secs(lsm_lat_hist_percentile(h, 99)),
               secs(h->max_ns));
    }
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static bool parse_uint(const char *opt, const char *arg, unsigned long lo, unsigned long hi,
                       unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-' || v < lo || v > hi) {
        cli_usage_error(CMD, "%s must be an integer from %lu to %lu, not '%s'", opt, lo, hi, arg);
        return false;
    }
    *out = v;
    return true;
}

LSM_DEFINE_CLEANUP(struct lsm_extender *, lsm_extender_stop)

int cmd_monitor(int argc, char **argv)
{
    struct lsm_extender_opts o = { 0 };
    lsm_extend_policy_default(&o.policy);
    const char *disks[LSM_EXTENDER_MAX_DRIVES];
    unsigned long status_interval = 0, v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+hd:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 0;
        case OPT_CONNECT:
            o.uri = optarg;
            break;
        case 'd':
            if (o.ndisks >= LSM_EXTENDER_MAX_DRIVES)
                return cli_usage_error(CMD, "at most %d --disk options", LSM_EXTENDER_MAX_DRIVES);
            if (!*optarg || strlen(optarg) >= 32 || strpbrk(optarg, "[]/ "))
                return cli_usage_error(CMD, "invalid disk target '%s' (a target name like vda)",
                                       optarg);
            disks[o.ndisks++] = optarg;
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output(CMD, optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_POLL:
            if (!parse_uint("--poll-interval", optarg, 100, 3600000, &v))
                return EXIT_USAGE;
            o.poll_ms = (int)v;
            break;
        case OPT_CMD:
            if (!*optarg)
                return cli_usage_error(CMD, "--extend-cmd needs a program");
            o.extend_cmd = optarg;
            break;
        case OPT_CMD_TIMEOUT:
            if (!parse_uint("--extend-cmd-timeout", optarg, 1, 3600, &v))
                return EXIT_USAGE;
            o.extend_cmd_timeout_ms = (int)v * 1000;
            break;
        case OPT_REPLICATING:
            o.replicating = true;
            break;
        case OPT_NO_RESUME:
            o.no_resume = true;
            break;
        case OPT_STATUS_INTERVAL:
            if (!parse_uint("--status-interval", optarg, 0, 86400, &status_interval))
                return EXIT_USAGE;
            break;
        default:
            switch (cli_extend_policy_option(CMD, c, optarg, &o.policy)) {
            case 1:
                break;
            case 0:
                return cli_usage_error(CMD, "unknown option");
            default:
                return EXIT_USAGE;
            }
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(CMD, optind == argc ? "missing DOMAIN" : "too many arguments");
    o.domain = argv[optind];
    o.disks = disks;
    int bad = cli_extend_policy_check(CMD, &o.policy);
    if (bad)
        return bad;
    o.cb = on_event;

    /* SIGINT and SIGTERM are taken with sigtimedwait; blocked before the
     * extender's threads start, so that they inherit the mask. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &old);

    _cleanup_(lsm_extender_stopp) struct lsm_extender *x = NULL;
    if (lsm_extender_start(&o, &x) < 0) {
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return cli_fail(CMD);
    }
    uint64_t next_status = status_interval ? lsm_now_ns() + status_interval * 1000000000ULL : 0;
    int rc = 0;
    for (;;) {
        struct timespec ts = { 0, 200000000L };
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM)
            break;
        if (lsm_extender_error(x) < 0) {
            rc = cli_fail(CMD);
            break;
        }
        struct lsm_extender_status st;
        lsm_extender_status(x, &st);
        if (st.domain_stopped) {
            cli_warn("domain '%s' stopped", o.domain);
            break;
        }
        if (next_status && lsm_now_ns() >= next_status) {
            print_status(x, o.domain);
            next_status = lsm_now_ns() + status_interval * 1000000000ULL;
        }
    }
    print_status(x, o.domain);
    lsm_extender_stop(LSM_STEAL(x));
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}
