/*
 * tests/unit/test_transfer.c — one session as a snapshot stream (store/transfer.c): export and import
 * between two stores, byte for byte, and every refusal leaving nothing behind.
 *
 * Two in-memory stores. A session of 200 events (the last block partial, payloads on some events, all
 * three blobs) is exported from the first into a memory buffer and imported into the second under
 * another id: the rows read back (session row, blobs, every event and payload) are equal, and a second
 * export of the import is the same bytes but for the id. Then: the snapshot cut at every length is
 * refused as truncated; a flip of any one byte (every byte of a smaller snapshot) is refused; a newer
 * format is refused as such; bytes after the end are refused; an existing id is MA_EEXISTS; the
 * caller's header check can refuse; and after every refusal the id does not exist.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "store/store.h"

#define KF 8
#define VF 4

static char err[1024];

typedef struct {
    unsigned char *p;
    size_t len, cap, off;
    int fail_after;          /* write: fail (MA_EIO) after this many calls; < 0: never */
} buf;

static int buf_write(void *ctx, const void *data, size_t len)
{
    buf *b = ctx;
    if (b->fail_after == 0)
        return MA_EIO;
    if (b->fail_after > 0)
        b->fail_after--;
    if (b->len + len > b->cap) {
        size_t cap = (b->len + len) * 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p)
            return MA_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

static int buf_read(void *ctx, void *out, size_t len)
{
    buf *b = ctx;
    if (b->len - b->off < len)
        return MA_ENOTFOUND;
    memcpy(out, b->p + b->off, len);
    b->off += len;
    return 0;
}

static ma_store *open_mem(void)
{
    ma_store_options o;
    ma_store_options_default(&o);
    o.in_memory = 1;
    ma_store *st = NULL;
    assert_int_equal(ma_store_open_with("unused", &o, &st, err, sizeof err), 0);
    return st;
}

/* A session of n events: every third has a payload; blobs of 3 kinds. */
static void make_session(ma_store *st, const char *id, size_t n)
{
    assert_int_equal(ma_store_session_create(st, id, "{\"heads\":1,\"dim\":8,\"value_dim\":4}", 1000, err, sizeof err), 0);
    float *k = malloc(n * KF * sizeof *k), *v = malloc(n * VF * sizeof *v);
    char **pl = calloc(n, sizeof *pl);
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < KF; j++)
            k[i * KF + j] = (float)i + (float)j / 8.0f;
        for (int j = 0; j < VF; j++)
            v[i * VF + j] = -(float)i - (float)j / 4.0f;
        if (i % 3 == 0) {
            pl[i] = malloc(32);
            snprintf(pl[i], 32, "{\"i\":%zu}", i);
        }
    }
    static const char bb[] = "backbone-bytes", sb[] = "slots-bytes-longer", ab[] = "archive";
    /* slot version rows (format 2): names that sort as bytes ("a" < "a.b" < "b"), several versions */
    static const ma_store_slot_row rows[] = {
        {"b", 1, "b1", 2, 0}, {"a", 2, "a-two", 5, 0}, {"a.b", 7, "x", 1, 0}, {"a", 1, "a-one", 5, 0},
        {"b", 3, "b3!", 3, 0},
    };
    ma_store_delta d = { .first_event = 0, .n_events = n, .k_floats = KF, .v_floats = VF, .k = k, .v = v,
                         .payloads = (const char *const *)pl, .backbone = { bb, sizeof bb },
                         .slots_blob = { sb, sizeof sb }, .archive_meta = { ab, sizeof ab }, .length = n,
                         .slots = 3, .updated_at = 2000, .slot_rows = rows,
                         .n_slot_rows = n ? sizeof rows / sizeof rows[0] : 0 };
    assert_int_equal(ma_store_commit(st, id, &d, err, sizeof err), 0);
    for (size_t i = 0; i < n; i++)
        free(pl[i]);
    free(pl);
    free(k);
    free(v);
}

/* Appends "name/version/data;" per slot version row. */
static int row_text(void *arg, const char *name, uint64_t version, const void *data, size_t len)
{
    char *t = arg;
    size_t at = strlen(t);
    snprintf(t + at, 4096 - at, "%s/%llu/%.*s;", name, (unsigned long long)version, (int)len, (const char *)data);
    return 0;
}

static void assert_same_session(ma_store *a, const char *ida, ma_store *b, const char *idb, size_t n)
{
    char ra[4096] = "", rb[4096] = "";
    assert_int_equal(ma_store_slot_rows(a, ida, row_text, ra, err, sizeof err), 0);
    assert_int_equal(ma_store_slot_rows(b, idb, row_text, rb, err, sizeof err), 0);
    assert_string_equal(ra, rb);
    if (n)
        assert_string_equal(ra, "a/1/a-one;a/2/a-two;a.b/7/x;b/1/b1;b/3/b3!;");
    ma_store_session x = {0}, y = {0};
    assert_int_equal(ma_store_session_load(a, ida, &x, err, sizeof err), 0);
    assert_int_equal(ma_store_session_load(b, idb, &y, err, sizeof err), 0);
    assert_string_equal(x.config_json, y.config_json);
    assert_true(x.created_at == y.created_at && x.updated_at == y.updated_at);
    assert_true(x.length == y.length && x.slots == y.slots);
    assert_int_equal(x.backbone.len, y.backbone.len);
    assert_memory_equal(x.backbone.data, y.backbone.data, x.backbone.len);
    assert_int_equal(x.slots_blob.len, y.slots_blob.len);
    assert_memory_equal(x.slots_blob.data, y.slots_blob.data, x.slots_blob.len);
    assert_int_equal(x.archive_meta.len, y.archive_meta.len);
    assert_memory_equal(x.archive_meta.data, y.archive_meta.data, x.archive_meta.len);
    ma_store_session_clear(&x);
    ma_store_session_clear(&y);
    if (!n)
        return;
    float *k1 = malloc(n * KF * 4), *v1 = malloc(n * VF * 4), *k2 = malloc(n * KF * 4), *v2 = malloc(n * VF * 4);
    char **p1 = calloc(n, sizeof *p1), **p2 = calloc(n, sizeof *p2);
    assert_int_equal(ma_store_load_events(a, ida, 0, n, &(ma_store_events){KF, VF, k1, v1, p1}, err, sizeof err), 0);
    assert_int_equal(ma_store_load_events(b, idb, 0, n, &(ma_store_events){KF, VF, k2, v2, p2}, err, sizeof err), 0);
    assert_memory_equal(k1, k2, n * KF * 4);
    assert_memory_equal(v1, v2, n * VF * 4);
    for (size_t i = 0; i < n; i++) {
        assert_true((p1[i] == NULL) == (p2[i] == NULL));
        if (p1[i])
            assert_string_equal(p1[i], p2[i]);
        free(p1[i]);
        free(p2[i]);
    }
    free(p1); free(p2); free(k1); free(v1); free(k2); free(v2);
}

static void assert_absent(ma_store *st, const char *id)
{
    ma_store_session s = {0};
    assert_int_equal(ma_store_session_summary(st, id, &s, err, sizeof err), MA_ENOTFOUND);
}

static int import_buf(ma_store *st, const char *id, const unsigned char *p, size_t len, int *why)
{
    buf in = { (unsigned char *)p, len, len, 0, -1 };
    return ma_store_session_import(st, id, &(ma_store_import_source){buf_read, &in, NULL, NULL}, NULL, why, err,
                                   sizeof err);
}

static void test_round_trip(void **state)
{
    (void)state;
    ma_store *a = open_mem(), *b = open_mem();
    make_session(a, "src", 200);
    buf out = { NULL, 0, 0, 0, -1 };
    ma_store_snapshot_stats ss;
    assert_int_equal(ma_store_session_export(a, "src", buf_write, &out, &ss, err, sizeof err), 0);
    assert_int_equal(ss.bytes, out.len);
    assert_int_equal(ss.events, 200);
    assert_int_equal(ss.blocks, 4);     /* 64 + 64 + 64 + 8 */
    assert_int_equal(ss.payloads, 67);
    assert_int_equal(ss.slot_rows, 5);
    int why = -1;
    assert_int_equal(import_buf(b, "dst", out.p, out.len, &why), 0);
    assert_int_equal(why, 0);
    assert_same_session(a, "src", b, "dst", 200);
    /* the import grows on like the original: a commit continues its partial last block */
    make_session(b, "other", 1);
    /* exporting the import gives the same bytes but for the id and the checksum */
    buf again = { NULL, 0, 0, 0, -1 };
    assert_int_equal(ma_store_session_export(b, "dst", buf_write, &again, NULL, err, sizeof err), 0);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.p + 30, out.p + 30, out.len - 30 - 4);   /* after "H", len, idlen, id */
    /* exists */
    assert_int_equal(import_buf(b, "dst", out.p, out.len, &why), MA_EEXISTS);
    /* a failing writer stops the export with its code */
    buf failing = { NULL, 0, 0, 0, 3 };
    assert_int_equal(ma_store_session_export(a, "src", buf_write, &failing, NULL, err, sizeof err), MA_EIO);
    assert_int_equal(ma_store_session_export(a, "nope", buf_write, &failing, NULL, err, sizeof err), MA_ENOTFOUND);
    /* an empty session */
    assert_int_equal(ma_store_session_create(a, "empty", "{}", 5, err, sizeof err), 0);
    buf e = { NULL, 0, 0, 0, -1 };
    assert_int_equal(ma_store_session_export(a, "empty", buf_write, &e, NULL, err, sizeof err), 0);
    assert_int_equal(import_buf(b, "empty2", e.p, e.len, &why), 0);
    assert_same_session(a, "empty", b, "empty2", 0);
    free(e.p);
    free(failing.p);
    free(again.p);
    free(out.p);
    ma_store_close(a);
    ma_store_close(b);
}

/* Events of 384 bytes (keys of 64 floats, values of 32) are stored 10 to a row (schema 7, docs/STORE.md),
 * a snapshot's records hold 64 whatever the rows: 200 events exported as 4 records from rows of 10,
 * imported into rows of 10 again (records and rows not aligned: events carried from one record's rows to
 * the next), read back equal; the import grows on from its partial row. */
static void test_round_trip_rows_of_a_page(void **state)
{
    (void)state;
    enum { W = 64, WV = 32, N = 200 };
    ma_store *a = open_mem(), *b = open_mem();
    assert_int_equal(ma_store_session_create(a, "wide", "{\"heads\":1,\"dim\":64}", 1000, err, sizeof err), 0);
    float *k = malloc((N + 10) * W * sizeof *k), *v = malloc((N + 10) * WV * sizeof *v);
    for (size_t i = 0; i < (N + 10) * W; i++)
        k[i] = (float)i / 3.0f;
    for (size_t i = 0; i < (N + 10) * WV; i++)
        v[i] = -(float)i / 7.0f;
    const size_t parts[] = {90, 5, 105};
    size_t at = 0;
    for (int p = 0; p < 3; p++) {
        ma_store_delta d = {.first_event = at, .n_events = parts[p], .k_floats = W, .v_floats = WV, .k = k + at * W,
                            .v = v + at * WV, .length = at + parts[p], .updated_at = 2000};
        assert_int_equal(ma_store_commit(a, "wide", &d, err, sizeof err), 0);
        at += parts[p];
    }
    buf out = { NULL, 0, 0, 0, -1 };
    ma_store_snapshot_stats ss;
    assert_int_equal(ma_store_session_export(a, "wide", buf_write, &out, &ss, err, sizeof err), 0);
    assert_int_equal(ss.blocks, 4);     /* 64 + 64 + 64 + 8, from 20 rows of 10 */
    int why = -1;
    assert_int_equal(import_buf(b, "copy", out.p, out.len, &why), 0);
    float *gk = malloc((N + 10) * W * sizeof *gk), *gv = malloc((N + 10) * WV * sizeof *gv);
    assert_int_equal(ma_store_load_events(b, "copy", 0, N, &(ma_store_events){W, WV, gk, gv, NULL}, err, sizeof err), 0);
    assert_memory_equal(gk, k, N * W * sizeof *k);
    assert_memory_equal(gv, v, N * WV * sizeof *v);
    uint64_t ids[] = {0, 9, 10, 63, 64, 69, 70, 199};
    assert_int_equal(ma_store_load_some(b, "copy", ids, 8, &(ma_store_events){W, WV, gk, gv, NULL}, err, sizeof err), 0);
    for (int i = 0; i < 8; i++) {
        assert_memory_equal(gk + i * W, k + ids[i] * W, W * sizeof *k);
        assert_memory_equal(gv + i * WV, v + ids[i] * WV, WV * sizeof *v);
    }
    /* the export of the import: the same bytes but for the id ("wide", "copy") and the checksum */
    buf again = { NULL, 0, 0, 0, -1 };
    assert_int_equal(ma_store_session_export(b, "copy", buf_write, &again, NULL, err, sizeof err), 0);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.p + 25, out.p + 25, out.len - 25 - 4);   /* after magic, "H", len, idlen, id */
    free(again.p);
    ma_store_delta d = {.first_event = N, .n_events = 10, .k_floats = W, .v_floats = WV, .k = k + N * W,
                        .v = v + N * WV, .length = N + 10, .updated_at = 3000};
    assert_int_equal(ma_store_commit(b, "copy", &d, err, sizeof err), 0);
    assert_int_equal(ma_store_load_events(b, "copy", 0, N + 10, &(ma_store_events){W, WV, gk, gv, NULL}, err, sizeof err), 0);
    assert_memory_equal(gk, k, (N + 10) * W * sizeof *k);
    assert_memory_equal(gv, v, (N + 10) * WV * sizeof *v);
    free(out.p);
    free(k);
    free(v);
    free(gk);
    free(gv);
    ma_store_close(a);
    ma_store_close(b);
}

static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

/* A snapshot of format 1 (a daemon of schema 2: no slot rows) is still imported. Made from a format-2
 * export of a session without slot rows: the format number, and the end record without its slot count. */
static void test_format1_still_read(void **state)
{
    (void)state;
    ma_store *a = open_mem(), *b = open_mem();
    assert_int_equal(ma_store_session_create(a, "old", "{\"heads\":1,\"dim\":8,\"value_dim\":4}", 1000, err,
                                             sizeof err), 0);
    static const char sb[] = "a-whole-slot-table";
    ma_store_delta d = { .slots_blob = { sb, sizeof sb }, .backbone = { sb, 3 }, .archive_meta = { sb, 4 },
                         .updated_at = 2000 };
    assert_int_equal(ma_store_commit(a, "old", &d, err, sizeof err), 0);
    buf out = { NULL, 0, 0, 0, -1 };
    assert_int_equal(ma_store_session_export(a, "old", buf_write, &out, NULL, err, sizeof err), 0);
    /* ... 'Z' u32 36, 3 counts, u64 slot rows (0), u32 CRC -> 'Z' u32 28, 3 counts, u32 CRC */
    size_t z = out.len - 41;
    assert_int_equal(out.p[z], 'Z');
    out.p[8] = 1;
    out.p[z + 1] = 28;
    size_t len = z + 5 + 24;
    uint32_t crc = crc32_ieee(out.p, len);
    for (int i = 0; i < 4; i++)
        out.p[len + (size_t)i] = (unsigned char)(crc >> (8 * i));
    int why = -1;
    assert_int_equal(import_buf(b, "old", out.p, len + 4, &why), 0);
    assert_same_session(a, "old", b, "old", 0);
    free(out.p);
    ma_store_close(a);
    ma_store_close(b);
}

static int refuse_header(void *ctx, const ma_store_snapshot_header *h, char *e, size_t elen)
{
    int *seen = ctx;
    *seen = (int)h->length;
    assert_string_equal(h->source_id, "src");
    assert_int_equal(h->key_bytes, KF * 4);
    assert_int_equal(h->value_bytes, VF * 4);
    snprintf(e, elen, "no thanks");
    return MA_ECORRUPT;
}

static void test_refusals_leave_nothing(void **state)
{
    (void)state;
    ma_store *a = open_mem(), *b = open_mem();
    make_session(a, "src", 70);
    buf out = { NULL, 0, 0, 0, -1 };
    assert_int_equal(ma_store_session_export(a, "src", buf_write, &out, NULL, err, sizeof err), 0);
    int why;
    /* every proper prefix is truncated (or, for the first bytes, not even a snapshot) */
    for (size_t cut = 0; cut < out.len; cut++) {
        why = 0;
        assert_int_equal(import_buf(b, "t", out.p, cut, &why), MA_ECORRUPT);
        assert_true(why == MA_SNAP_TRUNCATED || (cut >= 8 && why == MA_SNAP_CORRUPT) || cut < 8);
        assert_absent(b, "t");
    }
    /* any single flipped byte is refused (CRC-32 detects every burst of up to 32 bits) */
    unsigned char *bad = malloc(out.len + 1);
    for (size_t i = 0; i < out.len; i++) {
        memcpy(bad, out.p, out.len);
        bad[i] ^= (unsigned char)(1u << (i % 8));
        why = 0;
        int rc = import_buf(b, "f", bad, out.len, &why);
        if (rc != MA_ECORRUPT)
            fail_msg("byte %zu flipped: import returned %d", i, rc);
        assert_absent(b, "f");
    }
    /* a newer format */
    memcpy(bad, out.p, out.len);
    bad[8] = 3;
    assert_int_equal(import_buf(b, "n", bad, out.len, &why), MA_ECORRUPT);
    assert_int_equal(why, MA_SNAP_NEWER);
    assert_absent(b, "n");
    /* bytes after the end */
    memcpy(bad, out.p, out.len);
    bad[out.len] = 0;
    assert_int_equal(import_buf(b, "x", bad, out.len + 1, &why), MA_ECORRUPT);
    assert_int_equal(why, MA_SNAP_CORRUPT);
    assert_absent(b, "x");
    /* the caller's check */
    int seen = -1;
    buf in = { out.p, out.len, out.len, 0, -1 };
    ma_store_import_source src = {buf_read, &in, refuse_header, &seen};
    assert_int_equal(ma_store_session_import(b, "c", &src, NULL, &why, err, sizeof err),
                     MA_ECORRUPT);
    assert_int_equal(seen, 70);
    assert_non_null(strstr(err, "no thanks"));
    assert_absent(b, "c");
    /* and the store still takes the good one */
    assert_int_equal(import_buf(b, "ok", out.p, out.len, &why), 0);
    assert_same_session(a, "src", b, "ok", 70);
    free(bad);
    free(out.p);
    ma_store_close(a);
    ma_store_close(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_round_trip_rows_of_a_page),
        cmocka_unit_test(test_refusals_leave_nothing),
        cmocka_unit_test(test_format1_still_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
