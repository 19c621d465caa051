/*
 * server/api.h — the REST API of memattn (/v1/...), plugged into the server.
 *
 * main() calls api_init() once after the server is created and before it listens, and api_shutdown()
 * once after the server has drained (no request in flight, the worker pool stopped).
 */
#ifndef SRV_API_H
#define SRV_API_H

#include <stddef.h>

#include "config/config.h"
#include "server/server.h"

/* Opens what the API needs (the store under cfg->data_dir, the session cache of cfg->memory bytes),
 * registers the /v1 routes on srv_server_router(srv) and its metrics on srv_server_metrics(srv).
 * Returns 0, or a negative MA_E* code with a message in err (main exits with status 1). */
int api_init(const cfg_config *cfg, srv_server *srv, char *err, size_t errlen);

/* Releases everything api_init acquired (closes the store). Safe if api_init failed or never ran. */
void api_shutdown(void);

#endif
