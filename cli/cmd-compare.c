/* lsm-sync compare: guest-visible comparison of two images or chains, with
 * qemu-img compare's exit codes (0 identical, 1 different, 2 error).
 * Ranges that read as zero in both chains (unallocated, zero clusters,
 * holes) are not read. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "flow-copy.h"
#include "image.h"
#include "util.h"

#define CMP_CHUNK (1024 * 1024)

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

/* Offset of the first non-zero byte, or len.  (Most chunks are equal:
 * the word-wise check and memcmp answer those; the byte scan only runs
 * where a difference is.) */
static size_t first_nonzero(const uint8_t *p, size_t len)
{
    if (lsm_is_zero(p, len))
        return len;
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return i;
    return len;
}

static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
    if (!memcmp(a, b, len))
        return len;
    for (size_t i = 0; i < len; i++)
        if (a[i] != b[i])
            return i;
    return len;
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
    int rc = 0;
    uint64_t mismatch = 0;
    if (strict && a->virtual_size != b->virtual_size) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        rc = 1;
        goto out;
    }
    if (a->virtual_size != b->virtual_size && !quiet)
        printf("Warning: Image size mismatch!\n");   /* as qemu-img: the rest must be zero */
    uint8_t *ba = malloc(CMP_CHUNK), *bb = malloc(CMP_CHUNK);
    if (!ba || !bb) {
        free(ba);
        free(bb);
        cli_error("compare", "out of memory");
        rc = EXIT_USAGE;
        goto out;
    }
    uint64_t common = MIN(a->virtual_size, b->virtual_size);
    uint64_t total = MAX(a->virtual_size, b->virtual_size);
    for (uint64_t off = 0; off < total && rc == 0;) {
        struct lsm_extent ea, eb;
        bool in_a = off < a->virtual_size, in_b = off < b->virtual_size;
        uint64_t limit = off < common ? common : total;
        uint64_t want = MIN(limit - off, 1ULL << 30);
        if (in_a && lsm_chain_block_status(a, off, want, &ea) < 0) {
            rc = -1;
            cli_fail("compare");
            break;
        }
        if (in_b && lsm_chain_block_status(b, off, want, &eb) < 0) {
            rc = -1;
            cli_fail("compare");
            break;
        }
        uint64_t n = want;
        if (in_a)
            n = MIN(n, ea.length);
        if (in_b)
            n = MIN(n, eb.length);
        bool za = !in_a || (ea.flags & LSM_EXT_ZERO), zb = !in_b || (eb.flags & LSM_EXT_ZERO);
        if (strict && in_a && in_b && (ea.flags & LSM_EXT_PRESENT) != (eb.flags & LSM_EXT_PRESENT)) {
            if (!quiet)
                printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", off);
            mismatch = UINT64_MAX;
            rc = 1;
            break;
        }
        if (za && zb) {
            off += n;
            continue;
        }
        for (uint64_t done = 0; done < n && rc == 0;) {
            size_t len = (size_t)MIN((uint64_t)CMP_CHUNK, n - done);
            uint64_t o = off + done;
            if (!za && lsm_image_pread(a, ba, len, o) < 0) {
                rc = -1;
                cli_fail("compare");
                break;
            }
            if (!zb && lsm_image_pread(b, bb, len, o) < 0) {
                rc = -1;
                cli_fail("compare");
                break;
            }
            size_t d = za ? first_nonzero(bb, len) : zb ? first_nonzero(ba, len) : first_diff(ba, bb, len);
            if (d < len) {
                mismatch = o + d;
                rc = 1;
            }
            done += len;
        }
        off += n;
    }
    free(ba);
    free(bb);
    /* qemu-img compares 512-byte sectors and names the first that differs */
    if (rc == 1 && !quiet && mismatch != UINT64_MAX)
        printf("Content mismatch at offset %" PRIu64 "!\n", align_down(mismatch, 512));
    else if (rc == 0 && !quiet)
        printf("Images are identical.\n");
    if (rc < 0)
        rc = EXIT_USAGE;
out:
    lsm_image_close(a);
    lsm_image_close(b);
    return rc;
}
