/*
 * bench/tasks_gen.h — the streams of the EVAL.md A task table (the mechanism, measured).
 *
 * A stream is T events of one head: a unit key in R^d and a value that is a row of a random codebook
 * (unit rows; answers are decoded by the nearest row). Almost every event is filler; a few "planted"
 * events carry the facts of the tasks, some with a write signal (a slot name). Queries say when they are
 * asked (after events [0, at)), which key they ask with, and which value and event are correct.
 *
 * Two stream kinds per seed:
 *  - TG_STREAM_MAIN carries five tasks side by side (each with `trials` queried trials): recall without
 *    write signal, overwrite, versioning, distractor pollution, streaming QA. Their keys are mutually
 *    separated (|cos| < anchor_bound), so no task can answer or disturb another's query, and their slot
 *    names number at most M, so no slot is ever evicted in this stream.
 *  - TG_STREAM_PRESSURE carries the slot pressure task alone (M + pressure_extra written names), because
 *    its evictions would otherwise evict the slots of the other tasks.
 *  - TG_STREAM_CORRECTIONS carries "corrections under slot pressure" alone: as pressure, but each target
 *    fact is written and then overwritten 1..overwrites_max times (same name, same key, a new value each
 *    time) before M other names evict it. The right answer is the newest value; an older one is stale.
 *
 * Guarantees (checked by tests/unit/test_tasks_gen.c):
 *  - filler keys never collide with fact keys: |cos(filler, any anchor key)| < filler_bound; filler values
 *    never use a codebook row that any planted event uses;
 *  - planted positions are drawn uniformly (per task, see docs/EVAL.md) and cover the stream;
 *  - bounded methods never get the evidence by accident: every event a query needs lies more than
 *    `window` events before the query (a sliding window of W <= window never contains it), and
 *    tg_check_bounded() refuses configs where top-k chunks or a window could cover the whole context;
 *  - events are a pure function of (config, kind, seed, index): any range can be generated in any order
 *    and in batches of any size with identical results.
 *
 * Not done here: nothing about methods, sessions or scoring (bench/bench_tasks.c does that); one head
 * only (H = 1); keys are unit vectors, the benchmark scales queries.
 */
#ifndef TASKS_GEN_H
#define TASKS_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TG_RECALL = 0,   /* associative recall, no write signal */
    TG_OVERWRITE,    /* written, overwritten 1-3 times: the latest value */
    TG_VERSIONING,   /* as overwrite, the query asks for version j */
    TG_DISTRACTOR,   /* protected fact, similar-key distractor writes, rejected same-key writes */
    TG_STREAMING,    /* facts and queries interleaved: the value as of the query time */
    TG_PRESSURE,     /* more written names than slots: an evicted fact, via fallback */
    TG_CORRECTIONS,  /* written, overwritten 1-3 times, then evicted: the latest value, via fallback */
    TG_TASKS
} tg_task;

typedef enum { TG_STREAM_MAIN = 0, TG_STREAM_PRESSURE, TG_STREAM_CORRECTIONS, TG_STREAM_KINDS } tg_stream_kind;

#define TG_NAME_MAX 32

typedef struct {
    uint64_t length;          /* T, events in the stream */
    int dim;                  /* d: keys and values are unit vectors of R^d */
    int window;               /* W: evidence lies more than W events before its query */
    int slots;                /* M: the session's slot capacity */
    int codebook;             /* rows of the value codebook */
    int trials;               /* queried trials per task per stream */
    int recall_facts;         /* unmarked facts in the recall task (>= trials) */
    int distractors;          /* distractor slot writes per distractor trial */
    int rejected_max;         /* rejected same-key writes per distractor trial: 1..rejected_max */
    int overwrites_max;       /* overwrites per overwrite/versioning trial: 1..overwrites_max */
    int pressure_extra;       /* pressure: names written beyond M */
    double filler_bound;      /* |cos(filler key, anchor key)| < filler_bound */
    double anchor_bound;      /* |cos| between anchor keys of unrelated facts < anchor_bound */
    double distractor_lo;     /* cos(distractor key, protected key) uniform in [lo, hi] */
    double distractor_hi;
} tg_config;

/* One planted event. */
typedef struct {
    uint64_t pos;             /* event index */
    int key;                  /* anchor index (tg_anchor) */
    int value;                /* codebook row */
    char slot[TG_NAME_MAX];   /* write signal, "" for none */
    bool protect;             /* protect the slot after the write */
    tg_task task;
    int trial;                /* the queried trial it belongs to, -1 if no query depends on it */
} tg_plant;

/* One query. The correct answer is codebook row `value`; the evidence is event `event`. */
typedef struct {
    tg_task task;
    int trial;
    uint64_t at;              /* asked after events [0, at) */
    int key;                  /* anchor index: the query's direction */
    int value;                /* expected codebook row */
    uint64_t event;           /* expected pointer event */
    char slot[TG_NAME_MAX];   /* named slot (versioning), "" otherwise */
    uint64_t version;         /* versioning: the version asked for (1-based), else 0 */
    uint64_t evidence_last;   /* the latest planted event of this trial before `at` (window check) */
} tg_query;

typedef struct tg_stream tg_stream;

const char *tg_task_name(tg_task t);

/* Defaults for a stream of `length` events: d 64, W 256, M 32, codebook 512, 2 trials, ... */
void tg_config_default(tg_config *c, uint64_t length);

/* 0, or -1 with a message in err (field, value, what was expected). */
int tg_config_check(const tg_config *c, char *err, size_t errlen);

/* Refuses (-1 and a message) a setup where a bounded method would see the whole context: a window of
 * `window` events or `topk` chunks of `chunk` events covering at least a quarter of the stream, or a
 * window longer than the config's guard. 0 when the bounded methods are really bounded. */
int tg_check_bounded(const tg_config *c, int window, int topk, int chunk, char *err, size_t errlen);

/* Builds the plan of a stream (anchors, codebook, planted events, queries); filler is generated on
 * demand. 0, -1 for an invalid config (message in err), -2 out of memory. */
int tg_stream_create(const tg_config *c, tg_stream_kind kind, uint64_t seed, tg_stream **out, char *err,
                     size_t errlen);
void tg_stream_destroy(tg_stream *s);

const tg_config *tg_stream_config(const tg_stream *s);
const float *tg_codebook(const tg_stream *s);              /* codebook × d, row-major */
const float *tg_anchor(const tg_stream *s, int key);       /* d floats, unit */
int tg_anchors(const tg_stream *s);
const tg_plant *tg_plants(const tg_stream *s, size_t *n);  /* sorted by pos */
const tg_query *tg_queries(const tg_stream *s, size_t *n); /* sorted by at, then task, then trial */

/* Events [start, start+n) into k (n·d) and v (n·d); plant[i] (if plant is not NULL) is the planted
 * event at start+i or NULL for filler. Pure and thread-safe. Returns 0, -1 if the range leaves the stream,
 * -2 out of memory. */
int tg_events(const tg_stream *s, uint64_t start, size_t n, float *k, float *v, const tg_plant **plant);

/* The direction of question i (an index into tg_queries) at cosine `cos` to its key: the key itself for
 * cos >= 1, else normalize(cos·key + sqrt(1 - cos²)·r) with r a random unit vector orthogonal to the key,
 * drawn from (seed, kind, i) — a paraphrased question. out: d floats, unit length. cos in (0, 1]. */
void tg_query_direction(const tg_stream *s, size_t i, double cos, float *out);

/* Nearest codebook row to v by cosine; -1 for a zero or non-finite vector. */
int tg_decode(const tg_stream *s, const float *v);

#endif
