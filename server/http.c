/*
 * server/http.c — the request API of server/http.h: accessors, routing and auth of a parsed request,
 * and the serialisation of answers.
 *
 * Design. An answer is serialised at once into one buffer (status line, headers, body), counted in
 * the metrics and logged; the connection then writes the answers at the head of its queue in order
 * (conn.c). Nothing here blocks. Auth is checked before routing; requests that start after the
 * drain began never get here (conn.c answers them 503 `shutting_down`).
 *
 * Not done here: content negotiation (every answer is JSON except /metrics), compression, ETags.
 */
#include "server/internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/error.h"
#include "server/log.h"

int srv_buf_reserve(srv_buf *b, size_t n)
{
    if (b->len + n + 1 <= b->cap)
        return 0;
    char *p = realloc(b->p, b->len + n + 1);
    if (!p)
        return MA_ENOMEM;
    b->p = p;
    b->cap = b->len + n + 1;
    b->p[b->len] = '\0';
    return 0;
}

int srv_buf_append(srv_buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return MA_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

void srv_buf_free(srv_buf *b)
{
    free(b->p);
    *b = (srv_buf){ 0 };
}

/* Bounded copy with NUL (snprintf's format parsing is measurable on the per-request path). */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

srv_request *srv_request_new(srv_server *srv)
{
    srv_request *req = calloc(1, sizeof(*req));
    if (!req)
        return NULL;
    req->srv = srv;
    req->t_start = uv_hrtime();
    req->file_fd = req->spool_fd = -1;
    copy_str(req->route, sizeof req->route, "(unmatched)");
    return req;
}

void srv_request_free(srv_request *req)
{
    if (!req)
        return;
    srv_buf_free(&req->url);
    srv_buf_free(&req->hbuf);
    srv_buf_free(&req->body);
    srv_buf_free(&req->extra);
    free(req->headers);
    free(req->qbuf);
    free(req->resp);
    if (req->file_fd >= 0)
        close(req->file_fd);
    if (req->spool_fd >= 0)
        close(req->spool_fd);
    free(req);
}

/* ---- accessors ---- */

const char *srv_req_path(const srv_request *req) { return req->path ? req->path : ""; }
const char *srv_req_route(const srv_request *req) { return req->route; }
srv_server *srv_req_server(const srv_request *req) { return req->srv; }

const char *srv_req_param(const srv_request *req, const char *name)
{
    for (int i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.names[i], name) == 0)
            return req->match.values[i];
    return NULL;
}

const char *srv_req_header(const srv_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->hbuf.p + req->headers[i].name, name) == 0)
            return req->hbuf.p + req->headers[i].value;
    return NULL;
}

bool srv_media_type_is(const char *ct, const char *type)
{
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, "; \t");
    return n == strlen(type) && strncasecmp(ct, type, n) == 0;
}

bool srv_req_media_type_is(const srv_request *req, const char *type)
{
    return srv_media_type_is(srv_req_header(req, "Content-Type"), type);
}

const char *srv_req_body(const srv_request *req, size_t *len)
{
    if (len)
        *len = req->body.len;
    return req->body.p ? req->body.p : "";
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Decodes form encoding of [s, s+n) into out (at most n bytes + NUL); bad escapes stay literal. */
static size_t form_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            out[o++] = ' ';
        } else if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0 &&
                   (hexval(s[i + 1]) | hexval(s[i + 2])) != 0) {   /* %00 would truncate: kept literal */
            out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o++] = '\0';
    return o;
}

const char *srv_req_query(const srv_request *req, const char *name)
{
    srv_request *r = (srv_request *)req;
    if (!r->query)
        return NULL;
    if (!r->qbuf) {
        size_t n = strlen(r->query);
        /* Every pair decodes to at most its own length plus two NULs. */
        r->qbuf = malloc(2 * n + 4);
        if (!r->qbuf)
            return NULL;
        size_t o = 0;
        const char *p = r->query, *end = r->query + n;
        while (p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *stop = amp ? amp : end;
            if (stop > p) {
                const char *eq = memchr(p, '=', (size_t)(stop - p));
                const char *nend = eq ? eq : stop;
                o += form_decode(p, (size_t)(nend - p), r->qbuf + o);
                if (eq)
                    o += form_decode(eq + 1, (size_t)(stop - eq - 1), r->qbuf + o);
                else
                    r->qbuf[o++] = '\0';
            }
            p = stop + 1;
        }
        r->qlen = o;
    }
    for (size_t o = 0; o < r->qlen;) {
        const char *k = r->qbuf + o;
        const char *v = k + strlen(k) + 1;
        if (strcmp(k, name) == 0)
            return v;
        o = (size_t)(v - r->qbuf) + strlen(v) + 1;
    }
    return NULL;
}

/* ---- answers ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static bool bad_header_text(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return true;
    return false;
}

int srv_resp_header(srv_request *req, const char *name, const char *value)
{
    static const char *const reserved[] = { "content-length", "content-type", "connection", "date",
                                            "transfer-encoding" };
    if (!name || !*name || !value || bad_header_text(name) || bad_header_text(value) || strchr(name, ':'))
        return MA_EINVAL;
    for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
        if (strcasecmp(name, reserved[i]) == 0)
            return MA_EINVAL;
    if (srv_buf_append(&req->extra, name, strlen(name)) < 0 || srv_buf_append(&req->extra, ": ", 2) < 0 ||
        srv_buf_append(&req->extra, value, strlen(value)) < 0 || srv_buf_append(&req->extra, "\r\n", 2) < 0)
        return MA_ENOMEM;
    return 0;
}

static char *put(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static char *put_uint(char *p, size_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* Serialises and hands the answer to the connection (or frees it when the connection is gone). With
 * req->file_fd set the body is that file (req->file_len bytes), sent by the connection after the head
 * (stream.c); `body` is then NULL and nothing of it is copied. */
static int finish(srv_request *req, int status, const char *ctype, const char *body, size_t blen)
{
    if (req->answered) {
        srv_log(CFG_LOG_ERROR, "bug: request %s %s answered twice (status %d)", req->method, srv_req_path(req), status);
        return MA_EINVAL;
    }
    srv_server *srv = req->srv;
    srv_conn *c = req->conn;
    /* Draining, or the client has finished sending: the last request queued on the connection closes
     * it. Earlier ones keep it open so every request already read still gets its answer. */
    if (c && (srv->draining || c->eof) && !req->next && !c->cur)
        req->close_after = true;
    bool close = req->close_after || !req->keep_alive;
    if (status >= 200)
        srv_conventions_finish(req, status);
    /* 1xx, 204 and 304 carry no body and no Content-Length; HEAD gets the length but no body. */
    bool no_length = status < 200 || status == 204 || status == 304;
    if (no_length)
        blen = 0;
    size_t send_blen = strcmp(req->method, "HEAD") == 0 || req->file_fd >= 0 ? 0 : blen;
    /* Built with memcpy rather than snprintf: this runs once per request and printf's format parsing
     * showed up in profiles of the /healthz benchmark. */
    char head[512];
    char *p = head;
    p = put(p, "HTTP/1.1 ");
    p = put_uint(p, (unsigned)status);
    *p++ = ' ';
    p = put(p, reason_phrase(status));
    p = put(p, "\r\nDate: ");
    p = put(p, srv_server_date(srv));
    p = put(p, "\r\nServer: memattn\r\n");
    p = put(p, srv->node_hdr);   /* at most 83 bytes: the head stays under its 512 */
    if (ctype && blen && strlen(ctype) < 200) {
        p = put(p, "Content-Type: ");
        p = put(p, ctype);
        p = put(p, "\r\n");
    }
    if (!no_length) {
        p = put(p, "Content-Length: ");
        p = put_uint(p, blen);
        p = put(p, "\r\n");
    }
    if (close)
        p = put(p, "Connection: close\r\n");
    int hn = (int)(p - head);
    size_t total = (size_t)hn + req->extra.len + 2 + send_blen;
    req->resp = malloc(total);
    int rc = 0;
    if (!req->resp) {
        /* Without memory for the answer the connection cannot be kept in a consistent state. */
        req->close_after = true;
        rc = MA_ENOMEM;
        total = 0;
    } else {
        memcpy(req->resp, head, (size_t)hn);
        if (req->extra.len)
            memcpy(req->resp + hn, req->extra.p, req->extra.len);
        memcpy(req->resp + hn + req->extra.len, "\r\n", 2);
        if (send_blen)
            memcpy(req->resp + hn + req->extra.len + 2, body, send_blen);
    }
    req->resp_len = total;
    req->body_len = blen;
    req->status = status;
    req->answered = true;
    if (close)
        req->close_after = true;

    uint64_t us = (uv_hrtime() - req->t_start) / 1000;
    const char *method = req->method[0] ? req->method : "-";
    srv_server_count(srv, method, req->route, status, (double)us / 1e6);
    srv_log_request(method, req->path ? req->path : (req->url.p ? req->url.p : "-"), status, blen, us,
                    c ? c->remote : "-");

    if (c)
        srv_conn_flush(c);
    else
        srv_request_free(req);
    return rc;
}

int srv_respond_file(srv_request *req, int status, const char *content_type, int fd, uint64_t len)
{
    if (strcmp(req->method, "HEAD") == 0 || !req->conn) {
        close(fd);   /* nothing to send: the head alone, or nobody to send it to */
    } else {
        req->file_fd = fd;
        req->file_len = len;
        req->close_after = true;
    }
    return finish(req, status, content_type, NULL, (size_t)len);
}

int srv_respond_raw(srv_request *req, int status, const char *content_type, const char *body, size_t len)
{
    return finish(req, status, content_type, body, len);
}

int srv_respond_empty(srv_request *req, int status)
{
    return finish(req, status, NULL, NULL, 0);
}

int srv_respond_json(srv_request *req, int status, cJSON *body)
{
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (body && !text) {
        req->close_after = true;
        static const char oom[] =
            "{\"error\":{\"code\":\"overloaded\",\"message\":\"out of memory serialising the answer\"}}";
        finish(req, 503, "application/json", oom, sizeof oom - 1);
        return MA_ENOMEM;
    }
    int rc = finish(req, status, "application/json", text ? text : "{}", text ? strlen(text) : 2);
    cJSON_free(text);
    return rc;
}

static int verror_text(srv_request *req, int status, const char *code, const char *msg)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    if (!err || !cJSON_AddStringToObject(err, "code", code) || !cJSON_AddStringToObject(err, "message", msg)) {
        cJSON_Delete(root);
        root = NULL;
    }
    return srv_respond_json(req, status, root);
}

static int verror(srv_request *req, int status, const char *code, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return verror_text(req, status, code, msg);
}

int srv_respond_error(srv_request *req, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    if (strcmp(code, "storage_error") == 0) {
        /* Every storage failure is counted and logged with its message, whichever route met it. */
        char msg[1024];
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (req->srv && req->srv->c_storage_errors)
            srv_metric_child_add(req->srv->c_storage_errors, 1);
        srv_log(CFG_LOG_ERROR, "%s %s: %d storage_error: %s", req->method[0] ? req->method : "-",
                req->path ? req->path : "-", status, msg);
        return verror_text(req, status, code, msg);
    }
    va_start(ap, fmt);
    int rc = verror(req, status, code, fmt, ap);
    va_end(ap);
    return rc;
}

void srv_request_fail(srv_request *req, int status, const char *code, const char *fmt, ...)
{
    req->close_after = true;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_log(CFG_LOG_WARN, "%s: %s %s: %d %s (closing): %s", req->conn ? req->conn->remote : "-",
            req->method[0] ? req->method : "-", req->path ? req->path : "-", status, code, msg);
    srv_respond_error(req, status, code, "%s", msg);
}

/* ---- dispatch ---- */

/* Compares in time independent of where the strings differ (the token is a secret). */
static bool token_equal(const char *given, size_t glen, const char *token)
{
    size_t tlen = strlen(token);
    unsigned char diff = glen != tlen;
    for (size_t i = 0; i < tlen; i++)
        diff |= (unsigned char)(token[i] ^ (i < glen ? given[i] : 0));
    return diff == 0;
}

void srv_request_dispatch(srv_request *req)
{
    srv_server *srv = req->srv;
    /* Auth before routing: without the token nothing under /v1/ is revealed, not even which paths exist.
     * A CORS preflight from an allowed origin is the exception: browsers never send credentials with it. */
    if (srv->cfg.token[0] && strncmp(req->path, "/v1/", 4) == 0 &&
        !(srv_cors_is_preflight(req) && srv_cors_origin_allowed(req))) {
        const char *auth = srv_req_header(req, "Authorization");
        if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !token_equal(auth + 7, strlen(auth + 7), srv->cfg.token)) {
            srv_resp_header(req, "WWW-Authenticate", "Bearer realm=\"memattn\"");
            srv_respond_error(req, 401, "unauthorized",
                              auth ? "the bearer token is not valid" : "missing Authorization: Bearer <token> header");
            return;
        }
    }
    char allow[128];
    int rc = srv_router_match(srv->router, req->method, req->path, &req->match, req->params, sizeof req->params,
                              allow, sizeof allow);
    if (rc == MA_ENOTFOUND) {
        srv_respond_error(req, 404, "not_found", "no resource at %s", req->path);
        return;
    }
    if (rc == MA_ECONFLICT && strcmp(req->method, "OPTIONS") == 0) {
        snprintf(req->route, sizeof req->route, "(options)");
        srv_options_respond(req, allow);
        return;
    }
    if (rc == MA_ECONFLICT) {
        snprintf(req->route, sizeof req->route, "(method)");
        srv_resp_header(req, "Allow", allow);
        srv_respond_error(req, 405, "method_not_allowed", "%s is not allowed on %s; allowed: %s", req->method,
                          req->path, allow);
        return;
    }
    if (rc < 0) {
        srv_respond_error(req, 400, "bad_request",
                          "malformed path %s: expected '/'-separated segments with valid percent-encoding",
                          req->path);
        return;
    }
    copy_str(req->route, sizeof req->route, req->match.tmpl);
    req->match.handler(req, req->match.userdata);
}
