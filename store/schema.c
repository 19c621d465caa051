/*
 * store/schema.c — the store's schema, its upgrades and the integrity checks at open (store/store_int.h;
 * docs/STORE.md, "Schema", "Versions and upgrades", "Integrity").
 *
 * Design
 *  - The schema is the list `migrations`: step i brings a file from PRAGMA user_version i to i+1, and a
 *    new file runs them all (0 -> 1 creates the version-1 tables). A step is SQL, optionally C code,
 *    optionally more SQL; all the missing steps and the new user_version run in one transaction, so a
 *    crash during an upgrade leaves the old file. A new version appends a step; shipped steps are
 *    never edited.
 *  - Schema 1 -> 2 (blocks_from_rows) repacks one-row-per-event into blocks of BLOCK events and payload
 *    rows, refusing rows that do not form 0..length-1 with one key/value size per session.
 *  - Integrity at open: PRAGMA quick_check (every page's b-tree structure) and, on a second connection
 *    in its own thread, the rows against each other (check_rows): both read the whole file, so they run
 *    side by side. A corrupt page is reported before a row mismatch.
 *
 * Deliberately not here: the runtime reads and writes and the connections (store.c).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/error.h"
#include "store/store_int.h"

static int blocks_from_rows(ma_store *st, conn *c, char *err, size_t errlen);

/* Migration i brings a database from user_version i to i+1: sql, then fn (C code, may be NULL), then
 * post (may be NULL). Append, never edit: a shipped step is history. Each runs inside the open
 * transaction of st_migrate(). */
static const struct {
    const char *sql;
    int (*fn)(ma_store *st, conn *c, char *err, size_t errlen);
    const char *post;
} migrations[MA_SCHEMA] = {
    /* 0 -> 1 */
    {
    "CREATE TABLE sessions("
    "  sid INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  config TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  length INTEGER NOT NULL DEFAULT 0 CHECK (length >= 0),"
    "  slots INTEGER NOT NULL DEFAULT 0 CHECK (slots >= 0),"
    "  event_bytes INTEGER NOT NULL DEFAULT 0,"
    "  blob_bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE blobs("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  kind INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 2),"
    "  data BLOB NOT NULL,"
    "  PRIMARY KEY (sid, kind));"
    "CREATE TABLE events("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL CHECK (idx >= 0),"
    "  k BLOB NOT NULL,"
    "  v BLOB NOT NULL,"
    "  payload TEXT,"
    "  PRIMARY KEY (sid, idx)) WITHOUT ROWID;",
    NULL, NULL},
    /* 1 -> 2: events in blocks of BLOCK (one row per event made durable ingest row-bound), payloads in a
     * table of their own holding only the events that have one. event_blocks is a rowid table with its
     * key in a separate index, not WITHOUT ROWID: a block row (tens of KiB) overflows its leaf page, and
     * seeking a WITHOUT ROWID b-tree compares whole records, so every cell the binary search touched
     * read its entire overflow chain (~4x slower chunk paging than schema 1); the index's cells are small
     * and the row is then found by rowid, reading the chain once. */
    {
    "CREATE TABLE event_blocks("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  block INTEGER NOT NULL CHECK (block >= 0),"
    "  n INTEGER NOT NULL CHECK (n BETWEEN 1 AND 64),"
    "  k BLOB NOT NULL,"
    "  v BLOB NOT NULL,"
    "  PRIMARY KEY (sid, block));"
    "CREATE TABLE payloads("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL CHECK (idx >= 0),"
    "  payload TEXT NOT NULL,"
    "  PRIMARY KEY (sid, idx)) WITHOUT ROWID;",
    blocks_from_rows,
    "DROP TABLE events;"},
    /* 2 -> 3: the archive index's rows (store/index_rows.c): per session, build and aligned block of 1,024
     * events, the events' lists and records, so that a restart reads the index instead of recomputing
     * it. A rowid table for the reason event_blocks is one (rows of ~57 KiB overflow their page); `lists`
     * first, so a scan of the lists alone reads only the start of each row. Sessions stored before have
     * no rows: their index is recomputed from the events at their first load and its rows written then. */
    {
    "CREATE TABLE index_blocks("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  build INTEGER NOT NULL CHECK (build >= 1),"
    "  block INTEGER NOT NULL CHECK (block >= 0),"
    "  lists BLOB NOT NULL,"
    "  codes BLOB NOT NULL,"
    "  PRIMARY KEY (sid, build, block));",
    NULL, NULL},
};
_Static_assert(BLOCK == 64, "the CHECK of event_blocks.n and the integrity query say 64");

/* Schema 1 -> 2: every session's per-event rows into blocks of BLOCK and payload rows. The rows must be
 * exactly 0..length-1 with one key/value size per session (what version 1's integrity check enforced);
 * anything else fails the upgrade as corrupt and the transaction leaves the file at version 1. */
static int blocks_from_rows(ma_store *st, conn *c, char *err, size_t errlen)
{
    sqlite3_stmt *ss = NULL, *es = NULL;
    unsigned char *kbuf = NULL, *vbuf = NULL;
    size_t kcap = 0, vcap = 0;
    int64_t converted = 0;
    int ret = 0;
    int rc = sqlite3_prepare_v2(c->db, "SELECT sid, id, length FROM sessions ORDER BY sid", -1, &ss, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "SELECT idx, k, v, payload FROM events WHERE sid = ?1 ORDER BY idx", -1,
                                &es, NULL);
    if (rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 1 -> 2");
        goto done;
    }
    while ((rc = sqlite3_step(ss)) == SQLITE_ROW) {
        int64_t sid = sqlite3_column_int64(ss, 0);
        uint64_t length = (uint64_t)sqlite3_column_int64(ss, 2);
        size_t kb = 0, vb = 0, in_block = 0;
        uint64_t at = 0;
        sqlite3_bind_int64(es, 1, sid);
        while ((rc = sqlite3_step(es)) == SQLITE_ROW) {
            size_t k_len = (size_t)sqlite3_column_bytes(es, 1), v_len = (size_t)sqlite3_column_bytes(es, 2);
            if (at == 0) {
                kb = k_len;
                vb = v_len;
                if (kcap < BLOCK * kb || vcap < BLOCK * vb) {
                    unsigned char *nk = realloc(kbuf, BLOCK * kb + 1), *nv;
                    if (nk)
                        kbuf = nk;
                    nv = realloc(vbuf, BLOCK * vb + 1);
                    if (nv)
                        vbuf = nv;
                    if (!nk || !nv) {
                        st_seterr(err, errlen, "store %s: schema upgrade 1 -> 2: out of memory", st->path);
                        ret = MA_ENOMEM;
                        goto done;
                    }
                    kcap = BLOCK * kb;
                    vcap = BLOCK * vb;
                }
            }
            if ((uint64_t)sqlite3_column_int64(es, 0) != at || at >= length || k_len != kb || v_len != vb) {
                st_seterr(err, errlen, "store %s: schema upgrade 1 -> 2: session '%s' (length %" PRIu64 "): event "
                          "row %lld (key/value %zu/%zu bytes) does not continue rows 0..%" PRIu64 " of %zu/%zu "
                          "bytes", st->path, (const char *)sqlite3_column_text(ss, 1), length,
                          sqlite3_column_int64(es, 0), k_len, v_len, at, kb, vb);
                ret = MA_ECORRUPT;
                goto done;
            }
            if (kb)
                memcpy(kbuf + in_block * kb, sqlite3_column_blob(es, 1), kb);
            if (vb)
                memcpy(vbuf + in_block * vb, sqlite3_column_blob(es, 2), vb);
            if (sqlite3_column_type(es, 3) != SQLITE_NULL &&
                (ret = st_put_payload(st, c, sid, at, (const char *)sqlite3_column_text(es, 3),
                                      sqlite3_column_bytes(es, 3), err, errlen)))
                goto done;
            at++;
            if (++in_block == BLOCK || at == length) {
                if ((ret = st_put_block(st, c, sid, (at - 1) / BLOCK, in_block, kbuf, kb, vbuf, vb, err, errlen)))
                    goto done;
                in_block = 0;
            }
        }
        sqlite3_reset(es);
        if (rc != SQLITE_DONE) {
            ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 1 -> 2: reading events");
            goto done;
        }
        if (at != length) {
            st_seterr(err, errlen, "store %s: schema upgrade 1 -> 2: session '%s' has length %" PRIu64 " but %"
                      PRIu64 " event rows", st->path, (const char *)sqlite3_column_text(ss, 1), length, at);
            ret = MA_ECORRUPT;
            goto done;
        }
        converted += (int64_t)at;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 1 -> 2: reading sessions");
        goto done;
    }
    /* Rows of no session would be dropped silently with the table: refuse instead. */
    sqlite3_finalize(es);
    es = NULL;
    rc = sqlite3_prepare_v2(c->db, "SELECT count(*) FROM events", -1, &es, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(es)) == SQLITE_ROW && sqlite3_column_int64(es, 0) != converted) {
        st_seterr(err, errlen, "store %s: schema upgrade 1 -> 2: %lld event rows belong to no session", st->path,
                  sqlite3_column_int64(es, 0) - converted);
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_ROW)
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 1 -> 2: counting events");
done:
    sqlite3_finalize(ss);
    sqlite3_finalize(es);
    free(kbuf);
    free(vbuf);
    return ret;
}

int st_migrate(ma_store *st, char *err, size_t errlen)
{
    conn *c = st->writer;
    char buf[64];
    int ret = st_pragma_text(st, c, "PRAGMA user_version", buf, sizeof buf, err, errlen);
    if (ret)
        return ret;
    long version = strtol(buf, NULL, 10);
    if (version > MA_SCHEMA) {
        st_seterr(err, errlen, "store %s: schema version %ld is newer than this memattnd supports (%d); "
                  "use the memattnd that wrote it or another data directory", st->path, version, MA_SCHEMA);
        return MA_ECORRUPT;
    }
    if ((ret = st_pragma_text(st, c, "PRAGMA application_id", buf, sizeof buf, err, errlen)))
        return ret;
    long app = strtol(buf, NULL, 10);
    if (app != 0 && app != MA_APP_ID) {
        st_seterr(err, errlen, "store %s: not a memattn database (application_id %ld)", st->path, app);
        return MA_ECORRUPT;
    }
    if (version == MA_SCHEMA)
        return 0;
    if (version == 0) {
        if ((ret = st_pragma_text(st, c, "SELECT count(*) FROM sqlite_schema", buf, sizeof buf, err, errlen)))
            return ret;
        if (strcmp(buf, "0") != 0) {
            st_seterr(err, errlen, "store %s: not a memattn database (it has tables but no schema version)",
                      st->path);
            return MA_ECORRUPT;
        }
    }
    if (st->readonly) {
        st_seterr(err, errlen, "store %s: schema version %ld needs an upgrade to %d, but the data directory "
                  "is read-only", st->path, version, MA_SCHEMA);
        return MA_EIO;
    }
    if ((ret = st_exec_sql(st, c, "BEGIN IMMEDIATE", err, errlen, "starting the schema upgrade")))
        return ret;
    for (long v = version; v < MA_SCHEMA; v++) {
        char what[64];
        snprintf(what, sizeof what, "schema upgrade %ld -> %ld", v, v + 1);
        if ((ret = st_exec_sql(st, c, migrations[v].sql, err, errlen, what)) ||
            (migrations[v].fn && (ret = migrations[v].fn(st, c, err, errlen))) ||
            (migrations[v].post && (ret = st_exec_sql(st, c, migrations[v].post, err, errlen, what))))
            goto fail;
    }
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d; PRAGMA application_id = %d;", MA_SCHEMA, MA_APP_ID);
    if ((ret = st_exec_sql(st, c, sql, err, errlen, "recording the schema version")) ||
        (ret = st_exec_sql(st, c, "COMMIT", err, errlen, "committing the schema upgrade")))
        goto fail;
    return 0;
fail:
    st_rollback(st, c);
    return ret;
}

/* PRAGMA quick_check on c: the b-tree structure of every page. */
static int check_pages(ma_store *st, conn *c, char *err, size_t errlen)
{
    char buf[512];
    int ret = st_pragma_text(st, c, "PRAGMA quick_check(4)", buf, sizeof buf, err, errlen);
    if (ret || strcmp(buf, "ok") == 0)
        return ret;
    /* quick_check reports pages it could not read as text ("error code=266"); a failing disk is an I/O
     * error, not a corrupt file. */
    const char *ec = strstr(buf, "error code=");
    int code = ec ? atoi(ec + strlen("error code=")) : SQLITE_CORRUPT;
    bool io = (code & 0xff) == SQLITE_IOERR || (code & 0xff) == SQLITE_NOMEM;
    st_seterr(err, errlen, "store %s: integrity check %s: %s", st->path,
              io ? "could not read the file" : "failed", buf);
    return io ? MA_EIO : MA_ECORRUPT;
}

/* The rows against each other: no state blobs or events of a missing session, and every session's events
 * exactly 0..length-1. */
static int check_rows(ma_store *st, conn *c, char *err, size_t errlen)
{
    int ret = 0;
    sqlite3_stmt *s = NULL;
    /* Orphan state blobs (a small table). */
    int rc = sqlite3_prepare_v2(c->db, "PRAGMA foreign_key_check(blobs)", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_seterr(err, errlen, "store %s: integrity check failed: state blobs of a missing session (sid %lld)",
                  st->path, sqlite3_column_int64(s, 1));
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "foreign key check");
        goto done;
    }
    sqlite3_finalize(s);
    /* One pass over the event blocks, in primary-key order: every session's blocks must be 0..count-1,
     * all full but the last, their counts summing to the length, every key/value blob n times one
     * per-session size; and no blocks may belong to a missing session. The second part finds sessions
     * with a length but no blocks at all (index probes only). */
    rc = sqlite3_prepare_v2(c->db,
        "SELECT s.id, b.sid, coalesce(s.length, -1), b.total, b.cnt, b.lo, b.hi FROM "
        "(SELECT sid, sum(n) AS total, count(*) AS cnt, min(block) AS lo, max(block) AS hi,"
        "  min(CASE WHEN n != 64 THEN block END) AS part,"
        "  sum(n < 1 OR n > 64 OR length(k) % n != 0 OR length(v) % n != 0) AS bad,"
        "  min(length(k) / n) AS k0, max(length(k) / n) AS k1, min(length(v) / n) AS v0,"
        "  max(length(v) / n) AS v1 FROM event_blocks GROUP BY sid) b "
        "LEFT JOIN sessions s ON s.sid = b.sid "
        "WHERE s.sid IS NULL OR b.total != s.length OR b.lo != 0 OR b.hi != b.cnt - 1 OR b.part != b.hi "
        "OR b.bad != 0 OR b.k0 != b.k1 OR b.v0 != b.v1 "
        "UNION ALL SELECT id, sid, length, 0, 0, NULL, NULL FROM sessions s WHERE length > 0 AND "
        "NOT EXISTS (SELECT 1 FROM event_blocks b WHERE b.sid = s.sid) LIMIT 1", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_NULL)
            st_seterr(err, errlen, "store %s: integrity check failed: %lld event blocks of a missing session "
                      "(sid %lld)", st->path, sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 1));
        else
            st_seterr(err, errlen, "store %s: integrity check failed: session '%s' has length %lld but %lld "
                      "events in %lld blocks (%lld..%lld); expected blocks 0.. of %d events, only the last "
                      "partial, each key/value blob n times one size", st->path,
                      (const char *)sqlite3_column_text(s, 0), sqlite3_column_int64(s, 2),
                      sqlite3_column_int64(s, 3), sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 5),
                      sqlite3_column_int64(s, 6), BLOCK);
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "checking event blocks");
        goto done;
    }
    sqlite3_finalize(s);
    /* Index rows only of sessions that exist (the primary key's index answers it). */
    rc = sqlite3_prepare_v2(c->db,
        "SELECT DISTINCT sid FROM index_blocks WHERE sid NOT IN (SELECT sid FROM sessions) LIMIT 1", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_seterr(err, errlen, "store %s: integrity check failed: index rows of a missing session (sid %lld)",
                  st->path, sqlite3_column_int64(s, 0));
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "checking index rows");
        goto done;
    }
    sqlite3_finalize(s);
    /* Payloads only of events that exist. */
    rc = sqlite3_prepare_v2(c->db,
        "SELECT p.sid, p.idx, s.id, s.length FROM payloads p LEFT JOIN sessions s ON s.sid = p.sid "
        "WHERE s.sid IS NULL OR p.idx >= s.length LIMIT 1", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_seterr(err, errlen, "store %s: integrity check failed: a payload of event %lld of %s (sid %lld, "
                  "length %lld)", st->path, sqlite3_column_int64(s, 1),
                  sqlite3_column_type(s, 2) == SQLITE_NULL ? "a missing session"
                                                           : (const char *)sqlite3_column_text(s, 2),
                  sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 3));
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK)
        ret = st_fail_db(st, c->db, rc, err, errlen, "checking payloads");
done:
    sqlite3_finalize(s);
    return ret;
}

typedef struct {
    ma_store *st;
    conn *c;
    int ret;
    char err[512];
} rows_job;

static void *rows_main(void *p)
{
    rows_job *j = p;
    j->ret = check_rows(j->st, j->c, j->err, sizeof j->err);
    return NULL;
}

/* Both checks read the whole file; on a second connection the row check runs alongside quick_check
 * (restart time of a large store: docs/STORE.md). A corrupt page is reported before a row mismatch. */
int st_check_integrity(ma_store *st, char *err, size_t errlen)
{
    if (!st->opt.quick_check)
        return check_rows(st, st->writer, err, errlen);
    rows_job j = {.st = st};
    pthread_t t;
    bool threaded = !st->opt.in_memory && st_conn_open(st, true, &j.c, NULL, 0) == 0;
    if (threaded && pthread_create(&t, NULL, rows_main, &j) != 0) {
        st_conn_close(j.c);
        threaded = false;
    }
    int ret = check_pages(st, st->writer, err, errlen);
    if (threaded) {
        pthread_join(t, NULL);
        st_conn_close(j.c);
        if (!ret && j.ret) {
            st_seterr(err, errlen, "%s", j.err);
            ret = j.ret;
        }
        return ret;
    }
    return ret ? ret : check_rows(st, st->writer, err, errlen);
}
