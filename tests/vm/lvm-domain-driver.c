/* Drive lsm_domain_lvm_ops from the command line, one step per operation,
 * for tests/vm/test-lvm-domain.sh:
 *
 *   lvm-domain-driver VG STEP...
 *
 * STEP is one of
 *   create NAME SIZE | extend NAME SIZE | remove NAME | exists NAME |
 *   size NAME | path NAME | isblk NAME | write NAME OFFSET LEN BYTE |
 *   dio NAME
 * and SIZE takes the suffixes of lsm_parse_size (k, M, G...).  Every step
 * prints one line, "STEP ARGS: RESULT", where RESULT is 0 (or a value) on
 * success and "-ENAME: message" on failure, so the test compares lines.
 * The domain is opened once ("open VG: ..." is the first line).  Exit
 * status: 0 when every step ran (whatever its result), 2 on bad usage. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "domain.h"
#include "error.h"
#include "util.h"

static const char *errname(int err)
{
    switch (-err) {
    case EEXIST: return "EEXIST";
    case ENOSPC: return "ENOSPC";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case EBUSY: return "EBUSY";
    case EIO: return "EIO";
    case EFBIG: return "EFBIG";
    case ENOMEM: return "ENOMEM";
    default: return "E?";
    }
}

static void result(const char *step, int ret)
{
    if (ret < 0)
        printf("%s: -%s: %s\n", step, errname(ret), lsm_last_error());
    else
        printf("%s: %d\n", step, ret);
}

static int usage(void)
{
    fprintf(stderr, "usage: lvm-domain-driver VG STEP...\n");
    return 2;
}

static int parse_size(const char *s, uint64_t *v)
{
    if (lsm_parse_size(s, v) < 0) {
        fprintf(stderr, "lvm-domain-driver: bad size %s\n", s);
        return -1;
    }
    return 0;
}

/* Write LEN bytes of BYTE at OFFSET through the page cache, read them back. */
static int write_check(const char *path, uint64_t off, uint64_t len, int byte)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open %s", path);
    char *buf = malloc(len ? len : 1), *back = malloc(len ? len : 1);
    int ret = 0;
    if (!buf || !back) {
        ret = lsm_error(-ENOMEM, "out of memory");
        goto out;
    }
    memset(buf, byte, len);
    if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) {
        ret = lsm_error_errno(-errno, "cannot write %s", path);
        goto out;
    }
    if (fsync(fd) < 0) {
        ret = lsm_error_errno(-errno, "cannot fsync %s", path);
        goto out;
    }
    if (pread(fd, back, len, (off_t)off) != (ssize_t)len) {
        ret = lsm_error_errno(-errno, "cannot read %s", path);
        goto out;
    }
    if (memcmp(buf, back, len))
        ret = lsm_error(-EIO, "%s: read back differs", path);
out:
    free(buf);
    free(back);
    close(fd);
    return ret;
}

/* One aligned 64 KiB O_DIRECT write at offset 0: reports, does not judge. */
static int dio_check(const char *path)
{
    int fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open %s with O_DIRECT", path);
    void *buf;
    int ret = 0;
    if (posix_memalign(&buf, 4096, 65536)) {
        close(fd);
        return lsm_error(-ENOMEM, "out of memory");
    }
    memset(buf, 0x5a, 65536);
    if (pwrite(fd, buf, 65536, 0) != 65536)
        ret = lsm_error_errno(-errno, "O_DIRECT write to %s", path);
    free(buf);
    close(fd);
    return ret;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    struct lsm_domain d = { .ops = &lsm_domain_lvm_ops, .kind = LSM_DOMAIN_BLOCK };
    char step[512];
    snprintf(step, sizeof step, "open %s", argv[1]);
    int ret = d.ops->open(&d, argv[1]);
    result(step, ret);
    if (ret < 0)
        return 0;
    printf("extent_size: %" PRIu64 "\n", d.extent_size);
    fflush(stdout);

    int status = 0;
    for (int i = 2; i < argc;) {
        const char *op = argv[i];
        const char *name = i + 1 < argc ? argv[i + 1] : NULL;
        if (!name) {
            status = usage();
            break;
        }
        uint64_t a = 0, b = 0;
        if (!strcmp(op, "create") || !strcmp(op, "extend")) {
            if (i + 2 >= argc || parse_size(argv[i + 2], &a) < 0) {
                status = usage();
                break;
            }
            snprintf(step, sizeof step, "%s %s %s", op, name, argv[i + 2]);
            ret = op[0] == 'c' ? d.ops->create_volume(&d, name, a) : d.ops->extend_volume(&d, name, a);
            result(step, ret);
            i += 3;
        } else if (!strcmp(op, "remove") || !strcmp(op, "exists")) {
            snprintf(step, sizeof step, "%s %s", op, name);
            ret = op[0] == 'r' ? d.ops->remove_volume(&d, name) : d.ops->volume_exists(&d, name);
            result(step, ret);
            i += 2;
        } else if (!strcmp(op, "size")) {
            snprintf(step, sizeof step, "size %s", name);
            uint64_t sz = 0;
            ret = d.ops->volume_size(&d, name, &sz);
            if (ret < 0)
                result(step, ret);
            else
                printf("%s: %" PRIu64 "\n", step, sz);
            i += 2;
        } else if (!strcmp(op, "path")) {
            char *p = d.ops->volume_path(&d, name);
            snprintf(step, sizeof step, "path %s", name);
            if (p)
                printf("%s: %s\n", step, p);
            else
                result(step, -errno);
            free(p);
            i += 2;
        } else if (!strcmp(op, "isblk") || !strcmp(op, "dio") || !strcmp(op, "write")) {
            char *p = d.ops->volume_path(&d, name);
            if (!p) {
                result(op, -errno);
                i += 2;
                continue;
            }
            if (op[0] == 'i') {
                struct stat st;
                snprintf(step, sizeof step, "isblk %s", name);
                ret = stat(p, &st) < 0 ? lsm_error_errno(-errno, "stat %s", p) : S_ISBLK(st.st_mode);
                result(step, ret);
                i += 2;
            } else if (op[0] == 'd') {
                snprintf(step, sizeof step, "dio %s", name);
                result(step, dio_check(p));
                i += 2;
            } else {
                if (i + 4 >= argc || parse_size(argv[i + 2], &a) < 0 || parse_size(argv[i + 3], &b) < 0) {
                    free(p);
                    status = usage();
                    break;
                }
                snprintf(step, sizeof step, "write %s %s %s %s", name, argv[i + 2], argv[i + 3], argv[i + 4]);
                result(step, write_check(p, a, b, (int)strtol(argv[i + 4], NULL, 0)));
                i += 5;
            }
            free(p);
        } else {
            fprintf(stderr, "lvm-domain-driver: unknown step %s\n", op);
            status = usage();
            break;
        }
        fflush(stdout);
    }
    d.ops->close(&d);
    return status;
}
