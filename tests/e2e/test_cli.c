/*
 * tests/e2e/test_cli.c — the daemon's command line as a user meets it: --help, --version, refusals
 * with exit status 2 naming the key and its source, configuration from a file and the environment
 * reaching the running server, and IPv6 listening.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Runs the daemon binary with args and env additions; collects stdout+stderr into out; returns the
 * exit status. Only for invocations that exit on their own (help, version, refusals). */
static int run(const char *const *args, const char *const *env, char *out, size_t outlen)
{
    const char *bin = getenv("MEMATTN_BIN") ? getenv("MEMATTN_BIN") : "build/memattnd";
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        const char *argv[32] = { bin };
        int n = 1;
        for (int i = 0; args && args[i]; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < outlen && (r = read(p[0], out + len, outlen - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(p[0]);
    int ws;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static void test_help_version(void **state)
{
    (void)state;
    char out[16384];
    assert_int_equal(run((const char *[]){ "--version", NULL }, NULL, out, sizeof out), 0);
    assert_true(strncmp(out, "memattnd ", 9) == 0);
    assert_int_equal(run((const char *[]){ "--help", NULL }, NULL, out, sizeof out), 0);
    assert_non_null(strstr(out, "--listen"));
    assert_non_null(strstr(out, "MEMATTN_MAX_BODY"));
    assert_non_null(strstr(out, "--drain-timeout"));
}

static void test_refusals_exit_2(void **state)
{
    (void)state;
    char out[4096];
    assert_int_equal(run((const char *[]){ "--threads", "zero", NULL }, NULL, out, sizeof out), 2);
    assert_non_null(strstr(out, "--threads"));
    assert_non_null(strstr(out, "1..1024"));
    assert_int_equal(run((const char *[]){ "--bogus", NULL }, NULL, out, sizeof out), 2);
    assert_non_null(strstr(out, "--bogus: unknown option"));
    assert_int_equal(run(NULL, (const char *[]){ "MEMATTN_MAX_BODY=lots", NULL }, out, sizeof out), 2);
    assert_non_null(strstr(out, "MEMATTN_MAX_BODY: max-body: \"lots\""));

    char path[] = "/tmp/memattn-cli-XXXXXX";
    int fd = mkstemp(path);
    const char *text = "# sample\nlisten = 127.0.0.1:0\nlog_levle = debug\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(run((const char *[]){ "--config", path, NULL }, NULL, out, sizeof out), 2);
    char where[64];
    snprintf(where, sizeof where, "%s:3: unknown key \"log_levle\"", path);
    assert_non_null(strstr(out, where));
    unlink(path);

    /* A port already in use: exit 1 with the address named. */
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    char listen[80];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", d.port);
    /* Its own fresh data directory: a shared one (/tmp) may hold another daemon's database. */
    char data[] = "/tmp/memattn-cli-data-XXXXXX";
    assert_non_null(mkdtemp(data));
    assert_int_equal(run((const char *[]){ "--listen", listen, "--data", data, NULL }, NULL, out, sizeof out), 1);
    assert_non_null(strstr(out, listen));
    assert_int_equal(mh_stop(&d, 20000), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    assert_int_equal(system(cmd), 0);
}

/* The shipped sample file is valid, and file < env < flag reach the running daemon. */
static void test_sources_reach_the_server(void **state)
{
    (void)state;
    char path[] = "/tmp/memattn-cli-XXXXXX";
    int fd = mkstemp(path);
    const char *text = "token = fromfile\nmax_uri = 64\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    mh_daemon d;
    /* env overrides the file's token; the flag overrides the env's max-uri */
    assert_int_equal(mh_start(&d, (const char *[]){ "--config", path, "--max-uri", "128", NULL },
                              (const char *[]){ "MEMATTN_TOKEN=fromenv", "MEMATTN_MAX_URI=32", NULL }), 0);
    mh_resp r;
    assert_int_equal(mh_request(&d, "GET", "/v1/x", NULL, (const char *[]){ "Authorization: Bearer fromfile", NULL }, &r), 0);
    assert_int_equal(r.status, 401);
    mh_resp_free(&r);
    assert_int_equal(mh_request(&d, "GET", "/v1/x", NULL, (const char *[]){ "Authorization: Bearer fromenv", NULL }, &r), 0);
    assert_int_equal(r.status, 404);
    mh_resp_free(&r);
    char p100[120] = "/";
    memset(p100 + 1, 'a', 99);
    p100[100] = '\0';
    assert_int_equal(mh_request(&d, "GET", p100, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 404);   /* 100 bytes: within the flag's 128 */
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);
    unlink(path);

    /* The sample config in the repository starts a daemon (its listen/data are overridden by the
     * harness's flags). */
    assert_int_equal(mh_start(&d, (const char *[]){ "--config", "config/memattn.conf", NULL }, NULL), 0);
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);
}

/* --node-id: in the /healthz body and an X-Memattn-Node header on every answer, errors included;
 * neither without it. */
static void test_node_id(void **state)
{
    (void)state;
    mh_daemon d;
    mh_resp r;
    assert_int_equal(mh_start(&d, (const char *[]){ "--node-id", "n2", NULL }, NULL), 0);
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"ok\",\"node\":\"n2\"}");
    assert_non_null(strstr(r.headers, "\r\nX-Memattn-Node: n2\r\n"));
    mh_resp_free(&r);
    const char *paths[] = { "/v1/nothing", "/v1/sessions/nope", "/metrics" };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        assert_int_equal(mh_request(&d, "GET", paths[i], NULL, NULL, &r), 0);
        assert_non_null(strstr(r.headers, "\r\nX-Memattn-Node: n2\r\n"));
        mh_resp_free(&r);
    }
    assert_int_equal(mh_request(&d, "PUT", "/v1/sessions/s1", "{}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    assert_non_null(strstr(r.headers, "\r\nX-Memattn-Node: n2\r\n"));
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);

    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_null(strstr(r.headers, "X-Memattn-Node"));
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);
}

/* systemd's readiness protocol: READY=1 once the daemon serves (store open), STOPPING=1 at SIGTERM. */
static void test_sd_notify(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-notify-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/notify", dir);
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = { .tv_sec = 20 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char env[160];
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", sa.sun_path);
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, (const char *[]){ env, NULL }), 0);
    char buf[128];
    ssize_t n = recv(s, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "READY=1");
    mh_resp r;
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);
    n = recv(s, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "STOPPING=1");
    close(s);
    unlink(sa.sun_path);
    rmdir(dir);
}

static void test_ipv6(void **state)
{
    (void)state;
    /* Containers often have IPv6 sockets but no ::1: skip unless ::1 can be bound. */
    int s = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    bool ok = s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0;
    if (s >= 0)
        close(s);
    if (!ok)
        skip();
    mh_daemon d;
    assert_int_equal(mh_start(&d, (const char *[]){ "--listen", "[::1]:0", NULL }, NULL), 0);
    assert_string_equal(d.host, "[::1]");
    mh_resp r;
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_help_version, mh_teardown),
        cmocka_unit_test_teardown(test_refusals_exit_2, mh_teardown),
        cmocka_unit_test_teardown(test_sources_reach_the_server, mh_teardown),
        cmocka_unit_test_teardown(test_node_id, mh_teardown),
        cmocka_unit_test_teardown(test_sd_notify, mh_teardown),
        cmocka_unit_test_teardown(test_ipv6, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
