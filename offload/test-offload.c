/* Unit tests of the offload ladder's pure parts and of the --offload-cmd
 * protocol, run against real shell scripts. */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "io.h"
#include "offload.h"
#include "util.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/lsm-test-offload.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A script in dir; returns its path (static buffer). */
static const char *script(const char *name, const char *body)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    chmod(path, 0755);
    return path;
}

static void test_mode_parse(void **state)
{
    (void)state;
    enum lsm_offload_mode m;
    const char *n;
    assert_int_equal(lsm_offload_mode_parse("auto", &m, &n), 0);
    assert_int_equal(m, LSM_OFFLOAD_AUTO);
    assert_null(n);
    assert_int_equal(lsm_offload_mode_parse("never", &m, &n), 0);
    assert_int_equal(m, LSM_OFFLOAD_NEVER);
    assert_int_equal(lsm_offload_mode_parse("xcopy", &m, &n), 0);
    assert_int_equal(m, LSM_OFFLOAD_ONLY);
    assert_string_equal(n, "xcopy");
    assert_int_equal(lsm_offload_mode_parse("copy_file_range", &m, &n), 0);
    assert_int_equal(lsm_offload_mode_parse("", &m, &n), -EINVAL);
    assert_int_equal(lsm_offload_mode_parse("../evil", &m, &n), -EINVAL);
    assert_int_equal(lsm_offload_mode_parse("a/b", &m, &n), -EINVAL);
    assert_int_equal(lsm_offload_mode_parse("aaaaaaaaaaaaaaaaaaaaaaaaa", &m, &n), -EINVAL);
}

static void test_cmd_ok(void **state)
{
    (void)state;
    char out[256];
    snprintf(out, sizeof out, "%s/args", dir);
    char body[512];
    /* records its arguments, one per line, then reports the whole range */
    snprintf(body, sizeof body, "for a in \"$@\"; do printf '%%s\\n' \"$a\"; done > '%s'\necho \"copied $6\"", out);
    const char *s = script("ok.sh", body);
    char why[256];
    int64_t n = lsm_offload_run_command(s, "/dev/a b$(x)", 4096, "/dev/c", 8192, 65536, 10, NULL,
                                        why, sizeof why);
    assert_int_equal(n, 65536);
    assert_string_equal(why, "");
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    char got[256] = "";
    size_t len = fread(got, 1, sizeof got - 1, f);
    fclose(f);
    got[len] = '\0';
    assert_string_equal(got, "copy\n/dev/a b$(x)\n4096\n/dev/c\n8192\n65536\n");
    /* CMD may carry its own arguments */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s --vendor-flag", s);
    n = lsm_offload_run_command(cmd, "/s", 0, "/d", 0, 512, 10, NULL, why, sizeof why);
    assert_int_equal(n, 0);   /* $6 is now "0" (the flag shifted the arguments) */
}

static void test_cmd_partial_and_bad(void **state)
{
    (void)state;
    char why[256];
    const char *s = script("half.sh", "echo 'copied 1024'");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), 1024);
    assert_non_null(strstr(why, "copied 1024 of 4096"));
    s = script("toomuch.sh", "echo 'copied 8192'");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), -EPROTO);
    s = script("garbage.sh", "echo 'done'");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), -EPROTO);
    assert_non_null(strstr(why, "'done'"));
    s = script("extra.sh", "echo 'copied 4096'; echo more");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), -EPROTO);
    s = script("fail.sh", "echo 'array says no' >&2; echo 'second line' >&2; exit 1");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), -EIO);
    assert_string_equal(why, "the offload command failed with exit status 1: array says no");
    s = script("pair.sh", "echo 'different arrays' >&2; exit 3");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), -EOPNOTSUPP);
    assert_non_null(strstr(why, "different arrays"));
    s = script("sig.sh", "kill -9 $$");
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, NULL, why, sizeof why), -EIO);
    assert_non_null(strstr(why, "signal 9"));
    assert_int_equal(lsm_offload_run_command("/nonexistent/tool", "a", 0, "b", 0, 4096, 10, NULL,
                                             why, sizeof why), -EIO);
    assert_non_null(strstr(why, "exit status 127"));
}

static void test_cmd_timeout_and_cancel(void **state)
{
    (void)state;
    char why[256];
    /* a child that keeps the pipe open must not hold us either */
    const char *s = script("slow.sh", "sleep 30 & sleep 30");
    uint64_t t0 = lsm_now_ns();
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 1, NULL, why, sizeof why), -ETIMEDOUT);
    assert_true(lsm_now_ns() - t0 < 5000000000ull);
    assert_non_null(strstr(why, "within 1 s"));
    volatile sig_atomic_t cancel = 1;
    t0 = lsm_now_ns();
    assert_int_equal(lsm_offload_run_command(s, "a", 0, "b", 0, 4096, 10, &cancel, why, sizeof why), -EINTR);
    assert_true(lsm_now_ns() - t0 < 5000000000ull);
}

/* Two regular files in dir: src with 1 MiB of a pattern, dst empty. */
static void make_pair(struct lsm_file **src, struct lsm_file **dst)
{
    char sp[128], dp[128];
    snprintf(sp, sizeof sp, "%s/src", dir);
    snprintf(dp, sizeof dp, "%s/dst", dir);
    unlink(dp);
    FILE *f = fopen(sp, "w");
    assert_non_null(f);
    for (int i = 0; i < 1 << 20; i++)
        fputc(i * 7 % 251, f);
    fclose(f);
    assert_int_equal(lsm_file_open(sp, LSM_FILE_READ, LSM_DIRECT_NEVER, src), 0);
    assert_int_equal(lsm_file_open(dp, LSM_FILE_READ | LSM_FILE_WRITE | LSM_FILE_CREATE,
                                   LSM_DIRECT_NEVER, dst), 0);
}

static bool same_files(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "cmp -s '%s/src' '%s/dst'", dir, dir);
    return system(cmd) == 0;
}

static void test_ladder_copy_range(void **state)
{
    (void)state;
    struct lsm_file *src, *dst;
    make_pair(&src, &dst);
    struct lsm_offload_opts o = { .mode = LSM_OFFLOAD_ONLY, .name = "copy_file_range" };
    struct lsm_offload *ol;
    assert_int_equal(lsm_offload_create(&o, &ol), 0);
    assert_int_equal(lsm_offload_range(ol, src, 0, dst, 0, 1 << 19), 1 << 19);
    assert_int_equal(lsm_offload_range(ol, src, 1 << 19, dst, 1 << 19, 1 << 19), 1 << 19);
    assert_string_equal(lsm_offload_reason(ol), "");
    struct lsm_offload_counts c;
    lsm_offload_get_counts(ol, &c);
    assert_int_equal(c.copy_range, 1 << 20);
    assert_int_equal(c.reflink + c.plugin + c.command, 0);
    assert_true(same_files());
    lsm_offload_free(ol);
    lsm_file_close(src);
    lsm_file_close(dst);
}

/* A command that fails is asked once per range, and not at all after two
 * failures in a row; the caller gets 0 (software) with the reason. */
static void test_ladder_drops_failing_command(void **state)
{
    (void)state;
    struct lsm_file *src, *dst;
    make_pair(&src, &dst);
    char log[128], body[256];
    snprintf(log, sizeof log, "%s/calls", dir);
    unlink(log);
    snprintf(body, sizeof body, "echo call >> '%s'; echo 'array offline' >&2; exit 1", log);
    const char *s = script("failing.sh", body);
    struct lsm_offload_opts o = { .mode = LSM_OFFLOAD_ONLY, .name = "command", .command = s,
                                  .command_timeout_s = 10 };
    struct lsm_offload *ol;
    assert_int_equal(lsm_offload_create(&o, &ol), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(lsm_offload_range(ol, src, (uint64_t)i << 18, dst, (uint64_t)i << 18, 1 << 18), 0);
    assert_string_not_equal(lsm_offload_reason(ol), "");
    struct lsm_offload_counts c;
    lsm_offload_get_counts(ol, &c);
    assert_int_equal(c.command, 0);
    assert_non_null(strstr(c.first_fallback, "exit status 1: array offline"));
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    int calls = 0;
    char line[32];
    while (fgets(line, sizeof line, f))
        calls++;
    fclose(f);
    assert_int_equal(calls, 2);
    lsm_offload_free(ol);
    lsm_file_close(src);
    lsm_file_close(dst);
}

/* A command that copies half of each range: the ladder reports the half,
 * and a range left over goes to the caller, not to the command again. */
static void test_ladder_short_command(void **state)
{
    (void)state;
    struct lsm_file *src, *dst;
    make_pair(&src, &dst);
    const char *s = script("half.sh",
        "n=$(($6 / 2)); dd if=\"$2\" of=\"$4\" bs=4096 iflag=skip_bytes,count_bytes "
        "oflag=seek_bytes conv=notrunc skip=$3 seek=$5 count=$n status=none && echo \"copied $n\"");
    struct lsm_offload_opts o = { .mode = LSM_OFFLOAD_ONLY, .name = "command", .command = s };
    struct lsm_offload *ol;
    assert_int_equal(lsm_offload_create(&o, &ol), 0);
    assert_int_equal(lsm_offload_range(ol, src, 0, dst, 0, 1 << 20), 1 << 19);
    assert_non_null(strstr(lsm_offload_reason(ol), "copied 524288 of 1048576"));
    lsm_offload_free(ol);
    lsm_file_close(src);
    lsm_file_close(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mode_parse),
        cmocka_unit_test(test_cmd_ok),
        cmocka_unit_test(test_cmd_partial_and_bad),
        cmocka_unit_test(test_cmd_timeout_and_cancel),
        cmocka_unit_test(test_ladder_copy_range),
        cmocka_unit_test(test_ladder_drops_failing_command),
        cmocka_unit_test(test_ladder_short_command),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
