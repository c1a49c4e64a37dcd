/* The journal of one copy job: see journal.h for the contract and
 * docs/resume.md for the format.
 *
 * Document (one JSON object, strict syntax):
 *   {"lsm-sync-journal": 1, "size": N, "granule": N, "frontier": N,
 *    "options": {...}, "files": [{"role": S, "path": S, "dev": HEX,
 *    "ino": HEX, "size": N, "mtime_ns": N, "hash": HEX, "probes": [N, ...]}, ...],
 *    "done": [[FIRST_GRANULE, COUNT], ...]}
 * then lines "reached HEX16 CHECK8\n" (CHECK8: the low 32 bits of a hash
 * of the offset, so that a torn line is recognised).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <dirent.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "journal.h"
#include "json-util.h"
#include "util.h"

#define MAX_JOURNAL_BYTES (512u * 1024 * 1024)
#define MAX_ROLE 64
#define MAX_PATH_LEN 4096

static bool bit_test(const struct lsm_journal *j, uint64_t i)
{
    return (j->bits[i / 64] >> (i % 64)) & 1;
}

static void bit_set(struct lsm_journal *j, uint64_t i)
{
    j->bits[i / 64] |= 1ULL << (i % 64);
}

static uint32_t line_check(uint64_t off)
{
    uint64_t h = off ^ 0x6c736d2d73796e63ULL;   /* "lsm-sync" */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)h;
}

static struct lsm_journal *journal_alloc(const char *path)
{
    struct lsm_journal *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->append_fd = -1;
    if (path && !(j->path = strdup(path))) {
        free(j);
        return NULL;
    }
    return j;
}

static int journal_geometry(struct lsm_journal *j, uint64_t size, uint64_t granule)
{
    if (size == 0 || size > (uint64_t)INT64_MAX)
        return lsm_error(-EINVAL, "invalid journal: size %" PRIu64 " out of range", size);
    if (granule < 512 || granule > (1ULL << 30) || !is_pow2(granule))
        return lsm_error(-EINVAL, "invalid journal: granule %" PRIu64 " is not a power of two "
                         "from 512 to 1 GiB", granule);
    uint64_t nbits = div_round_up(size, granule);
    if (nbits > LSM_JOURNAL_MAX_BITS)
        return lsm_error(-EINVAL, "invalid journal: %" PRIu64 " granules, over the limit of %llu",
                         nbits, (unsigned long long)LSM_JOURNAL_MAX_BITS);
    j->size = size;
    j->granule = granule;
    j->nbits = nbits;
    j->bits = calloc(div_round_up(nbits, 64) + 1, 8);
    if (!j->bits)
        return lsm_error(-ENOMEM, "cannot allocate the journal bitmap");
    return 0;
}

int lsm_journal_new(const char *path, uint64_t size, uint64_t granule, json_object *options,
                    struct lsm_journal **out)
{
    struct lsm_journal *j = journal_alloc(path);
    if (!j) {
        json_object_put(options);
        return lsm_error(-ENOMEM, "cannot allocate the journal");
    }
    j->options = options;
    int r = journal_geometry(j, size, granule);
    if (r < 0) {
        lsm_journal_free(j);
        return r;
    }
    *out = j;
    return 0;
}

void lsm_journal_file_clear(struct lsm_journal_file *f)
{
    free(f->role);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static void free_files(struct lsm_journal_file *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        lsm_journal_file_clear(&f[i]);
    free(f);
}

void lsm_journal_free(struct lsm_journal *j)
{
    if (!j)
        return;
    if (j->append_fd >= 0)
        close(j->append_fd);
    free_files(j->files, j->nfiles);
    json_object_put(j->options);
    free(j->pending);
    free(j->bits);
    free(j->path);
    free(j);
}

int lsm_journal_set_files(struct lsm_journal *j, const struct lsm_journal_file *f, size_t n)
{
    if (n > LSM_JOURNAL_MAX_FILES)
        return lsm_error(-E2BIG, "too many files for the journal (%zu)", n);
    struct lsm_journal_file *v = calloc(n + 1, sizeof *v);
    if (!v)
        return lsm_error(-ENOMEM, "cannot allocate the journal's file list");
    for (size_t i = 0; i < n; i++) {
        v[i] = f[i];
        v[i].role = strdup(f[i].role ? f[i].role : "");
        v[i].path = strdup(f[i].path ? f[i].path : "");
        if (!v[i].role || !v[i].path) {
            free_files(v, i + 1);
            return lsm_error(-ENOMEM, "cannot allocate the journal's file list");
        }
    }
    free_files(j->files, j->nfiles);
    j->files = v;
    j->nfiles = n;
    return 0;
}

int lsm_journal_check_files(const struct lsm_journal *j, const struct lsm_journal_file *f, size_t n)
{
    if (n != j->nfiles)
        return lsm_error(-ESTALE, "the job has %zu files, the journal %zu: not the same job",
                         n, j->nfiles);
    for (size_t i = 0; i < n; i++) {
        const struct lsm_journal_file *a = &j->files[i], *b = &f[i];
        const char *what = NULL;
        if (strcmp(a->role, b->role ? b->role : ""))
            what = "is not the same kind of file";
        else if (a->dev != b->dev || a->ino != b->ino)
            what = "is another file";
        else if (a->size != b->size)
            what = "changed size";
        else if (a->mtime_ns >= 0 && b->mtime_ns >= 0 && a->mtime_ns != b->mtime_ns)
            what = "was modified";
        else if (a->has_hash != b->has_hash ||
                 (a->has_hash && a->hash != b->hash &&
                  !(a->has_hash_next && a->hash_next == b->hash)))
            what = "has other metadata";
        if (what)
            return lsm_error(-ESTALE, "%s %s %s since the journal was written", b->role,
                             b->path ? b->path : a->path, what);
    }
    return 0;
}

static void mark_bits(struct lsm_journal *j, uint64_t start, uint64_t end)
{
    uint64_t first = div_round_up(start, j->granule);
    uint64_t last = end == j->size ? j->nbits : end / j->granule;
    for (uint64_t i = first; i < last; i++)
        bit_set(j, i);
}

int lsm_journal_mark(struct lsm_journal *j, uint64_t start, uint64_t len)
{
    if (len == 0 || start >= j->size)
        return 0;
    uint64_t end = len > j->size - start ? j->size : start + len;
    if (j->npending && j->pending[j->npending - 1][1] == start) {
        j->pending[j->npending - 1][1] = end;
        return 0;
    }
    if (j->npending == j->pending_cap) {
        size_t cap = j->pending_cap ? 2 * j->pending_cap : 256;
        void *n = realloc(j->pending, cap * sizeof *j->pending);
        if (!n)
            return lsm_error(-ENOMEM, "cannot allocate the journal's pending ranges");
        j->pending = n;
        j->pending_cap = cap;
    }
    j->pending[j->npending][0] = start;
    j->pending[j->npending][1] = end;
    j->npending++;
    return 0;
}

static int range_cmp(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

void lsm_journal_commit(struct lsm_journal *j)
{
    /* Adjacent pending ranges may split a granule between them: sort and
     * merge first, so that a granule recorded in two pieces counts. */
    if (j->npending)    /* qsort's base may not be NULL, even for no element */
        qsort(j->pending, j->npending, sizeof *j->pending, range_cmp);
    size_t i = 0;
    while (i < j->npending) {
        uint64_t s = j->pending[i][0], e = j->pending[i][1];
        for (i++; i < j->npending && j->pending[i][0] <= e; i++)
            e = MAX(e, j->pending[i][1]);
        mark_bits(j, s, e);
    }
    j->npending = 0;
}

bool lsm_journal_done_at(const struct lsm_journal *j, uint64_t off, uint64_t *run_end)
{
    uint64_t i = off / j->granule;
    if (i >= j->nbits) {
        *run_end = j->size;
        return false;
    }
    bool v = bit_test(j, i);
    uint64_t k = i + 1;
    while (k < j->nbits) {
        if (k % 64 == 0) {
            uint64_t w = j->bits[k / 64];
            if (w == (v ? ~0ULL : 0)) {
                k += 64;
                continue;
            }
        }
        if (bit_test(j, k) != v)
            break;
        k++;
    }
    *run_end = k >= j->nbits ? j->size : k * j->granule;
    return v;
}

uint64_t lsm_journal_done_bytes(const struct lsm_journal *j)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < j->nbits; i++)
        if (bit_test(j, i))
            n += i == j->nbits - 1 ? j->size - i * j->granule : j->granule;
    return n;
}

/* ---- parse -------------------------------------------------------------- */

static int get_u64(json_object *o, const char *key, bool required, uint64_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v)) {
        if (required)
            return lsm_error(-EINVAL, "invalid journal: \"%s\" is missing", key);
        return 1;
    }
    if (!json_object_is_type(v, json_type_int))
        return lsm_error(-EINVAL, "invalid journal: \"%s\" is not an integer", key);
    errno = 0;
    int64_t x = json_object_get_int64(v);
    if (x < 0 || errno)
        return lsm_error(-EINVAL, "invalid journal: \"%s\" out of range", key);
    *out = (uint64_t)x;
    return 0;
}

static int get_hex(json_object *o, const char *key, bool required, uint64_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v)) {
        if (required)
            return lsm_error(-EINVAL, "invalid journal: \"%s\" is missing", key);
        return 1;
    }
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    size_t n = s ? strlen(s) : 0;
    if (!s || n == 0 || n > 16 || strspn(s, "0123456789abcdef") != n)
        return lsm_error(-EINVAL, "invalid journal: \"%s\" is not 1 to 16 lowercase hex digits", key);
    *out = strtoull(s, NULL, 16);
    return 0;
}

static int get_str(json_object *o, const char *key, size_t max, char **out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return lsm_error(-EINVAL, "invalid journal: \"%s\" is missing or not a string", key);
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    if (n > max || strlen(s) != n)
        return lsm_error(-EINVAL, "invalid journal: \"%s\" is too long or holds a NUL", key);
    *out = strdup(s);
    return *out ? 0 : lsm_error(-ENOMEM, "out of memory");
}

/* "probes": optional, at most LSM_JOURNAL_MAX_PROBES offsets below the
 * file's size, only with a hash (it is their hash). */
static int parse_probes(json_object *e, size_t i, struct lsm_journal_file *f)
{
    json_object *arr;
    if (!json_object_object_get_ex(e, "probes", &arr))
        return 0;
    if (!json_object_is_type(arr, json_type_array))
        return lsm_error(-EINVAL, "invalid journal: file %zu: \"probes\" is not an array", i);
    size_t n = json_object_array_length(arr);
    if (n > LSM_JOURNAL_MAX_PROBES || !f->has_hash)
        return lsm_error(-EINVAL, "invalid journal: file %zu: %zu probes%s", i, n,
                         f->has_hash ? ", over the limit" : " without a hash");
    for (size_t k = 0; k < n; k++) {
        json_object *v = json_object_array_get_idx(arr, k);
        if (!json_object_is_type(v, json_type_int))
            return lsm_error(-EINVAL, "invalid journal: file %zu: a probe is not an integer", i);
        errno = 0;
        int64_t x = json_object_get_int64(v);
        if (x < 0 || errno || (uint64_t)x >= f->size)
            return lsm_error(-EINVAL, "invalid journal: file %zu: probe %zu out of range", i, k);
        f->probes[k] = (uint64_t)x;
    }
    f->nprobes = (unsigned)n;
    return 0;
}

static int parse_files(struct lsm_journal *j, json_object *arr)
{
    if (!json_object_is_type(arr, json_type_array))
        return lsm_error(-EINVAL, "invalid journal: \"files\" is not an array");
    size_t n = json_object_array_length(arr);
    if (n > LSM_JOURNAL_MAX_FILES)
        return lsm_error(-EINVAL, "invalid journal: %zu files, over the limit of %d", n,
                         LSM_JOURNAL_MAX_FILES);
    j->files = calloc(n + 1, sizeof *j->files);
    if (!j->files)
        return lsm_error(-ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        struct lsm_journal_file *f = &j->files[i];
        j->nfiles = i + 1;
        if (!json_object_is_type(e, json_type_object))
            return lsm_error(-EINVAL, "invalid journal: file %zu is not an object", i);
        int r = get_str(e, "role", MAX_ROLE, &f->role);
        if (r == 0)
            r = get_str(e, "path", MAX_PATH_LEN, &f->path);
        if (r == 0)
            r = get_hex(e, "dev", true, &f->dev);
        if (r == 0)
            r = get_hex(e, "ino", true, &f->ino);
        if (r == 0)
            r = get_u64(e, "size", true, &f->size);
        if (r < 0)
            return r;
        uint64_t mt;
        r = get_u64(e, "mtime_ns", false, &mt);
        if (r < 0)
            return r;
        f->mtime_ns = r == 0 ? (int64_t)mt : -1;
        r = get_hex(e, "hash", false, &f->hash);
        if (r < 0)
            return r;
        f->has_hash = r == 0;
        r = get_hex(e, "hash_next", false, &f->hash_next);
        if (r < 0)
            return r;
        f->has_hash_next = r == 0;
        if (f->has_hash_next && !f->has_hash)
            return lsm_error(-EINVAL, "invalid journal: file %zu has hash_next without hash", i);
        r = parse_probes(e, i, f);
        if (r < 0)
            return r;
    }
    return 0;
}

static int parse_done(struct lsm_journal *j, json_object *arr)
{
    if (!json_object_is_type(arr, json_type_array))
        return lsm_error(-EINVAL, "invalid journal: \"done\" is not an array");
    size_t n = json_object_array_length(arr);
    uint64_t next = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *p = json_object_array_get_idx(arr, i);
        if (!json_object_is_type(p, json_type_array) || json_object_array_length(p) != 2)
            return lsm_error(-EINVAL, "invalid journal: done range %zu is not a pair", i);
        json_object *a = json_object_array_get_idx(p, 0), *b = json_object_array_get_idx(p, 1);
        if (!json_object_is_type(a, json_type_int) || !json_object_is_type(b, json_type_int))
            return lsm_error(-EINVAL, "invalid journal: done range %zu is not two integers", i);
        errno = 0;
        int64_t first = json_object_get_int64(a), count = json_object_get_int64(b);
        if (errno || first < 0 || count <= 0 || (uint64_t)first < next ||
            (uint64_t)first > j->nbits || (uint64_t)count > j->nbits - (uint64_t)first)
            return lsm_error(-EINVAL, "invalid journal: done range %zu is out of order or "
                             "outside the %" PRIu64 " granules", i, j->nbits);
        for (uint64_t k = (uint64_t)first; k < (uint64_t)(first + count); k++)
            bit_set(j, k);
        next = (uint64_t)(first + count);
    }
    return 0;
}

/* The "reached" lines after the document: the largest valid one. */
static void parse_tail(struct lsm_journal *j, const char *p, size_t len)
{
    j->reached = j->frontier;
    static const char tag[] = "reached ";
    const size_t line_len = sizeof tag - 1 + 16 + 1 + 8 + 1;
    while (len >= line_len) {
        if (memcmp(p, tag, sizeof tag - 1) || p[sizeof tag - 1 + 16] != ' ' ||
            p[line_len - 1] != '\n')
            return;
        char hex[17], chk[9];
        memcpy(hex, p + sizeof tag - 1, 16);
        hex[16] = 0;
        memcpy(chk, p + sizeof tag - 1 + 17, 8);
        chk[8] = 0;
        if (strspn(hex, "0123456789abcdef") != 16 || strspn(chk, "0123456789abcdef") != 8)
            return;
        uint64_t off = strtoull(hex, NULL, 16);
        if ((uint32_t)strtoul(chk, NULL, 16) != line_check(off) || off > j->size)
            return;
        if (off > j->reached)
            j->reached = off;
        p += line_len;
        len -= line_len;
    }
}

int lsm_journal_parse(const char *path, const void *data, size_t len, struct lsm_journal **out)
{
    if (len > MAX_JOURNAL_BYTES)
        return lsm_error(-EINVAL, "invalid journal: over %u bytes", MAX_JOURNAL_BYTES);
    if (memchr(data, 0, len))
        return lsm_error(-EINVAL, "invalid journal: it holds a NUL byte");
    /* The document is the first line (json-c writes it without newlines);
     * "reached" lines follow. */
    const char *nl = memchr(data, '\n', len);
    if (!nl)
        return lsm_error(-EINVAL, "invalid journal: no complete first line");
    size_t used = (size_t)(nl - (const char *)data) + 1;
    json_tokener *tok = json_tokener_new_ex(8);
    if (!tok)
        return lsm_error(-ENOMEM, "out of memory");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    json_object *doc = json_tokener_parse_ex(tok, data, (int)(used - 1));
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    bool whole = (size_t)tok->char_offset == used - 1;
    json_tokener_free(tok);
    if (!doc || jerr != json_tokener_success || !whole) {
        json_object_put(doc);
        return lsm_error(-EINVAL, "invalid journal: not a complete JSON document (%s)",
                         json_tokener_error_desc(jerr));
    }
    struct lsm_journal *j = journal_alloc(path);
    int r;
    if (!j) {
        json_object_put(doc);
        return lsm_error(-ENOMEM, "out of memory");
    }
    uint64_t version = 0, size = 0, granule = 0;
    json_object *v;
    if (!json_object_is_type(doc, json_type_object)) {
        r = lsm_error(-EINVAL, "invalid journal: not a JSON object");
        goto fail;
    }
    if ((r = get_u64(doc, "lsm-sync-journal", true, &version)) < 0)
        goto fail;
    if (version != LSM_JOURNAL_VERSION) {
        r = lsm_error(-EINVAL, "journal version %" PRIu64 " is not supported (only %d)", version,
                      LSM_JOURNAL_VERSION);
        goto fail;
    }
    if ((r = get_u64(doc, "size", true, &size)) < 0 ||
        (r = get_u64(doc, "granule", true, &granule)) < 0 ||
        (r = journal_geometry(j, size, granule)) < 0 ||
        (r = get_u64(doc, "frontier", true, &j->frontier)) < 0)
        goto fail;
    if (j->frontier > j->size) {
        r = lsm_error(-EINVAL, "invalid journal: frontier past the size");
        goto fail;
    }
    if (!json_object_object_get_ex(doc, "options", &v) || !json_object_is_type(v, json_type_object)) {
        r = lsm_error(-EINVAL, "invalid journal: \"options\" is missing or not an object");
        goto fail;
    }
    j->options = json_object_get(v);
    if (!json_object_object_get_ex(doc, "files", &v)) {
        r = lsm_error(-EINVAL, "invalid journal: \"files\" is missing");
        goto fail;
    }
    if ((r = parse_files(j, v)) < 0)
        goto fail;
    if (!json_object_object_get_ex(doc, "done", &v)) {
        r = lsm_error(-EINVAL, "invalid journal: \"done\" is missing");
        goto fail;
    }
    if ((r = parse_done(j, v)) < 0)
        goto fail;
    parse_tail(j, (const char *)data + used, len - used);
    json_object_put(doc);
    *out = j;
    return 0;
fail:
    json_object_put(doc);
    lsm_journal_free(j);
    return r;
}

/* The temporary files of saves that a kill interrupted (PATH.tmp.PID.NS,
 * the names lsm_journal_save makes) whose process is gone: removed, so
 * that a journal's directory holds only journals.  Best effort, silent. */
static void remove_stale_temps(const char *path)
{
    _cleanup_free_ char *d = strdup(path), *b = strdup(path);
    if (!d || !b)
        return;
    const char *dir = dirname(d), *base = basename(b);
    size_t blen = strlen(base);
    DIR *dp = opendir(dir);
    if (!dp)
        return;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (strncmp(e->d_name, base, blen) || strncmp(e->d_name + blen, ".tmp.", 5))
            continue;
        long pid;
        unsigned long long ns;
        int end = 0;
        if (sscanf(e->d_name + blen + 5, "%ld.%llu%n", &pid, &ns, &end) != 2 ||
            e->d_name[blen + 5 + end] || pid <= 0 || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;   /* its process may still be saving */
        unlinkat(dirfd(dp), e->d_name, 0);
    }
    closedir(dp);
}

int lsm_journal_load(const char *path, struct lsm_journal **out)
{
    remove_stale_temps(path);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return lsm_error_errno(-errno, "cannot open journal %s", path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lsm_error_errno(-errno, "cannot stat journal %s", path);
    if (!S_ISREG(st.st_mode))
        return lsm_error(-EINVAL, "journal %s is not a regular file", path);
    if ((uint64_t)st.st_size > MAX_JOURNAL_BYTES)
        return lsm_error(-EINVAL, "journal %s is too large", path);
    size_t len = (size_t)st.st_size;
    _cleanup_free_ char *buf = malloc(len + 1);
    if (!buf)
        return lsm_error(-ENOMEM, "out of memory");
    ssize_t n = lsm_pread_all(fd, buf, len, 0);
    if (n < 0)
        return lsm_error_errno((int)n, "cannot read journal %s", path);
    int r = lsm_journal_parse(path, buf, (size_t)n, out);
    if (r < 0)
        lsm_error_prefix("%s", path);
    return r;
}

/* ---- save --------------------------------------------------------------- */

static json_object *hex_string(uint64_t v)
{
    char s[17];
    snprintf(s, sizeof s, "%" PRIx64, v);
    return json_object_new_string(s);
}

static json_object *build_doc(const struct lsm_journal *j)
{
    json_object *doc = json_object_new_object();
    json_object_object_add(doc, "lsm-sync-journal", json_object_new_int64(LSM_JOURNAL_VERSION));
    json_object_object_add(doc, "size", json_object_new_int64((int64_t)j->size));
    json_object_object_add(doc, "granule", json_object_new_int64((int64_t)j->granule));
    json_object_object_add(doc, "frontier", json_object_new_int64((int64_t)j->frontier));
    json_object_object_add(doc, "options", j->options ? json_object_get(j->options)
                                                      : json_object_new_object());
    json_object *files = json_object_new_array();
    for (size_t i = 0; i < j->nfiles; i++) {
        const struct lsm_journal_file *f = &j->files[i];
        json_object *e = json_object_new_object();
        json_object_object_add(e, "role", lsm_json_string(f->role));
        json_object_object_add(e, "path", lsm_json_string(f->path));
        json_object_object_add(e, "dev", hex_string(f->dev));
        json_object_object_add(e, "ino", hex_string(f->ino));
        json_object_object_add(e, "size", json_object_new_int64((int64_t)f->size));
        if (f->mtime_ns >= 0)
            json_object_object_add(e, "mtime_ns", json_object_new_int64(f->mtime_ns));
        if (f->has_hash)
            json_object_object_add(e, "hash", hex_string(f->hash));
        if (f->has_hash && f->has_hash_next)
            json_object_object_add(e, "hash_next", hex_string(f->hash_next));
        if (f->has_hash && f->nprobes) {
            json_object *pr = json_object_new_array();
            for (unsigned k = 0; k < f->nprobes && k < LSM_JOURNAL_MAX_PROBES; k++)
                json_object_array_add(pr, json_object_new_int64((int64_t)f->probes[k]));
            json_object_object_add(e, "probes", pr);
        }
        json_object_array_add(files, e);
    }
    json_object_object_add(doc, "files", files);
    json_object *done = json_object_new_array();
    for (uint64_t i = 0; i < j->nbits;) {
        if (!bit_test(j, i)) {
            i++;
            continue;
        }
        uint64_t k = i;
        while (k < j->nbits && bit_test(j, k))
            k++;
        json_object *p = json_object_new_array();
        json_object_array_add(p, json_object_new_int64((int64_t)i));
        json_object_array_add(p, json_object_new_int64((int64_t)(k - i)));
        json_object_array_add(done, p);
        i = k;
    }
    json_object_object_add(doc, "done", done);
    return doc;
}

int lsm_journal_save(struct lsm_journal *j)
{
    json_object *doc = build_doc(j);
    if (!doc)
        return lsm_error(-ENOMEM, "out of memory");
    const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
    if (!text) {
        json_object_put(doc);
        return lsm_error(-ENOMEM, "out of memory");
    }
    _cleanup_free_ char *dircopy = strdup(j->path);
    _cleanup_free_ char *tmp = NULL;
    if (!dircopy || asprintf(&tmp, "%s.tmp.%ld.%" PRIu64, j->path, (long)getpid(), lsm_now_ns()) < 0) {
        json_object_put(doc);
        tmp = NULL;
        return lsm_error(-ENOMEM, "out of memory");
    }
    int r = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        json_object_put(doc);
        return lsm_error_errno(-errno, "cannot create %s", tmp);
    }
    size_t len = strlen(text);
    ssize_t n = lsm_pwrite_all(fd, text, len, 0);
    if (n < 0 || (size_t)n < len)
        r = lsm_error_errno(n < 0 ? (int)n : -ENOSPC, "cannot write %s", tmp);
    else if (pwrite(fd, "\n", 1, (off_t)len) != 1)
        r = lsm_error_errno(-errno, "cannot write %s", tmp);
    else if (fsync(fd) < 0)
        r = lsm_error_errno(-errno, "cannot sync %s", tmp);
    json_object_put(doc);
    struct stat st;
    if (r == 0 && fstat(fd, &st) < 0)
        r = lsm_error_errno(-errno, "cannot stat %s", tmp);
    if (r == 0 && rename(tmp, j->path) < 0)
        r = lsm_error_errno(-errno, "cannot rename %s to %s", tmp, j->path);
    if (r < 0) {
        close(fd);
        unlink(tmp);    /* the temporary file this call created */
        return r;
    }
    /* The rename is durable only once the directory is synced. */
    int dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        r = lsm_error_errno(-errno, "cannot sync the directory of %s", j->path);
    if (dfd >= 0)
        close(dfd);
    if (j->append_fd >= 0)
        close(j->append_fd);
    j->append_fd = fd;
    j->saved = true;
    j->saved_dev = st.st_dev;
    j->saved_ino = st.st_ino;
    uint64_t keep = j->noted;
    j->noted = j->frontier;
    if (r == 0 && lseek(fd, 0, SEEK_END) < 0)
        r = lsm_error_errno(-errno, "cannot seek in %s", j->path);
    /* how far the job had gone stays known across saves */
    if (r == 0 && keep > j->frontier)
        r = lsm_journal_note_reached(j, keep);
    return r;
}

int lsm_journal_note_reached(struct lsm_journal *j, uint64_t off)
{
    if (j->append_fd < 0 || off <= j->noted)
        return 0;
    char line[64];
    int n = snprintf(line, sizeof line, "reached %016" PRIx64 " %08" PRIx32 "\n", off, line_check(off));
    ssize_t w = write(j->append_fd, line, (size_t)n);
    if (w != n)
        return lsm_error_errno(w < 0 ? -errno : -ENOSPC, "cannot append to journal %s", j->path);
    j->noted = off;
    return 0;
}

bool lsm_journal_remove(struct lsm_journal *j)
{
    if (!j->saved)
        return false;
    struct stat st;
    if (lstat(j->path, &st) < 0 || st.st_dev != j->saved_dev || st.st_ino != j->saved_ino)
        return false;
    if (unlink(j->path) < 0)
        return false;
    j->saved = false;
    remove_stale_temps(j->path);
    return true;
}
