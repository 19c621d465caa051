/* tests/e2e/api_util.c — helpers of the REST API end-to-end tests (see api_util.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "tests/e2e/api_util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

static cJSON *vcall(mh_daemon *d, const char *method, const char *path, const char *const *headers, long want,
                    const char *fmt, va_list ap, mh_resp *keep)
{
    char *body = fmt ? vformat(fmt, ap) : NULL;
    mh_resp r = {0};
    int rc = mh_request(d, method, path, body, headers, &r);
    if (rc != 0 || r.status != want) {
        mh_dump_log(d);
        fail_msg("%s %.200s -> %ld, expected %ld\n  request: %.400s\n  answer: %.600s", method, path, r.status, want,
                 body ? body : "", r.body ? r.body : "");
    }
    free(body);
    cJSON *j = r.len ? cJSON_ParseWithLength(r.body, r.len) : NULL;
    if (r.len && !j && r.headers && strstr(r.headers, "application/json"))
        fail_msg("%s %s: answer is not JSON: %.300s", method, path, r.body);
    if (keep)
        *keep = r;
    else
        mh_resp_free(&r);
    return j;
}

cJSON *au_call(mh_daemon *d, const char *method, const char *path, long want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cJSON *j = vcall(d, method, path, NULL, want, fmt, ap, NULL);
    va_end(ap);
    return j;
}

cJSON *au_callh(mh_daemon *d, const char *method, const char *path, const char *const *headers, long want,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cJSON *j = vcall(d, method, path, headers, want, fmt, ap, NULL);
    va_end(ap);
    return j;
}

const char *au_error(mh_daemon *d, const char *method, const char *path, long status, const char *code,
                     const char *fmt, ...)
{
    static char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    cJSON *j = vcall(d, method, path, NULL, status, fmt, ap, NULL);
    va_end(ap);
    const cJSON *c = au_get(j, "error.code"), *m = au_get(j, "error.message");
    if (!cJSON_IsString(c) || strcmp(c->valuestring, code) != 0) {
        char *t = j ? cJSON_PrintUnformatted(j) : NULL;
        fail_msg("%s %s: expected error code %s, got %s", method, path, code, t ? t : "(no body)");
    }
    snprintf(msg, sizeof msg, "%s", cJSON_IsString(m) ? m->valuestring : "");
    cJSON_Delete(j);
    return msg;
}

const cJSON *au_get(const cJSON *j, const char *path)
{
    const char *p = path;
    while (j && *p) {
        if (*p == '.')
            p++;
        if (*p == '[') {
            char *end;
            long i = strtol(p + 1, &end, 10);
            if (*end != ']' || !cJSON_IsArray(j))
                return NULL;
            j = cJSON_GetArrayItem(j, (int)i);
            p = end + 1;
            continue;
        }
        size_t n = strcspn(p, ".[");
        char key[128];
        if (n >= sizeof key || !cJSON_IsObject(j))
            return NULL;
        memcpy(key, p, n);
        key[n] = '\0';
        j = cJSON_GetObjectItemCaseSensitive(j, key);
        p += n;
    }
    return j;
}

static const cJSON *must(const cJSON *j, const char *path, cJSON_bool (*is)(const cJSON *), const char *what)
{
    const cJSON *x = au_get(j, path);
    if (!x || !is(x)) {
        char *t = j ? cJSON_PrintUnformatted(j) : NULL;
        fail_msg("%s: expected %s in %.600s", path, what, t ? t : "(null)");
    }
    return x;
}

double au_num(const cJSON *j, const char *path) { return must(j, path, cJSON_IsNumber, "a number")->valuedouble; }
const char *au_str(const cJSON *j, const char *path) { return must(j, path, cJSON_IsString, "a string")->valuestring; }
bool au_bool(const cJSON *j, const char *path) { return cJSON_IsTrue(must(j, path, cJSON_IsBool, "a boolean")); }
int au_len(const cJSON *j, const char *path) { return cJSON_GetArraySize(must(j, path, cJSON_IsArray, "an array")); }

char *au_print(const cJSON *j)
{
    return j ? cJSON_PrintUnformatted(j) : strdup("null");
}

/* Removes members named like volatile fields, recursively. */
static void strip(cJSON *j)
{
    static const char *const drop[] = {"created_at", "updated_at", "at", "usage", "bytes", "stored_bytes", NULL};
    for (cJSON *c = j ? j->child : NULL, *n; c; c = n) {
        n = c->next;
        bool gone = false;
        for (const char *const *d = drop; c->string && *d && !gone; d++)
            gone = strcmp(c->string, *d) == 0;
        if (gone)
            cJSON_Delete(cJSON_DetachItemViaPointer(j, c));
        else
            strip(c);
    }
}

void au_wait_index(mh_daemon *d, const char *id)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    for (int i = 0; i < 6000; i++) {
        mh_resp r;
        if (mh_request(d, "GET", path, NULL, NULL, &r) != 0)
            return;
        cJSON *j = r.status == 200 ? mh_resp_json(&r) : NULL;
        const cJSON *b = j ? cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "index"), "building")
                           : NULL;
        bool building = cJSON_IsTrue(b);
        cJSON_Delete(j);
        mh_resp_free(&r);
        if (!building)
            return;
        mh_sleep_ms(10);
    }
    fail_msg("session %s: the index build did not finish within a minute", id);
}

char *au_snapshot(mh_daemon *d, const char *id, const char *queries_body)
{
    char path[256];
    au_wait_index(d, id);   /* a build in the background changes the answers: take the state after it */
    cJSON *snap = cJSON_CreateObject();
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    cJSON_AddItemToObject(snap, "session", au_call(d, "GET", path, 200, NULL));
    snprintf(path, sizeof path, "/v1/sessions/%s/slots", id);
    cJSON *slots = au_call(d, "GET", path, 200, NULL);
    cJSON *hist = cJSON_AddObjectToObject(snap, "history");
    const cJSON *arr = au_get(slots, "slots");
    for (const cJSON *s = arr ? arr->child : NULL; s; s = s->next) {
        const char *name = au_str(s, "name");
        snprintf(path, sizeof path, "/v1/sessions/%s/slots/%s/versions", id, name);
        cJSON_AddItemToObject(hist, name, au_call(d, "GET", path, 200, NULL));
        snprintf(path, sizeof path, "/v1/sessions/%s/slots/%s", id, name);
        char key[200];
        snprintf(key, sizeof key, "value:%s", name);
        cJSON_AddItemToObject(hist, key, au_call(d, "GET", path, 200, NULL));
    }
    cJSON_AddItemToObject(snap, "slots", slots);
    if (queries_body) {
        snprintf(path, sizeof path, "/v1/sessions/%s/query", id);
        cJSON_AddItemToObject(snap, "answers", au_call(d, "POST", path, 200, "%s", queries_body));
    }
    strip(snap);
    char *t = cJSON_PrintUnformatted(snap);
    cJSON_Delete(snap);
    return t;
}

/* ---- a client per thread ---- */

struct au_client {
    CURL *curl;
    char base[128];
    char *buf;
    size_t len, cap;
};

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    au_client *c = ud;
    size_t add = size * n;
    if (c->len + add + 1 > c->cap) {
        size_t cap = (c->len + add + 1) * 2;
        char *b = realloc(c->buf, cap);
        if (!b)
            return 0;
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, p, add);
    c->len += add;
    c->buf[c->len] = '\0';
    return add;
}

au_client *au_client_new(const mh_daemon *d)
{
    au_client *c = calloc(1, sizeof *c);
    if (!c || !(c->curl = curl_easy_init())) {
        free(c);
        return NULL;
    }
    snprintf(c->base, sizeof c->base, "%s", d->base);
    return c;
}

void au_client_free(au_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    free(c->buf);
    free(c);
}

long au_client_call(au_client *c, const char *method, const char *path, const char *body, cJSON **json)
{
    char url[512];
    long status = 0;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    snprintf(url, sizeof url, "%s%s", c->base, path);
    c->len = 0;
    curl_easy_reset(c->curl);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 60L);
    if (body) {
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (curl_easy_perform(c->curl) == CURLE_OK)
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    if (json)
        *json = c->len ? cJSON_ParseWithLength(c->buf, c->len) : NULL;
    return status;
}
