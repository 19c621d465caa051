/*
 * bench/tasks_gen.c — generators of the EVAL.md A task streams (see tasks_gen.h for the contract).
 *
 * Design: a stream is a plan (anchor keys, codebook, planted events, queries), built once from the
 * seed, plus filler generated on demand. Every filler event draws from its own random generator, seeded
 * by (seed, stream kind, event index), so an event does not depend on how the stream is cut into
 * batches. Filler keys are rejection-sampled against every anchor key (a batch of candidates is checked
 * with one sgemm; the rare rejected candidate is redrawn from the same event's generator and checked in
 * double precision). Planted positions are drawn uniformly without collisions.
 *
 * Deliberately not here: scoring, sessions, anything about the methods under test.
 */
#include "bench/tasks_gen.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- random numbers: splitmix64 (fast, passes BigCrush, trivially seekable) ----------------------- */

typedef struct { uint64_t s; } rng;

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rng_next(rng *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return mix64(r->s);
}

static rng rng_make(uint64_t seed, uint64_t kind, uint64_t purpose, uint64_t index)
{
    rng r = { mix64(mix64(mix64(seed ^ 0x5eedULL) ^ kind * 0x2545f4914f6cdd1dULL) ^ purpose) ^ index };
    r.s = mix64(r.s);
    return r;
}

static double rng_unit(rng *r) /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static uint64_t rng_below(rng *r, uint64_t n) /* [0, n), n > 0; the modulo bias is below 2^-40 here */
{
    return rng_next(r) % n;
}

/* n standard normals (Marsaglia's polar method). */
static void rng_normals(rng *r, double *out, int n)
{
    for (int i = 0; i < n; i += 2) {
        double u, v, s;
        do {
            u = 2.0 * rng_unit(r) - 1.0;
            v = 2.0 * rng_unit(r) - 1.0;
            s = u * u + v * v;
        } while (s >= 1.0 || s == 0.0);
        double f = sqrt(-2.0 * log(s) / s);
        out[i] = u * f;
        if (i + 1 < n)
            out[i + 1] = v * f;
    }
}

static void normalize_d(double *x, int d)
{
    double n = 0;
    for (int j = 0; j < d; j++)
        n += x[j] * x[j];
    n = sqrt(n);
    for (int j = 0; j < d; j++)
        x[j] /= n;
}

static void unit_vector(rng *r, double *x, int d)
{
    rng_normals(r, x, d);
    normalize_d(x, d);
}

static double dot_fd(const float *a, const double *b, int d)
{
    double s = 0;
    for (int j = 0; j < d; j++)
        s += (double)a[j] * b[j];
    return s;
}

/* ---- the stream --------------------------------------------------------------------------------- */

struct tg_stream {
    tg_config c;
    tg_stream_kind kind;
    uint64_t seed;
    float *codebook;        /* codebook × d */
    float *anchors;         /* cap_anchors × d */
    int *group;             /* anchors in one group (a protected key and its distractors) are related */
    int n_anchors;
    size_t cap_anchors, cap_group;
    int *rows;              /* a permutation of the codebook rows: planted values take from the front */
    int n_rows_used;
    tg_plant *plants;
    size_t n_plants, cap_plants;
    tg_query *queries;
    size_t n_queries, cap_queries;
    rng r;                  /* the plan's generator (used only while building) */
};

static const char *const task_names[TG_TASKS] = {
    "recall", "overwrite", "versioning", "distractor", "streaming", "pressure", "corrections",
};

const char *tg_task_name(tg_task t)
{
    return (unsigned)t < TG_TASKS ? task_names[t] : NULL;
}

void tg_config_default(tg_config *c, uint64_t length)
{
    memset(c, 0, sizeof *c);
    c->length = length;
    c->dim = 64;
    c->window = 256;
    c->slots = 32;
    c->codebook = 512;
    c->trials = 2;
    c->recall_facts = 8;
    c->distractors = 8;
    c->rejected_max = 3;
    c->overwrites_max = 3;
    c->pressure_extra = 16;
    c->filler_bound = 0.5;
    c->anchor_bound = 0.35;
    c->distractor_lo = 0.6;
    c->distractor_hi = 0.9;
}

/* Upper bounds of what one stream plants, used to size the plan and check the codebook. */
static int max_main_rows(const tg_config *c)
{
    return c->recall_facts + 2 * c->trials * (1 + c->overwrites_max) +
           c->trials * (1 + c->distractors + c->rejected_max) + 2 * c->trials;
}

static int max_pressure_rows(const tg_config *c)
{
    return c->slots + c->pressure_extra;
}

static int max_corrections_rows(const tg_config *c)
{
    return c->trials * (1 + c->overwrites_max) + c->slots + c->pressure_extra;
}

int tg_config_check(const tg_config *c, char *err, size_t errlen)
{
#define BAD(...) do { if (errlen) snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)
    if (c->dim < 8 || c->dim > 1024)
        BAD("dim: %d is out of range, expected 8..1024", c->dim);
    if (c->window < 1)
        BAD("window: %d, expected >= 1", c->window);
    if (c->length < 16 * (uint64_t)c->window || c->length > ((uint64_t)1 << 40))
        BAD("length: %llu, expected 16·window (%llu) .. 2^40 so that a window is a small part of the stream",
            (unsigned long long)c->length, 16ULL * (unsigned long long)c->window);
    if (c->trials < 1 || c->trials > 100)
        BAD("trials: %d, expected 1..100", c->trials);
    if (c->recall_facts < c->trials)
        BAD("recall_facts: %d, expected >= trials (%d)", c->recall_facts, c->trials);
    if (c->recall_facts > 256)
        BAD("recall_facts: %d, expected at most 256", c->recall_facts);
    if (c->distractors < 0 || c->distractors > 1000 || c->rejected_max < 1 || c->rejected_max > 1000 ||
        c->overwrites_max < 1 || c->overwrites_max > 63)
        BAD("distractors (%d) in 0..1000, rejected_max (%d) in 1..1000 and overwrites_max (%d) in 1..63 "
            "expected", c->distractors, c->rejected_max, c->overwrites_max);
    if (c->slots < 1)
        BAD("slots: %d, expected >= 1", c->slots);
    /* Main stream: overwrite, versioning, protected and streaming names, plus the distractors' names. */
    if (c->trials * (4 + c->distractors) > c->slots)
        BAD("slots: %d is fewer than the %d names the main stream writes (trials·(4 + distractors)); "
            "the main stream must never evict", c->slots, c->trials * (4 + c->distractors));
    if (c->pressure_extra < c->trials)
        BAD("pressure_extra: %d, expected >= trials (%d): each trial asks for a different evicted name",
            c->pressure_extra, c->trials);
    int need = max_main_rows(c) > max_pressure_rows(c) ? max_main_rows(c) : max_pressure_rows(c);
    need = need > max_corrections_rows(c) ? need : max_corrections_rows(c);
    if (c->codebook < 2 * need)
        BAD("codebook: %d rows, expected at least %d (twice the planted values, so filler has its own rows)",
            c->codebook, 2 * need);
    if (!(c->filler_bound > 0 && c->filler_bound < 1) || !(c->anchor_bound > 0 && c->anchor_bound < 1))
        BAD("filler_bound (%g) and anchor_bound (%g): expected in (0, 1)", c->filler_bound, c->anchor_bound);
    if (!(c->distractor_lo >= c->anchor_bound && c->distractor_lo <= c->distractor_hi && c->distractor_hi < 1))
        BAD("distractor cosines [%g, %g]: expected anchor_bound (%g) <= lo <= hi < 1", c->distractor_lo,
            c->distractor_hi, c->anchor_bound);
    return 0;
#undef BAD
}

int tg_check_bounded(const tg_config *c, int window, int topk, int chunk, char *err, size_t errlen)
{
    uint64_t quarter = c->length / 4;
    if (window > c->window) {
        if (errlen)
            snprintf(err, errlen, "window %d is longer than the generator's guard %d: a window could hold "
                     "the evidence", window, c->window);
        return -1;
    }
    if ((uint64_t)window >= quarter || (uint64_t)topk * (uint64_t)chunk >= quarter) {
        if (errlen)
            snprintf(err, errlen, "bounded methods too large for %llu events: window %d, top-%d chunks of %d "
                     "(%llu events); expected each below a quarter of the stream (%llu)",
                     (unsigned long long)c->length, window, topk, chunk,
                     (unsigned long long)topk * (unsigned long long)chunk, (unsigned long long)quarter);
        return -1;
    }
    return 0;
}

/* ---- building the plan -------------------------------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -2;
    *p = q;
    *cap = n;
    return 0;
}

/* Adds an anchor key. group < 0: a fresh group. related: an anchor it must have cosine in [lo, hi]
 * with (distractors), -1 for none. Returns the anchor index or -2 (out of memory). */
static int add_anchor(tg_stream *s, int group, int related)
{
    const tg_config *c = &s->c;
    int d = c->dim;
    double x[1024];
    if (grow((void **)&s->anchors, &s->cap_anchors, (size_t)s->n_anchors + 1, (size_t)d * sizeof(float)) ||
        grow((void **)&s->group, &s->cap_group, (size_t)s->n_anchors + 1, sizeof(int)))
        return -2;
    int g = group >= 0 ? group : s->n_anchors;
    for (;;) {
        if (related >= 0) {
            /* key = cos·P + sin·r, r a random unit vector orthogonal to P. */
            const float *p = s->anchors + (size_t)related * d;
            double want = c->distractor_lo + (c->distractor_hi - c->distractor_lo) * rng_unit(&s->r);
            unit_vector(&s->r, x, d);
            double pr = dot_fd(p, x, d);
            for (int j = 0; j < d; j++)
                x[j] -= pr * p[j];
            normalize_d(x, d);
            for (int j = 0; j < d; j++)
                x[j] = want * p[j] + sqrt(1 - want * want) * x[j];
            normalize_d(x, d);
        } else {
            unit_vector(&s->r, x, d);
        }
        int ok = 1;
        for (int a = 0; a < s->n_anchors && ok; a++)
            if (s->group[a] != g && fabs(dot_fd(s->anchors + (size_t)a * d, x, d)) >= c->anchor_bound)
                ok = 0;
        if (ok)
            break;
    }
    float *dst = s->anchors + (size_t)s->n_anchors * d;
    for (int j = 0; j < d; j++)
        dst[j] = (float)x[j];
    s->group[s->n_anchors] = g;
    return s->n_anchors++;
}

static int take_row(tg_stream *s)
{
    return s->rows[s->n_rows_used++];
}

static bool pos_used(const tg_stream *s, uint64_t pos)
{
    for (size_t i = 0; i < s->n_plants; i++)
        if (s->plants[i].pos == pos)
            return true;
    return false;
}

/* A free position uniform in [lo, hi) (hi > lo; the plan is tiny against the range). */
static uint64_t free_pos(tg_stream *s, uint64_t lo, uint64_t hi)
{
    uint64_t p;
    do
        p = lo + rng_below(&s->r, hi - lo);
    while (pos_used(s, p));
    return p;
}

static int add_plant(tg_stream *s, uint64_t pos, int key, int value, const char *slot, bool protect,
                     tg_task task, int trial)
{
    if (grow((void **)&s->plants, &s->cap_plants, s->n_plants + 1, sizeof(tg_plant)))
        return -2;
    tg_plant *p = &s->plants[s->n_plants++];
    memset(p, 0, sizeof *p);
    p->pos = pos;
    p->key = key;
    p->value = value;
    if (slot)
        snprintf(p->slot, sizeof p->slot, "%s", slot);
    p->protect = protect;
    p->task = task;
    p->trial = trial;
    return 0;
}

static int add_query(tg_stream *s, tg_task task, int trial, uint64_t at, int key, int value,
                     uint64_t event, const char *slot, uint64_t version, uint64_t evidence_last)
{
    if (grow((void **)&s->queries, &s->cap_queries, s->n_queries + 1, sizeof(tg_query)))
        return -2;
    tg_query *q = &s->queries[s->n_queries++];
    memset(q, 0, sizeof *q);
    q->task = task;
    q->trial = trial;
    q->at = at;
    q->key = key;
    q->value = value;
    q->event = event;
    if (slot)
        snprintf(q->slot, sizeof q->slot, "%s", slot);
    q->version = version;
    q->evidence_last = evidence_last;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* n free positions uniform in [lo, hi), ascending. */
static void sorted_positions(tg_stream *s, uint64_t *pos, int n, uint64_t lo, uint64_t hi)
{
    for (int i = 0; i < n; i++) {
        uint64_t p;
        int dup;
        do {
            p = free_pos(s, lo, hi);
            dup = 0;
            for (int j = 0; j < i; j++)
                dup |= pos[j] == p;
        } while (dup);
        pos[i] = p;
    }
    qsort(pos, (size_t)n, sizeof *pos, cmp_u64);
}

#define TRY(x) do { int rc_ = (x); if (rc_ < 0) return rc_; } while (0)

/* Written, then overwritten 1..overwrites_max times at sorted uniform positions. versioning: the query
 * names the slot and asks for a uniformly chosen version. */
static int plan_overwrite(tg_stream *s, tg_task task, int trial, uint64_t usable)
{
    uint64_t pos[64];
    int rows[64];
    char name[TG_NAME_MAX];
    int n = 2 + (int)rng_below(&s->r, (uint64_t)s->c.overwrites_max);
    int key = add_anchor(s, -1, -1);
    TRY(key);
    snprintf(name, sizeof name, "%s.%d", task == TG_OVERWRITE ? "ow" : "ver", trial);
    sorted_positions(s, pos, n, 0, usable);
    for (int i = 0; i < n; i++) {
        rows[i] = take_row(s);
        TRY(add_plant(s, pos[i], key, rows[i], name, false, task, trial));
    }
    if (task == TG_OVERWRITE)
        return add_query(s, task, trial, s->c.length, key, rows[n - 1], pos[n - 1], NULL, 0, pos[n - 1]);
    int j = (int)rng_below(&s->r, (uint64_t)n);
    return add_query(s, task, trial, s->c.length, key, rows[j], pos[j], name, (uint64_t)j + 1, pos[n - 1]);
}

/* A protected fact at p0 uniform in [0, 0.9·usable), then distractor writes (similar keys, own names) and
 * rejected writes (same key, same name, new values) at uniform positions after it. */
static int plan_distractor(tg_stream *s, int trial, uint64_t usable)
{
    char name[TG_NAME_MAX], dname[TG_NAME_MAX];
    uint64_t p0 = free_pos(s, 0, usable * 9 / 10);
    int key = add_anchor(s, -1, -1);
    TRY(key);
    int row = take_row(s);
    uint64_t last = p0;
    snprintf(name, sizeof name, "prot.%d", trial);
    TRY(add_plant(s, p0, key, row, name, true, TG_DISTRACTOR, trial));
    for (int i = 0; i < s->c.distractors; i++) {
        int dk = add_anchor(s, s->group[key], key);
        TRY(dk);
        uint64_t p = free_pos(s, p0 + 1, usable);
        last = p > last ? p : last;
        snprintf(dname, sizeof dname, "dis.%d.%d", trial, i);
        TRY(add_plant(s, p, dk, take_row(s), dname, false, TG_DISTRACTOR, trial));
    }
    int rejected = 1 + (int)rng_below(&s->r, (uint64_t)s->c.rejected_max);
    for (int i = 0; i < rejected; i++) {
        uint64_t p = free_pos(s, p0 + 1, usable);
        last = p > last ? p : last;
        TRY(add_plant(s, p, key, take_row(s), name, false, TG_DISTRACTOR, trial));
    }
    return add_query(s, TG_DISTRACTOR, trial, s->c.length, key, row, p0, NULL, 0, last);
}

/* A fact written at p, asked at t_q > p + W, overwritten at t_o >= t_q (after the question). */
static int plan_streaming(tg_stream *s, int trial)
{
    uint64_t T = s->c.length, W = (uint64_t)s->c.window;
    char name[TG_NAME_MAX];
    uint64_t p = free_pos(s, 0, T - 2 * W - 2);
    uint64_t tq = p + W + 1 + rng_below(&s->r, T - W - 1 - (p + W + 1));
    uint64_t to = free_pos(s, tq, T - W);
    int key = add_anchor(s, -1, -1);
    TRY(key);
    int r1 = take_row(s), r2 = take_row(s);
    snprintf(name, sizeof name, "st.%d", trial);
    TRY(add_plant(s, p, key, r1, name, false, TG_STREAMING, trial));
    TRY(add_plant(s, to, key, r2, name, false, TG_STREAMING, trial));
    return add_query(s, TG_STREAMING, trial, tq, key, r1, p, NULL, 0, p);
}

static int plan_main(tg_stream *s)
{
    const tg_config *c = &s->c;
    uint64_t usable = c->length - (uint64_t)c->window;
    int facts[256], pos_of[256];
    int nf = c->recall_facts < 256 ? c->recall_facts : 256;
    for (int i = 0; i < nf; i++) {
        int key = add_anchor(s, -1, -1);
        TRY(key);
        pos_of[i] = (int)s->n_plants;
        TRY(add_plant(s, free_pos(s, 0, usable), key, take_row(s), NULL, false, TG_RECALL, -1));
        facts[i] = i;
    }
    for (int t = 0; t < c->trials; t++) { /* partial Fisher-Yates: which facts are asked */
        int j = t + (int)rng_below(&s->r, (uint64_t)(nf - t));
        int tmp = facts[t];
        facts[t] = facts[j];
        facts[j] = tmp;
        tg_plant *p = &s->plants[pos_of[facts[t]]];
        p->trial = t;
        TRY(add_query(s, TG_RECALL, t, c->length, p->key, p->value, p->pos, NULL, 0, p->pos));
    }
    for (int t = 0; t < c->trials; t++)
        TRY(plan_overwrite(s, TG_OVERWRITE, t, usable));
    for (int t = 0; t < c->trials; t++)
        TRY(plan_overwrite(s, TG_VERSIONING, t, usable));
    for (int t = 0; t < c->trials; t++)
        TRY(plan_distractor(s, t, usable));
    for (int t = 0; t < c->trials; t++)
        TRY(plan_streaming(s, t));
    return 0;
}

/* M + extra names, each written once. Each trial's target is written at a uniform position in
 * [0, 0.9·usable) and M other names are written after the last target, so that every target is the least
 * recently updated when it goes (LRU eviction needs M later writes); the remaining names go anywhere. */
static int plan_pressure(tg_stream *s)
{
    const tg_config *c = &s->c;
    uint64_t usable = c->length - (uint64_t)c->window, last = 0;
    int n = c->slots + c->pressure_extra;
    uint64_t *pos = malloc((size_t)n * sizeof *pos);
    int rc = -2;
    if (!pos)
        goto done;
    for (int t = 0; t < c->trials; t++) {
        pos[t] = free_pos(s, 0, usable * 9 / 10);
        last = pos[t] > last ? pos[t] : last;
        if (add_plant(s, pos[t], -1, -1, NULL, false, TG_PRESSURE, t)) /* key, value, name below */
            goto done;
    }
    for (int i = c->trials; i < n; i++) {
        pos[i] = i < c->trials + c->slots ? free_pos(s, last + 1, usable) : free_pos(s, 0, usable);
        if (add_plant(s, pos[i], -1, -1, NULL, false, TG_PRESSURE, -1))
            goto done;
    }
    /* names in write order: pr.0 is written first */
    size_t first = s->n_plants - (size_t)n;
    for (int i = 0; i < n; i++) {
        int key = add_anchor(s, -1, -1);
        if (key < 0)
            goto done;
        int older = 0;
        for (int j = 0; j < n; j++)
            older += pos[j] < pos[i];
        tg_plant *p = &s->plants[first + (size_t)i];
        p->key = key;
        p->value = take_row(s);
        snprintf(p->slot, sizeof p->slot, "pr.%d", older);
        if (i < c->trials && add_query(s, TG_PRESSURE, i, c->length, key, p->value, p->pos, NULL, 0, p->pos))
            goto done;
    }
    rc = 0;
done:
    free(pos);
    return rc;
}

/* Corrections under slot pressure: each trial's target name is written and overwritten 1..overwrites_max
 * times (same key, a new value each time) at sorted uniform positions in [0, 0.9·usable); then M other
 * names are written after the targets' last write, so every target is evicted (LRU needs M later writes)
 * with all its versions in the archive; the remaining pressure_extra - trials names go anywhere. The
 * query asks for the newest value (its evidence is the last write); an older value is a stale answer. */
static int plan_corrections(tg_stream *s)
{
    const tg_config *c = &s->c;
    uint64_t usable = c->length - (uint64_t)c->window, last = 0, pos[64];
    char name[TG_NAME_MAX];
    for (int t = 0; t < c->trials; t++) {
        int n = 2 + (int)rng_below(&s->r, (uint64_t)c->overwrites_max), row = -1;
        int key = add_anchor(s, -1, -1);
        TRY(key);
        snprintf(name, sizeof name, "co.%d", t);
        sorted_positions(s, pos, n, 0, usable * 9 / 10);
        for (int i = 0; i < n; i++) {
            row = take_row(s);
            TRY(add_plant(s, pos[i], key, row, name, false, TG_CORRECTIONS, t));
        }
        last = pos[n - 1] > last ? pos[n - 1] : last;
        TRY(add_query(s, TG_CORRECTIONS, t, c->length, key, row, pos[n - 1], NULL, 0, pos[n - 1]));
    }
    for (int i = 0; i < c->slots + c->pressure_extra - c->trials; i++) {
        int key = add_anchor(s, -1, -1);
        TRY(key);
        snprintf(name, sizeof name, "cx.%d", i);
        uint64_t p = i < c->slots ? free_pos(s, last + 1, usable) : free_pos(s, 0, usable);
        TRY(add_plant(s, p, key, take_row(s), name, false, TG_CORRECTIONS, -1));
    }
    return 0;
}

static int cmp_plant(const void *a, const void *b)
{
    return cmp_u64(&((const tg_plant *)a)->pos, &((const tg_plant *)b)->pos);
}

static int cmp_query(const void *a, const void *b)
{
    const tg_query *x = a, *y = b;
    if (x->at != y->at)
        return x->at < y->at ? -1 : 1;
    if (x->task != y->task)
        return x->task < y->task ? -1 : 1;
    return (x->trial > y->trial) - (x->trial < y->trial);
}

int tg_stream_create(const tg_config *c, tg_stream_kind kind, uint64_t seed, tg_stream **out, char *err,
                     size_t errlen)
{
    if (tg_config_check(c, err, errlen))
        return -1;
    if (kind < TG_STREAM_MAIN || kind >= TG_STREAM_KINDS) {
        if (errlen)
            snprintf(err, errlen, "stream kind %d: expected main, pressure or corrections", (int)kind);
        return -1;
    }
    int d = c->dim, rc = -2;
    double x[1024];
    tg_stream *s = calloc(1, sizeof *s);
    if (!s)
        return -2;
    s->c = *c;
    s->kind = kind;
    s->seed = seed;
    s->r = rng_make(seed, kind, 1, 0);
    s->codebook = malloc((size_t)c->codebook * d * sizeof(float));
    s->rows = malloc((size_t)c->codebook * sizeof(int));
    if (!s->codebook || !s->rows)
        goto fail;
    for (int i = 0; i < c->codebook; i++) {
        unit_vector(&s->r, x, d);
        for (int j = 0; j < d; j++)
            s->codebook[(size_t)i * d + j] = (float)x[j];
        s->rows[i] = i;
    }
    for (int i = c->codebook - 1; i > 0; i--) {
        int j = (int)rng_below(&s->r, (uint64_t)i + 1);
        int tmp = s->rows[i];
        s->rows[i] = s->rows[j];
        s->rows[j] = tmp;
    }
    rc = kind == TG_STREAM_MAIN ? plan_main(s) : kind == TG_STREAM_PRESSURE ? plan_pressure(s) : plan_corrections(s);
    if (rc < 0)
        goto fail;
    qsort(s->plants, s->n_plants, sizeof *s->plants, cmp_plant);
    qsort(s->queries, s->n_queries, sizeof *s->queries, cmp_query);
    *out = s;
    return 0;
fail:
    tg_stream_destroy(s);
    if (errlen)
        snprintf(err, errlen, "out of memory building a stream of %llu events", (unsigned long long)c->length);
    return -2;
}

void tg_stream_destroy(tg_stream *s)
{
    if (!s)
        return;
    free(s->codebook);
    free(s->anchors);
    free(s->group);
    free(s->rows);
    free(s->plants);
    free(s->queries);
    free(s);
}

const tg_config *tg_stream_config(const tg_stream *s) { return &s->c; }
const float *tg_codebook(const tg_stream *s) { return s->codebook; }
const float *tg_anchor(const tg_stream *s, int key) { return s->anchors + (size_t)key * s->c.dim; }
int tg_anchors(const tg_stream *s) { return s->n_anchors; }

const tg_plant *tg_plants(const tg_stream *s, size_t *n)
{
    *n = s->n_plants;
    return s->plants;
}

const tg_query *tg_queries(const tg_stream *s, size_t *n)
{
    *n = s->n_queries;
    return s->queries;
}

/* ---- filler ------------------------------------------------------------------------------------- */

/* Redraws event `rr`'s key until it is far from every anchor, checked in double precision. The margin
 * keeps the float copy below the bound too. */
static void redraw_key(const tg_stream *s, rng *rr, float *k)
{
    int d = s->c.dim;
    double x[1024], bound = s->c.filler_bound - 1e-4;
    for (;;) {
        unit_vector(rr, x, d);
        int ok = 1;
        for (int a = 0; a < s->n_anchors && ok; a++)
            ok = fabs(dot_fd(s->anchors + (size_t)a * d, x, d)) < bound;
        if (ok)
            break;
    }
    for (int j = 0; j < d; j++)
        k[j] = (float)x[j];
}

int tg_events(const tg_stream *s, uint64_t start, size_t n, float *k, float *v, const tg_plant **plant)
{
    const tg_config *c = &s->c;
    int d = c->dim;
    if (start > c->length || n > c->length - start)
        return -1;
    int free_rows = c->codebook - s->n_rows_used;
    const int *filler_rows = s->rows + s->n_rows_used;
    double x[1024];
    float *dots = NULL;
    rng *gens = malloc(n * sizeof *gens);
    if (n && s->n_anchors)
        dots = malloc(n * (size_t)s->n_anchors * sizeof *dots);
    if (!gens || (n && s->n_anchors && !dots)) {
        free(gens);
        free(dots);
        return -2;
    }
    for (size_t i = 0; i < n; i++) {
        gens[i] = rng_make(s->seed, s->kind, 2, start + i);
        int row = filler_rows[rng_below(&gens[i], (uint64_t)free_rows)];
        memcpy(v + i * d, s->codebook + (size_t)row * d, (size_t)d * sizeof(float));
        unit_vector(&gens[i], x, d);
        for (int j = 0; j < d; j++)
            k[i * d + j] = (float)x[j];
    }
    if (n && s->n_anchors) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, s->n_anchors, d, 1.0f, k, d,
                    s->anchors, d, 0.0f, dots, s->n_anchors);
        /* float dots are within ~1e-6 of the exact ones; anything near the bound is redrawn */
        double coarse = c->filler_bound - 1e-4 - 1e-5;
        for (size_t i = 0; i < n; i++)
            for (int a = 0; a < s->n_anchors; a++)
                if (fabsf(dots[i * s->n_anchors + a]) >= coarse) {
                    redraw_key(s, &gens[i], k + i * d);
                    break;
                }
    }
    /* planted events replace the filler at their positions */
    size_t lo = 0, hi = s->n_plants;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->plants[mid].pos < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (plant)
        for (size_t i = 0; i < n; i++)
            plant[i] = NULL;
    for (size_t p = lo; p < s->n_plants && s->plants[p].pos < start + n; p++) {
        const tg_plant *pl = &s->plants[p];
        size_t i = (size_t)(pl->pos - start);
        memcpy(k + i * d, tg_anchor(s, pl->key), (size_t)d * sizeof(float));
        memcpy(v + i * d, s->codebook + (size_t)pl->value * d, (size_t)d * sizeof(float));
        if (plant)
            plant[i] = pl;
    }
    free(gens);
    free(dots);
    return 0;
}

void tg_query_direction(const tg_stream *s, size_t i, double cos, float *out)
{
    int d = s->c.dim;
    const float *key = tg_anchor(s, s->queries[i].key);
    double x[1024];
    if (cos >= 1) {
        memcpy(out, key, (size_t)d * sizeof *out);
        return;
    }
    rng r = rng_make(s->seed, s->kind, 3, i);
    unit_vector(&r, x, d);
    double pr = dot_fd(key, x, d);
    for (int j = 0; j < d; j++)
        x[j] -= pr * key[j];
    normalize_d(x, d);
    for (int j = 0; j < d; j++)
        x[j] = cos * key[j] + sqrt(1 - cos * cos) * x[j];
    normalize_d(x, d);
    for (int j = 0; j < d; j++)
        out[j] = (float)x[j];
}

int tg_decode(const tg_stream *s, const float *v)
{
    int d = s->c.dim, best = -1;
    double norm = 0, best_dot = -INFINITY;
    for (int j = 0; j < d; j++)
        norm += (double)v[j] * v[j];
    if (!(norm > 0) || !isfinite(norm))
        return -1;
    for (int r = 0; r < s->c.codebook; r++) {
        double dt = 0;
        for (int j = 0; j < d; j++)
            dt += (double)v[j] * s->codebook[(size_t)r * d + j];
        if (dt > best_dot) {
            best_dot = dt;
            best = r;
        }
    }
    return best;
}
