/*
 * server/idem.c — the Idempotency-Key header's syntax and a request's fingerprint (server/idem.h).
 *
 * Design. The fingerprint must be cheap next to the commit it guards and stable across restarts and
 * hosts (it is stored): the parts (method and route, path parameters, ...) go through FNV-1a 64, each
 * prefixed by its length so that ("ab","c") and ("a","bc") differ, and the body — up to --max-body —
 * through core/blob.h's word-wise checksum (one multiply per 8 bytes, ~8x FNV-1a's byte loop), whose
 * value and the body's length are then folded into the same FNV-1a state.
 */
#include "server/idem.h"

#include <stdio.h>
#include <string.h>

#include "core/blob.h"
#include "core/hash.h"

int srv_idem_key_check(const char *key, char *why, size_t whylen)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0) {
        snprintf(why, whylen, "Idempotency-Key: empty, expected 1-%d printable ASCII characters", SRV_IDEM_KEY_MAX);
        return -1;
    }
    if (n > SRV_IDEM_KEY_MAX) {
        snprintf(why, whylen, "Idempotency-Key: %zu bytes, expected 1-%d printable ASCII characters", n,
                 SRV_IDEM_KEY_MAX);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x20 || c > 0x7e) {
            snprintf(why, whylen, "Idempotency-Key: byte %zu is 0x%02x, expected printable ASCII (0x20-0x7e)", i, c);
            return -1;
        }
    }
    return 0;
}

static uint64_t mix_u64(uint64_t h, uint64_t x)
{
    for (int i = 0; i < 8; i++)
        h = ma_fnv1a64_byte(h, (unsigned char)(x >> (8 * i)));
    return h;
}

uint64_t srv_idem_fingerprint(const char *const *parts, size_t nparts, const void *body, size_t len)
{
    uint64_t h = MA_FNV_OFFSET;
    for (size_t i = 0; i < nparts; i++) {
        if (!parts[i]) {
            h = mix_u64(h, UINT64_MAX);   /* absent, unlike "" */
            continue;
        }
        size_t n = strlen(parts[i]);
        h = mix_u64(h, n);
        for (size_t j = 0; j < n; j++)
            h = ma_fnv1a64_byte(h, (unsigned char)parts[i][j]);
    }
    h = mix_u64(h, len);
    return mix_u64(h, ma_blob_checksum(body, len));
}
