/* File identity: see fileid.h. */
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <linux/loop.h>
#include <linux/major.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "fileid.h"

static void loop_backing(int fd, struct lsm_fileid *id)
{
    struct loop_info64 li;
    if (ioctl(fd, LOOP_GET_STATUS64, &li) == 0) {
        id->has_backing = true;
        id->backing_dev = (dev_t)li.lo_device;
        id->backing_ino = (ino_t)li.lo_inode;
    }
}

static void from_stat(const struct stat *st, struct lsm_fileid *out)
{
    memset(out, 0, sizeof *out);
    out->dev = st->st_dev;
    out->ino = st->st_ino;
    if (S_ISBLK(st->st_mode)) {
        out->blockdev = true;
        out->rdev = st->st_rdev;
    }
}

int lsm_fileid_fd(int fd, const char *name, struct lsm_fileid *out)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat %s", name);
    from_stat(&st, out);
    if (out->blockdev && major(st.st_rdev) == LOOP_MAJOR)
        loop_backing(fd, out);
    return 0;
}

int lsm_fileid_path(const char *path, struct lsm_fileid *out)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            return -ENOENT;
        return lsm_error_errno(-errno, "cannot stat %s", path);
    }
    from_stat(&st, out);
    if (out->blockdev && major(st.st_rdev) == LOOP_MAJOR) {
        /* O_NONBLOCK|O_NOCTTY: never wait on what the path names */
        _cleanup_close_ int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0)
            loop_backing(fd, out);
    }
    return 0;
}

static bool file_is(dev_t dev, ino_t ino, const struct lsm_fileid *f)
{
    return !f->blockdev && f->dev == dev && f->ino == ino;
}

bool lsm_fileid_same(const struct lsm_fileid *a, const struct lsm_fileid *b)
{
    if (a->blockdev && b->blockdev)
        return a->rdev == b->rdev ||
               (a->has_backing && b->has_backing && a->backing_dev == b->backing_dev &&
                a->backing_ino == b->backing_ino);
    if (a->blockdev)
        return a->has_backing && file_is(a->backing_dev, a->backing_ino, b);
    if (b->blockdev)
        return b->has_backing && file_is(b->backing_dev, b->backing_ino, a);
    return a->dev == b->dev && a->ino == b->ino;
}

int lsm_filekey_get(const char *path, struct lsm_filekey *k)
{
    memset(k, 0, sizeof *k);
    int r = lsm_fileid_path(path, &k->id);
    if (r == 0) {
        k->exists = true;
        return 0;
    }
    if (r != -ENOENT)
        return r;
    _cleanup_free_ char *a = strdup(path), *b = strdup(path);
    if (!a || !b)
        return lsm_error(-ENOMEM, "out of memory");
    _cleanup_free_ char *dir = realpath(dirname(a), NULL);
    /* no directory: creating it will fail; the spelling is all there is */
    if (!dir)
        k->where = strdup(path);
    else if (asprintf(&k->where, "%s/%s", dir, basename(b)) < 0)
        k->where = NULL;
    return k->where ? 0 : lsm_error(-ENOMEM, "out of memory");
}

bool lsm_filekey_same(const struct lsm_filekey *a, const struct lsm_filekey *b)
{
    if (a->exists != b->exists)
        return false;
    return a->exists ? lsm_fileid_same(&a->id, &b->id) : !strcmp(a->where, b->where);
}

void lsm_filekey_free(struct lsm_filekey *k)
{
    free(k->where);
    k->where = NULL;
}

int lsm_fileid_set_add(struct lsm_fileid_set *s, const struct lsm_fileid *id, const char *name)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        struct lsm_fileid_entry *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return lsm_error(-ENOMEM, "out of memory");
        s->v = v;
        s->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return lsm_error(-ENOMEM, "out of memory");
    s->v[s->n].id = *id;
    s->v[s->n].name = copy;
    s->n++;
    return 0;
}

int lsm_fileid_set_add_path(struct lsm_fileid_set *s, const char *path)
{
    struct lsm_fileid id;
    int r = lsm_fileid_path(path, &id);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    return lsm_fileid_set_add(s, &id, path);
}

const struct lsm_fileid_entry *lsm_fileid_set_find(const struct lsm_fileid_set *s,
                                                   const struct lsm_fileid *id)
{
    for (size_t i = 0; i < s->n; i++)
        if (lsm_fileid_same(&s->v[i].id, id))
            return &s->v[i];
    return NULL;
}

void lsm_fileid_set_free(struct lsm_fileid_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].name);
    free(s->v);
    memset(s, 0, sizeof *s);
}
