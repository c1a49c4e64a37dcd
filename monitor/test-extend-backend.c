/* Unit tests of the extension backends' pure-ish parts (extend-backend.c):
 * running a program (status, output, time-out, missing program) and
 * probing what a path is. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "error.h"
#include "extend-backend.h"
#include "util.h"

static void test_run_status_and_output(void **state)
{
    (void)state;
    const char *ok[] = { "sh", "-c", "echo hello;  echo  world >&2; exit 0", NULL };
    int status = -1;
    char *out = NULL;
    assert_int_equal(lsm_run_program(ok, 5000, &status, &out), 0);
    assert_int_equal(status, 0);
    assert_non_null(strstr(out, "hello"));
    assert_non_null(strstr(out, "world"));
    assert_null(strchr(out, '\n'));
    free(out);

    const char *bad[] = { "sh", "-c", "exit 28", NULL };
    out = NULL;
    assert_int_equal(lsm_run_program(bad, 5000, &status, &out), 0);
    assert_int_equal(status, 28);
    assert_non_null(strstr(out, "status 28"));
    free(out);

    /* stdin is /dev/null: a program reading it ends at once. */
    const char *cat[] = { "cat", NULL };
    assert_int_equal(lsm_run_program(cat, 5000, &status, NULL), 0);
    assert_int_equal(status, 0);
}

static void test_run_timeout(void **state)
{
    (void)state;
    /* The child and its own child are both killed (the process group). */
    const char *slow[] = { "sh", "-c", "sleep 30 & sleep 30", NULL };
    int status = -1;
    uint64_t t0 = lsm_now_ns();
    assert_int_equal(lsm_run_program(slow, 300, &status, NULL), -ETIMEDOUT);
    assert_true(lsm_now_ns() - t0 < 3000000000ULL);
    assert_non_null(strstr(lsm_last_error(), "did not finish"));
}

static void test_run_missing(void **state)
{
    (void)state;
    const char *none[] = { "/nonexistent/lsm-extend-cmd", NULL };
    int status = -1;
    assert_true(lsm_run_program(none, 1000, &status, NULL) < 0);
    assert_non_null(strstr(lsm_last_error(), "cannot run /nonexistent/lsm-extend-cmd"));
}

static void test_probe(void **state)
{
    (void)state;
    char path[] = "/tmp/lsm-extend-test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    struct lsm_extend_volume v;
    assert_int_equal(lsm_extend_volume_probe(path, NULL, 0, &v), 0);
    assert_int_equal(v.kind, LSM_EXTEND_FILE);
    uint64_t sz = 0;
    assert_int_equal(lsm_extend_volume_size(&v, &sz), 0);
    assert_int_equal(sz, 1 << 20);
    /* A file is not grown (the file system allocates as QEMU writes). */
    assert_int_equal(lsm_extend_volume_grow(&v, 0, NULL), 0);
    lsm_extend_volume_clear(&v);
    unlink(path);

    assert_int_equal(lsm_extend_volume_probe("/dev/null", NULL, 0, &v), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "neither a regular file nor a block device"));
    assert_true(lsm_extend_volume_probe("/nonexistent/x", NULL, 0, &v) < 0);
    assert_string_equal(lsm_extend_kind_name(LSM_EXTEND_LVM), "lvm");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_status_and_output),
        cmocka_unit_test(test_run_timeout),
        cmocka_unit_test(test_run_missing),
        cmocka_unit_test(test_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
