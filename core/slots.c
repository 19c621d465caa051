/*
 * core/slots.c — the versioned slot table (see core/slots.h for the contract, docs/SLOTS.md for the
 * lifecycle).
 *
 * Design:
 *  - One record per name ever written, found through a chained hash table (FNV-1a of the name). A record
 *    keeps its whole history as an array of versions; a version owns one block holding key then value
 *    (NULL for a tombstone) and its payload text. Versions are immutable once appended.
 *  - Resident records are in an array whose rows also hold a contiguous copy of each current key and its
 *    per-head norms (the router's scan reads only these), and in a doubly linked list ordered by last
 *    update, least recent first: a capacity eviction walks it from the head, skipping protected slots.
 *  - Nothing fails half-way. Each operation first checks, then allocates everything it needs (version
 *    blocks, hash/array growth), then applies in code that cannot fail. The one allocation an apply step
 *    could still need — the tombstone of a slot evicted for capacity, which may be any resident slot — is
 *    covered by an invariant: a resident record always has room for one more version in its array.
 *  - Policies (docs/SLOTS.md "Policies"): the eviction victim is the head of the update list (lru) or the
 *    unprotected slot with the lowest score of importance, recency (its rank in the update list) and
 *    usage, found by one walk of the list (score: O(M) per eviction); a blend overwrite mixes the
 *    current value into the new version's block in the apply step (arithmetic on memory already
 *    allocated, so it cannot fail). Each version carries the importance its writer gave.
 *  - Persistence is incremental (docs/SLOTS.md, "Persistence"): the store keeps the table's small state
 *    (ma_slots_serialize_state) and one row per version, written once. Records whose versions are not
 *    stored yet are on an intrusive list (mark_dirty: set only in apply steps, so a failed call leaves it
 *    alone); ma_slots_unsaved encodes just those versions, ma_slots_saved clears the list after the
 *    commit. A forget marks the name's stored rows for rewriting. The whole history stays resident.
 *  - The router's cosine scan is a plain loop rather than BLAS sgemv: each dot product is summed in a
 *    fixed order (8 independent float lanes, which the compiler vectorises, then the lanes in order) and
 *    norms in double, so a score depends only on q and the key — not on BLAS threading, nor on the row a
 *    key sits in — and a restored table answers with the same bits. bench/bench_slots.c measures it
 *    against sgemv.
 * Not done here: validation of vectors (the server's; names are checked as they enter), text embedding,
 * I/O (the store keeps the state blob and the version rows).
 */
#include "core/slots.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/blob.h"
#include "core/error.h"
#include "core/hash.h"

typedef struct {
    uint64_t version;
    int64_t event;
    int64_t at;
    float *kv;        /* H·d key, then H·d_v value; NULL: tombstone (or forgotten) */
    char *payload;    /* JSON text or NULL */
    bool forgotten;   /* erased by ma_slots_forget: no value, the event kept (its mask is derived) */
    bool has_importance; /* its writer gave the importance (else it is MA_IMPORTANCE_DEFAULT) */
    double importance; /* [0, 1], of a version with a value (0 for a tombstone) */
} slot_ver;

typedef struct rec {
    struct rec *hnext;               /* hash chain */
    struct rec *prev, *next;         /* update order of resident records; head = least recently updated */
    struct rec *dnext;               /* the list of records with unsaved versions (ma_slots.dirty) */
    slot_ver *ver;
    size_t nver, cap;
    size_t saved;                    /* versions [0, saved) are stored as rows (ma_slots_saved) */
    bool dirty;                      /* on the dirty list */
    bool resave;                     /* forgotten since saved: rows [0, saved) are rewritten too */
    size_t row;                      /* index in ma_slots.res while resident */
    bool resident, protect;
    _Atomic uint64_t usage;
    size_t name_len;
    char name[];
} rec;

struct ma_slots {
    int heads, dim, value_dim, capacity;
    size_t kn, vn;                   /* floats per key (H·d) and per value (H·d_v) */
    rec **bucket;
    size_t nbucket, nrec;
    rec **res;                       /* resident records, unordered */
    float *rkey;                     /* row i: the current key of res[i] (H·d) */
    double *rnorm;                   /* row i: its per-head L2 norms (H) */
    size_t nres, res_cap;
    rec *head, *tail;                /* update order */
    rec *dirty;                      /* records with versions to store (ma_slots_unsaved) */
    size_t bytes;                    /* running total of everything allocated for the table */
    ma_slot_policy policy;           /* eviction and overwrite (the read policy is the router's) */
};

/* ---- records and the hash table --------------------------------------------------------------- */

static size_t block_bytes(const ma_slots *s)
{
    return (s->kn + s->vn) * sizeof(float);
}

static rec *find(const ma_slots *s, const char *name)
{
    size_t n = strlen(name);
    uint64_t h = ma_fnv1a64(name, n);
    for (rec *r = s->bucket[h & (s->nbucket - 1)]; r; r = r->hnext)
        if (r->name_len == n && memcmp(r->name, name, n) == 0)
            return r;
    return NULL;
}

/* Doubles the bucket array when records outnumber buckets. Failing to grow is harmless (longer chains)
 * except that it signals memory pressure, so it is reported. */
static int grow_buckets(ma_slots *s)
{
    if (s->nrec < s->nbucket)
        return 0;
    size_t nb = s->nbucket * 2;
    rec **b = calloc(nb, sizeof *b);
    if (!b)
        return MA_ENOMEM;
    for (size_t i = 0; i < s->nbucket; i++)
        for (rec *r = s->bucket[i], *next; r; r = next) {
            next = r->hnext;
            size_t j = ma_fnv1a64(r->name, r->name_len) & (nb - 1);
            r->hnext = b[j];
            b[j] = r;
        }
    free(s->bucket);
    s->bucket = b;
    s->bytes += (nb - s->nbucket) * sizeof *b;
    s->nbucket = nb;
    return 0;
}

static rec *create_rec(ma_slots *s, const char *name)
{
    if (grow_buckets(s))
        return NULL;
    size_t n = strlen(name);
    rec *r = calloc(1, sizeof *r + n + 1);
    if (!r)
        return NULL;
    memcpy(r->name, name, n + 1);
    r->name_len = n;
    atomic_init(&r->usage, 0);
    size_t j = ma_fnv1a64(name, n) & (s->nbucket - 1);
    r->hnext = s->bucket[j];
    s->bucket[j] = r;
    s->nrec++;
    s->bytes += sizeof *r + n + 1;
    return r;
}

static void free_version(ma_slots *s, slot_ver *v)
{
    if (v->kv)
        s->bytes -= block_bytes(s);
    if (v->payload)
        s->bytes -= strlen(v->payload) + 1;
    free(v->kv);
    free(v->payload);
}

/* Unlinks and frees a record that is not resident (used to undo a record created by a failed call). */
static void remove_rec(ma_slots *s, rec *r)
{
    rec **pp = &s->bucket[ma_fnv1a64(r->name, r->name_len) & (s->nbucket - 1)];
    while (*pp != r)
        pp = &(*pp)->hnext;
    *pp = r->hnext;
    for (size_t i = 0; i < r->nver; i++)
        free_version(s, &r->ver[i]);
    s->bytes -= sizeof *r + r->name_len + 1 + r->cap * sizeof *r->ver;
    s->nrec--;
    free(r->ver);
    free(r);
}

static int reserve_versions(ma_slots *s, rec *r, size_t need)
{
    if (r->cap >= need)
        return 0;
    size_t cap = r->cap ? r->cap : 2;
    while (cap < need)
        cap *= 2;
    slot_ver *v = realloc(r->ver, cap * sizeof *v);
    if (!v)
        return MA_ENOMEM;
    s->bytes += (cap - r->cap) * sizeof *v;
    r->ver = v;
    r->cap = cap;
    return 0;
}

static int reserve_resident(ma_slots *s, size_t need)
{
    if (need > (size_t)s->capacity)
        need = (size_t)s->capacity;
    if (s->res_cap >= need)
        return 0;
    size_t cap = s->res_cap ? s->res_cap : 8;
    while (cap < need)
        cap *= 2;
    if (cap > (size_t)s->capacity)
        cap = (size_t)s->capacity;
    /* Each array keeps its own success: a partial failure leaves larger arrays, which is harmless. */
    rec **a = realloc(s->res, cap * sizeof *a);
    if (!a)
        return MA_ENOMEM;
    s->res = a;
    float *k = realloc(s->rkey, cap * s->kn * sizeof *k);
    if (!k)
        return MA_ENOMEM;
    s->rkey = k;
    double *n = realloc(s->rnorm, cap * (size_t)s->heads * sizeof *n);
    if (!n)
        return MA_ENOMEM;
    s->rnorm = n;
    s->bytes += (cap - s->res_cap) * (sizeof *a + s->kn * sizeof *k + (size_t)s->heads * sizeof *n);
    s->res_cap = cap;
    return 0;
}

/* ---- cosine ----------------------------------------------------------------------------------- */

static double head_norm(const float *x, int dim)
{
    double ss = 0;
    for (int j = 0; j < dim; j++)
        ss += (double)x[j] * x[j];
    return sqrt(ss);
}

/* a·b summed in a fixed order: 8 independent lanes (vectorisable without reassociation), then the lanes
 * and the tail in order. */
static float dot_lanes(const float *a, const float *b, int n)
{
    float lane[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            lane[l] += a[j + l] * b[j + l];
    float sum = 0;
    for (int l = 0; l < 8; l++)
        sum += lane[l];
    for (; j < n; j++)
        sum += a[j] * b[j];
    return sum;
}

/* Mean over heads of cos(q_h, k_h), given the heads' norms; a zero head scores 0. The float dot product
 * can land a few ulps outside [-1, 1] for parallel vectors: clamped, so clients see a true cosine. */
static double score(const float *q, const double *qn, const float *k, const double *kn, int heads, int dim)
{
    double sum = 0;
    for (int h = 0; h < heads; h++)
        if (qn[h] > 0 && kn[h] > 0) {
            double c = (double)dot_lanes(q + (size_t)h * (size_t)dim, k + (size_t)h * (size_t)dim, dim) /
                       (qn[h] * kn[h]);
            sum += c > 1 ? 1 : c < -1 ? -1 : c;
        }
    return sum / heads;
}

static void head_norms(const float *x, int heads, int dim, double *out)
{
    for (int h = 0; h < heads; h++)
        out[h] = head_norm(x + (size_t)h * (size_t)dim, dim);
}

/* Copies r's current key into its resident row. */
static void set_row(ma_slots *s, size_t row, const float *key)
{
    memcpy(s->rkey + row * s->kn, key, s->kn * sizeof *key);
    head_norms(key, s->heads, s->dim, s->rnorm + row * (size_t)s->heads);
}

static void move_row(ma_slots *s, size_t to, size_t from)
{
    memcpy(s->rkey + to * s->kn, s->rkey + from * s->kn, s->kn * sizeof *s->rkey);
    memcpy(s->rnorm + to * (size_t)s->heads, s->rnorm + from * (size_t)s->heads,
           (size_t)s->heads * sizeof *s->rnorm);
}

static uint64_t last_version(const rec *r)
{
    return r && r->nver ? r->ver[r->nver - 1].version : 0;
}

/* Copies a key, value and payload into a new version block. */
static int make_block(ma_slots *s, const float *k, const float *v, const char *payload, float **kv,
                      char **pl)
{
    *kv = malloc(block_bytes(s));
    *pl = payload ? strdup(payload) : NULL;
    if (!*kv || (payload && !*pl)) {
        free(*kv);
        free(*pl);
        *kv = NULL;
        *pl = NULL;
        return MA_ENOMEM;
    }
    memcpy(*kv, k, s->kn * sizeof(float));
    memcpy(*kv + s->kn, v, s->vn * sizeof(float));
    s->bytes += block_bytes(s) + (payload ? strlen(payload) + 1 : 0);
    return 0;
}

/* ---- applying (cannot fail: everything was reserved) ----------------------------------------- */

static void lru_unlink(ma_slots *s, rec *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        s->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->tail = r->prev;
    r->prev = r->next = NULL;
}

static void lru_append(ma_slots *s, rec *r)
{
    r->prev = s->tail;
    r->next = NULL;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
}

/* importance < 0: not given (the version gets MA_IMPORTANCE_DEFAULT). */
static void append_version(rec *r, uint64_t version, int64_t event, int64_t at, float *kv, char *payload,
                           double importance)
{
    bool given = importance >= 0;
    r->ver[r->nver++] = (slot_ver){version, event, at, kv, payload, false, given,
                                   given ? importance : kv ? MA_IMPORTANCE_DEFAULT : 0};
}

/* Puts r on the list of records whose new (or forgotten) versions the next commit stores. */
static void mark_dirty(ma_slots *s, rec *r)
{
    if (r->dirty)
        return;
    r->dirty = true;
    r->dnext = s->dirty;
    s->dirty = r;
}

static void leave_resident(ma_slots *s, rec *r);

/* Records the tombstone and leaves the resident set. Room for the tombstone is the resident invariant. */
static void evict_rec(ma_slots *s, rec *r, int64_t now)
{
    append_version(r, last_version(r) + 1, -1, now, NULL, NULL, -1);
    mark_dirty(s, r);
    leave_resident(s, r);
}

static void leave_resident(ma_slots *s, rec *r)
{
    s->res[r->row] = s->res[--s->nres];
    s->res[r->row]->row = r->row;
    move_row(s, r->row, s->nres);
    lru_unlink(s, r);
    r->resident = false;
    r->protect = false;
}

/* The least recently updated unprotected resident slot; NULL if every one is protected (then no policy
 * has a victim either). */
static rec *lru_victim(const ma_slots *s)
{
    for (rec *r = s->head; r; r = r->next)
        if (!r->protect)
            return r;
    return NULL;
}

/* The score eviction's constants (docs/SLOTS.md "Policies"). */
#define SCORE_W_IMPORTANCE 0.5
#define SCORE_W_RECENCY    0.3
#define SCORE_W_USAGE      0.2
#define SCORE_USAGE_HALF   4.0     /* usage at which the usage term is half its weight */

/* The score of resident r at rank `rank` (0 = least recently updated) of n resident slots:
 * 0.5·importance + 0.3·rank/(n−1) + 0.2·usage/(usage + 4), every term in [0, 1] before its weight. */
static double evict_score(const rec *r, size_t rank, size_t n)
{
    double recency = n > 1 ? (double)rank / (double)(n - 1) : 1.0;
    double u = (double)atomic_load_explicit(&((rec *)r)->usage, memory_order_relaxed);
    return SCORE_W_IMPORTANCE * r->ver[r->nver - 1].importance + SCORE_W_RECENCY * recency +
           SCORE_W_USAGE * (u / (u + SCORE_USAGE_HALF));
}

/* The slot a capacity eviction removes under the table's policy: lru_victim, or the unprotected slot of
 * lowest score (ties: the less recently updated). NULL exactly when lru_victim is NULL. */
static rec *pick_victim(const ma_slots *s)
{
    if (s->policy.eviction != MA_EVICTION_SCORE)
        return lru_victim(s);
    rec *best = NULL;
    double bs = 0;
    size_t rank = 0;
    for (rec *r = s->head; r; r = r->next, rank++) {
        if (r->protect)
            continue;
        double sc = evict_score(r, rank, s->nres);
        if (!best || sc < bs) {
            best = r;
            bs = sc;
        }
    }
    return best;
}

/* Blend policy: the value of a new version block kv becomes alpha·new + (1−alpha)·old (old: the current
 * value of the resident record), in double, rounded once to float. */
static void blend_value(const ma_slots *s, float *kv, const float *old_kv)
{
    double a = s->policy.alpha, b = 1.0 - s->policy.alpha;
    float *nv = kv + s->kn;
    const float *ov = old_kv + s->kn;
    for (size_t i = 0; i < s->vn; i++)
        nv[i] = (float)(a * (double)nv[i] + b * (double)ov[i]);
}

/* Makes kv/payload the new current version of r. The caller checked that an eviction, if one is needed,
 * has a victim, and reserved room for the version and (for the resident invariant) one more. blend: an
 * overwrite that the blend policy applies to (not a restore). importance < 0: not given. */
static void apply_write(ma_slots *s, rec *r, uint64_t version, int64_t event, float *kv, char *payload,
                        double importance, bool blend, bool protect, int64_t now, ma_slot_result *res)
{
    ma_slot_result out = {0};
    if (blend && r->resident && s->policy.overwrite == MA_OVERWRITE_BLEND)
        blend_value(s, kv, r->ver[r->nver - 1].kv);
    if (!r->resident) {
        if (s->nres == (size_t)s->capacity) {
            rec *victim = pick_victim(s);
            evict_rec(s, victim, now);
            out.evicted = true;
            memcpy(out.evicted_name, victim->name, victim->name_len + 1);
        }
        r->row = s->nres;
        s->res[s->nres++] = r;
        r->resident = true;
        r->protect = false;
        out.created = true;
    } else {
        lru_unlink(s, r);
    }
    lru_append(s, r);
    append_version(r, version, event, now, kv, payload, importance);
    mark_dirty(s, r);
    set_row(s, r->row, kv);
    if (protect)
        r->protect = true;
    out.version = version;
    if (res)
        *res = out;
}

/* ---- lifecycle -------------------------------------------------------------------------------- */

int ma_slots_create(int heads, int dim, int value_dim, int capacity, ma_slots **out)
{
    *out = NULL;
    if (heads < 1 || heads > MA_MAX_HEADS || dim < 1 || dim > MA_MAX_DIM || value_dim < 1 ||
        value_dim > MA_MAX_DIM || capacity < 1 || capacity > MA_MAX_SLOTS)
        return MA_EINVAL;
    ma_slots *s = calloc(1, sizeof *s);
    if (!s)
        return MA_ENOMEM;
    s->heads = heads;
    s->dim = dim;
    s->value_dim = value_dim;
    s->capacity = capacity;
    s->kn = (size_t)heads * (size_t)dim;
    s->vn = (size_t)heads * (size_t)value_dim;
    s->nbucket = 16;
    s->bucket = calloc(s->nbucket, sizeof *s->bucket);
    if (!s->bucket) {
        free(s);
        return MA_ENOMEM;
    }
    s->bytes = sizeof *s + s->nbucket * sizeof *s->bucket;
    ma_params d;
    ma_params_default(&d);
    s->policy = d.slot_policy;
    *out = s;
    return 0;
}

void ma_slots_set_policy(ma_slots *s, const ma_slot_policy *p)
{
    s->policy = *p;
}

void ma_slots_destroy(ma_slots *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nbucket; i++)
        for (rec *r = s->bucket[i], *next; r; r = next) {
            next = r->hnext;
            for (size_t j = 0; j < r->nver; j++) {
                free(r->ver[j].kv);
                free(r->ver[j].payload);
            }
            free(r->ver);
            free(r);
        }
    free(s->bucket);
    free(s->res);
    free(s->rkey);
    free(s->rnorm);
    free(s);
}

size_t ma_slots_resident(const ma_slots *s)
{
    return s->nres;
}

size_t ma_slots_bytes(const ma_slots *s)
{
    return s->bytes;
}

size_t ma_slots_footprint(int heads, int dim, int value_dim, int capacity)
{
    const size_t kn = (size_t)heads * (size_t)dim, vn = (size_t)heads * (size_t)value_dim, M = (size_t)capacity;
    size_t nb = 16;
    while (nb <= M)   /* grow_buckets doubles once the records reach the buckets */
        nb *= 2;
    /* A record's version array: a verb reserves 2 entries, a batch's write 3 (capacity 4). */
    size_t rec_bytes = sizeof(rec) + MA_MAX_NAME + 1 + 4 * sizeof(slot_ver) + (kn + vn) * sizeof(float);
    /* reserve_resident: capacities 8, 16, ... capped at the capacity */
    size_t row_bytes = sizeof(rec *) + kn * sizeof(float) + (size_t)heads * sizeof(double);
    return sizeof(ma_slots) + nb * sizeof(rec *) + M * (rec_bytes + row_bytes);
}

/* ---- verbs ------------------------------------------------------------------------------------ */

int ma_slots_put(ma_slots *s, const ma_slot_write *w, bool create_only, uint64_t explicit_version,
                 uint64_t if_match, int64_t now, ma_slot_result *res)
{
    return ma_slots_put_ex(s, w, MA_IMPORTANCE_NONE, create_only, explicit_version, if_match, now, res);
}

int ma_slots_put_ex(ma_slots *s, const ma_slot_write *w, double importance, bool create_only,
                    uint64_t explicit_version, uint64_t if_match, int64_t now, ma_slot_result *res)
{
    if (!ma_name_valid(w->name))
        return MA_EINVAL;     /* names are fixed-size fields of the result structs */
    rec *r = find(s, w->name);
    bool resident = r && r->resident;
    if (create_only && resident)
        return MA_EEXISTS;
    if (resident && r->protect)
        return MA_EPROTECTED;
    if (if_match > 0 && (!resident || last_version(r) != if_match))
        return MA_EPRECOND;
    if (explicit_version > MA_SLOT_VERSION_MAX)
        return MA_EINVAL;
    if (explicit_version > 0 && explicit_version <= last_version(r))
        return MA_ECONFLICT;
    if (!resident && s->nres == (size_t)s->capacity && !lru_victim(s))
        return MA_EFULL;

    bool created = false;
    float *kv = NULL;
    char *pl = NULL;
    if (!r) {
        if (!(r = create_rec(s, w->name)))
            return MA_ENOMEM;
        created = true;
    }
    /* The new version, plus room for a later tombstone (the resident invariant). */
    if (reserve_versions(s, r, r->nver + 2) || reserve_resident(s, s->nres + 1) ||
        make_block(s, w->k, w->v, w->payload, &kv, &pl)) {
        if (created)
            remove_rec(s, r);
        return MA_ENOMEM;
    }
    uint64_t version = explicit_version ? explicit_version : last_version(r) + 1;
    apply_write(s, r, version, w->event, kv, pl, importance, true, w->protect, now, res);
    return 0;
}

int ma_slots_restore(ma_slots *s, const char *name, uint64_t version, int64_t now, ma_slot_result *res)
{
    ma_slot_view old;
    /* Version 0 names no version (UINT64_MAX is never reached): MA_ENOVERSION, or MA_ENOTFOUND. */
    int rc = ma_slots_view(s, name, version ? version : UINT64_MAX, &old);
    if (rc)
        return rc;
    rec *r = find(s, name);
    if (r->resident && r->protect)
        return MA_EPROTECTED;
    if (!r->resident && s->nres == (size_t)s->capacity && !lru_victim(s))
        return MA_EFULL;
    float *kv;
    char *pl;
    if (reserve_versions(s, r, r->nver + 2) || reserve_resident(s, s->nres + 1) ||
        make_block(s, old.k, old.v, old.payload, &kv, &pl))
        return MA_ENOMEM;
    apply_write(s, r, last_version(r) + 1, old.event, kv, pl, old.has_importance ? old.importance : -1, false,
                false, now, res);
    return 0;
}

int ma_slots_protect(ma_slots *s, const char *name, bool protect)
{
    rec *r = find(s, name);
    if (!r || !r->resident)
        return MA_ENOTFOUND;
    r->protect = protect;
    return 0;
}

int ma_slots_evict(ma_slots *s, const char *name, int64_t now)
{
    rec *r = find(s, name);
    if (!r || !r->resident)
        return MA_ENOTFOUND;
    if (r->protect)
        return MA_EPROTECTED;
    evict_rec(s, r, now);
    return 0;
}

int ma_slots_forget(ma_slots *s, const char *name)
{
    rec *r = find(s, name);
    if (!r || r->nver == 0)
        return MA_ENOTFOUND;
    if (r->resident && r->protect)
        return MA_EPROTECTED;
    if (r->resident)
        leave_resident(s, r);
    for (size_t i = 0; i < r->nver; i++) {
        free_version(s, &r->ver[i]);
        r->ver[i].kv = NULL;
        r->ver[i].payload = NULL;
        r->ver[i].forgotten = true;
    }
    r->resave = r->saved > 0;      /* the stored rows still hold the values: rewrite them */
    mark_dirty(s, r);
    return 0;
}

/* The newest version of r that has a value, or NULL. */
static const slot_ver *live_version(const rec *r)
{
    for (size_t i = r->nver; i-- > 0;)
        if (r->ver[i].kv)
            return &r->ver[i];
    return NULL;
}

int64_t ma_slots_live_event(const ma_slots *s, const char *name)
{
    const rec *r = find(s, name);
    const slot_ver *v = r ? live_version(r) : NULL;
    return v ? v->event : -1;
}

void ma_slots_each_event(const ma_slots *s, void (*fn)(void *ctx, uint64_t event, ma_slot_event_state st),
                         void *ctx)
{
    for (size_t b = 0; b < s->nbucket; b++)
        for (const rec *r = s->bucket[b]; r; r = r->hnext) {
            const slot_ver *live = live_version(r);
            for (size_t i = 0; i < r->nver; i++) {
                const slot_ver *v = &r->ver[i];
                if (v->event < 0 || (!v->kv && !v->forgotten))
                    continue;
                fn(ctx, (uint64_t)v->event,
                   v->forgotten ? MA_SLOT_EVENT_FORGOTTEN
                                : v == live || v->event == live->event ? MA_SLOT_EVENT_LIVE
                                                                       : MA_SLOT_EVENT_SUPERSEDED);
            }
        }
}

/* ---- event batches ---------------------------------------------------------------------------- */

typedef struct {
    rec *r;
    float *kv;
    char *payload;
    int64_t event;
    bool protect;
    double importance;               /* < 0: not given */
} batch_op;

struct ma_slots_batch {
    ma_slots *s;
    size_t n;
    batch_op *op;
    rec **created;                   /* records made by prepare, removed again by abort */
    size_t ncreated;
};

/* Per-record scratch of a prepare pass, kept in a small open-addressing map from record to state. */
typedef struct {
    rec *r;
    size_t ops;                      /* writes of the batch to this record */
    bool written, protect;           /* simulated state at the current point of the batch */
} plan_ent;

static plan_ent *plan_get(plan_ent *map, size_t mask, rec *r)
{
    size_t i = (size_t)(ma_fnv1a64(&r, sizeof r) & mask);
    while (map[i].r && map[i].r != r)
        i = (i + 1) & mask;
    map[i].r = r;
    return &map[i];
}

void ma_slots_batch_abort(ma_slots_batch *b)
{
    if (!b)
        return;
    ma_slots *s = b->s;
    for (size_t i = 0; i < b->n; i++)
        if (b->op[i].kv) {
            s->bytes -= block_bytes(s) + (b->op[i].payload ? strlen(b->op[i].payload) + 1 : 0);
            free(b->op[i].kv);
            free(b->op[i].payload);
        }
    for (size_t i = 0; i < b->ncreated; i++)
        remove_rec(s, b->created[i]);
    free(b->op);
    free(b->created);
    free(b);
}

/*
 * Whether the batch can hit MA_EFULL is decided without simulating the eviction order, because within a
 * batch nothing is unprotected and protected slots are never evicted: the set of protected slots only
 * grows, and the resident count R only grows until it reaches M. A write to a name that is not protected
 * fails exactly when R == M and all M resident slots are protected (P == M). While R < M no eviction has
 * happened yet, so a name is resident iff it was resident before the batch or written earlier in it.
 */
int ma_slots_batch_prepare(ma_slots *s, size_t n, const ma_slot_write *w, ma_slots_batch **out)
{
    return ma_slots_batch_prepare_ex(s, n, w, NULL, out);
}

int ma_slots_batch_prepare_ex(ma_slots *s, size_t n, const ma_slot_write *w, const double *importance,
                              ma_slots_batch **out)
{
    *out = NULL;
    int rc = MA_ENOMEM;
    plan_ent *map = NULL;
    ma_slots_batch *b = calloc(1, sizeof *b);
    if (!b)
        return MA_ENOMEM;
    b->s = s;
    if (n == 0) {
        *out = b;
        return 0;
    }
    size_t mapn = 16;
    while (mapn < 2 * n)
        mapn *= 2;
    b->op = calloc(n, sizeof *b->op);
    b->created = calloc(n, sizeof *b->created);
    map = calloc(mapn, sizeof *map);
    if (!b->op || !b->created || !map)
        goto fail;
    b->n = n;

    size_t R = s->nres, P = 0, M = (size_t)s->capacity;
    for (size_t i = 0; i < s->nres; i++)
        P += s->res[i]->protect;
    for (size_t i = 0; i < n; i++) {
        if (!ma_name_valid(w[i].name)) {
            rc = MA_EINVAL;
            goto fail;
        }
        rec *r = find(s, w[i].name);
        if (!r) {
            if (!(r = create_rec(s, w[i].name)))
                goto fail;
            b->created[b->ncreated++] = r;
        }
        b->op[i].r = r;
        plan_ent *e = plan_get(map, mapn - 1, r);
        e->ops++;
        if ((r->resident && r->protect) || e->protect)
            continue;                        /* void write */
        if (R == M && P == M) {
            rc = MA_EFULL;
            goto fail;
        }
        if (R < M && !r->resident && !e->written)
            R++;
        e->written = true;
        if (w[i].protect) {
            e->protect = true;
            P++;
        }
    }
    /* Room per record: each write of the batch may add a version and a later tombstone, plus one for
     * the resident invariant. */
    for (size_t i = 0; i < mapn; i++)
        if (map[i].r && reserve_versions(s, map[i].r, map[i].r->nver + 2 * map[i].ops + 1))
            goto fail;
    if (reserve_resident(s, R))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (make_block(s, w[i].k, w[i].v, w[i].payload, &b->op[i].kv, &b->op[i].payload))
            goto fail;
        b->op[i].event = w[i].event;
        b->op[i].protect = w[i].protect;
        b->op[i].importance = importance ? importance[i] : MA_IMPORTANCE_NONE;
    }
    free(map);
    *out = b;
    return 0;
fail:
    free(map);
    ma_slots_batch_abort(b);
    return rc;
}

void ma_slots_batch_commit(ma_slots_batch *b, int64_t now, ma_slot_result *out)
{
    ma_slots *s = b->s;
    for (size_t i = 0; i < b->n; i++) {
        batch_op *op = &b->op[i];
        if (op->r->resident && op->r->protect) {
            s->bytes -= block_bytes(s) + (op->payload ? strlen(op->payload) + 1 : 0);
            free(op->kv);
            free(op->payload);
            if (out)
                out[i] = (ma_slot_result){0};
            continue;
        }
        apply_write(s, op->r, last_version(op->r) + 1, op->event, op->kv, op->payload, op->importance, true,
                    op->protect, now,
                    out ? &out[i] : NULL);
    }
    free(b->op);
    free(b->created);
    free(b);
}

/* ---- reads ------------------------------------------------------------------------------------ */

static const slot_ver *find_version(const rec *r, uint64_t version)
{
    size_t lo = 0, hi = r->nver;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->ver[mid].version < version)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < r->nver && r->ver[lo].version == version ? &r->ver[lo] : NULL;
}

static void fill_view(const ma_slots *s, const rec *r, const slot_ver *v, ma_slot_view *out)
{
    out->name = r->name;
    out->version = v->version;
    out->event = v->event;
    out->at = v->at;
    out->protect = r->protect;
    out->usage = atomic_load_explicit(&((rec *)r)->usage, memory_order_relaxed);
    out->k = v->kv;
    out->v = v->kv + s->kn;
    out->payload = v->payload;
    out->has_importance = v->has_importance;
    out->importance = v->importance;
}

int ma_slots_view(const ma_slots *s, const char *name, uint64_t version, ma_slot_view *out)
{
    const rec *r = find(s, name);
    if (!r || r->nver == 0)
        return MA_ENOTFOUND;
    if (version == 0) {
        if (!r->resident)
            return MA_ENOTFOUND;
        fill_view(s, r, &r->ver[r->nver - 1], out);
        return 0;
    }
    const slot_ver *v = find_version(r, version);
    if (!v || !v->kv)
        return MA_ENOVERSION;
    fill_view(s, r, v, out);
    return 0;
}

int ma_slots_read(const ma_slots *s, const char *name, uint64_t version, ma_slot_value *out)
{
    memset(out, 0, sizeof *out);
    ma_slot_view v;
    int rc = ma_slots_view(s, name, version, &v);
    if (rc)
        return rc;
    out->k = malloc(s->kn * sizeof(float));
    out->v = malloc(s->vn * sizeof(float));
    out->payload = v.payload ? strdup(v.payload) : NULL;
    if (!out->k || !out->v || (v.payload && !out->payload)) {
        ma_slot_value_clear(out);
        return MA_ENOMEM;
    }
    memcpy(out->k, v.k, s->kn * sizeof(float));
    memcpy(out->v, v.v, s->vn * sizeof(float));
    size_t n = strlen(v.name);
    memcpy(out->info.name, v.name, n + 1);
    out->info.version = v.version;
    out->info.protect = v.protect;
    out->info.event = v.event;
    out->info.usage = v.usage;
    out->info.updated_at = v.at;
    out->info.has_importance = v.has_importance;
    out->info.importance = v.importance;
    return 0;
}

int ma_slots_history(const ma_slots *s, const char *name, ma_version_info **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    const rec *r = find(s, name);
    if (!r || r->nver == 0)
        return MA_ENOTFOUND;
    ma_version_info *h = malloc(r->nver * sizeof *h);
    if (!h)
        return MA_ENOMEM;
    for (size_t i = 0; i < r->nver; i++)
        h[i] = (ma_version_info){r->ver[i].version, r->ver[i].event, r->ver[i].at, r->ver[i].kv == NULL,
                                 r->ver[i].forgotten, r->ver[i].kv && r->ver[i].has_importance,
                                 r->ver[i].kv ? r->ver[i].importance : 0};
    *out = h;
    *n = r->nver;
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(rec *const *)a)->name, (*(rec *const *)b)->name);
}

int ma_slots_list(const ma_slots *s, ma_slot_info **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (s->nres == 0)
        return 0;
    rec **sorted = malloc(s->nres * sizeof *sorted);
    ma_slot_info *info = calloc(s->nres, sizeof *info);
    if (!sorted || !info) {
        free(sorted);
        free(info);
        return MA_ENOMEM;
    }
    memcpy(sorted, s->res, s->nres * sizeof *sorted);
    qsort(sorted, s->nres, sizeof *sorted, by_name);
    for (size_t i = 0; i < s->nres; i++) {
        const rec *r = sorted[i];
        const slot_ver *v = &r->ver[r->nver - 1];
        memcpy(info[i].name, r->name, r->name_len + 1);
        info[i].version = v->version;
        info[i].protect = r->protect;
        info[i].event = v->event;
        info[i].usage = atomic_load_explicit(&sorted[i]->usage, memory_order_relaxed);
        info[i].updated_at = v->at;
        info[i].has_importance = v->has_importance;
        info[i].importance = v->importance;
    }
    free(sorted);
    *out = info;
    *n = s->nres;
    return 0;
}

double ma_slots_cosine(const float *q, const float *k, int heads, int dim)
{
    double qn[MA_MAX_HEADS], kn[MA_MAX_HEADS];
    head_norms(q, heads, dim, qn);
    head_norms(k, heads, dim, kn);
    return score(q, qn, k, kn, heads, dim);
}

int ma_slots_match(const ma_slots *s, const float *q, ma_slot_view *best, double *out)
{
    double qn[MA_MAX_HEADS];
    head_norms(q, s->heads, s->dim, qn);
    const rec *br = NULL;
    double bs = 0;
    for (size_t i = 0; i < s->nres; i++) {
        double c = score(q, qn, s->rkey + i * s->kn, s->rnorm + i * (size_t)s->heads, s->heads, s->dim);
        if (!br || c > bs || (c == bs && strcmp(s->res[i]->name, br->name) < 0)) {
            br = s->res[i];
            bs = c;
        }
    }
    if (!br)
        return MA_ENOTFOUND;
    fill_view(s, br, &br->ver[br->nver - 1], best);
    *out = bs;
    return 0;
}

/* A candidate of ma_slots_match_topk: its score and row. */
typedef struct {
    double score;
    const rec *r;
    size_t row;
} cand;

/* a ranks before b: a larger score, or an equal score and a smaller name (ma_slots_match's order). */
static bool cand_better(const cand *a, const cand *b)
{
    return a->score > b->score || (a->score == b->score && strcmp(a->r->name, b->r->name) < 0);
}

/* Restores the heap property (the worst candidate at the root) below position i. */
static void heap_down(cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && cand_better(&h[w], &h[l]))
            w = l;
        if (r < n && cand_better(&h[w], &h[r]))
            w = r;
        if (w == i)
            return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

int ma_slots_match_topk(const ma_slots *s, const float *q, size_t k, ma_slot_view *out, double *scores,
                        size_t *n)
{
    *n = 0;
    if (s->nres == 0)
        return MA_ENOTFOUND;
    if (k > s->nres)
        k = s->nres;
    if (k == 0)
        return 0;
    cand *h = malloc(k * sizeof *h);
    if (!h)
        return MA_ENOMEM;
    double qn[MA_MAX_HEADS];
    head_norms(q, s->heads, s->dim, qn);
    /* A min-heap (worst at the root) of the best k seen so far: O(M log k). */
    size_t m = 0;
    for (size_t i = 0; i < s->nres; i++) {
        cand c = {score(q, qn, s->rkey + i * s->kn, s->rnorm + i * (size_t)s->heads, s->heads, s->dim),
                  s->res[i], i};
        if (m < k) {
            h[m++] = c;
            for (size_t j = m - 1; j > 0 && cand_better(&h[(j - 1) / 2], &h[j]); j = (j - 1) / 2) {
                cand t = h[j];
                h[j] = h[(j - 1) / 2];
                h[(j - 1) / 2] = t;
            }
        } else if (cand_better(&c, &h[0])) {
            h[0] = c;
            heap_down(h, m, 0);
        }
    }
    /* Pop the worst to the back: h ends sorted best first. */
    for (size_t end = m; end > 1; end--) {
        cand t = h[0];
        h[0] = h[end - 1];
        h[end - 1] = t;
        heap_down(h, end - 1, 0);
    }
    for (size_t i = 0; i < m; i++) {
        fill_view(s, h[i].r, &h[i].r->ver[h[i].r->nver - 1], &out[i]);
        scores[i] = h[i].score;
    }
    free(h);
    *n = m;
    return 0;
}

void ma_slots_softmax(const double *scores, size_t n, double temperature, double *w)
{
    double mx = scores[0], sum = 0;
    for (size_t i = 1; i < n; i++)
        if (scores[i] > mx)
            mx = scores[i];
    for (size_t i = 0; i < n; i++)
        sum += w[i] = exp((scores[i] - mx) / temperature);
    for (size_t i = 0; i < n; i++)
        w[i] /= sum;
}

void ma_slots_eviction_scores(const ma_slots *s, double *scores, const char **names, size_t *n)
{
    size_t rank = 0;
    for (const rec *r = s->head; r; r = r->next, rank++) {
        scores[rank] = evict_score(r, rank, s->nres);
        names[rank] = r->name;
    }
    *n = rank;
}

void ma_slots_count_use(const ma_slots *s, const char *name)
{
    rec *r = find(s, name);
    if (r)
        atomic_fetch_add_explicit(&r->usage, 1, memory_order_relaxed);
}

/* ---- persistence ------------------------------------------------------------------------------ */

/*
 * Three formats, every one a core/blob.h blob of this module (docs/SLOTS.md, "Persistence"):
 *  - a version row, kind "SVER", one section "VERS" v1 or v2: one version record. The store keys it by
 *    (name, version) and writes it once (ma_slots_unsaved); it is rewritten only when its name is forgotten.
 *  - the table's state, kind "SLOT", section "HEAD" v1 (ma_slots_serialize_state), everything but the
 *    versions themselves:
 *      u32 heads, dim, value_dim, capacity | u64 records | u64 resident
 *      per record (name order): u32 name_len, name | u8 flags (1 resident, 2 protected) | u64 usage |
 *        u64 versions | u64 last version
 *      resident update order, least recent first: u64 record ordinal each
 *  - the whole table, kind "SLOT", section "TABL" v1 or v2 (ma_slots_serialize; what schema 2 stored,
 *    split into the two above at the upgrade): as HEAD, but each record's "u64 last version" is replaced
 *    by its version records. Legacy format 1 (read, never written): "MASLOTS1" | u32 format 1 | the TABL
 *    v1 body | u64 ma_blob_checksum of every byte before it.
 * One version record (put_version / get_version: the one pair to extend with a new per-version field, by
 * bumping the VERS and TABL section versions):
 *   u64 version, i64 event, i64 at, u8 kind (0 tombstone, 1 value, 2 forgotten)
 *   [kind 1: H·d + H·d_v f32, u8 has_payload, [u64 len, bytes], v2 only: u8 has_importance, [f64 importance]]
 * v2 (of VERS: this version; of TABL: the table) is written only when a value version's writer gave an
 * importance, so a table that never got one is byte for byte what earlier daemons wrote (and read); v1
 * reads as no importance given. All little-endian.
 */
#define LEGACY_MAGIC  "MASLOTS1"
#define LEGACY_FORMAT 1u
#define BLOB_KIND     MA_BLOB_TAG("SLOT")
#define ROW_KIND      MA_BLOB_TAG("SVER")
#define VERSION_MIN   25              /* bytes of the smallest version record (a tombstone) */
#define FMT_V1        1u              /* VERS / TABL without importances */
#define FMT_V2        2u              /* with the importance of each value version that has one */

/* The VERS or TABL version a set of versions needs: v2 when some value version's writer gave an
 * importance. */
static uint32_t ver_format(const slot_ver *v)
{
    return v->kv && v->has_importance ? FMT_V2 : FMT_V1;
}

static uint32_t tabl_version(rec *const *recs, size_t nrec)
{
    for (size_t i = 0; i < nrec; i++)
        for (size_t j = 0; j < recs[i]->nver; j++)
            if (ver_format(&recs[i]->ver[j]) == FMT_V2)
                return FMT_V2;
    return FMT_V1;
}

static void put_version(const ma_slots *s, const slot_ver *v, uint32_t fmt, ma_blob_writer *b)
{
    ma_blob_put_u64(b, v->version);
    ma_blob_put_u64(b, (uint64_t)v->event);
    ma_blob_put_u64(b, (uint64_t)v->at);
    ma_blob_put_u8(b, v->forgotten ? 2 : v->kv != NULL);
    if (!v->kv)
        return;
    ma_blob_put_f32s(b, v->kv, s->kn + s->vn);
    ma_blob_put_u8(b, v->payload != NULL);
    if (v->payload) {
        size_t pn = strlen(v->payload);
        ma_blob_put_u64(b, pn);
        ma_blob_put_bytes(b, v->payload, pn);
    }
    if (fmt >= FMT_V2) {
        ma_blob_put_u8(b, v->has_importance);
        if (v->has_importance)
            ma_blob_put_f64(b, v->importance);
    }
}

/* Reads one version record (format fmt) whose number must exceed `after` into *out; its key, value and
 * payload are malloc'd and counted in s->bytes. MA_ECORRUPT, MA_ENOMEM (nothing allocated). */
static int get_version(ma_slots *s, ma_blob_reader *b, uint32_t fmt, uint64_t after, slot_ver *out)
{
    uint64_t version = ma_blob_get_u64(b);
    int64_t event = (int64_t)ma_blob_get_u64(b), at = (int64_t)ma_blob_get_u64(b);
    uint8_t kind = ma_blob_get_u8(b);
    if (b->bad || kind > 2 || version == 0 || version <= after || event < -1)
        return MA_ECORRUPT;
    float *kv = NULL;
    char *pl = NULL;
    double importance = -1;   /* not given */
    if (kind == 1) {
        size_t nf = s->kn + s->vn;
        const void *fp = ma_blob_take(b, nf * 4);
        uint8_t has = ma_blob_get_u8(b);
        uint64_t pn = has ? ma_blob_get_u64(b) : 0;
        const void *pp = has ? ma_blob_take(b, (size_t)pn) : NULL;
        uint8_t has_imp = fmt >= FMT_V2 ? ma_blob_get_u8(b) : 0;
        if (has_imp == 1)
            importance = ma_blob_get_f64(b);
        if (b->bad || has > 1 || (has && memchr(pp, 0, (size_t)pn)) || has_imp > 1 ||
            (has_imp && !(importance >= 0 && importance <= 1)))
            return MA_ECORRUPT;
        if (!(kv = malloc(nf * sizeof *kv)) || (has && !(pl = malloc((size_t)pn + 1)))) {
            free(kv);
            return MA_ENOMEM;
        }
        ma_blob_reader fr;
        ma_blob_reader_raw(&fr, fp, nf * 4);
        ma_blob_get_f32s(&fr, kv, nf);
        if (has) {
            memcpy(pl, pp, (size_t)pn);
            pl[pn] = 0;
        }
        s->bytes += block_bytes(s) + (has ? (size_t)pn + 1 : 0);
    }
    bool given = importance >= 0;
    *out = (slot_ver){version, event, at, kv, pl, kind == 2, given,
                      given ? importance : kv ? MA_IMPORTANCE_DEFAULT : 0};
    return 0;
}

/* The TABL body (full: every record with its versions, in format fmt) or the HEAD body (each record's
 * version count and last version only). */
static void emit(const ma_slots *s, rec *const *recs, size_t nrec, bool full, uint32_t fmt, ma_blob_writer *b)
{
    ma_blob_put_u32(b, (uint32_t)s->heads);
    ma_blob_put_u32(b, (uint32_t)s->dim);
    ma_blob_put_u32(b, (uint32_t)s->value_dim);
    ma_blob_put_u32(b, (uint32_t)s->capacity);
    ma_blob_put_u64(b, nrec);
    ma_blob_put_u64(b, s->nres);
    for (size_t i = 0; i < nrec; i++) {
        const rec *r = recs[i];
        ma_blob_put_u32(b, (uint32_t)r->name_len);
        ma_blob_put_bytes(b, r->name, r->name_len);
        ma_blob_put_u8(b, (uint8_t)(r->resident | (r->protect << 1)));
        ma_blob_put_u64(b, atomic_load_explicit(&((rec *)r)->usage, memory_order_relaxed));
        ma_blob_put_u64(b, r->nver);
        if (!full)
            ma_blob_put_u64(b, last_version(r));
        for (size_t j = 0; full && j < r->nver; j++)
            put_version(s, &r->ver[j], fmt, b);
    }
    /* A resident record's ordinal is its position in recs[], which is in name order. */
    for (const rec *r = s->head; r; r = r->next) {
        rec *const *pos = bsearch(&r, recs, nrec, sizeof *recs, by_name);
        ma_blob_put_u64(b, (uint64_t)(pos - recs));
    }
}

static int serialize(const ma_slots *s, bool full, void **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    rec **recs = malloc((s->nrec ? s->nrec : 1) * sizeof *recs);
    if (!recs)
        return MA_ENOMEM;
    size_t nrec = 0;
    for (size_t i = 0; i < s->nbucket; i++)
        for (rec *r = s->bucket[i]; r; r = r->hnext)
            if (r->nver)
                recs[nrec++] = r;
    qsort(recs, nrec, sizeof *recs, by_name);

    ma_blob_writer w;
    ma_blob_begin(&w, BLOB_KIND);
    uint32_t fmt = full ? tabl_version(recs, nrec) : 1;
    ma_blob_section_begin(&w, MA_BLOB_TAG(full ? "TABL" : "HEAD"), fmt);
    emit(s, recs, nrec, full, fmt, &w);
    ma_blob_section_end(&w);
    free(recs);
    return ma_blob_finish(&w, buf, len);
}

int ma_slots_serialize(const ma_slots *s, void **buf, size_t *len)
{
    return serialize(s, true, buf, len);
}

int ma_slots_serialize_state(const ma_slots *s, void **buf, size_t *len)
{
    return serialize(s, false, buf, len);
}

/* Reads one record's versions (TABL version fmt); the record is already in the table. */
static int read_versions(ma_slots *s, ma_blob_reader *b, uint32_t fmt, rec *r, uint64_t nver)
{
    /* A count larger than the rest of the buffer allows is corrupt. */
    if (nver == 0 || nver > ma_blob_remaining(b) / VERSION_MIN)
        return MA_ECORRUPT;
    if (reserve_versions(s, r, (size_t)nver + 1))
        return MA_ENOMEM;
    for (uint64_t j = 0; j < nver; j++) {
        int rc = get_version(s, b, fmt, last_version(r), &r->ver[r->nver]);
        if (rc)
            return rc;
        r->nver++;
    }
    return 0;
}

/* Opens section `tag` of version 2 or 1 (FMT_V*: with or without importances) of r into sec. */
static int open_versioned(ma_blob_reader *r, uint32_t tag, ma_blob_reader *sec, uint32_t *fmt)
{
    ma_blob_reader at = *r;   /* the section header is read again for the other version */
    if (ma_blob_section(r, tag, FMT_V2, sec) == 0) {
        *fmt = FMT_V2;
        return 0;
    }
    *r = at;
    *fmt = FMT_V1;
    return ma_blob_section(r, tag, FMT_V1, sec) ? MA_ECORRUPT : 0;
}

/* Opens either whole-table format, or (state != NULL) a state blob too: *state tells which it was; b then
 * reads the TABL body (of version *fmt) or the HEAD body. */
static int open_table(const void *buf, size_t len, ma_blob_reader *b, bool *state, uint32_t *fmt)
{
    ma_blob_reader r;
    *fmt = FMT_V1;
    if (state)
        *state = false;
    if (ma_blob_is_blob(buf, len)) {
        if (ma_blob_open(&r, buf, len, BLOB_KIND))
            return MA_ECORRUPT;
        ma_blob_reader peek = r;
        if (state && ma_blob_get_u32(&peek) == MA_BLOB_TAG("HEAD")) {
            *state = true;
            return ma_blob_section(&r, MA_BLOB_TAG("HEAD"), 1, b) || ma_blob_done(&r) ? MA_ECORRUPT : 0;
        }
        return open_versioned(&r, MA_BLOB_TAG("TABL"), b, fmt) || ma_blob_done(&r) ? MA_ECORRUPT : 0;
    }
    const unsigned char *p = buf;
    if (!p || len < 8 + 4 + 8 || memcmp(p, LEGACY_MAGIC, 8) != 0)
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, p + len - 8, 8);
    if (ma_blob_get_u64(&r) != ma_blob_checksum(p, len - 8))
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, p + 8, 4);
    if (ma_blob_get_u32(&r) != LEGACY_FORMAT)
        return MA_ECORRUPT;
    ma_blob_reader_raw(b, p + 12, len - 20);
    return 0;
}

/* What a HEAD record says its stored rows hold. */
typedef struct {
    uint64_t nver, last;
} head_want;

/* Reads the records of a TABL body (full: with their versions) or of a HEAD body (want gets each record's
 * version count and last version), in name order, into s and *recs. */
static int read_records(ma_slots *s, ma_blob_reader *b, bool full, uint32_t fmt, rec ***recs_out,
                        head_want **want_out, uint64_t *nrec_out, uint64_t *nres_out)
{
    if (ma_blob_get_u32(b) != (uint32_t)s->heads || ma_blob_get_u32(b) != (uint32_t)s->dim ||
        ma_blob_get_u32(b) != (uint32_t)s->value_dim || ma_blob_get_u32(b) != (uint32_t)s->capacity)
        return MA_ECORRUPT;
    uint64_t nrec = ma_blob_get_u64(b), nres = ma_blob_get_u64(b);
    /* A record takes at least 4 + 1 + 1 + 8 + 8 + 8 bytes (and a full one a version of 25). */
    if (b->bad || nrec > ma_blob_remaining(b) / 30 || nres > nrec || nres > (uint64_t)s->capacity)
        return MA_ECORRUPT;
    rec **recs = NULL;
    head_want *want = NULL;
    if (nrec && (!(recs = calloc((size_t)nrec, sizeof *recs)) ||
                 (!full && !(want = calloc((size_t)nrec, sizeof *want))))) {
        free(recs);
        return MA_ENOMEM;
    }
    *recs_out = recs;
    *want_out = want;
    *nrec_out = nrec;
    *nres_out = nres;
    if (reserve_resident(s, (size_t)nres))
        return MA_ENOMEM;
    for (uint64_t i = 0; i < nrec; i++) {
        uint32_t nl = ma_blob_get_u32(b);
        const unsigned char *np = nl >= 1 && nl <= MA_MAX_NAME ? ma_blob_take(b, nl) : NULL;
        if (!np)
            return MA_ECORRUPT;
        char name[MA_MAX_NAME + 1];
        memcpy(name, np, nl);
        name[nl] = 0;
        if (!ma_name_valid(name) || find(s, name) || (i > 0 && strcmp(recs[i - 1]->name, name) >= 0))
            return MA_ECORRUPT;
        uint8_t flags = ma_blob_get_u8(b);
        uint64_t usage = ma_blob_get_u64(b), nver = ma_blob_get_u64(b);
        uint64_t last = full ? 0 : ma_blob_get_u64(b);
        if (b->bad || flags > 3 || flags == 2 || (!full && (nver == 0 || last < nver)))
            return MA_ECORRUPT;
        rec *r = create_rec(s, name);
        if (!r)
            return MA_ENOMEM;
        recs[i] = r;
        atomic_store(&r->usage, usage);
        r->resident = flags & 1;
        r->protect = flags & 2;
        if (!full)
            want[i] = (head_want){nver, last};
        else {
            int rc = read_versions(s, b, fmt, r, nver);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Checks the records' residency against their versions and reads the update order: the end of a TABL or
 * HEAD body. */
static int finish_table(ma_slots *s, ma_blob_reader *b, rec **recs, uint64_t nrec, uint64_t nres)
{
    size_t resident = 0;
    for (uint64_t i = 0; i < nrec; i++) {
        const rec *r = recs[i];
        /* Resident names end with a value, evicted ones with their tombstone. */
        if (r->nver == 0 || (r->ver[r->nver - 1].kv != NULL) != r->resident)
            return MA_ECORRUPT;
        resident += r->resident;
    }
    if (resident != nres)
        return MA_ECORRUPT;
    for (uint64_t i = 0; i < nres; i++) {
        uint64_t ord = ma_blob_get_u64(b);
        if (b->bad || ord >= nrec || !recs[ord]->resident || recs[ord]->prev || recs[ord] == s->tail)
            return MA_ECORRUPT;
        rec *r = recs[ord];
        r->row = s->nres;
        s->res[s->nres++] = r;
        set_row(s, r->row, r->ver[r->nver - 1].kv);
        lru_append(s, r);
    }
    return ma_blob_done(b) ? MA_ECORRUPT : 0;
}

/* The rows of a state blob's records, arriving in (name, version) order (ma_slot_row_source). */
typedef struct {
    ma_slots *s;
    rec **recs;
    const head_want *want;
    uint64_t nrec, at;
} row_cursor;

static int take_row(void *arg, const char *name, uint64_t version, const void *data, size_t len)
{
    row_cursor *c = arg;
    while (c->at < c->nrec && c->recs[c->at]->nver == c->want[c->at].nver)
        c->at++;
    if (c->at == c->nrec || strcmp(name, c->recs[c->at]->name) != 0)
        return MA_ECORRUPT;            /* a row of no record, one too many, or out of order */
    rec *r = c->recs[c->at];
    if (reserve_versions(c->s, r, r->nver + 2))
        return MA_ENOMEM;
    ma_blob_reader b, sec;
    uint32_t fmt;
    if (ma_blob_open(&b, data, len, ROW_KIND) || open_versioned(&b, MA_BLOB_TAG("VERS"), &sec, &fmt) ||
        ma_blob_done(&b))
        return MA_ECORRUPT;
    slot_ver *v = &r->ver[r->nver];
    int rc = get_version(c->s, &sec, fmt, last_version(r), v);
    if (rc)
        return rc;
    if (v->version != version || ma_blob_done(&sec)) {
        free_version(c->s, v);
        return MA_ECORRUPT;
    }
    r->nver++;
    return 0;
}

static int no_row(void *arg, const char *name, uint64_t version, const void *data, size_t len)
{
    (void)arg, (void)name, (void)version, (void)data, (void)len;
    return MA_ECORRUPT;
}

/* Every record of recs starts unsaved (whole-table restore) or saved (state + rows). */
static void set_saved(ma_slots *s, bool saved)
{
    for (size_t i = 0; i < s->nbucket; i++)
        for (rec *r = s->bucket[i]; r; r = r->hnext)
            if (saved)
                r->saved = r->nver;
            else if (r->nver)
                mark_dirty(s, r);
}

static int restore(int heads, int dim, int value_dim, int capacity, const void *buf, size_t len,
                   const ma_slot_row_source *rows, bool allow_state, ma_slots **out)
{
    *out = NULL;
    ma_slots *s = NULL;
    rec **recs = NULL;
    head_want *want = NULL;
    uint64_t nrec = 0, nres = 0;
    bool state = false;
    uint32_t fmt;
    int rc = ma_slots_create(heads, dim, value_dim, capacity, &s);
    if (rc)
        return rc;
    ma_blob_reader b;
    if ((rc = open_table(buf, len, &b, allow_state ? &state : NULL, &fmt)) ||
        (rc = read_records(s, &b, !state, fmt, &recs, &want, &nrec, &nres)))
        goto fail;
    if (state) {
        row_cursor cur = {s, recs, want, nrec, 0};
        if (nrec && (!rows || !rows->each)) {
            rc = MA_ECORRUPT;          /* versions that no row source can give */
            goto fail;
        }
        if (rows && rows->each && (rc = rows->each(rows->ctx, take_row, &cur)))
            goto fail;
        rc = MA_ECORRUPT;
        for (uint64_t i = 0; i < nrec; i++)
            if (recs[i]->nver != want[i].nver || last_version(recs[i]) != want[i].last)
                goto fail;             /* rows missing */
        for (uint64_t i = 0; i < nrec; i++)
            if (reserve_versions(s, recs[i], recs[i]->nver + 1)) {
                rc = MA_ENOMEM;
                goto fail;
            }
    }
    /* A whole table holds every version: stored rows beside it would be a second history. */
    if (!state && rows && rows->each && (rc = rows->each(rows->ctx, no_row, NULL)))
        goto fail;
    if ((rc = finish_table(s, &b, recs, nrec, nres)))
        goto fail;
    set_saved(s, state);
    free(recs);
    free(want);
    *out = s;
    return 0;
fail:
    free(recs);
    free(want);
    ma_slots_destroy(s);
    return rc ? rc : MA_ECORRUPT;
}

int ma_slots_restore_table(const ma_slots_shape *sh, const void *buf, size_t len, ma_slots **out)
{
    return restore(sh->heads, sh->dim, sh->value_dim, sh->capacity, buf, len, NULL, false, out);
}

int ma_slots_restore_state(const ma_slots_shape *sh, const void *buf, size_t len, const ma_slot_row_source *rows,
                           ma_slots **out)
{
    return restore(sh->heads, sh->dim, sh->value_dim, sh->capacity, buf, len, rows, true, out);
}

/* ---- incremental persistence: the versions not yet stored ---------------------------------------- */

static int encode_row(const ma_slots *s, const slot_ver *v, void **buf, size_t *len)
{
    ma_blob_writer w;
    ma_blob_begin(&w, ROW_KIND);
    uint32_t fmt = ver_format(v);
    ma_blob_section_begin(&w, MA_BLOB_TAG("VERS"), fmt);
    put_version(s, v, fmt, &w);
    ma_blob_section_end(&w);
    return ma_blob_finish(&w, buf, len);
}

bool ma_slots_has_unsaved(const ma_slots *s)
{
    return s->dirty != NULL;
}

int ma_slots_unsaved(const ma_slots *s, ma_slot_row **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t total = 0;
    for (const rec *r = s->dirty; r; r = r->dnext)
        total += r->resave ? r->nver : r->nver - r->saved;
    if (total == 0)
        return 0;
    ma_slot_row *rows = calloc(total, sizeof *rows);
    if (!rows)
        return MA_ENOMEM;
    size_t k = 0;
    for (const rec *r = s->dirty; r; r = r->dnext)
        for (size_t i = r->resave ? 0 : r->saved; i < r->nver; i++, k++) {
            rows[k].name = r->name;
            rows[k].version = r->ver[i].version;
            rows[k].rewrite = i < r->saved;
            if (encode_row(s, &r->ver[i], &rows[k].data, &rows[k].len)) {
                ma_slot_rows_free(rows, k);
                return MA_ENOMEM;
            }
        }
    *out = rows;
    *n = total;
    return 0;
}

void ma_slot_rows_free(ma_slot_row *rows, size_t n)
{
    for (size_t i = 0; rows && i < n; i++)
        free(rows[i].data);
    free(rows);
}

void ma_slots_saved(ma_slots *s)
{
    for (rec *r = s->dirty, *next; r; r = next) {
        next = r->dnext;
        r->saved = r->nver;
        r->resave = false;
        r->dirty = false;
        r->dnext = NULL;
    }
    s->dirty = NULL;
}

void ma_slot_value_clear(ma_slot_value *sv)
{
    free(sv->k);
    free(sv->v);
    free(sv->payload);
    sv->k = sv->v = NULL;
    sv->payload = NULL;
}
