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
 * candidates' exact keys and values. With MA_IVF_ADAPTIVE (ma_ivf_search_mass; one head) the probes are a
 * budget: the lists are scanned best first and the scan stops once the rest is unlikely to hold anything
 * better than the best found (docs/ARCHIVE.md, "Adaptive probing").
 *
 * Assignment in blocks: events are assigned to lists in aligned blocks of MA_IVF_BLOCK ids, each with one
 * sgemm of the same shape, so the assignment of an event does not depend on how events were batched and a
 * restored index (the same centroids, the keys streamed again) is identical to the original. Events of
 * the last, incomplete block are pending: their raw keys stay in a small buffer (< MA_IVF_BLOCK events)
 * and a search scores them exactly.
 *
 * Growth: builds happen at fixed build points, MA_IVF_MIN_BUILD·2^j events (ma_ivf_build_due): a build
 * at point P trains on events [0, P) (nlist = round(2·sqrt(P)), at most MA_IVF_TRAIN_PER_LIST·nlist and
 * MA_IVF_TRAIN_MAX training events, MA_IVF_ITERS iterations, a generator seeded from P), then every complete block is
 * assigned and coded with the new centroids. A build is three steps, so that a caller can run the
 * expensive ones elsewhere (registry/maint.c runs them on a background thread while the old index keeps
 * answering): ma_ivf_train (k-means on a sample streamed through a loader; needs no index),
 * ma_ivf_build_encode (the rows of complete blocks: each event's list and record), ma_ivf_adopt (the
 * index takes the new centroids and lists: stored rows read through a row source, the rest encoded from
 * keys). ma_ivf_rebuild does the three in place (tests, benches, the archive without a managing caller).
 *
 * Records and rows (docs/ARCHIVE.md, "Persistence"): what a list keeps of an event is its record (per
 * head alpha, sign-code factor, 4-bit scale, sign bytes, 4-bit code), a pure function of the key and its
 * list's centroid; a row is the lists (u32 LE each) and the records of one aligned block of MA_IVF_BLOCK
 * events. A list's mean key (what probes rank by) is the mean of the keys its records stand for, so an
 * index loaded from rows (ma_ivf_restore_lists) is the index that appended the keys, bit for bit. With
 * ma_ivf_keep_rows on, the rows of blocks the index lists are kept until the caller has persisted them.
 *
 * Many heads (H > 1, issue 15; docs/ARCHIVE.md, "Many heads"): one index per head. Head h has its own
 * k-means (on head h's key directions), lists and codes, built at the same build points with the same
 * numbers; a search asks each head's index with that head's query (the batch's head-h queries: one sgemm
 * of centroid scores, one scan) and answers the union of the heads' ids, each once (at most H·max_ids:
 * ma_ivf_ids_cap). A row then holds the heads' rows one after the other: lists H·MA_IVF_BLOCK u32
 * (ma_ivf_row_lists_bytes), codes the same bytes as before (ma_ivf_row_codes_bytes). An index of H > 1 heads
 * stored before issue 15 (one index over the concatenated directions: "shared") restores as it was and
 * answers as before until its next build, which makes it per-head (ma_ivf_adopt). H = 1 is unchanged.
 *
 * Determinism: k-means seeds from the build point; the serialised state is only the centroids and build
 * counters (per-event data is in the rows). Same bits assume the same OpenBLAS build and thread count.
 *
 * Threads: searches may run in parallel with each other; add, adopt, restore must run alone. A build
 * object (train, encode) is independent of any index: one thread at a time.
 */
#ifndef MA_IVF_H
#define MA_IVF_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MA_IVF_MIN_BUILD       1024
#define MA_IVF_LISTS_PER_SQRT  2      /* nlist = round(2·sqrt(n)) */
#define MA_IVF_TRAIN_PER_LIST  32
/* A build's scratch does not grow with the session (issue 9, item 3; docs/ARCHIVE.md, "Memory during a
 * build"): the training sample is at most MA_IVF_TRAIN_MAX events (the sample of a build at 4,194,304
 * events, so every build up to there trains 32 points a list, as before the cap: a cap at the 1M build's
 * sample, 22.6 points a list at 2M, cost clustered recall at cosine 0.9 0.996 -> 0.985; later builds train
 * fewer points a list), and one sgemm of centroid scores at most
 * MA_IVF_SCORE_FLOATS floats (its rows split into sub-blocks; the same split wherever events are assigned,
 * so assignments do not depend on the caller). */
#define MA_IVF_TRAIN_MAX       131072
#define MA_IVF_SCORE_FLOATS    ((size_t)1 << 18)
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
/* (Per-head: a failure in a head after the first leaves the heads apart: the index is then broken,
 * MA_EIO from then on, and the caller discards it. Heads fail only for want of memory.) */

/* True when a build is due: the largest build point MA_IVF_MIN_BUILD·2^j not above the count is at least
 * twice the last build's point. Then *point gets it (if not NULL) and *build_no the build's number,
 * max(builds + 1, j + 1) (if not NULL). */
int ma_ivf_build_due(const ma_ivf *x, uint64_t *point, uint32_t *build_no);
int ma_ivf_want_rebuild(const ma_ivf *x);   /* ma_ivf_build_due(x, NULL, NULL) */

/* Builds now, in place: at the point due (else, an explicit build, at the current count), every complete
 * block reassigned. Keys come from load in runs of at most MA_IVF_BLOCK events. 0, MA_ENOMEM or load's
 * error (the index is unchanged on any error). Holds the old and the new lists at once. */
int ma_ivf_rebuild(ma_ivf *x, ma_ivf_loader load, void *ctx);

/* ---- builds in steps (registry/maint.c) ---- */

typedef struct ma_ivf_build ma_ivf_build;

/* The size of a build at `point` events: its lists (round(2·sqrt(point)), at least 1) and its training
 * sample (MA_IVF_TRAIN_PER_LIST a list, at most point and at most MA_IVF_TRAIN_MAX events). */
void ma_ivf_train_size(uint64_t point, uint32_t *nlist, size_t *sample);

/* The most a build at `point` events holds besides the indexes, for H heads of dimension d (what
 * ma_ivf_train, ma_ivf_build_encode and ma_ivf_adopt allocate for their duration): the training sample
 * (bounded by MA_IVF_TRAIN_MAX events), k-means' double sums and assignments, one block of scores (bounded
 * by MA_IVF_SCORE_FLOATS), a block of keys and directions, the new centroids. Only the centroid-sized
 * parts (nlist·H·d floats and doubles: 2.2 MiB at 2M events, H·d = 64) grow with the point, as √point. */
size_t ma_ivf_build_scratch_bytes(int H, int d, uint64_t point);

/* Trains the centroids of build number build_no at `point` events: k-means on a sample of events
 * [0, point) read through load (runs of at most MA_IVF_BLOCK). Needs no index. stop (may be NULL) is
 * looked at between k-means iterations: non-zero gives up with MA_EBUSY. 0, MA_EINVAL, MA_ENOMEM,
 * MA_EBUSY or load's error. */
int ma_ivf_train(int H, int d, uint64_t point, uint32_t build_no, ma_ivf_loader load, void *ctx,
                 const atomic_int *stop, ma_ivf_build **out);
void ma_ivf_build_free(ma_ivf_build *b);
uint64_t ma_ivf_build_point(const ma_ivf_build *b);
uint32_t ma_ivf_build_number(const ma_ivf_build *b);
uint32_t ma_ivf_build_nlist(const ma_ivf_build *b);

/* Bytes of a row's records (MA_IVF_BLOCK events) at H heads of d; a row's lists take MA_IVF_BLOCK·4
 * (shared layout) or H·MA_IVF_BLOCK·4 (per-head): ma_ivf_row_lists_bytes, ma_ivf_build_lists_bytes. */
size_t ma_ivf_row_codes_bytes(int H, int d);
/* The lists bytes of the rows of x's current layout / of build b: MA_IVF_BLOCK·4, times H when per-head. */
size_t ma_ivf_row_lists_bytes(const ma_ivf *x);
size_t ma_ivf_build_lists_bytes(const ma_ivf_build *b);

/* The rows of n_blocks aligned blocks of keys (n_blocks·MA_IVF_BLOCK·H·d floats) against the build's
 * centroids: lists (n_blocks·MA_IVF_BLOCK u32 LE) and codes (n_blocks·ma_ivf_row_codes_bytes). Exactly
 * what an index with these centroids lists for the same keys. 0 or MA_ENOMEM. */
int ma_ivf_build_encode(ma_ivf_build *b, const float *keys, size_t n_blocks, void *lists, void *codes);

/* A source of stored rows: scan calls each(arg, block, lists, lists_len, codes, codes_len) for the stored
 * rows of build `build` with block in [first, first+n), ascending (codes NULL and codes_len 0 unless
 * with_codes), stopping at the first non-zero return of each and returning it; 0 when all were visited,
 * or a negative MA_E* code of its own. Missing blocks are simply not visited. */
typedef int (*ma_ivf_row_fn)(void *arg, uint64_t block, const void *lists, size_t lists_len, const void *codes,
                             size_t codes_len);
typedef struct {
    int (*scan)(void *ctx, uint32_t build, uint64_t first, uint64_t n, int with_codes, ma_ivf_row_fn each,
                void *arg);
    void *ctx;
} ma_ivf_rows;

/* Reads the stored rows of b's build for blocks [0, blocks) once (with codes, through rows; stops at the
 * first missing block) and keeps what they give each list: its count and the sums its records add to the
 * list's mean key (nlist counts and nlist·(H·d + H) doubles: 1.5 MiB at 2M events, H·d = 64). A later
 * ma_ivf_adopt of b then skips the counting pass over those rows and their sums (same bits), so an
 * in-place adopt under the session's gate does less (registry/registry.c calls this before it takes the
 * gate). The rows must not change in between (staged rows of one build do not; an adopt that finds them
 * changed fails with MA_ECORRUPT). Per-head builds (H > 1) are left as they are (0). 0, MA_EINVAL,
 * MA_ENOMEM, MA_ECORRUPT or the scan's error (b then unprepared). */
int ma_ivf_build_prepare(ma_ivf_build *b, const ma_ivf_rows *rows, uint64_t blocks);

/* The index takes build b: its centroids, and lists over every complete block of its events — the stored
 * rows of b's build number contiguous from block 0 (rows may be NULL), the remaining blocks encoded from
 * keys read through load. b's number must exceed the index's builds and its point must not exceed the
 * count (else MA_EINVAL). With keep_rows the encoded rows become the kept rows. low_memory: the old lists
 * are freed before the new ones are allocated; if it then fails the index is broken (searches and adds
 * fail with MA_EIO; discard it). Otherwise any failure leaves the index unchanged. 0, MA_EINVAL,
 * MA_ENOMEM, MA_ECORRUPT (a stored row is damaged, or the rows changed during the call), load's or
 * scan's error. b is left without centroids on success (free it). Per-head builds (ma_ivf_train with
 * H > 1): each head adopts its own; a shared index becomes per-head (its lists dropped first); a failure
 * after the first head changed leaves the index broken, whatever low_memory. */
int ma_ivf_adopt(ma_ivf *x, ma_ivf_build *b, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx, int low_memory);

/* A new index of build b over events [0, count), made beside any other (b is not changed: its centroids are
 * copied): every complete block listed from the stored rows of b's build contiguous from block 0 (rows may
 * be NULL), the remaining complete blocks encoded from keys read through load, the pending keys read
 * through load. Kept rows are on (ma_ivf_keep_rows): the blocks it encoded from keys are its first kept
 * rows, for the caller to persist. Grown with ma_ivf_add it equals ma_ivf_adopt of b into an index of
 * the same events, bit for bit (a background build makes it while the old index answers, then swaps it
 * in: ma_archive_index_swap). b's point must not exceed count. 0, MA_EINVAL, MA_ENOMEM, MA_ECORRUPT,
 * load's or scan's error (then *out is untouched). */
int ma_ivf_from_build(const ma_ivf_build *b, uint64_t count, const ma_ivf_rows *rows, ma_ivf_loader load,
                      void *ctx, ma_ivf **out);

/* After ma_ivf_restore: the index of `count` events — every complete block from the stored rows of the
 * restored build (contiguous from block 0), the rest encoded from keys, the pending keys read through
 * load. Identical to the index that was serialised. 0, MA_EINVAL (not a freshly restored index),
 * MA_ENOMEM, MA_ECORRUPT, load's or scan's error. */
int ma_ivf_restore_lists(ma_ivf *x, uint64_t count, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx);

/* Kept rows (for a caller that persists the index): while on, the rows of every block the index lists
 * (ma_ivf_add, adopt, restore_lists) are kept until ma_ivf_rows_done. ma_ivf_rows_pending gives them:
 * their number (blocks first, first+1, ... of build *build) and the lists and codes, back to back. */
void ma_ivf_keep_rows(ma_ivf *x, int on);
size_t ma_ivf_rows_pending(const ma_ivf *x, uint32_t *build, uint64_t *first, const void **lists,
                           const void **codes);
void ma_ivf_rows_done(ma_ivf *x);

/* Per-head mode (H > 1, built or created after issue 15): 1, else 0. ma_ivf_head: head h's own index
 * (one head of d; tests read its centroids and estimates), or NULL when not per-head. */
int ma_ivf_per_head(const ma_ivf *x);
const ma_ivf *ma_ivf_head(const ma_ivf *x, int h);

/* The room a search of max_ids needs per query: max_ids, or H·max_ids per-head (the heads' union). */
size_t ma_ivf_ids_cap(const ma_ivf *x, size_t max_ids);

/* Probes the nprobe non-empty lists whose mean keys have the largest inner product with q (H·d), scores
 * their events by sign code, the best MA_IVF_RERANK·max_ids again by 4-bit code (estimates of
 * sum_h q_h . k_h), the pending events exactly, and writes the ids of the best max_ids (ties: the earlier
 * position in probe order), in ascending id order, into ids (caller's buffer of max_ids); *n_ids gets
 * their number and *scored (if not NULL) the number of events scored. Per-head: every head's index
 * searched so with q_h (nprobe lists and max_ids of each head), and ids gets the union, ascending, each id
 * once (room: ma_ivf_ids_cap), *scored the sum over heads. 0 or MA_ENOMEM. */
int ma_ivf_search(const ma_ivf *x, const float *q, int nprobe, size_t max_ids, uint64_t *ids, size_t *n_ids,
                  uint64_t *scored);


/* What ma_ivf_search_mass estimates (benches and tests compare; process-wide, not thread-safe against
 * searches): OFF nothing (-inf: the archive's read of before); ALONE the stage-2 candidates and pending
 * events outside the ids only; UNPROBED those and the lists not probed (by mean key); MEAN (the default)
 * those and every list less its events estimated alone, by mean key. */
enum { MA_IVF_MASS_OFF, MA_IVF_MASS_ALONE, MA_IVF_MASS_UNPROBED, MA_IVF_MASS_MEAN };
#define MA_IVF_MASS_DEFAULT MA_IVF_MASS_MEAN
void ma_ivf_set_mass_mode(int mode);
int ma_ivf_mass_mode(void);

/* Tests and benches: on != 0 makes every index of the process score with the portable kernels instead of
 * the AVX2 ones (they compute the same integers: answers do not change). Not thread-safe against searches. */
void ma_ivf_set_generic_kernels(int on);

/* Tests and benches: on != 0 makes the indexes created, restored unbuilt or trained from then on with H > 1
 * heads use the shared layout of before issue 15 (one index over the concatenated directions): to make
 * sessions as they were stored before, and to compare. Not thread-safe against index operations. */
void ma_ivf_set_legacy_shared(int on);

/* Benches: returns (and resets) the CPU seconds all searches of the process spent selecting the probes
 * (query tables, centroid scores, top lists), scanning sign codes, and re-ranking (4-bit codes, sort), the
 * searches and the events scanned since the last call, and switches the accounting on or off. Any
 * argument may be NULL. Not thread-safe; for single-threaded benches only. */
void ma_ivf_profile(int on, double t[3], uint64_t *searches, uint64_t *events);
/* Benches: the lists the searches scanned since the last ma_ivf_profile call (read it before that call). */
uint64_t ma_ivf_profile_lists(void);

/* Tests: every listed (not pending) event's id, list and the two estimates of q . k a search computes for
 * it (sign codes; 4-bit codes), list by list in list order; *n gets their number (buffers of count
 * events). 0 or MA_ENOMEM. */
int ma_ivf_debug_estimates(const ma_ivf *x, const float *q, uint64_t *ids, uint32_t *list, float *est1,
                           float *est4, size_t *n);   /* MA_EINVAL per-head: ask ma_ivf_head(x, h) */

/* Tests: centroid c (H·d floats, a unit vector), or NULL if c >= nlist or per-head (ma_ivf_head). */
const float *ma_ivf_debug_centroid(const ma_ivf *x, uint32_t c);

/* Flags of ma_ivf_search_mass. MA_IVF_ADAPTIVE: adaptive probing — an index of one head (H = 1) scans its
 * probed lists best first, in rounds of 8, and stops after a round once an event of the lists not yet
 * scanned is unlikely to beat the best found (expected number above it <= 1e-3, under a Gaussian model of
 * q . k around each list's mean with the spread the query saw in the lists it scanned; never before
 * MA_IVF_RERANK·max_ids events were scanned); nprobe is then the most it probes. The decision is a function
 * of the query and the index only: the same bits for the same state, batched or not. Ignored by per-head
 * indexes (H > 1: every head probes nprobe lists). docs/ARCHIVE.md, "Adaptive probing". */
#define MA_IVF_ADAPTIVE 1u

/* ma_ivf_search_batch with flags (0: the same search; MA_IVF_ADAPTIVE above), and per query and head the
 * log of the estimated softmax mass of that head outside the answered ids, lse[k·H + h] =
 * log sum_{i not in ids} exp(q_h . k_ih / sqrt(d)) (docs/ARCHIVE.md, "Many heads"): per-head indexes
 * estimate it from their stage-2 candidates' 4-bit estimates, their pending keys (exact) and their lists'
 * sizes and mean keys; -inf when nothing is estimated (an index that is not per-head, MA_IVF_MASS_OFF,
 * nothing outside). The same bits for a query alone or in any batch. lse: nq·H doubles, or NULL.
 * *scored / scored[k] counts the events scored. 0 or MA_ENOMEM (MA_EIO: broken). */
int ma_ivf_search_mass(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, unsigned flags,
                       uint64_t *ids, size_t *n_ids, uint64_t *scored, double *lse);

/* ma_ivf_search for nq queries Q (nq × H·d): ids of query k at ids[k·ma_ivf_ids_cap(x, max_ids)], its count at n_ids[k], its
 * scored at scored[k] (scored may be NULL). The centroid scores of the batch are one sgemm and the lists
 * are scanned list by list, each once for all the queries probing it. Answers are those of nq calls of
 * ma_ivf_search except where two centroid scores of a query tie within the rounding of sgemm against
 * sgemv (the probes could differ). 0 or MA_ENOMEM. */
int ma_ivf_search_batch(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, uint64_t *ids,
                        size_t *n_ids, uint64_t *scored);

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

/* The centroids and build counters (no per-event data: that is in the rows) as a core/blob.h blob in a
 * malloc'd buffer (docs/ARCHIVE.md). ma_ivf_restore also reads the legacy format. */
int ma_ivf_serialize(const ma_ivf *x, void **buf, size_t *len);

/* An index with no events and the serialised centroids and counters; ma_ivf_restore_lists, or adding the
 * original's keys in id order (any batching), gives an index identical to the original. MA_ECORRUPT
 * (foreign/truncated buffer, other H/d), MA_ENOMEM. */
int ma_ivf_restore(int H, int d, const void *buf, size_t len, ma_ivf **out);

#endif
