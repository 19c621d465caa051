/*
 * server/api.c — the REST handlers of API.md (/v1/...).
 *
 * Placeholder of the server foundation: it registers no /v1 routes yet. The `api` branch fills this
 * file in (sessions, events, queries, slots); the server branch does not edit it after this commit.
 */
#include "server/api.h"

int api_init(const cfg_config *cfg, srv_server *srv, char *err, size_t errlen)
{
    (void)cfg;
    (void)srv;
    if (errlen > 0)
        err[0] = '\0';
    return 0;
}

void api_shutdown(void)
{
}
