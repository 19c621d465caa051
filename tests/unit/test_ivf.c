/*
 * tests/unit/test_ivf.c — the inverted-file index (core/ivf.c) and the top-m selection (core/attn.c).
 *
 * Checked against brute force written here: top-m selection (ties, NaN), exhaustive probes returning
 * every event once and top scores within the codes' quantisation error, the rebuild schedule and bytes,
 * clustering quality on separated blobs (lists do not mix blobs; a key probing one list finds its own),
 * determinism, independence of batching between rebuilds, restore by re-adding the keys (same state,
 * same answers, same growth), loader errors leaving the index unchanged, refusal of corrupt buffers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/attn.h"
#include "core/error.h"
#include "core/ivf.h"

#include "tests/unit/testrand.h"

/* ---- top-m ----------------------------------------------------------------------------------- */

static const float *ref_scores;

static int ref_cmp(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    float sx = isnan(ref_scores[x]) ? -INFINITY : ref_scores[x];
    float sy = isnan(ref_scores[y]) ? -INFINITY : ref_scores[y];
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return (x > y) - (x < y);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

static void test_topk_matches_sort(void **state)
{
    (void)state;
    rng_state = 1;
    const size_t sizes[] = {1, 2, 3, 5, 17, 100, 1000, 4097};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        float *s = malloc(n * sizeof *s);
        size_t *all = malloc(n * sizeof *all), *got = malloc(n * sizeof *got);
        for (int variant = 0; variant < 3; variant++) {
            for (size_t i = 0; i < n; i++) {
                /* variant 1: many ties; variant 2: ties and NaN */
                s[i] = variant == 0 ? nrand() : (float)(int)(urand() * 5);
                if (variant == 2 && urand() < 0.2)
                    s[i] = NAN;
                all[i] = i;
            }
            ref_scores = s;
            qsort(all, n, sizeof *all, ref_cmp);
            const size_t ms[] = {0, 1, 2, n / 3, n - 1, n, n + 5};
            for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++) {
                size_t m = ms[mi], k = m < n ? m : n, out = 12345;
                assert_int_equal(ma_topk(s, n, m, got, &out), 0);
                assert_int_equal(out, k);
                size_t *want = malloc((k ? k : 1) * sizeof *want);
                memcpy(want, all, k * sizeof *want);
                qsort(want, k, sizeof *want, cmp_size);
                assert_memory_equal(got, want, k * sizeof *want);
                free(want);
            }
        }
        free(s);
        free(all);
        free(got);
    }
}

/* ---- index ----------------------------------------------------------------------------------- */

typedef struct {
    const float *k;
    size_t D;
    int fail_at;      /* call number that fails, -1 never */
    int calls;
} key_src;

static int load_keys(void *ctx, uint64_t first, size_t n, float *k)
{
    key_src *s = ctx;
    if (s->calls++ == s->fail_at)
        return MA_EIO;
    memcpy(k, s->k + first * s->D, n * s->D * sizeof(float));
    return 0;
}

/* Adds keys [have, upto) of k in batches, rebuilding whenever the index asks (as the archive does). */
static void grow(ma_ivf *x, const float *k, size_t D, size_t have, size_t upto, size_t batch)
{
    key_src src = {k, D, -1, 0};
    for (size_t i = have; i < upto; i += batch) {
        assert_int_equal(ma_ivf_add(x, upto - i < batch ? upto - i : batch, k + i * D), 0);
        if (ma_ivf_want_rebuild(x))
            assert_int_equal(ma_ivf_rebuild(x, load_keys, &src), 0);
    }
    assert_int_equal(ma_ivf_count(x), upto);
}

static ma_ivf *build(int H, int d, const float *k, size_t n, size_t batch)
{
    ma_ivf *x;
    assert_int_equal(ma_ivf_create(H, d, &x), 0);
    grow(x, k, (size_t)H * d, 0, n, batch);
    return x;
}

static void assert_same_state(const ma_ivf *x, const ma_ivf *y)
{
    void *a, *b;
    size_t la, lb;
    assert_int_equal(ma_ivf_serialize(x, &a, &la), 0);
    assert_int_equal(ma_ivf_serialize(y, &b, &lb), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
}

/* Same answers, bit for bit: ids and number scored for the same queries and budgets. */
static void assert_same_answers(const ma_ivf *x, const ma_ivf *y, size_t D, int nprobe)
{
    uint64_t a[200], b[200], sa, sb;
    size_t na, nb;
    for (int t = 0; t < 20; t++) {
        float *q = randv(D);
        assert_int_equal(ma_ivf_search(x, q, nprobe, 200, a, &na, &sa), 0);
        assert_int_equal(ma_ivf_search(y, q, nprobe, 200, b, &nb, &sb), 0);
        assert_int_equal(na, nb);
        assert_int_equal(sa, sb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(q);
    }
}

static void test_rebuild_schedule(void **state)
{
    (void)state;
    rng_state = 2;
    const int d = 8;
    float *k = randv(4200 * d);
    ma_ivf *x;
    assert_int_equal(ma_ivf_create(0, d, &x), MA_EINVAL);
    assert_int_equal(ma_ivf_create(1, d, &x), 0);
    const struct { size_t upto; uint32_t nlist, builds; } steps[] = {
        {1023, 0, 0}, {1024, 64, 1}, {2047, 64, 1}, {2048, 91, 2}, {4095, 91, 2}, {4096, 128, 3}, {4200, 128, 3},
    };
    size_t have = 0;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        grow(x, k, d, have, steps[i].upto, steps[i].upto - have);
        have = steps[i].upto;
        assert_int_equal(ma_ivf_nlist(x), steps[i].nlist);
        assert_int_equal(ma_ivf_builds(x), steps[i].builds);
    }
    /* 4,096 events in lists (id, scale, 4 code bytes, alpha, sign-code factor and 1 sign byte each) in
     * blocks of 128 (at most one partly used block per list) carved from arenas that at most double what
     * is used, 104 pending (raw keys, room for at most 1,024), 128 centroids. */
    size_t b = ma_ivf_bytes(x), per = 4 + 4 + 4 + 4 + 4 + 1;
    assert_true(b >= 4096 * per + 104 * d * sizeof(float) + 128 * d * sizeof(float));
    assert_true(b <= 2 * (4096 / 128 + 128) * 128 * per + (1024 + 128) * d * sizeof(float) + 128 * 64 + 4096);
    assert_int_equal(ma_ivf_add(x, 0, NULL), 0);
    ma_ivf_destroy(x);
    ma_ivf_destroy(NULL);

    /* A session of a few events pays for those events, not for a whole block of raw keys: the pending
     * buffer grows by doubling from a small start (this caught 1,024 keys of room per fresh index). */
    assert_int_equal(ma_ivf_create(1, d, &x), 0);
    assert_int_equal(ma_ivf_add(x, 3, k), 0);
    assert_true(ma_ivf_bytes(x) <= 16 * d * sizeof(float) + 1024);
    ma_ivf_destroy(x);
    free(k);
}

/* Probing every list returns every event exactly once, and the code estimates rank within their
 * quantisation error of the exact top scores (brute force in double). */
static void test_exhaustive_probe(void **state)
{
    (void)state;
    rng_state = 3;
    const int H = 2, d = 6;
    const size_t n = 3000, D = (size_t)H * d;   /* 2,048 in lists, 952 pending */
    float *k = randv(n * D);
    ma_ivf *x = build(H, d, k, n, 77);
    uint32_t nl = ma_ivf_nlist(x);
    assert_true(nl > 1);
    uint64_t *ids = malloc(n * sizeof *ids), scored = 0;
    size_t got = 0;
    for (int t = 0; t < 10; t++) {
        float *q = randv(D);
        assert_int_equal(ma_ivf_search(x, q, (int)nl, n, ids, &got, &scored), 0);
        assert_int_equal(got, n);
        assert_int_equal(scored, n);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(ids[i], i);

        /* Exact scores, and a bound on each code's error: per head |q|_1·max|k|/14 (4-bit step / 2) plus
         * (|k|_1 + d·max|k|/14)·max|q|/254 (8-bit query step / 2). */
        double *s = malloc(n * sizeof *s), *err = malloc(n * sizeof *err);
        for (size_t i = 0; i < n; i++) {
            s[i] = err[i] = 0;
            for (int h = 0; h < H; h++) {
                const float *qh = q + h * d, *kh = k + i * D + h * d;
                double mq = 0, mk = 0, q1 = 0, k1 = 0;
                for (int j = 0; j < d; j++) {
                    s[i] += (double)qh[j] * kh[j];
                    mq = fmax(mq, fabs(qh[j]));
                    mk = fmax(mk, fabs(kh[j]));
                    q1 += fabs(qh[j]);
                    k1 += fabs(kh[j]);
                }
                err[i] += q1 * mk / 14 + (k1 + d * mk / 14) * mq / 254 + 1e-4;
            }
        }
        const size_t m = 10;
        assert_int_equal(ma_ivf_search(x, q, (int)nl, m, ids, &got, &scored), 0);
        assert_int_equal(got, m);
        double worst = INFINITY, maxerr = 0;
        for (size_t i = 0; i < m; i++) {
            if (i)
                assert_true(ids[i] > ids[i - 1]);
            worst = fmin(worst, s[ids[i]] - err[ids[i]]);
        }
        for (size_t i = 0; i < n; i++)
            maxerr = fmax(maxerr, err[i]);
        /* Nothing left out scores clearly above the answer's worst (its estimate would have beaten it). */
        size_t above = 0;
        for (size_t i = 0; i < n; i++)
            above += s[i] - err[i] > worst + maxerr;
        assert_true(above <= m - 1);
        /* Pending events are scored exactly: the best pending event by exact score is always in the top 1
         * when it is the best overall by more than any code's error. */
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (s[i] > s[best])
                best = i;
        double second = -INFINITY;
        for (size_t i = 0; i < n; i++)
            if (i != best)
                second = fmax(second, s[i] + err[i]);
        if (best >= 2048 && s[best] > second) {
            assert_int_equal(ma_ivf_search(x, q, (int)nl, 1, ids, &got, &scored), 0);
            assert_int_equal(ids[0], best);
        }
        free(s);
        free(err);
        free(q);
    }
    free(ids);
    ma_ivf_destroy(x);
    free(k);
}

/* Separated blobs: lists do not mix blobs, and a key probing one list probes its own list. */
static void test_cluster_quality(void **state)
{
    (void)state;
    rng_state = 4;
    const int d = 32, blobs = 20;
    const size_t n = 4096;   /* a rebuild at 4,096 leaves no pending event */
    float *centre = randv((size_t)blobs * d);
    float *k = malloc(n * d * sizeof *k);
    int *blob = malloc(n * sizeof *blob);
    for (size_t i = 0; i < n; i++) {
        blob[i] = (int)(urand() * blobs);
        for (int j = 0; j < d; j++)
            k[i * d + j] = centre[blob[i] * d + j] + 0.05f * nrand();
    }
    ma_ivf *x = build(1, d, k, n, 500);
    uint64_t *ids = malloc(n * sizeof *ids), scored;
    size_t got;
    int self = 0;
    for (int t = 0; t < 200; t++) {
        size_t i = (size_t)(urand() * n);
        assert_int_equal(ma_ivf_search(x, k + i * d, 1, n, ids, &got, &scored), 0);
        assert_true(scored > 0 && scored < n / 2);
        int found = 0;
        for (size_t r = 0; r < got; r++) {
            assert_int_equal(blob[ids[r]], blob[i]);
            found |= ids[r] == i;
        }
        self += found;
    }
    assert_true(self >= 199);
    free(ids);
    ma_ivf_destroy(x);
    free(centre);
    free(k);
    free(blob);
}

/* The state does not depend on batching; a restored index fed the same keys is the original, and both
 * grow the same way through the next rebuild. */
static void test_serialize_roundtrip(void **state)
{
    (void)state;
    rng_state = 5;
    const int H = 2, d = 8;
    const size_t n = 2500, D = (size_t)H * d;
    float *k = randv((n + 2000) * D);
    ma_ivf *x = build(H, d, k, n, 100);
    ma_ivf *twin = build(H, d, k, n, 100);   /* deterministic */
    assert_same_state(x, twin);
    assert_same_answers(x, twin, D, 3);
    ma_ivf_destroy(twin);

    void *buf;
    size_t len;
    assert_int_equal(ma_ivf_serialize(x, &buf, &len), 0);
    /* blob header 12, section header 16, H d nlist builds built_at 24, centroids, checksum 8: nothing per event */
    assert_int_equal(len, 12 + 16 + 4 * 4 + 8 + (size_t)ma_ivf_nlist(x) * D * sizeof(float) + 8);
    ma_ivf *y;
    assert_int_equal(ma_ivf_restore(H, d, buf, len, &y), 0);
    assert_int_equal(ma_ivf_count(y), 0);
    assert_int_equal(ma_ivf_nlist(y), ma_ivf_nlist(x));
    assert_int_equal(ma_ivf_want_rebuild(y), 0);
    for (size_t i = 0; i < n; i += 64)
        assert_int_equal(ma_ivf_add(y, n - i < 64 ? n - i : 64, k + i * D), 0);
    assert_same_state(x, y);
    assert_same_answers(x, y, D, 3);
    assert_same_answers(x, y, D, 1000);

    /* (Same batches: when a rebuild happens depends on where batches end, as it should.) */
    grow(x, k, D, n, n + 2000, 250);
    grow(y, k, D, n, n + 2000, 250);
    assert_int_equal(ma_ivf_builds(x), 3);   /* at 1,100, 2,200, 4,500 events */
    assert_same_state(x, y);
    assert_same_answers(x, y, D, 5);

    /* Corrupt, truncated, foreign, mismatching. */
    ma_ivf *z = NULL;
    assert_int_equal(ma_ivf_restore(H, d, buf, len - 1, &z), MA_ECORRUPT);
    assert_int_equal(ma_ivf_restore(H, d, buf, 10, &z), MA_ECORRUPT);
    unsigned char *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[len - 20] ^= 1;
    assert_int_equal(ma_ivf_restore(H, d, bad, len, &z), MA_ECORRUPT);
    free(bad);
    assert_int_equal(ma_ivf_restore(H, d + 1, buf, len, &z), MA_ECORRUPT);
    assert_int_equal(ma_ivf_restore(H, d, NULL, len, &z), MA_EINVAL);
    assert_null(z);

    free(buf);
    ma_ivf_destroy(x);
    ma_ivf_destroy(y);
    free(k);
}

/* An explicit rebuild: every event findable; a loader error leaves the index as it was. */
static void test_explicit_rebuild(void **state)
{
    (void)state;
    rng_state = 6;
    const int d = 4;
    const size_t n = 2100;
    float *k = randv(n * d);
    ma_ivf *x;
    assert_int_equal(ma_ivf_create(1, d, &x), 0);
    assert_int_equal(ma_ivf_add(x, n, k), 0);   /* no rebuild without the caller */
    assert_int_equal(ma_ivf_nlist(x), 0);
    assert_int_equal(ma_ivf_want_rebuild(x), 1);
    key_src src = {k, d, 1, 0};
    assert_int_equal(ma_ivf_rebuild(x, load_keys, &src), MA_EIO);
    assert_int_equal(ma_ivf_nlist(x), 0);
    assert_int_equal(ma_ivf_builds(x), 0);
    src.fail_at = -1;
    assert_int_equal(ma_ivf_rebuild(x, load_keys, &src), 0);
    assert_int_equal(ma_ivf_nlist(x), 92);  /* round(2·sqrt(2100)) */
    assert_int_equal(ma_ivf_want_rebuild(x), 0);
    uint64_t *ids = malloc(n * sizeof *ids), scored;
    size_t got;
    assert_int_equal(ma_ivf_search(x, k, 92, n, ids, &got, &scored), 0);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], i);
    /* A failing rebuild (second pass) changes nothing. */
    void *before, *after;
    size_t lb, la;
    assert_int_equal(ma_ivf_serialize(x, &before, &lb), 0);
    src.fail_at = src.calls + 4;
    assert_int_equal(ma_ivf_rebuild(x, load_keys, &src), MA_EIO);
    assert_int_equal(ma_ivf_serialize(x, &after, &la), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(before, after, la);
    free(before);
    free(after);
    free(ids);
    ma_ivf_destroy(x);
    free(k);
}

int main(void)
{
    openblas_set_num_threads(1);   /* as the daemon does: one BLAS thread per worker */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk_matches_sort),
        cmocka_unit_test(test_rebuild_schedule),
        cmocka_unit_test(test_exhaustive_probe),
        cmocka_unit_test(test_cluster_quality),
        cmocka_unit_test(test_serialize_roundtrip),
        cmocka_unit_test(test_explicit_rebuild),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
