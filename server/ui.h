/*
 * server/ui.h — the memory inspector: a browser UI served by the daemon at /ui.
 *
 * The page (server/ui/index.html, app.js, app.css) is plain HTML/JS/CSS compiled into the binary at
 * build time (server/ui/embed.sh, a Makefile rule); it talks to the /v1 API of the same daemon from
 * the browser. /ui and its assets need no token (auth applies to /v1/ only, server/http.c): the page
 * asks for the token when the API answers 401 and keeps it in sessionStorage.
 */
#ifndef SRV_UI_H
#define SRV_UI_H

#include "server/router.h"

/* Registers GET /ui (the page) and GET /ui/{asset} (its scripts and styles) on `r`. Call once while
 * the routing table is built. Returns 0 or srv_route_add's error (MA_EEXISTS, MA_ENOMEM). */
int ui_register(srv_router *r);

#endif
