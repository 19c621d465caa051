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
} ma_slot_info;

typedef struct {
    uint64_t version;
    int64_t event;
    int64_t at;                /* ms */
    bool tombstone;            /* an eviction marker, or a forgotten version: no value */
    bool forgotten;            /* erased by ma_slots_forget (the event number is kept) */
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

/* The largest explicit version accepted. Implicit versions grow by one per operation from at most
 * this, so a uint64_t never wraps (2^62 more operations would be needed). */
#define MA_SLOT_VERSION_MAX (UINT64_C(1) << 62)

/* Creates an empty table for heads x dim keys, heads x value_dim values and at most capacity resident
 * slots. 0, MA_EINVAL (a size < 1 or above the limits of core/params.h), MA_ENOMEM. */
int ma_slots_create(int heads, int dim, int value_dim, int capacity, ma_slots **out);
void ma_slots_destroy(ma_slots *s);

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

/* The write and overwrite verbs. create_only: MA_EEXISTS if the name is resident (write verb); else the
 * slot is overwritten or created (res->created). Checks, in this order: MA_EINVAL (name), MA_EEXISTS,
 * MA_EPROTECTED, if_match > 0 must equal the current version of a resident slot (else MA_EPRECOND; a
 * name that is not resident has no current version), explicit_version > 0 must be at most
 * MA_SLOT_VERSION_MAX (else MA_EINVAL) and greater than the name's last version (else MA_ECONFLICT) and
 * becomes the new version, MA_EFULL, MA_ENOMEM. res (may be NULL) gets the new version and any capacity
 * eviction. */
int ma_slots_put(ma_slots *s, const ma_slot_write *w, bool create_only, uint64_t explicit_version,
                 uint64_t if_match, int64_t now, ma_slot_result *res);

/* Restore: a new version whose key, value, payload and source event equal those of `version`. An evicted
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

/* Counts one answered query for a resident slot (atomic; may run alongside other const calls). */
void ma_slots_count_use(const ma_slots *s, const char *name);

/* --- persistence --- */

/* Everything (every name's history with values and payloads, resident set and its update order,
 * protected flags, usage) as a core/blob.h blob (little-endian, checksummed; docs/SLOTS.md); *buf
 * malloc'd. */
int ma_slots_serialize(const ma_slots *s, void **buf, size_t *len);

/* Rebuilds a table from ma_slots_serialize's output (or the legacy format 1) for the given sizes. A
 * truncated, foreign,
 * mismatching (dimensions, capacity) or inconsistent buffer gives MA_ECORRUPT; MA_ENOMEM. */
int ma_slots_restore_table(int heads, int dim, int value_dim, int capacity, const void *buf, size_t len,
                           ma_slots **out);

#endif
