/*
 * server/metrics.c — the metrics registry of server/metrics.h.
 *
 * Design. Families live in a registration-ordered list; each family keeps its children in a list in
 * creation order. The registry mutex guards the lists (registration, child creation, rendering); the
 * values are C11 atomics so updates never lock. A histogram child stores per-bucket (non-cumulative)
 * counts and the sum as the bit pattern of a double updated by compare-and-swap; rendering makes the
 * buckets cumulative. A render concurrent with updates may see a count one ahead of the sum, which
 * Prometheus tolerates.
 *
 * Not done here: removal of children, label escaping beyond the text format's \\ \" \n.
 */
#include "server/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define MAX_LABELS 3

struct srv_metric_child {
    srv_metric_child *next;
    srv_metric *family;
    char *values[MAX_LABELS];
    atomic_int_fast64_t value;         /* counter / gauge */
    atomic_uint_fast64_t *buckets;     /* histogram: nbuckets + 1 (the last is +Inf) */
    atomic_uint_fast64_t sum_bits;     /* histogram: double sum */
};

struct srv_metric {
    srv_metric *next;
    srv_metrics *reg;
    srv_metric_kind kind;
    char *name;
    char *help;
    int nlabels;
    char *labels[MAX_LABELS];
    double *bounds;
    size_t nbuckets;
    srv_metric_child *children, *last;
};

struct srv_metrics {
    pthread_mutex_t mu;
    srv_metric *head, *tail;
};

srv_metrics *srv_metrics_create(void)
{
    srv_metrics *reg = calloc(1, sizeof(*reg));
    if (reg && pthread_mutex_init(&reg->mu, NULL) != 0) {
        free(reg);
        return NULL;
    }
    return reg;
}

static void child_free(srv_metric_child *c)
{
    for (int i = 0; i < MAX_LABELS; i++)
        free(c->values[i]);
    free(c->buckets);
    free(c);
}

static void metric_free(srv_metric *m)
{
    while (m->children) {
        srv_metric_child *c = m->children;
        m->children = c->next;
        child_free(c);
    }
    for (int i = 0; i < MAX_LABELS; i++)
        free(m->labels[i]);
    free(m->name);
    free(m->help);
    free(m->bounds);
    free(m);
}

void srv_metrics_destroy(srv_metrics *reg)
{
    if (!reg)
        return;
    while (reg->head) {
        srv_metric *m = reg->head;
        reg->head = m->next;
        metric_free(m);
    }
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

srv_metric *srv_metric_register(srv_metrics *reg, srv_metric_kind kind, const char *name,
                                const char *help, const char *const *labels, int nlabels,
                                const double *bounds, size_t nbuckets)
{
    if (!reg || !valid_name(name, true) || nlabels < 0 || nlabels > MAX_LABELS)
        return NULL;
    if (kind == SRV_HISTOGRAM) {
        if (!bounds || nbuckets == 0)
            return NULL;
        for (size_t i = 0; i < nbuckets; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                return NULL;
    }
    for (int i = 0; i < nlabels; i++)
        if (!valid_name(labels[i], false) || strcmp(labels[i], "le") == 0)
            return NULL;

    srv_metric *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->reg = reg;
    m->kind = kind;
    m->name = strdup(name);
    m->help = strdup(help ? help : "");
    m->nlabels = nlabels;
    bool ok = m->name && m->help;
    for (int i = 0; i < nlabels; i++)
        ok = ok && (m->labels[i] = strdup(labels[i]));
    if (ok && kind == SRV_HISTOGRAM) {
        m->nbuckets = nbuckets;
        m->bounds = malloc(nbuckets * sizeof(double));
        ok = m->bounds != NULL;
        if (ok)
            memcpy(m->bounds, bounds, nbuckets * sizeof(double));
    }
    if (!ok)
        goto fail;

    pthread_mutex_lock(&reg->mu);
    for (srv_metric *o = reg->head; o; o = o->next)
        if (strcmp(o->name, name) == 0) {
            pthread_mutex_unlock(&reg->mu);
            goto fail;
        }
    if (reg->tail)
        reg->tail->next = m;
    else
        reg->head = m;
    reg->tail = m;
    pthread_mutex_unlock(&reg->mu);
    if (nlabels == 0)
        srv_metric_child_getv(m, NULL);   /* an unlabelled metric renders (as 0) from the start */
    return m;
fail:
    metric_free(m);
    return NULL;
}

srv_metric *srv_metric_counter(srv_metrics *reg, const char *name, const char *help, const char *label)
{
    return srv_metric_register(reg, SRV_COUNTER, name, help, &label, label ? 1 : 0, NULL, 0);
}

srv_metric *srv_metric_gauge(srv_metrics *reg, const char *name, const char *help, const char *label)
{
    return srv_metric_register(reg, SRV_GAUGE, name, help, &label, label ? 1 : 0, NULL, 0);
}

srv_metric *srv_metric_histogram(srv_metrics *reg, const char *name, const char *help,
                                 const char *label, const double *bounds, size_t nbuckets)
{
    return srv_metric_register(reg, SRV_HISTOGRAM, name, help, &label, label ? 1 : 0, bounds, nbuckets);
}

srv_metric_child *srv_metric_child_getv(srv_metric *m, const char *const *values)
{
    if (!m)
        return NULL;
    pthread_mutex_lock(&m->reg->mu);
    srv_metric_child *c;
    for (c = m->children; c; c = c->next) {
        int i = 0;
        while (i < m->nlabels && strcmp(c->values[i], values[i] ? values[i] : "") == 0)
            i++;
        if (i == m->nlabels)
            goto out;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        goto out;
    c->family = m;
    bool ok = true;
    for (int i = 0; i < m->nlabels; i++)
        ok = ok && (c->values[i] = strdup(values[i] ? values[i] : ""));
    if (ok && m->kind == SRV_HISTOGRAM)
        ok = (c->buckets = calloc(m->nbuckets + 1, sizeof(*c->buckets))) != NULL;
    if (!ok) {
        child_free(c);
        c = NULL;
        goto out;
    }
    double zero = 0.0;
    uint64_t bits;
    memcpy(&bits, &zero, sizeof bits);
    atomic_init(&c->sum_bits, bits);
    if (m->last)
        m->last->next = c;
    else
        m->children = c;
    m->last = c;
out:
    pthread_mutex_unlock(&m->reg->mu);
    return c;
}

srv_metric_child *srv_metric_child_get(srv_metric *m, const char *label_value)
{
    return srv_metric_child_getv(m, &label_value);
}

void srv_metric_child_add(srv_metric_child *c, int64_t n)
{
    if (!c || c->family->kind == SRV_HISTOGRAM || (c->family->kind == SRV_COUNTER && n < 0))
        return;
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

void srv_metric_child_set(srv_metric_child *c, int64_t v)
{
    if (!c || c->family->kind != SRV_GAUGE)
        return;
    atomic_store_explicit(&c->value, v, memory_order_relaxed);
}

void srv_metric_child_observe(srv_metric_child *c, double x)
{
    if (!c || c->family->kind != SRV_HISTOGRAM || isnan(x))
        return;
    const srv_metric *m = c->family;
    size_t b = 0;
    while (b < m->nbuckets && x > m->bounds[b])
        b++;
    atomic_fetch_add_explicit(&c->buckets[b], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&c->sum_bits, memory_order_relaxed), nw;
    do {
        double s;
        memcpy(&s, &old, sizeof s);
        s += x;
        memcpy(&nw, &s, sizeof nw);
    } while (!atomic_compare_exchange_weak_explicit(&c->sum_bits, &old, nw, memory_order_relaxed,
                                                    memory_order_relaxed));
}

int64_t srv_metric_child_value(const srv_metric_child *c)
{
    return c ? atomic_load_explicit(&((srv_metric_child *)c)->value, memory_order_relaxed) : 0;
}

void srv_metric_add(srv_metric *m, const char *label_value, int64_t n)
{
    srv_metric_child_add(srv_metric_child_get(m, label_value), n);
}

void srv_metric_set(srv_metric *m, const char *label_value, int64_t v)
{
    srv_metric_child_set(srv_metric_child_get(m, label_value), v);
}

void srv_metric_observe(srv_metric *m, const char *label_value, double x)
{
    srv_metric_child_observe(srv_metric_child_get(m, label_value), x);
}

/* ---- rendering ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *sb, const char *s, size_t n)
{
    if (sb->oom)
        return;
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 4096;
        while (sb->len + n + 1 > cap)
            cap *= 2;
        char *nb = realloc(sb->buf, cap);
        if (!nb) {
            sb->oom = true;
            return;
        }
        sb->buf = nb;
        sb->cap = cap;
    }
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

static void sb_puts(sbuf *sb, const char *s)
{
    sb_putn(sb, s, strlen(s));
}

static void sb_printf(sbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *sb, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_putn(sb, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Escapes for HELP (\\ and \n) or label values (also \"). */
static void sb_escaped(sbuf *sb, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            sb_puts(sb, "\\\\");
        else if (*s == '\n')
            sb_puts(sb, "\\n");
        else if (quote && *s == '"')
            sb_puts(sb, "\\\"");
        else
            sb_putn(sb, s, 1);
    }
}

static void sb_double(sbuf *sb, double x)
{
    if (isinf(x))
        sb_puts(sb, x > 0 ? "+Inf" : "-Inf");
    else
        sb_printf(sb, "%.15g", x);
}

/* name{l1="v1",...,extra} — `extra` is an already formatted le="..." or NULL. */
static void sb_series(sbuf *sb, const srv_metric *m, const srv_metric_child *c, const char *suffix,
                      const char *extra)
{
    sb_puts(sb, m->name);
    sb_puts(sb, suffix);
    if (m->nlabels == 0 && !extra)
        return;
    sb_puts(sb, "{");
    for (int i = 0; i < m->nlabels; i++) {
        sb_printf(sb, "%s%s=\"", i ? "," : "", m->labels[i]);
        sb_escaped(sb, c->values[i], true);
        sb_puts(sb, "\"");
    }
    if (extra) {
        if (m->nlabels)
            sb_puts(sb, ",");
        sb_puts(sb, extra);
    }
    sb_puts(sb, "}");
}

int srv_metrics_render(srv_metrics *reg, char **out, size_t *len)
{
    static const char *const type_names[] = { "counter", "gauge", "histogram" };
    sbuf sb = { 0 };
    pthread_mutex_lock(&reg->mu);
    for (const srv_metric *m = reg->head; m; m = m->next) {
        sb_printf(&sb, "# HELP %s ", m->name);
        sb_escaped(&sb, m->help, false);
        sb_printf(&sb, "\n# TYPE %s %s\n", m->name, type_names[m->kind]);
        for (const srv_metric_child *c = m->children; c; c = c->next) {
            if (m->kind != SRV_HISTOGRAM) {
                sb_series(&sb, m, c, "", NULL);
                sb_printf(&sb, " %lld\n", (long long)srv_metric_child_value(c));
                continue;
            }
            uint64_t cum = 0;
            for (size_t b = 0; b <= m->nbuckets; b++) {
                cum += atomic_load_explicit(&((srv_metric_child *)c)->buckets[b], memory_order_relaxed);
                char le[64] = "le=\"+Inf\"";
                if (b < m->nbuckets)
                    snprintf(le, sizeof le, "le=\"%.15g\"", m->bounds[b]);
                sb_series(&sb, m, c, "_bucket", le);
                sb_printf(&sb, " %llu\n", (unsigned long long)cum);
            }
            uint64_t bits = atomic_load_explicit(&((srv_metric_child *)c)->sum_bits, memory_order_relaxed);
            double sum;
            memcpy(&sum, &bits, sizeof sum);
            sb_series(&sb, m, c, "_sum", NULL);
            sb_puts(&sb, " ");
            sb_double(&sb, sum);
            sb_puts(&sb, "\n");
            sb_series(&sb, m, c, "_count", NULL);
            sb_printf(&sb, " %llu\n", (unsigned long long)cum);
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (!sb.buf && !sb.oom)
        sb_puts(&sb, "");
    if (sb.oom) {
        free(sb.buf);
        return MA_ENOMEM;
    }
    *out = sb.buf;
    *len = sb.len;
    return 0;
}
