/* JSON-RPC 2.0 framing (rpc.h). */
#include <ctype.h>
#include <stdlib.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "rpc.h"

void lsm_rpc_req_free(struct lsm_rpc_req *req)
{
    if (req->root)
        json_object_put(req->root);
    memset(req, 0, sizeof *req);
}

static bool valid_id(json_object *id)
{
    if (!id)
        return true;                            /* null */
    switch (json_object_get_type(id)) {
    case json_type_string:
    case json_type_int:
    case json_type_null:
        return true;
    default:
        return false;                           /* JSON-RPC 2.0: no fractions, no objects */
    }
}

int lsm_rpc_parse(const char *line, size_t len, struct lsm_rpc_req *req, const char **msg)
{
    memset(req, 0, sizeof *req);
    if (len > INT32_MAX) {
        *msg = "request too large";
        return LSM_RPC_INVALID_REQUEST;
    }
    /* A NUL inside the line would end json-c's view of it early. */
    if (memchr(line, '\0', len)) {
        *msg = "parse error: NUL byte in the request";
        return LSM_RPC_PARSE_ERROR;
    }
    json_tokener *tok = json_tokener_new();
    if (!tok) {
        *msg = "out of memory";
        return LSM_RPC_INTERNAL_ERROR;
    }
    /* json-c needs the end of input to finish a bare number: parse a copy
     * with its NUL.  Strict: RFC 8259 JSON only. */
    char *copy = malloc(len + 1);
    if (!copy) {
        json_tokener_free(tok);
        *msg = "out of memory";
        return LSM_RPC_INTERNAL_ERROR;
    }
    memcpy(copy, line, len);
    copy[len] = '\0';
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    json_object *root = json_tokener_parse_ex(tok, copy, (int)len + 1);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t used = tok->char_offset;
    json_tokener_free(tok);
    free(copy);
    if (!root || jerr != json_tokener_success) {
        if (root)
            json_object_put(root);
        *msg = "parse error: not valid JSON";
        return LSM_RPC_PARSE_ERROR;
    }
    for (; used < len; used++) {
        if (!isspace((unsigned char)line[used])) {
            json_object_put(root);
            *msg = "parse error: more than one JSON value on the line";
            return LSM_RPC_PARSE_ERROR;
        }
    }
    req->root = root;
    if (json_object_get_type(root) == json_type_array) {
        *msg = "batch requests are not supported";
        return LSM_RPC_INVALID_REQUEST;
    }
    if (json_object_get_type(root) != json_type_object) {
        *msg = "the request is not a JSON object";
        return LSM_RPC_INVALID_REQUEST;
    }
    json_object *id = NULL;
    if (json_object_object_get_ex(root, "id", &id)) {
        if (!valid_id(id)) {
            *msg = "\"id\" must be a string, an integer or null";
            return LSM_RPC_INVALID_REQUEST;
        }
        req->id = id;
        req->has_id = true;
    }
    json_object *v;
    if (!json_object_object_get_ex(root, "jsonrpc", &v) || !json_object_is_type(v, json_type_string)
        || strcmp(json_object_get_string(v), "2.0")) {
        *msg = "\"jsonrpc\" must be \"2.0\"";
        return LSM_RPC_INVALID_REQUEST;
    }
    if (!json_object_object_get_ex(root, "method", &v) || !json_object_is_type(v, json_type_string)) {
        *msg = "\"method\" must be a string";
        return LSM_RPC_INVALID_REQUEST;
    }
    req->method = json_object_get_string(v);
    if (json_object_object_get_ex(root, "params", &v)) {
        if (!json_object_is_type(v, json_type_object)) {
            *msg = "\"params\" must be an object (named parameters)";
            return LSM_RPC_INVALID_REQUEST;
        }
        req->params = v;
    } else {
        json_object *empty = json_object_new_object();
        if (!empty) {
            *msg = "out of memory";
            return LSM_RPC_INTERNAL_ERROR;
        }
        json_object_object_add(root, "params", empty);
        req->params = empty;
    }
    json_object_object_foreach(root, key, val) {
        (void)val;
        if (strcmp(key, "jsonrpc") && strcmp(key, "id") && strcmp(key, "method")
            && strcmp(key, "params")) {
            *msg = "unknown member in the request (only jsonrpc, id, method, params)";
            return LSM_RPC_INVALID_REQUEST;
        }
    }
    return 0;
}

static char *reply(json_object *id, const char *key, json_object *val)
{
    json_object *o = json_object_new_object();
    if (!o) {
        json_object_put(val);
        return NULL;
    }
    json_object_object_add(o, "jsonrpc", json_object_new_string("2.0"));
    json_object_object_add(o, "id", id ? json_object_get(id) : NULL);
    json_object_object_add(o, key, val);
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *copy = s ? strdup(s) : NULL;
    json_object_put(o);
    return copy;
}

char *lsm_rpc_result(json_object *id, json_object *result)
{
    return reply(id, "result", result ? result : json_object_new_object());
}

char *lsm_rpc_error(json_object *id, int code, const char *message, json_object *data)
{
    json_object *e = json_object_new_object();
    if (!e) {
        json_object_put(data);
        return NULL;
    }
    json_object_object_add(e, "code", json_object_new_int(code));
    json_object_object_add(e, "message", json_object_new_string(message ? message : ""));
    if (data)
        json_object_object_add(e, "data", data);
    return reply(id, "error", e);
}

static int bad(char *msg, const char *name, const char *what)
{
    int n = snprintf(msg, LSM_RPC_MSG_MAX, "parameter \"%.64s\" ", name);
    if (n > 0 && n < LSM_RPC_MSG_MAX)
        snprintf(msg + n, LSM_RPC_MSG_MAX - (size_t)n, "%.180s", what);
    return LSM_RPC_INVALID_PARAMS;
}

static int get_member(json_object *params, const char *name, bool required, json_object **v,
                      char *msg)
{
    if (!json_object_object_get_ex(params, name, v) || !*v)
        return required ? bad(msg, name, "is required") : 1;
    return 0;
}

int lsm_rpc_param_string(json_object *params, const char *name, bool required,
                         const char **out, char *msg)
{
    json_object *v;
    int r = get_member(params, name, required, &v, msg);
    if (r)
        return r;
    if (!json_object_is_type(v, json_type_string))
        return bad(msg, name, "must be a string");
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    if (n == 0)
        return bad(msg, name, "must not be empty");
    if (strlen(s) != n)
        return bad(msg, name, "must not contain a NUL character");
    if (n > 4096)
        return bad(msg, name, "is longer than 4096 bytes");
    *out = s;
    return 0;
}

int lsm_rpc_param_uint(json_object *params, const char *name, bool required, uint64_t max,
                       uint64_t *out, char *msg)
{
    json_object *v;
    int r = get_member(params, name, required, &v, msg);
    if (r)
        return r;
    if (!json_object_is_type(v, json_type_int))
        return bad(msg, name, "must be an integer");
    errno = 0;
    int64_t i = json_object_get_int64(v);
    if (errno || i < 0)
        return bad(msg, name, "must be a non-negative integer");
    if ((uint64_t)i > max) {
        char what[64];
        snprintf(what, sizeof what, "must be at most %" PRIu64, max);
        return bad(msg, name, what);
    }
    *out = (uint64_t)i;
    return 0;
}

int lsm_rpc_param_bool(json_object *params, const char *name, bool required, bool *out,
                       char *msg)
{
    json_object *v;
    int r = get_member(params, name, required, &v, msg);
    if (r)
        return r;
    if (!json_object_is_type(v, json_type_boolean))
        return bad(msg, name, "must be true or false");
    *out = json_object_get_boolean(v);
    return 0;
}

int lsm_rpc_param_enum(json_object *params, const char *name, bool required,
                       const char *const *choices, int *out, char *msg)
{
    const char *s;
    int r = lsm_rpc_param_string(params, name, required, &s, msg);
    if (r)
        return r;
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(s, choices[i])) {
            *out = i;
            return 0;
        }
    }
    char what[LSM_RPC_MSG_MAX];
    size_t n = (size_t)snprintf(what, sizeof what, "must be one of");
    for (int i = 0; choices[i] && n < sizeof what; i++)
        n += (size_t)snprintf(what + n, sizeof what - n, "%s \"%s\"", i ? "," : "", choices[i]);
    return bad(msg, name, what);
}

int lsm_rpc_param_check_known(json_object *params, const char *const *known, char *msg)
{
    json_object_object_foreach(params, key, val) {
        (void)val;
        bool found = false;
        for (int i = 0; known[i] && !found; i++)
            found = !strcmp(key, known[i]);
        if (!found) {
            snprintf(msg, LSM_RPC_MSG_MAX, "unknown parameter \"%.64s\"", key);
            return LSM_RPC_INVALID_PARAMS;
        }
    }
    return 0;
}

bool lsm_rpc_valid_task_id(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.')
            return false;
    }
    return true;
}
