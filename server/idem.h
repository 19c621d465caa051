/*
 * server/idem.h — the Idempotency-Key header on the wire (docs/API.md, "Safe retries"): the key's
 * syntax and the fingerprint that tells "a retry of the same request" from "another request with the
 * same key". The records themselves are the registry's (reg_idem_*), stored by store/idem.c; the
 * handlers' use of both is in server/api.c (idem_replay, idem_settle).
 *
 * A key is 1..255 bytes of printable ASCII (0x20..0x7E; HTTP has already trimmed leading and trailing
 * spaces): a UUID, 32 hex digits, or a structured-field string such as "\"8e03978e-...\"" (the quotes
 * are part of the key). Anything else is 400 `bad_request`.
 *
 * The fingerprint is a 64-bit hash of the request's method and route template, its path parameters, the
 * query parameters and headers that change what it does (?forget=, If-Match), and its body's bytes: the
 * body is hashed as sent (two bodies that differ only in whitespace are different requests). It is not
 * cryptographic: it catches a client's mistake (a key reused for another request), with a collision
 * chance of about 2^-64, not a forgery (a client could only fool itself).
 */
#ifndef SRV_IDEM_H
#define SRV_IDEM_H

#include <stddef.h>
#include <stdint.h>

#define SRV_IDEM_KEY_MAX 255

/* 0 when `key` (a header value, NUL-terminated) is a valid Idempotency-Key; else -1 with why it is not
 * (for the 400 message) in why. */
int srv_idem_key_check(const char *key, char *why, size_t whylen);

/* The fingerprint of a request made of `nparts` strings (NULL is distinct from "": absent) and its body
 * (len bytes). Deterministic across processes and hosts (it is stored with the key). */
uint64_t srv_idem_fingerprint(const char *const *parts, size_t nparts, const void *body, size_t len);

#endif
