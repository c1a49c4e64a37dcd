/* Change detection and second descriptors for the image and physical
 * endpoints (ep-internal.h).  The reader's own descriptors are stamped, so
 * a file renamed or replaced meanwhile is still the one read. */
#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>

#include "ep-internal.h"
#include "error.h"
#include "fileid.h"

static int stamp_take(int fd, const char *name, struct ep_stamp *st)
{
    struct stat sb;
    st->valid = false;
    if (fd < 0)
        return 0;
    if (fstat(fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", name);
    if (!S_ISREG(sb.st_mode))
        return 0;
    st->valid = true;
    st->size = (uint64_t)sb.st_size;
    st->mtime = sb.st_mtim;
    return 0;
}

static int stamp_check(int fd, const char *name, const struct ep_stamp *st)
{
    struct stat sb;
    if (!st->valid)
        return 0;
    if (fstat(fd, &sb) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", name);
    if ((uint64_t)sb.st_size != st->size)
        return lsm_error(-EIO, "source %s changed size during the copy (%" PRIu64 " -> %" PRIu64 " bytes)",
                         name, st->size, (uint64_t)sb.st_size);
    if (sb.st_mtim.tv_sec != st->mtime.tv_sec || sb.st_mtim.tv_nsec != st->mtime.tv_nsec)
        return lsm_error(-EIO, "source %s was written during the copy (its modification time changed)",
                         name);
    return 0;
}

int ep_layer_stamp_take(const struct lsm_image *l, struct ep_layer_stamp *ls)
{
    int r = stamp_take(l->fd, l->filename, &ls->image);
    if (r == 0 && ls->image.valid && ls->image.size != l->file_size)
        return lsm_error(-EIO, "source %s changed size since it was opened (%" PRIu64 " -> %" PRIu64 " bytes)",
                         l->filename, l->file_size, ls->image.size);
    if (r == 0 && l->data_fd != l->fd)
        r = stamp_take(l->data_fd, l->data_filename ? l->data_filename : l->filename, &ls->data);
    return r;
}

int ep_layer_stamp_check(const struct lsm_image *l, const struct ep_layer_stamp *ls)
{
    int r = stamp_check(l->fd, l->filename, &ls->image);
    if (r == 0 && l->data_fd != l->fd)
        r = stamp_check(l->data_fd, l->data_filename ? l->data_filename : l->filename, &ls->data);
    return r;
}

int ep_reopen_same(const struct lsm_image *l, const char *path, int fd,
                   enum lsm_direct_mode direct, struct lsm_file **out)
{
    struct lsm_file *f = NULL;
    int r = lsm_file_open(path, LSM_FILE_READ, direct, &f);
    if (r < 0)
        return r;
    struct lsm_fileid a, b;
    r = lsm_fileid_fd(fd, l->filename, &a);
    if (r == 0)
        r = lsm_fileid_fd(f->fd, path, &b);
    if (r == 0 && !lsm_fileid_same(&a, &b))
        r = lsm_error(-ESTALE, "%s was replaced while it was being opened", path);
    if (r < 0) {
        lsm_file_close(f);
        return r;
    }
    *out = f;
    return 0;
}
