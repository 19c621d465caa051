/*
 * tests/unit/test_registry.c — registry/registry.c over a real sqlite store (store/) and the real core:
 * a failed commit (fault-injection VFS) leaves the session as stored (it is reloaded, the failed change
 * is gone, the next change works); parallel readers of an unloaded session load it once; the memory
 * budget pages out and unloads sessions without changing their answers; the stored config text
 * (registry/params_text.h) is the JSON earlier versions stored and reads their rows; the store pager
 * (registry/pager.h) reads chunks and payloads back; listings, summaries and backups; the commit
 * queue (reg_commit_queue): changes queued together are written in one transaction and answered in
 * order, a failed group fails every change in it and every later change of its sessions, and the
 * sessions reload exactly what the store holds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/error.h"
#include "core/ivf.h"
#include "registry/maint.h"
#include "registry/pager.h"
#include "registry/params_text.h"
#include "registry/registry.h"
#include "server/codec.h"
#include "store/store.h"
#include "tests/support/store_fault.h"

enum { D = 8 };

typedef struct {
    char dir[64];
    ma_store *st;
    reg_registry *reg;
} fixture;

static uint64_t rng = 99;
static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int open_fixture(fixture *f, size_t budget)
{
    char err[256];
    snprintf(f->dir, sizeof f->dir, "/tmp/memattn-reg-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    ma_store_options o;
    ma_store_options_default(&o);
    o.vfs = ma_store_fault_vfs();
    o.synchronous = MA_STORE_SYNC_NORMAL;
    if (ma_store_open_with(f->dir, &o, &f->st, err, sizeof err)) {
        fprintf(stderr, "store: %s\n", err);
        return -1;
    }
    reg_options ro = {.store = f->st, .memory_budget = budget, .cache_chunks = 4};
    return reg_create(&ro, &f->reg);
}

static void close_fixture(fixture *f)
{
    char cmd[128];
    reg_destroy(f->reg);
    ma_store_close(f->st);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
}

static ma_params params(void)
{
    ma_params p;
    ma_params_default(&p);
    p.dim = p.value_dim = D;
    p.chunk = 4;
    return p;
}

/* Appends n random events (event i of the batch writes `slot` if given) and commits. */
static int ingest(fixture *f, reg_session *s, size_t n, const char *slot)
{
    float k[64 * D], v[64 * D];
    ma_event ev[64];
    char err[256];
    assert_true(n <= 64);
    for (size_t i = 0; i < n * D; i++) {
        k[i] = frand();
        v[i] = frand();
    }
    for (size_t i = 0; i < n; i++)
        ev[i] = (ma_event){.k = k + i * D, .v = v + i * D, .slot = i == 0 ? slot : NULL};
    uint64_t first = ma_archive_length(ma_session_archive(reg_core(s)));
    ma_ingest_report rep = {0};
    assert_int_equal(ma_session_ingest(reg_core(s), n, ev, 1000, &rep), 0);
    ma_ingest_report_clear(&rep);
    reg_change c = {.first_event = first, .n_events = n, .k = k, .v = v};
    return reg_commit(f->reg, s, &c, 2000, err, sizeof err);
}

/* The full-attention answer to a fixed query, as bits. */
static void answer(reg_session *s, float out[D])
{
    float q[D];
    for (int j = 0; j < D; j++)
        q[j] = (float)(j + 1) / D;
    ma_query qu = {.q = q, .route = MA_ROUTE_FULL};
    ma_answer a = {.v = out};
    assert_int_equal(ma_session_query(reg_core(s), &qu, &a), 0);
    ma_answer_clear(&a);
}

static int count_rows(void *arg, const char *name, uint64_t version, const void *data, size_t len)
{
    (void)name, (void)version, (void)data, (void)len;
    ++*(size_t *)arg;
    return 0;
}

static size_t stored_rows(fixture *f, const char *id)
{
    size_t n = 0;
    char err[256];
    assert_int_equal(ma_store_slot_rows(f->st, id, count_rows, &n, err, sizeof err), 0);
    return n;
}

/* The slot table's whole bytes, every version of every listed name, and a slot-route query's answer. */
static void slot_fingerprint(reg_session *s, void **whole, size_t *n, float out[D])
{
    assert_int_equal(ma_session_serialize_slots(reg_core(s), whole, n), 0);
    float q[D];
    for (int j = 0; j < D; j++)
        q[j] = (float)(j + 1) / D;
    ma_query qu = {.q = q, .slot = "v", .version = 2, .route = MA_ROUTE_SLOT};
    ma_answer a = {.v = out};
    assert_int_equal(ma_session_query(reg_core(s), &qu, &a), 0);
    ma_answer_clear(&a);
}

/* Slot versions are rows written once: a commit stores only the new versions (and a forget rewrites the
 * forgotten name's), and a restarted registry restores the same table, bit for bit. */
static void test_slot_rows_restart(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    char err[256];
    ma_params p = params();
    p.slots = 2;
    assert_int_equal(open_fixture(&f, 0), 0);
    assert_int_equal(reg_create_session(f.reg, "s", &p, 1, &s, err, sizeof err), 0);
    for (int i = 0; i < 40; i++)
        assert_int_equal(ingest(&f, s, 2, "h"), 0);                 /* 40 versions of h, one per commit */
    assert_int_equal(stored_rows(&f, "s"), 40);
    ma_slot_result res;
    reg_change c = {0};
    char pl[32];
    for (int i = 0; i < 5; i++) {
        snprintf(pl, sizeof pl, "\"v%d\"", i);
        ma_slot_input in = {.name = "v", .text = pl, .payload = pl};
        assert_int_equal(ma_session_slot_overwrite(reg_core(s), &in, 0, 0, 3000 + i, &res), 0);
        assert_int_equal(reg_commit(f.reg, s, &c, 3000 + i, err, sizeof err), 0);
        assert_int_equal(stored_rows(&f, "s"), 40 + 1 + (size_t)i);  /* one row per PUT, whatever the history */
    }
    ma_slot_input secret = {.name = "f", .text = "secret", .payload = "\"secret\""};
    assert_int_equal(ma_session_slot_write(reg_core(s), &secret, 4000, &res), 0);
    assert_int_equal(reg_commit(f.reg, s, &c, 4000, err, sizeof err), 0);   /* evicts h (LRU): 2 rows */
    assert_true(res.evicted);
    assert_int_equal(stored_rows(&f, "s"), 47);
    assert_int_equal(ma_session_slot_protect(reg_core(s), "v", true, 4001), 0);
    assert_int_equal(reg_commit(f.reg, s, &c, 4001, err, sizeof err), 0);
    assert_int_equal(stored_rows(&f, "s"), 47);
    assert_int_equal(ma_session_slot_restore(reg_core(s), "h", 3, 4002, &res), 0);
    assert_int_equal(reg_commit(f.reg, s, &c, 4002, err, sizeof err), 0);
    uint64_t *ev;
    size_t nev;
    assert_int_equal(ma_session_slot_forget(reg_core(s), "f", &ev, &nev), 0);
    reg_change fc = {.erase = ev, .n_erase = nev};
    size_t before = stored_rows(&f, "s");
    assert_int_equal(reg_commit(f.reg, s, &fc, 4003, err, sizeof err), 0);
    assert_int_equal(stored_rows(&f, "s"), before);                  /* rewritten in place */
    free(ev);
    void *w1;
    size_t n1;
    float a1[D];
    slot_fingerprint(s, &w1, &n1, a1);
    reg_release(f.reg, s);

    /* restart: a new registry over a reopened store */
    reg_destroy(f.reg);
    ma_store_close(f.st);
    ma_store_options o;
    ma_store_options_default(&o);
    o.synchronous = MA_STORE_SYNC_NORMAL;
    assert_int_equal(ma_store_open_with(f.dir, &o, &f.st, err, sizeof err), 0);
    reg_options ro = {.store = f.st, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    assert_int_equal(reg_acquire(f.reg, "s", &s, err, sizeof err), 0);
    void *w2;
    size_t n2;
    float a2[D];
    slot_fingerprint(s, &w2, &n2, a2);
    assert_int_equal(n1, n2);
    assert_memory_equal(w1, w2, n1);
    assert_memory_equal(a1, a2, sizeof a1);
    ma_slot_value sv;
    assert_int_equal(ma_session_slot_read(reg_core(s), "f", 1, &sv), MA_ENOVERSION);   /* forgotten */
    assert_int_equal(ma_session_slot_read(reg_core(s), "h", 17, &sv), 0);
    ma_slot_value_clear(&sv);
    /* and it goes on: one more PUT, one more row */
    ma_slot_input in = {.name = "g", .text = "g", .payload = "\"g\""};
    assert_int_equal(ma_session_slot_overwrite(reg_core(s), &in, 0, 0, 5000, &res), 0);
    size_t rows = stored_rows(&f, "s");
    assert_int_equal(reg_commit(f.reg, s, &c, 5000, err, sizeof err), 0);
    assert_int_equal(stored_rows(&f, "s"), rows + 1 + res.evicted);
    reg_release(f.reg, s);
    free(w1);
    free(w2);
    close_fixture(&f);
}

static void test_failed_commit_reloads(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    reg_stats st;
    char err[256];
    ma_params p = params();
    float before[D], after[D];
    assert_int_equal(open_fixture(&f, 0), 0);
    assert_int_equal(reg_create_session(f.reg, "a", &p, 1, &s, err, sizeof err), 0);
    assert_int_equal(ingest(&f, s, 10, NULL), 0);
    answer(s, before);
    reg_release(f.reg, s);

    /* an event batch with a slot write whose commit fails */
    assert_int_equal(reg_acquire(f.reg, "a", &s, err, sizeof err), 0);
    ma_store_fault_set(MA_FAULT_WRITE, 0);
    int rc = ingest(&f, s, 5, "x");
    ma_store_fault_set(MA_FAULT_NONE, 0);
    assert_true(rc == MA_EIO || rc == MA_ECORRUPT);
    assert_int_equal(ma_archive_length(ma_session_archive(reg_core(s))), 15);  /* ahead of the store ... */
    reg_release(f.reg, s);                                                      /* ... so it is dropped */
    reg_stats_get(f.reg, &st);
    assert_int_equal(st.loaded, 0);

    assert_int_equal(reg_acquire(f.reg, "a", &s, err, sizeof err), 0);
    assert_int_equal(ma_archive_length(ma_session_archive(reg_core(s))), 10);
    answer(s, after);
    assert_memory_equal(before, after, sizeof before);
    ma_slot_info *si;
    size_t n;
    assert_int_equal(ma_session_slot_list(reg_core(s), &si, &n), 0);
    assert_int_equal(n, 0);
    free(si);
    /* and the session goes on from the stored state */
    assert_int_equal(ingest(&f, s, 3, "y"), 0);
    assert_int_equal(ma_archive_length(ma_session_archive(reg_core(s))), 13);
    reg_release(f.reg, s);

    /* a slot verb whose commit fails */
    assert_int_equal(reg_acquire(f.reg, "a", &s, err, sizeof err), 0);
    ma_slot_input in = {.name = "z", .text = "zz", .payload = "\"zz\""};
    ma_slot_result res;
    assert_int_equal(ma_session_slot_write(reg_core(s), &in, 3000, &res), 0);
    ma_store_fault_set(MA_FAULT_FULL, 0);
    reg_change c = {0};
    assert_int_not_equal(reg_commit(f.reg, s, &c, 3000, err, sizeof err), 0);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    assert_true(strlen(err) > 0);
    reg_release(f.reg, s);
    assert_int_equal(reg_acquire(f.reg, "a", &s, err, sizeof err), 0);
    ma_slot_value sv;
    assert_int_equal(ma_session_slot_read(reg_core(s), "z", 0, &sv), MA_ENOTFOUND);
    assert_int_equal(ma_session_slot_read(reg_core(s), "y", 0, &sv), 0);
    ma_slot_value_clear(&sv);
    reg_release(f.reg, s);

    /* create and delete are durable too; unknown ids are not found */
    assert_int_equal(reg_create_session(f.reg, "a", &p, 1, &s, err, sizeof err), MA_EEXISTS);
    assert_int_equal(reg_delete(f.reg, "a", err, sizeof err), 0);
    assert_int_equal(reg_acquire(f.reg, "a", &s, err, sizeof err), MA_ENOTFOUND);
    assert_int_equal(reg_delete(f.reg, "a", err, sizeof err), MA_ENOTFOUND);
    /* its rows go in the background (registry/purge.c): the queue empties, the rows are counted */
    assert_int_equal(reg_wait_purge(f.reg), 0);
    reg_stats rs;
    reg_stats_get(f.reg, &rs);
    assert_int_equal(rs.sessions_purging, 0);
    assert_true(rs.purged_rows >= 3);   /* the events' rows, the blobs, the session row at least */
    close_fixture(&f);
}

typedef struct {
    fixture *f;
    int rc;
    float out[D];
} reader;

static void *read_one(void *arg)
{
    reader *r = arg;
    reg_session *s;
    char err[256];
    r->rc = reg_acquire(r->f->reg, "b", &s, err, sizeof err);
    if (r->rc == 0) {
        float q[D];
        for (int j = 0; j < D; j++)
            q[j] = (float)(j + 1) / D;
        ma_query qu = {.q = q, .route = MA_ROUTE_FULL};
        ma_answer a = {.v = r->out};
        r->rc = ma_session_query(reg_core(s), &qu, &a);
        ma_answer_clear(&a);
        reg_release(r->f->reg, s);
    }
    return NULL;
}

static void test_parallel_load_once(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    reg_stats st0, st1;
    char err[256];
    ma_params p = params();
    float want[D];
    assert_int_equal(open_fixture(&f, 0), 0);
    assert_int_equal(reg_create_session(f.reg, "b", &p, 1, &s, err, sizeof err), 0);
    assert_int_equal(ingest(&f, s, 40, NULL), 0);
    answer(s, want);
    reg_release(f.reg, s);
    reg_destroy(f.reg);   /* a fresh registry: "b" is only in the store */
    reg_options ro = {.store = f.st, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    reg_stats_get(f.reg, &st0);

    reader r[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        r[i].f = &f;
        assert_int_equal(pthread_create(&t[i], NULL, read_one, &r[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].rc, 0);
        assert_memory_equal(r[i].out, want, sizeof want);
    }
    reg_stats_get(f.reg, &st1);
    assert_int_equal(st1.loads - st0.loads, 1);
    assert_int_equal(st1.loaded, 1);
    close_fixture(&f);
}

/* Six sessions under a budget of one and a half footprints: creating or loading one unloads the
 * previous (admission), answers do not change; a session larger than the budget is refused with the
 * figures (MA_ETOOBIG), and one that finds the budget held by a session in use is refused for now
 * (MA_EBUSY) until that session is released. */
static void test_budget(void **state)
{
    (void)state;
    fixture f;
    reg_session *s, *held;
    reg_stats st;
    char err[512];
    ma_params p = params();
    p.dim = p.value_dim = 64;   /* a 64x64 backbone: tens of kB per session */
    float want[6][D];
    assert_int_equal(open_fixture(&f, 1 << 20), 0);
    size_t fp = reg_session_footprint(f.reg, &p);
    reg_destroy(f.reg);
    reg_options ro = {.store = f.st, .memory_budget = fp * 3 / 2, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    assert_int_equal(reg_session_footprint(f.reg, &p), fp);   /* the same cache bound at this budget */
    for (int i = 0; i < 6; i++) {
        char id[16];
        snprintf(id, sizeof id, "m%d", i);
        assert_int_equal(reg_create_session(f.reg, id, &p, 1, &s, err, sizeof err), 0);
        reg_stats_get(f.reg, &st);
        assert_int_equal(st.loaded, 1);   /* the previous one made room before this one was allocated */
        assert_true(st.bytes <= st.budget);
        float k[64 * 20], v[64 * 20];
        ma_event ev[20];
        for (int e = 0; e < 20 * 64; e++) {
            k[e] = frand();
            v[e] = frand();
        }
        for (int e = 0; e < 20; e++)
            ev[e] = (ma_event){.k = k + e * 64, .v = v + e * 64};
        ma_ingest_report rep = {0};
        assert_int_equal(ma_session_ingest(reg_core(s), 20, ev, 1, &rep), 0);
        ma_ingest_report_clear(&rep);
        reg_change c = {.n_events = 20, .k = k, .v = v};
        assert_int_equal(reg_commit(f.reg, s, &c, 1, err, sizeof err), 0);
        float q[64], out[64];
        for (int j = 0; j < 64; j++)
            q[j] = (float)j / 64;
        ma_query qu = {.q = q, .route = MA_ROUTE_FULL};
        ma_answer a = {.v = out};
        assert_int_equal(ma_session_query(reg_core(s), &qu, &a), 0);
        ma_answer_clear(&a);
        memcpy(want[i], out, sizeof want[i]);
        reg_release(f.reg, s);
        reg_stats_get(f.reg, &st);
        assert_int_equal(st.loaded, 1);   /* only the one just used */
        assert_true(st.bytes >= fp && st.bytes <= st.budget);   /* charged at least its footprint */
    }
    for (int i = 5; i >= 0; i--) {
        char id[16];
        snprintf(id, sizeof id, "m%d", i);
        assert_int_equal(reg_acquire(f.reg, id, &s, err, sizeof err), 0);
        reg_stats_get(f.reg, &st);
        assert_true(st.bytes <= st.budget);
        float q[64], out[64];
        for (int j = 0; j < 64; j++)
            q[j] = (float)j / 64;
        ma_query qu = {.q = q, .route = MA_ROUTE_FULL};
        ma_answer a = {.v = out};
        assert_int_equal(ma_session_query(reg_core(s), &qu, &a), 0);
        ma_answer_clear(&a);
        assert_memory_equal(out, want[i], sizeof want[i]);
        reg_release(f.reg, s);
    }
    reg_stats_get(f.reg, &st);
    assert_true(st.unloads >= 10);

    /* Every loaded session in use: no room, for now (nothing loaded, nothing reserved). */
    assert_int_equal(reg_acquire(f.reg, "m0", &held, err, sizeof err), 0);
    reg_stats_get(f.reg, &st);
    size_t before = st.bytes;
    assert_int_equal(reg_acquire(f.reg, "m1", &s, err, sizeof err), MA_EBUSY);
    assert_non_null(strstr(err, "retry"));
    assert_int_equal(reg_create_session(f.reg, "new", &p, 1, &s, err, sizeof err), MA_EBUSY);
    reg_stats_get(f.reg, &st);
    assert_int_equal(st.bytes, before);
    assert_int_equal(st.loaded, 1);
    reg_release(f.reg, held);
    assert_int_equal(reg_acquire(f.reg, "m1", &s, err, sizeof err), 0);   /* m0 is unused now: unloaded */
    reg_release(f.reg, s);

    /* Larger than the whole budget: refused with its footprint and the budget, nothing stored. */
    ma_params big = p;
    big.heads = 8;
    big.dim = big.value_dim = 256;
    size_t bfp = reg_session_footprint(f.reg, &big);
    assert_true(bfp > st.budget);
    assert_int_equal(reg_create_session(f.reg, "big", &big, 1, &s, err, sizeof err), MA_ETOOBIG);
    char figure[64];
    snprintf(figure, sizeof figure, "needs %zu bytes", bfp);
    assert_non_null(strstr(err, figure));
    snprintf(figure, sizeof figure, "is %zu bytes", st.budget);
    assert_non_null(strstr(err, figure));
    assert_int_equal(reg_acquire(f.reg, "big", &s, err, sizeof err), MA_ENOTFOUND);
    reg_stats_get(f.reg, &st);
    assert_true(st.bytes <= st.budget);

    /* A stored session too large for a smaller budget (a restart with a lower --memory) is refused too. */
    reg_destroy(f.reg);
    ro.memory_budget = fp / 2;
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    assert_int_equal(reg_acquire(f.reg, "m2", &s, err, sizeof err), MA_ETOOBIG);
    reg_stats_get(f.reg, &st);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.loaded, 0);
    close_fixture(&f);
}

/* A restored session's chunk cache is in core's count once a read has filled it (a full read streams past
 * it; a sparse read of the chunks selector fills it), and the registry counts max(core's count,
 * footprint); a session that holds more than its footprint (sealed chunks not paged out yet) and so goes
 * over the budget is paged out before anything is unloaded. */
static void test_cache_counted(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    reg_stats st;
    char err[256];
    ma_params p = params();
    p.selector = MA_SELECTOR_CHUNKS;
    p.topk = 16;
    assert_int_equal(open_fixture(&f, 0), 0);
    assert_int_equal(reg_create_session(f.reg, "c", &p, 1, &s, err, sizeof err), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ingest(&f, s, 64, NULL), 0);   /* 160 chunks of 4 events */
    float want[D], out[D];
    answer(s, want);
    reg_release(f.reg, s);

    /* A new registry restores the session from the store: chunks are paged, the cache empty. */
    reg_destroy(f.reg);
    reg_options ro = {.store = f.st, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    size_t fp = reg_session_footprint(f.reg, &p);
    assert_int_equal(reg_acquire(f.reg, "c", &s, err, sizeof err), 0);
    size_t empty = ma_session_bytes(reg_core(s));
    answer(s, out);   /* a full read: every chunk streamed past the cache, which stays empty */
    assert_memory_equal(out, want, sizeof out);
    float q[D], sv[D];
    for (int j = 0; j < D; j++)
        q[j] = (float)(j + 1) / D;
    ma_query qu = {.q = q, .route = MA_ROUTE_SPARSE};
    ma_answer an = {.v = sv};
    assert_int_equal(ma_session_query(reg_core(s), &qu, &an), 0);   /* 16 chunks through the cache, 4 stay */
    ma_answer_clear(&an);
    size_t full = ma_session_bytes(reg_core(s));
    assert_true(full >= empty + 4 * 4 * 2 * D * sizeof(float));
    reg_release(f.reg, s);
    reg_stats_get(f.reg, &st);
    assert_true(st.chunk_loads >= 16);   /* the sparse read's chunks were paged in */
    assert_int_equal(st.bytes, full > fp ? full : fp);
    assert_int_equal(st.paged_out_bytes, 0);

    /* Under a budget that fits the footprint, a fresh session grows past it with its sealed chunks (owned
     * until paged out): at release they are paged out, and it stays loaded. */
    reg_destroy(f.reg);
    ro.memory_budget = fp + (8 << 10);   /* the footprint (the first registry's, same options) and a little */
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    fp = reg_session_footprint(f.reg, &p);
    assert_true(fp < ro.memory_budget);
    assert_int_equal(reg_create_session(f.reg, "d", &p, 1, &s, err, sizeof err), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ingest(&f, s, 64, NULL), 0);
    answer(s, want);
    reg_stats_get(f.reg, &st);
    assert_true(st.bytes > st.budget);   /* the session in use may exceed it */
    reg_release(f.reg, s);
    reg_stats_get(f.reg, &st);
    assert_true(st.bytes <= st.budget);
    assert_true(st.paged_out_bytes >= 100 * 4 * 2 * D * sizeof(float));
    assert_int_equal(st.loaded, 1);
    assert_int_equal(st.unloads, 0);
    assert_int_equal(reg_acquire(f.reg, "d", &s, err, sizeof err), 0);
    answer(s, out);   /* paged back in, same bits */
    assert_memory_equal(out, want, sizeof out);
    reg_release(f.reg, s);
    close_fixture(&f);
}

/* The stored config text: what the daemon always stored (the REST codec's full config object, printed
 * by cJSON) is written byte for byte, read back equal, and older or hand-made partial texts still load. */
static void test_params_text(void **state)
{
    (void)state;
    ma_params p, q;
    char err[256], *text;
    ma_params_default(&p);
    p.heads = 2;
    p.dim = 8;
    p.value_dim = 16;
    p.backbone = MA_BACKBONE_DELTA;
    p.delta.beta = 0.25;
    p.vla.feature = MA_FEATURE_ELU1;
    p.route_threshold = 0.7;
    p.selector = MA_SELECTOR_CHUNKS;
    assert_int_equal(reg_params_encode(&p, &text), 0);
    cJSON *legacy = codec_params_to_json(&p);
    char *legacy_text = cJSON_PrintUnformatted(legacy);
    assert_string_equal(text, legacy_text);   /* the stored format is unchanged */
    assert_int_equal(reg_params_decode(text, &q, err, sizeof err), 0);
    assert_true(ma_params_equal(&p, &q));
    cJSON_free(legacy_text);
    cJSON_Delete(legacy);
    free(text);

    /* missing fields take the defaults; value_dim follows dim */
    assert_int_equal(reg_params_decode("{\"dim\":32}", &q, err, sizeof err), 0);
    ma_params_default(&p);
    p.dim = p.value_dim = 32;
    assert_true(ma_params_equal(&p, &q));
    assert_int_equal(reg_params_decode("{\"dim\":32,\"vla\":null}", &q, err, sizeof err), 0);

    /* anything else is a corrupt row, with a message */
    const char *bad[] = {"", "not json", "[1]", "{\"colour\":1}", "{\"vla\":{\"colour\":1}}", "{\"heads\":0}",
                         "{\"heads\":1.5}", "{\"dim\":\"8\"}", "{\"backbone\":\"psychic\"}", "{\"vla\":3}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(reg_params_decode(bad[i], &q, err, sizeof err), MA_ECORRUPT);
        assert_true(strlen(err) > 0);
    }
    assert_int_equal(reg_params_decode(NULL, &q, err, sizeof err), MA_ECORRUPT);

    /* Slot policies: stored, read back equal; a text without them (every earlier daemon's) reads as the
     * defaults; a bad one is a corrupt row naming the field. */
    ma_params_default(&p);
    p.slot_policy.eviction = MA_EVICTION_SCORE;
    p.slot_policy.overwrite = MA_OVERWRITE_BLEND;
    p.slot_policy.alpha = 0.125;
    p.slot_policy.read = MA_SLOT_READ_TOPK;
    p.slot_policy.k = 7;
    p.slot_policy.temperature = 0.3;
    assert_int_equal(reg_params_encode(&p, &text), 0);
    legacy = codec_params_to_json(&p);
    legacy_text = cJSON_PrintUnformatted(legacy);
    assert_string_equal(text, legacy_text);
    assert_int_equal(reg_params_decode(text, &q, err, sizeof err), 0);
    assert_true(ma_params_equal(&p, &q));
    cJSON_free(legacy_text);
    cJSON_Delete(legacy);
    free(text);
    assert_int_equal(reg_params_decode("{\"dim\":64}", &q, err, sizeof err), 0);
    ma_params_default(&p);
    assert_true(ma_params_equal(&p, &q));
    const char *bad_policy[] = {"{\"slot_policy\":{\"eviction\":\"fifo\"}}", "{\"slot_policy\":{\"alpha\":0}}",
                                "{\"slot_policy\":{\"colour\":1}}", "{\"slot_policy\":[]}"};
    for (size_t i = 0; i < sizeof bad_policy / sizeof bad_policy[0]; i++) {
        err[0] = '\0';
        assert_int_equal(reg_params_decode(bad_policy[i], &q, err, sizeof err), MA_ECORRUPT);
        assert_non_null(strstr(err, "slot_policy"));
    }
}

/* The pager reads back exactly the events committed through the registry, a chunk at a time. */
static void test_pager(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    char err[256];
    ma_params p = params();
    assert_int_equal(open_fixture(&f, 0), 0);
    assert_int_equal(reg_create_session(f.reg, "pg", &p, 1, &s, err, sizeof err), 0);
    float k[10 * D], v[10 * D];
    ma_event ev[10];
    for (size_t i = 0; i < 10 * D; i++) {
        k[i] = frand();
        v[i] = frand();
    }
    for (size_t i = 0; i < 10; i++)
        ev[i] = (ma_event){.k = k + i * D, .v = v + i * D, .payload = i == 5 ? "\"five\"" : NULL};
    ma_ingest_report rep = {0};
    assert_int_equal(ma_session_ingest(reg_core(s), 10, ev, 1, &rep), 0);
    ma_ingest_report_clear(&rep);
    const char *pl[10] = {NULL, NULL, NULL, NULL, NULL, "\"five\""};
    reg_change c = {.n_events = 10, .k = k, .v = v, .payloads = pl};
    assert_int_equal(reg_commit(f.reg, s, &c, 2, err, sizeof err), 0);
    reg_release(f.reg, s);

    atomic_uint_fast64_t loads;
    atomic_init(&loads, 0);
    reg_pager pg;
    reg_pager_init(&pg, f.st, "pg", &p, &loads);
    ma_chunk_source cs = reg_pager_chunks(&pg);
    ma_payload_source ps = reg_pager_payloads(&pg);
    float ck[4 * D], cv[4 * D];
    assert_int_equal(cs.load(cs.ctx, 1, ck, cv, 4), 0);              /* events 4..7 */
    assert_memory_equal(ck, k + 4 * D, sizeof ck);
    assert_memory_equal(cv, v + 4 * D, sizeof cv);
    assert_int_equal(cs.load(cs.ctx, 2, ck, cv, 2), 0);              /* the last, partial chunk */
    assert_memory_equal(ck, k + 8 * D, 2 * D * sizeof(float));
    assert_int_equal(atomic_load(&loads), 2);
    char *payload = NULL;
    assert_int_equal(ps.load(ps.ctx, 5, &payload), 0);
    assert_string_equal(payload, "\"five\"");
    free(payload);
    assert_int_equal(ps.load(ps.ctx, 4, &payload), 0);
    assert_null(payload);
    assert_int_equal(pg.err[0], '\0');
    assert_int_not_equal(cs.load(cs.ctx, 2, ck, cv, 3), 0);          /* past the end: refused, message kept */
    assert_true(strlen(pg.err) > 0);
    close_fixture(&f);
}

/* Listings page by id, summaries count what the store holds, backups never overwrite a file. */
static void test_listing_summary_backup(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    char err[256];
    ma_params p = params();
    assert_int_equal(open_fixture(&f, 0), 0);
    const char *ids[] = {"c", "a", "b"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(reg_create_session(f.reg, ids[i], &p, 100 + i, &s, err, sizeof err), 0);
        if (i == 2)
            assert_int_equal(ingest(&f, s, 6, "x"), 0);
        reg_release(f.reg, s);
    }
    reg_listing *l;
    size_t n;
    assert_int_equal(reg_list(f.reg, NULL, 2, &l, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(l[0].id, "a");
    assert_string_equal(l[1].id, "b");
    assert_int_equal(l[1].length, 6);
    assert_int_equal(l[1].slots, 1);
    assert_int_equal(l[0].created_at, 101);
    free(l);
    assert_int_equal(reg_list(f.reg, "b", 2, &l, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].id, "c");
    free(l);
    assert_int_equal(reg_list(f.reg, "c", 2, &l, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    assert_null(l);

    reg_summary sm;
    assert_int_equal(reg_acquire(f.reg, "b", &s, err, sizeof err), 0);
    assert_int_equal(reg_summary_get(f.reg, s, &sm, err, sizeof err), 0);
    assert_true(ma_params_equal(sm.params, &p));
    assert_int_equal(sm.stats.length, 6);
    assert_true(sm.stored_bytes > 0);
    assert_int_equal(sm.created_at, 102);
    assert_int_equal(sm.updated_at, 2000);
    reg_summary_clear(&sm);
    reg_release(f.reg, s);

    char path[128];
    snprintf(path, sizeof path, "%s/backup.db", f.dir);
    assert_int_equal(reg_backup(f.reg, path, err, sizeof err), 0);
    assert_int_equal(access(path, F_OK), 0);
    assert_int_equal(reg_backup(f.reg, path, err, sizeof err), MA_EEXISTS);
    assert_non_null(strstr(err, "exists"));
    close_fixture(&f);
}

/* ---- the commit queue ---------------------------------------------------------------------------- */

static atomic_int commits_seen, commit_gate, queue_answers;
static int commit_rcs[16];

/* The commit observer: counts the group transactions (and their results), and holds the commit thread
 * (bounded) while the gate is closed, so that the changes queued meanwhile form the next group. */
static void observe(void *ctx, double seconds, int rc)
{
    (void)ctx;
    (void)seconds;
    int i = atomic_fetch_add(&commits_seen, 1);
    if (i < 16)
        commit_rcs[i] = rc;
    for (int w = 0; w < 10000 && !atomic_load(&commit_gate); w++)
        usleep(1000);
}

typedef struct {
    float *k, *v;
    int rc;
    int order;                /* answer's position among all answers */
    bool answered;
} qchange;

static void queued_answer(void *ctx, int rc, const char *err)
{
    qchange *c = ctx;
    (void)err;
    c->rc = rc;
    c->order = atomic_load(&queue_answers);   /* answers come from the one commit thread */
    free(c->k);
    free(c->v);
    c->k = c->v = NULL;
    c->answered = true;
    atomic_fetch_add(&queue_answers, 1);      /* publishes the fields above to wait_answers */
}

/* Applies n random events to s, the first of them writing `slot` (NULL: none), and queues their commit. */
static void queue_batch_slot(fixture *f, reg_session *s, size_t n, const char *slot, qchange *c)
{
    char err[256];
    c->k = malloc(n * D * sizeof(float));
    c->v = malloc(n * D * sizeof(float));
    ma_event ev[64];
    assert_true(n <= 64 && c->k && c->v);
    for (size_t i = 0; i < n * D; i++) {
        c->k[i] = frand();
        c->v[i] = frand();
    }
    for (size_t i = 0; i < n; i++)
        ev[i] = (ma_event){.k = c->k + i * D, .v = c->v + i * D, .slot = i == 0 ? slot : NULL};
    uint64_t first = ma_archive_length(ma_session_archive(reg_core(s)));
    ma_ingest_report rep = {0};
    assert_int_equal(ma_session_ingest(reg_core(s), n, ev, 1000, &rep), 0);
    ma_ingest_report_clear(&rep);
    reg_change ch = {.first_event = first, .n_events = n, .k = c->k, .v = c->v};
    assert_int_equal(reg_commit_queue(f->reg, s, &ch, 2000, queued_answer, c, err, sizeof err), 0);
}

static void queue_batch(fixture *f, reg_session *s, size_t n, qchange *c)
{
    queue_batch_slot(f, s, n, NULL, c);
}

static void wait_answers(int n)
{
    for (int w = 0; w < 10000 && atomic_load(&queue_answers) < n; w++)
        usleep(1000);
    assert_int_equal(atomic_load(&queue_answers), n);
}

static uint64_t stored_length(fixture *f, const char *id)
{
    ma_store_session row;
    char err[256];
    assert_int_equal(ma_store_session_summary(f->st, id, &row, err, sizeof err), 0);
    uint64_t L = row.length;
    ma_store_session_clear(&row);
    return L;
}

static void test_commit_queue_groups(void **state)
{
    (void)state;
    fixture f;
    reg_session *a, *b;
    char err[256];
    ma_params p = params();
    float ans_a[D], ans_b[D], now[D];
    qchange c[12] = {0};
    assert_int_equal(open_fixture(&f, 0), 0);
    reg_observe_commits(f.reg, observe, NULL);
    atomic_store(&commits_seen, 0);
    atomic_store(&queue_answers, 0);
    assert_int_equal(reg_create_session(f.reg, "qa", &p, 1, &a, err, sizeof err), 0);
    assert_int_equal(reg_create_session(f.reg, "qb", &p, 1, &b, err, sizeof err), 0);

    /* c0 is committed alone and holds the commit thread in the observer; c1..c3 queue up meanwhile and
     * are written by the next transaction, all of them. */
    atomic_store(&commit_gate, 0);
    queue_batch(&f, a, 5, &c[0]);
    for (int w = 0; w < 10000 && atomic_load(&commits_seen) < 1; w++)
        usleep(1000);
    assert_int_equal(atomic_load(&commits_seen), 1);
    queue_batch(&f, a, 7, &c[1]);
    queue_batch(&f, b, 3, &c[2]);
    queue_batch(&f, a, 2, &c[3]);
    atomic_store(&commit_gate, 1);
    wait_answers(4);
    assert_int_equal(atomic_load(&commits_seen), 2);   /* one transaction for the three */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(c[i].rc, 0);
        assert_int_equal(c[i].order, i);                /* answered in queue order */
    }
    assert_int_equal(commit_rcs[0], 0);
    assert_int_equal(commit_rcs[1], 0);
    assert_int_equal(stored_length(&f, "qa"), 14);
    assert_int_equal(stored_length(&f, "qb"), 3);
    answer(a, ans_a);
    answer(b, ans_b);

    /* A failing group: c4 commits (and holds the thread), c5 (a), c6 (b), c7 (a) queue up, the disk
     * fails: all three get the error and both sessions are dropped; c8, applied to the dropped copy of a
     * after the failure, fails without being written. */
    atomic_store(&commit_gate, 0);
    queue_batch(&f, a, 4, &c[4]);
    for (int w = 0; w < 10000 && atomic_load(&commits_seen) < 3; w++)
        usleep(1000);
    assert_int_equal(atomic_load(&commits_seen), 3);
    answer(a, ans_a);                                   /* the state after c4 */
    queue_batch(&f, a, 6, &c[5]);
    queue_batch(&f, b, 6, &c[6]);
    queue_batch(&f, a, 6, &c[7]);
    ma_store_fault_set(MA_FAULT_WRITE, 0);
    atomic_store(&commit_gate, 1);
    wait_answers(8);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    assert_int_equal(atomic_load(&commits_seen), 4);
    assert_int_not_equal(commit_rcs[3], 0);
    for (int i = 5; i < 8; i++)
        assert_int_not_equal(c[i].rc, 0);
    queue_batch(&f, a, 3, &c[8]);
    wait_answers(9);
    assert_int_equal(c[8].rc, MA_EIO);
    assert_int_equal(atomic_load(&commits_seen), 4);   /* not written */
    assert_int_equal(stored_length(&f, "qa"), 18);
    assert_int_equal(stored_length(&f, "qb"), 3);
    /* reg_commit of a dropped session refuses (it waits for the queue first) */
    reg_change none = {0};
    assert_int_equal(reg_commit(f.reg, a, &none, 3000, err, sizeof err), MA_EIO);
    reg_release(f.reg, a);
    reg_release(f.reg, b);

    /* Acquired again: what the store holds, answering as before the failure; and they go on. */
    assert_int_equal(reg_acquire(f.reg, "qa", &a, err, sizeof err), 0);
    assert_int_equal(reg_acquire(f.reg, "qb", &b, err, sizeof err), 0);
    assert_int_equal(ma_archive_length(ma_session_archive(reg_core(a))), 18);
    assert_int_equal(ma_archive_length(ma_session_archive(reg_core(b))), 3);
    answer(a, now);
    assert_memory_equal(now, ans_a, sizeof now);
    answer(b, now);
    assert_memory_equal(now, ans_b, sizeof now);
    queue_batch(&f, a, 2, &c[9]);
    queue_batch(&f, b, 2, &c[10]);
    wait_answers(11);
    assert_int_equal(c[9].rc, 0);
    assert_int_equal(c[10].rc, 0);
    /* reg_delete waits for queued changes, then deletes */
    queue_batch(&f, b, 2, &c[11]);
    reg_release(f.reg, b);
    assert_int_equal(reg_delete(f.reg, "qb", err, sizeof err), 0);
    assert_true(c[11].answered);
    assert_int_equal(c[11].rc, 0);
    assert_int_equal(stored_length(&f, "qa"), 20);
    reg_release(f.reg, a);
    reg_observe_commits(f.reg, NULL, NULL);
    close_fixture(&f);
}

/* A new registry over the fixture's store, reopened (the fault VFS kept). */
static void restart(fixture *f)
{
    char err[256];
    reg_destroy(f->reg);
    ma_store_close(f->st);
    ma_store_options o;
    ma_store_options_default(&o);
    o.vfs = ma_store_fault_vfs();
    o.synchronous = MA_STORE_SYNC_NORMAL;
    assert_int_equal(ma_store_open_with(f->dir, &o, &f->st, err, sizeof err), 0);
    reg_options ro = {.store = f->st, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f->reg), 0);
}

/* Slot versions (schema 3 rows) through the commit queue: several changes of one session in one group
 * write the slot state blob once (the last) and the rows of every change, and the restored table equals
 * the one in memory; a failed group stores none of its rows, the session is reloaded from the store and
 * its next slot write stores its own rows. */
static void test_commit_queue_slot_rows(void **state)
{
    (void)state;
    fixture f;
    reg_session *s;
    char err[256];
    ma_params p = params();
    p.slots = 8;
    qchange c[8] = {0};
    assert_int_equal(open_fixture(&f, 0), 0);
    reg_observe_commits(f.reg, observe, NULL);
    atomic_store(&commits_seen, 0);
    atomic_store(&queue_answers, 0);
    assert_int_equal(reg_create_session(f.reg, "qs", &p, 1, &s, err, sizeof err), 0);

    /* c0 (h v1) holds the commit thread; c1 (h v2), c2 (g v1), c3 (no slot) form the next group */
    atomic_store(&commit_gate, 0);
    queue_batch_slot(&f, s, 3, "h", &c[0]);
    for (int w = 0; w < 10000 && atomic_load(&commits_seen) < 1; w++)
        usleep(1000);
    assert_int_equal(atomic_load(&commits_seen), 1);
    queue_batch_slot(&f, s, 3, "h", &c[1]);
    queue_batch_slot(&f, s, 3, "g", &c[2]);
    queue_batch_slot(&f, s, 2, NULL, &c[3]);
    atomic_store(&commit_gate, 1);
    wait_answers(4);
    assert_int_equal(atomic_load(&commits_seen), 2);
    for (int i = 0; i < 4; i++)
        assert_int_equal(c[i].rc, 0);
    assert_int_equal(stored_rows(&f, "qs"), 3);
    assert_false(ma_slots_has_unsaved(ma_session_slots(reg_core(s))));
    void *w1, *w2;
    size_t n1, n2;
    assert_int_equal(ma_session_serialize_slots(reg_core(s), &w1, &n1), 0);
    reg_release(f.reg, s);
    reg_observe_commits(f.reg, NULL, NULL);

    restart(&f);
    assert_int_equal(reg_acquire(f.reg, "qs", &s, err, sizeof err), 0);
    assert_int_equal(ma_session_serialize_slots(reg_core(s), &w2, &n2), 0);
    assert_int_equal(n1, n2);
    assert_memory_equal(w1, w2, n1);
    free(w1);
    free(w2);

    /* c4 (h v3) commits and holds the thread; c5 (k v1) fails with its group: not stored */
    reg_observe_commits(f.reg, observe, NULL);
    atomic_store(&commits_seen, 0);
    atomic_store(&queue_answers, 0);
    atomic_store(&commit_gate, 0);
    queue_batch_slot(&f, s, 2, "h", &c[4]);
    for (int w = 0; w < 10000 && atomic_load(&commits_seen) < 1; w++)
        usleep(1000);
    assert_int_equal(atomic_load(&commits_seen), 1);
    queue_batch_slot(&f, s, 2, "k", &c[5]);
    ma_store_fault_set(MA_FAULT_WRITE, 0);
    atomic_store(&commit_gate, 1);
    wait_answers(2);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    assert_int_equal(c[4].rc, 0);
    assert_int_not_equal(c[5].rc, 0);
    assert_int_equal(stored_rows(&f, "qs"), 4);
    reg_release(f.reg, s);
    reg_observe_commits(f.reg, NULL, NULL);

    /* acquired again: the stored table (no k), and a slot write of k stores its row */
    assert_int_equal(reg_acquire(f.reg, "qs", &s, err, sizeof err), 0);
    ma_slot_value sv;
    assert_int_equal(ma_session_slot_read(reg_core(s), "h", 3, &sv), 0);
    ma_slot_value_clear(&sv);
    assert_int_not_equal(ma_session_slot_read(reg_core(s), "k", 1, &sv), 0);
    assert_int_equal(ingest(&f, s, 2, "k"), 0);
    assert_int_equal(stored_rows(&f, "qs"), 5);
    assert_int_equal(ma_session_serialize_slots(reg_core(s), &w1, &n1), 0);
    reg_release(f.reg, s);
    restart(&f);
    assert_int_equal(reg_acquire(f.reg, "qs", &s, err, sizeof err), 0);
    assert_int_equal(ma_session_serialize_slots(reg_core(s), &w2, &n2), 0);
    assert_int_equal(n1, n2);
    assert_memory_equal(w1, w2, n1);
    free(w1);
    free(w2);
    reg_release(f.reg, s);
    close_fixture(&f);
}

/* ---- background index builds (docs/ARCHIVE.md, "Builds in the background") ----------------------- */

/* Event i of seed: key and value, a function of (seed, i). */
static void kv(unsigned seed, uint64_t i, float *k, float *v)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (i + 1) * 0xC2B2AE3D27D4EB4Full;
    for (int j = 0; j < 2 * D; j++) {
        x ^= x >> 31;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 29;
        float f = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        if (j < D)
            k[j] = f;
        else
            v[j - D] = f;
    }
}

/* Appends events [length, length+n) of seed (n <= 256) and commits. */
static int ingest_seq(fixture *f, reg_session *s, unsigned seed, size_t n)
{
    float k[256 * D], v[256 * D];
    ma_event ev[256];
    char err[256];
    assert_true(n <= 256);
    uint64_t first = ma_archive_length(ma_session_archive(reg_core(s)));
    for (size_t i = 0; i < n; i++) {
        kv(seed, first + i, k + i * D, v + i * D);
        ev[i] = (ma_event){.k = k + i * D, .v = v + i * D};
    }
    ma_ingest_report rep = {0};
    assert_int_equal(ma_session_ingest(reg_core(s), n, ev, 1000, &rep), 0);
    ma_ingest_report_clear(&rep);
    reg_change c = {.first_event = first, .n_events = n, .k = k, .v = v};
    return reg_commit(f->reg, s, &c, 2000, err, sizeof err);
}

/* The sparse answers of 16 queries near events of seed, as bits (output, pointer). */
typedef struct {
    float v[16][D];
    int64_t event[16];
} answers;

static void sparse_answers(reg_session *s, unsigned seed, uint64_t n, answers *out)
{
    memset(out, 0, sizeof *out);
    for (int t = 0; t < 16; t++) {
        float q[D], v[D];
        kv(seed, (uint64_t)t * 977 % n, q, v);
        q[t % D] += 0.25f;
        ma_query qu = {.q = q, .route = MA_ROUTE_SPARSE};
        ma_answer a = {.v = out->v[t]};
        assert_int_equal(ma_session_query(reg_core(s), &qu, &a), 0);
        out->event[t] = a.event;
        ma_answer_clear(&a);
    }
}

static uint32_t build_of(reg_session *s)
{
    ma_index_state st;
    ma_archive_index_state(ma_session_archive(reg_core(s)), &st);
    return st.build;
}

/* Feeds session id events of seed up to n in batches of 96, waiting for the background builds after each
 * batch but the last (so the last batch's build, if it makes one due, has not run when this returns:
 * the caller holds the session). Returns the session acquired. */
static reg_session *feed_then_hold_p(fixture *f, const char *id, unsigned seed, uint64_t n, const ma_params *pp)
{
    ma_params p = *pp;
    reg_session *s;
    char err[256];
    assert_int_equal(reg_create_session(f->reg, id, &p, 1, &s, err, sizeof err), 0);
    reg_release(f->reg, s);
    for (uint64_t have = 0; have < n;) {
        assert_int_equal(reg_acquire(f->reg, id, &s, err, sizeof err), 0);
        size_t b = n - have < 96 ? (size_t)(n - have) : 96;
        assert_int_equal(ingest_seq(f, s, seed, b), 0);
        have += b;
        if (have == n)
            return s;   /* held: its build (if due) waits for the gate */
        reg_release(f->reg, s);
        reg_wait_maintenance(f->reg);
    }
    return NULL;
}

static reg_session *feed_then_hold(fixture *f, const char *id, unsigned seed, uint64_t n)
{
    ma_params p = params();
    return feed_then_hold_p(f, id, seed, n, &p);
}

/* A query answered before the swap and one after are each reproducible: two sessions fed the same events
 * answer the same at the same (events, build); the swap happens only once the session is not held; a
 * restarted registry reads the index from its rows (no k-means, no key streamed but the pending ones) and
 * answers as before; a build in flight when the registry stops is redone at the next load. */
static void test_background_build_states(void **state)
{
    (void)state;
    fixture f;
    char err[256];
    const uint64_t N = 43 * 96, N2 = N + 17 * 256;   /* the last batch of 96 makes the build at 4,096 due */
    assert_int_equal(open_fixture(&f, 0), 0);
    answers before_a, before_b, after_a, after_b;
    reg_session *a = feed_then_hold(&f, "a", 7, N), *b;
    assert_int_equal(build_of(a), 2);                 /* the build at 2,048 answers until the swap */
    sparse_answers(a, 7, N, &before_a);
    reg_release(f.reg, a);
    b = feed_then_hold(&f, "b", 7, N);
    assert_int_equal(build_of(b), 2);
    sparse_answers(b, 7, N, &before_b);
    assert_memory_equal(&before_a, &before_b, sizeof before_a);
    reg_release(f.reg, b);
    reg_wait_maintenance(f.reg);

    reg_summary sm;
    assert_int_equal(reg_acquire(f.reg, "a", &a, err, sizeof err), 0);
    assert_int_equal(build_of(a), 3);                 /* swapped in: the build at 4,096 */
    assert_int_equal(reg_summary_get(f.reg, a, &sm, err, sizeof err), 0);
    assert_int_equal(sm.index.build, 3);
    assert_int_equal(sm.index.nlist, 128);
    assert_int_equal(sm.index.events, N);
    assert_false(sm.index_building);
    reg_summary_clear(&sm);
    sparse_answers(a, 7, N, &after_a);
    assert_memory_not_equal(&before_a, &after_a, sizeof before_a);
    reg_release(f.reg, a);
    assert_int_equal(reg_acquire(f.reg, "b", &b, err, sizeof err), 0);
    sparse_answers(b, 7, N, &after_b);
    assert_memory_equal(&after_a, &after_b, sizeof after_a);
    /* A build in flight when the registry stops: b's next batch makes the build at 8,192 due. */
    for (int i = 0; i < 17; i++)
        assert_int_equal(ingest_seq(&f, b, 7, 256), 0);
    reg_release(f.reg, b);
    reg_destroy(f.reg);   /* cancels it */

    /* Restart: the rows of the current builds are read back, nothing else of the index recomputed. */
    reg_options ro = {.store = f.st, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    assert_int_equal(reg_acquire(f.reg, "a", &a, err, sizeof err), 0);
    reg_stats st;
    reg_stats_get(f.reg, &st);
    assert_true(st.chunk_loads <= (N - 4096) / 4 + 1);   /* the pending events' chunks (chunk = 4), the tail */
    answers again;
    sparse_answers(a, 7, N, &again);
    assert_memory_equal(&after_a, &again, sizeof again);
    reg_release(f.reg, a);
    assert_int_equal(reg_acquire(f.reg, "b", &b, err, sizeof err), 0);   /* the load finds the build due */
    reg_release(f.reg, b);
    reg_wait_maintenance(f.reg);
    assert_int_equal(reg_acquire(f.reg, "b", &b, err, sizeof err), 0);
    assert_int_equal(build_of(b), 4);
    answers bb;
    sparse_answers(b, 7, N2, &bb);
    reg_release(f.reg, b);
    /* ... equal to a session fed the same events here, in other batches. */
    b = feed_then_hold(&f, "c", 7, N2);
    reg_release(f.reg, b);
    reg_wait_maintenance(f.reg);
    assert_int_equal(reg_acquire(f.reg, "c", &b, err, sizeof err), 0);
    answers cc;
    sparse_answers(b, 7, N2, &cc);
    assert_memory_equal(&bb, &cc, sizeof bb);
    reg_release(f.reg, b);
    close_fixture(&f);
}

/* Under a memory budget that holds the session but not a second index, a background build is adopted in
 * place under the session's gate (one index held at a time) instead of being made beside the old one;
 * either way the session answers with the same bits at the same (events, build). */
/* registry/maint.c: a job runs at nice +10, what it hands to reg_maint_urgent (the steps that hold a
 * session's gate) at the process's own priority, and gets its result back. */
typedef struct {
    reg_maint *m;
    int job_nice, urgent_nice, urgent_rc;
} nice_seen;

static int nice_of_this_thread(void)
{
    errno = 0;
    return getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
}

static int urgent_fn(void *arg)
{
    ((nice_seen *)arg)->urgent_nice = nice_of_this_thread();
    return 42;
}

static void nice_job(void *ctx, const char *id, const atomic_int *cancel)
{
    (void)id;
    (void)cancel;
    nice_seen *n = ctx;
    n->job_nice = nice_of_this_thread();
    n->urgent_rc = reg_maint_urgent(n->m, urgent_fn, n);
}

static void test_maint_urgent_runs_at_normal_priority(void **state)
{
    (void)state;
    nice_seen n = {NULL, -100, -100, 0};
    reg_maint *m;
    assert_int_equal(reg_maint_create(nice_job, &n, &m), 0);
    n.m = m;
    reg_maint_enqueue(m, "a");
    reg_maint_wait_idle(m);
    reg_maint_destroy(m);
    const int mine = nice_of_this_thread();
    assert_int_equal(n.urgent_rc, 42);
    assert_int_equal(n.urgent_nice, mine);
    assert_int_equal(n.job_nice, mine + 10 > 19 ? 19 : mine + 10);
}

static void test_build_in_place_under_budget(void **state)
{
    (void)state;
    const uint64_t N = 43 * 96;   /* the last batch of 96 makes the build at 4,096 due */
    fixture f;
    char err[256];
    reg_stats st;
    answers beside, in_place;
    /* No budget: made beside the old index. */
    assert_int_equal(open_fixture(&f, 0), 0);
    reg_session *a = feed_then_hold(&f, "a", 7, N);
    reg_release(f.reg, a);
    reg_wait_maintenance(f.reg);
    reg_stats_get(f.reg, &st);
    const uint64_t builds = st.index_builds;   /* at 1,024, 2,048 and 4,096 events */
    assert_int_equal(builds, 3);
    assert_int_equal(st.index_builds_in_place, 0);
    assert_int_equal(reg_acquire(f.reg, "a", &a, err, sizeof err), 0);
    assert_int_equal(build_of(a), 3);
    sparse_answers(a, 7, N, &beside);
    const size_t ix = ma_ivf_bytes(ma_archive_index(ma_session_archive(reg_core(a))));
    reg_release(f.reg, a);
    ma_params p = params();
    const size_t fp = reg_session_footprint(f.reg, &p);
    close_fixture(&f);
    /* A budget of the footprint and half an index: adopted in place. */
    assert_int_equal(open_fixture(&f, fp + ix / 2), 0);
    a = feed_then_hold(&f, "a", 7, N);
    reg_release(f.reg, a);
    reg_wait_maintenance(f.reg);
    reg_stats_get(f.reg, &st);
    assert_int_equal(st.index_builds, builds);
    assert_true(st.index_builds_in_place >= 1);   /* the last at least (the first may fit beside) */
    assert_int_equal(st.index_build_failures, 0);
    assert_int_equal(reg_acquire(f.reg, "a", &a, err, sizeof err), 0);
    assert_int_equal(build_of(a), 3);
    sparse_answers(a, 7, N, &in_place);
    reg_release(f.reg, a);
    assert_memory_equal(&beside, &in_place, sizeof beside);
    close_fixture(&f);
}

/* Issue 15: a session of 2 heads stored with the shared index of before (one index over both heads)
 * loads as it was and answers as before; its next background build makes the index per-head, after which
 * it answers as a session per-head from the start fed the same events, and a restarted registry reads its
 * per-head rows and answers the same. */
static void test_shared_index_upgrade(void **state)
{
    (void)state;
    fixture f;
    char err[256];
    const uint64_t N = 43 * 96, N2 = N + 17 * 256;   /* builds at 4,096, then at 8,192 */
    ma_params p2 = params();
    p2.heads = 2;
    p2.dim = p2.value_dim = D / 2;   /* kv's D floats: 2 heads of D/2 */
    assert_int_equal(open_fixture(&f, 0), 0);
    ma_ivf_set_legacy_shared(1);   /* the daemon of before */
    reg_session *s = feed_then_hold_p(&f, "old", 7, N, &p2);
    reg_release(f.reg, s);
    reg_wait_maintenance(f.reg);
    assert_int_equal(reg_acquire(f.reg, "old", &s, err, sizeof err), 0);
    assert_int_equal(build_of(s), 3);
    assert_false(ma_ivf_per_head(ma_archive_index(ma_session_archive(reg_core(s)))));
    answers before, again;
    sparse_answers(s, 7, N, &before);
    reg_release(f.reg, s);
    reg_destroy(f.reg);
    ma_ivf_set_legacy_shared(0);   /* this daemon */

    reg_options ro = {.store = f.st, .cache_chunks = 4};
    assert_int_equal(reg_create(&ro, &f.reg), 0);
    assert_int_equal(reg_acquire(f.reg, "old", &s, err, sizeof err), 0);
    assert_false(ma_ivf_per_head(ma_archive_index(ma_session_archive(reg_core(s)))));
    sparse_answers(s, 7, N, &again);
    assert_memory_equal(&before, &again, sizeof again);
    for (int i = 0; i < 17; i++)
        assert_int_equal(ingest_seq(&f, s, 7, 256), 0);
    reg_release(f.reg, s);
    reg_wait_maintenance(f.reg);
    assert_int_equal(reg_acquire(f.reg, "old", &s, err, sizeof err), 0);
    assert_int_equal(build_of(s), 4);
    assert_true(ma_ivf_per_head(ma_archive_index(ma_session_archive(reg_core(s)))));
    answers up, fresh;
    sparse_answers(s, 7, N2, &up);
    reg_release(f.reg, s);

    s = feed_then_hold_p(&f, "new", 7, N2, &p2);
    reg_release(f.reg, s);
    reg_wait_maintenance(f.reg);
    assert_int_equal(reg_acquire(f.reg, "new", &s, err, sizeof err), 0);
    assert_int_equal(build_of(s), 4);
    sparse_answers(s, 7, N2, &fresh);
    assert_memory_equal(&up, &fresh, sizeof up);
    reg_release(f.reg, s);
    reg_destroy(f.reg);

    assert_int_equal(reg_create(&ro, &f.reg), 0);
    assert_int_equal(reg_acquire(f.reg, "old", &s, err, sizeof err), 0);
    assert_true(ma_ivf_per_head(ma_archive_index(ma_session_archive(reg_core(s)))));
    sparse_answers(s, 7, N2, &again);
    assert_memory_equal(&up, &again, sizeof again);
    reg_release(f.reg, s);
    close_fixture(&f);
}

/* What the daemon's worker pool guarantees, for the threads of this test: per session, mutations alone,
 * queries side by side. */
typedef struct {
    fixture *f;
    pthread_rwlock_t order;
    atomic_int done;
    uint64_t n;
    atomic_int queries, failures;
} race;

static void *race_writer(void *arg)
{
    race *r = arg;
    char err[256];
    for (uint64_t have = 0; have < r->n; have += 128) {
        reg_session *s;
        pthread_rwlock_wrlock(&r->order);
        assert_int_equal(reg_acquire(r->f->reg, "w", &s, err, sizeof err), 0);
        if (ingest_seq(r->f, s, 9, 128) != 0)
            r->failures++;
        reg_release(r->f->reg, s);
        pthread_rwlock_unlock(&r->order);
    }
    atomic_store(&r->done, 1);
    return NULL;
}

static void *race_reader(void *arg)
{
    race *r = arg;
    char err[256];
    while (!atomic_load(&r->done)) {
        reg_session *s;
        pthread_rwlock_rdlock(&r->order);
        assert_int_equal(reg_acquire(r->f->reg, "w", &s, err, sizeof err), 0);
        uint64_t n = ma_archive_length(ma_session_archive(reg_core(s)));
        if (n) {
            float q[D], v[D], out[D];
            kv(9, n / 2, q, v);
            ma_query qu = {.q = q, .route = MA_ROUTE_SPARSE};
            ma_answer a = {.v = out};
            if (ma_session_query(reg_core(s), &qu, &a) != 0 || a.event < 0 || a.event >= (int64_t)n)
                r->failures++;
            ma_answer_clear(&a);
            r->queries++;
        }
        reg_release(r->f->reg, s);
        pthread_rwlock_unlock(&r->order);
    }
    return NULL;
}

/* Background builds racing mutations and queries: every query is answered (an exact key is found by
 * whichever build answers), every commit succeeds, and the end state equals a session fed the same events
 * without any concurrency (after both finished their builds). */
static void test_background_build_race(void **state)
{
    (void)state;
    fixture f;
    char err[256];
    ma_params p = params();
    reg_session *s;
    assert_int_equal(open_fixture(&f, 0), 0);
    assert_int_equal(reg_create_session(f.reg, "w", &p, 1, &s, err, sizeof err), 0);
    reg_release(f.reg, s);
    race r = {.f = &f, .n = 20480};
    pthread_rwlockattr_t ra;   /* the worker pool keeps arrival order: a waiting mutation is not starved */
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&r.order, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_t w, q[2];
    assert_int_equal(pthread_create(&w, NULL, race_writer, &r), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&q[i], NULL, race_reader, &r), 0);
    pthread_join(w, NULL);
    for (int i = 0; i < 2; i++)
        pthread_join(q[i], NULL);
    pthread_rwlock_destroy(&r.order);
    assert_int_equal(r.failures, 0);
    assert_true(r.queries > 0);
    reg_wait_maintenance(f.reg);

    reg_session *t = feed_then_hold(&f, "twin", 9, r.n);
    reg_release(f.reg, t);
    reg_wait_maintenance(f.reg);
    answers x, y;
    assert_int_equal(reg_acquire(f.reg, "w", &s, err, sizeof err), 0);
    assert_int_equal(reg_acquire(f.reg, "twin", &t, err, sizeof err), 0);
    assert_int_equal(build_of(s), 5);   /* the build at 16,384 */
    assert_int_equal(build_of(t), 5);
    sparse_answers(s, 9, r.n, &x);
    sparse_answers(t, 9, r.n, &y);
    assert_memory_equal(&x, &y, sizeof x);
    reg_release(f.reg, s);
    reg_release(f.reg, t);
    /* A deleted session's build is cancelled and its rows go with it. */
    assert_int_equal(reg_delete(f.reg, "w", err, sizeof err), 0);
    close_fixture(&f);
}

int main(void)
{
    openblas_set_num_threads(1);   /* as the daemon does (its index builds run sgemm on their own thread) */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_text),
        cmocka_unit_test(test_pager),
        cmocka_unit_test(test_listing_summary_backup),
        cmocka_unit_test(test_failed_commit_reloads),
        cmocka_unit_test(test_slot_rows_restart),
        cmocka_unit_test(test_parallel_load_once),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_cache_counted),
        cmocka_unit_test(test_commit_queue_groups),
        cmocka_unit_test(test_commit_queue_slot_rows),
        cmocka_unit_test(test_background_build_states),
        cmocka_unit_test(test_build_in_place_under_budget),
        cmocka_unit_test(test_maint_urgent_runs_at_normal_priority),
        cmocka_unit_test(test_shared_index_upgrade),
        cmocka_unit_test(test_background_build_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
