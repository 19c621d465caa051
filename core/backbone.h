/*
 * core/backbone.h — the fixed-state memory every event updates: VLA, linear attention, DeltaNet.
 *
 * One opaque handle per session, H independent heads of key dim d and value dim d_v (ma_params).
 * Algorithms and constants: docs/BACKBONE.md.
 *
 * Layout of every vector batch: event-major, then head-major: k[i*H*d + h*d + j] is component j of head h
 * of event i; v and outputs likewise with d_v. float32 in and out; accumulation where it matters in double.
 *
 * Threads: a handle is not locked. Reads (ma_backbone_read, _norms, _bytes, _serialize) may run in
 * parallel with each other; an update must not run alongside anything else on the same handle.
 * Inputs are trusted to be finite and of the right length (the server validates them); core never aborts.
 */
#ifndef MA_BACKBONE_H
#define MA_BACKBONE_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"

typedef struct ma_backbone ma_backbone;

typedef enum {
    MA_READ_DEFAULT = 0,  /* what the `state` route uses: normalised for vla and linear with elu1 features, raw otherwise */
    MA_READ_RAW,          /* o = S · normalize(phi(q))   (vla, delta); linear: o = S phi(q) */
    MA_READ_NORMALIZED,   /* o = S phi(q) / max(z·phi(q), eps)  (vla, linear) */
} ma_read_mode;

/* Creates the backbone of p->backbone (MA_BACKBONE_NONE gives a valid handle that stores nothing and reads
 * zeros). Returns 0 and *out, MA_EINVAL for an invalid config, MA_ENOMEM. */
int ma_backbone_create(const ma_params *p, ma_backbone **out);
void ma_backbone_destroy(ma_backbone *b);

/* Applies n events in order. k: n·H·d floats, v: n·H·d_v floats. Returns 0 or MA_ENOMEM (state unchanged). */
int ma_backbone_update(ma_backbone *b, size_t n, const float *k, const float *v);

/* Reads n queries (q: n·H·d) into out (n·H·d_v). Returns 0 or MA_EINVAL for a mode the backbone lacks. */
int ma_backbone_read(const ma_backbone *b, size_t n, const float *q, float *out, ma_read_mode mode);

/* Per-head Frobenius norms of the state S and of the penalty matrix A (0 where a backbone has none);
 * each array holds H doubles. */
void ma_backbone_norms(const ma_backbone *b, double *state_norm, double *penalty_norm);

/* Number of events applied so far. */
uint64_t ma_backbone_steps(const ma_backbone *b);

/* Bytes of memory held by the handle. */
size_t ma_backbone_bytes(const ma_backbone *b);

/* ma_backbone_bytes of a backbone created for p, without creating it (the state is fixed-size: it never
 * grows with events). p must be valid (ma_params_validate). */
size_t ma_backbone_footprint(const ma_params *p);

/* Serialises the whole state into a malloc'd buffer (*buf, *len; caller frees): a core/blob.h blob
 * (little-endian, sectioned, checksummed; docs/BACKBONE.md §4). Returns 0 or MA_ENOMEM. */
int ma_backbone_serialize(const ma_backbone *b, void **buf, size_t *len);

/* Restores a backbone for config p from a buffer made by ma_backbone_serialize (or the legacy v1 format
 * of docs/BACKBONE.md). A truncated, foreign,
 * corrupted or mismatching (other kind or dims) buffer gives MA_ECORRUPT, never a crash. */
int ma_backbone_restore(const ma_params *p, const void *buf, size_t len, ma_backbone **out);

#endif
