/* core/params.c — defaults, validation and enum names of ma_params (see core/params.h). */
#include "core/params.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"

void ma_params_default(ma_params *p)
{
    memset(p, 0, sizeof *p);
    p->heads = 1;
    p->dim = 64;
    p->value_dim = 64;
    p->slots = 64;
    p->chunk = 64;
    p->topk = 16;
    p->window = 256;
    p->backbone = MA_BACKBONE_VLA;
    p->vla.lambda0 = 0.1;
    p->vla.period = 20;
    p->vla.refresh = 1e-3;
    p->vla.feature = MA_FEATURE_IDENTITY;
    p->vla.penalty_scale = 1.0;
    p->delta.beta = 1.0;
    p->route_threshold = 0.5;
    p->selector = MA_SELECTOR_INDEX;
    p->slot_policy.eviction = MA_EVICTION_LRU;
    p->slot_policy.overwrite = MA_OVERWRITE_REPLACE;
    p->slot_policy.alpha = 0.5;
    p->slot_policy.read = MA_SLOT_READ_BEST;
    p->slot_policy.k = 4;
    p->slot_policy.temperature = 0.1;
}

static int int_range(char *err, size_t errlen, const char *field, int v, int lo, int hi)
{
    if (v >= lo && v <= hi)
        return 0;
    if (errlen)
        snprintf(err, errlen, "%s: %d is out of range, expected an integer %d..%d", field, v, lo, hi);
    return MA_EINVAL;
}

/* lo_open/hi_open: whether the bound itself is excluded. */
static int real_range(char *err, size_t errlen, const char *field, double v, double lo, int lo_open,
                      double hi, int hi_open)
{
    int ok = isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (ok)
        return 0;
    if (errlen)
        snprintf(err, errlen, "%s: %g is out of range, expected a number in %c%g, %g%c", field, v,
                 lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
    return MA_EINVAL;
}

int ma_params_validate(const ma_params *p, char *err, size_t errlen)
{
    int rc;
    if ((rc = int_range(err, errlen, "heads", p->heads, 1, MA_MAX_HEADS)) ||
        (rc = int_range(err, errlen, "dim", p->dim, 1, MA_MAX_DIM)) ||
        (rc = int_range(err, errlen, "value_dim", p->value_dim, 1, MA_MAX_DIM)) ||
        (rc = int_range(err, errlen, "slots", p->slots, 1, MA_MAX_SLOTS)) ||
        (rc = int_range(err, errlen, "chunk", p->chunk, 1, MA_MAX_CHUNK)) ||
        (rc = int_range(err, errlen, "topk", p->topk, 1, MA_MAX_TOPK)) ||
        (rc = int_range(err, errlen, "window", p->window, 1, MA_MAX_WINDOW)) ||
        (rc = real_range(err, errlen, "vla.lambda0", p->vla.lambda0, 0, 1, 1e12, 0)) ||
        (rc = int_range(err, errlen, "vla.period", p->vla.period, 1, 1 << 30)) ||
        (rc = real_range(err, errlen, "vla.refresh", p->vla.refresh, 0, 0, 1e6, 0)) ||
        (rc = real_range(err, errlen, "vla.penalty_scale", p->vla.penalty_scale, 0, 1, 1e6, 0)) ||
        (rc = real_range(err, errlen, "delta.beta", p->delta.beta, 0, 1, 1, 0)) ||
        (rc = real_range(err, errlen, "route_threshold", p->route_threshold, -1, 0, 2, 0)) ||
        (rc = real_range(err, errlen, "slot_policy.alpha", p->slot_policy.alpha, 0, 1, 1, 0)) ||
        (rc = int_range(err, errlen, "slot_policy.k", p->slot_policy.k, 1, MA_MAX_READ_K)) ||
        (rc = real_range(err, errlen, "slot_policy.temperature", p->slot_policy.temperature, 0, 1, 100, 0)))
        return rc;
    if (!ma_backbone_name(p->backbone) || !ma_feature_name(p->vla.feature) || !ma_selector_name(p->selector) ||
        !ma_eviction_name(p->slot_policy.eviction) || !ma_overwrite_name(p->slot_policy.overwrite) ||
        !ma_slot_read_name(p->slot_policy.read)) {
        if (errlen)
            snprintf(err, errlen, "backbone, vla.feature, selector or a slot_policy name: unknown enum value");
        return MA_EINVAL;
    }
    return 0;
}

bool ma_params_equal(const ma_params *a, const ma_params *b)
{
    return a->heads == b->heads && a->dim == b->dim && a->value_dim == b->value_dim &&
           a->slots == b->slots && a->chunk == b->chunk && a->topk == b->topk && a->window == b->window &&
           a->backbone == b->backbone && a->vla.lambda0 == b->vla.lambda0 && a->vla.period == b->vla.period &&
           a->vla.refresh == b->vla.refresh && a->vla.feature == b->vla.feature &&
           a->vla.penalty_scale == b->vla.penalty_scale && a->delta.beta == b->delta.beta &&
           a->route_threshold == b->route_threshold && a->selector == b->selector &&
           a->slot_policy.eviction == b->slot_policy.eviction && a->slot_policy.overwrite == b->slot_policy.overwrite &&
           a->slot_policy.alpha == b->slot_policy.alpha && a->slot_policy.read == b->slot_policy.read &&
           a->slot_policy.k == b->slot_policy.k && a->slot_policy.temperature == b->slot_policy.temperature;
}

static const char *const backbone_names[] = {"vla", "linear", "delta", "none"};
static const char *const feature_names[] = {"identity", "elu1"};
static const char *const selector_names[] = {"index", "chunks"};
static const char *const eviction_names[] = {"lru", "score"};
static const char *const overwrite_names[] = {"replace", "blend"};
static const char *const slot_read_names[] = {"best", "topk"};

#define NAME_OF(tab, v) ((unsigned)(v) < sizeof(tab) / sizeof(tab[0]) ? tab[v] : NULL)

const char *ma_backbone_name(ma_backbone_kind k) { return NAME_OF(backbone_names, k); }
const char *ma_feature_name(ma_feature f) { return NAME_OF(feature_names, f); }
const char *ma_selector_name(ma_selector s) { return NAME_OF(selector_names, s); }
const char *ma_eviction_name(ma_eviction e) { return NAME_OF(eviction_names, e); }
const char *ma_overwrite_name(ma_overwrite o) { return NAME_OF(overwrite_names, o); }
const char *ma_slot_read_name(ma_slot_read r) { return NAME_OF(slot_read_names, r); }

static int parse_name(const char *const *tab, int n, const char *name, int *out)
{
    for (int i = 0; name && i < n; i++)
        if (strcmp(tab[i], name) == 0) {
            *out = i;
            return 0;
        }
    return MA_EINVAL;
}

int ma_backbone_parse(const char *name, ma_backbone_kind *out)
{
    int v, rc = parse_name(backbone_names, 4, name, &v);
    if (rc == 0)
        *out = (ma_backbone_kind)v;
    return rc;
}

int ma_feature_parse(const char *name, ma_feature *out)
{
    int v, rc = parse_name(feature_names, 2, name, &v);
    if (rc == 0)
        *out = (ma_feature)v;
    return rc;
}

int ma_selector_parse(const char *name, ma_selector *out)
{
    int v, rc = parse_name(selector_names, 2, name, &v);
    if (rc == 0)
        *out = (ma_selector)v;
    return rc;
}

int ma_eviction_parse(const char *name, ma_eviction *out)
{
    int v, rc = parse_name(eviction_names, 2, name, &v);
    if (rc == 0)
        *out = (ma_eviction)v;
    return rc;
}

int ma_overwrite_parse(const char *name, ma_overwrite *out)
{
    int v, rc = parse_name(overwrite_names, 2, name, &v);
    if (rc == 0)
        *out = (ma_overwrite)v;
    return rc;
}

int ma_slot_read_parse(const char *name, ma_slot_read *out)
{
    int v, rc = parse_name(slot_read_names, 2, name, &v);
    if (rc == 0)
        *out = (ma_slot_read)v;
    return rc;
}

bool ma_name_valid(const char *name)
{
    size_t n = 0;
    if (!name)
        return false;
    for (const char *c = name; *c; c++, n++) {
        int ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                 *c == '.' || *c == '_' || *c == ':' || *c == '-';
        if (!ok || n >= MA_MAX_NAME)
            return false;
    }
    return n >= 1;
}
