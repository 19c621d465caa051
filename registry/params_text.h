/*
 * registry/params_text.h — a session's config (ma_params) as the text stored with the session.
 *
 * Design. The store keeps a session's config as an opaque text column; the registry writes and reads it
 * here, without the REST codec (server/codec.c is for request and answer bodies only). The text is JSON,
 * the same object every earlier version of the daemon stored: every field, nested "vla" and "delta"
 * objects, enums by name, e.g.
 *   {"heads":1,"dim":64,"value_dim":64,...,"vla":{"lambda0":0.1,...},"delta":{"beta":1},...}
 * so existing databases load unchanged (a text without the later "slot_policy" object reads as the
 * default policies). Reading is tolerant of fields an older writer left out (they take
 * ma_params_default's values, value_dim that of dim) and strict about everything else: an unknown field,
 * a value of the wrong JSON type or a config ma_params_validate refuses means the row is corrupt.
 *
 * Thread-safe (no shared state); no I/O.
 */
#ifndef REG_PARAMS_TEXT_H
#define REG_PARAMS_TEXT_H

#include <stddef.h>

#include "core/params.h"

/* The stored text of p (malloc'd, NUL-terminated; free with free()). 0 or MA_ENOMEM. */
int reg_params_encode(const ma_params *p, char **out);

/* Parses a stored config text into *out. 0, or MA_ECORRUPT with err saying what is wrong (not JSON, which
 * field, what was expected); *out is untouched on failure. */
int reg_params_decode(const char *text, ma_params *out, char *err, size_t errlen);

#endif
