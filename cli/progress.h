/* Progress display for long operations, on stdout:
 * -p on a terminal: a bar redrawn in place;
 * -p when stdout is not a terminal: qemu-img's records, "    (NN.NN/100%)\r",
 *   one per whole percent gained plus a first 0.00 and a final 100.00, then
 *   "\n" (what programs written for qemu-img convert -p parse, vdsm's
 *   \s*\(([\d.]+)/100%\)\s* for one);
 * --progress=json: one JSON object per line. */
#ifndef LSM_CLI_PROGRESS_H
#define LSM_CLI_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum cli_progress_mode { CLI_PROGRESS_NONE, CLI_PROGRESS_BAR, CLI_PROGRESS_JSON };

struct cli_progress {
    enum cli_progress_mode mode;
    FILE *out;
    bool tty;
    bool drawn;              /* a bar or a record is out (needs a newline) */
    double last_pct;         /* records: the percentage last printed */
    uint64_t start_ns, last_ns, last_done, last_sample_ns;
    double rate;             /* bytes per second, smoothed */
    unsigned interval_ms;    /* minimum time between updates */
};

/* --progress[=bar|json], the same in every command that reports progress:
 * none or "bar" is -p's mode, "json" JSON lines; false after a usage error. */
bool cli_parse_progress(const char *command, const char *arg, enum cli_progress_mode *out);

void cli_progress_init(struct cli_progress *p, enum cli_progress_mode mode);
/* Update (throttled); usable as an lsm_copy_progress_fn with p as opaque. */
void cli_progress_update(void *p, uint64_t done, uint64_t total);
/* Final update (always printed) and end the bar's line. */
void cli_progress_finish(struct cli_progress *p, uint64_t done, uint64_t total);
/* End the bar's line (before an error message). */
void cli_progress_break(struct cli_progress *p);

#endif
