/* LVM queries and changes outside a domain's ops table, for the layers
 * above (serve/generation.c keeps volume generations in LV tags).  They run
 * lvm exactly as the block domain does (domain-lvm.c: posix_spawn, no
 * shell, LSM_LVM_CONFIG as --config, LSM_LVM as the binary) and never
 * print: failures are -errno with one message (lsm_error()). */
#ifndef LSM_DOMAINS_LVM_H
#define LSM_DOMAINS_LVM_H

#include <sys/types.h>

/* The VG and LV names (malloc'd) of the active logical volume whose device
 * number is dev, found with "lvs -o vg_name,lv_name,lv_kernel_major,
 * lv_kernel_minor,lv_tags" (the kernel's numbers, not the device's name),
 * and when tags is not NULL its tags as lsm_lvm_lv_tags gives them, from
 * the same lvs.  -ENODEV with a message when no active LV has that
 * number. */
int lsm_lvm_lv_of_devno(dev_t dev, char **vg, char **lv, char **tags);
/* The tags of VG/LV as lvs prints them: comma-separated, no spaces, ""
 * when it has none (malloc'd).  -ENOENT when there is no such LV. */
int lsm_lvm_lv_tags(const char *vg, const char *lv, char **tags);
/* One "lvchange [--deltag del] --addtag add VG/LV": del may be NULL.  LVM
 * 2.03 commits both tag changes in one metadata commit (see
 * docs/serve.md, "Generations"). */
int lsm_lvm_lv_retag(const char *vg, const char *lv, const char *del, const char *add);

#endif
