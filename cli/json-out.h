/* JSON output of the command line: every document is built with json-c
 * (strings through lsm_json_string(), common/json-util.h) and printed here,
 * so nothing that lsm-sync prints as JSON is put together with printf. */
#ifndef LSM_CLI_JSON_OUT_H
#define LSM_CLI_JSON_OUT_H

#include <stdio.h>
#include <json-c/json.h>

#include "json-util.h"

/* A number printed with a fixed format ("%.3f"), for fields whose precision
 * is part of the output (seconds, percent).  Not-finite values print as 0. */
json_object *cli_json_fixed(double v, const char *fmt);
/* o on one line, compact, then a newline. */
void cli_json_print_line(FILE *f, json_object *o);
/* An object of scalars in qemu-img map's layout: { "a": 1, "b": true}.
 * Keys and values are serialised by json-c; no newline. */
void cli_json_print_qemu_object(FILE *f, json_object *o);

#endif
