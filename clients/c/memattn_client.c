/*
 * clients/c/memattn_client.c — the C client of memattnd (clients/c/memattn_client.h).
 *
 * Design. One libcurl easy handle per client, reused for every request (HTTP/1.1 keep-alive). All
 * requests go through call(): it builds the headers (Accept, Content-Type, Authorization, If-Match,
 * Idempotency-Key for mutations), sends, retries on transport errors and 503 (bounded, exponential
 * backoff, Retry-After honoured up to 5 s), parses the JSON answer and turns an error status into
 * MAC_EHTTP with c->err filled from the API's {"error":{"code","message"}} body. Request bodies are
 * built with cJSON; vectors are packed as base64 float32 here (little-endian on any host).
 *
 * mac_append() prints each event once, then packs the printed events into bodies
 * `{"events":[e1,e2,...]}` no larger than the body limit, one request per body, in order.
 * mac_append_f32() takes the events as two float arrays and, when the daemon takes binary batches
 * (GET /v1/info's batch.events_binary, asked once with the body limit: load_info), sends bodies of
 * "MAEV", n, heads, dim, value_dim and the floats copied as they are (byte-swapped on a big-endian
 * host), as many events a body as the limit holds; otherwise it hands the same events to
 * mac_append's JSON path. Both go through call(), so retries and Idempotency-Keys are the same.
 *
 * Every public function has one cleanup path (`done:`) and sets c->err on failure.
 * Not done here: HTTPS options beyond libcurl's defaults, async requests, connection pools.
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* strdup, strndup, nanosleep, clock_gettime, strncasecmp */
#endif
#include "memattn_client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#define DEFAULT_MAX_BODY      (1u << 20)
#define MAX_EVENTS_PER_BATCH  65536
#define BACKOFF_CAP_MS        2000
#define RETRY_AFTER_CAP_MS    5000

struct mac_client {
    CURL *curl;
    char *base;                 /* without a trailing '/' */
    char *auth;                 /* "Authorization: Bearer <token>" or NULL */
    size_t max_body;            /* 0 until known */
    bool info_loaded;           /* GET /v1/info asked (once, whatever it answered) */
    bool events_binary;         /* it reported batch.events_binary */
    int retries;
    unsigned backoff_ms;
    long timeout_ms;
    uint64_t sent;
    unsigned rng;               /* jitter and idempotency keys (seeded from the clock and address) */
    mac_error err;
};

/* ---- small helpers ---- */

static int fail(mac_client *c, int rc, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(mac_client *c, int rc, int status, const char *code, const char *fmt, ...)
{
    c->err.status = status;
    snprintf(c->err.code, sizeof c->err.code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err.message, sizeof c->err.message, fmt, ap);
    va_end(ap);
    return rc;
}

static int nomem(mac_client *c) { return fail(c, MAC_ENOMEM, 0, "no_memory", "out of memory"); }

static void clear_err(mac_client *c) { memset(&c->err, 0, sizeof c->err); }

static unsigned next_rand(mac_client *c)
{
    c->rng = c->rng * 1103515245u + 12345u;
    return c->rng >> 8;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* A growing byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} buf;

static bool buf_add(buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    return buf_add(ud, data, size * n) ? size * n : 0;
}

typedef struct {
    char etag[32];
    unsigned retry_after_ms;
    bool json;
} head_info;

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    head_info *h = ud;
    size_t len = size * n;
    if (len > 5 && strncasecmp(data, "ETag:", 5) == 0) {
        size_t i = 5, j = 0;
        while (i < len && data[i] == ' ')
            i++;
        while (i < len && data[i] != '\r' && data[i] != '\n' && j + 1 < sizeof h->etag)
            h->etag[j++] = data[i++];
        h->etag[j] = '\0';
    } else if (len > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
        long s = strtol(data + 12, NULL, 10);
        h->retry_after_ms = s > 0 ? (unsigned)(s > 5 ? RETRY_AFTER_CAP_MS : s * 1000) : 0;
    } else if (len > 13 && strncasecmp(data, "Content-Type:", 13) == 0) {
        const char *p = data + 13;
        while (*p == ' ')
            p++;
        h->json = strncasecmp(p, "application/json", 16) == 0;
    } else if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        memset(h, 0, sizeof *h);   /* a new response (after 100 Continue) */
    }
    return len;
}

/* Percent-encodes a path segment into dst (ids and names are plain, but never trust that). */
static int seg(mac_client *c, char *dst, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0, n = s ? strlen(s) : 0;
    if (!s || n == 0 || n > MAC_NAME_MAX)
        return fail(c, MAC_EINVAL, 0, "invalid", "a session id or slot name must be 1-%d characters", MAC_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        bool plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                     ch == '.' || ch == '_' || ch == ':' || ch == '-';
        if (j + 4 >= cap)
            return fail(c, MAC_EINVAL, 0, "invalid", "name too long");
        if (plain) {
            dst[j++] = (char)ch;
        } else {
            dst[j++] = '%';
            dst[j++] = hex[ch >> 4];
            dst[j++] = hex[ch & 15];
        }
    }
    dst[j] = '\0';
    return MAC_OK;
}

/* ---- base64 float32 ---- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void f32_le(float f, unsigned char out[4])
{
    uint32_t u;
    memcpy(&u, &f, 4);
    out[0] = (unsigned char)u;
    out[1] = (unsigned char)(u >> 8);
    out[2] = (unsigned char)(u >> 16);
    out[3] = (unsigned char)(u >> 24);
}

char *mac_b64_f32(const float *x, size_t n)
{
    size_t nbytes = n * 4, olen = (nbytes + 2) / 3 * 4;
    char *out = malloc(olen + 1);
    unsigned char *raw = malloc(nbytes + 3);
    if (!out || !raw) {
        free(out);
        free(raw);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        f32_le(x[i], raw + 4 * i);
    raw[nbytes] = raw[nbytes + 1] = raw[nbytes + 2] = 0;
    size_t o = 0;
    for (size_t i = 0; i < nbytes; i += 3) {
        uint32_t t = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        out[o++] = b64chars[t >> 18 & 63];
        out[o++] = b64chars[t >> 12 & 63];
        out[o++] = i + 1 < nbytes ? b64chars[t >> 6 & 63] : '=';
        out[o++] = i + 2 < nbytes ? b64chars[t & 63] : '=';
    }
    out[o] = '\0';
    free(raw);
    return out;
}

static int b64val(int ch)
{
    const char *p = ch ? strchr(b64chars, ch) : NULL;
    return p ? (int)(p - b64chars) : -1;
}

int mac_unb64_f32(const char *s, float **out, size_t *n)
{
    size_t len = strlen(s);
    *out = NULL;
    *n = 0;
    if (len % 4)
        return MAC_EINVAL;
    unsigned char *raw = malloc(len / 4 * 3 + 1);
    if (!raw)
        return MAC_ENOMEM;
    size_t r = 0;
    for (size_t i = 0; i < len; i += 4) {
        int a = b64val(s[i]), b = b64val(s[i + 1]), cc = s[i + 2] == '=' ? 0 : b64val(s[i + 2]),
            d = s[i + 3] == '=' ? 0 : b64val(s[i + 3]);
        if (a < 0 || b < 0 || cc < 0 || d < 0) {
            free(raw);
            return MAC_EINVAL;
        }
        uint32_t t = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)cc << 6 | (uint32_t)d;
        raw[r++] = (unsigned char)(t >> 16);
        if (s[i + 2] != '=')
            raw[r++] = (unsigned char)(t >> 8);
        if (s[i + 3] != '=')
            raw[r++] = (unsigned char)t;
    }
    if (r % 4) {
        free(raw);
        return MAC_EINVAL;
    }
    float *f = malloc(r ? r : 1);
    if (!f) {
        free(raw);
        return MAC_ENOMEM;
    }
    for (size_t i = 0; i < r / 4; i++) {
        uint32_t u = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 | (uint32_t)raw[4 * i + 2] << 16 |
                     (uint32_t)raw[4 * i + 3] << 24;
        memcpy(&f[i], &u, 4);
    }
    free(raw);
    *out = f;
    *n = r / 4;
    return MAC_OK;
}

/* A vector from an answer: a JSON array of numbers or a base64 string. */
static int read_vec(const cJSON *j, float **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (cJSON_IsString(j))
        return mac_unb64_f32(j->valuestring, out, n);
    if (!cJSON_IsArray(j))
        return MAC_OK;
    size_t len = (size_t)cJSON_GetArraySize(j);
    float *f = malloc(len ? len * sizeof *f : 1);
    if (!f)
        return MAC_ENOMEM;
    size_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, j)
        f[i++] = (float)x->valuedouble;
    *out = f;
    *n = len;
    return MAC_OK;
}

/* ---- the request ---- */

typedef struct {
    long status;
    cJSON *doc;                 /* parsed JSON answer, or NULL */
    head_info head;
} answer;

/* One API request with retries. body may be NULL; ctype is its Content-Type. mutation: send an
 * Idempotency-Key (one per call, the same on each retry, as is the body). Returns MAC_OK with a 2xx
 * answer in *a (caller frees a->doc), MAC_EHTTP (c->err from the body), MAC_ECONN, MAC_ENOMEM or
 * MAC_EPROTO. */
static int call_ct(mac_client *c, const char *method, const char *path, const char *body, size_t blen,
                   const char *ctype, uint64_t if_match, bool mutation, answer *a)
{
    int rc = MAC_OK;
    struct curl_slist *hdrs = NULL;
    buf rb = { 0 };
    char *url = NULL;
    memset(a, 0, sizeof *a);
    clear_err(c);
    size_t ulen = strlen(c->base) + strlen(path) + 1;
    if (!(url = malloc(ulen)))
        goto oom;
    snprintf(url, ulen, "%s%s", c->base, path);
    char line[600];
    if (!(hdrs = curl_slist_append(hdrs, "Accept: application/json")))
        goto oom;
    if (body) {
        snprintf(line, sizeof line, "Content-Type: %s", ctype);
        if (!(hdrs = curl_slist_append(hdrs, line)))
            goto oom;
    }
    if (!(hdrs = curl_slist_append(hdrs, "Expect:")))   /* no 100-continue round trip */
        goto oom;
    if (c->auth && !(hdrs = curl_slist_append(hdrs, c->auth)))
        goto oom;
    if (if_match) {
        snprintf(line, sizeof line, "If-Match: \"%llu\"", (unsigned long long)if_match);
        if (!(hdrs = curl_slist_append(hdrs, line)))
            goto oom;
    }
    if (mutation) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        c->rng ^= (unsigned)ts.tv_nsec;
        snprintf(line, sizeof line, "Idempotency-Key: %08x%08x%08x%08x", next_rand(c), next_rand(c),
                 next_rand(c), (unsigned)ts.tv_nsec ^ next_rand(c));
        if (!(hdrs = curl_slist_append(hdrs, line)))
            goto oom;
    }
    CURL *h = c->curl;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &rb);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &a->head);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);           /* resets POST state from an earlier call */
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    }
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, strcmp(method, "GET") == 0 ? NULL : method);

    for (int attempt = 0;; attempt++) {
        rb.len = 0;
        memset(&a->head, 0, sizeof a->head);
        c->sent++;
        CURLcode cc = curl_easy_perform(h);
        unsigned delay = c->backoff_ms << (attempt < 16 ? attempt : 16);
        if (delay > BACKOFF_CAP_MS)
            delay = BACKOFF_CAP_MS;
        delay = delay / 2 + (delay ? next_rand(c) % (delay + 1) : 0);   /* jitter: 0.5x .. 1.5x */
        if (cc == CURLE_OUT_OF_MEMORY || cc == CURLE_WRITE_ERROR)   /* on_body could not grow the buffer */
            goto oom;
        if (cc != CURLE_OK) {
            if (attempt >= c->retries) {
                rc = fail(c, MAC_ECONN, 0, "connection", "%s %s: %s", method, path, curl_easy_strerror(cc));
                goto done;
            }
        } else {
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a->status);
            if (a->status != 503 || attempt >= c->retries)
                break;
            if (a->head.retry_after_ms)
                delay = a->head.retry_after_ms;
        }
        sleep_ms(delay);
    }
    if (rb.len && a->head.json) {
        a->doc = cJSON_ParseWithLength(rb.p, rb.len);
        if (!a->doc) {
            rc = fail(c, MAC_EPROTO, (int)a->status, "protocol", "%s %s: the answer is not JSON", method, path);
            goto done;
        }
    }
    if (a->status < 200 || a->status > 299) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(a->doc, "error");
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
        char fallback[16];
        snprintf(fallback, sizeof fallback, "http_%ld", a->status);
        rc = fail(c, MAC_EHTTP, (int)a->status, cJSON_IsString(code) ? code->valuestring : fallback, "%s",
                  cJSON_IsString(msg) ? msg->valuestring : "");
        cJSON_Delete(a->doc);
        a->doc = NULL;
    }
    goto done;
oom:
    rc = nomem(c);
done:
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    free(rb.p);
    free(url);
    if (rc != MAC_OK) {
        cJSON_Delete(a->doc);
        a->doc = NULL;
    }
    return rc;
}

/* call_ct() with a JSON body (or none). */
static int call(mac_client *c, const char *method, const char *path, const char *body, size_t blen,
                uint64_t if_match, bool mutation, answer *a)
{
    return call_ct(c, method, path, body, blen, "application/json", if_match, mutation, a);
}

/* call() with a cJSON body (consumed). */
static int call_json(mac_client *c, const char *method, const char *path, cJSON *body, uint64_t if_match,
                     answer *a)
{
    char *text = NULL;
    int rc;
    if (body && !(text = cJSON_PrintUnformatted(body))) {
        rc = nomem(c);
        goto done;
    }
    rc = call(c, method, path, text, text ? strlen(text) : 0, if_match, strcmp(method, "GET") != 0, a);
done:
    cJSON_Delete(body);
    cJSON_free(text);
    return rc;
}

/* ---- client ---- */

void mac_options_init(mac_options *o)
{
    memset(o, 0, sizeof *o);
    o->retries = 3;
    o->backoff_ms = 50;
    o->timeout_ms = 30000;
}

int mac_open(const mac_options *o, mac_client **out)
{
    mac_options def;
    if (!o) {
        mac_options_init(&def);
        o = &def;
    }
    *out = NULL;
    if (o->base_url && strncmp(o->base_url, "http://", 7) != 0 && strncmp(o->base_url, "https://", 8) != 0)
        return MAC_EINVAL;
    mac_client *c = calloc(1, sizeof *c);
    int rc = MAC_ENOMEM;
    if (!c)
        goto done;
    const char *base = o->base_url ? o->base_url : "http://127.0.0.1:8080";
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    c->base = strndup(base, bl);
    if (o->token && o->token[0]) {
        size_t al = strlen(o->token) + sizeof "Authorization: Bearer ";
        if (!(c->auth = malloc(al)))
            goto done;
        snprintf(c->auth, al, "Authorization: Bearer %s", o->token);
    }
    c->curl = curl_easy_init();
    if (!c->base || !c->curl)
        goto done;
    c->max_body = o->max_body;
    c->retries = o->retries < 0 ? 0 : o->retries;
    c->backoff_ms = o->backoff_ms;
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->rng = (unsigned)ts.tv_nsec ^ (unsigned)ts.tv_sec ^ (unsigned)(uintptr_t)c;
    rc = MAC_OK;
done:
    if (rc != MAC_OK) {
        mac_close(c);
        return rc;
    }
    *out = c;
    return MAC_OK;
}

void mac_close(mac_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->base);
    free(c->auth);
    free(c);
}

const mac_error *mac_last_error(const mac_client *c) { return &c->err; }
uint64_t mac_requests_sent(const mac_client *c) { return c->sent; }

/* A positive integer field `max_body` / `max_body_bytes` at the top of GET /v1/info or one object down. */
static size_t find_limit(const cJSON *info)
{
    static const char *const keys[] = { "max_body", "max_body_bytes" };
    for (int depth = 0; depth < 2; depth++) {
        const cJSON *o;
        cJSON_ArrayForEach(o, info) {
            const cJSON *scope = depth == 0 ? info : o;
            if (depth == 1 && !cJSON_IsObject(o))
                continue;
            for (size_t k = 0; k < 2; k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(scope, keys[k]);
                if (cJSON_IsNumber(v) && v->valuedouble >= 1)
                    return (size_t)v->valuedouble;
            }
            if (depth == 0)
                break;
        }
    }
    return 0;
}

/* Asks GET /v1/info once per client: the body limit (unless the options gave one; 1 MiB when the
 * daemon does not say) and whether it takes binary event batches. A failed or missing GET /v1/info
 * counts as asked: the defaults stay (and JSON batches). Leaves no error behind. */
static void load_info(mac_client *c)
{
    if (c->info_loaded)
        return;
    c->info_loaded = true;
    answer a;
    if (call(c, "GET", "/v1/info", NULL, 0, 0, false, &a) == MAC_OK) {
        size_t lim = find_limit(a.doc);
        if (!c->max_body && lim)
            c->max_body = lim;
        const cJSON *batch = cJSON_GetObjectItemCaseSensitive(a.doc, "batch");
        c->events_binary = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(batch, "events_binary"));
        cJSON_Delete(a.doc);
    }
    if (!c->max_body)
        c->max_body = DEFAULT_MAX_BODY;
    clear_err(c);
}

size_t mac_max_body(mac_client *c)
{
    if (!c->max_body)
        load_info(c);
    return c->max_body;
}

int mac_events_binary(mac_client *c)
{
    load_info(c);
    return c->events_binary ? 1 : 0;
}

/* ---- sessions ---- */

static uint64_t num_u64(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : 0;
}

static void read_session(const cJSON *doc, mac_session *s)
{
    memset(s, 0, sizeof *s);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
    if (cJSON_IsString(id))
        snprintf(s->id, sizeof s->id, "%s", id->valuestring);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(doc, "config");
    s->heads = (int)num_u64(cfg, "heads");
    s->dim = (int)num_u64(cfg, "dim");
    s->value_dim = (int)num_u64(cfg, "value_dim");
    s->slots = (int)num_u64(cfg, "slots");
    s->chunk = (int)num_u64(cfg, "chunk");
    s->length = num_u64(doc, "length");
    s->chunks = num_u64(doc, "chunks");
    s->slots_resident = num_u64(doc, "slots_resident");
    if (!s->slots_resident)
        s->slots_resident = num_u64(doc, "slots");   /* the list's field */
    s->bytes = num_u64(doc, "bytes");
    s->stored_bytes = num_u64(doc, "stored_bytes");
    const cJSON *bb = cJSON_GetObjectItemCaseSensitive(doc, "backbone");
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(bb, "state_norm");
    const cJSON *pn = cJSON_GetObjectItemCaseSensitive(bb, "penalty_norm");
    int n = cJSON_GetArraySize(sn);
    s->nheads = n > MAC_HEADS_MAX ? MAC_HEADS_MAX : n;
    for (int h = 0; h < s->nheads; h++) {
        const cJSON *a = cJSON_GetArrayItem(sn, h), *b = cJSON_GetArrayItem(pn, h);
        s->state_norm[h] = cJSON_IsNumber(a) ? a->valuedouble : 0;
        s->penalty_norm[h] = cJSON_IsNumber(b) ? b->valuedouble : 0;
    }
}

int mac_session_create(mac_client *c, const char *id, const mac_config *cfg, mac_session *out)
{
    char path[512], sid[3 * MAC_NAME_MAX + 1];
    cJSON *body = NULL;
    answer a = { 0 };
    int rc;
    clear_err(c);
    if (id && (rc = seg(c, sid, sizeof sid, id)) < 0)
        goto done;
    if (cfg && cfg->json) {
        if (!(body = cJSON_Parse(cfg->json))) {
            rc = fail(c, MAC_EINVAL, 0, "invalid", "mac_config.json is not JSON");
            goto done;
        }
    } else {
        if (!(body = cJSON_CreateObject()))
            goto oom;
        if (cfg) {
            const struct { const char *k; int v; } ints[] = {
                { "heads", cfg->heads }, { "dim", cfg->dim }, { "value_dim", cfg->value_dim }, { "slots", cfg->slots },
                { "chunk", cfg->chunk }, { "topk", cfg->topk }, { "window", cfg->window },
            };
            for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
                if (ints[i].v && !cJSON_AddNumberToObject(body, ints[i].k, ints[i].v))
                    goto oom;
            if ((cfg->backbone && !cJSON_AddStringToObject(body, "backbone", cfg->backbone)) ||
                (cfg->selector && !cJSON_AddStringToObject(body, "selector", cfg->selector)))
                goto oom;
        }
    }
    if (id)
        snprintf(path, sizeof path, "/v1/sessions/%s", sid);
    else
        snprintf(path, sizeof path, "/v1/sessions");
    rc = call_json(c, id ? "PUT" : "POST", path, body, 0, &a);
    body = NULL;
    if (rc == MAC_OK && out)
        read_session(a.doc, out);
    goto done;
oom:
    rc = nomem(c);
done:
    cJSON_Delete(body);
    cJSON_Delete(a.doc);
    return rc;
}

int mac_session_get(mac_client *c, const char *id, mac_session *out)
{
    char path[512], sid[3 * MAC_NAME_MAX + 1];
    answer a = { 0 };
    int rc = seg(c, sid, sizeof sid, id);
    if (rc < 0)
        goto done;
    snprintf(path, sizeof path, "/v1/sessions/%s", sid);
    if ((rc = call(c, "GET", path, NULL, 0, 0, false, &a)) == MAC_OK)
        read_session(a.doc, out);
done:
    cJSON_Delete(a.doc);
    return rc;
}

int mac_session_list(mac_client *c, int (*fn)(const mac_session *s, void *ud), void *ud)
{
    char path[600], after[3 * MAC_NAME_MAX + 1] = "";
    answer a = { 0 };
    int rc = MAC_OK;
    for (;;) {
        snprintf(path, sizeof path, "/v1/sessions?limit=100%s%s", after[0] ? "&after=" : "", after);
        if ((rc = call(c, "GET", path, NULL, 0, 0, false, &a)) < 0)
            goto done;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(a.doc, "sessions"), *s;
        if (!cJSON_IsArray(list)) {
            rc = fail(c, MAC_EPROTO, 200, "protocol", "GET /v1/sessions: no sessions array");
            goto done;
        }
        cJSON_ArrayForEach(s, list) {
            mac_session ms;
            read_session(s, &ms);
            if (fn(&ms, ud))
                goto done;
        }
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(a.doc, "next");
        if (!cJSON_IsString(next) || !next->valuestring[0])
            goto done;
        if ((rc = seg(c, after, sizeof after, next->valuestring)) < 0)
            goto done;
        cJSON_Delete(a.doc);
        a.doc = NULL;
    }
done:
    cJSON_Delete(a.doc);
    return rc;
}

int mac_session_delete(mac_client *c, const char *id)
{
    char path[512], sid[3 * MAC_NAME_MAX + 1];
    answer a = { 0 };
    int rc = seg(c, sid, sizeof sid, id);
    if (rc == MAC_OK) {
        snprintf(path, sizeof path, "/v1/sessions/%s", sid);
        rc = call(c, "DELETE", path, NULL, 0, 0, true, &a);
    }
    cJSON_Delete(a.doc);
    return rc;
}

/* ---- events ---- */

/* Adds `name`_b64 (a packed vector) to o. */
static bool add_vec(cJSON *o, const char *name, const float *x, size_t n)
{
    char *b = mac_b64_f32(x, n);
    bool ok = b && cJSON_AddStringToObject(o, name, b);
    free(b);
    return ok;
}

/* Adds the payload (JSON text or a plain string) to o. MAC_OK, MAC_EINVAL, MAC_ENOMEM. */
static int add_payload(mac_client *c, cJSON *o, const char *json, const char *text)
{
    if (json) {
        cJSON *p = cJSON_Parse(json);
        if (!p)
            return fail(c, MAC_EINVAL, 0, "invalid", "payload_json is not JSON: %.60s", json);
        if (!cJSON_AddItemToObject(o, "payload", p)) {
            cJSON_Delete(p);
            return nomem(c);
        }
    } else if (text && !cJSON_AddStringToObject(o, "payload", text)) {
        return nomem(c);
    }
    return MAC_OK;
}

/* The JSON text of one event (malloc'ed via cJSON) or NULL with c->err set. */
static char *event_json(mac_client *c, const mac_event *e, int *rc)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    *rc = MAC_ENOMEM;
    if (!o)
        goto done;
    if (e->k ? !add_vec(o, "k_b64", e->k, e->nk) : (e->text && !cJSON_AddStringToObject(o, "text", e->text)))
        goto done;
    if (e->v && !add_vec(o, "v_b64", e->v, e->nv))
        goto done;
    if ((*rc = add_payload(c, o, e->payload_json, e->payload_text)) < 0)
        goto done;
    *rc = MAC_ENOMEM;
    if (e->slot && !cJSON_AddStringToObject(o, "slot", e->slot))
        goto done;
    if (e->slot && e->protect && !cJSON_AddTrueToObject(o, "protect"))
        goto done;
    text = cJSON_PrintUnformatted(o);
    *rc = text ? MAC_OK : MAC_ENOMEM;
done:
    if (*rc == MAC_ENOMEM)
        nomem(c);
    cJSON_Delete(o);
    return text;
}

/* Sends one batch body (of Content-Type ctype) and adds its answer to out. */
static int send_batch(mac_client *c, const char *path, const char *body, size_t len, const char *ctype,
                      mac_append_result *out)
{
    answer a = { 0 };
    int rc = call_ct(c, "POST", path, body, len, ctype, 0, true, &a);
    if (rc == MAC_OK) {
        out->length = num_u64(a.doc, "length");
        out->appended += (size_t)num_u64(a.doc, "appended");
        out->writes += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(a.doc, "writes"));
        out->void_writes += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(a.doc, "void_writes"));
        out->evicted += (size_t)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(a.doc, "evicted"));
        out->batches++;
    }
    cJSON_Delete(a.doc);
    return rc;
}

int mac_append(mac_client *c, const char *session, const mac_event *ev, size_t n, mac_append_result *out)
{
    static const char head[] = "{\"events\":[", tail[] = "]}";
    const size_t over = sizeof head - 1 + sizeof tail - 1;
    char path[512], sid[3 * MAC_NAME_MAX + 1];
    mac_append_result dummy;
    buf b = { 0 };
    size_t in_batch = 0;
    int rc;
    if (!out)
        out = &dummy;
    memset(out, 0, sizeof *out);
    if ((rc = seg(c, sid, sizeof sid, session)) < 0)
        goto done;
    snprintf(path, sizeof path, "/v1/sessions/%s/events", sid);
    size_t limit = mac_max_body(c);
    for (size_t i = 0; i < n; i++) {
        char *js = event_json(c, &ev[i], &rc);
        if (!js)
            goto done;
        size_t jl = strlen(js);
        if (over + jl > limit) {
            cJSON_free(js);
            rc = fail(c, MAC_ETOOBIG, 0, "too_large", "event %zu alone is %zu bytes of JSON, over the body limit of %zu",
                      i, jl, limit);
            goto done;
        }
        if (in_batch && (b.len + 1 + jl + sizeof tail - 1 > limit || in_batch >= MAX_EVENTS_PER_BATCH)) {
            if (!buf_add(&b, tail, sizeof tail - 1)) {
                cJSON_free(js);
                goto oom;
            }
            if ((rc = send_batch(c, path, b.p, b.len, "application/json", out)) < 0) {
                cJSON_free(js);
                goto done;
            }
            b.len = 0;
            in_batch = 0;
        }
        bool ok = buf_add(&b, in_batch ? "," : head, in_batch ? 1 : sizeof head - 1) && buf_add(&b, js, jl);
        cJSON_free(js);
        if (!ok)
            goto oom;
        in_batch++;
    }
    if (in_batch) {
        if (!buf_add(&b, tail, sizeof tail - 1))
            goto oom;
        rc = send_batch(c, path, b.p, b.len, "application/json", out);
    }
    goto done;
oom:
    rc = nomem(c);
done:
    free(b.p);
    return rc;
}

/* ---- events as float arrays: binary batches ---- */

#define BIN_HEADER 20                /* "MAEV", n, heads, dim, value_dim */
#define BIN_SHAPE_MAX 65536          /* heads, dim, value_dim above this are refused here (the daemon's are far lower) */

static bool host_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static void put_u32(unsigned char *p, uint32_t x)
{
    p[0] = (unsigned char)x;
    p[1] = (unsigned char)(x >> 8);
    p[2] = (unsigned char)(x >> 16);
    p[3] = (unsigned char)(x >> 24);
}

/* n floats as little-endian float32 at dst. */
static void put_f32s(unsigned char *dst, const float *x, size_t n)
{
    if (host_little_endian()) {
        memcpy(dst, x, n * sizeof *x);
        return;
    }
    for (size_t i = 0; i < n; i++)
        f32_le(x[i], dst + 4 * i);
}

/* The JSON path of mac_append_f32: one mac_event per event, pointing into the arrays. */
static int append_f32_json(mac_client *c, const char *session, const float *k, const float *v, size_t n,
                           size_t kf, size_t vf, mac_append_result *out)
{
    mac_event *ev = calloc(n, sizeof *ev);
    if (!ev)
        return nomem(c);
    for (size_t i = 0; i < n; i++)
        ev[i] = (mac_event){ .k = k + i * kf, .nk = kf, .v = v + i * vf, .nv = vf };
    int rc = mac_append(c, session, ev, n, out);
    free(ev);
    return rc;
}

int mac_append_f32(mac_client *c, const char *session, const mac_batch *b, int how, mac_append_result *out)
{
    char path[512], sid[3 * MAC_NAME_MAX + 1];
    mac_append_result dummy;
    unsigned char *body = NULL;
    int rc;
    if (!out)
        out = &dummy;
    memset(out, 0, sizeof *out);
    clear_err(c);
    if ((rc = seg(c, sid, sizeof sid, session)) < 0)
        goto done;
    if (!b || (b->n && (!b->k || !b->v)) || (how != MAC_SEND_AUTO && how != MAC_SEND_BINARY && how != MAC_SEND_JSON)) {
        rc = fail(c, MAC_EINVAL, 0, "invalid", "mac_append_f32: %s",
                  !b ? "no batch" : (b->n && (!b->k || !b->v)) ? "k and v must both be given" : "unknown `how`");
        goto done;
    }
    if (b->n == 0)   /* nothing to send: no request, not even for the shape */
        goto done;
    long heads = b->heads, dim = b->dim, vdim = b->value_dim;
    if (heads == 0) {   /* the session's shape, from the daemon */
        mac_session s;
        if ((rc = mac_session_get(c, session, &s)) < 0)
            goto done;
        heads = s.heads;
        dim = s.dim;
        vdim = s.value_dim;
    }
    if (vdim == 0)
        vdim = dim;
    if (heads < 1 || dim < 1 || vdim < 1 || heads > BIN_SHAPE_MAX || dim > BIN_SHAPE_MAX || vdim > BIN_SHAPE_MAX) {
        rc = fail(c, MAC_EINVAL, 0, "invalid", "mac_append_f32: heads %ld, dim %ld, value_dim %ld: each must be 1-%d",
                  heads, dim, vdim, BIN_SHAPE_MAX);
        goto done;
    }
    size_t kf = (size_t)(heads * dim), vf = (size_t)(heads * vdim), n = b->n;
    size_t per = sizeof(float) * (kf + vf);   /* bytes of one event in a binary body */
    if (n > SIZE_MAX / per) {
        rc = fail(c, MAC_EINVAL, 0, "invalid", "mac_append_f32: %zu events of %zu bytes overflow", n, per);
        goto done;
    }
    bool binary = how == MAC_SEND_BINARY || (how == MAC_SEND_AUTO && mac_events_binary(c));
    if (!binary) {
        rc = append_f32_json(c, session, b->k, b->v, n, kf, vf, out);
        goto done;
    }
    out->binary = 1;
    snprintf(path, sizeof path, "/v1/sessions/%s/events", sid);
    size_t limit = mac_max_body(c);
    if (limit < BIN_HEADER + per) {
        rc = fail(c, MAC_ETOOBIG, 0, "too_large",
                  "one event is %zu bytes in a binary batch (after its %d-byte header), over the body limit of %zu",
                  per, BIN_HEADER, limit);
        goto done;
    }
    size_t cap = (limit - BIN_HEADER) / per;
    if (cap > MAX_EVENTS_PER_BATCH)
        cap = MAX_EVENTS_PER_BATCH;
    if (cap > n)
        cap = n;
    if (!(body = malloc(BIN_HEADER + cap * per))) {
        rc = nomem(c);
        goto done;
    }
    for (size_t i = 0; i < n; i += cap) {
        size_t m = n - i < cap ? n - i : cap;
        memcpy(body, "MAEV", 4);
        put_u32(body + 4, (uint32_t)m);
        put_u32(body + 8, (uint32_t)heads);
        put_u32(body + 12, (uint32_t)dim);
        put_u32(body + 16, (uint32_t)vdim);
        put_f32s(body + BIN_HEADER, b->k + i * kf, m * kf);
        put_f32s(body + BIN_HEADER + m * kf * sizeof(float), b->v + i * vf, m * vf);
        if ((rc = send_batch(c, path, (const char *)body, BIN_HEADER + m * per, "application/octet-stream", out)) < 0)
            goto done;
    }
done:
    free(body);
    return rc;
}

/* ---- queries ---- */

static void result_free(mac_result *r)
{
    free(r->chunks);
    free(r->payload_json);
    free(r->v);
    memset(r, 0, sizeof *r);
    r->event = -1;
}

void mac_results_free(mac_result *r, size_t n)
{
    for (size_t i = 0; r && i < n; i++)
        result_free(&r[i]);
}

static char *print_payload(const cJSON *p)
{
    return p && !cJSON_IsNull(p) ? cJSON_PrintUnformatted(p) : NULL;
}

static int read_result(const cJSON *j, mac_result *r)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (cJSON_IsObject(e)) {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
        r->ok = 0;
        r->error.status = (int)num_u64(e, "status");
        snprintf(r->error.code, sizeof r->error.code, "%s", cJSON_IsString(code) ? code->valuestring : "");
        snprintf(r->error.message, sizeof r->error.message, "%s", cJSON_IsString(msg) ? msg->valuestring : "");
        return MAC_OK;
    }
    r->ok = 1;
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "route");
    snprintf(r->route, sizeof r->route, "%s", cJSON_IsString(x) ? x->valuestring : "");
    x = cJSON_GetObjectItemCaseSensitive(j, "score");
    r->score = cJSON_IsNumber(x) ? x->valuedouble : 0;
    x = cJSON_GetObjectItemCaseSensitive(j, "slot");
    snprintf(r->slot, sizeof r->slot, "%s", cJSON_IsString(x) ? x->valuestring : "");
    r->version = num_u64(j, "version");
    x = cJSON_GetObjectItemCaseSensitive(j, "event");
    r->event = cJSON_IsNumber(x) ? (int64_t)x->valuedouble : -1;
    x = cJSON_GetObjectItemCaseSensitive(j, "chunks");
    if (cJSON_IsArray(x)) {
        size_t nc = (size_t)cJSON_GetArraySize(x), i = 0;
        if (!(r->chunks = malloc(nc ? nc * sizeof *r->chunks : 1)))
            return MAC_ENOMEM;
        const cJSON *ch;
        cJSON_ArrayForEach(ch, x)
            r->chunks[i++] = cJSON_IsNumber(ch) ? (uint64_t)ch->valuedouble : 0;
        r->nchunks = nc;
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "payload");
    if (p && !cJSON_IsNull(p) && !(r->payload_json = print_payload(p)))
        return MAC_ENOMEM;
    return read_vec(cJSON_GetObjectItemCaseSensitive(j, "v"), &r->v, &r->nv);
}

int mac_query_run(mac_client *c, const char *session, const mac_query *q, size_t n, mac_result *out)
{
    char path[512], sid[3 * MAC_NAME_MAX + 1];
    answer a = { 0 };
    cJSON *body = NULL, *arr;
    int rc;
    for (size_t i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].event = -1;
    }
    if ((rc = seg(c, sid, sizeof sid, session)) < 0)
        goto done;
    snprintf(path, sizeof path, "/v1/sessions/%s/query", sid);
    if (!(body = cJSON_CreateObject()) || !(arr = cJSON_AddArrayToObject(body, "queries")))
        goto oom;
    for (size_t i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            goto oom;
        }
        if ((q[i].q && !add_vec(o, "q_b64", q[i].q, q[i].nq)) ||
            (!q[i].q && q[i].text && !cJSON_AddStringToObject(o, "text", q[i].text)) ||
            (q[i].slot && !cJSON_AddStringToObject(o, "slot", q[i].slot)) ||
            (q[i].version && !cJSON_AddNumberToObject(o, "version", (double)q[i].version)) ||
            (q[i].route && !cJSON_AddStringToObject(o, "route", q[i].route)) ||
            (q[i].topk && !cJSON_AddNumberToObject(o, "topk", q[i].topk)))
            goto oom;
    }
    char *text = cJSON_PrintUnformatted(body);
    if (!text)
        goto oom;
    rc = call(c, "POST", path, text, strlen(text), 0, false, &a);   /* a read: no idempotency key */
    cJSON_free(text);
    if (rc < 0)
        goto done;
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(a.doc, "results");
    if (!cJSON_IsArray(res) || (size_t)cJSON_GetArraySize(res) != n) {
        rc = fail(c, MAC_EPROTO, 200, "protocol", "query: expected %zu results", n);
        goto done;
    }
    size_t i = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, res)
        if (read_result(r, &out[i++]) < 0)
            goto oom;
    goto done;
oom:
    rc = nomem(c);
done:
    cJSON_Delete(body);
    cJSON_Delete(a.doc);
    if (rc < 0)
        mac_results_free(out, n);
    return rc;
}

/* ---- slots ---- */

static int slot_path(mac_client *c, char *path, size_t cap, const char *session, const char *name, const char *suffix)
{
    char sid[3 * MAC_NAME_MAX + 1], sn[3 * MAC_NAME_MAX + 1];
    int rc = seg(c, sid, sizeof sid, session);
    if (rc == MAC_OK && name)
        rc = seg(c, sn, sizeof sn, name);
    if (rc == MAC_OK) {
        if (name)
            snprintf(path, cap, "/v1/sessions/%s/slots/%s%s", sid, sn, suffix);
        else
            snprintf(path, cap, "/v1/sessions/%s/slots", sid);
    }
    return rc;
}

/* The body of a slot write; NULL with c->err set. */
static cJSON *slot_body(mac_client *c, const char *name, const mac_slot_value *w, int *rc)
{
    cJSON *o = cJSON_CreateObject();
    *rc = MAC_ENOMEM;
    if (!o || (name && !cJSON_AddStringToObject(o, "name", name)))
        goto fail;
    if (w) {
        if (w->k ? !add_vec(o, "k_b64", w->k, w->nk) : (w->text && !cJSON_AddStringToObject(o, "text", w->text)))
            goto fail;
        if (w->v && !add_vec(o, "v_b64", w->v, w->nv))
            goto fail;
        if ((*rc = add_payload(c, o, w->payload_json, w->payload_text)) < 0)
            goto fail;
        *rc = MAC_ENOMEM;
        if ((w->protect && !cJSON_AddTrueToObject(o, "protect")) ||
            (w->version && !cJSON_AddNumberToObject(o, "version", (double)w->version)))
            goto fail;
    }
    *rc = MAC_OK;
    return o;
fail:
    if (*rc == MAC_ENOMEM)
        nomem(c);
    cJSON_Delete(o);
    return NULL;
}

/* Sends a slot mutation and reads `version` from the answer. */
static int slot_call(mac_client *c, const char *method, const char *path, cJSON *body, uint64_t if_match,
                     uint64_t *version)
{
    answer a = { 0 };
    int rc = call_json(c, method, path, body, if_match, &a);
    if (rc == MAC_OK && version)
        *version = num_u64(a.doc, "version");
    cJSON_Delete(a.doc);
    return rc;
}

int mac_slot_create(mac_client *c, const char *session, const char *name, const mac_slot_value *w,
                    uint64_t *version)
{
    char path[1024], sn[3 * MAC_NAME_MAX + 1];
    int rc = slot_path(c, path, sizeof path, session, NULL, "");
    cJSON *body = NULL;
    if (rc == MAC_OK && (rc = seg(c, sn, sizeof sn, name)) == MAC_OK && (body = slot_body(c, name, w, &rc)))
        rc = slot_call(c, "POST", path, body, 0, version);
    return rc;
}

int mac_slot_put(mac_client *c, const char *session, const char *name, const mac_slot_value *w,
                 uint64_t if_match, uint64_t *version)
{
    char path[1024];
    int rc = slot_path(c, path, sizeof path, session, name, "");
    cJSON *body = NULL;
    if (rc == MAC_OK && (body = slot_body(c, NULL, w, &rc)))
        rc = slot_call(c, "PUT", path, body, if_match, version);
    return rc;
}

void mac_slot_free(mac_slot *s)
{
    if (!s)
        return;
    free(s->payload_json);
    free(s->v);
    memset(s, 0, sizeof *s);
}

int mac_slot_get(mac_client *c, const char *session, const char *name, uint64_t version, mac_slot *out)
{
    char path[1024], suffix[40] = "";
    answer a = { 0 };
    memset(out, 0, sizeof *out);
    if (version)
        snprintf(suffix, sizeof suffix, "?version=%llu", (unsigned long long)version);
    int rc = slot_path(c, path, sizeof path, session, name, suffix);
    if (rc < 0 || (rc = call(c, "GET", path, NULL, 0, 0, false, &a)) < 0)
        goto done;
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(a.doc, "name");
    snprintf(out->name, sizeof out->name, "%s", cJSON_IsString(x) ? x->valuestring : name);
    out->version = num_u64(a.doc, "version");
    out->is_protected = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a.doc, "protected"));
    x = cJSON_GetObjectItemCaseSensitive(a.doc, "event");
    out->event = cJSON_IsNumber(x) ? (int64_t)x->valuedouble : -1;
    snprintf(out->etag, sizeof out->etag, "%s", a.head.etag);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(a.doc, "payload");
    if ((p && !cJSON_IsNull(p) && !(out->payload_json = print_payload(p))) ||
        read_vec(cJSON_GetObjectItemCaseSensitive(a.doc, "v"), &out->v, &out->nv) < 0)
        rc = nomem(c);
done:
    cJSON_Delete(a.doc);
    if (rc < 0)
        mac_slot_free(out);
    return rc;
}

int mac_slot_protect(mac_client *c, const char *session, const char *name, int p, uint64_t if_match)
{
    char path[1024];
    cJSON *body = NULL;
    int rc = slot_path(c, path, sizeof path, session, name, "");
    if (rc < 0)
        goto done;
    if (!(body = cJSON_CreateObject()) || !cJSON_AddBoolToObject(body, "protected", p ? 1 : 0)) {
        rc = nomem(c);
        goto done;
    }
    rc = slot_call(c, "PATCH", path, body, if_match, NULL);
    body = NULL;
done:
    cJSON_Delete(body);
    return rc;
}

int mac_slot_evict(mac_client *c, const char *session, const char *name, uint64_t if_match)
{
    char path[1024];
    int rc = slot_path(c, path, sizeof path, session, name, "");
    if (rc == MAC_OK)
        rc = slot_call(c, "DELETE", path, NULL, if_match, NULL);
    return rc;
}

int mac_slot_restore(mac_client *c, const char *session, const char *name, uint64_t version,
                     uint64_t if_match, uint64_t *new_version)
{
    char path[1024];
    cJSON *body = NULL;
    int rc = slot_path(c, path, sizeof path, session, name, "/restore");
    if (rc < 0)
        goto done;
    if (!(body = cJSON_CreateObject()) || !cJSON_AddNumberToObject(body, "version", (double)version)) {
        rc = nomem(c);
        goto done;
    }
    rc = slot_call(c, "POST", path, body, if_match, new_version);
    body = NULL;
done:
    cJSON_Delete(body);
    return rc;
}

int mac_slot_versions(mac_client *c, const char *session, const char *name, mac_version **out, size_t *n)
{
    char path[1024];
    answer a = { 0 };
    *out = NULL;
    *n = 0;
    int rc = slot_path(c, path, sizeof path, session, name, "/versions");
    if (rc < 0 || (rc = call(c, "GET", path, NULL, 0, 0, false, &a)) < 0)
        goto done;
    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(a.doc, "versions"), *v;
    if (!cJSON_IsArray(vs)) {
        rc = fail(c, MAC_EPROTO, 200, "protocol", "versions: no versions array");
        goto done;
    }
    size_t len = (size_t)cJSON_GetArraySize(vs), i = 0;
    if (!(*out = malloc(len ? len * sizeof **out : 1))) {
        rc = nomem(c);
        goto done;
    }
    cJSON_ArrayForEach(v, vs) {
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(v, "event");
        (*out)[i].version = num_u64(v, "version");
        (*out)[i].tombstone = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "tombstone"));
        (*out)[i].event = cJSON_IsNumber(ev) ? (int64_t)ev->valuedouble : -1;
        i++;
    }
    *n = len;
done:
    cJSON_Delete(a.doc);
    return rc;
}
