/*
 * server/codec.c — the REST bodies: JSON <-> core and registry structs (see server/codec.h for the
 * design and contracts).
 *
 * Every decoder follows one shape: check the object's members against the accepted names (unknown or
 * duplicate → 400), then each field's JSON type, then its value; the first problem found is reported
 * with its full path ("queries[2].route") and nothing is returned. Batch buffers are allocated once for
 * the whole batch. Every encoder checks every cJSON_Add* and returns NULL (freeing what it built) when
 * one fails.
 */
#include "server/codec.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "server/jsontext.h"

#if !defined(__BYTE_ORDER__) || (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__ && __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__)
#error "unknown byte order"
#endif

#define MAX_EXACT_INT 9007199254740992.0   /* 2^53: larger integers are not exact in a JSON double */

int codec_fail(codec_error *err, const char *code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return MA_EINVAL;
}

/* ---- request bodies and errors ---------------------------------------------------------------- */

static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int codec_parse_body(const char *body, size_t len, cJSON **out, codec_error *err)
{
    const char *end = NULL;
    size_t i = 0;
    *out = NULL;
    while (i < len && json_space(body[i]))
        i++;
    if (i == len)
        return 0;
    jt_error je;   /* strings cJSON would cut at a NUL or pass on as invalid UTF-8 (server/jsontext.h) */
    if (jt_check(body, len, &je))
        return codec_fail(err, "bad_request", "%s", je.message);
    /* libcjson also records an error's position in a process-wide variable; two workers failing at once
     * both write it (a benign race on a value nobody reads: `end` is ours). */
    *out = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!*out)
        return codec_fail(err, "bad_json", "the body is not valid JSON (error at byte %zu)",
                          end && end >= body ? (size_t)(end - body) : (size_t)0);
    /* Only whitespace may follow the value. */
    for (const char *p = end; p && p < body + len; p++)
        if (!json_space(*p)) {
            cJSON_Delete(*out);
            *out = NULL;
            return codec_fail(err, "bad_json", "the body is not valid JSON (trailing data at byte %zu)",
                              (size_t)(p - body));
        }
    return 0;
}

static const struct {
    int rc, status;
    const char *code;
} status_table[] = {
    {MA_EINVAL, 400, "bad_request"},
    {MA_ENOTFOUND, 404, "not_found"},
    {MA_ENOVERSION, 404, "no_version"},
    {MA_EEMPTY, 404, "empty_context"},
    {MA_EEXISTS, 409, "exists"},
    {MA_ECONFLICT, 409, "version_conflict"},
    {MA_EFULL, 409, "slots_full"},
    {MA_EPRECOND, 412, "precondition_failed"},
    {MA_EPROTECTED, 423, "protected"},
    {MA_ENOMEM, 503, "overloaded"},
    {MA_ETOOBIG, 422, "session_too_large"},
};

int codec_status_of(int rc, const char *missing, const char **code)
{
    for (size_t i = 0; i < sizeof status_table / sizeof status_table[0]; i++)
        if (status_table[i].rc == rc) {
            *code = rc == MA_ENOTFOUND && missing ? missing : status_table[i].code;
            return status_table[i].status;
        }
    *code = "storage_error";   /* MA_EIO, MA_ECORRUPT, MA_EBUSY, anything else: the store */
    return 503;
}

void codec_shape_from_params(codec_shape *sh, const ma_params *p, codec_embed_fn embed)
{
    sh->heads = p->heads;
    sh->dim = p->dim;
    sh->value_dim = p->value_dim;
    sh->embed = embed;
}

static const char *type_name(const cJSON *it)
{
    if (!it)
        return "nothing";
    if (cJSON_IsString(it))
        return "a string";
    if (cJSON_IsNumber(it))
        return "a number";
    if (cJSON_IsBool(it))
        return "a boolean";
    if (cJSON_IsNull(it))
        return "null";
    if (cJSON_IsArray(it))
        return "an array";
    if (cJSON_IsObject(it))
        return "an object";
    return "an unknown value";
}

static const cJSON *member(const cJSON *obj, const char *name)
{
    return name ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
}

/* "events[3]" + "k" -> "events[3].k"; top-level (empty where) -> "k". */
static void join(char *buf, size_t len, const char *where, const char *field)
{
    if (where && *where)
        snprintf(buf, len, "%s.%s", where, field);
    else
        snprintf(buf, len, "%s", field);
}

/* obj must be an object whose members are all in allowed (NULL-terminated), each at most once. */
static int check_members(const cJSON *obj, const char *const *allowed, const char *where, codec_error *err)
{
    if (!cJSON_IsObject(obj))
        return codec_fail(err, "bad_request", "%s: expected an object, got %s", *where ? where : "body",
                          type_name(obj));
    for (const cJSON *c = obj->child; c; c = c->next) {
        char path[192];
        join(path, sizeof path, where, c->string ? c->string : "?");
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = c->string && strcmp(*a, c->string) == 0;
        if (!known) {
            char list[256] = "";
            size_t off = 0;
            for (const char *const *a = allowed; *a && off < sizeof list; a++)
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", a == allowed ? "" : ", ", *a);
            return codec_fail(err, "bad_request", "%s: unknown field, expected one of: %s", path, list);
        }
        for (const cJSON *d = obj->child; d != c; d = d->next)
            if (strcmp(d->string, c->string) == 0)
                return codec_fail(err, "bad_request", "%s: field given twice", path);
    }
    return 0;
}

int codec_check_name(const char *name, const char *where, codec_error *err)
{
    if (ma_name_valid(name))
        return 0;
    return codec_fail(err, "bad_name", "%s: \"%.*s%s\" is not a valid name, expected 1-%d characters of "
                      "[A-Za-z0-9._:-]", where, 64, name ? name : "", name && strlen(name) > 64 ? "..." : "",
                      MA_MAX_NAME);
}

int codec_get_uint(const cJSON *obj, const char *field, uint64_t lo, uint64_t hi, const char *where,
                   uint64_t *out, codec_error *err)
{
    const cJSON *it = member(obj, field);
    char path[192];
    if (!it)
        return 0;
    join(path, sizeof path, where, field);
    if (!cJSON_IsNumber(it))
        return codec_fail(err, "bad_request", "%s: expected an integer, got %s", path, type_name(it));
    double x = it->valuedouble;
    if (!isfinite(x) || x != floor(x) || x < (double)lo || x > (double)hi || x > MAX_EXACT_INT)
        return codec_fail(err, "bad_request", "%s: %g is not an integer in %llu..%llu", path, x,
                          (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)x;
    return 1;
}

/* ---- base64 --------------------------------------------------------------------------------- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Decoding table: the value of a base64 character plus one; 0 marks every other byte. */
static const unsigned char b64_dec[256] = {
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8, ['I'] = 9,
    ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16, ['Q'] = 17,
    ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] = 25,
    ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33,
    ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41,
    ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49,
    ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57,
    ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64
};

/* The main loop's tables: for each byte, its 6 bits already placed where they land in the 3 output bytes
 * (little-endian in a 32-bit word: byte 0 | byte 1 << 8 | byte 2 << 16), one table per position in the
 * quad; a foreign byte sets bit 24 instead, so OR-ing four entries decodes a quad and one compare
 * checks it. Built at compile time from B64V (the value of a character, or -1). */
#define B64V(c) ((c) >= 'A' && (c) <= 'Z' ? (c) - 'A' : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26 : \
                 (c) >= '0' && (c) <= '9' ? (c) - '0' + 52 : (c) == '+' ? 62 : (c) == '/' ? 63 : -1)
#define B64_BAD 0x01000000u
#define B64T0(c) (B64V(c) < 0 ? B64_BAD : (uint32_t)B64V(c) << 2)
#define B64T1(c) (B64V(c) < 0 ? B64_BAD : (uint32_t)B64V(c) >> 4 | ((uint32_t)B64V(c) & 15u) << 12)
#define B64T2(c) (B64V(c) < 0 ? B64_BAD : ((uint32_t)B64V(c) >> 2) << 8 | ((uint32_t)B64V(c) & 3u) << 22)
#define B64T3(c) (B64V(c) < 0 ? B64_BAD : (uint32_t)B64V(c) << 16)
#define B64R4(T, i) T(i), T(i + 1), T(i + 2), T(i + 3)
#define B64R16(T, i) B64R4(T, i), B64R4(T, i + 4), B64R4(T, i + 8), B64R4(T, i + 12)
#define B64R64(T, i) B64R16(T, i), B64R16(T, i + 16), B64R16(T, i + 32), B64R16(T, i + 48)
#define B64R256(T) B64R64(T, 0), B64R64(T, 64), B64R64(T, 128), B64R64(T, 192)
static const uint32_t b64_t0[256] = {B64R256(B64T0)}, b64_t1[256] = {B64R256(B64T1)},
                      b64_t2[256] = {B64R256(B64T2)}, b64_t3[256] = {B64R256(B64T3)};

/* Decoded size of a well-formed base64 text of len chars, or -1 if len or padding is impossible. */
static long b64_decoded_len(const char *src, size_t len)
{
    if (len % 4)
        return -1;
    size_t pads = 0;
    if (len && src[len - 1] == '=')
        pads = (len >= 2 && src[len - 2] == '=') ? 2 : 1;
    return (long)(len / 4 * 3 - pads);
}

int codec_b64_decode(const char *src, size_t len, unsigned char *dst, size_t *out_len)
{
    const unsigned char *s = (const unsigned char *)src;
    long n = b64_decoded_len(src, len);
    size_t o = 0, full = len < 4 ? 0 : len - 4;   /* quads before the last one: no padding allowed */
    if (n < 0)
        return MA_EINVAL;
    /* Four look-ups OR-ed per quad, one compare for all four characters (the b64_t* tables above; this
     * loop is the hot path of base64 ingest). */
    for (size_t i = 0; i < full; i += 4) {
        uint32_t w = b64_t0[s[i]] | b64_t1[s[i + 1]] | b64_t2[s[i + 2]] | b64_t3[s[i + 3]];
        if (w & B64_BAD)
            return MA_EINVAL;
        dst[o] = (unsigned char)w;
        dst[o + 1] = (unsigned char)(w >> 8);
        dst[o + 2] = (unsigned char)(w >> 16);
        o += 3;
    }
    if (len) {
        /* The last quad: "xy==", "xyz=" or "xyzw". */
        const unsigned char *q = s + full;
        int pads = (q[3] == '=') + (q[2] == '=' && q[3] == '=');
        uint32_t a = b64_dec[q[0]] - 1u, b = b64_dec[q[1]] - 1u, c = pads >= 2 ? 0 : b64_dec[q[2]] - 1u,
                 d = pads >= 1 ? 0 : b64_dec[q[3]] - 1u;
        if ((a | b | c | d) > 63)
            return MA_EINVAL;
        uint32_t w = a << 18 | b << 12 | c << 6 | d;
        dst[o++] = (unsigned char)(w >> 16);
        if (pads < 2)
            dst[o++] = (unsigned char)(w >> 8);
        if (pads < 1)
            dst[o++] = (unsigned char)w;
    }
    *out_len = o;
    return 0;
}

size_t codec_b64_encode(const unsigned char *src, size_t n, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)src[i] << 16;
        if (i + 1 < n)
            w |= (uint32_t)src[i + 1] << 8;
        if (i + 2 < n)
            w |= src[i + 2];
        dst[o++] = b64_chars[w >> 18 & 63];
        dst[o++] = b64_chars[w >> 12 & 63];
        dst[o++] = i + 1 < n ? b64_chars[w >> 6 & 63] : '=';
        dst[o++] = i + 2 < n ? b64_chars[w & 63] : '=';
    }
    dst[o] = '\0';
    return o;
}

/* ---- vectors --------------------------------------------------------------------------------- */

static bool float_ok(double x)
{
    return isfinite(x) && fabs(x) <= FLT_MAX;
}

static void embed_heads(const codec_shape *sh, const char *text, size_t len, int per_head, float *out)
{
    sh->embed(text, len, per_head, out);
    for (int h = 1; h < sh->heads; h++)
        memcpy(out + (size_t)h * per_head, out, sizeof(float) * (size_t)per_head);
}

static int vector_array(const cJSON *a, size_t n, const char *path, const char *what_len, float *out,
                        codec_error *err)
{
    if (!cJSON_IsArray(a))
        return codec_fail(err, "bad_request", "%s: expected an array of %zu numbers (%s), got %s", path, n,
                          what_len, type_name(a));
    size_t i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++) {
        if (i >= n)
            continue;  /* keep counting for the message */
        if (!cJSON_IsNumber(e))
            return codec_fail(err, "bad_request", "%s[%zu]: expected a number, got %s", path, i, type_name(e));
        if (!float_ok(e->valuedouble))
            return codec_fail(err, "non_finite", "%s[%zu]: %g is not a finite float32 (overflow or infinity)",
                              path, i, e->valuedouble);
        out[i] = (float)e->valuedouble;
    }
    if (i != n)
        return codec_fail(err, "dim_mismatch", "%s: expected %zu numbers (%s), got %zu", path, n, what_len, i);
    return 0;
}

static int vector_b64(const cJSON *s, size_t n, const char *path, const char *what_len, float *out,
                      codec_error *err)
{
    if (!cJSON_IsString(s))
        return codec_fail(err, "bad_request", "%s: expected a base64 string, got %s", path, type_name(s));
    size_t len = strlen(s->valuestring), got;
    long bytes = b64_decoded_len(s->valuestring, len);
    if (bytes < 0)
        return codec_fail(err, "bad_request", "%s: not valid base64 (length %zu is not a multiple of 4)", path,
                          len);
    if ((size_t)bytes != n * sizeof(float))
        return codec_fail(err, "dim_mismatch", "%s: expected %zu bytes (%zu little-endian float32, %s), got %ld",
                          path, n * sizeof(float), n, what_len, bytes);
    if (codec_b64_decode(s->valuestring, len, (unsigned char *)out, &got) != 0)
        return codec_fail(err, "bad_request", "%s: not valid base64 (standard alphabet with padding expected)",
                          path);
    for (size_t i = 0; i < n; i++) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        uint32_t w;
        memcpy(&w, out + i, 4);
        w = __builtin_bswap32(w);
        memcpy(out + i, &w, 4);
#endif
        if (!float_ok(out[i]))
            return codec_fail(err, "non_finite", "%s: float %zu is not finite (%g)", path, i, (double)out[i]);
    }
    return 0;
}

int codec_vector(const cJSON *obj, const codec_vec_fields *f, const codec_shape *sh, int per_head,
                 const char *what_len, const char *where, float *out, codec_error *err)
{
    const cJSON *a = member(obj, f->arr), *b = member(obj, f->b64), *t = member(obj, f->text);
    size_t n = (size_t)sh->heads * (size_t)per_head;
    char path[192];
    int given = (a != NULL) + (b != NULL) + (t != NULL);

    if (given == 0)
        return 0;
    if (given > 1) {
        return codec_fail(err, "bad_request", "%s: give only one of %s, %s%s%s", *where ? where : "body",
                          f->arr, f->b64, f->text ? " or " : "", f->text ? f->text : "");
    }
    if (a) {
        join(path, sizeof path, where, f->arr);
        return vector_array(a, n, path, what_len, out, err) ? MA_EINVAL : 1;
    }
    if (b) {
        join(path, sizeof path, where, f->b64);
        return vector_b64(b, n, path, what_len, out, err) ? MA_EINVAL : 1;
    }
    join(path, sizeof path, where, f->text);
    if (!cJSON_IsString(t))
        return codec_fail(err, "bad_request", "%s: expected a string, got %s", path, type_name(t));
    if (!*t->valuestring)
        return codec_fail(err, "bad_request", "%s: empty text, expected some words", path);
    if (!sh->embed)
        return codec_fail(err, "bad_request", "%s: text is not accepted here", path);
    embed_heads(sh, t->valuestring, strlen(t->valuestring), per_head, out);
    return 1;
}

/* ---- session config -------------------------------------------------------------------------- */

static int get_int(const cJSON *obj, const char *field, const char *where, int *out, codec_error *err)
{
    const cJSON *it = member(obj, field);
    char path[96];
    if (!it)
        return 0;
    join(path, sizeof path, where, field);
    if (!cJSON_IsNumber(it))
        return codec_fail(err, "bad_config", "%s: expected an integer, got %s", path, type_name(it));
    double x = it->valuedouble;
    if (!isfinite(x) || x != floor(x))
        return codec_fail(err, "bad_config", "%s: expected an integer, got %g", path, x);
    if (x < -2147483648.0 || x > 2147483647.0)
        return codec_fail(err, "bad_config", "%s: %g is out of range (not a 32-bit integer)", path, x);
    *out = (int)x;
    return 0;
}

static int get_real(const cJSON *obj, const char *field, const char *where, double *out, codec_error *err)
{
    const cJSON *it = member(obj, field);
    char path[96];
    if (!it)
        return 0;
    join(path, sizeof path, where, field);
    if (!cJSON_IsNumber(it))
        return codec_fail(err, "bad_config", "%s: expected a number, got %s", path, type_name(it));
    if (!isfinite(it->valuedouble))
        return codec_fail(err, "bad_config", "%s: expected a finite number (overflow?)", path);
    *out = it->valuedouble;
    return 0;
}

static int get_enum(const cJSON *obj, const char *field, const char *where, const char *accepted,
                    int (*parse)(const char *, void *), void *out, codec_error *err)
{
    const cJSON *it = member(obj, field);
    char path[96];
    if (!it)
        return 0;
    join(path, sizeof path, where, field);
    if (!cJSON_IsString(it))
        return codec_fail(err, "bad_config", "%s: expected a string (%s), got %s", path, accepted, type_name(it));
    if (parse(it->valuestring, out) != 0)
        return codec_fail(err, "bad_config", "%s: \"%.64s\" is not accepted, expected %s", path, it->valuestring,
                          accepted);
    return 0;
}

/* Adapters: the enum parsers have typed out-parameters. */
static int parse_backbone(const char *n, void *o) { return ma_backbone_parse(n, o); }
static int parse_feature(const char *n, void *o) { return ma_feature_parse(n, o); }
static int parse_selector(const char *n, void *o) { return ma_selector_parse(n, o); }
static int parse_eviction(const char *n, void *o) { return ma_eviction_parse(n, o); }
static int parse_overwrite(const char *n, void *o) { return ma_overwrite_parse(n, o); }
static int parse_slot_read(const char *n, void *o) { return ma_slot_read_parse(n, o); }

int codec_params_from_json(const cJSON *obj, ma_params *out, codec_error *err)
{
    static const char *const top[] = {"heads", "dim", "value_dim", "slots", "chunk", "topk", "window",
                                      "backbone", "vla", "delta", "route_threshold", "selector", "slot_policy",
                                      NULL};
    static const char *const vla[] = {"lambda0", "period", "refresh", "feature", "penalty_scale", NULL};
    static const char *const delta[] = {"beta", NULL};
    static const char *const policy[] = {"eviction", "overwrite", "alpha", "read", "k", "temperature", NULL};
    ma_params p;
    int rc;

    ma_params_default(&p);
    if (obj && !cJSON_IsNull(obj)) {
        if (check_members(obj, top, "", err))
            return err->code = "bad_config", MA_EINVAL;
        p.value_dim = 0;  /* 0: not given, = dim below */
        if ((rc = get_int(obj, "heads", "", &p.heads, err)) || (rc = get_int(obj, "dim", "", &p.dim, err)) ||
            (rc = get_int(obj, "value_dim", "", &p.value_dim, err)) ||
            (rc = get_int(obj, "slots", "", &p.slots, err)) || (rc = get_int(obj, "chunk", "", &p.chunk, err)) ||
            (rc = get_int(obj, "topk", "", &p.topk, err)) || (rc = get_int(obj, "window", "", &p.window, err)) ||
            (rc = get_real(obj, "route_threshold", "", &p.route_threshold, err)) ||
            (rc = get_enum(obj, "backbone", "", "vla, linear, delta or none", parse_backbone, &p.backbone, err)) ||
            (rc = get_enum(obj, "selector", "", "index or chunks", parse_selector, &p.selector, err)))
            return rc;
        if (!member(obj, "value_dim"))
            p.value_dim = p.dim;
        const cJSON *v = member(obj, "vla"), *d = member(obj, "delta");
        if (v && !cJSON_IsNull(v)) {
            if (check_members(v, vla, "vla", err))
                return err->code = "bad_config", MA_EINVAL;
            if ((rc = get_real(v, "lambda0", "vla", &p.vla.lambda0, err)) ||
                (rc = get_int(v, "period", "vla", &p.vla.period, err)) ||
                (rc = get_real(v, "refresh", "vla", &p.vla.refresh, err)) ||
                (rc = get_real(v, "penalty_scale", "vla", &p.vla.penalty_scale, err)) ||
                (rc = get_enum(v, "feature", "vla", "identity or elu1", parse_feature, &p.vla.feature, err)))
                return rc;
        }
        if (d && !cJSON_IsNull(d)) {
            if (check_members(d, delta, "delta", err))
                return err->code = "bad_config", MA_EINVAL;
            if ((rc = get_real(d, "beta", "delta", &p.delta.beta, err)))
                return rc;
        }
        const cJSON *sp = member(obj, "slot_policy");
        if (sp && !cJSON_IsNull(sp)) {
            ma_slot_policy *pp = &p.slot_policy;
            if (check_members(sp, policy, "slot_policy", err))
                return err->code = "bad_config", MA_EINVAL;
            if ((rc = get_enum(sp, "eviction", "slot_policy", "lru or score", parse_eviction, &pp->eviction, err)) ||
                (rc = get_enum(sp, "overwrite", "slot_policy", "replace or blend", parse_overwrite, &pp->overwrite,
                               err)) ||
                (rc = get_real(sp, "alpha", "slot_policy", &pp->alpha, err)) ||
                (rc = get_enum(sp, "read", "slot_policy", "best or topk", parse_slot_read, &pp->read, err)) ||
                (rc = get_int(sp, "k", "slot_policy", &pp->k, err)) ||
                (rc = get_real(sp, "temperature", "slot_policy", &pp->temperature, err)))
                return rc;
        }
    }
    char msg[256];
    if (ma_params_validate(&p, msg, sizeof msg) != 0)
        return codec_fail(err, "bad_config", "%s", msg);
    *out = p;
    return 0;
}

cJSON *codec_params_to_json(const ma_params *p)
{
    cJSON *o = cJSON_CreateObject(), *v = NULL, *d = NULL, *sp = NULL;
    const ma_slot_policy *pp = &p->slot_policy;
    if (!o)
        return NULL;
    bool ok = cJSON_AddNumberToObject(o, "heads", p->heads) && cJSON_AddNumberToObject(o, "dim", p->dim) &&
              cJSON_AddNumberToObject(o, "value_dim", p->value_dim) &&
              cJSON_AddNumberToObject(o, "slots", p->slots) && cJSON_AddNumberToObject(o, "chunk", p->chunk) &&
              cJSON_AddNumberToObject(o, "topk", p->topk) && cJSON_AddNumberToObject(o, "window", p->window) &&
              cJSON_AddStringToObject(o, "backbone", ma_backbone_name(p->backbone)) &&
              (v = cJSON_AddObjectToObject(o, "vla")) && cJSON_AddNumberToObject(v, "lambda0", p->vla.lambda0) &&
              cJSON_AddNumberToObject(v, "period", p->vla.period) &&
              cJSON_AddNumberToObject(v, "refresh", p->vla.refresh) &&
              cJSON_AddStringToObject(v, "feature", ma_feature_name(p->vla.feature)) &&
              cJSON_AddNumberToObject(v, "penalty_scale", p->vla.penalty_scale) &&
              (d = cJSON_AddObjectToObject(o, "delta")) && cJSON_AddNumberToObject(d, "beta", p->delta.beta) &&
              cJSON_AddNumberToObject(o, "route_threshold", p->route_threshold) &&
              cJSON_AddStringToObject(o, "selector", ma_selector_name(p->selector)) &&
              (sp = cJSON_AddObjectToObject(o, "slot_policy")) &&
              cJSON_AddStringToObject(sp, "eviction", ma_eviction_name(pp->eviction)) &&
              cJSON_AddStringToObject(sp, "overwrite", ma_overwrite_name(pp->overwrite)) &&
              cJSON_AddNumberToObject(sp, "alpha", pp->alpha) &&
              cJSON_AddStringToObject(sp, "read", ma_slot_read_name(pp->read)) &&
              cJSON_AddNumberToObject(sp, "k", pp->k) &&
              cJSON_AddNumberToObject(sp, "temperature", pp->temperature);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- batches --------------------------------------------------------------------------------- */

/* body = {"<field>": [...]} with nothing else; returns the array and its length. */
static int batch_array(const cJSON *body, const char *field, const char *other, size_t max, const cJSON **arr,
                       size_t *n, codec_error *err)
{
    const char *const allowed[] = {field, other, NULL};   /* other: a second top-level member, or NULL */
    if (check_members(body, allowed, "", err))
        return MA_EINVAL;
    const cJSON *a = member(body, field);
    if (!a)
        return codec_fail(err, "bad_request", "%s: missing, expected an array", field);
    if (!cJSON_IsArray(a))
        return codec_fail(err, "bad_request", "%s: expected an array, got %s", field, type_name(a));
    size_t count = 0;
    for (const cJSON *e = a->child; e; e = e->next)
        count++;
    if (count > max)
        return codec_fail(err, "bad_request", "%s: %zu elements, at most %zu per request", field, count, max);
    *arr = a;
    *n = count;
    return 0;
}

static int get_slot_name(const cJSON *obj, const char *where, char **out, codec_error *err)
{
    const cJSON *s = member(obj, "slot");
    char path[96];
    if (!s || cJSON_IsNull(s))
        return 0;
    join(path, sizeof path, where, "slot");
    if (!cJSON_IsString(s))
        return codec_fail(err, "bad_request", "%s: expected a string, got %s", path, type_name(s));
    if (codec_check_name(s->valuestring, path, err))
        return MA_EINVAL;
    if (!(*out = strdup(s->valuestring)))
        return codec_fail(err, "bad_request", "%s: out of memory", path);
    return 0;
}

static int get_bool(const cJSON *obj, const char *field, const char *where, bool *out, codec_error *err)
{
    const cJSON *it = member(obj, field);
    char path[96];
    if (!it)
        return 0;
    join(path, sizeof path, where, field);
    if (!cJSON_IsBool(it))
        return codec_fail(err, "bad_request", "%s: expected true or false, got %s", path, type_name(it));
    *out = cJSON_IsTrue(it);
    return 0;
}

/* An "importance" member: a number in [0, 1] (*has false when absent). */
static int get_importance(const cJSON *obj, const char *where, bool *has, double *out, codec_error *err)
{
    const cJSON *it = member(obj, "importance");
    char path[96];
    if (!it)
        return 0;
    join(path, sizeof path, where, "importance");
    if (!cJSON_IsNumber(it))
        return codec_fail(err, "bad_request", "%s: expected a number in [0, 1], got %s", path, type_name(it));
    if (!(it->valuedouble >= 0 && it->valuedouble <= 1))
        return codec_fail(err, "bad_request", "%s: %g is out of range, expected a number in [0, 1]", path,
                          it->valuedouble);
    *has = true;
    *out = it->valuedouble;
    return 0;
}

/* A payload member as JSON text (NULL when absent or null). */
static int get_payload(const cJSON *obj, const char *where, char **out, codec_error *err)
{
    const cJSON *p = member(obj, "payload");
    char path[96];
    if (!p || cJSON_IsNull(p))
        return 0;
    join(path, sizeof path, where, "payload");
    if (!(*out = cJSON_PrintUnformatted(p)))
        return codec_fail(err, "bad_request", "%s: out of memory", path);
    return 0;
}

void codec_events_clear(codec_events *e)
{
    for (size_t i = 0; e->payloads && i < e->n; i++)
        cJSON_free(e->payloads[i]);
    for (size_t i = 0; e->slots && i < e->n; i++)
        free(e->slots[i]);
    free(e->payloads);
    free(e->slots);
    free(e->importance);
    free(e->ev);
    if (!e->borrowed) {
        free(e->k);
        free(e->v);
    }
    memset(e, 0, sizeof *e);
}

/* n float32 of src (little-endian, any alignment) into out in host order; the index of the first one that
 * is not finite (exponent all ones: infinity or NaN), or n. */
static size_t floats_le(const unsigned char *src, size_t n, float *out)
{
    size_t bad = n;
    for (size_t i = 0; i < n; i++) {
        uint32_t w = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 | (uint32_t)src[4 * i + 2] << 16 |
                     (uint32_t)src[4 * i + 3] << 24;
        memcpy(out + i, &w, 4);
        if ((w & 0x7f800000u) == 0x7f800000u && bad == n)
            bad = i;
    }
    return bad;
}

/* The index of the first float of x[0..n) that is not finite, or n (the exponent bits: one pass without
 * branches the compiler can vectorise). */
static size_t floats_first_bad(const float *x, size_t n)
{
    const size_t step = 256;
    for (size_t i = 0; i < n; i += step) {
        size_t m = n - i < step ? n - i : step;
        uint32_t any = 0;
        for (size_t j = 0; j < m; j++) {
            uint32_t w;
            memcpy(&w, x + i + j, 4);
            any |= (uint32_t)((w & 0x7f800000u) == 0x7f800000u);
        }
        if (any)
            for (size_t j = 0; j < m; j++)
                if (!isfinite(x[i + j]))
                    return i + j;
    }
    return n;
}

static uint32_t le32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

int codec_events_decode_binary(const char *body, size_t len, const codec_shape *sh, size_t max_events,
                               codec_events *out, codec_error *err)
{
    codec_events e = {0};
    memset(out, 0, sizeof *out);
    if (len < CODEC_BIN_HEADER)
        return codec_fail(err, "bad_request", "binary batch: the body has %zu bytes, expected at least the "
                          "%d-byte header (\"%s\", then n, heads, dim, value_dim as little-endian uint32)", len,
                          CODEC_BIN_HEADER, CODEC_BIN_MAGIC);
    if (memcmp(body, CODEC_BIN_MAGIC, 4) != 0)
        return codec_fail(err, "bad_request", "binary batch: bytes 0-3 are not the magic \"%s\" (the header "
                          "is \"%s\", then n, heads, dim, value_dim as little-endian uint32)", CODEC_BIN_MAGIC,
                          CODEC_BIN_MAGIC);
    uint32_t n = le32(body + 4), heads = le32(body + 8), dim = le32(body + 12), value_dim = le32(body + 16);
    if (n > max_events)
        return codec_fail(err, "bad_request", "binary batch: n is %" PRIu32 " events, at most %zu per request", n,
                          max_events);
    if (heads != (uint32_t)sh->heads || dim != (uint32_t)sh->dim || value_dim != (uint32_t)sh->value_dim)
        return codec_fail(err, "dim_mismatch", "binary batch: the header says heads %" PRIu32 ", dim %" PRIu32
                          ", value_dim %" PRIu32 "; the session has heads %d, dim %d, value_dim %d", heads, dim,
                          value_dim, sh->heads, sh->dim, sh->value_dim);
    const size_t kn = (size_t)sh->heads * sh->dim, vn = (size_t)sh->heads * sh->value_dim;
    const size_t want = CODEC_BIN_HEADER + sizeof(float) * (size_t)n * (kn + vn);
    if (len != want)
        return codec_fail(err, "bad_request", "binary batch: the body has %zu bytes, expected %zu for n = %" PRIu32
                          " (20 + 4*n*heads*(dim+value_dim))", len, want, n);
    const char *kb = body + CODEC_BIN_HEADER, *vb = kb + sizeof(float) * (size_t)n * kn;
    e.n = n;
    e.ev = calloc(n ? n : 1, sizeof *e.ev);
    e.payloads = calloc(n ? n : 1, sizeof *e.payloads);
    e.slots = calloc(n ? n : 1, sizeof *e.slots);
    e.importance = malloc((n ? n : 1) * sizeof *e.importance);
    if (!e.ev || !e.payloads || !e.slots || !e.importance) {
        codec_fail(err, "bad_request", "binary batch: out of memory for %" PRIu32 " events", n);
        goto fail;
    }
    size_t bad_k, bad_v;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if ((uintptr_t)kb % _Alignof(float) == 0) {   /* the floats as sent: read in place */
        e.borrowed = true;
        e.k = (float *)(uintptr_t)kb;
        e.v = (float *)(uintptr_t)vb;
        bad_k = floats_first_bad(e.k, (size_t)n * kn);
        bad_v = floats_first_bad(e.v, (size_t)n * vn);
    } else
#endif
    {
        e.k = malloc(sizeof(float) * (n ? (size_t)n * kn : 1));
        e.v = malloc(sizeof(float) * (n ? (size_t)n * vn : 1));
        if (!e.k || !e.v) {
            codec_fail(err, "bad_request", "binary batch: out of memory for %" PRIu32 " events", n);
            goto fail;
        }
        bad_k = floats_le((const unsigned char *)kb, (size_t)n * kn, e.k);
        bad_v = floats_le((const unsigned char *)vb, (size_t)n * vn, e.v);
    }
    if (bad_k < (size_t)n * kn || bad_v < (size_t)n * vn) {
        bool in_k = bad_k < (size_t)n * kn;
        size_t at = in_k ? bad_k : bad_v, per = in_k ? kn : vn;
        codec_fail(err, "non_finite", "binary batch: %s of event %zu, float %zu is not finite (%g)", in_k ? "k" : "v",
                   at / per, at % per, (double)(in_k ? e.k : e.v)[at]);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        e.importance[i] = MA_IMPORTANCE_NONE;
        e.ev[i] = (ma_event){.k = e.k + i * kn, .v = e.v + i * vn};
    }
    *out = e;
    return 0;
fail:
    codec_events_clear(&e);
    return MA_EINVAL;
}

/* The len characters at s as base64 of exactly n finite float32, written to out: true; false for anything
 * else (the general path then decodes the event again and words the problem). */
static bool b64_floats(const char *s, size_t len, size_t n, float *out)
{
    size_t got;
    if (b64_decoded_len(s, len) != (long)(n * sizeof(float)) || codec_b64_decode(s, len, (unsigned char *)out, &got) != 0)
        return false;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        uint32_t w;
        memcpy(&w, out + i, 4);
        w = __builtin_bswap32(w);
        memcpy(out + i, &w, 4);
    }
#endif
    return floats_first_bad(out, n) == n;
}

/* Both strings of the common event {"k_b64": ..., "v_b64": ...}, decoded without the path texts that only
 * errors need (b64_floats). */
static bool b64_floats_fast(const cJSON *s, size_t n, float *out)
{
    return cJSON_IsString(s) && b64_floats(s->valuestring, strlen(s->valuestring), n, out);
}

/* An event that is exactly {"k_b64", "v_b64"} (either order), decoded: true; false when it is anything
 * else or anything is wrong with it. */
static bool event_b64_fast(const cJSON *it, size_t kn, size_t vn, float *k, float *v)
{
    const cJSON *a = cJSON_IsObject(it) ? it->child : NULL, *b = a ? a->next : NULL;
    if (!b || b->next || !a->string || !b->string)
        return false;
    if (strcmp(a->string, "v_b64") == 0) {
        const cJSON *t = a;
        a = b;
        b = t;
    }
    return strcmp(a->string, "k_b64") == 0 && strcmp(b->string, "v_b64") == 0 && b64_floats_fast(a, kn, k) &&
           b64_floats_fast(b, vn, v);
}

/* ---- the raw fast path of codec_events_decode_simple ---- */

static const char *skip_space(const char *p, const char *end)
{
    while (p < end && json_space(*p))
        p++;
    return p;
}

/* p at `"name"` (exactly, no escapes): past it, else NULL. */
static const char *quoted(const char *p, const char *end, const char *name)
{
    size_t n = strlen(name);
    if ((size_t)(end - p) < n + 2 || p[0] != '"' || memcmp(p + 1, name, n) != 0 || p[n + 1] != '"')
        return NULL;
    return p + n + 2;
}

/* One event {"k_b64":"...","v_b64":"..."} (either order, any JSON whitespace) at p, decoded into k and v:
 * past its '}', else NULL. The strings may hold only base64 characters (no escapes): the decoder refuses
 * any other byte, a quote included. */
static const char *raw_event(const char *p, const char *end, size_t kn, size_t vn, float *k, float *v)
{
    bool seen[2] = {false, false};
    p = skip_space(p, end);
    if (p >= end || *p++ != '{')
        return NULL;
    for (int f = 0; f < 2; f++) {
        p = skip_space(p, end);
        const char *q = quoted(p, end, "k_b64");
        int which = 0;
        if (!q) {
            q = quoted(p, end, "v_b64");
            which = 1;
        }
        if (!q || seen[which])
            return NULL;
        seen[which] = true;
        p = skip_space(q, end);
        if (p >= end || *p++ != ':')
            return NULL;
        p = skip_space(p, end);
        if (p >= end || *p++ != '"')
            return NULL;
        /* the text of n floats has exactly 4*ceil(4n/3) characters; the decoder checks each of them */
        size_t n = which ? vn : kn, tl = 4 * ((n * sizeof(float) + 2) / 3);
        if ((size_t)(end - p) <= tl || p[tl] != '"' || !b64_floats(p, tl, n, which ? v : k))
            return NULL;
        p += tl;
        p = skip_space(p + 1, end);
        if (p >= end || *p++ != (f == 0 ? ',' : '}'))
            return NULL;
    }
    return p;
}

int codec_events_decode_simple(const char *body, size_t len, const codec_shape *sh, size_t max_events,
                               codec_events *out)
{
    const size_t kn = (size_t)sh->heads * sh->dim, vn = (size_t)sh->heads * sh->value_dim;
    /* the shortest event: {"k_b64":"","v_b64":""} plus the two texts; it bounds the count */
    const size_t least = 23 + 4 * ((kn * sizeof(float) + 2) / 3) + 4 * ((vn * sizeof(float) + 2) / 3);
    const char *p = body, *end = body + len;
    codec_events e = {0};
    memset(out, 0, sizeof *out);
    size_t cap = len / least + 1;
    if (cap > max_events)
        cap = max_events;
    p = skip_space(p, end);
    if (p >= end || *p++ != '{')
        return 0;
    p = skip_space(p, end);
    if (!(p = quoted(p, end, "events")))
        return 0;
    p = skip_space(p, end);
    if (p >= end || *p++ != ':')
        return 0;
    p = skip_space(p, end);
    if (p >= end || *p++ != '[')
        return 0;
    e.ev = calloc(cap ? cap : 1, sizeof *e.ev);
    e.k = malloc(sizeof(float) * (cap ? cap * kn : 1));
    e.v = malloc(sizeof(float) * (cap ? cap * vn : 1));
    e.payloads = calloc(cap ? cap : 1, sizeof *e.payloads);
    e.slots = calloc(cap ? cap : 1, sizeof *e.slots);
    e.importance = malloc((cap ? cap : 1) * sizeof *e.importance);
    if (!e.ev || !e.k || !e.v || !e.payloads || !e.slots || !e.importance)
        goto general;
    p = skip_space(p, end);
    if (p < end && *p == ']') {
        p++;
    } else {
        for (;;) {
            if (e.n == cap)
                goto general;
            float *k = e.k + e.n * kn, *v = e.v + e.n * vn;
            if (!(p = raw_event(p, end, kn, vn, k, v)))
                goto general;
            e.importance[e.n] = MA_IMPORTANCE_NONE;
            e.ev[e.n] = (ma_event){.k = k, .v = v};
            e.n++;
            p = skip_space(p, end);
            if (p < end && *p == ',') {
                p++;
                continue;
            }
            if (p < end && *p == ']') {
                p++;
                break;
            }
            goto general;
        }
    }
    p = skip_space(p, end);
    if (p >= end || *p++ != '}' || skip_space(p, end) != end)
        goto general;
    *out = e;
    return 1;
general:
    codec_events_clear(&e);
    return 0;
}

int codec_events_decode(const cJSON *body, const codec_shape *sh, size_t max_events, codec_events *out,
                        codec_error *err)
{
    static const char *const allowed[] = {"k", "k_b64", "text", "v", "v_b64", "payload", "slot", "protect",
                                          "importance", NULL};
    static const codec_vec_fields kf = {"k", "k_b64", "text"}, vf = {"v", "v_b64", NULL};
    const size_t kn = (size_t)sh->heads * sh->dim, vn = (size_t)sh->heads * sh->value_dim;
    codec_events e = {0};
    const cJSON *arr;
    size_t n, i = 0;

    memset(out, 0, sizeof *out);
    if (batch_array(body, "events", "expect_length", max_events, &arr, &n, err))
        return MA_EINVAL;
    int has = codec_get_uint(body, "expect_length", 0, UINT64_MAX, "", &e.expect_length, err);
    if (has < 0)
        return MA_EINVAL;
    e.has_expect_length = has == 1;
    e.n = n;
    e.ev = calloc(n ? n : 1, sizeof *e.ev);
    e.k = malloc(sizeof(float) * (n ? n * kn : 1));
    e.v = malloc(sizeof(float) * (n ? n * vn : 1));
    e.payloads = calloc(n ? n : 1, sizeof *e.payloads);
    e.slots = calloc(n ? n : 1, sizeof *e.slots);
    e.importance = malloc((n ? n : 1) * sizeof *e.importance);
    if (!e.ev || !e.k || !e.v || !e.payloads || !e.slots || !e.importance) {
        codec_fail(err, "bad_request", "events: out of memory for %zu events", n);
        goto fail;
    }
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char where[48];
        float *k = e.k + i * kn, *v = e.v + i * vn;
        bool protect = false, has_importance = false;
        double importance = 0;
        int r;
        if (event_b64_fast(it, kn, vn, k, v)) {   /* the common shape: no path texts, no member look-ups */
            e.importance[i] = MA_IMPORTANCE_NONE;
            e.ev[i] = (ma_event){.k = k, .v = v};
            continue;
        }
        snprintf(where, sizeof where, "events[%zu]", i);
        if (check_members(it, allowed, where, err))
            goto fail;
        if ((r = codec_vector(it, &kf, sh, sh->dim, "heads*dim", where, k, err)) < 0)
            goto fail;
        if (r == 0) {
            codec_fail(err, "bad_request", "%s: missing key, expected k, k_b64 or text", where);
            goto fail;
        }
        if (get_payload(it, where, &e.payloads[i], err))
            goto fail;
        if ((r = codec_vector(it, &vf, sh, sh->value_dim, "heads*value_dim", where, v, err)) < 0)
            goto fail;
        if (r == 0) {
            const cJSON *p = member(it, "payload");
            if (!cJSON_IsString(p) || !*p->valuestring || !sh->embed) {
                codec_fail(err, "bad_request", "%s: missing value, expected v or v_b64 (or a string payload "
                           "to embed)", where);
                goto fail;
            }
            embed_heads(sh, p->valuestring, strlen(p->valuestring), sh->value_dim, v);
        }
        if (get_slot_name(it, where, &e.slots[i], err) || get_bool(it, "protect", where, &protect, err))
            goto fail;
        if (protect && !e.slots[i]) {
            codec_fail(err, "bad_request", "%s.protect: needs slot (protect applies to the slot written)", where);
            goto fail;
        }
        if (get_importance(it, where, &has_importance, &importance, err))
            goto fail;
        if (has_importance && !e.slots[i]) {
            codec_fail(err, "bad_request", "%s.importance: needs slot (importance is the written slot version's)",
                       where);
            goto fail;
        }
        e.importance[i] = has_importance ? importance : MA_IMPORTANCE_NONE;
        e.ev[i] = (ma_event){.k = k, .v = v, .payload = e.payloads[i], .slot = e.slots[i], .protect = protect};
    }
    *out = e;
    return 0;
fail:
    codec_events_clear(&e);
    return MA_EINVAL;
}

void codec_queries_clear(codec_queries *q)
{
    for (size_t i = 0; q->slots && i < q->n; i++)
        free(q->slots[i]);
    free(q->slots);
    free(q->q);
    free(q->vecs);
    memset(q, 0, sizeof *q);
}

int codec_queries_decode(const cJSON *body, const codec_shape *sh, size_t max_queries, codec_queries *out,
                         codec_error *err)
{
    static const char *const allowed[] = {"q", "q_b64", "text", "slot", "version", "route", "topk",
                                          "include_superseded", NULL};
    static const codec_vec_fields qf = {"q", "q_b64", "text"};
    const size_t qn = (size_t)sh->heads * sh->dim;
    codec_queries qs = {0};
    const cJSON *arr;
    size_t n, i = 0;

    memset(out, 0, sizeof *out);
    if (batch_array(body, "queries", NULL, max_queries, &arr, &n, err))
        return MA_EINVAL;
    qs.n = n;
    qs.q = calloc(n ? n : 1, sizeof *qs.q);
    qs.vecs = malloc(sizeof(float) * (n ? n * qn : 1));
    qs.slots = calloc(n ? n : 1, sizeof *qs.slots);
    if (!qs.q || !qs.vecs || !qs.slots) {
        codec_fail(err, "bad_request", "queries: out of memory for %zu queries", n);
        goto fail;
    }
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char where[48];
        ma_query *q = &qs.q[i];
        uint64_t version = 0, topk = 0;
        int r;
        snprintf(where, sizeof where, "queries[%zu]", i);
        if (check_members(it, allowed, where, err))
            goto fail;
        if ((r = codec_vector(it, &qf, sh, sh->dim, "heads*dim", where, qs.vecs + i * qn, err)) < 0)
            goto fail;
        q->q = r ? qs.vecs + i * qn : NULL;
        if (get_slot_name(it, where, &qs.slots[i], err))
            goto fail;
        q->slot = qs.slots[i];
        if (!q->q && !q->slot) {
            codec_fail(err, "bad_request", "%s: expected a query vector (q, q_b64 or text) or a slot name", where);
            goto fail;
        }
        if (codec_get_uint(it, "version", 1, (uint64_t)MAX_EXACT_INT, where, &version, err) < 0 ||
            codec_get_uint(it, "topk", 1, MA_MAX_TOPK, where, &topk, err) < 0)
            goto fail;
        if (version && !q->slot) {
            codec_fail(err, "bad_request", "%s.version: needs slot (a version of which slot?)", where);
            goto fail;
        }
        q->version = version;
        q->topk = (int)topk;
        q->route = MA_ROUTE_AUTO;
        if (get_bool(it, "include_superseded", where, &q->include_superseded, err))
            goto fail;
        const cJSON *rt = member(it, "route");
        if (rt) {
            if (!cJSON_IsString(rt) || ma_route_parse(rt->valuestring, &q->route) != 0) {
                codec_fail(err, "bad_request", "%s.route: %s%.32s%s is not a route, expected auto, slot, sparse, "
                           "full, state or window", where, cJSON_IsString(rt) ? "\"" : "",
                           cJSON_IsString(rt) ? rt->valuestring : type_name(rt), cJSON_IsString(rt) ? "\"" : "");
                goto fail;
            }
        }
        if (!q->q && q->route != MA_ROUTE_AUTO && q->route != MA_ROUTE_SLOT) {
            codec_fail(err, "bad_request", "%s: route %s needs a query vector (q, q_b64 or text)", where,
                       ma_route_name(q->route));
            goto fail;
        }
    }
    *out = qs;
    return 0;
fail:
    codec_queries_clear(&qs);
    return MA_EINVAL;
}

/* ---- encoders -------------------------------------------------------------------------------- */

cJSON *codec_floats_to_json(const float *x, size_t n)
{
    /* "-1.23456789e-38," is 16 chars; 18 per number leaves room. */
    size_t cap = n * 18 + 3, off = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    buf[off++] = '[';
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf[off++] = ',';
        off += (size_t)snprintf(buf + off, cap - off, "%.9g", (double)x[i]);
    }
    buf[off++] = ']';
    buf[off] = '\0';
    cJSON *r = cJSON_CreateRaw(buf);
    free(buf);
    return r;
}

void codec_time_format(int64_t ms, char *buf, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static bool add_time(cJSON *o, const char *field, int64_t ms)
{
    char buf[40];
    codec_time_format(ms, buf, sizeof buf);
    return cJSON_AddStringToObject(o, field, buf) != NULL;
}

/* payload JSON text verbatim, or null */
static bool add_payload(cJSON *o, const char *payload)
{
    cJSON *p = payload ? cJSON_CreateRaw(payload) : cJSON_CreateNull();
    if (p && cJSON_AddItemToObject(o, "payload", p))
        return true;
    cJSON_Delete(p);
    return false;
}

static bool add_event(cJSON *o, const char *field, int64_t event)
{
    return (event >= 0 ? cJSON_AddNumberToObject(o, field, (double)event) : cJSON_AddNullToObject(o, field)) != NULL;
}

static bool add_floats(cJSON *o, const char *field, const float *x, size_t n)
{
    cJSON *a = codec_floats_to_json(x, n);
    if (a && cJSON_AddItemToObject(o, field, a))
        return true;
    cJSON_Delete(a);
    return false;
}

/* "chunks": the array as one raw JSON text (the same bytes cJSON prints for an array of numbers): a full
 * read of a 2M-event session lists 32,768 chunks, and one cJSON node each made a batch of 64 such answers
 * ~170 MB of nodes, past any --memory budget; the text is ~200 KB an answer. */
static bool add_chunks(cJSON *o, const uint32_t *chunks, size_t n)
{
    char *t = malloc(n * 11 + 3), *p = t;
    if (!t)
        return false;
    *p++ = '[';
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, i ? ",%" PRIu32 : "%" PRIu32, chunks[i]);
    *p++ = ']';
    *p = '\0';
    bool ok = cJSON_AddRawToObject(o, "chunks", t) != NULL;
    free(t);
    return ok;
}

cJSON *codec_answer_to_json(const ma_answer *a, size_t value_len)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "route", ma_route_name(a->route)) &&
              add_floats(o, "v", a->v, value_len) &&
              cJSON_AddNumberToObject(o, "score", isfinite(a->score) ? a->score : 0.0);
    if (ok && a->has_slot)
        ok = cJSON_AddStringToObject(o, "slot", a->slot) && cJSON_AddNumberToObject(o, "version", (double)a->version) &&
             (!a->has_importance || cJSON_AddNumberToObject(o, "importance", a->importance));
    if (ok && a->n_contrib) {
        cJSON *c = cJSON_AddArrayToObject(o, "contributions");
        ok = c != NULL;
        for (size_t i = 0; ok && i < a->n_contrib; i++) {
            const ma_contrib *ci = &a->contrib[i];
            cJSON *x = cJSON_CreateObject();
            ok = x && cJSON_AddItemToArray(c, x) && cJSON_AddStringToObject(x, "slot", ci->slot) &&
                 cJSON_AddNumberToObject(x, "version", (double)ci->version) &&
                 cJSON_AddNumberToObject(x, "score", isfinite(ci->score) ? ci->score : 0.0) &&
                 cJSON_AddNumberToObject(x, "weight", ci->weight) &&
                 (!ci->has_importance || cJSON_AddNumberToObject(x, "importance", ci->importance));
        }
    }
    if (ok && a->event >= 0)
        ok = cJSON_AddNumberToObject(o, "event", (double)a->event) != NULL;
    if (ok && a->payload)
        ok = add_payload(o, a->payload);
    if (ok && (a->route == MA_ROUTE_SPARSE || a->route == MA_ROUTE_FULL || a->route == MA_ROUTE_WINDOW))
        ok = add_chunks(o, a->chunks, a->n_chunks);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *codec_ingest_report_to_json(const ma_ingest_report *r)
{
    cJSON *o = cJSON_CreateObject(), *w = NULL, *vw = NULL, *ev = NULL;
    bool ok = o && cJSON_AddNumberToObject(o, "length", (double)r->length) &&
              cJSON_AddNumberToObject(o, "appended", (double)r->appended) &&
              (w = cJSON_AddArrayToObject(o, "writes")) && (vw = cJSON_AddArrayToObject(o, "void_writes")) &&
              (ev = cJSON_AddArrayToObject(o, "evicted"));
    for (size_t i = 0; ok && i < r->n_writes; i++) {
        cJSON *x = cJSON_CreateObject();
        ok = x && cJSON_AddItemToArray(w, x) && cJSON_AddStringToObject(x, "slot", r->writes[i].slot) &&
             cJSON_AddNumberToObject(x, "version", (double)r->writes[i].version) &&
             cJSON_AddNumberToObject(x, "event", (double)r->writes[i].event);
    }
    for (size_t i = 0; ok && i < r->n_voids; i++) {
        cJSON *x = cJSON_CreateObject();
        ok = x && cJSON_AddItemToArray(vw, x) && cJSON_AddStringToObject(x, "slot", r->voids[i].slot) &&
             cJSON_AddNumberToObject(x, "event", (double)r->voids[i].event) &&
             cJSON_AddStringToObject(x, "reason", r->voids[i].reason ? r->voids[i].reason : "protected");
    }
    for (size_t i = 0; ok && i < r->n_evicted; i++) {
        cJSON *x = cJSON_CreateString(r->evicted[i].slot);
        ok = x && cJSON_AddItemToArray(ev, x);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *codec_slot_info_to_json(const ma_slot_info *si)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "name", si->name) &&
              cJSON_AddNumberToObject(o, "version", (double)si->version) &&
              cJSON_AddBoolToObject(o, "protected", si->protect) && add_event(o, "event", si->event) &&
              cJSON_AddNumberToObject(o, "usage", (double)si->usage) && add_time(o, "updated_at", si->updated_at) &&
              (!si->has_importance || cJSON_AddNumberToObject(o, "importance", si->importance));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *codec_slot_value_to_json(const ma_slot_value *sv, size_t key_len, size_t value_len)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "name", sv->info.name) &&
              cJSON_AddNumberToObject(o, "version", (double)sv->info.version) &&
              cJSON_AddBoolToObject(o, "protected", sv->info.protect) && add_floats(o, "k", sv->k, key_len) &&
              add_floats(o, "v", sv->v, value_len) && add_payload(o, sv->payload) &&
              add_event(o, "event", sv->info.event) && add_time(o, "updated_at", sv->info.updated_at) &&
              (!sv->info.has_importance || cJSON_AddNumberToObject(o, "importance", sv->info.importance));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *codec_version_info_to_json(const ma_version_info *vi)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddNumberToObject(o, "version", (double)vi->version) && add_event(o, "event", vi->event) &&
              add_time(o, "at", vi->at) && cJSON_AddBoolToObject(o, "tombstone", vi->tombstone) &&
              (!vi->forgotten || cJSON_AddBoolToObject(o, "forgotten", true)) &&
              (!vi->has_importance || cJSON_AddNumberToObject(o, "importance", vi->importance));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- slot bodies ----------------------------------------------------------------------------- */

void codec_slot_body_clear(codec_slot_body *b)
{
    free(b->k);
    free(b->v);
    cJSON_free(b->payload);
    free(b->text);
    memset(b, 0, sizeof *b);
}

int codec_slot_body_decode(const cJSON *body, const char *path_name, bool allow_version,
                           const codec_shape *sh, codec_slot_body *out, codec_error *err)
{
    static const char *const fields[] = {"name", "k", "k_b64", "text", "v", "v_b64", "payload", "protect",
                                         "importance", NULL};
    static const char *const fields_v[] = {"name", "k", "k_b64", "text", "v", "v_b64", "payload", "protect",
                                           "importance", "version", NULL};
    static const codec_vec_fields kf = {"k", "k_b64", "text"}, vf = {"v", "v_b64", NULL};
    codec_slot_body b = {0};
    cJSON *empty = NULL;   /* stands in for an absent body */
    int r;

    memset(out, 0, sizeof *out);
    if (!body) /* PUT with no body at all: only possible with a path name, and then v is missing anyway */
        body = empty = cJSON_CreateObject();
    if (!body)
        return codec_fail(err, "bad_request", "out of memory");
    if (check_members(body, allow_version ? fields_v : fields, "", err))
        goto fail;
    const cJSON *nm = member(body, "name");
    if (nm && !cJSON_IsString(nm)) {
        codec_fail(err, "bad_request", "name: expected a string, got %s", type_name(nm));
        goto fail;
    }
    if (path_name) {
        if (nm && strcmp(nm->valuestring, path_name) != 0) {
            codec_fail(err, "bad_request", "name: \"%.64s\" differs from the name in the path \"%s\"",
                       nm->valuestring, path_name);
            goto fail;
        }
        if (codec_check_name(path_name, "name", err))
            goto fail;
        snprintf(b.name, sizeof b.name, "%s", path_name);
    } else {
        if (!nm) {
            codec_fail(err, "bad_request", "name: missing, expected the slot's name");
            goto fail;
        }
        if (codec_check_name(nm->valuestring, "name", err))
            goto fail;
        snprintf(b.name, sizeof b.name, "%s", nm->valuestring);
    }
    b.k = malloc(sizeof(float) * (size_t)sh->heads * sh->dim);
    b.v = malloc(sizeof(float) * (size_t)sh->heads * sh->value_dim);
    if (!b.k || !b.v) {
        codec_fail(err, "bad_request", "out of memory");
        goto fail;
    }
    if ((r = codec_vector(body, &kf, sh, sh->dim, "heads*dim", "", b.k, err)) < 0)
        goto fail;
    if (r == 0) {
        free(b.k);
        b.k = NULL;
    }
    if ((r = codec_vector(body, &vf, sh, sh->value_dim, "heads*value_dim", "", b.v, err)) < 0)
        goto fail;
    if (r == 0) {
        free(b.v);
        b.v = NULL;
        const cJSON *p = member(body, "payload");
        if (!cJSON_IsString(p)) {
            codec_fail(err, "bad_request", "v: missing, expected v or v_b64 (or a string payload, whose "
                       "embedding becomes the value)");
            goto fail;
        }
        if (!(b.text = strdup(p->valuestring))) {
            codec_fail(err, "bad_request", "out of memory");
            goto fail;
        }
    }
    if (get_payload(body, "", &b.payload, err) || get_bool(body, "protect", "", &b.protect, err) ||
        get_importance(body, "", &b.has_importance, &b.importance, err))
        goto fail;
    if (allow_version && codec_get_uint(body, "version", 1, (uint64_t)MAX_EXACT_INT, "", &b.version, err) < 0)
        goto fail;
    cJSON_Delete(empty);
    *out = b;
    return 0;
fail:
    cJSON_Delete(empty);
    codec_slot_body_clear(&b);
    return MA_EINVAL;
}

/* ---- small bodies: restore, protect, backup ------------------------------------------------------ */

/* body is exactly {"<field>": ...}; expected is the message's spelling of the whole body. */
static int only_member(const cJSON *body, const char *field, const char *expected, codec_error *err)
{
    if (!cJSON_IsObject(body) || !body->child || body->child->next || !body->child->string ||
        strcmp(body->child->string, field) != 0)
        return codec_fail(err, "bad_request", "expected exactly %s", expected);
    return 0;
}

int codec_restore_decode(const cJSON *body, uint64_t *version, codec_error *err)
{
    if (only_member(body, "version", "{\"version\": n}", err))
        return MA_EINVAL;
    return codec_get_uint(body, "version", 1, UINT64_MAX, "", version, err) < 0 ? MA_EINVAL : 0;
}

int codec_protect_decode(const cJSON *body, bool *protect, codec_error *err)
{
    if (only_member(body, "protected", "{\"protected\": true|false}", err))
        return MA_EINVAL;
    if (!cJSON_IsBool(body->child))
        return codec_fail(err, "bad_request", "protected: expected true or false");
    *protect = cJSON_IsTrue(body->child);
    return 0;
}

int codec_backup_decode(const cJSON *body, const char **path, codec_error *err)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "path");
    if (!cJSON_IsObject(body) || !cJSON_IsString(p) || body->child->next)
        return codec_fail(err, "bad_request", "expected exactly {\"path\": \"/absolute/file.db\"}");
    if (p->valuestring[0] != '/')
        return codec_fail(err, "bad_request", "path: \"%.200s\" is not absolute", p->valuestring);
    *path = p->valuestring;
    return 0;
}

/* ---- answers ------------------------------------------------------------------------------------- */

/* Frees o and returns NULL unless ok. */
static cJSON *built(cJSON *o, bool ok)
{
    if (ok)
        return o;
    cJSON_Delete(o);
    return NULL;
}

/* Adds item to o as field (taking it); false, with item freed, if item is NULL or cannot be added. */
static bool add_item(cJSON *o, const char *field, cJSON *item)
{
    if (!item)
        return false;
    if (!cJSON_AddItemToObject(o, field, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

/* Appends item to array a (taking it); false, with item freed, if item is NULL or cannot be added. */
static bool push(cJSON *a, cJSON *item)
{
    if (!item)
        return false;
    if (!cJSON_AddItemToArray(a, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

static cJSON *doubles_json(const double *x, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    bool ok = a != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = push(a, cJSON_CreateNumber(x[i]));
    return built(a, ok);
}

cJSON *codec_session_to_json(const char *id, const ma_params *p)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "id", id) && add_item(o, "config", codec_params_to_json(p));
    return built(o, ok);
}

cJSON *codec_session_list_to_json(const reg_listing *l, size_t n, const char *next)
{
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "sessions") : NULL;
    bool ok = a != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *x = cJSON_CreateObject();
        ok = push(a, x) && cJSON_AddStringToObject(x, "id", l[i].id) &&
             cJSON_AddNumberToObject(x, "length", (double)l[i].length) &&
             cJSON_AddNumberToObject(x, "slots", (double)l[i].slots) && add_time(x, "created_at", l[i].created_at) &&
             add_time(x, "updated_at", l[i].updated_at);
    }
    if (ok && next)
        ok = cJSON_AddStringToObject(o, "next", next) != NULL;
    return built(o, ok);
}

cJSON *codec_session_summary_to_json(const char *id, const reg_summary *sm)
{
    const ma_params *p = sm->params;
    const ma_session_stats *st = &sm->stats;
    cJSON *o = cJSON_CreateObject(), *bb = NULL;
    bool ok = o && cJSON_AddStringToObject(o, "id", id) && add_item(o, "config", codec_params_to_json(p)) &&
              cJSON_AddNumberToObject(o, "length", (double)st->length) &&
              cJSON_AddNumberToObject(o, "chunks", (double)st->chunks) &&
              cJSON_AddNumberToObject(o, "slots_resident", (double)st->slots_resident) &&
              cJSON_AddNumberToObject(o, "bytes", (double)st->bytes) &&
              cJSON_AddNumberToObject(o, "stored_bytes", (double)sm->stored_bytes) &&
              (bb = cJSON_CreateObject()) && add_item(o, "backbone", bb) &&
              add_item(bb, "state_norm", doubles_json(st->state_norm, (size_t)p->heads)) &&
              add_item(bb, "penalty_norm", doubles_json(st->penalty_norm, (size_t)p->heads)) &&
              add_time(o, "created_at", sm->created_at) && add_time(o, "updated_at", sm->updated_at);
    /* The archive index (selector index only): the build answering reads, its lists, the events it holds,
     * and whether a background build is queued or running (docs/ARCHIVE.md, "Builds in the background"). */
    cJSON *ix = NULL;
    if (ok && p->selector == MA_SELECTOR_INDEX)
        ok = (ix = cJSON_CreateObject()) && add_item(o, "index", ix) &&
             cJSON_AddNumberToObject(ix, "build", (double)sm->index.build) &&
             cJSON_AddNumberToObject(ix, "lists", (double)sm->index.nlist) &&
             cJSON_AddNumberToObject(ix, "events", (double)sm->index.events) &&
             cJSON_AddBoolToObject(ix, "building", sm->index_building);
    return built(o, ok);
}

cJSON *codec_backup_to_json(const char *path)
{
    cJSON *o = cJSON_CreateObject();
    return built(o, o && cJSON_AddStringToObject(o, "path", path));
}

cJSON *codec_import_to_json(const char *id, uint64_t length, uint64_t bytes)
{
    cJSON *o = cJSON_CreateObject();
    return built(o, o && cJSON_AddStringToObject(o, "id", id) && cJSON_AddNumberToObject(o, "length", (double)length) &&
                        cJSON_AddNumberToObject(o, "bytes", (double)bytes));
}

cJSON *codec_frozen_to_json(const char *id, bool frozen)
{
    cJSON *o = cJSON_CreateObject();
    return built(o, o && cJSON_AddStringToObject(o, "id", id) && cJSON_AddBoolToObject(o, "frozen", frozen));
}

cJSON *codec_length_mismatch_to_json(const char *message, uint64_t length)
{
    cJSON *o = cJSON_CreateObject(), *e = o ? cJSON_AddObjectToObject(o, "error") : NULL;
    return built(o, e && cJSON_AddStringToObject(e, "code", "length_mismatch") &&
                        cJSON_AddStringToObject(e, "message", message) &&
                        cJSON_AddNumberToObject(e, "length", (double)length));
}

cJSON *codec_results_new(void)
{
    cJSON *o = cJSON_CreateObject();
    return built(o, o && cJSON_AddArrayToObject(o, "results"));
}

int codec_results_add(cJSON *results, const ma_answer *a, size_t value_len)
{
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(results, "results");
    return arr && push(arr, codec_answer_to_json(a, value_len)) ? 0 : MA_ENOMEM;
}

int codec_results_add_error(cJSON *results, int status, const char *code, const char *message)
{
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(results, "results");
    cJSON *o = cJSON_CreateObject(), *e = NULL;
    bool ok = o && (e = cJSON_AddObjectToObject(o, "error")) && cJSON_AddStringToObject(e, "code", code) &&
              cJSON_AddStringToObject(e, "message", message) && cJSON_AddNumberToObject(e, "status", status);
    return arr && push(arr, built(o, ok)) ? 0 : MA_ENOMEM;
}

cJSON *codec_slot_list_to_json(const ma_slot_info *si, size_t n)
{
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "slots") : NULL;
    bool ok = a != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = push(a, codec_slot_info_to_json(&si[i]));
    return built(o, ok);
}

cJSON *codec_versions_to_json(const ma_version_info *vi, size_t n)
{
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "versions") : NULL;
    bool ok = a != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = push(a, codec_version_info_to_json(&vi[i]));
    return built(o, ok);
}

cJSON *codec_slot_result_to_json(const char *name, const ma_slot_result *res)
{
    cJSON *o = cJSON_CreateObject(), *ev = NULL;
    bool ok = o && cJSON_AddStringToObject(o, "name", name) &&
              cJSON_AddNumberToObject(o, "version", (double)res->version) &&
              (ev = cJSON_AddArrayToObject(o, "evicted")) &&
              (!res->evicted || push(ev, cJSON_CreateString(res->evicted_name)));
    return built(o, ok);
}

cJSON *codec_slot_protect_to_json(const ma_slot_info *si)
{
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "name", si->name) &&
              cJSON_AddNumberToObject(o, "version", (double)si->version) &&
              cJSON_AddBoolToObject(o, "protected", si->protect);
    return built(o, ok);
}
