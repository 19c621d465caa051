/*
 * store/purge.c — deleting a session in O(1), its rows purged afterwards (store/store.h; docs/STORE.md,
 * "Deleting a session").
 *
 * Design
 *  - The delete (ma_store_session_delete_idem, through st_tombstone) is one small transaction whatever
 *    the session's size: the session row is renamed PURGE_PREFIX<sid> — an id no session can have (the
 *    store refuses ids that start with '#', the API every id outside [A-Za-z0-9._:-]) — so its id is free
 *    at once, and its sid is listed in the `purge` table (schema 8). From that commit on no call reaches
 *    it: every read finds sessions by id, listings skip the purge table's sids, the session count of
 *    /metrics is not the store's. Its Idempotency-Key records are deleted in the same transaction (at most
 *    the scope's window of --idempotency-keys rows): their scope is the id, which a new session of that
 *    id would otherwise see. A session created again with the id gets a new sid (the tombstone row still
 *    holds the old one, and sqlite gives a new rowid above every existing one), so its rows never mix
 *    with the old ones.
 *  - The purge (ma_store_purge_step) deletes the oldest tombstone's rows a step at a time: up to a byte
 *    budget of rows (sizes from length(), which reads no overflow page) per transaction, tables in the
 *    order index_blocks, event_blocks, payloads, slot_versions, blobs, and at last the session row, whose
 *    ON DELETE CASCADE takes the purge row with it. The writer's secure_delete = ON holds for these
 *    deletes: every freed page is overwritten with zeros (through the WAL; when a session's purge ends,
 *    a TRUNCATE checkpoint — best effort, as for a forgotten slot — puts the zeros in the database file
 *    and empties the WAL). Steps commit with synchronous=NORMAL (no fsync of their own, like
 *    ma_store_index_drop): a step lost in a crash is simply done again.
 *  - Restart: the queue is a table, so an interrupted purge resumes at the next open; the open-time
 *    integrity checks do not hold a purging session's rows to its row's length and byte counts (schema.c).
 *  - Full disk: a step that fails with an I/O error gives the store's reserve file back (as a delete does)
 *    and runs once more — and so does every step while the reserve is lent (a delete or step needed it;
 *    it is taken again at the next open) — now deleting the whole session in one transaction with secure_delete FAST (the
 *    way every delete ran before the purge existed: only the b-tree pages that change are written, the
 *    freed pages keep their bytes until reused); if that fails too, nothing changed and the caller tries
 *    again later (the registry's purge thread, registry/purge.c, backs off).
 *
 * Deliberately not here: when to purge (the registry's thread decides), VACUUM (freed pages are reused,
 * the file does not shrink).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "store/store_int.h"

#define PURGE_ROWS_MAX 256   /* rows deleted per step at most, whatever their size */
#define RESERVE_AFTER_FULL (64 * 1024)   /* the reserve taken again after a full disk, at most */

/* The tables a purge empties, in order: the key that names a row within the session, and its size. */
static const struct {
    const char *select;   /* ?1 sid, ?2 limit: key, bytes */
    const char *del;      /* ?1 sid, ?2 key */
} tables[] = {
    {"SELECT rowid, length(lists) + length(codes) FROM index_blocks WHERE sid = ?1 LIMIT ?2",
     "DELETE FROM index_blocks WHERE sid = ?1 AND rowid = ?2"},
    {"SELECT rowid, length(k) + length(v) FROM event_blocks WHERE sid = ?1 LIMIT ?2",
     "DELETE FROM event_blocks WHERE sid = ?1 AND rowid = ?2"},
    {"SELECT idx, length(CAST(payload AS BLOB)) FROM payloads WHERE sid = ?1 LIMIT ?2",
     "DELETE FROM payloads WHERE sid = ?1 AND idx = ?2"},
    {"SELECT rowid, length(data) FROM slot_versions WHERE sid = ?1 LIMIT ?2",
     "DELETE FROM slot_versions WHERE sid = ?1 AND rowid = ?2"},
    {"SELECT kind, length(data) FROM blobs WHERE sid = ?1 LIMIT ?2",
     "DELETE FROM blobs WHERE sid = ?1 AND kind = ?2"},
};
#define N_TABLES (sizeof tables / sizeof tables[0])

static int prepare(ma_store *st, conn *c, const char *sql, sqlite3_stmt **s, char *err, size_t errlen)
{
    int rc = sqlite3_prepare_v2(c->db, sql, -1, s, NULL);
    return rc == SQLITE_OK ? 0 : st_fail_db(st, c->db, rc, err, errlen, "preparing a purge statement");
}

/* Runs sql (binding ?1 = sid) on c, a statement that returns no rows. */
static int exec_sid(ma_store *st, conn *c, const char *sql, int64_t sid, const char *what, char *err,
                    size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int ret = prepare(st, c, sql, &s, err, errlen);
    if (!ret) {
        sqlite3_bind_int64(s, 1, sid);
        int rc = sqlite3_step(s);
        if (rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, what);
    }
    sqlite3_finalize(s);
    return ret;
}

int st_tombstone(ma_store *st, conn *c, const char *id, char *err, size_t errlen)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;   /* ms since the epoch, for operators */
    sqlite3_stmt *s = st_stmt(st, c, ST_SID, err, errlen);
    if (!s)
        return MA_EIO;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), ret = 0;
    int64_t sid = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc == SQLITE_DONE) {
        st_seterr(err, errlen, "session '%s' does not exist", id);
        return MA_ENOTFOUND;
    }
    if (rc != SQLITE_ROW)
        return st_fail_db(st, c->db, rc, err, errlen, "deleting a session");
    char name[64];
    snprintf(name, sizeof name, "%s%" PRId64, PURGE_PREFIX, sid);
    sqlite3_stmt *u = NULL;
    if ((ret = prepare(st, c, "UPDATE sessions SET id = ?2 WHERE sid = ?1", &u, err, errlen)) == 0) {
        sqlite3_bind_int64(u, 1, sid);
        sqlite3_bind_text(u, 2, name, -1, SQLITE_STATIC);
        if ((rc = sqlite3_step(u)) != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "deleting a session");
    }
    sqlite3_finalize(u);
    if (!ret && (ret = prepare(st, c, "INSERT INTO purge(sid, deleted_at) VALUES (?1, ?2)", &u, err, errlen)) == 0) {
        sqlite3_bind_int64(u, 1, sid);
        sqlite3_bind_int64(u, 2, now);
        if ((rc = sqlite3_step(u)) != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "queueing a session's purge");
        sqlite3_finalize(u);
    }
    if (!ret)   /* the scope's window of key records at most (store/idem.c) */
        ret = exec_sid(st, c, "DELETE FROM idempotency WHERE sid = ?1", sid, "deleting a session's keys", err,
                       errlen);
    return ret;
}

/* Deletes up to *budget bytes (at least one row) of table t's rows of sid; *rows and *budget updated.
 * *empty: the table holds no row of sid any more. */
static int purge_table(ma_store *st, conn *c, size_t t, int64_t sid, size_t *budget, uint64_t *rows, bool *empty,
                       char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL, *d = NULL;
    int64_t keys[PURGE_ROWS_MAX];
    size_t n = 0, room = PURGE_ROWS_MAX - (size_t)*rows;
    int ret = prepare(st, c, tables[t].select, &q, err, errlen);
    if (!ret)
        ret = prepare(st, c, tables[t].del, &d, err, errlen);
    *empty = false;
    if (!ret) {
        sqlite3_bind_int64(q, 1, sid);
        sqlite3_bind_int64(q, 2, (int64_t)room + 1);   /* one more: whether the table is then empty */
        int rc;
        size_t seen = 0;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            seen++;
            if (n == room || *budget == 0)
                break;
            int64_t bytes = sqlite3_column_int64(q, 1);
            keys[n++] = sqlite3_column_int64(q, 0);
            *budget = bytes < 0 || (size_t)bytes >= *budget ? 0 : *budget - (size_t)bytes;
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "reading a purged session's rows");
        *empty = !ret && seen == n;
    }
    sqlite3_finalize(q);
    for (size_t i = 0; !ret && i < n; i++) {
        sqlite3_bind_int64(d, 1, sid);
        sqlite3_bind_int64(d, 2, keys[i]);
        int rc = sqlite3_step(d);
        sqlite3_reset(d);
        if (rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "purging a deleted session's rows");
    }
    sqlite3_finalize(d);
    if (!ret)
        *rows += n;
    return ret;
}

/* One step in one transaction (writer lock held by the caller); *out filled on success. */
static int step_once(ma_store *st, size_t max_bytes, bool secure, ma_store_purge_result *out, char *err,
                     size_t errlen)
{
    conn *c = st->writer;
    *out = (ma_store_purge_result){.fast = !secure};
    if (!secure)
        (void)sqlite3_exec(c->db, "PRAGMA secure_delete = FAST", NULL, NULL, NULL);
    if (st->opt.synchronous != MA_STORE_SYNC_NORMAL)
        (void)sqlite3_exec(c->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    int rc = st_run(st, c, ST_BEGIN_IMMEDIATE, err, errlen), ret = 0;
    if (rc)
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a purge step");
    sqlite3_stmt *q = NULL;
    int64_t sid = 0;
    if (!ret && (ret = prepare(st, c, "SELECT sid FROM purge ORDER BY sid LIMIT 1", &q, err, errlen)) == 0) {
        rc = sqlite3_step(q);
        if (rc == SQLITE_ROW)
            sid = sqlite3_column_int64(q, 0);
        else if (rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "reading the purge queue");
    }
    sqlite3_finalize(q);
    /* Tables in order; a table left non-empty means this step's budget is spent. The session row goes
     * when every table was found empty (none gets rows of a tombstoned sid again). Without secure (a full
     * disk) the whole session goes in this one step, as every delete did before the purge: a step per
     * few rows would write more WAL frames in all, and on a full disk the WAL cannot be checkpointed
     * into a file that would have to grow, so every frame takes disk space. */
    size_t budget = max_bytes ? max_bytes : 1;
    bool all_empty = sid != 0;
    for (size_t t = 0; !ret && secure && all_empty && t < N_TABLES; t++) {
        bool empty = false;
        ret = purge_table(st, c, t, sid, &budget, &out->rows, &empty, err, errlen);
        all_empty = empty;
    }
    if (!ret && all_empty) {   /* the session row; without secure its ON DELETE CASCADE takes every row */
        int64_t before = sqlite3_total_changes64(c->db);
        ret = exec_sid(st, c, "DELETE FROM sessions WHERE sid = ?1", sid, "purging a deleted session", err, errlen);
        out->rows += ret ? 0 : (uint64_t)(sqlite3_total_changes64(c->db) - before);
        out->finished = !ret;
    }
    if (!ret && (rc = st_run(st, c, ST_COMMIT, err, errlen)))
        ret = st_fail_db(st, c->db, rc, err, errlen, "committing a purge step");
    if (ret)
        st_rollback(st, c);
    if (st->opt.synchronous != MA_STORE_SYNC_NORMAL)
        (void)sqlite3_exec(c->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
    if (!secure)
        (void)sqlite3_exec(c->db, "PRAGMA secure_delete = ON", NULL, NULL, NULL);
    if (!ret && out->finished && secure && !st->opt.in_memory)   /* the zeros into the file, the old frames out */
        sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (!ret) {
        out->sid = sid;
        atomic_fetch_add(&st->purged_rows, out->rows);
        if (out->finished)
            atomic_fetch_sub(&st->purging, 1);
        out->purging = atomic_load(&st->purging);
    }
    return ret;
}

int ma_store_purge_step(ma_store *st, size_t max_bytes, ma_store_purge_result *out, char *err, size_t errlen)
{
    ma_store_purge_result r;
    if (!out)
        out = &r;
    if (st->readonly) {
        st_seterr(err, errlen, "store %s: cannot purge: the data directory is read-only", st->path);
        return MA_EIO;
    }
    int gate = st_check_gate(st, err, errlen);   /* a store whose integrity check failed writes nothing */
    if (gate)
        return gate;
    pthread_mutex_lock(&st->wlock);
    /* While the reserve is lent (the disk was full) every step is the full-disk one below. */
    int ret = st->reserve_lent ? MA_EIO : step_once(st, max_bytes, true, out, err, errlen);
    if (ret == MA_EIO && !st->opt.in_memory) {
        /* A full (or failing) disk: the reserve's blocks back to the file system, then the whole session in
         * one step with secure_delete FAST, which writes only the b-tree pages it changes (ON writes every
         * freed page, zeroed). No checkpoint: on a full disk it would grow the database file into the
         * room the WAL needs, and fail. */
        st->reserve_lent |= st_reserve_release(st);
        ret = step_once(st, max_bytes, false, out, err, errlen);
    }
    /* The reserve again once the queue is empty; after a full disk at most RESERVE_AFTER_FULL of the room
     * the purge freed (enough for the next delete's tombstone; the rest is for the writes the operator
     * made room for). Until then a reserve given back stays given back: the purge needs the room. */
    if (ret == 0 && out->purging == 0) {
        st_reserve_make(st, st->reserve_lent ? RESERVE_AFTER_FULL : 0);
        st->reserve_lent = false;
    }
    pthread_mutex_unlock(&st->wlock);
    if (ret == 0 && out->fast)
        atomic_fetch_add(&st->purged_fast_rows, out->rows);
    return ret;
}

uint64_t ma_store_purging(ma_store *st)
{
    return atomic_load(&st->purging);
}

int st_purge_count(ma_store *st, char *err, size_t errlen)
{
    char buf[32];
    int ret = st_pragma_text(st, st->writer, "SELECT count(*) FROM purge", buf, sizeof buf, err, errlen);
    if (!ret)
        atomic_store(&st->purging, strtoull(buf, NULL, 10));
    return ret;
}
