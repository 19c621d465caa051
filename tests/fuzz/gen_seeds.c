/*
 * tests/fuzz/gen_seeds.c — writes the seed corpus of every fuzz target into OUT/<target>/ (make fuzz runs
 * it into build/fuzz/corpus): real blobs serialised from fz_common's sessions (every config, several
 * lengths, with and without the checksum-fix bit), a schema-1 and a schema-2 database file made through
 * sqlite and the store, sample request bodies, and sample HTTP requests. Deterministic.
 * Usage: gen_seeds OUT
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>
#include <cjson/cJSON.h>

#include "core/archive.h"
#include "core/backbone.h"
#include "core/error.h"
#include "core/ivf.h"
#include "core/session.h"
#include "registry/params_text.h"
#include "store/store.h"
#include "tests/fuzz/fuzz_common.h"

static const char *out;
static int nfiles;

static void mkdir_p(const char *p)
{
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        perror(p);
        exit(1);
    }
}

/* OUT/target/name <- head (hlen bytes) + body (blen bytes). */
static void seed(const char *target, const char *name, const void *head, size_t hlen, const void *body, size_t blen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", out, target);
    mkdir_p(path);
    snprintf(path, sizeof path, "%s/%s/%s", out, target, name);
    unsigned char *b = malloc(hlen + blen + 1);
    if (!b)
        exit(1);
    if (hlen)
        memcpy(b, head, hlen);
    if (blen)
        memcpy(b + hlen, body, blen);
    if (fz_write_file(path, b, hlen + blen) != 0) {
        perror(path);
        exit(1);
    }
    free(b);
    nfiles++;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void blob_seeds(void)
{
    static const size_t lengths[] = { 0, 1, 9, 37, 1100 };   /* 1100: past MA_IVF_MIN_BUILD, an index is built */
    for (unsigned var = 0; var < FZ_VARIANTS; var++)
        for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
            ma_session *s = NULL;
            if (fz_session(var, lengths[li], &s) != 0) {
                fprintf(stderr, "gen_seeds: session %u/%zu failed\n", var, lengths[li]);
                exit(1);
            }
            void *bb = NULL, *sl = NULL, *am = NULL;
            size_t nb = 0, ns = 0, nm = 0;
            if (ma_backbone_serialize(ma_session_backbone(s), &bb, &nb) || ma_session_serialize_slots(s, &sl, &ns) ||
                ma_archive_serialize_meta(ma_session_archive(s), &am, &nm))
                exit(1);
            char name[64];
            for (unsigned fix = 0; fix < 2; fix++) {
                unsigned char b0 = (unsigned char)(var | (fix ? 0x80 : 0));
                snprintf(name, sizeof name, "v%u_n%zu_%s", var, lengths[li], fix ? "fix" : "raw");
                seed("fuzz_backbone", name, &b0, 1, bb, nb);
                seed("fuzz_slots", name, &b0, 1, sl, ns);
                unsigned char h3[3] = { b0, (unsigned char)(lengths[li] & 0xff), (unsigned char)(lengths[li] >> 8) };
                seed("fuzz_archive_meta", name, h3, 3, am, nm);
                /* session: b0, u32 nb, bb, u32 ns, sl, meta */
                size_t tot = 1 + 4 + nb + 4 + ns + nm;
                unsigned char *x = malloc(tot), *q = x;
                if (!x)
                    exit(1);
                *q++ = b0;
                put32(q, (uint32_t)nb); q += 4;
                memcpy(q, bb, nb); q += nb;
                put32(q, (uint32_t)ns); q += 4;
                memcpy(q, sl, ns); q += ns;
                memcpy(q, am, nm);
                seed("fuzz_session", name, NULL, 0, x, tot);
                free(x);
            }
            free(bb);
            free(sl);
            free(am);
            ma_session_destroy(s);
        }
    /* ivf: an index built over NK keys of each config (at least MA_IVF_MIN_BUILD, or it never builds). */
    for (unsigned var = 0; var < FZ_VARIANTS; var++) {
        ma_params p;
        fz_params(var, &p);
        ma_ivf *x = NULL;
        if (ma_ivf_create(p.heads, p.dim, &x))
            exit(1);
        enum { NK = MA_IVF_MIN_BUILD + 100 };
        float *k = malloc((size_t)NK * 64 * sizeof(float)), v[64];
        if (!k)
            exit(1);
        for (int i = 0; i < NK; i++)
            fz_event(&p, (uint64_t)i, k + (size_t)i * (size_t)(p.heads * p.dim), v);
        ma_ivf_add(x, NK, k);
        free(k);
        ma_ivf_rebuild(x, fz_key_load, &p);
        void *b = NULL;
        size_t n = 0;
        if (ma_ivf_serialize(x, &b, &n))
            exit(1);
        for (unsigned fix = 0; fix < 2; fix++) {
            unsigned char b0 = (unsigned char)(var | (fix ? 0x80 : 0));
            char name[32];
            snprintf(name, sizeof name, "v%u_%s", var, fix ? "fix" : "raw");
            seed("fuzz_ivf", name, &b0, 1, b, n);
        }
        free(b);
        ma_ivf_destroy(x);
    }
    /* ivf rows (fuzz_ivf_rows makes its own reference index): every config clean, with a row missing, with
     * short lists, and with a few flipped bytes in the lists and in the codes. */
    for (unsigned var = 0; var < FZ_VARIANTS; var++) {
        static const unsigned char flips[] = {0, 0, 0, 0, 0x01, 0x10, 0, 0, 0, 0x80, 0xff, 0x3f, 0, 0, 0x40};
        unsigned char in[2 + sizeof flips] = {(unsigned char)var, 1};
        memcpy(in + 2, flips, sizeof flips);
        const struct { const char *name; unsigned char flag; size_t len; } v[] = {
            {"clean", 0, 2}, {"missing", 4, 2}, {"short", 8, 2}, {"flips", 0, sizeof in},
        };
        for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
            char name[32];
            snprintf(name, sizeof name, "v%u_%s", var, v[i].name);
            in[0] = (unsigned char)(var | v[i].flag);
            seed("fuzz_ivf_rows", name, NULL, 0, in, v[i].len);
        }
    }
}

/* Schema 1 as memattnd wrote it (tests/unit/test_store.c has the same text). */
static const char v1_schema[] =
    "CREATE TABLE sessions(sid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, config TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    "  length INTEGER NOT NULL DEFAULT 0 CHECK (length >= 0), slots INTEGER NOT NULL DEFAULT 0 CHECK (slots >= 0),"
    "  event_bytes INTEGER NOT NULL DEFAULT 0, blob_bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE blobs(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  kind INTEGER NOT NULL CHECK (kind BETWEEN 0 AND 2), data BLOB NOT NULL, PRIMARY KEY (sid, kind));"
    "CREATE TABLE events(sid INTEGER NOT NULL REFERENCES sessions(sid) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL CHECK (idx >= 0), k BLOB NOT NULL, v BLOB NOT NULL, payload TEXT,"
    "  PRIMARY KEY (sid, idx)) WITHOUT ROWID;"
    "PRAGMA user_version = 1; PRAGMA application_id = 1833006158;";

static void file_seed(const char *target, const char *name, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n)
        exit(1);
    fclose(f);
    seed(target, name, NULL, 0, b, (size_t)n);
    free(b);
}

static char *config_json(unsigned var)
{
    ma_params p;
    fz_params(var, &p);
    char *s = NULL;
    return reg_params_encode(&p, &s) == 0 ? s : NULL;
}

static void store_seeds(void)
{
    char dir[] = "/tmp/memattn-seeds-XXXXXX", path[256], err[512];
    if (!mkdtemp(dir))
        exit(1);
    snprintf(path, sizeof path, "%s/memattn.db", dir);
    /* schema 2, through the store: sessions of two configs with events, payloads and blobs, one empty. */
    ma_store_options o;
    ma_store_options_default(&o);
    o.synchronous = MA_STORE_SYNC_NORMAL;
    ma_store *st = NULL;
    if (ma_store_open_with(dir, &o, &st, err, sizeof err)) {
        fprintf(stderr, "gen_seeds: %s\n", err);
        exit(1);
    }
    static const size_t L[] = { 9, 70 };
    for (unsigned var = 0; var < 2; var++) {
        char id[16], *cfg = config_json(var);
        snprintf(id, sizeof id, "s%u", var);
        ma_params p;
        fz_params(var, &p);
        ma_session *s = NULL;
        if (!cfg || ma_store_session_create(st, id, cfg, 1, err, sizeof err) || fz_session(var, L[var], &s))
            exit(1);
        size_t kf = (size_t)(p.heads * p.dim), vf = (size_t)(p.heads * p.value_dim);
        float *k = malloc(L[var] * kf * sizeof(float)), *v = malloc(L[var] * vf * sizeof(float));
        char **pays = calloc(L[var], sizeof *pays);
        for (size_t i = 0; i < L[var]; i++) {
            fz_event(&p, i, k + i * kf, v + i * vf);
            fz_payload_load(NULL, i, &pays[i]);
        }
        void *bb = NULL, *sl = NULL, *am = NULL;
        size_t nb = 0, ns = 0, nm = 0;
        ma_backbone_serialize(ma_session_backbone(s), &bb, &nb);
        ma_session_serialize_slots(s, &sl, &ns);
        ma_archive_serialize_meta(ma_session_archive(s), &am, &nm);
        ma_store_delta d = { .first_event = 0, .n_events = L[var], .k_floats = kf, .v_floats = vf, .k = k, .v = v,
                             .payloads = (const char *const *)pays, .backbone = { bb, nb }, .slots_blob = { sl, ns },
                             .archive_meta = { am, nm }, .length = L[var], .slots = 2, .updated_at = 2 };
        if (ma_store_commit(st, id, &d, err, sizeof err)) {
            fprintf(stderr, "gen_seeds: commit: %s\n", err);
            exit(1);
        }
        for (size_t i = 0; i < L[var]; i++)
            free(pays[i]);
        free(pays);
        free(k);
        free(v);
        free(bb);
        free(sl);
        free(am);
        free(cfg);
        ma_session_destroy(s);
    }
    ma_store_session_create(st, "empty", "{}", 3, err, sizeof err);
    ma_store_close(st);
    file_seed("fuzz_store", "schema2", path);

    /* schema 1: the same shapes as one row per event (the open upgrades it). */
    unlink(path);
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK || sqlite3_exec(db, v1_schema, NULL, NULL, NULL) != SQLITE_OK)
        exit(1);
    sqlite3_exec(db, "PRAGMA journal_mode=DELETE; BEGIN", NULL, NULL, NULL);
    char *cfg = config_json(2);
    ma_params p;
    fz_params(2, &p);
    sqlite3_stmt *ss, *es;
    size_t n = 5, kf = (size_t)(p.heads * p.dim), vf = (size_t)(p.heads * p.value_dim);
    sqlite3_prepare_v2(db, "INSERT INTO sessions VALUES (1, 'old', ?1, 0, 0, ?2, 0, ?3, 0)", -1, &ss, NULL);
    sqlite3_bind_text(ss, 1, cfg, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ss, 2, (sqlite3_int64)n);
    sqlite3_bind_int64(ss, 3, (sqlite3_int64)(n * (kf + vf) * sizeof(float)));
    sqlite3_step(ss);
    sqlite3_finalize(ss);
    sqlite3_prepare_v2(db, "INSERT INTO events VALUES (1, ?1, ?2, ?3, ?4)", -1, &es, NULL);
    for (size_t i = 0; i < n; i++) {
        float k[64], v[64];
        fz_event(&p, i, k, v);
        sqlite3_bind_int64(es, 1, (sqlite3_int64)i);
        sqlite3_bind_blob(es, 2, k, (int)(kf * sizeof(float)), SQLITE_TRANSIENT);
        sqlite3_bind_blob(es, 3, v, (int)(vf * sizeof(float)), SQLITE_TRANSIENT);
        if (i % 2)
            sqlite3_bind_text(es, 4, "{\"old\":true}", -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(es, 4);
        sqlite3_step(es);
        sqlite3_reset(es);
    }
    sqlite3_finalize(es);
    free(cfg);
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        exit(1);
    sqlite3_close(db);
    file_seed("fuzz_store", "schema1", path);
    unlink(path);
    snprintf(path, sizeof path, "%s/memattn.lock", dir);
    unlink(path);
    rmdir(dir);
}

static void body_seeds(void)
{
    static const char *const bodies[] = {
        "{\"events\":[{\"k\":[1,0,0,0,0,0,0,0],\"v\":[0,1,0,0,0,0,0,0],\"payload\":{\"a\":[1,\"x\",null]},\"slot\":\"s1\",\"protect\":true}]}",
        "{\"events\":[{\"text\":\"the tower\",\"payload\":\"330 m\"},{\"k_b64\":\"AACAPwAAAAAAAAAAAAAAAA==\",\"v_b64\":\"AAAAAAAAgD8AAAAAAAAAAA==\"}]}",
        "{\"queries\":[{\"q\":[1,0,0,0],\"route\":\"sparse\",\"topk\":2},{\"slot\":\"s1\",\"version\":1},{\"text\":\"tower\",\"route\":\"full\"}]}",
        "{\"queries\":[{\"q_b64\":\"AACAPwAAAAAAAAAAAAAAAA==\",\"route\":\"window\"},{\"text\":\"x\",\"route\":\"state\"}]}",
        "{\"name\":\"a.name\",\"k\":[1,2,3,4],\"v\":[4,3,2,1],\"payload\":\"caf\xc3\xa9\",\"protect\":false}",
        "{\"payload\":\"Paris\",\"version\":7}",
        "{\"heads\":2,\"dim\":4,\"value_dim\":4,\"slots\":8,\"chunk\":4,\"topk\":2,\"window\":16,\"backbone\":\"vla\","
        "\"vla\":{\"lambda0\":0.1,\"period\":3,\"refresh\":0.001,\"feature\":\"elu1\",\"penalty_scale\":1},"
        "\"delta\":{\"beta\":0.5},\"route_threshold\":0.5,\"selector\":\"chunks\"}",
        "{\"dim\":8,\"backbone\":\"delta\",\"delta\":{\"beta\":1}}",
        "{\"name\":\"zz\\u0000evil\"}",
        "{\"events\":[{\"payload\":\"\\ud83d\\ude00 \\u00e9\"}]}",
        "[1,2,{\"a\":{\"b\":[true,false,null,-1.5e-7]}}]",
        "{\"protected\":true}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        char name[16];
        snprintf(name, sizeof name, "body%02zu", i);
        seed("fuzz_body", name, NULL, 0, bodies[i], strlen(bodies[i]));
    }
}

static void http_seeds(void)
{
    static const char *const reqs[] = {
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
        "PUT /v1/sessions/s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n"
        "{\"dim\":4,\"slots\":4,\"chunk\":2}\n",
        "POST /v1/sessions/s/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        "2a\r\n{\"events\":[{\"text\":\"tower\",\"payload\":1}]}\r\n0\r\n\r\n",
        "POST /v1/sessions/s/query HTTP/1.1\r\nHost: t\r\nContent-Length: 46\r\n\r\n"
        "{\"queries\":[{\"text\":\"tower\",\"route\":\"full\"}]}",
        "PUT /v1/sessions/s/slots/a HTTP/1.1\r\nHost: t\r\nIf-Match: \"1\"\r\nContent-Length: 17\r\n\r\n{\"payload\":\"x\"}\r\n",
        "GET /v1/sessions/s/slots/a?version=1 HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/sessions/s/slots/a/versions HTTP/1.1\r\n\r\n",
        "PATCH /v1/sessions/s/slots/a HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"protected\":true}",
        "DELETE /v1/sessions/s/slots/a HTTP/1.1\r\n\r\nGET /v1/sessions?limit=2&after=a HTTP/1.1\r\n\r\n",
        "POST /v1/sessions/s/slots/a/restore HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"version\":1}",
        "GET /v1/sessions/s HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        "POST /v1/admin/backup HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "DELETE /v1/sessions/s HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /healthz\r\n\r\n",
        "GET /healthz HTTP/2.0\r\n\r\n",
        "GET /x HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof reqs / sizeof *reqs; i++) {
        char name[16];
        snprintf(name, sizeof name, "req%02zu", i);
        seed("fuzz_http", name, NULL, 0, reqs[i], strlen(reqs[i]));
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_seeds OUT\n");
        return 2;
    }
    out = argv[1];
    mkdir_p(out);
    blob_seeds();
    store_seeds();
    body_seeds();
    http_seeds();
    printf("gen_seeds: %d files in %s\n", nfiles, out);
    return 0;
}
