#include <dlfcn.h>
#include <limits.h>
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

void *lsm_module_symbol(const char *name, const char *symbol)
{
    lsm_error(-ENOENT, "module lsm-%s.so not found (looked in $LSM_MODULE_DIR, beside the program and in %s)",
              name, LSM_MODULE_DIR);
    void *h = NULL;
    const char *env = getenv("LSM_MODULE_DIR");
    if (env && *env)
        h = try_open(env, name);
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
