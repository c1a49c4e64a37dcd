/* libFuzzer target: the two job-file parsers a user hands lsm-sync.
 *
 *  - a chain job file (`clone-structure --job`, `sync --job`: JSON,
 *    docs/chains.md), read by lsm_jobfile_load (domains/chain.c) from a
 *    file: the input is written to a memfd and loaded through /proc;
 *  - an fio-style job file (`lsm-sync bench`, docs/bench-harness.md), parsed
 *    from text by bench_jobfile_parse (bench/jobfile.c).
 *
 * An input whose first non-blank byte is '{' goes to the first, anything
 * else to the second.  Both must refuse bad input with a message and never
 * crash, read out of bounds or leak; what they accept must be complete: a
 * chain job names at least one volume, each with a source and destination
 * path; every fio job has a name.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chain.h"
#include "error.h"
#include "jobfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void chain_job(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-jobfile", 0);
    if (fd < 0)
        return;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct lsm_jobfile j = { 0 };
    lsm_error_clear();
    int r = lsm_jobfile_load(path, &j);
    close(fd);
    if (r < 0) {
        if (!*lsm_last_error())
            abort();
        return;
    }
    if (j.n == 0 || !j.v)
        abort();
    for (unsigned i = 0; i < j.n; i++)
        if (!j.v[i].src_path || !j.v[i].dst_path)
            abort();
    lsm_jobfile_free(&j);
}

static void fio_job(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return;
    memcpy(text, data, size);
    text[size] = '\0';
    struct bench_jobs jobs = { 0 };
    lsm_error_clear();
    int r = bench_jobfile_parse("fuzz.fio", text, &jobs);
    free(text);
    if (r < 0) {
        if (!*lsm_last_error())
            abort();
        bench_jobs_free(&jobs);
        return;
    }
    for (size_t i = 0; i < jobs.n; i++)
        if (!jobs.v[i].name)
            abort();
    bench_jobs_free(&jobs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t i = 0;
    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    if (i < size && data[i] == '{')
        chain_job(data, size);
    else
        fio_job(data, size);
    return 0;
}
