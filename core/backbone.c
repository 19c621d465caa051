/*
 * core/backbone.c — the fixed-state backbones behind core/backbone.h: VLA, linear attention, DeltaNet.
 *
 * Design (docs/BACKBONE.md has the algorithms and every constant):
 *  - Per head, the value state is kept TRANSPOSED, St = Sᵀ (d rows of d_v floats), and VLA's penalty
 *    matrix A as d rows of d floats; rows are padded to whole 16-float vectors and 64-byte aligned
 *    (core/bb_kernel.h). With Sᵀ, both "S x" and the delta-rule write S += e aᵀ become row sweeps.
 *  - Heads are independent, so an update batch runs head by head (outer) and event by event (inner): one
 *    head's A and S stay in L1/L2 for the whole batch instead of every head being touched per event.
 *  - VLA per event: one fused pass over A (Sherman–Morrison downdate + the product A·û of the NEXT
 *    event) and one fused pass over Sᵀ (the write + S·k̂ of the next event). With identity features the
 *    write direction needs no extra product: A_new k̂ = g (1 − c·k̂ᵀg) with g = A k̂ (see BACKBONE.md),
 *    and two events share each pass (rank-2 update; the second event's products are corrected for the
 *    first one's rank-1 change in O(d)), which halves the traffic over A and S — what limits d >= 128,
 *    where they no longer fit L1. DeltaNet uses the same two-event pass over Sᵀ.
 *    A stays exactly symmetric because its downdate is −h hᵀ with one product per element.
 *  - Linear attention's update is a sum of outer products, so a batch is one sgemm (OpenBLAS); small
 *    batches use the row-sweep kernel. Reads of every backbone are one sgemm per head and block of queries.
 *  - Matrix entries are float; norms and dot products feeding the scalar recurrence are summed in float
 *    lanes and reduced in double (in double throughout when squares would leave float's normal range);
 *    the scalar recurrence and z are double.
 *
 * Deliberately not here: locking (callers serialise updates, see the header), input validation beyond the
 * config (the server checks lengths and finiteness), anything about sessions, slots or the archive.
 */
#include "core/backbone.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/bb_kernel.h"
#include "core/blob.h"
#include "core/error.h"
#include "core/hash.h"

/* Constants of docs/BACKBONE.md that are not configuration. */
#define NORM_EPS     1e-12  /* normalize(x) = x / max(|x|, NORM_EPS): zero vectors stay zero */
#define DELTA_CLAMP  1e-4   /* VLA: delta = max(1 + uᵀA u, DELTA_CLAMP) */
#define VLA_DEN_EPS  1e-4   /* VLA normalised read: S phi(q) / max(zᵀphi(q), VLA_DEN_EPS) */
#define LIN_DEN_EPS  1e-6   /* linear read: S phi(q) / (max(zᵀphi(q), 0) + LIN_DEN_EPS) */
#define LIN_GEMM_MIN 16     /* linear update: batches at least this long go through sgemm */
#define READ_BLOCK   2048   /* floats of stack scratch for a block of normalised queries */
#define READ_GEMM_MIN 4     /* reads of fewer queries per head use the row sweep instead of sgemm */

struct ma_backbone {
    ma_backbone_kind kind;
    ma_feature feature;   /* phi of vla and linear; delta always normalises the raw key */
    int heads, dim, vdim;
    size_t ld, ldv;       /* padded row lengths of A (d) and of Sᵀ (d_v) */
    double lambda0, refresh, scale, beta;
    int period;
    uint64_t steps;
    float *S;             /* heads × dim × ldv: Sᵀ per head */
    float *A;             /* heads × dim × ld (vla only) */
    double *z;            /* heads × ld doubles: sum of phi(k) (vla, linear), zero padded */
    float *work;          /* update scratch, see work_floats() */
    size_t work_len;      /* floats in work */
};

/* ---- small helpers --------------------------------------------------------------------------- */

static void *alloc_floats(size_t n)
{
    size_t bytes = (n * sizeof(float) + BB_ALIGN - 1) / BB_ALIGN * BB_ALIGN;
    void *p = aligned_alloc(BB_ALIGN, bytes ? bytes : BB_ALIGN);
    if (p)
        memset(p, 0, bytes ? bytes : BB_ALIGN);
    return p;
}

/* A read scaled beyond float's range (a huge query over a tiny normaliser) saturates at ±FLT_MAX rather
 * than becoming inf (converting an out-of-range double to float is undefined in C). */
static inline float to_float(double x)
{
    return x > FLT_MAX ? FLT_MAX : x < -FLT_MAX ? -FLT_MAX : (float)x;
}

static inline float elu1(float x) { return x > 0.0f ? x + 1.0f : expf(x); }

/* dst[0..ld) = src[0..n) * inv, zero padded. The product is taken in double when inv is too large for a
 * float (keys of norm < ~1e-37), so tiny but nonzero keys still normalise to unit length. */
static void scale_into(float *dst, const float *src, size_t n, size_t ld, double inv)
{
    if (inv < 1e37) {
        const float f = (float)inv;
        for (size_t j = 0; j < n; j++)
            dst[j] = src[j] * f;
    } else {
        for (size_t j = 0; j < n; j++)
            dst[j] = (float)(src[j] * inv);
    }
    memset(dst + n, 0, (ld - n) * sizeof(float));
}

/* dst = normalize(x) (aligned, zero padded to ld); returns |x|. */
static double normalize_into(float *dst, const float *x, size_t n, size_t ld)
{
    bb_load(dst, x, n, ld);
    double nrm = bb_norm_padded(dst, ld);
    bb_scale(dst, ld, 1.0 / fmax(nrm, NORM_EPS));
    return nrm;
}

/* dst = phi(x) (zero padded to ld). */
static void phi_into(float *dst, const float *x, size_t n, size_t ld, ma_feature f)
{
    if (f == MA_FEATURE_ELU1)
        for (size_t j = 0; j < n; j++)
            dst[j] = elu1(x[j]);
    else
        memcpy(dst, x, n * sizeof(float));
    memset(dst + n, 0, (ld - n) * sizeof(float));
}

/* With H > 1 heads one head's key (or value) of consecutive events is H·d floats apart, a stride the
 * hardware prefetchers do not follow well; the update loops ask for the inputs a few events ahead. */
#define PREFETCH_AHEAD 8
static inline void prefetch_span(const float *p, size_t n)
{
    for (size_t off = 0; off < n; off += 64 / sizeof(float))
        __builtin_prefetch(p + off);
}

static ma_feature feature_of(const ma_backbone *b)
{
    return b->kind == MA_BACKBONE_DELTA ? MA_FEATURE_IDENTITY : b->feature;
}

/* Update scratch (see the *_update_head functions): VLA at most 14 vectors of ld floats and 6 of ldv;
 * delta 6 + 6; linear a block of 256 rows of phi(k) plus one vector of each length. */
static size_t work_floats(const ma_backbone *b)
{
    switch (b->kind) {
    case MA_BACKBONE_VLA:    return 14 * b->ld + 6 * b->ldv;
    case MA_BACKBONE_DELTA:  return 6 * b->ld + 6 * b->ldv;
    case MA_BACKBONE_LINEAR: return 256 * (size_t)b->dim + b->ld + b->ldv;
    default:                 return 0;
    }
}

/* ---- create / destroy ------------------------------------------------------------------------- */

static ma_backbone *alloc_backbone(const ma_params *p)
{
    ma_backbone *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->kind = p->backbone;
    b->feature = p->vla.feature;
    b->heads = p->heads;
    b->dim = p->dim;
    b->vdim = p->value_dim;
    b->ld = bb_pad((size_t)p->dim);
    b->ldv = bb_pad((size_t)p->value_dim);
    b->lambda0 = p->vla.lambda0;
    b->refresh = p->vla.refresh;
    b->scale = p->vla.penalty_scale;
    b->period = p->vla.period;
    b->beta = p->delta.beta;
    if (b->kind == MA_BACKBONE_NONE)
        return b;
    const size_t H = (size_t)b->heads, d = (size_t)b->dim;
    b->S = alloc_floats(H * d * b->ldv);
    if (!b->S)
        goto fail;
    if (b->kind == MA_BACKBONE_VLA) {
        b->A = alloc_floats(H * d * b->ld);
        if (!b->A)
            goto fail;
    }
    if (b->kind == MA_BACKBONE_VLA || b->kind == MA_BACKBONE_LINEAR) {
        b->z = alloc_floats(2 * H * b->ld);  /* H × ld doubles */
        if (!b->z)
            goto fail;
    }
    b->work_len = work_floats(b);
    b->work = alloc_floats(b->work_len);
    if (!b->work)
        goto fail;
    return b;
fail:
    ma_backbone_destroy(b);
    return NULL;
}

int ma_backbone_create(const ma_params *p, ma_backbone **out)
{
    if (!p || !out || ma_params_validate(p, NULL, 0) != 0)
        return MA_EINVAL;
    ma_backbone *b = alloc_backbone(p);
    if (!b)
        return MA_ENOMEM;
    if (b->A) {
        const float a0 = (float)(1.0 / b->lambda0);
        for (int h = 0; h < b->heads; h++) {
            float *A = b->A + (size_t)h * b->dim * b->ld;
            for (int j = 0; j < b->dim; j++)
                A[(size_t)j * b->ld + j] = a0;
        }
    }
    *out = b;
    return 0;
}

void ma_backbone_destroy(ma_backbone *b)
{
    if (!b)
        return;
    free(b->S);
    free(b->A);
    free(b->z);
    free(b->work);
    free(b);
}

/* ---- update ----------------------------------------------------------------------------------- */

/* Normalised key(s) of one event for VLA: u = normalize(k) (the penalty direction, before the scale s)
 * and kp = normalize(phi(k)) (the write key); with identity features kp is u. Adds phi(k) to z. */
static void vla_prepare(const ma_backbone *b, const float *k, float *u, float *kp, double *z)
{
    const size_t d = (size_t)b->dim, ld = b->ld;
    if (b->feature == MA_FEATURE_IDENTITY) {
        bb_load(u, k, d, ld);
        bb_acc_double(z, u, ld);
        bb_scale(u, ld, 1.0 / fmax(bb_norm_padded(u, ld), NORM_EPS));
        return;
    }
    normalize_into(u, k, d, ld);
    phi_into(kp, k, d, ld, b->feature);
    bb_acc_double(z, kp, ld);
    bb_scale(kp, ld, 1.0 / fmax(bb_norm_padded(kp, ld), NORM_EPS));
}

/* One VLA event's scalar recurrence with identity features, given g = A û for the current A:
 * h = sqrt(c)·g (the downdate is -h hᵀ), nh = -h, alpha = normalize(A_new û) = normalize(g (1 − c·ûᵀg)
 * + [refresh] r·û). */
static void vla_direction(const ma_backbone *b, const float *u, const float *g, int refresh, float *hv,
                          float *nh, float *alpha)
{
    const size_t nvec = b->ld / BB_LANES;
    const double s2 = b->scale * b->scale;
    const double q = bb_dot(u, g, b->ld);
    const double c = s2 / fmax(1.0 + s2 * q, DELTA_CLAMP);
    const float cg = (float)(c * q), sc = (float)sqrt(c), rf = (float)b->refresh;
    for (size_t j = 0; j < nvec; j++) {
        BB_V(alpha)[j] = BB_V(g)[j] - cg * BB_V(g)[j];
        BB_V(hv)[j] = sc * BB_V(g)[j];
        BB_V(nh)[j] = -BB_V(hv)[j];
    }
    if (refresh)
        for (size_t j = 0; j < nvec; j++)
            BB_V(alpha)[j] += rf * BB_V(u)[j];
    bb_scale(alpha, b->ld, 1.0 / fmax(bb_norm_padded(alpha, b->ld), NORM_EPS));
}

/* VLA with identity features, two events per pass over A and over Sᵀ (t0 as for the single version). With A' = A − h0 h0ᵀ (+ r·I),
 * the second event's g1 = A' û1 = A û1 − h0 (h0ᵀû1) (+ r û1), and S' û1 = S û1 + e0 (α̂0ᵀû1): the pass
 * that applies both downdates (both writes) also yields A'' û and S'' û for the next two events. */
static void vla_update_head_pairs(ma_backbone *b, int h, size_t n, const float *k, const float *v,
                                  uint64_t t0)
{
    const size_t d = (size_t)b->dim, dv = (size_t)b->vdim, ld = b->ld, ldv = b->ldv;
    const size_t kstride = (size_t)b->heads * d, vstride = (size_t)b->heads * dv;
    const size_t nvec = ld / BB_LANES, nvecv = ldv / BB_LANES;
    const uint64_t period = (uint64_t)b->period;
    const float rf = (float)b->refresh;
    float *A = b->A + (size_t)h * d * ld, *St = b->S + (size_t)h * d * ldv;
    double *z = b->z + (size_t)h * ld;
    float *w = b->work, *wv = b->work + 14 * ld;
    float *u[4] = {w, w + ld, w + 2 * ld, w + 3 * ld}, *g[4] = {w + 4 * ld, w + 5 * ld, w + 6 * ld, w + 7 * ld};
    float *hv[2] = {w + 8 * ld, w + 9 * ld}, *nh[2] = {w + 10 * ld, w + 11 * ld};
    float *al[2] = {w + 12 * ld, w + 13 * ld};
    float *pS[4] = {wv, wv + ldv, wv + 2 * ldv, wv + 3 * ldv}, *e[2] = {wv + 4 * ldv, wv + 5 * ldv};
#define KEY(i) (k + (i) * kstride + (size_t)h * d)
#define VAL(i) (v + (i) * vstride + (size_t)h * dv)

    vla_prepare(b, KEY(0), u[0], NULL, z);
    if (n > 1)
        vla_prepare(b, KEY(1), u[1], NULL, z);
    bb_rank2_matvec(A, ld, d, NULL, NULL, NULL, NULL, u[0], g[0], n > 1 ? u[1] : NULL, g[1]);
    bb_rank2_matvec(St, ldv, d, NULL, NULL, NULL, NULL, u[0], pS[0], n > 1 ? u[1] : NULL, pS[1]);
    for (size_t i = 0, P = 0; i < n; i += 2, P ^= 2) {
        const size_t c0 = P, c1 = P + 1, n0 = P ^ 2, n1 = (P ^ 2) + 1;
        const int ref0 = (t0 + i + 1) % period == 0, ref1 = (t0 + i + 2) % period == 0;
        vla_direction(b, u[c0], g[c0], ref0, hv[0], nh[0], al[0]);
        bb_load(e[0], VAL(i), dv, ldv);
        for (size_t j = 0; j < nvecv; j++)
            BB_V(e[0])[j] -= BB_V(pS[c0])[j];
        if (i + 1 == n) {  /* an odd event at the end */
            bb_rank1_matvec(A, ld, d, nh[0], hv[0], NULL, NULL, NULL, NULL);
            if (ref0)
                for (size_t j = 0; j < d; j++)
                    A[j * ld + j] += rf;
            bb_rank1_matvec(St, ldv, d, al[0], e[0], NULL, NULL, NULL, NULL);
            break;
        }
        const int has2 = i + 2 < n, has3 = i + 3 < n;
        if (b->heads > 1 && i + PREFETCH_AHEAD + 1 < n) {
            prefetch_span(KEY(i + PREFETCH_AHEAD), d), prefetch_span(KEY(i + PREFETCH_AHEAD + 1), d);
            prefetch_span(VAL(i + PREFETCH_AHEAD), dv), prefetch_span(VAL(i + PREFETCH_AHEAD + 1), dv);
        }
        if (has2)
            vla_prepare(b, KEY(i + 2), u[n0], NULL, z);
        if (has3)
            vla_prepare(b, KEY(i + 3), u[n1], NULL, z);

        /* The second event sees the first one's downdate, refresh and write. */
        const float hu = (float)bb_dot(hv[0], u[c1], ld);
        for (size_t j = 0; j < nvec; j++)
            BB_V(g[c1])[j] -= hu * BB_V(hv[0])[j];
        if (ref0)
            for (size_t j = 0; j < nvec; j++)
                BB_V(g[c1])[j] += rf * BB_V(u[c1])[j];
        vla_direction(b, u[c1], g[c1], ref1, hv[1], nh[1], al[1]);
        const float au = (float)bb_dot(al[0], u[c1], ld);
        bb_load(e[1], VAL(i + 1), dv, ldv);
        for (size_t j = 0; j < nvecv; j++)
            BB_V(e[1])[j] -= BB_V(pS[c1])[j] + au * BB_V(e[0])[j];

        bb_rank2_matvec(A, ld, d, nh[0], hv[0], nh[1], hv[1], has2 ? u[n0] : NULL, g[n0],
                        has3 ? u[n1] : NULL, g[n1]);
        if (ref0 + ref1) {
            const float rr = (float)((ref0 + ref1) * b->refresh);
            for (size_t j = 0; j < d; j++)
                A[j * ld + j] += rr;
            for (size_t j = 0; has2 && j < nvec; j++)
                BB_V(g[n0])[j] += rr * BB_V(u[n0])[j];
            for (size_t j = 0; has3 && j < nvec; j++)
                BB_V(g[n1])[j] += rr * BB_V(u[n1])[j];
        }
        bb_rank2_matvec(St, ldv, d, al[0], e[0], al[1], e[1], has2 ? u[n0] : NULL, pS[n0],
                        has3 ? u[n1] : NULL, pS[n1]);
    }
#undef KEY
#undef VAL
}

/* VLA for any feature map, one event per pass over A and over Sᵀ (used for elu1 features, whose write key
 * k̂ = normalize(phi(k)) differs from û: each pass over A also yields A·k̂ of the next event). Applies n
 * events to head h; t0 is the number of events before the batch (the refresh schedule). */
static void vla_update_head_single(ma_backbone *b, int h, size_t n, const float *k, const float *v, uint64_t t0)
{
    const size_t d = (size_t)b->dim, dv = (size_t)b->vdim, ld = b->ld, ldv = b->ldv;
    const size_t kstride = (size_t)b->heads * d, vstride = (size_t)b->heads * dv;
    const size_t nvec = ld / BB_LANES, nvecv = ldv / BB_LANES;
    const int elu = b->feature != MA_FEATURE_IDENTITY;
    const double s2 = b->scale * b->scale, r = b->refresh;
    float *A = b->A + (size_t)h * d * ld, *St = b->S + (size_t)h * d * ldv;
    double *z = b->z + (size_t)h * ld;

    float *w = b->work;
    float *u[2] = {w, w + ld}, *kp[2] = {w + 2 * ld, w + 3 * ld};
    float *g[2] = {w + 4 * ld, w + 5 * ld}, *gp[2] = {w + 6 * ld, w + 7 * ld};
    float *hv = w + 8 * ld, *negh = w + 9 * ld, *alpha = w + 10 * ld;
    float *pS[2] = {w + 11 * ld, w + 11 * ld + ldv}, *e = w + 11 * ld + 2 * ldv;
    if (!elu)
        kp[0] = u[0], kp[1] = u[1], gp[0] = g[0], gp[1] = g[1];

    int cur = 0;
    vla_prepare(b, k + (size_t)h * d, u[0], kp[0], z);
    bb_rank1_matvec(A, ld, d, NULL, NULL, u[0], g[0], elu ? kp[0] : NULL, gp[0]);
    bb_rank1_matvec(St, ldv, d, NULL, NULL, kp[0], pS[0], NULL, NULL);

    for (size_t i = 0; i < n; i++) {
        const int nx = cur ^ 1, more = i + 1 < n;
        if (b->heads > 1 && i + PREFETCH_AHEAD < n) {
            prefetch_span(k + (i + PREFETCH_AHEAD) * kstride + (size_t)h * d, d);
            prefetch_span(v + (i + PREFETCH_AHEAD) * vstride + (size_t)h * dv, dv);
        }
        if (more)
            vla_prepare(b, k + (i + 1) * kstride + (size_t)h * d, u[nx], kp[nx], z);

        /* Sherman–Morrison with w = A u = s·g (u = s·û): delta = 1 + s²·ûᵀg, A -= (s²/delta) g gᵀ. */
        const double q = bb_dot(u[cur], g[cur], ld);
        const double delta = fmax(1.0 + s2 * q, DELTA_CLAMP);
        const double c = s2 / delta;
        const int refresh = (t0 + i + 1) % (uint64_t)b->period == 0;

        /* Write direction alpha = A_new k̂ = A k̂ − c g (gᵀk̂) (+ r k̂ on refresh steps). */
        const double gk = elu ? bb_dot(g[cur], kp[cur], ld) : q;
        const float cg = (float)(c * gk), rf = (float)r;
        for (size_t j = 0; j < nvec; j++)
            BB_V(alpha)[j] = BB_V(gp[cur])[j] - cg * BB_V(g[cur])[j];
        if (refresh)
            for (size_t j = 0; j < nvec; j++)
                BB_V(alpha)[j] += rf * BB_V(kp[cur])[j];
        bb_scale(alpha, ld, 1.0 / fmax(bb_norm_padded(alpha, ld), NORM_EPS));

        /* Prediction error of the current state on the write key. */
        bb_load(e, v + i * vstride + (size_t)h * dv, dv, ldv);
        for (size_t j = 0; j < nvecv; j++)
            BB_V(e)[j] -= BB_V(pS[cur])[j];

        const float sc = (float)sqrt(c);
        for (size_t j = 0; j < nvec; j++) {
            BB_V(hv)[j] = sc * BB_V(g[cur])[j];
            BB_V(negh)[j] = -BB_V(hv)[j];
        }
        bb_rank1_matvec(A, ld, d, negh, hv, more ? u[nx] : NULL, g[nx], more && elu ? kp[nx] : NULL,
                        gp[nx]);
        if (refresh) {
            for (size_t j = 0; j < d; j++)
                A[j * ld + j] += (float)r;
            if (more) {
                for (size_t j = 0; j < nvec; j++)
                    BB_V(g[nx])[j] += rf * BB_V(u[nx])[j];
                if (elu)
                    for (size_t j = 0; j < nvec; j++)
                        BB_V(gp[nx])[j] += rf * BB_V(kp[nx])[j];
            }
        }
        bb_rank1_matvec(St, ldv, d, alpha, e, more ? kp[nx] : NULL, pS[nx], NULL, NULL);
        cur = nx;
    }
}

/* DeltaNet, two events per pass over Sᵀ: with S' = S + e0 a0ᵀ (a0 = β k̂0), the second event's
 * prediction is S' k̂1 = S k̂1 + e0 (a0ᵀk̂1), so one pass applies both writes and yields S'' k̂ for the
 * next two events. */
static void delta_update_head(ma_backbone *b, int h, size_t n, const float *k, const float *v)
{
    const size_t d = (size_t)b->dim, dv = (size_t)b->vdim, ld = b->ld, ldv = b->ldv;
    const size_t kstride = (size_t)b->heads * d, vstride = (size_t)b->heads * dv;
    const size_t nvec = ld / BB_LANES, nvecv = ldv / BB_LANES;
    const float beta = (float)b->beta;
    float *St = b->S + (size_t)h * d * ldv;
    float *w = b->work, *wv = b->work + 6 * ld;
    float *kh[4] = {w, w + ld, w + 2 * ld, w + 3 * ld}, *a[2] = {w + 4 * ld, w + 5 * ld};
    float *pS[4] = {wv, wv + ldv, wv + 2 * ldv, wv + 3 * ldv}, *e[2] = {wv + 4 * ldv, wv + 5 * ldv};
#define KEY(i) (k + (i) * kstride + (size_t)h * d)
#define VAL(i) (v + (i) * vstride + (size_t)h * dv)

    normalize_into(kh[0], KEY(0), d, ld);
    if (n > 1)
        normalize_into(kh[1], KEY(1), d, ld);
    bb_rank2_matvec(St, ldv, d, NULL, NULL, NULL, NULL, kh[0], pS[0], n > 1 ? kh[1] : NULL, pS[1]);
    for (size_t i = 0, P = 0; i < n; i += 2, P ^= 2) {
        const size_t c0 = P, c1 = P + 1, n0 = P ^ 2, n1 = (P ^ 2) + 1;
        bb_load(e[0], VAL(i), dv, ldv);
        for (size_t j = 0; j < nvecv; j++)
            BB_V(e[0])[j] -= BB_V(pS[c0])[j];
        for (size_t j = 0; j < nvec; j++)
            BB_V(a[0])[j] = beta * BB_V(kh[c0])[j];
        if (i + 1 == n) {  /* an odd event at the end */
            bb_rank1_matvec(St, ldv, d, a[0], e[0], NULL, NULL, NULL, NULL);
            break;
        }
        const int has2 = i + 2 < n, has3 = i + 3 < n;
        if (b->heads > 1 && i + PREFETCH_AHEAD + 1 < n) {
            prefetch_span(KEY(i + PREFETCH_AHEAD), d), prefetch_span(KEY(i + PREFETCH_AHEAD + 1), d);
            prefetch_span(VAL(i + PREFETCH_AHEAD), dv), prefetch_span(VAL(i + PREFETCH_AHEAD + 1), dv);
        }
        if (has2)
            normalize_into(kh[n0], KEY(i + 2), d, ld);
        if (has3)
            normalize_into(kh[n1], KEY(i + 3), d, ld);
        const float ak = (float)bb_dot(a[0], kh[c1], ld);
        bb_load(e[1], VAL(i + 1), dv, ldv);
        for (size_t j = 0; j < nvecv; j++)
            BB_V(e[1])[j] -= BB_V(pS[c1])[j] + ak * BB_V(e[0])[j];
        for (size_t j = 0; j < nvec; j++)
            BB_V(a[1])[j] = beta * BB_V(kh[c1])[j];
        bb_rank2_matvec(St, ldv, d, a[0], e[0], a[1], e[1], has2 ? kh[n0] : NULL, pS[n0],
                        has3 ? kh[n1] : NULL, pS[n1]);
    }
#undef KEY
#undef VAL
}

static void linear_update_head(ma_backbone *b, int h, size_t n, const float *k, const float *v)
{
    const size_t d = (size_t)b->dim, dv = (size_t)b->vdim, ld = b->ld, ldv = b->ldv;
    const size_t kstride = (size_t)b->heads * d, vstride = (size_t)b->heads * dv;
    float *St = b->S + (size_t)h * d * ldv;
    double *z = b->z + (size_t)h * ld;
    const size_t block = 256;  /* rows of phi(K) per sgemm, see work_floats() */
    float *phi = b->work, *pk = b->work + block * d, *pv = pk + ld;

    if (n < LIN_GEMM_MIN) {
        /* A few events: one row sweep each (an sgemm call costs more than it saves here). */
        for (size_t i = 0; i < n; i++) {
            phi_into(pk, k + i * kstride + (size_t)h * d, d, ld, b->feature);
            bb_acc_double(z, pk, ld);
            bb_load(pv, v + i * vstride + (size_t)h * dv, dv, ldv);
            bb_rank1_matvec(St, ldv, d, pk, pv, NULL, NULL, NULL, NULL);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        phi_into(pk, k + i * kstride + (size_t)h * d, d, ld, b->feature);
        bb_acc_double(z, pk, ld);
    }
    /* Sᵀ += phi(K)ᵀ V over the batch. */
    for (size_t i0 = 0; i0 < n; i0 += block) {
        const size_t m = n - i0 < block ? n - i0 : block;
        const float *K = k + i0 * kstride + (size_t)h * d;
        const float *Kp = K;
        int ldk = (int)kstride;
        if (b->feature == MA_FEATURE_ELU1) {
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < d; j++)
                    phi[i * d + j] = elu1(K[i * kstride + j]);
            Kp = phi;
            ldk = (int)d;
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)dv, (int)m, 1.0f, Kp, ldk,
                    v + i0 * vstride + (size_t)h * dv, (int)vstride, 1.0f, St, (int)ldv);
    }
}

int ma_backbone_update(ma_backbone *b, size_t n, const float *k, const float *v)
{
    if (n == 0)
        return 0;
    for (int h = 0; h < b->heads; h++) {
        switch (b->kind) {
        case MA_BACKBONE_VLA:
            if (b->feature == MA_FEATURE_IDENTITY)
                vla_update_head_pairs(b, h, n, k, v, b->steps);
            else
                vla_update_head_single(b, h, n, k, v, b->steps);
            break;
        case MA_BACKBONE_DELTA:  delta_update_head(b, h, n, k, v); break;
        case MA_BACKBONE_LINEAR: linear_update_head(b, h, n, k, v); break;
        default: break;
        }
    }
    b->steps += n;
    return 0;
}

/* ---- read ------------------------------------------------------------------------------------- */

int ma_backbone_read(const ma_backbone *b, size_t n, const float *q, float *out, ma_read_mode mode)
{
    if (mode != MA_READ_DEFAULT && mode != MA_READ_RAW && mode != MA_READ_NORMALIZED)
        return MA_EINVAL;
    const size_t H = (size_t)b->heads, d = (size_t)b->dim, dv = (size_t)b->vdim;
    if (b->kind == MA_BACKBONE_NONE) {
        memset(out, 0, n * H * dv * sizeof(float));
        return 0;
    }
    if (mode == MA_READ_DEFAULT)
        /* The normaliser z·phi(q) is a sum of positive terms only with ELU+1 features; with identity
         * features it can be near zero or negative for any query, so the raw read is the meaningful one. */
        mode = (b->kind != MA_BACKBONE_DELTA && b->feature == MA_FEATURE_ELU1) ? MA_READ_NORMALIZED
                                                                             : MA_READ_RAW;
    if (mode == MA_READ_NORMALIZED && b->kind == MA_BACKBONE_DELTA)
        return MA_EINVAL;

    const ma_feature f = feature_of(b);
    /* Queries are normalised before the product (so no query overflows a float sum) and the true scale
     * of each read is applied to the output row afterwards. */
    float qb[READ_BLOCK] __attribute__((aligned(BB_ALIGN)));
    float qp[MA_MAX_DIM] __attribute__((aligned(BB_ALIGN))), op[MA_MAX_DIM] __attribute__((aligned(BB_ALIGN)));
    double scale[READ_BLOCK];
    const size_t rows = d <= READ_BLOCK ? READ_BLOCK / d : 1;
    for (size_t h = 0; h < H; h++) {
        const float *St = b->S + h * d * b->ldv;
        const double *z = b->z ? b->z + h * b->ld : NULL;
        for (size_t i0 = 0; i0 < n; i0 += rows) {
            const size_t m = n - i0 < rows ? n - i0 : rows;
            for (size_t i = 0; i < m; i++) {
                const float *qi = q + (i0 + i) * H * d + h * d;
                float *dst = qb + i * d;
                phi_into(dst, qi, d, d, f);
                double nrm = bb_norm(dst, d);
                scale_into(dst, dst, d, d, 1.0 / fmax(nrm, NORM_EPS));
                double sc = 1.0;
                if (mode == MA_READ_NORMALIZED) {
                    double zq = 0.0;
                    for (size_t j = 0; j < d; j++)
                        zq += z[j] * dst[j];
                    zq *= nrm;  /* zᵀphi(q) */
                    double den = b->kind == MA_BACKBONE_LINEAR ? fmax(zq, 0.0) + LIN_DEN_EPS : fmax(zq, VLA_DEN_EPS);
                    sc = nrm / den;
                } else if (b->kind == MA_BACKBONE_LINEAR) {
                    sc = nrm;  /* linear raw read: S phi(q), unnormalised */
                }
                scale[i] = sc;
            }
            float *o = out + i0 * H * dv + h * dv;
            if (m < READ_GEMM_MIN) {
                /* One or two queries: the row sweep beats sgemm's call and packing overhead. */
                for (size_t i = 0; i < m; i++) {
                    bb_load(qp, qb + i * d, d, b->ld);
                    bb_matvec(St, b->ldv, d, qp, op);
                    for (size_t j = 0; j < dv; j++)
                        o[i * H * dv + j] = to_float(op[j] * scale[i]);
                }
                continue;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)dv, (int)d, 1.0f, qb, (int)d,
                        St, (int)b->ldv, 0.0f, o, (int)(H * dv));
            for (size_t i = 0; i < m; i++)
                if (scale[i] != 1.0)
                    for (size_t j = 0; j < dv; j++)
                        o[i * H * dv + j] = to_float(o[i * H * dv + j] * scale[i]);
        }
    }
    return 0;
}

/* ---- introspection ---------------------------------------------------------------------------- */

static double frob(const float *M, size_t rows, size_t ld)
{
    double s = 0.0;
    for (size_t i = 0; i < rows * ld; i++)
        s += (double)M[i] * M[i];
    return sqrt(s);
}

void ma_backbone_norms(const ma_backbone *b, double *state_norm, double *penalty_norm)
{
    const size_t d = (size_t)b->dim;
    for (int h = 0; h < b->heads; h++) {
        if (state_norm)
            state_norm[h] = b->S ? frob(b->S + (size_t)h * d * b->ldv, d, b->ldv) : 0.0;
        if (penalty_norm)
            penalty_norm[h] = b->A ? frob(b->A + (size_t)h * d * b->ld, d, b->ld) : 0.0;
    }
}

uint64_t ma_backbone_steps(const ma_backbone *b) { return b->steps; }

static size_t padded_bytes(size_t floats)
{
    return (floats * sizeof(float) + BB_ALIGN - 1) / BB_ALIGN * BB_ALIGN;
}

size_t ma_backbone_bytes(const ma_backbone *b)
{
    const size_t H = (size_t)b->heads, d = (size_t)b->dim;
    size_t n = sizeof *b;
    if (b->S)
        n += padded_bytes(H * d * b->ldv);
    if (b->A)
        n += padded_bytes(H * d * b->ld);
    if (b->z)
        n += padded_bytes(2 * H * b->ld);
    if (b->work)
        n += padded_bytes(b->work_len);
    return n;
}

size_t ma_backbone_footprint(const ma_params *p)
{
    /* The same layout as alloc_backbone and the same count as ma_backbone_bytes. */
    ma_backbone b = {.kind = p->backbone, .feature = p->vla.feature, .heads = p->heads, .dim = p->dim,
                     .vdim = p->value_dim, .ld = bb_pad((size_t)p->dim), .ldv = bb_pad((size_t)p->value_dim)};
    const size_t H = (size_t)b.heads, d = (size_t)b.dim;
    size_t n = sizeof b;
    if (b.kind == MA_BACKBONE_NONE)
        return n;
    n += padded_bytes(H * d * b.ldv);
    if (b.kind == MA_BACKBONE_VLA)
        n += padded_bytes(H * d * b.ld);
    if (b.kind == MA_BACKBONE_VLA || b.kind == MA_BACKBONE_LINEAR)
        n += padded_bytes(2 * H * b.ld);
    return n + padded_bytes(work_floats(&b));
}

/* ---- serialisation ---------------------------------------------------------------------------- */
/*
 * A core/blob.h blob of kind "BKBN" (docs/BACKBONE.md, docs/STORE.md):
 *   section "HEAD" v1: u32 kind, feature, heads, dim, value_dim, period | f64 lambda0, refresh,
 *                      penalty_scale, beta | u64 steps
 *   section "STAT" v1: per head Sᵀ (dim × value_dim f32), then A (dim × dim f32, vla), then z (dim f64,
 *                      vla/linear)
 * Legacy format v1 (read, never written): u32 magic "MABB", u32 version 1, the HEAD fields, u64 payload
 * bytes, the STAT body, u64 FNV-1a 64 of every byte before it; all little-endian.
 */
#define LEGACY_MAGIC   0x4242414du  /* "MABB" little-endian */
#define LEGACY_VERSION 1u
#define LEGACY_HEADER  80u
#define BLOB_KIND      MA_BLOB_TAG("BKBN")

static size_t payload_bytes(const ma_backbone *b)
{
    const size_t H = (size_t)b->heads, d = (size_t)b->dim, dv = (size_t)b->vdim;
    size_t per = 0;
    if (b->kind != MA_BACKBONE_NONE)
        per += d * dv * 4;
    if (b->kind == MA_BACKBONE_VLA)
        per += d * d * 4;
    if (b->kind == MA_BACKBONE_VLA || b->kind == MA_BACKBONE_LINEAR)
        per += d * 8;
    return H * per;
}

int ma_backbone_serialize(const ma_backbone *b, void **buf, size_t *len)
{
    const size_t H = (size_t)b->heads, d = (size_t)b->dim, dv = (size_t)b->vdim;
    ma_blob_writer w;
    ma_blob_begin(&w, BLOB_KIND);
    ma_blob_section_begin(&w, MA_BLOB_TAG("HEAD"), 1);
    ma_blob_put_u32(&w, (uint32_t)b->kind);
    ma_blob_put_u32(&w, (uint32_t)b->feature);
    ma_blob_put_u32(&w, (uint32_t)b->heads);
    ma_blob_put_u32(&w, (uint32_t)b->dim);
    ma_blob_put_u32(&w, (uint32_t)b->vdim);
    ma_blob_put_u32(&w, (uint32_t)b->period);
    ma_blob_put_f64(&w, b->lambda0);
    ma_blob_put_f64(&w, b->refresh);
    ma_blob_put_f64(&w, b->scale);
    ma_blob_put_f64(&w, b->beta);
    ma_blob_put_u64(&w, b->steps);
    ma_blob_section_end(&w);
    ma_blob_section_begin(&w, MA_BLOB_TAG("STAT"), 1);
    for (size_t h = 0; b->kind != MA_BACKBONE_NONE && h < H; h++) {
        for (size_t i = 0; i < d; i++)
            ma_blob_put_f32s(&w, b->S + (h * d + i) * b->ldv, dv);
        for (size_t i = 0; b->A && i < d; i++)
            ma_blob_put_f32s(&w, b->A + (h * d + i) * b->ld, d);
        for (size_t j = 0; b->z && j < d; j++)
            ma_blob_put_f64(&w, b->z[h * b->ld + j]);
    }
    ma_blob_section_end(&w);
    return ma_blob_finish(&w, buf, len);
}

/* The HEAD fields (hd) and the STAT body (st) into b; both readers must end exactly. */
static int read_state(ma_backbone *b, ma_blob_reader *hd, ma_blob_reader *st)
{
    uint32_t kind = ma_blob_get_u32(hd), feature = ma_blob_get_u32(hd), heads = ma_blob_get_u32(hd),
             dim = ma_blob_get_u32(hd), vdim = ma_blob_get_u32(hd), period = ma_blob_get_u32(hd);
    double lambda0 = ma_blob_get_f64(hd), refresh = ma_blob_get_f64(hd), scale = ma_blob_get_f64(hd),
           beta = ma_blob_get_f64(hd);
    uint64_t steps = ma_blob_get_u64(hd);
    if (ma_blob_done(hd) || ma_blob_remaining(st) != payload_bytes(b))
        return MA_ECORRUPT;
    /* The buffer must describe this very backbone: kind, dims and the constants its kind uses. */
    if (kind != (uint32_t)b->kind || heads != (uint32_t)b->heads || dim != (uint32_t)b->dim ||
        vdim != (uint32_t)b->vdim)
        return MA_ECORRUPT;
    if ((b->kind == MA_BACKBONE_VLA || b->kind == MA_BACKBONE_LINEAR) && feature != (uint32_t)b->feature)
        return MA_ECORRUPT;
    if (b->kind == MA_BACKBONE_VLA &&
        (period != (uint32_t)b->period || lambda0 != b->lambda0 || refresh != b->refresh || scale != b->scale))
        return MA_ECORRUPT;
    if (b->kind == MA_BACKBONE_DELTA && beta != b->beta)
        return MA_ECORRUPT;
    b->steps = steps;

    const size_t H = (size_t)b->heads, d = (size_t)b->dim, dv = (size_t)b->vdim;
    for (size_t h = 0; b->kind != MA_BACKBONE_NONE && h < H; h++) {
        for (size_t i = 0; i < d; i++)
            ma_blob_get_f32s(st, b->S + (h * d + i) * b->ldv, dv);
        for (size_t i = 0; b->A && i < d; i++)
            ma_blob_get_f32s(st, b->A + (h * d + i) * b->ld, d);
        for (size_t j = 0; b->z && j < d; j++)
            b->z[h * b->ld + j] = ma_blob_get_f64(st);
    }
    return ma_blob_done(st);
}

/* Splits a legacy v1 buffer into its HEAD fields and STAT body (after checking magic, version, payload
 * length and checksum). */
static int open_legacy(const unsigned char *in, size_t len, ma_blob_reader *hd, ma_blob_reader *st)
{
    ma_blob_reader r;
    ma_blob_reader_raw(&r, in, len);
    if (len < LEGACY_HEADER + 8 || ma_blob_get_u32(&r) != LEGACY_MAGIC || ma_blob_get_u32(&r) != LEGACY_VERSION)
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, in + 72, 8);
    uint64_t pay = ma_blob_get_u64(&r);
    if (pay != len - LEGACY_HEADER - 8)
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, in + len - 8, 8);
    if (ma_blob_get_u64(&r) != ma_fnv1a64(in, len - 8))
        return MA_ECORRUPT;
    ma_blob_reader_raw(hd, in + 8, 64);
    ma_blob_reader_raw(st, in + LEGACY_HEADER, (size_t)pay);
    return 0;
}

int ma_backbone_restore(const ma_params *p, const void *buf, size_t len, ma_backbone **out)
{
    if (!p || !out || ma_params_validate(p, NULL, 0) != 0)
        return MA_EINVAL;
    ma_blob_reader r, hd, st;
    int rc;
    if (ma_blob_is_blob(buf, len))
        rc = ma_blob_open(&r, buf, len, BLOB_KIND) || ma_blob_section(&r, MA_BLOB_TAG("HEAD"), 1, &hd) ||
             ma_blob_section(&r, MA_BLOB_TAG("STAT"), 1, &st) || ma_blob_done(&r) ? MA_ECORRUPT : 0;
    else
        rc = buf ? open_legacy(buf, len, &hd, &st) : MA_ECORRUPT;
    if (rc)
        return rc;
    ma_backbone *b = alloc_backbone(p);
    if (!b)
        return MA_ENOMEM;
    if ((rc = read_state(b, &hd, &st)) != 0) {
        ma_backbone_destroy(b);
        return rc;
    }
    *out = b;
    return 0;
}
