/*
 * bench/ingest_http.c — durable HTTP ingest under concurrent connections, a fixed amount of work
 * (bench/ingest_bench.sh runs it against a fresh daemon and compares with build/bench/api_inproc).
 *
 *   ingest_http HOST:PORT SESSIONS CONNECTIONS BATCHES [BATCH [ENCODING]]
 *
 * Creates SESSIONS sessions ("ih-0" .. , H = 1, d = d_v = 64), then CONNECTIONS keep-alive connections
 * (one thread each) send BATCHES POST /v1/sessions/{id}/events requests of BATCH (default 1024) events
 * between them, keys and values random unit vectors (fixed seed; 16 distinct bodies prebuilt before the
 * clock starts) spelled as ENCODING says: b64 (default; JSON with k_b64 / v_b64) or binary (the
 * application/octet-stream batch of docs/API.md, "Binary event batches": the same floats). Connection c writes to session c % SESSIONS; each connection takes the next
 * batch from a shared counter, so the work is exactly BATCHES batches whatever the connections' speeds.
 * Every answer must be 200 with the session's expected "appended"; anything else stops the run (exit 1).
 * Prints one line:
 *   http encoding=b64|binary sessions=S connections=C batches=N events=E seconds=T events_per_s=R p50_ms=.. p99_ms=..
 *        max_ms=.. client_cpu_s=..
 * (request latency: from the first byte sent to the last byte of the answer read; client_cpu_s: this
 * process's own user + system CPU time over the run, bodies prebuilt).
 * Raw sockets, no HTTP library: the client's own cost stays small next to the daemon's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DIM 64
#define NBODIES 16

static struct sockaddr_in addr;
static char host[64];
static int nsessions, nconns, batch = 1024, binary;
static long nbatches;
static atomic_long next_batch;
static char *bodies[NBODIES];
static size_t body_len[NBODIES];
static double *lat;                 /* per batch, seconds */
static atomic_int failed;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 7;
static double frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static size_t b64(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    return o;
}

static void unit(float *x)
{
    double s = 0;
    for (int j = 0; j < DIM; j++) {
        x[j] = (float)frand();
        s += (double)x[j] * x[j];
    }
    for (int j = 0; j < DIM; j++)
        x[j] = (float)(x[j] / sqrt(s));
}

/* The binary spelling: "MAEV", n, heads, dim, value_dim (little-endian uint32), then every key, then
 * every value (float32; this bench runs on little-endian hosts). */
static char *make_binary_body(size_t *len)
{
    size_t o = 20, cap = 20 + (size_t)batch * 2 * DIM * sizeof(float);
    char *b = malloc(cap);
    uint32_t hdr[4] = {(uint32_t)batch, 1, DIM, DIM};
    if (!b)
        return NULL;
    float *k = (float *)(b + 20), *v = k + (size_t)batch * DIM;
    memcpy(b, "MAEV", 4);
    memcpy(b + 4, hdr, sizeof hdr);
    for (int i = 0; i < batch; i++) {
        float kk[DIM], vv[DIM];
        unit(kk);
        unit(vv);
        memcpy(k + (size_t)i * DIM, kk, sizeof kk);
        memcpy(v + (size_t)i * DIM, vv, sizeof vv);
        o += sizeof kk + sizeof vv;
    }
    *len = o;
    return b;
}

static char *make_body(size_t *len)
{
    size_t cap = (size_t)batch * (2 * 4 * (DIM * 4 / 3 + 4) + 64) + 64, o = 0;
    char *b = malloc(cap);
    if (!b)
        return NULL;
    o += (size_t)sprintf(b + o, "{\"events\":[");
    for (int i = 0; i < batch; i++) {
        float k[DIM], v[DIM];
        unit(k);
        unit(v);
        o += (size_t)sprintf(b + o, "%s{\"k_b64\":\"", i ? "," : "");
        o += b64((const unsigned char *)k, sizeof k, b + o);
        o += (size_t)sprintf(b + o, "\",\"v_b64\":\"");
        o += b64((const unsigned char *)v, sizeof v, b + o);
        o += (size_t)sprintf(b + o, "\"}");
    }
    o += (size_t)sprintf(b + o, "]}");
    *len = o;
    return b;
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Sends one request and reads its answer: the status, and the body into buf (NUL-terminated). */
static int roundtrip(int fd, const char *method, const char *path, const char *body, size_t blen, char *buf,
                     size_t cap, int *status)
{
    char head[512];
    int hl = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\n\r\n", method, path, host,
                      binary && strcmp(method, "POST") == 0 ? "application/octet-stream" : "application/json", blen);
    if (send_all(fd, head, (size_t)hl) || (blen && send_all(fd, body, blen)))
        return -1;
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        if (got + 1 >= cap)
            return -1;
        ssize_t r = recv(fd, buf + got, cap - 1 - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
        buf[got] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    if (sscanf(buf, "HTTP/1.1 %d", status) != 1)
        return -1;
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    size_t clen = cl ? strtoul(cl + 17, NULL, 10) : 0, hdr = (size_t)(end + 4 - buf);
    if (hdr + clen + 1 > cap)
        return -1;
    while (got < hdr + clen) {
        ssize_t r = recv(fd, buf + got, hdr + clen - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    memmove(buf, buf + hdr, clen);
    buf[clen] = 0;
    return 0;
}

static void *conn_main(void *arg)
{
    long c = (long)(intptr_t)arg;
    char path[128], buf[65536];
    snprintf(path, sizeof path, "/v1/sessions/ih-%ld/events", c % nsessions);
    int fd = dial();
    if (fd < 0) {
        fprintf(stderr, "connect failed\n");
        atomic_store(&failed, 1);
        return NULL;
    }
    for (;;) {
        long b = atomic_fetch_add(&next_batch, 1);
        if (b >= nbatches || atomic_load(&failed))
            break;
        int status = 0;
        double t0 = now();
        int rc = roundtrip(fd, "POST", path, bodies[b % NBODIES], body_len[b % NBODIES], buf, sizeof buf, &status);
        lat[b] = now() - t0;
        if (rc || status != 200) {
            fprintf(stderr, "batch %ld on %s: %s %d %.300s\n", b, path, rc ? "i/o error" : "status", status,
                    rc ? "" : buf);
            atomic_store(&failed, 1);
            break;
        }
    }
    close(fd);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST:PORT SESSIONS CONNECTIONS BATCHES [BATCH [b64|binary]]\n", argv[0]);
        return 2;
    }
    snprintf(host, sizeof host, "%s", argv[1]);
    char *colon = strrchr(host, ':');
    if (!colon)
        return 2;
    *colon = 0;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return 2;
    *colon = ':';
    nsessions = atoi(argv[2]);
    nconns = atoi(argv[3]);
    nbatches = atol(argv[4]);
    if (argc > 5)
        batch = atoi(argv[5]);
    if (argc > 6 && strcmp(argv[6], "binary") != 0 && strcmp(argv[6], "b64") != 0)
        return 2;
    binary = argc > 6 && strcmp(argv[6], "binary") == 0;
    if (nsessions < 1 || nconns < 1 || nbatches < 1 || batch < 1)
        return 2;
    for (int i = 0; i < NBODIES; i++)
        if (!(bodies[i] = binary ? make_binary_body(&body_len[i]) : make_body(&body_len[i])))
            return 1;
    if (!(lat = calloc((size_t)nbatches, sizeof *lat)))
        return 1;

    int fd = dial();
    char buf[4096];
    if (fd < 0) {
        fprintf(stderr, "cannot connect to %s\n", argv[1]);
        return 1;
    }
    for (int s = 0; s < nsessions; s++) {
        char path[64];
        int status;
        snprintf(path, sizeof path, "/v1/sessions/ih-%d", s);
        if (roundtrip(fd, "PUT", path, "{\"dim\":64}", 10, buf, sizeof buf, &status) || (status != 200 && status != 201)) {
            fprintf(stderr, "creating %s: %d %s\n", path, status, buf);
            return 1;
        }
    }
    close(fd);

    pthread_t *th = calloc((size_t)nconns, sizeof *th);
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    double cpu0 = (double)ru0.ru_utime.tv_sec + (double)ru0.ru_utime.tv_usec * 1e-6 + (double)ru0.ru_stime.tv_sec +
                  (double)ru0.ru_stime.tv_usec * 1e-6;
    double t0 = now();
    for (long c = 0; c < nconns; c++)
        pthread_create(&th[c], NULL, conn_main, (void *)(intptr_t)c);
    for (int c = 0; c < nconns; c++)
        pthread_join(th[c], NULL);
    double dt = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
                 (double)ru.ru_stime.tv_usec * 1e-6 - cpu0;
    if (atomic_load(&failed))
        return 1;
    qsort(lat, (size_t)nbatches, sizeof *lat, cmp);
    long events = nbatches * batch;
    printf("http encoding=%s sessions=%d connections=%d batches=%ld events=%ld seconds=%.3f events_per_s=%.0f p50_ms=%.1f "
           "p99_ms=%.1f max_ms=%.1f client_cpu_s=%.2f\n", binary ? "binary" : "b64", nsessions, nconns, nbatches, events, dt, (double)events / dt,
           lat[nbatches / 2] * 1e3, lat[(size_t)((double)nbatches * 0.99)] * 1e3, lat[nbatches - 1] * 1e3, cpu);
    for (int i = 0; i < NBODIES; i++)
        free(bodies[i]);
    free(lat);
    free(th);
    return 0;
}
