/*
 * core/blob.c — the persisted-state format (layout in core/blob.h and docs/STORE.md).
 *
 * Integers are written byte by byte, least significant first, so the bytes are the same on any host.
 * Float arrays are the bulk of a blob: on a little-endian host their bytes already are the format's and
 * are copied whole; elsewhere each is converted through its u32 bits. The writer doubles its buffer;
 * the reader never reads past its length (a short read sets the sticky bad flag and yields zeros).
 */
#include "core/blob.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/hash.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

#define BLOB_MAGIC "MABL"
#define BLOB_HEAD  12u    /* magic, format, kind */
#define SEC_HEAD   16u    /* tag, version, length */

uint64_t ma_blob_checksum(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = MA_FNV_OFFSET;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (int j = 0; j < 8; j++)
            w |= (uint64_t)p[i + j] << (8 * j);
        h = (h ^ w) * MA_FNV_PRIME;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = ma_fnv1a64_byte(h, p[i]);
    return h;
}

/* ---- writer ---------------------------------------------------------------------------------- */

static unsigned char *room(ma_blob_writer *w, size_t n)
{
    if (w->oom)
        return NULL;
    if (w->cap - w->len < n) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap - w->len < n) {
            if (cap > SIZE_MAX / 2) {
                w->oom = true;
                return NULL;
            }
            cap *= 2;
        }
        unsigned char *p = realloc(w->p, cap);
        if (!p) {
            w->oom = true;
            return NULL;
        }
        w->p = p;
        w->cap = cap;
    }
    unsigned char *p = w->p + w->len;
    w->len += n;
    return p;
}

static void le(unsigned char *p, uint64_t x, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(x >> (8 * i));
}

void ma_blob_put_bytes(ma_blob_writer *w, const void *src, size_t n)
{
    unsigned char *p = room(w, n);
    if (p && n)
        memcpy(p, src, n);
}

void ma_blob_put_u8(ma_blob_writer *w, uint8_t x)
{
    unsigned char *p = room(w, 1);
    if (p)
        *p = x;
}

void ma_blob_put_u32(ma_blob_writer *w, uint32_t x)
{
    unsigned char *p = room(w, 4);
    if (p)
        le(p, x, 4);
}

void ma_blob_put_u64(ma_blob_writer *w, uint64_t x)
{
    unsigned char *p = room(w, 8);
    if (p)
        le(p, x, 8);
}

void ma_blob_put_f64(ma_blob_writer *w, double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    ma_blob_put_u64(w, u);
}

void ma_blob_put_f32s(ma_blob_writer *w, const float *f, size_t n)
{
    if (n > SIZE_MAX / 4) {
        w->oom = true;
        return;
    }
    unsigned char *p = room(w, 4 * n);
    if (!p || !n)
        return;
    if (HOST_LE) {
        memcpy(p, f, 4 * n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &f[i], 4);
        le(p + 4 * i, u, 4);
    }
}

void ma_blob_begin(ma_blob_writer *w, uint32_t kind)
{
    *w = (ma_blob_writer){0};
    ma_blob_put_bytes(w, BLOB_MAGIC, 4);
    ma_blob_put_u32(w, MA_BLOB_FORMAT);
    ma_blob_put_u32(w, kind);
}

void ma_blob_section_begin(ma_blob_writer *w, uint32_t tag, uint32_t version)
{
    ma_blob_put_u32(w, tag);
    ma_blob_put_u32(w, version);
    w->section = w->len;
    ma_blob_put_u64(w, 0);
}

void ma_blob_section_end(ma_blob_writer *w)
{
    if (!w->oom && w->section)
        le(w->p + w->section, (uint64_t)(w->len - w->section - 8), 8);
    w->section = 0;
}

int ma_blob_finish(ma_blob_writer *w, void **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (!w->oom)
        ma_blob_put_u64(w, ma_blob_checksum(w->p, w->len));
    if (w->oom) {
        free(w->p);
        *w = (ma_blob_writer){0};
        return MA_ENOMEM;
    }
    unsigned char *p = realloc(w->p, w->len);   /* give back the doubling's slack */
    *buf = p ? p : w->p;
    *len = w->len;
    *w = (ma_blob_writer){0};
    return 0;
}

/* ---- reader ---------------------------------------------------------------------------------- */

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t x = 0;
    for (int i = 0; i < n; i++)
        x |= (uint64_t)p[i] << (8 * i);
    return x;
}

bool ma_blob_is_blob(const void *buf, size_t len)
{
    return buf && len >= 4 && memcmp(buf, BLOB_MAGIC, 4) == 0;
}

void ma_blob_reader_raw(ma_blob_reader *r, const void *buf, size_t len)
{
    *r = (ma_blob_reader){buf, buf ? len : 0, 0, false};
}

int ma_blob_open(ma_blob_reader *r, const void *buf, size_t len, uint32_t kind)
{
    const unsigned char *p = buf;
    ma_blob_reader_raw(r, NULL, 0);
    r->bad = true;
    if (!p || len < BLOB_HEAD + 8 || memcmp(p, BLOB_MAGIC, 4) != 0 || get_le(p + 4, 4) != MA_BLOB_FORMAT ||
        get_le(p + 8, 4) != kind || get_le(p + len - 8, 8) != ma_blob_checksum(p, len - 8))
        return MA_ECORRUPT;
    *r = (ma_blob_reader){p, len - 8, BLOB_HEAD, false};
    return 0;
}

const void *ma_blob_take(ma_blob_reader *r, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *p = r->p + r->off;
    r->off += n;
    return p;
}

int ma_blob_section(ma_blob_reader *r, uint32_t tag, uint32_t version, ma_blob_reader *sec)
{
    ma_blob_reader_raw(sec, NULL, 0);
    sec->bad = true;
    uint32_t t = ma_blob_get_u32(r), v = ma_blob_get_u32(r);
    uint64_t n = ma_blob_get_u64(r);
    if (r->bad || t != tag || v != version || n > ma_blob_remaining(r)) {
        r->bad = true;
        return MA_ECORRUPT;
    }
    const unsigned char *p = ma_blob_take(r, (size_t)n);
    *sec = (ma_blob_reader){p, (size_t)n, 0, false};
    return 0;
}

uint8_t ma_blob_get_u8(ma_blob_reader *r)
{
    const unsigned char *p = ma_blob_take(r, 1);
    return p ? *p : 0;
}

uint32_t ma_blob_get_u32(ma_blob_reader *r)
{
    const unsigned char *p = ma_blob_take(r, 4);
    return p ? (uint32_t)get_le(p, 4) : 0;
}

uint64_t ma_blob_get_u64(ma_blob_reader *r)
{
    const unsigned char *p = ma_blob_take(r, 8);
    return p ? get_le(p, 8) : 0;
}

double ma_blob_get_f64(ma_blob_reader *r)
{
    uint64_t u = ma_blob_get_u64(r);
    double x;
    memcpy(&x, &u, 8);
    return x;
}

bool ma_blob_get_f32s(ma_blob_reader *r, float *f, size_t n)
{
    const unsigned char *p = n <= SIZE_MAX / 4 ? ma_blob_take(r, 4 * n) : NULL;
    if (!p) {
        r->bad = true;
        return false;
    }
    if (HOST_LE) {
        if (n)
            memcpy(f, p, 4 * n);
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)get_le(p + 4 * i, 4);
        memcpy(&f[i], &u, 4);
    }
    return true;
}

size_t ma_blob_remaining(const ma_blob_reader *r)
{
    return r->bad ? 0 : r->len - r->off;
}

int ma_blob_done(const ma_blob_reader *r)
{
    return !r->bad && r->off == r->len ? 0 : MA_ECORRUPT;
}
