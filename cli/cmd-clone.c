/* lsm-sync clone-structure: re-create a chain's structure, empty, in
 * another storage domain (cloneImageStructure).  The work is
 * flows/clone.c; this file parses options and prints. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>

#include "chain.h"
#include "cleanup.h"
#include "cli.h"
#include "clone.h"
#include "json-util.h"

static volatile sig_atomic_t clone_cancel;

static void on_signal(int sig)
{
    (void)sig;
    clone_cancel = 1;
}

static void clone_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync clone-structure [--reuse] [--output=human|json] [-f FMT]\n"
        "                                SRC_TOP (--dst-dir DIR | --dst-vg VG | --dst-loop DIR | --job FILE)\n\n"
        "Create the volumes of SRC_TOP's backing chain, empty, in a destination storage\n"
        "domain: same number and order of volumes, formats, virtual sizes, cluster sizes\n"
        "and qcow2 options, with backing names that point within the destination.\n"
        "Prints the destination top volume.\n\n"
        "  --dst-dir DIR   file domain: a directory; volumes keep their names\n"
        "  --dst-vg VG     block domain: an LVM volume group; volumes become LVs\n"
        "  --dst-loop DIR  block domain of loop devices: a directory holding .lsm-loop/;\n"
        "                  volumes become loop devices linked as DIR/NAME\n"
        "  --job FILE      explicit source/destination volumes (docs/chains.md)\n"
        "  --reuse         overwrite existing destination volumes (never a source volume)\n"
        "  -f FMT          format of SRC_TOP (default: probe)\n"
        "  --output=FMT    human (default) or json\n");
}

int cmd_clone_structure(int argc, char **argv)
{
    enum { OPT_DIR = 256, OPT_VG, OPT_LOOP, OPT_JOB, OPT_REUSE, OPT_OUTPUT };
    static const struct option opts[] = {
        { "dst-dir", required_argument, NULL, OPT_DIR },
        { "dst-vg", required_argument, NULL, OPT_VG },
        { "dst-loop", required_argument, NULL, OPT_LOOP },
        { "job", required_argument, NULL, OPT_JOB },
        { "reuse", no_argument, NULL, OPT_REUSE },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *vg = NULL, *loop = NULL, *jobfile = NULL;
    bool reuse = false;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    enum lsm_format fmt = LSM_FMT_AUTO;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_DIR: dir = optarg; break;
        case OPT_VG: vg = optarg; break;
        case OPT_LOOP: loop = optarg; break;
        case OPT_JOB: jobfile = optarg; break;
        case OPT_REUSE: reuse = true; break;
        case OPT_OUTPUT:
            if (!cli_parse_output("clone-structure", optarg, &output))
                return EXIT_USAGE;
            break;
        case 'f':
            if (lsm_format_parse(optarg, &fmt) < 0)
                return cli_usage_error("clone-structure", "unknown format '%s' (raw or qcow2)", optarg);
            break;
        case 'h':
            clone_usage(stdout);
            return 0;
        default:
            return cli_usage_error("clone-structure", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (!!dir + !!vg + !!loop + !!jobfile != 1)
        return cli_usage_error("clone-structure", "give exactly one of --dst-dir, --dst-vg, --dst-loop and --job");
    /* a loop domain is named by its absolute path (it contains a '/') */
    _cleanup_free_ char *loop_abs = loop ? realpath(loop, NULL) : NULL;
    if (loop && !loop_abs) {
        fprintf(stderr, "lsm-sync clone-structure: loop domain '%s': %s\n", loop, strerror(errno));
        return EXIT_FAILURE;
    }
    if (loop_abs)
        vg = loop_abs;
    /* SIGINT/SIGTERM from here on: lsm_chain_clone stops at its next step
     * and removes what it created; before it, nothing is created. */
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct lsm_clone_opts co = {
        .src_fmt = fmt,
        .jobfile = jobfile,
        .dst_kind = vg ? LSM_DOMAIN_BLOCK : LSM_DOMAIN_FILE,
        .dst_domain = vg ? vg : dir,
        .reuse = reuse,
        .cancel = &clone_cancel,
    };
    if (jobfile) {
        if (optind != argc && optind != argc - 1)
            return cli_usage_error("clone-structure", "too many arguments");
        co.src_top = optind == argc - 1 ? argv[optind] : NULL;
    } else {
        if (optind != argc - 1)
            return cli_usage_error("clone-structure", optind >= argc ? "missing SRC_TOP" : "too many arguments");
        co.src_top = argv[optind];
    }

    int rc = 0;
    struct lsm_chain_desc src = { 0 };
    struct lsm_jobfile job = { 0 };
    if (lsm_clone_structure(&co, &src, &job) < 0) {
        rc = cli_fail("clone-structure");
        goto out;
    }
    if (output == CLI_OUTPUT_JSON) {
        /* A valid job file for sync --job (docs/chains.md), with the
         * destination's backing name as written. */
        json_object *o = json_object_new_object(), *a = json_object_new_array();
        json_object_object_add(o, "top", lsm_json_string(job.v[0].dst_path));
        for (unsigned i = 0; i < job.n; i++) {
            json_object *v = json_object_new_object(), *s = json_object_new_object(),
                        *d = json_object_new_object();
            const char *vfmt = lsm_format_name(src.v[i].format);
            json_object_object_add(s, "path", lsm_json_string(job.v[i].src_path));
            json_object_object_add(s, "format", json_object_new_string(vfmt));
            json_object_object_add(d, "path", lsm_json_string(job.v[i].dst_path));
            json_object_object_add(d, "format", json_object_new_string(vfmt));
            json_object_object_add(d, "type", json_object_new_string(
                                       job.v[i].dst_type == LSM_DOMAIN_BLOCK ? "block" : "file"));
            if (job.v[i].dst_backing)
                json_object_object_add(d, "backing", lsm_json_string(job.v[i].dst_backing));
            json_object_object_add(v, "source", s);
            json_object_object_add(v, "destination", d);
            json_object_array_add(a, v);
        }
        json_object_object_add(o, "volumes", a);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                          JSON_C_TO_STRING_SPACED |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else {
        printf("%s\n", job.v[0].dst_path);
    }
out:
    lsm_chain_desc_free(&src);
    lsm_jobfile_free(&job);
    return rc;
}
