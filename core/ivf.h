/*
 * core/ivf.h — the inverted-file index behind the archive's `index` selector (docs/ARCHIVE.md; FAISS's
 * IndexIVFScalarQuantizer, RetrievalAttention's retrieval step), without resident float keys.
 *
 * Vectors are events' keys, H heads of d floats. Clustering runs on the direction of each key: the heads
 * normalised one by one and concatenated (scaled by 1/sqrt(H)). Spherical k-means (dot products through
 * OpenBLAS sgemm) gives nlist unit centroids. Every event lives in the inverted list of its nearest
 * centroid, which keeps its id and compact codes of the key's residual to the centroid's direction: per
 * head a float alpha (the key's component along the centroid), a sign code (1 bit a dimension) with a
 * float factor, and a 4-bit code with a float scale. A search probes the lists whose mean key has the
 * largest inner product with the query, ranks their events by sign code (an estimate of sum_h q_h . k_h),
 * re-ranks the best by 4-bit code, and returns the best ids. The caller (core/archive.c) reads the
 * candidates' exact keys and values.
 *
 * Assignment in blocks: events are assigned to lists in aligned blocks of MA_IVF_BLOCK ids, each with one
 * sgemm of the same shape, so the assignment of an event does not depend on how events were batched and a
 * restored index (the same centroids, the keys streamed again) is identical to the original. Events of
 * the last, incomplete block are pending: their raw keys stay in a small buffer (< MA_IVF_BLOCK events)
 * and a search scores them exactly.
 *
 * Growth: ma_ivf_want_rebuild says when the index has grown to twice its size at the last build (first
 * build at MA_IVF_MIN_BUILD events); ma_ivf_rebuild then streams every key through a loader twice (a
 * training sample, then the reassignment), so no copy of all keys is ever held: nlist = round(2·sqrt(n)),
 * trained on at most MA_IVF_TRAIN_PER_LIST·nlist events, MA_IVF_ITERS iterations.
 *
 * Determinism: k-means seeds from a fixed generator; the serialised state is only what cannot be
 * recomputed (centroids and build counters). Same bits assume the same OpenBLAS build and thread count.
 *
 * Threads: searches may run in parallel with each other; add/rebuild must run alone.
 */
#ifndef MA_IVF_H
#define MA_IVF_H

#include <stddef.h>
#include <stdint.h>

#define MA_IVF_MIN_BUILD       1024
#define MA_IVF_LISTS_PER_SQRT  2      /* nlist = round(2·sqrt(n)) */
#define MA_IVF_TRAIN_PER_LIST  32
#ifndef MA_IVF_RERANK
#define MA_IVF_RERANK          8      /* sign-code candidates re-ranked by 4-bit codes, per id wanted */
#endif
#define MA_IVF_ITERS           8
#define MA_IVF_BLOCK           1024
#define MA_IVF_MAX_D           1024   /* largest d (MA_MAX_DIM) */

typedef struct ma_ivf ma_ivf;

/* Reads the keys of events [first, first+n) (n·H·d floats into k); 0 or a negative MA_E* code. */
typedef int (*ma_ivf_loader)(void *ctx, uint64_t first, size_t n, float *k);

/* An empty index for H heads of dimension d. 0, MA_EINVAL, MA_ENOMEM. */
int ma_ivf_create(int H, int d, ma_ivf **out);
void ma_ivf_destroy(ma_ivf *x);

/* Adds n keys (n·H·d floats); they get ids count..count+n-1. Never rebuilds. All-or-nothing: 0, or
 * MA_ENOMEM with the index unchanged (also when ids would pass UINT32_MAX). */
int ma_ivf_add(ma_ivf *x, size_t n, const float *k);

/* True when the index should be rebuilt (it has doubled since the last build, first at MA_IVF_MIN_BUILD). */
int ma_ivf_want_rebuild(const ma_ivf *x);

/* Rebuilds now: k-means on a sample, every event reassigned. Keys come from load in runs of at most
 * MA_IVF_BLOCK events. 0, MA_ENOMEM or load's error (the index is unchanged on any error). */
int ma_ivf_rebuild(ma_ivf *x, ma_ivf_loader load, void *ctx);

/* Probes the nprobe non-empty lists whose mean keys have the largest inner product with q (H·d), scores
 * their events by sign code, the best MA_IVF_RERANK·max_ids again by 4-bit code (estimates of
 * sum_h q_h . k_h), the pending events exactly, and writes the ids of the best max_ids (ties: the earlier
 * position in probe order), in ascending id order, into ids (caller's buffer of max_ids); *n_ids gets
 * their number and *scored (if not NULL) the number of events scored. 0 or MA_ENOMEM. */
int ma_ivf_search(const ma_ivf *x, const float *q, int nprobe, size_t max_ids, uint64_t *ids, size_t *n_ids,
                  uint64_t *scored);

/* Tests and benches: on != 0 makes every index of the process score with the portable kernels instead of
 * the AVX2 ones (they compute the same integers: answers do not change). Not thread-safe against searches. */
void ma_ivf_set_generic_kernels(int on);

/* Benches: returns (and resets) the CPU seconds all searches of the process spent selecting the probes
 * (query tables, centroid scores, top lists), scanning sign codes, and re-ranking (4-bit codes, sort), the
 * searches and the events scanned since the last call, and switches the accounting on or off. Any
 * argument may be NULL. Not thread-safe; for single-threaded benches only. */
void ma_ivf_profile(int on, double t[3], uint64_t *searches, uint64_t *events);

/* Tests: every listed (not pending) event's id, list and the two estimates of q . k a search computes for
 * it (sign codes; 4-bit codes), list by list in list order; *n gets their number (buffers of count
 * events). 0 or MA_ENOMEM. */
int ma_ivf_debug_estimates(const ma_ivf *x, const float *q, uint64_t *ids, uint32_t *list, float *est1,
                           float *est4, size_t *n);

/* Tests: centroid c (H·d floats, a unit vector), or NULL if c >= nlist. */
const float *ma_ivf_debug_centroid(const ma_ivf *x, uint32_t c);

/* ma_ivf_search for nq queries Q (nq × H·d): ids of query k at ids[k·max_ids], its count at n_ids[k], its
 * scored at scored[k] (scored may be NULL). The centroid scores of the batch are one sgemm and the lists
 * are scanned list by list, each once for all the queries probing it. Answers are those of nq calls of
 * ma_ivf_search except where two centroid scores of a query tie within the rounding of sgemm against
 * sgemv (the probes could differ). 0 or MA_ENOMEM. */
int ma_ivf_search_batch(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, uint64_t *ids,
                        size_t *n_ids, uint64_t *scored);

/* Frees the lists' spare capacity (after a bulk add, e.g. a restore). Never fails. */
void ma_ivf_shrink(ma_ivf *x);

uint64_t ma_ivf_count(const ma_ivf *x);
uint32_t ma_ivf_nlist(const ma_ivf *x);
/* Builds so far: changes exactly when ma_ivf_serialize's output changes. */
uint32_t ma_ivf_builds(const ma_ivf *x);
size_t ma_ivf_bytes(const ma_ivf *x);

/* The part of ma_ivf_bytes that does not grow with the events: the handle and the pending keys of the
 * incomplete last block, which an append of up to MA_IVF_BLOCK events grows to at most 2·MA_IVF_BLOCK
 * keys (a larger batch leaves room for the whole batch until the next rebuild). Centroids, list means
 * and the lists grow with the events (nlist = 2·sqrt(n)) and are not in it. */
size_t ma_ivf_footprint(int H, int d);

/* The state that cannot be recomputed (centroids, build counters; no per-event data) as a core/blob.h
 * blob in a malloc'd buffer (docs/ARCHIVE.md). ma_ivf_restore also reads the legacy format. */
int ma_ivf_serialize(const ma_ivf *x, void **buf, size_t *len);

/* An index with no events and the serialised centroids and counters; adding the original's keys in id
 * order (any batching) gives an index identical to the original. MA_ECORRUPT (foreign/truncated buffer,
 * other H/d), MA_ENOMEM. */
int ma_ivf_restore(int H, int d, const void *buf, size_t len, ma_ivf **out);

#endif
