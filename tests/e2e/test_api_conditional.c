/*
 * tests/e2e/test_api_conditional.c — the REST conventions of the handlers, over real HTTP: Location on
 * every 201, unknown query parameters refused (and nothing applied), If-Match with `*`, lists and weak
 * tags (strong comparison), If-None-Match -> 304 on slot and session reads (weak comparison).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/e2e/api_util.h"

static mh_daemon dmn;

static int setup(void **state)
{
    (void)state;
    if (mh_start(&dmn, NULL, NULL) != 0)
        return -1;
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/c", 201, "{\"dim\":4}"));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return mh_stop(&dmn, 30000) == 0 ? 0 : -1;
}

/* One request; returns the status and keeps the answer in *r (caller frees). */
static long req(const char *method, const char *path, const char *body, const char *const *headers, mh_resp *r)
{
    assert_int_equal(mh_request(&dmn, method, path, body, headers, r), 0);
    return r->status;
}

static const char *hdr(const mh_resp *r, const char *name)
{
    static char buf[2][256];
    static int i;
    i ^= 1;
    return mh_resp_header(r, name, buf[i], sizeof buf[i]);
}

static void test_location_on_201(void **state)
{
    (void)state;
    mh_resp r;
    assert_int_equal(req("PUT", "/v1/sessions/loc", "{\"dim\":4}", NULL, &r), 201);
    assert_string_equal(hdr(&r, "Location"), "/v1/sessions/loc");
    mh_resp_free(&r);
    assert_int_equal(req("PUT", "/v1/sessions/loc", "{\"dim\":4}", NULL, &r), 200);
    assert_null(hdr(&r, "Location"));
    mh_resp_free(&r);
    assert_int_equal(req("POST", "/v1/sessions", "{}", NULL, &r), 201);
    assert_non_null(hdr(&r, "Location"));
    assert_true(strncmp(hdr(&r, "Location"), "/v1/sessions/", 13) == 0);
    mh_resp_free(&r);
    assert_int_equal(req("POST", "/v1/sessions/loc/slots", "{\"name\":\"a.b:c\",\"payload\":\"x\"}", NULL, &r), 201);
    assert_string_equal(hdr(&r, "Location"), "/v1/sessions/loc/slots/a.b:c");
    mh_resp_free(&r);
    assert_int_equal(req("PUT", "/v1/sessions/loc/slots/new", "{\"payload\":\"y\"}", NULL, &r), 201);
    assert_string_equal(hdr(&r, "Location"), "/v1/sessions/loc/slots/new");
    mh_resp_free(&r);
    assert_int_equal(req("PUT", "/v1/sessions/loc/slots/new", "{\"payload\":\"z\"}", NULL, &r), 200);
    assert_null(hdr(&r, "Location"));
    mh_resp_free(&r);
    /* The Location is where the resource is. */
    cJSON_Delete(au_call(&dmn, "GET", "/v1/sessions/loc/slots/a.b:c", 200, NULL));
}

static void test_unknown_query_parameters(void **state)
{
    (void)state;
    const char *m = au_error(&dmn, "GET", "/v1/sessions?limt=5", 400, "bad_request", NULL);
    assert_non_null(strstr(m, "\"limt\""));
    assert_non_null(strstr(m, "limit, after"));
    cJSON_Delete(au_call(&dmn, "GET", "/v1/sessions?limit=5&after=a", 200, NULL));
    m = au_error(&dmn, "GET", "/v1/sessions/c/slots/x?versoin=2", 400, "bad_request", NULL);
    assert_non_null(strstr(m, "\"versoin\""));
    m = au_error(&dmn, "GET", "/v1/sessions/c?verbose", 400, "bad_request", NULL);
    assert_non_null(strstr(m, "\"verbose\""));
    assert_non_null(strstr(m, "takes no query parameters"));
    /* A mutation with an unknown parameter changes nothing. */
    char *before = au_snapshot(&dmn, "c", NULL);
    au_error(&dmn, "POST", "/v1/sessions/c/events?dry_run=1", 400, "bad_request",
             "{\"events\":[{\"k\":[1,0,0,0],\"v\":[1,0,0,0]}]}");
    au_error(&dmn, "PUT", "/v1/sessions/c/slots/q?force=1", 400, "bad_request", "{\"payload\":\"p\"}");
    char *after = au_snapshot(&dmn, "c", NULL);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static void test_if_match(void **state)
{
    (void)state;
    mh_resp r;
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/m", "{\"payload\":\"v1\"}", NULL, &r), 201);
    assert_string_equal(hdr(&r, "ETag"), "\"1\"");
    mh_resp_free(&r);
    /* `*` matches a resident slot, whatever its version. */
    const char *any[] = { "If-Match: *", NULL };
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/m", "{\"payload\":\"v2\"}", any, &r), 200);
    assert_string_equal(hdr(&r, "ETag"), "\"2\"");
    mh_resp_free(&r);
    /* ... and nothing when the slot is not resident: If-Match never creates. */
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/absent", "{\"payload\":\"x\"}", any, &r), 412);
    assert_string_equal(mh_error_code(&r), "precondition_failed");
    mh_resp_free(&r);
    assert_int_equal(req("GET", "/v1/sessions/c/slots/absent", NULL, NULL, &r), 404);
    mh_resp_free(&r);
    /* A list matches when one of its tags does; a weak tag never does (strong comparison). */
    const char *list[] = { "If-Match: \"7\", \"2\"", NULL };
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/m", "{\"payload\":\"v3\"}", list, &r), 200);
    assert_string_equal(hdr(&r, "ETag"), "\"3\"");
    mh_resp_free(&r);
    const char *weak[] = { "If-Match: W/\"3\"", NULL };
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/m", "{\"payload\":\"v4\"}", weak, &r), 412);
    mh_resp_free(&r);
    const char *bare[] = { "If-Match: 3", NULL };
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/m", "{\"payload\":\"v4\"}", bare, &r), 200);
    mh_resp_free(&r);
    const char *bad[] = { "If-Match: \"4", NULL };
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/m", "{\"payload\":\"v5\"}", bad, &r), 400);
    assert_string_equal(mh_error_code(&r), "bad_request");
    mh_resp_free(&r);
    cJSON *j = au_call(&dmn, "GET", "/v1/sessions/c/slots/m", 200, NULL);
    assert_int_equal((int)au_num(j, "version"), 4);
    cJSON_Delete(j);
}

static void test_if_none_match_slot(void **state)
{
    (void)state;
    mh_resp r;
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/n", "{\"payload\":\"one\"}", NULL, &r), 201);
    mh_resp_free(&r);
    const char *cur[] = { "If-None-Match: \"1\"", NULL };
    assert_int_equal(req("GET", "/v1/sessions/c/slots/n", NULL, cur, &r), 304);
    assert_string_equal(hdr(&r, "ETag"), "\"1\"");
    assert_int_equal(r.len, 0);
    assert_null(hdr(&r, "Content-Length"));
    mh_resp_free(&r);
    assert_int_equal(req("HEAD", "/v1/sessions/c/slots/n", NULL, cur, &r), 304);
    mh_resp_free(&r);
    const char *weak[] = { "If-None-Match: W/\"1\"", NULL };   /* weak comparison */
    assert_int_equal(req("GET", "/v1/sessions/c/slots/n", NULL, weak, &r), 304);
    mh_resp_free(&r);
    const char *star[] = { "If-None-Match: *", NULL };
    assert_int_equal(req("GET", "/v1/sessions/c/slots/n", NULL, star, &r), 304);
    mh_resp_free(&r);
    const char *stale[] = { "If-None-Match: \"0\", \"9\"", NULL };
    assert_int_equal(req("GET", "/v1/sessions/c/slots/n", NULL, stale, &r), 200);
    assert_string_equal(hdr(&r, "ETag"), "\"1\"");
    assert_non_null(strstr(r.body, "\"one\""));
    mh_resp_free(&r);
    /* After an overwrite the old tag no longer matches. */
    assert_int_equal(req("PUT", "/v1/sessions/c/slots/n", "{\"payload\":\"two\"}", NULL, &r), 200);
    mh_resp_free(&r);
    assert_int_equal(req("GET", "/v1/sessions/c/slots/n", NULL, cur, &r), 200);
    assert_string_equal(hdr(&r, "ETag"), "\"2\"");
    mh_resp_free(&r);
    const char *bad[] = { "If-None-Match: nonsense", NULL };
    assert_int_equal(req("GET", "/v1/sessions/c/slots/n", NULL, bad, &r), 400);
    mh_resp_free(&r);
}

static void test_if_none_match_session(void **state)
{
    (void)state;
    mh_resp r;
    char etag[128], cond[160];
    assert_int_equal(req("GET", "/v1/sessions/c", NULL, NULL, &r), 200);
    assert_non_null(hdr(&r, "ETag"));
    snprintf(etag, sizeof etag, "%s", hdr(&r, "ETag"));
    mh_resp_free(&r);
    snprintf(cond, sizeof cond, "If-None-Match: %s", etag);
    const char *h[] = { cond, NULL };
    assert_int_equal(req("GET", "/v1/sessions/c", NULL, h, &r), 304);
    assert_string_equal(hdr(&r, "ETag"), etag);
    assert_int_equal(r.len, 0);
    mh_resp_free(&r);
    /* A change of the session changes its tag. */
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/c/events", 200, "{\"events\":[{\"k\":[1,0,0,0],\"v\":[1,0,0,0]}]}"));
    assert_int_equal(req("GET", "/v1/sessions/c", NULL, h, &r), 200);
    assert_string_not_equal(hdr(&r, "ETag"), etag);
    mh_resp_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_location_on_201),
        cmocka_unit_test(test_unknown_query_parameters),
        cmocka_unit_test(test_if_match),
        cmocka_unit_test(test_if_none_match_slot),
        cmocka_unit_test(test_if_none_match_session),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
