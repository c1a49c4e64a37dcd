/* Optional backends as loadable modules.  The backends that need heavy
 * libraries (libvirt, libdevmapper, libnbd) are built as shared modules and
 * loaded only by the commands that use them, so `lsm-sync copy` or `map`
 * start without mapping tens of MiB of libraries (the cold-start cost of an
 * 8 TiB empty copy fell from ~100 ms to ~25 ms).  Modules resolve the
 * project's own functions from whatever holds this code: the executable
 * (which exports everything), or the shared library liblsm-sync, which
 * exports the few they use (LSM_SYNC_PRIVATE in lib/liblsm-sync.map). */
#ifndef LSM_MODULE_H
#define LSM_MODULE_H

/* Address of SYMBOL in module NAME (file lsm-NAME.so), loading it on first
 * use.  Looked for in $LSM_MODULE_DIR, beside the program or the library
 * that holds this code and in its lsm-sync/ folder (the build tree; an
 * installed library's LIBDIR/lsm-sync, wherever it was installed), beside
 * the executable, then in the configured module directory.  A module must
 * carry the interface version this program was built with (lsm_module_abi,
 * from common/module-abi.c); one from another build is refused, and the
 * search stops there.  NULL with a message if the module or the symbol
 * cannot be loaded. */
void *lsm_module_symbol(const char *name, const char *symbol);

/* The same for a plugin built outside this tree against a public header
 * (include/lsm-offload.h), which checks its own interface version: no
 * lsm_module_abi is asked for. */
void *lsm_plugin_symbol(const char *name, const char *symbol);

#endif
