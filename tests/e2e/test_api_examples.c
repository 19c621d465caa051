/*
 * tests/e2e/test_api_examples.c — runs tests/api_examples.sh from `make check`: every curl example of
 * docs/API.md against a live daemon ($MEMATTN_BIN), answers checked, and docs/openapi.yaml checked
 * against the routes of server/api.c. Run from the repository root (as make does).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_api_examples(void **state)
{
    (void)state;
    if (access("tests/api_examples.sh", X_OK) != 0)
        fail_msg("tests/api_examples.sh not found: run from the repository root");
    int rc = system("tests/api_examples.sh docs/API.md");
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_examples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
