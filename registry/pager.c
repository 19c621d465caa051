/* registry/pager.c — store-backed chunk, event, payload and slot version sources for core, and the slot
 * table converter of the store's schema 2 -> 3 upgrade (see registry/pager.h). */
#include "registry/pager.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "registry/params_text.h"

void reg_pager_init(reg_pager *pg, ma_store *st, const char *id, const ma_params *p,
                    atomic_uint_fast64_t *chunk_loads)
{
    pg->store = st;
    snprintf(pg->id, sizeof pg->id, "%s", id);
    pg->chunk = (size_t)p->chunk;
    pg->k_floats = (size_t)p->heads * (size_t)p->dim;
    pg->v_floats = (size_t)p->heads * (size_t)p->value_dim;
    pg->chunk_loads = chunk_loads;
    pg->event_loads = NULL;
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
    char err[512] = "";
    if (pg->chunk_loads)
        atomic_fetch_add_explicit(pg->chunk_loads, 1, memory_order_relaxed);
    ma_store_events to = {pg->k_floats, pg->v_floats, k, v, NULL};
    int rc = ma_store_load_events(pg->store, pg->id, (uint64_t)chunk * pg->chunk, n, &to, err, sizeof err);
    return rc ? failure(pg, rc, err) : 0;
}

/* A sparse read's candidates: only their keys and values (ma_store_load_some), not their chunks. */
static int load_events(void *ctx, const uint64_t *events, size_t n, float *k, float *v)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    if (pg->event_loads)
        atomic_fetch_add_explicit(pg->event_loads, n, memory_order_relaxed);
    ma_store_events to = {pg->k_floats, pg->v_floats, k, v, NULL};
    int rc = ma_store_load_some(pg->store, pg->id, events, n, &to, err, sizeof err);
    return rc ? failure(pg, rc, err) : 0;
}

static int load_payload(void *ctx, uint64_t event, char **payload)
{
    reg_pager *pg = ctx;
    char err[512] = "";
    int rc = ma_store_load_payload(pg->store, pg->id, event, payload, err, sizeof err);
    return rc ? failure(pg, rc, err) : 0;
}

ma_chunk_source reg_pager_chunks(reg_pager *pg)
{
    return (ma_chunk_source){load_chunk, pg};
}

ma_event_loader reg_pager_event_loader(void)
{
    return load_events;
}

ma_payload_source reg_pager_payloads(reg_pager *pg)
{
    return (ma_payload_source){load_payload, pg};
}

static int each_slot_row(void *ctx, ma_slot_row_fn fn, void *arg)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    int rc = ma_store_slot_rows(pg->store, pg->id, fn, arg, err, sizeof err);
    return rc ? failure(pg, rc, err) : 0;
}

ma_slot_row_source reg_pager_slot_rows(reg_pager *pg)
{
    return (ma_slot_row_source){each_slot_row, pg};
}

int reg_slots_split(const char *config, const void *table, size_t len, void **state, size_t *state_len,
                    ma_store_slot_row_fn row, void *arg)
{
    ma_params p;
    char why[256];
    ma_slots *s = NULL;
    ma_slot_row *rows = NULL;
    size_t n = 0;
    *state = NULL;
    *state_len = 0;
    if (!config || reg_params_decode(config, &p, why, sizeof why))
        return MA_ECORRUPT;          /* the session cannot be loaded either; it says so then */
    int rc = ma_slots_restore_table(&(ma_slots_shape){p.heads, p.dim, p.value_dim, p.slots}, table, len, &s);
    if (!rc)
        rc = ma_slots_unsaved(s, &rows, &n);     /* every version: a whole table is all unsaved */
    for (size_t i = 0; !rc && i < n; i++)
        rc = row(arg, rows[i].name, rows[i].version, rows[i].data, rows[i].len);
    if (!rc)
        rc = ma_slots_serialize_state(s, state, state_len);
    ma_slot_rows_free(rows, n);
    ma_slots_destroy(s);
    return rc;
}

static int scan_rows(void *ctx, uint32_t build, uint64_t first, uint64_t n, int with_codes, ma_ivf_row_fn each,
                     void *arg)
{
    reg_pager *pg = ctx;
    char err[256] = "";
    ma_store_index_query q = {build, first, n, with_codes != 0, each, arg};
    int rc = ma_store_index_scan(pg->store, pg->id, &q, err, sizeof err);
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
    ma_store_events to = {pg->k_floats, pg->v_floats, k, v, NULL};
    int rc = ma_store_load_events(pg->store, pg->id, first, n, &to, err, sizeof err);
    free(v);
    return rc ? failure(pg, rc, err) : 0;
}
