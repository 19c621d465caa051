/*
 * bench/mqar.c — the VLA paper's properties, measured on the raw recurrences of core/backbone.c:
 *
 *  1. MQAR capacity (EVAL.md A): write n key→value pairs into one head of dim d, query every key, decode
 *     the read by the nearest of 128 codebook values; accuracy against n/d from 1/8 to 2, for VLA (both
 *     settings), DeltaNet, linear attention (both feature maps) and full softmax attention (written here).
 *  2. State growth: ‖S_T‖_F of linear attention over VLA's, k, v ~ N(0, I), T = 100, 1000, 10000.
 *  3. The spectral norm of the VLA write's Jacobian J = I − k̂ α̂ᵀ (S_t = S_{t−1} J + v α̂ᵀ) over a long
 *     run, from a double-precision replay of A (the library does not expose α̂).
 *
 *   build/bench/mqar [--seeds N] [--dat FILE] [--quick]
 *
 * Keys: "isotropic" k ~ N(0, I_d); "shared a" k = x + a·√d·m with x ~ N(0, I_d) and one fixed unit vector
 * m, for a = 0.5 (pairwise cosine about 0.2) and a = 1 (about 0.5). docs/DESIGN.md's simulation does not say how
 * strong its shared direction was; its DeltaNet row falls between our two. Values: rows of a codebook of
 * 128 random unit vectors (d_v = d), chosen at random per pair. The query is the key itself. With unit
 * codebook rows the nearest row is the one with the largest dot product, so any positive scaling of a read
 * (VLA's and linear attention's normalisers) decodes the same. Seeds are fixed (1..N); every seed's result goes to the --dat file.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backbone.h"
#include "core/params.h"

#define CODEBOOK 128

static uint64_t rs;
static void seed(uint64_t s) { rs = s * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull; }
static uint64_t next(void)
{
    uint64_t z = (rs += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double unif(void) { return ((next() >> 11) + 0.5) / 9007199254740992.0; }
static double gauss(void) { return sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif()); }

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        perror("malloc");
        exit(1);
    }
    return p;
}

/* ---- methods ------------------------------------------------------------------------------------ */

enum { M_VLA, M_VLA_PAPER, M_DELTA, M_LINEAR, M_LINEAR_ELU, M_SOFTMAX, NMETH };
static const char *const METH[NMETH] = {"vla (identity, s=1)", "vla (paper: elu1, s=1/sqrt(d))",
                                        "deltanet (beta=1)", "linear (identity)", "linear (elu1)",
                                        "full softmax"};
static const char *const METH_ID[NMETH] = {"vla", "vla_paper", "delta", "linear", "linear_elu1", "softmax"};

/* Reads of n queries (= the keys) after writing the n pairs, into out (n × d). */
static void run_method(int m, int d, int n, const float *k, const float *v, float *out)
{
    if (m == M_SOFTMAX) {
        double *p = xmalloc((size_t)n * sizeof *p);
        const double inv = 1.0 / sqrt((double)d);
        for (int i = 0; i < n; i++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int t = 0; t < d; t++)
                    s += (double)k[i * d + t] * k[j * d + t];
                p[j] = s * inv;
                mx = fmax(mx, p[j]);
            }
            for (int j = 0; j < n; j++)
                sum += (p[j] = exp(p[j] - mx));
            for (int t = 0; t < d; t++) {
                double o = 0;
                for (int j = 0; j < n; j++)
                    o += p[j] * v[j * d + t];
                out[i * d + t] = (float)(o / sum);
            }
        }
        free(p);
        return;
    }
    ma_params p;
    ma_params_default(&p);
    p.dim = p.value_dim = d;
    p.backbone = m == M_DELTA ? MA_BACKBONE_DELTA : (m == M_LINEAR || m == M_LINEAR_ELU) ? MA_BACKBONE_LINEAR
                                                                                          : MA_BACKBONE_VLA;
    if (m == M_VLA_PAPER || m == M_LINEAR_ELU)
        p.vla.feature = MA_FEATURE_ELU1;
    if (m == M_VLA_PAPER)
        p.vla.penalty_scale = 1.0 / sqrt((double)d);
    ma_backbone *b;
    if (ma_backbone_create(&p, &b) != 0 || ma_backbone_update(b, (size_t)n, k, v) != 0) {
        fprintf(stderr, "backbone failed\n");
        exit(1);
    }
    /* The paper's normalised read for elu1 features, the raw read otherwise (identity linear attention's
     * normaliser zᵀq has no sign and is no read anyone would use). */
    ma_read_mode mode = (m == M_VLA_PAPER || m == M_LINEAR_ELU) ? MA_READ_NORMALIZED : MA_READ_RAW;
    if (ma_backbone_read(b, (size_t)n, k, out, mode) != 0) {
        fprintf(stderr, "read failed\n");
        exit(1);
    }
    ma_backbone_destroy(b);
}

/* Fraction of the n reads whose nearest codebook row is the pair's. */
static double accuracy(int d, int n, const float *out, const float *code, const int *label)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int best = -1;
        double bs = -INFINITY;
        for (int c = 0; c < CODEBOOK; c++) {
            double s = 0;
            for (int t = 0; t < d; t++)
                s += (double)out[i * d + t] * code[c * d + t];
            if (s > bs)
                bs = s, best = c;
        }
        ok += best == label[i];
    }
    return (double)ok / n;
}

static void unit_rows(float *x, int rows, int d)
{
    for (int i = 0; i < rows; i++) {
        double s = 0;
        for (int t = 0; t < d; t++)
            s += (double)x[i * d + t] * x[i * d + t];
        for (int t = 0; t < d; t++)
            x[i * d + t] = (float)(x[i * d + t] / sqrt(s));
    }
}

/* One trial: accuracies of every method into acc[NMETH]. */
static void trial(int d, int n, double shared, uint64_t s, double *acc)
{
    seed(s);
    float *code = xmalloc((size_t)CODEBOOK * d * 4), *k = xmalloc((size_t)n * d * 4);
    float *v = xmalloc((size_t)n * d * 4), *out = xmalloc((size_t)n * d * 4), *m = xmalloc((size_t)d * 4);
    int *label = xmalloc((size_t)n * sizeof *label);
    for (int i = 0; i < CODEBOOK * d; i++)
        code[i] = (float)gauss();
    unit_rows(code, CODEBOOK, d);
    for (int t = 0; t < d; t++)
        m[t] = (float)gauss();
    unit_rows(m, 1, d);
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < d; t++)
            k[i * d + t] = (float)(gauss() + shared * sqrt((double)d) * m[t]);
        label[i] = (int)(next() % CODEBOOK);
        memcpy(v + (size_t)i * d, code + (size_t)label[i] * d, (size_t)d * 4);
    }
    for (int me = 0; me < NMETH; me++) {
        run_method(me, d, n, k, v, out);
        acc[me] = accuracy(d, n, out, code, label);
    }
    free(code), free(k), free(v), free(out), free(m), free(label);
}

/* ---- 2. state norms ----------------------------------------------------------------------------- */

static double state_norm(ma_backbone_kind kind, ma_feature f, double s, int d, int T, uint64_t sd)
{
    ma_params p;
    ma_params_default(&p);
    p.backbone = kind;
    p.dim = p.value_dim = d;
    p.vla.feature = f;
    p.vla.penalty_scale = s;
    ma_backbone *b;
    if (ma_backbone_create(&p, &b) != 0)
        exit(1);
    seed(sd);
    float *k = xmalloc((size_t)T * d * 4), *v = xmalloc((size_t)T * d * 4);
    for (size_t i = 0; i < (size_t)T * d; i++)
        k[i] = (float)gauss(), v[i] = (float)gauss();
    ma_backbone_update(b, (size_t)T, k, v);
    double n;
    ma_backbone_norms(b, &n, NULL);
    ma_backbone_destroy(b);
    free(k), free(v);
    return n;
}

/* ---- 3. Jacobian spectral norm ------------------------------------------------------------------ */

/* ‖I − x yᵀ‖₂ for unit x, y with c = yᵀx: on span{x, y} the squared singular values σ² solve
 * σ⁴ − (3 − 2c) σ² + (1 − c)² = 0 (trace and determinant of JᵀJ there); elsewhere they are 1. */
static double jac_norm(double c)
{
    double tr = 3.0 - 2.0 * c, det = (1.0 - c) * (1.0 - c);
    double big = 0.5 * (tr + sqrt(fmax(tr * tr - 4.0 * det, 0.0)));
    return sqrt(fmax(big, 1.0));
}

/* Power iteration on JᵀJ from a generic start, as a check of the closed form. The top eigenvalue can be
 * within 1% of the d−2 eigenvalues equal to 1, hence the many iterations. */
static double jac_norm_power(const double *x, const double *y, int d)
{
    double *z = xmalloc((size_t)d * 8), *w = xmalloc((size_t)d * 8), lam = 0;
    for (int i = 0; i < d; i++)
        z[i] = 1.0 + 0.01 * i;
    for (int it = 0; it < 20000; it++) {
        /* w = J z = z − x (yᵀz); then z = Jᵀ w = w − y (xᵀw) */
        double yz = 0, xw = 0, nz = 0;
        for (int i = 0; i < d; i++)
            yz += y[i] * z[i];
        for (int i = 0; i < d; i++)
            w[i] = z[i] - x[i] * yz;
        for (int i = 0; i < d; i++)
            xw += x[i] * w[i];
        for (int i = 0; i < d; i++)
            z[i] = w[i] - y[i] * xw, nz += z[i] * z[i];
        nz = sqrt(nz);
        lam = nz;
        for (int i = 0; i < d; i++)
            z[i] /= nz;
    }
    free(z), free(w);
    return sqrt(lam);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Replays VLA's A in double (docs/DESIGN.md 3.1 steps 1–4) and records ‖I − k̂ α̂ᵀ‖₂ per event. */
static void jacobian(int d, int T, int elu, uint64_t sd, double *norms, double *cosines, double *max_check)
{
    const double s = elu ? 1.0 / sqrt((double)d) : 1.0;
    double *A = calloc((size_t)d * d, 8), *u = xmalloc((size_t)d * 8), *w = xmalloc((size_t)d * 8);
    double *kh = xmalloc((size_t)d * 8), *al = xmalloc((size_t)d * 8);
    for (int i = 0; i < d; i++)
        A[i * d + i] = 10.0;
    seed(sd);
    *max_check = 0;
    for (int t = 1; t <= T; t++) {
        double nu = 0, nk = 0, uw = 0, na = 0, c = 0;
        for (int j = 0; j < d; j++) {
            double x = gauss();
            u[j] = x;
            kh[j] = elu ? (x > 0 ? x + 1 : exp(x)) : x;
            nu += x * x, nk += kh[j] * kh[j];
        }
        for (int j = 0; j < d; j++)
            u[j] *= s / sqrt(nu), kh[j] /= sqrt(nk);
        for (int i = 0; i < d; i++) {
            w[i] = 0;
            for (int j = 0; j < d; j++)
                w[i] += A[i * d + j] * u[j];
            uw += u[i] * w[i];
        }
        double delta = fmax(1.0 + uw, 1e-4);
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++)
                A[i * d + j] -= w[i] * w[j] / delta;
        if (t % 20 == 0)
            for (int i = 0; i < d; i++)
                A[i * d + i] += 1e-3;
        for (int i = 0; i < d; i++) {
            al[i] = 0;
            for (int j = 0; j < d; j++)
                al[i] += A[i * d + j] * kh[j];
            na += al[i] * al[i];
        }
        for (int i = 0; i < d; i++)
            al[i] /= sqrt(na), c += al[i] * kh[i];
        norms[t - 1] = jac_norm(c);
        cosines[t - 1] = c;
        if (t <= 10)
            *max_check = fmax(*max_check, fabs(norms[t - 1] - jac_norm_power(kh, al, d)));
    }
    free(A), free(u), free(w), free(kh), free(al);
}

static double quant(const double *sorted, int n, double q)
{
    int i = (int)floor(q * (n - 1));
    return sorted[i];
}

/* ---- main --------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    int nseeds = 10, quick = 0;
    const char *datpath = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seeds") && i + 1 < argc)
            nseeds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dat") && i + 1 < argc)
            datpath = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else {
            fprintf(stderr, "usage: %s [--seeds N (1..1000)] [--dat FILE] [--quick]\n", argv[0]);
            return 2;
        }
    }
    if (nseeds < 1 || nseeds > 1000) {
        fprintf(stderr, "--seeds: %d is out of range, expected 1..1000\n", nseeds);
        return 2;
    }
    openblas_set_num_threads(1);
    FILE *dat = NULL;
    if (datpath && !(dat = fopen(datpath, "w"))) {
        perror(datpath);
        return 1;
    }
    if (dat)
        fprintf(dat, "# keys d ratio n method seed accuracy   (bench/mqar, one line per trial)\n");

    /* 1. MQAR */
    const double ratios[] = {0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0};
    const int nr = sizeof ratios / sizeof ratios[0];
    const int dims[] = {32, 64, 128};
    printf("## MQAR capacity: accuracy (mean over seeds 1..%d; min–max in brackets)\n\n", nseeds);
    const double strengths[3] = {0.0, 0.5, 1.0};
    const char *const keyname[3] = {"isotropic", "shared0.5", "shared1"};
    for (int ks = 0; ks < 3; ks++) {
        for (int di = 0; di < (quick ? 1 : 3); di++) {
            const int d = dims[di];
            printf("%s keys, d = %d\n\n| method |",
                   ks == 0 ? "isotropic" : ks == 1 ? "shared-direction (a = 0.5)" : "shared-direction (a = 1)", d);
            for (int r = 0; r < nr; r++)
                printf(" n = %gd |", ratios[r]);
            printf("\n|---|");
            for (int r = 0; r < nr; r++)
                printf("---|");
            printf("\n");
            double mean[NMETH][8], lo[NMETH][8], hi[NMETH][8];
            for (int r = 0; r < nr; r++) {
                const int n = (int)lround(ratios[r] * d);
                for (int me = 0; me < NMETH; me++)
                    mean[me][r] = 0, lo[me][r] = 1, hi[me][r] = 0;
                for (int s = 1; s <= nseeds; s++) {
                    double acc[NMETH];
                    trial(d, n, strengths[ks], (uint64_t)(s * 1000003 + d * 31 + r + 7919 * ks), acc);
                    for (int me = 0; me < NMETH; me++) {
                        mean[me][r] += acc[me] / nseeds;
                        lo[me][r] = fmin(lo[me][r], acc[me]);
                        hi[me][r] = fmax(hi[me][r], acc[me]);
                        if (dat)
                            fprintf(dat, "%s %d %g %d %s %d %.6f\n", keyname[ks], d,
                                    ratios[r], n, METH_ID[me], s, acc[me]);
                    }
                }
            }
            for (int me = 0; me < NMETH; me++) {
                printf("| %s |", METH[me]);
                for (int r = 0; r < nr; r++)
                    printf(" %.2f [%.2f–%.2f] |", mean[me][r], lo[me][r], hi[me][r]);
                printf("\n");
            }
            printf("\n");
            fflush(stdout);
        }
    }
    if (dat)
        fclose(dat);

    /* 2. state norms */
    printf("## State growth: ‖S_T‖_F, k, v ~ N(0, I), mean over seeds 1..%d\n\n", nseeds);
    printf("| d | T | linear (identity) | linear (elu1) | vla (identity, s=1) | vla (paper) | "
           "linear/vla (identity) | linear (elu1)/vla (paper) |\n|---|---|---|---|---|---|---|---|\n");
    for (int di = 0; di < 2; di++) {
        const int d = dims[di];
        const int Ts[3] = {100, 1000, 10000};
        for (int ti = 0; ti < (quick ? 2 : 3); ti++) {
            double n[4] = {0};
            for (int s = 1; s <= nseeds; s++) {
                n[0] += state_norm(MA_BACKBONE_LINEAR, MA_FEATURE_IDENTITY, 1, d, Ts[ti], (uint64_t)s) / nseeds;
                n[1] += state_norm(MA_BACKBONE_LINEAR, MA_FEATURE_ELU1, 1, d, Ts[ti], (uint64_t)s) / nseeds;
                n[2] += state_norm(MA_BACKBONE_VLA, MA_FEATURE_IDENTITY, 1, d, Ts[ti], (uint64_t)s) / nseeds;
                n[3] += state_norm(MA_BACKBONE_VLA, MA_FEATURE_ELU1, 1 / sqrt(d), d, Ts[ti], (uint64_t)s) / nseeds;
            }
            printf("| %d | %d | %.1f | %.1f | %.2f | %.2f | %.1f× | %.1f× |\n", d, Ts[ti], n[0], n[1], n[2], n[3],
                   n[0] / n[2], n[1] / n[3]);
        }
    }

    /* 3. Jacobian */
    const int T = quick ? 5000 : 50000;
    printf("\n## Spectral norm of the VLA write's Jacobian I − k̂ α̂ᵀ over %d events (k ~ N(0, I), seed 1)\n\n", T);
    printf("| setting | d | min | p1 | p10 | p50 | p90 | p99 | max | max after t = 1000 | share = 1 (±1e-6) "
           "| mean cos(k̂, α̂) | closed form vs power iteration |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    double *jn = xmalloc((size_t)T * 8), *cs = xmalloc((size_t)T * 8);
    for (int elu = 0; elu < 2; elu++)
        for (int di = 0; di < 2; di++) {
            const int d = dims[di];
            double chk, mc = 0, late = 0;
            int ones = 0;
            jacobian(d, T, elu, 1, jn, cs, &chk);
            for (int i = 0; i < T; i++) {
                ones += fabs(jn[i] - 1.0) <= 1e-6;
                mc += cs[i] / T;
                if (i >= 1000)
                    late = fmax(late, jn[i]);
            }
            qsort(jn, (size_t)T, 8, cmp_d);
            printf("| %s | %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.3f%% | %.3f | %.1e |\n",
                   elu ? "paper (elu1, s=1/sqrt(d))" : "identity, s=1", d, jn[0], quant(jn, T, 0.01),
                   quant(jn, T, 0.1), quant(jn, T, 0.5), quant(jn, T, 0.9), quant(jn, T, 0.99), jn[T - 1],
                   late, 100.0 * ones / T, mc, chk);
        }
    free(jn), free(cs);
    return 0;
}
