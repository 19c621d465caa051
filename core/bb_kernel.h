/*
 * core/bb_kernel.h — the small vector kernels the backbones (core/backbone.c) are made of. Internal.
 *
 * Design: every per-head matrix is stored row-major with its row length padded to a multiple of
 * BB_LANES floats and 64-byte aligned rows, the padding kept at zero, so that every loop runs over whole
 * 16-float vectors (GCC/Clang vector extensions: AVX-512 registers with -march=native, split into
 * AVX2/SSE registers elsewhere) and needs no remainder code. The one O(d^2) kernel, bb_rank1_matvec,
 * fuses the rank-1 update of a matrix with the product of the updated matrix and the NEXT event's
 * vector, so each event reads and writes each state matrix exactly once.
 *
 * Not here: anything that knows about heads, events or the VLA algorithm; BLAS calls (backbone.c).
 * Contracts: pointers to padded vectors/matrices must be 64-byte aligned and padded with zeros.
 */
#ifndef MA_BB_KERNEL_H
#define MA_BB_KERNEL_H

#include <stddef.h>

#define BB_LANES 16
#define BB_ALIGN 64

typedef float bb_v16 __attribute__((vector_size(64), aligned(64), may_alias));
typedef float bb_v8f __attribute__((vector_size(32), aligned(32), may_alias));
typedef double bb_v8d __attribute__((vector_size(64), aligned(64), may_alias));

/* An aligned float buffer seen as vectors. */
#define BB_V(p) ((bb_v16 *)(p))

/* n rounded up to a whole number of vectors. */
static inline size_t bb_pad(size_t n) { return (n + BB_LANES - 1) / BB_LANES * BB_LANES; }

/*
 * For each row j < rows of M (row stride ld, ld a multiple of BB_LANES):
 *     if a:  M[j][:] += a[j] * y[:]
 *     then   o1[:] = sum_j b1[j] * M[j][:]   (if b1)   and   o2[:] = sum_j b2[j] * M[j][:]   (if b2)
 * using the updated rows. y, o1, o2 have ld entries (aligned); a, b1, b2 have `rows` entries (any
 * alignment). With M symmetric, o1 = M b1. The update M += a yᵀ computes a[j]*y[k] as one product, so
 * with a = -h and y = h the update -h hᵀ keeps a symmetric M exactly symmetric.
 */
void bb_rank1_matvec(float *M, size_t ld, size_t rows, const float *a, const float *y, const float *b1,
                     float *o1, const float *b2, float *o2);

/* Euclidean norm of an aligned, zero-padded vector of n (a multiple of BB_LANES) floats: float lanes when
 * that is exact enough, else (entries so large or small that squares leave float's normal range) the
 * double-precision bb_norm. */
double bb_norm_padded(const float *x, size_t n);

/* x[0..n) *= f for an aligned vector of n (a multiple of BB_LANES) floats; f is taken in double when it
 * does not fit a float, so tiny nonzero vectors still normalise. */
void bb_scale(float *x, size_t n, double f);

/* dst[0..n) = src[0..n) (any alignment), dst[n..ld) = 0; dst aligned, ld a multiple of BB_LANES. */
void bb_load(float *dst, const float *src, size_t n, size_t ld);

/* z[0..n) += x[0..n) in double; z (doubles) and x (floats) aligned, n a multiple of BB_LANES. */
void bb_acc_double(double *z, const float *x, size_t n);

/* As bb_rank1_matvec with two rank-1 terms: M[j][:] += a[j]*y[:] + a2[j]*y2[:] (in that order, so a
 * symmetric M updated by -h hᵀ - h2 h2ᵀ stays exactly symmetric), then the products with b1 and b2 as
 * above. a2 == NULL gives bb_rank1_matvec. One pass over M serves two events. */
void bb_rank2_matvec(float *M, size_t ld, size_t rows, const float *a, const float *y, const float *a2,
                     const float *y2, const float *b1, float *o1, const float *b2, float *o2);

/* o[:] = sum_j b[j] * M[j][:] without touching M (bb_rank1_matvec with no update; safe to run in
 * parallel with other readers of M). */
void bb_matvec(const float *M, size_t ld, size_t rows, const float *b, float *o);

/* Sum of x[i]*y[i] over n (a multiple of BB_LANES, aligned); float lanes, summed in double at the end. */
double bb_dot(const float *x, const float *y, size_t n);

/* Euclidean norm of x[0..n) (any n, any alignment), exact in double for any finite input. */
double bb_norm(const float *x, size_t n);

#endif
