/*
 * tests/e2e/test_api_concurrency.c — 16 clients on 16 sessions and 16 clients on one session at once,
 * over real HTTP (one libcurl handle per thread). Every acknowledged write must be visible afterwards,
 * versions strictly increasing per client and never handed out twice, event lengths consistent, and a
 * client reads its own acknowledged writes (jobs of one session take effect in arrival order).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/e2e/api_util.h"

enum { THREADS = 16, ITERS = 12 };

static mh_daemon dmn;

typedef struct {
    int id;
    bool shared;                 /* all threads on session "shared" */
    char err[256];               /* first problem seen, "" if none */
    uint64_t versions[ITERS];    /* acknowledged versions of the overwritten slot */
    uint64_t lengths[ITERS];     /* acknowledged archive lengths */
} worker;

static void *run(void *arg)
{
    worker *w = arg;
    au_client *c = au_client_new(&dmn);
    char sess[32], path[128], body[512];
    cJSON *j = NULL;
    if (!c) {
        snprintf(w->err, sizeof w->err, "no client");
        return NULL;
    }
    snprintf(sess, sizeof sess, w->shared ? "shared" : "c%d", w->id);
    const char *slot = w->shared ? "shared" : "s";
    for (int it = 0; it < ITERS && !w->err[0]; it++) {
        /* overwrite (or create) the slot */
        snprintf(path, sizeof path, "/v1/sessions/%s/slots/%s", sess, slot);
        snprintf(body, sizeof body, "{\"payload\":\"t%d-%d\"}", w->id, it);
        long st = au_client_call(c, "PUT", path, body, &j);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "version");
        if ((st != 200 && st != 201) || !cJSON_IsNumber(v)) {
            snprintf(w->err, sizeof w->err, "PUT %s -> %ld", path, st);
            break;
        }
        w->versions[it] = (uint64_t)v->valuedouble;
        cJSON_Delete(j);
        j = NULL;
        /* read it back: my write or a newer one */
        snprintf(path, sizeof path, "/v1/sessions/%s/query", sess);
        snprintf(body, sizeof body, "{\"queries\":[{\"slot\":\"%s\"}]}", slot);
        st = au_client_call(c, "POST", path, body, &j);
        const cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "results"), 0);
        const cJSON *rv = cJSON_GetObjectItemCaseSensitive(r0, "version");
        if (st != 200 || !cJSON_IsNumber(rv) || (uint64_t)rv->valuedouble < w->versions[it]) {
            snprintf(w->err, sizeof w->err, "query after my write v%llu -> %ld, version %g",
                     (unsigned long long)w->versions[it], st, rv ? rv->valuedouble : -1.0);
            break;
        }
        cJSON_Delete(j);
        j = NULL;
        /* two events, the second writes this client's own slot */
        snprintf(path, sizeof path, "/v1/sessions/%s/events", sess);
        snprintf(body, sizeof body,
                 "{\"events\":[{\"k\":[%d,1,0,0,0,0,0,0],\"v\":[1,0,0,0,0,0,0,0]},"
                 "{\"k\":[0,%d,1,0,0,0,0,0],\"v\":[0,1,0,0,0,0,0,0],\"slot\":\"w%d\",\"payload\":%d}]}",
                 w->id + 1, it + 1, w->id, it);
        st = au_client_call(c, "POST", path, body, &j);
        const cJSON *len = cJSON_GetObjectItemCaseSensitive(j, "length");
        if (st != 200 || !cJSON_IsNumber(len)) {
            snprintf(w->err, sizeof w->err, "POST events -> %ld", st);
            break;
        }
        w->lengths[it] = (uint64_t)len->valuedouble;
        cJSON_Delete(j);
        j = NULL;
    }
    cJSON_Delete(j);
    au_client_free(c);
    return NULL;
}

static void run_all(worker *w, bool shared)
{
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].id = i;
        w[i].shared = shared;
        assert_int_equal(pthread_create(&t[i], NULL, run, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        if (w[i].err[0])
            fail_msg("client %d: %s", i, w[i].err);
    for (int i = 0; i < THREADS; i++)
        for (int it = 1; it < ITERS; it++) {
            assert_true(w[i].versions[it] > w[i].versions[it - 1]);
            assert_true(w[i].lengths[it] > w[i].lengths[it - 1]);
        }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_many_sessions(void **state)
{
    (void)state;
    static worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        char p[64];
        snprintf(p, sizeof p, "/v1/sessions/c%d", i);
        cJSON_Delete(au_call(&dmn, "PUT", p, 201, "{\"dim\":8,\"slots\":64}"));
    }
    run_all(w, false);
    for (int i = 0; i < THREADS; i++) {
        /* alone on its session: versions 1..ITERS, lengths 2..2*ITERS */
        for (int it = 0; it < ITERS; it++) {
            assert_int_equal(w[i].versions[it], (uint64_t)it + 1);
            assert_int_equal(w[i].lengths[it], 2 * ((uint64_t)it + 1));
        }
        char p[96];
        snprintf(p, sizeof p, "/v1/sessions/c%d/slots/s", i);
        cJSON *j = au_call(&dmn, "GET", p, 200, NULL);
        char want[32];
        snprintf(want, sizeof want, "t%d-%d", i, ITERS - 1);
        assert_string_equal(au_str(j, "payload"), want);
        cJSON_Delete(j);
        snprintf(p, sizeof p, "/v1/sessions/c%d/slots/w%d/versions", i, i);
        j = au_call(&dmn, "GET", p, 200, NULL);
        assert_int_equal(au_len(j, "versions"), ITERS);
        cJSON_Delete(j);
    }
}

static void test_one_session(void **state)
{
    (void)state;
    static worker w[THREADS];
    static uint64_t all[THREADS * ITERS], lens[THREADS * ITERS];
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/shared", 201, "{\"dim\":8,\"slots\":64}"));
    run_all(w, true);
    /* every acknowledged version distinct, and together exactly 1..N: nothing lost, nothing doubled */
    size_t n = 0;
    for (int i = 0; i < THREADS; i++)
        for (int it = 0; it < ITERS; it++) {
            all[n] = w[i].versions[it];
            lens[n++] = w[i].lengths[it];
        }
    qsort(all, n, sizeof all[0], cmp_u64);
    qsort(lens, n, sizeof lens[0], cmp_u64);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(all[i], (uint64_t)i + 1);
        assert_int_equal(lens[i], 2 * ((uint64_t)i + 1));
    }
    cJSON *j = au_call(&dmn, "GET", "/v1/sessions/shared/slots/shared/versions", 200, NULL);
    assert_int_equal(au_len(j, "versions"), (int)n);
    cJSON_Delete(j);
    j = au_call(&dmn, "GET", "/v1/sessions/shared", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), (int)(2 * n));
    assert_int_equal((int)au_num(j, "slots_resident"), THREADS + 1);
    cJSON_Delete(j);
    /* the final value is the write that got the highest version */
    for (int i = 0; i < THREADS; i++)
        if (w[i].versions[ITERS - 1] == n) {
            char want[32];
            snprintf(want, sizeof want, "t%d-%d", i, ITERS - 1);
            j = au_call(&dmn, "GET", "/v1/sessions/shared/slots/shared", 200, NULL);
            assert_string_equal(au_str(j, "payload"), want);
            assert_int_equal((int)au_num(j, "version"), (int)n);
            cJSON_Delete(j);
        }
    /* each client's own slot holds its last event write */
    for (int i = 0; i < THREADS; i++) {
        char p[96];
        snprintf(p, sizeof p, "/v1/sessions/shared/slots/w%d", i);
        j = au_call(&dmn, "GET", p, 200, NULL);
        assert_int_equal((int)au_num(j, "payload"), ITERS - 1);
        assert_int_equal((int)au_num(j, "version"), ITERS);
        cJSON_Delete(j);
    }
}

/* ---- a full queue: 503 overloaded, and a refused mutation changes nothing ----------------------- */

typedef struct {
    const mh_daemon *d;
    const char *body;
    long status;
    char code[32];
} shot;

static void *fire(void *arg)
{
    shot *x = arg;
    au_client *c = au_client_new(x->d);
    cJSON *j = NULL;
    x->status = c ? au_client_call(c, "POST", "/v1/sessions/busy/events", x->body, &j) : 0;
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "code");
    snprintf(x->code, sizeof x->code, "%s", cJSON_IsString(code) ? code->valuestring : "");
    cJSON_Delete(j);
    au_client_free(c);
    return NULL;
}

static void test_overloaded(void **state)
{
    (void)state;
    mh_daemon b;
    const char *args[] = {"--threads", "1", "--queue", "1", "--max-body", "16M", NULL};
    assert_int_equal(mh_start(&b, args, NULL), 0);
    cJSON_Delete(au_call(&b, "PUT", "/v1/sessions/busy", 201, "{\"dim\":64}"));
    /* 512 events of JSON numbers: long enough to decode and apply that 16 of them queue up */
    size_t cap = 512 * 1400 + 64, o = 0;
    char *body = malloc(cap);
    o += (size_t)snprintf(body + o, cap - o, "{\"events\":[");
    for (int e = 0; e < 512; e++) {
        o += (size_t)snprintf(body + o, cap - o, "%s{\"k\":[", e ? "," : "");
        for (int j = 0; j < 64; j++)
            o += (size_t)snprintf(body + o, cap - o, "%s%.6f", j ? "," : "", (double)((e * 64 + j) % 97) / 97.0 + 0.01);
        o += (size_t)snprintf(body + o, cap - o, "],\"payload\":\"e%d\"}", e);
    }
    snprintf(body + o, cap - o, "]}");
    long ok = 0, refused = 0;
    for (int round = 0; round < 5 && !refused; round++) {
        shot x[THREADS];
        pthread_t t[THREADS];
        for (int i = 0; i < THREADS; i++) {
            x[i] = (shot){.d = &b, .body = body};
            assert_int_equal(pthread_create(&t[i], NULL, fire, &x[i]), 0);
        }
        for (int i = 0; i < THREADS; i++) {
            pthread_join(t[i], NULL);
            if (x[i].status == 200)
                ok++;
            else if (x[i].status == 503 && strcmp(x[i].code, "overloaded") == 0)
                refused++;
            else
                fail_msg("unexpected answer %ld %s", x[i].status, x[i].code);
        }
    }
    free(body);
    assert_true(refused > 0);
    cJSON *j = au_call(&b, "GET", "/v1/sessions/busy", 200, NULL);
    assert_int_equal((long)au_num(j, "length"), 512 * ok);   /* refused batches left no trace */
    cJSON_Delete(j);
    assert_int_equal(mh_stop(&b, 30000), 0);
}

static int setup(void **state)
{
    (void)state;
    const char *args[] = {"--threads", "4", NULL};
    return mh_start(&dmn, args, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return mh_stop(&dmn, 30000) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_sessions),
        cmocka_unit_test(test_one_session),
        cmocka_unit_test(test_overloaded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
