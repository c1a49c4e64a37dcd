/* JSON strings valid whatever the bytes of a name (json-util.h). */
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"

static bool valid_codepoint(uint32_t cp)
{
    if (cp > 0x10ffffu)
        return false;
    if ((cp >= 0xfdd0u && cp <= 0xfdefu) || (cp & 0xfffeu) == 0xfffeu)
        return false;                       /* noncharacters */
    return cp < 0xd800u || cp > 0xdfffu;    /* surrogates */
}

/* Length of the sequence at p (at least 1), and whether it is valid. */
static size_t next_sequence(const unsigned char *p, bool *valid)
{
    static const uint32_t min_cp[] = { 0x80, 0x800, 0x10000, 0x200000, 0x4000000 };
    unsigned char lead = p[0];
    *valid = false;
    if (lead < 0x80) {
        *valid = true;
        return 1;
    }
    if (lead >= 0xfe || !(lead & 0x40))
        return 1;                           /* impossible or continuation byte */
    size_t len = 0;
    unsigned mask = 0x80;
    for (; lead & mask; mask >>= 1)
        len++;                              /* 2..6 */
    uint32_t cp = lead & (mask - 1);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)          /* also stops at the terminating NUL */
            return i;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    *valid = valid_codepoint(cp) && (cp >= min_cp[len - 2] || (cp == 0 && len == 2));
    return len;
}

char *lsm_utf8_sanitize(const char *s, size_t *len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    /* Each invalid sequence is at least one byte and becomes three. */
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(3 * n + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    while (*p) {
        bool valid;
        size_t k = next_sequence(p, &valid);
        if (!valid) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
        } else if (k == 2 && p[0] == 0xc0) {
            out[o++] = '\0';                /* "\xC0\x80": U+0000 */
        } else {
            memcpy(out + o, p, k);
            o += k;
        }
        p += k;
    }
    out[o] = '\0';
    *len = o;
    return out;
}

json_object *lsm_json_string(const char *s)
{
    size_t len;
    char *clean = lsm_utf8_sanitize(s, &len);
    if (!clean)
        return NULL;
    json_object *o = NULL;
    if (len <= INT_MAX)
        o = json_object_new_string_len(clean, (int)len);
    free(clean);
    return o;
}
