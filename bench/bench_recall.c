/*
 * bench/bench_recall.c — the index selector's sparse read against the exact full read (issue 15): recall
 * under paraphrase (queries at cosine 1.0, 0.9, 0.8, 0.7 of a planted needle's key), speed against the full
 * read of the same run, where the sparse read's time goes, the fraction of the memory bandwidth its scan
 * reaches, and the index's bytes per event, for T = 2^min ... 2^max events, H heads of d = 64, isotropic or
 * clustered keys.
 *
 * Method. One archive (selector index, d = d_v = 64, C = 64, topk 16 unless --topk) grows with keys and
 * values that are a pure function of the event index (counter-based generator), so the bench can regenerate
 * any key. At each T, N needles (random events) are drawn; for each cosine c a query per needle is built,
 * per head q_h = c·k_h + sqrt(1 − c²)·|k_h|·u_h (u_h a random unit vector orthogonal to k_h). The
 * reference is the pointer of the exact full read (the event with the largest attention weight summed over
 * heads, the first on ties), computed for all queries at once: logits by sgemm over blocks of regenerated
 * keys, per head max and normaliser in a first pass (double), weights and argmax in a second (one pass for
 * H = 1: the argmax logit). A handful of real ma_archive_read_full calls (timed: the speed reference)
 * check that reference. Recall = fraction of sparse reads whose pointer is the reference's; "needle" =
 * fraction pointing at the planted event.
 *
 * Times are thread CPU time (CLOCK_THREAD_CPUTIME_ID), single-threaded BLAS: the machine is shared. The
 * sparse read's median and 99th percentile over all N·4 queries; the full read's median over --full-reps.
 * The breakdown comes from ma_ivf_profile (probe selection, sign-code scan, re-rank); the rest of a read
 * (copying the candidates' keys and values, exact attention) is the difference. Bandwidth: a sum over a
 * 512 MiB buffer, measured at each T in the same run; the scan's bytes are the sign codes, factors and
 * alphas of the events it scans.
 *
 * Generators (--gen): iso — keys and values N(0, 1); clu — per head, 64 clusters: k = a·u0 + U·z_c + s_c·g,
 * u0 a dominant unit direction with amplitude a uniform in [3, 9] per event, U a random 64×8 matrix (a
 * rank-8 subspace for the clusters' centres), z_c ~ N(0, 4·I_8), per-cluster spread s_c uniform in
 * [0.2, 1.0], g ~ N(0, I_64); the cluster of an event is a hash of its index.
 *
 * Many heads, the mass outside the candidates (issue 15 item 3; docs/ARCHIVE.md "Many heads"): --mass MODE
 * reads with that estimate (off, alone, unprobed, mean: ma_ivf_set_mass_mode; default mean); --compare
 * M,M,... reads every query again under each mode in the same run (recall, median, p99: MASS lines);
 * --mass-check N compares the estimate with the truth for N reads at cosine 0.9 (the reference's full
 * normaliser less the candidates' exact mass); --out-reps N the output and the pointer's weight against N
 * full reads, with the estimate in the output's normaliser and without (OUTERR); --mass-paired N times N
 * reads with the estimate off and on, one after the other (MASSPAIRED: the paired ratio).
 *
 *
 * Probing (H = 1): the reads probe adaptively (ma_archive_set_adaptive; --fixed: a fixed count, the
 * archive's default), and each T measures the other probing on the same queries (recall, lists and
 * events scanned, mean time: the "OTHER" line) and the index search alone; the paired rounds time both
 * probings after each full read.
 *
 * Output: a table, then one "DATA" line per T for bench/recall.gp.
 *
 * Usage: bench_recall [--gen iso|clu] [--heads H] [--min-log2 A] [--max-log2 B] [--needles N] [--seed S]
 *                     [--full-reps R] [--topk K] [--generic] [--paired ROUNDS] [--shared] [--fixed]
 *                     [--mass MODE] [--compare MODE,...] [--mass-check N] [--out-reps N] [--mass-paired N]
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/archive.h"
#include "core/error.h"
#include "core/ivf.h"

enum { D = 64, NCOS = 4, NCL = 64, RANK = 8 };
static const double COS[NCOS] = {1.0, 0.9, 0.8, 0.7};

static int H = 1, clustered = 0;
static uint64_t seed = 1;
static float *cl_u0, *cl_U, *cl_z, *cl_s;   /* per head: u0 (D), U (D×RANK), z (NCL×RANK), s (NCL) */

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unit(uint64_t *s)
{
    *s = mix(*s);
    return ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
}

/* n standard normals from stream s (Box–Muller, n even). */
static void normals(uint64_t *s, float *o, int n)
{
    for (int j = 0; j < n; j += 2) {
        double r = sqrt(-2.0 * log(unit(s))), t = 6.283185307179586 * unit(s);
        o[j] = (float)(r * cos(t));
        o[j + 1] = (float)(r * sin(t));
    }
}

static void clusters_init(void)
{
    uint64_t s = mix(seed ^ 0xc1c1c1);
    cl_u0 = malloc(sizeof(float) * (size_t)H * D);
    cl_U = malloc(sizeof(float) * (size_t)H * D * RANK);
    cl_z = malloc(sizeof(float) * (size_t)H * NCL * RANK);
    cl_s = malloc(sizeof(float) * (size_t)H * NCL);
    for (int h = 0; h < H; h++) {
        float *u = cl_u0 + h * D;
        normals(&s, u, D);
        double nn = 0;
        for (int j = 0; j < D; j++)
            nn += (double)u[j] * u[j];
        for (int j = 0; j < D; j++)
            u[j] = (float)(u[j] / sqrt(nn));
        normals(&s, cl_U + (size_t)h * D * RANK, D * RANK);
        for (int j = 0; j < D * RANK; j++)
            cl_U[(size_t)h * D * RANK + j] /= (float)sqrt((double)RANK);
        normals(&s, cl_z + (size_t)h * NCL * RANK, NCL * RANK);
        for (int j = 0; j < NCL * RANK; j++)
            cl_z[(size_t)h * NCL * RANK + j] *= 2.0f;
        for (int c = 0; c < NCL; c++)
            cl_s[h * NCL + c] = (float)(0.2 + 0.8 * unit(&s));
    }
}

/* Event i's key (H·D) and value (H·D, may be NULL). */
static void event_kv(uint64_t i, float *k, float *v)
{
    uint64_t s = mix(seed * 0x100000001b3ull ^ mix(i));
    for (int h = 0; h < H; h++) {
        float *kh = k + h * D;
        normals(&s, kh, D);
        if (clustered) {
            int c = (int)(mix(i ^ 0x5c5c ^ (uint64_t)h << 40) % NCL);
            float a = (float)(3.0 + 6.0 * unit(&s)), sc = cl_s[h * NCL + c];
            const float *u0 = cl_u0 + h * D, *U = cl_U + (size_t)h * D * RANK, *z = cl_z + ((size_t)h * NCL + c) * RANK;
            for (int j = 0; j < D; j++) {
                float m = 0;
                for (int r = 0; r < RANK; r++)
                    m += U[j * RANK + r] * z[r];
                kh[j] = a * u0[j] + m + sc * kh[j];
            }
        }
    }
    if (v)
        normals(&s, v, H * D);
}

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of n values (sorts x). */
static double quantile(double *x, int n, double q)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    double r = q * (n - 1);
    int i = (int)r;
    return i + 1 < n ? x[i] + (r - i) * (x[i + 1] - x[i]) : x[n - 1];
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_recall: %s: %s\n", what, ma_strerror(rc));
    exit(1);
}

static void grow(ma_archive *a, uint64_t T)
{
    enum { BATCH = 4096 };
    float *k = malloc(sizeof(float) * BATCH * (size_t)H * D), *v = malloc(sizeof(float) * BATCH * (size_t)H * D);
    while (ma_archive_length(a) < T) {
        uint64_t first = ma_archive_length(a), n = T - first < BATCH ? T - first : BATCH;
        for (uint64_t i = 0; i < n; i++)
            event_kv(first + i, k + i * (size_t)H * D, v + i * (size_t)H * D);
        int rc = ma_archive_append(a, (size_t)n, k, v);
        if (rc)
            die("append", rc);
    }
    free(k);
    free(v);
}

/* Query at cosine c of key k, per head (stream s). */
static void make_query(const float *k, double c, uint64_t *s, float *q)
{
    for (int h = 0; h < H; h++) {
        const float *kh = k + h * D;
        float *qh = q + h * D, u[D];
        double kk = 0, uk = 0, uu = 0;
        normals(s, u, D);
        for (int j = 0; j < D; j++) {
            kk += (double)kh[j] * kh[j];
            uk += (double)u[j] * kh[j];
        }
        for (int j = 0; j < D; j++) {
            u[j] -= (float)(uk / kk * kh[j]);
            uu += (double)u[j] * u[j];
        }
        for (int j = 0; j < D; j++)
            qh[j] = (float)(c * kh[j] + sqrt(1 - c * c) * sqrt(kk) * u[j] / sqrt(uu));
    }
}

/* Reference pointers of the full read for the nq queries Q (nq × H·D) over events [0, T); hptr (nq × H):
 * each head's own pointer, the first event of its largest logit (H > 1 only). */
static void reference(uint64_t T, const float *Q, int nq, int64_t *ptr, int64_t *hptr, double *lz)
{
    enum { B = 2048 };
    const size_t HD = (size_t)H * D;
    const float scale = 1.0f / sqrtf((float)D);
    float *K = malloc(sizeof(float) * B * HD), *Kh = malloc(sizeof(float) * B * D);
    float *Qh = malloc(sizeof(float) * (size_t)nq * D), *S = malloc(sizeof(float) * (size_t)nq * B);
    double *mx = malloc(sizeof(double) * (size_t)nq * H), *Z = malloc(sizeof(double) * (size_t)nq * H);
    double *w = malloc(sizeof(double) * (size_t)nq * B), *best = malloc(sizeof(double) * (size_t)nq);
    for (int i = 0; i < nq * H; i++) {
        mx[i] = -INFINITY;
        Z[i] = 0;
    }
    for (int i = 0; i < nq; i++) {
        best[i] = -INFINITY;
        ptr[i] = -1;
    }
    for (int pass = H == 1 ? 1 : 0; pass < 2; pass++) {
        for (uint64_t b0 = 0; b0 < T; b0 += B) {
            int n = (int)(T - b0 < B ? T - b0 : B);
            for (int i = 0; i < n; i++)
                event_kv(b0 + (uint64_t)i, K + (size_t)i * HD, NULL);
            if (pass == 1 && H > 1)
                memset(w, 0, sizeof(double) * (size_t)nq * B);
            for (int h = 0; h < H; h++) {
                for (int i = 0; i < n; i++)
                    memcpy(Kh + (size_t)i * D, K + (size_t)i * HD + (size_t)h * D, sizeof(float) * D);
                for (int i = 0; i < nq; i++)
                    memcpy(Qh + (size_t)i * D, Q + (size_t)i * HD + (size_t)h * D, sizeof(float) * D);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, n, D, 1.0f, Qh, D, Kh, D, 0.0f, S, B);
                for (int i = 0; i < nq; i++) {
                    const float *s = S + (size_t)i * B;
                    if (H == 1) {
                        for (int j = 0; j < n; j++)
                            if (s[j] > best[i]) {
                                best[i] = s[j];
                                ptr[i] = (int64_t)(b0 + (uint64_t)j);
                            }
                        continue;
                    }
                    double *m = &mx[i * H + h], *z = &Z[i * H + h];
                    if (pass == 0) {
                        for (int j = 0; j < n; j++) {
                            double l = (double)(s[j] * scale);
                            if (l > *m) {
                                *z = *z * exp(*m - l) + 1;
                                *m = l;
                                hptr[i * H + h] = (int64_t)(b0 + (uint64_t)j);
                            } else {
                                *z += exp(l - *m);
                            }
                        }
                    } else {
                        for (int j = 0; j < n; j++)
                            w[(size_t)i * B + j] += exp((double)(s[j] * scale) - *m) / *z;
                    }
                }
            }
            if (pass == 1 && H > 1)
                for (int i = 0; i < nq; i++)
                    for (int j = 0; j < n; j++)
                        if (w[(size_t)i * B + j] > best[i]) {
                            best[i] = w[(size_t)i * B + j];
                            ptr[i] = (int64_t)(b0 + (uint64_t)j);
                        }
        }
    }
    for (int i = 0; lz && H > 1 && i < nq * H; i++)   /* each head's log normaliser over all events */
        lz[i] = mx[i] + log(Z[i]);
    free(K);
    free(Kh);
    free(Qh);
    free(S);
    free(mx);
    free(Z);
    free(w);
    free(best);
}

/* Read bandwidth: GB/s of a sum over a 512 MiB buffer (median of 3). */
static double bandwidth(void)
{
    static float *buf;
    const size_t n = (size_t)1 << 27;
    if (!buf) {
        buf = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            buf[i] = (float)(i & 1023);
    }
    double r[3];
    volatile float sink;
    for (int t = 0; t < 3; t++) {
        double t0 = cpu_now();
        float a[16] = {0};
        for (size_t i = 0; i < n; i += 16)
            for (int l = 0; l < 16; l++)
                a[l] += buf[i + (size_t)l];
        r[t] = (double)n * sizeof(float) / (cpu_now() - t0) / 1e9;
        float s = 0;
        for (int l = 0; l < 16; l++)
            s += a[l];
        sink = s;
    }
    (void)sink;
    return quantile(r, 3, 0.5);
}

static const char *const MASS_NAMES[] = {"off", "alone", "unprobed", "mean"};

/* A --mass mode by name; -1 if unknown. */
static int mass_mode(const char *name)
{
    for (int m = 0; m < 4; m++)
        if (!strcmp(name, MASS_NAMES[m]))
            return m;
    return -1;
}

static void mass_accuracy(ma_archive *a, const float *Q, int needles, int n, const double *lzf, int topk);

/* Recall per cosine of the sparse reads of all queries under mass mode m, and their median and p99 CPU;
 * with check > 0 the estimate's accuracy under m (mass_accuracy). */
static void mass_compare(ma_archive *a, int m, uint64_t T, const float *Q, int needles, const int64_t *ref,
                         float *out, double *ts, int check, const double *lzf, int topk)
{
    const size_t HD = (size_t)H * D;
    const int nq = needles * NCOS;
    int hit[NCOS] = {0}, prev = ma_ivf_mass_mode();
    ma_ivf_set_mass_mode(m);
    for (int qi = 0; qi < nq; qi++) {
        ma_read_result r = {.v = out};
        double t0 = cpu_now();
        int rc = ma_archive_read_sparse(a, Q + (size_t)qi * HD, 0, &r);
        ts[qi] = cpu_now() - t0;
        if (rc)
            die("sparse read", rc);
        hit[qi / needles] += r.pointer == ref[qi];
        ma_read_result_clear(&r);
    }
    if (check > 0 && m != MA_IVF_MASS_OFF)
        mass_accuracy(a, Q, needles, check, lzf, topk);
    ma_ivf_set_mass_mode(prev);
    double md = quantile(ts, nq, 0.5), p99 = quantile(ts, nq, 0.99);
    printf("#   mass %-8s recall %.3f / %.3f / %.3f / %.3f, sparse median %.4f ms, p99 %.4f ms\n", MASS_NAMES[m],
           (double)hit[0] / needles, (double)hit[1] / needles, (double)hit[2] / needles, (double)hit[3] / needles,
           md * 1e3, p99 * 1e3);
    printf("MASS %s %d %llu %s %.4f %.4f %.4f %.4f %.5f %.5f\n", clustered ? "clu" : "iso", H, (unsigned long long)T,
           MASS_NAMES[m], (double)hit[0] / needles, (double)hit[1] / needles, (double)hit[2] / needles,
           (double)hit[3] / needles, md * 1e3, p99 * 1e3);
}

/* The cost of the estimate, paired: n queries (spread over the cosines) each read with the estimate off and
 * on, in two rounds interleaved in time (round 1: even reads off, odd on; round 2 swapped), so both modes
 * see the same load of the shared machine and a query's two reads are n reads apart (read one right after
 * the other, the second found the first's lists and candidates in cache: a first version measured that
 * order, not the estimate). The median and p99 of each and the ratio of the medians on/off; the per-query
 * ratio's median and 10 % / 90 %. */
static void mass_paired(ma_archive *a, const float *Q, int needles, int n, uint64_t T, float *out)
{
    const size_t HD = (size_t)H * D;
    double *t0s = malloc(sizeof(double) * (size_t)n), *t1s = malloc(sizeof(double) * (size_t)n);
    double *rat = malloc(sizeof(double) * (size_t)n);
    int prev = ma_ivf_mass_mode();
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < n; i++) {
            int qi = (i % NCOS) * needles + (i / NCOS) % needles, m = (i + round) % 2;
            ma_ivf_set_mass_mode(m ? prev : MA_IVF_MASS_OFF);
            ma_read_result r = {.v = out};
            double t = cpu_now();
            int rc = ma_archive_read_sparse(a, Q + (size_t)qi * HD, 0, &r);
            t = cpu_now() - t;
            if (rc)
                die("sparse read", rc);
            (m ? t1s : t0s)[i] = t;
            ma_read_result_clear(&r);
        }
    for (int i = 0; i < n; i++)
        rat[i] = t1s[i] / t0s[i];
    ma_ivf_set_mass_mode(prev);
    double r50 = quantile(rat, n, 0.5), r10 = quantile(rat, n, 0.1), r90 = quantile(rat, n, 0.9);
    double a50 = quantile(t0s, n, 0.5), a99 = quantile(t0s, n, 0.99), b50 = quantile(t1s, n, 0.5),
           b99 = quantile(t1s, n, 0.99);
    printf("#   paired (%d reads): estimate off median %.4f ms p99 %.4f, %s median %.4f ms p99 %.4f; medians' ratio "
           "on/off %.3f; per-read ratio median %.3f (10%% %.3f, 90%% %.3f)\n", n, a50 * 1e3, a99 * 1e3, MASS_NAMES[prev],
           b50 * 1e3, b99 * 1e3, b50 / a50, r50, r10, r90);
    printf("MASSPAIRED %s %d %llu %d %.5f %.5f %.5f %.5f %.4f %.4f %.4f\n", clustered ? "clu" : "iso", H,
           (unsigned long long)T, n, a50 * 1e3, a99 * 1e3, b50 * 1e3, b99 * 1e3, r50, r10, r90);
    free(t0s);
    free(t1s);
    free(rat);
}

/* The index's estimate of each head's mass outside the candidates against the truth (the full normaliser
 * of the reference less the candidates' exact mass), for the first n queries at cosine 0.9: the median and
 * the 90th percentile of |log(estimate/truth)| over (query, head), and of its spread over the heads of a
 * query (max − min: a factor common to all heads does not move the pointer). */
static void mass_accuracy(ma_archive *a, const float *Q, int needles, int n, const double *lzf, int topk)
{
    const size_t HD = (size_t)H * D;
    size_t mx;
    const ma_ivf *ix = ma_archive_index(a);
    int np = ma_archive_index_probes(a, topk, &mx);
    size_t cap = ma_ivf_ids_cap(ix, mx), nc;
    uint64_t *cand = malloc(sizeof(uint64_t) * cap);
    double *lse = malloc(sizeof(double) * (size_t)H), *err = malloc(sizeof(double) * (size_t)n * H);
    double *spread = malloc(sizeof(double) * (size_t)n);
    float *k = malloc(sizeof(float) * HD);
    int m = 0, inf = 0;
    for (int i = 0; i < n && i < needles; i++) {
        int qi = needles + i;   /* cosine 0.9 */
        const float *q = Q + (size_t)qi * HD;
        int rc = ma_ivf_search_mass(ix, q, 1, np, mx, 0, cand, &nc, NULL, lse);
        if (rc)
            die("index search", rc);
        double zu[64] = {0};
        for (size_t j = 0; j < nc; j++) {
            event_kv(cand[j], k, NULL);
            for (int h = 0; h < H; h++) {
                double dot = 0;
                for (int t = 0; t < D; t++)
                    dot += (double)q[h * D + t] * k[h * D + t];
                zu[h] += exp(dot / sqrt((double)D) - lzf[(size_t)qi * H + h]);
            }
        }
        double lo = INFINITY, hi = -INFINITY;
        for (int h = 0; h < H; h++) {
            double out = 1 - zu[h];   /* the true outside mass over the full normaliser */
            if (out <= 0 || lse[h] == -INFINITY) {
                inf++;
                continue;
            }
            double e = lse[h] - lzf[(size_t)qi * H + h] - log(out);
            err[m++] = fabs(e);
            lo = e < lo ? e : lo;
            hi = e > hi ? e : hi;
        }
        spread[i] = hi > lo ? hi - lo : 0;
    }
    int ns = n < needles ? n : needles;
    printf("#   outside mass, estimate against truth (cos 0.9, %d reads): |log ratio| median %.3f, p90 %.3f, max %.3f; "
           "spread over heads median %.3f, p90 %.3f; %d (read, head) without an estimate or without mass outside\n",
           ns, m ? quantile(err, m, 0.5) : 0, m ? quantile(err, m, 0.9) : 0, m ? quantile(err, m, 1.0) : 0,
           quantile(spread, ns, 0.5), quantile(spread, ns, 0.9), inf);
    free(cand);
    free(lse);
    free(err);
    free(spread);
    free(k);
}

/* The sparse read's output and pointer weight against the full read's, for n queries (spread over the
 * cosines), with the estimated outside mass in the output's normaliser and without: mean and max relative
 * error |o − o_full| / |o_full|, and of the weight. */
static void output_error(ma_archive *a, const float *Q, int needles, int n)
{
    const size_t HD = (size_t)H * D;
    float *of = malloc(sizeof(float) * HD), *os = malloc(sizeof(float) * HD);
    double sum[2] = {0}, mxe[2] = {0}, wsum[2] = {0}, wmx[2] = {0};
    for (int i = 0; i < n; i++) {
        int qi = (i % NCOS) * needles + i / NCOS;
        ma_read_result rf = {.v = of};
        int rc = ma_archive_read_full(a, Q + (size_t)qi * HD, &rf);
        if (rc)
            die("full read", rc);
        double nf = 0;
        for (size_t j = 0; j < HD; j++)
            nf += (double)of[j] * of[j];
        for (int w = 0; w < 2; w++) {
            ma_archive_set_mass_in_output(w);
            ma_read_result r = {.v = os};
            if ((rc = ma_archive_read_sparse(a, Q + (size_t)qi * HD, 0, &r)) != 0)
                die("sparse read", rc);
            double ne = 0;
            for (size_t j = 0; j < HD; j++)
                ne += ((double)os[j] - of[j]) * ((double)os[j] - of[j]);
            double e = sqrt(ne / nf), we = fabs(r.weight - rf.weight) / rf.weight;
            sum[w] += e;
            mxe[w] = e > mxe[w] ? e : mxe[w];
            wsum[w] += we;
            wmx[w] = we > wmx[w] ? we : wmx[w];
            ma_read_result_clear(&r);
        }
        ma_read_result_clear(&rf);
    }
    ma_archive_set_mass_in_output(MA_ARCHIVE_MASS_IN_OUTPUT);
    printf("#   output vs full read (%d reads): relative error mean %.4f max %.4f with the outside mass in the "
           "output's normaliser, mean %.4f max %.4f without; pointer weight (relative) mean %.4f max %.4f\n",
           n, sum[1] / n, mxe[1], sum[0] / n, mxe[0], wsum[1] / n, wmx[1]);
    printf("OUTERR %s %d %d %.5f %.5f %.5f %.5f %.5f %.5f\n", clustered ? "clu" : "iso", H, n, sum[1] / n, mxe[1],
           sum[0] / n, mxe[0], wsum[1] / n, wmx[1]);
    free(of);
    free(os);
}
/* A paired round's sparse reads: 64 queries of the set from qi on (stride 61), each timed (thread CPU) into
 * pt[64]; returns their median. */
static double paired_sparse_median(const ma_archive *a, const float *Q, size_t HD, int qi, int nq, float *out,
                                   double *pt)
{
    for (int j = 0; j < 64; j++) {
        int qj = (qi + j * 61) % nq;
        ma_read_result r = {.v = out};
        double t0 = cpu_now();
        int rc = ma_archive_read_sparse(a, Q + (size_t)qj * HD, 0, &r);
        pt[j] = cpu_now() - t0;
        if (rc)
            die("sparse read", rc);
        ma_read_result_clear(&r);
    }
    return quantile(pt, 64, 0.5);
}

static int fixed;   /* --fixed: the reads probe a fixed count (the comparison runs adaptive) */

int main(int argc, char **argv)
{
    int min_log2 = 16, max_log2 = 21, needles = 1000, full_reps = 5, topk = 16, generic = 0, paired = 0, shared = 0;
    int mass = MA_IVF_MASS_DEFAULT, mass_check = 0, out_reps = 0, mass_pairs = 0;
    const char *compare = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            clustered = !strcmp(argv[++i], "clu");
        else if (!strcmp(argv[i], "--heads") && i + 1 < argc)
            H = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-log2") && i + 1 < argc)
            min_log2 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-log2") && i + 1 < argc)
            max_log2 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--needles") && i + 1 < argc)
            needles = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--full-reps") && i + 1 < argc)
            full_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--topk") && i + 1 < argc)
            topk = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--generic"))
            generic = 1;
        else if (!strcmp(argv[i], "--shared"))
            shared = 1;
        else if (!strcmp(argv[i], "--fixed"))
            fixed = 1;
        else if (!strcmp(argv[i], "--paired") && i + 1 < argc)
            paired = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mass") && i + 1 < argc)
            mass = mass_mode(argv[++i]);
        else if (!strcmp(argv[i], "--compare") && i + 1 < argc)
            compare = argv[++i];
        else if (!strcmp(argv[i], "--mass-check") && i + 1 < argc)
            mass_check = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out-reps") && i + 1 < argc)
            out_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mass-paired") && i + 1 < argc)
            mass_pairs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--gen iso|clu] [--heads H] [--min-log2 A] [--max-log2 B] [--needles N] "
                            "[--seed S] [--full-reps R] [--topk K] [--generic] [--paired ROUNDS] [--shared] [--fixed] "
                            "[--mass MODE] [--compare MODE,MODE,...] [--mass-check N] [--out-reps N] "
                            "[--mass-paired N]\n", argv[0]);
            return 2;
        }
    }
    if (mass < 0) {
        fprintf(stderr, "bench_recall: --mass: off, alone, unprobed or mean\n");
        return 2;
    }
    if (H < 1 || H > 64 || min_log2 < 10 || max_log2 > 24 || min_log2 > max_log2 || needles < 1 || full_reps < 1) {
        fprintf(stderr, "bench_recall: bad arguments\n");
        return 2;
    }
    openblas_set_num_threads(1);
    ma_ivf_set_generic_kernels(generic);
    ma_ivf_set_legacy_shared(shared);
    ma_ivf_set_mass_mode(mass);
    if (clustered)
        clusters_init();

    ma_params p;
    ma_params_default(&p);
    p.heads = H;
    p.dim = D;
    p.value_dim = D;
    p.topk = topk;
    p.selector = MA_SELECTOR_INDEX;
    ma_archive *a;
    int rc = ma_archive_create(&p, &a);
    if (rc)
        die("create", rc);
    ma_archive_set_adaptive(a, !fixed);

    const size_t HD = (size_t)H * D;
    const int nq = needles * NCOS;
    float *Q = malloc(sizeof(float) * (size_t)nq * HD), *k = malloc(sizeof(float) * HD);
    float *out = malloc(sizeof(float) * HD);
    uint64_t *need = malloc(sizeof(uint64_t) * (size_t)needles);
    int64_t *ref = malloc(sizeof(int64_t) * (size_t)nq), *href = malloc(sizeof(int64_t) * (size_t)nq * H);
    double *lzf = malloc(sizeof(double) * (size_t)nq * H);
    double *ts = malloc(sizeof(double) * (size_t)nq), *tf = malloc(sizeof(double) * (size_t)full_reps);

    printf("# bench_recall: gen %s, H %d, d %d, topk %d, %d needles x cosines 1.0/0.9/0.8/0.7, seed %llu%s%s\n",
           clustered ? "clustered" : "isotropic", H, D, topk, needles, (unsigned long long)seed,
           generic ? ", portable kernels" : "", H > 1 ? (shared ? ", one shared index" : ", one index per head") : "");
    printf("# recall = sparse pointer == exact full read's pointer; ms = thread CPU per read (sparse: median, p99)\n");
    printf("%8s %9s %8s %8s %7s | %6s %6s %6s %6s | %6s %6s %6s %6s | %7s %5s %5s %5s %5s | %6s %5s %6s %5s\n", "T",
           "full ms", "sp ms", "sp p99", "x full", "r1.0", "r0.9", "r0.8", "r0.7", "n1.0", "n0.9", "n0.8",
           "n0.7", "scanned", "probe", "scan", "rerank", "rest", "scanGB", "BW", "frac", "B/ev");
    for (int lg = min_log2; lg <= max_log2; lg++) {
        const uint64_t T = 1ull << lg;
        double g0 = wall_now();
        grow(a, T);
        double grow_s = wall_now() - g0;

        uint64_t qs = mix(seed ^ 0x9e37 ^ (uint64_t)lg << 32);
        for (int i = 0; i < needles; i++)
            need[i] = (uint64_t)(unit(&qs) * (double)T);
        for (int c = 0; c < NCOS; c++)
            for (int i = 0; i < needles; i++) {
                event_kv(need[i], k, NULL);
                make_query(k, COS[c], &qs, Q + ((size_t)c * needles + i) * HD);
            }
        double r0 = wall_now();
        reference(T, Q, nq, ref, href, lzf);
        double ref_s = wall_now() - r0;

        /* Sparse reads, the index's phases accounted. */
        int hit[NCOS] = {0}, nhit[NCOS] = {0};
        int64_t *sptr = malloc(sizeof(int64_t) * (size_t)nq);
        ma_ivf_profile(1, NULL, NULL, NULL);
        for (int c = 0; c < NCOS; c++)
            for (int i = 0; i < needles; i++) {
                int qi = c * needles + i;
                ma_read_result r = {.v = out};
                double t0 = cpu_now();
                rc = ma_archive_read_sparse(a, Q + (size_t)qi * HD, 0, &r);
                ts[qi] = cpu_now() - t0;
                if (rc)
                    die("sparse read", rc);
                hit[c] += r.pointer == ref[qi];
                nhit[c] += r.pointer == (int64_t)need[i];
                sptr[qi] = r.pointer;
                ma_read_result_clear(&r);
            }
        double prof[3];
        uint64_t nsearch, nev, nlists = ma_ivf_profile_lists();
        double tsum = 0;
        for (int i = 0; i < nq; i++)
            tsum += ts[i];
        ma_ivf_profile(0, prof, &nsearch, &nev);

        /* Other outside-mass modes on the same archive and queries (before/after in the same run). */
        if (compare && H > 1) {
            double *tc = malloc(sizeof(double) * (size_t)nq);
            char buf[128];
            snprintf(buf, sizeof buf, "%s", compare);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
                int m = mass_mode(t);
                if (m >= 0)
                    mass_compare(a, m, T, Q, needles, ref, out, tc, mass_check, lzf, topk);
            }
            free(tc);
        }
        if (mass_check > 0 && H > 1 && !compare)
            mass_accuracy(a, Q, needles, mass_check, lzf, topk);
        if (out_reps > 0 && H > 1)
            output_error(a, Q, needles, out_reps);
        if (mass_pairs > 0 && H > 1)
            mass_paired(a, Q, needles, mass_pairs, T, out);

        /* The other probing on the same queries (fixed when the reads above were adaptive, and the
         * reverse): its recall and time, and the index search alone (the read's rest is gathering the
         * candidates and attending them). */
        int ohit[NCOS] = {0};
        double otsum = 0, srch = 0;
        uint64_t olists = 0, oev = 0;
        {
            double oprof[3];
            ma_archive_set_adaptive(a, fixed);
            ma_ivf_profile(1, NULL, NULL, NULL);
            for (int c = 0; c < NCOS; c++)
                for (int i = 0; i < needles; i++) {
                    int qi = c * needles + i;
                    ma_read_result r = {.v = out};
                    double t0 = cpu_now();
                    rc = ma_archive_read_sparse(a, Q + (size_t)qi * HD, 0, &r);
                    otsum += cpu_now() - t0;
                    if (rc)
                        die("sparse read", rc);
                    ohit[c] += r.pointer == ref[qi];
                    ma_read_result_clear(&r);
                }
            olists = ma_ivf_profile_lists();
            ma_ivf_profile(0, oprof, NULL, &oev);
            ma_archive_set_adaptive(a, !fixed);
            size_t mx;
            int np = ma_archive_index_probes(a, topk, &mx);
            const ma_ivf *ix = ma_archive_index(a);
            uint64_t *cand = malloc(sizeof(uint64_t) * ma_ivf_ids_cap(ix, mx));
            size_t nc;
            for (int qi = 0; qi < nq; qi++) {
                double t0 = cpu_now();
                rc = ma_ivf_search_mass(ix, Q + (size_t)qi * HD, 1, np, mx, fixed ? 0 : MA_IVF_ADAPTIVE, cand, &nc, NULL, NULL);
                srch += cpu_now() - t0;
                if (rc)
                    die("index search", rc);
            }
            free(cand);
        }

        /* H > 1: the index's candidates of each read (the same search the read makes): how often each
         * head's own pointer is among them (then the read's head-h argmax is it: candidates are attended
         * with their exact keys), and how often the full read's pointer is. */
        if (H > 1) {
            size_t mx;
            const ma_ivf *ix = ma_archive_index(a);
            int np = ma_archive_index_probes(a, topk, &mx);
            size_t cap = ma_ivf_ids_cap(ix, mx), nc;
            uint64_t *cand = malloc(sizeof(uint64_t) * cap);
            int hin[NCOS] = {0}, rin[NCOS] = {0};
            double csum = 0;
            for (int c = 0; c < NCOS; c++)
                for (int i = 0; i < needles; i++) {
                    int qi = c * needles + i;
                    rc = ma_ivf_search(ix, Q + (size_t)qi * HD, np, mx, cand, &nc, NULL);
                    if (rc)
                        die("index search", rc);
                    csum += (double)nc;
                    for (size_t j = 0; j < nc; j++) {
                        rin[c] += (int64_t)cand[j] == ref[qi];
                        for (int h = 0; h < H; h++)
                            hin[c] += (int64_t)cand[j] == href[(size_t)qi * H + h];
                    }
                }
            printf("#   candidates: %.0f a read (mean); each head's own pointer among them (all heads) %.4f / %.4f / "
                   "%.4f / %.4f; the full read's pointer among them %.3f / %.3f / %.3f / %.3f (cos 1.0/0.9/0.8/0.7)\n",
                   csum / nq, (double)hin[0] / needles / H, (double)hin[1] / needles / H, (double)hin[2] / needles / H,
                   (double)hin[3] / needles / H, (double)rin[0] / needles, (double)rin[1] / needles,
                   (double)rin[2] / needles, (double)rin[3] / needles);
            printf("HEADS %s %d %llu %s %.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f\n", clustered ? "clu" : "iso", H,
                   (unsigned long long)T, shared ? "shared" : "per-head", (double)hin[0] / needles / H,
                   (double)hin[1] / needles / H, (double)hin[2] / needles / H, (double)hin[3] / needles / H,
                   (double)rin[0] / needles, (double)rin[1] / needles, (double)rin[2] / needles, (double)rin[3] / needles);
            free(cand);
        }

        /* The same queries in batches of 64 (one sgemm for the centroid scores, each probed list scanned
         * once per batch): mean CPU per query, and the pointers against the single reads'. */
        enum { BATCH = 64 };
        float *bout = malloc(sizeof(float) * HD * BATCH);
        ma_read_result br[BATCH];
        double bt = 0;
        int bsame = 0;
        for (int b0 = 0; b0 + BATCH <= nq; b0 += BATCH) {
            for (int j = 0; j < BATCH; j++)
                br[j] = (ma_read_result){.v = bout + (size_t)j * HD};
            double t0 = cpu_now();
            rc = ma_archive_read_sparse_batch(a, Q + (size_t)b0 * HD, BATCH, 0, br);
            bt += cpu_now() - t0;
            if (rc)
                die("batch read", rc);
            for (int j = 0; j < BATCH; j++) {
                bsame += br[j].pointer == sptr[b0 + j];
                ma_read_result_clear(&br[j]);
            }
        }
        int nb = nq / BATCH * BATCH;
        free(bout);

        /* Full reads of the first queries of each cosine: the speed reference and a check of ref. */
        int fagree = 0;
        for (int i = 0; i < full_reps; i++) {
            int qi = (i % NCOS) * needles + i / NCOS;
            ma_read_result r = {.v = out};
            double t0 = cpu_now();
            rc = ma_archive_read_full(a, Q + (size_t)qi * HD, &r);
            tf[i] = cpu_now() - t0;
            if (rc)
                die("full read", rc);
            fagree += r.pointer == ref[qi];
            ma_read_result_clear(&r);
        }
        double mf = quantile(tf, full_reps, 0.5), msp = quantile(ts, nq, 0.5), p99 = quantile(ts, nq, 0.99);
        double bw = bandwidth();
        /* Per read (a per-head index makes H searches a read, each over records of one head). */
        (void)nsearch;
        double mean = tsum / nq, ev = (double)nev / (double)nq;
        double scan_bytes = ev * (double)(H > 1 && shared ? H : 1) * (D / 8 + 2 * sizeof(float));
        double scan_gbs = scan_bytes / (prof[1] / (double)nq) / 1e9;
        size_t ab = ma_archive_bytes(a), tot = ma_archive_bytes_total(a);
        double idx_per_ev = (double)(ab > tot ? ab - tot : 0) / (double)T;
        printf("%8llu %9.3f %8.4f %8.4f %7.1f | %6.3f %6.3f %6.3f %6.3f | %6.3f %6.3f %6.3f %6.3f | %7.0f %5.3f "
               "%5.3f %5.3f %5.3f | %6.1f %5.1f %6.2f %5.1f\n",
               (unsigned long long)T, mf * 1e3, msp * 1e3, p99 * 1e3, mf / msp, (double)hit[0] / needles,
               (double)hit[1] / needles, (double)hit[2] / needles, (double)hit[3] / needles,
               (double)nhit[0] / needles, (double)nhit[1] / needles, (double)nhit[2] / needles,
               (double)nhit[3] / needles, ev, prof[0] / nq * 1e3, prof[1] / nq * 1e3,
               prof[2] / nq * 1e3, (mean - (prof[0] + prof[1] + prof[2]) / nq) * 1e3, scan_gbs, bw,
               scan_gbs / bw, idx_per_ev);
        printf("DATA %s %d %llu %.4f %.5f %.1f %.4f %.4f %.4f %.4f %.5f\n", clustered ? "clu" : "iso", H,
               (unsigned long long)T, mf * 1e3, msp * 1e3, mf / msp, (double)hit[0] / needles,
               (double)hit[1] / needles, (double)hit[2] / needles, (double)hit[3] / needles, p99 * 1e3);
        printf("#   %s probing: %.1f lists and %.0f events scanned a read; search alone %.4f ms, rest (gather, "
               "attend) %.4f ms (means)\n", fixed ? "fixed" : "adaptive", (double)nlists / nq, ev, srch / nq * 1e3,
               (mean - srch / nq) * 1e3);
        printf("#   %s probing, same queries: recall %.3f / %.3f / %.3f / %.3f, %.1f lists and %.0f events a read, "
               "mean %.4f ms (%.2fx the %s mean)\n", fixed ? "adaptive" : "fixed", (double)ohit[0] / needles,
               (double)ohit[1] / needles, (double)ohit[2] / needles, (double)ohit[3] / needles, (double)olists / nq,
               (double)oev / nq, otsum / nq * 1e3, otsum / tsum, fixed ? "fixed" : "adaptive");
        printf("OTHER %s %d %llu %s %.4f %.4f %.4f %.4f %.1f %.0f %.5f %.1f %.0f %.5f %.5f\n", clustered ? "clu" : "iso", H,
               (unsigned long long)T, fixed ? "adaptive" : "fixed", (double)ohit[0] / needles, (double)ohit[1] / needles,
               (double)ohit[2] / needles, (double)ohit[3] / needles, (double)olists / nq, (double)oev / nq,
               otsum / nq * 1e3, (double)nlists / nq, ev, mean * 1e3, srch / nq * 1e3);
        printf("#   grow %.1f s wall, reference %.1f s wall, full reads agreeing with the reference %d/%d, "
               "sparse mean %.4f ms, index %.1f B/event (%.1f per head)\n",
               grow_s, ref_s, fagree, full_reps, mean * 1e3, idx_per_ev, idx_per_ev / H);
        printf("#   batches of %d: %.4f ms per query (mean), %.2fx the single reads' mean, %.1fx faster than full; "
               "pointers equal to the single reads' %d/%d\n",
               BATCH, nb ? bt / nb * 1e3 : 0.0, nb ? mean / (bt / nb) : 0.0, nb ? mf / (bt / nb) : 0.0, bsame, nb);
        printf("BATCH %s %d %llu %.5f %.5f %.1f\n", clustered ? "clu" : "iso", H, (unsigned long long)T,
               nb ? bt / nb * 1e3 : 0.0, mean * 1e3, nb ? mf / (bt / nb) : 0.0);
        if (paired > 0) {
            /* Paired rounds: a full read, then 64 sparse reads of the query set, so both see the same load
             * of the shared machine; the ratio of each round, their median and range. */
            double *pr = malloc(sizeof(double) * (size_t)paired), *pt = malloc(sizeof(double) * 64);
            double *po = malloc(sizeof(double) * (size_t)paired), *pf = malloc(sizeof(double) * (size_t)paired);
            for (int rd = 0; rd < paired; rd++) {
                int qi = (rd * 977) % nq;
                ma_read_result r = {.v = out};
                double t0 = cpu_now();
                rc = ma_archive_read_full(a, Q + (size_t)qi * HD, &r);
                double tfull = cpu_now() - t0;
                if (rc)
                    die("full read", rc);
                ma_read_result_clear(&r);
                double ms = paired_sparse_median(a, Q, HD, qi, nq, out, pt);
                /* The same 64 queries with the other probing. */
                ma_archive_set_adaptive(a, fixed);
                double mo = paired_sparse_median(a, Q, HD, qi, nq, out, pt);
                ma_archive_set_adaptive(a, !fixed);
                pr[rd] = tfull / ms;
                po[rd] = tfull / mo;
                pf[rd] = tfull;
                printf("#   paired round %d: full %.3f ms, sparse median %.4f ms, ratio %.1f; %s probing median %.4f ms, "
                       "ratio %.1f\n", rd, tfull * 1e3, ms * 1e3, pr[rd], fixed ? "adaptive" : "fixed", mo * 1e3, po[rd]);
            }
            double lo = quantile(pr, paired, 0.0), hi = quantile(pr, paired, 1.0), md = quantile(pr, paired, 0.5);
            double olo = quantile(po, paired, 0.0), ohi = quantile(po, paired, 1.0), omd = quantile(po, paired, 0.5);
            double fmd = quantile(pf, paired, 0.5);
            printf("PAIRED %s %d %llu %d %.1f %.1f %.1f %s %.1f %.1f %.1f full_ms %.3f\n", clustered ? "clu" : "iso", H,
                   (unsigned long long)T, paired, md, lo, hi, fixed ? "adaptive" : "fixed", omd, olo, ohi, fmd * 1e3);
            free(pr);
            free(pt);
            free(po);
            free(pf);
        }
        free(sptr);
        fflush(stdout);
    }
    ma_archive_destroy(a);
    free(Q);
    free(k);
    free(out);
    free(need);
    free(ref);
    free(href);
    free(lzf);
    free(ts);
    free(tf);
    return 0;
}
