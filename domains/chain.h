/* Volume chains across storage domains: describe a chain, check that two
 * chains have the same structure, re-create a chain's structure empty in a
 * domain (cloneImageStructure), and the plan of a sync (syncImageData). */
#ifndef LSM_CHAIN_H
#define LSM_CHAIN_H

#include <stdbool.h>
#include <stdint.h>

#include <signal.h>

#include "domain.h"
#include "fileid.h"
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
    struct lsm_fileid id;       /* identity of the file opened as this volume */
};

/* Volumes top first: v[0] is the leaf, v[n-1] the base. */
struct lsm_chain_desc {
    unsigned n;
    struct lsm_volume_desc *v;
    struct lsm_fileid_set ids;  /* every file of the chain (lsm_image_add_ids) */
};

/* Describe the chain from top (metadata and each layer's map, with the
 * identities of the files opened: v[i].id, ids), then close it.  Opened
 * with LSM_OPEN_FORCE_SHARE, as `qemu-img info -U` reads: the leaf of a live
 * chain is held for writing by its VM while clone-structure and sync
 * --type=INTERNAL run; what is copied is locked by lsm_copy. */
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
    bool dst_type_given;        /* job file: "type" was there (else file, or for sync what is there) */
    char *dst_backing;          /* backing name written into dst (NULL for the base) */
};

struct lsm_jobfile {
    unsigned n;
    struct lsm_volume_pair *v;  /* top first */
};

/* Parse a JSON job file (docs/chains.md).  Only the syntax: what the
 * entries name is checked by lsm_jobfile_check_sources/_destinations/_chain. */
int lsm_jobfile_load(const char *file, struct lsm_jobfile *out);
void lsm_jobfile_free(struct lsm_jobfile *j);
/* Lay the chain out in a domain: same volume names, backing names relative
 * (file) or /dev/VG/NAME (block). */
int lsm_jobfile_for_domain(const struct lsm_chain_desc *src, struct lsm_domain *dom,
                       struct lsm_jobfile *out);

/* The identity checks, run before anything is opened for writing.  Each
 * returns 0, or -EINVAL with one message naming the offending entry.
 *
 * _sources: job has one entry per volume of src, and entry i's source is
 * the file opened as src->v[i] (by device and inode, whatever path spells
 * it).
 * _destinations: no destination is a file of src (src->ids: every layer
 * and external data file), no two destinations are one file, every one
 * that exists is a regular file or a block device, and every block
 * destination is named /dev/VG/LV.
 * Destinations that do not exist yet are compared by the resolved path of
 * their directory plus their name.
 * _chain (sync): the destinations form one chain, in order: dst is the
 * chain described from job->v[0].dst_path, and entry i's destination is
 * the file opened as dst->v[i], i.e. the backing file of entry i-1's
 * destination as QEMU resolves it; the chain has exactly job->n volumes;
 * a format or type the job gives is what is there. */
int lsm_jobfile_check_sources(const struct lsm_chain_desc *src, const struct lsm_jobfile *job);
int lsm_jobfile_check_destinations(const struct lsm_chain_desc *src, const struct lsm_jobfile *job);
int lsm_jobfile_check_chain(const struct lsm_jobfile *job, const struct lsm_chain_desc *dst);

/* Create the destination volumes of job, empty, base first, with the
 * structure of src.  Existing volumes are refused unless reuse (then they
 * are overwritten with empty images); a volume that turns out, once
 * opened, to be a file of src is refused.  When *cancel becomes non-zero
 * (a signal handler; cancel may be NULL), it stops at the next step with
 * -EINTR.  On any failure, the volumes this call created (and only those:
 * created with O_EXCL, or LVs it made) are removed. */
int lsm_chain_clone(const struct lsm_chain_desc *src, const struct lsm_jobfile *job, bool reuse,
                    const volatile sig_atomic_t *cancel);
/* The same, the top volume on a block domain made top_min bytes (never
 * less than its source's used end; 0: lsm_volume_needed_size): a leaf the
 * guest will write and an extender grows, sized by the extender's policy
 * (lsm_extend_initial_size) instead of one LSM_BLOCK_CHUNK more. */
int lsm_chain_clone_sized(const struct lsm_chain_desc *src, const struct lsm_jobfile *job,
                          bool reuse, const volatile sig_atomic_t *cancel, uint64_t top_min);

/* Make sure the destination volume of pair p can hold a copy of v: on a
 * block domain, extend the LV to lsm_volume_needed_size(v); on a file
 * domain, nothing to do. */
int lsm_jobfile_ensure_room(const struct lsm_volume_pair *p, const struct lsm_volume_desc *v);

/* Size a block volume needs for a copy of volume v (qcow2: its allocation
 * plus one extension chunk; raw: the virtual size). */
uint64_t lsm_volume_needed_size(const struct lsm_volume_desc *v);

#endif
