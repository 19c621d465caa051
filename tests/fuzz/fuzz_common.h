/*
 * tests/fuzz/fuzz_common.h — what the libFuzzer harnesses of tests/fuzz/ share: a few small session
 * configurations, deterministic sessions built from them (the seed corpora's source), a chunk and a
 * payload source that regenerate those sessions' events (as the store would serve them), and the
 * fix-up of the checksum trailers of the core's blobs.
 *
 * Why fix checksums: every stored blob ends with a 64-bit checksum of the bytes before it, so nearly
 * every mutation is refused at the first check and the decoders behind it are never reached. A harness
 * therefore fixes the trailer of half of its inputs (chosen by a bit of the input) before decoding: that
 * half stands for a store file written by someone who knows the format (or corrupted before the
 * checksum was computed), the other half exercises the checksum refusal itself.
 *
 * Input layouts (little-endian) are stated in each harness's own comment.
 */
#ifndef FZ_COMMON_H
#define FZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"
#include "core/session.h"

#define FZ_VARIANTS 4
#define FZ_MAX_CHUNKS 512    /* the chunk source serves at most this many chunks (a store holding less) */

/* Config number variant % FZ_VARIANTS: 0 VLA (H 2, d 4, index), 1 DeltaNet (H 1, d 8, d_v 3, chunks),
 * 2 linear (H 1, d 4, index), 3 no backbone (H 2, d 2, chunks). All small: chunk 4, slots 4. */
void fz_params(unsigned variant, ma_params *p);

/* Event i's key and value for config p (deterministic). */
void fz_event(const ma_params *p, uint64_t i, float *k, float *v);

/* A session of config `variant` with n events (some with payloads and slot writes) and slot verbs
 * (overwrite, protect, evict): every state the blobs can describe. 0 or an MA_E* code. */
int fz_session(unsigned variant, size_t n, ma_session **out);

/* ma_chunk_source.load for ctx = a const ma_params *: regenerates chunk `chunk` with fz_event; chunks at
 * FZ_MAX_CHUNKS and beyond are "not in the store" (MA_EIO). */
int fz_chunk_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n);

/* ma_ivf_loader for ctx = a const ma_params *: the keys of events [first, first + n) by fz_event. */
int fz_key_load(void *ctx, uint64_t first, size_t n, float *k);

/* ma_payload_source.load: every third event has the payload {"i":N}. */
int fz_payload_load(void *ctx, uint64_t event, char **payload);

/* Rewrites the last 8 bytes of buf as the checksum of the bytes before them: ma_blob_checksum for a
 * blob of core/blob.h's format ("MABL"), else the legacy format's: FNV-1a byte by byte (backbone,
 * archive meta, ivf: fz_fix_fnv) or the slot table's word-wise variant (fz_fix_slots). No-op when
 * len < 8. */
void fz_fix_fnv(uint8_t *buf, size_t len);
void fz_fix_slots(uint8_t *buf, size_t len);

/* Little-endian readers that advance *p and stop at end (missing bytes read as 0). */
uint32_t fz_u32(const uint8_t **p, const uint8_t *end);
uint16_t fz_u16(const uint8_t **p, const uint8_t *end);

/* Writes a file (seed generation); 0 or -1. */
int fz_write_file(const char *path, const void *buf, size_t len);

#endif
