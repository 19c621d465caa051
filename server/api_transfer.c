/*
 * server/api_transfer.c — moving a session between daemons: export, import, freeze (docs/API.md,
 * "Moving sessions"; docs/DEPLOY.md).
 *
 *   GET  /v1/sessions/{id}/export     200, the session as a snapshot (application/octet-stream)
 *   PUT  /v1/sessions/{id}/import     201, the session created from a snapshot body
 *   POST /v1/sessions/{id}/freeze     200 {"id","frozen":true}: mutations answer 503 `frozen` + Retry-After
 *   POST /v1/sessions/{id}/unfreeze   200 {"id","frozen":false}
 *   GET  /v1/sessions/{id}/freeze     200 {"id","frozen":bool}
 *
 * Design. The snapshot's format and its checks are the store's (store/transfer.c); the registry gives
 * the way to it (reg_export, reg_import) and keeps the frozen ids (reg_freeze). This file only plumbs
 * them to HTTP without holding a session in memory:
 *   - export is a shared job keyed by the id (after every earlier mutation of the session, alongside its
 *     reads): the worker writes the snapshot into an unlinked temporary file in the data directory
 *     (one event block at a time), and the answer is that file, sent in pieces as the client reads
 *     (srv_respond_file). The temporary file costs the snapshot's size on disk for the transfer's
 *     duration;
 *   - import's body is spooled to a temporary file by the server as it arrives (srv_req_body_fd, not
 *     limited by --max-body); an exclusive job keyed by the id reads it into one store transaction;
 *   - freeze and unfreeze are exclusive jobs keyed by the id, so a freeze takes effect after every
 *     mutation queued before it: a 200 to a freeze means every acknowledged write is in the store, and
 *     an export after it holds them all. DELETE of a frozen session is allowed (a move ends with it).
 *     The freeze lives in memory: a restart forgets it (the rebalance tool checks before it switches).
 *
 * Not done here: the snapshot format (store/transfer.c), routing and moving (deploy/memattn-cluster).
 */
#include "server/api_transfer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/error.h"
#include "core/params.h"
#include "server/codec.h"
#include "server/http.h"
#include "server/log.h"
#include "server/worker.h"

struct api_transfer {
    reg_registry *reg;
    srv_pool *pool;
    char data_dir[4096];
};

typedef enum { T_EXPORT, T_IMPORT, T_FREEZE, T_UNFREEZE, T_FROZEN } t_op;

typedef struct {
    t_op op;
    api_transfer *t;
    srv_request *req;
    char id[MA_MAX_NAME + 1];
    int body_fd;                 /* import: the spooled body (owned by the request) */
    uint64_t body_len;
    /* result */
    int status;
    const char *code;
    char message[512];
    int out_fd;                  /* export: the snapshot file, -1 if none */
    uint64_t out_len;
    char json[256];              /* a small JSON answer (codec.c's) */
} t_job;

static int fail(t_job *j, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(t_job *j, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    j->status = status;
    j->code = code;
    vsnprintf(j->message, sizeof j->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* A refusal of the registry worded by the caller, with the status and code of codec.c's table
 * (codec_status_of; MA_ENOTFOUND is `no_session`). */
static int fail_rc(t_job *j, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_rc(t_job *j, int rc, const char *fmt, ...)
{
    const char *code;
    j->status = codec_status_of(rc, "no_session", &code);
    j->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->message, sizeof j->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* The answer o (owned) printed into j->json with status. */
static void answer(t_job *j, int status, cJSON *o)
{
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text || strlen(text) >= sizeof j->json)
        fail(j, 503, "overloaded", "out of memory building the answer");
    else {
        strcpy(j->json, text);
        j->status = status;
    }
    cJSON_free(text);
}

/* A store or registry failure other than the expected refusals. */
static int fail_store(t_job *j, int rc, const char *what, const char *err)
{
    if (rc == MA_ENOMEM)
        return fail(j, 503, "overloaded", "%s: out of memory", what);
    return fail(j, 503, "storage_error", "%s: %s", what, err && *err ? err : ma_strerror(rc));
}

/* An unlinked temporary file in dir (O_TMPFILE, else create and unlink), or -1 with errno. */
static int tmpfile_in(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    char path[4200];
    snprintf(path, sizeof path, "%s/.export-XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0)
        unlink(path);
    return fd;
}

static int write_fd(void *ctx, const void *data, size_t len)
{
    int fd = *(int *)ctx;
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return MA_EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

typedef struct {
    int fd;
    uint64_t off, len;
} reader;

static int read_fd(void *ctx, void *buf, size_t len)
{
    reader *r = ctx;
    if (r->len - r->off < len)
        return MA_ENOTFOUND;   /* the body ends before: a truncated snapshot (or the end after it) */
    char *p = buf;
    while (len) {
        ssize_t n = pread(r->fd, p, len, (off_t)r->off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return MA_EIO;
        p += n;
        len -= (size_t)n;
        r->off += (uint64_t)n;
    }
    return 0;
}

static void do_export(t_job *j)
{
    char err[256] = "";
    int fd = tmpfile_in(j->t->data_dir);
    if (fd < 0) {
        fail(j, 503, "storage_error", "cannot create a temporary file in %s: %s", j->t->data_dir, strerror(errno));
        return;
    }
    reg_snapshot_stats st;
    int rc = reg_export(j->t->reg, j->id, write_fd, &fd, &st, err, sizeof err);
    if (rc == MA_ENOTFOUND) {
        close(fd);
        fail_rc(j, rc, "session %s does not exist", j->id);
        return;
    }
    if (rc) {
        close(fd);
        fail_store(j, rc, "exporting the session", err);
        return;
    }
    j->out_fd = fd;
    j->out_len = st.bytes;
    j->status = 200;
}

static void do_import(t_job *j)
{
    char err[512] = "";
    int why = 0;
    if (j->body_fd < 0 || j->body_len == 0) {
        fail(j, 400, "bad_snapshot", "the body must be a session snapshot (GET /v1/sessions/{id}/export); it is empty");
        return;
    }
    reader r = { j->body_fd, 0, j->body_len };
    reg_snapshot_stats st;
    int rc = reg_import(j->t->reg, j->id, read_fd, &r, &st, &why, err, sizeof err);
    if (rc == 0) {
        answer(j, 201, codec_import_to_json(j->id, st.events, j->body_len));
        return;
    }
    if (rc == MA_EEXISTS)
        fail_rc(j, rc, "session %s exists; delete it first to replace it", j->id);
    else if (rc == MA_ECORRUPT && why == REG_SNAP_NEWER)
        fail(j, 422, "unsupported_snapshot", "%s", err);
    else if (rc == MA_ECORRUPT && why)
        fail(j, 400, "bad_snapshot", "%s", err);
    else
        fail_store(j, rc, "importing the session", err);
}

static void do_freeze(t_job *j, int on)
{
    char err[256] = "";
    bool frozen = false;
    int rc = on >= 0 ? reg_freeze(j->t->reg, j->id, on != 0, err, sizeof err) : 0;
    if (rc == 0)
        rc = reg_frozen(j->t->reg, j->id, &frozen, err, sizeof err);
    if (rc == MA_ENOTFOUND) {
        fail_rc(j, rc, "session %s does not exist", j->id);
        return;
    }
    if (rc) {
        fail_store(j, rc, "freezing the session", err);
        return;
    }
    answer(j, 200, codec_frozen_to_json(j->id, frozen));
}

static void work(void *arg)
{
    t_job *j = arg;
    switch (j->op) {
    case T_EXPORT:   do_export(j); break;
    case T_IMPORT:   do_import(j); break;
    case T_FREEZE:   do_freeze(j, 1); break;
    case T_UNFREEZE: do_freeze(j, 0); break;
    case T_FROZEN:   do_freeze(j, -1); break;
    }
}

static void done(void *arg, int status)
{
    t_job *j = arg;
    if (status == MA_EBUSY)
        srv_respond_error(j->req, 503, "shutting_down", "the server is shutting down");
    else if (j->code)
        srv_respond_error(j->req, j->status, j->code, "%s", j->message);
    else if (j->out_fd >= 0) {
        srv_respond_file(j->req, j->status, "application/octet-stream", j->out_fd, j->out_len);
        j->out_fd = -1;
    } else
        srv_respond_raw(j->req, j->status, "application/json", j->json, strlen(j->json));
    if (j->out_fd >= 0)
        close(j->out_fd);
    free(j);
}

static void handle(srv_request *req, void *ud, t_op op, srv_job_mode mode)
{
    api_transfer *t = ud;
    const char *id = srv_req_param(req, "id");
    if (!id || !ma_name_valid(id)) {
        srv_respond_error(req, 400, "bad_name", "session id \"%.64s\" is not valid, expected 1-%d characters of "
                          "[A-Za-z0-9._:-]", id ? id : "", MA_MAX_NAME);
        return;
    }
    t_job *j = calloc(1, sizeof *j);
    if (!j) {
        srv_respond_error(req, 503, "overloaded", "out of memory");
        return;
    }
    j->op = op;
    j->t = t;
    j->req = req;
    j->out_fd = -1;
    snprintf(j->id, sizeof j->id, "%s", id);
    j->body_fd = srv_req_body_fd(req, &j->body_len);
    if (srv_pool_submit(t->pool, j->id, mode, work, done, j)) {
        srv_respond_error(req, 503, "overloaded", "the work queue is full, retry later");
        free(j);
    }
}

static void h_export(srv_request *req, void *ud) { handle(req, ud, T_EXPORT, SRV_JOB_SHARED); }
static void h_import(srv_request *req, void *ud) { handle(req, ud, T_IMPORT, SRV_JOB_EXCLUSIVE); }
static void h_freeze(srv_request *req, void *ud) { handle(req, ud, T_FREEZE, SRV_JOB_EXCLUSIVE); }
static void h_unfreeze(srv_request *req, void *ud) { handle(req, ud, T_UNFREEZE, SRV_JOB_EXCLUSIVE); }
static void h_frozen(srv_request *req, void *ud) { handle(req, ud, T_FROZEN, SRV_JOB_SHARED); }

int api_transfer_init(srv_server *srv, reg_registry *reg, const char *data_dir, api_transfer **out, char *err,
                      size_t errlen)
{
    static const struct {
        const char *method, *tmpl;
        srv_handler h;
    } routes[] = {
        {"GET", "/v1/sessions/{id}/export", h_export},
        {"PUT", "/v1/sessions/{id}/import", h_import},
        {"POST", "/v1/sessions/{id}/freeze", h_freeze},
        {"GET", "/v1/sessions/{id}/freeze", h_frozen},
        {"POST", "/v1/sessions/{id}/unfreeze", h_unfreeze},
    };
    *out = NULL;
    api_transfer *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return MA_ENOMEM;
    }
    t->reg = reg;
    t->pool = srv_server_pool(srv);
    snprintf(t->data_dir, sizeof t->data_dir, "%s", data_dir);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        int rc = srv_route_add(srv_server_router(srv), routes[i].method, routes[i].tmpl, routes[i].h, t);
        if (rc) {
            snprintf(err, errlen, "cannot register %s %s: %s", routes[i].method, routes[i].tmpl, ma_strerror(rc));
            free(t);
            return rc;
        }
    }
    *out = t;
    return 0;
}

void api_transfer_shutdown(api_transfer *t)
{
    free(t);
}
