/*
 * server/metrics.h — the metrics registry, rendered by GET /metrics in Prometheus text format (0.0.4).
 *
 * Design. A registry owns metrics; a metric (counter, gauge or histogram) has a name, a help text and
 * at most one label (the server's own request counter has three, built with the same machinery).
 * Each distinct label value gets a child holding the value in atomics, so updates from any thread
 * never take a lock once the child exists; finding or creating a child by label value takes the
 * registry's mutex, so hot paths should look a child up once (srv_metric_child) and keep the pointer.
 * Children are never removed (label values must come from a small fixed set: routes, statuses, kinds;
 * never session ids).
 * Counters and gauges hold int64 values; histograms count observations (double) into fixed
 * cumulative buckets chosen at registration, plus _sum and _count.
 *
 * Not done here: summaries, removing metrics, exemplars, timestamps.
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv_metrics srv_metrics;     /* the registry */
typedef struct srv_metric srv_metric;       /* one metric family */
typedef struct srv_metric_child srv_metric_child;  /* one label value of a family */

typedef enum { SRV_COUNTER, SRV_GAUGE, SRV_HISTOGRAM } srv_metric_kind;

/* Registries are created by the server; other modules get it from srv_server_metrics(). */
srv_metrics *srv_metrics_create(void);
void srv_metrics_destroy(srv_metrics *reg);   /* frees every metric; NULL is a no-op */

/* Registers a counter / gauge. `name` must match [a-zA-Z_:][a-zA-Z0-9_:]* (by convention prefixed
 * "memattn_", counters ending "_total"), `label` is NULL (no label) or a label name
 * ([a-zA-Z_][a-zA-Z0-9_]*). Strings are copied. Returns the metric (owned by the registry, valid until
 * srv_metrics_destroy) or NULL on a bad name, a name already registered, or out of memory.
 * Call at start-up (e.g. from api_init), from one thread. */
srv_metric *srv_metric_counter(srv_metrics *reg, const char *name, const char *help, const char *label);
srv_metric *srv_metric_gauge(srv_metrics *reg, const char *name, const char *help, const char *label);

/* Registers a histogram with `nbuckets` finite, strictly increasing upper bounds (the +Inf bucket is
 * implicit). NULL on bad arguments / duplicate / out of memory. */
srv_metric *srv_metric_histogram(srv_metrics *reg, const char *name, const char *help,
                                 const char *label, const double *bounds, size_t nbuckets);

/* The child for `label_value` (ignored, may be NULL, for a metric without label), created on first
 * use. Thread-safe. NULL only when out of memory (updates through a NULL child are no-ops). */
srv_metric_child *srv_metric_child_get(srv_metric *m, const char *label_value);

/* Updates, thread-safe and lock-free. add: counters take n >= 0 only (negative n is ignored), gauges
 * any n; set: gauges only; observe: histograms only. Wrong kind or NULL child: no-op. */
void srv_metric_child_add(srv_metric_child *c, int64_t n);
void srv_metric_child_set(srv_metric_child *c, int64_t v);
void srv_metric_child_observe(srv_metric_child *c, double x);

/* Shorthands: look the child up (locking) and update it. */
void srv_metric_add(srv_metric *m, const char *label_value, int64_t n);
void srv_metric_set(srv_metric *m, const char *label_value, int64_t v);
void srv_metric_observe(srv_metric *m, const char *label_value, double x);

/* The current value of a counter or gauge child (tests, internal use). */
int64_t srv_metric_child_value(const srv_metric_child *c);

/* Renders every metric in registration order into a malloc'ed NUL-terminated string (*out, *len).
 * Returns 0 or MA_ENOMEM. Thread-safe. */
int srv_metrics_render(srv_metrics *reg, char **out, size_t *len);

/* Internal to the server: a family with up to three labels (the request counter uses method, route,
 * status). `labels` has `nlabels` names; srv_metric_child_getv takes that many values. */
srv_metric *srv_metric_register(srv_metrics *reg, srv_metric_kind kind, const char *name,
                                const char *help, const char *const *labels, int nlabels,
                                const double *bounds, size_t nbuckets);
srv_metric_child *srv_metric_child_getv(srv_metric *m, const char *const *values);

#endif
