/* Linked into every loadable module of this tree (not into the program):
 * the interface the module was built against.  Modules call the program's
 * own functions and share its structures, so a module from another build
 * is refused by lsm_module_symbol() before any of its symbols is used. */
#include "config.h"

__attribute__((visibility("default"))) const char lsm_module_abi[] = LSM_MODULE_ABI;
