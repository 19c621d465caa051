/*
 * tests/unit/test_ivf.c — the inverted-file index (core/ivf.c) and the top-m selection (core/attn.c).
 *
 * Checked against brute force written here: top-m selection (ties, NaN), exhaustive probes returning
 * every event once and the exact top scores, the rebuild schedule, clustering quality on separated blobs
 * (lists do not mix blobs; a key probing one list finds its own), determinism, serialisation round trip
 * (same lists, same answers, same bytes) and refusal of corrupt buffers.
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

static uint64_t rng_state;

static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float nrand(void)
{
    double u = urand(), v = urand();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

static float *randv(size_t n)
{
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = nrand();
    return x;
}

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

static ma_ivf *build(int H, int d, const float *k, size_t n, size_t batch)
{
    ma_ivf *x;
    assert_int_equal(ma_ivf_create(H, d, &x), 0);
    for (size_t i = 0; i < n; i += batch)
        assert_int_equal(ma_ivf_add(x, n - i < batch ? n - i : batch, k + i * (size_t)H * d), 0);
    assert_int_equal(ma_ivf_count(x), n);
    return x;
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
    const struct { size_t upto; uint32_t nlist; } steps[] = {
        {1023, 1}, {1024, 32}, {2047, 32}, {2048, 45}, {4095, 45}, {4096, 64}, {4200, 64},
    };
    size_t have = 0;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        assert_int_equal(ma_ivf_add(x, steps[i].upto - have, k + have * d), 0);
        have = steps[i].upto;
        assert_int_equal(ma_ivf_nlist(x), steps[i].nlist);
    }
    assert_true(ma_ivf_bytes(x) >= have * (d * sizeof(float) + sizeof(uint64_t)));
    assert_int_equal(ma_ivf_add(x, 0, NULL), 0);
    ma_ivf_destroy(x);
    ma_ivf_destroy(NULL);
    free(k);
}

/* Probing every list returns every event exactly once, and the exact top scores. */
static void test_exhaustive_probe(void **state)
{
    (void)state;
    rng_state = 3;
    const int H = 2, d = 6;
    const size_t n = 3000, D = (size_t)H * d;
    float *k = randv(n * D);
    ma_ivf *x = build(H, d, k, n, 77);
    uint32_t nl = ma_ivf_nlist(x);
    assert_true(nl > 1);
    uint64_t *ids = malloc(n * sizeof *ids), scored = 0;
    size_t got = 0;
    float *q = randv(D);
    assert_int_equal(ma_ivf_search(x, q, (int)nl, n, ids, &got, &scored), 0);
    assert_int_equal(got, n);
    assert_int_equal(scored, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], i);

    /* Top 10 against brute force in double. */
    double *s = malloc(n * sizeof *s);
    for (size_t i = 0; i < n; i++) {
        s[i] = 0;
        for (size_t j = 0; j < D; j++)
            s[i] += (double)q[j] * k[i * D + j];
    }
    assert_int_equal(ma_ivf_search(x, q, (int)nl, 10, ids, &got, &scored), 0);
    assert_int_equal(got, 10);
    double tenth = INFINITY;
    for (size_t i = 0; i < 10; i++) {
        if (i)
            assert_true(ids[i] > ids[i - 1]);
        if (s[ids[i]] < tenth)
            tenth = s[ids[i]];
    }
    size_t above = 0;
    for (size_t i = 0; i < n; i++)
        above += s[i] > tenth + 1e-4;
    assert_true(above <= 9);   /* nothing outside the answer scores clearly higher than its worst */
    free(s);
    free(q);
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
    const size_t n = 4000;
    float *centre = randv((size_t)blobs * d);
    float *k = malloc(n * d * sizeof *k);
    int *blob = malloc(n * sizeof *blob);
    for (size_t i = 0; i < n; i++) {
        blob[i] = (int)(urand() * blobs);
        for (int j = 0; j < d; j++)
            k[i * d + j] = centre[blob[i] * d + j] + 0.05f * nrand();
    }
    ma_ivf *x = build(1, d, k, n, 500);
    uint64_t ids[4000], scored;
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
    ma_ivf_destroy(x);
    free(centre);
    free(k);
    free(blob);
}

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

static void test_serialize_roundtrip(void **state)
{
    (void)state;
    rng_state = 5;
    const int H = 2, d = 8;
    const size_t n = 2500, D = (size_t)H * d;
    float *k = randv((n + 600) * D);
    ma_ivf *x = build(H, d, k, n, 100);
    ma_ivf *twin = build(H, d, k, n, 100);

    void *buf, *tbuf;
    size_t len, tlen;
    assert_int_equal(ma_ivf_serialize(x, &buf, &len), 0);
    assert_int_equal(ma_ivf_serialize(twin, &tbuf, &tlen), 0);
    assert_int_equal(len, tlen);
    assert_memory_equal(buf, tbuf, len);   /* deterministic build */
    free(tbuf);
    ma_ivf_destroy(twin);

    key_src src = {k, D, -1, 0};
    ma_ivf *y;
    assert_int_equal(ma_ivf_restore(H, d, buf, len, load_keys, &src, 64, &y), 0);
    assert_int_equal(ma_ivf_count(y), n);
    assert_int_equal(ma_ivf_nlist(y), ma_ivf_nlist(x));
    assert_int_equal(ma_ivf_bytes(y) <= ma_ivf_bytes(x), 1);
    void *ybuf;
    size_t ylen;
    assert_int_equal(ma_ivf_serialize(y, &ybuf, &ylen), 0);
    assert_int_equal(ylen, len);
    assert_memory_equal(ybuf, buf, len);
    free(ybuf);

    uint64_t a[200], b[200], sa, sb;
    size_t na, nb;
    for (int t = 0; t < 20; t++) {
        float *q = randv(D);
        assert_int_equal(ma_ivf_search(x, q, 3, 200, a, &na, &sa), 0);
        assert_int_equal(ma_ivf_search(y, q, 3, 200, b, &nb, &sb), 0);
        assert_int_equal(na, nb);
        assert_int_equal(sa, sb);
        assert_memory_equal(a, b, na * sizeof *a);
        free(q);
    }
    /* Both grow the same way, through the next rebuild. */
    assert_int_equal(ma_ivf_add(x, 600, k + n * D), 0);
    assert_int_equal(ma_ivf_add(y, 600, k + n * D), 0);
    void *b1, *b2;
    size_t l1, l2;
    assert_int_equal(ma_ivf_serialize(x, &b1, &l1), 0);
    assert_int_equal(ma_ivf_serialize(y, &b2, &l2), 0);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1);
    free(b1);
    free(b2);

    /* Corrupt, truncated, foreign, mismatching; the loader's error passes through. */
    ma_ivf *z = NULL;
    assert_int_equal(ma_ivf_restore(H, d, buf, len - 1, load_keys, &src, 64, &z), MA_ECORRUPT);
    assert_int_equal(ma_ivf_restore(H, d, buf, 10, load_keys, &src, 64, &z), MA_ECORRUPT);
    unsigned char *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[len - 20] ^= 1;
    assert_int_equal(ma_ivf_restore(H, d, bad, len, load_keys, &src, 64, &z), MA_ECORRUPT);
    free(bad);
    assert_int_equal(ma_ivf_restore(H, d + 1, buf, len, load_keys, &src, 64, &z), MA_ECORRUPT);
    assert_int_equal(ma_ivf_restore(H, d, buf, len, NULL, &src, 64, &z), MA_EINVAL);
    src.fail_at = 3;
    src.calls = 0;
    assert_int_equal(ma_ivf_restore(H, d, buf, len, load_keys, &src, 64, &z), MA_EIO);
    assert_null(z);

    free(buf);
    ma_ivf_destroy(x);
    ma_ivf_destroy(y);
    free(k);
}

static void test_explicit_rebuild(void **state)
{
    (void)state;
    rng_state = 6;
    const int d = 4;
    const size_t n = 600;
    float *k = randv(n * d);
    ma_ivf *x = build(1, d, k, n, n);
    assert_int_equal(ma_ivf_nlist(x), 1);   /* below the first build */
    assert_int_equal(ma_ivf_rebuild(x), 0);
    assert_int_equal(ma_ivf_nlist(x), 24);  /* round(sqrt(600)) */
    uint64_t ids[600], scored;
    size_t got;
    assert_int_equal(ma_ivf_search(x, k, 24, n, ids, &got, &scored), 0);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], i);
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
