/*
 * bench/bench_slots.c — what the slot table and the write controller cost.
 *
 *   build/bench/bench_slots [reps]
 *
 * 1. The router's cosine step (ma_slots_match) over M resident slots, H·d = 64, against the alternative it
 *    deliberately does not use: one cblas_sgemv over a contiguous matrix of pre-normalised keys (plus the
 *    argmax). The ratio is the price of the order-independent, double-accumulating scan.
 * 2. ma_session_ingest of 64-event batches with every event carrying a slot write signal, against the
 *    same batches without signals (slots: 64, so most signals evict): the write controller's share.
 * 3. Serialising and restoring a table with 20,000 versions (what each store commit pays), against a
 *    memcpy of the same bytes.
 * Times are medians of `reps` runs in this process; only ratios are meant to be compared across machines.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/session.h"
#include "core/slots.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

static uint64_t rng = 12345;

static float frand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void bench_match(int M, int reps)
{
    enum { H = 1, D = 64 };
    ma_slots *s;
    if (ma_slots_create(H, D, D, M, &s))
        exit(1);
    float *keys = malloc((size_t)M * D * sizeof *keys), v[D], q[D];
    for (int i = 0; i < D; i++)
        v[i] = frand();
    for (int i = 0; i < M; i++) {
        char name[32];
        snprintf(name, sizeof name, "slot%d", i);
        float *k = keys + (size_t)i * D;
        double ss = 0;
        for (int j = 0; j < D; j++) {
            k[j] = frand();
            ss += (double)k[j] * k[j];
        }
        ma_slot_write w = {name, k, v, NULL, -1, false};
        if (ma_slots_put(s, &w, true, 0, 0, 0, NULL))
            exit(1);
        for (int j = 0; j < D; j++)
            k[j] = (float)(k[j] / sqrt(ss));     /* the BLAS alternative keeps normalised keys */
    }
    float *scores = malloc((size_t)M * sizeof *scores);
    double *t1 = malloc((size_t)reps * sizeof *t1), *t2 = malloc((size_t)reps * sizeof *t2);
    int inner = M >= 16384 ? 4 : M >= 1024 ? 64 : 2048;
    volatile double sink = 0;
    for (int r = 0; r < reps; r++) {
        for (int j = 0; j < D; j++)
            q[j] = frand();
        ma_slot_view best;
        double score;
        double t = now_s();
        for (int i = 0; i < inner; i++) {
            ma_slots_match(s, q, &best, &score);
            sink += score;
        }
        t1[r] = (now_s() - t) / inner;
        t = now_s();
        for (int i = 0; i < inner; i++) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, M, D, 1.0f, keys, D, q, 1, 0.0f, scores, 1);
            sink += scores[cblas_isamax(M, scores, 1)];   /* argmax |score|: same work as argmax */
        }
        t2[r] = (now_s() - t) / inner;
    }
    double a = median(t1, reps), b = median(t2, reps);
    if (sink == 42.0)
        printf("(sink)\n");    /* keeps the results live */
    printf("match  M=%-6d H*d=64  scan %9.2f us   sgemv %9.2f us   scan/sgemv %.2f\n", M, a * 1e6, b * 1e6,
           a / b);
    free(keys);
    free(scores);
    free(t1);
    free(t2);
    ma_slots_destroy(s);
}

static void bench_ingest(int reps)
{
    enum { B = 64, NB = 64 };
    ma_params p;
    ma_params_default(&p);                   /* H = 1, d = 64, M = 64, vla backbone */
    size_t kn = (size_t)p.heads * p.dim, vn = (size_t)p.heads * p.value_dim;
    float *k = malloc(B * NB * kn * sizeof *k), *v = malloc(B * NB * vn * sizeof *v);
    for (size_t i = 0; i < B * NB * kn; i++)
        k[i] = frand();
    for (size_t i = 0; i < B * NB * vn; i++)
        v[i] = frand();
    static char names[B * NB][24];
    ma_event *ev = malloc(B * NB * sizeof *ev);
    double *t[2] = {malloc((size_t)reps * sizeof(double)), malloc((size_t)reps * sizeof(double))};
    for (int r = 0; r < reps; r++)
        for (int signals = 0; signals < 2; signals++) {
            ma_session *s;
            if (ma_session_create(&p, &s))
                exit(1);
            for (int i = 0; i < B * NB; i++) {
                snprintf(names[i], sizeof names[i], "fact%d", i % 1000);
                ev[i] = (ma_event){k + i * kn, v + i * vn, NULL, signals ? names[i] : NULL, false};
            }
            double t0 = now_s();
            for (int b = 0; b < NB; b++) {
                ma_ingest_report rep;
                if (ma_session_ingest(s, B, ev + b * B, 0, &rep))
                    exit(1);
                ma_ingest_report_clear(&rep);
            }
            t[signals][r] = (now_s() - t0) / (B * NB);
            ma_session_destroy(s);
        }
    double a = median(t[0], reps), b = median(t[1], reps);
    printf("ingest 64-event batches, H=1 d=64 vla: plain %.2f us/event, every event a slot write %.2f us/event,"
           " ratio %.2f\n", a * 1e6, b * 1e6, b / a);
    free(k);
    free(v);
    free(ev);
    free(t[0]);
    free(t[1]);
}

/* 3. Persisting the table: serialise and restore a table with a long history (every commit of the store
 *    does the former), against a plain memcpy of the same number of bytes. */
static void bench_persist(int reps)
{
    enum { H = 1, D = 64, NAMES = 1000, VERSIONS = 20000 };
    ma_slots *s;
    if (ma_slots_create(H, D, D, 64, &s))
        exit(1);
    float k[D], v[D];
    for (int i = 0; i < VERSIONS; i++) {
        char name[32];
        snprintf(name, sizeof name, "fact%d", i % NAMES);
        for (int j = 0; j < D; j++) {
            k[j] = frand();
            v[j] = frand();
        }
        ma_slot_write w = {name, k, v, "\"a short payload\"", i, false};
        if (ma_slots_put(s, &w, false, 0, 0, i, NULL))
            exit(1);
    }
    double *ts = malloc((size_t)reps * sizeof *ts), *tr = malloc((size_t)reps * sizeof *tr),
           *tm = malloc((size_t)reps * sizeof *tm);
    size_t len = 0;
    for (int r = 0; r < reps; r++) {
        void *buf;
        double t = now_s();
        if (ma_slots_serialize(s, &buf, &len))
            exit(1);
        ts[r] = now_s() - t;
        ma_slots *back;
        t = now_s();
        if (ma_slots_restore_table(H, D, D, 64, buf, len, &back))
            exit(1);
        tr[r] = now_s() - t;
        void *copy = malloc(len);
        t = now_s();
        memcpy(copy, buf, len);
        tm[r] = now_s() - t;
        if (((unsigned char *)copy)[len / 2] == 1)
            printf("(sink)\n");
        free(copy);
        free(buf);
        ma_slots_destroy(back);
    }
    double a = median(ts, reps), b = median(tr, reps), c = median(tm, reps);
    printf("persist %d versions of %d names (%.1f MB): serialise %.2f ms, restore %.2f ms, memcpy %.3f ms;"
           " serialise/memcpy %.0f\n", VERSIONS, NAMES, len / 1e6, a * 1e3, b * 1e3, c * 1e3, a / c);
    free(ts);
    free(tr);
    free(tm);
    ma_slots_destroy(s);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 9;
    if (reps < 1)
        reps = 1;
    openblas_set_num_threads(1);
    const int Ms[] = {64, 1024, 16384, 65536};
    for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++)
        bench_match(Ms[i], reps);
    bench_ingest(reps);
    bench_persist(reps);
    return 0;
}
