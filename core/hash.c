/*
 * core/hash.c — FNV-1a 64 and the stored rows' checksum built on it (core/hash.h).
 */
#include "core/hash.h"

#include <string.h>

static inline uint64_t word_step(uint64_t h, uint64_t w)
{
    h = (h ^ w) * MA_FNV_PRIME;
    return h ^ (h >> 29);
}

static inline uint64_t load_le64(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
#else
    uint64_t w = 0;
    for (int j = 0; j < 8; j++)
        w |= (uint64_t)p[j] << (8 * j);
    return w;
#endif
}

uint64_t ma_checksum64(uint64_t seed, const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h[8];
    for (int j = 0; j < 8; j++)
        h[j] = seed ^ ((uint64_t)j * MA_FNV_PRIME);
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 8; j++)
            h[j] = word_step(h[j], load_le64(p + i + 8 * (size_t)j));
    for (; i + 8 <= n; i += 8)
        h[0] = word_step(h[0], load_le64(p + i));
    for (; i < n; i++)
        h[0] = ma_fnv1a64_byte(h[0], p[i]);
    uint64_t r = h[0];
    for (int j = 1; j < 8; j++)
        r = word_step(r, h[j]);
    return r;
}

uint64_t ma_fnv1a64(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = MA_FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = ma_fnv1a64_byte(h, p[i]);
    return h;
}
