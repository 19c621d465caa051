/*
 * tests/fuzz/fuzz_ivf_rows.c — libFuzzer: ma_ivf_restore_lists on damaged index rows (table index_blocks:
 * what a restart reads instead of re-encoding every key; docs/STORE.md "Index rows"). The store keeps the
 * rows opaque and checks nothing in them, so core must refuse any damage (MA_ECORRUPT) and never read
 * out of bounds, whatever the bytes.
 *
 * Once per config (fz_params), a real index of N = 3 blocks + 300 events is made as the registry makes
 * one (keys added, the build trained and adopted, the rows kept); its blob and rows are the reference.
 * Input (little-endian): byte 0 = config (bits 0-1) | a row missing (bit 2: row byte1 % rows) | the
 * lists of every row one byte short (bit 3) | the codes one byte short (bit 4); byte 1 as said; then
 * edits of 5 bytes each — u32 offset into the rows' bytes (lists of every row, then codes of every row;
 * taken modulo their size) and a byte xor'ed there. The damaged rows are served by a scan callback; a
 * restore that succeeds is searched, grown and serialised.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/ivf.h"
#include "tests/fuzz/fuzz_common.h"

enum { N = 3 * MA_IVF_BLOCK + 300, ROWS = N / MA_IVF_BLOCK };

typedef struct {
    int ready;
    ma_params p;
    void *blob;
    size_t blob_len;
    uint32_t build;
    size_t lb, cb;                 /* bytes of one row's lists and codes */
    unsigned char *lists, *codes;  /* ROWS rows each, back to back */
} reference;

static reference refs[FZ_VARIANTS];

/* Copies the index's kept rows into r (rows of r->build only; later rows of a block replace earlier). */
static void drain(ma_ivf *x, reference *r)
{
    uint32_t build;
    uint64_t first;
    const void *l, *c;
    size_t n = ma_ivf_rows_pending(x, &build, &first, &l, &c);
    for (size_t i = 0; i < n; i++)
        if (build == r->build && first + i < ROWS) {
            memcpy(r->lists + (first + i) * r->lb, (const unsigned char *)l + i * r->lb, r->lb);
            memcpy(r->codes + (first + i) * r->cb, (const unsigned char *)c + i * r->cb, r->cb);
        }
    ma_ivf_rows_done(x);
}

/* The reference of config v: 0, or -1 if it could not be made (then the input is skipped). */
static int make_reference(unsigned v, reference *r)
{
    fz_params(v, &r->p);
    const size_t D = (size_t)(r->p.heads * r->p.dim);
    float *k = malloc(N * D * sizeof(float));
    ma_ivf *x = NULL;
    int rc = k && ma_ivf_create(r->p.heads, r->p.dim, &x) == 0 ? 0 : -1;
    if (!rc)
        rc = fz_key_load(&r->p, 0, N, k);
    if (!rc) {
        ma_ivf_keep_rows(x, 1);
        rc = ma_ivf_add(x, N, k);
    }
    uint64_t point;
    uint32_t bno;
    ma_ivf_build *b = NULL;
    if (!rc && ma_ivf_build_due(x, &point, &bno) && (rc = ma_ivf_train(r->p.heads, r->p.dim, point, bno, fz_key_load,
                                                                       &r->p, NULL, &b)) == 0) {
        ma_ivf_rows_done(x);   /* rows of build 0 (none listed yet) */
        rc = ma_ivf_adopt(x, b, NULL, fz_key_load, &r->p, 0);
    }
    ma_ivf_build_free(b);
    if (!rc) {
        r->build = ma_ivf_builds(x);
        r->lb = ma_ivf_row_lists_bytes(x);
        r->cb = ma_ivf_row_codes_bytes(r->p.heads, r->p.dim);
        r->lists = calloc(ROWS, r->lb);
        r->codes = calloc(ROWS, r->cb);
        rc = r->lists && r->codes && r->build > 0 ? 0 : -1;
    }
    if (!rc) {
        drain(x, r);
        rc = ma_ivf_serialize(x, &r->blob, &r->blob_len) ? -1 : 0;
    }
    ma_ivf_destroy(x);
    free(k);
    r->ready = rc ? -1 : 1;
    return rc;
}

typedef struct {
    const reference *r;
    const unsigned char *lists, *codes;
    int64_t missing;
    size_t lb, cb;
} damaged;

static int scan(void *ctx, uint32_t build, uint64_t first, uint64_t n, int with_codes, ma_ivf_row_fn each, void *arg)
{
    const damaged *d = ctx;
    if (build != d->r->build)
        return 0;
    for (uint64_t b = first; b < first + n && b < ROWS; b++) {
        if ((int64_t)b == d->missing)
            continue;
        int rc = each(arg, b, d->lists + b * d->r->lb, d->lb, with_codes ? d->codes + b * d->r->cb : NULL,
                      with_codes ? d->cb : 0);
        if (rc)
            return rc;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    reference *r = &refs[data[0] % FZ_VARIANTS];
    if (!r->ready)
        make_reference(data[0] % FZ_VARIANTS, r);
    if (r->ready < 0)
        return 0;
    size_t total = ROWS * (r->lb + r->cb);
    unsigned char *bytes = malloc(total);
    if (!bytes)
        return 0;
    memcpy(bytes, r->lists, ROWS * r->lb);
    memcpy(bytes + ROWS * r->lb, r->codes, ROWS * r->cb);
    for (const uint8_t *p = data + 2; p + 5 <= data + size; p += 5)
        bytes[(p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24) % total] ^= p[4];
    damaged d = {r, bytes, bytes + ROWS * r->lb, (data[0] & 4) ? (int64_t)(data[1] % ROWS) : -1,
                 r->lb - ((data[0] & 8) ? 1 : 0), r->cb - ((data[0] & 16) ? 1 : 0)};
    ma_ivf *x = NULL;
    if (ma_ivf_restore(r->p.heads, r->p.dim, r->blob, r->blob_len, &x) == 0) {
        ma_ivf_rows rows = {scan, &d};
        if (ma_ivf_restore_lists(x, N, &rows, fz_key_load, &r->p) == 0) {
            const size_t D = (size_t)(r->p.heads * r->p.dim);
            float q[64], v[64], more[8 * 64];
            fz_event(&r->p, (uint64_t)data[1], q, v);
            uint64_t *ids = malloc(ma_ivf_ids_cap(x, 16) * sizeof *ids);
            if (ids) {
                uint64_t scored = 0;
                size_t nid = 0;
                ma_ivf_search(x, q, 4, 16, ids, &nid, &scored);
                for (size_t i = 0; i < nid; i++)
                    if (ids[i] >= N)
                        abort();   /* a damaged row made an id beyond the events: must have been refused */
            }
            free(ids);
            for (int i = 0; i < 8; i++)
                fz_event(&r->p, (uint64_t)(N + i), more + (size_t)i * D, v);
            ma_ivf_add(x, 8, more);
            void *o = NULL;
            size_t ol = 0;
            if (ma_ivf_serialize(x, &o, &ol) == 0)
                free(o);
        }
        ma_ivf_destroy(x);
    }
    free(bytes);
    return 0;
}
