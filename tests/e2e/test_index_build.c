/*
 * tests/e2e/test_index_build.c — the archive index built in the background by the real daemon (issue 9;
 * docs/ARCHIVE.md, "Builds in the background"): event batches and queries keep being answered while a
 * build runs; a daemon killed (SIGKILL) or stopped (SIGTERM) right after the batch that makes a build due
 * loses nothing it acknowledged, and once the restarted daemon has redone the build the session answers
 * exactly as a twin session fed the same events in one daemon; so does one killed at several moments of a
 * build that races further batches (its new index made beside the old one, caught up, swapped in); GET
 * /v1/sessions/{id} shows the index. The same for sessions of 8 heads (one index per head, issue 15:
 * docs/ARCHIVE.md, "Many heads").
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

#include "tests/e2e/api_util.h"
#include "tests/e2e/harness.h"

#define KD 16          /* key and value dimension of the sessions (per head) */
#define MAXH 8         /* the most heads of a session here */
#define BATCH 512

static float val(unsigned seed, uint64_t i, unsigned j)
{
    uint64_t x = (uint64_t)seed * 0x9E3779B97F4A7C15ull ^ (i + 1) * 0xC2B2AE3D27D4EB4Full ^ (j + 7) * 0x165667B19E3779F9ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (float)((double)(x >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static void put_b64(char *buf, size_t cap, size_t *pos, const char *name, unsigned seed, uint64_t i, unsigned salt,
                    int heads)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char raw[4 * KD * MAXH];
    for (int j = 0; j < KD * heads; j++) {
        float f = val(seed, i, salt * 1000 + (unsigned)j);
        memcpy(raw + 4 * j, &f, 4);
    }
    size_t len = (size_t)(4 * KD * heads);
    *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\"%s\":\"", name);
    for (size_t k = 0; k < len; k += 3) {
        unsigned v = (unsigned)raw[k] << 16 | (k + 1 < len ? (unsigned)raw[k + 1] << 8 : 0) | (k + 2 < len ? raw[k + 2] : 0);
        char q[5] = {tab[v >> 18 & 63], tab[v >> 12 & 63], k + 1 < len ? tab[v >> 6 & 63] : '=', k + 2 < len ? tab[v & 63] : '=', 0};
        *pos += (size_t)snprintf(buf + *pos, cap - *pos, "%s", q);
    }
    *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\"");
}

/* {"events":[...]} for events [first, first+n) of seed, keys and values of `heads` heads. Caller frees. */
static char *events_body(unsigned seed, uint64_t first, int n, int heads)
{
    size_t cap = (size_t)n * (8 * KD * heads * 2 + 64) + 64, pos = 0;
    char *b = malloc(cap);
    pos += (size_t)snprintf(b, cap, "{\"events\":[");
    for (int e = 0; e < n; e++) {
        pos += (size_t)snprintf(b + pos, cap - pos, "%s{", e ? "," : "");
        put_b64(b, cap, &pos, "k_b64", seed, first + (uint64_t)e, 1, heads);
        pos += (size_t)snprintf(b + pos, cap - pos, ",");
        put_b64(b, cap, &pos, "v_b64", seed, first + (uint64_t)e, 2, heads);
        pos += (size_t)snprintf(b + pos, cap - pos, "}");
    }
    snprintf(b + pos, cap - pos, "]}");
    return b;
}

/* Sparse queries near events of seed, and a full read: what the snapshots compare. */
static char *queries(unsigned seed, uint64_t n, int heads)
{
    size_t cap = 16384 * (size_t)heads, pos = 0;
    char *q = malloc(cap);
    pos += (size_t)snprintf(q, cap, "{\"queries\":[");
    for (int t = 0; t < 8; t++) {
        pos += (size_t)snprintf(q + pos, cap - pos, "%s{\"route\":\"sparse\",", t ? "," : "");
        put_b64(q, cap, &pos, "q_b64", seed, (uint64_t)t * 7919 % n, 1, heads);
        pos += (size_t)snprintf(q + pos, cap - pos, "}");
    }
    snprintf(q + pos, cap - pos, "]}");
    return q;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void start_on(mh_daemon *d, const char *dir)
{
    const char *args[] = {"--data", dir, "--max-body", "8M", NULL};
    assert_int_equal(mh_start(d, args, NULL), 0);
}

static void kill9(mh_daemon *d)
{
    assert_int_equal(mh_kill9(d), 128 + SIGKILL);
}

/* Feeds events [from, to) of seed to session id in batches of BATCH (every one acknowledged); sessions
 * whose id ends in 8 have 8 heads. */
static void feed(mh_daemon *d, const char *id, unsigned seed, uint64_t from, uint64_t to)
{
    const int heads = id[strlen(id) - 1] == '8' ? 8 : 1;
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/events", id);
    for (uint64_t i = from; i < to; i += BATCH) {
        int n = to - i < BATCH ? (int)(to - i) : BATCH;
        char *body = events_body(seed, i, n, heads);
        cJSON_Delete(au_call(d, "POST", path, 200, "%s", body));
        free(body);
    }
}

/* The snapshot of id with the id removed (a session against its twin). */
static char *snap(mh_daemon *d, const char *id, const char *q)
{
    char *s = au_snapshot(d, id, q);
    cJSON *j = cJSON_Parse(s);
    free(s);
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "session"), "id");
    char *t = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return t;
}

static bool building(mh_daemon *d, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    cJSON *j = au_call(d, "GET", path, 200, NULL);
    bool b = au_bool(j, "index.building");
    cJSON_Delete(j);
    return b;
}

typedef struct {
    const mh_daemon *d;
    const char *body;
    atomic_int stop;
    int answered, failed;
} querier;

static void *query_loop(void *arg)
{
    querier *q = arg;
    au_client *c = au_client_new(q->d);
    while (!atomic_load(&q->stop)) {
        long st = au_client_call(c, "POST", "/v1/sessions/a/query", q->body, NULL);
        if (st == 200)
            q->answered++;
        else
            q->failed++;
    }
    au_client_free(c);
    return NULL;
}

static void test_kill_and_stop_during_builds(void **state)
{
    (void)state;
    char *dir = strdup("/tmp/memattn-ixbuildXXXXXX");
    assert_non_null(mkdtemp(dir));
    mh_daemon d;
    start_on(&d, dir);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/a", 201, "{\"dim\":%d}", KD));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/t", 201, "{\"dim\":%d}", KD));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/a8", 201, "{\"heads\":8,\"dim\":%d}", KD));
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/t8", 201, "{\"heads\":8,\"dim\":%d}", KD));

    /* Batches into a while queries of a run beside them and builds run in the background. */
    const uint64_t N1 = 16384 + BATCH;   /* the last batch makes the build at 16,384 due */
    char *q1 = queries(5, 1024, 1);
    querier qr = {.d = &d, .body = q1};
    pthread_t th;
    feed(&d, "a", 5, 0, 1024);
    assert_int_equal(pthread_create(&th, NULL, query_loop, &qr), 0);
    feed(&d, "a", 5, 1024, N1 - BATCH);
    atomic_store(&qr.stop, 1);
    pthread_join(th, NULL);
    assert_int_equal(qr.failed, 0);
    assert_true(qr.answered > 0);
    free(q1);
    feed(&d, "t", 5, 0, N1);
    feed(&d, "a8", 6, 0, N1 - BATCH);
    feed(&d, "t8", 6, 0, N1);
    au_wait_index(&d, "t");
    au_wait_index(&d, "a");
    au_wait_index(&d, "t8");
    au_wait_index(&d, "a8");
    feed(&d, "a8", 6, N1 - BATCH, N1);
    feed(&d, "a", 5, N1 - BATCH, N1);
    kill9(&d);   /* right after the batch that made the build due (usually before it finished) */

    start_on(&d, dir);
    print_message("after SIGKILL: a build %s\n", building(&d, "a") ? "redone at the load" : "not needed");
    char *q = queries(5, N1, 1);
    cJSON *j = au_call(&d, "GET", "/v1/sessions/a", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), (int)N1);   /* every acknowledged batch */
    cJSON_Delete(j);
    char *sa = snap(&d, "a", q), *st = snap(&d, "t", q);
    assert_string_equal(sa, st);
    j = au_call(&d, "GET", "/v1/sessions/a", 200, NULL);
    assert_int_equal((int)au_num(j, "index.build"), 5);   /* the build at 16,384 */
    assert_int_equal((int)au_num(j, "index.lists"), 256);
    assert_int_equal((int)au_num(j, "index.events"), (int)N1);
    cJSON_Delete(j);
    free(sa);
    free(st);
    free(q);
    /* 8 heads: one index per head, the same build points; restarted, it answers as its twin. */
    q = queries(6, N1, 8);
    sa = snap(&d, "a8", q);
    st = snap(&d, "t8", q);
    assert_string_equal(sa, st);
    j = au_call(&d, "GET", "/v1/sessions/a8", 200, NULL);
    assert_int_equal((int)au_num(j, "length"), (int)N1);
    assert_int_equal((int)au_num(j, "index.build"), 5);
    assert_int_equal((int)au_num(j, "index.lists"), 256);   /* per head */
    cJSON_Delete(j);
    free(sa);
    free(st);
    free(q);

    /* The same with a clean stop (SIGTERM: the build is cancelled, the daemon exits 0). */
    const uint64_t N2 = 32768 + BATCH;
    feed(&d, "t", 5, N1, N2);
    au_wait_index(&d, "t");
    feed(&d, "a", 5, N1, N2);
    assert_int_equal(mh_stop(&d, 60000), 0);
    start_on(&d, dir);
    print_message("after SIGTERM: a build %s\n", building(&d, "a") ? "redone at the load" : "not needed");
    q = queries(5, N2, 1);
    sa = snap(&d, "a", q);
    st = snap(&d, "t", q);
    assert_string_equal(sa, st);
    j = au_call(&d, "GET", "/v1/sessions/a", 200, NULL);
    assert_int_equal((int)au_num(j, "index.build"), 6);
    assert_int_equal((int)au_num(j, "length"), (int)N2);
    cJSON_Delete(j);
    free(sa);
    free(st);
    free(q);

    /* SIGKILL while a build runs beside batches that keep coming: the build at 65,536 trains, stages its
     * rows, makes the new index and catches up while the old index lists the new blocks; each kill lands at
     * another moment of it (or of its redo after the restart: the swap only takes the last blocks).
     * Nothing acknowledged is lost, and the settled session answers as its twin. */
    const uint64_t P3 = 65536, N3 = P3 + 9 * BATCH;
    feed(&d, "t", 5, N2, N3);
    au_wait_index(&d, "t");
    feed(&d, "a", 5, N2, P3 + BATCH);
    uint64_t fed = P3 + BATCH;
    for (int round = 0; round < 4; round++) {
        feed(&d, "a", 5, fed, fed + 2 * BATCH);
        fed += 2 * BATCH;
        usleep((useconds_t)round * 150000);
        bool b = building(&d, "a");
        kill9(&d);
        print_message("round %d: SIGKILL %s a build\n", round, b ? "during" : "outside");
        start_on(&d, dir);
        j = au_call(&d, "GET", "/v1/sessions/a", 200, NULL);
        assert_int_equal((int)au_num(j, "length"), (int)fed);
        cJSON_Delete(j);
    }
    assert_int_equal(fed, N3);
    q = queries(5, N3, 1);
    sa = snap(&d, "a", q);
    st = snap(&d, "t", q);
    assert_string_equal(sa, st);
    j = au_call(&d, "GET", "/v1/sessions/a", 200, NULL);
    assert_int_equal((int)au_num(j, "index.build"), 7);
    assert_int_equal((int)au_num(j, "index.events"), (int)N3);
    cJSON_Delete(j);
    free(sa);
    free(st);
    free(q);
    assert_int_equal(mh_stop(&d, 60000), 0);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kill_and_stop_during_builds, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
