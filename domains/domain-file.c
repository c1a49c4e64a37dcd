/* File storage domain: a directory (local disk or NFS); a volume is a file. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "domain.h"
#include "error.h"

static int file_open(struct lsm_domain *d, const char *where)
{
    struct stat st;
    if (stat(where, &st) < 0)
        return lsm_error_errno(-errno, "storage domain directory '%s'", where);
    if (!S_ISDIR(st.st_mode))
        return lsm_error(-ENOTDIR, "storage domain '%s' is not a directory", where);
    if (access(where, W_OK) < 0)
        return lsm_error_errno(-errno, "storage domain directory '%s' is not writable", where);
    d->extent_size = 0;
    return 0;
}

static bool valid_name(const char *name)
{
    return name[0] && strcmp(name, ".") && strcmp(name, "..") && !strchr(name, '/');
}

static char *file_volume_path(struct lsm_domain *d, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", d->where, name) < 0)
        return NULL;
    return p;
}

static int file_volume_exists(struct lsm_domain *d, const char *name)
{
    char *p = file_volume_path(d, name);
    if (!p)
        return lsm_error(-ENOMEM, "out of memory");
    /* lstat: a dangling symlink is there too (creating through it with
     * O_EXCL would fail, and following it would write elsewhere) */
    struct stat st;
    int r = lstat(p, &st) == 0 ? 1 : (errno == ENOENT ? 0 : lsm_error_errno(-errno, "cannot stat '%s'", p));
    free(p);
    return r;
}

static int file_create_volume(struct lsm_domain *d, const char *name, uint64_t size)
{
    if (!valid_name(name))
        return lsm_error(-EINVAL, "invalid volume name '%s'", name);
    char *p = file_volume_path(d, name);
    if (!p)
        return lsm_error(-ENOMEM, "out of memory");
    struct statvfs vfs;
    (void)size;  /* files grow as written; sparse */
    /* O_EXCL: the file is ours, so remove_volume may delete it on failure */
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, 0644);
    int r = 0;
    if (fd < 0)
        r = errno == EEXIST ? lsm_error(-EEXIST, "volume '%s' already exists", p)
                            : lsm_error_errno(-errno, "cannot create volume '%s'", p);
    else {
        if (fstatvfs(fd, &vfs) == 0 && vfs.f_bavail == 0)
            r = lsm_error(-ENOSPC, "storage domain '%s' is full", d->where);
        close(fd);
        if (r < 0)
            unlink(p);
    }
    free(p);
    return r;
}

static int file_extend_volume(struct lsm_domain *d, const char *name, uint64_t size)
{
    (void)d; (void)name; (void)size;
    return 0;
}

static int file_remove_volume(struct lsm_domain *d, const char *name)
{
    char *p = file_volume_path(d, name);
    if (!p)
        return lsm_error(-ENOMEM, "out of memory");
    int r = unlink(p) < 0 && errno != ENOENT ? lsm_error_errno(-errno, "cannot remove '%s'", p) : 0;
    free(p);
    return r;
}

static int file_volume_size(struct lsm_domain *d, const char *name, uint64_t *size)
{
    char *p = file_volume_path(d, name);
    if (!p)
        return lsm_error(-ENOMEM, "out of memory");
    struct stat st;
    int r = stat(p, &st) < 0 ? lsm_error_errno(-errno, "cannot stat '%s'", p) : 0;
    if (!r)
        *size = (uint64_t)st.st_size;
    free(p);
    return r;
}

const struct lsm_domain_ops lsm_domain_file_ops = {
    .name = "file",
    .open = file_open,
    .volume_path = file_volume_path,
    .volume_exists = file_volume_exists,
    .create_volume = file_create_volume,
    .extend_volume = file_extend_volume,
    .remove_volume = file_remove_volume,
    .volume_size = file_volume_size,
};
