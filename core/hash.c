/*
 * core/hash.c — FNV-1a 64 (core/hash.h).
 */
#include "core/hash.h"

uint64_t ma_fnv1a64(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = MA_FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = ma_fnv1a64_byte(h, p[i]);
    return h;
}
