#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "module.h"

static void *try_open(const char *dir, const char *name)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/lsm-%s.so", dir, name) >= (int)sizeof path)
        return NULL;
    if (access(path, R_OK) != 0)
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        lsm_error(-ENOEXEC, "cannot load module %s: %s", path, dlerror());
    return h;
}

/* The directory of the object that holds this code: the program, or the
 * shared library liblsm-sync when a program of its own links that.  The
 * library, when that is what holds this code, is made global first: a
 * module resolves the project's functions (the LSM_SYNC_PRIVATE names of
 * lib/liblsm-sync.map) from the global scope, and a program may have
 * loaded the library with dlopen(RTLD_LOCAL). */
static bool self_dir(char *dir, size_t len)
{
    Dl_info info;
    if (!dladdr((void *)lsm_module_symbol, &info) || !info.dli_fname || !strchr(info.dli_fname, '/'))
        return false;
    if (snprintf(dir, len, "%s", info.dli_fname) >= (int)len)
        return false;
    /* A library already loaded: made global (no second copy is loaded).
     * For the program this finds nothing, which is fine: it is global. */
    void *self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
    (void)self;    /* kept: the modules loaded below keep needing it */
    *strrchr(dir, '/') = '\0';
    return true;
}

void *lsm_module_symbol(const char *name, const char *symbol)
{
    lsm_error(-ENOENT, "module lsm-%s.so not found (looked in $LSM_MODULE_DIR, beside the program "
              "or library, in its lsm-sync/ folder and in %s)", name, LSM_MODULE_DIR);
    void *h = NULL;
    const char *env = getenv("LSM_MODULE_DIR");
    if (env && *env)
        h = try_open(env, name);
    if (!h) {
        char dir[PATH_MAX], sub[PATH_MAX];
        if (self_dir(dir, sizeof dir)) {
            h = try_open(dir, name);
            /* the library installed in LIBDIR, the modules in LIBDIR/lsm-sync
             * (also under a meson install --destdir) */
            if (!h && snprintf(sub, sizeof sub, "%s/lsm-sync", dir) < (int)sizeof sub)
                h = try_open(sub, name);
        }
    }
    if (!h) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash) {
                *slash = '\0';
                h = try_open(exe, name);
            }
        }
    }
    if (!h)
        h = try_open(LSM_MODULE_DIR, name);
    if (!h)
        return NULL;
    void *sym = dlsym(h, symbol);
    if (!sym)
        lsm_error(-ENOEXEC, "module lsm-%s.so has no %s", name, symbol);
    return sym;
}
