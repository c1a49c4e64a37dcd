/* The watermark extender's policy: when to extend a thin volume, to what
 * size, what to do after a failure, and when a VM paused for lack of space
 * may run again.  Pure (no I/O, no clock, no threads): the extender
 * (extender.h), the simulation (bench/extend-sim.c) and the unit tests call
 * the same functions with the same numbers.
 *
 * Terms, per volume ("side": the source top of a drive, or the destination
 * of its mirror):
 *   allocation  highest offset written (QEMU's write high-water mark; for a
 *               qcow2 on a block device, how much of the device it uses)
 *   physical    the size of the volume now (LV or loop device size)
 *   capacity    the guest-visible (virtual) size
 *   headroom    how much free space (physical - allocation) must remain;
 *               below it, the volume is extended
 *   threshold   physical - headroom: the allocation at which libvirt's
 *               BLOCK_THRESHOLD event must fire
 *
 * Headroom is adaptive: the larger of the configured watermark and
 *     rate x latency x safety
 * where rate is the side's recent write rate (bytes/s, measured from its
 * own allocation, guest or mirror) and latency the recent extension latency
 * (event to re-armed threshold).  So the guest keeps writing during an
 * extension at any rate the measurements have seen, with a margin.
 *
 * Next size: max(physical + chunk, allocation + growth + headroom + chunk),
 * rounded up to the extent size and capped at the maximum size (1.1 x
 * capacity, or a full image's `qemu-img measure` size when the caller knows
 * it, rounded up to the extent), where growth (rate x latency x safety, no
 * minimum) is what the side may write while this extension runs: the
 * headroom and a chunk are still free when it ends, so a slow extension
 * does not leave the next one starting late.  A volume at its maximum is
 * never extended. */
#ifndef LSM_EXTEND_POLICY_H
#define LSM_EXTEND_POLICY_H

#include <stdbool.h>
#include <stdint.h>

struct lsm_extend_policy {
    uint64_t chunk;             /* bytes added per extension (1 GiB) */
    uint64_t chunk_replicating; /* the same while a mirror runs (2 GiB) */
    uint64_t watermark;         /* minimum headroom (512 MiB) */
    uint64_t watermark_replicating; /* the same while a mirror runs (3 GiB):
                                 * a burst that comes after an idle spell
                                 * finds no measured rate to plan with */
    double safety;              /* factor on rate x latency (2.0) */
    uint64_t extent;            /* sizes are multiples of this (LVM: 128 MiB
                                 * in oVirt's VGs; 4 MiB is LVM's default);
                                 * a power of two */
    double max_ratio;           /* maximum size = max_ratio x capacity (1.1) */
    unsigned max_retries;       /* transient failures retried this often (5) */
    uint64_t retry_base_ns;     /* first retry after this (0.5 s) ... */
    uint64_t retry_max_ns;      /* ... doubling up to this (8 s) */
    uint64_t rate_window_ns;    /* write rate measured over this window (2 s) */
    uint64_t rate_hold_ns;      /* ... and its peak remembered this long (60 s),
                                 * so that a burst after a pause in the writes
                                 * finds the headroom the last one needed */
    uint64_t default_latency_ns;/* latency assumed before one is measured (6 s:
                                 * the slow end of what vdsm measured) */
};

/* The defaults above. */
void lsm_extend_policy_default(struct lsm_extend_policy *p);
/* -EINVAL with a message for a policy that cannot work (zero chunk, extent
 * not a power of two, safety < 1, ...). */
int lsm_extend_policy_check(const struct lsm_extend_policy *p);

/* The chunk to use. */
uint64_t lsm_extend_chunk(const struct lsm_extend_policy *p, bool replicating);

/* Headroom for a side writing rate_bps bytes/s with extensions taking
 * latency_ns (0: default_latency_ns). */
uint64_t lsm_extend_headroom(const struct lsm_extend_policy *p, double rate_bps,
                             uint64_t latency_ns, bool replicating);

/* What a side writing rate_bps bytes/s may write while one extension
 * taking latency_ns (0: default_latency_ns) runs, with the safety factor:
 * rate x latency x safety, 0 with no measured rate (the headroom's
 * watermark covers that). */
uint64_t lsm_extend_growth(const struct lsm_extend_policy *p, double rate_bps,
                           uint64_t latency_ns);

/* Largest size a volume of this capacity may reach: measured (a full
 * image's size from `qemu-img measure`, 0 if unknown) or max_ratio x
 * capacity, rounded up to the extent. */
uint64_t lsm_extend_max_size(const struct lsm_extend_policy *p, uint64_t capacity,
                             uint64_t measured);

/* The `measured` to pass above for a qcow2 whose header gives full_size
 * (lsm_qcow2_full_size_of: 0 when unknown) and image_capacity: full_size
 * plus a margin of capacity / 256 (at least 1 MiB: metadata moved while the
 * old copy is still held, a layout another writer left), or 0 (use the
 * ratio) when anything does not add up: no full size, the header's
 * capacity not the one libvirt reports (a resize since), or an allocation
 * already past the full size.  A cap too small would pause the guest for
 * ever at it, so every doubt falls back to the ratio. */
uint64_t lsm_extend_measured(uint64_t capacity, uint64_t full_size, uint64_t image_capacity,
                             uint64_t allocation);

/* May a volume holding an image of this format (libvirt's <driver type=>,
 * NULL when unknown) be extended?  Not a raw one: its size is the guest's
 * disk size, so growing it would only hold space the guest never sees (a
 * raw LV past a threshold would go to 1.1 x its size).  Anything else
 * (qcow2, unknown) may: not growing a qcow2 would pause its guest. */
bool lsm_extend_format_grows(const char *format);

/* Threshold to arm: physical - headroom (at least 1; 0 means "no threshold":
 * the volume is at its maximum size). */
uint64_t lsm_extend_threshold(uint64_t physical, uint64_t headroom, uint64_t max_size);

/* Does the side need an extension now?  (allocation past the threshold, an
 * event said so, and it is below its maximum size.) */
bool lsm_extend_needed(uint64_t allocation, uint64_t physical, uint64_t headroom,
                       uint64_t max_size, bool exceeded_event);

/* The size to extend to, planning `growth` (lsm_extend_growth) for the
 * writes during the extension; returns physical when the volume is at its
 * maximum. */
uint64_t lsm_extend_next_size_growing(const struct lsm_extend_policy *p, uint64_t allocation,
                                      uint64_t physical, uint64_t headroom, uint64_t growth,
                                      uint64_t max_size, bool replicating);
/* The same with no growth planned (nothing measured yet: a new volume). */
uint64_t lsm_extend_next_size(const struct lsm_extend_policy *p, uint64_t allocation,
                              uint64_t physical, uint64_t headroom, uint64_t max_size,
                              bool replicating);

/* The size to create a volume with that has `allocation` bytes in use now
 * and will be watched by the extender: what its first extension would make
 * it (allocation + headroom + chunk, headroom planned with no measured
 * rate), so that the extender does not start out late. */
uint64_t lsm_extend_initial_size(const struct lsm_extend_policy *p, uint64_t allocation,
                                 uint64_t capacity, bool replicating);

/* ---- failures ---- */

enum lsm_extend_failure {
    LSM_EXTEND_FAIL_NONE = 0,
    LSM_EXTEND_FAIL_TRANSIENT,  /* retry with backoff */
    LSM_EXTEND_FAIL_NO_SPACE,   /* the VG, pool or file system is full: fail fast */
    LSM_EXTEND_FAIL_FATAL,      /* cannot succeed by retrying (no such volume,
                                 * permission, bad configuration) */
};

const char *lsm_extend_failure_name(enum lsm_extend_failure f);
/* Classify the -errno an extension backend returned. */
enum lsm_extend_failure lsm_extend_classify(int err);
/* Delay before retry number `attempt` (1-based) of a transient failure, or
 * 0 when no more retries are allowed. */
uint64_t lsm_extend_retry_delay(const struct lsm_extend_policy *p, unsigned attempt);

/* ---- duplicate events ---- */

/* One side's event state.  Events that arrive while an extension of the
 * side runs are merged into it (counted, not queued): when it ends, the
 * allocation is checked again, which covers whatever they reported. */
struct lsm_extend_trigger {
    bool pending;        /* an event or a check asked for an extension */
    bool running;        /* an extension is in progress */
    unsigned merged;     /* events merged into a running or pending one */
};

/* An event (or a failed check) asks for an extension.  Returns true if the
 * caller must start one (nothing pending or running before). */
bool lsm_extend_trigger_event(struct lsm_extend_trigger *t);
/* The caller starts the extension it was asked for. */
void lsm_extend_trigger_start(struct lsm_extend_trigger *t);
/* The extension ended (whatever its result). */
void lsm_extend_trigger_done(struct lsm_extend_trigger *t);

/* ---- recent write rate ---- */

#define LSM_EXTEND_RATE_SAMPLES 32

/* (time, allocation) samples of one side; the rate is the growth over the
 * samples in the window. */
struct lsm_extend_rate {
    uint64_t t[LSM_EXTEND_RATE_SAMPLES];
    uint64_t alloc[LSM_EXTEND_RATE_SAMPLES];
    unsigned n, head;
    double peak_bps;            /* lsm_extend_rate_add's peak hold */
    uint64_t peak_t;
};

/* Add a sample, and update the held peak: the largest rate over
 * p->rate_window_ns seen in the last p->rate_hold_ns. */
void lsm_extend_rate_add(struct lsm_extend_rate *r, const struct lsm_extend_policy *p,
                         uint64_t now_ns, uint64_t allocation);
/* The rate the headroom is planned for: the held peak. */
double lsm_extend_rate_recent(const struct lsm_extend_rate *r);
/* Bytes/s over the samples within window_ns of the newest (0 with fewer
 * than two samples or no growth). */
double lsm_extend_rate_bps(const struct lsm_extend_rate *r, uint64_t window_ns);

/* How long to wait before the next sample of a side: poll_ns, but a fifth
 * of it until the side has LSM_EXTEND_RATE_WARM samples, so that a rate is
 * known a fraction of the poll interval after the extender starts watching
 * (a guest writing fast from the start would otherwise have a whole poll
 * interval of headroom planned with no rate: the configured watermark). */
#define LSM_EXTEND_RATE_WARM 5
uint64_t lsm_extend_poll_ns(const struct lsm_extend_rate *r, uint64_t poll_ns);

/* Recent extension latency: the largest of the last few (a slow LVM is the
 * one to plan for), 0 (plan with the default) until LSM_EXTEND_LAT_MIN have
 * been measured: one fast extension says little about the next. */
#define LSM_EXTEND_LAT_SAMPLES 8
#define LSM_EXTEND_LAT_MIN 3
struct lsm_extend_latency {
    uint64_t ns[LSM_EXTEND_LAT_SAMPLES];
    unsigned n, head;
};
void lsm_extend_latency_add(struct lsm_extend_latency *l, uint64_t ns);
uint64_t lsm_extend_latency_recent(const struct lsm_extend_latency *l);

/* ---- resuming a VM paused for lack of space ---- */

struct lsm_extend_resume_drive {
    bool paused_enospc;     /* an ENOSPC I/O error on this drive paused the VM */
    bool paused_other;      /* another I/O error on this drive */
    bool managed;           /* the extender watches and extends this drive */
    bool extended;          /* the extender extended it since the pause */
    uint64_t free_bytes;    /* physical - allocation now (the tightest side) */
    uint64_t headroom;      /* the headroom the policy asks for */
    bool at_max;            /* the volume is at its maximum size */
    bool failed;            /* extending it failed for good */
};

/* May the VM be resumed?  Only if it paused for ENOSPC, each drive that
 * reported an error reported ENOSPC, is one the extender manages and has
 * extended since, and every such drive now has its headroom.  *why (may be
 * NULL) says why not. */
bool lsm_extend_may_resume(const struct lsm_extend_resume_drive *d, unsigned n,
                           const char **why);

#endif
