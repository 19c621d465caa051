/*
 * server/router.c — the routing table of server/router.h.
 *
 * Design. A flat array of routes, each template pre-split into segments. A lookup splits the path once
 * and compares it with every route: a few dozen routes make a linear scan cheaper than any tree, and
 * the precedence rule (literal beats parameter at the first differing segment) is a comparison of two
 * bit masks of literal segments. The Allow list of a 405 collects, in registration order and without
 * duplicates, the methods of every template that matches the path.
 *
 * HEAD and OPTIONS. A HEAD request with no HEAD route of its own is matched as GET (the server sends
 * the answer's headers without its body). OPTIONS is never routed unless registered: the match
 * reports MA_ECONFLICT with the Allow list, and the server answers 204 with it (or a CORS preflight).
 * The Allow list names HEAD after GET and OPTIONS last, as the server accepts both on every path.
 *
 * Not done here: wildcards, regex constraints.
 */
#include "server/router.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

typedef struct {
    char *seg;          /* literal text, or the parameter's name without braces */
    bool param;
} segment;

typedef struct {
    char *method;
    char *tmpl;
    srv_handler handler;
    void *userdata;
    int nseg;
    segment segs[SRV_MAX_SEGMENTS];
    uint32_t literal_mask;   /* bit (nseg-1-i) set when segment i is literal: bigger = more literal first */
} route;

struct srv_router {
    route *routes;
    size_t n, cap;
};

srv_router *srv_router_create(void)
{
    return calloc(1, sizeof(srv_router));
}

static void route_free(route *rt)
{
    free(rt->method);
    free(rt->tmpl);
    for (int i = 0; i < rt->nseg; i++)
        free(rt->segs[i].seg);
}

void srv_router_destroy(srv_router *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        route_free(&r->routes[i]);
    free(r->routes);
    free(r);
}

static bool valid_param_name(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

/* Splits `tmpl` into rt->segs. */
static int parse_template(route *rt, const char *tmpl)
{
    if (tmpl[0] != '/')
        return MA_EINVAL;
    if (tmpl[1] == '\0')
        return 0;   /* "/" : zero segments */
    const char *p = tmpl + 1;
    int nparams = 0;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || rt->nseg == SRV_MAX_SEGMENTS)
            return MA_EINVAL;
        segment *s = &rt->segs[rt->nseg];
        if (p[0] == '{') {
            if (len < 3 || p[len - 1] != '}' || !valid_param_name(p + 1, len - 2))
                return MA_EINVAL;
            if (++nparams > SRV_MAX_PARAMS)
                return MA_EINVAL;
            s->param = true;
            s->seg = strndup(p + 1, len - 2);
            for (int i = 0; s->seg && i < rt->nseg; i++)
                if (rt->segs[i].param && strcmp(rt->segs[i].seg, s->seg) == 0) {
                    free(s->seg);
                    return MA_EINVAL;
                }
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len))
                return MA_EINVAL;
            s->param = false;
            s->seg = strndup(p, len);
        }
        if (!s->seg)
            return MA_ENOMEM;
        rt->nseg++;
        if (!end)
            break;
        p = end + 1;
    }
    for (int i = 0; i < rt->nseg; i++)
        if (!rt->segs[i].param)
            rt->literal_mask |= 1u << (rt->nseg - 1 - i);
    return 0;
}

static bool same_shape(const route *a, const route *b)
{
    if (a->nseg != b->nseg)
        return false;
    for (int i = 0; i < a->nseg; i++) {
        if (a->segs[i].param != b->segs[i].param)
            return false;
        if (!a->segs[i].param && strcmp(a->segs[i].seg, b->segs[i].seg) != 0)
            return false;
    }
    return true;
}

int srv_route_add(srv_router *r, const char *method, const char *tmpl, srv_handler handler,
                  void *userdata)
{
    if (!r || !method || !method[0] || !tmpl || !handler)
        return MA_EINVAL;
    route rt = { .handler = handler, .userdata = userdata };
    int rc = parse_template(&rt, tmpl);
    if (rc < 0)
        goto fail;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->routes[i].method, method) == 0 && same_shape(&r->routes[i], &rt)) {
            rc = MA_EEXISTS;
            goto fail;
        }
    rt.method = strdup(method);
    rt.tmpl = strdup(tmpl);
    if (!rt.method || !rt.tmpl) {
        rc = MA_ENOMEM;
        goto fail;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        route *nr = realloc(r->routes, cap * sizeof(*nr));
        if (!nr) {
            rc = MA_ENOMEM;
            goto fail;
        }
        r->routes = nr;
        r->cap = cap;
    }
    r->routes[r->n++] = rt;
    return 0;
fail:
    route_free(&rt);
    return rc;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A path segment: a slice of the request path. */
typedef struct {
    const char *p;
    size_t len;
} slice;

static int split_path(const char *path, slice *segs, int *nseg)
{
    *nseg = 0;
    if (path[0] != '/')
        return MA_EINVAL;
    if (path[1] == '\0')
        return 0;
    const char *p = path + 1;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || *nseg == SRV_MAX_SEGMENTS)
            return MA_ENOTFOUND;   /* "//", trailing "/" or too deep: no template can match */
        segs[(*nseg)++] = (slice){ p, len };
        if (!end)
            return 0;
        p = end + 1;
    }
}

static bool slice_eq(slice s, const char *lit)
{
    return strlen(lit) == s.len && memcmp(lit, s.p, s.len) == 0;
}

/* A literal segment of the template matches the raw segment only when equal byte for byte: templates
 * hold no characters that need percent-encoding. */
static bool route_matches(const route *rt, const slice *segs, int nseg)
{
    if (rt->nseg != nseg)
        return false;
    for (int i = 0; i < nseg; i++)
        if (!rt->segs[i].param && !slice_eq(segs[i], rt->segs[i].seg))
            return false;
    return true;
}

/* Appends the percent-decoded `s` plus NUL at buf[*used]. */
static int decode_into(slice s, char *buf, size_t buflen, size_t *used, const char **out)
{
    size_t o = *used;
    *out = buf + o;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.p[i];
        if (c == '%') {
            if (i + 2 >= s.len)
                return MA_EINVAL;
            int hi = hexval(s.p[i + 1]), lo = hexval(s.p[i + 2]);
            /* An encoded NUL would silently truncate the value. */
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return MA_EINVAL;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o + 1 >= buflen)
            return MA_EINVAL;
        buf[o++] = c;
    }
    if (o >= buflen)
        return MA_EINVAL;
    buf[o++] = '\0';
    *used = o;
    return 0;
}

/* Adds `method` to the list (at most `max`) unless it is there. */
static void method_add(const char **list, int *n, int max, const char *method)
{
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i], method) == 0)
            return;
    if (*n < max)
        list[(*n)++] = method;
}

/* Writes "A, B, C" into allow: the methods in `list` (registration order), HEAD right after GET
 * unless HEAD has routes of its own, and OPTIONS last. */
static void allow_format(const char **list, int n, char *allow, size_t allowlen)
{
    const char *all[SRV_MAX_ALLOW + 2];
    int na = 0;
    bool has_head = false, has_options = false;
    for (int i = 0; i < n; i++) {
        has_head |= strcmp(list[i], "HEAD") == 0;
        has_options |= strcmp(list[i], "OPTIONS") == 0;
    }
    for (int i = 0; i < n; i++) {
        all[na++] = list[i];
        if (strcmp(list[i], "GET") == 0 && !has_head)
            all[na++] = "HEAD";
    }
    if (!has_options)
        all[na++] = "OPTIONS";
    size_t alen = 0;
    allow[0] = '\0';
    for (int i = 0; i < na; i++) {
        size_t ml = strlen(all[i]);
        if (alen + (alen ? 2 : 0) + ml + 1 > allowlen)
            break;
        if (alen) {
            memcpy(allow + alen, ", ", 2);
            alen += 2;
        }
        memcpy(allow + alen, all[i], ml + 1);
        alen += ml;
    }
}

/* The best route for method among those matching segs, or NULL. */
static const route *best_route(const srv_router *r, const char *method, const slice *segs, int nseg)
{
    const route *best = NULL;
    for (size_t i = 0; i < r->n; i++) {
        const route *rt = &r->routes[i];
        if (strcmp(rt->method, method) == 0 && route_matches(rt, segs, nseg) &&
            (!best || rt->literal_mask > best->literal_mask))
            best = rt;
    }
    return best;
}

int srv_router_match(const srv_router *r, const char *method, const char *path, srv_match *m,
                     char *buf, size_t buflen, char *allow, size_t allowlen)
{
    slice segs[SRV_MAX_SEGMENTS] = { { NULL, 0 } };
    int nseg;
    if (allow && allowlen)
        allow[0] = '\0';
    int rc = split_path(path, segs, &nseg);
    if (rc < 0)
        return rc;

    const route *best = best_route(r, method, segs, nseg);
    /* HEAD is GET without the body (the server drops it): GET's handler answers. */
    if (!best && strcmp(method, "HEAD") == 0)
        best = best_route(r, "GET", segs, nseg);
    if (!best) {
        const char *list[SRV_MAX_ALLOW];
        int n = 0;
        bool any = false;
        for (size_t i = 0; i < r->n; i++)
            if (route_matches(&r->routes[i], segs, nseg)) {
                any = true;
                method_add(list, &n, SRV_MAX_ALLOW, r->routes[i].method);
            }
        if (!any)
            return MA_ENOTFOUND;
        if (allow && allowlen)
            allow_format(list, n, allow, allowlen);
        return MA_ECONFLICT;
    }

    memset(m, 0, sizeof(*m));
    m->handler = best->handler;
    m->userdata = best->userdata;
    m->tmpl = best->tmpl;
    size_t used = 0;
    for (int i = 0; i < nseg; i++) {
        if (!best->segs[i].param)
            continue;
        m->names[m->nparams] = best->segs[i].seg;
        rc = decode_into(segs[i], buf, buflen, &used, &m->values[m->nparams]);
        if (rc < 0)
            return rc;
        m->nparams++;
    }
    return 0;
}
