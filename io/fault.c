/* Fault injection for tests of the engine: LSM_IO_FAULT=OP:N:ERR[,...]
 * (see io.h).  The wrapper forwards every call to the real backend and
 * rewrites the result of the Nth request of kind OP when it completes, so
 * the I/O really happens and only what the caller is told changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "io-internal.h"
#include "util.h"

#define FAULT_MAX_RULES 16
#define OP_ANY 4
#define ERR_SHORT (-1)

struct rule {
    int op;             /* enum lsm_io_op or OP_ANY */
    unsigned long n;    /* 1-based index among requests of that kind */
    int err;            /* positive errno or ERR_SHORT */
};

struct mark {
    struct lsm_io_req *req;
    int err;
};

struct fault {
    struct lsm_io *inner;
    struct rule rules[FAULT_MAX_RULES];
    unsigned nrules;
    unsigned long count[OP_ANY + 1];
    struct mark marks[FAULT_MAX_RULES];  /* each rule fires once */
    unsigned nmarks;
    char name[32];
};

static const char *const op_names[] = {
    [LSM_OP_READ] = "read", [LSM_OP_WRITE] = "write",
    [LSM_OP_WRITE_ZEROES] = "zero", [LSM_OP_FLUSH] = "flush", [OP_ANY] = "any",
};

static int parse_rule(const char *spec, const char *item, struct rule *r)
{
    char op[16], err[16];
    unsigned long n;
    char extra;
    if (sscanf(item, "%15[^:]:%lu:%15[^:,]%c", op, &n, err, &extra) != 3 || n == 0)
        return lsm_error(-EINVAL, "invalid LSM_IO_FAULT '%s': '%s' is not OP:N:ERR with N >= 1",
                         spec, item);
    r->op = -1;
    for (int i = 0; i < (int)ARRAY_SIZE(op_names); i++)
        if (strcmp(op, op_names[i]) == 0)
            r->op = i;
    if (r->op < 0)
        return lsm_error(-EINVAL, "invalid LSM_IO_FAULT '%s': unknown operation '%s' (read, write, zero, flush or any)",
                         spec, op);
    r->n = n;
    if (strcmp(err, "EIO") == 0)
        r->err = EIO;
    else if (strcmp(err, "ENOSPC") == 0)
        r->err = ENOSPC;
    else if (strcmp(err, "short") == 0 && r->op != LSM_OP_FLUSH)
        r->err = ERR_SHORT;
    else
        return lsm_error(-EINVAL, "invalid LSM_IO_FAULT '%s': unknown error '%s' for %s (EIO, ENOSPC or short; flush cannot be short)",
                         spec, err, op);
    return 0;
}

static int parse_spec(const char *spec, struct fault *f)
{
    size_t len = strlen(spec);
    char *copy = strdup(spec);
    if (!copy)
        return lsm_error_errno(-ENOMEM, "cannot parse LSM_IO_FAULT");
    int r = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (f->nrules == FAULT_MAX_RULES) {
            r = lsm_error(-EINVAL, "invalid LSM_IO_FAULT '%s': more than %d rules", spec,
                          FAULT_MAX_RULES);
            break;
        }
        r = parse_rule(spec, item, &f->rules[f->nrules++]);
        if (r < 0)
            break;
    }
    free(copy);
    if (r == 0 && (f->nrules == 0 || spec[len - 1] == ','))
        r = lsm_error(-EINVAL, "invalid LSM_IO_FAULT '%s': expected OP:N:ERR[,OP:N:ERR...]", spec);
    return r;
}

int lsm_fault_wrap(struct lsm_io *inner, const char *spec, struct lsm_io **out)
{
    struct fault *f = calloc(1, sizeof *f);
    struct lsm_io *io = calloc(1, sizeof *io);
    if (!f || !io) {
        free(f);
        free(io);
        return lsm_error_errno(-ENOMEM, "cannot set up fault injection");
    }
    int r = parse_spec(spec, f);
    if (r < 0) {
        free(f);
        free(io);
        return r;
    }
    f->inner = inner;
    snprintf(f->name, sizeof f->name, "%s+fault", lsm_io_name(inner));
    io->ops = &lsm_fault_ops;
    io->kind = inner->kind;
    io->cfg = inner->cfg;
    io->priv = f;
    *out = io;
    return 0;
}

const char *lsm_fault_name(const struct lsm_io *io)
{
    const struct fault *f = io->priv;
    return f->name;
}

static void fault_destroy(struct lsm_io *io)
{
    struct fault *f = io->priv;
    lsm_io_destroy(f->inner);
    free(f);
}

static int fault_register_buffers(struct lsm_io *io, const struct iovec *iov, unsigned n)
{
    struct fault *f = io->priv;
    return lsm_io_register_buffers(f->inner, iov, n);
}

static int fault_register_file(struct lsm_io *io, struct lsm_file *file)
{
    struct fault *f = io->priv;
    return lsm_io_register_file(f->inner, file);
}

static int fault_queue(struct lsm_io *io, struct lsm_io_req *req)
{
    struct fault *f = io->priv;
    int r = lsm_io_queue(f->inner, req);
    if (r < 0)
        return r;
    unsigned long n_op = ++f->count[req->op];
    unsigned long n_any = ++f->count[OP_ANY];
    for (unsigned i = 0; i < f->nrules; i++) {
        const struct rule *ru = &f->rules[i];
        if ((ru->op == (int)req->op && ru->n == n_op) || (ru->op == OP_ANY && ru->n == n_any)) {
            f->marks[f->nmarks++] = (struct mark){ .req = req, .err = ru->err };
            break;
        }
    }
    return 0;
}

static int fault_submit(struct lsm_io *io)
{
    struct fault *f = io->priv;
    return lsm_io_submit(f->inner);
}

static int fault_reap(struct lsm_io *io, unsigned min_done, struct lsm_io_req **done, unsigned max)
{
    struct fault *f = io->priv;
    int n = lsm_io_reap(f->inner, min_done, done, max);
    for (int i = 0; i < n && f->nmarks; i++) {
        for (unsigned j = 0; j < f->nmarks; j++) {
            if (f->marks[j].req != done[i])
                continue;
            struct lsm_io_req *req = done[i];
            if (f->marks[j].err != ERR_SHORT)
                req->result = -f->marks[j].err;
            else if (req->result > 0)
                req->result /= 2;
            f->marks[j] = f->marks[--f->nmarks];
            break;
        }
    }
    return n;
}

const struct lsm_io_ops lsm_fault_ops = {
    .name = "fault",
    .destroy = fault_destroy,
    .register_buffers = fault_register_buffers,
    .register_file = fault_register_file,
    .queue = fault_queue,
    .submit = fault_submit,
    .reap = fault_reap,
};
