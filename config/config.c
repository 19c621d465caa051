/*
 * config/config.c — the daemon's options (config/config.h).
 *
 * Design. One table describes every option: its name, type, range, and where it lives in cfg_config.
 * The four sources are applied in order of precedence, lowest first — defaults, file, environment,
 * flags — each value parsed and range-checked as it is read, so an error can name its exact source.
 * The config file is found first (flags, then MEMATTN_CONFIG) because it sits below both.
 * Unknown keys in the file and unknown flags are errors; environment variables other than the
 * MEMATTN_* names of the table are ignored (the environment is shared with other programs, e.g. the
 * test harness's MEMATTN_BIN).
 *
 * Not done here: reporting which source set each value (only errors name sources), reload.
 */
#include "config/config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "core/error.h"

#define MEMATTN_VERSION "0.1.0"

typedef enum { T_STRING, T_ADDR, T_INT, T_SIZE, T_DURATION, T_LEVEL, T_FORMAT, T_ORIGINS, T_CHECK } opt_type;

typedef struct {
    const char *name;      /* flag name without "--"; file key with '-' or '_'; env MEMATTN_ + upper */
    opt_type type;
    size_t off;            /* offset of the field in cfg_config */
    size_t size;           /* string fields: buffer size */
    uint64_t min, max;     /* numeric ranges (durations in ms, sizes in bytes) */
    const char *help;
} option;

#define F(field) offsetof(cfg_config, field), sizeof(((cfg_config *)0)->field)

static const option options[] = {
    { "listen", T_ADDR, F(listen), 0, 0, "HOST:PORT to listen on (IPv4, [IPv6] or localhost; port 0 = any free port)" },
    { "data", T_STRING, F(data_dir), 0, 0, "directory of the session store" },
    { "config", T_STRING, F(config_file), 0, 0, "config file (key = value lines; see config/memattn.conf)" },
    { "token", T_STRING, F(token), 0, 0, "bearer token required on /v1/ requests (empty: no auth)" },
    { "threads", T_INT, F(threads), 1, 1024, "worker threads" },
    { "max-body", T_SIZE, F(max_body), 1, 1ull << 30, "largest request body in bytes (413 beyond)" },
    { "memory", T_SIZE, F(memory), 1ull << 20, 1ull << 50, "session cache budget in bytes" },
    { "log-level", T_LEVEL, F(log_level), 0, 0, "error, warn, info or debug" },
    { "log-format", T_FORMAT, F(log_format), 0, 0, "text or json (JSON lines)" },
    { "max-header-bytes", T_SIZE, F(max_header_bytes), 256, 1ull << 20, "request line + headers in bytes (431 beyond)" },
    { "max-uri", T_SIZE, F(max_uri), 16, 1ull << 20, "request target length in bytes (414 beyond)" },
    { "header-timeout", T_DURATION, F(header_timeout_ms), 1, 3600000, "time to receive a request's head (408)" },
    { "body-timeout", T_DURATION, F(body_timeout_ms), 1, 3600000, "longest pause while receiving a body (408)" },
    { "idle-timeout", T_DURATION, F(idle_timeout_ms), 1, 86400000, "idle keep-alive connection lifetime" },
    { "max-connections", T_INT, F(max_connections), 1, 1000000, "open connections (503 and close beyond)" },
    { "drain-timeout", T_DURATION, F(drain_timeout_ms), 0, 3600000, "bound on the graceful stop" },
    { "queue", T_INT, F(queue_max), 1, 1000000, "worker jobs waiting (503 overloaded beyond)" },
    { "cors-origin", T_ORIGINS, F(cors_origin), 0, 0,
      "origin allowed to call the API from a browser (CORS), e.g. https://app.example; repeatable or a comma list; * = any" },
    { "node-id", T_STRING, F(node_id), 0, 0, "this daemon's name in a cluster: X-Memattn-Node header and /healthz (empty: none)" },
    { "idempotency-keys", T_INT, F(idempotency_keys), 1, 1000000,
      "Idempotency-Key answers kept per session (the newest; docs/API.md \"Safe retries\")" },
    { "idempotency-window", T_DURATION, F(idempotency_window_ms), 1, 2592000000u,
      "how long an Idempotency-Key answer is kept at most" },
    { "store-check", T_CHECK, F(store_check), 0, 0,
      "when the store's integrity check (reads the whole file) runs: background (serve at once) or open (before serving)" },
};
#define NOPTIONS (sizeof options / sizeof *options)

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const char *const format_names[] = { "text", "json" };
static const char *const check_names[] = { "background", "open" };

/* The names an enumerated option accepts (its value is the index), their count and how to say them. */
static const char *const *enum_names(opt_type t, int *n, const char **expected)
{
    switch (t) {
    case T_LEVEL: *n = 4; *expected = "error, warn, info or debug"; return level_names;
    case T_FORMAT: *n = 2; *expected = "text or json"; return format_names;
    default: *n = 2; *expected = "background or open"; return check_names;
    }
}

const char *cfg_version(void)
{
    return MEMATTN_VERSION;
}

const char *cfg_log_level_name(cfg_log_level l)
{
    return (unsigned)l < 4 ? level_names[l] : "?";
}

void cfg_defaults(cfg_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->action = CFG_RUN;
    snprintf(cfg->listen, sizeof cfg->listen, "127.0.0.1:8080");
    snprintf(cfg->data_dir, sizeof cfg->data_dir, "./data");
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
    cfg->max_body = 1u << 20;
    cfg->memory = 1u << 30;
    cfg->log_level = CFG_LOG_INFO;
    cfg->log_format = CFG_LOG_TEXT;
    cfg->max_header_bytes = 16u << 10;
    cfg->max_uri = 8u << 10;
    cfg->header_timeout_ms = 10000;
    cfg->body_timeout_ms = 30000;
    cfg->idle_timeout_ms = 60000;
    cfg->max_connections = 1024;
    cfg->drain_timeout_ms = 30000;
    cfg->queue_max = 1024;
    cfg->idempotency_keys = 1000;
    cfg->idempotency_window_ms = 24u * 3600 * 1000;
}

static void env_name(const option *o, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "MEMATTN_");
    for (const char *s = o->name; *s && n + 1 < len; s++)
        buf[n++] = *s == '-' ? '_' : (char)(*s - ('a' <= *s && *s <= 'z' ? 32 : 0));
    buf[n] = '\0';
}

void cfg_usage(FILE *f)
{
    cfg_config d;
    cfg_defaults(&d);
    fprintf(f,
            "usage: memattnd [OPTION VALUE | --OPTION=VALUE]...\n"
            "memattn: long-context attention with editable memory slots, served over REST.\n\n"
            "Each option is also read from the environment variable shown and from the config file\n"
            "(key = value, key spelled like the option). Precedence: flag > environment > file > default.\n"
            "Sizes take K, M, G or T (x1024); durations ms, s, m or h (bare number: seconds).\n\n");
    for (size_t i = 0; i < NOPTIONS; i++) {
        const option *o = &options[i];
        char env[64], def[64] = "";
        env_name(o, env, sizeof env);
        const char *field = (const char *)&d + o->off;
        switch (o->type) {
        case T_STRING: case T_ADDR: case T_ORIGINS: snprintf(def, sizeof def, "%s", *field ? field : "none"); break;
        case T_INT:
            if (strcmp(o->name, "threads") == 0)
                snprintf(def, sizeof def, "online CPUs (%d here)", *(const int *)field);
            else
                snprintf(def, sizeof def, "%d", *(const int *)field);
            break;
        case T_SIZE: snprintf(def, sizeof def, "%zu", *(const size_t *)field); break;
        case T_DURATION: snprintf(def, sizeof def, "%ums", *(const unsigned *)field); break;
        case T_LEVEL: snprintf(def, sizeof def, "%s", level_names[d.log_level]); break;
        case T_FORMAT: snprintf(def, sizeof def, "%s", format_names[d.log_format]); break;
        case T_CHECK: snprintf(def, sizeof def, "%s", check_names[d.store_check]); break;
        }
        if (o->max)
            fprintf(f, "  --%-18s %-26s %s\n  %-20s %-26s default %s, accepted %llu..%llu%s\n", o->name, env,
                    o->help, "", "", def, (unsigned long long)o->min, (unsigned long long)o->max,
                    o->type == T_DURATION ? " ms" : o->type == T_SIZE ? " bytes" : "");
        else
            fprintf(f, "  --%-18s %-26s %s\n  %-20s %-26s default %s\n", o->name, env, o->help, "", "", def);
    }
    fprintf(f, "  --%-18s %-26s %s\n  --%-18s %-26s %s\n", "help", "", "this text", "version", "",
            "print the version and exit");
}

/* ---- value parsing: each writes a complete message into err on failure ---- */

typedef struct {
    char *err;
    size_t errlen;
} errbuf;

static int fail(errbuf *e, const char *src, const option *o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(errbuf *e, const char *src, const option *o, const char *fmt, ...)
{
    if (e->errlen == 0)
        return MA_EINVAL;
    /* "--threads: ..." names the key already; "MEMATTN_THREADS: threads: ..." and "f.conf:3: threads: ..." */
    bool flag = strncmp(src, "--", 2) == 0;
    int n = o && !flag ? snprintf(e->err, e->errlen, "%s: %s: ", src, o->name)
                       : snprintf(e->err, e->errlen, "%s: ", src);
    if (n < 0 || (size_t)n >= e->errlen)
        return MA_EINVAL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err + n, e->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return MA_EINVAL;
}

/* Unsigned decimal with an optional suffix from `units` (multipliers). Returns false on junk/overflow. */
typedef struct {
    const char *suffix;
    uint64_t mult;
} unit;

static bool parse_scaled(const char *s, const unit *units, size_t nunits, uint64_t bare_mult, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return false;
    uint64_t mult = bare_mult;
    if (*end) {
        size_t i;
        for (i = 0; i < nunits; i++)
            if (strcasecmp(end, units[i].suffix) == 0)
                break;
        if (i == nunits)
            return false;
        mult = units[i].mult;
    }
    if (mult && v > UINT64_MAX / mult)
        return false;
    *out = v * mult;
    return true;
}

/* One origin as a browser sends it: "*", or http(s)://host[:port] with no path and no trailing slash. */
static bool origin_valid(const char *s, size_t n)
{
    if (n == 1 && s[0] == '*')
        return true;
    size_t pre = n >= 7 && strncasecmp(s, "http://", 7) == 0 ? 7 : n >= 8 && strncasecmp(s, "https://", 8) == 0 ? 8 : 0;
    if (!pre || pre == n)
        return false;
    for (size_t i = pre; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
              c == ':' || c == '[' || c == ']'))
            return false;
    }
    return true;
}

/* Appends the comma list `val` to the origins field (cleared first when `fresh`), checked and trimmed. */
static int set_origins(char *field, size_t size, const char *val, bool fresh, const char *src, const option *o,
                       errbuf *e)
{
    char out[sizeof(((cfg_config *)0)->cors_origin)];
    size_t n = fresh ? 0 : strlen(field);
    memcpy(out, field, n);
    for (const char *p = val;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len) {
            if (!origin_valid(p, len))
                return fail(e, src, o, "\"%.*s\" is not an origin; expected * or http(s)://host[:port] "
                            "(no path, no trailing slash)", (int)(len < 200 ? len : 200), p);
            if (n + len + 2 > size || n + len + 2 > sizeof out)
                return fail(e, src, o, "the origins are longer than %zu bytes in total", size - 1);
            if (n)
                out[n++] = ',';
            memcpy(out + n, p, len);
            n += len;
        }
        if (!end)
            break;
        p = end + 1;
    }
    out[n] = '\0';
    memcpy(field, out, n + 1);
    return 0;
}

int cfg_cors_allows(const cfg_config *cfg, const char *origin)
{
    if (!origin || !*origin)
        return 0;
    size_t ol = strlen(origin);
    for (const char *p = cfg->cors_origin; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if ((len == 1 && *p == '*') || (len == ol && strncasecmp(p, origin, len) == 0))
            return 1;
        if (!end)
            break;
        p = end + 1;
    }
    return 0;
}

/* `fresh`: the first value of this option from the current source (lists start over; see cfg_load). */
static int set_value(cfg_config *cfg, const option *o, const char *val, const char *src, bool fresh, errbuf *e)
{
    char *field = (char *)cfg + o->off;
    uint64_t v = 0;
    switch (o->type) {
    case T_ORIGINS:
        return set_origins(field, o->size, val, fresh, src, o, e);
    case T_STRING:
        if (strlen(val) >= o->size)
            return fail(e, src, o, "value is %zu bytes long; expected at most %zu", strlen(val), o->size - 1);
        if (strcmp(o->name, "token") == 0)
            for (const char *p = val; *p; p++)
                if (*p <= ' ' || *p > '~')
                    return fail(e, src, o, "the token may only contain visible ASCII characters (no spaces)");
        if (strcmp(o->name, "data") == 0 && !*val)
            return fail(e, src, o, "empty; expected a directory path");
        if (strcmp(o->name, "node-id") == 0)
            for (const char *p = val; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                      *p == '.' || *p == '_' || *p == ':' || *p == '-'))
                    return fail(e, src, o, "\"%s\": expected 1-64 characters of [A-Za-z0-9._:-] (or empty)", val);
        memcpy(field, val, strlen(val) + 1);
        return 0;
    case T_ADDR: {
        /* HOST:PORT with HOST an IPv4 literal, "localhost" or a bracketed IPv6 literal. */
        const char *colon = strrchr(val, ':');
        uint64_t port;
        if (!colon || !parse_scaled(colon + 1, NULL, 0, 1, &port) || port > 65535)
            return fail(e, src, o, "\"%s\" has no valid port; expected HOST:PORT with PORT 0..65535", val);
        char host[128];
        size_t hl = (size_t)(colon - val);
        if (hl == 0 || hl >= sizeof host || strlen(val) >= o->size)
            return fail(e, src, o, "\"%s\": expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080", val);
        memcpy(host, val, hl);
        host[hl] = '\0';
        struct sockaddr_in a4;
        struct sockaddr_in6 a6;
        bool ok;
        if (host[0] == '[' && host[hl - 1] == ']') {
            host[hl - 1] = '\0';
            ok = uv_ip6_addr(host + 1, 0, &a6) == 0;
        } else {
            ok = strcmp(host, "localhost") == 0 || uv_ip4_addr(host, 0, &a4) == 0;
        }
        if (!ok)
            return fail(e, src, o, "\"%s\": host is not an IPv4 address, [IPv6] address or localhost", val);
        memcpy(field, val, strlen(val) + 1);
        return 0;
    }
    case T_INT:
    case T_SIZE:
    case T_DURATION: {
        static const unit sizes[] = { { "k", 1ull << 10 }, { "m", 1ull << 20 }, { "g", 1ull << 30 }, { "t", 1ull << 40 } };
        static const unit times[] = { { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 } };
        bool ok;
        const char *what;
        if (o->type == T_INT) {
            ok = parse_scaled(val, NULL, 0, 1, &v);
            what = "an integer";
        } else if (o->type == T_SIZE) {
            ok = parse_scaled(val, sizes, 4, 1, &v);
            what = "a size in bytes (suffix K, M, G or T allowed)";
        } else {
            ok = parse_scaled(val, times, 4, 1000, &v);
            what = "a duration (suffix ms, s, m or h; bare number = seconds)";
        }
        if (!ok)
            return fail(e, src, o, "\"%s\" is not %s; expected %llu..%llu%s", val, what,
                        (unsigned long long)o->min, (unsigned long long)o->max,
                        o->type == T_DURATION ? " ms" : o->type == T_SIZE ? " bytes" : "");
        if (v < o->min || v > o->max)
            return fail(e, src, o, "\"%s\" is out of range; expected %llu..%llu%s", val, (unsigned long long)o->min,
                        (unsigned long long)o->max, o->type == T_DURATION ? " ms" : o->type == T_SIZE ? " bytes" : "");
        /* int and unsigned fields alike: the ranges above fit both. */
        if (o->type == T_SIZE)
            *(size_t *)field = (size_t)v;
        else
            *(unsigned *)field = (unsigned)v;
        return 0;
    }
    case T_LEVEL:
    case T_FORMAT:
    case T_CHECK: {
        int n;
        const char *expected;
        const char *const *names = enum_names(o->type, &n, &expected);
        for (int i = 0; i < n; i++)
            if (strcmp(val, names[i]) == 0) {
                *(int *)field = i;
                return 0;
            }
        return fail(e, src, o, "\"%s\" is not accepted; expected %s", val, expected);
    }
    }
    return MA_EINVAL;
}

/* Finds an option by flag/file spelling; '_' and '-' are interchangeable. */
static const option *find_option(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        const char *n = options[i].name;
        if (strlen(n) != len)
            continue;
        size_t j = 0;
        while (j < len && (name[j] == n[j] || (name[j] == '_' && n[j] == '-')))
            j++;
        if (j == len)
            return &options[i];
    }
    return NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* Marks option o as seen in the current source; true the first time (lists then start over). */
static bool first_seen(bool *seen, const option *o)
{
    size_t i = (size_t)(o - options);
    bool first = !seen[i];
    seen[i] = true;
    return first;
}

static int load_file(cfg_config *cfg, const char *path, errbuf *e)
{
    bool seen[NOPTIONS] = { false };
    FILE *f = fopen(path, "r");
    if (!f) {
        if (e->errlen)
            snprintf(e->err, e->errlen, "config file %s: %s", path, strerror(errno));
        return MA_EIO;
    }
    char line[8192];
    int rc = 0;
    for (int lineno = 1; fgets(line, sizeof line, f); lineno++) {
        char src[CFG_PATH_MAX + 32];
        snprintf(src, sizeof src, "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = fail(e, src, NULL, "line longer than %zu bytes", sizeof line - 2);
            goto out;
        }
        char *s = trim(line);
        if (*s == '#' || *s == '\0')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = fail(e, src, NULL, "\"%s\" is not a `key = value` line", s);
            goto out;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        /* A '#' after the value starts a comment unless the value is quoted. */
        if (val[0] == '"') {
            char *q = strchr(val + 1, '"');
            if (!q) {
                rc = fail(e, src, NULL, "%s: unterminated quoted value", key);
                goto out;
            }
            char *rest = trim(q + 1);
            if (*rest && *rest != '#') {
                rc = fail(e, src, NULL, "%s: unexpected text \"%s\" after the quoted value", key, rest);
                goto out;
            }
            *q = '\0';
            val++;
        } else {
            char *hash = strchr(val, '#');
            if (hash) {
                *hash = '\0';
                val = trim(val);
            }
        }
        if (strcmp(key, "config") == 0) {
            rc = fail(e, src, NULL, "config: a config file cannot name another config file");
            goto out;
        }
        const option *o = find_option(key, strlen(key));
        if (!o) {
            rc = fail(e, src, NULL, "unknown key \"%s\"; run memattnd --help for the accepted keys", key);
            goto out;
        }
        if ((rc = set_value(cfg, o, val, src, first_seen(seen, o), e)) < 0)
            goto out;
    }
    if (ferror(f)) {
        if (e->errlen)
            snprintf(e->err, e->errlen, "config file %s: read error", path);
        rc = MA_EIO;
    }
out:
    fclose(f);
    return rc;
}

int cfg_load(cfg_config *cfg, int argc, char *const argv[], char *const envp[], char *err, size_t errlen)
{
    errbuf e = { err, errlen };
    if (errlen)
        err[0] = '\0';
    cfg_defaults(cfg);

    /* Pass 1 over the flags: help/version win, and find --config (it sits below env and flags). */
    const char *config_flag = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cfg->action = CFG_HELP;
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            cfg->action = CFG_VERSION;
            return 0;
        }
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config_flag = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            config_flag = argv[i] + 9;
    }
    const char *config_env = NULL;
    for (char *const *ep = envp; ep && *ep; ep++)
        if (strncmp(*ep, "MEMATTN_CONFIG=", 15) == 0)
            config_env = *ep + 15;
    const char *config_path = config_flag ? config_flag : config_env;
    int rc;
    if (config_path && *config_path) {
        const option *o = find_option("config", 6);
        if ((rc = set_value(cfg, o, config_path, config_flag ? "--config" : "MEMATTN_CONFIG", true, &e)) < 0)
            return rc;
        if ((rc = load_file(cfg, config_path, &e)) < 0)
            return rc;
    }

    for (char *const *ep = envp; ep && *ep; ep++) {
        if (strncmp(*ep, "MEMATTN_", 8) != 0)
            continue;
        for (size_t i = 0; i < NOPTIONS; i++) {
            char name[64];
            env_name(&options[i], name, sizeof name);
            size_t nl = strlen(name);
            if (strncmp(*ep, name, nl) == 0 && (*ep)[nl] == '=' && strcmp(options[i].name, "config") != 0) {
                if ((rc = set_value(cfg, &options[i], *ep + nl + 1, name, true, &e)) < 0)
                    return rc;
            }
        }
    }

    bool seen[NOPTIONS] = { false };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            return fail(&e, a, NULL, "unexpected argument; options are --name value (see --help)");
        const char *name = a + 2, *eq = strchr(name, '='), *val;
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const option *o = find_option(name, nl);
        char flag[96];
        snprintf(flag, sizeof flag, "--%.*s", (int)(nl < 64 ? nl : 64), name);
        if (!o || memchr(name, '_', nl))
            return fail(&e, flag, NULL, "unknown option; run memattnd --help for the accepted options");
        if (eq) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc)
                return fail(&e, flag, NULL, "missing value");
            val = argv[++i];
        }
        if ((rc = set_value(cfg, o, val, flag, first_seen(seen, o), &e)) < 0)
            return rc;
    }
    return 0;
}
