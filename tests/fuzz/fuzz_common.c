/*
 * tests/fuzz/fuzz_common.c — shared helpers of the fuzz harnesses (tests/fuzz/fuzz_common.h).
 */
#include "tests/fuzz/fuzz_common.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/blob.h"
#include "core/error.h"

void fz_params(unsigned variant, ma_params *p)
{
    ma_params_default(p);
    p->chunk = 4;
    p->slots = 4;
    p->topk = 2;
    p->window = 8;
    switch (variant % FZ_VARIANTS) {
    case 0:
        p->heads = 2; p->dim = 4; p->value_dim = 4; p->backbone = MA_BACKBONE_VLA; p->vla.period = 3;
        p->selector = MA_SELECTOR_INDEX;
        break;
    case 1:
        p->heads = 1; p->dim = 8; p->value_dim = 3; p->backbone = MA_BACKBONE_DELTA; p->selector = MA_SELECTOR_CHUNKS;
        break;
    case 2:
        p->heads = 1; p->dim = 4; p->value_dim = 4; p->backbone = MA_BACKBONE_LINEAR; p->selector = MA_SELECTOR_INDEX;
        break;
    default:
        p->heads = 2; p->dim = 2; p->value_dim = 2; p->backbone = MA_BACKBONE_NONE; p->selector = MA_SELECTOR_CHUNKS;
        break;
    }
}

void fz_event(const ma_params *p, uint64_t i, float *k, float *v)
{
    size_t nk = (size_t)p->heads * (size_t)p->dim, nv = (size_t)p->heads * (size_t)p->value_dim;
    for (size_t j = 0; j < nk; j++)
        k[j] = (float)sin((double)(i * 7 + j * 3 + 1)) * 0.5f;
    for (size_t j = 0; j < nv; j++)
        v[j] = (float)cos((double)(i * 5 + j + 2));
}

int fz_session(unsigned variant, size_t n, ma_session **out)
{
    ma_params p;
    fz_params(variant, &p);
    ma_session *s = NULL;
    int rc = ma_session_create(&p, &s);
    if (rc)
        return rc;
    size_t nk = (size_t)p.heads * (size_t)p.dim, nv = (size_t)p.heads * (size_t)p.value_dim;
    float *k = malloc(nk * sizeof(float)), *v = malloc(nv * sizeof(float));
    if (!k || !v) {
        rc = MA_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        char payload[32], slot[16];
        snprintf(payload, sizeof payload, "{\"i\":%zu}", i);
        snprintf(slot, sizeof slot, "s%zu", i % 6);
        fz_event(&p, i, k, v);
        ma_event ev = { .k = k, .v = v, .payload = i % 3 == 0 ? payload : NULL, .slot = i % 2 ? slot : NULL,
                        .protect = i % 11 == 5 };
        ma_ingest_report rep = { 0 };
        rc = ma_session_ingest(s, 1, &ev, (int64_t)i, &rep);
        ma_ingest_report_clear(&rep);
        if (rc == MA_EFULL)
            rc = 0;   /* every resident slot protected: the event is refused, fine for a seed */
    }
    /* The slot verbs, whatever state they meet (errors such as protected or absent are expected). */
    ma_slot_result res;
    ma_slot_input in = { .name = "verb", .payload = "\"a string payload\"" };
    ma_session_slot_overwrite(s, &in, 0, 0, 100, &res);
    ma_session_slot_overwrite(s, &in, 0, 0, 101, &res);
    ma_session_slot_protect(s, "verb", true, 102);
    ma_session_slot_protect(s, "verb", false, 103);
    ma_session_slot_evict(s, "s1", 104);
    ma_session_slot_restore(s, "verb", 1, 105, &res);
done:
    free(k);
    free(v);
    if (rc) {
        ma_session_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

int fz_chunk_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    const ma_params *p = ctx;
    if (chunk >= FZ_MAX_CHUNKS)
        return MA_EIO;
    size_t nk = (size_t)p->heads * (size_t)p->dim, nv = (size_t)p->heads * (size_t)p->value_dim;
    for (size_t i = 0; i < n; i++)
        fz_event(p, (uint64_t)chunk * (uint64_t)p->chunk + i, k + i * nk, v + i * nv);
    return 0;
}

int fz_key_load(void *ctx, uint64_t first, size_t n, float *k)
{
    const ma_params *p = ctx;
    float v[64];
    for (size_t i = 0; i < n; i++)
        fz_event(p, first + i, k + i * (size_t)(p->heads * p->dim), v);
    return 0;
}

int fz_payload_load(void *ctx, uint64_t event, char **payload)
{
    (void)ctx;
    *payload = NULL;
    if (event % 3)
        return 0;
    char buf[32];
    snprintf(buf, sizeof buf, "{\"i\":%llu}", (unsigned long long)event);
    *payload = strdup(buf);
    return *payload ? 0 : MA_ENOMEM;
}

static void put_le64(uint8_t *p, uint64_t h)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(h >> (8 * i));
}

/* A blob in core/blob.h's format: its checksum is ma_blob_checksum whatever the module. */
static bool fix_blob_format(uint8_t *buf, size_t len)
{
    if (len < 8 || memcmp(buf, "MABL", 4) != 0)
        return false;
    put_le64(buf + len - 8, ma_blob_checksum(buf, len - 8));
    return true;
}

void fz_fix_fnv(uint8_t *buf, size_t len)
{
    if (len < 8 || fix_blob_format(buf, len))
        return;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len - 8; i++) {
        h ^= buf[i];
        h *= 0x100000001b3ull;
    }
    put_le64(buf + len - 8, h);
}

/* The legacy slot table's checksum (the same function as ma_blob_checksum, kept here for the legacy
 * format's sake): FNV-1a's constants over 8-byte little-endian words with an xor-shift. */
void fz_fix_slots(uint8_t *buf, size_t len)
{
    if (len < 8 || fix_blob_format(buf, len))
        return;
    size_t n = len - 8, i = 0;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (int j = 0; j < 8; j++)
            w |= (uint64_t)buf[i + j] << (8 * j);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ buf[i]) * 0x100000001b3ULL;
    put_le64(buf + n, h);
}

uint32_t fz_u32(const uint8_t **p, const uint8_t *end)
{
    uint32_t v = 0;
    for (int i = 0; i < 4 && *p < end; i++, (*p)++)
        v |= (uint32_t)**p << (8 * i);
    return v;
}

uint16_t fz_u16(const uint8_t **p, const uint8_t *end)
{
    uint16_t v = 0;
    for (int i = 0; i < 2 && *p < end; i++, (*p)++)
        v = (uint16_t)(v | (uint16_t)(**p << (8 * i)));
    return v;
}

int fz_write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(buf, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}
