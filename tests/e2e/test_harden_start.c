/*
 * tests/e2e/test_harden_start.c — issue 12, item 5: `listening on` is printed only once the daemon can
 * serve. A data directory whose store cannot be opened (a file that is not a database, a path that is
 * a file) makes the daemon exit 1 naming the store, without ever printing `listening on` or accepting a
 * connection; a good one prints it and answers at once.
 * The store's integrity check reads the whole file: with --store-check open a store whose rows do not
 * add up is such a failure to start; by default it runs beside serving, and once it fails every request
 * that needs the store answers 503 storage_error naming what is wrong (docs/STORE.md, "Integrity").
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

#include <sqlite3.h>

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

static void test_store_check(void **state)
{
    (void)state;
    char *dir = mh_data_dir("check");
    assert_non_null(dir);
    mh_daemon d;
    assert_int_equal(mh_start_on(&d, NULL, dir, NULL, NULL), 0);
    mh_resp r;
    assert_int_equal(mh_request(&d, "PUT", "/v1/sessions/s", "{\"dim\":4}", NULL, &r), 0);
    assert_int_equal(r.status, 201);
    mh_resp_free(&r);
    char body[32768];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"events\":[");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(body + n, sizeof body - n, "%s{\"k\":[%d,1,0,0],\"v\":[0,%d,1,0]}", i ? "," : "", i % 7,
                              i % 5);
    snprintf(body + n, sizeof body - n, "]}");
    assert_int_equal(mh_request(&d, "POST", "/v1/sessions/s/events", body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 20000), 0);

    /* The rows stop adding up: one event row of the session gone. */
    char path[512];
    snprintf(path, sizeof path, "%s/memattn.db", dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM event_blocks WHERE block = 1", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_changes(db), 1);
    sqlite3_close(db);

    /* Checked before serving: a failure to start. */
    char out[4096], err[8192];
    int st = run((const char *[]){ "--listen", "127.0.0.1:0", "--data", dir, "--store-check", "open", NULL }, out,
                 sizeof out, err, sizeof err);
    if (st != 1 || strstr(out, "listening on") || !strstr(err, "integrity check failed"))
        fail_msg("--store-check open: exit %d, stdout \"%s\", stderr \"%s\"", st, out, err);

    /* Checked beside serving (the default): it listens at once, and the listing (which reads only the
     * session rows, not the damaged events) is served until the check has failed; from then on every
     * request that reads the store is refused naming the damage, and the log says so. */
    assert_int_equal(mh_start_on(&d, NULL, dir, NULL, NULL), 0);
    long status = 0;
    for (int i = 0; i < 2000 && status != 503; i++) {
        assert_int_equal(mh_request(&d, "GET", "/v1/sessions", NULL, NULL, &r), 0);
        status = r.status;
        if (status == 503) {
            assert_string_equal(mh_error_code(&r), "storage_error");
            if (!strstr(r.body, "integrity check failed") || !strstr(r.body, "session 's' has length 300"))
                fail_msg("503 without the check's message: %s", r.body);
        } else
            assert_int_equal(status, 200);   /* served while the check runs */
        mh_resp_free(&r);
        if (status != 503)
            mh_sleep_ms(10);
    }
    assert_int_equal(status, 503);
    assert_true(mh_log_contains(&d, "the store now refuses every request"));
    assert_int_equal(mh_stop(&d, 20000), 0);
    mh_rm_data(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_listening_line_without_a_store),
        cmocka_unit_test_teardown(test_listening_means_serving, mh_teardown),
        cmocka_unit_test_teardown(test_store_check, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
