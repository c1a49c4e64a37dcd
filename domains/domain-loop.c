/* Loop block domains: block volumes made of loop devices, for hosts without
 * device-mapper (docs/chains.md, "Loop domains").
 *
 * The domain is a directory DIR holding the directory DIR/.lsm-loop (the
 * marker: made by the operator, `mkdir DIR/.lsm-loop`; nothing here makes
 * a directory a domain).  A volume NAME is
 *   DIR/.lsm-loop/NAME  a sparse backing file, sized in whole extents
 *   DIR/NAME            a symlink to /dev/loopN, the loop device over it
 * so DIR/NAME is a stable block-device path for qcow2 backing names and
 * libvirt <disk type='block'> sources.
 *
 * Loop numbers are reused: before a volume is used, the device its link
 * names is checked to be backed by this volume's file (LOOP_GET_STATUS64:
 * device and inode).  A loop that is gone is attached again (to the loop
 * already backing the file if there is one, else a free one) and the link
 * replaced; a link naming a loop device that backs another file is refused
 * with one message and left alone.
 *
 * Sizes are whole LSM_LOOP_EXTENT extents; growing is ftruncate of the
 * backing file then LOOP_SET_CAPACITY (as the loop extension backend does);
 * volume_size is the loop device's size (BLKGETSIZE64). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cleanup.h"
#include "domain.h"
#include "error.h"

/* like LVM's default physical extent */
#define LSM_LOOP_EXTENT (4ULL << 20)
#define LOOP_ATTACH_TRIES 16
#ifndef LOOP_MAJOR
#define LOOP_MAJOR 7
#endif

static bool valid_name(const char *name)
{
    return name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) < 200;
}

static int loop_open(struct lsm_domain *d, const char *where)
{
    struct stat st;
    if (stat(where, &st) < 0)
        return lsm_error_errno(-errno, "loop domain directory '%s'", where);
    if (!S_ISDIR(st.st_mode))
        return lsm_error(-ENOTDIR, "loop domain '%s' is not a directory", where);
    _cleanup_free_ char *marker = NULL;
    if (asprintf(&marker, "%s/" LSM_LOOP_MARKER, where) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    if (stat(marker, &st) < 0 || !S_ISDIR(st.st_mode))
        return lsm_error(-EINVAL, "'%s' is not a loop domain: it has no directory " LSM_LOOP_MARKER
                         " (mkdir '%s' makes it one)", where, marker);
    if (access(marker, W_OK) < 0 || access(where, W_OK) < 0)
        return lsm_error_errno(-errno, "loop domain '%s' is not writable", where);
    d->extent_size = LSM_LOOP_EXTENT;
    return 0;
}

static char *loop_volume_path(struct lsm_domain *d, const char *name)
{
    char *p;
    return asprintf(&p, "%s/%s", d->where, name) < 0 ? NULL : p;
}

static char *backing_path(struct lsm_domain *d, const char *name)
{
    char *p;
    return asprintf(&p, "%s/" LSM_LOOP_MARKER "/%s", d->where, name) < 0 ? NULL : p;
}

/* What the loop device `dev` is attached to: 1 and the backing identity,
 * 0 when it is not attached, -errno with a message. */
static int loop_backing(const char *dev, dev_t *bdev, ino_t *bino)
{
    _cleanup_close_ int fd = open(dev, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENXIO ? 0 : lsm_error_errno(-errno, "cannot open '%s'", dev);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat '%s'", dev);
    if (!S_ISBLK(st.st_mode) || major(st.st_rdev) != LOOP_MAJOR)
        return lsm_error(-EINVAL, "'%s' is not a loop device", dev);
    struct loop_info64 li;
    if (ioctl(fd, LOOP_GET_STATUS64, &li) < 0)
        return errno == ENXIO ? 0 : lsm_error_errno(-errno, "LOOP_GET_STATUS64 on '%s'", dev);
    *bdev = (dev_t)li.lo_device;
    *bino = (ino_t)li.lo_inode;
    return 1;
}

/* A loop device already backed by the file (dev, ino): its path in *out. */
static int find_attached(dev_t dev, ino_t ino, char **out)
{
    *out = NULL;
    DIR *dir = opendir("/sys/block");
    if (!dir)
        return 0;
    struct dirent *e;
    int r = 0;
    while (!r && (e = readdir(dir))) {
        if (strncmp(e->d_name, "loop", 4))
            continue;
        char dev_path[300];
        snprintf(dev_path, sizeof dev_path, "/dev/%s", e->d_name);
        dev_t bd;
        ino_t bi;
        /* a node we cannot read is not ours to judge: skip it */
        int a = loop_backing(dev_path, &bd, &bi);
        if (a < 0)
            lsm_error_clear();
        if (a == 1 && bd == dev && bi == ino) {
            *out = strdup(dev_path);
            r = *out ? 1 : lsm_error(-ENOMEM, "out of memory");
        }
    }
    closedir(dir);
    return r;
}

/* Attach the backing file to a free loop device; its path in *out. */
static int attach_free(const char *file, char **out)
{
    _cleanup_close_ int bfd = open(file, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (bfd < 0)
        return lsm_error_errno(-errno, "cannot open '%s'", file);
    _cleanup_close_ int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0)
        return lsm_error_errno(-errno, "cannot open /dev/loop-control");
    for (int t = 0; t < LOOP_ATTACH_TRIES; t++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0)
            return lsm_error_errno(-errno, "no free loop device");
        char dev[64];
        snprintf(dev, sizeof dev, "/dev/loop%d", n);
        _cleanup_close_ int lfd = -1;
        for (int w = 0; w < 100 && lfd < 0; w++) {   /* the node may appear late */
            lfd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
            if (lfd < 0 && errno != ENOENT)
                return lsm_error_errno(-errno, "cannot open '%s'", dev);
            if (lfd < 0)
                usleep(10000);
        }
        if (lfd < 0)
            return lsm_error(-ENOENT, "loop device '%s' did not appear", dev);
        struct loop_config lc = { .fd = (unsigned)bfd };
        snprintf((char *)lc.info.lo_file_name, sizeof lc.info.lo_file_name, "%s", file);
        if (ioctl(lfd, LOOP_CONFIGURE, &lc) == 0) {
            *out = strdup(dev);
            return *out ? 0 : lsm_error(-ENOMEM, "out of memory");
        }
        if (errno != EBUSY)     /* EBUSY: someone took it meanwhile */
            return lsm_error_errno(-errno, "cannot attach '%s' to '%s'", file, dev);
    }
    return lsm_error(-EBUSY, "cannot attach '%s': every free loop device was taken meanwhile", file);
}

/* Point DIR/NAME at dev, replacing what is there in one rename. */
static int set_link(const char *link, const char *dev)
{
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s.lsm-link.%ld", link, (long)getpid()) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    unlink(tmp);
    if (symlink(dev, tmp) < 0)
        return lsm_error_errno(-errno, "cannot create '%s'", tmp);
    if (rename(tmp, link) < 0) {
        int e = -errno;
        unlink(tmp);
        return lsm_error_errno(e, "cannot replace '%s'", link);
    }
    return 0;
}

/* The volume's state after checking its link and loop (never writes to a
 * loop device that is not this volume's):
 *   0  no such volume (no backing file; *devp NULL)
 *   1  a good volume, its loop device in *devp (attaching it again and
 *      fixing the link when the loop was gone, if repair)
 *   -errno with a message: refused. */
static int loop_check(struct lsm_domain *d, const char *name, bool repair, char **devp)
{
    *devp = NULL;
    if (!valid_name(name))
        return lsm_error(-EINVAL, "invalid volume name '%s' (no '/', not beginning with '.')", name);
    _cleanup_free_ char *file = backing_path(d, name), *link = loop_volume_path(d, name);
    if (!file || !link)
        return lsm_error(-ENOMEM, "out of memory");
    struct stat fst, lst;
    bool have_link = lstat(link, &lst) == 0;
    if (!have_link && errno != ENOENT)
        return lsm_error_errno(-errno, "cannot stat '%s'", link);
    if (stat(file, &fst) < 0) {
        if (errno != ENOENT)
            return lsm_error_errno(-errno, "cannot stat '%s'", file);
        if (have_link)
            return lsm_error(-EEXIST, "'%s' exists but is not a volume of loop domain '%s' "
                             "(it has no backing file '%s')", link, d->where, file);
        return 0;
    }
    if (!S_ISREG(fst.st_mode))
        return lsm_error(-EINVAL, "'%s' is not a regular file", file);
    _cleanup_free_ char *dev = NULL;
    if (have_link) {
        if (!S_ISLNK(lst.st_mode))
            return lsm_error(-EEXIST, "'%s' is not a link to a loop device (it was not made by the loop domain)",
                             link);
        char target[PATH_MAX];
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n < 0)
            return lsm_error_errno(-errno, "cannot read link '%s'", link);
        target[n] = 0;
        if (strncmp(target, "/dev/loop", 9))
            return lsm_error(-EINVAL, "'%s' points at '%s', not at a loop device", link, target);
        dev_t bd;
        ino_t bi;
        int a = loop_backing(target, &bd, &bi);
        if (a < 0)
            return a;
        if (a == 1 && (bd != fst.st_dev || bi != fst.st_ino))
            return lsm_error(-EBUSY, "'%s' points at %s, which now backs another file than '%s' "
                             "(the loop number was reused): refusing to use it; detach %s or "
                             "remove the link to let the domain attach the volume again",
                             link, target, file, target);
        if (a == 1) {
            *devp = strdup(target);
            return *devp ? 1 : lsm_error(-ENOMEM, "out of memory");
        }
    }
    if (!repair)
        return lsm_error(-ENXIO, "volume '%s' is not attached to a loop device", link);
    int r = find_attached(fst.st_dev, fst.st_ino, &dev);
    if (r == 0)
        r = attach_free(file, &dev);
    if (r < 0)
        return r;
    if ((r = set_link(link, dev)) < 0)
        return r;
    *devp = dev;
    dev = NULL;
    return 1;
}

static int loop_volume_exists(struct lsm_domain *d, const char *name)
{
    _cleanup_free_ char *dev = NULL;
    return loop_check(d, name, true, &dev);
}

static uint64_t round_extent(uint64_t size)
{
    if (!size)
        size = 1;
    return (size + LSM_LOOP_EXTENT - 1) / LSM_LOOP_EXTENT * LSM_LOOP_EXTENT;
}

static int dev_size(const char *dev, uint64_t *size)
{
    _cleanup_close_ int fd = open(dev, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open '%s'", dev);
    if (ioctl(fd, BLKGETSIZE64, size) < 0)
        return lsm_error_errno(-errno, "BLKGETSIZE64 on '%s'", dev);
    return 0;
}

static int loop_create_volume(struct lsm_domain *d, const char *name, uint64_t size)
{
    _cleanup_free_ char *dev = NULL;
    int r = loop_check(d, name, false, &dev);
    if (r < 0 && r != -ENXIO)
        return r;
    _cleanup_free_ char *file = backing_path(d, name), *link = loop_volume_path(d, name);
    if (!file || !link)
        return lsm_error(-ENOMEM, "out of memory");
    if (r != 0)
        return lsm_error(-EEXIST, "volume '%s' already exists", link);
    uint64_t want = round_extent(size);
    struct statvfs vfs;
    if (statvfs(file, &vfs) == 0 || statvfs(d->where, &vfs) == 0) {
        /* sparse, but the volume may fill: refuse what cannot fit at all */
        if ((uint64_t)vfs.f_bavail * vfs.f_frsize < LSM_LOOP_EXTENT)
            return lsm_error(-ENOSPC, "loop domain '%s' is full", d->where);
    }
    /* O_EXCL: the file is ours, so remove_volume may delete it */
    int fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == EEXIST ? lsm_error(-EEXIST, "volume '%s' already exists", link)
                               : lsm_error_errno(-errno, "cannot create '%s'", file);
    r = ftruncate(fd, (off_t)want) < 0 ? lsm_error_errno(-errno, "cannot size '%s'", file) : 0;
    close(fd);
    if (r == 0 && (r = attach_free(file, &dev)) == 0) {
        /* O_EXCL for the link too: never replace what we did not make */
        if (symlink(dev, link) < 0) {
            r = errno == EEXIST ? lsm_error(-EEXIST, "'%s' appeared meanwhile", link)
                                : lsm_error_errno(-errno, "cannot create '%s'", link);
        }
        if (r < 0) {
            int lfd = open(dev, O_RDONLY | O_CLOEXEC);
            if (lfd >= 0) {
                ioctl(lfd, LOOP_CLR_FD, 0);
                close(lfd);
            }
        }
    }
    if (r < 0)
        unlink(file);
    return r;
}

static int loop_extend_volume(struct lsm_domain *d, const char *name, uint64_t size)
{
    _cleanup_free_ char *dev = NULL, *file = backing_path(d, name);
    if (!file)
        return lsm_error(-ENOMEM, "out of memory");
    int r = loop_check(d, name, true, &dev);
    if (r < 0)
        return r;
    if (r == 0)
        return lsm_error(-ENOENT, "volume '%s' does not exist in loop domain '%s'", name, d->where);
    uint64_t cur;
    if ((r = dev_size(dev, &cur)) < 0)
        return r;
    uint64_t want = round_extent(size);
    if (want <= cur)
        return 0;
    if (truncate(file, (off_t)want) < 0)
        return lsm_error_errno(-errno, "cannot grow '%s'", file);
    _cleanup_close_ int lfd = open(dev, O_RDONLY | O_NOCTTY | O_CLOEXEC);
    if (lfd < 0)
        return lsm_error_errno(-errno, "cannot open '%s'", dev);
    if (ioctl(lfd, LOOP_SET_CAPACITY, 0) < 0)
        return lsm_error_errno(-errno, "LOOP_SET_CAPACITY on '%s'", dev);
    return 0;
}

static int loop_remove_volume(struct lsm_domain *d, const char *name)
{
    _cleanup_free_ char *dev = NULL, *file = backing_path(d, name), *link = loop_volume_path(d, name);
    if (!file || !link)
        return lsm_error(-ENOMEM, "out of memory");
    int r = loop_check(d, name, false, &dev);
    if (r == 0)
        return 0;
    if (r < 0 && r != -ENXIO)
        return r;   /* refused: nothing touched */
    if (dev) {
        _cleanup_close_ int lfd = open(dev, O_RDONLY | O_NOCTTY | O_CLOEXEC);
        if (lfd < 0)
            return lsm_error_errno(-errno, "cannot open '%s'", dev);
        if (ioctl(lfd, LOOP_CLR_FD, 0) < 0)
            return lsm_error_errno(-errno, "cannot detach '%s' from '%s'", dev, file);
    }
    lsm_error_clear();
    if (unlink(link) < 0 && errno != ENOENT)
        return lsm_error_errno(-errno, "cannot remove '%s'", link);
    if (unlink(file) < 0 && errno != ENOENT)
        return lsm_error_errno(-errno, "cannot remove '%s'", file);
    return 0;
}

static int loop_volume_size(struct lsm_domain *d, const char *name, uint64_t *size)
{
    _cleanup_free_ char *dev = NULL;
    int r = loop_check(d, name, true, &dev);
    if (r == 0)
        return lsm_error(-ENOENT, "volume '%s' does not exist in loop domain '%s'", name, d->where);
    return r < 0 ? r : dev_size(dev, size);
}

const struct lsm_domain_ops lsm_domain_loop_ops = {
    .name = "loop",
    .open = loop_open,
    .volume_path = loop_volume_path,
    .volume_exists = loop_volume_exists,
    .create_volume = loop_create_volume,
    .extend_volume = loop_extend_volume,
    .remove_volume = loop_remove_volume,
    .volume_size = loop_volume_size,
};

int lsm_loop_domain_of(const char *path, char **where, char **name)
{
    *where = *name = NULL;
    const char *s = strrchr(path, '/');
    _cleanup_free_ char *dir = s ? strndup(path, (size_t)(s - path)) : strdup(".");
    if (!dir)
        return lsm_error(-ENOMEM, "out of memory");
    if (!dir[0]) {
        free(dir);
        dir = strdup("/");
        if (!dir)
            return lsm_error(-ENOMEM, "out of memory");
    }
    _cleanup_free_ char *marker = NULL;
    if (asprintf(&marker, "%s/" LSM_LOOP_MARKER, dir) < 0)
        return lsm_error(-ENOMEM, "out of memory");
    struct stat st;
    if (stat(marker, &st) < 0 || !S_ISDIR(st.st_mode))
        return 0;
    *where = realpath(dir, NULL);
    *name = strdup(s ? s + 1 : path);
    if (!*where || !*name) {
        free(*where);
        free(*name);
        *where = *name = NULL;
        return lsm_error(-ENOMEM, "out of memory");
    }
    return 1;
}

int lsm_loop_domain_check_path(const char *path)
{
    _cleanup_free_ char *where = NULL, *name = NULL;
    int r = lsm_loop_domain_of(path, &where, &name);
    if (r <= 0)
        return r;
    struct lsm_domain *d;
    if ((r = lsm_domain_open(LSM_DOMAIN_BLOCK, where, &d)) < 0)
        return r;
    _cleanup_free_ char *bdir = NULL;
    if (asprintf(&bdir, "%s/" LSM_LOOP_MARKER, where) < 0) {
        lsm_domain_close(d);
        return lsm_error(-ENOMEM, "out of memory");
    }
    DIR *dir = opendir(bdir);
    if (!dir) {
        r = lsm_error_errno(-errno, "cannot read '%s'", bdir);
        lsm_domain_close(d);
        return r;
    }
    struct dirent *e;
    r = 0;
    while (r >= 0 && (e = readdir(dir))) {
        if (!valid_name(e->d_name))
            continue;
        _cleanup_free_ char *dev = NULL;
        r = loop_check(d, e->d_name, true, &dev);
    }
    closedir(dir);
    lsm_domain_close(d);
    return r < 0 ? r : 0;
}
