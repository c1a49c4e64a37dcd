/* JSON output of the command line (json-out.h). */
#include <math.h>
#include <stdio.h>

#include "json-out.h"

json_object *cli_json_fixed(double v, const char *fmt)
{
    char buf[64];
    if (!isfinite(v))
        v = 0;
    snprintf(buf, sizeof buf, fmt, v);
    return json_object_new_double_s(v, buf);
}

void cli_json_print_line(FILE *f, json_object *o)
{
    fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
}

void cli_json_print_qemu_object(FILE *f, json_object *o)
{
    const char *sep = "{ ";
    json_object_object_foreach(o, key, val) {
        json_object *k = json_object_new_string(key);
        fprintf(f, "%s%s: %s", sep,
                json_object_to_json_string_ext(k, JSON_C_TO_STRING_NOSLASHESCAPE),
                json_object_to_json_string_ext(val, JSON_C_TO_STRING_PLAIN |
                                                    JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(k);
        sep = ", ";
    }
    fputs(*sep == '{' ? "{}" : "}", f);
}
