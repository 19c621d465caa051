/*
 * registry/pager.h — the one adapter from the store to core's paging callbacks.
 *
 * A restored (or budget-paged) session keeps only summaries of its archive in memory and reads archive
 * chunks, and the payloads of archived events, back from the store when a query needs them. core/ asks
 * through its callbacks (ma_chunk_source of core/archive.h: whole chunks, and single events for a sparse
 * read's candidates; ma_payload_source of core/session.h); a reg_pager answers them from
 * ma_store_load_events / ma_store_load_some / ma_store_load_payload for one session. A third,
 * ma_slot_row_source (core/slots.h), reads the slot table's version rows once, at restore
 * (ma_store_slot_rows); it also gives the index's stored rows (ma_store_index_scan) and keys for a
 * background index build. The registry
 * embeds one in every session; benchmarks that restore a session without a registry use it directly.
 *
 * Chunk c holds events [c·chunk, c·chunk + n). The callbacks return MA_E* codes only (core has no message
 * buffer); the message of the first failure is kept in pager.err (later ones are dropped, so concurrent
 * readers never write it at the same time). Thread-safe for concurrent reads of one session; the pager
 * must outlive every session reading through it.
 */
#ifndef REG_PAGER_H
#define REG_PAGER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/archive.h"
#include "core/params.h"
#include "core/session.h"
#include "store/store.h"

typedef struct {
    ma_store *store;                  /* borrowed */
    char id[MA_MAX_NAME + 1];
    size_t chunk;                     /* events per chunk (ma_params.chunk) */
    size_t k_floats, v_floats;        /* floats per event: H·d, H·d_v */
    atomic_uint_fast64_t *chunk_loads;   /* optional: counts chunks read (NULL: not counted) */
    atomic_uint_fast64_t *event_loads;   /* optional: counts events read alone (NULL: not counted) */
    atomic_int failed;                /* set by the first failure, which wrote err */
    char err[512];
} reg_pager;

/* Sets pg up for session `id` of config p in store st; chunk_loads may be NULL. */
void reg_pager_init(reg_pager *pg, ma_store *st, const char *id, const ma_params *p,
                    atomic_uint_fast64_t *chunk_loads);

/* The callbacks of pg, for ma_archive_set_source / ma_session_restore. */
ma_chunk_source reg_pager_chunks(reg_pager *pg);
ma_payload_source reg_pager_payloads(reg_pager *pg);
ma_slot_row_source reg_pager_slot_rows(reg_pager *pg);   /* the slot table's version rows, at restore */

/* The store's schema 2 -> 3 converter (ma_store_options.slots_split; docs/STORE.md): a whole slot table
 * (core's ma_slots_serialize format) of a session with stored config text `config` into its state blob
 * (*state, malloc'd) and one row per version, handed to row(). MA_ECORRUPT (config or table unreadable),
 * MA_ENOMEM, or row()'s error. */
int reg_slots_split(const char *config, const void *table, size_t len, void **state, size_t *state_len,
                    ma_store_slot_row_fn row, void *arg);

/* The event loader that goes with reg_pager_chunks(pg) (ma_archive_set_event_loader; its ctx is the
 * chunk source's, pg): a sparse read's candidates through ma_store_load_some. */
ma_event_loader reg_pager_event_loader(void);

/* The index's stored rows of this session (core/ivf.h's row source, ma_store_index_scan). */
ma_ivf_rows reg_pager_rows(reg_pager *pg);

/* Keys of events [first, first+n) straight from the store (core/ivf.h's loader; values read and dropped),
 * in runs of at most MA_IVF_BLOCK events. */
int reg_pager_keys(void *pg, uint64_t first, size_t n, float *k);

#endif
