/*
 * core/slots.h — the editable, versioned slot table of a session (docs/SLOTS.md).
 *
 * A slot is a named fact: key (H·d floats), value (H·d_v floats), optional JSON payload, its source event,
 * a protected flag and a usage count. Every name keeps its full, immutable version history; at most M
 * names are resident (readable as "current", matchable by the router). Versions start at 1 and grow with
 * every write, overwrite, restore and eviction (an eviction records a tombstone version); they never wrap
 * and are never reused, also across an eviction and a later re-write of the same name.
 *
 * Capacity: writing a name that is not resident when M names are resident evicts the least-recently-
 * updated unprotected resident slot (updated = written, overwritten or restored; protect/unprotect and
 * reads do not count). If every resident slot is protected the write fails with MA_EFULL.
 *
 * Policies (ma_slot_policy of core/params.h, set by ma_slots_set_policy; the defaults are the behaviour
 * above): eviction `score` evicts the unprotected resident slot with the lowest score of importance,
 * recency and usage instead; overwrite `blend` makes an overwrite of a resident slot store
 * alpha·new + (1−alpha)·current as the new version's value; read `topk` is the session router's
 * (ma_slots_match_topk, ma_slots_softmax). Every value version carries an importance in [0, 1] given
 * by its writer (MA_IMPORTANCE_DEFAULT when not given; whether it was given is kept too), persisted
 * with it.
 *
 * Failure atomicity: every function that can fail does all its checks and allocations first; on error
 * the table is unchanged. Event batches go through ma_slots_batch_prepare (all checks, all allocations)
 * and ma_slots_batch_commit (cannot fail), so a caller can fail other work in between and abort.
 *
 * Validation: dimensions and finiteness are the caller's (the server's); this module trusts them. Names
 * are checked (ma_name_valid, MA_EINVAL) where they enter the table, as they are copied into fixed-size
 * fields.
 * Threads: no lock. Const functions may run in parallel with each other, including ma_slots_count_use
 * (atomic counter); everything else must not run alongside anything on the same table.
 * Not done here: text embedding (core/featurize.h), JSON (payloads are opaque text), persistence I/O.
 */
#ifndef MA_SLOTS_H
#define MA_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/params.h"

/* ---- value types (also those of the session API, core/session.h) ---------------------------- */

typedef struct {
    char name[MA_MAX_NAME + 1];
    uint64_t version;          /* current version (>= 1) */
    bool protect;              /* protected flag */
    int64_t event;             /* source event, -1 if written through the slot verbs */
    uint64_t usage;            /* how many queries this slot answered */
    int64_t updated_at;        /* ms */
    bool has_importance;       /* the current version's writer gave an importance */
    double importance;         /* of the current version, [0, 1] (MA_IMPORTANCE_DEFAULT if not given) */
} ma_slot_info;

typedef struct {
    uint64_t version;
    int64_t event;
    int64_t at;                /* ms */
    bool tombstone;            /* an eviction marker, or a forgotten version: no value */
    bool forgotten;            /* erased by ma_slots_forget (the event number is kept) */
    bool has_importance;       /* a version with a value whose writer gave an importance */
    double importance;         /* of a version with a value, [0, 1] (the default if not given); 0 for a
                                  tombstone */
} ma_version_info;

typedef struct {
    ma_slot_info info;         /* for an old version: version/event/updated_at of that version */
    float *k;                  /* H·d, malloc'd */
    float *v;                  /* H·d_v, malloc'd */
    char *payload;             /* JSON text or NULL, malloc'd */
} ma_slot_value;

void ma_slot_value_clear(ma_slot_value *sv);

typedef struct {
    uint64_t version;          /* version now current */
    bool created;              /* the verb created the slot */
    bool evicted;              /* a capacity eviction happened ... */
    char evicted_name[MA_MAX_NAME + 1];   /* ... of this slot */
} ma_slot_result;

typedef struct ma_slots ma_slots;

/* The importance of a version whose writer gave none (the middle of [0, 1]: neither kept nor dropped
 * preferentially by the score eviction). */
#define MA_IMPORTANCE_DEFAULT 0.5

/* The largest explicit version accepted. Implicit versions grow by one per operation from at most
 * this, so a uint64_t never wraps (2^62 more operations would be needed). */
#define MA_SLOT_VERSION_MAX (UINT64_C(1) << 62)

/* Creates an empty table for heads x dim keys, heads x value_dim values and at most capacity resident
 * slots. 0, MA_EINVAL (a size < 1 or above the limits of core/params.h), MA_ENOMEM. */
int ma_slots_create(int heads, int dim, int value_dim, int capacity, ma_slots **out);
void ma_slots_destroy(ma_slots *s);

/* Sets the table's eviction and overwrite policies (the read policy is the router's). A table starts with
 * the defaults (lru, replace); restore does not set them (the session does, from its config). The
 * policy is not part of the serialised table. p is copied; it must be valid (ma_params_validate). */
void ma_slots_set_policy(ma_slots *s, const ma_slot_policy *p);

size_t ma_slots_resident(const ma_slots *s);
/* Bytes held: records, every version's key, value and payload, the resident index. */
size_t ma_slots_bytes(const ma_slots *s);

/* An upper bound of ma_slots_bytes for a table at capacity whose resident slots have one version each
 * (names of MA_MAX_NAME characters), payloads not counted: the slot table's part of a session's fixed
 * footprint (ma_session_footprint). History (older versions, evicted names) and payload texts grow with
 * use and are counted when measured. Arguments as ma_slots_create's (valid). */
size_t ma_slots_footprint(int heads, int dim, int value_dim, int capacity);

/* One write: what a slot verb or an event with a write signal asks for. The module copies everything. */
typedef struct {
    const char *name;
    const float *k;            /* H·d */
    const float *v;            /* H·d_v */
    const char *payload;       /* JSON text or NULL */
    int64_t event;             /* source event, -1 for a verb */
    bool protect;              /* protect after the write */
} ma_slot_write;

/* An importance argument that gives none: the version gets MA_IMPORTANCE_DEFAULT and reports none given.
 * Any negative value means the same; a given importance is in [0, 1] (the caller validates). */
#define MA_IMPORTANCE_NONE (-1.0)

/* The write and overwrite verbs. create_only: MA_EEXISTS if the name is resident (write verb); else the
 * slot is overwritten or created (res->created). Checks, in this order: MA_EINVAL (name), MA_EEXISTS,
 * MA_EPROTECTED, if_match > 0 must equal the current version of a resident slot (else MA_EPRECOND; a
 * name that is not resident has no current version), explicit_version > 0 must be at most
 * MA_SLOT_VERSION_MAX (else MA_EINVAL) and greater than the name's last version (else MA_ECONFLICT) and
 * becomes the new version, MA_EFULL, MA_ENOMEM. res (may be NULL) gets the new version and any capacity
 * eviction. With the blend policy, overwriting a resident slot stores alpha·w->v + (1−alpha)·(its current
 * value), each float computed in double and rounded once; the key, payload and importance are w's. */
int ma_slots_put(ma_slots *s, const ma_slot_write *w, bool create_only, uint64_t explicit_version,
                 uint64_t if_match, int64_t now, ma_slot_result *res);
/* As ma_slots_put, the new version with the given importance (MA_IMPORTANCE_NONE: none given). */
int ma_slots_put_ex(ma_slots *s, const ma_slot_write *w, double importance, bool create_only,
                    uint64_t explicit_version, uint64_t if_match, int64_t now, ma_slot_result *res);

/* Restore: a new version whose key, value, payload, importance and source event equal those of `version`
 * (never blended). An evicted
 * name becomes resident again (possibly evicting another slot, reported in res). MA_ENOTFOUND (no
 * history), MA_ENOVERSION (no such version, or a tombstone), MA_EPROTECTED, MA_EFULL, MA_ENOMEM. */
int ma_slots_restore(ma_slots *s, const char *name, uint64_t version, int64_t now, ma_slot_result *res);

/* Protect or unprotect a resident slot (idempotent). MA_ENOTFOUND if not resident. */
int ma_slots_protect(ma_slots *s, const char *name, bool protect);

/* Evicts a resident slot: a tombstone version is recorded, the history stays. MA_ENOTFOUND if not
 * resident, MA_EPROTECTED. */
int ma_slots_evict(ma_slots *s, const char *name, int64_t now);

/* Forgets a name: every version's key, value and payload is freed (the versions stay as numbered
 * markers with their source events, flagged forgotten: MA_ENOVERSION to reads), and the name leaves the
 * resident set. Writing the name again continues its version numbers. MA_ENOTFOUND (no history),
 * MA_EPROTECTED (resident and protected). Cannot fail otherwise. */
int ma_slots_forget(ma_slots *s, const char *name);

/* --- which archive events the table's versions make current (docs/SLOTS.md, supersession) --- */

/* The source event of the name's newest version that has a value (-1: none, or written by a verb). */
int64_t ma_slots_live_event(const ma_slots *s, const char *name);

typedef enum {
    MA_SLOT_EVENT_LIVE = 0,        /* the event of a name's newest valued version */
    MA_SLOT_EVENT_SUPERSEDED,      /* the event of an older version */
    MA_SLOT_EVENT_FORGOTTEN        /* the event of a forgotten version */
} ma_slot_event_state;

/* Calls fn once per version that has a source event (not for tombstones), in no particular order. An
 * event that is a name's live event is reported LIVE for every version carrying it (a restore re-uses
 * the event of the version it restores). */
void ma_slots_each_event(const ma_slots *s, void (*fn)(void *ctx, uint64_t event, ma_slot_event_state st),
                         void *ctx);

/* --- event batches (the write controller) --- */

typedef struct ma_slots_batch ma_slots_batch;

/* Checks and allocates everything n writes in order need (w[i].event set by the caller). A write to a
 * slot that is protected at its turn (before or by an earlier write of the batch) will be void. Returns
 * MA_EINVAL for an invalid name, MA_EFULL if some write would need a capacity eviction while every
 * resident slot is protected, or MA_ENOMEM; then *out is NULL and nothing observable changed. The table
 * must not be changed between prepare and commit/abort. n = 0 is valid. */
int ma_slots_batch_prepare(ma_slots *s, size_t n, const ma_slot_write *w, ma_slots_batch **out);
/* As ma_slots_batch_prepare; importance (NULL: none given for any write) has n entries, write i's
 * importance or MA_IMPORTANCE_NONE. */
int ma_slots_batch_prepare_ex(ma_slots *s, size_t n, const ma_slot_write *w, const double *importance,
                              ma_slots_batch **out);

/* Applies a prepared batch and frees it. out[i] (n entries, may be NULL) gets write i's outcome:
 * version 0 for a void write (protected), else the new version, created, and any capacity eviction. */
void ma_slots_batch_commit(ma_slots_batch *b, int64_t now, ma_slot_result *out);

/* Discards a prepared batch, leaving the table as it was. NULL is a no-op. */
void ma_slots_batch_abort(ma_slots_batch *b);

/* --- reads --- */

/* A borrowed view of one version, valid until the table is next changed. */
typedef struct {
    const char *name;
    uint64_t version;
    int64_t event;
    int64_t at;                /* when this version was made, ms */
    bool protect;              /* the slot's current flag */
    uint64_t usage;            /* the name's usage count */
    const float *k, *v;        /* H·d, H·d_v */
    const char *payload;       /* or NULL */
    bool has_importance;       /* this version's writer gave an importance */
    double importance;         /* of this version (MA_IMPORTANCE_DEFAULT if not given) */
} ma_slot_view;

/* version 0: the current version of a resident slot (else MA_ENOTFOUND). version n: any version of the
 * name's history (MA_ENOTFOUND if the name has none, MA_ENOVERSION if no such version or a tombstone). */
int ma_slots_view(const ma_slots *s, const char *name, uint64_t version, ma_slot_view *out);

/* As ma_slots_view, into a malloc'd copy (see ma_slot_value_clear). Adds MA_ENOMEM. */
int ma_slots_read(const ma_slots *s, const char *name, uint64_t version, ma_slot_value *out);

/* History of a name, oldest first; *out malloc'd (NULL when n = 0 never happens: MA_ENOTFOUND). */
int ma_slots_history(const ma_slots *s, const char *name, ma_version_info **out, size_t *n);

/* Resident slots in name (strcmp) order; *out malloc'd, NULL when *n = 0. MA_ENOMEM. */
int ma_slots_list(const ma_slots *s, ma_slot_info **out, size_t *n);

/* Cosine of q against k per head, averaged over heads (a head where either vector is zero scores 0).
 * Summed in a fixed order (float dot products in 8 lanes, norms in double): the result depends only on
 * q and k, and equals the score ma_slots_match gives that key, bit for bit. */
double ma_slots_cosine(const float *q, const float *k, int heads, int dim);

/* The resident slot whose current key has the largest ma_slots_cosine with q (ties: the smaller name).
 * MA_ENOTFOUND if no slot is resident. *score gets its cosine. */
int ma_slots_match(const ma_slots *s, const float *q, ma_slot_view *best, double *score);

/* The (at most) k resident slots with the largest ma_slots_cosine with q, best first (ties: the smaller
 * name, as ma_slots_match: out[0] is ma_slots_match's answer). out and scores have room for k; *n gets
 * min(k, resident). MA_ENOTFOUND if no slot is resident, MA_ENOMEM. */
int ma_slots_match_topk(const ma_slots *s, const float *q, size_t k, ma_slot_view *out, double *scores,
                        size_t *n);

/* The weights of a topk read: w[i] = exp((scores[i] − max) / temperature) / Σ_j exp((scores[j] − max) /
 * temperature), in double (n >= 1, temperature > 0). They sum to 1 up to rounding. */
void ma_slots_softmax(const double *scores, size_t n, double temperature, double *w);

/* The score eviction's score of each resident slot, in update order (least recent first), as the
 * eviction computes it (docs/SLOTS.md): names[i] borrowed, valid until the table changes; *n resident.
 * scores[] and names[] need room for ma_slots_resident(s). For tests and diagnostics. */
void ma_slots_eviction_scores(const ma_slots *s, double *scores, const char **names, size_t *n);

/* Counts one answered query for a resident slot (atomic; may run alongside other const calls). */
void ma_slots_count_use(const ma_slots *s, const char *name);

/* --- persistence (docs/SLOTS.md, "Persistence") ---
 *
 * The store keeps a table as its state (ma_slots_serialize_state: names, flags, usage, version counts,
 * resident order; small) plus one row per version, written once. A commit stores the rows of
 * ma_slots_unsaved and the state, then calls ma_slots_saved. The whole table in one blob
 * (ma_slots_serialize) is what schema 2 stored; it is still read, and tests compare tables with it. */

/* Everything (every name's history with values and payloads, resident set and its update order,
 * protected flags, usage) as one core/blob.h blob (little-endian, checksummed); *buf malloc'd. */
int ma_slots_serialize(const ma_slots *s, void **buf, size_t *len);

/* The table without its versions (each name's version count and last version instead) as a core/blob.h
 * blob; *buf malloc'd. Its size grows with the names ever written, not with their versions. */
int ma_slots_serialize_state(const ma_slots *s, void **buf, size_t *len);

/* The sizes of a table (ma_slots_create's arguments), which a restored blob must match. */
typedef struct {
    int heads, dim, value_dim, capacity;
} ma_slots_shape;

/* Rebuilds a table of shape sh from ma_slots_serialize's output (or the legacy format 1). A truncated,
 * foreign, mismatching (dimensions, capacity) or inconsistent buffer gives MA_ECORRUPT; MA_ENOMEM. Every
 * version of the result is unsaved (ma_slots_unsaved lists them all). */
int ma_slots_restore_table(const ma_slots_shape *sh, const void *buf, size_t len, ma_slots **out);

/* One version as a stored row: the key (name, version) and the record (a core/blob.h blob of kind SVER). */
typedef struct {
    const char *name;          /* borrowed from the table: valid until it next changes */
    uint64_t version;
    void *data;                /* malloc'd (ma_slot_rows_free) */
    size_t len;
    bool rewrite;              /* the row was stored before (its name was forgotten since): replace it */
} ma_slot_row;

/* Receives one stored row; 0 to go on, or an MA_E* code that stops the iteration. */
typedef int (*ma_slot_row_fn)(void *arg, const char *name, uint64_t version, const void *data, size_t len);

/* Where a restored table finds its version rows (the store): each calls fn for every row of the table in
 * (name, version) order — names compared as bytes (strcmp) — stopping at (and returning) fn's first
 * nonzero return; 0 or the source's own error. */
typedef struct {
    int (*each)(void *ctx, ma_slot_row_fn fn, void *arg);
    void *ctx;
} ma_slot_row_source;

/* Rebuilds a table from ma_slots_serialize_state's output and the rows of `rows` (all saved), or from a
 * whole-table blob as ma_slots_restore_table (all unsaved; `rows` must then give no row). MA_ECORRUPT
 * when the rows do not match the state (missing, extra, out of order, a number that differs from its
 * key, a damaged record) or when the state has versions and rows is NULL; MA_ENOMEM; the source's error. */
int ma_slots_restore_state(const ma_slots_shape *sh, const void *buf, size_t len, const ma_slot_row_source *rows,
                           ma_slots **out);

/* True when some version is not stored yet (or must be rewritten): the next commit writes the state and
 * ma_slots_unsaved's rows. */
bool ma_slots_has_unsaved(const ma_slots *s);

/* The rows to store: every version appended since the last ma_slots_saved (or since the table was created
 * or restored from a whole-table blob), and every version of a name forgotten since (rewrite). *rows
 * malloc'd (NULL when *n = 0), free with ma_slot_rows_free. MA_ENOMEM (nothing changed). Cost: the
 * unsaved versions, not the history. */
int ma_slots_unsaved(const ma_slots *s, ma_slot_row **rows, size_t *n);
void ma_slot_rows_free(ma_slot_row *rows, size_t n);

/* The rows of ma_slots_unsaved (and the state) are stored: clears the unsaved list. Cannot fail. */
void ma_slots_saved(ma_slots *s);

#endif
