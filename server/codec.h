/*
 * server/codec.h — the REST bodies: JSON <-> core and registry structs for the API of docs/API.md.
 *
 * Design: the codec is pure translation and validation, and everything of the API that is JSON: parsing
 * a request body (codec_parse_body), decoding and validating it, building every answer, and the one table
 * from MA_E* codes to HTTP statuses and API.md error codes (codec_status_of). server/api.c only
 * orchestrates (decode -> registry/core -> encode). Decoders take a parsed cJSON tree and either
 * fill a core struct completely or fail with a codec_error that carries API.md's error code and a
 * message naming the element and field, what was wrong and what was expected, e.g.
 *   dim_mismatch  "events[3].k: expected 64 numbers (heads*dim), got 63".
 * Two event-batch decoders read the raw body instead, for ingest speed: codec_events_decode_simple takes
 * only the common all-base64 body (anything else, errors included, goes to the general path, so it
 * never changes what is accepted or how an error is worded), and codec_events_decode_binary reads the
 * application/octet-stream batch, its floats in place.
 * A batch (events, queries) is decoded whole before anything is handed to the core, so a request with one
 * bad element changes nothing. Vectors arrive as JSON arrays of numbers, as base64 of little-endian
 * float32 (`*_b64`), or as `text` (embedded by the caller-supplied embedder, the same vector per head);
 * every number must be a finite float32 (cJSON turns overflow such as 1e999 into inf: rejected, like any
 * value beyond FLT_MAX). Unknown and duplicate fields are rejected (they are typos, not extensions), as
 * are values of the wrong JSON type.
 *
 * Encoders build cJSON trees for answers. Float vectors are emitted with 9 significant digits, which
 * round-trips float32 exactly, as one raw array (faster and shorter than cJSON's per-number printing).
 * Payloads are stored and returned as JSON text verbatim (cJSON raw items), never re-parsed.
 *
 * Not here: HTTP framing, sessions, the store, and the config text stored with a session (that is the
 * registry's, registry/params_text.h). The codec allocates with malloc and does no I/O; all functions are
 * thread-safe (no shared state).
 */
#ifndef SRV_CODEC_H
#define SRV_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "core/params.h"
#include "core/session.h"
#include "registry/registry.h"

typedef struct {
    const char *code;     /* API.md error code (static string): bad_json, bad_request, dim_mismatch,
                             non_finite, bad_name, bad_config */
    char message[384];    /* what was wrong, where, what was expected */
} codec_error;

/* Embeds text (len bytes, not NUL-terminated necessarily) into dim floats. Must be thread-safe. */
typedef void (*codec_embed_fn)(const char *text, size_t len, int dim, float *out);

/* What vectors must look like for one session. */
typedef struct {
    int heads, dim, value_dim;
    codec_embed_fn embed;  /* for `text` (and string payloads standing in for a value); NULL: rejected */
} codec_shape;

void codec_shape_from_params(codec_shape *sh, const ma_params *p, codec_embed_fn embed);

/* ---- request bodies and errors ----------------------------------------------------------------- */

/* Parses a request body (len bytes) as one JSON document. 0 with *out the document (cJSON_Delete it), or
 * 0 with *out NULL when the body is empty or only whitespace; MA_EINVAL with bad_json and the byte offset
 * of the error (or of data after the value); MA_EINVAL with bad_request naming the string's path when
 * a string holds a NUL, invalid UTF-8 or a lone surrogate (server/jsontext.h). Non-finite numbers
 * (1e999 parses as inf) are the decoders' to reject. */
int codec_parse_body(const char *body, size_t len, cJSON **out, codec_error *err);

/* The one table of the API's failures: the HTTP status of an MA_E* code from the core or the registry,
 * with its API.md code in *code. MA_ENOTFOUND is 404 with the code `missing` names ("no_session",
 * "no_slot"; NULL: "not_found"); MA_ENOMEM is 503 overloaded; MA_EEMPTY is 404 empty_context (nothing to attend over); MA_ETOOBIG is 422
 * session_too_large (a session's fixed footprint exceeds --memory); MA_EIO, MA_ECORRUPT, MA_EBUSY and any
 * unknown code are 503 storage_error (this implementation's addition to API.md's 503 row). */
int codec_status_of(int rc, const char *missing, const char **code);

/* ---- base64 (RFC 4648, standard alphabet, padding required) ------------------------------------ */

/* Decodes src (len chars) into dst; *out_len gets the byte count. dst must hold (len / 4) * 3 bytes.
 * Returns 0, or MA_EINVAL for a length not a multiple of 4, a foreign character or misplaced padding. */
int codec_b64_decode(const char *src, size_t len, unsigned char *dst, size_t *out_len);

/* Encodes n bytes into dst (NUL-terminated); dst must hold 4 * ((n + 2) / 3) + 1 chars. Returns the
 * length without the NUL. */
size_t codec_b64_encode(const unsigned char *src, size_t n, char *dst);

/* ---- session config ---------------------------------------------------------------------------- */

/* Fills *out from a config object (NULL or absent fields: defaults; value_dim defaults to dim) and
 * validates it with ma_params_validate. Errors: bad_config naming the field ("vla.period: expected an
 * integer, got 2.5"; "heads: 0 is out of range, expected an integer 1..64"; "colour: unknown field"). */
int codec_params_from_json(const cJSON *obj, ma_params *out, codec_error *err);

/* The full config (every field, defaults included) as a new object; NULL on allocation failure. */
cJSON *codec_params_to_json(const ma_params *p);

/* ---- sessions (answers; NULL on allocation failure) -------------------------------------------- */

/* {"id", "config"}: the answer to a create and to an idempotent PUT. */
cJSON *codec_session_to_json(const char *id, const ma_params *p);

/* {"sessions":[{"id","length","slots","created_at","updated_at"},...], "next"?}; next (the id to pass as
 * ?after= for the following page) is present only when not NULL. */
cJSON *codec_session_list_to_json(const reg_listing *l, size_t n, const char *next);

/* {"id","config","length","chunks","slots_resident","bytes","stored_bytes","backbone":{"state_norm",
 * "penalty_norm"},"created_at","updated_at"}: GET /v1/sessions/{id}. */
cJSON *codec_session_summary_to_json(const char *id, const reg_summary *sm);

/* {"path"}: the answer to a backup. */
cJSON *codec_backup_to_json(const char *path);

/* {"id","length","bytes"}: the answer to an import (the events and the snapshot bytes it held). */
cJSON *codec_import_to_json(const char *id, uint64_t length, uint64_t bytes);

/* {"id","frozen"}: the answer to freeze, unfreeze and GET .../freeze. */
cJSON *codec_frozen_to_json(const char *id, bool frozen);

/* {"error":{"code":"length_mismatch","message","length"}}: a batch's expect_length refused (409), with the
 * session's length as a field so a writer can resume after it. NULL on allocation failure. */
cJSON *codec_length_mismatch_to_json(const char *message, uint64_t length);

/* Decodes a backup body: exactly {"path": "/absolute/file.db"}. *path points into body. */
int codec_backup_decode(const cJSON *body, const char **path, codec_error *err);

/* ---- vectors --------------------------------------------------------------------------------- */

/* Which of the three spellings of one vector an object used. */
typedef struct {
    const char *arr;   /* "k": JSON numbers */
    const char *b64;   /* "k_b64" */
    const char *text;  /* "text", or NULL where text is not accepted */
} codec_vec_fields;

/* Decodes the vector of obj named by f into out (heads * per_head floats). `where` prefixes messages
 * ("events[3]"); what_len names the expected count ("heads*dim"). Returns 1 and fills out when present,
 * 0 when none of the fields is present (out untouched), negative MA_EINVAL with *err on bad input. */
int codec_vector(const cJSON *obj, const codec_vec_fields *f, const codec_shape *sh, int per_head,
                 const char *what_len, const char *where, float *out, codec_error *err);

/* ---- event batches --------------------------------------------------------------------------- */

typedef struct {
    size_t n;
    ma_event *ev;        /* n events pointing into the buffers below */
    float *k, *v;        /* n*H*d and n*H*d_v */
    char **payloads;     /* n JSON texts or NULLs (owned) */
    char **slots;        /* n slot names or NULLs (owned) */
    double *importance;  /* n: an event's "importance", or MA_IMPORTANCE_NONE when absent */
    bool has_expect_length;   /* the body's "expect_length": apply only if the session has that many events */
    uint64_t expect_length;
    bool borrowed;       /* k and v point into the request body (a binary batch): not freed by clear */
} codec_events;

/* Decodes {"events":[E,...], "expect_length"?: n}; E = {"k"|"k_b64"|"text", "v"|"v_b64", "payload"?, "slot"?,
 * "protect"?, "importance"?} (importance, a number in [0, 1], needs slot, like protect); n an integer
 * 0..2^53 (docs/API.md, "Safe retries").
 * A missing v is the embedding of the payload when the payload is a JSON string (as for slot writes);
 * otherwise 400. An empty batch is accepted (n = 0). On error *out is left empty. */
int codec_events_decode(const cJSON *body, const codec_shape *sh, size_t max_events, codec_events *out,
                        codec_error *err);
void codec_events_clear(codec_events *e);

/* The fast path for the common body {"events":[{"k_b64":"...","v_b64":"..."},...]} (either order of the
 * two fields, any JSON whitespace, base64 strings without escapes), decoded straight from the raw body
 * (len bytes) without a JSON tree: 1 with *out filled exactly as codec_parse_body + codec_events_decode
 * would fill it; 0 with *out empty for any other body, a bad value or more than max_events events — the
 * caller then takes the general path, which accepts or words the problem. Such a body holds only ASCII,
 * so it needs none of codec_parse_body's string checks. */
int codec_events_decode_simple(const char *body, size_t len, const codec_shape *sh, size_t max_events,
                               codec_events *out);

/* The binary spelling of an event batch (Content-Type: application/octet-stream; docs/API.md, "Binary
 * event batches"): a 20-byte header of the magic "MAEV" and four little-endian uint32 — n, heads, dim,
 * value_dim — then the n*heads*dim keys and the n*heads*value_dim values as little-endian float32, event
 * by event (head by head within an event). No payloads, slots, texts or expect_length. */
#define CODEC_BIN_MAGIC "MAEV"
#define CODEC_BIN_HEADER 20

/* Decodes a binary batch of len bytes for shape sh (text embedding plays no part). Checks, in order: the
 * header is there, the magic, n <= max_events, heads/dim/value_dim equal the session's (dim_mismatch),
 * the length is exactly the header plus the floats, every float is finite (non_finite); the first
 * problem is reported (bad_request unless named) and *out is left empty. On a little-endian host k and v
 * point into body (out->borrowed): body must stay unchanged and alive until codec_events_clear. */
int codec_events_decode_binary(const char *body, size_t len, const codec_shape *sh, size_t max_events,
                               codec_events *out, codec_error *err);

/* {"length","appended","writes":[...],"void_writes":[...],"evicted":[...]}; NULL on allocation failure. */
cJSON *codec_ingest_report_to_json(const ma_ingest_report *r);

/* ---- queries --------------------------------------------------------------------------------- */

typedef struct {
    size_t n;
    ma_query *q;         /* n queries pointing into the buffers below */
    float *vecs;         /* n*H*d (rows of queries without a vector are unused) */
    char **slots;        /* n names or NULLs (owned) */
} codec_queries;

/* Decodes {"queries":[Q,...]}; Q = {"q"|"q_b64"|"text"?, "slot"?, "version"?, "route"?, "topk"?,
 * "include_superseded"?}.
 * A query needs a vector or a slot name; `version` needs `slot`. Errors name queries[i].field. */
int codec_queries_decode(const cJSON *body, const codec_shape *sh, size_t max_queries, codec_queries *out,
                         codec_error *err);
void codec_queries_clear(codec_queries *q);

/* One result object R of API.md; value_len = H*d_v. "importance" (of a slot answer, a contribution, a
 * slot listing or read, a version) is present only when the version's writer gave one, so answers about
 * slots written without it are what they always were. A weighted (topk) read adds "contributions":
 * [{"slot","version","score","weight","importance"?}, ...]. NULL on allocation failure. */
cJSON *codec_answer_to_json(const ma_answer *a, size_t value_len);

/* The answer to a query batch, built one result at a time (a result's vector is only valid until the
 * next query runs): codec_results_new gives {"results":[]} (NULL on allocation failure), and
 * codec_results_add appends R of a: 0 or MA_ENOMEM. */
cJSON *codec_results_new(void);
int codec_results_add(cJSON *results, const ma_answer *a, size_t value_len);
/* Appends {"error":{"code","message","status"}} in place of the result of a query that could not be
 * answered (the batch still answers 200; status is what the query alone would have been). 0 or
 * MA_ENOMEM. */
int codec_results_add_error(cJSON *results, int status, const char *code, const char *message);

/* ---- slots ------------------------------------------------------------------------------------ */

typedef struct {
    char name[MA_MAX_NAME + 1];
    float *k, *v;          /* malloc'd, or NULL when absent (core then embeds the name / payload) */
    char *payload;         /* JSON text or NULL (owned) */
    char *text;            /* v absent: the string payload's text, which core embeds (owned), else NULL */
    bool protect;
    uint64_t version;      /* explicit version (overwrite only), 0 if absent */
    bool has_importance;   /* "importance" given: a number in [0, 1] */
    double importance;
} codec_slot_body;

/* Decodes a write/overwrite body. path_name: the {name} of the URL for PUT (the body's "name", if any,
 * must equal it), NULL for POST (the body's "name" is required). allow_version: PUT accepts "version".
 * A body without v and without a string payload is 400 (nothing to take the value from). */
int codec_slot_body_decode(const cJSON *body, const char *path_name, bool allow_version,
                           const codec_shape *sh, codec_slot_body *out, codec_error *err);
void codec_slot_body_clear(codec_slot_body *b);

/* Decodes a restore body: exactly {"version": n}, n >= 1. */
int codec_restore_decode(const cJSON *body, uint64_t *version, codec_error *err);

/* Decodes a protect/unprotect (PATCH) body: exactly {"protected": true|false}. */
int codec_protect_decode(const cJSON *body, bool *protect, codec_error *err);

/* Slot listings and reads; times are ms since the epoch, emitted as RFC 3339 UTC strings. NULL on
 * allocation failure. */
cJSON *codec_slot_info_to_json(const ma_slot_info *si);
cJSON *codec_slot_value_to_json(const ma_slot_value *sv, size_t key_len, size_t value_len);
cJSON *codec_version_info_to_json(const ma_version_info *vi);

/* {"slots":[I,...]} of n slot infos; {"versions":[V,...]} of n versions. */
cJSON *codec_slot_list_to_json(const ma_slot_info *si, size_t n);
cJSON *codec_versions_to_json(const ma_version_info *vi, size_t n);

/* {"name","version","evicted":[...]}: the answer to a slot write, overwrite or restore; evicted lists the
 * slot names a capacity eviction removed (the same type as in the events answer; [] when none). */
cJSON *codec_slot_result_to_json(const char *name, const ma_slot_result *res);

/* {"name","version","protected"}: the answer to a protect/unprotect. */
cJSON *codec_slot_protect_to_json(const ma_slot_info *si);

/* ---- small helpers shared by the handlers ----------------------------------------------------- */

/* "2026-11-28T19:04:05.123Z" into buf (>= 32 chars). */
void codec_time_format(int64_t ms, char *buf, size_t len);

/* A float vector as a raw JSON array with 9 significant digits; NULL on allocation failure. */
cJSON *codec_floats_to_json(const float *x, size_t n);

/* Validates a name field: 0, or MA_EINVAL with bad_name "<where>: \"...\" is not a valid name, ...". */
int codec_check_name(const char *name, const char *where, codec_error *err);

/* Reads an optional non-negative integer member: 1 found (*out set), 0 absent, MA_EINVAL bad_request
 * naming "<where>.<field>" when not an integer in [lo, hi]. */
int codec_get_uint(const cJSON *obj, const char *field, uint64_t lo, uint64_t hi, const char *where,
                   uint64_t *out, codec_error *err);

/* Formats *err (code and message); returns MA_EINVAL so callers can `return codec_fail(...)`. */
int codec_fail(codec_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
