/*
 * tests/e2e/test_api_errors.c — every error code of API.md's table reached over real HTTP, each time
 * with the session's state (describe, slots, histories, slot values and the answers of a fixed query
 * batch) checked unchanged afterwards; a batch with one bad event changes nothing.
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

static mh_daemon dmn;
static const char *Q = "{\"queries\":[{\"text\":\"capital of France\"},{\"slot\":\"locked\"},"
                       "{\"text\":\"tower\",\"route\":\"full\"},{\"text\":\"x\",\"route\":\"state\"}]}";
#define K4 "[1,0,0,0]"
#define V4 "[0,1,0,0]"

static int setup(void **state)
{
    (void)state;
    const char *args[] = {"--max-body", "65536", NULL};
    if (mh_start(&dmn, args, NULL) != 0)
        return -1;
    /* s: dim 4, two slots of capacity 2, both protected after the setup below */
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s", 201, "{\"dim\":4,\"slots\":2,\"chunk\":2}"));
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s/slots/capital_of_france", 201, "{\"payload\":\"Paris\"}"));
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/s/events", 200,
                         "{\"events\":[{\"text\":\"tower\",\"payload\":\"330 m\"},{\"k\":" K4 ",\"v\":" V4
                         ",\"slot\":\"locked\",\"protect\":true,\"payload\":1}]}"));
    cJSON_Delete(au_call(&dmn, "PATCH", "/v1/sessions/s/slots/capital_of_france", 200, "{\"protected\":true}"));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return mh_stop(&dmn, 30000) == 0 ? 0 : -1;
}

/* Runs one failing request and checks the session is exactly as before. */
#define UNCHANGED(call)                                          \
    do {                                                         \
        char *before_ = au_snapshot(&dmn, "s", Q);               \
        call;                                                    \
        char *after_ = au_snapshot(&dmn, "s", Q);                \
        assert_string_equal(before_, after_);                    \
        free(before_);                                           \
        free(after_);                                            \
    } while (0)

/* A batch answered 200 in which queries[i] carries {"error":{"code":code,...}} and the others a route. */
static void query_error_at(int i, const char *code, const char *body)
{
    cJSON *j = au_call(&dmn, "POST", "/v1/sessions/s/query", 200, "%s", body);
    int n = au_len(j, "results");
    for (int k = 0; k < n; k++) {
        char path[64];
        snprintf(path, sizeof path, k == i ? "results[%d].error.code" : "results[%d].route", k);
        if (k == i)
            assert_string_equal(au_str(j, path), code);
        else
            (void)au_str(j, path);
    }
    cJSON_Delete(j);
}

static void test_400s(void **state)
{
    (void)state;
    const char *m;
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_json", "{\"events\":[{]}"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_json", "{\"events\":[]} trailing"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request", "[1,2]"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request", "%s", ""));    /* framed, empty */
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 411, "length_required", NULL));    /* unframed */
    UNCHANGED(au_error(&dmn, "PATCH", "/v1/sessions/s/slots/locked", 411, "length_required", NULL));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/query", 400, "bad_request", "{\"queries\":[{\"q\":" K4 ",\"route\":\"psychic\"}]}"));
    /* a batch with one bad event (the last) changes nothing: not the good events, not the slot writes */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "dim_mismatch",
                           "{\"events\":[{\"k\":" K4 ",\"v\":" V4 ",\"slot\":\"new1\"},{\"k\":" K4 ",\"v\":" V4
                           "},{\"k\":" K4 ",\"v\":" V4 "},{\"k\":[1,0,0],\"v\":" V4 "}]}"));
    assert_string_equal(m, "events[3].k: expected 4 numbers (heads*dim), got 3");
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "non_finite",
                           "{\"events\":[{\"k\":" K4 ",\"v\":" V4 "},{\"k\":" K4 ",\"v\":[0,1e999,0,0]}]}"));
    assert_non_null(strstr(m, "events[1].v[1]"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "non_finite",
                       "{\"events\":[{\"k_b64\":\"AACAfwAAAAAAAAAAAAAAAA==\",\"v\":" V4 "}]}"));  /* +inf */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_name",
                           "{\"events\":[{\"k\":" K4 ",\"v\":" V4 ",\"slot\":\"ok\"},{\"k\":" K4 ",\"v\":" V4 ",\"slot\":\"no/slash\"}]}"));
    assert_non_null(strstr(m, "events[1].slot"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request",
                       "{\"events\":[{\"k\":" K4 ",\"v\":" V4 ",\"protect\":\"yes\",\"slot\":\"a\"}]}"));
    UNCHANGED(au_error(&dmn, "PUT", "/v1/sessions/s/slots/bad%2Fname", 400, "bad_name", "{\"payload\":\"x\"}"));
    UNCHANGED(au_error(&dmn, "GET", "/v1/sessions/s/slots/capital_of_france?version=abc", 400, "bad_request", NULL));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/slots", 400, "bad_request", "{\"name\":\"n\",\"payload\":[1]}"));
    UNCHANGED(au_error(&dmn, "PATCH", "/v1/sessions/s/slots/locked", 400, "bad_request", "{\"protected\":1}"));
    const char *bad_ifm[] = {"If-Match: \"1", NULL};   /* malformed: 400; a weak tag is well formed (412, below) */
    UNCHANGED(cJSON_Delete(au_callh(&dmn, "PUT", "/v1/sessions/s/slots/capital_of_france", bad_ifm, 400, "{\"payload\":\"x\"}")));
    const char *weak_ifm[] = {"If-Match: W/\"1\"", NULL};   /* strong comparison: never matches */
    UNCHANGED(cJSON_Delete(au_callh(&dmn, "PUT", "/v1/sessions/s/slots/capital_of_france", weak_ifm, 412, "{\"payload\":\"x\"}")));
    m = au_error(&dmn, "PUT", "/v1/sessions/c", 400, "bad_config", "{\"dim\":2000}");
    assert_string_equal(m, "dim: 2000 is out of range, expected an integer 1..1024");
    au_error(&dmn, "PUT", "/v1/sessions/c", 400, "bad_config", "{\"delta\":{\"beta\":2}}");
    au_error(&dmn, "POST", "/v1/sessions", 400, "bad_config", "{\"selector\":\"magic\"}");
    au_error(&dmn, "GET", "/v1/sessions/c", 404, "no_session", NULL);  /* nothing was created */
}

static void test_404s(void **state)
{
    (void)state;
    UNCHANGED(au_error(&dmn, "GET", "/v1/sessions/s/slots/never", 404, "no_slot", NULL));
    UNCHANGED(au_error(&dmn, "GET", "/v1/sessions/s/slots/never/versions", 404, "no_slot", NULL));
    UNCHANGED(au_error(&dmn, "PATCH", "/v1/sessions/s/slots/never", 404, "no_slot", "{\"protected\":true}"));
    UNCHANGED(au_error(&dmn, "DELETE", "/v1/sessions/s/slots/never", 404, "no_slot", NULL));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/slots/never/restore", 404, "no_slot", "{\"version\":1}"));
    /* A query that cannot be answered gets its error in place of its result; the others are answered. */
    UNCHANGED(query_error_at(1, "no_slot", "{\"queries\":[{\"q\":" K4 "},{\"q\":[0,0,1,0],\"route\":\"slot\"}]}"));
    UNCHANGED(query_error_at(0, "no_version", "{\"queries\":[{\"slot\":\"locked\",\"version\":9},{\"slot\":\"locked\"}]}"));
    UNCHANGED(au_error(&dmn, "GET", "/v1/sessions/s/slots/locked?version=2", 404, "no_version", NULL));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/slots/locked/restore", 404, "no_version", "{\"version\":5}"));
    UNCHANGED(au_error(&dmn, "GET", "/v1/sessions/s/nothing", 404, "not_found", NULL));
    au_error(&dmn, "POST", "/v1/sessions/ghost/events", 404, "no_session", "{\"events\":[]}");
    au_error(&dmn, "GET", "/v1/sessions/ghost/slots", 404, "no_session", NULL);
    /* an archive read of an empty session */
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/empty", 201, "{\"dim\":4}"));
    cJSON *j = au_call(&dmn, "POST", "/v1/sessions/empty/query", 200, "{\"queries\":[{\"q\":" K4 ",\"route\":\"full\"}]}");
    assert_string_equal(au_str(j, "results[0].error.code"), "empty_context");
    cJSON_Delete(j);
    /* Slots but no events: the slot question is answered, the other one is empty_context (not 404). */
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/facts", 201, "{\"dim\":64}"));
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/facts/slots/capital_of_france", 201, "{\"payload\":\"Paris\"}"));
    j = au_call(&dmn, "POST", "/v1/sessions/facts/query", 200,
                "{\"queries\":[{\"text\":\"capital of France\"},{\"text\":\"weather in Rome\"}]}");
    assert_string_equal(au_str(j, "results[0].payload"), "Paris");
    assert_string_equal(au_str(j, "results[1].error.code"), "empty_context");
    assert_non_null(strstr(au_str(j, "results[1].error.message"), "queries[1]"));
    cJSON_Delete(j);
}

static void test_409_412_423(void **state)
{
    (void)state;
    UNCHANGED(au_error(&dmn, "PUT", "/v1/sessions/s", 409, "exists", "{\"dim\":8}"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/slots", 409, "exists", "{\"name\":\"locked\",\"payload\":\"x\"}"));
    /* both resident slots are protected and the table is full */
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/slots", 409, "slots_full", "{\"name\":\"third\",\"payload\":\"x\"}"));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/events", 409, "slots_full",
                       "{\"events\":[{\"k\":" K4 ",\"v\":" V4 "},{\"k\":" K4 ",\"v\":" V4 ",\"slot\":\"third\"}]}"));
    UNCHANGED(au_error(&dmn, "PUT", "/v1/sessions/s/slots/locked", 423, "protected", "{\"payload\":\"x\"}"));
    UNCHANGED(au_error(&dmn, "DELETE", "/v1/sessions/s/slots/locked", 423, "protected", NULL));
    UNCHANGED(au_error(&dmn, "POST", "/v1/sessions/s/slots/locked/restore", 423, "protected", "{\"version\":1}"));
    /* version_conflict and precondition_failed need an unprotected slot: a session of their own */
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/v", 201, "{\"dim\":4}"));
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/v/slots/a", 201, "{\"payload\":\"one\"}"));
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/v/slots/a", 200, "{\"payload\":\"two\"}"));
    char *before = au_snapshot(&dmn, "v", NULL);
    au_error(&dmn, "PUT", "/v1/sessions/v/slots/a", 409, "version_conflict", "{\"payload\":\"x\",\"version\":2}");
    au_error(&dmn, "PUT", "/v1/sessions/v/slots/a", 409, "version_conflict", "{\"payload\":\"x\",\"version\":1}");
    const char *ifm[] = {"If-Match: \"1\"", NULL};
    cJSON_Delete(au_callh(&dmn, "PUT", "/v1/sessions/v/slots/a", ifm, 412, "{\"payload\":\"x\"}"));
    const char *ifm_bare[] = {"If-Match: 3", NULL};
    cJSON_Delete(au_callh(&dmn, "PUT", "/v1/sessions/v/slots/a", ifm_bare, 412, "{\"payload\":\"x\"}"));
    char *after = au_snapshot(&dmn, "v", NULL);
    assert_string_equal(before, after);
    free(before);
    free(after);
    /* ETag round trip: the answer's ETag works as If-Match */
    mh_resp r;
    char etag[64], hdr[96];
    assert_int_equal(mh_request(&dmn, "GET", "/v1/sessions/v/slots/a", NULL, NULL, &r), 0);
    assert_non_null(mh_resp_header(&r, "ETag", etag, sizeof etag));
    assert_string_equal(etag, "\"2\"");
    mh_resp_free(&r);
    snprintf(hdr, sizeof hdr, "If-Match: %s", etag);
    const char *ok_ifm[] = {hdr, NULL};
    cJSON *j = au_callh(&dmn, "PUT", "/v1/sessions/v/slots/a", ok_ifm, 200, "{\"payload\":\"three\"}");
    assert_int_equal((int)au_num(j, "version"), 3);
    cJSON_Delete(j);
}

static void test_http_level(void **state)
{
    (void)state;
    const char *tp[] = {"Content-Type: text/plain", NULL};
    UNCHANGED(cJSON_Delete(au_callh(&dmn, "POST", "/v1/sessions/s/events", tp, 415, "{\"events\":[]}")));
    UNCHANGED(cJSON_Delete(au_call(&dmn, "PATCH", "/v1/sessions/s/events", 405, "{}")));
    /* a body over --max-body (64 KiB) */
    size_t n = 70000;
    char *big = malloc(n + 64);
    strcpy(big, "{\"events\":[{\"text\":\"");
    memset(big + strlen(big), 'a', n);
    strcpy(big + 20 + n, "\"}]}");
    UNCHANGED(cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/s/events", 413, "%s", big)));
    free(big);
    /* a URI too long (over a raw socket: curl helpers cap their URL buffers) */
    size_t ulen = 12000;
    char *req = malloc(ulen + 128);
    int o = sprintf(req, "GET /v1/sessions/s/slots/");
    memset(req + o, 'x', ulen);
    strcpy(req + o + ulen, " HTTP/1.1\r\nHost: x\r\n\r\n");
    UNCHANGED({
        int ufd = mh_connect(&dmn);
        assert_true(ufd >= 0);
        mh_reader ur;
        mh_reader_init(&ur, ufd);
        assert_int_equal(mh_sends(ufd, req), 0);
        mh_resp ures = {0};
        assert_int_equal(mh_read_response(&ur, &ures, 5000), 414);
        assert_non_null(strstr(ures.body, "uri_too_long"));
        mh_resp_free(&ures);
        close(ufd);
    });
    free(req);
    /* headers too large */
    char *h = malloc(40000);
    strcpy(h, "X-Big: ");
    memset(h + 7, 'h', 30000);
    h[30007] = '\0';
    const char *hs[] = {h, NULL};
    UNCHANGED(cJSON_Delete(au_callh(&dmn, "GET", "/v1/sessions/s", hs, 431, NULL)));
    free(h);
    /* A POST with neither Content-Length nor chunked: RFC 9112 6.3 says it has no body; a route that
     * needs one answers 411 length_required (a framed empty body is 400, checked elsewhere). */
    UNCHANGED({
        int fd = mh_connect(&dmn);
        assert_true(fd >= 0);
        mh_reader rb;
        mh_reader_init(&rb, fd);
        assert_int_equal(mh_sends(fd, "POST /v1/sessions/s/events HTTP/1.1\r\nHost: x\r\n"
                                      "Content-Type: application/json\r\n\r\n"), 0);
        mh_resp lr = {0};
        int st = mh_read_response(&rb, &lr, 5000);
        close(fd);
        if (!(st == 411 && strstr(lr.body, "length_required")))
            fail_msg("POST without length: %d %s", st, lr.body ? lr.body : "");
        mh_resp_free(&lr);
    });
}

static void test_unauthorized(void **state)
{
    (void)state;
    mh_daemon t;
    const char *args[] = {"--token", "s3cret", NULL};
    assert_int_equal(mh_start(&t, args, NULL), 0);
    au_error(&t, "PUT", "/v1/sessions/x", 401, "unauthorized", "{}");
    const char *wrong[] = {"Authorization: Bearer nope", NULL};
    cJSON_Delete(au_callh(&t, "PUT", "/v1/sessions/x", wrong, 401, "{}"));
    const char *right[] = {"Authorization: Bearer s3cret", NULL};
    cJSON_Delete(au_callh(&t, "GET", "/v1/sessions/x", right, 404, NULL));   /* nothing was created */
    cJSON_Delete(au_callh(&t, "PUT", "/v1/sessions/x", right, 201, "{}"));
    assert_int_equal(mh_stop(&t, 30000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_400s),
        cmocka_unit_test(test_404s),
        cmocka_unit_test(test_409_412_423),
        cmocka_unit_test(test_http_level),
        cmocka_unit_test(test_unauthorized),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
