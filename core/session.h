/*
 * core/session.h — one session: backbone + archive + slots + router, the hybrid read (docs/SLOTS.md,
 * docs/ARCHIVE.md).
 *
 * This is the object the server's worker threads call. It composes core/backbone.h (fixed-state memory),
 * core/archive.h (every event, sparse/full/window reads), core/slots.h (the editable, versioned slot
 * table) and core/featurize.h (text -> vector), and implements the write controller (an event carrying a
 * slot name writes that slot) and the router (memory first, hard switch).
 *
 * Contract:
 *  - Every mutation is all-or-nothing: it either applies whole and returns 0, or returns an error and the
 *    session is unchanged (checks that can fail are done before anything is applied).
 *  - Inputs are validated by the caller (dimensions, finiteness, names); core trusts lengths.
 *  - Times are milliseconds since the Unix epoch, passed in by the caller (deterministic tests).
 *  - Threads: no internal lock. Queries may run in parallel with each other (usage counters are atomic);
 *    mutations must be serialised by the caller and never run alongside a query of the same session.
 *  - Strings returned inside result structs are owned by the struct and freed by its *_clear function.
 *  - No JSON parsing: payloads are JSON text, stored and returned verbatim (the server encodes them).
 */
#ifndef MA_SESSION_H
#define MA_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/archive.h"
#include "core/backbone.h"
#include "core/params.h"
#include "core/slots.h"    /* the slot value types: ma_slot_info, ma_slot_value, ... */

typedef struct ma_session ma_session;

typedef enum {
    MA_ROUTE_AUTO = 0, MA_ROUTE_SLOT, MA_ROUTE_SPARSE, MA_ROUTE_FULL, MA_ROUTE_STATE, MA_ROUTE_WINDOW
} ma_route;

const char *ma_route_name(ma_route r);                 /* "auto", "slot", ...; NULL if unknown */
int ma_route_parse(const char *name, ma_route *out);   /* 0 or MA_EINVAL */

/* ---- events ---------------------------------------------------------------------------------- */

typedef struct {
    const float *k;        /* H·d */
    const float *v;        /* H·d_v */
    const char *payload;   /* JSON text (any JSON value) or NULL */
    const char *slot;      /* write signal: slot name or NULL */
    bool protect;          /* with slot: protect the slot after the write */
} ma_event;

typedef struct { char slot[MA_MAX_NAME + 1]; uint64_t version; uint64_t event; } ma_write_rec;
typedef struct { char slot[MA_MAX_NAME + 1]; uint64_t event; const char *reason; } ma_void_rec;
typedef struct { char slot[MA_MAX_NAME + 1]; } ma_name_rec;

typedef struct {
    uint64_t length;           /* archive length after the batch */
    size_t appended;
    ma_write_rec *writes;  size_t n_writes;
    ma_void_rec *voids;    size_t n_voids;      /* reason "protected" */
    ma_name_rec *evicted;  size_t n_evicted;    /* capacity evictions caused by the batch */
} ma_ingest_report;

void ma_ingest_report_clear(ma_ingest_report *r);

/* ---- slots ----------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    const float *k;            /* H·d; NULL: the name's text embedding (core/featurize.h) */
    const float *v;            /* H·d_v; NULL: the embedding of text */
    const char *text;          /* with v NULL: the text whose embedding becomes the value (the caller
                                  decodes it from a JSON string payload; core parses no JSON) */
    const char *payload;       /* JSON text or NULL, stored as given */
    bool protect;              /* protect after writing */
    bool has_importance;       /* importance given (else MA_IMPORTANCE_DEFAULT) */
    double importance;         /* in [0, 1], stored with the version */
} ma_slot_input;

/* write: create a slot. MA_EEXISTS if resident; MA_EFULL if at capacity and all resident are protected;
 * MA_EINVAL if v and text are both NULL. A name evicted earlier continues its
 * version numbers (versions are never reused). */
int ma_session_slot_write(ma_session *s, const ma_slot_input *in, int64_t now, ma_slot_result *res);

/* overwrite: new version (or create, res->created). With the session's blend policy, overwriting a
 * resident slot stores alpha·v + (1−alpha)·(its current value) (ma_slots_put). explicit_version > 0 must be greater than the current
 * version (else MA_ECONFLICT) and becomes the new version; if_match > 0 must equal the current version
 * (else MA_EPRECOND). MA_EPROTECTED if protected. */
int ma_session_slot_overwrite(ma_session *s, const ma_slot_input *in, uint64_t explicit_version,
                              uint64_t if_match, int64_t now, ma_slot_result *res);

/* read: version 0 = current (resident only, else MA_ENOTFOUND); version n > 0: any version in the history,
 * resident or not (MA_ENOTFOUND if the name has no history, MA_ENOVERSION if no such version or a
 * tombstone). */
int ma_session_slot_read(const ma_session *s, const char *name, uint64_t version, ma_slot_value *out);

/* history of a name (resident or evicted), oldest first; *out malloc'd. MA_ENOTFOUND if never written. */
int ma_session_slot_history(const ma_session *s, const char *name, ma_version_info **out, size_t *n);

/* restore: a new version whose value equals version `version`. MA_ENOTFOUND, MA_ENOVERSION, MA_EPROTECTED;
 * restoring an evicted slot makes it resident again (may cause a capacity eviction, reported in res). */
int ma_session_slot_restore(ma_session *s, const char *name, uint64_t version, int64_t now,
                            ma_slot_result *res);

/* protect / unprotect a resident slot. MA_ENOTFOUND if not resident. */
int ma_session_slot_protect(ma_session *s, const char *name, bool protect, int64_t now);

/* evict a resident slot: records a tombstone version. MA_ENOTFOUND, MA_EPROTECTED. */
int ma_session_slot_evict(ma_session *s, const char *name, int64_t now);

/* forget: every version of the name loses its key, value and payload (ma_slots_forget) and every event
 * that was a version's source is masked from every archive read, for good. *events (malloc'd, *n
 * entries, ascending by version) gets those events, whose stored payloads the caller erases.
 * MA_ENOTFOUND (no history), MA_EPROTECTED, MA_ENOMEM (nothing changed). */
int ma_session_slot_forget(ma_session *s, const char *name, uint64_t **events, size_t *n);

/* resident slots in name order; *out malloc'd. */
int ma_session_slot_list(const ma_session *s, ma_slot_info **out, size_t *n);

/* ---- queries --------------------------------------------------------------------------------- */

typedef struct {
    const float *q;            /* H·d, or NULL when the query only names a slot */
    const char *slot;          /* a slot name, or NULL */
    uint64_t version;          /* with slot: 0 = current */
    ma_route route;            /* MA_ROUTE_AUTO follows the router */
    int topk;                  /* 0 = config */
    bool include_superseded;   /* archive reads also attend over superseded events (audit); forgotten
                                  events are never read */
} ma_query;

/* One slot of a weighted (topk) read. */
typedef struct {
    char slot[MA_MAX_NAME + 1];
    uint64_t version;
    double score;              /* its cosine with q (mean over heads) */
    double weight;             /* its softmax weight; the weights of a read sum to 1 */
    bool has_importance;       /* that version's writer gave an importance */
    double importance;         /* of that version (MA_IMPORTANCE_DEFAULT if not given) */
} ma_contrib;

typedef struct {
    ma_route route;            /* the route that answered (never AUTO) */
    float *v;                  /* in: caller's buffer of H·d_v; out: the answer */
    double score;              /* slot: cosine(q, key) averaged over heads (1 for a named slot without q);
                                  sparse/full/window: the pointer's cosine score; state: 0 */
    bool has_slot;
    char slot[MA_MAX_NAME + 1];
    uint64_t version;
    int64_t event;             /* pointer event (archive routes) or the slot's source event; -1 if none */
    char *payload;             /* JSON text of the slot's or pointer event's payload, or NULL */
    uint32_t *chunks;          /* chunks touched (archive routes) */
    size_t n_chunks;
    bool has_importance;       /* slot route: the version that answered (the best one for a weighted
                                  read) was given an importance by its writer ... */
    double importance;         /* ... this one (else MA_IMPORTANCE_DEFAULT) */
    ma_contrib *contrib;       /* weighted read (slot_policy.read topk, cosine step): the slots mixed, best
                                  first; NULL otherwise */
    size_t n_contrib;
} ma_answer;

void ma_answer_clear(ma_answer *a);

/* Answers one query. Router (auto): named resident slot (or, with a version, that version of the name's
 * history, resident or not) -> slot; else best mean-over-heads cosine of q against resident slot keys >=
 * route_threshold -> slot; else sparse. With slot_policy.read topk, the cosine step's answer is the
 * softmax(score / temperature)-weighted mix of the values of the k best-matching resident slots (a->contrib
 * lists them; slot, version, score, event, payload and importance are the best one's). A named slot that is not resident falls through to the
 * cosine/sparse steps when q is given. Forced routes: slot (MA_ENOTFOUND if no match: named, or cosine
 * >= threshold; MA_ENOVERSION for a missing version), sparse, full, window, state. A query that needs q
 * and has none: MA_EINVAL. Archive reads skip superseded and forgotten events (docs/SLOTS.md; with
 * include_superseded only forgotten ones); nothing left to attend over (or an empty archive):
 * MA_EEMPTY. */
int ma_session_query(const ma_session *s, const ma_query *q, ma_answer *a);

/* Answers n queries: rcs[i] and as[i] (its v the caller's buffer of H·d_v) get what ma_session_query gives
 * for qs[i], with the archive reads of the batch made together: every full and window read in one
 * streamed pass over the archive (ma_archive_read_exact_batch: the same bits as one by one), the sparse
 * reads (forced or the router's fallback) by ma_archive_read_sparse_batch per topk (the same answers, except
 * where two of a query's cluster scores tie within rounding: docs/ARCHIVE.md). Slot usage is counted as by
 * single queries. Returns 0, or MA_ENOMEM with no query answered (as and rcs untouched). */
int ma_session_query_batch(const ma_session *s, const ma_query *qs, size_t n, ma_answer *as, int *rcs);

/* ---- the session itself ---------------------------------------------------------------------- */

int ma_session_create(const ma_params *p, ma_session **out);
void ma_session_destroy(ma_session *s);

/* Appends a batch of events: backbone update, archive append, payloads, write controller. MA_EFULL (and
 * nothing applied) if a slot write in the batch would need an eviction when every resident slot is
 * protected. Copies: when every ev[i].k is ev[0].k + i·H·d and every ev[i].v is ev[0].v + i·H·d_v (the
 * codec's layout) the vectors are read in place and copied once, into the archive; otherwise they are
 * first gathered into one array. */
int ma_session_ingest(ma_session *s, size_t n, const ma_event *ev, int64_t now, ma_ingest_report *rep);
/* As ma_session_ingest; importance (NULL: none given) has n entries: for an event with a slot, the
 * importance of the version it writes, in [0, 1], or MA_IMPORTANCE_NONE (ignored for other events). */
int ma_session_ingest_ex(ma_session *s, size_t n, const ma_event *ev, const double *importance, int64_t now,
                         ma_ingest_report *rep);

typedef struct {
    uint64_t length;
    uint32_t chunks;
    size_t slots_resident;
    size_t bytes;              /* resident bytes of everything the session holds */
    double *state_norm;        /* H, malloc'd */
    double *penalty_norm;      /* H, malloc'd */
} ma_session_stats;

int ma_session_stats_get(const ma_session *s, ma_session_stats *st);
void ma_session_stats_clear(ma_session_stats *st);

/* A session's fixed footprint: what a session of config p holds, at most, whatever its length, with
 * its archive paged through a source caching cache_chunks chunks (0: no source) — the backbone state,
 * the slot table at capacity (one version per slot, payloads not counted), the archive's last chunk
 * full, the chunk cache full, the index's pending keys at their bound, and the handles. What grows
 * with use is not in it: sealed chunks not yet paged out, summaries and index lists per event, event
 * masks, slot history, payload texts (ma_session_bytes counts them when measured). Nor is what a
 * request allocates for its duration (decoded bodies, read results, an index rebuild's scratch). The
 * session registry (registry/) refuses a session whose footprint exceeds its memory budget and reserves it before
 * creating or loading one. p must be valid (ma_params_validate). tests/unit/test_footprint.c checks it
 * against the allocator's count. parts (may be NULL) gets the three components. */
typedef struct {
    size_t backbone, slots, archive;
} ma_footprint;
size_t ma_session_footprint(const ma_params *p, size_t cache_chunks, ma_footprint *parts);

/* ma_session_stats.bytes alone: no allocation, no arithmetic over the state (the session registry
 * re-measures a session at every release). May run alongside reads (the chunk cache is locked), not
 * alongside mutations. */
size_t ma_session_bytes(const ma_session *s);

/* ---- what the mutations changed (what the registry writes) ------------------------------------ */

/* The parts of a session that mutations change, as bits of ma_session_change.parts. */
enum {
    MA_CHANGED_BACKBONE = 1u << 0,   /* the recurrent state (ma_backbone_serialize's blob): an ingest */
    MA_CHANGED_EVENTS   = 1u << 1,   /* events appended to the archive (the caller holds their arrays): an
                                        ingest */
    MA_CHANGED_SLOTS    = 1u << 2,   /* the slot table (ma_slots_serialize_state's blob, ma_slots_unsaved's
                                        rows): an ingest with a slot event, every slot verb that succeeds;
                                        also a table restored whole whose versions are not rows yet */
    MA_CHANGED_INDEX    = 1u << 3,   /* the archive index's build (ma_archive_serialize_meta's blob): a
                                        rebuild, at an ingest or by ma_archive_index_adopt */
};

/* What changed since the session was created or restored, or since ma_session_changes_saved, and the
 * two counters the store keeps with a session (archive length, resident slots). A mutation that fails
 * changes nothing and adds no bit. No allocation, no arithmetic over the state (unlike
 * ma_session_stats_get, which computes norms). Same threading as ma_session_bytes. */
typedef struct {
    unsigned parts;            /* MA_CHANGED_* */
    uint64_t length;
    size_t slots_resident;
} ma_session_change;
void ma_session_changes(const ma_session *s, ma_session_change *out);

/* The changes reported by ma_session_changes are stored (or queued to be): parts start again from 0
 * and the slot table's versions are marked saved (ma_slots_saved). Caller runs exclusively for s. */
void ma_session_changes_saved(ma_session *s);

/* Components, for the session registry and benchmarks (borrowed pointers, valid while the session lives). */
ma_backbone *ma_session_backbone(ma_session *s);
ma_archive *ma_session_archive(ma_session *s);
ma_slots *ma_session_slots(ma_session *s);   /* the registry stores its state and unsaved version rows */

/* ---- persistence (used by the session registry, registry/, together with store/) --------------- */

/* Serialises the whole slot table (resident slots, full version history with values and payloads, usage,
 * eviction order state) as one core/blob.h blob (docs/SLOTS.md): ma_slots_serialize. The store keeps the
 * table as state + version rows instead (ma_session_slots, ma_slots_serialize_state, ma_slots_unsaved);
 * this whole form is for tests and tools, and is still accepted by ma_session_restore. *buf malloc'd. */
int ma_session_serialize_slots(const ma_session *s, void **buf, size_t *len);

/* Where a restored session finds the payload of an archived event (the store); payloads of events are
 * not kept in RAM by a restored session. load sets *payload to a malloc'd JSON text or NULL. */
typedef struct {
    int (*load)(void *ctx, uint64_t event, char **payload);
    void *ctx;
} ma_payload_source;

/* What a session is restored from: the blobs of ma_backbone_serialize, the slot table and
 * ma_archive_serialize_meta (borrowed for the call), and where its archive chunks and event payloads
 * are read (kept by the session). The slot table is either ma_slots_serialize_state's blob with its
 * version rows read through slot_rows during the call (what the store keeps), or a whole-table blob
 * (ma_session_serialize_slots, or a store of schema 2; slot_rows then gives no rows or is {NULL}). */
typedef struct {
    const void *backbone;      size_t backbone_len;
    const void *slots;         size_t slots_len;
    const void *archive_meta;  size_t archive_meta_len;
    ma_chunk_source chunks;    /* archive chunks (the store) */
    size_t cache_chunks;       /* chunks cached in RAM, >= 1 */
    ma_payload_source payloads;
    ma_slot_row_source slot_rows;   /* the slot table's version rows (the store), read during the call */
} ma_session_saved;

/* Rebuilds a session from what `from` describes. The restored session answers every query exactly as
 * the original did (same bits). MA_ECORRUPT (a blob is damaged or the three disagree), MA_EINVAL,
 * MA_ENOMEM, or a source's error. */
int ma_session_restore(const ma_params *p, const ma_session_saved *from, ma_session **out);

/* ma_session_restore reading the archive index's lists from its stored rows (ma_archive_saved.rows;
 * rows NULL: none, the index is recomputed from the chunks); with rows the archive is managed
 * (core/archive.h: its caller runs index builds and persists the rows). */
int ma_session_restore_rows(const ma_params *p, const ma_session_saved *from, const ma_ivf_rows *rows,
                            ma_session **out);

#endif
