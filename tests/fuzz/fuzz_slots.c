/*
 * tests/fuzz/fuzz_slots.c — libFuzzer: ma_slots_restore_table on untrusted bytes (a stored slot table).
 * Input: byte 0 = config (bits 0-1, fz_params) | fix the checksum trailer (bit 7); the rest = the blob.
 * A restored table is used: listed, every resident slot read with its history, matched, serialised.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/slots.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    ma_params p;
    fz_params(data[0], &p);
    size_t n = size - 1;
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return 0;
    memcpy(b, data + 1, n);
    if (data[0] & 0x80)
        fz_fix_slots(b, n);
    ma_slots *s = NULL;
    if (ma_slots_restore_table(&(ma_slots_shape){p.heads, p.dim, p.value_dim, p.slots}, b, n, &s) == 0) {
        ma_slot_info *info = NULL;
        size_t ni = 0;
        if (ma_slots_list(s, &info, &ni) == 0) {
            for (size_t i = 0; i < ni; i++) {
                ma_slot_value sv;
                if (ma_slots_read(s, info[i].name, 0, &sv) == 0)
                    ma_slot_value_clear(&sv);
                ma_version_info *vi = NULL;
                size_t nv = 0;
                if (ma_slots_history(s, info[i].name, &vi, &nv) == 0) {
                    for (size_t j = 0; j < nv; j++)
                        if (!vi[j].tombstone && ma_slots_read(s, info[i].name, vi[j].version, &sv) == 0)
                            ma_slot_value_clear(&sv);
                    free(vi);
                }
            }
            free(info);
        }
        float q[64] = { 0.5f, -0.25f, 1.0f, 0.125f };
        ma_slot_view best;
        double score;
        ma_slots_match(s, q, &best, &score);
        void *o = NULL;
        size_t ol = 0;
        if (ma_slots_serialize(s, &o, &ol) == 0)
            free(o);
        ma_slots_destroy(s);
    }
    free(b);
    return 0;
}
