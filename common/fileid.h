/* File identity: is this path (or fd) the same file as that one, whatever
 * path spells it?  The one aliasing check of the project: every command that
 * writes compares each destination with every file of every source chain and
 * with every other destination through this, before opening anything for
 * writing, and again on the opened descriptor (so a rename in between cannot
 * slip past).
 *
 * Identity is (st_dev, st_ino) for regular files and st_rdev for block
 * devices.  A loop device also carries the identity of its backing file
 * (LOOP_GET_STATUS64), so /dev/loopN over a.img aliases a.img.
 */
#ifndef LSM_FILEID_H
#define LSM_FILEID_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct lsm_fileid {
    dev_t dev;          /* st_dev */
    ino_t ino;          /* st_ino */
    dev_t rdev;         /* block devices: st_rdev */
    bool blockdev;
    bool has_backing;   /* loop device: the file behind it */
    dev_t backing_dev;
    ino_t backing_ino;
};

/* Identity of an open descriptor (fstat).  -errno with a message. */
int lsm_fileid_fd(int fd, const char *name, struct lsm_fileid *out);
/* Identity of a path, following symlinks (stat).  -ENOENT (no message
 * recorded) when nothing is there; other errors -errno with a message. */
int lsm_fileid_path(const char *path, struct lsm_fileid *out);
/* Same file (or a loop device and its backing file). */
bool lsm_fileid_same(const struct lsm_fileid *a, const struct lsm_fileid *b);

/* What a path names before anything is written: the identity of the file
 * when it exists, else the place it would be created at (the directory
 * resolved by realpath(3), plus the name as written; the spelling as given
 * when the directory does not resolve).  Two keys are the same file, or the
 * same file to be. */
struct lsm_filekey {
    bool exists;
    struct lsm_fileid id;
    char *where;        /* !exists */
};
/* Fill *k (free with lsm_filekey_free).  -errno with a message. */
int lsm_filekey_get(const char *path, struct lsm_filekey *k);
bool lsm_filekey_same(const struct lsm_filekey *a, const struct lsm_filekey *b);
void lsm_filekey_free(struct lsm_filekey *k);

/* A small set of named identities (source layers, destinations). */
struct lsm_fileid_entry {
    struct lsm_fileid id;
    char *name;
};
struct lsm_fileid_set {
    size_t n, cap;
    struct lsm_fileid_entry *v;
};
/* Add id under name (copied).  -ENOMEM with a message. */
int lsm_fileid_set_add(struct lsm_fileid_set *s, const struct lsm_fileid *id, const char *name);
/* Add what path names (nothing if it does not exist).  -errno otherwise. */
int lsm_fileid_set_add_path(struct lsm_fileid_set *s, const char *path);
/* The entry id aliases, or NULL. */
const struct lsm_fileid_entry *lsm_fileid_set_find(const struct lsm_fileid_set *s,
                                                   const struct lsm_fileid *id);
void lsm_fileid_set_free(struct lsm_fileid_set *s);

#endif
