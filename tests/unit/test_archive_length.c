/*
 * tests/unit/test_archive_length.c — ma_archive_restore_meta with a length its source cannot back (the
 * session passes the backbone blob's step count, which a damaged blob can make huge): the source's error
 * comes back at once, without the chunk tables being sized by the length (before: an allocation of
 * gigabytes, found by tests/fuzz/fuzz_session). A length the source backs still restores.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/archive.h"
#include "core/error.h"

static uint32_t max_chunk_seen;

/* Holds chunks 0..9 of zeros and ones; anything later is not stored. */
static int src_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    const ma_params *p = ctx;
    if (chunk > max_chunk_seen)
        max_chunk_seen = chunk;
    if (chunk >= 10)
        return MA_ENOTFOUND;
    for (size_t i = 0; i < n * (size_t)(p->heads * p->dim); i++)
        k[i] = (float)(i % 7) - 3.0f;
    for (size_t i = 0; i < n * (size_t)(p->heads * p->value_dim); i++)
        v[i] = 1.0f;
    return 0;
}

static void test_length_beyond_the_source(void **state)
{
    (void)state;
    ma_params p;
    ma_params_default(&p);
    p.dim = 4;
    p.value_dim = 4;
    p.chunk = 4;
    p.selector = MA_SELECTOR_CHUNKS;
    ma_archive *a = NULL;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    float k[40 * 4], v[40 * 4];
    for (int i = 0; i < 40 * 4; i++)
        k[i] = (float)(i % 7) - 3.0f, v[i] = 1.0f;
    assert_int_equal(ma_archive_append(a, 40, k, v), 0);
    void *buf = NULL;
    size_t len = 0;
    assert_int_equal(ma_archive_serialize_meta(a, &buf, &len), 0);
    ma_archive_destroy(a);

    ma_chunk_source src = { .load = src_load, .ctx = &p };
    /* 2^34 events: 2^32 chunks is refused as too long; 2^33 events (2^31 chunks) asks the source first. */
    max_chunk_seen = 0;
    a = NULL;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, (uint64_t)1 << 33, src, 2, NULL}, &a), MA_ENOTFOUND);
    assert_null(a);
    assert_int_equal(max_chunk_seen, ((uint32_t)1 << 31) - 1);   /* the last chunk, and nothing streamed */
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, 41, src, 2, NULL}, &a), MA_ENOTFOUND);
    /* What the source holds restores. */
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){buf, len, 40, src, 2, NULL}, &a), 0);
    assert_int_equal(ma_archive_length(a), 40);
    ma_archive_destroy(a);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_length_beyond_the_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
