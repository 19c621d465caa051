/*
 * tests/e2e/test_http_mutations.c — robustness: valid requests mutated at random (bytes flipped,
 * inserted, deleted, truncated) are sent to the daemon, each on its own connection. Whatever the
 * bytes, the daemon must answer with a well-formed HTTP response or close the connection, keep
 * serving, and exit 0 on SIGTERM (under the sanitizer build any memory error fails it). Fixed seed.
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
#include <unistd.h>

#include "harness.h"

static const char *const seeds[] = {
    "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    "GET /metrics?x=1&y=%41 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
    "POST /v1/sessions/abc/slots HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    "Content-Length: 17\r\n\r\n{\"name\":\"x\",\"a\":1}",
    "PUT /v1/sessions/s/slots/n HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
    "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
};

static size_t mutate(const char *src, char *out, size_t cap)
{
    size_t n = strlen(src);
    memcpy(out, src, n);
    int edits = 1 + rand() % 4;
    for (int e = 0; e < edits && n > 0; e++) {
        size_t at = (size_t)rand() % n;
        static const char interesting[] = "\r\n :\t%0{}\"\x00\xff-9";
        char ch = rand() % 2 ? (char)(rand() % 256) : interesting[rand() % (sizeof interesting - 1)];
        switch (rand() % 4) {
        case 0: out[at] = ch; break;                                        /* flip */
        case 1: if (n + 1 < cap) { memmove(out + at + 1, out + at, n - at); out[at] = ch; n++; } break;
        case 2: memmove(out + at, out + at + 1, n - at - 1); n--; break;    /* delete */
        case 3: n = at + 1; break;                                          /* truncate */
        }
    }
    return n;
}

static void test_mutated_requests(void **state)
{
    (void)state;
    mh_daemon d;
    /* Short timeouts: truncated requests end in 408 or a close instead of a long wait. */
    const char *args[] = { "--header-timeout", "200ms", "--body-timeout", "200ms", "--idle-timeout", "100ms", NULL };
    assert_int_equal(mh_start(&d, args, NULL), 0);
    srand(20261128);
    int answered = 0, closed = 0;
    for (int i = 0; i < 300; i++) {
        char buf[512];
        size_t n = mutate(seeds[i % (sizeof seeds / sizeof *seeds)], buf, sizeof buf);
        int fd = mh_connect(&d);
        assert_true(fd >= 0);
        mh_send(fd, buf, n);   /* may fail if the daemon already closed */
        /* Three in four half-close (the daemon answers what is complete, then closes at once); the
         * others leave the daemon to its timeouts. */
        if (i % 4)
            shutdown(fd, SHUT_WR);
        mh_reader rb;
        mh_reader_init(&rb, fd);
        int st;
        /* Read every answer until the daemon closes (or stays quiet past the idle timeout). */
        while ((st = mh_read_response(&rb, NULL, 3000)) > 0) {
            if (st < 100 || st > 599)
                fail_msg("request %d: status %d", i, st);
            answered++;
        }
        if (st == 0)
            closed++;
        close(fd);
    }
    /* Still serving, correctly. */
    mh_resp r;
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    print_message("mutations: %d answers, %d connections closed by the daemon\n", answered, closed);
    assert_true(answered > 0);
    assert_int_equal(mh_stop(&d, 20000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_mutated_requests, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
