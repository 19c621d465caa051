/*
 * server/stream.c — bodies too large for memory: an answer sent from a file, a request body spooled to
 * a file (server/http.h: srv_respond_file, srv_req_body_fd).
 *
 * Design. Everything else in the server holds a request's body and its answer in memory, bounded by
 * --max-body. Session export and import (GET/PUT /v1/sessions/{id}/export|import) move a whole session,
 * which may be gigabytes; they go through files instead:
 *   - the answer: the handler writes the body to a file (an unlinked temporary, say) and answers with
 *     srv_respond_file; after the head the connection sends the file in pieces of SRV_PUMP_CHUNK bytes,
 *     reading the next piece (pread, on the loop thread: page-cache reads of a file just written) when the
 *     previous one has been written — one piece in memory per connection, at the client's pace. The
 *     connection closes after such an answer (nothing is pipelined behind a multi-gigabyte body), and
 *     every piece written re-arms the idle timeout, so a client that stops reading is closed.
 *   - the request: `PUT /v1/sessions/{id}/import` (the only spooled route; srv_spool_wanted) has its body
 *     written to an unlinked temporary file in the data directory as it arrives (write(2) on the loop
 *     thread), bounded by SRV_SPOOL_MAX instead of --max-body, any Content-Type accepted; the handler
 *     reads the file from a worker thread.
 *
 * Not done here: sendfile(2) (the pieces are few and large; a read plus a write is simple and portable),
 * chunked transfer encoding of answers (the length is known: Content-Length).
 */
#include "server/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "server/log.h"

struct srv_pump {
    uv_write_t w;
    srv_conn *c;
    int fd;
    uint64_t off, len;
    bool writing;               /* a uv_write of buf is in flight (its callback frees a closed pump) */
    char buf[SRV_PUMP_CHUNK];
};

srv_pump *srv_pump_new(srv_conn *c, int fd, uint64_t len)
{
    srv_pump *p = malloc(sizeof(*p));
    if (!p)
        return NULL;
    p->c = c;
    p->fd = fd;
    p->off = 0;
    p->len = len;
    p->writing = false;
    return p;
}

static void pump_end(srv_pump *p, bool ok)
{
    srv_conn *c = p->c;
    close(p->fd);
    c->pump = NULL;
    free(p);
    if (c->closing)
        return;
    if (ok)
        srv_conn_shutdown(c);
    else
        srv_conn_close(c);
}

static void pump_next(srv_pump *p);

static void on_pump_write(uv_write_t *w, int status)
{
    srv_pump *p = (srv_pump *)w;
    p->writing = false;
    p->c->writes_pending--;
    if (status < 0 || p->c->closing) {
        pump_end(p, false);
        return;
    }
    pump_next(p);
}

static void pump_next(srv_pump *p)
{
    srv_conn *c = p->c;
    if (p->off >= p->len) {
        pump_end(p, true);
        return;
    }
    size_t want = p->len - p->off < SRV_PUMP_CHUNK ? (size_t)(p->len - p->off) : SRV_PUMP_CHUNK;
    ssize_t n;
    do
        n = pread(p->fd, p->buf, want, (off_t)p->off);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        srv_log(CFG_LOG_ERROR, "%s: reading the answer's file at %llu: %s", c->remote, (unsigned long long)p->off,
                n < 0 ? strerror(errno) : "unexpected end of file");
        pump_end(p, false);   /* the client sees a short body: Content-Length says so */
        return;
    }
    p->off += (uint64_t)n;
    uv_buf_t b = uv_buf_init(p->buf, (unsigned)n);
    if (uv_write(&p->w, (uv_stream_t *)&c->tcp, &b, 1, on_pump_write) < 0) {
        pump_end(p, false);
        return;
    }
    p->writing = true;
    c->writes_pending++;
    srv_conn_touch(c);
}

void srv_pump_start(srv_conn *c)
{
    c->stop_parsing = true;
    pump_next(c->pump);
}

void srv_conn_pump_closing(srv_conn *c)
{
    srv_pump *p = c->pump;
    if (!p || p->writing)
        return;   /* none, or its cancelled write's callback ends it */
    close(p->fd);
    free(p);
    c->pump = NULL;
}

/* ---- spooled request bodies ---- */

bool srv_spool_wanted(const srv_request *r)
{
    static const char pre[] = "/v1/sessions/", suf[] = "/import";
    size_t n = strlen(r->path);
    return strcmp(r->method, "PUT") == 0 && n > sizeof pre - 1 + sizeof suf - 1 &&
           strncmp(r->path, pre, sizeof pre - 1) == 0 && strcmp(r->path + n - (sizeof suf - 1), suf) == 0 &&
           !memchr(r->path + sizeof pre - 1, '/', n - (sizeof pre - 1) - (sizeof suf - 1));
}

int srv_tmpfile(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    /* A file system without O_TMPFILE: create and unlink at once. */
    char path[CFG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/.spool-XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0)
        unlink(path);
    return fd;
}

int srv_spool_open(srv_request *r)
{
    r->spool_fd = srv_tmpfile(r->srv->cfg.data_dir);
    if (r->spool_fd < 0) {
        srv_log(CFG_LOG_ERROR, "cannot create a temporary file in %s for a request body: %s", r->srv->cfg.data_dir,
                strerror(errno));
        return MA_EIO;
    }
    r->spool_len = 0;
    return 0;
}

int srv_spool_write(srv_request *r, const char *at, size_t len)
{
    if (r->spool_len + len > SRV_SPOOL_MAX)
        return 413;
    while (len) {
        ssize_t n = write(r->spool_fd, at, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            srv_log(CFG_LOG_ERROR, "spooling a request body: %s", n < 0 ? strerror(errno) : "short write");
            return 507;
        }
        at += n;
        len -= (size_t)n;
        r->spool_len += (uint64_t)n;
    }
    return 0;
}

int srv_req_body_fd(const srv_request *req, uint64_t *len)
{
    if (len)
        *len = req->spool_fd >= 0 ? req->spool_len : 0;
    return req->spool_fd;
}
