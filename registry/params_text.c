/*
 * registry/params_text.c — ma_params <-> the stored config text (see registry/params_text.h).
 *
 * One table describes every field (JSON name, enclosing object, kind, offset in ma_params); the encoder
 * and the decoder both walk it, so the two cannot disagree about a field. The text is printed by cJSON
 * (numbers round-trip: cJSON prints doubles with up to 17 significant digits).
 */
#include "registry/params_text.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/error.h"

typedef enum { F_INT, F_REAL, F_BACKBONE, F_FEATURE, F_SELECTOR, F_EVICTION, F_OVERWRITE, F_SLOT_READ } field_kind;

typedef struct {
    const char *group;   /* enclosing object ("vla", "delta", "slot_policy") or NULL for the top level */
    const char *name;
    field_kind kind;
    size_t off;
} field;

#define FLD(g, n, k, member) {g, n, k, offsetof(ma_params, member)}

static const field fields[] = {
    FLD(NULL, "heads", F_INT, heads),
    FLD(NULL, "dim", F_INT, dim),
    FLD(NULL, "value_dim", F_INT, value_dim),
    FLD(NULL, "slots", F_INT, slots),
    FLD(NULL, "chunk", F_INT, chunk),
    FLD(NULL, "topk", F_INT, topk),
    FLD(NULL, "window", F_INT, window),
    FLD(NULL, "backbone", F_BACKBONE, backbone),
    FLD("vla", "lambda0", F_REAL, vla.lambda0),
    FLD("vla", "period", F_INT, vla.period),
    FLD("vla", "refresh", F_REAL, vla.refresh),
    FLD("vla", "feature", F_FEATURE, vla.feature),
    FLD("vla", "penalty_scale", F_REAL, vla.penalty_scale),
    FLD("delta", "beta", F_REAL, delta.beta),
    FLD(NULL, "route_threshold", F_REAL, route_threshold),
    FLD(NULL, "selector", F_SELECTOR, selector),
    FLD("slot_policy", "eviction", F_EVICTION, slot_policy.eviction),
    FLD("slot_policy", "overwrite", F_OVERWRITE, slot_policy.overwrite),
    FLD("slot_policy", "alpha", F_REAL, slot_policy.alpha),
    FLD("slot_policy", "read", F_SLOT_READ, slot_policy.read),
    FLD("slot_policy", "k", F_INT, slot_policy.k),
    FLD("slot_policy", "temperature", F_REAL, slot_policy.temperature),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static const char *const groups[] = {"vla", "delta", "slot_policy"};

static cJSON *group_object(cJSON *root, const char *group)
{
    if (!group)
        return root;
    cJSON *g = cJSON_GetObjectItemCaseSensitive(root, group);
    return g ? g : cJSON_AddObjectToObject(root, group);
}

int reg_params_encode(const ma_params *p, char **out)
{
    const char *base = (const char *)p;
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    for (size_t i = 0; ok && i < NFIELDS; i++) {
        const field *f = &fields[i];
        cJSON *o = group_object(root, f->group);
        const void *v = base + f->off;
        switch (f->kind) {
        case F_INT:      ok = o && cJSON_AddNumberToObject(o, f->name, *(const int *)v); break;
        case F_REAL:     ok = o && cJSON_AddNumberToObject(o, f->name, *(const double *)v); break;
        case F_BACKBONE: ok = o && cJSON_AddStringToObject(o, f->name, ma_backbone_name(*(const ma_backbone_kind *)v)); break;
        case F_FEATURE:  ok = o && cJSON_AddStringToObject(o, f->name, ma_feature_name(*(const ma_feature *)v)); break;
        case F_SELECTOR: ok = o && cJSON_AddStringToObject(o, f->name, ma_selector_name(*(const ma_selector *)v)); break;
        case F_EVICTION: ok = o && cJSON_AddStringToObject(o, f->name, ma_eviction_name(*(const ma_eviction *)v)); break;
        case F_OVERWRITE: ok = o && cJSON_AddStringToObject(o, f->name, ma_overwrite_name(*(const ma_overwrite *)v)); break;
        case F_SLOT_READ: ok = o && cJSON_AddStringToObject(o, f->name, ma_slot_read_name(*(const ma_slot_read *)v)); break;
        }
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return MA_ENOMEM;
    /* cJSON's allocator is malloc unless a program installs hooks; copy so callers can always free(). */
    *out = strdup(text);
    cJSON_free(text);
    return *out ? 0 : MA_ENOMEM;
}

static int corrupt(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    if (errlen)
        snprintf(err, errlen, fmt, a, b);
    return MA_ECORRUPT;
}

/* Is `name` a member allowed in object `group` (NULL: the top level)? */
static bool known(const char *group, const char *name)
{
    if (!group)
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
            if (strcmp(groups[g], name) == 0)
                return true;
    for (size_t i = 0; i < NFIELDS; i++)
        if (strcmp(fields[i].name, name) == 0 &&
            (group ? fields[i].group && strcmp(fields[i].group, group) == 0 : !fields[i].group))
            return true;
    return false;
}

static int check_object(const cJSON *o, const char *group, char *err, size_t errlen)
{
    if (!cJSON_IsObject(o))
        return corrupt(err, errlen, "%s%s: expected an object", group ? group : "config", "");
    for (const cJSON *c = o->child; c; c = c->next)
        if (!c->string || !known(group, c->string))
            return corrupt(err, errlen, "%s: unknown field %s", group ? group : "config",
                           c->string ? c->string : "?");
    return 0;
}

static int read_field(const cJSON *it, const field *f, char *base, char *err, size_t errlen)
{
    void *v = base + f->off;
    int rc = 0;
    char path[64];   /* "vla.period", "slot_policy.k", "heads" */
    snprintf(path, sizeof path, "%s%s%s", f->group ? f->group : "", f->group ? "." : "", f->name);
    if (f->kind == F_INT || f->kind == F_REAL) {
        double x = cJSON_IsNumber(it) ? it->valuedouble : NAN;
        if (!isfinite(x) || (f->kind == F_INT && (x != floor(x) || x < -2147483648.0 || x > 2147483647.0)))
            return corrupt(err, errlen, "%s: expected %s", path, f->kind == F_INT ? "an integer" : "a number");
        if (f->kind == F_INT)
            *(int *)v = (int)x;
        else
            *(double *)v = x;
        return 0;
    }
    const char *s = cJSON_IsString(it) ? it->valuestring : NULL;
    switch (f->kind) {
    case F_BACKBONE: rc = ma_backbone_parse(s, v); break;
    case F_FEATURE:  rc = ma_feature_parse(s, v); break;
    case F_EVICTION: rc = ma_eviction_parse(s, v); break;
    case F_OVERWRITE: rc = ma_overwrite_parse(s, v); break;
    case F_SLOT_READ: rc = ma_slot_read_parse(s, v); break;
    default:         rc = ma_selector_parse(s, v); break;
    }
    return rc ? corrupt(err, errlen, "%s: expected a known name%s", path, "") : 0;
}

int reg_params_decode(const char *text, ma_params *out, char *err, size_t errlen)
{
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    ma_params p;
    int rc;

    if (!root)
        return corrupt(err, errlen, "not JSON%s%s", "", "");
    if ((rc = check_object(root, NULL, err, errlen)) != 0)
        goto done;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, groups[g]);
        if (o && !cJSON_IsNull(o) && (rc = check_object(o, groups[g], err, errlen)) != 0)
            goto done;
    }
    ma_params_default(&p);
    p.value_dim = 0;   /* absent: that of dim, below */
    for (size_t i = 0; i < NFIELDS; i++) {
        const field *f = &fields[i];
        const cJSON *o = f->group ? cJSON_GetObjectItemCaseSensitive(root, f->group) : root;
        const cJSON *it = o ? cJSON_GetObjectItemCaseSensitive(o, f->name) : NULL;
        if (it && (rc = read_field(it, f, (char *)&p, err, errlen)) != 0)
            goto done;
    }
    if (p.value_dim == 0 && !cJSON_GetObjectItemCaseSensitive(root, "value_dim"))
        p.value_dim = p.dim;
    char msg[256];
    if (ma_params_validate(&p, msg, sizeof msg) != 0) {
        rc = corrupt(err, errlen, "%s%s", msg, "");
        goto done;
    }
    *out = p;
done:
    cJSON_Delete(root);
    return rc;
}
