/* Unit tests of the migrate flow's parts that run before libvirt is
 * touched (flows/migrate.c): option checks, the journal's loader (missing,
 * damaged, another domain's, other disks), a journal that blocks a new
 * run, and the one-run-per-domain lock.  The flow itself runs against a
 * real libvirtd in tests/functional/migrate.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>

#include "error.h"
#include "migrate.h"

static char dir[] = "/tmp/test-migrate.XXXXXX";

static void write_file(const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static int run(enum lsm_migrate_mode mode, const char *domain, const char *const *disks,
               unsigned n, const char *dst)
{
    struct lsm_migrate_opts o = { .mode = mode, .domain = domain, .disks = disks, .ndisks = n,
                                  .dst_domain = dst, .state_dir = dir };
    struct lsm_migrate_result res;
    int r = lsm_migrate(&o, &res);
    /* refused before anything: nothing committed, nothing removed */
    assert_false(res.committed);
    assert_int_equal(res.removed, 0);
    lsm_migrate_result_free(&res);
    return r;
}

static void test_sync_writes_parse(void **state)
{
    (void)state;
    enum lsm_migrate_sync_writes m;
    assert_int_equal(lsm_migrate_sync_writes_parse("auto", &m), 0);
    assert_int_equal(m, LSM_MIGRATE_SW_AUTO);
    assert_int_equal(lsm_migrate_sync_writes_parse("always", &m), 0);
    assert_int_equal(m, LSM_MIGRATE_SW_ALWAYS);
    assert_int_equal(lsm_migrate_sync_writes_parse("never", &m), 0);
    assert_int_equal(m, LSM_MIGRATE_SW_NEVER);
    assert_int_equal(lsm_migrate_sync_writes_parse("Auto", &m), -EINVAL);
    assert_int_equal(lsm_migrate_sync_writes_parse("", &m), -EINVAL);
    assert_string_equal(lsm_migrate_outcome_name(LSM_MIGRATE_PARTIAL), "partial");
}

static void test_options(void **state)
{
    (void)state;
    const char *vda[] = { "vda" }, *twice[] = { "vda", "vda" };
    assert_int_equal(run(LSM_MIGRATE_START, "d1", vda, 0, dir), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "no disk"));
    assert_int_equal(run(LSM_MIGRATE_START, "d1", vda, 1, NULL), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "no destination"));
    assert_int_equal(run(LSM_MIGRATE_START, "d1", twice, 2, dir), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "named twice"));
    assert_int_equal(run(LSM_MIGRATE_START, "../d1", vda, 1, dir), -EINVAL);
    assert_int_equal(run(LSM_MIGRATE_START, "a/b", vda, 1, dir), -EINVAL);
    assert_int_equal(run(LSM_MIGRATE_START, "", vda, 1, dir), -EINVAL);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none", dir);
    assert_true(run(LSM_MIGRATE_START, "d1", vda, 1, missing) < 0);
    assert_non_null(strstr(lsm_last_error(), "none"));
}

static void test_journal(void **state)
{
    (void)state;
    const char *vda[] = { "vda" }, *vdb[] = { "vdb" };
    assert_int_equal(run(LSM_MIGRATE_RESUME, "d2", NULL, 0, NULL), -ENOENT);
    assert_non_null(strstr(lsm_last_error(), "no migration of domain 'd2' is recorded"));
    assert_int_equal(run(LSM_MIGRATE_ROLLBACK, "d2", NULL, 0, NULL), -ENOENT);

    static const char *const bad[] = {
        "", "{", "[]", "{\"version\":2}", "{\"version\":1,\"domain\":\"other\"}",
        "{\"version\":1,\"domain\":\"d2\",\"run\":\"r\",\"phase\":\"sync\",\"committed\":false,"
        "\"dst_kind\":\"tape\",\"dst_domain\":\"/x\",\"disks\":[]}",
        "{\"version\":1,\"domain\":\"d2\",\"run\":\"r\",\"phase\":\"sync\",\"committed\":false,"
        "\"dst_kind\":\"file\",\"dst_domain\":\"/x\",\"disks\":[]}",
        "{\"version\":1,\"domain\":\"d2\",\"run\":\"r\",\"phase\":\"sync\",\"committed\":false,"
        "\"dst_kind\":\"file\",\"dst_domain\":\"/x\",\"disks\":[{\"disk\":\"vda\"}]}",
        "{\"version\":1,\"domain\":\"d2\",\"run\":\"r\",\"phase\":\"sync\",\"committed\":false,"
        "\"dst_kind\":\"file\",\"dst_domain\":\"/x\",\"disks\":[{\"disk\":\"vda\",\"old_leaf\":\"/a\","
        "\"overlay\":\"/a.mig-r\",\"overlay_block\":false,\"overlay_made\":true,\"destination\":[1],"
        "\"dst_planned\":true,\"synced\":false,\"sync_writes\":false,\"pivoted\":false}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file("d2.json", bad[i]);
        assert_int_equal(run(LSM_MIGRATE_RESUME, "d2", NULL, 0, NULL), -EINVAL);
        assert_non_null(strstr(lsm_last_error(), "is not a migration journal of domain 'd2'"));
    }

    /* a good journal: a new run is refused; other disks or another
     * destination than it records are refused before libvirt */
    write_file("d2.json",
        "{\"version\":1,\"domain\":\"d2\",\"run\":\"r\",\"phase\":\"sync\",\"committed\":false,"
        "\"dst_kind\":\"file\",\"dst_domain\":\"/x\",\"disks\":[{\"disk\":\"vda\",\"old_leaf\":\"/a\","
        "\"overlay\":\"/a.mig-r\",\"overlay_block\":false,\"overlay_made\":true,"
        "\"destination\":[\"/x/a.mig-r\",\"/x/a\"],\"dst_planned\":true,\"synced\":false,"
        "\"sync_writes\":false,\"pivoted\":false}]}\n");
    assert_int_equal(run(LSM_MIGRATE_START, "d2", vda, 1, dir), -EEXIST);
    assert_non_null(strstr(lsm_last_error(), "--resume"));
    assert_int_equal(run(LSM_MIGRATE_RESUME, "d2", vdb, 1, NULL), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "other disks"));
    assert_int_equal(run(LSM_MIGRATE_RESUME, "d2", vda, 1, "/y"), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "records destination /x"));
    /* nothing was changed in it */
    char p[256];
    snprintf(p, sizeof p, "%s/d2.json", dir);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true(st.st_size > 100);

    /* the parser alone (the fuzz target's entry): the same answers */
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(lsm_migrate_journal_check("d2", bad[i]), -EINVAL);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    char text[2048];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    assert_int_equal(lsm_migrate_journal_check("d2", text), 0);
    assert_int_equal(lsm_migrate_journal_check("d3", text), -EINVAL);
}

static void test_lock(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s/d3.lock", dir);
    int fd = open(p, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    assert_int_equal(run(LSM_MIGRATE_RESUME, "d3", NULL, 0, NULL), -EBUSY);
    assert_non_null(strstr(lsm_last_error(), "another lsm-sync migrate of domain 'd3' is running"));
    close(fd);
    assert_int_equal(run(LSM_MIGRATE_RESUME, "d3", NULL, 0, NULL), -ENOENT);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_writes_parse),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_journal),
        cmocka_unit_test(test_lock),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
