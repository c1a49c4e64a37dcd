/* Generic image layer: probing, opening chains, QEMU-compatible block
 * status, extent iteration and guest-visible reads.  Formats plug in through
 * struct lsm_image_ops (raw.c, qcow2/qcow2.c). */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "cleanup.h"
#include "error.h"
#include "fileid.h"
#include "fileio.h"
#include "lock.h"
#include "module.h"
#include "image.h"
#include "image-internal.h"
#include "util.h"

const char *lsm_format_name(enum lsm_format f)
{
    switch (f) {
    case LSM_FMT_RAW: return "raw";
    case LSM_FMT_QCOW2: return "qcow2";
    default: return "auto";
    }
}

int lsm_format_parse(const char *name, enum lsm_format *out)
{
    if (!strcmp(name, "raw"))
        *out = LSM_FMT_RAW;
    else if (!strcmp(name, "qcow2"))
        *out = LSM_FMT_QCOW2;
    else
        return -EINVAL;
    return 0;
}

int lsm_pread_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    ssize_t n = lsm_pread_all(fd, buf, len, off);
    if (n < 0)
        return (int)n;
    if (got)
        *got = (size_t)n;
    return 0;
}

int lsm_pread_zerofill(int fd, void *buf, size_t len, uint64_t off)
{
    size_t got;
    int r = lsm_pread_full(fd, buf, len, off, &got);
    if (r < 0)
        return r;
    if (got < len)
        memset((char *)buf + got, 0, len - got);
    return 0;
}

/* Probing, as QEMU's bdrv_probe_all (block.c) does it: every driver looks at
 * the first 512 bytes of the file, zero-filled past the end of a shorter
 * file, and a file is raw only when no driver claims it.  lsm-sync reads two
 * of the formats QEMU knows; the others are recognised here by the same
 * tests as QEMU's probe functions (block/<driver>.c, QEMU 7.2) so that they
 * are refused by name instead of being read as raw, which would give the
 * container's bytes as the guest's disk.  docs/format-notes.md ("Probing")
 * lists where this differs from QEMU (DMG, LUKS2, qcow2 version 0). */
#define PROBE_SIZE 512

static uint32_t le32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

/* QEMU's vmdk_probe for a text descriptor: comment lines (#...) and lines
 * of spaces may come first; the first other line must be "version=1", 2 or
 * 3, ended by "\n" or "\r\n".  An empty line before it means no descriptor,
 * as in QEMU. */
static bool vmdk_descriptor(const uint8_t *buf, size_t len)
{
    const uint8_t *p = buf, *end = buf + len;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n')
                p++;
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ')
                p++;
            if (p < end && *p == '\r')
                p++;
            if (p == end || *p != '\n')
                return false;
            p++;
            continue;
        }
        size_t left = (size_t)(end - p);
        if (left < 10 || memcmp(p, "version=", 8) || p[8] < '1' || p[8] > '3')
            return false;
        return p[9] == '\n' || (left >= 11 && p[9] == '\r' && p[10] == '\n');
    }
    return false;
}

/* The name of a format lsm-sync does not read that claims these bytes, or
 * NULL.  head: the first PROBE_SIZE bytes, zero-filled; tail: the last 512
 * bytes of a file of at least 512 bytes (NULL otherwise). */
static const char *probe_foreign(const uint8_t *head, const uint8_t *tail)
{
    static const char cloop_v2[] =
        "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

    if (be32_get(head) == 0x514649fbu && be32_get(head + 4) == 1)
        return "qcow (version 1)";                   /* qcow_probe */
    if (!memcmp(head, "conectix", 8))
        return "VPC (VHD)";                          /* vpc_probe: dynamic VHD header copy */
    if (!memcmp(head, "vhdxfile", 8))
        return "VHDX";
    if (le32_at(head + 0x40) == 0xbeda107fu)
        return "VDI";                                /* signature after the 64-byte text */
    if (!memcmp(head, "KDMV", 4) || !memcmp(head, "COWD", 4) || vmdk_descriptor(head, PROBE_SIZE))
        return "VMDK";
    if ((!memcmp(head, "WithoutFreeSpace", 16) || !memcmp(head, "WithouFreSpacExt", 16)) &&
        le32_at(head + 16) == 2)
        return "Parallels";
    if (!memcmp(head, "Bochs Virtual HD Image", 23) && !memcmp(head + 32, "Redolog", 8) &&
        !memcmp(head + 48, "Growing", 8) &&
        (le32_at(head + 64) == 0x00020000u || le32_at(head + 64) == 0x00010000u))
        return "Bochs";
    if (!memcmp(head, cloop_v2, sizeof cloop_v2 - 1))
        return "cloop";
    if (!memcmp(head, "QED", 4))                     /* "QED\0", little-endian magic */
        return "QED";
    if (!memcmp(head, "LUKS\xba\xbe", 6))            /* QEMU probes version 1 only */
        return "LUKS (encrypted)";
    /* QEMU's dmg probe goes by the ".dmg" file name; the UDIF trailer that
     * dmg_open looks for ("koly", version 4, 512 bytes long, in the last
     * 512 bytes) is what makes a file a DMG whatever its name. */
    if (tail && !memcmp(tail, "koly", 4) && be32_get(tail + 4) == 4 && be32_get(tail + 8) == 512)
        return "DMG";
    return NULL;
}

int lsm_probe_format(int fd, enum lsm_format *out)
{
    uint8_t head[PROBE_SIZE], tail[512];
    int r = lsm_pread_zerofill(fd, head, sizeof head, 0);
    if (r < 0)
        return lsm_error_errno(r, "cannot read the image header");
    off_t size = lseek(fd, 0, SEEK_END);        /* regular files and block devices */
    if (size < 0)
        return lsm_error_errno(-errno, "cannot get the size of the image");
    bool have_tail = size >= (off_t)sizeof tail;
    if (have_tail) {
        r = lsm_pread_zerofill(fd, tail, sizeof tail, (uint64_t)size - sizeof tail);
        if (r < 0)
            return lsm_error_errno(r, "cannot read the last 512 bytes of the image");
    }
    const char *foreign = probe_foreign(head, have_tail ? tail : NULL);
    if (foreign)
        return lsm_error(-ENOTSUP, "%s images are not supported (lsm-sync reads raw and qcow2; "
                         "convert with qemu-img convert -O qcow2 first)", foreign);
    /* qcow2_probe claims versions 2 and up; qcow2 open refuses all but 2
     * and 3.  A qcow2 magic with version 0 (raw to QEMU) is refused too. */
    *out = be32_get(head) == 0x514649fbu ? LSM_FMT_QCOW2 : LSM_FMT_RAW;
    return 0;
}

/* QEMU's path_has_protocol: "xxx:" before any '/' */
static bool has_protocol(const char *name)
{
    size_t n = strcspn(name, ":/");
    return name[n] == ':';
}

char *lsm_resolve_backing(const char *image_path, const char *backing_name, int *err)
{
    *err = 0;
    if (!backing_name[0]) {
        *err = lsm_error(-EINVAL, "empty backing file name");
        return NULL;
    }
    if (!strncmp(backing_name, "json:", 5)) {
        *err = lsm_error(-ENOTSUP, "backing file name '%.64s%s' is a json: description; only local files are supported",
                         backing_name, strlen(backing_name) > 64 ? "..." : "");
        return NULL;
    }
    if (has_protocol(backing_name)) {
        *err = lsm_error(-ENOTSUP, "backing file name '%s' names a protocol; only local files are supported",
                         backing_name);
        return NULL;
    }
    char *out;
    const char *slash = strrchr(image_path, '/');
    if (backing_name[0] == '/' || !slash) {
        out = strdup(backing_name);
    } else {
        size_t dirlen = (size_t)(slash - image_path) + 1;
        size_t blen = strlen(backing_name);
        out = malloc(dirlen + blen + 1);
        if (out) {
            memcpy(out, image_path, dirlen);
            memcpy(out + dirlen, backing_name, blen + 1);
        }
    }
    if (!out)
        *err = lsm_error(-ENOMEM, "out of memory");
    return out;
}

static const struct lsm_image_ops *ops_for(enum lsm_format f)
{
    switch (f) {
    case LSM_FMT_RAW: return &lsm_raw_ops;
    case LSM_FMT_QCOW2: return &lsm_qcow2_ops;
    default: return NULL;
    }
}

static void close_one(struct lsm_image *img)
{
    if (!img)
        return;
    if (img->ops && img->ops->close)
        img->ops->close(img);
    /* (explicitly: see lsm_lock_release) */
    if (img->data_fd >= 0 && img->data_fd != img->fd) {
        lsm_lock_release(img->data_fd);
        close(img->data_fd);
    }
    if (img->fd >= 0) {
        lsm_lock_release(img->fd);
        close(img->fd);
    }
    free(img->filename);
    free(img->data_filename);
    free(img->backing_name);
    free(img->backing_path);
    free(img);
}

void lsm_image_close(struct lsm_image *img)
{
    while (img) {
        struct lsm_image *b = img->backing;
        close_one(img);
        img = b;
    }
}

bool lsm_image_is_nbd_uri(const char *s)
{
    static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://",
                                           "nbd+vsock://", "nbds+vsock://" };
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
        if (!strncmp(s, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

/* An NBD export (formats/nbd.c, the module lsm-formats-nbd): one raw layer
 * without backing and without a local file (fd and data_fd stay -1). */
static int open_nbd(struct lsm_image *img, enum lsm_format fmt)
{
    if (fmt != LSM_FMT_AUTO && fmt != LSM_FMT_RAW)
        return lsm_error(-EINVAL, "%s: an NBD export is read as raw, not as %s (its server "
                         "interprets the format: qemu-nbd -f %s)", img->filename,
                         lsm_format_name(fmt), lsm_format_name(fmt));
#ifdef HAVE_LIBNBD
    const struct lsm_image_ops *ops = lsm_module_symbol("formats-nbd", "lsm_nbd_image_ops");
    if (!ops)
        return -ENOTSUP;
    img->format = LSM_FMT_RAW;
    int r = ops->open(img);
    if (r < 0)
        return r;
    img->ops = ops;
    return 0;
#else
    return lsm_error(-ENOTSUP, "cannot open %s: lsm-sync was built without libnbd", img->filename);
#endif
}

static int open_one(const char *path, enum lsm_format fmt, unsigned flags,
                    struct lsm_image **out)
{
    struct lsm_image *img = calloc(1, sizeof *img);
    if (!img)
        return lsm_error(-ENOMEM, "out of memory");
    img->open_flags = flags;
    img->fd = img->data_fd = -1;
    img->filename = strdup(path);
    if (!img->filename) {
        close_one(img);
        return lsm_error(-ENOMEM, "out of memory");
    }
    if (lsm_image_is_nbd_uri(path)) {
        int r = open_nbd(img, fmt);
        if (r < 0) {
            close_one(img);
            return r;
        }
        *out = img;
        return 0;
    }
    /* Never waits: a FIFO or a device node is refused after open. */
    struct stat st;
    img->fd = lsm_open_disk(path, O_RDONLY, 0, NULL, &st);
    if (img->fd < 0) {
        int r = img->fd;
        close_one(img);
        return r;
    }
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz;
        if (ioctl(img->fd, BLKGETSIZE64, &sz) < 0) {
            int r = lsm_error_errno(-errno, "cannot get the size of block device '%s'", path);
            close_one(img);
            return r;
        }
        img->is_blockdev = true;
        img->file_size = sz;
    } else {
        img->file_size = (uint64_t)st.st_size;
    }
    /* Read what a writer holds only when asked to (qemu-img -U). */
    int lr = lsm_lock_read(img->fd, path, flags & LSM_OPEN_FORCE_SHARE);
    if (lr < 0) {
        close_one(img);
        return lr;
    }
    img->data_fd = img->fd;

    if (fmt == LSM_FMT_AUTO) {
        int r = lsm_probe_format(img->fd, &fmt);
        if (r < 0) {
            lsm_error_prefix("%s", path);
            close_one(img);
            return r;
        }
    }
    img->format = fmt;
    img->ops = ops_for(fmt);
    if (!img->ops) {
        close_one(img);
        return lsm_error(-EINVAL, "unknown image format");
    }
    int r = img->ops->open(img);
    if (r < 0) {
        lsm_error_prefix("%s", path);
        img->ops = NULL;   /* open cleans up after itself */
        close_one(img);
        return r;
    }
    if (img->data_fd != img->fd) {
        /* The external data file is an image file too. */
        const char *dn = img->data_filename ? img->data_filename : path;
        r = lsm_lock_read(img->data_fd, dn, flags & LSM_OPEN_FORCE_SHARE);
        if (r < 0) {
            close_one(img);
            return r;
        }
    }
    *out = img;
    return 0;
}

int lsm_image_open(const char *path, enum lsm_format fmt, unsigned flags,
                   struct lsm_image **out)
{
    struct lsm_image *top = NULL;
    int r = open_one(path, fmt, flags, &top);
    if (r < 0)
        return r;
    if ((flags & LSM_OPEN_NO_BACKING) || !top->backing_name) {
        *out = top;
        return 0;
    }
    /* Identities of the layers opened so far, to detect loops (QEMU itself
     * would recurse until it runs out of file descriptors). */
    dev_t devs[LSM_MAX_CHAIN_DEPTH];
    ino_t inos[LSM_MAX_CHAIN_DEPTH];
    struct stat st;
    fstat(top->fd, &st);
    devs[0] = st.st_dev;
    inos[0] = st.st_ino;

    struct lsm_image *cur = top;
    unsigned depth = 0;
    while (cur->backing_name) {
        if (depth + 1 >= LSM_MAX_CHAIN_DEPTH) {
            r = lsm_error(-ELOOP, "backing chain is deeper than %d layers", LSM_MAX_CHAIN_DEPTH);
            goto fail;
        }
        int err;
        cur->backing_path = lsm_resolve_backing(cur->filename, cur->backing_name, &err);
        if (!cur->backing_path) {
            r = err;
            lsm_error_prefix("%s", cur->filename);
            goto fail;
        }
        struct lsm_image *b = NULL;
        r = open_one(cur->backing_path, cur->backing_fmt, flags, &b);
        if (r < 0) {
            if (r == -ENOENT)
                lsm_error(r, "backing file '%s' (named by '%s') does not exist",
                          cur->backing_path, cur->filename);
            else
                lsm_error_prefix("backing file of '%s'", cur->filename);
            goto fail;
        }
        cur->backing = b;
        b->depth = ++depth;
        fstat(b->fd, &st);
        for (unsigned i = 0; i < depth; i++)
            if (devs[i] == st.st_dev && inos[i] == st.st_ino) {
                r = lsm_error(-ELOOP, "backing chain loop: '%s' names '%s', which is already in the chain",
                              cur->filename, cur->backing_path);
                goto fail;
            }
        devs[depth] = st.st_dev;
        inos[depth] = st.st_ino;
        cur = b;
    }
    *out = top;
    return 0;
fail:
    lsm_image_close(top);
    return r;
}

int lsm_image_add_ids(struct lsm_image *img, struct lsm_fileid_set *set)
{
    for (; img; img = img->backing) {
        if (img->fd < 0)
            return lsm_error(-ENOTSUP, "%s: an NBD export has no local file to identify",
                             img->filename);
        struct lsm_fileid id;
        int r = lsm_fileid_fd(img->fd, img->filename, &id);
        if (r < 0)
            return r;
        r = lsm_fileid_set_add(set, &id, img->filename);
        if (r < 0)
            return r;
        if (img->data_fd >= 0 && img->data_fd != img->fd) {
            const char *dn = img->data_filename ? img->data_filename : img->filename;
            r = lsm_fileid_fd(img->data_fd, dn, &id);
            if (r < 0)
                return r;
            r = lsm_fileid_set_add(set, &id, dn);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

unsigned lsm_chain_length(const struct lsm_image *img)
{
    unsigned n = 0;
    for (; img; img = img->backing)
        n++;
    return n;
}

struct lsm_image *lsm_chain_layer(struct lsm_image *img, unsigned d)
{
    while (img && d--)
        img = img->backing;
    return img;
}

int64_t lsm_image_actual_size(struct lsm_image *img)
{
    if (img->fd < 0)
        return -ENOTSUP;      /* an NBD export: no local file */
    struct stat st;
    if (fstat(img->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode))
        return -ENOTSUP;
    return (int64_t)st.st_blocks * 512;
}

/* Status of a host file range as QEMU's file-posix driver reports it:
 * ZERO for holes, DATA otherwise, EOF when the run reaches the end.  The
 * file's length counts in whole 512-byte sectors like bdrv_getlength. */
int lsm_file_block_status(int fd, uint64_t file_size, bool is_blockdev,
                          uint64_t offset, uint64_t bytes, uint64_t *pnum)
{
    uint64_t total = is_blockdev ? file_size : align_up(file_size, 512);
    if (offset >= total) {
        *pnum = 0;
        return LSM_BS_EOF;
    }
    if (bytes > total - offset)
        bytes = total - offset;
    int ret;
    off_t data = lseek(fd, (off_t)offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {           /* trailing hole */
            *pnum = bytes;
            ret = LSM_BS_ZERO;
        } else {                        /* no information: all data */
            *pnum = bytes;
            ret = LSM_BS_DATA;
        }
    } else if ((uint64_t)data > offset) {
        *pnum = MIN((uint64_t)data - offset, bytes);
        ret = LSM_BS_ZERO;
    } else {
        off_t hole = lseek(fd, (off_t)offset, SEEK_HOLE);
        if (hole < 0 || (uint64_t)hole <= offset)
            *pnum = bytes;
        else
            *pnum = MIN((uint64_t)hole - offset, bytes);
        ret = LSM_BS_DATA;
    }
    if (offset + *pnum == total)
        ret |= LSM_BS_EOF;
    return ret;
}

static int layer_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                        uint64_t *pnum, uint64_t *map, bool synthesize_zero)
{
    if (offset >= img->virtual_size) {
        *pnum = 0;
        return LSM_BS_EOF;
    }
    if (bytes > img->virtual_size - offset)
        bytes = img->virtual_size - offset;
    *map = 0;
    int ret = img->ops->block_status(img, offset, bytes, pnum, map);
    if (ret < 0)
        return ret;
    if (*pnum == 0 || *pnum > bytes)
        return lsm_error(-EIO, "internal error: block status returned %llu bytes for a request of %llu",
                         (unsigned long long)*pnum, (unsigned long long)bytes);

    if (ret & (LSM_BS_DATA | LSM_BS_ZERO)) {
        ret |= LSM_BS_ALLOCATED;
    } else if (synthesize_zero) {
        if (!img->backing || offset >= img->backing->virtual_size)
            ret |= LSM_BS_ZERO;
    }

    if ((ret & LSM_BS_RECURSE) && (ret & LSM_BS_DATA) && !(ret & LSM_BS_ZERO) &&
        (ret & LSM_BS_OFFSET)) {
        uint64_t fpnum;
        uint64_t dsize = img->file_size;
        bool dblk = img->is_blockdev;
        if (img->data_fd != img->fd) {
            struct stat st;
            if (fstat(img->data_fd, &st) == 0 && S_ISREG(st.st_mode))
                dsize = (uint64_t)st.st_size;
            dblk = false;
        }
        int r2 = lsm_file_block_status(img->data_fd, dsize, dblk, *map, *pnum, &fpnum);
        if ((r2 & LSM_BS_EOF) && (!fpnum || (r2 & LSM_BS_ZERO))) {
            ret |= LSM_BS_ZERO;
        } else {
            *pnum = fpnum;
            ret |= r2 & LSM_BS_ZERO;
        }
    }
    ret &= ~(LSM_BS_RECURSE | LSM_BS_EOF);
    if (offset + *pnum == img->virtual_size)
        ret |= LSM_BS_EOF;
    return ret;
}

int lsm_image_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                           uint64_t *pnum, uint64_t *map)
{
    return layer_status(img, offset, bytes, pnum, map, true);
}

static void fill_extent(struct lsm_extent *e, struct lsm_image *layer, unsigned depth,
                        uint64_t start, uint64_t len, int st, uint64_t map)
{
    e->start = start;
    e->length = len;
    e->depth = depth;
    e->layer = layer;
    e->flags = 0;
    if (st & LSM_BS_ALLOCATED)
        e->flags |= LSM_EXT_PRESENT;
    if (st & LSM_BS_ZERO)
        e->flags |= LSM_EXT_ZERO;
    if (st & LSM_BS_DATA)
        e->flags |= LSM_EXT_DATA;
    if (st & LSM_BS_COMPRESSED)
        e->flags |= LSM_EXT_COMPRESSED;
    if (st & LSM_BS_OFFSET) {
        e->flags |= LSM_EXT_OFFSET;
        e->offset = map;
    } else {
        e->offset = 0;
    }
}

int lsm_chain_block_status(struct lsm_image *img, uint64_t offset, uint64_t bytes,
                           struct lsm_extent *e)
{
    struct lsm_image *layer = img;
    unsigned depth = 0;
    for (;;) {
        uint64_t n, map;
        int st = layer_status(layer, offset, bytes, &n, &map, true);
        if (st < 0) {
            lsm_error_prefix("%s", layer->filename);
            return st;
        }
        if (n == 0)   /* cannot happen: a shorter backing makes the upper layer ZERO */
            return lsm_error(-EIO, "internal error: empty block status at %llu",
                             (unsigned long long)offset);
        bytes = n;
        if ((st & (LSM_BS_DATA | LSM_BS_ZERO)) || !layer->backing) {
            fill_extent(e, layer, depth, offset, n, st, map);
            return 0;
        }
        layer = layer->backing;
        depth++;
    }
}

void lsm_map_iter_init(struct lsm_map_iter *it, struct lsm_image *img,
                       uint64_t start, uint64_t end, unsigned flags)
{
    it->img = img;
    it->pos = start;
    it->end = MIN(end, img->virtual_size);
    it->flags = flags;
    it->have_next = false;
}

static int iter_probe(struct lsm_map_iter *it, struct lsm_extent *e)
{
    if (it->flags & LSM_MAP_ONE_LAYER) {
        uint64_t n, map;
        int st = layer_status(it->img, it->pos, it->end - it->pos, &n, &map, false);
        if (st < 0)
            return st;
        fill_extent(e, it->img, 0, it->pos, n, st, map);
        return 0;
    }
    return lsm_chain_block_status(it->img, it->pos, it->end - it->pos, e);
}

static bool mergeable(const struct lsm_extent *a, const struct lsm_extent *b)
{
    if (a->flags != b->flags || a->depth != b->depth)
        return false;
    if ((a->flags & LSM_EXT_OFFSET) && a->offset + a->length != b->offset)
        return false;
    return true;
}

int lsm_map_iter_next(struct lsm_map_iter *it, struct lsm_extent *e)
{
    if (!it->have_next) {
        if (it->pos >= it->end)
            return 0;
        int r = iter_probe(it, &it->next);
        if (r < 0)
            return r;
        it->pos += it->next.length;
        it->have_next = true;
    }
    *e = it->next;
    it->have_next = false;
    while (it->pos < it->end) {
        int r = iter_probe(it, &it->next);
        if (r < 0)
            return r;
        it->pos += it->next.length;
        if (mergeable(e, &it->next)) {
            e->length += it->next.length;
            continue;
        }
        it->have_next = true;
        break;
    }
    return 1;
}

int lsm_image_pread_data(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset)
{
    return img->ops->pread_data(img, buf, len, offset);
}

int lsm_image_pread(struct lsm_image *img, void *buf, uint64_t len, uint64_t offset)
{
    if (offset > img->virtual_size || len > img->virtual_size - offset)
        return lsm_error(-EINVAL, "read of %llu bytes at %llu is beyond the end of the image",
                         (unsigned long long)len, (unsigned long long)offset);
    char *p = buf;
    while (len) {
        uint64_t n, map;
        int st = layer_status(img, offset, len, &n, &map, false);
        if (st < 0)
            return st;
        if (st & LSM_BS_ZERO) {
            memset(p, 0, n);
        } else if (st & LSM_BS_DATA) {
            int r = img->ops->pread_data(img, p, n, offset);
            if (r < 0)
                return r;
        } else if (img->backing && offset < img->backing->virtual_size) {
            uint64_t in = MIN(n, img->backing->virtual_size - offset);
            int r = lsm_image_pread(img->backing, p, in, offset);
            if (r < 0)
                return r;
            if (in < n)
                memset(p + in, 0, n - in);
        } else {
            memset(p, 0, n);
        }
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}
