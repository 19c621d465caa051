/*
 * server/jsontext.c — the strict string pre-check of a JSON body (contract in server/jsontext.h).
 *
 * Design. One pass over the raw bytes with a small structural scanner: `{ [ } ] , :` move a stack of
 * containers (for an object, whether the next string is a field name and where the current name is in
 * the body; for an array, the current index), strings are checked byte by byte, everything else
 * (numbers, literals, whitespace) is skipped. The scanner does not validate syntax: the parser runs
 * right after and reports syntax errors with their own offset. The scan never stops early on
 * unexpected structure (only at the end of the input inside a string): a string it skipped would be
 * a string the parser might accept unchecked. The path of the first refused string is rendered from the
 * stack only when there is an error; field names appear in it as sent (escapes included), so the
 * path names exactly what the client wrote. The first JT_TRACK levels of nesting are tracked (deeper
 * ones still have their strings checked; their path ends with "...").
 *
 * Cost: one branch per byte for ASCII; about 1 ms per MiB, next to the parse that follows.
 */
#include "server/jsontext.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"

#define JT_TRACK 64     /* nesting levels whose position is kept for the error path */

typedef struct {
    bool obj;            /* object (else array) */
    bool expect_key;     /* object: the next string is a field name */
    bool has_key;        /* object: key_off/key_len name the current member */
    size_t key_off, key_len;   /* raw bytes of the current member's name (between the quotes) */
    size_t index;        /* array: index of the current element */
} jt_level;

static const char WHAT_UTF8[] = "invalid UTF-8";
static const char WHAT_NUL[] = "a NUL character (\\u0000)";
static const char WHAT_SURROGATE[] = "a lone UTF-16 surrogate escape";
static const char WHAT_ESCAPE[] = "a \\u escape without 4 hex digits";

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits at s[p..p+4) as a code unit, or -1. */
static long hex4(const unsigned char *s, size_t len, size_t p)
{
    if (p + 4 > len)
        return -1;
    long u = 0;
    for (size_t k = 0; k < 4; k++) {
        int h = hexval(s[p + k]);
        if (h < 0)
            return -1;
        u = u * 16 + h;
    }
    return u;
}

static bool cont(unsigned char c) { return c >= 0x80 && c <= 0xBF; }

/* Length of the well-formed UTF-8 sequence (RFC 3629, table 3-7 of Unicode) starting at s (n bytes
 * left, s[0] >= 0x80), or 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && cont(s[1]) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return n >= 3 && s[1] >= lo && s[1] <= hi && cont(s[2]) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return n >= 4 && s[1] >= lo && s[1] <= hi && cont(s[2]) && cont(s[3]) ? 4 : 0;
    }
    return 0;   /* 80..C1 (continuation, overlong 2-byte lead), F5..FF */
}

/* True when none of the 8 bytes of w is zero (SWAR: the classic haszero test). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static inline bool no_zero_byte(uint64_t w)
{
    return ((w - ONES) & ~w & HIGHS) == 0;
}

/* Scans the string whose opening quote is at s[*i]. 0: fine, *i past the closing quote; 1: refused,
 * *bad and *what set; -1: not a string the parser will accept (unterminated). */
static int scan_string(const unsigned char *s, size_t len, size_t *i, size_t *bad, const char **what)
{
    size_t p = *i + 1;
    while (p < len) {
        /* Fast path (base64 and other ASCII text): 8 bytes at a time while none is non-ASCII, NUL, '"'
         * or '\\'; the loop below looks at the byte that stopped it. */
        while (p + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + p, 8);
            if ((w & HIGHS) || !no_zero_byte(w) || !no_zero_byte(w ^ (ONES * '"')) ||
                !no_zero_byte(w ^ (ONES * '\\')))
                break;
            p += 8;
        }
        if (p >= len)
            break;
        unsigned char c = s[p];
        if (c == '"') {
            *i = p + 1;
            return 0;
        }
        if (c == '\\') {
            if (p + 1 >= len)
                return -1;
            if (s[p + 1] != 'u') {
                p += 2;
                continue;
            }
            long u = hex4(s, len, p + 2);
            if (u < 0) {
                /* libcjson does not refuse this: it decodes "\u000h" or "\uzzzz" as a NUL. */
                *bad = p;
                *what = WHAT_ESCAPE;
                return 1;
            }
            if (u == 0) {
                *bad = p;
                *what = WHAT_NUL;
                return 1;
            }
            if (u >= 0xD800 && u <= 0xDBFF) {
                long lo = p + 12 <= len && s[p + 6] == '\\' && s[p + 7] == 'u' ? hex4(s, len, p + 8) : -1;
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    p += 12;
                    continue;
                }
            }
            if (u >= 0xD800 && u <= 0xDFFF) {
                *bad = p;
                *what = WHAT_SURROGATE;
                return 1;
            }
            p += 6;
            continue;
        }
        if (c == 0) {
            *bad = p;
            *what = WHAT_NUL;
            return 1;
        }
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t n = utf8_seq(s + p, len - p);
        if (!n) {
            *bad = p;
            *what = WHAT_UTF8;
            return 1;
        }
        p += n;
    }
    return -1;
}

/* Appends raw JSON text s[off..off+n) to the path, printable ASCII only (others as '?'). */
static void put_raw(char *out, size_t cap, size_t *o, const unsigned char *s, size_t off, size_t n)
{
    for (size_t k = 0; k < n && *o + 1 < cap; k++) {
        unsigned char c = s[off + k];
        out[(*o)++] = c >= 0x20 && c < 0x7F ? (char)c : '?';
    }
    out[*o] = '\0';
}

static void put_str(char *out, size_t cap, size_t *o, const char *str)
{
    size_t n = strlen(str);
    if (n > cap - 1 - *o)
        n = cap - 1 - *o;
    memcpy(out + *o, str, n);
    *o += n;
    out[*o] = '\0';
}

/* Renders the path of the string at s[start] (its opening quote) into err->path. */
static void render_path(const unsigned char *s, size_t len, const jt_level *lv, size_t depth, bool key,
                        size_t start, jt_error *err)
{
    char *out = err->path;
    size_t cap = sizeof err->path, o = 0;
    size_t tracked = depth < JT_TRACK ? depth : JT_TRACK;
    out[0] = '\0';
    for (size_t d = 0; d < tracked; d++) {
        const jt_level *l = &lv[d];
        bool last = d + 1 == tracked;
        if (l->obj) {
            if (last && key) {
                /* The field name being refused: as sent, up to its closing quote (at most 64 bytes). */
                size_t e = start + 1, n = 0;
                while (e < len && s[e] != '"' && n < 64) {
                    size_t step = s[e] == '\\' && e + 1 < len ? 2 : 1;
                    e += step;
                    n += step;
                }
                if (o)
                    put_str(out, cap, &o, ".");
                put_raw(out, cap, &o, s, start + 1, e - start - 1);
            } else if (l->has_key) {
                if (o)
                    put_str(out, cap, &o, ".");
                put_raw(out, cap, &o, s, l->key_off, l->key_len > 64 ? 64 : l->key_len);
            }
        } else {
            char idx[32];
            snprintf(idx, sizeof idx, "[%zu]", l->index);
            put_str(out, cap, &o, idx);
        }
    }
    if (depth > JT_TRACK)
        put_str(out, cap, &o, "...");
    if (!o)
        put_str(out, cap, &o, "body");
}

int jt_check(const char *body, size_t len, jt_error *err)
{
    const unsigned char *s = (const unsigned char *)body;
    jt_level lv[JT_TRACK];
    size_t depth = 0, i = 0;
    while (i < len) {
        unsigned char c = s[i];
        jt_level *top = depth && depth <= JT_TRACK ? &lv[depth - 1] : NULL;
        switch (c) {
        case '{':
        case '[':
            if (depth < JT_TRACK)
                lv[depth] = (jt_level){ .obj = c == '{', .expect_key = c == '{' };
            depth++;
            i++;
            break;
        case '}':
        case ']':
            if (depth)   /* unbalanced: not JSON, the parser says so; strings after it are still checked */
                depth--;
            i++;
            break;
        case ',':
            if (top && top->obj)
                top->expect_key = true;
            else if (top)
                top->index++;
            i++;
            break;
        case ':':
            if (top)
                top->expect_key = false;
            i++;
            break;
        case '"': {
            bool key = top && top->obj && top->expect_key;
            size_t start = i, bad = 0;
            const char *what = NULL;
            int r = scan_string(s, len, &i, &bad, &what);
            if (r < 0)
                return 0;
            if (r > 0) {
                if (err) {
                    render_path(s, len, lv, depth, key, start, err);
                    err->in_key = key;
                    err->offset = bad;
                    err->what = what;
                    char detail[16] = "";
                    if (what == WHAT_UTF8)
                        snprintf(detail, sizeof detail, " (byte 0x%02x)", s[bad]);
                    snprintf(err->message, sizeof err->message,
                             "%s: the %s holds %s%s at body offset %zu; strings must be valid UTF-8 without "
                             "NUL characters or lone surrogates", err->path, key ? "field name" : "string",
                             what, detail, bad);
                }
                return MA_EINVAL;
            }
            if (key) {
                top->key_off = start + 1;
                top->key_len = i - 1 - (start + 1);
                top->has_key = true;
            }
            break;
        }
        default:
            i++;
            break;
        }
    }
    return 0;
}
