/* lsm-sync map: allocation of an image chain, meaning exactly what
 * `qemu-img map` means (JSON output identical to QEMU 7.2's). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "image.h"
#include "json-out.h"
#include "util.h"

static void map_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync map [--output=human|json] [--start-offset=N] [--max-length=N]\n"
        "                    [-f FMT] [-U] IMAGE\n\n"
        "Show which guest ranges of IMAGE's backing chain are allocated, in which layer\n"
        "(depth, 0 = IMAGE) and where.  The JSON output is that of\n"
        "`qemu-img map --output=json`: start, length, depth, present, zero, data, offset.\n\n"
        "  -f, --format=FMT       format of IMAGE (raw, qcow2; default: probe)\n"
        "      --output=FMT       human (default) or json\n"
        "  --start-offset=N       first guest byte to map (default 0)\n"
        "  --max-length=N         map at most N bytes (as in qemu-img map, these have no\n"
        "                         short letters: -s is compare's strict, -l copy's snapshot)\n"
        "  -U, --force-share      read IMAGE even if another process (a running VM) writes it\n"
        "  -h, --help             show this help\n");
}

static const char *layer_file(const struct lsm_extent *e)
{
    return e->layer->data_filename ? e->layer->data_filename : e->layer->filename;
}

/* One entry of --output=json, built with json-c and printed in qemu-img
 * map's layout (map-matrix compares the bytes). */
static void print_entry(uint64_t start, uint64_t length, unsigned depth, bool present,
                        bool zero, bool data, bool has_offset, uint64_t offset)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "start", json_object_new_int64((int64_t)start));
    json_object_object_add(o, "length", json_object_new_int64((int64_t)length));
    json_object_object_add(o, "depth", json_object_new_int64(depth));
    json_object_object_add(o, "present", json_object_new_boolean(present));
    json_object_object_add(o, "zero", json_object_new_boolean(zero));
    json_object_object_add(o, "data", json_object_new_boolean(data));
    if (has_offset)
        json_object_object_add(o, "offset", json_object_new_int64((int64_t)offset));
    cli_json_print_qemu_object(stdout, o);
    json_object_put(o);
}

int cmd_map(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_START, OPT_MAXLEN };
    static const struct option opts[] = {
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "start-offset", required_argument, NULL, OPT_START },
        { "max-length", required_argument, NULL, OPT_MAXLEN },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    enum lsm_format fmt = LSM_FMT_AUTO;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    uint64_t start = 0, max_len = UINT64_MAX;
    unsigned oflags = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:Uh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (lsm_format_parse(optarg, &fmt) < 0)
                return cli_usage_error("map", "unknown format '%s' (raw or qcow2)", optarg);
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output("map", optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_START:
            if (!cli_parse_size("map", "--start-offset", optarg, &start))
                return EXIT_USAGE;
            break;
        case OPT_MAXLEN:
            if (!cli_parse_size("map", "--max-length", optarg, &max_len))
                return EXIT_USAGE;
            break;
        case 'U':
            oflags |= LSM_OPEN_FORCE_SHARE;
            break;
        case 'h':
            map_usage(stdout);
            return 0;
        default:
            return cli_usage_error("map", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("map", optind >= argc ? "missing IMAGE" : "too many arguments");
    const char *path = argv[optind];

    struct lsm_image *img;
    if (!cli_open_image("map", path, fmt, oflags, &img))
        return EXIT_OPERATIONAL;

    uint64_t end = img->virtual_size;
    if (start < end && max_len < end - start)
        end = start + max_len;

    struct lsm_map_iter it;
    lsm_map_iter_init(&it, img, start, end, 0);
    struct lsm_extent e;
    int n = 0, rc = 0, r;
    if (output == CLI_OUTPUT_JSON)
        putchar('[');
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    while ((r = lsm_map_iter_next(&it, &e)) > 0) {
        bool present = e.flags & LSM_EXT_PRESENT, zero = e.flags & LSM_EXT_ZERO;
        bool data = e.flags & LSM_EXT_DATA, has_off = e.flags & LSM_EXT_OFFSET;
        if (output == CLI_OUTPUT_JSON) {
            if (n)
                fputs(",\n", stdout);
            print_entry(e.start, e.length, e.depth, present, zero, data, has_off, e.offset);
        } else {
            if (data && !has_off) {
                cli_error(path, "the chain has compressed clusters, which have no host offset; use --output=json");
                rc = EXIT_OPERATIONAL;
                break;
            }
            if (data && !zero)
                printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                       e.start, e.length, e.offset, layer_file(&e));
        }
        n++;
    }
    /* Like qemu-img: an empty range still prints one zero-length entry. */
    if (output == CLI_OUTPUT_JSON && n == 0 && r == 0)
        print_entry(start, 0, 0, false, false, false, false, 0);
    /* On an error the array is left open: a partial map must not parse as
     * a complete one for a caller that ignores the exit status. */
    if (output == CLI_OUTPUT_JSON && r >= 0)
        printf("]\n");
    else if (output == CLI_OUTPUT_JSON)
        putchar('\n');
    if (r < 0) {
        fflush(stdout);
        rc = cli_fail("map");
    }
    lsm_image_close(img);
    return rc;
}
