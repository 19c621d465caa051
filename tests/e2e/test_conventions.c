/*
 * tests/e2e/test_conventions.c — the HTTP conventions around every route, against the real daemon:
 * HEAD for every GET (same headers, no body), OPTIONS (204 + Allow), CORS off by default and on with
 * --cors-origin (preflight, the headers of actual answers and errors, auth exemption of preflights
 * only), Retry-After on 503 (connection limit, store failure), GET /v1/info (limits, and the batch that exactly fits --max-body),
 * unknown query parameters refused, and the warning when listening beyond loopback without a token.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/e2e/api_util.h"

static const char *hdr(const mh_resp *r, const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    return mh_resp_header(r, name, buf[i], sizeof buf[i]);
}

static void start(mh_daemon *d, const char *const *args)
{
    if (mh_start(d, args, NULL) != 0)
        fail_msg("daemon did not start");
}

/* Waits (bounded) for the start-up log line written once the signal handlers are installed, so a
 * daemon this test never sends a request to can be stopped cleanly. */
static void wait_ready(mh_daemon *d)
{
    for (int i = 0; i < 2000 && !mh_log_contains(d, "(threads "); i++)
        mh_sleep_ms(10);
    assert_true(mh_log_contains(d, "(threads "));
}

static void stop_ok(mh_daemon *d)
{
    assert_int_equal(mh_stop(d, 30000), 0);
}

/* HEAD answers like GET without the body, on every GET route; a path without GET has no HEAD. */
static void test_head(void **state)
{
    (void)state;
    mh_daemon d;
    start(&d, NULL);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/h", 201, "{\"dim\":4}"));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/h/slots/a", 201, "{\"payload\":\"x\"}"));
    const char *paths[] = { "/healthz", "/metrics", "/v1/info", "/v1/sessions", "/v1/sessions/h", "/v1/sessions/h/slots",
                            "/v1/sessions/h/slots/a", "/v1/sessions/h/slots/a/versions", "/v1/sessions/nope", NULL };
    for (int i = 0; paths[i]; i++) {
        mh_resp g, h;
        assert_int_equal(mh_request(&d, "GET", paths[i], NULL, NULL, &g), 0);
        assert_int_equal(mh_request(&d, "HEAD", paths[i], NULL, NULL, &h), 0);
        if (h.status != g.status)
            fail_msg("HEAD %s: %ld, GET: %ld", paths[i], h.status, g.status);
        assert_int_equal(h.len, 0);
        assert_string_equal(hdr(&h, "Content-Type"), hdr(&g, "Content-Type"));
        if (strcmp(paths[i], "/metrics") != 0)   /* the metrics text changes between the two requests */
            assert_string_equal(hdr(&h, "Content-Length"), hdr(&g, "Content-Length"));
        if (hdr(&g, "ETag"))
            assert_string_equal(hdr(&h, "ETag"), hdr(&g, "ETag"));
        mh_resp_free(&g);
        mh_resp_free(&h);
    }
    mh_resp r;
    assert_int_equal(mh_request(&d, "HEAD", "/v1/sessions/h/events", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 405);
    assert_string_equal(hdr(&r, "Allow"), "POST, OPTIONS");
    mh_resp_free(&r);
    stop_ok(&d);
}

/* OPTIONS: 204 with Allow on every routed path, 404 elsewhere; no CORS headers while CORS is off. */
static void test_options_and_cors_off(void **state)
{
    (void)state;
    mh_daemon d;
    start(&d, NULL);
    static const struct { const char *path, *allow; } cases[] = {
        { "/healthz", "GET, HEAD, OPTIONS" },
        { "/v1/sessions", "POST, GET, HEAD, OPTIONS" },
        { "/v1/sessions/x", "PUT, GET, HEAD, DELETE, OPTIONS" },
        { "/v1/sessions/x/slots/y", "PUT, GET, HEAD, PATCH, DELETE, OPTIONS" },
        { "/v1/sessions/x/query", "POST, OPTIONS" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mh_resp r;
        assert_int_equal(mh_request(&d, "OPTIONS", cases[i].path, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 204);
        assert_string_equal(hdr(&r, "Allow"), cases[i].allow);
        assert_int_equal(r.len, 0);
        mh_resp_free(&r);
    }
    mh_resp r;
    assert_int_equal(mh_request(&d, "OPTIONS", "/v1/nothing/here", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    mh_resp_free(&r);
    /* A preflight and an answer with Origin: no Access-Control-* at all. */
    const char *pre[] = { "Origin: https://app.example", "Access-Control-Request-Method: PUT", NULL };
    assert_int_equal(mh_request(&d, "OPTIONS", "/v1/sessions/x", NULL, pre, &r), 0);
    assert_int_equal(r.status, 204);
    assert_null(strstr(r.headers, "Access-Control-"));
    mh_resp_free(&r);
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, pre, &r), 0);
    assert_null(strstr(r.headers, "Access-Control-"));
    assert_null(hdr(&r, "Vary"));
    mh_resp_free(&r);
    stop_ok(&d);
}

/* --cors-origin: preflights of allowed origins are answered (even with --token), actual answers and
 * errors carry Access-Control-Allow-Origin and expose ETag/Location/Retry-After; other origins get
 * nothing and stay behind the token. */
static void test_cors_on(void **state)
{
    (void)state;
    mh_daemon d;
    const char *args[] = { "--cors-origin", "https://app.example", "--cors-origin", "http://localhost:3000",
                           "--token", "s3cret", NULL };
    start(&d, args);
    mh_resp r;
    const char *pre[] = { "Origin: https://app.example", "Access-Control-Request-Method: PUT",
                          "Access-Control-Request-Headers: authorization, content-type, if-match", NULL };
    assert_int_equal(mh_request(&d, "OPTIONS", "/v1/sessions/x/slots/y", NULL, pre, &r), 0);
    assert_int_equal(r.status, 204);   /* no token: a preflight never carries one */
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "https://app.example");
    assert_string_equal(hdr(&r, "Access-Control-Allow-Methods"), "PUT, GET, HEAD, PATCH, DELETE, OPTIONS");
    const char *ah = hdr(&r, "Access-Control-Allow-Headers");
    assert_non_null(ah);
    assert_non_null(strstr(ah, "Authorization"));
    assert_non_null(strstr(ah, "If-Match"));
    assert_non_null(strstr(ah, "If-None-Match"));
    assert_non_null(hdr(&r, "Access-Control-Max-Age"));
    assert_string_equal(hdr(&r, "Vary"), "Origin");
    mh_resp_free(&r);

    /* Another origin: no CORS headers, and the token is required like for any request. */
    const char *other[] = { "Origin: https://evil.example", "Access-Control-Request-Method: PUT", NULL };
    assert_int_equal(mh_request(&d, "OPTIONS", "/v1/sessions/x", NULL, other, &r), 0);
    assert_int_equal(r.status, 401);
    assert_null(hdr(&r, "Access-Control-Allow-Origin"));
    assert_string_equal(hdr(&r, "Vary"), "Origin");
    mh_resp_free(&r);

    /* An actual request from the allowed origin: ACAO on success and on errors, headers exposed. */
    const char *ok[] = { "Origin: http://localhost:3000", "Authorization: Bearer s3cret", NULL };
    assert_int_equal(mh_request(&d, "PUT", "/v1/sessions/c", "{\"dim\":4}", ok, &r), 0);
    assert_int_equal(r.status, 201);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "http://localhost:3000");
    const char *eh = hdr(&r, "Access-Control-Expose-Headers");
    assert_non_null(eh);
    assert_non_null(strstr(eh, "ETag"));
    assert_non_null(strstr(eh, "Location"));
    assert_non_null(strstr(eh, "Retry-After"));
    mh_resp_free(&r);
    const char *noauth[] = { "Origin: http://localhost:3000", NULL };
    assert_int_equal(mh_request(&d, "GET", "/v1/sessions/c", NULL, noauth, &r), 0);
    assert_int_equal(r.status, 401);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "http://localhost:3000");
    mh_resp_free(&r);
    /* A plain OPTIONS (no preflight headers) under /v1/ still needs the token. */
    assert_int_equal(mh_request(&d, "OPTIONS", "/v1/sessions/c", NULL, noauth, &r), 0);
    assert_int_equal(r.status, 401);
    mh_resp_free(&r);
    stop_ok(&d);
}

/* Every 503 carries Retry-After: here the connection limit's. */
static void test_retry_after(void **state)
{
    (void)state;
    mh_daemon d;
    const char *args[] = { "--max-connections", "1", NULL };
    start(&d, args);
    int held = mh_connect(&d);
    assert_true(held >= 0);
    mh_sleep_ms(100);   /* the daemon accepts the first connection before the second */
    int fd = mh_connect(&d);
    assert_true(fd >= 0);
    mh_reader rb;
    mh_reader_init(&rb, fd);
    mh_resp r;
    assert_int_equal(mh_read_response(&rb, &r, 10000), 503);
    const char *ra = hdr(&r, "Retry-After");
    assert_non_null(ra);
    assert_true(atoi(ra) >= 1);
    mh_resp_free(&r);
    close(fd);
    close(held);
    stop_ok(&d);
}

/* A store failure's 503 carries Retry-After too: the test daemon's fault-injection VFS fails every
 * write after the open of an existing store (MEMATTN_STORE_FAULT, tests/support/). */
static void test_retry_after_storage_error(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-fault-XXXXXX";
    assert_non_null(mkdtemp(dir));
    mh_daemon d;
    const char *args[] = { "--data", dir, NULL };
    start(&d, args);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/f", 201, "{\"dim\":4}"));
    stop_ok(&d);
    const char *env[] = { "MEMATTN_STORE_FAULT=write:0", NULL };
    assert_int_equal(mh_start_bin(&d, mh_test_bin(), args, env), 0);
    mh_resp r;
    assert_int_equal(mh_request(&d, "PUT", "/v1/sessions/f/slots/a", "{\"payload\":\"x\"}", NULL, &r), 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(mh_error_code(&r), "storage_error");
    const char *ra = hdr(&r, "Retry-After");
    assert_non_null(ra);
    assert_true(atoi(ra) >= 1);
    mh_resp_free(&r);
    stop_ok(&d);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* GET /v1/info: what the daemon is and the batch sizes that fit its body limit — exactly. */
static void test_info(void **state)
{
    (void)state;
    mh_daemon d;
    const char *args[] = { "--max-body", "65536", NULL };
    start(&d, args);
    cJSON *j = au_call(&d, "GET", "/v1/info", 200, NULL);
    assert_string_equal(au_str(j, "name"), "memattn");
    assert_non_null(au_str(j, "version"));
    assert_non_null(au_str(j, "build.commit"));
    assert_false(au_bool(j, "features.auth"));
    assert_false(au_bool(j, "features.cors"));
    /* Every Content-Type a body is accepted in, binary event batches' included. */
    const cJSON *media = au_get(j, "features.request_media_types");
    const char *want[] = { "application/json", "application/x-www-form-urlencoded", "application/octet-stream" };
    assert_int_equal(cJSON_GetArraySize(media), 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(cJSON_GetArrayItem(media, i)->valuestring, want[i]);
    assert_int_equal((int)au_num(j, "limits.max_body"), 65536);
    assert_int_equal((int)au_num(j, "limits.max_events_per_batch"), 65536);
    assert_int_equal((int)au_num(j, "shape.dim"), 64);
    assert_int_equal((int)au_num(j, "shape.value_dim"), 64);
    cJSON_Delete(j);

    j = au_call(&d, "GET", "/v1/info?heads=1&dim=4", 200, NULL);
    int n = (int)au_num(j, "batch.events_b64");
    int nq = (int)au_num(j, "batch.queries_b64");
    assert_int_equal((int)au_num(j, "shape.value_dim"), 4);
    cJSON_Delete(j);
    assert_true(n > 100 && n < 65536);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/b", 201, "{\"dim\":4}"));
    /* n base64 events fit; n + 1 are refused with 413 before the body is read. */
    static const char ev[] = "{\"k_b64\":\"AACAPwAAAAAAAAAAAAAAAA==\",\"v_b64\":\"AAAAAAAAgD8AAAAAAAAAAA==\"}";
    for (int extra = 0; extra < 2; extra++) {
        size_t cap = (size_t)(n + 1) * sizeof ev + 64;
        char *body = malloc(cap);
        assert_non_null(body);
        size_t len = (size_t)snprintf(body, cap, "{\"events\":[");
        for (int i = 0; i < n + extra; i++)
            len += (size_t)snprintf(body + len, cap - len, "%s%s", i ? "," : "", ev);
        len += (size_t)snprintf(body + len, cap - len, "]}");
        mh_resp r;
        assert_int_equal(mh_request(&d, "POST", "/v1/sessions/b/events", body, NULL, &r), 0);
        if (extra == 0) {
            assert_true(len <= 65536);
            assert_int_equal(r.status, 200);
        } else {
            assert_true(len > 65536);
            assert_int_equal(r.status, 413);
        }
        mh_resp_free(&r);
        free(body);
    }
    /* The same for binary batches: events_binary fit; one more is refused with 413. */
    j = au_call(&d, "GET", "/v1/info?heads=1&dim=4", 200, NULL);
    int nb = (int)au_num(j, "batch.events_binary");
    cJSON_Delete(j);
    assert_int_equal(nb, (65536 - 20) / 32);
    for (int extra = 0; extra < 2; extra++) {
        int cnt = nb + extra;
        size_t len = 20 + (size_t)cnt * 32;
        char *body = calloc(1, len), head[256];
        assert_non_null(body);
        memcpy(body, "MAEV", 4);
        uint32_t hdr[4] = {(uint32_t)cnt, 1, 4, 4};
        for (int i = 0; i < 4; i++)
            for (int b = 0; b < 4; b++)
                body[4 + 4 * i + b] = (char)(hdr[i] >> (8 * b));
        int fd = mh_connect(&d);
        assert_true(fd >= 0);
        int hl = snprintf(head, sizeof head, "POST /v1/sessions/b/events HTTP/1.1\r\nHost: t\r\n"
                          "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n", len);
        assert_int_equal(mh_send(fd, head, (size_t)hl), 0);
        if (!extra)
            assert_int_equal(mh_send(fd, body, len), 0);
        mh_reader rb;
        mh_reader_init(&rb, fd);
        mh_resp r = {0};
        assert_int_equal(mh_read_response(&rb, &r, 30000), extra ? 413 : 200);
        mh_resp_free(&r);
        close(fd);
        free(body);
    }
    /* The same for queries. */
    static const char q[] = "{\"q_b64\":\"AACAPwAAAAAAAAAAAAAAAA==\"}";
    for (int extra = 0; extra < 2; extra++) {
        size_t cap = (size_t)(nq + 1) * sizeof q + 64;
        char *body = malloc(cap);
        assert_non_null(body);
        size_t len = (size_t)snprintf(body, cap, "{\"queries\":[");
        for (int i = 0; i < nq + extra; i++)
            len += (size_t)snprintf(body + len, cap - len, "%s%s", i ? "," : "", q);
        len += (size_t)snprintf(body + len, cap - len, "]}");
        mh_resp r;
        assert_int_equal(mh_request(&d, "POST", "/v1/sessions/b/query", body, NULL, &r), 0);
        assert_int_equal(r.status, extra ? 413 : 200);
        mh_resp_free(&r);
        free(body);
    }
    /* Shape parameters are checked; unknown ones are refused, named. */
    const char *m = au_error(&d, "GET", "/v1/info?dim=0", 400, "bad_request", NULL);
    assert_non_null(strstr(m, "dim"));
    m = au_error(&d, "GET", "/v1/info?dims=64", 400, "bad_request", NULL);
    assert_non_null(strstr(m, "unknown query parameter \"dims\""));
    stop_ok(&d);
}

/* Listening beyond loopback without a token is warned about on stderr; with a token, or on loopback,
 * it is not. (The wildcard listener is stopped at once; nothing connects to it.) */
static void test_exposed_warning(void **state)
{
    (void)state;
    mh_daemon d;
    const char *wild[] = { "--listen", "0.0.0.0:0", NULL };
    start(&d, wild);
    wait_ready(&d);
    bool warned = mh_log_contains(&d, "WARNING: listening on 0.0.0.0:");
    bool named = mh_log_contains(&d, "without --token");
    stop_ok(&d);
    assert_true(warned);
    assert_true(named);
    const char *wild_token[] = { "--listen", "0.0.0.0:0", "--token", "t", NULL };
    start(&d, wild_token);
    wait_ready(&d);
    warned = mh_log_contains(&d, "WARNING: listening on");
    stop_ok(&d);
    assert_false(warned);
    start(&d, NULL);
    wait_ready(&d);
    warned = mh_log_contains(&d, "WARNING: listening on");
    stop_ok(&d);
    assert_false(warned);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_head, mh_teardown),
        cmocka_unit_test_teardown(test_options_and_cors_off, mh_teardown),
        cmocka_unit_test_teardown(test_cors_on, mh_teardown),
        cmocka_unit_test_teardown(test_retry_after, mh_teardown),
        cmocka_unit_test_teardown(test_retry_after_storage_error, mh_teardown),
        cmocka_unit_test_teardown(test_info, mh_teardown),
        cmocka_unit_test_teardown(test_exposed_warning, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
