/*
 * core/error.h — the error codes every memattn module returns.
 *
 * Convention (libuv's): functions return int, 0 on success, a negative MA_E* code on failure.
 * Out-of-memory policy: core/ returns MA_ENOMEM and leaves the object unchanged where it can; callers
 * (the server) map it to 503. Nothing in core/ aborts on bad input.
 * ma_strerror() gives a short fixed text; detailed messages (what, where, expected) are built by callers.
 */
#ifndef MA_ERROR_H
#define MA_ERROR_H

enum {
    MA_OK         = 0,
    MA_ENOMEM     = -1,  /* allocation failed */
    MA_EINVAL     = -2,  /* bad argument: dimension, range, non-finite, bad name */
    MA_ENOTFOUND  = -3,  /* no such session / slot / event */
    MA_EEXISTS    = -4,  /* slot (or session) already exists */
    MA_EPROTECTED = -5,  /* slot is protected: write void / evict refused */
    MA_ECONFLICT  = -6,  /* explicit version not greater than the current one */
    MA_EFULL      = -7,  /* slot table at capacity and every resident slot protected */
    MA_ECORRUPT   = -8,  /* serialised buffer truncated, foreign or inconsistent */
    MA_EIO        = -9,  /* storage I/O failed */
    MA_ENOVERSION = -10, /* slot exists but not that version */
    MA_EPRECOND   = -11, /* expected version (If-Match) differs from the current one */
    MA_EBUSY      = -12, /* queue full / overloaded */
    MA_EEMPTY     = -13, /* nothing to attend over (no events, or every candidate masked) */
    MA_ETOOBIG    = -14, /* a session's fixed memory footprint exceeds the memory budget */
};

/* A static, never-NULL description of an MA_E* code ("unknown error" for anything else). */
const char *ma_strerror(int err);

#endif
