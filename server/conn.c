/*
 * server/conn.c — connections: reading, parsing (llhttp, strict), limits, timeouts, ordered writes.
 *
 * Design. llhttp runs with no lenient flag. Its callbacks return HPE_PAUSED at message begin, headers
 * complete and message complete, so feed() regains control at each boundary with the exact input
 * position (llhttp_get_error_pos) and does the work there rather than inside callbacks: counting the
 * raw bytes of the request head (431 counts what was sent, whitespace included, not what llhttp
 * reports), checking the head's syntax where llhttp 8 is lenient even in strict mode (bare LF,
 * obs-fold, whitespace before the colon are rejected: they enable request smuggling behind proxies
 * that read them differently), checking Content-Length against --max-body before any body byte is
 * read (413), the Content-Type rule (415), the HTTP version (llhttp takes a missing one for HTTP/0.9
 * and accepts HTTP/2.0: 400 / 505), duplicates of framing, auth and precondition headers (400), and
 * queueing the complete request.
 * Parsed requests are dispatched at once; their answers are written strictly in queue order (an answer
 * for a later request waits in memory). At most SRV_PIPELINE_MAX requests are queued per connection:
 * then reading stops and the unparsed input is stashed until answers drain the queue. Reading also
 * stops while answers handed to libuv but unwritten hold more than SRV_WRITE_BACKLOG bytes of memory
 * (unsent_bytes; the request behind an answer is freed when the answer is handed over), so a client
 * that pipelines and never reads holds a small, fixed amount of the daemon's memory.
 * One timer per connection: header timeout from connection start / request start, body timeout
 * between body bytes, idle timeout between requests, no timeout while requests are being worked on.
 * Any error answer closes the connection after it is written: shutdown (FIN), then read and discard
 * for a moment ("lingering close") so the client reads the answer instead of a reset.
 *
 * Not done here: HTTP/1.0 persistent connections without Connection: keep-alive (llhttp's rule is
 * used), upgrades (answered, then closed), request trailers (ignored by llhttp callbacks).
 */
#include "server/internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "server/log.h"

enum { EV_NONE = 0, EV_BEGIN, EV_HEADERS, EV_COMPLETE };
enum { SCAN_REQLINE = 0, SCAN_LINESTART, SCAN_NAME, SCAN_VALUE };

#define LINGER_MS 2000

static void conn_feed(srv_conn *c, const char *data, size_t len);

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *h)
{
    srv_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    srv_server *srv = c->srv;
    free(c);
    srv_server_conn_gone(srv);
}

void srv_conn_close(srv_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    srv_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    srv_metric_child_set(srv->c_conns, (int64_t)srv->nconns);

    /* Answered requests waiting behind an unanswered one go; unanswered ones are orphaned: their
     * handler answers them later and that frees them. */
    while (c->qhead) {
        srv_request *r = c->qhead;
        c->qhead = r->next;
        if (r->answered) {
            srv_request_free(r);
        } else {
            r->conn = NULL;
            r->next = NULL;
        }
    }
    c->qtail = NULL;
    c->nqueued = 0;
    c->queued_bytes = 0;
    srv_request_free(c->cur);
    c->cur = NULL;
    free(c->stash);
    c->stash = NULL;
    srv_conn_pump_closing(c);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_timer(uv_timer_t *t);

/* Sets the connection's one deadline `ms` from now. The timer is re-armed only when the new deadline
 * is earlier than the armed one; a timer that fires before the deadline re-arms for the rest
 * (on_timer). In steady keep-alive traffic this makes the per-request deadline changes (head, body,
 * idle) plain stores instead of timer-heap operations. */
static void timer_start(srv_conn *c, unsigned ms)
{
    uint64_t now = uv_now(c->srv->loop);
    c->deadline = now + ms;
    if (!c->timer_armed || c->armed_at > c->deadline) {
        uv_timer_start(&c->timer, on_timer, ms, 0);
        c->timer_armed = true;
        c->armed_at = c->deadline;
    }
}

void srv_conn_touch(srv_conn *c)
{
    c->deadline = 0;
    timer_start(c, c->srv->cfg.idle_timeout_ms);
}

/* No deadline (a request is being worked on): the armed timer, if any, will find none and stop. */
static void timer_clear(srv_conn *c)
{
    c->deadline = 0;
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    srv_conn *c = sr->data;
    if (c->closing)
        return;
    if (status < 0 || c->eof) {
        srv_conn_close(c);
        return;
    }
    /* Keep reading (and discarding) briefly so unread input does not turn our close into a reset
     * that could destroy the answer before the client has read it. */
    c->lingering = true;
    timer_start(c, LINGER_MS);
    if (!c->reading)
        srv_conn_close(c);
}

/* The last answer is queued for writing: send FIN after it, then linger. */
void srv_conn_shutdown(srv_conn *c)
{
    if (c->shutting || c->closing)
        return;
    c->shutting = true;
    c->stop_parsing = true;
    /* Bounds the wait for a client that does not read the last answer. */
    timer_start(c, c->srv->cfg.idle_timeout_ms);
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        srv_conn_close(c);
}

/* ---- the request queue and writes ---- */

static size_t request_bytes(const srv_request *r)
{
    return r->url.len + r->hbuf.len + r->body.len;
}

/* True when the connection holds as many parsed requests, or as much memory in unsent answers (a
 * client that sends but does not read), as it may: stop reading until answers or writes make room. */
static bool queue_full(const srv_conn *c)
{
    const cfg_config *cfg = &c->srv->cfg;
    return c->nqueued >= SRV_PIPELINE_MAX || c->queued_bytes > cfg->max_body + cfg->max_header_bytes ||
           c->unsent_bytes > SRV_WRITE_BACKLOG;
}

static void enqueue_cur(srv_conn *c)
{
    srv_request *r = c->cur;
    c->cur = NULL;
    c->queued_bytes += request_bytes(r);
    r->next = NULL;
    if (c->qtail)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->nqueued++;
}

/* An answer handed to libuv: only the serialised bytes stay (the request itself is freed at once),
 * and their memory is counted in the connection's unsent_bytes until written. */
typedef struct {
    uv_write_t w;
    srv_conn *c;
    char *resp;
    size_t cost;        /* counted in c->unsent_bytes */
} write_op;

/* Memory an unsent answer of n bytes holds: the bytes, the write request, the allocator's headers. */
#define WRITE_COST(n) ((n) + sizeof(write_op) + 32)

static void resume_reading(srv_conn *c);

static void on_write(uv_write_t *w, int status)
{
    write_op *op = (write_op *)w;
    /* The connection is still allocated: libuv runs (or cancels) write callbacks before the close
     * callback that frees it. */
    srv_conn *c = op->c;
    c->unsent_bytes -= op->cost;
    free(op->resp);
    free(op);
    c->writes_pending--;
    if (c->closing)
        return;
    if (status < 0) {
        srv_conn_close(c);
        return;
    }
    /* The slow reader has caught up: read on. */
    if (c->pipeline_full && !c->in_feed && !queue_full(c))
        resume_reading(c);
}

void srv_conn_flush(srv_conn *c)
{
    if (c->closing || c->shutting)
        return;
    while (c->qhead && c->qhead->answered) {
        srv_request *r = c->qhead;
        c->qhead = r->next;
        if (!c->qhead)
            c->qtail = NULL;
        c->nqueued--;
        c->queued_bytes -= request_bytes(r);
        bool last = r->close_after;
        if (!r->resp_len) {   /* the answer could not be serialised (out of memory) */
            srv_request_free(r);
            srv_conn_close(c);
            return;
        }
        if (r->file_fd >= 0) {   /* a file answer (stream.c): its body follows the head; always last */
            c->pump = srv_pump_new(c, r->file_fd, r->file_len);
            r->file_fd = -1;
            if (!c->pump) {
                srv_request_free(r);
                srv_conn_close(c);
                return;
            }
        }
        /* Most answers fit the socket buffer: write now and skip the write request and its deferred
         * callback. uv_try_write refuses (EAGAIN) while earlier writes are queued, keeping order. */
        uv_buf_t b = uv_buf_init(r->resp, (unsigned)r->resp_len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == (int)r->resp_len) {
            srv_request_free(r);
        } else {
            if (n > 0) {
                b.base += n;
                b.len -= (size_t)n;
            } else if (n != UV_EAGAIN) {
                srv_request_free(r);
                srv_conn_close(c);
                return;
            }
            write_op *op = malloc(sizeof(*op));
            if (!op || uv_write(&op->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
                free(op);
                srv_request_free(r);
                srv_conn_close(c);
                return;
            }
            op->c = c;
            op->resp = r->resp;
            op->cost = WRITE_COST(b.len);
            r->resp = NULL;
            srv_request_free(r);
            c->unsent_bytes += op->cost;
            c->writes_pending++;
        }
        if (last) {
            /* Requests parsed after a closing answer are never answered on this connection. */
            while (c->qhead) {
                srv_request *o = c->qhead;
                c->qhead = o->next;
                if (o->answered) {
                    srv_request_free(o);
                } else {
                    o->conn = NULL;
                    o->next = NULL;
                }
            }
            c->qtail = NULL;
            c->nqueued = 0;
            c->queued_bytes = 0;
            if (c->pump)
                srv_pump_start(c);   /* shuts down when the file has been sent */
            else
                srv_conn_shutdown(c);
            return;
        }
    }
    if (c->pipeline_full) {
        /* Room again: parse the stashed input (which may queue more) and read on. Not from inside
         * conn_feed, which resumes by itself when it returns. */
        if (!c->in_feed && !queue_full(c))
            resume_reading(c);
        return;
    }
    if (c->qhead || c->cur)
        return;
    if (c->eof || c->srv->draining) {
        srv_conn_shutdown(c);   /* after the answers still being written */
        return;
    }
    timer_start(c, c->srv->cfg.idle_timeout_ms);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    srv_conn *c = h->data;
    buf->base = c->srv->rbuf;
    buf->len = 65536;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    srv_conn *c = s->data;
    if (c->closing)
        return;
    if (nread < 0) {
        uv_read_stop(s);
        c->reading = false;
        c->eof = true;
        if (c->lingering || nread != UV_EOF) {
            srv_conn_close(c);
            return;
        }
        /* The client has finished sending (it may still read): a request cut off mid-way is
         * abandoned, complete ones still get their answers, written ones are not cut short. */
        srv_request_free(c->cur);
        c->cur = NULL;
        if (!c->qhead && !c->shutting && !c->pump)   /* a file being sent shuts down when it ends */
            srv_conn_shutdown(c);
        return;
    }
    if (nread == 0 || c->lingering || c->stop_parsing)
        return;
    conn_feed(c, buf->base, (size_t)nread);
}

static void resume_reading(srv_conn *c)
{
    c->pipeline_full = false;
    char *stash = c->stash;
    size_t n = c->stash_len;
    c->stash = NULL;
    c->stash_len = 0;
    if (stash) {
        conn_feed(c, stash, n);
        free(stash);
    }
    if (!c->closing && !c->pipeline_full && !c->stop_parsing && !c->eof && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    }
}

/* Counts head bytes [c->head_mark, end) and checks their syntax. Returns 0, or the status to answer. */
static int account_head(srv_conn *c, const char *end, const char **why)
{
    const char *p = c->head_mark;
    c->head_bytes += (size_t)(end - p);
    c->head_mark = end;
    for (; p < end; p++) {
        char ch = *p;
        if (ch == '\n') {
            if (c->scan_prev != '\r') {
                *why = "bare LF in the request head; lines must end with CRLF";
                return 400;
            }
            c->scan_state = SCAN_LINESTART;
        } else if (c->scan_state == SCAN_LINESTART) {
            if (ch == ' ' || ch == '\t') {
                *why = "obsolete line folding in a header; send each header on one line";
                return 400;
            }
            if (ch != '\r')
                c->scan_state = SCAN_NAME;
        } else if (c->scan_state == SCAN_NAME) {
            if (ch == ' ' || ch == '\t') {
                *why = "whitespace in a header name or before its colon";
                return 400;
            }
            if (ch == ':')
                c->scan_state = SCAN_VALUE;
        }
        c->scan_prev = ch;
    }
    if (c->head_bytes > c->srv->cfg.max_header_bytes) {
        *why = NULL;
        return 431;
    }
    return 0;
}

static void fail_cur(srv_conn *c, int status, const char *why)
{
    srv_server *srv = c->srv;
    if (!c->cur) {
        c->cur = srv_request_new(srv);
        if (!c->cur) {
            srv_conn_close(c);
            return;
        }
        c->cur->conn = c;
    }
    srv_request *r = c->cur;
    if (!r->method[0])
        snprintf(r->method, sizeof r->method, "-");   /* failed before the method was known */
    enqueue_cur(c);
    c->stop_parsing = true;
    timer_clear(c);
    const cfg_config *cfg = &srv->cfg;
    switch (status) {
    case 408:
        srv_server_reject(srv, c->in_body ? "body_timeout" : "header_timeout");
        srv_request_fail(r, 408, "request_timeout", "%s", why);
        break;
    case 413:
        srv_server_reject(srv, "body_too_large");
        if (r->spool_fd >= 0 || srv_spool_wanted(r)) {
            srv_request_fail(r, 413, "body_too_large", "an import body exceeds %llu bytes",
                             (unsigned long long)SRV_SPOOL_MAX);
            break;
        }
        srv_request_fail(r, 413, "body_too_large", "request body exceeds the limit of %zu bytes (--max-body)",
                         cfg->max_body);
        break;
    case 414:
        srv_server_reject(srv, "uri_too_long");
        srv_request_fail(r, 414, "uri_too_long", "request target exceeds the limit of %zu bytes (--max-uri)",
                         cfg->max_uri);
        break;
    case 415:
        srv_server_reject(srv, "unsupported_media_type");
        srv_request_fail(r, 415, "unsupported_media_type", "%s", why);
        break;
    case 507:   /* a spooled body could not be written (stream.c): the daemon's disk, not the client */
        srv_request_fail(r, 503, "storage_error", "%s", why ? why : "cannot write the request body to a temporary file");
        break;
    case 503:
        snprintf(r->route, sizeof r->route, "(rejected)");
        srv_server_reject(srv, "max_connections");
        srv_request_fail(r, 503, "overloaded", "too many open connections (limit %u, --max-connections)",
                         cfg->max_connections);
        break;
    case 505:
        srv_server_reject(srv, "http_version");
        srv_request_fail(r, 505, "http_version_not_supported", "%s", why);
        break;
    case 431:
        srv_server_reject(srv, "headers_too_large");
        srv_request_fail(r, 431, "headers_too_large",
                         "request line and headers exceed the limit of %zu bytes (--max-header-bytes)",
                         cfg->max_header_bytes);
        break;
    default:
        srv_server_reject(srv, "bad_request");
        srv_request_fail(r, 400, "bad_request", "malformed HTTP request: %s", why);
        break;
    }
}

/* POST /v1/sessions/{id}/events: the one route that also takes a binary body (docs/API.md, "Binary
 * event batches"). */
static bool binary_body_route(const srv_request *r)
{
    static const char pre[] = "/v1/sessions/", suf[] = "/events";
    size_t n = strlen(r->path);
    return strcmp(r->method, "POST") == 0 && n > sizeof pre - 1 + sizeof suf - 1 &&
           strncmp(r->path, pre, sizeof pre - 1) == 0 && strcmp(r->path + n - (sizeof suf - 1), suf) == 0 &&
           !memchr(r->path + sizeof pre - 1, '/', n - (sizeof pre - 1) - (sizeof suf - 1));
}

static bool media_type_ok(const srv_request *r)
{
    const char *ct = srv_req_header(r, "Content-Type");
    return !ct || srv_media_type_is(ct, "application/json") ||
           srv_media_type_is(ct, "application/x-www-form-urlencoded") ||
           (srv_media_type_is(ct, "application/octet-stream") && binary_body_route(r));
}

/* Headers that decide how a request is framed, who sent it or what it may change: a second copy
 * is refused (400), since components that read the first and ones that read the last would disagree. */
static const char *const single_headers[] = { "Authorization", "Content-Length", "Transfer-Encoding", "Host",
                                              "Content-Type", "If-Match", "If-None-Match", "Expect",
                                              "Upgrade", "Proxy-Authorization", "Idempotency-Key" };

/* The name of the first header of single_headers sent twice, or NULL. */
static const char *duplicate_header(const srv_request *r)
{
    for (size_t h = 0; h < sizeof single_headers / sizeof *single_headers; h++) {
        int seen = 0;
        for (size_t i = 0; i < r->nheaders; i++)
            if (strcasecmp(r->hbuf.p + r->headers[i].name, single_headers[h]) == 0 && ++seen > 1)
                return single_headers[h];
    }
    return NULL;
}

/* Headers complete: the checks that must happen before the body is read. 0 or a status. */
static int on_head_done(srv_conn *c, const char **why)
{
    srv_request *r = c->cur;
    const cfg_config *cfg = &c->srv->cfg;
    /* llhttp reads a request line without a version as HTTP/0.9 and accepts any single-digit major:
     * only HTTP/1.0 and HTTP/1.1 are served. */
    if (c->parser.http_major == 0) {
        *why = "the request line has no HTTP version (expected HTTP/1.1 or HTTP/1.0)";
        return 400;
    }
    if (c->parser.http_major != 1 || c->parser.http_minor > 1) {
        *why = "only HTTP/1.1 and HTTP/1.0 are served";
        return 505;
    }
    const char *dup = duplicate_header(r);
    if (dup) {
        static __thread char msg[96];
        snprintf(msg, sizeof msg, "the %s header is given more than once", dup);
        *why = msg;
        return 400;
    }
    if (!r->url.p || r->url.p[0] != '/') {
        *why = "the request target must be an absolute path (origin-form)";
        return 400;
    }
    char *q = strchr(r->url.p, '?');
    if (q)
        *q = '\0';
    r->path = r->url.p;
    r->query = q ? q + 1 : NULL;
    bool has_length = c->parser.flags & F_CONTENT_LENGTH;
    bool chunked = c->parser.flags & F_CHUNKED;
    if (srv_spool_wanted(r)) {   /* a session import: the body goes to a file, any size and type */
        if (has_length && c->parser.content_length > SRV_SPOOL_MAX)
            return 413;
        if (srv_spool_open(r) < 0) {
            *why = "cannot create a temporary file in the data directory for the body";
            return 507;
        }
        c->in_body = true;
        timer_start(c, cfg->body_timeout_ms);
        return 0;
    }
    if (has_length && c->parser.content_length > cfg->max_body)
        return 413;
    if ((chunked || (has_length && c->parser.content_length > 0)) && !media_type_ok(r)) {
        *why = "request bodies must be application/json (or absent / application/x-www-form-urlencoded; "
               "application/octet-stream only for POST /v1/sessions/{id}/events)";
        return 415;
    }
    /* The body's whole length at once: no growth by doubling (copies, fresh pages) under large batches.
     * Pages are touched only as body bytes arrive (a large reservation is a mapping, not resident). */
    if (has_length && c->parser.content_length > 0)
        (void)srv_buf_reserve(&r->body, c->parser.content_length);   /* on failure the appends grow it */
    const char *expect = srv_req_header(r, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && c->parser.http_minor == 1 && !c->qhead) {
        static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init(cont, sizeof cont - 1);
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1);   /* best effort: the client sends anyway after ~1 s */
    }
    c->in_body = true;
    /* Without a body the head's timer runs on until message complete stops it a moment later. */
    if (chunked || (has_length && c->parser.content_length > 0))
        timer_start(c, cfg->body_timeout_ms);
    return 0;
}

static void conn_feed(srv_conn *c, const char *data, size_t len)
{
    srv_server *srv = c->srv;
    c->in_feed = true;
    if (c->cur && !c->in_body)
        c->head_mark = data;
    /* After a pause at headers complete, llhttp still owes the message-complete callback of a request
     * without body even when no input is left: run it once more with zero bytes. */
    bool owed = false;
    while ((len > 0 || owed) && !c->stop_parsing && !c->closing) {
        owed = false;
        c->pause_event = EV_NONE;
        c->user_status = 0;
        llhttp_errno_t rc = llhttp_execute(&c->parser, data, len);
        const char *why = NULL;
        if (rc == HPE_OK) {
            if (c->cur && !c->in_body) {
                int st = account_head(c, data + len, &why);
                if (st) {
                    fail_cur(c, st, why);
                    break;
                }
            }
            break;
        }
        if (rc != HPE_PAUSED && rc != HPE_PAUSED_UPGRADE) {
            int st = c->user_status ? c->user_status : 400;
            if (!c->user_status)
                why = llhttp_get_error_reason(&c->parser);
            if (c->user_status == 431 || c->user_status == 414 || c->user_status == 507)
                why = NULL;
            fail_cur(c, st, why ? why : "limit exceeded");
            break;
        }
        const char *pos = llhttp_get_error_pos(&c->parser);
        if (rc == HPE_PAUSED)
            llhttp_resume(&c->parser);
        len -= (size_t)(pos - data);
        data = pos;
        if (c->pause_event == EV_BEGIN) {
            c->head_mark = pos;
            continue;
        }
        if (c->pause_event == EV_HEADERS) {
            int st = account_head(c, pos, &why);
            if (!st)
                st = on_head_done(c, &why);
            if (st) {
                fail_cur(c, st, why);
                break;
            }
            owed = true;
            continue;
        }
        if (c->pause_event == EV_COMPLETE) {
            srv_request *r = c->cur;
            r->keep_alive = llhttp_should_keep_alive(&c->parser);
            c->in_body = false;
            c->head_bytes = 0;
            enqueue_cur(c);
            timer_clear(c);
            if (c->parser.upgrade) {
                /* No protocol switch here: answer as plain HTTP, then close (what follows is not HTTP). */
                r->close_after = true;
                c->stop_parsing = true;
            }
            if (r->late)
                srv_request_fail(r, 503, "shutting_down", "the server is shutting down; retry on another instance");
            else
                srv_request_dispatch(r);
            if (c->closing || c->stop_parsing)
                break;
            if (queue_full(c)) {
                /* Stop reading, whether or not input is left in this read: otherwise the next read
                 * would parse (and answer) one more request past the bound. */
                if (len > 0) {
                    c->stash = malloc(len);
                    if (!c->stash) {
                        srv_conn_close(c);
                        break;
                    }
                    memcpy(c->stash, data, len);
                    c->stash_len = len;
                }
                c->pipeline_full = true;
                srv_log(CFG_LOG_DEBUG, "%s: reading paused: %d requests, %zu request bytes, %zu answer bytes unsent",
                        c->remote, c->nqueued, c->queued_bytes, c->unsent_bytes);
                uv_read_stop((uv_stream_t *)&c->tcp);
                c->reading = false;
                break;
            }
            continue;
        }
        break;   /* HPE_PAUSED_UPGRADE after the request was queued: stop_parsing is set */
    }
    c->in_feed = false;
    (void)srv;
    /* Answers given synchronously inside the loop above may have emptied the queue meanwhile. */
    if (!c->closing && c->pipeline_full && !queue_full(c))
        resume_reading(c);
    else if (!c->closing && !c->qhead && !c->cur && !c->shutting)
        timer_start(c, srv->cfg.idle_timeout_ms);
}

/* ---- llhttp callbacks ---- */

static void set_method(srv_request *r, const llhttp_t *p)
{
    const char *m = llhttp_method_name((llhttp_method_t)p->method);
    size_t n = strnlen(m, sizeof r->method - 1);
    memcpy(r->method, m, n);
    r->method[n] = '\0';
}

static int cb_message_begin(llhttp_t *p)
{
    srv_conn *c = p->data;
    c->cur = srv_request_new(c->srv);
    if (!c->cur)
        return -1;
    c->cur->conn = c;
    c->cur->late = c->srv->draining;
    c->head_bytes = 0;
    c->scan_state = SCAN_REQLINE;
    c->scan_prev = 0;
    c->pause_event = EV_BEGIN;
    timer_start(c, c->srv->cfg.header_timeout_ms);
    return HPE_PAUSED;
}

/* Data callbacks also stop an oversized head early, before it is all buffered. */
static int head_over(srv_conn *c, const char *at, size_t len)
{
    return c->head_bytes + (size_t)(at + len - c->head_mark) > c->srv->cfg.max_header_bytes;
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    srv_conn *c = p->data;
    srv_request *r = c->cur;
    if (!r->method[0])
        set_method(r, p);
    if (r->url.len + len > c->srv->cfg.max_uri) {
        c->user_status = 414;
        return HPE_USER;
    }
    if (head_over(c, at, len)) {
        c->user_status = 431;
        return HPE_USER;
    }
    return srv_buf_append(&r->url, at, len) < 0 ? -1 : 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    srv_conn *c = p->data;
    srv_request *r = c->cur;
    if (head_over(c, at, len)) {
        c->user_status = 431;
        return HPE_USER;
    }
    if (r->hstate != 1) {
        if (r->hstate == 2 && srv_buf_append(&r->hbuf, "", 1) < 0)   /* ends the previous value */
            return -1;
        if (r->nheaders == r->capheaders) {
            size_t cap = r->capheaders ? r->capheaders * 2 : 16;
            srv_header *h = realloc(r->headers, cap * sizeof(*h));
            if (!h)
                return -1;
            r->headers = h;
            r->capheaders = cap;
        }
        r->headers[r->nheaders++] = (srv_header){ .name = r->hbuf.len, .value = 0 };
        r->hstate = 1;
    }
    return srv_buf_append(&r->hbuf, at, len) < 0 ? -1 : 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    srv_conn *c = p->data;
    srv_request *r = c->cur;
    if (head_over(c, at, len)) {
        c->user_status = 431;
        return HPE_USER;
    }
    if (r->hstate != 2) {
        if (srv_buf_append(&r->hbuf, "", 1) < 0)   /* ends the name */
            return -1;
        r->headers[r->nheaders - 1].value = r->hbuf.len;
        r->hstate = 2;
    }
    return srv_buf_append(&r->hbuf, at, len) < 0 ? -1 : 0;
}

static int cb_headers_complete(llhttp_t *p)
{
    srv_conn *c = p->data;
    srv_request *r = c->cur;
    if (r->hstate == 1) {
        /* A name without value (llhttp reports none): give it an empty value. */
        if (srv_buf_append(&r->hbuf, "", 1) < 0)
            return -1;
        r->headers[r->nheaders - 1].value = r->hbuf.len;
        r->hstate = 2;
    }
    if (r->hstate == 2 && srv_buf_append(&r->hbuf, "", 1) < 0)
        return -1;
    r->hstate = 0;
    set_method(r, p);
    c->pause_event = EV_HEADERS;
    return HPE_PAUSED;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    srv_conn *c = p->data;
    srv_request *r = c->cur;
    if (r->spool_fd >= 0) {
        timer_start(c, c->srv->cfg.body_timeout_ms);
        int st = srv_spool_write(r, at, len);
        if (st) {
            c->user_status = st;
            return HPE_USER;
        }
        return 0;
    }
    if (r->body.len + len > c->srv->cfg.max_body) {
        c->user_status = 413;
        return HPE_USER;
    }
    timer_start(c, c->srv->cfg.body_timeout_ms);
    return srv_buf_append(&r->body, at, len) < 0 ? -1 : 0;
}

static int cb_message_complete(llhttp_t *p)
{
    srv_conn *c = p->data;
    c->pause_event = EV_COMPLETE;
    return HPE_PAUSED;
}

void srv_settings_init(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_message_begin = cb_message_begin;
    s->on_url = cb_url;
    s->on_header_field = cb_header_field;
    s->on_header_value = cb_header_value;
    s->on_headers_complete = cb_headers_complete;
    s->on_body = cb_body;
    s->on_message_complete = cb_message_complete;
}

/* ---- timers and accept ---- */

static void on_timer(uv_timer_t *t)
{
    srv_conn *c = t->data;
    c->timer_armed = false;
    if (c->closing || c->deadline == 0)
        return;
    uint64_t now = uv_now(c->srv->loop);
    if (now < c->deadline) {
        c->timer_armed = true;
        c->armed_at = c->deadline;
        uv_timer_start(&c->timer, on_timer, c->deadline - now, 0);
        return;
    }
    c->deadline = 0;
    if (c->lingering || c->shutting) {
        srv_conn_close(c);
        return;
    }
    if (c->cur) {
        char why[128];
        if (c->in_body)
            snprintf(why, sizeof why, "no request body data received for %u ms (--body-timeout)",
                     c->srv->cfg.body_timeout_ms);
        else
            snprintf(why, sizeof why, "request head not received within %u ms (--header-timeout)",
                     c->srv->cfg.header_timeout_ms);
        fail_cur(c, 408, why);
        return;
    }
    if (!c->qhead) {
        srv_log(CFG_LOG_DEBUG, "%s: closing idle connection", c->remote);
        srv_conn_close(c);
    }
}

static void format_peer(uv_tcp_t *tcp, char *out, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    snprintf(out, len, "?");
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &sl) != 0)
        return;
    char ip[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        snprintf(out, len, "[%s]:%d", ip, ntohs(a->sin6_port));
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        snprintf(out, len, "%s:%d", ip, ntohs(a->sin_port));
    }
}

void srv_conn_accept(srv_server *srv)
{
    srv_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        /* Accept and drop, or the listener would spin on the pending connection. */
        uv_tcp_t *tmp = malloc(sizeof(*tmp));
        if (tmp && uv_tcp_init(srv->loop, tmp) == 0) {
            if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)tmp) == 0) { /* dropped */ }
            uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
        } else {
            free(tmp);
        }
        return;
    }
    c->srv = srv;
    srv->conn_objs++;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->shutdown_req.data = c;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    srv_metric_child_set(srv->c_conns, (int64_t)srv->nconns);
    uv_tcp_nodelay(&c->tcp, 1);
    format_peer(&c->tcp, c->remote, sizeof c->remote);
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;

    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
    if (srv->nconns > srv->cfg.max_connections) {
        fail_cur(c, 503, NULL);
        return;
    }
    timer_start(c, srv->cfg.header_timeout_ms);
}
