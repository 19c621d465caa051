/*
 * tests/unit/test_store.c — the sqlite store in isolation (store/store.h).
 *
 * Every test works in its own fresh directory under $TMPDIR. Event contents are a deterministic function
 * of (session seed, event index, component), so any copy of the data — after a reopen, a crash, a backup
 * — can be checked against what must be there. Faults are real where the OS allows (a read-only bind
 * mount in a private mount namespace, a capped database, SIGKILL) and injected through the VFS shim of
 * tests/support/store_fault.h otherwise (EIO on write/read/fsync, ENOSPC).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store/store_int.h"   /* MA_SCHEMA */

#include "core/error.h"
#include "core/slots.h"
#include "registry/pager.h"
#include "registry/params_text.h"
#include "store/store.h"
#include "store/store_int.h"   /* MA_SCHEMA: the version a file is upgraded to */
#include "tests/support/store_fault.h"

#define KF 8    /* floats per key (H·d) */
#define VF 6    /* floats per value (H·d_v) */
/* Where a read of events puts them: keys of kf floats into k, values into v, payloads into pl (or NULL). */
#define INTO(kf, k, v, pl) (&(ma_store_events){(kf), VF, (k), (v), (pl)})

static char errbuf[1024];

/* ---- fixtures --------------------------------------------------------------------------------- */

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static char *fresh_dir(void)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *d = malloc(strlen(base) + 32);
    sprintf(d, "%s/ma_store_XXXXXX", base);
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_dir(char *d)
{
    nftw(d, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static char *db_path(const char *dir)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/memattn.db", dir);
    return p;
}

static float kval(int seed, uint64_t i, int j)
{
    return (float)seed * 1000.0f + (float)i + (float)j / 16.0f;
}

static float vval(int seed, uint64_t i, int j)
{
    return -(float)seed * 1000.0f - (float)i - (float)j / 32.0f;
}

static char *payload_of(int seed, uint64_t i)
{
    if (i % 3 == 2)
        return NULL;
    char *p = malloc(64);
    snprintf(p, 64, "{\"s\":%d,\"i\":%llu}", seed, (unsigned long long)i);
    return p;
}

/* The blob a session holds at length L (so a copy can be checked for consistency with its length). */
static void blob_of(int seed, uint64_t L, int kind, char *buf, size_t n)
{
    snprintf(buf, n, "blob%d seed=%d length=%llu", kind, seed, (unsigned long long)L);
}

/* Commits events [from, from+n) of session id (seed) with all three blobs. Returns the store's code. */
static int commit_batch(ma_store *st, const char *id, int seed, uint64_t from, size_t n)
{
    float *k = malloc((n ? n : 1) * KF * sizeof(float)), *v = malloc((n ? n : 1) * VF * sizeof(float));
    char **pl = calloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < KF; j++)
            k[i * KF + j] = kval(seed, from + i, j);
        for (int j = 0; j < VF; j++)
            v[i * VF + j] = vval(seed, from + i, j);
        pl[i] = payload_of(seed, from + i);
    }
    char b[3][96];
    for (int i = 0; i < 3; i++)
        blob_of(seed, from + n, i, b[i], sizeof b[i]);
    ma_store_delta d = {
        .first_event = from, .n_events = n, .k_floats = KF, .v_floats = VF, .k = k, .v = v,
        .payloads = (const char *const *)pl,
        .backbone = {b[0], strlen(b[0])}, .slots_blob = {b[1], strlen(b[1])}, .archive_meta = {b[2], strlen(b[2])},
        .length = from + n, .slots = (size_t)(from + n) % 7, .updated_at = 1000 + (int64_t)(from + n),
    };
    int rc = ma_store_commit(st, id, &d, errbuf, sizeof errbuf);
    for (size_t i = 0; i < n; i++)
        free(pl[i]);
    free(pl);
    free(k);
    free(v);
    return rc;
}

/* Checks that session id holds exactly length L of seed's data (row, blobs, events, payloads). */
static void check_session(ma_store *st, const char *id, int seed, uint64_t L)
{
    ma_store_session s;
    int rc = ma_store_session_load(st, id, &s, errbuf, sizeof errbuf);
    if (rc)
        fail_msg("load %s: %d %s", id, rc, errbuf);
    assert_string_equal(s.id, id);
    assert_int_equal(s.length, L);
    assert_int_equal(s.slots, L % 7);
    if (L > 0) {
        char b[96];
        ma_blob *got[3] = {&s.backbone, &s.slots_blob, &s.archive_meta};
        for (int i = 0; i < 3; i++) {
            blob_of(seed, L, i, b, sizeof b);
            assert_int_equal(got[i]->len, strlen(b));
            assert_memory_equal(got[i]->data, b, strlen(b));
        }
        assert_true(s.stored_bytes >= L * (KF + VF) * sizeof(float));
    }
    /* The summary is the same row without the blobs' bytes, only their sizes. */
    ma_store_session m;
    rc = ma_store_session_summary(st, id, &m, errbuf, sizeof errbuf);
    if (rc)
        fail_msg("summary %s: %d %s", id, rc, errbuf);
    assert_string_equal(m.id, s.id);
    assert_string_equal(m.config_json, s.config_json);
    assert_true(m.created_at == s.created_at && m.updated_at == s.updated_at);
    assert_true(m.length == s.length && m.slots == s.slots && m.stored_bytes == s.stored_bytes);
    const ma_blob *full[3] = {&s.backbone, &s.slots_blob, &s.archive_meta};
    const ma_blob *sized[3] = {&m.backbone, &m.slots_blob, &m.archive_meta};
    for (int i = 0; i < 3; i++) {
        assert_null(sized[i]->data);
        assert_int_equal(sized[i]->len, full[i]->len);
    }
    ma_store_session_clear(&m);
    ma_store_session_clear(&s);
    if (L == 0)
        return;
    float *k = malloc(L * KF * sizeof(float)), *v = malloc(L * VF * sizeof(float));
    char **pl = malloc(L * sizeof(char *));
    rc = ma_store_load_events(st, id, 0, L, INTO(KF, k, v, pl), errbuf, sizeof errbuf);
    if (rc)
        fail_msg("load_events %s: %d %s", id, rc, errbuf);
    for (uint64_t i = 0; i < L; i++) {
        for (int j = 0; j < KF; j++)
            assert_true(k[i * KF + j] == kval(seed, i, j));
        for (int j = 0; j < VF; j++)
            assert_true(v[i * VF + j] == vval(seed, i, j));
        char *want = payload_of(seed, i);
        if (want)
            assert_string_equal(pl[i], want);
        else
            assert_null(pl[i]);
        free(want);
        free(pl[i]);
    }
    free(pl);
    free(k);
    free(v);
}

static ma_store *open_ok(const char *dir)
{
    ma_store *st = NULL;
    int rc = ma_store_open(dir, &st, errbuf, sizeof errbuf);
    if (rc)
        fail_msg("open %s: %d %s", dir, rc, errbuf);
    return st;
}

/* Runs SQL on the database file directly (to fabricate old, foreign or inconsistent files). */
static void raw_sql(const char *dir, const char *sql)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

/* ---- basic behaviour -------------------------------------------------------------------------- */

static void test_roundtrip_and_reopen(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_readonly(st), 0);
    assert_int_equal(ma_store_session_create(st, "alpha", "{\"dim\":8}", 5, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_create(st, "beta", "{}", 6, errbuf, sizeof errbuf), 0);
    check_session(st, "alpha", 1, 0);
    assert_int_equal(commit_batch(st, "alpha", 1, 0, 10), 0);
    assert_int_equal(commit_batch(st, "alpha", 1, 10, 1), 0);
    assert_int_equal(commit_batch(st, "beta", 2, 0, 300), 0);
    check_session(st, "alpha", 1, 11);
    check_session(st, "beta", 2, 300);

    /* A sub-range and single payloads. */
    float k[5 * KF], v[5 * VF];
    assert_int_equal(ma_store_load_events(st, "beta", 100, 5, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), 0);
    assert_true(k[0] == kval(2, 100, 0) && v[4 * VF + 5] == vval(2, 104, 5));
    char *p;
    assert_int_equal(ma_store_load_payload(st, "beta", 4, &p, errbuf, sizeof errbuf), 0);
    assert_string_equal(p, "{\"s\":2,\"i\":4}");
    free(p);
    assert_int_equal(ma_store_load_payload(st, "beta", 5, &p, errbuf, sizeof errbuf), 0);
    assert_null(p);
    assert_int_equal(ma_store_load_payload(st, "beta", 300, &p, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_load_events(st, "beta", 298, 5, INTO(KF, k, v, NULL), errbuf, sizeof errbuf),
                     MA_ENOTFOUND);
    assert_int_equal(ma_store_load_events(st, "gamma", 0, 1, INTO(KF, k, v, NULL), errbuf, sizeof errbuf),
                     MA_ENOTFOUND);
    /* The caller's idea of the dimensions is checked against what is stored. */
    assert_int_equal(ma_store_load_events(st, "beta", 0, 1, INTO(KF + 1, k, v, NULL), errbuf, sizeof errbuf),
                     MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "expected"));

    /* The config and times. */
    ma_store_session s;
    assert_int_equal(ma_store_session_load(st, "alpha", &s, errbuf, sizeof errbuf), 0);
    assert_string_equal(s.config_json, "{\"dim\":8}");
    assert_int_equal(s.created_at, 5);
    assert_int_equal(s.updated_at, 1011);
    ma_store_session_clear(&s);
    assert_int_equal(ma_store_session_load(st, "nope", &s, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_session_summary(st, "nope", &s, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_null(s.id);

    /* A commit without blobs leaves them as they were. */
    ma_store_delta d = {.length = 11, .slots = 4, .updated_at = 2000};
    assert_int_equal(ma_store_commit(st, "alpha", &d, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_load(st, "alpha", &s, errbuf, sizeof errbuf), 0);
    assert_int_equal(s.slots, 4);
    assert_int_equal(s.updated_at, 2000);
    assert_memory_equal(s.backbone.data, "blob0 seed=1 length=11", s.backbone.len);
    ma_store_session_clear(&s);
    assert_int_equal(commit_batch(st, "alpha", 1, 11, 0), 0);   /* restore slots = L % 7 */

    ma_store_stats stats;
    ma_store_stats_get(st, &stats);
    assert_true(stats.commits >= 6);
    assert_int_equal(stats.events_written, 311);
    assert_true(ma_store_bytes(st) > 300 * (KF + VF) * sizeof(float));
    /* One store per directory: a second open is refused while the first is open. */
    ma_store *second = NULL;
    assert_int_equal(ma_store_open(dir, &second, errbuf, sizeof errbuf), MA_EBUSY);
    assert_null(second);
    assert_non_null(strstr(errbuf, "in use by another process"));
    ma_store_close(st);

    st = open_ok(dir);
    check_session(st, "alpha", 1, 11);
    check_session(st, "beta", 2, 300);
    ma_store_close(st);
    rm_dir(dir);
}

static void test_create_delete_list(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    char id[32];
    for (int i = 0; i < 25; i++) {
        snprintf(id, sizeof id, "s%02d", 24 - i);
        assert_int_equal(ma_store_session_create(st, id, "{}", i, errbuf, sizeof errbuf), 0);
    }
    ma_store_stats st0, st1;
    ma_store_stats_get(st, &st0);
    assert_int_equal(ma_store_session_create(st, "s03", "{}", 0, errbuf, sizeof errbuf), MA_EEXISTS);
    assert_non_null(strstr(errbuf, "s03"));
    ma_store_stats_get(st, &st1);   /* a refusal is neither a commit nor a storage failure */
    assert_int_equal(st1.commits, st0.commits);
    assert_int_equal(st1.failures, st0.failures);
    assert_int_equal(commit_batch(st, "s07", 7, 0, 20), 0);

    /* Pages of 10, in id order, resuming after the last id. */
    ma_store_session *rows;
    size_t n, seen = 0;
    const char *after = NULL;
    char last[32] = "";
    for (;;) {
        assert_int_equal(ma_store_session_list(st, after, 10, &rows, &n, errbuf, sizeof errbuf), 0);
        for (size_t i = 0; i < n; i++) {
            snprintf(id, sizeof id, "s%02zu", seen + i);
            assert_string_equal(rows[i].id, id);
            assert_null(rows[i].backbone.data);
            assert_int_equal(rows[i].length, seen + i == 7 ? 20 : 0);
        }
        seen += n;
        if (n > 0)
            snprintf(last, sizeof last, "%s", rows[n - 1].id);
        for (size_t i = 0; i < n; i++)
            ma_store_session_clear(&rows[i]);
        free(rows);
        if (n < 10)
            break;
        after = last;
    }
    assert_int_equal(seen, 25);
    /* One page larger than the first allocation of the listing. */
    for (int i = 0; i < 60; i++) {
        snprintf(id, sizeof id, "t%02d", i);
        assert_int_equal(ma_store_session_create(st, id, "{}", i, errbuf, sizeof errbuf), 0);
    }
    assert_int_equal(ma_store_session_list(st, NULL, 1000, &rows, &n, errbuf, sizeof errbuf), 0);
    assert_int_equal(n, 85);
    assert_string_equal(rows[84].id, "t59");
    for (size_t i = 0; i < n; i++)
        ma_store_session_clear(&rows[i]);
    free(rows);

    /* DELETE removes every row: a new session of the same id starts empty. */
    assert_int_equal(ma_store_session_delete(st, "s07", errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_delete(st, "s07", errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(commit_batch(st, "s07", 7, 0, 1), MA_ENOTFOUND);
    assert_int_equal(ma_store_session_create(st, "s07", "{}", 0, errbuf, sizeof errbuf), 0);
    check_session(st, "s07", 7, 0);
    float k[KF], v[VF];
    assert_int_equal(ma_store_load_events(st, "s07", 0, 1, INTO(KF, k, v, NULL), errbuf, sizeof errbuf),
                     MA_ENOTFOUND);
    /* The old rows go with the purge (store/purge.c), the new session's stay. */
    ma_store_purge_result pr = {.purging = 1};
    while (pr.purging)
        assert_int_equal(ma_store_purge_step(st, 1 << 20, &pr, errbuf, sizeof errbuf), 0);
    ma_store_close(st);

    /* Nothing of the deleted session is left in the file's tables. */
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM event_blocks) + (SELECT count(*) FROM payloads),"
                                        " (SELECT count(*) FROM blobs)",
                                        -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 0);
    assert_int_equal(sqlite3_column_int(s, 1), 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    rm_dir(dir);
}

static void test_commit_must_continue_the_session(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "a", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(commit_batch(st, "a", 3, 0, 4), 0);
    /* A gap, a replay and a length that does not add up are refused and change nothing. */
    assert_int_equal(commit_batch(st, "a", 3, 5, 2), MA_EINVAL);
    assert_non_null(strstr(errbuf, "4 stored events"));
    assert_int_equal(commit_batch(st, "a", 3, 2, 2), MA_EINVAL);
    ma_store_delta d = {.length = 9};
    assert_int_equal(ma_store_commit(st, "a", &d, errbuf, sizeof errbuf), MA_EINVAL);
    d = (ma_store_delta){.first_event = 4, .n_events = 1, .length = 5};   /* no k/v */
    assert_int_equal(ma_store_commit(st, "a", &d, errbuf, sizeof errbuf), MA_EINVAL);
    assert_int_equal(ma_store_session_create(st, "", "{}", 0, errbuf, sizeof errbuf), MA_EINVAL);
    check_session(st, "a", 3, 4);
    ma_store_close(st);
    rm_dir(dir);
}

/* ---- schema versions and integrity ------------------------------------------------------------ */

static void test_schema_versions(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    ma_store_close(st);
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int current = sqlite3_column_int(s, 0);
    assert_true(current >= 1);
    sqlite3_finalize(s);
    sqlite3_close(db);

    /* A database from a newer memattnd is refused with a clear message and left untouched. */
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", current + 1);
    raw_sql(dir, sql);
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_null(st);
    assert_non_null(strstr(errbuf, "newer than this memattnd supports"));
    /* A negative version is no memattn's: refused, untouched. */
    raw_sql(dir, "PRAGMA user_version = -805281247");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_null(st);
    assert_non_null(strstr(errbuf, "not a memattn database (schema version -805281247)"));
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", current);
    raw_sql(dir, sql);
    st = open_ok(dir);
    ma_store_close(st);
    rm_dir(dir);

    /* Someone else's database (tables, no version) is not taken over. */
    dir = fresh_dir();
    raw_sql(dir, "CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "not a memattn database"));
    rm_dir(dir);

    /* The upgrade path from nothing: an empty file (user_version 0) gets the whole schema. */
    dir = fresh_dir();
    raw_sql(dir, "PRAGMA user_version = 0");
    st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "x", "{}", 0, errbuf, sizeof errbuf), 0);
    ma_store_close(st);
    rm_dir(dir);
}

/* Schema version 1 as memattnd wrote it (one row per event), to fabricate files for the upgrade test. */
static const char v1_schema[] =
    "CREATE TABLE sessions(sid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, config TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  length INTEGER NOT NULL DEFAULT 0 CHECK (length >= 0), slots INTEGER NOT NULL DEFAULT 0 CHECK (slots >= 0),"
    "  event_bytes INTEGER NOT NULL DEFAULT 0, blob_bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE blobs(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  kind INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 2), data BLOB NOT NULL, PRIMARY KEY (sid, kind));"
    "CREATE TABLE events(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL CHECK (idx >= 0), k BLOB NOT NULL, v BLOB NOT NULL, payload TEXT,"
    "  PRIMARY KEY (sid, idx)) WITHOUT ROWID;"
    "PRAGMA user_version = 1; PRAGMA application_id = 1833006158;";

/* A version-1 file in dir holding session "u<seed>" of length L[seed] for each seed (seed's data). */
static void make_v1(const char *dir, const uint64_t *L, int n)
{
    sqlite3 *db;
    sqlite3_stmt *s, *b, *e;
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, v1_schema, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO sessions(sid, id, config, created_at, updated_at, length,"
                                        " slots, event_bytes, blob_bytes) VALUES (?1, ?2, '{}', 0, 0, ?3, ?4, ?5, ?6)",
                                        -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO blobs VALUES (?1, ?2, ?3)", -1, &b, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5)", -1, &e, NULL), SQLITE_OK);
    for (int seed = 0; seed < n; seed++) {
        char id[16], blob[3][96];
        size_t blob_bytes = 0;
        snprintf(id, sizeof id, "u%d", seed);
        for (int i = 0; L[seed] > 0 && i < 3; i++) {
            blob_of(seed, L[seed], i, blob[i], sizeof blob[i]);
            blob_bytes += strlen(blob[i]);
        }
        sqlite3_bind_int(s, 1, seed + 1);
        sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)L[seed]);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)(L[seed] % 7));
        sqlite3_bind_int64(s, 5, (sqlite3_int64)(L[seed] * (KF + VF) * sizeof(float)));
        sqlite3_bind_int64(s, 6, (sqlite3_int64)blob_bytes);
        assert_int_equal(sqlite3_step(s), SQLITE_DONE);
        sqlite3_reset(s);
        for (int i = 0; L[seed] > 0 && i < 3; i++) {
            sqlite3_bind_int(b, 1, seed + 1);
            sqlite3_bind_int(b, 2, i);
            sqlite3_bind_blob(b, 3, blob[i], (int)strlen(blob[i]), SQLITE_TRANSIENT);
            assert_int_equal(sqlite3_step(b), SQLITE_DONE);
            sqlite3_reset(b);
        }
        for (uint64_t i = 0; i < L[seed]; i++) {
            float k[KF], v[VF];
            for (int j = 0; j < KF; j++)
                k[j] = kval(seed, i, j);
            for (int j = 0; j < VF; j++)
                v[j] = vval(seed, i, j);
            char *p = payload_of(seed, i);
            sqlite3_bind_int(e, 1, seed + 1);
            sqlite3_bind_int64(e, 2, (sqlite3_int64)i);
            sqlite3_bind_blob(e, 3, k, sizeof k, SQLITE_TRANSIENT);
            sqlite3_bind_blob(e, 4, v, sizeof v, SQLITE_TRANSIENT);
            if (p)
                sqlite3_bind_text(e, 5, p, -1, SQLITE_TRANSIENT);
            else
                sqlite3_bind_null(e, 5);
            assert_int_equal(sqlite3_step(e), SQLITE_DONE);
            sqlite3_reset(e);
            free(p);
        }
    }
    sqlite3_finalize(s);
    sqlite3_finalize(b);
    sqlite3_finalize(e);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static int raw_int(const char *dir, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int r = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return r;
}

static void test_upgrade_from_v1(void **state)
{
    (void)state;
    /* Lengths around the block size: empty, one event, exactly one block, blocks plus a partial one. */
    const uint64_t L[] = {0, 1, 64, 65, 200};
    const int n = (int)(sizeof L / sizeof L[0]);
    char *dir = fresh_dir();
    make_v1(dir, L, n);
    ma_store *st = open_ok(dir);
    for (int seed = 0; seed < n; seed++) {
        char id[16];
        snprintf(id, sizeof id, "u%d", seed);
        check_session(st, id, seed, L[seed]);
    }
    /* The upgraded sessions go on growing from their partial blocks. */
    assert_int_equal(commit_batch(st, "u4", 4, 200, 100), 0);
    assert_int_equal(commit_batch(st, "u1", 1, 1, 1), 0);
    ma_store_close(st);
    assert_int_equal(raw_int(dir, "PRAGMA user_version"), MA_SCHEMA);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM sqlite_schema WHERE name = 'events'"), 0);
    /* Every row got its checksum on the way (steps 1 -> 2 -> 3 in one upgrade). */
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks WHERE ck IS NULL"), 0);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks"), 0 + 1 + 1 + 2 + 5);
    /* event_blocks must stay a rowid table: a WITHOUT ROWID seek reads whole overflowing block rows for
     * every key comparison (store.c, the 1 -> 2 step). wr = 1 means WITHOUT ROWID. */
    assert_int_equal(raw_int(dir, "SELECT wr FROM pragma_table_list WHERE name = 'event_blocks'"), 0);
    assert_int_equal(raw_int(dir, "SELECT wr FROM pragma_table_list WHERE name = 'payloads'"), 1);
    st = open_ok(dir);
    check_session(st, "u4", 4, 300);
    check_session(st, "u1", 1, 2);
    check_session(st, "u3", 3, 65);
    ma_store_close(st);
    rm_dir(dir);

    /* A version-1 file with a hole in a session's rows is refused and stays at version 1, intact. */
    dir = fresh_dir();
    make_v1(dir, L, n);
    raw_sql(dir, "DELETE FROM events WHERE sid = 5 AND idx = 130");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "session 'u4'"));
    assert_int_equal(raw_int(dir, "PRAGMA user_version"), 1);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM events"), 1 + 64 + 65 + 199);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM sqlite_schema WHERE name = 'event_blocks'"), 0);
    rm_dir(dir);
}

/* Schema version 2 as memattnd wrote it (events in blocks; the slot table whole in blobs kind 1). */
static const char v2_schema[] =
    "CREATE TABLE sessions(sid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, config TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  length INTEGER NOT NULL DEFAULT 0 CHECK (length >= 0), slots INTEGER NOT NULL DEFAULT 0 CHECK (slots >= 0),"
    "  event_bytes INTEGER NOT NULL DEFAULT 0, blob_bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE blobs(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  kind INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 2), data BLOB NOT NULL, PRIMARY KEY (sid, kind));"
    "CREATE TABLE event_blocks(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  block INTEGER NOT NULL CHECK (block >= 0), n INTEGER NOT NULL CHECK (n BETWEEN 1 AND 64),"
    "  k BLOB NOT NULL, v BLOB NOT NULL, PRIMARY KEY (sid, block));"
    "CREATE TABLE payloads(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL CHECK (idx >= 0), payload TEXT NOT NULL, PRIMARY KEY (sid, idx)) WITHOUT ROWID;"
    "PRAGMA user_version = 2; PRAGMA application_id = 1833006158;";

enum { SH = 2, SD = 3, SDV = 2, SM = 4 };   /* the slot tables of the upgrade test */

/* A slot table with history: overwrites, payloads, a capacity eviction, a restore, a forgotten name. */
static ma_slots *slot_history(int seed, int versions)
{
    ma_slots *s;
    assert_int_equal(ma_slots_create(SH, SD, SDV, SM, &s), 0);
    float k[SH * SD], v[SH * SDV];
    for (int i = 0; i < versions; i++) {
        for (int j = 0; j < SH * SD; j++)
            k[j] = kval(seed, (uint64_t)i, j);
        for (int j = 0; j < SH * SDV; j++)
            v[j] = vval(seed, (uint64_t)i, j);
        char name[16], pl[32];
        snprintf(name, sizeof name, "n%d", i % 6);
        snprintf(pl, sizeof pl, "{\"i\":%d}", i);
        ma_slot_write w = {name, k, v, i % 2 ? pl : NULL, i, false};
        assert_int_equal(ma_slots_put(s, &w, false, 0, 0, 1000 + i, NULL), 0);
    }
    if (versions > 6) {
        assert_int_equal(ma_slots_restore(s, "n1", 1, 5000, NULL), 0);
        assert_int_equal(ma_slots_forget(s, "n2"), 0);
    }
    return s;
}

static int count_row(void *arg, const char *name, uint64_t version, const void *data, size_t len)
{
    (void)name, (void)version, (void)data, (void)len;
    ++*(size_t *)arg;
    return 0;
}

typedef struct { ma_store *st; const char *id; } row_src;
static int each_row(void *ctx, ma_slot_row_fn fn, void *arg)
{
    row_src *r = ctx;
    return ma_store_slot_rows(r->st, r->id, fn, arg, errbuf, sizeof errbuf);
}

/* The stored slot table of session id, restored through its rows, as whole-table bytes. */
static void stored_table(ma_store *st, const char *id, void **whole, size_t *n, bool *unsaved)
{
    ma_store_session row;
    assert_int_equal(ma_store_session_load(st, id, &row, errbuf, sizeof errbuf), 0);
    row_src rs = {st, id};
    ma_slot_row_source src = {each_row, &rs};
    ma_slots *t;
    int rc = ma_slots_restore_state(&(ma_slots_shape){SH, SD, SDV, SM}, row.slots_blob.data, row.slots_blob.len, &src, &t);
    if (rc)
        fail_msg("restore %s: %d %s", id, rc, errbuf);
    *unsaved = ma_slots_has_unsaved(t);
    assert_int_equal(ma_slots_serialize(t, whole, n), 0);
    ma_slots_destroy(t);
    ma_store_session_clear(&row);
}

/* A version-2 file with sessions "v<seed>" holding slot tables of 0, 1, 40 and 300 versions whole, and one
 * ("bad") whose table is damaged. */
static void make_v2(const char *dir, const int *versions, int n, void **tables, size_t *lens)
{
    sqlite3 *db;
    sqlite3_stmt *s, *b;
    ma_params p;
    ma_params_default(&p);
    p.heads = SH, p.dim = SD, p.value_dim = SDV, p.slots = SM;
    char *cfg;
    assert_int_equal(reg_params_encode(&p, &cfg), 0);
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, v2_schema, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO sessions(sid, id, config, created_at, updated_at, slots,"
                                        " blob_bytes) VALUES (?1, ?2, ?3, 0, 0, 1, ?4)", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO blobs VALUES (?1, 1, ?2)", -1, &b, NULL), SQLITE_OK);
    for (int i = 0; i <= n; i++) {
        char id[16];
        snprintf(id, sizeof id, i < n ? "v%d" : "bad", i);
        if (i < n) {
            ma_slots *t = slot_history(i, versions[i]);
            assert_int_equal(ma_slots_serialize(t, &tables[i], &lens[i]), 0);
            ma_slots_destroy(t);
        } else {
            ma_slots *t = slot_history(9, 10);
            assert_int_equal(ma_slots_serialize(t, &tables[i], &lens[i]), 0);
            ma_slots_destroy(t);
            ((unsigned char *)tables[i])[lens[i] / 2] ^= 1;
        }
        sqlite3_bind_int(s, 1, i + 1);
        sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(s, 3, cfg, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)lens[i]);
        assert_int_equal(sqlite3_step(s), SQLITE_DONE);
        sqlite3_reset(s);
        sqlite3_bind_int(b, 1, i + 1);
        sqlite3_bind_blob(b, 2, tables[i], (int)lens[i], SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(b), SQLITE_DONE);
        sqlite3_reset(b);
    }
    sqlite3_finalize(s);
    sqlite3_finalize(b);
    sqlite3_close(db);
    free(cfg);
}

static void test_upgrade_from_v2(void **state)
{
    (void)state;
    const int versions[] = {0, 1, 40, 300};
    enum { N = 4 };
    void *tables[N + 1];
    size_t lens[N + 1];
    for (int with_split = 1; with_split >= 0; with_split--) {
        char *dir = fresh_dir();
        make_v2(dir, versions, N, tables, lens);
        ma_store_options o;
        ma_store_options_default(&o);
        o.slots_split = with_split ? reg_slots_split : NULL;
        ma_store *st;
        if (ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf))
            fail_msg("open: %s", errbuf);
        for (int i = 0; i < N; i++) {
            char id[16];
            snprintf(id, sizeof id, "v%d", i);
            /* the same table, bit for bit, restored from the upgraded rows (or from the whole blob) */
            void *whole;
            size_t wn;
            bool unsaved;
            stored_table(st, id, &whole, &wn, &unsaved);
            assert_int_equal(wn, lens[i]);
            assert_memory_equal(whole, tables[i], wn);
            assert_int_equal(unsaved, !with_split && versions[i] > 0);
            free(whole);
            size_t rows = 0;
            assert_int_equal(ma_store_slot_rows(st, id, count_row, &rows, errbuf, sizeof errbuf), 0);
            assert_true(with_split ? rows >= (size_t)versions[i] : rows == 0);
            /* what the session row says it stores includes the rows */
            ma_store_session sm;
            assert_int_equal(ma_store_session_summary(st, id, &sm, errbuf, sizeof errbuf), 0);
            if (with_split && versions[i] > 40)
                assert_true(sm.slots_blob.len < lens[i] / 10 && sm.stored_bytes > lens[i]);
            ma_store_session_clear(&sm);
        }
        /* the damaged table stays whole and rowless: its session reports it when loaded */
        ma_store_session row;
        assert_int_equal(ma_store_session_load(st, "bad", &row, errbuf, sizeof errbuf), 0);
        assert_int_equal(row.slots_blob.len, lens[N]);
        assert_memory_equal(row.slots_blob.data, tables[N], lens[N]);
        ma_store_session_clear(&row);
        size_t rows = 0;
        assert_int_equal(ma_store_slot_rows(st, "bad", count_row, &rows, errbuf, sizeof errbuf), 0);
        assert_int_equal(rows, 0);
        /* the upgraded table goes on: a commit of its state and one new version */
        {
            void *whole;
            size_t wn;
            bool unsaved;
            stored_table(st, "v3", &whole, &wn, &unsaved);
            ma_slots *t;
            assert_int_equal(ma_slots_restore_table(&(ma_slots_shape){SH, SD, SDV, SM}, whole, wn, &t), 0);
            if (!unsaved)
                ma_slots_saved(t);
            float k[SH * SD] = {1}, v[SH * SDV] = {2};
            ma_slot_write w = {"n0", k, v, "\"new\"", -1, false};
            ma_slot_result res;
            assert_int_equal(ma_slots_put(t, &w, false, 0, 0, 9000, &res), 0);
            ma_slot_row *r;
            size_t nr;
            assert_int_equal(ma_slots_unsaved(t, &r, &nr), 0);
            if (unsaved)
                assert_true(nr > 300);                       /* never split: every version */
            else
                assert_int_equal(nr, 1 + res.evicted);       /* the new version (and a victim's tombstone) */
            ma_store_slot_row *sr = calloc(nr, sizeof *sr);
            for (size_t j = 0; j < nr; j++)
                sr[j] = (ma_store_slot_row){r[j].name, r[j].version, r[j].data, r[j].len, r[j].rewrite};
            void *stb;
            size_t stn;
            assert_int_equal(ma_slots_serialize_state(t, &stb, &stn), 0);
            ma_store_delta d = {.slots_blob = {stb, stn}, .slots = 1, .updated_at = 1, .slot_rows = sr,
                                .n_slot_rows = nr};
            assert_int_equal(ma_store_commit(st, "v3", &d, errbuf, sizeof errbuf), 0);
            free(whole);
            assert_int_equal(ma_slots_serialize(t, &whole, &wn), 0);
            ma_store_close(st);
            st = open_ok(dir);                    /* the integrity checks pass, slot_bytes included */
            void *again;
            size_t an;
            stored_table(st, "v3", &again, &an, &unsaved);
            assert_false(unsaved);
            assert_int_equal(an, wn);
            assert_memory_equal(again, whole, wn);
            free(again);
            free(whole);
            free(stb);
            free(sr);
            ma_slot_rows_free(r, nr);
            ma_slots_destroy(t);
        }
        ma_store_close(st);
        assert_int_equal(raw_int(dir, "PRAGMA user_version"), MA_SCHEMA);
        /* a row of no session, or slot_bytes that disagree with the rows, is refused at open */
        raw_sql(dir, "PRAGMA foreign_keys = OFF; INSERT INTO slot_versions VALUES (99, 'x', 1, x'00')");
        assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
        assert_non_null(strstr(errbuf, "slot versions of a missing session"));
        raw_sql(dir, "DELETE FROM slot_versions WHERE sid = 99; UPDATE sessions SET slot_bytes = slot_bytes + 1 "
                     "WHERE id = 'v3'");
        assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
        assert_non_null(strstr(errbuf, "slot versions of v3"));
        for (int i = 0; i <= N; i++)
            free(tables[i]);
        rm_dir(dir);
    }
}

/* Commits of every size against the block boundaries, reads of ranges that straddle blocks, payload
 * look-ups; a commit whose key size differs from the stored partial block is refused. */
static void test_blocks_across_commits(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "b", "{}", 0, errbuf, sizeof errbuf), 0);
    const size_t sizes[] = {1, 62, 1, 64, 65, 3, 130, 0, 200};
    uint64_t L = 0;
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        assert_int_equal(commit_batch(st, "b", 5, L, sizes[t]), 0);
        L += sizes[t];
        check_session(st, "b", 5, L);
        const uint64_t firsts[] = {0, 1, 63, 64, 100, L - 1};
        for (size_t f = 0; f < sizeof firsts / sizeof firsts[0]; f++) {
            uint64_t first = firsts[f];
            if (first >= L)
                continue;
            size_t m = L - first < 70 ? (size_t)(L - first) : 70;
            float k[70 * KF], v[70 * VF];
            char *pl[70];
            assert_int_equal(ma_store_load_events(st, "b", first, m, INTO(KF, k, v, pl), errbuf, sizeof errbuf), 0);
            for (size_t i = 0; i < m; i++) {
                assert_true(k[i * KF + KF - 1] == kval(5, first + i, KF - 1));
                assert_true(v[i * VF] == vval(5, first + i, 0));
                char *want = payload_of(5, first + i), *one = NULL;
                assert_int_equal(ma_store_load_payload(st, "b", first + i, &one, errbuf, sizeof errbuf), 0);
                if (want) {
                    assert_string_equal(pl[i], want);
                    assert_string_equal(one, want);
                } else {
                    assert_null(pl[i]);
                    assert_null(one);
                }
                free(want);
                free(one);
                free(pl[i]);
            }
        }
    }
    assert_int_equal(L % 64, 14);
    char *one = NULL;
    assert_int_equal(ma_store_load_payload(st, "b", L, &one, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_load_payload(st, "nope", 0, &one, errbuf, sizeof errbuf), MA_ENOTFOUND);
    float k[2 * KF], v[2 * VF];
    assert_int_equal(ma_store_load_events(st, "b", L - 1, 2, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_ENOTFOUND);
    float k2[KF + 1] = {0}, v2[VF] = {0};
    ma_store_delta d = {.first_event = L, .n_events = 1, .k_floats = KF + 1, .v_floats = VF, .k = k2, .v = v2,
                        .length = L + 1};
    assert_int_equal(ma_store_commit(st, "b", &d, errbuf, sizeof errbuf), MA_EINVAL);
    assert_non_null(strstr(errbuf, "cannot continue it"));
    ma_store_close(st);
    st = open_ok(dir);
    check_session(st, "b", 5, L);
    ma_store_close(st);
    rm_dir(dir);
}

/* ma_store_load_some (the sparse read's candidates through incremental blob I/O) returns the bytes
 * ma_store_load_events does, for events spread over full blocks and the partial last one, after each of
 * several commits (the partial block is rewritten by each); refuses unsorted or repeated events, events
 * past the length and unknown sessions. */
static void test_load_some(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "s", "{}", 0, errbuf, sizeof errbuf), 0);
    const size_t sizes[] = {5, 64, 200, 1, 77};
    uint64_t L = 0;
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        assert_int_equal(commit_batch(st, "s", 7, L, sizes[t]), 0);
        L += sizes[t];
        uint64_t ids[40];
        size_t n = 0;
        for (uint64_t e = t; e < L && n < 40; e += 1 + (e * 7) % 19)
            ids[n++] = e;
        ids[n - 1] = L - 1;   /* the last event, in the partial block */
        if (n > 1 && ids[n - 2] >= L - 1)
            n--, ids[n - 1] = L - 1;
        float k[40 * KF], v[40 * VF], k1[KF], v1[VF];
        assert_int_equal(ma_store_load_some(st, "s", ids, n, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), 0);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(ma_store_load_events(st, "s", ids[i], 1, INTO(KF, k1, v1, NULL), errbuf, sizeof errbuf), 0);
            assert_memory_equal(k + i * KF, k1, sizeof k1);
            assert_memory_equal(v + i * VF, v1, sizeof v1);
        }
    }
    float k[2 * KF], v[2 * VF];
    uint64_t unsorted[] = {9, 3}, twice[] = {4, 4}, past[] = {1, L}, one[] = {0};
    assert_int_equal(ma_store_load_some(st, "s", unsorted, 2, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_EINVAL);
    assert_int_equal(ma_store_load_some(st, "s", twice, 2, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_EINVAL);
    assert_int_equal(ma_store_load_some(st, "s", past, 2, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_load_some(st, "nope", one, 1, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_load_some(st, "s", one, 1, INTO(KF + 1, k, v, NULL), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(ma_store_load_some(st, "s", one, 0, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), 0);
    ma_store_close(st);
    rm_dir(dir);
}

/* A store of a few sessions big enough to span many pages; closed (WAL checkpointed into the file). */
static char *populated_dir(void)
{
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    for (int s = 0; s < 3; s++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", s);
        assert_int_equal(ma_store_session_create(st, id, "{}", 0, errbuf, sizeof errbuf), 0);
        for (int b = 0; b < 4; b++)
            assert_int_equal(commit_batch(st, id, s, (uint64_t)b * 250, 250), 0);
    }
    ma_store_close(st);
    char wal[600];
    snprintf(wal, sizeof wal, "%s-wal", db_path(dir));
    assert_int_equal(access(wal, F_OK), -1);   /* checkpointed and removed at close */
    return dir;
}

static void overwrite(const char *path, off_t off, size_t n, unsigned char byte)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    unsigned char buf[4096];
    memset(buf, byte, sizeof buf);
    while (n > 0) {
        size_t m = n < sizeof buf ? n : sizeof buf;
        assert_int_equal(pwrite(fd, buf, m, off), (ssize_t)m);
        off += (off_t)m;
        n -= m;
    }
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

static void test_corrupt_and_truncated_files_are_refused(void **state)
{
    (void)state;
    ma_store *st = NULL;
    /* The file header destroyed. */
    char *dir = populated_dir();
    overwrite(db_path(dir), 0, 100, 0x5a);
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_null(st);
    assert_non_null(strstr(errbuf, "memattn.db"));
    rm_dir(dir);

    /* Pages in the middle overwritten (b-tree page headers included). */
    dir = populated_dir();
    off_t size = file_size(db_path(dir));
    overwrite(db_path(dir), size / 2 - 8192, 16384, 0xff);
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "integrity check failed"));
    rm_dir(dir);

    /* Truncated to half, and to less than a page. */
    dir = populated_dir();
    assert_int_equal(truncate(db_path(dir), size / 2), 0);
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(truncate(db_path(dir), 1000), 0);
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    rm_dir(dir);
}

static void test_inconsistent_rows_are_refused(void **state)
{
    (void)state;
    ma_store *st = NULL;
    /* A well-formed file whose event rows do not match the session's length. */
    char *dir = populated_dir();
    raw_sql(dir, "DELETE FROM event_blocks WHERE block = 7 AND sid = (SELECT sid FROM sessions WHERE id = 'p1')");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "session 'p1' has length 1000 but 936 events in 15 blocks"));
    raw_sql(dir, "UPDATE sessions SET length = 936 WHERE id = 'p1'");   /* count matches, a hole remains */
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    raw_sql(dir, "DELETE FROM event_blocks WHERE sid = (SELECT sid FROM sessions WHERE id = 'p1')");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);   /* no rows at all */
    assert_non_null(strstr(errbuf, "but 0 events"));
    /* Rows of a session that is gone (foreign keys off, as another program might have them). */
    raw_sql(dir, "UPDATE sessions SET length = 0 WHERE id = 'p1'; DELETE FROM sessions WHERE id = 'p2'");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "missing session"));
    rm_dir(dir);

    /* A key blob of a size that is not n keys; a payload of an event past the end. */
    dir = populated_dir();
    raw_sql(dir, "UPDATE event_blocks SET k = x'00' WHERE block = 3 AND sid = (SELECT sid FROM sessions WHERE id = 'p2')");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "session 'p2'"));
    rm_dir(dir);
    dir = populated_dir();   /* a short block that is not the last, the length adjusted to match */
    raw_sql(dir, "UPDATE event_blocks SET n = 40, k = substr(k, 1, 40 * 32), v = substr(v, 1, 40 * 24) "
                 "WHERE block = 3 AND sid = (SELECT sid FROM sessions WHERE id = 'p2');"
                 "UPDATE sessions SET length = 1000 - 24 WHERE id = 'p2';"
                 "DELETE FROM payloads WHERE idx >= 976 AND sid = (SELECT sid FROM sessions WHERE id = 'p2')");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "session 'p2' has length 976 but 976 events in 16 blocks"));
    rm_dir(dir);
    dir = populated_dir();
    raw_sql(dir, "INSERT INTO payloads(sid, idx, payload) SELECT sid, 1000, '{}' FROM sessions WHERE id = 'p0'");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "payload of event 1000 of p0"));
    rm_dir(dir);

    /* What is loaded is checked too: a short key, state blobs that do not add up. */
    dir = populated_dir();
    raw_sql(dir, "UPDATE sessions SET blob_bytes = blob_bytes + 1 WHERE id = 'p0';");
    st = open_ok(dir);
    float k[10 * (KF + 1)], v[10 * VF];
    assert_int_equal(ma_store_load_events(st, "p2", 70, 10, INTO(KF + 1, k, v, NULL), errbuf, sizeof errbuf),
                     MA_ECORRUPT);   /* keys of another size than the caller's */
    assert_non_null(strstr(errbuf, "event block 1 (events 64..127)"));
    ma_store_session s;
    assert_int_equal(ma_store_session_load(st, "p0", &s, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_null(s.id);
    assert_int_equal(ma_store_session_summary(st, "p0", &s, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "the session row says"));
    assert_null(s.id);
    check_session(st, "p1", 1, 1000);   /* the others are still served */
    ma_store_close(st);
    rm_dir(dir);
}

/* ---- the integrity check in the background ------------------------------------------------------ */

typedef struct {
    pthread_mutex_t mu;
    int calls, rc;
    char msg[512];
} checked_log;

static void record_check(void *arg, int rc, const char *msg, double seconds)
{
    checked_log *l = arg;
    assert_true(seconds >= 0);
    pthread_mutex_lock(&l->mu);
    l->calls++;
    l->rc = rc;
    snprintf(l->msg, sizeof l->msg, "%s", msg);
    pthread_mutex_unlock(&l->mu);
}

static ma_store *open_checking(const char *dir, checked_log *l)
{
    ma_store_options o;
    ma_store_options_default(&o);
    o.check_in_background = 1;
    o.on_checked = record_check;
    o.on_checked_arg = l;
    ma_store *st = NULL;
    int rc = ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf);
    if (rc)
        fail_msg("open %s: %d %s", dir, rc, errbuf);
    return st;
}

/* Waits (a bounded number of polls, not a time: the test never asserts one) until the check has ended. */
static int check_end(ma_store *st, char *msg, size_t len)
{
    int rc = MA_STORE_CHECKING;
    for (int i = 0; i < 20000 && (rc = ma_store_check_state(st, msg, len)) == MA_STORE_CHECKING; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    return rc;
}

static void test_check_in_background(void **state)
{
    (void)state;
    char msg[600];
    /* A sound store: served while the check runs, commits beside it; the check passes, once. */
    checked_log l = {.mu = PTHREAD_MUTEX_INITIALIZER};
    char *dir = populated_dir();
    ma_store *st = open_checking(dir, &l);
    assert_int_equal(ma_store_session_create(st, "beside", "{}", 0, errbuf, sizeof errbuf), 0);
    uint64_t L = 0;
    do {
        assert_int_equal(commit_batch(st, "beside", 9, L, 100), 0);
        L += 100;
    } while (ma_store_check_state(st, NULL, 0) == MA_STORE_CHECKING && L < 100000);
    assert_int_equal(check_end(st, msg, sizeof msg), 0);
    pthread_mutex_lock(&l.mu);
    assert_int_equal(l.calls, 1);
    assert_int_equal(l.rc, 0);
    pthread_mutex_unlock(&l.mu);
    check_session(st, "p1", 1, 1000);
    check_session(st, "beside", 9, L);
    ma_store_close(st);
    st = open_ok(dir);   /* the commits made beside the check pass the check at open */
    check_session(st, "beside", 9, L);
    ma_store_close(st);
    rm_dir(dir);

    /* Rows that do not add up: the open succeeds (it costs nothing that grows with the file), the check
     * fails, and from then on every call fails with its code and message — reads, commits, index rows. */
    l = (checked_log){.mu = PTHREAD_MUTEX_INITIALIZER};
    dir = populated_dir();
    raw_sql(dir, "DELETE FROM event_blocks WHERE block = 7 AND sid = (SELECT sid FROM sessions WHERE id = 'p1')");
    st = open_checking(dir, &l);
    assert_int_equal(check_end(st, msg, sizeof msg), MA_ECORRUPT);
    assert_non_null(strstr(msg, "session 'p1' has length 1000 but 936 events in 15 blocks"));
    pthread_mutex_lock(&l.mu);
    assert_int_equal(l.calls, 1);
    assert_int_equal(l.rc, MA_ECORRUPT);
    assert_string_equal(l.msg, msg);
    pthread_mutex_unlock(&l.mu);
    ma_store_session s;
    assert_int_equal(ma_store_session_load(st, "p0", &s, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "session 'p1' has length 1000"));
    assert_non_null(strstr(errbuf, "found by the integrity check after the store opened"));
    assert_int_equal(commit_batch(st, "p0", 0, 1000, 10), MA_ECORRUPT);
    assert_int_equal(ma_store_session_create(st, "new", "{}", 0, errbuf, sizeof errbuf), MA_ECORRUPT);
    unsigned char lists[4] = {0}, codes[4] = {0};
    ma_store_index_rows r = {.build = 1, .first = 0, .n = 1, .lists = lists, .lists_bytes = 4, .codes = codes,
                             .codes_bytes = 4};
    assert_int_equal(ma_store_index_put(st, "p0", &r, errbuf, sizeof errbuf), MA_ECORRUPT);
    ma_store_close(st);
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);   /* nothing was written */
    rm_dir(dir);

    /* Pages overwritten in the middle: found by the open itself (if it reads them) or by the check. */
    l = (checked_log){.mu = PTHREAD_MUTEX_INITIALIZER};
    dir = populated_dir();
    off_t size = file_size(db_path(dir));
    overwrite(db_path(dir), size / 2 - 8192, 16384, 0xff);
    ma_store_options o;
    ma_store_options_default(&o);
    o.check_in_background = 1;
    st = NULL;
    int rc = ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf);
    if (rc == 0) {
        assert_int_equal(check_end(st, msg, sizeof msg), MA_ECORRUPT);
        assert_non_null(strstr(msg, "integrity check failed"));
        ma_store_close(st);
    } else
        assert_int_equal(rc, MA_ECORRUPT);
    rm_dir(dir);

    /* Closed at once: the check is interrupted (or done); no callback after the close returns. */
    l = (checked_log){.mu = PTHREAD_MUTEX_INITIALIZER};
    dir = populated_dir();
    st = open_checking(dir, &l);
    ma_store_close(st);
    pthread_mutex_lock(&l.mu);
    int calls = l.calls;
    assert_true(calls == 0 || (calls == 1 && l.rc == 0));
    pthread_mutex_unlock(&l.mu);
    nanosleep(&(struct timespec){0, 20000000}, NULL);
    pthread_mutex_lock(&l.mu);
    assert_int_equal(l.calls, calls);
    pthread_mutex_unlock(&l.mu);
    rm_dir(dir);
}

/* ---- row checksums ---------------------------------------------------------------------------- */

/* Rewrites one stored row of session `id` under a closed store: column `col` ("k", "v" or "payload") of
 * block / event `row`, with byte `off` xor'ed with `flip` (0: the column's bytes are zeroed); with
 * nan_at >= 0 instead float nan_at of k becomes a NaN and the row's checksum is recomputed (so only the
 * finiteness check can catch it). */
static void damage(const char *dir, const char *id, const char *col, uint64_t row, size_t off, unsigned char flip,
                   long nan_at)
{
    bool payload = strcmp(col, "payload") == 0;
    sqlite3 *db;
    sqlite3_stmt *s;
    char sql[256];
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    snprintf(sql, sizeof sql, payload ? "SELECT payload FROM payloads WHERE idx = ?1 AND sid = (SELECT sid FROM "
                                        "sessions WHERE id = ?2)"
                                      : "SELECT n, k, v FROM event_blocks WHERE block = ?1 AND sid = (SELECT sid "
                                        "FROM sessions WHERE id = ?2)");
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)row);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int c = payload ? 0 : strcmp(col, "k") == 0 ? 1 : 2;
    size_t len = (size_t)sqlite3_column_bytes(s, c), kl = payload ? 0 : (size_t)sqlite3_column_bytes(s, 1);
    size_t vl = payload ? 0 : (size_t)sqlite3_column_bytes(s, 2);
    int n = payload ? 0 : sqlite3_column_int(s, 0);
    unsigned char *buf = malloc(len), *k = malloc(kl + 1), *v = malloc(vl + 1);
    memcpy(buf, sqlite3_column_blob(s, c), len);
    if (!payload) {
        memcpy(k, sqlite3_column_blob(s, 1), kl);
        memcpy(v, sqlite3_column_blob(s, 2), vl);
    }
    sqlite3_finalize(s);
    int64_t ck = 0;
    if (nan_at >= 0) {
        float nan = __builtin_nanf("");
        memcpy(k + 4 * nan_at, &nan, 4);
        memcpy(buf, k, kl);
        ck = (int64_t)st_block_sum(&(st_block){row, (size_t)n, k, v, kl, vl});
    } else if (flip) {
        buf[off] ^= flip;
    } else {
        memset(buf, 0, len);
    }
    snprintf(sql, sizeof sql, "UPDATE %s SET %s = ?3%s WHERE %s = ?1 AND sid = (SELECT sid FROM sessions WHERE id = ?2)",
             payload ? "payloads" : "event_blocks", col, nan_at >= 0 ? ", ck = ?4" : "", payload ? "idx" : "block");
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)row);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    if (payload)
        sqlite3_bind_text(s, 3, (const char *)buf, (int)len, SQLITE_TRANSIENT);
    else
        sqlite3_bind_blob(s, 3, buf, (int)len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, ck);
    assert_int_equal(sqlite3_step(s), SQLITE_DONE);
    sqlite3_finalize(s);
    sqlite3_close(db);
    free(buf);
    free(k);
    free(v);
}

static int discard(void *ctx, const void *data, size_t len)
{
    (void)ctx;
    (void)data;
    (void)len;
    return 0;
}

/* Every stored block and payload row is checked when it is read back (range reads, single payloads, the
 * commit's partial block, the export): a flipped byte, zeroed keys, a missing checksum, a NaN that
 * carries a valid checksum are MA_ECORRUPT naming the row; the other rows are still served. */
static void test_row_checksums(void **state)
{
    (void)state;
    char *dir = populated_dir();
    float k[64 * KF], v[64 * VF];
    char *pl[64];
    damage(dir, "p1", "k", 2, 37, 0x10, -1);          /* one bit of one key of block 2 */
    damage(dir, "p1", "v", 5, 0, 0x01, -1);           /* one bit of a value of block 5 */
    damage(dir, "p1", "k", 9, 0, 0, -1);              /* block 9's keys zeroed */
    damage(dir, "p1", "payload", 700, 3, 0x20, -1);   /* a payload's text */
    damage(dir, "p2", "k", 4, 0, 0, 13);              /* a NaN with a valid checksum */
    damage(dir, "p2", "k", 15, 0, 0x80, -1);          /* the last, partial block (40 events) */
    ma_store *st = open_ok(dir);   /* the open-time checks see structure, not contents */
    const struct { const char *id; uint64_t first; const char *want; } bad[] = {
        {"p1", 130, "event block 2 (events 128..191): checksum mismatch"},
        {"p1", 5 * 64 + 10, "event block 5 (events 320..383): checksum mismatch"},
        {"p1", 9 * 64, "event block 9"},
        {"p2", 4 * 64 + 63, "event block 4 holds a NaN or infinity"},
        {"p2", 960, "event block 15"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ma_store_load_events(st, bad[i].id, bad[i].first, 1, INTO(KF, k, v, NULL), errbuf,
                                              sizeof errbuf), MA_ECORRUPT);
        if (!strstr(errbuf, bad[i].want) || !strstr(errbuf, bad[i].id))
            fail_msg("case %zu: %s", i, errbuf);
    }
    /* A range over a damaged block fails whole; the neighbours are served. */
    assert_int_equal(ma_store_load_events(st, "p1", 100, 64, INTO(KF, k, v, pl), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(ma_store_load_events(st, "p1", 192, 64, INTO(KF, k, v, pl), errbuf, sizeof errbuf), 0);
    for (int i = 0; i < 64; i++)
        free(pl[i]);
    assert_true(k[0] == kval(1, 192, 0));
    /* The payload: alone, and with its range. */
    char *one = NULL;
    assert_int_equal(ma_store_load_payload(st, "p1", 700, &one, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_null(one);
    assert_non_null(strstr(errbuf, "payload of event 700: checksum mismatch"));
    assert_int_equal(ma_store_load_payload(st, "p1", 701, &one, errbuf, sizeof errbuf), 0);
    free(one);
    assert_int_equal(ma_store_load_events(st, "p1", 690, 20, INTO(KF, k, v, pl), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(ma_store_load_events(st, "p1", 690, 20, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), 0);
    /* A commit onto the damaged partial block is refused (never rewritten with a fresh checksum). */
    assert_int_equal(commit_batch(st, "p2", 2, 1000, 5), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "event block 15"));
    /* The export refuses too: a snapshot's own checksum would make damage look sound. */
    assert_int_equal(ma_store_session_export(st, "p1", discard, NULL, NULL, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(ma_store_session_export(st, "p0", discard, NULL, NULL, errbuf, sizeof errbuf), 0);
    check_session(st, "p0", 0, 1000);   /* untouched sessions are served whole */
    ma_store_close(st);
    /* No checksum at all is no better than a wrong one. */
    raw_sql(dir, "UPDATE event_blocks SET ck = NULL WHERE block = 0 AND sid = (SELECT sid FROM sessions WHERE id = 'p0')");
    st = open_ok(dir);
    assert_int_equal(ma_store_load_events(st, "p0", 0, 1, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "no checksum"));
    ma_store_close(st);
    rm_dir(dir);
}

/* A file of the schema before the checksums (schema 5: this version's rows without the checksum column)
 * is upgraded: every row gets its checksum in the upgrade's transaction and reads back checked and equal.
 * The three steps after 5 are undone: the checksum column dropped, 6 -> 7 (rows that fit a page) needs
 * no undoing at these sizes, whose rows hold 64 events as in schema 6 (checked), 7 -> 8's purge table
 * dropped. */
static void test_upgrade_to_checksums(void **state)
{
    (void)state;
    char *dir = populated_dir();
    char undo[160];
    assert_int_equal(MA_SCHEMA, 8);   /* a later step must be undone here too (7 -> 8: the purge table) */
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks WHERE n != 64 AND block < 15"), 0);
    snprintf(undo, sizeof undo, "ALTER TABLE event_blocks DROP COLUMN ck; ALTER TABLE payloads DROP COLUMN ck; "
             "DROP TABLE purge; PRAGMA user_version = %d;", MA_SCHEMA - 3);
    raw_sql(dir, undo);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM pragma_table_info('event_blocks') WHERE name = 'ck'"), 0);
    ma_store *st = open_ok(dir);
    for (int s = 0; s < 3; s++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", s);
        check_session(st, id, s, 1000);
    }
    assert_int_equal(commit_batch(st, "p1", 1, 1000, 30), 0);   /* tops up its partial block, checked */
    check_session(st, "p1", 1, 1030);
    ma_store_close(st);
    assert_int_equal(raw_int(dir, "PRAGMA user_version"), MA_SCHEMA);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks WHERE ck IS NULL"), 0);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM payloads WHERE ck IS NULL"), 0);
    rm_dir(dir);
}

/* ---- deleting a session: a tombstone, then the purge in steps (store/purge.c) ------------------ */

/* Whether the bytes of needle are anywhere in the file path (a missing file holds nothing). */
static bool file_holds(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t n = strlen(needle), cap = 1 << 20, have = 0;
    char *buf = malloc(cap + n);
    bool found = false;
    for (;;) {
        size_t got = fread(buf + have, 1, cap, f);
        if (got == 0)
            break;
        got += have;
        for (size_t i = 0; i + n <= got && !found; i++)
            found = memcmp(buf + i, needle, n) == 0;
        have = got < n ? got : n - 1;   /* keep the tail: a match across two reads */
        memmove(buf, buf + got - have, have);
    }
    free(buf);
    fclose(f);
    return found;
}

static bool store_holds(const char *dir, const char *needle)
{
    char wal[4200];
    snprintf(wal, sizeof wal, "%s-wal", db_path(dir));
    return file_holds(db_path(dir), needle) || file_holds(wal, needle);
}

static void purge_all(ma_store *st, int *steps, bool *finished)
{
    ma_store_purge_result pr = {.purging = 1};
    while (pr.purging) {
        assert_int_equal(ma_store_purge_step(st, 64 * 1024, &pr, errbuf, sizeof errbuf), 0);
        assert_false(pr.fast);
        (*steps)++;
        *finished |= pr.finished;
    }
}

/* A delete is one small transaction: the session is gone for every call at once and its id can be
 * created again as a new session; its rows are purged afterwards in steps (a restart in the middle
 * resumes, the open-time checks accept the half-purged rows), and when the purge is done its bytes are
 * in neither the database file nor the WAL. */
static void test_delete_purges_in_steps(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "a", "{}", 0, errbuf, sizeof errbuf), 0);
    for (uint64_t at = 0; at < 3000; at += 500)
        assert_int_equal(commit_batch(st, "a", 77, at, 500), 0);
    assert_int_equal(ma_store_session_create(st, "b", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(commit_batch(st, "b", 5, 0, 300), 0);
    assert_int_equal(ma_store_purging(st), 0);
    ma_store_stats s0, s1;
    ma_store_stats_get(st, &s0);

    /* The tombstone: gone for every call, the id free at once. */
    assert_int_equal(ma_store_session_delete(st, "a", errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_purging(st), 1);
    ma_store_stats_get(st, &s1);
    assert_int_equal(s1.sessions_purging, 1);
    assert_int_equal(s1.commits, s0.commits + 1);
    assert_int_equal(ma_store_session_delete(st, "a", errbuf, sizeof errbuf), MA_ENOTFOUND);
    ma_store_session row;
    assert_int_equal(ma_store_session_load(st, "a", &row, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_session_summary(st, "a", &row, errbuf, sizeof errbuf), MA_ENOTFOUND);
    assert_int_equal(ma_store_session_export(st, "a", discard, NULL, NULL, errbuf, sizeof errbuf), MA_ENOTFOUND);
    float k[KF], v[VF];
    assert_int_equal(ma_store_load_events(st, "a", 0, 1, INTO(KF, k, v, NULL), errbuf, sizeof errbuf), MA_ENOTFOUND);
    ma_store_session *rows;
    size_t n;
    assert_int_equal(ma_store_session_list(st, NULL, 100, &rows, &n, errbuf, sizeof errbuf), 0);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].id, "b");
    ma_store_session_clear(&rows[0]);
    free(rows);
    /* The store keeps ids that start with '#' for its tombstones. */
    assert_int_equal(ma_store_session_create(st, "#purge:1", "{}", 0, errbuf, sizeof errbuf), MA_EINVAL);
    /* The same id again: a new session (a new sid), none of the old rows. */
    assert_int_equal(ma_store_session_create(st, "a", "{}", 0, errbuf, sizeof errbuf), 0);
    check_session(st, "a", 77, 0);
    assert_int_equal(commit_batch(st, "a", 78, 0, 100), 0);
    check_session(st, "a", 78, 100);
    assert_true(store_holds(dir, "{\"s\":77,\"i\":2998}"));   /* the old rows: unreachable, still there */

    /* One step of the purge, then a restart in the middle: the open's checks accept it, the queue resumes. */
    ma_store_purge_result pr;
    assert_int_equal(ma_store_purge_step(st, 64 * 1024, &pr, errbuf, sizeof errbuf), 0);
    assert_true(pr.rows > 0);
    assert_false(pr.finished);
    assert_int_equal(pr.purging, 1);
    ma_store_close(st);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM purge"), 1);
    st = open_ok(dir);
    assert_int_equal(ma_store_purging(st), 1);
    check_session(st, "a", 78, 100);
    check_session(st, "b", 5, 300);
    int steps = 1;
    bool finished = false;
    purge_all(st, &steps, &finished);
    assert_true(finished);
    assert_true(steps > 2);   /* in steps: 3,000 events and their payloads at 64 KiB a step */
    ma_store_stats_get(st, &s1);
    assert_int_equal(s1.sessions_purging, 0);
    assert_true(s1.purged_rows > 0);
    assert_int_equal(s1.purged_fast_rows, 0);
    check_session(st, "a", 78, 100);
    check_session(st, "b", 5, 300);
    /* A step on an empty queue does nothing. */
    assert_int_equal(ma_store_purge_step(st, 64 * 1024, &pr, errbuf, sizeof errbuf), 0);
    assert_int_equal(pr.rows, 0);
    assert_int_equal(pr.sid, 0);
    /* The bytes are gone: secure_delete zeroed the freed pages, the checkpoint put the zeros in the file. */
    assert_false(store_holds(dir, "{\"s\":77,\"i\":2998}"));
    assert_false(store_holds(dir, "{\"s\":77,\"i\":0}"));
    assert_true(store_holds(dir, "{\"s\":78,\"i\":99}"));
    ma_store_close(st);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM purge"), 0);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM sessions"), 2);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks WHERE sid NOT IN (SELECT sid FROM sessions)"), 0);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM payloads WHERE sid NOT IN (SELECT sid FROM sessions)"), 0);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM blobs WHERE sid NOT IN (SELECT sid FROM sessions)"), 0);
    st = open_ok(dir);
    ma_store_close(st);
    rm_dir(dir);
}

/* A file of schema 7 (this version's file with the purge table dropped) opens upgraded: the table is
 * there and a delete and its purge work. */
static void test_upgrade_to_purge(void **state)
{
    (void)state;
    char *dir = populated_dir();
    char undo[96];
    snprintf(undo, sizeof undo, "DROP TABLE purge; PRAGMA user_version = %d;", MA_SCHEMA - 1);
    raw_sql(dir, undo);
    ma_store *st = open_ok(dir);
    check_session(st, "p1", 1, 1000);
    assert_int_equal(ma_store_session_delete(st, "p1", errbuf, sizeof errbuf), 0);
    int steps = 0;
    bool finished = false;
    purge_all(st, &steps, &finished);
    assert_true(finished);
    check_session(st, "p0", 0, 1000);
    ma_store_close(st);
    assert_int_equal(raw_int(dir, "PRAGMA user_version"), MA_SCHEMA);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM sessions"), 2);
    rm_dir(dir);
}

/* ---- rows of a page of events (schema 7) ------------------------------------------------------- */

#define KW 64   /* floats per key and per value of "wide" events: 512 bytes an event, 8 events a row */
#define WIDE(k, v, pl) (&(ma_store_events){KW, KW, (k), (v), (pl)})

static float *wide_events(int seed, uint64_t from, size_t n, float **v)
{
    float *k = malloc((n ? n : 1) * KW * sizeof(float));
    *v = malloc((n ? n : 1) * KW * sizeof(float));
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < KW; j++) {
            k[i * KW + j] = kval(seed, from + i, j);
            (*v)[i * KW + j] = vval(seed, from + i, j);
        }
    return k;
}

static int commit_wide(ma_store *st, const char *id, int seed, uint64_t from, size_t n)
{
    float *v, *k = wide_events(seed, from, n, &v);
    ma_store_delta d = {.first_event = from, .n_events = n, .k_floats = KW, .v_floats = KW, .k = k, .v = v,
                        .length = from + n, .updated_at = 1000};
    int rc = ma_store_commit(st, id, &d, errbuf, sizeof errbuf);
    free(k);
    free(v);
    return rc;
}

/* Session id holds events 0..L-1 of seed (wide): read as one range, and alone (ma_store_load_some) at a
 * spread of events that includes every row's first and last and the partial last row. */
static void check_wide(ma_store *st, const char *id, int seed, uint64_t L)
{
    float *v, *k = wide_events(seed, 0, L, &v);
    float *gk = malloc(L * KW * sizeof(float)), *gv = malloc(L * KW * sizeof(float));
    int rc = ma_store_load_events(st, id, 0, L, WIDE(gk, gv, NULL), errbuf, sizeof errbuf);
    if (rc)
        fail_msg("load_events %s: %d %s", id, rc, errbuf);
    assert_memory_equal(gk, k, L * KW * sizeof(float));
    assert_memory_equal(gv, v, L * KW * sizeof(float));
    uint64_t *ids = malloc(L * sizeof *ids);
    size_t n = 0;
    for (uint64_t e = 0; e < L; e++)
        if (e % 7 == 0 || e % 7 == 6 || e % 5 == 2 || e == L - 1)
            ids[n++] = e;
    rc = ma_store_load_some(st, id, ids, n, WIDE(gk, gv, NULL), errbuf, sizeof errbuf);
    if (rc)
        fail_msg("load_some %s: %d %s", id, rc, errbuf);
    for (size_t i = 0; i < n; i++) {
        assert_memory_equal(gk + i * KW, k + ids[i] * KW, KW * sizeof(float));
        assert_memory_equal(gv + i * KW, v + ids[i] * KW, KW * sizeof(float));
    }
    free(ids);
    free(gk);
    free(gv);
    free(k);
    free(v);
}

/* Events of 512 bytes are stored 8 to a row (st_row_events: a page of events), whatever the commits' sizes
 * (each tops up the partial last row): each full row is a small cell in a leaf page shared with other rows
 * and one overflow page, no more; the reads return the events written; a row partial in the middle is
 * refused at open; a damaged row is refused when read (by load_some too) while the others are served. */
static void test_rows_of_a_page(void **state)
{
    (void)state;
    assert_int_equal(st_row_events(KW * 4, KW * 4), 8);
    assert_int_equal(st_row_events(KW * 4, KW * 2), 10);
    assert_int_equal(st_row_events(KF * 4, VF * 4), 64);            /* small events: 64 a row, as schema 6 */
    assert_int_equal(st_row_events(8192, 8192), 1);                  /* larger than a page: alone */
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "w", "{}", 0, errbuf, sizeof errbuf), 0);
    const size_t sizes[] = {3, 5, 64, 200, 1, 77, 7};
    uint64_t L = 0;
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        assert_int_equal(commit_wide(st, "w", 3, L, sizes[t]), 0);
        L += sizes[t];
        check_wide(st, "w", 3, L);
    }
    ma_store_close(st);
    assert_int_equal(L, 357);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks"), 45);   /* 44 of 8, one of 5 */
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks WHERE n != 8"), 1);
    /* one overflow page per full row, and the rows' cells share their leaves (a session delete writes
     * its leaves to the WAL: docs/STORE.md) */
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM dbstat WHERE name = 'event_blocks' AND pagetype = 'overflow'"), 44);
    assert_true(raw_int(dir, "SELECT count(*) FROM dbstat WHERE name = 'event_blocks' AND pagetype = 'leaf'") <= 8);
    st = open_ok(dir);
    check_wide(st, "w", 3, L);
    ma_store_close(st);
    /* A damaged row: its events are refused, alone or in a range; the rows around it are served. */
    damage(dir, "w", "v", 20, 100, 0x04, -1);   /* events 160..167 */
    st = open_ok(dir);
    float k[8 * KW], v[8 * KW];
    uint64_t one[] = {3, 167}, other[] = {159, 168};
    assert_int_equal(ma_store_load_some(st, "w", one, 2, WIDE(k, v, NULL), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "event block 20 (events 160..167): checksum mismatch"));
    assert_int_equal(ma_store_load_events(st, "w", 158, 4, WIDE(k, v, NULL), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(ma_store_load_some(st, "w", other, 2, WIDE(k, v, NULL), errbuf, sizeof errbuf), 0);
    assert_true(k[0] == kval(3, 159, 0) && v[KW] == vval(3, 168, 0));
    ma_store_close(st);
    /* A partial row in the middle: refused at open. */
    raw_sql(dir, "UPDATE event_blocks SET n = 7, k = substr(k, 1, 7 * 256), v = substr(v, 1, 7 * 256) WHERE block = 4;"
                 "UPDATE sessions SET length = 356");
    assert_int_equal(ma_store_open(dir, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "session 'w' has length 356 but 356 events in 45 blocks"));
    rm_dir(dir);
}

/* A schema-6 file (rows of 64 events, made here from this version's rows) is upgraded at open: every
 * session's events regrouped into rows of a page of events, read back equal and checked; a session whose
 * events are 64 a row anyway (small events) is unchanged; a row damaged before the upgrade is still refused
 * after it (its events' new rows have no checksum) while the rest is served; rows that do not form
 * blocks 0.. refuse the upgrade and leave the file at version 6. */
static void to_schema6(const char *dir, int damage_block)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(db_path(dir), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE old(sid, block, n, k, v, ck)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *q, *ins;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT sid, n, k, v FROM event_blocks ORDER BY sid, block", -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO old VALUES (?1, ?2, ?3, ?4, ?5, ?6)", -1, &ins, NULL),
                     SQLITE_OK);
    unsigned char *k = malloc(64 * KW * 4), *v = malloc(64 * KW * 4);
    int64_t sid = -1, block = 0;
    size_t have = 0, kb = 0, vb = 0;
    for (int rc = sqlite3_step(q);; rc = sqlite3_step(q)) {
        bool more = rc == SQLITE_ROW;
        if (have && (!more || sqlite3_column_int64(q, 0) != sid || have == 64)) {
            uint64_t ck = st_block_sum(&(st_block){(uint64_t)block, have, k, v, have * kb, have * vb});
            if (block == damage_block)
                v[5] ^= 0x40;   /* after its checksum: a damaged row */
            sqlite3_bind_int64(ins, 1, sid);
            sqlite3_bind_int64(ins, 2, block++);
            sqlite3_bind_int64(ins, 3, (int64_t)have);
            sqlite3_bind_blob(ins, 4, k, (int)(have * kb), SQLITE_TRANSIENT);
            sqlite3_bind_blob(ins, 5, v, (int)(have * vb), SQLITE_TRANSIENT);
            sqlite3_bind_int64(ins, 6, (int64_t)ck);
            assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
            sqlite3_reset(ins);
            have = 0;
        }
        if (!more)
            break;
        if (sqlite3_column_int64(q, 0) != sid) {
            sid = sqlite3_column_int64(q, 0);
            block = 0;
        }
        size_t n = (size_t)sqlite3_column_int64(q, 1);
        kb = (size_t)sqlite3_column_bytes(q, 2) / n;
        vb = (size_t)sqlite3_column_bytes(q, 3) / n;
        for (size_t i = 0; i < n; i++) {   /* n <= 64 - have except at a row of 64 (small events) */
            if (have == 64) {
                uint64_t ck = st_block_sum(&(st_block){(uint64_t)block, have, k, v, have * kb, have * vb});
                sqlite3_bind_int64(ins, 1, sid);
                sqlite3_bind_int64(ins, 2, block++);
                sqlite3_bind_int64(ins, 3, (int64_t)have);
                sqlite3_bind_blob(ins, 4, k, (int)(have * kb), SQLITE_TRANSIENT);
                sqlite3_bind_blob(ins, 5, v, (int)(have * vb), SQLITE_TRANSIENT);
                sqlite3_bind_int64(ins, 6, (int64_t)ck);
                assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
                sqlite3_reset(ins);
                have = 0;
            }
            memcpy(k + have * kb, (const unsigned char *)sqlite3_column_blob(q, 2) + i * kb, kb);
            memcpy(v + have * vb, (const unsigned char *)sqlite3_column_blob(q, 3) + i * vb, vb);
            have++;
        }
    }
    sqlite3_finalize(q);
    sqlite3_finalize(ins);
    free(k);
    free(v);
    char *msg = NULL;
    int rc = sqlite3_exec(db, "DELETE FROM event_blocks; INSERT INTO event_blocks SELECT * FROM old; DROP TABLE old; "
                          "DROP TABLE IF EXISTS purge; PRAGMA user_version = 6;", NULL, NULL, &msg);
    if (rc)
        fail_msg("%s", msg);
    sqlite3_close(db);
}

static void test_upgrade_to_pages(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "w", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_create(st, "x", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_create(st, "small", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(commit_wide(st, "w", 4, 0, 300), 0);
    assert_int_equal(commit_wide(st, "x", 5, 0, 64), 0);
    assert_int_equal(commit_batch(st, "small", 6, 0, 150), 0);
    ma_store_close(st);
    char *copy = fresh_dir();
    char cmd[1200];
    to_schema6(dir, -1);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks"), 5 + 1 + 3);   /* 64 events a row */
    snprintf(cmd, sizeof cmd, "cp %s/memattn.db %s/", dir, copy);
    assert_int_equal(system(cmd), 0);
    st = open_ok(dir);
    check_wide(st, "w", 4, 300);
    check_wide(st, "x", 5, 64);
    check_session(st, "small", 6, 150);
    assert_int_equal(commit_wide(st, "w", 4, 300, 10), 0);   /* tops up the partial row (300 = 37 * 8 + 4) */
    check_wide(st, "w", 4, 310);
    ma_store_close(st);
    assert_int_equal(raw_int(dir, "PRAGMA user_version"), MA_SCHEMA);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks b JOIN sessions s USING (sid) WHERE s.id = 'w'"), 39);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks b JOIN sessions s USING (sid) WHERE s.id = 'small'"), 3);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM event_blocks WHERE ck IS NULL"), 0);
    assert_int_equal(raw_int(dir, "SELECT count(*) FROM sqlite_schema WHERE name = 'event_rows'"), 0);
    rm_dir(dir);

    /* Damaged before the upgrade (block 2 of every session, events 128..191): still refused after it. */
    dir = fresh_dir();
    snprintf(cmd, sizeof cmd, "cp %s/memattn.db %s/", copy, dir);
    assert_int_equal(system(cmd), 0);
    to_schema6(dir, 2);   /* from the 64-event rows: regrouped as they are */
    st = open_ok(dir);
    float k[KW], v[KW];
    uint64_t e[] = {127, 128};   /* rows 15 (120..127, of block 1) and 16 (128..135, of block 2) */
    assert_int_equal(ma_store_load_some(st, "w", e, 2, WIDE(k, v, NULL), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "no checksum"));
    assert_int_equal(ma_store_load_events(st, "w", 191, 1, WIDE(k, v, NULL), errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_int_equal(ma_store_load_events(st, "w", 125, 1, WIDE(k, v, NULL), errbuf, sizeof errbuf), 0);
    assert_true(k[0] == kval(4, 125, 0));
    assert_int_equal(ma_store_load_events(st, "w", 196, 1, WIDE(k, v, NULL), errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_load_events(st, "x", 63, 1, WIDE(k, v, NULL), errbuf, sizeof errbuf), 0);
    ma_store_close(st);
    rm_dir(dir);

    /* A block missing: the upgrade is refused and the file stays at version 6. */
    raw_sql(copy, "DELETE FROM event_blocks WHERE block = 1 AND sid = (SELECT sid FROM sessions WHERE id = 'w')");
    assert_int_equal(ma_store_open(copy, &st, errbuf, sizeof errbuf), MA_ECORRUPT);
    assert_non_null(strstr(errbuf, "schema upgrade 6 -> 7"));
    assert_int_equal(raw_int(copy, "PRAGMA user_version"), 6);
    rm_dir(copy);
}

/* ---- faults ------------------------------------------------------------------------------------ */

static void test_full_database(void **state)
{
    (void)state;
    char *dir = populated_dir();
    ma_store_options o;
    ma_store_options_default(&o);
    ma_store *st;
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    size_t pages = ma_store_bytes(st) / 4096;
    ma_store_close(st);
    o.max_pages = (long long)pages + 4;   /* room for a little more, not for a big batch */
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    int rc = 0;
    uint64_t L = 1000;
    while ((rc = commit_batch(st, "p0", 0, L, 200)) == 0)
        L += 200;
    assert_int_equal(rc, MA_EIO);
    assert_non_null(strstr(errbuf, "full"));
    check_session(st, "p0", 0, L);           /* the failed batch left nothing behind */
    check_session(st, "p1", 1, 1000);        /* and reads go on */
    assert_int_equal(ma_store_session_create(st, "q", "{}", 0, errbuf, sizeof errbuf), 0);   /* small fits */
    ma_store_close(st);
    st = open_ok(dir);                       /* space again: the store is consistent and writable */
    check_session(st, "p0", 0, L);
    assert_int_equal(commit_batch(st, "p0", 0, L, 200), 0);
    check_session(st, "p0", 0, L + 200);
    ma_store_close(st);
    rm_dir(dir);
}

/* Arms a fault after n calls, commits one batch; the store must then show exactly the acknowledged
 * state, both through this handle and after a reopen without faults. */
static void fault_round(ma_store_fault_kind kind, unsigned long after)
{
    char *dir = populated_dir();
    ma_store_options o;
    ma_store_options_default(&o);
    o.vfs = ma_store_fault_vfs();
    ma_store *st;
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    uint64_t L = 1000;
    ma_store_fault_set(kind, after);
    int rc;
    for (int i = 0; i < 8; i++) {
        rc = commit_batch(st, "p1", 1, L, 64);
        if (rc != 0)
            break;
        L += 64;
    }
    assert_int_equal(rc, MA_EIO);
    assert_true(ma_store_fault_hits() > 0);
    assert_non_null(strstr(errbuf, kind == MA_FAULT_FULL ? "full" : "I/O"));
    rc = ma_store_session_create(st, "later", "{}", 0, errbuf, sizeof errbuf);   /* still failing */
    assert_int_equal(rc, MA_EIO);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    check_session(st, "p1", 1, L);
    check_session(st, "p2", 2, 1000);
    ma_store_stats stats;
    ma_store_stats_get(st, &stats);
    assert_int_equal(stats.failures, 2);
    /* Once the disk is back the same handle writes again. */
    assert_int_equal(commit_batch(st, "p1", 1, L, 10), 0);
    L += 10;
    ma_store_close(st);
    st = open_ok(dir);
    check_session(st, "p1", 1, L);
    ma_store_session s;
    assert_int_equal(ma_store_session_load(st, "later", &s, errbuf, sizeof errbuf), MA_ENOTFOUND);
    ma_store_close(st);
    rm_dir(dir);
}

static void test_write_errors(void **state)
{
    (void)state;
    /* EIO on the 1st, 3rd, ... write: inside a batch's WAL frames at different offsets. */
    for (unsigned long after = 0; after < 40; after += 7)
        fault_round(MA_FAULT_WRITE, after);
    fault_round(MA_FAULT_FULL, 0);
    fault_round(MA_FAULT_FULL, 20);
}

static void test_sync_errors(void **state)
{
    (void)state;
    /* fsync fails at commit: the commit is reported failed and this process never sees it. */
    char *dir = populated_dir();
    ma_store_options o;
    ma_store_options_default(&o);
    o.vfs = ma_store_fault_vfs();
    ma_store *st;
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    ma_store_fault_set(MA_FAULT_SYNC, 0);
    assert_int_equal(commit_batch(st, "p0", 0, 1000, 5), MA_EIO);
    assert_non_null(strstr(errbuf, "I/O"));
    ma_store_fault_set(MA_FAULT_NONE, 0);
    check_session(st, "p0", 0, 1000);
    ma_store_close(st);
    st = open_ok(dir);
    check_session(st, "p0", 0, 1000);
    assert_int_equal(commit_batch(st, "p0", 0, 1000, 5), 0);
    check_session(st, "p0", 0, 1005);
    ma_store_close(st);
    st = open_ok(dir);
    check_session(st, "p0", 0, 1005);
    ma_store_close(st);
    rm_dir(dir);
}

/* fsync fails at commit (once), then the process dies before any other commit: the WAL frames of the
 * failed transaction were written (only their fsync failed), so WAL recovery would find them complete.
 * The store must not let a mutation it reported as failed come back after a restart. */
static void test_sync_error_then_crash(void **state)
{
    (void)state;
    char *dir = populated_dir();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ma_store_options o;
        ma_store_options_default(&o);
        o.vfs = ma_store_fault_vfs();
        ma_store *st;
        if (ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf) || commit_batch(st, "p0", 0, 1000, 5))
            _exit(2);
        /* the WAL has a header now: the commit's fsync is the next one; it fails, the disk recovers */
        ma_store_fault_set_limited(MA_FAULT_SYNC, 0, 1);
        int rc = commit_batch(st, "p0", 0, 1005, 5);
        ma_store_fault_set(MA_FAULT_NONE, 0);
        _exit(rc == MA_EIO ? 0 : 3);   /* no close: a crash */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    ma_store *st = open_ok(dir);
    check_session(st, "p0", 0, 1005);
    ma_store_close(st);
    rm_dir(dir);
}

static void test_fault_spec(void **state)
{
    (void)state;
    ma_store_fault_kind k;
    unsigned long a, c;
    assert_int_equal(ma_store_fault_parse("write:12", &k, &a, &c), 0);
    assert_true(k == MA_FAULT_WRITE && a == 12 && c == 0);
    assert_int_equal(ma_store_fault_parse("sync:0:3", &k, &a, &c), 0);
    assert_true(k == MA_FAULT_SYNC && a == 0 && c == 3);
    assert_int_equal(ma_store_fault_parse("full:1", &k, &a, &c), 0);
    assert_true(k == MA_FAULT_FULL);
    const char *bad[] = {"", "write", "write:", "write:x", "writes:1", "read:1:", "read:1:2:3", "sync:-1", NULL};
    for (int i = 0; bad[i]; i++)
        assert_int_equal(ma_store_fault_parse(bad[i], &k, &a, &c), MA_EINVAL);
}

static void test_read_errors(void **state)
{
    (void)state;
    char *dir = populated_dir();
    ma_store_options o;
    ma_store_options_default(&o);
    o.vfs = ma_store_fault_vfs();
    ma_store *st;
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    float *k = malloc(1000 * KF * sizeof(float)), *v = malloc(1000 * VF * sizeof(float));
    ma_store_fault_set(MA_FAULT_READ, 0);
    int rc = ma_store_load_events(st, "p2", 0, 1000, INTO(KF, k, v, NULL), errbuf, sizeof errbuf);
    unsigned long hits = ma_store_fault_hits();
    ma_store_fault_set(MA_FAULT_NONE, 0);
    /* Pages may all be in sqlite's cache; if any read reached the file it must have failed. */
    if (hits > 0) {
        assert_int_equal(rc, MA_EIO);
        assert_non_null(strstr(errbuf, "I/O"));
    }
    ma_store_close(st);
    /* A fresh handle must read from the file: the open (integrity check) fails cleanly. */
    ma_store_fault_set(MA_FAULT_READ, 3);
    rc = ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    if (rc != MA_EIO)
        fail_msg("open with read errors: %d %s", rc, errbuf);
    assert_null(st);
    st = open_ok(dir);
    check_session(st, "p2", 2, 1000);
    ma_store_close(st);
    free(k);
    free(v);
    rm_dir(dir);
}

/* In a child: bind-mount dir read-only over itself in a private mount namespace (works as root, where
 * chmod would not stop writes), or chmod it when not root. Then the store must serve reads and fail
 * every change with MA_EIO and a message. Exit status 0 = pass, 77 = cannot make it read-only. */
static int readonly_child(const char *dir)
{
    if (geteuid() == 0) {
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount(dir, dir, NULL, MS_BIND, NULL) != 0 ||
            mount(NULL, dir, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0)
            return 77;
    } else if (chmod(dir, 0555) != 0) {
        return 77;
    }
    if (access(dir, W_OK) == 0)
        return 77;
    ma_store *st;
    if (ma_store_open(dir, &st, errbuf, sizeof errbuf)) {
        fprintf(stderr, "open: %s\n", errbuf);
        return 1;
    }
    int bad = 0;
    bad |= !ma_store_readonly(st);
    bad |= commit_batch(st, "p0", 0, 1000, 3) != MA_EIO || !strstr(errbuf, "read-only");
    bad |= ma_store_session_create(st, "new", "{}", 0, errbuf, sizeof errbuf) != MA_EIO;
    bad |= ma_store_session_delete(st, "p1", errbuf, sizeof errbuf) != MA_EIO;
    if (bad)
        fprintf(stderr, "read-only store accepted a change or gave no message: %s\n", errbuf);
    ma_store_session s;
    if (ma_store_session_load(st, "p1", &s, errbuf, sizeof errbuf) || s.length != 1000) {
        fprintf(stderr, "read-only store does not serve reads: %s\n", errbuf);
        bad = 1;
    }
    ma_store_session_clear(&s);
    float k[4 * KF], v[4 * VF];
    bad |= ma_store_load_events(st, "p2", 996, 4, INTO(KF, k, v, NULL), errbuf, sizeof errbuf) != 0 ||
           k[0] != kval(2, 996, 0);
    ma_store_close(st);
    /* No database yet in a read-only directory: a clear refusal. */
    char sub[600];
    snprintf(sub, sizeof sub, "%s/empty", dir);
    if (ma_store_open(sub, &st, errbuf, sizeof errbuf) != MA_EIO) {
        fprintf(stderr, "opening a new store in a read-only directory did not fail\n");
        bad = 1;
    }
    if (geteuid() != 0)
        chmod(dir, 0755);
    return bad;
}

static void test_readonly_directory(void **state)
{
    (void)state;
    char *dir = populated_dir();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(readonly_child(dir));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) {
        rm_dir(dir);
        skip();
    }
    assert_int_equal(WEXITSTATUS(status), 0);
    ma_store *st = open_ok(dir);   /* writable again: nothing changed */
    check_session(st, "p0", 0, 1000);
    check_session(st, "p1", 1, 1000);
    ma_store_close(st);
    rm_dir(dir);
}

/* ---- concurrency, backup, crash ---------------------------------------------------------------- */

typedef struct {
    ma_store *st;
    const char *id;
    int seed;
    int batches;
    size_t batch;
    _Atomic int done;
    int rc;
} writer_arg;

static void *writer_main(void *p)
{
    writer_arg *w = p;
    uint64_t L = 0;
    for (int b = 0; b < w->batches && !w->rc; b++, L += w->batch)
        w->rc = commit_batch(w->st, w->id, w->seed, L, w->batch);
    w->done = 1;
    return NULL;
}

typedef struct {
    ma_store *st;
    writer_arg *w;
    int errors;
} reader_arg;

/* Reads p-sessions' events while the writer runs: always complete and correct. */
static void *reader_main(void *p)
{
    reader_arg *r = p;
    float *k = malloc(100 * KF * sizeof(float)), *v = malloc(100 * VF * sizeof(float));
    unsigned seed = 7;
    while (!r->w->done) {
        uint64_t first = (uint64_t)(rand_r(&seed) % 900);
        int s = rand_r(&seed) % 3;
        char id[16];
        snprintf(id, sizeof id, "p%d", s);
        if (ma_store_load_events(r->st, id, first, 100, INTO(KF, k, v, NULL), NULL, 0) != 0 ||
            k[0] != kval(s, first, 0) || v[99 * VF] != vval(s, first + 99, 0))
            r->errors++;
    }
    free(k);
    free(v);
    return NULL;
}

static void test_concurrent_readers_and_writer(void **state)
{
    (void)state;
    char *dir = populated_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "w", "{}", 0, errbuf, sizeof errbuf), 0);
    writer_arg w = {.st = st, .id = "w", .seed = 9, .batches = 60, .batch = 50};
    reader_arg r[3] = {{st, &w, 0}, {st, &w, 0}, {st, &w, 0}};
    pthread_t tw, tr[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&tr[i], NULL, reader_main, &r[i]);
    pthread_create(&tw, NULL, writer_main, &w);
    pthread_join(tw, NULL);
    for (int i = 0; i < 3; i++) {
        pthread_join(tr[i], NULL);
        assert_int_equal(r[i].errors, 0);
    }
    assert_int_equal(w.rc, 0);
    check_session(st, "w", 9, 3000);
    ma_store_close(st);
    rm_dir(dir);
}

static void test_backup_while_writing(void **state)
{
    (void)state;
    char *dir = populated_dir();
    char *out = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "w", "{}", 0, errbuf, sizeof errbuf), 0);
    writer_arg w = {.st = st, .id = "w", .seed = 5, .batches = 200, .batch = 20};
    pthread_t tw;
    pthread_create(&tw, NULL, writer_main, &w);
    char bdir[600], bpath[700];
    uint64_t lengths[4] = {0};
    for (int i = 0; i < 4; i++) {
        snprintf(bdir, sizeof bdir, "%s/b%d", out, i);
        assert_int_equal(mkdir(bdir, 0755), 0);
        snprintf(bpath, sizeof bpath, "%s/memattn.db", bdir);
        int rc = ma_store_backup(st, bpath, errbuf, sizeof errbuf);
        if (rc)
            fail_msg("backup: %s", errbuf);
        /* Each copy is a consistent snapshot: whatever length it caught, rows, blobs and events agree. */
        ma_store *copy = open_ok(bdir);
        ma_store_session s;
        assert_int_equal(ma_store_session_load(copy, "w", &s, errbuf, sizeof errbuf), 0);
        lengths[i] = s.length;
        ma_store_session_clear(&s);
        assert_int_equal(lengths[i] % 20, 0);
        check_session(copy, "w", 5, lengths[i]);
        check_session(copy, "p1", 1, 1000);
        ma_store_close(copy);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_join(tw, NULL);
    assert_int_equal(w.rc, 0);
    assert_true(lengths[3] >= lengths[0]);
    assert_int_equal(ma_store_backup(st, db_path(dir), errbuf, sizeof errbuf), MA_EINVAL);   /* not onto itself */
    ma_store_close(st);
    rm_dir(out);
    rm_dir(dir);
}

/* A child commits batches and reports each acknowledged length on a pipe; it is SIGKILLed at a random
 * moment. After every kill the reopened store holds every acknowledged batch and no partial one. */
static void test_crash_keeps_every_acknowledged_commit(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store *st = open_ok(dir);
    assert_int_equal(ma_store_session_create(st, "c", "{}", 0, errbuf, sizeof errbuf), 0);
    ma_store_close(st);
    srand(12345);
    uint64_t acked = 0;
    for (int round = 0; round < 8; round++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            ma_store *cs;
            if (ma_store_open(dir, &cs, errbuf, sizeof errbuf))
                _exit(2);
            ma_store_session s;
            if (ma_store_session_load(cs, "c", &s, errbuf, sizeof errbuf))
                _exit(3);
            uint64_t L = s.length;
            ma_store_session_clear(&s);
            for (;;) {
                if (commit_batch(cs, "c", 4, L, 16))
                    _exit(4);
                L += 16;
                if (write(fds[1], &L, sizeof L) != sizeof L)
                    _exit(5);
            }
        }
        close(fds[1]);
        uint64_t L;
        assert_int_equal(read(fds[0], &L, sizeof L), sizeof L);   /* the child is committing */
        acked = L;
        struct timespec ts = {0, (long)(rand() % 50) * 1000 * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        assert_true(WIFSIGNALED(status));
        while (read(fds[0], &L, sizeof L) == sizeof L)
            acked = L;
        close(fds[0]);
        st = open_ok(dir);
        ma_store_session s;
        assert_int_equal(ma_store_session_load(st, "c", &s, errbuf, sizeof errbuf), 0);
        /* Everything acknowledged is there; at most the one batch in flight beyond it, whole. */
        assert_true(s.length == acked || s.length == acked + 16);
        acked = s.length;
        ma_store_session_clear(&s);
        check_session(st, "c", 4, acked);
        ma_store_close(st);
    }
    assert_true(acked > 0);
    rm_dir(dir);
}

static void test_in_memory(void **state)
{
    (void)state;
    ma_store_options o;
    ma_store_options_default(&o);
    o.in_memory = 1;
    ma_store *a, *b;
    assert_int_equal(ma_store_open_with(NULL, &o, &a, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_open_with(NULL, &o, &b, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_create(a, "m", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(commit_batch(a, "m", 6, 0, 100), 0);
    check_session(a, "m", 6, 100);
    ma_store_session s;
    assert_int_equal(ma_store_session_load(b, "m", &s, errbuf, sizeof errbuf), MA_ENOTFOUND);   /* separate */
    assert_true(ma_store_bytes(a) > 0);
    ma_store_close(a);
    ma_store_close(b);
}

/* ---- group commit --------------------------------------------------------------------------------- */

/* A delta of events [from, from+n) of seed, as commit_batch writes them, kept for a group. */
typedef struct {
    ma_store_delta d;
    float *k, *v;
    char **pl;
    char b[3][96];
} gdelta;

static void gdelta_make(gdelta *g, int seed, uint64_t from, size_t n)
{
    g->k = malloc(n * KF * sizeof(float));
    g->v = malloc(n * VF * sizeof(float));
    g->pl = calloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < KF; j++)
            g->k[i * KF + j] = kval(seed, from + i, j);
        for (int j = 0; j < VF; j++)
            g->v[i * VF + j] = vval(seed, from + i, j);
        g->pl[i] = payload_of(seed, from + i);
    }
    for (int i = 0; i < 3; i++)
        blob_of(seed, from + n, i, g->b[i], sizeof g->b[i]);
    g->d = (ma_store_delta){
        .first_event = from, .n_events = n, .k_floats = KF, .v_floats = VF, .k = g->k, .v = g->v,
        .payloads = (const char *const *)g->pl,
        .backbone = {g->b[0], strlen(g->b[0])}, .slots_blob = {g->b[1], strlen(g->b[1])},
        .archive_meta = {g->b[2], strlen(g->b[2])},
        .length = from + n, .slots = (size_t)(from + n) % 7, .updated_at = 1000 + (int64_t)(from + n),
    };
}

static void gdelta_free(gdelta *g)
{
    for (size_t i = 0; i < g->d.n_events; i++)
        free(g->pl[i]);
    free(g->pl);
    free(g->k);
    free(g->v);
}

/* Several deltas of two sessions in one transaction: written in order (a session's deltas continue
 * each other, its last blobs win); a group with one bad delta, or whose fsync fails, stores nothing. */
static void test_group_commit(void **state)
{
    (void)state;
    char *dir = fresh_dir();
    ma_store_options o;
    ma_store_options_default(&o);
    o.vfs = ma_store_fault_vfs();
    ma_store *st;
    assert_int_equal(ma_store_open_with(dir, &o, &st, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_create(st, "g1", "{}", 0, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_session_create(st, "g2", "{}", 0, errbuf, sizeof errbuf), 0);
    gdelta g[3];
    gdelta_make(&g[0], 5, 0, 70);
    gdelta_make(&g[1], 6, 0, 10);
    gdelta_make(&g[2], 5, 70, 60);
    const char *ids[3] = {"g1", "g2", "g1"};
    const ma_store_delta *ds[3] = {&g[0].d, &g[1].d, &g[2].d};
    ma_store_stats before, after;
    ma_store_stats_get(st, &before);
    assert_int_equal(ma_store_commit_group(st, 3, ids, ds, errbuf, sizeof errbuf), 0);
    ma_store_stats_get(st, &after);
    assert_int_equal(after.commits - before.commits, 1);
    assert_int_equal(after.events_written - before.events_written, 140);
    check_session(st, "g1", 5, 130);
    check_session(st, "g2", 6, 10);
    for (int i = 0; i < 3; i++)
        gdelta_free(&g[i]);

    /* a delta that does not continue its session: nothing of the group is stored */
    gdelta_make(&g[0], 5, 130, 10);
    gdelta_make(&g[1], 6, 11, 5);
    assert_int_equal(ma_store_commit_group(st, 2, ids, ds, errbuf, sizeof errbuf), MA_EINVAL);
    check_session(st, "g1", 5, 130);
    check_session(st, "g2", 6, 10);
    gdelta_free(&g[1]);
    /* the fsync of the group fails: nothing stored, here or after a reopen; then it goes through */
    gdelta_make(&g[1], 6, 10, 5);
    ma_store_fault_set(MA_FAULT_SYNC, 0);
    assert_int_equal(ma_store_commit_group(st, 2, ids, ds, errbuf, sizeof errbuf), MA_EIO);
    ma_store_fault_set(MA_FAULT_NONE, 0);
    check_session(st, "g1", 5, 130);
    check_session(st, "g2", 6, 10);
    ma_store_close(st);
    st = open_ok(dir);
    check_session(st, "g1", 5, 130);
    check_session(st, "g2", 6, 10);
    assert_int_equal(ma_store_commit_group(st, 2, ids, ds, errbuf, sizeof errbuf), 0);
    assert_int_equal(ma_store_commit_group(st, 0, ids, ds, errbuf, sizeof errbuf), 0);
    check_session(st, "g1", 5, 140);
    check_session(st, "g2", 6, 15);
    gdelta_free(&g[0]);
    gdelta_free(&g[1]);

    /* every delta's slot version rows and its Idempotency-Key record are written by the group */
    ma_store_slot_row r1[2] = {{"a", 1, "x1", 2, 0}, {"b", 1, "y1", 2, 0}}, r2[1] = {{"a", 2, "x2", 2, 0}};
    ma_store_idem k = {.scope = "g1", .key = "k1", .fingerprint = 7, .status = 200, .body = "{}", .created_at = 1,
                       .keep = 10};
    ma_store_delta s1 = {.length = 140, .updated_at = 2, .slot_rows = r1, .n_slot_rows = 2};
    ma_store_delta s2 = {.length = 140, .updated_at = 3, .slot_rows = r2, .n_slot_rows = 1, .idem = &k};
    const char *sids[2] = {"g1", "g1"};
    const ma_store_delta *sds[2] = {&s1, &s2};
    assert_int_equal(ma_store_commit_group(st, 2, sids, sds, errbuf, sizeof errbuf), 0);
    size_t rows = 0;
    assert_int_equal(ma_store_slot_rows(st, "g1", count_row, &rows, errbuf, sizeof errbuf), 0);
    assert_int_equal(rows, 3);
    ma_store_idem_row ir;
    assert_int_equal(ma_store_idem_get(st, "g1", "k1", 0, &ir, errbuf, sizeof errbuf), 0);
    assert_int_equal(ir.fingerprint, 7);
    assert_int_equal(ir.status, 200);
    ma_store_idem_row_clear(&ir);
    check_session(st, "g1", 5, 140);
    ma_store_close(st);
    rm_dir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_and_reopen),
        cmocka_unit_test(test_create_delete_list),
        cmocka_unit_test(test_commit_must_continue_the_session),
        cmocka_unit_test(test_group_commit),
        cmocka_unit_test(test_delete_purges_in_steps),
        cmocka_unit_test(test_upgrade_to_purge),
        cmocka_unit_test(test_schema_versions),
        cmocka_unit_test(test_upgrade_from_v1),
        cmocka_unit_test(test_upgrade_from_v2),
        cmocka_unit_test(test_blocks_across_commits),
        cmocka_unit_test(test_load_some),
        cmocka_unit_test(test_rows_of_a_page),
        cmocka_unit_test(test_upgrade_to_pages),
        cmocka_unit_test(test_corrupt_and_truncated_files_are_refused),
        cmocka_unit_test(test_inconsistent_rows_are_refused),
        cmocka_unit_test(test_check_in_background),
        cmocka_unit_test(test_row_checksums),
        cmocka_unit_test(test_upgrade_to_checksums),
        cmocka_unit_test(test_full_database),
        cmocka_unit_test(test_write_errors),
        cmocka_unit_test(test_sync_errors),
        cmocka_unit_test(test_sync_error_then_crash),
        cmocka_unit_test(test_fault_spec),
        cmocka_unit_test(test_read_errors),
        cmocka_unit_test(test_readonly_directory),
        cmocka_unit_test(test_concurrent_readers_and_writer),
        cmocka_unit_test(test_backup_while_writing),
        cmocka_unit_test(test_crash_keeps_every_acknowledged_commit),
        cmocka_unit_test(test_in_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
