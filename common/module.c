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

/* Open DIR/lsm-NAME.so: 1 with *h set, 0 if there is no such file, <0 if
 * it is there but cannot be used (then the search stops: a module found
 * first and refused is not silently replaced by one further down). */
static int try_open(const char *dir, const char *name, bool ours, void **h)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/lsm-%s.so", dir, name) >= (int)sizeof path)
        return 0;
    if (access(path, R_OK) != 0)
        return 0;
    *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*h)
        return lsm_error(-ENOEXEC, "cannot load module %s: %s", path, dlerror());
    if (!ours)
        return 1;   /* a plugin: its own interface version says */
    /* Built by this build's rules (common/module-abi.c) for this program's
     * interface, or refused before anything of it runs. */
    const char *abi = dlsym(*h, "lsm_module_abi");
    if (!abi || strcmp(abi, LSM_MODULE_ABI)) {
        int r = lsm_error(-ENOEXEC, "cannot load module %s: it was built for %s%s, this program "
                          "is lsm-sync %s", path, abi ? "lsm-sync " : "",
                          abi ? abi : "no lsm-sync interface", LSM_MODULE_ABI);
        dlclose(*h);
        *h = NULL;
        return r;
    }
    return 1;
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

static void *find_symbol(const char *name, const char *symbol, bool ours)
{
    void *h = NULL;
    int r = 0;
    const char *env = getenv("LSM_MODULE_DIR");
    if (env && *env)
        r = try_open(env, name, ours, &h);
    if (r == 0) {
        char dir[PATH_MAX], sub[PATH_MAX];
        if (self_dir(dir, sizeof dir)) {
            r = try_open(dir, name, ours, &h);
            /* the library installed in LIBDIR, the modules in LIBDIR/lsm-sync
             * (also under a meson install --destdir) */
            if (r == 0 && snprintf(sub, sizeof sub, "%s/lsm-sync", dir) < (int)sizeof sub)
                r = try_open(sub, name, ours, &h);
        }
    }
    if (r == 0) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash) {
                *slash = '\0';
                r = try_open(exe, name, ours, &h);
            }
        }
    }
    if (r == 0)
        r = try_open(LSM_MODULE_DIR, name, ours, &h);
    if (r == 0)
        lsm_error(-ENOENT, "module lsm-%s.so not found (looked in $LSM_MODULE_DIR, beside the "
                  "program or library, in its lsm-sync/ folder and in %s)", name, LSM_MODULE_DIR);
    if (r <= 0)
        return NULL;
    void *sym = dlsym(h, symbol);
    if (!sym)
        lsm_error(-ENOEXEC, "module lsm-%s.so has no %s", name, symbol);
    return sym;
}

void *lsm_module_symbol(const char *name, const char *symbol)
{
    return find_symbol(name, symbol, true);
}

void *lsm_plugin_symbol(const char *name, const char *symbol)
{
    return find_symbol(name, symbol, false);
}
