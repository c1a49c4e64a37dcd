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
                                 .bandwidth = 1u << 20, .have_created = true, .created_dev = 5,
                                 .created_ino = 1ULL << 40 };
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
    assert_int_equal(b.created_ino, 1ULL << 40);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
