/*
 * bench/client_overhead.c — what the C client (clients/c/memattn_client) costs over raw libcurl, for
 * ingest and queries, against a running daemon. bench/client_overhead.py starts the daemon and runs
 * this after its Python measurement, so one command gives both; alone:
 *
 *   build/bench/client_overhead http://127.0.0.1:PORT [events dim batch queries rounds]
 *
 * ingest raw:    one reused libcurl handle POSTing prebuilt {"events":[...]} bodies (k_b64/v_b64
 *                packed before the clock starts): HTTP + the daemon only
 *        client: mac_append() of the float arrays, `batch` events per request (max_body set to fit)
 *        raw binary: prebuilt application/octet-stream bodies ("MAEV" header + float32 keys, values)
 *        f32 binary: mac_append_f32(MAC_SEND_BINARY) of the two float arrays
 *        f32 JSON:   mac_append_f32(MAC_SEND_JSON), the same arrays as {"k_b64","v_b64"} events
 *                (the binary and f32 rows carry no payload, which binary batches cannot; every
 *                variant sends `batch` events a request: each client's max_body is set to fit that)
 * query  raw:    prebuilt one-query bodies, one POST per query
 *        client: mac_query_run() with one mac_query (packing, JSON, parsing the answer)
 * The five ingests run in an order rotated each round, so drift hits them alike; medians are printed.
 * Each ingest uses a fresh session; queries all
 * go to one session ingested and warmed up before the rounds, raw first in even rounds, client first
 * in odd ones (a freshly ingested session answers its first queries slower).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "clients/c/memattn_client.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t sink(char *p, size_t s, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return s * n;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp);
    return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

static unsigned long long rng = 1;
static float gauss(void)
{
    double u = 0;
    for (int i = 0; i < 12; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        u += (double)(rng >> 11) / 9007199254740992.0;
    }
    return (float)(u - 6);
}

static void unit(float *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) {
        x[i] = gauss();
        s += (double)x[i] * x[i];
    }
    for (int i = 0; i < n; i++)
        x[i] = (float)(x[i] / sqrt(s));
}

/* One raw POST; returns the HTTP status. */
static long post(CURL *h, const char *url, const char *body, size_t len)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    long st = 0;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
    return st;
}

enum { ING_RAW, ING_CLIENT, ING_RAW_BIN, ING_F32_BIN, ING_F32_JSON, ING_N };

/* A client whose body limit holds exactly `batch` events of this spelling. */
static mac_client *client_for(const char *base, size_t max_body)
{
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    o.max_body = max_body;
    mac_client *c = NULL;
    return mac_open(&o, &c) == MAC_OK ? c : NULL;
}

static void put_u32(unsigned char *p, uint32_t x)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(x >> (8 * i));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s http://HOST:PORT [events dim batch queries rounds]\n", argv[0]);
        return 2;
    }
    const char *base = argv[1];
    int nev = argc > 2 ? atoi(argv[2]) : 20000, dim = argc > 3 ? atoi(argv[3]) : 64;
    int batch = argc > 4 ? atoi(argv[4]) : 500, nq = argc > 5 ? atoi(argv[5]) : 2000;
    int rounds = argc > 6 ? atoi(argv[6]) : 3;
    if (nev < 1 || dim < 1 || batch < 1 || nq < 1 || rounds < 1 || rounds > 64)
        return 2;
    float *k = malloc(sizeof(float) * (size_t)nev * dim), *v = malloc(sizeof(float) * (size_t)nev * dim);
    float *q = malloc(sizeof(float) * (size_t)nq * dim);
    mac_event *ev = calloc((size_t)nev, sizeof *ev);
    int nb = (nev + batch - 1) / batch;
    char **bodies = calloc((size_t)nb, sizeof *bodies), **qb = calloc((size_t)nq, sizeof *qb);
    if (!k || !v || !q || !ev || !bodies || !qb)
        return 1;
    for (int i = 0; i < nev; i++) {
        unit(k + (size_t)i * dim, dim);
        unit(v + (size_t)i * dim, dim);
        ev[i] = (mac_event){ .k = k + (size_t)i * dim, .nk = (size_t)dim, .v = v + (size_t)i * dim, .nv = (size_t)dim,
                             .payload_json = "7" };
    }
    size_t maxlen = 0;
    for (int b = 0; b < nb; b++) {
        size_t cap = (size_t)batch * ((size_t)dim * 12 + 64) + 32, o = 0;
        char *s = malloc(cap);
        o += (size_t)sprintf(s, "{\"events\":[");
        for (int i = b * batch; i < nev && i < (b + 1) * batch; i++) {
            char *kb = mac_b64_f32(ev[i].k, (size_t)dim), *vb = mac_b64_f32(ev[i].v, (size_t)dim);
            o += (size_t)sprintf(s + o, "%s{\"k_b64\":\"%s\",\"v_b64\":\"%s\",\"payload\":7}", i > b * batch ? "," : "", kb, vb);
            free(kb);
            free(vb);
        }
        o += (size_t)sprintf(s + o, "]}");
        bodies[b] = s;
        if (o > maxlen)
            maxlen = o;
    }
    /* binary bodies: "MAEV", n, heads 1, dim, value_dim = dim, then the keys, then the values (the
     * benchmark runs on little-endian hosts: the floats are copied as they are) */
    unsigned char **bbodies = calloc((size_t)nb, sizeof *bbodies);
    size_t *blen = calloc((size_t)nb, sizeof *blen);
    if (!bbodies || !blen)
        return 1;
    for (int b = 0; b < nb; b++) {
        size_t i0 = (size_t)b * batch, m = (size_t)(nev - b * batch < batch ? nev - b * batch : batch);
        size_t fl = m * (size_t)dim;
        blen[b] = 20 + 2 * 4 * fl;
        if (!(bbodies[b] = malloc(blen[b])))
            return 1;
        memcpy(bbodies[b], "MAEV", 4);
        put_u32(bbodies[b] + 4, (uint32_t)m);
        put_u32(bbodies[b] + 8, 1);
        put_u32(bbodies[b] + 12, (uint32_t)dim);
        put_u32(bbodies[b] + 16, (uint32_t)dim);
        memcpy(bbodies[b] + 20, k + i0 * dim, 4 * fl);
        memcpy(bbodies[b] + 20 + 4 * fl, v + i0 * dim, 4 * fl);
    }
    for (int i = 0; i < nq; i++) {
        unit(q + (size_t)i * dim, dim);
        char *qb64 = mac_b64_f32(q + (size_t)i * dim, (size_t)dim);
        qb[i] = malloc(strlen(qb64) + 40);
        sprintf(qb[i], "{\"queries\":[{\"q_b64\":\"%s\"}]}", qb64);
        free(qb64);
    }

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *h = curl_easy_init();
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    hd = curl_slist_append(hd, "Expect:");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    mac_options o;
    mac_options_init(&o);
    o.base_url = base;
    o.max_body = maxlen + 64;
    mac_client *c;
    if (mac_open(&o, &c) != MAC_OK)
        return 1;
    /* `batch` events a request: binary 20 + batch*8*dim bytes; f32 JSON {"k_b64":"..","v_b64":".."} */
    size_t b64 = ((size_t)dim * 4 + 2) / 3 * 4;
    mac_client *cbin = client_for(base, 20 + (size_t)batch * 8 * dim);
    mac_client *cjs = client_for(base, 13 + (size_t)batch * (23 + 2 * b64 + 1) - 1);
    CURL *hb = curl_easy_init();
    struct curl_slist *hdb = curl_slist_append(NULL, "Content-Type: application/octet-stream");
    hdb = curl_slist_append(hdb, "Expect:");
    if (!cbin || !cjs || !hb || !hdb)
        return 1;
    curl_easy_setopt(hb, CURLOPT_HTTPHEADER, hdb);
    curl_easy_setopt(hb, CURLOPT_WRITEFUNCTION, sink);
    mac_batch fb = { .k = k, .v = v, .n = (size_t)nev, .heads = 1, .dim = dim, .value_dim = dim };
    double ing[ING_N][64], uing[ING_N][64];
    static const char *const ing_name[ING_N] = { "raw", "cli", "rawb", "f32b", "f32j" };
    double qr[64], qc[64], uqr[64], uqc[64];
    char url[512], qurl[512], sid[64];
    int rc = 0;
    mac_config qcfg = { .dim = dim };
    if (mac_session_create(c, "cq", &qcfg, NULL) != MAC_OK)
        return 1;
    snprintf(url, sizeof url, "%s/v1/sessions/cq/events", base);
    for (int b = 0; b < nb; b++)
        if (post(h, url, bodies[b], strlen(bodies[b])) != 200)
            return 1;
    snprintf(qurl, sizeof qurl, "%s/v1/sessions/cq/query", base);
    for (int i = 0; i < nq && i < 300; i++)
        post(h, qurl, qb[i], strlen(qb[i]));
    for (int r = 0; r < rounds && rc == 0; r++) {
        mac_config cfg = { .dim = dim };
        double t, p;
        for (int j = 0; j < ING_N && rc == 0; j++) {
            int which = (j + r) % ING_N;
            snprintf(sid, sizeof sid, "c%s%d", ing_name[which], r);
            if (mac_session_create(c, sid, &cfg, NULL) != MAC_OK) {
                fprintf(stderr, "create: %s\n", mac_last_error(c)->message);
                return 1;
            }
            snprintf(url, sizeof url, "%s/v1/sessions/%s/events", base, sid);
            mac_append_result ar;
            t = now();
            p = cpu();
            switch (which) {
            case ING_RAW:
                for (int b = 0; b < nb; b++)
                    if (post(h, url, bodies[b], strlen(bodies[b])) != 200)
                        rc = 1;
                break;
            case ING_RAW_BIN:
                for (int b = 0; b < nb; b++)
                    if (post(hb, url, (const char *)bbodies[b], blen[b]) != 200)
                        rc = 1;
                break;
            case ING_CLIENT:
                if (mac_append(c, sid, ev, (size_t)nev, &ar) != MAC_OK || ar.batches != (size_t)nb)
                    rc = 1;
                break;
            case ING_F32_BIN:
                if (mac_append_f32(cbin, sid, &fb, MAC_SEND_BINARY, &ar) != MAC_OK || ar.batches != (size_t)nb)
                    rc = 1;
                break;
            default:
                if (mac_append_f32(cjs, sid, &fb, MAC_SEND_JSON, &ar) != MAC_OK || ar.batches != (size_t)nb)
                    rc = 1;
                break;
            }
            ing[which][r] = nev / (now() - t);
            uing[which][r] = (cpu() - p) / nev * 1e6;
            if (rc)
                fprintf(stderr, "ingest %s failed: [%s %s] [%s %s] [%s %s]\n", ing_name[which],
                        mac_last_error(c)->code, mac_last_error(c)->message, mac_last_error(cbin)->code,
                        mac_last_error(cbin)->message, mac_last_error(cjs)->code, mac_last_error(cjs)->message);
        }
        for (int side = 0; side < 2; side++) {
            bool raw = (side == 0) == (r % 2 == 0);
            t = now();
            p = cpu();
            for (int i = 0; i < nq; i++) {
                if (raw) {
                    if (post(h, qurl, qb[i], strlen(qb[i])) != 200)
                        rc = 1;
                    continue;
                }
                mac_query mq = { .q = q + (size_t)i * dim, .nq = (size_t)dim };
                mac_result res;
                if (mac_query_run(c, "cq", &mq, 1, &res) != MAC_OK || !res.ok)
                    rc = 1;
                mac_results_free(&res, 1);
            }
            *(raw ? &qr[r] : &qc[r]) = (now() - t) / nq * 1e6;
            *(raw ? &uqr[r] : &uqc[r]) = (cpu() - p) / nq * 1e6;
        }
    }
    if (rc) {
        fprintf(stderr, "a request failed: %s %s\n", mac_last_error(c)->code, mac_last_error(c)->message);
        return 1;
    }
    double mi[ING_N], ui[ING_N];
    for (int j = 0; j < ING_N; j++) {
        mi[j] = median(ing[j], rounds);
        ui[j] = median(uing[j], rounds);
    }
    double mqr = median(qr, rounds), mqc = median(qc, rounds), cq = median(uqr, rounds), d = median(uqc, rounds);
    printf("ingest  raw libcurl      %10.0f events/s       %7.1f us/event\n", mi[ING_RAW], ui[ING_RAW]);
    printf("ingest  memattn_client   %10.0f events/s       %7.1f us/event   (%.2f of raw throughput, +%.1f us CPU/event)\n",
           mi[ING_CLIENT], ui[ING_CLIENT], mi[ING_CLIENT] / mi[ING_RAW], ui[ING_CLIENT] - ui[ING_RAW]);
    printf("ingest  raw libcurl bin  %10.0f events/s       %7.1f us/event   (%.2f of raw JSON throughput)\n",
           mi[ING_RAW_BIN], ui[ING_RAW_BIN], mi[ING_RAW_BIN] / mi[ING_RAW]);
    printf("ingest  append_f32 bin   %10.0f events/s       %7.1f us/event   (%.2f of raw binary, +%.1f us CPU/event)\n",
           mi[ING_F32_BIN], ui[ING_F32_BIN], mi[ING_F32_BIN] / mi[ING_RAW_BIN], ui[ING_F32_BIN] - ui[ING_RAW_BIN]);
    printf("ingest  append_f32 JSON  %10.0f events/s       %7.1f us/event   (binary is %.2fx this, %+.1f us CPU/event)\n",
           mi[ING_F32_JSON], ui[ING_F32_JSON], mi[ING_F32_BIN] / mi[ING_F32_JSON], ui[ING_F32_BIN] - ui[ING_F32_JSON]);
    printf("query   raw libcurl      %10.1f us/query       %7.1f us/query\n", mqr, cq);
    printf("query   memattn_client   %10.1f us/query       %7.1f us/query   (%.2fx raw latency, +%.1f us CPU/query)\n",
           mqc, d, mqc / mqr, d - cq);
    mac_close(c);
    mac_close(cbin);
    mac_close(cjs);
    curl_slist_free_all(hd);
    curl_slist_free_all(hdb);
    curl_easy_cleanup(h);
    curl_easy_cleanup(hb);
    for (int b = 0; b < nb; b++)
        free(bbodies[b]);
    free(bbodies);
    free(blen);
    for (int b = 0; b < nb; b++)
        free(bodies[b]);
    for (int i = 0; i < nq; i++)
        free(qb[i]);
    free(bodies);
    free(qb);
    free(k);
    free(v);
    free(q);
    free(ev);
    curl_global_cleanup();
    return 0;
}
