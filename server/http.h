/*
 * server/http.h — what a handler sees: the request, and the ways to answer it.
 *
 * A srv_request is created by the server when a request's headers and complete body have been read
 * and checked (size limits, Content-Type rule of API.md, auth), routed, and handed to the handler.
 * Everything a handler reads from it is owned by the request and valid until the request is answered.
 *
 * Answering. Exactly one srv_respond_* call per request, on the loop thread, either inside the handler
 * or later (asynchronous completion: submit a job with srv_pool_submit() and answer from its `done`
 * callback). The request stays valid until answered even if the client has gone away; answering a
 * request whose connection is closed just frees it. After a srv_respond_* call the request pointer
 * is invalid. Responses of pipelined requests on one connection are sent in request order even when
 * they are answered out of order. Every answer is counted in the metrics and logged.
 *
 * Bodies too large for memory (session export and import) go through files: srv_respond_file, and the
 * spooled body of PUT /v1/sessions/{id}/import (srv_req_body_fd); server/stream.c.
 *
 * Not done here: chunked (unknown-length) answers, trailers, HTTP/2.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

typedef struct srv_request srv_request;
typedef struct srv_server srv_server;

/* ---- reading the request (loop thread; the strings live until the request is answered) ---- */

const char *srv_req_path(const srv_request *req);     /* request path without query, as sent */
const char *srv_req_route(const srv_request *req);    /* matched template, e.g. "/v1/sessions/{id}" */

/* Path parameter `{name}` of the matched template, percent-decoded; NULL if the template has none. */
const char *srv_req_param(const srv_request *req, const char *name);

/* First value of query parameter `name`, percent-decoded ('+' is a space; %00 and malformed escapes
 * stay literal); "" for `?name` without '='; NULL when absent (or when the decoded copy cannot be
 * allocated). */
const char *srv_req_query(const srv_request *req, const char *name);

/* Refuses unknown query parameters like unknown body fields: when the query string names a parameter
 * not in `known` (NULL-terminated), ANSWERS 400 `bad_request` naming it and returns MA_EINVAL (the
 * request is then gone); else 0. */
int srv_req_query_check(srv_request *req, const char *const *known);

/* First header named `name` (case-insensitive); NULL when absent. Repeated headers are not merged. */
const char *srv_req_header(const srv_request *req, const char *name);

/* True when the request's Content-Type is the media type `type` (e.g. "application/octet-stream"),
 * compared without case and without its parameters (";charset=..."); false when it has none. */
bool srv_req_media_type_is(const srv_request *req, const char *type);

/* The same test on a Content-Type value (NULL: false). */
bool srv_media_type_is(const char *content_type, const char *type);

/* The complete body (de-chunked), NUL-terminated for convenience; *len (if non-NULL) gets its length,
 * which may be 0. Never NULL. */
const char *srv_req_body(const srv_request *req, size_t *len);

/* The body of a spooled request (PUT /v1/sessions/{id}/import): an unlinked temporary file, owned by the
 * request (closed when it is answered), positioned at its end — read it with pread from offset 0, from
 * any thread, until the request is answered. *len (if non-NULL) gets its length. -1 for every other
 * request (its body is srv_req_body's). Such a body is not limited by --max-body and may have any
 * Content-Type. */
int srv_req_body_fd(const srv_request *req, uint64_t *len);

/* The server the request came from (for its pool and metrics). */
srv_server *srv_req_server(const srv_request *req);

/* ---- answering (loop thread; exactly one of srv_respond_* per request) ---- */

/* Adds a response header (copied) to send with the answer, e.g. ("ETag", "\"3\""). Must be called
 * before the srv_respond_* call. Returns 0, MA_EINVAL (name/value with CR, LF or NUL, or a header
 * the server sets itself: Content-Length, Content-Type, Connection, Date, Transfer-Encoding), MA_ENOMEM. */
int srv_resp_header(srv_request *req, const char *name, const char *value);

/* Answers `status` with `body` serialised as JSON (takes ownership of body, even on error; NULL body
 * sends "{}"). Returns 0 or MA_ENOMEM (then a 503 `overloaded` answer is attempted instead). */
int srv_respond_json(srv_request *req, int status, cJSON *body);

/* Answers API.md's error body {"error":{"code":code,"message":<formatted>}} with `status`. */
int srv_respond_error(srv_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Answers `status` (typically 204) with no body. */
int srv_respond_empty(srv_request *req, int status);

/* Answers `status` with the first `len` bytes of the file `fd` as the body (Content-Length: len),
 * e.g. an unlinked temporary file the handler wrote. Takes ownership of fd, even on error. The file is
 * sent in pieces as the client reads (one piece in memory), and the connection closes after it. The
 * file must not change until it is closed. Returns 0 or MA_ENOMEM. */
int srv_respond_file(srv_request *req, int status, const char *content_type, int fd, uint64_t len);

/* Answers with an arbitrary body (copied) and Content-Type (e.g. Prometheus text). */
int srv_respond_raw(srv_request *req, int status, const char *content_type, const char *body,
                    size_t len);

#endif
