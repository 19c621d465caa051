/*
 * server/main.c — memattnd: configuration, logging, the server, the store, the session registry, the
 * API, signals, graceful exit. main builds every layer and wires them together:
 *   server (HTTP, workers) -> api (handlers) -> registry (sessions) -> store (sqlite), core (compute)
 *
 * Order of start-up (docs/SERVER.md "Logs"): parse the configuration (exit 2 on a bad value), create the
 * server, open the store under --data, create the registry over it (the --memory budget), plug the API
 * in (routes, metrics), install the signal handlers, bind, and only then print `listening on HOST:PORT`
 * as the first line of standard output, and run. So every start-up failure (a data directory that
 * cannot be created, a port in use) exits 1 before that line, and whoever waits for it knows the
 * daemon is ready. The data directory is logged as an absolute path.
 * SIGTERM / SIGINT start the drain; when it completes everything is closed in reverse order (server and
 * its workers first, then the API, the registry, the store) and the process exits 0. A second signal
 * during the drain shortens it: remaining connections are closed.
 * Under systemd (Type=notify, $NOTIFY_SOCKET set) READY=1 is sent once the API is plugged in (the store
 * opened) and STOPPING=1 when the drain starts.
 * The store's integrity check reads the whole file, so by default (--store-check background) it runs
 * beside serving, on the store's own thread, and its end is logged (info when it passed; error when it
 * failed: from then on the store refuses every call, so requests that need it answer 503
 * storage_error naming what is wrong). --store-check open runs it before listening, as a failure to start.
 */
#include <cblas.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config/config.h"
#include "core/error.h"
#include "registry/pager.h"
#include "registry/registry.h"
#include "server/api.h"
#include "server/api_transfer.h"
#include "server/log.h"
#include "server/sdnotify.h"
#include "server/server.h"
#include "store/store.h"

#define CACHE_CHUNKS 128   /* archive chunks cached per paged session */

extern char **environ;

typedef struct {
    uv_signal_t sigterm, sigint;
    srv_server *srv;
    int signals;
} app;

static void on_drained(srv_server *srv, void *arg)
{
    (void)arg;
    srv_log(CFG_LOG_INFO, "drained; stopping");
    uv_stop(srv_server_loop(srv));
}

static void on_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (a->signals++ == 0) {
        srv_log(CFG_LOG_INFO, "%s received: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
        srv_sd_notify("STOPPING=1");
        srv_server_drain(a->srv, on_drained, a);
        return;
    }
    srv_log(CFG_LOG_WARN, "second signal: closing remaining connections now");
    srv_server_drain_now(a->srv);
}

/* ma_store_options.on_checked: the background integrity check has ended (on the store's thread). */
static void on_store_checked(void *arg, int rc, const char *msg, double seconds)
{
    (void)arg;
    if (rc)
        srv_log(CFG_LOG_ERROR, "%s; the store now refuses every request", msg);
    else
        srv_log(CFG_LOG_INFO, "store integrity check passed in %.2f s", seconds);
}

int main(int argc, char **argv)
{
    cfg_config cfg;
    char err[1024];
    int rc = cfg_load(&cfg, argc, argv, environ, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "memattnd: %s\n", err);
        return 2;
    }
    if (cfg.action == CFG_HELP) {
        cfg_usage(stdout);
        return 0;
    }
    if (cfg.action == CFG_VERSION) {
        printf("memattnd %s\n", cfg_version());
        return 0;
    }
    srv_log_setup(cfg.log_level, cfg.log_format);
    /* The worker threads are the parallelism; OpenBLAS threads on top would oversubscribe the cores. */
    openblas_set_num_threads(1);
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    app a = { 0 };
    int status = 1;
    ma_store *store = NULL;
    reg_registry *reg = NULL;
    api *rest = NULL;
    api_transfer *transfer = NULL;
    if ((rc = uv_loop_init(&loop)) < 0) {
        fprintf(stderr, "memattnd: %s\n", uv_strerror(rc));
        return 1;
    }
    if (srv_server_create(&loop, &cfg, &a.srv, err, sizeof err) < 0)
        goto fail;
    ma_store_options so;
    ma_store_options_default(&so);
    so.slots_split = reg_slots_split;   /* a schema-2 store's slot tables become rows at the upgrade */
    so.check_in_background = cfg.store_check == CFG_CHECK_BACKGROUND;
    so.on_checked = on_store_checked;
    if (ma_store_open_with(cfg.data_dir, &so, &store, err, sizeof err) < 0)
        goto fail;
    /* The store created the directory: its absolute path names where the data really goes. */
    char data_abs[PATH_MAX];
    if (!realpath(cfg.data_dir, data_abs))
        snprintf(data_abs, sizeof data_abs, "%s", cfg.data_dir);
    reg_options ro = {.store = store, .memory_budget = cfg.memory, .cache_chunks = CACHE_CHUNKS,
                      .idem_keys = cfg.idempotency_keys, .idem_window_ms = cfg.idempotency_window_ms};
    if ((rc = reg_create(&ro, &reg)) < 0) {
        snprintf(err, sizeof err, "cannot create the session registry: %s", ma_strerror(rc));
        goto fail;
    }
    api_deps deps = {.srv = a.srv, .reg = reg};
    if (api_init(&deps, &rest, err, sizeof err) < 0)
        goto fail;
    if (api_transfer_init(a.srv, reg, cfg.data_dir, &transfer, err, sizeof err) < 0)
        goto fail;
    uv_signal_init(&loop, &a.sigterm);
    uv_signal_init(&loop, &a.sigint);
    a.sigterm.data = a.sigint.data = &a;
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    char bound[128];
    if (srv_server_listen(a.srv, bound, sizeof bound, err, sizeof err) < 0)
        goto fail;
    srv_log(CFG_LOG_INFO, "memattnd %s listening on %s (threads %d, data %s, auth %s)", cfg_version(), bound,
            cfg.threads, data_abs, cfg.token[0] ? "on" : "off");
    printf("listening on %s\n", bound);
    fflush(stdout);
    /* Ready for systemd (Type=notify) only now: the store is open (and checked, unless in the background),
     * the routes are in. */
    if (srv_sd_notify("READY=1") < 0)
        srv_log(CFG_LOG_WARN, "cannot notify systemd of readiness (NOTIFY_SOCKET=%s)", getenv("NOTIFY_SOCKET"));

    uv_run(&loop, UV_RUN_DEFAULT);

    status = 0;
fail:
    if (uv_is_active((uv_handle_t *)&a.sigterm) || uv_is_active((uv_handle_t *)&a.sigint)) {
        uv_close((uv_handle_t *)&a.sigterm, NULL);
        uv_close((uv_handle_t *)&a.sigint, NULL);
    }
    if (status != 0)
        fprintf(stderr, "memattnd: %s\n", err);
    /* The maintenance thread's builds commit until reg_destroy: they stop reporting commits to the metrics
     * before the server frees them (found by TSAN: a swap's commit observed into freed metrics). */
    if (reg)
        reg_observe_commits(reg, NULL, NULL);
    srv_server_destroy(a.srv);   /* stops the workers: no job runs after this */
    api_shutdown(rest);
    api_transfer_shutdown(transfer);
    reg_destroy(reg);
    ma_store_close(store);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    srv_log(CFG_LOG_INFO, "exit %d", status);
    return status;
}
