/*
 * store/store.h — durable sessions in sqlite3 (the only module that includes sqlite3.h).
 *
 * One database file <data>/memattn.db in WAL mode. What a session is made of on disk (docs/STORE.md):
 *   a row      id, config JSON, created_at, updated_at, length, resident slots, byte counts;
 *   3 blobs    backbone state, slot table state, archive meta, one row each: the versioned, checked
 *              serialisations made by core/, opaque here;
 *   slot rows  one row per slot version, keyed (name, version), written once (opaque records of core's);
 *   events     in blocks of 64 (keys, values) plus payload rows for the events that have one — the
 *              archive's chunks are read back from here a chunk at a time (ma_store_load_events), so a
 *              large session is paged.
 * Users: the session registry (loads, commits, pages chunks) and the server (listings, backup, stats).
 *
 * Durability: every function that changes the database returns only after its transaction committed
 * (synchronous chosen in store.c and documented in docs/STORE.md); a 2xx answer is sent after that.
 * Failure (disk full, read-only directory, I/O error, corrupt file) returns MA_EIO or MA_ECORRUPT with a
 * message in err, and the database is unchanged (the transaction rolled back).
 *
 * Threads: one ma_store handle may be used from several worker threads at once; calls for one session
 * are made in order by the caller (per-session job ordering). Internally: one writer connection behind
 * a lock and a pool of reader connections (store.c).
 */
#ifndef MA_STORE_H
#define MA_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ma_store ma_store;

typedef struct {
    const void *data;
    size_t len;
} ma_blob;

/* Opens (creating if needed) <dir>/memattn.db, checking schema version (a newer one is refused) and
 * integrity. Returns 0, MA_EIO (cannot create/open/write), MA_ECORRUPT, MA_EBUSY (another process has the
 * data directory open: one store per directory, held by an flock on <dir>/memattn.lock); err gets a
 * message. */
int ma_store_open(const char *dir, ma_store **out, char *err, size_t errlen);

/* Options of ma_store_open_with (ma_store_open uses the defaults of ma_store_options_default).
 * synchronous: the sqlite PRAGMA for the WAL: MA_STORE_SYNC_FULL (default: a commit survives power loss)
 *   or MA_STORE_SYNC_NORMAL (survives a crash of the process, not of the machine); docs/STORE.md.
 * in_memory: no file at all (benchmarks: the "store against an in-memory store" baseline); dir ignored.
 * quick_check: run PRAGMA quick_check at open (default true).
 * max_pages: > 0 caps the database at that many pages (PRAGMA max_page_count: a full disk, for tests).
 * vfs: the name of a registered sqlite VFS to open the file through (NULL: sqlite's default). The
 *   string must outlive the store. Tests pass the fault-injection shim's (tests/support/store_fault.h).
 * no_row_checksums: the checksum of every event block and payload row is written and checked unless this
 *   is set (docs/STORE.md, "Row checksums"). For benchmarks measuring their cost only: rows are written
 *   without one, nothing is checked, and such a store reads back only with it set (else every such row is
 *   corrupt).
 * check_in_background: the integrity checks (docs/STORE.md, "Integrity"), which read the whole file, do
 *   not run inside ma_store_open_with (which then costs the schema's upgrade, if any, and not the file's
 *   size) but on a thread of the store's, at low priority, against one read snapshot, while every call
 *   is served. If they fail, every later call fails with their code and message (ma_store_check_state);
 *   a store opened in memory or read-only checks at open whatever this says.
 * on_checked: with check_in_background, called once on the check's thread when the check ends (rc 0:
 *   passed; else the failure and its message; seconds: how long it took), not when ma_store_close
 *   interrupts it. May be NULL. */
enum { MA_STORE_SYNC_FULL = 0, MA_STORE_SYNC_NORMAL = 1 };

/* Receives one slot version row: its name, version and record bytes; 0 to go on, or an MA_E* code that
 * stops (and is returned by) the caller. */
typedef int (*ma_store_slot_row_fn)(void *arg, const char *name, uint64_t version, const void *data,
                                    size_t len);

/* Splits a slot table that schema 2 stored whole into what schema 3 stores: the table's state blob
 * (*state, malloc'd) and one row per version, handed to row(). The format is core's (the store keeps
 * both opaque), so the converter comes from above (the registry's reg_slots_split); config is the
 * session's stored config text. 0; MA_ECORRUPT (this table cannot be read: it stays whole, and the
 * session reports it when loaded); any other code stops the upgrade. */
typedef int (*ma_store_slots_split_fn)(const char *config, const void *table, size_t len, void **state,
                                       size_t *state_len, ma_store_slot_row_fn row, void *arg);

/* slots_split: the converter of the schema 2 -> 3 upgrade. NULL: the whole tables stay as they are
 *   (core still reads them) and each is split into rows by its session's next commit. */
typedef struct {
    int synchronous;
    int in_memory;
    int quick_check;
    long long max_pages;
    const char *vfs;
    ma_store_slots_split_fn slots_split;
    int no_row_checksums;
    int check_in_background;
    void (*on_checked)(void *arg, int rc, const char *msg, double seconds);
    void *on_checked_arg;
} ma_store_options;

void ma_store_options_default(ma_store_options *o);
int ma_store_open_with(const char *dir, const ma_store_options *o, ma_store **out, char *err, size_t errlen);

/* Where the integrity checks stand: MA_STORE_CHECKING while a background check runs, 0 once they passed
 * (always 0 for a store checked at open), or the failure's MA_E* code with its message copied to msg
 * (NULL or len 0: not copied). Any thread. */
enum { MA_STORE_CHECKING = 1 };
int ma_store_check_state(ma_store *st, char *msg, size_t len);

/* Closes every connection (checkpointing the WAL). NULL is a no-op. No call may be in flight. */
void ma_store_close(ma_store *st);

/* True when the store was opened read-only because the data directory is not writable: reads are served,
 * every change fails with MA_EIO. */
int ma_store_readonly(const ma_store *st);

/* A session row as stored. Strings and blobs are malloc'd; free with ma_store_session_clear. */
typedef struct {
    char *id;
    char *config_json;
    int64_t created_at, updated_at;   /* ms since epoch */
    uint64_t length;                  /* events */
    size_t slots;                     /* resident slots (for listings) */
    ma_blob backbone, slots_blob, archive_meta;   /* slots_blob: the slot table's state (or, from
                                                     schema 2 and not committed since, the whole table) */
    size_t stored_bytes;              /* bytes this session takes in the database (approximate) */
} ma_store_session;

void ma_store_session_clear(ma_store_session *s);

/* Creates the session row. MA_EEXISTS if the id exists. */
int ma_store_session_create(ma_store *st, const char *id, const char *config_json, int64_t now,
                            char *err, size_t errlen);

/* Loads a session row (with blobs). MA_ENOTFOUND if absent. */
int ma_store_session_load(ma_store *st, const char *id, ma_store_session *out, char *err, size_t errlen);

/* The session row without its blobs, for listings and GET /v1/sessions/{id}: every field of
 * ma_store_session_load but the blobs' data, which stay NULL while their len is the stored size (taken
 * with SQL length(), no blob is read or copied); stored_bytes as ma_store_session_load. Same checks of
 * the blob sizes against the row (MA_ECORRUPT). MA_ENOTFOUND if absent. Clear with
 * ma_store_session_clear. */
int ma_store_session_summary(ma_store *st, const char *id, ma_store_session *out, char *err, size_t errlen);

/* Lists sessions ordered by id, after `after` (NULL: from the start), at most limit; blobs not loaded.
 * *out malloc'd array of n rows, each cleared with ma_store_session_clear, then free(*out). */
int ma_store_session_list(ma_store *st, const char *after, size_t limit, ma_store_session **out, size_t *n,
                          char *err, size_t errlen);

/* Deletes the session, durably, in one small transaction whatever its size (store/purge.c): from its
 * commit no call finds the session (reads, listings, export) and its id can be created again at once, as
 * a new session that never sees the old rows. The rows themselves stay in the file, unreachable, until
 * ma_store_purge_step has deleted them (and overwritten their bytes); the purge queue survives restarts.
 * MA_ENOTFOUND if absent. */
int ma_store_session_delete(ma_store *st, const char *id, char *err, size_t errlen);

/* What one purge step did. */
typedef struct {
    uint64_t rows;       /* rows deleted by the step (the session row included) */
    int64_t sid;         /* the deleted session it worked on (0: the queue was empty) */
    int finished;        /* that session's last row went: its purge is complete */
    uint64_t purging;    /* deleted sessions whose rows are still (partly) in the file, after the step */
    int fast;            /* the step ran with secure_delete FAST (the disk was full): see below */
} ma_store_purge_result;

/* One step of the purge of deleted sessions, in one transaction: the oldest deleted session's rows, up
 * to about max_bytes of them (at least one row, at most 256), with secure_delete ON (freed pages are
 * overwritten); the session's row last, and then a TRUNCATE checkpoint (best effort) so that the WAL
 * keeps no old frame. Steps are not fsync'd (a step lost in a crash is done again). Call it until
 * out->purging is 0; a step on an empty queue does nothing. 0; MA_EIO (nothing changed: the disk is full
 * or failing, or the store is read-only; try again later). A step that fails (a full disk) gives the
 * reserve file back and runs once more, deleting the whole session in one transaction with
 * secure_delete FAST (only the b-tree pages it changes are written: the freed pages keep their bytes
 * until reused, as with every session delete before the purge existed); out->fast says so. Takes the
 * writer for the step's duration. */
int ma_store_purge_step(ma_store *st, size_t max_bytes, ma_store_purge_result *out, char *err, size_t errlen);

/* Deleted sessions awaiting (the end of) their purge: the purge queue's length. */
uint64_t ma_store_purging(ma_store *st);

/* One slot version row of a commit: written once; `rewrite` replaces a stored row (a forgotten slot's
 * versions, whose old bytes secure_delete zeroes; such a commit also truncates the WAL). */
typedef struct {
    const char *name;
    uint64_t version;
    const void *data;
    size_t len;
    int rewrite;
} ma_store_slot_row;
/* ---- safe retries: Idempotency-Key records (docs/STORE.md, "Idempotency keys") ------------------
 * A record is a request's Idempotency-Key and the answer it got, written in the same transaction as the
 * request's change, so a retry after a crash finds exactly the answers of the changes that were
 * committed. Keys live in a space, `scope` (the API uses the session id of the request's path, or ""
 * for POST /v1/sessions). A record belongs to the session whose id is its scope when that session
 * exists at the end of the transaction (it is then deleted with it); otherwise it is detached (a
 * session delete's own key, POST /v1/sessions) and lives until its window ends. Every insert applies
 * the window: the scope keeps its newest `keep` records, and records created before `expire_before`
 * are deleted store-wide. The store keeps the answer opaque. */
typedef struct {
    const char *scope;                /* "" or a session id */
    const char *key;                  /* 1..255 bytes */
    uint64_t fingerprint;             /* of the request (method, path, body): the caller's */
    int status;
    const char *body;                 /* answer body (NUL-terminated), NULL: none */
    const char *etag, *location;      /* answer headers, NULL or "": none */
    int64_t created_at;               /* ms since the epoch */
    size_t keep;                      /* records kept per scope, this one included (0: no count limit) */
    int64_t expire_before;            /* records created before this are deleted (ms; 0: none) */
} ma_store_idem;

/* A stored record (ma_store_idem_get). Strings are malloc'd (NULL when absent); ma_store_idem_row_clear. */
typedef struct {
    uint64_t fingerprint;
    int status;
    char *body, *etag, *location;
    int64_t created_at;
} ma_store_idem_row;

void ma_store_idem_row_clear(ma_store_idem_row *r);

/* The record of (scope, key) created at or after not_before (ms). 0; MA_ENOTFOUND (none, or older);
 * MA_EIO / MA_ECORRUPT / MA_ENOMEM. */
int ma_store_idem_get(ma_store *st, const char *scope, const char *key, int64_t not_before, ma_store_idem_row *out,
                      char *err, size_t errlen);

/* Writes one record (replacing an older one of the same scope and key) in a transaction of its own: the
 * answer of a request that changed nothing (e.g. a PUT of an existing session with the same config).
 * MA_EINVAL (no scope or key), MA_EIO. */
int ma_store_idem_put(ma_store *st, const ma_store_idem *k, char *err, size_t errlen);

/* ma_store_session_create and ma_store_session_delete with the record `k` (NULL: none) written in the
 * same transaction as the change. */
int ma_store_session_create_idem(ma_store *st, const char *id, const char *config_json, int64_t now,
                                 const ma_store_idem *k, char *err, size_t errlen);
int ma_store_session_delete_idem(ma_store *st, const char *id, const ma_store_idem *k, char *err, size_t errlen);

/* Rows of the archive index (table index_blocks; docs/STORE.md, "Index rows"): n rows of blocks first,
 * first+1, ... of build `build`, each lists_bytes of lists and codes_bytes of codes, back to back in two
 * arrays. Opaque here (core/ivf.h makes and reads them). */
typedef struct {
    uint32_t build;
    uint64_t first;
    size_t n;
    const void *lists, *codes;
    size_t lists_bytes, codes_bytes;
} ma_store_index_rows;

/* One mutation of a session, committed in one transaction (deleted content is overwritten: the writer runs
 * with secure_delete, and a commit that erases payloads then truncates the WAL):
 *   - n_events new events with indices first_event .. first_event+n_events-1 (k: n·H·d floats, v: n·H·d_v
 *     floats, payloads: n JSON texts or NULLs; payloads may be NULL as a whole),
 *   - the new blobs (a NULL data pointer leaves that blob as it was),
 *   - slot version rows (n_slot_rows of slot_rows),
 *   - length, resident slot count and updated_at,
 *   - the request's Idempotency-Key record (idem, may be NULL; see ma_store_idem above),
 *   - index rows (written or replaced). */
typedef struct {
    uint64_t first_event;
    size_t n_events;
    size_t k_floats, v_floats;        /* floats per event: H·d and H·d_v */
    const float *k, *v;
    const char *const *payloads;
    ma_blob backbone, slots_blob, archive_meta;
    uint64_t length;
    size_t slots;
    int64_t updated_at;
    const uint64_t *erase;            /* events whose payload rows are deleted (a forgotten slot) */
    size_t n_erase;
    const ma_store_slot_row *slot_rows;   /* slot version rows to write (new ones, or rewrites) */
    size_t n_slot_rows;
    const ma_store_idem *idem;        /* the request's Idempotency-Key record, written with it (NULL: none) */
    ma_store_index_rows index;        /* index rows of this mutation (n = 0: none) */
} ma_store_delta;

int ma_store_commit(ma_store *st, const char *id, const ma_store_delta *d, char *err, size_t errlen);

/* Group commit: n deltas, deltas[i] of session ids[i], in one transaction (one fsync), written in order
 * with ma_store_commit's checks — several deltas of one session must continue each other. Each delta is
 * written whole as ma_store_commit writes it (event blocks and payload rows with their checksums, its
 * slot version rows, its Idempotency-Key record). All or nothing: 0 once every delta is durable; on any
 * failure none is stored and err names the failure. The arrays are only read during the call.
 * ma_store_commit is this with n = 1. */
int ma_store_commit_group(ma_store *st, size_t n, const char *const *ids, const ma_store_delta *const *deltas,
                          char *err, size_t errlen);

/* Where a read of n events puts them. */
typedef struct {
    size_t k_floats, v_floats;   /* floats of one event's key and value (H·d, H·d_v) */
    float *k, *v;                /* room for n·k_floats and n·v_floats */
    char **payloads;             /* NULL, or room for n malloc'd JSON texts or NULLs (ma_store_load_events) */
} ma_store_events;

/* Reads events [first, first+n) of a session into to->k and to->v; to->payloads (if not NULL) gets n
 * malloc'd JSON texts or NULLs. Used as the archive's chunk source. */
int ma_store_load_events(ma_store *st, const char *id, uint64_t first, size_t n, const ma_store_events *to,
                         char *err, size_t errlen);

/* Calls fn for every slot version row of session id in (name, version) order (names compared as bytes),
 * from one read transaction; fn's data is valid during the call. Stops at fn's first nonzero return and
 * returns it (a missing session has no rows). MA_EIO, MA_ENOMEM. The restore's ma_slot_row_source (registry/pager.h). */
int ma_store_slot_rows(ma_store *st, const char *id, ma_store_slot_row_fn fn, void *arg, char *err,
                       size_t errlen);

/* Reads the keys and values of n events of a session, indices events[0..n) strictly ascending, into to->k
 * and to->v (to->payloads is not used), from one read transaction: each block row that holds one of them is
 * read once and checked (checksum, finite floats; docs/STORE.md, "Reading a few events"), then only the
 * events' bytes are copied out. For the sparse read's candidates (no chunk cache involved).
 * 0, MA_ENOTFOUND (no session, or an event past its length), MA_ECORRUPT, MA_EIO, MA_EINVAL (not
 * ascending). */
int ma_store_load_some(ma_store *st, const char *id, const uint64_t *events, size_t n, const ma_store_events *to,
                       char *err, size_t errlen);

/* Reads one event's payload (malloc'd JSON text, or NULL when it has none). */
int ma_store_load_payload(ma_store *st, const char *id, uint64_t event, char **payload, char *err,
                          size_t errlen);

/* (core's chunk and payload sources are adapted to these two calls by registry/pager.h.) */

/* ---- index rows (store/index_rows.c) ---- */

/* Writes (or replaces) index rows of session id in a transaction of their own that is not fsync'd: they
 * become durable with the next commit (a background build's staged rows; the build's swap is a commit).
 * MA_ENOTFOUND, MA_EINVAL, MA_EIO. */
int ma_store_index_put(ma_store *st, const char *id, const ma_store_index_rows *r, char *err, size_t errlen);

/* Calls q->each(q->arg, block, lists, lists_len, codes, codes_len) for the stored rows of build q->build of
 * session id with block in [q->first, q->first+q->n), ascending, from one read snapshot (codes NULL
 * unless q->with_codes); stops at the first non-zero return of each and returns it. 0 otherwise (also
 * when the session or the rows do not exist), MA_EIO. */
typedef int (*ma_store_index_fn)(void *arg, uint64_t block, const void *lists, size_t lists_len, const void *codes,
                                 size_t codes_len);
typedef struct {
    uint32_t build;
    uint64_t first, n;           /* blocks */
    bool with_codes;
    ma_store_index_fn each;
    void *arg;
} ma_store_index_query;
int ma_store_index_scan(ma_store *st, const char *id, const ma_store_index_query *q, char *err, size_t errlen);

/* Deletes every index row of session id whose build is not `keep`, a few rows per transaction (a
 * mutation never waits long for the writer); *dropped (may be NULL) gets their number. 0 (also for a
 * missing session), MA_EIO. */
int ma_store_index_drop(ma_store *st, const char *id, uint32_t keep, size_t *dropped, char *err, size_t errlen);

/* Consistent online snapshot of the whole database into the file `path` (sqlite backup API). */
int ma_store_backup(ma_store *st, const char *path, char *err, size_t errlen);

/* Bytes of the database file(s). */
size_t ma_store_bytes(ma_store *st);

/* Counters for /metrics. Thread-safe; a snapshot. */
typedef struct {
    uint64_t commits;          /* successful write transactions (create, commit, delete) */
    uint64_t failures;         /* write transactions that failed and rolled back */
    uint64_t commit_ns;        /* total wall time of the successful ones, ns */
    uint64_t commit_ns_max;    /* the slowest one, ns */
    uint64_t events_written;
    uint64_t events_read;
    uint64_t sessions_purging; /* deleted sessions whose rows are not all purged yet (ma_store_purging) */
    uint64_t purged_rows;      /* rows deleted by purge steps since open (ma_store_purge_step) */
    uint64_t purged_fast_rows; /* of those, by steps with secure_delete FAST (the disk was full) */
} ma_store_stats;

void ma_store_stats_get(ma_store *st, ma_store_stats *out);

/* ---- one session as a snapshot stream (store/transfer.c; docs/STORE.md, "Snapshots") ------------ */

/* Receives the next `len` bytes of a snapshot; 0, or an MA_E* code that stops the export. */
typedef int (*ma_store_write_fn)(void *ctx, const void *data, size_t len);

/* Fills buf with exactly the next `len` bytes of the snapshot: 0; MA_ENOTFOUND when the input ends
 * before `len` bytes (a truncated snapshot, or the end after the last record); MA_EIO when it cannot
 * be read. */
typedef int (*ma_store_read_fn)(void *ctx, void *buf, size_t len);

typedef struct {
    uint64_t bytes;          /* of the snapshot (export) */
    uint64_t events, blocks, payloads;
    uint64_t slot_rows;
} ma_store_snapshot_stats;

/* What a snapshot's header says, shown to the import's check before anything is written. */
typedef struct {
    char source_id[129];     /* the id it was exported as */
    char *config;            /* the stored config text (owned by the import) */
    int64_t created_at, updated_at;
    uint64_t length, slots;
    uint64_t key_bytes, value_bytes;   /* per event: 4·H·d and 4·H·d_v (0 for a session without events) */
} ma_store_snapshot_header;

/* The caller's check of a header (e.g. the config parses and matches the bytes per event): 0 to go on,
 * or an MA_E* code with a message in err (the import is then refused as MA_SNAP_CORRUPT). */
typedef int (*ma_store_snapshot_check)(void *ctx, const ma_store_snapshot_header *h, char *err, size_t errlen);

/* Why an import was refused (ma_store_session_import's *why with MA_ECORRUPT). */
enum { MA_SNAP_CORRUPT = 1, MA_SNAP_TRUNCATED = 2, MA_SNAP_NEWER = 3 };

/* Streams session `id` as a snapshot (format in store/transfer.c: versioned, CRC-32 checked) to `write`,
 * one record at a time, from one read transaction (consistent even while the session takes writes).
 * Memory: one event block. 0, MA_ENOTFOUND (no such session), MA_EIO / MA_ECORRUPT (reading the store),
 * or what `write` returned. stats (may be NULL) gets the snapshot's size and counts. */
int ma_store_session_export(ma_store *st, const char *id, ma_store_write_fn write, void *ctx,
                            ma_store_snapshot_stats *stats, char *err, size_t errlen);

/* Where an import reads its snapshot, and who checks its header. */
typedef struct {
    ma_store_read_fn read;
    void *ctx;                        /* read's */
    ma_store_snapshot_check check;    /* may be NULL: sees the header before anything is written */
    void *check_ctx;
} ma_store_import_source;

/* Creates session `id` (whatever id the snapshot was exported as) from the snapshot read through
 * src->read, in one transaction: every record is checked against the store's rules and the checksum at
 * the end; on any refusal nothing is written. 0; MA_EEXISTS (the id exists); MA_ECORRUPT with *why =
 * MA_SNAP_CORRUPT / MA_SNAP_TRUNCATED / MA_SNAP_NEWER (the snapshot; err says what); MA_EIO (the store,
 * or `read`); MA_ENOMEM; what src->check returned is refused as MA_SNAP_CORRUPT. Holds the store's
 * writer while it runs. stats (may be NULL) gets the counts. */
int ma_store_session_import(ma_store *st, const char *id, const ma_store_import_source *src,
                            ma_store_snapshot_stats *stats, int *why, char *err, size_t errlen);

#endif
