/*
 * tests/e2e/test_transfer.c — moving a session between daemons: GET .../export, PUT .../import,
 * POST .../freeze (docs/API.md, "Moving sessions").
 *
 * A session with events (payloads, slot writes, an eviction), slot verbs and both selectors' state is
 * exported from one daemon and imported into another: every answer is the same (au_snapshot: describe,
 * slots, versions, and the answers of queries on every route). Refusals leave nothing behind: a
 * truncated snapshot, a flipped byte, a newer format, an empty body, an existing id. A frozen session
 * answers mutations with 503 `frozen` and Retry-After, reads and exports as usual, and can be deleted.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "tests/e2e/api_util.h"
#include "tests/e2e/harness.h"

static const char *QUERIES =
    "{\"queries\":[{\"q\":[1,0,0,0,0,0,0,1]},{\"q\":[0,1,0,0,1,0,0,0],\"route\":\"full\"},"
    "{\"q\":[0,0,1,0,0,0,1,0],\"route\":\"window\"},{\"q\":[1,1,0,0,0,0,0,0],\"route\":\"state\"},"
    "{\"q\":[0,0,0,1,0,1,0,0],\"route\":\"sparse\"},{\"text\":\"fact 3\"}]}";

/* A session of `n` events with payloads on some, slot writes on others (4 slots: evictions). */
static void fill(mh_daemon *d, const char *id, int n)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    cJSON_Delete(au_call(d, "PUT", path, 201, "{\"dim\":8,\"slots\":4,\"chunk\":16,\"topk\":2}"));
    snprintf(path, sizeof path, "/v1/sessions/%s/events", id);
    unsigned seed = 7;
    for (int done = 0; done < n;) {
        char body[16384];
        size_t len = (size_t)snprintf(body, sizeof body, "{\"events\":[");
        int batch = n - done < 50 ? n - done : 50;
        for (int i = 0; i < batch; i++, done++) {
            len += (size_t)snprintf(body + len, sizeof body - len, "%s{\"k\":[", i ? "," : "");
            for (int x = 0; x < 16; x++) {
                seed = seed * 1103515245u + 12345u;
                len += (size_t)snprintf(body + len, sizeof body - len, "%s%.4f%s", x == 8 ? "],\"v\":[" : (x ? "," : ""),
                                        (double)((int)(seed >> 16) % 2001 - 1000) / 1000.0, "");
            }
            len += (size_t)snprintf(body + len, sizeof body - len, "]");
            if (done % 3 == 0)
                len += (size_t)snprintf(body + len, sizeof body - len, ",\"payload\":{\"n\":%d,\"s\":\"fact %d\"}", done,
                                        done);
            if (done % 7 == 0)
                len += (size_t)snprintf(body + len, sizeof body - len, ",\"slot\":\"s%d\"", done % 5);
            len += (size_t)snprintf(body + len, sizeof body - len, "}");
        }
        snprintf(body + len, sizeof body - len, "]}");
        cJSON_Delete(au_call(d, "POST", path, 200, "%s", body));
    }
    snprintf(path, sizeof path, "/v1/sessions/%s/slots/fact", id);
    cJSON_Delete(au_call(d, "PUT", path, 201, "{\"payload\":\"a fact\"}"));
    cJSON_Delete(au_call(d, "PUT", path, 200, "{\"payload\":\"a newer fact\"}"));
}

/* Exports `id` from d; the snapshot's bytes (caller frees) and length. */
static char *export_of(mh_daemon *d, const char *id, size_t *len)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/export", id);
    mh_resp r;
    assert_int_equal(mh_request(d, "GET", path, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    char ct[64];
    assert_non_null(mh_resp_header(&r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/octet-stream");
    char *b = malloc(r.len + 1);
    assert_non_null(b);
    memcpy(b, r.body, r.len);
    *len = r.len;
    mh_resp_free(&r);
    return b;
}

/* PUT .../import with a binary body over a raw connection; the status, r filled. */
static int import_to(mh_daemon *d, const char *id, const char *data, size_t len, mh_resp *r)
{
    int fd = mh_connect(d);
    assert_true(fd >= 0);
    char head[256];
    snprintf(head, sizeof head,
             "PUT /v1/sessions/%s/import HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
             "Content-Length: %zu\r\n\r\n", id, len);
    assert_int_equal(mh_sends(fd, head), 0);
    if (len)
        assert_int_equal(mh_send(fd, data, len), 0);
    mh_reader rb;
    mh_reader_init(&rb, fd);
    int st = mh_read_response(&rb, r, 60000);
    close(fd);
    return st;
}

static void expect_refused(mh_daemon *d, const char *id, const char *data, size_t len, int status, const char *code)
{
    mh_resp r;
    assert_int_equal(import_to(d, id, data, len, &r), status);
    if (strcmp(mh_error_code(&r), code) != 0)
        fail_msg("import of %zu bytes: expected %s, got %s", len, code, r.body);
    mh_resp_free(&r);
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    au_error(d, "GET", path, 404, "no_session", NULL);   /* nothing left behind */
}

static void test_export_import_same_bits(void **state)
{
    (void)state;
    mh_daemon a, b;
    assert_int_equal(mh_start(&a, NULL, NULL), 0);
    assert_int_equal(mh_start(&b, NULL, NULL), 0);
    fill(&a, "moved", 700);
    cJSON_Delete(au_call(&a, "PUT", "/v1/sessions/empty", 201, "{\"dim\":8}"));
    char *before = au_snapshot(&a, "moved", QUERIES);

    size_t len, len2;
    char *snap = export_of(&a, "moved", &len);
    char *snap2 = export_of(&a, "moved", &len2);   /* the same bytes twice: nothing volatile in it */
    assert_int_equal(len, len2);
    assert_memory_equal(snap, snap2, len);
    assert_true(len > 700 * 64);
    mh_resp r;
    assert_int_equal(import_to(&b, "moved", snap, len, &r), 201);
    cJSON *j = mh_resp_json(&r);
    assert_int_equal((int)au_num(j, "length"), 700);
    cJSON_Delete(j);
    mh_resp_free(&r);
    char *after = au_snapshot(&b, "moved", QUERIES);
    assert_string_equal(before, after);
    /* and it goes on identically: the same batch on both */
    const char *more = "{\"events\":[{\"k\":[1,2,3,4,5,6,7,8],\"v\":[8,7,6,5,4,3,2,1],\"slot\":\"s9\",\"payload\":1}]}";
    cJSON_Delete(au_call(&a, "POST", "/v1/sessions/moved/events", 200, "%s", more));
    cJSON_Delete(au_call(&b, "POST", "/v1/sessions/moved/events", 200, "%s", more));
    free(before);
    free(after);
    before = au_snapshot(&a, "moved", QUERIES);
    after = au_snapshot(&b, "moved", QUERIES);
    assert_string_equal(before, after);
    free(before);
    free(after);

    /* A restart of the importer serves it from its store the same way. */
    assert_int_equal(import_to(&b, "moved", snap, len, &r), 409);   /* exists */
    assert_string_equal(mh_error_code(&r), "exists");
    mh_resp_free(&r);

    /* An empty session round-trips too. */
    size_t elen;
    char *esnap = export_of(&a, "empty", &elen);
    assert_int_equal(import_to(&b, "empty", esnap, elen, &r), 201);
    mh_resp_free(&r);
    cJSON *e = au_call(&b, "GET", "/v1/sessions/empty", 200, NULL);
    assert_int_equal((int)au_num(e, "length"), 0);
    cJSON_Delete(e);

    /* Refusals leave nothing behind. */
    expect_refused(&b, "t1", snap, len / 2, 400, "bad_snapshot");        /* truncated */
    expect_refused(&b, "t2", snap, len - 1, 400, "bad_snapshot");        /* its last byte missing */
    char *bad = malloc(len + 1);
    memcpy(bad, snap, len);
    bad[len / 2] ^= 0x40;
    expect_refused(&b, "t3", bad, len, 400, "bad_snapshot");             /* a flipped byte */
    memcpy(bad, snap, len);
    bad[len] = 'x';
    expect_refused(&b, "t4", bad, len + 1, 400, "bad_snapshot");         /* trailing garbage */
    memcpy(bad, snap, len);
    bad[8] = 99;
    expect_refused(&b, "t5", bad, len, 422, "unsupported_snapshot");     /* a newer format */
    expect_refused(&b, "t6", "{\"dim\":8}", 9, 400, "bad_snapshot");     /* not a snapshot */
    expect_refused(&b, "t7", "", 0, 400, "bad_snapshot");                /* empty */
    free(bad);
    free(snap);
    free(esnap);
    /* A client that half-closes after its request still gets the whole file answer. */
    free(snap2);
    snap2 = export_of(&a, "moved", &len2);   /* the session has grown since */
    int fd = mh_connect(&a);
    assert_true(fd >= 0);
    assert_int_equal(mh_sends(fd, "GET /v1/sessions/moved/export HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    shutdown(fd, SHUT_WR);
    /* mh_reader holds 64 KiB; read the whole answer here, to the close */
    size_t cap = len2 + 4096, got = 0;
    char *all = malloc(cap);
    assert_non_null(all);
    struct timeval tv = { .tv_sec = 30 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (ssize_t n; got < cap && (n = recv(fd, all + got, cap - got, 0)) > 0;)
        got += (size_t)n;
    char *body = memmem(all, got, "\r\n\r\n", 4);
    assert_non_null(body);
    body += 4;
    assert_true(strncmp(all, "HTTP/1.1 200 ", 13) == 0);
    assert_int_equal((size_t)(all + got - body), len2);
    assert_memory_equal(body, snap2, len2);
    free(all);
    close(fd);
    free(snap2);
    au_error(&a, "GET", "/v1/sessions/nope/export", 404, "no_session", NULL);
    au_error(&a, "GET", "/v1/sessions/bad%20id/export", 400, "bad_name", NULL);
    assert_int_equal(mh_stop(&a, 20000), 0);
    assert_int_equal(mh_stop(&b, 20000), 0);
}

static void test_freeze(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    fill(&d, "f", 40);
    cJSON *j = au_call(&d, "POST", "/v1/sessions/f/freeze", 200, NULL);
    assert_true(au_bool(j, "frozen"));
    cJSON_Delete(j);
    j = au_call(&d, "GET", "/v1/sessions/f/freeze", 200, NULL);
    assert_true(au_bool(j, "frozen"));
    cJSON_Delete(j);
    mh_resp r;
    const char *ev = "{\"events\":[{\"k\":[1,0,0,0,0,0,0,0],\"v\":[1,0,0,0,0,0,0,0]}]}";
    assert_int_equal(mh_request(&d, "POST", "/v1/sessions/f/events", ev, NULL, &r), 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(mh_error_code(&r), "frozen");
    char ra[16];
    assert_non_null(mh_resp_header(&r, "Retry-After", ra, sizeof ra));
    mh_resp_free(&r);
    au_error(&d, "PUT", "/v1/sessions/f/slots/fact", 503, "frozen", "{\"payload\":\"x\"}");
    au_error(&d, "DELETE", "/v1/sessions/f/slots/fact", 503, "frozen", NULL);
    /* reads and exports go on */
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/f/query", 200, "%s", QUERIES));
    size_t len;
    free(export_of(&d, "f", &len));
    j = au_call(&d, "POST", "/v1/sessions/f/unfreeze", 200, NULL);
    assert_false(au_bool(j, "frozen"));
    cJSON_Delete(j);
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/f/events", 200, "%s", ev));
    /* a frozen session can be deleted (a move ends so); the freeze goes with it */
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/f/freeze", 200, NULL));
    cJSON_Delete(au_call(&d, "DELETE", "/v1/sessions/f", 204, NULL));
    au_error(&d, "POST", "/v1/sessions/f/freeze", 404, "no_session", NULL);
    cJSON_Delete(au_call(&d, "PUT", "/v1/sessions/f", 201, "{\"dim\":8}"));
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/f/events", 200, "%s", ev));
    assert_int_equal(mh_stop(&d, 20000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_export_import_same_bits, mh_teardown),
        cmocka_unit_test_teardown(test_freeze, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
