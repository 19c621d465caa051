/*
 * core/featurize.h — the built-in deterministic lexical text embedder (docs/SLOTS.md).
 *
 * Where the REST API expects a key, query or value vector, `text` may be given instead; a slot written
 * without a key is keyed by its name's embedding. This module turns text into a unit vector:
 *   1. folding: ASCII letters are lower-cased; every byte that is not an ASCII letter or digit and not
 *      part of a UTF-8 multi-byte sequence is a separator (so "_", "-", "?", spaces all split words):
 *      "capital_of_france" and "Capital of France?" give the same words;
 *   2. features: every word ("w" + word, weight 1) and every character trigram of every word padded with
 *      one space on each side ("t" + trigram, weight 1/2), so near-identical words still overlap;
 *   3. signed feature hashing: FNV-1a 64 of the feature string; index = hash mod dim, sign from bit 63;
 *   4. L2 normalisation (accumulated in double, rounded to float once at the end).
 * Integer hashing, a fixed summation order and correctly rounded sqrt make the result bit-identical across
 * runs, compilers and machines.
 *
 * What it deliberately is not: a semantic embedding. It is naive lexical selection — synonyms,
 * paraphrases and other languages' words do not land close; non-ASCII letters are kept byte for byte
 * (no Unicode case folding). See docs/SLOTS.md.
 *
 * Threads: pure functions, no state; safe from any thread.
 */
#ifndef MA_FEATURIZE_H
#define MA_FEATURIZE_H

#include <stddef.h>
#include <stdint.h>

#include "core/hash.h"   /* ma_fnv1a64, the hash of step 3 */

/* Embeds text[0..len) (not necessarily NUL-terminated; any bytes) into out[0..dim), L2-normalised.
 * Returns the number of features hashed (>= 0; 0 means the text has no word characters and out is all
 * zeros), MA_EINVAL if dim < 1, out is NULL or text is NULL with len > 0, MA_ENOMEM. */
int ma_embed_text(const char *text, size_t len, int dim, float *out);

/* The same embedding replicated for every head: out[h*dim + j] = ma_embed_text(...)[j], h < heads
 * (the layout of a per-head key, query or value). Returns as ma_embed_text, MA_EINVAL if heads < 1. */
int ma_embed_text_heads(const char *text, size_t len, int heads, int dim, float *out);

#endif
