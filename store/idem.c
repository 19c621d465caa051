/*
 * store/idem.c — Idempotency-Key records: a request's key and the answer it got, committed in the same
 * transaction as the request's change (store/store.h, "safe retries"; docs/STORE.md, "Idempotency
 * keys"; the REST side is docs/API.md, "Safe retries").
 *
 * Design
 *  - One table (schema step 2 -> 3 in schema.c):
 *        idempotency(scope, key, seq, sid, fingerprint, status, etag, location, body, created_at)
 *    UNIQUE(scope, key); `seq` numbers the records of a scope in insertion order (max + 1), so "keep the
 *    newest N" is one range delete on the (scope, seq) index instead of a walk over N rows; `sid`
 *    references the session named by the scope when it exists (ON DELETE CASCADE: a session's keys go
 *    with it), NULL otherwise (a detached record: a session delete's own key, POST /v1/sessions); an
 *    index on created_at makes the age sweep of every insert one index seek when nothing expires.
 *  - The window is the caller's (ma_store_idem.keep, .expire_before): the store has no clock and no
 *    policy. A record older than the window but not yet swept is not returned (ma_store_idem_get's
 *    not_before) and is replaced by the next insert of its key.
 *  - Writes happen inside the transaction of the change they answer (ma_store_commit,
 *    ma_store_session_create_idem, ma_store_session_delete_idem: st_idem_write), or alone
 *    (ma_store_idem_put) for an answer that changed nothing. Reads go through a reader connection.
 *  - Bodies are stored as BLOBs (the answer's bytes as sent), never parsed here.
 *
 * Not done here: the fingerprint (the API computes it), refusing a reused key (the API compares).
 */
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/error.h"
#include "store/store_int.h"

#define KEY_MAX 255

static int check_record(ma_store *st, const ma_store_idem *k, char *err, size_t errlen)
{
    size_t n = k && k->key ? strlen(k->key) : 0;
    if (!k || !k->scope || n == 0 || n > KEY_MAX) {
        st_seterr(err, errlen, "store %s: an idempotency record needs a scope and a key of 1..%d bytes", st->path,
                  KEY_MAX);
        return MA_EINVAL;
    }
    return 0;
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *t)
{
    if (t && *t)
        sqlite3_bind_text(s, i, t, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

/* Runs cached statement s (bound) to completion; 0 or the mapped failure. */
static int step_done(ma_store *st, conn *c, sqlite3_stmt *s, char *err, size_t errlen, const char *what)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? 0 : st_fail_db(st, c->db, rc, err, errlen, what);
}

int st_idem_write(ma_store *st, conn *c, const ma_store_idem *k, char *err, size_t errlen)
{
    int ret = check_record(st, k, err, errlen);
    sqlite3_stmt *s;
    if (ret)
        return ret;
    if (!(s = st_stmt(st, c, ST_IDEM_PUT, err, errlen)))
        return MA_EIO;
    sqlite3_bind_text(s, 1, k->scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, k->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, (int64_t)k->fingerprint);
    sqlite3_bind_int(s, 4, k->status);
    bind_text_or_null(s, 5, k->etag);
    bind_text_or_null(s, 6, k->location);
    if (k->body)
        sqlite3_bind_blob64(s, 7, k->body, strlen(k->body), SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 7);
    sqlite3_bind_int64(s, 8, k->created_at);
    if ((ret = step_done(st, c, s, err, errlen, "writing an idempotency key")))
        return ret;
    if (k->keep > 0) {
        if (!(s = st_stmt(st, c, ST_IDEM_PRUNE_SCOPE, err, errlen)))
            return MA_EIO;
        sqlite3_bind_text(s, 1, k->scope, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, k->keep > INT64_MAX ? INT64_MAX : (int64_t)k->keep);
        if ((ret = step_done(st, c, s, err, errlen, "dropping old idempotency keys")))
            return ret;
    }
    if (k->expire_before > 0) {
        if (!(s = st_stmt(st, c, ST_IDEM_PRUNE_AGE, err, errlen)))
            return MA_EIO;
        sqlite3_bind_int64(s, 1, k->expire_before);
        if ((ret = step_done(st, c, s, err, errlen, "dropping expired idempotency keys")))
            return ret;
    }
    return 0;
}

int ma_store_idem_put(ma_store *st, const ma_store_idem *k, char *err, size_t errlen)
{
    int ret = check_record(st, k, err, errlen);
    uint64_t t0;
    if (ret)
        return ret;
    if (!(ret = st_write_begin(st, &t0, err, errlen)))
        ret = st_idem_write(st, st->writer, k, err, errlen);
    return st_write_end(st, t0, ret, "committing an idempotency key", err, errlen);
}

void ma_store_idem_row_clear(ma_store_idem_row *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->etag);
    free(r->location);
    memset(r, 0, sizeof *r);
}

/* A malloc'd copy of column i (NULL when the column is NULL); *oom set when the copy fails. */
static char *column_copy(sqlite3_stmt *s, int i, bool *oom)
{
    if (sqlite3_column_type(s, i) == SQLITE_NULL)
        return NULL;
    const void *p = sqlite3_column_blob(s, i);
    size_t n = (size_t)sqlite3_column_bytes(s, i);
    char *out = malloc(n + 1);
    if (!out) {
        *oom = true;
        return NULL;
    }
    if (n)
        memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

int ma_store_idem_get(ma_store *st, const char *scope, const char *key, int64_t not_before, ma_store_idem_row *out,
                      char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!scope || !key || !*key) {
        st_seterr(err, errlen, "store %s: an idempotency lookup needs a scope and a key", st->path);
        return MA_EINVAL;
    }
    conn *c;
    int ret = st_reader_get(st, &c, err, errlen);
    if (ret)
        return ret;
    sqlite3_stmt *s = st_stmt(st, c, ST_IDEM_GET, err, errlen);
    if (!s) {
        ret = MA_EIO;
        goto done;
    }
    sqlite3_bind_text(s, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, not_before);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        st_seterr(err, errlen, "no idempotency key %.64s", key);
        ret = MA_ENOTFOUND;
    } else if (rc == SQLITE_ROW) {
        bool oom = false;
        out->fingerprint = (uint64_t)sqlite3_column_int64(s, 0);
        out->status = sqlite3_column_int(s, 1);
        out->etag = column_copy(s, 2, &oom);
        out->location = column_copy(s, 3, &oom);
        out->body = column_copy(s, 4, &oom);
        out->created_at = sqlite3_column_int64(s, 5);
        if (oom) {
            st_seterr(err, errlen, "store %s: out of memory", st->path);
            ret = MA_ENOMEM;
        }
    } else {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading an idempotency key");
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
done:
    st_reader_put(st, c);
    if (ret)
        ma_store_idem_row_clear(out);
    return ret;
}
