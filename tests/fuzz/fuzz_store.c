/*
 * tests/fuzz/fuzz_store.c — libFuzzer: the store's open (schema check, upgrade 1 -> 2, integrity checks)
 * on a mutated database file, then what the daemon does with an opened store: list the sessions, load
 * each row, parse its config text (registry/params_text.c), restore the session from its blobs with the
 * store as chunk and payload source (registry/pager.c, as the registry does), read its first events, and
 * one write (create + delete).
 * Input: the bytes of <data>/memattn.db (seeds: a schema-1 and a schema-2 file made by gen_seeds).
 * Each input gets a fresh directory state: the -wal and -shm files of the previous one are removed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/session.h"
#include "registry/pager.h"
#include "registry/params_text.h"
#include "store/store.h"
#include "tests/fuzz/fuzz_common.h"

static char dir[64];
static char db[128], wal[128], shm[128];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "/tmp/memattn-fuzz-store-XXXXXX");
    if (!mkdtemp(dir))
        abort();
    snprintf(db, sizeof db, "%s/memattn.db", dir);
    snprintf(wal, sizeof wal, "%s/memattn.db-wal", dir);
    snprintf(shm, sizeof shm, "%s/memattn.db-shm", dir);
    return 0;
}

static void use_session(ma_store *st, const char *id)
{
    char err[256];
    ma_store_session row = { 0 };
    if (ma_store_session_load(st, id, &row, err, sizeof err) != 0)
        return;
    ma_params p;
    if (reg_params_decode(row.config_json ? row.config_json : "", &p, err, sizeof err) == 0 &&
        p.heads * p.dim <= 4096 && p.heads * p.value_dim <= 4096) {
        reg_pager pg;
        reg_pager_init(&pg, st, id, &p, NULL);
        size_t n = row.length < 8 ? (size_t)row.length : 8;
        float *k = malloc(8 * pg.k_floats * sizeof(float)), *v = malloc(8 * pg.v_floats * sizeof(float));
        char *payloads[8] = { 0 };
        ma_store_events to = {pg.k_floats, pg.v_floats, k, v, payloads};
        if (k && v && n && ma_store_load_events(st, id, 0, n, &to, err, sizeof err) == 0)
            for (size_t i = 0; i < n; i++)
                free(payloads[i]);
        free(k);
        free(v);
        if (row.backbone.len && row.length <= 4096) {
            ma_session_saved saved = { .backbone = row.backbone.data, .backbone_len = row.backbone.len,
                                       .slots = row.slots_blob.data, .slots_len = row.slots_blob.len,
                                       .archive_meta = row.archive_meta.data,
                                       .archive_meta_len = row.archive_meta.len, .chunks = reg_pager_chunks(&pg),
                                       .cache_chunks = 2, .payloads = reg_pager_payloads(&pg),
                                       .slot_rows = reg_pager_slot_rows(&pg) };
            ma_session *s = NULL;
            if (ma_session_restore(&p, &saved, &s) == 0)
                ma_session_destroy(s);
        }
    }
    ma_store_session_clear(&row);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unlink(wal);
    unlink(shm);
    if (fz_write_file(db, data, size) != 0)
        abort();
    ma_store_options o;
    ma_store_options_default(&o);
    o.synchronous = MA_STORE_SYNC_NORMAL;   /* no fsync: speed; durability is not what is fuzzed */
    ma_store *st = NULL;
    char err[512];
    if (ma_store_open_with(dir, &o, &st, err, sizeof err) != 0)
        return 0;
    ma_store_session *rows = NULL;
    size_t n = 0;
    if (ma_store_session_list(st, NULL, 8, &rows, &n, err, sizeof err) == 0) {
        for (size_t i = 0; i < n; i++) {
            if (rows[i].id)
                use_session(st, rows[i].id);
            ma_store_session_clear(&rows[i]);
        }
        free(rows);
    }
    if (ma_store_session_create(st, "fuzz.new", "{}", 1, err, sizeof err) == 0)
        ma_store_session_delete(st, "fuzz.new", err, sizeof err);
    ma_store_close(st);
    return 0;
}
