/*
 * store/store.c — durable sessions in sqlite3 (store/store.h; docs/STORE.md): connections, open and close,
 * the runtime reads and writes, backup and stats. The schema, its upgrades and the integrity checks are
 * in store/schema.c; what the two share is store/store_int.h.
 *
 * Design
 *  - One database file <dir>/memattn.db in WAL mode. Schema (version MA_SCHEMA in PRAGMA user_version,
 *    application_id 'mAtN'):
 *        sessions(sid INTEGER PRIMARY KEY, id TEXT UNIQUE, config, created_at, updated_at, length, slots,
 *                 event_bytes, blob_bytes)
 *        blobs(sid, kind, data)              kind 0 backbone, 1 slot table, 2 archive meta; one row each,
 *                                            so a commit rewrites only the blobs that changed
 *        event_blocks(sid, block, n, k, v, ck)  rowid table, primary key (sid, block): events block·G ..
 *                                            block·G+n-1, keys and values back to back, G = st_row_events
 *                                            (as many as fit 4 KiB, at most 64: 8 at H·d = 64); all
 *                                            blocks full but a session's last. A row per G events, not
 *                                            per event: the per-row cost bounded durable ingest (schema
 *                                            1); a page of events, so that reading one event (a sparse
 *                                            read's candidate) reads a leaf and one overflow page (7)
 *        payloads(sid, idx, payload)         WITHOUT ROWID, only for the events that have one
 *        idempotency(scope, key, ...)        Idempotency-Key records with their answers (store/idem.c)
 *        index_blocks(sid, build, block, lists, codes)   rowid table: the archive index's rows, one per
 *                                            aligned block of 1,024 events and build (store/index_rows.c)
 *    Children reference sessions(sid) ON DELETE CASCADE, so deleting a session is one statement.
 *    Floats are stored as little-endian float32 (static-asserted host order).
 *  - Durability: synchronous=FULL by default (a commit is fsync'd to the WAL before it returns; it
 *    survives power loss), NORMAL on request (survives a process crash only). Measured in
 *    bench/bench_store.c; the choice is argued in docs/STORE.md.
 *  - Threads: one writer connection behind a mutex (sqlite allows one writer at a time anyway, and this
 *    keeps BEGIN IMMEDIATE from ever waiting on ourselves) and a pool of reader connections, created on
 *    demand up to MAX_READERS; in WAL a reader never blocks the writer nor the writer a reader. Every
 *    connection caches its prepared statements. Connections are opened NOMUTEX: our locks serialise them.
 *  - A commit rewrites the session's partial last block (read, topped up) and inserts the remaining
 *    events as new blocks bound straight from the caller's arrays: at most one block rewritten per commit.
 *  - Integrity at open (quick_check beside the row checks) and the schema upgrades are in schema.c
 *    (store/store_int.h). At load, here: blob byte totals against the session row, each block's
 *    key/value bytes against what the caller expects, coverage.
 *  - One process per data directory (an flock on <dir>/memattn.lock); a second open fails with MA_EBUSY.
 *  - Failure: every write runs in one transaction; any error rolls it back and returns MA_EIO (or
 *    MA_ECORRUPT / MA_ENOMEM) with sqlite's message. A data directory that is not writable opens
 *    read-only (immutable) so stored sessions are still served; every change then fails with MA_EIO.
 *
 * Deliberately not done: no caching of rows (the registry caches sessions), no checksums inside blobs (the
 * core's serialisations carry their own; sqlite has no page checksums, see docs/STORE.md), no vacuum
 * after deletes (freed pages are reused).
 */
#include "store/store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <fcntl.h>
#include <libgen.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/error.h"
#include "core/hash.h"
#include "store/store_int.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "events are stored as little-endian float32");

#define BUSY_TIMEOUT_MS 5000
#define RESERVE_BYTES   (256 * 1024)    /* <dir>/memattn.reserve: disk space kept for deletes */


#define SESSION_COLS "sid, id, config, created_at, updated_at, length, slots, event_bytes, blob_bytes, slot_bytes"

static const char *const stmt_sql[N_STMTS] = {
    [ST_BEGIN] = "BEGIN",
    [ST_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SID] = "SELECT sid, length FROM sessions WHERE id = ?1",
    [ST_INSERT_SESSION] = "INSERT INTO sessions(id, config, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
    [ST_PUT_BLOCK] = "INSERT OR REPLACE INTO event_blocks(sid, block, n, k, v, ck) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_GET_BLOCK] = "SELECT block, n, k, v, ck FROM event_blocks WHERE sid = ?1 AND block = ?2",
    [ST_PUT_PAYLOAD] = "INSERT INTO payloads(sid, idx, payload, ck) VALUES (?1, ?2, ?3, ?4)",
    [ST_PUT_BLOB] = "INSERT OR REPLACE INTO blobs(sid, kind, data) VALUES (?1, ?2, ?3)",
    [ST_UPDATE_SESSION] =
        "UPDATE sessions SET length = ?2, slots = ?3, updated_at = ?4, event_bytes = event_bytes + ?5,"
        " blob_bytes = (SELECT coalesce(sum(length(data)), 0) FROM blobs WHERE sid = ?1),"
        " slot_bytes = slot_bytes + ?6 WHERE sid = ?1",
    [ST_LOAD_SESSION] = "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1",
    [ST_LOAD_BLOBS] = "SELECT kind, data FROM blobs WHERE sid = ?1",
    [ST_BLOB_SIZES] = "SELECT kind, length(data) FROM blobs WHERE sid = ?1",
    [ST_LIST] = "SELECT " SESSION_COLS " FROM sessions WHERE id > ?1 AND sid NOT IN (SELECT sid FROM purge)"
                " ORDER BY id LIMIT ?2",   /* a deleted session's row stays until purged (store/purge.c) */
    [ST_BLOCKS] = "SELECT block, n, k, v, ck FROM event_blocks WHERE sid = (SELECT sid FROM sessions WHERE id = ?1)"
                  " AND block >= ?2 AND block <= ?3 ORDER BY block",
    [ST_PAYLOADS] = "SELECT idx, payload, ck FROM payloads WHERE sid = (SELECT sid FROM sessions WHERE id = ?1)"
                    " AND idx >= ?2 AND idx < ?3 ORDER BY idx",
    [ST_PAYLOAD] = "SELECT payload, ck FROM payloads WHERE sid = (SELECT sid FROM sessions WHERE id = ?1)"
                   " AND idx = ?2",
    [ST_ERASE_PAYLOAD] = "DELETE FROM payloads WHERE sid = ?1 AND idx = ?2",
    [ST_PUT_SLOT_ROW] = "INSERT OR REPLACE INTO slot_versions(sid, name, version, data) VALUES (?1, ?2, ?3, ?4)",
    [ST_SLOT_ROW_SIZE] = "SELECT length(data) FROM slot_versions WHERE sid = ?1 AND name = ?2 AND version = ?3",
    [ST_SLOT_ROWS] = "SELECT name, version, data FROM slot_versions WHERE sid = (SELECT sid FROM sessions WHERE"
                     " id = ?1) ORDER BY name, version",
    /* Idempotency-Key records (store/idem.c): a record belongs to the session named by its scope, if any */
    [ST_IDEM_PUT] =
        "INSERT OR REPLACE INTO idempotency(scope, key, seq, sid, fingerprint, status, etag, location, body, created_at)"
        " VALUES (?1, ?2, coalesce((SELECT max(seq) FROM idempotency WHERE scope = ?1), 0) + 1,"
        " (SELECT sid FROM sessions WHERE id = ?1), ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_IDEM_PRUNE_SCOPE] = "DELETE FROM idempotency WHERE scope = ?1"
                            " AND seq <= (SELECT max(seq) FROM idempotency WHERE scope = ?1) - ?2",
    [ST_IDEM_PRUNE_AGE] = "DELETE FROM idempotency WHERE created_at < ?1",
    [ST_IDEM_GET] = "SELECT fingerprint, status, etag, location, body, created_at FROM idempotency"
                    " WHERE scope = ?1 AND key = ?2 AND created_at >= ?3",
};

/* ---- small helpers ---------------------------------------------------------------------------- */

void st_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The MA_E* code for a failed sqlite call (constraint violations are mapped by the callers). */
static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return MA_ECORRUPT;
    case SQLITE_NOMEM:
        return MA_ENOMEM;
    default:
        return MA_EIO;
    }
}

/* Records sqlite's message for a failed call `what` and returns the mapped code. */
int st_fail_db(ma_store *st, sqlite3 *db, int rc, char *err, size_t errlen, const char *what)
{
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    st_seterr(err, errlen, "store %s: %s failed: %s (%s)%s", st->path, what, msg, sqlite3_errstr(rc),
              st->readonly ? "; the data directory is read-only, the store serves reads only" : "");
    return map_rc(rc);
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Percent-encodes a path for a file: URI (RFC 3986 unreserved and '/' pass through). */
static char *uri_path(const char *path, const char *query)
{
    size_t n = strlen(path), q = strlen(query);
    char *out = malloc(5 + 3 * n + q + 1), *p = out;
    if (!out)
        return NULL;
    p += sprintf(p, "file:");
    for (const unsigned char *s = (const unsigned char *)path; *s; s++) {
        if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
            strchr("/-._~", *s))
            *p++ = (char)*s;
        else
            p += sprintf(p, "%%%02X", *s);
    }
    memcpy(p, query, q + 1);
    return out;
}

static int sync_path(const char *path, bool dir);

/* ---- connections ------------------------------------------------------------------------------ */

void st_conn_close(conn *c)
{
    if (!c)
        return;
    for (int i = 0; i < N_STMTS; i++)
        sqlite3_finalize(c->st[i]);
    sqlite3_close(c->db);
    free(c);
}

/* The cached prepared statement i of c (prepared on first use). NULL with the message in err. */
sqlite3_stmt *st_stmt(ma_store *st, conn *c, int i, char *err, size_t errlen)
{
    if (!c->st[i]) {
        int rc = sqlite3_prepare_v3(c->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &c->st[i], NULL);
        if (rc != SQLITE_OK) {
            st_fail_db(st, c->db, rc, err, errlen, "preparing a statement");
            return NULL;
        }
    }
    return c->st[i];
}

/* Runs a statement that returns no rows (BEGIN/COMMIT/...). 0 or the sqlite code. */
int st_run(ma_store *st, conn *c, int i, char *err, size_t errlen)
{
    sqlite3_stmt *s = st_stmt(st, c, i, err, errlen);
    if (!s)
        return SQLITE_ERROR;
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Rolls back whatever transaction c has open (after a failure; its own failure is moot). */
void st_rollback(ma_store *st, conn *c)
{
    if (!sqlite3_get_autocommit(c->db))
        st_run(st, c, ST_ROLLBACK, NULL, 0);
}

int st_exec_sql(ma_store *st, conn *c, const char *sql, char *err, size_t errlen, const char *what)
{
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : st_fail_db(st, c->db, rc, err, errlen, what);
}

/* Runs a one-row, one-column pragma and copies its text result (NULL row: ""). */
int st_pragma_text(ma_store *st, conn *c, const char *sql, char *out, size_t outlen, char *err,
                   size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(s, 0);
            snprintf(out, outlen, "%s", t ? (const char *)t : "");
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            out[0] = '\0';
            rc = SQLITE_OK;
        }
    }
    int ret = rc == SQLITE_OK ? 0 : st_fail_db(st, c->db, rc, err, errlen, sql);
    sqlite3_finalize(s);
    return ret;
}

int st_conn_open(ma_store *st, bool reader, conn **out, char *err, size_t errlen)
{
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        st_seterr(err, errlen, "store %s: out of memory", st->path);
        return MA_ENOMEM;
    }
    int rc = sqlite3_open_v2(st->uri, &c->db, st->open_flags, st->vfs);
    if (rc != SQLITE_OK) {
        int ret = st_fail_db(st, c->db, rc, err, errlen, "opening the database");
        st_conn_close(c);
        return ret;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    /* Readers: a small page cache each (the OS caches the file; 16 readers x 512 KiB bounds what the
     * store adds to the daemon's resident memory). Writer: the WAL is truncated back to 64 MiB after a
     * checkpoint that a long reader (a backup) let grow; secure_delete FAST (Debian's sqlite defaults to
     * ON, which overwrites every freed page: deleting a session then writes its whole size into the WAL,
     * and so fails on a full disk; FAST clears deleted content only in pages written anyway). */
    char sql[256];
    snprintf(sql, sizeof sql, "PRAGMA foreign_keys = ON; PRAGMA synchronous = %s;%s",
             st->opt.synchronous == MA_STORE_SYNC_NORMAL ? "NORMAL" : "FULL",
             reader ? " PRAGMA query_only = ON; PRAGMA cache_size = -512;"
                    : " PRAGMA journal_size_limit = 67108864; PRAGMA secure_delete = ON;");
    int ret = st_exec_sql(st, c, sql, err, errlen, "setting connection pragmas");
    if (ret) {
        st_conn_close(c);
        return ret;
    }
    *out = c;
    return 0;
}

/* A reader connection for this thread's call, opened on demand; waits if MAX_READERS are busy. */
int st_reader_get(ma_store *st, conn **out, char *err, size_t errlen)
{
    int gate = st_check_gate(st, err, errlen);
    if (gate)
        return gate;
    pthread_mutex_lock(&st->rlock);
    for (;;) {
        if (st->free_list) {
            *out = st->free_list;
            st->free_list = (*out)->next_free;
            pthread_mutex_unlock(&st->rlock);
            return 0;
        }
        if (st->n_readers < MAX_READERS) {
            st->n_readers++;   /* reserve the slot, open outside the lock */
            pthread_mutex_unlock(&st->rlock);
            conn *c = NULL;
            int ret = st_conn_open(st, true, &c, err, errlen);
            pthread_mutex_lock(&st->rlock);
            if (ret) {
                st->n_readers--;
                pthread_cond_signal(&st->rfree);
                pthread_mutex_unlock(&st->rlock);
                return ret;
            }
            for (size_t i = 0; i < MAX_READERS; i++) {
                if (!st->readers[i]) {
                    st->readers[i] = c;
                    break;
                }
            }
            pthread_mutex_unlock(&st->rlock);
            *out = c;
            return 0;
        }
        pthread_cond_wait(&st->rfree, &st->rlock);
    }
}

void st_reader_put(ma_store *st, conn *c)
{
    pthread_mutex_lock(&st->rlock);
    c->next_free = st->free_list;
    st->free_list = c;
    pthread_cond_signal(&st->rfree);
    pthread_mutex_unlock(&st->rlock);
}

int st_session_step(ma_store *st, conn *c, sqlite3_stmt *s, const char *id, const char *what, char *err,
                    size_t errlen)
{
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        return 0;
    sqlite3_reset(s);
    if (rc == SQLITE_DONE) {
        st_seterr(err, errlen, "session '%s' does not exist", id);
        return MA_ENOTFOUND;
    }
    return st_fail_db(st, c->db, rc, err, errlen, what);
}

/* ---- row checksums (docs/STORE.md, "Row checksums") --------------------------------------------- */

uint64_t st_block_sum(const st_block *b)
{
    uint64_t seed = ma_fnv1a64_byte(MA_FNV_OFFSET ^ b->block * MA_FNV_PRIME, (unsigned char)b->n);
    return ma_checksum64(ma_checksum64(seed, b->k, b->klen), b->v, b->vlen);
}

st_block st_block_at(sqlite3_stmt *s)
{
    return (st_block){
        .block = (uint64_t)sqlite3_column_int64(s, 0),
        .n = (size_t)sqlite3_column_int64(s, 1),
        .k = sqlite3_column_blob(s, 2),
        .klen = (size_t)sqlite3_column_bytes(s, 2),
        .v = sqlite3_column_blob(s, 3),
        .vlen = (size_t)sqlite3_column_bytes(s, 3),
    };
}

uint64_t st_payload_sum(uint64_t idx, const void *text, size_t len)
{
    return ma_checksum64(MA_FNV_OFFSET ^ ~idx * MA_FNV_PRIME, text, len);
}

/* No NaN or infinity among the len/4 little-endian float32 of p (exponent bits all ones). */
static bool all_finite(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint32_t bad = 0;
    for (size_t i = 0; i + 4 <= len; i += 4) {
        uint32_t w;
        memcpy(&w, b + i, 4);
        bad |= (uint32_t)((w & 0x7f800000u) == 0x7f800000u);
    }
    return !bad;
}

/* The stored checksum in column col of s against want. */
static bool sum_matches(sqlite3_stmt *s, int col, uint64_t want)
{
    return sqlite3_column_type(s, col) == SQLITE_INTEGER && (uint64_t)sqlite3_column_int64(s, col) == want;
}

int st_block_check(ma_store *st, const char *id, sqlite3_stmt *s, const st_block *b, char *err, size_t errlen)
{
    enum { CK_COL = 4 };
    if (st->opt.no_row_checksums)
        return 0;
    if (!sum_matches(s, CK_COL, st_block_sum(b))) {
        /* the events a row holds: st_row_events of the row's key/value sizes (the callers checked them) */
        uint64_t g = b->n ? st_row_events(b->klen / b->n, b->vlen / b->n) : BLOCK;
        st_seterr(err, errlen, "store %s: session '%s' event block %" PRIu64 " (events %" PRIu64 "..%" PRIu64
                  "): %s (a damaged row: not served)", st->path, id, b->block,
                  b->block * g, b->block * g + b->n - 1,
                  sqlite3_column_type(s, CK_COL) == SQLITE_NULL ? "no checksum" : "checksum mismatch");
        return MA_ECORRUPT;
    }
    if (!all_finite(b->k, b->klen) || !all_finite(b->v, b->vlen)) {
        st_seterr(err, errlen, "store %s: session '%s' event block %" PRIu64 " holds a NaN or infinity (it is not "
                  "served)", st->path, id, b->block);
        return MA_ECORRUPT;
    }
    return 0;
}

int st_payload_check(ma_store *st, const char *id, sqlite3_stmt *s, int ck_col, const st_payload *p, char *err,
                     size_t errlen)
{
    if (st->opt.no_row_checksums || sum_matches(s, ck_col, st_payload_sum(p->idx, p->text, p->len)))
        return 0;
    st_seterr(err, errlen, "store %s: session '%s' payload of event %" PRIu64 ": %s (a damaged row: not served)",
              st->path, id, p->idx,
              sqlite3_column_type(s, ck_col) == SQLITE_NULL ? "no checksum" : "checksum mismatch");
    return MA_ECORRUPT;
}

/* ---- rows of event blocks and payloads (commits, and the schema upgrade in schema.c) ------------- */

int st_put_block(ma_store *st, conn *c, int64_t sid, const st_block *b, char *err, size_t errlen)
{
    sqlite3_stmt *s = st_stmt(st, c, ST_PUT_BLOCK, err, errlen);
    if (!s)
        return MA_EIO;
    sqlite3_bind_int64(s, 1, sid);
    sqlite3_bind_int64(s, 2, (int64_t)b->block);
    sqlite3_bind_int64(s, 3, (int64_t)b->n);
    sqlite3_bind_blob64(s, 4, b->k, b->klen, SQLITE_STATIC);
    sqlite3_bind_blob64(s, 5, b->v, b->vlen, SQLITE_STATIC);
    if (st->opt.no_row_checksums)
        sqlite3_bind_null(s, 6);
    else
        sqlite3_bind_int64(s, 6, (int64_t)st_block_sum(b));
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : st_fail_db(st, c->db, rc, err, errlen, "writing event blocks");
}

int st_put_payload(ma_store *st, conn *c, int64_t sid, uint64_t idx, const char *p, int len, char *err,
                   size_t errlen)
{
    sqlite3_stmt *s = st_stmt(st, c, ST_PUT_PAYLOAD, err, errlen);
    if (!s)
        return MA_EIO;
    sqlite3_bind_int64(s, 1, sid);
    sqlite3_bind_int64(s, 2, (int64_t)idx);
    sqlite3_bind_text(s, 3, p, len, SQLITE_STATIC);
    if (st->opt.no_row_checksums)
        sqlite3_bind_null(s, 4);
    else
        sqlite3_bind_int64(s, 4, (int64_t)st_payload_sum(idx, p, len < 0 ? strlen(p) : (size_t)len));
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : st_fail_db(st, c->db, rc, err, errlen, "writing payloads");
}

int st_put_slot_row(ma_store *st, conn *c, int64_t sid, const st_slot_row *r, char *err, size_t errlen)
{
    sqlite3_stmt *s = st_stmt(st, c, ST_PUT_SLOT_ROW, err, errlen);
    if (!s)
        return MA_EIO;
    sqlite3_bind_int64(s, 1, sid);
    sqlite3_bind_text(s, 2, r->name, r->name_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, (int64_t)r->version);
    sqlite3_bind_blob(s, 4, r->data, (int)r->len, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : st_fail_db(st, c->db, rc, err, errlen, "writing slot versions");
}

/* Decides how to open <dir>/memattn.db: read-write, or read-only when the directory or file is not
 * writable (an immutable open, since sqlite cannot create the WAL index there). */
static int choose_mode(ma_store *st, const char *dir, char *err, size_t errlen)
{
    bool dir_rw = access(dir, W_OK) == 0;
    int dir_errno = errno;
    bool file_exists = access(st->path, F_OK) == 0;
    bool file_rw = !file_exists || access(st->path, W_OK) == 0;
    if (dir_rw && file_rw) {
        st->uri = uri_path(st->path, "");
        st->open_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
        return st->uri ? 0 : MA_ENOMEM;
    }
    if (!file_exists) {
        st_seterr(err, errlen, "store %s: cannot create the database: the data directory %s is not writable "
                  "(%s)", st->path, dir, strerror(dir_errno));
        return MA_EIO;
    }
    char wal[4096];
    struct stat sb;
    snprintf(wal, sizeof wal, "%s-wal", st->path);
    if (!dir_rw && stat(wal, &sb) == 0 && sb.st_size > 0) {
        st_seterr(err, errlen, "store %s: the data directory is read-only and %s holds commits that only a "
                  "writable directory can recover; make it writable and restart", st->path, wal);
        return MA_EIO;
    }
    st->readonly = true;
    st->uri = uri_path(st->path, dir_rw ? "?mode=ro" : "?mode=ro&immutable=1");
    st->open_flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
    return st->uri ? 0 : MA_ENOMEM;
}

/* One daemon per data directory: each caches sessions in memory, so a second writer would make the
 * caches diverge from the file. An flock on <dir>/memattn.lock (not on the database: closing any other
 * descriptor of the database would drop sqlite's POSIX locks) is released by the kernel if we die. */
static int lock_dir(ma_store *st, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/memattn.lock", dir);
    st->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (st->lock_fd < 0) {
        st_seterr(err, errlen, "store: cannot create %s: %s", path, strerror(errno));
        return MA_EIO;
    }
    if (flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(st->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        st_seterr(err, errlen, "store: the data directory %s is in use by another process (pid %s)", dir,
                  pid[0] ? pid : "unknown");
        return MA_EBUSY;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (ftruncate(st->lock_fd, 0) != 0 || pwrite(st->lock_fd, buf, (size_t)n, 0) != n) {
        /* the pid is only for the message above; the lock itself is held */
    }
    return 0;
}

void ma_store_options_default(ma_store_options *o)
{
    *o = (ma_store_options){.synchronous = MA_STORE_SYNC_FULL, .quick_check = 1};
}

int ma_store_open(const char *dir, ma_store **out, char *err, size_t errlen)
{
    ma_store_options o;
    ma_store_options_default(&o);
    return ma_store_open_with(dir, &o, out, err, errlen);
}

int ma_store_open_with(const char *dir, const ma_store_options *o, ma_store **out, char *err, size_t errlen)
{
    static atomic_uint memdb_seq;
    int ret = MA_ENOMEM;
    *out = NULL;
    if (!o->in_memory && (!dir || !*dir)) {
        st_seterr(err, errlen, "store: no data directory given");
        return MA_EINVAL;
    }
    ma_store *st = calloc(1, sizeof *st);
    if (!st) {
        st_seterr(err, errlen, "store: out of memory");
        return MA_ENOMEM;
    }
    st->opt = *o;
    st->lock_fd = -1;
    pthread_mutex_init(&st->wlock, NULL);
    pthread_mutex_init(&st->rlock, NULL);
    pthread_cond_init(&st->rfree, NULL);

    if (o->in_memory) {
        char name[64];
        snprintf(name, sizeof name, "file:/memattn-%d-%u?vfs=memdb", (int)getpid(), atomic_fetch_add(&memdb_seq, 1));
        st->path = strdup(name);
        st->uri = strdup(name);
        st->open_flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
        if (!st->path || !st->uri)
            goto oom;
    } else {
        if (mkdir(dir, 0755) == 0) {
            /* the new directory's entry must survive a power cut like the commits inside it */
            char *parent = strdup(dir);
            if (!parent)
                goto oom;
            sync_path(dirname(parent), true);
            free(parent);
        } else if (errno != EEXIST) {
            st_seterr(err, errlen, "store: cannot create the data directory %s: %s", dir, strerror(errno));
            ret = MA_EIO;
            goto fail;
        }
        size_t n = strlen(dir) + sizeof "/memattn.db";
        if (!(st->path = malloc(n)))
            goto oom;
        snprintf(st->path, n, "%s/memattn.db", dir);
        if ((ret = choose_mode(st, dir, err, errlen)) || (!st->readonly && (ret = lock_dir(st, dir, err, errlen))))
            goto fail;
        if (!st->readonly) {
            n = strlen(dir) + sizeof "/memattn.reserve";
            if (!(st->reserve_path = malloc(n)))
                goto oom;
            snprintf(st->reserve_path, n, "%s/memattn.reserve", dir);
            st_reserve_make(st, 0);   /* best effort: a disk already full opens without one */
        }
        st->vfs = o->vfs;
    }

    if ((ret = st_conn_open(st, false, &st->writer, err, errlen)))
        goto fail;
    /* The first read of the header: a file that is not a database fails here. */
    char buf[64];
    if ((ret = st_pragma_text(st, st->writer, "PRAGMA user_version", buf, sizeof buf, err, errlen)))
        goto fail;
    if (!o->in_memory && !st->readonly) {
        if ((ret = st_pragma_text(st, st->writer, "PRAGMA journal_mode = WAL", buf, sizeof buf, err, errlen)))
            goto fail;
        if (strcmp(buf, "wal") != 0) {
            st_seterr(err, errlen, "store %s: cannot switch to WAL mode (journal_mode is %s)", st->path, buf);
            ret = MA_EIO;
            goto fail;
        }
    }
    /* A store in memory or read-only (no concurrent readers to race, nothing to gain) checks at open. */
    bool background = o->check_in_background && !o->in_memory && !st->readonly;
    if ((ret = st_migrate(st, err, errlen)) || (!background && (ret = st_check_integrity(st, err, errlen))) ||
        (ret = st_purge_count(st, err, errlen)))
        goto fail;
    if (o->max_pages > 0) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld", o->max_pages);
        if ((ret = st_pragma_text(st, st->writer, sql, buf, sizeof buf, err, errlen)))
            goto fail;
    }
    if (background && (ret = st_check_start(st, err, errlen)))
        goto fail;
    *out = st;
    return 0;
oom:
    st_seterr(err, errlen, "store: out of memory");
    ret = MA_ENOMEM;
fail:
    ma_store_close(st);
    return ret;
}

void ma_store_close(ma_store *st)
{
    if (!st)
        return;
    st_check_stop(st);
    for (size_t i = 0; i < MAX_READERS; i++)
        st_conn_close(st->readers[i]);
    st_conn_close(st->writer);   /* last: closing the last connection checkpoints and removes the WAL */
    if (st->lock_fd >= 0)
        close(st->lock_fd);   /* after the checkpoint: the next owner finds a closed database */
    pthread_mutex_destroy(&st->wlock);
    pthread_mutex_destroy(&st->rlock);
    pthread_cond_destroy(&st->rfree);
    free(st->path);
    free(st->uri);
    free(st->reserve_path);   /* the file stays: the next open finds the space already held */
    free(st);
}

int ma_store_readonly(const ma_store *st)
{
    return st->readonly;
}

/* After a write transaction failed with an I/O error. If it was the commit's fsync that failed, the
 * transaction's WAL frames are in the file (only their fsync failed) but not in the WAL index, so no
 * reader sees them — yet WAL recovery after a crash would find them complete and bring back a change we
 * reported as failed. A TRUNCATE checkpoint copies only what the index holds into the database and
 * empties the WAL, so they are gone. If the disk still fails this fails too (nothing more can be done;
 * docs/STORE.md); the next successful commit overwrites the frames anyway. Writer lock held. */
static void forget_failed_frames(ma_store *st, conn *c, int ret)
{
    if (ret != MA_EIO || st->readonly || st->opt.in_memory)
        return;
    sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
}

/* ---- writes ----------------------------------------------------------------------------------- */

/* Counts a write transaction: committed, failed (storage), or neither (refused: no session, exists,
 * a delta that does not continue the session). */
static void count_commit(ma_store *st, uint64_t t0, int ret)
{
    if (ret == MA_EIO || ret == MA_ECORRUPT || ret == MA_ENOMEM) {
        atomic_fetch_add(&st->failures, 1);
        return;
    }
    if (ret)
        return;
    uint64_t dt = now_ns() - t0;
    atomic_fetch_add(&st->commits, 1);
    atomic_fetch_add(&st->commit_ns, dt);
    uint64_t max = atomic_load(&st->commit_ns_max);
    while (dt > max && !atomic_compare_exchange_weak(&st->commit_ns_max, &max, dt))
        ;
}

/* Takes the writer lock and begins an immediate transaction. The lock is held whatever the result:
 * every call is paired with st_write_end, which gets this result if it is an error. */
int st_write_begin(ma_store *st, uint64_t *t0, char *err, size_t errlen)
{
    pthread_mutex_lock(&st->wlock);
    *t0 = now_ns();
    int gate = st_check_gate(st, err, errlen);
    if (gate)
        return gate;
    int rc = st_run(st, st->writer, ST_BEGIN_IMMEDIATE, err, errlen);
    return rc ? st_fail_db(st, st->writer->db, rc, err, errlen, "starting a transaction") : 0;
}

/* Ends what st_write_begin started: commits when ret is 0 (a failed commit is reported as `what`), else rolls
 * back and forgets the failed frames; counts the transaction and releases the lock. Returns the result. */
int st_write_end(ma_store *st, uint64_t t0, int ret, const char *what, char *err, size_t errlen)
{
    conn *c = st->writer;
    int rc;
    if (!ret && (rc = st_run(st, c, ST_COMMIT, err, errlen)))
        ret = st_fail_db(st, c->db, rc, err, errlen, what);
    if (ret) {
        st_rollback(st, c);
        forget_failed_frames(st, c, ret);
    }
    count_commit(st, t0, ret);
    pthread_mutex_unlock(&st->wlock);
    return ret;
}

static int check_id(ma_store *st, const char *id, char *err, size_t errlen)
{
    if (!id || !*id) {
        st_seterr(err, errlen, "store %s: empty session id", st->path);
        return MA_EINVAL;
    }
    if (id[0] == PURGE_PREFIX[0]) {   /* the names of deleted sessions awaiting their purge */
        st_seterr(err, errlen, "store %s: session id '%s' starts with '%c', which the store keeps for itself",
                  st->path, id, PURGE_PREFIX[0]);
        return MA_EINVAL;
    }
    return 0;
}

int ma_store_session_create(ma_store *st, const char *id, const char *config_json, int64_t now,
                            char *err, size_t errlen)
{
    return ma_store_session_create_idem(st, id, config_json, now, NULL, err, errlen);
}

int ma_store_session_create_idem(ma_store *st, const char *id, const char *config_json, int64_t now,
                                 const ma_store_idem *k, char *err, size_t errlen)
{
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    if (!config_json) {
        st_seterr(err, errlen, "store %s: session '%s': no config", st->path, id);
        return MA_EINVAL;
    }
    uint64_t t0;
    conn *c = st->writer;
    int rc;
    if ((ret = st_write_begin(st, &t0, err, errlen)))
        goto done;
    sqlite3_stmt *s = st_stmt(st, c, ST_INSERT_SESSION, err, errlen);
    if (!s) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, config_json, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, now);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        st_seterr(err, errlen, "session '%s' already exists", id);
        ret = MA_EEXISTS;
        goto done;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "creating a session");
        goto done;
    }
    if (k)
        ret = st_idem_write(st, c, k, err, errlen);
done:
    return st_write_end(st, t0, ret, "committing a session creation", err, errlen);
}

/* ---- the disk-space reserve for deletes ------------------------------------------------------------
 * A delete must work when the disk is full: it is how an operator makes room. Even with secure_delete
 * FAST it appends a few pages to the WAL, and on a full file system that append fails. So a writable
 * store keeps <dir>/memattn.reserve, RESERVE_BYTES allocated (posix_fallocate; less if the disk has
 * less, down to 16 KiB) at open; a delete that fails with an I/O error while a reserve file exists
 * removes it (its blocks go back to the file
 * system) and runs once more; after a successful delete the reserve is allocated again if the space is
 * there (a delete frees pages inside the database file, not on the disk: at worst the reserve comes
 * back at the next open, after the close's checkpoint has removed the WAL). Under the writer lock. */

void st_reserve_make(ma_store *st, size_t max_bytes)
{
    if (!st->reserve_path || st->reserve_held)
        return;
    int fd = open(st->reserve_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    /* As much of RESERVE_BYTES (or max_bytes) as the disk has (down to 16 KiB: a few WAL frames). */
    off_t first = max_bytes && max_bytes < RESERVE_BYTES ? (off_t)max_bytes : RESERVE_BYTES;
    for (off_t size = first; size >= 16 * 1024 && !st->reserve_held; size /= 2)
        st->reserve_held = posix_fallocate(fd, 0, size) == 0;
    close(fd);
}

/* Gives the reserve's blocks back to the file system; true when there was a reserve file. */
bool st_reserve_release(ma_store *st)
{
    if (!st->reserve_path)
        return false;
    st->reserve_held = false;
    return unlink(st->reserve_path) == 0;
}

static int delete_once(ma_store *st, const char *id, const ma_store_idem *k, char *err, size_t errlen)
{
    int ret;
    uint64_t t0;
    conn *c = st->writer;
    if ((ret = st_write_begin(st, &t0, err, errlen)))
        goto done;
    /* O(1) whatever the session's size: its row renamed and queued for the purge (store/purge.c), which
     * deletes the rows afterwards, a few per transaction, with secure_delete ON. */
    if ((ret = st_tombstone(st, c, id, err, errlen)))
        goto done;
    if (k)   /* after the delete: its session is gone, the record is detached (store/idem.c) */
        ret = st_idem_write(st, c, k, err, errlen);
    /* Counted under the writer lock, so a purge step (which takes it) never sees the row uncounted. */
    if (!ret)
        atomic_fetch_add(&st->purging, 1);
done:;
    int queued = !ret;
    ret = st_write_end(st, t0, ret, "committing a session deletion", err, errlen);
    if (ret && queued)   /* the commit failed: nothing was queued */
        atomic_fetch_sub(&st->purging, 1);
    return ret;
}

int ma_store_session_delete(ma_store *st, const char *id, char *err, size_t errlen)
{
    return ma_store_session_delete_idem(st, id, NULL, err, errlen);
}

int ma_store_session_delete_idem(ma_store *st, const char *id, const ma_store_idem *k, char *err, size_t errlen)
{
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    ret = delete_once(st, id, k, err, errlen);
    pthread_mutex_lock(&st->wlock);
    bool retry = ret == MA_EIO && st_reserve_release(st);
    pthread_mutex_unlock(&st->wlock);
    if (retry)   /* the disk is full: the reserve's blocks give the delete's WAL frames room */
        ret = delete_once(st, id, k, err, errlen);
    if (ret == 0) {
        pthread_mutex_lock(&st->wlock);
        st->reserve_lent |= retry;   /* the purge of a full disk needs that room: taken again when it is done */
        if (!st->reserve_lent)
            st_reserve_make(st, 0);
        pthread_mutex_unlock(&st->wlock);
    }
    return ret;
}

static int check_delta(ma_store *st, const char *id, const ma_store_delta *d, char *err, size_t errlen)
{
    if (!d) {
        st_seterr(err, errlen, "store %s: session '%s': no delta", st->path, id);
        return MA_EINVAL;
    }
    if (d->n_events > 0 && (!d->k || !d->v || d->k_floats == 0 || d->v_floats == 0 ||
                            d->k_floats > INT32_MAX / (4 * BLOCK) || d->v_floats > INT32_MAX / (4 * BLOCK))) {
        st_seterr(err, errlen, "store %s: session '%s': %zu events without keys/values (k_floats %zu, "
                  "v_floats %zu)", st->path, id, d->n_events, d->k_floats, d->v_floats);
        return MA_EINVAL;
    }
    const ma_blob *b[N_BLOBS] = {&d->backbone, &d->slots_blob, &d->archive_meta};
    for (int i = 0; i < N_BLOBS; i++) {
        if (b[i]->data && b[i]->len > INT32_MAX) {
            st_seterr(err, errlen, "store %s: session '%s': blob %d of %zu bytes exceeds 2 GiB", st->path, id,
                      i, b[i]->len);
            return MA_EINVAL;
        }
    }
    return 0;
}

/* The delta's events after the `length` stored ones: the partial last block (if any) is read, topped up
 * and rewritten, the rest written as new blocks straight from the caller's arrays; payloads as rows. */
static int write_events(ma_store *st, conn *c, const char *id, int64_t sid, uint64_t length,
                        const ma_store_delta *d, char *err, size_t errlen)
{
    size_t kb = d->k_floats * sizeof(float), vb = d->v_floats * sizeof(float), i = 0;
    const size_t G = st_row_events(kb, vb);
    size_t off = (size_t)(length % G);
    unsigned char *kbuf = NULL, *vbuf = NULL;
    int ret = 0;
    if (off) {
        sqlite3_stmt *s = st_stmt(st, c, ST_GET_BLOCK, err, errlen);
        if (!s)
            return MA_EIO;
        sqlite3_bind_int64(s, 1, sid);
        sqlite3_bind_int64(s, 2, (int64_t)(length / G));
        int rc = sqlite3_step(s);
        if (rc != SQLITE_ROW) {
            ret = rc == SQLITE_DONE ? MA_ECORRUPT : st_fail_db(st, c->db, rc, err, errlen, "reading an event block");
            if (rc == SQLITE_DONE)
                st_seterr(err, errlen, "store %s: event block %" PRIu64 " of a session of length %" PRIu64
                          " is missing", st->path, length / G, length);
            goto done;
        }
        st_block b = st_block_at(s);
        if (b.n != off || b.klen != off * kb || b.vlen != off * vb) {
            st_seterr(err, errlen, "store %s: the stored events end in a block of %zu events with %zu/%zu key/value "
                      "bytes; %zu events of %zu/%zu floats cannot continue it", st->path, b.n, b.klen, b.vlen, off,
                      d->k_floats, d->v_floats);
            /* other sizes than the stored ones: the caller's mistake (and, since schema 7, another G) */
            ret = b.klen == b.n * kb && b.vlen == b.n * vb ? MA_ECORRUPT : MA_EINVAL;
            goto done;
        }
        /* The one block a commit rewrites is checked first: a damaged row is never rewritten with a fresh
         * checksum of its damage. */
        if ((ret = st_block_check(st, id, s, &b, err, errlen)))
            goto done;
        size_t take = d->n_events < G - off ? d->n_events : G - off;
        if (!(kbuf = malloc((off + take) * kb)) || !(vbuf = malloc((off + take) * vb))) {
            st_seterr(err, errlen, "store %s: out of memory", st->path);
            ret = MA_ENOMEM;
            goto done;
        }
        memcpy(kbuf, b.k, b.klen);
        memcpy(vbuf, b.v, b.vlen);
        sqlite3_reset(s);
        memcpy(kbuf + b.klen, d->k, take * kb);
        memcpy(vbuf + b.vlen, d->v, take * vb);
        st_block nb = {length / G, off + take, kbuf, vbuf, (off + take) * kb, (off + take) * vb};
        if ((ret = st_put_block(st, c, sid, &nb, err, errlen)))
            goto done;
        i = take;
    }
    while (i < d->n_events) {
        size_t take = d->n_events - i < G ? d->n_events - i : G;
        st_block nb = {(length + i) / G, take, d->k + i * d->k_floats, d->v + i * d->v_floats, take * kb,
                       take * vb};
        if ((ret = st_put_block(st, c, sid, &nb, err, errlen)))
            goto done;
        i += take;
    }
    for (i = 0; d->payloads && i < d->n_events; i++) {
        if (d->payloads[i] && (ret = st_put_payload(st, c, sid, length + i, d->payloads[i], -1, err, errlen)))
            goto done;
    }
done:
    if (c->st[ST_GET_BLOCK])
        sqlite3_reset(c->st[ST_GET_BLOCK]);
    free(kbuf);
    free(vbuf);
    return ret;
}

/* Writes one delta of session `id` inside the writer's open transaction (the caller began it and ends it:
 * commit on 0, rollback otherwise). Checks that its events continue what the transaction sees stored, so
 * several deltas of one session in one transaction must come in order. */
static int apply_delta(ma_store *st, conn *c, const char *id, const ma_store_delta *d, bool *rewrote, char *err,
                       size_t errlen)
{
    sqlite3_stmt *s;
    int rc, ret = 0;
    /* Where the session stands: events must continue it exactly (events count == length, always). */
    if (!(s = st_stmt(st, c, ST_SID, err, errlen))) {
        ret = MA_EIO;
        goto done;
    }
    if ((ret = st_session_step(st, c, s, id, "looking up a session", err, errlen)))
        goto done;
    int64_t sid = sqlite3_column_int64(s, 0);
    uint64_t length = (uint64_t)sqlite3_column_int64(s, 1);
    sqlite3_reset(s);
    if ((d->n_events > 0 && d->first_event != length) || d->length != length + d->n_events) {
        st_seterr(err, errlen, "store %s: session '%s' has %" PRIu64 " stored events; a commit of %zu events "
                  "from index %" PRIu64 " cannot give length %" PRIu64, st->path, id, length, d->n_events,
                  d->first_event, d->length);
        ret = MA_EINVAL;
        goto done;
    }
    if (d->n_events > 0 && (ret = write_events(st, c, id, sid, length, d, err, errlen)))
        goto done;
    if (d->index.n && (ret = st_put_index_rows(st, c, sid, &d->index, err, errlen)))
        goto done;
    for (size_t i = 0; i < d->n_erase; i++) {
        if (!(s = st_stmt(st, c, ST_ERASE_PAYLOAD, err, errlen))) {
            ret = MA_EIO;
            goto done;
        }
        sqlite3_bind_int64(s, 1, sid);
        sqlite3_bind_int64(s, 2, (int64_t)d->erase[i]);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE) {
            ret = st_fail_db(st, c->db, rc, err, errlen, "erasing payloads");
            goto done;
        }
    }
    /* Slot version rows: new ones add their size; a rewrite (a forgotten slot) replaces a stored row. */
    int64_t slot_bytes = 0;
    for (size_t i = 0; i < d->n_slot_rows; i++) {
        const ma_store_slot_row *r = &d->slot_rows[i];
        if (r->rewrite) {
            if (!(s = st_stmt(st, c, ST_SLOT_ROW_SIZE, err, errlen))) {
                ret = MA_EIO;
                goto done;
            }
            sqlite3_bind_int64(s, 1, sid);
            sqlite3_bind_text(s, 2, r->name, -1, SQLITE_STATIC);
            sqlite3_bind_int64(s, 3, (int64_t)r->version);
            rc = sqlite3_step(s);
            if (rc == SQLITE_ROW)
                slot_bytes -= sqlite3_column_int64(s, 0);
            sqlite3_reset(s);
            sqlite3_clear_bindings(s);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
                ret = st_fail_db(st, c->db, rc, err, errlen, "reading a slot version");
                goto done;
            }
            *rewrote = true;   /* slot rows replaced: the commit also truncates the WAL */
        }
        if ((ret = st_put_slot_row(st, c, sid, &(st_slot_row){r->name, -1, r->version, r->data, r->len}, err,
                                   errlen)))
            goto done;
        slot_bytes += (int64_t)r->len;
    }
    int64_t event_bytes = 0;
    for (size_t i = 0; i < d->n_events; i++)
        event_bytes += (int64_t)((d->k_floats + d->v_floats) * sizeof(float)) +
                       (d->payloads && d->payloads[i] ? (int64_t)strlen(d->payloads[i]) : 0);
    const ma_blob *b[N_BLOBS] = {&d->backbone, &d->slots_blob, &d->archive_meta};
    for (int i = 0; i < N_BLOBS; i++) {
        if (!b[i]->data)
            continue;
        if (!(s = st_stmt(st, c, ST_PUT_BLOB, err, errlen))) {
            ret = MA_EIO;
            goto done;
        }
        sqlite3_bind_int64(s, 1, sid);
        sqlite3_bind_int(s, 2, i);
        sqlite3_bind_blob(s, 3, b[i]->data, (int)b[i]->len, SQLITE_STATIC);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (rc != SQLITE_DONE) {
            ret = st_fail_db(st, c->db, rc, err, errlen, "writing session state");
            goto done;
        }
    }
    if (!(s = st_stmt(st, c, ST_UPDATE_SESSION, err, errlen))) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_int64(s, 1, sid);
    sqlite3_bind_int64(s, 2, (int64_t)d->length);
    sqlite3_bind_int64(s, 3, (int64_t)d->slots);
    sqlite3_bind_int64(s, 4, d->updated_at);
    sqlite3_bind_int64(s, 5, event_bytes);
    sqlite3_bind_int64(s, 6, slot_bytes);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "updating the session row");
        goto done;
    }
    if (d->idem)
        ret = st_idem_write(st, c, d->idem, err, errlen);
done:
    return ret;
}

int ma_store_commit(ma_store *st, const char *id, const ma_store_delta *d, char *err, size_t errlen)
{
    return ma_store_commit_group(st, 1, &id, &d, err, errlen);
}

int ma_store_commit_group(ma_store *st, size_t n, const char *const *ids, const ma_store_delta *const *deltas,
                          char *err, size_t errlen)
{
    int ret = 0;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n && !ret; i++)
        if (!(ret = check_id(st, ids[i], err, errlen)))
            ret = check_delta(st, ids[i], deltas[i], err, errlen);
    if (ret)
        return ret;
    uint64_t t0;
    size_t events = 0, erase = 0;
    bool rewrote = false;
    if ((ret = st_write_begin(st, &t0, err, errlen)))
        goto done;
    for (size_t i = 0; i < n && !ret; i++) {
        ret = apply_delta(st, st->writer, ids[i], deltas[i], &rewrote, err, errlen);
        events += deltas[i]->n_events;
        erase += deltas[i]->n_erase;
    }
done:
    ret = st_write_end(st, t0, ret, "committing", err, errlen);
    if (!ret)
        atomic_fetch_add(&st->events_written, events);
    /* Erased bytes (payloads, rewritten slot versions) also leave the WAL (best effort: a reader in
     * progress can keep old frames until the next checkpoint; the database file itself was overwritten
     * by secure_delete). */
    if (!ret && (erase || rewrote) && !st->opt.in_memory) {
        pthread_mutex_lock(&st->wlock);
        sqlite3_wal_checkpoint_v2(st->writer->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
        pthread_mutex_unlock(&st->wlock);
    }
    return ret;
}

/* ---- reads ------------------------------------------------------------------------------------ */

void ma_store_session_clear(ma_store_session *s)
{
    if (!s)
        return;
    free(s->id);
    free(s->config_json);
    free((void *)s->backbone.data);
    free((void *)s->slots_blob.data);
    free((void *)s->archive_meta.data);
    memset(s, 0, sizeof *s);
}

/* Fills the row fields of out from a SESSION_COLS row; returns the stored blob byte total. */
static int session_row(sqlite3_stmt *s, ma_store_session *out, int64_t *blob_bytes)
{
    memset(out, 0, sizeof *out);
    out->id = xstrdup((const char *)sqlite3_column_text(s, 1));
    out->config_json = xstrdup((const char *)sqlite3_column_text(s, 2));
    if (!out->id || !out->config_json) {
        ma_store_session_clear(out);
        return MA_ENOMEM;
    }
    out->created_at = sqlite3_column_int64(s, 3);
    out->updated_at = sqlite3_column_int64(s, 4);
    out->length = (uint64_t)sqlite3_column_int64(s, 5);
    out->slots = (size_t)sqlite3_column_int64(s, 6);
    *blob_bytes = sqlite3_column_int64(s, 8);
    out->stored_bytes = (size_t)(sqlite3_column_int64(s, 7) + *blob_bytes + sqlite3_column_int64(s, 9));
    return 0;
}

/* ma_store_session_load (with_data: the blobs copied) and ma_store_session_summary (only their sizes,
 * length(data) in SQL, which sqlite answers from the record header without reading the blob). */
static int load_session(ma_store *st, const char *id, bool with_data, ma_store_session *out, char *err,
                        size_t errlen)
{
    memset(out, 0, sizeof *out);
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    conn *c;
    if ((ret = st_reader_get(st, &c, err, errlen)))
        return ret;
    sqlite3_stmt *s = NULL, *b = NULL;
    int64_t blob_bytes = 0, sid = 0;
    int rc = st_run(st, c, ST_BEGIN, err, errlen);   /* one snapshot for the row and its blobs */
    if (rc) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a read");
        goto done;
    }
    if (!(s = st_stmt(st, c, ST_LOAD_SESSION, err, errlen)) ||
        !(b = st_stmt(st, c, with_data ? ST_LOAD_BLOBS : ST_BLOB_SIZES, err, errlen))) {
        ret = MA_EIO;
        goto done;
    }
    if ((ret = st_session_step(st, c, s, id, "loading a session", err, errlen)))
        goto done;
    sid = sqlite3_column_int64(s, 0);
    if ((ret = session_row(s, out, &blob_bytes))) {
        st_seterr(err, errlen, "store %s: out of memory", st->path);
        goto done;
    }
    sqlite3_bind_int64(b, 1, sid);
    int64_t got = 0;
    ma_blob *dst[N_BLOBS] = {&out->backbone, &out->slots_blob, &out->archive_meta};
    bool seen[N_BLOBS] = {false};
    while ((rc = sqlite3_step(b)) == SQLITE_ROW) {
        int kind = sqlite3_column_int(b, 0);
        int n = with_data ? sqlite3_column_bytes(b, 1) : sqlite3_column_int(b, 1);
        if (kind < 0 || kind >= N_BLOBS || seen[kind]) {
            st_seterr(err, errlen, "store %s: session '%s': unexpected state blob of kind %d", st->path, id, kind);
            ret = MA_ECORRUPT;
            goto done;
        }
        seen[kind] = true;
        dst[kind]->len = (size_t)n;
        got += n;
        if (!with_data)
            continue;
        const void *p = sqlite3_column_blob(b, 1);
        void *copy = malloc(n > 0 ? (size_t)n : 1);
        if (!copy) {
            st_seterr(err, errlen, "store %s: out of memory loading %d bytes", st->path, n);
            ret = MA_ENOMEM;
            goto done;
        }
        if (n > 0)
            memcpy(copy, p, (size_t)n);
        dst[kind]->data = copy;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "loading session state");
        goto done;
    }
    if (got != blob_bytes) {
        st_seterr(err, errlen, "store %s: session '%s': state blobs hold %lld bytes, the session row says %lld",
                  st->path, id, (long long)got, (long long)blob_bytes);
        ret = MA_ECORRUPT;
    }
done:
    if (s)
        sqlite3_reset(s);
    if (b)
        sqlite3_reset(b);
    st_rollback(st, c);   /* ends the read transaction */
    st_reader_put(st, c);
    if (ret)
        ma_store_session_clear(out);
    return ret;
}

int ma_store_session_load(ma_store *st, const char *id, ma_store_session *out, char *err, size_t errlen)
{
    return load_session(st, id, true, out, err, errlen);
}

int ma_store_session_summary(ma_store *st, const char *id, ma_store_session *out, char *err, size_t errlen)
{
    return load_session(st, id, false, out, err, errlen);
}

int ma_store_session_list(ma_store *st, const char *after, size_t limit, ma_store_session **out, size_t *n,
                          char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return 0;
    conn *c;
    int ret = st_reader_get(st, &c, err, errlen);
    if (ret)
        return ret;
    size_t cap = limit < 64 ? limit : 64, len = 0;
    ma_store_session *rows = calloc(cap, sizeof *rows);
    sqlite3_stmt *s = st_stmt(st, c, ST_LIST, err, errlen);
    int rc = SQLITE_DONE;
    if (!rows) {
        st_seterr(err, errlen, "store %s: out of memory", st->path);
        ret = MA_ENOMEM;
        goto done;
    }
    if (!s) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (len == cap) {
            ma_store_session *more = realloc(rows, 2 * cap * sizeof *rows);
            if (!more) {
                st_seterr(err, errlen, "store %s: out of memory", st->path);
                ret = MA_ENOMEM;
                goto done;
            }
            rows = more;
            cap *= 2;
        }
        int64_t blob_bytes;
        if ((ret = session_row(s, &rows[len], &blob_bytes))) {
            st_seterr(err, errlen, "store %s: out of memory", st->path);
            goto done;
        }
        len++;
    }
    if (rc != SQLITE_DONE)
        ret = st_fail_db(st, c->db, rc, err, errlen, "listing sessions");
done:
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
    st_reader_put(st, c);
    if (ret) {
        for (size_t i = 0; i < len; i++)
            ma_store_session_clear(&rows[i]);
        free(rows);
        return ret;
    }
    *out = rows;
    *n = len;
    return 0;
}

/* Why a range read came back short: no session, a range past the end, or missing rows (corruption). */
static int explain_short(ma_store *st, conn *c, const char *id, uint64_t first, size_t n, uint64_t at,
                         char *err, size_t errlen)
{
    sqlite3_stmt *s = st_stmt(st, c, ST_SID, err, errlen);
    if (!s)
        return MA_EIO;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    uint64_t length = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(s, 1) : 0;
    sqlite3_reset(s);
    if (rc == SQLITE_DONE) {
        st_seterr(err, errlen, "session '%s' does not exist", id);
        return MA_ENOTFOUND;
    }
    if (rc != SQLITE_ROW)
        return st_fail_db(st, c->db, rc, err, errlen, "looking up a session");
    if (first + n > length) {
        st_seterr(err, errlen, "session '%s': events %" PRIu64 "..%" PRIu64 " requested, it has %" PRIu64,
                  id, first, first + n - 1, length);
        return MA_ENOTFOUND;
    }
    st_seterr(err, errlen, "store %s: session '%s': event %" PRIu64 " is missing (length %" PRIu64 ")", st->path,
              id, at, length);
    return MA_ECORRUPT;
}

int ma_store_load_events(ma_store *st, const char *id, uint64_t first, size_t n, const ma_store_events *to,
                         char *err, size_t errlen)
{
    const size_t k_floats = to->k_floats, v_floats = to->v_floats;
    float *k = to->k, *v = to->v;
    char **payloads = to->payloads;
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    if (payloads)
        memset(payloads, 0, n * sizeof *payloads);
    if (n == 0)
        return 0;
    if (first > INT64_MAX - n) {
        st_seterr(err, errlen, "session '%s': event range from %" PRIu64 " out of range", id, first);
        return MA_EINVAL;
    }
    conn *c;
    if ((ret = st_reader_get(st, &c, err, errlen)))
        return ret;
    /* Blocks and payloads from one snapshot. */
    bool txn = payloads != NULL;
    int rc = txn ? st_run(st, c, ST_BEGIN, err, errlen) : 0;
    sqlite3_stmt *s = NULL, *p = NULL;
    uint64_t at = first, end = first + n;
    size_t kb = k_floats * sizeof(float), vb = v_floats * sizeof(float);
    const uint64_t G = st_row_events(kb, vb);
    if (rc) {
        txn = false;
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a read");
        goto done;
    }
    if (!(s = st_stmt(st, c, ST_BLOCKS, err, errlen)) ||
        (payloads && !(p = st_stmt(st, c, ST_PAYLOADS, err, errlen)))) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (int64_t)(first / G));
    sqlite3_bind_int64(s, 3, (int64_t)((end - 1) / G));
    rc = SQLITE_DONE;
    while (at < end && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_block b = st_block_at(s);
        uint64_t base = b.block * G;
        size_t nb = b.n;
        if (base > at || base + nb <= at) {
            rc = SQLITE_DONE;   /* a gap: explained below */
            break;
        }
        if (b.klen != nb * kb || b.vlen != nb * vb) {
            st_seterr(err, errlen, "store %s: session '%s' event block %" PRIu64 " (events %" PRIu64 "..%" PRIu64
                      "): key/value of %zu/%zu bytes, expected %zu events of %zu/%zu", st->path, id, b.block,
                      base, base + nb - 1, b.klen, b.vlen, nb, kb, vb);
            ret = MA_ECORRUPT;
            goto done;
        }
        const unsigned char *bk = b.k, *bv = b.v;
        if ((ret = st_block_check(st, id, s, &b, err, errlen)))
            goto done;
        uint64_t hi = base + nb < end ? base + nb : end;
        size_t m = (size_t)(hi - at), from = (size_t)(at - base), to = (size_t)(at - first);
        memcpy(k + to * k_floats, bk + from * kb, m * kb);
        memcpy(v + to * v_floats, bv + from * vb, m * vb);
        at = hi;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading events");
        goto done;
    }
    sqlite3_reset(s);
    if (at != end) {
        ret = explain_short(st, c, id, first, n, at, err, errlen);
        goto done;
    }
    if (payloads) {
        sqlite3_bind_text(p, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(p, 2, (int64_t)first);
        sqlite3_bind_int64(p, 3, (int64_t)end);
        while ((rc = sqlite3_step(p)) == SQLITE_ROW) {
            uint64_t idx = (uint64_t)sqlite3_column_int64(p, 0);
            size_t i = (size_t)(idx - first);
            const char *text = (const char *)sqlite3_column_text(p, 1);
            if ((ret = st_payload_check(st, id, p, 2, &(st_payload){idx, text, (size_t)sqlite3_column_bytes(p, 1)},
                                        err, errlen)))
                goto done;
            if (!(payloads[i] = xstrdup(text))) {
                st_seterr(err, errlen, "store %s: out of memory", st->path);
                ret = MA_ENOMEM;
                goto done;
            }
        }
        if (rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "reading payloads");
    }
done:
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
    if (p) {
        sqlite3_reset(p);
        sqlite3_clear_bindings(p);
    }
    if (txn)
        st_rollback(st, c);   /* ends the read transaction */
    st_reader_put(st, c);
    if (ret && payloads) {
        for (size_t i = 0; i < n; i++) {
            free(payloads[i]);
            payloads[i] = NULL;
        }
    }
    if (!ret)
        atomic_fetch_add(&st->events_read, n);
    return ret;
}

int ma_store_slot_rows(ma_store *st, const char *id, ma_store_slot_row_fn fn, void *arg, char *err,
                       size_t errlen)
{
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    conn *c;
    if ((ret = st_reader_get(st, &c, err, errlen)))
        return ret;
    sqlite3_stmt *s = NULL;
    int rc = st_run(st, c, ST_BEGIN, err, errlen);   /* every row from one snapshot */
    if (rc) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a read");
        goto done;
    }
    if (!(s = st_stmt(st, c, ST_SLOT_ROWS, err, errlen))) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(s, 0);
        uint64_t version = (uint64_t)sqlite3_column_int64(s, 1);
        const void *data = sqlite3_column_blob(s, 2);
        size_t len = (size_t)sqlite3_column_bytes(s, 2);
        if (!name) {
            st_seterr(err, errlen, "store %s: out of memory", st->path);
            ret = MA_ENOMEM;
            goto done;
        }
        if ((ret = fn(arg, name, version, data, len))) {
            st_seterr(err, errlen, "store %s: session '%s': slot '%s' version %" PRIu64 ": %s", st->path, id,
                      name, version, ma_strerror(ret));
            goto done;
        }
    }
    if (rc != SQLITE_DONE)
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading slot versions");
done:
    if (s)
        sqlite3_reset(s);
    st_rollback(st, c);   /* ends the read transaction */
    st_reader_put(st, c);
    return ret;
}

int ma_store_load_some(ma_store *st, const char *id, const uint64_t *events, size_t n, const ma_store_events *to,
                       char *err, size_t errlen)
{
    const size_t k_floats = to->k_floats, v_floats = to->v_floats;
    float *k = to->k, *v = to->v;
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    if (n == 0)
        return 0;
    for (size_t i = 1; i < n; i++)
        if (events[i] <= events[i - 1] || events[i] > INT64_MAX) {
            st_seterr(err, errlen, "session '%s': events to read are not ascending", id);
            return MA_EINVAL;
        }
    conn *c;
    if ((ret = st_reader_get(st, &c, err, errlen)))
        return ret;
    sqlite3_stmt *s = NULL;
    const size_t kb = k_floats * sizeof(float), vb = v_floats * sizeof(float);
    const uint64_t G = st_row_events(kb, vb);
    bool txn = false;
    int rc = st_run(st, c, ST_BEGIN, err, errlen);   /* one snapshot for every row */
    if (rc) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a read");
        goto done;
    }
    txn = true;
    /* The session's sid once, then each row by (sid, block): one descent of the key's index each. */
    if (!(s = st_stmt(st, c, ST_SID, err, errlen))) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    int64_t sid = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_ROW) {
        if (rc == SQLITE_DONE)
            st_seterr(err, errlen, "session '%s' does not exist", id);
        ret = rc == SQLITE_DONE ? MA_ENOTFOUND : st_fail_db(st, c->db, rc, err, errlen, "looking up a session");
        goto done;
    }
    if (!(s = st_stmt(st, c, ST_GET_BLOCK, err, errlen))) {
        ret = MA_EIO;
        goto done;
    }
    /* Row by row (events ascending): the whole row, checked (st_block_check), then the events' bytes copied
     * out. Since schema 7 a row is a page of events (st_row_events), so this reads a leaf and one overflow
     * page per candidate; a 64-event row of schema 6 was a 32 KiB overflow chain (docs/STORE.md, "Reading a
     * few events"). */
    for (size_t i = 0; i < n;) {
        uint64_t block = events[i] / G, base = block * G;
        sqlite3_bind_int64(s, 1, sid);
        sqlite3_bind_int64(s, 2, (int64_t)block);
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) {
            st_seterr(err, errlen, "store %s: session '%s': event %" PRIu64 " is missing (no event block %" PRIu64
                      ")", st->path, id, events[i], block);
            ret = MA_ENOTFOUND;
            goto done;
        }
        if (rc != SQLITE_ROW) {
            ret = st_fail_db(st, c->db, rc, err, errlen, "reading events");
            goto done;
        }
        st_block b = st_block_at(s);
        size_t nb = b.n;
        if (b.klen != nb * kb || b.vlen != nb * vb) {
            st_seterr(err, errlen, "store %s: session '%s' event block %" PRIu64 ": key/value of %zu/%zu bytes, "
                      "expected %zu events of %zu/%zu", st->path, id, block, b.klen, b.vlen, nb, kb, vb);
            ret = MA_ECORRUPT;
            goto done;
        }
        const unsigned char *bk = b.k, *bv = b.v;
        if ((ret = st_block_check(st, id, s, &b, err, errlen)))
            goto done;
        for (; i < n && events[i] / G == block; i++) {
            size_t row = (size_t)(events[i] - base);
            if (row >= nb) {
                st_seterr(err, errlen, "store %s: session '%s': event %" PRIu64 " is missing (block %" PRIu64
                          " holds %zu)", st->path, id, events[i], block, nb);
                ret = MA_ENOTFOUND;
                goto done;
            }
            memcpy(k + i * k_floats, bk + row * kb, kb);
            memcpy(v + i * v_floats, bv + row * vb, vb);
        }
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
done:
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
    if (txn)
        st_rollback(st, c);   /* ends the read transaction */
    st_reader_put(st, c);
    if (!ret)
        atomic_fetch_add(&st->events_read, n);
    return ret;
}

int ma_store_load_payload(ma_store *st, const char *id, uint64_t event, char **payload, char *err,
                          size_t errlen)
{
    *payload = NULL;
    int ret = check_id(st, id, err, errlen);
    if (ret)
        return ret;
    if (event > INT64_MAX) {
        st_seterr(err, errlen, "session '%s': event %" PRIu64 " out of range", id, event);
        return MA_ENOTFOUND;
    }
    conn *c;
    if ((ret = st_reader_get(st, &c, err, errlen)))
        return ret;
    sqlite3_stmt *s = st_stmt(st, c, ST_PAYLOAD, err, errlen);
    if (!s) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (int64_t)event);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(s, 0);
        if ((ret = st_payload_check(st, id, s, 1,
                                    &(st_payload){event, text ? text : "", (size_t)sqlite3_column_bytes(s, 0)}, err,
                                    errlen)))
            goto done;
        if (sqlite3_column_type(s, 0) != SQLITE_NULL && !(*payload = xstrdup(text))) {
            st_seterr(err, errlen, "store %s: out of memory", st->path);
            ret = MA_ENOMEM;
        }
    } else if (rc == SQLITE_DONE) {
        /* No payload row: an event without one, or no such event. */
        sqlite3_reset(s);
        sqlite3_stmt *q = st_stmt(st, c, ST_SID, err, errlen);
        if (!q) {
            ret = MA_EIO;
            goto done;
        }
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        rc = sqlite3_step(q);
        bool exists = rc == SQLITE_ROW && event < (uint64_t)sqlite3_column_int64(q, 1);
        sqlite3_reset(q);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "looking up a session");
        else if (!exists)
            ret = explain_short(st, c, id, event, 1, event, err, errlen);
    } else {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading a payload");
    }
done:
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
    st_reader_put(st, c);
    return ret;
}

/* ---- backup, size, stats ---------------------------------------------------------------------- */

/* fsync of a file or directory by path. */
static int sync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int ma_store_backup(ma_store *st, const char *path, char *err, size_t errlen)
{
    if (!path || !*path) {
        st_seterr(err, errlen, "store backup: no destination path");
        return MA_EINVAL;
    }
    if (!st->opt.in_memory) {
        char *a = realpath(st->path, NULL);
        char *b = realpath(path, NULL);
        bool same = a && b && !strcmp(a, b);
        free(a);
        free(b);
        if (same) {
            st_seterr(err, errlen, "store backup: %s is the live database", path);
            return MA_EINVAL;
        }
    }
    /* Copy into <path>.tmp, make it durable, then rename over <path>: a reader of <path> sees the old
     * backup or the complete new one, never a partial file. */
    size_t n = strlen(path) + sizeof ".tmp";
    char *tmp = malloc(n), *dirbuf = strdup(path);
    conn *c = NULL;
    sqlite3 *dst = NULL;
    int ret = 0, rc;
    if (!tmp || !dirbuf) {
        st_seterr(err, errlen, "store backup: out of memory");
        ret = MA_ENOMEM;
        goto done;
    }
    snprintf(tmp, n, "%s.tmp", path);
    unlink(tmp);
    if ((ret = st_reader_get(st, &c, err, errlen)))
        goto done;
    rc = sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(dst, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        st_seterr(err, errlen, "store backup: cannot create %s: %s", tmp,
                  dst ? sqlite3_errmsg(dst) : sqlite3_errstr(rc));
        ret = MA_EIO;
        goto done;
    }
    /* One step over all pages: the source read transaction is one WAL snapshot, so the copy is
     * consistent while the writer goes on committing (readers do not block it). */
    sqlite3_backup *bk = sqlite3_backup_init(dst, "main", c->db, "main");
    if (!bk) {
        st_seterr(err, errlen, "store backup: %s", sqlite3_errmsg(dst));
        ret = MA_EIO;
        goto done;
    }
    rc = sqlite3_backup_step(bk, -1);
    int rc2 = sqlite3_backup_finish(bk);
    if (rc != SQLITE_DONE || rc2 != SQLITE_OK) {
        st_seterr(err, errlen, "store backup to %s failed: %s", tmp, sqlite3_errmsg(dst));
        ret = rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB ? MA_ECORRUPT : MA_EIO;
        goto done;
    }
    rc = sqlite3_close(dst);
    dst = NULL;
    if (rc != SQLITE_OK || sync_path(tmp, false) != 0 || rename(tmp, path) != 0 ||
        sync_path(dirname(dirbuf), true) != 0) {
        st_seterr(err, errlen, "store backup: cannot make %s durable: %s", path, strerror(errno));
        ret = MA_EIO;
    }
done:
    if (dst)
        sqlite3_close(dst);
    if (c)
        st_reader_put(st, c);
    if (ret && tmp)
        unlink(tmp);
    free(tmp);
    free(dirbuf);
    return ret;
}

size_t ma_store_bytes(ma_store *st)
{
    if (st->opt.in_memory) {
        char buf[64];
        size_t pages = 0, size = 0;
        pthread_mutex_lock(&st->wlock);
        if (!st_pragma_text(st, st->writer, "PRAGMA page_count", buf, sizeof buf, NULL, 0))
            pages = strtoull(buf, NULL, 10);
        if (!st_pragma_text(st, st->writer, "PRAGMA page_size", buf, sizeof buf, NULL, 0))
            size = strtoull(buf, NULL, 10);
        pthread_mutex_unlock(&st->wlock);
        return pages * size;
    }
    size_t total = 0;
    struct stat sb;
    char wal[4096];
    if (stat(st->path, &sb) == 0)
        total += (size_t)sb.st_size;
    snprintf(wal, sizeof wal, "%s-wal", st->path);
    if (stat(wal, &sb) == 0)
        total += (size_t)sb.st_size;
    return total;
}

void ma_store_stats_get(ma_store *st, ma_store_stats *out)
{
    out->commits = atomic_load(&st->commits);
    out->failures = atomic_load(&st->failures);
    out->commit_ns = atomic_load(&st->commit_ns);
    out->commit_ns_max = atomic_load(&st->commit_ns_max);
    out->events_written = atomic_load(&st->events_written);
    out->events_read = atomic_load(&st->events_read);
    out->sessions_purging = atomic_load(&st->purging);
    out->purged_rows = atomic_load(&st->purged_rows);
    out->purged_fast_rows = atomic_load(&st->purged_fast_rows);
}
