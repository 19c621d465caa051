/*
 * tests/unit/test_tasks_gen.c — the guarantees of the task generators (bench/tasks_gen.h).
 *
 * What a benchmark of long-context memory most easily gets wrong is its data: filler that collides with
 * the facts, targets that always sit in the same place, or a bounded method that is shown the whole
 * context. Each test here checks one of those guarantees on real generated streams, in double precision.
 *
 * The generators are bench code, not part of libmemattn; this test compiles them in directly so that the
 * Makefile's per-directory rules stay as they are.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/tasks_gen.c"

static double dot_ff(const float *a, const float *b, int d)
{
    double s = 0;
    for (int j = 0; j < d; j++)
        s += (double)a[j] * b[j];
    return s;
}

static tg_stream *make(uint64_t length, tg_stream_kind kind, uint64_t seed)
{
    tg_config c;
    tg_stream *s = NULL;
    char err[256];
    tg_config_default(&c, length);
    assert_int_equal(tg_stream_create(&c, kind, seed, &s, err, sizeof err), 0);
    assert_non_null(s);
    return s;
}

static void test_config_check(void **state)
{
    (void)state;
    tg_config c;
    char err[256] = "";
    tg_config_default(&c, 16384);
    assert_int_equal(tg_config_check(&c, err, sizeof err), 0);

    c.slots = 10; /* fewer slots than the main stream writes: it would evict */
    assert_int_equal(tg_config_check(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "slots"));

    tg_config_default(&c, 16384);
    c.codebook = 64;
    assert_int_equal(tg_config_check(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "codebook"));

    tg_config_default(&c, 1000); /* < 16·W */
    assert_int_equal(tg_config_check(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "length"));

    tg_config_default(&c, 16384);
    c.distractor_lo = 0.2; /* below the separation of unrelated keys: not a "similar" key */
    assert_int_equal(tg_config_check(&c, err, sizeof err), -1);

    tg_stream *s = NULL;
    tg_config_default(&c, 16384);
    c.trials = 0;
    assert_int_equal(tg_stream_create(&c, TG_STREAM_MAIN, 1, &s, err, sizeof err), -1);
    assert_null(s);
}

static void test_bounded(void **state)
{
    (void)state;
    tg_config c;
    char err[256] = "";
    tg_config_default(&c, 16384);
    assert_int_equal(tg_check_bounded(&c, 256, 16, 64, err, sizeof err), 0);
    /* a window longer than the guard could hold the evidence */
    assert_int_equal(tg_check_bounded(&c, 257, 16, 64, err, sizeof err), -1);
    assert_non_null(strstr(err, "guard"));
    /* top-64 chunks of 64 = 4096 events = a quarter of 16k: no longer a bounded method */
    assert_int_equal(tg_check_bounded(&c, 256, 64, 64, err, sizeof err), -1);
    assert_non_null(strstr(err, "quarter"));
}

/* Every filler key is far from every anchor key (|cos| < filler_bound), and filler values never use a
 * row any planted event uses; both checked on whole streams of both kinds. */
static void test_filler_never_collides(void **state)
{
    (void)state;
    const size_t batch = 4096;
    for (uint64_t seed = 1; seed <= 2; seed++) {
        for (int kind = TG_STREAM_MAIN; kind < TG_STREAM_KINDS; kind++) {
            tg_stream *s = make(16384, (tg_stream_kind)kind, seed);
            const tg_config *c = tg_stream_config(s);
            int d = c->dim, na = tg_anchors(s);
            size_t np;
            const tg_plant *pl = tg_plants(s, &np);
            char *planted_row = calloc((size_t)c->codebook, 1);
            float *k = malloc(batch * d * sizeof *k), *v = malloc(batch * d * sizeof *v);
            const tg_plant **which = malloc(batch * sizeof *which);
            assert_non_null(planted_row);
            assert_non_null(k);
            assert_non_null(v);
            assert_non_null(which);
            for (size_t i = 0; i < np; i++)
                planted_row[pl[i].value] = 1;
            size_t fillers = 0, planted = 0;
            for (uint64_t at = 0; at < c->length; at += batch) {
                assert_int_equal(tg_events(s, at, batch, k, v, which), 0);
                for (size_t i = 0; i < batch; i++) {
                    if (which[i]) {
                        planted++;
                        continue;
                    }
                    fillers++;
                    double kn = dot_ff(k + i * d, k + i * d, d);
                    assert_true(fabs(kn - 1) < 1e-5);
                    for (int a = 0; a < na; a++)
                        assert_true(fabs(dot_ff(k + i * d, tg_anchor(s, a), d)) < c->filler_bound);
                    int row = tg_decode(s, v + i * d);
                    assert_true(row >= 0);
                    assert_memory_equal(v + i * d, tg_codebook(s) + (size_t)row * d, d * sizeof(float));
                    assert_false(planted_row[row]);
                }
            }
            assert_int_equal(planted, np);
            assert_int_equal(fillers + planted, c->length);
            free(planted_row);
            free(k);
            free(v);
            free(which);
            tg_stream_destroy(s);
        }
    }
}

/* Keys of unrelated facts are separated (|cos| < anchor_bound < the router's default tau 0.5), and a
 * distractor's key is as similar to its protected key as configured. */
static void test_anchor_separation(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        tg_stream *s = make(16384, TG_STREAM_MAIN, seed);
        const tg_config *c = tg_stream_config(s);
        int d = c->dim, na = tg_anchors(s);
        size_t np;
        const tg_plant *pl = tg_plants(s, &np);
        /* group of each anchor: the protected key of a distractor trial and its distractors share one */
        int *grp = malloc((size_t)na * sizeof *grp);
        assert_non_null(grp);
        for (int a = 0; a < na; a++)
            grp[a] = a;
        int distractors = 0;
        for (size_t i = 0; i < np; i++) {
            if (pl[i].task != TG_DISTRACTOR || !pl[i].protect)
                continue;
            for (size_t j = 0; j < np; j++) {
                if (pl[j].task != TG_DISTRACTOR || pl[j].trial != pl[i].trial || pl[j].key == pl[i].key)
                    continue;
                double cs = dot_ff(tg_anchor(s, pl[i].key), tg_anchor(s, pl[j].key), d);
                assert_true(cs >= c->distractor_lo - 1e-6 && cs <= c->distractor_hi + 1e-6);
                grp[pl[j].key] = pl[i].key;
                distractors++;
            }
        }
        assert_int_equal(distractors, c->trials * c->distractors);
        for (int a = 0; a < na; a++)
            for (int b = a + 1; b < na; b++)
                if (grp[a] != grp[b])
                    assert_true(fabs(dot_ff(tg_anchor(s, a), tg_anchor(s, b), d)) < c->anchor_bound);
        free(grp);
        tg_stream_destroy(s);
    }
}

/* Events do not depend on how the stream is cut: one batch, odd batches and random access agree. */
static void test_batch_independence(void **state)
{
    (void)state;
    tg_stream *s = make(16384, TG_STREAM_MAIN, 7);
    int d = tg_stream_config(s)->dim;
    const size_t n = 5000;
    float *k1 = malloc(n * d * sizeof(float)), *v1 = malloc(n * d * sizeof(float));
    float *k2 = malloc(n * d * sizeof(float)), *v2 = malloc(n * d * sizeof(float));
    assert_non_null(k1);
    assert_non_null(v1);
    assert_non_null(k2);
    assert_non_null(v2);
    assert_int_equal(tg_events(s, 1000, n, k1, v1, NULL), 0);
    size_t cuts[] = { 1, 7, 333, 1024 };
    for (size_t c = 0; c < 4; c++) {
        for (size_t at = 0; at < n; at += cuts[c]) {
            size_t m = n - at < cuts[c] ? n - at : cuts[c];
            assert_int_equal(tg_events(s, 1000 + at, m, k2 + at * d, v2 + at * d, NULL), 0);
        }
        assert_memory_equal(k1, k2, n * d * sizeof(float));
        assert_memory_equal(v1, v2, n * d * sizeof(float));
    }
    /* out of range */
    assert_int_equal(tg_events(s, 16384 - 10, 11, k2, v2, NULL), -1);
    free(k1);
    free(v1);
    free(k2);
    free(v2);
    tg_stream_destroy(s);
}

/* Same seed: same plan and events. Another seed: another plan and other events. */
static void test_determinism(void **state)
{
    (void)state;
    tg_stream *a = make(16384, TG_STREAM_MAIN, 3), *b = make(16384, TG_STREAM_MAIN, 3);
    tg_stream *c = make(16384, TG_STREAM_MAIN, 4);
    size_t na, nb, nc;
    const tg_plant *pa = tg_plants(a, &na), *pb = tg_plants(b, &nb), *pc = tg_plants(c, &nc);
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, na * sizeof *pa);
    int differs = na != nc;
    for (size_t i = 0; i < na && i < nc; i++)
        differs |= pa[i].pos != pc[i].pos;
    assert_true(differs);
    int d = tg_stream_config(a)->dim;
    float ka[64 * 100], va[64 * 100], kb[64 * 100], vb[64 * 100];
    assert_int_equal(tg_events(a, 500, 100, ka, va, NULL), 0);
    assert_int_equal(tg_events(b, 500, 100, kb, vb, NULL), 0);
    assert_memory_equal(ka, kb, sizeof ka);
    assert_memory_equal(va, vb, sizeof va);
    assert_int_equal(tg_events(c, 500, 100, kb, vb, NULL), 0);
    assert_memory_not_equal(ka, kb, 100 * d * sizeof(float));
    tg_stream_destroy(a);
    tg_stream_destroy(b);
    tg_stream_destroy(c);
}

/* Over 200 seeds every task's evidence event lands in every quarter of its range: the target position
 * is randomised and covers the stream, not one favourable spot. */
static void test_positions_cover_stream(void **state)
{
    (void)state;
    const uint64_t T = 8192;
    int hit[TG_TASKS][4] = { { 0 } };
    uint64_t first[TG_TASKS];
    int moved[TG_TASKS] = { 0 };
    for (int t = 0; t < TG_TASKS; t++)
        first[t] = UINT64_MAX;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        for (int kind = TG_STREAM_MAIN; kind < TG_STREAM_KINDS; kind++) {
            tg_stream *s = make(T, (tg_stream_kind)kind, seed);
            const tg_config *c = tg_stream_config(s);
            size_t nq;
            const tg_query *q = tg_queries(s, &nq);
            uint64_t usable = T - (uint64_t)c->window;
            for (size_t i = 0; i < nq; i++) {
                /* protected facts and pressure targets are drawn from the first 90 % so that writes
                 * can follow them; streaming facts from [0, T - 2W - 2) so that a question can follow */
                uint64_t range = q[i].task == TG_DISTRACTOR || q[i].task == TG_PRESSURE ||
                                         q[i].task == TG_CORRECTIONS ? usable * 9 / 10
                               : q[i].task == TG_STREAMING  ? T - 2 * (uint64_t)c->window - 2 : usable;
                assert_true(q[i].event < range);
                hit[q[i].task][q[i].event * 4 / range]++;
                if (first[q[i].task] == UINT64_MAX)
                    first[q[i].task] = q[i].event;
                else if (first[q[i].task] != q[i].event)
                    moved[q[i].task] = 1;
            }
            tg_stream_destroy(s);
        }
    }
    for (int t = 0; t < TG_TASKS; t++) {
        assert_true(moved[t]);
        for (int b = 0; b < 4; b++)
            assert_true(hit[t][b] > 0);
    }
}

/* Each query's expected answer is what its task says, and all its evidence lies more than W events
 * before the question: a sliding window of W never holds it, so a window method cannot pass by accident. */
static void test_queries_consistent(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        for (int kind = TG_STREAM_MAIN; kind < TG_STREAM_KINDS; kind++) {
            tg_stream *s = make(16384, (tg_stream_kind)kind, seed);
            const tg_config *c = tg_stream_config(s);
            uint64_t W = (uint64_t)c->window;
            size_t np, nq;
            const tg_plant *pl = tg_plants(s, &np);
            const tg_query *q = tg_queries(s, &nq);
            int per_task[TG_TASKS] = { 0 };
            for (size_t i = 0; i < nq; i++) {
                per_task[q[i].task]++;
                assert_true(q[i].at <= c->length);
                assert_true(q[i].evidence_last + W < q[i].at);
                /* the evidence event is planted with the query's key and value */
                const tg_plant *ev = NULL;
                for (size_t j = 0; j < np; j++)
                    if (pl[j].pos == q[i].event)
                        ev = &pl[j];
                assert_non_null(ev);
                assert_int_equal(ev->key, q[i].key);
                assert_int_equal(ev->value, q[i].value);
                assert_int_equal(ev->task, q[i].task);
                assert_int_equal(ev->trial, q[i].trial);
                /* every planted event of the trial before the question is older than the window */
                int same_key_before = 0, same_key_after = 0;
                uint64_t version = 0;
                for (size_t j = 0; j < np; j++) {
                    if (pl[j].task != q[i].task || pl[j].key != q[i].key)
                        continue;
                    if (pl[j].pos < q[i].at) {
                        assert_true(pl[j].pos + W < q[i].at);
                        same_key_before++;
                        if (pl[j].pos <= q[i].event)
                            version++;
                    } else {
                        same_key_after++;
                        assert_int_not_equal(pl[j].value, q[i].value);
                    }
                }
                switch (q[i].task) {
                case TG_RECALL:
                case TG_PRESSURE:
                    assert_int_equal(same_key_before, 1);
                    break;
                case TG_OVERWRITE: /* the latest of 2..1+overwrites_max versions */
                case TG_CORRECTIONS:
                    assert_true(same_key_before >= 2 && same_key_before <= 1 + c->overwrites_max);
                    assert_int_equal(version, (uint64_t)same_key_before);
                    break;
                case TG_VERSIONING: /* version j is the j-th write of the name */
                    assert_true(same_key_before >= 2);
                    assert_int_equal(q[i].version, version);
                    assert_true(strcmp(q[i].slot, ev->slot) == 0);
                    break;
                case TG_DISTRACTOR: /* protected first; rejected same-key writes come after it */
                    assert_true(ev->protect);
                    assert_true(same_key_before >= 2 && same_key_before <= 1 + c->rejected_max);
                    assert_int_equal(version, 1);
                    break;
                case TG_STREAMING: /* asked mid-stream, overwritten after the question */
                    assert_true(q[i].at < c->length);
                    assert_int_equal(same_key_before, 1);
                    assert_int_equal(same_key_after, 1);
                    break;
                default:
                    fail();
                }
            }
            /* slot names: main stream within M (never evicts); pressure M + extra, target evicted */
            int names = 0;
            for (size_t j = 0; j < np; j++) {
                if (!pl[j].slot[0])
                    continue;
                int seen = 0;
                for (size_t i = 0; i < j; i++)
                    seen |= strcmp(pl[i].slot, pl[j].slot) == 0;
                names += !seen;
            }
            if (kind == TG_STREAM_MAIN) {
                assert_true(names <= c->slots);
                for (int t = 0; t < TG_PRESSURE; t++)
                    assert_int_equal(per_task[t], c->trials);
            } else {
                tg_task task = kind == TG_STREAM_PRESSURE ? TG_PRESSURE : TG_CORRECTIONS;
                assert_int_equal(names, c->slots + c->pressure_extra);
                assert_int_equal(per_task[task], c->trials);
                assert_int_equal(per_task[TG_PRESSURE] + per_task[TG_CORRECTIONS], c->trials);
                for (size_t i = 0; i < nq; i++) { /* M later writes: the LRU policy must evict it */
                    int later = 0;
                    for (size_t j = 0; j < np; j++)
                        later += pl[j].pos > q[i].event;
                    assert_true(later >= c->slots);
                }
            }
            tg_stream_destroy(s);
        }
    }
}

/* The needle is findable and unique: an exact scan over the whole stream (double precision) finds the
 * recall fact's event as the best match of its key, and the next best key is below the filler bound. */
static void test_needle_unique(void **state)
{
    (void)state;
    tg_stream *s = make(16384, TG_STREAM_MAIN, 11);
    const tg_config *c = tg_stream_config(s);
    int d = c->dim;
    float *k = malloc(c->length * d * sizeof *k), *v = malloc(c->length * d * sizeof *v);
    assert_non_null(k);
    assert_non_null(v);
    assert_int_equal(tg_events(s, 0, c->length, k, v, NULL), 0);
    size_t nq;
    const tg_query *q = tg_queries(s, &nq);
    int checked = 0;
    for (size_t i = 0; i < nq; i++) {
        if (q[i].task != TG_RECALL)
            continue;
        double best = -2, second = -2;
        uint64_t arg = 0;
        for (uint64_t e = 0; e < c->length; e++) {
            double cs = dot_ff(k + e * d, tg_anchor(s, q[i].key), d);
            if (cs > best) {
                second = best;
                best = cs;
                arg = e;
            } else if (cs > second) {
                second = cs;
            }
        }
        assert_int_equal(arg, q[i].event);
        assert_true(best > 0.99999);
        assert_true(second < c->filler_bound);
        assert_int_equal(tg_decode(s, v + arg * d), q[i].value);
        checked++;
    }
    assert_int_equal(checked, c->trials);
    free(k);
    free(v);
    tg_stream_destroy(s);
}

/* A paraphrased question is at the requested cosine to its key, unit, deterministic, and differs
 * between questions; cos 1 is the key itself. */
static void test_query_direction(void **state)
{
    (void)state;
    tg_stream *s = make(16384, TG_STREAM_MAIN, 5);
    int d = tg_stream_config(s)->dim;
    size_t nq;
    const tg_query *q = tg_queries(s, &nq);
    float a[64], b[64], c[64];
    assert_int_equal(d, 64);
    for (size_t i = 0; i < nq; i++) {
        const float *key = tg_anchor(s, q[i].key);
        tg_query_direction(s, i, 1.0, a);
        assert_memory_equal(a, key, sizeof a);
        tg_query_direction(s, i, 0.9, a);
        tg_query_direction(s, i, 0.9, b);
        assert_memory_equal(a, b, sizeof a);
        assert_true(fabs(dot_ff(a, a, d) - 1) < 1e-5);
        assert_true(fabs(dot_ff(a, key, d) - 0.9) < 1e-5);
        if (i > 0) {
            tg_query_direction(s, i - 1, 0.9, c);
            assert_memory_not_equal(a, c, sizeof a);
        }
    }
    tg_stream_destroy(s);
}

static void test_decode(void **state)
{
    (void)state;
    tg_stream *s = make(16384, TG_STREAM_MAIN, 2);
    const tg_config *c = tg_stream_config(s);
    int d = c->dim;
    const float *cb = tg_codebook(s);
    for (int r = 0; r < c->codebook; r++)
        assert_int_equal(tg_decode(s, cb + (size_t)r * d), r);
    float mix[64] = { 0 }, zero[64] = { 0 };
    assert_int_equal(d, 64);
    for (int j = 0; j < d; j++)
        mix[j] = 0.5f * cb[3 * d + j] + 0.5f * cb[9 * d + j];
    int r = tg_decode(s, mix);
    assert_true(r == 3 || r == 9);
    for (int j = 0; j < d; j++)
        mix[j] = 5.0f * cb[7 * d + j]; /* scale does not matter */
    assert_int_equal(tg_decode(s, mix), 7);
    assert_int_equal(tg_decode(s, zero), -1);
    mix[0] = NAN;
    assert_int_equal(tg_decode(s, mix), -1);
    tg_stream_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_check),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_filler_never_collides),
        cmocka_unit_test(test_anchor_separation),
        cmocka_unit_test(test_batch_independence),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_positions_cover_stream),
        cmocka_unit_test(test_queries_consistent),
        cmocka_unit_test(test_needle_unique),
        cmocka_unit_test(test_query_direction),
        cmocka_unit_test(test_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
