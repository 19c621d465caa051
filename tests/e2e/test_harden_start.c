/*
 * tests/e2e/test_harden_start.c — issue 12, item 5: `listening on` is printed only once the daemon can
 * serve. A data directory whose store cannot be opened (a file that is not a database, a path that is
 * a file) makes the daemon exit 1 naming the store, without ever printing `listening on` or accepting a
 * connection; a good one prints it and answers at once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Runs the daemon with args; stdout and stderr into separate buffers; returns the exit status. Only
 * for invocations that exit on their own. */
static int run(const char *const *args, char *out, size_t outlen, char *err, size_t errlen)
{
    const char *bin = getenv("MEMATTN_BIN") ? getenv("MEMATTN_BIN") : "build/memattnd";
    int po[2], pe[2];
    assert_int_equal(pipe(po), 0);
    assert_int_equal(pipe(pe), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(po[1]);
        close(pe[0]);
        close(pe[1]);
        const char *argv[32] = { bin };
        int n = 1;
        for (int i = 0; args && args[i]; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    /* The daemon exits by itself here; stderr is small, read it after stdout reaches EOF. */
    size_t len = 0;
    ssize_t r;
    while (len + 1 < outlen && (r = read(po[0], out + len, outlen - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    len = 0;
    while (len + 1 < errlen && (r = read(pe[0], err + len, errlen - 1 - len)) > 0)
        len += (size_t)r;
    err[len] = '\0';
    close(po[0]);
    close(pe[0]);
    int ws;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static void test_no_listening_line_without_a_store(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-start-XXXXXX", path[256], out[4096], err[8192];
    assert_non_null(mkdtemp(dir));
    /* 1. memattn.db is not a database. */
    snprintf(path, sizeof path, "%s/memattn.db", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 512; i++)
        fputs("this is not an sqlite database. ", f);
    fclose(f);
    int st = run((const char *[]){ "--listen", "127.0.0.1:0", "--data", dir, NULL }, out, sizeof out, err, sizeof err);
    if (st != 1 || strstr(out, "listening on"))
        fail_msg("corrupt store: exit %d, stdout \"%s\", stderr \"%s\"", st, out, err);
    assert_non_null(strstr(err, "memattn.db"));
    unlink(path);
    snprintf(path, sizeof path, "%s/memattn.lock", dir);
    unlink(path);
    /* 2. The data directory is a regular file. */
    snprintf(path, sizeof path, "%s/file", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    st = run((const char *[]){ "--listen", "127.0.0.1:0", "--data", path, NULL }, out, sizeof out, err, sizeof err);
    if (st != 1 || strstr(out, "listening on"))
        fail_msg("data dir is a file: exit %d, stdout \"%s\", stderr \"%s\"", st, out, err);
    unlink(path);
    rmdir(dir);
}

static void test_listening_means_serving(void **state)
{
    (void)state;
    /* mh_start returns right after the line: the very first request must be served. */
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    mh_resp r;
    assert_int_equal(mh_request(&d, "PUT", "/v1/sessions/first", "{\"dim\":4}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_listening_line_without_a_store),
        cmocka_unit_test_teardown(test_listening_means_serving, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
