/*
 * tests/e2e/test_harden_http.c — issue 12, items 7, 8 and 9, against the real daemon:
 *   7  a request line without an HTTP version is 400, a version other than 1.0/1.1 is 505;
 *   9  a second copy of a security-relevant header (Authorization, Content-Length, Host, ...) is 400,
 *      whatever the copies say, while repeated harmless headers pass;
 *   8  many connections that pipeline without ever reading cost the daemon a bounded amount of memory:
 *      its RSS and high-water mark (/proc/PID/status) grow by less than a fixed bound per connection.
 * No test asserts a duration: every wait is bounded generously, and "the client is blocked" is decided
 * by the daemon's CPU time standing still, not by a clock.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#define WAIT 10000   /* ms: bound on any single wait; never reached by a working daemon */

static void start(mh_daemon *d, const char *const *args, const char *const *env)
{
    assert_int_equal(mh_start(d, args, env), 0);
}

static void stop_ok(mh_daemon *d)
{
    assert_int_equal(mh_stop(d, 20000), 0);
}

/* Sends req on a fresh connection; expects `status` with `code`, Connection: close, then the close.
 * Returns the error message (static buffer) for further checks. */
static const char *expect_closed(mh_daemon *d, const char *req, int status, const char *code, const char *what)
{
    static char msg[512];
    int fd = mh_connect(d);
    assert_true(fd >= 0);
    assert_int_equal(mh_sends(fd, req), 0);
    mh_reader rb;
    mh_reader_init(&rb, fd);
    mh_resp r;
    int st = mh_read_response(&rb, &r, WAIT);
    if (st != status)
        fail_msg("%s: expected %d, got %d", what, status, st);
    if (strcmp(mh_error_code(&r), code) != 0)
        fail_msg("%s: expected code %s, got %s", what, code, mh_error_code(&r));
    assert_non_null(strstr(r.headers, "Connection: close"));
    cJSON *j = mh_resp_json(&r);
    const cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message");
    snprintf(msg, sizeof msg, "%s", cJSON_IsString(m) ? m->valuestring : "");
    cJSON_Delete(j);
    mh_resp_free(&r);
    if (!mh_wait_closed(fd, WAIT))
        fail_msg("%s: connection not closed", what);
    close(fd);
    return msg;
}

static int status_of(mh_daemon *d, const char *req)
{
    int fd = mh_connect(d);
    assert_true(fd >= 0);
    assert_int_equal(mh_sends(fd, req), 0);
    mh_reader rb;
    mh_reader_init(&rb, fd);
    int st = mh_read_response(&rb, NULL, WAIT);
    close(fd);
    return st;
}

static void test_http_versions(void **state)
{
    (void)state;
    mh_daemon d;
    start(&d, NULL, NULL);
    const char *m = expect_closed(&d, "GET /healthz\r\n\r\n", 400, "bad_request", "no version");
    assert_non_null(strstr(m, "no HTTP version"));
    expect_closed(&d, "GET /healthz\r\nHost: t\r\n\r\n", 400, "bad_request", "no version, with a header");
    expect_closed(&d, "GET /healthz HTTP/0.9\r\nHost: t\r\n\r\n", 400, "bad_request", "HTTP/0.9");
    expect_closed(&d, "GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505, "http_version_not_supported", "HTTP/2.0");
    expect_closed(&d, "GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n", 400, "bad_request", "HTTP/1.2 (llhttp)");
    expect_closed(&d, "POST /v1/sessions HTTP/2.0\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", 505,
                  "http_version_not_supported", "HTTP/2.0 with a body");
    assert_int_equal(status_of(&d, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"), 200);
    assert_int_equal(status_of(&d, "GET /healthz HTTP/1.0\r\n\r\n"), 200);
    stop_ok(&d);
}

static void test_duplicate_headers(void **state)
{
    (void)state;
    mh_daemon d;
    start(&d, (const char *[]){ "--token", "s3cret", NULL }, NULL);
    static const struct { const char *head, *name; } dups[] = {
        { "GET /v1/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\nAuthorization: Bearer wrong\r\n\r\n",
          "Authorization" },
        { "GET /v1/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nauthorization: Bearer s3cret\r\n\r\n",
          "Authorization" },
        { "GET /v1/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\nAuthorization: Bearer s3cret\r\n\r\n",
          "Authorization" },
        { "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "Host" },
        { "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Type: text/plain\r\n"
          "Content-Length: 2\r\n\r\n{}", "Content-Type" },
        { "PUT /v1/sessions/s/slots/a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\nIf-Match: \"1\"\r\n"
          "If-Match: \"2\"\r\nContent-Length: 2\r\n\r\n{}", "If-Match" },
        { "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
          "0\r\n\r\n", NULL /* llhttp or the check: either way 400 */ },
        { "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", NULL },
    };
    for (size_t i = 0; i < sizeof dups / sizeof *dups; i++) {
        char what[64];
        snprintf(what, sizeof what, "duplicate #%zu", i);
        const char *m = expect_closed(&d, dups[i].head, 400, "bad_request", what);
        if (dups[i].name && !strstr(m, dups[i].name))
            fail_msg("%s: message \"%s\" does not name %s", what, m, dups[i].name);
    }
    /* Repeated headers with no say in framing or auth still pass. */
    assert_int_equal(status_of(&d, "GET /healthz HTTP/1.1\r\nHost: t\r\nAccept: a\r\nAccept: b\r\nX-Trace: 1\r\n"
                                   "X-Trace: 2\r\n\r\n"), 200);
    assert_int_equal(status_of(&d, "GET /v1/sessions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\n\r\n"), 200);
    stop_ok(&d);
}

/* ---- item 8 ---- */

static long proc_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, strlen(field)) == 0 && line[strlen(field)] == ':')
            v = strtol(line + strlen(field) + 1, NULL, 10);
    fclose(f);
    return v;
}

/* utime + stime of the daemon, in clock ticks. */
static long long cpu_ticks(pid_t pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

/* C connections with a 4 KiB receive buffer pipeline GETs and never read. Sends go on until
 * no connection accepts a byte and the daemon's CPU time stands still over a poll: every connection is
 * then parked (its reading paused, the kernel buffers full). Then the daemon's memory is read. */
static void test_pipeline_memory_bounded(void **state)
{
    (void)state;
    enum { C = 32, PER_CONN_KB = 512 };
    const char *bin = getenv("MEMATTN_BIN");
    bool tsan = bin && strstr(bin, "/tsan/");   /* shadow memory: RSS is not the program's */
    mh_daemon d;
    /* No ASan quarantine: freed blocks are reused at once, as with the real allocator. */
    start(&d, (const char *[]){ "--log-level", "warn", "--threads", "2", NULL },
          (const char *[]){ "ASAN_OPTIONS=quarantine_size_mb=0", NULL });
    /* /metrics answers (several KiB each) fill the kernel's socket buffers in few requests. */
    static char reqs[256 * 28];
    size_t rlen = 0;
    for (int i = 0; i < 256; i++)
        rlen += (size_t)sprintf(reqs + rlen, "GET %s HTTP/1.1\r\n\r\n", i % 4 ? "/metrics" : "/healthz");
    /* Warm up: the allocator's and libuv's first requests, a pipelined burst read back in full. */
    {
        int fd = mh_connect(&d);
        assert_int_equal(mh_send(fd, reqs, rlen), 0);
        mh_reader rb;
        mh_reader_init(&rb, fd);
        for (int i = 0; i < 256; i++)
            assert_int_equal(mh_read_response(&rb, NULL, WAIT), 200);
        close(fd);
    }
    long rss0 = proc_kb(d.pid, "VmRSS"), hwm0 = proc_kb(d.pid, "VmHWM");
    assert_true(rss0 > 0 && hwm0 > 0);

    int fds[C];
    size_t off[C];
    unsigned long long sent = 0;
    for (int i = 0; i < C; i++) {
        fds[i] = mh_connect_rcvbuf(&d, 4096);
        assert_true(fds[i] >= 0);
        off[i] = 0;
    }
    int quiet = 0, polls = 0;
    /* Bounded: 200 idle polls at most (a runtime with a background thread, TSan's, never stands still). */
    for (int round = 0; round < 200000 && quiet < 3 && polls < 200; round++) {
        bool moved = false;
        for (int i = 0; i < C; i++)
            for (;;) {
                ssize_t w = send(fds[i], reqs + off[i], rlen - off[i], MSG_DONTWAIT | MSG_NOSIGNAL);
                if (w <= 0)
                    break;
                moved = true;
                sent += (unsigned long long)w;
                off[i] = (off[i] + (size_t)w) % rlen;
            }
        if (moved) {
            quiet = 0;
            continue;
        }
        long long t0 = cpu_ticks(d.pid);
        struct pollfd p[C];
        for (int i = 0; i < C; i++)
            p[i] = (struct pollfd){ .fd = fds[i], .events = POLLOUT };
        int n = poll(p, C, 300);
        polls++;
        if (n == 0 && cpu_ticks(d.pid) <= t0 + 1)   /* at most one tick (10 ms) of CPU in 300 ms */
            quiet++;
        else
            quiet = 0;
    }
    if (!tsan)
        assert_int_equal(quiet, 3);
    long rss1 = proc_kb(d.pid, "VmRSS"), hwm1 = proc_kb(d.pid, "VmHWM");
    print_message("pipelining without reading: %d connections, %.1f MB sent; daemon VmRSS %ld -> %ld kB, "
                  "VmHWM %ld -> %ld kB (%ld kB per connection)\n", C, (double)sent / 1e6, rss0, rss1, hwm0, hwm1,
                  (hwm1 - hwm0) / C);
    if (!tsan) {
        if (rss1 - rss0 > (long)C * PER_CONN_KB || hwm1 - hwm0 > (long)C * PER_CONN_KB)
            fail_msg("memory grew by %ld kB RSS, %ld kB HWM: more than %d kB per connection", rss1 - rss0,
                     hwm1 - hwm0, PER_CONN_KB);
    }
    for (int i = 0; i < C; i++)
        close(fds[i]);
    /* Still serving. */
    assert_int_equal(status_of(&d, "GET /healthz HTTP/1.1\r\n\r\n"), 200);
    stop_ok(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_http_versions, mh_teardown),
        cmocka_unit_test_teardown(test_duplicate_headers, mh_teardown),
        cmocka_unit_test_teardown(test_pipeline_memory_bounded, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
