/*
 * core/hash.h — the one FNV-1a 64 implementation of the project.
 *
 * Used for hash tables (slot names, session ids, the metrics answer cache), for feature hashing
 * (core/featurize.c) and to check the legacy blob formats (core/blob.h). Not cryptographic.
 * Threads: pure functions, safe from any thread.
 */
#ifndef MA_HASH_H
#define MA_HASH_H

#include <stddef.h>
#include <stdint.h>

#define MA_FNV_OFFSET UINT64_C(0xcbf29ce484222325)
#define MA_FNV_PRIME  UINT64_C(0x100000001b3)

/* One FNV-1a step: the hash h extended by byte c (start from MA_FNV_OFFSET). */
static inline uint64_t ma_fnv1a64_byte(uint64_t h, unsigned char c)
{
    return (h ^ c) * MA_FNV_PRIME;
}

/* FNV-1a 64-bit hash of n bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3). */
uint64_t ma_fnv1a64(const void *data, size_t n);

#endif
