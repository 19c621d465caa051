/*
 * registry/registry.h — the session registry: id -> loaded session, backed by the sqlite store.
 *
 * Design. The registry is the layer between the REST handlers (server/api.c) and the two modules below
 * it: the store (store/store.h), which is the source of truth, and the core (core/session.h), which
 * computes. Handlers reach the store only through here (sessions, listings, summaries, deletes,
 * backups), and the registry never calls back up into server/: dependencies go one way,
 *   server -> registry -> store, core.
 * The registry is a cache of loaded sessions in front of the store. A session is loaded on first use
 * (ma_session_restore over the stored blobs, with the archive's chunks and the events' payloads paged
 * from the store), reference-counted while a job uses it, and kept resident while the resident bytes of
 * all loaded sessions fit the memory budget (--memory). What a session counts against the budget is what
 * core counts (ma_session_stats.bytes: backbone, slots, archive with its chunk cache and index, payloads),
 * re-measured whenever a job releases the session, and never less than its fixed footprint
 * (ma_session_footprint: the backbone, the slot table at capacity, a full last chunk and chunk cache, the
 * index's fixed part), so that sessions cannot outgrow the budget by filling what they hold. Admission:
 * before a session is created or loaded its footprint is reserved, unloading unused sessions to make room;
 * a session whose footprint exceeds the budget is refused (MA_ETOOBIG), and one that finds every other
 * loaded session in use is refused for now (MA_EBUSY). Over budget, unused
 * sessions first have their archive chunks paged out and their chunk caches emptied (they keep answering,
 * reading chunks back through a small cache), then are unloaded, least recently used first; freed memory
 * is handed back to the OS (malloc_trim). Neither loses anything: every mutation was committed before it
 * was acknowledged.
 *
 * Mutations follow one protocol (the api's exclusive jobs):
 *   1. apply the change to the in-memory session (the core checks everything first, so a refused change
 *      leaves it untouched and needs no commit);
 *   2. reg_commit(): serialise what the core reports changed (ma_session_changes: backbone, slot table,
 *      archive index; the handler knows nothing of it) and commit it with the new events (and the
 *      request's Idempotency-Key record with its answer, reg_change.idem) in one store transaction;
 *   3. only then answer 2xx.
 * If the commit fails (disk full, read-only, I/O error) the in-memory session is ahead of the stored one;
 * reg_commit marks it stale and takes it out of the map, it is dropped when its last reference goes, and
 * the next use reloads it from the store — so the in-memory state always equals the stored state as seen
 * by any later request. (Applying
 * only after the commit is impossible here: the blobs to commit are serialisations of the new state.)
 * reg_commit_queue splits step 2: the state is serialised at once, the transaction runs later on the
 * registry's commit thread, grouped with other queued changes; step 3 waits for its callback. The caller
 * may apply the session's next change meanwhile (the daemon's pipelined event batches).
 *
 * Index builds (docs/ARCHIVE.md, "Builds in the background"): sessions' archives are managed — an append
 * never builds the index; a commit that leaves a build due queues a job on the registry's maintenance
 * thread (registry/maint.h), which trains and stages the new build's rows from the store and makes the new
 * index from them beside the old one without holding the session (when the memory budget holds both: the
 * new one is then counted against it; else the build is adopted in place under the gate), then swaps it
 * in under the session's exclusive gate (the last few blocks and a pointer; on a thread of normal
 * priority) and commits it before any job sees it.
 * The index's rows are committed with the events that complete a block (ma_store_delta.index) and read
 * back at load, so a load never recomputes the index.
 *
 * Threads: every function may be called from any worker thread. The registry's map and LRU list are
 * under one mutex, never held across store I/O or compute; loading a session is serialised per session
 * (two parallel reads of an unloaded session load it once). The caller orders jobs per session id
 * (in the daemon, the worker pool's per-key ordering): mutations of one session never run alongside
 * anything else of that session, which is what the core requires. Every acquired session also holds its
 * gate (a rwlock) shared until released; the maintenance thread takes it exclusively to read the session
 * and to swap a build in, so it never runs alongside any job of that session. A job must not acquire a
 * session it already holds.
 *
 * A session's config is stored as text written and read by registry/params_text.h (not by the REST
 * codec); archive chunks and payloads are paged back through registry/pager.h.
 *
 * Not done here: HTTP, REST bodies, id generation, validation of ids (callers pass valid names).
 */
#ifndef REG_REGISTRY_H
#define REG_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/session.h"

/* The store's handle (store/store.h), opaque here: users of the registry never see the store's API. */
typedef struct ma_store ma_store;

typedef struct reg_registry reg_registry;
typedef struct reg_session reg_session;   /* one session known to the registry (loaded or loading) */

typedef struct {
    ma_store *store;          /* borrowed; must outlive the registry */
    size_t memory_budget;     /* resident bytes of loaded sessions before LRU unloading; 0 = unlimited */
    size_t cache_chunks;      /* archive chunks cached per session once chunks are paged (>= 1); with a
                                 budget, at most budget/8 bytes of chunks per session. A session is
                                 re-measured at every release, so its cache is in the budget; a read
                                 in progress may hold more chunks than that for its duration */
    size_t idem_keys;         /* Idempotency-Key records kept per key space (0: REG_IDEM_KEYS) */
    int64_t idem_window_ms;   /* and for how long at most (0: REG_IDEM_WINDOW_MS) */
} reg_options;

#define REG_IDEM_KEYS      1000
#define REG_IDEM_WINDOW_MS (24 * 3600 * 1000LL)

/* Called after every reg_commit's store transaction with its duration and result (metrics). Any thread. */
typedef void (*reg_commit_fn)(void *ctx, double seconds, int rc);

/* Creates an empty registry. 0, MA_EINVAL (no store), MA_ENOMEM. */
int reg_create(const reg_options *o, reg_registry **out);

/* Unloads every session (none may be in use) and frees the registry. NULL is a no-op. */
void reg_destroy(reg_registry *r);

/* Installs the commit observer (NULL: none). It is called from the thread that commits (a worker, the
 * commit thread, the maintenance thread); a call that changes it returns once no call of the old one runs
 * (the daemon unsets it at shutdown while a background build may still commit). */
void reg_observe_commits(reg_registry *r, reg_commit_fn fn, void *ctx);

/* Gets the session `id`, loading it from the store if needed, and takes a reference (release with
 * reg_release). MA_ENOTFOUND if the store has no such session; MA_ECORRUPT / MA_EIO / MA_ENOMEM when
 * loading fails (err says why). Loading is admitted under the budget first (see reg_create_session):
 * MA_ETOOBIG, MA_EBUSY. */
int reg_acquire(reg_registry *r, const char *id, reg_session **out, char *err, size_t errlen);

/* Creates session `id` with config p: durably in the store first, then in memory; returns it acquired.
 * MA_EEXISTS if the id exists (loaded or stored), MA_EIO, MA_ENOMEM. With a budget, the session is admitted
 * first: its footprint (reg_session_footprint) is reserved before anything is allocated, unloading unused
 * sessions least recently used first to make room; MA_ETOOBIG (nothing done) when the footprint alone
 * exceeds the budget, MA_EBUSY when the sessions in use by other jobs leave no room (err gives the
 * figures). */
int reg_create_session(reg_registry *r, const char *id, const ma_params *p, int64_t now, reg_session **out,
                       char *err, size_t errlen);

/* ---- safe retries: Idempotency-Key (docs/API.md, "Safe retries"; docs/STORE.md) --------------------
 * A request's key and the answer it got are committed in the same store transaction as its change
 * (reg_change.idem, reg_create_session_idem, reg_delete_idem), so a retry after any crash finds the
 * answer of a change that was committed and no answer for one that was not. Keys live in a space:
 * the session id of the request's path, or "" (POST /v1/sessions). The registry applies the window of
 * reg_options (the newest idem_keys records of a space, none older than idem_window_ms); a record
 * beyond it is not found. Comparing fingerprints (same key, another request) is the caller's. */
typedef struct {
    const char *scope;        /* the key space: a session id, or "" */
    const char *key;          /* the Idempotency-Key (1..255 bytes) */
    uint64_t fingerprint;     /* of the request, as the caller computes it */
    int status;               /* the answer to replay */
    const char *body;         /* JSON text, NULL: none */
    const char *etag, *location;   /* NULL or "": none */
} reg_idem;

/* A stored answer (reg_idem_find); clear with reg_idem_answer_clear. */
typedef struct {
    uint64_t fingerprint;
    int status;
    char *body, *etag, *location;   /* malloc'd, NULL when absent */
    int64_t created_at;
} reg_idem_answer;

/* The record of (scope, key) within the window as of `now` (ms). 0; MA_ENOTFOUND (none: the request is
 * new); MA_EIO / MA_ECORRUPT / MA_ENOMEM (err says why). */
int reg_idem_find(reg_registry *r, const char *scope, const char *key, int64_t now, reg_idem_answer *out,
                  char *err, size_t errlen);
void reg_idem_answer_clear(reg_idem_answer *a);

/* Records k, stamped `now`, in a transaction of its own: for an answer whose request changed nothing
 * (a change commits its key with it). 0, MA_EINVAL, MA_EIO. */
int reg_idem_record(reg_registry *r, const reg_idem *k, int64_t now, char *err, size_t errlen);

/* reg_create_session / reg_delete with the key record k (NULL: none), stamped `now`, committed with the
 * change. */
int reg_create_session_idem(reg_registry *r, const char *id, const ma_params *p, int64_t now, const reg_idem *k,
                            reg_session **out, char *err, size_t errlen);
int reg_delete_idem(reg_registry *r, const char *id, const reg_idem *k, int64_t now, char *err, size_t errlen);

/* Drops a reference. A stale session is unloaded when its last reference goes; then, while the budget
 * is exceeded, unused sessions are unloaded least recently used first (never the one just released). */
void reg_release(reg_registry *r, reg_session *s);

/* Deletes session `id` from the store (durably) and unloads it. MA_ENOTFOUND, MA_EIO. The caller must
 * hold no reference to it. */
int reg_delete(reg_registry *r, const char *id, char *err, size_t errlen);

/* What a session of config p counts against the memory budget at least: core's fixed footprint
 * (ma_session_footprint) with the chunk cache this registry gives it. A session whose footprint exceeds
 * the budget is refused (MA_ETOOBIG) by reg_create_session and reg_acquire. Any thread. */
size_t reg_session_footprint(const reg_registry *r, const ma_params *p);

/* The store's message of the first failed page-in (archive chunk or payload) of the acquired session s, or
 * NULL: what a read that failed with a store error (MA_ECORRUPT, MA_EIO) met. */
const char *reg_read_error(reg_session *s);

/* Accessors of an acquired session. */
ma_session *reg_core(reg_session *s);
const ma_params *reg_params(const reg_session *s);

/* ---- listings, summaries, backup: the handlers' only way to the store ------------------------- */

/* One line of a session listing (what the store keeps per session; no session is loaded for it). */
typedef struct {
    char id[MA_MAX_NAME + 1];
    uint64_t length;                  /* events */
    size_t slots;                     /* resident slots */
    int64_t created_at, updated_at;   /* ms since the epoch */
} reg_listing;

/* Sessions ordered by id, after `after` (NULL or "": from the start), at most limit of them. *out is a
 * malloc'd array of *n entries (free with free(); NULL when *n is 0). MA_EIO, MA_ECORRUPT, MA_ENOMEM. */
int reg_list(reg_registry *r, const char *after, size_t limit, reg_listing **out, size_t *n, char *err,
             size_t errlen);

/* What GET /v1/sessions/{id} shows of an acquired session: its config, the core's statistics and the
 * bytes the store holds for it. Clear with reg_summary_clear. */
typedef struct {
    const ma_params *params;          /* the session's (valid while it is acquired) */
    ma_session_stats stats;           /* owned (ma_session_stats_clear) */
    size_t stored_bytes;
    int64_t created_at, updated_at;
    ma_index_state index;             /* the archive index's build, lists, events (zero: selector chunks) */
    bool index_building;              /* a background build of it is queued or running */
} reg_summary;

/* Fills *out for the acquired session s (caller holds a reference and runs no mutation of s alongside).
 * MA_ENOMEM (statistics), MA_EIO / MA_ECORRUPT / MA_ENOTFOUND (reading the store; err says why). On
 * failure *out holds nothing to clear. */
int reg_summary_get(reg_registry *r, reg_session *s, reg_summary *out, char *err, size_t errlen);
void reg_summary_clear(reg_summary *sm);

/* Consistent online snapshot of the whole store into the new file `path` (absolute). MA_EEXISTS when
 * path exists (a backup never overwrites a file), MA_EIO; err says why. */
int reg_backup(reg_registry *r, const char *path, char *err, size_t errlen);

/* What comes with a mutation's commit besides what the core reports changed (ma_session_changes: the
 * registry serialises only the parts the core names): the new events' arrays, the payloads to erase,
 * the key record. */
typedef struct {
    uint64_t first_event;      /* index of the first new event */
    size_t n_events;           /* new events (k: n*H*d, v: n*H*d_v floats, payloads: n texts or NULLs) */
    const float *k, *v;
    const char *const *payloads;
    const uint64_t *erase;     /* events whose stored payloads are erased (ma_session_slot_forget) */
    size_t n_erase;
    const reg_idem *idem;      /* the request's Idempotency-Key and answer, committed with it (NULL: none) */
} reg_change;

/* Commits a change already applied to the acquired session s (caller runs exclusively for s): serialises
 * the components the core reports changed (ma_session_changes) and writes them with the new events in one transaction, stamped `now`.
 * 0 once durable. On failure (MA_EIO, MA_ECORRUPT, MA_ENOMEM; err says why) the session is marked stale
 * and reloaded from the store on next use. */
int reg_commit(reg_registry *r, reg_session *s, const reg_change *c, int64_t now, char *err, size_t errlen);

/* The answer to a reg_commit_queue'd change: rc 0 once it is durable, else the failure (MA_EIO,
 * MA_ECORRUPT, MA_ENOMEM, MA_EINVAL) with err saying why (valid during the call). Runs on the registry's
 * commit thread: must not block for long, nor call reg_commit, reg_delete or reg_destroy. */
typedef void (*reg_committed_fn)(void *ctx, int rc, const char *err);

/* Pipelined, grouped commit of a change already applied to the acquired session s (caller runs
 * exclusively for s). What changed is serialised now, so the caller may go on mutating s (and queue more
 * changes) as soon as this returns; the store transaction runs later on the registry's commit thread,
 * together with every change queued meanwhile, of s and of other sessions, in queue order (group commit:
 * one transaction and one fsync for the group). c's event arrays (k, v, payloads, erase) and its idem
 * record's strings must stay valid until `fn` has been called. The queued change holds its own reference
 * to s. Its slot versions (schema 3 rows) are written with it — every change's, also when a later change
 * of s in the same group writes the slot state blob instead of it — and are marked saved in s's table
 * when it is queued (so that the next change does not carry them again; a failure makes s stale).
 * Failure: if the group's transaction fails, every change in it gets the error and every session in it is
 * marked stale (dropped; the next reg_acquire loads what the store holds); a change of a session that was
 * stale when its group started (applied after a change that is not stored) fails without being written.
 * So a change answered 0 is stored, and memory never serves what the store lost to later requests.
 * Returns 0 (fn will be called exactly once, from the commit thread, possibly before this returns) or
 * MA_ENOMEM / the serialiser's code (fn will not be called; s is marked stale). reg_commit and reg_delete
 * first wait for the session's queued changes. */
int reg_commit_queue(reg_registry *r, reg_session *s, const reg_change *c, int64_t now, reg_committed_fn fn,
                     void *ctx, char *err, size_t errlen);

/* Waits until the acquired session s has no change in the commit queue (a worker may block here: the
 * commit thread needs none). 0: s equals what the store holds; MA_EIO (err set) when one of those changes
 * failed (s is stale: answer the request as a failed commit). */
int reg_settle(reg_registry *r, reg_session *s, char *err, size_t errlen);

/* The config of session `id` if it is loaded (and not stale), without loading it or taking a reference:
 * true and *out, else false. For work done before a job's turn (decoding a batch for its shape); the
 * session can be deleted and re-created before the turn, so the job checks the config again. */
bool reg_peek_params(reg_registry *r, const char *id, ma_params *out);

/* Marks the acquired session s stale: a change was applied to it in memory and will not be committed
 * (the caller could not finish the request). It is dropped at its last release and reloaded from the
 * store on next use, as after a failed reg_commit (it is taken out of the map at once). */
void reg_invalidate(reg_registry *r, reg_session *s);

typedef struct {
    size_t loaded;             /* sessions in memory */
    size_t bytes;              /* their resident bytes (as last measured: load, commit, every release) */
    size_t budget;             /* reg_options.memory_budget (0: none) */
    uint64_t loads, unloads;   /* since start */
    uint64_t chunk_loads;      /* archive chunks read back from the store (pages in) since start */
    uint64_t paged_out_bytes;  /* archive bytes dropped from RAM under the budget (pages out) since start */
    uint64_t queue_groups;     /* group transactions of the commit queue (reg_commit_queue) since start */
    uint64_t queue_changes;    /* changes they wrote (their mean group size: queue_changes / queue_groups) */
    uint64_t index_builds;     /* background index builds swapped in since start ... */
    uint64_t index_builds_in_place;   /* ... of which adopted in place (a second index did not fit the budget) */
    uint64_t index_build_failures;    /* builds that failed (not counted: those cancelled or overtaken) */
    uint64_t sessions_purging;        /* deleted sessions whose rows are still being purged (registry/purge.h) */
    uint64_t purged_rows;             /* rows the purge deleted since start */
} reg_stats;

void reg_stats_get(reg_registry *r, reg_stats *st);

/* Waits until the background purge of deleted sessions' rows has emptied its queue (tests, benches): 0,
 * or the MA_E* code of a purge step that failed meanwhile (it is retried later). */
int reg_wait_purge(reg_registry *r);

/* Waits until no background index build is queued or running (tests, benches). */
void reg_wait_maintenance(reg_registry *r);

/* ---- moving sessions (server/api_transfer.c; docs/API.md, "Moving sessions") -------------------- */

/* The snapshot's bytes go out through a reg_write_fn (0, or an MA_E* code that stops the export) and come
 * in through a reg_read_fn (exactly len bytes: 0; MA_ENOTFOUND when the input ends first; MA_EIO). */
typedef int (*reg_write_fn)(void *ctx, const void *data, size_t len);
typedef int (*reg_read_fn)(void *ctx, void *buf, size_t len);

typedef struct {
    uint64_t bytes;                   /* of the snapshot (export) */
    uint64_t events, blocks, payloads;
} reg_snapshot_stats;

/* Why an import was refused (with MA_ECORRUPT). */
enum { REG_SNAP_CORRUPT = 1, REG_SNAP_TRUNCATED = 2, REG_SNAP_NEWER = 3 };

/* Streams session `id` as a snapshot (docs/STORE.md, "Snapshots") to `write`, straight from the store: one
 * event block in memory, the session need not be loaded. 0, MA_ENOTFOUND, MA_EIO / MA_ECORRUPT, or
 * write's code. */
int reg_export(reg_registry *r, const char *id, reg_write_fn write, void *ctx, reg_snapshot_stats *st,
               char *err, size_t errlen);

/* Creates session `id` from a snapshot read through `read`, in one store transaction, after checking that
 * its config is valid here and matches its events' sizes. 0, MA_EEXISTS, MA_ECORRUPT with *why =
 * REG_SNAP_* (err says what), MA_EIO, MA_ENOMEM. Nothing is left on failure. The caller runs
 * exclusively for `id`. */
int reg_import(reg_registry *r, const char *id, reg_read_fn read, void *ctx, reg_snapshot_stats *st,
               int *why, char *err, size_t errlen);

/* Marks session `id` frozen (on) or not. Frozen: the API refuses its mutations (503 `frozen`) while it is
 * being moved; reads, export and delete go on. In memory only (a restart forgets it); a delete clears
 * it. 0, MA_ENOTFOUND (no such session), MA_ENOMEM, MA_EIO. */
int reg_freeze(reg_registry *r, const char *id, bool on, char *err, size_t errlen);

/* *frozen = whether `id` is frozen. 0, MA_ENOTFOUND, MA_EIO. */
int reg_frozen(reg_registry *r, const char *id, bool *frozen, char *err, size_t errlen);

/* Whether `id` is frozen, without asking the store whether it exists (the API's check before a
 * mutation). Any thread. */
bool reg_is_frozen(reg_registry *r, const char *id);

#endif
