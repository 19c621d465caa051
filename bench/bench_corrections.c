/*
 * bench/bench_corrections.c — corrections under slot pressure: how often a corrected fact answers with an
 * overwritten (stale) version, before and after supersession reached the archive (docs/SLOTS.md).
 *
 *   build/bench/bench_corrections [seeds]
 *
 * The scenario of issue 10 (H = 1, d = d_v = 64, M = 16 slots): 64 named facts, each written and then
 * overwritten 1-3 times by events with a write signal (the fact's key plus noise, cosine about 0.9 with
 * it, as a fact worded anew; a new random value each time),
 * placed uniformly among 50,000 events whose other events are filler (random keys and values, no slot).
 * With 16 slots, 48 facts end evicted. Every fact is then queried by its key on the routes auto, sparse,
 * full and window, with both selectors.
 *
 * "before" is the query with include_superseded = true, which attends over every event exactly as the
 * reads did before the masks existed (the same code path with nothing skipped); "after" is the default.
 * A query's evidence is its slot version's source event (slot route) or its pointer event (archive
 * routes); it is "newest" when that is the fact's last write, "stale" when it is an earlier write of the
 * same fact, "other" otherwise (window: the facts lie outside the window, so "other" is expected).
 * Deterministic (fixed seeds); no time is measured.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/session.h"

enum { D = 64, M = 16, FACTS = 64, T = 50000, MAXV = 4 };

static uint64_t rng;

static uint64_t next(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return rng >> 11;
}

static float frand(void)
{
    return (float)((double)next() / 9007199254740992.0 * 2.0 - 1.0);
}

static void unit(float *x)
{
    double ss = 0;
    for (int j = 0; j < D; j++) {
        x[j] = frand();
        ss += (double)x[j] * x[j];
    }
    for (int j = 0; j < D; j++)
        x[j] = (float)(x[j] / sqrt(ss));
}

typedef struct {
    float key[D];
    int nver;
    uint64_t pos[MAXV];    /* events of its writes, ascending */
    char name[16];
} fact;

typedef struct {
    long newest, stale, other;
} count;

static const ma_route routes[] = {MA_ROUTE_AUTO, MA_ROUTE_SPARSE, MA_ROUTE_FULL, MA_ROUTE_WINDOW};
enum { NR = 4 };

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int run(uint64_t seed, ma_selector sel, count (*evicted)[2], count (*resident)[2], long *n_evicted)
{
    rng = seed;
    ma_params p;
    ma_params_default(&p);
    p.heads = 1;
    p.dim = D;
    p.value_dim = D;
    p.slots = M;
    p.selector = sel;
    ma_session *s;
    if (ma_session_create(&p, &s))
        return -1;
    fact *f = calloc(FACTS, sizeof *f);
    int8_t *owner = malloc(T);     /* fact of event i, or -1 */
    uint8_t *taken = calloc(T, 1);
    float *k = malloc((size_t)T * D * sizeof *k), *v = malloc((size_t)T * D * sizeof *v);
    ma_event *ev = calloc(T, sizeof *ev);
    if (!f || !owner || !taken || !k || !v || !ev)
        return -1;
    memset(owner, -1, T);
    for (int i = 0; i < FACTS; i++) {
        unit(f[i].key);
        snprintf(f[i].name, sizeof f[i].name, "fact_%d", i);
        f[i].nver = 2 + (int)(next() % 3);    /* written, then overwritten 1-3 times */
        for (int j = 0; j < f[i].nver; j++) {
            uint64_t e;
            do
                e = next() % T;
            while (taken[e]);
            taken[e] = 1;
            f[i].pos[j] = e;
            owner[e] = (int8_t)i;
        }
        qsort(f[i].pos, (size_t)f[i].nver, sizeof *f[i].pos, cmp_u64);
    }
    for (uint64_t e = 0; e < T; e++) {
        unit(k + e * D);
        if (owner[e] >= 0) {
            /* the fact's key plus noise (cosine about 0.9 with it): each write words the fact anew */
            double ss = 0;
            for (int j = 0; j < D; j++) {
                k[e * D + j] = f[owner[e]].key[j] + 0.45f * k[e * D + j];
                ss += (double)k[e * D + j] * k[e * D + j];
            }
            for (int j = 0; j < D; j++)
                k[e * D + j] = (float)(k[e * D + j] / sqrt(ss));
        }
        unit(v + e * D);
        ev[e] = (ma_event){k + e * D, v + e * D, NULL, owner[e] >= 0 ? f[owner[e]].name : NULL, false};
    }
    for (uint64_t e = 0; e < T; e += 500) {
        ma_ingest_report rep;
        int rc = ma_session_ingest(s, 500, ev + e, 0, &rep);
        ma_ingest_report_clear(&rep);
        if (rc)
            return -1;
    }
    float out[D];
    for (int i = 0; i < FACTS; i++) {
        ma_slot_value sv;
        bool res = ma_session_slot_read(s, f[i].name, 0, &sv) == 0;
        ma_slot_value_clear(&sv);
        *n_evicted += !res;
        for (int r = 0; r < NR; r++)
            for (int all = 0; all < 2; all++) {
                ma_answer a = {.v = out};
                ma_query q = {.q = f[i].key, .route = routes[r], .include_superseded = all == 0};
                count *c = res ? &resident[r][all] : &evicted[r][all];
                if (ma_session_query(s, &q, &a) != 0) {
                    c->other++;
                    continue;
                }
                bool stale = false;
                for (int j = 0; j + 1 < f[i].nver; j++)
                    stale |= a.event == (int64_t)f[i].pos[j];
                if (a.event == (int64_t)f[i].pos[f[i].nver - 1])
                    c->newest++;
                else if (stale)
                    c->stale++;
                else
                    c->other++;
                ma_answer_clear(&a);
            }
    }
    ma_session_destroy(s);
    free(f);
    free(owner);
    free(taken);
    free(k);
    free(v);
    free(ev);
    return 0;
}

int main(int argc, char **argv)
{
    int seeds = argc > 1 ? atoi(argv[1]) : 5;
    if (seeds < 1)
        seeds = 1;
    printf("corrections under slot pressure: H=1 d=64 M=%d, %d facts (2-4 writes each) among %d events, %d seeds\n",
           M, FACTS, T, seeds);
    for (int si = 0; si < 2; si++) {
        ma_selector sel = si ? MA_SELECTOR_CHUNKS : MA_SELECTOR_INDEX;
        count ev[NR][2] = {{{0}}}, rs[NR][2] = {{{0}}};
        long n_ev = 0;
        for (int k = 0; k < seeds; k++)
            if (run(1000 + (uint64_t)k, sel, ev, rs, &n_ev)) {
                fprintf(stderr, "run failed\n");
                return 1;
            }
        long n_res = (long)FACTS * seeds - n_ev;
        printf("\nselector %s: %ld evicted and %ld resident facts queried\n", ma_selector_name(sel), n_ev, n_res);
        printf("%-8s %-9s | %-26s | %-26s\n", "route", "facts", "before: newest/stale/other",
               "after: newest/stale/other");
        for (int r = 0; r < NR; r++)
            for (int w = 0; w < 2; w++) {
                count *c = w ? rs[r] : ev[r];
                long n = w ? n_res : n_ev;
                printf("%-8s %-9s | %6ld %6ld %6ld  stale %5.1f%% | %6ld %6ld %6ld  stale %5.1f%%\n",
                       ma_route_name(routes[r]), w ? "resident" : "evicted", c[0].newest, c[0].stale, c[0].other,
                       n ? 100.0 * c[0].stale / n : 0.0, c[1].newest, c[1].stale, c[1].other,
                       n ? 100.0 * c[1].stale / n : 0.0);
            }
    }
    return 0;
}
