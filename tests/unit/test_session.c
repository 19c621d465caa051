/* tests/unit/test_session.c — the session: write controller, router, slot verbs, payloads, persistence. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/featurize.h"
#include "core/session.h"

enum { H = 2, D = 8, DV = 4, KN = H * D, VN = H * DV };

#include "tests/unit/testrand.h"

static void fill(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand();
}

static ma_params params(int slots)
{
    ma_params p;
    ma_params_default(&p);
    p.heads = H;
    p.dim = D;
    p.value_dim = DV;
    p.slots = slots;
    p.chunk = 4;
    p.topk = 2;
    p.window = 3;
    return p;
}

static ma_session *session(int slots)
{
    ma_params p = params(slots);
    ma_session *s;
    assert_int_equal(ma_session_create(&p, &s), 0);
    return s;
}

/* Events with random keys and values; the test keeps them to check answers and to page them back. */
typedef struct {
    size_t n;
    float *k, *v;
    ma_event *ev;
} events;

static void make_events(events *e, size_t n, uint64_t seed)
{
    rng_state = seed;
    e->n = n;
    e->k = malloc(n * KN * sizeof *e->k);
    e->v = malloc(n * VN * sizeof *e->v);
    e->ev = calloc(n, sizeof *e->ev);
    fill(e->k, n * KN);
    fill(e->v, n * VN);
    /* Unit keys per head: q = k_i then scores highest on event i in every head. */
    for (size_t i = 0; i < n * H; i++) {
        double ss = 0;
        for (int j = 0; j < D; j++)
            ss += (double)e->k[i * D + j] * e->k[i * D + j];
        for (int j = 0; j < D; j++)
            e->k[i * D + j] = (float)(e->k[i * D + j] / sqrt(ss));
    }
    for (size_t i = 0; i < n; i++)
        e->ev[i] = (ma_event){e->k + i * KN, e->v + i * VN, NULL, NULL, false};
}

static void free_events(events *e)
{
    free(e->k);
    free(e->v);
    free(e->ev);
}

static void ingest(ma_session *s, events *e, ma_ingest_report *rep)
{
    assert_int_equal(ma_session_ingest(s, e->n, e->ev, 1000, rep), 0);
}

static void test_route_names(void **state)
{
    (void)state;
    for (int r = MA_ROUTE_AUTO; r <= MA_ROUTE_WINDOW; r++) {
        ma_route back;
        assert_int_equal(ma_route_parse(ma_route_name((ma_route)r), &back), 0);
        assert_int_equal(back, r);
    }
    ma_route r;
    assert_int_equal(ma_route_parse("mixed", &r), MA_EINVAL);
    assert_null(ma_route_name((ma_route)99));
}

static void test_ingest_and_payloads(void **state)
{
    (void)state;
    ma_session *s = session(4);
    events e;
    make_events(&e, 10, 1);
    e.ev[3].payload = "{\"fact\":3}";
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    assert_int_equal(rep.length, 10);
    assert_int_equal(rep.appended, 10);
    assert_int_equal(rep.n_writes + rep.n_voids + rep.n_evicted, 0);
    ma_ingest_report_clear(&rep);

    /* The full read with q = event 3's key points at event 3. */
    float out[VN];
    ma_answer a = {.v = out};
    ma_query q = {.q = e.k + 3 * KN, .route = MA_ROUTE_FULL};
    assert_int_equal(ma_session_query(s, &q, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_FULL);
    assert_int_equal(a.event, 3);
    assert_string_equal(a.payload, "{\"fact\":3}");
    assert_false(a.has_slot);
    assert_true(fabs(a.score - 1.0) < 1e-6);
    ma_answer_clear(&a);
    q.q = e.k + 4 * KN;
    assert_int_equal(ma_session_query(s, &q, &a), 0);
    assert_int_equal(a.event, 4);
    assert_null(a.payload);                               /* an event without payload has none */
    ma_answer_clear(&a);

    ma_session_stats st;
    assert_int_equal(ma_session_stats_get(s, &st), 0);
    assert_int_equal(st.length, 10);
    assert_int_equal(st.chunks, 3);
    assert_int_equal(st.slots_resident, 0);
    assert_true(st.bytes > 10 * (KN + VN) * sizeof(float));
    for (int h = 0; h < H; h++)
        assert_true(st.state_norm[h] > 0);
    ma_session_stats_clear(&st);
    free_events(&e);
    ma_session_destroy(s);
}

/* Events whose vectors lie back to back are read in place, others gathered: the same session either way. */
static void test_ingest_packed_or_scattered(void **state)
{
    (void)state;
    events e;
    make_events(&e, 37, 21);
    /* The same vectors in reverse order in memory: event i's k/v no longer follow event i-1's. */
    float *rk = malloc(e.n * KN * sizeof *rk), *rv = malloc(e.n * VN * sizeof *rv);
    ma_event *rev = calloc(e.n, sizeof *rev);
    assert_non_null(rk);
    assert_non_null(rv);
    assert_non_null(rev);
    for (size_t i = 0; i < e.n; i++) {
        size_t j = e.n - 1 - i;
        memcpy(rk + j * KN, e.k + i * KN, KN * sizeof *rk);
        memcpy(rv + j * VN, e.v + i * VN, VN * sizeof *rv);
        rev[i] = (ma_event){rk + j * KN, rv + j * VN, NULL, NULL, false};
    }
    ma_session *a = session(4), *b = session(4);
    ma_ingest_report r1, r2;
    assert_int_equal(ma_session_ingest(a, e.n, e.ev, 5, &r1), 0);
    assert_int_equal(ma_session_ingest(b, e.n, rev, 5, &r2), 0);
    void *x, *y;
    size_t xl, yl;
    assert_int_equal(ma_backbone_serialize(ma_session_backbone(a), &x, &xl), 0);
    assert_int_equal(ma_backbone_serialize(ma_session_backbone(b), &y, &yl), 0);
    assert_int_equal(xl, yl);
    assert_memory_equal(x, y, xl);
    free(x);
    free(y);
    float k[KN], v[VN], k2[KN], v2[VN];
    for (uint64_t i = 0; i < e.n; i++) {
        assert_int_equal(ma_archive_get(ma_session_archive(a), i, k, v), 0);
        assert_int_equal(ma_archive_get(ma_session_archive(b), i, k2, v2), 0);
        assert_memory_equal(k, k2, sizeof k);
        assert_memory_equal(v, v2, sizeof v);
    }
    ma_session_change c;
    ma_session_changes(b, &c);
    assert_int_equal(c.length, e.n);
    assert_int_equal(c.slots_resident, 0);
    ma_ingest_report_clear(&r1);
    ma_ingest_report_clear(&r2);
    ma_session_destroy(a);
    ma_session_destroy(b);
    free(rk);
    free(rv);
    free(rev);
    free_events(&e);
}

/* The change report (ma_session_changes): each verb sets the parts it changed and only those, a failed
 * verb and a query set nothing, ma_session_changes_saved starts again from nothing. */
static unsigned parts_saved(ma_session *s)
{
    ma_session_change c;
    ma_session_changes(s, &c);
    ma_session_changes_saved(s);
    return c.parts;
}

static void test_change_report(void **state)
{
    (void)state;
    ma_session *s = session(4);
    events e;
    make_events(&e, MA_IVF_MIN_BUILD, 41);
    ma_ingest_report rep;
    ma_session_change c;
    ma_session_changes(s, &c);
    assert_int_equal(c.parts, 0);
    assert_int_equal(c.length, 0);

    const unsigned ingested = MA_CHANGED_BACKBONE | MA_CHANGED_EVENTS;
    assert_int_equal(ma_session_ingest(s, 3, e.ev, 1, &rep), 0);
    ma_ingest_report_clear(&rep);
    ma_session_changes(s, &c);
    assert_int_equal(c.length, 3);
    assert_int_equal(c.slots_resident, 0);
    assert_int_equal(parts_saved(s), ingested);
    assert_int_equal(parts_saved(s), 0);
    assert_int_equal(ma_session_ingest(s, 0, e.ev + 3, 1, &rep), 0);   /* an empty batch changes nothing */
    ma_ingest_report_clear(&rep);
    assert_int_equal(parts_saved(s), 0);
    e.ev[3].slot = "ev";
    assert_int_equal(ma_session_ingest(s, 2, e.ev + 3, 2, &rep), 0);
    ma_ingest_report_clear(&rep);
    ma_session_changes(s, &c);
    assert_int_equal(c.slots_resident, 1);
    assert_int_equal(parts_saved(s), ingested | MA_CHANGED_SLOTS);

    ma_slot_input in = {.name = "a", .k = e.k, .v = e.v};
    assert_int_equal(ma_session_slot_write(s, &in, 3, NULL), 0);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);
    assert_int_equal(ma_session_slot_write(s, &in, 3, NULL), MA_EEXISTS);   /* failed: nothing */
    assert_int_equal(parts_saved(s), 0);
    assert_int_equal(ma_session_slot_overwrite(s, &in, 0, 0, 4, NULL), 0);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);
    assert_int_equal(ma_session_slot_overwrite(s, &in, 0, 1, 4, NULL), MA_EPRECOND);
    assert_int_equal(parts_saved(s), 0);
    assert_int_equal(ma_session_slot_restore(s, "a", 1, 5, NULL), 0);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);
    assert_int_equal(ma_session_slot_protect(s, "a", true, 6), 0);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);
    assert_int_equal(ma_session_slot_evict(s, "a", 7), MA_EPROTECTED);
    assert_int_equal(parts_saved(s), 0);
    assert_int_equal(ma_session_slot_protect(s, "a", false, 8), 0);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);
    assert_int_equal(ma_session_slot_evict(s, "a", 9), 0);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);
    assert_int_equal(ma_session_slot_protect(s, "nope", true, 10), MA_ENOTFOUND);
    assert_int_equal(parts_saved(s), 0);
    uint64_t *ev;
    size_t nev;
    assert_int_equal(ma_session_slot_forget(s, "ev", &ev, &nev), 0);
    free(ev);
    assert_int_equal(parts_saved(s), MA_CHANGED_SLOTS);

    /* Reads change nothing that is stored. */
    float out[VN];
    ma_answer a = {.v = out};
    assert_int_equal(ma_session_query(s, &(ma_query){.q = e.k, .route = MA_ROUTE_FULL}, &a), 0);
    ma_answer_clear(&a);
    assert_int_equal(parts_saved(s), 0);

    /* The batch that reaches the first index build point rebuilds the index: its blob changed too. */
    uint64_t len = ma_archive_length(ma_session_archive(s));
    assert_int_equal(ma_archive_meta_generation(ma_session_archive(s)), 0);
    assert_int_equal(ma_session_ingest(s, MA_IVF_MIN_BUILD - len, e.ev + len, 11, &rep), 0);
    ma_ingest_report_clear(&rep);
    assert_true(ma_archive_meta_generation(ma_session_archive(s)) > 0);
    assert_int_equal(parts_saved(s), ingested | MA_CHANGED_INDEX);
    assert_int_equal(parts_saved(s), 0);
    free_events(&e);
    ma_session_destroy(s);
}

static void test_write_controller(void **state)
{
    (void)state;
    ma_session *s = session(2);
    events e;
    make_events(&e, 6, 2);
    e.ev[0].slot = "a";
    e.ev[0].payload = "\"first\"";
    e.ev[1].slot = "a";
    e.ev[1].protect = true;                          /* overwrite, then protect */
    e.ev[2].slot = "a";                              /* void: protected */
    e.ev[3].slot = "b";
    e.ev[5].slot = "c";                              /* capacity 2: evicts b (a is protected) */
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    assert_int_equal(rep.n_writes, 4);
    assert_string_equal(rep.writes[0].slot, "a");
    assert_int_equal(rep.writes[0].version, 1);
    assert_int_equal(rep.writes[0].event, 0);
    assert_int_equal(rep.writes[1].version, 2);
    assert_int_equal(rep.writes[1].event, 1);
    assert_string_equal(rep.writes[2].slot, "b");
    assert_string_equal(rep.writes[3].slot, "c");
    assert_int_equal(rep.writes[3].version, 1);
    assert_int_equal(rep.writes[3].event, 5);
    assert_int_equal(rep.n_voids, 1);
    assert_string_equal(rep.voids[0].slot, "a");
    assert_int_equal(rep.voids[0].event, 2);
    assert_string_equal(rep.voids[0].reason, "protected");
    assert_int_equal(rep.n_evicted, 1);
    assert_string_equal(rep.evicted[0].slot, "b");
    ma_ingest_report_clear(&rep);

    /* The slot holds the writing event's k, v and source index. */
    ma_slot_value val;
    assert_int_equal(ma_session_slot_read(s, "a", 0, &val), 0);
    assert_int_equal(val.info.version, 2);
    assert_int_equal(val.info.event, 1);
    assert_true(val.info.protect);
    assert_memory_equal(val.k, e.k + 1 * KN, KN * sizeof(float));
    assert_memory_equal(val.v, e.v + 1 * VN, VN * sizeof(float));
    ma_slot_value_clear(&val);

    /* Both resident slots protected: a batch that needs an eviction fails whole, nothing applied. */
    assert_int_equal(ma_session_slot_protect(s, "c", true, 0), 0);
    events f;
    make_events(&f, 3, 3);
    f.ev[0].payload = "1";
    f.ev[2].slot = "d";
    ma_session_stats before, after;
    assert_int_equal(ma_session_stats_get(s, &before), 0);
    void *sb;
    size_t sl;
    assert_int_equal(ma_session_serialize_slots(s, &sb, &sl), 0);
    assert_int_equal(ma_session_ingest(s, f.n, f.ev, 2000, &rep), MA_EFULL);
    assert_int_equal(rep.length, 6);
    assert_int_equal(rep.n_writes, 0);
    assert_int_equal(ma_session_stats_get(s, &after), 0);
    assert_int_equal(after.length, 6);
    assert_int_equal(after.bytes, before.bytes);
    assert_memory_equal(after.state_norm, before.state_norm, H * sizeof(double));
    ma_session_stats_clear(&before);
    ma_session_stats_clear(&after);
    void *sb2;
    size_t sl2;
    assert_int_equal(ma_session_serialize_slots(s, &sb2, &sl2), 0);
    assert_int_equal(sl, sl2);
    assert_memory_equal(sb, sb2, sl);
    free(sb);
    free(sb2);

    /* A void write to a protected slot does not need an eviction: that batch goes through. */
    f.ev[2].slot = "a";
    ingest(s, &f, &rep);
    assert_int_equal(rep.n_voids, 1);
    assert_int_equal(rep.voids[0].event, 8);
    ma_ingest_report_clear(&rep);
    free_events(&f);
    free_events(&e);
    ma_session_destroy(s);
}

static void test_router(void **state)
{
    (void)state;
    ma_session *s = session(4);
    float out[VN];
    ma_answer a = {.v = out};
    float q[KN];
    rng_state = 77;
    fill(q, KN);

    /* Empty archive, no slots. */
    ma_query mq = {.q = q};
    assert_int_equal(ma_session_query(s, &mq, &a), MA_EEMPTY);
    mq.route = MA_ROUTE_STATE;
    assert_int_equal(ma_session_query(s, &mq, &a), 0);      /* the backbone answers zeros */
    assert_int_equal(a.route, MA_ROUTE_STATE);

    events e;
    make_events(&e, 20, 4);
    e.ev[7].slot = "fact";
    e.ev[7].payload = "\"seven\"";
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    ma_ingest_report_clear(&rep);
    const float *key7 = e.k + 7 * KN;

    /* 1. Named and resident: the slot, score 1 without q. */
    ma_query nq = {.slot = "fact"};
    assert_int_equal(ma_session_query(s, &nq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    assert_true(a.has_slot);
    assert_string_equal(a.slot, "fact");
    assert_int_equal(a.version, 1);
    assert_int_equal(a.event, 7);
    assert_true(a.score == 1.0);
    assert_string_equal(a.payload, "\"seven\"");
    assert_memory_equal(out, e.v + 7 * VN, sizeof out);
    ma_answer_clear(&a);

    /* 2. Unnamed, q within the threshold of the slot key: the slot by cosine. */
    ma_query cq = {.q = key7};
    assert_int_equal(ma_session_query(s, &cq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    assert_true(fabs(a.score - 1.0) < 1e-6);
    ma_answer_clear(&a);

    /* 3. Unnamed and unmatched: sparse, with its evidence. A random q has cosine well below 0.5 with the
     * slot key here; check that rather than assume it. */
    ma_query uq = {.q = e.k + 12 * KN};
    float mean = 0;
    for (int h = 0; h < H; h++) {
        double qk = 0, qq = 0, kk = 0;
        for (int j = 0; j < D; j++) {
            qk += (double)uq.q[h * D + j] * key7[h * D + j];
            qq += (double)uq.q[h * D + j] * uq.q[h * D + j];
            kk += (double)key7[h * D + j] * key7[h * D + j];
        }
        mean += (float)(qk / sqrt(qq * kk) / H);
    }
    assert_true(mean < 0.5f);
    assert_int_equal(ma_session_query(s, &uq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SPARSE);
    assert_false(a.has_slot);
    assert_int_equal(a.event, 12);
    assert_true(a.n_chunks >= 1);
    ma_answer_clear(&a);

    /* A named slot that is not resident falls through (to cosine, then sparse) when q is given ... */
    ma_query gq = {.slot = "ghost", .q = key7};
    assert_int_equal(ma_session_query(s, &gq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    assert_string_equal(a.slot, "fact");
    ma_answer_clear(&a);
    gq.q = uq.q;
    assert_int_equal(ma_session_query(s, &gq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SPARSE);
    ma_answer_clear(&a);
    /* ... and is not found without q. */
    gq.q = NULL;
    assert_int_equal(ma_session_query(s, &gq, &a), MA_ENOTFOUND);

    /* Forced routes. */
    ma_query fq = {.q = uq.q, .route = MA_ROUTE_SLOT};
    assert_int_equal(ma_session_query(s, &fq, &a), MA_ENOTFOUND);       /* no resident match */
    fq.q = key7;
    assert_int_equal(ma_session_query(s, &fq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    ma_answer_clear(&a);
    const ma_route forced[] = {MA_ROUTE_SPARSE, MA_ROUTE_FULL, MA_ROUTE_WINDOW, MA_ROUTE_STATE};
    for (size_t i = 0; i < 4; i++) {
        ma_query f = {.q = key7, .slot = "fact", .route = forced[i]};
        assert_int_equal(ma_session_query(s, &f, &a), 0);
        assert_int_equal(a.route, forced[i]);
        assert_false(a.has_slot);
        if (forced[i] == MA_ROUTE_SPARSE || forced[i] == MA_ROUTE_FULL)
            assert_int_equal(a.event, 7);                  /* the archive still holds the slot's event */
        if (forced[i] == MA_ROUTE_WINDOW)
            assert_true(a.event >= 17);                    /* window 3 of 20 events */
        if (forced[i] == MA_ROUTE_STATE)
            assert_int_equal(a.event, -1);
        ma_answer_clear(&a);
        f.q = NULL;
        assert_int_equal(ma_session_query(s, &f, &a), MA_EINVAL);
    }
    ma_query none = {.route = MA_ROUTE_AUTO};
    assert_int_equal(ma_session_query(s, &none, &a), MA_EINVAL);

    /* The state route is the backbone's default read. */
    float want[VN];
    assert_int_equal(ma_backbone_read(ma_session_backbone(s), 1, key7, want, MA_READ_DEFAULT), 0);
    ma_query sq = {.q = key7, .route = MA_ROUTE_STATE};
    assert_int_equal(ma_session_query(s, &sq, &a), 0);
    assert_memory_equal(out, want, sizeof want);
    ma_answer_clear(&a);

    /* Versions: named with a version answers that version; evicted slots are not matched. */
    ma_slot_input in = {.name = "fact", .k = e.k + 9 * KN, .v = e.v + 9 * VN};
    ma_slot_result res;
    assert_int_equal(ma_session_slot_overwrite(s, &in, 0, 0, 3000, &res), 0);
    nq.version = 1;
    assert_int_equal(ma_session_query(s, &nq, &a), 0);
    assert_int_equal(a.version, 1);
    assert_memory_equal(out, e.v + 7 * VN, sizeof out);
    ma_answer_clear(&a);
    nq.version = 5;
    assert_int_equal(ma_session_query(s, &nq, &a), MA_ENOVERSION);
    assert_int_equal(ma_session_slot_evict(s, "fact", 3001), 0);
    assert_int_equal(ma_session_query(s, &cq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SPARSE);
    assert_true(a.event != 7);                  /* event 7 was superseded by the overwrite: not read ... */
    ma_answer_clear(&a);
    cq.include_superseded = true;               /* ... unless the query asks for everything (audit) */
    assert_int_equal(ma_session_query(s, &cq, &a), 0);
    assert_int_equal(a.event, 7);
    ma_answer_clear(&a);
    /* A version of an evicted slot is still answered by name. */
    nq.version = 1;
    assert_int_equal(ma_session_query(s, &nq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    assert_int_equal(a.event, 7);
    ma_answer_clear(&a);
    free_events(&e);
    ma_session_destroy(s);
}

static void test_threshold(void **state)
{
    (void)state;
    ma_params p = params(4);
    float k[KN], v[VN], q[KN];
    rng_state = 5;
    fill(k, KN);
    fill(v, VN);
    /* q = k plus a perpendicular-ish perturbation: cosine clearly between 0 and 1. */
    fill(q, KN);
    for (int i = 0; i < KN; i++)
        q[i] = k[i] + 0.8f * q[i];
    events e;
    make_events(&e, 5, 6);
    double c = 0;
    for (int h = 0; h < H; h++) {
        double qk = 0, qq = 0, kk = 0;
        for (int j = 0; j < D; j++) {
            qk += (double)q[h * D + j] * k[h * D + j];
            qq += (double)q[h * D + j] * q[h * D + j];
            kk += (double)k[h * D + j] * k[h * D + j];
        }
        c += qk / sqrt(qq * kk) / H;
    }
    assert_true(c > 0.2 && c < 0.95);
    const double taus[] = {c - 0.01, c + 0.01, 1.5};
    const ma_route want[] = {MA_ROUTE_SLOT, MA_ROUTE_SPARSE, MA_ROUTE_SPARSE};
    for (int t = 0; t < 3; t++) {
        p.route_threshold = taus[t];
        ma_session *s;
        assert_int_equal(ma_session_create(&p, &s), 0);
        ma_ingest_report rep;
        ingest(s, &e, &rep);
        ma_ingest_report_clear(&rep);
        ma_slot_input in = {.name = "x", .k = k, .v = v};
        assert_int_equal(ma_session_slot_write(s, &in, 1, NULL), 0);
        float out[VN];
        ma_answer a = {.v = out};
        ma_query mq = {.q = q};
        assert_int_equal(ma_session_query(s, &mq, &a), 0);
        assert_int_equal(a.route, want[t]);
        if (a.route == MA_ROUTE_SLOT)
            assert_true(fabs(a.score - c) < 1e-6);
        ma_answer_clear(&a);
        ma_session_destroy(s);
    }
    free_events(&e);
}

static void test_text_slots(void **state)
{
    (void)state;
    ma_params p;
    ma_params_default(&p);                  /* H = 1, d = 64: the curl example of API.md */
    ma_session *s;
    assert_int_equal(ma_session_create(&p, &s), 0);

    ma_slot_input in = {.name = "capital_of_france", .text = "Paris", .payload = "\"Paris\""};
    ma_slot_result res;
    assert_int_equal(ma_session_slot_write(s, &in, 1, &res), 0);
    assert_int_equal(res.version, 1);
    assert_int_equal(ma_session_slot_write(s, &in, 1, &res), MA_EEXISTS);

    /* Key: the name's embedding. Value: the payload string's embedding. */
    ma_slot_value val;
    float want[64];
    assert_int_equal(ma_session_slot_read(s, "capital_of_france", 0, &val), 0);
    assert_true(ma_embed_text("capital_of_france", 17, 64, want) > 0);
    assert_memory_equal(val.k, want, sizeof want);
    assert_true(ma_embed_text("Paris", 5, 64, want) > 0);
    assert_memory_equal(val.v, want, sizeof want);
    ma_slot_value_clear(&val);

    /* Without a value vector there must be text to embed (the caller's decoding of a string payload). */
    ma_slot_input bad = {.name = "n", .payload = "{\"a\":1}"};
    assert_int_equal(ma_session_slot_write(s, &bad, 1, NULL), MA_EINVAL);
    bad.payload = NULL;
    assert_int_equal(ma_session_slot_write(s, &bad, 1, NULL), MA_EINVAL);
    bad.payload = "\"ok\"";
    bad.text = "ok";
    assert_int_equal(ma_session_slot_write(s, &bad, 1, NULL), 0);

    /* A text query lands on the slot through the cosine step. */
    float q[64], out[64];
    assert_true(ma_embed_text("Capital of France?", 18, 64, q) > 0);
    ma_answer a = {.v = out};
    ma_query mq = {.q = q};
    assert_int_equal(ma_session_query(s, &mq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    assert_string_equal(a.slot, "capital_of_france");
    assert_string_equal(a.payload, "\"Paris\"");
    ma_answer_clear(&a);

    /* Verbs pass through with their errors. */
    assert_int_equal(ma_session_slot_overwrite(s, &in, 1, 0, 2, &res), MA_ECONFLICT);
    assert_int_equal(ma_session_slot_overwrite(s, &in, 0, 7, 2, &res), MA_EPRECOND);
    assert_int_equal(ma_session_slot_overwrite(s, &in, 0, 1, 2, &res), 0);
    assert_int_equal(res.version, 2);
    assert_int_equal(ma_session_slot_restore(s, "capital_of_france", 1, 3, &res), 0);
    assert_int_equal(res.version, 3);
    ma_version_info *h;
    size_t n;
    assert_int_equal(ma_session_slot_history(s, "capital_of_france", &h, &n), 0);
    assert_int_equal(n, 3);
    free(h);
    ma_slot_info *info;
    assert_int_equal(ma_session_slot_list(s, &info, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(info[0].name, "capital_of_france");
    assert_int_equal(info[0].usage, 1);                     /* the one query it answered */
    free(info);
    ma_session_destroy(s);
}

typedef struct {
    const ma_session *s;
    const float *q;
    int n, bad;
} qarg;

static void *run_queries(void *p)
{
    qarg *a = p;
    float out[VN];
    for (int i = 0; i < a->n; i++) {
        ma_answer ans = {.v = out};
        ma_query q = {.q = a->q};
        if (ma_session_query(a->s, &q, &ans) != 0 || ans.route != MA_ROUTE_SLOT)
            a->bad++;
        ma_answer_clear(&ans);
    }
    return NULL;
}

static void test_parallel_queries_count_usage(void **state)
{
    (void)state;
    ma_session *s = session(4);
    events e;
    make_events(&e, 8, 8);
    e.ev[2].slot = "x";
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    ma_ingest_report_clear(&rep);
    enum { T = 4, N = 2000 };
    pthread_t th[T];
    qarg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (qarg){s, e.k + 2 * KN, N, 0};
        assert_int_equal(pthread_create(&th[i], NULL, run_queries, &args[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].bad, 0);
    }
    ma_slot_value val;
    assert_int_equal(ma_session_slot_read(s, "x", 0, &val), 0);
    assert_int_equal(val.info.usage, (uint64_t)T * N);
    ma_slot_value_clear(&val);
    free_events(&e);
    ma_session_destroy(s);
}

/* ---- persistence ---------------------------------------------------------------------------------- */

typedef struct {
    const events *e;
    const ma_params *p;
    int loads;
} src_ctx;

static int load_chunk(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    src_ctx *c = ctx;
    size_t first = (size_t)chunk * (size_t)c->p->chunk;
    if (first + n > c->e->n)
        return MA_EIO;
    memcpy(k, c->e->k + first * KN, n * KN * sizeof *k);
    memcpy(v, c->e->v + first * VN, n * VN * sizeof *v);
    c->loads++;
    return 0;
}

static int load_payload(void *ctx, uint64_t event, char **payload)
{
    src_ctx *c = ctx;
    const char *p = event < c->e->n ? c->e->ev[event].payload : NULL;
    *payload = p ? strdup(p) : NULL;
    return 0;
}

static void same_answers(const ma_session *a, const ma_session *b, const ma_query *q)
{
    float va[VN], vb[VN];
    ma_answer x = {.v = va}, y = {.v = vb};
    int ra = ma_session_query(a, q, &x), rb = ma_session_query(b, q, &y);
    assert_int_equal(ra, rb);
    if (ra == 0) {
        assert_int_equal(x.route, y.route);
        assert_memory_equal(va, vb, sizeof va);         /* same bits */
        assert_true(x.score == y.score);
        assert_int_equal(x.event, y.event);
        assert_int_equal(x.has_slot, y.has_slot);
        assert_string_equal(x.slot, y.slot);
        assert_int_equal(x.version, y.version);
        assert_int_equal(x.n_chunks, y.n_chunks);
        if (x.n_chunks)
            assert_memory_equal(x.chunks, y.chunks, x.n_chunks * sizeof *x.chunks);
        if (x.payload || y.payload)
            assert_string_equal(x.payload, y.payload);
    }
    ma_answer_clear(&x);
    ma_answer_clear(&y);
}

static void test_serialize_restore(void **state)
{
    (void)state;
    const ma_backbone_kind kinds[] = {MA_BACKBONE_VLA, MA_BACKBONE_NONE};
    for (int kind = 0; kind < 2; kind++) {
        ma_params p = params(3);
        p.backbone = kinds[kind];
        ma_session *s;
        assert_int_equal(ma_session_create(&p, &s), 0);
        events e;
        make_events(&e, 37, 9);
        e.ev[1].payload = "\"one\"";
        e.ev[20].payload = "[20]";
        e.ev[5].slot = "five";
        e.ev[5].payload = "{\"slot\":5}";
        e.ev[30].slot = "thirty";
        e.ev[30].protect = true;
        ma_ingest_report rep;
        ingest(s, &e, &rep);
        ma_ingest_report_clear(&rep);
        ma_slot_input in = {.name = "verb", .k = e.k + 11 * KN, .v = e.v + 12 * VN, .payload = "\"v\""};
        assert_int_equal(ma_session_slot_write(s, &in, 5, NULL), 0);
        assert_int_equal(ma_session_slot_evict(s, "five", 6), 0);

        void *bb, *sl, *am;
        size_t bbn, sln, amn;
        assert_int_equal(ma_backbone_serialize(ma_session_backbone(s), &bb, &bbn), 0);
        assert_int_equal(ma_session_serialize_slots(s, &sl, &sln), 0);
        assert_int_equal(ma_archive_serialize_meta(ma_session_archive(s), &am, &amn), 0);

        src_ctx ctx = {&e, &p, 0};
        ma_chunk_source cs = {load_chunk, &ctx};
        ma_payload_source ps = {load_payload, &ctx};
        ma_session *r;
        assert_int_equal(ma_session_restore(&p, &(ma_session_saved){bb, bbn, sl, sln, am, amn, cs, 2, ps, {0}},
                                            &r),
                         0);
        /* A table restored whole has its versions to store as rows: the first commit writes them. */
        ma_session_change ch;
        ma_session_changes(r, &ch);
        assert_int_equal(ch.parts, MA_CHANGED_SLOTS);
        ma_session_changes_saved(r);
        ma_session_changes(r, &ch);
        assert_int_equal(ch.parts, 0);

        ma_query qs[] = {
            {.q = e.k + 1 * KN},                                  /* sparse, payload through the source */
            {.q = e.k + 20 * KN, .route = MA_ROUTE_FULL},
            {.q = e.k + 30 * KN},                                 /* slot by cosine */
            {.slot = "verb"},
            {.slot = "five", .version = 1, .route = MA_ROUTE_SLOT},   /* evicted: not found */
            {.q = e.k + 36 * KN, .route = MA_ROUTE_WINDOW},
            {.q = e.k + 3 * KN, .route = MA_ROUTE_STATE},
            {.q = e.k + 17 * KN, .topk = 1},
        };
        for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
            same_answers(s, r, &qs[i]);
        assert_true(ctx.loads > 0);
        float out[VN];
        ma_answer a = {.v = out};
        assert_int_equal(ma_session_query(r, &qs[0], &a), 0);
        assert_string_equal(a.payload, "\"one\"");
        ma_answer_clear(&a);

        /* Both continue identically, including payloads of new events (kept by the restored session). */
        events f;
        make_events(&f, 6, 10);
        f.ev[2].payload = "\"new\"";
        f.ev[4].slot = "more";
        ma_ingest_report r1, r2;
        assert_int_equal(ma_session_ingest(s, f.n, f.ev, 7, &r1), 0);
        assert_int_equal(ma_session_ingest(r, f.n, f.ev, 7, &r2), 0);
        assert_int_equal(r1.n_evicted, r2.n_evicted);
        if (r1.n_evicted)
            assert_string_equal(r1.evicted[0].slot, r2.evicted[0].slot);
        ma_ingest_report_clear(&r1);
        ma_ingest_report_clear(&r2);
        ma_query q2[] = {{.q = f.k + 2 * KN, .route = MA_ROUTE_FULL}, {.q = f.k + 4 * KN},
                         {.q = e.k + 1 * KN, .route = MA_ROUTE_FULL}};
        for (size_t i = 0; i < 3; i++)
            same_answers(s, r, &q2[i]);
        assert_int_equal(ma_session_query(r, &q2[0], &a), 0);
        assert_string_equal(a.payload, "\"new\"");
        ma_answer_clear(&a);
        void *sl2, *sl3;
        size_t sln2, sln3;
        assert_int_equal(ma_session_serialize_slots(s, &sl2, &sln2), 0);
        assert_int_equal(ma_session_serialize_slots(r, &sl3, &sln3), 0);
        assert_int_equal(sln2, sln3);
        assert_memory_equal(sl2, sl3, sln2);
        free(sl2);
        free(sl3);
        free_events(&f);
        ma_session_destroy(r);

        /* A damaged or truncated slot blob, or blobs that do not belong together, are refused. */
        unsigned char *bad = malloc(sln);
        memcpy(bad, sl, sln);
        bad[sln / 2] ^= 1;
        assert_int_equal(ma_session_restore(&p, &(ma_session_saved){bb, bbn, bad, sln, am, amn, cs, 2, ps, {0}},
                                            &r),
                         MA_ECORRUPT);
        assert_int_equal(ma_session_restore(&p, &(ma_session_saved){bb, bbn, sl, sln - 1, am, amn, cs, 2, ps, {0}},
                                            &r),
                         MA_ECORRUPT);
        free(bad);
        ma_session *other;
        assert_int_equal(ma_session_create(&p, &other), 0);
        void *bb0;
        size_t bbn0;
        assert_int_equal(ma_backbone_serialize(ma_session_backbone(other), &bb0, &bbn0), 0);
        /* The archive blob holds no length (the backbone's step count is the length, so
         * the blob need not change with every event): a fresh backbone restores an empty archive. */
        assert_int_equal(ma_session_restore(&p, &(ma_session_saved){bb0, bbn0, sl, sln, am, amn, cs, 2, ps, {0}},
                                            &r),
                         0);
        assert_int_equal(ma_archive_length(ma_session_archive(r)), 0);
        ma_session_destroy(r);
        free(bb0);
        ma_session_destroy(other);
        ma_params p2 = p;
        p2.slots = 4;
        assert_int_equal(ma_session_restore(&p2, &(ma_session_saved){bb, bbn, sl, sln, am, amn, cs, 2, ps, {0}},
                                            &r),
                         MA_ECORRUPT);

        free(bb);
        free(sl);
        free(am);
        free_events(&e);
        ma_session_destroy(s);
    }
}

/* The store pages a live session's archive (set_source + release): answers stay the same. */
/* Supersession and forgetting (docs/SLOTS.md): a fact overwritten by later events answers with its newest
 * version on every archive route, also after a capacity eviction and after a restore of the session;
 * include_superseded sees everything; a forgotten slot's events are masked from every route. */
static void archive_event(const ma_session *s, const float *q, ma_route route, bool all, int64_t *event)
{
    float out[VN];
    ma_answer a = {.v = out};
    ma_query mq = {.q = q, .route = route, .include_superseded = all};
    assert_int_equal(ma_session_query(s, &mq, &a), 0);
    *event = a.event;
    ma_answer_clear(&a);
}

static void test_supersession(void **state)
{
    (void)state;
    for (int sel = 0; sel < 2; sel++) {
        ma_params p = params(2);
        p.selector = sel ? MA_SELECTOR_INDEX : MA_SELECTOR_CHUNKS;
        p.window = 40;
        ma_session *s;
        assert_int_equal(ma_session_create(&p, &s), 0);
        events e;
        make_events(&e, 40, 31);
        /* The fact "f": version 1 at event 3, version 2 at event 10 (same key: a correction), then two
         * other slots push it out of the table (capacity 2). */
        memcpy(e.k + 10 * KN, e.k + 3 * KN, KN * sizeof(float));
        e.ev[3].slot = e.ev[10].slot = "f";
        e.ev[3].payload = "\"old\"";
        e.ev[10].payload = "\"new\"";
        e.ev[20].slot = "g";
        e.ev[25].slot = "h";
        e.ev[30].slot = "gone";
        e.ev[30].payload = "\"secret\"";
        ma_ingest_report rep;
        ingest(s, &e, &rep);
        assert_int_equal(rep.n_evicted, 2);
        ma_ingest_report_clear(&rep);
        const float *q = e.k + 3 * KN;
        const ma_route routes[] = {MA_ROUTE_SPARSE, MA_ROUTE_FULL, MA_ROUTE_WINDOW, MA_ROUTE_AUTO};
        for (size_t r = 0; r < 4; r++) {
            int64_t ev;
            archive_event(s, q, routes[r], false, &ev);
            assert_int_equal(ev, 10);
            archive_event(s, q, routes[r], true, &ev);
            assert_true(ev == 3 || ev == 10);   /* equal keys: either, but event 3 is attended again */
        }
        assert_int_equal(ma_archive_masked(ma_session_archive(s), 3), MA_MASK_SUPERSEDED);
        assert_int_equal(ma_archive_masked(ma_session_archive(s), 10), 0);

        /* Restoring version 1 makes event 3 live again and supersedes event 10. */
        ma_slot_result res;
        assert_int_equal(ma_session_slot_restore(s, "f", 1, 100, &res), 0);
        assert_int_equal(ma_archive_masked(ma_session_archive(s), 3), 0);
        assert_int_equal(ma_archive_masked(ma_session_archive(s), 10), MA_MASK_SUPERSEDED);

        /* Forget: the slot's events are never read, not even with include_superseded. */
        uint64_t *fe;
        size_t nfe;
        assert_int_equal(ma_session_slot_forget(s, "gone", &fe, &nfe), 0);
        assert_int_equal(nfe, 1);
        assert_int_equal(fe[0], 30);
        free(fe);
        for (size_t r = 0; r < 3; r++) {
            int64_t ev;
            archive_event(s, e.k + 30 * KN, routes[r], true, &ev);
            assert_true(ev != 30);
        }
        ma_slot_value sv;
        assert_int_equal(ma_session_slot_read(s, "gone", 1, &sv), MA_ENOVERSION);
        ma_version_info *vi;
        size_t nvi;
        assert_int_equal(ma_session_slot_history(s, "gone", &vi, &nvi), 0);
        assert_true(vi[0].forgotten && vi[0].tombstone);
        free(vi);

        /* A restored session derives the same masks from the slot history and answers the same. */
        void *bb, *sl, *am;
        size_t bbn, sln, amn;
        assert_int_equal(ma_backbone_serialize(ma_session_backbone(s), &bb, &bbn), 0);
        assert_int_equal(ma_session_serialize_slots(s, &sl, &sln), 0);
        assert_int_equal(ma_archive_serialize_meta(ma_session_archive(s), &am, &amn), 0);
        src_ctx ctx = {&e, &p, 0};
        ma_session *rs;
        assert_int_equal(ma_session_restore(&p, &(ma_session_saved){bb, bbn, sl, sln, am, amn,
                                                                    {load_chunk, &ctx}, 2, {load_payload, &ctx}, {0}},
                                            &rs),
                         0);
        for (uint64_t i = 0; i < e.n; i++)
            assert_int_equal(ma_archive_masked(ma_session_archive(rs), i), ma_archive_masked(ma_session_archive(s), i));
        for (size_t r = 0; r < 4; r++)
            for (int all = 0; all < 2; all++) {
                ma_query mq = {.q = q, .route = routes[r], .include_superseded = all};
                same_answers(s, rs, &mq);
                mq.q = e.k + 30 * KN;
                same_answers(s, rs, &mq);
            }
        free(bb);
        free(sl);
        free(am);
        ma_session_destroy(rs);
        free_events(&e);
        ma_session_destroy(s);
    }
}

/* Nothing to attend over is its own error: every event masked. */
static void test_empty_context(void **state)
{
    (void)state;
    ma_session *s = session(4);
    events e;
    make_events(&e, 1, 3);
    e.ev[0].slot = "only";
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    ma_ingest_report_clear(&rep);
    uint64_t *fe;
    size_t nfe;
    assert_int_equal(ma_session_slot_forget(s, "only", &fe, &nfe), 0);
    free(fe);
    float out[VN];
    ma_answer a = {.v = out};
    ma_query mq = {.q = e.k, .route = MA_ROUTE_FULL, .include_superseded = true};
    assert_int_equal(ma_session_query(s, &mq, &a), MA_EEMPTY);
    mq.route = MA_ROUTE_SPARSE;
    assert_int_equal(ma_session_query(s, &mq, &a), MA_EEMPTY);
    free_events(&e);
    ma_session_destroy(s);
}

static void test_paged_archive(void **state)
{
    (void)state;
    ma_params p = params(4);
    ma_session *s, *ref;
    assert_int_equal(ma_session_create(&p, &s), 0);
    assert_int_equal(ma_session_create(&p, &ref), 0);
    events e;
    make_events(&e, 41, 12);
    e.ev[9].payload = "\"nine\"";
    e.ev[22].slot = "x";
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    ma_ingest_report_clear(&rep);
    ingest(ref, &e, &rep);
    ma_ingest_report_clear(&rep);
    src_ctx ctx = {&e, &p, 0};
    assert_int_equal(ma_archive_set_source(ma_session_archive(s), (ma_chunk_source){load_chunk, &ctx}, 2), 0);
    ma_archive_release(ma_session_archive(s));
    ma_query qs[] = {{.q = e.k + 9 * KN, .route = MA_ROUTE_FULL}, {.q = e.k + 9 * KN},
                     {.q = e.k + 22 * KN}, {.q = e.k + 40 * KN, .route = MA_ROUTE_WINDOW}};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
        same_answers(s, ref, &qs[i]);
    assert_true(ctx.loads > 0);
    free_events(&e);
    ma_session_destroy(s);
    ma_session_destroy(ref);
}

/* ---- slot policies (docs/SLOTS.md "Policies") ----------------------------------------------------- */

/* Read topk: the cosine step answers with the softmax-weighted mix of the k best slots; the weights sum
 * to 1 and equal a reference softmax of the cosines, the value is the weighted sum, each contributor's
 * usage counts; named reads and the sparse fallback are unchanged; k = 1 is the best read. */
static void test_policy_topk_read(void **state)
{
    (void)state;
    enum { NS = 6, K = 3 };
    const double T = 0.2;
    ma_params p = params(8), pb = p, p1 = p;
    p.slot_policy.read = MA_SLOT_READ_TOPK;
    p.slot_policy.k = K;
    p.slot_policy.temperature = T;
    p1 = p;
    p1.slot_policy.k = 1;
    ma_session *s, *b, *one;
    assert_int_equal(ma_session_create(&p, &s), 0);
    assert_int_equal(ma_session_create(&pb, &b), 0);
    assert_int_equal(ma_session_create(&p1, &one), 0);
    events e;
    make_events(&e, 12, 31);
    /* Slot keys near each other so that several matter: f_i's key is k_2 plus a little of k_i. */
    static char names[NS][8];
    double imp[12];
    for (size_t i = 0; i < 12; i++)
        imp[i] = MA_IMPORTANCE_NONE;
    for (int i = 0; i < NS; i++) {
        snprintf(names[i], sizeof names[i], "f%d", i);
        e.ev[i].slot = names[i];
        if (i != 2)
            for (int j = 0; j < KN; j++)
                e.k[i * KN + j] = 0.8f * e.k[2 * KN + j] + 0.2f * e.k[i * KN + j];
        imp[i] = i % 2 ? 0.1 * i : MA_IMPORTANCE_NONE;
    }
    ma_ingest_report rep;
    ma_session *all[3] = {s, b, one};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ma_session_ingest_ex(all[i], e.n, e.ev, imp, 9, &rep), 0);
        assert_int_equal(rep.n_writes, NS);
        ma_ingest_report_clear(&rep);
    }

    float q[KN];
    memcpy(q, e.k + 3 * KN, sizeof q);
    double cos[NS];
    int order[NS];
    for (int i = 0; i < NS; i++) {
        cos[i] = ma_slots_cosine(q, e.k + i * KN, H, D);
        order[i] = i;
    }
    for (int i = 0; i < NS; i++)            /* by cosine, then name */
        for (int j = i + 1; j < NS; j++)
            if (cos[order[j]] > cos[order[i]] || (cos[order[j]] == cos[order[i]] && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    assert_int_equal(order[0], 3);
    long double z = 0, ref_w[K];
    for (int i = 0; i < K; i++)
        z += expl(((long double)cos[order[i]] - cos[order[0]]) / T);
    for (int i = 0; i < K; i++)
        ref_w[i] = expl(((long double)cos[order[i]] - cos[order[0]]) / T) / z;

    float out[VN];
    ma_answer a = {.v = out};
    ma_query mq = {.q = q};
    assert_int_equal(ma_session_query(s, &mq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SLOT);
    assert_string_equal(a.slot, "f3");
    assert_true(a.score == cos[3]);
    assert_true(a.has_importance && a.importance == 0.1 * 3);
    assert_int_equal(a.n_contrib, K);
    long double sum = 0;
    for (int i = 0; i < K; i++) {
        assert_string_equal(a.contrib[i].slot, names[order[i]]);
        assert_int_equal(a.contrib[i].version, 1);
        assert_true(a.contrib[i].score == cos[order[i]]);
        assert_true(fabsl(a.contrib[i].weight - ref_w[i]) <= 1e-14L);
        assert_int_equal(a.contrib[i].has_importance, order[i] % 2 == 1);
        sum += a.contrib[i].weight;
    }
    assert_true(fabsl(sum - 1) <= 1e-14L);
    assert_true(a.contrib[1].weight > 1e-3);              /* several slots really contribute */
    for (int j = 0; j < VN; j++) {
        long double ref = 0;
        for (int i = 0; i < K; i++)
            ref += ref_w[i] * e.v[order[i] * VN + j];
        assert_true(fabsl(out[j] - ref) <= 1e-6L * (1 + fabsl(ref)));
    }
    ma_answer_clear(&a);
    ma_slot_info *li;
    size_t ln;
    assert_int_equal(ma_session_slot_list(s, &li, &ln), 0);
    for (size_t i = 0; i < ln; i++) {
        int id = atoi(li[i].name + 1);
        bool in_top = id == order[0] || id == order[1] || id == order[2];
        assert_int_equal(li[i].usage, in_top ? 1 : 0);
    }
    free(li);

    /* best: f3's value exactly, no contributions; k = 1: the same bits with one weight of 1. */
    float bo[VN];
    ma_answer ba = {.v = bo};
    assert_int_equal(ma_session_query(b, &mq, &ba), 0);
    assert_string_equal(ba.slot, "f3");
    assert_int_equal(ba.n_contrib, 0);
    assert_null(ba.contrib);
    assert_memory_equal(bo, e.v + 3 * VN, sizeof bo);
    ma_answer_clear(&ba);
    assert_int_equal(ma_session_query(one, &mq, &a), 0);
    assert_int_equal(a.n_contrib, 1);
    assert_true(a.contrib[0].weight == 1.0);
    assert_memory_equal(out, e.v + 3 * VN, sizeof out);
    ma_answer_clear(&a);

    /* A named read is exact; a query below the threshold falls through to sparse. */
    ma_query nq = {.slot = "f4", .q = q};
    assert_int_equal(ma_session_query(s, &nq, &a), 0);
    assert_int_equal(a.n_contrib, 0);
    assert_memory_equal(out, e.v + 4 * VN, sizeof out);
    ma_answer_clear(&a);
    float neg[KN];
    for (int j = 0; j < KN; j++)
        neg[j] = -e.k[2 * KN + j];
    ma_query sq = {.q = neg};
    assert_int_equal(ma_session_query(s, &sq, &a), 0);
    assert_int_equal(a.route, MA_ROUTE_SPARSE);
    assert_int_equal(a.n_contrib, 0);
    ma_answer_clear(&a);
    free_events(&e);
    ma_session_destroy(s);
    ma_session_destroy(b);
    ma_session_destroy(one);
}

static void same_contrib(const ma_session *a, const ma_session *b, const ma_query *q)
{
    same_answers(a, b, q);
    float va[VN], vb[VN];
    ma_answer x = {.v = va}, y = {.v = vb};
    assert_int_equal(ma_session_query(a, q, &x), ma_session_query(b, q, &y));
    assert_int_equal(x.n_contrib, y.n_contrib);
    assert_int_equal(x.has_importance, y.has_importance);
    assert_true(x.importance == y.importance);
    for (size_t i = 0; i < x.n_contrib; i++) {
        assert_string_equal(x.contrib[i].slot, y.contrib[i].slot);
        assert_true(x.contrib[i].weight == y.contrib[i].weight);
        assert_true(x.contrib[i].importance == y.contrib[i].importance);
    }
    ma_answer_clear(&x);
    ma_answer_clear(&y);
}

/* Every policy together, with importance on events and verbs and blended overwrites: a restored session
 * (its policies come from the config, its importances from the slot blob) answers with the same bits,
 * picks the same eviction victims, and its slot blob stays equal to the original's. */
static void test_policy_restart(void **state)
{
    (void)state;
    ma_params p = params(3);
    p.slot_policy.eviction = MA_EVICTION_SCORE;
    p.slot_policy.overwrite = MA_OVERWRITE_BLEND;
    p.slot_policy.alpha = 0.25;
    p.slot_policy.read = MA_SLOT_READ_TOPK;
    p.slot_policy.k = 2;
    p.slot_policy.temperature = 0.5;
    ma_session *s;
    assert_int_equal(ma_session_create(&p, &s), 0);
    events e;
    make_events(&e, 30, 41);
    double imp[30];
    const char *nm[] = {"a", "b", "c", "a", "d", "b"};
    for (size_t i = 0; i < 30; i++)
        imp[i] = MA_IMPORTANCE_NONE;
    for (int i = 0; i < 6; i++) {
        e.ev[3 * i + 1].slot = nm[i];
        imp[3 * i + 1] = i == 2 ? MA_IMPORTANCE_NONE : 0.15 * i;
    }
    ma_ingest_report rep;
    assert_int_equal(ma_session_ingest_ex(s, e.n, e.ev, imp, 10, &rep), 0);
    assert_true(rep.n_evicted >= 1);
    ma_ingest_report_clear(&rep);
    ma_slot_input in = {.name = "verb", .k = e.k + 25 * KN, .v = e.v + 26 * VN, .payload = "\"v\"",
                        .has_importance = true, .importance = 0.9};
    ma_slot_result sr;
    assert_int_equal(ma_session_slot_write(s, &in, 11, &sr), 0);
    in.v = e.v + 27 * VN;
    in.importance = 0.95;
    assert_int_equal(ma_session_slot_overwrite(s, &in, 0, 0, 12, &sr), 0);
    ma_slot_value sv;
    assert_int_equal(ma_session_slot_read(s, "verb", 0, &sv), 0);
    for (int j = 0; j < VN; j++)                          /* blended by the verb */
        assert_true(sv.v[j] == (float)(0.25 * (double)e.v[27 * VN + j] + 0.75 * (double)e.v[26 * VN + j]));
    assert_true(sv.info.has_importance && sv.info.importance == 0.95);
    ma_slot_value_clear(&sv);

    void *bb, *sl, *am;
    size_t bbn, sln, amn;
    assert_int_equal(ma_backbone_serialize(ma_session_backbone(s), &bb, &bbn), 0);
    assert_int_equal(ma_session_serialize_slots(s, &sl, &sln), 0);
    assert_int_equal(ma_archive_serialize_meta(ma_session_archive(s), &am, &amn), 0);
    src_ctx ctx = {&e, &p, 0};
    ma_chunk_source cs = {load_chunk, &ctx};
    ma_payload_source ps = {load_payload, &ctx};
    ma_session *r;
    assert_int_equal(ma_session_restore(&p, &(ma_session_saved){bb, bbn, sl, sln, am, amn, cs, 2, ps, {0}}, &r), 0);
    for (size_t i = 0; i < e.n; i++) {
        ma_query q = {.q = e.k + i * KN};
        same_contrib(s, r, &q);
    }
    ma_query nq = {.slot = "verb"};
    same_contrib(s, r, &nq);

    /* Both continue identically: more writes (evictions by score, blends), then the same blobs. */
    events f;
    make_events(&f, 9, 42);
    double imp2[9];
    const char *nm2[] = {"x", "verb", "y", "a", "z"};
    for (size_t i = 0; i < 9; i++)
        imp2[i] = MA_IMPORTANCE_NONE;
    for (int i = 0; i < 5; i++) {
        f.ev[i + 2].slot = nm2[i];
        imp2[i + 2] = 0.2 * i;
    }
    ma_ingest_report r1, r2;
    assert_int_equal(ma_session_ingest_ex(s, f.n, f.ev, imp2, 13, &r1), 0);
    assert_int_equal(ma_session_ingest_ex(r, f.n, f.ev, imp2, 13, &r2), 0);
    assert_int_equal(r1.n_evicted, r2.n_evicted);
    assert_true(r1.n_evicted >= 2);
    for (size_t i = 0; i < r1.n_evicted; i++)
        assert_string_equal(r1.evicted[i].slot, r2.evicted[i].slot);
    ma_ingest_report_clear(&r1);
    ma_ingest_report_clear(&r2);
    void *s2, *s3;
    size_t l2, l3;
    assert_int_equal(ma_session_serialize_slots(s, &s2, &l2), 0);
    assert_int_equal(ma_session_serialize_slots(r, &s3, &l3), 0);
    assert_int_equal(l2, l3);
    assert_memory_equal(s2, s3, l2);
    for (size_t i = 0; i < f.n; i++) {
        ma_query q = {.q = f.k + i * KN};
        same_contrib(s, r, &q);
    }
    free(s2);
    free(s3);
    free(bb);
    free(sl);
    free(am);
    free_events(&f);
    free_events(&e);
    ma_session_destroy(r);
    ma_session_destroy(s);
}

/* ma_session_query_batch answers every query as ma_session_query does, bit for bit: slot, state, sparse
 * (forced with several topk, and the router's fallback), full and window reads (more than one group of 8,
 * with and without superseded events), and the failures (no query vector, no slot, nothing to attend over)
 * each on its own; on a paged session too, and on an empty one. */
static void test_query_batch(void **state)
{
    (void)state;
    ma_params p = params(2);
    ma_session *s;
    assert_int_equal(ma_session_create(&p, &s), 0);
    float va[64 * VN], vb[VN];
    ma_answer as[64];
    int rcs[64];
    ma_query none[] = {{.q = va, .route = MA_ROUTE_FULL}, {.q = va}, {.slot = "x", .route = MA_ROUTE_SLOT}};
    for (size_t i = 0; i < 3; i++)
        as[i] = (ma_answer){.v = va + i * VN};
    fill(va, KN);
    assert_int_equal(ma_session_query_batch(s, none, 3, as, rcs), 0);
    assert_int_equal(rcs[0], MA_EEMPTY);
    assert_int_equal(rcs[1], MA_EEMPTY);
    assert_int_equal(rcs[2], MA_ENOTFOUND);

    events e;
    make_events(&e, 150, 31);
    e.ev[5].slot = "a";
    e.ev[60].slot = "a";   /* supersedes event 5 */
    e.ev[70].slot = "b";
    e.ev[9].payload = "\"nine\"";
    ma_ingest_report rep;
    ingest(s, &e, &rep);
    ma_ingest_report_clear(&rep);
    src_ctx ctx = {&e, &p, 0};
    ma_query qs[64];
    size_t n = 0;
    for (size_t i = 0; i < 20; i++)
        qs[n++] = (ma_query){.q = e.k + (i * 7 % 150) * KN, .route = i % 3 ? MA_ROUTE_FULL : MA_ROUTE_WINDOW,
                             .include_superseded = i % 4 == 0};
    for (size_t i = 0; i < 10; i++)
        qs[n++] = (ma_query){.q = e.k + (i * 13 % 150) * KN, .route = MA_ROUTE_SPARSE, .topk = (int)(i % 3)};
    qs[n++] = (ma_query){.q = e.k + 9 * KN};                          /* auto: sparse fallback, payload */
    qs[n++] = (ma_query){.q = e.k + 5 * KN, .route = MA_ROUTE_FULL};  /* a superseded event's key */
    qs[n++] = (ma_query){.slot = "a"};
    qs[n++] = (ma_query){.slot = "a", .version = 1, .route = MA_ROUTE_SLOT};
    qs[n++] = (ma_query){.slot = "zz", .route = MA_ROUTE_SLOT};       /* MA_ENOTFOUND */
    qs[n++] = (ma_query){.route = MA_ROUTE_FULL};                     /* MA_EINVAL */
    qs[n++] = (ma_query){.q = e.k + 3 * KN, .route = MA_ROUTE_STATE};
    qs[n++] = (ma_query){.q = e.k + 70 * KN};                         /* slot by cosine */
    for (int paged = 0; paged < 2; paged++) {
        if (paged) {
            assert_int_equal(ma_archive_set_source(ma_session_archive(s), (ma_chunk_source){load_chunk, &ctx}, 2), 0);
            ma_archive_release(ma_session_archive(s));
        }
        for (size_t i = 0; i < n; i++)
            as[i] = (ma_answer){.v = va + i * VN};
        assert_int_equal(ma_session_query_batch(s, qs, n, as, rcs), 0);
        for (size_t i = 0; i < n; i++) {
            ma_answer y = {.v = vb};
            int rc = ma_session_query(s, &qs[i], &y);
            assert_int_equal(rcs[i], rc);
            if (rc == 0) {
                const ma_answer *x = &as[i];
                assert_int_equal(x->route, y.route);
                assert_memory_equal(x->v, vb, sizeof vb);   /* same bits */
                assert_true(x->score == y.score);
                assert_int_equal(x->event, y.event);
                assert_int_equal(x->has_slot, y.has_slot);
                assert_string_equal(x->slot, y.slot);
                assert_int_equal(x->version, y.version);
                assert_int_equal(x->n_chunks, y.n_chunks);
                if (x->n_chunks)
                    assert_memory_equal(x->chunks, y.chunks, x->n_chunks * sizeof *x->chunks);
                if (x->payload || y.payload)
                    assert_string_equal(x->payload, y.payload);
            }
            ma_answer_clear(&y);
            ma_answer_clear(&as[i]);
        }
        assert_int_equal(rcs[n - 3], MA_EINVAL);
        assert_int_equal(rcs[n - 4], MA_ENOTFOUND);
        assert_int_equal(rcs[30], 0);
        assert_int_equal(as[30].event, 9);
    }
    assert_true(ctx.loads > 0);
    free_events(&e);
    ma_session_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_names),
        cmocka_unit_test(test_ingest_and_payloads),
        cmocka_unit_test(test_ingest_packed_or_scattered),
        cmocka_unit_test(test_write_controller),
        cmocka_unit_test(test_router),
        cmocka_unit_test(test_threshold),
        cmocka_unit_test(test_text_slots),
        cmocka_unit_test(test_parallel_queries_count_usage),
        cmocka_unit_test(test_serialize_restore),
        cmocka_unit_test(test_paged_archive),
        cmocka_unit_test(test_supersession),
        cmocka_unit_test(test_empty_context),
        cmocka_unit_test(test_policy_topk_read),
        cmocka_unit_test(test_policy_restart),
        cmocka_unit_test(test_query_batch),
        cmocka_unit_test(test_change_report),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
