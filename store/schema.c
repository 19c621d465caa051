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
 *  - Schema 2 -> 3 (slots_to_rows) splits each whole slot table into its state and version rows through
 *    the converter the store was opened with (the format is core's; the store keeps it opaque).
 *  - Schema 3 -> 4 adds the Idempotency-Key records (store/idem.c), 4 -> 5 the archive index's rows
 *    (store/index_rows.c); 5 -> 6 (sums_for_rows) a checksum
 *    to every event block and payload row, computed for the rows there are; 6 -> 7 (rows_for_pages)
 *    regroups every session's events into rows of a page of events (st_row_events), checked on the way;
 *    7 -> 8 adds the purge queue of deleted sessions (store/purge.c).
 *  - Integrity at open: PRAGMA quick_check (every page's b-tree structure) and, on a second connection
 *    in its own thread, the rows against each other (check_rows): both read the whole file, so they run
 *    side by side. A corrupt page is reported before a row mismatch.
 *  - Or in the background (ma_store_options.check_in_background, the daemon's default): the same checks
 *    on a thread of the store's at nice +10, one after the other on one reader connection of its own,
 *    inside one read transaction (one snapshot: commits go on beside it, and every statement's invariant
 *    holds in any committed state), so that opening a store costs nothing that grows with the file. A
 *    failure closes the store's gate (st_check_gate): every later call fails with the check's code and
 *    message. ma_store_close interrupts a check still running (a progress handler reads check_stop).
 *
 * Deliberately not here: the runtime reads and writes and the connections (store.c).
 */
#include <inttypes.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/error.h"
#include "store/store_int.h"

static int blocks_from_rows(ma_store *st, conn *c, char *err, size_t errlen);
static int slots_to_rows(ma_store *st, conn *c, char *err, size_t errlen);
static int sums_for_rows(ma_store *st, conn *c, char *err, size_t errlen);
static int rows_for_pages(ma_store *st, conn *c, char *err, size_t errlen);

#define STR_(x) #x
#define STR(x) STR_(x)

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
    /* 2 -> 3: slot versions as rows of their own, written once, instead of inside the slot table blob
     * that every slot commit rewrote whole (O(history) per commit); blobs kind 1 becomes the table's
     * small state. slot_bytes keeps the rows' size for stored_bytes. A rowid table, for event_blocks'
     * reason: a version row is H·(d + d_v)·4 bytes and more, which overflows a page at larger sizes. */
    {
    "CREATE TABLE slot_versions("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  version INTEGER NOT NULL CHECK (version >= 1),"
    "  data BLOB NOT NULL,"
    "  PRIMARY KEY (sid, name, version));"
    "ALTER TABLE sessions ADD COLUMN slot_bytes INTEGER NOT NULL DEFAULT 0;",
    slots_to_rows, NULL},
    /* 3 -> 4: Idempotency-Key records (store/idem.c): a request's key and its answer, written in the
     * transaction of its change. sid is the session named by scope when it exists (its records go with
     * it), NULL for a detached record (a session delete's own key; POST /v1/sessions). seq numbers a
     * scope's records so that keeping the newest N is one range delete; created_at is indexed for the
     * age sweep; sid for the cascade of a session delete. A rowid table: a body may be large. */
    {
    "CREATE TABLE idempotency("
    "  scope TEXT NOT NULL,"
    "  key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),"
    "  seq INTEGER NOT NULL,"
    "  sid INTEGER REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  fingerprint INTEGER NOT NULL,"
    "  status INTEGER NOT NULL,"
    "  etag TEXT,"
    "  location TEXT,"
    "  body BLOB,"
    "  created_at INTEGER NOT NULL,"
    "  UNIQUE (scope, key));"
    "CREATE INDEX idempotency_seq ON idempotency(scope, seq);"
    "CREATE INDEX idempotency_age ON idempotency(created_at);"
    "CREATE INDEX idempotency_sid ON idempotency(sid);",
    NULL, NULL},
    /* 4 -> 5: the archive index's rows (store/index_rows.c): per session, build and aligned block of 1,024
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
    /* 5 -> 6: a checksum per event block and payload row (st_block_sum, st_payload_sum; docs/STORE.md, "Row
     * checksums"), checked whenever a row is read back; sums_for_rows computes them for the rows there are.
     * NULL (no checksum) is refused when read, like a wrong one. */
    {
    "ALTER TABLE event_blocks ADD COLUMN ck INTEGER;"
    "ALTER TABLE payloads ADD COLUMN ck INTEGER;",
    sums_for_rows,
    NULL},
    /* 6 -> 7: event rows of a page of events (st_row_events: 8 events at H·(d + d_v) = 128 instead of 64),
     * so that a sparse read's candidate costs a leaf and one overflow page instead of a 32 KiB overflow
     * chain (docs/STORE.md, "Events in rows of a page"). rows_for_pages copies every session's events, regrouped, into a
     * new table of event_blocks' definition, which then takes its place. The old rows are dropped with
     * secure_delete FAST: their bytes are the new rows' bytes. */
    {
    "CREATE TABLE event_rows("
    "  sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  block INTEGER NOT NULL CHECK (block >= 0),"
    "  n INTEGER NOT NULL CHECK (n BETWEEN 1 AND 64),"
    "  k BLOB NOT NULL,"
    "  v BLOB NOT NULL,"
    "  ck INTEGER,"
    "  PRIMARY KEY (sid, block));",
    rows_for_pages,
    "PRAGMA secure_delete = FAST;"
    "DROP TABLE event_blocks;"
    "ALTER TABLE event_rows RENAME TO event_blocks;"
    "PRAGMA secure_delete = ON;"},
    /* 7 -> 8: the purge queue (store/purge.c; docs/STORE.md, "Deleting a session"). A delete renames its
     * session row to PURGE_PREFIX<sid> (the id is free at once) and lists the sid here, in one small
     * transaction; the session's rows are deleted afterwards, a few at a time, and its session row last,
     * whose cascade takes this row with it. The sid stays the session's key meanwhile, so a session
     * created again with the same id gets a new sid and never meets the old rows. */
    {
    "CREATE TABLE purge("
    "  sid INTEGER PRIMARY KEY REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  deleted_at INTEGER NOT NULL);",
    NULL, NULL},
};
_Static_assert(BLOCK == 64, "the CHECK of event_blocks.n and the integrity query say 64");

/* Inserts one row of a version-2 table (no checksum column yet: the step 5 -> 6 adds it and computes it).
 * Binds sid, index, then either (n, k, v) for a block or (payload text) for a payload. */
static int put_v2(ma_store *st, conn *c, sqlite3_stmt *ins, int64_t sid, uint64_t i, size_t n, const void *a,
                  size_t alen, const void *b, size_t blen, char *err, size_t errlen)
{
    sqlite3_bind_int64(ins, 1, sid);
    sqlite3_bind_int64(ins, 2, (int64_t)i);
    if (b) {
        sqlite3_bind_int64(ins, 3, (int64_t)n);
        sqlite3_bind_blob64(ins, 4, a, alen, SQLITE_STATIC);
        sqlite3_bind_blob64(ins, 5, b, blen, SQLITE_STATIC);
    } else {
        sqlite3_bind_text64(ins, 3, a, alen, SQLITE_STATIC, SQLITE_UTF8);
    }
    int rc = sqlite3_step(ins);
    sqlite3_reset(ins);
    sqlite3_clear_bindings(ins);
    return rc == SQLITE_DONE ? 0 : st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 1 -> 2: writing rows");
}

/* Schema 1 -> 2: every session's per-event rows into blocks of BLOCK and payload rows. The rows must be
 * exactly 0..length-1 with one key/value size per session (what version 1's integrity check enforced);
 * anything else fails the upgrade as corrupt and the transaction leaves the file at version 1. */
static int blocks_from_rows(ma_store *st, conn *c, char *err, size_t errlen)
{
    sqlite3_stmt *ss = NULL, *es = NULL, *ib = NULL, *ip = NULL;
    unsigned char *kbuf = NULL, *vbuf = NULL;
    size_t kcap = 0, vcap = 0;
    int64_t converted = 0;
    int ret = 0;
    int rc = sqlite3_prepare_v2(c->db, "SELECT sid, id, length FROM sessions ORDER BY sid", -1, &ss, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "SELECT idx, k, v, payload FROM events WHERE sid = ?1 ORDER BY idx", -1,
                                &es, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "INSERT INTO event_blocks(sid, block, n, k, v) VALUES (?1, ?2, ?3, ?4, ?5)",
                                -1, &ib, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "INSERT INTO payloads(sid, idx, payload) VALUES (?1, ?2, ?3)", -1, &ip, NULL);
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
                (ret = put_v2(st, c, ip, sid, at, 0, sqlite3_column_text(es, 3),
                              (size_t)sqlite3_column_bytes(es, 3), NULL, 0, err, errlen)))
                goto done;
            at++;
            if (++in_block == BLOCK || at == length) {
                if ((ret = put_v2(st, c, ib, sid, (at - 1) / BLOCK, in_block, kbuf, in_block * kb, vbuf,
                                  in_block * vb, err, errlen)))
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
    sqlite3_finalize(ib);
    sqlite3_finalize(ip);
    free(kbuf);
    free(vbuf);
    return ret;
}

/* Schema 2 -> 3: each session's whole slot table (blobs kind 1) split into its state and one row per
 * version by the converter the store was opened with (ma_store_options.slots_split). Without one, or for a
 * table the converter cannot read (MA_ECORRUPT: the session reports it when loaded, as before), the
 * table stays whole; core reads it, and the session's next commit stores its rows. */
typedef struct {
    ma_store *st;
    conn *c;
    int64_t sid;
    int64_t bytes;
    char *err;
    size_t errlen;
} split_ctx;

static int put_split_row(void *arg, const char *name, uint64_t version, const void *data, size_t len)
{
    split_ctx *x = arg;
    x->bytes += (int64_t)len;
    return st_put_slot_row(x->st, x->c, x->sid, &(st_slot_row){name, -1, version, data, len}, x->err, x->errlen);
}

static int slots_to_rows(ma_store *st, conn *c, char *err, size_t errlen)
{
    if (!st->opt.slots_split)
        return 0;
    sqlite3_stmt *q = NULL, *put = NULL;
    int ret = 0;
    int rc = sqlite3_prepare_v2(c->db, "SELECT s.sid, s.config, b.data FROM sessions s JOIN blobs b ON "
                                "b.sid = s.sid AND b.kind = 1 ORDER BY s.sid", -1, &q, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "UPDATE blobs SET data = ?2 WHERE sid = ?1 AND kind = 1; ", -1, &put, NULL);
    if (rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 2 -> 3");
        goto done;
    }
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        split_ctx x = {st, c, sqlite3_column_int64(q, 0), 0, err, errlen};
        void *state = NULL;
        size_t state_len = 0;
        ret = st->opt.slots_split((const char *)sqlite3_column_text(q, 1), sqlite3_column_blob(q, 2),
                                  (size_t)sqlite3_column_bytes(q, 2), &state, &state_len, put_split_row, &x);
        if (ret == MA_ECORRUPT) {
            /* Unreadable: left whole, with any rows the converter wrote before it noticed. */
            free(state);
            char sql[96];
            snprintf(sql, sizeof sql, "DELETE FROM slot_versions WHERE sid = %lld", (long long)x.sid);
            if ((ret = st_exec_sql(st, c, sql, err, errlen, "schema upgrade 2 -> 3")))
                goto done;
            continue;
        }
        if (ret) {
            free(state);
            if (err && errlen && !*err)
                st_seterr(err, errlen, "store %s: schema upgrade 2 -> 3: %s", st->path, ma_strerror(ret));
            goto done;
        }
        sqlite3_bind_int64(put, 1, x.sid);
        sqlite3_bind_blob(put, 2, state, (int)state_len, free);
        rc = sqlite3_step(put);
        sqlite3_reset(put);
        sqlite3_clear_bindings(put);
        if (rc != SQLITE_DONE) {
            ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 2 -> 3: writing a slot state");
            goto done;
        }
        char sql[160];
        snprintf(sql, sizeof sql, "UPDATE sessions SET slot_bytes = %lld, blob_bytes = (SELECT coalesce(sum("
                 "length(data)), 0) FROM blobs WHERE sid = %lld) WHERE sid = %lld", (long long)x.bytes,
                 (long long)x.sid, (long long)x.sid);
        if ((ret = st_exec_sql(st, c, sql, err, errlen, "schema upgrade 2 -> 3")))
            goto done;
    }
    if (rc != SQLITE_DONE)
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 2 -> 3: reading slot tables");
done:
    sqlite3_finalize(q);
    sqlite3_finalize(put);
    return ret;
}

/* SQL functions of the upgrade 5 -> 6: the checksums of a block row (block, n, k, v) and of a payload row
 * (idx, payload), as the store writes them. */
static void sql_block_sum(sqlite3_context *cx, int argc, sqlite3_value **a)
{
    (void)argc;
    const void *k = sqlite3_value_blob(a[2]);
    size_t kl = (size_t)sqlite3_value_bytes(a[2]);
    const void *v = sqlite3_value_blob(a[3]);
    size_t vl = (size_t)sqlite3_value_bytes(a[3]);
    st_block b = {(uint64_t)sqlite3_value_int64(a[0]), (size_t)sqlite3_value_int64(a[1]), k, v, kl, vl};
    sqlite3_result_int64(cx, (int64_t)st_block_sum(&b));
}

static void sql_payload_sum(sqlite3_context *cx, int argc, sqlite3_value **a)
{
    (void)argc;
    const unsigned char *t = sqlite3_value_text(a[1]);
    size_t tl = (size_t)sqlite3_value_bytes(a[1]);
    sqlite3_result_int64(cx, (int64_t)st_payload_sum((uint64_t)sqlite3_value_int64(a[0]), t ? t : (const unsigned char *)"", tl));
}

/* Schema 5 -> 6: the checksum of every existing block and payload row (each row is rewritten once, in the
 * upgrade's transaction). Rows written before this version were never checked: what they hold now is
 * what their checksum vouches for. */
static int sums_for_rows(ma_store *st, conn *c, char *err, size_t errlen)
{
    int rc = sqlite3_create_function(c->db, "ma_block_sum", 4, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                                     sql_block_sum, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_create_function(c->db, "ma_payload_sum", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                                     sql_payload_sum, NULL, NULL);
    if (rc != SQLITE_OK)
        return st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 5 -> 6");
    int ret = st_exec_sql(st, c, "UPDATE event_blocks SET ck = ma_block_sum(block, n, k, v);"
                                 "UPDATE payloads SET ck = ma_payload_sum(idx, payload);",
                          err, errlen, "schema upgrade 5 -> 6: computing row checksums");
    sqlite3_create_function(c->db, "ma_block_sum", 4, SQLITE_UTF8, NULL, NULL, NULL, NULL);
    sqlite3_create_function(c->db, "ma_payload_sum", 2, SQLITE_UTF8, NULL, NULL, NULL, NULL);
    return ret;
}

/* The row being assembled by the upgrade 6 -> 7 (rows_for_pages). */
typedef struct {
    sqlite3_stmt *ins;
    int64_t sid;
    uint64_t block;            /* its number among the session's new rows */
    size_t kb, vb, g, have;    /* bytes per key and value, events per row, events held */
    unsigned char *k, *v;      /* g keys, g values */
    bool damaged;              /* holds an event of a row whose checksum is wrong or missing */
} regroup;

static int regroup_flush(ma_store *st, conn *c, regroup *r, char *err, size_t errlen)
{
    if (!r->have)
        return 0;
    sqlite3_stmt *ins = r->ins;
    sqlite3_bind_int64(ins, 1, r->sid);
    sqlite3_bind_int64(ins, 2, (int64_t)r->block);
    sqlite3_bind_int64(ins, 3, (int64_t)r->have);
    sqlite3_bind_blob64(ins, 4, r->k, r->have * r->kb, SQLITE_STATIC);
    sqlite3_bind_blob64(ins, 5, r->v, r->have * r->vb, SQLITE_STATIC);
    if (r->damaged || st->opt.no_row_checksums)
        sqlite3_bind_null(ins, 6);
    else
        sqlite3_bind_int64(ins, 6, (int64_t)st_block_sum(&(st_block){r->block, r->have, r->k, r->v,
                                                                     r->have * r->kb, r->have * r->vb}));
    int rc = sqlite3_step(ins);
    sqlite3_reset(ins);
    sqlite3_clear_bindings(ins);
    if (rc != SQLITE_DONE)
        return st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 6 -> 7: writing event rows");
    r->block++;
    r->have = 0;
    r->damaged = false;
    return 0;
}

/* Schema 6 -> 7: every session's rows of 64 events (in key order) regrouped into rows of
 * st_row_events(kb, vb) events, numbered 0.. again, each with its checksum. Every source row is checked
 * (sizes, numbering, checksum) as it is read: rows that do not form blocks 0.. of one size per session
 * refuse the upgrade (MA_ECORRUPT naming the session; the file stays at version 6), and a new row that
 * holds any event of a source row whose checksum is wrong or missing gets no checksum (NULL), so the
 * damage is still refused when it is read, as before the upgrade. */
static int rows_for_pages(ma_store *st, conn *c, char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    regroup r = {.sid = -1};
    uint64_t next = 0;   /* the session's next source block */
    int ret = 0;
    int rc = sqlite3_prepare_v2(c->db, "SELECT sid, block, n, k, v, ck FROM event_blocks ORDER BY sid, block", -1,
                                &q, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(c->db, "INSERT INTO event_rows(sid, block, n, k, v, ck) VALUES (?1, ?2, ?3, ?4, "
                                "?5, ?6)", -1, &r.ins, NULL);
    if (rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 6 -> 7");
        goto done;
    }
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        int64_t sid = sqlite3_column_int64(q, 0), n = sqlite3_column_int64(q, 2);
        uint64_t block = (uint64_t)sqlite3_column_int64(q, 1);
        size_t kl = (size_t)sqlite3_column_bytes(q, 3), vl = (size_t)sqlite3_column_bytes(q, 4);
        const unsigned char *k = sqlite3_column_blob(q, 3), *v = sqlite3_column_blob(q, 4);
        if (sid != r.sid) {   /* a new session: the last row of the one before, then its sizes */
            if ((ret = regroup_flush(st, c, &r, err, errlen)))
                goto done;
            r.sid = sid;
            r.block = next = 0;
            r.kb = n >= 1 && n <= BLOCK ? kl / (size_t)n : 0;
            r.vb = n >= 1 && n <= BLOCK ? vl / (size_t)n : 0;
            r.g = st_row_events(r.kb, r.vb);
            free(r.k);
            free(r.v);
            r.v = NULL;
            if (!(r.k = malloc(r.g * r.kb + 1)) || !(r.v = malloc(r.g * r.vb + 1))) {
                st_seterr(err, errlen, "store %s: schema upgrade 6 -> 7: out of memory", st->path);
                ret = MA_ENOMEM;
                goto done;
            }
        }
        if (n < 1 || n > BLOCK || block != next || !r.kb || !r.vb || kl != (size_t)n * r.kb ||
            vl != (size_t)n * r.vb || !k || !v) {
            st_seterr(err, errlen, "store %s: schema upgrade 6 -> 7: session sid %lld: event block %" PRIu64
                      " (%lld events, %zu/%zu key/value bytes) does not continue its blocks 0.. of one size",
                      st->path, (long long)sid, block, (long long)n, kl, vl);
            ret = MA_ECORRUPT;
            goto done;
        }
        bool bad = sqlite3_column_type(q, 5) != SQLITE_INTEGER ||
                   (uint64_t)sqlite3_column_int64(q, 5) != st_block_sum(&(st_block){block, (size_t)n, k, v, kl, vl});
        next++;
        for (size_t at = 0; at < (size_t)n;) {   /* into the buffer, whole rows written on the way */
            size_t take = (size_t)n - at < r.g - r.have ? (size_t)n - at : r.g - r.have;
            memcpy(r.k + r.have * r.kb, k + at * r.kb, take * r.kb);
            memcpy(r.v + r.have * r.vb, v + at * r.vb, take * r.vb);
            r.have += take;
            at += take;
            r.damaged |= bad;
            if (r.have == r.g && (ret = regroup_flush(st, c, &r, err, errlen)))
                goto done;
        }
    }
    if (rc != SQLITE_DONE)
        ret = st_fail_db(st, c->db, rc, err, errlen, "schema upgrade 6 -> 7: reading event blocks");
    else
        ret = regroup_flush(st, c, &r, err, errlen);
done:
    sqlite3_finalize(q);
    sqlite3_finalize(r.ins);
    free(r.k);
    free(r.v);
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
    if (version < 0) {   /* no memattn writes one (found by fuzz_store: it indexed the migrations with it) */
        st_seterr(err, errlen, "store %s: not a memattn database (schema version %ld)", st->path, version);
        return MA_ECORRUPT;
    }
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
        "  min(CASE WHEN n != max(1, min(" STR(BLOCK) ", " STR(ROW_BYTES) " / ((length(k) + length(v)) / n)))"
        "   THEN block END) AS part,"   /* st_row_events */
        "  sum(n < 1 OR n > 64 OR length(k) % n != 0 OR length(v) % n != 0) AS bad,"
        "  min(length(k) / n) AS k0, max(length(k) / n) AS k1, min(length(v) / n) AS v0,"
        "  max(length(v) / n) AS v1 FROM event_blocks GROUP BY sid) b "
        "LEFT JOIN sessions s ON s.sid = b.sid "
        "WHERE s.sid IS NULL OR (s.sid NOT IN (SELECT sid FROM purge) AND (b.total != s.length OR b.lo != 0 "
        "OR b.hi != b.cnt - 1 OR b.part != b.hi OR b.bad != 0 OR b.k0 != b.k1 OR b.v0 != b.v1)) "
        "UNION ALL SELECT id, sid, length, 0, 0, NULL, NULL FROM sessions s WHERE length > 0 AND "
        "sid NOT IN (SELECT sid FROM purge) AND "
        "NOT EXISTS (SELECT 1 FROM event_blocks b WHERE b.sid = s.sid) LIMIT 1", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_NULL)
            st_seterr(err, errlen, "store %s: integrity check failed: %lld event blocks of a missing session "
                      "(sid %lld)", st->path, sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 1));
        else
            st_seterr(err, errlen, "store %s: integrity check failed: session '%s' has length %lld but %lld "
                      "events in %lld blocks (%lld..%lld); expected blocks 0.. of as many events as fit %d "
                      "bytes (1 to %d), only the last partial, each key/value blob n times one size", st->path,
                      (const char *)sqlite3_column_text(s, 0), sqlite3_column_int64(s, 2),
                      sqlite3_column_int64(s, 3), sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 5),
                      sqlite3_column_int64(s, 6), ROW_BYTES, BLOCK);
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
        "WHERE s.sid IS NULL OR (p.idx >= s.length AND s.sid NOT IN (SELECT sid FROM purge)) LIMIT 1", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_seterr(err, errlen, "store %s: integrity check failed: a payload of event %lld of %s (sid %lld, "
                  "length %lld)", st->path, sqlite3_column_int64(s, 1),
                  sqlite3_column_type(s, 2) == SQLITE_NULL ? "a missing session"
                                                           : (const char *)sqlite3_column_text(s, 2),
                  sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 3));
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "checking payloads");
        goto done;
    }
    sqlite3_finalize(s);
    /* Slot version rows only of existing sessions, their sizes adding up to the session's slot_bytes (one
     * pass in key order; length() does not read the records). */
    rc = sqlite3_prepare_v2(c->db,
        "SELECT v.sid, s.id, s.slot_bytes, v.total FROM (SELECT sid, sum(length(data)) AS total FROM "
        "slot_versions GROUP BY sid) v LEFT JOIN sessions s ON s.sid = v.sid "
        "WHERE s.sid IS NULL OR (s.slot_bytes != v.total AND s.sid NOT IN (SELECT sid FROM purge)) "
        "UNION ALL SELECT sid, id, slot_bytes, 0 FROM sessions s WHERE slot_bytes != 0 AND "
        "sid NOT IN (SELECT sid FROM purge) AND "
        "NOT EXISTS (SELECT 1 FROM slot_versions v WHERE v.sid = s.sid) LIMIT 1", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        st_seterr(err, errlen, "store %s: integrity check failed: slot versions of %s (sid %lld) hold %lld "
                  "bytes, the session row says %lld", st->path,
                  sqlite3_column_type(s, 1) == SQLITE_NULL ? "a missing session"
                                                           : (const char *)sqlite3_column_text(s, 1),
                  sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 3), sqlite3_column_int64(s, 2));
        ret = MA_ECORRUPT;
        goto done;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK)
        ret = st_fail_db(st, c->db, rc, err, errlen, "checking slot versions");
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

/* ---- the check in the background ---------------------------------------------------------------- */

/* sqlite's progress handler on the check's connection: non-zero interrupts the statement running. */
static int check_progress(void *p)
{
    ma_store *st = p;
    return atomic_load(&st->check_stop);
}

static double mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *check_main(void *p)
{
    ma_store *st = p;
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);   /* advice: fine if refused */
    double t0 = mono_seconds();
    char err[sizeof st->check_msg];
    conn *c = NULL;
    int ret = st_conn_open(st, true, &c, err, sizeof err);
    if (!ret) {
        sqlite3_progress_handler(c->db, 4096, check_progress, st);
        if ((ret = st_exec_sql(st, c, "BEGIN", err, sizeof err, "starting the integrity check")) == 0) {
            if (st->opt.quick_check)
                ret = check_pages(st, c, err, sizeof err);
            if (!ret)
                ret = check_rows(st, c, err, sizeof err);
            st_rollback(st, c);   /* a read transaction: ends it */
        }
        st_conn_close(c);
    }
    if (atomic_load(&st->check_stop))
        return NULL;   /* interrupted by ma_store_close: neither passed nor failed */
    if (ret)
        snprintf(st->check_msg, sizeof st->check_msg, "%s", err);
    atomic_store(&st->checked, ret);
    if (st->opt.on_checked)
        st->opt.on_checked(st->opt.on_checked_arg, ret, ret ? st->check_msg : "", mono_seconds() - t0);
    return NULL;
}

int st_check_start(ma_store *st, char *err, size_t errlen)
{
    atomic_store(&st->checked, MA_STORE_CHECKING);
    if (pthread_create(&st->check_thread, NULL, check_main, st) != 0) {
        atomic_store(&st->checked, 0);
        st_seterr(err, errlen, "store %s: cannot start the integrity check's thread", st->path);
        return MA_ENOMEM;
    }
    st->check_started = true;
    return 0;
}

void st_check_stop(ma_store *st)
{
    if (!st->check_started)
        return;
    atomic_store(&st->check_stop, 1);
    pthread_join(st->check_thread, NULL);
    st->check_started = false;
}

int st_check_gate(ma_store *st, char *err, size_t errlen)
{
    int rc = atomic_load(&st->checked);
    if (rc >= 0)
        return 0;
    st_seterr(err, errlen, "%s (found by the integrity check after the store opened: it serves nothing until the "
              "file is repaired or restored from a backup)", st->check_msg);
    return rc;
}

int ma_store_check_state(ma_store *st, char *msg, size_t len)
{
    int rc = atomic_load(&st->checked);
    if (rc < 0 && msg && len)
        snprintf(msg, len, "%s", st->check_msg);
    return rc;
}
