/*
 * tests/unit/test_codec.c — server/codec.c: JSON <-> core structs, validation messages, base64, body
 * parsing, the small restore/protect/backup bodies, the MA_E* status table and the answer builders.
 *
 * Every decoder is fed good input (checked value by value against what was encoded) and each class of
 * bad input, checking the error code and that the message names the element and field. Float vectors
 * are random with fixed seeds; exactness is checked bit for bit where the format promises it.
 */
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
#include "server/codec.h"

/* A deterministic stand-in for the featuriser: depends on every byte, L2 norm 1. */
static void test_embed(const char *text, size_t len, int dim, float *out)
{
    double norm = 0;
    for (int j = 0; j < dim; j++) {
        uint32_t h = 2166136261u ^ (uint32_t)j;
        for (size_t i = 0; i < len; i++)
            h = (h ^ (unsigned char)text[i]) * 16777619u;
        out[j] = (float)((int)(h % 2001) - 1000);
        norm += (double)out[j] * out[j];
    }
    for (int j = 0; j < dim && norm > 0; j++)
        out[j] = (float)(out[j] / sqrt(norm));
}

#include "tests/unit/testrand.h"

static cJSON *parse(const char *s)
{
    cJSON *j = cJSON_Parse(s);
    assert_non_null(j);
    return j;
}

/* JSON text of an array of n floats printed with %.9g. */
static char *floats_text(const float *x, size_t n)
{
    cJSON *a = codec_floats_to_json(x, n);
    assert_non_null(a);
    char *s = strdup(a->valuestring);
    cJSON_Delete(a);
    return s;
}

static char *floats_b64(const float *x, size_t n)
{
    char *s = malloc(4 * ((n * 4 + 2) / 3) + 1);
    codec_b64_encode((const unsigned char *)x, n * 4, s);
    return s;
}

static void assert_error(int rc, const codec_error *err, const char *code, const char *needle)
{
    assert_int_equal(rc, MA_EINVAL);
    assert_string_equal(err->code, code);
    if (!strstr(err->message, needle))
        fail_msg("message \"%s\" lacks \"%s\"", err->message, needle);
}

/* ---- base64 --------------------------------------------------------------------------------- */

static void test_b64_roundtrip(void **state)
{
    (void)state;
    unsigned char src[64], dec[64];
    char enc[100];
    rng_state = 1;
    for (size_t n = 0; n <= sizeof src; n++) {
        for (size_t i = 0; i < n; i++)
            src[i] = (unsigned char)(frand() * 127 + 128);
        size_t el = codec_b64_encode(src, n, enc), dl = 0;
        assert_int_equal(el, 4 * ((n + 2) / 3));
        assert_int_equal(codec_b64_decode(enc, el, dec, &dl), 0);
        assert_int_equal(dl, n);
        assert_memory_equal(src, dec, n);
    }
    /* RFC 4648 test vectors */
    size_t dl;
    assert_int_equal(codec_b64_decode("Zm9vYmFy", 8, dec, &dl), 0);
    assert_int_equal(dl, 6);
    assert_memory_equal(dec, "foobar", 6);
    assert_int_equal(codec_b64_decode("Zm9vYg==", 8, dec, &dl), 0);
    assert_int_equal(dl, 4);
    assert_memory_equal(dec, "foob", 4);
    codec_b64_encode((const unsigned char *)"fooba", 5, enc);
    assert_string_equal(enc, "Zm9vYmE=");
}

/* The reference decoder (RFC 4648, written for clarity): -1 for anything but canonical padded base64. */
static long b64_reference(const char *s, size_t len, unsigned char *out)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (len % 4)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pads = 0;
        for (int j = 0; j < 4; j++) {
            const char *p = s[i + j] ? strchr(alpha, s[i + j]) : NULL;
            if (s[i + j] == '=' && i + 4 == len && (j == 3 || (j == 2 && s[i + 3] == '='))) {
                v[j] = 0;
                pads++;
            } else if (p) {
                v[j] = (int)(p - alpha);
            } else {
                return -1;
            }
        }
        if (pads > 2)
            return -1;
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (unsigned char)(w >> 16);
        if (pads < 2)
            out[o++] = (unsigned char)(w >> 8);
        if (pads < 1)
            out[o++] = (unsigned char)w;
    }
    return (long)o;
}

/* The table-driven decoder against the reference on random inputs: valid encodings of random bytes
 * (every length 0..96, several times), the same with one character replaced by every byte value, and
 * random text over the alphabet plus some foreign bytes. */
static void test_b64_against_reference(void **state)
{
    (void)state;
    unsigned char src[96], want[128], got[128];
    char enc[160];
    rng_state = 7;
    for (int round = 0; round < 20; round++)
        for (size_t n = 0; n <= sizeof src; n++) {
            for (size_t i = 0; i < n; i++)
                src[i] = (unsigned char)(frand() * 128 + 128);
            size_t el = codec_b64_encode(src, n, enc), dl = 0;
            long wl = b64_reference(enc, el, want);
            assert_int_equal(wl, (long)n);
            assert_int_equal(codec_b64_decode(enc, el, got, &dl), 0);
            assert_int_equal(dl, n);
            assert_memory_equal(got, src, n);
            if (!el)
                continue;
            size_t at = (size_t)((frand() + 1) / 2 * (double)el) % el;
            char keep = enc[at];
            for (int c = 0; c < 256; c++) {   /* one character replaced by each byte value */
                enc[at] = (char)c;
                wl = b64_reference(enc, el, want);
                int rc = codec_b64_decode(enc, el, got, &dl);
                if (wl < 0) {
                    if (rc != MA_EINVAL)
                        fail_msg("accepted \"%.*s\" (byte %d at %zu)", (int)el, enc, c, at);
                } else {
                    assert_int_equal(rc, 0);
                    assert_int_equal(dl, (size_t)wl);
                    assert_memory_equal(got, want, dl);
                }
            }
            enc[at] = keep;
        }
    static const char pool[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/==\x80\xff -_.\n";
    for (int round = 0; round < 20000; round++) {
        size_t el = 4 * (size_t)((frand() + 1) / 2 * 8);
        for (size_t i = 0; i < el; i++)
            enc[i] = pool[(size_t)((frand() + 1) / 2 * (sizeof pool - 1)) % (sizeof pool - 1)];
        size_t dl = 0;
        long wl = b64_reference(enc, el, want);
        int rc = codec_b64_decode(enc, el, got, &dl);
        assert_int_equal(rc == 0, wl >= 0);
        if (wl >= 0) {
            assert_int_equal(dl, (size_t)wl);
            assert_memory_equal(got, want, dl);
        }
    }
}

static void test_b64_rejects(void **state)
{
    (void)state;
    unsigned char dec[16];
    size_t dl;
    assert_int_equal(codec_b64_decode("Zm9", 3, dec, &dl), MA_EINVAL);       /* length */
    assert_int_equal(codec_b64_decode("Zm9v!mFy", 8, dec, &dl), MA_EINVAL);  /* foreign char */
    assert_int_equal(codec_b64_decode("Zm==YmFy", 8, dec, &dl), MA_EINVAL);  /* padding not at the end */
    assert_int_equal(codec_b64_decode("Zm9=", 4, dec, &dl), 0);
    assert_int_equal(codec_b64_decode("Z=9v", 4, dec, &dl), MA_EINVAL);      /* data after padding */
    assert_int_equal(codec_b64_decode("Zm9v YmF", 8, dec, &dl), MA_EINVAL);  /* whitespace */
}

/* ---- config ---------------------------------------------------------------------------------- */

static void test_params_defaults(void **state)
{
    (void)state;
    ma_params p, d;
    codec_error err;
    ma_params_default(&d);
    assert_int_equal(codec_params_from_json(NULL, &p, &err), 0);
    assert_true(ma_params_equal(&p, &d));
    cJSON *j = parse("{}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    assert_true(ma_params_equal(&p, &d));
    cJSON_Delete(j);
    /* value_dim follows dim unless given */
    j = parse("{\"dim\":32}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    assert_int_equal(p.dim, 32);
    assert_int_equal(p.value_dim, 32);
    cJSON_Delete(j);
    j = parse("{\"dim\":32,\"value_dim\":8}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    assert_int_equal(p.value_dim, 8);
    cJSON_Delete(j);
}

static void test_params_roundtrip(void **state)
{
    (void)state;
    codec_error err;
    ma_params p, q;
    cJSON *j = parse("{\"heads\":4,\"dim\":16,\"value_dim\":8,\"slots\":3,\"chunk\":7,\"topk\":5,\"window\":9,"
                     "\"backbone\":\"delta\",\"vla\":{\"lambda0\":0.25,\"period\":3,\"refresh\":0,\"feature\":\"elu1\","
                     "\"penalty_scale\":0.125},\"delta\":{\"beta\":0.5},\"route_threshold\":0.75,"
                     "\"selector\":\"chunks\"}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    assert_int_equal(p.heads, 4);
    assert_int_equal(p.value_dim, 8);
    assert_int_equal(p.backbone, MA_BACKBONE_DELTA);
    assert_int_equal(p.vla.feature, MA_FEATURE_ELU1);
    assert_int_equal(p.selector, MA_SELECTOR_CHUNKS);
    assert_true(p.vla.lambda0 == 0.25 && p.vla.penalty_scale == 0.125 && p.delta.beta == 0.5);
    cJSON *out = codec_params_to_json(&p);
    assert_non_null(out);
    assert_int_equal(codec_params_from_json(out, &q, &err), 0);
    assert_true(ma_params_equal(&p, &q));
    /* printed and parsed again (what the store keeps) */
    char *text = cJSON_PrintUnformatted(out);
    cJSON *back = parse(text);
    assert_int_equal(codec_params_from_json(back, &q, &err), 0);
    assert_true(ma_params_equal(&p, &q));
    cJSON_free(text);
    cJSON_Delete(back);
    cJSON_Delete(out);
    cJSON_Delete(j);
}

static void check_config_error(const char *json, const char *needle)
{
    codec_error err;
    ma_params p;
    ma_params_default(&p);
    ma_params before = p;
    cJSON *j = parse(json);
    assert_error(codec_params_from_json(j, &p, &err), &err, "bad_config", needle);
    assert_true(ma_params_equal(&p, &before));  /* untouched */
    cJSON_Delete(j);
}

static void test_params_errors(void **state)
{
    (void)state;
    check_config_error("{\"heads\":0}", "heads: 0 is out of range, expected an integer 1..64");
    check_config_error("{\"heads\":65}", "heads: 65 is out of range");
    check_config_error("{\"dim\":1.5}", "dim: expected an integer, got 1.5");
    check_config_error("{\"dim\":\"64\"}", "dim: expected an integer, got a string");
    check_config_error("{\"slots\":1e12}", "slots: 1e+12 is out of range");
    check_config_error("{\"colour\":1}", "colour: unknown field");
    check_config_error("{\"dim\":8,\"dim\":16}", "dim: field given twice");
    check_config_error("{\"backbone\":\"lstm\"}", "backbone: \"lstm\" is not accepted, expected vla, linear");
    check_config_error("{\"vla\":{\"feature\":\"relu\"}}", "vla.feature: \"relu\" is not accepted");
    check_config_error("{\"vla\":{\"period\":0}}", "vla.period: 0 is out of range");
    check_config_error("{\"vla\":{\"lambda\":1}}", "vla.lambda: unknown field");
    check_config_error("{\"vla\":3}", "vla: expected an object, got a number");
    check_config_error("{\"delta\":{\"beta\":0}}", "delta.beta: 0 is out of range");
    check_config_error("{\"route_threshold\":1e999}", "route_threshold: expected a finite number");
    check_config_error("{\"route_threshold\":3}", "route_threshold: 3 is out of range");
    check_config_error("[1]", "expected an object, got an array");
}

/* ---- events ---------------------------------------------------------------------------------- */

enum { H = 2, D = 4, DV = 3 };

static const codec_shape shape = {H, D, DV, test_embed};

/* A body with n events; event i has k_i, v_i of the fixed seed; b64 chooses the spelling. */
static char *events_body(size_t n, bool b64, float *k, float *v, const char *extra)
{
    size_t cap = 256 + n * 512 + (extra ? strlen(extra) : 0), off = 0;
    char *s = malloc(cap);
    off += (size_t)snprintf(s + off, cap - off, "{\"events\":[");
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < H * D; j++)
            k[i * H * D + j] = frand();
        for (size_t j = 0; j < H * DV; j++)
            v[i * H * DV + j] = frand();
        char *ks = b64 ? floats_b64(k + i * H * D, H * D) : floats_text(k + i * H * D, H * D);
        char *vs = b64 ? floats_b64(v + i * H * DV, H * DV) : floats_text(v + i * H * DV, H * DV);
        off += (size_t)snprintf(s + off, cap - off, "%s{\"%s\":%s%s%s,\"%s\":%s%s%s}", i ? "," : "",
                                b64 ? "k_b64" : "k", b64 ? "\"" : "", ks, b64 ? "\"" : "", b64 ? "v_b64" : "v",
                                b64 ? "\"" : "", vs, b64 ? "\"" : "");
        free(ks);
        free(vs);
    }
    snprintf(s + off, cap - off, "%s]}", extra ? extra : "");
    return s;
}

static void test_events_decode(void **state)
{
    (void)state;
    for (int b64 = 0; b64 <= 1; b64++) {
        float k[5 * H * D], v[5 * H * DV];
        codec_events e;
        codec_error err;
        rng_state = 42 + (uint64_t)b64;
        char *body = events_body(5, b64, k, v, NULL);
        cJSON *j = parse(body);
        assert_int_equal(codec_events_decode(j, &shape, 1024, &e, &err), 0);
        assert_int_equal(e.n, 5);
        for (size_t i = 0; i < 5; i++) {
            /* bitwise: %.9g and base64 both carry float32 exactly */
            assert_memory_equal(e.ev[i].k, k + i * H * D, sizeof(float) * H * D);
            assert_memory_equal(e.ev[i].v, v + i * H * DV, sizeof(float) * H * DV);
            assert_null(e.ev[i].payload);
            assert_null(e.ev[i].slot);
            assert_false(e.ev[i].protect);
        }
        codec_events_clear(&e);
        cJSON_Delete(j);
        free(body);
    }
}

static void test_events_text_payload_slot(void **state)
{
    (void)state;
    codec_events e;
    codec_error err;
    cJSON *j = parse("{\"events\":[{\"text\":\"capital of France\",\"payload\":\"Paris\",\"slot\":\"cap:fr\","
                     "\"protect\":true},{\"text\":\"x\",\"v\":[1,2,3,4,5,6],\"payload\":{\"a\":[1,null]}}]}");
    assert_int_equal(codec_events_decode(j, &shape, 16, &e, &err), 0);
    assert_int_equal(e.n, 2);
    float want[D];
    test_embed("capital of France", 17, D, want);
    for (int h = 0; h < H; h++)
        assert_memory_equal(e.ev[0].k + h * D, want, sizeof want);
    float wantv[DV];
    test_embed("Paris", 5, DV, wantv);  /* string payload stands in for the missing value */
    for (int h = 0; h < H; h++)
        assert_memory_equal(e.ev[0].v + h * DV, wantv, sizeof wantv);
    assert_string_equal(e.ev[0].payload, "\"Paris\"");
    assert_string_equal(e.ev[0].slot, "cap:fr");
    assert_true(e.ev[0].protect);
    assert_string_equal(e.ev[1].payload, "{\"a\":[1,null]}");
    assert_true(e.ev[1].v[5] == 6.0f);
    codec_events_clear(&e);
    cJSON_Delete(j);

    /* empty batch */
    j = parse("{\"events\":[]}");
    assert_int_equal(codec_events_decode(j, &shape, 16, &e, &err), 0);
    assert_int_equal(e.n, 0);
    codec_events_clear(&e);
    cJSON_Delete(j);
}

static void check_events_error(const char *json, const char *code, const char *needle)
{
    codec_events e;
    codec_error err;
    cJSON *j = parse(json);
    assert_error(codec_events_decode(j, &shape, 4, &e, &err), &err, code, needle);
    assert_int_equal(e.n, 0);
    assert_null(e.ev);
    cJSON_Delete(j);
}

#define K8 "[1,2,3,4,5,6,7,8]"
#define V6 "[1,2,3,4,5,6]"
#define OK_EV "{\"k\":" K8 ",\"v\":" V6 "}"

static void test_events_errors(void **state)
{
    (void)state;
    check_events_error("{\"events\":[" OK_EV "," OK_EV "," OK_EV ",{\"k\":[1,2,3,4,5,6,7],\"v\":" V6 "}]}",
                       "dim_mismatch", "events[3].k: expected 8 numbers (heads*dim), got 7");
    check_events_error("{\"events\":[" OK_EV ",{\"k\":" K8 ",\"v\":[1,2,3,4,5,6,7]}]}", "dim_mismatch",
                       "events[1].v: expected 6 numbers (heads*value_dim), got 7");
    check_events_error("{\"events\":[" OK_EV ",{\"k\":" K8 ",\"v\":[1,2,1e999,4,5,6]}]}", "non_finite",
                       "events[1].v[2]: inf is not a finite float32");
    check_events_error("{\"events\":[{\"k\":[1,2,3,4,5,6,7,1e39],\"v\":" V6 "}]}", "non_finite",
                       "events[0].k[7]: 1e+39 is not a finite float32");
    check_events_error("{\"events\":[{\"k\":[1,2,3,\"4\",5,6,7,8],\"v\":" V6 "}]}", "bad_request",
                       "events[0].k[3]: expected a number, got a string");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"k_b64\":\"AAAA\",\"v\":" V6 "}]}", "bad_request",
                       "events[0]: give only one of k, k_b64 or text");
    check_events_error("{\"events\":[{\"v\":" V6 "}]}", "bad_request", "events[0]: missing key");
    check_events_error("{\"events\":[{\"k\":" K8 "}]}", "bad_request", "events[0]: missing value");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"payload\":7}]}", "bad_request", "events[0]: missing value");
    check_events_error("{\"events\":[" OK_EV ",{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a b\"}]}", "bad_name",
                       "events[1].slot: \"a b\" is not a valid name");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"\"}]}", "bad_name", "events[0].slot");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":7}]}", "bad_request",
                       "events[0].slot: expected a string, got a number");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"protect\":true}]}", "bad_request",
                       "events[0].protect: needs slot");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a\",\"protect\":1}]}", "bad_request",
                       "events[0].protect: expected true or false");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"palyoad\":1}]}", "bad_request",
                       "events[0].palyoad: unknown field");
    check_events_error("{\"events\":[{\"k_b64\":\"AAAAAAAA\",\"v\":" V6 "}]}", "dim_mismatch",
                       "events[0].k_b64: expected 32 bytes (8 little-endian float32, heads*dim), got 6");
    check_events_error("{\"events\":[{\"k_b64\":\"AAA\",\"v\":" V6 "}]}", "bad_request",
                       "events[0].k_b64: not valid base64");
    check_events_error("{\"events\":[{\"text\":\"\",\"v\":" V6 "}]}", "bad_request", "events[0].text: empty");
    check_events_error("{\"events\":[" OK_EV "," OK_EV "," OK_EV "," OK_EV "," OK_EV "]}", "bad_request",
                       "events: 5 elements, at most 4");
    check_events_error("{\"event\":[]}", "bad_request", "event: unknown field");
    check_events_error("{}", "bad_request", "events: missing");
    check_events_error("{\"events\":{}}", "bad_request", "events: expected an array, got an object");
    check_events_error("{\"events\":[3]}", "bad_request", "events[0]: expected an object, got a number");

    /* base64 carrying a NaN and an infinity */
    float k[H * D] = {0}, v[H * DV] = {0};
    k[5] = NAN;
    char *kb = floats_b64(k, H * D), json[512];
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"v\":" V6 "}]}", kb);
    check_events_error(json, "non_finite", "events[0].k_b64: float 5 is not finite");
    free(kb);
    v[0] = INFINITY;
    char *vb = floats_b64(v, H * DV);
    snprintf(json, sizeof json, "{\"events\":[{\"k\":" K8 ",\"v_b64\":\"%s\"}]}", vb);
    check_events_error(json, "non_finite", "events[0].v_b64: float 0 is not finite");
    free(vb);
}

/* Events spelled exactly {"k_b64", "v_b64"} take the decoder's fast path: the same floats as the general
 * path, and every problem still reported by the general path's words. */
static void test_events_b64_fast_path(void **state)
{
    (void)state;
    float k[H * D], v[H * DV];
    for (size_t j = 0; j < H * D; j++)
        k[j] = frand();
    for (size_t j = 0; j < H * DV; j++)
        v[j] = frand();
    char *kb = floats_b64(k, H * D), *vb = floats_b64(v, H * DV), json[1024];
    /* both orders, and next to an event the general path decodes (payload: null) */
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"v_b64\":\"%s\"},{\"v_b64\":\"%s\",\"k_b64\":\"%s\"},"
             "{\"k_b64\":\"%s\",\"v_b64\":\"%s\",\"payload\":null}]}", kb, vb, vb, kb, kb, vb);
    codec_events e;
    codec_error err;
    cJSON *j = parse(json);
    assert_int_equal(codec_events_decode(j, &shape, 16, &e, &err), 0);
    assert_int_equal(e.n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_memory_equal(e.ev[i].k, k, sizeof k);
        assert_memory_equal(e.ev[i].v, v, sizeof v);
        assert_null(e.ev[i].payload);
        assert_null(e.ev[i].slot);
        assert_true(e.importance[i] == MA_IMPORTANCE_NONE);
    }
    codec_events_clear(&e);
    cJSON_Delete(j);

    /* a NaN, an infinity, a short vector, a bad character, a repeated field: the general path's messages */
    float kn[H * D], vi[H * DV];
    memcpy(kn, k, sizeof k);
    memcpy(vi, v, sizeof v);
    kn[6] = NAN;
    vi[2] = -INFINITY;
    char *knb = floats_b64(kn, H * D), *vib = floats_b64(vi, H * DV), *kshort = floats_b64(k, H * D - 1);
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"v_b64\":\"%s\"},{\"k_b64\":\"%s\",\"v_b64\":\"%s\"}]}",
             kb, vb, knb, vb);
    check_events_error(json, "non_finite", "events[1].k_b64: float 6 is not finite");
    snprintf(json, sizeof json, "{\"events\":[{\"v_b64\":\"%s\",\"k_b64\":\"%s\"}]}", vib, kb);
    check_events_error(json, "non_finite", "events[0].v_b64: float 2 is not finite");
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"v_b64\":\"%s\"}]}", kshort, vb);
    check_events_error(json, "dim_mismatch", "events[0].k_b64: expected 32 bytes");
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"v_b64\":\"%s\"}]}", kb, vb);
    json[strlen("{\"events\":[{\"k_b64\":\"") + 2] = '!';
    check_events_error(json, "bad_request", "events[0].k_b64: not valid base64");
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"k_b64\":\"%s\"}]}", kb, kb);
    check_events_error(json, "bad_request", "events[0].k_b64: field given twice");
    snprintf(json, sizeof json, "{\"events\":[{\"k_b64\":\"%s\",\"v_b64\":7}]}", kb);
    check_events_error(json, "bad_request", "events[0].v_b64: expected a base64 string, got a number");
    free(kb);
    free(vb);
    free(knb);
    free(vib);
    free(kshort);
}

/* codec_events_decode_simple against the general path (codec_parse_body + codec_events_decode) on random
 * bodies: plain {"events":[{"k_b64","v_b64"}...]} with random whitespace and field order must be taken
 * and decoded exactly as the general path decodes them; each mutation (a NaN, a short vector, an escape,
 * another field, expect_length, a repeated field, trailing bytes, a cut body, too many events) must either
 * decode identically or be left to the general path (0) — never accepted when the general path refuses. */
static void test_events_simple_path(void **state)
{
    (void)state;
    static const char *const spaces[] = {"", "", " ", "\n", "\t ", "\r\n  "};
    enum { MUTATIONS = 11 };
    int taken = 0, plain = 0;
    rng_state = 99;
    for (int trial = 0; trial < 3000; trial++) {
        int mutation = trial % 2 ? (int)((frand() + 1) / 2 * MUTATIONS) % MUTATIONS + 1 : 0;
        size_t n = (size_t)((frand() + 1) / 2 * 5), cap = 8192, off = 0;
        char *body = malloc(cap);
#define SP() (off += (size_t)snprintf(body + off, cap - off, "%s", spaces[(size_t)((frand() + 1) / 2 * 6) % 6]))
#define PUT(...) (off += (size_t)snprintf(body + off, cap - off, __VA_ARGS__))
        SP();
        PUT("{");
        SP();
        if (mutation == 5)
            PUT("\"expect_length\":0,");
        PUT("\"events\"");
        SP();
        PUT(":");
        SP();
        PUT("[");
        for (size_t i = 0; i < n; i++) {
            float k[H * D], v[H * DV];
            for (size_t j = 0; j < H * D; j++)
                k[j] = frand();
            for (size_t j = 0; j < H * DV; j++)
                v[j] = frand();
            bool last = i + 1 == n;
            if (mutation == 1 && last)
                v[1] = NAN;
            char *k0 = floats_b64(k, mutation == 2 && last ? H * D - 1 : H * D), *vb = floats_b64(v, H * DV);
            char *kb = malloc(strlen(k0) + 2);   /* room for one escape */
            strcpy(kb, k0);
            free(k0);
            if (mutation == 3 && last)   /* "\/" is "/" in JSON: the general path reads it, the simple one leaves it */
                for (char *c = kb; *c; c++)
                    if (*c == '/' || *c == 'A') {
                        memmove(c + 1, c, strlen(c) + 1);
                        *c = '\\';
                        c[1] = '/';
                        break;
                    }
            bool kfirst = frand() > 0;
            SP();
            PUT("%s{", i ? "," : "");
            for (int f = 0; f < 2; f++) {
                SP();
                bool isk = (f == 0) == kfirst;
                PUT("\"%s\"", isk ? "k_b64" : "v_b64");
                SP();
                PUT(":");
                SP();
                PUT("\"%s\"", isk ? kb : vb);
                SP();
                if (f == 0)
                    PUT(",");
            }
            if (mutation == 4 && last)
                PUT(",\"payload\":1");
            if (mutation == 6 && last)
                PUT(",\"k_b64\":\"%s\"", kb);
            PUT("}");
            free(kb);
            free(vb);
        }
        SP();
        PUT("]");
        SP();
        PUT("}");
        if (mutation == 7)
            PUT("x");
        SP();
        size_t len = off;
        if (mutation == 8 && len > 2)
            len -= 2;
#undef SP
#undef PUT
        size_t max = mutation == 9 && n > 0 ? n - 1 : 16;
        if (mutation == 10 && len > 10)   /* a NUL byte inside the body */
            body[len / 2] = '\0';
        codec_events fast, slow;
        codec_error err;
        cJSON *j = NULL;
        int took = codec_events_decode_simple(body, len, &shape, max, &fast);
        int rc = codec_parse_body(body, len, &j, &err);
        if (rc == 0 && !j)
            rc = MA_EINVAL;   /* an empty body: no batch */
        if (rc == 0)
            rc = codec_events_decode(j, &shape, max, &slow, &err);
        if (took) {
            taken++;
            if (rc != 0)
                fail_msg("trial %d (mutation %d): simple path took a body the general path refuses (%s): %.*s", trial,
                         mutation, err.message, (int)len, body);
            assert_int_equal(fast.n, slow.n);
            for (size_t i = 0; i < fast.n; i++) {
                assert_memory_equal(fast.ev[i].k, slow.ev[i].k, sizeof(float) * H * D);
                assert_memory_equal(fast.ev[i].v, slow.ev[i].v, sizeof(float) * H * DV);
                assert_null(fast.ev[i].payload);
                assert_null(fast.ev[i].slot);
                assert_false(fast.ev[i].protect);
                assert_true(fast.importance[i] == slow.importance[i]);
            }
            assert_false(fast.has_expect_length);
            codec_events_clear(&fast);
        } else {
            assert_int_equal(fast.n, 0);
            assert_null(fast.ev);
            if (mutation == 0)
                fail_msg("trial %d: a plain body was not taken: %.*s", trial, (int)len, body);
        }
        plain += mutation == 0;
        if (rc == 0)
            codec_events_clear(&slow);
        cJSON_Delete(j);
        free(body);
    }
    print_message("simple path took %d of 3000 bodies (%d plain)\n", taken, plain);
}

/* ---- binary batches -------------------------------------------------------------------------- */

/* A binary batch ("MAEV", n, heads, dim, value_dim, keys, values) at offset `at` of a buffer (to test
 * unaligned bodies); the floats are k and v. Returns the buffer; *body points at the batch. */
static char *binary_batch(uint32_t n, uint32_t heads, uint32_t dim, uint32_t vdim, const float *k, const float *v,
                          size_t at, const char **body, size_t *len)
{
    size_t kb = sizeof(float) * n * heads * dim, vb = sizeof(float) * n * heads * vdim;
    char *buf = malloc(at + 20 + kb + vb + 1);
    uint32_t hdr[4] = {n, heads, dim, vdim};
    memcpy(buf + at, "MAEV", 4);
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 4; b++)
            buf[at + 4 + 4 * (size_t)i + (size_t)b] = (char)(hdr[i] >> (8 * b));
    for (size_t i = 0; i < (kb + vb) / 4; i++) {
        float f = i < kb / 4 ? k[i] : v[i - kb / 4];
        uint32_t w;
        memcpy(&w, &f, 4);
        for (int b = 0; b < 4; b++)
            buf[at + 20 + 4 * i + (size_t)b] = (char)(w >> (8 * b));
    }
    *body = buf + at;
    *len = 20 + kb + vb;
    return buf;
}

static void test_events_binary(void **state)
{
    (void)state;
    enum { N = 5 };
    float k[N * H * D], v[N * H * DV];
    for (size_t j = 0; j < N * H * D; j++)
        k[j] = frand();
    for (size_t j = 0; j < N * H * DV; j++)
        v[j] = frand();
    codec_events e;
    codec_error err;
    /* aligned (read in place) and unaligned (copied): the same events */
    for (size_t at = 0; at < 2; at++) {
        const char *body;
        size_t len;
        char *buf = binary_batch(N, H, D, DV, k, v, at ? 1 : 0, &body, &len);
        assert_int_equal(codec_events_decode_binary(body, len, &shape, 16, &e, &err), 0);
        assert_int_equal(e.n, N);
        assert_int_equal(e.borrowed, at == 0);
        for (size_t i = 0; i < N; i++) {
            assert_memory_equal(e.ev[i].k, k + i * H * D, sizeof(float) * H * D);
            assert_memory_equal(e.ev[i].v, v + i * H * DV, sizeof(float) * H * DV);
            assert_null(e.ev[i].payload);
            assert_null(e.ev[i].slot);
            assert_false(e.ev[i].protect);
            assert_true(e.importance[i] == MA_IMPORTANCE_NONE);
        }
        codec_events_clear(&e);
        free(buf);
    }
    /* an empty batch */
    const char *body;
    size_t len;
    char *buf = binary_batch(0, H, D, DV, k, v, 0, &body, &len);
    assert_int_equal(codec_events_decode_binary(body, len, &shape, 16, &e, &err), 0);
    assert_int_equal(e.n, 0);
    codec_events_clear(&e);
    free(buf);

    /* each problem, in the order of the checks; nothing returned */
    buf = binary_batch(N, H, D, DV, k, v, 0, &body, &len);
    char *bad = malloc(len);
#define BIN_ERROR(n_, code_, needle_)                                                     \
    do {                                                                                  \
        assert_error(codec_events_decode_binary(bad, n_, &shape, 4 + N, &e, &err), &err, code_, needle_); \
        assert_int_equal(e.n, 0);                                                         \
        assert_null(e.ev);                                                                \
        memcpy(bad, body, len);                                                           \
    } while (0)
    memcpy(bad, body, len);
    BIN_ERROR(0, "bad_request", "binary batch: the body has 0 bytes, expected at least the 20-byte header");
    BIN_ERROR(19, "bad_request", "the body has 19 bytes");
    bad[3] = 'X';
    BIN_ERROR(len, "bad_request", "binary batch: bytes 0-3 are not the magic \"MAEV\"");
    bad[4] = 10;
    BIN_ERROR(len, "bad_request", "binary batch: n is 10 events, at most 9 per request");
    bad[8] = 1;
    BIN_ERROR(len, "dim_mismatch", "binary batch: the header says heads 1, dim 4, value_dim 3; the session has "
              "heads 2, dim 4, value_dim 3");
    bad[16] = 4;
    BIN_ERROR(len, "dim_mismatch", "value_dim 4");
    BIN_ERROR(len - 1, "bad_request", "binary batch: the body has 299 bytes, expected 300 for n = 5 "
              "(20 + 4*n*heads*(dim+value_dim))");
    free(buf);
    /* a value that is not finite: the first one named, keys before values, on both decoding paths */
    for (size_t at = 0; at < 2; at++) {
        float kk[N * H * D], vv[N * H * DV];
        memcpy(kk, k, sizeof k);
        memcpy(vv, v, sizeof v);
        vv[3 * H * DV + 4] = INFINITY;
        buf = binary_batch(N, H, D, DV, kk, vv, at, &body, &len);
        memcpy(bad, body, len);
        BIN_ERROR(len, "non_finite", "binary batch: v of event 3, float 4 is not finite (inf)");
        free(buf);
        kk[2 * H * D + 7] = NAN;
        buf = binary_batch(N, H, D, DV, kk, vv, at, &body, &len);
        char *shifted = malloc(len + at);   /* the body at offset `at` of its buffer */
        memcpy(shifted + at, body, len);
        assert_error(codec_events_decode_binary(shifted + at, len, &shape, 16, &e, &err), &err, "non_finite",
                     "binary batch: k of event 2, float 7 is not finite (nan)");
        assert_null(e.ev);
        free(shifted);
        free(buf);
    }
#undef BIN_ERROR
    free(bad);
}

/* ---- queries --------------------------------------------------------------------------------- */

static void test_queries_decode(void **state)
{
    (void)state;
    codec_queries q;
    codec_error err;
    cJSON *j = parse("{\"queries\":[{\"q\":" K8 "},{\"text\":\"hello\",\"route\":\"full\",\"topk\":3},"
                     "{\"slot\":\"a\",\"version\":2},{\"slot\":\"b\",\"q\":" K8 ",\"route\":\"slot\"}]}");
    assert_int_equal(codec_queries_decode(j, &shape, 8, &q, &err), 0);
    assert_int_equal(q.n, 4);
    assert_non_null(q.q[0].q);
    assert_true(q.q[0].q[7] == 8.0f);
    assert_int_equal(q.q[0].route, MA_ROUTE_AUTO);
    assert_null(q.q[0].slot);
    assert_int_equal(q.q[0].topk, 0);
    assert_int_equal(q.q[1].route, MA_ROUTE_FULL);
    assert_int_equal(q.q[1].topk, 3);
    float want[D];
    test_embed("hello", 5, D, want);
    assert_memory_equal(q.q[1].q + D, want, sizeof want);
    assert_null(q.q[2].q);
    assert_string_equal(q.q[2].slot, "a");
    assert_int_equal(q.q[2].version, 2);
    assert_int_equal(q.q[3].route, MA_ROUTE_SLOT);
    assert_string_equal(q.q[3].slot, "b");
    codec_queries_clear(&q);
    cJSON_Delete(j);
}

static void check_queries_error(const char *json, const char *code, const char *needle)
{
    codec_queries q;
    codec_error err;
    cJSON *j = parse(json);
    assert_error(codec_queries_decode(j, &shape, 4, &q, &err), &err, code, needle);
    assert_int_equal(q.n, 0);
    cJSON_Delete(j);
}

static void test_queries_errors(void **state)
{
    (void)state;
    check_queries_error("{\"queries\":[{\"q\":" K8 "},{}]}", "bad_request",
                        "queries[1]: expected a query vector (q, q_b64 or text) or a slot name");
    check_queries_error("{\"queries\":[{\"q\":[1,2]}]}", "dim_mismatch", "queries[0].q: expected 8 numbers");
    check_queries_error("{\"queries\":[{\"q\":" K8 ",\"route\":\"fast\"}]}", "bad_request",
                        "queries[0].route: \"fast\" is not a route");
    check_queries_error("{\"queries\":[{\"q\":" K8 ",\"route\":1}]}", "bad_request",
                        "queries[0].route: a number is not a route");
    check_queries_error("{\"queries\":[{\"q\":" K8 ",\"version\":1}]}", "bad_request",
                        "queries[0].version: needs slot");
    check_queries_error("{\"queries\":[{\"slot\":\"a\",\"version\":0}]}", "bad_request",
                        "queries[0].version: 0 is not an integer in 1..");
    check_queries_error("{\"queries\":[{\"slot\":\"a\",\"version\":1.5}]}", "bad_request",
                        "queries[0].version: 1.5 is not an integer");
    check_queries_error("{\"queries\":[{\"q\":" K8 ",\"topk\":0}]}", "bad_request", "queries[0].topk");
    check_queries_error("{\"queries\":[{\"slot\":\"a\",\"route\":\"sparse\"}]}", "bad_request",
                        "queries[0]: route sparse needs a query vector");
    check_queries_error("{\"queries\":[{\"slot\":\"a/b\"}]}", "bad_name", "queries[0].slot");
    check_queries_error("{\"queries\":[{\"q\":" K8 ",\"k\":1}]}", "bad_request", "queries[0].k: unknown field");
}

/* ---- slot bodies ----------------------------------------------------------------------------- */

static void test_slot_body(void **state)
{
    (void)state;
    codec_slot_body b;
    codec_error err;
    cJSON *j = parse("{\"name\":\"capital_of_france\",\"payload\":\"Paris\",\"protect\":true}");
    assert_int_equal(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), 0);
    assert_string_equal(b.name, "capital_of_france");
    assert_null(b.k);  /* core embeds the name */
    assert_null(b.v);  /* core embeds the string payload */
    assert_string_equal(b.payload, "\"Paris\"");
    assert_true(b.protect);
    codec_slot_body_clear(&b);
    cJSON_Delete(j);

    j = parse("{\"k\":" K8 ",\"v\":" V6 ",\"version\":7,\"payload\":{\"x\":1}}");
    assert_int_equal(codec_slot_body_decode(j, "s1", true, &shape, &b, &err), 0);
    assert_string_equal(b.name, "s1");
    assert_true(b.k[7] == 8.0f && b.v[5] == 6.0f);
    assert_int_equal(b.version, 7);
    codec_slot_body_clear(&b);
    /* version only where allowed (PUT) */
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "bad_request",
                 "version: unknown field");
    cJSON_Delete(j);

    j = parse("{\"payload\":\"x\"}");
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "bad_request", "name: missing");
    cJSON_Delete(j);
    j = parse("{\"name\":\"a\",\"payload\":\"x\"}");
    assert_error(codec_slot_body_decode(j, "b", true, &shape, &b, &err), &err, "bad_request",
                 "differs from the name in the path");
    cJSON_Delete(j);
    j = parse("{\"name\":\"a b\",\"payload\":\"x\"}");
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "bad_name", "name: \"a b\"");
    cJSON_Delete(j);
    j = parse("{\"name\":\"a\",\"payload\":[1]}");
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "bad_request", "v: missing");
    cJSON_Delete(j);
    j = parse("{\"name\":\"a\",\"v\":[1,2],\"payload\":\"x\"}");
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "dim_mismatch",
                 "v: expected 6 numbers (heads*value_dim), got 2");
    cJSON_Delete(j);
    assert_error(codec_slot_body_decode(NULL, "a", true, &shape, &b, &err), &err, "bad_request", "v: missing");
}

/* ---- encoders -------------------------------------------------------------------------------- */

static void test_floats_exact(void **state)
{
    (void)state;
    float x[1000];
    rng_state = 7;
    for (size_t i = 0; i < 1000; i++)
        x[i] = frand() * powf(10.0f, (float)((int)(frand() * 38)));
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 1e-45f;   /* denormal */
    x[3] = 3.4028235e38f;
    char *text = floats_text(x, 1000);
    cJSON *a = parse(text);
    assert_int_equal(cJSON_GetArraySize(a), 1000);
    size_t i = 0;
    for (cJSON *e = a->child; e; e = e->next, i++) {
        float back = (float)e->valuedouble;
        assert_memory_equal(&back, &x[i], sizeof back);
    }
    cJSON_Delete(a);
    free(text);
}

static void test_answer_json(void **state)
{
    (void)state;
    float v[H * DV] = {1, 2, 3, 4, 5, 0.5f};
    uint32_t chunks[] = {3, 9};
    ma_answer a = {.route = MA_ROUTE_SPARSE, .v = v, .score = 0.75, .has_slot = false, .event = 12,
                   .payload = "{\"city\":\"Paris\"}", .chunks = chunks, .n_chunks = 2};
    cJSON *o = codec_answer_to_json(&a, H * DV);
    char *s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"route\":\"sparse\",\"v\":[1,2,3,4,5,0.5],\"score\":0.75,\"event\":12,"
                           "\"payload\":{\"city\":\"Paris\"},\"chunks\":[3,9]}");
    cJSON_free(s);
    cJSON_Delete(o);

    ma_answer b = {.route = MA_ROUTE_SLOT, .v = v, .score = 1, .has_slot = true, .version = 2, .event = -1,
                   .payload = "\"Paris\""};
    strcpy(b.slot, "capital_of_france");
    o = codec_answer_to_json(&b, H * DV);
    s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"route\":\"slot\",\"v\":[1,2,3,4,5,0.5],\"score\":1,\"slot\":\"capital_of_france\","
                           "\"version\":2,\"payload\":\"Paris\"}");
    cJSON_free(s);
    cJSON_Delete(o);
}

static void test_report_json(void **state)
{
    (void)state;
    ma_write_rec w[1] = {{"a", 3, 10}};
    ma_void_rec vw[1] = {{"p", 11, "protected"}};
    ma_name_rec ev[2] = {{"old1"}, {"old2"}};
    ma_ingest_report r = {.length = 12, .appended = 2, .writes = w, .n_writes = 1, .voids = vw, .n_voids = 1,
                          .evicted = ev, .n_evicted = 2};
    cJSON *o = codec_ingest_report_to_json(&r);
    char *s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"length\":12,\"appended\":2,\"writes\":[{\"slot\":\"a\",\"version\":3,\"event\":10}],"
                           "\"void_writes\":[{\"slot\":\"p\",\"event\":11,\"reason\":\"protected\"}],"
                           "\"evicted\":[\"old1\",\"old2\"]}");
    cJSON_free(s);
    cJSON_Delete(o);

    ma_slot_info si = {.name = "n", .version = 4, .protect = true, .event = -1, .usage = 9,
                       .updated_at = 1700000000123};
    o = codec_slot_info_to_json(&si);
    s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"name\":\"n\",\"version\":4,\"protected\":true,\"event\":null,\"usage\":9,"
                           "\"updated_at\":\"2023-11-14T22:13:20.123Z\"}");
    cJSON_free(s);
    cJSON_Delete(o);
}

/* ---- robustness: mutated bodies never crash, and every refusal has a code and a message ---------- */

/* Returns whether text was JSON (and so went through every decoder). */
static bool decode_any(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    if (!j)
        return false;
    codec_error err;
    codec_events e;
    codec_queries q;
    codec_slot_body b;
    ma_params p;
    int rc;
    err.code = NULL;
    if ((rc = codec_events_decode(j, &shape, 64, &e, &err)) == 0)
        codec_events_clear(&e);
    else
        assert_true(err.code && err.message[0]);
    if ((rc = codec_queries_decode(j, &shape, 64, &q, &err)) == 0)
        codec_queries_clear(&q);
    else
        assert_true(err.code && err.message[0]);
    if ((rc = codec_slot_body_decode(j, NULL, false, &shape, &b, &err)) == 0)
        codec_slot_body_clear(&b);
    else
        assert_true(err.code && err.message[0]);
    if (codec_params_from_json(j, &p, &err) != 0)
        assert_string_equal(err.code, "bad_config");
    else
        assert_int_equal(ma_params_validate(&p, NULL, 0), 0);
    cJSON_Delete(j);
    return true;
}

static void test_mutated_bodies(void **state)
{
    (void)state;
    static const char *const seeds[] = {
        "{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a\",\"protect\":true,\"payload\":{\"x\":[1]}},"
        "{\"k_b64\":\"AACAPwAAAAAAAAAAAACAPwAAgD8AAAAAAAAAAAAAgD8=\",\"text\":\"t\",\"v_b64\":\"AAAA\"}]}",
        "{\"queries\":[{\"q\":" K8 ",\"route\":\"sparse\",\"topk\":3},{\"slot\":\"b\",\"version\":2},{\"text\":\"hi\"}]}",
        "{\"name\":\"n\",\"k\":" K8 ",\"v\":" V6 ",\"payload\":\"p\",\"protect\":false}",
        "{\"heads\":2,\"dim\":4,\"vla\":{\"period\":3,\"feature\":\"elu1\"},\"delta\":{\"beta\":0.5},\"selector\":\"chunks\"}",
    };
    static const char alphabet[] = "{}[]\",:0123456789.-eE+ tfnulrsa_\\";
    rng_state = 2024;
    for (size_t sd = 0; sd < sizeof seeds / sizeof seeds[0]; sd++) {
        size_t n = strlen(seeds[sd]);
        char *buf = malloc(n + 8);
        int parsed = 0;
        for (int round = 0; round < 3000; round++) {
            memcpy(buf, seeds[sd], n + 1);
            int edits = 1 + (int)((frand() + 1) * 2);
            for (int e = 0; e < edits; e++) {
                size_t at = (size_t)((frand() + 1) / 2 * (double)(n - 1));
                buf[at] = alphabet[(size_t)((frand() + 1) / 2 * (sizeof alphabet - 2))];
            }
            parsed += decode_any(buf);
        }
        free(buf);
        assert_true(parsed >= 300);   /* enough mutants are JSON to reach the decoders */
    }
}

static void printed(cJSON *o, const char *want)
{
    assert_non_null(o);
    char *t = cJSON_PrintUnformatted(o);
    assert_string_equal(t, want);
    cJSON_free(t);
    cJSON_Delete(o);
}

static void test_parse_body(void **state)
{
    (void)state;
    cJSON *j;
    codec_error err;
    assert_int_equal(codec_parse_body(" \r\n\t", 4, &j, &err), 0);
    assert_null(j);
    assert_int_equal(codec_parse_body("", 0, &j, &err), 0);
    assert_null(j);
    assert_int_equal(codec_parse_body(" {\"a\":1}\n", 9, &j, &err), 0);
    printed(j, "{\"a\":1}");
    assert_int_equal(codec_parse_body("{\"n\":}", 6, &j, &err), MA_EINVAL);
    assert_null(j);
    assert_string_equal(err.code, "bad_json");
    assert_non_null(strstr(err.message, "byte 5"));
    assert_int_equal(codec_parse_body("{} x", 4, &j, &err), MA_EINVAL);
    assert_null(j);
    assert_string_equal(err.code, "bad_json");
    assert_non_null(strstr(err.message, "trailing data at byte 3"));
}

static void test_status_table(void **state)
{
    (void)state;
    const char *code;
    assert_int_equal(codec_status_of(MA_EINVAL, NULL, &code), 400);
    assert_string_equal(code, "bad_request");
    assert_int_equal(codec_status_of(MA_ENOTFOUND, NULL, &code), 404);
    assert_string_equal(code, "not_found");
    assert_int_equal(codec_status_of(MA_ENOTFOUND, "no_slot", &code), 404);
    assert_string_equal(code, "no_slot");
    assert_int_equal(codec_status_of(MA_ENOVERSION, "no_slot", &code), 404);
    assert_string_equal(code, "no_version");
    assert_int_equal(codec_status_of(MA_EEXISTS, NULL, &code), 409);
    assert_string_equal(code, "exists");
    assert_int_equal(codec_status_of(MA_ECONFLICT, NULL, &code), 409);
    assert_string_equal(code, "version_conflict");
    assert_int_equal(codec_status_of(MA_EFULL, NULL, &code), 409);
    assert_string_equal(code, "slots_full");
    assert_int_equal(codec_status_of(MA_EPRECOND, NULL, &code), 412);
    assert_string_equal(code, "precondition_failed");
    assert_int_equal(codec_status_of(MA_EPROTECTED, NULL, &code), 423);
    assert_string_equal(code, "protected");
    assert_int_equal(codec_status_of(MA_ENOMEM, NULL, &code), 503);
    assert_string_equal(code, "overloaded");
    assert_int_equal(codec_status_of(MA_ETOOBIG, NULL, &code), 422);
    assert_string_equal(code, "session_too_large");
    const int store[] = {MA_EIO, MA_ECORRUPT, MA_EBUSY, -1000};
    for (size_t i = 0; i < sizeof store / sizeof store[0]; i++) {
        assert_int_equal(codec_status_of(store[i], NULL, &code), 503);
        assert_string_equal(code, "storage_error");
    }
}

static void test_small_bodies(void **state)
{
    (void)state;
    codec_error err;
    uint64_t version = 0;
    bool protect = false;
    const char *path = NULL;
    cJSON *j = parse("{\"version\":3}");
    assert_int_equal(codec_restore_decode(j, &version, &err), 0);
    assert_int_equal(version, 3);
    cJSON_Delete(j);
    const char *bad_restore[] = {"{\"version\":0}", "{\"version\":1.5}", "{\"version\":\"1\"}", "{}", "[1]",
                                 "{\"version\":1,\"x\":1}", "{\"v\":1}"};
    for (size_t i = 0; i < sizeof bad_restore / sizeof bad_restore[0]; i++) {
        j = parse(bad_restore[i]);
        assert_int_equal(codec_restore_decode(j, &version, &err), MA_EINVAL);
        assert_string_equal(err.code, "bad_request");
        cJSON_Delete(j);
    }
    j = parse("{\"protected\":true}");
    assert_int_equal(codec_protect_decode(j, &protect, &err), 0);
    assert_true(protect);
    cJSON_Delete(j);
    j = parse("{\"protected\":1}");
    assert_int_equal(codec_protect_decode(j, &protect, &err), MA_EINVAL);
    assert_string_equal(err.message, "protected: expected true or false");
    cJSON_Delete(j);
    j = parse("{\"protected\":false,\"x\":1}");
    assert_int_equal(codec_protect_decode(j, &protect, &err), MA_EINVAL);
    assert_string_equal(err.message, "expected exactly {\"protected\": true|false}");
    cJSON_Delete(j);
    j = parse("{\"path\":\"/tmp/x.db\"}");
    assert_int_equal(codec_backup_decode(j, &path, &err), 0);
    assert_string_equal(path, "/tmp/x.db");
    cJSON_Delete(j);
    j = parse("{\"path\":\"x.db\"}");
    assert_int_equal(codec_backup_decode(j, &path, &err), MA_EINVAL);
    assert_non_null(strstr(err.message, "is not absolute"));
    cJSON_Delete(j);
    j = parse("{\"path\":1}");
    assert_int_equal(codec_backup_decode(j, &path, &err), MA_EINVAL);
    cJSON_Delete(j);
}

static void test_answers(void **state)
{
    (void)state;
    ma_params p;
    ma_params_default(&p);
    p.dim = p.value_dim = 4;
    cJSON *c = codec_params_to_json(&p);
    char *config = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    char want[1024];
    snprintf(want, sizeof want, "{\"id\":\"s\",\"config\":%s}", config);
    printed(codec_session_to_json("s", &p), want);

    reg_listing l[2] = {{.id = "a", .length = 3, .slots = 1, .created_at = 0, .updated_at = 1500},
                        {.id = "b", .length = 0, .slots = 0, .created_at = 86400000, .updated_at = 86400000}};
    printed(codec_session_list_to_json(l, 2, "b"),
            "{\"sessions\":[{\"id\":\"a\",\"length\":3,\"slots\":1,\"created_at\":\"1970-01-01T00:00:00.000Z\","
            "\"updated_at\":\"1970-01-01T00:00:01.500Z\"},{\"id\":\"b\",\"length\":0,\"slots\":0,"
            "\"created_at\":\"1970-01-02T00:00:00.000Z\",\"updated_at\":\"1970-01-02T00:00:00.000Z\"}],\"next\":\"b\"}");
    printed(codec_session_list_to_json(NULL, 0, NULL), "{\"sessions\":[]}");

    double sn[1] = {2}, pn[1] = {0.5};
    reg_summary sm = {.params = &p, .stats = {.length = 7, .chunks = 1, .slots_resident = 2, .bytes = 100,
                                              .state_norm = sn, .penalty_norm = pn},
                      .stored_bytes = 50, .created_at = 0, .updated_at = 0,
                      .index = {.build = 3, .nlist = 128, .events = 7}, .index_building = true};
    snprintf(want, sizeof want, "{\"id\":\"s\",\"config\":%s,\"length\":7,\"chunks\":1,\"slots_resident\":2,"
             "\"bytes\":100,\"stored_bytes\":50,\"backbone\":{\"state_norm\":[2],\"penalty_norm\":[0.5]},"
             "\"created_at\":\"1970-01-01T00:00:00.000Z\",\"updated_at\":\"1970-01-01T00:00:00.000Z\","
             "\"index\":{\"build\":3,\"lists\":128,\"events\":7,\"building\":true}}", config);
    printed(codec_session_summary_to_json("s", &sm), want);
    cJSON_free(config);

    ma_slot_result res = {.version = 2, .evicted = true};
    snprintf(res.evicted_name, sizeof res.evicted_name, "old");
    printed(codec_slot_result_to_json("n", &res), "{\"name\":\"n\",\"version\":2,\"evicted\":[\"old\"]}");
    res.evicted = false;
    printed(codec_slot_result_to_json("n", &res), "{\"name\":\"n\",\"version\":2,\"evicted\":[]}");
    ma_slot_info si = {.version = 4, .protect = true, .event = -1, .updated_at = 0};
    snprintf(si.name, sizeof si.name, "n");
    printed(codec_slot_protect_to_json(&si), "{\"name\":\"n\",\"version\":4,\"protected\":true}");
    printed(codec_slot_list_to_json(&si, 1),
            "{\"slots\":[{\"name\":\"n\",\"version\":4,\"protected\":true,\"event\":null,\"usage\":0,"
            "\"updated_at\":\"1970-01-01T00:00:00.000Z\"}]}");
    ma_version_info vi = {.version = 1, .event = 3, .at = 0, .tombstone = false};
    printed(codec_versions_to_json(&vi, 1),
            "{\"versions\":[{\"version\":1,\"event\":3,\"at\":\"1970-01-01T00:00:00.000Z\",\"tombstone\":false}]}");
    printed(codec_backup_to_json("/x.db"), "{\"path\":\"/x.db\"}");
    printed(codec_import_to_json("s", 70, 4321), "{\"id\":\"s\",\"length\":70,\"bytes\":4321}");
    printed(codec_frozen_to_json("s", true), "{\"id\":\"s\",\"frozen\":true}");
    printed(codec_frozen_to_json("s", false), "{\"id\":\"s\",\"frozen\":false}");
    printed(codec_length_mismatch_to_json("m", 7),
            "{\"error\":{\"code\":\"length_mismatch\",\"message\":\"m\",\"length\":7}}");
    cJSON *r = codec_results_new();
    printed(r, "{\"results\":[]}");
}

/* ---- slot policies and importance ---------------------------------------------------------------- */

static void test_slot_policy_config(void **state)
{
    (void)state;
    codec_error err;
    ma_params p, q, d;
    ma_params_default(&d);
    /* absent: the defaults, printed in full */
    cJSON *j = parse("{}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    cJSON_Delete(j);
    assert_int_equal(p.slot_policy.eviction, MA_EVICTION_LRU);
    assert_int_equal(p.slot_policy.overwrite, MA_OVERWRITE_REPLACE);
    assert_int_equal(p.slot_policy.read, MA_SLOT_READ_BEST);
    assert_true(p.slot_policy.alpha == 0.5 && p.slot_policy.k == 4 && p.slot_policy.temperature == 0.1);
    cJSON *o = codec_params_to_json(&p);
    char *t = cJSON_PrintUnformatted(cJSON_GetObjectItem(o, "slot_policy"));
    assert_string_equal(t, "{\"eviction\":\"lru\",\"overwrite\":\"replace\",\"alpha\":0.5,\"read\":\"best\",\"k\":4,"
                           "\"temperature\":0.1}");
    cJSON_free(t);
    cJSON_Delete(o);

    j = parse("{\"slot_policy\":{\"eviction\":\"score\",\"overwrite\":\"blend\",\"alpha\":0.25,\"read\":\"topk\","
              "\"k\":8,\"temperature\":0.05}}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    cJSON_Delete(j);
    assert_int_equal(p.slot_policy.eviction, MA_EVICTION_SCORE);
    assert_int_equal(p.slot_policy.overwrite, MA_OVERWRITE_BLEND);
    assert_int_equal(p.slot_policy.read, MA_SLOT_READ_TOPK);
    assert_true(p.slot_policy.alpha == 0.25 && p.slot_policy.k == 8 && p.slot_policy.temperature == 0.05);
    assert_false(ma_params_equal(&p, &d));
    o = codec_params_to_json(&p);
    t = cJSON_PrintUnformatted(o);
    cJSON *back = parse(t);
    assert_int_equal(codec_params_from_json(back, &q, &err), 0);
    assert_true(ma_params_equal(&p, &q));
    cJSON_free(t);
    cJSON_Delete(back);
    cJSON_Delete(o);
    /* a partial object keeps the other defaults; null is absent */
    j = parse("{\"slot_policy\":{\"read\":\"topk\"},\"dim\":8}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    assert_int_equal(p.slot_policy.read, MA_SLOT_READ_TOPK);
    assert_int_equal(p.slot_policy.k, 4);
    cJSON_Delete(j);
    j = parse("{\"slot_policy\":null}");
    assert_int_equal(codec_params_from_json(j, &p, &err), 0);
    assert_true(ma_params_equal(&p, &d));
    cJSON_Delete(j);

    check_config_error("{\"slot_policy\":{\"eviction\":\"fifo\"}}",
                       "slot_policy.eviction: \"fifo\" is not accepted, expected lru or score");
    check_config_error("{\"slot_policy\":{\"overwrite\":\"average\"}}",
                       "slot_policy.overwrite: \"average\" is not accepted, expected replace or blend");
    check_config_error("{\"slot_policy\":{\"read\":\"all\"}}",
                       "slot_policy.read: \"all\" is not accepted, expected best or topk");
    check_config_error("{\"slot_policy\":{\"read\":1}}", "slot_policy.read: expected a string");
    check_config_error("{\"slot_policy\":{\"alpha\":0}}", "slot_policy.alpha: 0 is out of range, expected a number in (0, 1]");
    check_config_error("{\"slot_policy\":{\"alpha\":1.5}}", "slot_policy.alpha: 1.5 is out of range");
    check_config_error("{\"slot_policy\":{\"alpha\":\"half\"}}", "slot_policy.alpha: expected a number, got a string");
    check_config_error("{\"slot_policy\":{\"k\":0}}", "slot_policy.k: 0 is out of range, expected an integer 1..1024");
    check_config_error("{\"slot_policy\":{\"k\":1025}}", "slot_policy.k: 1025 is out of range");
    check_config_error("{\"slot_policy\":{\"k\":2.5}}", "slot_policy.k: expected an integer, got 2.5");
    check_config_error("{\"slot_policy\":{\"temperature\":0}}", "slot_policy.temperature: 0 is out of range");
    check_config_error("{\"slot_policy\":{\"temperature\":1e999}}", "slot_policy.temperature: expected a finite number");
    check_config_error("{\"slot_policy\":{\"topk\":3}}", "slot_policy.topk: unknown field");
    check_config_error("{\"slot_policy\":\"score\"}", "slot_policy: expected an object, got a string");
}

static void test_importance_fields(void **state)
{
    (void)state;
    codec_events e;
    codec_error err;
    cJSON *j = parse("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a\",\"importance\":0.75},"
                     "{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"b\"},{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"c\",\"importance\":0}]}");
    assert_int_equal(codec_events_decode(j, &shape, 4, &e, &err), 0);
    assert_true(e.importance[0] == 0.75 && e.importance[1] == MA_IMPORTANCE_NONE && e.importance[2] == 0);
    codec_events_clear(&e);
    cJSON_Delete(j);
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"importance\":0.5}]}", "bad_request",
                       "events[0].importance: needs slot");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a\",\"importance\":1.01}]}", "bad_request",
                       "events[0].importance: 1.01 is out of range, expected a number in [0, 1]");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a\",\"importance\":-0.5}]}", "bad_request",
                       "events[0].importance: -0.5 is out of range");
    check_events_error("{\"events\":[{\"k\":" K8 ",\"v\":" V6 ",\"slot\":\"a\",\"importance\":\"high\"}]}",
                       "bad_request", "events[0].importance: expected a number in [0, 1], got a string");

    codec_slot_body b;
    j = parse("{\"name\":\"a\",\"payload\":\"x\",\"importance\":1}");
    assert_int_equal(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), 0);
    assert_true(b.has_importance && b.importance == 1.0);
    codec_slot_body_clear(&b);
    assert_int_equal(codec_slot_body_decode(j, "a", true, &shape, &b, &err), 0);
    assert_true(b.has_importance && b.importance == 1.0);
    codec_slot_body_clear(&b);
    cJSON_Delete(j);
    j = parse("{\"name\":\"a\",\"payload\":\"x\"}");
    assert_int_equal(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), 0);
    assert_false(b.has_importance);
    codec_slot_body_clear(&b);
    cJSON_Delete(j);
    j = parse("{\"name\":\"a\",\"payload\":\"x\",\"importance\":2}");
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "bad_request",
                 "importance: 2 is out of range, expected a number in [0, 1]");
    cJSON_Delete(j);
    j = parse("{\"name\":\"a\",\"payload\":\"x\",\"importance\":null}");
    assert_error(codec_slot_body_decode(j, NULL, false, &shape, &b, &err), &err, "bad_request",
                 "importance: expected a number in [0, 1], got null");
    cJSON_Delete(j);

    /* Answers: importance only when given; a weighted read lists its contributions. */
    float v[H * DV] = {1, 2, 3, 4, 5, 0.5f};
    ma_contrib c[2] = {{"x", 3, 0.9, 0.75, true, 0.25}, {"y", 1, 0.5, 0.25, false, 0.5}};
    ma_answer a = {.route = MA_ROUTE_SLOT, .v = v, .score = 0.9, .has_slot = true, .version = 3, .event = -1,
                   .has_importance = true, .importance = 0.25, .contrib = c, .n_contrib = 2};
    strcpy(a.slot, "x");
    cJSON *o = codec_answer_to_json(&a, H * DV);
    char *s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"route\":\"slot\",\"v\":[1,2,3,4,5,0.5],\"score\":0.9,\"slot\":\"x\",\"version\":3,"
                           "\"importance\":0.25,\"contributions\":[{\"slot\":\"x\",\"version\":3,\"score\":0.9,"
                           "\"weight\":0.75,\"importance\":0.25},{\"slot\":\"y\",\"version\":1,\"score\":0.5,"
                           "\"weight\":0.25}]}");
    cJSON_free(s);
    cJSON_Delete(o);
    ma_slot_info si = {.name = "n", .version = 4, .event = -1, .has_importance = true, .importance = 0.5};
    o = codec_slot_info_to_json(&si);
    s = cJSON_PrintUnformatted(o);
    assert_non_null(strstr(s, "\"importance\":0.5"));
    cJSON_free(s);
    cJSON_Delete(o);
    ma_version_info vi[2] = {{.version = 1, .event = 3, .has_importance = true, .importance = 1},
                             {.version = 2, .event = -1, .tombstone = true}};
    o = codec_versions_to_json(vi, 2);
    s = cJSON_PrintUnformatted(o);
    assert_string_equal(s, "{\"versions\":[{\"version\":1,\"event\":3,\"at\":\"1970-01-01T00:00:00.000Z\","
                           "\"tombstone\":false,\"importance\":1},{\"version\":2,\"event\":null,"
                           "\"at\":\"1970-01-01T00:00:00.000Z\",\"tombstone\":true}]}");
    cJSON_free(s);
    cJSON_Delete(o);
    ma_slot_value sv = {.info = {.name = "n", .version = 1, .event = -1, .has_importance = true, .importance = 0},
                        .k = v, .v = v};
    o = codec_slot_value_to_json(&sv, 2, 2);
    s = cJSON_PrintUnformatted(o);
    assert_non_null(strstr(s, "\"importance\":0}"));
    cJSON_free(s);
    cJSON_Delete(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_roundtrip),
        cmocka_unit_test(test_b64_rejects),
        cmocka_unit_test(test_b64_against_reference),
        cmocka_unit_test(test_params_defaults),
        cmocka_unit_test(test_params_roundtrip),
        cmocka_unit_test(test_params_errors),
        cmocka_unit_test(test_events_decode),
        cmocka_unit_test(test_events_text_payload_slot),
        cmocka_unit_test(test_events_errors),
        cmocka_unit_test(test_events_b64_fast_path),
        cmocka_unit_test(test_events_simple_path),
        cmocka_unit_test(test_events_binary),
        cmocka_unit_test(test_queries_decode),
        cmocka_unit_test(test_queries_errors),
        cmocka_unit_test(test_slot_body),
        cmocka_unit_test(test_floats_exact),
        cmocka_unit_test(test_answer_json),
        cmocka_unit_test(test_report_json),
        cmocka_unit_test(test_mutated_bodies),
        cmocka_unit_test(test_parse_body),
        cmocka_unit_test(test_status_table),
        cmocka_unit_test(test_small_bodies),
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_slot_policy_config),
        cmocka_unit_test(test_importance_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
