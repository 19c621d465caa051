/*
 * clients/c/memattn_client.h — a C client for memattnd's REST API (docs/API.md), on libcurl and cJSON.
 *
 * One mac_client is one keep-alive connection to one daemon (a libcurl easy handle): use it from one
 * thread at a time. Every function returns MAC_OK (0) or a negative MAC_E* code; the details of the
 * last failure (HTTP status, the API's error code, its message) are in mac_last_error(c). Strings
 * returned to the caller are malloc'ed and freed by the matching mac_*_free function.
 *
 * Vectors are float arrays of the length the session expects (heads*dim for k and q, heads*value_dim
 * for v), sent as base64 of little-endian float32 (k_b64 / v_b64 / q_b64). Payloads are JSON text
 * (`payload_json`, e.g. "{\"n\":1}") or a plain string (`payload_text`, sent as a JSON string).
 *
 * Mutations carry an Idempotency-Key header (random, the same on every retry of one call). A call is
 * retried on connection errors and 503 answers only, at most `retries` times, with exponential
 * backoff from `backoff_ms` (capped at 2 s). mac_append() splits the events into batches whose JSON
 * body fits the daemon's body limit (`max_body`, else GET /v1/info when the daemon has it, else
 * 1 MiB); batches are applied in order, each whole or not at all. mac_append_f32() sends events
 * given as two float arrays (keys, values) as binary batches (`application/octet-stream`, docs/API.md
 * "Binary event batches") when the daemon takes them, else as JSON; same batching, retries and keys.
 *
 * In a query batch, a per-query error (`{"error":{...}}` in place of a result) is reported in that
 * result (ok = 0, error filled), not as a failure of the call.
 */
#ifndef MEMATTN_CLIENT_H
#define MEMATTN_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#define MAC_OK        0
#define MAC_EHTTP    -1   /* the daemon answered an error status: see mac_last_error() */
#define MAC_ECONN    -2   /* no answer: connection refused, reset, timed out (after the retries) */
#define MAC_ENOMEM   -3
#define MAC_EINVAL   -4   /* a bad argument (NULL, invalid payload JSON, name too long) */
#define MAC_ETOOBIG  -5   /* one event is larger than the body limit on its own */
#define MAC_EPROTO   -6   /* the answer is not what the API promises (not JSON, missing field) */

#define MAC_NAME_MAX  128 /* session ids and slot names: 1-128 characters of [A-Za-z0-9._:-] */
#define MAC_HEADS_MAX 64

typedef struct mac_client mac_client;

/* The last failure of a client. `code` is the API's error code ("no_session", "precondition_failed",
 * ...) for MAC_EHTTP, else "connection", "invalid", "too_large", "protocol" or "no_memory". */
typedef struct {
    int status;                 /* HTTP status; 0 when there was no answer */
    char code[64];
    char message[512];
} mac_error;

typedef struct {
    const char *base_url;       /* "http://HOST:PORT"; NULL: http://127.0.0.1:8080 */
    const char *token;          /* the daemon's --token, sent as Bearer; NULL: none */
    size_t max_body;            /* request body limit; 0: ask GET /v1/info, else 1 MiB */
    int retries;                /* retries after a connection error or a 503 (default 3) */
    unsigned backoff_ms;        /* first retry delay, doubled each retry (default 50) */
    long timeout_ms;            /* per request (default 30000) */
} mac_options;

/* Fills `o` with the defaults. */
void mac_options_init(mac_options *o);

/* Creates a client (no request is sent). `o` NULL: the defaults. MAC_OK, MAC_ENOMEM, MAC_EINVAL. */
int mac_open(const mac_options *o, mac_client **out);

/* Closes the connection and frees the client. NULL is a no-op. */
void mac_close(mac_client *c);

/* The last failure (status 0 and empty code after a success). Valid until the next call on c. */
const mac_error *mac_last_error(const mac_client *c);

/* HTTP requests sent so far, retries included. */
uint64_t mac_requests_sent(const mac_client *c);

/* The body limit used for batching (asks GET /v1/info the first time when max_body was 0). */
size_t mac_max_body(mac_client *c);

/* ---- sessions ---- */

/* A session config; 0 / NULL fields take the daemon's defaults. `json`, when non-NULL, is the whole
 * config as JSON text and the other fields are ignored. */
typedef struct {
    int heads, dim, value_dim, slots, chunk, topk, window;
    const char *backbone;       /* "vla", "linear", "delta", "none" */
    const char *selector;       /* "index", "chunks" */
    const char *json;
} mac_config;

typedef struct {
    char id[MAC_NAME_MAX + 1];
    int heads, dim, value_dim, slots, chunk;
    uint64_t length, chunks, slots_resident, bytes, stored_bytes;
    int nheads;                             /* entries in the norms (0 when not reported) */
    double state_norm[MAC_HEADS_MAX], penalty_norm[MAC_HEADS_MAX];
} mac_session;

/* Creates a session: PUT /v1/sessions/{id} (idempotent with the same config; 409 `exists` with
 * another), or POST /v1/sessions with a server-chosen id when `id` is NULL. `cfg` NULL: defaults.
 * `out` (may be NULL) gets the id and the config. */
int mac_session_create(mac_client *c, const char *id, const mac_config *cfg, mac_session *out);

/* GET /v1/sessions/{id}: config, sizes and backbone norms. */
int mac_session_get(mac_client *c, const char *id, mac_session *out);

/* Calls fn for every session (id order, following pages); fn returns non-zero to stop early. The
 * mac_session passed has id, length and slots_resident set. */
int mac_session_list(mac_client *c, int (*fn)(const mac_session *s, void *ud), void *ud);

/* DELETE /v1/sessions/{id}. */
int mac_session_delete(mac_client *c, const char *id);

/* ---- events ---- */

typedef struct {
    const float *k; size_t nk;  /* key (heads*dim), or NULL with `text` */
    const char *text;           /* embedded by the daemon when k is NULL */
    const float *v; size_t nv;  /* value (heads*value_dim), or NULL when the payload is a string */
    const char *payload_json;   /* payload as JSON text, or NULL */
    const char *payload_text;   /* payload as a plain string (used when payload_json is NULL) */
    const char *slot;           /* also write this slot, or NULL */
    int protect;                /* with slot: protect it after the write */
} mac_event;

typedef struct {
    uint64_t length;            /* events in the session after the last batch */
    size_t appended;            /* events applied (also set when a later batch failed) */
    size_t writes, void_writes, evicted;   /* counts over all batches */
    size_t batches;             /* requests that succeeded */
    int binary;                 /* mac_append_f32: 1 when the batches were sent binary, 0 as JSON */
} mac_append_result;

/* Appends n events in as many POST .../events batches as the body limit needs. On failure `out`
 * says how many events earlier batches applied. MAC_ETOOBIG: an event alone exceeds the limit
 * (checked before it is sent). */
int mac_append(mac_client *c, const char *session, const mac_event *ev, size_t n, mac_append_result *out);

/* A batch of events as float arrays, the fast way in: event i's key is k[i*heads*dim ...] and its
 * value v[i*heads*value_dim ...] (head-major within an event, as the `k` / `v` of mac_event). Such
 * events have no payload, slot or text (use mac_append for those). */
typedef struct {
    const float *k;             /* n*heads*dim floats */
    const float *v;             /* n*heads*value_dim floats */
    size_t n;
    int heads, dim, value_dim;  /* the session's shape; heads 0: read by GET /v1/sessions/{id};
                                 * value_dim 0: dim (the daemon's default) */
} mac_batch;

/* How mac_append_f32 sends a batch. */
#define MAC_SEND_AUTO    0      /* binary when GET /v1/info reports batch.events_binary, else JSON */
#define MAC_SEND_BINARY  1      /* binary bodies (a daemon without them answers 415) */
#define MAC_SEND_JSON    2      /* {"events":[{"k_b64","v_b64"},...]} bodies */

/* Appends b->n events in as many POST .../events requests as the body limit (and the daemon's
 * 65,536-event cap) needs, sent as `how` says. A binary body is "MAEV", n, heads, dim, value_dim
 * (little-endian uint32) then the n events' keys then their values (little-endian float32); the
 * header carries the shape given here, so a shape that is not the session's is the daemon's 400
 * `dim_mismatch`. Each request carries its own Idempotency-Key, kept with its body on every retry
 * (connection errors, 503). out->binary says which encoding was used; on failure out->appended
 * says how many events earlier requests applied. MAC_EINVAL: NULL arrays, a shape below 1 or over
 * the header's range, an unknown `how` (nothing sent); MAC_ETOOBIG: one event alone exceeds the body
 * limit. n = 0 sends nothing. */
int mac_append_f32(mac_client *c, const char *session, const mac_batch *b, int how, mac_append_result *out);

/* 1 when the daemon takes binary event batches (GET /v1/info reports batch.events_binary; asked
 * once per client, together with the body limit), 0 when not or when it has no GET /v1/info. */
int mac_events_binary(mac_client *c);

/* ---- queries ---- */

typedef struct {
    const float *q; size_t nq;  /* query vector (heads*dim), or NULL */
    const char *text;           /* or text to embed */
    const char *slot;           /* or a slot name */
    uint64_t version;           /* with slot: that version (0: current) */
    const char *route;          /* NULL: the router decides; "slot", "sparse", "full", "window", "state" */
    int topk;                   /* 0: the session's */
} mac_query;

typedef struct {
    int ok;                     /* 1: answered; 0: this query failed (see error) */
    mac_error error;
    char route[16];
    double score;
    char slot[MAC_NAME_MAX + 1];/* slot route: the slot and its version */
    uint64_t version;
    int64_t event;              /* archive routes: the pointer event; -1 when none */
    uint64_t *chunks; size_t nchunks;
    char *payload_json;         /* NULL when none */
    float *v; size_t nv;        /* the output vector */
} mac_result;

/* POST .../query with n queries; out[0..n) get the answers in order (free with mac_results_free,
 * also after a failure). */
int mac_query_run(mac_client *c, const char *session, const mac_query *q, size_t n, mac_result *out);
void mac_results_free(mac_result *r, size_t n);

/* ---- slots ---- */

typedef struct {
    const float *k; size_t nk;  /* key, or NULL: `text`'s embedding, else the name's */
    const char *text;
    const float *v; size_t nv;  /* value, or NULL: the string payload's embedding */
    const char *payload_json;
    const char *payload_text;
    int protect;                /* protect after the write */
    uint64_t version;           /* mac_slot_put: explicit new version (0: next) */
} mac_slot_value;

typedef struct {
    char name[MAC_NAME_MAX + 1];
    uint64_t version;
    int is_protected;
    int64_t event;              /* the event that wrote it; -1 when written by a slot verb */
    char *payload_json;         /* NULL when none */
    float *v; size_t nv;
    char etag[32];              /* the ETag header, e.g. "\"3\"" */
} mac_slot;

typedef struct {
    uint64_t version;
    int tombstone;              /* an eviction marker */
    int64_t event;
} mac_version;

/* POST .../slots: a new slot (409 `exists` when resident). *version (may be NULL) gets 1. */
int mac_slot_create(mac_client *c, const char *session, const char *name, const mac_slot_value *w,
                    uint64_t *version);

/* PUT .../slots/{name}: write or overwrite. if_match non-zero: only when the current version is
 * if_match (else MAC_EHTTP, 412 `precondition_failed`). *version gets the new version. */
int mac_slot_put(mac_client *c, const char *session, const char *name, const mac_slot_value *w,
                 uint64_t if_match, uint64_t *version);

/* GET .../slots/{name}[?version=n] (version 0: the current one). Free with mac_slot_free. */
int mac_slot_get(mac_client *c, const char *session, const char *name, uint64_t version, mac_slot *out);
void mac_slot_free(mac_slot *s);

/* PATCH .../slots/{name} {"protected": p}. if_match non-zero is sent as If-Match. */
int mac_slot_protect(mac_client *c, const char *session, const char *name, int p, uint64_t if_match);

/* DELETE .../slots/{name}: evict (history stays). if_match non-zero is sent as If-Match. */
int mac_slot_evict(mac_client *c, const char *session, const char *name, uint64_t if_match);

/* POST .../slots/{name}/restore {"version": version}; *new_version gets the new version. */
int mac_slot_restore(mac_client *c, const char *session, const char *name, uint64_t version,
                     uint64_t if_match, uint64_t *new_version);

/* GET .../slots/{name}/versions, oldest first; *out is malloc'ed (free()), *n its length. */
int mac_slot_versions(mac_client *c, const char *session, const char *name, mac_version **out, size_t *n);

/* ---- helpers ---- */

/* Base64 of n floats as little-endian float32 into a malloc'ed NUL-terminated string; NULL on ENOMEM. */
char *mac_b64_f32(const float *x, size_t n);

/* Decodes base64 of little-endian float32; *out malloc'ed. MAC_OK, MAC_EINVAL, MAC_ENOMEM. */
int mac_unb64_f32(const char *s, float **out, size_t *n);

#endif
