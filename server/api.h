/*
 * server/api.h — the REST API of memattn (/v1/...), plugged into the server.
 *
 * main() builds what the API stands on (the store, the session registry over it) and hands it to
 * api_init() once after the server is created and before it runs; api_shutdown() once after the server
 * has drained (no request in flight, the worker pool stopped), before the registry and the store are
 * closed. The API owns none of its dependencies.
 */
#ifndef SRV_API_H
#define SRV_API_H

#include <stddef.h>

#include "registry/registry.h"
#include "server/server.h"

typedef struct api api;

/* What the API uses; borrowed, and must outlive it. */
typedef struct {
    srv_server *srv;          /* routes go on srv_server_router, metrics on srv_server_metrics, jobs on its pool */
    reg_registry *reg;        /* every session, listing, delete and backup goes through here */
} api_deps;

/* Registers the /v1 routes and the API's metrics, and observes the registry's commits (metrics).
 * Returns 0 with *out the API's context (the routes' user data), or a negative MA_E* code with a
 * message in err (main exits with status 1). */
int api_init(const api_deps *deps, api **out, char *err, size_t errlen);

/* Frees the API's context. NULL is a no-op. No request of the API may be in flight. */
void api_shutdown(api *a);

#endif
