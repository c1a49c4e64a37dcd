/* lsm-sync compare: guest-visible comparison of two images or chains, with
 * qemu-img compare's exit codes (0 identical, 1 different, 2 error).
 * Ranges that read as zero in both chains (unallocated, zero clusters,
 * holes) are not read.  The work is flows/compare.c; this file parses
 * options and prints. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "compare.h"
#include "image.h"
#include "util.h"

static void compare_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync compare [-f FMT] [-F FMT] [-s] [-U] A B\n\n"
        "Compare what a guest sees in image chains A and B.  Exit status: 0 identical,\n"
        "1 different (the first differing 512-byte sector is printed, as by qemu-img),\n"
        "2 error.  Unless -s is given, images of different sizes are identical when\n"
        "the extra part reads as zeroes (as with qemu-img compare).\n\n"
        "  -f FMT     format of A (raw, qcow2; default: probe)\n"
        "  -F FMT     format of B\n"
        "  -s         strict: different sizes or allocation make images different\n"
        "  -q         quiet: say nothing, only the exit status\n"
        "  -U, --force-share  read A and B even if another process (a running VM) writes them\n"
        "  -h, --help show this help\n");
}

int cmd_compare(int argc, char **argv)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    enum lsm_format fa = LSM_FMT_AUTO, fb = LSM_FMT_AUTO;
    unsigned oflags = 0;
    bool strict = false, quiet = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:F:sqUh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
        case 'F':
            if (lsm_format_parse(optarg, c == 'f' ? &fa : &fb) < 0)
                return cli_usage_error("compare", "unknown format '%s' (raw or qcow2)", optarg);
            break;
        case 's': strict = true; break;
        case 'q': quiet = true; break;
        case 'U': oflags |= LSM_OPEN_FORCE_SHARE; break;
        case 'h':
            compare_usage(stdout);
            return 0;
        default:
            return cli_usage_error("compare", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("compare", argc - optind < 2 ? "need two images" : "too many arguments");
    const char *pa = argv[optind], *pb = argv[optind + 1];
    struct lsm_image *a = NULL, *b = NULL;
    /* exit 2 for errors, as qemu-img compare (1 means "different") */
    if (!cli_open_image("compare", pa, fa, oflags, &a))
        return EXIT_USAGE;
    if (!cli_open_image("compare", pb, fb, oflags, &b)) {
        lsm_image_close(a);
        return EXIT_USAGE;
    }
    if (a->virtual_size != b->virtual_size && !strict && !quiet)
        printf("Warning: Image size mismatch!\n");   /* as qemu-img: the rest must be zero */
    struct lsm_compare_result res;
    int rc;
    if (lsm_compare_images(a, b, strict, NULL, &res) < 0) {
        cli_fail("compare");
        rc = EXIT_USAGE;
        goto out;
    }
    rc = res.outcome == LSM_COMPARE_IDENTICAL ? 0 : 1;
    if (!quiet) {
        switch (res.outcome) {
        case LSM_COMPARE_IDENTICAL:
            printf("Images are identical.\n");
            break;
        case LSM_COMPARE_SIZE:
            printf("Strict mode: Image size mismatch!\n");
            break;
        case LSM_COMPARE_BLOCK_STATUS:
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", res.offset);
            break;
        case LSM_COMPARE_CONTENT:
            /* qemu-img compares 512-byte sectors and names the first that differs */
            printf("Content mismatch at offset %" PRIu64 "!\n", align_down(res.offset, 512));
            break;
        }
    }
out:
    lsm_image_close(a);
    lsm_image_close(b);
    return rc;
}
