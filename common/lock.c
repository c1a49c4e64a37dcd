/* QEMU-compatible image locks (see lock.h). */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "lock.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200
#define NPERMS 4

static const char *const perm_names[NPERMS] = {
    "consistent read", "write", "write unchanged", "resize",
};

static int ofd_lock(int fd, int cmd, short type, int byte, struct flock *out)
{
    struct flock fl = {
        .l_type = type,
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_pid = 0,          /* OFD locks require 0 */
    };
    int r;
    while ((r = fcntl(fd, cmd, &fl)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        return -errno;
    if (out)
        *out = fl;
    return 0;
}

void lsm_lock_release(int fd)
{
    for (int i = 0; i < NPERMS; i++) {
        ofd_lock(fd, F_OFD_SETLK, F_UNLCK, LOCK_PERM_BASE + i, NULL);
        ofd_lock(fd, F_OFD_SETLK, F_UNLCK, LOCK_SHARED_BASE + i, NULL);
    }
}

/* Is byte held by another open file description?  1 yes, 0 no, -errno. */
static int held_by_other(int fd, int byte)
{
    struct flock fl;
    int r = ofd_lock(fd, F_OFD_GETLK, F_WRLCK, byte, &fl);
    if (r < 0)
        return r;
    return fl.l_type != F_UNLCK;
}

static int conflict(const char *name, bool shared, int i)
{
    return lsm_error(-EAGAIN, "Failed to get %s\"%s\" lock on %s: Is another process using the image?",
                     shared ? "shared " : "", perm_names[i], name);
}

int lsm_lock_perms(int fd, const char *name, unsigned perm, unsigned shared)
{
    int r;
    /* Our bytes first, then the test: two users racing both see each other. */
    for (int i = 0; i < NPERMS; i++) {
        unsigned bit = 1u << i;
        if ((perm & bit) &&
            (r = ofd_lock(fd, F_OFD_SETLK, F_RDLCK, LOCK_PERM_BASE + i, NULL)) < 0)
            goto lock_failed;
        if (!(shared & bit) &&
            (r = ofd_lock(fd, F_OFD_SETLK, F_RDLCK, LOCK_SHARED_BASE + i, NULL)) < 0)
            goto lock_failed;
    }
    for (int i = 0; i < NPERMS; i++) {
        unsigned bit = 1u << i;
        if (perm & bit) {
            r = held_by_other(fd, LOCK_SHARED_BASE + i);
            if (r < 0)
                goto lock_failed;
            if (r) {
                lsm_lock_release(fd);
                return conflict(name, false, i);
            }
        }
    }
    for (int i = 0; i < NPERMS; i++) {
        unsigned bit = 1u << i;
        if (!(shared & bit)) {
            r = held_by_other(fd, LOCK_PERM_BASE + i);
            if (r < 0)
                goto lock_failed;
            if (r) {
                lsm_lock_release(fd);
                return conflict(name, true, i);
            }
        }
    }
    return 0;

lock_failed:
    lsm_lock_release(fd);
    if (r == -EAGAIN || r == -EACCES)   /* someone holds the byte exclusively */
        return lsm_error(-EAGAIN, "Failed to lock %s: Is another process using the image?", name);
    return lsm_error_errno(r, "cannot lock %s", name);
}

int lsm_lock_read(int fd, const char *name, bool force_share)
{
    return lsm_lock_perms(fd, name, LSM_PERM_CONSISTENT_READ,
                          force_share ? LSM_PERM_ALL
                                      : LSM_PERM_ALL & ~(LSM_PERM_WRITE | LSM_PERM_RESIZE));
}

int lsm_lock_write(int fd, const char *name)
{
    return lsm_lock_perms(fd, name,
                          LSM_PERM_CONSISTENT_READ | LSM_PERM_WRITE | LSM_PERM_RESIZE,
                          LSM_PERM_CONSISTENT_READ | LSM_PERM_WRITE_UNCHANGED);
}
