/*
 * server/conventions.c — HTTP conventions the server applies around every handler: OPTIONS answers,
 * CORS (preflights and the headers of actual answers), and Retry-After on 503.
 *
 * Design. The router knows which methods a path accepts (srv_router_match's Allow list); this file
 * turns that into the answer to OPTIONS (204 + Allow) and, for a CORS preflight from an origin of
 * --cors-origin, into Access-Control-Allow-Methods/-Headers/-Max-Age. Every answer passes through
 * srv_conventions_finish() just before it is serialised (http.c), which adds the CORS headers of an
 * allowed Origin (Access-Control-Allow-Origin, Expose-Headers, Vary) and Retry-After to a 503 that has
 * none, so limits, drain, auth and handler errors all get them without each answering site knowing.
 *
 * CORS is off while --cors-origin is empty: no Access-Control-* header is ever sent and a preflight is
 * a plain OPTIONS request. Credentials (cookies) are not used by the API, so
 * Access-Control-Allow-Credentials is never sent; the bearer token travels in Authorization, which
 * the preflight allows.
 *
 * Not done here: per-route CORS policies, Access-Control-Allow-Private-Network.
 */
#include "server/internal.h"

#include "core/error.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define CORS_ALLOW_HEADERS  "Authorization, Content-Type, If-Match, If-None-Match, Idempotency-Key"
#define CORS_EXPOSE_HEADERS "ETag, Location, Retry-After, Allow, Idempotent-Replayed"
#define CORS_MAX_AGE        "600"
#define RETRY_AFTER_S       "1"

/* True when the response headers added so far include `name`. */
static bool has_extra(const srv_request *req, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = req->extra.p; p && *p;) {
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':')
            return true;
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        p = eol + 2;
    }
    return false;
}

bool srv_cors_origin_allowed(const srv_request *req)
{
    return req->srv->cfg.cors_origin[0] && cfg_cors_allows(&req->srv->cfg, srv_req_header(req, "Origin"));
}

bool srv_cors_is_preflight(const srv_request *req)
{
    return strcmp(req->method, "OPTIONS") == 0 && srv_req_header(req, "Origin") &&
           srv_req_header(req, "Access-Control-Request-Method");
}

void srv_options_respond(srv_request *req, const char *allow)
{
    srv_resp_header(req, "Allow", allow);
    if (srv_cors_is_preflight(req) && srv_cors_origin_allowed(req)) {
        srv_resp_header(req, "Access-Control-Allow-Methods", allow);
        srv_resp_header(req, "Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
        srv_resp_header(req, "Access-Control-Max-Age", CORS_MAX_AGE);
    }
    srv_respond_empty(req, 204);
}

int srv_req_query_check(srv_request *req, const char *const *known)
{
    if (!req->query || !*req->query)
        return 0;
    srv_req_query(req, "");   /* decodes the query into qbuf: name NUL value NUL ... */
    for (size_t o = 0; req->qbuf && o < req->qlen;) {
        const char *k = req->qbuf + o;
        const char *v = k + strlen(k) + 1;
        bool ok = false;
        for (size_t i = 0; known && known[i] && !ok; i++)
            ok = strcmp(k, known[i]) == 0;
        if (!ok) {
            char list[256] = "";
            size_t n = 0;
            for (size_t i = 0; known && known[i] && n < sizeof list; i++)
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", known[i]);
            srv_respond_error(req, 400, "bad_request", "unknown query parameter \"%.64s\"; %s%s", k,
                              n ? "accepted: " : "this resource takes no query parameters", list);
            return MA_EINVAL;
        }
        o = (size_t)(v - req->qbuf) + strlen(v) + 1;
    }
    return 0;
}

void srv_conventions_finish(srv_request *req, int status)
{
    if (status == 503 && !has_extra(req, "Retry-After"))
        srv_resp_header(req, "Retry-After", RETRY_AFTER_S);
    if (!req->srv->cfg.cors_origin[0])
        return;
    /* The answer depends on Origin: caches must key on it. */
    srv_resp_header(req, "Vary", "Origin");
    if (!srv_cors_origin_allowed(req))
        return;
    srv_resp_header(req, "Access-Control-Allow-Origin", srv_req_header(req, "Origin"));
    srv_resp_header(req, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
}
