/*
 * core/session.c — one session: backbone + archive + slots + payloads, the write controller and the
 * router (contract in core/session.h).
 *
 * Design:
 *  - Composition only: the maths lives in core/backbone.c, core/archive.c, core/slots.c and
 *    core/featurize.c. This file decides the order of operations so that a mutation is all-or-nothing:
 *    every check and allocation that can fail comes first (slot batch prepared, payload copies made,
 *    report arrays sized), then the components are changed.
 *  - Payloads of events are JSON text kept in an array sorted by event index (events are appended in
 *    order, so appending keeps it sorted); events without a payload cost nothing. A restored session
 *    reads the payloads of events it did not ingest itself through its ma_payload_source (the store).
 *  - The router is a hard switch: a named resident slot, else the best cosine over
 *    resident slot keys if it reaches route_threshold, else the sparse read. There is no mixed score.
 *    With slot_policy.read topk the cosine step, once switched on by the best slot, answers with the
 *    softmax-weighted mix of the k best slots' values (the switch itself stays hard: slot or sparse).
 *  - Change report: every mutation that succeeds sets the bits of the parts it changed (backbone,
 *    events, slots); the index bit is the archive's meta generation compared with the one last saved.
 *    The registry serialises only those parts (ma_session_changes) and says when they are stored
 *    (ma_session_changes_saved).
 * Not done here: validation of dimensions, finiteness and names (the server's codec does that), locking
 * (the server orders jobs per session), I/O (the store, through the two source callbacks).
 */
#include "core/session.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/featurize.h"
#include "core/slots.h"

typedef struct {
    uint64_t event;
    char *text;
} event_payload_rec;

struct ma_session {
    ma_params p;
    size_t kn, vn;                   /* floats per key/query (H·d) and per value (H·d_v) */
    ma_backbone *bb;
    ma_archive *ar;
    ma_slots *slots;
    event_payload_rec *pl;           /* payloads of events ingested by this process, by event */
    size_t npl, plcap, pl_bytes;
    uint64_t first_local;            /* events below this index had been ingested before a restore */
    ma_payload_source psrc;
    unsigned changed;                /* MA_CHANGED_* set by mutations since the last ma_session_changes_saved
                                        (the index's bit is computed: meta_gen) */
    uint64_t meta_gen;               /* ma_archive_meta_generation at creation, restore or the last save */
};

static const char *const route_names[] = {"auto", "slot", "sparse", "full", "state", "window"};

const char *ma_route_name(ma_route r)
{
    return (unsigned)r < sizeof route_names / sizeof *route_names ? route_names[r] : NULL;
}

int ma_route_parse(const char *name, ma_route *out)
{
    for (size_t i = 0; name && i < sizeof route_names / sizeof *route_names; i++)
        if (strcmp(name, route_names[i]) == 0) {
            *out = (ma_route)i;
            return 0;
        }
    return MA_EINVAL;
}

/* ---- result structs ---------------------------------------------------------------------------- */

void ma_ingest_report_clear(ma_ingest_report *r)
{
    free(r->writes);
    free(r->voids);
    free(r->evicted);
    memset(r, 0, sizeof *r);
}

void ma_answer_clear(ma_answer *a)
{
    free(a->payload);
    free(a->chunks);
    free(a->contrib);
    a->payload = NULL;
    a->chunks = NULL;
    a->n_chunks = 0;
    a->contrib = NULL;
    a->n_contrib = 0;
}

void ma_session_stats_clear(ma_session_stats *st)
{
    free(st->state_norm);
    free(st->penalty_norm);
    st->state_norm = st->penalty_norm = NULL;
}

/* ---- lifecycle --------------------------------------------------------------------------------- */

static ma_session *session_new(const ma_params *p)
{
    ma_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->p = *p;
    s->kn = (size_t)p->heads * (size_t)p->dim;
    s->vn = (size_t)p->heads * (size_t)p->value_dim;
    return s;
}

int ma_session_create(const ma_params *p, ma_session **out)
{
    *out = NULL;
    if (ma_params_validate(p, NULL, 0))
        return MA_EINVAL;
    ma_session *s = session_new(p);
    if (!s)
        return MA_ENOMEM;
    int rc;
    if ((rc = ma_backbone_create(p, &s->bb)) || (rc = ma_archive_create(p, &s->ar)) ||
        (rc = ma_slots_create(p->heads, p->dim, p->value_dim, p->slots, &s->slots))) {
        ma_session_destroy(s);
        return rc;
    }
    ma_slots_set_policy(s->slots, &p->slot_policy);
    s->meta_gen = ma_archive_meta_generation(s->ar);
    *out = s;
    return 0;
}

void ma_session_destroy(ma_session *s)
{
    if (!s)
        return;
    ma_backbone_destroy(s->bb);
    ma_archive_destroy(s->ar);
    ma_slots_destroy(s->slots);
    for (size_t i = 0; i < s->npl; i++)
        free(s->pl[i].text);
    free(s->pl);
    free(s);
}

ma_backbone *ma_session_backbone(ma_session *s)
{
    return s->bb;
}

ma_archive *ma_session_archive(ma_session *s)
{
    return s->ar;
}

ma_slots *ma_session_slots(ma_session *s)
{
    return s->slots;
}

/* ---- ingest: backbone, archive, payloads, write controller ------------------------------------- */

int ma_session_ingest(ma_session *s, size_t n, const ma_event *ev, int64_t now, ma_ingest_report *rep)
{
    return ma_session_ingest_ex(s, n, ev, NULL, now, rep);
}

int ma_session_ingest_ex(ma_session *s, size_t n, const ma_event *ev, const double *importance, int64_t now,
                         ma_ingest_report *rep)
{
    memset(rep, 0, sizeof *rep);
    uint64_t first = ma_archive_length(s->ar);
    rep->length = first;
    if (n == 0)
        return 0;

    int rc = MA_ENOMEM;
    float *k = NULL, *v = NULL;
    ma_slot_write *w = NULL;
    double *imp = NULL;                /* per write: its event's importance */
    ma_slot_result *res = NULL;
    char **texts = NULL;
    ma_slots_batch *batch = NULL;
    int64_t *before = NULL;            /* per write: its name's live event before the batch */
    size_t nw = 0, npay = 0;
    for (size_t i = 0; i < n; i++) {
        nw += ev[i].slot != NULL;
        npay += ev[i].payload != NULL;
    }

    /* Everything that can fail, before anything changes. Keys and values that lie back to back in the
     * caller's arrays (the codec's layout) are read in place; others are gathered once. */
    const float *K = ev[0].k, *V = ev[0].v;
    for (size_t i = 1; i < n && K; i++)
        if ((uintptr_t)ev[i].k != (uintptr_t)ev[0].k + i * s->kn * sizeof *K ||
            (uintptr_t)ev[i].v != (uintptr_t)ev[0].v + i * s->vn * sizeof *V)
            K = V = NULL;
    if (!K) {
        k = malloc(n * s->kn * sizeof *k);
        v = malloc(n * s->vn * sizeof *v);
        if (!k || !v)
            goto fail;
        for (size_t i = 0; i < n; i++) {
            memcpy(k + i * s->kn, ev[i].k, s->kn * sizeof *k);
            memcpy(v + i * s->vn, ev[i].v, s->vn * sizeof *v);
        }
        K = k;
        V = v;
    }
    if (nw) {
        w = malloc(nw * sizeof *w);
        res = malloc(nw * sizeof *res);
        rep->writes = malloc(nw * sizeof *rep->writes);
        rep->voids = malloc(nw * sizeof *rep->voids);
        rep->evicted = malloc(nw * sizeof *rep->evicted);
        if (importance && !(imp = malloc(nw * sizeof *imp)))
            goto fail;
        if (!w || !res || !rep->writes || !rep->voids || !rep->evicted)
            goto fail;
        for (size_t i = 0, j = 0; i < n; i++)
            if (ev[i].slot) {
                if (imp)
                    imp[j] = importance[i];
                w[j++] = (ma_slot_write){ev[i].slot, ev[i].k, ev[i].v, ev[i].payload, (int64_t)(first + i),
                                         ev[i].protect};
            }
    }
    if ((rc = ma_archive_mask_reserve(s->ar, first + n)))
        goto fail;
    if (nw && !(before = malloc(nw * sizeof *before)))
        goto fail;
    for (size_t j = 0; j < nw; j++)
        before[j] = ma_slots_live_event(s->slots, w[j].name);
    if ((rc = ma_slots_batch_prepare_ex(s->slots, nw, w, imp, &batch)))
        goto fail;
    rc = MA_ENOMEM;
    if (npay) {
        if (s->npl + npay > s->plcap) {
            size_t cap = s->plcap ? s->plcap : 64;
            while (cap < s->npl + npay)
                cap *= 2;
            event_payload_rec *pl = realloc(s->pl, cap * sizeof *pl);
            if (!pl)
                goto fail;
            s->pl = pl;
            s->plcap = cap;
        }
        if (!(texts = calloc(npay, sizeof *texts)))
            goto fail;
        for (size_t i = 0, j = 0; i < n; i++)
            if (ev[i].payload && !(texts[j++] = strdup(ev[i].payload)))
                goto fail;
    }
    /* The archive first: if the backbone then failed, the archive could not be rolled back. The backbone
     * update allocates nothing per event (its state is sized at creation), so it cannot fail here. */
    if ((rc = ma_archive_append(s->ar, n, K, V)))
        goto fail;
    if ((rc = ma_backbone_update(s->bb, n, K, V)))
        goto fail;   /* not reached with the backbones of core/backbone.c; reported if it ever is */

    ma_slots_batch_commit(batch, now, res);
    batch = NULL;
    for (size_t i = 0, j = 0; i < n; i++)
        if (ev[i].payload) {
            s->pl[s->npl++] = (event_payload_rec){first + i, texts[j]};
            s->pl_bytes += strlen(texts[j]) + 1;
            j++;
        }
    for (size_t j = 0; j < nw; j++) {
        uint64_t event = (uint64_t)w[j].event;
        if (res[j].version == 0) {
            ma_void_rec *vr = &rep->voids[rep->n_voids++];
            strcpy(vr->slot, w[j].name);
            vr->event = event;
            vr->reason = "protected";
            continue;
        }
        /* Supersession: the name's earlier live event, and this write's event unless a later write of
         * the batch replaced it, are masked for the archive reads. */
        if (before[j] >= 0)
            ma_archive_mask_set(s->ar, (uint64_t)before[j], MA_MASK_SUPERSEDED, true);
        if (ma_slots_live_event(s->slots, w[j].name) != (int64_t)event)
            ma_archive_mask_set(s->ar, event, MA_MASK_SUPERSEDED, true);
        ma_write_rec *wr = &rep->writes[rep->n_writes++];
        strcpy(wr->slot, w[j].name);
        wr->version = res[j].version;
        wr->event = event;
        if (res[j].evicted)
            strcpy(rep->evicted[rep->n_evicted++].slot, res[j].evicted_name);
    }
    rep->length = first + n;
    rep->appended = n;
    s->changed |= MA_CHANGED_BACKBONE | MA_CHANGED_EVENTS | (nw ? MA_CHANGED_SLOTS : 0u);
    free(before);
    free(texts);
    free(k);
    free(v);
    free(w);
    free(imp);
    free(res);
    return 0;
fail:
    ma_slots_batch_abort(batch);
    free(before);
    for (size_t j = 0; texts && j < npay; j++)
        free(texts[j]);
    free(texts);
    free(k);
    free(v);
    free(w);
    free(imp);
    free(res);
    ma_ingest_report_clear(rep);
    rep->length = first;
    return rc;
}

/* ---- slot verbs -------------------------------------------------------------------------------- */

/* Fills in the key (the name's embedding) and value (the payload string's embedding) a verb left out.
 * *buf gets the malloc'd storage of whatever was made. */
static int complete_input(const ma_session *s, const ma_slot_input *in, ma_slot_write *w, float **buf)
{
    *buf = NULL;
    *w = (ma_slot_write){in->name, in->k, in->v, in->payload, -1, in->protect};
    if (in->k && in->v)
        return 0;
    if (!in->v && !in->text)
        return MA_EINVAL;
    float *b = malloc((s->kn + s->vn) * sizeof *b);
    if (!b)
        return MA_ENOMEM;
    int rc = 0;
    if (!in->k) {
        rc = ma_embed_text_heads(in->name, strlen(in->name), s->p.heads, s->p.dim, b);
        w->k = b;
    }
    if (rc >= 0 && !in->v) {
        rc = ma_embed_text_heads(in->text, strlen(in->text), s->p.heads, s->p.value_dim, b + s->kn);
        w->v = b + s->kn;
    }
    if (rc < 0) {
        free(b);
        return rc;
    }
    *buf = b;
    return 0;
}

/* After a verb changed name's versions: the live event before (`was`) is masked as superseded and the
 * live event now is unmasked (a restore can make an old event live again). Masks of events below the
 * archive's length were reserved by the ingest that appended them. */
static void supersede(ma_session *s, const char *name, int64_t was)
{
    int64_t now = ma_slots_live_event(s->slots, name);
    if (now == was)
        return;
    if (was >= 0)
        ma_archive_mask_set(s->ar, (uint64_t)was, MA_MASK_SUPERSEDED, true);
    if (now >= 0)
        ma_archive_mask_set(s->ar, (uint64_t)now, MA_MASK_SUPERSEDED, false);
}

int ma_session_slot_write(ma_session *s, const ma_slot_input *in, int64_t now, ma_slot_result *res)
{
    ma_slot_write w;
    float *buf;
    int64_t was = ma_slots_live_event(s->slots, in->name);
    int rc = complete_input(s, in, &w, &buf);
    if (rc == 0)
        rc = ma_slots_put_ex(s->slots, &w, in->has_importance ? in->importance : MA_IMPORTANCE_NONE, true, 0, 0,
                             now, res);
    if (rc == 0) {
        supersede(s, in->name, was);
        s->changed |= MA_CHANGED_SLOTS;
    }
    free(buf);
    return rc;
}

int ma_session_slot_overwrite(ma_session *s, const ma_slot_input *in, uint64_t explicit_version,
                              uint64_t if_match, int64_t now, ma_slot_result *res)
{
    ma_slot_write w;
    float *buf;
    int64_t was = ma_slots_live_event(s->slots, in->name);
    int rc = complete_input(s, in, &w, &buf);
    if (rc == 0)
        rc = ma_slots_put_ex(s->slots, &w, in->has_importance ? in->importance : MA_IMPORTANCE_NONE, false,
                             explicit_version, if_match, now, res);
    if (rc == 0) {
        supersede(s, in->name, was);
        s->changed |= MA_CHANGED_SLOTS;
    }
    free(buf);
    return rc;
}

int ma_session_slot_read(const ma_session *s, const char *name, uint64_t version, ma_slot_value *out)
{
    return ma_slots_read(s->slots, name, version, out);
}

int ma_session_slot_history(const ma_session *s, const char *name, ma_version_info **out, size_t *n)
{
    return ma_slots_history(s->slots, name, out, n);
}

int ma_session_slot_restore(ma_session *s, const char *name, uint64_t version, int64_t now,
                            ma_slot_result *res)
{
    int64_t was = ma_slots_live_event(s->slots, name);
    int rc = ma_slots_restore(s->slots, name, version, now, res);
    if (rc == 0) {
        supersede(s, name, was);
        s->changed |= MA_CHANGED_SLOTS;
    }
    return rc;
}

/* Protecting is not an update of the value: it changes neither updated_at nor the eviction order, so
 * `now` is not recorded. */
int ma_session_slot_protect(ma_session *s, const char *name, bool protect, int64_t now)
{
    (void)now;
    int rc = ma_slots_protect(s->slots, name, protect);
    if (rc == 0)
        s->changed |= MA_CHANGED_SLOTS;
    return rc;
}

int ma_session_slot_evict(ma_session *s, const char *name, int64_t now)
{
    int rc = ma_slots_evict(s->slots, name, now);
    if (rc == 0)
        s->changed |= MA_CHANGED_SLOTS;
    return rc;
}

int ma_session_slot_forget(ma_session *s, const char *name, uint64_t **events, size_t *n)
{
    *events = NULL;
    *n = 0;
    ma_version_info *h;
    size_t nh;
    int rc = ma_slots_history(s->slots, name, &h, &nh);
    if (rc)
        return rc;
    uint64_t *ev = malloc((nh ? nh : 1) * sizeof *ev);
    if (!ev) {
        free(h);
        return MA_ENOMEM;
    }
    size_t ne = 0;
    for (size_t i = 0; i < nh; i++)
        if (h[i].event >= 0 && (ne == 0 || ev[ne - 1] != (uint64_t)h[i].event))
            ev[ne++] = (uint64_t)h[i].event;
    free(h);
    if ((rc = ma_slots_forget(s->slots, name))) {
        free(ev);
        return rc;
    }
    for (size_t i = 0; i < ne; i++)
        ma_archive_mask_set(s->ar, ev[i], MA_MASK_FORGOTTEN, true);
    s->changed |= MA_CHANGED_SLOTS;
    *events = ev;
    *n = ne;
    return 0;
}

int ma_session_slot_list(const ma_session *s, ma_slot_info **out, size_t *n)
{
    return ma_slots_list(s->slots, out, n);
}

/* ---- queries ----------------------------------------------------------------------------------- */

/* The payload of event e: kept in RAM if this process ingested it, else from the payload source. */
static int event_payload(const ma_session *s, uint64_t e, char **out)
{
    *out = NULL;
    if (e < s->first_local)
        return s->psrc.load ? s->psrc.load(s->psrc.ctx, e, out) : 0;
    size_t lo = 0, hi = s->npl;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->pl[mid].event < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->npl && s->pl[lo].event == e && !(*out = strdup(s->pl[lo].text)))
        return MA_ENOMEM;
    return 0;
}

static int answer_slot(const ma_session *s, const ma_slot_view *sv, double score, ma_answer *a)
{
    if (sv->payload && !(a->payload = strdup(sv->payload)))
        return MA_ENOMEM;
    memcpy(a->v, sv->v, s->vn * sizeof *a->v);
    a->route = MA_ROUTE_SLOT;
    a->score = score;
    a->has_slot = true;
    strcpy(a->slot, sv->name);
    a->version = sv->version;
    a->event = sv->event;
    a->has_importance = sv->has_importance;
    a->importance = sv->importance;
    ma_slots_count_use(s->slots, sv->name);
    return 0;
}

/* The cosine step under slot_policy.read topk: if the best resident slot reaches route_threshold
 * (*matched), the answer mixes the values of the k best slots with softmax(score / temperature) weights,
 * summed in double in rank order and rounded once. */
static int answer_topk(const ma_session *s, const float *q, bool *matched, ma_answer *a)
{
    *matched = false;
    size_t k = (size_t)s->p.slot_policy.k, n = 0;
    ma_slot_view *sv = malloc(k * sizeof *sv);
    double *sc = malloc(k * sizeof *sc), *w = malloc(k * sizeof *w);
    ma_contrib *c = NULL;
    int rc = MA_ENOMEM;
    if (!sv || !sc || !w)
        goto done;
    rc = ma_slots_match_topk(s->slots, q, k, sv, sc, &n);
    if (rc == MA_ENOTFOUND || (rc == 0 && sc[0] < s->p.route_threshold)) {
        rc = 0;
        goto done;
    }
    if (rc || !(c = calloc(n, sizeof *c))) {
        rc = rc ? rc : MA_ENOMEM;
        goto done;
    }
    if ((rc = answer_slot(s, &sv[0], sc[0], a)))
        goto done;
    *matched = true;
    ma_slots_softmax(sc, n, s->p.slot_policy.temperature, w);
    for (size_t j = 0; j < s->vn; j++) {
        double acc = 0;
        for (size_t i = 0; i < n; i++)
            acc += w[i] * (double)sv[i].v[j];
        a->v[j] = (float)acc;
    }
    for (size_t i = 0; i < n; i++) {
        strcpy(c[i].slot, sv[i].name);
        c[i].version = sv[i].version;
        c[i].score = sc[i];
        c[i].weight = w[i];
        c[i].has_importance = sv[i].has_importance;
        c[i].importance = sv[i].importance;
        if (i > 0)
            ma_slots_count_use(s->slots, sv[i].name);
    }
    a->contrib = c;
    a->n_contrib = n;
    c = NULL;
done:
    free(c);
    free(sv);
    free(sc);
    free(w);
    return rc;
}

/* The skip bits of q's archive reads. */
static unsigned query_skip(const ma_query *q)
{
    return q->include_superseded ? MA_MASK_FORGOTTEN : MA_MASK_ALL;
}

/* Fills a from the archive read r of route (taking r's chunks) and looks up the pointer's payload. */
static int answer_from_read(const ma_session *s, ma_route route, ma_read_result *r, ma_answer *a)
{
    a->route = route;
    a->score = r->score;
    a->event = r->pointer;
    a->chunks = r->chunks;
    a->n_chunks = r->n_chunks;
    r->chunks = NULL;
    r->n_chunks = 0;
    int rc;
    if (a->event >= 0 && (rc = event_payload(s, (uint64_t)a->event, &a->payload))) {
        ma_answer_clear(a);
        return rc;
    }
    return 0;
}

static int answer_archive(const ma_session *s, ma_route route, const ma_query *q, ma_answer *a)
{
    if (ma_archive_length(s->ar) == 0)
        return MA_EEMPTY;
    ma_read_result r = {.v = a->v, .skip = query_skip(q)};
    int rc;
    switch (route) {
    case MA_ROUTE_FULL:   rc = ma_archive_read_full(s->ar, q->q, &r); break;
    case MA_ROUTE_WINDOW: rc = ma_archive_read_window(s->ar, q->q, s->p.window, &r); break;
    default:              rc = ma_archive_read_sparse(s->ar, q->q, q->topk, &r); break;
    }
    if (rc) {
        ma_read_result_clear(&r);
        return rc;
    }
    return answer_from_read(s, route, &r, a);
}

/* Step 2 of the router: the best resident slot by cosine, if it reaches the threshold. */
static bool match_slot(const ma_session *s, const float *q, ma_slot_view *sv, double *score)
{
    return q && ma_slots_match(s->slots, q, sv, score) == 0 && *score >= s->p.route_threshold;
}

/* Everything of a query but its archive read: answers slot and state routes (or fails) and returns with
 * *archive = MA_ROUTE_AUTO, or leaves a cleared answer and sets *archive to the archive route (sparse, full,
 * window) that must answer it. */
static int route_query(const ma_session *s, const ma_query *q, ma_answer *a, ma_route *archive)
{
    float *v = a->v;
    memset(a, 0, sizeof *a);
    a->v = v;
    a->event = -1;
    *archive = MA_ROUTE_AUTO;

    ma_slot_view sv;
    double score;
    switch (q->route) {
    case MA_ROUTE_AUTO:
    case MA_ROUTE_SLOT:
        if (!q->q && !q->slot)
            return MA_EINVAL;
        if (q->slot) {
            /* Named: the current version of a resident slot, or with a version any version of the
             * history, resident or not. A name without history (or not resident, for the current
             * version) falls through to the cosine and sparse steps. */
            int rc = ma_slots_view(s->slots, q->slot, q->version, &sv);
            if (rc == 0) {
                score = q->q ? ma_slots_cosine(q->q, sv.k, s->p.heads, s->p.dim) : 1.0;
                return answer_slot(s, &sv, score, a);
            }
            if (rc != MA_ENOTFOUND)
                return rc;
        }
        if (q->q && s->p.slot_policy.read == MA_SLOT_READ_TOPK) {
            bool matched;
            int rc = answer_topk(s, q->q, &matched, a);
            if (rc || matched)
                return rc;
        } else if (match_slot(s, q->q, &sv, &score)) {
            return answer_slot(s, &sv, score, a);
        }
        if (q->route == MA_ROUTE_SLOT || !q->q)
            return MA_ENOTFOUND;
        *archive = MA_ROUTE_SPARSE;
        return 0;
    case MA_ROUTE_SPARSE:
    case MA_ROUTE_FULL:
    case MA_ROUTE_WINDOW:
        if (!q->q)
            return MA_EINVAL;
        *archive = q->route;
        return 0;
    case MA_ROUTE_STATE: {
        if (!q->q)
            return MA_EINVAL;
        int rc = ma_backbone_read(s->bb, 1, q->q, a->v, MA_READ_DEFAULT);
        if (rc)
            return rc;
        a->route = MA_ROUTE_STATE;
        return 0;
    }
    }
    return MA_EINVAL;
}

int ma_session_query(const ma_session *s, const ma_query *q, ma_answer *a)
{
    ma_route archive;
    int rc = route_query(s, q, a, &archive);
    if (rc || archive == MA_ROUTE_AUTO)
        return rc;
    return answer_archive(s, archive, q, a);
}

static int cmp_topk(const void *x, const void *y, void *ctx)
{
    const ma_query *qs = ctx;
    size_t i = *(const size_t *)x, j = *(const size_t *)y;
    int a = qs[i].topk, b = qs[j].topk;
    return a != b ? (a > b) - (a < b) : (i > j) - (i < j);
}

/* The sparse reads of the batch (indices idx[0..n), ordered by topk): one ma_archive_read_sparse_batch per
 * topk; a group the batch cannot answer whole (a query with nothing to attend over, a failure) is read
 * query by query, so each gets its own outcome. */
static void batch_sparse(const ma_session *s, const ma_query *qs, const size_t *idx, size_t n, ma_answer *as,
                         int *rcs, ma_read_result *r, float *Q)
{
    for (size_t g0 = 0, g1; g0 < n; g0 = g1) {
        for (g1 = g0 + 1; g1 < n && qs[idx[g1]].topk == qs[idx[g0]].topk; g1++)
            ;
        for (size_t j = g0; j < g1; j++) {
            r[j] = (ma_read_result){.v = as[idx[j]].v, .skip = query_skip(&qs[idx[j]])};
            memcpy(Q + (j - g0) * s->kn, qs[idx[j]].q, s->kn * sizeof *Q);
        }
        if (ma_archive_read_sparse_batch(s->ar, Q, g1 - g0, qs[idx[g0]].topk, r + g0) == 0) {
            for (size_t j = g0; j < g1; j++)
                rcs[idx[j]] = answer_from_read(s, MA_ROUTE_SPARSE, &r[j], &as[idx[j]]);
            continue;
        }
        for (size_t j = g0; j < g1; j++)
            rcs[idx[j]] = answer_archive(s, MA_ROUTE_SPARSE, &qs[idx[j]], &as[idx[j]]);
    }
}

int ma_session_query_batch(const ma_session *s, const ma_query *qs, size_t n, ma_answer *as, int *rcs)
{
    if (n == 0)
        return 0;
    int rc = MA_ENOMEM;
    size_t *exact = malloc(n * sizeof *exact), *sparse = malloc(n * sizeof *sparse), ne = 0, ns = 0;
    ma_route *route = malloc(n * sizeof *route);
    int *windows = malloc(n * sizeof *windows), *erc = malloc(n * sizeof *erc);
    ma_read_result *r = malloc(n * sizeof *r);
    float *Q = malloc(n * s->kn * sizeof *Q);
    if (!exact || !sparse || !route || !windows || !erc || !r || !Q)
        goto done;
    bool empty = ma_archive_length(s->ar) == 0;
    for (size_t i = 0; i < n; i++) {
        rcs[i] = route_query(s, &qs[i], &as[i], &route[i]);
        if (rcs[i] || route[i] == MA_ROUTE_AUTO)
            continue;
        if (empty)
            rcs[i] = MA_EEMPTY;
        else if (route[i] == MA_ROUTE_SPARSE)
            sparse[ns++] = i;
        else
            exact[ne++] = i;
    }
    /* Full and window reads: one streamed pass over the archive for all of them. */
    for (size_t j = 0; j < ne; j++) {
        size_t i = exact[j];
        memcpy(Q + j * s->kn, qs[i].q, s->kn * sizeof *Q);
        windows[j] = route[i] == MA_ROUTE_WINDOW ? s->p.window : -1;
        r[j] = (ma_read_result){.v = as[i].v, .skip = query_skip(&qs[i])};
    }
    int xrc = ne ? ma_archive_read_exact_batch(s->ar, Q, ne, windows, r, erc) : 0;
    for (size_t j = 0; j < ne; j++) {
        size_t i = exact[j];
        if (xrc || erc[j])
            rcs[i] = xrc ? xrc : erc[j];
        else
            rcs[i] = answer_from_read(s, route[i], &r[j], &as[i]);
    }
    /* Sparse reads (forced, or the router's fallback), batched per topk. */
    qsort_r(sparse, ns, sizeof *sparse, cmp_topk, (void *)qs);
    batch_sparse(s, qs, sparse, ns, as, rcs, r, Q);
    rc = 0;
done:
    free(exact);
    free(sparse);
    free(route);
    free(windows);
    free(erc);
    free(r);
    free(Q);
    return rc;
}

/* ---- stats ------------------------------------------------------------------------------------- */

int ma_session_stats_get(const ma_session *s, ma_session_stats *st)
{
    memset(st, 0, sizeof *st);
    st->state_norm = malloc((size_t)s->p.heads * sizeof *st->state_norm);
    st->penalty_norm = malloc((size_t)s->p.heads * sizeof *st->penalty_norm);
    if (!st->state_norm || !st->penalty_norm) {
        ma_session_stats_clear(st);
        return MA_ENOMEM;
    }
    ma_backbone_norms(s->bb, st->state_norm, st->penalty_norm);
    st->length = ma_archive_length(s->ar);
    st->chunks = ma_archive_chunks(s->ar);
    st->slots_resident = ma_slots_resident(s->slots);
    st->bytes = ma_session_bytes(s);
    return 0;
}

size_t ma_session_bytes(const ma_session *s)
{
    return sizeof *s + ma_backbone_bytes(s->bb) + ma_archive_bytes(s->ar) + ma_slots_bytes(s->slots) +
           s->plcap * sizeof *s->pl + s->pl_bytes;
}

size_t ma_session_footprint(const ma_params *p, size_t cache_chunks, ma_footprint *parts)
{
    ma_footprint f = {
        .backbone = ma_backbone_footprint(p),
        .slots = ma_slots_footprint(p->heads, p->dim, p->value_dim, p->slots),
        .archive = ma_archive_footprint(p, cache_chunks),
    };
    if (parts)
        *parts = f;
    return sizeof(ma_session) + f.backbone + f.slots + f.archive;
}

void ma_session_changes(const ma_session *s, ma_session_change *out)
{
    out->parts = s->changed;
    if (ma_slots_has_unsaved(s->slots))
        out->parts |= MA_CHANGED_SLOTS;
    if (ma_archive_meta_generation(s->ar) != s->meta_gen)
        out->parts |= MA_CHANGED_INDEX;
    out->length = ma_archive_length(s->ar);
    out->slots_resident = ma_slots_resident(s->slots);
}

void ma_session_changes_saved(ma_session *s)
{
    s->changed = 0;
    s->meta_gen = ma_archive_meta_generation(s->ar);
    ma_slots_saved(s->slots);
}

/* ---- persistence ------------------------------------------------------------------------------- */

int ma_session_serialize_slots(const ma_session *s, void **buf, size_t *len)
{
    return ma_slots_serialize(s->slots, buf, len);
}

/* The archive masks are not serialised: they follow from the slot history (every version keeps its
 * source event and whether it was forgotten). */
static void restore_mask(void *ctx, uint64_t event, ma_slot_event_state st)
{
    ma_session *s = ctx;
    if (event >= ma_archive_length(s->ar))
        return;   /* cannot happen in a consistent store; never a reason to refuse it */
    if (st == MA_SLOT_EVENT_FORGOTTEN)
        ma_archive_mask_set(s->ar, event, MA_MASK_FORGOTTEN, true);
    else if (st == MA_SLOT_EVENT_SUPERSEDED)
        ma_archive_mask_set(s->ar, event, MA_MASK_SUPERSEDED, true);
}

int ma_session_restore(const ma_params *p, const ma_session_saved *from, ma_session **out)
{
    return ma_session_restore_rows(p, from, NULL, out);
}

int ma_session_restore_rows(const ma_params *p, const ma_session_saved *from, const ma_ivf_rows *rows,
                            ma_session **out)
{
    *out = NULL;
    if (!from || ma_params_validate(p, NULL, 0))
        return MA_EINVAL;
    ma_session *s = session_new(p);
    if (!s)
        return MA_ENOMEM;
    int rc;
    if ((rc = ma_backbone_restore(p, from->backbone, from->backbone_len, &s->bb)) ||
        (rc = ma_slots_restore_state(&(ma_slots_shape){p->heads, p->dim, p->value_dim, p->slots}, from->slots,
                                     from->slots_len, &from->slot_rows, &s->slots)) ||
        (rc = ma_archive_restore_meta(p,
                                      &(ma_archive_saved){from->archive_meta, from->archive_meta_len,
                                                          ma_backbone_steps(s->bb), from->chunks,
                                                          from->cache_chunks, rows},
                                      &s->ar)))
        goto fail;
    ma_slots_set_policy(s->slots, &p->slot_policy);
    /* The three blobs must describe one session: every event went through the backbone. */
    rc = MA_ECORRUPT;
    if (ma_backbone_steps(s->bb) != ma_archive_length(s->ar))
        goto fail;
    if ((rc = ma_archive_mask_reserve(s->ar, ma_archive_length(s->ar))))
        goto fail;
    ma_slots_each_event(s->slots, restore_mask, s);
    s->first_local = ma_archive_length(s->ar);
    s->psrc = from->payloads;
    s->meta_gen = ma_archive_meta_generation(s->ar);
    *out = s;
    return 0;
fail:
    ma_session_destroy(s);
    return rc;
}
