/*
 * core/archive.h — every event's per-head key and value, kept in chunks of C events, and the reads over
 * them: full softmax attention (the exact reference), sparse top-k attention through a selector, and a
 * sliding window. docs/ARCHIVE.md.
 *
 * Selectors (ma_params.selector):
 *  - chunks: per-chunk summaries (mean key, per-dimension min/max per head) score every chunk; the top-k
 *    chunks (ma_params.topk or the per-query override) are read exactly.
 *  - index: an inverted-file index over the keys (k-means centroids computed with OpenBLAS, an inverted
 *    list per cluster of event ids and 4-bit key codes, grown online and rebuilt as the archive grows); a
 *    query probes the nearest clusters, ranks their events by code, and reads the best candidates exactly.
 * Either way the read is exact softmax attention (scale 1/sqrt(d), per head) over the selected events.
 *
 * Paging: a chunk's keys and values can live outside RAM. The archive asks a chunk source (set by the
 * store) for chunks it does not hold; summaries (chunks selector) or the index (index selector) stay
 * resident, so a read touches them plus only the chunks of the events it selected. Without a source
 * every chunk is resident.
 *
 * Index builds (docs/ARCHIVE.md, "Builds"): by default the append that reaches a build point builds the
 * index in place. A managed archive (ma_archive_set_managed; a restore with a row source) leaves builds
 * to its caller — which trains and encodes elsewhere (core/ivf.h's build steps, reading keys from the
 * store) and hands the result to ma_archive_index_adopt, or makes the whole new index beside this one and
 * hands it to ma_archive_index_swap (the registry) — and keeps the rows of newly indexed blocks until the
 * caller has persisted them (ma_archive_index_rows).
 *
 * Threads: reads may run in parallel with each other (the chunk cache is internally locked); appends,
 * adopt, swap and set_managed must not run alongside anything else on the same handle.
 */
#ifndef MA_ARCHIVE_H
#define MA_ARCHIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/ivf.h"
#include "core/params.h"

typedef struct ma_archive ma_archive;

/* What a read returns. The caller provides v (H·d_v floats); chunks is malloc'd by the read and freed by
 * ma_read_result_clear. */
typedef struct {
    float *v;                /* in: caller's buffer of H·d_v; out: attention output, head-major */
    int64_t pointer;         /* event with the largest attention weight summed over heads, -1 if empty */
    double score;            /* the pointer's mean over heads of q·k/(|q||k|) (cosine), in [-1, 1] */
    double weight;           /* the pointer's attention weight averaged over heads, in [0, 1] */
    uint32_t *chunks;        /* indices of the chunks the read touched, ascending */
    size_t n_chunks;
    uint64_t events_scored;  /* how many events' keys were scored exactly */
    unsigned skip;           /* in: MA_MASK_* bits; events carrying any of them are not attended (0: all) */
} ma_read_result;

void ma_read_result_clear(ma_read_result *r);

/* A source of non-resident chunks (the store). load fills k (n·H·d) and v (n·H·d_v) of chunk `chunk`
 * (n = C except for the last chunk); returns 0 or a negative MA_E* code, which the read passes on. */
typedef struct {
    int (*load)(void *ctx, uint32_t chunk, float *k, float *v, size_t n);
    void *ctx;
} ma_chunk_source;

/* Optional companion of a chunk source (ma_archive_set_event_loader): fills k and v with the keys and
 * values of n events, indices strictly ascending, reading only those (called with the source's ctx). */
typedef int (*ma_event_loader)(void *ctx, const uint64_t *events, size_t n, float *k, float *v);

/* Event masks (docs/SLOTS.md, "Supersession and forgetting"): per event a set of bits a read can skip
 * (ma_read_result.skip). Every read — full, window, sparse through either selector — leaves out the
 * events whose bits intersect skip, with one test per event or candidate (ma_archive_masked); when no
 * event is masked the reads take their unmasked path. A read left with nothing to attend over returns
 * MA_EEMPTY. Masks are not serialised: the owner (the session) re-derives them at restore. */
#define MA_MASK_SUPERSEDED 1u  /* the event of a slot version that a newer version replaced */
#define MA_MASK_FORGOTTEN  2u  /* the event of a forgotten slot: never read */
#define MA_MASK_ALL        3u

/* Makes room for the masks of events [0, n) (0 or MA_ENOMEM, archive unchanged). */
int ma_archive_mask_reserve(ma_archive *a, uint64_t n);
/* Sets (on) or clears bits of event i; i must be below a reserved n (else ignored). Cannot fail. Not
 * alongside reads. */
void ma_archive_mask_set(ma_archive *a, uint64_t i, unsigned bits, bool on);
/* The bits of event i (0 if never set). The one mask test every read path uses. */
unsigned ma_archive_masked(const ma_archive *a, uint64_t i);

int ma_archive_create(const ma_params *p, ma_archive **out);
void ma_archive_destroy(ma_archive *a);

/* Appends n events (k: n·H·d, v: n·H·d_v); they get indices length..length+n-1. 0 or MA_ENOMEM. */
int ma_archive_append(ma_archive *a, size_t n, const float *k, const float *v);

uint64_t ma_archive_length(const ma_archive *a);
uint32_t ma_archive_chunks(const ma_archive *a);

/* Copies event i's k (H·d) and v (H·d_v); either may be NULL. 0, MA_ENOTFOUND, or a chunk-source error. */
int ma_archive_get(const ma_archive *a, uint64_t i, float *k, float *v);

/* Exact softmax attention over every event. q: H·d. 0, or MA_EEMPTY when the archive is empty (or every
 * event is skipped by r->skip). */
int ma_archive_read_full(const ma_archive *a, const float *q, ma_read_result *r);

/* Exact softmax attention over the last `window` events (window <= 0: ma_params.window). */
int ma_archive_read_window(const ma_archive *a, const float *q, int window, ma_read_result *r);

/* Exact reads of nq queries in one pass over the archive (Q: nq × H·d; r: nq results with their v
 * buffers and skip bits; windows: NULL for nq full reads, else per query < 0 full, 0 the config's window,
 * > 0 that window). Streamed (docs/ARCHIVE.md, "Streamed exact reads"): the chunks are visited once in
 * order through an online softmax, one chunk held at a time (a chunk not resident is read from the source
 * without entering the cache), one sgemm per chunk, head and group of 8 queries; with H > 1 a few spans of
 * 16 chunks are visited again to find the pointer. A query's answer has the same bits alone or in any
 * batch, and paged or resident. rcs[i]: 0 (r[i] filled) or MA_EEMPTY (nothing to attend over). Returns 0,
 * or MA_ENOMEM / a chunk-source error (then no result is filled). ma_archive_read_full and
 * ma_archive_read_window are this with nq = 1. */
int ma_archive_read_exact_batch(const ma_archive *a, const float *Q, size_t nq, const int *windows,
                                ma_read_result *r, int *rcs);

/* Sparse read through the session's selector; topk <= 0 means ma_params.topk. What topk means:
 *  - chunks: the topk best-scoring chunks are read (at most topk·C events attended);
 *  - index: the max(4·topk, nlist·topk/160) clusters nearest to q are probed (a tenth of the lists at the
 *    default 16), their events ranked by their residual sign codes, the best 64·topk re-ranked by their
 *    4-bit codes (the < 1,024 not yet clustered events exactly), and the best 8·topk attended exactly.
 * events_scored counts the events of the selected chunks (chunks, exactly) or the events ranked (index).
 * Paged archives: only the chunks of attended events are loaded; a paged or restored archive answers
 * with the same bits as the original. */
int ma_archive_read_sparse(const ma_archive *a, const float *q, int topk, ma_read_result *r);

/* nq sparse reads at once (Q: nq × H·d, r: nq results with their v buffers); the same answers as nq calls of
 * ma_archive_read_sparse, except that with the index selector the batch's centroid scores are one sgemm
 * (the probes of a query could differ where two centroid scores tie within rounding) and every probed list
 * is scanned once for the whole batch. On error no result is left filled. */
int ma_archive_read_sparse_batch(const ma_archive *a, const float *Q, size_t nq, int topk, ma_read_result *r);

/* Sparse reads of the index selector with H > 1 heads add to each head's normaliser the index's estimate
 * of that head's softmax mass outside the candidates (ma_ivf_search_mass; docs/ARCHIVE.md, "Many heads"):
 * the pointer and its weight always; the output when on (default MA_ARCHIVE_MASS_IN_OUTPUT). A process-wide
 * setting for comparisons (bench/); must not run alongside a read. H = 1 is not affected. */
#define MA_ARCHIVE_MASS_IN_OUTPUT 1
void ma_archive_set_mass_in_output(int on);

/* How the chunks selector scores a chunk against q (summed over heads):
 *  - BOUND (default): Quest's upper bound of q.k over the chunk, sum_j max(q_j min_j, q_j max_j);
 *  - MEAN: q . (mean key of the chunk);
 *  - BOTH: half the chunks (rounded up) by BOUND, the rest by MEAN.
 * A runtime setting for comparisons (bench/); not part of the config nor of the serialised state. Must not
 * run alongside a read. */
typedef enum { MA_CHUNK_SCORE_BOUND = 0, MA_CHUNK_SCORE_MEAN, MA_CHUNK_SCORE_BOTH } ma_chunk_score;
void ma_archive_set_chunk_score(ma_archive *a, ma_chunk_score s);

/* Whether the index selector probes adaptively (true: an index of one head stops scanning once the lists
 * left are unlikely to hold anything better than the best found, MA_IVF_ADAPTIVE; false, the default: every
 * read scans all its probed lists). Off by default: at 2M events it scans 31-42 % fewer events at the same
 * recall but was not measured faster (docs/RESULTS.md, "Adaptive probing at 2M"). A runtime setting for
 * comparisons (bench/, tests); not part of the config nor of the serialised state. Must not run alongside
 * a read. */
void ma_archive_set_adaptive(ma_archive *a, bool on);

/* Bytes held in RAM (resident chunks, summaries, index) and the bytes all events take in full. */
size_t ma_archive_bytes(const ma_archive *a);
size_t ma_archive_bytes_total(const ma_archive *a);

/* The part of ma_archive_bytes an archive for p holds whatever its length, once its chunks are paged
 * (a source set with cache_chunks entries; 0: no source): the handle, the chunk table's first
 * allocation (16 chunks, with their summaries for the chunks selector), the last chunk at its full C
 * events, a full chunk cache, and the index's fixed part (ma_ivf_footprint). What grows with the length
 * (owned sealed chunks until they are paged out, the table and summaries beyond 16 chunks, the index's
 * lists and centroids, event masks) is counted by ma_archive_bytes when measured. p valid. */
size_t ma_archive_footprint(const ma_params *p, size_t cache_chunks);

/* --- paging and persistence (used by the session registry; its chunk source is registry/pager.c) --- */

/* Sets the source of non-resident chunks and the number of chunks to cache (>= 1). With a source set,
 * ma_archive_release() drops sealed (full) chunks from RAM; they are loaded on demand. */
int ma_archive_set_source(ma_archive *a, ma_chunk_source src, size_t cache_chunks);
void ma_archive_release(ma_archive *a);

/* Sets (or with NULL clears) the event loader of the chunk source: the sparse read's candidates that are
 * neither resident nor cached are then read alone through it instead of loading their chunks (the same
 * bytes: the same answers; docs/ARCHIVE.md, "Paged sparse reads"). Kept across ma_archive_set_source.
 * Must not run alongside a read. */
void ma_archive_set_event_loader(ma_archive *a, ma_event_loader fn);

/* Serialises / restores the shape, and for the index selector its centroids and build counters (a few
 * hundred KiB at 2M events, nothing per event: the index's per-event records are rows, below) as a
 * core/blob.h blob (docs/ARCHIVE.md has the sections); restore also reads the legacy format. Restore
 * takes the archive's length (events), rebuilds summaries by streaming every chunk once through the
 * chunk source and the index from keys streamed through it, identical to the original's, and keeps
 * reading chunks through it. With the index's stored rows (core/ivf.h, ma_ivf_rows) the index's lists
 * are read from the rows of its build instead (no k-means, no key streaming) and only the blocks without
 * a row are encoded from keys (their rows are then kept for the caller to persist); the restored archive
 * is then managed (ma_archive_set_managed). Same answers as the original. Truncated, corrupted or
 * foreign buffer: MA_ECORRUPT; a length of more than UINT32_MAX chunks: MA_EINVAL; the source's errors
 * are passed on. */
int ma_archive_serialize_meta(const ma_archive *a, void **buf, size_t *len);

/* What an archive is restored from (ma_archive_restore_meta). */
typedef struct {
    const void *meta;          /* ma_archive_serialize_meta's blob (borrowed for the call) */
    size_t meta_len;
    uint64_t length;           /* events */
    ma_chunk_source chunks;    /* where its chunks are read (kept by the archive) */
    size_t cache_chunks;       /* chunks cached in RAM, >= 1 */
    const ma_ivf_rows *rows;   /* the index's stored rows (NULL: none, the index is computed from keys) */
} ma_archive_saved;
int ma_archive_restore_meta(const ma_params *p, const ma_archive_saved *from, ma_archive **out);

/* --- index builds and rows, for a managing caller (registry/registry.c; docs/ARCHIVE.md, "Builds") --- */

/* on: appends never build the index (the caller does, through ma_archive_index_adopt) and the rows of
 * blocks the index lists are kept until ma_archive_index_rows_done. No effect without the index selector. */
void ma_archive_set_managed(ma_archive *a, bool on);

/* True when an index build is due (core/ivf.h, ma_ivf_build_due): *point, *build_no (either may be NULL). */
bool ma_archive_index_due(const ma_archive *a, uint64_t *point, uint32_t *build_no);

typedef struct {
    uint32_t build;    /* builds so far (the current build's number; 0: none yet) */
    uint32_t nlist;    /* lists */
    uint64_t events;   /* events in the index (listed and pending) */
} ma_index_state;

/* The index's state (all zero without the index selector). */
void ma_archive_index_state(const ma_archive *a, ma_index_state *st);

/* The index takes build b (ma_ivf_adopt): the stored rows of b's build through rows (may be NULL), the
 * blocks without a row encoded from the archive's keys (owned chunks, else the chunk source) and kept as
 * rows to persist. A managed archive frees the old lists first (old and new are never both held); if it
 * then fails the archive must be discarded. 0, MA_EINVAL (no index, or b not newer than the index or past
 * its events), MA_ENOMEM, MA_ECORRUPT, a source's error. */
int ma_archive_index_adopt(ma_archive *a, ma_ivf_build *b, const ma_ivf_rows *rows);

/* Swaps in index x, built beside the archive's own over its first ma_ivf_count(x) events (core/ivf.h,
 * ma_ivf_from_build and ma_ivf_add; a background build: docs/ARCHIVE.md): the events appended since are
 * added to x from the archive's keys (owned chunks, else the chunk source), x takes the archive's kept-rows
 * setting (a managed archive keeps x's kept rows — the blocks x listed that the caller has not persisted —
 * and those this call listed, to persist) and becomes the index; the old one goes to *old, for the caller to
 * destroy (outside any lock: freeing a large index takes time). Costs what adding those events costs, not
 * the session's size. On failure the archive is unchanged and x (possibly grown) is still the caller's.
 * 0, MA_EINVAL (no index; x not newer than the index, or longer than the archive), MA_ENOMEM, a source's
 * error. */
int ma_archive_index_swap(ma_archive *a, ma_ivf *x, ma_ivf **old);

/* The kept rows not yet persisted: their number (blocks *first, *first+1, ... of build *build) and their
 * lists and codes (core/ivf.h). 0 for an archive that is not managed. Valid until the next mutation. */
size_t ma_archive_index_rows(const ma_archive *a, uint32_t *build, uint64_t *first, const void **lists,
                             const void **codes);
/* The kept rows were persisted: forget them. */
void ma_archive_index_rows_done(ma_archive *a);
/* Benches and tests: the index (NULL without the index selector), and the probes and candidate budget a
 * sparse read of topk (<= 0: the default) gives its search (*max_ids per head). */
const ma_ivf *ma_archive_index(const ma_archive *a);
int ma_archive_index_probes(const ma_archive *a, int topk, size_t *max_ids);
/* The bytes of a kept row's lists (ma_ivf_row_lists_bytes: MA_IVF_BLOCK·4, times H for a per-head index). */
size_t ma_archive_index_row_lists_bytes(const ma_archive *a);

/* Changes exactly when ma_archive_serialize_meta's output changes (at an index rebuild; never for the
 * chunks selector), so a store need rewrite the blob only then. */
uint64_t ma_archive_meta_generation(const ma_archive *a);

#endif
