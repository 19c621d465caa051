/*
 * tests/e2e/harness.h — what every end-to-end test uses to drive the real daemon.
 *
 * mh_start() runs $MEMATTN_BIN (build/memattnd) with `--listen 127.0.0.1:0 --data <fresh temp dir>`
 * plus the test's arguments, reads the `listening on HOST:PORT` line from its standard output, and
 * returns; the daemon's standard error goes to <temp dir>/stderr.log (shown by mh_stop when
 * MEMATTN_E2E_VERBOSE is set, or by mh_dump_log). mh_stop() sends SIGTERM and waits (bounded) for
 * the exit status, then removes the temp dir.
 * Requests: mh_request() with libcurl (one easy handle per daemon, so keep-alive is reused), and
 * raw-socket helpers for what curl will not send: malformed, pipelined and slow requests.
 * Helpers return negative values on failure instead of asserting, so tests state what they expect.
 */
#ifndef MH_HARNESS_H
#define MH_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

typedef struct {
    pid_t pid;
    int port;
    char host[64];
    char base[128];            /* "http://127.0.0.1:PORT" */
    char dir[256];             /* temp dir: data/ and stderr.log inside */
    char data_dir[300];
    char log_path[300];
    void *curl;                /* CURL*, reused between requests (keep-alive) */
} mh_daemon;

typedef struct {
    long status;               /* HTTP status, 0 when the transfer failed */
    char *body;                /* NUL-terminated */
    size_t len;
    char *headers;             /* raw response head, NUL-terminated */
} mh_resp;

/* Starts the daemon. `args` is a NULL-terminated list of extra arguments (NULL = none), `env` a
 * NULL-terminated list of "NAME=value" added to the environment (NULL = none). 0 or -1 (a message
 * on stderr). */
int mh_start(mh_daemon *d, const char *const *args, const char *const *env);

/* mh_start with another daemon binary (NULL: $MEMATTN_BIN as mh_start). */
int mh_start_bin(mh_daemon *d, const char *bin, const char *const *args, const char *const *env);

/* A data directory of a test's own that outlives daemons (restart tests): mh_data_dir makes a fresh
 * /tmp/memattn-<name>XXXXXX (malloc'd; NULL on failure), mh_rm_data removes it with its contents and
 * frees the string. mh_start_on starts `bin` (NULL: the shipped daemon) with --data dir and up to 13
 * extra arguments (NULL-terminated, may be NULL); as mh_start_bin. */
char *mh_data_dir(const char *name);
void mh_rm_data(char *dir);
int mh_start_on(mh_daemon *d, const char *bin, const char *dir, const char *const *extra, const char *const *env);

/* The test daemon: memattnd with the test hooks of tests/support/ (fault injection through
 * MEMATTN_STORE_FAULT), $MEMATTN_TEST_BIN or build/memattnd-test. The shipped daemon ignores it. */
const char *mh_test_bin(void);

/* SIGTERM, wait up to `timeout_ms` for the exit. Returns the exit status (0..255), 128+signal when
 * killed by a signal, or -1 when it had to be SIGKILLed after the timeout. Cleans up. */
int mh_stop(mh_daemon *d, int timeout_ms);

/* Sends a signal without waiting; mh_wait waits for the exit like mh_stop (and cleans up). */
void mh_signal(mh_daemon *d, int sig);
int mh_wait(mh_daemon *d, int timeout_ms);

/* SIGKILL (no drain, no close of the store) and reap: waits until the process is dead, empties its log
 * first (the harness prints the log of every daemon that did not exit 0, and such kills are intended),
 * then mh_wait. Returns mh_wait's status: 128 + SIGKILL for a daemon that was running. */
int mh_kill9(mh_daemon *d);

/* A cmocka teardown: SIGKILLs and cleans up every daemon a failed test left running (also done at
 * exit). Use cmocka_unit_test_teardown(test, mh_teardown). Always returns 0. */
int mh_teardown(void **state);

/* Prints the daemon's stderr log to stderr (for failing tests). */
void mh_dump_log(const mh_daemon *d);

/* True when the daemon's stderr log contains `needle`. */
bool mh_log_contains(const mh_daemon *d, const char *needle);

/* One request over the daemon's reused libcurl handle. `body` may be NULL (no body); `headers` is a
 * NULL-terminated list of "Name: value" (NULL = none). Returns 0 (r filled, status may be any) or -1
 * on a transport error (r->status 0). Free r with mh_resp_free. */
int mh_request(mh_daemon *d, const char *method, const char *path, const char *body,
               const char *const *headers, mh_resp *r);
void mh_resp_free(mh_resp *r);

/* A response header's value (case-insensitive name) copied into buf; NULL when absent. */
const char *mh_resp_header(const mh_resp *r, const char *name, char *buf, size_t len);

/* The body parsed as JSON (caller frees), NULL when it is not JSON. */
cJSON *mh_resp_json(const mh_resp *r);

/* The `error.code` of an API.md error body, or "" when the body is not one (static buffer). */
const char *mh_error_code(const mh_resp *r);

/* ---- raw sockets ---- */

/* A blocking TCP connection to the daemon; fd or -1. */
int mh_connect(const mh_daemon *d);

/* The same with SO_RCVBUF set to `rcvbuf` bytes before connecting (a client whose kernel buffers little,
 * so a daemon's unsent answers pile up on the daemon's side). */
int mh_connect_rcvbuf(const mh_daemon *d, int rcvbuf);

/* Writes all of data; 0 or -1. */
int mh_send(int fd, const char *data, size_t len);
int mh_sends(int fd, const char *s);   /* a C string */

/* Reads one HTTP response from fd (status line, headers, Content-Length body), waiting at most
 * timeout_ms in total. Returns the status, 0 if the peer closed before a response started, -1 on
 * timeout or a malformed response. `r` (if non-NULL) gets head and body. Bytes after the response
 * stay buffered in `rb` for the next call: use one mh_reader per connection. */
typedef struct {
    int fd;
    char buf[1 << 16];
    size_t len;
} mh_reader;
void mh_reader_init(mh_reader *rb, int fd);
int mh_read_response(mh_reader *rb, mh_resp *r, int timeout_ms);

/* True when the peer has closed the connection (EOF or reset) within timeout_ms, discarding data. */
bool mh_wait_closed(int fd, int timeout_ms);

/* Milliseconds sleep. */
void mh_sleep_ms(int ms);

#endif
