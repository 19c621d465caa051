/*
 * server/internal.h — private structures shared by server.c (lifecycle), conn.c (connections and
 * parsing) and http.c (the request API). Not for handlers: they use server/http.h.
 *
 * Ownership. The server owns its connections (a doubly linked list). A connection owns the request
 * being parsed (`cur`) and the queue of parsed requests awaiting their answers, in arrival order.
 * When a connection closes, answered requests are freed and unanswered ones are orphaned
 * (req->conn = NULL): the handler still answers them later and the answer frees them.
 */
#ifndef SRV_INTERNAL_H
#define SRV_INTERNAL_H

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "server/server.h"

#define SRV_PIPELINE_MAX 32     /* parsed requests queued per connection before reading pauses */
#define SRV_WRITE_BACKLOG (64u << 10)  /* memory of unsent answers (srv_conn.unsent_bytes) before reading pauses */
/* Reading also pauses when the queued requests hold more than --max-body + --max-header-bytes bytes,
 * so a pipelining client buffers about one maximal request, not SRV_PIPELINE_MAX of them. */

typedef struct srv_conn srv_conn;
typedef struct srv_pump srv_pump;   /* a file answer being sent (stream.c) */

#define SRV_PUMP_CHUNK (256u << 10)          /* bytes of a file answer read and written at a time */
#define SRV_SPOOL_MAX (256ull << 30)         /* largest spooled request body (PUT .../import) */

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} srv_buf;

int srv_buf_append(srv_buf *b, const void *data, size_t n);   /* keeps p NUL-terminated; MA_ENOMEM */
int srv_buf_reserve(srv_buf *b, size_t n);   /* room for n more bytes and the NUL; MA_ENOMEM */
void srv_buf_free(srv_buf *b);

typedef struct {
    size_t name, value;     /* offsets into srv_request.hbuf */
} srv_header;

struct srv_request {
    srv_request *next;          /* in the connection's queue */
    srv_conn *conn;             /* NULL once the connection is gone */
    srv_server *srv;
    uint64_t t_start;           /* uv_hrtime() at the first byte */
    char method[16];
    srv_buf url;                /* request target as sent, then split: path NUL query */
    const char *path, *query;   /* into url.p; query NULL when absent */
    srv_buf hbuf;               /* header names and values, NUL-terminated */
    srv_header *headers;
    size_t nheaders, capheaders;
    int hstate;                 /* 0 none, 1 in field, 2 in value */
    srv_buf body;
    srv_match match;
    char params[1024];
    char route[128];            /* metrics label: the template, or a fixed name when unrouted */
    char *qbuf;                 /* decoded query: name NUL value NUL ..., built on first use */
    size_t qlen;
    bool keep_alive;
    bool late;                  /* began after the drain started: answered 503 shutting_down */
    bool answered;
    bool close_after;           /* the answer carries Connection: close and the connection closes */
    int status;
    srv_buf extra;              /* extra response headers, "Name: value\r\n"... */
    char *resp;                 /* the serialised answer */
    size_t resp_len, body_len;
    int file_fd;                /* srv_respond_file: the body is this file (-1: none); owned */
    uint64_t file_len;
    int spool_fd;               /* spooled body (stream.c; -1: the body is in `body`); owned */
    uint64_t spool_len;
};

struct srv_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uint64_t deadline;          /* loop time (ms) of the current timeout, 0 = none (conn.c) */
    uint64_t armed_at;          /* when the timer is set to fire, if timer_armed */
    bool timer_armed;
    srv_server *srv;
    srv_conn *prev, *next;
    llhttp_t parser;
    char remote[80];
    srv_request *cur;           /* being parsed */
    srv_request *qhead, *qtail; /* parsed, answers sent in this order */
    int nqueued;
    size_t queued_bytes;        /* request bytes (target, headers, body) held by the queue */
    size_t head_bytes;          /* raw bytes of the current request's head so far */
    int scan_state;             /* head syntax scanner (conn.c) */
    char scan_prev;
    bool in_body;
    bool reading;
    bool closing;               /* uv_close issued */
    bool stop_parsing;          /* an answer with close_after is queued: ignore further input */
    bool eof;                   /* peer finished sending */
    bool in_feed;               /* feed() is on the stack: do not re-enter it from an answer */
    bool pipeline_full;         /* reading paused until the queue shrinks; the rest is in stash */
    bool shutting;              /* final answer queued: shutdown(SHUT_WR) once written */
    bool lingering;             /* after shutdown: reading and discarding until EOF or a short timer */
    int handles_open;
    int pause_event;            /* which callback paused the parser (conn.c) */
    int user_status;            /* a limit a data callback hit: answer this status (conn.c) */
    const char *head_mark;      /* head bytes before this point of the current input are counted */
    char *stash;                /* unparsed input kept while the pipeline is full */
    size_t stash_len;
    int writes_pending;
    size_t unsent_bytes;        /* memory held by answers handed to uv_write and not yet written (conn.c) */
    uv_shutdown_t shutdown_req;
    srv_pump *pump;             /* a file answer is being sent: the connection closes after it */
};

/* The metric children of one (method, route, status), cached on the loop thread so answering a
 * request does not take the registry's lock. */
#define SRV_MCACHE 512
typedef struct {
    uint64_t hash;             /* 0 = empty slot */
    char key[160];             /* method NUL route NUL status, for exact comparison */
    srv_metric_child *requests, *latency;
} srv_mcache_entry;

struct srv_server {
    uv_loop_t *loop;
    cfg_config cfg;
    uv_tcp_t listener;
    bool listening;
    srv_router *router;
    srv_pool *pool;
    srv_metrics *metrics;
    llhttp_settings_t settings;
    srv_conn *conns;
    size_t nconns;              /* open connections (in `conns`) */
    size_t conn_objs;           /* connection objects not yet freed (closing ones included) */
    bool draining;
    uv_timer_t drain_timer;
    bool drain_timer_on;
    void (*on_drained)(srv_server *, void *);
    void *drained_arg;
    bool drained_called;
    srv_metric *m_requests, *m_latency, *m_conns, *m_queue, *m_rejected, *m_inflight;
    srv_metric_child *c_conns;
    srv_metric_child *c_storage_errors;   /* answers 503 storage_error (http.c counts them) */
    srv_mcache_entry *mcache;   /* SRV_MCACHE entries, open addressing; full = fall back to lookups */
    char *rbuf;                 /* the read buffer: input is consumed (or copied) inside on_read */
    char date[40];              /* cached Date header value */
    uint64_t date_sec;
    int closing_handles;
    char health[128];           /* the /healthz body, with "node" when --node-id is set */
    size_t health_len;
    char node_hdr[96];          /* "X-Memattn-Node: ID\r\n" on every answer, "" without --node-id */
};

/* conn.c */
void srv_conn_accept(srv_server *srv);
void srv_conn_flush(srv_conn *c);          /* writes answered requests at the queue head */
void srv_conn_close(srv_conn *c);
void srv_conn_shutdown(srv_conn *c);      /* FIN after pending writes, then linger and close */
void srv_settings_init(llhttp_settings_t *s);

/* stream.c */
srv_pump *srv_pump_new(srv_conn *c, int fd, uint64_t len);   /* takes fd; NULL: out of memory */
void srv_pump_start(srv_conn *c);     /* sends c->pump after the queued writes, then shuts down */
void srv_conn_pump_closing(srv_conn *c);   /* the connection closes: free a pump with no write in flight */
bool srv_spool_wanted(const srv_request *r);   /* PUT /v1/sessions/{id}/import */
int srv_spool_open(srv_request *r);   /* 0 or MA_EIO */
int srv_spool_write(srv_request *r, const char *at, size_t len);   /* 0, or 413 / 507 (disk) for fail_cur */
int srv_tmpfile(const char *dir);     /* an unlinked temporary file in dir, or -1 (errno) */
/* conn.c */
void srv_conn_touch(srv_conn *c);     /* the idle timeout from now (a file answer made progress) */

/* http.c */
srv_request *srv_request_new(srv_server *srv);
void srv_request_free(srv_request *req);
void srv_request_dispatch(srv_request *req);      /* route, auth, call the handler */
/* Answers with an error on behalf of the server (limits, parse errors) and marks close_after. */
void srv_request_fail(srv_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* conventions.c */
/* Adds Retry-After to a 503 without one, and the CORS headers of an allowed Origin; called by
 * http.c just before an answer is serialised. */
void srv_conventions_finish(srv_request *req, int status);
/* Answers OPTIONS: 204 with `allow`, plus the Access-Control-Allow-* headers of a CORS preflight from
 * an allowed origin. */
void srv_options_respond(srv_request *req, const char *allow);
bool srv_cors_origin_allowed(const srv_request *req);   /* Origin is in --cors-origin */
bool srv_cors_is_preflight(const srv_request *req);     /* OPTIONS with Origin and A-C-Request-Method */

/* info.c */
int srv_info_register(srv_server *srv);   /* GET /v1/info */

/* server.c */
/* Counts an answered request in the request counter and latency histogram (loop thread). */
void srv_server_count(srv_server *srv, const char *method, const char *route, int status, double seconds);
void srv_server_conn_gone(srv_server *srv);       /* a connection was freed: drain bookkeeping */
const char *srv_server_date(srv_server *srv);
void srv_server_reject(srv_server *srv, const char *reason);   /* counts a limit rejection */

#endif
