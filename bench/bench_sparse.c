/*
 * bench/bench_sparse.c — query latency of sparse attention (each selector) against full attention over
 * the archive, for T = 2^10 ... 2^max (default 2^21), H = 1, d = d_v = 64, C = 64, topk = 16, with the
 * recall of a planted needle beside each latency; then the crossover T where each sparse read beats the
 * full read, the ratio at the largest T, and the needle recall at exactly 1,000,000 events (100 trials,
 * query = the needle's key and query at cosine 0.9 of it). Finally the index archive at the largest T is
 * paged (every sealed chunk released; a chunk source regenerates chunks on demand, standing in for the
 * store) and restored from its meta blob: resident bytes, read latency and that both answer with the same
 * bits as the resident archive.
 *
 * Method: two archives (selector index and selector chunks) are grown with the same random N(0,1) keys and
 * values, a pure function of the event index (so the chunk source can regenerate any chunk). At each T
 * the full read is timed on `full_reps` queries, the sparse reads on `queries` queries; each query is the
 * key of a random archived event (the needle: every event is a needle candidate among T - 1 random
 * fillers), so recall = fraction of reads whose pointer is that event. Times are medians of
 * thread CPU time (CLOCK_THREAD_CPUTIME_ID) per query, single-threaded BLAS: the machine is shared and
 * wall-clock times of a preempted process would measure the neighbours. Ratios are within this run.
 *
 * Usage: bench_sparse [--max-log2 N] [--queries Q] [--full-reps R] [--trials N] [--no-million] [--seed S]
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/archive.h"
#include "core/error.h"

enum { D = 64 };

static uint64_t rng_state = 1;

static uint64_t data_seed = 0x5eed;

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Event i's key and value: N(0,1) from a counter-based generator (Box-Muller on hashed uniforms). */
static void event_kv(uint64_t i, float *k, float *v)
{
    uint64_t s = mix(data_seed ^ mix(i));
    for (int j = 0; j < D; j += 2) {
        for (int w = 0; w < 2; w++) {
            float *o = w ? v : k;
            s = mix(s);
            double u1 = ((double)(s >> 11) + 0.5) / 9007199254740992.0;
            double u2 = (double)(mix(s ^ 0xabcdef) >> 11) / 9007199254740992.0;
            double r = sqrt(-2.0 * log(u1));
            o[j] = (float)(r * cos(6.283185307179586 * u2));
            o[j + 1] = (float)(r * sin(6.283185307179586 * u2));
        }
    }
}

/* The stand-in for the store: regenerates chunk c (C events). */
typedef struct {
    int C;
    uint64_t loads;
    double cpu;        /* thread CPU seconds spent regenerating (single-threaded use) */
} regen_src;

static double cpu_now(void);

static int regen_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    regen_src *r = ctx;
    double t0 = cpu_now();
    r->loads++;
    for (size_t i = 0; i < n; i++)
        event_kv((uint64_t)chunk * (uint64_t)r->C + i, k + i * D, v + i * D);
    r->cpu += cpu_now() - t0;
    return 0;
}

static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float nrand(void)
{
    double u = urand(), v = urand();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

/* Thread CPU time: the machine is shared, and wall-clock medians of a preempted process measure the
 * neighbours. Every read here is single-threaded (one BLAS thread), so CPU time is its cost. */
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

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_sparse: %s: %s\n", what, ma_strerror(rc));
    exit(1);
}

/* Grows both archives to T events with fresh random keys and values. */
static void grow(ma_archive **arch, int narch, uint64_t T)
{
    enum { BATCH = 4096 };
    static float k[BATCH * D], v[BATCH * D];
    while (ma_archive_length(arch[0]) < T) {
        uint64_t n = T - ma_archive_length(arch[0]);
        if (n > BATCH)
            n = BATCH;
        uint64_t first = ma_archive_length(arch[0]);
        for (size_t i = 0; i < n; i++)
            event_kv(first + i, k + i * D, v + i * D);
        for (int a = 0; a < narch; a++) {
            int rc = ma_archive_append(arch[a], (size_t)n, k, v);
            if (rc)
                die("append", rc);
        }
    }
}

/* q = 0.9 k^ + sqrt(0.19) u^ (u orthogonal to k), scaled to |k|: cosine 0.9 with k. */
static void near_query(const float *k, float *q)
{
    double kk = 0, uk = 0, uu = 0;
    float u[D];
    for (int j = 0; j < D; j++) {
        kk += (double)k[j] * k[j];
        u[j] = nrand();
    }
    for (int j = 0; j < D; j++)
        uk += (double)u[j] * k[j];
    for (int j = 0; j < D; j++) {
        u[j] -= (float)(uk / kk * k[j]);
        uu += (double)u[j] * u[j];
    }
    for (int j = 0; j < D; j++)
        q[j] = (float)(0.9 * k[j] + sqrt(0.19) * sqrt(kk) * u[j] / sqrt(uu));
}

typedef enum { R_FULL, R_INDEX, R_BOUND, R_MEAN } reader;

/* One read of q; returns seconds and sets *hit when the pointer is `needle`. */
static double timed_read(ma_archive *a, reader r, const float *q, int topk, uint64_t needle, int *hit,
                         uint64_t *chunks)
{
    float out[D];
    ma_read_result res = {.v = out};
    if (r == R_BOUND)
        ma_archive_set_chunk_score(a, MA_CHUNK_SCORE_BOUND);
    if (r == R_MEAN)
        ma_archive_set_chunk_score(a, MA_CHUNK_SCORE_MEAN);
    double t0 = cpu_now();
    int rc = r == R_FULL ? ma_archive_read_full(a, q, &res) : ma_archive_read_sparse(a, q, topk, &res);
    double t = cpu_now() - t0;
    if (rc)
        die("read", rc);
    *hit = res.pointer == (int64_t)needle;
    if (chunks)
        *chunks = res.n_chunks;
    ma_read_result_clear(&res);
    return t;
}

/* Reads of the same queries (the first half needles' keys, the rest at cosine 0.9) into out/ptr, with
 * their median CPU time and hits. */
static double read_set(ma_archive *a, const float *qs, const uint64_t *needles, int n, float *out, int64_t *ptr,
                       int *hits)
{
    double *t = malloc(sizeof(double) * (size_t)n);
    *hits = 0;
    for (int i = 0; i < n; i++) {
        ma_read_result r = {.v = out + (size_t)i * D};
        double t0 = cpu_now();
        int rc = ma_archive_read_sparse(a, qs + (size_t)i * D, 0, &r);
        t[i] = cpu_now() - t0;
        if (rc)
            die("paged read", rc);
        ptr[i] = r.pointer;
        *hits += r.pointer == (int64_t)needles[i];
        ma_read_result_clear(&r);
    }
    double m = median(t, n);
    free(t);
    return m;
}

/* The index archive paged and restored: bytes, latency, same bits. */
static void paged(ma_archive *a, const ma_params *p, int n)
{
    uint64_t T = ma_archive_length(a);
    float *qs = malloc(sizeof(float) * D * (size_t)n), *o0 = malloc(sizeof(float) * D * (size_t)n);
    float *o1 = malloc(sizeof(float) * D * (size_t)n);
    uint64_t *needles = malloc(sizeof(uint64_t) * (size_t)n);
    int64_t *p0 = malloc(sizeof(int64_t) * (size_t)n), *p1 = malloc(sizeof(int64_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        float k[D], v[D];
        needles[i] = (uint64_t)(urand() * T);
        event_kv(needles[i], k, v);
        if (i < n / 2)
            memcpy(qs + (size_t)i * D, k, sizeof k);
        else
            near_query(k, qs + (size_t)i * D);
    }
    int h0, h1, h2;
    double m0 = read_set(a, qs, needles, n, o0, p0, &h0);
    size_t resident = ma_archive_bytes(a);

    regen_src src = {p->chunk, 0, 0};
    enum { CACHE = 64 };
    int rc = ma_archive_set_source(a, (ma_chunk_source){regen_load, &src}, CACHE);
    if (rc)
        die("set_source", rc);
    ma_archive_release(a);
    size_t idle = ma_archive_bytes(a);
    double m1 = read_set(a, qs, needles, n, o1, p1, &h1);
    size_t after = ma_archive_bytes(a);
    int same1 = !memcmp(o0, o1, sizeof(float) * D * (size_t)n) && !memcmp(p0, p1, sizeof(int64_t) * (size_t)n);
    printf("# paged index archive, T = %llu (cache %d chunks, chunks regenerated by the source):\n"
           "#   resident bytes %.1f MiB idle, %.1f MiB after %d reads (resident archive: %.1f MiB)\n"
           "#   sparse read median %.3f ms paged (%.1f chunk loads per read, mean %.3f ms of them in the source) vs "
           "%.3f ms resident; "
           "hits %d/%d (key / cos 0.9 halves); same bits as resident: %s\n",
           (unsigned long long)T, CACHE, idle / 1048576.0, after / 1048576.0, n, resident / 1048576.0, m1 * 1e3,
           (double)src.loads / n, src.cpu / n * 1e3, m0 * 1e3, h1, n, same1 ? "yes" : "NO");

    void *buf;
    size_t len;
    if ((rc = ma_archive_serialize_meta(a, &buf, &len)) != 0)
        die("serialize", rc);
    ma_archive *b;
    double w0 = wall_now(), c0 = cpu_now();
    ma_archive_saved saved = {buf, len, T, (ma_chunk_source){regen_load, &src}, CACHE, NULL};
    if ((rc = ma_archive_restore_meta(p, &saved, &b)) != 0)
        die("restore", rc);
    double rw = wall_now() - w0, rcpu = cpu_now() - c0;
    (void)read_set(b, qs, needles, n, o1, p1, &h2);
    int same2 = !memcmp(o0, o1, sizeof(float) * D * (size_t)n) && !memcmp(p0, p1, sizeof(int64_t) * (size_t)n);
    printf("#   meta blob %zu bytes (generation %llu); restore %.1f s wall, %.1f s CPU (every chunk regenerated "
           "and streamed once); restored bytes %.1f MiB; hits %d/%d; same bits as resident: %s\n",
           len, (unsigned long long)ma_archive_meta_generation(a), rw, rcpu, ma_archive_bytes(b) / 1048576.0, h2,
           n, same2 ? "yes" : "NO");
    (void)h0;
    free(buf);
    ma_archive_destroy(b);
    free(qs);
    free(o0);
    free(o1);
    free(needles);
    free(p0);
    free(p1);
}

int main(int argc, char **argv)
{
    int max_log2 = 21, queries = 100, full_reps = 5, trials = 100, million = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--max-log2") && i + 1 < argc)
            max_log2 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--queries") && i + 1 < argc)
            queries = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--full-reps") && i + 1 < argc)
            full_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--trials") && i + 1 < argc)
            trials = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            rng_state = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--no-million"))
            million = 0;
        else {
            fprintf(stderr, "usage: %s [--max-log2 10..24] [--queries Q] [--full-reps R] [--trials N] "
                            "[--no-million] [--seed S]\n", argv[0]);
            return 2;
        }
    }
    if (max_log2 < 10 || max_log2 > 24 || queries < 1 || full_reps < 1 || trials < 1) {
        fprintf(stderr, "bench_sparse: --max-log2 must be 10..24, counts >= 1\n");
        return 2;
    }
    openblas_set_num_threads(1);

    ma_params p;
    ma_params_default(&p);   /* H 1, d 64, C 64, topk 16 */
    ma_archive *arch[2];
    p.selector = MA_SELECTOR_INDEX;
    int rc = ma_archive_create(&p, &arch[0]);
    if (rc)
        die("create", rc);
    p.selector = MA_SELECTOR_CHUNKS;
    if ((rc = ma_archive_create(&p, &arch[1])) != 0)
        die("create", rc);

    printf("# bench_sparse: H=1 d=64 C=64 topk=16; times are medians per query (ms); recall = pointer is the "
           "needle (query = needle's key)\n");
    printf("%9s %10s | %10s %7s %6s | %10s %7s %6s | %10s %7s %6s | %8s %8s\n", "T", "full ms", "index ms",
           "x full", "recall", "bound ms", "x full", "recall", "mean ms", "x full", "recall", "grow cpu", "wall s");

    double *tf = malloc(sizeof(double) * (size_t)full_reps), *ts[3];
    for (int s = 0; s < 3; s++)
        ts[s] = malloc(sizeof(double) * (size_t)queries);
    double cross[3] = {0, 0, 0}, last_ratio[3] = {0, 0, 0};
    float q[D];
    for (int lg = 10; lg <= max_log2; lg++) {
        uint64_t T = 1ull << lg;
        double g0 = cpu_now(), w0 = wall_now();
        if (million && T > 1000000 && ma_archive_length(arch[0]) < 1000000) {
            grow(arch, 2, 1000000);
            /* The million-event recall check of the issue, at exactly 1,000,000 events: the index at
             * topk 16 (default), 8 and 32, the chunk scorers at the default. */
            enum { NS = 5 };
            const char *sname[NS] = {"index topk16", "index topk8", "index topk32", "chunks-bound", "chunks-mean"};
            const reader srd[NS] = {R_INDEX, R_INDEX, R_INDEX, R_BOUND, R_MEAN};
            const int stk[NS] = {16, 8, 32, 0, 0};
            int hit_k[NS] = {0}, hit_n[NS] = {0};
            double t_k[NS] = {0}, t_n[NS] = {0};
            for (int t = 0; t < trials; t++) {
                uint64_t needle = (uint64_t)(urand() * 1000000);
                float k[D], qn[D];
                ma_archive_get(arch[0], needle, k, NULL);
                near_query(k, qn);
                for (int s = 0; s < NS; s++) {
                    ma_archive *a = arch[srd[s] == R_INDEX ? 0 : 1];
                    int h;
                    t_k[s] += timed_read(a, srd[s], k, stk[s], needle, &h, NULL);
                    hit_k[s] += h;
                    t_n[s] += timed_read(a, srd[s], qn, stk[s], needle, &h, NULL);
                    hit_n[s] += h;
                }
            }
            printf("# needle among 999,999 random fillers (T = 1,000,000), %d trials: hits with query = key / "
                   "query at cosine 0.9; mean CPU ms per read (key / cos 0.9)\n", trials);
            for (int s = 0; s < NS; s++)
                printf("#   %-13s %3d / %3d   (%.3f / %.3f ms)\n", sname[s], hit_k[s], hit_n[s],
                       t_k[s] / trials * 1e3, t_n[s] / trials * 1e3);
            fflush(stdout);
        }
        grow(arch, 2, T);
        double grow_s = cpu_now() - g0, grow_wall = wall_now() - w0;

        for (int i = 0; i < full_reps; i++) {
            uint64_t needle = (uint64_t)(urand() * T);
            int h;
            ma_archive_get(arch[0], needle, q, NULL);
            tf[i] = timed_read(arch[0], R_FULL, q, 0, needle, &h, NULL);
        }
        int hits[3] = {0, 0, 0};
        for (int i = 0; i < queries; i++) {
            uint64_t needle = (uint64_t)(urand() * T);
            ma_archive_get(arch[0], needle, q, NULL);
            for (int s = 0; s < 3; s++) {
                int h;
                ts[s][i] = timed_read(arch[s == 0 ? 0 : 1], s == 0 ? R_INDEX : s == 1 ? R_BOUND : R_MEAN, q, 0,
                                      needle, &h, NULL);
                hits[s] += h;
            }
        }
        double mf = median(tf, full_reps), ms[3];
        for (int s = 0; s < 3; s++) {
            ms[s] = median(ts[s], queries);
            last_ratio[s] = mf / ms[s];
            if (cross[s] == 0 && ms[s] < mf)
                cross[s] = (double)T;
        }
        printf("%9llu %10.3f | %10.4f %7.1f %6.2f | %10.4f %7.1f %6.2f | %10.4f %7.1f %6.2f | %8.1f %8.1f\n",
               (unsigned long long)T, mf * 1e3, ms[0] * 1e3, last_ratio[0], (double)hits[0] / queries,
               ms[1] * 1e3, last_ratio[1], (double)hits[1] / queries, ms[2] * 1e3, last_ratio[2],
               (double)hits[2] / queries, grow_s, grow_wall);
        fflush(stdout);
    }
    const char *names[3] = {"index", "chunks-bound", "chunks-mean"};
    for (int s = 0; s < 3; s++)
        printf("# %-12s crossover (first T where sparse < full): %.0f; full/sparse at T = 2^%d: %.1fx\n", names[s],
               cross[s], max_log2, last_ratio[s]);
    printf("# bytes: index archive %zu (events in full %zu), chunks archive %zu\n", ma_archive_bytes(arch[0]),
           ma_archive_bytes_total(arch[0]), ma_archive_bytes(arch[1]));
    ma_archive_destroy(arch[1]);
    arch[1] = NULL;
    p.selector = MA_SELECTOR_INDEX;
    paged(arch[0], &p, queries);
    ma_archive_destroy(arch[0]);
    free(tf);
    for (int s = 0; s < 3; s++)
        free(ts[s]);
    return 0;
}
