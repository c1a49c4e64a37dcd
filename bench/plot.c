/* --plot=FILE.svg: bandwidth and p99 completion latency over time, two
 * panels sharing the time axis, one colour per job (read solid, write
 * dashed).  Plain SVG written by hand: no dependency. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench-cli.h"
#include "error.h"
#include "util.h"

#define W 960.0
#define H 640.0
#define ML 90.0     /* margins */
#define MR 30.0
#define MT 60.0
#define MB 50.0
#define GAP 70.0

static const char *const colours[] = { "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                       "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22" };

/* One point per sampling interval of a group (clones summed). */
struct point {
    double t;          /* seconds since the bench began (interval midpoint) */
    double bw[2];      /* bytes/s */
    double p99;        /* ns, the largest of the clones' */
    bool have_io;
};

struct series {
    const struct bench_group *g;
    struct point *pts;
    size_t n;
};

static int build_series(const struct bench_group *g, uint64_t sample_ns, struct series *s)
{
    s->g = g;
    s->pts = NULL;
    s->n = 0;
    uint64_t tmax = 0;
    for (unsigned c = 0; c < g->nthreads; c++)
        for (size_t i = 0; i < g->threads[c].nsamples; i++)
            tmax = MAX(tmax, g->threads[c].samples[i].t1_ns);
    if (tmax == 0)
        return 0;
    size_t nb = tmax / sample_ns + 1;
    struct point *pts = calloc(nb, sizeof *pts);
    unsigned *cnt = calloc(nb, sizeof *cnt);
    double *tsum = calloc(nb, sizeof *tsum);
    unsigned *tn = calloc(nb, sizeof *tn);
    if (!pts || !cnt || !tsum || !tn) {
        free(pts);
        free(cnt);
        free(tsum);
        free(tn);
        return lsm_error(-ENOMEM, "out of memory for the plot");
    }
    for (unsigned c = 0; c < g->nthreads; c++) {
        const struct bench_thread *t = &g->threads[c];
        memset(cnt, 0, nb * sizeof *cnt);
        for (size_t i = 0; i < t->nsamples; i++)
            cnt[(t->samples[i].t0_ns + t->samples[i].t1_ns) / 2 / sample_ns]++;
        for (size_t i = 0; i < t->nsamples; i++) {
            const struct bench_sample *sm = &t->samples[i];
            size_t b = (sm->t0_ns + sm->t1_ns) / 2 / sample_ns;
            double dur = (double)(sm->t1_ns - sm->t0_ns) / 1e9;
            if (dur <= 0)
                continue;
            for (int d = 0; d < 2; d++)
                pts[b].bw[d] += (double)sm->bytes[d] / dur / cnt[b];
            if (sm->ios[0] + sm->ios[1]) {
                pts[b].p99 = MAX(pts[b].p99, (double)sm->p99_ns);
                pts[b].have_io = true;
            }
            tsum[b] += (double)(sm->t0_ns + sm->t1_ns) / 2 / 1e9;
            tn[b]++;
        }
    }
    size_t n = 0;
    for (size_t b = 0; b < nb; b++)
        if (tn[b]) {
            pts[n] = pts[b];
            pts[n].t = tsum[b] / tn[b];
            n++;
        }
    free(cnt);
    free(tsum);
    free(tn);
    s->pts = pts;
    s->n = n;
    return 0;
}

static double nice_step(double range)
{
    if (range <= 0)
        return 1;
    double raw = range / 5;
    double p = pow(10, floor(log10(raw)));
    double f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

struct panel {
    double x0, y0, w, h;      /* plot area in SVG units */
    double tmax, ymax, ystep, tstep;
};

static double px(const struct panel *p, double t) { return p->x0 + t / p->tmax * p->w; }
static double py(const struct panel *p, double v) { return p->y0 + p->h - v / p->ymax * p->h; }

static void axes(FILE *f, const struct panel *p, const char *ylabel)
{
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#fcfcfc' "
               "stroke='#444'/>\n", p->x0, p->y0, p->w, p->h);
    for (double v = 0; v <= p->ymax + p->ystep / 1000; v += p->ystep) {
        double y = py(p, v);
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>\n",
                p->x0, y, p->x0 + p->w, y);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='end' font-size='12'>%g</text>\n",
                p->x0 - 6, y + 4, v);
    }
    for (double t = 0; t <= p->tmax + p->tstep / 1000; t += p->tstep) {
        double x = px(p, t);
        fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#eee'/>\n",
                x, p->y0, x, p->y0 + p->h);
        fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='12'>%g</text>\n",
                x, p->y0 + p->h + 16, t);
    }
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='13'>time (s)</text>\n",
            p->x0 + p->w / 2, p->y0 + p->h + 34);
    double cy = p->y0 + p->h / 2;
    fprintf(f, "<text x='%.1f' y='%.1f' text-anchor='middle' font-size='13' "
               "transform='rotate(-90 %.1f %.1f)'>%s</text>\n", p->x0 - 58, cy, p->x0 - 58, cy,
            ylabel);
}

int bench_plot_svg(const char *path, const struct bench_report *rep)
{
    struct series *ser = calloc(rep->ngroups ? rep->ngroups : 1, sizeof *ser);
    if (!ser)
        return lsm_error(-ENOMEM, "out of memory for the plot");
    size_t ns = 0;
    int r = 0;
    double tmax = 0, bwmax = 0, latmax = 0;
    for (size_t i = 0; i < rep->ngroups; i++) {
        if (!rep->groups[i].ran)
            continue;
        if ((r = build_series(&rep->groups[i], rep->sample_ns, &ser[ns])) < 0)
            goto out;
        for (size_t k = 0; k < ser[ns].n; k++) {
            const struct point *pt = &ser[ns].pts[k];
            tmax = MAX(tmax, pt->t);
            bwmax = MAX(bwmax, MAX(pt->bw[0], pt->bw[1]));
            latmax = MAX(latmax, pt->p99);
        }
        ns++;
    }

    bool gib = bwmax >= 10.0 * GiB;
    double bwdiv = gib ? (double)GiB : (double)MiB;
    bool ms = latmax >= 10e6;
    double latdiv = ms ? 1e6 : 1e3;

    struct panel top, bot;
    double ph = (H - MT - MB - GAP) / 2;
    top.x0 = bot.x0 = ML;
    top.w = bot.w = W - ML - MR;
    top.y0 = MT;
    bot.y0 = MT + ph + GAP;
    top.h = bot.h = ph;
    top.tstep = bot.tstep = nice_step(tmax > 0 ? tmax : 1);
    top.tmax = bot.tmax = ceil((tmax > 0 ? tmax : 1) / top.tstep) * top.tstep;
    top.ystep = nice_step(bwmax > 0 ? bwmax / bwdiv * 1.05 : 1);
    top.ymax = ceil((bwmax > 0 ? bwmax / bwdiv * 1.05 : 1) / top.ystep) * top.ystep;
    bot.ystep = nice_step(latmax > 0 ? latmax / latdiv * 1.05 : 1);
    bot.ymax = ceil((latmax > 0 ? latmax / latdiv * 1.05 : 1) / bot.ystep) * bot.ystep;

    FILE *f = fopen(path, "we");
    if (!f) {
        r = lsm_error_errno(-errno, "cannot create %s", path);
        goto out;
    }
    fprintf(f, "<?xml version='1.0' encoding='UTF-8'?>\n"
               "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' "
               "viewBox='0 0 %.0f %.0f' font-family='sans-serif'>\n"
               "<rect width='100%%' height='100%%' fill='white'/>\n", W, H, W, H);
    fprintf(f, "<text x='%.1f' y='24' text-anchor='middle' font-size='16' font-weight='bold'>"
               "lsm-sync bench: ", W / 2);
    for (size_t i = 0; i < ns; i++) {
        const struct bench_job *job = ser[i].g->job;
        char bs[32];
        if (i)
            fputs(", ", f);
        xml_text(f, job->name);
        fprintf(f, " (%s %s qd%u)", bench_rw_name(job->rw),
                bench_fmt_exact(job->bs, bs, sizeof bs), job->iodepth);
    }
    fputs("</text>\n", f);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='13' font-weight='bold'>Bandwidth</text>\n",
            ML, MT - 8);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='13' font-weight='bold'>p99 completion "
               "latency per %.0f ms</text>\n", ML, bot.y0 - 8, (double)rep->sample_ns / 1e6);
    axes(f, &top, gib ? "GiB/s" : "MiB/s");
    axes(f, &bot, ms ? "ms" : "\xc2\xb5s");

    for (size_t i = 0; i < ns; i++) {
        const char *col = colours[i % ARRAY_SIZE(colours)];
        const struct bench_job *job = ser[i].g->job;
        for (int d = 0; d < 2; d++) {
            bool used = d == BENCH_DIR_READ ? bench_rw_reads(job->rw) : bench_rw_writes(job->rw);
            if (!used || ser[i].n == 0)
                continue;
            fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='1.6'%s points='", col,
                    d == BENCH_DIR_WRITE ? " stroke-dasharray='6 3'" : "");
            for (size_t k = 0; k < ser[i].n; k++)
                fprintf(f, "%.1f,%.1f ", px(&top, ser[i].pts[k].t),
                        py(&top, ser[i].pts[k].bw[d] / bwdiv));
            fputs("'/>\n", f);
        }
        /* latency: a line through intervals that had I/O */
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='1.6' points='", col);
        for (size_t k = 0; k < ser[i].n; k++)
            if (ser[i].pts[k].have_io)
                fprintf(f, "%.1f,%.1f ", px(&bot, ser[i].pts[k].t),
                        py(&bot, ser[i].pts[k].p99 / latdiv));
        fputs("'/>\n", f);
    }

    /* legend: one row above the bandwidth panel, right of its title */
    double lx = ML + 110, ly = MT - 8;
    for (size_t i = 0; i < ns; i++) {
        const char *col = colours[i % ARRAY_SIZE(colours)];
        const struct bench_job *job = ser[i].g->job;
        for (int d = 0; d < 2; d++) {
            bool used = d == BENCH_DIR_READ ? bench_rw_reads(job->rw) : bench_rw_writes(job->rw);
            if (!used)
                continue;
            double tw = 34 + 7.0 * (double)(strlen(job->name) + 6) + 16;
            if (lx + tw > W - MR) {
                lx = ML + 110;
                ly -= 15;     /* a second row goes up, into the title's margin */
            }
            fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='%s' "
                       "stroke-width='2'%s/>\n", lx, ly - 4, lx + 28, ly - 4, col,
                    d == BENCH_DIR_WRITE ? " stroke-dasharray='6 3'" : "");
            fprintf(f, "<text x='%.1f' y='%.1f' font-size='12'>", lx + 34, ly);
            xml_text(f, job->name);
            fprintf(f, " %s</text>\n", d == BENCH_DIR_WRITE ? "write" : "read");
            lx += tw;
        }
    }
    fputs("</svg>\n", f);
    if (ferror(f) | (fclose(f) != 0))
        r = lsm_error_errno(-EIO, "cannot write %s", path);
out:
    for (size_t i = 0; i < ns; i++)
        free(ser[i].pts);
    free(ser);
    return r;
}
