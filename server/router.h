/*
 * server/router.h — the routing table: method + path template -> handler.
 *
 * Templates are absolute paths made of '/'-separated segments; a segment is either literal text or a
 * parameter `{name}` that matches one non-empty path segment, e.g. "/v1/sessions/{id}/slots/{name}".
 * Lookup is by segments, so "/v1/sessions/{id}" never matches "/v1/sessions/a/b" nor
 * "/v1/sessions/" (trailing slash) nor "//". When several templates match a path, the one that is
 * literal at the first segment where they differ wins ("/v1/sessions/x/slots" beats
 * "/v1/sessions/{id}/{what}"), independently of registration order.
 *
 * Parameter values are percent-decoded copies; handlers validate them (ids and slot names have their
 * own character rules in API.md). The router does not know HTTP: 404/405 are decided by
 * srv_router_match()'s return value and answered by the server (server/http.c) with the Allow header
 * built from the table.
 *
 * Threads: build the table before the server starts (api_init); matching is read-only afterwards and
 * may be done from any thread.
 */
#ifndef SRV_ROUTER_H
#define SRV_ROUTER_H

#include <stddef.h>

typedef struct srv_router srv_router;
typedef struct srv_request srv_request;

/* A request handler, called on the loop thread with the request and the userdata given at
 * registration. It answers with one of the srv_respond_* functions (server/http.h), either before it
 * returns or later, on the loop thread (typically from a worker job's completion callback). */
typedef void (*srv_handler)(srv_request *req, void *userdata);

#define SRV_MAX_PARAMS   8      /* parameters per template */
#define SRV_MAX_SEGMENTS 16     /* segments per template; longer paths never match */
#define SRV_MAX_ALLOW    14     /* distinct methods listed in an Allow header */

/* The result of a successful match. The strings point into the router (template) and into `buf`
 * handed to srv_router_match (parameter values); they live as long as both. */
typedef struct {
    srv_handler handler;
    void *userdata;
    const char *tmpl;                 /* the matched template, e.g. "/v1/sessions/{id}" */
    int nparams;
    const char *names[SRV_MAX_PARAMS];
    const char *values[SRV_MAX_PARAMS];
} srv_match;

/* Creates an empty table; NULL when out of memory. */
srv_router *srv_router_create(void);

/* Frees the table and its copies of the templates. NULL is a no-op. */
void srv_router_destroy(srv_router *r);

/* Registers `handler` for `method` (upper case token, e.g. "GET") and `tmpl`. The strings are copied.
 * Errors: MA_EINVAL for a template that is not absolute, has an empty segment, a malformed or empty
 * `{}` parameter, a parameter name used twice, more than SRV_MAX_PARAMS parameters or
 * SRV_MAX_SEGMENTS segments, or an empty method; MA_EEXISTS if the same method and the same template
 * shape (parameter names ignored) is already registered; MA_ENOMEM. */
int srv_route_add(srv_router *r, const char *method, const char *tmpl, srv_handler handler,
                  void *userdata);

/* Looks up `method` and `path` (the path of the request target, without query string, still
 * percent-encoded). `buf` (of `buflen` bytes) receives the decoded parameter values.
 * Returns 0 and fills *m on a match.
 * MA_ENOTFOUND: no template matches the path (404).
 * A HEAD request matches the GET route of the path when no HEAD route is registered for it.
 * MA_ECONFLICT: some template matches the path but not with this method (405, or the answer to
 *   OPTIONS); `allow` (if non-NULL) receives the comma-separated methods that do, in registration
 *   order, with HEAD after GET and OPTIONS last, e.g. "GET, HEAD, PUT, OPTIONS".
 * MA_EINVAL: the path is malformed (not absolute, bad percent-encoding, encoded NUL) or `buf` is too
 *   small for the decoded values (the server answers 400).
 */
int srv_router_match(const srv_router *r, const char *method, const char *path, srv_match *m,
                     char *buf, size_t buflen, char *allow, size_t allowlen);

#endif
