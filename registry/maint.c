/*
 * registry/maint.c — the maintenance thread of registry/maint.h.
 *
 * A FIFO of session ids (a linked list: it holds a handful), the id running, and its cancel flag, under one
 * mutex; the thread waits on a condition variable for work and signals `idle` when it has none. The job
 * function runs outside the mutex. Priority: the thread raises its own nice value by 10 at start
 * (setpriority on its thread id: per thread on Linux); SCHED_IDLE was not used because on a machine kept
 * busy by other processes it can starve a build for minutes, and meanwhile the old index answers with a
 * growing share of events it must assign with old centroids.
 *
 * The gate thread (reg_maint_urgent). What a job does while it holds a session's gate exclusively (an
 * index swap: every request of the session waits for it) must not run at nice +10: on a loaded machine
 * the request path's threads, waiting on the gate, idle while everything else outruns the holder (a
 * priority inversion: an in-place swap at 1M events held the session 2.9-4.5 s at load 8-11, against
 * 0.24 s at 2M on a quiet machine). Nice cannot be lowered again without privilege, so those steps run
 * on a second thread that keeps the process's priority: the job hands it one call at a time and waits
 * for its result.
 */
#include "registry/maint.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/error.h"
#include "core/params.h"

typedef struct qent {
    struct qent *next;
    char id[MA_MAX_NAME + 1];
} qent;

struct reg_maint {
    pthread_mutex_t mu;
    pthread_cond_t work, idle;
    qent *head, *tail;
    char running[MA_MAX_NAME + 1];   /* "" when no job runs */
    atomic_int cancel;               /* for the running job */
    bool stopping;
    reg_maint_fn fn;
    void *ctx;
    pthread_t thread;
    /* the gate thread: one call at a time (only the job calls reg_maint_urgent), under umu */
    pthread_mutex_t umu;
    pthread_cond_t ucall, udone;
    int (*ufn)(void *);
    void *uarg;
    int urc;
    bool ubusy, ustop;
    pthread_t uthread;
};

static void *urgent_main(void *arg)
{
    reg_maint *m = arg;
    pthread_mutex_lock(&m->umu);
    for (;;) {
        while (!m->ufn && !m->ustop)
            pthread_cond_wait(&m->ucall, &m->umu);
        if (!m->ufn)
            break;
        int (*fn)(void *) = m->ufn;
        pthread_mutex_unlock(&m->umu);
        int rc = fn(m->uarg);
        pthread_mutex_lock(&m->umu);
        m->urc = rc;
        m->ufn = NULL;
        m->ubusy = false;
        pthread_cond_broadcast(&m->udone);
    }
    pthread_mutex_unlock(&m->umu);
    return NULL;
}

int reg_maint_urgent(reg_maint *m, int (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&m->umu);
    m->ufn = fn;
    m->uarg = arg;
    m->ubusy = true;
    pthread_cond_signal(&m->ucall);
    while (m->ubusy)
        pthread_cond_wait(&m->udone, &m->umu);
    int rc = m->urc;
    pthread_mutex_unlock(&m->umu);
    return rc;
}

static void *maint_main(void *arg)
{
    reg_maint *m = arg;
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);   /* advice: fine if refused */
    pthread_mutex_lock(&m->mu);
    for (;;) {
        while (!m->head && !m->stopping) {
            pthread_cond_broadcast(&m->idle);
            pthread_cond_wait(&m->work, &m->mu);
        }
        if (m->stopping)
            break;
        qent *e = m->head;
        m->head = e->next;
        if (!m->head)
            m->tail = NULL;
        memcpy(m->running, e->id, sizeof m->running);
        atomic_store(&m->cancel, 0);
        free(e);
        pthread_mutex_unlock(&m->mu);
        m->fn(m->ctx, m->running, &m->cancel);
        pthread_mutex_lock(&m->mu);
        m->running[0] = '\0';
    }
    pthread_cond_broadcast(&m->idle);
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

int reg_maint_create(reg_maint_fn fn, void *ctx, reg_maint **out)
{
    reg_maint *m = calloc(1, sizeof *m);
    if (!m)
        return MA_ENOMEM;
    m->fn = fn;
    m->ctx = ctx;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->work, NULL);
    pthread_cond_init(&m->idle, NULL);
    pthread_mutex_init(&m->umu, NULL);
    pthread_cond_init(&m->ucall, NULL);
    pthread_cond_init(&m->udone, NULL);
    bool urgent = pthread_create(&m->uthread, NULL, urgent_main, m) == 0;
    if (!urgent || pthread_create(&m->thread, NULL, maint_main, m) != 0) {
        if (urgent) {
            pthread_mutex_lock(&m->umu);
            m->ustop = true;
            pthread_cond_signal(&m->ucall);
            pthread_mutex_unlock(&m->umu);
            pthread_join(m->uthread, NULL);
        }
        pthread_mutex_destroy(&m->mu);
        pthread_cond_destroy(&m->work);
        pthread_cond_destroy(&m->idle);
        pthread_mutex_destroy(&m->umu);
        pthread_cond_destroy(&m->ucall);
        pthread_cond_destroy(&m->udone);
        free(m);
        return MA_EIO;
    }
    *out = m;
    return 0;
}

void reg_maint_destroy(reg_maint *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->mu);
    m->stopping = true;
    atomic_store(&m->cancel, 1);
    while (m->head) {
        qent *e = m->head;
        m->head = e->next;
        free(e);
    }
    m->tail = NULL;
    pthread_cond_broadcast(&m->work);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    pthread_mutex_lock(&m->umu);   /* the job has ended: no call is in flight */
    m->ustop = true;
    pthread_cond_signal(&m->ucall);
    pthread_mutex_unlock(&m->umu);
    pthread_join(m->uthread, NULL);
    pthread_mutex_destroy(&m->umu);
    pthread_cond_destroy(&m->ucall);
    pthread_cond_destroy(&m->udone);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->work);
    pthread_cond_destroy(&m->idle);
    free(m);
}

static bool queued(const reg_maint *m, const char *id)
{
    for (const qent *e = m->head; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return true;
    return false;
}

void reg_maint_enqueue(reg_maint *m, const char *id)
{
    pthread_mutex_lock(&m->mu);
    if (!m->stopping && !queued(m, id)) {
        qent *e = calloc(1, sizeof *e);
        if (e) {
            snprintf(e->id, sizeof e->id, "%s", id);
            if (m->tail)
                m->tail->next = e;
            else
                m->head = e;
            m->tail = e;
            pthread_cond_signal(&m->work);
        }
    }
    pthread_mutex_unlock(&m->mu);
}

void reg_maint_cancel(reg_maint *m, const char *id)
{
    pthread_mutex_lock(&m->mu);
    for (qent **pp = &m->head; *pp;) {
        qent *e = *pp;
        if (strcmp(e->id, id) == 0) {
            *pp = e->next;
            free(e);
        } else {
            pp = &e->next;
        }
    }
    m->tail = NULL;
    for (qent *e = m->head; e; e = e->next)
        m->tail = e;
    if (strcmp(m->running, id) == 0)
        atomic_store(&m->cancel, 1);
    pthread_mutex_unlock(&m->mu);
}

bool reg_maint_busy(reg_maint *m, const char *id)
{
    pthread_mutex_lock(&m->mu);
    bool b = strcmp(m->running, id) == 0 || queued(m, id);
    pthread_mutex_unlock(&m->mu);
    return b;
}

void reg_maint_wait_idle(reg_maint *m)
{
    pthread_mutex_lock(&m->mu);
    while ((m->head || m->running[0]) && !m->stopping)
        pthread_cond_wait(&m->idle, &m->mu);
    pthread_mutex_unlock(&m->mu);
}
