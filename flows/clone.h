/* clone-structure (cloneImageStructure) as a library: re-create a chain's
 * structure, empty, in another storage domain.
 *
 * Library layer: never prints. */
#ifndef LSM_FLOWS_CLONE_H
#define LSM_FLOWS_CLONE_H

#include <signal.h>
#include <stdbool.h>

#include "chain.h"

struct lsm_extend_policy;

struct lsm_clone_opts {
    const char *src_top;            /* NULL with a job file: its first source */
    enum lsm_format src_fmt;        /* AUTO probes */
    /* The destination: a job file (docs/chains.md) naming every volume, or
     * a domain (a directory, or an LVM volume group) where the volumes
     * keep their names. */
    const char *jobfile;
    enum lsm_domain_kind dst_kind;
    const char *dst_domain;
    bool reuse;                     /* overwrite existing destination volumes (never a source) */
    const volatile sig_atomic_t *cancel;  /* set non-zero to stop (then nothing is left behind) */
    /* Non-NULL: the top is a leaf the extender will watch (migrate); on a
     * block domain it is made as large as this policy's first extension
     * of the source top's allocation would make it. */
    const struct lsm_extend_policy *top_policy;
};

/* Check everything, then create the destination volumes (lsm_chain_clone).
 * On return, *src describes the source chain and *job the volume pairs,
 * top first (as far as they were made; free both with
 * lsm_chain_desc_free and lsm_jobfile_free, whatever the result).  Returns
 * 0 or -errno with a message; on failure nothing this call created is left
 * (-EINTR when cancelled). */
int lsm_clone_structure(const struct lsm_clone_opts *o, struct lsm_chain_desc *src,
                        struct lsm_jobfile *job);

#endif
