/*
 * server/etag.c — entity tag lists of If-Match / If-None-Match (server/etag.h).
 *
 * Design. A hand-written scanner over the RFC 9110 grammar: OWS, `*` alone, or
 * entity-tag *( OWS "," OWS entity-tag ) with entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc being
 * %x21 / %x23-7E / obs-text. Empty list elements (",,") are allowed, as the RFC's list rule says. The
 * parsed tags are slices of the header value: no allocation.
 */
#include "server/etag.h"

#include <string.h>

#include "core/error.h"

static const char *skip_ows(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

static bool etagc(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80;
}

int srv_etag_parse(const char *value, srv_etag_list *out)
{
    memset(out, 0, sizeof(*out));
    if (!value)
        return 0;
    out->present = true;
    const char *p = skip_ows(value);
    if (*p == '*') {
        if (*skip_ows(p + 1) != '\0')
            return MA_EINVAL;
        out->any = true;
        return 0;
    }
    for (;;) {
        p = skip_ows(p);
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '\0')
            break;
        srv_etag t = { 0 };
        if (p[0] == 'W' && p[1] == '/') {
            t.weak = true;
            p += 2;
        }
        if (*p == '"') {
            const char *s = ++p;
            while (etagc((unsigned char)*p))
                p++;
            if (*p != '"')
                return MA_EINVAL;
            t.opaque = s;
            t.len = (size_t)(p - s);
            p++;
        } else if (!t.weak && *p >= '0' && *p <= '9') {
            const char *s = p;   /* a bare version, as accepted before entity tags were parsed */
            while (*p >= '0' && *p <= '9')
                p++;
            t.opaque = s;
            t.len = (size_t)(p - s);
        } else {
            return MA_EINVAL;
        }
        if (out->n == SRV_ETAG_MAX)
            return MA_EINVAL;
        out->tags[out->n++] = t;
        p = skip_ows(p);
        if (*p != ',' && *p != '\0')
            return MA_EINVAL;
    }
    return out->n ? 0 : MA_EINVAL;
}

bool srv_etag_matches(const srv_etag_list *l, const char *etag, bool weak)
{
    if (!l || !l->present || !etag)
        return false;
    if (l->any)
        return true;
    bool ew = etag[0] == 'W' && etag[1] == '/';
    const char *o = ew ? etag + 3 : etag + 1;
    size_t ol = strlen(o);
    if (ol == 0 || o[ol - 1] != '"')
        return false;
    ol--;
    for (int i = 0; i < l->n; i++) {
        const srv_etag *t = &l->tags[i];
        if (!weak && (t->weak || ew))
            continue;
        if (t->len == ol && memcmp(t->opaque, o, ol) == 0)
            return true;
    }
    return false;
}
