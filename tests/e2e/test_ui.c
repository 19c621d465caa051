/*
 * tests/e2e/test_ui.c — runs tests/clients/test_ui.py from `make check`: the memory inspector at /ui in
 * headless Debian chromium driven by selenium, against a live daemon ($MEMATTN_BIN) with --token.
 * The script runs under the system python3 (/usr/bin/python3, where apt installs python3-selenium);
 * it prints a "skip:" line and passes when chromium, chromium-driver or python3-selenium is missing
 * (`make test` installs them). Run from the repository root (as make does).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_ui_in_browser(void **state)
{
    (void)state;
    if (access("tests/clients/test_ui.py", R_OK) != 0)
        fail_msg("tests/clients/test_ui.py not found: run from the repository root");
    const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s tests/clients/test_ui.py", py);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ui_in_browser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
