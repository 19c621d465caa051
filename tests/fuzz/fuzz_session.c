/*
 * tests/fuzz/fuzz_session.c — libFuzzer: whole-session restore (ma_session_restore: backbone, slot table
 * and archive meta blobs together, chunks and payloads from fz_common's sources), then the restored
 * session is queried on every route, its slots listed and its table serialised.
 * Input: byte 0 = config (bits 0-1) | fix the three checksum trailers (bit 7); u32 backbone length,
 * backbone; u32 slot table length, slot table; the rest = archive meta. Lengths past the end are cut.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/session.h"
#include "tests/fuzz/fuzz_common.h"

static uint8_t *take(const uint8_t **q, const uint8_t *end, size_t *n)
{
    size_t want = fz_u32(q, end);
    *n = want < (size_t)(end - *q) ? want : (size_t)(end - *q);
    uint8_t *b = malloc(*n ? *n : 1);
    if (b)
        memcpy(b, *q, *n);
    *q += *n;
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    ma_params p;
    fz_params(data[0], &p);
    const uint8_t *q = data + 1, *end = data + size;
    size_t nb, ns, nm;
    uint8_t *bb = take(&q, end, &nb), *sl = take(&q, end, &ns);
    nm = (size_t)(end - q);
    uint8_t *me = malloc(nm ? nm : 1);
    if (!bb || !sl || !me)
        goto out;
    memcpy(me, q, nm);
    if (data[0] & 0x80) {
        fz_fix_fnv(bb, nb);
        fz_fix_slots(sl, ns);
        fz_fix_fnv(me, nm);
    }
    ma_session_saved saved = { .backbone = bb, .backbone_len = nb, .slots = sl, .slots_len = ns,
                               .archive_meta = me, .archive_meta_len = nm,
                               .chunks = { .load = fz_chunk_load, .ctx = &p }, .cache_chunks = 2,
                               .payloads = { .load = fz_payload_load, .ctx = NULL } };
    ma_session *s = NULL;
    if (ma_session_restore(&p, &saved, &s) == 0) {
        float qv[64], vv[64], out[64];
        fz_event(&p, 3, qv, vv);
        for (int r = 0; r <= MA_ROUTE_WINDOW; r++) {
            ma_query mq = { .q = qv, .route = (ma_route)r };
            ma_answer a = { .v = out };
            if (ma_session_query(s, &mq, &a) == 0)
                ma_answer_clear(&a);
        }
        ma_slot_info *info = NULL;
        size_t ni = 0;
        if (ma_session_slot_list(s, &info, &ni) == 0) {
            for (size_t i = 0; i < ni; i++) {
                ma_query mq = { .slot = info[i].name };
                ma_answer a = { .v = out };
                if (ma_session_query(s, &mq, &a) == 0)
                    ma_answer_clear(&a);
            }
            free(info);
        }
        void *o = NULL;
        size_t ol = 0;
        if (ma_session_serialize_slots(s, &o, &ol) == 0)
            free(o);
        ma_session_destroy(s);
    }
out:
    free(bb);
    free(sl);
    free(me);
    return 0;
}
