/*
 * tests/e2e/test_ingest.c — pipelined, group-committed event ingest through the real daemon
 * (docs/STORE.md "Pipelined and grouped commits"): concurrent batches on one session keep their order and
 * land exactly once; a commit failure fails every batch it took down and loses nothing acknowledged;
 * SIGKILL under concurrent ingest keeps every acknowledged batch, and the restarted session answers
 * exactly like a twin fed the same batches in the stored order.
 *
 * How batches are identified after the fact: batch b of client c is B events whose first one writes
 * slot "c<c>b<b>" (every event carries {"c","b","e"} as payload, its vectors are functions of (c, b, e)).
 * The slot list says at which event each batch landed (its `event`), so the stored order is read back
 * through the API. A client sends its batches one after the other on its own connection; an answer's
 * `length` is where its batch ended.
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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tests/e2e/api_util.h"
#include "tests/e2e/harness.h"

enum { CD = 8, B = 8, MAXC = 8, MAXB = 600 };
#define CONFIG "{\"dim\":8,\"slots\":4096,\"chunk\":16}"
#define QUERIES "{\"queries\":[{\"route\":\"full\",\"q\":[1,0,0,0,0,0,0,0]},{\"route\":\"sparse\",\"q\":[0,1,0,0,0,0,0,0]}," \
                "{\"route\":\"state\",\"q\":[0,0,1,0,0,0,0,0]},{\"slot\":\"c1b1\"}]}"

/* ---- batches ------------------------------------------------------------------------------------- */

static double num(int c, int b, int e, int j)
{
    uint64_t x = (uint64_t)(c + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(b + 1) * 0xC2B2AE3D27D4EB4Full ^
                 (uint64_t)(e * 64 + j + 7) * 0x165667B19E3779F9ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (double)(x >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
}

static char *batch_body(int c, int b)
{
    size_t cap = 16384, pos = 0;
    char *s = malloc(cap);
    pos += (size_t)snprintf(s, cap, "{\"events\":[");
    for (int e = 0; e < B; e++) {
        pos += (size_t)snprintf(s + pos, cap - pos, "%s{\"k\":[", e ? "," : "");
        for (int j = 0; j < CD; j++)
            pos += (size_t)snprintf(s + pos, cap - pos, "%s%.6f", j ? "," : "", num(c, b, e, j));
        pos += (size_t)snprintf(s + pos, cap - pos, "],\"v\":[");
        for (int j = 0; j < CD; j++)
            pos += (size_t)snprintf(s + pos, cap - pos, "%s%.6f", j ? "," : "", num(c, b, e, 32 + j));
        pos += (size_t)snprintf(s + pos, cap - pos, "],\"payload\":{\"c\":%d,\"b\":%d,\"e\":%d}", c, b, e);
        if (e == 0)
            pos += (size_t)snprintf(s + pos, cap - pos, ",\"slot\":\"c%db%d\"", c, b);
        pos += (size_t)snprintf(s + pos, cap - pos, "}");
    }
    snprintf(s + pos, cap - pos, "]}");
    return s;
}

/* ---- clients ------------------------------------------------------------------------------------- */

enum { B_UNSENT = 0, B_ACKED, B_FAILED, B_INFLIGHT };

typedef struct {
    mh_daemon *d;
    const char *sess;
    int c;
    int from, to;              /* batches [from, to) this round; stops earlier when the daemon dies */
    int state[MAXB];
    uint64_t end[MAXB];        /* acknowledged (or found) end of the batch: its answer's length */
    int failed;                /* 503 storage_error answers */
    char err[256];             /* anything else */
} client;

static void *client_main(void *arg)
{
    client *cl = arg;
    au_client *h = au_client_new(cl->d);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/events", cl->sess);
    for (int b = cl->from; b < cl->to && !cl->err[0]; b++) {
        char *body = batch_body(cl->c, b);
        cJSON *j = NULL;
        cl->state[b] = B_INFLIGHT;
        long st = au_client_call(h, "POST", path, body, &j);
        free(body);
        if (st == 0) {   /* the daemon is gone: the batch may or may not be stored */
            cJSON_Delete(j);
            break;
        }
        const cJSON *len = cJSON_GetObjectItemCaseSensitive(j, "length");
        const cJSON *app = cJSON_GetObjectItemCaseSensitive(j, "appended");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "code");
        if (st == 200 && cJSON_IsNumber(len) && cJSON_IsNumber(app) && (int)app->valuedouble == B) {
            cl->state[b] = B_ACKED;
            cl->end[b] = (uint64_t)len->valuedouble;
        } else if (st == 503 && cJSON_IsString(code) && strcmp(code->valuestring, "storage_error") == 0) {
            cl->state[b] = B_FAILED;
            cl->failed++;
        } else {
            char *t = j ? cJSON_PrintUnformatted(j) : NULL;
            snprintf(cl->err, sizeof cl->err, "batch %d: status %ld %s", b, st, t ? t : "");
            free(t);
        }
        cJSON_Delete(j);
    }
    au_client_free(h);
    return NULL;
}

static void run_clients(client *cl, int n)
{
    pthread_t t[MAXC];
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_create(&t[i], NULL, client_main, &cl[i]), 0);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
}

/* ---- checks -------------------------------------------------------------------------------------- */

typedef struct {
    int c, b;
} batch_id;

/* Reads session sess back and checks it against the clients writing to it: the batches it holds are
 * contiguous from event 0, each exactly once; every acknowledged batch is there where its answer said;
 * no failed batch is there; a batch in flight (unanswered) may be, and is then resolved (acknowledged
 * from here on). Returns the batches in stored order (*n of them; caller frees). */
static batch_id *check_session(mh_daemon *d, const char *sess, client *cl, int ncl, int *n)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", sess);
    cJSON *j = au_call(d, "GET", path, 200, NULL);
    uint64_t length = (uint64_t)au_num(j, "length");
    cJSON_Delete(j);
    assert_int_equal(length % B, 0);
    int nb = (int)(length / B);
    batch_id *order = calloc((size_t)nb + 1, sizeof *order);
    for (int i = 0; i < nb; i++)
        order[i].c = -1;
    snprintf(path, sizeof path, "/v1/sessions/%s/slots", sess);
    j = au_call(d, "GET", path, 200, NULL);
    int found = 0;
    for (const cJSON *s = au_get(j, "slots")->child; s; s = s->next) {
        int c, b;
        const char *name = au_str(s, "name");
        assert_int_equal(sscanf(name, "c%db%d", &c, &b), 2);
        uint64_t ev = (uint64_t)au_num(s, "event");
        if (ev % B || ev >= length)
            fail_msg("%s: batch %s landed at event %llu (length %llu)", sess, name, (unsigned long long)ev,
                     (unsigned long long)length);
        if (order[ev / B].c >= 0)
            fail_msg("%s: two batches at event %llu", sess, (unsigned long long)ev);
        order[ev / B] = (batch_id){c, b};
        found++;
        client *owner = NULL;
        for (int i = 0; i < ncl; i++)
            if (cl[i].c == c)
                owner = &cl[i];
        if (!owner || b >= MAXB)
            fail_msg("%s: batch %s was never sent here", sess, name);
        if (owner->state[b] == B_INFLIGHT) {
            owner->state[b] = B_ACKED;   /* it was stored whole: count it from now on */
            owner->end[b] = ev + B;
        }
        if (owner->state[b] != B_ACKED)
            fail_msg("%s: batch %s is stored but was %s", sess, name,
                     owner->state[b] == B_FAILED ? "answered 503" : "never sent");
        if (owner->end[b] != ev + B)
            fail_msg("%s: batch %s ends at %llu, its answer said %llu", sess, name, (unsigned long long)(ev + B),
                     (unsigned long long)owner->end[b]);
    }
    cJSON_Delete(j);
    assert_int_equal(found, nb);   /* contiguous: every block of B events is one batch */
    /* every acknowledged batch is there; in-flight ones that are not never will be */
    for (int i = 0; i < ncl; i++)
        for (int b = 0; b < MAXB; b++) {
            if (cl[i].state[b] == B_INFLIGHT)
                cl[i].state[b] = B_FAILED;
            if (cl[i].state[b] != B_ACKED)
                continue;
            uint64_t ev = cl[i].end[b] - B;
            if (ev >= length || order[ev / B].c != cl[i].c || order[ev / B].b != b)
                fail_msg("%s: acknowledged batch c%db%d (end %llu) is missing", sess, cl[i].c, b,
                         (unsigned long long)cl[i].end[b]);
        }
    /* one client's batches are stored in the order it sent them */
    for (int i = 0; i < ncl; i++) {
        uint64_t last = 0;
        for (int b = 0; b < MAXB; b++)
            if (cl[i].state[b] == B_ACKED) {
                assert_true(cl[i].end[b] > last);
                last = cl[i].end[b];
            }
    }
    *n = nb;
    return order;
}

/* The session with its id removed, to compare it with its twin. */
static char *snapshot_anon(mh_daemon *d, const char *id)
{
    char *s = au_snapshot(d, id, QUERIES);
    cJSON *j = cJSON_Parse(s);
    free(s);
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "session"), "id");
    char *t = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return t;
}

/* A twin of sess fed its batches in stored order, one at a time, answers exactly like it. */
static void check_twin(mh_daemon *d, const char *sess, const batch_id *order, int n)
{
    char twin[64], path[128];
    snprintf(twin, sizeof twin, "twin-%s", sess);
    snprintf(path, sizeof path, "/v1/sessions/%s", twin);
    cJSON_Delete(au_call(d, "PUT", path, 201, CONFIG));
    snprintf(path, sizeof path, "/v1/sessions/%s/events", twin);
    for (int i = 0; i < n; i++) {
        char *body = batch_body(order[i].c, order[i].b);
        cJSON *j = au_call(d, "POST", path, 200, "%s", body);
        assert_int_equal((uint64_t)au_num(j, "length"), (uint64_t)(i + 1) * B);
        cJSON_Delete(j);
        free(body);
    }
    char *a = snapshot_anon(d, sess), *b = snapshot_anon(d, twin);
    assert_string_equal(a, b);
    free(a);
    free(b);
    snprintf(path, sizeof path, "/v1/sessions/%s", twin);
    au_call(d, "DELETE", path, 204, NULL);
}

/* ---- a reader alongside the writers ---------------------------------------------------------------- */

typedef struct {
    mh_daemon *d;
    const char *sess;
    atomic_int *stop;
    int reads;
    char err[256];
} reader;

/* GET the session over and over: its length only grows, by whole batches. */
static void *reader_main(void *arg)
{
    reader *r = arg;
    au_client *h = au_client_new(r->d);
    char path[128];
    uint64_t last = 0;
    snprintf(path, sizeof path, "/v1/sessions/%s", r->sess);
    while (!atomic_load(r->stop) && !r->err[0]) {
        cJSON *j = NULL;
        long st = au_client_call(h, "GET", path, NULL, &j);
        const cJSON *len = cJSON_GetObjectItemCaseSensitive(j, "length");
        if (st != 200 || !cJSON_IsNumber(len))
            snprintf(r->err, sizeof r->err, "GET %s: %ld", path, st);
        else if ((uint64_t)len->valuedouble < last || (uint64_t)len->valuedouble % B)
            snprintf(r->err, sizeof r->err, "length %.0f after %llu", len->valuedouble, (unsigned long long)last);
        else
            last = (uint64_t)len->valuedouble;
        r->reads++;
        cJSON_Delete(j);
    }
    au_client_free(h);
    return NULL;
}

/* ---- the tests ----------------------------------------------------------------------------------- */

static double metric(mh_daemon *d, const char *name)
{
    mh_resp r;
    assert_int_equal(mh_request(d, "GET", "/metrics", NULL, NULL, &r), 0);
    const char *p = r.body;
    double v = -1;
    size_t n = strlen(name);
    while ((p = strstr(p, name))) {
        if ((p == r.body || p[-1] == '\n') && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
        p += n;
    }
    mh_resp_free(&r);
    return v;
}

/* Six clients, four on one session and two on another, twelve batches each, with a reader: every
 * batch lands once, where its answer said, in each client's order; the sessions equal their twins. */
static void test_concurrent_batches_keep_order(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/one", 201, CONFIG));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/two", 201, CONFIG));
    static client cl[6];
    memset(cl, 0, sizeof cl);
    for (int i = 0; i < 6; i++)
        cl[i] = (client){.d = &d, .sess = i < 4 ? "one" : "two", .c = i, .from = 0, .to = 12};
    atomic_int stop = 0;
    reader r = {.d = &d, .sess = "one", .stop = &stop};
    pthread_t rt;
    assert_int_equal(pthread_create(&rt, NULL, reader_main, &r), 0);
    run_clients(cl, 6);
    atomic_store(&stop, 1);
    pthread_join(rt, NULL);
    for (int i = 0; i < 6; i++) {
        if (cl[i].err[0])
            fail_msg("client %d: %s", i, cl[i].err);
        for (int b = 0; b < 12; b++)
            assert_int_equal(cl[i].state[b], B_ACKED);
    }
    if (r.err[0])
        fail_msg("reader: %s", r.err);
    int n1, n2;
    batch_id *o1 = check_session(&d, "one", cl, 4, &n1);
    batch_id *o2 = check_session(&d, "two", cl + 4, 2, &n2);
    assert_int_equal(n1, 48);
    assert_int_equal(n2, 24);
    assert_true(metric(&d, "memattn_events_ingested_total") == 72 * B);
    /* every batch went through the commit queue; several shared a transaction or not, as they came */
    double groups = metric(&d, "memattn_store_group_commits_total");
    assert_true(metric(&d, "memattn_store_group_commit_batches_total") == 72);
    assert_true(groups >= 1 && groups <= 72);
    print_message("72 batches in %.0f group transactions\n", groups);
    check_twin(&d, "one", o1, n1);
    check_twin(&d, "two", o2, n2);
    free(o1);
    free(o2);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

/* body with "<field>":value added before "events" */
static char *with_field(const char *body, const char *field, uint64_t value)
{
    size_t n = strlen(body) + 96;
    char *s = malloc(n);
    snprintf(s, n, "{\"%s\":%llu,%s", field, (unsigned long long)value, body + 1);
    return s;
}

static uint64_t session_length(mh_daemon *d, const char *sess)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", sess);
    cJSON *j = au_call(d, "GET", path, 200, NULL);
    uint64_t length = (uint64_t)au_num(j, "length");
    cJSON_Delete(j);
    return length;
}

/* Batches with an Idempotency-Key are exclusive jobs among pipelined ones (docs/STORE.md, "Batches that
 * are not pipelined"): sent while three clients pipeline keyless batches on the same session, each lands
 * once where its answer said, is committed directly with its key (not through the commit queue), and
 * its retry replays that answer. expect_length, spelled plainly or with a JSON escape (the pipelined
 * path's own check), is checked against the durable length. */
static void test_keyed_batches_among_pipelined(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/m", 201, CONFIG));
    static client cl[4];
    memset(cl, 0, sizeof cl);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        cl[i] = (client){.d = &d, .sess = "m", .c = i, .from = 0, .to = 12};
        assert_int_equal(pthread_create(&t[i], NULL, client_main, &cl[i]), 0);
    }
    cl[3] = (client){.d = &d, .sess = "m", .c = 3};
    enum { NK = 8 };
    for (int b = 0; b < NK; b++) {
        char hdr[64], *body = batch_body(3, b);
        snprintf(hdr, sizeof hdr, "Idempotency-Key: m-key-%d", b);
        const char *h[] = {hdr, NULL};
        cJSON *j = au_callh(&d, "POST", "/v1/sessions/m/events", h, 200, "%s", body);
        assert_int_equal((int)au_num(j, "appended"), B);
        cl[3].state[b] = B_ACKED;
        cl[3].end[b] = (uint64_t)au_num(j, "length");
        cJSON_Delete(j);
        free(body);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 3; i++) {
        if (cl[i].err[0])
            fail_msg("client %d: %s", i, cl[i].err);
        for (int b = 0; b < 12; b++)
            assert_int_equal(cl[i].state[b], B_ACKED);
    }
    int n;
    batch_id *o = check_session(&d, "m", cl, 4, &n);
    assert_int_equal(n, 36 + NK);
    free(o);
    assert_true(metric(&d, "memattn_events_ingested_total") == (36 + NK) * B);
    assert_true(metric(&d, "memattn_store_group_commit_batches_total") == 36);
    /* the retries replay the committed answers */
    for (int b = 0; b < NK; b++) {
        char hdr[64], v[16], *body = batch_body(3, b);
        snprintf(hdr, sizeof hdr, "Idempotency-Key: m-key-%d", b);
        const char *h[] = {hdr, NULL};
        mh_resp r;
        assert_int_equal(mh_request(&d, "POST", "/v1/sessions/m/events", body, h, &r), 0);
        assert_int_equal(r.status, 200);
        assert_non_null(mh_resp_header(&r, "Idempotent-Replayed", v, sizeof v));
        cJSON *j = mh_resp_json(&r);
        assert_true(au_num(j, "length") == (double)cl[3].end[b]);
        cJSON_Delete(j);
        mh_resp_free(&r);
        free(body);
    }
    assert_int_equal(session_length(&d, "m"), (uint64_t)(36 + NK) * B);

    /* expect_length: plainly (an exclusive job) and escaped (pipelined, settled first) */
    uint64_t L = session_length(&d, "m");
    const char *fields[] = {"expect_length", "expect\\u005flength"};
    for (int f = 0; f < 2; f++) {
        char *body = batch_body(4, f), *bad = with_field(body, fields[f], L + 1), *good = with_field(body, fields[f], L);
        mh_resp r;
        assert_int_equal(mh_request(&d, "POST", "/v1/sessions/m/events", bad, NULL, &r), 0);
        assert_int_equal(r.status, 409);
        assert_string_equal(mh_error_code(&r), "length_mismatch");
        mh_resp_free(&r);
        cJSON *j = au_call(&d, "POST", "/v1/sessions/m/events", 200, "%s", good);
        L += B;
        assert_true(au_num(j, "length") == (double)L);
        cJSON_Delete(j);
        free(body);
        free(bad);
        free(good);
    }
    assert_int_equal(mh_stop(&d, 30000), 0);
}

static char *data_dir(void)
{
    char *dir = mh_data_dir("ingest");
    assert_non_null(dir);
    return dir;
}

static void rm_data(char *dir)
{
    mh_rm_data(dir);
}

static void start_on(mh_daemon *d, const char *bin, const char *dir, const char *const *env)
{
    assert_int_equal(mh_start_on(d, bin, dir, NULL, env), 0);
}

static void kill9(mh_daemon *d)
{
    assert_int_equal(mh_kill9(d), 128 + SIGKILL);
}

/* fsync fails for a while (the test daemon's fault VFS) under concurrent ingest: the batches of the
 * failed transactions and those applied after them are answered 503 and are not stored; every batch
 * answered 200 is, where its answer said, before and after a SIGKILL; ingest resumes after the fault. */
static void test_commit_failure_fails_the_group(void **state)
{
    (void)state;
    char *dir = data_dir();
    mh_daemon d;
    /* The first 24 fsyncs (creating the store and the sessions, the first groups) succeed, then 4 fail. */
    const char *env[] = {"MEMATTN_STORE_FAULT=sync:24:4", NULL};
    start_on(&d, mh_test_bin(), dir, env);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/f1", 201, CONFIG));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/f2", 201, CONFIG));
    static client cl[6];
    memset(cl, 0, sizeof cl);
    for (int i = 0; i < 6; i++)
        cl[i] = (client){.d = &d, .sess = i < 4 ? "f1" : "f2", .c = i, .from = 0, .to = 20};
    run_clients(cl, 6);
    int failed = 0, acked_after = 0;
    for (int i = 0; i < 6; i++) {
        if (cl[i].err[0])
            fail_msg("client %d: %s", i, cl[i].err);
        failed += cl[i].failed;
        bool seen_fail = false;
        for (int b = 0; b < 20; b++) {
            seen_fail |= cl[i].state[b] == B_FAILED;
            acked_after += seen_fail && cl[i].state[b] == B_ACKED;
        }
    }
    double failed_tx = metric(&d, "memattn_store_commit_failures_total");
    print_message("commit failures: %d batches answered 503 by %.0f failed transactions; %d acknowledged after "
                  "a failure\n", failed, failed_tx, acked_after);
    assert_true(failed > 0);
    assert_true(failed_tx >= 1 && failed_tx <= failed);
    assert_true(acked_after > 0);                 /* the sessions were reloaded and went on */
    assert_true(mh_log_contains(&d, "commit of session"));
    int n1, n2;
    free(check_session(&d, "f1", cl, 4, &n1));
    free(check_session(&d, "f2", cl + 4, 2, &n2));
    kill9(&d);
    start_on(&d, NULL, dir, NULL);
    batch_id *o1 = check_session(&d, "f1", cl, 4, &n1);
    batch_id *o2 = check_session(&d, "f2", cl + 4, 2, &n2);
    check_twin(&d, "f1", o1, n1);
    check_twin(&d, "f2", o2, n2);
    free(o1);
    free(o2);
    assert_int_equal(mh_stop(&d, 30000), 0);
    rm_data(dir);
}

/* SIGKILL at random moments while four clients write batches into one session: after each restart every
 * acknowledged batch is there where its answer said, plus at most the clients' batches in flight, whole
 * and contiguous; at the end the session answers like a twin fed the stored batches in order. */
static void test_sigkill_under_concurrent_ingest(void **state)
{
    (void)state;
    enum { ROUNDS = 6, NCL = 4, PER_ROUND = 60 };
    char *dir = data_dir();
    mh_daemon d;
    start_on(&d, NULL, dir, NULL);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/k", 201, CONFIG));
    static client cl[NCL];
    memset(cl, 0, sizeof cl);
    unsigned seed = 99;
    int acked = 0;
    for (int round = 0; round < ROUNDS; round++) {
        pthread_t t[NCL];
        for (int i = 0; i < NCL; i++) {
            cl[i].d = &d;
            cl[i].sess = "k";
            cl[i].c = i;
            cl[i].from = round * PER_ROUND;
            cl[i].to = (round + 1) * PER_ROUND;
            assert_int_equal(pthread_create(&t[i], NULL, client_main, &cl[i]), 0);
        }
        mh_sleep_ms(30 + rand_r(&seed) % 300);
        kill9(&d);
        for (int i = 0; i < NCL; i++) {
            pthread_join(t[i], NULL);
            if (cl[i].err[0])
                fail_msg("client %d: %s", i, cl[i].err);
        }
        start_on(&d, NULL, dir, NULL);
        int n;
        free(check_session(&d, "k", cl, NCL, &n));
        acked = n;
    }
    int n;
    batch_id *order = check_session(&d, "k", cl, NCL, &n);
    print_message("sigkill: %d rounds, %d batches stored\n", ROUNDS, n);
    assert_int_equal(n, acked);
    assert_true(n > 0);
    check_twin(&d, "k", order, n);
    free(order);
    assert_int_equal(mh_stop(&d, 30000), 0);
    rm_data(dir);
}

/* Background index builds race pipelined batches (docs/ARCHIVE.md, "Builds in the background"): four
 * clients pipeline batches on one session across the build points at 1,024 and 2,048 events, so the
 * maintenance thread's view and swap (the session's gate held exclusively, waiting for the session's
 * queued changes) interleave with held batches and the commit thread. Every batch lands once, where its
 * answer said; the session was rebuilt at least twice and answers like a twin fed the same batches in the
 * stored order (both taken after their builds). */
static void test_builds_race_pipelined_batches(void **state)
{
    (void)state;
    enum { NB = 80 };   /* 4 x 80 batches of 8: 2,560 events */
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/ix", 201, CONFIG));
    static client cl[4];
    memset(cl, 0, sizeof cl);
    for (int i = 0; i < 4; i++)
        cl[i] = (client){.d = &d, .sess = "ix", .c = i, .from = 0, .to = NB};
    atomic_int stop = 0;
    reader r = {.d = &d, .sess = "ix", .stop = &stop};
    pthread_t rt;
    assert_int_equal(pthread_create(&rt, NULL, reader_main, &r), 0);
    run_clients(cl, 4);
    atomic_store(&stop, 1);
    pthread_join(rt, NULL);
    for (int i = 0; i < 4; i++) {
        if (cl[i].err[0])
            fail_msg("client %d: %s", i, cl[i].err);
        for (int b = 0; b < NB; b++)
            assert_int_equal(cl[i].state[b], B_ACKED);
    }
    if (r.err[0])
        fail_msg("reader: %s", r.err);
    int n;
    batch_id *o = check_session(&d, "ix", cl, 4, &n);
    assert_int_equal(n, 4 * NB);
    au_wait_index(&d, "ix");
    cJSON *j = au_call(&d, "GET", "/v1/sessions/ix", 200, NULL);
    double build = au_num(au_get(j, "index"), "build");
    cJSON_Delete(j);
    assert_true(build >= 2);
    check_twin(&d, "ix", o, n);
    free(o);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

/* ---- binary batches (docs/API.md, "Binary event batches") ---------------------------------------- */

enum { BIN_BATCHES = 12 };

/* Batch b of the binary test: B events, event e's key and value the floats of num(9, b, e, .). */
static float bin_float(int b, int e, int j)
{
    return (float)num(9, b, e, j);
}

/* The binary body of batch b for a session of 1 head, dim = value_dim = CD ("MAEV", n, heads, dim,
 * value_dim, keys, values; little-endian); *len gets its length. */
static char *bin_body(int b, size_t *len)
{
    size_t n = 20 + sizeof(float) * B * 2 * CD;
    unsigned char *s = malloc(n);
    uint32_t hdr[4] = {B, 1, CD, CD};
    memcpy(s, "MAEV", 4);
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++)
            s[4 + 4 * i + k] = (unsigned char)(hdr[i] >> (8 * k));
    for (int e = 0; e < B; e++)
        for (int j = 0; j < 2 * CD; j++) {
            float f = bin_float(b, e, j);
            uint32_t w;
            memcpy(&w, &f, 4);
            size_t at = 20 + 4 * (j < CD ? (size_t)e * CD + (size_t)j : (size_t)B * CD + (size_t)e * CD + (size_t)(j - CD));
            for (int k = 0; k < 4; k++)
                s[at + (size_t)k] = (unsigned char)(w >> (8 * k));
        }
    *len = n;
    return (char *)s;
}

/* The same batch as JSON: number arrays (%.9g round-trips a float32) or base64 (the decoder's fast path). */
static char *bin_as_json(int b, bool b64)
{
    size_t cap = 16384, pos = 0;
    char *s = malloc(cap);
    pos += (size_t)snprintf(s, cap, "{\"events\":[");
    for (int e = 0; e < B; e++) {
        float k[CD], v[CD];
        for (int j = 0; j < CD; j++) {
            k[j] = bin_float(b, e, j);
            v[j] = bin_float(b, e, CD + j);
        }
        if (b64) {
            char kb[64], vb[64];
            static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            const unsigned char *src[2] = {(const unsigned char *)k, (const unsigned char *)v};
            char *dst[2] = {kb, vb};
            for (int x = 0; x < 2; x++) {
                size_t o = 0, nb = sizeof k;
                for (size_t i = 0; i < nb; i += 3) {
                    uint32_t w = (uint32_t)src[x][i] << 16 | (i + 1 < nb ? (uint32_t)src[x][i + 1] << 8 : 0) |
                                 (i + 2 < nb ? src[x][i + 2] : 0);
                    dst[x][o++] = t[w >> 18 & 63];
                    dst[x][o++] = t[w >> 12 & 63];
                    dst[x][o++] = i + 1 < nb ? t[w >> 6 & 63] : '=';
                    dst[x][o++] = i + 2 < nb ? t[w & 63] : '=';
                }
                dst[x][o] = 0;
            }
            pos += (size_t)snprintf(s + pos, cap - pos, "%s{\"v_b64\":\"%s\",\"k_b64\":\"%s\"}", e ? "," : "", vb, kb);
            continue;
        }
        pos += (size_t)snprintf(s + pos, cap - pos, "%s{\"k\":[", e ? "," : "");
        for (int j = 0; j < CD; j++)
            pos += (size_t)snprintf(s + pos, cap - pos, "%s%.9g", j ? "," : "", (double)k[j]);
        pos += (size_t)snprintf(s + pos, cap - pos, "],\"v\":[");
        for (int j = 0; j < CD; j++)
            pos += (size_t)snprintf(s + pos, cap - pos, "%s%.9g", j ? "," : "", (double)v[j]);
        pos += (size_t)snprintf(s + pos, cap - pos, "]}");
    }
    snprintf(s + pos, cap - pos, "]}");
    return s;
}

/* Sends one binary POST (extra: more header lines, "" for none) on fd. */
static void send_binary(int fd, const char *path, const char *body, size_t len, const char *extra)
{
    char head[512];
    int n = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: %zu\r\n%s\r\n", path, len, extra);
    assert_int_equal(mh_send(fd, head, (size_t)n), 0);
    assert_int_equal(mh_send(fd, body, len), 0);
}

/* One binary POST on a fresh connection: its status, *msg the error message (static) or "". */
static int binary_call(mh_daemon *d, const char *path, const char *body, size_t len, const char *extra,
                       char *code, size_t code_len, char *msg, size_t msg_len)
{
    int fd = mh_connect(d);
    assert_true(fd >= 0);
    send_binary(fd, path, body, len, extra);
    mh_reader rb;
    mh_resp r = {0};
    mh_reader_init(&rb, fd);
    int st = mh_read_response(&rb, &r, 30000);
    cJSON *j = mh_resp_json(&r);
    const cJSON *c = j ? au_get(j, "error.code") : NULL, *m = j ? au_get(j, "error.message") : NULL;
    snprintf(code, code_len, "%s", cJSON_IsString(c) ? c->valuestring : "");
    snprintf(msg, msg_len, "%s", cJSON_IsString(m) ? m->valuestring : "");
    if (extra[0] && st == 200)
        snprintf(msg, msg_len, "%s", mh_resp_header(&r, "Idempotent-Replayed", (char[16]){0}, 16) ? "replayed" : "");
    cJSON_Delete(j);
    mh_resp_free(&r);
    close(fd);
    return st;
}

/* Binary batches pipelined on one connection land in order and leave the session exactly as the same
 * floats sent as JSON arrays and as base64 do; each malformed binary batch is refused with its own
 * error and changes nothing; an Idempotency-Key replays; another route refuses the Content-Type. */
static void test_binary_batches(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    const char *names[3] = {"bin", "arr", "b64"};
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "/v1/sessions/%s", names[i]);
        cJSON_Delete(au_call(&d, "PUT", path, 201, CONFIG));
    }
    /* every binary batch sent before the first answer is read: pipelined through decode, apply, commit */
    int fd = mh_connect(&d);
    assert_true(fd >= 0);
    for (int b = 0; b < BIN_BATCHES; b++) {
        size_t len;
        char *body = bin_body(b, &len);
        send_binary(fd, "/v1/sessions/bin/events", body, len, "");
        free(body);
    }
    mh_reader rb;
    mh_reader_init(&rb, fd);
    for (int b = 0; b < BIN_BATCHES; b++) {
        mh_resp r = {0};
        assert_int_equal(mh_read_response(&rb, &r, 30000), 200);
        cJSON *j = mh_resp_json(&r);
        assert_int_equal((uint64_t)au_num(j, "length"), (uint64_t)(b + 1) * B);
        assert_int_equal((int)au_num(j, "appended"), B);
        cJSON_Delete(j);
        mh_resp_free(&r);
    }
    close(fd);
    for (int b = 0; b < BIN_BATCHES; b++)
        for (int x = 0; x < 2; x++) {
            char *body = bin_as_json(b, x == 1), path[64];
            snprintf(path, sizeof path, "/v1/sessions/%s/events", names[1 + x]);
            cJSON_Delete(au_call(&d, "POST", path, 200, "%s", body));
            free(body);
        }
    char *snap[3];
    for (int i = 0; i < 3; i++) {
        snap[i] = snapshot_anon(&d, names[i]);
    }
    assert_string_equal(snap[0], snap[1]);
    assert_string_equal(snap[0], snap[2]);

    /* malformed batches: each its own error, nothing applied */
    size_t len;
    char *good = bin_body(0, &len), *bad = malloc(len + 4), code[64], msg[512];
    struct {
        const char *what;
        size_t len;
        void (*edit)(char *);
        int status;
        const char *code, *msg;
    } cases[] = {
        {"short", 12, NULL, 400, "bad_request", "the body has 12 bytes, expected at least the 20-byte header"},
        {"magic", 0, NULL, 400, "bad_request", "bytes 0-3 are not the magic \"MAEV\""},
        {"shape", 0, NULL, 400, "dim_mismatch", "the header says heads 1, dim 9, value_dim 8; the session has heads 1, dim 8, value_dim 8"},
        {"length", 0, NULL, 400, "bad_request", "expected 532 for n = 8"},
        {"nan", 0, NULL, 400, "non_finite", "v of event 2, float 3 is not finite (nan)"},
        {"count", 0, NULL, 400, "bad_request", "n is 70000 events, at most 65536 per request"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c].len ? cases[c].len : len;
        memcpy(bad, good, len);
        if (c == 1)
            bad[0] = 'X';
        if (c == 2)
            bad[12] = 9;
        if (c == 3)
            n = len - 4;
        if (c == 4) {
            float f = __builtin_nanf("");
            memcpy(bad + 20 + 4 * (B * CD + 2 * CD + 3), &f, 4);
        }
        if (c == 5) {
            uint32_t many = 70000;
            for (int k = 0; k < 4; k++)
                bad[4 + k] = (char)(many >> (8 * k));
        }
        int st = binary_call(&d, "/v1/sessions/bin/events", bad, n, "", code, sizeof code, msg, sizeof msg);
        if (st != cases[c].status || strcmp(code, cases[c].code) != 0 || !strstr(msg, cases[c].msg))
            fail_msg("%s: %d %s %s", cases[c].what, st, code, msg);
    }
    assert_int_equal(session_length(&d, "bin"), (uint64_t)BIN_BATCHES * B);
    /* another route: 415 before the body is read */
    assert_int_equal(binary_call(&d, "/v1/sessions/bin/query", good, len, "", code, sizeof code, msg, sizeof msg), 415);
    assert_string_equal(code, "unsupported_media_type");
    /* a keyed binary batch: applied once, replayed once */
    assert_int_equal(binary_call(&d, "/v1/sessions/bin/events", good, len, "Idempotency-Key: bin-1\r\n", code,
                                 sizeof code, msg, sizeof msg), 200);
    assert_string_equal(msg, "");
    assert_int_equal(binary_call(&d, "/v1/sessions/bin/events", good, len, "Idempotency-Key: bin-1\r\n", code,
                                 sizeof code, msg, sizeof msg), 200);
    assert_string_equal(msg, "replayed");
    assert_int_equal(session_length(&d, "bin"), (uint64_t)(BIN_BATCHES + 1) * B);
    for (int i = 0; i < 3; i++)
        free(snap[i]);
    free(good);
    free(bad);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_concurrent_batches_keep_order, mh_teardown),
        cmocka_unit_test_teardown(test_commit_failure_fails_the_group, mh_teardown),
        cmocka_unit_test_teardown(test_sigkill_under_concurrent_ingest, mh_teardown),
        cmocka_unit_test_teardown(test_keyed_batches_among_pipelined, mh_teardown),
        cmocka_unit_test_teardown(test_builds_race_pipelined_batches, mh_teardown),
        cmocka_unit_test_teardown(test_binary_batches, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
