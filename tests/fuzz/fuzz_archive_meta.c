/*
 * tests/fuzz/fuzz_archive_meta.c — libFuzzer: ma_archive_restore_meta on untrusted bytes (a stored
 * archive meta blob), with a chunk source that serves the events fz_event makes (at most FZ_MAX_CHUNKS
 * chunks, as a store holding less than the blob claims). Input: byte 0 = config (bits 0-1) | fix the
 * checksum trailer (bit 7); bytes 1-2 = the archive length in events (u16, at most 2048); the rest = the blob.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/archive.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    ma_params p;
    fz_params(data[0], &p);
    const uint8_t *q = data + 1, *end = data + size;
    uint64_t length = fz_u16(&q, end) % 2049;
    size_t n = (size_t)(end - q);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return 0;
    memcpy(b, q, n);
    if (data[0] & 0x80)
        fz_fix_fnv(b, n);
    ma_chunk_source src = { .load = fz_chunk_load, .ctx = &p };
    ma_archive *a = NULL;
    if (ma_archive_restore_meta(&p, &(ma_archive_saved){b, n, length, src, 2, NULL}, &a) == 0) {
        void *o = NULL;
        size_t ol = 0;
        if (ma_archive_serialize_meta(a, &o, &ol) == 0)
            free(o);
        ma_archive_destroy(a);
    }
    free(b);
    return 0;
}
