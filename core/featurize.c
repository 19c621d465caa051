/*
 * core/featurize.c — deterministic lexical text embedder (see core/featurize.h for the recipe).
 *
 * One pass over the text: a word is a maximal run of word bytes (ASCII letters, folded to lower case,
 * digits, and any byte >= 0x80 so UTF-8 text keeps its letters, without Unicode folding). Each word adds
 * its own feature and the trigrams of " word " (byte trigrams; for ASCII these are character trigrams).
 * Features are hashed incrementally (FNV-1a over a one-byte kind tag, then the bytes), so no buffer is
 * needed for long words. Not done on purpose: stemming, stop words, IDF weighting — anything that would
 * need a vocabulary or make the embedding depend on more than the text itself.
 */
#include "core/featurize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/hash.h"

#define WORD_WEIGHT    1.0
#define TRIGRAM_WEIGHT 0.5

/* Folded form of a byte: lower-case letter, digit or high byte; 0 for a separator. */
static unsigned char fold(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return (unsigned char)(c - 'A' + 'a');
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80)
        return c;
    return 0;
}

static void add_feature(double *acc, int dim, uint64_t h, double w)
{
    /* The sign comes from the top bit and the index from the low bits: independent for FNV-1a. */
    size_t idx = (size_t)(h % (uint64_t)dim);
    acc[idx] += (h >> 63) ? -w : w;
}

/* Adds the features of one folded word w[0..n). */
static int add_word(double *acc, int dim, const unsigned char *w, size_t n)
{
    uint64_t h = ma_fnv1a64_byte(MA_FNV_OFFSET, 'w');
    for (size_t i = 0; i < n; i++)
        h = ma_fnv1a64_byte(h, w[i]);
    add_feature(acc, dim, h, WORD_WEIGHT);

    /* Trigrams of " w ": n of them, the first and last include the boundary space. */
    for (size_t i = 0; i < n; i++) {
        unsigned char tri[3];
        tri[0] = i == 0 ? ' ' : w[i - 1];
        tri[1] = w[i];
        tri[2] = i + 1 == n ? ' ' : w[i + 1];
        uint64_t t = ma_fnv1a64_byte(MA_FNV_OFFSET, 't');
        t = ma_fnv1a64_byte(ma_fnv1a64_byte(ma_fnv1a64_byte(t, tri[0]), tri[1]), tri[2]);
        add_feature(acc, dim, t, TRIGRAM_WEIGHT);
    }
    return (int)(n + 1 > (size_t)INT32_MAX ? INT32_MAX : n + 1);
}

int ma_embed_text(const char *text, size_t len, int dim, float *out)
{
    if (dim < 1 || (!text && len > 0) || !out)
        return MA_EINVAL;
    double *acc = calloc((size_t)dim, sizeof *acc);
    unsigned char *word = len ? malloc(len) : NULL;
    if (!acc || (len && !word)) {
        free(acc);
        free(word);
        return MA_ENOMEM;
    }
    long features = 0;
    size_t wn = 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = i < len ? fold((unsigned char)text[i]) : 0;
        if (c) {
            word[wn++] = c;
            continue;
        }
        if (wn) {
            features += add_word(acc, dim, word, wn);
            if (features > INT32_MAX)
                features = INT32_MAX;
            wn = 0;
        }
    }
    double ss = 0;
    for (int j = 0; j < dim; j++)
        ss += acc[j] * acc[j];
    /* Features can cancel exactly (opposite signs in one bucket): then the vector stays zero. */
    double inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
    for (int j = 0; j < dim; j++)
        out[j] = (float)(acc[j] * inv);
    free(acc);
    free(word);
    return (int)features;
}

int ma_embed_text_heads(const char *text, size_t len, int heads, int dim, float *out)
{
    if (heads < 1)
        return MA_EINVAL;
    int rc = ma_embed_text(text, len, dim, out);
    if (rc < 0)
        return rc;
    for (int h = 1; h < heads; h++)
        memcpy(out + (size_t)h * (size_t)dim, out, (size_t)dim * sizeof *out);
    return rc;
}
