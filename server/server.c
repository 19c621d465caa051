/*
 * server/server.c — the server's lifecycle (server/server.h): creation, listening, the service
 * endpoints /healthz, /metrics and /v1/info (info.c) (and the inspector's /ui, server/ui.c), the
 * graceful drain, destruction.
 *
 * Listening beyond loopback without --token logs a warning at error level (always shown): anyone who
 * can reach the port can then read and change every session and write files through
 * /v1/admin/backup.
 *
 * Design. Everything runs on the loop thread; the worker pool is the only other thread owner. The
 * drain closes the listener, lets requests already started finish (answers then carry
 * Connection: close), closes idle keep-alive connections at once, answers requests started after the
 * drain began with 503 `shutting_down`, and closes what is left when the drain timeout fires.
 *
 * Not done here: SO_REUSEPORT / several loops, socket activation.
 */
#include "server/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/hash.h"
#include "server/log.h"
#include "server/ui.h"

/* {"status":"ok"}, plus "node" when the daemon has a --node-id (a cluster's health checks and the
 * rebalance tool read it to know which daemon answered). */
static void handle_healthz(srv_request *req, void *ud)
{
    srv_server *srv = ud;
    srv_respond_raw(req, 200, "application/json", srv->health, srv->health_len);
}

static void handle_metrics(srv_request *req, void *ud)
{
    srv_server *srv = ud;
    srv_metric_set(srv->m_queue, NULL, (int64_t)srv_pool_waiting(srv->pool));
    srv_metric_set(srv->m_inflight, NULL, (int64_t)srv_pool_pending(srv->pool));
    char *text;
    size_t len;
    if (srv_metrics_render(srv->metrics, &text, &len) < 0) {
        srv_respond_error(req, 503, "overloaded", "out of memory rendering the metrics");
        return;
    }
    srv_respond_raw(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

static int register_metrics(srv_server *srv)
{
    /* Latency buckets from 100 us to 10 s: healthz sits at the bottom, sparse reads of long sessions
     * in the middle, overloaded queues at the top. */
    static const double lat[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                  0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
    const char *req_labels[] = { "method", "route", "status" };
    srv->m_requests = srv_metric_register(srv->metrics, SRV_COUNTER, "memattn_http_requests_total",
                                          "HTTP requests answered, by method, route template and status.",
                                          req_labels, 3, NULL, 0);
    srv->m_latency = srv_metric_histogram(srv->metrics, "memattn_http_request_duration_seconds",
                                          "Time from a request's first byte to its answer, by route template.",
                                          "route", lat, sizeof lat / sizeof *lat);
    srv->m_conns = srv_metric_gauge(srv->metrics, "memattn_http_connections", "Open HTTP connections.", NULL);
    srv->m_rejected = srv_metric_counter(srv->metrics, "memattn_http_rejected_total",
                                         "Requests or connections refused by a limit, by reason.", "reason");
    srv->m_queue = srv_metric_gauge(srv->metrics, "memattn_worker_queue_depth",
                                    "Worker jobs waiting to start.", NULL);
    srv->m_inflight = srv_metric_gauge(srv->metrics, "memattn_worker_jobs_pending",
                                       "Worker jobs queued or running whose completion has not run yet.", NULL);
    srv_metric *threads = srv_metric_gauge(srv->metrics, "memattn_worker_threads", "Worker threads.", NULL);
    srv_metric *storage = srv_metric_counter(srv->metrics, "memattn_storage_errors_total",
                                             "Answers 503 storage_error: the store failed, or stored data did not "
                                             "pass its checks (checksum, finiteness) and was not served.", NULL);
    if (!srv->m_requests || !srv->m_latency || !srv->m_conns || !srv->m_rejected || !srv->m_queue ||
        !srv->m_inflight || !threads || !storage)
        return MA_ENOMEM;
    srv->c_storage_errors = srv_metric_child_get(storage, NULL);
    srv_metric_set(threads, NULL, srv->cfg.threads);
    srv->c_conns = srv_metric_child_get(srv->m_conns, NULL);
    return 0;
}

int srv_server_create(uv_loop_t *loop, const cfg_config *cfg, srv_server **out, char *err, size_t errlen)
{
    srv_server *srv = calloc(1, sizeof(*srv));
    int rc = MA_ENOMEM;
    if (!srv)
        goto fail;
    srv->loop = loop;
    srv->cfg = *cfg;
    /* node_id was checked by config/ ([A-Za-z0-9._:-], at most 64): no escaping needed. */
    if (cfg->node_id[0]) {
        snprintf(srv->health, sizeof srv->health, "{\"status\":\"ok\",\"node\":\"%s\"}", cfg->node_id);
        snprintf(srv->node_hdr, sizeof srv->node_hdr, "X-Memattn-Node: %s\r\n", cfg->node_id);
    } else {
        snprintf(srv->health, sizeof srv->health, "{\"status\":\"ok\"}");
    }
    srv->health_len = strlen(srv->health);
    srv_settings_init(&srv->settings);
    srv->rbuf = malloc(65536);
    srv->mcache = calloc(SRV_MCACHE, sizeof(*srv->mcache));
    srv->router = srv_router_create();
    srv->metrics = srv_metrics_create();
    if (!srv->rbuf || !srv->mcache || !srv->router || !srv->metrics || register_metrics(srv) < 0)
        goto fail;
    if ((rc = srv_pool_create(loop, cfg->threads, cfg->queue_max, &srv->pool)) < 0)
        goto fail;
    if ((rc = srv_route_add(srv->router, "GET", "/healthz", handle_healthz, srv)) < 0 ||
        (rc = srv_route_add(srv->router, "GET", "/metrics", handle_metrics, srv)) < 0 ||
        (rc = ui_register(srv->router)) < 0 ||
        (rc = srv_info_register(srv)) < 0)
        goto fail;
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    uv_timer_init(loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    *out = srv;
    return 0;
fail:
    snprintf(err, errlen, "cannot create the server: %s", ma_strerror(rc));
    if (srv) {
        if (srv->pool)
            srv_pool_destroy(srv->pool);
        srv_router_destroy(srv->router);
        srv_metrics_destroy(srv->metrics);
        free(srv->rbuf);
        free(srv->mcache);
        free(srv);
    }
    return rc;
}

srv_router *srv_server_router(srv_server *srv) { return srv->router; }
srv_pool *srv_server_pool(srv_server *srv) { return srv->pool; }
srv_metrics *srv_server_metrics(srv_server *srv) { return srv->metrics; }
uv_loop_t *srv_server_loop(srv_server *srv) { return srv->loop; }

const char *srv_server_date(srv_server *srv)
{
    uint64_t now = uv_now(srv->loop) / 1000;
    if (now != srv->date_sec || !srv->date[0]) {
        srv->date_sec = now;
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(srv->date, sizeof srv->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    }
    return srv->date;
}

void srv_server_count(srv_server *srv, const char *method, const char *route, int status, double seconds)
{
    /* key = method NUL route NUL status (3 digits), assembled without printf: once per request. */
    char key[160];
    size_t ml = strnlen(method, 15), rl = strnlen(route, sizeof key - 24);
    memcpy(key, method, ml);
    key[ml] = '\0';
    memcpy(key + ml + 1, route, rl);
    key[ml + 1 + rl] = '\0';
    char *sp = key + ml + rl + 2;
    unsigned st3 = status > 0 && status < 1000 ? (unsigned)status : 0;
    sp[0] = (char)('0' + st3 / 100);
    sp[1] = (char)('0' + st3 / 10 % 10);
    sp[2] = (char)('0' + st3 % 10);
    sp[3] = '\0';
    int kl = (int)(sp + 3 - key);
    uint64_t h = ma_fnv1a64(key, (size_t)kl) | 1;   /* never 0 */
    srv_mcache_entry *e = NULL;
    for (size_t i = 0, slot = h % SRV_MCACHE; i < SRV_MCACHE; i++, slot = (slot + 1) % SRV_MCACHE) {
        srv_mcache_entry *s = &srv->mcache[slot];
        if (s->hash == h && memcmp(s->key, key, (size_t)kl + 1) == 0) {
            e = s;
            break;
        }
        if (s->hash == 0) {
            char st[8];
            snprintf(st, sizeof st, "%d", status);
            const char *labels[3] = { method, route, st };
            s->requests = srv_metric_child_getv(srv->m_requests, labels);
            s->latency = srv_metric_child_get(srv->m_latency, route);
            if (s->requests && s->latency) {
                s->hash = h;
                memcpy(s->key, key, (size_t)kl + 1);
                e = s;
            }
            break;
        }
    }
    if (e) {
        srv_metric_child_add(e->requests, 1);
        srv_metric_child_observe(e->latency, seconds);
        return;
    }
    /* Cache full (more distinct label sets than slots) or out of memory: look up each time. */
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    const char *labels[3] = { method, route, st };
    srv_metric_child_add(srv_metric_child_getv(srv->m_requests, labels), 1);
    srv_metric_observe(srv->m_latency, route, seconds);
}

void srv_server_reject(srv_server *srv, const char *reason)
{
    srv_metric_add(srv->m_rejected, reason, 1);
}

static void on_connection(uv_stream_t *l, int status)
{
    srv_server *srv = l->data;
    if (status < 0) {
        srv_log(CFG_LOG_WARN, "accept failed: %s", uv_strerror(status));
        return;
    }
    srv_conn_accept(srv);
}

/* 127.0.0.0/8, ::1 or an IPv4-mapped loopback address. */
static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    static const unsigned char lo6[16] = { [15] = 1 };
    static const unsigned char mapped[12] = { [10] = 0xff, [11] = 0xff };
    return memcmp(a, lo6, 16) == 0 || (memcmp(a, mapped, 12) == 0 && a->s6_addr[12] == 127);
}

int srv_server_listen(srv_server *srv, char *bound, size_t boundlen, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(srv->cfg.listen, ':');
    size_t hl = colon ? (size_t)(colon - srv->cfg.listen) : 0;
    if (!colon || hl >= sizeof host) {
        snprintf(err, errlen, "listen: \"%s\" is not HOST:PORT", srv->cfg.listen);
        return UV_EINVAL;
    }
    memcpy(host, srv->cfg.listen, hl);
    host[hl] = '\0';
    int port = atoi(colon + 1);
    struct sockaddr_storage ss;
    int rc;
    if (host[0] == '[') {
        host[hl - 1] = '\0';
        rc = uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)&ss);
    } else {
        rc = uv_ip4_addr(strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, port, (struct sockaddr_in *)&ss);
    }
    if (rc == 0)
        rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", srv->cfg.listen, uv_strerror(rc));
        return rc;
    }
    srv->listening = true;
    int sl = sizeof ss;
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &sl);
    char ip[64];
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
        snprintf(bound, boundlen, "[%s]:%d", ip, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
        snprintf(bound, boundlen, "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    if (!srv->cfg.token[0] && !is_loopback(&ss))
        srv_log(CFG_LOG_ERROR, "WARNING: listening on %s, beyond loopback, without --token: anyone who can reach "
                "this port can read and change every session and write files with /v1/admin/backup; set --token "
                "(or MEMATTN_TOKEN) or listen on 127.0.0.1", bound);
    return 0;
}

static void maybe_drained(srv_server *srv)
{
    if (!srv->draining || srv->drained_called || srv->conn_objs)
        return;
    srv->drained_called = true;
    uv_timer_stop(&srv->drain_timer);
    if (srv->on_drained)
        srv->on_drained(srv, srv->drained_arg);
}

void srv_server_conn_gone(srv_server *srv)
{
    srv->conn_objs--;
    maybe_drained(srv);
}

void srv_server_drain_now(srv_server *srv)
{
    while (srv->conns)
        srv_conn_close(srv->conns);
    maybe_drained(srv);
}

static void on_drain_timeout(uv_timer_t *t)
{
    srv_server *srv = t->data;
    if (srv->nconns)
        srv_log(CFG_LOG_WARN, "drain timeout (%u ms): closing %zu connection(s) with requests in flight",
                srv->cfg.drain_timeout_ms, srv->nconns);
    srv_server_drain_now(srv);
}

void srv_server_drain(srv_server *srv, void (*on_drained)(srv_server *srv, void *arg), void *arg)
{
    if (srv->draining)
        return;
    srv->draining = true;
    srv->on_drained = on_drained;
    srv->drained_arg = arg;
    srv_log(CFG_LOG_INFO, "draining: %zu connection(s) open, %zu job(s) pending", srv->nconns,
            srv_pool_pending(srv->pool));
    if (srv->listening) {
        uv_close((uv_handle_t *)&srv->listener, NULL);
        srv->listening = false;
    }
    for (srv_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->cur || c->qhead || c->shutting || c->pump)
            continue;            /* in flight: its last answer (or the file being sent) closes it */
        if (c->writes_pending)
            srv_conn_shutdown(c);   /* an answer is still being written */
        else
            srv_conn_close(c);      /* idle keep-alive */
    }
    uv_timer_start(&srv->drain_timer, on_drain_timeout, srv->cfg.drain_timeout_ms, 0);
    /* Connections close asynchronously; maybe_drained runs from their close callbacks. With none
     * open, finish from a zero timer rather than inside the caller. */
    if (!srv->conns)
        uv_timer_start(&srv->drain_timer, on_drain_timeout, 0, 0);
}

static void on_closed(uv_handle_t *h)
{
    srv_server *srv = h->data;
    srv->closing_handles--;
}

void srv_server_destroy(srv_server *srv)
{
    if (!srv)
        return;
    while (srv->conns)
        srv_conn_close(srv->conns);
    /* Cancels waiting jobs and runs every completion: orphaned requests are answered into the void. */
    srv_pool_destroy(srv->pool);
    srv->pool = NULL;
    if (!uv_is_closing((uv_handle_t *)&srv->listener)) {
        srv->closing_handles++;
        uv_close((uv_handle_t *)&srv->listener, on_closed);
    }
    srv->closing_handles++;
    uv_close((uv_handle_t *)&srv->drain_timer, on_closed);
    while (srv->closing_handles > 0 || srv->conn_objs > 0)
        uv_run(srv->loop, UV_RUN_ONCE);
    srv_router_destroy(srv->router);
    srv_metrics_destroy(srv->metrics);
    free(srv->rbuf);
    free(srv->mcache);
    free(srv);
}
