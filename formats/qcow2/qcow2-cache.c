/* Bounded LRU cache of qcow2 metadata tables. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "image-internal.h"
#include "qcow2.h"

struct qcow2_cache_slot {
    uint64_t offset;      /* 0 = empty (offset 0 is the header, never a table) */
    uint64_t last_use;
};

struct qcow2_cache {
    unsigned nslots;
    size_t table_size;
    uint64_t tick;
    struct qcow2_cache_slot *slots;
    uint8_t *data;
};

struct qcow2_cache *qcow2_cache_new(unsigned slots, size_t table_size)
{
    struct qcow2_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->nslots = slots;
    c->table_size = table_size;
    c->slots = calloc(slots, sizeof *c->slots);
    c->data = malloc(slots * table_size);
    if (!c->slots || !c->data) {
        qcow2_cache_free(c);
        return NULL;
    }
    return c;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->data);
    free(c);
}

int qcow2_cache_get(struct qcow2_cache *c, int fd, uint64_t offset, const uint8_t **table)
{
    unsigned victim = 0;
    for (unsigned i = 0; i < c->nslots; i++) {
        if (c->slots[i].offset == offset && offset) {
            c->slots[i].last_use = ++c->tick;
            *table = c->data + (size_t)i * c->table_size;
            return 0;
        }
        if (c->slots[i].last_use < c->slots[victim].last_use)
            victim = i;
    }
    uint8_t *p = c->data + (size_t)victim * c->table_size;
    c->slots[victim].offset = 0;
    int r = lsm_pread_zerofill(fd, p, c->table_size, offset);
    if (r < 0)
        return lsm_error_errno(r, "cannot read metadata table at offset 0x%llx",
                               (unsigned long long)offset);
    c->slots[victim].offset = offset;
    c->slots[victim].last_use = ++c->tick;
    *table = p;
    return 0;
}
