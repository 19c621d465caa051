/*
 * core/ivf.h — the inverted-file index behind the archive's `index` selector (DESIGN.md 3.3; FAISS's
 * IndexIVFFlat, RetrievalAttention's retrieval step).
 *
 * Vectors are events' keys, H heads of d floats. Clustering runs on the direction of each key: the heads
 * normalised one by one and concatenated (scaled by 1/sqrt(H)), so the similarity of a query and a centroid
 * is the mean over heads of a cosine. Spherical k-means (dot products through OpenBLAS sgemm) gives nlist
 * unit centroids; every event lives in the inverted list of its nearest centroid, which holds a copy of
 * its raw key so that probed events are scored exactly (sum over heads of q_h . k_h, the attention
 * logit up to 1/sqrt(d)) without touching the archive's chunks.
 *
 * Growth: events are assigned online to the current centroids. The index is (re)built when it has grown
 * to twice its size at the last build (first build at MA_IVF_MIN_BUILD events): nlist = round(sqrt(n)),
 * trained on at most MA_IVF_TRAIN_PER_LIST·nlist events, MA_IVF_ITERS iterations, then every event is
 * reassigned. Each event is rebuilt over O(1) times (amortised), and every list stays in event order.
 * Below the first build there is one list and a search scores every event.
 *
 * Determinism: k-means seeds from a fixed generator; the serialised state (centroids and every event's
 * list) restores lists identical in content and order to the original.
 *
 * Threads: searches may run in parallel with each other; add/rebuild must run alone.
 */
#ifndef MA_IVF_H
#define MA_IVF_H

#include <stddef.h>
#include <stdint.h>

#define MA_IVF_MIN_BUILD       1024
#define MA_IVF_TRAIN_PER_LIST  64
#define MA_IVF_ITERS           8

typedef struct ma_ivf ma_ivf;

/* An empty index for H heads of dimension d. 0, MA_EINVAL, MA_ENOMEM. */
int ma_ivf_create(int H, int d, ma_ivf **out);
void ma_ivf_destroy(ma_ivf *x);

/* Adds n keys (n·H·d floats); they get ids count..count+n-1. All-or-nothing: 0 or MA_ENOMEM with the index
 * unchanged. A rebuild the add triggers that fails for memory is skipped (the index stays valid with its
 * old centroids) and retried by the next add. */
int ma_ivf_add(ma_ivf *x, size_t n, const float *k);

/* Rebuilds now (k-means on the current events, all reassigned). 0 or MA_ENOMEM (index unchanged). */
int ma_ivf_rebuild(ma_ivf *x);

/* Probes the nprobe non-empty lists whose centroids are nearest to q (H·d), scores each of their events
 * exactly (sum over heads of q_h . k_h) and writes the ids of the best max_ids (ties: the earlier in
 * probe order), in ascending id order, into ids (caller's buffer of max_ids); *n_ids gets their number
 * and *scored (if not NULL) the number of events scored. 0 or MA_ENOMEM. */
int ma_ivf_search(const ma_ivf *x, const float *q, int nprobe, size_t max_ids, uint64_t *ids, size_t *n_ids,
                  uint64_t *scored);

uint64_t ma_ivf_count(const ma_ivf *x);
uint32_t ma_ivf_nlist(const ma_ivf *x);
size_t ma_ivf_bytes(const ma_ivf *x);

/* The state without the key copies: centroids, build counters and every event's list number, in a
 * versioned, checksummed malloc'd buffer. */
int ma_ivf_serialize(const ma_ivf *x, void **buf, size_t *len);

/* Rebuilds an index from ma_ivf_serialize's buffer; the keys of its `count` events are read back in id
 * order through load(ctx, first, n, k) (n·H·d floats into k), at most `batch` events per call. The lists
 * come back identical in content and order. MA_ECORRUPT (foreign/truncated/inconsistent buffer, or other
 * H/d), MA_ENOMEM, or load's error. */
int ma_ivf_restore(int H, int d, const void *buf, size_t len,
                   int (*load)(void *ctx, uint64_t first, size_t n, float *k), void *ctx, size_t batch,
                   ma_ivf **out);

#endif
