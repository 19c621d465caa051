/*
 * registry/purge.c — the purge thread of registry/purge.h.
 *
 * Deferred jobs (reg_purge_defer) are a list run at the start of every look, before the steps.
 *
 * State under one mutex: `kicked` (work may be there), `stopping`, `idle` (the last look found the queue
 * empty), the last step's failure, and the looks begun and ended (so a waiter can wait for a look that
 * began after it asked). The thread loops: look at the queue by stepping until a step says
 * nothing is left (or fails, or a stop comes), then wait — without a deadline when the queue is empty, for
 * the back-off delay after a failure. ma_store_purge_step runs outside the mutex, PAUSE_US apart: the
 * store's writer lock is a mutex, not fair, and a step right after a step would keep waiting commits out. Priority: nice +10 for
 * the thread (setpriority on its thread id, per thread on Linux), as registry/maint.c does and for its
 * reasons (SCHED_IDLE can starve it on a busy machine; a purge that never ends keeps the disk space).
 */
#include "registry/purge.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"

#define STEP_BYTES_DEFAULT (256 * 1024)
#define PAUSE_US 2000   /* between two steps: a writer waiting for the store's lock gets it (mutexes are not fair) */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000

typedef struct deferred {
    struct deferred *next;
    void (*fn)(void *);
    void *arg;
} deferred;

struct reg_purge {
    ma_store *st;
    deferred *jobs;        /* reg_purge_defer's, oldest first */
    size_t step_bytes;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    bool kicked, stopping, idle;
    int failed;            /* the last step's MA_E* code, 0 after a successful one */
    uint64_t started, round;   /* looks at the queue begun and completed (for reg_purge_wait_idle) */
    pthread_t thread;
};

/* Waits on p->work until kicked or stopping, at most ms milliseconds (< 0: no limit). mu held. */
static void wait_work(reg_purge *p, long ms)
{
    if (ms < 0) {
        while (!p->kicked && !p->stopping)
            pthread_cond_wait(&p->work, &p->mu);
        return;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!p->kicked && !p->stopping)
        if (pthread_cond_timedwait(&p->work, &p->mu, &until) != 0)
            break;
}

/* Runs the deferred jobs queued so far (mu held on entry and exit, released while they run). */
static void run_deferred(reg_purge *p)
{
    while (p->jobs) {
        deferred *list = p->jobs;
        p->jobs = NULL;
        pthread_mutex_unlock(&p->mu);
        while (list) {
            deferred *j = list;
            list = j->next;
            j->fn(j->arg);
            free(j);
        }
        pthread_mutex_lock(&p->mu);
    }
}

static void *purge_main(void *arg)
{
    reg_purge *p = arg;
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);   /* advice: fine if refused */
    long backoff = BACKOFF_MIN_MS;
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        p->kicked = false;
        p->started++;
        run_deferred(p);
        pthread_mutex_unlock(&p->mu);
        int ret = 0;
        ma_store_purge_result r = {.purging = 1};
        char err[512] = "";
        while (r.purging > 0 && !ret) {
            pthread_mutex_lock(&p->mu);
            bool stop = p->stopping;
            pthread_mutex_unlock(&p->mu);
            if (stop)
                break;
            ret = ma_store_purge_step(p->st, p->step_bytes, &r, err, sizeof err);
            if (!ret && r.purging > 0)
                usleep(PAUSE_US);
        }
        if (ret)
            fprintf(stderr, "memattnd: purging deleted sessions: %s (retrying in %ld ms)\n", err, backoff);
        pthread_mutex_lock(&p->mu);
        p->failed = ret;
        p->idle = !ret && r.purging == 0;
        p->round++;
        pthread_cond_broadcast(&p->done);
        if (p->stopping)
            break;
        if (ret) {
            wait_work(p, backoff);
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        } else {
            backoff = BACKOFF_MIN_MS;
            if (p->idle)
                wait_work(p, -1);
        }
    }
    run_deferred(p);   /* nothing is left behind at a stop */
    pthread_cond_broadcast(&p->done);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int reg_purge_create(ma_store *st, size_t step_bytes, reg_purge **out)
{
    reg_purge *p = calloc(1, sizeof *p);
    if (!p)
        return MA_ENOMEM;
    p->st = st;
    p->step_bytes = step_bytes ? step_bytes : STEP_BYTES_DEFAULT;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    if (pthread_create(&p->thread, NULL, purge_main, p) != 0) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->work);
        pthread_cond_destroy(&p->done);
        free(p);
        return MA_EIO;
    }
    *out = p;
    return 0;
}

void reg_purge_destroy(reg_purge *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    free(p);
}

bool reg_purge_defer(reg_purge *p, void (*fn)(void *), void *arg)
{
    deferred *j = p ? malloc(sizeof *j) : NULL;
    if (!j)
        return false;
    *j = (deferred){.fn = fn, .arg = arg};
    pthread_mutex_lock(&p->mu);
    bool ok = !p->stopping;
    if (ok) {
        deferred **pp = &p->jobs;
        while (*pp)
            pp = &(*pp)->next;
        *pp = j;
        p->kicked = true;
        pthread_cond_signal(&p->work);
    }
    pthread_mutex_unlock(&p->mu);
    if (!ok)
        free(j);
    return ok;
}

void reg_purge_kick(reg_purge *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->kicked = true;
    p->idle = false;
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->mu);
}

int reg_purge_wait_idle(reg_purge *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t until = p->started + 1;   /* a look that begins after this call, and its end */
    p->kicked = true;
    pthread_cond_signal(&p->work);
    while (!p->stopping && p->round < until)
        pthread_cond_wait(&p->done, &p->mu);
    int ret = p->failed;
    pthread_mutex_unlock(&p->mu);
    return ret;
}
