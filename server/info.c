/*
 * server/info.c — GET /v1/info: what this daemon is (version, build), what it has enabled, and the
 * limits a client must size its requests by, including the largest batch of events and of queries
 * that fits --max-body for a session shape (?heads=&dim=&value_dim=, default 1, 64, = dim).
 *
 * Design. Everything is known at start-up except the shape, so the handler answers on the loop
 * thread without a worker job. Batch sizes are computed for the densest encoding a client can send
 * (base64 vectors, no whitespace) and, conservatively, for JSON number arrays at 16 bytes a number
 * (the longest float32 that round-trips, "-1.17549435e-38", plus a comma); both are capped by the
 * per-batch maxima of server/limits.h. The body of a batch is
 *   {"events":[E,E,...]}   with E = {"k_b64":"<4*ceil(4*H*d/3) chars>","v_b64":"<... H*dv ...>"}
 * so n events take 13 + n*(|E|+1) - 1 bytes (11 before the first event, 2 after the last, n-1 commas).
 *
 * The build string is MEMATTN_BUILD, defined by the Makefile for this file only from
 * `git describe --always --dirty` ($(BUILD)/gen/build_info.txt; "unknown" outside a git tree).
 *
 * Not done here: per-session shapes (?session=id would need the registry); live load figures (those
 * are in /metrics).
 */
#include "server/internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/params.h"
#include "server/limits.h"

#ifndef MEMATTN_BUILD
#define MEMATTN_BUILD "unknown"
#endif

#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "unknown"
#endif

#define JSON_NUMBER_BYTES 16   /* worst case per float32 in a JSON array, comma included */

/* Parses ?name= as an integer in [lo, hi]; 1 found, 0 absent, -1 answered 400. */
static int shape_param(srv_request *req, const char *name, long lo, long hi, long *out)
{
    const char *v = srv_req_query(req, name);
    if (!v)
        return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        srv_respond_error(req, 400, "bad_request", "?%s=%.40s: expected an integer in %ld..%ld", name, v, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static size_t b64_len(size_t floats)
{
    return 4 * ((4 * floats + 2) / 3);
}

/* Largest n with wrapper + n*(per+1) - 1 <= max_body (wrapper: the bytes around the array's elements),
 * capped at cap; 0 when not even one fits. */
static size_t batch_fit(size_t max_body, size_t wrapper, size_t per, size_t cap)
{
    if (max_body + 1 < wrapper + per + 1)
        return 0;
    size_t n = (max_body + 1 - wrapper) / (per + 1);
    return n < cap ? n : cap;
}

/* Adds field `name` to o: the array of the n strings s. false (nothing left allocated) on failure. */
static bool add_strings(cJSON *o, const char *name, const char *const *s, size_t n)
{
    cJSON *a = cJSON_CreateStringArray(s, (int)n);
    if (a && cJSON_AddItemToObject(o, name, a))
        return true;
    cJSON_Delete(a);
    return false;
}

static void handle_info(srv_request *req, void *ud)
{
    srv_server *srv = ud;
    const cfg_config *cfg = &srv->cfg;
    static const char *const known[] = { "heads", "dim", "value_dim", NULL };
    if (srv_req_query_check(req, known) < 0)
        return;
    long heads = 1, dim = 64, value_dim = 0;
    if (shape_param(req, "heads", 1, MA_MAX_HEADS, &heads) < 0 || shape_param(req, "dim", 1, MA_MAX_DIM, &dim) < 0 ||
        shape_param(req, "value_dim", 1, MA_MAX_DIM, &value_dim) < 0)
        return;
    if (!value_dim)
        value_dim = dim;

    size_t kf = (size_t)(heads * dim), vf = (size_t)(heads * value_dim);
    size_t ev_b64 = 23 + b64_len(kf) + b64_len(vf);                              /* {"k_b64":"..","v_b64":".."} */
    size_t ev_json = 15 + JSON_NUMBER_BYTES * (kf + vf) - 2;                       /* {"k":[..],"v":[..]} */
    size_t q_b64 = 12 + b64_len(kf);                                               /* {"q_b64":".."} */
    size_t ev_bin = sizeof(float) * (kf + vf);   /* a binary batch: 20 header bytes + this per event */
    size_t n_bin = cfg->max_body < 20 + ev_bin ? 0 : (cfg->max_body - 20) / ev_bin;
    size_t q_json = 8 + JSON_NUMBER_BYTES * kf - 1;                                /* {"q":[..]} */

    static const char *const backbones[] = { "vla", "linear", "delta", "none" };
    static const char *const selectors[] = { "index", "chunks" };
    static const char *const routes[] = { "auto", "slot", "sparse", "full", "state", "window" };
    static const char *const encodings[] = { "json", "base64", "text" };
    /* application/octet-stream: event batches only (docs/API.md, "Binary event batches"). */
    static const char *const media[] = { "application/json", "application/x-www-form-urlencoded",
                                         "application/octet-stream" };

    cJSON *o = cJSON_CreateObject();
    bool head = o && cJSON_AddStringToObject(o, "name", "memattn") &&
                cJSON_AddStringToObject(o, "version", cfg_version()) && cJSON_AddStringToObject(o, "api", "v1");
    cJSON *build = head ? cJSON_AddObjectToObject(o, "build") : NULL;
    cJSON *feat = cJSON_AddObjectToObject(o, "features");
    cJSON *lim = cJSON_AddObjectToObject(o, "limits");
    cJSON *shape = cJSON_AddObjectToObject(o, "shape");
    cJSON *batch = cJSON_AddObjectToObject(o, "batch");
    bool ok = build && feat && lim && shape && batch &&
              cJSON_AddStringToObject(build, "commit", MEMATTN_BUILD) &&
              cJSON_AddStringToObject(build, "compiler", COMPILER) &&
              cJSON_AddBoolToObject(feat, "auth", cfg->token[0] != '\0') &&
              cJSON_AddBoolToObject(feat, "cors", cfg->cors_origin[0] != '\0') &&
              add_strings(feat, "backbones", backbones, 4) &&
              add_strings(feat, "selectors", selectors, 2) &&
              add_strings(feat, "routes", routes, 6) &&
              add_strings(feat, "vector_encodings", encodings, 3) &&
              add_strings(feat, "request_media_types", media, 3) &&
              cJSON_AddNumberToObject(lim, "max_body", (double)cfg->max_body) &&
              cJSON_AddNumberToObject(lim, "max_header_bytes", (double)cfg->max_header_bytes) &&
              cJSON_AddNumberToObject(lim, "max_uri", (double)cfg->max_uri) &&
              cJSON_AddNumberToObject(lim, "max_events_per_batch", SRV_MAX_EVENTS_PER_BATCH) &&
              cJSON_AddNumberToObject(lim, "max_queries_per_batch", SRV_MAX_QUERIES_PER_BATCH) &&
              cJSON_AddNumberToObject(lim, "max_list_limit", SRV_LIST_MAX_LIMIT) &&
              cJSON_AddNumberToObject(lim, "max_name_length", MA_MAX_NAME) &&
              cJSON_AddNumberToObject(lim, "max_heads", MA_MAX_HEADS) &&
              cJSON_AddNumberToObject(lim, "max_dim", MA_MAX_DIM) &&
              cJSON_AddNumberToObject(lim, "max_connections", cfg->max_connections) &&
              cJSON_AddNumberToObject(lim, "queue", cfg->queue_max) &&
              cJSON_AddNumberToObject(shape, "heads", (double)heads) &&
              cJSON_AddNumberToObject(shape, "dim", (double)dim) &&
              cJSON_AddNumberToObject(shape, "value_dim", (double)value_dim) &&
              cJSON_AddNumberToObject(batch, "event_bytes_b64", (double)ev_b64) &&
              cJSON_AddNumberToObject(batch, "events_b64",
                                      (double)batch_fit(cfg->max_body, 13, ev_b64, SRV_MAX_EVENTS_PER_BATCH)) &&
              cJSON_AddNumberToObject(batch, "events_json",
                                      (double)batch_fit(cfg->max_body, 13, ev_json, SRV_MAX_EVENTS_PER_BATCH)) &&
              cJSON_AddNumberToObject(batch, "events_binary",
                                      (double)(n_bin < SRV_MAX_EVENTS_PER_BATCH ? n_bin : SRV_MAX_EVENTS_PER_BATCH)) &&
              cJSON_AddNumberToObject(batch, "queries_b64",
                                      (double)batch_fit(cfg->max_body, 14, q_b64, SRV_MAX_QUERIES_PER_BATCH)) &&
              cJSON_AddNumberToObject(batch, "queries_json",
                                      (double)batch_fit(cfg->max_body, 14, q_json, SRV_MAX_QUERIES_PER_BATCH));
    if (!ok) {
        cJSON_Delete(o);
        srv_respond_error(req, 503, "overloaded", "out of memory building the answer");
        return;
    }
    srv_respond_json(req, 200, o);
}

int srv_info_register(srv_server *srv)
{
    return srv_route_add(srv->router, "GET", "/v1/info", handle_info, srv);
}
