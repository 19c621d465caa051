/*
 * tests/e2e/test_client_c.c — the C client (clients/c/memattn_client.{c,h}) end to end against the
 * real daemon: sessions, batched base64 event appends under a body limit, queries (per-query errors
 * included), the slot verbs with If-Match, auth, and retries with one Idempotency-Key (against a
 * scripted local server that answers 503 twice). Binary event batches (mac_append_f32): the same
 * batch sent binary and as JSON gives sessions that answer with the same bits; a wrong shape, a NaN
 * and bad arguments are refused with nothing applied; the 503 retries resend the same body with the
 * same key; a daemon whose GET /v1/info lacks batch.events_binary gets JSON; and a binary batch whose
 * answer is lost (a proxy drops it) is replayed, not applied twice.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "clients/c/memattn_client.h"
#include "tests/e2e/harness.h"

static mh_daemon dmn;

static int setup(void **state)
{
    (void)state;
    return mh_start(&dmn, NULL, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return mh_stop(&dmn, 30000) == 0 ? 0 : -1;
}

static mac_client *open_client(const char *base, size_t max_body, const char *token)
{
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    o.max_body = max_body;
    o.token = token;
    mac_client *c = NULL;
    assert_int_equal(mac_open(&o, &c), MAC_OK);
    return c;
}

/* Asserts a MAC_EHTTP failure with this status and code. */
#define assert_http_error(c, rc, st, cd)                                        \
    do {                                                                        \
        assert_int_equal((rc), MAC_EHTTP);                                      \
        assert_int_equal(mac_last_error(c)->status, (st));                      \
        assert_string_equal(mac_last_error(c)->code, (cd));                     \
    } while (0)

static void test_b64(void **state)
{
    (void)state;
    const float x[] = { 1.0f, -2.5f, 0.0f, 3.25f };
    char *b = mac_b64_f32(x, 4);
    assert_string_equal(b, "AACAPwAAIMAAAAAAAABQQA==");
    float *y;
    size_t n;
    assert_int_equal(mac_unb64_f32(b, &y, &n), MAC_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(x, y, sizeof x);
    free(b);
    free(y);
    const float z[] = { 0, 1, 1, 0 };   /* API.md's example */
    b = mac_b64_f32(z, 4);
    assert_string_equal(b, "AAAAAAAAgD8AAIA/AAAAAA==");
    free(b);
    assert_int_equal(mac_unb64_f32("abc", &y, &n), MAC_EINVAL);
}

static int count_ids(const mac_session *s, void *ud)
{
    int *n = ud;
    if (strncmp(s->id, "c-", 2) == 0)
        (*n)++;
    return 0;
}

static void test_sessions(void **state)
{
    (void)state;
    mac_client *c = open_client(dmn.base, 0, NULL);
    mac_config cfg = { .heads = 2, .dim = 4, .slots = 4 };
    mac_session s;
    assert_int_equal(mac_session_create(c, "c-a", &cfg, &s), MAC_OK);
    assert_string_equal(s.id, "c-a");
    assert_int_equal(s.heads, 2);
    assert_int_equal(s.value_dim, 4);
    assert_int_equal(mac_session_create(c, "c-a", &cfg, NULL), MAC_OK);   /* idempotent */
    cfg.dim = 8;
    assert_http_error(c, mac_session_create(c, "c-a", &cfg, NULL), 409, "exists");
    mac_config bad = { .json = "{\"heads\":0}" };
    assert_http_error(c, mac_session_create(c, "c-b", &bad, NULL), 400, "bad_config");
    mac_config notjson = { .json = "{heads" };
    assert_int_equal(mac_session_create(c, "c-b", &notjson, NULL), MAC_EINVAL);
    assert_int_equal(mac_session_create(c, "c-c", NULL, NULL), MAC_OK);
    mac_session anon;
    assert_int_equal(mac_session_create(c, NULL, NULL, &anon), MAC_OK);
    assert_int_equal(strlen(anon.id), 32);
    int n = 0;
    assert_int_equal(mac_session_list(c, count_ids, &n), MAC_OK);
    assert_int_equal(n, 2);
    assert_int_equal(mac_session_get(c, "c-a", &s), MAC_OK);
    assert_int_equal(s.length, 0);
    assert_int_equal(s.nheads, 2);
    assert_true(s.bytes > 0);
    assert_int_equal(mac_session_delete(c, anon.id), MAC_OK);
    assert_http_error(c, mac_session_get(c, anon.id, &s), 404, "no_session");
    assert_int_equal(mac_session_get(c, "bad name", &s), MAC_EHTTP);   /* percent-encoded, refused by the daemon */
    assert_string_equal(mac_last_error(c)->code, "bad_name");
    mac_close(c);
}

/* Unit-norm keys per head: under full attention each key's best match is itself. */
static void key_of(int i, float *k, int heads, int dim)
{
    for (int h = 0; h < heads; h++) {
        double s = 0;
        for (int j = 0; j < dim; j++) {
            k[h * dim + j] = (float)sin(i * 0.37 + (h * dim + j) * (1 + i % 5));
            s += (double)k[h * dim + j] * k[h * dim + j];
        }
        for (int j = 0; j < dim; j++)
            k[h * dim + j] = (float)(k[h * dim + j] / sqrt(s));
    }
}

static void test_append_batches_and_query(void **state)
{
    (void)state;
    mac_client *c = open_client(dmn.base, 2048, NULL);   /* a 2 KiB client limit: many batches */
    mac_config cfg = { .heads = 2, .dim = 4, .value_dim = 2, .slots = 8, .chunk = 16 };
    assert_int_equal(mac_session_create(c, "c-ev", &cfg, NULL), MAC_OK);
    enum { N = 300 };
    static float keys[N][8], vals[N][4];
    static char payloads[N][32];
    mac_event ev[N];
    memset(ev, 0, sizeof ev);
    for (int i = 0; i < N; i++) {
        key_of(i, keys[i], 2, 4);
        vals[i][0] = (float)i / N;
        vals[i][1] = -1;
        vals[i][2] = 0.5f;
        vals[i][3] = (float)(i % 7);
        snprintf(payloads[i], sizeof payloads[i], "{\"i\":%d}", i);
        ev[i] = (mac_event){ .k = keys[i], .nk = 8, .v = vals[i], .nv = 4, .payload_json = payloads[i] };
    }
    ev[123].slot = "one_two_three";
    mac_append_result r;
    assert_int_equal(mac_append(c, "c-ev", ev, N, &r), MAC_OK);
    assert_int_equal(r.appended, N);
    assert_int_equal(r.length, N);
    assert_int_equal(r.writes, 1);
    assert_true(r.batches > 10);
    assert_true(mac_requests_sent(c) >= r.batches);

    mac_query q[3] = {
        { .q = keys[200], .nq = 8, .route = "full" },
        { .slot = "one_two_three" },
        { .text = "nothing like it", .route = "slot" },
    };
    mac_result res[3];
    int rc = mac_query_run(c, "c-ev", q, 2, res);
    assert_int_equal(rc, MAC_OK);
    assert_true(res[0].ok);
    assert_string_equal(res[0].route, "full");
    assert_int_equal(res[0].event, 200);
    assert_string_equal(res[0].payload_json, "{\"i\":200}");
    assert_int_equal(res[0].nv, 4);
    assert_true(res[0].nchunks >= 1);
    assert_string_equal(res[1].route, "slot");
    assert_string_equal(res[1].slot, "one_two_three");
    assert_int_equal(res[1].version, 1);
    assert_string_equal(res[1].payload_json, "{\"i\":123}");
    mac_results_free(res, 2);
    /* A forced slot route without a match: a per-query error on a daemon that has them, else the
     * whole request fails with 404 no_slot. */
    rc = mac_query_run(c, "c-ev", q, 3, res);
    if (rc == MAC_OK) {
        assert_true(res[0].ok);
        assert_false(res[2].ok);
        assert_string_equal(res[2].error.code, "no_slot");
    } else {
        assert_http_error(c, rc, 404, "no_slot");
    }
    mac_results_free(res, 3);

    /* An event alone over the limit: refused before sending. */
    static char big[3000];
    memset(big, 'x', sizeof big - 1);
    mac_event one = { .k = keys[0], .nk = 8, .v = vals[0], .nv = 4, .payload_text = big };
    assert_int_equal(mac_append(c, "c-ev", &one, 1, &r), MAC_ETOOBIG);
    assert_int_equal(r.appended, 0);
    /* A bad event in a later batch: earlier batches stay applied, and the result says how many. */
    mac_event bad[41];
    memcpy(bad, ev, 40 * sizeof *ev);
    bad[40] = (mac_event){ .k = keys[0], .nk = 2, .v = vals[0], .nv = 4 };
    assert_http_error(c, mac_append(c, "c-ev", bad, 41, &r), 400, "dim_mismatch");
    assert_true(r.appended > 0);
    mac_session s;
    assert_int_equal(mac_session_get(c, "c-ev", &s), MAC_OK);
    assert_int_equal(s.length, N + r.appended);
    mac_close(c);
}

static void test_body_limit_from_daemon(void **state)
{
    (void)state;
    mh_daemon d;
    const char *args[] = { "--max-body", "65536", NULL };
    assert_int_equal(mh_start(&d, args, NULL), 0);
    mac_client *c = open_client(d.base, 0, NULL);
    size_t lim = mac_max_body(c);
    if (lim != 65536) {      /* a daemon without GET /v1/info: the 1 MiB default, so say it */
        assert_int_equal(lim, 1 << 20);
        mac_close(c);
        c = open_client(d.base, 65536, NULL);
    }
    mac_config cfg = { .dim = 64 };
    assert_int_equal(mac_session_create(c, "big", &cfg, NULL), MAC_OK);
    enum { N = 2000 };
    static float k[N][64];
    static mac_event ev[N];
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 64; j++)
            k[i][j] = (float)((i * 31 + j) % 17);
        ev[i] = (mac_event){ .k = k[i], .nk = 64, .payload_text = "p" };
    }
    mac_append_result r;
    assert_int_equal(mac_append(c, "big", ev, N, &r), MAC_OK);
    assert_int_equal(r.appended, N);
    assert_true(r.batches >= 2);
    mac_close(c);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

static void test_slot_verbs(void **state)
{
    (void)state;
    mac_client *c = open_client(dmn.base, 0, NULL);
    mac_config cfg = { .dim = 8, .slots = 2 };
    assert_int_equal(mac_session_create(c, "c-slots", &cfg, NULL), MAC_OK);
    uint64_t v = 0;
    mac_slot_value w = { .payload_text = "Paris" };
    assert_int_equal(mac_slot_create(c, "c-slots", "capital", &w, &v), MAC_OK);
    assert_int_equal(v, 1);
    assert_http_error(c, mac_slot_create(c, "c-slots", "capital", &w, &v), 409, "exists");
    mac_slot s;
    assert_int_equal(mac_slot_get(c, "c-slots", "capital", 0, &s), MAC_OK);
    assert_string_equal(s.etag, "\"1\"");
    assert_string_equal(s.payload_json, "\"Paris\"");
    assert_int_equal(s.event, -1);
    assert_int_equal(s.nv, 8);
    mac_slot_free(&s);
    w.payload_text = "Lyon";
    assert_http_error(c, mac_slot_put(c, "c-slots", "capital", &w, 7, &v), 412, "precondition_failed");
    w.payload_text = "Paris, France";
    assert_int_equal(mac_slot_put(c, "c-slots", "capital", &w, 1, &v), MAC_OK);
    assert_int_equal(v, 2);
    w.version = 10;
    assert_int_equal(mac_slot_put(c, "c-slots", "capital", &w, 0, &v), MAC_OK);
    assert_int_equal(v, 10);
    assert_int_equal(mac_slot_get(c, "c-slots", "capital", 2, &s), MAC_OK);
    assert_string_equal(s.payload_json, "\"Paris, France\"");
    mac_slot_free(&s);
    assert_int_equal(mac_slot_protect(c, "c-slots", "capital", 1, 0), MAC_OK);
    w.version = 0;
    assert_http_error(c, mac_slot_put(c, "c-slots", "capital", &w, 0, &v), 423, "protected");
    assert_http_error(c, mac_slot_evict(c, "c-slots", "capital", 0), 423, "protected");
    assert_int_equal(mac_slot_protect(c, "c-slots", "capital", 0, 0), MAC_OK);

    const float k[8] = { 1, 0, 0, 0, 0, 0, 0, 0 }, val[8] = { 0, 1, 0, 0, 0, 0, 0, 0 };
    mac_slot_value wv = { .k = k, .nk = 8, .v = val, .nv = 8, .payload_json = "{\"n\":1}" };
    assert_int_equal(mac_slot_create(c, "c-slots", "vec", &wv, &v), MAC_OK);
    assert_int_equal(mac_slot_evict(c, "c-slots", "vec", 0), MAC_OK);
    assert_http_error(c, mac_slot_get(c, "c-slots", "vec", 0, &s), 404, "no_slot");
    mac_version *vs;
    size_t n;
    assert_int_equal(mac_slot_versions(c, "c-slots", "vec", &vs, &n), MAC_OK);
    assert_int_equal(n, 2);
    assert_false(vs[0].tombstone);
    assert_true(vs[1].tombstone);
    free(vs);
    assert_int_equal(mac_slot_restore(c, "c-slots", "vec", 1, 0, &v), MAC_OK);
    assert_int_equal(v, 3);
    assert_int_equal(mac_slot_get(c, "c-slots", "vec", 0, &s), MAC_OK);
    assert_string_equal(s.payload_json, "{\"n\":1}");
    assert_int_equal(s.nv, 8);
    assert_memory_equal(s.v, val, sizeof val);
    mac_slot_free(&s);
    mac_query q = { .q = k, .nq = 8 };
    mac_result r;
    assert_int_equal(mac_query_run(c, "c-slots", &q, 1, &r), MAC_OK);
    assert_string_equal(r.route, "slot");
    assert_string_equal(r.slot, "vec");
    assert_int_equal(r.version, 3);
    mac_results_free(&r, 1);
    mac_close(c);
}

static void test_token(void **state)
{
    (void)state;
    mh_daemon d;
    const char *args[] = { "--token", "s3cret", NULL };
    assert_int_equal(mh_start(&d, args, NULL), 0);
    mac_client *c = open_client(d.base, 0, NULL);
    mac_session s;
    assert_http_error(c, mac_session_get(c, "x", &s), 401, "unauthorized");
    mac_close(c);
    c = open_client(d.base, 0, "s3cret");
    assert_int_equal(mac_session_create(c, "t", NULL, NULL), MAC_OK);
    mac_close(c);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

/* ---- retries: a scripted server answering 503 (Retry-After: 0) twice, then `final` ---- */

typedef struct {
    int fd;
    int answered;
    const char *final;          /* the third answer (a whole HTTP response); NULL: a session's 201 */
    const char *script[3];      /* when script[0] is set: the three answers, in order, instead */
    char keys[4][80];
    char ctype[4][64];
    unsigned char bodies[4][1024];
    size_t blen[4];
} flaky;

static void *flaky_run(void *arg)
{
    flaky *f = arg;
    for (f->answered = 0; f->answered < 3; f->answered++) {
        int cfd = accept(f->fd, NULL, NULL);
        if (cfd < 0)
            break;
        char req[8192];
        size_t len = 0;
        ssize_t r;
        char *end = NULL;
        while (len + 1 < sizeof req && (r = read(cfd, req + len, sizeof req - 1 - len)) > 0) {
            len += (size_t)r;
            req[len] = '\0';
            if ((end = strstr(req, "\r\n\r\n"))) {
                char *cl = strcasestr(req, "\r\nContent-Length:");
                size_t want = (size_t)(end + 4 - req) + (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
                if (len >= want)
                    break;
            }
        }
        char *k = strcasestr(req, "\r\nIdempotency-Key: ");
        if (k)
            sscanf(k + 19, "%79[^\r]", f->keys[f->answered]);
        char *ct = strcasestr(req, "\r\nContent-Type: ");
        if (ct)
            sscanf(ct + 16, "%63[^\r]", f->ctype[f->answered]);
        if (end) {   /* the body, NUL bytes and all (binary batches) */
            size_t off = (size_t)(end + 4 - req), bl = len > off ? len - off : 0;
            if (bl > sizeof f->bodies[0])
                bl = sizeof f->bodies[0];
            memcpy(f->bodies[f->answered], end + 4, bl);
            f->blen[f->answered] = bl;
        }
        const char *ans = f->script[0] ? f->script[f->answered]
            : f->answered < 2
            ? "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 0\r\n"
              "Connection: close\r\nContent-Length: 48\r\n\r\n{\"error\":{\"code\":\"overloaded\",\"message\":\"busy\"}}"
            : f->final ? f->final
            : "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n"
              "Content-Length: 29\r\n\r\n{\"id\":\"x\",\"config\":{\"dim\":4}}";
        ssize_t wr = write(cfd, ans, strlen(ans));
        (void)wr;
        close(cfd);
    }
    return NULL;
}

/* A listening socket on a free loopback port; base gets its URL. */
static int listen_local(char *base, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    snprintf(base, cap, "http://127.0.0.1:%d", ntohs(a.sin_port));
    return fd;
}

static void test_retries(void **state)
{
    (void)state;
    flaky f = { 0 };
    char base[64];
    f.fd = listen_local(base, sizeof base);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flaky_run, &f), 0);
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    o.backoff_ms = 1;
    mac_client *c;
    assert_int_equal(mac_open(&o, &c), MAC_OK);
    mac_session s;
    assert_int_equal(mac_session_create(c, "x", NULL, &s), MAC_OK);
    assert_string_equal(s.id, "x");
    pthread_join(t, NULL);
    assert_int_equal(f.answered, 3);
    assert_int_equal(mac_requests_sent(c), 3);
    assert_int_equal(strlen(f.keys[0]), 32);
    assert_string_equal(f.keys[0], f.keys[1]);   /* one key for every retry of the call */
    assert_string_equal(f.keys[0], f.keys[2]);
    mac_close(c);
    close(f.fd);   /* now nobody listens there: connection errors, retried, then MAC_ECONN */
    o.retries = 2;
    assert_int_equal(mac_open(&o, &c), MAC_OK);
    assert_int_equal(mac_session_get(c, "x", &s), MAC_ECONN);
    assert_string_equal(mac_last_error(c)->code, "connection");
    assert_int_equal(mac_requests_sent(c), 3);
    mac_close(c);
}

/* ---- binary event batches (mac_append_f32) ---- */

enum { BN = 300, BH = 2, BD = 4, BV = 2 };   /* events; the sessions' heads, dim, value_dim */
static float bin_k[BN][BH * BD], bin_v[BN][BH * BV];

static void bin_fill(void)
{
    for (int i = 0; i < BN; i++) {
        key_of(i, bin_k[i], BH, BD);
        for (int j = 0; j < BH * BV; j++)
            bin_v[i][j] = (float)sin(i * 0.11 + j * 1.7) * (float)(1 + j);
    }
}

static void create_bin_session(mac_client *c, const char *id)
{
    mac_config cfg = { .heads = BH, .dim = BD, .value_dim = BV, .slots = 8, .chunk = 16 };
    assert_int_equal(mac_session_create(c, id, &cfg, NULL), MAC_OK);
}

/* The two sessions answer the same queries with the same bits: full, window and state reads of
 * stored keys and of a key never stored, and the same backbone norms. */
static void assert_same_answers(mac_client *c, const char *a, const char *b)
{
    mac_session sa, sb;
    assert_int_equal(mac_session_get(c, a, &sa), MAC_OK);
    assert_int_equal(mac_session_get(c, b, &sb), MAC_OK);
    assert_int_equal(sa.length, sb.length);
    assert_int_equal(sa.chunks, sb.chunks);
    assert_int_equal(sa.nheads, BH);
    assert_int_equal(sb.nheads, BH);
    assert_memory_equal(sa.state_norm, sb.state_norm, BH * sizeof(double));
    assert_memory_equal(sa.penalty_norm, sb.penalty_norm, BH * sizeof(double));
    static const char *const routes[] = { "full", "window", "state" };
    float other[BH * BD];
    key_of(BN + 7, other, BH, BD);
    const float *keys[] = { bin_k[0], bin_k[17], bin_k[200], bin_k[BN - 1], other };
    enum { NQ = 3 * 5 };
    mac_query q[NQ];
    for (int i = 0; i < NQ; i++)
        q[i] = (mac_query){ .q = keys[i % 5], .nq = BH * BD, .route = routes[i / 5] };
    mac_result ra[NQ], rb[NQ];
    assert_int_equal(mac_query_run(c, a, q, NQ, ra), MAC_OK);
    assert_int_equal(mac_query_run(c, b, q, NQ, rb), MAC_OK);
    for (int i = 0; i < NQ; i++) {
        assert_true(ra[i].ok);
        assert_true(rb[i].ok);
        assert_string_equal(ra[i].route, rb[i].route);
        assert_int_equal(ra[i].event, rb[i].event);
        assert_memory_equal(&ra[i].score, &rb[i].score, sizeof(double));
        assert_int_equal(ra[i].nv, BH * BV);
        assert_int_equal(rb[i].nv, BH * BV);
        assert_memory_equal(ra[i].v, rb[i].v, BH * BV * sizeof(float));
        assert_int_equal(ra[i].nchunks, rb[i].nchunks);
        assert_null(ra[i].payload_json);   /* neither spelling carries a payload */
        assert_null(rb[i].payload_json);
    }
    /* the full reads point at the stored events queried */
    assert_int_equal(ra[0].event, 0);
    assert_int_equal(ra[2].event, 200);
    mac_results_free(ra, NQ);
    mac_results_free(rb, NQ);
}

/* The sessions' backbone state depends on where the batches split the stream (its batched kernels
 * round differently), so both spellings are sent in requests of the same events: 22 a body. A JSON
 * event of 2x4 + 2x2 floats is {"k_b64":"<44>","v_b64":"<24>"}, 91 bytes: 12 + 92*22 = 2036 <= 2048
 * < 2128; a binary one is 48 bytes: 20 + 48*22 = 1076. */
enum { BIN_PER_BODY = 22, JSON_LIMIT = 2048, BIN_LIMIT = 20 + 48 * BIN_PER_BODY };

static void test_binary_round_trip(void **state)
{
    (void)state;
    bin_fill();
    mac_client *cj = open_client(dmn.base, JSON_LIMIT, NULL), *cb = open_client(dmn.base, BIN_LIMIT, NULL);
    assert_int_equal(mac_events_binary(cb), 1);          /* this daemon reports batch.events_binary */
    create_bin_session(cb, "c-bin");
    create_bin_session(cb, "c-json");
    create_bin_session(cb, "c-bin0");
    mac_batch b = { .k = &bin_k[0][0], .v = &bin_v[0][0], .n = BN, .heads = BH, .dim = BD, .value_dim = BV };
    mac_append_result r;
    const size_t bodies = (BN + BIN_PER_BODY - 1) / BIN_PER_BODY;
    assert_int_equal(mac_append_f32(cb, "c-bin", &b, MAC_SEND_AUTO, &r), MAC_OK);   /* auto: binary */
    assert_int_equal(r.binary, 1);
    assert_int_equal(r.appended, BN);
    assert_int_equal(r.length, BN);
    assert_int_equal(r.batches, bodies);
    assert_int_equal(mac_append_f32(cj, "c-json", &b, MAC_SEND_JSON, &r), MAC_OK);
    assert_int_equal(r.binary, 0);
    assert_int_equal(r.appended, BN);
    assert_int_equal(r.length, BN);
    assert_int_equal(r.batches, bodies);
    b.heads = 0;                                      /* the shape read from GET /v1/sessions/c-bin0 */
    assert_int_equal(mac_append_f32(cb, "c-bin0", &b, MAC_SEND_BINARY, &r), MAC_OK);
    assert_int_equal(r.binary, 1);
    assert_int_equal(r.appended, BN);
    assert_int_equal(r.batches, bodies);
    assert_same_answers(cb, "c-bin", "c-json");
    assert_same_answers(cb, "c-bin0", "c-json");
    b.n = 0;                                          /* nothing to send: no request at all */
    uint64_t sent = mac_requests_sent(cb);
    assert_int_equal(mac_append_f32(cb, "c-bin", &b, MAC_SEND_BINARY, &r), MAC_OK);
    assert_int_equal(mac_requests_sent(cb), sent);
    assert_int_equal(r.appended, 0);
    mac_close(cb);
    mac_close(cj);
}

static void test_binary_errors(void **state)
{
    (void)state;
    bin_fill();
    mac_client *c = open_client(dmn.base, 2048, NULL);
    create_bin_session(c, "c-binerr");
    mac_batch b = { .k = &bin_k[0][0], .v = &bin_v[0][0], .n = 100, .heads = BH, .dim = BD, .value_dim = BV };
    mac_append_result r;
    assert_int_equal(mac_append_f32(c, "c-binerr", &b, MAC_SEND_BINARY, &r), MAC_OK);
    mac_session s;

    /* A shape that is not the session's: the daemon's 400 dim_mismatch, decoded; nothing applied. */
    mac_batch wrong = { .k = &bin_k[0][0], .v = &bin_v[0][0], .n = 10, .heads = 1, .dim = 8, .value_dim = 4 };
    assert_http_error(c, mac_append_f32(c, "c-binerr", &wrong, MAC_SEND_BINARY, &r), 400, "dim_mismatch");
    assert_non_null(strstr(mac_last_error(c)->message, "binary batch"));
    assert_non_null(strstr(mac_last_error(c)->message, "heads 1, dim 8, value_dim 4"));
    assert_int_equal(r.appended, 0);
    assert_int_equal(r.binary, 1);
    /* The same kind of mistake sent as JSON (keys of 1x4 floats where the session's are 2x4): refused too. */
    wrong = (mac_batch){ .k = &bin_k[0][0], .v = &bin_v[0][0], .n = 10, .heads = 1, .dim = 4, .value_dim = 2 };
    assert_http_error(c, mac_append_f32(c, "c-binerr", &wrong, MAC_SEND_JSON, &r), 400, "dim_mismatch");
    assert_int_equal(mac_session_get(c, "c-binerr", &s), MAC_OK);
    assert_int_equal(s.length, 100);

    /* A NaN in a later batch: the batches before it stay applied, out->appended says how many. */
    static float k[BN][BH * BD];
    memcpy(k, bin_k, sizeof k);
    k[150][3] = NAN;
    b = (mac_batch){ .k = &k[0][0], .v = &bin_v[0][0], .n = 200, .heads = BH, .dim = BD, .value_dim = BV };
    assert_http_error(c, mac_append_f32(c, "c-binerr", &b, MAC_SEND_BINARY, &r), 400, "non_finite");
    assert_int_equal(r.appended, 126);   /* 3 bodies of 42; the 4th holds event 150 */
    assert_int_equal(mac_session_get(c, "c-binerr", &s), MAC_OK);
    assert_int_equal(s.length, 100 + 126);

    /* Refused by the client before anything is sent. */
    uint64_t sent = mac_requests_sent(c);
    b = (mac_batch){ .k = &bin_k[0][0], .v = NULL, .n = 1, .heads = BH, .dim = BD, .value_dim = BV };
    assert_int_equal(mac_append_f32(c, "c-binerr", &b, MAC_SEND_BINARY, &r), MAC_EINVAL);
    b.v = &bin_v[0][0];
    assert_int_equal(mac_append_f32(c, "c-binerr", &b, 7, &r), MAC_EINVAL);
    assert_int_equal(mac_append_f32(c, "c-binerr", NULL, MAC_SEND_BINARY, &r), MAC_EINVAL);
    b.dim = -1;
    assert_int_equal(mac_append_f32(c, "c-binerr", &b, MAC_SEND_BINARY, &r), MAC_EINVAL);
    assert_string_equal(mac_last_error(c)->code, "invalid");
    assert_int_equal(mac_requests_sent(c), sent);
    mac_close(c);
    c = open_client(dmn.base, 40, NULL);   /* 40 bytes: 20 of header, and an event is 48 */
    b.dim = BD;
    assert_int_equal(mac_append_f32(c, "c-binerr", &b, MAC_SEND_BINARY, &r), MAC_ETOOBIG);
    assert_string_equal(mac_last_error(c)->code, "too_large");
    assert_int_equal(mac_requests_sent(c), 0);
    mac_close(c);
    c = open_client(dmn.base, 0, NULL);
    assert_int_equal(mac_session_get(c, "c-binerr", &s), MAC_OK);
    assert_int_equal(s.length, 100 + 126);
    mac_close(c);
}

/* 503 twice, then 200: the three requests carry the same key, the same Content-Type and the same
 * body, byte for byte what docs/API.md describes. */
static void test_binary_retries(void **state)
{
    (void)state;
    flaky f = { .final = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         "Content-Length: 67\r\n\r\n"
                         "{\"length\":3,\"appended\":3,\"writes\":[],\"void_writes\":[],\"evicted\":[]}" };
    char base[64];
    f.fd = listen_local(base, sizeof base);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flaky_run, &f), 0);
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    o.backoff_ms = 1;
    o.max_body = 4096;
    mac_client *c;
    assert_int_equal(mac_open(&o, &c), MAC_OK);
    const float k[3][2] = { { 1, 0 }, { 0, 1 }, { -0.5f, 2 } }, v[3][1] = { { 0.25f }, { -3 }, { 1e-3f } };
    mac_batch b = { .k = &k[0][0], .v = &v[0][0], .n = 3, .heads = 1, .dim = 2, .value_dim = 1 };
    mac_append_result r;
    assert_int_equal(mac_append_f32(c, "x", &b, MAC_SEND_BINARY, &r), MAC_OK);
    pthread_join(t, NULL);
    assert_int_equal(f.answered, 3);
    assert_int_equal(mac_requests_sent(c), 3);
    assert_int_equal(r.appended, 3);
    assert_int_equal(r.length, 3);
    assert_int_equal(r.batches, 1);
    /* the expected body, spelled out: "MAEV", n 3, heads 1, dim 2, value_dim 1, keys, values */
    unsigned char want[20 + 4 * 9];
    const uint32_t hdr[4] = { 3, 1, 2, 1 };
    const float fl[9] = { 1, 0, 0, 1, -0.5f, 2, 0.25f, -3, 1e-3f };
    memcpy(want, "MAEV", 4);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            want[4 + 4 * i + j] = (unsigned char)(hdr[i] >> (8 * j));
    for (int i = 0; i < 9; i++) {
        uint32_t u;
        memcpy(&u, &fl[i], 4);
        for (int j = 0; j < 4; j++)
            want[20 + 4 * i + j] = (unsigned char)(u >> (8 * j));
    }
    for (int i = 0; i < 3; i++) {
        assert_string_equal(f.ctype[i], "application/octet-stream");
        assert_int_equal(f.blen[i], sizeof want);
        assert_memory_equal(f.bodies[i], want, sizeof want);
        assert_int_equal(strlen(f.keys[i]), 32);
        assert_string_equal(f.keys[i], f.keys[0]);
    }
    mac_close(c);
    close(f.fd);
}

/* A daemon whose GET /v1/info does not report batch.events_binary (an older one): MAC_SEND_AUTO
 * sends JSON, and asks GET /v1/info only once per client. */
static void test_binary_auto_falls_back_to_json(void **state)
{
    (void)state;
    static const char events_ok[] =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 67\r\n\r\n"
        "{\"length\":3,\"appended\":3,\"writes\":[],\"void_writes\":[],\"evicted\":[]}";
    flaky f = { .script = {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 45\r\n\r\n"
        "{\"name\":\"memattn\",\"limits\":{\"max_body\":4096}}",
        events_ok, events_ok } };
    char base[64];
    f.fd = listen_local(base, sizeof base);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flaky_run, &f), 0);
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    mac_client *c;
    assert_int_equal(mac_open(&o, &c), MAC_OK);
    const float k[3][2] = { { 1, 0 }, { 0, 1 }, { -0.5f, 2 } }, v[3][1] = { { 0.25f }, { -3 }, { 1e-3f } };
    mac_batch b = { .k = &k[0][0], .v = &v[0][0], .n = 3, .heads = 1, .dim = 2, .value_dim = 1 };
    mac_append_result r;
    assert_int_equal(mac_append_f32(c, "x", &b, MAC_SEND_AUTO, &r), MAC_OK);
    assert_int_equal(r.binary, 0);
    assert_int_equal(r.appended, 3);
    assert_int_equal(mac_events_binary(c), 0);
    assert_int_equal(mac_max_body(c), 4096);
    assert_int_equal(mac_append_f32(c, "x", &b, MAC_SEND_AUTO, &r), MAC_OK);   /* no second GET /v1/info */
    pthread_join(t, NULL);
    assert_int_equal(f.answered, 3);
    assert_int_equal(mac_requests_sent(c), 3);
    char *kb = mac_b64_f32(k[0], 2), *vb = mac_b64_f32(v[0], 1), want[128];
    snprintf(want, sizeof want, "{\"events\":[{\"k_b64\":\"%s\",\"v_b64\":\"%s\"},", kb, vb);
    free(kb);
    free(vb);
    assert_string_equal(f.ctype[1], "application/json");
    assert_string_equal(f.ctype[2], "application/json");
    assert_true(f.blen[1] > strlen(want));
    assert_memory_equal(f.bodies[1], want, strlen(want));
    assert_int_equal(f.blen[2], f.blen[1]);
    assert_memory_equal(f.bodies[2], f.bodies[1], f.blen[1]);
    assert_string_not_equal(f.keys[1], f.keys[2]);   /* two calls: two keys */
    mac_close(c);
    close(f.fd);
}

/* ---- a proxy in front of the daemon that loses the answer to the first POST ---- */

typedef struct {
    int fd;                     /* listening */
    int dport;                  /* the daemon's port */
    int drop;                   /* answers to POSTs still to lose */
    int posts;                  /* POSTs forwarded */
    char keys[4][80];
    int replayed[4];            /* the daemon's answer had Idempotent-Replayed: true */
} proxy;

/* Reads one HTTP message (header and Content-Length body) from fd into buf; its length, or 0 at EOF
 * or error. */
static size_t read_message(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        char *end = len ? strstr(buf, "\r\n\r\n") : NULL;
        if (end) {
            char *cl = strcasestr(buf, "\r\nContent-Length:");
            size_t want = (size_t)(end + 4 - buf) + (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
            if (want >= cap)
                return 0;
            if (len >= want)
                return want;
        }
        if (len + 1 >= cap)
            return 0;
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r <= 0)
            return 0;
        len += (size_t)r;
        buf[len] = '\0';
    }
}

static void *proxy_run(void *arg)
{
    proxy *p = arg;
    static char req[1 << 16], ans[1 << 16];
    for (;;) {
        int cfd = accept(p->fd, NULL, NULL);
        if (cfd < 0)
            return NULL;
        size_t rl;
        while ((rl = read_message(cfd, req, sizeof req)) > 0) {
            int dfd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)p->dport),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
            if (dfd < 0 || connect(dfd, (struct sockaddr *)&a, sizeof a) != 0 || write(dfd, req, rl) != (ssize_t)rl) {
                if (dfd >= 0)
                    close(dfd);
                break;
            }
            size_t al = read_message(dfd, ans, sizeof ans);
            close(dfd);
            if (al == 0)
                break;
            bool post = strncmp(req, "POST ", 5) == 0;
            if (post && p->posts < 4) {
                char *k = strcasestr(req, "\r\nIdempotency-Key: ");
                if (k)
                    sscanf(k + 19, "%79[^\r]", p->keys[p->posts]);
                p->replayed[p->posts] = strcasestr(ans, "\r\nIdempotent-Replayed: true") != NULL;
                p->posts++;
            }
            if (post && p->drop > 0) {   /* the daemon applied it; the client never hears */
                p->drop--;
                break;
            }
            if (write(cfd, ans, al) != (ssize_t)al)
                break;
        }
        close(cfd);
    }
}

static void test_binary_idempotent_replay(void **state)
{
    (void)state;
    bin_fill();
    mac_client *direct = open_client(dmn.base, 0, NULL);
    create_bin_session(direct, "c-replay");
    proxy p = { .dport = dmn.port, .drop = 1 };
    char base[64];
    p.fd = listen_local(base, sizeof base);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, proxy_run, &p), 0);
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    o.backoff_ms = 1;
    o.max_body = 4096;   /* given: no GET /v1/info through the proxy */
    mac_client *c;
    assert_int_equal(mac_open(&o, &c), MAC_OK);
    mac_batch b = { .k = &bin_k[0][0], .v = &bin_v[0][0], .n = 20, .heads = BH, .dim = BD, .value_dim = BV };
    mac_append_result r;
    assert_int_equal(mac_append_f32(c, "c-replay", &b, MAC_SEND_BINARY, &r), MAC_OK);
    assert_int_equal(r.appended, 20);
    assert_int_equal(r.length, 20);
    assert_int_equal(r.batches, 1);
    mac_close(c);
    shutdown(p.fd, SHUT_RDWR);
    pthread_join(t, NULL);
    close(p.fd);
    assert_int_equal(p.posts, 2);          /* the lost answer's request, then its retry */
    assert_string_equal(p.keys[0], p.keys[1]);
    assert_int_equal(strlen(p.keys[0]), 32);
    assert_int_equal(p.replayed[0], 0);
    assert_int_equal(p.replayed[1], 1);    /* the daemon answered the retry from its record */
    mac_session s;
    assert_int_equal(mac_session_get(direct, "c-replay", &s), MAC_OK);
    assert_int_equal(s.length, 20);        /* applied once */
    mac_close(direct);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_sessions),
        cmocka_unit_test(test_append_batches_and_query),
        cmocka_unit_test(test_body_limit_from_daemon),
        cmocka_unit_test(test_slot_verbs),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_retries),
        cmocka_unit_test(test_binary_round_trip),
        cmocka_unit_test(test_binary_errors),
        cmocka_unit_test(test_binary_retries),
        cmocka_unit_test(test_binary_auto_falls_back_to_json),
        cmocka_unit_test(test_binary_idempotent_replay),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
