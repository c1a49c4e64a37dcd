/* Fuzz target: what the worker service parses from outside — a request
 * line (rpc.h, with the parameter helpers on its params), a task record
 * from the state directory (store.h, and the round trip of what parses) and
 * a volume's generation file (generation.h).  Every input goes to all
 * three. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "generation.h"
#include "rpc.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct lsm_rpc_req rq;
    const char *why;
    if (lsm_rpc_parse(s, size, &rq, &why) == 0) {
        char msg[LSM_RPC_MSG_MAX];
        const char *str;
        uint64_t u;
        bool b;
        int i;
        static const char *const choices[] = { "ALL", "INTERNAL", "LEAF", NULL };
        static const char *const known[] = { "taskId", "source", NULL };
        lsm_rpc_param_string(rq.params, "taskId", true, &str, msg);
        if (lsm_rpc_param_string(rq.params, "source", false, &str, msg) == 0)
            lsm_rpc_valid_task_id(str);
        lsm_rpc_param_uint(rq.params, "bandwidth", false, UINT64_C(1) << 50, &u, msg);
        lsm_rpc_param_bool(rq.params, "create", false, &b, msg);
        lsm_rpc_param_enum(rq.params, "syncType", false, choices, &i, msg);
        lsm_rpc_param_check_known(rq.params, known, msg);
        free(lsm_rpc_result(rq.id, json_object_get(rq.params)));
    } else {
        free(lsm_rpc_error(rq.id, LSM_RPC_INVALID_REQUEST, why, NULL));
    }
    lsm_rpc_req_free(&rq);

    struct lsm_task_record r;
    if (lsm_task_record_parse(s, size, &r) == 0) {
        json_object *o = lsm_task_record_to_json(&r);
        const char *text = o ? json_object_to_json_string(o) : NULL;
        struct lsm_task_record again;
        if (text) {
            if (lsm_task_record_parse(text, strlen(text), &again) != 0)
                abort();            /* what was written must read back */
            if (strcmp(again.id, r.id) || again.state != r.state || again.runs != r.runs)
                abort();
            lsm_task_record_free(&again);
        }
        json_object_put(o);
        lsm_task_record_free(&r);
    }

    uint64_t g;
    lsm_generation_parse(s, size, &g);
    return 0;
}
