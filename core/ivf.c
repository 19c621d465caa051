/*
 * core/ivf.c — inverted-file index over events' keys with spherical k-means (core/ivf.h).
 *
 * Data: nlist unit centroids (row-major nlist × D, D = H·d) and per list the ids and raw keys of its events,
 * contiguous, so a probe is one sgemv over the list. Before the first build there are no centroids and a
 * single list.
 *
 * k-means: training directions of a sample drawn by selection sampling (ordered, deterministic), initial
 * centroids a deterministic random subset, MA_IVF_ITERS Lloyd iterations with dot products from sgemm in
 * blocks, sums in double; an empty cluster is reseeded with a random training point. Then every event is
 * reassigned (sgemm in blocks over the old lists) and the new lists are filled in id order.
 *
 * Not here: no product quantisation (the lists keep exact keys: a probe scores exactly), no removal of
 * events (the archive only appends), no background rebuild (the add that crosses the threshold pays it).
 */
#include "core/ivf.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/attn.h"
#include "core/error.h"

#define BLOCK 1024   /* rows per sgemm block in assignment */

typedef struct {
    uint64_t *ids;
    float *keys;     /* n × D raw keys */
    size_t n, cap;
} ivlist;

struct ma_ivf {
    int H, d;
    size_t D;
    uint64_t count;
    uint32_t nlist;
    float *cent;     /* nlist × D unit rows, NULL before the first build */
    ivlist *lists;
    uint64_t built_at;
    uint32_t builds;
};

/* ---- helpers --------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint64_t below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix(s) * n) >> 64);
}

/* The clustering direction of a key: heads normalised one by one, concatenated, scaled by 1/sqrt(H). */
static void direction(const ma_ivf *x, const float *k, float *out)
{
    const double hs = 1.0 / sqrt((double)x->H);
    for (int h = 0; h < x->H; h++) {
        const float *kh = k + (size_t)h * x->d;
        double nn = 0;
        for (int j = 0; j < x->d; j++)
            nn += (double)kh[j] * kh[j];
        double f = nn > 0 ? hs / sqrt(nn) : 0;
        for (int j = 0; j < x->d; j++)
            out[(size_t)h * x->d + j] = (float)(kh[j] * f);
    }
}

/* Nearest centroid (largest dot product, first on ties) of each of n directions X (n × D) into a. */
static void nearest(const float *cent, uint32_t nlist, size_t D, const float *X, size_t n, float *S,
                    uint32_t *a)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)nlist, (int)D, 1.0f, X, (int)D, cent,
                (int)D, 0.0f, S, (int)nlist);
    for (size_t i = 0; i < n; i++) {
        const float *s = S + i * nlist;
        /* The maximum with 8 independent lanes (the compiler turns them into one vector max), then the
         * first index holding it: the same answer as a scalar scan, several times faster at large nlist. */
        float m8[8];
        for (int l = 0; l < 8; l++)
            m8[l] = s[0];
        uint32_t c = 0;
        for (; c + 8 <= nlist; c += 8)
            for (int l = 0; l < 8; l++)
                m8[l] = s[c + l] > m8[l] ? s[c + l] : m8[l];
        float mx = m8[0];
        for (int l = 1; l < 8; l++)
            mx = m8[l] > mx ? m8[l] : mx;
        for (; c < nlist; c++)
            mx = s[c] > mx ? s[c] : mx;
        uint32_t best = 0;
        while (best < nlist && s[best] != mx)
            best++;
        a[i] = best < nlist ? best : 0;   /* only a NaN score (non-finite key) misses: list 0 */
    }
}

static int list_reserve(ivlist *l, size_t need, size_t D)
{
    if (l->cap >= need)
        return 0;
    size_t cap = l->cap ? l->cap * 2 : 16;
    if (cap < need)
        cap = need;
    uint64_t *ids = realloc(l->ids, cap * sizeof *ids);
    if (!ids)
        return MA_ENOMEM;
    l->ids = ids;
    float *keys = realloc(l->keys, cap * D * sizeof(float));
    if (!keys)
        return MA_ENOMEM;   /* ids merely larger; cap unchanged */
    l->keys = keys;
    l->cap = cap;
    return 0;
}

static void lists_free(ivlist *l, uint32_t n)
{
    if (!l)
        return;
    for (uint32_t i = 0; i < n; i++) {
        free(l[i].ids);
        free(l[i].keys);
    }
    free(l);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static ma_ivf *alloc_ivf(int H, int d)
{
    ma_ivf *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->H = H;
    x->d = d;
    x->D = (size_t)H * d;
    return x;
}

int ma_ivf_create(int H, int d, ma_ivf **out)
{
    if (H < 1 || d < 1 || !out)
        return MA_EINVAL;
    ma_ivf *x = alloc_ivf(H, d);
    if (!x)
        return MA_ENOMEM;
    x->nlist = 1;
    x->lists = calloc(1, sizeof *x->lists);
    if (!x->lists) {
        free(x);
        return MA_ENOMEM;
    }
    *out = x;
    return 0;
}

void ma_ivf_destroy(ma_ivf *x)
{
    if (!x)
        return;
    lists_free(x->lists, x->nlist);
    free(x->cent);
    free(x);
}

uint64_t ma_ivf_count(const ma_ivf *x)
{
    return x->count;
}

uint32_t ma_ivf_nlist(const ma_ivf *x)
{
    return x->nlist;
}

size_t ma_ivf_bytes(const ma_ivf *x)
{
    size_t b = sizeof *x + (size_t)x->nlist * sizeof(ivlist);
    if (x->cent)
        b += (size_t)x->nlist * x->D * sizeof(float);
    for (uint32_t i = 0; i < x->nlist; i++)
        b += x->lists[i].cap * (sizeof(uint64_t) + x->D * sizeof(float));
    return b;
}

/* ---- add ------------------------------------------------------------------------------------- */

int ma_ivf_add(ma_ivf *x, size_t n, const float *k)
{
    if (n == 0)
        return 0;
    int rc = MA_ENOMEM;
    uint32_t *asg = calloc(n, sizeof *asg);
    size_t *extra = calloc(x->nlist, sizeof *extra);
    float *X = NULL, *S = NULL;
    if (!asg || !extra)
        goto done;
    if (x->cent) {
        size_t bn = n < BLOCK ? n : BLOCK;
        X = malloc(bn * x->D * sizeof(float));
        S = malloc(bn * x->nlist * sizeof(float));
        if (!X || !S)
            goto done;
        for (size_t i0 = 0; i0 < n; i0 += bn) {
            size_t m = n - i0 < bn ? n - i0 : bn;
            for (size_t i = 0; i < m; i++)
                direction(x, k + (i0 + i) * x->D, X + i * x->D);
            nearest(x->cent, x->nlist, x->D, X, m, S, asg + i0);
        }
    }
    for (size_t i = 0; i < n; i++)
        extra[asg[i]]++;
    for (uint32_t c = 0; c < x->nlist; c++)
        if (extra[c] && list_reserve(&x->lists[c], x->lists[c].n + extra[c], x->D) != 0)
            goto done;
    for (size_t i = 0; i < n; i++) {
        ivlist *l = &x->lists[asg[i]];
        l->ids[l->n] = x->count + i;
        memcpy(l->keys + l->n * x->D, k + i * x->D, x->D * sizeof(float));
        l->n++;
    }
    x->count += n;
    rc = 0;
    if (x->count >= MA_IVF_MIN_BUILD && x->count >= 2 * x->built_at)
        (void)ma_ivf_rebuild(x);   /* on failure the old centroids stay valid; the next add retries */
done:
    free(asg);
    free(extra);
    free(X);
    free(S);
    return rc;
}

/* ---- rebuild --------------------------------------------------------------------------------- */

typedef struct {
    uint32_t list, pos;
} loc;

/* Lloyd iterations of spherical k-means on the m training directions X; cent (nlist × D) is initialised
 * here. */
static int kmeans(const ma_ivf *x, const float *X, size_t m, uint32_t nlist, float *cent, uint64_t *rng)
{
    const size_t D = x->D;
    int rc = MA_ENOMEM;
    size_t *perm = malloc(m * sizeof *perm);
    uint32_t *asg = malloc(m * sizeof *asg);
    size_t bn = m < BLOCK ? m : BLOCK;
    float *S = malloc(bn * nlist * sizeof(float));
    double *sum = malloc((size_t)nlist * D * sizeof(double));
    size_t *cnt = malloc(nlist * sizeof *cnt);
    if (!perm || !asg || !S || !sum || !cnt)
        goto done;

    /* Initial centroids: the first nlist of a random permutation of the training points. */
    for (size_t i = 0; i < m; i++)
        perm[i] = i;
    for (uint32_t c = 0; c < nlist; c++) {
        size_t j = c + (size_t)below(rng, m - c);
        size_t t = perm[c];
        perm[c] = perm[j];
        perm[j] = t;
        memcpy(cent + (size_t)c * D, X + perm[c] * D, D * sizeof(float));
    }

    for (int it = 0; it < MA_IVF_ITERS; it++) {
        for (size_t i0 = 0; i0 < m; i0 += bn) {
            size_t b = m - i0 < bn ? m - i0 : bn;
            nearest(cent, nlist, D, X + i0 * D, b, S, asg + i0);
        }
        memset(sum, 0, (size_t)nlist * D * sizeof(double));
        memset(cnt, 0, nlist * sizeof *cnt);
        for (size_t i = 0; i < m; i++) {
            double *s = sum + (size_t)asg[i] * D;
            const float *xi = X + i * D;
            for (size_t j = 0; j < D; j++)
                s[j] += xi[j];
            cnt[asg[i]]++;
        }
        for (uint32_t c = 0; c < nlist; c++) {
            float *ce = cent + (size_t)c * D;
            const double *s = sum + (size_t)c * D;
            double nn = 0;
            for (size_t j = 0; j < D; j++)
                nn += s[j] * s[j];
            if (cnt[c] == 0 || nn == 0) {
                /* Empty cluster: reseed with a random training point (it will take its neighbours). */
                memcpy(ce, X + (size_t)below(rng, m) * D, D * sizeof(float));
                continue;
            }
            double f = 1.0 / sqrt(nn);
            for (size_t j = 0; j < D; j++)
                ce[j] = (float)(s[j] * f);
        }
    }
    rc = 0;
done:
    free(perm);
    free(asg);
    free(S);
    free(sum);
    free(cnt);
    return rc;
}

int ma_ivf_rebuild(ma_ivf *x)
{
    const uint64_t T = x->count;
    if (T == 0)
        return 0;
    const size_t D = x->D;
    uint32_t nlist = (uint32_t)llround(sqrt((double)T));
    if (nlist < 1)
        nlist = 1;
    size_t m = (size_t)nlist * MA_IVF_TRAIN_PER_LIST;
    if (m > T)
        m = (size_t)T;

    int rc = MA_ENOMEM;
    loc *where = malloc(T * sizeof *where);
    uint32_t *asg = malloc(T * sizeof *asg);
    uint32_t *pos = malloc(T * sizeof *pos);
    float *X = malloc(m * D * sizeof(float));
    float *cent = malloc((size_t)nlist * D * sizeof(float));
    size_t bn = BLOCK;
    float *B = malloc(bn * D * sizeof(float));
    float *S = malloc(bn * nlist * sizeof(float));
    uint32_t *ba = malloc(bn * sizeof *ba);
    ivlist *nl = calloc(nlist, sizeof *nl);
    if (!where || !asg || !pos || !X || !cent || !B || !S || !ba || !nl)
        goto fail;

    for (uint32_t c = 0; c < x->nlist; c++)
        for (size_t i = 0; i < x->lists[c].n; i++)
            where[x->lists[c].ids[i]] = (loc){c, (uint32_t)i};

    /* Training sample: Knuth's selection sampling, m of T ids in increasing order. */
    uint64_t rng = 0x6d656d6174746e00ull ^ x->builds;
    for (uint64_t id = 0, got = 0; id < T && got < m; id++) {
        if (below(&rng, T - id) < m - got) {
            loc w = where[id];
            direction(x, x->lists[w.list].keys + (size_t)w.pos * D, X + got * D);
            got++;
        }
    }
    rc = kmeans(x, X, m, nlist, cent, &rng);
    if (rc)
        goto fail;
    rc = MA_ENOMEM;

    /* Reassign every event, list by list in blocks. */
    for (uint32_t c = 0; c < x->nlist; c++) {
        const ivlist *l = &x->lists[c];
        for (size_t i0 = 0; i0 < l->n; i0 += bn) {
            size_t b = l->n - i0 < bn ? l->n - i0 : bn;
            for (size_t i = 0; i < b; i++)
                direction(x, l->keys + (i0 + i) * D, B + i * D);
            nearest(cent, nlist, D, B, b, S, ba);
            for (size_t i = 0; i < b; i++)
                asg[l->ids[i0 + i]] = ba[i];
        }
    }
    /* New lists in id order: an event's position is the number of earlier ids in its list. */
    for (uint64_t id = 0; id < T; id++)
        pos[id] = (uint32_t)nl[asg[id]].n++;
    for (uint32_t c = 0; c < nlist; c++) {
        size_t n = nl[c].n;
        nl[c].n = 0;
        if (n && list_reserve(&nl[c], n, D) != 0)
            goto fail;
        nl[c].n = n;
    }
    for (uint32_t c = 0; c < x->nlist; c++) {
        const ivlist *l = &x->lists[c];
        for (size_t i = 0; i < l->n; i++) {
            uint64_t id = l->ids[i];
            ivlist *t = &nl[asg[id]];
            t->ids[pos[id]] = id;
            memcpy(t->keys + (size_t)pos[id] * D, l->keys + i * D, D * sizeof(float));
        }
    }

    lists_free(x->lists, x->nlist);
    free(x->cent);
    x->lists = nl;
    x->cent = cent;
    x->nlist = nlist;
    x->built_at = T;
    x->builds++;
    nl = NULL;
    cent = NULL;
    rc = 0;
fail:
    lists_free(nl, nlist);
    free(where);
    free(asg);
    free(pos);
    free(X);
    free(cent);
    free(B);
    free(S);
    free(ba);
    return rc;
}

/* ---- search ---------------------------------------------------------------------------------- */

/* LSD radix sort, 8 bits a pass, as many passes as the largest id needs (the picked ids are many and
 * small: a comparison sort was a third of a query's time). */
static int sort_ids(uint64_t *a, size_t n)
{
    uint64_t mx = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] > mx)
            mx = a[i];
    uint64_t *t = malloc((n ? n : 1) * sizeof *t);
    if (!t)
        return MA_ENOMEM;
    uint64_t *src = a, *dst = t;
    for (int shift = 0; shift < 64 && (mx >> shift) != 0; shift += 8) {
        size_t cnt[257] = {0};
        for (size_t i = 0; i < n; i++)
            cnt[((src[i] >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++)
            cnt[b + 1] += cnt[b];
        for (size_t i = 0; i < n; i++)
            dst[cnt[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *x = src;
        src = dst;
        dst = x;
    }
    if (src != a)
        memcpy(a, src, n * sizeof *a);
    free(t);
    return 0;
}

int ma_ivf_search(const ma_ivf *x, const float *q, int nprobe, size_t max_ids, uint64_t *ids, size_t *n_ids,
                  uint64_t *scored)
{
    const size_t D = x->D;
    int rc = MA_ENOMEM;
    size_t np = nprobe < 1 ? 1 : (size_t)nprobe;
    if (np > x->nlist)
        np = x->nlist;
    float *qd = malloc(D * sizeof(float));
    float *cs = malloc((size_t)x->nlist * sizeof(float));
    size_t *probe = malloc(np * sizeof *probe);
    float *s = NULL;
    size_t *pick = NULL;
    if (!qd || !cs || !probe)
        goto done;

    size_t got = 0;
    if (x->cent) {
        direction(x, q, qd);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)x->nlist, (int)D, 1.0f, x->cent, (int)D, qd, 1, 0.0f, cs, 1);
        /* An empty list (a centroid that won no event at reassignment) is never worth a probe. */
        for (uint32_t c = 0; c < x->nlist; c++)
            if (x->lists[c].n == 0)
                cs[c] = -INFINITY;
        if (ma_topk(cs, x->nlist, np, probe, &got) != 0)
            goto done;
    } else {
        probe[0] = 0;
        got = 1;
    }

    size_t total = 0;
    for (size_t i = 0; i < got; i++)
        total += x->lists[probe[i]].n;
    s = malloc((total ? total : 1) * sizeof(float));
    size_t keep = max_ids < total ? max_ids : total;
    pick = malloc((keep ? keep : 1) * sizeof *pick);
    if (!s || !pick)
        goto done;
    size_t off = 0;
    for (size_t i = 0; i < got; i++) {
        const ivlist *l = &x->lists[probe[i]];
        if (l->n)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)l->n, (int)D, 1.0f, l->keys, (int)D, q, 1, 0.0f, s + off, 1);
        off += l->n;
    }
    size_t n = 0;
    if (ma_topk(s, total, keep, pick, &n) != 0)
        goto done;
    /* Positions -> ids: walk the probed lists once (pick is ascending). */
    size_t li = 0, base = 0;
    for (size_t i = 0; i < n; i++) {
        while (pick[i] >= base + x->lists[probe[li]].n) {
            base += x->lists[probe[li]].n;
            li++;
        }
        ids[i] = x->lists[probe[li]].ids[pick[i] - base];
    }
    if (sort_ids(ids, n) != 0)
        goto done;
    *n_ids = n;
    if (scored)
        *scored = total;
    rc = 0;
done:
    free(qd);
    free(cs);
    free(probe);
    free(s);
    free(pick);
    return rc;
}

/* ---- serialisation --------------------------------------------------------------------------- */

#define IVF_MAGIC   "MAIVFV1\0"
#define IVF_VERSION 1u

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Layout: magic[8] version H d nlist builds (u32) count built_at (u64) has_cent (u32)
 *         centroids (nlist·D f32, if has_cent) list-of-event (count u32) checksum (u64, FNV-1a). */
int ma_ivf_serialize(const ma_ivf *x, void **buf, size_t *len)
{
    const size_t cent = x->cent ? (size_t)x->nlist * x->D * sizeof(float) : 0;
    const size_t n = 8 + 5 * 4 + 2 * 8 + 4 + cent + (size_t)x->count * 4 + 8;
    unsigned char *b = malloc(n), *p = b;
    if (!b)
        return MA_ENOMEM;
    uint32_t u[5] = {IVF_VERSION, (uint32_t)x->H, (uint32_t)x->d, x->nlist, x->builds};
    uint64_t w[2] = {x->count, x->built_at};
    uint32_t has = x->cent != NULL;
    memcpy(p, IVF_MAGIC, 8), p += 8;
    memcpy(p, u, sizeof u), p += sizeof u;
    memcpy(p, w, sizeof w), p += sizeof w;
    memcpy(p, &has, 4), p += 4;
    if (cent)
        memcpy(p, x->cent, cent), p += cent;
    for (uint32_t c = 0; c < x->nlist; c++)
        for (size_t i = 0; i < x->lists[c].n; i++)
            memcpy(p + x->lists[c].ids[i] * 4, &c, 4);
    p += (size_t)x->count * 4;
    uint64_t h = fnv1a(b, (size_t)(p - b));
    memcpy(p, &h, 8);
    *buf = b;
    *len = n;
    return 0;
}

int ma_ivf_restore(int H, int d, const void *buf, size_t len,
                   int (*load)(void *ctx, uint64_t first, size_t n, float *k), void *ctx, size_t batch,
                   ma_ivf **out)
{
    const unsigned char *b = buf;
    const size_t head = 8 + 5 * 4 + 2 * 8 + 4;
    if (!buf || !load || batch == 0 || !out)
        return MA_EINVAL;
    if (len < head + 8 || memcmp(b, IVF_MAGIC, 8) != 0)
        return MA_ECORRUPT;
    uint64_t h;
    memcpy(&h, b + len - 8, 8);
    if (h != fnv1a(b, len - 8))
        return MA_ECORRUPT;
    uint32_t u[5];
    uint64_t w[2];
    uint32_t has;
    memcpy(u, b + 8, sizeof u);
    memcpy(w, b + 8 + sizeof u, sizeof w);
    memcpy(&has, b + 8 + sizeof u + sizeof w, 4);
    const uint32_t nlist = u[3];
    const uint64_t count = w[0];
    if (u[0] != IVF_VERSION || u[1] != (uint32_t)H || u[2] != (uint32_t)d || nlist < 1 || has > 1 ||
        (!has && nlist != 1) || w[1] > count)
        return MA_ECORRUPT;
    const size_t D = (size_t)H * d;
    const size_t cent = has ? (size_t)nlist * D * sizeof(float) : 0;
    if (nlist > len / D || count > len / 4 || len != head + cent + (size_t)count * 4 + 8)
        return MA_ECORRUPT;
    const unsigned char *lists = b + head + cent;

    int rc = MA_ENOMEM;
    ma_ivf *x = alloc_ivf(H, d);
    size_t *sz = calloc(nlist, sizeof *sz);
    float *k = malloc(batch * D * sizeof(float));
    if (!x || !sz || !k)
        goto fail;
    x->nlist = nlist;
    x->builds = u[4];
    x->built_at = w[1];
    x->lists = calloc(nlist, sizeof *x->lists);
    if (!x->lists)
        goto fail;
    if (has) {
        x->cent = malloc(cent);
        if (!x->cent)
            goto fail;
        memcpy(x->cent, b + head, cent);
    }
    for (uint64_t id = 0; id < count; id++) {
        uint32_t c;
        memcpy(&c, lists + id * 4, 4);
        if (c >= nlist) {
            rc = MA_ECORRUPT;
            goto fail;
        }
        sz[c]++;
    }
    for (uint32_t c = 0; c < nlist; c++)
        if (sz[c] && list_reserve(&x->lists[c], sz[c], D) != 0)
            goto fail;
    /* Refill in id order: the lists come back exactly as the original kept them. */
    for (uint64_t first = 0; first < count; first += batch) {
        size_t n = count - first < batch ? (size_t)(count - first) : batch;
        rc = load(ctx, first, n, k);
        if (rc)
            goto fail;
        for (size_t i = 0; i < n; i++) {
            uint32_t c;
            memcpy(&c, lists + (first + i) * 4, 4);
            ivlist *l = &x->lists[c];
            l->ids[l->n] = first + i;
            memcpy(l->keys + l->n * D, k + i * D, D * sizeof(float));
            l->n++;
        }
    }
    x->count = count;
    free(sz);
    free(k);
    *out = x;
    return 0;
fail:
    free(sz);
    free(k);
    ma_ivf_destroy(x);
    return rc;
}
