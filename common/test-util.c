/* Unit tests for common/util.c, error.c, fileio.c (lsm_open_disk), lock.c */
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

#include "json-util.h"
#include "util.h"
#include "error.h"
#include "fileio.h"
#include "lock.h"

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

static char scratch[] = "/tmp/lsm-test-util.XXXXXX";

static const char *in_scratch(const char *name)
{
    static char p[256];
    snprintf(p, sizeof p, "%s/%s", scratch, name);
    return p;
}

static int ro(const char *name)
{
    int fd = open(in_scratch(name), O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

/* Two descriptors of one file are two users, as two processes are. */
static void test_lock(void **state)
{
    (void)state;
    int fd = open(in_scratch("img"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);

    int r1 = ro("img"), r2 = ro("img"), w1 = ro("img"), w2 = ro("img"), u = ro("img");
    assert_int_equal(lsm_lock_read(r1, "img", false), 0);
    assert_int_equal(lsm_lock_read(r2, "img", false), 0);       /* readers share */
    assert_int_equal(lsm_lock_write(w1, "img"), -EAGAIN);       /* readers do not share write */
    assert_string_equal(lsm_last_error(),
                        "Failed to get \"write\" lock on img: Is another process using the image?");
    assert_int_equal(lsm_lock_read(u, "img", true), 0);         /* -U shares everything */
    close(r1);
    close(r2);
    lsm_lock_release(u);
    /* The refused attempt released its own bytes: w1 holds nothing now. */
    assert_int_equal(lsm_lock_write(w2, "img"), 0);
    assert_int_equal(lsm_lock_write(w1, "img"), -EAGAIN);       /* one writer */
    r1 = ro("img");
    assert_int_equal(lsm_lock_read(r1, "img", false), -EAGAIN);
    assert_string_equal(lsm_last_error(),
                        "Failed to get shared \"write\" lock on img: Is another process using the image?");
    assert_int_equal(lsm_lock_read(u, "img", true), 0);         /* qemu-img -U reads it */
    lsm_lock_release(w2);                                        /* explicit release */
    assert_int_equal(lsm_lock_read(r1, "img", false), 0);
    close(r1);
    close(u);
    close(w1);
    close(w2);
    unlink(in_scratch("img"));
}

static void test_open_disk(void **state)
{
    (void)state;
    struct stat st;
    /* A FIFO without a writer: refused at once, never waited on. */
    assert_int_equal(mkfifo(in_scratch("fifo"), 0600), 0);
    assert_int_equal(lsm_open_disk(in_scratch("fifo"), O_RDONLY, 0, "backing file", &st), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "is a FIFO"));
    assert_non_null(strstr(lsm_last_error(), "backing file"));
    assert_int_equal(lsm_open_disk(in_scratch("fifo"), O_RDWR, 0, NULL, &st), -EINVAL);
    assert_int_equal(lsm_open_disk(in_scratch("fifo"), O_WRONLY, 0, NULL, &st), -EINVAL);
    assert_int_equal(lsm_open_disk(in_scratch("fifo"), O_RDWR | O_CREAT | O_EXCL, 0600, NULL, &st),
                     -EEXIST);
    assert_int_equal(access(in_scratch("fifo"), F_OK), 0);     /* left alone */
    unlink(in_scratch("fifo"));
    assert_int_equal(lsm_open_disk("/dev/null", O_RDWR, 0, NULL, &st), -EINVAL);
    assert_non_null(strstr(lsm_last_error(), "character device"));
    assert_int_equal(lsm_open_disk(scratch, O_RDONLY, 0, NULL, &st), -EISDIR);
    assert_int_equal(lsm_open_disk(in_scratch("none"), O_RDONLY, 0, NULL, &st), -ENOENT);
    /* A regular file: the descriptor, blocking again. */
    int fd = lsm_open_disk(in_scratch("f"), O_RDWR | O_CREAT | O_EXCL, 0600, NULL, &st);
    assert_true(fd >= 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    unlink(in_scratch("f"));
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(scratch) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(scratch);
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
        cmocka_unit_test(test_lock),
        cmocka_unit_test(test_open_disk),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
