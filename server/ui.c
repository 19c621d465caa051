/*
 * server/ui.c — serves the inspector's static files (server/ui.h) from arrays compiled into the binary.
 *
 * Design. $(BUILD)/gen/server/ui_assets.h (made by server/ui/embed.sh from server/ui/) holds each file's
 * bytes, name, Content-Type and an ETag (CRC and length of the bytes). Answers carry
 * `Cache-Control: no-cache` (the browser keeps the file but revalidates each load, so an upgraded
 * daemon's page is never stale) and the ETag; a matching If-None-Match answers 304 with no body.
 * Every answer also carries X-Content-Type-Options: nosniff; the page carries a Content-Security-Policy
 * that allows only this origin (no inline script, no CDN) and forbids framing.
 *
 * Everything runs on the loop thread: the answers are copies of static memory, no worker job.
 * Not done here: compression, HEAD (the router has no HEAD-from-GET), a directory index.
 */
#include "server/ui.h"

#include <stddef.h>
#include <string.h>

#include "server/http.h"

typedef struct {
    const char *name;          /* file name under /ui/ */
    const char *type;          /* Content-Type */
    const unsigned char *data;
    size_t len;
    const char *etag;          /* quoted */
} ui_asset;

#include "server/ui_assets.h"   /* generated: $(BUILD)/gen/server/ui_assets.h */

#define UI_NASSETS (sizeof ui_assets / sizeof *ui_assets)

static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                          "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/* True when an If-None-Match header value lists `etag` (or is "*"). */
static int etag_listed(const char *inm, const char *etag)
{
    size_t el = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (*p == '*')
            return 1;
        if (strncmp(p, etag, el) == 0 && (p[el] == '\0' || p[el] == ',' || p[el] == ' '))
            return 1;
        while (*p && *p != ',')
            p++;
    }
    return 0;
}

static void serve(srv_request *req, const ui_asset *a)
{
    srv_resp_header(req, "ETag", a->etag);
    srv_resp_header(req, "Cache-Control", "no-cache");
    srv_resp_header(req, "X-Content-Type-Options", "nosniff");
    if (strncmp(a->type, "text/html", 9) == 0) {
        srv_resp_header(req, "Content-Security-Policy", csp);
        srv_resp_header(req, "Referrer-Policy", "no-referrer");
    }
    const char *inm = srv_req_header(req, "If-None-Match");
    if (inm && etag_listed(inm, a->etag)) {
        srv_respond_empty(req, 304);
        return;
    }
    srv_respond_raw(req, 200, a->type, (const char *)a->data, a->len);
}

static const ui_asset *find(const char *name)
{
    for (size_t i = 0; i < UI_NASSETS; i++)
        if (strcmp(ui_assets[i].name, name) == 0)
            return &ui_assets[i];
    return NULL;
}

static void h_page(srv_request *req, void *ud)
{
    (void)ud;
    const ui_asset *a = find("index.html");
    if (!a) {
        srv_respond_error(req, 404, "not_found", "the UI was built without index.html");
        return;
    }
    serve(req, a);
}

static void h_asset(srv_request *req, void *ud)
{
    (void)ud;
    const char *name = srv_req_param(req, "asset");
    const ui_asset *a = name ? find(name) : NULL;
    if (!a) {
        srv_respond_error(req, 404, "not_found", "no UI file %.64s", name ? name : "");
        return;
    }
    serve(req, a);
}

int ui_register(srv_router *r)
{
    int rc = srv_route_add(r, "GET", "/ui", h_page, NULL);
    if (rc == 0)
        rc = srv_route_add(r, "GET", "/ui/{asset}", h_asset, NULL);
    return rc;
}
