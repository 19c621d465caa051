/*
 * tests/e2e/test_api_flow.c — the REST API end to end, over real HTTP against build/memattnd:
 * sessions, events, every query route (outputs checked against a double-precision reference computed
 * here), and the slot lifecycle scenarios of the issue (demo, overwrite, versions, protect, evict then
 * sparse fallback, restore), plus durability across a restart and an online backup.
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
#include <sys/stat.h>
#include <unistd.h>

#include "tests/e2e/api_util.h"

static mh_daemon dmn;

static int setup(void **state)
{
    (void)state;
    return mh_start(&dmn, NULL, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return mh_stop(&dmn, 30000) == 0 ? 0 : -1;
}

static uint64_t rng = 1;
static double urand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* n floats, each head's block normalised to unit length (per = block size). */
static void unit_vec(float *x, int heads, int per)
{
    for (int h = 0; h < heads; h++) {
        double s = 0;
        for (int j = 0; j < per; j++) {
            x[h * per + j] = (float)(urand() * 2 - 1);
            s += (double)x[h * per + j] * x[h * per + j];
        }
        for (int j = 0; j < per; j++)
            x[h * per + j] = (float)(x[h * per + j] / sqrt(s));
    }
}

/* "[x0,x1,...]" with 9 significant digits (exact for float32). */
static char *json_floats(const float *x, size_t n)
{
    char *s = malloc(n * 18 + 3);
    size_t o = 0;
    s[o++] = '[';
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(s + o, "%s%.9g", i ? "," : "", (double)x[i]);
    s[o++] = ']';
    s[o] = '\0';
    return s;
}

static void get_floats(const cJSON *j, const char *path, float *out, size_t n)
{
    assert_int_equal(au_len(j, path), (int)n);
    const cJSON *a = au_get(j, path);
    size_t i = 0;
    for (const cJSON *e = a->child; e; e = e->next)
        out[i++] = (float)e->valuedouble;
}

/* ---- the demo of API.md --------------------------------------------------------------------- */

static void test_demo(void **state)
{
    (void)state;
    cJSON *j = au_call(&dmn, "PUT", "/v1/sessions/demo", 201, "{\"dim\":64}");
    assert_string_equal(au_str(j, "id"), "demo");
    assert_int_equal((int)au_num(j, "config.dim"), 64);
    cJSON_Delete(j);
    j = au_call(&dmn, "PUT", "/v1/sessions/demo/slots/capital_of_france", 201, "{\"payload\":\"Paris\"}");
    assert_int_equal((int)au_num(j, "version"), 1);
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/demo/query", 200, "{\"queries\":[{\"text\":\"capital of France\"}]}");
    assert_string_equal(au_str(j, "results[0].route"), "slot");
    assert_string_equal(au_str(j, "results[0].slot"), "capital_of_france");
    assert_int_equal((int)au_num(j, "results[0].version"), 1);
    assert_string_equal(au_str(j, "results[0].payload"), "Paris");
    assert_int_equal(au_len(j, "results[0].v"), 64);
    cJSON_Delete(j);
}

/* ---- sessions ------------------------------------------------------------------------------- */

static void test_sessions(void **state)
{
    (void)state;
    /* server-chosen ids: 32 hex digits, all different */
    char ids[3][64];
    for (int i = 0; i < 3; i++) {
        cJSON *j = au_call(&dmn, "POST", "/v1/sessions", 201, i == 0 ? NULL : "{\"slots\":%d}", i);
        snprintf(ids[i], sizeof ids[i], "%s", au_str(j, "id"));
        assert_int_equal(strlen(ids[i]), 32);
        assert_int_equal(strspn(ids[i], "0123456789abcdef"), 32);
        assert_int_equal((int)au_num(j, "config.slots"), i == 0 ? 64 : i);
        assert_int_equal((int)au_num(j, "config.heads"), 1);
        cJSON_Delete(j);
        for (int k = 0; k < i; k++)
            assert_string_not_equal(ids[i], ids[k]);
    }
    /* idempotent PUT; conflicting config */
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s.one", 201, "{\"heads\":2,\"dim\":8}"));
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s.one", 200, "{\"dim\":8,\"heads\":2,\"value_dim\":8}"));
    au_error(&dmn, "PUT", "/v1/sessions/s.one", 409, "exists", "{\"heads\":2,\"dim\":8,\"slots\":3}");

    /* paging through every session */
    int seen = 0, pages = 0;
    char after[160] = "";
    for (;;) {
        char path[256];
        snprintf(path, sizeof path, "/v1/sessions?limit=2%s%s", after[0] ? "&after=" : "", after);
        cJSON *j = au_call(&dmn, "GET", path, 200, NULL);
        int n = au_len(j, "sessions");
        assert_true(n <= 2);
        for (int i = 0; i < n; i++) {
            char p[32];
            snprintf(p, sizeof p, "sessions[%d].id", i);
            assert_true(strcmp(au_str(j, p), after) > 0);  /* ordered by id */
            snprintf(after, sizeof after, "%s", au_str(j, p));
        }
        seen += n;
        pages++;
        const cJSON *next = au_get(j, "next");
        if (!next) {
            cJSON_Delete(j);
            break;
        }
        assert_string_equal(next->valuestring, after);
        cJSON_Delete(j);
    }
    assert_true(seen >= 5);  /* demo (if run before), 3 posted, s.one */
    assert_int_equal(pages, seen / 2 + 1);  /* a full last page says next; the page after it is empty */

    /* describe */
    cJSON *j = au_call(&dmn, "GET", "/v1/sessions/s.one", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), 0);
    assert_int_equal((int)au_num(j, "chunks"), 0);
    assert_int_equal((int)au_num(j, "slots_resident"), 0);
    assert_true(au_num(j, "bytes") > 0);
    assert_true(au_num(j, "stored_bytes") >= 0);
    assert_int_equal(au_len(j, "backbone.state_norm"), 2);
    assert_int_equal(au_len(j, "backbone.penalty_norm"), 2);
    assert_int_equal((int)au_num(j, "config.heads"), 2);
    cJSON_Delete(j);

    /* delete: gone, and the id can be reused with another config */
    assert_null(au_call(&dmn, "DELETE", "/v1/sessions/s.one", 204, NULL));
    au_error(&dmn, "GET", "/v1/sessions/s.one", 404, "no_session", NULL);
    au_error(&dmn, "DELETE", "/v1/sessions/s.one", 404, "no_session", NULL);
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s.one", 201, "{\"dim\":4}"));
    assert_null(au_call(&dmn, "DELETE", "/v1/sessions/s.one", 204, NULL));
}

/* ---- events and every route ------------------------------------------------------------------- */

enum { H = 2, D = 8, DV = 4, T = 40, W = 5 };

static float K[T][H * D], V[T][H * DV];

/* Exact softmax attention over events [from, T) for one query, in double. */
static void reference(const float *q, int from, double *out)
{
    for (int h = 0; h < H; h++) {
        double s[T], mx = -1e300, z = 0;
        for (int i = from; i < T; i++) {
            s[i] = 0;
            for (int j = 0; j < D; j++)
                s[i] += (double)q[h * D + j] * K[i][h * D + j];
            s[i] /= sqrt((double)D);
            mx = fmax(mx, s[i]);
        }
        for (int c = 0; c < DV; c++)
            out[h * DV + c] = 0;
        for (int i = from; i < T; i++) {
            double w = exp(s[i] - mx);
            z += w;
            for (int c = 0; c < DV; c++)
                out[h * DV + c] += w * V[i][h * DV + c];
        }
        for (int c = 0; c < DV; c++)
            out[h * DV + c] /= z;
    }
}

static void assert_close(const float *got, const double *want, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++)
        if (fabs(got[i] - want[i]) > tol)
            fail_msg("element %zu: got %.9g, expected %.9g", i, (double)got[i], want[i]);
}

static void test_events_and_routes(void **state)
{
    (void)state;
    rng = 12345;
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/routes", 201,
                         "{\"heads\":%d,\"dim\":%d,\"value_dim\":%d,\"chunk\":4,\"window\":%d,\"selector\":\"chunks\","
                         "\"topk\":64,\"route_threshold\":0.99}", H, D, DV, W));
    /* 40 events in 4 batches; alternate JSON arrays and base64 */
    for (int b = 0; b < 4; b++) {
        size_t cap = 65536, o = 0;
        char *body = malloc(cap);
        o += (size_t)snprintf(body + o, cap - o, "{\"events\":[");
        for (int i = b * 10; i < b * 10 + 10; i++) {
            unit_vec(K[i], H, D);
            unit_vec(V[i], H, DV);
            char *ks = json_floats(K[i], H * D), *vs = json_floats(V[i], H * DV);
            o += (size_t)snprintf(body + o, cap - o, "%s{\"k\":%s,\"v\":%s,\"payload\":{\"i\":%d}}",
                                  i % 10 ? "," : "", ks, vs, i);
            free(ks);
            free(vs);
        }
        snprintf(body + o, cap - o, "]}");
        cJSON *j = au_call(&dmn, "POST", "/v1/sessions/routes/events", 200, "%s", body);
        free(body);
        assert_int_equal((int)au_num(j, "length"), (b + 1) * 10);
        assert_int_equal((int)au_num(j, "appended"), 10);
        assert_int_equal(au_len(j, "writes"), 0);
        cJSON_Delete(j);
    }
    cJSON *j = au_call(&dmn, "GET", "/v1/sessions/routes", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), T);
    assert_int_equal((int)au_num(j, "chunks"), T / 4);
    assert_true(au_num(j, "backbone.state_norm[0]") > 0);
    cJSON_Delete(j);

    /* Query = event 17's key: full, sparse (every chunk), window, state, auto (no slots: sparse). */
    const int target = 17;
    char *qs = json_floats(K[target], H * D);
    j = au_call(&dmn, "POST", "/v1/sessions/routes/query", 200,
                "{\"queries\":[{\"q\":%s,\"route\":\"full\"},{\"q\":%s,\"route\":\"sparse\"},{\"q\":%s,\"route\":\"window\"},"
                "{\"q\":%s,\"route\":\"state\"},{\"q\":%s}]}", qs, qs, qs, qs, qs);
    free(qs);
    double ref_full[H * DV], ref_win[H * DV];
    float got[H * DV];
    reference(K[target], 0, ref_full);
    reference(K[target], T - W, ref_win);

    assert_string_equal(au_str(j, "results[0].route"), "full");
    get_floats(j, "results[0].v", got, H * DV);
    assert_close(got, ref_full, H * DV, 1e-5);
    assert_int_equal((int)au_num(j, "results[0].event"), target);
    assert_int_equal((int)au_num(j, "results[0].payload.i"), target);
    assert_int_equal(au_len(j, "results[0].chunks"), T / 4);
    assert_true(fabs(au_num(j, "results[0].score") - 1.0) < 1e-5);  /* cosine of the key with itself */

    assert_string_equal(au_str(j, "results[1].route"), "sparse");
    get_floats(j, "results[1].v", got, H * DV);
    assert_close(got, ref_full, H * DV, 1e-5);  /* topk covers every chunk: sparse == full */
    assert_int_equal((int)au_num(j, "results[1].event"), target);

    assert_string_equal(au_str(j, "results[2].route"), "window");
    get_floats(j, "results[2].v", got, H * DV);
    assert_close(got, ref_win, H * DV, 1e-5);
    assert_true(au_num(j, "results[2].event") >= T - W);

    assert_string_equal(au_str(j, "results[3].route"), "state");
    assert_int_equal(au_len(j, "results[3].v"), H * DV);
    assert_null(au_get(j, "results[3].chunks"));

    assert_string_equal(au_str(j, "results[4].route"), "sparse");
    assert_int_equal((int)au_num(j, "results[4].event"), target);
    cJSON_Delete(j);

    /* a sparse read with topk 1 touches one chunk: the target's */
    qs = json_floats(K[target], H * D);
    j = au_call(&dmn, "POST", "/v1/sessions/routes/query", 200, "{\"queries\":[{\"q\":%s,\"route\":\"sparse\",\"topk\":1}]}", qs);
    free(qs);
    assert_int_equal(au_len(j, "results[0].chunks"), 1);
    assert_int_equal((int)au_num(j, "results[0].chunks[0]"), target / 4);
    cJSON_Delete(j);

    /* metrics count the routes */
    mh_resp r;
    assert_int_equal(mh_request(&dmn, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_non_null(strstr(r.body, "memattn_routes_total{route=\"window\"} 1"));
    assert_non_null(strstr(r.body, "memattn_events_ingested_total"));
    mh_resp_free(&r);
}

/* ---- slots ---------------------------------------------------------------------------------- */

static void test_overwrite_versions(void **state)
{
    (void)state;
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/ow", 201, "{\"dim\":32}"));
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/ow/slots", 201, "{\"name\":\"ceo\",\"payload\":\"Alice\"}"));
    cJSON *j = au_call(&dmn, "PUT", "/v1/sessions/ow/slots/ceo", 200, "{\"payload\":\"Bob\"}");
    assert_int_equal((int)au_num(j, "version"), 2);
    cJSON_Delete(j);
    const char *ifm[] = {"If-Match: \"2\"", NULL};
    j = au_callh(&dmn, "PUT", "/v1/sessions/ow/slots/ceo", ifm, 200, "{\"payload\":\"Carol\"}");
    assert_int_equal((int)au_num(j, "version"), 3);
    cJSON_Delete(j);
    /* newest value answers */
    j = au_call(&dmn, "POST", "/v1/sessions/ow/query", 200, "{\"queries\":[{\"text\":\"ceo\"},{\"slot\":\"ceo\"}]}");
    assert_string_equal(au_str(j, "results[0].route"), "slot");
    assert_string_equal(au_str(j, "results[0].payload"), "Carol");
    assert_int_equal((int)au_num(j, "results[0].version"), 3);
    assert_string_equal(au_str(j, "results[1].payload"), "Carol");
    cJSON_Delete(j);
    /* old versions: by read and by query */
    j = au_call(&dmn, "GET", "/v1/sessions/ow/slots/ceo?version=1", 200, NULL);
    assert_string_equal(au_str(j, "payload"), "Alice");
    assert_int_equal((int)au_num(j, "version"), 1);
    assert_int_equal(au_len(j, "k"), 32);
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/ow/query", 200, "{\"queries\":[{\"slot\":\"ceo\",\"version\":2}]}");
    assert_string_equal(au_str(j, "results[0].payload"), "Bob");
    assert_int_equal((int)au_num(j, "results[0].version"), 2);
    cJSON_Delete(j);
    /* explicit version jumps; history lists every version */
    j = au_call(&dmn, "PUT", "/v1/sessions/ow/slots/ceo", 200, "{\"payload\":\"Dan\",\"version\":7}");
    assert_int_equal((int)au_num(j, "version"), 7);
    cJSON_Delete(j);
    j = au_call(&dmn, "GET", "/v1/sessions/ow/slots/ceo/versions", 200, NULL);
    assert_int_equal(au_len(j, "versions"), 4);
    assert_int_equal((int)au_num(j, "versions[3].version"), 7);
    assert_false(au_bool(j, "versions[3].tombstone"));
    cJSON_Delete(j);
    /* restore makes a new version with the old value */
    j = au_call(&dmn, "POST", "/v1/sessions/ow/slots/ceo/restore", 200, "{\"version\":1}");
    assert_int_equal((int)au_num(j, "version"), 8);
    cJSON_Delete(j);
    j = au_call(&dmn, "GET", "/v1/sessions/ow/slots/ceo", 200, NULL);
    assert_string_equal(au_str(j, "payload"), "Alice");
    assert_int_equal((int)au_num(j, "version"), 8);
    cJSON_Delete(j);
    /* PUT creating a slot answers 201 */
    j = au_call(&dmn, "PUT", "/v1/sessions/ow/slots/cto", 201, "{\"payload\":\"Eve\"}");
    assert_int_equal((int)au_num(j, "version"), 1);
    cJSON_Delete(j);
    j = au_call(&dmn, "GET", "/v1/sessions/ow/slots", 200, NULL);
    assert_int_equal(au_len(j, "slots"), 2);
    assert_string_equal(au_str(j, "slots[0].name"), "ceo");
    assert_string_equal(au_str(j, "slots[1].name"), "cto");
    assert_true(au_num(j, "slots[0].usage") >= 2);
    cJSON_Delete(j);
}

static void test_protect_and_evict(void **state)
{
    (void)state;
    rng = 777;
    enum { d = 16 };
    float k1[d], k2[d], k3[d], v1[d], v2[d], f[d];
    unit_vec(k1, 1, d);
    unit_vec(k2, 1, d);
    unit_vec(k3, 1, d);
    unit_vec(v1, 1, d);
    unit_vec(v2, 1, d);
    char *k1s = json_floats(k1, d), *k2s = json_floats(k2, d), *k3s = json_floats(k3, d);
    char *v1s = json_floats(v1, d), *v2s = json_floats(v2, d);
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/prot", 201, "{\"dim\":%d,\"slots\":4}", d));

    /* event 0 writes and protects "fact"; event 1's write to it is void */
    cJSON *j = au_call(&dmn, "POST", "/v1/sessions/prot/events", 200,
                       "{\"events\":[{\"k\":%s,\"v\":%s,\"slot\":\"fact\",\"protect\":true,\"payload\":\"true value\"},"
                       "{\"k\":%s,\"v\":%s,\"slot\":\"fact\",\"payload\":\"distractor\"}]}", k1s, v1s, k1s, v2s);
    assert_int_equal(au_len(j, "writes"), 1);
    assert_int_equal((int)au_num(j, "writes[0].event"), 0);
    assert_int_equal(au_len(j, "void_writes"), 1);
    assert_string_equal(au_str(j, "void_writes[0].slot"), "fact");
    assert_int_equal((int)au_num(j, "void_writes[0].event"), 1);
    assert_string_equal(au_str(j, "void_writes[0].reason"), "protected");
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/prot/query", 200, "{\"queries\":[{\"q\":%s}]}", k1s);
    assert_string_equal(au_str(j, "results[0].route"), "slot");
    assert_string_equal(au_str(j, "results[0].payload"), "true value");
    assert_int_equal((int)au_num(j, "results[0].version"), 1);
    get_floats(j, "results[0].v", f, d);
    assert_memory_equal(f, v1, sizeof f);
    cJSON_Delete(j);
    j = au_call(&dmn, "GET", "/v1/sessions/prot/slots/fact", 200, NULL);
    assert_true(au_bool(j, "protected"));
    assert_int_equal((int)au_num(j, "event"), 0);
    cJSON_Delete(j);
    au_error(&dmn, "DELETE", "/v1/sessions/prot/slots/fact", 423, "protected", NULL);
    au_error(&dmn, "PUT", "/v1/sessions/prot/slots/fact", 423, "protected", "{\"payload\":\"x\"}");
    au_error(&dmn, "POST", "/v1/sessions/prot/slots/fact/restore", 423, "protected", "{\"version\":1}");

    /* an unprotected slot written by event 2, then evicted: history stays, sparse still finds it */
    j = au_call(&dmn, "POST", "/v1/sessions/prot/events", 200,
                "{\"events\":[{\"k\":%s,\"v\":%s,\"slot\":\"other\",\"payload\":\"evicted value\"},"
                "{\"k\":%s,\"v\":%s,\"payload\":\"filler\"}]}", k2s, v2s, k3s, v1s);
    assert_int_equal((int)au_num(j, "writes[0].event"), 2);
    cJSON_Delete(j);
    assert_null(au_call(&dmn, "DELETE", "/v1/sessions/prot/slots/other", 204, NULL));
    au_error(&dmn, "DELETE", "/v1/sessions/prot/slots/other", 404, "no_slot", NULL);
    au_error(&dmn, "GET", "/v1/sessions/prot/slots/other", 404, "no_slot", NULL);
    j = au_call(&dmn, "GET", "/v1/sessions/prot/slots/other/versions", 200, NULL);
    assert_int_equal(au_len(j, "versions"), 2);
    assert_true(au_bool(j, "versions[1].tombstone"));
    cJSON_Delete(j);
    au_error(&dmn, "GET", "/v1/sessions/prot/slots/other?version=2", 404, "no_version", NULL);
    j = au_call(&dmn, "GET", "/v1/sessions/prot/slots/other?version=1", 200, NULL);
    assert_string_equal(au_str(j, "payload"), "evicted value");
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/prot/query", 200, "{\"queries\":[{\"q\":%s}]}", k2s);
    assert_string_equal(au_str(j, "results[0].route"), "sparse");
    assert_int_equal((int)au_num(j, "results[0].event"), 2);
    assert_string_equal(au_str(j, "results[0].payload"), "evicted value");
    cJSON_Delete(j);
    /* unprotect, then evict works; restore brings "other" back */
    j = au_call(&dmn, "PATCH", "/v1/sessions/prot/slots/fact", 200, "{\"protected\":false}");
    assert_false(au_bool(j, "protected"));
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/prot/slots/other/restore", 200, "{\"version\":1}");
    assert_int_equal((int)au_num(j, "version"), 3);
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/prot/query", 200, "{\"queries\":[{\"q\":%s}]}", k2s);
    assert_string_equal(au_str(j, "results[0].route"), "slot");
    assert_string_equal(au_str(j, "results[0].slot"), "other");
    cJSON_Delete(j);
    free(k1s);
    free(k2s);
    free(k3s);
    free(v1s);
    free(v2s);
}

static void test_capacity_eviction(void **state)
{
    (void)state;
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/cap", 201, "{\"dim\":16,\"slots\":2}"));
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/cap/slots", 201, "{\"name\":\"a\",\"payload\":\"A\",\"protect\":true}"));
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/cap/slots", 201, "{\"name\":\"b\",\"payload\":\"B\"}"));
    cJSON *j = au_call(&dmn, "POST", "/v1/sessions/cap/slots", 201, "{\"name\":\"c\",\"payload\":\"C\"}");
    assert_int_equal(au_len(j, "evicted"), 1);
    assert_string_equal(au_str(j, "evicted[0]"), "b");  /* a is protected */
    cJSON_Delete(j);
    j = au_call(&dmn, "POST", "/v1/sessions/cap/events", 200, "{\"events\":[{\"text\":\"d\",\"payload\":\"D\",\"slot\":\"d\"}]}");
    assert_int_equal(au_len(j, "evicted"), 1);
    assert_string_equal(au_str(j, "evicted[0]"), "c");
    cJSON_Delete(j);
}

/* ---- durability across a restart --------------------------------------------------------------- */

static void test_restart(void **state)
{
    (void)state;
    const char *q = "{\"queries\":[{\"text\":\"capital of France\"},{\"slot\":\"ceo\"},{\"text\":\"ceo\",\"route\":\"full\"}]}";
    char dir[] = "/tmp/memattn-api-restartXXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *args[] = {"--data", dir, NULL};
    mh_daemon a;
    assert_int_equal(mh_start(&a, args, NULL), 0);
    cJSON_Delete(au_call(&a, "PUT", "/v1/sessions/keep", 201, "{\"dim\":16,\"chunk\":2}"));
    cJSON_Delete(au_call(&a, "PUT", "/v1/sessions/keep/slots/capital_of_france", 201, "{\"payload\":\"Paris\"}"));
    cJSON_Delete(au_call(&a, "POST", "/v1/sessions/keep/events", 200,
                         "{\"events\":[{\"text\":\"ceo\",\"payload\":\"Ann\",\"slot\":\"ceo\"},{\"text\":\"x\",\"payload\":\"X\"},"
                         "{\"text\":\"ceo is Ben\",\"payload\":\"Ben\",\"slot\":\"ceo\"},{\"text\":\"y z\",\"payload\":\"Y\"},"
                         "{\"text\":\"w\",\"v\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],\"payload\":{\"deep\":[1,2]}}]}"));
    assert_null(au_call(&a, "DELETE", "/v1/sessions/keep/slots/capital_of_france", 204, NULL));
    cJSON_Delete(au_call(&a, "PUT", "/v1/sessions/keep/slots/capital_of_france", 201, "{\"payload\":\"Paris!\"}"));
    cJSON_Delete(au_call(&a, "PATCH", "/v1/sessions/keep/slots/ceo", 200, "{\"protected\":true}"));
    char *before = au_snapshot(&a, "keep", q);
    assert_int_equal(mh_stop(&a, 30000), 0);

    mh_daemon b;
    assert_int_equal(mh_start(&b, args, NULL), 0);
    char *after = au_snapshot(&b, "keep", q);
    assert_string_equal(before, after);   /* same state, same answers (bits: floats print exactly) */
    free(after);

    /* an online backup, started as the data of a third daemon, holds the same session */
    char bdir[300], bfile[340];
    snprintf(bdir, sizeof bdir, "%s/restored", dir);
    snprintf(bfile, sizeof bfile, "%s/memattn.db", bdir);
    assert_int_equal(mkdir(bdir, 0700), 0);
    cJSON *j = au_call(&b, "POST", "/v1/admin/backup", 200, "{\"path\":\"%s\"}", bfile);
    assert_string_equal(au_str(j, "path"), bfile);
    cJSON_Delete(j);
    au_error(&b, "POST", "/v1/admin/backup", 409, "exists", "{\"path\":\"%s\"}", bfile);
    au_error(&b, "POST", "/v1/admin/backup", 400, "bad_request", "{\"path\":\"relative.db\"}");
    assert_int_equal(mh_stop(&b, 30000), 0);
    const char *bargs[] = {"--data", bdir, NULL};
    mh_daemon c;
    assert_int_equal(mh_start(&c, bargs, NULL), 0);
    after = au_snapshot(&c, "keep", q);
    assert_string_equal(before, after);
    assert_int_equal(mh_stop(&c, 30000), 0);
    free(before);
    free(after);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- corrections under slot pressure, forgetting ------------------------------------------------ */

/* Bytes of the data directory's database and WAL files that contain needle. */
static bool store_contains(const char *dir, const char *needle)
{
    const char *files[] = {"memattn.db", "memattn.db-wal"};
    bool found = false;
    for (int f = 0; f < 2 && !found; f++) {
        char path[400];
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        FILE *fp = fopen(path, "rb");
        if (!fp)
            continue;
        size_t cap = 1 << 20, len = 0, n;
        char *buf = malloc(cap);
        assert_non_null(buf);
        while ((n = fread(buf + len, 1, cap - len, fp)) > 0) {
            len += n;
            if (len == cap) {
                cap *= 2;
                buf = realloc(buf, cap);
                assert_non_null(buf);
            }
        }
        fclose(fp);
        size_t nl = strlen(needle);
        for (size_t i = 0; i + nl <= len && !found; i++)
            found = memcmp(buf + i, needle, nl) == 0;
        free(buf);
    }
    return found;
}

/* The newest payload answers on every archive route, whatever the slot table holds. */
static void newest_everywhere(mh_daemon *d, const char *want)
{
    cJSON *j = au_call(d, "POST", "/v1/sessions/fix/query", 200,
                       "{\"queries\":[{\"text\":\"ceo\"},{\"text\":\"ceo\",\"route\":\"sparse\"},"
                       "{\"text\":\"ceo\",\"route\":\"full\"},{\"text\":\"ceo\",\"route\":\"window\"},"
                       "{\"text\":\"ceo\",\"route\":\"full\",\"include_superseded\":true}]}");
    for (int i = 0; i < 4; i++) {
        char path[40];
        snprintf(path, sizeof path, "results[%d].payload", i);
        assert_string_equal(au_str(j, path), want);
    }
    assert_string_equal(au_str(j, "results[4].payload"), "Ann");   /* audit: the first of equal keys */
    cJSON_Delete(j);
}

static void test_corrections_and_forget(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-api-fixXXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *args[] = {"--data", dir, NULL};
    mh_daemon a;
    assert_int_equal(mh_start(&a, args, NULL), 0);
    cJSON_Delete(au_call(&a, "PUT", "/v1/sessions/fix", 201, "{\"dim\":16,\"chunk\":2,\"slots\":2,\"window\":64}"));
    /* ceo: Ann, corrected to Ben; then two other slots push ceo out of the table. */
    cJSON *j = au_call(&a, "POST", "/v1/sessions/fix/events", 200,
                       "{\"events\":[{\"text\":\"ceo\",\"payload\":\"Ann\",\"slot\":\"ceo\"},{\"text\":\"x\",\"payload\":\"X\"},"
                       "{\"text\":\"ceo\",\"payload\":\"Ben\",\"slot\":\"ceo\"},{\"text\":\"y z\",\"payload\":\"YZ\"},"
                       "{\"text\":\"alpha\",\"payload\":\"A\",\"slot\":\"a\"},{\"text\":\"beta\",\"payload\":\"B\",\"slot\":\"b\"},"
                       "{\"text\":\"XYZZY\",\"payload\":\"XYZZY-SECRET-42\",\"slot\":\"secret\"}]}");
    assert_int_equal(au_len(j, "evicted"), 2);
    cJSON_Delete(j);
    au_error(&a, "GET", "/v1/sessions/fix/slots/ceo", 404, "no_slot", NULL);
    newest_everywhere(&a, "Ben");
    /* A version of an evicted slot answers by name, as GET ?version= reads it. */
    j = au_call(&a, "POST", "/v1/sessions/fix/query", 200, "{\"queries\":[{\"slot\":\"ceo\",\"version\":1}]}");
    assert_string_equal(au_str(j, "results[0].payload"), "Ann");
    cJSON_Delete(j);

    /* Forget: the payload leaves every route and the database file. */
    cJSON_Delete(au_call(&a, "PUT", "/v1/sessions/fix/slots/secret", 200, "{\"payload\":\"XYZZY-SECRET-43\"}"));
    assert_true(store_contains(dir, "XYZZY-SECRET-42"));
    au_error(&a, "DELETE", "/v1/sessions/fix/slots/secret?forget=maybe", 400, "bad_request", NULL);
    assert_null(au_call(&a, "DELETE", "/v1/sessions/fix/slots/secret?forget=true", 204, NULL));
    au_error(&a, "GET", "/v1/sessions/fix/slots/secret?version=1", 404, "no_version", NULL);
    j = au_call(&a, "POST", "/v1/sessions/fix/query", 200,
                "{\"queries\":[{\"text\":\"XYZZY\",\"route\":\"full\",\"include_superseded\":true},"
                "{\"text\":\"XYZZY\",\"route\":\"sparse\"},{\"slot\":\"secret\",\"version\":2}]}");
    char *t = cJSON_PrintUnformatted(j);
    assert_null(strstr(t, "XYZZY-SECRET"));
    free(t);
    assert_string_equal(au_str(j, "results[2].error.code"), "no_version");
    cJSON_Delete(j);
    assert_false(store_contains(dir, "XYZZY-SECRET-42"));
    assert_false(store_contains(dir, "XYZZY-SECRET-43"));
    assert_int_equal(mh_stop(&a, 30000), 0);

    /* After a restart: the same answers (masks come back with the slot history). */
    mh_daemon b;
    assert_int_equal(mh_start(&b, args, NULL), 0);
    newest_everywhere(&b, "Ben");
    j = au_call(&b, "POST", "/v1/sessions/fix/query", 200,
                "{\"queries\":[{\"text\":\"XYZZY\",\"route\":\"full\",\"include_superseded\":true}]}");
    t = cJSON_PrintUnformatted(j);
    assert_null(strstr(t, "XYZZY-SECRET"));
    free(t);
    cJSON_Delete(j);
    assert_int_equal(mh_stop(&b, 30000), 0);
    assert_false(store_contains(dir, "XYZZY-SECRET-42"));
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- memory budget: sessions paged out and unloaded, answers unchanged -------------------------- */

static long metric(mh_daemon *d, const char *name)
{
    mh_resp r;
    assert_int_equal(mh_request(d, "GET", "/metrics", NULL, NULL, &r), 0);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(r.body, key);
    long v = p ? atol(p + strlen(key)) : -1;
    mh_resp_free(&r);
    return v;
}

static void test_memory_budget(void **state)
{
    (void)state;
    enum { S = 6, E = 300 };   /* dim 256: a footprint of ~3 MiB (docs/STORE.md, "Memory budget") */
    const char *args[] = {"--memory", "8M", NULL};
    const char *q = "{\"queries\":[{\"text\":\"event 17\"},{\"text\":\"event 299\",\"route\":\"full\"},{\"slot\":\"fact\"}]}";
    mh_daemon m;
    char *snap[S];
    assert_int_equal(mh_start(&m, args, NULL), 0);
    for (int i = 0; i < S; i++) {
        char path[64], *body = malloc(E * 64 + 64);
        size_t o = (size_t)sprintf(body, "{\"events\":[");
        for (int e = 0; e < E; e++)
            o += (size_t)sprintf(body + o, "%s{\"text\":\"event %d of %d\",\"payload\":\"p%d\"}", e ? "," : "", e, i, e);
        strcpy(body + o, "]}");
        snprintf(path, sizeof path, "/v1/sessions/m%d", i);
        cJSON_Delete(au_call(&m, "PUT", path, 201, "{\"dim\":256,\"chunk\":16}"));
        snprintf(path, sizeof path, "/v1/sessions/m%d/events", i);
        cJSON_Delete(au_call(&m, "POST", path, 200, "%s", body));
        snprintf(path, sizeof path, "/v1/sessions/m%d/slots", i);
        cJSON_Delete(au_call(&m, "POST", path, 201, "{\"name\":\"fact\",\"payload\":\"f%d\"}", i));
        free(body);
        char id[16];
        snprintf(id, sizeof id, "m%d", i);
        snap[i] = au_snapshot(&m, id, q);
    }
    long loaded = metric(&m, "memattn_sessions_loaded"), unloads = metric(&m, "memattn_session_unloads_total");
    long bytes = metric(&m, "memattn_session_memory_bytes");
    assert_true(loaded >= 1 && loaded < S);   /* six sessions do not fit 8 MiB */
    assert_true(unloads >= 1);
    assert_true(bytes > 0);
    /* every session, reloaded from the store when needed, gives the same answers */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < S; i++) {
            char id[16];
            snprintf(id, sizeof id, "m%d", i);
            char *again = au_snapshot(&m, id, q);
            assert_string_equal(snap[i], again);
            free(again);
        }
    assert_true(metric(&m, "memattn_session_loads_total") > S);
    for (int i = 0; i < S; i++)
        free(snap[i]);
    assert_int_equal(mh_stop(&m, 30000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_demo),
        cmocka_unit_test(test_sessions),
        cmocka_unit_test(test_events_and_routes),
        cmocka_unit_test(test_overwrite_versions),
        cmocka_unit_test(test_protect_and_evict),
        cmocka_unit_test(test_capacity_eviction),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_corrections_and_forget),
        cmocka_unit_test(test_memory_budget),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
