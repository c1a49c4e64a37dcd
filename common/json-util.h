/* JSON strings that are valid whatever the bytes of a name.
 *
 * File names, backing names and snapshot names are bytes; JSON strings are
 * Unicode.  json-c copies the bytes of a string through unchanged, so a name
 * that is not UTF-8 would make the whole document invalid.  Every string
 * that lsm-sync puts into JSON goes through lsm_json_string(), which does
 * what QEMU's JSON writer does (qobject/json-writer.c with
 * util/unicode.c's mod_utf8_codepoint): the name is read as modified UTF-8
 * and each invalid sequence becomes U+FFFD, so that `info --output=json`
 * decodes to the same strings as `qemu-img info --output=json`. */
#ifndef LSM_JSON_UTIL_H
#define LSM_JSON_UTIL_H

#include <stddef.h>
#include <json-c/json.h>

/* s with each invalid sequence replaced by U+FFFD (EF BF BD), in a malloc'd
 * buffer of *len bytes plus a terminating NUL.  Invalid, as in QEMU: a
 * continuation byte or 0xFE/0xFF where a sequence should start (one byte),
 * a lead byte followed by too few continuation bytes (the lead and the
 * continuation bytes present), and a complete sequence that is overlong,
 * beyond U+10FFFF, a surrogate or one of the 66 noncharacters.  The
 * overlong "\xC0\x80" is U+0000, as in modified UTF-8: the result may then
 * hold a NUL before *len.  Returns NULL when out of memory. */
char *lsm_utf8_sanitize(const char *s, size_t *len);

/* A new json-c string holding lsm_utf8_sanitize(s); NULL when out of memory
 * (json_object_object_add then stores null). */
json_object *lsm_json_string(const char *s);

#endif
