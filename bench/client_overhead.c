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
 * query  raw:    prebuilt one-query bodies, one POST per query
 *        client: mac_query_run() with one mac_query (packing, JSON, parsing the answer)
 * Rounds alternate raw and client; medians are printed. Each ingest uses a fresh session; queries all
 * go to one session ingested and warmed up before the rounds, raw first in even rounds, client first
 * in odd ones (a freshly ingested session answers its first queries slower).
 */
#include <math.h>
#include <stdbool.h>
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
    double ir[64], ic[64], qr[64], qc[64], uir[64], uic[64], uqr[64], uqc[64];
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
        snprintf(sid, sizeof sid, "craw%d", r);
        if (mac_session_create(c, sid, &cfg, NULL) != MAC_OK) {
            fprintf(stderr, "create: %s\n", mac_last_error(c)->message);
            return 1;
        }
        snprintf(url, sizeof url, "%s/v1/sessions/%s/events", base, sid);
        double t = now(), p = cpu();
        for (int b = 0; b < nb; b++)
            if (post(h, url, bodies[b], strlen(bodies[b])) != 200)
                rc = 1;
        ir[r] = nev / (now() - t);
        uir[r] = (cpu() - p) / nev * 1e6;
        snprintf(sid, sizeof sid, "ccli%d", r);
        mac_session_create(c, sid, &cfg, NULL);
        mac_append_result ar;
        t = now();
        p = cpu();
        if (mac_append(c, sid, ev, (size_t)nev, &ar) != MAC_OK || ar.batches != (size_t)nb)
            rc = 1;
        ic[r] = nev / (now() - t);
        uic[r] = (cpu() - p) / nev * 1e6;
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
    double mir = median(ir, rounds), mic = median(ic, rounds), mqr = median(qr, rounds), mqc = median(qc, rounds);
    double a = median(uir, rounds), b = median(uic, rounds), cq = median(uqr, rounds), d = median(uqc, rounds);
    printf("ingest  raw libcurl      %10.0f events/s       %7.1f us/event\n", mir, a);
    printf("ingest  memattn_client   %10.0f events/s       %7.1f us/event   (%.2f of raw throughput, +%.1f us CPU/event)\n",
           mic, b, mic / mir, b - a);
    printf("query   raw libcurl      %10.1f us/query       %7.1f us/query\n", mqr, cq);
    printf("query   memattn_client   %10.1f us/query       %7.1f us/query   (%.2fx raw latency, +%.1f us CPU/query)\n",
           mqc, d, mqc / mqr, d - cq);
    mac_close(c);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
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
