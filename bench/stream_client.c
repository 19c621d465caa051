/*
 * bench/stream_client.c — a small HTTP/1.1 client for bench/stream_bench.sh: streams events into one
 * session over REST in batches and reports the per-batch latency tail, or sends sparse queries and
 * prints their answers (to compare a daemon before and after a restart).
 *
 *   stream_client stream PORT ID N [BATCH=1024] [SEED=1]   create ID (H=1, d=64, index) and send N events
 *   stream_client query  PORT ID N [NQ=8] [SEED=1]         NQ sparse queries near events of [0, N); prints
 *                                                          the time of the request and the whole answer
 *
 * Event i's key and value are a pure function of (SEED, i) (Gaussian, from splitmix64), so a query can
 * aim at any event without keeping the keys, and two runs send the same bits. Keys and values go as
 * base64 (k_b64, v_b64) in batches of BATCH events on one keep-alive connection; every 2xx was committed
 * durably (docs/STORE.md) before it arrived. Latencies are wall-clock per batch (send to whole answer).
 * Output of `stream`: batches, events/s, p50 / p99 / max milliseconds, max / p50, p99 / p50, the ten
 * slowest batches (index: ms), and one line per 64 batches if MEMATTN_STREAM_TRACE is set. With
 * MEMATTN_STREAM_LOG=FILE every batch is written to FILE as a line "index send-time latency-ms" (send time
 * in seconds of CLOCK_REALTIME), to line slow batches up with what the daemon did at that moment.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define D 64

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* n Gaussian floats from generator state s (Box-Muller). */
static void gauss(uint64_t *s, float *out, int n)
{
    for (int i = 0; i < n; i += 2) {
        double u1 = ((double)(splitmix(s) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(splitmix(s) >> 11) / 9007199254740992.0;
        double r = sqrt(-2.0 * log(u1));
        out[i] = (float)(r * cos(2 * M_PI * u2));
        if (i + 1 < n)
            out[i + 1] = (float)(r * sin(2 * M_PI * u2));
    }
}

static void event_kv(uint64_t seed, uint64_t i, float *k, float *v)
{
    uint64_t s = seed * 0x100000001b3ull ^ (i * 0x9e3779b97f4a7c15ull);
    gauss(&s, k, D);
    gauss(&s, v, D);
}

static size_t b64(const void *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t x = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = t[x >> 18];
        out[o++] = t[x >> 12 & 63];
        out[o++] = t[x >> 6 & 63];
        out[o++] = t[x & 63];
    }
    if (i < n) {
        uint32_t x = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = t[x >> 18];
        out[o++] = t[x >> 12 & 63];
        out[o++] = i + 1 < n ? t[x >> 6 & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        exit(2);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static char *rbuf;
static size_t rcap;

/* Sends one request and reads the whole answer; returns the status, *body points into rbuf. */
static int request(int fd, const char *method, const char *path, const char *body, size_t blen, char **resp,
                   size_t *rlen)
{
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      method, path, blen);
    struct { const void *b; size_t n; } parts[2] = {{head, (size_t)hl}, {body, blen}};
    for (int p = 0; p < 2; p++)
        for (size_t off = 0; off < parts[p].n;) {
            ssize_t w = write(fd, (const char *)parts[p].b + off, parts[p].n - off);
            if (w <= 0) {
                perror("write");
                exit(2);
            }
            off += (size_t)w;
        }
    size_t have = 0, need = 0, hend = 0;
    for (;;) {
        if (rcap - have < 65536) {
            rcap = rcap ? 2 * rcap : 1 << 20;
            rbuf = realloc(rbuf, rcap);
        }
        ssize_t r = read(fd, rbuf + have, rcap - have - 1);
        if (r <= 0) {
            fprintf(stderr, "connection closed\n");
            exit(2);
        }
        have += (size_t)r;
        rbuf[have] = 0;
        if (!hend) {
            char *e = strstr(rbuf, "\r\n\r\n");
            if (!e)
                continue;
            hend = (size_t)(e - rbuf) + 4;
            char *cl = strcasestr(rbuf, "\r\nContent-Length:");
            need = hend + (cl && cl < e ? strtoull(cl + 17, NULL, 10) : 0);
        }
        if (have >= need)
            break;
    }
    *resp = rbuf + hend;
    *rlen = need - hend;
    return atoi(rbuf + 9);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int do_stream(int port, const char *id, uint64_t n, size_t batch, uint64_t seed)
{
    int fd = connect_to(port);
    char path[256], *resp;
    size_t rlen;
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    const char *cfg = "{\"heads\":1,\"dim\":64,\"value_dim\":64,\"selector\":\"index\"}";
    int st = request(fd, "PUT", path, cfg, strlen(cfg), &resp, &rlen);
    if (st != 201 && st != 200) {
        fprintf(stderr, "create: %d %.*s\n", st, (int)rlen, resp);
        return 1;
    }
    snprintf(path, sizeof path, "/v1/sessions/%s/events", id);
    size_t cap = batch * 800 + 64;
    char *body = malloc(cap);
    size_t nb = (size_t)((n + batch - 1) / batch);
    double *lat = malloc(nb * sizeof *lat), *sorted = malloc(nb * sizeof *sorted);
    float k[D], v[D];
    const char *trace = getenv("MEMATTN_STREAM_TRACE");
    FILE *blog = getenv("MEMATTN_STREAM_LOG") ? fopen(getenv("MEMATTN_STREAM_LOG"), "w") : NULL;
    double t0 = now_s();
    for (size_t b = 0; b < nb; b++) {
        uint64_t first = (uint64_t)b * batch, m = n - first < batch ? n - first : batch;
        size_t o = (size_t)sprintf(body, "{\"events\":[");
        for (uint64_t i = 0; i < m; i++) {
            event_kv(seed, first + i, k, v);
            o += (size_t)sprintf(body + o, "%s{\"k_b64\":\"", i ? "," : "");
            o += b64(k, sizeof k, body + o);
            o += (size_t)sprintf(body + o, "\",\"v_b64\":\"");
            o += b64(v, sizeof v, body + o);
            o += (size_t)sprintf(body + o, "\"}");
        }
        o += (size_t)sprintf(body + o, "]}");
        double t = now_s();
        st = request(fd, "POST", path, body, o, &resp, &rlen);
        lat[b] = now_s() - t;
        if (blog) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            fprintf(blog, "%zu %.6f %.2f\n", b, (double)ts.tv_sec + ts.tv_nsec * 1e-9 - lat[b], lat[b] * 1e3);
        }
        if (st != 200) {
            fprintf(stderr, "batch %zu: %d %.*s\n", b, st, (int)rlen, resp);
            return 1;
        }
        if (trace && b % 64 == 63)
            fprintf(stderr, "%zu events, last batch %.1f ms\n", (size_t)(first + m), lat[b] * 1e3);
    }
    double total = now_s() - t0;
    memcpy(sorted, lat, nb * sizeof *lat);
    qsort(sorted, nb, sizeof *sorted, cmp_d);
    double p50 = sorted[nb / 2], p99 = sorted[(size_t)(0.99 * (double)(nb - 1))], mx = sorted[nb - 1];
    printf("batches %zu of %zu events, %.0f events/s (whole run %.1f s, client encoding included)\n", nb, batch,
           (double)n / total, total);
    printf("per batch: p50 %.1f ms, p99 %.1f ms, max %.1f ms; max/p50 %.2f, p99/p50 %.2f\n", p50 * 1e3, p99 * 1e3,
           mx * 1e3, mx / p50, p99 / p50);
    printf("slowest:");
    for (int s = 0; s < 10 && s < (int)nb; s++) {
        size_t best = 0;
        for (size_t b = 1; b < nb; b++)
            if (lat[b] > lat[best])
                best = b;
        printf(" %zu:%.0f", best, lat[best] * 1e3);
        lat[best] = -1;
    }
    printf("\n");
    free(body);
    free(lat);
    free(sorted);
    close(fd);
    return 0;
}

static int do_query(int port, const char *id, uint64_t n, int nq, uint64_t seed)
{
    int fd = connect_to(port);
    char path[256], *resp;
    size_t rlen;
    snprintf(path, sizeof path, "/v1/sessions/%s/query", id);
    char *body = malloc((size_t)nq * 512 + 64);
    size_t o = (size_t)sprintf(body, "{\"queries\":[");
    uint64_t s = seed ^ 0x5eed;
    float k[D], v[D], noise[D];
    for (int q = 0; q < nq; q++) {
        uint64_t i = splitmix(&s) % n;
        event_kv(seed, i, k, v);
        gauss(&s, noise, D);
        for (int j = 0; j < D; j++)
            k[j] += 0.3f * noise[j];   /* near event i, not equal to it */
        o += (size_t)sprintf(body + o, "%s{\"q_b64\":\"", q ? "," : "");
        o += b64(k, sizeof k, body + o);
        o += (size_t)sprintf(body + o, "\",\"route\":\"sparse\"}");
    }
    o += (size_t)sprintf(body + o, "]}");
    double t = now_s();
    int st = request(fd, "POST", path, body, o, &resp, &rlen);
    printf("query: status %d in %.1f ms\n%.*s\n", st, (now_s() - t) * 1e3, (int)rlen, resp);
    free(body);
    close(fd);
    return st == 200 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s stream|query PORT ID N [BATCH|NQ] [SEED]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]);
    uint64_t n = strtoull(argv[4], NULL, 10);
    uint64_t seed = argc > 6 ? strtoull(argv[6], NULL, 10) : 1;
    if (strcmp(argv[1], "stream") == 0)
        return do_stream(port, argv[3], n, argc > 5 ? (size_t)atoi(argv[5]) : 1024, seed);
    return do_query(port, argv[3], n, argc > 5 ? atoi(argv[5]) : 8, seed);
}
