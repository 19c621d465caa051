/*
 * server/api.c — the REST handlers of ../shared/design/API.md (/v1/...): sessions, events, queries,
 * slot verbs, and POST /v1/admin/backup.
 *
 * Design. Every /v1 handler does only cheap work on the loop thread: it checks the path's id and slot
 * name, reads query parameters and headers, and submits one job to the worker pool keyed by the session
 * id — SRV_JOB_SHARED for reads (GET, queries), SRV_JOB_EXCLUSIVE for mutations — so jobs of one session
 * take effect in arrival order, mutations alone, reads of different sessions in parallel. The job (a
 * worker thread) parses the JSON body, validates it whole through server/codec.c, takes the session
 * from the registry (loading it from the store on first use), calls the core, commits a mutation to the
 * store (reg_commit) and prints the response. The completion callback (loop thread) only sends it.
 * So JSON parsing, compute and store I/O never run on the loop thread, and a 2xx to a mutation is sent
 * after its transaction committed. A failed commit answers 503 `storage_error` and the session is reloaded
 * from the store on next use (server/registry.h), so memory never diverges from what is stored.
 *
 * Error codes: those of API.md; 503 `storage_error` for store failures (disk full, read-only, I/O, corrupt
 * data) is this implementation's addition to the 503 row.
 *
 * Bodies are parsed on the workers, not the loop thread, so a 1 MB batch does not stall every other
 * connection. One wart of that: libcjson records the position of a parse error in a process-wide
 * variable as well as in the return_parse_end pointer we use; two workers failing to parse at the same
 * moment both write it (a benign race on a value nobody reads).
 *
 * Not done here: HTTP parsing, limits, auth, Content-Type (server/), validation rules (codec.c), the
 * attention maths (core/), SQL (store/).
 */
#include "server/api.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/error.h"
#include "core/featurize.h"
#include "core/session.h"
#include "server/codec.h"
#include "server/log.h"
#include "server/registry.h"
#include "store/store.h"

#define MAX_EVENTS_PER_BATCH  65536
#define MAX_QUERIES_PER_BATCH 4096
#define LIST_DEFAULT_LIMIT    100
#define LIST_MAX_LIMIT        1000
#define CACHE_CHUNKS          128     /* archive chunks cached per paged session */

typedef enum {
    OP_SESSION_CREATE, OP_SESSION_PUT, OP_SESSION_LIST, OP_SESSION_GET, OP_SESSION_DELETE,
    OP_EVENTS, OP_QUERY,
    OP_SLOT_LIST, OP_SLOT_WRITE, OP_SLOT_PUT, OP_SLOT_GET, OP_SLOT_VERSIONS, OP_SLOT_RESTORE, OP_SLOT_PATCH,
    OP_SLOT_DELETE,
    OP_BACKUP,
} op_kind;

/* One request's work. Filled on the loop thread, run on a worker, answered and freed on the loop thread. */
typedef struct {
    op_kind op;
    srv_request *req;                 /* loop thread only */
    char id[MA_MAX_NAME + 1];         /* session id ("" for list/backup) */
    char name[MA_MAX_NAME + 1];       /* slot name */
    const char *body;                 /* the request's body: immutable until the request is answered */
    size_t body_len;
    bool delimited;                   /* the request framed a body (Content-Length or chunked) */
    uint64_t version;                 /* ?version= of a slot read */
    uint64_t if_match;                /* If-Match of an overwrite, 0 if absent */
    size_t limit;                     /* ?limit= of the session list */
    char after[MA_MAX_NAME + 1];      /* ?after= of the session list, "" if absent */
    /* result */
    int status;
    const char *code;                 /* error code, or NULL on success */
    char message[512];
    char *out;                        /* response body (JSON text), cJSON-allocated */
    char etag[32];                    /* "\"<version>\"" for slot answers, "" if none */
    char location[160];               /* Location of a created session, "" if none */
} job;

static struct {
    ma_store *store;
    reg_registry *reg;
    srv_pool *pool;
    srv_metric_child *sessions_loaded, *memory_bytes, *events_ingested, *commit_seconds, *commit_failures;
    srv_metric_child *routes[MA_ROUTE_WINDOW + 1];
    srv_metric_child *loads, *unloads;
    srv_metric_child *memory_budget, *chunk_loads, *paged_out;   /* the session cache (registry) */
} api;

/* ---- small helpers --------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int job_fail(job *j, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int job_fail(job *j, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    j->status = status;
    j->code = code;
    va_start(ap, fmt);
    vsnprintf(j->message, sizeof j->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int job_codec_fail(job *j, const codec_error *e)
{
    return job_fail(j, 400, e->code, "%s", e->message);
}

/* Store and load failures: 503 with the store's message; out of memory: 503 overloaded. */
static int job_store_fail(job *j, int rc, const char *what, const char *msg)
{
    if (rc == MA_ENOMEM)
        return job_fail(j, 503, "overloaded", "%s: out of memory", what);
    return job_fail(j, 503, "storage_error", "%s: %s", what, msg && *msg ? msg : ma_strerror(rc));
}

/* Takes ownership of o; prints it as the response body. */
static int job_ok(job *j, int status, cJSON *o)
{
    if (!o)
        return job_fail(j, 503, "overloaded", "out of memory building the response");
    j->out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!j->out)
        return job_fail(j, 503, "overloaded", "out of memory printing the response");
    j->status = status;
    return 0;
}

static void set_etag(job *j, uint64_t version)
{
    snprintf(j->etag, sizeof j->etag, "\"%llu\"", (unsigned long long)version);
}

/* Parses the body; an empty body gives *out NULL. */
static int parse_body(job *j, cJSON **out)
{
    const char *end = NULL;
    *out = NULL;
    size_t i = 0;
    while (i < j->body_len && (j->body[i] == ' ' || j->body[i] == '\t' || j->body[i] == '\r' || j->body[i] == '\n'))
        i++;
    if (i == j->body_len)
        return 0;
    *out = cJSON_ParseWithLengthOpts(j->body, j->body_len, &end, 0);
    if (!*out)
        return job_fail(j, 400, "bad_json", "the body is not valid JSON (error at byte %zu)",
                        end && end >= j->body ? (size_t)(end - j->body) : (size_t)0);
    /* Only whitespace may follow the value. */
    for (const char *p = end; p && p < j->body + j->body_len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            cJSON_Delete(*out);
            *out = NULL;
            return job_fail(j, 400, "bad_json", "the body is not valid JSON (trailing data at byte %zu)",
                            (size_t)(p - j->body));
        }
    return 0;
}

/* A request that needs a body but framed none (no Content-Length, not chunked: RFC 9112 says it has no
 * body) gets 411; a framed but empty one gets 400. Routes whose body is optional never ask. */
static int missing_body(job *j, const char *expected)
{
    if (!j->delimited)
        return job_fail(j, 411, "length_required",
                        "this request needs a body (with Content-Length or chunked Transfer-Encoding), "
                        "expected %s", expected);
    return job_fail(j, 400, "bad_request", "missing body, expected %s", expected);
}

static int need_body(job *j, cJSON **out, const char *expected)
{
    if (parse_body(j, out))
        return -1;
    if (!*out)
        return missing_body(j, expected);
    return 0;
}

/* The featuriser behind `text`, with codec's signature. */
static void embed(const char *text, size_t len, int dim, float *out)
{
    if (ma_embed_text(text, len, dim, out) < 0)
        memset(out, 0, sizeof(float) * (size_t)dim);
}

static int acquire(job *j, reg_session **s)
{
    char err[256] = "";
    int rc = reg_acquire(api.reg, j->id, s, err, sizeof err);
    if (rc == 0)
        return 0;
    if (rc == MA_ENOTFOUND)
        return job_fail(j, 404, "no_session", "session %s does not exist", j->id);
    return job_store_fail(j, rc, "loading the session", err);
}

static int commit(job *j, reg_session *s, const reg_change *c)
{
    char err[256] = "";
    int rc = reg_commit(api.reg, s, c, now_ms(), err, sizeof err);
    if (rc == 0)
        return 0;
    srv_log(CFG_LOG_ERROR, "commit of session %s failed: %s", j->id, err);
    return job_store_fail(j, rc, "the change was not stored (nothing applied)", err);
}

/* Maps a core error of a slot verb. */
static int slot_fail(job *j, int rc)
{
    switch (rc) {
    case MA_ENOTFOUND:  return job_fail(j, 404, "no_slot", "slot %s is not resident in session %s", j->name, j->id);
    case MA_ENOVERSION: return job_fail(j, 404, "no_version", "slot %s has no such version", j->name);
    case MA_EEXISTS:    return job_fail(j, 409, "exists", "slot %s exists (use PUT to overwrite it)", j->name);
    case MA_EPROTECTED: return job_fail(j, 423, "protected", "slot %s is protected", j->name);
    case MA_ECONFLICT:  return job_fail(j, 409, "version_conflict",
                                        "version: must be greater than slot %s's current version", j->name);
    case MA_EPRECOND:   return job_fail(j, 412, "precondition_failed",
                                        "If-Match: slot %s's current version differs", j->name);
    case MA_EFULL:      return job_fail(j, 409, "slots_full",
                                        "every resident slot is protected; unprotect or evict one first");
    case MA_EINVAL:     return job_fail(j, 400, "bad_request", "slot %s: invalid input", j->name);
    case MA_ENOMEM:     return job_fail(j, 503, "overloaded", "out of memory");
    default:            return job_store_fail(j, rc, "reading the archive", NULL);
    }
}

static cJSON *slot_result_json(const char *name, const ma_slot_result *res)
{
    cJSON *o = cJSON_CreateObject();
    if (o && (!cJSON_AddStringToObject(o, "name", name) ||
              !cJSON_AddNumberToObject(o, "version", (double)res->version) ||
              (res->evicted && !cJSON_AddStringToObject(o, "evicted", res->evicted_name)))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- sessions -------------------------------------------------------------------------------- */

static cJSON *session_created_json(const char *id, const ma_params *p)
{
    cJSON *o = cJSON_CreateObject(), *c = codec_params_to_json(p);
    if (!o || !c || !cJSON_AddStringToObject(o, "id", id)) {
        cJSON_Delete(o);
        cJSON_Delete(c);
        return NULL;
    }
    cJSON_AddItemToObject(o, "config", c);
    return o;
}

static int do_session_create(job *j)
{
    cJSON *body = NULL;
    codec_error ce;
    ma_params p;
    reg_session *s = NULL;
    char err[256] = "";
    int rc;

    if (parse_body(j, &body))
        return -1;
    rc = codec_params_from_json(body, &p, &ce);
    cJSON_Delete(body);
    if (rc)
        return job_codec_fail(j, &ce);
    if (j->op == OP_SESSION_PUT) {
        rc = reg_acquire(api.reg, j->id, &s, err, sizeof err);
        if (rc == 0) {
            bool same = ma_params_equal(reg_params(s), &p);
            cJSON *o = same ? session_created_json(j->id, reg_params(s)) : NULL;
            reg_release(api.reg, s);
            if (!same)
                return job_fail(j, 409, "exists", "session %s exists with another config", j->id);
            return job_ok(j, 200, o);
        }
        if (rc != MA_ENOTFOUND)
            return job_store_fail(j, rc, "loading the session", err);
    }
    rc = reg_create_session(api.reg, j->id, &p, now_ms(), &s, err, sizeof err);
    if (rc == MA_EEXISTS)
        return job_fail(j, 409, "exists", "session %s exists", j->id);
    if (rc)
        return job_store_fail(j, rc, "creating the session", err);
    reg_release(api.reg, s);
    snprintf(j->location, sizeof j->location, "/v1/sessions/%s", j->id);
    return job_ok(j, 201, session_created_json(j->id, &p));
}

static int do_session_list(job *j)
{
    ma_store_session *rows = NULL;
    size_t n = 0;
    char err[256] = "";
    int rc = ma_store_session_list(api.store, j->after[0] ? j->after : NULL, j->limit, &rows, &n, err, sizeof err);
    if (rc)
        return job_store_fail(j, rc, "listing sessions", err);
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "sessions") : NULL;
    bool ok = a != NULL;
    for (size_t i = 0; i < n; i++) {
        cJSON *x = ok ? cJSON_CreateObject() : NULL;
        char t1[40], t2[40];
        codec_time_format(rows[i].created_at, t1, sizeof t1);
        codec_time_format(rows[i].updated_at, t2, sizeof t2);
        ok = x && cJSON_AddItemToArray(a, x) && cJSON_AddStringToObject(x, "id", rows[i].id) &&
             cJSON_AddNumberToObject(x, "length", (double)rows[i].length) &&
             cJSON_AddNumberToObject(x, "slots", (double)rows[i].slots) &&
             cJSON_AddStringToObject(x, "created_at", t1) && cJSON_AddStringToObject(x, "updated_at", t2);
    }
    /* "next": pass as ?after= for the following page; present only when this page is full. */
    if (ok && n == j->limit && n > 0)
        ok = cJSON_AddStringToObject(o, "next", rows[n - 1].id) != NULL;
    for (size_t i = 0; i < n; i++)
        ma_store_session_clear(&rows[i]);
    free(rows);
    if (!ok) {
        cJSON_Delete(o);
        o = NULL;
    }
    return job_ok(j, 200, o);
}

static cJSON *doubles_json(const double *x, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++) {
        cJSON *v = cJSON_CreateNumber(x[i]);
        if (!v || !cJSON_AddItemToArray(a, v)) {
            cJSON_Delete(v);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

static int do_session_get(job *j)
{
    reg_session *s;
    ma_session_stats st;
    ma_store_session row = {0};
    char err[256] = "";
    if (acquire(j, &s))
        return -1;
    int rc = ma_session_stats_get(reg_core(s), &st);
    if (rc) {
        reg_release(api.reg, s);
        return job_fail(j, 503, "overloaded", "out of memory");
    }
    rc = ma_store_session_load(api.store, j->id, &row, err, sizeof err);
    if (rc) {
        ma_session_stats_clear(&st);
        reg_release(api.reg, s);
        return job_store_fail(j, rc, "reading the stored session", err);
    }
    const ma_params *p = reg_params(s);
    char t1[40], t2[40];
    codec_time_format(reg_created_at(s), t1, sizeof t1);
    codec_time_format(reg_updated_at(s), t2, sizeof t2);
    cJSON *o = cJSON_CreateObject(), *cfg = codec_params_to_json(p), *bb = cJSON_CreateObject();
    cJSON *sn = doubles_json(st.state_norm, (size_t)p->heads), *pn = doubles_json(st.penalty_norm, (size_t)p->heads);
    bool ok = o && cfg && bb && sn && pn && cJSON_AddStringToObject(o, "id", j->id);
    if (ok) {
        cJSON_AddItemToObject(o, "config", cfg);
        cfg = NULL;
        ok = cJSON_AddNumberToObject(o, "length", (double)st.length) &&
             cJSON_AddNumberToObject(o, "chunks", (double)st.chunks) &&
             cJSON_AddNumberToObject(o, "slots_resident", (double)st.slots_resident) &&
             cJSON_AddNumberToObject(o, "bytes", (double)st.bytes) &&
             cJSON_AddNumberToObject(o, "stored_bytes", (double)row.stored_bytes);
    }
    if (ok) {
        cJSON_AddItemToObject(bb, "state_norm", sn);
        cJSON_AddItemToObject(bb, "penalty_norm", pn);
        cJSON_AddItemToObject(o, "backbone", bb);
        sn = pn = bb = NULL;
        ok = cJSON_AddStringToObject(o, "created_at", t1) && cJSON_AddStringToObject(o, "updated_at", t2);
    }
    cJSON_Delete(cfg);
    cJSON_Delete(bb);
    cJSON_Delete(sn);
    cJSON_Delete(pn);
    if (!ok) {
        cJSON_Delete(o);
        o = NULL;
    }
    ma_store_session_clear(&row);
    ma_session_stats_clear(&st);
    reg_release(api.reg, s);
    return job_ok(j, 200, o);
}

static int do_session_delete(job *j)
{
    char err[256] = "";
    int rc = reg_delete(api.reg, j->id, err, sizeof err);
    if (rc == MA_ENOTFOUND)
        return job_fail(j, 404, "no_session", "session %s does not exist", j->id);
    if (rc)
        return job_store_fail(j, rc, "deleting the session", err);
    j->status = 204;
    return 0;
}

/* ---- events and queries ---------------------------------------------------------------------- */

static int do_events(job *j)
{
    cJSON *body = NULL;
    codec_events ev = {0};
    codec_shape sh;
    codec_error ce;
    ma_ingest_report rep = {0};
    reg_session *s = NULL;
    int rc = -1;

    if (need_body(j, &body, "{\"events\":[...]}") || acquire(j, &s))
        goto done;
    ma_session *core = reg_core(s);
    codec_shape_from_params(&sh, reg_params(s), embed);
    if (codec_events_decode(body, &sh, MAX_EVENTS_PER_BATCH, &ev, &ce)) {
        rc = job_codec_fail(j, &ce);
        goto done;
    }
    cJSON_Delete(body);
    body = NULL;
    uint64_t first = ma_archive_length(ma_session_archive(core));
    int irc = ma_session_ingest(core, ev.n, ev.ev, now_ms(), &rep);
    if (irc == MA_EFULL) {
        rc = job_fail(j, 409, "slots_full", "a slot write in this batch needs a free slot, but every resident "
                      "slot is protected; nothing was applied");
        goto done;
    }
    if (irc) {
        rc = job_fail(j, irc == MA_ENOMEM ? 503 : 400, irc == MA_ENOMEM ? "overloaded" : "bad_request",
                      "the batch was refused: %s; nothing was applied", ma_strerror(irc));
        goto done;
    }
    if (ev.n) {
        bool slots = false;
        for (size_t i = 0; i < ev.n && !slots; i++)
            slots = ev.ev[i].slot != NULL;
        reg_change c = {.first_event = first, .n_events = ev.n, .k = ev.k, .v = ev.v,
                        .payloads = (const char *const *)ev.payloads, .backbone = true, .archive = true,
                        .slots = slots};
        if (commit(j, s, &c))
            goto done;
        srv_metric_child_add(api.events_ingested, (int64_t)ev.n);
    }
    rc = job_ok(j, 200, codec_ingest_report_to_json(&rep));
done:
    ma_ingest_report_clear(&rep);
    codec_events_clear(&ev);
    cJSON_Delete(body);
    if (s)
        reg_release(api.reg, s);
    return rc;
}

static int do_query(job *j)
{
    cJSON *body = NULL, *out = NULL, *arr;
    codec_queries qs = {0};
    codec_shape sh;
    codec_error ce;
    reg_session *s = NULL;
    float *vbuf = NULL;
    int rc = -1;

    if (need_body(j, &body, "{\"queries\":[...]}") || acquire(j, &s))
        goto done;
    const ma_params *p = reg_params(s);
    size_t vn = (size_t)p->heads * p->value_dim;
    codec_shape_from_params(&sh, p, embed);
    if (codec_queries_decode(body, &sh, MAX_QUERIES_PER_BATCH, &qs, &ce)) {
        rc = job_codec_fail(j, &ce);
        goto done;
    }
    if (!(vbuf = malloc(sizeof(float) * vn)) || !(out = cJSON_CreateObject()) ||
        !(arr = cJSON_AddArrayToObject(out, "results"))) {
        rc = job_fail(j, 503, "overloaded", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < qs.n; i++) {
        ma_answer a = {.v = vbuf};
        const ma_query *q = &qs.q[i];
        int qrc = ma_session_query(reg_core(s), q, &a);
        if (qrc) {
            ma_answer_clear(&a);
            if (qrc == MA_ENOVERSION)
                rc = job_fail(j, 404, "no_version", "queries[%zu]: slot %s has no version %llu", i, q->slot,
                              (unsigned long long)q->version);
            else if (qrc == MA_ENOTFOUND && (q->route == MA_ROUTE_SLOT || !q->q))
                rc = job_fail(j, 404, "no_slot", "queries[%zu]: no resident slot %s%s", i,
                              q->slot ? q->slot : "matches the query", q->slot ? "" : " (cosine below route_threshold)");
            else if (qrc == MA_ENOTFOUND)
                rc = job_fail(j, 404, "not_found", "queries[%zu]: the session has no events to attend over", i);
            else if (qrc == MA_EINVAL)
                rc = job_fail(j, 400, "bad_request", "queries[%zu]: this route needs a query vector", i);
            else
                rc = job_store_fail(j, qrc, "reading the archive", NULL);
            goto done;
        }
        cJSON *r = codec_answer_to_json(&a, vn);
        if (a.route >= 0 && a.route <= MA_ROUTE_WINDOW)
            srv_metric_child_add(api.routes[a.route], 1);
        ma_answer_clear(&a);
        if (!r || !cJSON_AddItemToArray(arr, r)) {
            cJSON_Delete(r);
            rc = job_fail(j, 503, "overloaded", "out of memory");
            goto done;
        }
    }
    rc = job_ok(j, 200, out);
    out = NULL;
done:
    free(vbuf);
    cJSON_Delete(out);
    codec_queries_clear(&qs);
    cJSON_Delete(body);
    if (s)
        reg_release(api.reg, s);
    return rc;
}

/* ---- slots ----------------------------------------------------------------------------------- */

static int do_slot_list(job *j)
{
    reg_session *s;
    ma_slot_info *si = NULL;
    size_t n = 0;
    if (acquire(j, &s))
        return -1;
    int rc = ma_session_slot_list(reg_core(s), &si, &n);
    reg_release(api.reg, s);
    if (rc)
        return job_fail(j, 503, "overloaded", "out of memory");
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "slots") : NULL;
    bool ok = a != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *x = codec_slot_info_to_json(&si[i]);
        ok = x && cJSON_AddItemToArray(a, x);
        if (!ok)
            cJSON_Delete(x);
    }
    free(si);
    if (!ok) {
        cJSON_Delete(o);
        o = NULL;
    }
    return job_ok(j, 200, o);
}

/* write (POST .../slots) and overwrite (PUT .../slots/{name}) */
static int do_slot_write(job *j)
{
    cJSON *body = NULL;
    codec_slot_body b = {0};
    codec_shape sh;
    codec_error ce;
    ma_slot_result res = {0};
    reg_session *s = NULL;
    bool put = j->op == OP_SLOT_PUT;
    int rc = -1;

    if (parse_body(j, &body) || acquire(j, &s))
        goto done;
    codec_shape_from_params(&sh, reg_params(s), embed);
    if (!body && !put) {
        rc = missing_body(j, "{\"name\": ..., \"payload\": ...}");
        goto done;
    }
    if (codec_slot_body_decode(body, put ? j->name : NULL, put, &sh, &b, &ce)) {
        rc = job_codec_fail(j, &ce);
        goto done;
    }
    snprintf(j->name, sizeof j->name, "%s", b.name);
    ma_slot_input in = {.name = b.name, .k = b.k, .v = b.v, .text = b.text, .payload = b.payload,
                        .protect = b.protect};
    int vrc = put ? ma_session_slot_overwrite(reg_core(s), &in, b.version, j->if_match, now_ms(), &res)
                  : ma_session_slot_write(reg_core(s), &in, now_ms(), &res);
    if (vrc) {
        rc = slot_fail(j, vrc);
        goto done;
    }
    reg_change c = {.slots = true};
    if (commit(j, s, &c))
        goto done;
    set_etag(j, res.version);
    rc = job_ok(j, put && !res.created ? 200 : 201, slot_result_json(b.name, &res));
done:
    codec_slot_body_clear(&b);
    cJSON_Delete(body);
    if (s)
        reg_release(api.reg, s);
    return rc;
}

static int do_slot_get(job *j)
{
    reg_session *s;
    ma_slot_value sv = {0};
    if (acquire(j, &s))
        return -1;
    const ma_params *p = reg_params(s);
    int rc = ma_session_slot_read(reg_core(s), j->name, j->version, &sv);
    if (rc) {
        reg_release(api.reg, s);
        if (rc == MA_ENOVERSION)
            return job_fail(j, 404, "no_version", "slot %s has no version %llu (or it is an eviction marker)",
                            j->name, (unsigned long long)j->version);
        if (rc == MA_ENOTFOUND)
            return job_fail(j, 404, "no_slot", j->version ? "slot %s was never written in session %s"
                                                          : "slot %s is not resident in session %s", j->name, j->id);
        return slot_fail(j, rc);
    }
    cJSON *o = codec_slot_value_to_json(&sv, (size_t)p->heads * p->dim, (size_t)p->heads * p->value_dim);
    if (!j->version)
        set_etag(j, sv.info.version);
    ma_slot_value_clear(&sv);
    reg_release(api.reg, s);
    return job_ok(j, 200, o);
}

static int do_slot_versions(job *j)
{
    reg_session *s;
    ma_version_info *vi = NULL;
    size_t n = 0;
    if (acquire(j, &s))
        return -1;
    int rc = ma_session_slot_history(reg_core(s), j->name, &vi, &n);
    reg_release(api.reg, s);
    if (rc == MA_ENOTFOUND)
        return job_fail(j, 404, "no_slot", "slot %s was never written in session %s", j->name, j->id);
    if (rc)
        return slot_fail(j, rc);
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "versions") : NULL;
    bool ok = a != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *x = codec_version_info_to_json(&vi[i]);
        ok = x && cJSON_AddItemToArray(a, x);
        if (!ok)
            cJSON_Delete(x);
    }
    free(vi);
    if (!ok) {
        cJSON_Delete(o);
        o = NULL;
    }
    return job_ok(j, 200, o);
}

/* restore, protect/unprotect, evict: small bodies, one verb, a commit of the slot table. */
static int do_slot_verb(job *j)
{
    cJSON *body = NULL;
    reg_session *s = NULL;
    ma_slot_result res = {0};
    uint64_t version = 0;
    bool protect = false;
    int rc = -1, vrc;

    if (j->op == OP_SLOT_RESTORE || j->op == OP_SLOT_PATCH) {
        const char *field = j->op == OP_SLOT_RESTORE ? "version" : "protected";
        char expected[64];
        snprintf(expected, sizeof expected, "{\"%s\": %s}", field, j->op == OP_SLOT_RESTORE ? "n" : "true|false");
        if (need_body(j, &body, expected))
            goto done;
        if (!cJSON_IsObject(body) || !body->child || body->child->next || strcmp(body->child->string, field) != 0) {
            rc = job_fail(j, 400, "bad_request", "expected exactly %s", expected);
            goto done;
        }
        if (j->op == OP_SLOT_RESTORE) {
            codec_error ce;
            if (codec_get_uint(body, "version", 1, UINT64_MAX, "", &version, &ce) < 0) {
                rc = job_codec_fail(j, &ce);
                goto done;
            }
        } else {
            if (!cJSON_IsBool(body->child)) {
                rc = job_fail(j, 400, "bad_request", "protected: expected true or false");
                goto done;
            }
            protect = cJSON_IsTrue(body->child);
        }
    }
    if (acquire(j, &s))
        goto done;
    int64_t now = now_ms();
    switch (j->op) {
    case OP_SLOT_RESTORE: vrc = ma_session_slot_restore(reg_core(s), j->name, version, now, &res); break;
    case OP_SLOT_PATCH:   vrc = ma_session_slot_protect(reg_core(s), j->name, protect, now); break;
    default:              vrc = ma_session_slot_evict(reg_core(s), j->name, now); break;
    }
    if (vrc) {
        if (vrc == MA_ENOVERSION)
            rc = job_fail(j, 404, "no_version", "slot %s has no version %llu to restore (or it is an eviction "
                          "marker)", j->name, (unsigned long long)version);
        else if (vrc == MA_ENOTFOUND && j->op == OP_SLOT_RESTORE)
            rc = job_fail(j, 404, "no_slot", "slot %s was never written in session %s", j->name, j->id);
        else
            rc = slot_fail(j, vrc);
        goto done;
    }
    reg_change c = {.slots = true};
    if (commit(j, s, &c))
        goto done;
    if (j->op == OP_SLOT_DELETE) {
        j->status = 204;
        rc = 0;
    } else if (j->op == OP_SLOT_RESTORE) {
        set_etag(j, res.version);
        rc = job_ok(j, 200, slot_result_json(j->name, &res));
    } else {
        ma_slot_value sv = {0};
        cJSON *o = NULL;
        if (ma_session_slot_read(reg_core(s), j->name, 0, &sv) == 0 && (o = cJSON_CreateObject())) {
            cJSON_AddStringToObject(o, "name", j->name);
            cJSON_AddNumberToObject(o, "version", (double)sv.info.version);
            cJSON_AddBoolToObject(o, "protected", sv.info.protect);
            set_etag(j, sv.info.version);
        }
        ma_slot_value_clear(&sv);
        rc = job_ok(j, 200, o);
    }
done:
    cJSON_Delete(body);
    if (s)
        reg_release(api.reg, s);
    return rc;
}

/* ---- admin ----------------------------------------------------------------------------------- */

static int do_backup(job *j)
{
    cJSON *body = NULL;
    char err[256] = "";
    int rc = -1;
    if (need_body(j, &body, "{\"path\": \"/absolute/file.db\"}"))
        goto done;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "path");
    if (!cJSON_IsObject(body) || !cJSON_IsString(p) || body->child->next) {
        rc = job_fail(j, 400, "bad_request", "expected exactly {\"path\": \"/absolute/file.db\"}");
        goto done;
    }
    if (p->valuestring[0] != '/') {
        rc = job_fail(j, 400, "bad_request", "path: \"%.200s\" is not absolute", p->valuestring);
        goto done;
    }
    if (access(p->valuestring, F_OK) == 0) {
        rc = job_fail(j, 409, "exists", "path: %.200s exists; backups never overwrite a file", p->valuestring);
        goto done;
    }
    int brc = ma_store_backup(api.store, p->valuestring, err, sizeof err);
    if (brc) {
        rc = job_store_fail(j, brc, "backup", err);
        goto done;
    }
    cJSON *o = cJSON_CreateObject();
    if (o && (!cJSON_AddStringToObject(o, "path", p->valuestring))) {
        cJSON_Delete(o);
        o = NULL;
    }
    rc = job_ok(j, 200, o);
done:
    cJSON_Delete(body);
    return rc;
}

/* ---- job plumbing ---------------------------------------------------------------------------- */

static void job_work(void *arg)
{
    job *j = arg;
    switch (j->op) {
    case OP_SESSION_CREATE:
    case OP_SESSION_PUT:    do_session_create(j); break;
    case OP_SESSION_LIST:   do_session_list(j); break;
    case OP_SESSION_GET:    do_session_get(j); break;
    case OP_SESSION_DELETE: do_session_delete(j); break;
    case OP_EVENTS:         do_events(j); break;
    case OP_QUERY:          do_query(j); break;
    case OP_SLOT_LIST:      do_slot_list(j); break;
    case OP_SLOT_WRITE:
    case OP_SLOT_PUT:       do_slot_write(j); break;
    case OP_SLOT_GET:       do_slot_get(j); break;
    case OP_SLOT_VERSIONS:  do_slot_versions(j); break;
    case OP_SLOT_RESTORE:
    case OP_SLOT_PATCH:
    case OP_SLOT_DELETE:    do_slot_verb(j); break;
    case OP_BACKUP:         do_backup(j); break;
    }
}

static void update_gauges(void)
{
    reg_stats st;
    reg_stats_get(api.reg, &st);
    srv_metric_child_set(api.sessions_loaded, (int64_t)st.loaded);
    srv_metric_child_set(api.memory_bytes, (int64_t)st.bytes);
    /* counters only grow: add the difference since the last update (loop thread only) */
    srv_metric_child_add(api.loads, (int64_t)st.loads - srv_metric_child_value(api.loads));
    srv_metric_child_add(api.unloads, (int64_t)st.unloads - srv_metric_child_value(api.unloads));
    srv_metric_child_set(api.memory_budget, (int64_t)st.budget);
    srv_metric_child_add(api.chunk_loads, (int64_t)st.chunk_loads - srv_metric_child_value(api.chunk_loads));
    srv_metric_child_add(api.paged_out, (int64_t)st.paged_out_bytes - srv_metric_child_value(api.paged_out));
}

static void job_done(void *arg, int status)
{
    job *j = arg;
    if (status == MA_EBUSY)
        srv_respond_error(j->req, 503, "shutting_down", "the server is shutting down");
    else if (j->code)
        srv_respond_error(j->req, j->status, j->code, "%s", j->message);
    else if (!j->out)
        srv_respond_empty(j->req, j->status);
    else {
        if (j->etag[0])
            srv_resp_header(j->req, "ETag", j->etag);
        if (j->location[0])
            srv_resp_header(j->req, "Location", j->location);
        srv_respond_raw(j->req, j->status, "application/json", j->out, strlen(j->out));
    }
    update_gauges();
    cJSON_free(j->out);
    free(j);
}

/* Parses a decimal query parameter; 1 found, 0 absent, -1 answered 400. */
static int query_uint(srv_request *req, const char *name, uint64_t lo, uint64_t hi, uint64_t *out)
{
    const char *v = srv_req_query(req, name);
    char *end;
    if (!v)
        return 0;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-' || v[0] == '+' || x < lo || x > hi) {
        srv_respond_error(req, 400, "bad_request", "?%s=%.40s: expected an integer in %llu..%llu", name, v,
                          (unsigned long long)lo, (unsigned long long)hi);
        return -1;
    }
    *out = x;
    return 1;
}

/* Creates the job for req with its path parameters checked; NULL when the request was answered. */
static job *job_new(srv_request *req, op_kind op)
{
    const char *id = srv_req_param(req, "id"), *name = srv_req_param(req, "name");
    if (id && !ma_name_valid(id)) {
        srv_respond_error(req, 400, "bad_name", "session id \"%.64s\" is not valid, expected 1-%d characters of "
                          "[A-Za-z0-9._:-]", id, MA_MAX_NAME);
        return NULL;
    }
    if (name && !ma_name_valid(name)) {
        srv_respond_error(req, 400, "bad_name", "slot name \"%.64s\" is not valid, expected 1-%d characters of "
                          "[A-Za-z0-9._:-]", name, MA_MAX_NAME);
        return NULL;
    }
    job *j = calloc(1, sizeof *j);
    if (!j) {
        srv_respond_error(req, 503, "overloaded", "out of memory");
        return NULL;
    }
    j->op = op;
    j->req = req;
    if (id)
        snprintf(j->id, sizeof j->id, "%s", id);
    if (name)
        snprintf(j->name, sizeof j->name, "%s", name);
    j->body = srv_req_body(req, &j->body_len);
    j->delimited = srv_req_header(req, "Content-Length") || srv_req_header(req, "Transfer-Encoding");
    return j;
}

static void submit(job *j, srv_job_mode mode)
{
    int rc = srv_pool_submit(api.pool, j->id[0] ? j->id : NULL, mode, job_work, job_done, j);
    if (rc) {
        srv_respond_error(j->req, 503, "overloaded", "the work queue is full, retry later");
        free(j);
    }
}

/* A fresh server-chosen id: 128 random bits from getrandom, as 32 hex digits. */
static int new_id(char *out, size_t len)
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return MA_EIO;
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof b && 2 * i + 2 < len; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

/* ---- handlers (loop thread) ------------------------------------------------------------------ */

static void h_session_create(srv_request *req, void *ud)
{
    (void)ud;
    job *j = job_new(req, OP_SESSION_CREATE);
    if (!j)
        return;
    if (new_id(j->id, sizeof j->id)) {
        srv_respond_error(req, 503, "overloaded", "no randomness available for a session id");
        free(j);
        return;
    }
    submit(j, SRV_JOB_EXCLUSIVE);
}

static void h_session_list(srv_request *req, void *ud)
{
    (void)ud;
    uint64_t limit = LIST_DEFAULT_LIMIT;
    if (query_uint(req, "limit", 1, LIST_MAX_LIMIT, &limit) < 0)
        return;
    const char *after = srv_req_query(req, "after");
    if (after && *after && !ma_name_valid(after)) {
        srv_respond_error(req, 400, "bad_name", "?after=%.64s is not a valid session id", after);
        return;
    }
    job *j = job_new(req, OP_SESSION_LIST);
    if (!j)
        return;
    j->limit = (size_t)limit;
    if (after)
        snprintf(j->after, sizeof j->after, "%s", after);
    submit(j, SRV_JOB_SHARED);
}

#define SIMPLE_HANDLER(fn, op, mode)                  \
    static void fn(srv_request *req, void *ud)        \
    {                                                 \
        (void)ud;                                     \
        job *j = job_new(req, op);                    \
        if (j)                                        \
            submit(j, mode);                          \
    }

SIMPLE_HANDLER(h_session_put, OP_SESSION_PUT, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_session_get, OP_SESSION_GET, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_session_delete, OP_SESSION_DELETE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_events, OP_EVENTS, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_query, OP_QUERY, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_slot_list, OP_SLOT_LIST, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_slot_write, OP_SLOT_WRITE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_slot_versions, OP_SLOT_VERSIONS, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_slot_restore, OP_SLOT_RESTORE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_slot_patch, OP_SLOT_PATCH, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_slot_delete, OP_SLOT_DELETE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_backup, OP_BACKUP, SRV_JOB_SHARED)

static void h_slot_put(srv_request *req, void *ud)
{
    (void)ud;
    uint64_t if_match = 0;
    const char *im = srv_req_header(req, "If-Match");
    if (im) {
        /* "3" (an ETag as we send it) or a bare 3; W/ tags and lists are not versions. */
        char *end;
        const char *p = im + (*im == '"');
        errno = 0;
        unsigned long long x = strtoull(p, &end, 10);
        bool ok = p[0] >= '0' && p[0] <= '9' && !errno && x >= 1 &&
                  (*im == '"' ? (end[0] == '"' && end[1] == '\0') : *end == '\0');
        if (!ok) {
            srv_respond_error(req, 400, "bad_request", "If-Match: %.40s is not a version, expected \"<n>\" with n >= 1",
                              im);
            return;
        }
        if_match = x;
    }
    job *j = job_new(req, OP_SLOT_PUT);
    if (!j)
        return;
    j->if_match = if_match;
    submit(j, SRV_JOB_EXCLUSIVE);
}

static void h_slot_get(srv_request *req, void *ud)
{
    (void)ud;
    uint64_t version = 0;
    if (query_uint(req, "version", 1, UINT64_MAX, &version) < 0)
        return;
    job *j = job_new(req, OP_SLOT_GET);
    if (!j)
        return;
    j->version = version;
    submit(j, SRV_JOB_SHARED);
}

/* ---- init / shutdown ------------------------------------------------------------------------- */

static void on_commit(void *ctx, double seconds, int rc)
{
    (void)ctx;
    srv_metric_child_observe(api.commit_seconds, seconds);
    if (rc)
        srv_metric_child_add(api.commit_failures, 1);
}

static int register_metrics(srv_metrics *m)
{
    static const double commit_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                           0.05, 0.1, 0.25, 1};
    srv_metric *loaded = srv_metric_gauge(m, "memattn_sessions_loaded", "Sessions loaded in memory", NULL);
    srv_metric *mem = srv_metric_gauge(m, "memattn_session_memory_bytes",
                                       "Resident bytes of the loaded sessions (the --memory budget applies)", NULL);
    srv_metric *ev = srv_metric_counter(m, "memattn_events_ingested_total", "Events appended to sessions", NULL);
    srv_metric *rt = srv_metric_counter(m, "memattn_routes_total", "Query answers by route", "route");
    srv_metric *cs = srv_metric_histogram(m, "memattn_store_commit_seconds", "Duration of store commits", NULL,
                                          commit_bounds, sizeof commit_bounds / sizeof commit_bounds[0]);
    srv_metric *cf = srv_metric_counter(m, "memattn_store_commit_failures_total", "Store commits that failed", NULL);
    srv_metric *ld = srv_metric_counter(m, "memattn_session_loads_total", "Sessions loaded from the store", NULL);
    srv_metric *ul = srv_metric_counter(m, "memattn_session_unloads_total",
                                        "Sessions unloaded (memory budget, deletes, failed commits)", NULL);
    srv_metric *mb = srv_metric_gauge(m, "memattn_memory_budget_bytes",
                                      "The --memory budget for loaded sessions (0: unlimited)", NULL);
    srv_metric *cl = srv_metric_counter(m, "memattn_archive_chunk_loads_total",
                                        "Archive chunks read back from the store (pages in)", NULL);
    srv_metric *po = srv_metric_counter(m, "memattn_archive_paged_out_bytes_total",
                                        "Archive chunk bytes dropped from memory under the budget (pages out)", NULL);
    if (!loaded || !mem || !ev || !rt || !cs || !cf || !ld || !ul || !mb || !cl || !po)
        return MA_ENOMEM;
    api.memory_budget = srv_metric_child_get(mb, NULL);
    api.chunk_loads = srv_metric_child_get(cl, NULL);
    api.paged_out = srv_metric_child_get(po, NULL);
    api.sessions_loaded = srv_metric_child_get(loaded, NULL);
    api.memory_bytes = srv_metric_child_get(mem, NULL);
    api.events_ingested = srv_metric_child_get(ev, NULL);
    api.commit_seconds = srv_metric_child_get(cs, NULL);
    api.commit_failures = srv_metric_child_get(cf, NULL);
    api.loads = srv_metric_child_get(ld, NULL);
    api.unloads = srv_metric_child_get(ul, NULL);
    for (int r = MA_ROUTE_SLOT; r <= MA_ROUTE_WINDOW; r++)
        api.routes[r] = srv_metric_child_get(rt, ma_route_name((ma_route)r));
    return 0;
}

int api_init(const cfg_config *cfg, srv_server *srv, char *err, size_t errlen)
{
    static const struct {
        const char *method, *tmpl;
        srv_handler h;
    } routes[] = {
        {"POST", "/v1/sessions", h_session_create},
        {"GET", "/v1/sessions", h_session_list},
        {"PUT", "/v1/sessions/{id}", h_session_put},
        {"GET", "/v1/sessions/{id}", h_session_get},
        {"DELETE", "/v1/sessions/{id}", h_session_delete},
        {"POST", "/v1/sessions/{id}/events", h_events},
        {"POST", "/v1/sessions/{id}/query", h_query},
        {"GET", "/v1/sessions/{id}/slots", h_slot_list},
        {"POST", "/v1/sessions/{id}/slots", h_slot_write},
        {"PUT", "/v1/sessions/{id}/slots/{name}", h_slot_put},
        {"GET", "/v1/sessions/{id}/slots/{name}", h_slot_get},
        {"PATCH", "/v1/sessions/{id}/slots/{name}", h_slot_patch},
        {"DELETE", "/v1/sessions/{id}/slots/{name}", h_slot_delete},
        {"GET", "/v1/sessions/{id}/slots/{name}/versions", h_slot_versions},
        {"POST", "/v1/sessions/{id}/slots/{name}/restore", h_slot_restore},
        {"POST", "/v1/admin/backup", h_backup},
    };
    int rc;

    memset(&api, 0, sizeof api);
    if ((rc = ma_store_open(cfg->data_dir, &api.store, err, errlen)) != 0)
        goto fail;
    reg_options ro = {.store = api.store, .memory_budget = cfg->memory, .cache_chunks = CACHE_CHUNKS,
                      .on_commit = on_commit};
    if ((rc = reg_create(&ro, &api.reg)) != 0) {
        snprintf(err, errlen, "cannot create the session registry: %s", ma_strerror(rc));
        goto fail;
    }
    api.pool = srv_server_pool(srv);
    if ((rc = register_metrics(srv_server_metrics(srv))) != 0) {
        snprintf(err, errlen, "cannot register the API's metrics");
        goto fail;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if ((rc = srv_route_add(srv_server_router(srv), routes[i].method, routes[i].tmpl, routes[i].h, NULL)) != 0) {
            snprintf(err, errlen, "cannot register %s %s: %s", routes[i].method, routes[i].tmpl, ma_strerror(rc));
            goto fail;
        }
    return 0;
fail:
    api_shutdown();
    return rc;
}

void api_shutdown(void)
{
    reg_destroy(api.reg);
    ma_store_close(api.store);
    memset(&api, 0, sizeof api);
}
