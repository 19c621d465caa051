/*
 * core/attn.c — exact softmax attention over a list of event segments (see core/attn.h).
 *
 * ma_attn (the sparse reads: a few hundred events in RAM): three passes over the selected events: logits
 * (sgemv per segment and head), per-head max and exp with the normaliser summed in double, then the
 * weighted sum of values (sgemv per segment into a float partial, added into a double accumulator). The
 * logits buffer is the only allocation: n·H floats. ma_attn_mass is the same with, per head, a mass
 * outside the events (a log, from the index's estimate) added to the normaliser the pointer's weights use
 * (and the output's, if asked): ma_attn is ma_attn_mass without it, the same bits.
 *
 * ma_attn_stream_* (the full and window reads: the whole archive, streamed chunk by chunk for a batch of
 * queries): an online softmax, described before the code below; the pointer, which needs every final
 * normalised weight, is kept exact by candidates and a bounded revisit of a few spans.
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
    return ma_attn_mass(segs, nseg, H, d, dv, q, NULL, 0, out, best);
}

int ma_attn_mass(const ma_attn_seg *segs, size_t nseg, int H, int d, int dv, const float *q, const double *outside,
                 int outside_in_out, float *out, ma_attn_best *best)
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
    double *z = calloc((size_t)H, sizeof(double)), *zp = calloc((size_t)H, sizeof(double));
    float *hmax = calloc((size_t)H, sizeof(float));
    double *acc = calloc((size_t)dv, sizeof(double));
    float *part = malloc(sizeof(float) * (size_t)dv);
    if (!w || !z || !zp || !hmax || !acc || !part)
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
        hmax[h] = mx;
    }
    /* The heads' normalisers with the mass estimated outside the events (the pointer and its weight; the
     * output too with outside_in_out). */
    for (int h = 0; h < H; h++) {
        zp[h] = z[h];
        if (outside && outside[h] > -INFINITY)
            zp[h] += exp(outside[h] - (double)hmax[h]);
        if (outside_in_out)
            z[h] = zp[h];
    }

    /* The pointer: largest weight summed over heads; strict '>' keeps the first on ties. */
    size_t arg = 0;
    double argw = -1;
    for (size_t i = 0; i < total; i++) {
        double sw = 0;
        for (int h = 0; h < H; h++)
            sw += w[(size_t)h * total + i] / zp[h];
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
    free(zp);
    free(hmax);
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

/* ---- streamed exact attention (core/attn.h) ----------------------------------------------------
 *
 * The online softmax: per query and head a running maximum m, a running normaliser z = Σ exp(l - m) (double)
 * and running weighted values acc = Σ exp(l - m)·v (double). A block's logits come from one sgemm per group
 * of MA_ATTN_QGROUP queries and head (scale folded in); when a block raises m, z and acc are first scaled by
 * exp(m_old - m_new) (double), then the block's weights p = expf(l - m_new) (float) are summed into z in
 * event order and multiplied into the values by a second sgemm per group and head, added into acc. The
 * answer is acc / z. Events a query does not attend (outside its range, or masked) get weight 0 and take no
 * part in its maximum.
 *
 * The pointer. With one head it is the first event of largest logit (its weight is then the largest), found
 * on the way. With H heads it is the event of largest Σ_h expf(l_h - M_h)/Z_h (M, Z final; the first on
 * ties), which the stream cannot know before its end: it keeps per head the first event of largest logit
 * (with its H logits and key) as candidates, and per span the per-head maximum logit of the attended
 * events. At the end the best candidate's weight is a lower bound of the pointer's, and a span's Σ_h
 * expf(max_h - M_h)/Z_h an upper bound of every weight in it (expf and rounded addition are monotone): only
 * the spans whose bound reaches the best candidate are fed again (keys only) and searched exactly. */

struct ma_attn_stream {
    int H, d, dv;
    size_t kf, vf, nq, ngroups, max_block, nspans;
    uint64_t span_first, span_len;
    float scale;
    float *Q;                   /* ngroups·G rows of H·d, zero-padded */
    uint64_t *lo, *hi;
    unsigned *skip;
    float *m;                   /* [q][h] running maximum (-inf: nothing yet) */
    double *z;                  /* [q][h] */
    double *acc;                /* [q][H·d_v] */
    uint64_t *scored;           /* [q] events attended */
    int64_t *best;              /* [q] pointer so far */
    float *best_l;              /* [q] H = 1: its logit */
    double *best_w;             /* [q] after finish: its weight Σ_h */
    float *best_k;              /* [q][H·d] its key */
    int64_t *cand;              /* H > 1: [q][h] first event of largest logit of head h */
    float *cand_l;              /* [q][h][H] its logits */
    float *cand_k;              /* [q][h][H·d] its key */
    float *spanmax;             /* [q][span][h] */
    uint8_t *need;              /* [q][span] revisit */
    float *L;                   /* scratch: [h][G][max_block] logits */
    float *P;                   /* [G][max_block] weights of one head */
    float *part;                /* [G][d_v] */
    uint8_t *live;              /* [G][max_block] */
};

void ma_attn_stream_destroy(ma_attn_stream *s)
{
    if (!s)
        return;
    free(s->Q);
    free(s->lo);
    free(s->hi);
    free(s->skip);
    free(s->m);
    free(s->z);
    free(s->acc);
    free(s->scored);
    free(s->best);
    free(s->best_l);
    free(s->best_w);
    free(s->best_k);
    free(s->cand);
    free(s->cand_l);
    free(s->cand_k);
    free(s->spanmax);
    free(s->need);
    free(s->L);
    free(s->P);
    free(s->part);
    free(s->live);
    free(s);
}

int ma_attn_stream_create(int H, int d, int dv, const ma_attn_query *qs, size_t nq, size_t max_block,
                          uint64_t span_first, uint64_t span_len, size_t nspans, ma_attn_stream **out)
{
    if (H < 1 || d < 1 || dv < 1 || nq == 0 || max_block == 0 || span_len == 0)
        return MA_EINVAL;
    ma_attn_stream *s = calloc(1, sizeof *s);
    if (!s)
        return MA_ENOMEM;
    const size_t G = MA_ATTN_QGROUP, Hs = (size_t)H;
    s->H = H;
    s->d = d;
    s->dv = dv;
    s->kf = Hs * (size_t)d;
    s->vf = Hs * (size_t)dv;
    s->nq = nq;
    s->ngroups = (nq + G - 1) / G;
    s->max_block = max_block;
    s->span_first = span_first;
    s->span_len = span_len;
    s->nspans = nspans;
    s->scale = (float)(1.0 / sqrt((double)d));
    s->Q = calloc(s->ngroups * G * s->kf, sizeof(float));
    s->lo = malloc(nq * sizeof *s->lo);
    s->hi = malloc(nq * sizeof *s->hi);
    s->skip = malloc(nq * sizeof *s->skip);
    s->m = malloc(nq * Hs * sizeof *s->m);
    s->z = calloc(nq * Hs, sizeof *s->z);
    s->acc = calloc(nq * s->vf, sizeof *s->acc);
    s->scored = calloc(nq, sizeof *s->scored);
    s->best = malloc(nq * sizeof *s->best);
    s->best_l = malloc(nq * sizeof *s->best_l);
    s->best_w = calloc(nq, sizeof *s->best_w);
    s->best_k = calloc(nq * s->kf, sizeof *s->best_k);
    s->L = malloc(Hs * G * max_block * sizeof *s->L);
    s->P = malloc(G * max_block * sizeof *s->P);
    s->part = malloc(G * (size_t)dv * sizeof *s->part);
    s->live = malloc(G * max_block);
    if (!s->Q || !s->lo || !s->hi || !s->skip || !s->m || !s->z || !s->acc || !s->scored || !s->best ||
        !s->best_l || !s->best_w || !s->best_k || !s->L || !s->P || !s->part || !s->live)
        goto oom;
    if (H > 1) {
        s->cand = malloc(nq * Hs * sizeof *s->cand);
        s->cand_l = malloc(nq * Hs * Hs * sizeof *s->cand_l);
        s->cand_k = calloc(nq * Hs * s->kf, sizeof *s->cand_k);
        s->spanmax = malloc((nspans ? nspans : 1) * nq * Hs * sizeof *s->spanmax);
        s->need = calloc((nspans ? nspans : 1) * nq, 1);
        if (!s->cand || !s->cand_l || !s->cand_k || !s->spanmax || !s->need)
            goto oom;
        for (size_t i = 0; i < nq * Hs; i++)
            s->cand[i] = -1;
        for (size_t i = 0; i < nq * Hs * Hs; i++)
            s->cand_l[i] = -INFINITY;
        for (size_t i = 0; i < nspans * nq * Hs; i++)
            s->spanmax[i] = -INFINITY;
    }
    for (size_t i = 0; i < nq; i++) {
        memcpy(s->Q + i * s->kf, qs[i].q, s->kf * sizeof(float));
        s->lo[i] = qs[i].lo;
        s->hi[i] = qs[i].hi;
        s->skip[i] = qs[i].skip;
        s->best[i] = -1;
        s->best_l[i] = -INFINITY;
    }
    for (size_t i = 0; i < nq * Hs; i++)
        s->m[i] = -INFINITY;
    *out = s;
    return 0;
oom:
    ma_attn_stream_destroy(s);
    return MA_ENOMEM;
}

/* The part of [first, first + n) query i attends by range: [*a, *b) (empty when *a >= *b). */
static void stream_range(const ma_attn_stream *s, size_t i, uint64_t first, size_t n, uint64_t *a, uint64_t *b)
{
    *a = s->lo[i] > first ? s->lo[i] : first;
    *b = s->hi[i] < first + n ? s->hi[i] : first + n;
}

bool ma_attn_stream_wants(const ma_attn_stream *s, uint64_t first, size_t n)
{
    for (size_t i = 0; i < s->nq; i++) {
        uint64_t a, b;
        stream_range(s, i, first, n, &a, &b);
        if (a < b)
            return true;
    }
    return false;
}

/* Marks in live[0..n) the events of the block query i attends; returns how many. */
static size_t stream_live(const ma_attn_stream *s, size_t i, uint64_t first, size_t n, const uint8_t *mask,
                          size_t mask_n, uint8_t *live)
{
    uint64_t a, b;
    stream_range(s, i, first, n, &a, &b);
    memset(live, 0, n);
    size_t cnt = 0;
    for (uint64_t e = a; e < b; e++) {
        size_t x = (size_t)(e - first);
        bool out = mask && x < mask_n && (mask[x] & s->skip[i]);
        live[x] = !out;
        cnt += !out;
    }
    return cnt;
}

/* The logits of group g for the block, every head, into s->L ([h][r][x], row stride n). */
static void stream_logits(ma_attn_stream *s, size_t g, const float *k, size_t n)
{
    const size_t G = MA_ATTN_QGROUP;
    for (int h = 0; h < s->H; h++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)G, (int)n, s->d, s->scale,
                    s->Q + g * G * s->kf + (size_t)h * s->d, (int)s->kf, k + (size_t)h * s->d, (int)s->kf, 0.0f,
                    s->L + (size_t)h * G * n, (int)n);
}

/* Σ_h expf(l_h - m_h) / z_h, l_h at l[h·stride]: the one weight formula of candidates, spans and events. */
static double stream_weight(const float *l, size_t stride, const float *m, const double *z, int H)
{
    double w = 0;
    for (int h = 0; h < H; h++)
        w += (double)expf(l[(size_t)h * stride] - m[h]) / z[h];
    return w;
}

void ma_attn_stream_feed(ma_attn_stream *s, const float *k, const float *v, size_t n, uint64_t first,
                         const uint8_t *mask, size_t mask_n)
{
    const size_t G = MA_ATTN_QGROUP, Hs = (size_t)s->H;
    const size_t sp = (size_t)((first - s->span_first) / s->span_len);
    for (size_t g = 0; g < s->ngroups; g++) {
        size_t cnt[MA_ATTN_QGROUP] = {0}, any = 0;
        for (size_t r = 0; r < G && g * G + r < s->nq; r++) {
            cnt[r] = stream_live(s, g * G + r, first, n, mask, mask_n, s->live + r * n);
            any += cnt[r];
        }
        if (!any)
            continue;
        stream_logits(s, g, k, n);
        /* Per query: new maxima (rescaling what came before), pointer bookkeeping. */
        for (size_t r = 0; r < G; r++) {
            if (!cnt[r])
                continue;
            size_t i = g * G + r;
            const uint8_t *live = s->live + r * n;
            s->scored[i] += cnt[r];
            for (size_t h = 0; h < Hs; h++) {
                const float *l = s->L + h * G * n + r * n;
                float bmax = -INFINITY;
                size_t arg = 0;
                for (size_t x = 0; x < n; x++)
                    if (live[x] && l[x] > bmax) {
                        bmax = l[x];
                        arg = x;
                    }
                float *m = &s->m[i * Hs + h];
                if (bmax > *m) {
                    if (*m != -INFINITY) {
                        double alpha = exp((double)*m - (double)bmax);
                        s->z[i * Hs + h] *= alpha;
                        double *acc = s->acc + i * s->vf + h * (size_t)s->dv;
                        for (int j = 0; j < s->dv; j++)
                            acc[j] *= alpha;
                    }
                    *m = bmax;
                }
                if (Hs == 1) {
                    if (bmax > s->best_l[i]) {
                        s->best_l[i] = bmax;
                        s->best[i] = (int64_t)(first + arg);
                        memcpy(s->best_k + i * s->kf, k + arg * s->kf, s->kf * sizeof(float));
                    }
                    continue;
                }
                float *cl = s->cand_l + (i * Hs + h) * Hs;
                if (bmax > cl[h]) {
                    s->cand[i * Hs + h] = (int64_t)(first + arg);
                    for (size_t h2 = 0; h2 < Hs; h2++)
                        cl[h2] = s->L[h2 * G * n + r * n + arg];
                    memcpy(s->cand_k + (i * Hs + h) * s->kf, k + arg * s->kf, s->kf * sizeof(float));
                }
                if (sp < s->nspans) {
                    float *sm = s->spanmax + (sp * s->nq + i) * Hs + h;
                    if (bmax > *sm)
                        *sm = bmax;
                }
            }
        }
        /* Per head: the block's weights, their sum, and their values (one sgemm for the group). */
        for (size_t h = 0; h < Hs; h++) {
            for (size_t r = 0; r < G; r++) {
                float *p = s->P + r * n;
                if (!cnt[r]) {
                    memset(p, 0, n * sizeof *p);
                    continue;
                }
                size_t i = g * G + r;
                const float *l = s->L + h * G * n + r * n;
                const uint8_t *live = s->live + r * n;
                const float m = s->m[i * Hs + h];
                double sum = 0;
                for (size_t x = 0; x < n; x++) {
                    p[x] = live[x] ? expf(l[x] - m) : 0.0f;
                    sum += p[x];
                }
                s->z[i * Hs + h] += sum;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)G, s->dv, (int)n, 1.0f, s->P, (int)n,
                        v + h * (size_t)s->dv, (int)s->vf, 0.0f, s->part, s->dv);
            for (size_t r = 0; r < G; r++) {
                if (!cnt[r])
                    continue;
                double *acc = s->acc + (g * G + r) * s->vf + h * (size_t)s->dv;
                for (int j = 0; j < s->dv; j++)
                    acc[j] += s->part[r * (size_t)s->dv + (size_t)j];
            }
        }
    }
}

void ma_attn_stream_finish(ma_attn_stream *s)
{
    const size_t Hs = (size_t)s->H;
    for (size_t i = 0; i < s->nq; i++) {
        if (!s->scored[i])
            continue;
        const float *m = s->m + i * Hs;
        const double *z = s->z + i * Hs;
        if (Hs == 1) {
            s->best_w[i] = stream_weight(&s->best_l[i], 1, m, z, 1);
            continue;
        }
        /* The best candidate (largest weight, then smallest event). */
        size_t bc = 0;
        double bw = -1;
        for (size_t h = 0; h < Hs; h++) {
            int64_t e = s->cand[i * Hs + h];
            if (e < 0)
                continue;
            double w = stream_weight(s->cand_l + (i * Hs + h) * Hs, 1, m, z, s->H);
            if (w > bw || (w == bw && e < s->cand[i * Hs + bc])) {
                bw = w;
                bc = h;
            }
        }
        s->best[i] = s->cand[i * Hs + bc];
        s->best_w[i] = bw;
        memcpy(s->best_k + i * s->kf, s->cand_k + (i * Hs + bc) * s->kf, s->kf * sizeof(float));
        /* Spans whose bound reaches it may hold the pointer (or an equal weight at a smaller event). */
        for (size_t sp = 0; sp < s->nspans; sp++) {
            const float *sm = s->spanmax + (sp * s->nq + i) * Hs;
            if (sm[0] != -INFINITY && stream_weight(sm, 1, m, z, s->H) >= bw)
                s->need[sp * s->nq + i] = 1;
        }
    }
}

bool ma_attn_stream_revisit(const ma_attn_stream *s, size_t sp)
{
    if (s->H == 1 || sp >= s->nspans)
        return false;
    for (size_t i = 0; i < s->nq; i++)
        if (s->need[sp * s->nq + i])
            return true;
    return false;
}

void ma_attn_stream_refeed(ma_attn_stream *s, const float *k, size_t n, uint64_t first, const uint8_t *mask,
                           size_t mask_n)
{
    const size_t G = MA_ATTN_QGROUP, Hs = (size_t)s->H;
    const size_t sp = (size_t)((first - s->span_first) / s->span_len);
    if (s->H == 1 || sp >= s->nspans)
        return;
    for (size_t g = 0; g < s->ngroups; g++) {
        size_t cnt[MA_ATTN_QGROUP] = {0}, any = 0;
        for (size_t r = 0; r < G && g * G + r < s->nq; r++) {
            if (!s->need[sp * s->nq + g * G + r])
                continue;
            cnt[r] = stream_live(s, g * G + r, first, n, mask, mask_n, s->live + r * n);
            any += cnt[r];
        }
        if (!any)
            continue;
        stream_logits(s, g, k, n);   /* the same call as the feed's: the same bits */
        for (size_t r = 0; r < G; r++) {
            if (!cnt[r])
                continue;
            size_t i = g * G + r;
            const uint8_t *live = s->live + r * n;
            for (size_t x = 0; x < n; x++) {
                if (!live[x])
                    continue;
                double w = stream_weight(s->L + r * n + x, G * n, s->m + i * Hs, s->z + i * Hs, s->H);
                int64_t e = (int64_t)(first + x);
                if (w > s->best_w[i] || (w == s->best_w[i] && e < s->best[i])) {
                    s->best_w[i] = w;
                    s->best[i] = e;
                    memcpy(s->best_k + i * s->kf, k + x * s->kf, s->kf * sizeof(float));
                }
            }
        }
    }
}

int ma_attn_stream_result(const ma_attn_stream *s, size_t i, float *out, ma_attn_best *best, uint64_t *scored)
{
    if (i >= s->nq || !s->scored[i])
        return MA_EEMPTY;
    const size_t Hs = (size_t)s->H;
    double cs = 0;
    for (size_t h = 0; h < Hs; h++) {
        const double *acc = s->acc + i * s->vf + h * (size_t)s->dv;
        for (int j = 0; j < s->dv; j++)
            out[h * (size_t)s->dv + (size_t)j] = (float)(acc[j] / s->z[i * Hs + h]);
        cs += cosine(s->Q + i * s->kf + h * (size_t)s->d, s->best_k + i * s->kf + h * (size_t)s->d, s->d);
    }
    best->pointer = s->best[i];
    best->weight = s->best_w[i] / s->H;
    best->score = cs / s->H;
    *scored = s->scored[i];
    return 0;
}
