/*
 * tests/fuzz/fuzz_ivf.c — libFuzzer: ma_ivf_restore on untrusted bytes (the index part of an archive's
 * meta blob). Input: byte 0 = config (bits 0-1: H and d of fz_params) | fix the checksum trailer (bit 7);
 * the rest = the blob. A restored index gets keys added and is searched.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/ivf.h"
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
    ma_ivf *x = NULL;
    if (ma_ivf_restore(p.heads, p.dim, b, n, &x) == 0) {
        enum { N = 12 };
        float k[N * 64], v[64];
        for (int i = 0; i < N; i++)
            fz_event(&p, (uint64_t)i, k + (size_t)i * (size_t)(p.heads * p.dim), v);
        uint64_t *ids = malloc(ma_ivf_ids_cap(x, N) * sizeof *ids);   /* per-head: the heads' union */
        if (ids && ma_ivf_add(x, N, k) == 0) {
            uint64_t scored = 0;
            size_t nid = 0;
            ma_ivf_search(x, k, 2, N, ids, &nid, &scored);
        }
        free(ids);
        void *o = NULL;
        size_t ol = 0;
        if (ma_ivf_serialize(x, &o, &ol) == 0)
            free(o);
        ma_ivf_destroy(x);
    }
    free(b);
    return 0;
}
