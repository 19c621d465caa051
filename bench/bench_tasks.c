/*
 * bench/bench_tasks.c — the mechanism, measured: the task table of EVAL.md A for every method.
 *
 * For each size T and seed, three streams are generated (bench/tasks_gen.h): the main stream (recall
 * without write signal, overwrite, versioning, distractor pollution, streaming QA), the slot pressure
 * stream and the corrections-under-slot-pressure stream (facts overwritten, then evicted: the newest
 * value must answer; each of its questions is asked twice of the session's routes, by default and with
 * include_superseded, to report the stale-answer rate after and before supersession masks). Each stream is ingested once, in order, into
 *   - one session (core/session.h: VLA backbone, archive with the `index` selector, slots M = 32), which
 *     answers as hybrid (router, auto), pure slots (forced slot route), sparse top-k (forced sparse),
 *     full softmax (forced full), sliding window (forced window) and VLA state (forced state);
 *   - a linear-attention and a DeltaNet backbone (core/backbone.h directly), and
 *   - a second archive with the `chunks` selector (core/archive.h directly), the Quest/paper-style proxy.
 * All of them see exactly the same events. A question is asked once the events before it are ingested
 * (streaming questions mid-stream, the others at the end) and every method answers it. An answer is
 * correct when its value decodes (nearest codebook row) to the expected row; the pointer event (or the
 * slot's source event) is checked separately where a method has one.
 *
 * Queries are the fact's unit key times a fixed sharpness: q = ALPHA·sqrt(d)·key, so the attention logit
 * of an event is ALPHA·cos(q, k). With every filler key at |cos| < 0.5 (the generator's bound) the
 * needle's softmax weight over the whole context is at least 1/(1 + T·e^(-ALPHA/2)) (0.996 at 2M for
 * ALPHA = 40), so full softmax can find it; the state backbones normalise q, the router uses cosines.
 *
 * Reported: per method and task correct/total, the five-scenario stress total (recall, overwrite,
 * versioning, distractor, pressure: 5 scenarios × seeds × trials), streaming and corrections separately
 * (with the corrections' stale answers before and after), pointer hits,
 * active chunks and scored events per query, per-seed totals, and timings (informational only).
 *
 * Not here: latency curves (another benchmark), HTTP, MQAR on the raw recurrences.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/tasks_gen.h"
#include "core/archive.h"
#include "core/backbone.h"
#include "core/error.h"
#include "core/params.h"
#include "core/session.h"

#define ALPHA      40.0      /* attention logit of a perfect match: q = ALPHA·sqrt(d)·key */
#define BATCH      4096      /* filler events per ingest call */
#define MAX_SEEDS  64
#define NOW0       1700000000000LL  /* ms; event i is ingested at NOW0 + i */

typedef enum {
    M_HYBRID, M_SLOTS, M_SPARSE, M_CHUNKS, M_FULL, M_WINDOW, M_VLA, M_LINEAR, M_DELTA, M_METHODS
} method;

static const char *const method_names[M_METHODS] = {
    "hybrid (router)", "pure slots", "sparse top-k (index)", "sparse top-k (chunks)", "full softmax",
    "sliding window", "VLA state", "linear attention state", "DeltaNet state",
};

/* Which methods have a pointer (an event they answer from). */
static const bool has_pointer[M_METHODS] = { true, true, true, true, true, true, false, false, false };

typedef struct {
    int correct[TG_TASKS], total[TG_TASKS], pointer[TG_TASKS], no_answer[TG_TASKS];
    int stale;                                              /* corrections answered with an older version */
    int before_correct, before_stale, before_total;         /* the same with include_superseded (no masks) */
    int seed_correct[MAX_SEEDS], seed_total[MAX_SEEDS];    /* stress scenarios only */
    double chunks_sum, events_sum;
    long chunks_min, chunks_max, events_max, chunk_queries, event_queries, whole_scans;
    long routed_slot, routed_sparse;                        /* hybrid only */
    double seconds;
    long queries;
} tally;

typedef struct {
    uint64_t length;
    int seeds, first_seed;
    bool chunks, verbose;
    double query_cos;             /* cosine of the question's direction to the fact's key (1: the key) */
    int topk;                     /* sparse reads: chunks or probed lists; 0 = the config default (16) */
    tally t[M_METHODS];
    double ingest_seconds;
    double part_seconds[5];       /* generate, session, linear, DeltaNet, chunks archive */
    uint64_t archive_chunks;      /* chunks of a whole stream */
    long evictions_main, voids, voids_expected, pressure_not_evicted;
    int overwrites_max;           /* the generator's: corrections overwrite 1..overwrites_max times */
} size_run;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The five scenarios of the paper's stress table; streaming and corrections are reported beside it. */
static bool stress_task(tg_task t)
{
    return t != TG_STREAMING && t != TG_CORRECTIONS;
}

/* For a corrections query: whether codebook row `row` is an older (overwritten) value of its fact. */
static bool stale_row(const tg_stream *st, const tg_query *q, int row)
{
    size_t np;
    const tg_plant *pl = tg_plants(st, &np);
    for (size_t i = 0; i < np; i++)
        if (pl[i].task == TG_CORRECTIONS && pl[i].trial == q->trial && pl[i].key == q->key &&
            pl[i].value == row && pl[i].pos < q->event)
            return true;
    return false;
}

/* The objects one stream is ingested into. */
typedef struct {
    ma_session *s;
    ma_backbone *lin, *delta;
    ma_archive *chunks;      /* NULL with --no-chunks */
    ma_params p;
} methods_state;

static void methods_destroy(methods_state *m)
{
    ma_session_destroy(m->s);
    ma_backbone_destroy(m->lin);
    ma_backbone_destroy(m->delta);
    ma_archive_destroy(m->chunks);
    memset(m, 0, sizeof *m);
}

static int methods_create(const tg_config *c, bool chunks, int topk, methods_state *m)
{
    memset(m, 0, sizeof *m);
    ma_params_default(&m->p);
    m->p.heads = 1;
    m->p.dim = c->dim;
    m->p.value_dim = c->dim;
    m->p.slots = c->slots;
    m->p.backbone = MA_BACKBONE_VLA;
    m->p.selector = MA_SELECTOR_INDEX;
    if (topk > 0)
        m->p.topk = topk;
    ma_params lp = m->p, dp = m->p, cp = m->p;
    lp.backbone = MA_BACKBONE_LINEAR;
    dp.backbone = MA_BACKBONE_DELTA;
    cp.selector = MA_SELECTOR_CHUNKS;
    int rc;
    if ((rc = ma_session_create(&m->p, &m->s)) || (rc = ma_backbone_create(&lp, &m->lin)) ||
        (rc = ma_backbone_create(&dp, &m->delta)) || (chunks && (rc = ma_archive_create(&cp, &m->chunks)))) {
        methods_destroy(m);
        return rc;
    }
    return 0;
}

/* Ingests events [start, start+n) of the stream into every method. */
static int ingest(const tg_stream *st, tg_stream_kind kind, methods_state *m, uint64_t start, size_t n,
                  float *k, float *v, const tg_plant **plant, ma_event *ev, size_run *run)
{
    int d = tg_stream_config(st)->dim, rc;
    double t0 = now_s(), t1;
    if (tg_events(st, start, n, k, v, plant))
        return MA_ENOMEM;
    run->part_seconds[0] += (t1 = now_s()) - t0;
    for (size_t i = 0; i < n; i++) {
        ev[i] = (ma_event){ .k = k + i * d, .v = v + i * d };
        if (plant[i] && plant[i]->slot[0]) {
            ev[i].slot = plant[i]->slot;
            ev[i].protect = plant[i]->protect;
        }
    }
    ma_ingest_report rep;
    memset(&rep, 0, sizeof rep);
    if ((rc = ma_session_ingest(m->s, n, ev, NOW0 + (int64_t)start, &rep)))
        return rc;
    run->part_seconds[1] += (t0 = now_s()) - t1;
    run->voids += (long)rep.n_voids;
    if (kind == TG_STREAM_MAIN)
        run->evictions_main += (long)rep.n_evicted;
    ma_ingest_report_clear(&rep);
    if ((rc = ma_backbone_update(m->lin, n, k, v)))
        return rc;
    run->part_seconds[2] += (t1 = now_s()) - t0;
    if ((rc = ma_backbone_update(m->delta, n, k, v)))
        return rc;
    run->part_seconds[3] += (t0 = now_s()) - t1;
    if (m->chunks && (rc = ma_archive_append(m->chunks, n, k, v)))
        return rc;
    run->part_seconds[4] += now_s() - t0;
    return 0;
}

static void note_chunks(tally *t, size_t n_chunks)
{
    if (!t->chunk_queries || (long)n_chunks < t->chunks_min)
        t->chunks_min = (long)n_chunks;
    t->chunks_sum += (double)n_chunks;
    t->chunks_max = (long)n_chunks > t->chunks_max ? (long)n_chunks : t->chunks_max;
    t->chunk_queries++;
}

static void note_events(tally *t, uint64_t scored, uint64_t length)
{
    t->events_sum += (double)scored;
    t->events_max = (long)scored > t->events_max ? (long)scored : t->events_max;
    t->event_queries++;
    if (scored >= length)
        t->whole_scans++;
}

/* Asks question q of every method and scores the answers. */
static int ask(const tg_stream *st, methods_state *m, size_t qi, int seed_index, size_run *run, uint64_t seed)
{
    const tg_config *c = tg_stream_config(st);
    size_t nq;
    const tg_query *q = &tg_queries(st, &nq)[qi];
    int d = c->dim, rc = 0;
    float qv[1024], out[1024];
    tg_query_direction(st, qi, run->query_cos, qv);
    for (int j = 0; j < d; j++)
        qv[j] *= (float)(ALPHA * sqrt((double)d));
    uint64_t length = ma_archive_length(ma_session_archive(m->s));

    for (int mi = 0; mi < M_METHODS; mi++) {
        if (mi == M_CHUNKS && !m->chunks)
            continue;
        tally *t = &run->t[mi];
        int64_t pointer = -1;
        bool answered = true;
        const char *route = "";
        double t0 = now_s();
        memset(out, 0, sizeof out);
        if (mi <= M_WINDOW && mi != M_CHUNKS) {
            static const ma_route routes[] = { MA_ROUTE_AUTO, MA_ROUTE_SLOT, MA_ROUTE_SPARSE, 0,
                                               MA_ROUTE_FULL, MA_ROUTE_WINDOW };
            ma_query mq = { .q = qv, .route = routes[mi] };
            if ((mi == M_HYBRID || mi == M_SLOTS) && q->slot[0]) {
                mq.slot = q->slot;
                mq.version = q->version;
            }
            ma_answer a = { .v = out };
            rc = ma_session_query(m->s, &mq, &a);
            if (rc == MA_ENOTFOUND && mi == M_SLOTS) {
                answered = false; /* no resident slot matches: pure slots has no answer */
                rc = 0;
            } else if (rc) {
                fprintf(stderr, "bench_tasks: %s query failed: %s\n", method_names[mi], ma_strerror(rc));
                ma_answer_clear(&a);
                return rc;
            } else {
                pointer = a.event;
                route = ma_route_name(a.route);
                if (a.route != MA_ROUTE_SLOT) /* a slot answer reads no chunk */
                    note_chunks(t, a.n_chunks);
                if (mi == M_HYBRID && a.route == MA_ROUTE_SLOT)
                    t->routed_slot++;
                else if (mi == M_HYBRID)
                    t->routed_sparse++;
            }
            ma_answer_clear(&a);
        } else if (mi == M_CHUNKS) {
            ma_read_result r = { .v = out };
            if ((rc = ma_archive_read_sparse(m->chunks, qv, 0, &r))) {
                ma_read_result_clear(&r);
                return rc;
            }
            pointer = r.pointer;
            note_chunks(t, r.n_chunks);
            note_events(t, r.events_scored, length);
            ma_read_result_clear(&r);
        } else if (mi == M_VLA) {
            ma_query mq = { .q = qv, .route = MA_ROUTE_STATE };
            ma_answer a = { .v = out };
            rc = ma_session_query(m->s, &mq, &a);
            ma_answer_clear(&a);
            if (rc)
                return rc;
        } else {
            /* raw reads: S·phi(q) (linear) and S·normalize(q) (DeltaNet); identity features make the
             * linear normalised read divide by z·q, which changes sign with q */
            if ((rc = ma_backbone_read(mi == M_LINEAR ? m->lin : m->delta, 1, qv, out, MA_READ_RAW)))
                return rc;
        }
        t->seconds += now_s() - t0;
        t->queries++;

        int row = answered ? tg_decode(st, out) : -1;
        bool ok = row == q->value;
        if (q->task == TG_CORRECTIONS) {
            t->stale += answered && stale_row(st, q, row);
            if (mi <= M_WINDOW && mi != M_CHUNKS) { /* "before": the archive reads without the masks */
                static const ma_route routes[] = { MA_ROUTE_AUTO, MA_ROUTE_SLOT, MA_ROUTE_SPARSE, 0,
                                                   MA_ROUTE_FULL, MA_ROUTE_WINDOW };
                float bout[1024];
                ma_query mq = { .q = qv, .route = routes[mi], .include_superseded = true };
                ma_answer a = { .v = bout };
                memset(bout, 0, sizeof bout);
                int brc = ma_session_query(m->s, &mq, &a);
                ma_answer_clear(&a);
                if (brc && brc != MA_ENOTFOUND)
                    return brc;
                int brow = brc ? -1 : tg_decode(st, bout);
                t->before_total++;
                t->before_correct += brow == q->value;
                t->before_stale += brc == 0 && stale_row(st, q, brow);
            }
        }
        bool pok = has_pointer[mi] && answered && pointer == (int64_t)q->event;
        t->total[q->task]++;
        t->correct[q->task] += ok;
        t->pointer[q->task] += pok;
        t->no_answer[q->task] += !answered;
        if (stress_task(q->task)) {
            t->seed_total[seed_index]++;
            t->seed_correct[seed_index] += ok;
        }
        if (run->verbose)
            printf("  T=%llu seed=%llu %-10s trial %d at %llu %-24s row %4d want %4d %s pointer %lld want %llu "
                   "%s\n", (unsigned long long)run->length, (unsigned long long)seed, tg_task_name(q->task),
                   q->trial, (unsigned long long)q->at, method_names[mi], row, q->value, ok ? "ok  " : "MISS",
                   (long long)pointer, (unsigned long long)q->event, route);
    }
    /* the sparse (index) read's scored events, straight from the session's archive */
    ma_read_result r = { .v = out };
    if ((rc = ma_archive_read_sparse(ma_session_archive(m->s), qv, 0, &r))) {
        ma_read_result_clear(&r);
        return rc;
    }
    note_events(&run->t[M_SPARSE], r.events_scored, length);
    ma_read_result_clear(&r);
    return 0;
}

/* Pressure targets must have been evicted by the time they are asked about. */
static void check_evicted(methods_state *m, const tg_query *q, size_run *run)
{
    ma_slot_info *list = NULL;
    size_t n = 0;
    if (ma_session_slot_list(m->s, &list, &n))
        return;
    for (size_t i = 0; i < n; i++)
        if (list[i].event == (int64_t)q->event)
            run->pressure_not_evicted++;
    free(list);
}

static int run_stream(const tg_config *c, tg_stream_kind kind, uint64_t seed, int seed_index, size_run *run)
{
    char err[256];
    tg_stream *st = NULL;
    methods_state m;
    int rc = tg_stream_create(c, kind, seed, &st, err, sizeof err);
    if (rc) {
        fprintf(stderr, "bench_tasks: %s\n", err);
        return MA_EINVAL;
    }
    float *k = malloc((size_t)BATCH * c->dim * sizeof *k), *v = malloc((size_t)BATCH * c->dim * sizeof *v);
    const tg_plant **plant = malloc(BATCH * sizeof *plant);
    ma_event *ev = malloc(BATCH * sizeof *ev);
    if (!k || !v || !plant || !ev) {
        rc = MA_ENOMEM;
        goto done;
    }
    if ((rc = methods_create(c, run->chunks, run->topk, &m)))
        goto done;
    if (tg_check_bounded(c, m.p.window, m.p.topk, m.p.chunk, err, sizeof err)) {
        fprintf(stderr, "bench_tasks: %s\n", err);
        rc = MA_EINVAL;
        goto done_m;
    }
    size_t np, nq, pi = 0, qi = 0;
    const tg_plant *pl = tg_plants(st, &np);
    const tg_query *qs = tg_queries(st, &nq);
    for (size_t i = 0; i < np; i++) /* the rejected writes: the protected name again, unprotected */
        if (pl[i].task == TG_DISTRACTOR && !pl[i].protect && strncmp(pl[i].slot, "prot.", 5) == 0)
            run->voids_expected++;
    uint64_t at = 0;
    double t_ingest = 0;
    while (at <= c->length) {
        while (qi < nq && qs[qi].at == at) {
            if (qs[qi].task == TG_PRESSURE || qs[qi].task == TG_CORRECTIONS)
                check_evicted(&m, &qs[qi], run);
            if ((rc = ask(st, &m, qi, seed_index, run, seed)))
                goto done_m;
            qi++;
        }
        if (at == c->length)
            break;
        /* Batches stop at every planted event, which is ingested alone at its own time: LRU order and
         * write order are then one and the same. */
        while (pi < np && pl[pi].pos < at)
            pi++;
        uint64_t stop = at + BATCH;
        if (qi < nq && qs[qi].at < stop)
            stop = qs[qi].at;
        if (pi < np)
            stop = pl[pi].pos == at ? at + 1 : (pl[pi].pos < stop ? pl[pi].pos : stop);
        if (stop > c->length)
            stop = c->length;
        double t0 = now_s();
        if ((rc = ingest(st, kind, &m, at, (size_t)(stop - at), k, v, plant, ev, run)))
            goto done_m;
        t_ingest += now_s() - t0;
        at = stop;
    }
    run->ingest_seconds += t_ingest;
    run->archive_chunks = ma_archive_chunks(ma_session_archive(m.s));
    if (run->verbose)
        printf("  T=%llu seed=%llu %s stream: ingest %.1f s\n", (unsigned long long)c->length,
               (unsigned long long)seed,
               kind == TG_STREAM_MAIN ? "main" : kind == TG_STREAM_PRESSURE ? "pressure" : "corrections", t_ingest);
done_m:
    methods_destroy(&m);
done:
    free(k);
    free(v);
    free(plant);
    free(ev);
    tg_stream_destroy(st);
    return rc;
}

static void print_size(const size_run *run)
{
    const tally *h = &run->t[M_HYBRID];
    printf("\n### T = %llu events, seeds %d..%d, %d trials per task per seed\n\n", (unsigned long long)run->length,
           run->first_seed, run->first_seed + run->seeds - 1, h->total[TG_RECALL] / (run->seeds ? run->seeds : 1));
    printf("| method | recall | overwrite | versioning | distractor | pressure | **stress total** | streaming |"
           " corrections | pointer hits | active chunks / archive query: mean (min–max) of all |"
           " scored events / query (mean) | ms / query |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int mi = 0; mi < M_METHODS; mi++) {
        const tally *t = &run->t[mi];
        if (!t->queries)
            continue;
        int sc = 0, st = 0, pc = 0, pt = 0;
        printf("| %s |", method_names[mi]);
        static const tg_task order[] = { TG_RECALL, TG_OVERWRITE, TG_VERSIONING, TG_DISTRACTOR, TG_PRESSURE };
        for (int i = 0; i < 5; i++) {
            tg_task tk = order[i];
            printf(" %d/%d |", t->correct[tk], t->total[tk]);
            sc += t->correct[tk];
            st += t->total[tk];
        }
        for (int tk = 0; tk < TG_TASKS; tk++) {
            pc += t->pointer[tk];
            pt += t->total[tk];
        }
        printf(" **%d/%d** | %d/%d | %d/%d |", sc, st, t->correct[TG_STREAMING], t->total[TG_STREAMING],
               t->correct[TG_CORRECTIONS], t->total[TG_CORRECTIONS]);
        if (has_pointer[mi])
            printf(" %d/%d |", pc, pt);
        else
            printf(" — |");
        if (t->chunk_queries)
            printf(" %.1f (%ld–%ld) of %llu |", t->chunks_sum / (double)t->chunk_queries, t->chunks_min,
                   t->chunks_max, (unsigned long long)run->archive_chunks);
        else
            printf(" — |");
        if (t->event_queries)
            printf(" %.0f |", t->events_sum / (double)t->event_queries);
        else
            printf(" — |");
        printf(" %.2f |\n", 1e3 * t->seconds / (double)t->queries);
    }

    printf("\nPer seed (stress total: 5 scenarios × %d trials):\n\n| method |", h->total[TG_RECALL] / run->seeds);
    for (int s = 0; s < run->seeds; s++)
        printf(" seed %d |", run->first_seed + s);
    printf("\n|---|");
    for (int s = 0; s < run->seeds; s++)
        printf("---|");
    printf("\n");
    for (int mi = 0; mi < M_METHODS; mi++) {
        const tally *t = &run->t[mi];
        if (!t->queries)
            continue;
        printf("| %s |", method_names[mi]);
        for (int s = 0; s < run->seeds; s++)
            printf(" %d/%d |", t->seed_correct[s], t->seed_total[s]);
        printf("\n");
    }
    printf("\nCorrections under slot pressure (each target overwritten 1-%d times, then evicted; newest = the right "
           "answer, stale = an overwritten version). Before: the same query with include_superseded (the reads "
           "without the supersession masks, as before they existed); after: the default.\n\n"
           "| method | before: newest | before: stale | after: newest | after: stale |\n|---|---|---|---|---|\n",
           run->overwrites_max);
    for (int mi = 0; mi < M_METHODS; mi++) {
        const tally *t = &run->t[mi];
        if (!t->total[TG_CORRECTIONS])
            continue;
        printf("| %s |", method_names[mi]);
        if (t->before_total)
            printf(" %d/%d | %d/%d |", t->before_correct, t->before_total, t->before_stale, t->before_total);
        else
            printf(" — | — |");
        printf(" %d/%d | %d/%d |\n", t->correct[TG_CORRECTIONS], t->total[TG_CORRECTIONS], t->stale,
               t->total[TG_CORRECTIONS]);
    }
    printf("\nhybrid routes: %ld slot (no chunk read), %ld sparse; pure slots without an answer: ", h->routed_slot,
           h->routed_sparse);
    int na = 0;
    for (int tk = 0; tk < TG_TASKS; tk++)
        na += run->t[M_SLOTS].no_answer[tk];
    printf("%d; void (protected) writes %ld of %ld expected; evictions in main streams %ld (expected 0); "
           "pressure targets still resident when asked %ld (expected 0); sparse reads that scored the whole "
           "archive: index %ld, chunks %ld.\n\ningest %.1f s: generate %.1f, session (VLA + archive/index + slots) %.1f, "
           "linear %.1f, DeltaNet %.1f, chunks archive %.1f\n", na, run->voids, run->voids_expected,
           run->evictions_main, run->pressure_not_evicted, run->t[M_SPARSE].whole_scans,
           run->t[M_CHUNKS].whole_scans, run->ingest_seconds, run->part_seconds[0], run->part_seconds[1],
           run->part_seconds[2], run->part_seconds[3], run->part_seconds[4]);
}

/* Appends "T method-index "method" correct total" per method (stress scenarios) for docs/tasks.gp. */
static int write_dat(const char *path, const size_run *run)
{
    FILE *f = fopen(path, "a");
    if (!f) {
        fprintf(stderr, "bench_tasks: --dat %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (int mi = 0; mi < M_METHODS; mi++) {
        const tally *t = &run->t[mi];
        int sc = 0, st = 0;
        for (int tk = 0; tk < TG_TASKS; tk++)
            if (stress_task((tg_task)tk)) {
                sc += t->correct[tk];
                st += t->total[tk];
            }
        if (t->queries)
            fprintf(f, "%llu %d \"%s\" %d %d\n", (unsigned long long)run->length, mi, method_names[mi], sc, st);
    }
    return fclose(f) ? -1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_tasks [--quick] [--sizes T1,T2,...] [--seeds N] [--first-seed S] [--no-chunks]\n"
            "                   [--dat FILE] [--query-cos C] [--topk K] [--verbose]\n"
            "  EVAL.md A task table for every method. Default: T = 16384 and 2097152, seeds 1..5.\n"
            "  --quick        T = 16384 only, one seed (a smoke run)\n"
            "  --sizes LIST   comma-separated stream lengths\n"
            "  --seeds N      seeds first-seed..first-seed+N-1 (1..%d)\n"
            "  --no-chunks    skip the second archive with the chunks selector (saves its memory)\n"
            "  --dat FILE     append the stress totals per method to FILE (for docs/tasks.gp)\n"
            "  --topk K       sparse reads: top-K chunks / K probed index lists (default 16, the config's)\n"
            "  --query-cos C  paraphrased questions: the query direction at cosine C in (0, 1] to the key\n"
            "                 (default 1: the key itself)\n"
            "  --verbose      one line per question and method\n", MAX_SEEDS);
}

int main(int argc, char **argv)
{
    uint64_t sizes[16] = { 16384, 2097152 };
    int n_sizes = 2, seeds = 5, first_seed = 1;
    bool chunks = true, verbose = false;
    const char *dat = NULL;
    double query_cos = 1.0;
    int topk = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--quick")) {
            sizes[0] = 16384;
            n_sizes = 1;
            seeds = 1;
        } else if (!strcmp(a, "--sizes") && i + 1 < argc) {
            char *s = argv[++i], *end;
            n_sizes = 0;
            while (*s && n_sizes < 16) {
                errno = 0;
                unsigned long long x = strtoull(s, &end, 10);
                if (errno || end == s || (*end && *end != ',')) {
                    fprintf(stderr, "bench_tasks: --sizes: bad number at \"%s\", expected e.g. 16384,2097152\n", s);
                    return 2;
                }
                sizes[n_sizes++] = x;
                s = *end ? end + 1 : end;
            }
        } else if (!strcmp(a, "--seeds") && i + 1 < argc) {
            seeds = atoi(argv[++i]);
        } else if (!strcmp(a, "--first-seed") && i + 1 < argc) {
            first_seed = atoi(argv[++i]);
        } else if (!strcmp(a, "--query-cos") && i + 1 < argc) {
            char *end;
            query_cos = strtod(argv[++i], &end);
            if (*end || !(query_cos > 0 && query_cos <= 1)) {
                fprintf(stderr, "bench_tasks: --query-cos %s: expected a number in (0, 1]\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--topk") && i + 1 < argc) {
            topk = atoi(argv[++i]);
            if (topk < 1 || topk > MA_MAX_TOPK) {
                fprintf(stderr, "bench_tasks: --topk %s: expected 1..%d\n", argv[i], MA_MAX_TOPK);
                return 2;
            }
        } else if (!strcmp(a, "--dat") && i + 1 < argc) {
            dat = argv[++i];
        } else if (!strcmp(a, "--no-chunks")) {
            chunks = false;
        } else if (!strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bench_tasks: unknown or incomplete option \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (seeds < 1 || seeds > MAX_SEEDS || first_seed < 0 || n_sizes < 1) {
        fprintf(stderr, "bench_tasks: --seeds %d --first-seed %d: expected 1..%d seeds from a seed >= 0\n", seeds,
                first_seed, MAX_SEEDS);
        return 2;
    }
    openblas_set_num_threads(1);
    printf("# bench_tasks: EVAL.md A, H = 1, d = 64, M = 32 slots, C = 64, top-k %d, W = 256, "
           "q = %.0f·sqrt(d)·direction, direction at cosine %.3g to the key\n", topk ? topk : 16, ALPHA, query_cos);
    int rc = 0;
    size_run *run = calloc(1, sizeof *run);
    if (!run)
        return 1;
    for (int si = 0; si < n_sizes && !rc; si++) {
        memset(run, 0, sizeof *run);
        run->length = sizes[si];
        run->seeds = seeds;
        run->first_seed = first_seed;
        run->chunks = chunks;
        run->verbose = verbose;
        run->query_cos = query_cos;
        run->topk = topk;
        tg_config c;
        char err[256];
        tg_config_default(&c, sizes[si]);
        run->overwrites_max = c.overwrites_max;
        if (tg_config_check(&c, err, sizeof err)) {
            fprintf(stderr, "bench_tasks: T = %llu: %s\n", (unsigned long long)sizes[si], err);
            rc = 2;
            break;
        }
        double t0 = now_s();
        for (int s = 0; s < seeds && !rc; s++) {
            uint64_t seed = (uint64_t)(first_seed + s);
            rc = run_stream(&c, TG_STREAM_MAIN, seed, s, run);
            if (!rc)
                rc = run_stream(&c, TG_STREAM_PRESSURE, seed, s, run);
            if (!rc)
                rc = run_stream(&c, TG_STREAM_CORRECTIONS, seed, s, run);
            if (!rc) {
                fprintf(stderr, "  T=%llu seed %llu done (%.0f s)\n", (unsigned long long)sizes[si],
                        (unsigned long long)seed, now_s() - t0);
                fflush(stdout);
            }
        }
        if (rc) {
            fprintf(stderr, "bench_tasks: T = %llu failed: %s\n", (unsigned long long)sizes[si], ma_strerror(rc));
            break;
        }
        print_size(run);
        if (dat && write_dat(dat, run))
            rc = 1;
        printf("\nwall time for T = %llu: %.1f s\n", (unsigned long long)sizes[si], now_s() - t0);
        fflush(stdout);
    }
    free(run);
    return rc ? 1 : 0;
}
