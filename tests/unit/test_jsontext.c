/*
 * tests/unit/test_jsontext.c — server/jsontext.c: the strict string pre-check of JSON bodies.
 *
 * Table-driven cases (accepted texts, refused texts with the path, the kind and the offset reported),
 * the issue's examples, and an exhaustive comparison of the UTF-8 rule against an independent decoder
 * (bit-pattern decode, then minimal-length, surrogate and range checks) over every 1-, 2- and 3-byte
 * sequence and a seeded sample of 4-byte ones.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "server/jsontext.h"

static int check(const char *s, jt_error *e)
{
    return jt_check(s, strlen(s), e);
}

static void ok(const char *s)
{
    jt_error e;
    if (check(s, &e) != 0)
        fail_msg("refused %s: %s", s, e.message);
}

/* Refused, at `path`, of kind `what` (prefix match), at body offset `off` (-1: not checked). */
static void bad_n(const char *s, size_t len, const char *path, const char *what, long off)
{
    jt_error e;
    memset(&e, 0x5a, sizeof e);
    if (jt_check(s, len, &e) != MA_EINVAL)
        fail_msg("accepted %.*s", (int)len, s);
    if (strcmp(e.path, path) != 0)
        fail_msg("%.*s: path %s, expected %s", (int)len, s, e.path, path);
    if (strncmp(e.what, what, strlen(what)) != 0)
        fail_msg("%.*s: kind %s, expected %s", (int)len, s, e.what, what);
    if (off >= 0 && e.offset != (size_t)off)
        fail_msg("%.*s: offset %zu, expected %ld", (int)len, s, e.offset, off);
    assert_non_null(strstr(e.message, path));
}

static void bad(const char *s, const char *path, const char *what, long off)
{
    bad_n(s, strlen(s), path, what, off);
}

static void test_accepts_valid(void **state)
{
    (void)state;
    ok("");
    ok("{}");
    ok("[]");
    ok("{\"name\":\"zz\"}");
    ok("{\"events\":[{\"k\":[1,2,3],\"payload\":{\"a\":[\"x\",null,true,1.5e3]}}]}");
    ok("\"caf\xc3\xa9\"");                              /* é */
    ok("\"\xe2\x82\xac\"");                              /* € */
    ok("\"\xf0\x9f\x98\x80\"");                          /* U+1F600 */
    ok("\"\xf4\x8f\xbf\xbf\"");                          /* U+10FFFF */
    ok("\"\xed\x9f\xbf\"");                              /* U+D7FF, just below the surrogates */
    ok("\"\xee\x80\x80\"");                              /* U+E000, just above */
    ok("\"\xef\xbf\xbf\"");                              /* U+FFFF */
    ok("\"\\u0001 \\u00e9 \\uffff \\\" \\\\ \\/ \\n\"");
    ok("\"\\ud83d\\ude00\"");                            /* a surrogate pair */
    ok("\"\\uD83D\\uDE00\"");
    ok("{\"k\\u0041y\":1}");
    ok("[\"a\",\"b\",[\"c\",{\"d\":\"e\"}]]");
    /* Not JSON: left to the parser (which refuses it), never a false refusal here. */
    ok("{\"a\":\"unterminated");
    ok("\"bad escape \\x\"");
    ok("}}}");
    ok("\xff");                                         /* outside a string: a syntax error */
}

static void test_issue_examples(void **state)
{
    (void)state;
    bad("{\"name\":\"zz\\u0000evil\"}", "name", "a NUL", 11);
    bad("{\"events\":[{\"payload\":\"abc\\u0000def\"}]}", "events[0].payload", "a NUL", -1);
    bad("{\"dim\\u0000x\":8}", "dim\\u0000x", "a NUL", 5);
    bad("{\"queries\":[{\"q\":[1],\"route\":\"full\\u0000x\"}]}", "queries[0].route", "a NUL", -1);
    bad("{\"text\":\"ab\xff\"}", "text", "invalid UTF-8", 11);
    bad("{\"name\":\"\xc3\x28\"}", "name", "invalid UTF-8", 9);
    bad("{\"events\":[{},{},{},{\"payload\":\"\xe0\x80\xaf\"}]}", "events[3].payload", "invalid UTF-8", -1);
}

static void test_key_paths(void **state)
{
    (void)state;
    jt_error e;
    assert_int_equal(check("{\"dim\\u0000x\":8}", &e), MA_EINVAL);
    assert_true(e.in_key);
    assert_non_null(strstr(e.message, "field name"));
    assert_int_equal(check("{\"a\":\"x\\u0000\"}", &e), MA_EINVAL);
    assert_false(e.in_key);
    bad("{\"config\":{\"vla\":{\"per\xc0\xafiod\":1}}}", "config.vla.per??iod", "invalid UTF-8", -1);
    /* The second member's name, not the first's. */
    bad("{\"a\":1,\"b\\u0000\":2}", "b\\u0000", "a NUL", -1);
    /* A value after a bad-free key. */
    bad("{\"a\":1,\"b\":[\"ok\",\"ok\",{\"c\":\"\\udc00\"}]}", "b[2].c", "a lone", -1);
    /* Top-level string, top-level array. */
    bad("\"\\u0000\"", "body", "a NUL", 1);
    bad("[\"x\",\"y\",\"\xff\"]", "[2]", "invalid UTF-8", 10);
    /* Nested arrays. */
    bad("[[1,2],[3,[\"a\",\"\\u0000\"]]]", "[1][1][1]", "a NUL", -1);
    /* Whitespace everywhere. */
    bad(" { \"a\" : [ 1 , \"\\u0000\" ] } ", "a[1]", "a NUL", -1);
    /* A string holding structural characters does not move the scanner. */
    bad("{\"a\":\"{[,:]}\",\"b\":\"\\u0000\"}", "b", "a NUL", -1);
    bad("{\"a\":\"\\\"\",\"b\":\"\\u0000\"}", "b", "a NUL", -1);
}

static void test_nul_forms(void **state)
{
    (void)state;
    bad("\"\\u0000\"", "body", "a NUL", 1);
    bad("\"a\\u0000b\"", "body", "a NUL", 2);
    ok("\"\\\\u0000\"");                  /* an escaped backslash, then the text u0000 */
    ok("\"\\u0100\\u1000\\u0010\"");
}

/* libcjson decodes a \u escape with a non-hex digit as NUL (found by fuzzing): refused. */
static void test_bad_hex_escapes(void **state)
{
    (void)state;
    bad("{\"name\":\"zz\\u000hevil\"}", "name", "a \\u escape", 11);
    bad("\"\\uzzzz\"", "body", "a \\u escape", 1);
    bad("\"\\u12\"", "body", "a \\u escape", 1);
    bad("\"\\u", "body", "a \\u escape", 1);
    bad("\"\\ud83d\\u12\"", "body", "a lone", 1);
    /* Structure past an unbalanced bracket does not stop the checks. */
    bad("]]{\"a\":\"\\u0000\"}", "a", "a NUL", -1);
    bad("{\"a\":[\"\\u0000\"}", "a[0]", "a NUL", -1);
}

static void test_raw_nul_and_surrogates(void **state)
{
    (void)state;
    bad_n("{\"a\":\"x\0y\"}", 11, "a", "a NUL", 7);
    bad_n("{\"a\0\":1}", 8, "a?", "a NUL", 3);
    bad("\"\\ud800\"", "body", "a lone", 1);
    bad("\"\\uDBFF\"", "body", "a lone", 1);
    bad("\"\\udc00\"", "body", "a lone", 1);
    bad("\"\\uDFFF\"", "body", "a lone", 1);
    bad("\"\\ud800\\u0041\"", "body", "a lone", 1);       /* high, then not a low */
    bad("\"\\ud800\\ud800\"", "body", "a lone", 1);       /* two highs */
    bad("\"\\ud800x\"", "body", "a lone", 1);
    bad("\"\\ude00\\ud83d\"", "body", "a lone", 1);       /* the pair reversed */
    bad("\"ok\\ud83d\\ude00 \\ud83d\"", "body", "a lone", 16);
    /* Surrogates encoded as UTF-8 (CESU-8). */
    bad("\"\xed\xa0\x80\"", "body", "invalid UTF-8", 1);
    bad("\"\xed\xbf\xbf\"", "body", "invalid UTF-8", 1);
}

static void test_invalid_utf8_forms(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "\"\x80\"", "\"\xbf\"",                   /* lone continuation bytes */
        "\"\xc0\x80\"", "\"\xc1\xbf\"",           /* overlong 2-byte (C0 80 is the classic NUL) */
        "\"\xe0\x80\x80\"", "\"\xe0\x9f\xbf\"",   /* overlong 3-byte */
        "\"\xf0\x80\x80\x80\"", "\"\xf0\x8f\xbf\xbf\"", /* overlong 4-byte */
        "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xff\"", "\"\xfe\"",  /* > U+10FFFF */
        "\"\xc3\"", "\"\xe2\x82\"", "\"\xf0\x9f\x98\"",  /* truncated by the closing quote */
        "\"\xc3\x41\"", "\"\xe2\x41\x82\"", "\"\xf0\x9f\x41\x80\"",   /* non-continuation inside */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        bad(cases[i], "body", "invalid UTF-8", 1);
    /* Truncated at the end of the body (the parser would refuse it too). */
    bad("\"\xe2\x82", "body", "invalid UTF-8", 1);
}

/* An independent reference: decode by bit pattern, then check the rules. */
static size_t ref_utf8(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return 0;
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* Wraps bytes in quotes and compares jt_check's verdict with the reference's. */
static void compare(const unsigned char *b, size_t n)
{
    char s[16];
    s[0] = '"';
    memcpy(s + 1, b, n);
    s[n + 1] = '"';
    bool want = true;
    for (size_t p = 0; p < n;) {
        if (b[p] == '"' || b[p] == '\\' || b[p] == 0) {
            want = b[p] != 0;   /* a quote ends the string early: skip such inputs */
            if (b[p] != 0)
                return;
            break;
        }
        size_t l = ref_utf8(b + p, n - p);
        if (!l) {
            want = false;
            break;
        }
        p += l;
    }
    int rc = jt_check(s, n + 2, NULL);
    if ((rc == 0) != want)
        fail_msg("bytes %02x %02x %02x %02x (%zu): jt_check %d, reference %s", b[0], n > 1 ? b[1] : 0,
                 n > 2 ? b[2] : 0, n > 3 ? b[3] : 0, n, rc, want ? "valid" : "invalid");
}

static void test_utf8_exhaustive(void **state)
{
    (void)state;
    unsigned char b[4];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (unsigned char)x;
        compare(b, 1);
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (unsigned char)y;
            compare(b, 2);
            /* Every 3-byte sequence whose lead can start one (others fail on the lead already). */
            if (x >= 0xC0)
                for (unsigned z = 0; z < 256; z++) {
                    b[2] = (unsigned char)z;
                    compare(b, 3);
                }
        }
    }
    /* 4-byte: every lead F0..F7 with every second byte and a seeded sample of the rest. */
    srand(12);
    for (unsigned x = 0xF0; x < 0xF8; x++)
        for (unsigned y = 0; y < 256; y++)
            for (int k = 0; k < 64; k++) {
                b[0] = (unsigned char)x;
                b[1] = (unsigned char)y;
                b[2] = (unsigned char)(k < 32 ? 0x80 + k * 2 : rand());
                b[3] = (unsigned char)(k % 2 ? 0xBF : rand());
                compare(b, 4);
            }
}

static void test_deep_nesting(void **state)
{
    (void)state;
    /* Deeper than the tracked levels: still checked; the path ends with "...". */
    enum { D = 200 };
    char s[2 * D + 32];
    size_t o = 0;
    for (int i = 0; i < D; i++)
        s[o++] = '[';
    memcpy(s + o, "\"\\u0000\"", 8);
    o += 8;
    for (int i = 0; i < D; i++)
        s[o++] = ']';
    s[o] = '\0';
    jt_error e;
    assert_int_equal(check(s, &e), MA_EINVAL);
    assert_non_null(strstr(e.path, "..."));
    assert_true(strlen(e.path) < sizeof e.path);
    /* A long field name is cut in the path, and the message still fits. */
    char k[600];
    strcpy(k, "{\"");
    memset(k + 2, 'n', 500);
    strcpy(k + 502, "\\u0000\":1}");
    assert_int_equal(check(k, &e), MA_EINVAL);
    assert_true(strlen(e.path) <= 66);
}

static void test_large_ascii_body(void **state)
{
    (void)state;
    /* A base64-sized body passes; one bad byte at its end is found. */
    size_t n = 1 << 20;
    char *s = malloc(n + 64);
    assert_non_null(s);
    strcpy(s, "{\"events\":[{\"k_b64\":\"");
    size_t o = strlen(s);
    memset(s + o, 'A', n);
    o += n;
    strcpy(s + o, "\"}]}");
    assert_int_equal(jt_check(s, strlen(s), NULL), 0);
    s[o - 1] = (char)0xff;
    bad_n(s, strlen(s), "events[0].k_b64", "invalid UTF-8", (long)(o - 1));
    free(s);
}

/* The 8-bytes-at-a-time scan of ASCII runs: a bad byte, a raw NUL, an escape and the closing quote are
 * each found at every position relative to the 8-byte windows. */
static void test_ascii_run_boundaries(void **state)
{
    (void)state;
    for (int pre = 0; pre < 20; pre++)
        for (int post = 0; post < 12; post++) {
            char s[96];
            int o = snprintf(s, sizeof s, "{\"s\":\"");
            memset(s + o, 'a', (size_t)pre);
            int at = o + pre;
            memset(s + at + 1, 'b', (size_t)post);
            strcpy(s + at + 1 + post, "\"}");
            size_t n = strlen(s + at + 1) + (size_t)at + 1;
            s[at] = 'c';   /* plain ASCII: accepted */
            assert_int_equal(jt_check(s, n, NULL), 0);
            s[at] = (char)0xff;
            bad_n(s, n, "s", "invalid UTF-8", at);
            s[at] = '\0';
            bad_n(s, n, "s", "a NUL", at);
            s[at] = '"';   /* the string ends here: what follows is not JSON, but no string is refused */
            assert_int_equal(jt_check(s, n, NULL), 0);
        }
    /* an escaped NUL after an ASCII run */
    assert_int_equal(check("{\"s\":\"aaaaaaaaaaaaaaaaaaaaa\\u0000\"}", NULL), MA_EINVAL);
    assert_int_equal(check("{\"s\":\"aaaaaaaaaaaaaaaaaaaaa\\\"aaaaaaaaaaa\"}", NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_valid),
        cmocka_unit_test(test_issue_examples),
        cmocka_unit_test(test_key_paths),
        cmocka_unit_test(test_nul_forms),
        cmocka_unit_test(test_bad_hex_escapes),
        cmocka_unit_test(test_raw_nul_and_surrogates),
        cmocka_unit_test(test_invalid_utf8_forms),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_large_ascii_body),
        cmocka_unit_test(test_ascii_run_boundaries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
