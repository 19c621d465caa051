/*
 * tests/unit/test_footprint.c — ma_session_footprint against what the allocator counts.
 *
 * A session is driven to the state its fixed footprint describes (slot table at capacity with names of
 * MA_MAX_NAME characters, the last chunk at C-1 events in a chunk allocated for C, sealed chunks paged
 * out, one chunk read back into a cache of one) and the bytes the allocator holds for it are compared
 * with the footprint: never more (the footprint is an upper bound, so a budget that reserves it is not
 * exceeded; in a build without ASan, plus glibc's header of each allocation), and, for the chunks
 * selector, at most 5 % + 64 KiB less (the documented margin: per
 * allocation overhead of the allocator and the bounds' rounding, e.g. the bucket array). The index
 * selector's pending keys are counted at their bound (2·1024 keys), which a short session does not
 * reach, so for it only the upper bound is checked.
 *
 * What the allocator holds: ASan's count of live user bytes in the sanitizer build, glibc's mallinfo2
 * (in-use arena and mmapped bytes) otherwise. OpenBLAS and the allocator's own first-use allocations are
 * made by a warm-up session before the measurement.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/session.h"

#include "tests/unit/testrand.h"

#if defined(__SANITIZE_ADDRESS__)
size_t __sanitizer_get_current_allocated_bytes(void);
static size_t allocated(void) { return __sanitizer_get_current_allocated_bytes(); }
#define CHUNK_HEADER 0   /* ASan counts the bytes asked for */
#else
#define CHUNK_HEADER 16  /* glibc: a size word per allocation and 16-byte rounding */
static size_t allocated(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}
#endif

/* A chunk source over the test's own copy of the events. */
typedef struct {
    const float *k, *v;
    size_t kn, vn, C;
} mem_src;

static int mem_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    mem_src *m = ctx;
    memcpy(k, m->k + (size_t)chunk * m->C * m->kn, n * m->kn * sizeof(float));
    memcpy(v, m->v + (size_t)chunk * m->C * m->vn, n * m->vn * sizeof(float));
    return 0;
}

/* Drives a session of p to its footprint's state; returns the bytes the allocator holds for it (the
 * session alone: the events' copy is made before the first measurement). */
static size_t drive(const ma_params *p, bool measure, size_t *fp)
{
    const size_t kn = (size_t)p->heads * (size_t)p->dim, vn = (size_t)p->heads * (size_t)p->value_dim;
    const size_t C = (size_t)p->chunk, M = (size_t)p->slots;
    /* Enough events for M slot writes and to end in a chunk of C-1 events. */
    size_t n = (M / C + 2) * C - 1;
    float *k = malloc(n * kn * sizeof *k), *v = malloc(n * vn * sizeof *v);
    ma_event *ev = calloc(n, sizeof *ev);
    char (*names)[MA_MAX_NAME + 1] = calloc(M, sizeof *names);
    assert_non_null(k);
    assert_non_null(v);
    assert_non_null(ev);
    assert_non_null(names);
    rng_state = 7;
    for (size_t i = 0; i < n * kn; i++)
        k[i] = frand();
    for (size_t i = 0; i < n * vn; i++)
        v[i] = frand();
    for (size_t i = 0; i < n; i++) {
        ev[i].k = k + i * kn;
        ev[i].v = v + i * vn;
        if (i < M) {
            memset(names[i], 'a' + (int)(i % 26), MA_MAX_NAME);
            char tag[32];
            int tl = snprintf(tag, sizeof tag, "s%u_", (unsigned)i);
            memcpy(names[i], tag, (size_t)tl);   /* unique, and MA_MAX_NAME characters long */
            names[i][MA_MAX_NAME] = '\0';
            ev[i].slot = names[i];
        }
    }
    mem_src src = {k, v, kn, vn, C};

    size_t before = allocated();
    ma_session *s;
    assert_int_equal(ma_session_create(p, &s), 0);
    ma_archive *a = ma_session_archive(s);
    assert_int_equal(ma_archive_set_source(a, (ma_chunk_source){mem_load, &src}, 1), 0);
    ma_ingest_report rep;
    /* In batches of at most C events, as a client would send them (one batch: one chunk's growth). */
    for (size_t i = 0; i < n; i += C) {
        size_t m = n - i < C ? n - i : C;
        assert_int_equal(ma_session_ingest(s, m, ev + i, 1000, &rep), 0);
        ma_ingest_report_clear(&rep);
    }
    ma_archive_release(a);
    float *kk = malloc(kn * sizeof *kk);
    assert_int_equal(ma_archive_get(a, 0, kk, NULL), 0);   /* one chunk into the cache */
    free(kk);
    size_t held = allocated() - before;
    *fp = ma_session_footprint(p, 1, NULL);
    if (measure)
        print_message("footprint H=%d d=%d dv=%d M=%d C=%d %s %s: %zu bytes, allocator %zu (%.3f), "
                      "session's own count %zu\n", p->heads, p->dim, p->value_dim, p->slots, p->chunk,
                      ma_backbone_name(p->backbone), ma_selector_name(p->selector), *fp, held,
                      (double)held / (double)*fp, ma_session_bytes(s));
    ma_session_destroy(s);
    free(k);
    free(v);
    free(ev);
    free(names);
    return held;
}

static ma_params config(int H, int d, int dv, int M, int C, ma_backbone_kind bb, ma_selector sel)
{
    ma_params p;
    ma_params_default(&p);
    p.heads = H;
    p.dim = d;
    p.value_dim = dv;
    p.slots = M;
    p.chunk = C;
    p.backbone = bb;
    p.selector = sel;
    p.route_threshold = 2;   /* no cosine routing work */
    return p;
}

static void test_footprint_matches_allocations(void **state)
{
    (void)state;
    static const struct { int H, d, dv, M, C; ma_backbone_kind bb; } cases[] = {
        {1, 64, 64, 64, 64, MA_BACKBONE_VLA},
        {4, 128, 64, 32, 64, MA_BACKBONE_VLA},
        {8, 256, 256, 16, 32, MA_BACKBONE_VLA},
        {2, 100, 60, 40, 16, MA_BACKBONE_LINEAR},
        {3, 96, 96, 20, 64, MA_BACKBONE_DELTA},
        {4, 64, 64, 100, 64, MA_BACKBONE_NONE},
    };
    size_t fp;
    ma_params warm = config(8, 256, 256, 16, 32, MA_BACKBONE_VLA, MA_SELECTOR_CHUNKS);
    drive(&warm, false, &fp);   /* OpenBLAS buffers, allocator arenas */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ma_params p = config(cases[i].H, cases[i].d, cases[i].dv, cases[i].M, cases[i].C, cases[i].bb,
                             MA_SELECTOR_CHUNKS);
        size_t held = drive(&p, true, &fp);
        /* The footprint counts bytes asked for; glibc adds a header per allocation (about 4 per slot). */
        size_t overhead = CHUNK_HEADER * (4 * (size_t)p.slots + 64);
        if (held > fp + overhead)
            fail_msg("case %zu: the allocator holds %zu bytes, more than the footprint %zu", i, held, fp);
        if ((double)fp > (double)held * 1.05 + 65536)
            fail_msg("case %zu: footprint %zu is more than 5%% + 64 KiB above the allocator's %zu", i, fp, held);
    }
}

static void test_footprint_index_is_an_upper_bound(void **state)
{
    (void)state;
    size_t fp;
    ma_params warm = config(2, 64, 64, 8, 64, MA_BACKBONE_VLA, MA_SELECTOR_INDEX);
    drive(&warm, false, &fp);
    ma_params p = config(4, 128, 128, 32, 64, MA_BACKBONE_VLA, MA_SELECTOR_INDEX);
    size_t held = drive(&p, true, &fp);
    assert_true(held <= fp);
    /* The difference is the index's pending keys below their bound. */
    ma_params q = p;
    q.selector = MA_SELECTOR_CHUNKS;
    size_t fq = ma_session_footprint(&q, 1, NULL);
    assert_true(fp - fq >= 2 * 1024 * (size_t)p.heads * (size_t)p.dim * sizeof(float) - 3 * 16 * 512 * 4);
}

static void test_footprint_parts_and_figures(void **state)
{
    (void)state;
    /* The case: 64 heads of 1024 (VLA: S and A per head, 512 MiB) is far above 64 MiB. */
    ma_params p = config(64, 1024, 1024, 64, 64, MA_BACKBONE_VLA, MA_SELECTOR_INDEX);
    ma_footprint parts;
    size_t fp = ma_session_footprint(&p, 1, &parts);
    assert_true(parts.backbone >= (size_t)2 * 64 * 1024 * 1024 * 4);
    assert_true(parts.slots >= (size_t)64 * 64 * 1024 * 3 * 4);
    assert_true(fp >= parts.backbone + parts.slots + parts.archive);
    assert_true(fp > ((size_t)64 << 20));
    /* The default session is small. */
    ma_params_default(&p);
    fp = ma_session_footprint(&p, 1, &parts);
    assert_true(fp < ((size_t)1 << 20));
    assert_true(ma_session_footprint(&p, 4, NULL) > fp);   /* the cache counts */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_footprint_matches_allocations),
        cmocka_unit_test(test_footprint_index_is_an_upper_bound),
        cmocka_unit_test(test_footprint_parts_and_figures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
