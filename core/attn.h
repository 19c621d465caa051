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

/* Indices of the m largest of score[0..n) (on equal scores the smaller index wins), written in ascending
 * index order into idx (caller's buffer of min(m, n)) and their number into *n_out. NaN scores rank
 * lowest. A heap for m <= n/64, else quickselect (O(n) expected). 0 or MA_ENOMEM. */
int ma_topk(const float *score, size_t n, size_t m, size_t *idx, size_t *n_out);

#endif
