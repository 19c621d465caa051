/*
 * tests/e2e/test_harden_json.c — issue 12, items 1 and 2, through the real daemon: a JSON string
 * holding \u0000 (which libcjson would cut), invalid UTF-8 or a lone surrogate escape is refused with
 * 400 `bad_request` naming the field, and nothing is created or changed; valid non-ASCII text and
 * surrogate pairs still round-trip byte for byte.
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
static const char *Q = "{\"queries\":[{\"text\":\"tower\"},{\"slot\":\"known\"}]}";
#define K4 "[1,0,0,0]"
#define V4 "[0,1,0,0]"

static int setup(void **state)
{
    (void)state;
    if (mh_start(&dmn, NULL, NULL) != 0)
        return -1;
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s", 201, "{\"dim\":4,\"slots\":4,\"chunk\":2}"));
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s/slots/known", 201, "{\"payload\":\"Paris\"}"));
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/s/events", 200,
                         "{\"events\":[{\"text\":\"tower\",\"payload\":\"330 m\"}]}"));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return mh_stop(&dmn, 30000) == 0 ? 0 : -1;
}

#define UNCHANGED(call)                                          \
    do {                                                         \
        char *before_ = au_snapshot(&dmn, "s", Q);               \
        call;                                                    \
        char *after_ = au_snapshot(&dmn, "s", Q);                \
        assert_string_equal(before_, after_);                    \
        free(before_);                                           \
        free(after_);                                            \
    } while (0)

/* The message must begin with the field's path. */
static void names(const char *msg, const char *path)
{
    if (strncmp(msg, path, strlen(path)) != 0 || msg[strlen(path)] != ':')
        fail_msg("message \"%s\" does not begin with %s:", msg, path);
}

/* The four examples of \u0000. */
static void test_nul_escapes(void **state)
{
    (void)state;
    const char *m;
    /* {"name":"zz\u0000evil"} created slot zz */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/slots", 400, "bad_request",
                           "{\"name\":\"zz\\u0000evil\",\"payload\":\"x\"}"));
    names(m, "name");
    assert_non_null(strstr(m, "NUL"));
    au_error(&dmn, "GET", "/v1/sessions/s/slots/zz", 404, "no_slot", NULL);
    /* libcjson reads a \u escape with a non-hex digit as \u0000 (found by tests/fuzz/fuzz_body.c) */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/slots", 400, "bad_request",
                           "{\"name\":\"zz\\u000hevil\",\"payload\":\"x\"}"));
    names(m, "name");
    au_error(&dmn, "GET", "/v1/sessions/s/slots/zz", 404, "no_slot", NULL);
    /* the payload "abc\u0000def" was stored as "abc" */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request",
                           "{\"events\":[{\"k\":" K4 ",\"v\":" V4 "},{\"k\":" K4 ",\"v\":" V4
                           ",\"payload\":\"abc\\u0000def\"}]}"));
    names(m, "events[1].payload");
    UNCHANGED(m = au_error(&dmn, "PUT", "/v1/sessions/s/slots/known", 400, "bad_request",
                           "{\"payload\":{\"note\":[\"ok\",\"abc\\u0000def\"]}}"));
    names(m, "payload.note[1]");
    /* {"dim\u0000x":8} was read as dim */
    m = au_error(&dmn, "PUT", "/v1/sessions/n", 400, "bad_request", "{\"dim\\u0000x\":8}");
    names(m, "dim\\u0000x");
    assert_non_null(strstr(m, "field name"));
    au_error(&dmn, "GET", "/v1/sessions/n", 404, "no_session", NULL);
    /* "route":"full\u0000x" was read as full */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/query", 400, "bad_request",
                           "{\"queries\":[{\"q\":" K4 "},{\"q\":" K4 ",\"route\":\"full\\u0000x\"}]}"));
    names(m, "queries[1].route");
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    const char *m;
    /* text (a stray byte), slot names (overlong '/'), payloads (a CESU-8 surrogate), field names */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request",
                           "{\"events\":[{\"text\":\"caf\xe9\",\"v\":" V4 "}]}"));
    names(m, "events[0].text");
    assert_non_null(strstr(m, "invalid UTF-8"));
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/query", 400, "bad_request",
                           "{\"queries\":[{\"text\":\"\xff\xfe\"}]}"));
    names(m, "queries[0].text");
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/slots", 400, "bad_request",
                           "{\"name\":\"a\xc0\xaf\x62\",\"payload\":\"x\"}"));
    names(m, "name");
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request",
                           "{\"events\":[{\"k\":" K4 ",\"v\":" V4 ",\"slot\":\"x\xed\xa0\x80\"}]}"));
    names(m, "events[0].slot");
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request",
                           "{\"events\":[{},{},{\"k\":" K4 ",\"v\":" V4 ",\"payload\":\"\xed\xa0\x80\"}]}"));
    names(m, "events[2].payload");
    UNCHANGED(m = au_error(&dmn, "PUT", "/v1/sessions/s/slots/known", 400, "bad_request",
                           "{\"payload\":\"ok\",\"pr\xf8tect\":true}"));
    assert_non_null(strstr(m, "field name"));
    /* lone surrogate escapes */
    UNCHANGED(m = au_error(&dmn, "POST", "/v1/sessions/s/events", 400, "bad_request",
                           "{\"events\":[{\"k\":" K4 ",\"v\":" V4 ",\"payload\":\"\\ud800\"}]}"));
    names(m, "events[0].payload");
    assert_non_null(strstr(m, "surrogate"));
    au_error(&dmn, "PUT", "/v1/sessions/u", 400, "bad_request", "{\"selector\":\"chunks\\udc00\"}");
    au_error(&dmn, "GET", "/v1/sessions/u", 404, "no_session", NULL);
}

/* What is valid still passes, unchanged: multi-byte UTF-8 and escaped surrogate pairs in payloads. */
static void test_valid_text_round_trips(void **state)
{
    (void)state;
    cJSON_Delete(au_call(&dmn, "PUT", "/v1/sessions/s/slots/intl", 201,
                         "{\"v\":" V4 ",\"payload\":{\"t\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\",\"e\":\"\\ud83d\\ude00\"}}"));
    cJSON *j = au_call(&dmn, "GET", "/v1/sessions/s/slots/intl", 200, NULL);
    assert_string_equal(au_str(j, "payload.t"), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    assert_string_equal(au_str(j, "payload.e"), "\xf0\x9f\x98\x80");
    cJSON_Delete(j);
    cJSON_Delete(au_call(&dmn, "POST", "/v1/sessions/s/events", 200,
                         "{\"events\":[{\"text\":\"na\xc3\xafve caf\xc3\xa9\",\"payload\":\"\xe6\x97\xa5\xe6\x9c\xac\"}]}"));
    j = au_call(&dmn, "POST", "/v1/sessions/s/query", 200, "{\"queries\":[{\"text\":\"na\xc3\xafve caf\xc3\xa9\"}]}");
    assert_non_null(j);
    cJSON_Delete(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nul_escapes),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_valid_text_round_trips),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
