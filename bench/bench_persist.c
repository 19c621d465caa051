/*
 * bench/bench_persist.c — a large session through core + store, as the daemon's registry handles it:
 * build time, the size of each state blob (what a commit rewrites), restart time, and resident memory
 * while answering queries with the archive paged from the store.
 *
 *   build/bench/bench_persist [--events N] [--batch B] [--cache CHUNKS] [--queries Q] [--meta-every K]
 *                             [--selector index|chunks] [--dir DIR] [--compare N]
 *
 * Build (one process): a session (H = 1, d = d_v = 64, chunk 64, the given selector) ingests N random unit
 * events in batches of B; each batch's events are committed with ma_store_commit and the sealed chunks
 * released (ma_archive_release), as registry/registry.c does; the state blobs are serialised and committed
 * every `--meta-every` batches, whenever the archive's meta generation changes (an index rebuild: the
 * registry rewrites the archive blob only then), and at the end.
 * Restart (a fresh process, so its RSS holds only what the restart loads): ma_store_open (integrity
 * checks), ma_store_session_load, ma_session_restore with the store as chunk and payload source and a
 * cache of CHUNKS chunks; then Q sparse queries for the keys of random events and Q at cosine 0.9 of them
 * (the needle must come back as the pointer) and the resident memory (VmRSS, VmHWM of /proc/self/status).
 * --compare N (after those): N sparse reads at cosine 0.9, each paged (candidates read alone, as the daemon
 * does), paged the way before (their chunks loaded whole) and on a resident twin built in this process (the
 * same answers, checked bit for bit): p50 / p99 / max of each and the paged/resident ratios of one run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <ftw.h>

#include <cblas.h>

#include "core/archive.h"
#include "core/error.h"
#include "core/session.h"
#include "registry/pager.h"
#include "store/store.h"

#define DIM 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* This thread's CPU time (the machine is shared: wall times include waiting for a core). */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc, const char *err)
{
    fprintf(stderr, "bench_persist: %s: %s (%s)\n", what, err ? err : "", ma_strerror(rc));
    exit(1);
}

static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n))
            v = strtol(line + n + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

/* Event i's key: a deterministic random unit vector (so the restart process can rebuild any needle). */
static void key_of(uint64_t i, float *k)
{
    uint64_t x = i * 0x9E3779B97F4A7C15ull + 12345;
    double norm = 0;
    for (int j = 0; j < DIM; j++) {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 29;
        k[j] = (float)((double)(x >> 11) / (double)(1ull << 53) - 0.5);
        norm += (double)k[j] * k[j];
    }
    for (int j = 0; j < DIM; j++)
        k[j] = (float)(k[j] / sqrt(norm));
}

static ma_selector selector = MA_SELECTOR_INDEX;

static void params(ma_params *p)
{
    ma_params_default(p);
    p->dim = DIM;
    p->value_dim = DIM;
    p->selector = selector;
}

static void commit_blobs(ma_store *st, ma_session *s, uint64_t length, double *t_ser, size_t sizes[3])
{
    void *b[3] = {NULL, NULL, NULL};
    size_t n[3] = {0, 0, 0};
    char err[512];
    double t0 = now_s();
    int rc = ma_backbone_serialize(ma_session_backbone(s), &b[0], &n[0]);
    if (!rc)
        rc = ma_session_serialize_slots(s, &b[1], &n[1]);
    if (!rc)
        rc = ma_archive_serialize_meta(ma_session_archive(s), &b[2], &n[2]);
    if (rc)
        die("serialise", rc, NULL);
    *t_ser = now_s() - t0;
    ma_store_delta d = {.backbone = {b[0], n[0]}, .slots_blob = {b[1], n[1]}, .archive_meta = {b[2], n[2]},
                        .length = length, .updated_at = 1};
    if ((rc = ma_store_commit(st, "big", &d, err, sizeof err)))
        die("commit blobs", rc, err);
    for (int i = 0; i < 3; i++) {
        sizes[i] = n[i];
        free(b[i]);
    }
}

static void build(const char *dir, uint64_t events, size_t batch, int meta_every)
{
    ma_params p;
    params(&p);
    ma_store *st;
    ma_session *s;
    char err[512];
    int rc = ma_store_open(dir, &st, err, sizeof err);
    if (rc)
        die("open", rc, err);
    if ((rc = ma_store_session_create(st, "big", "{\"dim\":64}", 0, err, sizeof err)))
        die("create", rc, err);
    if ((rc = ma_session_create(&p, &s)))
        die("session", rc, NULL);
    reg_pager pager;
    reg_pager_init(&pager, st, "big", &p, NULL);
    if ((rc = ma_archive_set_source(ma_session_archive(s), reg_pager_chunks(&pager), 64)))
        die("set_source", rc, NULL);
    float *k = malloc(batch * DIM * sizeof(float)), *v = malloc(batch * DIM * sizeof(float));
    ma_event *ev = calloc(batch, sizeof *ev);
    double t_ingest = 0, t_commit = 0, t_ser = 0, t_ser_max = 0, t0 = now_s();
    size_t sizes[3] = {0, 0, 0};
    uint64_t length = 0, gen = ma_archive_meta_generation(ma_session_archive(s));
    int rewrites = 0;
    for (int b = 0; length < events; b++) {
        size_t n = events - length < batch ? (size_t)(events - length) : batch;
        for (size_t i = 0; i < n; i++) {
            key_of(length + i, k + i * DIM);
            for (int j = 0; j < DIM; j++)
                v[i * DIM + j] = k[i * DIM + (j + 1) % DIM];
            ev[i] = (ma_event){.k = k + i * DIM, .v = v + i * DIM};
        }
        double t1 = now_s();
        ma_ingest_report rep;
        if ((rc = ma_session_ingest(s, n, ev, 1, &rep)))
            die("ingest", rc, NULL);
        ma_ingest_report_clear(&rep);
        double t2 = now_s();
        ma_store_delta d = {.first_event = length, .n_events = n, .k_floats = DIM, .v_floats = DIM, .k = k, .v = v,
                            .length = length + n, .updated_at = 1};
        if ((rc = ma_store_commit(st, "big", &d, err, sizeof err)))
            die("commit", rc, err);
        ma_archive_release(ma_session_archive(s));
        length += n;
        double t3 = now_s();
        t_ingest += t2 - t1;
        t_commit += t3 - t2;
        uint64_t g = ma_archive_meta_generation(ma_session_archive(s));
        if ((meta_every > 0 && (b + 1) % meta_every == 0) || length == events || g != gen) {
            gen = g;
            rewrites++;
            double ts;
            commit_blobs(st, s, length, &ts, sizes);
            t_ser += ts;
            if (ts > t_ser_max)
                t_ser_max = ts;
        }
    }
    double total = now_s() - t0;
    printf("build: %llu events in %.1f s (core ingest %.1f s, event commits %.1f s, state blobs %.1f s)\n",
           (unsigned long long)length, total, t_ingest, t_commit, total - t_ingest - t_commit);
    printf("state blobs at %llu events: backbone %zu B, slots %zu B, archive meta %zu B (generation %llu); "
           "serialising them takes at most %.4f s; committed %d times (the daemon rewrites the archive meta "
           "only when its generation changes)\n",
           (unsigned long long)length, sizes[0], sizes[1], sizes[2],
           (unsigned long long)ma_archive_meta_generation(ma_session_archive(s)), t_ser_max, rewrites);
    printf("build: database %.1f MiB, RSS %.1f MiB (peak %.1f MiB)\n", (double)ma_store_bytes(st) / 1048576.0,
           status_kib("VmRSS:") / 1024.0, status_kib("VmHWM:") / 1024.0);
    free(k);
    free(v);
    free(ev);
    ma_session_destroy(s);
    ma_store_close(st);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50, p99 and max of n times (sorted in place), in ms. */
static void tails(double *t, int n, double out[3])
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    out[0] = t[n / 2] * 1e3;
    out[1] = t[(size_t)((n - 1) * 0.99)] * 1e3;
    out[2] = t[n - 1] * 1e3;
}

/* The query at cosine 0.9 of event needle's key (0.9 k + sqrt(0.19) u, u a unit vector orthogonal to k). */
static void near_query(uint64_t needle, uint64_t salt, float *q)
{
    float u[DIM], kk[DIM];
    key_of(needle, kk);
    key_of(salt, u);
    double uk = 0, uu = 0;
    for (int j = 0; j < DIM; j++)
        uk += (double)u[j] * kk[j];
    for (int j = 0; j < DIM; j++)
        u[j] -= (float)(uk * kk[j]), uu += (double)u[j] * u[j];
    for (int j = 0; j < DIM; j++)
        q[j] = (float)(0.9 * kk[j] + sqrt(0.19) * u[j] / sqrt(uu));
}

/* --compare N: paged sparse reads (candidates read alone through ma_store_load_some; and, for reference,
 * their chunks loaded whole, the path before) against a resident twin (the same events ingested in the
 * same batches: the same index, the same answers, checked bit for bit), the three reads of each query
 * back to back, N queries at cosine 0.9 of random needles. */
static void compare_resident(ma_session *s, reg_pager *pager, uint64_t length, size_t batch, int n)
{
    ma_params p;
    params(&p);
    ma_session *res;
    int rc = ma_session_create(&p, &res);
    if (rc)
        die("session", rc, NULL);
    float *k = malloc(batch * DIM * sizeof(float)), *v = malloc(batch * DIM * sizeof(float));
    ma_event *ev = calloc(batch, sizeof *ev);
    double t0 = now_s();
    for (uint64_t len = 0; len < length;) {
        size_t m = length - len < batch ? (size_t)(length - len) : batch;
        for (size_t i = 0; i < m; i++) {
            key_of(len + i, k + i * DIM);
            for (int j = 0; j < DIM; j++)
                v[i * DIM + j] = k[i * DIM + (j + 1) % DIM];
            ev[i] = (ma_event){.k = k + i * DIM, .v = v + i * DIM};
        }
        ma_ingest_report rep;
        if ((rc = ma_session_ingest(res, m, ev, 1, &rep)))
            die("ingest", rc, NULL);
        ma_ingest_report_clear(&rep);
        len += m;
    }
    printf("compare: resident twin built in %.1f s\n", now_s() - t0);
    double *tn = malloc((size_t)n * sizeof *tn), *to = malloc((size_t)n * sizeof *to),
           *tr = malloc((size_t)n * sizeof *tr), *cn = malloc((size_t)n * sizeof *cn),
           *co = malloc((size_t)n * sizeof *co), *cr = malloc((size_t)n * sizeof *cr);
    ma_archive *pa = ma_session_archive(s);
    unsigned seed = 4242;
    int same = 0;
    for (int i = 0; i < n; i++) {
        float q[DIM], o1[DIM], o2[DIM], o3[DIM];
        uint64_t needle = ((uint64_t)rand_r(&seed) << 16 ^ (uint64_t)rand_r(&seed)) % length;
        near_query(needle, length + 1000000 + (uint64_t)i, q);
        ma_query mq = {.q = q, .route = MA_ROUTE_SPARSE};
        ma_answer a1 = {.v = o1}, a2 = {.v = o2}, a3 = {.v = o3};
        double x0 = now_s(), y0 = cpu_s();
        if ((rc = ma_session_query(s, &mq, &a1)))
            die("query", rc, pager->err);
        double x1 = now_s(), y1 = cpu_s();
        ma_archive_set_event_loader(pa, NULL);
        if ((rc = ma_session_query(s, &mq, &a2)))
            die("query", rc, pager->err);
        ma_archive_set_event_loader(pa, reg_pager_event_loader());
        double x2 = now_s(), y2 = cpu_s();
        if ((rc = ma_session_query(res, &mq, &a3)))
            die("query", rc, NULL);
        double x3 = now_s(), y3 = cpu_s();
        tn[i] = x1 - x0;
        to[i] = x2 - x1;
        tr[i] = x3 - x2;
        cn[i] = y1 - y0;
        co[i] = y2 - y1;
        cr[i] = y3 - y2;
        same += !memcmp(o1, o3, sizeof o1) && !memcmp(o2, o3, sizeof o2) && a1.event == a3.event &&
                a2.event == a3.event;
        ma_answer_clear(&a1);
        ma_answer_clear(&a2);
        ma_answer_clear(&a3);
    }
    for (int w = 0; w < 2; w++) {
        double a[3], b[3], c[3];
        tails(w ? cn : tn, n, a);
        tails(w ? co : to, n, b);
        tails(w ? cr : tr, n, c);
        printf("compare: %d sparse reads at cosine 0.9, %llu events, %s ms p50 / p99 / max:\n"
               "  paged, candidates read alone (ma_store_load_some)  %.3f / %.3f / %.3f\n"
               "  paged, candidates' chunks loaded whole (before)    %.3f / %.3f / %.3f\n"
               "  resident                                           %.3f / %.3f / %.3f\n"
               "  paged/resident p50: %.2f now, %.2f before; p99: %.2f now, %.2f before; same bits %d/%d\n",
               n, (unsigned long long)length, w ? "thread CPU" : "wall", a[0], a[1], a[2], b[0], b[1], b[2],
               c[0], c[1], c[2], a[0] / c[0], b[0] / c[0], a[1] / c[1], b[1] / c[1], same, n);
    }
    free(tn);
    free(to);
    free(tr);
    free(cn);
    free(co);
    free(cr);
    free(k);
    free(v);
    free(ev);
    ma_session_destroy(res);
}

static void restart(const char *dir, size_t cache, int queries, size_t batch, int compare)
{
    ma_params p;
    params(&p);
    char err[512];
    long rss_start = status_kib("VmRSS:");
    double t0 = now_s();
    ma_store *st;
    int rc = ma_store_open(dir, &st, err, sizeof err);
    if (rc)
        die("open", rc, err);
    double t1 = now_s();
    ma_store_session row;
    if ((rc = ma_store_session_load(st, "big", &row, err, sizeof err)))
        die("load", rc, err);
    reg_pager pager;
    reg_pager_init(&pager, st, "big", &p, NULL);
    ma_chunk_source chunks = reg_pager_chunks(&pager);
    ma_payload_source payloads = reg_pager_payloads(&pager);
    ma_session *s;
    ma_session_saved saved = {row.backbone.data, row.backbone.len, row.slots_blob.data, row.slots_blob.len,
                              row.archive_meta.data, row.archive_meta.len, chunks, cache, payloads,
                              reg_pager_slot_rows(&pager)};
    rc = ma_session_restore(&p, &saved, &s);
    if (rc)
        die("restore", rc, pager.err);
    ma_archive_set_event_loader(ma_session_archive(s), reg_pager_event_loader());   /* as the registry does */
    uint64_t length = row.length;
    ma_store_session_clear(&row);
    double t2 = now_s();
    long rss_loaded = status_kib("VmRSS:");
    printf("restart: %llu events: store open + integrity %.2f s, session restore %.2f s, total %.2f s\n",
           (unsigned long long)length, t1 - t0, t2 - t1, t2 - t0);

    float q[DIM], out[DIM];
    unsigned seed = 99;
    int found = 0, near = 0;
    size_t touched = 0;
    double tq = now_s();
    for (int i = 0; i < queries; i++) {
        uint64_t needle = ((uint64_t)rand_r(&seed) << 16 ^ (uint64_t)rand_r(&seed)) % length;
        key_of(needle, q);
        ma_query mq = {.q = q, .route = MA_ROUTE_SPARSE};
        ma_answer a = {.v = out};
        if ((rc = ma_session_query(s, &mq, &a)))
            die("query", rc, pager.err);
        found += a.event == (int64_t)needle;
        touched += a.n_chunks;
        ma_answer_clear(&a);
        /* A query at cosine 0.9 of the needle's key: 0.9 k + sqrt(0.19) u, u a unit vector orthogonal to k. */
        float u[DIM], kk[DIM];
        key_of(needle, kk);
        key_of(length + (uint64_t)i, u);
        double uk = 0, uu = 0;
        for (int j = 0; j < DIM; j++)
            uk += (double)u[j] * kk[j];
        for (int j = 0; j < DIM; j++)
            u[j] -= (float)(uk * kk[j]), uu += (double)u[j] * u[j];
        for (int j = 0; j < DIM; j++)
            q[j] = (float)(0.9 * kk[j] + sqrt(0.19) * u[j] / sqrt(uu));
        mq = (ma_query){.q = q, .route = MA_ROUTE_SPARSE};
        a = (ma_answer){.v = out};
        if ((rc = ma_session_query(s, &mq, &a)))
            die("query", rc, pager.err);
        near += a.event == (int64_t)needle;
        touched += a.n_chunks;
        ma_answer_clear(&a);
    }
    tq = now_s() - tq;
    printf("queries: %d random needles, sparse reads for the key and at cosine 0.9: needle found %d/%d and "
           "%d/%d, %.2f ms per read, %.1f chunks touched per read\n", queries, found, queries, near, queries,
           tq / queries / 2 * 1e3, (double)touched / queries / 2);
    if (compare > 0)
        compare_resident(s, &pager, length, batch, compare);
    ma_session_stats ss;
    if (!ma_session_stats_get(s, &ss)) {
        printf("memory: session resident bytes %.1f MiB (archive in full would be %.1f MiB)\n",
               (double)ss.bytes / 1048576.0, (double)ma_archive_bytes_total(ma_session_archive(s)) / 1048576.0);
        ma_session_stats_clear(&ss);
    }
    printf("memory: process RSS at start %.1f MiB, after restore %.1f MiB, after the queries %.1f MiB, "
           "peak %.1f MiB (cache %zu chunks)\n", rss_start / 1024.0, rss_loaded / 1024.0,
           status_kib("VmRSS:") / 1024.0, status_kib("VmHWM:") / 1024.0, cache);
    ma_session_destroy(s);
    ma_store_close(st);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

int main(int argc, char **argv)
{
    unsigned long long events = 2097152;
    size_t batch = 1024, cache = 16;
    int queries = 200, meta_every = 256, compare = 0;
    const char *dir = NULL, *restart_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--events") && i + 1 < argc)
            events = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--cache") && i + 1 < argc)
            cache = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--queries") && i + 1 < argc)
            queries = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--compare") && i + 1 < argc)
            compare = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--meta-every") && i + 1 < argc)
            meta_every = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--selector") && i + 1 < argc) {
            if (ma_selector_parse(argv[++i], &selector)) {
                fprintf(stderr, "bench_persist: --selector index|chunks\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--restart-only") && i + 1 < argc)
            restart_dir = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--events N] [--batch B] [--cache CHUNKS] [--queries Q] [--meta-every K] "
                    "[--selector index|chunks] [--dir DIR] [--compare N]\n", argv[0]);
            return 2;
        }
    }
    openblas_set_num_threads(1);
    if (restart_dir) {
        restart(restart_dir, cache, queries, batch, compare);
        return 0;
    }
    if (events == 0 || batch == 0) {
        fprintf(stderr, "bench_persist: --events and --batch must be > 0\n");
        return 2;
    }
    char tmpl[512];
    if (!dir) {
        snprintf(tmpl, sizeof tmpl, "%s/bench_persist_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(tmpl)) {
            perror("mkdtemp");
            return 1;
        }
    }
    const char *d = dir ? dir : tmpl;
    build(d, events, batch, meta_every);
    fflush(stdout);
    /* The restart in a fresh process: its RSS is what a restarted daemon holds for this session. */
    pid_t pid = fork();
    if (pid == 0) {
        char c[32], q[32], b[32], x[32];
        snprintf(c, sizeof c, "%zu", cache);
        snprintf(q, sizeof q, "%d", queries);
        snprintf(b, sizeof b, "%zu", batch);
        snprintf(x, sizeof x, "%d", compare);
        execl("/proc/self/exe", argv[0], "--restart-only", d, "--cache", c, "--queries", q, "--selector",
              ma_selector_name(selector), "--batch", b, "--compare", x, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!dir)
        nftw(tmpl, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
