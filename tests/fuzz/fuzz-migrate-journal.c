/* libFuzzer target: the migration journal's parser (flows/migrate.c), what
 * `lsm-sync migrate --resume` and `--rollback` read from
 * STATE_DIR/DOMAIN.json.
 *
 * The input is the journal's bytes (up to the first NUL, as the loader
 * reads a text file).  lsm_migrate_journal_check must refuse what is not a
 * journal of domain "vm1" with a message, never crash, read out of bounds
 * or leak what it parsed before it found the fault.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "migrate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    lsm_error_clear();
    int r = lsm_migrate_journal_check("vm1", text);
    free(text);
    if (r < 0 && (r != -EINVAL && r != -ENOMEM))
        abort();
    if (r < 0 && !*lsm_last_error())
        abort();
    return 0;
}
