/* Progress display: a bar with rate and time left on a terminal, qemu-img's
 * "    (45.00/100%)\r" records for programs, or JSON lines. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "json-out.h"
#include "progress.h"
#include "util.h"

bool cli_parse_progress(const char *command, const char *arg, enum cli_progress_mode *out)
{
    if (!arg || !strcmp(arg, "bar"))
        *out = CLI_PROGRESS_BAR;
    else if (!strcmp(arg, "json"))
        *out = CLI_PROGRESS_JSON;
    else {
        cli_usage_error(command, "--progress must be 'bar' or 'json', not '%s'", arg);
        return false;
    }
    return true;
}

void cli_progress_init(struct cli_progress *p, enum cli_progress_mode mode)
{
    memset(p, 0, sizeof(*p));
    p->mode = mode;
    /* Everything on stdout, as qemu-img prints its progress. */
    p->out = stdout;
    p->tty = isatty(fileno(p->out));
    p->start_ns = p->last_sample_ns = lsm_now_ns();
    p->last_pct = -1;
    p->interval_ms = 250;
}

/* qemu-img convert -p's record: qemu's "%3.2f" is what "%.2f" prints for
 * 0 to 100, and \r ends each one. */
static void record(struct cli_progress *p, double pct)
{
    fprintf(p->out, "    (%.2f/100%%)\r", pct);
    fflush(p->out);
    p->last_pct = pct;
    p->drawn = true;
}

static void sample(struct cli_progress *p, uint64_t done, uint64_t now)
{
    uint64_t dt = now - p->last_sample_ns;
    if (dt < 100000000ULL && p->rate > 0)
        return;
    if (dt == 0)
        return;
    double inst = (double)(done - MIN(done, p->last_done)) * 1e9 / (double)dt;
    p->rate = p->rate > 0 ? 0.7 * p->rate + 0.3 * inst : inst;
    p->last_done = done;
    p->last_sample_ns = now;
}

static void show(struct cli_progress *p, uint64_t done, uint64_t total, uint64_t now, bool final)
{
    double pct = total ? 100.0 * (double)done / (double)total : 100.0;
    if (pct > 100.0)
        pct = 100.0;
    double elapsed = (double)(now - p->start_ns) / 1e9;
    double rate = final ? (elapsed > 0 ? (double)done / elapsed : 0) : p->rate;
    double eta = final ? 0 : (rate > 0 ? (double)(total - MIN(done, total)) / rate : -1);
    if (p->mode == CLI_PROGRESS_BAR && !p->tty) {
        if (p->last_pct < 0)
            record(p, 0.0);
        if (final)
            record(p, 100.0);
        else if (pct >= p->last_pct + 1.0)
            record(p, (double)(uint64_t)pct);
        return;
    }
    if (p->mode == CLI_PROGRESS_JSON) {
        json_object *j = json_object_new_object();
        json_object_object_add(j, "bytes_done", json_object_new_int64((int64_t)done));
        json_object_object_add(j, "bytes_total", json_object_new_int64((int64_t)total));
        json_object_object_add(j, "percent", cli_json_fixed(pct, "%.2f"));
        json_object_object_add(j, "rate", json_object_new_int64((int64_t)rate));
        json_object_object_add(j, "eta_seconds", eta < 0 ? NULL : cli_json_fixed(eta, "%.1f"));
        cli_json_print_line(p->out, j);
        json_object_put(j);
        fflush(p->out);
        return;
    }
    char rbuf[32], dbuf[32];
    lsm_format_size((uint64_t)rate, rbuf, sizeof(rbuf));
    lsm_format_size(done, dbuf, sizeof(dbuf));
    char etabuf[32];
    if (eta < 0)
        snprintf(etabuf, sizeof(etabuf), "--:--");
    else if (eta >= 3600)
        snprintf(etabuf, sizeof(etabuf), "%u:%02u:%02u", (unsigned)(eta / 3600),
                 (unsigned)((uint64_t)eta % 3600 / 60), (unsigned)((uint64_t)eta % 60));
    else
        snprintf(etabuf, sizeof(etabuf), "%02u:%02u", (unsigned)(eta / 60), (unsigned)((uint64_t)eta % 60));
    char bar[31];
    unsigned fill = (unsigned)(pct * 30 / 100);
    for (unsigned i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    fprintf(p->out, "\r    (%6.2f/100%%) [%s] %s %s/s %s left\033[K", pct, bar, dbuf, rbuf,
            final ? "00:00" : etabuf);
    p->drawn = true;
    fflush(p->out);
}

void cli_progress_update(void *opaque, uint64_t done, uint64_t total)
{
    struct cli_progress *p = opaque;
    if (p->mode == CLI_PROGRESS_NONE)
        return;
    uint64_t now = lsm_now_ns();
    sample(p, done, now);
    if (p->mode == CLI_PROGRESS_BAR && !p->tty) {
        show(p, done, total, now, false);
        return;
    }
    if (p->last_ns && now - p->last_ns < (uint64_t)p->interval_ms * 1000000ULL)
        return;
    p->last_ns = now;
    show(p, done, total, now, false);
}

void cli_progress_finish(struct cli_progress *p, uint64_t done, uint64_t total)
{
    if (p->mode == CLI_PROGRESS_NONE)
        return;
    show(p, done, total, lsm_now_ns(), true);
    cli_progress_break(p);
}

void cli_progress_break(struct cli_progress *p)
{
    if (p->drawn) {
        fputc('\n', p->out);
        fflush(p->out);
        p->drawn = false;
    }
}
