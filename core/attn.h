/*
 * core/attn.h — the exact softmax-attention kernel every archive read ends in.
 *
 * Input: a list of segments, each a block of events stored in the archive's layout (event-major, then
 * head-major: k[i*H*d + h*d + j]). Per head h the kernel computes
 *     o_h = sum_i softmax_i(q_h . k_ih / sqrt(d)) v_ih
 * over the union of the segments, with the per-head maximum subtracted before exp, the normaliser and the
 * output accumulated in double across segments (per-segment partial sums come from OpenBLAS sgemv in
 * float), and it reports the pointer: the event with the largest attention weight summed over heads
 * (ties: the first in segment order), its mean-over-heads weight and its mean-over-heads cosine with q.
 *
 * It does not select events (core/archive.c and core/ivf.c do) and does not page (segments are in RAM).
 * Threads: reentrant; uses only its arguments and malloc.
 */
#ifndef MA_ATTN_H
#define MA_ATTN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const float *k;      /* n·H·d */
    const float *v;      /* n·H·d_v */
    size_t n;
    uint64_t first;      /* event index of row 0 when ids is NULL */
    const uint64_t *ids; /* n event indices, or NULL for first..first+n-1 */
} ma_attn_seg;

typedef struct {
    int64_t pointer;     /* event with the largest weight summed over heads; -1 if there were no events */
    double weight;       /* the pointer's weight averaged over heads */
    double score;        /* the pointer's mean over heads of cos(q_h, k_h) (0 for a zero vector) */
} ma_attn_best;

/* Writes the H·d_v output into out and the pointer into best. Segments with n = 0 are allowed; no events
 * at all gives out = 0 and pointer -1. Returns 0 or MA_ENOMEM (out and best untouched). */
int ma_attn(const ma_attn_seg *segs, size_t nseg, int H, int d, int dv, const float *q, float *out,
            ma_attn_best *best);

/* ma_attn with, per head, the log of a softmax mass outside the events (outside[h], in logit units:
 * log sum exp(q_h . k / sqrt(d)) over events not attended; -inf or outside NULL: none) added to that head's
 * normaliser: the pointer and its weight use the normalisers with it, the output too when outside_in_out.
 * With outside NULL it is ma_attn, bit for bit (docs/ARCHIVE.md, "Many heads": the sparse read of H > 1
 * heads passes the index's estimate). */
int ma_attn_mass(const ma_attn_seg *segs, size_t nseg, int H, int d, int dv, const float *q, const double *outside,
                 int outside_in_out, float *out, ma_attn_best *best);

/* ---- streamed exact attention for a batch of queries (docs/ARCHIVE.md, "Streamed exact reads") ---- */

/* Queries are computed in groups of MA_ATTN_QGROUP rows per sgemm (the last group padded with zero rows),
 * whatever the batch: OpenBLAS's result for one row depends on how many rows the call has and where the
 * row falls in its tiles, but not, with 8 rows, on the row's position or on the other rows (measured on
 * this build: 1-4 and 8 rows are invariant, 5-7 and 9-64 are not). So one query's bits are the same alone
 * or in any batch. */
#define MA_ATTN_QGROUP 8

typedef struct {
    const float *q;      /* H·d */
    uint64_t lo, hi;     /* the events it attends: [lo, hi) ... */
    unsigned skip;       /* ... except those whose mask byte meets skip */
} ma_attn_query;

typedef struct ma_attn_stream ma_attn_stream;

/* A streamed read of nq queries over blocks of at most max_block events. Blocks are fed in ascending event
 * order, each inside one span: spans are span_len events from span_first (nspans of them; the pointer of a
 * read with H > 1 is found by revisiting the few spans that can hold it). The queries are copied. 0 or
 * MA_ENOMEM / MA_EINVAL. Memory: O(nq·(H·d_v + nspans·H)) plus O(H·MA_ATTN_QGROUP·max_block). */
int ma_attn_stream_create(int H, int d, int dv, const ma_attn_query *qs, size_t nq, size_t max_block,
                          uint64_t span_first, uint64_t span_len, size_t nspans, ma_attn_stream **out);
void ma_attn_stream_destroy(ma_attn_stream *s);

/* Whether any query attends an event of [first, first + n). */
bool ma_attn_stream_wants(const ma_attn_stream *s, uint64_t first, size_t n);

/* Feeds the block of events [first, first + n) (k: n·H·d, v: n·H·d_v, archive layout); mask: the mask bytes
 * of the first mask_n of them (the rest 0), or NULL. Per query and head it rescales the running (max, sum,
 * weighted values) to the new maximum and adds the block: one sgemm for the logits and one for the values
 * per group of queries and head. 0 (cannot fail). */
void ma_attn_stream_feed(ma_attn_stream *s, const float *k, const float *v, size_t n, uint64_t first,
                         const uint8_t *mask, size_t mask_n);

/* After the last feed: the answers' normalisers are final; finds each query's pointer candidates (H > 1) and
 * which spans may hold a better one. */
void ma_attn_stream_finish(ma_attn_stream *s);

/* After ma_attn_stream_finish: whether span sp must be fed again to ma_attn_stream_refeed (H > 1 only: a span whose
 * bound on Σ_h weight reaches the best candidate's weight for some query). */
bool ma_attn_stream_revisit(const ma_attn_stream *s, size_t sp);

/* Feeds again a block of a span that ma_attn_stream_revisit named (keys only), to find the pointer. */
void ma_attn_stream_refeed(ma_attn_stream *s, const float *k, size_t n, uint64_t first, const uint8_t *mask,
                           size_t mask_n);

/* Query i's answer: out (H·d_v), best, and the number of events it attended. 0, or MA_EEMPTY when it
 * attended none (out and best untouched). */
int ma_attn_stream_result(const ma_attn_stream *s, size_t i, float *out, ma_attn_best *best, uint64_t *scored);

/* Indices of the m largest of score[0..n) (on equal scores the smaller index wins), written in ascending
 * index order into idx (caller's buffer of min(m, n)) and their number into *n_out. NaN scores rank
 * lowest. A heap for m <= n/64, else quickselect (O(n) expected). 0 or MA_ENOMEM. */
int ma_topk(const float *score, size_t n, size_t m, size_t *idx, size_t *n_out);

#endif
