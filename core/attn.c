/*
 * core/attn.c — exact softmax attention over a list of event segments (see core/attn.h).
 *
 * Three passes over the selected events: logits (sgemv per segment and head), per-head max and exp with
 * the normaliser summed in double, then the weighted sum of values (sgemv per segment into a float
 * partial, added into a double accumulator). The logits buffer is the only allocation: n·H floats.
 * Deliberately no fused/online softmax: two passes over the keys cost little next to the value pass and
 * keep the pointer (which needs every normalised weight) exact.
 */
#include "core/attn.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static double cosine(const float *a, const float *b, int d)
{
    double ab = 0, aa = 0, bb = 0;
    for (int j = 0; j < d; j++) {
        ab += (double)a[j] * b[j];
        aa += (double)a[j] * a[j];
        bb += (double)b[j] * b[j];
    }
    if (aa == 0 || bb == 0)
        return 0;
    return ab / (sqrt(aa) * sqrt(bb));
}

int ma_attn(const ma_attn_seg *segs, size_t nseg, int H, int d, int dv, const float *q, float *out,
            ma_attn_best *best)
{
    size_t total = 0;
    for (size_t s = 0; s < nseg; s++)
        total += segs[s].n;
    if (total == 0) {
        memset(out, 0, sizeof(float) * (size_t)H * dv);
        best->pointer = -1;
        best->weight = 0;
        best->score = 0;
        return 0;
    }
    if (total > SIZE_MAX / sizeof(float) / (size_t)H)
        return MA_ENOMEM;

    int rc = MA_ENOMEM;
    float *w = malloc(sizeof(float) * total * (size_t)H);   /* [h][i]: logits, then exp(logit - max) */
    double *z = calloc((size_t)H, sizeof(double));
    double *acc = calloc((size_t)dv, sizeof(double));
    float *part = malloc(sizeof(float) * (size_t)dv);
    if (!w || !z || !acc || !part)
        goto done;

    const float scale = (float)(1.0 / sqrt((double)d));
    const int ldk = H * d, ldv = H * dv;

    size_t off = 0;
    for (size_t s = 0; s < nseg; s++) {
        if (segs[s].n == 0)
            continue;
        for (int h = 0; h < H; h++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)segs[s].n, d, scale, segs[s].k + (size_t)h * d, ldk,
                        q + (size_t)h * d, 1, 0.0f, w + (size_t)h * total + off, 1);
        off += segs[s].n;
    }

    for (int h = 0; h < H; h++) {
        float *wh = w + (size_t)h * total;
        float mx = wh[0];
        for (size_t i = 1; i < total; i++)
            if (wh[i] > mx)
                mx = wh[i];
        double sum = 0;
        for (size_t i = 0; i < total; i++) {
            wh[i] = expf(wh[i] - mx);
            sum += wh[i];
        }
        z[h] = sum;   /* >= 1: the maximum contributes exp(0) */
    }

    /* The pointer: largest weight summed over heads; strict '>' keeps the first on ties. */
    size_t arg = 0;
    double argw = -1;
    for (size_t i = 0; i < total; i++) {
        double sw = 0;
        for (int h = 0; h < H; h++)
            sw += w[(size_t)h * total + i] / z[h];
        if (sw > argw) {
            argw = sw;
            arg = i;
        }
    }

    for (int h = 0; h < H; h++) {
        memset(acc, 0, sizeof(double) * (size_t)dv);
        off = 0;
        for (size_t s = 0; s < nseg; s++) {
            if (segs[s].n == 0)
                continue;
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)segs[s].n, dv, 1.0f, segs[s].v + (size_t)h * dv, ldv,
                        w + (size_t)h * total + off, 1, 0.0f, part, 1);
            for (int j = 0; j < dv; j++)
                acc[j] += part[j];
            off += segs[s].n;
        }
        for (int j = 0; j < dv; j++)
            out[(size_t)h * dv + j] = (float)(acc[j] / z[h]);
    }

    /* Locate the pointer's segment and row for its event index and cosine. */
    off = 0;
    for (size_t s = 0; s < nseg; s++) {
        if (arg < off + segs[s].n) {
            size_t r = arg - off;
            const float *kr = segs[s].k + r * (size_t)ldk;
            double cs = 0;
            for (int h = 0; h < H; h++)
                cs += cosine(q + (size_t)h * d, kr + (size_t)h * d, d);
            best->pointer = (int64_t)(segs[s].ids ? segs[s].ids[r] : segs[s].first + r);
            best->score = cs / H;
            best->weight = argw / H;
            break;
        }
        off += segs[s].n;
    }
    rc = 0;
done:
    free(w);
    free(z);
    free(acc);
    free(part);
    return rc;
}

/* ---- top-m selection ------------------------------------------------------------------------- */

typedef struct {
    float key;      /* NaN mapped to -inf */
    size_t idx;
} cand;

/* Strict total order (indices are distinct): larger key first, then smaller index. */
static int better(const cand *a, const cand *b)
{
    return a->key > b->key || (a->key == b->key && a->idx < b->idx);
}

static void swap_cand(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Quickselect (Hoare partition, median of three): afterwards c[0..m) hold the m best, unordered. */
static void select_best(cand *c, size_t n, size_t m)
{
    size_t lo = 0, hi = n - 1, k = m - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (better(&c[mid], &c[lo]))
            swap_cand(&c[mid], &c[lo]);
        if (better(&c[hi], &c[lo]))
            swap_cand(&c[hi], &c[lo]);
        if (better(&c[hi], &c[mid]))
            swap_cand(&c[hi], &c[mid]);
        cand p = c[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (better(&c[i], &p))
                i++;
            while (better(&p, &c[j]))
                j--;
            if (i <= j) {
                swap_cand(&c[i], &c[j]);
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break;
    }
}

/* Min-heap of indices on rank (heap[0] the worst kept). */
static int worse_idx(const float *s, size_t a, size_t b)
{
    float ka = isnan(s[a]) ? -INFINITY : s[a], kb = isnan(s[b]) ? -INFINITY : s[b];
    return ka < kb || (ka == kb && a > b);
}

static void sift_down(const float *s, size_t *heap, size_t m, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < m && worse_idx(s, heap[l], heap[w]))
            w = l;
        if (r < m && worse_idx(s, heap[r], heap[w]))
            w = r;
        if (w == i)
            return;
        size_t t = heap[i];
        heap[i] = heap[w];
        heap[w] = t;
        i = w;
    }
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* Few winners of many (chunks, clusters): one comparison per candidate against the worst kept, no
 * allocation. */
static void topk_heap(const float *score, size_t n, size_t m, size_t *idx)
{
    for (size_t i = 0; i < m; i++)
        idx[i] = i;
    for (size_t i = m / 2; i-- > 0;)
        sift_down(score, idx, m, i);
    for (size_t i = m; i < n; i++) {
        if (worse_idx(score, idx[0], i)) {
            idx[0] = i;
            sift_down(score, idx, m, 0);
        }
    }
    qsort(idx, m, sizeof *idx, cmp_size);
}

int ma_topk(const float *score, size_t n, size_t m, size_t *idx, size_t *n_out)
{
    if (m >= n) {
        for (size_t i = 0; i < n; i++)
            idx[i] = i;
        *n_out = n;
        return 0;
    }
    if (m == 0) {
        *n_out = 0;
        return 0;
    }
    if (m <= n / 64) {
        topk_heap(score, n, m, idx);
        *n_out = m;
        return 0;
    }
    cand *c = malloc(n * sizeof *c);
    unsigned char *mark = calloc(n, 1);
    if (!c || !mark) {
        free(c);
        free(mark);
        return MA_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        c[i] = (cand){isnan(score[i]) ? -INFINITY : score[i], i};
    select_best(c, n, m);
    /* Ascending index order without a sort: mark the winners, then scan. */
    for (size_t i = 0; i < m; i++)
        mark[c[i].idx] = 1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (mark[i])
            idx[o++] = i;
    free(c);
    free(mark);
    *n_out = m;
    return 0;
}
