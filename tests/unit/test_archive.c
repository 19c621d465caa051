/*
 * tests/unit/test_archive.c — the archive (core/archive.c) and its attention kernel (core/attn.c).
 *
 * Every read is checked against a double-precision softmax reference written here, on random inputs with
 * fixed seeds: full and window reads, sparse reads that select everything (both selectors), chunk
 * selection that must find a planted needle, paging through a chunk source (bit-identical to the resident
 * archive, errors passed on, a cache smaller than a read, concurrent readers), meta serialisation
 * (restored archive answers with the same bits, before and after further appends and an index rebuild;
 * corrupt buffers refused; source errors at restore passed on), the meta generation (the blob changes
 * exactly when it does), bytes accounting of a paged index archive, and the needle test of the issue
 * (index selector, default topk, 100,000 random-key fillers, d = 64), and the recall of 8 heads (one index
 * per head) against the full read at 2^17 clustered events.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/archive.h"
#include "core/attn.h"
#include "core/error.h"
#include "core/ivf.h"

/* ---- helpers --------------------------------------------------------------------------------- */

#include "tests/unit/testrand.h"

static ma_params mkparams(int H, int d, int dv, int C, int topk, ma_selector sel)
{
    ma_params p;
    ma_params_default(&p);
    p.heads = H;
    p.dim = d;
    p.value_dim = dv;
    p.chunk = C;
    p.topk = topk;
    p.selector = sel;
    return p;
}

typedef struct {
    int64_t pointer;
    double weight, score;
} ref_best;

/* Double-precision softmax attention over events [lo, hi) of k/v (or over the listed ids). */
static void reference(int H, int d, int dv, const float *k, const float *v, const uint64_t *ids, size_t lo,
                      size_t hi, const float *q, double *out, ref_best *best)
{
    size_t n = hi - lo;
    double *w = calloc(n * (size_t)H, sizeof *w);
    assert_non_null(w);
    for (int h = 0; h < H; h++) {
        double mx = -INFINITY, z = 0;
        for (size_t t = 0; t < n; t++) {
            size_t i = ids ? ids[lo + t] : lo + t;
            double s = 0;
            for (int j = 0; j < d; j++)
                s += (double)q[h * d + j] * k[(i * H + h) * d + j];
            w[h * n + t] = s / sqrt((double)d);
            if (w[h * n + t] > mx)
                mx = w[h * n + t];
        }
        for (size_t t = 0; t < n; t++)
            z += (w[h * n + t] = exp(w[h * n + t] - mx));
        for (int j = 0; j < dv; j++) {
            double o = 0;
            for (size_t t = 0; t < n; t++) {
                size_t i = ids ? ids[lo + t] : lo + t;
                o += w[h * n + t] / z * v[(i * H + h) * dv + j];
            }
            out[h * dv + j] = o;
        }
        for (size_t t = 0; t < n; t++)
            w[h * n + t] /= z;
    }
    size_t arg = 0;
    double aw = -1;
    for (size_t t = 0; t < n; t++) {
        double s = 0;
        for (int h = 0; h < H; h++)
            s += w[h * n + t];
        if (s > aw) {
            aw = s;
            arg = t;
        }
    }
    size_t i = ids ? ids[lo + arg] : lo + arg;
    double cs = 0;
    for (int h = 0; h < H; h++) {
        double ab = 0, aa = 0, bb = 0;
        for (int j = 0; j < d; j++) {
            double a = q[h * d + j], b = k[(i * H + h) * d + j];
            ab += a * b, aa += a * a, bb += b * b;
        }
        cs += ab / sqrt(aa * bb);
    }
    best->pointer = (int64_t)i;
    best->weight = aw / H;
    best->score = cs / H;
    free(w);
}

static void expect_close(const float *got, const double *want, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]);
        if (e > tol * (1 + fabs(want[i])))
            fail_msg("component %zu: got %.9g, expected %.9g (error %.3g)", i, got[i], want[i], e);
    }
}

static ma_archive *filled(const ma_params *p, size_t T, float **k, float **v)
{
    size_t kf = (size_t)p->heads * p->dim, vf = (size_t)p->heads * p->value_dim;
    *k = randv(T * kf);
    *v = randv(T * vf);
    ma_archive *a;
    assert_int_equal(ma_archive_create(p, &a), 0);
    /* Uneven batches, so that appends cross chunk boundaries mid-batch. */
    for (size_t i = 0; i < T;) {
        size_t n = 1 + (i * 7) % 11;
        if (n > T - i)
            n = T - i;
        assert_int_equal(ma_archive_append(a, n, *k + i * kf, *v + i * vf), 0);
        i += n;
    }
    assert_int_equal(ma_archive_length(a), T);
    assert_int_equal(ma_archive_chunks(a), (T + p->chunk - 1) / p->chunk);
    return a;
}

/* ---- event masks ------------------------------------------------------------------------------- */

/* Reads skip the events whose mask bits meet r.skip: full and window equal the reference over the
 * events left, sparse (both selectors) never points at a skipped event, nothing left is MA_EEMPTY. */
static void test_masks(void **state)
{
    (void)state;
    for (int sel = 0; sel < 2; sel++) {
        rng_state = 41;
        ma_params p = mkparams(2, 8, 3, 4, 64, sel ? MA_SELECTOR_CHUNKS : MA_SELECTOR_INDEX);
        p.window = 20;
        float *k, *v;
        const size_t T = 53;
        ma_archive *a = filled(&p, T, &k, &v);
        assert_int_equal(ma_archive_mask_reserve(a, T), 0);
        for (size_t i = 0; i < T; i++) {
            if (i % 3 == 0)
                ma_archive_mask_set(a, i, MA_MASK_SUPERSEDED, true);
            if (i % 7 == 0)
                ma_archive_mask_set(a, i, MA_MASK_FORGOTTEN, true);
        }
        ma_archive_mask_set(a, 3, MA_MASK_SUPERSEDED, false);   /* cleared again */
        assert_int_equal(ma_archive_masked(a, 3), 0);
        assert_int_equal(ma_archive_masked(a, 21), MA_MASK_ALL);
        assert_int_equal(ma_archive_masked(a, T + 100), 0);
        const unsigned skips[] = {0, MA_MASK_FORGOTTEN, MA_MASK_ALL};
        for (int si = 0; si < 3; si++) {
            uint64_t ids[53], wids[53];
            size_t n = 0, nw = 0;
            for (size_t i = 0; i < T; i++)
                if (!(ma_archive_masked(a, i) & skips[si])) {
                    ids[n++] = i;
                    if (i >= T - 20)
                        wids[nw++] = i;
                }
            for (int trial = 0; trial < 3; trial++) {
                float *q = randv(2 * 8);
                float out[6];
                double want[6];
                ref_best rb;
                ma_read_result r = {.v = out, .skip = skips[si]};
                assert_int_equal(ma_archive_read_full(a, q, &r), 0);
                reference(2, 8, 3, k, v, ids, 0, n, q, want, &rb);
                expect_close(out, want, 6, 1e-5);
                assert_int_equal(r.pointer, rb.pointer);
                assert_int_equal(r.events_scored, n);
                ma_read_result_clear(&r);
                r = (ma_read_result){.v = out, .skip = skips[si]};
                assert_int_equal(ma_archive_read_window(a, q, 0, &r), 0);
                reference(2, 8, 3, k, v, wids, 0, nw, q, want, &rb);
                expect_close(out, want, 6, 1e-5);
                assert_int_equal(r.pointer, rb.pointer);
                ma_read_result_clear(&r);
                r = (ma_read_result){.v = out, .skip = skips[si]};
                assert_int_equal(ma_archive_read_sparse(a, q, 0, &r), 0);
                assert_true(r.pointer >= 0);
                assert_int_equal(ma_archive_masked(a, (uint64_t)r.pointer) & skips[si], 0);
                ma_read_result_clear(&r);
                free(q);
            }
        }
        /* Every event masked: nothing to attend over. */
        for (size_t i = 0; i < T; i++)
            ma_archive_mask_set(a, i, MA_MASK_FORGOTTEN, true);
        float q[16] = {1}, out[6];
        ma_read_result r = {.v = out, .skip = MA_MASK_FORGOTTEN};
        assert_int_equal(ma_archive_read_full(a, q, &r), MA_EEMPTY);
        assert_int_equal(ma_archive_read_window(a, q, 0, &r), MA_EEMPTY);
        assert_int_equal(ma_archive_read_sparse(a, q, 0, &r), MA_EEMPTY);
        assert_null(r.chunks);
        ma_archive_destroy(a);
        free(k);
        free(v);
    }
}

/* ---- kernel and exact reads ------------------------------------------------------------------ */

static void test_full_matches_reference(void **state)
{
    (void)state;
    rng_state = 1;
    ma_params p = mkparams(3, 8, 5, 4, 2, MA_SELECTOR_CHUNKS);
    float *k, *v;
    const size_t T = 53;
    ma_archive *a = filled(&p, T, &k, &v);
    for (int trial = 0; trial < 5; trial++) {
        float *q = randv(3 * 8);
        float out[15];
        double want[15];
        ref_best rb;
        ma_read_result r = {.v = out};
        assert_int_equal(ma_archive_read_full(a, q, &r), 0);
        reference(3, 8, 5, k, v, NULL, 0, T, q, want, &rb);
        expect_close(out, want, 15, 1e-5);
        assert_int_equal(r.pointer, rb.pointer);
        assert_true(fabs(r.weight - rb.weight) < 1e-6);
        assert_true(fabs(r.score - rb.score) < 1e-6);
        assert_int_equal(r.n_chunks, 14);
        for (size_t c = 0; c < r.n_chunks; c++)
            assert_int_equal(r.chunks[c], c);
        assert_int_equal(r.events_scored, T);
        ma_read_result_clear(&r);
        free(q);
    }
    ma_archive_destroy(a);
    free(k);
    free(v);
}

static void test_window_matches_reference(void **state)
{
    (void)state;
    rng_state = 2;
    ma_params p = mkparams(2, 6, 6, 5, 2, MA_SELECTOR_CHUNKS);
    p.window = 9;
    float *k, *v;
    const size_t T = 31;
    ma_archive *a = filled(&p, T, &k, &v);
    float *q = randv(12);
    float out[12];
    double want[12];
    ref_best rb;
    const int windows[] = {0 /* config: 9 */, 1, 5, 30, 31, 1000};
    for (size_t t = 0; t < sizeof windows / sizeof *windows; t++) {
        size_t w = windows[t] ? (size_t)windows[t] : 9;
        size_t lo = w >= T ? 0 : T - w;
        ma_read_result r = {.v = out};
        assert_int_equal(ma_archive_read_window(a, q, windows[t], &r), 0);
        reference(2, 6, 6, k, v, NULL, lo, T, q, want, &rb);
        expect_close(out, want, 12, 1e-5);
        assert_int_equal(r.pointer, rb.pointer);
        assert_int_equal(r.events_scored, T - lo);
        assert_int_equal(r.chunks[0], lo / 5);
        assert_int_equal(r.chunks[r.n_chunks - 1], (T - 1) / 5);
        ma_read_result_clear(&r);
    }
    ma_archive_destroy(a);
    free(q);
    free(k);
    free(v);
}

static void test_empty_and_get(void **state)
{
    (void)state;
    rng_state = 3;
    ma_params p = mkparams(2, 4, 3, 4, 2, MA_SELECTOR_INDEX);
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    float q[8] = {1, 0, 0, 0, 0, 1, 0, 0}, out[6], kk[8], vv[6];
    ma_read_result r = {.v = out};
    assert_int_equal(ma_archive_read_full(a, q, &r), MA_EEMPTY);
    assert_int_equal(ma_archive_read_window(a, q, 0, &r), MA_EEMPTY);
    assert_int_equal(ma_archive_read_sparse(a, q, 0, &r), MA_EEMPTY);
    assert_null(r.chunks);
    assert_int_equal(ma_archive_get(a, 0, kk, vv), MA_ENOTFOUND);
    assert_int_equal(ma_archive_append(a, 0, NULL, NULL), 0);
    assert_int_equal(ma_archive_length(a), 0);
    ma_archive_destroy(a);

    float *k, *v;
    a = filled(&p, 10, &k, &v);
    for (uint64_t i = 0; i < 10; i++) {
        assert_int_equal(ma_archive_get(a, i, kk, vv), 0);
        assert_memory_equal(kk, k + i * 8, sizeof kk);
        assert_memory_equal(vv, v + i * 6, sizeof vv);
    }
    assert_int_equal(ma_archive_get(a, 7, NULL, vv), 0);
    assert_int_equal(ma_archive_get(a, 10, kk, vv), MA_ENOTFOUND);
    assert_int_equal(ma_archive_bytes_total(a), 10 * (8 + 6) * sizeof(float));
    assert_true(ma_archive_bytes(a) >= ma_archive_bytes_total(a));
    ma_archive_destroy(a);

    ma_params bad = p;
    bad.heads = 0;
    assert_int_equal(ma_archive_create(&bad, &a), MA_EINVAL);
    ma_archive_destroy(NULL);
    free(k);
    free(v);
}

/* Sparse with every chunk (or every event) selected is full attention. */
static void sparse_all_is_full(ma_selector sel, ma_chunk_score cs)
{
    rng_state = 4 + sel;
    ma_params p = mkparams(2, 8, 4, 8, 1, sel);
    float *k, *v;
    const size_t T = 1500;   /* past the index's first build */
    ma_archive *a = filled(&p, T, &k, &v);
    ma_archive_set_chunk_score(a, cs);
    float *q = randv(16);
    float fo[8], so[8];
    ma_read_result rf = {.v = fo}, rs = {.v = so};
    assert_int_equal(ma_archive_read_full(a, q, &rf), 0);
    assert_int_equal(ma_archive_read_sparse(a, q, 4096, &rs), 0);
    for (int i = 0; i < 8; i++)
        assert_true(fabsf(fo[i] - so[i]) <= 1e-5f * (1 + fabsf(fo[i])));
    assert_int_equal(rs.pointer, rf.pointer);
    assert_true(fabs(rs.score - rf.score) < 1e-9);
    assert_int_equal(rs.n_chunks, ma_archive_chunks(a));
    if (sel == MA_SELECTOR_CHUNKS)
        assert_int_equal(rs.events_scored, T);
    ma_read_result_clear(&rf);
    ma_read_result_clear(&rs);
    ma_archive_destroy(a);
    free(q);
    free(k);
    free(v);
}

static void test_sparse_all_chunks_equals_full(void **state)
{
    (void)state;
    sparse_all_is_full(MA_SELECTOR_CHUNKS, MA_CHUNK_SCORE_BOUND);
    sparse_all_is_full(MA_SELECTOR_CHUNKS, MA_CHUNK_SCORE_MEAN);
    sparse_all_is_full(MA_SELECTOR_CHUNKS, MA_CHUNK_SCORE_BOTH);
    sparse_all_is_full(MA_SELECTOR_INDEX, MA_CHUNK_SCORE_BOUND);
}

/* A sparse read is exact attention over what it touched: compare with the reference over those chunks. */
static void test_sparse_chunks_exact_over_selection(void **state)
{
    (void)state;
    rng_state = 5;
    ma_params p = mkparams(2, 8, 4, 16, 3, MA_SELECTOR_CHUNKS);
    float *k, *v;
    const size_t T = 400;
    ma_archive *a = filled(&p, T, &k, &v);
    float *q = randv(16);
    float out[8];
    double want[8];
    ma_read_result r = {.v = out};
    assert_int_equal(ma_archive_read_sparse(a, q, 0, &r), 0);
    assert_int_equal(r.n_chunks, 3);
    uint64_t ids[48];
    size_t n = 0;
    for (size_t c = 0; c < r.n_chunks; c++) {
        if (c)
            assert_true(r.chunks[c] > r.chunks[c - 1]);
        for (uint64_t i = r.chunks[c] * 16ull; i < r.chunks[c] * 16ull + 16 && i < T; i++)
            ids[n++] = i;
    }
    ref_best rb;
    reference(2, 8, 4, k, v, ids, 0, n, q, want, &rb);
    expect_close(out, want, 8, 1e-5);
    assert_int_equal(r.pointer, rb.pointer);
    assert_int_equal(r.events_scored, n);
    ma_read_result_clear(&r);
    ma_archive_destroy(a);
    free(q);
    free(k);
    free(v);
}

/* The chunks selector with structure it can see: small filler keys, one large key along a direction.
 * The bound, the mean and both must pick the needle's chunk with topk = 1. */
static void test_chunks_selector_finds_structured_needle(void **state)
{
    (void)state;
    rng_state = 6;
    const int d = 16, C = 32;
    const size_t T = 32 * 40, needle = 777;
    ma_params p = mkparams(1, d, d, C, 1, MA_SELECTOR_CHUNKS);
    float *k = randv(T * d), *v = randv(T * d);
    for (size_t i = 0; i < T * d; i++)
        k[i] *= 0.1f;
    for (int j = 0; j < d; j++)
        k[needle * d + j] = (j % 2 ? 1.0f : -1.0f);
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    assert_int_equal(ma_archive_append(a, T, k, v), 0);
    const ma_chunk_score modes[] = {MA_CHUNK_SCORE_BOUND, MA_CHUNK_SCORE_MEAN, MA_CHUNK_SCORE_BOTH};
    for (size_t m = 0; m < 3; m++) {
        ma_archive_set_chunk_score(a, modes[m]);
        float out[16];
        ma_read_result r = {.v = out};
        assert_int_equal(ma_archive_read_sparse(a, k + needle * d, 0, &r), 0);
        assert_int_equal(r.n_chunks, 1);
        assert_int_equal(r.chunks[0], needle / C);
        assert_int_equal(r.pointer, needle);
        assert_true(r.score > 0.999);
        ma_read_result_clear(&r);
    }
    ma_archive_destroy(a);
    free(k);
    free(v);
}

/* ---- paging ---------------------------------------------------------------------------------- */

typedef struct {
    const float *k, *v;
    size_t kf, vf;
    int C;
    uint32_t fail_chunk;   /* load of this chunk fails with MA_EIO (UINT32_MAX: never) */
    int loads;             /* (racy under threads; only read single-threaded) */
} mem_source;

static int mem_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    mem_source *s = ctx;
    if (chunk == s->fail_chunk)
        return MA_EIO;
    size_t first = (size_t)chunk * s->C;
    memcpy(k, s->k + first * s->kf, n * s->kf * sizeof(float));
    memcpy(v, s->v + first * s->vf, n * s->vf * sizeof(float));
    __atomic_add_fetch(&s->loads, 1, __ATOMIC_RELAXED);
    return 0;
}

/* The source's single-event reads (load_events), counted apart from chunk loads. */
static int mem_events_loaded;
static int mem_load_events(void *ctx, const uint64_t *ids, size_t n, float *k, float *v)
{
    mem_source *s = ctx;
    for (size_t i = 0; i < n; i++) {
        if (i && ids[i] <= ids[i - 1])
            return MA_EINVAL;
        if (ids[i] / (uint64_t)s->C == s->fail_chunk)
            return MA_EIO;
        memcpy(k + i * s->kf, s->k + ids[i] * s->kf, s->kf * sizeof(float));
        memcpy(v + i * s->vf, s->v + ids[i] * s->vf, s->vf * sizeof(float));
    }
    __atomic_add_fetch(&mem_events_loaded, (int)n, __ATOMIC_RELAXED);
    return 0;
}

/* Runs full, window and sparse reads of q on a and b and requires identical bits. */
static void same_reads(const ma_archive *a, const ma_archive *b, const float *q, size_t vlen, int topk)
{
    float *oa = malloc(vlen * sizeof(float)), *ob = malloc(vlen * sizeof(float));
    for (int kind = 0; kind < 3; kind++) {
        ma_read_result ra = {.v = oa}, rb = {.v = ob};
        int x = kind == 0 ? ma_archive_read_full(a, q, &ra)
              : kind == 1 ? ma_archive_read_window(a, q, 0, &ra) : ma_archive_read_sparse(a, q, topk, &ra);
        int y = kind == 0 ? ma_archive_read_full(b, q, &rb)
              : kind == 1 ? ma_archive_read_window(b, q, 0, &rb) : ma_archive_read_sparse(b, q, topk, &rb);
        assert_int_equal(x, 0);
        assert_int_equal(y, 0);
        assert_memory_equal(oa, ob, vlen * sizeof(float));
        assert_int_equal(ra.pointer, rb.pointer);
        assert_true(ra.score == rb.score && ra.weight == rb.weight);
        assert_int_equal(ra.n_chunks, rb.n_chunks);
        assert_memory_equal(ra.chunks, rb.chunks, ra.n_chunks * sizeof(uint32_t));
        assert_int_equal(ra.events_scored, rb.events_scored);
        ma_read_result_clear(&ra);
        ma_read_result_clear(&rb);
    }
    free(oa);
    free(ob);
}

static void paging(ma_selector sel)
{
    rng_state = 7 + sel;
    ma_params p = mkparams(2, 8, 4, 16, 4, sel);
    p.window = 40;
    const size_t T = 2100;
    float *k = randv(T * 16), *v = randv(T * 8);
    ma_archive *a, *ref;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    assert_int_equal(ma_archive_append(a, T, k, v), 0);
    assert_int_equal(ma_archive_create(&p, &ref), 0);
    assert_int_equal(ma_archive_append(ref, T, k, v), 0);

    mem_source ms = {.k = k, .v = v, .kf = 16, .vf = 8, .C = 16, .fail_chunk = UINT32_MAX};
    ma_chunk_source src = {.load = mem_load, .ctx = &ms};
    assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){0}, 2), MA_EINVAL);
    assert_int_equal(ma_archive_set_source(a, src, 0), MA_EINVAL);
    assert_int_equal(ma_archive_set_source(a, src, 2), 0);
    size_t before = ma_archive_bytes(a);
    ma_archive_release(a);
    size_t after = ma_archive_bytes(a);
    /* Sealed chunks (all but the partial tail of 2100 % 16 = 4 events) left RAM. */
    assert_true(before - after >= (T - 4) * (16 + 8) * sizeof(float));

    for (int t = 0; t < 4; t++) {
        float *q = randv(16);
        same_reads(ref, a, q, 8, 0);
        same_reads(ref, a, q, 8, 7);   /* more chunks than the cache holds */
        free(q);
    }
    assert_true(ms.loads > 0);
    /* The cache is back within its capacity: 2 entries. */
    size_t entry = 16 * (16 + 8) * sizeof(float);
    /* Slack: the cache's entry headers and its pointer table, which a full read grew to every chunk. */
    assert_true(ma_archive_bytes(a) <= after + 2 * entry + 1024 + 2 * 8 * ma_archive_chunks(a));
    assert_true(ma_archive_bytes(a) >= after + 2 * entry);

    float kk[16], vv[8];
    assert_int_equal(ma_archive_get(a, 1234, kk, vv), 0);
    assert_memory_equal(kk, k + 1234 * 16, sizeof kk);

    /* A failing source: the error comes back, nothing is left half-done. */
    ms.fail_chunk = 3;
    float out[8];
    ma_read_result r = {.v = out};
    assert_int_equal(ma_archive_read_full(a, k, &r), MA_EIO);
    assert_null(r.chunks);
    assert_int_equal(ma_archive_get(a, 3 * 16 + 1, kk, vv), MA_EIO);
    ms.fail_chunk = UINT32_MAX;
    same_reads(ref, a, k, 8, 0);

    /* Appends after a release continue the tail and seal new chunks that stay owned until released. */
    float *k2 = randv(100 * 16), *v2 = randv(100 * 8);
    assert_int_equal(ma_archive_append(a, 100, k2, v2), 0);
    assert_int_equal(ma_archive_append(ref, 100, k2, v2), 0);
    same_reads(ref, a, k2 + 50 * 16, 8, 0);
    free(k2);
    free(v2);
    ma_archive_destroy(a);
    ma_archive_destroy(ref);
    free(k);
    free(v);
}

static void test_paging_chunks(void **state)
{
    (void)state;
    paging(MA_SELECTOR_CHUNKS);
}

static void test_paging_index(void **state)
{
    (void)state;
    paging(MA_SELECTOR_INDEX);
}

typedef struct {
    const ma_archive *a;
    const float *qs;
    int nq;
    float *out;        /* nq × 8 */
    int64_t *ptr;
    int rc;
} reader_job;

static void *reader(void *arg)
{
    reader_job *j = arg;
    for (int i = 0; i < j->nq && j->rc == 0; i++) {
        ma_read_result r = {.v = j->out + i * 8};
        j->rc = i % 3 == 0 ? ma_archive_read_full(j->a, j->qs + i * 16, &r)
                           : ma_archive_read_sparse(j->a, j->qs + i * 16, 5, &r);
        j->ptr[i] = r.pointer;
        ma_read_result_clear(&r);
    }
    return NULL;
}

static void test_concurrent_paged_reads(void **state)
{
    (void)state;
    rng_state = 9;
    ma_params p = mkparams(2, 8, 4, 16, 4, MA_SELECTOR_CHUNKS);
    float *k, *v;
    const size_t T = 1000;
    ma_archive *a = filled(&p, T, &k, &v);
    mem_source ms = {.k = k, .v = v, .kf = 16, .vf = 8, .C = 16, .fail_chunk = UINT32_MAX};
    assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &ms}, 3), 0);
    ma_archive_release(a);
    size_t idle = ma_archive_bytes(a);

    enum { THREADS = 4, NQ = 12 };
    float *qs = randv(NQ * 16);
    float want[NQ * 8];
    int64_t wptr[NQ];
    reader_job solo = {a, qs, NQ, want, wptr, 0};
    reader(&solo);
    assert_int_equal(solo.rc, 0);

    pthread_t th[THREADS];
    reader_job jobs[THREADS];
    float outs[THREADS][NQ * 8];
    int64_t ptrs[THREADS][NQ];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (reader_job){a, qs, NQ, outs[t], ptrs[t], 0};
        assert_int_equal(pthread_create(&th[t], NULL, reader, &jobs[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(jobs[t].rc, 0);
        assert_memory_equal(outs[t], want, sizeof want);
        assert_memory_equal(ptrs[t], wptr, sizeof wptr);
    }
    /* Extra entries taken under contention were given back: at most the 3 cached chunks remain. */
    size_t entry = 16 * (16 + 8) * sizeof(float);
    assert_true(ma_archive_bytes(a) <= idle + 3 * entry + 1024);
    ma_archive_destroy(a);
    free(qs);
    free(k);
    free(v);
}

/* ---- meta serialisation ---------------------------------------------------------------------- */

static void meta_roundtrip(ma_selector sel, size_t T)
{
    rng_state = 11 + sel + T;
    ma_params p = mkparams(2, 8, 4, 16, 4, sel);
    p.window = 50;
    const size_t more = 2000;   /* past the index's next rebuild (at 2·T) for T = 1900 */
    float *k = randv((T + more) * 16), *v = randv((T + more) * 8);
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    assert_int_equal(ma_archive_append(a, T, k, v), 0);

    void *buf;
    size_t len;
    assert_int_equal(ma_archive_serialize_meta(a, &buf, &len), 0);
    mem_source ms = {.k = k, .v = v, .kf = 16, .vf = 8, .C = 16, .fail_chunk = UINT32_MAX};
    ma_chunk_source src = {mem_load, &ms};
    ma_archive *b;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, T, src, 4, NULL}, &b), 0);
    assert_int_equal(ma_archive_length(b), T);
    assert_int_equal(ma_archive_chunks(b), ma_archive_chunks(a));

    void *buf2;
    size_t len2;
    assert_int_equal(ma_archive_serialize_meta(b, &buf2, &len2), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(buf2, buf, len);
    free(buf2);

    for (int t = 0; t < 3 && T > 0; t++) {
        float *q = randv(16);
        same_reads(a, b, q, 8, 0);
        free(q);
    }
    if (T > 0)
        same_reads(a, b, k + (T / 2) * 16, 8, 0);
    assert_int_equal(ma_archive_meta_generation(b), ma_archive_meta_generation(a));
    /* Both continue identically (crossing the index's next rebuild for the larger T), in uneven batches. */
    uint64_t gen = ma_archive_meta_generation(a);
    for (size_t i = T, n; i < T + more; i += n) {
        n = 1 + (i * 13) % 97;
        n = n < T + more - i ? n : T + more - i;
        assert_int_equal(ma_archive_append(a, n, k + i * 16, v + i * 8), 0);
        assert_int_equal(ma_archive_append(b, n, k + i * 16, v + i * 8), 0);
    }
    if (sel == MA_SELECTOR_INDEX && T > 1024)
        assert_true(ma_archive_meta_generation(a) == gen + 1);
    assert_int_equal(ma_archive_meta_generation(b), ma_archive_meta_generation(a));
    same_reads(a, b, k + (T + 10) * 16, 8, 0);
    same_reads(a, b, k + 5 * 16, 8, 3);
    for (int t = 0; t < 5; t++) {
        float *q = randv(16);
        same_reads(a, b, q, 8, 0);
        free(q);
    }

    /* Foreign, truncated, corrupted or mismatching buffers. */
    ma_archive *c = NULL;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len - 1, T, src, 4, NULL}, &c), MA_ECORRUPT);
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, 12, T, src, 4, NULL}, &c), MA_ECORRUPT);
    unsigned char *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[len / 2] ^= 0x10;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){bad, len, T, src, 4, NULL}, &c), MA_ECORRUPT);
    free(bad);
    ma_params other = p;
    other.dim = 9;
    assert_int_equal(ma_archive_restore_meta(&other, &(ma_archive_saved){buf, len, T, src, 4, NULL}, &c), MA_ECORRUPT);
    other = p;
    other.selector = sel == MA_SELECTOR_INDEX ? MA_SELECTOR_CHUNKS : MA_SELECTOR_INDEX;
    assert_int_equal(ma_archive_restore_meta(&other, &(ma_archive_saved){buf, len, T, src, 4, NULL}, &c), MA_ECORRUPT);
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, T, (ma_chunk_source){0}, 4, NULL}, &c), MA_EINVAL);
    assert_null(c);
    /* A source that fails during restore: its error, no archive. */
    for (uint32_t fc = 0; T > 0 && fc < 2; fc++) {   /* a sealed chunk, the tail chunk */
        ms.fail_chunk = fc == 0 ? 0 : (uint32_t)((T - 1) / 16);
        assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, T, src, 4, NULL}, &c), MA_EIO);
        assert_null(c);
    }

    free(buf);
    ma_archive_destroy(a);
    ma_archive_destroy(b);
    free(k);
    free(v);
}

static void test_meta_roundtrip(void **state)
{
    (void)state;
    meta_roundtrip(MA_SELECTOR_CHUNKS, 0);
    meta_roundtrip(MA_SELECTOR_CHUNKS, 333);
    meta_roundtrip(MA_SELECTOR_CHUNKS, 320);
    meta_roundtrip(MA_SELECTOR_INDEX, 7);
    meta_roundtrip(MA_SELECTOR_INDEX, 1900);
}

/* The meta blob changes exactly when its generation does (at index rebuilds; never for chunks), and it
 * holds nothing per event. A paged index archive keeps ids and 4-bit codes, not keys. */
static void test_meta_generation_and_bytes(void **state)
{
    (void)state;
    rng_state = 14;
    const size_t T = 5000, kf = 16;
    float *k = randv(T * kf), *v = randv(T * kf);
    for (int sel = 0; sel < 2; sel++) {
        ma_params p = mkparams(1, 16, 16, 16, 4, sel ? MA_SELECTOR_INDEX : MA_SELECTOR_CHUNKS);
        ma_archive *a;
        assert_int_equal(ma_archive_create(&p, &a), 0);
        void *prev;
        size_t prevlen;
        assert_int_equal(ma_archive_serialize_meta(a, &prev, &prevlen), 0);
        uint64_t gen = ma_archive_meta_generation(a), changes = 0;
        for (size_t i = 0, n; i < T; i += n) {
            n = 1 + (i * 31) % 200;
            n = n < T - i ? n : T - i;
            assert_int_equal(ma_archive_append(a, n, k + i * kf, v + i * kf), 0);
            void *cur;
            size_t curlen;
            assert_int_equal(ma_archive_serialize_meta(a, &cur, &curlen), 0);
            bool same = curlen == prevlen && memcmp(cur, prev, curlen) == 0;
            uint64_t g = ma_archive_meta_generation(a);
            assert_int_equal(same, g == gen);
            changes += g != gen;
            gen = g;
            free(prev);
            prev = cur;
            prevlen = curlen;
        }
        /* Index: builds at ~1,024, ~2,048, ~4,096 events; the blob is the header and the centroids. */
        assert_int_equal(changes, sel ? 3 : 0);
        assert_true(prevlen < (sel ? 100 + 4096 + 140 * kf * sizeof(float) : 100));
        free(prev);

        mem_source ms = {.k = k, .v = v, .kf = kf, .vf = kf, .C = 16, .fail_chunk = UINT32_MAX};
        assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &ms}, 1), 0);
        ma_archive_release(a);
        size_t b = ma_archive_bytes(a);
        if (sel) {
            /* Per event: id 4 + scale 4 + 4-bit codes 8 + alpha 4 + sign factor 4 + sign codes 2 bytes, in
             * blocks of 32 (at most one partly used per list, 128 lists) from arenas that at most double
             * what is used; at most 1,023 pending keys, the tail chunk, the centroids. */
            const size_t per = 4 + 4 + 8 + 4 + 4 + 2;
            assert_true(b >= T * per);
            assert_true(b < (T + 128 * 32) * per * 2 + 1024 * kf * sizeof(float) + 140 * kf * sizeof(float) + 16384);
        } else {
            /* Summaries: 3 rows of H·d floats per chunk. */
            assert_true(b >= (T / 16) * 3 * kf * sizeof(float));
        }
        ma_archive_destroy(a);
    }
    free(k);
    free(v);
}

/* Keys of k (kf floats an event) for ma_ivf_train / ma_ivf_from_build. */
static int keys_of(void *ctx, uint64_t first, size_t n, float *out)
{
    memcpy(out, (const float *)ctx + first * 16, n * 16 * sizeof(float));
    return 0;
}

/* A managed archive's build made beside its index and swapped in (ma_ivf_from_build over the first
 * block, ma_archive_index_swap adding the events appended since from the archive's keys, paged chunks
 * included) answers as the archive that built in place at the same point; it keeps the new build's rows
 * of every block it listed, the old index is handed back, and a swap that is not newer is refused. */
static void test_index_swap(void **state)
{
    (void)state;
    rng_state = 19;
    const size_t T1 = 2500, T = 3300;
    float *k = randv(T * 16), *v = randv(T * 8);
    ma_params p = mkparams(1, 16, 8, 16, 4, MA_SELECTOR_INDEX);
    ma_archive *a, *ref;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    assert_int_equal(ma_archive_create(&p, &ref), 0);
    ma_archive_set_managed(a, true);
    assert_int_equal(ma_archive_append(a, T1, k, v), 0);
    assert_int_equal(ma_archive_append(ref, T1, k, v), 0);   /* builds in place at 1,024 and 2,048 */
    ma_archive_index_rows_done(a);
    uint64_t point;
    uint32_t bno;
    assert_true(ma_archive_index_due(a, &point, &bno));      /* managed: nothing built yet */
    assert_int_equal(point, 2048);
    ma_ivf_build *b;
    assert_int_equal(ma_ivf_train(1, 16, point, bno, keys_of, k, NULL, &b), 0);
    ma_ivf *y, *old = NULL;
    assert_int_equal(ma_ivf_from_build(b, 2048, NULL, keys_of, k, &y), 0);
    ma_ivf_rows_done(y);   /* as if staged */
    ma_ivf_build_free(b);
    /* Meanwhile the old index takes appends; its chunks are paged out. */
    assert_int_equal(ma_archive_append(a, T - T1, k + T1 * 16, v + T1 * 8), 0);
    assert_int_equal(ma_archive_append(ref, T - T1, k + T1 * 16, v + T1 * 8), 0);
    ma_archive_index_rows_done(a);
    mem_source ms = {.k = k, .v = v, .kf = 16, .vf = 8, .C = 16, .fail_chunk = UINT32_MAX};
    assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &ms}, 4), 0);
    ma_archive_release(a);

    assert_int_equal(ma_archive_index_swap(a, y, &old), 0);
    assert_non_null(old);
    assert_true(old != y);
    ma_ivf_destroy(old);
    ma_index_state st, sr;
    ma_archive_index_state(a, &st);
    ma_archive_index_state(ref, &sr);
    assert_int_equal(st.build, sr.build);
    assert_int_equal(st.nlist, sr.nlist);
    assert_int_equal(st.events, T);
    assert_false(ma_archive_index_due(a, NULL, NULL));
    uint32_t rb;
    uint64_t first;
    const void *l, *c;
    assert_int_equal(ma_archive_index_rows(a, &rb, &first, &l, &c), T / 1024 - 2);   /* block 2 */
    assert_int_equal(first, 2);
    assert_int_equal(rb, st.build);
    same_reads(a, ref, k + 100 * 16, 8, 0);
    same_reads(a, ref, k + 3000 * 16, 8, 0);   /* a pending event */
    for (int t = 0; t < 4; t++) {
        float *q = randv(16);
        same_reads(a, ref, q, 8, 0);
        free(q);
    }
    /* Not newer: refused, nothing changes. */
    assert_int_equal(ma_ivf_train(1, 16, 2048, st.build, keys_of, k, NULL, &b), 0);
    assert_int_equal(ma_ivf_from_build(b, 2048, NULL, keys_of, k, &y), 0);
    old = NULL;
    assert_int_equal(ma_archive_index_swap(a, y, &old), MA_EINVAL);
    assert_null(old);
    ma_ivf_destroy(y);
    ma_ivf_build_free(b);
    same_reads(a, ref, k + 100 * 16, 8, 0);
    ma_archive_destroy(a);
    ma_archive_destroy(ref);
    free(k);
    free(v);
}

/* A batch of sparse reads answers as the reads one by one, bit for bit (both selectors). */
static void test_sparse_batch_equals_single(void **state)
{
    (void)state;
    rng_state = 15;
    const size_t T = 6000, nq = 64;
    float *k = randv(T * 16), *v = randv(T * 8), *Q = randv(nq * 16);
    memcpy(Q, k + 100 * 16, 16 * sizeof(float));
    for (int sel = 0; sel < 2; sel++) {
        ma_params p = mkparams(2, 8, 4, 16, 4, sel ? MA_SELECTOR_INDEX : MA_SELECTOR_CHUNKS);
        ma_archive *a;
        assert_int_equal(ma_archive_create(&p, &a), 0);
        assert_int_equal(ma_archive_append(a, T, k, v), 0);
        float *ob = malloc(nq * 8 * sizeof(float)), o1[8];
        ma_read_result *rb = calloc(nq, sizeof *rb);
        for (size_t i = 0; i < nq; i++)
            rb[i].v = ob + i * 8;
        assert_int_equal(ma_archive_read_sparse_batch(a, Q, nq, 0, rb), 0);
        for (size_t i = 0; i < nq; i++) {
            ma_read_result r1 = {.v = o1};
            assert_int_equal(ma_archive_read_sparse(a, Q + i * 16, 0, &r1), 0);
            assert_memory_equal(o1, ob + i * 8, sizeof o1);
            assert_int_equal(r1.pointer, rb[i].pointer);
            assert_true(r1.score == rb[i].score && r1.weight == rb[i].weight);
            assert_int_equal(r1.n_chunks, rb[i].n_chunks);
            assert_memory_equal(r1.chunks, rb[i].chunks, r1.n_chunks * sizeof(uint32_t));
            assert_int_equal(r1.events_scored, rb[i].events_scored);
            ma_read_result_clear(&r1);
            ma_read_result_clear(&rb[i]);
        }
        free(ob);
        free(rb);
        ma_archive_destroy(a);
    }
    free(k);
    free(v);
    free(Q);
}

/* Adaptive probing (H = 1, ma_archive_set_adaptive; docs/ARCHIVE.md "Adaptive probing"): 2^15 random
 * keys of d = 64 (362 lists, 64 probed at topk 16), 48 queries near keys (cosines 1.0, 0.9, 0.8) and 16
 * random ones. Every read equals, bit for bit: the batch of the 64 against the reads one by one; a paged
 * archive (candidates read alone) against the resident one; an archive restored from its meta blob
 * (keys streamed again) against the original — so the stopping decision is a function of the query and
 * the index. Against fixed probing (ma_archive_set_adaptive false) on the same archive: never more events
 * scored, fewer for the queries near keys (the rule stops; disabling it fails here), and the same pointer
 * as the exact full read for every query at cosine 1.0 and 0.9 that fixed probing got right. */
static void test_adaptive_reads(void **state)
{
    (void)state;
    rng_state = 91;
    const int d = 64;
    const size_t T = 32768, nq = 64, near = 48;
    ma_params p = mkparams(1, d, 16, 64, 16, MA_SELECTOR_INDEX);
    float *k = randv(T * d), *v = randv(T * 16), *Q = randv(nq * d);
    for (size_t i = 0; i < near; i++) {   /* q = c·k + sqrt(1 − c²)·|k|·u, u a random unit vector */
        const double c = i < 16 ? 1.0 : i < 32 ? 0.9 : 0.8;
        const float *kn = k + ((i * 977 + 13) % T) * d;
        float *q = Q + i * d;
        double kk = 0, uu = 0;
        for (int j = 0; j < d; j++)
            kk += (double)kn[j] * kn[j], uu += (double)q[j] * q[j];
        for (int j = 0; j < d; j++)
            q[j] = (float)(c * kn[j] + sqrt(1 - c * c) * sqrt(kk / uu) * q[j]);
    }
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    ma_archive_set_adaptive(a, true);   /* off by default */
    assert_int_equal(ma_archive_append(a, T, k, v), 0);

    /* A batch equals the single reads. */
    float *ob = malloc(nq * 16 * sizeof(float)), o1[16];
    ma_read_result *rb = calloc(nq, sizeof *rb);
    for (size_t i = 0; i < nq; i++)
        rb[i].v = ob + i * 16;
    assert_int_equal(ma_archive_read_sparse_batch(a, Q, nq, 0, rb), 0);
    uint64_t *scored = malloc(nq * sizeof *scored);
    int64_t *ptr = malloc(nq * sizeof *ptr);
    for (size_t i = 0; i < nq; i++) {
        ma_read_result r1 = {.v = o1};
        assert_int_equal(ma_archive_read_sparse(a, Q + i * d, 0, &r1), 0);
        assert_memory_equal(o1, ob + i * 16, sizeof o1);
        assert_int_equal(r1.pointer, rb[i].pointer);
        assert_true(r1.score == rb[i].score && r1.weight == rb[i].weight);
        assert_int_equal(r1.n_chunks, rb[i].n_chunks);
        assert_memory_equal(r1.chunks, rb[i].chunks, r1.n_chunks * sizeof(uint32_t));
        assert_int_equal(r1.events_scored, rb[i].events_scored);
        scored[i] = r1.events_scored;
        ptr[i] = r1.pointer;
        ma_read_result_clear(&r1);
        ma_read_result_clear(&rb[i]);
    }

    /* Against fixed probing and the exact full read. */
    ma_archive_set_adaptive(a, false);
    size_t fewer = 0, fixed_right = 0, adaptive_right = 0;
    for (size_t i = 0; i < nq; i++) {
        ma_read_result rf = {.v = o1}, rx = {.v = o1};
        assert_int_equal(ma_archive_read_sparse(a, Q + i * d, 0, &rf), 0);
        assert_true(scored[i] <= rf.events_scored);
        assert_true(scored[i] >= 1024);   /* never before stage 2 has its full set */
        fewer += i < near && scored[i] < rf.events_scored;
        if (i < 32) {
            assert_int_equal(ma_archive_read_full(a, Q + i * d, &rx), 0);
            if (rf.pointer == rx.pointer) {
                fixed_right++;
                adaptive_right += ptr[i] == rx.pointer;
            }
            ma_read_result_clear(&rx);
        }
        ma_read_result_clear(&rf);
    }
    ma_archive_set_adaptive(a, true);
    printf("adaptive probing, 2^15 events: %zu of %zu queries near keys stopped early; pointer of the full read "
           "%zu/%zu (fixed probing right on those)\n", fewer, near, adaptive_right, fixed_right);
    assert_true(fewer >= near / 2);
    assert_int_equal(adaptive_right, fixed_right);

    /* Paged (candidates read alone) and restored archives answer with the same bits. */
    void *buf;
    size_t len;
    assert_int_equal(ma_archive_serialize_meta(a, &buf, &len), 0);
    mem_source ms = {.k = k, .v = v, .kf = (size_t)d, .vf = 16, .C = 64, .fail_chunk = UINT32_MAX};
    ma_chunk_source src = {mem_load, &ms};
    ma_archive *b, *c;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, T, src, 4, NULL}, &b), 0);
    ma_archive_set_adaptive(b, true);
    assert_int_equal(ma_archive_create(&p, &c), 0);
    ma_archive_set_adaptive(c, true);
    assert_int_equal(ma_archive_append(c, T, k, v), 0);
    assert_int_equal(ma_archive_set_source(c, src, 4), 0);
    ma_archive_set_event_loader(c, mem_load_events);
    ma_archive_release(c);
    for (size_t i = 0; i < nq; i += 3) {
        same_reads(a, b, Q + i * d, 16, 0);
        same_reads(a, c, Q + i * d, 16, 0);
    }
    free(buf);
    ma_archive_destroy(a);
    ma_archive_destroy(b);
    ma_archive_destroy(c);
    free(ob);
    free(rb);
    free(scored);
    free(ptr);
    free(k);
    free(v);
    free(Q);
}

/* ---- the needle ------------------------------------------------------------------------------ */

/* Among N random-key fillers, plant a needle at a random position; query = its key, and a query at
 * cosine 0.9 of it. Counts the trials whose sparse read (topk) points at the needle. */
static void needle_rates(ma_selector sel, ma_chunk_score cs, size_t N, int trials, int topk, int *exact,
                         int *near)
{
    const int d = 64;
    ma_params p = mkparams(1, d, d, 64, 16, sel);
    float *k = randv(N * d), *v = randv(N * d);
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    ma_archive_set_chunk_score(a, cs);
    assert_int_equal(ma_archive_append(a, N, k, v), 0);
    float q[64], out[64];
    *exact = *near = 0;
    for (int t = 0; t < trials; t++) {
        size_t needle = (size_t)(urand() * N);
        ma_read_result r = {.v = out};
        assert_int_equal(ma_archive_read_sparse(a, k + needle * d, topk, &r), 0);
        *exact += r.pointer == (int64_t)needle;
        ma_read_result_clear(&r);
        /* q = 0.9 k^ + sqrt(1 - 0.81) u, u a random unit vector orthogonal to k; scaled like k. */
        const float *kn = k + needle * d;
        double kk = 0, uk = 0, uu = 0;
        float u[64];
        for (int j = 0; j < d; j++)
            kk += (double)kn[j] * kn[j], u[j] = nrand();
        for (int j = 0; j < d; j++)
            uk += (double)u[j] * kn[j];
        for (int j = 0; j < d; j++)
            u[j] -= (float)(uk / kk * kn[j]), uu += (double)u[j] * u[j];
        double nk = sqrt(kk), nu = sqrt(uu);
        for (int j = 0; j < d; j++)
            q[j] = (float)(0.9 * kn[j] + sqrt(0.19) * nk * u[j] / nu);
        double cq = 0, qq = 0;
        for (int j = 0; j < d; j++)
            cq += (double)q[j] * kn[j], qq += (double)q[j] * q[j];
        assert_true(fabs(cq / sqrt(qq * kk) - 0.9) < 1e-4);
        r = (ma_read_result){.v = out};
        assert_int_equal(ma_archive_read_sparse(a, q, topk, &r), 0);
        *near += r.pointer == (int64_t)needle;
        ma_read_result_clear(&r);
    }
    ma_archive_destroy(a);
    free(k);
    free(v);
}

/* A source that reads single events: a paged sparse read (index selector) reads its candidates alone,
 * loads no chunk, and answers with the resident archive's bits; a candidate's chunk that is in the cache is
 * used from there; a failing single read is passed on. */
static void test_paged_sparse_reads_events(void **state)
{
    (void)state;
    rng_state = 77;
    ma_params p = mkparams(2, 8, 4, 16, 4, MA_SELECTOR_INDEX);
    p.window = 40;
    const size_t T = 3000;
    float *k, *v;
    ma_archive *ref = filled(&p, T, &k, &v), *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    for (size_t i = 0; i < T;) {   /* the batches of filled(): the same index */
        size_t n = 1 + (i * 7) % 11;
        if (n > T - i)
            n = T - i;
        assert_int_equal(ma_archive_append(a, n, k + i * 16, v + i * 8), 0);
        i += n;
    }
    mem_source ms = {.k = k, .v = v, .kf = 16, .vf = 8, .C = 16, .fail_chunk = UINT32_MAX};
    assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &ms}, 2), 0);
    ma_archive_set_event_loader(a, mem_load_events);
    ma_archive_release(a);
    float oa[8], ob[8];
    for (int t = 0; t < 6; t++) {
        float *q = randv(16);
        int before = ms.loads;
        mem_events_loaded = 0;
        ma_read_result ra = {.v = oa}, rb = {.v = ob};
        assert_int_equal(ma_archive_read_sparse(ref, q, 0, &ra), 0);
        assert_int_equal(ma_archive_read_sparse(a, q, 0, &rb), 0);
        assert_memory_equal(oa, ob, sizeof oa);
        assert_int_equal(ra.pointer, rb.pointer);
        assert_true(ra.score == rb.score && ra.weight == rb.weight);
        assert_int_equal(ra.n_chunks, rb.n_chunks);
        assert_memory_equal(ra.chunks, rb.chunks, ra.n_chunks * sizeof(uint32_t));
        assert_int_equal(ms.loads, before);          /* no chunk loaded ... */
        assert_true(mem_events_loaded > 0);          /* ... the candidates read alone */
        ma_read_result_clear(&ra);
        ma_read_result_clear(&rb);
        same_reads(ref, a, q, 8, 0);                 /* full and window too */
        free(q);
    }
    /* A chunk in the cache (ma_archive_get loads through it) serves its candidates. */
    float q[16], kk[16];
    assert_int_equal(ma_archive_get(a, 1000, kk, NULL), 0);
    memcpy(q, kk, sizeof q);
    ma_read_result r = {.v = oa}, rr = {.v = ob};
    assert_int_equal(ma_archive_read_sparse(a, q, 0, &r), 0);
    assert_int_equal(ma_archive_read_sparse(ref, q, 0, &rr), 0);
    assert_memory_equal(oa, ob, sizeof oa);
    assert_int_equal(r.pointer, rr.pointer);
    ma_read_result_clear(&r);
    ma_read_result_clear(&rr);
    /* A failing single read: the chunk of another read's pointer fails. */
    memcpy(q, k + 323 * 16, sizeof q);
    rr = (ma_read_result){.v = ob};
    assert_int_equal(ma_archive_read_sparse(ref, q, 0, &rr), 0);
    ms.fail_chunk = (uint32_t)(rr.pointer / 16);
    ma_read_result_clear(&rr);
    r = (ma_read_result){.v = oa};
    assert_int_equal(ma_archive_read_sparse(a, q, 0, &r), MA_EIO);
    assert_null(r.chunks);
    ma_archive_destroy(a);
    ma_archive_destroy(ref);
    free(k);
    free(v);
}

/* ---- streamed exact reads (issue 9 item 3) ----------------------------------------------------- */

/* Scales every query so that the softmax is peaked (a pointer worth comparing) but not one-hot. */
static float *sharp_query(size_t n, float gain)
{
    float *q = randv(n);
    for (size_t j = 0; j < n; j++)
        q[j] *= gain;
    return q;
}

/* Streamed full and window reads of a paged archive (cache of 1, so every chunk comes from the source)
 * equal the double reference on random inputs: several head counts (H > 1 finds its pointer by
 * revisiting spans), chunk sizes (many spans of 16 chunks, a partial tail), masks and skip bits. */
static void test_streamed_matches_reference(void **state)
{
    (void)state;
    static const int shapes[][4] = {{1, 16, 8, 4}, {2, 8, 5, 3}, {3, 8, 4, 16}, {4, 4, 4, 5}, {1, 64, 64, 64}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        rng_state = 900 + si;
        int H = shapes[si][0], d = shapes[si][1], dv = shapes[si][2], C = shapes[si][3];
        ma_params p = mkparams(H, d, dv, C, 4, MA_SELECTOR_CHUNKS);
        p.window = 77;
        const size_t T = (size_t)C * 16 * 5 + 7, kf = (size_t)H * d, vf = (size_t)H * dv;
        float *k, *v;
        ma_archive *a = filled(&p, T, &k, &v);
        mem_source ms = {.k = k, .v = v, .kf = kf, .vf = vf, .C = C, .fail_chunk = UINT32_MAX};
        assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &ms}, 1), 0);
        ma_archive_release(a);
        assert_int_equal(ma_archive_mask_reserve(a, T), 0);
        for (size_t i = 0; i < T; i++)
            if (i % 5 == 1 || i % 13 == 0)
                ma_archive_mask_set(a, i, i % 13 == 0 ? MA_MASK_FORGOTTEN : MA_MASK_SUPERSEDED, true);
        uint64_t *ids = malloc(T * sizeof *ids), *wids = malloc(T * sizeof *wids);
        float *out = malloc(vf * sizeof *out);
        double *want = malloc(vf * sizeof *want);
        const unsigned skips[] = {0, MA_MASK_FORGOTTEN, MA_MASK_ALL};
        for (int t = 0; t < 6; t++) {
            unsigned skip = skips[t % 3];
            size_t n = 0, nw = 0;
            for (size_t i = 0; i < T; i++)
                if (!(ma_archive_masked(a, i) & skip)) {
                    ids[n++] = i;
                    if (i >= T - 77)
                        wids[nw++] = i;
                }
            float *q = sharp_query(kf, 2.0f + (float)t);
            ref_best rb;
            ma_read_result r = {.v = out, .skip = skip};
            assert_int_equal(ma_archive_read_full(a, q, &r), 0);
            reference(H, d, dv, k, v, ids, 0, n, q, want, &rb);
            expect_close(out, want, vf, 1e-5);
            assert_int_equal(r.pointer, rb.pointer);
            assert_true(fabs(r.weight - rb.weight) < 1e-6);
            assert_true(fabs(r.score - rb.score) < 1e-6);
            assert_int_equal(r.events_scored, n);
            assert_int_equal(r.n_chunks, ma_archive_chunks(a));
            ma_read_result_clear(&r);
            r = (ma_read_result){.v = out, .skip = skip};
            assert_int_equal(ma_archive_read_window(a, q, 0, &r), 0);
            reference(H, d, dv, k, v, wids, 0, nw, q, want, &rb);
            expect_close(out, want, vf, 1e-5);
            assert_int_equal(r.pointer, rb.pointer);
            assert_true(fabs(r.weight - rb.weight) < 1e-6);
            assert_int_equal(r.events_scored, nw);
            assert_int_equal(r.chunks[0], (T - 77) / (size_t)C);
            ma_read_result_clear(&r);
            free(q);
        }
        /* The scan left the cache alone: it holds at most its one entry. */
        size_t entry = (size_t)C * (kf + vf) * sizeof(float);
        size_t idle = ma_archive_bytes(a);
        float *q = randv(kf);
        ma_read_result r = {.v = out};
        assert_int_equal(ma_archive_read_full(a, q, &r), 0);
        ma_read_result_clear(&r);
        assert_true(ma_archive_bytes(a) <= idle + entry + 256);
        free(q);
        free(ids);
        free(wids);
        free(out);
        free(want);
        ma_archive_destroy(a);
        free(k);
        free(v);
    }
}

/* A batch of exact reads (full and windows of every kind, every skip, more than one group of 8 queries)
 * equals the same reads one by one, bit for bit, resident and paged; a query that has nothing to attend
 * over is MA_EEMPTY on its own while the others are answered. */
static void test_exact_batch_equals_single(void **state)
{
    (void)state;
    for (int H = 1; H <= 3; H += 2) {
        rng_state = 950 + (unsigned)H;
        ma_params p = mkparams(H, 8, 6, 8, 4, MA_SELECTOR_INDEX);
        p.window = 30;
        const size_t T = 8 * 16 * 3 + 5, kf = (size_t)H * 8, vf = (size_t)H * 6, nq = 21;
        float *k, *v;
        ma_archive *a = filled(&p, T, &k, &v);
        assert_int_equal(ma_archive_mask_reserve(a, T), 0);
        for (size_t i = T - 12; i < T; i++)   /* the last 12 forgotten: a window of 10 is empty */
            ma_archive_mask_set(a, i, MA_MASK_FORGOTTEN, true);
        for (size_t i = 0; i < T; i += 4)
            ma_archive_mask_set(a, i, MA_MASK_SUPERSEDED, true);
        float *Q = randv(nq * kf), *ob = malloc(nq * vf * sizeof(float)), *os = malloc(vf * sizeof(float));
        int windows[21], rcs[21];
        ma_read_result rb[21];
        for (int paged = 0; paged < 2; paged++) {
            mem_source ms = {.k = k, .v = v, .kf = kf, .vf = vf, .C = 8, .fail_chunk = UINT32_MAX};
            if (paged) {
                assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &ms}, 2), 0);
                ma_archive_release(a);
            }
            for (size_t i = 0; i < nq; i++) {
                windows[i] = (int[]){-1, 0, 5, 10, 200, 100000, -1}[i % 7];
                rb[i] = (ma_read_result){.v = ob + i * vf, .skip = (unsigned[]){0, MA_MASK_FORGOTTEN, MA_MASK_ALL}[i % 3]};
            }
            assert_int_equal(ma_archive_read_exact_batch(a, Q, nq, windows, rb, rcs), 0);
            for (size_t i = 0; i < nq; i++) {
                ma_read_result rs = {.v = os, .skip = rb[i].skip};
                int rc = windows[i] < 0 ? ma_archive_read_full(a, Q + i * kf, &rs)
                                        : ma_archive_read_window(a, Q + i * kf, windows[i], &rs);
                assert_int_equal(rcs[i], rc);
                if (windows[i] == 10 && rb[i].skip)
                    assert_int_equal(rc, MA_EEMPTY);
                if (rc)
                    continue;
                assert_memory_equal(ob + i * vf, os, vf * sizeof(float));
                assert_int_equal(rb[i].pointer, rs.pointer);
                assert_true(rb[i].weight == rs.weight && rb[i].score == rs.score);
                assert_int_equal(rb[i].events_scored, rs.events_scored);
                assert_int_equal(rb[i].n_chunks, rs.n_chunks);
                assert_memory_equal(rb[i].chunks, rs.chunks, rs.n_chunks * sizeof(uint32_t));
                ma_read_result_clear(&rs);
                ma_read_result_clear(&rb[i]);
            }
        }
        free(Q);
        free(ob);
        free(os);
        ma_archive_destroy(a);
        free(k);
        free(v);
    }
}


static void test_needle_index_100k(void **state)
{
    (void)state;
    rng_state = 12;
    const int trials = 100;
    int exact, near;
    needle_rates(MA_SELECTOR_INDEX, MA_CHUNK_SCORE_BOUND, 100000, trials, 0, &exact, &near);
    printf("needle, index selector, 100,000 fillers, d = 64, topk 16 (default): query = key %d/%d, "
           "cos 0.9 %d/%d\n", exact, trials, near, trials);
    assert_int_equal(exact, trials);
    assert_true(near >= 99);
}

/* ---- many heads (issue 15 item 3) ---------------------------------------------------------------- */

/* ma_attn_mass against double precision: attending the first 150 of 400 events with, per head, the exact
 * log-mass of the other 250 added to the normaliser gives the weights of the attention over all 400
 * restricted to the 150: the pointer (largest summed weight among them), its weight and, with the mass in
 * the output's normaliser, the output. Without it in the output the output is ma_attn's, bit for bit; with
 * no mass at all everything is ma_attn's. */
static void test_attn_mass_reference(void **state)
{
    (void)state;
    enum { H = 3, d = 16, dv = 4, N = 400, S = 150 };
    rng_state = 4242;
    float *k = randv((size_t)N * H * d), *v = randv((size_t)N * H * dv);
    int moved = 0;
    for (int t = 0; t < 20; t++) {
        float q[H * d];
        for (int j = 0; j < H * d; j++)
            q[j] = 2.5f * nrand();
        double lz[H], lo[H], l[H][N];
        for (int h = 0; h < H; h++) {
            double mx = -INFINITY, mo = -INFINITY, z = 0, zo = 0;
            for (int i = 0; i < N; i++) {
                double s = 0;
                for (int j = 0; j < d; j++)
                    s += (double)q[h * d + j] * k[((size_t)i * H + h) * d + j];
                l[h][i] = s / sqrt((double)d);
                mx = l[h][i] > mx ? l[h][i] : mx;
                if (i >= S)
                    mo = l[h][i] > mo ? l[h][i] : mo;
            }
            for (int i = 0; i < N; i++) {
                z += exp(l[h][i] - mx);
                if (i >= S)
                    zo += exp(l[h][i] - mo);
            }
            lz[h] = mx + log(z);    /* over all N */
            lo[h] = mo + log(zo);   /* over the N - S left out */
        }
        double want[H * dv] = {0}, bw = -1;
        int64_t bp = -1;
        for (int i = 0; i < S; i++) {
            double sw = 0;
            for (int h = 0; h < H; h++) {
                double w = exp(l[h][i] - lz[h]);
                sw += w;
                for (int j = 0; j < dv; j++)
                    want[h * dv + j] += w * v[((size_t)i * H + h) * dv + j];
            }
            if (sw > bw) {
                bw = sw;
                bp = i;
            }
        }
        ma_attn_seg seg = {.k = k, .v = v, .n = S, .first = 0, .ids = NULL};
        float o1[H * dv], o0[H * dv], oa[H * dv], on[H * dv];
        ma_attn_best b1, b0, ba, bn;
        assert_int_equal(ma_attn_mass(&seg, 1, H, d, dv, q, lo, 1, o1, &b1), 0);
        assert_int_equal(ma_attn_mass(&seg, 1, H, d, dv, q, lo, 0, o0, &b0), 0);
        assert_int_equal(ma_attn(&seg, 1, H, d, dv, q, oa, &ba), 0);
        assert_int_equal(ma_attn_mass(&seg, 1, H, d, dv, q, NULL, 1, on, &bn), 0);
        assert_int_equal(b1.pointer, bp);
        assert_true(fabs(b1.weight - bw / H) <= 1e-5 * bw / H);
        expect_close(o1, want, H * dv, 1e-5);
        assert_int_equal(b0.pointer, b1.pointer);
        assert_true(b0.weight == b1.weight);
        assert_memory_equal(o0, oa, sizeof o0);
        assert_memory_equal(on, oa, sizeof on);
        assert_true(bn.pointer == ba.pointer && bn.weight == ba.weight && bn.score == ba.score);
        moved += ba.pointer != b1.pointer;
    }
    printf("the outside mass moved the pointer in %d of 20 queries\n", moved);
    free(k);
    free(v);
}

#ifndef HEADS_RECALL_BOUND
/* Measured here: 197 of 200 needles at cosine 0.9 (0.985) with the index's estimate of each head's mass
 * outside the candidates in the normalisers; 173 without it (0.865; bench_recall's figures are in
 * docs/RESULTS.md, "Many heads"); one shared index over the heads (before issue 15) is near 0.3. The
 * bound leaves room for a change of rounding, not for a change of method. */
#define HEADS_RECALL_BOUND 0.97
#endif

/* H = 8, d = 64, 2^17 events of clustered keys (bench_recall's generator: per head 64 clusters, a dominant
 * direction of amplitude 3..9, cluster centres in a rank-8 subspace, spread 0.2..1 per cluster): 200
 * needles queried at cosine 0.9 in every head; the sparse read's pointer must be the exact full read's in
 * at least HEADS_RECALL_BOUND of them (one shared index over the heads: 0.24-0.32). The same sparse reads
 * single and batched, paged (the candidates read alone) and resident, and from an archive restored from
 * its meta blob have the same bits. */
static void test_recall_heads_131072(void **state)
{
    (void)state;
    enum { H = 8, d = 64, dv = 8, NCL = 64, RK = 8, NQ = 200 };
    const size_t T = (size_t)1 << 17, KF = (size_t)H * d, VF = (size_t)H * dv;
    rng_state = 1515;
    float *u0 = randv((size_t)H * d), *U = randv((size_t)H * d * RK), *z = randv((size_t)H * NCL * RK);
    float sc[H * NCL];
    for (int h = 0; h < H; h++) {
        double nn = 0;
        for (int j = 0; j < d; j++)
            nn += (double)u0[h * d + j] * u0[h * d + j];
        for (int j = 0; j < d; j++)
            u0[h * d + j] /= (float)sqrt(nn);
        for (int c = 0; c < NCL; c++)
            sc[h * NCL + c] = (float)(0.2 + 0.8 * urand());
    }
    for (size_t i = 0; i < (size_t)H * NCL * RK; i++)
        z[i] *= 2.0f;
    for (size_t i = 0; i < (size_t)H * d * RK; i++)
        U[i] /= sqrtf((float)d);   /* centres of norm ~ 2·sqrt(RK)·1 */
    float *k = malloc(T * KF * sizeof *k), *v = randv(T * VF);
    assert_non_null(k);
    for (size_t i = 0; i < T; i++)
        for (int h = 0; h < H; h++) {
            int c = (int)(urand() * NCL);
            float a = (float)(3.0 + 6.0 * urand()), s = sc[h * NCL + c];
            float *kh = k + i * KF + (size_t)h * d;
            for (int j = 0; j < d; j++) {
                float m = 0;
                for (int r = 0; r < RK; r++)
                    m += U[((size_t)h * d + (size_t)j) * RK + r] * z[((size_t)h * NCL + (size_t)c) * RK + r];
                kh[j] = a * u0[h * d + j] + m + s * nrand();
            }
        }
    ma_params p = mkparams(H, d, dv, 64, 16, MA_SELECTOR_INDEX);
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    for (size_t i = 0; i < T; i += 4096)
        assert_int_equal(ma_archive_append(a, 4096, k + i * KF, v + i * VF), 0);
    assert_true(ma_ivf_per_head(ma_archive_index(a)));

    /* Needles at cosine 0.9 in every head. */
    float *Q = malloc(NQ * KF * sizeof *Q);
    for (int t = 0; t < NQ; t++) {
        size_t e = (size_t)(urand() * (double)T);
        for (int h = 0; h < H; h++) {
            const float *kh = k + e * KF + (size_t)h * d;
            float *qh = Q + t * KF + (size_t)h * d, u[d];
            double kk = 0, uk = 0, uu = 0;
            for (int j = 0; j < d; j++) {
                u[j] = nrand();
                kk += (double)kh[j] * kh[j];
                uk += (double)u[j] * kh[j];
            }
            for (int j = 0; j < d; j++) {
                u[j] -= (float)(uk / kk * kh[j]);
                uu += (double)u[j] * u[j];
            }
            for (int j = 0; j < d; j++)
                qh[j] = (float)(0.9 * kh[j] + sqrt(1 - 0.81) * sqrt(kk) * u[j] / sqrt(uu));
        }
    }
    float *of = malloc(NQ * VF * sizeof *of), *os = malloc(NQ * VF * sizeof *os), *ob = malloc(NQ * VF * sizeof *ob);
    ma_read_result rf[NQ], rs[NQ], rb[NQ];
    int rcs[NQ];
    for (int t = 0; t < NQ; t++) {
        rf[t] = (ma_read_result){.v = of + t * VF};
        rs[t] = (ma_read_result){.v = os + t * VF};
    }
    assert_int_equal(ma_archive_read_exact_batch(a, Q, NQ, NULL, rf, rcs), 0);
    assert_int_equal(ma_archive_read_sparse_batch(a, Q, NQ, 0, rs), 0);
    int hit = 0;
    for (int t = 0; t < NQ; t++) {
        assert_int_equal(rcs[t], 0);
        hit += rs[t].pointer == rf[t].pointer;
    }
    printf("recall at cosine 0.9, H = 8 clustered, 131,072 events: %d/%d (bound %.2f)\n", hit, NQ,
           HEADS_RECALL_BOUND);
    assert_true(hit >= HEADS_RECALL_BOUND * NQ);

    /* Single reads equal the batch's; a paged archive and a restored one answer with the same bits. */
    mem_source ms = {.k = k, .v = v, .kf = KF, .vf = VF, .C = 64, .fail_chunk = UINT32_MAX};
    ma_chunk_source src = {mem_load, &ms};
    void *meta;
    size_t len;
    assert_int_equal(ma_archive_serialize_meta(a, &meta, &len), 0);
    ma_archive *b;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){meta, len, T, src, 4, NULL}, &b), 0);
    free(meta);
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1) {
            assert_int_equal(ma_archive_set_source(a, src, 4), 0);
            ma_archive_set_event_loader(a, mem_load_events);
            ma_archive_release(a);
        }
        const ma_archive *x = pass == 2 ? b : a;
        for (int t = 0; t < NQ; t += 25) {
            rb[t] = (ma_read_result){.v = ob + t * VF};
            assert_int_equal(ma_archive_read_sparse(x, Q + t * KF, 0, &rb[t]), 0);
            assert_int_equal(rb[t].pointer, rs[t].pointer);
            assert_true(rb[t].weight == rs[t].weight && rb[t].score == rs[t].score);
            assert_int_equal(rb[t].events_scored, rs[t].events_scored);
            assert_memory_equal(ob + t * VF, os + t * VF, VF * sizeof(float));
            ma_read_result_clear(&rb[t]);
        }
    }
    for (int t = 0; t < NQ; t++) {
        ma_read_result_clear(&rf[t]);
        ma_read_result_clear(&rs[t]);
    }
    ma_archive_destroy(a);
    ma_archive_destroy(b);
    free(of);
    free(os);
    free(ob);
    free(Q);
    free(k);
    free(v);
    free(u0);
    free(U);
    free(z);
}

static void test_needle_chunks_rates(void **state)
{
    (void)state;
    rng_state = 13;
    const char *names[] = {"bound", "mean", "both"};
    for (int m = 0; m < 3; m++) {
        int exact, near;
        needle_rates(MA_SELECTOR_CHUNKS, (ma_chunk_score)m, 20000, 20, 0, &exact, &near);
        /* Reported, not required: chunk summaries of random keys carry little signal (docs/DESIGN.md 3.3). */
        printf("needle, chunks selector (%s), 20,000 fillers, C = 64, topk 16: query = key %d/20, cos 0.9 %d/20\n",
               names[m], exact, near);
    }
}

int main(void)
{
    openblas_set_num_threads(1);   /* as the daemon does: one BLAS thread per worker */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_matches_reference),
        cmocka_unit_test(test_window_matches_reference),
        cmocka_unit_test(test_empty_and_get),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_sparse_all_chunks_equals_full),
        cmocka_unit_test(test_sparse_chunks_exact_over_selection),
        cmocka_unit_test(test_chunks_selector_finds_structured_needle),
        cmocka_unit_test(test_paging_chunks),
        cmocka_unit_test(test_paging_index),
        cmocka_unit_test(test_concurrent_paged_reads),
        cmocka_unit_test(test_meta_roundtrip),
        cmocka_unit_test(test_index_swap),
        cmocka_unit_test(test_meta_generation_and_bytes),
        cmocka_unit_test(test_sparse_batch_equals_single),
        cmocka_unit_test(test_streamed_matches_reference),
        cmocka_unit_test(test_paged_sparse_reads_events),
        cmocka_unit_test(test_exact_batch_equals_single),
        cmocka_unit_test(test_needle_index_100k),
        cmocka_unit_test(test_needle_chunks_rates),
        cmocka_unit_test(test_attn_mass_reference),
        cmocka_unit_test(test_recall_heads_131072),
        cmocka_unit_test(test_adaptive_reads),
    };
    /* e.g. MA_TEST_FILTER='*concurrent*' for a ThreadSanitizer run of the paging cache alone */
    if (getenv("MA_TEST_FILTER"))
        cmocka_set_test_filter(getenv("MA_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
