/*
 * server/etag.h — entity tags and the conditional request headers (RFC 9110 section 8.8.3, 13.1):
 * parsing If-Match / If-None-Match values and comparing them with the ETag of an answer.
 *
 * A header value is `*` or a comma-separated list of entity tags `"opaque"` or `W/"opaque"`. For
 * compatibility with earlier clients a bare decimal version (`3`) is read as the strong tag "3".
 * Strong comparison (If-Match) matches only two strong tags with the same opaque part; weak comparison
 * (If-None-Match) matches any two tags with the same opaque part. `*` matches any current
 * representation (the caller knows whether there is one).
 *
 * Not done here: If-Modified-Since / If-Unmodified-Since / If-Range (the API has no dates to compare).
 */
#ifndef SRV_ETAG_H
#define SRV_ETAG_H

#include <stdbool.h>
#include <stddef.h>

#define SRV_ETAG_MAX 16   /* tags in one header value */

typedef struct {
    bool weak;
    const char *opaque;   /* into the parsed value, not NUL-terminated */
    size_t len;
} srv_etag;

typedef struct {
    bool present;         /* the header was sent */
    bool any;             /* `*` */
    int n;
    srv_etag tags[SRV_ETAG_MAX];
} srv_etag_list;

/* Parses `value` (NULL: header absent, an empty list with present = false). The tags point into value,
 * which must outlive *out. Returns 0, or MA_EINVAL for a malformed value or more than SRV_ETAG_MAX
 * tags. */
int srv_etag_parse(const char *value, srv_etag_list *out);

/* True when the list matches the entity tag `etag` (as sent in an ETag header, e.g. "\"3\"" or
 * "W/\"x\""): `*` matches any etag; otherwise one tag must match by strong (weak = false) or weak
 * (weak = true) comparison. An absent list or a NULL etag never matches. */
bool srv_etag_matches(const srv_etag_list *l, const char *etag, bool weak);

#endif
