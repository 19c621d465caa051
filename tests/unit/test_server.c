/*
 * tests/unit/test_server.c — the server in-process with test routes, for what the daemon's own routes
 * cannot show: asynchronous answers from worker jobs, pipelined answers kept in request order when
 * jobs finish out of order, a client leaving before its answer, 503 `overloaded` from a full queue,
 * path and query parameters, extra response headers, a JSON body (parsed as the API does, with
 * codec_parse_body), and the drain waiting for a job.
 * The server runs on its own loop in a thread; the test speaks HTTP over a socket.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "server/codec.h"
#include "server/log.h"
#include "server/server.h"

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    srv_server *srv;
    int port;
    pthread_t thread;
    atomic_int drained;
    atomic_int gate;        /* jobs with ms < 0 wait (bounded) for this */
} fixture;

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ---- test routes ---- */

typedef struct {
    srv_request *req;
    int ms;
    fixture *fx;
    char key[32];
} job;

static void job_work(void *arg)
{
    job *j = arg;
    if (j->ms >= 0) {
        sleep_ms(j->ms);
        return;
    }
    for (int i = 0; i < 10000 && !atomic_load(&j->fx->gate); i++)
        sleep_ms(1);
}

static void job_done(void *arg, int status)
{
    job *j = arg;
    if (status < 0)
        srv_respond_error(j->req, 503, "shutting_down", "cancelled");
    else
        srv_respond_json(j->req, 200, cJSON_CreateNumber(j->ms));
    free(j);
}

/* GET /sleep/{ms}?key=k : a job sleeping ms (negative: until the gate opens), answered from its done. */
static void h_sleep(srv_request *req, void *ud)
{
    job *j = calloc(1, sizeof(*j));
    j->req = req;
    j->fx = ud;
    j->ms = atoi(srv_req_param(req, "ms"));
    const char *key = srv_req_query(req, "key");
    int rc = srv_pool_submit(srv_server_pool(srv_req_server(req)), key, SRV_JOB_EXCLUSIVE, job_work, job_done, j);
    if (rc < 0) {
        free(j);
        srv_respond_error(req, 503, "overloaded", "worker queue full");
    }
}

/* POST /echo/{a}/x/{b}: echoes params, a query value, a header and the JSON body. */
static void h_echo(srv_request *req, void *ud)
{
    (void)ud;
    cJSON *body;
    codec_error ce;
    size_t len;
    const char *text = srv_req_body(req, &len);
    if (codec_parse_body(text, len, &body, &ce) < 0) {
        srv_respond_error(req, 400, ce.code, "%s", ce.message);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "a", srv_req_param(req, "a"));
    cJSON_AddStringToObject(o, "b", srv_req_param(req, "b"));
    const char *q = srv_req_query(req, "q");
    cJSON_AddStringToObject(o, "q", q ? q : "(none)");
    const char *e = srv_req_query(req, "e");
    cJSON_AddStringToObject(o, "e", e ? e : "(none)");
    const char *h = srv_req_header(req, "x-test");
    cJSON_AddStringToObject(o, "h", h ? h : "(none)");
    cJSON_AddStringToObject(o, "route", srv_req_route(req));
    if (body)
        cJSON_AddItemToObject(o, "body", body);
    assert_int_equal(srv_resp_header(req, "X-Echo", "yes"), 0);
    assert_int_equal(srv_resp_header(req, "Content-Length", "1"), MA_EINVAL);
    assert_int_equal(srv_resp_header(req, "X-Bad", "a\r\nb"), MA_EINVAL);
    srv_respond_json(req, 200, o);
}

static void on_drained(srv_server *srv, void *arg)
{
    (void)srv;
    fixture *fx = arg;
    atomic_store(&fx->drained, 1);
    uv_stop(&fx->loop);
}

static void drain_cb(uv_async_t *a)
{
    fixture *fx = a->data;
    uv_close((uv_handle_t *)a, NULL);
    srv_server_drain(fx->srv, on_drained, fx);
}

static void *loop_main(void *arg)
{
    fixture *fx = arg;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    return NULL;
}

static size_t small_limits;   /* when set: --max-body and --max-header-bytes of the next fixture */

static int fx_setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    cfg_config cfg;
    cfg_defaults(&cfg);
    if (small_limits) {
        cfg.max_body = small_limits;
        cfg.max_header_bytes = small_limits;
    }
    snprintf(cfg.listen, sizeof cfg.listen, "127.0.0.1:0");
    cfg.threads = 2;
    cfg.queue_max = 4;
    srv_log_setup(CFG_LOG_ERROR, CFG_LOG_TEXT);
    signal(SIGPIPE, SIG_IGN);   /* as memattnd's main does: a peer's reset must not kill the process */
    uv_loop_init(&fx->loop);
    char err[256], bound[64];
    assert_int_equal(srv_server_create(&fx->loop, &cfg, &fx->srv, err, sizeof err), 0);
    srv_router *r = srv_server_router(fx->srv);
    assert_int_equal(srv_route_add(r, "GET", "/sleep/{ms}", h_sleep, fx), 0);
    assert_int_equal(srv_route_add(r, "POST", "/echo/{a}/x/{b}", h_echo, fx), 0);
    assert_int_equal(srv_server_listen(fx->srv, bound, sizeof bound, err, sizeof err), 0);
    fx->port = atoi(strrchr(bound, ':') + 1);
    uv_async_init(&fx->loop, &fx->stop, drain_cb);
    fx->stop.data = fx;
    assert_int_equal(pthread_create(&fx->thread, NULL, loop_main, fx), 0);
    *state = fx;
    return 0;
}

/* Drains (from the loop thread), joins, destroys. */
static int fx_teardown(void **state)
{
    fixture *fx = *state;
    atomic_store(&fx->gate, 1);
    uv_async_send(&fx->stop);
    pthread_join(fx->thread, NULL);
    srv_server_destroy(fx->srv);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
    return 0;
}

/* ---- a tiny blocking client ---- */

static int conn(fixture *fx)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)fx->port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void sendall(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

typedef struct {
    char buf[65536];
    size_t len;
} rbuf;

static char last_head[4096];   /* the head of the last response read */

/* Reads one response (bounded wait); returns status and copies the body into body. */
static int read_resp(int fd, rbuf *rb, char *body, size_t blen)
{
    for (int tries = 0; tries < 1000; tries++) {
        char *end = memmem(rb->buf, rb->len, "\r\n\r\n", 4);
        if (end) {
            size_t head = (size_t)(end - rb->buf) + 4;
            char *cl = strcasestr(rb->buf, "Content-Length:");
            size_t clen = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
            if (rb->len >= head + clen) {
                int st = atoi(rb->buf + 9);
                snprintf(last_head, sizeof last_head, "%.*s", (int)head, rb->buf);
                if (body)
                    snprintf(body, blen, "%.*s", (int)clen, rb->buf + head);
                memmove(rb->buf, rb->buf + head + clen, rb->len - head - clen);
                rb->len -= head + clen;
                return st;
            }
        }
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 20) <= 0)
            continue;
        ssize_t r = recv(fd, rb->buf + rb->len, sizeof rb->buf - rb->len, 0);
        if (r <= 0)
            return 0;
        rb->len += (size_t)r;
    }
    return -1;
}

/* ---- tests ---- */

/* Three pipelined requests whose jobs finish in reverse order are answered in request order. */
static void test_pipeline_out_of_order(void **state)
{
    fixture *fx = *state;
    int fd = conn(fx);
    rbuf rb = { .len = 0 };
    sendall(fd, "GET /sleep/300?key=a HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /sleep/150?key=b HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /sleep/0?key=c HTTP/1.1\r\nHost: t\r\n\r\n");
    char body[64];
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 200);
    assert_string_equal(body, "300");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 200);
    assert_string_equal(body, "150");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 200);
    assert_string_equal(body, "0");
    close(fd);
}

/* The client leaves before its job finishes: the late answer is dropped, the server keeps serving. */
static void test_client_gone_before_answer(void **state)
{
    fixture *fx = *state;
    int fd = conn(fx);
    sendall(fd, "GET /sleep/200 HTTP/1.1\r\nHost: t\r\n\r\nGET /sleep/0 HTTP/1.1\r\nHost: t\r\n\r\n");
    sleep_ms(50);
    close(fd);
    sleep_ms(300);   /* the jobs complete into the void (ASan would catch a use after free) */
    fd = conn(fx);
    rbuf rb = { .len = 0 };
    sendall(fd, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(read_resp(fd, &rb, NULL, 0), 200);
    close(fd);
}

/* With 2 workers busy and 4 waiting, the next job is refused: 503 overloaded. */
static void test_overloaded(void **state)
{
    fixture *fx = *state;
    int fds[6];
    srv_pool *pool = srv_server_pool(fx->srv);
    /* Two jobs occupy both workers first (else a third could find the queue momentarily full). */
    for (int i = 0; i < 6; i++) {
        fds[i] = conn(fx);
        sendall(fds[i], "GET /sleep/-1 HTTP/1.1\r\nHost: t\r\n\r\n");
        for (int w = 0; w < 500 && srv_pool_pending(pool) < (size_t)i + 1; w++)
            sleep_ms(10);
        if (i == 1)
            for (int w = 0; w < 500 && srv_pool_waiting(pool) > 0; w++)
                sleep_ms(10);
    }
    assert_int_equal(srv_pool_pending(pool), 6);
    assert_int_equal(srv_pool_waiting(pool), 4);
    int fd = conn(fx);
    rbuf rb = { .len = 0 };
    char body[256];
    sendall(fd, "GET /sleep/0 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 503);
    assert_non_null(strstr(body, "\"overloaded\""));
    close(fd);
    atomic_store(&fx->gate, 1);
    for (int i = 0; i < 6; i++) {
        rbuf r2 = { .len = 0 };
        assert_int_equal(read_resp(fds[i], &r2, NULL, 0), 200);
        close(fds[i]);
    }
}

static void test_request_api(void **state)
{
    fixture *fx = *state;
    int fd = conn(fx);
    rbuf rb = { .len = 0 };
    char body[1024];
    sendall(fd, "POST /echo/p%3A1/x/two?q=a+b%21&e&q=second HTTP/1.1\r\nHost: t\r\nX-Test: hi\r\n"
                "Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"n\": 1}\n");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 200);
    assert_string_equal(body, "{\"a\":\"p:1\",\"b\":\"two\",\"q\":\"a b!\",\"e\":\"\",\"h\":\"hi\","
                              "\"route\":\"/echo/{a}/x/{b}\",\"body\":{\"n\":1}}");
    assert_non_null(strstr(last_head, "\r\nX-Echo: yes\r\n"));
    assert_null(strstr(last_head, "Connection: close"));
    /* Invalid JSON: 400 bad_json with the byte offset; the connection stays usable. */
    sendall(fd, "POST /echo/a/x/b HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n{\"n\":}");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 400);
    assert_non_null(strstr(body, "\"bad_json\""));
    assert_non_null(strstr(body, "byte 5"));
    sendall(fd, "POST /echo/a/x/b HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n{} x");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 400);
    /* Empty body: no document, still fine. */
    sendall(fd, "POST /echo/a/x/b HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(read_resp(fd, &rb, body, sizeof body), 200);
    assert_null(strstr(body, "\"body\""));
    close(fd);
}

/* The drain waits for jobs in flight: a single request's answer says Connection: close; two pipelined
 * requests read before the drain are both answered (the second was ready first and waited), then the
 * connection closes. */
static void test_drain_waits_for_job(void **state)
{
    fixture *fx = *state;
    int a = conn(fx), b = conn(fx);
    sendall(a, "GET /sleep/300 HTTP/1.1\r\nHost: t\r\n\r\n");
    sendall(b, "GET /sleep/300 HTTP/1.1\r\nHost: t\r\n\r\nGET /sleep/0 HTTP/1.1\r\nHost: t\r\n\r\n");
    sleep_ms(50);
    uv_async_send(&fx->stop);   /* begins the drain on the loop thread */
    rbuf ra = { .len = 0 }, rb = { .len = 0 };
    char body[64];
    assert_int_equal(read_resp(a, &ra, body, sizeof body), 200);
    assert_string_equal(body, "300");
    assert_non_null(strstr(last_head, "\r\nConnection: close\r\n"));
    assert_int_equal(read_resp(a, &ra, body, sizeof body), 0);   /* closed */
    assert_int_equal(read_resp(b, &rb, body, sizeof body), 200);
    assert_string_equal(body, "300");
    assert_int_equal(read_resp(b, &rb, body, sizeof body), 200);
    assert_string_equal(body, "0");
    assert_int_equal(read_resp(b, &rb, body, sizeof body), 0);   /* closed */
    close(a);
    close(b);
    pthread_join(fx->thread, NULL);
    assert_int_equal(atomic_load(&fx->drained), 1);
    /* The stop async is closed already: destroy without fx_teardown. */
    srv_server_destroy(fx->srv);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
    *state = NULL;
}

static int setup_small(void **state)
{
    small_limits = 1024;
    int rc = fx_setup(state);
    small_limits = 0;
    return rc;
}

/* A client pipelining large bodies is not read ahead without bound: with 1 KiB limits, reading
 * pauses once the queued requests hold more than 2 KiB, and resumes as answers go out. */
static void test_pipeline_bytes_bounded(void **state)
{
    fixture *fx = *state;
    static char all[16384], body[901];
    memset(body, ' ', 900);
    body[0] = '[';
    body[899] = ']';
    body[900] = '\0';
    size_t len = 0;
    for (int i = 0; i < 6; i++)
        len += (size_t)snprintf(all + len, sizeof all - len,
                                "GET /sleep/%d?key=k HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                "Content-Length: 900\r\n\r\n%s", i == 0 ? 300 : 0, body);
    int fd = conn(fx);
    sendall(fd, all);
    sleep_ms(150);   /* the first job sleeps 300 ms: meanwhile at most 3 requests may be queued */
    size_t pending = srv_pool_pending(srv_server_pool(fx->srv));
    assert_true(pending >= 1 && pending <= 3);
    rbuf rb = { .len = 0 };
    char out[64];
    for (int i = 0; i < 6; i++) {
        assert_int_equal(read_resp(fd, &rb, out, sizeof out), 200);
        assert_string_equal(out, i == 0 ? "300" : "0");
    }
    close(fd);
}

static int teardown_maybe(void **state)
{
    return *state ? fx_teardown(state) : 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pipeline_out_of_order, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_client_gone_before_answer, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_overloaded, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_request_api, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pipeline_bytes_bounded, setup_small, fx_teardown),
        cmocka_unit_test_setup_teardown(test_drain_waits_for_job, fx_setup, teardown_maybe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
