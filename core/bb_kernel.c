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

typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

/* Sum of the 16 lanes in double, as a tree (a sequential sum would be a 16-add latency chain). */
static inline double hsum(bb_v16 a)
{
    const bb_v8f *h = (const bb_v8f *)&a;
    bb_v8d t = __builtin_convertvector(h[0], bb_v8d) + __builtin_convertvector(h[1], bb_v8d);
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

/* The accumulators are named variables, not an array: GCC 12 keeps an array indexed in a loop in memory,
 * which turns each accumulation into a store-to-load round trip. Unused lanes (t >= nv) and the unused
 * branches are removed at compile time because nv, upd (0, 1 or 2 rank-1 terms) and nout are constants
 * in every instance. */
static inline __attribute__((always_inline)) void tile(float *M, size_t ld, size_t rows, const float *a,
                                                       const float *y, const float *a2, const float *y2,
                                                       const float *b1, float *o1, const float *b2,
                                                       float *o2, const int nv, const int upd,
                                                       const int nout)
{
    const bb_v16 zero = {0};
    const bb_v16 *yv = (const bb_v16 *)y, *zv = (const bb_v16 *)y2;
    const bb_v16 y0 = upd ? yv[0] : zero, y1 = upd && nv > 1 ? yv[1] : zero;
    const bb_v16 y2_ = upd && nv > 2 ? yv[2] : zero, y3 = upd && nv > 3 ? yv[3] : zero;
    const bb_v16 z0 = upd > 1 ? zv[0] : zero, z1 = upd > 1 && nv > 1 ? zv[1] : zero;
    const bb_v16 z2 = upd > 1 && nv > 2 ? zv[2] : zero, z3 = upd > 1 && nv > 3 ? zv[3] : zero;
    bb_v16 p0 = zero, p1 = zero, p2 = zero, p3 = zero;  /* sums for o1 */
    bb_v16 q0 = zero, q1 = zero, q2 = zero, q3 = zero;  /* sums for o2 */
    /* (A second set of sums for odd rows, to shorten the add chains, measured no faster.) */
#define LANE(T, Y, Z, P, Q)                                     \
    if (nv > T) {                                               \
        bb_v16 r = row[T];                                      \
        if (upd) {                                              \
            r = r + aj * Y;                                     \
            if (upd > 1)                                        \
                r = r + a2j * Z;                                \
            row[T] = r;                                         \
        }                                                       \
        if (nout >= 1)                                          \
            P += c1 * r;                                        \
        if (nout >= 2)                                          \
            Q += c2 * r;                                        \
    }
    for (size_t j = 0; j < rows; j++) {
        bb_v16 *row = (bb_v16 *)(M + j * ld);
        const float aj = upd ? a[j] : 0.0f, a2j = upd > 1 ? a2[j] : 0.0f;
        const float c1 = nout >= 1 ? b1[j] : 0.0f, c2 = nout >= 2 ? b2[j] : 0.0f;
        LANE(0, y0, z0, p0, q0)
        LANE(1, y1, z1, p1, q1)
        LANE(2, y2_, z2, p2, q2)
        LANE(3, y3, z3, p3, q3)
    }
#undef LANE
    bb_v16 *w1 = (bb_v16 *)o1, *w2 = (bb_v16 *)o2;
    if (nout >= 1) {
        w1[0] = p0;
        if (nv > 1) w1[1] = p1;
        if (nv > 2) w1[2] = p2;
        if (nv > 3) w1[3] = p3;
    }
    if (nout >= 2) {
        w2[0] = q0;
        if (nv > 1) w2[1] = q1;
        if (nv > 2) w2[2] = q2;
        if (nv > 3) w2[3] = q3;
    }
}

void bb_rank2_matvec(float *M, size_t ld, size_t rows, const float *a, const float *y, const float *a2,
                     const float *y2, const float *b1, float *o1, const float *b2, float *o2)
{
    const int upd = a ? (a2 ? 2 : 1) : 0;
    const int nout = b1 ? (b2 ? 2 : 1) : 0;
    if (!upd && !nout)
        return;
    for (size_t c0 = 0; c0 < ld; c0 += TILE_MAX * BB_LANES) {
        const size_t left = (ld - c0) / BB_LANES;
        const int nv = left < TILE_MAX ? (int)left : TILE_MAX;
        float *m = M + c0;
        const float *yy = upd ? y + c0 : NULL, *yy2 = upd > 1 ? y2 + c0 : NULL;
        float *p1 = nout >= 1 ? o1 + c0 : NULL, *p2 = nout >= 2 ? o2 + c0 : NULL;
        /* One specialised instance per combination (nout == 0 only happens with an update). */
#define TILE(NV, U, N)                                                        \
    if (nv == NV && upd == U && nout == N) {                                  \
        tile(m, ld, rows, a, yy, a2, yy2, b1, p1, b2, p2, NV, U, N);          \
        continue;                                                             \
    }
#define TILES(NV) TILE(NV, 1, 0) TILE(NV, 1, 1) TILE(NV, 1, 2) TILE(NV, 2, 0) TILE(NV, 2, 1) \
                  TILE(NV, 2, 2) TILE(NV, 0, 1) TILE(NV, 0, 2)
        TILES(4) TILES(3) TILES(2) TILES(1)
#undef TILES
#undef TILE
    }
}

void bb_rank1_matvec(float *M, size_t ld, size_t rows, const float *a, const float *y, const float *b1,
                     float *o1, const float *b2, float *o2)
{
    bb_rank2_matvec(M, ld, rows, a, y, NULL, NULL, b1, o1, b2, o2);
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
    return hsum(acc0) + hsum(acc1);
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

double bb_norm_padded(const float *x, size_t n)
{
    const bb_v16 *xv = (const bb_v16 *)x;
    bb_v16 acc0 = {0}, acc1 = {0};
    size_t i = 0, nv = n / BB_LANES;
    for (; i + 1 < nv; i += 2) {
        acc0 += xv[i] * xv[i];
        acc1 += xv[i + 1] * xv[i + 1];
    }
    if (i < nv)
        acc0 += xv[i] * xv[i];
    double s = hsum(acc0) + hsum(acc1);
    /* Below 1e-30 some squares may be subnormal or zero in float; above 1e30 near overflow. */
    if (s >= 1e-30 && s <= 1e30)
        return sqrt(s);
    return bb_norm(x, n);
}

void bb_scale(float *x, size_t n, double f)
{
    bb_v16 *xv = (bb_v16 *)x;
    if (fabs(f) < 1e37) {
        const float ff = (float)f;
        for (size_t i = 0; i < n / BB_LANES; i++)
            xv[i] *= ff;
    } else {
        for (size_t i = 0; i < n; i++)
            x[i] = (float)(x[i] * f);
    }
}

void bb_acc_double(double *z, const float *x, size_t n)
{
    bb_v8d *zv = (bb_v8d *)z;
    const bb_v8f *xv = (const bb_v8f *)x;
    for (size_t i = 0; i < n / 8; i++)
        zv[i] += __builtin_convertvector(xv[i], bb_v8d);
}

void bb_load(float *dst, const float *src, size_t n, size_t ld)
{
    size_t i = 0;
    for (; i + BB_LANES <= n; i += BB_LANES)
        BB_V(dst)[i / BB_LANES] = *(const v16u *)(src + i);
    for (; i < n; i++)
        dst[i] = src[i];
    for (; i < ld; i++)
        dst[i] = 0.0f;
}

void bb_matvec(const float *M, size_t ld, size_t rows, const float *b, float *o)
{
    /* With a == NULL the kernel only reads M. */
    bb_rank1_matvec((float *)M, ld, rows, NULL, NULL, b, o, NULL, NULL);
}
