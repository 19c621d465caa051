/*
 * store/transfer.c — one session out of the store as a self-contained snapshot stream, and back in
 * (store/store.h: ma_store_session_export, ma_store_session_import; docs/STORE.md, "Snapshots").
 *
 * Design. A snapshot is the session's rows as the store holds them — the session row, its state blobs,
 * its event blocks, payload rows and slot version rows — so an imported session restores from the same
 * bytes and answers with the same bits. The stream (all integers little-endian):
 *
 *     magic "MAsnap\r\n" (8 bytes; the CR LF shows up text-mode mangling), u32 format version (2)
 *     records: u8 tag, u32 length, length bytes
 *       'H'  the session: u32 id length, id, u32 config length, config text, i64 created_at,
 *            i64 updated_at, u64 length (events), u64 slots, u64 key bytes per event, u64 value bytes
 *            per event
 *       'O'  a state blob: u32 kind, the bytes
 *       'E'  an event block: u64 block, u32 n, n keys, n values (bytes per event from 'H'); blocks of 64
 *            events whatever the store's rows hold (schema 7 stores fewer per row: st_row_events)
 *       'P'  an event's payload: u64 event index, the JSON text
 *       'S'  a slot version row (format 2): u32 name length, name, u64 version, the record bytes
 *       'Z'  the end: u64 blobs, u64 blocks, u64 payloads, [format 2: u64 slot rows,] u32 CRC-32 (IEEE)
 *            of every byte before this record
 *     in this order: H, O*, E* (blocks 0, 1, ... in order), P* (ascending), S* (by name as bytes, then
 *     version), Z. Format 1 (schema 2: the slot table whole in its blob, no S records) is still read.
 *
 * Export reads inside one read transaction of a reader connection (a consistent snapshot even while
 * the session takes writes; WAL readers never block the writer) and hands the bytes to a callback one
 * record at a time: memory is one event block (at most 64 events). Import reads records through a
 * callback into one write transaction: the session row, blobs, blocks and payloads, every structural
 * rule of the store checked on the way (block numbering, counts, sizes, payload indices) and the
 * checksum at the end; anything wrong rolls the transaction back, so a refused snapshot leaves
 * nothing behind. The import holds the store's writer for its duration (other sessions' commits wait).
 *
 * Not done here: compression, validating the blobs' contents (the core checks them when the session is
 * loaded; the checksum catches damage in transit, not a forged snapshot), partial or resumable transfer.
 */
#include "store/store.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/error.h"
#include "store/store_int.h"

#define SNAP_MAGIC "MAsnap\r\n"
#define SNAP_FORMAT 2u
#define SNAP_NAME_MAX 128u            /* a slot name's bytes (MA_MAX_NAME of core/params.h) */
#define SNAP_MAX_RECORD (80u << 20)   /* > the largest block: 64 events * 64 heads * 2048 floats * 4 B */

/* ---- CRC-32 (IEEE 802.3, reflected, as zlib) ---------------------------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const void *data, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_init);
    const unsigned char *p = data;
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* ---- export --------------------------------------------------------------------------------------- */

typedef struct {
    ma_store_write_fn write;
    void *ctx;
    uint32_t crc;
    uint64_t bytes;
} out_stream;

static int emit(out_stream *o, const void *data, size_t n)
{
    if (!n)
        return 0;
    o->crc = crc_update(o->crc, data, n);
    o->bytes += n;
    return o->write(o->ctx, data, n);
}

/* A record whose body is the concatenation of up to three pieces. */
static int emit_record(out_stream *o, char tag, const void *a, size_t an, const void *b, size_t bn, const void *c,
                       size_t cn)
{
    unsigned char head[5];
    head[0] = (unsigned char)tag;
    put_u32(head + 1, (uint32_t)(an + bn + cn));
    int ret = emit(o, head, sizeof head);
    if (!ret)
        ret = emit(o, a, an);
    if (!ret)
        ret = emit(o, b, bn);
    if (!ret)
        ret = emit(o, c, cn);
    return ret;
}

static sqlite3_stmt *prepare(ma_store *st, conn *c, const char *sql, char *err, size_t errlen)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) {
        st_fail_db(st, c->db, rc, err, errlen, "preparing a snapshot query");
        return NULL;
    }
    return s;
}

/* An 'E' record: block `block` of the snapshot, n events (n keys of kb bytes, then n values of vb). */
static int emit_events(out_stream *o, uint64_t block, size_t n, const unsigned char *k, size_t kb,
                       const unsigned char *v, size_t vb)
{
    unsigned char bh[12];
    put_u64(bh, block);
    put_u32(bh + 8, (uint32_t)n);
    return emit_record(o, 'E', bh, sizeof bh, k, n * kb, v, n * vb);
}

int ma_store_session_export(ma_store *st, const char *id, ma_store_write_fn write, void *ctx,
                            ma_store_snapshot_stats *stats, char *err, size_t errlen)
{
    conn *c = NULL;
    sqlite3_stmt *row = NULL, *blobs = NULL, *blocks = NULL, *payloads = NULL, *slots = NULL;
    unsigned char *ek = NULL, *ev = NULL;   /* one record's keys and values */
    out_stream o = { write, ctx, 0, 0 };
    uint64_t nblobs = 0, nblocks = 0, npayloads = 0, nslots = 0;
    bool in_txn = false;
    int ret, rc;
    if (stats)
        memset(stats, 0, sizeof *stats);
    if ((ret = st_reader_get(st, &c, err, errlen)))
        return ret;
    if ((rc = st_run(st, c, ST_BEGIN, err, errlen))) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "starting a snapshot");
        goto done;
    }
    in_txn = true;
    row = prepare(st, c, "SELECT sid, config, created_at, updated_at, length, slots FROM sessions WHERE id = ?1",
                  err, errlen);
    blobs = prepare(st, c, "SELECT kind, data FROM blobs WHERE sid = ?1 ORDER BY kind", err, errlen);
    blocks = prepare(st, c, "SELECT block, n, k, v, ck FROM event_blocks WHERE sid = ?1 ORDER BY block", err, errlen);
    payloads = prepare(st, c, "SELECT idx, payload, ck FROM payloads WHERE sid = ?1 ORDER BY idx", err, errlen);
    slots = prepare(st, c, "SELECT name, version, data FROM slot_versions WHERE sid = ?1 ORDER BY name, version",
                    err, errlen);
    if (!row || !blobs || !blocks || !payloads || !slots) {
        ret = MA_EIO;
        goto done;
    }
    if ((ret = st_session_step(st, c, row, id, "reading the session row", err, errlen)))
        goto done;
    int64_t sid = sqlite3_column_int64(row, 0);
    const char *config = (const char *)sqlite3_column_text(row, 1);
    uint32_t idlen = (uint32_t)strlen(id), cfglen = config ? (uint32_t)sqlite3_column_bytes(row, 1) : 0;
    uint64_t length = (uint64_t)sqlite3_column_int64(row, 4);

    /* Bytes per event: from block 0 (every block of a session has the same sizes; checked at open). */
    uint64_t kb = 0, vb = 0;
    sqlite3_bind_int64(blocks, 1, sid);
    rc = sqlite3_step(blocks);
    if (rc == SQLITE_ROW) {
        int n = sqlite3_column_int(blocks, 1);
        if (n > 0) {
            kb = (uint64_t)sqlite3_column_bytes(blocks, 2) / (uint64_t)n;
            vb = (uint64_t)sqlite3_column_bytes(blocks, 3) / (uint64_t)n;
        }
    } else if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading an event block");
        goto done;
    }

    unsigned char magic[12];
    memcpy(magic, SNAP_MAGIC, 8);
    put_u32(magic + 8, SNAP_FORMAT);
    if ((ret = emit(&o, magic, sizeof magic)))
        goto done;
    unsigned char h1[4], h2[4], h3[48];
    put_u32(h1, idlen);
    put_u32(h2, cfglen);
    put_u64(h3, (uint64_t)sqlite3_column_int64(row, 2));
    put_u64(h3 + 8, (uint64_t)sqlite3_column_int64(row, 3));
    put_u64(h3 + 16, length);
    put_u64(h3 + 24, (uint64_t)sqlite3_column_int64(row, 5));
    put_u64(h3 + 32, kb);
    put_u64(h3 + 40, vb);
    /* 'H' = idlen, id, cfglen, config, the fixed part: one record of five pieces, written as two calls. */
    unsigned char head[5];
    head[0] = 'H';
    put_u32(head + 1, 4 + idlen + 4 + cfglen + (uint32_t)sizeof h3);
    if ((ret = emit(&o, head, 5)) || (ret = emit(&o, h1, 4)) || (ret = emit(&o, id, idlen)) ||
        (ret = emit(&o, h2, 4)) || (ret = emit(&o, config, cfglen)) || (ret = emit(&o, h3, sizeof h3)))
        goto done;

    sqlite3_bind_int64(blobs, 1, sid);
    while ((rc = sqlite3_step(blobs)) == SQLITE_ROW) {
        unsigned char kind[4];
        put_u32(kind, (uint32_t)sqlite3_column_int(blobs, 0));
        const void *data = sqlite3_column_blob(blobs, 1);
        size_t n = (size_t)sqlite3_column_bytes(blobs, 1);
        if ((ret = emit_record(&o, 'O', kind, 4, data, n, NULL, 0)))
            goto done;
        nblobs++;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading the state blobs");
        goto done;
    }

    /* The events, in records of BLOCK (64) events whatever the rows hold (schema 7 stores fewer per row:
     * st_row_events), so that the format does not depend on the schema. The first row is already
     * stepped. */
    if (kb && vb && (!(ek = malloc(BLOCK * kb)) || !(ev = malloc(BLOCK * vb)))) {
        st_seterr(err, errlen, "store %s: out of memory", st->path);
        ret = MA_ENOMEM;
        goto done;
    }
    uint64_t at = 0;   /* events exported */
    size_t have = 0;   /* events in ek, ev */
    for (rc = sqlite3_column_type(blocks, 0) == SQLITE_NULL ? SQLITE_DONE : SQLITE_ROW; rc == SQLITE_ROW;
         rc = sqlite3_step(blocks)) {
        st_block b = st_block_at(blocks);
        if (b.n < 1 || b.n > BLOCK || b.klen != b.n * kb || b.vlen != b.n * vb) {
            st_seterr(err, errlen, "store %s: session '%s' event block %" PRIu64 ": %zu events of %zu/%zu key/value "
                      "bytes, expected %" PRIu64 "/%" PRIu64 " each", st->path, id, b.block, b.n, b.klen, b.vlen,
                      (uint64_t)kb, (uint64_t)vb);
            ret = MA_ECORRUPT;
            goto done;
        }
        /* Damaged rows are not exported (a snapshot's own checksum would make them look sound). */
        if ((ret = st_block_check(st, id, blocks, &b, err, errlen)))
            goto done;
        const unsigned char *k = b.k, *v = b.v;
        const size_t n = b.n;
        for (size_t i = 0; i < n;) {
            size_t take = n - i < BLOCK - have ? n - i : BLOCK - have;
            memcpy(ek + have * kb, k + i * kb, take * kb);
            memcpy(ev + have * vb, v + i * vb, take * vb);
            have += take;
            i += take;
            if (have == BLOCK && (ret = emit_events(&o, nblocks++, have, ek, kb, ev, vb)))
                goto done;
            have %= BLOCK;
        }
        at += n;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading the event blocks");
        goto done;
    }
    if (have && (ret = emit_events(&o, nblocks++, have, ek, kb, ev, vb)))
        goto done;
    if (at != length) {
        st_seterr(err, errlen, "store %s: session '%s' has %" PRIu64 " events in its blocks, its length is %" PRIu64,
                  st->path, id, at, length);
        ret = MA_ECORRUPT;
        goto done;
    }

    sqlite3_bind_int64(payloads, 1, sid);
    while ((rc = sqlite3_step(payloads)) == SQLITE_ROW) {
        unsigned char idx[8];
        put_u64(idx, (uint64_t)sqlite3_column_int64(payloads, 0));
        const void *text = sqlite3_column_text(payloads, 1);
        size_t n = (size_t)sqlite3_column_bytes(payloads, 1);
        if ((ret = st_payload_check(st, id, payloads, 2,
                                    &(st_payload){(uint64_t)sqlite3_column_int64(payloads, 0), text, n}, err,
                                    errlen)) ||
            (ret = emit_record(&o, 'P', idx, 8, text, n, NULL, 0)))
            goto done;
        npayloads++;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading the payloads");
        goto done;
    }

    sqlite3_bind_int64(slots, 1, sid);
    while ((rc = sqlite3_step(slots)) == SQLITE_ROW) {
        unsigned char nl[4], ver[8];
        const void *name = sqlite3_column_text(slots, 0);
        size_t namelen = (size_t)sqlite3_column_bytes(slots, 0);
        put_u32(nl, (uint32_t)namelen);
        put_u64(ver, (uint64_t)sqlite3_column_int64(slots, 1));
        const void *data = sqlite3_column_blob(slots, 2);
        size_t n = (size_t)sqlite3_column_bytes(slots, 2);
        /* 'S' = name length, name, version, record: one record of four pieces, in two writes. */
        unsigned char sh[5];
        sh[0] = 'S';
        put_u32(sh + 1, (uint32_t)(4 + namelen + 8 + n));
        if ((ret = emit(&o, sh, 5)) || (ret = emit(&o, nl, 4)) || (ret = emit(&o, name, namelen)) ||
            (ret = emit(&o, ver, 8)) || (ret = emit(&o, data, n)))
            goto done;
        nslots++;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "reading the slot versions");
        goto done;
    }

    unsigned char z[5 + 36];
    z[0] = 'Z';
    put_u32(z + 1, 36);
    put_u64(z + 5, nblobs);
    put_u64(z + 13, nblocks);
    put_u64(z + 21, npayloads);
    put_u64(z + 29, nslots);
    put_u32(z + 37, crc_update(o.crc, z, 37));   /* the checksum covers everything before its own 4 bytes */
    if ((ret = emit(&o, z, sizeof z)))
        goto done;
    if (stats) {
        stats->bytes = o.bytes;
        stats->events = length;
        stats->blocks = nblocks;
        stats->payloads = npayloads;
        stats->slot_rows = nslots;
    }
done:
    sqlite3_finalize(slots);
    sqlite3_finalize(row);
    sqlite3_finalize(blobs);
    sqlite3_finalize(blocks);
    sqlite3_finalize(payloads);
    free(ek);
    free(ev);
    if (in_txn)
        st_rollback(st, c);   /* a read transaction: nothing to keep */
    st_reader_put(st, c);
    return ret;
}

/* The order of slot version rows: name as bytes (a prefix first), then version; <0, 0, >0. */
static int row_order(const char *a, size_t an, uint64_t av, const char *b, size_t bn, uint64_t bv)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c)
        return c;
    if (an != bn)
        return an < bn ? -1 : 1;
    return av < bv ? -1 : av > bv;
}

/* ---- import --------------------------------------------------------------------------------------- */

typedef struct {
    ma_store_read_fn read;
    void *ctx;
    uint32_t crc;
    unsigned char *buf;         /* the current record's body */
    size_t cap;
    int *why;
    char *err;
    size_t errlen;
    const char *id;
} in_stream;

static int refuse(in_stream *in, int why, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(in_stream *in, int why, const char *fmt, ...)
{
    if (in->why)
        *in->why = why;
    if (in->err && in->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(in->err, in->errlen, fmt, ap);
        va_end(ap);
    }
    return MA_ECORRUPT;
}

/* Reads exactly n bytes (checksummed); the end of the input is a truncated snapshot. */
static int take(in_stream *in, void *buf, size_t n)
{
    int ret = in->read(in->ctx, buf, n);
    if (ret == MA_ENOTFOUND)
        return refuse(in, MA_SNAP_TRUNCATED, "snapshot truncated: the input ended inside it");
    if (ret)
        return ret;
    in->crc = crc_update(in->crc, buf, n);
    return 0;
}

/* Reads the next record's tag and body into in->buf; *len gets the body's length. */
static int next_record(in_stream *in, char *tag, uint32_t *len)
{
    unsigned char head[5];
    int ret = take(in, head, 5);
    if (ret)
        return ret;
    *tag = (char)head[0];
    *len = get_u32(head + 1);
    if (*len > SNAP_MAX_RECORD)
        return refuse(in, MA_SNAP_CORRUPT, "snapshot corrupt: a record of %" PRIu32 " bytes", *len);
    if (*len > in->cap) {
        unsigned char *b = realloc(in->buf, *len);
        if (!b)
            return MA_ENOMEM;
        in->buf = b;
        in->cap = *len;
    }
    if (*tag == 'Z')
        return 0;   /* its body is read by the caller: the checksum stops before the CRC field */
    return take(in, in->buf, *len);
}

/* The import's rows of event_blocks: a snapshot's records hold 64 events, a row st_row_events of them
 * (schema 7), so the events of a record are written as whole rows, the rest kept for the next record. */
typedef struct {
    size_t g, kb, vb, have;    /* events per row, bytes per key and value, events kept */
    unsigned char *k, *v;      /* the kept events (g of each) */
} carry;

/* Events [first, first + n) of the session (k: n keys, v: n values): whole rows written, the rest kept in r,
 * or written too when last. */
static int put_events(ma_store *st, conn *c, int64_t sid, carry *r, uint64_t first, size_t n,
                      const unsigned char *k, const unsigned char *v, bool last, char *err, size_t errlen)
{
    int ret;
    uint64_t row = first / r->g;   /* the row the kept events begin */
    for (size_t i = 0; i < n;) {
        size_t take = n - i < r->g - r->have ? n - i : r->g - r->have;
        if (r->have == 0 && take == r->g) {   /* a whole row: straight from the record */
            st_block b = {row++, take, k + i * r->kb, v + i * r->vb, take * r->kb, take * r->vb};
            if ((ret = st_put_block(st, c, sid, &b, err, errlen)))
                return ret;
            i += take;
            continue;
        }
        memcpy(r->k + r->have * r->kb, k + i * r->kb, take * r->kb);
        memcpy(r->v + r->have * r->vb, v + i * r->vb, take * r->vb);
        r->have += take;
        i += take;
        if (r->have == r->g || (last && i == n)) {
            st_block b = {row++, r->have, r->k, r->v, r->have * r->kb, r->have * r->vb};
            if ((ret = st_put_block(st, c, sid, &b, err, errlen)))
                return ret;
            r->have = 0;
        }
    }
    return 0;
}

int ma_store_session_import(ma_store *st, const char *id, const ma_store_import_source *src,
                            ma_store_snapshot_stats *stats, int *why, char *err, size_t errlen)
{
    ma_store_snapshot_check check = src->check;
    void *check_ctx = src->check_ctx;
    in_stream in = { src->read, src->ctx, 0, NULL, 0, why, err, errlen, id };
    conn *c = st->writer;
    sqlite3_stmt *upd = NULL, *s;
    ma_store_snapshot_header h;
    memset(&h, 0, sizeof h);
    uint64_t t0 = 0, nblobs = 0, nblocks = 0, npayloads = 0, events = 0, event_bytes = 0, last_payload = 0;
    uint64_t nslots = 0, slot_bytes = 0, last_version = 0;
    char last_name[SNAP_NAME_MAX];
    size_t last_len = 0;
    bool begun = false, any_payload = false;
    carry rows = {0};
    int ret, rc;
    if (why)
        *why = 0;
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (!id || !*id) {
        st_seterr(err, errlen, "store %s: empty session id", st->path);
        return MA_EINVAL;
    }

    /* The magic and the header are read before the writer is taken: a stream that is not a snapshot
     * (or a newer one) is refused without touching the store. */
    unsigned char magic[12];
    if ((ret = take(&in, magic, sizeof magic)))
        goto out;
    if (memcmp(magic, SNAP_MAGIC, 8) != 0) {
        ret = refuse(&in, MA_SNAP_CORRUPT, "not a memattn session snapshot (bad magic)");
        goto out;
    }
    uint32_t format = get_u32(magic + 8);
    if (format != SNAP_FORMAT && format != 1) {
        ret = refuse(&in, get_u32(magic + 8) > SNAP_FORMAT ? MA_SNAP_NEWER : MA_SNAP_CORRUPT,
                     "snapshot format %" PRIu32 " is not supported (this memattnd reads formats 1 to %u)",
                     get_u32(magic + 8), SNAP_FORMAT);
        goto out;
    }
    char tag;
    uint32_t len;
    if ((ret = next_record(&in, &tag, &len)))
        goto out;
    {
        const unsigned char *p = in.buf, *end = in.buf + len;
        uint32_t idlen, cfglen;
        if (tag != 'H' || len < 4 || (idlen = get_u32(p)) > 128 || len < 8 + (uint64_t)idlen ||
            (cfglen = get_u32(p + 4 + idlen)) > len || (uint64_t)len != 8 + (uint64_t)idlen + cfglen + 48) {
            ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: bad header record");
            goto out;
        }
        memcpy(h.source_id, p + 4, idlen);
        h.config = malloc((size_t)cfglen + 1);
        if (!h.config) {
            ret = MA_ENOMEM;
            goto out;
        }
        memcpy(h.config, p + 8 + idlen, cfglen);
        h.config[cfglen] = '\0';
        p += 8 + idlen + cfglen;
        h.created_at = (int64_t)get_u64(p);
        h.updated_at = (int64_t)get_u64(p + 8);
        h.length = get_u64(p + 16);
        h.slots = get_u64(p + 24);
        h.key_bytes = get_u64(p + 32);
        h.value_bytes = get_u64(p + 40);
        (void)end;
        if (strlen(h.config) != cfglen || (h.length && (!h.key_bytes || !h.value_bytes)) ||
            h.key_bytes > (1u << 20) || h.value_bytes > (1u << 20)) {
            ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: inconsistent header");
            goto out;
        }
    }
    if (check && (ret = check(check_ctx, &h, err, errlen))) {
        if (why)
            *why = MA_SNAP_CORRUPT;
        goto out;
    }

    ret = st_write_begin(st, &t0, err, errlen);
    begun = true;
    if (ret)
        goto out;
    s = st_stmt(st, c, ST_INSERT_SESSION, err, errlen);
    if (!s) {
        ret = MA_EIO;
        goto out;
    }
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, h.config, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, h.created_at);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        st_seterr(err, errlen, "session '%s' already exists", id);
        ret = MA_EEXISTS;
        goto out;
    }
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "creating the imported session");
        goto out;
    }
    int64_t sid = sqlite3_last_insert_rowid(c->db);
    rows.kb = (size_t)h.key_bytes;
    rows.vb = (size_t)h.value_bytes;
    rows.g = st_row_events(rows.kb, rows.vb);
    if (!(rows.k = malloc(rows.g * rows.kb + 1)) || !(rows.v = malloc(rows.g * rows.vb + 1))) {
        st_seterr(err, errlen, "store %s: out of memory", st->path);
        ret = MA_ENOMEM;
        goto out;
    }

    /* Records in the order of the format: O*, E*, P*, S*, Z. */
    int phase = 0;   /* 0 blobs, 1 blocks, 2 payloads, 3 slot rows */
    uint32_t zlen = format == 1 ? 28 : 36;
    for (;;) {
        if ((ret = next_record(&in, &tag, &len)))
            goto out;
        if (tag == 'O' && phase == 0 && len >= 4) {
            uint32_t kind = get_u32(in.buf);
            if (kind >= N_BLOBS) {
                ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: blob kind %" PRIu32, kind);
                goto out;
            }
            s = st_stmt(st, c, ST_PUT_BLOB, err, errlen);
            if (!s) {
                ret = MA_EIO;
                goto out;
            }
            sqlite3_bind_int64(s, 1, sid);
            sqlite3_bind_int(s, 2, (int)kind);
            sqlite3_bind_blob(s, 3, in.buf + 4, (int)(len - 4), SQLITE_STATIC);
            rc = sqlite3_step(s);
            sqlite3_reset(s);
            sqlite3_clear_bindings(s);
            if (rc != SQLITE_DONE) {
                ret = st_fail_db(st, c->db, rc, err, errlen, "writing a blob");
                goto out;
            }
            nblobs++;
        } else if (tag == 'E' && phase <= 1 && len >= 12) {
            phase = 1;
            uint64_t block = get_u64(in.buf);
            uint32_t n = get_u32(in.buf + 8);
            if (block != nblocks || n < 1 || n > BLOCK || (events + n < h.length && n != BLOCK) ||
                (uint64_t)len != 12 + (uint64_t)n * (h.key_bytes + h.value_bytes) || events + n > h.length) {
                ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: event block %" PRIu64 " (expected block %" PRIu64
                             " of a %" PRIu64 "-event session)", block, nblocks, h.length);
                goto out;
            }
            const unsigned char *k = in.buf + 12, *v = k + (size_t)n * h.key_bytes;
            if ((ret = put_events(st, c, sid, &rows, events, n, k, v, events + n == h.length, err, errlen)))
                goto out;
            events += n;
            event_bytes += (uint64_t)n * (h.key_bytes + h.value_bytes);
            nblocks++;
        } else if (tag == 'P' && phase <= 2 && len >= 8) {
            phase = 2;
            uint64_t idx = get_u64(in.buf);
            if (idx >= h.length || (any_payload && idx <= last_payload) || memchr(in.buf + 8, 0, len - 8)) {
                ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: payload of event %" PRIu64, idx);
                goto out;
            }
            if ((ret = st_put_payload(st, c, sid, idx, (const char *)in.buf + 8, (int)(len - 8), err, errlen)))
                goto out;
            any_payload = true;
            last_payload = idx;
            npayloads++;
        } else if (tag == 'S' && format >= 2 && len >= 12) {
            phase = 3;
            uint32_t nl = get_u32(in.buf);
            const char *name = (const char *)in.buf + 4;
            uint64_t version = nl <= SNAP_NAME_MAX && len >= 12 + (uint64_t)nl ? get_u64(in.buf + 4 + nl) : 0;
            if (!version || version > INT64_MAX || nl == 0 || memchr(name, 0, nl) ||
                (nslots && row_order(name, nl, version, last_name, last_len, last_version) <= 0)) {
                ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: slot version row %" PRIu64 " (out of order, "
                             "or a bad name or number)", nslots);
                goto out;
            }
            memcpy(last_name, name, nl);
            last_len = nl;
            last_version = version;
            size_t n = len - 12 - nl;
            if ((ret = st_put_slot_row(st, c, sid, &(st_slot_row){name, (int)nl, version, in.buf + 12 + nl, n}, err,
                                       errlen)))
                goto out;
            slot_bytes += n;
            nslots++;
        } else if (tag == 'Z' && len == zlen) {
            unsigned char z[36];
            if ((ret = take(&in, z, zlen - 4)))
                goto out;
            uint32_t want = in.crc;
            if ((ret = in.read(in.ctx, z + zlen - 4, 4)) == MA_ENOTFOUND) {
                ret = refuse(&in, MA_SNAP_TRUNCATED, "snapshot truncated: the input ended inside it");
                goto out;
            }
            if (ret)
                goto out;
            if (get_u32(z + zlen - 4) != want) {
                ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: checksum mismatch");
                goto out;
            }
            if (get_u64(z) != nblobs || get_u64(z + 8) != nblocks || get_u64(z + 16) != npayloads ||
                (format >= 2 && get_u64(z + 24) != nslots) || events != h.length) {
                ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: counts differ from its contents");
                goto out;
            }
            break;
        } else {
            ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: unexpected record '%c' (%" PRIu32 " bytes)",
                         tag >= ' ' && tag < 127 ? tag : '?', len);
            goto out;
        }
    }
    /* Bytes after the end record: not a snapshot this reader understands. */
    {
        unsigned char extra;
        ret = in.read(in.ctx, &extra, 1);
        if (ret == 0) {
            ret = refuse(&in, MA_SNAP_CORRUPT, "snapshot corrupt: bytes after its end");
            goto out;
        }
        if (ret != MA_ENOTFOUND)
            goto out;
        ret = 0;
    }
    upd = st_stmt(st, c, ST_UPDATE_SESSION, err, errlen);
    if (!upd) {
        ret = MA_EIO;
        goto out;
    }
    sqlite3_bind_int64(upd, 1, sid);
    sqlite3_bind_int64(upd, 2, (int64_t)h.length);
    sqlite3_bind_int64(upd, 3, (int64_t)h.slots);
    sqlite3_bind_int64(upd, 4, h.updated_at);
    sqlite3_bind_int64(upd, 5, (int64_t)event_bytes);
    sqlite3_bind_int64(upd, 6, (int64_t)slot_bytes);
    rc = sqlite3_step(upd);
    sqlite3_reset(upd);
    sqlite3_clear_bindings(upd);
    if (rc != SQLITE_DONE) {
        ret = st_fail_db(st, c->db, rc, err, errlen, "writing the imported session row");
        goto out;
    }
    if (stats) {
        stats->events = h.length;
        stats->blocks = nblocks;
        stats->payloads = npayloads;
        stats->slot_rows = nslots;
    }
out:
    if (begun)
        ret = st_write_end(st, t0, ret, "committing an import", err, errlen);
    free(h.config);
    free(in.buf);
    free(rows.k);
    free(rows.v);
    return ret;
}
