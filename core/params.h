/*
 * core/params.h — a session's configuration (the "config" object of the REST API).
 *
 * A plain value type: every module of core/ is created from one. Defaults and ranges are those of the
 * "config" object of docs/API.md; ma_params_validate() is the single place that checks them, so the
 * server, the registry and the tests agree on what a valid config is. Text forms live outside core: the
 * REST codec (server/codec.c) decodes request bodies and encodes answers, the registry
 * (registry/params_text.c) writes and reads the text stored with a session. This header has no I/O.
 */
#ifndef MA_PARAMS_H
#define MA_PARAMS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { MA_BACKBONE_VLA = 0, MA_BACKBONE_LINEAR, MA_BACKBONE_DELTA, MA_BACKBONE_NONE } ma_backbone_kind;
typedef enum { MA_FEATURE_IDENTITY = 0, MA_FEATURE_ELU1 } ma_feature;
typedef enum { MA_SELECTOR_INDEX = 0, MA_SELECTOR_CHUNKS } ma_selector;
/* The slot table's policies (docs/SLOTS.md "Policies"); the first value of each is today's behaviour. */
typedef enum { MA_EVICTION_LRU = 0, MA_EVICTION_SCORE } ma_eviction;
typedef enum { MA_OVERWRITE_REPLACE = 0, MA_OVERWRITE_BLEND } ma_overwrite;
typedef enum { MA_SLOT_READ_BEST = 0, MA_SLOT_READ_TOPK } ma_slot_read;

/* Limits of API.md (inclusive). */
#define MA_MAX_HEADS     64
#define MA_MAX_DIM       1024
#define MA_MAX_SLOTS     65536
#define MA_MAX_CHUNK     4096
#define MA_MAX_TOPK      4096
#define MA_MAX_WINDOW    1048576
#define MA_MAX_NAME      128      /* session ids and slot names: 1..128 of [A-Za-z0-9._:-] */
#define MA_MAX_READ_K    1024     /* slot_policy.k: slots of a weighted (topk) read */

/* Per-session slot policies ("slot_policy" of the config). */
typedef struct {
    ma_eviction eviction;      /* default lru: the least recently updated unprotected slot; score: the
                                  lowest importance/recency/usage score (docs/SLOTS.md) */
    ma_overwrite overwrite;    /* default replace; blend: the new value is alpha·new + (1−alpha)·old */
    double alpha;              /* (0, 1], default 0.5 (used by blend) */
    ma_slot_read read;         /* default best: the best-matching slot answers; topk: a softmax-weighted
                                  read over the k best-matching slots */
    int k;                     /* 1..MA_MAX_READ_K, default 4 (used by topk) */
    double temperature;        /* (0, 100], default 0.1 (used by topk): weights softmax(score / T) */
} ma_slot_policy;

typedef struct {
    int heads;              /* H, 1..64, default 1 */
    int dim;                /* d, key/query dim per head, 1..1024, default 64 */
    int value_dim;          /* d_v, 1..1024, default = dim */
    int slots;              /* M, resident slot capacity, 1..65536, default 64 */
    int chunk;              /* C, events per archive chunk, 1..4096, default 64 */
    int topk;               /* sparse read: chunks (selector chunks) or clusters probed (index), default 16 */
    int window;             /* sliding-window length W, default 256 */
    ma_backbone_kind backbone;  /* default vla */
    struct {
        double lambda0;        /* > 0, default 0.1: A starts as (1/lambda0)·I */
        int period;            /* >= 1, default 20: refresh every `period` events */
        double refresh;        /* >= 0, default 1e-3: A += refresh·I */
        ma_feature feature;    /* default identity */
        double penalty_scale;  /* > 0, default 1 (the paper's code: 1/sqrt(dim)) */
    } vla;
    struct {
        double beta;           /* (0, 1], default 1 */
    } delta;
    double route_threshold;    /* tau in [-1, 2], default 0.5; above 1 disables cosine slot matching */
    ma_selector selector;      /* default index */
    ma_slot_policy slot_policy;
} ma_params;

/* Fills *p with the built-in defaults. */
void ma_params_default(ma_params *p);

/* Returns 0 if every field is in range, else MA_EINVAL and writes into err (if errlen > 0) a message
 * naming the field, the value and the accepted range, e.g. "heads: 0 is out of range, expected 1..64". */
int ma_params_validate(const ma_params *p, char *err, size_t errlen);

/* True when two configs are the same (for the idempotent PUT of a session). */
bool ma_params_equal(const ma_params *a, const ma_params *b);

/* Names of enum values as used in JSON ("vla", "identity", "index", ...); NULL for an unknown value.
 * The *_parse functions return 0 and set *out, or MA_EINVAL for an unknown name. */
const char *ma_backbone_name(ma_backbone_kind k);
const char *ma_feature_name(ma_feature f);
const char *ma_selector_name(ma_selector s);
const char *ma_eviction_name(ma_eviction e);
const char *ma_overwrite_name(ma_overwrite o);
const char *ma_slot_read_name(ma_slot_read r);
int ma_backbone_parse(const char *name, ma_backbone_kind *out);
int ma_feature_parse(const char *name, ma_feature *out);
int ma_selector_parse(const char *name, ma_selector *out);
int ma_eviction_parse(const char *name, ma_eviction *out);
int ma_overwrite_parse(const char *name, ma_overwrite *out);
int ma_slot_read_parse(const char *name, ma_slot_read *out);

/* True when name is 1..MA_MAX_NAME characters of [A-Za-z0-9._:-] (session ids and slot names). */
bool ma_name_valid(const char *name);

#endif
