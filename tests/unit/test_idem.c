/*
 * tests/unit/test_idem.c — safe retries below the HTTP layer: the store's Idempotency-Key records
 * (store/idem.c: written with the change in one transaction, attached to their session or detached,
 * the window per scope and by age, kept across a reopen), the registry's window and its key-carrying
 * commit/create/delete (registry/registry.h), the key syntax and request fingerprint of server/idem.h,
 * and the codec's expect_length.
 *
 * Times are explicit arguments (created_at, now): nothing here sleeps or reads a clock.
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

#include <cjson/cJSON.h>

#include "core/error.h"
#include "registry/registry.h"
#include "server/codec.h"
#include "server/idem.h"
#include "store/store.h"
#include "tests/support/store_fault.h"

static char errbuf[512];

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static char *fresh_dir(void)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *d = malloc(strlen(base) + 32);
    sprintf(d, "%s/ma_idem_XXXXXX", base);
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_dir(char *d)
{
    nftw(d, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static ma_store *open_store(const char *dir, bool faults)
{
    ma_store_options o;
    ma_store_options_default(&o);
    o.synchronous = MA_STORE_SYNC_NORMAL;   /* durability is test_store's subject */
    if (faults)
        o.vfs = ma_store_fault_vfs();
    ma_store *st = NULL;
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    return st;
}

/* A record of scope/key whose answer names n (so which write won can be told). */
static ma_store_idem rec(const char *scope, const char *key, int n, int64_t at, char *body, size_t cap)
{
    snprintf(body, cap, "{\"n\":%d}", n);
    return (ma_store_idem){.scope = scope, .key = key, .fingerprint = 0x8000000000000000ull + (uint64_t)n,
                           .status = 200 + n % 2, .body = body, .etag = n % 2 ? "\"7\"" : NULL,
                           .location = n % 2 ? "/v1/sessions/s/slots/x" : "", .created_at = at};
}

static void put(ma_store *st, const char *scope, const char *key, int n, int64_t at, size_t keep, int64_t expire)
{
    char body[64];
    ma_store_idem k = rec(scope, key, n, at, body, sizeof body);
    k.keep = keep;
    k.expire_before = expire;
    assert_int_equal(ma_store_idem_put(st, &k, errbuf, sizeof errbuf), 0);
}

/* Asserts that (scope, key) holds record n, or is absent when n < 0. */
static void expect(ma_store *st, const char *scope, const char *key, int n)
{
    ma_store_idem_row r;
    int rc = ma_store_idem_get(st, scope, key, 0, &r, errbuf, sizeof errbuf);
    if (n < 0) {
        assert_int_equal(rc, MA_ENOTFOUND);
        return;
    }
    assert_int_equal(rc, 0);
    char body[64];
    snprintf(body, sizeof body, "{\"n\":%d}", n);
    assert_int_equal(r.fingerprint, 0x8000000000000000ull + (uint64_t)n);   /* all 64 bits kept */
    assert_int_equal(r.status, 200 + n % 2);
    assert_string_equal(r.body, body);
    if (n % 2) {
        assert_string_equal(r.etag, "\"7\"");
        assert_string_equal(r.location, "/v1/sessions/s/slots/x");
    } else {
        assert_null(r.etag);
        assert_null(r.location);
    }
    ma_store_idem_row_clear(&r);
}

/* ---- store ------------------------------------------------------------------------------------- */

static void test_store_put_get(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_store(dir, false);
    put(st, "s", "k1", 1, 1000, 0, 0);
    put(st, "s", "k2", 2, 1000, 0, 0);
    put(st, "", "k1", 4, 1000, 0, 0);          /* another scope: another key */
    expect(st, "s", "k1", 1);
    expect(st, "s", "k2", 2);
    expect(st, "", "k1", 4);
    expect(st, "t", "k1", -1);
    expect(st, "s", "k3", -1);
    /* not_before: an older record is not returned */
    ma_store_idem_row r;
    assert_int_equal(ma_store_idem_get(st, "s", "k1", 1001, &r, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_idem_get(st, "s", "k1", 1000, &r, errbuf, sizeof errbuf), 0);
    ma_store_idem_row_clear(&r);
    /* the same key again replaces the record (an expired one is overwritten by its next use) */
    put(st, "s", "k1", 3, 2000, 0, 0);
    expect(st, "s", "k1", 3);
    /* malformed records are refused */
    char body[64];
    ma_store_idem k = rec("s", "", 1, 1, body, sizeof body);
    assert_int_equal(ma_store_idem_put(st, &k, errbuf, sizeof errbuf), MA_EINVAL);
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    k.key = big;
    assert_int_equal(ma_store_idem_put(st, &k, errbuf, sizeof errbuf), MA_EINVAL);
    /* kept across a reopen */
    ma_store_close(st);
    st = open_store(dir, false);
    expect(st, "s", "k1", 3);
    expect(st, "s", "k2", 2);
    expect(st, "", "k1", 4);
    ma_store_close(st);
    rm_dir(dir);
}

/* The window: the newest `keep` records of a scope stay, other scopes are untouched; records created
 * before expire_before go store-wide at the next insert. */
static void test_store_window(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_store(dir, false);
    char key[16];
    put(st, "other", "o", 9, 100, 3, 0);
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "k%d", i);
        put(st, "s", key, i, 1000 + i, 3, 0);
    }
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "k%d", i);
        expect(st, "s", key, i >= 7 ? i : -1);
    }
    expect(st, "other", "o", 9);
    /* a replaced key is the newest of its scope */
    put(st, "s", "k7", 17, 2000, 3, 0);
    put(st, "s", "k10", 10, 2001, 3, 0);
    expect(st, "s", "k8", -1);
    expect(st, "s", "k7", 17);
    expect(st, "s", "k9", 9);
    expect(st, "s", "k10", 10);
    /* by age, in every scope: "other" (created at 100) and k9 (1009) go; 2000 and later stay */
    put(st, "t", "x", 5, 3000, 3, 1500);
    expect(st, "other", "o", -1);
    expect(st, "s", "k9", -1);
    expect(st, "s", "k7", 17);
    expect(st, "s", "k10", 10);
    expect(st, "t", "x", 5);
    ma_store_close(st);
    rm_dir(dir);
}

/* A record written with a change is in the same transaction: both or neither. */
static void test_store_commit_atomic(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_store(dir, true);
    char body[64];
    assert_int_equal(ma_store_session_create(st, "s", "{}", 1, errbuf, sizeof errbuf), 0);
    float k[4] = {1, 2, 3, 4}, v[2] = {5, 6};
    ma_store_idem ki = rec("s", "e1", 1, 10, body, sizeof body);
    ma_store_delta d = {.first_event = 0, .n_events = 1, .k_floats = 4, .v_floats = 2, .k = k, .v = v,
                        .length = 1, .updated_at = 10, .idem = &ki};
    assert_int_equal(ma_store_commit(st, "s", &d, errbuf, sizeof errbuf), 0);
    expect(st, "s", "e1", 1);

    /* the disk fails: neither the events nor the key */
    ma_store_idem k2 = rec("s", "e2", 2, 11, body, sizeof body);
    d = (ma_store_delta){.first_event = 1, .n_events = 1, .k_floats = 4, .v_floats = 2, .k = k, .v = v,
                         .length = 2, .updated_at = 11, .idem = &k2};
    ma_store_fault_set(MA_FAULT_WRITE, 0);
    assert_int_equal(ma_store_commit(st, "s", &d, errbuf, sizeof errbuf), MA_EIO);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    expect(st, "s", "e2", -1);
    ma_store_session row;
    assert_int_equal(ma_store_session_summary(st, "s", &row, errbuf, sizeof errbuf), 0);
    assert_int_equal(row.length, 1);
    ma_store_session_clear(&row);

    /* a refused change (events that do not continue the session) writes no key either */
    d.first_event = 5;
    d.length = 6;
    assert_int_equal(ma_store_commit(st, "s", &d, errbuf, sizeof errbuf), MA_EINVAL);
    expect(st, "s", "e2", -1);
    /* a malformed record fails the whole change */
    k2.key = "";
    d.first_event = 1;
    d.length = 2;
    assert_int_equal(ma_store_commit(st, "s", &d, errbuf, sizeof errbuf), MA_EINVAL);
    assert_int_equal(ma_store_session_summary(st, "s", &row, errbuf, sizeof errbuf), 0);
    assert_int_equal(row.length, 1);
    ma_store_session_clear(&row);
    ma_store_close(st);
    rm_dir(dir);
}

/* A session's records go with it; a delete's own record is detached and stays; a create's is attached
 * when its scope is the session (PUT), detached when not (POST /v1/sessions: scope ""). */
static void test_store_create_delete(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_store(dir, false);
    char b1[64], b2[64], b3[64];
    ma_store_idem kc = rec("s", "create", 1, 10, b1, sizeof b1);
    assert_int_equal(ma_store_session_create_idem(st, "s", "{}", 10, &kc, errbuf, sizeof errbuf), 0);
    ma_store_idem kp = rec("", "post", 3, 10, b3, sizeof b3);
    assert_int_equal(ma_store_session_create_idem(st, "t", "{}", 10, &kp, errbuf, sizeof errbuf), 0);
    put(st, "s", "other", 5, 11, 0, 0);
    expect(st, "s", "create", 1);
    expect(st, "s", "other", 5);
    /* a create refused (exists) writes no key */
    ma_store_idem kx = rec("s", "again", 7, 12, b2, sizeof b2);
    assert_int_equal(ma_store_session_create_idem(st, "s", "{}", 12, &kx, errbuf, sizeof errbuf), MA_EEXISTS);
    expect(st, "s", "again", -1);

    ma_store_idem kd = rec("s", "delete", 2, 20, b2, sizeof b2);
    assert_int_equal(ma_store_session_delete_idem(st, "s", &kd, errbuf, sizeof errbuf), 0);
    expect(st, "s", "create", -1);   /* went with the session */
    expect(st, "s", "other", -1);
    expect(st, "s", "delete", 2);    /* detached: outlives it */
    expect(st, "", "post", 3);
    /* a delete of a missing session writes no key */
    ma_store_idem kn = rec("s", "delete2", 4, 21, b2, sizeof b2);
    assert_int_equal(ma_store_session_delete_idem(st, "s", &kn, errbuf, sizeof errbuf), MA_ENOTFOUND);
    expect(st, "s", "delete2", -1);
    /* a new session of the same id starts with the detached record only */
    assert_int_equal(ma_store_session_create(st, "s", "{}", 30, errbuf, sizeof errbuf), 0);
    expect(st, "s", "delete", 2);
    expect(st, "s", "create", -1);
    assert_int_equal(ma_store_session_delete(st, "t", errbuf, sizeof errbuf), 0);
    expect(st, "", "post", 3);       /* POST /v1/sessions records are store-wide */
    ma_store_close(st);
    st = open_store(dir, false);
    expect(st, "s", "delete", 2);
    ma_store_close(st);
    rm_dir(dir);
}

/* ---- registry ---------------------------------------------------------------------------------- */

static void test_registry_window(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_store(dir, false);
    reg_registry *reg;
    reg_options ro = {.store = st, .cache_chunks = 4, .idem_keys = 2, .idem_window_ms = 1000};
    assert_int_equal(reg_create(&ro, &reg), 0);
    ma_params p;
    ma_params_default(&p);
    p.dim = p.value_dim = 4;
    reg_session *s;
    reg_idem k = {.scope = "s", .key = "create", .fingerprint = 42, .status = 201, .body = "{\"id\":\"s\"}",
                  .location = "/v1/sessions/s"};
    assert_int_equal(reg_create_session_idem(reg, "s", &p, 10000, &k, &s, errbuf, sizeof errbuf), 0);
    reg_idem_answer a;
    assert_int_equal(reg_idem_find(reg, "s", "create", 10000, &a, errbuf, sizeof errbuf), 0);
    assert_int_equal(a.fingerprint, 42);
    assert_int_equal(a.status, 201);
    assert_string_equal(a.body, "{\"id\":\"s\"}");
    assert_string_equal(a.location, "/v1/sessions/s");
    assert_null(a.etag);
    reg_idem_answer_clear(&a);
    /* the age window: found up to 1000 ms later, not after */
    assert_int_equal(reg_idem_find(reg, "s", "create", 11000, &a, errbuf, sizeof errbuf), 0);
    reg_idem_answer_clear(&a);
    assert_int_equal(reg_idem_find(reg, "s", "create", 11001, &a, errbuf, sizeof errbuf), MA_ENOTFOUND);

    /* a change with its key: an event batch */
    float kv[4] = {1, 0, 0, 0}, vv[4] = {0, 1, 0, 0};
    ma_event ev = {.k = kv, .v = vv};
    ma_ingest_report rep = {0};
    assert_int_equal(ma_session_ingest(reg_core(s), 1, &ev, 10100, &rep), 0);
    ma_ingest_report_clear(&rep);
    reg_idem ke = {.scope = "s", .key = "e1", .fingerprint = 7, .status = 200, .body = "{\"length\":1}"};
    reg_change c = {.first_event = 0, .n_events = 1, .k = kv, .v = vv, .idem = &ke};
    assert_int_equal(reg_commit(reg, s, &c, 10100, errbuf, sizeof errbuf), 0);
    reg_release(reg, s);
    assert_int_equal(reg_idem_find(reg, "s", "e1", 10100, &a, errbuf, sizeof errbuf), 0);
    assert_string_equal(a.body, "{\"length\":1}");
    reg_idem_answer_clear(&a);
    /* the count window (2 per scope): two more records push "create" and "e1" out */
    reg_idem k3 = {.scope = "s", .key = "r3", .status = 200};
    assert_int_equal(reg_idem_record(reg, &k3, 10200, errbuf, sizeof errbuf), 0);
    assert_int_equal(reg_idem_find(reg, "s", "create", 10200, &a, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(reg_idem_find(reg, "s", "e1", 10200, &a, errbuf, sizeof errbuf), 0);
    reg_idem_answer_clear(&a);
    k3.key = "r4";
    assert_int_equal(reg_idem_record(reg, &k3, 10300, errbuf, sizeof errbuf), 0);
    assert_int_equal(reg_idem_find(reg, "s", "e1", 10300, &a, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(reg_idem_find(reg, "s", "r3", 10300, &a, errbuf, sizeof errbuf), 0);
    reg_idem_answer_clear(&a);
    /* a delete's key outlives the session */
    reg_idem kd = {.scope = "s", .key = "del", .status = 204};
    assert_int_equal(reg_delete_idem(reg, "s", &kd, 10400, errbuf, sizeof errbuf), 0);
    assert_int_equal(reg_idem_find(reg, "s", "del", 10400, &a, errbuf, sizeof errbuf), 0);
    assert_int_equal(a.status, 204);
    assert_null(a.body);
    reg_idem_answer_clear(&a);
    assert_int_equal(reg_idem_find(reg, "s", "r4", 10400, &a, errbuf, sizeof errbuf), MA_ENOTFOUND);
    reg_destroy(reg);

    /* defaults: 0 in the options means REG_IDEM_KEYS and REG_IDEM_WINDOW_MS */
    ro.idem_keys = 0;
    ro.idem_window_ms = 0;
    assert_int_equal(reg_create(&ro, &reg), 0);
    assert_int_equal(reg_idem_find(reg, "s", "del", 10400 + REG_IDEM_WINDOW_MS, &a, errbuf, sizeof errbuf), 0);
    reg_idem_answer_clear(&a);
    assert_int_equal(reg_idem_find(reg, "s", "del", 10401 + REG_IDEM_WINDOW_MS, &a, errbuf, sizeof errbuf),
                     MA_ENOTFOUND);
    reg_destroy(reg);
    ma_store_close(st);
    rm_dir(dir);
}

/* ---- the wire: key syntax, fingerprint, expect_length ------------------------------------------ */

static void test_key_syntax(void **state)
{
    (void)state;
    char why[160], key[300];
    assert_int_equal(srv_idem_key_check("a", why, sizeof why), 0);
    assert_int_equal(srv_idem_key_check("8e03978e-40d5-43e8-bc93-6894a57f9324", why, sizeof why), 0);
    assert_int_equal(srv_idem_key_check("\"quoted key\" with spaces ~!", why, sizeof why), 0);
    memset(key, 'k', 255);
    key[255] = '\0';
    assert_int_equal(srv_idem_key_check(key, why, sizeof why), 0);
    key[255] = 'k';
    key[256] = '\0';
    assert_int_equal(srv_idem_key_check(key, why, sizeof why), -1);
    assert_non_null(strstr(why, "256 bytes"));
    assert_int_equal(srv_idem_key_check("", why, sizeof why), -1);
    assert_non_null(strstr(why, "empty"));
    assert_int_equal(srv_idem_key_check(NULL, why, sizeof why), -1);
    assert_int_equal(srv_idem_key_check("tab\there", why, sizeof why), -1);
    assert_non_null(strstr(why, "0x09"));
    assert_int_equal(srv_idem_key_check("del\x7f", why, sizeof why), -1);
    assert_int_equal(srv_idem_key_check("caf\xc3\xa9", why, sizeof why), -1);
}

static void test_fingerprint(void **state)
{
    (void)state;
    const char *a[] = {"POST /v1/sessions/{id}/events", "s", NULL, NULL, NULL};
    const char *body = "{\"events\":[]}";
    uint64_t f = srv_idem_fingerprint(a, 5, body, strlen(body));
    /* stored with the key: the same value in every process and version */
    assert_int_equal(f, srv_idem_fingerprint(a, 5, body, strlen(body)));
    assert_int_equal(f, UINT64_C(0x35bb1f8128a14f0d));
    /* any part or byte of the body makes another request */
    const char *b[] = {"POST /v1/sessions/{id}/events", "t", NULL, NULL, NULL};
    assert_int_not_equal(f, srv_idem_fingerprint(b, 5, body, strlen(body)));
    const char *c[] = {"POST /v1/sessions/{id}/events", "s", "", NULL, NULL};   /* "" is not absent */
    assert_int_not_equal(f, srv_idem_fingerprint(c, 5, body, strlen(body)));
    assert_int_not_equal(f, srv_idem_fingerprint(a, 5, "{\"events\":[ ]}", strlen(body) + 1));
    assert_int_not_equal(f, srv_idem_fingerprint(a, 5, "{\"events\":[]]", strlen(body)));
    assert_int_not_equal(f, srv_idem_fingerprint(a, 5, body, strlen(body) - 1));
    const char *d1[] = {"ab", "c"}, *d2[] = {"a", "bc"};
    assert_int_not_equal(srv_idem_fingerprint(d1, 2, "", 0), srv_idem_fingerprint(d2, 2, "", 0));
    /* a 1 MiB body: one changed byte anywhere changes it */
    size_t n = 1 << 20;
    char *big = malloc(n);
    memset(big, 'x', n);
    uint64_t g = srv_idem_fingerprint(a, 5, big, n);
    for (size_t at = 0; at < n; at += 99991) {
        big[at] = 'y';
        assert_int_not_equal(g, srv_idem_fingerprint(a, 5, big, n));
        big[at] = 'x';
    }
    free(big);
}

static void test_expect_length_decode(void **state)
{
    (void)state;
    codec_shape sh = {.heads = 1, .dim = 2, .value_dim = 2};
    codec_events ev;
    codec_error ce;
    cJSON *b = cJSON_Parse("{\"events\":[{\"k\":[1,0],\"v\":[0,1]}],\"expect_length\":7}");
    assert_int_equal(codec_events_decode(b, &sh, 100, &ev, &ce), 0);
    assert_true(ev.has_expect_length);
    assert_int_equal(ev.expect_length, 7);
    assert_int_equal(ev.n, 1);
    codec_events_clear(&ev);
    cJSON_Delete(b);
    b = cJSON_Parse("{\"events\":[],\"expect_length\":0}");
    assert_int_equal(codec_events_decode(b, &sh, 100, &ev, &ce), 0);
    assert_true(ev.has_expect_length);
    assert_int_equal(ev.expect_length, 0);
    codec_events_clear(&ev);
    cJSON_Delete(b);
    b = cJSON_Parse("{\"events\":[]}");
    assert_int_equal(codec_events_decode(b, &sh, 100, &ev, &ce), 0);
    assert_false(ev.has_expect_length);
    codec_events_clear(&ev);
    cJSON_Delete(b);
    static const char *const bad[] = {"-1", "1.5", "\"3\"", "true", "null", "1e300"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[96];
        snprintf(text, sizeof text, "{\"events\":[],\"expect_length\":%s}", bad[i]);
        b = cJSON_Parse(text);
        assert_int_equal(codec_events_decode(b, &sh, 100, &ev, &ce), MA_EINVAL);
        assert_string_equal(ce.code, "bad_request");
        assert_non_null(strstr(ce.message, "expect_length"));
        cJSON_Delete(b);
    }
    /* queries take no such field */
    codec_queries qs;
    b = cJSON_Parse("{\"queries\":[],\"expect_length\":0}");
    assert_int_equal(codec_queries_decode(b, &sh, 100, &qs, &ce), MA_EINVAL);
    cJSON_Delete(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_put_get),
        cmocka_unit_test(test_store_window),
        cmocka_unit_test(test_store_commit_atomic),
        cmocka_unit_test(test_store_create_delete),
        cmocka_unit_test(test_registry_window),
        cmocka_unit_test(test_key_syntax),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_expect_length_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
