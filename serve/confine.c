/* Domain roots (confine.h). */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "confine.h"
#include "error.h"

int lsm_confine_add_root(struct lsm_confine *c, const char *dir)
{
    char *r = realpath(dir, NULL);
    if (!r)
        return lsm_error_errno(-errno, "domain root %s", dir);
    struct stat st;
    if (stat(r, &st) < 0 || !S_ISDIR(st.st_mode)) {
        free(r);
        return lsm_error(-ENOTDIR, "domain root %s is not a directory", dir);
    }
    char **v = realloc(c->roots, (c->n + 1) * sizeof *v);
    if (!v) {
        free(r);
        return lsm_error(-ENOMEM, "out of memory");
    }
    c->roots = v;
    c->roots[c->n++] = r;
    return 0;
}

void lsm_confine_free(struct lsm_confine *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->roots[i]);
    free(c->roots);
    c->roots = NULL;
    c->n = 0;
}

bool lsm_confine_under(const struct lsm_confine *c, const char *resolved)
{
    if (!c || c->n == 0)
        return true;
    for (size_t i = 0; i < c->n; i++) {
        const char *root = c->roots[i];
        size_t l = strlen(root);
        if (l == 1 && root[0] == '/')
            return true;
        if (!strncmp(resolved, root, l) && (resolved[l] == '\0' || resolved[l] == '/'))
            return true;
    }
    return false;
}

static int resolve(const char *path, bool must_exist, char **out)
{
    char *r = realpath(path, NULL);
    if (r) {
        *out = r;
        return 0;
    }
    int err = errno;
    if (err != ENOENT || must_exist)
        return lsm_error_errno(-err, "%s", path);
    /* A file to be created: its directory, resolved, plus its name. */
    _cleanup_free_ char *d = strdup(path), *b = strdup(path);
    if (!d || !b)
        return lsm_error(-ENOMEM, "out of memory");
    const char *name = basename(b);
    if (!strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, "/"))
        return lsm_error(-EINVAL, "%s: not a file name", path);
    /* A dangling symlink: realpath failed on its target; refuse it rather
     * than create a file wherever it points. */
    struct stat st;
    if (lstat(path, &st) == 0)
        return lsm_error(-EACCES, "%s is a dangling symbolic link", path);
    char *rd = realpath(dirname(d), NULL);
    if (!rd)
        return lsm_error_errno(-errno, "directory of %s", path);
    char *full = NULL;
    int n = asprintf(&full, "%s%s%s", rd, strcmp(rd, "/") ? "/" : "", name);
    free(rd);
    if (n < 0)
        return lsm_error(-ENOMEM, "out of memory");
    *out = full;
    return 0;
}

int lsm_confine_path(const struct lsm_confine *c, const char *path, bool must_exist,
                     char **resolved)
{
    char *r = NULL;
    int ret = resolve(path, must_exist, &r);
    if (ret < 0)
        return ret;
    if (!lsm_confine_under(c, r)) {
        ret = strcmp(r, path) ? lsm_error(-EACCES, "%s (%s) is outside the domain roots", path, r)
                              : lsm_error(-EACCES, "%s is outside the domain roots", path);
        free(r);
        return ret;
    }
    *resolved = r;
    return 0;
}

static int same_file(int fd, const char *resolved)
{
    struct stat a, b;
    if (fstat(fd, &a) < 0)
        return lsm_error_errno(-errno, "%s", resolved);
    if (stat(resolved, &b) < 0)
        return lsm_error_errno(-errno, "%s", resolved);
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return lsm_error(-EACCES, "%s changed while it was being checked", resolved);
    return 0;
}

int lsm_confine_chain(const struct lsm_confine *c, const char *top, enum lsm_format fmt,
                      unsigned open_flags)
{
    _cleanup_free_ char *path = strdup(top);
    if (!path)
        return lsm_error(-ENOMEM, "out of memory");
    for (unsigned depth = 0; path; depth++) {
        if (depth > 256)
            return lsm_error(-ELOOP, "%s: backing chain longer than 256 layers", top);
        _cleanup_free_ char *resolved = NULL;
        int r = lsm_confine_path(c, path, true, &resolved);
        if (r < 0) {
            if (depth)
                lsm_error_prefix("backing file of %s", top);
            return r;
        }
        struct lsm_image *img = NULL;
        r = lsm_image_open(resolved, fmt, LSM_OPEN_NO_BACKING | LSM_OPEN_FORCE_SHARE | open_flags, &img);
        if (r < 0)
            return r;
        r = same_file(img->fd, resolved);
        if (r == 0 && img->data_fd >= 0 && img->data_fd != img->fd) {
            _cleanup_free_ char *dres = NULL;
            const char *dn = img->data_filename ? img->data_filename : img->filename;
            r = lsm_confine_path(c, dn, true, &dres);
            if (r == 0)
                r = same_file(img->data_fd, dres);
            if (r < 0)
                lsm_error_prefix("external data file of %s", img->filename);
        }
        char *next = NULL;
        if (r == 0 && img->backing_name) {
            /* Resolved the way the chain's open resolves it. */
            int err = 0;
            next = lsm_resolve_backing(img->filename, img->backing_name, &err);
            if (!next)
                r = err < 0 ? err : -EINVAL;
            else if (img->backing_fmt == LSM_FMT_AUTO)
                r = lsm_error(-EINVAL, "%s: the backing file %s has no format in the image "
                              "(the service does not probe formats)", img->filename, next);
            fmt = img->backing_fmt;
        }
        lsm_image_close(img);
        if (r < 0) {
            free(next);
            return r;
        }
        free(path);
        path = next;
    }
    return 0;
}
