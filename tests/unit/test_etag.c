/* tests/unit/test_etag.c — If-Match / If-None-Match values: parsing, strong and weak comparison. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/error.h"
#include "server/etag.h"

static void test_parse(void **state)
{
    (void)state;
    srv_etag_list l;
    assert_int_equal(srv_etag_parse(NULL, &l), 0);
    assert_false(l.present);
    assert_int_equal(srv_etag_parse("*", &l), 0);
    assert_true(l.present && l.any);
    assert_int_equal(srv_etag_parse(" \"3\" ", &l), 0);
    assert_int_equal(l.n, 1);
    assert_false(l.tags[0].weak);
    assert_int_equal(l.tags[0].len, 1);
    assert_int_equal(srv_etag_parse("W/\"3\", \"4\",,\"x-y\"", &l), 0);
    assert_int_equal(l.n, 3);
    assert_true(l.tags[0].weak);
    assert_false(l.tags[1].weak);
    assert_int_equal(srv_etag_parse("7", &l), 0);   /* a bare version */
    assert_int_equal(l.n, 1);
    assert_int_equal(srv_etag_parse("\"\"", &l), 0);   /* the empty tag is a tag */
    const char *bad[] = { "", " ", ",", "\"3", "3\"", "W/3", "w/\"3\"", "*, \"3\"", "\"3\" \"4\"", "abc", "\"a\"b",
                          "\"a b\"", NULL };
    for (int i = 0; bad[i]; i++)
        if (srv_etag_parse(bad[i], &l) != MA_EINVAL)
            fail_msg("accepted %s", bad[i]);
    char many[512] = "";
    for (int i = 0; i <= SRV_ETAG_MAX; i++)
        strcat(many, "\"1\",");
    assert_int_equal(srv_etag_parse(many, &l), MA_EINVAL);
}

static void test_compare(void **state)
{
    (void)state;
    srv_etag_list l;
    assert_int_equal(srv_etag_parse("\"3\"", &l), 0);
    assert_true(srv_etag_matches(&l, "\"3\"", false));
    assert_true(srv_etag_matches(&l, "\"3\"", true));
    assert_false(srv_etag_matches(&l, "\"30\"", true));
    assert_false(srv_etag_matches(&l, "W/\"3\"", false));   /* strong comparison: never a weak tag */
    assert_true(srv_etag_matches(&l, "W/\"3\"", true));
    assert_int_equal(srv_etag_parse("W/\"3\"", &l), 0);
    assert_false(srv_etag_matches(&l, "\"3\"", false));
    assert_true(srv_etag_matches(&l, "\"3\"", true));
    assert_int_equal(srv_etag_parse("\"1\", \"2\", 3", &l), 0);
    assert_true(srv_etag_matches(&l, "\"3\"", false));
    assert_true(srv_etag_matches(&l, "\"2\"", false));
    assert_false(srv_etag_matches(&l, "\"4\"", false));
    assert_int_equal(srv_etag_parse("*", &l), 0);
    assert_true(srv_etag_matches(&l, "\"9\"", false));
    assert_false(srv_etag_matches(&l, NULL, false));
    assert_int_equal(srv_etag_parse(NULL, &l), 0);
    assert_false(srv_etag_matches(&l, "\"3\"", true));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
