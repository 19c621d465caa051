/*
 * bench/api_inproc.c — the in-process baselines of the HTTP ingest benchmark (bench/api_bench.sh).
 *
 * For batches of 1, 64 and 1024 events (H = 1, d = 64, random unit keys and values, fixed seed) it
 * measures, on one thread:
 *   core     ma_session_ingest alone on a registry's session (backbone update, archive append, the
 *            index's appends) — the compute of the daemon's request path without HTTP, JSON or the
 *            store; the session is managed, so its index builds are the registry's background job, queued
 *            by commits: this path never builds (the daemon does, on its maintenance thread);
 *   core_built  the same on a session of the core alone (ma_session_create: unmanaged), whose appends
 *            build the index in place at every build point — the daemon's whole compute, builds
 *            included, on one thread;
 *   durable  ma_session_ingest + reg_commit into a real store (sqlite, synchronous FULL as the daemon
 *            runs it) — the daemon's work per batch minus HTTP and decoding; its line also gives the
 *            bytes the process wrote to storage per event (/proc/self/io write_bytes: the WAL, the
 *            checkpoints into the database file, the index rows);
 *   disk     the data directory's own rate for the durable path's pattern, with no sqlite: appends of
 *            one batch's payload bytes (1024 events of d + d floats) each followed by fdatasync, as a
 *            FULL commit is, over as many bytes as the largest durable run wrote. With the bytes per
 *            event it bounds the durable rate any store design of the same write volume can reach on
 *            this disk (ingest_bench.sh prints that bound).
 * Output: one line per (path, batch) "inproc <path> batch=<n> events=<N> seconds=<s> events_per_s=<r>"
 * (durable adds write_bytes_per_event=<b>; disk prints "inproc disk bytes=<n> chunk=<n> seconds=<s>
 * bytes_per_s=<r>"), parsed by api_bench.sh and ingest_bench.sh. Usage: api_inproc DATA_DIR [EVENTS [BATCH,...]] (default
 * 65536 events, batches 1,64,1024).
 */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "core/error.h"
#include "core/session.h"
#include "registry/registry.h"
#include "store/store.h"

static uint64_t rng = 42;
static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The bytes this process has caused to be written to storage (proc(5), /proc/self/io write_bytes); -1 if
 * the kernel does not say. */
static long long write_bytes(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    long long b = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "write_bytes: %lld", &b) == 1)
            break;
    if (f)
        fclose(f);
    return b;
}

/* The disk line (see the top): `total` bytes appended to DIR/disk-probe in `chunk`-byte writes, each
 * followed by fdatasync. Returns 0, or 1 if the file could not be written. */
static int disk_probe(const char *dir, size_t total, size_t chunk)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/disk-probe", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char *buf = calloc(1, chunk);
    int ret = fd < 0 || !buf;
    for (size_t i = 0; i < chunk; i++)
        if (buf)
            buf[i] = (char)(i * 131u);
    double t0 = now();
    size_t done = 0;
    while (!ret && done < total) {
        ret = write(fd, buf, chunk) != (ssize_t)chunk || fdatasync(fd) != 0;
        done += chunk;
    }
    double dt = now() - t0;
    if (!ret)
        printf("inproc disk bytes=%zu chunk=%zu seconds=%.3f bytes_per_s=%.0f\n", done, chunk, dt, (double)done / dt);
    else
        fprintf(stderr, "disk probe: cannot write %s\n", path);
    if (fd >= 0)
        close(fd);
    unlink(path);
    free(buf);
    return ret;
}

static void unit_rows(float *x, size_t n, int d)
{
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) {
            x[i * d + j] = frand();
            s += (double)x[i * d + j] * x[i * d + j];
        }
        for (int j = 0; j < d; j++)
            x[i * d + j] = (float)(x[i * d + j] / sqrt(s));
    }
}

int main(int argc, char **argv)
{
    const int d = 64;
    const size_t total = argc > 2 ? (size_t)atol(argv[2]) : 65536;
    size_t batches[8] = {1, 64, 1024}, nb = 3;
    char err[256];
    if (argc < 2) {
        fprintf(stderr, "usage: %s DATA_DIR [EVENTS [BATCH,...]]\n", argv[0]);
        return 2;
    }
    if (argc > 3) {
        nb = 0;
        for (char *p = argv[3]; *p && nb < 8; p += *p == ',') {
            batches[nb] = strtoul(p, &p, 10);
            if (batches[nb++] == 0) {
                fprintf(stderr, "bad batch list %s\n", argv[3]);
                return 2;
            }
        }
    }
    openblas_set_num_threads(1);
    float *k = malloc(sizeof(float) * total * d), *v = malloc(sizeof(float) * total * d);
    ma_event *ev = calloc(total, sizeof *ev);
    if (!k || !v || !ev)
        return 1;
    unit_rows(k, total, d);
    unit_rows(v, total, d);
    for (size_t i = 0; i < total; i++)
        ev[i] = (ma_event){.k = k + i * d, .v = v + i * d};

    ma_params p;
    ma_params_default(&p);
    p.dim = p.value_dim = d;

    ma_store *st;
    if (ma_store_open(argv[1], &st, err, sizeof err)) {
        fprintf(stderr, "store: %s\n", err);
        return 1;
    }
    reg_options ro = {.store = st, .cache_chunks = 128};
    reg_registry *reg;
    if (reg_create(&ro, &reg))
        return 1;

    for (size_t b = 0; b < nb; b++) {   /* core_built: a session of the core alone */
        size_t bs = batches[b];
        ma_session *cs;
        if (ma_session_create(&p, &cs)) {
            fprintf(stderr, "create: out of memory\n");
            return 1;
        }
        double t0 = now();
        for (size_t i = 0; i < total; i += bs) {
            size_t m = i + bs <= total ? bs : total - i;
            ma_ingest_report rep = {0};
            int rc = ma_session_ingest(cs, m, ev + i, 0, &rep);
            ma_ingest_report_clear(&rep);
            if (rc) {
                fprintf(stderr, "ingest: %s\n", ma_strerror(rc));
                return 1;
            }
        }
        double dt = now() - t0;
        printf("inproc core_built batch=%zu events=%zu seconds=%.3f events_per_s=%.0f\n", bs, total, dt,
               (double)total / dt);
        fflush(stdout);
        ma_session_destroy(cs);
    }
    long long most_written = 0;
    for (int durable = 0; durable <= 1; durable++)
        for (size_t b = 0; b < nb; b++) {
            size_t bs = batches[b];
            /* batch 1 with a commit each is slow: fewer events keep the run short */
            size_t n = durable && bs == 1 ? total / 16 : total;
            char id[64];
            snprintf(id, sizeof id, "inproc-%d-%zu", durable, bs);
            reg_session *s;
            if (reg_create_session(reg, id, &p, 0, &s, err, sizeof err)) {
                fprintf(stderr, "create: %s\n", err);
                return 1;
            }
            long long w0 = write_bytes();
            double t0 = now();
            for (size_t i = 0; i < n; i += bs) {
                size_t m = i + bs <= n ? bs : n - i;
                ma_ingest_report rep = {0};
                int rc = ma_session_ingest(reg_core(s), m, ev + i, 0, &rep);
                ma_ingest_report_clear(&rep);
                if (rc) {
                    fprintf(stderr, "ingest: %s\n", ma_strerror(rc));
                    return 1;
                }
                if (durable) {
                    reg_change c = {.first_event = i, .n_events = m, .k = k + i * d, .v = v + i * d};
                    if (reg_commit(reg, s, &c, 0, err, sizeof err)) {
                        fprintf(stderr, "commit: %s\n", err);
                        return 1;
                    }
                }
            }
            double dt = now() - t0;
            long long w = write_bytes() - w0;
            printf("inproc %s batch=%zu events=%zu seconds=%.3f events_per_s=%.0f", durable ? "durable" : "core", bs,
                   n, dt, (double)n / dt);
            if (durable && w0 >= 0) {
                printf(" write_bytes_per_event=%.0f", (double)w / (double)n);
                if (w > most_written)
                    most_written = w;
            }
            printf("\n");
            fflush(stdout);
            reg_release(reg, s);
            reg_delete(reg, id, err, sizeof err);
        }
    reg_destroy(reg);
    ma_store_close(st);
    if (most_written > 0 && disk_probe(argv[1], (size_t)most_written, 1024 * 2 * (size_t)d * sizeof(float)))
        return 1;
    free(k);
    free(v);
    free(ev);
    return 0;
}
