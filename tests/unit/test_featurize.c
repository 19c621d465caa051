/* tests/unit/test_featurize.c — the lexical text embedder: hash, folding, closeness, stability. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/featurize.h"

static double cosine(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
}

static void embed(const char *s, int dim, float *out)
{
    assert_true(ma_embed_text(s, strlen(s), dim, out) > 0);
}

/* The published FNV-1a 64 test vectors. */
static void test_fnv_vectors(void **state)
{
    (void)state;
    assert_true(ma_fnv1a64("", 0) == 0xcbf29ce484222325ULL);
    assert_true(ma_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cULL);
    assert_true(ma_fnv1a64("foobar", 6) == 0x85944171f73967e8ULL);
}

/* Reference written independently of the module: build each feature string explicitly. */
static void reference(const char *s, int dim, double *out)
{
    memset(out, 0, (size_t)dim * sizeof *out);
    size_t n = strlen(s);
    char *w = malloc(n + 3);
    size_t i = 0;
    while (i < n) {
        size_t wn = 0;
        while (i < n) {
            unsigned char c = (unsigned char)s[i];
            if (c >= 'A' && c <= 'Z')
                c = (unsigned char)(c + 32);
            else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80))
                break;
            w[1 + wn++] = (char)c;
            i++;
        }
        i++;
        if (!wn)
            continue;
        char feat[4096];
        feat[0] = 'w';
        memcpy(feat + 1, w + 1, wn);
        uint64_t h = ma_fnv1a64(feat, wn + 1);
        out[h % (uint64_t)dim] += (h >> 63) ? -1.0 : 1.0;
        w[0] = ' ';
        w[wn + 1] = ' ';
        for (size_t t = 0; t < wn; t++) {
            char tri[4] = {'t', w[t], w[t + 1], w[t + 2]};
            uint64_t th = ma_fnv1a64(tri, 4);
            out[th % (uint64_t)dim] += (th >> 63) ? -0.5 : 0.5;
        }
    }
    double ss = 0;
    for (int j = 0; j < dim; j++)
        ss += out[j] * out[j];
    for (int j = 0; j < dim; j++)
        out[j] = ss > 0 ? out[j] / sqrt(ss) : 0;
    free(w);
}

static void test_matches_reference(void **state)
{
    (void)state;
    const char *texts[] = {"Capital of France?", "capital_of_france", "a", "x-y z", "Grüße aus Köln",
                           "The quick brown fox jumps over the lazy dog 42 times.", "__--??", ""};
    int dims[] = {1, 7, 64, 257};
    for (size_t t = 0; t < sizeof texts / sizeof *texts; t++)
        for (size_t d = 0; d < sizeof dims / sizeof *dims; d++) {
            int dim = dims[d];
            float *got = malloc((size_t)dim * sizeof *got);
            double *want = malloc((size_t)dim * sizeof *want);
            int rc = ma_embed_text(texts[t], strlen(texts[t]), dim, got);
            assert_true(rc >= 0);
            reference(texts[t], dim, want);
            for (int j = 0; j < dim; j++)
                assert_true(got[j] == (float)want[j]);
            free(got);
            free(want);
        }
}

static void test_folding_lands_close(void **state)
{
    (void)state;
    enum { D = 64 };
    float a[D], b[D], c[D], d[D], e[D];
    embed("capital_of_france", D, a);
    embed("Capital of France?", D, b);
    embed("capital of germany", D, c);
    embed("favourite colour", D, d);
    embed("capital of frances", D, e);
    assert_true(cosine(a, b, D) > 0.999999);          /* same words after folding */
    assert_true(cosine(a, e, D) > cosine(a, c, D));   /* trigrams: a near-identical word stays close */
    assert_true(cosine(a, c, D) > cosine(a, d, D));
    assert_true(cosine(a, e, D) > 0.8);
    assert_true(fabs(cosine(a, d, D)) < 0.5);
}

static void test_unit_norm_and_empty(void **state)
{
    (void)state;
    enum { D = 32 };
    float v[D];
    embed("hello world", D, v);
    double ss = 0;
    for (int j = 0; j < D; j++)
        ss += (double)v[j] * v[j];
    assert_true(fabs(ss - 1.0) < 1e-6);

    for (int j = 0; j < D; j++)
        v[j] = 7;
    assert_int_equal(ma_embed_text("?! _ -", 6, D, v), 0);
    for (int j = 0; j < D; j++)
        assert_true(v[j] == 0.0f);
    assert_int_equal(ma_embed_text(NULL, 0, D, v), 0);
}

static void test_length_not_nul(void **state)
{
    (void)state;
    enum { D = 16 };
    float a[D], b[D];
    const char buf[] = "france germany";
    assert_true(ma_embed_text(buf, 6, D, a) > 0);
    embed("france", D, b);
    assert_memory_equal(a, b, sizeof a);
}

/* Same text, same bits: these values were produced once and pinned, so a change of hash, folding,
 * weights or summation order on any machine or compiler shows up here. */
static void test_golden_vector(void **state)
{
    (void)state;
    enum { D = 8 };
    float v[D];
    embed("Capital of France?", D, v);
    const float want[D] = {0x0p+0f, -0x1.99ed96p-1f, -0x1.47f144p-3f, 0x1.47f144p-3f,
                          0x0p+0f, -0x1.47f144p-2f, -0x1.47f144p-2f, 0x1.47f144p-2f};
    for (int j = 0; j < D; j++)
        assert_true(v[j] == want[j]);
}

static void test_heads_and_errors(void **state)
{
    (void)state;
    enum { H = 3, D = 10 };
    float one[D], many[H * D];
    embed("slot name", D, one);
    assert_true(ma_embed_text_heads("slot name", 9, H, D, many) > 0);
    for (int h = 0; h < H; h++)
        assert_memory_equal(many + h * D, one, sizeof one);
    assert_int_equal(ma_embed_text("x", 1, 0, one), MA_EINVAL);
    assert_int_equal(ma_embed_text(NULL, 3, D, one), MA_EINVAL);
    assert_int_equal(ma_embed_text_heads("x", 1, 0, D, many), MA_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnv_vectors),
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_folding_lands_close),
        cmocka_unit_test(test_unit_norm_and_empty),
        cmocka_unit_test(test_length_not_nul),
        cmocka_unit_test(test_golden_vector),
        cmocka_unit_test(test_heads_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
