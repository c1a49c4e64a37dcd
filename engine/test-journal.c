/* Unit tests for engine/journal.c: the done bitmap, save/load, the
 * "reached" lines, validation of bad journals, file identities, removal. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "error.h"
#include "journal.h"

#define G 65536u

static struct lsm_journal *new_journal(const char *path, uint64_t size)
{
    struct lsm_journal *j = NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "format", json_object_new_string("raw"));
    assert_int_equal(lsm_journal_new(path, size, G, o, &j), 0);
    return j;
}

static void test_mark(void **state)
{
    (void)state;
    uint64_t size = 10 * G + 100, end;
    struct lsm_journal *j = new_journal("unused", size);
    assert_int_equal(j->nbits, 11);
    assert_false(lsm_journal_done_at(j, 0, &end));
    assert_int_equal(end, size);
    /* only whole granules count */
    assert_int_equal(lsm_journal_mark(j, 100, G), 0);
    lsm_journal_commit(j);
    assert_int_equal(lsm_journal_done_bytes(j), 0);
    /* pending until committed */
    assert_int_equal(lsm_journal_mark(j, G, 2 * G), 0);
    assert_false(lsm_journal_done_at(j, G, &end));
    lsm_journal_commit(j);
    assert_true(lsm_journal_done_at(j, G, &end));
    assert_int_equal(end, 3 * G);
    assert_false(lsm_journal_done_at(j, 3 * G + 5, &end));
    assert_int_equal(end, size);
    /* the short last granule counts when the range reaches the size */
    lsm_journal_mark(j, 10 * G, 100);
    lsm_journal_commit(j);
    assert_true(lsm_journal_done_at(j, 10 * G, &end));
    assert_int_equal(end, size);
    assert_int_equal(lsm_journal_done_bytes(j), 2 * G + 100);
    /* ranges past the size are ignored */
    lsm_journal_mark(j, size, G);
    lsm_journal_mark(j, 0, 0);
    lsm_journal_commit(j);
    assert_int_equal(lsm_journal_done_bytes(j), 2 * G + 100);
    lsm_journal_free(j);
}

static void test_long_runs(void **state)
{
    (void)state;
    /* runs across whole bitmap words */
    uint64_t size = 1000 * (uint64_t)G, end;
    struct lsm_journal *j = new_journal("unused", size);
    /* out of order, and a granule recorded in two pieces */
    lsm_journal_mark(j, 300 * (uint64_t)G, 403 * (uint64_t)G);
    lsm_journal_mark(j, 3 * G, 297 * (uint64_t)G - 100);
    lsm_journal_mark(j, 300 * (uint64_t)G - 100, 100);
    lsm_journal_commit(j);
    assert_false(lsm_journal_done_at(j, 0, &end));
    assert_int_equal(end, 3 * G);
    assert_true(lsm_journal_done_at(j, 3 * G, &end));
    assert_int_equal(end, 703 * (uint64_t)G);
    assert_false(lsm_journal_done_at(j, 703 * (uint64_t)G, &end));
    assert_int_equal(end, size);
    lsm_journal_free(j);
}

static char dir[] = "/tmp/test-journal-XXXXXX";

static char *tmp_path(const char *name)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
    return p;
}

static void test_save_load(void **state)
{
    (void)state;
    char *path = tmp_path("j1");
    struct lsm_journal *j = new_journal(path, 64 * (uint64_t)G);
    struct lsm_journal_file f[2] = {
        { .role = "source", .path = "a.qcow2", .dev = 0xfe00, .ino = 42, .size = 12345,
          .mtime_ns = 1700000000123456789LL, .has_hash = true, .hash = 0xdeadbeefcafef00dULL,
          .has_hash_next = true, .hash_next = 0x1234, .nprobes = 2, .probes = { 0, 8192 } },
        { .role = "destination", .path = "b", .dev = 0xfe00, .ino = 43, .size = 0,
          .mtime_ns = -1 },
    };
    assert_int_equal(lsm_journal_set_files(j, f, 2), 0);
    lsm_journal_mark(j, 0, 4 * G);
    lsm_journal_mark(j, 10 * G, G);
    lsm_journal_commit(j);
    lsm_journal_mark(j, 20 * G, G);     /* pending: not saved */
    j->frontier = 11 * G;
    assert_int_equal(lsm_journal_save(j), 0);
    assert_int_equal(lsm_journal_note_reached(j, 13 * G), 0);
    assert_int_equal(lsm_journal_note_reached(j, 12 * G), 0);   /* not decreasing: ignored */
    assert_int_equal(lsm_journal_note_reached(j, 15 * G), 0);

    struct lsm_journal *k = NULL;
    assert_int_equal(lsm_journal_load(path, &k), 0);
    assert_int_equal(k->size, 64 * (uint64_t)G);
    assert_int_equal(k->granule, G);
    assert_int_equal(k->frontier, 11 * G);
    assert_int_equal(k->reached, 15 * G);
    assert_int_equal(lsm_journal_done_bytes(k), 5 * G);
    assert_int_equal(k->nfiles, 2);
    assert_string_equal(k->files[0].role, "source");
    assert_int_equal(k->files[0].hash, 0xdeadbeefcafef00dULL);
    assert_int_equal(k->files[0].mtime_ns, 1700000000123456789LL);
    assert_int_equal(k->files[1].mtime_ns, -1);
    assert_false(k->files[1].has_hash);
    assert_int_equal(k->files[0].nprobes, 2);
    assert_int_equal(k->files[0].probes[1], 8192);
    assert_int_equal(k->files[1].nprobes, 0);
    assert_int_equal(lsm_journal_check_files(k, f, 2), 0);
    struct lsm_journal_file g[2] = { f[0], f[1] };
    g[0].size++;
    assert_int_equal(lsm_journal_check_files(k, g, 2), -ESTALE);
    assert_non_null(strstr(lsm_last_error(), "changed size"));
    g[0] = f[0];
    g[0].hash ^= 1;
    assert_int_equal(lsm_journal_check_files(k, g, 2), -ESTALE);
    g[0].hash = 0x1234;     /* the state the checkpoint was writing */
    assert_int_equal(lsm_journal_check_files(k, g, 2), 0);
    g[0] = f[0];
    g[0].ino = 7;
    assert_int_equal(lsm_journal_check_files(k, g, 2), -ESTALE);
    assert_non_null(strstr(lsm_last_error(), "another file"));
    assert_int_equal(lsm_journal_check_files(k, f, 1), -ESTALE);
    lsm_journal_free(k);

    /* a torn last line is ignored, the lines before it count */
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "reached 00000000001", 19), 19);
    close(fd);
    assert_int_equal(lsm_journal_load(path, &k), 0);
    assert_int_equal(k->reached, 15 * G);
    lsm_journal_free(k);

    /* a second save replaces the file (and its lines) atomically */
    j->frontier = 20 * G;
    assert_int_equal(lsm_journal_save(j), 0);
    assert_int_equal(lsm_journal_load(path, &k), 0);
    assert_int_equal(k->reached, 20 * G);
    lsm_journal_free(k);

    /* removed only while the path leads to the saved file */
    char *other = tmp_path("j1.other");
    fd = open(other, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(rename(other, path), 0);
    assert_false(lsm_journal_remove(j));
    assert_int_equal(access(path, F_OK), 0);
    assert_int_equal(lsm_journal_save(j), 0);
    assert_true(lsm_journal_remove(j));
    assert_int_equal(access(path, F_OK), -1);
    lsm_journal_free(j);
    free(other);
    free(path);
}

static int parse(const char *s)
{
    struct lsm_journal *j = NULL;
    lsm_error_clear();
    int r = lsm_journal_parse(NULL, s, strlen(s), &j);
    if (r == 0)
        lsm_journal_free(j);
    else
        assert_true(*lsm_last_error());
    return r;
}

#define HEAD "{\"lsm-sync-journal\":1,\"size\":1048576,\"granule\":65536,\"frontier\":0,\"options\":{},"
#define FILE1 "\"files\":[{\"role\":\"source\",\"path\":\"a\",\"dev\":\"1\",\"ino\":\"2\",\"size\":3}],"

static void test_parse_bad(void **state)
{
    (void)state;
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[0,2],[4,12]]}\n"), 0);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[]}\n"), 0);
    /* no newline, not JSON, trailing bytes on the document's line */
    assert_int_equal(parse(HEAD FILE1 "\"done\":[]}"), -EINVAL);
    assert_int_equal(parse("nonsense\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[]} x\n"), -EINVAL);
    assert_int_equal(parse("[1,2]\n"), -EINVAL);
    assert_int_equal(parse("\n"), -EINVAL);
    /* version, geometry */
    assert_int_equal(parse("{\"lsm-sync-journal\":2,\"size\":1,\"granule\":512,\"frontier\":0,"
                           "\"options\":{},\"files\":[],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse("{\"lsm-sync-journal\":1,\"size\":1048576,\"granule\":1000,\"frontier\":0,"
                           "\"options\":{},\"files\":[],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse("{\"lsm-sync-journal\":1,\"size\":0,\"granule\":512,\"frontier\":0,"
                           "\"options\":{},\"files\":[],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse("{\"lsm-sync-journal\":1,\"size\":9223372036854775807,\"granule\":512,"
                           "\"frontier\":0,\"options\":{},\"files\":[],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse("{\"lsm-sync-journal\":1,\"size\":-5,\"granule\":512,\"frontier\":0,"
                           "\"options\":{},\"files\":[],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse("{\"lsm-sync-journal\":1,\"size\":1048576,\"granule\":65536,"
                           "\"frontier\":2000000,\"options\":{},\"files\":[],\"done\":[]}\n"), -EINVAL);
    /* done ranges: out of order, overlapping, past the end, empty, not pairs */
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[4,2],[0,2]]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[0,4],[3,2]]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[10,7]]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[1,0]]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[1]]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[\"1\",2]]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":{}}\n"), -EINVAL);
    assert_int_equal(parse(HEAD FILE1 "\"done\":[[9223372036854775807,9223372036854775807]]}\n"),
                     -EINVAL);
    /* files */
    assert_int_equal(parse(HEAD "\"files\":[{\"role\":\"source\",\"path\":\"a\",\"dev\":\"XYZ\","
                           "\"ino\":\"2\",\"size\":3}],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD "\"files\":[{\"role\":\"source\",\"path\":\"a\",\"dev\":\"1\","
                           "\"ino\":\"12345678901234567\",\"size\":3}],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD "\"files\":[{\"role\":\"source\",\"dev\":\"1\","
                           "\"ino\":\"2\",\"size\":3}],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD "\"files\":[{\"role\":\"source\",\"path\":\"a\\u0000b\",\"dev\":\"1\","
                           "\"ino\":\"2\",\"size\":3}],\"done\":[]}\n"), -EINVAL);
    assert_int_equal(parse(HEAD "\"files\":[7],\"done\":[]}\n"), -EINVAL);
    /* probes: only with a hash, integers below the size, at most 8 */
#define PFILE(P) HEAD "\"files\":[{\"role\":\"destination\",\"path\":\"nbd://h/e\",\"dev\":\"0\"," \
                 "\"ino\":\"0\",\"size\":65536,\"hash\":\"12\",\"probes\":" P "}],\"done\":[]}\n"
    assert_int_equal(parse(PFILE("[0,4096,61440]")), 0);
    assert_int_equal(parse(PFILE("[65536]")), -EINVAL);
    assert_int_equal(parse(PFILE("[-1]")), -EINVAL);
    assert_int_equal(parse(PFILE("[\"1\"]")), -EINVAL);
    assert_int_equal(parse(PFILE("{}")), -EINVAL);
    assert_int_equal(parse(PFILE("[0,1,2,3,4,5,6,7,8]")), -EINVAL);
    assert_int_equal(parse(HEAD "\"files\":[{\"role\":\"source\",\"path\":\"a\",\"dev\":\"1\","
                           "\"ino\":\"2\",\"size\":3,\"probes\":[0]}],\"done\":[]}\n"), -EINVAL);
#undef PFILE
    assert_int_equal(parse(HEAD "\"done\":[]}\n"), -EINVAL);
    /* a NUL byte anywhere */
    struct lsm_journal *j = NULL;
    static const char nul[] = HEAD FILE1 "\"done\":[]}\n\0";
    assert_int_equal(lsm_journal_parse(NULL, nul, sizeof nul - 1, &j), -EINVAL);
    /* "reached" lines: a bad check value or an offset past the size stops them */
    assert_int_equal(parse(HEAD FILE1 "\"done\":[]}\nreached 0000000000050000 00000000\n"), 0);
    static const char good[] = HEAD FILE1 "\"done\":[]}\nreached 0000000000050000 96e25839\n"
                               "reached 0000000000060000 00000000\n";
    assert_int_equal(lsm_journal_parse(NULL, good, sizeof good - 1, &j), 0);
    assert_int_equal(j->reached, 0x50000);
    lsm_journal_free(j);
}

static void test_load_missing(void **state)
{
    (void)state;
    char *path = tmp_path("missing");
    struct lsm_journal *j = NULL;
    assert_int_equal(lsm_journal_load(path, &j), -ENOENT);
    assert_true(*lsm_last_error());
    assert_int_equal(lsm_journal_load(dir, &j), -EINVAL);   /* a directory */
    free(path);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mark),
        cmocka_unit_test(test_long_runs),
        cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_load_missing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
