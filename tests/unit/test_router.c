/* tests/unit/test_router.c — the routing table: templates, precedence, parameters, 404/405 + Allow. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "core/error.h"
#include "server/router.h"

static int tag_a, tag_b, tag_c, tag_d, tag_e;

static void h(srv_request *req, void *ud)
{
    (void)req;
    (void)ud;
}

static const char *param(const srv_match *m, const char *name)
{
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->names[i], name) == 0)
            return m->values[i];
    return NULL;
}

static int setup(void **state)
{
    srv_router *r = srv_router_create();
    assert_non_null(r);
    assert_int_equal(srv_route_add(r, "GET", "/healthz", h, &tag_a), 0);
    assert_int_equal(srv_route_add(r, "GET", "/v1/sessions/{id}", h, &tag_b), 0);
    assert_int_equal(srv_route_add(r, "DELETE", "/v1/sessions/{id}", h, &tag_b), 0);
    assert_int_equal(srv_route_add(r, "GET", "/v1/sessions/{id}/slots/{name}", h, &tag_c), 0);
    assert_int_equal(srv_route_add(r, "PUT", "/v1/sessions/{id}/slots/{name}", h, &tag_c), 0);
    assert_int_equal(srv_route_add(r, "GET", "/v1/sessions/{id}/{what}/x", h, &tag_d), 0);
    assert_int_equal(srv_route_add(r, "GET", "/v1/sessions/{id}/slots/x", h, &tag_e), 0);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    srv_router_destroy(*state);
    return 0;
}

static void test_literal_and_params(void **state)
{
    srv_router *r = *state;
    srv_match m;
    char buf[256], allow[64];
    assert_int_equal(srv_router_match(r, "GET", "/healthz", &m, buf, sizeof buf, allow, sizeof allow), 0);
    assert_ptr_equal(m.userdata, &tag_a);
    assert_int_equal(m.nparams, 0);
    assert_string_equal(m.tmpl, "/healthz");

    assert_int_equal(srv_router_match(r, "PUT", "/v1/sessions/s1/slots/cap_of.fr", &m, buf, sizeof buf,
                                      allow, sizeof allow), 0);
    assert_ptr_equal(m.userdata, &tag_c);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(param(&m, "id"), "s1");
    assert_string_equal(param(&m, "name"), "cap_of.fr");
    assert_string_equal(m.tmpl, "/v1/sessions/{id}/slots/{name}");
}

static void test_percent_decoding(void **state)
{
    srv_match m;
    char buf[256];
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/a%3Ab%20c", &m, buf, sizeof buf, NULL, 0), 0);
    assert_string_equal(param(&m, "id"), "a:b c");
    /* truncated escape, non-hex digit, encoded NUL */
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/a%3", &m, buf, sizeof buf, NULL, 0), MA_EINVAL);
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/a%zz", &m, buf, sizeof buf, NULL, 0), MA_EINVAL);
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/a%00", &m, buf, sizeof buf, NULL, 0), MA_EINVAL);
    /* buffer too small for the decoded values */
    char tiny[3];
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/abc", &m, tiny, sizeof tiny, NULL, 0), MA_EINVAL);
}

static void test_precedence(void **state)
{
    srv_match m;
    char buf[256];
    /* "/v1/sessions/{id}/slots/x" is literal at segment 3 where "{what}" is a parameter, and
     * "/v1/sessions/{id}/slots/{name}" is a parameter at segment 4: the literal one wins. */
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/s/slots/x", &m, buf, sizeof buf, NULL, 0), 0);
    assert_ptr_equal(m.userdata, &tag_e);
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/s/other/x", &m, buf, sizeof buf, NULL, 0), 0);
    assert_ptr_equal(m.userdata, &tag_d);
    assert_string_equal(param(&m, "what"), "other");
    assert_int_equal(srv_router_match(*state, "GET", "/v1/sessions/s/slots/y", &m, buf, sizeof buf, NULL, 0), 0);
    assert_ptr_equal(m.userdata, &tag_c);
}

static void test_not_found(void **state)
{
    srv_match m;
    char buf[256], allow[64];
    const char *paths[] = { "/nope", "/v1/sessions", "/v1/sessions/", "/v1/sessions//slots/a", "/healthz/",
                            "/v1/sessions/a/b", "//healthz", "/" };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        assert_int_equal(srv_router_match(*state, "GET", paths[i], &m, buf, sizeof buf, allow, sizeof allow),
                         MA_ENOTFOUND);
    assert_int_equal(srv_router_match(*state, "GET", "healthz", &m, buf, sizeof buf, allow, sizeof allow), MA_EINVAL);
}

static void test_method_not_allowed(void **state)
{
    srv_match m;
    char buf[256], allow[64];
    assert_int_equal(srv_router_match(*state, "POST", "/v1/sessions/s", &m, buf, sizeof buf, allow, sizeof allow),
                     MA_ECONFLICT);
    assert_string_equal(allow, "GET, HEAD, DELETE, OPTIONS");
    /* Several templates match /v1/sessions/s/slots/x with GET: GET is listed once. */
    assert_int_equal(srv_router_match(*state, "DELETE", "/v1/sessions/s/slots/x", &m, buf, sizeof buf, allow,
                                      sizeof allow), MA_ECONFLICT);
    assert_string_equal(allow, "GET, HEAD, PUT, OPTIONS");
    /* Methods are case-sensitive tokens. */
    assert_int_equal(srv_router_match(*state, "get", "/healthz", &m, buf, sizeof buf, allow, sizeof allow),
                     MA_ECONFLICT);
    assert_string_equal(allow, "GET, HEAD, OPTIONS");
}

/* HEAD is answered by the GET route; OPTIONS is never routed: it gets the Allow list. */
static void test_head_and_options(void **state)
{
    srv_router *r = *state;
    srv_match m;
    char buf[256], allow[64];
    assert_int_equal(srv_router_match(r, "HEAD", "/v1/sessions/s1/slots/a", &m, buf, sizeof buf, allow,
                                      sizeof allow), 0);
    assert_ptr_equal(m.userdata, &tag_c);
    assert_string_equal(param(&m, "name"), "a");
    assert_int_equal(srv_router_match(r, "OPTIONS", "/v1/sessions/s1", &m, buf, sizeof buf, allow, sizeof allow),
                     MA_ECONFLICT);
    assert_string_equal(allow, "GET, HEAD, DELETE, OPTIONS");
    assert_int_equal(srv_router_match(r, "OPTIONS", "/nope", &m, buf, sizeof buf, allow, sizeof allow),
                     MA_ENOTFOUND);
    /* A path without GET has no HEAD. */
    assert_int_equal(srv_route_add(r, "POST", "/v1/sessions/{id}/events", h, &tag_d), 0);
    assert_int_equal(srv_router_match(r, "HEAD", "/v1/sessions/s1/events", &m, buf, sizeof buf, allow,
                                      sizeof allow), MA_ECONFLICT);
    assert_string_equal(allow, "POST, OPTIONS");
    /* A HEAD route of its own wins over GET and is listed once. */
    assert_int_equal(srv_route_add(r, "HEAD", "/healthz", h, &tag_e), 0);
    assert_int_equal(srv_router_match(r, "HEAD", "/healthz", &m, buf, sizeof buf, allow, sizeof allow), 0);
    assert_ptr_equal(m.userdata, &tag_e);
    assert_int_equal(srv_router_match(r, "PUT", "/healthz", &m, buf, sizeof buf, allow, sizeof allow), MA_ECONFLICT);
    assert_string_equal(allow, "GET, HEAD, OPTIONS");
}

static void test_bad_templates(void **state)
{
    srv_router *r = *state;
    const char *bad[] = { "", "healthz", "/a//b", "/a/", "/{}", "/{id", "/x{id}", "/{1d}", "/{id}/{id}",
                          "/a/b}" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(srv_route_add(r, "GET", bad[i], h, NULL), MA_EINVAL);
    assert_int_equal(srv_route_add(r, "", "/ok", h, NULL), MA_EINVAL);
    assert_int_equal(srv_route_add(r, "GET", "/ok", NULL, NULL), MA_EINVAL);
    /* Same shape with other parameter names is a duplicate; another method is not. */
    assert_int_equal(srv_route_add(r, "GET", "/v1/sessions/{sid}", h, NULL), MA_EEXISTS);
    assert_int_equal(srv_route_add(r, "PATCH", "/v1/sessions/{sid}", h, NULL), 0);
    char many[512] = "";
    for (int i = 0; i <= SRV_MAX_SEGMENTS; i++)
        strcat(many, "/s");
    assert_int_equal(srv_route_add(r, "GET", many, h, NULL), MA_EINVAL);
    /* The root template has no segments and matches "/" only. */
    assert_int_equal(srv_route_add(r, "GET", "/", h, &tag_a), 0);
    srv_match m;
    char buf[16];
    assert_int_equal(srv_router_match(r, "GET", "/", &m, buf, sizeof buf, NULL, 0), 0);
    assert_ptr_equal(m.userdata, &tag_a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_literal_and_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_percent_decoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_templates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_and_options, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
