/*
 * store/index_rows.c — the archive index's persisted rows (table index_blocks; docs/STORE.md, "Index
 * rows"; the rows' content: docs/ARCHIVE.md, "Persistence").
 *
 * A row is what the index (core/ivf.c) keeps of one aligned block of 1,024 events under one build: the
 * events' lists and records, opaque here (two blobs, `lists` first so that a scan of the lists alone
 * reads only the start of each row's overflow chain). Rows are keyed (session, build, block).
 *
 * Three ways rows are written:
 *  - with the events, in the mutation's own transaction (ma_store_commit → st_put_index_rows): the
 *    blocks the index listed in that mutation, under the current build;
 *  - staged by a background build (ma_store_index_put): rows of the next build, in small transactions
 *    with synchronous=NORMAL (no fsync of their own: the WAL is append-only, so the next FULL commit —
 *    at the latest the build's swap, which writes the archive meta naming the build — makes them durable
 *    with it; a staged row lost in a crash is staged again). A staged row is a pure function of the keys
 *    and the build's centroids, so one that survives a crash is still right; stale builds are dropped
 *    before a build stages anything;
 *  - dropped (ma_store_index_drop): every build's rows but the one kept, a few rows per transaction so a
 *    mutation never waits long for the writer, with secure_delete FAST (rows are derived from the event
 *    blocks, whose bytes stay in the file anyway: docs/SLOTS.md on forgetting).
 * Sessions are found by id in every call (rows of a deleted session are gone with it: ON DELETE CASCADE).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "store/store_int.h"

#define DROP_ROWS 32   /* rows deleted per transaction by ma_store_index_drop */

/* A statement prepared for one call (these run rarely: once per commit that lists a block, per scan). */
static int prepare(ma_store *st, conn *c, const char *sql, sqlite3_stmt **s, char *err, size_t errlen)
{
    int rc = sqlite3_prepare_v2(c->db, sql, -1, s, NULL);
    return rc == SQLITE_OK ? 0 : st_fail_db(st, c->db, rc, err, errlen, "preparing an index statement");
}

int st_put_index_rows(ma_store *st, conn *c, int64_t sid, const ma_store_index_rows *r, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int ret = prepare(st, c,
                      "INSERT OR REPLACE INTO index_blocks(sid, build, block, lists, codes) VALUES (?1, ?2, ?3, ?4, ?5)",
                      &s, err, errlen);
    for (size_t i = 0; !ret && i < r->n; i++) {
        sqlite3_bind_int64(s, 1, sid);
        sqlite3_bind_int64(s, 2, r->build);
        sqlite3_bind_int64(s, 3, (int64_t)(r->first + i));
        sqlite3_bind_blob(s, 4, (const char *)r->lists + i * r->lists_bytes, (int)r->lists_bytes, SQLITE_STATIC);
        sqlite3_bind_blob(s, 5, (const char *)r->codes + i * r->codes_bytes, (int)r->codes_bytes, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE)
            ret = st_fail_db(st, c->db, rc, err, errlen, "writing index rows");
    }
    sqlite3_finalize(s);
    return ret;
}

/* The writer, in a transaction whose commit is not fsync'd (see the top of the file); released by
 * relaxed_end. */
static int relaxed_begin(ma_store *st, char *err, size_t errlen)
{
    pthread_mutex_lock(&st->wlock);
    conn *c = st->writer;
    int ret = st_check_gate(st, err, errlen);
    if (ret)
        return ret;   /* relaxed_end still runs: it rolls back nothing and releases the lock */
    if (st->opt.synchronous != MA_STORE_SYNC_NORMAL)
        (void)sqlite3_exec(c->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    int rc = st_run(st, c, ST_BEGIN_IMMEDIATE, err, errlen);
    if (rc)
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a transaction");
    return ret;
}

static int relaxed_end(ma_store *st, int ret, char *err, size_t errlen)
{
    conn *c = st->writer;
    int rc;
    if (!ret && (rc = st_run(st, c, ST_COMMIT, err, errlen)))
        ret = st_fail_db(st, c->db, rc, err, errlen, "committing index rows");
    if (ret)
        st_rollback(st, c);
    if (st->opt.synchronous != MA_STORE_SYNC_NORMAL)
        (void)sqlite3_exec(c->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
    pthread_mutex_unlock(&st->wlock);
    return ret;
}

/* The session's sid (MA_ENOTFOUND when there is none). */
static int sid_of(ma_store *st, conn *c, const char *id, int64_t *sid, char *err, size_t errlen)
{
    sqlite3_stmt *s = st_stmt(st, c, ST_SID, err, errlen);
    if (!s)
        return MA_EIO;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), ret = 0;
    if (rc == SQLITE_ROW)
        *sid = sqlite3_column_int64(s, 0);
    else if (rc == SQLITE_DONE) {
        st_seterr(err, errlen, "session '%s' does not exist", id);
        ret = MA_ENOTFOUND;
    } else
        ret = st_fail_db(st, c->db, rc, err, errlen, "looking up a session");
    sqlite3_reset(s);
    return ret;
}

int ma_store_index_put(ma_store *st, const char *id, const ma_store_index_rows *r, char *err, size_t errlen)
{
    if (!id || !*id || !r || (r->n && (!r->lists || !r->codes)) || r->lists_bytes > INT32_MAX ||
        r->codes_bytes > INT32_MAX) {
        st_seterr(err, errlen, "store %s: bad index rows", st->path);
        return MA_EINVAL;
    }
    int64_t sid = 0;
    int ret = relaxed_begin(st, err, errlen);
    if (!ret)
        ret = sid_of(st, st->writer, id, &sid, err, errlen);
    if (!ret)
        ret = st_put_index_rows(st, st->writer, sid, r, err, errlen);
    return relaxed_end(st, ret, err, errlen);
}

int ma_store_index_scan(ma_store *st, const char *id, const ma_store_index_query *q, char *err, size_t errlen)
{
    const uint32_t build = q->build;
    const uint64_t first = q->first, n = q->n;
    const bool with_codes = q->with_codes;
    conn *c;
    sqlite3_stmt *s = NULL;
    int ret = st_reader_get(st, &c, err, errlen);
    if (ret)
        return ret;
    ret = prepare(st, c,
                  with_codes
                      ? "SELECT block, lists, codes FROM index_blocks WHERE sid = (SELECT sid FROM sessions "
                        "WHERE id = ?1) AND build = ?2 AND block >= ?3 AND block < ?4 ORDER BY block"
                      : "SELECT block, lists FROM index_blocks WHERE sid = (SELECT sid FROM sessions "
                        "WHERE id = ?1) AND build = ?2 AND block >= ?3 AND block < ?4 ORDER BY block",
                  &s, err, errlen);
    if (!ret) {
        sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, build);
        sqlite3_bind_int64(s, 3, (int64_t)first);
        sqlite3_bind_int64(s, 4, (int64_t)(first + n));
    }
    int rc = SQLITE_DONE;
    while (!ret && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const void *l = sqlite3_column_blob(s, 1);
        size_t ll = (size_t)sqlite3_column_bytes(s, 1);
        const void *cd = with_codes ? sqlite3_column_blob(s, 2) : NULL;
        size_t cl = with_codes ? (size_t)sqlite3_column_bytes(s, 2) : 0;
        ret = q->each(q->arg, (uint64_t)sqlite3_column_int64(s, 0), l, ll, cd, cl);
    }
    if (!ret && rc != SQLITE_DONE)
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading index rows");
    else if (ret < 0 && err && errlen && !*err)
        st_seterr(err, errlen, "store %s: index rows of session '%s': %s", st->path, id, ma_strerror(ret));
    sqlite3_finalize(s);
    st_reader_put(st, c);
    return ret;
}

int ma_store_index_drop(ma_store *st, const char *id, uint32_t keep, size_t *dropped, char *err, size_t errlen)
{
    size_t total = 0;
    int ret = 0;
    for (;;) {
        int64_t sid = 0;
        sqlite3_stmt *s = NULL;
        conn *c = st->writer;
        if ((ret = relaxed_begin(st, err, errlen)) == 0 && (ret = sid_of(st, c, id, &sid, err, errlen)) == 0)
            ret = prepare(st, c,
                          "DELETE FROM index_blocks WHERE rowid IN (SELECT rowid FROM index_blocks WHERE sid = ?1 "
                          "AND build != ?2 LIMIT " "32" ")",
                          &s, err, errlen);
        int n = 0;
        if (!ret) {
            (void)sqlite3_exec(c->db, "PRAGMA secure_delete = FAST", NULL, NULL, NULL);
            sqlite3_bind_int64(s, 1, sid);
            sqlite3_bind_int64(s, 2, keep);
            int rc = sqlite3_step(s);
            if (rc != SQLITE_DONE)
                ret = st_fail_db(st, c->db, rc, err, errlen, "dropping index rows");
            else
                n = sqlite3_changes(c->db);
            (void)sqlite3_exec(c->db, "PRAGMA secure_delete = ON", NULL, NULL, NULL);
        }
        sqlite3_finalize(s);
        ret = relaxed_end(st, ret, err, errlen);
        if (ret || n == 0)
            break;
        total += (size_t)n;
    }
    if (dropped)
        *dropped = total;
    return ret == MA_ENOTFOUND ? 0 : ret;
}
_Static_assert(DROP_ROWS == 32, "the LIMIT of ma_store_index_drop's statement");
