/*
 * tests/e2e/test_policies.c — the per-session slot policies and the importance of slot versions through
 * REST against build/memattnd (docs/SLOTS.md "Policies", docs/API.md): the config's slot_policy is
 * echoed, persisted and part of the idempotent PUT; its errors name the field; blend overwrites store the
 * blended value as the new version; score eviction evicts the lowest score, not the least recent; a topk
 * read reports its contributions with softmax weights; importance is accepted on writes and events,
 * returned by reads, listings, versions and query answers; everything survives a restart.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/e2e/api_util.h"

static const char *const policy_cfg =
    "{\"heads\":1,\"dim\":4,\"value_dim\":2,\"slots\":2,\"slot_policy\":{\"eviction\":\"score\","
    "\"overwrite\":\"blend\",\"alpha\":0.5,\"read\":\"topk\",\"k\":2,\"temperature\":0.25}}";

/* The config's slot_policy: echoed in full, defaults filled in; PUT idempotent; errors name the field. */
static void config_checks(mh_daemon *d)
{
    cJSON *j = au_call(d, "PUT", "/v1/sessions/p", 201, "%s", policy_cfg);
    assert_string_equal(au_str(j, "config.slot_policy.eviction"), "score");
    assert_string_equal(au_str(j, "config.slot_policy.overwrite"), "blend");
    assert_string_equal(au_str(j, "config.slot_policy.read"), "topk");
    assert_true(au_num(j, "config.slot_policy.alpha") == 0.5 && au_num(j, "config.slot_policy.k") == 2 &&
                au_num(j, "config.slot_policy.temperature") == 0.25);
    cJSON_Delete(j);
    cJSON_Delete(au_call(d, "PUT", "/v1/sessions/p", 200, "%s", policy_cfg));
    au_error(d, "PUT", "/v1/sessions/p", 409, "exists",
             "{\"heads\":1,\"dim\":4,\"value_dim\":2,\"slots\":2,\"slot_policy\":{\"eviction\":\"score\"}}");
    j = au_call(d, "PUT", "/v1/sessions/plain", 201, "{\"dim\":4}");
    assert_string_equal(au_str(j, "config.slot_policy.eviction"), "lru");
    assert_string_equal(au_str(j, "config.slot_policy.overwrite"), "replace");
    assert_string_equal(au_str(j, "config.slot_policy.read"), "best");
    cJSON_Delete(j);
    const char *msg = au_error(d, "PUT", "/v1/sessions/bad", 400, "bad_config", "{\"slot_policy\":{\"alpha\":0}}");
    assert_non_null(strstr(msg, "slot_policy.alpha: 0 is out of range"));
    msg = au_error(d, "PUT", "/v1/sessions/bad", 400, "bad_config", "{\"slot_policy\":{\"eviction\":\"lfu\"}}");
    assert_non_null(strstr(msg, "slot_policy.eviction: \"lfu\" is not accepted, expected lru or score"));
    msg = au_error(d, "PUT", "/v1/sessions/bad", 400, "bad_config", "{\"slot_policy\":{\"k\":0}}");
    assert_non_null(strstr(msg, "slot_policy.k"));
    msg = au_error(d, "PUT", "/v1/sessions/bad", 400, "bad_config", "{\"slot_policy\":{\"mode\":1}}");
    assert_non_null(strstr(msg, "slot_policy.mode: unknown field"));
    au_error(d, "GET", "/v1/sessions/bad", 404, "no_session", NULL);
}

static void test_policies(void **state)
{
    (void)state;
    char dir[] = "/tmp/memattn-policiesXXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *args[] = {"--data", dir, NULL};
    mh_daemon d;
    assert_int_equal(mh_start(&d, args, NULL), 0);
    config_checks(&d);

    /* Importance errors, naming the field; nothing applied. */
    const char *msg = au_error(&d, "POST", "/v1/sessions/p/slots", 400, "bad_request",
                               "{\"name\":\"x\",\"k\":[1,0,0,0],\"v\":[1,0],\"importance\":2}");
    assert_non_null(strstr(msg, "importance: 2 is out of range, expected a number in [0, 1]"));
    msg = au_error(&d, "POST", "/v1/sessions/p/events", 400, "bad_request",
                   "{\"events\":[{\"k\":[1,0,0,0],\"v\":[1,0],\"importance\":0.5}]}");
    assert_non_null(strstr(msg, "events[0].importance: needs slot"));

    /* Blend: version 2 = 0.5·new + 0.5·old; version 1 kept as written. */
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/p/slots", 201,
                         "{\"name\":\"x\",\"k\":[1,0,0,0],\"v\":[1,0],\"payload\":\"one\"}"));
    cJSON *j = au_call(&d, "PUT", "/v1/sessions/p/slots/x", 200,
                       "{\"k\":[1,0,0,0],\"v\":[0,3],\"payload\":\"two\",\"importance\":0.9}");
    assert_int_equal((int)au_num(j, "version"), 2);
    cJSON_Delete(j);
    j = au_call(&d, "GET", "/v1/sessions/p/slots/x", 200, NULL);
    assert_true(au_num(j, "v[0]") == 0.5 && au_num(j, "v[1]") == 1.5 && au_num(j, "importance") == 0.9);
    cJSON_Delete(j);
    j = au_call(&d, "GET", "/v1/sessions/p/slots/x?version=1", 200, NULL);
    assert_true(au_num(j, "v[0]") == 1 && au_num(j, "v[1]") == 0);
    assert_null(au_get(j, "importance"));                 /* version 1 was written without one */
    cJSON_Delete(j);
    j = au_call(&d, "GET", "/v1/sessions/p/slots/x/versions", 200, NULL);
    assert_null(au_get(j, "versions[0].importance"));
    assert_true(au_num(j, "versions[1].importance") == 0.9);
    cJSON_Delete(j);

    /* Score eviction (capacity 2): x (least recent: score 0.5·0.9) and y (importance 0, most recent:
     * score 0.3); writing z evicts y, the lowest score, where lru would evict x. */
    cJSON_Delete(au_call(&d, "POST", "/v1/sessions/p/events", 200,
                         "{\"events\":[{\"k\":[0,1,0,0],\"v\":[2,2],\"slot\":\"y\",\"importance\":0,\"payload\":\"Y\"}]}"));
    j = au_call(&d, "POST", "/v1/sessions/p/events", 200,
                "{\"events\":[{\"k\":[0,0,1,0],\"v\":[4,4],\"slot\":\"z\",\"importance\":0.5}]}");
    assert_int_equal(au_len(j, "evicted"), 1);
    assert_string_equal(au_str(j, "evicted[0]"), "y");
    cJSON_Delete(j);

    /* topk read (k 2, T 0.25): contributions best first, softmax of their scores, the value their mix. */
    const char *q = "{\"queries\":[{\"q\":[1,0,0.6,0]},{\"slot\":\"z\"}]}";
    j = au_call(&d, "POST", "/v1/sessions/p/query", 200, "%s", q);
    assert_string_equal(au_str(j, "results[0].route"), "slot");
    assert_string_equal(au_str(j, "results[0].slot"), "x");
    assert_int_equal(au_len(j, "results[0].contributions"), 2);
    assert_string_equal(au_str(j, "results[0].contributions[0].slot"), "x");
    assert_true(au_num(j, "results[0].contributions[0].importance") == 0.9);
    assert_true(au_num(j, "results[0].importance") == 0.9);
    assert_string_equal(au_str(j, "results[0].contributions[1].slot"), "z");
    assert_true(au_num(j, "results[0].contributions[1].importance") == 0.5);
    double s0 = au_num(j, "results[0].contributions[0].score"), s1 = au_num(j, "results[0].contributions[1].score");
    double w0 = au_num(j, "results[0].contributions[0].weight"), w1 = au_num(j, "results[0].contributions[1].weight");
    double r1 = exp((s1 - s0) / 0.25);
    assert_true(fabs(w0 - 1 / (1 + r1)) < 1e-12 && fabs(w1 - r1 / (1 + r1)) < 1e-12);
    assert_true(fabs(w0 + w1 - 1) < 1e-12);
    assert_true(fabs(au_num(j, "results[0].v[0]") - (w0 * 0.5 + w1 * 4)) < 1e-5);
    assert_true(fabs(au_num(j, "results[0].v[1]") - (w0 * 1.5 + w1 * 4)) < 1e-5);
    assert_true(au_num(j, "results[1].importance") == 0.5);  /* a named read: exact, with its importance */
    assert_null(au_get(j, "results[1].contributions"));
    cJSON_Delete(j);

    /* A restart: the config (policies), the versions (blended values, importances) and the answers. */
    char *before = au_snapshot(&d, "p", q);
    assert_int_equal(mh_stop(&d, 30000), 0);
    mh_daemon e;
    assert_int_equal(mh_start(&e, args, NULL), 0);
    char *after = au_snapshot(&e, "p", q);
    assert_string_equal(before, after);
    free(before);
    free(after);
    j = au_call(&e, "GET", "/v1/sessions/p", 200, NULL);
    assert_string_equal(au_str(j, "config.slot_policy.eviction"), "score");
    assert_true(au_num(j, "config.slot_policy.temperature") == 0.25);
    cJSON_Delete(j);
    j = au_call(&e, "GET", "/v1/sessions/p/slots/y/versions", 200, NULL);
    assert_true(au_num(j, "versions[0].importance") == 0);
    assert_true(au_bool(j, "versions[1].tombstone"));
    cJSON_Delete(j);
    /* The restored session still evicts by score: x (importance 1) becomes the least recent, z
     * (importance 0) the most recent; whatever their usage, x scores >= 0.5 and z <= 0.5, so writing w
     * evicts z, where lru would evict x. */
    cJSON_Delete(au_call(&e, "PUT", "/v1/sessions/p/slots/x", 200, "{\"k\":[1,0,0,0],\"v\":[1,1],\"importance\":1}"));
    cJSON_Delete(au_call(&e, "PUT", "/v1/sessions/p/slots/z", 200, "{\"k\":[0,0,1,0],\"v\":[4,4],\"importance\":0}"));
    j = au_call(&e, "POST", "/v1/sessions/p/slots", 201, "{\"name\":\"w\",\"k\":[0,0,0,1],\"v\":[5,5]}");
    assert_int_equal(au_len(j, "evicted"), 1);
    assert_string_equal(au_str(j, "evicted[0]"), "z");
    cJSON_Delete(j);
    assert_int_equal(mh_stop(&e, 30000), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_policies, mh_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
