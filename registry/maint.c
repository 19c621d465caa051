/*
 * registry/maint.c — the maintenance thread of registry/maint.h.
 *
 * A FIFO of session ids (a linked list: it holds a handful), the id running, and its cancel flag, under one
 * mutex; the thread waits on a condition variable for work and signals `idle` when it has none. The job
 * function runs outside the mutex. Priority: the thread raises its own nice value by 10 at start
 * (setpriority on its thread id: per thread on Linux); SCHED_IDLE was not used because on a machine kept
 * busy by other processes it can starve a build for minutes, and meanwhile the old index answers with a
 * growing share of events it must assign with old centroids.
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
};

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
    if (pthread_create(&m->thread, NULL, maint_main, m) != 0) {
        pthread_mutex_destroy(&m->mu);
        pthread_cond_destroy(&m->work);
        pthread_cond_destroy(&m->idle);
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
