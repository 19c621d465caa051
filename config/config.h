/*
 * config/config.h — the daemon's options: built-in defaults < config file < MEMATTN_* environment <
 * command-line flags.
 *
 * Every option has one name used in three spellings: the flag `--max-body`, the environment variable
 * `MEMATTN_MAX_BODY` and the config-file key `max_body` (or `max-body`). The config file is lines of
 * `key = value`; '#' starts a comment; blank lines are ignored; values may be double-quoted.
 * Sizes accept a K, M or G suffix (powers of 1024); durations a ms, s or m suffix (bare number =
 * seconds). Each value is checked where it is read, so an error names its source
 * ("memattn.conf:12", "MEMATTN_THREADS", "--threads").
 *
 * Not done here: reloading at run time (SIGHUP), include files, per-route limits.
 */
#ifndef CFG_CONFIG_H
#define CFG_CONFIG_H

#include <stddef.h>
#include <stdio.h>

typedef enum { CFG_LOG_ERROR = 0, CFG_LOG_WARN, CFG_LOG_INFO, CFG_LOG_DEBUG } cfg_log_level;
typedef enum { CFG_LOG_TEXT = 0, CFG_LOG_JSON } cfg_log_format;
/* When the store's integrity checks run (docs/STORE.md, "Integrity"): beside serving, or before it. */
typedef enum { CFG_CHECK_BACKGROUND = 0, CFG_CHECK_OPEN } cfg_store_check;
typedef enum { CFG_RUN = 0, CFG_HELP, CFG_VERSION } cfg_action;

#define CFG_PATH_MAX 4096

typedef struct cfg_config {
    cfg_action action;            /* what main should do: run, or print --help / --version and exit 0 */
    char listen[256];             /* --listen HOST:PORT, default 127.0.0.1:8080; [v6]:port for IPv6 */
    char data_dir[CFG_PATH_MAX];  /* --data DIR, default ./data */
    char config_file[CFG_PATH_MAX]; /* --config FILE, "" = none */
    char token[256];              /* --token, "" = no auth */
    int threads;                  /* --threads, 1..1024, default: online CPUs */
    size_t max_body;              /* --max-body bytes, default 1 MiB */
    size_t memory;                /* --memory bytes: session cache budget, default 1 GiB */
    cfg_log_level log_level;      /* --log-level error|warn|info|debug, default info */
    cfg_log_format log_format;    /* --log-format text|json, default text */
    size_t max_header_bytes;      /* --max-header-bytes: request line + headers, default 16 KiB (431) */
    size_t max_uri;               /* --max-uri bytes of the request target, default 8 KiB (414) */
    unsigned header_timeout_ms;   /* --header-timeout: whole request head must arrive, default 10 s */
    unsigned idle_timeout_ms;     /* --idle-timeout: keep-alive connection with no request, default 60 s */
    unsigned body_timeout_ms;     /* --body-timeout: no body byte for this long (408), default 30 s */
    unsigned max_connections;     /* --max-connections, default 1024; beyond: 503 and close */
    unsigned drain_timeout_ms;    /* --drain-timeout: graceful stop bound, default 30 s */
    unsigned queue_max;           /* --queue: worker jobs waiting, default 1024; beyond: 503 overloaded */
    char cors_origin[2048];       /* --cors-origin: comma-separated origins allowed by CORS ("*" = any);
                                     "" = CORS off. Repeating the option within one source appends. */
    char node_id[65];             /* --node-id: this daemon's name in a cluster, 1..64 of [A-Za-z0-9._:-];
                                   * "" (default) = none. Sent as X-Memattn-Node and in /healthz. */
    unsigned idempotency_keys;    /* --idempotency-keys: Idempotency-Key answers kept per session, default 1000 */
    unsigned idempotency_window_ms; /* --idempotency-window: and for how long at most, default 24 h */
    cfg_store_check store_check;  /* --store-check background|open: the store's integrity check runs beside
                                   * serving (default) or before the daemon listens */
} cfg_config;

/* True when `origin` (an Origin request header) is one of cfg->cors_origin, or the list holds "*".
 * Comparison is ASCII case-insensitive and exact otherwise (no trailing slash, no path). */
int cfg_cors_allows(const cfg_config *cfg, const char *origin);

/* Fills *cfg with the built-in defaults (threads = online CPUs). */
void cfg_defaults(cfg_config *cfg);

/* Builds the configuration from the defaults, the config file (--config, else MEMATTN_CONFIG, else
 * none), `envp` (NULL-terminated "NAME=value" strings, e.g. environ; NULL = none) and argv[1..argc-1].
 * Returns 0 (cfg->action says whether to run or print help/version), or MA_EINVAL with a one-line
 * message in err naming the key, its source (flag, environment variable, or file:line) and what is
 * accepted; MA_EIO when the config file cannot be read. *cfg is unspecified after an error.
 * No global state: safe to call from tests repeatedly. */
int cfg_load(cfg_config *cfg, int argc, char *const argv[], char *const envp[], char *err,
             size_t errlen);

/* Writes the --help text (every option, its variable, default and accepted values) to `f`. */
void cfg_usage(FILE *f);

/* The daemon's version string, e.g. "0.1.0". */
const char *cfg_version(void);

/* Name of a log level / format ("info", "json"). */
const char *cfg_log_level_name(cfg_log_level l);

#endif
