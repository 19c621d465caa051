/*
 * core/archive.c — the archive of every event's keys and values, and the reads over it (core/archive.h).
 *
 * Layout. Events are appended to chunks of C events (the last one may be partial). A chunk's keys and
 * values are two arrays in the archive's event-major, head-major layout, so a chunk is directly a segment
 * for the attention kernel (core/attn.c). The `chunks` selector keeps per chunk a summary — mean key,
 * per-dimension min and max, each H·d floats, in three flat arrays so that scoring every chunk is one or
 * two sgemv; the `index` selector keeps instead an inverted-file index (core/ivf.c) of ids and 4-bit
 * codes (no float keys), rebuilt from keys streamed out of the chunks.
 *
 * Paging. A chunk is either owned (resident, never evicted) or absent. With a chunk source set,
 * ma_archive_release() frees the owned storage of sealed (full) chunks; a read then gets them through a
 * small LRU cache of cache_chunks entries. Cache entries are reference-counted while a read uses them and
 * loaded outside the lock (other readers of the same chunk wait on a condition variable); when every
 * entry is in use a read gets an extra entry, freed again when released, so a read never fails for a
 * small cache (it only costs memory for its duration). The tail (partial) chunk is always owned.
 *
 * Reads: full (every chunk) and window (the last W events) are streamed: the chunks of the range are
 * visited once in order, one held at a time (absent ones read from the source into the read's buffer, not
 * the cache), through the online softmax of core/attn.h, for a whole batch of queries at once
 * (ma_archive_read_exact_batch). Sparse through the selector (chunks: top-k chunks by summary score; index:
 * probe a tenth of the clusters (at the default topk), rank their events by sign code then 4-bit code,
 * attend exactly over the best 8·topk, copied from their chunks when in RAM, else read alone through the
 * event loader, else loaded with their chunks) ends in the exact kernel ma_attn. With H > 1 heads the
 * index answers the union of the heads' candidates and, per head, an estimate of that head's softmax mass
 * outside it (ma_ivf_search_mass), which ma_attn_mass adds to the head's normaliser: the pointer (largest
 * weight summed over heads) then weighs the heads as the full read does (docs/ARCHIVE.md, "Many heads").
 *
 * Persistence. The meta blob holds the shape and the index's centroids and counters; restore streams every
 * chunk through the source once to recompute summaries, and reads the index's lists from its stored rows
 * (ma_archive_restore_meta with rows; the blocks without a row, and every block without a row source, are
 * encoded from keys streamed through the source), so a restored archive answers with the same bits.
 *
 * Index builds: an unmanaged archive builds in place when an append reaches a build point (core/ivf.h);
 * a managed one (the registry's) leaves builds to its caller and keeps the rows of newly indexed blocks
 * until they are persisted; ma_archive_index_adopt takes a build made elsewhere, ma_archive_index_swap an
 * index made elsewhere (after adding the events appended since it was made).
 *
 * Not here: no eviction of the summaries or the index (they stay resident by design), no locking of
 * appends against reads (the session serialises mutations), no threads (a background build is the
 * registry's: registry/registry.c), no read-ahead of chunks for a streamed read.
 */
#include "core/archive.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/attn.h"
#include "core/blob.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/ivf.h"

/* What topk means for the index selector (docs/ARCHIVE.md, "Choosing the probes"): at least
 * INDEX_PROBES_PER_TOPK·topk clusters probed, a fraction topk/INDEX_PROBE_FRAC_DIV of them, and
 * INDEX_CANDIDATES_PER_TOPK·topk candidates attended exactly (overridable at compile time for
 * experiments: bench/). */
#define INDEX_PROBES_PER_TOPK     4
#ifndef INDEX_CANDIDATES_PER_TOPK
#define INDEX_CANDIDATES_PER_TOPK 8
#endif
#ifndef INDEX_PROBE_FRAC_DIV
#define INDEX_PROBE_FRAC_DIV      160
#endif

typedef struct {
    float *k, *v;         /* owned storage, or NULL when the chunk is only in the source */
    uint32_t n, cap;      /* events held; events the owned arrays can hold */
} chunk;

typedef struct {
    uint32_t chunk;
    int refs;             /* readers using it; > 0 while loading */
    bool ready;           /* loaded */
    uint64_t tick;        /* last use, for LRU */
    float *k, *v;
} centry;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;    /* signalled when an entry finished loading (or failed) */
    centry **e;           /* pointers, so that readers' references survive array changes */
    size_t n, alloc, cap;
    uint64_t clock;
    size_t bytes;
} ccache;

struct ma_archive {
    int H, d, dv, C, topk, window;
    ma_selector selector;
    bool sums;                     /* chunk summaries kept (selector chunks only) */
    ma_chunk_score cscore;
    bool adaptive;                 /* index reads probe adaptively (MA_IVF_ADAPTIVE; set_adaptive) */
    size_t kf, vf;                 /* floats per event: H·d and H·d_v */
    uint64_t length;
    uint32_t nchunks;
    size_t ch_alloc, sum_alloc[3]; /* capacities of ch and of mean / mn / mx (rows) */
    chunk *ch;
    float *mean, *mn, *mx;         /* [chunk][H·d] */
    double *tail_sum;              /* running sum of the last chunk's keys (its mean, exactly) */
    size_t owned_bytes;
    ma_ivf *ivf;                   /* selector index only */
    bool managed;                  /* index builds left to the caller; index rows kept for it (set_managed) */
    bool has_src;
    ma_chunk_source src;
    ma_event_loader load_events;   /* optional: candidates read alone through src.ctx */
    ccache *cache;                 /* with a source */
    uint8_t *mask;                 /* per event: MA_MASK_* bits (NULL until an event is masked) */
    uint64_t mask_cap;             /* events mask can hold */
    uint64_t n_masked;             /* events with any bit set (0: reads take the unmasked path) */
};

/* A reader's hold on one chunk's data. */
typedef struct {
    const float *k, *v;
    centry *e;            /* NULL for an owned chunk */
} cref;

void ma_read_result_clear(ma_read_result *r)
{
    if (!r)
        return;
    free(r->chunks);
    r->chunks = NULL;
    r->n_chunks = 0;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static ma_archive *alloc_archive(const ma_params *p)
{
    ma_archive *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->H = p->heads;
    a->d = p->dim;
    a->dv = p->value_dim;
    a->C = p->chunk;
    a->topk = p->topk;
    a->window = p->window;
    a->selector = p->selector;
    a->sums = p->selector == MA_SELECTOR_CHUNKS;
    a->cscore = MA_CHUNK_SCORE_BOUND;
    a->adaptive = false;   /* not yet shown faster than fixed probing (docs/RESULTS.md) */
    a->kf = (size_t)a->H * a->d;
    a->vf = (size_t)a->H * a->dv;
    a->tail_sum = calloc(a->kf, sizeof(double));
    if (!a->tail_sum) {
        free(a);
        return NULL;
    }
    return a;
}

int ma_archive_create(const ma_params *p, ma_archive **out)
{
    if (!p || !out || ma_params_validate(p, NULL, 0) != 0)
        return MA_EINVAL;
    ma_archive *a = alloc_archive(p);
    if (!a)
        return MA_ENOMEM;
    if (a->selector == MA_SELECTOR_INDEX) {
        int rc = ma_ivf_create(a->H, a->d, &a->ivf);
        if (rc) {
            ma_archive_destroy(a);
            return rc;
        }
    }
    *out = a;
    return 0;
}

static void cache_free(ccache *cc)
{
    if (!cc)
        return;
    for (size_t i = 0; i < cc->n; i++) {
        free(cc->e[i]->k);
        free(cc->e[i]->v);
        free(cc->e[i]);
    }
    free(cc->e);
    pthread_mutex_destroy(&cc->mu);
    pthread_cond_destroy(&cc->cv);
    free(cc);
}

void ma_archive_destroy(ma_archive *a)
{
    if (!a)
        return;
    for (uint32_t c = 0; c < a->nchunks; c++) {
        free(a->ch[c].k);
        free(a->ch[c].v);
    }
    free(a->ch);
    free(a->mean);
    free(a->mn);
    free(a->mx);
    free(a->tail_sum);
    ma_ivf_destroy(a->ivf);
    cache_free(a->cache);
    free(a->mask);
    free(a);
}

uint64_t ma_archive_length(const ma_archive *a)
{
    return a->length;
}

uint32_t ma_archive_chunks(const ma_archive *a)
{
    return a->nchunks;
}

void ma_archive_set_chunk_score(ma_archive *a, ma_chunk_score s)
{
    if (s == MA_CHUNK_SCORE_BOUND || s == MA_CHUNK_SCORE_MEAN || s == MA_CHUNK_SCORE_BOTH)
        a->cscore = s;
}

void ma_archive_set_adaptive(ma_archive *a, bool on)
{
    a->adaptive = on;
}

/* ---- append ---------------------------------------------------------------------------------- */

/* Makes room for nc chunks in the chunk table and the summaries. Entries past nchunks stay zero. */
static int grow_tables(ma_archive *a, uint32_t nc)
{
    if (nc > a->ch_alloc) {
        size_t na = a->ch_alloc ? a->ch_alloc * 2 : 16;
        if (na < nc)
            na = nc;
        chunk *ch = realloc(a->ch, na * sizeof *ch);
        if (!ch)
            return MA_ENOMEM;
        memset(ch + a->ch_alloc, 0, (na - a->ch_alloc) * sizeof *ch);
        a->ch = ch;
        a->ch_alloc = na;
    }
    float **arr[3] = {&a->mean, &a->mn, &a->mx};
    for (int i = 0; i < (a->sums ? 3 : 0); i++) {
        if (nc <= a->sum_alloc[i])
            continue;
        size_t na = a->ch_alloc;
        float *p = realloc(*arr[i], na * a->kf * sizeof(float));
        if (!p)
            return MA_ENOMEM;
        *arr[i] = p;
        a->sum_alloc[i] = na;
    }
    return 0;
}

/* Ensures chunk c's owned arrays hold `need` events (growing geometrically up to C). */
static int reserve_chunk(ma_archive *a, uint32_t c, uint32_t need)
{
    chunk *ch = &a->ch[c];
    if (ch->cap >= need)
        return 0;
    uint32_t cap = ch->cap ? ch->cap * 2 : 8;
    if (cap < need)
        cap = need;
    if (cap > (uint32_t)a->C)
        cap = (uint32_t)a->C;
    float *k = realloc(ch->k, (size_t)cap * a->kf * sizeof(float));
    if (!k)
        return MA_ENOMEM;
    ch->k = k;
    float *v = realloc(ch->v, (size_t)cap * a->vf * sizeof(float));
    if (!v)
        return MA_ENOMEM;   /* k is merely larger than cap says; harmless */
    ch->v = v;
    a->owned_bytes += (size_t)(cap - ch->cap) * (a->kf + a->vf) * sizeof(float);
    ch->cap = cap;
    return 0;
}

/* The index's key loader: keys of events [first, first+n), chunk by chunk, owned chunks copied, absent
 * ones read through the source directly (not the cache: a rebuild streams every chunk once, and must not
 * evict what readers use). */
static int load_keys(void *ctx, uint64_t first, size_t n, float *k)
{
    const ma_archive *a = ctx;
    const uint64_t C = (uint64_t)a->C;
    float *tk = NULL, *tv = NULL;
    int rc = 0;
    for (uint64_t i = first; i < first + n;) {
        uint32_t c = (uint32_t)(i / C);
        const chunk *ch = &a->ch[c];
        uint64_t c0 = (uint64_t)c * C, end = c0 + ch->n < first + n ? c0 + ch->n : first + n;
        const float *src = ch->k;
        if (!src) {
            if (!tk) {
                tk = malloc((size_t)a->C * a->kf * sizeof(float));
                tv = malloc((size_t)a->C * a->vf * sizeof(float));
                if (!tk || !tv) {
                    rc = MA_ENOMEM;
                    break;
                }
            }
            if (!a->has_src) {
                rc = MA_EIO;
                break;
            }
            if ((rc = a->src.load(a->src.ctx, c, tk, tv, ch->n)) != 0)
                break;
            src = tk;
        }
        memcpy(k + (size_t)(i - first) * a->kf, src + (size_t)(i - c0) * a->kf,
               (size_t)(end - i) * a->kf * sizeof(float));
        i = end;
    }
    free(tk);
    free(tv);
    return rc;
}

int ma_archive_append(ma_archive *a, size_t n, const float *k, const float *v)
{
    if (n == 0)
        return 0;
    const uint64_t C = (uint64_t)a->C;
    uint64_t newlen = a->length + n;
    uint64_t nc64 = (newlen + C - 1) / C;
    if (nc64 > UINT32_MAX)
        return MA_ENOMEM;
    uint32_t nc = (uint32_t)nc64;
    uint32_t c0 = (uint32_t)(a->length / C);
    int rc = grow_tables(a, nc);
    if (rc)
        return rc;

    /* Storage first (nothing visible changes), then the index, then the copy, which cannot fail. */
    for (uint32_t c = c0; c < nc; c++) {
        uint64_t after = newlen - (uint64_t)c * C;
        rc = reserve_chunk(a, c, (uint32_t)(after < C ? after : C));
        if (rc)
            goto fail;
    }
    if (a->ivf) {
        rc = ma_ivf_add(a->ivf, n, k);
        if (rc)
            goto fail;
    }

    for (size_t i = 0; i < n; i++) {
        uint64_t idx = a->length + i;
        uint32_t c = (uint32_t)(idx / C), r = (uint32_t)(idx % C);
        chunk *ch = &a->ch[c];
        const float *ki = k + i * a->kf;
        memcpy(ch->k + (size_t)r * a->kf, ki, a->kf * sizeof(float));
        memcpy(ch->v + (size_t)r * a->vf, v + i * a->vf, a->vf * sizeof(float));
        ch->n = r + 1;
        if (!a->sums)
            continue;
        float *mn = a->mn + (size_t)c * a->kf, *mx = a->mx + (size_t)c * a->kf;
        if (r == 0) {
            memset(a->tail_sum, 0, a->kf * sizeof(double));
            memcpy(mn, ki, a->kf * sizeof(float));
            memcpy(mx, ki, a->kf * sizeof(float));
        }
        for (size_t j = 0; j < a->kf; j++) {
            a->tail_sum[j] += ki[j];
            if (ki[j] < mn[j])
                mn[j] = ki[j];
            if (ki[j] > mx[j])
                mx[j] = ki[j];
        }
        if (r + 1 == C || i + 1 == n) {
            float *mean = a->mean + (size_t)c * a->kf;
            for (size_t j = 0; j < a->kf; j++)
                mean[j] = (float)(a->tail_sum[j] / (r + 1));
        }
    }
    a->length = newlen;
    a->nchunks = nc;
    /* The events are in their chunks now: a build can stream them. A failed build leaves the index valid
     * with its old centroids; the next append retries. A managed archive leaves builds to its caller. */
    if (a->ivf && !a->managed && ma_ivf_want_rebuild(a->ivf))
        (void)ma_ivf_rebuild(a->ivf, load_keys, a);
    return 0;

fail:
    /* Chunks that did not exist before get their storage back; the partial tail keeps its larger arrays. */
    for (uint32_t c = a->nchunks; c < nc; c++) {
        chunk *ch = &a->ch[c];
        a->owned_bytes -= (size_t)ch->cap * (a->kf + a->vf) * sizeof(float);
        free(ch->k);
        free(ch->v);
        memset(ch, 0, sizeof *ch);
    }
    return rc;
}

/* ---- chunk access (owned or through the cache) ----------------------------------------------- */

static size_t entry_bytes(const ma_archive *a)
{
    return (size_t)a->C * (a->kf + a->vf) * sizeof(float) + sizeof(centry);
}

static void entry_remove(ccache *cc, centry *e)
{
    for (size_t i = 0; i < cc->n; i++) {
        if (cc->e[i] == e) {
            cc->e[i] = cc->e[--cc->n];
            break;
        }
    }
    free(e->k);
    free(e->v);
    free(e);
}

static int chunk_acquire(const ma_archive *a, uint32_t c, cref *r)
{
    const chunk *ch = &a->ch[c];
    if (ch->k) {
        r->k = ch->k;
        r->v = ch->v;
        r->e = NULL;
        return 0;
    }
    if (!a->has_src)
        return MA_EIO;   /* unreachable: chunks are only released with a source set */
    ccache *cc = a->cache;
    pthread_mutex_lock(&cc->mu);
    for (;;) {
        centry *hit = NULL;
        for (size_t i = 0; i < cc->n; i++)
            if (cc->e[i]->chunk == c) {
                hit = cc->e[i];
                break;
            }
        if (!hit)
            break;
        if (!hit->ready) {
            pthread_cond_wait(&cc->cv, &cc->mu);
            continue;   /* re-find: the entry may have failed and gone */
        }
        hit->refs++;
        hit->tick = ++cc->clock;
        pthread_mutex_unlock(&cc->mu);
        r->k = hit->k;
        r->v = hit->v;
        r->e = hit;
        return 0;
    }

    centry *e = NULL;
    if (cc->n >= cc->cap) {
        for (size_t i = 0; i < cc->n; i++) {
            centry *x = cc->e[i];
            if (x->refs == 0 && x->ready && (!e || x->tick < e->tick))
                e = x;
        }
    }
    if (!e) {
        if (cc->n == cc->alloc) {
            size_t na = cc->alloc ? cc->alloc * 2 : 8;
            centry **p = realloc(cc->e, na * sizeof *p);
            if (!p)
                goto oom;
            cc->e = p;
            cc->alloc = na;
        }
        e = calloc(1, sizeof *e);
        if (!e)
            goto oom;
        e->k = malloc((size_t)a->C * a->kf * sizeof(float));
        e->v = malloc((size_t)a->C * a->vf * sizeof(float));
        if (!e->k || !e->v) {
            free(e->k);
            free(e->v);
            free(e);
            goto oom;
        }
        cc->e[cc->n++] = e;
        cc->bytes += entry_bytes(a);
    }
    e->chunk = c;
    e->ready = false;
    e->refs = 1;
    pthread_mutex_unlock(&cc->mu);

    /* Loading outside the lock: other chunks stay readable meanwhile. */
    int rc = a->src.load(a->src.ctx, c, e->k, e->v, ch->n);

    pthread_mutex_lock(&cc->mu);
    if (rc) {
        cc->bytes -= entry_bytes(a);
        entry_remove(cc, e);
    } else {
        e->ready = true;
        e->tick = ++cc->clock;
    }
    pthread_cond_broadcast(&cc->cv);
    pthread_mutex_unlock(&cc->mu);
    if (rc)
        return rc;
    r->k = e->k;
    r->v = e->v;
    r->e = e;
    return 0;
oom:
    pthread_mutex_unlock(&cc->mu);
    return MA_ENOMEM;
}

static void chunk_release(const ma_archive *a, cref *r)
{
    if (!r->e)
        return;
    ccache *cc = a->cache;
    pthread_mutex_lock(&cc->mu);
    if (--r->e->refs == 0 && cc->n > cc->cap) {
        cc->bytes -= entry_bytes(a);
        entry_remove(cc, r->e);
    }
    pthread_mutex_unlock(&cc->mu);
    r->e = NULL;
}

int ma_archive_get(const ma_archive *a, uint64_t i, float *k, float *v)
{
    if (i >= a->length)
        return MA_ENOTFOUND;
    uint32_t c = (uint32_t)(i / (uint64_t)a->C), row = (uint32_t)(i % (uint64_t)a->C);
    cref r;
    int rc = chunk_acquire(a, c, &r);
    if (rc)
        return rc;
    if (k)
        memcpy(k, r.k + (size_t)row * a->kf, a->kf * sizeof(float));
    if (v)
        memcpy(v, r.v + (size_t)row * a->vf, a->vf * sizeof(float));
    chunk_release(a, &r);
    return 0;
}

/* ---- masks ----------------------------------------------------------------------------------- */

int ma_archive_mask_reserve(ma_archive *a, uint64_t n)
{
    if (n <= a->mask_cap)
        return 0;
    uint64_t cap = a->mask_cap ? a->mask_cap : 1024;
    while (cap < n)
        cap *= 2;
    if (cap > SIZE_MAX)
        return MA_ENOMEM;
    uint8_t *m = realloc(a->mask, (size_t)cap);
    if (!m)
        return MA_ENOMEM;
    memset(m + a->mask_cap, 0, (size_t)(cap - a->mask_cap));
    a->mask = m;
    a->mask_cap = cap;
    return 0;
}

void ma_archive_mask_set(ma_archive *a, uint64_t i, unsigned bits, bool on)
{
    if (i >= a->mask_cap)
        return;   /* not reserved: the caller's contract says it was */
    uint8_t old = a->mask[i], now = on ? (uint8_t)(old | bits) : (uint8_t)(old & ~bits);
    a->mask[i] = now;
    a->n_masked += (now != 0) - (old != 0);
}

unsigned ma_archive_masked(const ma_archive *a, uint64_t i)
{
    return i < a->mask_cap ? a->mask[i] : 0;
}

/* ---- reads ----------------------------------------------------------------------------------- */

/* Whether a read with skip bits `skip` must leave event i out. */
static inline bool skipped(const ma_archive *a, uint64_t i, unsigned skip)
{
    return (ma_archive_masked(a, i) & skip) != 0;
}

static void fill_result(ma_read_result *r, const ma_attn_best *b, uint32_t *chunks, size_t n_chunks,
                        uint64_t scored)
{
    r->pointer = b->pointer;
    r->score = b->score;
    r->weight = b->weight;
    r->chunks = chunks;
    r->n_chunks = n_chunks;
    r->events_scored = scored;
}

/* Exact attention over the events in [lo, hi) of the listed chunks (ascending). Takes ownership of cl
 * (it becomes r->chunks on success, freed on failure). */
static int attend_chunks(const ma_archive *a, const float *q, uint32_t *cl, size_t ncl, uint64_t lo,
                         uint64_t hi, ma_read_result *r)
{
    int rc = MA_ENOMEM;
    size_t held = 0, nseg = 0, seg_cap = ncl ? ncl : 1;
    bool masks = a->n_masked && r->skip;
    cref *refs = calloc(ncl ? ncl : 1, sizeof *refs);
    ma_attn_seg *segs = calloc(seg_cap, sizeof *segs);
    if (!refs || !segs)
        goto done;
    uint64_t scored = 0;
    for (size_t i = 0; i < ncl; i++) {
        rc = chunk_acquire(a, cl[i], &refs[i]);
        if (rc)
            goto done;
        held++;
        uint64_t c0 = (uint64_t)cl[i] * (uint64_t)a->C, c1 = c0 + a->ch[cl[i]].n;
        uint64_t s0 = c0 > lo ? c0 : lo, s1 = c1 < hi ? c1 : hi;
        if (s1 < s0)
            s1 = s0;
        /* Runs of events the read may see: one segment per run (the whole range when nothing is masked). */
        for (uint64_t e = s0; e < s1;) {
            if (masks && skipped(a, e, r->skip)) {
                e++;
                continue;
            }
            uint64_t f = e + 1;
            while (f < s1 && !(masks && skipped(a, f, r->skip)))
                f++;
            if (nseg == seg_cap) {
                ma_attn_seg *g = realloc(segs, 2 * seg_cap * sizeof *segs);
                rc = MA_ENOMEM;
                if (!g)
                    goto done;
                segs = g;
                seg_cap *= 2;
            }
            segs[nseg].k = refs[i].k + (size_t)(e - c0) * a->kf;
            segs[nseg].v = refs[i].v + (size_t)(e - c0) * a->vf;
            segs[nseg].n = (size_t)(f - e);
            segs[nseg].first = e;
            segs[nseg].ids = NULL;
            nseg++;
            scored += f - e;
            e = f;
        }
    }
    rc = MA_EEMPTY;
    if (scored == 0)
        goto done;
    ma_attn_best best;
    rc = ma_attn(segs, nseg, a->H, a->d, a->dv, q, r->v, &best);
    if (rc == 0) {
        fill_result(r, &best, cl, ncl, scored);
        cl = NULL;
    }
done:
    for (size_t i = 0; i < held; i++)
        chunk_release(a, &refs[i]);
    free(refs);
    free(segs);
    free(cl);
    return rc;
}

static int range_chunks(const ma_archive *a, uint64_t lo, uint64_t hi, uint32_t **cl, size_t *ncl)
{
    uint32_t c0 = (uint32_t)(lo / (uint64_t)a->C), c1 = (uint32_t)((hi - 1) / (uint64_t)a->C);
    *ncl = (size_t)c1 - c0 + 1;
    *cl = malloc(*ncl * sizeof **cl);
    if (!*cl)
        return MA_ENOMEM;
    for (size_t i = 0; i < *ncl; i++)
        (*cl)[i] = c0 + (uint32_t)i;
    return 0;
}

/* ---- streamed exact reads (full, window) ------------------------------------------------------ */

/* Chunks per span of a streamed read (the granularity at which an H > 1 read revisits for its pointer). */
#define STREAM_SPAN_CHUNKS 16

/* Chunk c for a streamed read, leaving the cache as it is (a scan must not evict what sparse reads use):
 * the owned arrays, a ready cache entry (held until chunk_release), or the chunk read straight from the
 * source into kbuf/vbuf (C events each). */
static int chunk_stream(const ma_archive *a, uint32_t c, float *kbuf, float *vbuf, cref *r)
{
    const chunk *ch = &a->ch[c];
    r->e = NULL;
    if (ch->k) {
        r->k = ch->k;
        r->v = ch->v;
        return 0;
    }
    if (!a->has_src)
        return MA_EIO;   /* unreachable: chunks are only released with a source set */
    ccache *cc = a->cache;
    pthread_mutex_lock(&cc->mu);
    for (size_t i = 0; i < cc->n; i++) {
        centry *x = cc->e[i];
        if (x->chunk == c && x->ready) {
            x->refs++;
            pthread_mutex_unlock(&cc->mu);
            r->k = x->k;
            r->v = x->v;
            r->e = x;
            return 0;
        }
    }
    pthread_mutex_unlock(&cc->mu);
    int rc = a->src.load(a->src.ctx, c, kbuf, vbuf, ch->n);
    if (rc)
        return rc;
    r->k = kbuf;
    r->v = vbuf;
    return 0;
}

/* The mask bytes of events [first, first + n) for a stream (NULL when nothing is masked). */
static const uint8_t *block_mask(const ma_archive *a, uint64_t first, size_t n, size_t *mask_n)
{
    *mask_n = 0;
    if (!a->n_masked || first >= a->mask_cap)
        return NULL;
    *mask_n = a->mask_cap - first < n ? (size_t)(a->mask_cap - first) : n;
    return a->mask + first;
}

/* Streams the chunks of [lo, hi) once through an online softmax for nq queries (core/attn.h), holding one
 * chunk at a time, then (H > 1) revisits the spans that may hold a pointer. */
static int stream_exact(const ma_archive *a, const ma_attn_query *qs, size_t nq, ma_read_result *r, int *rcs)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < nq; i++) {
        rcs[i] = MA_EEMPTY;
        if (qs[i].lo < qs[i].hi) {
            lo = qs[i].lo < lo ? qs[i].lo : lo;
            hi = qs[i].hi > hi ? qs[i].hi : hi;
        }
    }
    if (lo >= hi)
        return 0;
    const uint64_t C = (uint64_t)a->C;
    uint32_t c0 = (uint32_t)(lo / C), c1 = (uint32_t)((hi - 1) / C);
    size_t nspans = ((size_t)c1 - c0) / STREAM_SPAN_CHUNKS + 1, done = 0;
    ma_attn_stream *st = NULL;
    float *kbuf = malloc((size_t)a->C * a->kf * sizeof(float)), *vbuf = malloc((size_t)a->C * a->vf * sizeof(float));
    int rc = MA_ENOMEM;
    if (!kbuf || !vbuf)
        goto fail;
    if ((rc = ma_attn_stream_create(a->H, a->d, a->dv, qs, nq, (size_t)a->C, (uint64_t)c0 * C,
                                    STREAM_SPAN_CHUNKS * C, nspans, &st)) != 0)
        goto fail;
    for (uint32_t c = c0; c <= c1; c++) {
        uint64_t first = (uint64_t)c * C;
        size_t n = a->ch[c].n, mask_n;
        if (!ma_attn_stream_wants(st, first, n))
            continue;
        cref ref;
        if ((rc = chunk_stream(a, c, kbuf, vbuf, &ref)) != 0)
            goto fail;
        const uint8_t *mask = block_mask(a, first, n, &mask_n);
        ma_attn_stream_feed(st, ref.k, ref.v, n, first, mask, mask_n);
        chunk_release(a, &ref);
    }
    ma_attn_stream_finish(st);
    for (size_t sp = 0; sp < nspans; sp++) {
        if (!ma_attn_stream_revisit(st, sp))
            continue;
        for (uint32_t c = c0 + (uint32_t)(sp * STREAM_SPAN_CHUNKS); c <= c1 && c < c0 + (sp + 1) * STREAM_SPAN_CHUNKS; c++) {
            uint64_t first = (uint64_t)c * C;
            size_t n = a->ch[c].n, mask_n;
            cref ref;
            if ((rc = chunk_stream(a, c, kbuf, vbuf, &ref)) != 0)
                goto fail;
            const uint8_t *mask = block_mask(a, first, n, &mask_n);
            ma_attn_stream_refeed(st, ref.k, n, first, mask, mask_n);
            chunk_release(a, &ref);
        }
    }
    for (; done < nq; done++) {
        ma_attn_best best;
        uint64_t scored;
        if (ma_attn_stream_result(st, done, r[done].v, &best, &scored) != 0)
            continue;   /* rcs stays MA_EEMPTY */
        uint32_t *cl;
        size_t ncl;
        if ((rc = range_chunks(a, qs[done].lo, qs[done].hi, &cl, &ncl)) != 0)
            goto fail;
        fill_result(&r[done], &best, cl, ncl, scored);
        rcs[done] = 0;
    }
    rc = 0;
    goto out;
fail:
    for (size_t j = 0; j < done; j++)
        ma_read_result_clear(&r[j]);
out:
    ma_attn_stream_destroy(st);
    free(kbuf);
    free(vbuf);
    return rc;
}

int ma_archive_read_exact_batch(const ma_archive *a, const float *Q, size_t nq, const int *windows,
                                ma_read_result *r, int *rcs)
{
    if (nq == 0)
        return 0;
    ma_attn_query *qs = malloc(nq * sizeof *qs);
    if (!qs)
        return MA_ENOMEM;
    for (size_t i = 0; i < nq; i++) {
        uint64_t lo = 0;
        if (windows && windows[i] >= 0) {
            uint64_t w = (uint64_t)(windows[i] > 0 ? windows[i] : a->window);
            lo = a->length > w ? a->length - w : 0;
        }
        qs[i] = (ma_attn_query){.q = Q + i * a->kf, .lo = lo, .hi = a->length, .skip = r[i].skip};
    }
    int rc = stream_exact(a, qs, nq, r, rcs);
    free(qs);
    return rc;
}

int ma_archive_read_full(const ma_archive *a, const float *q, ma_read_result *r)
{
    int one;
    int rc = ma_archive_read_exact_batch(a, q, 1, NULL, r, &one);
    return rc ? rc : one;
}

int ma_archive_read_window(const ma_archive *a, const float *q, int window, ma_read_result *r)
{
    int one, w = window > 0 ? window : 0;
    int rc = ma_archive_read_exact_batch(a, q, 1, &w, r, &one);
    return rc ? rc : one;
}

/* Scores every chunk's summary against q into s (nchunks floats). */
static void score_bound(const ma_archive *a, const float *q, float *qpn, float *s)
{
    float *qp = qpn, *qn = qpn + a->kf;
    for (size_t j = 0; j < a->kf; j++) {
        qp[j] = q[j] > 0 ? q[j] : 0;
        qn[j] = q[j] < 0 ? q[j] : 0;
    }
    /* sum_j max(q_j min_j, q_j max_j) = q+ . max + q- . min */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)a->nchunks, (int)a->kf, 1.0f, a->mx, (int)a->kf, qp, 1, 0.0f,
                s, 1);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)a->nchunks, (int)a->kf, 1.0f, a->mn, (int)a->kf, qn, 1, 1.0f,
                s, 1);
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

static int select_chunks(const ma_archive *a, const float *q, size_t k, uint32_t **cl, size_t *ncl)
{
    int rc = MA_ENOMEM;
    size_t n = a->nchunks, got = 0, got2 = 0;
    float *s = malloc(n * sizeof(float));
    float *s2 = NULL;
    float *qpn = malloc(2 * a->kf * sizeof(float));
    size_t *idx = malloc(k * sizeof(size_t));
    uint32_t *out = malloc(k * sizeof(uint32_t));
    if (!s || !qpn || !idx || !out)
        goto fail;
    if (a->cscore == MA_CHUNK_SCORE_MEAN) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)a->kf, 1.0f, a->mean, (int)a->kf, q, 1, 0.0f, s, 1);
        if (ma_topk(s, n, k, idx, &got) != 0)
            goto fail;
    } else if (a->cscore == MA_CHUNK_SCORE_BOUND) {
        score_bound(a, q, qpn, s);
        if (ma_topk(s, n, k, idx, &got) != 0)
            goto fail;
    } else {
        s2 = malloc(n * sizeof(float));
        if (!s2)
            goto fail;
        score_bound(a, q, qpn, s);
        if (ma_topk(s, n, (k + 1) / 2, idx, &got) != 0)
            goto fail;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)a->kf, 1.0f, a->mean, (int)a->kf, q, 1, 0.0f, s2, 1);
        for (size_t i = 0; i < got; i++)
            s2[idx[i]] = -INFINITY;   /* already chosen by the bound; k <= n leaves enough others */
        if (ma_topk(s2, n, k - got, idx + got, &got2) != 0)
            goto fail;
    }
    for (size_t i = 0; i < got + got2; i++)
        out[i] = (uint32_t)idx[i];
    qsort(out, got + got2, sizeof *out, cmp_u32);
    *cl = out;
    *ncl = got + got2;
    rc = 0;
    out = NULL;
fail:
    free(s);
    free(s2);
    free(qpn);
    free(idx);
    free(out);
    return rc;
}

/* The index's probes for topk: a fraction topk/INDEX_PROBE_FRAC_DIV of the lists (a tenth at the default
 * topk 16), at least INDEX_PROBES_PER_TOPK·topk; and its candidate budget. */
static int index_budget(const ma_archive *a, int topk, size_t *budget)
{
    uint64_t b64 = (uint64_t)topk * INDEX_CANDIDATES_PER_TOPK;
    *budget = b64 < a->length ? (size_t)b64 : (size_t)a->length;
    uint64_t np64 = ((uint64_t)ma_ivf_nlist(a->ivf) * (uint64_t)topk + INDEX_PROBE_FRAC_DIV - 1) / INDEX_PROBE_FRAC_DIV;
    if (np64 < (uint64_t)topk * INDEX_PROBES_PER_TOPK)
        np64 = (uint64_t)topk * INDEX_PROBES_PER_TOPK;
    return np64 > INT_MAX ? INT_MAX : (int)np64;
}

/* Chunk c's data if it is in RAM (owned, or a ready cache entry, then held), without loading it: 0, or
 * MA_ENOTFOUND. */
static int chunk_peek(const ma_archive *a, uint32_t c, cref *r)
{
    float kb[1], vb[1];
    if (a->ch[c].k || !a->has_src)
        return chunk_stream(a, c, kb, vb, r);   /* owned: never loads */
    ccache *cc = a->cache;
    int rc = MA_ENOTFOUND;
    pthread_mutex_lock(&cc->mu);
    for (size_t i = 0; i < cc->n; i++) {
        centry *x = cc->e[i];
        if (x->chunk == c && x->ready) {
            x->refs++;
            x->tick = ++cc->clock;
            r->k = x->k;
            r->v = x->v;
            r->e = x;
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&cc->mu);
    return rc;
}

/* Copies the keys and values of events ids[0..n) (ascending) into k and v and lists their chunks in cl
 * (ascending, *ncl of them). Events of chunks in RAM are copied from there; with a source that reads
 * single events (load_events) the others are read alone (an id the index gave twice is read once), else
 * their chunks are loaded through the cache. The bytes are the same either way. */
static int gather_ids(const ma_archive *a, const uint64_t *ids, size_t n, float *k, float *v, uint32_t *cl,
                      size_t *ncl)
{
    const uint64_t C = (uint64_t)a->C;
    size_t nabs = 0;
    uint64_t *abs_ids = NULL;
    size_t *abs_at = NULL;
    float *ak = NULL, *av = NULL;
    int rc = 0;
    bool single = a->has_src && a->load_events;
    *ncl = 0;
    /* ids ascending: events of one chunk are consecutive; hold one chunk at a time while copying. */
    for (size_t i = 0; i < n;) {
        uint32_t c = (uint32_t)(ids[i] / C);
        size_t j = i;
        while (j < n && ids[j] / C == c)
            j++;
        cref ref;
        rc = single ? chunk_peek(a, c, &ref) : chunk_acquire(a, c, &ref);
        if (rc == MA_ENOTFOUND) {   /* read alone below */
            if (!abs_ids && (!(abs_ids = malloc(n * sizeof *abs_ids)) || !(abs_at = calloc(n, sizeof *abs_at)))) {
                rc = MA_ENOMEM;
                goto done;
            }
            for (; i < j; i++) {   /* abs_at[i]: where candidate i is among the distinct ids read */
                if (!nabs || abs_ids[nabs - 1] != ids[i])
                    abs_ids[nabs++] = ids[i];
                abs_at[i] = nabs - 1;
                abs_at[i] |= (size_t)1 << (sizeof(size_t) * 8 - 1);   /* marks an absent candidate */
            }
        } else if (rc) {
            goto done;
        } else {
            for (; i < j; i++) {
                size_t row = (size_t)(ids[i] % C);
                memcpy(k + i * a->kf, ref.k + row * a->kf, a->kf * sizeof(float));
                memcpy(v + i * a->vf, ref.v + row * a->vf, a->vf * sizeof(float));
            }
            chunk_release(a, &ref);
        }
        cl[(*ncl)++] = c;
    }
    rc = 0;
    if (nabs) {
        if (!(ak = malloc(nabs * a->kf * sizeof(float))) || !(av = malloc(nabs * a->vf * sizeof(float)))) {
            rc = MA_ENOMEM;
            goto done;
        }
        if ((rc = a->load_events(a->src.ctx, abs_ids, nabs, ak, av)) != 0)
            goto done;
        const size_t mark = (size_t)1 << (sizeof(size_t) * 8 - 1);
        for (size_t i = 0; i < n; i++) {
            if (!(abs_at[i] & mark))
                continue;
            size_t x = abs_at[i] & ~mark;
            memcpy(k + i * a->kf, ak + x * a->kf, a->kf * sizeof(float));
            memcpy(v + i * a->vf, av + x * a->vf, a->vf * sizeof(float));
        }
    }
done:
    free(abs_ids);
    free(abs_at);
    free(ak);
    free(av);
    return rc;
}

/* Whether the outputs of sparse reads of many heads use the normalisers with the index's estimate of the
 * mass outside the candidates (ma_archive_set_mass_in_output; benches compare). The pointer and its weight
 * always do. */
static int mass_in_output = MA_ARCHIVE_MASS_IN_OUTPUT;

void ma_archive_set_mass_in_output(int on)
{
    mass_in_output = on != 0;
}

/* Exact attention over the n candidates ids (ascending) the index chose for q; masked candidates are
 * dropped from ids in place first. outside (H, or NULL): per head the log of the mass the index estimates
 * outside the candidates (ma_ivf_search_mass), added to the head's normaliser (ma_attn_mass). */
static int attend_ids(const ma_archive *a, const float *q, uint64_t *ids, size_t n, uint64_t scored,
                      const double *outside, ma_read_result *r)
{
    int rc = MA_ENOMEM;
    float *k = malloc((n ? n : 1) * a->kf * sizeof(float));
    float *v = malloc((n ? n : 1) * a->vf * sizeof(float));
    uint32_t *cl = malloc((n ? n : 1) * sizeof *cl);
    size_t ncl = 0;
    if (!k || !v || !cl)
        goto done;
    if (a->n_masked && r->skip) {   /* one mask test per candidate; order (ascending) is kept */
        size_t kept = 0;
        for (size_t i = 0; i < n; i++)
            if (!skipped(a, ids[i], r->skip))
                ids[kept++] = ids[i];
        n = kept;
    }
    rc = MA_EEMPTY;
    if (n == 0)
        goto done;
    if ((rc = gather_ids(a, ids, n, k, v, cl, &ncl)) != 0)
        goto done;
    ma_attn_seg seg = {.k = k, .v = v, .n = n, .first = 0, .ids = ids};
    ma_attn_best best;
    rc = ma_attn_mass(&seg, 1, a->H, a->d, a->dv, q, outside, mass_in_output, r->v, &best);
    if (rc)
        goto done;
    uint32_t *shrunk = realloc(cl, (ncl ? ncl : 1) * sizeof *cl);
    if (shrunk)
        cl = shrunk;
    fill_result(r, &best, cl, ncl, scored);
    cl = NULL;
done:
    free(k);
    free(v);
    free(cl);
    return rc;
}

static int read_index(const ma_archive *a, const float *q, int topk, ma_read_result *r)
{
    size_t budget, n = 0;
    uint64_t scored = 0;
    int nprobe = index_budget(a, topk, &budget);
    uint64_t *ids = malloc(ma_ivf_ids_cap(a->ivf, budget ? budget : 1) * sizeof *ids);
    double *outside = malloc((size_t)a->H * sizeof *outside);
    int rc = MA_ENOMEM;
    if (ids && outside && (rc = ma_ivf_search_mass(a->ivf, q, 1, nprobe, budget, a->adaptive ? MA_IVF_ADAPTIVE : 0,
                                                   ids, &n, &scored, outside)) == 0)
        rc = attend_ids(a, q, ids, n, scored, outside, r);
    free(ids);
    free(outside);
    return rc;
}

int ma_archive_read_sparse_batch(const ma_archive *a, const float *Q, size_t nq, int topk, ma_read_result *r)
{
    if (a->length == 0)
        return MA_ENOTFOUND;
    if (topk <= 0)
        topk = a->topk;
    if (a->selector != MA_SELECTOR_INDEX || nq < 2) {
        for (size_t i = 0; i < nq; i++) {
            int rc = ma_archive_read_sparse(a, Q + i * a->kf, topk, &r[i]);
            if (rc) {
                for (size_t j = 0; j < i; j++)
                    ma_read_result_clear(&r[j]);
                return rc;
            }
        }
        return 0;
    }
    size_t budget, done = 0;
    int nprobe = index_budget(a, topk, &budget), rc = MA_ENOMEM;
    const size_t cap = ma_ivf_ids_cap(a->ivf, budget ? budget : 1);
    uint64_t *ids = malloc(nq * cap * sizeof *ids), *scored = malloc(nq * sizeof *scored);
    size_t *n = malloc(nq * sizeof *n);
    double *outside = malloc(nq * (size_t)a->H * sizeof *outside);
    if (!ids || !scored || !n || !outside)
        goto fail;
    if ((rc = ma_ivf_search_mass(a->ivf, Q, nq, nprobe, budget ? budget : 1, a->adaptive ? MA_IVF_ADAPTIVE : 0, ids,
                                 n, scored, outside)) != 0)
        goto fail;
    for (; done < nq; done++)
        if ((rc = attend_ids(a, Q + done * a->kf, ids + done * cap, n[done], scored[done],
                             outside + done * (size_t)a->H, &r[done])) != 0)
            goto fail;
    free(ids);
    free(scored);
    free(n);
    free(outside);
    return 0;
fail:
    for (size_t j = 0; j < done; j++)
        ma_read_result_clear(&r[j]);
    free(ids);
    free(scored);
    free(n);
    free(outside);
    return rc;
}

int ma_archive_read_sparse(const ma_archive *a, const float *q, int topk, ma_read_result *r)
{
    if (a->length == 0)
        return MA_EEMPTY;
    if (topk <= 0)
        topk = a->topk;
    if (a->selector == MA_SELECTOR_INDEX)
        return read_index(a, q, topk, r);
    size_t k = (size_t)topk < a->nchunks ? (size_t)topk : a->nchunks;
    uint32_t *cl;
    size_t ncl;
    int rc = select_chunks(a, q, k, &cl, &ncl);
    if (rc)
        return rc;
    return attend_chunks(a, q, cl, ncl, 0, a->length, r);
}

/* ---- memory ---------------------------------------------------------------------------------- */

size_t ma_archive_bytes(const ma_archive *a)
{
    size_t b = sizeof *a + a->ch_alloc * sizeof(chunk) + a->kf * sizeof(double) + a->owned_bytes;
    for (int i = 0; i < 3; i++)
        b += a->sum_alloc[i] * a->kf * sizeof(float);
    if (a->ivf)
        b += ma_ivf_bytes(a->ivf);
    if (a->cache) {
        pthread_mutex_lock(&a->cache->mu);
        b += sizeof *a->cache + a->cache->alloc * sizeof(centry *) + a->cache->bytes;
        pthread_mutex_unlock(&a->cache->mu);
    }
    return b;
}

size_t ma_archive_footprint(const ma_params *p, size_t cache_chunks)
{
    const size_t kf = (size_t)p->heads * (size_t)p->dim, vf = (size_t)p->heads * (size_t)p->value_dim;
    const size_t chunk_data = (size_t)p->chunk * (kf + vf) * sizeof(float);
    size_t b = sizeof(ma_archive) + kf * sizeof(double) + 16 * sizeof(chunk) + chunk_data;
    if (p->selector == MA_SELECTOR_CHUNKS)
        b += 3 * 16 * kf * sizeof(float);
    if (p->selector == MA_SELECTOR_INDEX)
        b += ma_ivf_footprint(p->heads, p->dim);
    if (cache_chunks) {
        size_t alloc = 8;
        while (alloc < cache_chunks)
            alloc *= 2;
        b += sizeof(ccache) + alloc * sizeof(centry *) + cache_chunks * (chunk_data + sizeof(centry));
    }
    return b;
}

size_t ma_archive_bytes_total(const ma_archive *a)
{
    return (size_t)a->length * (a->kf + a->vf) * sizeof(float);
}

/* ---- paging ---------------------------------------------------------------------------------- */

int ma_archive_set_source(ma_archive *a, ma_chunk_source src, size_t cache_chunks)
{
    if (!src.load || cache_chunks < 1)
        return MA_EINVAL;
    if (!a->cache) {
        ccache *cc = calloc(1, sizeof *cc);
        if (!cc)
            return MA_ENOMEM;
        if (pthread_mutex_init(&cc->mu, NULL) != 0) {
            free(cc);
            return MA_ENOMEM;
        }
        if (pthread_cond_init(&cc->cv, NULL) != 0) {
            pthread_mutex_destroy(&cc->mu);
            free(cc);
            return MA_ENOMEM;
        }
        a->cache = cc;
    } else {
        /* A new source may serve other bytes: drop what the old one loaded (no reader runs now). */
        while (a->cache->n > 0) {
            a->cache->bytes -= entry_bytes(a);
            entry_remove(a->cache, a->cache->e[0]);
        }
    }
    a->cache->cap = cache_chunks;
    a->src = src;
    a->has_src = true;
    return 0;
}

void ma_archive_set_event_loader(ma_archive *a, ma_event_loader fn)
{
    a->load_events = fn;
}

void ma_archive_release(ma_archive *a)
{
    if (!a->has_src)
        return;
    for (uint32_t c = 0; c < a->nchunks; c++) {
        chunk *ch = &a->ch[c];
        if (ch->k && ch->n == (uint32_t)a->C) {
            a->owned_bytes -= (size_t)ch->cap * (a->kf + a->vf) * sizeof(float);
            free(ch->k);
            free(ch->v);
            ch->k = ch->v = NULL;
            ch->cap = 0;
        }
    }
}

/* ---- meta serialisation ---------------------------------------------------------------------- */

/* A core/blob.h blob of kind "ARCM": section "SHAP" v1 (u32 H, d, dv, C, selector), then for the index
 * selector section "INDX" v1 whose body is the index's own blob (ma_ivf_serialize). No per-event or
 * per-chunk data: the rest is recomputed from the chunks at restore.
 * Legacy format (read, never written): magic "MAARCHV\0", u32 version 2, u32 0x01020304 (host order: the
 * reader accepts only the little-endian bytes), the SHAP fields, u64 index blob length, index blob,
 * u64 FNV-1a 64 of everything before. */
#define LEGACY_MAGIC   "MAARCHV\0"
#define LEGACY_VERSION 2u
#define LEGACY_ENDIAN  0x01020304u
#define BLOB_KIND      MA_BLOB_TAG("ARCM")

uint64_t ma_archive_meta_generation(const ma_archive *a)
{
    return a->ivf ? ma_ivf_builds(a->ivf) : 0;
}

int ma_archive_serialize_meta(const ma_archive *a, void **buf, size_t *len)
{
    void *ivf = NULL;
    size_t ivf_len = 0;
    if (a->ivf && ma_ivf_serialize(a->ivf, &ivf, &ivf_len) != 0)
        return MA_ENOMEM;
    ma_blob_writer w;
    ma_blob_begin(&w, BLOB_KIND);
    ma_blob_section_begin(&w, MA_BLOB_TAG("SHAP"), 1);
    ma_blob_put_u32(&w, (uint32_t)a->H);
    ma_blob_put_u32(&w, (uint32_t)a->d);
    ma_blob_put_u32(&w, (uint32_t)a->dv);
    ma_blob_put_u32(&w, (uint32_t)a->C);
    ma_blob_put_u32(&w, (uint32_t)a->selector);
    ma_blob_section_end(&w);
    if (a->ivf) {
        ma_blob_section_begin(&w, MA_BLOB_TAG("INDX"), 1);
        ma_blob_put_bytes(&w, ivf, ivf_len);
        ma_blob_section_end(&w);
    }
    free(ivf);
    return ma_blob_finish(&w, buf, len);
}

/* Opens either format: shape reads the SHAP fields; *ivf, *ivf_len the index blob (NULL, 0 if none). */
static int open_meta(const void *buf, size_t len, ma_blob_reader *shape, const void **ivf, size_t *ivf_len)
{
    ma_blob_reader r, x;
    *ivf = NULL;
    *ivf_len = 0;
    if (ma_blob_is_blob(buf, len)) {
        if (ma_blob_open(&r, buf, len, BLOB_KIND) || ma_blob_section(&r, MA_BLOB_TAG("SHAP"), 1, shape))
            return MA_ECORRUPT;
        if (ma_blob_remaining(&r)) {
            if (ma_blob_section(&r, MA_BLOB_TAG("INDX"), 1, &x) || !x.len)
                return MA_ECORRUPT;
            *ivf_len = x.len;
            *ivf = ma_blob_take(&x, x.len);
        }
        return ma_blob_done(&r);
    }
    const unsigned char *b = buf;
    if (len < 8 + 8 || memcmp(b, LEGACY_MAGIC, 8) != 0)
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, b + len - 8, 8);
    if (ma_blob_get_u64(&r) != ma_fnv1a64(b, len - 8))
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, b + 8, len - 16);
    if (ma_blob_get_u32(&r) != LEGACY_VERSION || ma_blob_get_u32(&r) != LEGACY_ENDIAN)
        return MA_ECORRUPT;
    ma_blob_reader_raw(shape, ma_blob_take(&r, 5 * 4), 5 * 4);
    uint64_t n = ma_blob_get_u64(&r);
    if (r.bad || n != ma_blob_remaining(&r))
        return MA_ECORRUPT;
    *ivf_len = (size_t)n;
    *ivf = n ? ma_blob_take(&r, (size_t)n) : NULL;
    return 0;
}

/* Chunk c's summary from its n keys, with the same arithmetic as ma_archive_append (running double sum
 * in event order, left in tail_sum). */
static void summarise(ma_archive *a, uint32_t c, const float *k, uint32_t n)
{
    float *mn = a->mn + (size_t)c * a->kf, *mx = a->mx + (size_t)c * a->kf, *mean = a->mean + (size_t)c * a->kf;
    memset(a->tail_sum, 0, a->kf * sizeof(double));
    memcpy(mn, k, a->kf * sizeof(float));
    memcpy(mx, k, a->kf * sizeof(float));
    for (uint32_t i = 0; i < n; i++) {
        const float *ki = k + (size_t)i * a->kf;
        for (size_t j = 0; j < a->kf; j++) {
            a->tail_sum[j] += ki[j];
            if (ki[j] < mn[j])
                mn[j] = ki[j];
            if (ki[j] > mx[j])
                mx[j] = ki[j];
        }
    }
    for (size_t j = 0; j < a->kf; j++)
        mean[j] = (float)(a->tail_sum[j] / n);
}

int ma_archive_restore_meta(const ma_params *p, const ma_archive_saved *from, ma_archive **out)
{
    if (!p || !from || !from->meta || !out || !from->chunks.load || from->cache_chunks < 1 ||
        ma_params_validate(p, NULL, 0) != 0)
        return MA_EINVAL;
    const void *buf = from->meta;
    const size_t len = from->meta_len, cache_chunks = from->cache_chunks;
    const uint64_t length = from->length;
    const ma_chunk_source src = from->chunks;
    const ma_ivf_rows *rows = from->rows;
    ma_blob_reader shape;
    const void *ivf;
    size_t ivf_len;
    ma_archive *a = NULL;
    float *tk = NULL, *tv = NULL;
    int rc = MA_ECORRUPT;
    if (open_meta(buf, len, &shape, &ivf, &ivf_len))
        goto fail;
    uint32_t H = ma_blob_get_u32(&shape), d = ma_blob_get_u32(&shape), dv = ma_blob_get_u32(&shape),
             C = ma_blob_get_u32(&shape), sel = ma_blob_get_u32(&shape);
    if (ma_blob_done(&shape) || H != (uint32_t)p->heads || d != (uint32_t)p->dim ||
        dv != (uint32_t)p->value_dim || C != (uint32_t)p->chunk || sel != (uint32_t)p->selector ||
        (ivf_len != 0) != (p->selector == MA_SELECTOR_INDEX))
        goto fail;
    uint64_t nc64 = (length + C - 1) / C;
    if (nc64 > UINT32_MAX) {
        rc = MA_EINVAL;
        goto fail;
    }
    uint32_t nchunks = (uint32_t)nc64;

    /* The length comes from another blob (the session passes the backbone's step count): before sizing
     * the tables by it, the source must hold the last chunk it implies, so a damaged length fails here
     * with the source's error rather than in an allocation of gigabytes (found by tests/fuzz). */
    if (nchunks) {
        size_t last = (size_t)(length - (uint64_t)(nchunks - 1) * C);
        rc = MA_ENOMEM;
        tk = malloc(last * (size_t)H * d * sizeof(float));
        tv = malloc(last * (size_t)H * dv * sizeof(float));
        if (!tk || !tv || (rc = src.load(src.ctx, nchunks - 1, tk, tv, last)) != 0)
            goto fail;
        free(tk);
        free(tv);
        tk = tv = NULL;
    }

    rc = MA_ENOMEM;
    a = alloc_archive(p);
    if (!a || grow_tables(a, nchunks ? nchunks : 1) != 0)
        goto fail;
    if (ivf_len && (rc = ma_ivf_restore(a->H, a->d, ivf, (size_t)ivf_len, &a->ivf)) != 0)
        goto fail;
    a->length = length;
    a->nchunks = nchunks;
    for (uint32_t c = 0; c < nchunks; c++)
        a->ch[c].n = (uint32_t)(c + 1 < nchunks ? C : length - (uint64_t)c * C);
    rc = ma_archive_set_source(a, src, cache_chunks);
    if (rc)
        goto fail;
    /* The partial tail stays owned (appends continue it). */
    if (nchunks && a->ch[nchunks - 1].n < C) {
        chunk *t = &a->ch[nchunks - 1];
        if ((rc = reserve_chunk(a, nchunks - 1, t->n)) != 0 || (rc = src.load(src.ctx, nchunks - 1, t->k, t->v, t->n)))
            goto fail;
    }
    /* The index: its lists from the stored rows (the blocks without one encoded from keys streamed from
     * the source), the pending keys from the last chunks. With rows, the archive is managed: its caller
     * persists rows and runs builds. */
    if (a->ivf) {
        if (rows) {
            a->managed = true;
            ma_ivf_keep_rows(a->ivf, 1);
        }
        if ((rc = ma_ivf_restore_lists(a->ivf, length, rows, load_keys, a)) != 0)
            goto fail;
    }
    /* Summaries: every chunk streamed once, in order, straight from the source. */
    rc = MA_ENOMEM;
    tk = malloc((size_t)C * a->kf * sizeof(float));
    tv = malloc((size_t)C * a->vf * sizeof(float));
    if (!tk || !tv)
        goto fail;
    for (uint32_t c = 0; a->sums && c < nchunks; c++) {
        const chunk *ch = &a->ch[c];
        const float *k = ch->k;
        if (!k) {
            if ((rc = src.load(src.ctx, c, tk, tv, ch->n)) != 0)
                goto fail;
            k = tk;
        }
        summarise(a, c, k, ch->n);
    }
    free(tk);
    free(tv);
    *out = a;
    return 0;
fail:
    free(tk);
    free(tv);
    ma_archive_destroy(a);
    return rc;
}

/* ---- index builds and rows (a managing caller: registry/registry.c) ------------------------------- */

void ma_archive_set_managed(ma_archive *a, bool on)
{
    a->managed = on;
    if (a->ivf)
        ma_ivf_keep_rows(a->ivf, on);
}

bool ma_archive_index_due(const ma_archive *a, uint64_t *point, uint32_t *build_no)
{
    return a->ivf && ma_ivf_build_due(a->ivf, point, build_no);
}

void ma_archive_index_state(const ma_archive *a, ma_index_state *st)
{
    memset(st, 0, sizeof *st);
    if (!a->ivf)
        return;
    st->build = ma_ivf_builds(a->ivf);
    st->nlist = ma_ivf_nlist(a->ivf);
    st->events = ma_ivf_count(a->ivf);
}

int ma_archive_index_adopt(ma_archive *a, ma_ivf_build *b, const ma_ivf_rows *rows)
{
    if (!a->ivf)
        return MA_EINVAL;
    return ma_ivf_adopt(a->ivf, b, rows, load_keys, a, a->managed);
}

int ma_archive_index_swap(ma_archive *a, ma_ivf *x, ma_ivf **old)
{
    if (!a->ivf || !x || !old || ma_ivf_builds(x) <= ma_ivf_builds(a->ivf) || ma_ivf_count(x) > a->length)
        return MA_EINVAL;
    float *k = NULL;
    int rc = 0;
    for (uint64_t i = ma_ivf_count(x); !rc && i < a->length;) {
        size_t n = a->length - i < MA_IVF_BLOCK ? (size_t)(a->length - i) : MA_IVF_BLOCK;
        if (!k && !(k = malloc((size_t)MA_IVF_BLOCK * a->kf * sizeof(float))))
            rc = MA_ENOMEM;
        if (!rc)
            rc = load_keys(a, i, n, k);
        if (!rc)
            rc = ma_ivf_add(x, n, k);
        i += n;
    }
    free(k);
    if (rc)
        return rc;
    ma_ivf_keep_rows(x, a->managed);
    *old = a->ivf;
    a->ivf = x;
    return 0;
}

size_t ma_archive_index_rows(const ma_archive *a, uint32_t *build, uint64_t *first, const void **lists,
                             const void **codes)
{
    if (!a->ivf || !a->managed)
        return 0;
    return ma_ivf_rows_pending(a->ivf, build, first, lists, codes);
}

const ma_ivf *ma_archive_index(const ma_archive *a)
{
    return a->ivf;
}

int ma_archive_index_probes(const ma_archive *a, int topk, size_t *max_ids)
{
    size_t budget;
    int np = index_budget(a, topk > 0 ? topk : a->topk, &budget);
    *max_ids = budget ? budget : 1;
    return np;
}

size_t ma_archive_index_row_lists_bytes(const ma_archive *a)
{
    return a->ivf ? ma_ivf_row_lists_bytes(a->ivf) : (size_t)MA_IVF_BLOCK * 4;
}

void ma_archive_index_rows_done(ma_archive *a)
{
    if (a->ivf)
        ma_ivf_rows_done(a->ivf);
}
