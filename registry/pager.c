/* registry/pager.c — store-backed chunk and payload sources for core (see registry/pager.h). */
#include "registry/pager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

void reg_pager_init(reg_pager *pg, ma_store *st, const char *id, const ma_params *p,
                    atomic_uint_fast64_t *chunk_loads)
{
    pg->store = st;
    snprintf(pg->id, sizeof pg->id, "%s", id);
    pg->chunk = (size_t)p->chunk;
    pg->k_floats = (size_t)p->heads * (size_t)p->dim;
    pg->v_floats = (size_t)p->heads * (size_t)p->value_dim;
    pg->chunk_loads = chunk_loads;
    atomic_init(&pg->failed, 0);
    pg->err[0] = '\0';
}

/* Keeps the first failure's message. */
static int failure(reg_pager *pg, int rc, const char *msg)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&pg->failed, &expected, 1))
        snprintf(pg->err, sizeof pg->err, "%s", msg);
    return rc;
}

static int load_chunk(void *ctx, uint32_t chunk, float *k, float *v, size_t n)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    if (pg->chunk_loads)
        atomic_fetch_add_explicit(pg->chunk_loads, 1, memory_order_relaxed);
    int rc = ma_store_load_events(pg->store, pg->id, (uint64_t)chunk * pg->chunk, n, pg->k_floats, pg->v_floats,
                                  k, v, NULL, err, sizeof err);
    return rc ? failure(pg, rc, err) : 0;
}

static int load_payload(void *ctx, uint64_t event, char **payload)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    int rc = ma_store_load_payload(pg->store, pg->id, event, payload, err, sizeof err);
    return rc ? failure(pg, rc, err) : 0;
}

ma_chunk_source reg_pager_chunks(reg_pager *pg)
{
    return (ma_chunk_source){load_chunk, pg};
}

ma_payload_source reg_pager_payloads(reg_pager *pg)
{
    return (ma_payload_source){load_payload, pg};
}

static int scan_rows(void *ctx, uint32_t build, uint64_t first, uint64_t n, int with_codes, ma_ivf_row_fn each,
                     void *arg)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    int rc = ma_store_index_scan(pg->store, pg->id, build, first, n, with_codes != 0, each, arg, err, sizeof err);
    return rc < 0 && err[0] ? failure(pg, rc, err) : rc;
}

ma_ivf_rows reg_pager_rows(reg_pager *pg)
{
    return (ma_ivf_rows){scan_rows, pg};
}

int reg_pager_keys(void *ctx, uint64_t first, size_t n, float *k)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    float *v = malloc((n ? n : 1) * pg->v_floats * sizeof(float));
    if (!v)
        return MA_ENOMEM;
    int rc = ma_store_load_events(pg->store, pg->id, first, n, pg->k_floats, pg->v_floats, k, v, NULL, err,
                                  sizeof err);
    free(v);
    return rc ? failure(pg, rc, err) : 0;
}
