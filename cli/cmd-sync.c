/* lsm-sync sync: syncImageData.  Copy the data of the volumes of a chain,
 * layer by layer (each destination volume receives only its source
 * volume's own layer), into a destination chain of the same structure.
 * The work is flows/sync.c; this file parses options and prints. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>

#include "cli.h"
#include "chain.h"
#include "domain.h"
#include "json-out.h"
#include "json-util.h"
#include "flow-copy.h"
#include "progress.h"
#include "sync.h"
#include "util.h"

static volatile sig_atomic_t sync_cancel;

static void on_signal(int sig)
{
    (void)sig;
    sync_cancel = 1;
}

/* Called by the sync with its lock held, from the volumes' threads. */
static void sync_warn(void *opaque, const char *msg)
{
    cli_progress_break(opaque);
    cli_warn("%s", msg);
}

static void sync_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync sync --type=ALL|INTERNAL|LEAF [options] (SRC_TOP DST_TOP | --job FILE)\n\n"
        "Copy the data of a chain's volumes into a destination chain of the same\n"
        "structure (made by clone-structure), layer by layer: each destination volume\n"
        "receives only its source volume's own layer.  ALL: every volume; INTERNAL:\n"
        "every volume but the leaf (which is being mirrored); LEAF: only the leaf.\n\n"
        "  --type=TYPE          ALL, INTERNAL or LEAF (required)\n"
        "  --job FILE           explicit source/destination volumes (docs/chains.md); the\n"
        "                       destinations may all be NBD URIs, each export serving one\n"
        "                       destination layer alone (docs/nbd.md, \"sync\")\n"
        "  --parallel N         copy up to N volumes at once (default 4)\n"
        "  -p                   progress on stdout: a bar on a terminal, otherwise\n"
        "                       qemu-img's records \"    (NN.NN/100%%)\\r\"\n"
        "  --progress[=bar|json]  --progress or --progress=bar: the same as -p;\n"
        "                       --progress=json: one JSON progress object per line on stdout\n"
        "  --output=FMT         human (default) or json summary\n"
        "  --io=KIND            auto, uring, aio or psync\n"
        "  --direct=MODE        auto, always or never (O_DIRECT)\n"
        "  -m N                 requests in flight per volume (default 16)\n"
        "  --request-size=SIZE  request size (default 1M; was -s, now only compare's\n"
        "                       strict, as in qemu-img)\n"
        "  --buffer-size=SIZE   memory budget for buffers, shared by all volumes (default 32M)\n"
        "  --rate=BYTES         bandwidth limit per volume copy, bytes per second\n"
        "  --offload=auto|never|NAME   offload each volume's data extents to raw\n"
        "                       destinations, as copy does (default auto; docs/offload.md)\n"
        "  --offload-cmd=CMD    offload through a vendor's tool, as copy does\n"
        "  --offload-timeout=SECONDS   kill CMD after SECONDS (default 300)\n"
        "  -C                   offload required: a volume whose data cannot be offloaded fails\n"
        "  --journal=FILE       keep the sync's durable progress in FILE, and each volume's\n"
        "                       copy journal in FILE.N beside it (refused if one exists,\n"
        "                       unless --resume); removed when the sync completes\n"
        "  --resume             continue the sync FILE describes after a kill: volumes\n"
        "                       done are not copied again, the others resume\n"
        "  --checkpoint-interval=SIZE[,SECONDS]  with --journal: each volume's copy saves\n"
        "                       its journal after SIZE of data or SECONDS (default 1G,5)\n"
        "  --checksum[=ALGO]    the block checksum (sha256 or blake2b) of every destination\n"
        "                       volume, read back after the sync: what `lsm-sync checksum`\n"
        "                       gives for the volume and for its source\n"
        "  --timeout=SECONDS    NBD destinations: give up connecting, or waiting for one\n"
        "                       request, after SECONDS (default: 30 to connect, 60 per request)\n"
        "  --connections=N      NBD: connections per export that offers multi-conn\n"
        "                       (1 to 8, default 4; always 1 without multi-conn)\n");
}

int cmd_sync(int argc, char **argv)
{
    enum { OPT_TYPE = 256, OPT_JOB, OPT_PAR, OPT_PROGRESS, OPT_OUTPUT, OPT_IO, OPT_DIRECT, OPT_BUF, OPT_REQSIZE, OPT_RATE,
           OPT_OFFLOAD, OPT_OFFLOAD_CMD, OPT_OFFLOAD_TIMEOUT, OPT_JOURNAL, OPT_RESUME, OPT_CHECKPOINT,
           OPT_CHECKSUM, OPT_TIMEOUT, OPT_CONNECTIONS };
    static const struct option opts[] = {
        { "type", required_argument, NULL, OPT_TYPE },
        { "job", required_argument, NULL, OPT_JOB },
        { "parallel", required_argument, NULL, OPT_PAR },
        { "progress", optional_argument, NULL, OPT_PROGRESS },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "io", required_argument, NULL, OPT_IO },
        { "direct", required_argument, NULL, OPT_DIRECT },
        { "buffer-size", required_argument, NULL, OPT_BUF },
        { "request-size", required_argument, NULL, OPT_REQSIZE },
        { "rate", required_argument, NULL, OPT_RATE },
        { "offload", required_argument, NULL, OPT_OFFLOAD },
        { "offload-cmd", required_argument, NULL, OPT_OFFLOAD_CMD },
        { "offload-timeout", required_argument, NULL, OPT_OFFLOAD_TIMEOUT },
        { "journal", required_argument, NULL, OPT_JOURNAL },
        { "resume", no_argument, NULL, OPT_RESUME },
        { "checkpoint-interval", required_argument, NULL, OPT_CHECKPOINT },
        { "checksum", optional_argument, NULL, OPT_CHECKSUM },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "connections", required_argument, NULL, OPT_CONNECTIONS },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int type = -1;
    const char *jobfile = NULL, *journal = NULL;
    bool resume = false;
    unsigned parallel = LSM_SYNC_DEFAULT_PARALLEL;
    enum cli_progress_mode pmode = CLI_PROGRESS_NONE;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    struct lsm_copy_opts base = { .offload = true };
    uint64_t v64;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "pm:Ch", opts, NULL)) != -1) {
        switch (c) {
        case OPT_TYPE:
        {
            enum lsm_sync_type t;
            if (lsm_sync_type_parse(optarg, &t) < 0)
                return cli_usage_error("sync", "--type must be ALL, INTERNAL or LEAF, not '%s'", optarg);
            type = (int)t;
            break;
        }
        case OPT_JOB: jobfile = optarg; break;
        case OPT_PAR:
            if (lsm_parse_size(optarg, &v64) < 0 || v64 < 1 || v64 > LSM_SYNC_MAX_PARALLEL)
                return cli_usage_error("sync", "--parallel must be 1 to 64");
            parallel = (unsigned)v64;
            break;
        case 'p': pmode = CLI_PROGRESS_BAR; break;
        case OPT_PROGRESS:
            if (!cli_parse_progress("sync", optarg, &pmode))
                return EXIT_USAGE;
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output("sync", optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_IO:
            if (lsm_io_kind_parse(optarg, &base.io_kind) < 0)
                return cli_usage_error("sync", "--io must be auto, uring, aio or psync");
            break;
        case OPT_DIRECT:
            if (lsm_direct_parse(optarg, &base.direct) < 0)
                return cli_usage_error("sync", "--direct must be auto, always or never");
            break;
        case 'm':
            if (lsm_parse_size(optarg, &v64) < 0 || v64 < 1 || v64 > 1024)
                return cli_usage_error("sync", "-m must be 1 to 1024");
            base.requests = (unsigned)v64;
            break;
        case OPT_REQSIZE:
            if (!cli_parse_size("sync", "--request-size", optarg, &base.request_size))
                return EXIT_USAGE;
            break;
        case OPT_BUF:
            if (!cli_parse_size("sync", "--buffer-size", optarg, &base.buffer_size))
                return EXIT_USAGE;
            break;
        case OPT_RATE:
            if (!cli_parse_size("sync", "--rate", optarg, &base.rate))
                return EXIT_USAGE;
            break;
        case OPT_OFFLOAD:
        case OPT_OFFLOAD_CMD:
        case OPT_OFFLOAD_TIMEOUT:
            if (!cli_parse_offload("sync", c == OPT_OFFLOAD ? CLI_OFFLOAD_MODE
                                   : c == OPT_OFFLOAD_CMD ? CLI_OFFLOAD_CMD : CLI_OFFLOAD_TIMEOUT,
                                   optarg, &base))
                return EXIT_USAGE;
            break;
        case 'C':
            base.offload_required = true;
            break;
        case OPT_JOURNAL:
            if (!*optarg)
                return cli_usage_error("sync", "--journal needs a file name");
            journal = optarg;
            break;
        case OPT_RESUME:
            resume = true;
            break;
        case OPT_CHECKPOINT:
            if (!cli_parse_checkpoint("sync", optarg, &base))
                return EXIT_USAGE;
            break;
        case OPT_TIMEOUT: {
            char *end;
            errno = 0;
            double sec = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(sec >= 0.001 && sec <= 86400))
                return cli_usage_error("sync", "--timeout must be a number of seconds from "
                                       "0.001 to 86400, not '%s'", optarg);
            base.nbd_timeout_ms = (unsigned)(sec * 1000 + 0.5);
            break;
        }
        case OPT_CONNECTIONS: {
            uint64_t v;
            if (!cli_parse_size("sync", "--connections", optarg, &v))
                return EXIT_USAGE;
            if (v < 1 || v > 8)
                return cli_usage_error("sync", "--connections must be between 1 and 8");
            base.nbd_connections = (unsigned)v;
            break;
        }
        case OPT_CHECKSUM:
            if (!cli_parse_checksum("sync", optarg, &base))
                return EXIT_USAGE;
            break;
        case 'h':
            sync_usage(stdout);
            return 0;
        default:
            return cli_usage_error("sync", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (type < 0)
        return cli_usage_error("sync", "--type is required (ALL, INTERNAL or LEAF)");
    if (jobfile ? optind != argc : optind != argc - 2)
        return cli_usage_error("sync", jobfile ? "SRC_TOP and DST_TOP go in the job file" : "need SRC_TOP and DST_TOP");
    if (resume && !journal)
        return cli_usage_error("sync", "--resume needs --journal");
    if ((base.checkpoint_bytes || base.checkpoint_ms) && !journal)
        return cli_usage_error("sync", "--checkpoint-interval needs --journal");
    /* the checksum is the sync's (read back), not each volume copy's */
    bool checksum = base.checksum;
    base.checksum = false;

    /* a loop domain's volumes are checked (and attached again when their
     * loop is gone) before the chain behind DST_TOP is read */
    if (!jobfile && lsm_loop_domain_check_path(argv[optind + 1]) < 0)
        return cli_fail("sync");
    if (jobfile) {
        /* the job file is loaded again (and checked) by lsm_sync; here
         * only its block destinations' loop domains are looked at */
        struct lsm_jobfile jf = { 0 };
        if (lsm_jobfile_load(jobfile, &jf) == 0) {
            int lr = 0;
            for (unsigned k = 0; k < jf.n && lr == 0; k++)
                if (jf.v[k].dst_type == LSM_DOMAIN_BLOCK)
                    lr = lsm_loop_domain_check_path(jf.v[k].dst_path);
            lsm_jobfile_free(&jf);
            if (lr < 0)
                return cli_fail("sync");
        }
    }

    struct cli_progress progress;
    cli_progress_init(&progress, pmode);
    struct lsm_sync_opts so = {
        .type = (enum lsm_sync_type)type,
        .src_top = jobfile ? NULL : argv[optind],
        .dst_top = jobfile ? NULL : argv[optind + 1],
        .jobfile = jobfile,
        .parallel = parallel,
        .copy = base,
        .journal = journal,
        .resume = resume,
        .checksum = checksum,
        .checksum_alg = base.checksum_alg,
        .cancel = &sync_cancel,
        .progress = cli_progress_update,
        .warn = sync_warn,
        .opaque = &progress,
    };
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct lsm_sync_result res;
    int r = lsm_sync(&so, &res);
    if (r < 0 && !res.started) {
        /* a check failed: nothing was written */
        int rc = cli_fail("sync");
        lsm_sync_result_free(&res);
        return rc;
    }
    int rc = 0;
    if (r == 0)
        cli_progress_finish(&progress, res.bytes_total, res.bytes_total);
    else
        cli_progress_break(&progress);

    for (unsigned k = 0; k < res.nvols; k++) {
        struct lsm_sync_volume *v = &res.v[k];
        if (v->result < 0) {
            cli_error("sync", "%s -> %s: %s; the destination volume is incomplete",
                      v->src_path, v->dst_path, v->error);
            rc = EXIT_OPERATIONAL;
        }
    }
    if (!rc && r < 0) {
        /* interrupted, or failed after the volumes (the checksums) */
        cli_error("sync", "%s", res.cancelled ? "interrupted; the destination chain is incomplete"
                                              : lsm_last_error());
        rc = EXIT_OPERATIONAL;
    }
    if (rc && res.journal_kept)
        cli_error("sync", "continue with --journal=%s --resume", journal);
    if (output == CLI_OUTPUT_JSON) {
        json_object *o = json_object_new_object(), *a = json_object_new_array();
        json_object_object_add(o, "type", json_object_new_string(lsm_sync_type_name(res.type)));
        /* The field names of copy --output=json (and of the progress lines). */
        json_object_object_add(o, "bytes_total", json_object_new_int64((int64_t)res.bytes_total));
        json_object_object_add(o, "bytes_done", json_object_new_int64((int64_t)res.bytes_done));
        json_object_object_add(o, "seconds", cli_json_fixed(res.seconds, "%.3f"));
        if (journal) {
            json_object_object_add(o, "resumed", json_object_new_boolean(res.resumed));
            json_object_object_add(o, "bytes_redone", json_object_new_int64((int64_t)res.bytes_redone));
        }
        for (unsigned k = 0; k < res.nvols; k++) {
            struct lsm_sync_volume *v = &res.v[k];
            json_object *e = json_object_new_object();
            json_object_object_add(e, "source", lsm_json_string(v->src_path));
            json_object_object_add(e, "destination", lsm_json_string(v->dst_path));
            json_object_object_add(e, "bytes_total", json_object_new_int64((int64_t)v->bytes));
            json_object_object_add(e, "status", json_object_new_string(
                v->result == 0 ? (v->already_done ? "already-synced" : "synced")
                : v->result < 0 ? "failed" : "not-started"));
            if (v->checksummed) {
                /* the fields of `lsm-sync checksum --output=json` */
                json_object *cs = json_object_new_object();
                json_object_object_add(cs, "algorithm", json_object_new_string(cli_checksum_alg_name(base.checksum_alg)));
                json_object_object_add(cs, "block_size", json_object_new_int64(LSM_BLKHASH_DEFAULT_BLOCK));
                json_object_object_add(cs, "checksum", json_object_new_string(v->checksum));
                json_object_object_add(e, "checksum", cs);
            }
            if (v->result < 0)
                json_object_object_add(e, "error", lsm_json_string(v->error[0] ? v->error : "failed"));
            if (v->result == 0 && !v->already_done) {
                if (journal) {
                    json_object_object_add(e, "resumed", json_object_new_boolean(v->st.bytes_already_done > 0 || v->st.bytes_redone > 0));
                    json_object_object_add(e, "bytes_already_done", json_object_new_int64((int64_t)v->st.bytes_already_done));
                    json_object_object_add(e, "bytes_redone", json_object_new_int64((int64_t)v->st.bytes_redone));
                    json_object_object_add(e, "checkpoints", json_object_new_int64(v->st.checkpoints));
                }
                json_object_object_add(e, "io", json_object_new_string(v->st.io_name));
                json_object_object_add(e, "direct", json_object_new_boolean(v->st.direct));
                json_object_object_add(e, "physical", json_object_new_boolean(v->st.physical));
                json_object_object_add(e, "bytes_read", json_object_new_int64((int64_t)v->st.bytes_read));
                json_object_object_add(e, "bytes_written", json_object_new_int64((int64_t)v->st.bytes_written));
                json_object_object_add(e, "bytes_zeroed", json_object_new_int64((int64_t)v->st.bytes_zeroed));
                json_object_object_add(e, "bytes_skipped", json_object_new_int64((int64_t)v->st.bytes_skipped));
                json_object_object_add(e, "bytes_offloaded", json_object_new_int64((int64_t)v->st.bytes_offloaded));
                if (v->st.bytes_offloaded) {   /* copy's names (docs/copy.md) */
                    json_object *paths = json_object_new_object();
                    json_object_object_add(paths, "reflink", json_object_new_int64((int64_t)v->st.bytes_reflinked));
                    json_object_object_add(paths, "copy_file_range", json_object_new_int64((int64_t)v->st.bytes_copy_range));
                    json_object_object_add(paths, "plugin", json_object_new_int64((int64_t)v->st.bytes_plugin));
                    json_object_object_add(paths, "command", json_object_new_int64((int64_t)v->st.bytes_offload_cmd));
                    json_object_object_add(e, "offload_paths", paths);
                }
                json_object_object_add(e, "seconds", cli_json_fixed(v->st.seconds, "%.3f"));
            }
            json_object_array_add(a, e);
        }
        json_object_object_add(o, "volumes", a);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                          JSON_C_TO_STRING_SPACED |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else if (!rc && pmode != CLI_PROGRESS_JSON) {
        char b[32];
        printf("synced %u volume%s (%s) in %.2f s\n", res.nvols, res.nvols == 1 ? "" : "s",
               lsm_format_size(res.bytes_total, b, sizeof b), res.seconds);
        if (res.resumed) {
            unsigned before = 0;
            for (unsigned k = 0; k < res.nvols; k++)
                before += res.v[k].already_done;
            printf("resumed: %u volume%s synced before, %s redone\n", before, before == 1 ? "" : "s",
                   lsm_format_size(res.bytes_redone, b, sizeof b));
        }
        for (unsigned k = 0; k < res.nvols; k++)
            if (res.v[k].checksummed)   /* as `lsm-sync checksum` prints it */
                printf("%s  %s\n", res.v[k].checksum, res.v[k].dst_path);
    }
    lsm_sync_result_free(&res);
    return rc;
}
