/* Unit tests for bench/jobfile.c: sections, [global] inheritance, bare
 * booleans, sizes and times, errors naming the line and key,
 * allow_mounted_write. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "error.h"
#include "jobfile.h"

static void test_sections_and_global(void **state)
{
    (void)state;
    const char *text =
        "# a comment\n"
        "; another\n"
        "[global]\n"
        "ioengine=aio\n"
        "direct=1\n"
        "bs = 64k\n"
        "size=16M\n"
        "filename=/tmp/x\n"
        "\n"
        "[seq]\n"
        "rw=read\n"
        "iodepth=32   # trailing comment\n"
        "[rand]\n"
        "rw=randrw\n"
        "rwmixread=70\n"
        "bs=4k\n"
        "time_based\n"
        "runtime=2\n"
        "numjobs=3\n"
        "stonewall\n";
    struct bench_jobs jobs = { 0 };
    assert_int_equal(bench_jobfile_parse("j.fio", text, &jobs), 0);
    assert_int_equal(jobs.n, 2);

    struct bench_job *a = &jobs.v[0], *b = &jobs.v[1];
    assert_string_equal(a->name, "seq");
    assert_int_equal(a->rw, BENCH_RW_READ);
    assert_int_equal(a->bs, 65536);
    assert_int_equal(a->iodepth, 32);
    assert_int_equal(a->ioengine, LSM_IO_AIO);
    assert_true(a->direct);
    assert_int_equal(a->size, 16 << 20);
    assert_string_equal(a->filename, "/tmp/x");
    assert_false(a->time_based);
    assert_string_equal(a->origin, "j.fio:10");

    assert_string_equal(b->name, "rand");
    assert_int_equal(b->rw, BENCH_RW_RANDRW);
    assert_int_equal(b->rwmixread, 70);
    assert_int_equal(b->bs, 4096);
    assert_int_equal(b->iodepth, 1);       /* default, not the other job's */
    assert_true(b->time_based);
    assert_true(b->stonewall);
    assert_int_equal(b->runtime_ns, 2000000000ULL);
    assert_int_equal(b->numjobs, 3);
    assert_true(b->direct);                /* from [global] */
    bench_jobs_free(&jobs);
}

static void test_later_global_applies_to_later_jobs(void **state)
{
    (void)state;
    const char *text =
        "[global]\nfilename=/a\n[one]\n[global]\nbs=1M\nioengine=io_uring\n[two]\nname=renamed\n";
    struct bench_jobs jobs = { 0 };
    assert_int_equal(bench_jobfile_parse("g.fio", text, &jobs), 0);
    assert_int_equal(jobs.n, 2);
    assert_int_equal(jobs.v[0].bs, 4096);
    assert_int_equal(jobs.v[0].ioengine, LSM_IO_AUTO);
    assert_int_equal(jobs.v[1].bs, 1 << 20);
    assert_int_equal(jobs.v[1].ioengine, LSM_IO_URING);
    assert_string_equal(jobs.v[1].name, "renamed");
    assert_string_equal(jobs.v[1].filename, "/a");
    bench_jobs_free(&jobs);
}

static void test_copy_filename_split(void **state)
{
    (void)state;
    struct bench_jobs jobs = { 0 };
    assert_int_equal(bench_jobfile_parse("c.fio", "[c]\r\nrw=copy\r\nfilename=/s:/d\r\n", &jobs), 0);
    assert_string_equal(jobs.v[0].src, "/s");
    assert_string_equal(jobs.v[0].dst, "/d");
    bench_jobs_free(&jobs);
    assert_int_equal(bench_jobfile_parse("c.fio", "[c]\nrw=copy\nsrc=/s\ndst=/d\n", &jobs), 0);
    assert_string_equal(jobs.v[0].src, "/s");
    bench_jobs_free(&jobs);
}

static void test_sizes_and_times(void **state)
{
    (void)state;
    struct bench_job job;
    bench_job_defaults(&job);
    assert_int_equal(bench_job_set(&job, "bs", "4k"), 0); assert_int_equal(job.bs, 4096);
    assert_int_equal(bench_job_set(&job, "bs", "4K"), 0); assert_int_equal(job.bs, 4096);
    assert_int_equal(bench_job_set(&job, "size", "1g"), 0); assert_int_equal(job.size, 1ULL << 30);
    assert_int_equal(bench_job_set(&job, "size", "3m"), 0); assert_int_equal(job.size, 3ULL << 20);
    assert_int_equal(bench_job_set(&job, "size", "512"), 0); assert_int_equal(job.size, 512);
    assert_int_equal(bench_job_set(&job, "runtime", "10"), 0);
    assert_int_equal(job.runtime_ns, 10000000000ULL);
    assert_int_equal(bench_job_set(&job, "runtime", "500ms"), 0);
    assert_int_equal(job.runtime_ns, 500000000ULL);
    assert_int_equal(bench_job_set(&job, "runtime", "2m"), 0);
    assert_int_equal(job.runtime_ns, 120000000000ULL);
    assert_int_equal(bench_job_set(&job, "rwmixwrite", "30"), 0);
    assert_int_equal(job.rwmixread, 70);
    assert_int_equal(bench_job_set(&job, "direct", "true"), 0); assert_true(job.direct);
    assert_int_equal(bench_job_set(&job, "direct", "0"), 0); assert_false(job.direct);
    assert_int_equal(bench_job_set(&job, "time-based", NULL), 0); assert_true(job.time_based);
    assert_int_equal(bench_job_set(&job, "bs", "0"), -EINVAL);
    assert_int_equal(bench_job_set(&job, "bs", "4x"), -EINVAL);
    assert_int_equal(bench_job_set(&job, "runtime", "3w"), -EINVAL);
    assert_int_equal(bench_job_set(&job, "iodepth", "0"), -EINVAL);
    assert_int_equal(bench_job_set(&job, "rwmixread", "101"), -EINVAL);
    assert_int_equal(bench_job_set(&job, "direct", "maybe"), -EINVAL);
    assert_int_equal(bench_job_set(&job, "bs", NULL), -EINVAL);
    assert_int_equal(job.mem, BENCH_MEM_HUGE);                      /* the default */
    assert_int_equal(bench_job_set(&job, "mem", "malloc"), 0); assert_int_equal(job.mem, BENCH_MEM_PAGES);
    assert_int_equal(bench_job_set(&job, "iomem", "mmaphuge"), 0); assert_int_equal(job.mem, BENCH_MEM_HUGE);
    assert_int_equal(bench_job_set(&job, "mem", "shm"), 0); assert_int_equal(job.mem, BENCH_MEM_PAGES);
    assert_int_equal(bench_job_set(&job, "mem", "cudamalloc"), -EINVAL);
    assert_true(job.scramble_buffers);                                /* fio's default */
    assert_int_equal(job.iodepth_batch_submit, 1);                    /* fio's default */
    assert_int_equal(bench_job_set(&job, "iodepth_batch", "0"), 0);   /* 0: iodepth */
    assert_int_equal(job.iodepth_batch_submit, 0);
    assert_int_equal(bench_job_set(&job, "iodepth-batch-submit", "8"), 0);
    assert_int_equal(job.iodepth_batch_submit, 8);
    assert_int_equal(bench_job_set(&job, "scramble-buffers", "0"), 0);
    assert_false(job.scramble_buffers);
    bench_job_clear(&job);
}

/* Parse text that must fail; check the message. */
static void expect_error(const char *text, const char *message)
{
    struct bench_jobs jobs = { 0 };
    lsm_error_clear();
    assert_int_equal(bench_jobfile_parse("job.fio", text, &jobs), -EINVAL);
    assert_string_equal(lsm_last_error(), message);
    bench_jobs_free(&jobs);
}

static void test_errors_name_line_and_key(void **state)
{
    (void)state;
    expect_error("[global]\nbs=4k\n\n[j1]\nfilename=/x\n# c\nblocksize2=8k\n",
                 "job.fio:7: unknown key 'blocksize2'");
    expect_error("[j]\nfilename=/x\nbs=four\n",
                 "job.fio:3: bad value for 'bs': 'four' (a size like 4k, 1M or 2G)");
    expect_error("[j]\nfilename=/x\nrw=sideways\n",
                 "job.fio:3: bad value for 'rw': 'sideways' (read, write, randread, "
                 "randwrite, randrw or copy)");
    expect_error("[j]\nfilename=/x\niodepth\n",
                 "job.fio:3: key 'iodepth' needs a value (iodepth=...)");
    expect_error("bs=4k\n[j]\n", "job.fio:1: option 'bs' outside of a [section]");
    expect_error("[j\nbs=4k\n", "job.fio:1: malformed section header '[j'");
    expect_error("[j]\nrw=read\n", "job.fio:1: job 'j': no file to work on (filename=PATH)");
    expect_error("[a]\nfilename=/x\n[b]\nrw=copy\nfilename=/only\n",
                 "job.fio:3: job 'b': rw=copy needs filename=SRC:DST (or src= and dst=)");
    expect_error("[t]\nfilename=/x\ntime_based\n",
                 "job.fio:1: job 't': time_based needs a runtime");
    expect_error("[global]\nbs=4k\n", "job.fio: no jobs defined (a [name] section)");
    expect_error("[j]\nfilename=/x\nioengine=spdk\n",
                 "job.fio:3: bad value for 'ioengine': 'spdk' (uring, aio, psync, auto or nbd)");
}

static void test_command_line(void **state)
{
    (void)state;
    char *args[] = { "--bs=64k", "--filename=/f", "--name=a", "--rw=randread", "--time_based",
                     "--runtime=1", "--name=b", "--iodepth=8", "--ioengine=libaio" };
    struct bench_jobs jobs = { 0 };
    assert_int_equal(bench_args_parse(9, args, &jobs), 0);
    assert_int_equal(jobs.n, 2);
    assert_string_equal(jobs.v[0].name, "a");
    assert_int_equal(jobs.v[0].bs, 65536);
    assert_int_equal(jobs.v[0].rw, BENCH_RW_RANDREAD);
    assert_true(jobs.v[0].time_based);
    assert_string_equal(jobs.v[1].name, "b");
    assert_false(jobs.v[1].time_based);
    assert_int_equal(jobs.v[1].iodepth, 8);
    assert_int_equal(jobs.v[1].ioengine, LSM_IO_AIO);
    assert_string_equal(jobs.v[1].filename, "/f");
    bench_jobs_free(&jobs);

    char *bad[] = { "--name=a", "--filename=/f", "--blocksize2=8k" };
    lsm_error_clear();
    assert_int_equal(bench_args_parse(3, bad, &jobs), -EINVAL);
    assert_string_equal(lsm_last_error(), "--blocksize2=8k: unknown key 'blocksize2'");
    bench_jobs_free(&jobs);

    char *anon[] = { "--filename=/f", "--rw=write" };
    assert_int_equal(bench_args_parse(2, anon, &jobs), 0);
    assert_int_equal(jobs.n, 1);
    assert_string_equal(jobs.v[0].name, "bench");
    bench_jobs_free(&jobs);
}

static void test_allow_mounted_write(void **state)
{
    (void)state;
    /* off by default; fio's key in a job file ([global] inherited, a bare
     * key, 0/1) and on the command line (with '-' folded to '_') */
    const char *text =
        "[global]\nfilename=/dev/x\nrw=write\nallow_mounted_write=1\n"
        "[a]\n"
        "[b]\nallow_mounted_write=0\n";
    struct bench_jobs jobs = { 0 };
    assert_int_equal(bench_jobfile_parse("j.fio", text, &jobs), 0);
    assert_int_equal(jobs.n, 2);
    assert_true(jobs.v[0].allow_mounted_write);
    assert_false(jobs.v[1].allow_mounted_write);
    bench_jobs_free(&jobs);

    char *dflt[] = { "--filename=/f", "--rw=write" };
    assert_int_equal(bench_args_parse(2, dflt, &jobs), 0);
    assert_false(jobs.v[0].allow_mounted_write);
    bench_jobs_free(&jobs);

    char *args[] = { "--name=a", "--filename=/f", "--rw=write", "--allow-mounted-write" };
    assert_int_equal(bench_args_parse(4, args, &jobs), 0);
    assert_true(jobs.v[0].allow_mounted_write);
    bench_jobs_free(&jobs);

    char *bad[] = { "--name=a", "--filename=/f", "--allow_mounted_write=maybe" };
    lsm_error_clear();
    assert_int_equal(bench_args_parse(3, bad, &jobs), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "allow_mounted_write"));
    bench_jobs_free(&jobs);
}

static void test_fio_everyday_keys(void **state)
{
    (void)state;
    const char *text =
        "[global]\nfilename=/f\nthread\ndescription=dry run\nnorandommap\ngroup_reporting\n"
        "size=1M\n"
        "[a]\nrw=randwrite\nramp_time=2s\noffset=64k\nbssplit=4k/25:64k\nrate_iops=100\n"
        "fsync=8\nend_fsync=1\ninvalidate=0\nrandrepeat=0\ncreate_on_open=1\n"
        "[b]\nstonewall\nnew_group\nverify=crc32c\nbs=4k\n"
        "[c]\nwait_for_previous\nverify=md5\n";
    struct bench_jobs jobs = { 0 };
    assert_int_equal(bench_jobfile_parse("k.fio", text, &jobs), 0);
    assert_int_equal(jobs.n, 3);
    const struct bench_job *a = &jobs.v[0], *b = &jobs.v[1], *c = &jobs.v[2];
    assert_string_equal(a->description, "dry run");
    assert_int_equal(a->ramp_time_ns, 2000000000ULL);
    assert_int_equal(a->offset, 65536);
    assert_int_equal(a->nbssplit, 2);
    assert_int_equal(a->bssplit[0].bs, 4096);
    assert_int_equal(a->bssplit[0].pct, 25);
    assert_int_equal(a->bssplit[1].bs, 65536);
    assert_int_equal(a->bssplit[1].pct, 75);      /* what the others leave */
    assert_int_equal(a->bs, 4096);                /* the smallest: the offset unit */
    assert_int_equal(bench_job_max_bs(a), 65536);
    assert_int_equal(a->rate_iops, 100);
    assert_int_equal(a->fsync, 8);
    assert_true(a->end_fsync);
    assert_false(a->invalidate);
    assert_false(a->randrepeat);
    assert_false(a->stonewall);
    assert_true(b->stonewall && b->new_group && b->invalidate && b->randrepeat);
    assert_int_equal(b->verify, BENCH_VERIFY_PATTERN);
    assert_string_equal(b->verify_name, "crc32c");
    assert_true(c->stonewall);
    assert_int_equal(c->verify, BENCH_VERIFY_PATTERN);
    /* the options as given, the global ones marked */
    bool seen_desc = false, seen_fsync = false;
    for (size_t i = 0; i < a->nopts; i++) {
        if (!strcmp(a->opts[i].key, "description"))
            seen_desc = a->opts[i].global && !strcmp(a->opts[i].value, "dry run");
        if (!strcmp(a->opts[i].key, "fsync"))
            seen_fsync = !a->opts[i].global && !strcmp(a->opts[i].value, "8");
    }
    assert_true(seen_desc && seen_fsync);
    bench_jobs_free(&jobs);

    lsm_error_clear();
    assert_int_equal(bench_jobfile_parse("k.fio", "[a]\nfilename=/f\nbssplit=4k/60:8k/60\n",
                                         &jobs), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "k.fio:3: bad value for 'bssplit'"));
    bench_jobs_free(&jobs);
    lsm_error_clear();
    assert_int_equal(bench_jobfile_parse("k.fio", "[a]\nfilename=/f\nverify=sha1\n", &jobs),
                     -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "k.fio:3:"));
    bench_jobs_free(&jobs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sections_and_global),
        cmocka_unit_test(test_later_global_applies_to_later_jobs),
        cmocka_unit_test(test_copy_filename_split),
        cmocka_unit_test(test_sizes_and_times),
        cmocka_unit_test(test_errors_name_line_and_key),
        cmocka_unit_test(test_command_line),
        cmocka_unit_test(test_allow_mounted_write),
        cmocka_unit_test(test_fio_everyday_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
