/*
 * tests/fuzz/fuzz_backbone.c — libFuzzer: ma_backbone_restore on untrusted bytes (a stored backbone blob).
 * Input: byte 0 = config (bits 0-1, fz_params) | fix the checksum trailer (bit 7); the rest = the blob.
 * A restored backbone is serialised again and its norms read (state the restore accepted is used).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/backbone.h"
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
        fz_fix_fnv(b, n);
    ma_backbone *bb = NULL;
    if (ma_backbone_restore(&p, b, n, &bb) == 0) {
        double sn[64], pn[64];
        ma_backbone_norms(bb, sn, pn);
        void *o = NULL;
        size_t ol = 0;
        if (ma_backbone_serialize(bb, &o, &ol) == 0)
            free(o);
        ma_backbone_destroy(bb);
    }
    free(b);
    return 0;
}
