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

/* The stored rows' checksum (docs/STORE.md, "Row checksums"): FNV-1a 64's prime applied to 8-byte
 * little-endian words in eight interleaved lanes (word j of every 64 bytes into lane j), each step
 * h = (h ^ w) · prime; h ^= h >> 29 (the blob format's word step, core/blob.h), lane j starting from
 * seed ^ (j · prime); the last n mod 64 bytes go into lane 0 (whole words, then bytes with the byte
 * step), and lanes 1..7 are folded into lane 0 with the word step. Eight independent multiply chains hide
 * the multiply's latency: 3.4-4.4 us per 32 KiB block on the test VM against 6.4 with four lanes and
 * ~4x that with one (the store checks a block on every page-in). Chains: ma_checksum64(ma_checksum64(s, a, n), b, m) hashes
 * a then b. Detects corruption, not forgery. */
uint64_t ma_checksum64(uint64_t seed, const void *data, size_t n);

#endif
