/*
 * tests/e2e/test_idempotency.c — safe retries against the real daemon (docs/API.md, "Safe retries"):
 *   - a retry with the same Idempotency-Key and request gets the first answer (status, body, Location,
 *     ETag, plus Idempotent-Replayed: true) and changes nothing, on every mutation that takes a key;
 *     the same key with another request is 422 idempotency_key_reused; malformed keys are 400;
 *   - a daemon SIGKILLed between the commit and the answer (the test daemon's MEMATTN_KILL_AFTER_COMMIT):
 *     after a restart the retry gets the committed answer and nothing is applied twice;
 *   - keys survive a restart; the count and age windows (--idempotency-keys, --idempotency-window)
 *     forget old keys;
 *   - expect_length: 409 length_mismatch with the current length, nothing applied; two writers racing
 *     on one session win exactly once per length and resume from the 409's length.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tests/e2e/api_util.h"
#include "tests/e2e/harness.h"

/* ---- helpers ----------------------------------------------------------------------------------- */

static char *data_dir(void)
{
    char *d = mh_data_dir("idem");
    assert_non_null(d);
    return d;
}

static void rm_data(char *d)
{
    mh_rm_data(d);
}

/* Starts `bin` (NULL: the shipped daemon) on the data directory dir with extra arguments. */
static void start_on(mh_daemon *d, const char *bin, const char *dir, const char *const *extra,
                     const char *const *env)
{
    assert_int_equal(mh_start_on(d, bin, dir, extra, env), 0);
}

/* One request with an optional Idempotency-Key (NULL: none) and one more header (NULL: none). */
static void send_key(mh_daemon *d, const char *method, const char *path, const char *key, const char *hdr,
                     const char *body, mh_resp *r)
{
    char kh[400];
    const char *h[3] = {NULL, NULL, NULL};
    int n = 0;
    if (key) {
        snprintf(kh, sizeof kh, "Idempotency-Key: %s", key);
        h[n++] = kh;
    }
    if (hdr)
        h[n++] = hdr;
    assert_int_equal(mh_request(d, method, path, body, h, r), 0);
}

static bool replayed(const mh_resp *r)
{
    char v[16];
    return mh_resp_header(r, "Idempotent-Replayed", v, sizeof v) && strcmp(v, "true") == 0;
}

/* The session's event count. */
static double length_of(mh_daemon *d, const char *id)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    cJSON *j = au_call(d, "GET", path, 200, NULL);
    double n = au_num(j, "length");
    cJSON_Delete(j);
    return n;
}

/* Sends the request twice with one key: the second answer is the first (status, body, Location, ETag),
 * marked replayed; the first is not. Returns the first answer's status. The session's state as the API
 * shows it (au_snapshot) is the same before and after the retry. */
static long twice(mh_daemon *d, const char *sess, const char *method, const char *path, const char *key,
                  const char *hdr, const char *body)
{
    mh_resp a, b;
    char la[320], lb[320], ea[64], eb[64];
    send_key(d, method, path, key, hdr, body, &a);
    assert_false(replayed(&a));
    char *before = sess ? au_snapshot(d, sess, NULL) : NULL;
    send_key(d, method, path, key, hdr, body, &b);
    if (b.status != a.status || strcmp(a.body, b.body) != 0) {
        fprintf(stderr, "%s %s: first %ld %s, retry %ld %s\n", method, path, a.status, a.body, b.status, b.body);
        fail();
    }
    assert_true(replayed(&b));
    const char *x = mh_resp_header(&a, "Location", la, sizeof la), *y = mh_resp_header(&b, "Location", lb, sizeof lb);
    assert_true((x == NULL) == (y == NULL));
    if (x)
        assert_string_equal(la, lb);
    x = mh_resp_header(&a, "ETag", ea, sizeof ea);
    y = mh_resp_header(&b, "ETag", eb, sizeof eb);
    assert_true((x == NULL) == (y == NULL));
    if (x)
        assert_string_equal(ea, eb);
    if (sess) {
        char *after = au_snapshot(d, sess, NULL);
        assert_string_equal(before, after);
        free(after);
        free(before);
    }
    long st = a.status;
    mh_resp_free(&a);
    mh_resp_free(&b);
    return st;
}

static const char *ev1 = "{\"events\":[{\"k\":[1,0,0,0],\"v\":[0,1,0,0],\"payload\":\"a\"},"
                         "{\"k\":[0,1,0,0],\"v\":[1,0,0,0],\"slot\":\"w\",\"payload\":\"b\"}]}";

/* ---- every mutation replays ---------------------------------------------------------------------- */

static void test_retries_replay(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    mh_resp r;

    /* sessions: PUT (201, then a retry with the key is the 201 again, not the 200 of a plain PUT) */
    assert_int_equal(twice(&d, NULL, "PUT", "/v1/sessions/s", "create-s", NULL, "{\"dim\":4,\"slots\":4}"), 201);
    assert_int_equal(twice(&d, "s", "PUT", "/v1/sessions/s", "put-again", NULL, "{\"dim\":4,\"slots\":4}"), 200);

    /* events: same body again, nothing appended; the length shows it */
    assert_int_equal(twice(&d, "s", "POST", "/v1/sessions/s/events", "ev-1", NULL, ev1), 200);
    assert_int_equal(length_of(&d, "s"), 2);
    send_key(&d, "POST", "/v1/sessions/s/events", "ev-1", NULL, ev1, &r);   /* a third time too */
    assert_int_equal(r.status, 200);
    assert_true(replayed(&r));
    mh_resp_free(&r);
    assert_int_equal(length_of(&d, "s"), 2);
    /* an empty batch (changes nothing) is recorded too */
    assert_int_equal(twice(&d, "s", "POST", "/v1/sessions/s/events", "ev-empty", NULL, "{\"events\":[]}"), 200);

    /* the same key with another request: 422, nothing applied */
    char *before = au_snapshot(&d, "s", NULL);
    static const struct { const char *method, *path, *body; } other[] = {
        {"POST", "/v1/sessions/s/events", "{\"events\":[{\"k\":[1,0,0,0],\"v\":[0,1,0,0],\"payload\":\"c\"}]}"},
        {"POST", "/v1/sessions/s/events", "{\"events\":[{\"k\":[1,0,0,0],\"v\":[0,1,0,0],\"payload\":\"a\"},"
                                          "{\"k\":[0,1,0,0],\"v\":[1,0,0,0],\"slot\":\"w\",\"payload\":\"b\"}] }"},
        {"PUT", "/v1/sessions/s/slots/x", "{\"payload\":\"x\"}"},
    };
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        send_key(&d, other[i].method, other[i].path, "ev-1", NULL, other[i].body, &r);
        assert_int_equal(r.status, 422);
        assert_string_equal(mh_error_code(&r), "idempotency_key_reused");
        assert_false(replayed(&r));
        mh_resp_free(&r);
    }
    char *now = au_snapshot(&d, "s", NULL);
    assert_string_equal(before, now);
    free(now);
    free(before);
    /* keys are per session: the same key in another session is a new request */
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/t", 201, "{\"dim\":4}"));
    send_key(&d, "POST", "/v1/sessions/t/events", "ev-1", NULL, ev1, &r);
    assert_int_equal(r.status, 200);
    assert_false(replayed(&r));
    mh_resp_free(&r);

    /* slot verbs */
    assert_int_equal(twice(&d, "s", "PUT", "/v1/sessions/s/slots/x", "put-x", NULL, "{\"payload\":\"x1\"}"), 201);
    assert_int_equal(twice(&d, "s", "PUT", "/v1/sessions/s/slots/x", "put-x2", "If-Match: \"1\"",
                           "{\"payload\":\"x2\"}"), 200);
    /* the If-Match is part of the request: another one with the key is another request */
    send_key(&d, "PUT", "/v1/sessions/s/slots/x", "put-x2", "If-Match: \"2\"", "{\"payload\":\"x2\"}", &r);
    assert_int_equal(r.status, 422);
    mh_resp_free(&r);
    /* the first answer stays the answer of its key, whatever happened since */
    send_key(&d, "PUT", "/v1/sessions/s/slots/x", "put-x", NULL, "{\"payload\":\"x1\"}", &r);
    assert_int_equal(r.status, 201);
    assert_true(replayed(&r));
    cJSON *j = mh_resp_json(&r);
    assert_int_equal(au_num(j, "version"), 1);
    cJSON_Delete(j);
    mh_resp_free(&r);
    assert_int_equal(twice(&d, "s", "POST", "/v1/sessions/s/slots", "post-y", NULL, "{\"name\":\"y\",\"payload\":\"y\"}"),
                     201);
    assert_int_equal(twice(&d, "s", "POST", "/v1/sessions/s/slots/x/restore", "restore-x", NULL, "{\"version\":1}"), 200);
    assert_int_equal(twice(&d, "s", "PATCH", "/v1/sessions/s/slots/x", "protect-x", NULL, "{\"protected\":true}"), 200);
    assert_int_equal(twice(&d, "s", "PATCH", "/v1/sessions/s/slots/x", "unprotect-x", NULL, "{\"protected\":false}"),
                     200);
    assert_int_equal(twice(&d, "s", "DELETE", "/v1/sessions/s/slots/y", "evict-y", NULL, NULL), 204);
    assert_int_equal(twice(&d, "s", "DELETE", "/v1/sessions/s/slots/w?forget=true", "forget-w", NULL, NULL), 204);
    /* ?forget= is part of the request */
    send_key(&d, "DELETE", "/v1/sessions/s/slots/w", "forget-w", NULL, NULL, &r);
    assert_int_equal(r.status, 422);
    mh_resp_free(&r);
    cJSON *v = au_call(&d, "GET", "/v1/sessions/s/slots/x/versions", 200, NULL);
    assert_int_equal(au_len(v, "versions"), 3);   /* 1, 2, restore: each applied once */
    cJSON_Delete(v);

    /* a failed request records nothing: its retry runs again (and may succeed) */
    send_key(&d, "POST", "/v1/sessions/s/events", "fix-me", NULL, "{\"events\":[{\"k\":[1,0],\"v\":[0,1,0,0]}]}", &r);
    assert_int_equal(r.status, 400);
    mh_resp_free(&r);
    send_key(&d, "POST", "/v1/sessions/s/events", "fix-me", NULL, "{\"events\":[{\"k\":[1,0,0,0],\"v\":[0,1,0,0]}]}",
             &r);
    assert_int_equal(r.status, 200);
    assert_false(replayed(&r));
    mh_resp_free(&r);

    /* POST /v1/sessions: one session per key, the same id on the retry */
    cJSON *l0 = au_call(&d, "GET", "/v1/sessions", 200, NULL);
    int n0 = au_len(l0, "sessions");
    cJSON_Delete(l0);
    assert_int_equal(twice(&d, NULL, "POST", "/v1/sessions", "post-session", NULL, "{\"dim\":4}"), 201);
    cJSON *l1 = au_call(&d, "GET", "/v1/sessions", 200, NULL);
    assert_int_equal(au_len(l1, "sessions"), n0 + 1);
    cJSON_Delete(l1);

    /* DELETE of a session: the retry is the 204 again, not 404 (the key outlives the session) */
    assert_int_equal(twice(&d, NULL, "DELETE", "/v1/sessions/t", "del-t", NULL, NULL), 204);
    au_error(&d, "GET", "/v1/sessions/t", 404, "no_session", NULL);
    send_key(&d, "DELETE", "/v1/sessions/t", "del-t2", NULL, NULL, &r);   /* a new key: 404 as without */
    assert_int_equal(r.status, 404);
    mh_resp_free(&r);

    /* reads ignore a key */
    send_key(&d, "GET", "/v1/sessions/s", "read", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_false(replayed(&r));
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

static void test_malformed_keys(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/m", 201, "{\"dim\":4}"));
    char big[300] = "Idempotency-Key: ";
    size_t at = strlen(big);
    memset(big + at, 'k', 256);
    big[at + 256] = '\0';
    const char *cases[][3] = {
        {"Idempotency-Key;", NULL, "empty"},            /* curl's way to send an empty header */
        {big, NULL, "256 bytes"},
        {"Idempotency-Key: caf\xc3\xa9", NULL, "printable ASCII"},
        {"Idempotency-Key: a", "Idempotency-Key: b", "Idempotency-Key"},   /* twice */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mh_resp r;
        const char *h[] = {cases[i][0], cases[i][1], NULL};
        assert_int_equal(mh_request(&d, "POST", "/v1/sessions/m/events", ev1, h, &r), 0);
        assert_int_equal(r.status, 400);
        assert_string_equal(mh_error_code(&r), "bad_request");
        assert_non_null(strstr(r.body, cases[i][2]));
        mh_resp_free(&r);
    }
    assert_int_equal(length_of(&d, "m"), 0);
    mh_resp r;
    big[at + 255] = '\0';   /* 255 bytes: fine */
    const char *h[] = {big, NULL};
    assert_int_equal(mh_request(&d, "POST", "/v1/sessions/m/events", ev1, h, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

/* ---- crash between commit and answer; restart; windows --------------------------------------------- */

/* The test daemon dies (SIGKILL) right after the n-th committed change; the request gets no answer. */
static void killed_after_commit(mh_daemon *d, const char *method, const char *path, const char *key,
                                const char *body)
{
    mh_resp r;
    char kh[300];
    snprintf(kh, sizeof kh, "Idempotency-Key: %s", key);
    const char *h[] = {kh, NULL};
    int rc = mh_request(d, method, path, body, h, &r);
    assert_true(rc < 0 || r.status == 0);   /* no answer */
    mh_resp_free(&r);
    if (truncate(d->log_path, 0) != 0)   /* the harness shows the log of a daemon that exits non-zero */
        fprintf(stderr, "cannot empty %s: %s\n", d->log_path, strerror(errno));
    assert_int_equal(mh_wait(d, 30000), 128 + SIGKILL);
}

static void test_kill_between_commit_and_answer(void **state)
{
    (void)state;
    char *dir = data_dir();
    mh_daemon d;
    /* change 1: the create; change 2: the first batch; change 3 (killed): the keyed batch */
    const char *env3[] = {"MEMATTN_KILL_AFTER_COMMIT=3", NULL};
    start_on(&d, mh_test_bin(), dir, NULL, env3);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/k", 201, "{\"dim\":4,\"slots\":4}"));
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/k/events", 200, "%s", ev1));
    killed_after_commit(&d, "POST", "/v1/sessions/k/events", "crash-ev", ev1);

    start_on(&d, NULL, dir, NULL, NULL);
    assert_int_equal(length_of(&d, "k"), 4);   /* the killed batch was committed */
    mh_resp r;
    send_key(&d, "POST", "/v1/sessions/k/events", "crash-ev", NULL, ev1, &r);
    assert_int_equal(r.status, 200);
    assert_true(replayed(&r));
    cJSON *j = mh_resp_json(&r);
    assert_int_equal(au_num(j, "length"), 4);
    assert_int_equal(au_num(j, "appended"), 2);
    assert_string_equal(au_str(j, "writes[0].slot"), "w");
    assert_int_equal(au_num(j, "writes[0].event"), 3);
    cJSON_Delete(j);
    mh_resp_free(&r);
    assert_int_equal(length_of(&d, "k"), 4);   /* nothing applied twice */
    assert_int_equal(mh_stop(&d, 30000), 0);

    /* a slot PUT that creates the slot: the retry gets the 201 with its Location and ETag */
    const char *env1[] = {"MEMATTN_KILL_AFTER_COMMIT=1", NULL};
    start_on(&d, mh_test_bin(), dir, NULL, env1);
    killed_after_commit(&d, "PUT", "/v1/sessions/k/slots/z", "crash-slot", "{\"payload\":\"z\"}");
    start_on(&d, NULL, dir, NULL, NULL);
    send_key(&d, "PUT", "/v1/sessions/k/slots/z", "crash-slot", NULL, "{\"payload\":\"z\"}", &r);
    assert_int_equal(r.status, 201);
    assert_true(replayed(&r));
    char buf[128];
    assert_non_null(mh_resp_header(&r, "Location", buf, sizeof buf));
    assert_string_equal(buf, "/v1/sessions/k/slots/z");
    assert_non_null(mh_resp_header(&r, "ETag", buf, sizeof buf));
    assert_string_equal(buf, "\"1\"");
    mh_resp_free(&r);
    cJSON *v = au_call(&d, "GET", "/v1/sessions/k/slots/z/versions", 200, NULL);
    assert_int_equal(au_len(v, "versions"), 1);
    cJSON_Delete(v);
    assert_int_equal(mh_stop(&d, 30000), 0);

    /* a session create and delete killed after their commits */
    start_on(&d, mh_test_bin(), dir, NULL, env1);
    killed_after_commit(&d, "PUT", "/v1/sessions/k2", "crash-create", "{\"dim\":4}");
    start_on(&d, mh_test_bin(), dir, NULL, env1);
    killed_after_commit(&d, "DELETE", "/v1/sessions/k", "crash-delete", NULL);
    start_on(&d, NULL, dir, NULL, NULL);
    send_key(&d, "PUT", "/v1/sessions/k2", "crash-create", NULL, "{\"dim\":4}", &r);
    assert_int_equal(r.status, 201);   /* the create's answer, not the 200 of a PUT of an existing session */
    assert_true(replayed(&r));
    assert_non_null(mh_resp_header(&r, "Location", buf, sizeof buf));
    assert_string_equal(buf, "/v1/sessions/k2");
    mh_resp_free(&r);
    send_key(&d, "DELETE", "/v1/sessions/k", "crash-delete", NULL, NULL, &r);
    assert_int_equal(r.status, 204);
    assert_true(replayed(&r));
    mh_resp_free(&r);
    au_error(&d, "GET", "/v1/sessions/k", 404, "no_session", NULL);
    assert_int_equal(mh_stop(&d, 30000), 0);
    rm_data(dir);
}

static void test_keys_across_restart(void **state)
{
    (void)state;
    char *dir = data_dir();
    mh_daemon d;
    start_on(&d, NULL, dir, NULL, NULL);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/r", 201, "{\"dim\":4}"));
    mh_resp first, r;
    send_key(&d, "POST", "/v1/sessions/r/events", "before-restart", NULL, ev1, &first);
    assert_int_equal(first.status, 200);
    assert_int_equal(mh_stop(&d, 30000), 0);
    start_on(&d, NULL, dir, NULL, NULL);
    send_key(&d, "POST", "/v1/sessions/r/events", "before-restart", NULL, ev1, &r);
    assert_int_equal(r.status, 200);
    assert_true(replayed(&r));
    assert_string_equal(r.body, first.body);
    mh_resp_free(&r);
    send_key(&d, "POST", "/v1/sessions/r/events", "before-restart", NULL, "{\"events\":[]}", &r);
    assert_int_equal(r.status, 422);
    mh_resp_free(&r);
    assert_int_equal(length_of(&d, "r"), 2);
    mh_resp_free(&first);
    assert_int_equal(mh_stop(&d, 30000), 0);
    rm_data(dir);
}

/* --idempotency-keys 2: a third key pushes the first out, whose retry then runs again.
 * --idempotency-window: a key older than the window is forgotten (the test waits past it). */
static void test_windows(void **state)
{
    (void)state;
    mh_daemon d;
    const char *args[] = {"--idempotency-keys", "2", NULL};
    assert_int_equal(mh_start(&d, args, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/w", 201, "{\"dim\":4}"));
    mh_resp r;
    const char *keys[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        send_key(&d, "POST", "/v1/sessions/w/events", keys[i], NULL, ev1, &r);
        assert_int_equal(r.status, 200);
        mh_resp_free(&r);
    }
    assert_int_equal(length_of(&d, "w"), 6);
    send_key(&d, "POST", "/v1/sessions/w/events", "c", NULL, ev1, &r);   /* in the window */
    assert_true(replayed(&r));
    mh_resp_free(&r);
    send_key(&d, "POST", "/v1/sessions/w/events", "a", NULL, ev1, &r);   /* out of it: runs again */
    assert_int_equal(r.status, 200);
    assert_false(replayed(&r));
    mh_resp_free(&r);
    assert_int_equal(length_of(&d, "w"), 8);
    assert_int_equal(mh_stop(&d, 30000), 0);

    const char *args2[] = {"--idempotency-window", "300ms", NULL};
    assert_int_equal(mh_start(&d, args2, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/w", 201, "{\"dim\":4}"));
    send_key(&d, "POST", "/v1/sessions/w/events", "old", NULL, ev1, &r);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    mh_sleep_ms(600);   /* past the window (a wait, not a timing assertion) */
    send_key(&d, "POST", "/v1/sessions/w/events", "old", NULL, ev1, &r);
    assert_int_equal(r.status, 200);
    assert_false(replayed(&r));
    mh_resp_free(&r);
    assert_int_equal(length_of(&d, "w"), 4);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

/* ---- expect_length ----------------------------------------------------------------------------------- */

static void test_expect_length(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/x", 201, "{\"dim\":4}"));
    cJSON *j = au_call(&d, "POST", "/v1/sessions/x/events", 200,
                       "{\"expect_length\":0,\"events\":[{\"k\":[1,0,0,0],\"v\":[0,1,0,0]}]}");
    assert_int_equal(au_num(j, "length"), 1);
    cJSON_Delete(j);
    char *before = au_snapshot(&d, "x", NULL);
    mh_resp r;
    assert_int_equal(mh_request(&d, "POST", "/v1/sessions/x/events",
                                "{\"expect_length\":0,\"events\":[{\"k\":[1,0,0,0],\"v\":[0,1,0,0]}]}", NULL, &r), 0);
    assert_int_equal(r.status, 409);
    assert_string_equal(mh_error_code(&r), "length_mismatch");
    j = mh_resp_json(&r);
    assert_int_equal(au_num(j, "error.length"), 1);
    assert_non_null(strstr(au_str(j, "error.message"), "1"));
    cJSON_Delete(j);
    mh_resp_free(&r);
    char *now = au_snapshot(&d, "x", NULL);
    assert_string_equal(before, now);
    free(now);
    free(before);
    au_error(&d, "POST", "/v1/sessions/x/events", 400, "bad_request", "{\"expect_length\":-1,\"events\":[]}");
    au_error(&d, "POST", "/v1/sessions/x/events", 400, "bad_request", "{\"expect_length\":\"1\",\"events\":[]}");
    /* an empty batch with the right length is a 200: the check alone */
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/x/events", 200, "{\"expect_length\":1,\"events\":[]}"));
    /* with a key: the retry of a batch that was applied is its answer, not a 409 */
    mh_resp a;
    const char *b2 = "{\"expect_length\":1,\"events\":[{\"k\":[0,1,0,0],\"v\":[0,1,0,0]}]}";
    send_key(&d, "POST", "/v1/sessions/x/events", "once", NULL, b2, &a);
    assert_int_equal(a.status, 200);
    send_key(&d, "POST", "/v1/sessions/x/events", "once", NULL, b2, &r);
    assert_int_equal(r.status, 200);
    assert_true(replayed(&r));
    assert_string_equal(a.body, r.body);
    mh_resp_free(&r);
    mh_resp_free(&a);
    assert_int_equal(length_of(&d, "x"), 2);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

enum { WRITERS = 2, TARGET = 60, BATCH = 2 };

typedef struct {
    const mh_daemon *d;
    int id;
    int wins, conflicts;
    uint64_t won_at[TARGET];     /* expect_length of each win */
    char err[256];
} writer;

/* Appends batches of BATCH events with expect_length until the session reaches TARGET events; after a
 * 409 it resumes from the length the error names. */
static void *writer_main(void *p)
{
    writer *w = p;
    au_client *c = au_client_new(w->d);
    uint64_t L = 0;
    char body[512];
    while (L < TARGET && !w->err[0]) {
        snprintf(body, sizeof body,
                 "{\"expect_length\":%llu,\"events\":[{\"k\":[%d,1,0,0],\"v\":[0,1,0,0],\"payload\":\"w%d@%llu\"},"
                 "{\"k\":[%d,0,1,0],\"v\":[1,0,0,0]}]}",
                 (unsigned long long)L, w->id + 1, w->id, (unsigned long long)L, w->id + 1);
        cJSON *j = NULL;
        long st = au_client_call(c, "POST", "/v1/sessions/race/events", body, &j);
        const cJSON *len = st == 200 ? cJSON_GetObjectItemCaseSensitive(j, "length")
                                     : cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"),
                                                                        "length");
        if ((st != 200 && st != 409) || !cJSON_IsNumber(len)) {
            snprintf(w->err, sizeof w->err, "writer %d: expect_length %llu -> %ld", w->id, (unsigned long long)L, st);
        } else if (st == 200) {
            if ((uint64_t)len->valuedouble != L + BATCH)
                snprintf(w->err, sizeof w->err, "writer %d won at %llu but the length is %g", w->id,
                         (unsigned long long)L, len->valuedouble);
            else if (w->wins < TARGET)
                w->won_at[w->wins++] = L;
            L = (uint64_t)len->valuedouble;
        } else {
            w->conflicts++;
            if ((uint64_t)len->valuedouble < L)
                snprintf(w->err, sizeof w->err, "writer %d: the length went back from %llu to %g", w->id,
                         (unsigned long long)L, len->valuedouble);
            L = (uint64_t)len->valuedouble;
        }
        cJSON_Delete(j);
    }
    au_client_free(c);
    return NULL;
}

static void test_expect_length_race(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/race", 201, "{\"dim\":4}"));
    writer w[WRITERS];
    pthread_t t[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (writer){.d = &d, .id = i};
        pthread_create(&t[i], NULL, writer_main, &w[i]);
    }
    for (int i = 0; i < WRITERS; i++)
        pthread_join(t[i], NULL);
    bool taken[TARGET + 1] = {false};
    int wins = 0;
    for (int i = 0; i < WRITERS; i++) {
        if (w[i].err[0])
            fail_msg("%s", w[i].err);
        for (int k = 0; k < w[i].wins; k++) {
            uint64_t at = w[i].won_at[k];
            assert_true(at < TARGET && at % BATCH == 0);
            assert_false(taken[at]);   /* exactly one winner per length */
            taken[at] = true;
        }
        wins += w[i].wins;
    }
    assert_int_equal(wins * BATCH, TARGET);
    assert_int_equal(length_of(&d, "race"), TARGET);
    fprintf(stderr, "expect_length race: %d wins, %d + %d conflicts\n", wins, w[0].conflicts, w[1].conflicts);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_retries_replay, mh_teardown),
        cmocka_unit_test_teardown(test_malformed_keys, mh_teardown),
        cmocka_unit_test_teardown(test_kill_between_commit_and_answer, mh_teardown),
        cmocka_unit_test_teardown(test_keys_across_restart, mh_teardown),
        cmocka_unit_test_teardown(test_windows, mh_teardown),
        cmocka_unit_test_teardown(test_expect_length, mh_teardown),
        cmocka_unit_test_teardown(test_expect_length_race, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
