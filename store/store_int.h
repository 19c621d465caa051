/*
 * store/store_int.h — what the files of the store share; internal to store/ (nothing outside includes it).
 *
 * The store is three files over one sqlite database:
 *   store/store.c    connections (one writer behind a mutex, a pool of readers), open and close, the
 *                    runtime reads and writes of store.h, backup, stats;
 *   store/schema.c   the schema as a list of migrations (creation is migration 0 -> 1), the upgrades of
 *                    older files, and the integrity checks run at open;
 *   store/transfer.c one session as a snapshot stream: export and import;
 *   store/idem.c     the Idempotency-Key records written with the changes (docs/STORE.md).
 * Internal functions are prefixed st_. Every one that fails writes a message "store <file>: ..." into
 * err (when err is not NULL) and returns an MA_E* code (core/error.h).
 */
#ifndef MA_STORE_INT_H
#define MA_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "store/store.h"

#define MA_SCHEMA       8
#define BLOCK           64              /* at most this many events per row of event_blocks (schema 2..6: exactly) */
#define ROW_BYTES       4096            /* key + value bytes a row of event_blocks holds at most (schema 7) */
#define MA_APP_ID       0x6D41744E      /* 'mAtN' */
#define PURGE_PREFIX    "#purge:"       /* a deleted session's row until purged: PURGE_PREFIX<sid> (purge.c) */
#define MAX_READERS     16

/* Events per row of event_blocks for events of kb key and vb value bytes (schema 7; docs/STORE.md, "Events
 * in rows of a page"): as many as fit ROW_BYTES, at least 1, at most BLOCK. A full row of 4 KiB of floats
 * with its record header is just over what sqlite keeps in a 4 KiB leaf, so it keeps its minimum local
 * part there (eight rows share a leaf) and the rest in one overflow page: reading one event reads two
 * pages, not a 32 KiB chain, and deleting a session writes one leaf per eight rows to the WAL, not one
 * per row (rows that fit a leaf whole did). Part of the schema: a session's rows are 0.. of exactly this
 * many events but the last. */
static inline size_t st_row_events(size_t kb, size_t vb)
{
    size_t eb = kb + vb, g = eb ? ROW_BYTES / eb : BLOCK;
    return g < 1 ? 1 : g > BLOCK ? BLOCK : g;
}

enum { BLOB_BACKBONE = 0, BLOB_SLOTS = 1, BLOB_ARCHIVE = 2, N_BLOBS };

/* The cached prepared statements of every connection (SQL in store.c's stmt_sql). */
enum {
    ST_BEGIN, ST_BEGIN_IMMEDIATE, ST_COMMIT, ST_ROLLBACK,
    ST_SID, ST_INSERT_SESSION, ST_PUT_BLOCK, ST_GET_BLOCK, ST_PUT_PAYLOAD, ST_PUT_BLOB, ST_UPDATE_SESSION,
    ST_DELETE_SESSION, ST_LOAD_SESSION, ST_LOAD_BLOBS, ST_BLOB_SIZES, ST_LIST, ST_BLOCKS, ST_PAYLOADS, ST_PAYLOAD,
    ST_ERASE_PAYLOAD, ST_PUT_SLOT_ROW, ST_SLOT_ROW_SIZE, ST_SLOT_ROWS,
    ST_IDEM_PUT, ST_IDEM_PRUNE_SCOPE, ST_IDEM_PRUNE_AGE, ST_IDEM_GET,   /* store/idem.c */
    N_STMTS
};

typedef struct conn conn;

struct conn {
    sqlite3 *db;
    sqlite3_stmt *st[N_STMTS];
    struct conn *next_free;
};

struct ma_store {
    char *path;                 /* the file (or memdb name) shown in messages */
    char *uri;                  /* what sqlite3_open_v2 gets */
    int open_flags;
    const char *vfs;            /* NULL: default */
    ma_store_options opt;
    bool readonly;
    int lock_fd;                /* <dir>/memattn.lock, flock'd while open (-1: none) */
    char *reserve_path;         /* <dir>/memattn.reserve, disk space kept for deletes (NULL: none) */
    bool reserve_held;          /* the reserve file holds its full size */
    bool reserve_lent;          /* a delete or purge step on a full disk gave it back: made again when the
                                   purge queue is empty (store/purge.c) */

    pthread_mutex_t wlock;      /* the writer connection and its transaction */
    conn *writer;

    pthread_mutex_t rlock;      /* the reader pool */
    pthread_cond_t rfree;
    conn *readers[MAX_READERS];
    size_t n_readers;
    conn *free_list;

    _Atomic uint64_t commits, failures, commit_ns, commit_ns_max, events_written, events_read;
    _Atomic uint64_t purging, purged_rows;   /* the purge queue's length; rows purged since open */
    _Atomic uint64_t purged_fast_rows;       /* of those, by steps with secure_delete FAST (a full disk) */

    /* The integrity check in the background (ma_store_options.check_in_background; schema.c). `checked`
     * is MA_STORE_CHECKING, 0, or the failure's code, whose message check_msg holds (written before
     * `checked` is stored, read after it is loaded). check_stop interrupts it at close. */
    pthread_t check_thread;
    bool check_started;
    atomic_int checked;
    atomic_int check_stop;
    char check_msg[512];
};

/* ---- store.c: helpers and connections ---- */

/* printf into err (NULL or errlen 0: nothing). */
void st_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Records sqlite's message for a failed call `what` of db (NULL: from rc) and returns the MA_E* code. */
int st_fail_db(ma_store *st, sqlite3 *db, int rc, char *err, size_t errlen, const char *what);

/* Opens a connection with the store's URI, flags and VFS and sets its pragmas (reader: query_only and a
 * small page cache). st_conn_close(NULL) is a no-op. */
int st_conn_open(ma_store *st, bool reader, conn **out, char *err, size_t errlen);
void st_conn_close(conn *c);

/* The cached prepared statement i of c (prepared on first use); NULL with the message in err. */
sqlite3_stmt *st_stmt(ma_store *st, conn *c, int i, char *err, size_t errlen);

/* Runs cached statement i, which returns no rows (BEGIN/COMMIT/...). SQLITE_OK or the sqlite code. */
int st_run(ma_store *st, conn *c, int i, char *err, size_t errlen);

/* Binds session id to parameter 1 of s and steps it onto the session's row: 0 (s stands on the row),
 * MA_ENOTFOUND ("session '<id>' does not exist"), or sqlite's failure reported as `what` (s then reset). */
int st_session_step(ma_store *st, conn *c, sqlite3_stmt *s, const char *id, const char *what, char *err,
                    size_t errlen);

/* Rolls back whatever transaction c has open (after a failure; its own failure is moot). */
void st_rollback(ma_store *st, conn *c);

/* sqlite3_exec of sql on c; 0 or the mapped code with `what` in the message. */
int st_exec_sql(ma_store *st, conn *c, const char *sql, char *err, size_t errlen, const char *what);

/* Runs a one-row, one-column statement (a pragma) and copies its text result (no row: ""). */
int st_pragma_text(ma_store *st, conn *c, const char *sql, char *out, size_t outlen, char *err, size_t errlen);

/* A reader connection for this thread's call (opened on demand; waits while MAX_READERS are busy); give it
 * back with st_reader_put. */
int st_reader_get(ma_store *st, conn **out, char *err, size_t errlen);
void st_reader_put(ma_store *st, conn *c);

/* Takes the writer lock and begins an immediate transaction on st->writer; the lock is held whatever the
 * result. Every call is paired with st_write_end, which commits when ret is 0 (a failed commit is
 * reported as `what`), else rolls back; counts the transaction and releases the lock. Returns the result. */
int st_write_begin(ma_store *st, uint64_t *t0, char *err, size_t errlen);
int st_write_end(ma_store *st, uint64_t t0, int ret, const char *what, char *err, size_t errlen);

/* One row of event_blocks: block number, event count, and its key and value bytes (klen, vlen: the whole
 * row's, n events of the same size each). */
typedef struct {
    uint64_t block;
    size_t n;
    const void *k, *v;
    size_t klen, vlen;
} st_block;

/* The row of event_blocks that s stands on, from its columns 0..3 — every SELECT of blocks reads
 * "block, n, k, v, ck" in that order (ck, column 4, is st_block_check's). The bytes are valid until s
 * steps or resets. */
st_block st_block_at(sqlite3_stmt *s);

/* A payload row: its event index and JSON text (len bytes, no NUL needed). */
typedef struct {
    uint64_t idx;
    const char *text;
    size_t len;
} st_payload;

/* A slot version row: name (name_len bytes, -1: up to its NUL), version, record bytes. */
typedef struct {
    const char *name;
    int name_len;
    uint64_t version;
    const void *data;
    size_t len;
} st_slot_row;

/* Writes (or rewrites) block b of session sid with its checksum (st_block_sum). */
int st_put_block(ma_store *st, conn *c, int64_t sid, const st_block *b, char *err, size_t errlen);

/* Writes the payload row of event idx of session sid (len bytes of p, -1: up to its NUL), with its checksum
 * (st_payload_sum). */
int st_put_payload(ma_store *st, conn *c, int64_t sid, uint64_t idx, const char *p, int len, char *err,
                   size_t errlen);

/* Writes (or replaces) the slot version row r (name, version) of session sid. */
int st_put_slot_row(ma_store *st, conn *c, int64_t sid, const st_slot_row *r, char *err, size_t errlen);
/* ---- idem.c: Idempotency-Key records ---- */

/* Writes record k (and applies its window) inside the writer's open transaction. 0 or MA_EINVAL / MA_EIO. */
int st_idem_write(ma_store *st, conn *c, const ma_store_idem *k, char *err, size_t errlen);

/* ---- store.c: row checksums (docs/STORE.md, "Row checksums") ---- */

/* The checksum column of an event_blocks row: ma_checksum64 of its key bytes then its value bytes, seeded
 * with its block number and event count (a row moved to another place fails too). */
uint64_t st_block_sum(const st_block *b);

/* The checksum column of a payloads row: ma_checksum64 of its text, seeded with its event index. */
uint64_t st_payload_sum(uint64_t idx, const void *text, size_t len);

/* Checks one event block b read back from s (st_block_at) before anything of it is used: the stored
 * checksum (ck, column 4 of s; NULL counts as wrong) against the bytes, and every float of k and v
 * finite. Whoever reads a block — a range read, the commit's partial block, the export — calls it on the
 * whole row. 0, or MA_ECORRUPT with a message naming the session (id) and the block. */
int st_block_check(ma_store *st, const char *id, sqlite3_stmt *s, const st_block *b, char *err, size_t errlen);

/* The same for a payload row p (its ck in column ck_col of s). */
int st_payload_check(ma_store *st, const char *id, sqlite3_stmt *s, int ck_col, const st_payload *p, char *err,
                     size_t errlen);

/* ---- index_rows.c ---- */

/* Writes (or replaces) the index rows r of session sid on c, inside the caller's transaction. */
int st_put_index_rows(ma_store *st, conn *c, int64_t sid, const ma_store_index_rows *r, char *err, size_t errlen);

/* ---- store.c: the disk-space reserve for deletes (writer lock held) ---- */

/* Allocates <dir>/memattn.reserve if it is not held: as much of its size (at most max_bytes unless 0) as
 * the disk has, best effort. */
void st_reserve_make(ma_store *st, size_t max_bytes);

/* Gives the reserve's blocks back to the file system; true when there was a reserve file. */
bool st_reserve_release(ma_store *st);

/* ---- purge.c: deleted sessions ---- */

/* The delete of session id inside the caller's write transaction on c: its row renamed PURGE_PREFIX<sid>,
 * its sid queued in `purge`, its Idempotency-Key records deleted. MA_ENOTFOUND, MA_EIO. */
int st_tombstone(ma_store *st, conn *c, const char *id, char *err, size_t errlen);

/* Sets st->purging from the purge table (at open). */
int st_purge_count(ma_store *st, char *err, size_t errlen);

/* ---- schema.c: schema, upgrades, integrity ---- */

/* Brings the writer's database to schema MA_SCHEMA: creates it when empty, runs the missing
 * migrations in one transaction; refuses a newer version or another application's file (MA_ECORRUPT),
 * and an upgrade in a read-only directory (MA_EIO). */
int st_migrate(ma_store *st, char *err, size_t errlen);

/* The open-time integrity checks of docs/STORE.md (quick_check beside the row checks). MA_ECORRUPT for
 * a damaged file, MA_EIO when it cannot be read. */
int st_check_integrity(ma_store *st, char *err, size_t errlen);

/* Starts the background check (ma_store_options.check_in_background): 0, or the failure to start a thread
 * (MA_ENOMEM). st_check_stop interrupts and joins it (a no-op when none was started). */
int st_check_start(ma_store *st, char *err, size_t errlen);
void st_check_stop(ma_store *st);

/* 0, or — once a background check has failed — its code with its message in err: every call of the store
 * starts with this gate (st_reader_get, st_write_begin, the index rows' writer). */
int st_check_gate(ma_store *st, char *err, size_t errlen);

#endif
