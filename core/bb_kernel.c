/*
 * core/bb_kernel.c — vector kernels of the backbones (see core/bb_kernel.h).
 *
 * bb_rank1_matvec walks the matrix in column tiles of up to 4 vectors (64 floats): inside a tile the
 * running sums of the matrix-vector product stay in registers while the rows stream through, so the
 * product costs no horizontal reductions and no extra memory traffic beyond the one read and write of the
 * update. The tile body is one always-inline function instantiated for each (tile width, update or not,
 * number of products) so that the compiler fully unrolls it.
 */
#include "core/bb_kernel.h"

#include <math.h>

#define TILE_MAX 4

static inline __attribute__((always_inline)) void tile(float *M, size_t ld, size_t rows, const float *a,
                                                       const float *y, const float *b1, float *o1,
                                                       const float *b2, float *o2, const int nv,
                                                       const int upd, const int nout)
{
    bb_v16 yv[TILE_MAX], acc1[TILE_MAX], acc2[TILE_MAX];
    for (int t = 0; t < nv; t++) {
        yv[t] = upd ? ((const bb_v16 *)y)[t] : (bb_v16){0};
        acc1[t] = (bb_v16){0};
        acc2[t] = (bb_v16){0};
    }
    for (size_t j = 0; j < rows; j++) {
        bb_v16 *row = (bb_v16 *)(M + j * ld);
        const float aj = upd ? a[j] : 0.0f;
        const float c1 = nout >= 1 ? b1[j] : 0.0f;
        const float c2 = nout >= 2 ? b2[j] : 0.0f;
        for (int t = 0; t < nv; t++) {
            bb_v16 r = row[t];
            if (upd) {
                r = r + aj * yv[t];
                row[t] = r;
            }
            if (nout >= 1)
                acc1[t] += c1 * r;
            if (nout >= 2)
                acc2[t] += c2 * r;
        }
    }
    for (int t = 0; t < nv; t++) {
        if (nout >= 1)
            ((bb_v16 *)o1)[t] = acc1[t];
        if (nout >= 2)
            ((bb_v16 *)o2)[t] = acc2[t];
    }
}

void bb_rank1_matvec(float *M, size_t ld, size_t rows, const float *a, const float *y, const float *b1,
                     float *o1, const float *b2, float *o2)
{
    const int upd = a != NULL;
    const int nout = b1 ? (b2 ? 2 : 1) : 0;
    if (!upd && !nout)
        return;
    for (size_t c0 = 0; c0 < ld; c0 += TILE_MAX * BB_LANES) {
        const size_t left = (ld - c0) / BB_LANES;
        const int nv = left < TILE_MAX ? (int)left : TILE_MAX;
        float *m = M + c0;
        const float *yy = upd ? y + c0 : NULL;
        float *p1 = nout >= 1 ? o1 + c0 : NULL, *p2 = nout >= 2 ? o2 + c0 : NULL;
        /* One specialised instance per combination; nout == 0 only happens with an update. */
#define TILE(NV, U, N)                                                        \
    if (nv == NV && upd == U && nout == N) {                                  \
        tile(m, ld, rows, a, yy, b1, p1, b2, p2, NV, U, N);                   \
        continue;                                                             \
    }
#define TILES(NV) TILE(NV, 1, 0) TILE(NV, 1, 1) TILE(NV, 1, 2) TILE(NV, 0, 1) TILE(NV, 0, 2)
        TILES(4) TILES(3) TILES(2) TILES(1)
#undef TILES
#undef TILE
    }
}

double bb_dot(const float *x, const float *y, size_t n)
{
    const bb_v16 *xv = (const bb_v16 *)x, *yv = (const bb_v16 *)y;
    bb_v16 acc0 = {0}, acc1 = {0};
    size_t i = 0, nv = n / BB_LANES;
    /* Two accumulators hide the add latency for d >= 32. */
    for (; i + 1 < nv; i += 2) {
        acc0 += xv[i] * yv[i];
        acc1 += xv[i + 1] * yv[i + 1];
    }
    if (i < nv)
        acc0 += xv[i] * yv[i];
    double s = 0.0;
    for (int l = 0; l < BB_LANES; l++)
        s += (double)acc0[l] + (double)acc1[l];
    return s;
}

double bb_norm(const float *x, size_t n)
{
    /* Squares of finite floats neither overflow nor underflow in double. */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)x[i] * x[i];
    return sqrt((s0 + s1) + (s2 + s3));
}
