/* Bench jobs: the options of one job, and their parsers (fio's spelling).
 *
 * A job file is INI in fio's style: [global] sets defaults for the jobs
 * that follow it, every other [section] is a job, `key=value` or a bare
 * boolean `key`, whole-line comments start with '#' or ';'.  On the
 * command line, options before the first --name are global and --name
 * starts a job.  Errors are recorded with lsm_error() as
 * "FILE:LINE: message" (or "--key: message") and returned as -EINVAL. */
#ifndef LSM_BENCH_JOBFILE_H
#define LSM_BENCH_JOBFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

enum bench_rw {
    BENCH_RW_READ,
    BENCH_RW_WRITE,
    BENCH_RW_RANDREAD,
    BENCH_RW_RANDWRITE,
    BENCH_RW_RANDRW,
    BENCH_RW_COPY,        /* read SRC, write the same block to DST */
};

enum bench_mem {
    BENCH_MEM_HUGE,       /* transparent huge pages, as the copy engine's pool */
    BENCH_MEM_PAGES,      /* plain pages (fio's default mem=malloc) */
};

enum bench_verify {
    BENCH_VERIFY_NONE,
    BENCH_VERIFY_PATTERN, /* per-block header (offset, seed) + seeded body */
};

#define BENCH_BSSPLIT_MAX 16

struct bench_bssplit {
    uint64_t bs;
    unsigned pct;
};

/* An option as the job file or command line gave it (for the JSON's
 * "job options", which fio prints as strings). */
struct bench_opt {
    char *key, *value;      /* value NULL: a bare boolean key */
    bool global;            /* from [global] (or before the first --name) */
};

struct bench_job {
    char *name;
    enum bench_rw rw;
    uint64_t bs;
    unsigned iodepth;
    unsigned iodepth_batch_submit;  /* submit every N queued; 0: iodepth */
    enum lsm_io_kind ioengine;
    bool nbd_engine;        /* ioengine=nbd (fio's spelling): filename/uri is an NBD URI */
    bool direct;
    uint64_t size;          /* 0: the size of the existing file/device */
    uint64_t runtime_ns;    /* 0: not bounded by time */
    bool time_based;
    unsigned numjobs;
    char *filename;         /* all but copy */
    char *src, *dst;        /* copy */
    unsigned rwmixread;     /* percent of reads in randrw */
    bool fixedbufs;
    bool registerfiles;
    enum bench_mem mem;
    bool scramble_buffers;  /* fio's default: on */
    enum bench_verify verify;
    char *verify_name;      /* verify= as given (pattern, crc32c, md5: all check the pattern) */
    bool stonewall;         /* wait for the jobs before this one to finish */
    bool new_group;         /* start a new reporting group */
    bool group_reporting;
    bool thread;            /* accepted: clones are always threads */
    char *description;
    uint64_t ramp_time_ns;  /* run this long before measuring */
    bool norandommap;       /* accepted: random offsets are always drawn with replacement */
    bool randrepeat;        /* fio's default 1: the same offsets every run */
    uint64_t offset;        /* start of the region in the file */
    struct bench_bssplit bssplit[BENCH_BSSPLIT_MAX];
    unsigned nbssplit;      /* 0: every request is bs bytes */
    unsigned rate_iops;     /* per clone; 0: unlimited */
    unsigned fsync;         /* fdatasync after every N writes; 0: never */
    bool end_fsync;         /* fsync the file at the end of the job */
    bool invalidate;        /* drop the file's page cache before the job (default 1) */
    bool create_on_open;    /* accepted: files are created in the layout step */
    struct bench_opt *opts; /* as given, global ones first */
    size_t nopts;
    bool allow_mounted_write; /* write to a block device that is mounted or held */
    uint64_t randseed;
    char *origin;           /* "job.fio:12" or "command line", for messages */
};

struct bench_jobs {
    struct bench_job *v;
    size_t n;
};

void bench_job_defaults(struct bench_job *job);
/* Deep copy (strings duplicated). */
int bench_job_copy(struct bench_job *dst, const struct bench_job *src);
void bench_job_clear(struct bench_job *job);
void bench_jobs_free(struct bench_jobs *jobs);

/* Is key a job option (after '-' -> '_' folding)?  Is it boolean? */
bool bench_key_known(const char *key);
bool bench_key_is_bool(const char *key);
/* Set one option; value NULL means a bare key (booleans only).  The error
 * message names the key and value but not the place (callers prefix it). */
int bench_job_set(struct bench_job *job, const char *key, const char *value);
/* Check a complete job; fills src/dst from filename=SRC:DST for copy. */
int bench_job_finish(struct bench_job *job);

/* Parse job file text; path is used in messages only.  Appends to out. */
int bench_jobfile_parse(const char *path, const char *text, struct bench_jobs *out);
/* Read and parse a job file. */
int bench_jobfile_load(const char *path, struct bench_jobs *out);

/* Command-line job options: the "--key=value" arguments in order (without
 * other arguments).  --name starts a job; earlier options are global; with
 * no --name at all, one job named "bench" is made from them. */
int bench_args_parse(int n, char **opts, struct bench_jobs *out);

const char *bench_rw_name(enum bench_rw rw);
/* An NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://, nbd+vsock://,
 * nbds+vsock://): the job works on an NBD export (docs/bench-harness.md). */
bool bench_is_nbd_uri(const char *s);
bool bench_rw_reads(enum bench_rw rw);
bool bench_rw_writes(enum bench_rw rw);
bool bench_rw_random(enum bench_rw rw);
const char *bench_engine_name(enum lsm_io_kind k);

/* Largest request size of the job (bs, or the largest bssplit entry). */
uint64_t bench_job_max_bs(const struct bench_job *job);
/* Smallest request size (the unit of offsets with bssplit). */
uint64_t bench_job_min_bs(const struct bench_job *job);

/* Duration with an optional unit (us, ms, s, m, h, d; default seconds). */
int bench_parse_time(const char *s, uint64_t *ns);
/* 1/0, true/false, yes/no, on/off */
int bench_parse_bool(const char *s, bool *out);

#endif
