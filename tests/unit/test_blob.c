/* Unit tests for core/blob.{c,h}: the one persisted-state format, and the legacy formats each module
 * still reads (rebuilt here from the current blobs as docs/STORE.md describes them). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/archive.h"
#include "core/backbone.h"
#include "core/blob.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/ivf.h"
#include "core/slots.h"

#include "tests/unit/testrand.h"

/* ---- the format -------------------------------------------------------------------------------- */

static const float F32S[3] = {1.5f, -0.0f, 3.25e-7f};

static void write_sample(void **buf, size_t *len, uint32_t version_b)
{
    ma_blob_writer w;
    ma_blob_begin(&w, MA_BLOB_TAG("TEST"));
    ma_blob_section_begin(&w, MA_BLOB_TAG("SECA"), 1);
    ma_blob_put_u8(&w, 0xab);
    ma_blob_put_u32(&w, 0x01020304u);
    ma_blob_put_u64(&w, 0x0102030405060708ull);
    ma_blob_put_f64(&w, -2.0);
    ma_blob_put_f32s(&w, F32S, 3);
    ma_blob_put_bytes(&w, "hi", 2);
    ma_blob_section_end(&w);
    ma_blob_section_begin(&w, MA_BLOB_TAG("SECB"), version_b);
    ma_blob_section_end(&w);
    assert_int_equal(ma_blob_finish(&w, buf, len), 0);
}

/* Reads the sample back; 0 only if every check passes. */
static int read_sample(const void *buf, size_t len)
{
    ma_blob_reader r, a, b;
    if (ma_blob_open(&r, buf, len, MA_BLOB_TAG("TEST")) || ma_blob_section(&r, MA_BLOB_TAG("SECA"), 1, &a))
        return MA_ECORRUPT;
    float f[3];
    int ok = ma_blob_get_u8(&a) == 0xab && ma_blob_get_u32(&a) == 0x01020304u &&
             ma_blob_get_u64(&a) == 0x0102030405060708ull && ma_blob_get_f64(&a) == -2.0 &&
             ma_blob_get_f32s(&a, f, 3) && memcmp(f, F32S, sizeof f) == 0;
    const void *s = ma_blob_take(&a, 2);
    if (!ok || !s || memcmp(s, "hi", 2) != 0 || ma_blob_done(&a))
        return MA_ECORRUPT;
    if (ma_blob_section(&r, MA_BLOB_TAG("SECB"), 1, &b) || ma_blob_done(&b))
        return MA_ECORRUPT;
    return ma_blob_done(&r);
}

/* The sample's exact bytes: every integer and float little-endian, whatever the host. */
static const unsigned char GOLDEN[] = {
    'M', 'A', 'B', 'L', 1, 0, 0, 0, 'T', 'E', 'S', 'T',
    'S', 'E', 'C', 'A', 1, 0, 0, 0, 35, 0, 0, 0, 0, 0, 0, 0,
    0xab,
    0x04, 0x03, 0x02, 0x01,
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    0, 0, 0, 0, 0, 0, 0x00, 0xc0,                  /* -2.0 */
    0x00, 0x00, 0xc0, 0x3f,                        /* 1.5f */
    0x00, 0x00, 0x00, 0x80,                        /* -0.0f */
    0x00, 0x00, 0x00, 0x00,                        /* 3.25e-7f, patched below from its bits */
    'h', 'i',
    'S', 'E', 'C', 'B', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static void golden(unsigned char *out, size_t *len)
{
    memcpy(out, GOLDEN, sizeof GOLDEN);
    uint32_t u;
    memcpy(&u, &F32S[2], 4);
    for (int i = 0; i < 4; i++)
        out[12 + 16 + 1 + 4 + 8 + 8 + 8 + i] = (unsigned char)(u >> (8 * i));
    uint64_t sum = ma_blob_checksum(out, sizeof GOLDEN);
    for (int i = 0; i < 8; i++)
        out[sizeof GOLDEN + i] = (unsigned char)(sum >> (8 * i));
    *len = sizeof GOLDEN + 8;
}

static void test_roundtrip_and_golden(void **state)
{
    (void)state;
    void *buf;
    size_t len;
    write_sample(&buf, &len, 1);
    assert_int_equal(read_sample(buf, len), 0);
    unsigned char g[sizeof GOLDEN + 8];
    size_t gl;
    golden(g, &gl);
    assert_int_equal(len, gl);
    assert_memory_equal(buf, g, gl);   /* the writer writes little-endian on this host ... */
    assert_int_equal(read_sample(g, gl), 0);   /* ... and the fixed bytes read back on any host */
    free(buf);

    /* The same value in big-endian bytes is another value: the format is fixed, not the host's. */
    unsigned char be[4] = {0x01, 0x02, 0x03, 0x04};
    ma_blob_reader r;
    ma_blob_reader_raw(&r, be, 4);
    assert_true(ma_blob_get_u32(&r) == 0x04030201u);
    assert_int_equal(ma_blob_done(&r), 0);
    /* The checksum is pinned too (word-wise FNV-1a, docs/STORE.md). */
    assert_true(ma_blob_checksum("abcdefghijk", 11) == 0xe04c01b62c75b12cULL);
    assert_true(ma_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cULL);
}

static void test_truncation_and_bit_flips(void **state)
{
    (void)state;
    void *buf;
    size_t len;
    write_sample(&buf, &len, 1);
    for (size_t n = 0; n < len; n++)
        assert_int_equal(read_sample(buf, n), MA_ECORRUPT);
    unsigned char *c = malloc(len + 1);
    assert_non_null(c);
    for (size_t i = 0; i < len; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(c, buf, len);
            c[i] ^= (unsigned char)(1u << bit);
            assert_int_equal(read_sample(c, len), MA_ECORRUPT);
        }
    memcpy(c, buf, len);
    c[len] = 0;
    assert_int_equal(read_sample(c, len + 1), MA_ECORRUPT);   /* trailing byte */
    free(c);
    free(buf);
}

/* Rewrites the checksum after a deliberate change, so the structural checks themselves are tested. */
static void reseal(unsigned char *p, size_t len)
{
    uint64_t sum = ma_blob_checksum(p, len - 8);
    for (int i = 0; i < 8; i++)
        p[len - 8 + i] = (unsigned char)(sum >> (8 * i));
}

static void test_versions_and_kinds(void **state)
{
    (void)state;
    void *buf;
    size_t len;
    write_sample(&buf, &len, 2);   /* section SECB version 2: this reader knows version 1 only */
    assert_int_equal(read_sample(buf, len), MA_ECORRUPT);
    free(buf);

    write_sample(&buf, &len, 1);
    unsigned char *p = buf;
    ma_blob_reader r;
    assert_int_equal(ma_blob_open(&r, buf, len, MA_BLOB_TAG("SLOT")), MA_ECORRUPT);   /* other kind */
    p[4] = 2;                                                                          /* blob format 2 */
    reseal(p, len);
    assert_int_equal(read_sample(buf, len), MA_ECORRUPT);
    p[4] = 1;
    p[16] = 7;                                                                         /* SECA version 7 */
    reseal(p, len);
    assert_int_equal(read_sample(buf, len), MA_ECORRUPT);
    p[16] = 1;
    p[20] = 200;                                                                       /* SECA too long */
    reseal(p, len);
    assert_int_equal(read_sample(buf, len), MA_ECORRUPT);
    p[20] = 35;
    reseal(p, len);
    assert_int_equal(read_sample(buf, len), 0);
    free(buf);

    /* A reader past its end yields zeros and stays bad. */
    ma_blob_reader_raw(&r, "ab", 2);
    assert_int_equal(ma_blob_get_u32(&r), 0);
    assert_int_equal(ma_blob_get_u8(&r), 0);
    assert_int_equal(ma_blob_done(&r), MA_ECORRUPT);
    assert_int_equal(ma_blob_open(&r, NULL, 0, 0), MA_ECORRUPT);
}

/* ---- the legacy formats still load --------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n;
} bytes;

static void add(bytes *b, const void *src, size_t n)
{
    b->p = realloc(b->p, b->n + n + 8);
    assert_non_null(b->p);
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void add_le(bytes *b, uint64_t x, int n)
{
    unsigned char t[8];
    for (int i = 0; i < n; i++)
        t[i] = (unsigned char)(x >> (8 * i));
    add(b, t, (size_t)n);
}

/* The body of the section whose header starts at off of blob p (and the offset after it). */
static const unsigned char *section_body(const unsigned char *p, size_t off, size_t *n)
{
    uint64_t len = 0;
    for (int i = 0; i < 8; i++)
        len |= (uint64_t)p[off + 8 + i] << (8 * i);
    *n = (size_t)len;
    return p + off + 16;
}

/* Legacy IVF: "MAIVFV2\0", u32 2, the CENT body, FNV-1a 64. */
static bytes legacy_ivf(const unsigned char *blob)
{
    bytes b = {0};
    size_t n;
    const unsigned char *body = section_body(blob, 12, &n);
    add(&b, "MAIVFV2\0", 8);
    add_le(&b, 2, 4);
    add(&b, body, n);
    add_le(&b, ma_fnv1a64(b.p, b.n), 8);
    return b;
}

static void test_legacy_backbone_and_slots(void **state)
{
    (void)state;
    rng_state = 7;
    ma_params p;
    ma_params_default(&p);
    p.heads = 2;
    p.dim = 8;
    p.value_dim = 4;
    ma_backbone *bb;
    assert_int_equal(ma_backbone_create(&p, &bb), 0);
    float *k = randv(10 * 16), *v = randv(10 * 8);
    assert_int_equal(ma_backbone_update(bb, 10, k, v), 0);
    void *nb;
    size_t nl;
    assert_int_equal(ma_backbone_serialize(bb, &nb, &nl), 0);
    /* Legacy backbone v1: u32 "MABB", u32 1, the HEAD body, u64 payload bytes, the STAT body, FNV-1a. */
    size_t hn, sn;
    const unsigned char *hd = section_body(nb, 12, &hn);
    const unsigned char *st = section_body(nb, 12 + 16 + hn, &sn);
    assert_int_equal(hn, 64);
    bytes lb = {0};
    add(&lb, "MABB", 4);
    add_le(&lb, 1, 4);
    add(&lb, hd, hn);
    add_le(&lb, sn, 8);
    add(&lb, st, sn);
    add_le(&lb, ma_fnv1a64(lb.p, lb.n), 8);
    ma_backbone *rb;
    assert_int_equal(ma_backbone_restore(&p, lb.p, lb.n, &rb), 0);
    void *again;
    size_t al;
    assert_int_equal(ma_backbone_serialize(rb, &again, &al), 0);   /* written in the new format only */
    assert_int_equal(al, nl);
    assert_memory_equal(again, nb, nl);
    lb.p[lb.n / 2] ^= 1;
    ma_backbone *x = NULL;
    assert_int_equal(ma_backbone_restore(&p, lb.p, lb.n, &x), MA_ECORRUPT);
    free(again);
    free(lb.p);
    free(nb);
    ma_backbone_destroy(rb);
    ma_backbone_destroy(bb);

    /* Legacy slot table 1: "MASLOTS1", u32 1, the TABL body, ma_blob_checksum. */
    ma_slots *s;
    assert_int_equal(ma_slots_create(2, 8, 4, 3, &s), 0);
    ma_slot_write w = {"alpha", k, v, "\"x\"", 3, false};
    assert_int_equal(ma_slots_put(s, &w, false, 0, 0, 1, NULL), 0);
    w = (ma_slot_write){"beta", k + 16, v + 8, NULL, -1, true};
    assert_int_equal(ma_slots_put(s, &w, false, 0, 0, 2, NULL), 0);
    assert_int_equal(ma_slots_serialize(s, &nb, &nl), 0);
    size_t tn;
    const unsigned char *tb = section_body(nb, 12, &tn);
    bytes ls = {0};
    add(&ls, "MASLOTS1", 8);
    add_le(&ls, 1, 4);
    add(&ls, tb, tn);
    add_le(&ls, ma_blob_checksum(ls.p, ls.n), 8);
    ma_slots *rs;
    assert_int_equal(ma_slots_restore_table(&(ma_slots_shape){2, 8, 4, 3}, ls.p, ls.n, &rs), 0);
    assert_int_equal(ma_slots_serialize(rs, &again, &al), 0);
    assert_int_equal(al, nl);
    assert_memory_equal(again, nb, nl);
    ma_slots *y = NULL;
    assert_int_equal(ma_slots_restore_table(&(ma_slots_shape){2, 8, 4, 3}, ls.p, ls.n - 1, &y), MA_ECORRUPT);
    free(again);
    free(ls.p);
    free(nb);
    ma_slots_destroy(rs);
    ma_slots_destroy(s);
    free(k);
    free(v);
}

typedef struct {
    const float *k, *v;
    size_t kf, vf, C;
} mem_src;

static int mem_load(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    const mem_src *m = ctx;
    memcpy(k, m->k + (size_t)chunk * m->C * m->kf, n * m->kf * sizeof *k);
    memcpy(v, m->v + (size_t)chunk * m->C * m->vf, n * m->vf * sizeof *v);
    return 0;
}

static void test_legacy_archive_and_ivf(void **state)
{
    (void)state;
    ma_ivf_set_legacy_shared(1);   /* the legacy formats are of the shared layout of two heads */
    rng_state = 11;
    ma_params p;
    ma_params_default(&p);
    p.heads = 2;
    p.dim = 8;
    p.value_dim = 4;
    p.chunk = 64;
    p.selector = MA_SELECTOR_INDEX;
    const size_t T = 1500;
    float *k = randv(T * 16), *v = randv(T * 8);
    ma_archive *a;
    assert_int_equal(ma_archive_create(&p, &a), 0);
    assert_int_equal(ma_archive_append(a, T, k, v), 0);
    assert_true(ma_archive_meta_generation(a) > 0);   /* an index was built: its blob is nested */
    void *nb;
    size_t nl;
    assert_int_equal(ma_archive_serialize_meta(a, &nb, &nl), 0);

    /* Legacy archive meta 2: "MAARCHV\0", u32 2, u32 0x01020304, the SHAP body, u64 index length, the
     * legacy index blob, FNV-1a 64. */
    size_t shn, ixn;
    const unsigned char *sh = section_body(nb, 12, &shn);
    const unsigned char *ix = section_body(nb, 12 + 16 + shn, &ixn);
    bytes li = legacy_ivf(ix);
    bytes la = {0};
    add(&la, "MAARCHV\0", 8);
    add_le(&la, 2, 4);
    add_le(&la, 0x01020304u, 4);
    add(&la, sh, shn);
    add_le(&la, li.n, 8);
    add(&la, li.p, li.n);
    add_le(&la, ma_fnv1a64(la.p, la.n), 8);

    mem_src ms = {k, v, 16, 8, 64};
    ma_archive *b;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){la.p, la.n, T, {mem_load, &ms}, 4, NULL}, &b), 0);
    void *again;
    size_t al;
    assert_int_equal(ma_archive_serialize_meta(b, &again, &al), 0);
    assert_int_equal(al, nl);
    assert_memory_equal(again, nb, nl);
    free(again);
    ma_archive_destroy(b);

    /* The legacy index blob alone. */
    ma_ivf *x;
    assert_int_equal(ma_ivf_restore(2, 8, li.p, li.n, &x), 0);
    assert_int_equal(ma_ivf_serialize(x, &again, &al), 0);
    assert_int_equal(al, ixn);
    assert_memory_equal(again, ix, ixn);
    free(again);
    ma_ivf_destroy(x);
    li.p[li.n - 1] ^= 1;
    x = NULL;
    assert_int_equal(ma_ivf_restore(2, 8, li.p, li.n, &x), MA_ECORRUPT);
    la.p[20] ^= 1;
    b = NULL;
    assert_int_equal(ma_archive_restore_meta(&p, &(ma_archive_saved){la.p, la.n, T, {mem_load, &ms}, 4, NULL}, &b),
                     MA_ECORRUPT);
    free(li.p);
    free(la.p);
    free(nb);
    ma_archive_destroy(a);
    free(k);
    free(v);
    ma_ivf_set_legacy_shared(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_and_golden),
        cmocka_unit_test(test_truncation_and_bit_flips),
        cmocka_unit_test(test_versions_and_kinds),
        cmocka_unit_test(test_legacy_backbone_and_slots),
        cmocka_unit_test(test_legacy_archive_and_ivf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
