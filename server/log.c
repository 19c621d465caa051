/*
 * server/log.c — the daemon's log (server/log.h).
 *
 * Design. Two process-wide settings written once before threads start, read without locks after.
 * Each line is built in a stack buffer and written with one write(2) to fd 2 (atomic for lines under
 * PIPE_BUF on pipes, and never interleaved mid-line in practice on terminals and files opened
 * O_APPEND). Messages longer than the buffer are truncated with "...".
 *
 * Not done here: buffering (stderr is unbuffered on purpose: a crash loses no line).
 */
#include "server/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static cfg_log_level g_level = CFG_LOG_INFO;
static cfg_log_format g_format = CFG_LOG_TEXT;

void srv_log_setup(cfg_log_level level, cfg_log_format format)
{
    g_level = level;
    g_format = format;
}

int srv_log_enabled(cfg_log_level level)
{
    return level <= g_level;
}

static size_t timestamp(char *buf, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return n;
}

/* Appends `s` JSON-escaped. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

static void emit(char *line, size_t n, size_t cap)
{
    if (n >= cap - 1) {
        n = cap - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    }
    line[n++] = '\n';
    ssize_t w = write(2, line, n);
    (void)w;   /* nowhere to report a failing stderr */
}

static void vlog(cfg_log_level level, const char *fmt, va_list ap)
{
    char msg[2048], line[4096], ts[40];
    vsnprintf(msg, sizeof msg, fmt, ap);
    timestamp(ts, sizeof ts);
    size_t n;
    if (g_format == CFG_LOG_JSON) {
        char esc[3072];
        json_escape(esc, sizeof esc, msg);
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}", ts,
                             cfg_log_level_name(level), esc);
    } else {
        n = (size_t)snprintf(line, sizeof line, "%s %-5s %s", ts, cfg_log_level_name(level), msg);
    }
    emit(line, n < sizeof line ? n : sizeof line - 1, sizeof line);
}

void srv_log(cfg_log_level level, const char *fmt, ...)
{
    if (!srv_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void srv_log_request(const char *method, const char *path, int status, size_t bytes, uint64_t usec,
                     const char *remote)
{
    if (!srv_log_enabled(CFG_LOG_INFO))
        return;
    if (g_format == CFG_LOG_TEXT) {
        /* The path is the client's bytes: keep control characters out of the log. */
        char safe[1024];
        size_t i;
        for (i = 0; path[i] && i + 1 < sizeof safe; i++)
            safe[i] = (unsigned char)path[i] < 0x20 || path[i] == 0x7f ? '?' : path[i];
        safe[i] = '\0';
        srv_log(CFG_LOG_INFO, "%s %s %d %zuB %lluus %s", method, safe, status, bytes, (unsigned long long)usec,
                remote);
        return;
    }
    char line[4096], ts[40], epath[2048], emethod[64];
    timestamp(ts, sizeof ts);
    json_escape(epath, sizeof epath, path);
    json_escape(emethod, sizeof emethod, method);
    size_t n = (size_t)snprintf(line, sizeof line,
                                "{\"ts\":\"%s\",\"level\":\"info\",\"msg\":\"request\",\"method\":\"%s\","
                                "\"path\":\"%s\",\"status\":%d,\"bytes\":%zu,\"us\":%llu,\"remote\":\"%s\"}",
                                ts, emethod, epath, status, bytes, (unsigned long long)usec, remote);
    emit(line, n < sizeof line ? n : sizeof line - 1, sizeof line);
}
