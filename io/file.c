/* Files and block devices: open with the O_DIRECT policy, learn the
 * alignment and size, zero ranges, and the offload calls
 * (copy_file_range, FICLONERANGE). */
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "fileid.h"
#include "fileio.h"
#include "io-internal.h"
#include "util.h"

/* glibc 2.36's struct statx stops before the direct I/O fields (Linux
 * 6.1): use the kernel's layout. */
#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif
struct lsm_statx {
    uint32_t stx_mask;
    uint32_t stx_blksize;
    uint64_t stx_attributes;
    uint32_t stx_nlink, stx_uid, stx_gid;
    uint16_t stx_mode, pad1;
    uint64_t stx_ino, stx_size, stx_blocks, stx_attributes_mask;
    struct { int64_t sec; uint32_t nsec; int32_t pad; } stx_atime, stx_btime, stx_ctime, stx_mtime;
    uint32_t stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor;
    uint64_t stx_mnt_id;
    uint32_t stx_dio_mem_align;
    uint32_t stx_dio_offset_align;
    uint64_t spare[12];
};
_Static_assert(sizeof(struct lsm_statx) == 256, "struct statx is 256 bytes");
_Static_assert(offsetof(struct lsm_statx, stx_dio_mem_align) == 0x98, "kernel statx layout");

#define ZERO_BUF_MAX (1u << 20)
#define DEFAULT_DIO_ALIGN 4096u

struct file_priv {
    struct lsm_file pub;
    bool owns_fd;
};

static int file_learn(struct lsm_file *f)
{
    struct stat st;
    if (fstat(f->fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", f->path);
    if (S_ISDIR(st.st_mode))
        return lsm_error(-EISDIR, "cannot use %s: it is a directory", f->path);
    f->is_blockdev = S_ISBLK(st.st_mode);
    f->size = (uint64_t)st.st_size;
    f->zero_reads_zero = S_ISREG(st.st_mode);
    if (f->is_blockdev) {
        uint64_t sz;
        if (ioctl(f->fd, BLKGETSIZE64, &sz) < 0)
            return lsm_error_errno(-errno, "cannot get the size of block device %s", f->path);
        f->size = sz;
    }

    f->mem_align = f->offset_align = 1;
    if (!f->direct)
        return 0;
    struct lsm_statx stx;
    memset(&stx, 0, sizeof stx);
    if (syscall(SYS_statx, f->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        f->mem_align = MAX(stx.stx_dio_mem_align, 1u);
        f->offset_align = stx.stx_dio_offset_align;
        return 0;
    }
    int ssz;
    if (f->is_blockdev && ioctl(f->fd, BLKSSZGET, &ssz) == 0 && ssz > 0) {
        f->mem_align = f->offset_align = (uint32_t)ssz;
        return 0;
    }
    f->mem_align = f->offset_align = DEFAULT_DIO_ALIGN;
    return 0;
}

static struct file_priv *file_alloc(const char *path)
{
    struct file_priv *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->pub.fd = -1;
    p->pub.reg_index = -1;
    p->pub.path = strdup(path ? path : "(fd)");
    if (!p->pub.path) {
        free(p);
        return NULL;
    }
    return p;
}

static void file_free(struct file_priv *p)
{
    if (p->owns_fd && p->pub.fd >= 0)
        close(p->pub.fd);
    free(p->pub.path);
    free(p);
}

static const char *access_name(unsigned flags)
{
    if ((flags & LSM_FILE_READ) && (flags & LSM_FILE_WRITE))
        return "reading and writing";
    return flags & LSM_FILE_WRITE ? "writing" : "reading";
}

/* Turn O_DIRECT on or off on the open descriptor (no reopen: the
 * descriptor, its locks and its identity stay). */
static int set_direct(struct lsm_file *f, bool on)
{
    int fl = fcntl(f->fd, F_GETFL);
    if (fl < 0)
        return -errno;
    int want = on ? (fl | O_DIRECT) : (fl & ~O_DIRECT);
    if (want != fl && fcntl(f->fd, F_SETFL, want) < 0)
        return -errno;
    f->direct = on;
    return 0;
}

int lsm_file_open(const char *path, unsigned flags, enum lsm_direct_mode direct,
                  struct lsm_file **out)
{
    if (!(flags & (LSM_FILE_READ | LSM_FILE_WRITE)) ||
        (flags & ~(LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE | LSM_FILE_MAY_EXIST)) ||
        ((flags & LSM_FILE_CREATE) && !(flags & LSM_FILE_WRITE)) ||
        ((flags & LSM_FILE_MAY_EXIST) && !(flags & LSM_FILE_CREATE)))
        return lsm_error(-EINVAL, "cannot open %s: invalid open flags 0x%x", path, flags);

    int oflags;
    if ((flags & LSM_FILE_READ) && (flags & LSM_FILE_WRITE))
        oflags = O_RDWR;
    else if (flags & LSM_FILE_WRITE)
        oflags = O_WRONLY;
    else
        oflags = O_RDONLY;

    struct file_priv *p = file_alloc(path);
    if (!p)
        return lsm_error_errno(-ENOMEM, "cannot open %s", path);
    struct lsm_file *f = &p->pub;
    p->owns_fd = true;

    /* One open, never with O_TRUNC: a file is created only with O_EXCL (so
     * f->created means this call made it), and O_DIRECT is switched on
     * afterwards, so that a refusal does not need a second open. */
    const char *what = access_name(flags);
    int fd;
    if (flags & LSM_FILE_CREATE) {
        fd = lsm_open_disk(path, oflags | O_CREAT | O_EXCL, 0644, NULL, NULL);
        if (fd >= 0) {
            f->created = true;
        } else if (fd == -EEXIST && (flags & LSM_FILE_MAY_EXIST)) {
            lsm_error_clear();
            fd = lsm_open_disk(path, oflags, 0, NULL, NULL);
        }
    } else {
        fd = lsm_open_disk(path, oflags, 0, NULL, NULL);
    }
    if (fd < 0) {
        file_free(p);
        return fd;
    }
    f->fd = fd;

    if (direct != LSM_DIRECT_NEVER) {
        int r = set_direct(f, true);
        if (r == -EINVAL && direct == LSM_DIRECT_AUTO) {
            f->direct_refused = true;   /* the file system refuses O_DIRECT */
        } else if (r < 0) {
            if (r == -EINVAL)
                lsm_error_errno(r, "cannot open %s for %s with O_DIRECT (the file system refuses direct I/O?)",
                                path, what);
            else
                lsm_error_errno(r, "cannot enable O_DIRECT on %s", path);
            lsm_file_remove_created(f);
            file_free(p);
            return r;
        }
    }

    int r = file_learn(f);
    if (r < 0) {
        lsm_file_remove_created(f);
        file_free(p);
        return r;
    }
    *out = f;
    return 0;
}

int lsm_file_set_direct(struct lsm_file *f, bool on)
{
    int r = set_direct(f, on);
    if (r < 0)
        return lsm_error_errno(r, "cannot turn O_DIRECT %s on %s", on ? "on" : "off", f->path);
    return file_learn(f);
}

int lsm_file_remove_created(struct lsm_file *f)
{
    if (!f->created || f->fd < 0)
        return 0;
    /* Called on failure paths: the caller's message is the one to keep,
     * whatever the identity look-ups below record. */
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", lsm_last_error());
    struct lsm_fileid mine, there;
    bool same = lsm_fileid_fd(f->fd, f->path, &mine) == 0 &&
                lsm_fileid_path(f->path, &there) == 0 && lsm_fileid_same(&mine, &there);
    lsm_error_clear();
    if (saved[0])
        lsm_error(-EIO, "%s", saved);
    if (!same)
        return 0;   /* the name no longer leads to what we created: leave it */
    if (unlink(f->path) < 0)
        return 0;
    f->created = false;
    return 1;
}

int lsm_file_from_fd(int fd, const char *path, struct lsm_file **out)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return lsm_error_errno(-errno, "cannot use file descriptor %d (%s)", fd, path ? path : "?");
    struct file_priv *p = file_alloc(path);
    if (!p)
        return lsm_error_errno(-ENOMEM, "cannot wrap file descriptor %d", fd);
    p->pub.fd = fd;
    p->pub.direct = (fl & O_DIRECT) != 0;
    int r = file_learn(&p->pub);
    if (r < 0) {
        file_free(p);
        return r;
    }
    *out = &p->pub;
    return 0;
}

void lsm_file_close(struct lsm_file *f)
{
    if (f)
        file_free((struct file_priv *)((char *)f - offsetof(struct file_priv, pub)));
}

/* Last resort: write zeroes (aligned, so that O_DIRECT accepts them). */
static int zero_by_writing(struct lsm_file *f, uint64_t offset, uint64_t len)
{
    if (!is_aligned(offset, f->offset_align) || !is_aligned(len, f->offset_align))
        return lsm_error(-EINVAL, "cannot write zeroes at %llu+%llu on %s: not aligned to %u bytes for O_DIRECT",
                         (unsigned long long)offset, (unsigned long long)len, f->path,
                         f->offset_align);
    size_t chunk = (size_t)MIN(len, (uint64_t)ZERO_BUF_MAX);
    size_t align = MAX((size_t)f->mem_align, (size_t)DEFAULT_DIO_ALIGN);
    _cleanup_free_ void *buf = NULL;
    if (posix_memalign(&buf, align, align_up(chunk, align)) != 0)
        return lsm_error_errno(-ENOMEM, "cannot write zeroes to %s", f->path);
    memset(buf, 0, align_up(chunk, align));

    while (len > 0) {
        size_t n = (size_t)MIN(len, (uint64_t)chunk);
        ssize_t w = pwrite(f->fd, buf, n, (off_t)offset);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return lsm_error_errno(-errno, "cannot write zeroes at offset %llu of %s",
                                   (unsigned long long)offset, f->path);
        if (w == 0)
            return lsm_error(-EIO, "cannot write zeroes at offset %llu of %s: no progress",
                             (unsigned long long)offset, f->path);
        offset += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

static bool not_supported(int err)
{
    return err == EOPNOTSUPP || err == ENOTTY || err == ENOSYS;
}

int lsm_file_zero(struct lsm_file *f, uint64_t offset, uint64_t len, bool may_unmap)
{
    if (len == 0)
        return 0;
    if (offset > INT64_MAX || len > INT64_MAX - offset)
        return lsm_error(-EINVAL, "cannot zero %llu+%llu on %s: out of range",
                         (unsigned long long)offset, (unsigned long long)len, f->path);

    if (f->is_blockdev) {
        /* On a block device PUNCH_HOLE is "discard, guaranteed to read
         * back zeroes" and fails rather than writing them. */
        if (may_unmap && fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                   (off_t)offset, (off_t)len) == 0)
            goto zeroed;
        uint64_t range[2] = { offset, len };
        if (ioctl(f->fd, BLKZEROOUT, range) == 0)
            goto zeroed;
        if (!not_supported(errno) && errno != EINVAL)
            return lsm_error_errno(-errno, "cannot zero %llu bytes at offset %llu of %s",
                                   (unsigned long long)len, (unsigned long long)offset, f->path);
        int r = zero_by_writing(f, offset, len);
        if (r < 0)
            return r;
zeroed:
        f->zero_reads_zero = true;
        return 0;
    }

    if (may_unmap) {
        if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) == 0)
            return 0;
        if (!not_supported(errno))
            return lsm_error_errno(-errno, "cannot punch a hole of %llu bytes at offset %llu of %s",
                                   (unsigned long long)len, (unsigned long long)offset, f->path);
    }
    if (fallocate(f->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) == 0)
        return 0;
    if (!not_supported(errno))
        return lsm_error_errno(-errno, "cannot zero %llu bytes at offset %llu of %s",
                               (unsigned long long)len, (unsigned long long)offset, f->path);
    return zero_by_writing(f, offset, len);
}

int lsm_file_truncate(struct lsm_file *f, uint64_t size)
{
    if (f->is_blockdev) {
        if (size > f->size)
            return lsm_error(-ENOSPC, "cannot grow block device %s to %llu bytes: it has %llu",
                             f->path, (unsigned long long)size, (unsigned long long)f->size);
        return 0;
    }
    if (size > INT64_MAX)
        return lsm_error(-EFBIG, "cannot resize %s to %llu bytes", f->path, (unsigned long long)size);
    if (ftruncate(f->fd, (off_t)size) < 0)
        return lsm_error_errno(-errno, "cannot resize %s to %llu bytes", f->path,
                               (unsigned long long)size);
    f->size = size;
    return 0;
}

int lsm_file_preallocate(struct lsm_file *f, uint64_t offset, uint64_t len, bool full)
{
    if (len == 0)
        return 0;
    if (offset > INT64_MAX || len > INT64_MAX - offset)
        return lsm_error(-EFBIG, "cannot preallocate %s up to %llu bytes", f->path,
                         (unsigned long long)(offset + len));
    if (!full) {
        if (fallocate(f->fd, 0, (off_t)offset, (off_t)len) < 0)
            return lsm_error_errno(-errno, "cannot preallocate (falloc) %llu bytes of %s",
                                   (unsigned long long)len, f->path);
        return 0;
    }
    /* Zeroes written, in aligned pieces (the descriptor may be O_DIRECT). */
    const size_t blen = 1u << 20;
    void *zero = NULL;
    if (posix_memalign(&zero, 4096, blen) != 0)
        return lsm_error(-ENOMEM, "cannot allocate a zero buffer");
    memset(zero, 0, blen);
    int r = 0;
    uint64_t align = f->direct && f->offset_align ? f->offset_align : 1;
    bool tail_buffered = false;
    for (uint64_t done = 0; done < len;) {
        size_t n = (size_t)MIN((uint64_t)blen, len - done);
        if (n % align || (offset + done) % align) {
            /* An unaligned end (a raw size that is no multiple of the
             * O_DIRECT alignment): that piece buffered. */
            if (!tail_buffered) {
                r = lsm_file_set_direct(f, false);
                if (r < 0)
                    break;
                tail_buffered = true;
            }
        }
        ssize_t w = pwrite(f->fd, zero, n, (off_t)(offset + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            r = lsm_error_errno(w < 0 ? -errno : -EIO, "cannot preallocate (full) %s at offset %llu",
                                f->path, (unsigned long long)(offset + done));
            break;
        }
        done += (uint64_t)w;
    }
    free(zero);
    if (tail_buffered) {
        int r2 = fdatasync(f->fd) < 0 ? lsm_error_errno(-errno, "cannot sync %s", f->path) : 0;
        if (r == 0)
            r = r2;
        if (r == 0)
            r = lsm_file_set_direct(f, true);
    }
    return r;
}

int lsm_file_sync(struct lsm_file *f)
{
    int r;
    while ((r = fsync(f->fd)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        return lsm_error_errno(-errno, "cannot sync %s", f->path);
    return 0;
}

/* "Offload does not apply" errnos are folded into the three the header
 * promises. */
static int offload_errno(int err)
{
    if (err == ENOSYS || err == ENOTTY || err == ENOTSUP)
        return -EOPNOTSUPP;
    return -err;
}

int64_t lsm_file_copy_range(struct lsm_file *src, uint64_t src_off,
                            struct lsm_file *dst, uint64_t dst_off, uint64_t len)
{
    if (src_off > INT64_MAX || dst_off > INT64_MAX ||
        len > INT64_MAX - src_off || len > INT64_MAX - dst_off)
        return lsm_error(-EINVAL, "cannot copy %llu bytes from %s to %s: out of range",
                         (unsigned long long)len, src->path, dst->path);
    loff_t so = (loff_t)src_off, dof = (loff_t)dst_off;
    uint64_t done = 0;
    while (done < len) {
        size_t want = (size_t)MIN(len - done, (uint64_t)1 << 30);
        ssize_t n = copy_file_range(src->fd, &so, dst->fd, &dof, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = offload_errno(errno);
            if (done)
                break;   /* report the short copy; the next call says why */
            return lsm_error_errno(err, "cannot copy %llu bytes from %s to %s with copy_file_range",
                                   (unsigned long long)len, src->path, dst->path);
        }
        if (n == 0)
            break;       /* end of the source */
        done += (uint64_t)n;
    }
    return (int64_t)done;
}

int lsm_file_clone_range(struct lsm_file *src, uint64_t src_off,
                         struct lsm_file *dst, uint64_t dst_off, uint64_t len)
{
    if (len == 0)
        return 0;   /* FICLONERANGE reads 0 as "to the end" */
    struct file_clone_range arg = {
        .src_fd = src->fd,
        .src_offset = src_off,
        .src_length = len,
        .dest_offset = dst_off,
    };
    if (ioctl(dst->fd, FICLONERANGE, &arg) < 0)
        return lsm_error_errno(offload_errno(errno), "cannot clone %llu bytes from %s to %s",
                               (unsigned long long)len, src->path, dst->path);
    return 0;
}
