/*
 * core/ivf.c — inverted-file index over events' keys: spherical k-means, lists of ids, residual sign codes
 * and 4-bit codes, a two-stage search (core/ivf.h; docs/ARCHIVE.md).
 *
 * Data: nlist unit centroids (row-major nlist × D, D = H·d), each list's key sum (double) and mean key
 * (float, what probes are ranked by), and per list, in id order and in fixed blocks of LB events: per
 * event and head the split k_h = alpha·u_h + r_h (u_h the unit direction of the centroid's head slice),
 * alpha (float), r_h's sign code (ceil(d/8) bytes, stored transposed in groups of G events) and its factor
 * |r|²/sum|r_j| (float) — the scan part of a block — and the id (u32), r_h's 4-bit scale (float) and
 * 4-bit code (ceil(d/2) bytes: low nibble dimension j, high nibble j + hb) — the other part. Events of the
 * incomplete last block of MA_IVF_BLOCK ids are pending: raw keys, scored exactly. Before the first build
 * there are no lists (nlist = 0) and every event is pending.
 *
 * Search: the lists of the largest q . mean are probed; stage 1 scores every probed event from its sign
 * code, alpha·(q_h . u_h) + f·(q_h . sign(r_h)), with 16-entry byte tables per 4 dimensions (vpshufb, 32
 * events at a time) and keeps the best MA_IVF_RERANK·max_ids; stage 2 re-scores those from their 4-bit
 * codes, alpha·(q_h . u_h) + qscale·kscale·(sum_j q8_j u_j − 8·sum_j q8_j) (vpmaddubsw), and keeps max_ids.
 * Both stages have an AVX2 kernel (target attribute, chosen at run time) and a portable one computing the
 * same integers and the same float operations in the same order: answers do not depend on the kernel.
 *
 * k-means: training directions of a sample of events [0, P) drawn by selection sampling (ordered,
 * deterministic, seeded from the build point P), initial centroids a deterministic random subset,
 * MA_IVF_ITERS Lloyd iterations with dot products from sgemm in blocks, sums in double; an empty cluster
 * is reseeded with a random training point.
 *
 * Builds in steps: train (k-means, no index needed), encode (rows of complete blocks: list ids and
 * records), adopt (the index takes the centroids and lists made of stored rows plus blocks encoded from
 * keys, in two passes: sizes, then records into lists laid out exactly). An event's record is a pure
 * function of its key and its list's centroid and a list's mean key is the mean of what its records
 * stand for, so an index made of persisted rows is the one that appended the keys, bit for bit.
 *
 * Many heads (H > 1, issue 15): per-head mode, H indexes of one head (sub[h]) behind this handle, each
 * with its own k-means, lists and codes; the steps above run per head through adapters that slice the
 * heads' keys and rows; a search answers the union of the heads' candidates. The shared layout (one index
 * over the concatenated directions) stays for H = 1 and for indexes of H > 1 stored before, until their
 * next build makes them per-head (section "per-head indexes" below).
 *
 * Memory: blocks come from arenas (huge pages when large); after a build or a load the blocks are laid out
 * list by list so a scan streams a list's sign codes. A low-memory adopt frees the old lists before it
 * allocates the new ones.
 *
 * Not here: no exact re-ranking (the archive attends the candidates' exact keys), no removal of events
 * (the archive only appends), no threads (the registry runs the steps of a background build,
 * registry/registry.c), no I/O (rows come and go through the caller's callbacks).
 */
#include "core/ivf.h"

#include <cblas.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "core/attn.h"
#include "core/blob.h"
#include "core/error.h"
#include "core/hash.h"

/* The AVX2 kernels are compiled for x86-64 whatever the build's -march (target attribute) and chosen at
 * run time, so every build, the sanitizer build of the tests included, runs and checks them. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_KERNELS 1
#define AVX2_FN __attribute__((target("avx2")))
#endif

#define BLOCK MA_IVF_BLOCK
/* The pending buffer starts this small and doubles: a session of a few events must not pay for a whole
 * block of raw keys (BLOCK·H·d floats: 256 KiB at H = 1, d = 64, 256 MiB at H = 64, d = 1024). */
#define PEND_MIN 16

/* A list is a sequence of fixed-size blocks of LB events, each one allocation holding ids[LB] (u32),
 * scales[LB·H] (float) and codes[LB·H·hb]. Fixed-size blocks, never reallocated: growing lists (online or
 * at restore) leave no holes in the heap, and the slack is under one block per list. */
#define LB 32
/* Sign codes are stored in groups of G events (transposed: one byte position of G events is contiguous),
 * the unit of the table-lookup kernel. LB is a multiple of G. */
#define G 32
/* Where event e of a group keeps its sign-code bytes within a row of G bytes: events 0..15 at the even
 * positions, 16..31 at the odd ones, so the AVX2 kernel's two 16-bit accumulators (even and odd bytes)
 * hold events 0..15 and 16..31 in order. */
static size_t gpos(size_t e)
{
    return e < G / 2 ? 2 * e : 2 * (e - G / 2) + 1;
}

/* The stage-1 buffer holds up to BUF_FACTOR·keep candidates before it is cut back to the best keep. */
#ifndef BUF_FACTOR
#define BUF_FACTOR 4
#endif

/* Lines of each block's group records prefetched (the hardware prefetcher streams the rest). */
#ifndef PF_LINES
#define PF_LINES 64
#endif

/* Lists prefetched ahead of the scan. */
#ifndef PF_AHEAD
#define PF_AHEAD 2
#endif

/* Tests and benches: the portable kernels in place of the AVX2 ones (same integers, so same answers). */
static int use_generic;
/* Tests and benches: new indexes and builds of H > 1 heads in the shared layout of before issue 15. */
static int legacy_shared;

typedef struct {
    unsigned char **blk;   /* the blocks' scan parts (group records) */
    unsigned char **rst;   /* their other parts (ids, scales, 4-bit codes) */
    size_t nblk, blk_alloc;
    size_t n;
    double *ksum;          /* D + H: the sums of the list's records' residuals (D) and alphas (H), in id
                              order: its mean key (list_mean) ranks the list */
} ivlist;

/* Where blocks come from: arenas of growing size (16 blocks, doubling up to ARENA_BYTES), the large ones
 * aligned to and advised as transparent huge pages, blocks carved in order and reused through a free list.
 * A scan visits the probed lists' blocks, scattered over the index: with 4 KiB pages every block was a TLB
 * miss (a two-level page walk in a VM), which bound the scan; 2 MiB pages cover the index (~110 MiB at 2M
 * events) with a few dozen TLB entries. The lists of one build share one pool; a rebuild makes a new pool
 * and frees the old one with the old lists. */
#define ARENA_BYTES ((size_t)2 << 20)
typedef struct {
    unsigned char **arena;
    size_t narena, aalloc;
    unsigned char *cur;     /* next unused block of the newest arena */
    size_t left;            /* blocks left there */
    size_t next;            /* blocks of the next arena */
    unsigned char *freel;   /* returned blocks, linked through their first bytes */
    size_t bytes;           /* held in arenas */
} blkpool;

struct ma_ivf {
    int H, d;
    size_t D, hb, cb;  /* floats per key; code bytes per head; code bytes per event */
    size_t nbp;        /* sign-code bytes per head and event: ceil(d/8) (two nibbles of 4 dimensions each) */
    size_t scan_bytes; /* a block's scan part: LB/G group records */
    size_t rest_bytes; /* a block's other part: ids, scales, 4-bit codes */
    uint64_t count;
    uint64_t assigned; /* events [0, assigned) are in lists (a multiple of BLOCK); the rest pending */
    uint32_t nlist;    /* 0 before the first build */
    float *cent;       /* nlist × D unit rows */
    float *kmean;      /* nlist × D: each list's mean key (what a query's probes are ranked by) */
    ivlist *lists;
    blkpool pool;      /* the lists' blocks' scan parts */
    blkpool rpool;     /* and their other parts */
    float *pend;       /* (count − assigned) × D raw keys */
    size_t pend_cap;   /* events */
    uint64_t built_at;
    uint32_t builds;
    int broken;        /* a low-memory adopt failed after freeing the old lists: searches fail (MA_EIO) */
    int keep_rows;     /* rows of newly listed blocks are kept until ma_ivf_rows_done (ma_ivf_keep_rows) */
    unsigned char *out_lists, *out_codes;  /* the kept rows: out_n blocks from out_first, of build out_build */
    uint64_t out_first;
    size_t out_n, out_cap;
    uint32_t out_build;
    /* Per-head mode (H > 1, issue 15): one index of one head per head (sub[h], H = 1, dimension d), each
     * with its own centroids, lists and codes; this handle then has no lists, centroids nor pending keys of
     * its own: it keeps H, d, the counters (count, builds, built_at, equal to every head's) and the kept
     * rows gathered from the heads (a row's lists and codes head after head). NULL: one index over the
     * concatenated directions (H = 1, and H > 1 stored before issue 15 until its next build). */
    ma_ivf **sub;
};

/* Per-head mode (the section "per-head indexes" below). */
static int heads_add(ma_ivf *x, size_t n, const float *k);
static int heads_adopt(ma_ivf *x, ma_ivf_build *b, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx,
                       int low_memory);
static int heads_restore_lists(ma_ivf *x, uint64_t count, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx);
static int heads_train(int H, int d, uint64_t point, uint32_t build_no, ma_ivf_loader load, void *ctx,
                       const atomic_int *stop, ma_ivf_build **out);
static int heads_encode(ma_ivf_build *b, const float *keys, size_t n_blocks, void *lists, void *codes);
static int heads_search(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, uint64_t *ids,
                        size_t *n_ids, uint64_t *scored, double *lse);
static void heads_rows_done(ma_ivf *x);
static void heads_free(ma_ivf *x);

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

/* Rows of one sgemm of centroid scores against nlist centroids: a block of MA_IVF_BLOCK, or fewer so
 * that the scores fit MA_IVF_SCORE_FLOATS (a build's scratch must not grow with the session: 12 MiB a
 * block at 2M events otherwise). A pure function of nlist: every caller splits a block the same way. */
static size_t score_rows(uint32_t nlist)
{
    size_t r = nlist ? MA_IVF_SCORE_FLOATS / nlist : BLOCK;
    return r < 1 ? 1 : r > BLOCK ? BLOCK : r;
}

/* Nearest centroid (largest dot product, first on ties) of each of n directions X (n × D) into a. S:
 * scratch of score_rows(nlist) × nlist floats; the rows go through sgemm score_rows(nlist) at a time. */
static void nearest(const float *cent, uint32_t nlist, size_t D, const float *X, size_t n, float *S,
                    uint32_t *a)
{
    const size_t R = score_rows(nlist);
    for (size_t i0 = 0; i0 < n; i0 += R) {
        const size_t rn = n - i0 < R ? n - i0 : R;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rn, (int)nlist, (int)D, 1.0f, X + i0 * D, (int)D,
                    cent, (int)D, 0.0f, S, (int)nlist);
        for (size_t i = 0; i < rn; i++) {
            const float *s = S + i * nlist;
            /* The maximum with 8 independent lanes (the compiler turns them into one vector max), then the
             * first index holding it: the same answer as a scalar scan, several times faster at large
             * nlist. */
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
            a[i0 + i] = best < nlist ? best : 0;   /* only a NaN score (non-finite key) misses: list 0 */
        }
    }
}

/* The 4-bit code and the scale of one head's vector r (d floats; the key's residual, see encode_rec). */
static void encode4(const ma_ivf *x, const float *r, float *scale, uint8_t *ch)
{
    float m = 0;
    for (int j = 0; j < x->d; j++)
        m = fabsf(r[j]) > m ? fabsf(r[j]) : m;
    float inv = m > 0 ? 7.0f / m : 0.0f;
    *scale = m / 7.0f;
    for (size_t j = 0; j < x->hb; j++) {
        int lo = 8, hi = 8;
        if (j < (size_t)x->d) {
            long u = lrintf(r[j] * inv);
            lo = (int)(u < -7 ? -7 : u > 7 ? 7 : u) + 8;
        }
        if (j + x->hb < (size_t)x->d) {
            long u = lrintf(r[j + x->hb] * inv);
            hi = (int)(u < -7 ? -7 : u > 7 ? 7 : u) + 8;
        }
        ch[j] = (uint8_t)(lo | hi << 4);
    }
}

/* The sign code of one head's vector r (d floats) at gb[p·stride] (p = 0 .. nbp-1), and
 * its factor |r|^2 / sum_j |r_j|: fac·(q . sign(r)) estimates q . r (exact for a vector of equal
 * magnitudes; RaBitQ's estimator without the rotation). Bit t of byte p is r_8p+t > 0. */
static void encode_bits(const ma_ivf *x, const float *r, float *fac, uint8_t *gb, size_t stride)
{
    double nn = 0, l1 = 0;
    for (int j = 0; j < x->d; j++) {
        nn += (double)r[j] * r[j];
        l1 += fabs((double)r[j]);
    }
    *fac = l1 > 0 ? (float)(nn / l1) : 0.0f;
    for (size_t p = 0; p < x->nbp; p++) {
        unsigned v = 0;
        for (int t = 0; t < 8; t++) {
            size_t j = 8 * p + (size_t)t;
            if (j < (size_t)x->d && r[j] > 0)
                v |= 1u << t;
        }
        gb[p * stride] = (uint8_t)v;
    }
}

/* The norm of head h's slice of centroid row c (what a key's residual is taken against). */
static double slice_norm(const ma_ivf *x, const float *c)
{
    double nn = 0;
    for (int j = 0; j < x->d; j++)
        nn += (double)c[j] * c[j];
    return sqrt(nn);
}

/* sum_j qlo_j·(c_j & 15) + qhi_j·(c_j >> 4). Written so that GCC vectorises it at -O2 for the common
 * hb (d = 64: 32 bytes), through the constant-trip-count copy; the generic loop serves other d. */
static int32_t dot_generic(const uint8_t *c, const int16_t *qlo, const int16_t *qhi, size_t hb)
{
    int32_t acc = 0;
    for (size_t j = 0; j < hb; j++)
        acc += qlo[j] * (c[j] & 15) + qhi[j] * (c[j] >> 4);
    return acc;
}

static int32_t dot_32(const uint8_t *c, const int16_t *qlo, const int16_t *qhi)
{
    int32_t acc = 0;
    for (size_t j = 0; j < 32; j++)
        acc += qlo[j] * (c[j] & 15) + qhi[j] * (c[j] >> 4);
    return acc;
}

/* The query in the codes' terms, per head: int8 halves, the scale, and sum_j q8_j (for the −8 offset). */
typedef struct {
    int16_t *lo, *hi;  /* H × hb each */
    int8_t *lo8, *hi8; /* the same as bytes (for the AVX2 kernel) */
    float *qs;         /* H */
    int32_t *qsum;     /* H */
} qcode;

static void qcode_free(qcode *qc)
{
    free(qc->lo);
    free(qc->hi);
    free(qc->lo8);
    free(qc->hi8);
    free(qc->qs);
    free(qc->qsum);
}

static int qcode_make(const ma_ivf *x, const float *q, qcode *qc)
{
    qc->lo = calloc((size_t)x->H * x->hb, sizeof *qc->lo);
    qc->hi = calloc((size_t)x->H * x->hb, sizeof *qc->hi);
    qc->qs = malloc((size_t)x->H * sizeof *qc->qs);
    qc->qsum = malloc((size_t)x->H * sizeof *qc->qsum);
    qc->lo8 = calloc((size_t)x->H * x->hb, 1);
    qc->hi8 = calloc((size_t)x->H * x->hb, 1);
    if (!qc->lo || !qc->hi || !qc->qs || !qc->qsum || !qc->lo8 || !qc->hi8) {
        qcode_free(qc);
        return MA_ENOMEM;
    }
    for (int h = 0; h < x->H; h++) {
        const float *qh = q + (size_t)h * x->d;
        float m = 0;
        for (int j = 0; j < x->d; j++)
            m = fabsf(qh[j]) > m ? fabsf(qh[j]) : m;
        float inv = m > 0 ? 127.0f / m : 0.0f;
        qc->qs[h] = m / 127.0f;
        int32_t sum = 0;
        for (int j = 0; j < x->d; j++) {
            long u = lrintf(qh[j] * inv);
            int16_t v = (int16_t)(u < -127 ? -127 : u > 127 ? 127 : u);
            if ((size_t)j < x->hb) {
                qc->lo[(size_t)h * x->hb + j] = v;
                qc->lo8[(size_t)h * x->hb + j] = (int8_t)v;
            } else {
                qc->hi[(size_t)h * x->hb + j - x->hb] = v;
                qc->hi8[(size_t)h * x->hb + j - x->hb] = (int8_t)v;
            }
            sum += v;
        }
        qc->qsum[h] = sum;
    }
    return 0;
}

/* A block is two allocations from two pools: its scan part, LB/G group records (what a scan reads: per
 * group the sign codes, H·nbp·G bytes, then G·H factors and G·H alphas), and its other part, ids[LB],
 * scales[LB·H], 4-bit codes[LB·cb] (read only for candidates). After a build the scan parts of a list are
 * contiguous (layout), so a scan streams them. */
static size_t grp_bytes(const ma_ivf *x)
{
    return G * (size_t)x->H * (x->nbp + 2 * sizeof(float));
}
static uint8_t *grp_bits(const ma_ivf *x, unsigned char *b, size_t g)
{
    return b + g * grp_bytes(x);
}
static float *grp_fac(const ma_ivf *x, unsigned char *b, size_t g)
{
    return (float *)(b + g * grp_bytes(x) + G * (size_t)x->H * x->nbp);
}
static float *grp_alpha(const ma_ivf *x, unsigned char *b, size_t g)
{
    return grp_fac(x, b, g) + G * (size_t)x->H;
}
static uint32_t *blk_ids(const ma_ivf *x, unsigned char *rb)
{
    (void)x;
    return (uint32_t *)rb;
}
static float *blk_scale(const ma_ivf *x, unsigned char *rb)
{
    return (float *)(blk_ids(x, rb) + LB);
}
static uint8_t *blk_codes(const ma_ivf *x, unsigned char *b)
{
    return (uint8_t *)(blk_scale(x, b) + LB * (size_t)x->H);
}

#if defined(HAVE_AVX2_KERNELS)
/* The same integer as dot_32 (exact: no saturation, |products| <= 15·127, pair sums <= 3,810, the two
 * halves' sum <= 7,620 in int16), with vpmaddubsw on 32 code bytes at once. */
AVX2_FN static int32_t dot_32_avx2(const uint8_t *c, const int8_t *q_lo, const int8_t *q_hi)
{
    const __m256i mask = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const __m256i ql = _mm256_loadu_si256((const __m256i *)q_lo), qh = _mm256_loadu_si256((const __m256i *)q_hi);
    __m256i b = _mm256_loadu_si256((const __m256i *)c);
    __m256i lo = _mm256_and_si256(b, mask), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ql), _mm256_maddubs_epi16(hi, qh));
    __m256i w = _mm256_madd_epi16(p, ones);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}
#endif

/* Whether the AVX2 kernels run: the CPU has AVX2 and no test asked for the portable ones. */
static int use_avx2(void)
{
#if defined(HAVE_AVX2_KERNELS)
    return !use_generic && __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* The 4-bit estimate of q . k for event r of block b (the second stage: only for candidates). The integer
 * dot products are exact whichever kernel computes them, so every build answers with the same bits. */
static float code4_score(const ma_ivf *x, unsigned char *b, unsigned char *rb, size_t r, const qcode *qc,
                         const float *qcent)
{
    const uint8_t *c = blk_codes(x, rb) + r * x->cb;
    const float *sc = blk_scale(x, rb) + r * (size_t)x->H, *al = grp_alpha(x, b, r / G) + r % G * (size_t)x->H;
    const int avx2 = use_avx2();
    float acc = 0;
    for (int h = 0; h < x->H; h++) {
        const uint8_t *ch = c + (size_t)h * x->hb;
        int32_t dot;
#if defined(HAVE_AVX2_KERNELS)
        if (x->hb == 32 && avx2)
            dot = dot_32_avx2(ch, qc->lo8 + (size_t)h * 32, qc->hi8 + (size_t)h * 32);
        else
#endif
            dot = x->hb == 32 ? dot_32(ch, qc->lo + (size_t)h * 32, qc->hi + (size_t)h * 32)
                              : dot_generic(ch, qc->lo + (size_t)h * x->hb, qc->hi + (size_t)h * x->hb, x->hb);
        acc += al[h] * qcent[h] + qc->qs[h] * sc[h] * (float)(dot - 8 * qc->qsum[h]);
    }
    return acc;
}

/* The query against sign codes, per head: a table of 16 entries (one per nibble value) for each of the
 * 2·nbp nibble positions, lut[n][v] = round((sum_t q_4n+t·(±1 by bit t of v) − b_n) / delta) in 0..255 with
 * b_n = −sum_t |q_4n+t|; so q_h . sign(k_h) ≈ delta·S + bias, S = sum_n lut[n][nibble n of the code] (exact
 * in 16 bits: at most 256 positions of 255 for d <= 1024). FAISS's "fast scan" tables (PQ 4-bit), here
 * over sign bits. */
typedef struct {
    uint8_t *lut;   /* H × 2·nbp × 16 */
    float *delta;   /* H */
    float *bias;    /* H */
} qlut;

static void qlut_free(qlut *t)
{
    free(t->lut);
    free(t->delta);
    free(t->bias);
}

static int qlut_make(const ma_ivf *x, const float *q, qlut *t)
{
    const size_t nn = 2 * x->nbp;
    t->lut = malloc((size_t)x->H * nn * 16);
    t->delta = malloc((size_t)x->H * sizeof(float));
    t->bias = malloc((size_t)x->H * sizeof(float));
    if (!t->lut || !t->delta || !t->bias) {
        qlut_free(t);
        return MA_ENOMEM;
    }
    for (int h = 0; h < x->H; h++) {
        const float *qh = q + (size_t)h * x->d;
        double range = 0, bias = 0;
        for (size_t n = 0; n < nn; n++) {
            double r = 0;
            for (size_t u = 4 * n; u < 4 * n + 4 && u < (size_t)x->d; u++)
                r += 2 * fabs((double)qh[u]);
            range = r > range ? r : range;
        }
        double delta = range > 0 ? range / 255 : 1;
        for (size_t n = 0; n < nn; n++) {
            double bn = 0;
            for (size_t u = 4 * n; u < 4 * n + 4 && u < (size_t)x->d; u++)
                bn -= fabs((double)qh[u]);
            bias += bn;
            uint8_t *L = t->lut + ((size_t)h * nn + n) * 16;
            for (int v = 0; v < 16; v++) {
                double val = 0;
                for (size_t u = 4 * n; u < 4 * n + 4 && u < (size_t)x->d; u++)
                    val += (v >> (u - 4 * n) & 1) ? qh[u] : -qh[u];
                long l = lrint((val - bn) / delta);
                L[v] = (uint8_t)(l < 0 ? 0 : l > 255 ? 255 : l);
            }
        }
        t->delta[h] = (float)delta;
        t->bias[h] = (float)bias;
    }
    return 0;
}

/* Benches: CPU time of the three phases of every search of the process (probe selection, sign-code scan,
 * re-rank and sort) and the events scanned. */
static int prof_on;
static double prof_t[3];
static uint64_t prof_n, prof_ev, prof_lists;

static double prof_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void ma_ivf_profile(int on, double t[3], uint64_t *searches, uint64_t *events)
{
    if (t)
        memcpy(t, prof_t, sizeof prof_t);
    if (searches)
        *searches = prof_n;
    if (events)
        *events = prof_ev;
    memset(prof_t, 0, sizeof prof_t);
    prof_n = prof_ev = prof_lists = 0;
    prof_on = on != 0;
}

uint64_t ma_ivf_profile_lists(void)
{
    return prof_lists;
}

void ma_ivf_set_legacy_shared(int on)
{
    legacy_shared = on != 0;
}

void ma_ivf_set_generic_kernels(int on)
{
    use_generic = on != 0;
}

/* S for the G events of one group and one head (gb: its nbp·G bytes, lut: its 2·nbp tables). */
static void group_sums_generic(const uint8_t *gb, const uint8_t *lut, size_t nbp, uint16_t *S)
{
    for (size_t e = 0; e < G; e++) {
        uint32_t acc = 0;
        for (size_t p = 0; p < nbp; p++) {
            uint8_t v = gb[p * G + gpos(e)];
            acc += (uint32_t)lut[32 * p + (v & 15)] + lut[32 * p + 16 + (v >> 4)];
        }
        S[e] = (uint16_t)acc;
    }
}

#if defined(HAVE_AVX2_KERNELS)
/* The same integers with vpshufb: 32 table lookups an instruction, sums in 16-bit lanes (even and odd
 * events apart), exact (no overflow for d <= 1024). */
AVX2_FN static void group_sums_avx2(const uint8_t *gb, const uint8_t *lut, size_t nbp, uint16_t *S)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m8 = _mm256_set1_epi16(0x00ff);
    __m256i ae = _mm256_setzero_si256(), ao = _mm256_setzero_si256();
    for (size_t p = 0; p < nbp; p++) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(gb + p * G));
        __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
        __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 32 * p)));
        __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lut + 32 * p + 16)));
        __m256i r1 = _mm256_shuffle_epi8(tl, lo), r2 = _mm256_shuffle_epi8(th, hi);
        ae = _mm256_add_epi16(ae, _mm256_add_epi16(_mm256_and_si256(r1, m8), _mm256_and_si256(r2, m8)));
        ao = _mm256_add_epi16(ao, _mm256_add_epi16(_mm256_srli_epi16(r1, 8), _mm256_srli_epi16(r2, 8)));
    }
    _mm256_storeu_si256((__m256i *)S, ae);   /* events 0..15 (gpos) */
    _mm256_storeu_si256((__m256i *)(S + 16), ao);
}

/* One head's estimates of a group (H = 1): the operations of score_group's loop in the same order, 8
 * events at a time. */
AVX2_FN static void finish_avx2(const uint16_t *S, const float *fac, const float *al, float dl, float bs,
                                float qch, float *out)
{
    const __m256 vd = _mm256_set1_ps(dl), vb = _mm256_set1_ps(bs), vq = _mm256_set1_ps(qch);
    for (size_t e = 0; e < G; e += 8) {
        __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(S + e))));
        __m256 t = _mm256_mul_ps(_mm256_loadu_ps(fac + e), _mm256_add_ps(_mm256_mul_ps(f, vd), vb));
        _mm256_storeu_ps(out + e, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(al + e), vq), t));
    }
}
#endif

/* Sign-code estimates of q . k for the G events of group g of block b into out: the sum over heads of
 * alpha·(q_h . u_h) + fac·(delta·S + bias), in this order for every kernel (qcent: q_h . u_h of the list). */
static void score_group(const ma_ivf *x, unsigned char *b, size_t g, const qlut *t, const float *qcent, float *out)
{
    const size_t H = (size_t)x->H, nn = 2 * x->nbp;
    const uint8_t *grp = grp_bits(x, b, g);
    const float *fac = grp_fac(x, b, g), *al = grp_alpha(x, b, g);
    uint16_t S[G];
    const int avx2 = use_avx2();
    for (size_t h = 0; h < H; h++) {
#if defined(HAVE_AVX2_KERNELS)
        if (avx2)
            group_sums_avx2(grp + h * x->nbp * G, t->lut + h * nn * 16, x->nbp, S);
        else
#endif
            group_sums_generic(grp + h * x->nbp * G, t->lut + h * nn * 16, x->nbp, S);
        const float dl = t->delta[h], bs = t->bias[h], qch = qcent[h];
        if (H == 1) {
#if defined(HAVE_AVX2_KERNELS)
            if (avx2) {
                finish_avx2(S, fac, al, dl, bs, qch, out);
                continue;
            }
#endif
            for (size_t e = 0; e < G; e++)
                out[e] = al[e] * qch + fac[e] * ((float)S[e] * dl + bs);
        } else if (h == 0)
            for (size_t e = 0; e < G; e++)
                out[e] = al[e * H] * qch + fac[e * H] * ((float)S[e] * dl + bs);
        else
            for (size_t e = 0; e < G; e++)
                out[e] = out[e] + (al[e * H + h] * qch + fac[e * H + h] * ((float)S[e] * dl + bs));
    }
}

/* A zeroed block (a group's unused sign codes are read by the scan), or NULL. */
static unsigned char *pool_get(blkpool *p, size_t bsz)
{
    unsigned char *b;
    if (p->freel) {
        b = p->freel;
        memcpy(&p->freel, b, sizeof p->freel);
        memset(b, 0, bsz);
        return b;
    }
    if (p->left == 0) {
        if (p->narena == p->aalloc) {
            size_t na = p->aalloc ? 2 * p->aalloc : 8;
            unsigned char **a = realloc(p->arena, na * sizeof *a);
            if (!a)
                return NULL;
            p->arena = a;
            p->aalloc = na;
        }
        size_t nb = p->next ? p->next : 16, bytes = nb * bsz;
        unsigned char *a;
        if (bytes >= ARENA_BYTES) {
            bytes = (bytes + ARENA_BYTES - 1) / ARENA_BYTES * ARENA_BYTES;
            nb = bytes / bsz;
            a = aligned_alloc(ARENA_BYTES, bytes);
            if (a) {
                (void)madvise(a, bytes, MADV_HUGEPAGE);   /* advice only: fine if refused */
                memset(a, 0, bytes);
            }
        } else {
            a = calloc(1, bytes);
        }
        if (!a)
            return NULL;
        p->arena[p->narena++] = a;
        p->cur = a;
        p->left = nb;
        p->bytes += bytes;
        p->next = nb * bsz < ARENA_BYTES ? 2 * nb : nb;
    }
    b = p->cur;
    p->cur += bsz;
    p->left--;
    return b;
}

static void pool_put(blkpool *p, unsigned char *b)
{
    memcpy(b, &p->freel, sizeof p->freel);
    p->freel = b;
}

static void pool_free(blkpool *p)
{
    for (size_t i = 0; i < p->narena; i++)
        free(p->arena[i]);
    free(p->arena);
    memset(p, 0, sizeof *p);
}

/* Ensures blocks for `need` events. MA_ENOMEM leaves the list valid (maybe with a spare block). */
static int list_reserve(const ma_ivf *x, blkpool *pool, blkpool *rpool, ivlist *l, size_t need)
{
    if (!l->ksum && !(l->ksum = calloc(x->D + (size_t)x->H, sizeof *l->ksum)))
        return MA_ENOMEM;
    while (l->nblk * LB < need) {
        if (l->nblk == l->blk_alloc) {
            size_t na = l->blk_alloc ? l->blk_alloc * 2 : 4;
            unsigned char **p = realloc(l->blk, na * sizeof *p);
            if (!p)
                return MA_ENOMEM;
            l->blk = p;
            p = realloc(l->rst, na * sizeof *p);
            if (!p)
                return MA_ENOMEM;
            l->rst = p;
            l->blk_alloc = na;
        }
        unsigned char *b = pool_get(pool, x->scan_bytes);
        if (!b)
            return MA_ENOMEM;
        unsigned char *rb = pool_get(rpool, x->rest_bytes);
        if (!rb) {
            pool_put(pool, b);
            return MA_ENOMEM;
        }
        l->blk[l->nblk] = b;
        l->rst[l->nblk++] = rb;
    }
    return 0;
}

/* ---- per-event records ---------------------------------------------------------------------- */

/* An event's record: what its list keeps of it, in the persisted row format (docs/ARCHIVE.md,
 * "Persistence"): per head h, f32 alpha, f32 sign-code factor, f32 4-bit scale (little-endian), the sign
 * bytes (nbp) and the 4-bit code (hb). The list id is kept apart (a row's ids come first, so a reader can
 * count the lists without the codes). */
static size_t rec_head(const ma_ivf *x)
{
    return 12 + x->nbp + x->hb;
}
static size_t rec_bytes(const ma_ivf *x)
{
    return (size_t)x->H * rec_head(x);
}

static void put_f32(unsigned char *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    p[0] = (unsigned char)u;
    p[1] = (unsigned char)(u >> 8);
    p[2] = (unsigned char)(u >> 16);
    p[3] = (unsigned char)(u >> 24);
}
static float get_f32(const unsigned char *p)
{
    float f;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&f, p, 4);
#else
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    memcpy(&f, &u, 4);
#endif
    return f;
}
static void put_u32le(unsigned char *p, uint32_t u)
{
    p[0] = (unsigned char)u;
    p[1] = (unsigned char)(u >> 8);
    p[2] = (unsigned char)(u >> 16);
    p[3] = (unsigned char)(u >> 24);
}
static uint32_t get_u32le(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint32_t u;
    memcpy(&u, p, 4);
    return u;
#else
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

/* The record of key k in the list of centroid row cent. Per head h the key is split into alpha·u + r, u
 * the unit direction of the centroid's slice h and r orthogonal to it; alpha is kept as a float and r is
 * coded twice (sign bits and 4 bits), so the codes spend no precision on what the list's events share (a
 * dominant direction, a cluster's centre). A pure function of (k, cent): a record persisted and read back
 * is the one an append computes. */
static void encode_rec(const ma_ivf *x, const float *cent, const float *k, unsigned char *rec)
{
    const size_t d = (size_t)x->d;
    float res[MA_IVF_MAX_D], fac, scale;
    for (size_t h = 0; h < (size_t)x->H; h++) {
        const float *kh = k + h * d, *ch = cent + h * d;
        unsigned char *p = rec + h * rec_head(x);
        double nc = slice_norm(x, ch), al = 0;
        if (nc > 0) {
            for (size_t j = 0; j < d; j++)
                al += (double)kh[j] * ch[j];
            al /= nc;
        }
        for (size_t j = 0; j < d; j++)
            res[j] = nc > 0 ? (float)(kh[j] - al * ch[j] / nc) : kh[j];
        encode_bits(x, res, &fac, p + 12, 1);
        encode4(x, res, &scale, p + 12 + x->nbp);
        put_f32(p, (float)al);
        put_f32(p + 4, fac);
        put_f32(p + 8, scale);
    }
}

/* Head h's part of a record (alpha al, 4-bit scale s, 4-bit code) added to a list's sums ksum. */
static void add_sums(const ma_ivf *x, double *ksum, size_t h, float al, float sc, const uint8_t *code)
{
    const size_t d = (size_t)x->d, hb = x->hb;
    double *ks = ksum + h * d, s = sc;
    ksum[x->D + h] += al;
    for (size_t j = 0; j < hb; j++)
        ks[j] += (double)((code[j] & 15) - 8) * s;
    for (size_t j = 0; j + hb < d; j++)
        ks[j + hb] += (double)((code[j] >> 4) - 8) * s;
}

/* Adds what the record of event r of list l says of its key to the list's sums: per head its alpha
 * (ksum[D + h]) and its 4-bit residual (ksum[h·d + j]). The list's mean key, what probes are ranked by, is
 * the mean of the keys the records stand for (list_mean): a function of the records alone, added in id
 * order, so an index loaded from persisted records (which sums each list once it is filled, list by list:
 * a streaming pass) ranks its lists with the same bits as the one that appended the keys. */
static void sum_rec(const ma_ivf *x, ivlist *l, size_t r)
{
    const unsigned char *b = l->blk[r / LB], *rb = l->rst[r / LB];
    const size_t H = (size_t)x->H, e = r % LB;
    const float *al = grp_alpha(x, (unsigned char *)b, e / G) + e % G * H;
    const float *sc = blk_scale(x, (unsigned char *)rb) + e * H;
    const uint8_t *codes = blk_codes(x, (unsigned char *)rb) + e * x->cb;
    for (size_t h = 0; h < H; h++)
        add_sums(x, l->ksum, h, al[h], sc[h], codes + h * x->hb);
}

/* sum_rec of a record as stored in a row (encode_rec's layout), into ksum (D + H doubles). */
static void sum_stored_rec(const ma_ivf *x, double *ksum, const unsigned char *rec)
{
    for (size_t h = 0; h < (size_t)x->H; h++) {
        const unsigned char *p = rec + h * rec_head(x);
        add_sums(x, ksum, h, get_f32(p), get_f32(p + 8), p + 12 + x->nbp);
    }
}

/* Appends event id with record rec to list l, which has room (the caller adds it to the sums: sum_rec). */
static void push_rec(const ma_ivf *x, ivlist *l, uint64_t id, const unsigned char *rec)
{
    unsigned char *b = l->blk[l->n / LB], *rb = l->rst[l->n / LB];
    size_t r = l->n % LB;
    const size_t H = (size_t)x->H, hb = x->hb;
    blk_ids(x, rb)[r] = (uint32_t)id;
    for (size_t h = 0; h < H; h++) {
        const unsigned char *p = rec + h * rec_head(x), *bits = p + 12, *code = p + 12 + x->nbp;
        const float al = get_f32(p), sc = get_f32(p + 8);
        grp_alpha(x, b, r / G)[r % G * H + h] = al;
        grp_fac(x, b, r / G)[r % G * H + h] = get_f32(p + 4);
        blk_scale(x, rb)[r * H + h] = sc;
        memcpy(blk_codes(x, rb) + r * x->cb + h * hb, code, hb);
        uint8_t *gb = grp_bits(x, b, r / G) + h * x->nbp * G + gpos(r % G);
        for (size_t q = 0; q < x->nbp; q++)
            gb[q * G] = bits[q];
    }
    l->n++;
}

/* Frees the lists' block tables (the blocks belong to their pool). */
static void lists_free(ivlist *l, uint32_t n)
{
    if (!l)
        return;
    for (uint32_t i = 0; i < n; i++) {
        free(l[i].blk);
        free(l[i].rst);
        free(l[i].ksum);
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
    x->hb = ((size_t)d + 1) / 2;
    x->cb = (size_t)H * x->hb;
    x->nbp = ((size_t)d + 7) / 8;
    x->scan_bytes = LB / G * grp_bytes(x);
    x->rest_bytes = LB * (sizeof(uint32_t) + (size_t)H * sizeof(float) + x->cb);
    return x;
}

/* x in per-head mode: H empty indexes of one head. 0 or MA_ENOMEM (x unchanged). */
static int heads_make(ma_ivf *x)
{
    ma_ivf **sub = calloc((size_t)x->H, sizeof *sub);
    if (!sub)
        return MA_ENOMEM;
    for (int h = 0; h < x->H; h++)
        if (!(sub[h] = alloc_ivf(1, x->d))) {
            for (int j = 0; j < h; j++)
                ma_ivf_destroy(sub[j]);
            free(sub);
            return MA_ENOMEM;
        }
    x->sub = sub;
    return 0;
}

int ma_ivf_create(int H, int d, ma_ivf **out)
{
    if (H < 1 || d < 1 || d > MA_IVF_MAX_D || !out)
        return MA_EINVAL;
    ma_ivf *x = alloc_ivf(H, d);
    if (!x)
        return MA_ENOMEM;
    if (H > 1 && !legacy_shared && heads_make(x) != 0) {
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
    heads_free(x);
    lists_free(x->lists, x->nlist);
    pool_free(&x->pool);
    pool_free(&x->rpool);
    free(x->cent);
    free(x->kmean);
    free(x->pend);
    free(x->out_lists);
    free(x->out_codes);
    free(x);
}

uint64_t ma_ivf_count(const ma_ivf *x)
{
    return x->count;
}

uint32_t ma_ivf_nlist(const ma_ivf *x)
{
    return x->sub ? x->sub[0]->nlist : x->nlist;
}

int ma_ivf_per_head(const ma_ivf *x)
{
    return x->sub != NULL;
}

const ma_ivf *ma_ivf_head(const ma_ivf *x, int h)
{
    return x->sub && h >= 0 && h < x->H ? x->sub[h] : NULL;
}

size_t ma_ivf_ids_cap(const ma_ivf *x, size_t max_ids)
{
    return x->sub ? (size_t)x->H * max_ids : max_ids;
}

size_t ma_ivf_row_lists_bytes(const ma_ivf *x)
{
    return (size_t)BLOCK * 4 * (x->sub ? (size_t)x->H : 1);
}

uint32_t ma_ivf_builds(const ma_ivf *x)
{
    return x->builds;
}

size_t ma_ivf_bytes(const ma_ivf *x)
{
    if (x->sub) {
        size_t b = sizeof *x + (size_t)x->H * sizeof *x->sub + x->out_cap * (size_t)BLOCK * ((size_t)x->H * 4 + rec_bytes(x));
        for (int h = 0; h < x->H; h++)
            b += ma_ivf_bytes(x->sub[h]);
        return b;
    }
    size_t b = sizeof *x + (size_t)x->nlist * (sizeof(ivlist) + x->D * (2 * sizeof(float) + sizeof(double)));
    for (uint32_t i = 0; i < x->nlist; i++)
        b += 2 * x->lists[i].blk_alloc * sizeof(unsigned char *);
    return b + x->pool.bytes + x->rpool.bytes + (x->pool.aalloc + x->rpool.aalloc) * sizeof(unsigned char *) +
           x->pend_cap * x->D * sizeof(float) + x->out_cap * (size_t)BLOCK * (4 + rec_bytes(x));
}

/* ---- kept rows (the outbox the caller persists) ---------------------------------------------- */

/* Room for n kept rows. 0 or MA_ENOMEM (nothing lost). */
static int out_reserve(ma_ivf *x, size_t n)
{
    if (n <= x->out_cap)
        return 0;
    size_t cap = x->out_cap ? 2 * x->out_cap : 4;
    while (cap < n)
        cap *= 2;
    unsigned char *l = realloc(x->out_lists, cap * BLOCK * 4);
    if (!l)
        return MA_ENOMEM;
    x->out_lists = l;
    unsigned char *c = realloc(x->out_codes, cap * BLOCK * rec_bytes(x));
    if (!c)
        return MA_ENOMEM;
    x->out_codes = c;
    x->out_cap = cap;
    return 0;
}

void ma_ivf_keep_rows(ma_ivf *x, int on)
{
    x->keep_rows = on != 0;
    for (int h = 0; x->sub && h < x->H; h++)
        ma_ivf_keep_rows(x->sub[h], on);
    if (!on)
        ma_ivf_rows_done(x);
}

size_t ma_ivf_rows_pending(const ma_ivf *x, uint32_t *build, uint64_t *first, const void **lists,
                           const void **codes)
{
    *build = x->out_build;
    *first = x->out_first;
    *lists = x->out_lists;
    *codes = x->out_codes;
    return x->out_n;
}

void ma_ivf_rows_done(ma_ivf *x)
{
    if (x->sub)
        heads_rows_done(x);
    x->out_n = 0;
    /* A large outbox (a whole index's rows after a restore that computed them) is not kept around. */
    if (x->out_cap > 16) {
        free(x->out_lists);
        free(x->out_codes);
        x->out_lists = NULL;
        x->out_codes = NULL;
        x->out_cap = 0;
    }
}

size_t ma_ivf_row_codes_bytes(int H, int d)
{
    return (size_t)BLOCK * (size_t)H * (12 + ((size_t)d + 7) / 8 + ((size_t)d + 1) / 2);
}

size_t ma_ivf_footprint(int H, int d)
{
    return (H > 1 ? (size_t)(H + 1) : 1) * sizeof(ma_ivf) + 2 * (size_t)BLOCK * (size_t)H * (size_t)d * sizeof(float);
}

/* ---- add ------------------------------------------------------------------------------------- */

/* List l's mean key into row (zeros for an empty list): per head, the mean alpha along the unit direction
 * of the centroid's slice (cent: the list's centroid row) plus the mean 4-bit residual. */
static void list_mean(const ma_ivf *x, const ivlist *l, const float *cent, float *row)
{
    for (int h = 0; h < x->H; h++) {
        const float *ch = cent + (size_t)h * x->d;
        double nc = slice_norm(x, ch), a = l->n && nc > 0 ? l->ksum[x->D + (size_t)h] / nc : 0;
        for (int j = 0; j < x->d; j++) {
            size_t i = (size_t)h * x->d + (size_t)j;
            row[i] = l->n ? (float)((a * ch[j] + l->ksum[i]) / (double)l->n) : 0.0f;
        }
    }
}

int ma_ivf_add(ma_ivf *x, size_t n, const float *k)
{
    if (n == 0)
        return 0;
    if (x->broken)
        return MA_EIO;
    if (x->count + n > UINT32_MAX)
        return MA_ENOMEM;   /* ids are 32-bit */
    if (x->sub)
        return heads_add(x, n, k);
    const size_t D = x->D;
    size_t np = (size_t)(x->count - x->assigned);
    int rc = MA_ENOMEM;
    uint32_t *asg = NULL;
    size_t *extra = NULL;
    float *X = NULL, *S = NULL;
    unsigned char *rec = NULL;

    /* Room for the new keys behind the pending ones (visible state changes only at the end). */
    if (np + n > x->pend_cap) {
        size_t cap = x->pend_cap ? x->pend_cap * 2 : PEND_MIN;
        while (cap < np + n)
            cap *= 2;
        float *p = realloc(x->pend, cap * D * sizeof(float));
        if (!p)
            return MA_ENOMEM;
        x->pend = p;
        x->pend_cap = cap;
    }
    memcpy(x->pend + np * D, k, n * D * sizeof(float));

    size_t nb = x->cent ? (np + n) / BLOCK : 0;   /* complete blocks to assign */
    if (nb && !x->kmean && !(x->kmean = calloc((size_t)x->nlist * D, sizeof *x->kmean)))   /* after a restore */
        return MA_ENOMEM;
    if (nb) {
        const size_t rb = rec_bytes(x);
        asg = malloc(nb * BLOCK * sizeof *asg);
        extra = calloc(x->nlist, sizeof *extra);
        X = malloc((size_t)BLOCK * D * sizeof(float));
        S = malloc(score_rows(x->nlist) * x->nlist * sizeof(float));
        rec = x->keep_rows ? NULL : malloc((size_t)BLOCK * rb);
        if (!asg || !extra || !X || !S || (!x->keep_rows && !rec))
            goto done;
        for (size_t b = 0; b < nb; b++) {
            for (size_t i = 0; i < BLOCK; i++)
                direction(x, x->pend + (b * BLOCK + i) * D, X + i * D);
            nearest(x->cent, x->nlist, D, X, BLOCK, S, asg + b * BLOCK);
        }
        for (size_t i = 0; i < nb * BLOCK; i++)
            extra[asg[i]]++;
        for (uint32_t c = 0; c < x->nlist; c++)
            if (extra[c] && list_reserve(x, &x->pool, &x->rpool, &x->lists[c], x->lists[c].n + extra[c]) != 0)
                goto done;
        if (x->keep_rows && out_reserve(x, x->out_n + nb) != 0)
            goto done;
        if (x->keep_rows && x->out_n == 0) {
            x->out_first = x->assigned / BLOCK;
            x->out_build = x->builds;
        }
        for (size_t b = 0; b < nb; b++) {
            unsigned char *ol = x->keep_rows ? x->out_lists + (x->out_n + b) * BLOCK * 4 : NULL;
            unsigned char *oc = x->keep_rows ? x->out_codes + (x->out_n + b) * BLOCK * rb : rec;
            for (size_t i = 0; i < BLOCK; i++) {
                uint32_t c = asg[b * BLOCK + i];
                const float *ce = x->cent + (size_t)c * D;
                encode_rec(x, ce, x->pend + (b * BLOCK + i) * D, oc + i * rb);
                push_rec(x, &x->lists[c], x->assigned + b * BLOCK + i, oc + i * rb);
                sum_rec(x, &x->lists[c], x->lists[c].n - 1);
                if (ol)
                    put_u32le(ol + i * 4, c);
            }
        }
        if (x->keep_rows)
            x->out_n += nb;
        for (uint32_t c = 0; c < x->nlist; c++)
            if (extra[c])
                list_mean(x, &x->lists[c], x->cent + (size_t)c * D, x->kmean + (size_t)c * D);
        memmove(x->pend, x->pend + nb * BLOCK * D, (np + n - nb * BLOCK) * D * sizeof(float));
        x->assigned += nb * BLOCK;
    }
    x->count += n;
    rc = 0;
done:
    free(asg);
    free(extra);
    free(X);
    free(S);
    free(rec);
    return rc;
}

/* ---- rebuild --------------------------------------------------------------------------------- */

/* Lloyd iterations of spherical k-means on the m training directions X; cent (nlist × D) is initialised
 * here. */
static int kmeans(const ma_ivf *x, const float *X, size_t m, uint32_t nlist, float *cent, uint64_t *rng,
                  const atomic_int *stop)
{
    const size_t D = x->D;
    int rc = MA_ENOMEM;
    size_t *perm = malloc(m * sizeof *perm);
    uint32_t *asg = malloc(m * sizeof *asg);
    size_t bn = m < BLOCK ? m : BLOCK;
    float *S = malloc(score_rows(nlist) * nlist * sizeof(float));
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
        if (stop && atomic_load(stop)) {
            rc = MA_EBUSY;
            goto done;
        }
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

/* ---- builds: points, training, encoding, adopting --------------------------------------------- */

/* The build points are fixed event counts, MA_IVF_MIN_BUILD·2^j: a build at point P trains on events
 * [0, P) with nlist = round(2·sqrt(P)) and a generator seeded from P, so its centroids depend on the keys
 * and P only — not on where batches ended, nor on when a background build ran. The point due is the
 * largest one not above the count, at least twice the last build's (each event is rebuilt O(1) times). */
int ma_ivf_build_due(const ma_ivf *x, uint64_t *point, uint32_t *build_no)
{
    if (x->count < MA_IVF_MIN_BUILD)
        return 0;
    uint64_t p = MA_IVF_MIN_BUILD;
    uint32_t j = 0;
    while (p <= x->count / 2) {
        p *= 2;
        j++;
    }
    if (p < 2 * x->built_at)
        return 0;
    if (point)
        *point = p;
    if (build_no)
        *build_no = x->builds + 1 > j + 1 ? x->builds + 1 : j + 1;
    return 1;
}

int ma_ivf_want_rebuild(const ma_ivf *x)
{
    return ma_ivf_build_due(x, NULL, NULL);
}

struct ma_ivf_build {
    ma_ivf *shape;        /* H, d and the code sizes (no lists) */
    uint64_t point;
    uint32_t build_no, nlist;
    float *cent;          /* nlist × D unit rows; moved into the index by ma_ivf_adopt */
    float *Bd, *S;        /* encoding scratch (BLOCK × D, BLOCK × nlist) */
    uint32_t *asg;
    ma_ivf_build **sub;   /* per-head build (H > 1): one build of one head per head; cent NULL here */
    float *hk;            /* its scratch: one head's keys of a block (BLOCK × d) */
    /* ma_ivf_build_prepare: what the stored rows of blocks [0, pblocks) give each list — its count and
     * its sums (nlist × (D + H), in id order) — so that an adopt reads those rows only once, to push
     * their records (NULL: not prepared) */
    size_t *pcnt;
    double *psum;
    uint64_t pblocks;
};

void ma_ivf_build_free(ma_ivf_build *b)
{
    if (!b)
        return;
    for (int h = 0; b->sub && h < b->shape->H; h++)
        ma_ivf_build_free(b->sub[h]);
    free(b->sub);
    free(b->hk);
    ma_ivf_destroy(b->shape);
    free(b->pcnt);
    free(b->psum);
    free(b->cent);
    free(b->Bd);
    free(b->S);
    free(b->asg);
    free(b);
}

uint64_t ma_ivf_build_point(const ma_ivf_build *b)
{
    return b->point;
}

uint32_t ma_ivf_build_number(const ma_ivf_build *b)
{
    return b->build_no;
}

uint32_t ma_ivf_build_nlist(const ma_ivf_build *b)
{
    return b->sub ? b->sub[0]->nlist : b->nlist;
}

size_t ma_ivf_build_lists_bytes(const ma_ivf_build *b)
{
    return (size_t)BLOCK * 4 * (b->sub ? (size_t)b->shape->H : 1);
}

/* A build at point T: nlist = round(2·sqrt(T)) lists (at least 1) and a training sample of m =
 * MA_IVF_TRAIN_PER_LIST·nlist events, at most T and at most MA_IVF_TRAIN_MAX (nlist at most m). The cap
 * keeps the sample a fixed size (32 MiB at H·d = 64) whatever the session's length: builds past
 * 4,194,304 events train fewer than MA_IVF_TRAIN_PER_LIST points a list (recall against the cap:
 * docs/RESULTS.md, "Memory within the budget while 2M events stream"). */
void ma_ivf_train_size(uint64_t T, uint32_t *nlist, size_t *m)
{
    uint32_t n = (uint32_t)llround(MA_IVF_LISTS_PER_SQRT * sqrt((double)T));
    if (n < 1)
        n = 1;
    size_t ms = (size_t)n * MA_IVF_TRAIN_PER_LIST;
    if (ms > MA_IVF_TRAIN_MAX)
        ms = MA_IVF_TRAIN_MAX;
    if (ms > T)
        ms = (size_t)T;
    if (n > ms)
        n = (uint32_t)ms;
    *nlist = n;
    *m = ms;
}

size_t ma_ivf_build_scratch_bytes(int H, int d, uint64_t point)
{
    uint32_t nlist;
    size_t m;
    ma_ivf_train_size(point, &nlist, &m);
    const size_t D = (size_t)H * (size_t)d, per_head = H > 1 ? (size_t)H : 1;
    size_t b = m * D * sizeof(float)                              /* the sample */
               + m * (sizeof(size_t) + sizeof(uint32_t))          /* k-means' permutation and assignments */
               + (size_t)nlist * D * (sizeof(double) + 2 * sizeof(float))   /* sums, centroids, list means */
               + per_head * score_rows(nlist) * nlist * sizeof(float)       /* scores (each head's build) */
               + (size_t)nlist * (sizeof(size_t) + sizeof(ivlist))          /* counts, the new lists' heads */
               + 3 * (size_t)BLOCK * D * sizeof(float);           /* a block of keys, its directions */
    return b;
}

int ma_ivf_train(int H, int d, uint64_t point, uint32_t build_no, ma_ivf_loader load, void *ctx,
                 const atomic_int *stop, ma_ivf_build **out)
{
    if (H < 1 || d < 1 || d > MA_IVF_MAX_D || point == 0 || point > UINT32_MAX || build_no == 0 || !load || !out)
        return MA_EINVAL;
    if (H > 1 && !legacy_shared)
        return heads_train(H, d, point, build_no, load, ctx, stop, out);
    int rc = MA_ENOMEM;
    ma_ivf_build *b = calloc(1, sizeof *b);
    float *X = NULL, *B = NULL;
    if (!b || !(b->shape = alloc_ivf(H, d)))
        goto fail;
    const size_t D = b->shape->D;
    const uint64_t T = point;
    uint32_t nlist;
    size_t m;
    ma_ivf_train_size(T, &nlist, &m);
    b->point = point;
    b->build_no = build_no;
    b->nlist = nlist;
    X = malloc(m * D * sizeof(float));
    B = malloc((size_t)BLOCK * D * sizeof(float));
    b->cent = malloc((size_t)nlist * D * sizeof(float));
    if (!X || !B || !b->cent)
        goto fail;

    /* The training sample: Knuth's selection sampling, m of the T ids in increasing order. */
    uint64_t rng = 0x6d656d6174746e00ull ^ point;
    size_t got = 0;
    for (uint64_t first = 0; first < T && got < m; first += BLOCK) {
        size_t n = T - first < BLOCK ? (size_t)(T - first) : BLOCK;
        if ((rc = load(ctx, first, n, B)) != 0)
            goto fail;
        for (size_t i = 0; i < n && got < m; i++)
            if (below(&rng, T - first - i) < m - got)
                direction(b->shape, B + i * D, X + got++ * D);
    }
    if ((rc = kmeans(b->shape, X, m, nlist, b->cent, &rng, stop)) != 0)
        goto fail;
    free(X);
    free(B);
    *out = b;
    return 0;
fail:
    free(X);
    free(B);
    ma_ivf_build_free(b);
    return rc;
}

/* The row of one aligned block of BLOCK keys against centroids cent (nlist rows): each event's list
 * (u32 LE) into lists, its record into codes. Bd, S, asg: scratch of BLOCK × D, BLOCK × nlist, BLOCK. The
 * same sgemm shape as ma_ivf_add's assignment, so the same lists. */
static void encode_block(const ma_ivf *x, const float *cent, uint32_t nlist, const float *keys, float *Bd, float *S,
                         uint32_t *asg, unsigned char *lists, unsigned char *codes)
{
    const size_t D = x->D, rb = rec_bytes(x);
    for (size_t i = 0; i < BLOCK; i++)
        direction(x, keys + i * D, Bd + i * D);
    nearest(cent, nlist, D, Bd, BLOCK, S, asg);
    for (size_t i = 0; i < BLOCK; i++) {
        if (lists)
            put_u32le(lists + i * 4, asg[i]);
        if (codes)
            encode_rec(x, cent + (size_t)asg[i] * D, keys + i * D, codes + i * rb);
    }
}

int ma_ivf_build_encode(ma_ivf_build *b, const float *keys, size_t n_blocks, void *lists, void *codes)
{
    if (b->sub)
        return heads_encode(b, keys, n_blocks, lists, codes);
    const size_t D = b->shape->D, rb = rec_bytes(b->shape);
    if (!b->Bd) {
        b->Bd = malloc((size_t)BLOCK * D * sizeof(float));
        b->S = malloc(score_rows(b->nlist) * b->nlist * sizeof(float));
        b->asg = malloc(BLOCK * sizeof *b->asg);
        if (!b->Bd || !b->S || !b->asg) {
            free(b->Bd);
            free(b->S);
            free(b->asg);
            b->Bd = b->S = NULL;
            b->asg = NULL;
            return MA_ENOMEM;
        }
    }
    for (size_t k = 0; k < n_blocks; k++)
        encode_block(b->shape, b->cent, b->nlist, keys + k * BLOCK * D, b->Bd, b->S, b->asg,
                     (unsigned char *)lists + k * BLOCK * 4, (unsigned char *)codes + k * BLOCK * rb);
    return 0;
}

/* What relist's two scans share. */
typedef struct {
    const ma_ivf *x;
    uint32_t nlist;
    uint64_t next, end;   /* the block expected next; rows end here */
    size_t *cnt;          /* pass 1: events per list */
    ivlist *nl;           /* pass 2: the lists being filled */
    const float *cent;
} relist_scan;

/* Pass 1 over the stored rows: counts the events of each list; stops (1) at the first missing block. */
static int count_row(void *arg, uint64_t block, const void *lists, size_t ll, const void *codes, size_t cl)
{
    relist_scan *c = arg;
    (void)codes;
    (void)cl;
    if (block != c->next)
        return 1;
    if (ll != (size_t)BLOCK * 4)
        return MA_ECORRUPT;
    for (size_t i = 0; i < BLOCK; i++) {
        uint32_t id = get_u32le((const unsigned char *)lists + i * 4);
        if (id >= c->nlist)
            return MA_ECORRUPT;
        c->cnt[id]++;
    }
    c->next++;
    return 0;
}

/* Pushes the BLOCK records of block `block` (lists, codes) into the lists being filled. */
static int push_block(relist_scan *c, uint64_t block, const unsigned char *lists, const unsigned char *codes)
{
    const ma_ivf *x = c->x;
    const size_t rb = rec_bytes(x);
    for (size_t i = 0; i < BLOCK; i++) {
        uint32_t id = get_u32le(lists + i * 4);
        ivlist *l = &c->nl[id < c->nlist ? id : 0];
        if (id >= c->nlist || l->n >= l->nblk * LB)
            return MA_ECORRUPT;   /* the rows changed between the two passes */
        push_rec(x, l, block * BLOCK + i, codes + i * rb);
    }
    return 0;
}

/* Pass 2: every stored row's records into their lists (the rows pass 1 counted, no more, no fewer). */
static int push_row(void *arg, uint64_t block, const void *lists, size_t ll, const void *codes, size_t cl)
{
    relist_scan *c = arg;
    if (block != c->next || block >= c->end || ll != (size_t)BLOCK * 4 || cl != (size_t)BLOCK * rec_bytes(c->x))
        return MA_ECORRUPT;
    c->next++;
    return push_block(c, block, lists, codes);
}

/* Lists sized exactly for cnt, their blocks laid out list after list in one arena per pool, so a scan
 * streams a list's group records. 0 or MA_ENOMEM (caller frees nl, pools). */
static int layout(const ma_ivf *x, ivlist *nl, uint32_t nlist, const size_t *cnt, blkpool *pool, blkpool *rpool)
{
    size_t nb = 0;
    for (uint32_t c = 0; c < nlist; c++)
        nb += (cnt[c] + LB - 1) / LB;
    pool->next = rpool->next = nb ? nb : 16;
    for (uint32_t c = 0; c < nlist; c++) {
        size_t need = (cnt[c] + LB - 1) / LB;
        if (!need)
            continue;
        ivlist *l = &nl[c];
        if (!(l->ksum = calloc(x->D + (size_t)x->H, sizeof *l->ksum)) || !(l->blk = malloc(need * sizeof *l->blk)) ||
            !(l->rst = malloc(need * sizeof *l->rst)))
            return MA_ENOMEM;
        l->blk_alloc = need;
        for (; l->nblk < need; l->nblk++) {
            if (!(l->blk[l->nblk] = pool_get(pool, x->scan_bytes)) || !(l->rst[l->nblk] = pool_get(rpool, x->rest_bytes)))
                return MA_ENOMEM;
        }
    }
    pool->next = rpool->next = 16;   /* later growth (appends) starts small again */
    return 0;
}

/* Frees x's lists and their pools (the index then has none: nlist 0). */
static void drop_lists(ma_ivf *x)
{
    lists_free(x->lists, x->nlist);
    pool_free(&x->pool);
    pool_free(&x->rpool);
    x->lists = NULL;
    x->nlist = 0;
}

/* Replaces x's lists with those of centroids `cent` (nlist rows, build bno, trained at built_at) over the
 * aligned blocks [0, A): the stored rows of build bno found contiguous from block 0 (through `rows`, may be
 * NULL), the remaining blocks encoded from keys loaded through `load`. Two passes: the lists' sizes (the
 * rows' list ids; the remaining blocks assigned), then the records, pushed into lists laid out exactly.
 * With keep_rows the encoded rows become the kept rows (build bno), so the caller persists them.
 * low_mem: the old lists are freed after the first pass, before the new ones are allocated (old and new
 * are never both held); a failure after that leaves x broken (the caller discards it). Otherwise x is
 * unchanged on failure. On success x owns cent (the old centroids are freed unless cent is them).
 * Pending keys are the caller's. */
static int relist(ma_ivf *x, float *cent, uint32_t nlist, uint32_t bno, uint64_t built_at, const ma_ivf_rows *rows,
                  uint64_t A, ma_ivf_loader load, void *ctx, int low_mem, const ma_ivf_build *pre)
{
    const size_t D = x->D, rb = rec_bytes(x);
    int rc = MA_ENOMEM;
    size_t *cnt = calloc(nlist, sizeof *cnt);
    ivlist *nl = calloc(nlist, sizeof *nl);
    float *kmean = malloc((size_t)nlist * D * sizeof(float));
    float *B = malloc((size_t)BLOCK * D * sizeof(float)), *Bd = malloc((size_t)BLOCK * D * sizeof(float));
    float *S = malloc(score_rows(nlist) * nlist * sizeof(float));
    uint32_t *asg = malloc(BLOCK * sizeof *asg);
    unsigned char *tl = NULL, *tc = NULL;   /* the encoded rows (kept rows, or a one-block buffer) */
    uint32_t *eids = NULL;                  /* without keep_rows: the lists of the encoded blocks */
    blkpool np = {0}, nrp = {0};
    bool freed_old = false;
    if (!cnt || !nl || !kmean || !B || !Bd || !S || !asg)
        goto fail;

    /* Pass 1: sizes. */
    relist_scan sc = {x, nlist, 0, A, cnt, nl, cent};
    if (pre && pre->pcnt && pre->pblocks <= A && rows) {   /* the prepared blocks' counts */
        memcpy(cnt, pre->pcnt, nlist * sizeof *cnt);
        sc.next = pre->pblocks;
    } else {
        pre = NULL;
    }
    if (rows && A > sc.next && (rc = rows->scan(rows->ctx, bno, sc.next, A - sc.next, 0, count_row, &sc)) < 0)
        goto fail;
    const uint64_t S0 = sc.next;   /* blocks read from the stored rows */
    const size_t ne = (size_t)(A - S0);
    rc = MA_ENOMEM;
    if (x->keep_rows) {
        x->out_n = 0;
        if (out_reserve(x, ne) != 0)
            goto fail;
        tl = x->out_lists;
        tc = x->out_codes;
    } else if (ne) {
        tl = malloc((size_t)BLOCK * 4);
        tc = malloc((size_t)BLOCK * rb);
        eids = malloc(ne * BLOCK * sizeof *eids);
        if (!tl || !tc || !eids)
            goto fail;
    }
    for (size_t k = 0; k < ne; k++) {
        if ((rc = load(ctx, (S0 + k) * BLOCK, BLOCK, B)) != 0)
            goto fail;
        if (x->keep_rows) {
            encode_block(x, cent, nlist, B, Bd, S, asg, tl + k * BLOCK * 4, tc + k * BLOCK * rb);
        } else {
            encode_block(x, cent, nlist, B, Bd, S, asg, NULL, NULL);
            memcpy(eids + k * BLOCK, asg, BLOCK * sizeof *asg);
        }
        for (size_t i = 0; i < BLOCK; i++)
            cnt[asg[i]]++;
    }

    /* The new lists, laid out for their sizes. */
    if (low_mem) {
        drop_lists(x);
        freed_old = true;
#if defined(__GLIBC__)
        /* The old lists' smaller arenas sit in malloc's heaps: give them back before the new lists take
         * their memory, or the process would hold both for the swap's duration (issue 9, item B). */
        malloc_trim(0);
#endif
    }
    rc = MA_ENOMEM;
    if (layout(x, nl, nlist, cnt, &np, &nrp) != 0)
        goto fail;

    /* Pass 2: the records. */
    sc.next = 0;
    sc.end = S0;
    if (S0 && (rc = rows->scan(rows->ctx, bno, 0, S0, 1, push_row, &sc)) != 0)
        goto fail;
    rc = MA_ECORRUPT;
    if (sc.next != S0)
        goto fail;
    for (size_t k = 0; k < ne; k++) {
        const unsigned char *l = tl, *c = tc;
        if (x->keep_rows) {
            l = tl + k * BLOCK * 4;
            c = tc + k * BLOCK * rb;
        } else {
            if ((rc = load(ctx, (S0 + k) * BLOCK, BLOCK, B)) != 0)
                goto fail;
            for (size_t i = 0; i < BLOCK; i++) {
                uint32_t id = eids[k * BLOCK + i];
                put_u32le(tl + i * 4, id);
                encode_rec(x, cent + (size_t)id * D, B + i * D, tc + i * rb);
            }
        }
        if ((rc = push_block(&sc, S0 + k, l, c)) != 0)
            goto fail;
    }
    rc = MA_ECORRUPT;
    for (uint32_t c = 0; c < nlist; c++) {
        if (nl[c].n != cnt[c])
            goto fail;
        size_t r = 0;
        if (pre && pre->pcnt[c]) {   /* its first pcnt[c] records' sums, prepared */
            memcpy(nl[c].ksum, pre->psum + (size_t)c * (D + (size_t)x->H), (D + (size_t)x->H) * sizeof(double));
            r = pre->pcnt[c];
        }
        for (; r < nl[c].n; r++)
            sum_rec(x, &nl[c], r);
        list_mean(x, &nl[c], cent + (size_t)c * D, kmean + (size_t)c * D);
    }

    /* Install. */
    if (!freed_old)
        drop_lists(x);
    x->lists = nl;
    x->nlist = nlist;
    x->pool = np;
    x->rpool = nrp;
    memset(&np, 0, sizeof np);
    memset(&nrp, 0, sizeof nrp);
    if (x->cent != cent)
        free(x->cent);
    x->cent = cent;
    free(x->kmean);
    x->kmean = kmean;
    x->builds = bno;
    x->built_at = built_at;
    x->broken = 0;
    if (x->keep_rows) {
        x->out_first = S0;
        x->out_n = ne;
        x->out_build = bno;
    }
    nl = NULL;
    kmean = NULL;
    rc = 0;
fail:
    if (rc && freed_old) {
        x->broken = 1;
        if (x->cent == cent)
            x->cent = NULL;   /* the caller's, on failure */
    }
    if (rc && x->keep_rows)
        x->out_n = 0;
    lists_free(nl, nlist);
    pool_free(&np);
    pool_free(&nrp);
    free(cnt);
    free(kmean);
    free(B);
    free(Bd);
    free(S);
    free(asg);
    free(eids);
    if (!x->keep_rows) {
        free(tl);
        free(tc);
    }
    return rc;
}

/* ma_ivf_build_prepare's scan: each stored record's list count and sums; stops (1) at the first missing
 * block. */
typedef struct {
    ma_ivf_build *b;
    uint64_t next;
} prep_scan;

static int prep_row(void *arg, uint64_t block, const void *lists, size_t ll, const void *codes, size_t cl)
{
    prep_scan *c = arg;
    const ma_ivf *x = c->b->shape;
    const size_t rb = rec_bytes(x), DH = x->D + (size_t)x->H;
    if (block != c->next)
        return 1;
    if (ll != (size_t)BLOCK * 4 || cl != (size_t)BLOCK * rb)
        return MA_ECORRUPT;
    for (size_t i = 0; i < BLOCK; i++) {
        uint32_t id = get_u32le((const unsigned char *)lists + i * 4);
        if (id >= c->b->nlist)
            return MA_ECORRUPT;
        c->b->pcnt[id]++;
        sum_stored_rec(x, c->b->psum + (size_t)id * DH, (const unsigned char *)codes + i * rb);
    }
    c->next++;
    return 0;
}

int ma_ivf_build_prepare(ma_ivf_build *b, const ma_ivf_rows *rows, uint64_t blocks)
{
    if (!b || !rows)
        return MA_EINVAL;
    if (b->sub || !b->cent)
        return 0;   /* per-head builds are adopted without it */
    free(b->pcnt);
    free(b->psum);
    b->pblocks = 0;
    const size_t DH = b->shape->D + (size_t)b->shape->H;
    b->pcnt = calloc(b->nlist, sizeof *b->pcnt);
    b->psum = calloc((size_t)b->nlist * DH, sizeof *b->psum);
    prep_scan sc = {b, 0};
    int rc = b->pcnt && b->psum ? 0 : MA_ENOMEM;
    if (!rc && blocks && (rc = rows->scan(rows->ctx, b->build_no, 0, blocks, 1, prep_row, &sc)) > 0)
        rc = 0;   /* stopped at a missing block: what came before is prepared */
    if (rc) {
        free(b->pcnt);
        free(b->psum);
        b->pcnt = NULL;
        b->psum = NULL;
        return rc;
    }
    b->pblocks = sc.next;
    return 0;
}

int ma_ivf_adopt(ma_ivf *x, ma_ivf_build *b, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx, int low_memory)
{
    if (b && (b->sub || x->sub))
        return heads_adopt(x, b, rows, load, ctx, low_memory);
    if (!b || !b->cent || b->shape->H != x->H || b->shape->d != x->d || b->build_no <= x->builds ||
        b->point > x->count || x->broken)
        return MA_EINVAL;
    const uint64_t A = x->count / BLOCK, old = x->assigned;
    int rc = relist(x, b->cent, b->nlist, b->build_no, b->point, rows, A, load, ctx, low_memory, b);
    if (rc)
        return rc;
    b->cent = NULL;   /* the index's now */
    /* Events [old, A·BLOCK) were pending (before the first build); the rest stay pending. */
    if (A * BLOCK > old)
        memmove(x->pend, x->pend + (size_t)(A * BLOCK - old) * x->D,
                (size_t)(x->count - A * BLOCK) * x->D * sizeof(float));
    x->assigned = A * BLOCK;
    return 0;
}

int ma_ivf_restore_lists(ma_ivf *x, uint64_t count, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx)
{
    if (x->count != 0 || count > UINT32_MAX || !load)
        return MA_EINVAL;
    if (x->sub)
        return heads_restore_lists(x, count, rows, load, ctx);
    const uint64_t A = x->nlist ? count / BLOCK : 0;
    const size_t np = (size_t)(count - A * BLOCK), cap = np > PEND_MIN ? np : PEND_MIN;
    int rc;
    if (x->nlist && (rc = relist(x, x->cent, x->nlist, x->builds, x->built_at, rows, A, load, ctx, 0, NULL)) != 0)
        return rc;
    float *p = realloc(x->pend, cap * x->D * sizeof(float));
    if (!p)
        return MA_ENOMEM;
    x->pend = p;
    x->pend_cap = cap;
    for (size_t i = 0; i < np; i += BLOCK) {
        size_t n = np - i < BLOCK ? np - i : BLOCK;
        if ((rc = load(ctx, A * BLOCK + i, n, x->pend + i * x->D)) != 0)
            return rc;
    }
    x->assigned = A * BLOCK;
    x->count = count;
    return 0;
}

/* x (empty, of one head or shared) takes a copy of build b's centroids and its counters: what
 * ma_ivf_restore_lists lists events against. 0 or MA_ENOMEM (the caller destroys x). */
static int take_centroids(ma_ivf *x, const ma_ivf_build *b)
{
    const size_t bytes = (size_t)b->nlist * x->D * sizeof(float);
    if (!(x->cent = malloc(bytes)) || !(x->lists = calloc(b->nlist, sizeof *x->lists)))
        return MA_ENOMEM;
    memcpy(x->cent, b->cent, bytes);
    x->nlist = b->nlist;
    x->builds = b->build_no;
    x->built_at = b->point;
    return 0;
}

/* An empty index with b's centroids (per head when b is), its rows kept, then listed as a restore lists a
 * stored one (ma_ivf_restore_lists: the stored rows, the other blocks from keys, the pending keys read
 * once for every head). */
int ma_ivf_from_build(const ma_ivf_build *b, uint64_t count, const ma_ivf_rows *rows, ma_ivf_loader load,
                      void *ctx, ma_ivf **out)
{
    if (!b || !out || !load || b->point > count || count > UINT32_MAX || (!b->sub && !b->cent))
        return MA_EINVAL;
    ma_ivf *x = alloc_ivf(b->shape->H, b->shape->d);
    int rc = x ? 0 : MA_ENOMEM;
    if (!rc && b->sub) {
        rc = heads_make(x);
        x->builds = b->build_no;
        x->built_at = b->point;
        for (int h = 0; !rc && h < x->H; h++)
            rc = take_centroids(x->sub[h], b->sub[h]);
    } else if (!rc) {
        rc = take_centroids(x, b);
    }
    if (!rc) {
        ma_ivf_keep_rows(x, 1);
        rc = ma_ivf_restore_lists(x, count, rows, load, ctx);
    }
    if (rc) {
        ma_ivf_destroy(x);
        return rc;
    }
    *out = x;
    return 0;
}

int ma_ivf_rebuild(ma_ivf *x, ma_ivf_loader load, void *ctx)
{
    uint64_t point;
    uint32_t bno;
    if (x->count == 0)
        return 0;
    if (!ma_ivf_build_due(x, &point, &bno)) {
        point = x->count;   /* an explicit build, not at a build point */
        bno = x->builds + 1;
    }
    ma_ivf_build *b;
    int rc = ma_ivf_train(x->H, x->d, point, bno, load, ctx, NULL, &b);
    if (rc)
        return rc;
    rc = ma_ivf_adopt(x, b, NULL, load, ctx, 0);
    ma_ivf_build_free(b);
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

/* A search candidate: its score, its position in probe order (for ties), where its codes are (blk NULL: a
 * pending event, scored exactly, id assigned + r) and the index of its list in probe order. The id is read
 * only for the final candidates: reading it at every insertion was a cache miss each. */
typedef struct {
    float s;
    uint32_t pos;      /* < 2^32: ids are 32-bit */
    uint32_t r, pi;    /* row in the block (or pending index); index in probe order */
    unsigned char *blk, *rb;   /* the block's scan part and other part */
} cand;

/* a ranks below b: lower score, or equal score and later position. */
static bool worse(const cand *a, const cand *b)
{
    return a->s < b->s || (a->s == b->s && a->pos > b->pos);
}

/* Min-heap (the worst at the root) of at most cap candidates: c enters if there is room, else replaces the
 * root when better than it. */
static void heap_put(cand *h, size_t *n, size_t cap, cand c)
{
    size_t i;
    if (*n < cap) {
        i = (*n)++;
        while (i > 0 && worse(&c, &h[(i - 1) / 2])) {
            h[i] = h[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        h[i] = c;
        return;
    }
    i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        const cand *wc = &c;
        if (l < *n && worse(&h[l], wc))
            w = l, wc = &h[l];
        if (r < *n && worse(&h[r], wc))
            w = r, wc = &h[r];
        if (w == i)
            break;
        h[i] = h[w];
        i = w;
    }
    h[i] = c;
}

/* The k-th largest of the n floats v (reorders v; 1 <= k <= n): quickselect, median-of-three pivot. */
static float kth_largest(float *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n, want = k - 1;   /* position of the answer in descending order */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        float a = v[lo], b = v[mid], c = v[hi - 1];
        float pv = a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
        /* Three-way partition (> pv, == pv, < pv) in two branchless passes (a branch per element was
         * mispredicted half the time). */
        size_t lt = lo, gt;
        for (size_t i = lo; i < hi; i++) {
            float t = v[i];
            v[i] = v[lt];
            v[lt] = t;
            lt += t > pv;
        }
        gt = lt;
        for (size_t i = lt; i < hi; i++) {
            float t = v[i];
            v[i] = v[gt];
            v[gt] = t;
            gt += t == pv;
        }
        if (want < lt)
            hi = lt;
        else if (want >= gt)
            lo = gt;
        else
            return pv;
    }
    return v[lo];
}

static int cmp_pos(const void *a, const void *b)
{
    uint32_t x = ((const cand *)a)->pos, y = ((const cand *)b)->pos;
    return (x > y) - (x < y);
}

/* Keeps the best k of the n candidates c, best meaning a higher score, or an equal score and an earlier
 * position (a total order: the kept set does not depend on the order of c); returns the k-th best score.
 * tmp: n floats. */
static float compact(cand *c, size_t *n, size_t k, float *tmp)
{
    for (size_t i = 0; i < *n; i++)
        tmp[i] = c[i].s;
    float t = kth_largest(tmp, *n, k);
    size_t above = 0, m = 0, nt = 0;
    for (size_t i = 0; i < *n; i++)
        above += c[i].s > t;
    /* Those above t, then the ties at t after them, the earliest positions kept. */
    for (size_t i = 0; i < *n; i++)
        if (c[i].s > t)
            c[m++] = c[i];
    for (size_t i = 0; i < *n; i++)
        if (c[i].s == t) {
            cand e = c[i];
            c[m + nt++] = e;
        }
    if (nt > k - above)
        qsort(c + m, nt, sizeof *c, cmp_pos);
    *n = k;
    return t;
}

/* q_h . u for the unit direction u of a centroid's head slice c (d floats), in float with 8 lanes. */
static float slice_dot(const float *c, const float *q, size_t d)
{
    float a[8] = {0}, b[8] = {0};
    size_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int l = 0; l < 8; l++) {
            a[l] += q[j + l] * c[j + l];
            b[l] += c[j + l] * c[j + l];
        }
    for (; j < d; j++) {
        a[0] += q[j] * c[j];
        b[0] += c[j] * c[j];
    }
    float dot = 0, nn = 0;
    for (int l = 0; l < 8; l++) {
        dot += a[l];
        nn += b[l];
    }
    return nn > 0 ? dot / sqrtf(nn) : 0.0f;
}

/* One query of a search: its tables, its probes and the state of its two stages. */
typedef struct {
    const float *q;
    qcode qc;
    qlut qt;
    size_t *probe;     /* the probed lists, best first */
    size_t got;
    uint64_t *base;    /* got: position of each probed list's first event (in probe order) */
    float *qcent;      /* got × H: q_h . u_h of each probed list */
    size_t total, keep, keep1;
    cand *buf;         /* stage 1: up to BUF_FACTOR·keep1 + G */
    float *tmp;
    size_t n;
    float thr;         /* nothing below it can enter (once n >= keep1) */
    uint64_t scored;   /* events scored: the probed lists' and the pending ones (fewer when a search stops early) */
    /* Adaptive probing (ranked searches only; section "adaptive probing" below). */
    float *pcs;        /* got: the probed lists' centroid scores, in rank order */
    double *lsum;      /* got × 3: sum and sum of squares of each probed list's stage-1 estimates, and the
                          sum of its events' squared sign-code factors (their estimates' error) */
    uint64_t *hist;    /* HIST_BINS: events of the lists not yet scanned, by centroid score */
    float hlo, hw;     /* the histogram's lowest score and bin width */
    size_t done;       /* ranks scanned */
    int stopped;       /* no more lists for this query */
    double within;     /* the largest variance of a scanned list's estimates around their mean */
    uint64_t scanned;  /* events of the scanned lists */
    cand best;         /* the best stage-1 estimate so far (total order: score, then position) */
    int has_best;
    uint32_t best4_pos;/* the candidate best4 was computed for */
    int has4;
    float best4;       /* its 4-bit estimate */
} qstate;

static void qstate_free(qstate *st)
{
    qcode_free(&st->qc);
    qlut_free(&st->qt);
    free(st->probe);
    free(st->base);
    free(st->qcent);
    free(st->buf);
    free(st->tmp);
    free(st->pcs);
    free(st->lsum);
    free(st->hist);
}

/* Stage 1 for one group of list rank i (mg valid events of G, first at position pos): the events whose
 * estimate is at or above the threshold (everything before the buffer first holds keep1; a NaN as -inf)
 * enter the buffer, tested as a bit mask (a branch per event was mispredicted often), the buffer cut back
 * to the best keep1 when full. An equal score may enter: its position decides at the cut. */
static void stage1_group(qstate *st, const float *s, size_t mg, uint64_t pos, uint32_t r0, uint32_t i,
                         unsigned char *blk, unsigned char *rb)
{
    uint32_t mask = 0;
    if (st->n < st->keep1) {
        mask = mg == G ? 0xffffffffu : (1u << mg) - 1;
    } else {
        for (size_t j = 0; j < G; j++)
            mask |= (uint32_t)(s[j] >= st->thr) << j;
        if (mg < G)
            mask &= (1u << mg) - 1;
    }
    while (mask) {
        unsigned j = (unsigned)__builtin_ctz(mask);
        mask &= mask - 1;
        st->buf[st->n++] = (cand){isnan(s[j]) ? -INFINITY : s[j], (uint32_t)(pos + j), r0 + j, i, blk, rb};
    }
    if (st->n >= BUF_FACTOR * st->keep1)
        st->thr = compact(st->buf, &st->n, st->keep1, st->tmp);
}

/* A probed list in rank order: its centroid score (NaN as -inf) and its number. */
typedef struct {
    float s;
    uint32_t c;
} lrank;

/* Higher score first, then the lower list number (a total order: the probe order is a function of the
 * scores alone). */
static int cmp_lrank(const void *a, const void *b)
{
    const lrank *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return (x->c > y->c) - (x->c < y->c);
}

/* Adaptive probing: the histogram of the centroid scores of the lists not yet scanned (qstate.hist). */
#define HIST_BINS 64

static size_t hist_bin(const qstate *st, float s)
{
    float b = (s - st->hlo) / st->hw;
    return !(b > 0) ? 0 : b >= HIST_BINS - 1 ? HIST_BINS - 1 : (size_t)b;
}

/* Prepares st for query q: tables, the probed lists from the centroid scores cs (nlist floats, empty lists
 * masked here) — in list order, or with ranked in rank order (the best first) with their scores in
 * st->pcs and room for their statistics (adaptive probing) —, positions, budgets and buffers. */
static int qstate_init(const ma_ivf *x, qstate *st, const float *q, float *cs, size_t np, size_t max_ids,
                       int ranked)
{
    st->q = q;
    st->thr = -INFINITY;
    st->probe = malloc((np + 1) * sizeof *st->probe);
    st->base = malloc((np + 1) * sizeof *st->base);
    st->qcent = malloc((np + 1) * (size_t)x->H * sizeof(float));
    if (!st->probe || !st->base || !st->qcent || qcode_make(x, q, &st->qc) != 0 || qlut_make(x, q, &st->qt) != 0)
        return MA_ENOMEM;
    if (x->nlist) {
        /* An empty list (a centroid that won no event at reassignment) is never worth a probe. */
        for (uint32_t c = 0; c < x->nlist; c++)
            if (x->lists[c].n == 0)
                cs[c] = -INFINITY;
        if (ma_topk(cs, x->nlist, np, st->probe, &st->got) != 0)
            return MA_ENOMEM;
        if (ranked) {
            lrank *lr = malloc((st->got ? st->got : 1) * sizeof *lr);
            st->pcs = malloc((st->got ? st->got : 1) * sizeof *st->pcs);
            st->lsum = calloc(3 * (st->got ? st->got : 1), sizeof *st->lsum);
            st->hist = calloc(HIST_BINS, sizeof *st->hist);
            if (!lr || !st->pcs || !st->lsum || !st->hist) {
                free(lr);
                return MA_ENOMEM;
            }
            /* Every listed event by its list's centroid score (the lists not yet scanned: round_end takes
             * the scanned ones out). */
            float lo = INFINITY, hi = -INFINITY;
            for (uint32_t c = 0; c < x->nlist; c++)
                if (x->lists[c].n && cs[c] > -INFINITY) {
                    lo = cs[c] < lo ? cs[c] : lo;
                    hi = cs[c] > hi ? cs[c] : hi;
                }
            st->hlo = lo;
            st->hw = hi > lo ? (hi - lo) / HIST_BINS : 1.0f;
            for (uint32_t c = 0; c < x->nlist; c++)
                if (x->lists[c].n && cs[c] > -INFINITY)
                    st->hist[hist_bin(st, cs[c])] += x->lists[c].n;
            for (size_t i = 0; i < st->got; i++)
                lr[i] = (lrank){isnan(cs[st->probe[i]]) ? -INFINITY : cs[st->probe[i]], (uint32_t)st->probe[i]};
            qsort(lr, st->got, sizeof *lr, cmp_lrank);
            for (size_t i = 0; i < st->got; i++) {
                st->probe[i] = lr[i].c;
                st->pcs[i] = lr[i].s;
            }
            free(lr);
        }
    }
    const size_t npend = (size_t)(x->count - x->assigned);
    st->total = 0;
    for (size_t i = 0; i < st->got; i++) {
        st->base[i] = st->total;
        st->total += x->lists[st->probe[i]].n;
        for (int h = 0; h < x->H; h++)
            st->qcent[i * (size_t)x->H + (size_t)h] =
                slice_dot(x->cent + st->probe[i] * x->D + (size_t)h * x->d, q + (size_t)h * x->d, (size_t)x->d);
    }
    st->total += npend;
    st->scored = st->total;
    st->keep = max_ids < st->total ? max_ids : st->total;
    st->keep1 = max_ids > SIZE_MAX / MA_IVF_RERANK ? SIZE_MAX : max_ids * MA_IVF_RERANK;
    if (st->keep1 > st->total)
        st->keep1 = st->total;
    size_t cap = BUF_FACTOR * st->keep1 + G + 1;
    st->buf = malloc(cap * sizeof *st->buf);
    st->tmp = malloc(cap * sizeof *st->tmp);
    return st->buf && st->tmp ? 0 : MA_ENOMEM;
}

/* ---- the mass outside the candidates (per-head searches, issue 15) ------------------------------
 *
 * With H > 1 heads the archive attends the union of the heads' candidates, and the pointer is the event of
 * largest weight summed over heads, w_h = exp(l_h - M_h) / Z_h. Each head's normaliser over the union
 * misses that head's softmax mass outside it, which with clustered keys is large and differs from head to
 * head, so the heads are reweighted in the sum. A search of one head's index (a sub-index, H = 1) estimates
 * that mass from what it has at hand (s = 1/sqrt(d), the attention's scale):
 *   * one by one, the events it re-ranked by 4-bit code (the 8·max_ids best by sign code: exp(s·estimate))
 *     and the pending events (exact);
 *   * in bulk, every list, less the events of it estimated one by one: n'·exp(s·q.mu), mu the list's mean
 *     key (what probes rank by). The mean of exp over a list is above exp of the mean (Jensen), but the
 *     events left in a probed list are those below the sign-code threshold: the two err in opposite
 *     directions, and measured, this beats both leaving the probed lists out and a per-list spread
 *     correction (docs/RESULTS.md, "Many heads: the mass outside the candidates").
 * The caller (heads_search) leaves out the events of the union (the archive attends them exactly) and
 * hands the archive log(mass) per head. The events estimated alone are summed in 64-bit fixed point
 * (order-free: a batch meets them in another order than a single search) and the lists in list order
 * with q . mu from one sgemv of the same shape in both, so single and batched reads give the same bits.
 * mass_mode (ma_ivf_set_mass_mode; benches) chooses what is estimated. */

static int mass_mode = MA_IVF_MASS_DEFAULT;

void ma_ivf_set_mass_mode(int mode)
{
    mass_mode = mode;
}

int ma_ivf_mass_mode(void)
{
    return mass_mode;
}

typedef struct {
    uint64_t *id;      /* the events estimated one by one ... */
    float *s;          /* ... and their estimates of q . k (unscaled) */
    size_t n, cap;
    uint32_t *kc;      /* nlist: how many of each list's events are among them (NULL: mode without bulk) */
    float *cs;         /* nlist: q . mu of each list (scratch) */
    double *ex;        /* nlist: each list's exponent (scratch) */
    double bm, bz;     /* the lists' bulk mass: bz·exp(bm) (bz = 0: none) */
} mass_part;

/* The bulk term of a query st (after its candidates were recorded in mp->kc): per list, the events not
 * estimated one by one, n'·exp(s·q.mu) (probed lists left out with MA_IVF_MASS_UNPROBED); summed with
 * their maximum factored out, in list order. */
static void mass_bulk(const ma_ivf *x, const qstate *st, mass_part *mp)
{
    mp->bm = -INFINITY;
    mp->bz = 0;
    const size_t NL = x->nlist, d = (size_t)x->d;
    if (!NL || !x->kmean || !mp->kc || mass_mode == MA_IVF_MASS_ALONE)
        return;
    const double sc = 1.0 / sqrt((double)d);
    /* q . mu of every list: the same sgemv alone or in a batch (the batch's probes come from an sgemm,
     * whose bits may differ). */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)NL, (int)d, 1.0f, x->kmean, (int)d, st->q, 1, 0.0f, mp->cs, 1);
    if (mass_mode == MA_IVF_MASS_UNPROBED)
        for (size_t i = 0; i < st->got; i++)
            mp->kc[st->probe[i]] = UINT32_MAX;   /* marks a probed list: left out */
    double m = -INFINITY;
    for (size_t c = 0; c < NL; c++) {
        mp->ex[c] = -INFINITY;
        if (mp->kc[c] == UINT32_MAX || x->lists[c].n <= mp->kc[c])
            continue;
        mp->ex[c] = sc * (double)mp->cs[c];
        if (mp->ex[c] > m)
            m = mp->ex[c];
    }
    if (m == -INFINITY)
        return;
    double z = 0;
    for (size_t c = 0; c < NL; c++)
        if (mp->ex[c] > -INFINITY)
            z += (double)(x->lists[c].n - mp->kc[c]) * exp(mp->ex[c] - m);
    mp->bm = m;
    mp->bz = z;
}

/* The pending events (exactly), the last cut, stage 2 (the candidates re-ranked by their 4-bit codes,
 * pending ones keeping their exact score) and the answer. s: room for the pending events' scores. */
static int qstate_finish(const ma_ivf *x, qstate *st, float *s, uint64_t *ids, size_t *n_ids, uint64_t *scored,
                         mass_part *mp)
{
    const size_t npend = (size_t)(x->count - x->assigned);
    if (npend && st->keep1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)npend, (int)x->D, 1.0f, x->pend, (int)x->D, st->q, 1, 0.0f, s,
                    1);
        uint64_t pos = st->total - npend;
        for (size_t j0 = 0; j0 < npend; j0 += G) {
            size_t mg = npend - j0 < G ? npend - j0 : G;
            float sg[G];
            for (size_t j = 0; j < G; j++)
                sg[j] = j < mg ? s[j0 + j] : -INFINITY;
            stage1_group(st, sg, mg, pos + j0, (uint32_t)j0, 0, NULL, NULL);
        }
    }
    if (st->n > st->keep1)
        (void)compact(st->buf, &st->n, st->keep1, st->tmp);

    cand *fin = malloc((st->keep ? st->keep : 1) * sizeof *fin);
    if (!fin)
        return MA_ENOMEM;
    for (size_t i = 0; i < st->n; i++)
        if (st->buf[i].blk) {
            const cand *c = &st->buf[i];
            __builtin_prefetch(blk_codes(x, c->rb) + c->r * x->cb);
            __builtin_prefetch(blk_scale(x, c->rb) + c->r * (size_t)x->H);
            __builtin_prefetch(blk_ids(x, c->rb) + c->r);
            __builtin_prefetch(grp_alpha(x, c->blk, c->r / G) + c->r % G * (size_t)x->H);
        }
    size_t nf = 0;
    for (size_t i = 0; i < st->n; i++) {
        cand c = st->buf[i];
        if (c.blk) {
            float v = code4_score(x, c.blk, c.rb, c.r, &st->qc, st->qcent + (size_t)c.pi * (size_t)x->H);
            c.s = isnan(v) ? -INFINITY : v;
        }
        if (mp && c.blk && mp->n < mp->cap) {   /* a listed stage-2 candidate: estimated alone */
            mp->id[mp->n] = blk_ids(x, c.rb)[c.r];
            mp->s[mp->n++] = c.s;
            if (mp->kc)
                mp->kc[st->probe[c.pi]]++;
        }
        if (nf == st->keep && !worse(&fin[0], &c))
            continue;
        heap_put(fin, &nf, st->keep, c);
    }
    if (mp) {
        for (size_t j = 0; j < npend && st->keep1 && mp->n < mp->cap; j++) {   /* the pending: exact */
            mp->id[mp->n] = x->assigned + j;
            mp->s[mp->n++] = isnan(s[j]) ? -INFINITY : s[j];
        }
        mass_bulk(x, st, mp);
    }
    for (size_t i = 0; i < nf; i++)
        ids[i] = fin[i].blk ? blk_ids(x, fin[i].rb)[fin[i].r] : x->assigned + fin[i].r;
    free(fin);
    if (sort_ids(ids, nf) != 0)
        return MA_ENOMEM;
    *n_ids = nf;
    if (scored)
        *scored = st->scored;
    return 0;
}

/* Requests the group records of every block of list l (the scan is bound by memory latency: lists are
 * chains of blocks spread over the arenas). */
static void prefetch_list(const ma_ivf *x, const ivlist *l)
{
    const size_t rec = LB / G * grp_bytes(x);
    for (size_t b = 0; b < l->nblk; b++)
        for (size_t o = 0; o < rec && o < PF_LINES * 64; o += 64)
            __builtin_prefetch(l->blk[b] + o);
}

/* ---- adaptive probing (issue 15) ---------------------------------------------------------------

A fixed probe count scans a tenth of the lists for every query, though a query near a key usually finds
it in the first lists and everything it scans after that only confirms it. With MA_IVF_ADAPTIVE a search
of an index of one head scans its probed lists in rank order (the best centroid score first), in rounds
of STOP_ROUND lists, and from the round that completes a quarter of its probes (STOP_MIN_DIV) asks after
each round whether an event of the lists not yet scanned could still beat the best one found:

  * the best found: the event of the highest stage-1 estimate so far, re-estimated from its 4-bit code,
    less STOP_SIGMAS standard errors of that code (the residual's quantisation step and the query's int8
    step, as uniform errors);
  * what an unscanned event can reach: its list's centroid score plus a deviation, modelled as Gaussian
    with the largest spread this query saw in a list it scanned (the variance of the list's stage-1
    estimates around their mean, less STOP_NOISE of the variance the sign codes' own error would add for
    a Gaussian residual, STOP_NOISE_VAR·f²·|q_perp|² an event);
  * the unscanned events are counted in a histogram of their lists' centroid scores (HIST_BINS bins, each
    bin's events taken at its upper edge, at most the next list's score); the search stops when the
    expected number of unscanned events above the best, sum over bins of events · Φ̄(z), is at most
    STOP_EPS, and at least MA_IVF_RERANK·max_ids events were scanned (stage 2 gets its full set).

Why the floor of a quarter: with clustered keys the first round's lists can all be narrower along q than
a sibling list further down that holds the full read's pointer (measured at 2^17 events: stopping after
the first round lost 0.012–0.016 of recall at cosines 1.0–0.8; with the floor nothing at 2^18).

Everything the rule reads is a function of the query and the index (the lists' sums are per list, in
order; the rounds are the same whatever the batch), so the decision is deterministic and a batch decides
for each query what the query alone decides: a batch runs the same rounds, each round's lists of every
query still scanning visited list by list. Per-head indexes (H > 1) keep the fixed count: their union of
candidates also carries each head's softmax mass, which stopping at the first head's pointer would thin. */
#define STOP_ROUND  8
#ifndef STOP_EPS
#define STOP_EPS    1e-3
#endif
#define STOP_SIGMAS 3.0
#ifndef STOP_MIN_DIV
#define STOP_MIN_DIV 4
#endif
#ifndef STOP_NOISE
#define STOP_NOISE  0.75
#endif
#define STOP_NOISE_VAR 0.3634   /* (π/2 − 1)·2/π: a Gaussian residual's sign-code error variance, per f²·|q|² */

/* Adaptive probing, during the scan: the group's estimates s (mg valid, first at position pos) added to
 * probed list i's sums and to the best so far. */
static void track_group(qstate *st, const float *s, const float *fac, size_t mg, uint64_t pos, uint32_t r0,
                        uint32_t i, unsigned char *blk, unsigned char *rb)
{
    double sum = 0, sq = 0, ff = 0;
    size_t bj = 0;
    float bs = -INFINITY;
    for (size_t j = 0; j < mg; j++) {
        double v = isfinite(s[j]) ? s[j] : 0.0;
        sum += v;
        sq += v * v;
        ff += (double)fac[j] * fac[j];
        if (s[j] > bs) {
            bs = s[j];
            bj = j;
        }
    }
    st->lsum[3 * i] += sum;
    st->lsum[3 * i + 1] += sq;
    st->lsum[3 * i + 2] += ff;
    cand c = {bs, (uint32_t)(pos + bj), r0 + (uint32_t)bj, i, blk, rb};
    if (bs > -INFINITY && (!st->has_best || worse(&st->best, &c))) {
        st->best = c;
        st->has_best = 1;
    }
}

/* Adaptive probing, after a round: ranks [st->done, r1) scanned; folds their sums and decides whether the
 * query stops (section above). */
static void round_end(const ma_ivf *x, qstate *st, size_t r1)
{
    double qn2 = 0;
    for (int j = 0; j < x->d; j++)
        qn2 += (double)st->q[j] * st->q[j];
    for (size_t i = st->done; i < r1; i++) {
        const size_t nl = x->lists[st->probe[i]].n;
        const double n = (double)nl, sum = st->lsum[3 * i], sq = st->lsum[3 * i + 1];
        if (nl) {
            /* The deviations of the list's estimates, less the part the sign codes' own error explains
             * (STOP_NOISE of its expected variance, STOP_NOISE_VAR·f²·|q_perp|² an event for a Gaussian
             * residual), never below a quarter of what was seen. */
            const double qc = st->qcent[i], qp2 = qn2 - qc * qc > 0 ? qn2 - qc * qc : 0;
            double dev = sq - sum * sum / n, noise = STOP_NOISE * STOP_NOISE_VAR * qp2 * st->lsum[3 * i + 2];
            dev = dev - noise > 0.25 * dev ? dev - noise : 0.25 * dev;
            if (dev / n > st->within)
                st->within = dev / n;
            size_t b = hist_bin(st, st->pcs[i]);
            st->hist[b] -= st->hist[b] < nl ? st->hist[b] : nl;
        }
        st->scanned += nl;
    }
    st->done = r1;
    if (r1 >= st->got) {
        st->stopped = 1;
        return;
    }
    if (!st->has_best || st->scanned < st->keep1 || st->scanned < 2 || r1 * STOP_MIN_DIV < st->got)
        return;
    const cand *b = &st->best;
    if (!st->has4 || st->best4_pos != b->pos) {
        st->best4 = code4_score(x, b->blk, b->rb, b->r, &st->qc, st->qcent + (size_t)b->pi);
        st->best4_pos = b->pos;
        st->has4 = 1;
    }
    const double ks = blk_scale(x, b->rb)[b->r], qs = st->qc.qs[0];
    /* The 4-bit code's error: per dimension the residual within ±ks/2 (times q_j) and the query within
     * ±qs/2 (times the residual, |r_j| <= 7.5·ks). */
    const double se = sqrt((qn2 * ks * ks + (double)x->d * 56.25 * ks * ks * qs * qs) / 12.0);
    const double lb = (double)st->best4 - STOP_SIGMAS * se;
    const double sd = sqrt(st->within);
    const double next = st->pcs[r1];
    if (!(sd > 0) || !(lb > next))
        return;
    /* Expected unscanned events above lb: per bin of centroid scores its events times the Gaussian tail
     * from the bin's upper edge (at most the next list's score). */
    double expect = 0;
    for (size_t bi = HIST_BINS; bi-- > 0;) {
        if (!st->hist[bi])
            continue;
        double top = (double)st->hlo + (double)(bi + 1) * st->hw;
        if (top > next)
            top = next;
        const double z = (lb - top) / sd;
        if (z > 9)
            break;   /* this bin and those below add less than 1e-19 an event */
        expect += (double)st->hist[bi] * 0.5 * erfc(z * 0.70710678118654752440);
        if (expect > STOP_EPS)
            return;
    }
    st->stopped = 1;
    st->scored = st->scanned + (x->count - x->assigned);
}

/* A (list, query, rank) pair of a round, visited in list order. */
typedef struct {
    uint32_t c;
    uint32_t k;
    uint32_t i;
} lvisit;

static int cmp_lvisit(const void *a, const void *b)
{
    const lvisit *x = a, *y = b;
    if (x->c != y->c)
        return (x->c > y->c) - (x->c < y->c);
    return (x->k > y->k) - (x->k < y->k);
}

/* The adaptive scan of nq queries (their probes in rank order): rounds of STOP_ROUND ranks of every query
 * still scanning, each round's lists visited in list order, each group scored for every query probing the
 * list. 0 or MA_ENOMEM. */
static int scan_adaptive(const ma_ivf *x, qstate *st, size_t nq)
{
    lvisit *v = malloc((nq ? nq : 1) * STOP_ROUND * sizeof *v);
    if (!v)
        return MA_ENOMEM;
    for (size_t r0 = 0;; r0 += STOP_ROUND) {
        size_t nv = 0;
        for (size_t k = 0; k < nq; k++) {
            qstate *qk = &st[k];
            if (qk->stopped || !qk->keep1 || r0 >= qk->got)
                continue;
            for (size_t i = r0; i < qk->got && i < r0 + STOP_ROUND; i++)
                v[nv++] = (lvisit){(uint32_t)qk->probe[i], (uint32_t)k, (uint32_t)i};
        }
        if (nv == 0)
            break;
        qsort(v, nv, sizeof *v, cmp_lvisit);
        for (size_t a = 0; a < nv && a < PF_AHEAD; a++)
            if (a == 0 || v[a].c != v[a - 1].c)
                prefetch_list(x, &x->lists[v[a].c]);
        for (size_t a = 0; a < nv;) {
            size_t e = a;
            while (e < nv && v[e].c == v[a].c)
                e++;
            /* Prefetch the list PF_AHEAD distinct lists ahead. */
            for (size_t f = e, seen = 0; f < nv && seen < PF_AHEAD; f++)
                if (v[f].c != v[f - 1].c && ++seen == PF_AHEAD)
                    prefetch_list(x, &x->lists[v[f].c]);
            const ivlist *l = &x->lists[v[a].c];
            for (size_t b0 = 0; b0 < l->n; b0 += LB) {
                unsigned char *blk = l->blk[b0 / LB];
                const size_t m = l->n - b0 < LB ? l->n - b0 : LB;
                for (size_t g0 = 0; g0 < m; g0 += G) {
                    const size_t mg = m - g0 < G ? m - g0 : G;
                    for (size_t t = a; t < e; t++) {
                        qstate *qk = &st[v[t].k];
                        const size_t i = v[t].i;
                        float sg[G];
                        score_group(x, blk, g0 / G, &qk->qt, qk->qcent + i * (size_t)x->H, sg);
                        stage1_group(qk, sg, mg, qk->base[i] + b0 + g0, (uint32_t)g0, (uint32_t)i, blk,
                                     l->rst[b0 / LB]);
                        track_group(qk, sg, grp_fac(x, blk, g0 / G), mg, qk->base[i] + b0 + g0, (uint32_t)g0,
                                    (uint32_t)i, blk, l->rst[b0 / LB]);
                    }
                }
            }
            a = e;
        }
        for (size_t k = 0; k < nq; k++) {
            qstate *qk = &st[k];
            if (qk->stopped || !qk->keep1 || r0 >= qk->got)
                continue;
            round_end(x, qk, qk->got < r0 + STOP_ROUND ? qk->got : r0 + STOP_ROUND);
            if (prof_on)
                prof_lists += qk->done - r0;
        }
    }
    free(v);
    return 0;
}

int ma_ivf_search(const ma_ivf *x, const float *q, int nprobe, size_t max_ids, uint64_t *ids, size_t *n_ids,
                  uint64_t *scored)
{
    return ma_ivf_search_mass(x, q, 1, nprobe, max_ids, 0, ids, n_ids, scored, NULL);
}

/* ma_ivf_search_mass of an index that is not per-head; flags as there (MA_IVF_ADAPTIVE: one head only);
 * mp (NULL, or nq parts with room) gets each query's outside-mass parts (per-head searches ask their
 * sub-indexes so). */
static int search_lists(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, unsigned flags,
                        uint64_t *ids, size_t *n_ids, uint64_t *scored, mass_part *mp)
{
    if (x->broken)
        return MA_EIO;
    const int adaptive = (flags & MA_IVF_ADAPTIVE) && x->H == 1 && x->nlist > 0;
    const size_t D = x->D, NL = x->nlist;
    int rc = MA_ENOMEM;
    size_t np = nprobe < 1 ? 1 : (size_t)nprobe;
    if (np > NL)
        np = NL;
    const size_t npend = (size_t)(x->count - x->assigned);
    double t0 = prof_on ? prof_now() : 0, t1 = 0, t2 = 0;
    qstate *st = calloc(nq ? nq : 1, sizeof *st);
    float *cs = malloc((nq ? nq : 1) * (NL + 1) * sizeof(float));
    float *s = malloc((npend > G ? npend : G) * sizeof(float));
    size_t *cnt = NULL, *qr = NULL;
    if (!st || !cs || !s)
        goto done;

    /* Probes: the lists whose mean key has the largest inner product with the query (the lists are made
     * by direction, but attention ranks by q . k, norms included), one sgemv (one query) or one sgemm (a
     * batch). Before the first add after a restore there are no means and no listed events. */
    const float *pm = x->kmean ? x->kmean : x->cent;
    if (NL) {
        if (nq == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)NL, (int)D, 1.0f, pm, (int)D, Q, 1, 0.0f, cs, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)NL, (int)D, 1.0f, Q, (int)D, pm, (int)D,
                        0.0f, cs, (int)(NL + 1));
    }
    for (size_t k = 0; k < nq; k++)
        if ((rc = qstate_init(x, &st[k], Q + k * D, cs + k * (NL + 1), np, max_ids, adaptive)) != 0)
            goto done;
    rc = MA_ENOMEM;
    if (prof_on)
        t1 = prof_now();

    if (adaptive) {
        if ((rc = scan_adaptive(x, st, nq)) != 0)
            goto done;
        rc = MA_ENOMEM;
    } else if (nq == 1) {
        /* One query: its lists in probe order (the best first, so the threshold rises early). */
        qstate *q0 = &st[0];
        for (size_t i = 0; i < q0->got && i < PF_AHEAD; i++)
            prefetch_list(x, &x->lists[q0->probe[i]]);
        for (size_t i = 0; i < q0->got && q0->keep1; i++) {
            const ivlist *l = &x->lists[q0->probe[i]];
            if (i + PF_AHEAD < q0->got)
                prefetch_list(x, &x->lists[q0->probe[i + PF_AHEAD]]);
            for (size_t b0 = 0; b0 < l->n; b0 += LB) {
                unsigned char *blk = l->blk[b0 / LB];
                const size_t m = l->n - b0 < LB ? l->n - b0 : LB;
                for (size_t g0 = 0; g0 < m; g0 += G) {
                    float sg[G];
                    score_group(x, blk, g0 / G, &q0->qt, q0->qcent + i * (size_t)x->H, sg);
                    stage1_group(q0, sg, m - g0 < G ? m - g0 : G, q0->base[i] + b0 + g0, (uint32_t)g0, (uint32_t)i, blk,
                                 l->rst[b0 / LB]);
                }
            }
        }
    } else {
        /* A batch: list by list, each group's codes scanned for every query probing the list while they
         * are in cache (a list is read once per batch, not once per query). */
        cnt = calloc(NL + 1, sizeof *cnt);
        size_t tot = 0;
        for (size_t k = 0; k < nq; k++)
            tot += st[k].got;
        qr = malloc((tot ? tot : 1) * sizeof *qr);   /* (query, rank) pairs by list: k·np + i */
        if (!cnt || !qr)
            goto done;
        for (size_t k = 0; k < nq; k++)
            for (size_t i = 0; i < st[k].got; i++)
                cnt[st[k].probe[i] + 1]++;
        for (size_t c = 0; c < NL; c++)
            cnt[c + 1] += cnt[c];
        for (size_t k = 0; k < nq; k++)
            for (size_t i = 0; i < st[k].got; i++)
                qr[cnt[st[k].probe[i]]++] = k * np + i;
        for (size_t c = NL; c > 0; c--)   /* cnt[c] is now the start of list c */
            cnt[c] = cnt[c - 1];
        cnt[0] = 0;
        for (size_t c = 0; c < NL; c++) {
            const ivlist *l = &x->lists[c];
            if (cnt[c] == cnt[c + 1])
                continue;
            for (size_t c2 = c + 1; c2 < NL && c2 < c + 1 + PF_AHEAD; c2++)
                if (cnt[c2] != cnt[c2 + 1])
                    prefetch_list(x, &x->lists[c2]);
            for (size_t b0 = 0; b0 < l->n; b0 += LB) {
                unsigned char *blk = l->blk[b0 / LB];
                const size_t m = l->n - b0 < LB ? l->n - b0 : LB;
                for (size_t g0 = 0; g0 < m; g0 += G)
                    for (size_t e = cnt[c]; e < cnt[c + 1]; e++) {
                        qstate *qk = &st[qr[e] / np];
                        size_t i = qr[e] % np;
                        float sg[G];
                        if (!qk->keep1)
                            continue;
                        score_group(x, blk, g0 / G, &qk->qt, qk->qcent + i * (size_t)x->H, sg);
                        stage1_group(qk, sg, m - g0 < G ? m - g0 : G, qk->base[i] + b0 + g0, (uint32_t)g0, (uint32_t)i,
                                     blk, l->rst[b0 / LB]);
                    }
            }
        }
    }

    if (prof_on)
        t2 = prof_now();
    for (size_t k = 0; k < nq; k++)
        if ((rc = qstate_finish(x, &st[k], s, ids + k * max_ids, &n_ids[k], scored ? &scored[k] : NULL,
                                mp ? &mp[k] : NULL)) != 0)
            goto done;
    if (prof_on) {
        double t3 = prof_now();
        prof_t[0] += t1 - t0;
        prof_t[1] += t2 - t1;
        prof_t[2] += t3 - t2;
        prof_n += nq;
        for (size_t k = 0; k < nq; k++) {
            prof_ev += st[k].scored;
            if (!adaptive)
                prof_lists += st[k].got;
        }
    }
    rc = 0;
done:
    for (size_t k = 0; st && k < nq; k++)
        qstate_free(&st[k]);
    free(st);
    free(cs);
    free(s);
    free(cnt);
    free(qr);
    return rc;
}

/* ---- per-head indexes (H > 1, issue 15) -------------------------------------------------------- */

/* With H > 1 heads, one index over the concatenated directions ranks events by sum_h q_h . k_h, so every
 * head shares one candidate set: with clustered keys at H = 8 the event the full read points at was often
 * not among them (recall 0.32). In per-head mode head h has its own index (sub[h]: one head of d, its own
 * k-means, lists, codes and probes), built at the same build points with the same build numbers; a search
 * asks every head's index with that head's query and answers the union of their ids. The caller attends
 * the union exactly with every head (core/archive.c). A row holds the H heads' rows one after the other:
 * lists H·BLOCK u32 (head-major), codes H·BLOCK records of one head. Every step below is the one-head step
 * run per head through adapters that cut a head's slice out of the keys (loader) or out of a stored row. */

/* A loader of head h's keys (n·d floats) over the caller's loader of all heads (n·H·d). */
typedef struct {
    ma_ivf_loader load;
    void *ctx;
    int H, d, h;
    float *buf;           /* BLOCK·H·d */
    const float *pend;    /* events [pend_first, ...) already read, all heads (restore: the pending keys) */
    uint64_t pend_first;
} head_loader;

static int head_load(void *ctx, uint64_t first, size_t n, float *k)
{
    head_loader *l = ctx;
    const size_t D = (size_t)l->H * l->d, d = (size_t)l->d;
    if (l->pend && first >= l->pend_first) {
        for (size_t i = 0; i < n; i++)
            memcpy(k + i * d, l->pend + (first - l->pend_first + i) * D + (size_t)l->h * d, d * sizeof(float));
        return 0;
    }
    for (size_t i0 = 0; i0 < n; i0 += BLOCK) {
        size_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        int rc = l->load(l->ctx, first + i0, m, l->buf);
        if (rc)
            return rc;
        for (size_t i = 0; i < m; i++)
            memcpy(k + (i0 + i) * d, l->buf + i * D + (size_t)l->h * d, d * sizeof(float));
    }
    return 0;
}

/* A row source of head h's rows over the caller's source of per-head rows. */
typedef struct {
    const ma_ivf_rows *rows;
    int H, h;
    size_t rb;             /* one head's record */
    ma_ivf_row_fn each;    /* during a scan: the head index's callback */
    void *arg;
} head_rows;

static int head_row(void *arg, uint64_t block, const void *lists, size_t ll, const void *codes, size_t cl)
{
    head_rows *r = arg;
    if (ll != (size_t)BLOCK * 4 * (size_t)r->H || (codes && cl != (size_t)BLOCK * r->rb * (size_t)r->H))
        return MA_ECORRUPT;   /* not a per-head row (a row of the shared layout, or damaged) */
    return r->each(r->arg, block, (const unsigned char *)lists + (size_t)r->h * BLOCK * 4, (size_t)BLOCK * 4,
                   codes ? (const unsigned char *)codes + (size_t)r->h * BLOCK * r->rb : NULL,
                   codes ? (size_t)BLOCK * r->rb : 0);
}

static int head_scan(void *ctx, uint32_t build, uint64_t first, uint64_t n, int with_codes, ma_ivf_row_fn each,
                     void *arg)
{
    head_rows *r = ctx;
    r->each = each;
    r->arg = arg;
    return r->rows->scan(r->rows->ctx, build, first, n, with_codes, head_row, r);
}

static void heads_free(ma_ivf *x)
{
    for (int h = 0; x->sub && h < x->H; h++)
        ma_ivf_destroy(x->sub[h]);
    free(x->sub);
    x->sub = NULL;
}

/* Room for n kept rows of H heads in x's outbox. 0 or MA_ENOMEM (nothing lost). */
static int heads_out_reserve(ma_ivf *x, size_t n)
{
    if (n <= x->out_cap)
        return 0;
    size_t cap = x->out_cap ? 2 * x->out_cap : 4;
    while (cap < n)
        cap *= 2;
    unsigned char *l = realloc(x->out_lists, cap * BLOCK * 4 * (size_t)x->H);
    if (!l)
        return MA_ENOMEM;
    x->out_lists = l;
    unsigned char *c = realloc(x->out_codes, cap * BLOCK * rec_bytes(x));
    if (!c)
        return MA_ENOMEM;
    x->out_codes = c;
    x->out_cap = cap;
    return 0;
}

/* The heads' kept rows (all alike in number, first block and build) into x's outbox, a row's heads one
 * after the other. The room must have been reserved. */
static void heads_gather(ma_ivf *x)
{
    const ma_ivf *s0 = x->sub[0];
    const size_t rb = rec_head(s0), H = (size_t)x->H;
    x->out_n = s0->out_n;
    x->out_first = s0->out_first;
    x->out_build = s0->out_build;
    for (size_t k = 0; k < x->out_n; k++)
        for (size_t h = 0; h < H; h++) {
            memcpy(x->out_lists + (k * H + h) * BLOCK * 4, x->sub[h]->out_lists + k * BLOCK * 4, (size_t)BLOCK * 4);
            memcpy(x->out_codes + (k * H + h) * BLOCK * rb, x->sub[h]->out_codes + k * BLOCK * rb, (size_t)BLOCK * rb);
        }
}

static void heads_rows_done(ma_ivf *x)
{
    for (int h = 0; h < x->H; h++)
        ma_ivf_rows_done(x->sub[h]);
}

/* One head's keys of n events (n·H·d floats at k) into out (n·d). */
static void head_slice(const ma_ivf *x, const float *k, size_t n, int h, float *out)
{
    const size_t d = (size_t)x->d;
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * d, k + i * x->D + (size_t)h * d, d * sizeof(float));
}

/* ma_ivf_add per head. The kept rows' room is reserved first and a head's add fails only for want of
 * memory before it changes anything; a failure of a later head than the first leaves the heads apart, so
 * the index is then broken (MA_EIO from then on; the caller discards it). */
static int heads_add(ma_ivf *x, size_t n, const float *k)
{
    const ma_ivf *s0 = x->sub[0];
    size_t nb = s0->cent ? (size_t)((s0->count - s0->assigned + n) / BLOCK) : 0;
    if (x->keep_rows && heads_out_reserve(x, x->out_n + nb) != 0)
        return MA_ENOMEM;
    float *kh = malloc(n * (size_t)x->d * sizeof(float));
    if (!kh)
        return MA_ENOMEM;
    int rc = 0;
    for (int h = 0; h < x->H && !rc; h++) {
        head_slice(x, k, n, h, kh);
        if ((rc = ma_ivf_add(x->sub[h], n, kh)) != 0 && h > 0)
            x->broken = 1;
    }
    free(kh);
    if (rc)
        return rc;
    x->count += n;
    if (x->keep_rows)
        heads_gather(x);
    return 0;
}

static int heads_train(int H, int d, uint64_t point, uint32_t build_no, ma_ivf_loader load, void *ctx,
                       const atomic_int *stop, ma_ivf_build **out)
{
    int rc = MA_ENOMEM;
    ma_ivf_build *b = calloc(1, sizeof *b);
    float *X = NULL, *B = NULL;
    if (!b || !(b->shape = alloc_ivf(H, d)) || !(b->sub = calloc((size_t)H, sizeof *b->sub)))
        goto fail;
    const size_t D = b->shape->D, dd = (size_t)d;
    const uint64_t T = point;
    uint32_t nlist;
    size_t m;
    ma_ivf_train_size(T, &nlist, &m);
    b->point = point;
    b->build_no = build_no;
    b->nlist = nlist;
    for (int h = 0; h < H; h++) {
        ma_ivf_build *s = b->sub[h] = calloc(1, sizeof *s);
        if (!s || !(s->shape = alloc_ivf(1, d)) || !(s->cent = malloc((size_t)nlist * dd * sizeof(float))))
            goto fail;
        s->point = point;
        s->build_no = build_no;
        s->nlist = nlist;
    }
    X = malloc(m * D * sizeof(float));   /* head h's sample at X + h·m·d */
    B = malloc((size_t)BLOCK * D * sizeof(float));
    if (!X || !B)
        goto fail;

    /* One pass over [0, T): the sample of ma_ivf_train (the same selection), every head's direction. */
    uint64_t rng = 0x6d656d6174746e00ull ^ point;
    size_t got = 0;
    for (uint64_t first = 0; first < T && got < m; first += BLOCK) {
        size_t n = T - first < BLOCK ? (size_t)(T - first) : BLOCK;
        if ((rc = load(ctx, first, n, B)) != 0)
            goto fail;
        for (size_t i = 0; i < n && got < m; i++)
            if (below(&rng, T - first - i) < m - got) {
                for (int h = 0; h < H; h++)
                    direction(b->sub[h]->shape, B + i * D + (size_t)h * dd, X + ((size_t)h * m + got) * dd);
                got++;
            }
    }
    /* k-means per head, each from its own generator (the sampling's, then the head's number mixed in). */
    for (int h = 0; h < H; h++) {
        uint64_t r = rng ^ (0x9e3779b97f4a7c15ull * (uint64_t)(h + 1));
        if ((rc = kmeans(b->sub[h]->shape, X + (size_t)h * m * dd, m, nlist, b->sub[h]->cent, &r, stop)) != 0)
            goto fail;
    }
    free(X);
    free(B);
    *out = b;
    return 0;
fail:
    free(X);
    free(B);
    ma_ivf_build_free(b);
    return rc;
}

static int heads_encode(ma_ivf_build *b, const float *keys, size_t n_blocks, void *lists, void *codes)
{
    const ma_ivf *x = b->shape;
    const size_t H = (size_t)x->H, rb = rec_head(x);
    if (!b->hk && !(b->hk = malloc((size_t)BLOCK * (size_t)x->d * sizeof(float))))
        return MA_ENOMEM;
    for (size_t k = 0; k < n_blocks; k++)
        for (size_t h = 0; h < H; h++) {
            head_slice(x, keys + k * BLOCK * x->D, BLOCK, (int)h, b->hk);
            int rc = ma_ivf_build_encode(b->sub[h], b->hk, 1, (unsigned char *)lists + (k * H + h) * BLOCK * 4,
                                         (unsigned char *)codes + (k * H + h) * BLOCK * rb);
            if (rc)
                return rc;
        }
    return 0;
}

/* x (shared layout, H > 1) turned into H heads of count events, nothing listed, its pending keys
 * [assigned, count) split by head, its counters kept: what a per-head build is then adopted into. The old
 * lists are not freed here. 0 or MA_ENOMEM (x unchanged). */
static int heads_from_shared(ma_ivf *x)
{
    const size_t np = (size_t)(x->count - x->assigned), cap = np > PEND_MIN ? np : PEND_MIN;
    if (heads_make(x) != 0)
        return MA_ENOMEM;
    for (int h = 0; h < x->H; h++) {
        ma_ivf *s = x->sub[h];
        if (!(s->pend = malloc(cap * (size_t)x->d * sizeof(float)))) {
            heads_free(x);
            return MA_ENOMEM;
        }
        s->pend_cap = cap;
        head_slice(x, x->pend, np, h, s->pend);
        s->count = x->count;
        s->assigned = x->assigned;
        s->builds = x->builds;
        s->built_at = x->built_at;
        s->keep_rows = x->keep_rows;
    }
    return 0;
}

/* ma_ivf_adopt of a per-head build: each head adopts its own (through its slice of the rows and keys). A
 * shared index (stored before issue 15) becomes per-head here: its lists are dropped (before the heads'
 * lists are made) and its pending keys split. A failure after the first head has changed leaves the index
 * broken (MA_EIO from then on; the caller discards it; in the daemon every adopt is low_memory). */
static int heads_adopt(ma_ivf *x, ma_ivf_build *b, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx,
                       int low_memory)
{
    if (!b->sub || b->shape->H != x->H || b->shape->d != x->d || b->build_no <= x->builds || b->point > x->count ||
        x->broken || !load)
        return MA_EINVAL;
    const int converted = !x->sub;
    if (converted && heads_from_shared(x) != 0)
        return MA_ENOMEM;
    int rc = MA_ENOMEM;
    head_loader hl = {load, ctx, x->H, x->d, 0, malloc((size_t)BLOCK * x->D * sizeof(float)), NULL, 0};
    if (!hl.buf) {
        if (converted)
            heads_free(x);
        return MA_ENOMEM;
    }
    if (converted) {
        /* The shared lists go first: old and new lists are never both held. The kept rows of the old
         * build are of no use any more (the outbox's rows are laid out per head from now on). */
        drop_lists(x);
        free(x->cent);
        free(x->kmean);
        free(x->pend);
        free(x->out_lists);
        free(x->out_codes);
        x->cent = x->kmean = x->pend = NULL;
        x->out_lists = x->out_codes = NULL;
        x->pend_cap = x->out_cap = x->out_n = 0;
        x->assigned = 0;
    }
    for (int h = 0; h < x->H; h++) {
        head_rows hr = {rows, x->H, h, rec_head(x->sub[h]), NULL, NULL};
        ma_ivf_rows sr = {head_scan, &hr};
        hl.h = h;
        if ((rc = ma_ivf_adopt(x->sub[h], b->sub[h], rows ? &sr : NULL, head_load, &hl, low_memory)) != 0) {
            if (h > 0 || converted || low_memory)
                x->broken = 1;
            free(hl.buf);
            return rc;
        }
    }
    free(hl.buf);
    x->builds = b->build_no;
    x->built_at = b->point;
    if (x->keep_rows) {
        if (heads_out_reserve(x, x->sub[0]->out_n) != 0) {
            x->broken = 1;   /* the rows the caller must persist would be lost */
            return MA_ENOMEM;
        }
        heads_gather(x);
    }
    return 0;
}

static int heads_restore_lists(ma_ivf *x, uint64_t count, const ma_ivf_rows *rows, ma_ivf_loader load, void *ctx)
{
    /* The pending keys are read once, for every head. */
    const uint64_t A = x->sub[0]->nlist ? count / BLOCK : 0;
    const size_t np = (size_t)(count - A * BLOCK);
    float *pend = malloc((np ? np : 1) * x->D * sizeof(float));
    head_loader hl = {load, ctx, x->H, x->d, 0, malloc((size_t)BLOCK * x->D * sizeof(float)), pend, A * BLOCK};
    int rc = MA_ENOMEM;
    if (!hl.buf || !pend)
        goto done;
    for (size_t i = 0; i < np; i += BLOCK)
        if ((rc = load(ctx, A * BLOCK + i, np - i < BLOCK ? np - i : BLOCK, pend + i * x->D)) != 0)
            goto done;
    rc = MA_ENOMEM;
    for (int h = 0; h < x->H; h++) {
        head_rows hr = {rows, x->H, h, rec_head(x->sub[h]), NULL, NULL};
        ma_ivf_rows sr = {head_scan, &hr};
        hl.h = h;
        if ((rc = ma_ivf_restore_lists(x->sub[h], count, rows ? &sr : NULL, head_load, &hl)) != 0)
            goto done;
    }
    rc = MA_ENOMEM;
    if (x->keep_rows && heads_out_reserve(x, x->sub[0]->out_n) != 0)
        goto done;
    x->count = count;
    if (x->keep_rows)
        heads_gather(x);
    rc = 0;
done:
    free(pend);
    free(hl.buf);
    return rc;
}

/* The union of a query's candidates as an open-addressing set (a binary search per candidate cost as
 * much as the rest of the estimate). slots: a power of two >= 2·n, each an id + 1 (0: empty). */
static void idset_fill(uint64_t *slot, size_t cap, const uint64_t *u, size_t n)
{
    memset(slot, 0, cap * sizeof *slot);
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)((u[i] * 0x9e3779b97f4a7c15ull) >> 20) & (cap - 1);
        while (slot[h])
            h = (h + 1) & (cap - 1);
        slot[h] = u[i] + 1;
    }
}

static bool idset_has(const uint64_t *slot, size_t cap, uint64_t id)
{
    size_t h = (size_t)((id * 0x9e3779b97f4a7c15ull) >> 20) & (cap - 1);
    for (; slot[h]; h = (h + 1) & (cap - 1))
        if (slot[h] == id + 1)
            return true;
    return false;
}

/* The outside mass of head h for a query whose union of candidates is the set (slot, cap): its events
 * estimated alone that are not in the union (expf of each relative to the largest, in 64-bit fixed point
 * with 2^-40 of the largest: any order gives the same sum) plus its lists' bulk; log of it in the
 * attention's logit units (-inf: nothing outside). The union's events are struck out of mp (their
 * estimates set to -inf). */
static double mass_outside(mass_part *mp, const uint64_t *slot, size_t cap, float sc)
{
    float im = -INFINITY;
    for (size_t i = 0; i < mp->n; i++) {
        mp->s[i] = idset_has(slot, cap, mp->id[i]) ? -INFINITY : sc * mp->s[i];
        im = mp->s[i] > im ? mp->s[i] : im;
    }
    uint64_t fx = 0;
    if (im > -INFINITY)
        for (size_t i = 0; i < mp->n; i++)
            fx += (uint64_t)ldexpf(expf(mp->s[i] - im), 40);   /* expf(-inf) = 0 */
    double iz = ldexp((double)fx, -40), M = (double)im > mp->bm ? (double)im : mp->bm;
    if (M == -INFINITY)
        return -INFINITY;
    double z = (iz > 0 ? iz * exp((double)im - M) : 0) + (mp->bz > 0 ? mp->bz * exp(mp->bm - M) : 0);
    return z > 0 ? M + log(z) : -INFINITY;
}

/* Every head's search of its own query (the batch's head-h slices: one sgemm of centroid scores and one
 * scan per head), then per query the union of the heads' ids, ascending, each once; with lse, per query
 * and head the log of the estimated mass outside the union (mass_outside). */
static int heads_search(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, uint64_t *ids,
                        size_t *n_ids, uint64_t *scored, double *lse)
{
    const size_t H = (size_t)x->H, cap = H * max_ids, d = (size_t)x->d, nqa = nq ? nq : 1;
    const int want = lse && mass_mode != MA_IVF_MASS_OFF;
    int rc = MA_ENOMEM;
    float *Qh = malloc(nqa * d * sizeof(float));
    uint64_t *hid = malloc(nqa * (max_ids ? max_ids : 1) * sizeof *hid);
    uint64_t *hsc = malloc(nqa * sizeof *hsc);
    size_t *hn = malloc(nqa * sizeof *hn);
    mass_part *mp = NULL;
    uint64_t *mid = NULL;
    float *ms = NULL;
    uint32_t *kc = NULL;
    float *cs = NULL;
    double *ex = NULL;
    size_t mcap = 0, NL = 0, setcap = 16;
    uint64_t *set = NULL;   /* a query's union as a set (mass_outside) */
    while (setcap < 2 * cap)
        setcap *= 2;
    if (!Qh || !hid || !hsc || !hn)
        goto done;
    if (want) {
        /* Room per (head, query) for the events estimated alone: the stage-2 candidates and the pending. */
        size_t npend = 0;
        for (size_t h = 0; h < H; h++) {
            size_t p = (size_t)(x->sub[h]->count - x->sub[h]->assigned);
            npend = p > npend ? p : npend;
            NL = x->sub[h]->nlist > NL ? x->sub[h]->nlist : NL;
        }
        mcap = (max_ids > SIZE_MAX / MA_IVF_RERANK / 2 ? SIZE_MAX / 4 : max_ids * MA_IVF_RERANK) + npend;
        if (!(mp = calloc(H * nqa, sizeof *mp)) || !(mid = malloc(H * nqa * mcap * sizeof *mid)) ||
            !(ms = malloc(H * nqa * mcap * sizeof *ms)) || !(kc = malloc(nqa * (NL + 1) * sizeof *kc)) ||
            !(cs = malloc(nqa * (NL + 1) * sizeof *cs)) || !(ex = malloc(nqa * (NL + 1) * sizeof *ex)) ||
            !(set = malloc(setcap * sizeof *set)))
            goto done;
    }
    for (size_t k = 0; k < nq; k++) {
        n_ids[k] = 0;
        if (scored)
            scored[k] = 0;
    }
    for (size_t h = 0; h < H; h++) {
        mass_part *mh = want ? mp + h * nqa : NULL;
        if (mh) {
            memset(kc, 0, nqa * (NL + 1) * sizeof *kc);
            for (size_t k = 0; k < nq; k++)
                mh[k] = (mass_part){.id = mid + (h * nqa + k) * mcap, .s = ms + (h * nqa + k) * mcap, .cap = mcap,
                                    .kc = kc + k * (NL + 1), .cs = cs + k * (NL + 1), .ex = ex + k * (NL + 1),
                                    .bm = -INFINITY};
        }
        head_slice(x, Q, nq, (int)h, Qh);
        if ((rc = search_lists(x->sub[h], Qh, nq, nprobe, max_ids, 0, hid, hn, hsc, mh)) != 0)
            goto done;
        for (size_t k = 0; k < nq; k++) {
            memcpy(ids + k * cap + n_ids[k], hid + k * max_ids, hn[k] * sizeof *ids);
            n_ids[k] += hn[k];
            if (scored)
                scored[k] += hsc[k];
        }
    }
    rc = MA_ENOMEM;
    for (size_t k = 0; k < nq; k++) {
        uint64_t *a = ids + k * cap;
        if (sort_ids(a, n_ids[k]) != 0)
            goto done;
        size_t u = 0;
        for (size_t i = 0; i < n_ids[k]; i++)
            if (u == 0 || a[i] != a[u - 1])
                a[u++] = a[i];
        n_ids[k] = u;
        if (want)
            idset_fill(set, setcap, a, u);
        for (size_t h = 0; lse && h < H; h++)
            lse[k * H + h] = want ? mass_outside(&mp[h * nqa + k], set, setcap, 1.0f / sqrtf((float)d)) : -INFINITY;
    }
    rc = 0;
done:
    free(Qh);
    free(hid);
    free(hsc);
    free(hn);
    free(mp);
    free(mid);
    free(ms);
    free(kc);
    free(cs);
    free(ex);
    free(set);
    return rc;
}

int ma_ivf_search_batch(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, uint64_t *ids,
                        size_t *n_ids, uint64_t *scored)
{
    return ma_ivf_search_mass(x, Q, nq, nprobe, max_ids, 0, ids, n_ids, scored, NULL);
}

int ma_ivf_search_mass(const ma_ivf *x, const float *Q, size_t nq, int nprobe, size_t max_ids, unsigned flags,
                       uint64_t *ids, size_t *n_ids, uint64_t *scored, double *lse)
{
    if (x->broken)
        return MA_EIO;
    if (x->sub)
        return heads_search(x, Q, nq, nprobe, max_ids, ids, n_ids, scored, lse);
    for (size_t k = 0; lse && k < nq * (size_t)x->H; k++)
        lse[k] = -INFINITY;
    return search_lists(x, Q, nq, nprobe, max_ids, flags, ids, n_ids, scored, NULL);
}

/* ---- tests ----------------------------------------------------------------------------------- */

int ma_ivf_debug_estimates(const ma_ivf *x, const float *q, uint64_t *ids, uint32_t *list, float *est1,
                           float *est4, size_t *n)
{
    if (x->sub)
        return MA_EINVAL;
    int rc = MA_ENOMEM;
    qcode qc = {0};
    qlut qt = {0};
    float *qcent = malloc((size_t)x->H * sizeof(float)), s[G];
    if (!qcent || qcode_make(x, q, &qc) != 0 || qlut_make(x, q, &qt) != 0)
        goto done;
    size_t m = 0;
    for (uint32_t c = 0; c < x->nlist; c++) {
        const ivlist *l = &x->lists[c];
        for (int h = 0; h < x->H; h++)
            qcent[h] = slice_dot(x->cent + (size_t)c * x->D + (size_t)h * x->d, q + (size_t)h * x->d, (size_t)x->d);
        for (size_t j = 0; j < l->n; j++) {
            unsigned char *b = l->blk[j / LB], *rb = l->rst[j / LB];
            size_t r = j % LB;
            if (r % G == 0)
                score_group(x, b, r / G, &qt, qcent, s);
            ids[m] = blk_ids(x, rb)[r];
            list[m] = c;
            est1[m] = s[r % G];
            est4[m] = code4_score(x, b, rb, r, &qc, qcent);
            m++;
        }
    }
    *n = m;
    rc = 0;
done:
    qcode_free(&qc);
    qlut_free(&qt);
    free(qcent);
    return rc;
}

const float *ma_ivf_debug_centroid(const ma_ivf *x, uint32_t c)
{
    return !x->sub && c < x->nlist ? x->cent + (size_t)c * x->D : NULL;
}

/* ---- serialisation --------------------------------------------------------------------------- */

/* A core/blob.h blob of kind "IVFX" with one section "CENT" v1: u32 H, d, nlist, builds | u64 built_at |
 * centroids (nlist·H·d f32). Legacy format (read, never written): magic "MAIVFV2\0", u32 version 2, the
 * CENT fields, u64 FNV-1a 64 of everything before, in host order (little-endian on every machine the
 * project ran on). */
#define LEGACY_MAGIC   "MAIVFV2\0"
#define LEGACY_VERSION 2u
#define BLOB_KIND      MA_BLOB_TAG("IVFX")

int ma_ivf_serialize(const ma_ivf *x, void **buf, size_t *len)
{
    ma_blob_writer w;
    ma_blob_begin(&w, BLOB_KIND);
    if (x->sub) {
        const uint32_t nlist = x->sub[0]->nlist;
        ma_blob_section_begin(&w, MA_BLOB_TAG("HEAD"), 1);
        ma_blob_put_u32(&w, (uint32_t)x->H);
        ma_blob_put_u32(&w, (uint32_t)x->d);
        ma_blob_put_u32(&w, nlist);
        ma_blob_put_u32(&w, x->builds);
        ma_blob_put_u64(&w, x->built_at);
        for (int h = 0; h < x->H; h++)
            ma_blob_put_f32s(&w, x->sub[h]->cent, (size_t)nlist * x->d);
        ma_blob_section_end(&w);
        return ma_blob_finish(&w, buf, len);
    }
    ma_blob_section_begin(&w, MA_BLOB_TAG("CENT"), 1);
    ma_blob_put_u32(&w, (uint32_t)x->H);
    ma_blob_put_u32(&w, (uint32_t)x->d);
    ma_blob_put_u32(&w, x->nlist);
    ma_blob_put_u32(&w, x->builds);
    ma_blob_put_u64(&w, x->built_at);
    ma_blob_put_f32s(&w, x->cent, (size_t)x->nlist * x->D);
    ma_blob_section_end(&w);
    return ma_blob_finish(&w, buf, len);
}

/* Opens either format; c then reads the CENT fields. */
static int open_cent(const void *buf, size_t len, ma_blob_reader *c)
{
    ma_blob_reader r;
    if (ma_blob_is_blob(buf, len))
        return ma_blob_open(&r, buf, len, BLOB_KIND) || ma_blob_section(&r, MA_BLOB_TAG("CENT"), 1, c) ||
                       ma_blob_done(&r) ? MA_ECORRUPT : 0;
    const unsigned char *b = buf;
    if (len < 8 + 4 + 8 || memcmp(b, LEGACY_MAGIC, 8) != 0)
        return MA_ECORRUPT;
    ma_blob_reader_raw(&r, b + len - 8, 8);
    if (ma_blob_get_u64(&r) != ma_fnv1a64(b, len - 8))
        return MA_ECORRUPT;
    ma_blob_reader_raw(c, b + 8, len - 16);
    return ma_blob_get_u32(c) == LEGACY_VERSION ? 0 : MA_ECORRUPT;
}

/* The per-head blob's section HEAD v1 (u32 H, d, nlist, builds | u64 built_at | H × nlist·d f32, head
 * after head), or MA_ENOTFOUND when buf is not a per-head blob. */
static int restore_heads(int H, int d, const void *buf, size_t len, ma_ivf **out)
{
    ma_blob_reader r, c;
    if (!ma_blob_is_blob(buf, len) || ma_blob_open(&r, buf, len, BLOB_KIND) ||
        ma_blob_section(&r, MA_BLOB_TAG("HEAD"), 1, &c))
        return MA_ENOTFOUND;
    uint32_t h = ma_blob_get_u32(&c), dd = ma_blob_get_u32(&c), nlist = ma_blob_get_u32(&c),
             builds = ma_blob_get_u32(&c);
    uint64_t built_at = ma_blob_get_u64(&c);
    if (ma_blob_done(&r) || c.bad || H < 2 || h != (uint32_t)H || dd != (uint32_t)d || (nlist == 0) != (builds == 0) ||
        (nlist == 0) != (built_at == 0) || (nlist && built_at < MA_IVF_MIN_BUILD) ||
        ma_blob_remaining(&c) != (size_t)H * nlist * (size_t)d * sizeof(float))
        return MA_ECORRUPT;
    ma_ivf *x = alloc_ivf(H, d);
    if (!x || heads_make(x) != 0) {
        free(x);
        return MA_ENOMEM;
    }
    x->builds = builds;
    x->built_at = built_at;
    for (int k = 0; k < H; k++) {
        ma_ivf *s = x->sub[k];
        s->builds = builds;
        s->built_at = built_at;
        if (!nlist)
            continue;
        if (!(s->cent = malloc((size_t)nlist * d * sizeof(float))) || !(s->lists = calloc(nlist, sizeof *s->lists))) {
            ma_ivf_destroy(x);
            return MA_ENOMEM;
        }
        s->nlist = nlist;
        ma_blob_get_f32s(&c, s->cent, (size_t)nlist * d);
    }
    *out = x;
    return 0;
}

int ma_ivf_restore(int H, int d, const void *buf, size_t len, ma_ivf **out)
{
    if (!buf || !out || H < 1 || d < 1 || d > MA_IVF_MAX_D)
        return MA_EINVAL;
    int rh = restore_heads(H, d, buf, len, out);
    if (rh != MA_ENOTFOUND)
        return rh;
    ma_blob_reader c;
    if (open_cent(buf, len, &c))
        return MA_ECORRUPT;
    uint32_t h = ma_blob_get_u32(&c), dd = ma_blob_get_u32(&c), nlist = ma_blob_get_u32(&c),
             builds = ma_blob_get_u32(&c);
    uint64_t built_at = ma_blob_get_u64(&c);
    const size_t D = (size_t)H * d;
    /* A build always leaves centroids, and happens at MA_IVF_MIN_BUILD events or more. */
    if (c.bad || h != (uint32_t)H || dd != (uint32_t)d || (nlist == 0) != (builds == 0) ||
        (nlist == 0) != (built_at == 0) || (nlist && built_at < MA_IVF_MIN_BUILD) ||
        ma_blob_remaining(&c) != (size_t)nlist * D * sizeof(float))
        return MA_ECORRUPT;

    ma_ivf *x = alloc_ivf(H, d);
    if (!x)
        return MA_ENOMEM;
    x->builds = builds;
    x->built_at = built_at;
    /* A shared blob of H > 1 heads (before issue 15): never built, nothing to keep — per-head at once;
     * built, its index is kept (the shared layout) until its next build, which is per head. */
    if (H > 1 && !nlist && !legacy_shared && heads_make(x) != 0) {
        ma_ivf_destroy(x);
        return MA_ENOMEM;
    }
    if (nlist) {
        x->cent = malloc((size_t)nlist * D * sizeof(float));
        x->lists = calloc(nlist, sizeof *x->lists);
        if (!x->cent || !x->lists) {
            ma_ivf_destroy(x);
            return MA_ENOMEM;
        }
        x->nlist = nlist;
        ma_blob_get_f32s(&c, x->cent, (size_t)nlist * D);
    }
    *out = x;
    return 0;
}
