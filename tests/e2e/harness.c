/*
 * tests/e2e/harness.c — the end-to-end harness (tests/e2e/harness.h).
 *
 * The daemon is a child process (fork + execve) with stdout on a pipe (for the listening line) and
 * stderr on a log file in its temp dir. Every wait is bounded so a broken daemon fails a test rather
 * than hanging the suite.
 */
#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

void mh_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Daemons started and not yet waited for, so a failing test (cmocka longjmps out of it) cannot
 * leave one running. Copies, not pointers: the test's mh_daemon lives on a stack frame that is gone
 * by the time the teardown runs. */
#define MAX_LIVE 16
static struct {
    pid_t pid;
    char dir[256];
} live[MAX_LIVE];

static void track(const mh_daemon *d, bool on)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (on && live[i].pid == 0) {
            live[i].pid = d->pid;
            snprintf(live[i].dir, sizeof live[i].dir, "%s", d->dir);
            return;
        }
        if (!on && live[i].pid == d->pid && d->pid > 0) {
            live[i].pid = 0;
            return;
        }
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw);

int mh_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].pid > 0) {
            kill(live[i].pid, SIGKILL);
            waitpid(live[i].pid, NULL, 0);
            nftw(live[i].dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
            live[i].pid = 0;
        }
    return 0;
}

static void kill_leftovers(void)
{
    mh_teardown(NULL);
}

const char *mh_test_bin(void)
{
    const char *bin = getenv("MEMATTN_TEST_BIN");
    return bin && *bin ? bin : "build/memattnd-test";
}

int mh_start(mh_daemon *d, const char *const *args, const char *const *env)
{
    return mh_start_bin(d, NULL, args, env);
}

int mh_start_bin(mh_daemon *d, const char *bin, const char *const *args, const char *const *env)
{
    static bool registered;
    if (!registered) {
        atexit(kill_leftovers);
        registered = true;
    }
    memset(d, 0, sizeof(*d));
    if (!bin)
        bin = getenv("MEMATTN_BIN");
    if (!bin || !*bin)
        bin = "build/memattnd";
    snprintf(d->dir, sizeof d->dir, "/tmp/memattn-e2e-XXXXXX");
    if (!mkdtemp(d->dir)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(d->data_dir, sizeof d->data_dir, "%s/data", d->dir);
    snprintf(d->log_path, sizeof d->log_path, "%s/stderr.log", d->dir);

    const char *argv[64];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--data";
    argv[n++] = d->data_dir;
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;

    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    size_t nextra = 0;
    while (env && env[nextra])
        nextra++;
    char **envp = calloc(nenv + nextra + 1, sizeof(char *));
    if (!envp)
        return -1;
    memcpy(envp, environ, nenv * sizeof(char *));
    for (size_t i = 0; i < nextra; i++)
        envp[nenv + i] = (char *)env[i];

    int out[2];
    if (pipe(out) < 0) {
        free(envp);
        return -1;
    }
    int logfd = open(d->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(logfd, 2);
        close(out[0]);
        close(out[1]);
        close(logfd);
        execve(bin, (char *const *)argv, envp);
        fprintf(stderr, "execve %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    free(envp);
    close(out[1]);
    close(logfd);
    if (pid < 0) {
        close(out[0]);
        return -1;
    }
    d->pid = pid;
    track(d, true);

    /* The first stdout line is "listening on HOST:PORT". */
    char line[256];
    size_t len = 0;
    long deadline = now_ms() + 20000;
    while (len < sizeof line - 1 && !memchr(line, '\n', len)) {
        struct pollfd pfd = { out[0], POLLIN, 0 };
        long left = deadline - now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            break;
        ssize_t r = read(out[0], line + len, sizeof line - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(out[0]);
    line[len] = '\0';
    char *colon = strrchr(line, ':');
    if (strncmp(line, "listening on ", 13) != 0 || !colon) {
        fprintf(stderr, "harness: daemon did not print its listening line (got \"%s\")\n", line);
        mh_dump_log(d);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        track(d, false);
        d->pid = 0;
        return -1;
    }
    d->port = atoi(colon + 1);
    snprintf(d->host, sizeof d->host, "%.*s", (int)(colon - line - 13), line + 13);
    snprintf(d->base, sizeof d->base, "http://%s:%d", d->host, d->port);
    d->curl = curl_easy_init();
    return d->curl ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

char *mh_data_dir(const char *name)
{
    char *d = malloc(strlen(name) + 32);
    if (!d)
        return NULL;
    sprintf(d, "/tmp/memattn-%sXXXXXX", name);
    if (!mkdtemp(d)) {
        free(d);
        return NULL;
    }
    return d;
}

void mh_rm_data(char *dir)
{
    if (dir)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

int mh_start_on(mh_daemon *d, const char *bin, const char *dir, const char *const *extra, const char *const *env)
{
    const char *args[16] = {"--data", dir};
    int n = 2;
    for (int i = 0; extra && extra[i] && n < 15; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    return mh_start_bin(d, bin, args, env);
}

void mh_signal(mh_daemon *d, int sig)
{
    if (d->pid > 0)
        kill(d->pid, sig);
}

int mh_wait(mh_daemon *d, int timeout_ms)
{
    int status = -1, ws;
    long deadline = now_ms() + timeout_ms;
    while (d->pid > 0) {
        pid_t r = waitpid(d->pid, &ws, WNOHANG);
        if (r == d->pid) {
            status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
            break;
        }
        if (now_ms() > deadline) {
            fprintf(stderr, "harness: daemon did not exit within %d ms; killing it\n", timeout_ms);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &ws, 0);
            status = -1;
            break;
        }
        mh_sleep_ms(10);
    }
    track(d, false);
    d->pid = 0;
    if (status != 0 || getenv("MEMATTN_E2E_VERBOSE"))
        mh_dump_log(d);
    if (d->curl)
        curl_easy_cleanup(d->curl);
    d->curl = NULL;
    if (d->dir[0])
        nftw(d->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    d->dir[0] = '\0';
    return status;
}

/* True once pid is a zombie (dead, not yet reaped) or gone. */
static bool dead(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return !f || (rp && rp[1] == ' ' && rp[2] == 'Z');
}

int mh_kill9(mh_daemon *d)
{
    mh_signal(d, SIGKILL);
    for (int i = 0; i < 500 && !dead(d->pid); i++)
        mh_sleep_ms(10);
    if (truncate(d->log_path, 0) != 0)
        fprintf(stderr, "cannot empty %s: %s\n", d->log_path, strerror(errno));
    return mh_wait(d, 30000);
}

int mh_stop(mh_daemon *d, int timeout_ms)
{
    mh_signal(d, SIGTERM);
    return mh_wait(d, timeout_ms);
}

void mh_dump_log(const mh_daemon *d)
{
    FILE *f = fopen(d->log_path, "r");
    if (!f)
        return;
    fprintf(stderr, "---- daemon stderr (%s) ----\n", d->log_path);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "---- end ----\n");
    fclose(f);
}

bool mh_log_contains(const mh_daemon *d, const char *needle)
{
    FILE *f = fopen(d->log_path, "r");
    if (!f)
        return false;
    char line[8192];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* ---- libcurl ---- */

typedef struct {
    char *p;
    size_t len;
} growbuf;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    growbuf *b = ud;
    size_t n = size * nmemb;
    char *np = realloc(b->p, b->len + n + 1);
    if (!np)
        return 0;
    memcpy(np + b->len, ptr, n);
    b->p = np;
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

int mh_request(mh_daemon *d, const char *method, const char *path, const char *body,
               const char *const *headers, mh_resp *r)
{
    memset(r, 0, sizeof(*r));
    CURL *c = d->curl;
    curl_easy_reset(c);
    char url[2048];
    snprintf(url, sizeof url, "%s%s", d->base, path);
    growbuf bb = { 0 }, hb = { 0 };
    struct curl_slist *hl = NULL;
    for (int i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bb);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hb);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(hl);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    r->body = bb.p ? bb.p : strdup("");
    r->len = bb.len;
    r->headers = hb.p ? hb.p : strdup("");
    if (rc != CURLE_OK) {
        fprintf(stderr, "harness: %s %s: %s\n", method, path, curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

void mh_resp_free(mh_resp *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

const char *mh_resp_header(const mh_resp *r, const char *name, char *buf, size_t len)
{
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            eol = p + strlen(p);
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            snprintf(buf, len, "%.*s", (int)(eol - v), v);
            return buf;
        }
        p = *eol ? eol + 2 : eol;
    }
    return NULL;
}

cJSON *mh_resp_json(const mh_resp *r)
{
    return r->body ? cJSON_ParseWithLength(r->body, r->len) : NULL;
}

const char *mh_error_code(const mh_resp *r)
{
    static char code[128];
    code[0] = '\0';
    cJSON *j = mh_resp_json(r);
    cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "code");
    if (cJSON_IsString(c))
        snprintf(code, sizeof code, "%s", c->valuestring);
    cJSON_Delete(j);
    return code;
}

/* ---- raw sockets ---- */

int mh_connect(const mh_daemon *d)
{
    return mh_connect_rcvbuf(d, 0);
}

int mh_connect_rcvbuf(const mh_daemon *d, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)d->port) };
    inet_pton(AF_INET, d->host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int mh_send(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, data, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

int mh_sends(int fd, const char *s)
{
    return mh_send(fd, s, strlen(s));
}

void mh_reader_init(mh_reader *rb, int fd)
{
    rb->fd = fd;
    rb->len = 0;
}

/* Reads more into rb until `deadline`; 1 got bytes, 0 EOF/reset, -1 timeout. */
static int fill(mh_reader *rb, long deadline)
{
    if (rb->len == sizeof rb->buf)
        return -1;
    long left = deadline - now_ms();
    struct pollfd pfd = { rb->fd, POLLIN, 0 };
    if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
        return -1;
    ssize_t r = recv(rb->fd, rb->buf + rb->len, sizeof rb->buf - rb->len, 0);
    if (r <= 0)
        return 0;
    rb->len += (size_t)r;
    return 1;
}

int mh_read_response(mh_reader *rb, mh_resp *r, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    if (r)
        memset(r, 0, sizeof(*r));
    char *end;
    while (!(end = memmem(rb->buf, rb->len, "\r\n\r\n", 4))) {
        int f = fill(rb, deadline);
        if (f <= 0)
            return f == 0 && rb->len == 0 ? 0 : -1;
    }
    size_t head = (size_t)(end - rb->buf) + 4;
    int status = 0;
    if (sscanf(rb->buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    size_t clen = 0;
    for (char *p = rb->buf; p < end;) {
        char *eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
        if (!eol)
            break;
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            clen = strtoul(p + 15, NULL, 10);
        p = eol + 2;
    }
    while (rb->len < head + clen) {
        if (fill(rb, deadline) <= 0)
            return -1;
    }
    if (r) {
        r->status = status;
        r->headers = strndup(rb->buf, head);
        r->body = strndup(rb->buf + head, clen);
        r->len = clen;
    }
    memmove(rb->buf, rb->buf + head + clen, rb->len - head - clen);
    rb->len -= head + clen;
    return status;
}

bool mh_wait_closed(int fd, int timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    char buf[4096];
    for (;;) {
        long left = deadline - now_ms();
        struct pollfd pfd = { fd, POLLIN, 0 };
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return false;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0)
            return true;
    }
}
