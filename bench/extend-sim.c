/* extend-sim: replay write-rate traces against extension-latency
 * distributions, for the extender's policy (monitor/extend-policy.c, the
 * same code the extender runs) and for vdsm's (lib/vdsm/virt/thinp.py and
 * its drive code, as described in docs/extender.md), and count pauses and
 * space.  docs/benchmarks.md has the results.
 *
 *   extend-sim [--seed N] [--duration S] [--csv] [--no-growth]
 *
 * --no-growth runs our policy as it was before the next size planned the
 * writes during the extension (lsm_extend_growth 0), for comparison.
 *
 * The model, in 10 ms steps:
 *   - the guest writes at the trace's rate into the source top; while
 *     replicating, every write reaches the mirror's destination too;
 *   - a side whose allocation reaches its size pauses the guest (no writes)
 *     until it is extended; a pause is counted once per stop;
 *   - an extension takes a latency drawn uniformly from the distribution.
 * Ours: a threshold event at physical - headroom (headroom from the
 *   policy, with the rate sampled every 0.5 s and the latency measured from
 *   the extensions so far), source and destination extended independently
 *   and at the same time, each measured on its own.
 * vdsm: watermark limit (100 - 20)% of a 2.5 GiB chunk (both doubled while
 *   replicating), next size physical + chunk; while replicating the replica
 *   is extended first and the source after it (the latencies add), and the
 *   replica is given the source's size, its own allocation not measured.
 * Both start from the same 2.5 GiB volume of a 2 TiB virtual size (the cap
 *   is never reached). */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "extend-policy.h"
#include "util.h"

#define STEP_NS 10000000ULL          /* 10 ms */
#define SEC 1000000000ULL
#define POLL_NS (SEC / 2)
/* Both policies start from the same volume: 2.5 GiB (what vdsm creates a
 * thin volume on block storage with), virtual size 2 TiB (never reached). */
#define INITIAL ((uint64_t)(2.5 * (double)GiB))
#define VIRTUAL (2 * TiB)

/* Plan the growth during an extension into the next size (--no-growth). */
static bool growth = true;

/* ---- random numbers (xorshift64*, seeded) ---- */
static uint64_t rng = 88172645463325252ULL;
static double uniform(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

struct latency {
    const char *name;
    double lo, hi;                   /* seconds, uniform */
};

static uint64_t draw(const struct latency *l)
{
    return (uint64_t)((l->lo + (l->hi - l->lo) * uniform()) * 1e9);
}

/* ---- traces ---- */
enum trace { STEADY, BURSTY };
static const char *const trace_names[] = { "steady", "bursty" };

/* Bytes/s at time t: steady R; bursty 10 s at R every 40 s (the first
 * burst at 20 s, after the volume sat idle). */
static double rate_at(enum trace tr, double rate, uint64_t t)
{
    if (tr == STEADY)
        return rate;
    uint64_t s = t / SEC;
    return s >= 20 && (s - 20) % 40 < 10 ? rate : 0;
}

/* ---- one side (a volume) ---- */
struct side {
    double alloc;
    uint64_t phys;
    bool extending;
    uint64_t started, done_at, target;
    struct lsm_extend_rate rate;
    uint64_t last_sample;
};

struct result {
    unsigned pauses;
    double paused_s;
    double written_gib;
    double mean_free_gib;            /* mean over time of size - allocation, both sides */
    double max_free_gib;
    unsigned extensions;
};

static bool full(const struct side *s)
{
    return s->alloc >= (double)s->phys;
}

/* ---- our policy ---- */
static void run_ours(enum trace tr, double rate, const struct latency *lat, bool repl,
                     uint64_t duration, struct result *res)
{
    struct lsm_extend_policy p;
    lsm_extend_policy_default(&p);
    struct lsm_extend_latency measured = { 0 };
    uint64_t cap = VIRTUAL;
    uint64_t maxsz = lsm_extend_max_size(&p, cap, 0);
    struct side sd[2];
    memset(sd, 0, sizeof sd);
    int nsides = repl ? 2 : 1;
    for (int i = 0; i < nsides; i++)
        sd[i].phys = INITIAL;
    bool was_paused = false;
    double free_sum = 0;
    memset(res, 0, sizeof *res);
    for (uint64_t t = 0; t < duration; t += STEP_NS) {
        /* Extensions that finish now. */
        for (int i = 0; i < nsides; i++)
            if (sd[i].extending && t >= sd[i].done_at) {
                sd[i].extending = false;
                sd[i].phys = MAX(sd[i].phys, sd[i].target);
                res->extensions++;
                /* Known once it is over, as in the extender. */
                lsm_extend_latency_add(&measured, sd[i].done_at - sd[i].started);
            }
        bool paused = false;
        for (int i = 0; i < nsides; i++)
            paused = paused || full(&sd[i]);
        if (paused && !was_paused)
            res->pauses++;
        was_paused = paused;
        if (paused)
            res->paused_s += (double)STEP_NS / 1e9;
        double bytes = paused ? 0 : rate_at(tr, rate, t) * (double)STEP_NS / 1e9;
        res->written_gib += bytes / (double)GiB;
        double fr = 0;
        for (int i = 0; i < nsides; i++) {
            struct side *s = &sd[i];
            s->alloc += bytes;
            if (s->alloc > (double)s->phys)
                s->alloc = (double)s->phys;
            if (t - s->last_sample >= lsm_extend_poll_ns(&s->rate, POLL_NS) || t == 0) {
                lsm_extend_rate_add(&s->rate, &p, t, (uint64_t)s->alloc);
                s->last_sample = t;
            }
            double r = lsm_extend_rate_recent(&s->rate);
            uint64_t l_ns = lsm_extend_latency_recent(&measured);
            uint64_t head = lsm_extend_headroom(&p, r, l_ns, repl);
            if (!s->extending &&
                lsm_extend_needed((uint64_t)s->alloc, s->phys, head, maxsz, false)) {
                uint64_t l = draw(lat);
                s->extending = true;
                s->started = t;
                s->done_at = t + l;
                s->target = lsm_extend_next_size_growing(
                    &p, (uint64_t)s->alloc, s->phys, head,
                    growth ? lsm_extend_growth(&p, r, l_ns) : 0, maxsz, repl);
            }
            fr += ((double)s->phys - s->alloc) / (double)GiB;
        }
        free_sum += fr;
        res->max_free_gib = MAX(res->max_free_gib, fr);
    }
    res->mean_free_gib = free_sum / (double)(duration / STEP_NS);
}

/* ---- vdsm's ---- */
static void run_vdsm(enum trace tr, double rate, const struct latency *lat, bool repl,
                     uint64_t duration, struct result *res)
{
    uint64_t chunk = (uint64_t)(2.5 * (double)GiB) * (repl ? 2 : 1);
    uint64_t limit = chunk * (100 - 20) / 100;
    struct side src = { .phys = INITIAL }, dst = { .phys = INITIAL };
    /* One extension flow at a time: replica first, then source. */
    bool busy = false;
    int stage = 0;          /* 1: extending the replica, 2: the source */
    uint64_t done_at = 0, target = 0;
    bool was_paused = false;
    double free_sum = 0;
    memset(res, 0, sizeof *res);
    for (uint64_t t = 0; t < duration; t += STEP_NS) {
        if (busy && t >= done_at) {
            res->extensions++;
            if (stage == 1) {
                dst.phys = target;
                stage = 2;
                done_at = t + draw(lat);
            } else {
                src.phys = target;
                busy = false;
            }
        }
        bool paused = full(&src) || (repl && full(&dst));
        if (paused && !was_paused)
            res->pauses++;
        was_paused = paused;
        if (paused)
            res->paused_s += (double)STEP_NS / 1e9;
        double bytes = paused ? 0 : rate_at(tr, rate, t) * (double)STEP_NS / 1e9;
        res->written_gib += bytes / (double)GiB;
        src.alloc = MIN(src.alloc + bytes, (double)src.phys);
        if (repl)
            dst.alloc = MIN(dst.alloc + bytes, (double)dst.phys);
        /* Decided on the source's numbers only. */
        if (!busy && (double)src.phys - src.alloc < (double)limit) {
            busy = true;
            target = src.phys + chunk;
            stage = repl ? 1 : 2;
            done_at = t + draw(lat);
        }
        double fr = ((double)src.phys - src.alloc) / (double)GiB;
        if (repl)
            fr += ((double)dst.phys - dst.alloc) / (double)GiB;
        free_sum += fr;
        res->max_free_gib = MAX(res->max_free_gib, fr);
    }
    res->mean_free_gib = free_sum / (double)(duration / STEP_NS);
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: extend-sim [--seed N] [--duration S] [--csv] [--no-growth]\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "seed", required_argument, NULL, 's' },
        { "duration", required_argument, NULL, 'd' },
        { "csv", no_argument, NULL, 'c' },
        { "no-growth", no_argument, NULL, 'g' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    uint64_t seed = 1, duration_s = 300;
    bool csv = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'd': duration_s = strtoull(optarg, NULL, 10); break;
        case 'c': csv = true; break;
        case 'g': growth = false; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!duration_s || duration_s > 86400) {
        fprintf(stderr, "extend-sim: --duration must be 1..86400 seconds\n");
        return 2;
    }
    static const struct latency lats[] = {
        { "vdsm-slow 2.2-6.2 s", 2.2, 6.2 },
        { "vdsm-fast 0.8-1.4 s", 0.8, 1.4 },
    };
    static const double rates_mib[] = { 50, 100, 200, 300, 400, 600, 800, 1000, 1400, 2000 };
    if (csv)
        printf("policy,trace,latency,replicating,rate_mib_s,pauses,paused_s,written_gib,"
               "mean_free_gib,max_free_gib,extensions\n");
    else
        printf("%-5s %-6s %-20s %-4s %6s | %6s %8s %8s %8s %8s %5s\n", "who", "trace",
               "latency", "repl", "MiB/s", "pauses", "paused", "written", "meanfree",
               "maxfree", "ext");
    for (size_t li = 0; li < ARRAY_SIZE(lats); li++)
        for (int repl = 0; repl < 2; repl++)
            for (int tr = 0; tr < 2; tr++)
                for (size_t ri = 0; ri < ARRAY_SIZE(rates_mib); ri++)
                    for (int who = 0; who < 2; who++) {
                        struct result r;
                        rng = seed * 0x9E3779B97F4A7C15ULL + ri * 131 + li * 7 + 1;
                        double rate = rates_mib[ri] * (double)MiB;
                        if (who == 0)
                            run_ours(tr, rate, &lats[li], repl, duration_s * SEC, &r);
                        else
                            run_vdsm(tr, rate, &lats[li], repl, duration_s * SEC, &r);
                        const char *name = who == 0 ? "ours" : "vdsm";
                        if (csv)
                            printf("%s,%s,%s,%d,%.0f,%u,%.2f,%.1f,%.2f,%.2f,%u\n", name,
                                   trace_names[tr], lats[li].name, repl, rates_mib[ri],
                                   r.pauses, r.paused_s, r.written_gib, r.mean_free_gib,
                                   r.max_free_gib, r.extensions);
                        else
                            printf("%-5s %-6s %-20s %-4s %6.0f | %6u %7.1fs %7.1fG %7.2fG "
                                   "%7.2fG %5u\n", name, trace_names[tr], lats[li].name,
                                   repl ? "yes" : "no", rates_mib[ri], r.pauses, r.paused_s,
                                   r.written_gib, r.mean_free_gib, r.max_free_gib,
                                   r.extensions);
                    }
    return 0;
}
