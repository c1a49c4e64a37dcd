/* Unit tests of the JSON-RPC framing (rpc.h) and of the task record and
 * generation parsers (store.h, generation.h). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "confine.h"
#include "generation.h"
#include "rpc.h"
#include "store.h"

static int parse(const char *s, struct lsm_rpc_req *rq)
{
    const char *msg = NULL;
    int r = lsm_rpc_parse(s, strlen(s), rq, &msg);
    if (r)
        assert_non_null(msg);
    return r;
}

static void test_parse_ok(void **state)
{
    (void)state;
    struct lsm_rpc_req rq;
    assert_int_equal(parse("{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}", &rq), 0);
    assert_string_equal(rq.method, "ping");
    assert_true(rq.has_id);
    assert_int_equal(json_object_get_int(rq.id), 7);
    assert_non_null(rq.params);
    assert_true(json_object_is_type(rq.params, json_type_object));
    lsm_rpc_req_free(&rq);
    assert_int_equal(parse("  {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"x\",\"params\":{\"k\":1}}  ", &rq), 0);
    assert_string_equal(json_object_get_string(rq.id), "a");
    lsm_rpc_req_free(&rq);
    /* a notification */
    assert_int_equal(parse("{\"jsonrpc\":\"2.0\",\"method\":\"x\"}", &rq), 0);
    assert_false(rq.has_id);
    lsm_rpc_req_free(&rq);
}

static void test_parse_bad(void **state)
{
    (void)state;
    struct lsm_rpc_req rq;
    static const struct { const char *s; int code; } cases[] = {
        { "", LSM_RPC_PARSE_ERROR },
        { "{", LSM_RPC_PARSE_ERROR },
        { "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} {}", LSM_RPC_PARSE_ERROR },
        { "nul", LSM_RPC_PARSE_ERROR },
        { "[]", LSM_RPC_INVALID_REQUEST },
        { "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", LSM_RPC_INVALID_REQUEST },
        { "42", LSM_RPC_INVALID_REQUEST },
        { "\"ping\"", LSM_RPC_INVALID_REQUEST },
        { "{\"id\":1,\"method\":\"ping\"}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":1}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"ping\"}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":[1]}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":3}", LSM_RPC_INVALID_REQUEST },
        { "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"extra\":3}", LSM_RPC_INVALID_REQUEST },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int r = parse(cases[i].s, &rq);
        if (r != cases[i].code)
            fail_msg("'%s': %d, expected %d", cases[i].s, r, cases[i].code);
        lsm_rpc_req_free(&rq);
    }
    /* the id comes back with a later error */
    assert_int_equal(parse("{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":1}", &rq), LSM_RPC_INVALID_REQUEST);
    assert_int_equal(json_object_get_int(rq.id), 9);
    lsm_rpc_req_free(&rq);
    /* a NUL inside the line */
    const char nul[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"pi\0ng\"}";
    const char *msg;
    assert_int_equal(lsm_rpc_parse(nul, sizeof nul - 1, &rq, &msg), LSM_RPC_PARSE_ERROR);
    lsm_rpc_req_free(&rq);
}

static void test_replies(void **state)
{
    (void)state;
    json_object *id = json_object_new_int(3);
    char *s = lsm_rpc_result(id, json_object_new_object());
    assert_string_equal(s, "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}");
    free(s);
    s = lsm_rpc_error(NULL, LSM_RPC_METHOD_NOT_FOUND, "no", NULL);
    assert_string_equal(s, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32601,\"message\":\"no\"}}");
    free(s);
    json_object_put(id);
}

static void test_params(void **state)
{
    (void)state;
    char msg[LSM_RPC_MSG_MAX];
    json_object *p = json_tokener_parse("{\"s\":\"x\",\"e\":\"\",\"n\":5,\"neg\":-1,\"f\":1.5,\"b\":true,\"big\":99999999999}");
    const char *s;
    uint64_t u;
    bool b;
    int i;
    assert_int_equal(lsm_rpc_param_string(p, "s", true, &s, msg), 0);
    assert_string_equal(s, "x");
    assert_int_equal(lsm_rpc_param_string(p, "e", true, &s, msg), LSM_RPC_INVALID_PARAMS);
    assert_int_equal(lsm_rpc_param_string(p, "n", true, &s, msg), LSM_RPC_INVALID_PARAMS);
    assert_int_equal(lsm_rpc_param_string(p, "missing", true, &s, msg), LSM_RPC_INVALID_PARAMS);
    assert_non_null(strstr(msg, "missing"));
    assert_int_equal(lsm_rpc_param_string(p, "missing", false, &s, msg), 1);
    assert_int_equal(lsm_rpc_param_uint(p, "n", true, 10, &u, msg), 0);
    assert_int_equal(u, 5);
    assert_int_equal(lsm_rpc_param_uint(p, "n", true, 4, &u, msg), LSM_RPC_INVALID_PARAMS);
    assert_int_equal(lsm_rpc_param_uint(p, "neg", true, 10, &u, msg), LSM_RPC_INVALID_PARAMS);
    assert_int_equal(lsm_rpc_param_uint(p, "f", true, 10, &u, msg), LSM_RPC_INVALID_PARAMS);
    assert_int_equal(lsm_rpc_param_uint(p, "s", true, 10, &u, msg), LSM_RPC_INVALID_PARAMS);
    assert_int_equal(lsm_rpc_param_bool(p, "b", true, &b, msg), 0);
    assert_true(b);
    assert_int_equal(lsm_rpc_param_bool(p, "n", true, &b, msg), LSM_RPC_INVALID_PARAMS);
    static const char *const ch[] = { "y", "x", NULL };
    assert_int_equal(lsm_rpc_param_enum(p, "s", true, ch, &i, msg), 0);
    assert_int_equal(i, 1);
    static const char *const ch2[] = { "y", NULL };
    assert_int_equal(lsm_rpc_param_enum(p, "s", true, ch2, &i, msg), LSM_RPC_INVALID_PARAMS);
    static const char *const known[] = { "s", "e", "n", "neg", "f", "b", NULL };
    assert_int_equal(lsm_rpc_param_check_known(p, known, msg), LSM_RPC_INVALID_PARAMS);
    assert_non_null(strstr(msg, "big"));
    json_object_put(p);
}

static void test_task_id(void **state)
{
    (void)state;
    assert_true(lsm_rpc_valid_task_id("3f2c-aa_b.c"));
    assert_false(lsm_rpc_valid_task_id(""));
    assert_false(lsm_rpc_valid_task_id(".x"));
    assert_false(lsm_rpc_valid_task_id("a/b"));
    assert_false(lsm_rpc_valid_task_id("a b"));
    char l[70];
    memset(l, 'a', 65);
    l[65] = 0;
    assert_false(lsm_rpc_valid_task_id(l));
    l[64] = 0;
    assert_true(lsm_rpc_valid_task_id(l));
}

static void test_record_roundtrip(void **state)
{
    (void)state;
    struct lsm_task_record r = { .state = LSM_JOB_RUNNING, .created = 10, .started = 11, .runs = 2,
                                 .bandwidth = 1u << 20, .have_created = true,
                                 .created_file = { .dev = 5, .ino = 1ULL << 40, .btime_ns = 7 } };
    strcpy(r.id, "abc");
    strcpy(r.method, "copyVolume");
    strcpy(r.message, "note");
    r.params = json_tokener_parse("{\"source\":\"/a\"}");
    json_object *o = lsm_task_record_to_json(&r);
    const char *s = json_object_to_json_string(o);
    struct lsm_task_record b;
    assert_int_equal(lsm_task_record_parse(s, strlen(s), &b), 0);
    assert_string_equal(b.id, "abc");
    assert_string_equal(b.method, "copyVolume");
    assert_int_equal(b.state, LSM_JOB_RUNNING);
    assert_int_equal(b.runs, 2);
    assert_int_equal(b.bandwidth, 1u << 20);
    assert_true(b.have_created);
    assert_int_equal(b.created_file.ino, 1ULL << 40);
    assert_int_equal(b.created_file.btime_ns, 7);
    assert_true(json_object_equal(b.params, r.params));
    lsm_task_record_free(&b);
    json_object_put(o);
    lsm_task_record_free(&r);
    static const char *const bad[] = {
        "", "{}", "[]", "{\"version\":2}",
        "{\"version\":1,\"taskId\":\"../x\",\"method\":\"m\",\"params\":{},\"state\":\"running\","
        "\"created\":0,\"started\":0,\"finished\":0,\"runs\":0,\"bandwidth\":0,\"error\":0,\"message\":\"\"}",
        "{\"version\":1,\"taskId\":\"x\",\"method\":\"m\",\"params\":{},\"state\":\"nope\","
        "\"created\":0,\"started\":0,\"finished\":0,\"runs\":0,\"bandwidth\":0,\"error\":0,\"message\":\"\"}",
        "{\"version\":1,\"taskId\":\"x\",\"method\":\"m\",\"params\":{},\"state\":\"running\","
        "\"created\":-1,\"started\":0,\"finished\":0,\"runs\":0,\"bandwidth\":0,\"error\":0,\"message\":\"\"}",
        "{\"version\":1,\"taskId\":\"x\",\"method\":\"m\",\"params\":{},\"state\":\"running\","
        "\"created\":0,\"started\":0,\"finished\":0,\"runs\":0,\"bandwidth\":0,\"error\":5,\"message\":\"\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(lsm_task_record_parse(bad[i], strlen(bad[i]), &b), -EINVAL);
}

static void test_generation_parse(void **state)
{
    (void)state;
    uint64_t g;
    assert_int_equal(lsm_generation_parse("0\n", 2, &g), 0);
    assert_int_equal(g, 0);
    assert_int_equal(lsm_generation_parse("42", 2, &g), 0);
    assert_int_equal(g, 42);
    assert_int_equal(lsm_generation_parse("", 0, &g), -EINVAL);
    assert_int_equal(lsm_generation_parse("\n", 1, &g), -EINVAL);
    assert_int_equal(lsm_generation_parse("-1", 2, &g), -EINVAL);
    assert_int_equal(lsm_generation_parse("1 ", 2, &g), -EINVAL);
    assert_int_equal(lsm_generation_parse("99999999999999999", 17, &g), -EINVAL);
    assert_int_equal(lsm_generation_parse("9007199254740993", 16, &g), -EINVAL);
}

/* LV tags as lvs prints them (serve/generation.c keeps an LV's generation
 * in its tag lsm_gen_N). */
static void test_generation_tags(void **state)
{
    (void)state;
    uint64_t g = 99;
    assert_int_equal(lsm_generation_from_tags("", &g), 0);             /* no tags: 0 */
    assert_int_equal(g, 0);
    g = 99;
    assert_int_equal(lsm_generation_from_tags("owner_vdsm,pool.1", &g), 0);
    assert_int_equal(g, 0);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_7", &g), 0);
    assert_int_equal(g, 7);
    assert_int_equal(lsm_generation_from_tags("a,lsm_gen_0,b", &g), 0);
    assert_int_equal(g, 0);
    assert_int_equal(lsm_generation_from_tags("x,lsm_gen_9007199254740992", &g), 0);
    assert_int_equal(g, UINT64_C(9007199254740992));
    /* other tags that only look alike do not count */
    assert_int_equal(lsm_generation_from_tags("lsm_gen,my_lsm_gen_3,lsm_genX", &g), 0);
    assert_int_equal(g, 0);
    /* two generation tags (an interrupted change on an LVM that commits
     * each tag separately, or two writers): neither is believed */
    assert_int_equal(lsm_generation_from_tags("lsm_gen_3,lsm_gen_4", &g), -EUCLEAN);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_3,x,lsm_gen_3", &g), -EUCLEAN);
    /* malformed numbers */
    assert_int_equal(lsm_generation_from_tags("lsm_gen_", &g), -EINVAL);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_07", &g), -EINVAL);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_-1", &g), -EINVAL);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_1x,a", &g), -EINVAL);
    assert_int_equal(lsm_generation_from_tags("a,lsm_gen_9007199254740993", &g), -EINVAL);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_99999999999999999999", &g), -EINVAL);
    assert_int_equal(lsm_generation_from_tags("lsm_gen_5\n", &g), -EINVAL);
}

static char tmpdir[256];

struct loaded { int n, bad; enum lsm_job_state state; int error; };

static void load_cb(void *o, struct lsm_task_record *rec)
{
    struct loaded *l = o;
    l->n++;
    l->state = rec->state;
    l->error = rec->error;
    lsm_task_record_free(rec);
}

static void bad_cb(void *o, const char *name, const char *msg)
{
    struct loaded *l = o;
    (void)name;
    assert_non_null(msg);
    l->bad++;
}

static int setup_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test-serve.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown_tmp(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void touch(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    close(fd);
}

static void test_confine(void **state)
{
    (void)state;
    char root[300], out[300], p[400];
    snprintf(root, sizeof root, "%s/root", tmpdir);
    snprintf(out, sizeof out, "%s/out", tmpdir);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(mkdir(out, 0755), 0);
    struct lsm_confine c = { 0 };
    assert_true(lsm_confine_under(&c, "/anything"));          /* no roots */
    assert_int_equal(lsm_confine_add_root(&c, root), 0);
    snprintf(p, sizeof p, "%s/no-such-dir", tmpdir);
    assert_int_equal(lsm_confine_add_root(&c, p), -ENOENT);
    assert_true(lsm_confine_under(&c, c.roots[0]));
    snprintf(p, sizeof p, "%s/a", c.roots[0]);
    assert_true(lsm_confine_under(&c, p));
    snprintf(p, sizeof p, "%sx/a", c.roots[0]);               /* root + suffix is not under it */
    assert_false(lsm_confine_under(&c, p));
    assert_false(lsm_confine_under(&c, "/"));

    char *r = NULL;
    snprintf(p, sizeof p, "%s/new.raw", root);                /* to be created */
    assert_int_equal(lsm_confine_path(&c, p, false, &r), 0);
    free(r);
    assert_int_equal(lsm_confine_path(&c, p, true, &r), -ENOENT);
    snprintf(p, sizeof p, "%s/../out/x.raw", root);           /* .. out of the root */
    assert_int_equal(lsm_confine_path(&c, p, false, &r), -EACCES);
    char f[400], l[400];
    snprintf(f, sizeof f, "%s/file", out);
    touch(f);
    snprintf(l, sizeof l, "%s/link", root);                   /* a symlink to outside */
    assert_int_equal(symlink(f, l), 0);
    assert_int_equal(lsm_confine_path(&c, l, true, &r), -EACCES);
    snprintf(l, sizeof l, "%s/dangling", root);
    snprintf(f, sizeof f, "%s/not-yet", out);
    assert_int_equal(symlink(f, l), 0);
    assert_int_equal(lsm_confine_path(&c, l, false, &r), -EACCES);
    snprintf(f, sizeof f, "%s/in", root);
    touch(f);
    snprintf(l, sizeof l, "%s/link-in", root);
    assert_int_equal(symlink("in", l), 0);
    assert_int_equal(lsm_confine_path(&c, l, true, &r), 0);   /* resolves to root/in */
    assert_non_null(strstr(r, "/root/in"));
    free(r);
    lsm_confine_free(&c);
}

static void test_store(void **state)
{
    (void)state;
    char dir[300], p[400];
    snprintf(dir, sizeof dir, "%s/state", tmpdir);
    struct lsm_store *st = NULL;
    assert_int_equal(lsm_store_open(dir, &st), 0);
    struct lsm_task_record r = { .state = LSM_JOB_FINISHED, .runs = 1 };
    strcpy(r.id, "t-1");
    strcpy(r.method, "ping");
    r.params = json_object_new_object();
    assert_int_equal(lsm_store_write(st, &r), 0);
    r.state = LSM_JOB_FAILED;                                 /* replaced, not added */
    r.error = -EIO;
    assert_int_equal(lsm_store_write(st, &r), 0);
    lsm_store_close(st);
    /* a leftover temporary file is removed at open; a bad record is left */
    snprintf(p, sizeof p, "%s/tasks/.t-2.json.tmp", dir);
    touch(p);
    snprintf(p, sizeof p, "%s/tasks/bad.json", dir);
    FILE *fp = fopen(p, "w");
    fputs("{\"version\":1}", fp);
    fclose(fp);
    assert_int_equal(lsm_store_open(dir, &st), 0);
    snprintf(p, sizeof p, "%s/tasks/.t-2.json.tmp", dir);
    assert_int_equal(access(p, F_OK), -1);
    struct loaded got = { 0 };
    assert_int_equal(lsm_store_load(st, load_cb, bad_cb, &got), 0);
    assert_int_equal(got.n, 1);
    assert_int_equal(got.bad, 1);
    assert_int_equal(got.state, LSM_JOB_FAILED);
    assert_int_equal(got.error, -EIO);
    assert_int_equal(lsm_store_remove(st, "t-1"), 0);
    assert_int_equal(lsm_store_remove(st, "t-1"), 0);          /* absent: fine */
    snprintf(p, sizeof p, "%s/tasks/t-1.json", dir);
    assert_int_equal(access(p, F_OK), -1);
    lsm_store_close(st);
    lsm_task_record_free(&r);
}

static void test_generation_file(void **state)
{
    (void)state;
    char v[300], g[320];
    snprintf(v, sizeof v, "%s/vol.raw", tmpdir);
    snprintf(g, sizeof g, "%s.generation", v);
    uint64_t gen = 99;
    assert_int_equal(lsm_generation_get(v, &gen), 0);          /* no volume, no file: 0 */
    assert_int_equal(gen, 0);
    touch(v);
    assert_int_equal(lsm_generation_bump(v, 1), -ESTALE);
    assert_int_equal(access(g, F_OK), -1);
    assert_int_equal(lsm_generation_bump(v, 0), 0);
    assert_int_equal(lsm_generation_get(v, &gen), 0);
    assert_int_equal(gen, 1);
    FILE *fp = fopen(g, "w");
    fputs("x\n", fp);
    fclose(fp);
    assert_int_equal(lsm_generation_get(v, &gen), -EINVAL);
    assert_int_equal(lsm_generation_get("/dev/null", &gen), -ENOTSUP);
    /* no file is ever made in /dev for a volume that is not there */
    assert_int_equal(lsm_generation_get("/dev/lsm-no-such-vg-x/lv", &gen), -ENOENT);
    assert_int_equal(lsm_generation_bump("/dev/lsm-no-such-volume-x", 0), -ENOENT);
    assert_int_equal(access("/dev/lsm-no-such-volume-x.generation", F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_replies),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_task_id),
        cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_generation_parse),
        cmocka_unit_test(test_generation_tags),
        cmocka_unit_test_setup_teardown(test_confine, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_store, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_generation_file, setup_tmp, teardown_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
