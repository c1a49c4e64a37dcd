/* Progress display for long operations: a bar on a terminal (-p) or one
 * JSON object per line on stdout (--progress=json). */
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
    bool drawn;              /* a bar is on screen (needs a newline) */
    uint64_t start_ns, last_ns, last_done, last_sample_ns;
    double rate;             /* bytes per second, smoothed */
    unsigned interval_ms;    /* minimum time between updates */
};

void cli_progress_init(struct cli_progress *p, enum cli_progress_mode mode);
/* Update (throttled); usable as an lsm_copy_progress_fn with p as opaque. */
void cli_progress_update(void *p, uint64_t done, uint64_t total);
/* Final update (always printed) and end the bar's line. */
void cli_progress_finish(struct cli_progress *p, uint64_t done, uint64_t total);
/* End the bar's line (before an error message). */
void cli_progress_break(struct cli_progress *p);

#endif
