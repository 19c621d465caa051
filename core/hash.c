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
    uint64_t h0 = seed, h1 = seed ^ MA_FNV_PRIME, h2 = seed ^ (2 * MA_FNV_PRIME), h3 = seed ^ (3 * MA_FNV_PRIME);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        h0 = word_step(h0, load_le64(p + i));
        h1 = word_step(h1, load_le64(p + i + 8));
        h2 = word_step(h2, load_le64(p + i + 16));
        h3 = word_step(h3, load_le64(p + i + 24));
    }
    for (; i + 8 <= n; i += 8)
        h0 = word_step(h0, load_le64(p + i));
    for (; i < n; i++)
        h0 = ma_fnv1a64_byte(h0, p[i]);
    return word_step(word_step(word_step(h0, h1), h2), h3);
}

uint64_t ma_fnv1a64(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = MA_FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = ma_fnv1a64_byte(h, p[i]);
    return h;
}
