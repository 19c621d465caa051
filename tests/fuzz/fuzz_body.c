/*
 * tests/fuzz/fuzz_body.c — libFuzzer: the request body decoder as server/api.c runs it: codec_parse_body
 * (the strict string pre-check of server/jsontext.c, then cJSON), then every codec decoder (session config, event batch, query
 * batch, slot write and overwrite bodies) for each of fz_common's four shapes, and base64.
 * Input: the body bytes as sent.
 * Also the two decoders that read the raw bytes: codec_events_decode_simple (the {"k_b64","v_b64"} fast
 * path) and codec_events_decode_binary (application/octet-stream batches).
 * Properties checked: a body that passes jsontext and parses never yields a string holding invalid UTF-8
 * (cJSON's tree is walked and every string and field name re-checked as a JSON string); a body the
 * simple path takes is one the general path decodes to the same events.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/featurize.h"
#include "server/codec.h"
#include "server/jsontext.h"
#include "tests/fuzz/fuzz_common.h"

static void embed(const char *text, size_t len, int dim, float *out)
{
    if (ma_embed_text(text, len, dim, out) < 0)
        memset(out, 0, sizeof(float) * (size_t)dim);
}

/* Every decoded string must be valid UTF-8 once jsontext accepted the body. */
static void check_strings(const cJSON *it)
{
    for (; it; it = it->next) {
        const char *strs[2] = { it->string, cJSON_IsString(it) ? it->valuestring : NULL };
        for (int i = 0; i < 2; i++) {
            if (!strs[i])
                continue;
            size_t n = strlen(strs[i]);
            char *q = malloc(n + 3);
            if (!q)
                continue;
            q[0] = '"';
            memcpy(q + 1, strs[i], n);
            q[n + 1] = '"';
            q[n + 2] = '\0';
            /* Quotes and backslashes inside make it a different JSON text; only bytes matter here. */
            for (size_t j = 1; j <= n; j++)
                if (q[j] == '"' || q[j] == '\\')
                    q[j] = 'x';
            if (jt_check(q, n + 2, NULL) != 0)
                __builtin_trap();
            free(q);
        }
        check_strings(it->child);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    unsigned char *dst = malloc(size / 4 * 3 + 4);
    size_t dl;
    if (dst) {
        codec_b64_decode(body, size, dst, &dl);
        free(dst);
    }
    codec_error e;
    cJSON *doc = NULL;
    codec_events simple[FZ_VARIANTS];
    int took[FZ_VARIANTS];
    for (unsigned v = 0; v < FZ_VARIANTS; v++) {
        ma_params p;
        fz_params(v, &p);
        codec_shape sh;
        codec_shape_from_params(&sh, &p, embed);
        took[v] = codec_events_decode_simple(body, size, &sh, 64, &simple[v]);
        codec_events bin;
        if (codec_events_decode_binary(body, size, &sh, 64, &bin, &e) == 0)
            codec_events_clear(&bin);
    }
    if (codec_parse_body(body, size, &doc, &e) != 0 || !doc) {
        for (unsigned v = 0; v < FZ_VARIANTS; v++)
            if (took[v])
                __builtin_trap();   /* the simple path took a body the general path refuses */
        return 0;
    }
    check_strings(doc);
    ma_params params;
    codec_params_from_json(doc, &params, &e);
    for (unsigned v = 0; v < FZ_VARIANTS; v++) {
        ma_params p;
        fz_params(v, &p);
        codec_shape sh;
        codec_shape_from_params(&sh, &p, embed);
        codec_events ev = { 0 };
        int rc = codec_events_decode(doc, &sh, 64, &ev, &e);
        if (took[v]) {   /* the same events as the general path */
            size_t kn = (size_t)sh.heads * (size_t)sh.dim, vn = (size_t)sh.heads * (size_t)sh.value_dim;
            if (rc != 0 || ev.n != simple[v].n || ev.has_expect_length ||
                (ev.n && (memcmp(ev.k, simple[v].k, sizeof(float) * ev.n * kn) != 0 ||
                          memcmp(ev.v, simple[v].v, sizeof(float) * ev.n * vn) != 0)))
                __builtin_trap();
            for (size_t i = 0; i < ev.n; i++)
                if (ev.ev[i].payload || ev.ev[i].slot || ev.ev[i].protect)
                    __builtin_trap();
            codec_events_clear(&simple[v]);
        }
        if (rc == 0)
            codec_events_clear(&ev);
        codec_queries qs = { 0 };
        if (codec_queries_decode(doc, &sh, 64, &qs, &e) == 0)
            codec_queries_clear(&qs);
        codec_slot_body sb;
        memset(&sb, 0, sizeof sb);
        if (codec_slot_body_decode(doc, NULL, false, &sh, &sb, &e) == 0)
            codec_slot_body_clear(&sb);
        memset(&sb, 0, sizeof sb);
        if (codec_slot_body_decode(doc, "a.name", true, &sh, &sb, &e) == 0)
            codec_slot_body_clear(&sb);
    }
    cJSON_Delete(doc);
    return 0;
}
