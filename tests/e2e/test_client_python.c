/*
 * tests/e2e/test_client_python.c — runs tests/clients/test_python_client.py from `make check`: the
 * Python client (clients/python/memattn.py) end to end against live daemons ($MEMATTN_BIN) on free
 * ports. Run from the repository root (as make does).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_python_client(void **state)
{
    (void)state;
    if (access("tests/clients/test_python_client.py", R_OK) != 0)
        fail_msg("tests/clients/test_python_client.py not found: run from the repository root");
    int rc = system("python3 tests/clients/test_python_client.py");
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
