/*
 * bench/bench_store.c — what durability costs: the store's commit throughput with synchronous=FULL,
 * synchronous=NORMAL and an in-memory database, measured in one run and printed as ratios.
 *
 *   build/bench/bench_store [--dir DIR] [--batches N] [--slot-writes N] [--big EVENTS]
 *
 * 1. Event ingest: N commits of 1024 events (H = 1, d = d_v = 64, a payload on every 4th event, and the
 *    three state blobs rewritten as the server does on every batch) -> event rows per second.
 * 2. Slot writes: commits that change only the slot-table blob (4 KiB), as a slot verb does -> commits
 *    per second (each one is a durable transaction: this is where fsync shows).
 * 3. --big EVENTS: a session of EVENTS events (e.g. 2097152) written with NORMAL, then the time to reopen
 *    the store (quick_check + per-session row counts) and to page random 64-event chunks back.
 * 4. Row checksums (docs/STORE.md, "Row checksums"): two FULL stores, one writing and checking them and
 *    one with no_row_checksums, fed the same batches alternately (--checksum-rounds R rounds of 4 batches
 *    each, the order swapped every round), then random 64-event chunks paged from each alternately: per
 *    batch and per chunk p50 / p99 / max and the ratios with/without, plus the checksum alone per block.
 * The data directory defaults to a fresh directory under $TMPDIR and is removed afterwards.
 */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/hash.h"
#include "store/store.h"

#define DIM 64
#define BATCH 1024

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

static void die(const char *what, int rc, const char *err)
{
    fprintf(stderr, "bench_store: %s: %s (%s)\n", what, err, ma_strerror(rc));
    exit(1);
}

typedef struct {
    float *k, *v;
    char **payloads;
    char *blob;
    size_t blob_len;
} workload;

static void workload_init(workload *w)
{
    w->k = malloc(BATCH * DIM * sizeof(float));
    w->v = malloc(BATCH * DIM * sizeof(float));
    w->payloads = calloc(BATCH, sizeof(char *));
    unsigned seed = 1;
    for (size_t i = 0; i < BATCH * DIM; i++) {
        w->k[i] = (float)rand_r(&seed) / (float)RAND_MAX - 0.5f;
        w->v[i] = (float)rand_r(&seed) / (float)RAND_MAX - 0.5f;
    }
    for (size_t i = 0; i < BATCH; i += 4) {
        w->payloads[i] = malloc(32);
        snprintf(w->payloads[i], 32, "{\"n\":%zu}", i);
    }
    w->blob_len = 4096;
    w->blob = malloc(w->blob_len);
    memset(w->blob, 0x42, w->blob_len);
}

static void workload_free(workload *w)
{
    for (size_t i = 0; i < BATCH; i++)
        free(w->payloads[i]);
    free(w->payloads);
    free(w->k);
    free(w->v);
    free(w->blob);
}

static ma_store *open_store_with(const char *dir, int sync, int in_memory, int no_sums)
{
    ma_store_options o;
    ma_store_options_default(&o);
    o.synchronous = sync;
    o.in_memory = in_memory;
    o.no_row_checksums = no_sums;
    ma_store *st;
    char err[512];
    int rc = ma_store_open_with(dir, &o, &st, err, sizeof err);
    if (rc)
        die("open", rc, err);
    return st;
}

static ma_store *open_store(const char *dir, int sync, int in_memory)
{
    return open_store_with(dir, sync, in_memory, 0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* p50, p99, max of n samples (sorted in place), in the samples' unit. */
static void tails(double *x, size_t n, double out[3])
{
    qsort(x, n, sizeof *x, cmp_double);
    out[0] = x[n / 2];
    out[1] = x[(size_t)((double)(n - 1) * 0.99)];
    out[2] = x[n - 1];
}

static double ingest(ma_store *st, const char *id, const workload *w, int n, uint64_t *length);

/* 4: the row checksums' cost, with and without, interleaved in one run. */
static void checksum_cost(const char *dir, const workload *w, int rounds)
{
    char err[512], sub[600];
    ma_store *st[2];
    uint64_t length[2] = {0, 0};
    for (int m = 0; m < 2; m++) {
        snprintf(sub, sizeof sub, "%s/sums%d", dir, m);
        st[m] = open_store_with(sub, MA_STORE_SYNC_FULL, 0, m == 1);
        int rc = ma_store_session_create(st[m], "s", "{}", 0, err, sizeof err);
        if (rc)
            die("create", rc, err);
        ingest(st[m], "s", w, 2, &length[m]);   /* warm-up */
    }
    size_t nb = (size_t)rounds * 4;
    double *bt[2] = {malloc(nb * sizeof(double)), malloc(nb * sizeof(double))};
    size_t at[2] = {0, 0};
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < 2; i++) {
            int m = (r + i) % 2;   /* swap who goes first every round */
            for (int b = 0; b < 4; b++)
                bt[m][at[m]++] = ingest(st[m], "s", w, 1, &length[m]);
        }
    enum { CHUNKS = 4000 };
    double *ct[2] = {malloc(CHUNKS * sizeof(double)), malloc(CHUNKS * sizeof(double))};
    float *k = malloc(64 * DIM * sizeof(float)), *v = malloc(64 * DIM * sizeof(float));
    unsigned seed = 5;
    for (int i = 0; i < 2 * CHUNKS; i++) {
        int m = i % 2;
        uint64_t c = (uint64_t)rand_r(&seed) % (length[m] / 64);
        double t0 = now_s();
        ma_store_events to = {DIM, DIM, k, v, NULL};
        int rc = ma_store_load_events(st[m], "s", c * 64, 64, &to, err, sizeof err);
        ct[m][i / 2] = now_s() - t0;
        if (rc)
            die("load_events", rc, err);
    }
    /* The checksum and the finiteness pass alone, on one block row (64 events of k and v). */
    size_t blk = 64 * DIM * sizeof(float);
    uint64_t h = 0;
    int reps = 20000;
    double t0 = now_s();
    for (int i = 0; i < reps; i++)
        h ^= ma_checksum64(ma_checksum64((uint64_t)i, w->k, blk), w->v, blk);
    double t_sum = (now_s() - t0) / reps;
    double bsum[2] = {0, 0}, csum[2] = {0, 0}, bq[2][3], cq[2][3];
    for (int m = 0; m < 2; m++) {
        for (size_t i = 0; i < nb; i++)
            bsum[m] += bt[m][i];
        for (size_t i = 0; i < CHUNKS; i++)
            csum[m] += ct[m][i];
        tails(bt[m], nb, bq[m]);
        tails(ct[m], CHUNKS, cq[m]);
    }
    printf("checksums: %d batches of %d events per store (FULL), %d random 64-event chunks paged per store, "
           "interleaved\n", (int)nb, BATCH, CHUNKS);
    printf("%-22s %10s %10s %10s %12s\n", "", "p50", "p99", "max", "mean");
    const char *nm[2] = {"with", "without"};
    for (int m = 0; m < 2; m++)
        printf("ingest ms/batch %-7s %10.2f %10.2f %10.2f %12.2f\n", nm[m], bq[m][0] * 1e3, bq[m][1] * 1e3,
               bq[m][2] * 1e3, bsum[m] / (double)nb * 1e3);
    for (int m = 0; m < 2; m++)
        printf("page-in us/chunk %-6s %10.1f %10.1f %10.1f %12.1f\n", nm[m], cq[m][0] * 1e6, cq[m][1] * 1e6,
               cq[m][2] * 1e6, csum[m] / CHUNKS * 1e6);
    printf("ratios with/without: ingest mean %.3f p50 %.3f p99 %.3f; page-in mean %.3f p50 %.3f p99 %.3f\n",
           bsum[0] / bsum[1], bq[0][0] / bq[1][0], bq[0][1] / bq[1][1], csum[0] / csum[1], cq[0][0] / cq[1][0],
           cq[0][1] / cq[1][1]);
    printf("checksum of one 32 KiB block row alone: %.2f us (%.1f GB/s)%s\n", t_sum * 1e6, 2.0 * blk / t_sum / 1e9,
           h == 42 ? " " : "");
    for (int m = 0; m < 2; m++) {
        ma_store_close(st[m]);
        free(bt[m]);
        free(ct[m]);
    }
    free(k);
    free(v);
}

/* Ingests n batches into session id starting at *length; returns seconds. */
static double ingest(ma_store *st, const char *id, const workload *w, int n, uint64_t *length)
{
    char err[512];
    double t0 = now_s();
    for (int b = 0; b < n; b++) {
        ma_store_delta d = {
            .first_event = *length, .n_events = BATCH, .k_floats = DIM, .v_floats = DIM, .k = w->k, .v = w->v,
            .payloads = (const char *const *)w->payloads,
            .backbone = {w->blob, w->blob_len}, .slots_blob = {w->blob, w->blob_len},
            .archive_meta = {w->blob, w->blob_len},
            .length = *length + BATCH, .updated_at = b,
        };
        int rc = ma_store_commit(st, id, &d, err, sizeof err);
        if (rc)
            die("commit", rc, err);
        *length += BATCH;
    }
    return now_s() - t0;
}

static double slot_writes(ma_store *st, const char *id, const workload *w, int n, uint64_t length)
{
    char err[512];
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        ma_store_delta d = {.slots_blob = {w->blob, w->blob_len}, .length = length, .slots = (size_t)i,
                            .updated_at = i};
        int rc = ma_store_commit(st, id, &d, err, sizeof err);
        if (rc)
            die("slot commit", rc, err);
    }
    return now_s() - t0;
}

static void big(const char *dir, uint64_t events, const workload *w)
{
    char err[512];
    ma_store *st = open_store(dir, MA_STORE_SYNC_NORMAL, 0);
    int rc = ma_store_session_create(st, "big", "{}", 0, err, sizeof err);
    if (rc)
        die("create", rc, err);
    uint64_t length = 0;
    double t = ingest(st, "big", w, (int)(events / BATCH), &length);
    printf("big: %llu events written in %.1f s (%.0f events/s), database %.1f MiB\n",
           (unsigned long long)length, t, (double)length / t, (double)ma_store_bytes(st) / 1048576.0);
    ma_store_close(st);

    double t0 = now_s();
    st = open_store(dir, MA_STORE_SYNC_FULL, 0);
    double t_open = now_s() - t0;
    ma_store_session s;
    t0 = now_s();
    if ((rc = ma_store_session_load(st, "big", &s, err, sizeof err)))
        die("load", rc, err);
    double t_load = now_s() - t0;
    ma_store_session_clear(&s);
    printf("big: reopen (quick_check + row counts) %.2f s, session row + blobs %.4f s\n", t_open, t_load);

    float *k = malloc(64 * DIM * sizeof(float)), *v = malloc(64 * DIM * sizeof(float));
    unsigned seed = 3;
    int chunks = 2000;
    t0 = now_s();
    for (int i = 0; i < chunks; i++) {
        uint64_t c = (uint64_t)rand_r(&seed) % (length / 64);
        ma_store_events to = {DIM, DIM, k, v, NULL};
        if ((rc = ma_store_load_events(st, "big", c * 64, 64, &to, err, sizeof err)))
            die("load_events", rc, err);
    }
    t = now_s() - t0;
    printf("big: %d random 64-event chunks paged in %.3f s (%.0f chunks/s, %.1f us each)\n", chunks, t,
           chunks / t, t / chunks * 1e6);
    free(k);
    free(v);
    ma_store_close(st);
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int batches = 32, slots = 300, sum_rounds = 16;
    unsigned long long big_events = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc)
            batches = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--slot-writes") && i + 1 < argc)
            slots = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--big") && i + 1 < argc)
            big_events = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--checksum-rounds") && i + 1 < argc)
            sum_rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--dir DIR] [--batches N] [--slot-writes N] [--big EVENTS] "
                    "[--checksum-rounds R (0: skip)]\n", argv[0]);
            return 2;
        }
    }
    char tmpl[512];
    int own = !dir;
    if (own) {
        snprintf(tmpl, sizeof tmpl, "%s/bench_store_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(tmpl)) {
            perror("mkdtemp");
            return 1;
        }
        dir = tmpl;
    }
    workload w;
    workload_init(&w);
    printf("bench_store: %d commits of %d events (H=1, d=d_v=%d, 3 x 4 KiB state blobs), %d slot-blob commits\n",
           batches, BATCH, DIM, slots);
    printf("%-8s %14s %14s %16s %14s\n", "store", "events/s", "ms/batch", "slot commits/s", "ms/slot");
    const char *names[3] = {"FULL", "NORMAL", "memory"};
    double ev[3], sl[3];
    for (int m = 0; m < 3; m++) {
        char sub[600];
        snprintf(sub, sizeof sub, "%s/%s", dir, names[m]);
        ma_store *st = open_store(sub, m == 1 ? MA_STORE_SYNC_NORMAL : MA_STORE_SYNC_FULL, m == 2);
        char err[512];
        int rc = ma_store_session_create(st, "s", "{}", 0, err, sizeof err);
        if (rc)
            die("create", rc, err);
        uint64_t length = 0;
        ingest(st, "s", &w, 2, &length);   /* warm-up: file growth, statement preparation */
        double t = ingest(st, "s", &w, batches, &length);
        double ts = slot_writes(st, "s", &w, slots, length);
        ev[m] = (double)batches * BATCH / t;
        sl[m] = slots / ts;
        printf("%-8s %14.0f %14.2f %16.0f %14.3f\n", names[m], ev[m], t / batches * 1e3, sl[m], ts / slots * 1e3);
        ma_store_close(st);
    }
    printf("ratios: event ingest FULL/memory %.2f, NORMAL/memory %.2f, FULL/NORMAL %.2f\n", ev[0] / ev[2],
           ev[1] / ev[2], ev[0] / ev[1]);
    printf("ratios: slot commits FULL/memory %.3f, NORMAL/memory %.3f, FULL/NORMAL %.2f\n", sl[0] / sl[2],
           sl[1] / sl[2], sl[0] / sl[1]);
    if (sum_rounds > 0)
        checksum_cost(dir, &w, sum_rounds);
    if (big_events >= BATCH) {
        char sub[600];
        snprintf(sub, sizeof sub, "%s/big", dir);
        big(sub, big_events, &w);
    }
    workload_free(&w);
    if (own)
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
