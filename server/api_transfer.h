/*
 * server/api_transfer.h — the routes that move a session between daemons: export, import, freeze
 * (server/api_transfer.c; docs/API.md, "Moving sessions").
 */
#ifndef SRV_API_TRANSFER_H
#define SRV_API_TRANSFER_H

#include <stddef.h>

#include "registry/registry.h"
#include "server/server.h"

typedef struct api_transfer api_transfer;

/* Registers GET .../export, PUT .../import, POST .../freeze, GET .../freeze and POST .../unfreeze on
 * srv's router; jobs go to srv's pool, sessions through reg (borrowed: both must outlive it); temporary
 * snapshot files are made in data_dir. 0, or an MA_E* code with a message in err. */
int api_transfer_init(srv_server *srv, reg_registry *reg, const char *data_dir, api_transfer **out, char *err,
                      size_t errlen);

/* Frees it. NULL is a no-op. No request of it may be in flight (after the server's pool stopped). */
void api_transfer_shutdown(api_transfer *t);

#endif
