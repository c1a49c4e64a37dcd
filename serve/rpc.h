/* JSON-RPC 2.0 framing for the worker service (serve/): one request per
 * line, one reply per request, json-c objects.
 *
 * Pure: no I/O, no globals.  The server reads a line, hands it to
 * lsm_rpc_parse(), runs the method, and writes what lsm_rpc_result() or
 * lsm_rpc_error() return followed by a newline.
 *
 * What is refused, and how (the standard codes):
 *   -32700 the line is not JSON;
 *   -32600 JSON but not a request: not an object, "jsonrpc" not "2.0",
 *          "method" missing or not a string, "id" neither string, integer
 *          nor null, "params" neither object nor absent, a batch (array:
 *          batches are not supported), a request larger than the limit;
 *   -32601 no such method (the server's table);
 *   -32602 the parameters are wrong (lsm_rpc_param_*).
 * The service's own codes (operational failures) are LSM_RPC_E_* below.
 * A request without "id" is a notification: the server answers nothing
 * (JSON-RPC 2.0, section 4.1), except when it is not a valid request at all
 * (then the reply carries "id": null, section 5).
 *
 * Library layer: never prints. */
#ifndef LSM_RPC_H
#define LSM_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>

#define LSM_RPC_PARSE_ERROR      -32700
#define LSM_RPC_INVALID_REQUEST  -32600
#define LSM_RPC_METHOD_NOT_FOUND -32601
#define LSM_RPC_INVALID_PARAMS   -32602
#define LSM_RPC_INTERNAL_ERROR   -32603
/* The service's own codes (docs/serve.md). */
#define LSM_RPC_E_FAILED         -32000   /* operational failure: data.errno, data.name */
#define LSM_RPC_E_NO_TASK        -32001   /* no task with that id */
#define LSM_RPC_E_GENERATION     -32002   /* volume generation is not the expected one */
#define LSM_RPC_E_ACCESS         -32003   /* a path outside the domain roots */
#define LSM_RPC_E_BUSY           -32004   /* --max-tasks tasks are running, or the task exists */
#define LSM_RPC_E_TASK_STATE     -32005   /* not possible in the task's state */

struct lsm_rpc_req {
    json_object *root;      /* the whole request (owned) */
    json_object *id;        /* borrowed from root; NULL: notification */
    bool has_id;
    const char *method;     /* borrowed */
    json_object *params;    /* borrowed; an empty object when absent */
};

/* Parse one line (len bytes, no newline; need not be NUL-terminated).
 * Returns 0 with *req filled (free with lsm_rpc_req_free), or one of the
 * standard codes with *msg set to a static description; req->id is then
 * the request's id when it could be read (else NULL), and must still be
 * freed with lsm_rpc_req_free. */
int lsm_rpc_parse(const char *line, size_t len, struct lsm_rpc_req *req, const char **msg);
void lsm_rpc_req_free(struct lsm_rpc_req *req);

/* The reply text (malloc'd, no newline) for id (NULL: null), taking
 * ownership of result / data (either may be NULL).  NULL when out of
 * memory. */
char *lsm_rpc_result(json_object *id, json_object *result);
char *lsm_rpc_error(json_object *id, int code, const char *message, json_object *data);

/* Parameters.  Each returns 0, 1 when the optional member is absent (out
 * left as it was), or LSM_RPC_INVALID_PARAMS with *msg (a buffer of
 * LSM_RPC_MSG_MAX bytes) naming the member and what is wrong.  Unknown
 * members are refused by lsm_rpc_param_check_known. */
#define LSM_RPC_MSG_MAX 256
int lsm_rpc_param_string(json_object *params, const char *name, bool required,
                         const char **out, char *msg);
int lsm_rpc_param_uint(json_object *params, const char *name, bool required, uint64_t max,
                       uint64_t *out, char *msg);
int lsm_rpc_param_bool(json_object *params, const char *name, bool required, bool *out,
                       char *msg);
/* A string that is one of the NULL-terminated choices: *out its index. */
int lsm_rpc_param_enum(json_object *params, const char *name, bool required,
                       const char *const *choices, int *out, char *msg);
/* LSM_RPC_INVALID_PARAMS if params has a member not in the NULL-terminated
 * known list. */
int lsm_rpc_param_check_known(json_object *params, const char *const *known, char *msg);

/* A task id given by a client: 1 to 64 of [A-Za-z0-9_.-], not starting with
 * '.' (it names a file in the state directory). */
bool lsm_rpc_valid_task_id(const char *s);

#endif
