/* tests/unit/test_metrics.c — the metrics registry: registration rules, updates from several threads,
 * histogram buckets, and the exact Prometheus text rendered. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "server/metrics.h"

static void test_register_rules(void **state)
{
    (void)state;
    srv_metrics *reg = srv_metrics_create();
    assert_non_null(reg);
    assert_non_null(srv_metric_counter(reg, "memattn_x_total", "X.", NULL));
    assert_null(srv_metric_counter(reg, "memattn_x_total", "again", NULL));     /* duplicate */
    assert_null(srv_metric_counter(reg, "1bad", "h", NULL));
    assert_null(srv_metric_counter(reg, "bad-name", "h", NULL));
    assert_null(srv_metric_gauge(reg, "memattn_g", "h", "bad-label"));
    assert_null(srv_metric_gauge(reg, "memattn_g", "h", "le"));
    double up[] = { 1, 2, 2 };
    assert_null(srv_metric_histogram(reg, "memattn_h", "h", NULL, up, 3));   /* not increasing */
    assert_null(srv_metric_histogram(reg, "memattn_h", "h", NULL, up, 0));
    srv_metrics_destroy(reg);
}

static void test_render(void **state)
{
    (void)state;
    srv_metrics *reg = srv_metrics_create();
    srv_metric *c = srv_metric_counter(reg, "memattn_events_total", "Events ingested.", NULL);
    srv_metric *g = srv_metric_gauge(reg, "memattn_things", "Things \\ by\nkind.", "kind");
    double b[] = { 0.5, 1 };
    srv_metric *h = srv_metric_histogram(reg, "memattn_lat_seconds", "Latency.", NULL, b, 2);
    srv_metric_add(c, NULL, 5);
    srv_metric_add(c, NULL, -3);          /* counters never go down */
    srv_metric_set(g, "a\"b", 7);
    srv_metric_add(g, "z", -2);
    srv_metric_set(c, NULL, 100);         /* set is for gauges only */
    srv_metric_observe(h, NULL, 0.25);
    srv_metric_observe(h, NULL, 1.0);     /* le is inclusive */
    srv_metric_observe(h, NULL, 3.0);
    char *out;
    size_t len;
    assert_int_equal(srv_metrics_render(reg, &out, &len), 0);
    const char *want =
        "# HELP memattn_events_total Events ingested.\n"
        "# TYPE memattn_events_total counter\n"
        "memattn_events_total 5\n"
        "# HELP memattn_things Things \\\\ by\\nkind.\n"
        "# TYPE memattn_things gauge\n"
        "memattn_things{kind=\"a\\\"b\"} 7\n"
        "memattn_things{kind=\"z\"} -2\n"
        "# HELP memattn_lat_seconds Latency.\n"
        "# TYPE memattn_lat_seconds histogram\n"
        "memattn_lat_seconds_bucket{le=\"0.5\"} 1\n"
        "memattn_lat_seconds_bucket{le=\"1\"} 2\n"
        "memattn_lat_seconds_bucket{le=\"+Inf\"} 3\n"
        "memattn_lat_seconds_sum 4.25\n"
        "memattn_lat_seconds_count 3\n";
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
    free(out);
    srv_metrics_destroy(reg);
}

static void test_multi_label(void **state)
{
    (void)state;
    srv_metrics *reg = srv_metrics_create();
    const char *labels[] = { "method", "route", "status" };
    srv_metric *m = srv_metric_register(reg, SRV_COUNTER, "memattn_http_requests_total", "R.", labels, 3, NULL, 0);
    assert_non_null(m);
    const char *v1[] = { "GET", "/healthz", "200" };
    const char *v2[] = { "GET", "/healthz", "404" };
    srv_metric_child *c1 = srv_metric_child_getv(m, v1);
    assert_ptr_equal(srv_metric_child_getv(m, v1), c1);
    assert_ptr_not_equal(srv_metric_child_getv(m, v2), c1);
    srv_metric_child_add(c1, 2);
    char *out;
    size_t len;
    assert_int_equal(srv_metrics_render(reg, &out, &len), 0);
    assert_non_null(strstr(out, "memattn_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2\n"));
    assert_non_null(strstr(out, "memattn_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"404\"} 0\n"));
    free(out);
    srv_metrics_destroy(reg);
}

enum { THREADS = 4, ITERS = 20000 };

static void *hammer(void *arg)
{
    srv_metric **ms = arg;
    for (int i = 0; i < ITERS; i++) {
        srv_metric_add(ms[0], i % 2 ? "odd" : "even", 1);
        srv_metric_observe(ms[1], NULL, 0.5);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    srv_metrics *reg = srv_metrics_create();
    double b[] = { 1 };
    srv_metric *ms[2] = { srv_metric_counter(reg, "memattn_c_total", "c", "parity"),
                          srv_metric_histogram(reg, "memattn_h", "h", NULL, b, 1) };
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, ms), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(srv_metric_child_value(srv_metric_child_get(ms[0], "odd")), THREADS * ITERS / 2);
    assert_int_equal(srv_metric_child_value(srv_metric_child_get(ms[0], "even")), THREADS * ITERS / 2);
    char *out;
    size_t len;
    assert_int_equal(srv_metrics_render(reg, &out, &len), 0);
    char want[128];
    snprintf(want, sizeof want, "memattn_h_count %d\n", THREADS * ITERS);
    assert_non_null(strstr(out, want));
    snprintf(want, sizeof want, "memattn_h_sum %d\n", THREADS * ITERS / 2);
    assert_non_null(strstr(out, want));
    free(out);
    srv_metrics_destroy(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_rules),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_multi_label),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
