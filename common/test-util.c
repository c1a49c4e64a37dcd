/* Unit tests for common/util.c */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "json-util.h"
#include "util.h"
#include "error.h"

static void test_parse_size(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(lsm_parse_size("0", &v), 0); assert_int_equal(v, 0);
    assert_int_equal(lsm_parse_size("512", &v), 0); assert_int_equal(v, 512);
    assert_int_equal(lsm_parse_size("64k", &v), 0); assert_int_equal(v, 65536);
    assert_int_equal(lsm_parse_size("1M", &v), 0); assert_int_equal(v, 1048576);
    assert_int_equal(lsm_parse_size("2GiB", &v), 0); assert_int_equal(v, 2ULL << 30);
    assert_int_equal(lsm_parse_size("8T", &v), 0); assert_int_equal(v, 8ULL << 40);
    assert_int_equal(lsm_parse_size("", &v), -EINVAL);
    assert_int_equal(lsm_parse_size("-1", &v), -EINVAL);
    assert_int_equal(lsm_parse_size("12x", &v), -EINVAL);
    assert_int_equal(lsm_parse_size("1Mx", &v), -EINVAL);
    assert_int_equal(lsm_parse_size("100000E", &v), -ERANGE);
    assert_int_equal(lsm_parse_size("99999999999999999999999", &v), -ERANGE);
}

static void test_align(void **state)
{
    (void)state;
    assert_int_equal(align_up(1, 512), 512);
    assert_int_equal(align_up(512, 512), 512);
    assert_int_equal(align_down(1023, 512), 512);
    assert_true(is_pow2(65536));
    assert_false(is_pow2(0));
    assert_false(is_pow2(65537));
    assert_int_equal(div_round_up(1025, 512), 3);
}

static void test_endian(void **state)
{
    (void)state;
    uint8_t b[8];
    be64_put(b, 0x0102030405060708ULL);
    assert_int_equal(b[0], 1);
    assert_int_equal(b[7], 8);
    assert_int_equal(be64_get(b), 0x0102030405060708ULL);
    be32_put(b, 0x514649fb);
    assert_memory_equal(b, "QFI\xfb", 4);
    assert_int_equal(be16_get(b), 0x5146);
}

static void test_format_size(void **state)
{
    (void)state;
    char b[32];
    assert_string_equal(lsm_format_size(0, b, sizeof b), "0 B");
    assert_string_equal(lsm_format_size(999, b, sizeof b), "999 B");
    assert_string_equal(lsm_format_size(1000, b, sizeof b), "0.977 KiB");
    assert_string_equal(lsm_format_size(1536 * 1024, b, sizeof b), "1.5 MiB");
    assert_string_equal(lsm_format_size(1010ULL << 20, b, sizeof b), "0.986 GiB");
    assert_string_equal(lsm_format_size(8ULL << 40, b, sizeof b), "8 TiB");
    for (uint64_t v = 1; v < (1ULL << 62); v = v * 3 + 7)
        assert_null(strchr(lsm_format_size(v, b, sizeof b), 'e'));
}

static void test_error(void **state)
{
    (void)state;
    assert_int_equal(lsm_error_errno(-ENOENT, "cannot open %s", "x"), -ENOENT);
    assert_string_equal(lsm_last_error(), "cannot open x: No such file or directory");
    lsm_error_prefix("%s", "top.qcow2");
    assert_string_equal(lsm_last_error(), "top.qcow2: cannot open x: No such file or directory");
    assert_int_equal(lsm_error(-EINVAL, "plain"), -EINVAL);
    assert_string_equal(lsm_last_error(), "plain");
}

/* Invalid UTF-8 becomes U+FFFD the way QEMU's JSON writer replaces it. */
static void test_utf8_sanitize(void **state)
{
    (void)state;
    static const struct { const char *in, *out; size_t len; } cases[] = {
        { "plain/name.qcow2", "plain/name.qcow2", 16 },
        { "a\xff" "b", "a\xef\xbf\xbd" "b", 5 },                  /* impossible byte */
        { "\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd", 6 },             /* two stray continuations */
        { "\xc3(", "\xef\xbf\xbd(", 4 },                          /* continuation missing */
        { "\xe2\x82x", "\xef\xbf\xbdx", 4 },                      /* lead and one continuation */
        { "end\xe2\x82", "end\xef\xbf\xbd", 6 },                  /* cut at the end */
        { "\xc0\xaf", "\xef\xbf\xbd", 3 },                        /* overlong '/' */
        { "\xed\xa0\x80", "\xef\xbf\xbd", 3 },                    /* surrogate */
        { "\xef\xbf\xbf", "\xef\xbf\xbd", 3 },                    /* noncharacter U+FFFF */
        { "\xef\xb7\x90", "\xef\xbf\xbd", 3 },                    /* noncharacter U+FDD0 */
        { "\xf4\x90\x80\x80", "\xef\xbf\xbd", 3 },                /* beyond U+10FFFF */
        { "\xf8\x88\x80\x80\x80", "\xef\xbf\xbd", 3 },            /* five-byte form */
        { "\xf0\x9f\x98\x80 \xc3\xa9", "\xf0\x9f\x98\x80 \xc3\xa9", 7 }, /* valid, kept */
        { "a\xc0\x80" "b", "a\0b", 3 },                          /* modified UTF-8 NUL */
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t len;
        char *out = lsm_utf8_sanitize(cases[i].in, &len);
        assert_non_null(out);
        assert_int_equal(len, cases[i].len);
        assert_memory_equal(out, cases[i].out, len);
        assert_int_equal(out[len], 0);
        free(out);
    }
    json_object *o = lsm_json_string("x\xff\"\\\n");
    assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
                        "\"x\xef\xbf\xbd\\\"\\\\\\n\"");
    json_object_put(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_align),
        cmocka_unit_test(test_endian),
        cmocka_unit_test(test_format_size),
        cmocka_unit_test(test_error),
        cmocka_unit_test(test_utf8_sanitize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
