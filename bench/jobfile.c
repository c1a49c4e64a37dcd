#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "error.h"
#include "jobfile.h"
#include "util.h"

#define BENCH_DEFAULT_SEED 0x5eed1e55ULL

enum key_type { K_STR, K_SIZE, K_UINT, K_BOOL, K_TIME, K_RW, K_ENGINE, K_VERIFY, K_MEM, K_BSSPLIT };

struct key_def {
    const char *name;
    enum key_type type;
    size_t offset;          /* into struct bench_job */
    uint64_t min, max;      /* K_UINT / K_SIZE bounds */
};

#define OFF(f) offsetof(struct bench_job, f)
static const struct key_def keys[] = {
    { "name",              K_STR,    OFF(name),       0, 0 },
    { "rw",                K_RW,     OFF(rw),         0, 0 },
    { "readwrite",         K_RW,     OFF(rw),         0, 0 },
    { "bs",                K_SIZE,   OFF(bs),         1, 1ULL << 30 },
    { "blocksize",         K_SIZE,   OFF(bs),         1, 1ULL << 30 },
    { "iodepth",           K_UINT,   OFF(iodepth),    1, 4096 },
    { "iodepth_batch_submit", K_UINT, OFF(iodepth_batch_submit), 0, 4096 },
    { "iodepth_batch",     K_UINT,   OFF(iodepth_batch_submit), 0, 4096 },
    { "ioengine",          K_ENGINE, OFF(ioengine),   0, 0 },
    { "direct",            K_BOOL,   OFF(direct),     0, 0 },
    { "size",              K_SIZE,   OFF(size),       1, UINT64_MAX },
    { "runtime",           K_TIME,   OFF(runtime_ns), 0, 0 },
    { "time_based",        K_BOOL,   OFF(time_based), 0, 0 },
    { "numjobs",           K_UINT,   OFF(numjobs),    1, 1024 },
    { "filename",          K_STR,    OFF(filename),   0, 0 },
    { "uri",               K_STR,    OFF(filename),   0, 0 },     /* fio's nbd engine */
    { "src",               K_STR,    OFF(src),        0, 0 },
    { "dst",               K_STR,    OFF(dst),        0, 0 },
    { "rwmixread",         K_UINT,   OFF(rwmixread),  0, 100 },
    { "rwmixwrite",        K_UINT,   OFF(rwmixread),  0, 100 },
    { "fixedbufs",         K_BOOL,   OFF(fixedbufs),  0, 0 },
    { "registerfiles",     K_BOOL,   OFF(registerfiles), 0, 0 },
    { "verify",            K_VERIFY, OFF(verify),     0, 0 },
    { "mem",               K_MEM,    OFF(mem),        0, 0 },
    { "scramble_buffers",  K_BOOL,   OFF(scramble_buffers), 0, 0 },
    { "iomem",             K_MEM,    OFF(mem),        0, 0 },
    { "stonewall",         K_BOOL,   OFF(stonewall),  0, 0 },
    { "wait_for_previous", K_BOOL,   OFF(stonewall),  0, 0 },
    { "group_reporting",   K_BOOL,   OFF(group_reporting), 0, 0 },
    { "randseed",          K_UINT,   OFF(randseed),   0, UINT64_MAX },
    { "allow_mounted_write", K_BOOL, OFF(allow_mounted_write), 0, 0 },
    { "new_group",         K_BOOL,   OFF(new_group),  0, 0 },
    { "thread",            K_BOOL,   OFF(thread),     0, 0 },
    { "description",       K_STR,    OFF(description), 0, 0 },
    { "ramp_time",         K_TIME,   OFF(ramp_time_ns), 0, 0 },
    { "norandommap",       K_BOOL,   OFF(norandommap), 0, 0 },
    { "randrepeat",        K_BOOL,   OFF(randrepeat), 0, 0 },
    { "offset",            K_SIZE,   OFF(offset),     0, UINT64_MAX },
    { "bssplit",           K_BSSPLIT, OFF(bssplit),   0, 0 },
    { "rate_iops",         K_UINT,   OFF(rate_iops),  0, 10000000 },
    { "fsync",             K_UINT,   OFF(fsync),      0, UINT32_MAX },
    { "end_fsync",         K_BOOL,   OFF(end_fsync),  0, 0 },
    { "invalidate",        K_BOOL,   OFF(invalidate), 0, 0 },
    { "create_on_open",    K_BOOL,   OFF(create_on_open), 0, 0 },
};
#undef OFF

/* Key with '-' folded to '_' into buf; NULL if too long. */
static const char *fold_key(const char *key, char *buf, size_t len)
{
    size_t n = strlen(key);
    if (n >= len)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        buf[i] = key[i] == '-' ? '_' : key[i];
    return buf;
}

static int parse_uint(const char *s, uint64_t *out);

static const struct key_def *find_key(const char *key)
{
    char buf[64];
    const char *k = fold_key(key, buf, sizeof buf);
    if (!k)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
        if (!strcmp(keys[i].name, k))
            return &keys[i];
    return NULL;
}

bool bench_key_known(const char *key)
{
    return find_key(key) != NULL;
}

bool bench_key_is_bool(const char *key)
{
    const struct key_def *d = find_key(key);
    return d && d->type == K_BOOL;
}

void bench_job_defaults(struct bench_job *job)
{
    memset(job, 0, sizeof *job);
    job->rw = BENCH_RW_READ;
    job->bs = 4096;
    job->iodepth = 1;
    job->iodepth_batch_submit = 1;
    job->ioengine = LSM_IO_AUTO;
    job->numjobs = 1;
    job->rwmixread = 50;
    job->scramble_buffers = true;
    job->randseed = BENCH_DEFAULT_SEED;
    job->randrepeat = true;
    job->invalidate = true;
}

uint64_t bench_job_max_bs(const struct bench_job *job)
{
    uint64_t m = job->nbssplit ? 0 : job->bs;
    for (unsigned i = 0; i < job->nbssplit; i++)
        m = MAX(m, job->bssplit[i].bs);
    return m;
}

uint64_t bench_job_min_bs(const struct bench_job *job)
{
    uint64_t m = job->nbssplit ? UINT64_MAX : job->bs;
    for (unsigned i = 0; i < job->nbssplit; i++)
        m = MIN(m, job->bssplit[i].bs);
    return m;
}

static int dup_str(char **dst, const char *src)
{
    *dst = NULL;
    if (src && !(*dst = strdup(src)))
        return lsm_error(-ENOMEM, "out of memory");
    return 0;
}

int bench_job_copy(struct bench_job *dst, const struct bench_job *src)
{
    *dst = *src;
    dst->name = dst->filename = dst->src = dst->dst = dst->origin = NULL;
    dst->description = dst->verify_name = NULL;
    dst->opts = NULL;
    dst->nopts = 0;
    if (dup_str(&dst->name, src->name) < 0 || dup_str(&dst->filename, src->filename) < 0 ||
        dup_str(&dst->src, src->src) < 0 || dup_str(&dst->dst, src->dst) < 0 ||
        dup_str(&dst->origin, src->origin) < 0 ||
        dup_str(&dst->description, src->description) < 0 ||
        dup_str(&dst->verify_name, src->verify_name) < 0)
        goto nomem;
    if (src->nopts) {
        if (!(dst->opts = calloc(src->nopts, sizeof *dst->opts)))
            goto nomem;
        for (size_t i = 0; i < src->nopts; i++) {
            dst->nopts++;
            dst->opts[i].global = src->opts[i].global;
            if (dup_str(&dst->opts[i].key, src->opts[i].key) < 0 ||
                dup_str(&dst->opts[i].value, src->opts[i].value) < 0)
                goto nomem;
        }
    }
    return 0;
nomem:
    bench_job_clear(dst);
    return lsm_error(-ENOMEM, "out of memory");
}

void bench_job_clear(struct bench_job *job)
{
    free(job->name);
    free(job->filename);
    free(job->src);
    free(job->dst);
    free(job->origin);
    free(job->description);
    free(job->verify_name);
    for (size_t i = 0; i < job->nopts; i++) {
        free(job->opts[i].key);
        free(job->opts[i].value);
    }
    free(job->opts);
    job->opts = NULL;
    job->nopts = 0;
    job->name = job->filename = job->src = job->dst = job->origin = NULL;
    job->description = job->verify_name = NULL;
}

/* Remember key=value as given (a later setting of the same key replaces it). */
static int record_opt(struct bench_job *job, const char *key, const char *value)
{
    size_t i = 0;
    while (i < job->nopts && strcmp(job->opts[i].key, key))
        i++;
    if (i == job->nopts) {
        struct bench_opt *v = realloc(job->opts, (job->nopts + 1) * sizeof *v);
        if (!v)
            return lsm_error(-ENOMEM, "out of memory");
        job->opts = v;
        v[i].key = v[i].value = NULL;
        if (dup_str(&v[i].key, key) < 0)
            return -ENOMEM;
        job->nopts++;
    }
    free(job->opts[i].value);
    job->opts[i].global = false;
    return dup_str(&job->opts[i].value, value);
}

/* fio's bssplit: bs/percent[:bs/percent...]; a missing percent shares
 * what the others leave. */
static int parse_bssplit(struct bench_job *job, const char *key, const char *value)
{
    _cleanup_free_ char *buf = strdup(value);
    if (!buf)
        return lsm_error(-ENOMEM, "out of memory");
    struct bench_bssplit v[BENCH_BSSPLIT_MAX];
    unsigned n = 0, total = 0, unset = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
        if (n == BENCH_BSSPLIT_MAX)
            return lsm_error(-EINVAL, "'%s': at most %d block sizes", key, BENCH_BSSPLIT_MAX);
        char *slash = strchr(tok, '/');
        if (slash)
            *slash++ = '\0';
        uint64_t bs, pct = 0;
        if (lsm_parse_size(tok, &bs) < 0 || bs == 0 || bs > (1ULL << 30) ||
            (slash && *slash && (parse_uint(slash, &pct) < 0 || pct > 100)))
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (like 4k/50:64k/50)", key, value);
        if (!slash || !*slash)
            unset++;
        v[n].bs = bs;
        v[n].pct = slash && *slash ? (unsigned)pct : UINT32_MAX;
        total += v[n].pct == UINT32_MAX ? 0 : (unsigned)pct;
        n++;
    }
    if (n == 0 || total > 100 || (unset == 0 && total != 100))
        return lsm_error(-EINVAL, "bad value for '%s': '%s' (the percentages must add up "
                         "to 100)", key, value);
    unsigned left = 100 - total;
    for (unsigned i = 0; i < n; i++)
        if (v[i].pct == UINT32_MAX)
            v[i].pct = left / unset;
    unsigned sum = 0;   /* the rounding left over goes to the last size */
    for (unsigned i = 0; i < n; i++)
        sum += v[i].pct;
    if (sum < 100)
        v[n - 1].pct += 100 - sum;
    memcpy(job->bssplit, v, n * sizeof *v);
    job->nbssplit = n;
    return 0;
}

void bench_jobs_free(struct bench_jobs *jobs)
{
    for (size_t i = 0; i < jobs->n; i++)
        bench_job_clear(&jobs->v[i]);
    free(jobs->v);
    jobs->v = NULL;
    jobs->n = 0;
}

static int jobs_append(struct bench_jobs *jobs, struct bench_job *job)
{
    struct bench_job *v = realloc(jobs->v, (jobs->n + 1) * sizeof *v);
    if (!v)
        return lsm_error(-ENOMEM, "out of memory");
    jobs->v = v;
    v[jobs->n++] = *job;       /* ownership moves */
    memset(job, 0, sizeof *job);
    return 0;
}

int bench_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off" };
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcasecmp(s, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

int bench_parse_time(const char *s, uint64_t *ns)
{
    static const struct { const char *suffix; uint64_t mult; } units[] = {
        { "", 1000000000ULL }, { "s", 1000000000ULL }, { "sec", 1000000000ULL },
        { "ms", 1000000ULL }, { "msec", 1000000ULL }, { "us", 1000ULL }, { "usec", 1000ULL },
        { "m", 60000000000ULL }, { "min", 60000000000ULL },
        { "h", 3600000000000ULL }, { "d", 86400000000000ULL },
    };
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    for (size_t i = 0; i < ARRAY_SIZE(units); i++)
        if (!strcasecmp(end, units[i].suffix)) {
            if (v > UINT64_MAX / units[i].mult)
                return -ERANGE;
            *ns = (uint64_t)v * units[i].mult;
            return 0;
        }
    return -EINVAL;
}

static int parse_uint(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno == ERANGE)
        return -ERANGE;
    if (*end)
        return -EINVAL;
    *out = v;
    return 0;
}

static const struct { const char *name; enum bench_rw rw; } rw_names[] = {
    { "read", BENCH_RW_READ }, { "write", BENCH_RW_WRITE },
    { "randread", BENCH_RW_RANDREAD }, { "randwrite", BENCH_RW_RANDWRITE },
    { "randrw", BENCH_RW_RANDRW }, { "copy", BENCH_RW_COPY },
};

static const struct { const char *name; enum lsm_io_kind kind; } engine_names[] = {
    { "uring", LSM_IO_URING }, { "io_uring", LSM_IO_URING },
    { "aio", LSM_IO_AIO }, { "libaio", LSM_IO_AIO },
    { "psync", LSM_IO_PSYNC }, { "auto", LSM_IO_AUTO },
};

bool bench_is_nbd_uri(const char *s)
{
    static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://",
                                           "nbd+vsock://", "nbds+vsock://" };
    for (size_t i = 0; s && i < ARRAY_SIZE(schemes); i++)
        if (!strncmp(s, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

const char *bench_rw_name(enum bench_rw rw)
{
    for (size_t i = 0; i < ARRAY_SIZE(rw_names); i++)
        if (rw_names[i].rw == rw)
            return rw_names[i].name;
    return "?";
}

bool bench_rw_reads(enum bench_rw rw)
{
    return rw != BENCH_RW_WRITE && rw != BENCH_RW_RANDWRITE;
}

bool bench_rw_writes(enum bench_rw rw)
{
    return rw != BENCH_RW_READ && rw != BENCH_RW_RANDREAD;
}

bool bench_rw_random(enum bench_rw rw)
{
    return rw == BENCH_RW_RANDREAD || rw == BENCH_RW_RANDWRITE || rw == BENCH_RW_RANDRW;
}

const char *bench_engine_name(enum lsm_io_kind k)
{
    for (size_t i = 0; i < ARRAY_SIZE(engine_names); i++)
        if (engine_names[i].kind == k)
            return engine_names[i].name;
    return "?";
}

static int job_set(struct bench_job *job, const struct key_def *d, const char *key,
                   const char *value);

int bench_job_set(struct bench_job *job, const char *key, const char *value)
{
    const struct key_def *d = find_key(key);
    if (!d)
        return lsm_error(-EINVAL, "unknown key '%s'", key);
    int r = job_set(job, d, key, value);
    if (r < 0)
        return r;
    char buf[64];
    return record_opt(job, fold_key(key, buf, sizeof buf), value);
}

static int job_set(struct bench_job *job, const struct key_def *d, const char *key,
                   const char *value)
{
    void *field = (char *)job + d->offset;

    if (!value) {
        if (d->type != K_BOOL)
            return lsm_error(-EINVAL, "key '%s' needs a value (%s=...)", key, d->name);
        *(bool *)field = true;
        return 0;
    }

    uint64_t v;
    int r;
    switch (d->type) {
    case K_STR: {
        if (!*value)
            return lsm_error(-EINVAL, "empty value for '%s'", key);
        char *copy = strdup(value);
        if (!copy)
            return lsm_error(-ENOMEM, "out of memory");
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case K_SIZE:
        r = lsm_parse_size(value, &v);
        if (r < 0)
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (a size like 4k, 1M or 2G)",
                             key, value);
        if (v < d->min || v > d->max)
            return lsm_error(-EINVAL, "'%s' out of range: '%s'", key, value);
        *(uint64_t *)field = v;
        return 0;
    case K_UINT:
        r = parse_uint(value, &v);
        if (r < 0)
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (a whole number)", key, value);
        if (v < d->min || v > d->max)
            return lsm_error(-EINVAL, "'%s' must be between %" PRIu64 " and %" PRIu64 ", not '%s'",
                             key, d->min, d->max, value);
        if (!strcmp(d->name, "rwmixwrite"))
            v = 100 - v;
        if (d->offset == offsetof(struct bench_job, randseed))
            *(uint64_t *)field = v;
        else
            *(unsigned *)field = (unsigned)v;
        return 0;
    case K_BOOL:
        if (bench_parse_bool(value, (bool *)field) < 0)
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (0 or 1)", key, value);
        return 0;
    case K_TIME:
        if (bench_parse_time(value, &v) < 0)
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (seconds, or a number with "
                             "us, ms, s, m or h)", key, value);
        *(uint64_t *)field = v;
        return 0;
    case K_RW:
        for (size_t i = 0; i < ARRAY_SIZE(rw_names); i++)
            if (!strcmp(value, rw_names[i].name)) {
                job->rw = rw_names[i].rw;
                return 0;
            }
        return lsm_error(-EINVAL, "bad value for '%s': '%s' (read, write, randread, "
                         "randwrite, randrw or copy)", key, value);
    case K_ENGINE:
        job->nbd_engine = !strcmp(value, "nbd");
        if (job->nbd_engine) {
            job->ioengine = LSM_IO_AUTO;
            return 0;
        }
        for (size_t i = 0; i < ARRAY_SIZE(engine_names); i++)
            if (!strcmp(value, engine_names[i].name)) {
                job->ioengine = engine_names[i].kind;
                return 0;
            }
        return lsm_error(-EINVAL, "bad value for '%s': '%s' (uring, aio, psync, auto or nbd)",
                         key, value);
    case K_VERIFY:
        /* crc32c and md5 are accepted for fio's job files: the blocks are
         * checked with the pattern (offset and seed in every block), which
         * finds the same misplaced or corrupt blocks */
        if (!strcmp(value, "pattern") || !strcmp(value, "crc32c") || !strcmp(value, "md5") ||
            !strcmp(value, "crc32c-intel"))
            job->verify = BENCH_VERIFY_PATTERN;
        else if (!strcmp(value, "0") || !strcmp(value, "none"))
            job->verify = BENCH_VERIFY_NONE;
        else
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (pattern, crc32c, md5 or none)",
                             key, value);
        free(job->verify_name);
        job->verify_name = NULL;
        return dup_str(&job->verify_name, value);
    case K_BSSPLIT:
        return parse_bssplit(job, key, value);
    case K_MEM:
        /* fio's names; both huge kinds mean transparent huge pages here */
        if (!strcmp(value, "mmaphuge") || !strcmp(value, "shmhuge") || !strcmp(value, "huge"))
            job->mem = BENCH_MEM_HUGE;
        else if (!strcmp(value, "malloc") || !strcmp(value, "mmap") || !strcmp(value, "shm"))
            job->mem = BENCH_MEM_PAGES;
        else
            return lsm_error(-EINVAL, "bad value for '%s': '%s' (malloc, mmap, shm, mmaphuge, "
                             "shmhuge or huge)", key, value);
        return 0;
    }
    return lsm_error(-EINVAL, "unknown key '%s'", key);
}

int bench_job_finish(struct bench_job *job)
{
    if (!job->name && dup_str(&job->name, "bench") < 0)
        return -ENOMEM;
    if (job->rw == BENCH_RW_COPY) {
        if ((!job->src || !job->dst) && job->filename) {
            char *colon = strchr(job->filename, ':');
            if (!colon || colon == job->filename || !colon[1])
                return lsm_error(-EINVAL, "job '%s': rw=copy needs filename=SRC:DST "
                                 "(or src= and dst=)", job->name);
            if (!job->src && !(job->src = strndup(job->filename, colon - job->filename)))
                return lsm_error(-ENOMEM, "out of memory");
            if (!job->dst && !(job->dst = strdup(colon + 1)))
                return lsm_error(-ENOMEM, "out of memory");
        }
        if (!job->src || !job->dst)
            return lsm_error(-EINVAL, "job '%s': rw=copy needs filename=SRC:DST "
                             "(or src= and dst=)", job->name);
        if (!strcmp(job->src, job->dst))
            return lsm_error(-EINVAL, "job '%s': copy source and destination are the same file",
                             job->name);
        if (job->verify != BENCH_VERIFY_NONE)
            return lsm_error(-EINVAL, "job '%s': verify is not supported with rw=copy",
                             job->name);
    } else if (!job->filename) {
        return lsm_error(-EINVAL, "job '%s': no file to work on (filename=PATH)", job->name);
    }
    bool nbd = job->rw == BENCH_RW_COPY ? bench_is_nbd_uri(job->src) || bench_is_nbd_uri(job->dst)
                                        : bench_is_nbd_uri(job->filename);
    if (job->nbd_engine && !nbd)
        return lsm_error(-EINVAL, "job '%s': ioengine=nbd needs uri= (or filename=) an NBD URI, "
                         "not %s", job->name, job->filename ? job->filename : "a file");
    if (nbd && job->rw == BENCH_RW_COPY)
        return lsm_error(-EINVAL, "job '%s': rw=copy works on files, not on NBD exports",
                         job->name);
    if (nbd && job->fsync)
        return lsm_error(-EINVAL, "job '%s': fsync=N is not supported on an NBD export "
                         "(end_fsync is: one NBD_CMD_FLUSH)", job->name);
    if (nbd && job->verify != BENCH_VERIFY_NONE && !bench_rw_writes(job->rw))
        return lsm_error(-EINVAL, "job '%s': verify on an NBD export needs a job that writes "
                         "(the export is not laid out with the pattern)", job->name);
    if (job->time_based && job->runtime_ns == 0)
        return lsm_error(-EINVAL, "job '%s': time_based needs a runtime", job->name);
    if (job->verify == BENCH_VERIFY_PATTERN && job->bs < 64)
        return lsm_error(-EINVAL, "job '%s': verify=pattern needs bs of at least 64 bytes",
                         job->name);
    if (job->nbssplit && job->verify != BENCH_VERIFY_NONE)
        return lsm_error(-EINVAL, "job '%s': verify is not supported with bssplit", job->name);
    if (job->nbssplit)
        job->bs = bench_job_min_bs(job);
    if (job->nbssplit && (job->offset % job->bs || job->size % job->bs))
        return lsm_error(-EINVAL, "job '%s': with bssplit, offset and size must be multiples of "
                         "the smallest block size (%" PRIu64 ")", job->name, job->bs);
    if (job->offset % job->bs)
        return lsm_error(-EINVAL, "job '%s': offset (%" PRIu64 ") is not a multiple of bs "
                         "(%" PRIu64 ")", job->name, job->offset, job->bs);
    if (job->size && job->size < job->bs)
        return lsm_error(-EINVAL, "job '%s': size (%" PRIu64 ") is smaller than bs (%" PRIu64 ")",
                         job->name, job->size, job->bs);
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Finish the job being built, record where it came from, append it. */
static int close_job(const char *path, unsigned line, struct bench_job *job,
                     struct bench_jobs *out)
{
    char origin[64];
    snprintf(origin, sizeof origin, "%u", line);
    size_t n = strlen(path) + strlen(origin) + 2;
    free(job->origin);
    if (!(job->origin = malloc(n)))
        return lsm_error(-ENOMEM, "out of memory");
    snprintf(job->origin, n, "%s:%s", path, origin);
    int r = bench_job_finish(job);
    if (r < 0) {
        lsm_error_prefix("%s", job->origin);
        return r;
    }
    return jobs_append(out, job);
}

int bench_jobfile_parse(const char *path, const char *text, struct bench_jobs *out)
{
    _cleanup_free_ char *buf = strdup(text);
    if (!buf)
        return lsm_error(-ENOMEM, "out of memory");
    struct bench_job global, job;
    bench_job_defaults(&global);
    bench_job_defaults(&job);
    enum { NONE, GLOBAL, JOB } in = NONE;
    unsigned job_line = 0, lineno = 0;
    size_t njobs = 0;
    int r = 0;

    char *next = buf;
    while (next) {
        char *line = next;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';')
            continue;
        /* a comment after whitespace ends the line */
        for (char *c = s + 1; *c; c++)
            if ((*c == '#' || *c == ';') && isspace((unsigned char)c[-1])) {
                *c = '\0';
                s = trim(s);
                break;
            }

        if (*s == '[') {
            char *end = strchr(s, ']');
            if (!end || end[1]) {
                r = lsm_error(-EINVAL, "%s:%u: malformed section header '%s'", path, lineno, s);
                goto out;
            }
            *end = '\0';
            char *name = trim(s + 1);
            if (!*name) {
                r = lsm_error(-EINVAL, "%s:%u: empty section name", path, lineno);
                goto out;
            }
            if (in == JOB) {
                if ((r = close_job(path, job_line, &job, out)) < 0)
                    goto out;
                njobs++;
            }
            bench_job_clear(&job);
            if (!strcmp(name, "global")) {
                in = GLOBAL;
                continue;
            }
            in = JOB;
            job_line = lineno;
            if ((r = bench_job_copy(&job, &global)) < 0)
                goto out;
            for (size_t i = 0; i < job.nopts; i++)
                job.opts[i].global = true;
            free(job.name);
            if (!(job.name = strdup(name))) {
                r = lsm_error(-ENOMEM, "out of memory");
                goto out;
            }
            continue;
        }

        char *eq = strchr(s, '=');
        char *value = NULL;
        if (eq) {
            *eq = '\0';
            value = trim(eq + 1);
        }
        char *key = trim(s);
        if (!*key) {
            r = lsm_error(-EINVAL, "%s:%u: missing key before '='", path, lineno);
            goto out;
        }
        if (in == NONE) {
            r = lsm_error(-EINVAL, "%s:%u: option '%s' outside of a [section]", path, lineno, key);
            goto out;
        }
        r = bench_job_set(in == GLOBAL ? &global : &job, key, value);
        if (r < 0) {
            lsm_error_prefix("%s:%u", path, lineno);
            goto out;
        }
    }
    if (in == JOB) {
        if ((r = close_job(path, job_line, &job, out)) < 0)
            goto out;
        njobs++;
    }
    if (njobs == 0)
        r = lsm_error(-EINVAL, "%s: no jobs defined (a [name] section)", path);
out:
    bench_job_clear(&job);
    bench_job_clear(&global);
    return r;
}

int bench_jobfile_load(const char *path, struct bench_jobs *out)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return lsm_error_errno(-errno, "cannot open job file %s", path);
    _cleanup_free_ char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            if (cap > 64 * MiB) {
                fclose(f);
                return lsm_error(-EFBIG, "job file %s is too large", path);
            }
            char *t = realloc(text, cap);
            if (!t) {
                fclose(f);
                return lsm_error(-ENOMEM, "out of memory");
            }
            text = t;
        }
        size_t n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    int err = ferror(f) ? -EIO : 0;
    fclose(f);
    if (err)
        return lsm_error_errno(err, "cannot read job file %s", path);
    text[len] = '\0';
    if (memchr(text, '\0', len))
        return lsm_error(-EINVAL, "%s: not a text file", path);
    return bench_jobfile_parse(path, text, out);
}

int bench_args_parse(int n, char **opts, struct bench_jobs *out)
{
    struct bench_job global, job;
    bench_job_defaults(&global);
    bench_job_defaults(&job);
    bool in_job = false;
    int r = 0;

    for (int i = 0; i < n; i++) {
        const char *arg = opts[i];
        if (strncmp(arg, "--", 2) != 0) {
            r = lsm_error(-EINVAL, "'%s': expected --key=value", arg);
            goto out;
        }
        _cleanup_free_ char *key = strdup(arg + 2);
        if (!key) {
            r = lsm_error(-ENOMEM, "out of memory");
            goto out;
        }
        char *value = strchr(key, '=');
        if (value)
            *value++ = '\0';
        if (!strcmp(key, "name")) {
            if (in_job) {
                if ((r = bench_job_finish(&job)) < 0)
                    goto out;
                if ((r = jobs_append(out, &job)) < 0)
                    goto out;
            }
            bench_job_clear(&job);
            if ((r = bench_job_copy(&job, &global)) < 0)
                goto out;
            for (size_t k = 0; k < job.nopts; k++)
                job.opts[k].global = true;
            if (!(job.origin = strdup("command line"))) {
                r = lsm_error(-ENOMEM, "out of memory");
                goto out;
            }
            in_job = true;
        }
        r = bench_job_set(in_job ? &job : &global, key, value);
        if (r < 0) {
            lsm_error_prefix("%s", arg);
            goto out;
        }
    }
    if (!in_job) {
        bench_job_clear(&job);
        if ((r = bench_job_copy(&job, &global)) < 0)
            goto out;
        if (!(job.origin = strdup("command line"))) {
            r = lsm_error(-ENOMEM, "out of memory");
            goto out;
        }
    }
    if ((r = bench_job_finish(&job)) < 0)
        goto out;
    r = jobs_append(out, &job);
out:
    bench_job_clear(&job);
    bench_job_clear(&global);
    return r;
}
