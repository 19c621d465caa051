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
 * 4. The slot policies (docs/SLOTS.md "Policies") against the defaults, on the same operations in the same
 *    run, per operation (p50, p99, max over every operation of `reps` rounds): a capacity eviction by
 *    score against lru (every write evicts), a blend overwrite against replace, a topk read (k = 4, 32)
 *    against the best read (the session's router, queries matched by cosine).
 *
 *   build/bench/bench_slots [reps] [policies]    "policies": section 4 only
 *
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
        if (ma_slots_restore_table(&(ma_slots_shape){H, D, D, 64}, buf, len, &back))
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

/* ---- 4. policies against the defaults ------------------------------------------------------------ */

typedef struct {
    double p50, p99, max;
} tails;

static tails tails_of(double *t, size_t n)
{
    qsort(t, n, sizeof *t, cmp_double);
    return (tails){t[n / 2], t[(size_t)((double)(n - 1) * 0.99)], t[n - 1]};
}

static void print_pair(const char *what, const char *alt, tails a, const char *pol, tails b)
{
    printf("%-44s %-7s p50 %8.3f us  p99 %8.3f us  max %8.1f us\n", what, alt, a.p50 * 1e6, a.p99 * 1e6,
           a.max * 1e6);
    printf("%-44s %-7s p50 %8.3f us  p99 %8.3f us  max %8.1f us   p50 ratio %.2f, p99 ratio %.2f\n", "", pol,
           b.p50 * 1e6, b.p99 * 1e6, b.max * 1e6, b.p50 / a.p50, b.p99 / a.p99);
}

/* Every write a new name into a full table of M slots (so every write evicts one), random importances. */
static void bench_policy_evict(int M, int reps)
{
    enum { D = 64, N = 4096 };
    double *t[2] = {malloc((size_t)reps * N * sizeof(double)), malloc((size_t)reps * N * sizeof(double))};
    float *k = malloc((size_t)(M + N) * D * sizeof *k), *v = malloc((size_t)(M + N) * D * sizeof *v);
    double *imp = malloc((size_t)(M + N) * sizeof *imp);
    for (size_t i = 0; i < (size_t)(M + N) * D; i++) {
        k[i] = frand();
        v[i] = frand();
    }
    for (int i = 0; i < M + N; i++)
        imp[i] = (frand() + 1) / 2;
    for (int r = 0; r < reps; r++)
        for (int pol = 0; pol < 2; pol++) {
            ma_slots *s;
            if (ma_slots_create(1, D, D, M, &s))
                exit(1);
            ma_params p;
            ma_params_default(&p);
            p.slot_policy.eviction = pol ? MA_EVICTION_SCORE : MA_EVICTION_LRU;
            ma_slots_set_policy(s, &p.slot_policy);
            char name[32];
            for (int i = 0; i < M + N; i++) {
                snprintf(name, sizeof name, "fact%d", i);
                ma_slot_write w = {name, k + (size_t)i * D, v + (size_t)i * D, NULL, -1, false};
                double t0 = now_s();
                int rc = ma_slots_put_ex(s, &w, imp[i], true, 0, 0, i, NULL);
                double dt = now_s() - t0;
                if (rc)
                    exit(1);
                if (i >= M)
                    t[pol][(size_t)r * N + (size_t)(i - M)] = dt;
                if (i % 7 == 0)
                    ma_slots_count_use(s, name);
            }
            ma_slots_destroy(s);
        }
    char what[64];
    snprintf(what, sizeof what, "write + capacity eviction, M=%d", M);
    print_pair(what, "lru", tails_of(t[0], (size_t)reps * N), "score", tails_of(t[1], (size_t)reps * N));
    free(k);
    free(v);
    free(imp);
    free(t[0]);
    free(t[1]);
}

/* Overwrites of resident slots (M = 64, value_dim dv): replace against blend. */
static void bench_policy_blend(int dv, int reps)
{
    enum { D = 64, M = 64, N = 8192 };
    double *t[2] = {malloc((size_t)reps * N * sizeof(double)), malloc((size_t)reps * N * sizeof(double))};
    float *k = malloc((size_t)D * sizeof *k), *v = malloc((size_t)64 * dv * sizeof *v);
    for (int i = 0; i < D; i++)
        k[i] = frand();
    for (size_t i = 0; i < (size_t)64 * dv; i++)
        v[i] = frand();
    for (int r = 0; r < reps; r++)
        for (int pol = 0; pol < 2; pol++) {
            ma_slots *s;
            if (ma_slots_create(1, D, dv, M, &s))
                exit(1);
            ma_params p;
            ma_params_default(&p);
            p.slot_policy.overwrite = pol ? MA_OVERWRITE_BLEND : MA_OVERWRITE_REPLACE;
            ma_slots_set_policy(s, &p.slot_policy);
            char name[32];
            for (int i = 0; i < M + N; i++) {
                snprintf(name, sizeof name, "fact%d", i % M);
                ma_slot_write w = {name, k, v + (size_t)(i % 64) * dv, NULL, -1, false};
                double t0 = now_s();
                int rc = ma_slots_put(s, &w, false, 0, 0, i, NULL);
                double dt = now_s() - t0;
                if (rc)
                    exit(1);
                if (i >= M)
                    t[pol][(size_t)r * N + (size_t)(i - M)] = dt;
            }
            ma_slots_destroy(s);
        }
    char what[64];
    snprintf(what, sizeof what, "overwrite of a resident slot, H*d_v=%d", dv);
    print_pair(what, "replace", tails_of(t[0], (size_t)reps * N), "blend", tails_of(t[1], (size_t)reps * N));
    free(k);
    free(v);
    free(t[0]);
    free(t[1]);
}

/* Queries answered by the cosine step (q = a slot's key plus noise) over M resident slots: the best read
 * against topk with k = 4 and k = 32. */
static void bench_policy_read(int M, int reps)
{
    enum { D = 64 };
    const int N = M > 1024 ? 2048 : 8192;
    const int ks[3] = {0, 4, 32};
    double *t[3];
    float *q = malloc((size_t)N * D * sizeof *q), *k = malloc((size_t)M * D * sizeof *k);
    for (size_t i = 0; i < (size_t)M * D; i++)
        k[i] = frand();
    for (int i = 0; i < N; i++) {
        int j = (int)((frand() + 1) / 2 * (M - 1));
        for (int c = 0; c < D; c++)
            q[(size_t)i * D + c] = k[(size_t)j * D + c] + 0.3f * frand();
    }
    for (int c = 0; c < 3; c++)
        t[c] = malloc((size_t)reps * N * sizeof(double));
    for (int r = 0; r < reps; r++)
        for (int c = 0; c < 3; c++) {
            ma_params p;
            ma_params_default(&p);
            p.slots = M;
            if (ks[c]) {
                p.slot_policy.read = MA_SLOT_READ_TOPK;
                p.slot_policy.k = ks[c];
            }
            ma_session *s;
            if (ma_session_create(&p, &s))
                exit(1);
            char name[32];
            for (int i = 0; i < M; i++) {
                snprintf(name, sizeof name, "fact%d", i);
                ma_slot_input in = {.name = name, .k = k + (size_t)i * D, .v = k + (size_t)i * D};
                if (ma_session_slot_write(s, &in, i, NULL))
                    exit(1);
            }
            float out[D];
            int slot_answers = 0;
            for (int i = 0; i < N; i++) {
                ma_answer a = {.v = out};
                ma_query mq = {.q = q + (size_t)i * D};
                double t0 = now_s();
                int rc = ma_session_query(s, &mq, &a);
                t[c][(size_t)r * N + (size_t)i] = now_s() - t0;
                if (rc == 0 && a.route == MA_ROUTE_SLOT)
                    slot_answers++;
                ma_answer_clear(&a);
            }
            if (slot_answers < N * 9 / 10) {
                fprintf(stderr, "bench_policy_read: only %d of %d queries matched a slot\n", slot_answers, N);
                exit(1);
            }
            ma_session_destroy(s);
        }
    char what[64];
    snprintf(what, sizeof what, "query answered by the cosine step, M=%d", M);
    tails best = tails_of(t[0], (size_t)reps * N);
    print_pair(what, "best", best, "topk4", tails_of(t[1], (size_t)reps * N));
    tails k32 = tails_of(t[2], (size_t)reps * N);
    printf("%-44s %-7s p50 %8.3f us  p99 %8.3f us  max %8.1f us   p50 ratio %.2f, p99 ratio %.2f\n", "", "topk32",
           k32.p50 * 1e6, k32.p99 * 1e6, k32.max * 1e6, k32.p50 / best.p50, k32.p99 / best.p99);
    for (int c = 0; c < 3; c++)
        free(t[c]);
    free(q);
    free(k);
}

static void bench_policies(int reps)
{
    printf("slot policies against the defaults (H=1, d=64; per operation, %d rounds):\n", reps);
    bench_policy_evict(64, reps);
    bench_policy_evict(4096, reps);
    bench_policy_blend(64, reps);
    bench_policy_blend(1024, reps);
    bench_policy_read(64, reps);
    bench_policy_read(4096, reps);
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 9;
    if (reps < 1)
        reps = 1;
    openblas_set_num_threads(1);
    if (argc > 2 && strcmp(argv[2], "policies") == 0) {
        bench_policies(reps);
        return 0;
    }
    const int Ms[] = {64, 1024, 16384, 65536};
    for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++)
        bench_match(Ms[i], reps);
    bench_ingest(reps);
    bench_persist(reps);
    bench_policies(reps);
    return 0;
}
