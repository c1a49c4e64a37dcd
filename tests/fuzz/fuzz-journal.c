/* libFuzzer target: the copy journal's loader (engine/journal.c).
 *
 * The input is a journal file's bytes.  lsm_journal_parse must refuse bad
 * documents with a message, never crash, read out of bounds or allocate
 * without bound (the bitmap is capped at LSM_JOURNAL_MAX_BITS).  What it
 * accepts must be self-consistent: the frontier and the reached mark within
 * the size, every done granule inside the bitmap, and saving it again
 * (build_doc) must not fail; done_at must walk the bitmap to its end.
 */
#include <stdint.h>
#include <stdlib.h>

#include "error.h"
#include "journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lsm_journal *j = NULL;
    lsm_error_clear();
    int r = lsm_journal_parse(NULL, data, size, &j);
    if (r < 0) {
        if (!*lsm_last_error())
            abort();
        return 0;
    }
    if (j->frontier > j->size || j->reached > j->size || j->reached < j->frontier ||
        j->nbits == 0 || j->granule == 0)
        abort();
    uint64_t off = 0, steps = 0;
    while (off < j->size) {
        uint64_t end;
        lsm_journal_done_at(j, off, &end);
        if (end <= off || end > j->size)
            abort();
        off = end;
        if (++steps > j->nbits)
            abort();
    }
    if (lsm_journal_done_bytes(j) > j->size)
        abort();
    lsm_journal_free(j);
    return 0;
}
