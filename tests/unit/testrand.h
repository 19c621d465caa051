/*
 * tests/unit/testrand.h — the unit tests' shared, seedable random numbers (header-only).
 *
 * A 64-bit LCG (Knuth's MMIX constants) with Box–Muller normals: fixed seeds give the same streams on
 * every machine, so a test that fails can be rerun exactly. Each test file gets its own state
 * (`rng_state`, set it to seed a test). Not for anything but tests: the low bits of an LCG are weak
 * (only the top 53 bits are used).
 */
#ifndef MA_TESTRAND_H
#define MA_TESTRAND_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state;

/* Uniform in [0, 1). */
static inline double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* Uniform in [-1, 1). */
static inline float frand(void)
{
    return (float)(urand() * 2.0 - 1.0);
}

/* Standard normal. */
static inline float nrand(void)
{
    double u = urand(), v = urand();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

/* n standard normals in a malloc'd array (the test fails if it cannot be allocated; needs cmocka.h). */
static inline float *randv(size_t n)
{
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = nrand();
    return x;
}

#endif
