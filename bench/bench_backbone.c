/*
 * bench/bench_backbone.c — ingest speed of the backbones (core/backbone.c) against the alternatives, in
 * one run on one core: a naive per-event version (the equations of docs/DESIGN.md 3.1 as plain loops), a
 * per-event OpenBLAS version (ssymv/ssyr/sgemv/sger), and the machine's sgemm rate measured here.
 *
 *   build/bench/bench_backbone [seconds-per-measurement]     (default 0.25; best of 3 repeats each)
 *
 * Prints a markdown table: events/s per head, the VLA update's FLOP rate as a share of sgemm's, and the
 * speedups. FLOPs counted for the VLA update: 4d² (A·u and the rank-1 downdate of A) + 4·d·d_v (S·k̂ and
 * the write of S) per event and head; O(d) work is not counted. The numbers come from this machine with
 * OPENBLAS_CORETYPE as set in the environment. Nothing here is asserted; see docs/RESULTS.md.
 *
 * Time is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time: the machine is shared,
 * and CPU time measures what one core does for us rather than how often the scheduler lets us run. Every
 * measured path (including OpenBLAS, set to one thread) runs in the calling thread.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backbone.h"
#include "core/params.h"

#define NEV 4096  /* distinct events, cycled */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rs = 0x1234567;
static double gauss(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((rs >> 11) + 0.5) / 9007199254740992.0;
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = ((rs >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

static float *randn(size_t n)
{
    float *x = malloc(n * sizeof *x);
    if (!x) {
        perror("malloc");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = (float)gauss();
    return x;
}

/* ---- the alternatives ------------------------------------------------------------------------- */

typedef struct {
    int d, dv, kind;  /* kind: 0 vla, 1 delta, 2 linear */
    float *A, *S, *w, *kh, *al, *e;
    double *z;
    long t;
} naive_t;

static void naive_init(naive_t *n, int kind, int d, int dv)
{
    memset(n, 0, sizeof *n);
    n->d = d, n->dv = dv, n->kind = kind;
    n->A = calloc((size_t)d * d, 4);
    n->S = calloc((size_t)d * dv, 4);
    n->w = calloc((size_t)d, 4);
    n->kh = calloc((size_t)d, 4);
    n->al = calloc((size_t)d, 4);
    n->e = calloc((size_t)dv, 4);
    n->z = calloc((size_t)d, 8);
    for (int i = 0; i < d; i++)
        n->A[i * d + i] = 10.0f;
}

static void naive_free(naive_t *n)
{
    free(n->A), free(n->S), free(n->w), free(n->kh), free(n->al), free(n->e), free(n->z);
}

static void unit(float *dst, const float *x, int d)
{
    double s = 0;
    for (int j = 0; j < d; j++)
        s += (double)x[j] * x[j];
    float inv = (float)(1.0 / fmax(sqrt(s), 1e-12));
    for (int j = 0; j < d; j++)
        dst[j] = x[j] * inv;
}

/* The equations of docs/DESIGN.md 3.1/3.2 for one event, written as plain loops (identity features, s = 1). */
static void naive_event(naive_t *n, const float *k, const float *v)
{
    const int d = n->d, dv = n->dv;
    float *A = n->A, *S = n->S, *w = n->w, *kh = n->kh, *al = n->al, *e = n->e;
    if (n->kind == 2) {
        for (int i = 0; i < dv; i++)
            for (int j = 0; j < d; j++)
                S[i * d + j] += v[i] * k[j];
        for (int j = 0; j < d; j++)
            n->z[j] += k[j];
        return;
    }
    unit(kh, k, d);
    if (n->kind == 0) {
        float uw = 0;
        for (int i = 0; i < d; i++) {
            float s = 0;
            for (int j = 0; j < d; j++)
                s += A[i * d + j] * kh[j];
            w[i] = s;
            uw += kh[i] * s;
        }
        float delta = fmaxf(1 + uw, 1e-4f);
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
                A[i * d + j] -= w[i] * w[j] / delta;
        if (++n->t % 20 == 0)
            for (int i = 0; i < d; i++)
                A[i * d + i] += 1e-3f;
        for (int i = 0; i < d; i++) {
            float s = 0;
            for (int j = 0; j < d; j++)
                s += A[i * d + j] * kh[j];
            al[i] = s;
        }
        unit(al, al, d);
        for (int j = 0; j < d; j++)
            n->z[j] += k[j];
    } else {
        memcpy(al, kh, (size_t)d * 4);  /* delta: write direction = key, beta = 1 */
    }
    for (int i = 0; i < dv; i++) {
        float s = 0;
        for (int j = 0; j < d; j++)
            s += S[i * d + j] * kh[j];
        e[i] = v[i] - s;
    }
    for (int i = 0; i < dv; i++)
        for (int j = 0; j < d; j++)
            S[i * d + j] += e[i] * al[j];
}

/* The same per event with OpenBLAS level-2 calls (A kept as its upper triangle, as ssyr updates it). */
static void blas_event(naive_t *n, const float *k, const float *v)
{
    const int d = n->d, dv = n->dv;
    float *A = n->A, *S = n->S, *w = n->w, *kh = n->kh, *al = n->al, *e = n->e;
    if (n->kind == 2) {
        cblas_sger(CblasRowMajor, dv, d, 1.0f, v, 1, k, 1, S, d);
        for (int j = 0; j < d; j++)
            n->z[j] += k[j];
        return;
    }
    unit(kh, k, d);
    if (n->kind == 0) {
        cblas_ssymv(CblasRowMajor, CblasUpper, d, 1.0f, A, d, kh, 1, 0.0f, w, 1);
        float delta = fmaxf(1 + cblas_sdot(d, kh, 1, w, 1), 1e-4f);
        cblas_ssyr(CblasRowMajor, CblasUpper, d, -1.0f / delta, w, 1, A, d);
        if (++n->t % 20 == 0)
            for (int i = 0; i < d; i++)
                A[i * d + i] += 1e-3f;
        cblas_ssymv(CblasRowMajor, CblasUpper, d, 1.0f, A, d, kh, 1, 0.0f, al, 1);
        unit(al, al, d);
    } else {
        memcpy(al, kh, (size_t)d * 4);
    }
    memcpy(e, v, (size_t)dv * 4);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, dv, d, -1.0f, S, d, kh, 1, 1.0f, e, 1);
    cblas_sger(CblasRowMajor, dv, d, 1.0f, e, 1, al, 1, S, d);
}

/* ---- measurement ------------------------------------------------------------------------------ */

static double secs = 0.25;

/* Best events/s (per head) over 3 repeats of `secs` each. */
typedef void (*step_fn)(void *ctx, size_t i0, size_t n);

static double rate(step_fn f, void *ctx, size_t batch, int heads)
{
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        size_t done = 0, i0 = 0;
        double t0 = now(), t;
        do {
            for (int r = 0; r < 16; r++) {
                f(ctx, i0, batch);
                done += batch;
                i0 = (i0 + batch) % NEV;
            }
            t = now() - t0;
        } while (t < secs);
        double ev = done / t;
        if (ev > best)
            best = ev;
    }
    return best * heads;  /* head-updates per second: every event updates every head */
}

typedef struct {
    ma_backbone *b;
    naive_t *nv;
    const float *k, *v;
    int H, d, dv;
    int blas;
} ctx_t;

static void step_lib(void *c_, size_t i0, size_t n)
{
    ctx_t *c = c_;
    if (i0 + n > NEV)
        i0 = 0;
    ma_backbone_update(c->b, n, c->k + i0 * c->H * c->d, c->v + i0 * c->H * c->dv);
}

static void step_naive(void *c_, size_t i0, size_t n)
{
    ctx_t *c = c_;
    for (size_t i = 0; i < n; i++) {
        size_t e = (i0 + i) % NEV;
        if (c->blas)
            blas_event(c->nv, c->k + e * c->d, c->v + e * c->dv);
        else
            naive_event(c->nv, c->k + e * c->d, c->v + e * c->dv);
    }
}

static double sgemm_rate(int n)
{
    float *a = randn((size_t)n * n), *b = randn((size_t)n * n), *c = calloc((size_t)n * n, 4);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        int it = 0;
        double t0 = now(), t;
        do {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            it++;
            t = now() - t0;
        } while (t < secs);
        double r = 2.0 * n * n * (double)n * it / t;
        if (r > best)
            best = r;
    }
    free(a), free(b), free(c);
    return best;
}

static ma_backbone *make(ma_backbone_kind kind, int H, int d, ma_feature f, double s)
{
    ma_params p;
    ma_params_default(&p);
    p.backbone = kind;
    p.heads = H;
    p.dim = d;
    p.value_dim = d;
    p.vla.feature = f;
    p.vla.penalty_scale = s;
    ma_backbone *b;
    if (ma_backbone_create(&p, &b) != 0) {
        fprintf(stderr, "ma_backbone_create failed\n");
        exit(1);
    }
    return b;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        secs = atof(argv[1]);
    if (!(secs > 0)) {
        fprintf(stderr, "usage: %s [seconds-per-measurement > 0]\n", argv[0]);
        return 2;
    }
    openblas_set_num_threads(1);
    const char *ct = getenv("OPENBLAS_CORETYPE");
    double peak = sgemm_rate(1024);
    printf("sgemm 1024^3, 1 thread (OPENBLAS_CORETYPE=%s): %.1f GFLOP/s\n\n", ct ? ct : "auto", peak / 1e9);

    printf("| backbone | d = d_v | heads | batch | memattn events/s/head | naive loops | per-event OpenBLAS | "
           "vs naive | vs OpenBLAS | update GFLOP/s | share of sgemm |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    const int dims[2] = {64, 128};
    for (int di = 0; di < 2; di++) {
        const int d = dims[di];
        for (int kind = 0; kind < 3; kind++) {
            const ma_backbone_kind bk = kind == 0 ? MA_BACKBONE_VLA : kind == 1 ? MA_BACKBONE_DELTA : MA_BACKBONE_LINEAR;
            const int heads_list[2] = {1, 8};
            for (int hi = 0; hi < 2; hi++) {
                const int H = heads_list[hi];
                float *k = randn((size_t)NEV * H * d), *v = randn((size_t)NEV * H * d);
                const size_t batches[2] = {1, 256};
                for (int bi = 0; bi < 2; bi++) {
                    if (H > 1 && batches[bi] == 1)
                        continue;
                    ctx_t c = {.k = k, .v = v, .H = H, .d = d, .dv = d};
                    c.b = make(bk, H, d, MA_FEATURE_IDENTITY, 1.0);
                    double lib = rate(step_lib, &c, batches[bi], H);
                    ma_backbone_destroy(c.b);
                    double nai = 0, bla = 0;
                    if (H == 1 && bi == 1) {
                        naive_t nv;
                        naive_init(&nv, kind, d, d);
                        c.nv = &nv;
                        nai = rate(step_naive, &c, 256, 1);
                        naive_free(&nv);
                        naive_init(&nv, kind, d, d);
                        c.blas = 1;
                        bla = rate(step_naive, &c, 256, 1);
                        naive_free(&nv);
                    }
                    double flops = kind == 0 ? 8.0 * d * d : kind == 1 ? 4.0 * d * d : 2.0 * d * d;
                    char sn[32] = "", sb[32] = "", rn[32] = "", rb[32] = "";
                    if (nai > 0) {
                        snprintf(sn, sizeof sn, "%.0f", nai);
                        snprintf(sb, sizeof sb, "%.0f", bla);
                        snprintf(rn, sizeof rn, "%.1f×", lib / nai);
                        snprintf(rb, sizeof rb, "%.1f×", lib / bla);
                    }
                    printf("| %s | %d | %d | %zu | %.0f | %s | %s | %s | %s | %.1f | %.0f%% |\n",
                           ma_backbone_name(bk), d, H, batches[bi], lib, sn, sb, rn, rb, lib * flops / 1e9,
                           100.0 * lib * flops / peak);
                    fflush(stdout);
                }
                free(k), free(v);
            }
        }
    }
    /* Larger heads: where A and S leave L1/L2. Batch 1024, one head; the per-event OpenBLAS version is
     * the fairer alternative here (the naive loops are far behind at every size). */
    printf("\n| VLA, larger d | memattn events/s/head | per-event OpenBLAS | vs OpenBLAS | update GFLOP/s | share of sgemm |\n"
           "|---|---|---|---|---|---|\n");
    const int big[3] = {256, 512, 1024};
    for (int di = 0; di < 3; di++) {
        const int d = big[di];
        float *k = randn((size_t)NEV * d), *v = randn((size_t)NEV * d);
        ctx_t c = {.k = k, .v = v, .H = 1, .d = d, .dv = d};
        c.b = make(MA_BACKBONE_VLA, 1, d, MA_FEATURE_IDENTITY, 1.0);
        double lib = rate(step_lib, &c, d >= 1024 ? 64 : 256, 1);
        ma_backbone_destroy(c.b);
        naive_t nv;
        naive_init(&nv, 0, d, d);
        c.nv = &nv;
        c.blas = 1;
        double bla = rate(step_naive, &c, d >= 1024 ? 16 : 64, 1);
        naive_free(&nv);
        const double flops = 8.0 * d * d;
        printf("| d = %d | %.0f | %.0f | %.1f× | %.1f | %.0f%% |\n", d, lib, bla, lib / bla, lib * flops / 1e9,
               100.0 * lib * flops / peak);
        fflush(stdout);
        free(k), free(v);
    }

    /* The paper's setting (elu1, s = 1/sqrt(d)) costs one more product per event. */
    printf("\n| VLA setting | d | events/s/head (batch 256, 1 head) |\n|---|---|---|\n");
    for (int di = 0; di < 2; di++) {
        const int d = dims[di];
        float *k = randn((size_t)NEV * d), *v = randn((size_t)NEV * d);
        ctx_t c = {.k = k, .v = v, .H = 1, .d = d, .dv = d};
        c.b = make(MA_BACKBONE_VLA, 1, d, MA_FEATURE_ELU1, 1.0 / sqrt(d));
        printf("| elu1, s = 1/sqrt(d) | %d | %.0f |\n", d, rate(step_lib, &c, 256, 1));
        ma_backbone_destroy(c.b);
        free(k), free(v);
    }

    /* Reads: one sgemm per head and block of queries. */
    printf("\n| read (vla, raw) | d | batch of queries | queries/s/head |\n|---|---|---|---|\n");
    for (int di = 0; di < 2; di++) {
        const int d = dims[di];
        float *k = randn((size_t)NEV * d), *v = randn((size_t)NEV * d), *o = malloc((size_t)NEV * d * 4);
        ma_backbone *b = make(MA_BACKBONE_VLA, 1, d, MA_FEATURE_IDENTITY, 1.0);
        ma_backbone_update(b, NEV, k, v);
        const size_t qb[3] = {1, 16, 256};
        for (int qi = 0; qi < 3; qi++) {
            double best = 0;
            for (int rep = 0; rep < 3; rep++) {
                size_t done = 0;
                double t0 = now(), t;
                do {
                    ma_backbone_read(b, qb[qi], k, o, MA_READ_RAW);
                    done += qb[qi];
                    t = now() - t0;
                } while (t < secs);
                if (done / t > best)
                    best = done / t;
            }
            printf("| | %d | %zu | %.0f |\n", d, qb[qi], best);
        }
        ma_backbone_destroy(b);
        free(k), free(v), free(o);
    }
    return 0;
}
