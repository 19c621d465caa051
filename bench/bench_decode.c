/*
 * bench/bench_decode.c — what decoding one event batch costs the daemon, per spelling (docs/RESULTS.md,
 * "HTTP ingest close to the core").
 *
 *   bench_decode [BATCH [ROUNDS]]   (default 1024 events, 200 rounds; H = 1, d = d_v = 64)
 *
 * One thread, the codec alone (no HTTP, no session): for the same random unit keys and values
 *   b64          codec_events_decode_simple of {"events":[{"k_b64","v_b64"}..]}: what the daemon does
 *                with such a body (straight from the raw text, no JSON tree)
 *   b64_tree     the general path on the same body: codec_parse_body (jsontext check + cJSON) +
 *                codec_events_decode (what the daemon did before)
 *   arrays       the general path with number arrays ({"k":[...],"v":[...]}, %.9g)
 *   binary       codec_events_decode_binary of the application/octet-stream batch (read in place)
 * and base64 alone: codec_b64_decode against the previous decoder (one table look-up and shift per
 * character, kept here as `previous`) over the same text. Prints the median microseconds per batch of
 * each and the ratios.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "server/codec.h"

#define DIM 64

static uint64_t rng = 11;
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

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The decoder before the table-per-position one (codec.c at eea9d36), for the ratio. */
static const unsigned char prev_dec[256] = {
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8, ['I'] = 9,
    ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] = 17,
    ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] = 25,
    ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33,
    ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41,
    ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49,
    ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57,
    ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64
};

static int previous(const char *src, size_t len, unsigned char *dst, size_t *out_len)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0, full = len < 4 ? 0 : len - 4;
    if (len % 4)
        return MA_EINVAL;
    for (size_t i = 0; i < full; i += 4) {
        uint32_t a = prev_dec[s[i]] - 1u, b = prev_dec[s[i + 1]] - 1u, c = prev_dec[s[i + 2]] - 1u,
                 d = prev_dec[s[i + 3]] - 1u;
        if ((a | b | c | d) > 63)
            return MA_EINVAL;
        uint32_t w = a << 18 | b << 12 | c << 6 | d;
        dst[o] = (unsigned char)(w >> 16);
        dst[o + 1] = (unsigned char)(w >> 8);
        dst[o + 2] = (unsigned char)w;
        o += 3;
    }
    const unsigned char *q = s + full;   /* the last quad (no padding in this bench's texts) */
    uint32_t w = (uint32_t)(prev_dec[q[0]] - 1u) << 18 | (uint32_t)(prev_dec[q[1]] - 1u) << 12 |
                 (uint32_t)(prev_dec[q[2]] - 1u) << 6 | (uint32_t)(prev_dec[q[3]] - 1u);
    dst[o++] = (unsigned char)(w >> 16);
    dst[o++] = (unsigned char)(w >> 8);
    dst[o++] = (unsigned char)w;
    *out_len = o;
    return 0;
}

int main(int argc, char **argv)
{
    const size_t n = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    const int rounds = argc > 2 ? atoi(argv[2]) : 200;
    if (n < 1 || rounds < 1) {
        fprintf(stderr, "usage: %s [BATCH [ROUNDS]]\n", argv[0]);
        return 2;
    }
    float *k = malloc(sizeof(float) * n * DIM), *v = malloc(sizeof(float) * n * DIM);
    size_t cap = n * (2 * 1400 + 64) + 64, bl = 0, al = 0;
    char *b64 = malloc(cap), *arr = malloc(cap), *bin = malloc(20 + sizeof(float) * 2 * n * DIM);
    char *kb = malloc(DIM * 6), *vb = malloc(DIM * 6);
    double *t = malloc(sizeof(double) * (size_t)rounds);
    if (!k || !v || !b64 || !arr || !bin || !kb || !vb || !t)
        return 1;
    for (size_t i = 0; i < n * DIM; i++) {
        k[i] = frand();
        v[i] = frand();
    }
    bl += (size_t)sprintf(b64, "{\"events\":[");
    al += (size_t)sprintf(arr, "{\"events\":[");
    for (size_t i = 0; i < n; i++) {
        codec_b64_encode((const unsigned char *)(k + i * DIM), sizeof(float) * DIM, kb);
        codec_b64_encode((const unsigned char *)(v + i * DIM), sizeof(float) * DIM, vb);
        bl += (size_t)sprintf(b64 + bl, "%s{\"k_b64\":\"%s\",\"v_b64\":\"%s\"}", i ? "," : "", kb, vb);
        al += (size_t)sprintf(arr + al, "%s{\"k\":[", i ? "," : "");
        for (int j = 0; j < DIM; j++)
            al += (size_t)sprintf(arr + al, "%s%.9g", j ? "," : "", (double)k[i * DIM + (size_t)j]);
        al += (size_t)sprintf(arr + al, "],\"v\":[");
        for (int j = 0; j < DIM; j++)
            al += (size_t)sprintf(arr + al, "%s%.9g", j ? "," : "", (double)v[i * DIM + (size_t)j]);
        al += (size_t)sprintf(arr + al, "]}");
    }
    bl += (size_t)sprintf(b64 + bl, "]}");
    al += (size_t)sprintf(arr + al, "]}");
    uint32_t hdr[4] = {(uint32_t)n, 1, DIM, DIM};
    memcpy(bin, "MAEV", 4);
    memcpy(bin + 4, hdr, sizeof hdr);   /* little-endian hosts */
    memcpy(bin + 20, k, sizeof(float) * n * DIM);
    memcpy(bin + 20 + sizeof(float) * n * DIM, v, sizeof(float) * n * DIM);
    const size_t binl = 20 + sizeof(float) * 2 * n * DIM;

    codec_shape sh = {1, DIM, DIM, NULL};
    const char *names[4] = {"b64", "b64_tree", "arrays", "binary"};
    const char *bodies[3] = {b64, b64, arr};
    const size_t lens[4] = {bl, bl, al, binl};
    double med[4];
    for (int w = 0; w < 4; w++) {
        for (int r = 0; r < rounds; r++) {
            codec_events e;
            codec_error err;
            cJSON *j = NULL;
            double t0 = now();
            int rc;
            if (w == 0) {
                rc = codec_events_decode_simple(b64, bl, &sh, 65536, &e) == 1 ? 0 : MA_EINVAL;
                snprintf(err.message, sizeof err.message, "not taken by the simple path");
            } else if (w < 3) {
                rc = codec_parse_body(bodies[w], lens[w], &j, &err);
                if (!rc)
                    rc = codec_events_decode(j, &sh, 65536, &e, &err);
            } else {
                rc = codec_events_decode_binary(bin, binl, &sh, 65536, &e, &err);
            }
            cJSON_Delete(j);
            t[r] = now() - t0;
            if (rc || e.n != n || memcmp(e.ev[n - 1].v, v + (n - 1) * DIM, sizeof(float) * DIM)) {
                fprintf(stderr, "%s: decode failed: %s\n", names[w], rc ? err.message : "wrong floats");
                return 1;
            }
            codec_events_clear(&e);
        }
        qsort(t, (size_t)rounds, sizeof *t, cmp);
        med[w] = t[rounds / 2];
        printf("decode %s batch=%zu body_bytes=%zu us_per_batch=%.1f\n", names[w], n, lens[w], med[w] * 1e6);
    }
    printf("decode ratios: b64_tree/b64 %.1f, b64/binary %.1f, b64_tree/binary %.1f, arrays/binary %.1f\n",
           med[1] / med[0], med[0] / med[3], med[1] / med[3], med[2] / med[3]);

    /* base64 alone: the whole batch's key texts, new decoder against the previous one, alternating */
    size_t tl = 0;
    char *text = malloc(n * DIM * 6 + 4);
    unsigned char *out = malloc(n * DIM * 5);
    for (size_t i = 0; i < n; i++)
        tl += codec_b64_encode((const unsigned char *)(k + i * DIM), sizeof(float) * DIM - 4, text + tl);
    double best[2] = {1e9, 1e9};
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < 2; w++) {
            size_t got = 0;
            double t0 = now();
            int rc = w ? previous(text, tl, out, &got) : codec_b64_decode(text, tl, out, &got);
            double dt = now() - t0;
            if (rc)
                return 1;
            if (dt < best[w])
                best[w] = dt;
        }
    printf("base64 %zu chars: codec_b64_decode %.1f us (%.2f GB/s), previous %.1f us (%.2f GB/s), previous/new %.2f\n",
           tl, best[0] * 1e6, (double)tl / best[0] * 1e-9, best[1] * 1e6, (double)tl / best[1] * 1e-9,
           best[1] / best[0]);
    free(text);
    free(out);
    free(k);
    free(v);
    free(b64);
    free(arr);
    free(bin);
    free(kb);
    free(vb);
    free(t);
    return 0;
}
