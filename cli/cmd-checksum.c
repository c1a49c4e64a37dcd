/* lsm-sync checksum: the block hash of an image's or a chain's guest view
 * (engine/checksum.h; the construction is in docs/checksum.md). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "checksum.h"
#include "cli.h"
#include "image.h"

static void checksum_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync checksum [-f FMT] [--algorithm=sha256|blake2b] [--block-size=N]\n"
        "                         [--output=human|json] [-U] IMAGE\n\n"
        "Print the block-based checksum of what a guest sees in IMAGE and its backing\n"
        "chain: H(H(block 1) || ... || H(block N)) over blocks of N bytes, so that a raw\n"
        "file, a qcow2 image and a chain with the same content have the same checksum.\n"
        "Zero and unallocated ranges are answered from the map, not read.\n"
        "With blake2b and the default block size the value is that of ovirt-imageio's\n"
        "checksum API.  See docs/checksum.md.\n\n"
        "  -f, --format=FMT       format of IMAGE (raw, qcow2; default: probe)\n"
        "  -a, --algorithm=ALG    sha256 (default) or blake2b (32-byte digest)\n"
        "  -b, --block-size=N     a power of two from 64K to 64M (default 4M)\n"
        "      --output=FMT       human (default): \"CHECKSUM  IMAGE\"; json:\n"
        "                         {\"algorithm\", \"block_size\", \"checksum\"}\n"
        "  -U, --force-share      read an image another process holds for writing\n"
        "                         (as qemu-img -U; the result may be inconsistent)\n"
        "  -h, --help             show this help\n");
}

int cmd_checksum(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option opts[] = {
        { "format", required_argument, NULL, 'f' },
        { "algorithm", required_argument, NULL, 'a' },
        { "block-size", required_argument, NULL, 'b' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    enum lsm_format fmt = LSM_FMT_AUTO;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    struct lsm_checksum_opts o = { .alg = LSM_BLKHASH_SHA256 };
    uint64_t bs = LSM_BLKHASH_DEFAULT_BLOCK;
    unsigned oflags = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:a:b:Uh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (lsm_format_parse(optarg, &fmt) < 0)
                return cli_usage_error("checksum", "unknown format '%s' (raw or qcow2)", optarg);
            break;
        case 'a':
            if (lsm_blkhash_alg_parse(optarg, &o.alg) < 0)
                return cli_usage_error("checksum", "%s", lsm_last_error());
            break;
        case 'b':
            if (!cli_parse_size("checksum", "--block-size", optarg, &bs))
                return EXIT_USAGE;
            if (lsm_blkhash_check_block_size(bs) < 0)
                return cli_usage_error("checksum", "--block-size: %s", lsm_last_error());
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output("checksum", optarg, &output))
                return EXIT_USAGE;
            break;
        case 'U':
            oflags |= LSM_OPEN_FORCE_SHARE;
            break;
        case 'h':
            checksum_usage(stdout);
            return 0;
        default:
            return cli_usage_error("checksum", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("checksum", optind >= argc ? "missing IMAGE" : "too many arguments");
    const char *path = argv[optind];
    o.block_size = (uint32_t)bs;

    /* Read-only, with the whole backing chain: as copy opens its source. */
    struct lsm_image *img;
    if (!cli_open_image("checksum", path, fmt, oflags, &img))
        return EXIT_OPERATIONAL;
    struct lsm_checksum_result res;
    int r = lsm_checksum_image(img, &o, &res);
    lsm_image_close(img);
    if (r < 0)
        return cli_fail("checksum");

    if (output == CLI_OUTPUT_JSON) {
        json_object *j = json_object_new_object();
        if (!j) {
            cli_error("checksum", "out of memory");
            return EXIT_OPERATIONAL;
        }
        /* ovirt-imageio's field names and order. */
        json_object_object_add(j, "algorithm", json_object_new_string(lsm_blkhash_alg_name(res.alg)));
        json_object_object_add(j, "block_size", json_object_new_int64(res.block_size));
        json_object_object_add(j, "checksum", json_object_new_string(res.hex));
        printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
        json_object_put(j);
    } else {
        printf("%s  %s\n", res.hex, path);
    }
    return 0;
}
