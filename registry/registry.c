/*
 * registry/registry.c — the session registry (see registry/registry.h for the design).
 *
 * Data structures: a chained hash table id -> reg_session and a doubly linked LRU list (most recently
 * released at the head), both under reg_registry.mu. A reg_session is created in the map before it is
 * loaded; its own load_mu serialises the load so parallel readers wait for one load instead of doing
 * two. Sessions unloaded by the budget or dropped as stale are unlinked under mu and destroyed after mu
 * is released (destroying a large session frees a lot of memory; nobody should wait for that).
 *
 * The commit queue (reg_commit_queue). A FIFO of serialised changes under cmu, written by one commit thread
 * (started on first use, joined by reg_destroy after the queue drained). The thread takes every change queued
 * (up to GROUP_MAX) and writes them in one store transaction (ma_store_commit_group): one fsync for all of
 * them, and of several changes of one session only the last copy of each state blob (the slot version rows of
 * every change are written: rows are increments, not state). A change's slot versions are marked saved when
 * it is queued (note_stored). Each queued change holds a reference to its session and counts in its
 * `pending`; a failed group marks every session in it stale and unlinks it from the map (the next acquire
 * loads the stored state), and a change of a session already stale fails without being written (it was
 * applied on top of a change that is not stored). reg_commit and reg_delete wait for a session's pending
 * changes first, so the store sees one session's changes in the order they were made. The commit thread never
 * takes a session's gate: a queued change's reference is dropped without it (release_ref, from_queue).
 *
 * Background index builds (end of the file): one maintenance thread (registry/maint.c) runs index_job for
 * a session whose commit left a build due: it reads what it needs under the session's gate held
 * exclusively (view), trains and stages the new build's rows from the store without holding anything of
 * the session (the old index keeps answering; events appended meanwhile are listed by the old build and
 * staged for the new one in later passes), makes the new index from the staged rows beside the old one
 * and grows it with the blocks committed since (catch_up; still without the session), then swaps under
 * the gate held exclusively: the archive adds the last events (a few blocks) to the new index and takes
 * it (ma_archive_index_swap), one commit of the new archive meta and those blocks' rows, release; then
 * frees the old index and drops the old build's rows. Old and new lists are both held from the new
 * index's making to the swap (docs/ARCHIVE.md, "Memory during a build"), so the new index is made beside
 * only when the budget holds it, and is then reserved in the registry's count until the old one is freed
 * (reserve_beside); otherwise the build is adopted in place under the gate (swap_in_place), its counts and
 * sums prepared before (ma_ivf_build_prepare). Both swaps run on the maintenance module's gate thread at
 * normal priority (reg_maint_urgent), not on the niced build thread: every job of the session waits.
 */
#include "registry/registry.h"

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/hash.h"
#include "core/ivf.h"
#include "registry/maint.h"
#include "registry/purge.h"
#include "registry/pager.h"
#include "registry/params_text.h"
#include "store/store.h"

struct reg_session {
    char id[MA_MAX_NAME + 1];
    reg_registry *reg;
    ma_params params;
    ma_session *core;           /* NULL until loaded */
    int64_t created_at, updated_at;
    size_t bytes;               /* what it counts against the budget (under reg->mu): its resident bytes as
                                   last measured, at least its footprint; while it loads, the footprint
                                   reserved for it */
    size_t footprint;           /* ma_session_footprint of its params and chunk cache (0: not known yet) */
    bool blobs_stored;          /* the store row holds all three blobs (else the next commit writes all) */
    bool stale;                 /* in-memory state may differ from the store: drop at last release */
    bool linked;                /* in the map and LRU list */
    bool paged;                 /* archive chunks released to the store since the last append */
    bool emptied;               /* unused since its chunk cache was last emptied (budget remedy 1) */
    size_t cache_chunks;        /* this session's archive chunk cache (bounded by the budget) */
    reg_pager pager;            /* the archive's chunks and the events' payloads, from the store */
    int refs;                   /* under reg->mu */
    int pending;                /* changes in the commit queue (under reg->mu; pending_cv) */
    pthread_rwlock_t gate;      /* held shared by every job from acquire to release, exclusively by the
                                   maintenance thread (index builds: snapshot and swap) */
    pthread_mutex_t load_mu;    /* serialises loading */
    reg_session *hnext;         /* hash chain */
    reg_session *prev, *next;   /* LRU list */
};

struct reg_registry {
    reg_options opt;
    reg_commit_fn on_commit;    /* reg_observe_commits, under obs: the commit and maintenance threads call it
                                   while the server may unset it at shutdown */
    void *on_commit_ctx;
    pthread_rwlock_t obs;       /* held shared while on_commit runs, exclusively to change it */
    pthread_mutex_t mu;
    reg_session **buckets;
    size_t nbuckets, count;
    reg_session *lru_head, *lru_tail;
    size_t bytes;               /* sum of bytes of linked sessions */
    size_t loaded;
    uint64_t loads, unloads;
    uint64_t paged_out_bytes;   /* archive bytes dropped by budget remedy 1 */
    size_t untrimmed;           /* bytes freed since the last malloc_trim */
    atomic_uint_fast64_t chunk_loads;   /* chunks read back from the store (any thread, no lock) */
    atomic_uint_fast64_t queue_groups, queue_changes;   /* commit queue transactions and their changes */
    char (*frozen)[MA_MAX_NAME + 1];    /* ids frozen for a move (reg_freeze), under mu */
    size_t nfrozen, capfrozen;
    pthread_cond_t pending_cv;  /* (with mu) a session's pending count dropped */
    /* the commit queue, under cmu */
    pthread_mutex_t cmu;
    pthread_cond_t cwork;       /* an entry was queued, or stop */
    struct qentry *qhead, *qtail;
    bool cstarted, cstop;
    pthread_t cthread;
    reg_maint *maint;                   /* background index builds (index_job) */
    reg_purge *purge;                   /* deleted sessions' rows, purged in the background (NULL: read-only) */
    atomic_uint_fast64_t index_builds, index_builds_in_place, index_build_failures;
};

static void index_job(void *ctx, const char *id, const atomic_int *cancel);

static uint64_t hash_id(const char *s)
{
    return ma_fnv1a64(s, strlen(s));
}

int reg_create(const reg_options *o, reg_registry **out)
{
    reg_registry *r;
    if (!o || !o->store)
        return MA_EINVAL;
    if (!(r = calloc(1, sizeof *r)))
        return MA_ENOMEM;
    r->opt = *o;
    if (r->opt.cache_chunks < 1)
        r->opt.cache_chunks = 1;
    if (r->opt.idem_keys == 0)
        r->opt.idem_keys = REG_IDEM_KEYS;
    if (r->opt.idem_window_ms <= 0)
        r->opt.idem_window_ms = REG_IDEM_WINDOW_MS;
    r->nbuckets = 256;
    if (!(r->buckets = calloc(r->nbuckets, sizeof *r->buckets))) {
        free(r);
        return MA_ENOMEM;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_rwlock_init(&r->obs, NULL);
    pthread_cond_init(&r->pending_cv, NULL);
    pthread_mutex_init(&r->cmu, NULL);
    pthread_cond_init(&r->cwork, NULL);
    int prc = 0;
    if (reg_maint_create(index_job, r, &r->maint) != 0 ||
        (!ma_store_readonly(o->store) && (prc = reg_purge_create(o->store, 0, &r->purge)) != 0)) {
        if (prc)   /* the maintenance thread was started */
            reg_maint_destroy(r->maint);
        pthread_cond_destroy(&r->cwork);
        pthread_mutex_destroy(&r->cmu);
        pthread_cond_destroy(&r->pending_cv);
        pthread_rwlock_destroy(&r->obs);
        pthread_mutex_destroy(&r->mu);
        free(r->buckets);
        free(r);
        return MA_ENOMEM;
    }
    *out = r;
    return 0;
}

static void session_free(reg_session *s)
{
    if (!s)
        return;
    ma_session_destroy(s->core);
    pthread_mutex_destroy(&s->load_mu);
    pthread_rwlock_destroy(&s->gate);
    free(s);
}

/* ---- map and LRU (caller holds mu) ----------------------------------------------------------- */

static reg_session *find(reg_registry *r, const char *id)
{
    for (reg_session *s = r->buckets[hash_id(id) % r->nbuckets]; s; s = s->hnext)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static void lru_unlink(reg_registry *r, reg_session *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        r->lru_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        r->lru_tail = s->prev;
    s->prev = s->next = NULL;
}

static void lru_push_front(reg_registry *r, reg_session *s)
{
    s->prev = NULL;
    s->next = r->lru_head;
    if (r->lru_head)
        r->lru_head->prev = s;
    r->lru_head = s;
    if (!r->lru_tail)
        r->lru_tail = s;
}

static void grow(reg_registry *r)
{
    size_t n = r->nbuckets * 2;
    reg_session **b = calloc(n, sizeof *b);
    if (!b)
        return;  /* longer chains, still correct */
    for (size_t i = 0; i < r->nbuckets; i++)
        for (reg_session *s = r->buckets[i], *nx; s; s = nx) {
            nx = s->hnext;
            size_t j = hash_id(s->id) % n;
            s->hnext = b[j];
            b[j] = s;
        }
    free(r->buckets);
    r->buckets = b;
    r->nbuckets = n;
}

static void link_session(reg_registry *r, reg_session *s)
{
    if (r->count >= 2 * r->nbuckets)
        grow(r);
    size_t i = hash_id(s->id) % r->nbuckets;
    s->hnext = r->buckets[i];
    r->buckets[i] = s;
    lru_push_front(r, s);
    s->linked = true;
    r->count++;
}

static bool over_budget(const reg_registry *r)
{
    return r->opt.memory_budget && r->bytes > r->opt.memory_budget;
}

/* Removes s from map and list (not freed). */
static void unlink_session(reg_registry *r, reg_session *s)
{
    reg_session **pp = &r->buckets[hash_id(s->id) % r->nbuckets];
    while (*pp && *pp != s)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = s->hnext;
    lru_unlink(r, s);
    s->linked = false;
    r->count--;
    r->bytes -= s->bytes;
    if (s->core) {
        r->loaded--;
        r->unloads++;
    }
}

/* The in-memory s is ahead of the store (a failed commit): it is dropped at its last release, and taken
 * out of the map now so that the next acquire loads the stored state. Caller holds mu. */
static void mark_stale_locked(reg_registry *r, reg_session *s)
{
    s->stale = true;
    if (s->linked)
        unlink_session(r, s);
}

static reg_session *session_new(reg_registry *r, const char *id)
{
    reg_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->id, sizeof s->id, "%s", id);
    s->reg = r;
    pthread_mutex_init(&s->load_mu, NULL);
    /* Writer-preferring: the maintenance thread's swap is not starved by a stream of reads. No job
     * acquires the session it already holds, so a waiting writer never blocks a nested read. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->gate, &ra);
    pthread_rwlockattr_destroy(&ra);
    return s;
}

/* s->params is set: the pager reads this session's chunks and payloads (counted in r->chunk_loads). */
static void pager_init(reg_registry *r, reg_session *s)
{
    reg_pager_init(&s->pager, r->opt.store, s->id, &s->params, &r->chunk_loads);
}

static size_t measure(ma_session *core)
{
    return ma_session_bytes(core);   /* cheap: called under mu at every release */
}

/* The chunk cache of one session of s->params: the configured cache_chunks, but at most an eighth of the
 * budget, so that the caches of the sessions that fit cannot by themselves exceed it (each read may still
 * use more entries for its duration; they are freed when it ends). At least one chunk. */
static size_t cache_chunks_for(const reg_registry *r, const ma_params *p)
{
    size_t n = r->opt.cache_chunks;
    if (r->opt.memory_budget) {
        size_t chunk_bytes = (size_t)p->chunk * (size_t)p->heads * (size_t)(p->dim + p->value_dim) * sizeof(float);
        size_t fit = r->opt.memory_budget / 8 / chunk_bytes;
        if (fit < n)
            n = fit ? fit : 1;
    }
    return n;
}

/* What a loaded session counts against the budget: what it holds, and never less than its fixed
 * footprint (what it may come to hold without growing: the slot table fills, the last chunk fills, the
 * chunk cache fills), so that the sessions admitted under the budget cannot outgrow it by using what they
 * were admitted with. */
static size_t charge(const reg_session *s, ma_session *core)
{
    size_t bytes = measure(core);
    return bytes > s->footprint ? bytes : s->footprint;
}

/* Re-measures the resident bytes of s (caller holds mu; s is loaded and not being mutated). */
static void remeasure(reg_registry *r, reg_session *s)
{
    size_t bytes = charge(s, s->core);
    if (s->linked)
        r->bytes = r->bytes - s->bytes + bytes;
    s->bytes = bytes;
}

static bool freed(reg_registry *r, size_t bytes);
static void free_dropped(reg_session *drop, bool trim);

/* s->params is set: its chunk cache and fixed footprint (what admit() reserves). */
static void size_session(reg_registry *r, reg_session *s, ma_footprint *parts)
{
    s->cache_chunks = cache_chunks_for(r, &s->params);
    s->footprint = ma_session_footprint(&s->params, s->cache_chunks, parts);
}

/* Admission under the budget, before session s (s->footprint known) is created or loaded: reserves its
 * footprint in r->bytes — in s->bytes too when s is in the map (a load), else the caller hands the
 * reservation to s when it links it (a create) — so that parallel admissions cannot together exceed the
 * budget. Makes room by unloading unused sessions, least recently used first (freed before the new session
 * allocates anything). MA_ETOOBIG when the footprint alone exceeds the budget; MA_EBUSY when the sessions in
 * use by running jobs leave no room (the caller answers 503 with Retry-After). Without a budget it only
 * reserves. */
static int admit(reg_registry *r, reg_session *s, const ma_footprint *parts, char *err, size_t errlen)
{
    const size_t budget = r->opt.memory_budget, need = s->footprint;
    reg_session *drop = NULL;
    bool trim = false, ok;
    size_t busy;
    if (budget && need > budget) {
        snprintf(err, errlen, "session %s needs %zu bytes of memory (its fixed footprint: backbone %zu, slot "
                 "table at capacity %zu, archive %zu) but the memory budget (--memory) is %zu bytes", s->id, need,
                 parts->backbone, parts->slots, parts->archive, budget);
        return MA_ETOOBIG;
    }
    pthread_mutex_lock(&r->mu);
    for (reg_session *c = r->lru_tail, *prev; budget && c && r->bytes + need > budget; c = prev) {
        prev = c->prev;
        if (c == s || c->refs > 0 || !c->core)
            continue;
        unlink_session(r, c);
        trim |= freed(r, c->bytes);
        c->hnext = drop;
        drop = c;
    }
    busy = r->bytes;
    ok = !budget || busy + need <= budget;
    if (ok) {
        r->bytes += need;
        if (s->linked)
            s->bytes += need;
    }
    pthread_mutex_unlock(&r->mu);
    free_dropped(drop, trim);
    if (!ok) {
        snprintf(err, errlen, "session %s needs %zu bytes of memory; %zu of the memory budget's %zu bytes are "
                 "held by sessions that running requests use; retry in a moment", s->id, need, busy, budget);
        return MA_EBUSY;
    }
    return 0;
}

/* Gives back what admit() reserved for s when its create or load failed (s->bytes for a session in the map,
 * `floating` for one that is not). */
static void unadmit(reg_registry *r, reg_session *s, size_t floating)
{
    pthread_mutex_lock(&r->mu);
    if (s->linked) {
        r->bytes -= s->bytes;
        s->bytes = 0;
    } else {
        r->bytes -= floating;
    }
    pthread_mutex_unlock(&r->mu);
}

/* A fresh core for s->params (s->cache_chunks set) whose archive pages sealed chunks through the store. */
static int fresh_core(reg_session *s, ma_session **out)
{
    ma_session *core;
    int rc = ma_session_create(&s->params, &core);
    if (rc)
        return rc;
    if ((rc = ma_archive_set_source(ma_session_archive(core), reg_pager_chunks(&s->pager), s->cache_chunks)) != 0) {
        ma_session_destroy(core);
        return rc;
    }
    ma_archive_set_event_loader(ma_session_archive(core), reg_pager_event_loader());
    /* Index builds run on the maintenance thread; the index's rows are committed with the events. */
    ma_archive_set_managed(ma_session_archive(core), true);
    *out = core;
    return 0;
}

/* The archive's kept index rows as the store's (n = 0: none). */
static ma_store_index_rows index_rows_of(const reg_session *s, ma_session *core)
{
    ma_store_index_rows ir = {0};
    ir.n = ma_archive_index_rows(ma_session_archive(core), &ir.build, &ir.first, &ir.lists, &ir.codes);
    ir.lists_bytes = ma_archive_index_row_lists_bytes(ma_session_archive(core));
    ir.codes_bytes = ma_ivf_row_codes_bytes(s->params.heads, s->params.dim);
    return ir;
}

static void persist_restored_rows(reg_registry *r, reg_session *s, ma_session *core)
{
    char err[256];
    ma_store_index_rows ir = index_rows_of(s, core);
    if (ir.n && ma_store_index_put(r->opt.store, s->id, &ir, err, sizeof err) == 0)
        ma_archive_index_rows_done(ma_session_archive(core));
}

/* Loads s from the store (called with s->load_mu held, s->core NULL). */
static int load(reg_registry *r, reg_session *s, char *err, size_t errlen)
{
    ma_store_session row = {0};
    ma_session *core = NULL;
    ma_footprint parts;
    bool admitted = false;
    char why[256];
    int rc = ma_store_session_load(r->opt.store, s->id, &row, err, errlen);
    if (rc)
        return rc;
    if ((rc = reg_params_decode(row.config_json, &s->params, why, sizeof why)) != 0) {
        snprintf(err, errlen, "session %s: stored config is invalid: %s", s->id, why);
        goto done;
    }
    size_session(r, s, &parts);
    if ((rc = admit(r, s, &parts, err, errlen)) != 0)
        goto done;
    admitted = true;
    pager_init(r, s);
    if (row.backbone.len == 0) {
        /* created but never mutated: nothing to restore */
        if ((rc = fresh_core(s, &core)) != 0) {
            snprintf(err, errlen, "session %s: %s", s->id, ma_strerror(rc));
            goto done;
        }
    } else {
        s->cache_chunks = cache_chunks_for(r, &s->params);
        ma_ivf_rows rows = reg_pager_rows(&s->pager);
        ma_session_saved saved = {
            row.backbone.data, row.backbone.len, row.slots_blob.data, row.slots_blob.len,
            row.archive_meta.data, row.archive_meta.len, reg_pager_chunks(&s->pager), s->cache_chunks,
            reg_pager_payloads(&s->pager), reg_pager_slot_rows(&s->pager),
        };
        rc = ma_session_restore_rows(&s->params, &saved, &rows, &core);
        if (rc) {
            /* A page-in that failed (a damaged row, an I/O error) says which row. */
            const char *why_pg = atomic_load(&s->pager.failed) ? s->pager.err : ma_strerror(rc);
            snprintf(err, errlen, "session %s: cannot restore the stored state: %s", s->id, why_pg);
            goto done;
        }
        ma_archive_set_event_loader(ma_session_archive(core), reg_pager_event_loader());
        /* Index rows the store lacked (a session stored before index rows, or imported) were computed
         * from the events: store them now (derived data, like a build's staged rows), so the next load
         * reads them. A failure only means the next load computes them again. */
        persist_restored_rows(r, s, core);
        s->blobs_stored = true;
        s->paged = true;   /* a restored archive reads its chunks from the store on demand */
    }
    s->created_at = row.created_at;
    s->updated_at = row.updated_at;
    if (ma_archive_index_due(ma_session_archive(core), NULL, NULL))
        reg_maint_enqueue(r->maint, s->id);   /* due, or in flight when the daemon stopped: redo it */
    size_t bytes = charge(s, core);
    pthread_mutex_lock(&r->mu);
    s->core = core;
    if (s->linked) {   /* r->bytes holds the reservation, s->bytes */
        r->bytes = r->bytes - s->bytes + bytes;
        r->loaded++;
        r->loads++;
    }
    s->bytes = bytes;
    pthread_mutex_unlock(&r->mu);
    core = NULL;
done:
    ma_session_destroy(core);
    if (rc && admitted)
        unadmit(r, s, 0);
    ma_store_session_clear(&row);
    return rc;
}

/* reg_acquire, holding the session's gate shared (every job) or exclusively (the maintenance thread). */
static int acquire(reg_registry *r, const char *id, bool excl, reg_session **out, char *err, size_t errlen)
{
    reg_session *s;
    int rc = 0;

    pthread_mutex_lock(&r->mu);
    if (!(s = find(r, id))) {
        if (!(s = session_new(r, id))) {
            pthread_mutex_unlock(&r->mu);
            snprintf(err, errlen, "out of memory");
            return MA_ENOMEM;
        }
        link_session(r, s);
    }
    s->refs++;
    s->emptied = false;   /* the job may fill its chunk cache */
    pthread_mutex_unlock(&r->mu);

    if (excl)
        pthread_rwlock_wrlock(&s->gate);
    else
        pthread_rwlock_rdlock(&s->gate);
    pthread_mutex_lock(&s->load_mu);
    if (!s->core)
        rc = load(r, s, err, errlen);
    pthread_mutex_unlock(&s->load_mu);
    if (rc) {
        reg_release(r, s);  /* unloaded entries are dropped at their last release */
        return rc;
    }
    *out = s;
    return 0;
}

/* The store's record of k, stamped now, with the registry's window. */
static ma_store_idem store_idem(const reg_registry *r, const reg_idem *k, int64_t now)
{
    return (ma_store_idem){
        .scope = k->scope, .key = k->key, .fingerprint = k->fingerprint, .status = k->status, .body = k->body,
        .etag = k->etag, .location = k->location, .created_at = now, .keep = r->opt.idem_keys,
        .expire_before = now - r->opt.idem_window_ms,
    };
}

int reg_acquire(reg_registry *r, const char *id, reg_session **out, char *err, size_t errlen)
{
    return acquire(r, id, false, out, err, errlen);
}

int reg_create_session(reg_registry *r, const char *id, const ma_params *p, int64_t now, reg_session **out,
                       char *err, size_t errlen)
{
    return reg_create_session_idem(r, id, p, now, NULL, out, err, errlen);
}

int reg_create_session_idem(reg_registry *r, const char *id, const ma_params *p, int64_t now, const reg_idem *k,
                            reg_session **out, char *err, size_t errlen)
{
    reg_session *s;
    ma_store_idem ki = k ? store_idem(r, k, now) : (ma_store_idem){0};
    char *cfg_text = NULL;
    ma_footprint parts;
    size_t reserved = 0;
    int rc;

    pthread_mutex_lock(&r->mu);
    s = find(r, id);
    bool exists = s && s->core;
    pthread_mutex_unlock(&r->mu);
    if (exists) {
        snprintf(err, errlen, "session %s exists", id);
        return MA_EEXISTS;
    }
    if (!(s = session_new(r, id)))
        return MA_ENOMEM;
    s->params = *p;
    pager_init(r, s);
    s->created_at = s->updated_at = now;
    size_session(r, s, &parts);
    if ((rc = admit(r, s, &parts, err, errlen)) != 0)
        goto fail;
    reserved = s->footprint;
    if ((rc = fresh_core(s, &s->core)) != 0) {
        snprintf(err, errlen, "cannot create the session: %s", ma_strerror(rc));
        goto fail;
    }
    if (reg_params_encode(p, &cfg_text) != 0) {
        snprintf(err, errlen, "out of memory");
        rc = MA_ENOMEM;
        goto fail;
    }
    if ((rc = ma_store_session_create_idem(r->opt.store, id, cfg_text, now, k ? &ki : NULL, err, errlen)) != 0)
        goto fail;
    s->bytes = charge(s, s->core);
    s->refs = 1;
    pthread_rwlock_rdlock(&s->gate);   /* returned acquired, like reg_acquire */
    pthread_mutex_lock(&r->mu);
    /* An entry for id may be in the map without a core: a failed or concurrent load of a missing id.
     * The caller's per-id ordering means nobody uses it now; replace it. */
    reg_session *old = find(r, id);
    if (old && old->refs == 0)
        unlink_session(r, old);
    else
        old = NULL;
    link_session(r, s);
    r->bytes = r->bytes - reserved + s->bytes;   /* the reservation becomes the session's charge */
    r->loaded++;
    r->loads++;
    pthread_mutex_unlock(&r->mu);
    session_free(old);
    free(cfg_text);
    *out = s;
    return 0;
fail:
    if (reserved)
        unadmit(r, s, reserved);
    free(cfg_text);
    session_free(s);
    return rc;
}

/* Freed bytes worth a malloc_trim (which costs ~0.6 ms, up to a few ms, on this daemon's heap). */
#define TRIM_BYTES ((size_t)1 << 20)

/* Counts `bytes` freed (caller holds mu); true when the freed bytes since the last trim reach TRIM_BYTES,
 * i.e. the caller should trim after unlocking. */
static bool freed(reg_registry *r, size_t bytes)
{
    r->untrimmed += bytes;
    if (r->untrimmed < TRIM_BYTES)
        return false;
    r->untrimmed = 0;
    return true;
}

/* Frees unloaded sessions outside mu, then (trim) gives the freed memory back to the OS: glibc keeps
 * freed memory in the arena of the thread that freed it (and in the arenas of the worker threads that
 * allocated it) unless asked; without this the process's RSS would not shrink when sessions are unloaded
 * (docs/STORE.md, "Memory budget", has the numbers). */
static void free_dropped(reg_session *drop, bool trim)
{
    while (drop) {
        reg_session *n = drop->hnext;
        session_free(drop);
        drop = n;
    }
    if (trim)
        malloc_trim(0);
}

/* reg_release; from_queue: the commit thread drops a queued change's reference. That reference never
 * held the gate (a queued change outlives its job's hold), so the gate is not unlocked, and the session
 * may meanwhile be held by a job applying its next change or by the maintenance thread's swap: it is
 * re-measured only when nobody else holds it (refs reaches 0 under mu, so nobody mutates it). */
static void release_ref(reg_registry *r, reg_session *s, bool from_queue)
{
    reg_session *drop = NULL;   /* sessions to destroy after unlocking, chained through hnext */
    bool trim = false;

    if (!from_queue) {
        /* Reads fill the chunk cache of a paged archive: count what the job left resident, while its gate
         * is still held (the maintenance thread changes a session's index only with the gate held
         * exclusively). */
        pthread_mutex_lock(&r->mu);
        if (s->core && !s->stale)
            remeasure(r, s);
        pthread_mutex_unlock(&r->mu);
        pthread_rwlock_unlock(&s->gate);
    }
    pthread_mutex_lock(&r->mu);
    s->refs--;
    if (s->linked) {
        lru_unlink(r, s);
        lru_push_front(r, s);
    }
    if (s->refs == 0 && (s->stale || !s->core || !s->linked)) {
        if (s->linked)
            unlink_session(r, s);
        s->hnext = drop;
        drop = s;
    } else if (from_queue && s->refs == 0 && s->core && !s->stale) {
        remeasure(r, s);
    }
    /* Budget, cheapest remedy first. 1: page out the archive chunks of unused sessions from the cold end
     * and empty their chunk caches (every event is in the store, and the summaries and index stay, so they
     * still answer, reading chunks back on demand); done under mu so no job can acquire the session
     * meanwhile. 2: unload unused sessions from the cold end; the one just released stays loaded even if
     * alone it is over. */
    for (reg_session *c = r->lru_tail; c && over_budget(r); c = c->prev)
        if (c->refs == 0 && c->core && !c->emptied) {
            ma_archive *a = ma_session_archive(c->core);
            /* What is dropped from RAM is core's count before and after (the charge may not move: it
             * never goes below the footprint, which includes a full cache). */
            size_t held = measure(c->core);
            ma_archive_release(a);
            /* Setting the same source again empties the cache (no reader runs: refs == 0). */
            if (ma_archive_set_source(a, reg_pager_chunks(&c->pager), c->cache_chunks) == 0)
                c->emptied = true;
            c->paged = true;
            remeasure(r, c);
            size_t now_held = measure(c->core);
            if (now_held < held) {
                r->paged_out_bytes += held - now_held;
                trim |= freed(r, held - now_held);
            }
        }
    for (reg_session *c = r->lru_tail, *prev; c && over_budget(r); c = prev) {
        prev = c->prev;
        if (c == s || c->refs > 0)
            continue;
        unlink_session(r, c);
        trim |= freed(r, c->bytes);
        c->hnext = drop;
        drop = c;
    }
    pthread_mutex_unlock(&r->mu);
    free_dropped(drop, trim);
}

void reg_release(reg_registry *r, reg_session *s)
{
    release_ref(r, s, false);
}

static void unfreeze_locked(reg_registry *r, const char *id);

/* A deleted session's memory, freed on the purge thread (reg_delete_idem). */
typedef struct {
    reg_session *drop;
    bool trim;
} dropped_free;

static void free_dropped_job(void *arg)
{
    dropped_free *df = arg;
    free_dropped(df->drop, df->trim);
    free(df);
}

int reg_delete(reg_registry *r, const char *id, char *err, size_t errlen)
{
    return reg_delete_idem(r, id, NULL, 0, err, errlen);
}

int reg_delete_idem(reg_registry *r, const char *id, const reg_idem *k, int64_t now, char *err, size_t errlen)
{
    reg_session *drop = NULL, *q;
    reg_maint_cancel(r->maint, id);   /* a build of it stops at its next step */
    /* Changes of the session still in the commit queue are written (or failed) first. */
    pthread_mutex_lock(&r->mu);
    while ((q = find(r, id)) && q->pending)
        pthread_cond_wait(&r->pending_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    ma_store_idem ki = k ? store_idem(r, k, now) : (ma_store_idem){0};
    int rc = ma_store_session_delete_idem(r->opt.store, id, k ? &ki : NULL, err, errlen);
    if (rc)
        return rc;
    pthread_mutex_lock(&r->mu);
    unfreeze_locked(r, id);   /* a move ends with the delete of its source */
    reg_session *s = find(r, id);
    bool trim = false;
    if (s) {
        if (s->refs == 0) {
            unlink_session(r, s);
            trim = freed(r, s->bytes);
            drop = s;
        } else {
            s->stale = true;  /* cannot happen with per-id ordering; be safe: drop at last release */
            unlink_session(r, s);
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (drop)
        drop->hnext = NULL;
    /* Its memory is freed on the purge thread too (a loaded session's archive: O(its size), and then
     * malloc_trim), its budget share already given back above; inline if that cannot be queued. */
    dropped_free *df = drop ? malloc(sizeof *df) : NULL;
    if (df)
        *df = (dropped_free){drop, trim};
    if (df && reg_purge_defer(r->purge, free_dropped_job, df))
        drop = NULL;
    else
        free(df);
    free_dropped(drop, trim);
    reg_purge_kick(r->purge);   /* its rows go in the background (registry/purge.c) */
    return 0;
}

size_t reg_session_footprint(const reg_registry *r, const ma_params *p)
{
    return ma_session_footprint(p, cache_chunks_for(r, p), NULL);
}

const char *reg_read_error(reg_session *s)
{
    return atomic_load(&s->pager.failed) ? s->pager.err : NULL;
}

ma_session *reg_core(reg_session *s) { return s->core; }
const ma_params *reg_params(const reg_session *s) { return &s->params; }

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Tells the observer (reg_observe_commits) how long a commit took. */
static void observe(reg_registry *r, double seconds, int rc)
{
    pthread_rwlock_rdlock(&r->obs);
    if (r->on_commit)
        r->on_commit(r->on_commit_ctx, seconds, rc);
    pthread_rwlock_unlock(&r->obs);
}

/* Re-measures the resident bytes of s (after a mutation). */
static void touch_bytes(reg_registry *r, reg_session *s)
{
    pthread_mutex_lock(&r->mu);
    remeasure(r, s);
    pthread_mutex_unlock(&r->mu);
}

/* One change serialised for the store: the delta and what it owns. Filled in place by serialise() (d
 * points into it: keep it where it is until ser_free). */
typedef struct {
    ma_store_delta d;            /* blobs and slot rows owned; event arrays and idem strings borrowed from c */
    const void *blobs[3];        /* the owned blobs (d's pointers may be cleared when a later change of the
                                    same group replaces them) */
    ma_slot_row *rows;           /* the slot table's unsaved rows (their data owned) */
    size_t nrows;
    ma_store_slot_row *srows;    /* d.slot_rows: rows with their names copied into `names` (a queued change
                                    is written after the table may have changed) */
    char *names;
    void *ilists, *icodes;       /* d.index's rows, copied from the archive */
    ma_store_idem ki;            /* d.idem points here when the change carries a key */
} ser_change;

static void ser_free(ser_change *x)
{
    for (int b = 0; b < 3; b++)
        free((void *)x->blobs[b]);
    ma_slot_rows_free(x->rows, x->nrows);
    free(x->srows);
    free(x->names);
    free(x->ilists);
    free(x->icodes);
    memset(x, 0, sizeof *x);
}

/* Serialises what the core says changed in s (ma_session_changes; everything when the store row lacks
 * the blobs) into *x: the blobs of the changed parts, the slot table's state and its versions not stored
 * yet (docs/STORE.md, schema 3), c's event arrays and Idempotency-Key record borrowed. 0, or the
 * serialiser's code with err set (x then owns nothing). */
static int serialise(reg_registry *r, reg_session *s, const reg_change *c, int64_t now, ser_change *x, char *err,
                     size_t errlen)
{
    void *bb = NULL, *sl = NULL, *am = NULL;
    size_t bbl = 0, sll = 0, aml = 0;
    bool all = !s->blobs_stored;
    /* The slot table: its small state and only the versions not stored yet (docs/STORE.md). */
    ma_slots *tab = ma_session_slots(s->core);
    ma_session_change st;
    int rc = 0;

    memset(x, 0, sizeof *x);
    ma_session_changes(s->core, &st);
    if (all)
        st.parts |= MA_CHANGED_BACKBONE | MA_CHANGED_SLOTS | MA_CHANGED_INDEX;
    bool slots = st.parts & MA_CHANGED_SLOTS;
    /* The archive blob changes only at an index rebuild (MA_CHANGED_INDEX): rewritten only then. */
    if (((st.parts & MA_CHANGED_BACKBONE) &&
         (rc = ma_backbone_serialize(ma_session_backbone(s->core), &bb, &bbl)) != 0) ||
        (slots && (rc = ma_slots_serialize_state(tab, &sl, &sll)) != 0) ||
        (slots && (rc = ma_slots_unsaved(tab, &x->rows, &x->nrows)) != 0) ||
        ((st.parts & MA_CHANGED_INDEX) &&
         (rc = ma_archive_serialize_meta(ma_session_archive(s->core), &am, &aml)) != 0))
        goto fail;
    x->blobs[0] = bb;
    x->blobs[1] = sl;
    x->blobs[2] = am;
    bb = sl = am = NULL;
    if (x->nrows) {
        size_t chars = 0;
        for (size_t i = 0; i < x->nrows; i++)
            chars += strlen(x->rows[i].name) + 1;
        if (!(x->srows = malloc(x->nrows * sizeof *x->srows)) || !(x->names = malloc(chars))) {
            rc = MA_ENOMEM;
            goto fail;
        }
        char *at = x->names;
        for (size_t i = 0; i < x->nrows; i++) {
            size_t len = strlen(x->rows[i].name) + 1;
            memcpy(at, x->rows[i].name, len);
            x->srows[i] = (ma_store_slot_row){at, x->rows[i].version, x->rows[i].data, x->rows[i].len,
                                              x->rows[i].rewrite};
            at += len;
        }
    }
    if (c->idem)
        x->ki = store_idem(r, c->idem, now);
    x->d = (ma_store_delta){
        .first_event = c->first_event,
        .n_events = c->n_events,
        .k_floats = (size_t)s->params.heads * s->params.dim,
        .v_floats = (size_t)s->params.heads * s->params.value_dim,
        .k = c->k,
        .v = c->v,
        .payloads = c->payloads,
        .backbone = {x->blobs[0], bbl},
        .slots_blob = {x->blobs[1], sll},
        .archive_meta = {x->blobs[2], aml},
        .length = st.length,
        .slots = st.slots_resident,
        .updated_at = now,
        .erase = c->erase,
        .n_erase = c->n_erase,
        .slot_rows = x->srows,
        .n_slot_rows = x->nrows,
        .idem = c->idem ? &x->ki : NULL,
    };
    /* The archive's kept index rows, copied: a queued change is written after the archive moved on (they
     * are marked persisted when the change is stored or queued: note_stored). */
    ma_store_index_rows ir = index_rows_of(s, s->core);
    if (ir.n) {
        size_t lb = ir.n * ir.lists_bytes, cb = ir.n * ir.codes_bytes;
        if (!(x->ilists = malloc(lb ? lb : 1)) || !(x->icodes = malloc(cb ? cb : 1))) {
            rc = MA_ENOMEM;
            goto fail;
        }
        memcpy(x->ilists, ir.lists, lb);
        memcpy(x->icodes, ir.codes, cb);
        ir.lists = x->ilists;
        ir.codes = x->icodes;
        x->d.index = ir;
    }
    return 0;
fail:
    snprintf(err, errlen, "session %s: cannot serialise the new state: %s", s->id, ma_strerror(rc));
    free(bb);
    free(sl);
    free(am);
    ser_free(x);
    return rc;
}

/* What the session records once its change x is stored — or queued to be (reg_commit_queue): then the
 * slot versions it carries are marked saved now, because the next change of the session may be serialised
 * (and must not carry them again) before this one's group is written, and only the worker that holds the
 * session may touch its slot table; a group that fails marks the session stale (it is dropped and
 * reloaded from the store, which has none of them), and a change made after it is never written. */
static void note_stored(reg_registry *r, reg_session *s, const reg_change *c, const ser_change *x, int64_t now)
{
    s->blobs_stored = true;
    ma_session_changes_saved(s->core);   /* what serialise wrote: nothing changed since (exclusive) */
    s->updated_at = now;
    if (c->n_events)
        s->paged = false;   /* new chunks are resident; reg_release pages them out under memory pressure */
    if (x->d.index.n)
        ma_archive_index_rows_done(ma_session_archive(s->core));
    touch_bytes(r, s);
}

/* Waits until s has no change in the commit queue (caller holds a reference). */
static void wait_pending(reg_registry *r, reg_session *s)
{
    pthread_mutex_lock(&r->mu);
    while (s->pending)
        pthread_cond_wait(&r->pending_cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

int reg_commit(reg_registry *r, reg_session *s, const reg_change *c, int64_t now, char *err, size_t errlen)
{
    ser_change x;
    bool stale;
    int rc;

    wait_pending(r, s);
    pthread_mutex_lock(&r->mu);
    stale = s->stale;
    pthread_mutex_unlock(&r->mu);
    if (stale) {
        snprintf(err, errlen, "session %s: an earlier change failed to commit; this one was made after it", s->id);
        return MA_EIO;
    }
    if ((rc = serialise(r, s, c, now, &x, err, errlen)) != 0)
        goto fail;
    double t0 = now_seconds();
    rc = ma_store_commit(r->opt.store, s->id, &x.d, err, errlen);
    observe(r, now_seconds() - t0, rc);
    if (rc == 0)
        note_stored(r, s, c, &x, now);   /* the slot versions are saved only once committed */
    ser_free(&x);
    if (rc)
        goto fail;
    if (ma_archive_index_due(ma_session_archive(s->core), NULL, NULL))
        reg_maint_enqueue(r->maint, s->id);
    return 0;
fail:
    /* The in-memory session is ahead of the store: drop it at release, reload on next use. */
    pthread_mutex_lock(&r->mu);
    mark_stale_locked(r, s);
    pthread_mutex_unlock(&r->mu);
    return rc ? rc : MA_EIO;
}

/* ---- the commit queue -------------------------------------------------------------------------- */

#define GROUP_MAX 64   /* changes per group transaction (32 MiB of events at 64 batches of 1024 x 2 x 256 B) */

typedef struct qentry {
    struct qentry *next;
    reg_session *s;             /* a reference held until the change is answered */
    ser_change x;               /* the serialised change (its blobs and slot rows owned) */
    bool stale;                 /* its session was stale when its group started: not written */
    bool due;                   /* an index build of its session is due once it is stored (known when queued:
                                   the commit thread does not read the session's archive) */
    reg_committed_fn fn;
    void *ctx;
} qentry;

/* Writes the group g (n entries, in queue order) in one transaction and answers every entry. */
static void commit_group(reg_registry *r, qentry *g)
{
    const char *ids[GROUP_MAX];
    const ma_store_delta *ds[GROUP_MAX];
    qentry *live[GROUP_MAX];
    size_t m = 0;
    char err[256] = "", stale_err[256];
    int rc = 0;

    pthread_mutex_lock(&r->mu);
    for (qentry *e = g; e; e = e->next)
        e->stale = e->s->stale;
    pthread_mutex_unlock(&r->mu);
    for (qentry *e = g; e; e = e->next)
        if (!e->stale) {
            live[m] = e;
            ids[m] = e->s->id;
            ds[m++] = &e->x.d;
        }
    /* A state blob that a later change of the same session in this group writes again is not written.
     * Slot version rows are not state: every change's rows are written. */
    for (size_t i = 0; i < m; i++)
        for (size_t j = i + 1; j < m; j++)
            if (live[j]->s == live[i]->s) {
                if (live[j]->x.d.backbone.data)
                    live[i]->x.d.backbone = (ma_blob){NULL, 0};
                if (live[j]->x.d.slots_blob.data)
                    live[i]->x.d.slots_blob = (ma_blob){NULL, 0};
                if (live[j]->x.d.archive_meta.data)
                    live[i]->x.d.archive_meta = (ma_blob){NULL, 0};
            }
    if (m) {
        double t0 = now_seconds();
        rc = ma_store_commit_group(r->opt.store, m, ids, ds, err, sizeof err);
        atomic_fetch_add_explicit(&r->queue_groups, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&r->queue_changes, m, memory_order_relaxed);
        observe(r, now_seconds() - t0, rc);
        if (rc) {
            pthread_mutex_lock(&r->mu);
            for (size_t i = 0; i < m; i++)
                mark_stale_locked(r, live[i]->s);
            pthread_mutex_unlock(&r->mu);
        } else {
            for (size_t i = 0; i < m; i++)
                if (live[i]->due)
                    reg_maint_enqueue(r->maint, live[i]->s->id);
        }
    }
    for (qentry *e = g, *next; e; e = next) {
        next = e->next;
        if (e->stale) {
            snprintf(stale_err, sizeof stale_err, "session %s: an earlier change failed to commit; this one was "
                     "made after it", e->s->id);
            e->fn(e->ctx, MA_EIO, stale_err);
        } else {
            e->fn(e->ctx, rc, rc ? err : NULL);
        }
        ser_free(&e->x);
        pthread_mutex_lock(&r->mu);
        e->s->pending--;
        pthread_cond_broadcast(&r->pending_cv);
        pthread_mutex_unlock(&r->mu);
        release_ref(r, e->s, true);
        free(e);
    }
}

static void *committer_main(void *arg)
{
    reg_registry *r = arg;
    pthread_mutex_lock(&r->cmu);
    for (;;) {
        while (!r->qhead && !r->cstop)
            pthread_cond_wait(&r->cwork, &r->cmu);
        if (!r->qhead)
            break;   /* stopping and drained */
        qentry *g = r->qhead, *last = g;
        for (size_t n = 1; last->next && n < GROUP_MAX; n++)
            last = last->next;
        r->qhead = last->next;
        if (!r->qhead)
            r->qtail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&r->cmu);
        commit_group(r, g);
        pthread_mutex_lock(&r->cmu);
    }
    pthread_mutex_unlock(&r->cmu);
    return NULL;
}

int reg_commit_queue(reg_registry *r, reg_session *s, const reg_change *c, int64_t now, reg_committed_fn fn,
                     void *ctx, char *err, size_t errlen)
{
    qentry *e = NULL;
    int rc = MA_ENOMEM;

    pthread_mutex_lock(&r->cmu);
    if (!r->cstarted && pthread_create(&r->cthread, NULL, committer_main, r) == 0)
        r->cstarted = true;
    bool started = r->cstarted;
    pthread_mutex_unlock(&r->cmu);
    if (!started || !(e = calloc(1, sizeof *e))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if ((rc = serialise(r, s, c, now, &e->x, err, errlen)) != 0)
        goto fail;
    e->s = s;
    e->fn = fn;
    e->ctx = ctx;
    note_stored(r, s, c, &e->x, now);
    e->due = ma_archive_index_due(ma_session_archive(s->core), NULL, NULL);
    pthread_mutex_lock(&r->mu);
    s->refs++;
    s->pending++;
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&r->cmu);
    if (r->qtail)
        r->qtail->next = e;
    else
        r->qhead = e;
    r->qtail = e;
    pthread_cond_signal(&r->cwork);
    pthread_mutex_unlock(&r->cmu);
    return 0;
fail:
    free(e);
    pthread_mutex_lock(&r->mu);
    mark_stale_locked(r, s);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int reg_settle(reg_registry *r, reg_session *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&r->mu);
    while (s->pending)
        pthread_cond_wait(&r->pending_cv, &r->mu);
    bool stale = s->stale;
    pthread_mutex_unlock(&r->mu);
    if (stale) {
        snprintf(err, errlen, "session %s: an earlier change failed to commit", s->id);
        return MA_EIO;
    }
    return 0;
}

bool reg_peek_params(reg_registry *r, const char *id, ma_params *out)
{
    pthread_mutex_lock(&r->mu);
    reg_session *s = find(r, id);
    bool ok = s && s->core && !s->stale;
    if (ok)
        *out = s->params;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

int reg_idem_find(reg_registry *r, const char *scope, const char *key, int64_t now, reg_idem_answer *out,
                  char *err, size_t errlen)
{
    ma_store_idem_row row;
    memset(out, 0, sizeof *out);
    int rc = ma_store_idem_get(r->opt.store, scope, key, now - r->opt.idem_window_ms, &row, err, errlen);
    if (rc)
        return rc;
    *out = (reg_idem_answer){.fingerprint = row.fingerprint, .status = row.status, .body = row.body,
                             .etag = row.etag, .location = row.location, .created_at = row.created_at};
    return 0;   /* the strings moved to *out */
}

void reg_idem_answer_clear(reg_idem_answer *a)
{
    if (!a)
        return;
    free(a->body);
    free(a->etag);
    free(a->location);
    memset(a, 0, sizeof *a);
}

int reg_idem_record(reg_registry *r, const reg_idem *k, int64_t now, char *err, size_t errlen)
{
    if (!k)
        return MA_EINVAL;
    ma_store_idem ki = store_idem(r, k, now);
    return ma_store_idem_put(r->opt.store, &ki, err, errlen);
}

void reg_invalidate(reg_registry *r, reg_session *s)
{
    /* Out of the map too: a change still queued may hold the session past the caller's release. */
    pthread_mutex_lock(&r->mu);
    mark_stale_locked(r, s);
    pthread_mutex_unlock(&r->mu);
}

void reg_observe_commits(reg_registry *r, reg_commit_fn fn, void *ctx)
{
    pthread_rwlock_wrlock(&r->obs);
    r->on_commit = fn;
    r->on_commit_ctx = ctx;
    pthread_rwlock_unlock(&r->obs);
}

/* ---- listings, summaries, backup ------------------------------------------------------------- */

int reg_list(reg_registry *r, const char *after, size_t limit, reg_listing **out, size_t *n, char *err,
             size_t errlen)
{
    ma_store_session *rows = NULL;
    size_t count = 0;
    int rc = ma_store_session_list(r->opt.store, after && *after ? after : NULL, limit, &rows, &count, err, errlen);
    *out = NULL;
    *n = 0;
    if (rc)
        return rc;
    reg_listing *l = count ? calloc(count, sizeof *l) : NULL;
    if (count && !l) {
        snprintf(err, errlen, "out of memory");
        rc = MA_ENOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        if (l) {
            snprintf(l[i].id, sizeof l[i].id, "%s", rows[i].id);
            l[i].length = rows[i].length;
            l[i].slots = rows[i].slots;
            l[i].created_at = rows[i].created_at;
            l[i].updated_at = rows[i].updated_at;
        }
        ma_store_session_clear(&rows[i]);
    }
    free(rows);
    if (rc)
        return rc;
    *out = l;
    *n = count;
    return 0;
}

int reg_summary_get(reg_registry *r, reg_session *s, reg_summary *out, char *err, size_t errlen)
{
    ma_store_session row = {0};
    memset(out, 0, sizeof *out);
    int rc = ma_session_stats_get(s->core, &out->stats);
    if (rc) {
        snprintf(err, errlen, "%s", ma_strerror(rc));
        return rc;
    }
    /* The row's size as the store counts it (sizes only: no blob bytes are read). */
    if ((rc = ma_store_session_summary(r->opt.store, s->id, &row, err, errlen)) != 0) {
        ma_session_stats_clear(&out->stats);
        memset(out, 0, sizeof *out);
        return rc;
    }
    out->params = &s->params;
    out->stored_bytes = row.stored_bytes;
    ma_archive_index_state(ma_session_archive(s->core), &out->index);
    out->index_building = s->params.selector == MA_SELECTOR_INDEX && reg_maint_busy(r->maint, s->id);
    out->created_at = s->created_at;
    out->updated_at = s->updated_at;
    ma_store_session_clear(&row);
    return 0;
}

void reg_summary_clear(reg_summary *sm)
{
    ma_session_stats_clear(&sm->stats);
    memset(sm, 0, sizeof *sm);
}

int reg_backup(reg_registry *r, const char *path, char *err, size_t errlen)
{
    if (access(path, F_OK) == 0) {
        snprintf(err, errlen, "path: %.200s exists; backups never overwrite a file", path);
        return MA_EEXISTS;
    }
    return ma_store_backup(r->opt.store, path, err, errlen);
}

void reg_stats_get(reg_registry *r, reg_stats *st)
{
    pthread_mutex_lock(&r->mu);
    st->loaded = r->loaded;
    st->bytes = r->bytes;
    st->loads = r->loads;
    st->unloads = r->unloads;
    st->paged_out_bytes = r->paged_out_bytes;
    st->budget = r->opt.memory_budget;
    pthread_mutex_unlock(&r->mu);
    st->chunk_loads = atomic_load_explicit(&r->chunk_loads, memory_order_relaxed);
    st->queue_groups = atomic_load_explicit(&r->queue_groups, memory_order_relaxed);
    st->queue_changes = atomic_load_explicit(&r->queue_changes, memory_order_relaxed);
    st->index_builds = atomic_load_explicit(&r->index_builds, memory_order_relaxed);
    st->index_builds_in_place = atomic_load_explicit(&r->index_builds_in_place, memory_order_relaxed);
    st->index_build_failures = atomic_load_explicit(&r->index_build_failures, memory_order_relaxed);
    ma_store_stats ss;
    ma_store_stats_get(r->opt.store, &ss);
    st->sessions_purging = ss.sessions_purging;
    st->purged_rows = ss.purged_rows;
}

void reg_destroy(reg_registry *r)
{
    if (!r)
        return;
    /* The commit thread writes what is queued, answers it, then stops (before the maintenance thread:
     * a build's swap may wait for a session's queued changes). */
    pthread_mutex_lock(&r->cmu);
    r->cstop = true;
    pthread_cond_signal(&r->cwork);
    bool started = r->cstarted;
    pthread_mutex_unlock(&r->cmu);
    if (started)
        pthread_join(r->cthread, NULL);
    reg_purge_destroy(r->purge);   /* stops after its step; the next start resumes the queue */
    reg_maint_destroy(r->maint);   /* a build in progress stops at its next step; restarts redo it */
    for (size_t i = 0; i < r->nbuckets; i++)
        for (reg_session *s = r->buckets[i], *n; s; s = n) {
            n = s->hnext;
            session_free(s);
        }
    free(r->buckets);
    free(r->frozen);
    pthread_cond_destroy(&r->cwork);
    pthread_mutex_destroy(&r->cmu);
    pthread_cond_destroy(&r->pending_cv);
    pthread_rwlock_destroy(&r->obs);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- moving sessions: snapshots and the freeze ---------------------------------------------------- */

_Static_assert((int)REG_SNAP_CORRUPT == (int)MA_SNAP_CORRUPT && (int)REG_SNAP_TRUNCATED == (int)MA_SNAP_TRUNCATED &&
                   (int)REG_SNAP_NEWER == (int)MA_SNAP_NEWER, "reg_import passes the store's reasons through");

static void copy_stats(reg_snapshot_stats *out, const ma_store_snapshot_stats *in)
{
    if (out)
        *out = (reg_snapshot_stats){ in->bytes, in->events, in->blocks, in->payloads };
}

int reg_export(reg_registry *r, const char *id, reg_write_fn write, void *ctx, reg_snapshot_stats *st,
               char *err, size_t errlen)
{
    /* The store holds every acknowledged change (reg_commit before every 2xx): export straight from it,
     * without loading the session. */
    ma_store_snapshot_stats ss = {0};
    int rc = ma_store_session_export(r->opt.store, id, write, ctx, &ss, err, errlen);
    copy_stats(st, &ss);
    return rc;
}

/* The snapshot's config must be one this daemon accepts, and its events must have the sizes it implies. */
static int check_snapshot(void *ctx, const ma_store_snapshot_header *h, char *err, size_t errlen)
{
    (void)ctx;
    ma_params p;
    char why[256];
    if (reg_params_decode(h->config, &p, why, sizeof why)) {
        snprintf(err, errlen, "snapshot refused: its config: %s", why);
        return MA_ECORRUPT;
    }
    uint64_t kb = 4ull * (uint64_t)p.heads * (uint64_t)p.dim, vb = 4ull * (uint64_t)p.heads * (uint64_t)p.value_dim;
    if (h->length && (h->key_bytes != kb || h->value_bytes != vb)) {
        snprintf(err, errlen, "snapshot refused: events of %llu+%llu bytes, its config implies %llu+%llu",
                 (unsigned long long)h->key_bytes, (unsigned long long)h->value_bytes, (unsigned long long)kb,
                 (unsigned long long)vb);
        return MA_ECORRUPT;
    }
    return 0;
}

int reg_import(reg_registry *r, const char *id, reg_read_fn read, void *ctx, reg_snapshot_stats *st,
               int *why, char *err, size_t errlen)
{
    /* A loaded session with this id would be one the store also has: the store refuses it (MA_EEXISTS).
     * The new session is loaded on first use, from the imported rows. */
    ma_store_snapshot_stats ss = {0};
    ma_store_import_source src = {read, ctx, check_snapshot, NULL};
    int rc = ma_store_session_import(r->opt.store, id, &src, &ss, why, err, errlen);
    copy_stats(st, &ss);
    return rc;
}

static ssize_t frozen_index(const reg_registry *r, const char *id)
{
    for (size_t i = 0; i < r->nfrozen; i++)
        if (strcmp(r->frozen[i], id) == 0)
            return (ssize_t)i;
    return -1;
}

static void unfreeze_locked(reg_registry *r, const char *id)
{
    ssize_t i = r->nfrozen ? frozen_index(r, id) : -1;
    if (i >= 0)
        memcpy(r->frozen[i], r->frozen[--r->nfrozen], MA_MAX_NAME + 1);
}

static int exists(reg_registry *r, const char *id, char *err, size_t errlen)
{
    ma_store_session row = {0};
    int rc = ma_store_session_summary(r->opt.store, id, &row, err, errlen);
    if (rc == 0)
        ma_store_session_clear(&row);
    return rc;
}

int reg_freeze(reg_registry *r, const char *id, bool on, char *err, size_t errlen)
{
    int rc = exists(r, id, err, errlen);
    if (rc)
        return rc;
    pthread_mutex_lock(&r->mu);
    ssize_t i = frozen_index(r, id);
    if (on && i < 0) {
        if (r->nfrozen == r->capfrozen) {
            size_t cap = r->capfrozen ? 2 * r->capfrozen : 16;
            char (*f)[MA_MAX_NAME + 1] = realloc(r->frozen, cap * sizeof *f);
            if (!f) {
                pthread_mutex_unlock(&r->mu);
                return MA_ENOMEM;
            }
            r->frozen = f;
            r->capfrozen = cap;
        }
        snprintf(r->frozen[r->nfrozen++], MA_MAX_NAME + 1, "%s", id);
    } else if (!on) {
        unfreeze_locked(r, id);
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int reg_frozen(reg_registry *r, const char *id, bool *frozen, char *err, size_t errlen)
{
    int rc = exists(r, id, err, errlen);
    if (rc)
        return rc;
    *frozen = reg_is_frozen(r, id);
    return 0;
}

bool reg_is_frozen(reg_registry *r, const char *id)
{
    pthread_mutex_lock(&r->mu);
    bool f = r->nfrozen && frozen_index(r, id) >= 0;
    pthread_mutex_unlock(&r->mu);
    return f;
}

/* ---- background index builds (docs/ARCHIVE.md, "Builds in the background") ------------------------ */

/* Blocks staged per transaction, and how far behind the committed events the staging may stop before the
 * swap encodes the rest under the session's exclusive gate. */
#define STAGE_BLOCKS   4
#define CATCHUP_SLACK  2

typedef struct {
    reg_pager *pg;
    const atomic_int *cancel;
} job_keys;

static int keys_or_cancel(void *ctx, uint64_t first, size_t n, float *k)
{
    job_keys *jk = ctx;
    return atomic_load(jk->cancel) ? MA_EBUSY : reg_pager_keys(jk->pg, first, n, k);
}

/* What the job needs to know of the session, read under its exclusive gate (no job of it runs). */
typedef struct {
    ma_params p;
    bool due;
    uint64_t point;
    uint32_t build_no, base;   /* the build due; the one current */
    size_t index_bytes;        /* what the current index holds (ma_ivf_bytes) ... */
    uint64_t index_events;     /* ... for this many events */
} job_view;

static int view(reg_registry *r, const char *id, job_view *v)
{
    char err[256];
    reg_session *s;
    int rc = acquire(r, id, true, &s, err, sizeof err);
    if (rc)
        return rc;
    /* The session's queued changes are stored first (the commit thread never takes the gate), so the
     * build point's events are in the store when it is due. */
    wait_pending(r, s);
    ma_archive *a = ma_session_archive(s->core);
    ma_index_state st;
    v->p = s->params;
    pthread_mutex_lock(&r->mu);
    bool stale = s->stale;
    pthread_mutex_unlock(&r->mu);
    v->due = !stale && ma_archive_index_due(a, &v->point, &v->build_no);
    ma_archive_index_state(a, &st);
    v->base = st.build;
    const ma_ivf *x = ma_archive_index(a);
    v->index_bytes = x ? ma_ivf_bytes(x) : 0;
    v->index_events = x ? ma_ivf_count(x) : 0;
    reg_release(r, s);
    return 0;
}

/* Whether the new index of a build may be made beside the old one, and if so its reservation: without a
 * budget always (nothing reserved); else when the budget holds what the sessions hold now plus a second
 * index the size of the current one grown to the committed events (both are held until the swap). The
 * estimate is added to the registry's count (r->bytes) at once, under mu, so that admissions made while
 * the new index exists see it; unreserve_beside gives it back once the old index is freed. When it does
 * not fit, the build is adopted in place under the session's gate (swap_in_place): the old lists are
 * dropped as the new ones are made, so memory stays at one index (docs/ARCHIVE.md). */
static bool reserve_beside(reg_registry *r, const job_view *v, uint64_t events, size_t *reserved)
{
    *reserved = 0;
    if (!r->opt.memory_budget)
        return true;
    double per_event = v->index_events ? (double)v->index_bytes / (double)v->index_events : 0;
    double need = per_event * (double)events;
    pthread_mutex_lock(&r->mu);
    bool fits = (double)r->bytes + need <= (double)r->opt.memory_budget;
    if (fits) {
        *reserved = (size_t)need;
        r->bytes += *reserved;
    }
    pthread_mutex_unlock(&r->mu);
    return fits;
}

/* Gives back what reserve_beside added to the count (0: nothing). */
static void unreserve_beside(reg_registry *r, size_t reserved)
{
    pthread_mutex_lock(&r->mu);
    r->bytes -= reserved;
    pthread_mutex_unlock(&r->mu);
}

/* Stages the rows of build b for blocks [*staged, upto) (keys read from the store). */
static int stage(reg_registry *r, const char *id, ma_ivf_build *b, job_keys *jk, uint64_t *staged, uint64_t upto,
                 const ma_params *p)
{
    const size_t D = (size_t)p->heads * p->dim, cb = ma_ivf_row_codes_bytes(p->heads, p->dim);
    float *keys = malloc((size_t)STAGE_BLOCKS * MA_IVF_BLOCK * D * sizeof(float));
    const size_t lb = ma_ivf_build_lists_bytes(b);
    unsigned char *lists = malloc(STAGE_BLOCKS * lb), *codes = malloc(STAGE_BLOCKS * cb);
    char err[256];
    int rc = keys && lists && codes ? 0 : MA_ENOMEM;
    while (!rc && *staged < upto) {
        size_t n = upto - *staged < STAGE_BLOCKS ? (size_t)(upto - *staged) : STAGE_BLOCKS;
        for (size_t i = 0; !rc && i < n; i++)
            rc = keys_or_cancel(jk, (*staged + i) * MA_IVF_BLOCK, MA_IVF_BLOCK, keys + i * MA_IVF_BLOCK * D);
        if (!rc)
            rc = ma_ivf_build_encode(b, keys, n, lists, codes);
        ma_store_index_rows ir = {ma_ivf_build_number(b), *staged, n, lists, codes, lb, cb};
        if (!rc)
            rc = ma_store_index_put(r->opt.store, id, &ir, err, sizeof err);
        if (!rc)
            *staged += n;
    }
    free(keys);
    free(lists);
    free(codes);
    return rc;
}

/* The committed length of session id (0 if it is gone). */
static uint64_t committed(reg_registry *r, const char *id)
{
    ma_store_session row = {0};
    char err[256];
    uint64_t n = 0;
    if (ma_store_session_summary(r->opt.store, id, &row, err, sizeof err) == 0)
        n = row.length;
    ma_store_session_clear(&row);
    return n;
}

/* Persists the kept rows of the build's index x as staged rows (nothing names them before the swap). */
static int stage_kept(reg_registry *r, const char *id, ma_ivf *x, const ma_params *p)
{
    char err[256];
    ma_store_index_rows ir = {.lists_bytes = (size_t)MA_IVF_BLOCK * 4,
                              .codes_bytes = ma_ivf_row_codes_bytes(p->heads, p->dim)};
    ir.n = ma_ivf_rows_pending(x, &ir.build, &ir.first, &ir.lists, &ir.codes);
    int rc = ir.n ? ma_store_index_put(r->opt.store, id, &ir, err, sizeof err) : 0;
    if (!rc)
        ma_ivf_rows_done(x);
    return rc;
}

/* Grows the build's index x with the blocks committed since it was made (keys from the store, STAGE_BLOCKS
 * at a time, each step's rows staged), until at most CATCHUP_SLACK complete blocks are left for the swap
 * (or CATCHUP_STEPS steps were taken: the swap adds whatever is left). */
#define CATCHUP_STEPS 4096
static int catch_up(reg_registry *r, const char *id, ma_ivf *x, job_keys *jk, const ma_params *p)
{
    const size_t D = (size_t)p->heads * p->dim;
    float *keys = malloc((size_t)STAGE_BLOCKS * MA_IVF_BLOCK * D * sizeof(float));
    int rc = keys ? stage_kept(r, id, x, p) : MA_ENOMEM;
    for (int step = 0; !rc && step < CATCHUP_STEPS; step++) {
        uint64_t have = ma_ivf_count(x) / MA_IVF_BLOCK, upto = committed(r, id) / MA_IVF_BLOCK;
        if (upto <= have + CATCHUP_SLACK)
            break;
        size_t n = upto - have < STAGE_BLOCKS ? (size_t)(upto - have) : STAGE_BLOCKS;
        for (size_t i = 0; !rc && i < n; i++)
            rc = keys_or_cancel(jk, (have + i) * MA_IVF_BLOCK, MA_IVF_BLOCK, keys + i * MA_IVF_BLOCK * D);
        if (!rc)
            rc = ma_ivf_add(x, n * MA_IVF_BLOCK, keys);
        if (!rc)
            rc = stage_kept(r, id, x, p);
    }
    free(keys);
    return rc;
}

/* Acquires session id exclusively for a swap while its current build is still base: MA_EBUSY (nothing
 * held) when the build was cancelled (the session deleted) or another build got there first. */
static int acquire_current(reg_registry *r, const char *id, uint32_t base, const atomic_int *cancel,
                           reg_session **out)
{
    char err[256];
    reg_session *s;
    int rc = acquire(r, id, true, &s, err, sizeof err);
    if (rc)
        return rc;
    ma_index_state st;
    ma_archive_index_state(ma_session_archive(s->core), &st);
    if (atomic_load(cancel) || st.build != base) {
        reg_release(r, s);
        return MA_EBUSY;
    }
    *out = s;
    return 0;
}

/* Swaps the build's index x into the session, under its exclusive gate: the archive adds the events
 * appended since x caught up (a few blocks) and takes x (ma_archive_index_swap), then one commit writes the
 * archive meta (the new centroids: the store names the build from then on) with the rows of the blocks
 * listed here. Nothing is visible before the commit (no job of the session runs); if the commit fails the
 * session is marked stale and reloaded from the store (the old build) at its next use. Once the archive
 * took x (even if the commit then failed) *old is the index it replaced, for the caller to free after the
 * gate is released; while *old is NULL x is still the caller's. */
static int swap(reg_registry *r, const char *id, ma_ivf *x, uint32_t base, const atomic_int *cancel, ma_ivf **old)
{
    char err[256];
    reg_session *s;
    int rc = acquire_current(r, id, base, cancel, &s);
    if (rc)
        return rc;
    ma_archive *a = ma_session_archive(s->core);
    rc = ma_archive_index_swap(a, x, old);
    if (!rc) {
        reg_change c = {.first_event = ma_archive_length(a)};   /* the core reports the new build */
        rc = reg_commit(r, s, &c, s->updated_at, err, sizeof err);   /* stale on failure */
    }
    reg_release(r, s);
    return rc;
}

/* Adopts build b into the session in place, under its exclusive gate (when a second index does not fit
 * the budget: reserve_beside): the archive's index takes b's centroids and relists every block from the
 * staged rows (the rest from keys), then one commit writes the archive meta with the rows of the blocks
 * not staged. Nothing is visible before the commit; if the adopt or the commit fails the session is
 * marked stale and reloaded from the store (the old build) at its next use. */
static int swap_in_place(reg_registry *r, const char *id, ma_ivf_build *b, uint32_t base, const atomic_int *cancel)
{
    char err[256];
    reg_session *s;
    int rc = acquire_current(r, id, base, cancel, &s);
    if (rc)
        return rc;
    ma_archive *a = ma_session_archive(s->core);
    ma_ivf_rows rows = reg_pager_rows(&s->pager);
    rc = ma_archive_index_adopt(a, b, &rows);
    if (rc) {
        pthread_mutex_lock(&r->mu);
        s->stale = true;
        pthread_mutex_unlock(&r->mu);
    } else {
        reg_change c = {.first_event = ma_archive_length(a)};   /* the core reports the new build */
        rc = reg_commit(r, s, &c, s->updated_at, err, sizeof err);   /* stale on failure */
    }
    reg_release(r, s);
    return rc;
}

/* A swap, beside (x) or in place (b), run on the maintenance module's gate thread (reg_maint_urgent): it
 * holds the session's gate exclusively, so it runs at normal priority, not at the build's nice +10. */
typedef struct {
    reg_registry *r;
    const char *id;
    ma_ivf *x;          /* beside: the new index; *old gets the one it replaced */
    ma_ivf_build *b;    /* in place: the build */
    uint32_t base;
    const atomic_int *cancel;
    ma_ivf **old;
} swap_call;

static int swap_urgent(void *arg)
{
    swap_call *c = arg;
    if (c->b)
        return swap_in_place(c->r, c->id, c->b, c->base, c->cancel);
    return swap(c->r, c->id, c->x, c->base, c->cancel, c->old);
}

/* One build of session id at the point due (nothing if none is): train (keys from the store), stage the
 * rows of every committed block, make the new index from them beside the old one (ma_ivf_from_build),
 * grow it with the blocks committed meanwhile (catch_up), swap, free the old index, drop the old rows.
 * Only the swap holds the session, for the last few blocks and one commit. Repeats while another build is
 * due (events kept coming). */
static void index_job(void *ctx, const char *id, const atomic_int *cancel)
{
    reg_registry *r = ctx;
    char err[256];
    for (int round = 0; round < 64 && !atomic_load(cancel); round++) {
        job_view v;
        if (view(r, id, &v) != 0 || !v.due)
            return;
        reg_pager pg;
        reg_pager_init(&pg, r->opt.store, id, &v.p, NULL);
        job_keys jk = {&pg, cancel};
        ma_ivf_build *b = NULL;
        ma_ivf *x = NULL, *old = NULL;
        /* Rows of any other build than the current one are stale (an interrupted build) or old. */
        int rc = ma_store_index_drop(r->opt.store, id, v.base, NULL, err, sizeof err);
        if (!rc)
            rc = ma_ivf_train(v.p.heads, v.p.dim, v.point, v.build_no, keys_or_cancel, &jk, cancel, &b);
        uint64_t staged = 0;
        for (int pass = 0; !rc && pass < 16; pass++) {
            uint64_t upto = committed(r, id) / MA_IVF_BLOCK;
            if (upto <= staged + CATCHUP_SLACK && pass > 0)
                break;
            rc = stage(r, id, b, &jk, &staged, upto, &v.p);
        }
        ma_ivf_rows rows = reg_pager_rows(&pg);
        size_t reserved = 0;
        const bool beside = !rc && reserve_beside(r, &v, committed(r, id), &reserved);
        if (!rc && beside)
            rc = ma_ivf_from_build(b, staged * MA_IVF_BLOCK, &rows, keys_or_cancel, &jk, &x);
        else if (!rc && (rc = ma_ivf_build_prepare(b, &rows, staged)) == 0)   /* counts, sums: not under the gate */
            rc = reg_maint_urgent(r->maint, swap_urgent, &(swap_call){r, id, NULL, b, v.base, cancel, NULL});
        ma_ivf_build_free(b);
        if (!rc && beside)
            rc = catch_up(r, id, x, &jk, &v.p);
        if (!rc && beside)
            rc = reg_maint_urgent(r->maint, swap_urgent, &(swap_call){r, id, x, NULL, v.base, cancel, &old});
        ma_ivf_destroy(old ? old : x);   /* the one not serving (NULL in place) */
        unreserve_beside(r, reserved);
        if (rc) {
            if (rc != MA_EBUSY)
                atomic_fetch_add(&r->index_build_failures, 1);
            return;
        }
        atomic_fetch_add(&r->index_builds, 1);
        if (!beside)
            atomic_fetch_add(&r->index_builds_in_place, 1);
        (void)ma_store_index_drop(r->opt.store, id, v.build_no, NULL, err, sizeof err);
        malloc_trim(0);   /* the old lists: ~56 bytes an event */
    }
}

int reg_wait_purge(reg_registry *r)
{
    return r->purge ? reg_purge_wait_idle(r->purge) : 0;
}

void reg_wait_maintenance(reg_registry *r)
{
    reg_maint_wait_idle(r->maint);
}
