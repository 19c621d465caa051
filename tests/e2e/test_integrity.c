/*
 * tests/e2e/test_integrity.c — issue 12, item 4: stored data is checked before it is served.
 *
 * Rows of the database file are damaged with sqlite while the daemon is stopped (a payload's text, an
 * event block's keys zeroed, a NaN written with a valid checksum), the daemon is restarted on the file,
 * and every read that meets a damaged row answers 503 storage_error naming it, with a valid JSON body,
 * counted by memattn_storage_errors_total and logged; the undamaged sessions answer as before.
 * Before, a damaged payload was served as invalid JSON with 200 and zeroed keys went unnoticed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "api_util.h"
#include "harness.h"
#include "store/store_int.h"   /* st_block_sum: a NaN that carries a valid checksum */

enum { DIM = 8, EVENTS = 200 };

static float key(unsigned s, int i, int j)
{
    uint64_t x = (uint64_t)(s * 7919u + (unsigned)i) * 0x9e3779b97f4a7c15ull + (uint64_t)j * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 32;
    return (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void vec(char *b, size_t cap, size_t *pos, unsigned s, int i, float scale)
{
    *pos += (size_t)snprintf(b + *pos, cap - *pos, "[");
    for (int j = 0; j < DIM; j++)
        *pos += (size_t)snprintf(b + *pos, cap - *pos, "%s%.6f", j ? "," : "", scale * key(s, i, j));
    *pos += (size_t)snprintf(b + *pos, cap - *pos, "]");
}

static void fill(mh_daemon *d, const char *id, unsigned s)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    cJSON_Delete(au_call(d, "PUT", path, 201, "{\"dim\":%d}", DIM));
    size_t cap = (size_t)EVENTS * DIM * 24 + 64 * EVENTS, pos = 0;
    char *b = malloc(cap);
    pos += (size_t)snprintf(b, cap, "{\"events\":[");
    for (int i = 0; i < EVENTS; i++) {
        pos += (size_t)snprintf(b + pos, cap - pos, "%s{\"k\":", i ? "," : "");
        vec(b, cap, &pos, s, i, 1);
        pos += (size_t)snprintf(b + pos, cap - pos, ",\"v\":");
        vec(b, cap, &pos, s + 1000, i, 1);
        pos += (size_t)snprintf(b + pos, cap - pos, ",\"payload\":{\"i\":%d}}", i);
    }
    snprintf(b + pos, cap - pos, "]}");
    snprintf(path, sizeof path, "/v1/sessions/%s/events", id);
    cJSON_Delete(au_call(d, "POST", path, 200, "%s", b));
    free(b);
}

/* The full read for event 130's key (scaled: a sharp softmax); its pointer and payload are what the
 * damaged payload is chosen by. */
static char *query_body(unsigned s)
{
    static char b[1024];
    size_t pos = 0;
    pos += (size_t)snprintf(b, sizeof b, "{\"queries\":[{\"route\":\"full\",\"q\":");
    vec(b, sizeof b, &pos, s, 130, 40);
    snprintf(b + pos, sizeof b - pos, "}]}");
    return b;
}

static double metric(mh_daemon *d, const char *name)
{
    mh_resp r;
    assert_int_equal(mh_request(d, "GET", "/metrics", NULL, NULL, &r), 0);
    double v = -1;
    size_t n = strlen(name);
    for (char *line = r.body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, name, n) && line[n] == ' ') {
            v = strtod(line + n + 1, NULL);
            break;
        }
    mh_resp_free(&r);
    return v;
}

/* A request that must meet damage: 503 storage_error, a JSON body whose message contains `want`. */
static void refused(mh_daemon *d, const char *method, const char *path, const char *body, const char *want)
{
    mh_resp r;
    assert_int_equal(mh_request(d, method, path, body, NULL, &r), 0);
    cJSON *j = mh_resp_json(&r);
    if (r.status != 503 || !j || strcmp(mh_error_code(&r), "storage_error") != 0 ||
        !strstr(au_str(j, "error.message"), want))
        fail_msg("%s %s: %ld %s (want 503 storage_error with \"%s\")", method, path, r.status, r.body, want);
    cJSON_Delete(j);
    mh_resp_free(&r);
}

static void sql(const char *dir, const char *text, const void *blob, int len)
{
    char path[600];
    snprintf(path, sizeof path, "%s/memattn.db", dir);
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, text, -1, &s, NULL) != SQLITE_OK)
        fail_msg("%s: %s", text, sqlite3_errmsg(db));
    if (blob)
        sqlite3_bind_blob(s, 1, blob, len, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(s), SQLITE_DONE);
    sqlite3_finalize(s);
    sqlite3_close(db);
}

/* Block `block` of session id: its keys with float `at` set to NaN, and the matching checksum. */
static void nan_block(const char *dir, const char *id, int block)
{
    char path[600], q[256];
    snprintf(path, sizeof path, "%s/memattn.db", dir);
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    snprintf(q, sizeof q, "SELECT n, k, v FROM event_blocks WHERE block = %d AND sid = (SELECT sid FROM sessions "
             "WHERE id = '%s')", block, id);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int n = sqlite3_column_int(s, 0), kl = sqlite3_column_bytes(s, 1), vl = sqlite3_column_bytes(s, 2);
    unsigned char *k = malloc((size_t)kl), *v = malloc((size_t)vl);
    memcpy(k, sqlite3_column_blob(s, 1), (size_t)kl);
    memcpy(v, sqlite3_column_blob(s, 2), (size_t)vl);
    sqlite3_finalize(s);
    float nan = __builtin_nanf("");
    memcpy(k + 4 * 5, &nan, 4);
    int64_t ck = (int64_t)st_block_sum((uint64_t)block, (size_t)n, k, (size_t)kl, v, (size_t)vl);
    snprintf(q, sizeof q, "UPDATE event_blocks SET k = ?1, ck = ?2 WHERE block = %d AND sid = (SELECT sid FROM "
             "sessions WHERE id = '%s')", block, id);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &s, NULL), SQLITE_OK);
    sqlite3_bind_blob(s, 1, k, kl, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, ck);
    assert_int_equal(sqlite3_step(s), SQLITE_DONE);
    sqlite3_finalize(s);
    sqlite3_close(db);
    free(k);
    free(v);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void start(mh_daemon *d, const char *dir)
{
    const char *args[] = {"--data", dir, NULL};
    assert_int_equal(mh_start(d, args, NULL), 0);
}

static void test_damaged_rows_are_not_served(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-integrityXXXXXX";
    assert_non_null(mkdtemp(dir));
    mh_daemon d;
    start(&d, dir);
    const char *ids[] = {"good", "pay", "zero", "nan"};
    char *want[4];
    int pointer[4];
    char path[64], q[256], msg[64];
    for (unsigned s = 0; s < 4; s++) {
        fill(&d, ids[s], s);
        snprintf(path, sizeof path, "/v1/sessions/%s/query", ids[s]);
        cJSON *a = au_call(&d, "POST", path, 200, "%s", query_body(s));
        pointer[s] = (int)au_num(a, "results[0].event");
        assert_int_equal((int)au_num(a, "results[0].payload.i"), pointer[s]);
        want[s] = au_print(au_get(a, "results"));
        cJSON_Delete(a);
    }
    assert_int_equal(mh_stop(&d, 30000), 0);

    /* The damage, under the stopped daemon. */
    snprintf(q, sizeof q, "UPDATE payloads SET payload = '{\"i\":1' WHERE idx = %d AND sid = (SELECT sid FROM "
             "sessions WHERE id = 'pay')", pointer[1]);
    sql(dir, q, NULL, 0);
    sql(dir, "UPDATE event_blocks SET k = zeroblob(length(k)) WHERE block = 2 AND sid = (SELECT sid FROM "
             "sessions WHERE id = 'zero')", NULL, 0);
    nan_block(dir, "nan", 1);

    start(&d, dir);
    /* A payload that is not what was stored: before, 200 with `"payload":{"i":1` in the body. */
    snprintf(msg, sizeof msg, "payload of event %d: checksum mismatch", pointer[1]);
    refused(&d, "POST", "/v1/sessions/pay/query", query_body(1), msg);
    refused(&d, "GET", "/v1/sessions/pay/export", NULL, msg);
    /* Zeroed keys: the session's index is rebuilt from its chunks when it is loaded; the load meets them. */
    refused(&d, "POST", "/v1/sessions/zero/query", query_body(2), "event block 2 (events 128..191): checksum mismatch");
    refused(&d, "GET", "/v1/sessions/zero", NULL, "event block 2");
    /* A NaN behind a valid checksum. */
    refused(&d, "POST", "/v1/sessions/nan/query", query_body(3), "NaN or infinity");
    double errors = metric(&d, "memattn_storage_errors_total");
    assert_true(errors >= 5);
    assert_true(mh_log_contains(&d, "storage_error"));
    /* The undamaged session answers exactly as before; the count does not move. */
    cJSON *a = au_call(&d, "POST", "/v1/sessions/good/query", 200, "%s", query_body(0));
    char *got = au_print(au_get(a, "results"));
    assert_string_equal(got, want[0]);
    cJSON_free(got);
    cJSON_Delete(a);
    assert_true(metric(&d, "memattn_storage_errors_total") == errors);
    /* A damaged session can still be deleted (the way out). */
    cJSON_Delete(au_call(&d, "DELETE", "/v1/sessions/zero", 204, NULL));
    assert_int_equal(mh_stop(&d, 30000), 0);
    for (int s = 0; s < 4; s++)
        cJSON_free(want[s]);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_damaged_rows_are_not_served, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
