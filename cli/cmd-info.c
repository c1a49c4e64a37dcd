/* lsm-sync info: what an image is, with the field names of
 * `qemu-img info --output=json`. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>

#include "cli.h"
#include "image.h"
#include "json-util.h"
#include "util.h"

static void info_usage(FILE *f)
{
    fprintf(f,
        "Usage: lsm-sync info [--output=human|json] [--backing-chain] [-f FMT] [-U] IMAGE\n\n"
        "Show the format, sizes, backing file and format-specific details of IMAGE\n"
        "(field names as in `qemu-img info --output=json`).\n\n"
        "  -f, --format=FMT    format of IMAGE (raw, qcow2; default: probe)\n"
        "      --output=FMT    human (default) or json\n"
        "      --backing-chain show every image of the backing chain, top first\n"
        "  -U, --force-share   read IMAGE even if another process (a running VM) writes it\n"
        "  -h, --help          show this help\n");
}

/* Names are bytes.  For --output=json each one becomes a valid JSON string
 * (invalid UTF-8 as U+FFFD, as qemu-img prints it); the human output prints
 * the bytes as they are, as qemu-img info does.  The object built for the
 * human output is never serialised. */
static json_object *name_string(const char *name, bool for_json)
{
    return for_json ? lsm_json_string(name) : json_object_new_string(name);
}

static json_object *image_json(struct lsm_image *img, bool for_json)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "filename", name_string(img->filename, for_json));
    json_object_object_add(o, "format", json_object_new_string(lsm_format_name(img->format)));
    json_object_object_add(o, "virtual-size", json_object_new_int64((int64_t)img->virtual_size));
    int64_t actual = lsm_image_actual_size(img);
    if (actual >= 0)
        json_object_object_add(o, "actual-size", json_object_new_int64(actual));
    if (img->cluster_size)
        json_object_object_add(o, "cluster-size", json_object_new_int64(img->cluster_size));
    bool dirty = false;
    if (img->backing_name) {
        json_object_object_add(o, "backing-filename", name_string(img->backing_name, for_json));
        int err;
        char *full = lsm_resolve_backing(img->filename, img->backing_name, &err);
        json_object_object_add(o, "full-backing-filename",
                               name_string(full ? full : img->backing_name, for_json));
        free(full);
        if (img->backing_fmt != LSM_FMT_AUTO)
            json_object_object_add(o, "backing-filename-format",
                                   json_object_new_string(lsm_format_name(img->backing_fmt)));
    }
    struct lsm_qcow2_info qi;
    if (lsm_qcow2_get_info(img, &qi) == 0) {
        dirty = qi.dirty;
        json_object *fs = json_object_new_object();
        json_object *d = json_object_new_object();
        json_object_object_add(fs, "type", json_object_new_string("qcow2"));
        json_object_object_add(d, "compat", json_object_new_string(qi.version >= 3 ? "1.1" : "0.10"));
        json_object_object_add(d, "compression-type", json_object_new_string(qi.compression));
        if (qi.version >= 3)
            json_object_object_add(d, "lazy-refcounts", json_object_new_boolean(qi.lazy_refcounts));
        /* Persistent bitmaps, where and as qemu-img info lists them. */
        struct lsm_bitmap_info *bm;
        int nbm = lsm_qcow2_get_bitmaps(img, &bm);
        if (nbm < 0) {
            json_object_put(d);
            json_object_put(fs);
            json_object_put(o);
            return NULL;
        }
        if (nbm > 0) {
            json_object *a = json_object_new_array();
            for (int i = 0; i < nbm; i++) {
                json_object *b = json_object_new_object(), *fl = json_object_new_array();
                if (bm[i].in_use)
                    json_object_array_add(fl, json_object_new_string("in-use"));
                if (bm[i].autoload)
                    json_object_array_add(fl, json_object_new_string("auto"));
                json_object_object_add(b, "flags", fl);
                json_object_object_add(b, "name", name_string(bm[i].name, for_json));
                json_object_object_add(b, "granularity", json_object_new_int64((int64_t)bm[i].granularity));
                json_object_array_add(a, b);
            }
            json_object_object_add(d, "bitmaps", a);
            lsm_bitmaps_free(bm, nbm);
        }
        json_object_object_add(d, "refcount-bits", json_object_new_int(qi.refcount_bits));
        if (qi.version >= 3) {
            json_object_object_add(d, "corrupt", json_object_new_boolean(qi.corrupt));
            json_object_object_add(d, "extended-l2", json_object_new_boolean(qi.extended_l2));
        }
        if (qi.data_file) {
            json_object_object_add(d, "data-file", name_string(qi.data_file, for_json));
            json_object_object_add(d, "data-file-raw", json_object_new_boolean(qi.data_file_raw));
        }
        json_object_object_add(fs, "data", d);
        json_object_object_add(o, "format-specific", fs);

        struct lsm_snapshot_info *sn;
        int n = lsm_qcow2_get_snapshots(img, &sn);
        if (n > 0) {
            json_object *a = json_object_new_array();
            for (int i = 0; i < n; i++) {
                json_object *so = json_object_new_object();
                json_object_object_add(so, "id", name_string(sn[i].id, for_json));
                json_object_object_add(so, "name", name_string(sn[i].name, for_json));
                json_object_object_add(so, "vm-state-size", json_object_new_int64((int64_t)sn[i].vm_state_size));
                json_object_object_add(so, "date-sec", json_object_new_int64(sn[i].date_sec));
                json_object_object_add(so, "date-nsec", json_object_new_int64(sn[i].date_nsec));
                json_object_object_add(so, "vm-clock-sec", json_object_new_int64((int64_t)(sn[i].vm_clock_nsec / 1000000000ULL)));
                json_object_object_add(so, "vm-clock-nsec", json_object_new_int64((int64_t)(sn[i].vm_clock_nsec % 1000000000ULL)));
                if (sn[i].icount != UINT64_MAX)
                    json_object_object_add(so, "icount", json_object_new_int64((int64_t)sn[i].icount));
                json_object_array_add(a, so);
            }
            json_object_object_add(o, "snapshots", a);
            lsm_snapshots_free(sn, n);
        }
    }
    /* qemu-img has no dirty flag for an NBD export (its driver has no
     * get_info) */
    if (!lsm_image_is_nbd_uri(img->filename))
        json_object_object_add(o, "dirty-flag", json_object_new_boolean(dirty));
    return o;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

/* One format-specific field as qemu-img prints it: "name: value", lists
 * and objects one level deeper each, list elements named [0], [1]... */
static void print_field(const char *key, json_object *val, int indent)
{
    char name[64];
    snprintf(name, sizeof name, "%s", key);
    if (key[0] != '[')
        for (char *p = name; *p; p++)
            if (*p == '-')
                *p = ' ';
    if (json_object_is_type(val, json_type_array)) {
        printf("%*s%s:\n", indent, "", name);
        for (size_t i = 0; i < json_object_array_length(val); i++) {
            char idx[24];
            snprintf(idx, sizeof idx, "[%zu]", i);
            print_field(idx, json_object_array_get_idx(val, i), indent + 4);
        }
    } else if (json_object_is_type(val, json_type_object)) {
        printf("%*s%s:\n", indent, "", name);
        json_object_object_foreach(val, k, v)
            print_field(k, v, indent + 4);
    } else {
        printf("%*s%s: %s\n", indent, "", name, json_object_get_string(val));
    }
}

static void print_human(json_object *o)
{
    char b1[32], b2[32];
    json_object *v;
    printf("image: %s\n", jstr(o, "filename"));
    printf("file format: %s\n", jstr(o, "format"));
    json_object_object_get_ex(o, "virtual-size", &v);
    uint64_t vs = (uint64_t)json_object_get_int64(v);
    printf("virtual size: %s (%" PRIu64 " bytes)\n", lsm_format_size(vs, b1, sizeof b1), vs);
    if (json_object_object_get_ex(o, "actual-size", &v))
        printf("disk size: %s\n", lsm_format_size((uint64_t)json_object_get_int64(v), b2, sizeof b2));
    else if (lsm_image_is_nbd_uri(jstr(o, "filename")))
        printf("disk size: unavailable\n");
    if (json_object_object_get_ex(o, "cluster-size", &v))
        printf("cluster_size: %s\n", json_object_get_string(v));
    const char *bf = jstr(o, "backing-filename"), *fb = jstr(o, "full-backing-filename");
    if (bf) {
        if (fb && strcmp(bf, fb))
            printf("backing file: %s (actual path: %s)\n", bf, fb);
        else
            printf("backing file: %s\n", bf);
    }
    if (jstr(o, "backing-filename-format"))
        printf("backing file format: %s\n", jstr(o, "backing-filename-format"));
    json_object *sn;
    if (json_object_object_get_ex(o, "snapshots", &sn)) {
        printf("Snapshot list:\n%-8s%-18s%s\n", "ID", "TAG", "VM SIZE");
        for (size_t i = 0; i < json_object_array_length(sn); i++) {
            json_object *s = json_object_array_get_idx(sn, i);
            printf("%-8s%-18s%s\n", jstr(s, "id"), jstr(s, "name"), jstr(s, "vm-state-size"));
        }
    }
    json_object *fs, *d;
    if (json_object_object_get_ex(o, "format-specific", &fs) &&
        json_object_object_get_ex(fs, "data", &d)) {
        printf("Format specific information:\n");
        json_object_object_foreach(d, key, val)
            print_field(key, val, 4);
    }
}

int cmd_info(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN };
    static const struct option opts[] = {
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    enum lsm_format fmt = LSM_FMT_AUTO;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    bool chain = false;
    unsigned oflags = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:Uh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (lsm_format_parse(optarg, &fmt) < 0)
                return cli_usage_error("info", "unknown format '%s' (raw or qcow2)", optarg);
            break;
        case OPT_OUTPUT:
            if (!cli_parse_output("info", optarg, &output))
                return EXIT_USAGE;
            break;
        case OPT_BACKING_CHAIN:
            chain = true;
            break;
        case 'U':
            oflags |= LSM_OPEN_FORCE_SHARE;
            break;
        case 'h':
            info_usage(stdout);
            return 0;
        default:
            return cli_usage_error("info", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("info", optind >= argc ? "missing IMAGE" : "too many arguments");
    const char *path = argv[optind];

    struct lsm_image *img;
    if (!cli_open_image("info", path, fmt, oflags | (chain ? 0 : LSM_OPEN_NO_BACKING), &img))
        return EXIT_OPERATIONAL;

    json_object *out;
    if (chain) {
        out = json_object_new_array();
        for (struct lsm_image *l = img; l; l = l->backing) {
            json_object *one = image_json(l, output == CLI_OUTPUT_JSON);
            if (!one) {
                json_object_put(out);
                out = NULL;
                break;
            }
            json_object_array_add(out, one);
        }
    } else {
        out = image_json(img, output == CLI_OUTPUT_JSON);
    }
    if (!out) {
        int rc = cli_fail("info");
        lsm_image_close(img);
        return rc;
    }
    if (output == CLI_OUTPUT_JSON) {
        printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_PRETTY |
                                                           JSON_C_TO_STRING_SPACED |
                                                           JSON_C_TO_STRING_NOSLASHESCAPE));
    } else if (chain) {
        for (size_t i = 0; i < json_object_array_length(out); i++) {
            if (i)
                putchar('\n');
            print_human(json_object_array_get_idx(out, i));
        }
    } else {
        print_human(out);
    }
    json_object_put(out);
    lsm_image_close(img);
    return 0;
}
