/* Volume chains across storage domains: describe a chain, check that two
 * chains have the same structure, re-create a chain's structure empty in a
 * domain (cloneImageStructure), and the plan of a sync (syncImageData). */
#ifndef LSM_CHAIN_H
#define LSM_CHAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "domain.h"
#include "image.h"

struct lsm_volume_desc {
    char *path;                 /* path of the volume */
    char *name;                 /* volume name: basename of the path */
    enum lsm_format format;
    enum lsm_domain_kind type;  /* file or block (block device) */
    uint64_t virtual_size;
    uint32_t cluster_size;      /* qcow2 */
    unsigned qcow2_version;
    unsigned refcount_bits;
    bool extended_l2;
    bool lazy_refcounts;
    unsigned compression_type;
    char *backing_name;         /* as written in the image */
    enum lsm_format backing_fmt;
    uint64_t used_end;          /* qcow2: end of the last used host cluster; raw: virtual size */
    uint64_t data_bytes;        /* bytes of this layer's own data (present, not zero) */
};

/* Volumes top first: v[0] is the leaf, v[n-1] the base. */
struct lsm_chain_desc {
    unsigned n;
    struct lsm_volume_desc *v;
};

int lsm_chain_describe(const char *top, enum lsm_format fmt, struct lsm_chain_desc *out);
/* The same with lsm_image_open flags (LSM_OPEN_INCOMPLETE_OK for a
 * destination chain that an interrupted sync left incomplete). */
int lsm_chain_describe_flags(const char *top, enum lsm_format fmt, unsigned flags,
                             struct lsm_chain_desc *out);
void lsm_chain_desc_free(struct lsm_chain_desc *c);
/* 0 if b has the structure of a (same number and order of volumes, same
 * formats, virtual sizes and cluster sizes), else -EINVAL with a message
 * naming the first difference. */
int lsm_chain_same_structure(const struct lsm_chain_desc *a, const struct lsm_chain_desc *b);

/* An explicit layout: destination path/format/type per source volume, top
 * first (from --job FILE, or computed from --dst-dir / --dst-vg). */
struct lsm_volume_pair {
    char *src_path;
    enum lsm_format src_fmt;
    char *dst_path;
    enum lsm_format dst_fmt;
    enum lsm_domain_kind dst_type;
    char *dst_backing;          /* backing name written into dst (NULL for the base) */
};

struct lsm_job {
    unsigned n;
    struct lsm_volume_pair *v;  /* top first */
};

/* Parse a JSON job file (docs/chains.md). */
int lsm_job_load(const char *file, struct lsm_job *out);
void lsm_job_free(struct lsm_job *j);
/* Lay the chain out in a domain: same volume names, backing names relative
 * (file) or /dev/VG/NAME (block). */
int lsm_job_for_domain(const struct lsm_chain_desc *src, struct lsm_domain *dom,
                       struct lsm_job *out);

/* Create the destination volumes of job, empty, base first, with the
 * structure of src.  Existing volumes are refused unless reuse (then they
 * are overwritten with empty images).  On failure, volumes created here
 * are removed. */
int lsm_chain_clone(const struct lsm_chain_desc *src, const struct lsm_job *job, bool reuse);

/* Make sure the destination volume of pair p can hold a copy of v: on a
 * block domain, extend the LV to lsm_volume_needed_size(v); on a file
 * domain, nothing to do. */
int lsm_job_ensure_room(const struct lsm_volume_pair *p, const struct lsm_volume_desc *v);

/* Size a block volume needs for a copy of volume v (qcow2: its allocation
 * plus one extension chunk; raw: the virtual size). */
uint64_t lsm_volume_needed_size(const struct lsm_volume_desc *v);

#endif
