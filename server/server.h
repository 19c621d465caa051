/*
 * server/server.h — the HTTP server: listening sockets, connections, limits, drain.
 *
 * One srv_server runs on one libuv loop (the loop thread owns every socket, parser and request).
 * It serves GET /healthz and GET /metrics itself; api_init() (server/api.h) adds the /v1 routes to
 * srv_server_router() before srv_server_listen(). See docs/SERVER.md for limits and their answers.
 *
 * Not done here: TLS, HTTP/2, virtual hosts, static files.
 */
#ifndef SRV_SERVER_H
#define SRV_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "config/config.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/router.h"
#include "server/worker.h"

typedef struct srv_server srv_server;

/* Creates a server on `loop` (the process must ignore SIGPIPE, as memattnd's main does: writes to a
 * peer that has reset would otherwise kill it), with the limits, token and thread count of `cfg` (copied). Starts the
 * worker pool. Returns 0 and *out, or MA_ENOMEM / MA_EINVAL with a message in err. */
int srv_server_create(uv_loop_t *loop, const cfg_config *cfg, srv_server **out, char *err,
                      size_t errlen);

/* The routing table, worker pool and metrics registry of the server (owned by it). */
srv_router *srv_server_router(srv_server *srv);
srv_pool *srv_server_pool(srv_server *srv);
srv_metrics *srv_server_metrics(srv_server *srv);
uv_loop_t *srv_server_loop(srv_server *srv);

/* Binds and listens on cfg->listen ("HOST:PORT", IPv4 or [IPv6], port 0 = any free port). Writes the
 * bound address as "HOST:PORT" into `bound`. Returns 0, or a negative libuv error with a message. */
int srv_server_listen(srv_server *srv, char *bound, size_t boundlen, char *err, size_t errlen);

/* Begins the graceful stop: closes the listener, answers requests that arrive from now on with 503
 * `shutting_down` and closes idle keep-alive connections; requests in flight finish. When the last
 * connection is gone, or after the drain timeout (remaining connections are closed), `on_drained`
 * is called on the loop thread. Idempotent. */
void srv_server_drain(srv_server *srv, void (*on_drained)(srv_server *srv, void *arg), void *arg);

/* Ends a drain at once: closes every connection (unanswered requests are orphaned). Call after
 * srv_server_drain (a second SIGTERM); on_drained follows from the close callbacks. */
void srv_server_drain_now(srv_server *srv);

/* Frees the server after srv_server_drain has completed: destroys the pool (waits for running jobs),
 * router and metrics, closes every handle. Runs the loop until its handles are closed. */
void srv_server_destroy(srv_server *srv);

#endif
