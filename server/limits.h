/*
 * server/limits.h — the REST API's fixed limits, shared by the handlers (api.c) and GET /v1/info
 * (info.c), so what the daemon advertises is what it enforces.
 *
 * The configurable limits (--max-body, --max-header-bytes, --max-uri, ...) live in cfg_config.
 */
#ifndef SRV_LIMITS_H
#define SRV_LIMITS_H

#define SRV_MAX_EVENTS_PER_BATCH  65536   /* events of one POST /v1/sessions/{id}/events */
#define SRV_MAX_QUERIES_PER_BATCH 4096    /* queries of one POST /v1/sessions/{id}/query */
#define SRV_LIST_DEFAULT_LIMIT    100     /* GET /v1/sessions page size */
#define SRV_LIST_MAX_LIMIT        1000

#endif
