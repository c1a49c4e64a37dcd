#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "error.h"
#include "fileio.h"

ssize_t lsm_pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
        if (done < len && (done & 511))
            break;
    }
    return (ssize_t)done;
}

ssize_t lsm_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static const char *kind_of(mode_t m)
{
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISSOCK(m))
        return "a socket";
    return "not a regular file";
}

int lsm_open_disk(const char *path, int oflags, mode_t mode, const char *what,
                  struct stat *st)
{
    const char *sep = what ? " " : "";
    what = what ? what : "";
    int fd;
    while ((fd = open(path, oflags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, mode)) < 0 &&
           errno == EINTR)
        ;
    if (fd < 0) {
        int err = -errno;
        if (err == -ENXIO)   /* a FIFO opened write-only without a reader */
            return lsm_error(-EINVAL, "cannot use %s%s'%s': it is a FIFO or a device without its driver; "
                             "only regular files and block devices are images", what, sep, path);
        return lsm_error_errno(err, "cannot open %s%s'%s'", what, sep, path);
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int err = -errno;
        close(fd);
        return lsm_error_errno(err, "cannot stat %s%s'%s'", what, sep, path);
    }
    if (!S_ISREG(sb.st_mode) && !S_ISBLK(sb.st_mode)) {
        close(fd);
        return lsm_error(S_ISDIR(sb.st_mode) ? -EISDIR : -EINVAL,
                         "cannot use %s%s'%s': it is %s; only regular files and block devices are images",
                         what, sep, path, kind_of(sb.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int err = -errno;
        close(fd);
        return lsm_error_errno(err, "cannot clear O_NONBLOCK on %s%s'%s'", what, sep, path);
    }
    if (st)
        *st = sb;
    return fd;
}
