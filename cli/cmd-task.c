/* lsm-sync task: a client of `lsm-sync serve` for people and scripts
 * (list, status, wait, stop, clear, bandwidth). */
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <json-c/json.h>

#include "cleanup.h"
#include "cli.h"
#include "util.h"

#define DEFAULT_SOCKET "/run/lsm-sync/lsm-sync.sock"
#define REPLY_MAX (64u << 20)
#define REPLY_TIMEOUT_MS 30000

static void task_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync task [--socket PATH] [--output=human|json] COMMAND [ARGS]\n\n"
        "Talk to a running `lsm-sync serve`.\n\n"
        "Commands:\n"
        "  list                     every task: id, method, state, progress\n"
        "  status TASK_ID           one task's status\n"
        "  info TASK_ID             status, parameters and times\n"
        "  wait [--timeout S] TASK_ID\n"
        "                           wait until the task ends; exit 0 if it finished,\n"
        "                           1 if it failed or was stopped (or on time-out)\n"
        "  stop TASK_ID             stop a running task\n"
        "  clear TASK_ID            forget an ended task (its record is removed)\n"
        "  bandwidth TASK_ID RATE   the task's own limit in bytes/s (100M; 0: none)\n\n"
        "Options:\n"
        "  --socket PATH            the service's socket (default $LSM_SYNC_SOCKET, else\n"
        "                           " DEFAULT_SOCKET ")\n"
        "  --output=human|json      human (default) or the JSON-RPC result as JSON\n"
        "  -h, --help               show this help\n");
}

struct conn {
    int fd;
    char *buf;
    size_t len, cap;
    int next_id;
};

static int conn_open(const char *path, struct conn *c)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        cli_error("task", "socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        cli_error("task", "cannot connect to %s: %m", path);
        return -1;
    }
    c->next_id = 1;
    return 0;
}

/* Send one request and read its reply: the result (a new reference), or
 * NULL after printing the error. */
static json_object *call(struct conn *c, const char *method, json_object *params)
{
    json_object *rq = json_object_new_object();
    int id = c->next_id++;
    json_object_object_add(rq, "jsonrpc", json_object_new_string("2.0"));
    json_object_object_add(rq, "id", json_object_new_int(id));
    json_object_object_add(rq, "method", json_object_new_string(method));
    json_object_object_add(rq, "params", params ? params : json_object_new_object());
    const char *s = json_object_to_json_string_ext(rq, JSON_C_TO_STRING_PLAIN);
    size_t n = strlen(s);
    _cleanup_free_ char *line = malloc(n + 1);
    if (!line) {
        json_object_put(rq);
        cli_error("task", "out of memory");
        return NULL;
    }
    memcpy(line, s, n);
    line[n] = '\n';
    json_object_put(rq);
    for (size_t off = 0; off < n + 1;) {
        ssize_t w = send(c->fd, line + off, n + 1 - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            cli_error("task", "cannot send to the service: %m");
            return NULL;
        }
        off += (size_t)w;
    }
    for (;;) {
        char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
        if (nl) {
            size_t l = (size_t)(nl - c->buf);
            json_tokener *tok = json_tokener_new();
            json_object *rep = tok ? json_tokener_parse_ex(tok, c->buf, (int)l) : NULL;
            if (tok)
                json_tokener_free(tok);
            memmove(c->buf, nl + 1, c->len - l - 1);
            c->len -= l + 1;
            json_object *v;
            if (!rep || !json_object_is_type(rep, json_type_object)) {
                if (rep)
                    json_object_put(rep);
                cli_error("task", "the service's reply is not a JSON object");
                return NULL;
            }
            if (!json_object_object_get_ex(rep, "id", &v) || json_object_get_int(v) != id) {
                json_object_put(rep);
                continue;           /* not ours (cannot happen on our own connection) */
            }
            if (json_object_object_get_ex(rep, "error", &v) && v) {
                json_object *m = NULL;
                json_object_object_get_ex(v, "message", &m);
                cli_error("task", "%s: %s", method, m ? json_object_get_string(m) : "error");
                json_object_put(rep);
                return NULL;
            }
            json_object *res = NULL;
            if (json_object_object_get_ex(rep, "result", &v))
                res = json_object_get(v);
            json_object_put(rep);
            if (!res)
                cli_error("task", "%s: the reply has no result", method);
            return res;
        }
        if (c->len + 65536 > c->cap) {
            if (c->cap >= REPLY_MAX) {
                cli_error("task", "the service's reply is larger than %u bytes", REPLY_MAX);
                return NULL;
            }
            size_t cap = c->cap ? c->cap * 2 : 65536 * 2;
            char *b = realloc(c->buf, cap);
            if (!b) {
                cli_error("task", "out of memory");
                return NULL;
            }
            c->buf = b;
            c->cap = cap;
        }
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        int pr = poll(&p, 1, REPLY_TIMEOUT_MS);
        if (pr == 0) {
            cli_error("task", "no reply from the service in %d s", REPLY_TIMEOUT_MS / 1000);
            return NULL;
        }
        ssize_t r = pr < 0 ? -1 : recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                cli_error("task", "the service closed the connection");
            else
                cli_error("task", "cannot read from the service: %m");
            return NULL;
        }
        c->len += (size_t)r;
    }
}

static json_object *id_params(const char *id)
{
    json_object *p = json_object_new_object();
    json_object_object_add(p, "taskId", json_object_new_string(id));
    return p;
}

static const char *str_of(json_object *o, const char *key)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, key, &v) && v)
        return json_object_get_string(v);
    return "";
}

static uint64_t u64_of(json_object *o, const char *key)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, key, &v) && v)
        return json_object_get_uint64(v);
    return 0;
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE));
}

static void print_status(json_object *t)
{
    char a[32], b[32], r[32];
    json_object *p = NULL, *e = NULL, *res = NULL;
    json_object_object_get_ex(t, "progress", &p);
    json_object_object_get_ex(t, "error", &e);
    json_object_object_get_ex(t, "result", &res);
    printf("task:      %s\n", str_of(t, "taskId"));
    printf("method:    %s\n", str_of(t, "method"));
    printf("state:     %s\n", str_of(t, "state"));
    if (p) {
        json_object *pc = NULL;
        json_object_object_get_ex(p, "percent", &pc);
        printf("progress:  %.1f%% (%s of %s, %s/s)\n", pc ? json_object_get_double(pc) : 0.0,
               lsm_format_size(u64_of(p, "bytes_done"), a, sizeof a),
               lsm_format_size(u64_of(p, "bytes_total"), b, sizeof b),
               lsm_format_size(u64_of(p, "rate"), r, sizeof r));
    }
    if (u64_of(t, "bandwidth"))
        printf("bandwidth: %s/s\n", lsm_format_size(u64_of(t, "bandwidth"), a, sizeof a));
    if (e)
        printf("error:     %s (%s)\n", str_of(e, "message"), str_of(e, "name"));
    if (*str_of(t, "note"))
        printf("note:      %s\n", str_of(t, "note"));
    json_object *ck = NULL;
    if (res && json_object_object_get_ex(res, "checksum", &ck)) {
        if (json_object_is_type(ck, json_type_object))
            printf("checksum:  %s:%s\n", str_of(ck, "algorithm"), str_of(ck, "checksum"));
        else
            printf("checksum:  %s:%s\n", str_of(res, "algorithm"), str_of(res, "checksum"));
    }
}

static bool is_final(const char *state)
{
    return !strcmp(state, "finished") || !strcmp(state, "failed") || !strcmp(state, "aborted");
}

int cmd_task(int argc, char **argv)
{
    enum { OPT_SOCKET = 256, OPT_OUTPUT, OPT_TIMEOUT };
    static const struct option opts[] = {
        { "socket", required_argument, NULL, OPT_SOCKET },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *sock = getenv("LSM_SYNC_SOCKET");
    enum cli_output output = CLI_OUTPUT_HUMAN;
    double timeout = -1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET: sock = optarg; break;
        case OPT_OUTPUT:
            if (!cli_parse_output("task", optarg, &output))
                return EXIT_USAGE;
            break;
        case 'h':
            task_usage(stdout);
            return 0;
        default:
            return cli_usage_error("task", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return cli_usage_error("task", "missing COMMAND (list, status, info, wait, stop, clear, bandwidth)");
    const char *sub = argv[optind++];
    /* Options after the subcommand (wait --timeout). */
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET: sock = optarg; break;
        case OPT_OUTPUT:
            if (!cli_parse_output("task", optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_TIMEOUT: {
            char *end;
            timeout = strtod(optarg, &end);
            if (*end || !(timeout >= 0))
                return cli_usage_error("task", "--timeout must be seconds, not '%s'", optarg);
            break;
        }
        case 'h':
            task_usage(stdout);
            return 0;
        default:
            return cli_usage_error("task", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    int nargs = argc - optind;
    char **args = argv + optind;
    int want = !strcmp(sub, "list") ? 0 : !strcmp(sub, "bandwidth") ? 2 : 1;
    if (strcmp(sub, "list") && strcmp(sub, "status") && strcmp(sub, "info") && strcmp(sub, "wait")
        && strcmp(sub, "stop") && strcmp(sub, "clear") && strcmp(sub, "bandwidth"))
        return cli_usage_error("task", "unknown command '%s'", sub);
    if (nargs != want)
        return cli_usage_error("task", "%s takes %d argument%s", sub, want, want == 1 ? "" : "s");
    if (timeout >= 0 && strcmp(sub, "wait"))
        return cli_usage_error("task", "--timeout is for wait");
    uint64_t rate = 0;
    if (!strcmp(sub, "bandwidth") && !cli_parse_size("task", "RATE", args[1], &rate))
        return EXIT_USAGE;
    if (!sock)
        sock = DEFAULT_SOCKET;

    struct conn cn = { .fd = -1 };
    int rc = EXIT_OPERATIONAL;
    json_object *res = NULL;
    if (conn_open(sock, &cn) < 0)
        goto out;
    if (!strcmp(sub, "list")) {
        res = call(&cn, "getAllTasksStatuses", NULL);
        if (!res)
            goto out;
        json_object *a = NULL;
        json_object_object_get_ex(res, "tasks", &a);
        if (output == CLI_OUTPUT_JSON) {
            print_json(res);
        } else {
            printf("%-36s  %-19s  %-8s  %6s  %s\n", "TASK", "METHOD", "STATE", "DONE", "BYTES");
            for (size_t i = 0; a && i < json_object_array_length(a); i++) {
                json_object *t = json_object_array_get_idx(a, i), *p = NULL, *pc = NULL;
                json_object_object_get_ex(t, "progress", &p);
                if (p)
                    json_object_object_get_ex(p, "percent", &pc);
                char d[32], tot[32];
                printf("%-36s  %-19s  %-8s  %5.1f%%  %s / %s\n", str_of(t, "taskId"), str_of(t, "method"),
                       str_of(t, "state"), pc ? json_object_get_double(pc) : 0.0,
                       lsm_format_size(u64_of(p, "bytes_done"), d, sizeof d),
                       lsm_format_size(u64_of(p, "bytes_total"), tot, sizeof tot));
            }
        }
        rc = 0;
    } else if (!strcmp(sub, "status") || !strcmp(sub, "info")) {
        res = call(&cn, !strcmp(sub, "status") ? "getTaskStatus" : "getTaskInfo", id_params(args[0]));
        if (!res)
            goto out;
        if (output == CLI_OUTPUT_JSON)
            print_json(res);
        else
            print_status(res);
        rc = 0;
    } else if (!strcmp(sub, "wait")) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            res = call(&cn, "getTaskStatus", id_params(args[0]));
            if (!res)
                goto out;
            if (is_final(str_of(res, "state")))
                break;
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            double el = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
            if (timeout >= 0 && el >= timeout) {
                cli_error("task", "%s is still %s after %g s", args[0], str_of(res, "state"), timeout);
                goto out;
            }
            json_object_put(res);
            res = NULL;
            usleep(250 * 1000);
        }
        if (output == CLI_OUTPUT_JSON)
            print_json(res);
        else
            print_status(res);
        rc = !strcmp(str_of(res, "state"), "finished") ? 0 : EXIT_OPERATIONAL;
    } else if (!strcmp(sub, "stop") || !strcmp(sub, "clear")) {
        res = call(&cn, !strcmp(sub, "stop") ? "stopTask" : "clearTask", id_params(args[0]));
        if (!res)
            goto out;
        if (output == CLI_OUTPUT_JSON)
            print_json(res);
        rc = 0;
    } else {
        json_object *p = id_params(args[0]);
        json_object_object_add(p, "bandwidth", json_object_new_uint64(rate));
        res = call(&cn, "setTaskBandwidth", p);
        if (!res)
            goto out;
        if (output == CLI_OUTPUT_JSON)
            print_json(res);
        rc = 0;
    }
out:
    if (res)
        json_object_put(res);
    if (cn.fd >= 0)
        close(cn.fd);
    free(cn.buf);
    return rc;
}
