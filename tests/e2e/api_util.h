/*
 * tests/e2e/api_util.h — helpers of the REST API end-to-end tests (tests/e2e/test_api_*.c), on top of
 * tests/e2e/harness.h: a request that must answer a given status (the test fails with the body shown
 * otherwise), JSON lookups by a small path syntax, and a per-thread client for concurrency tests.
 *
 * These helpers assert (cmocka), unlike the harness: they are for tests that state one expectation
 * per call.
 */
#ifndef AU_API_UTIL_H
#define AU_API_UTIL_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "tests/e2e/harness.h"

/* Sends method path with a printf-formatted body (fmt NULL: no body) and asserts the status. Returns
 * the parsed JSON answer (caller frees; NULL for an empty body). */
cJSON *au_call(mh_daemon *d, const char *method, const char *path, long want, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Like au_call with extra request headers (NULL-terminated list). */
cJSON *au_callh(mh_daemon *d, const char *method, const char *path, const char *const *headers, long want,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Asserts an error answer: status and API.md error code; returns its message (static buffer). */
const char *au_error(mh_daemon *d, const char *method, const char *path, long status, const char *code,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Lookup by path: "results[0].payload", "config.vla.period", "slots[2].name". NULL when absent. */
const cJSON *au_get(const cJSON *j, const char *path);
double au_num(const cJSON *j, const char *path);       /* asserts a number */
const char *au_str(const cJSON *j, const char *path);  /* asserts a string */
bool au_bool(const cJSON *j, const char *path);        /* asserts a boolean */
int au_len(const cJSON *j, const char *path);          /* asserts an array; its length */

/* The canonical text of a JSON value (for comparing whole answers); caller frees with cJSON_free. */
char *au_print(const cJSON *j);

/* Waits (up to a minute, else fails the test) until session id has no index build queued or running
 * (describe's index.building; docs/ARCHIVE.md, "Builds in the background"). */
void au_wait_index(mh_daemon *d, const char *id);

/* The session's state as seen through the API: describe + slot list + versions of the slots + the
 * answers of `queries_body` (a {"queries":[...]} text, or NULL), with volatile fields (times, usage,
 * bytes) removed, taken once no index build of it is pending (au_wait_index: the state then depends only
 * on the events). Two snapshots are equal when nothing changed. Caller frees. */
char *au_snapshot(mh_daemon *d, const char *id, const char *queries_body);

/* A blocking client of its own (one libcurl handle), for use from a thread. */
typedef struct au_client au_client;
au_client *au_client_new(const mh_daemon *d);
void au_client_free(au_client *c);
/* Returns the status (0 on transport failure); *json gets the parsed answer (or NULL). No asserts:
 * safe from any thread. */
long au_client_call(au_client *c, const char *method, const char *path, const char *body, cJSON **json);

#endif
