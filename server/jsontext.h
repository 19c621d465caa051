/*
 * server/jsontext.h — a strict pre-check of the strings of a JSON request body, run on the raw bytes
 * before the body is parsed.
 *
 * Why: libcjson decodes `\u0000` into a NUL byte and then hands out C strings, so `"zz\u0000evil"`
 * silently becomes `"zz"`; and it passes invalid UTF-8 through unchanged, which then comes back to
 * other clients raw. jt_check refuses both, naming the JSON path of the string (`events[3].payload`,
 * `name`, `queries[0].route`, and for a field name the name as sent, e.g. `dim\u0000x`).
 *
 * What is refused inside any string, field names included:
 *   - bytes that are not UTF-8 (RFC 3629): stray continuation bytes, truncated sequences, overlong
 *     forms (C0, C1, E0 80..9F, F0 80..8F), UTF-16 surrogates encoded as UTF-8 (ED A0..BF), code
 *     points above U+10FFFF (F4 90.., F5..FF);
 *   - the escape `\u0000` and a raw NUL byte (a string would be cut at it);
 *   - lone surrogate escapes: `\uD800`..`\uDBFF` not followed by `\uDC00`..`\uDFFF`, or a low
 *     surrogate escape on its own;
 *   - a `\u` escape without 4 hex digits (libcjson decodes `\u000h` as a NUL instead of refusing it:
 *     found by tests/fuzz/fuzz_body.c).
 * Everything else, syntax included, is the parser's business: the scan does not validate structure,
 * and at the end of the input inside a string it stops and returns 0; the parser then reports the
 * syntax error itself.
 *
 * Pure function of its input: no allocation, no state, thread-safe.
 */
#ifndef SRV_JSONTEXT_H
#define SRV_JSONTEXT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char path[200];       /* "events[3].payload"; "body" for a top-level string */
    bool in_key;          /* the offending string is a field name (path ends with the name as sent) */
    size_t offset;        /* byte offset in the body of the offending byte or escape */
    const char *what;     /* static: "invalid UTF-8", "a NUL character (\\u0000)", "a lone UTF-16
                             surrogate escape", "a \\u escape without 4 hex digits" */
    char message[512];    /* "events[3].payload: the string holds invalid UTF-8 (byte 0xff) at body
                             offset 57; strings must be valid UTF-8 without NUL..." */
} jt_error;

/* Checks every string of the JSON text body[0..len). Returns 0 when none is refused (or the text is
 * not JSON: see above), MA_EINVAL with *err filled (err may be NULL) at the first refused string. */
int jt_check(const char *body, size_t len, jt_error *err);

#endif
