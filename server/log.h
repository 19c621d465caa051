/*
 * server/log.h — the daemon's log: leveled lines on standard error, as text or JSON lines.
 *
 * Design. One process-wide logger configured once by main (srv_log_setup) before any thread starts;
 * each line is formatted into a local buffer and written with a single write(2), so lines from worker
 * threads never interleave. Text lines look like
 *   2026-11-28T19:00:00.123Z info  GET /healthz 200 15B 42us
 * JSON lines: {"ts":"...","level":"info","msg":"..."} and, for requests, method/path/status/bytes/us
 * fields.
 *
 * Not done here: log files, rotation, syslog (run under a supervisor that captures stderr).
 */
#ifndef SRV_LOG_H
#define SRV_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

/* Sets the level and format. Call once at start, before threads exist. Default: info, text. */
void srv_log_setup(cfg_log_level level, cfg_log_format format);

/* True when messages of `level` are written. */
int srv_log_enabled(cfg_log_level level);

/* Writes one message line at `level` (dropped when below the configured level). Any thread. */
void srv_log(cfg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The per-request line (level info): method, path, status, response bytes, microseconds, peer. */
void srv_log_request(const char *method, const char *path, int status, size_t bytes, uint64_t usec,
                     const char *remote);

#endif
