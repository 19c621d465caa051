/*
 * tests/e2e/test_setup.c — setting the daemon up does what it says: `make run` installs only the
 * daemon's packages and passes ARGS to it, `make test` / `make bench` bring their own; the daemon
 * names the absolute data directory it uses; every start-up failure (a data directory that cannot be
 * created, a port in use) happens before `listening on` is printed, with exit status 1.
 *
 * The make checks run `make -n` (nothing is built or installed) in the current directory, which is the
 * repository root under `make check`; they are skipped when there is no Makefile there.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Runs argv (argv[0] looked up in PATH) with MAKEFLAGS/MAKELEVEL removed (so an enclosing `make SAN=1`
 * does not leak in); stdout into out, stderr into err (either may be NULL); returns the exit status. */
static int run(const char *const *argv, char *out, size_t outlen, char *err, size_t errlen)
{
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
        unsetenv("MAKEFLAGS");
        unsetenv("MAKELEVEL");
        unsetenv("MFLAGS");
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    /* Read both pipes to the end (stderr is small; stdout of make -n can be long). */
    size_t ol = 0, el = 0;
    char sink[4096];
    for (int open_o = 1, open_e = 1; open_o || open_e;) {
        if (open_o) {
            char *dst = out && ol + 1 < outlen ? out + ol : sink;
            size_t cap = out && ol + 1 < outlen ? outlen - 1 - ol : sizeof sink;
            ssize_t r = read(po[0], dst, cap);
            if (r <= 0)
                open_o = 0;
            else if (dst != sink)
                ol += (size_t)r;
            continue;
        }
        char *dst = err && el + 1 < errlen ? err + el : sink;
        size_t cap = err && el + 1 < errlen ? errlen - 1 - el : sizeof sink;
        ssize_t r = read(pe[0], dst, cap);
        if (r <= 0)
            open_e = 0;
        else if (dst != sink)
            el += (size_t)r;
    }
    if (out)
        out[ol] = '\0';
    if (err)
        err[el] = '\0';
    close(po[0]);
    close(pe[0]);
    int ws;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static const char *daemon_bin(void)
{
    const char *bin = getenv("MEMATTN_BIN");
    return bin && *bin ? bin : "build/memattnd";
}

/* `make -n TARGET`: the packages it would install and the command it would run. */
static void test_make_targets(void **state)
{
    (void)state;
    if (access("Makefile", R_OK) != 0 || access("server/main.c", R_OK) != 0) {
        skip();
        return;
    }
    static char out[1 << 20];
    const char *run_argv[] = { "make", "-n", "-s", "run", "ARGS=--listen 127.0.0.1:1 --data /tmp/x", NULL };
    assert_int_equal(run(run_argv, out, sizeof out, NULL, 0), 0);
    assert_non_null(strstr(out, "memattnd --listen 127.0.0.1:1 --data /tmp/x"));
    assert_non_null(strstr(out, "libuv1-dev"));
    const char *not_for_run[] = { "libcmocka-dev", "libcurl4-openssl-dev", "wrk", "nginx-light", "gnuplot", "npm", NULL };
    for (int i = 0; not_for_run[i]; i++)
        if (strstr(out, not_for_run[i]))
            fail_msg("make run would install %s", not_for_run[i]);

    const char *bench_argv[] = { "make", "-n", "-s", "deps-bench", NULL };
    assert_int_equal(run(bench_argv, out, sizeof out, NULL, 0), 0);
    assert_non_null(strstr(out, "wrk"));
    assert_non_null(strstr(out, "nginx-light"));
    assert_null(strstr(out, "libcmocka-dev"));

    const char *test_argv[] = { "make", "-n", "-s", "deps-run", "deps-test", NULL };
    assert_int_equal(run(test_argv, out, sizeof out, NULL, 0), 0);
    assert_non_null(strstr(out, "libcmocka-dev"));
    assert_non_null(strstr(out, "npm"));
    assert_null(strstr(out, "nginx-light"));
}

/* A relative --data is resolved and logged as an absolute path. */
static void test_data_dir_is_absolute(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-rel-XXXXXX", cwd[PATH_MAX], want[PATH_MAX + 32];
    assert_non_null(mkdtemp(dir));
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(dir), 0);
    mh_daemon d;
    const char *args[] = { "--data", "rel/store", NULL };
    /* the parent exists, the directory itself is created */
    assert_int_equal(mkdir("rel", 0755), 0);
    int rc = mh_start(&d, args, NULL);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    snprintf(want, sizeof want, "data %s/rel/store", dir);
    bool found = false;
    for (int i = 0; i < 2000 && !(found = mh_log_contains(&d, want)); i++)
        mh_sleep_ms(10);
    struct stat st;
    snprintf(want, sizeof want, "%s/rel/store", dir);
    bool made = stat(want, &st) == 0 && S_ISDIR(st.st_mode);
    if (!found)
        mh_dump_log(&d);
    assert_int_equal(mh_stop(&d, 30000), 0);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    assert_true(found);
    assert_true(made);
}

/* A data directory that cannot be created: exit 1, the reason on stderr, no `listening on`. */
static void test_store_failure_before_listening(void **state)
{
    (void)state;
    static char out[4096], err[8192];
    const char *argv[] = { daemon_bin(), "--listen", "127.0.0.1:0", "--data", "/tmp/memattn-no-such-parent-8c1f/a/b", NULL };
    int status = run(argv, out, sizeof out, err, sizeof err);
    assert_int_equal(status, 1);
    if (strstr(out, "listening on"))
        fail_msg("printed `listening on` before failing: %s", out);
    assert_non_null(strstr(err, "/tmp/memattn-no-such-parent-8c1f/a/b"));
}

/* A port in use: exit 1, no `listening on`, the first daemon unaffected. */
static void test_port_in_use_before_listening(void **state)
{
    (void)state;
    mh_daemon d;
    assert_int_equal(mh_start(&d, NULL, NULL), 0);
    char listen[64], data[] = "/tmp/memattn-port-XXXXXX";
    snprintf(listen, sizeof listen, "127.0.0.1:%d", d.port);
    assert_non_null(mkdtemp(data));
    static char out[4096], err[8192];
    const char *argv[] = { daemon_bin(), "--listen", listen, "--data", data, NULL };
    int status = run(argv, out, sizeof out, err, sizeof err);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", data);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(status, 1);
    assert_null(strstr(out, "listening on"));
    assert_non_null(strstr(err, "cannot listen"));
    mh_resp r;
    assert_int_equal(mh_request(&d, "GET", "/healthz", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    mh_resp_free(&r);
    assert_int_equal(mh_stop(&d, 30000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_make_targets),
        cmocka_unit_test_teardown(test_data_dir_is_absolute, mh_teardown),
        cmocka_unit_test(test_store_failure_before_listening),
        cmocka_unit_test_teardown(test_port_in_use_before_listening, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
