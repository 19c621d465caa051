/*
 * core/ivf.c — inverted-file index over events' keys: spherical k-means, lists of ids and 4-bit codes
 * (core/ivf.h).
 *
 * Data: nlist unit centroids (row-major nlist × D, D = H·d) and per list, in id order and in fixed blocks
 * of LB events, the ids (u32), the per-head scales (float) and the codes (H·hb bytes, hb = ceil(d/2): the
 * low nibble of byte j is dimension j, the high nibble dimension j + hb, so both halves of a byte meet one
 * contiguous half of the query).
 * A code nibble u in 1..15 stands for (u − 8)·scale, scale = max_j |k_j| / 7 per head. Events of the
 * incomplete last block of MA_IVF_BLOCK ids are pending: raw keys, scored exactly. Before the first build
 * there are no lists (nlist = 0) and every event is pending.
 *
 * Scoring a code: the query is quantised per head to int8 (scale max|q|/127); the estimate of q_h . k_h
 * is qscale·kscale·(sum_j q8_j u_j − 8·sum_j q8_j), the integer sum in a loop the compiler vectorises.
 *
 * k-means: training directions of a sample drawn by selection sampling (ordered, deterministic), initial
 * centroids a deterministic random subset, MA_IVF_ITERS Lloyd iterations with dot products from sgemm in
 * blocks, sums in double; an empty cluster is reseeded with a random training point.
 *
 * Not here: no exact re-ranking (the archive attends the candidates' exact keys), no removal of events
 * (the archive only appends), no background rebuild (the caller runs it when ma_ivf_want_rebuild says).
 */
#include "core/ivf.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/attn.h"
#include "core/blob.h"
#include "core/error.h"
#include "core/hash.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK MA_IVF_BLOCK
/* The pending buffer starts this small and doubles: a session of a few events must not pay for a whole
 * block of raw keys (BLOCK·H·d floats: 256 KiB at H = 1, d = 64, 256 MiB at H = 64, d = 1024). */
#define PEND_MIN 16

/* A list is a sequence of fixed-size blocks of LB events, each one allocation holding ids[LB] (u32),
 * scales[LB·H] (float) and codes[LB·H·hb]. Fixed-size blocks, never reallocated: growing lists (online or
 * at restore) leave no holes in the heap, and the slack is under one block per list. */
#define LB 128

typedef struct {
    unsigned char **blk;
    size_t nblk, blk_alloc;
    size_t n;
} ivlist;

struct ma_ivf {
    int H, d;
    size_t D, hb, cb;  /* floats per key; code bytes per head; code bytes per event */
    size_t blk_bytes;  /* one list block */
    uint64_t count;
    uint64_t assigned; /* events [0, assigned) are in lists (a multiple of BLOCK); the rest pending */
    uint32_t nlist;    /* 0 before the first build */
    float *cent;       /* nlist × D unit rows */
    ivlist *lists;
    float *pend;       /* (count − assigned) × D raw keys */
    size_t pend_cap;   /* events */
    uint64_t built_at;
    uint32_t builds;
};

/* ---- helpers --------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint64_t below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix(s) * n) >> 64);
}

/* The clustering direction of a key: heads normalised one by one, concatenated, scaled by 1/sqrt(H). */
static void direction(const ma_ivf *x, const float *k, float *out)
{
    const double hs = 1.0 / sqrt((double)x->H);
    for (int h = 0; h < x->H; h++) {
        const float *kh = k + (size_t)h * x->d;
        double nn = 0;
        for (int j = 0; j < x->d; j++)
            nn += (double)kh[j] * kh[j];
        double f = nn > 0 ? hs / sqrt(nn) : 0;
        for (int j = 0; j < x->d; j++)
            out[(size_t)h * x->d + j] = (float)(kh[j] * f);
    }
}

/* Nearest centroid (largest dot product, first on ties) of each of n directions X (n × D) into a. */
static void nearest(const float *cent, uint32_t nlist, size_t D, const float *X, size_t n, float *S,
                    uint32_t *a)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)nlist, (int)D, 1.0f, X, (int)D, cent,
                (int)D, 0.0f, S, (int)nlist);
    for (size_t i = 0; i < n; i++) {
        const float *s = S + i * nlist;
        /* The maximum with 8 independent lanes (the compiler turns them into one vector max), then the
         * first index holding it: the same answer as a scalar scan, several times faster at large nlist. */
        float m8[8];
        for (int l = 0; l < 8; l++)
            m8[l] = s[0];
        uint32_t c = 0;
        for (; c + 8 <= nlist; c += 8)
            for (int l = 0; l < 8; l++)
                m8[l] = s[c + l] > m8[l] ? s[c + l] : m8[l];
        float mx = m8[0];
        for (int l = 1; l < 8; l++)
            mx = m8[l] > mx ? m8[l] : mx;
        for (; c < nlist; c++)
            mx = s[c] > mx ? s[c] : mx;
        uint32_t best = 0;
        while (best < nlist && s[best] != mx)
            best++;
        a[i] = best < nlist ? best : 0;   /* only a NaN score (non-finite key) misses: list 0 */
    }
}

/* The 4-bit code and the scale of one key (all heads). */
static void encode(const ma_ivf *x, const float *k, float *scale, uint8_t *code)
{
    for (int h = 0; h < x->H; h++) {
        const float *kh = k + (size_t)h * x->d;
        uint8_t *ch = code + (size_t)h * x->hb;
        float m = 0;
        for (int j = 0; j < x->d; j++)
            m = fabsf(kh[j]) > m ? fabsf(kh[j]) : m;
        float inv = m > 0 ? 7.0f / m : 0.0f;
        scale[h] = m / 7.0f;
        for (size_t j = 0; j < x->hb; j++) {
            int lo = 8, hi = 8;
            if (j < (size_t)x->d) {
                long u = lrintf(kh[j] * inv);
                lo = (int)(u < -7 ? -7 : u > 7 ? 7 : u) + 8;
            }
            if (j + x->hb < (size_t)x->d) {
                long u = lrintf(kh[j + x->hb] * inv);
                hi = (int)(u < -7 ? -7 : u > 7 ? 7 : u) + 8;
            }
            ch[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

/* sum_j qlo_j·(c_j & 15) + qhi_j·(c_j >> 4). Written so that GCC vectorises it at -O2 for the common
 * hb (d = 64: 32 bytes), through the constant-trip-count copy; the generic loop serves other d. */
static int32_t dot_generic(const uint8_t *c, const int16_t *qlo, const int16_t *qhi, size_t hb)
{
    int32_t acc = 0;
    for (size_t j = 0; j < hb; j++)
        acc += qlo[j] * (c[j] & 15) + qhi[j] * (c[j] >> 4);
    return acc;
}

static int32_t dot_32(const uint8_t *c, const int16_t *qlo, const int16_t *qhi)
{
    int32_t acc = 0;
    for (size_t j = 0; j < 32; j++)
        acc += qlo[j] * (c[j] & 15) + qhi[j] * (c[j] >> 4);
    return acc;
}

/* The query in the codes' terms, per head: int8 halves, the scale, and sum_j q8_j (for the −8 offset). */
typedef struct {
    int16_t *lo, *hi;  /* H × hb each */
    int8_t *lo8, *hi8; /* the same as bytes (for the AVX2 kernel) */
    float *qs;         /* H */
    int32_t *qsum;     /* H */
} qcode;

static void qcode_free(qcode *qc)
{
    free(qc->lo);
    free(qc->hi);
    free(qc->lo8);
    free(qc->hi8);
    free(qc->qs);
    free(qc->qsum);
}

static int qcode_make(const ma_ivf *x, const float *q, qcode *qc)
{
    qc->lo = calloc((size_t)x->H * x->hb, sizeof *qc->lo);
    qc->hi = calloc((size_t)x->H * x->hb, sizeof *qc->hi);
    qc->qs = malloc((size_t)x->H * sizeof *qc->qs);
    qc->qsum = malloc((size_t)x->H * sizeof *qc->qsum);
    qc->lo8 = calloc((size_t)x->H * x->hb, 1);
    qc->hi8 = calloc((size_t)x->H * x->hb, 1);
    if (!qc->lo || !qc->hi || !qc->qs || !qc->qsum || !qc->lo8 || !qc->hi8) {
        qcode_free(qc);
        return MA_ENOMEM;
    }
    for (int h = 0; h < x->H; h++) {
        const float *qh = q + (size_t)h * x->d;
        float m = 0;
        for (int j = 0; j < x->d; j++)
            m = fabsf(qh[j]) > m ? fabsf(qh[j]) : m;
        float inv = m > 0 ? 127.0f / m : 0.0f;
        qc->qs[h] = m / 127.0f;
        int32_t sum = 0;
        for (int j = 0; j < x->d; j++) {
            long u = lrintf(qh[j] * inv);
            int16_t v = (int16_t)(u < -127 ? -127 : u > 127 ? 127 : u);
            if ((size_t)j < x->hb) {
                qc->lo[(size_t)h * x->hb + j] = v;
                qc->lo8[(size_t)h * x->hb + j] = (int8_t)v;
            } else {
                qc->hi[(size_t)h * x->hb + j - x->hb] = v;
                qc->hi8[(size_t)h * x->hb + j - x->hb] = (int8_t)v;
            }
            sum += v;
        }
        qc->qsum[h] = sum;
    }
    return 0;
}

static uint32_t *blk_ids(unsigned char *b) { return (uint32_t *)b; }
static float *blk_scale(unsigned char *b) { return (float *)(b + LB * sizeof(uint32_t)); }
static uint8_t *blk_codes(const ma_ivf *x, unsigned char *b)
{
    return b + LB * (sizeof(uint32_t) + (size_t)x->H * sizeof(float));
}

#if defined(__AVX2__)
/* The same integer as dot_32 (exact: no saturation, |products| <= 15·127, pair sums <= 3,810, the two
 * halves' sum <= 7,620 in int16), with vpmaddubsw on 32 code bytes at once. */
/* Eight int32 partial sums of one event's dot product. */
static inline __m256i part_32_avx2(const uint8_t *c, __m256i ql, __m256i qh)
{
    const __m256i mask = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256i b = _mm256_loadu_si256((const __m256i *)c);
    __m256i lo = _mm256_and_si256(b, mask), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ql), _mm256_maddubs_epi16(hi, qh));
    return _mm256_madd_epi16(p, ones);
}

/* The dot products of four consecutive events (32 code bytes each), reduced together. */
static inline __m128i dot4_32_avx2(const uint8_t *c, __m256i ql, __m256i qh)
{
    __m256i a = part_32_avx2(c, ql, qh), b = part_32_avx2(c + 32, ql, qh);
    __m256i e = part_32_avx2(c + 64, ql, qh), d = part_32_avx2(c + 96, ql, qh);
    __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(e, d));
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

static inline int32_t dot_32_avx2(const uint8_t *c, __m256i ql, __m256i qh)
{
    __m256i w = part_32_avx2(c, ql, qh);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}
#endif

/* Estimates of q . k for the n events of a list into s, block by block. The integer dot products are
 * exact whichever kernel computes them, so every build answers with the same bits. */
static void score_list(const ma_ivf *x, const ivlist *l, const qcode *qc, float *s)
{
    const int H = x->H;
    for (size_t b0 = 0; b0 < l->n; b0 += LB) {
        unsigned char *b = l->blk[b0 / LB];
        const size_t m = l->n - b0 < LB ? l->n - b0 : LB;
        const uint8_t *codes = blk_codes(x, b);
        const float *sc = blk_scale(b);
        float *out = s + b0;
#if defined(__AVX2__)
        if (x->hb == 32 && H == 1) {
            const __m256i ql = _mm256_loadu_si256((const __m256i *)qc->lo8);
            const __m256i qh = _mm256_loadu_si256((const __m256i *)qc->hi8);
            const float f = qc->qs[0];
            const int32_t off = 8 * qc->qsum[0];
            const __m128i voff = _mm_set1_epi32(off);
            const __m128 vf = _mm_set1_ps(f);
            size_t i = 0;
            /* Four at a time; the same IEEE operations in the same order as the scalar tail. */
            for (; i + 4 <= m; i += 4) {
                __m128i dot = _mm_sub_epi32(dot4_32_avx2(codes + i * 32, ql, qh), voff);
                __m128 v = _mm_mul_ps(_mm_mul_ps(vf, _mm_loadu_ps(sc + i)), _mm_cvtepi32_ps(dot));
                _mm_storeu_ps(out + i, v);
            }
            for (; i < m; i++)
                out[i] = f * sc[i] * (float)(dot_32_avx2(codes + i * 32, ql, qh) - off);
            continue;
        }
#endif
        for (size_t i = 0; i < m; i++) {
            const uint8_t *c = codes + i * x->cb;
            float acc = 0;
            for (int h = 0; h < H; h++) {
                const uint8_t *ch = c + (size_t)h * x->hb;
                const int16_t *lo = qc->lo + (size_t)h * x->hb, *hi = qc->hi + (size_t)h * x->hb;
                int32_t dot;
#if defined(__AVX2__)
                if (x->hb == 32)
                    dot = dot_32_avx2(ch, _mm256_loadu_si256((const __m256i *)(qc->lo8 + (size_t)h * 32)),
                                      _mm256_loadu_si256((const __m256i *)(qc->hi8 + (size_t)h * 32)));
                else
#endif
                    dot = x->hb == 32 ? dot_32(ch, lo, hi) : dot_generic(ch, lo, hi, x->hb);
                acc += qc->qs[h] * sc[i * (size_t)H + h] * (float)(dot - 8 * qc->qsum[h]);
            }
            out[i] = acc;
        }
    }
}

/* Ensures blocks for `need` events. MA_ENOMEM leaves the list valid (maybe with a spare block). */
static int list_reserve(const ma_ivf *x, ivlist *l, size_t need)
{
    while (l->nblk * LB < need) {
        if (l->nblk == l->blk_alloc) {
            size_t na = l->blk_alloc ? l->blk_alloc * 2 : 4;
            unsigned char **p = realloc(l->blk, na * sizeof *p);
            if (!p)
                return MA_ENOMEM;
            l->blk = p;
            l->blk_alloc = na;
        }
        unsigned char *b = malloc(x->blk_bytes);
        if (!b)
            return MA_ENOMEM;
        l->blk[l->nblk++] = b;
    }
    return 0;
}

/* Appends event id (key k) to list l, which has room. */
static void list_push(const ma_ivf *x, ivlist *l, uint64_t id, const float *k)
{
    unsigned char *b = l->blk[l->n / LB];
    size_t r = l->n % LB;
    blk_ids(b)[r] = (uint32_t)id;
    encode(x, k, blk_scale(b) + r * (size_t)x->H, blk_codes(x, b) + r * x->cb);
    l->n++;
}

/* Frees spare blocks (left by a failed add) and spare block pointers. */
static void shrink(ivlist *lists, uint32_t nlist)
{
    for (uint32_t c = 0; c < nlist; c++) {
        ivlist *l = &lists[c];
        size_t need = (l->n + LB - 1) / LB;
        while (l->nblk > need)
            free(l->blk[--l->nblk]);
        if (l->blk_alloc > l->nblk && l->nblk) {
            unsigned char **p = realloc(l->blk, l->nblk * sizeof *p);
            if (p) {
                l->blk = p;
                l->blk_alloc = l->nblk;
            }
        }
    }
}

void ma_ivf_shrink(ma_ivf *x)
{
    shrink(x->lists, x->nlist);
}

static void lists_free(ivlist *l, uint32_t n)
{
    if (!l)
        return;
    for (uint32_t i = 0; i < n; i++) {
        for (size_t b = 0; b < l[i].nblk; b++)
            free(l[i].blk[b]);
        free(l[i].blk);
    }
    free(l);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static ma_ivf *alloc_ivf(int H, int d)
{
    ma_ivf *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->H = H;
    x->d = d;
    x->D = (size_t)H * d;
    x->hb = ((size_t)d + 1) / 2;
    x->cb = (size_t)H * x->hb;
    x->blk_bytes = LB * (sizeof(uint32_t) + (size_t)H * sizeof(float) + x->cb);
    return x;
}

int ma_ivf_create(int H, int d, ma_ivf **out)
{
    if (H < 1 || d < 1 || !out)
        return MA_EINVAL;
    ma_ivf *x = alloc_ivf(H, d);
    if (!x)
        return MA_ENOMEM;
    *out = x;
    return 0;
}

void ma_ivf_destroy(ma_ivf *x)
{
    if (!x)
        return;
    lists_free(x->lists, x->nlist);
    free(x->cent);
    free(x->pend);
    free(x);
}

uint64_t ma_ivf_count(const ma_ivf *x)
{
    return x->count;
}

uint32_t ma_ivf_nlist(const ma_ivf *x)
{
    return x->nlist;
}

uint32_t ma_ivf_builds(const ma_ivf *x)
{
    return x->builds;
}

size_t ma_ivf_bytes(const ma_ivf *x)
{
    size_t b = sizeof *x + (size_t)x->nlist * (sizeof(ivlist) + x->D * sizeof(float));
    for (uint32_t i = 0; i < x->nlist; i++)
        b += x->lists[i].nblk * x->blk_bytes + x->lists[i].blk_alloc * sizeof(unsigned char *);
    return b + x->pend_cap * x->D * sizeof(float);
}

/* ---- add ------------------------------------------------------------------------------------- */

int ma_ivf_add(ma_ivf *x, size_t n, const float *k)
{
    if (n == 0)
        return 0;
    if (x->count + n > UINT32_MAX)
        return MA_ENOMEM;   /* ids are 32-bit */
    const size_t D = x->D;
    size_t np = (size_t)(x->count - x->assigned);
    int rc = MA_ENOMEM;
    uint32_t *asg = NULL;
    size_t *extra = NULL;
    float *X = NULL, *S = NULL;

    /* Room for the new keys behind the pending ones (visible state changes only at the end). */
    if (np + n > x->pend_cap) {
        size_t cap = x->pend_cap ? x->pend_cap * 2 : PEND_MIN;
        while (cap < np + n)
            cap *= 2;
        float *p = realloc(x->pend, cap * D * sizeof(float));
        if (!p)
            return MA_ENOMEM;
        x->pend = p;
        x->pend_cap = cap;
    }
    memcpy(x->pend + np * D, k, n * D * sizeof(float));

    size_t nb = x->cent ? (np + n) / BLOCK : 0;   /* complete blocks to assign */
    if (nb) {
        asg = malloc(nb * BLOCK * sizeof *asg);
        extra = calloc(x->nlist, sizeof *extra);
        X = malloc((size_t)BLOCK * D * sizeof(float));
        S = malloc((size_t)BLOCK * x->nlist * sizeof(float));
        if (!asg || !extra || !X || !S)
            goto done;
        for (size_t b = 0; b < nb; b++) {
            for (size_t i = 0; i < BLOCK; i++)
                direction(x, x->pend + (b * BLOCK + i) * D, X + i * D);
            nearest(x->cent, x->nlist, D, X, BLOCK, S, asg + b * BLOCK);
        }
        for (size_t i = 0; i < nb * BLOCK; i++)
            extra[asg[i]]++;
        for (uint32_t c = 0; c < x->nlist; c++)
            if (extra[c] && list_reserve(x, &x->lists[c], x->lists[c].n + extra[c]) != 0)
                goto done;
        for (size_t i = 0; i < nb * BLOCK; i++)
            list_push(x, &x->lists[asg[i]], x->assigned + i, x->pend + i * D);
        memmove(x->pend, x->pend + nb * BLOCK * D, (np + n - nb * BLOCK) * D * sizeof(float));
        x->assigned += nb * BLOCK;
    }
    x->count += n;
    rc = 0;
done:
    free(asg);
    free(extra);
    free(X);
    free(S);
    return rc;
}

int ma_ivf_want_rebuild(const ma_ivf *x)
{
    return x->count >= MA_IVF_MIN_BUILD && x->count >= 2 * x->built_at;
}

/* ---- rebuild --------------------------------------------------------------------------------- */

/* Lloyd iterations of spherical k-means on the m training directions X; cent (nlist × D) is initialised
 * here. */
static int kmeans(const ma_ivf *x, const float *X, size_t m, uint32_t nlist, float *cent, uint64_t *rng)
{
    const size_t D = x->D;
    int rc = MA_ENOMEM;
    size_t *perm = malloc(m * sizeof *perm);
    uint32_t *asg = malloc(m * sizeof *asg);
    size_t bn = m < BLOCK ? m : BLOCK;
    float *S = malloc(bn * nlist * sizeof(float));
    double *sum = malloc((size_t)nlist * D * sizeof(double));
    size_t *cnt = malloc(nlist * sizeof *cnt);
    if (!perm || !asg || !S || !sum || !cnt)
        goto done;

    /* Initial centroids: the first nlist of a random permutation of the training points. */
    for (size_t i = 0; i < m; i++)
        perm[i] = i;
    for (uint32_t c = 0; c < nlist; c++) {
        size_t j = c + (size_t)below(rng, m - c);
        size_t t = perm[c];
        perm[c] = perm[j];
        perm[j] = t;
        memcpy(cent + (size_t)c * D, X + perm[c] * D, D * sizeof(float));
    }

    for (int it = 0; it < MA_IVF_ITERS; it++) {
        for (size_t i0 = 0; i0 < m; i0 += bn) {
            size_t b = m - i0 < bn ? m - i0 : bn;
            nearest(cent, nlist, D, X + i0 * D, b, S, asg + i0);
        }
        memset(sum, 0, (size_t)nlist * D * sizeof(double));
        memset(cnt, 0, nlist * sizeof *cnt);
        for (size_t i = 0; i < m; i++) {
            double *s = sum + (size_t)asg[i] * D;
            const float *xi = X + i * D;
            for (size_t j = 0; j < D; j++)
                s[j] += xi[j];
            cnt[asg[i]]++;
        }
        for (uint32_t c = 0; c < nlist; c++) {
            float *ce = cent + (size_t)c * D;
            const double *s = sum + (size_t)c * D;
            double nn = 0;
            for (size_t j = 0; j < D; j++)
                nn += s[j] * s[j];
            if (cnt[c] == 0 || nn == 0) {
                /* Empty cluster: reseed with a random training point (it will take its neighbours). */
                memcpy(ce, X + (size_t)below(rng, m) * D, D * sizeof(float));
                continue;
            }
            double f = 1.0 / sqrt(nn);
            for (size_t j = 0; j < D; j++)
                ce[j] = (float)(s[j] * f);
        }
    }
    rc = 0;
done:
    free(perm);
    free(asg);
    free(S);
    free(sum);
    free(cnt);
    return rc;
}

int ma_ivf_rebuild(ma_ivf *x, ma_ivf_loader load, void *ctx)
{
    const uint64_t T = x->count;
    if (T == 0)
        return 0;
    const size_t D = x->D;
    uint32_t nlist = (uint32_t)llround(sqrt((double)T));
    if (nlist < 1)
        nlist = 1;
    size_t m = (size_t)nlist * MA_IVF_TRAIN_PER_LIST;
    if (m > T)
        m = (size_t)T;
    const uint64_t A = T / BLOCK * BLOCK;   /* assigned after the rebuild */
    const size_t np = (size_t)(T - A);

    int rc = MA_ENOMEM;
    float *X = malloc(m * D * sizeof(float));
    float *cent = malloc((size_t)nlist * D * sizeof(float));
    float *B = malloc((size_t)BLOCK * D * sizeof(float));
    float *Bd = malloc((size_t)BLOCK * D * sizeof(float));
    float *S = malloc((size_t)BLOCK * nlist * sizeof(float));
    uint32_t *ba = malloc(BLOCK * sizeof *ba);
    float *pend = malloc((np > PEND_MIN ? np : PEND_MIN) * D * sizeof(float));
    ivlist *nl = calloc(nlist, sizeof *nl);
    if (!X || !cent || !B || !Bd || !S || !ba || !pend || !nl)
        goto fail;

    /* Pass 1, training sample: Knuth's selection sampling, m of T ids in increasing order. */
    uint64_t rng = 0x6d656d6174746e00ull ^ x->builds;
    size_t got = 0;
    for (uint64_t first = 0; first < T && got < m; first += BLOCK) {
        size_t n = T - first < BLOCK ? (size_t)(T - first) : BLOCK;
        if ((rc = load(ctx, first, n, B)) != 0)
            goto fail;
        for (size_t i = 0; i < n && got < m; i++)
            if (below(&rng, T - first - i) < m - got)
                direction(x, B + i * D, X + got++ * D);
    }
    rc = kmeans(x, X, m, nlist, cent, &rng);
    if (rc)
        goto fail;

    /* Pass 2: every complete block assigned with the new centroids (the same sgemm shape as ma_ivf_add);
     * the incomplete last block becomes the pending keys. */
    for (uint64_t first = 0; first < T; first += BLOCK) {
        size_t n = T - first < BLOCK ? (size_t)(T - first) : BLOCK;
        if ((rc = load(ctx, first, n, B)) != 0)
            goto fail;
        if (first >= A) {
            memcpy(pend, B, n * D * sizeof(float));
            break;
        }
        for (size_t i = 0; i < BLOCK; i++)
            direction(x, B + i * D, Bd + i * D);
        nearest(cent, nlist, D, Bd, BLOCK, S, ba);
        rc = MA_ENOMEM;
        for (size_t i = 0; i < BLOCK; i++) {
            ivlist *l = &nl[ba[i]];
            if (list_reserve(x, l, l->n + 1) != 0)
                goto fail;
            list_push(x, l, first + i, B + i * D);
        }
    }
    shrink(nl, nlist);

    lists_free(x->lists, x->nlist);
    free(x->cent);
    free(x->pend);
    x->lists = nl;
    x->cent = cent;
    x->nlist = nlist;
    x->pend = pend;
    x->pend_cap = np > PEND_MIN ? np : PEND_MIN;
    x->assigned = A;
    x->built_at = T;
    x->builds++;
    nl = NULL;
    cent = NULL;
    pend = NULL;
    rc = 0;
fail:
    lists_free(nl, nlist);
    free(X);
    free(cent);
    free(B);
    free(Bd);
    free(S);
    free(ba);
    free(pend);
    return rc;
}

/* ---- search ---------------------------------------------------------------------------------- */

/* LSD radix sort, 8 bits a pass, as many passes as the largest id needs (the picked ids are many and
 * small: a comparison sort was a third of a query's time). */
static int sort_ids(uint64_t *a, size_t n)
{
    uint64_t mx = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] > mx)
            mx = a[i];
    uint64_t *t = malloc((n ? n : 1) * sizeof *t);
    if (!t)
        return MA_ENOMEM;
    uint64_t *src = a, *dst = t;
    for (int shift = 0; shift < 64 && (mx >> shift) != 0; shift += 8) {
        size_t cnt[257] = {0};
        for (size_t i = 0; i < n; i++)
            cnt[((src[i] >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++)
            cnt[b + 1] += cnt[b];
        for (size_t i = 0; i < n; i++)
            dst[cnt[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *x = src;
        src = dst;
        dst = x;
    }
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    free(t);
    return 0;
}

/* A search candidate: its score, its position in probe order (for ties) and its id. */
typedef struct {
    float s;
    uint64_t pos, id;
} cand;

/* a ranks below b: lower score, or equal score and later position. */
static bool worse(const cand *a, const cand *b)
{
    return a->s < b->s || (a->s == b->s && a->pos > b->pos);
}

/* Min-heap (the worst at the root) of at most cap candidates: c enters if there is room, else replaces the
 * root when better than it. */
static void heap_put(cand *h, size_t *n, size_t cap, cand c)
{
    size_t i;
    if (*n < cap) {
        i = (*n)++;
        while (i > 0 && worse(&c, &h[(i - 1) / 2])) {
            h[i] = h[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        h[i] = c;
        return;
    }
    i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        const cand *wc = &c;
        if (l < *n && worse(&h[l], wc))
            w = l, wc = &h[l];
        if (r < *n && worse(&h[r], wc))
            w = r, wc = &h[r];
        if (w == i)
            break;
        h[i] = h[w];
        i = w;
    }
    h[i] = c;
}

int ma_ivf_search(const ma_ivf *x, const float *q, int nprobe, size_t max_ids, uint64_t *ids, size_t *n_ids,
                  uint64_t *scored)
{
    const size_t D = x->D;
    int rc = MA_ENOMEM;
    size_t np = nprobe < 1 ? 1 : (size_t)nprobe;
    if (np > x->nlist)
        np = x->nlist;
    float *qd = malloc(D * sizeof(float));
    float *cs = malloc(((size_t)x->nlist + 1) * sizeof(float));
    size_t *probe = malloc((np + 1) * sizeof *probe);
    float *s = NULL;
    cand *heap = NULL;
    qcode qc = {0};
    if (!qd || !cs || !probe || qcode_make(x, q, &qc) != 0)
        goto done;

    size_t got = 0;
    if (x->nlist) {
        direction(x, q, qd);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)x->nlist, (int)D, 1.0f, x->cent, (int)D, qd, 1, 0.0f, cs, 1);
        /* An empty list (a centroid that won no event at reassignment) is never worth a probe. */
        for (uint32_t c = 0; c < x->nlist; c++)
            if (x->lists[c].n == 0)
                cs[c] = -INFINITY;
        if (ma_topk(cs, x->nlist, np, probe, &got) != 0)
            goto done;
    }

    /* Scores list by list into s, each fed to a bounded heap of the best max_ids (ties: the earlier
     * position in probe order, then the pending events), so no array of every probed score is kept. */
    const size_t npend = (size_t)(x->count - x->assigned);
    size_t total = npend, longest = npend;
    for (size_t i = 0; i < got; i++) {
        total += x->lists[probe[i]].n;
        if (x->lists[probe[i]].n > longest)
            longest = x->lists[probe[i]].n;
    }
    size_t keep = max_ids < total ? max_ids : total;
    s = malloc((longest ? longest : 1) * sizeof(float));
    heap = malloc((keep ? keep : 1) * sizeof *heap);
    if (!s || !heap)
        goto done;
    size_t n = 0;
    uint64_t pos = 0;
    for (size_t i = 0; i <= got; i++) {
        size_t m;
        const ivlist *l = i < got ? &x->lists[probe[i]] : NULL;
        if (l) {
            score_list(x, l, &qc, s);
            m = l->n;
        } else {
            m = npend;
            if (m)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, (int)D, 1.0f, x->pend, (int)D, q, 1, 0.0f, s, 1);
        }
        for (size_t j = 0; j < m && keep; j++, pos++) {
            cand c = {isnan(s[j]) ? -INFINITY : s[j], pos, 0};
            if (n == keep && !worse(&heap[0], &c))
                continue;
            c.id = l ? blk_ids(l->blk[j / LB])[j % LB] : x->assigned + j;
            heap_put(heap, &n, keep, c);
        }
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = heap[i].id;
    if (sort_ids(ids, n) != 0)
        goto done;
    *n_ids = n;
    if (scored)
        *scored = total;
    rc = 0;
done:
    qcode_free(&qc);
    free(qd);
    free(cs);
    free(probe);
    free(s);
    free(heap);
    return rc;
}

/* ---- serialisation --------------------------------------------------------------------------- */

/* A core/blob.h blob of kind "IVFX" with one section "CENT" v1: u32 H, d, nlist, builds | u64 built_at |
 * centroids (nlist·H·d f32). Legacy format (read, never written): magic "MAIVFV2\0", u32 version 2, the
 * CENT fields, u64 FNV-1a 64 of everything before, in host order (little-endian on every machine the
 * project ran on). */
#define LEGACY_MAGIC   "MAIVFV2\0"
#define LEGACY_VERSION 2u
#define BLOB_KIND      MA_BLOB_TAG("IVFX")

int ma_ivf_serialize(const ma_ivf *x, void **buf, size_t *len)
{
    ma_blob_writer w;
    ma_blob_begin(&w, BLOB_KIND);
    ma_blob_section_begin(&w, MA_BLOB_TAG("CENT"), 1);
    ma_blob_put_u32(&w, (uint32_t)x->H);
    ma_blob_put_u32(&w, (uint32_t)x->d);
    ma_blob_put_u32(&w, x->nlist);
    ma_blob_put_u32(&w, x->builds);
    ma_blob_put_u64(&w, x->built_at);
    ma_blob_put_f32s(&w, x->cent, (size_t)x->nlist * x->D);
    ma_blob_section_end(&w);
    return ma_blob_finish(&w, buf, len);
}

/* Opens either format; c then reads the CENT fields. */
static int open_cent(const void *buf, size_t len, ma_blob_reader *c)
{
    ma_blob_reader r;
    if (ma_blob_is_blob(buf, len))
        return ma_blob_open(&r, buf, len, BLOB_KIND) || ma_blob_section(&r, MA_BLOB_TAG("CENT"), 1, c) ||
                       ma_blob_done(&r) ? MA_ECORRUPT : 0;
    const unsigned char *b = buf;
    if (len < 8 + 4 + 8 || memcmp(b, LEGACY_MAGIC, 8) != 0)
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, b + len - 8, 8);
    if (ma_blob_get_u64(&r) != ma_fnv1a64(b, len - 8))
        return MA_ECORRUPT;
    ma_blob_reader_raw(c, b + 8, len - 16);
    return ma_blob_get_u32(c) == LEGACY_VERSION ? 0 : MA_ECORRUPT;
}

int ma_ivf_restore(int H, int d, const void *buf, size_t len, ma_ivf **out)
{
    if (!buf || !out || H < 1 || d < 1)
        return MA_EINVAL;
    ma_blob_reader c;
    if (open_cent(buf, len, &c))
        return MA_ECORRUPT;
    uint32_t h = ma_blob_get_u32(&c), dd = ma_blob_get_u32(&c), nlist = ma_blob_get_u32(&c),
             builds = ma_blob_get_u32(&c);
    uint64_t built_at = ma_blob_get_u64(&c);
    const size_t D = (size_t)H * d;
    /* A build always leaves centroids, and happens at MA_IVF_MIN_BUILD events or more. */
    if (c.bad || h != (uint32_t)H || dd != (uint32_t)d || (nlist == 0) != (builds == 0) ||
        (nlist == 0) != (built_at == 0) || (nlist && built_at < MA_IVF_MIN_BUILD) ||
        ma_blob_remaining(&c) != (size_t)nlist * D * sizeof(float))
        return MA_ECORRUPT;

    ma_ivf *x = alloc_ivf(H, d);
    if (!x)
        return MA_ENOMEM;
    x->builds = builds;
    x->built_at = built_at;
    if (nlist) {
        x->cent = malloc((size_t)nlist * D * sizeof(float));
        x->lists = calloc(nlist, sizeof *x->lists);
        if (!x->cent || !x->lists) {
            ma_ivf_destroy(x);
            return MA_ENOMEM;
        }
        x->nlist = nlist;
        ma_blob_get_f32s(&c, x->cent, (size_t)nlist * D);
    }
    *out = x;
    return 0;
}
