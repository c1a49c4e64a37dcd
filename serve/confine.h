/* Domain roots (--domain-root): with at least one root, every file the
 * service reads or writes for a task must resolve (realpath(3): symlinks
 * followed, "..", "." removed) to a path under one of them.
 *
 * A path that does not exist yet (a destination to create) is resolved as
 * the realpath of its directory plus its name.  A chain is checked layer
 * by layer before each layer is opened: the top, then the backing file as
 * QEMU resolves it, before anything is read from it; an external data file
 * is checked as soon as its layer is open (it is opened then, not read).
 * After each open the descriptor is compared with the resolved path
 * (device and inode), so a file swapped between the check and the open is
 * refused too.  What is checked is a snapshot: a symlink changed between
 * this check and the copy's own open is the one window left (docs/serve.md).
 *
 * Library layer: never prints. */
#ifndef LSM_SERVE_CONFINE_H
#define LSM_SERVE_CONFINE_H

#include <stdbool.h>
#include <stddef.h>

#include "image.h"

struct lsm_confine {
    char **roots;     /* resolved */
    size_t n;
};

/* Add a root (must be an existing directory).  -errno with a message. */
int lsm_confine_add_root(struct lsm_confine *c, const char *dir);
void lsm_confine_free(struct lsm_confine *c);
/* True if resolved (an absolute, resolved path) is a root or under one.
 * No roots: true. */
bool lsm_confine_under(const struct lsm_confine *c, const char *resolved);
/* Resolve path (must_exist: it must exist; else its directory must) and
 * check it: 0 with *resolved (malloc'd) or -EACCES with a message naming
 * the path and where it leads; other -errno from resolving. */
int lsm_confine_path(const struct lsm_confine *c, const char *path, bool must_exist,
                     char **resolved);
/* Check every file of the chain under top (format fmt, explicit; each
 * backing layer's format must be written in its image, as the service does
 * not probe), opened read-only with force-share and open_flags (e.g.
 * LSM_OPEN_INCOMPLETE_OK for a destination chain).  0, -EACCES, -EINVAL
 * for a backing file without a format, or the open's error.  Without
 * roots only the formats are checked. */
int lsm_confine_chain(const struct lsm_confine *c, const char *top, enum lsm_format fmt,
                      unsigned open_flags);

#endif
