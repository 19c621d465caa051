/*
 * tests/e2e/test_purge.c — issue 9, item 2: deleting a session costs O(1) in the request; its rows are
 * purged in the background (store/purge.c, registry/purge.c; docs/STORE.md, "Deleting a session").
 *
 * A session of many events is deleted: it is 404 at once (GET, listing, export), its id is created
 * again at once as a new session that takes events of its own; the daemon is SIGKILLed right after
 * (its purge in progress, or not yet begun: the test asserts nothing about when), restarted on the
 * same data directory: the re-created session is intact, the old one still absent, and /metrics shows
 * the purge end (memattn_sessions_purging back to 0, memattn_purged_rows_total counting the rows),
 * polled without a time bound. An Idempotency-Key delete replays 204 after the restart.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/e2e/api_util.h"
#include "tests/e2e/harness.h"

#define DIM 32
#define BATCH 1000
#define EVENTS 24000   /* 24,000 events of 256 bytes, their rows several purge steps of 1 MiB */

/* {"events":[...]} of n events from `first`, seed s: numbers as JSON arrays. Caller frees. */
static char *events_body(int s, int first, int n)
{
    size_t cap = (size_t)n * (2 * DIM * 12 + 32) + 32, pos = 0;
    char *b = malloc(cap);
    pos += (size_t)snprintf(b, cap, "{\"events\":[");
    for (int e = 0; e < n; e++) {
        pos += (size_t)snprintf(b + pos, cap - pos, "%s{\"k\":[", e ? "," : "");
        for (int j = 0; j < DIM; j++)
            pos += (size_t)snprintf(b + pos, cap - pos, "%s%d", j ? "," : "", (s * 31 + first + e + j) % 97 - 48);
        pos += (size_t)snprintf(b + pos, cap - pos, "],\"v\":[");
        for (int j = 0; j < DIM; j++)
            pos += (size_t)snprintf(b + pos, cap - pos, "%s%d", j ? "," : "", (s * 17 + first + e * 3 + j) % 89 - 44);
        pos += (size_t)snprintf(b + pos, cap - pos, "]}");
    }
    snprintf(b + pos, cap - pos, "]}");
    return b;
}

static void feed(mh_daemon *d, const char *id, int seed, int n)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/events", id);
    for (int i = 0; i < n; i += BATCH) {
        char *body = events_body(seed, i, n - i < BATCH ? n - i : BATCH);
        cJSON_Delete(au_call(d, "POST", path, 200, "%s", body));
        free(body);
    }
}

/* The value of an unlabelled metric (after a job, which refreshes the registry's gauges). */
static double metric(mh_daemon *d, const char *name)
{
    cJSON_Delete(au_call(d, "GET", "/v1/sessions", 200, NULL));
    mh_resp r;
    assert_int_equal(mh_request(d, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(r.body, key);
    assert_non_null(p);
    double v = strtod(p + strlen(key), NULL);
    mh_resp_free(&r);
    return v;
}

/* Polls until the purge queue is empty (no time bound: the test runner's timeout is the bound). */
static void wait_purged(mh_daemon *d)
{
    while (metric(d, "memattn_sessions_purging") != 0)
        mh_sleep_ms(50);
}

static void test_delete_then_kill_mid_purge(void **state)
{
    (void)state;
    char *dir = mh_data_dir("purge");
    assert_non_null(dir);
    const char *extra[] = {"--max-body", "8M", NULL};
    mh_daemon d;
    assert_int_equal(mh_start_on(&d, NULL, dir, extra, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/big", 201, "{\"dim\":%d,\"value_dim\":%d}", DIM, DIM));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/other", 201, "{\"dim\":%d,\"value_dim\":%d}", DIM, DIM));
    feed(&d, "big", 1, EVENTS);
    feed(&d, "other", 2, 100);
    assert_int_equal(metric(&d, "memattn_sessions_purging"), 0);

    /* The delete: gone for every call at once; the id again at once, a new session. */
    const char *idem[] = {"Idempotency-Key: del-big-1", NULL};
    cJSON_Delete(au_callh(&d, "DELETE", "/v1/sessions/big", idem, 204, NULL));
    au_error(&d, "GET", "/v1/sessions/big", 404, "no_session", NULL);
    au_error(&d, "GET", "/v1/sessions/big/export", 404, "no_session", NULL);
    cJSON *list = au_call(&d, "GET", "/v1/sessions", 200, NULL);
    assert_int_equal(au_len(list, "sessions"), 1);
    assert_string_equal(au_str(list, "sessions[0].id"), "other");
    cJSON_Delete(list);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/big", 201, "{\"dim\":%d,\"value_dim\":%d}", DIM, DIM));
    feed(&d, "big", 3, 50);
    cJSON *j = au_call(&d, "GET", "/v1/sessions/big", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), 50);
    cJSON_Delete(j);
    char *before = au_snapshot(&d, "big", "{\"queries\":[{\"q\":[1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,"
                                          "1,2,3,4,5,6,7,8]}]}");

    /* SIGKILL with the purge in progress (or not begun), then a restart on the same directory. */
    assert_int_equal(mh_kill9(&d), 128 + SIGKILL);
    assert_int_equal(mh_start_on(&d, NULL, dir, extra, NULL), 0);
    print_message("after the restart: %g deleted sessions still purging\n", metric(&d, "memattn_sessions_purging"));
    wait_purged(&d);
    char *after = au_snapshot(&d, "big", "{\"queries\":[{\"q\":[1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,"
                                         "1,2,3,4,5,6,7,8]}]}");
    assert_string_equal(before, after);
    j = au_call(&d, "GET", "/v1/sessions/other", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), 100);
    cJSON_Delete(j);
    /* The delete's key replays its 204 (it is not the re-created session's). */
    mh_resp r;
    assert_int_equal(mh_request(&d, "DELETE", "/v1/sessions/big", NULL, idem, &r), 0);
    assert_int_equal(r.status, 204);
    mh_resp_free(&r);
    j = au_call(&d, "GET", "/v1/sessions/big", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), 50);
    cJSON_Delete(j);

    /* A delete purged within one run: the counter grows by its rows (at least one per 8 events). */
    double p0 = metric(&d, "memattn_purged_rows_total");
    cJSON_Delete(au_call(&d, "DELETE", "/v1/sessions/big", 204, NULL));
    wait_purged(&d);
    assert_true(metric(&d, "memattn_purged_rows_total") > p0);
    /* Everything of it stays gone after a clean stop and start. */
    assert_int_equal(mh_stop(&d, 60000), 0);
    assert_int_equal(mh_start_on(&d, NULL, dir, extra, NULL), 0);
    au_error(&d, "GET", "/v1/sessions/big", 404, "no_session", NULL);
    assert_int_equal(metric(&d, "memattn_sessions_purging"), 0);
    assert_int_equal(mh_stop(&d, 60000), 0);
    free(before);
    free(after);
    mh_rm_data(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_delete_then_kill_mid_purge, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
