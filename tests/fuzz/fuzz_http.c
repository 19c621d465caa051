/*
 * tests/fuzz/fuzz_http.c — libFuzzer: the whole HTTP request path in-process: a real srv_server with the
 * /v1 API (store in a temporary directory, registry, api_init: built as server/main.c builds them) on a
 * libuv loop in this thread, listening
 * on 127.0.0.1:0. Each input is one client connection: the bytes are sent as they are (one or more
 * pipelined requests, any garbage), the client half-closes, and the loop runs until the daemon has
 * answered and closed. So every input goes through conn.c (reading, llhttp, the head checks, limits,
 * pipelining, the answer queue), http.c (dispatch, auth, answers), router.c and api.c + codec.c +
 * jsontext.c + registry/ + store/ for /v1 routes; worker jobs run on the pool's threads as in the daemon.
 * Not covered: timeouts (a half-closed client never waits for one), signals and the drain.
 * Small limits (--max-body 64 KiB, --max-header-bytes 4 KiB, --max-uri 1 KiB) keep the limit paths
 * reachable with small inputs. Sessions created by earlier inputs persist (the store is shared), so
 * later inputs meet existing sessions.
 * POST /v1/admin/backup is never sent: it writes a copy of the store to any absolute path the body
 * names, and a fuzzer running as root must not create files all over the machine. The router matches
 * literal segments on the raw target, so an input containing "backup" is the only way to reach it.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <uv.h>

#include "core/error.h"
#include "registry/registry.h"
#include "server/api.h"
#include "server/log.h"
#include "server/server.h"
#include "store/store.h"

static uv_loop_t loop;
static srv_server *srv;
static int port;

static void die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_http: %s: %s\n", what, err);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    cfg_config cfg;
    cfg_defaults(&cfg);
    char tmpl[] = "/tmp/memattn-fuzz-http-XXXXXX";
    if (!mkdtemp(tmpl))
        die("mkdtemp", strerror(errno));
    snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", tmpl);
    snprintf(cfg.listen, sizeof cfg.listen, "127.0.0.1:0");
    cfg.threads = 1;
    cfg.max_body = 64 << 10;
    cfg.max_header_bytes = 4 << 10;
    cfg.max_uri = 1 << 10;
    cfg.log_level = CFG_LOG_ERROR;
    srv_log_setup(CFG_LOG_ERROR, CFG_LOG_TEXT);
    char err[1024], bound[128];
    if (uv_loop_init(&loop) < 0)
        die("uv_loop_init", "failed");
    if (srv_server_create(&loop, &cfg, &srv, err, sizeof err) < 0)
        die("srv_server_create", err);
    ma_store_options so;
    ma_store_options_default(&so);
    so.synchronous = MA_STORE_SYNC_NORMAL;   /* no fsync per mutation: speed; durability is not fuzzed */
    ma_store *store = NULL;
    reg_registry *reg = NULL;
    api *rest = NULL;
    if (ma_store_open_with(cfg.data_dir, &so, &store, err, sizeof err) < 0)
        die("ma_store_open_with", err);
    reg_options ro = { .store = store, .memory_budget = 64 << 20, .cache_chunks = 16 };
    if (reg_create(&ro, &reg) < 0)
        die("reg_create", "failed");
    api_deps deps = { .srv = srv, .reg = reg };
    if (api_init(&deps, &rest, err, sizeof err) < 0)
        die("api_init", err);
    if (srv_server_listen(srv, bound, sizeof bound, err, sizeof err) < 0)
        die("srv_server_listen", err);
    const char *colon = strrchr(bound, ':');
    port = colon ? atoi(colon + 1) : 0;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memmem(data, size, "backup", 6))
        return 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        close(fd);
        return 0;
    }
    size_t off = 0;
    bool shut = false, closed = false;
    char buf[65536];
    /* Bounded: a daemon that neither answers nor closes is a hang, which libFuzzer's -timeout reports. */
    while (!closed) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (off < size) {
            ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
            if (w > 0)
                off += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN)
                off = size;   /* reset by the daemon (it closed after an error answer) */
        }
        if (off >= size && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        for (;;) {
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0)
                continue;
            if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                closed = true;
            break;
        }
        if (!closed) {
            struct pollfd p = { .fd = fd, .events = POLLIN };
            poll(&p, 1, 0);
            uv_run(&loop, UV_RUN_ONCE);
        }
    }
    close(fd);
    /* Let the daemon see the close and free the connection before the next input. */
    for (int i = 0; i < 4; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    return 0;
}
