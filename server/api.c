/*
 * server/api.c — the REST handlers of docs/API.md (/v1/...): sessions, events, queries, slot verbs, and
 * POST /v1/admin/backup.
 *
 * Design. Every /v1 handler does only cheap work on the loop thread: it checks the path's id and slot
 * name, reads query parameters and headers, and submits one job to the worker pool keyed by the session
 * id — SRV_JOB_SHARED for reads (GET, queries), SRV_JOB_EXCLUSIVE for mutations — so jobs of one session
 * take effect in arrival order, mutations alone, reads of different sessions in parallel. The job (a
 * worker thread) only orchestrates: the codec (server/codec.c) parses and validates the whole body, the
 * registry (registry/registry.h) gives the session (loading it from the store on first use), the core
 * computes, the registry commits a mutation to the store (reg_commit), the codec builds the answer. The
 * completion callback (loop thread) only sends it. So JSON parsing, compute and store I/O never run on
 * the loop thread, and a 2xx to a mutation is sent after its transaction committed. A failed commit
 * answers 503 `storage_error` and the session is reloaded from the store on next use, so memory never
 * diverges from what is stored. The registry is the handlers' only way to the store.
 *
 * POST .../events is split in three so that a session's next batch is computed while this one is
 * fsync'd (docs/STORE.md, "Pipelined and grouped commits"): events_decode (a prepare step, any worker, as
 * soon as the request is queued: parse and decode for the session's config if it is loaded),
 * events_apply (the session's turn, a SRV_JOB_PIPELINED step: checks in the usual order, apply, answer
 * built, reg_commit_queue) and events_committed (the registry's commit thread: durable or failed, then
 * srv_pool_release). Reads of the session wait for that release, so they never see a batch that could
 * still fail. A batch with an Idempotency-Key or expect_length is not pipelined: it is an ordinary
 * exclusive job (which waits for every held batch of the session), so that its key look-up and length
 * check see only durable state, and it commits its key with it (reg_commit) before it answers.
 *
 * Safe retries (docs/API.md): a mutation with an Idempotency-Key looks its key up first, inside its
 * exclusive job (idem_replay: the stored answer again, or 422 for another request), and builds its answer
 * before the commit so that the registry commits the key and answer with the change (commit,
 * idem_record); a 2xx that committed nothing records its key alone (idem_settle). `expect_length` on an
 * event batch is checked against the archive's length before the batch is applied (409 length_mismatch).
 *
 * Errors: the status and API.md code of every failure of the core or the registry come from the codec's
 * one table (codec_status_of); the handlers only word the message. 503 `storage_error` for store failures
 * (disk full, read-only, I/O, corrupt data) is this implementation's addition to the 503 row.
 *
 * State: one `api` context, created by api_init and passed to every route as its user data; no globals.
 *
 * Not done here: HTTP parsing, limits, auth, Content-Type (server/), JSON and validation rules (codec.c),
 * the attention maths (core/), sessions and persistence (registry/, store/).
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

#include <cjson/cJSON.h>

#include "core/error.h"
#include "core/featurize.h"
#include "core/hash.h"
#include "core/session.h"
#include "registry/registry.h"
#include "server/codec.h"
#include "server/etag.h"
#include "server/idem.h"
#include "server/limits.h"
#include "server/log.h"

#define MAX_EVENTS_PER_BATCH  SRV_MAX_EVENTS_PER_BATCH     /* server/limits.h: GET /v1/info says them */
#define MAX_QUERIES_PER_BATCH SRV_MAX_QUERIES_PER_BATCH
#define LIST_DEFAULT_LIMIT    SRV_LIST_DEFAULT_LIMIT
#define LIST_MAX_LIMIT        SRV_LIST_MAX_LIMIT

typedef enum {
    OP_SESSION_CREATE, OP_SESSION_PUT, OP_SESSION_LIST, OP_SESSION_GET, OP_SESSION_DELETE,
    OP_EVENTS, OP_QUERY,
    OP_SLOT_LIST, OP_SLOT_WRITE, OP_SLOT_PUT, OP_SLOT_GET, OP_SLOT_VERSIONS, OP_SLOT_RESTORE, OP_SLOT_PATCH,
    OP_SLOT_DELETE,
    OP_BACKUP,
} op_kind;

struct api {
    reg_registry *reg;                /* borrowed (main.c) */
    srv_pool *pool;
    srv_metric_child *sessions_loaded, *memory_bytes, *events_ingested, *commit_seconds, *commit_failures;
    srv_metric_child *routes[MA_ROUTE_WINDOW + 1];
    srv_metric_child *loads, *unloads;
    srv_metric_child *memory_budget, *chunk_loads, *paged_out;   /* the session cache (registry) */
    srv_metric_child *group_commits, *group_changes;              /* the commit queue (registry) */
    srv_metric_child *index_builds, *index_in_place, *index_failures;   /* background index builds */
    srv_metric_child *sessions_purging, *purged_rows;   /* deleted sessions' rows, purged in the background */
};

/* One request's work. Filled on the loop thread, run on a worker, answered and freed on the loop thread. */
typedef struct {
    op_kind op;
    api *api;
    srv_request *req;                 /* loop thread only */
    char id[MA_MAX_NAME + 1];         /* session id ("" for list/backup) */
    char name[MA_MAX_NAME + 1];       /* slot name */
    const char *body;                 /* the request's body: immutable until the request is answered */
    size_t body_len;
    bool delimited;                   /* the request framed a body (Content-Length or chunked) */
    uint64_t version;                 /* ?version= of a slot read */
    srv_etag_list if_match;           /* If-Match of an overwrite (tags point into the request's header) */
    srv_etag_list if_none_match;      /* If-None-Match of a slot or session read */
    bool forget;                      /* DELETE ...?forget=true */
    size_t limit;                     /* ?limit= of the session list */
    char after[MA_MAX_NAME + 1];      /* ?after= of the session list, "" if absent */
    /* result */
    int status;
    const char *code;                 /* error code, or NULL on success */
    char message[512];
    char *out;                        /* response body (JSON text), cJSON-allocated */
    char etag[40];                    /* "\"<version>\"" for slot answers, "\"s-<hash>\"" for a session, "" if none */
    char location[320];               /* Location of a created session or slot, "" if none */
    /* POST .../events: decoded before the session's turn (events_decode), applied in it (events_apply),
     * answered when its commit is durable (events_committed) */
    bool ev_binary;                   /* the body is a binary batch (application/octet-stream; codec.h) */
    cJSON *ev_body;                   /* the parsed body, until decoded */
    bool ev_decoded;                  /* ev / ev_rc hold the decode for ev_shape */
    codec_shape ev_shape;
    codec_events ev;                  /* owned until the commit's answer */
    int ev_rc;                        /* the decode's result (0, or a failure described by ev_err) */
    codec_error ev_err;
    srv_hold *hold;                   /* the pool's hold, released by events_committed */
    /* Idempotency-Key of a mutation (docs/API.md "Safe retries"; idem_replay, idem_settle) */
    char idem_key[SRV_IDEM_KEY_MAX + 1];   /* "" when the request has none */
    const char *if_match_text;        /* If-Match as sent (part of the fingerprint), NULL if absent */
    uint64_t fingerprint;
    bool idem_stored;                 /* the key and this answer are committed */
    bool replayed;                    /* the answer is the stored one of an earlier request with the key */
    char pool_key[SRV_IDEM_KEY_MAX + 32];  /* the worker pool's ordering key when not the session id */
    reg_session *sess;                /* the session acquire() gave (while the job holds it) */
} job;

/* ---- small helpers --------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void job_vfail(job *j, int status, const char *code, const char *fmt, va_list ap)
{
    j->status = status;
    j->code = code;
    vsnprintf(j->message, sizeof j->message, fmt, ap);
}

static int job_fail(job *j, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int job_fail(job *j, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    job_vfail(j, status, code, fmt, ap);
    va_end(ap);
    return -1;
}

/* Fails the job with the status and code of rc (codec_status_of; `missing` words an MA_ENOTFOUND). */
static int job_error(job *j, int rc, const char *missing, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int job_error(job *j, int rc, const char *missing, const char *fmt, ...)
{
    const char *code;
    int status = codec_status_of(rc, missing, &code);
    va_list ap;
    va_start(ap, fmt);
    job_vfail(j, status, code, fmt, ap);
    va_end(ap);
    return -1;
}

static int job_codec_fail(job *j, const codec_error *e)
{
    return job_fail(j, 400, e->code, "%s", e->message);
}

/* A failure of the store (through the registry): 503 storage_error with the store's message, whatever
 * the code, except out of memory (503 overloaded) and the memory budget's refusals: a session larger than
 * the budget (422 session_too_large) and no room while every loaded session is in use (503 overloaded;
 * Retry-After comes with every 503). */
static int job_store_fail(job *j, int rc, const char *what, const char *msg)
{
    if (rc == MA_ENOMEM)
        return job_error(j, rc, NULL, "%s: out of memory", what);
    if (rc == MA_ETOOBIG)
        return job_error(j, rc, NULL, "%s: %s", what, msg && *msg ? msg : ma_strerror(rc));
    if (rc == MA_EBUSY)
        return job_fail(j, 503, "overloaded", "%s: %s", what, msg && *msg ? msg : ma_strerror(rc));
    return job_error(j, MA_EIO, NULL, "%s: %s", what, msg && *msg ? msg : ma_strerror(rc));
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

/* A strong entity tag of the answer's bytes (FNV-1a 64): for answers that have no version of their own
 * (the session's description). Equal bytes, equal tag; any change of the answer changes it. */
static void set_content_etag(job *j)
{
    snprintf(j->etag, sizeof j->etag, "\"s-%016llx\"", (unsigned long long)ma_fnv1a64(j->out, strlen(j->out)));
}

/* Parses the body (codec_parse_body); an empty body gives *out NULL. */
static int parse_body(job *j, cJSON **out)
{
    codec_error ce;
    if (codec_parse_body(j->body, j->body_len, out, &ce))
        return job_codec_fail(j, &ce);
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
    char err[512] = "";
    int rc = reg_acquire(j->api->reg, j->id, s, err, sizeof err);
    if (rc == 0) {
        j->sess = *s;
        return 0;
    }
    if (rc == MA_ENOTFOUND)
        return job_error(j, rc, "no_session", "session %s does not exist", j->id);
    return job_store_fail(j, rc, "loading the session", err);
}

static void release(job *j, reg_session *s)
{
    if (s)
        reg_release(j->api->reg, s);
    if (s == j->sess)
        j->sess = NULL;
}

/* The key record of j's answer (the job succeeded: status and body are final), or NULL when the request
 * has no Idempotency-Key or failed (a failure changed nothing: its retry simply runs again). */
static const reg_idem *idem_record(job *j, reg_idem *k)
{
    if (!j->idem_key[0] || j->code || j->status < 200 || j->status > 299)
        return NULL;
    *k = (reg_idem){.scope = j->op == OP_SESSION_CREATE ? "" : j->id, .key = j->idem_key,
                    .fingerprint = j->fingerprint, .status = j->status, .body = j->out, .etag = j->etag,
                    .location = j->location};
    return k;
}

/* Commits a change applied to s, with the request's key and the answer already built (so a retry after a
 * crash gets exactly this answer). When the answer could not be built (j failed: out of memory) nothing
 * is committed and the in-memory change is dropped: the session is reloaded from the store. */
static int commit(job *j, reg_session *s, const reg_change *c)
{
    char err[256] = "";
    if (j->code) {
        reg_invalidate(j->api->reg, s);
        return -1;
    }
    reg_idem k;
    reg_change cc = *c;
    cc.idem = idem_record(j, &k);
    int rc = reg_commit(j->api->reg, s, &cc, now_ms(), err, sizeof err);
    if (rc == 0) {
        j->idem_stored = cc.idem != NULL;
        return 0;
    }
    srv_log(CFG_LOG_ERROR, "commit of session %s failed: %s", j->id, err);
    return job_store_fail(j, rc, "the change was not stored (nothing applied)", err);
}

/* Words the failure rc of a slot verb on slot j->name (status and code: job_error's table). */
static int slot_error(job *j, int rc)
{
    switch (rc) {
    case MA_ENOTFOUND:  return job_error(j, rc, "no_slot", "slot %s is not resident in session %s", j->name, j->id);
    case MA_ENOVERSION: return job_error(j, rc, NULL, "slot %s has no such version", j->name);
    case MA_EEXISTS:    return job_error(j, rc, NULL, "slot %s exists (use PUT to overwrite it)", j->name);
    case MA_EPROTECTED: return job_error(j, rc, NULL, "slot %s is protected", j->name);
    case MA_ECONFLICT:  return job_error(j, rc, NULL, "version: must be greater than slot %s's current version", j->name);
    case MA_EPRECOND:   return job_error(j, rc, NULL, "If-Match: slot %s's current version differs", j->name);
    case MA_EFULL:      return job_error(j, rc, NULL, "every resident slot is protected; unprotect or evict one first");
    case MA_EINVAL:     return job_error(j, rc, NULL, "slot %s: invalid input", j->name);
    case MA_ENOMEM:     return job_error(j, rc, NULL, "out of memory");
    default:            return job_store_fail(j, rc, "reading the archive", j->sess ? reg_read_error(j->sess) : NULL);
    }
}

/* The overwrite's If-Match, evaluated inside the session's exclusive job (so nothing changes between the
 * check and the write): strong comparison with the resident version's tag; `*` matches any resident
 * version; no resident slot matches nothing. 0 with *version the version to hand the core (0 = no
 * condition), or -1 with 412 (or the read's error) set. */
static int if_match_version(job *j, reg_session *s, uint64_t *version)
{
    *version = 0;
    if (!j->if_match.present)
        return 0;
    ma_slot_value sv = {0};
    int rc = ma_session_slot_read(reg_core(s), j->name, 0, &sv);
    uint64_t cur = rc == 0 ? sv.info.version : 0;
    ma_slot_value_clear(&sv);
    if (rc && rc != MA_ENOTFOUND)
        return slot_error(j, rc);
    char tag[32];
    snprintf(tag, sizeof tag, "\"%llu\"", (unsigned long long)cur);
    if (!cur)
        return job_fail(j, 412, "precondition_failed", "If-Match: slot %s is not resident in session %s", j->name,
                        j->id);
    if (!srv_etag_matches(&j->if_match, tag, false))
        return job_fail(j, 412, "precondition_failed", "If-Match: slot %s's current version is %s", j->name, tag);
    *version = cur;
    return 0;
}

/* ---- sessions -------------------------------------------------------------------------------- */

static int do_session_create(job *j)
{
    reg_registry *reg = j->api->reg;
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
        rc = reg_acquire(reg, j->id, &s, err, sizeof err);
        if (rc == 0) {
            bool same = ma_params_equal(reg_params(s), &p);
            cJSON *o = same ? codec_session_to_json(j->id, reg_params(s)) : NULL;
            reg_release(reg, s);
            if (!same)
                return job_error(j, MA_EEXISTS, NULL, "session %s exists with another config", j->id);
            return job_ok(j, 200, o);
        }
        if (rc != MA_ENOTFOUND)
            return job_store_fail(j, rc, "loading the session", err);
    }
    /* The answer first: it is committed with the session under the request's Idempotency-Key. */
    snprintf(j->location, sizeof j->location, "/v1/sessions/%s", j->id);
    if (job_ok(j, 201, codec_session_to_json(j->id, &p)))
        return -1;
    reg_idem k;
    const reg_idem *kp = idem_record(j, &k);
    rc = reg_create_session_idem(reg, j->id, &p, now_ms(), kp, &s, err, sizeof err);
    if (rc == MA_EEXISTS)
        return job_error(j, rc, NULL, "session %s exists", j->id);
    if (rc)
        return job_store_fail(j, rc, "creating the session", err);
    j->idem_stored = kp != NULL;
    reg_release(reg, s);
    return 0;
}

static int do_session_list(job *j)
{
    reg_listing *l = NULL;
    size_t n = 0;
    char err[256] = "";
    int rc = reg_list(j->api->reg, j->after, j->limit, &l, &n, err, sizeof err);
    if (rc)
        return job_store_fail(j, rc, "listing sessions", err);
    /* "next": pass as ?after= for the following page; present only when this page is full. */
    rc = job_ok(j, 200, codec_session_list_to_json(l, n, n == j->limit && n > 0 ? l[n - 1].id : NULL));
    free(l);
    return rc;
}

static int do_session_get(job *j)
{
    reg_session *s;
    reg_summary sm;
    char err[256] = "";
    if (acquire(j, &s))
        return -1;
    int rc = reg_summary_get(j->api->reg, s, &sm, err, sizeof err);
    if (rc) {
        release(j, s);
        return job_store_fail(j, rc, "reading the stored session", err);
    }
    rc = job_ok(j, 200, codec_session_summary_to_json(j->id, &sm));
    if (rc == 0)
        set_content_etag(j);
    reg_summary_clear(&sm);
    release(j, s);
    return rc;
}

static int do_session_delete(job *j)
{
    char err[256] = "";
    reg_idem k;
    j->status = 204;   /* the answer, committed with the delete under the request's Idempotency-Key */
    const reg_idem *kp = idem_record(j, &k);
    int rc = reg_delete_idem(j->api->reg, j->id, kp, now_ms(), err, sizeof err);
    if (rc == MA_ENOTFOUND)
        return job_error(j, rc, "no_session", "session %s does not exist", j->id);
    if (rc)
        return job_store_fail(j, rc, "deleting the session", err);
    j->idem_stored = kp != NULL;
    return 0;
}

/* ---- events and queries ---------------------------------------------------------------------- */

static bool frozen_out(job *j);

/* 409 length_mismatch: the batch's expect_length is not the session's length (nothing applied); the
 * error body carries the current length (codec_length_mismatch_to_json). */
static int length_mismatch(job *j, uint64_t length, uint64_t expected)
{
    char msg[160];
    snprintf(msg, sizeof msg, "expect_length: the session's length is %llu, not %llu; nothing was applied",
             (unsigned long long)length, (unsigned long long)expected);
    cJSON *o = codec_length_mismatch_to_json(msg, length);
    if (!o)
        return job_fail(j, 409, "length_mismatch", "%s", msg);
    job_ok(j, 409, o);
    return -1;
}

/* The batch decoded for shape sh (the body parsed first if it is not yet): 0 with j->ev filled, or the
 * decode's failure recorded in ev_rc / ev_err (reported by events_run, not here), or -1 with the body's
 * own failure set on the job. */
static int events_decode_for(job *j, const codec_shape *sh)
{
    if (j->ev_decoded && j->ev_shape.heads == sh->heads && j->ev_shape.dim == sh->dim &&
        j->ev_shape.value_dim == sh->value_dim && j->ev_shape.embed == sh->embed)
        return 0;
    codec_events_clear(&j->ev);
    j->ev_decoded = false;
    if (j->ev_binary) {   /* read in place from the body, which outlives the answer's commit */
        j->ev_shape = *sh;
        j->ev_rc = codec_events_decode_binary(j->body, j->body_len, sh, MAX_EVENTS_PER_BATCH, &j->ev, &j->ev_err);
        j->ev_decoded = true;
        return 0;
    }
    if (!j->ev_body && codec_events_decode_simple(j->body, j->body_len, sh, MAX_EVENTS_PER_BATCH, &j->ev)) {
        j->ev_shape = *sh;   /* {"events":[{"k_b64","v_b64"},...]} decoded from the raw body, no JSON tree */
        j->ev_rc = 0;
        j->ev_decoded = true;
        return 0;
    }
    if (!j->ev_body && need_body(j, &j->ev_body, "{\"events\":[...]}"))
        return -1;
    j->ev_shape = *sh;
    j->ev_rc = codec_events_decode(j->ev_body, sh, MAX_EVENTS_PER_BATCH, &j->ev, &j->ev_err);
    j->ev_decoded = true;
    cJSON_Delete(j->ev_body);
    j->ev_body = NULL;
    return 0;
}

/* Prepare step of a pipelined POST .../events (worker.h): runs on any worker as soon as the request is
 * queued, alongside the session's earlier jobs. If the session is loaded, decodes the batch for its config
 * (events_decode_for), else parses a JSON body for the session's turn; touches no session state. Failures
 * are only recorded: events_apply reports them in the order of the checks (frozen, body, session, batch). */
static void events_decode(void *arg)
{
    job *j = arg;
    ma_params p;
    codec_shape sh;
    if (!reg_peek_params(j->api->reg, j->id, &p)) {   /* not loaded: parsed now, decoded in the session's turn */
        if (!j->ev_binary)
            need_body(j, &j->ev_body, "{\"events\":[...]}");
        return;
    }
    codec_shape_from_params(&sh, &p, embed);
    events_decode_for(j, &sh);
}

/* The commit of the batch is durable (rc 0) or failed (registry's commit thread). */
static void events_committed(void *ctx, int rc, const char *err)
{
    job *j = ctx;
    if (rc) {
        srv_log(CFG_LOG_ERROR, "commit of session %s failed: %s", j->id, err);
        cJSON_free(j->out);
        j->out = NULL;
        job_store_fail(j, rc, "the change was not stored (nothing applied)", err);
    } else {
        srv_metric_child_add(j->api->events_ingested, (int64_t)j->ev.n);
    }
    codec_events_clear(&j->ev);
    srv_pool_release(j->hold);   /* j belongs to the loop from here */
}

/* The session's turn of POST .../events. h is the pool's hold of a pipelined job (a batch without
 * Idempotency-Key and expect_length; h_events): the batch is applied and its commit queued
 * (reg_commit_queue); the answer, built here, is sent once events_committed ran, while the next batch of
 * the session may already be applied. h is NULL in an exclusive job (job_work: a batch with an
 * Idempotency-Key or expect_length, which ran after every held batch of the session was released, so its
 * key look-up and length check saw only durable state): the batch is committed before the answer, with
 * its key and answer in the same transaction (commit). True when the job is held. */
static bool events_run(job *j, srv_hold *h)
{
    ma_ingest_report rep = {0};
    reg_session *s = NULL;
    codec_shape sh;
    char err[256] = "";
    bool held = false;

    /* j->code here is the body's failure (events_decode) */
    if (j->code || acquire(j, &s))
        goto done;
    ma_session *core = reg_core(s);
    codec_shape_from_params(&sh, reg_params(s), embed);
    if (events_decode_for(j, &sh))
        goto done;
    if (j->ev_rc) {
        job_codec_fail(j, &j->ev_err);
        goto done;
    }
    if (h && j->ev.has_expect_length) {
        /* expect_length that h_events did not see in the raw body (an escaped key): the check must see
         * only durable state, so the session's queued batches are written first. */
        int wrc = reg_settle(j->api->reg, s, err, sizeof err);
        if (wrc) {
            job_store_fail(j, wrc, "an earlier batch of the session was not stored (nothing applied)", err);
            goto done;
        }
    }
    uint64_t first = ma_archive_length(ma_session_archive(core));
    if (j->ev.has_expect_length && j->ev.expect_length != first) {
        length_mismatch(j, first, j->ev.expect_length);
        goto done;
    }
    int irc = ma_session_ingest_ex(core, j->ev.n, j->ev.ev, j->ev.importance, now_ms(), &rep);
    if (irc == MA_EFULL) {
        job_error(j, irc, NULL, "a slot write in this batch needs a free slot, but every resident "
                  "slot is protected; nothing was applied");
        goto done;
    }
    if (irc) {
        job_error(j, irc, NULL, "the batch was refused: %s; nothing was applied", ma_strerror(irc));
        goto done;
    }
    /* The answer first: it is committed with the batch (commit), and once a commit is queued j is
     * events_committed's. */
    job_ok(j, 200, codec_ingest_report_to_json(&rep));
    if (!j->ev.n)
        goto done;
    reg_change c = {.first_event = first, .n_events = j->ev.n, .k = j->ev.k, .v = j->ev.v,
                    .payloads = (const char *const *)j->ev.payloads};
    if (!h) {
        if (commit(j, s, &c) == 0)
            srv_metric_child_add(j->api->events_ingested, (int64_t)j->ev.n);
        goto done;
    }
    if (j->code) {   /* the answer could not be built: nothing is committed (see commit) */
        reg_invalidate(j->api->reg, s);
        goto done;
    }
    j->hold = h;
    int qrc = reg_commit_queue(j->api->reg, s, &c, now_ms(), events_committed, j, err, sizeof err);
    if (qrc) {
        srv_log(CFG_LOG_ERROR, "commit of session %s failed: %s", j->id, err);
        cJSON_free(j->out);
        j->out = NULL;
        job_store_fail(j, qrc, "the change was not stored (nothing applied)", err);
    }
    held = qrc == 0;
done:
    ma_ingest_report_clear(&rep);
    release(j, s);
    return held;
}

/* The ordered step of a pipelined POST .../events (SRV_JOB_PIPELINED). */
static bool events_apply(void *arg, srv_hold *h)
{
    job *j = arg;
    if (frozen_out(j))
        return false;
    return events_run(j, h);
}

/* Words the failure qrc of queries[i] as its own result, with the status and code of codec.c's table: 0
 * (the error is in the batch's answer), or -1 when the job failed as a whole (storage, memory). */
static int query_error(job *j, cJSON *out, size_t i, const ma_query *q, int qrc)
{
    char msg[256];
    switch (qrc) {
    case MA_ENOVERSION:
        snprintf(msg, sizeof msg, "queries[%zu]: slot %s has no version %llu", i, q->slot,
                 (unsigned long long)q->version);
        break;
    case MA_ENOTFOUND:
        snprintf(msg, sizeof msg, "queries[%zu]: no %sslot %s%s", i, q->version ? "" : "resident ",
                 q->slot ? q->slot : "matches the query", q->slot ? "" : " (cosine below route_threshold)");
        break;
    case MA_EEMPTY:
        snprintf(msg, sizeof msg, "queries[%zu]: nothing to attend over (no events%s)", i,
                 q->include_superseded ? ", or every one forgotten" : ", or every one superseded or forgotten");
        break;
    case MA_EINVAL:
        snprintf(msg, sizeof msg, "queries[%zu]: this route needs a query vector", i);
        break;
    default:
        return job_store_fail(j, qrc, "reading the archive", j->sess ? reg_read_error(j->sess) : NULL);
    }
    const char *code;
    int status = codec_status_of(qrc, "no_slot", &code);
    if (codec_results_add_error(out, status, code, msg))
        return job_error(j, MA_ENOMEM, NULL, "out of memory");
    return 0;
}

static int do_query(job *j)
{
    cJSON *body = NULL, *out = NULL;
    codec_queries qs = {0};
    codec_shape sh;
    codec_error ce;
    reg_session *s = NULL;
    float *vbuf = NULL;
    ma_answer *as = NULL;
    int *qrcs = NULL;
    size_t answered = 0;
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
    /* All queries at once: the archive reads of the batch share one pass (ma_session_query_batch). */
    size_t nq = qs.n ? qs.n : 1;
    if (!(vbuf = malloc(sizeof(float) * vn * nq)) || !(as = calloc(nq, sizeof *as)) ||
        !(qrcs = malloc(nq * sizeof *qrcs)) || !(out = codec_results_new())) {
        rc = job_error(j, MA_ENOMEM, NULL, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < qs.n; i++)
        as[i].v = vbuf + i * vn;
    if (ma_session_query_batch(reg_core(s), qs.q, qs.n, as, qrcs) != 0) {
        rc = job_error(j, MA_ENOMEM, NULL, "out of memory");
        goto done;
    }
    answered = qs.n;
    for (size_t i = 0; i < qs.n; i++) {
        int qrc = qrcs[i];
        if (qrc) {
            if (query_error(j, out, i, &qs.q[i], qrc))
                goto done;
            continue;
        }
        ma_answer *a = &as[i];
        if (a->route >= 0 && a->route <= MA_ROUTE_WINDOW)
            srv_metric_child_add(j->api->routes[a->route], 1);
        qrc = codec_results_add(out, a, vn);
        ma_answer_clear(a);
        if (qrc) {
            rc = job_error(j, qrc, NULL, "out of memory");
            goto done;
        }
    }
    rc = job_ok(j, 200, out);
    out = NULL;
done:
    for (size_t i = 0; i < answered; i++)
        ma_answer_clear(&as[i]);
    free(as);
    free(qrcs);
    free(vbuf);
    cJSON_Delete(out);
    codec_queries_clear(&qs);
    cJSON_Delete(body);
    release(j, s);
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
    release(j, s);
    if (rc)
        return job_error(j, rc, NULL, "out of memory");
    rc = job_ok(j, 200, codec_slot_list_to_json(si, n));
    free(si);
    return rc;
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
                        .protect = b.protect, .has_importance = b.has_importance, .importance = b.importance};
    uint64_t if_match = 0;
    if (put && if_match_version(j, s, &if_match))
        goto done;
    int vrc = put ? ma_session_slot_overwrite(reg_core(s), &in, b.version, if_match, now_ms(), &res)
                  : ma_session_slot_write(reg_core(s), &in, now_ms(), &res);
    if (vrc) {
        rc = slot_error(j, vrc);
        goto done;
    }
    set_etag(j, res.version);
    if (!put || res.created)
        snprintf(j->location, sizeof j->location, "/v1/sessions/%s/slots/%s", j->id, b.name);
    job_ok(j, put && !res.created ? 200 : 201, codec_slot_result_to_json(b.name, &res));   /* committed with it */
    reg_change c = {0};
    rc = commit(j, s, &c);
done:
    codec_slot_body_clear(&b);
    cJSON_Delete(body);
    release(j, s);
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
        release(j, s);
        if (rc == MA_ENOVERSION)
            return job_error(j, rc, NULL, "slot %s has no version %llu (or it is an eviction marker)", j->name,
                             (unsigned long long)j->version);
        if (rc == MA_ENOTFOUND)
            return job_error(j, rc, "no_slot", j->version ? "slot %s was never written in session %s"
                                                          : "slot %s is not resident in session %s", j->name, j->id);
        return slot_error(j, rc);
    }
    cJSON *o = codec_slot_value_to_json(&sv, (size_t)p->heads * p->dim, (size_t)p->heads * p->value_dim);
    if (!j->version)
        set_etag(j, sv.info.version);
    ma_slot_value_clear(&sv);
    release(j, s);
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
    release(j, s);
    if (rc == MA_ENOTFOUND)
        return job_error(j, rc, "no_slot", "slot %s was never written in session %s", j->name, j->id);
    if (rc)
        return slot_error(j, rc);
    rc = job_ok(j, 200, codec_versions_to_json(vi, n));
    free(vi);
    return rc;
}

/* restore, protect/unprotect, evict: small bodies, one verb, a commit of the slot table. */
static int do_slot_verb(job *j)
{
    cJSON *body = NULL;
    reg_session *s = NULL;
    ma_slot_result res = {0};
    codec_error ce;
    uint64_t version = 0;
    bool protect = false;
    uint64_t *erased = NULL;
    size_t n_erased = 0;
    int rc = -1, vrc;

    if (j->op == OP_SLOT_RESTORE) {
        if (need_body(j, &body, "{\"version\": n}"))
            goto done;
        if (codec_restore_decode(body, &version, &ce)) {
            rc = job_codec_fail(j, &ce);
            goto done;
        }
    } else if (j->op == OP_SLOT_PATCH) {
        if (need_body(j, &body, "{\"protected\": true|false}"))
            goto done;
        if (codec_protect_decode(body, &protect, &ce)) {
            rc = job_codec_fail(j, &ce);
            goto done;
        }
    }
    if (acquire(j, &s))
        goto done;
    int64_t now = now_ms();
    switch (j->op) {
    case OP_SLOT_RESTORE: vrc = ma_session_slot_restore(reg_core(s), j->name, version, now, &res); break;
    case OP_SLOT_PATCH:   vrc = ma_session_slot_protect(reg_core(s), j->name, protect, now); break;
    default:
        vrc = j->forget ? ma_session_slot_forget(reg_core(s), j->name, &erased, &n_erased)
                        : ma_session_slot_evict(reg_core(s), j->name, now);
        break;
    }
    if (vrc) {
        if (vrc == MA_ENOVERSION)
            rc = job_error(j, vrc, NULL, "slot %s has no version %llu to restore (or it is an eviction "
                           "marker)", j->name, (unsigned long long)version);
        else if (vrc == MA_ENOTFOUND && (j->op == OP_SLOT_RESTORE || j->forget))
            rc = job_error(j, vrc, "no_slot", "slot %s was never written in session %s", j->name, j->id);
        else
            rc = slot_error(j, vrc);
        goto done;
    }
    /* The answer first: it is committed with the change under the request's Idempotency-Key (commit). */
    if (j->op == OP_SLOT_DELETE) {
        j->status = 204;
    } else if (j->op == OP_SLOT_RESTORE) {
        set_etag(j, res.version);
        job_ok(j, 200, codec_slot_result_to_json(j->name, &res));
    } else {
        ma_slot_value sv = {0};
        cJSON *o = NULL;
        if (ma_session_slot_read(reg_core(s), j->name, 0, &sv) == 0 && (o = codec_slot_protect_to_json(&sv.info)))
            set_etag(j, sv.info.version);
        ma_slot_value_clear(&sv);
        job_ok(j, 200, o);
    }
    reg_change c = {.erase = erased, .n_erase = n_erased};
    rc = commit(j, s, &c);
done:
    free(erased);
    cJSON_Delete(body);
    release(j, s);
    return rc;
}

/* ---- admin ----------------------------------------------------------------------------------- */

static int do_backup(job *j)
{
    cJSON *body = NULL;
    codec_error ce;
    const char *path;
    char err[256] = "";
    int rc = -1;
    if (need_body(j, &body, "{\"path\": \"/absolute/file.db\"}"))
        goto done;
    if (codec_backup_decode(body, &path, &ce)) {
        rc = job_codec_fail(j, &ce);
        goto done;
    }
    int brc = reg_backup(j->api->reg, path, err, sizeof err);
    if (brc == MA_EEXISTS)
        rc = job_error(j, brc, NULL, "%s", err);
    else if (brc)
        rc = job_store_fail(j, brc, "backup", err);
    else
        rc = job_ok(j, 200, codec_backup_to_json(path));
done:
    cJSON_Delete(body);
    return rc;
}

/* ---- job plumbing ---------------------------------------------------------------------------- */

/* Mutations of a session's content, refused while it is frozen for a move (api_transfer.c); a delete
 * is not one of them (a move ends with it). */
static bool frozen_out(job *j)
{
    switch (j->op) {
    case OP_EVENTS: case OP_SLOT_WRITE: case OP_SLOT_PUT: case OP_SLOT_RESTORE: case OP_SLOT_PATCH:
    case OP_SLOT_DELETE:
        break;
    default:
        return false;
    }
    if (!reg_is_frozen(j->api->reg, j->id))
        return false;
    job_fail(j, 503, "frozen", "session %s is being moved to another node; retry in a moment", j->id);
    return true;
}

/* "METHOD template" of a mutation that takes an Idempotency-Key, NULL for the other routes. Part of the
 * stored fingerprint: never change a string (the enum's order may change). */
static const char *idem_route(op_kind op)
{
    switch (op) {
    case OP_SESSION_CREATE: return "POST /v1/sessions";
    case OP_SESSION_PUT:    return "PUT /v1/sessions/{id}";
    case OP_SESSION_DELETE: return "DELETE /v1/sessions/{id}";
    case OP_EVENTS:         return "POST /v1/sessions/{id}/events";
    case OP_SLOT_WRITE:     return "POST /v1/sessions/{id}/slots";
    case OP_SLOT_PUT:       return "PUT /v1/sessions/{id}/slots/{name}";
    case OP_SLOT_RESTORE:   return "POST /v1/sessions/{id}/slots/{name}/restore";
    case OP_SLOT_PATCH:     return "PATCH /v1/sessions/{id}/slots/{name}";
    case OP_SLOT_DELETE:    return "DELETE /v1/sessions/{id}/slots/{name}";
    default:                return NULL;
    }
}

/* Before a mutation with an Idempotency-Key runs (inside its exclusive job, so no change of its session
 * can come between the look-up and the commit): when the key's record exists within the window, the
 * same request gets the stored answer (marked replayed; nothing runs, nothing changes) and another
 * request 422 idempotency_key_reused. True when the job is answered. */
static bool idem_replay(job *j)
{
    if (!j->idem_key[0])
        return false;
    const char *parts[] = {idem_route(j->op), j->op == OP_SESSION_CREATE ? NULL : j->id, j->name[0] ? j->name : NULL,
                           j->forget ? "forget=true" : NULL, j->if_match_text};
    j->fingerprint = srv_idem_fingerprint(parts, sizeof parts / sizeof parts[0], j->body, j->body_len);
    reg_idem_answer a;
    char err[256] = "";
    int rc = reg_idem_find(j->api->reg, j->op == OP_SESSION_CREATE ? "" : j->id, j->idem_key, now_ms(), &a, err,
                           sizeof err);
    if (rc == MA_ENOTFOUND)
        return false;
    if (rc) {
        job_store_fail(j, rc, "reading the Idempotency-Key (nothing applied)", err);
        return true;
    }
    if (a.fingerprint != j->fingerprint) {
        job_fail(j, 422, "idempotency_key_reused", "Idempotency-Key %.64s%s was used for another request "
                 "(another method, path or body) in this session; use a new key for a new request", j->idem_key,
                 strlen(j->idem_key) > 64 ? "..." : "");
    } else {
        size_t n = a.body ? strlen(a.body) : 0;
        if (a.body && !(j->out = cJSON_malloc(n + 1))) {
            job_fail(j, 503, "overloaded", "out of memory replaying the answer");
        } else {
            if (a.body)
                memcpy(j->out, a.body, n + 1);
            j->status = a.status;
            snprintf(j->etag, sizeof j->etag, "%s", a.etag ? a.etag : "");
            snprintf(j->location, sizeof j->location, "%s", a.location ? a.location : "");
            j->replayed = true;
        }
    }
    reg_idem_answer_clear(&a);
    return true;
}

/* After a mutation with an Idempotency-Key: a 2xx whose request changed nothing (a PUT of an existing
 * session with its config, an empty batch) had no commit to carry its key; record it alone. If that
 * fails the answer is 503 storage_error (nothing changed, the retry runs again). */
static void idem_settle(job *j)
{
    reg_idem k;
    if (j->replayed || j->idem_stored || !idem_record(j, &k))
        return;
    char err[256] = "";
    int rc = reg_idem_record(j->api->reg, &k, now_ms(), err, sizeof err);
    if (rc == 0) {
        j->idem_stored = true;
        return;
    }
    srv_log(CFG_LOG_ERROR, "storing an Idempotency-Key of session %s failed: %s", j->id, err);
    cJSON_free(j->out);
    j->out = NULL;
    job_store_fail(j, rc, "the Idempotency-Key was not stored (nothing changed)", err);
}

static void job_work(void *arg)
{
    job *j = arg;
    if (idem_replay(j) || frozen_out(j))
        return;
    switch (j->op) {
    case OP_SESSION_CREATE:
    case OP_SESSION_PUT:    do_session_create(j); break;
    case OP_SESSION_LIST:   do_session_list(j); break;
    case OP_SESSION_GET:    do_session_get(j); break;
    case OP_SESSION_DELETE: do_session_delete(j); break;
    case OP_EVENTS:         events_run(j, NULL); break;   /* a batch that is not pipelined (h_events) */
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
    if (j->idem_key[0])
        idem_settle(j);
}

static void update_gauges(api *a)
{
    reg_stats st;
    reg_stats_get(a->reg, &st);
    srv_metric_child_set(a->sessions_loaded, (int64_t)st.loaded);
    srv_metric_child_set(a->memory_bytes, (int64_t)st.bytes);
    /* counters only grow: add the difference since the last update (loop thread only) */
    srv_metric_child_add(a->loads, (int64_t)st.loads - srv_metric_child_value(a->loads));
    srv_metric_child_add(a->unloads, (int64_t)st.unloads - srv_metric_child_value(a->unloads));
    srv_metric_child_set(a->memory_budget, (int64_t)st.budget);
    srv_metric_child_add(a->chunk_loads, (int64_t)st.chunk_loads - srv_metric_child_value(a->chunk_loads));
    srv_metric_child_add(a->paged_out, (int64_t)st.paged_out_bytes - srv_metric_child_value(a->paged_out));
    srv_metric_child_add(a->group_commits, (int64_t)st.queue_groups - srv_metric_child_value(a->group_commits));
    srv_metric_child_add(a->group_changes, (int64_t)st.queue_changes - srv_metric_child_value(a->group_changes));
    srv_metric_child_add(a->index_builds, (int64_t)st.index_builds - srv_metric_child_value(a->index_builds));
    srv_metric_child_add(a->index_in_place,
                         (int64_t)st.index_builds_in_place - srv_metric_child_value(a->index_in_place));
    srv_metric_child_add(a->index_failures,
                         (int64_t)st.index_build_failures - srv_metric_child_value(a->index_failures));
    srv_metric_child_set(a->sessions_purging, (int64_t)st.sessions_purging);
    srv_metric_child_add(a->purged_rows, (int64_t)st.purged_rows - srv_metric_child_value(a->purged_rows));
}

static void job_done(void *arg, int status)
{
    job *j = arg;
    if (status == MA_EBUSY)
        srv_respond_error(j->req, 503, "shutting_down", "the server is shutting down");
    else if (j->code) {
        if (strcmp(j->code, "frozen") == 0)
            srv_resp_header(j->req, "Retry-After", "1");
        srv_respond_error(j->req, j->status, j->code, "%s", j->message);
    } else if (!j->out) {
        if (j->replayed)
            srv_resp_header(j->req, "Idempotent-Replayed", "true");
        srv_respond_empty(j->req, j->status);
    }
    else if (j->status == 200 && j->etag[0] && srv_etag_matches(&j->if_none_match, j->etag, true)) {
        /* If-None-Match: weak comparison (RFC 9110 13.1.2); the client's copy is current. */
        srv_resp_header(j->req, "ETag", j->etag);
        srv_respond_empty(j->req, 304);
    } else {
        if (j->etag[0])
            srv_resp_header(j->req, "ETag", j->etag);
        if (j->location[0])
            srv_resp_header(j->req, "Location", j->location);
        if (j->replayed)
            srv_resp_header(j->req, "Idempotent-Replayed", "true");
        srv_respond_raw(j->req, j->status, "application/json", j->out, strlen(j->out));
    }
    update_gauges(j->api);
    cJSON_free(j->out);
    codec_events_clear(&j->ev);
    cJSON_Delete(j->ev_body);
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

/* Creates the job for req with its query parameters, path parameters and conditional headers checked;
 * NULL when the request was answered. */
static job *job_new(srv_request *req, void *ud, op_kind op)
{
    /* Unknown query parameters are refused like unknown body fields. */
    static const char *const none[] = {NULL}, *const list[] = {"limit", "after", NULL}, *const slot[] = {"version", NULL},
                             *const del[] = {"forget", NULL};
    if (srv_req_query_check(req, op == OP_SESSION_LIST ? list : op == OP_SLOT_GET ? slot
                                 : op == OP_SLOT_DELETE ? del : none) < 0)
        return NULL;
    srv_etag_list inm = {0}, im = {0};
    const char *inm_text = srv_req_header(req, "If-None-Match"), *im_text = srv_req_header(req, "If-Match");
    if ((op == OP_SLOT_GET || op == OP_SESSION_GET) && srv_etag_parse(inm_text, &inm) < 0) {
        srv_respond_error(req, 400, "bad_request", "If-None-Match: %.60s is not * or a list of entity tags (\"3\", W/\"3\")",
                          inm_text);
        return NULL;
    }
    if (op == OP_SLOT_PUT && srv_etag_parse(im_text, &im) < 0) {
        srv_respond_error(req, 400, "bad_request", "If-Match: %.60s is not * or a list of entity tags (\"3\")", im_text);
        return NULL;
    }
    /* Idempotency-Key: on the mutations of idem_route; other routes ignore it (reads are safe anyway). */
    const char *idem = idem_route(op) ? srv_req_header(req, "Idempotency-Key") : NULL;
    char why[160];
    if (idem && srv_idem_key_check(idem, why, sizeof why) < 0) {
        srv_respond_error(req, 400, "bad_request", "%s", why);
        return NULL;
    }
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
    j->api = ud;
    j->req = req;
    j->if_match = im;
    j->if_none_match = inm;
    j->if_match_text = op == OP_SLOT_PUT ? im_text : NULL;
    if (idem)
        snprintf(j->idem_key, sizeof j->idem_key, "%s", idem);
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
    const char *key = j->pool_key[0] ? j->pool_key : j->id[0] ? j->id : NULL;
    int rc = srv_pool_submit(j->api->pool, key, mode, job_work, job_done, j);
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
    job *j = job_new(req, ud, OP_SESSION_CREATE);
    if (!j)
        return;
    if (new_id(j->id, sizeof j->id)) {
        srv_respond_error(req, 503, "overloaded", "no randomness available for a session id");
        free(j);
        return;
    }
    /* Creates with one Idempotency-Key run one at a time (the key is looked up, then committed): ordered
     * by a pool key that no session id can equal (ids have no space). */
    if (j->idem_key[0])
        snprintf(j->pool_key, sizeof j->pool_key, "POST /v1/sessions %s", j->idem_key);
    submit(j, SRV_JOB_EXCLUSIVE);
}

static void h_session_list(srv_request *req, void *ud)
{
    uint64_t limit = LIST_DEFAULT_LIMIT;
    if (query_uint(req, "limit", 1, LIST_MAX_LIMIT, &limit) < 0)
        return;
    const char *after = srv_req_query(req, "after");
    if (after && *after && !ma_name_valid(after)) {
        srv_respond_error(req, 400, "bad_name", "?after=%.64s is not a valid session id", after);
        return;
    }
    job *j = job_new(req, ud, OP_SESSION_LIST);
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
        job *j = job_new(req, ud, op);                \
        if (j)                                        \
            submit(j, mode);                          \
    }

SIMPLE_HANDLER(h_session_put, OP_SESSION_PUT, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_session_get, OP_SESSION_GET, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_session_delete, OP_SESSION_DELETE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_query, OP_QUERY, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_slot_list, OP_SLOT_LIST, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_slot_write, OP_SLOT_WRITE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_slot_versions, OP_SLOT_VERSIONS, SRV_JOB_SHARED)
SIMPLE_HANDLER(h_slot_restore, OP_SLOT_RESTORE, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_slot_patch, OP_SLOT_PATCH, SRV_JOB_EXCLUSIVE)
SIMPLE_HANDLER(h_backup, OP_BACKUP, SRV_JOB_SHARED)

SIMPLE_HANDLER(h_slot_put, OP_SLOT_PUT, SRV_JOB_EXCLUSIVE)

/* POST .../events: decoded on any worker before the session's turn, applied in it, answered after its
 * commit (events_decode, events_apply, events_committed). A batch with an Idempotency-Key, or whose body
 * names expect_length (a byte search: the loop thread does not parse bodies), is an ordinary exclusive
 * job instead (job_work): it waits for every held batch of the session, so its key look-up and length
 * check see only durable state, and its key record is committed with its events (docs/SERVER.md). */
static void h_events(srv_request *req, void *ud)
{
    static const char expect[] = "expect_length";
    job *j = job_new(req, ud, OP_EVENTS);
    if (!j)
        return;
    j->ev_binary = srv_req_media_type_is(req, "application/octet-stream");   /* only this route lets it in */
    if (j->idem_key[0] || (!j->ev_binary && j->body && memmem(j->body, j->body_len, expect, sizeof expect - 1))) {
        submit(j, SRV_JOB_EXCLUSIVE);
        return;
    }
    srv_job_spec spec = {.mode = SRV_JOB_PIPELINED, .prepare = events_decode, .pipe = events_apply,
                         .done = job_done, .arg = j};
    if (srv_pool_submit_job(j->api->pool, j->id, &spec)) {
        srv_respond_error(req, 503, "overloaded", "the work queue is full, retry later");
        free(j);
    }
}

static void h_slot_delete(srv_request *req, void *ud)
{
    const char *f = srv_req_query(req, "forget");
    if (f && strcmp(f, "true") != 0 && strcmp(f, "false") != 0) {
        srv_respond_error(req, 400, "bad_request", "?forget=%.40s: expected true or false", f);
        return;
    }
    job *j = job_new(req, ud, OP_SLOT_DELETE);
    if (!j)
        return;
    j->forget = f && strcmp(f, "true") == 0;
    submit(j, SRV_JOB_EXCLUSIVE);
}

static void h_slot_get(srv_request *req, void *ud)
{
    uint64_t version = 0;
    if (query_uint(req, "version", 1, UINT64_MAX, &version) < 0)
        return;
    job *j = job_new(req, ud, OP_SLOT_GET);
    if (!j)
        return;
    j->version = version;
    submit(j, SRV_JOB_SHARED);
}

/* ---- init / shutdown ------------------------------------------------------------------------- */

static void on_commit(void *ctx, double seconds, int rc)
{
    api *a = ctx;
    srv_metric_child_observe(a->commit_seconds, seconds);
    if (rc)
        srv_metric_child_add(a->commit_failures, 1);
}

static int register_metrics(api *a, srv_metrics *m)
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
    srv_metric *gc = srv_metric_counter(m, "memattn_store_group_commits_total",
                                        "Transactions that wrote queued event batches (group commit)", NULL);
    srv_metric *gb = srv_metric_counter(m, "memattn_store_group_commit_batches_total",
                                        "Event batches written by those transactions", NULL);
    srv_metric *ib = srv_metric_counter(m, "memattn_index_builds_total",
                                        "Background index builds swapped in", NULL);
    srv_metric *ip = srv_metric_counter(m, "memattn_index_builds_in_place_total",
                                        "Of those, adopted in place: a second index did not fit --memory", NULL);
    srv_metric *ifl = srv_metric_counter(m, "memattn_index_build_failures_total",
                                        "Background index builds that failed", NULL);
    srv_metric *sp = srv_metric_gauge(m, "memattn_sessions_purging",
                                      "Deleted sessions whose rows are still being purged in the background", NULL);
    srv_metric *pr = srv_metric_counter(m, "memattn_purged_rows_total",
                                        "Rows of deleted sessions purged from the store (secure_delete)", NULL);
    if (!loaded || !mem || !ev || !rt || !cs || !cf || !ld || !ul || !mb || !cl || !po || !gc || !gb || !ib ||
        !ip || !ifl || !sp || !pr)
        return MA_ENOMEM;
    a->sessions_purging = srv_metric_child_get(sp, NULL);
    a->purged_rows = srv_metric_child_get(pr, NULL);
    a->group_commits = srv_metric_child_get(gc, NULL);
    a->group_changes = srv_metric_child_get(gb, NULL);
    a->index_builds = srv_metric_child_get(ib, NULL);
    a->index_in_place = srv_metric_child_get(ip, NULL);
    a->index_failures = srv_metric_child_get(ifl, NULL);
    a->memory_budget = srv_metric_child_get(mb, NULL);
    a->chunk_loads = srv_metric_child_get(cl, NULL);
    a->paged_out = srv_metric_child_get(po, NULL);
    a->sessions_loaded = srv_metric_child_get(loaded, NULL);
    a->memory_bytes = srv_metric_child_get(mem, NULL);
    a->events_ingested = srv_metric_child_get(ev, NULL);
    a->commit_seconds = srv_metric_child_get(cs, NULL);
    a->commit_failures = srv_metric_child_get(cf, NULL);
    a->loads = srv_metric_child_get(ld, NULL);
    a->unloads = srv_metric_child_get(ul, NULL);
    for (int r = MA_ROUTE_SLOT; r <= MA_ROUTE_WINDOW; r++)
        a->routes[r] = srv_metric_child_get(rt, ma_route_name((ma_route)r));
    return 0;
}

int api_init(const api_deps *deps, api **out, char *err, size_t errlen)
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
    api *a;
    int rc;

    *out = NULL;
    if (!deps || !deps->srv || !deps->reg) {
        snprintf(err, errlen, "the API needs a server and a session registry");
        return MA_EINVAL;
    }
    if (!(a = calloc(1, sizeof *a))) {
        snprintf(err, errlen, "out of memory");
        return MA_ENOMEM;
    }
    a->reg = deps->reg;
    a->pool = srv_server_pool(deps->srv);
    if ((rc = register_metrics(a, srv_server_metrics(deps->srv))) != 0) {
        snprintf(err, errlen, "cannot register the API's metrics");
        goto fail;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if ((rc = srv_route_add(srv_server_router(deps->srv), routes[i].method, routes[i].tmpl, routes[i].h, a)) != 0) {
            snprintf(err, errlen, "cannot register %s %s: %s", routes[i].method, routes[i].tmpl, ma_strerror(rc));
            goto fail;
        }
    reg_observe_commits(a->reg, on_commit, a);
    *out = a;
    return 0;
fail:
    free(a);
    return rc;
}

void api_shutdown(api *a)
{
    if (!a)
        return;
    reg_observe_commits(a->reg, NULL, NULL);
    free(a);
}
