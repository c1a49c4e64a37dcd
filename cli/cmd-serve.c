/* lsm-sync serve: the worker service (serve/server.h, docs/serve.md).
 * This file parses the options and prints the service's log lines. */
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "server.h"
#include "util.h"

static void serve_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync serve --socket PATH [--state-dir DIR] [--group NAME]\n"
        "                      [--allow-uid UID]... [--domain-root DIR]... [--max-tasks N]\n"
        "                      [--max-bandwidth RATE] [--memory MiB] [--stall-timeout SECONDS]\n"
        "                      [--max-request BYTES] [--checkpoint-interval SIZE[,SECONDS]]\n\n"
        "Run the storage pool manager's worker: a JSON-RPC 2.0 service on a Unix stream\n"
        "socket, one request per line (docs/serve.md).  Image work (copyVolume,\n"
        "checksumVolume, cloneImageStructure) runs as tasks in the background; clients\n"
        "poll getTaskStatus.  Runs until SIGTERM or SIGINT; running tasks then stop and\n"
        "are run again at the next start.\n\n"
        "Options:\n"
        "  --socket PATH          listen on this Unix socket (mode 0600; not needed when\n"
        "                         started by systemd socket activation, LISTEN_FDS)\n"
        "  --state-dir DIR        keep every task's record in DIR (created 0700) so that\n"
        "                         tasks survive a restart; without it nothing is kept\n"
        "  --group NAME           socket mode 0660 with this group\n"
        "  --allow-uid UID        also accept clients with this uid (repeatable); the\n"
        "                         service's own uid is always accepted, nobody else\n"
        "  --domain-root DIR      read and write only files under DIR (repeatable),\n"
        "                         backing files and symlink targets included\n"
        "  --max-tasks N          tasks running at once (default %u)\n"
        "  --max-bandwidth RATE   bytes/s for all tasks together, with a suffix (100M)\n"
        "  --memory MiB           copy buffers of all tasks together (default 32 MiB a task)\n"
        "  --stall-timeout S      fail a task that makes no progress for S seconds\n"
        "                         (default %u; 0: never)\n"
        "  --max-request BYTES    longest request line accepted (default %u)\n"
        "  --checkpoint-interval SIZE[,SECONDS]\n"
        "                         a copy's journal checkpoint after SIZE of data or\n"
        "                         SECONDS, whichever comes first (default 1G,5); a task\n"
        "                         restarted after a crash redoes at most that\n"
        "  -h, --help             show this help\n",
        LSM_SERVE_MAX_TASKS, LSM_SERVE_STALL_TIMEOUT, LSM_SERVE_MAX_REQUEST);
}

static void serve_log(void *opaque, const char *msg)
{
    (void)opaque;
    fprintf(stderr, "lsm-sync: serve: %s\n", msg);
    fflush(stderr);
}

static bool parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    if (!*s || *s == '-' || *s == '+')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

/* Socket activation (sd_listen_fds): one socket, fd 3, for this process. */
static int listen_fd_from_env(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    uint64_t p, n;
    if (!pid || !fds || !parse_uint(pid, INT_MAX, &p) || !parse_uint(fds, INT_MAX, &n))
        return -1;
    if ((pid_t)p != getpid())
        return -1;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (n != 1)
        return -2;
    return 3;
}

int cmd_serve(int argc, char **argv)
{
    enum { OPT_SOCKET = 256, OPT_STATE, OPT_GROUP, OPT_ALLOW, OPT_ROOT, OPT_TASKS, OPT_BW,
           OPT_MEM, OPT_STALL, OPT_REQ, OPT_CKPT };
    static const struct option opts[] = {
        { "socket", required_argument, NULL, OPT_SOCKET },
        { "state-dir", required_argument, NULL, OPT_STATE },
        { "group", required_argument, NULL, OPT_GROUP },
        { "allow-uid", required_argument, NULL, OPT_ALLOW },
        { "domain-root", required_argument, NULL, OPT_ROOT },
        { "max-tasks", required_argument, NULL, OPT_TASKS },
        { "max-bandwidth", required_argument, NULL, OPT_BW },
        { "memory", required_argument, NULL, OPT_MEM },
        { "stall-timeout", required_argument, NULL, OPT_STALL },
        { "max-request", required_argument, NULL, OPT_REQ },
        { "checkpoint-interval", required_argument, NULL, OPT_CKPT },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct lsm_serve_opts o = { .listen_fd = -1, .log = serve_log };
    uid_t uids[64];
    const char *roots[64];
    uint64_t v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET: o.socket_path = optarg; break;
        case OPT_STATE: o.state_dir = optarg; break;
        case OPT_GROUP: {
            struct group *g = getgrnam(optarg);
            if (g) {
                o.group = g->gr_gid;
            } else if (parse_uint(optarg, INT_MAX, &v)) {
                o.group = (gid_t)v;
            } else {
                return cli_usage_error("serve", "no group '%s'", optarg);
            }
            o.have_group = true;
            break;
        }
        case OPT_ALLOW: {
            struct passwd *pw = NULL;
            if (parse_uint(optarg, INT_MAX, &v))
                ;
            else if ((pw = getpwnam(optarg)))
                v = pw->pw_uid;
            else
                return cli_usage_error("serve", "--allow-uid: no user '%s'", optarg);
            if (o.n_allow == ARRAY_SIZE(uids))
                return cli_usage_error("serve", "at most %zu --allow-uid", ARRAY_SIZE(uids));
            uids[o.n_allow++] = (uid_t)v;
            break;
        }
        case OPT_ROOT:
            if (o.n_roots == ARRAY_SIZE(roots))
                return cli_usage_error("serve", "at most %zu --domain-root", ARRAY_SIZE(roots));
            roots[o.n_roots++] = optarg;
            break;
        case OPT_TASKS:
            if (!parse_uint(optarg, 1024, &v) || v == 0)
                return cli_usage_error("serve", "--max-tasks must be 1 to 1024, not '%s'", optarg);
            o.max_tasks = (unsigned)v;
            break;
        case OPT_BW:
            if (!cli_parse_size("serve", "--max-bandwidth", optarg, &o.max_bandwidth))
                return EXIT_USAGE;
            break;
        case OPT_MEM:
            if (!parse_uint(optarg, 1u << 20, &v) || v == 0)
                return cli_usage_error("serve", "--memory is in MiB (1 to 1048576), not '%s'", optarg);
            o.memory = v * MiB;
            break;
        case OPT_STALL:
            if (!parse_uint(optarg, 100u * 24 * 3600, &v))
                return cli_usage_error("serve", "--stall-timeout must be seconds, not '%s'", optarg);
            o.stall_timeout = v ? (unsigned)v : UINT32_MAX;
            break;
        case OPT_REQ:
            if (!parse_uint(optarg, 64u << 20, &v) || v < 1024)
                return cli_usage_error("serve", "--max-request must be 1024 to 67108864, not '%s'", optarg);
            o.max_request = (size_t)v;
            break;
        case OPT_CKPT: {
            char *comma = strchr(optarg, ',');
            if (comma)
                *comma = '\0';
            if (!cli_parse_size("serve", "--checkpoint-interval", optarg, &v))
                return EXIT_USAGE;
            if (v < MiB)
                return cli_usage_error("serve", "--checkpoint-interval: SIZE must be at least 1M");
            o.checkpoint_bytes = v;
            if (comma) {
                char *end;
                errno = 0;
                double sec = strtod(comma + 1, &end);
                if (errno || end == comma + 1 || *end || !(sec >= 0.01 && sec <= 86400))
                    return cli_usage_error("serve", "--checkpoint-interval: SECONDS must be a "
                                           "number from 0.01 to 86400, not '%s'", comma + 1);
                o.checkpoint_ms = (unsigned)(sec * 1000 + 0.5);
            }
            break;
        }
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            return cli_usage_error("serve", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc)
        return cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
    o.allow_uids = uids;
    o.roots = roots;
    o.listen_fd = listen_fd_from_env();
    if (o.listen_fd == -2) {
        cli_error("serve", "socket activation passed more than one socket");
        return EXIT_OPERATIONAL;
    }
    if (o.listen_fd < 0 && !o.socket_path)
        return cli_usage_error("serve", "--socket PATH is required (unless started by socket activation)");
    uint64_t per_task = o.memory / (o.max_tasks ? o.max_tasks : LSM_SERVE_MAX_TASKS);
    if (o.memory && per_task < 4 * MiB)
        return cli_usage_error("serve", "--memory gives %" PRIu64 " KiB a task; at least 4 MiB a task "
                               "(--max-tasks) is needed", (uint64_t)(per_task / KiB));
    if (lsm_serve_run(&o) < 0)
        return cli_fail("serve");
    return 0;
}
