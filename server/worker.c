/*
 * server/worker.c — the worker pool of server/worker.h.
 *
 * Design. One mutex guards everything shared: the per-key entries (a chained hash table), the ready
 * queue the threads wait on, and the list of finished jobs handed back to the loop. A job enters its
 * key's `pending` FIFO; dispatch() moves jobs from the front of that FIFO to the ready queue while the
 * ordering rules allow (see worker.h), counting what it released as running for the key. When a job
 * finishes, its worker releases the key and dispatches again, so the next job of a busy session starts
 * without a round trip through the loop. Finished jobs are pushed to `done` and the loop is woken with
 * uv_async_send (which coalesces); the async callback runs every `done` callback outside the lock.
 * The mutex is never held while `work` or `done` runs.
 *
 * Not done here: work stealing or per-thread queues (one lock is not the bottleneck at the job sizes of
 * this server: each job is a session read or write of at least microseconds).
 */
#include "server/worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define NBUCKETS 1024   /* keys with queued or running jobs; chains stay short at queue_max ~ 1e3 */

typedef struct keyent keyent;
typedef struct job job;

typedef struct {
    job *head, *tail;
} jobq;

struct job {
    struct job *next;
    keyent *key;            /* NULL for unordered jobs */
    srv_job_mode mode;
    srv_work_fn work;
    srv_done_fn done;
    void *arg;
    int status;
};

struct keyent {
    keyent *next;           /* hash chain */
    char *name;
    jobq fifo;              /* arrived, not yet released to the ready queue */
    int shared_running;     /* released shared jobs whose work has not finished */
    bool excl_running;      /* a released exclusive job has not finished */
};

struct srv_pool {
    uv_loop_t *loop;
    uv_async_t async;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    jobq ready;
    jobq done;
    keyent *buckets[NBUCKETS];
    bool stopping;
    size_t queue_max;
    atomic_size_t waiting;  /* in a key FIFO or the ready queue */
    atomic_size_t pending;  /* submitted, `done` not yet called */
    int nthreads;
    pthread_t *threads;
};

static void q_push(jobq *q, job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static job *q_pop(jobq *q)
{
    job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
    }
    return j;
}

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* Finds (or with create, adds) the entry of `name`. Caller holds the lock. */
static keyent *key_get(srv_pool *p, const char *name, bool create)
{
    keyent **b = &p->buckets[hash(name) % NBUCKETS];
    for (keyent *k = *b; k; k = k->next)
        if (strcmp(k->name, name) == 0)
            return k;
    if (!create)
        return NULL;
    keyent *k = calloc(1, sizeof(*k));
    if (!k)
        return NULL;
    k->name = strdup(name);
    if (!k->name) {
        free(k);
        return NULL;
    }
    k->next = *b;
    *b = k;
    return k;
}

static void key_free_if_idle(srv_pool *p, keyent *k)
{
    if (k->fifo.head || k->shared_running || k->excl_running)
        return;
    keyent **b = &p->buckets[hash(k->name) % NBUCKETS];
    while (*b != k)
        b = &(*b)->next;
    *b = k->next;
    free(k->name);
    free(k);
}

/* Releases the jobs at the front of k's FIFO that may start now. Caller holds the lock. */
static void dispatch(srv_pool *p, keyent *k)
{
    bool woke = false;
    while (k->fifo.head && !k->excl_running) {
        job *j = k->fifo.head;
        if (j->mode == SRV_JOB_EXCLUSIVE) {
            if (k->shared_running)
                break;
            k->excl_running = true;
        } else {
            k->shared_running++;
        }
        q_pop(&k->fifo);
        q_push(&p->ready, j);
        woke = true;
        if (j->mode == SRV_JOB_EXCLUSIVE)
            break;
    }
    if (woke)
        pthread_cond_broadcast(&p->cv);
}

static void *worker_main(void *arg)
{
    srv_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->ready.head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        job *j = q_pop(&p->ready);
        if (!j)
            break;   /* stopping and nothing left */
        atomic_fetch_sub(&p->waiting, 1);
        pthread_mutex_unlock(&p->mu);

        j->work(j->arg);

        pthread_mutex_lock(&p->mu);
        j->status = 0;
        keyent *k = j->key;
        if (k) {
            if (j->mode == SRV_JOB_EXCLUSIVE)
                k->excl_running = false;
            else
                k->shared_running--;
            dispatch(p, k);
            key_free_if_idle(p, k);
            j->key = NULL;
        }
        q_push(&p->done, j);
        uv_async_send(&p->async);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Loop thread: runs the completion callbacks of every finished job. */
static void run_done(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    job *list = p->done.head;
    p->done.head = p->done.tail = NULL;
    pthread_mutex_unlock(&p->mu);
    while (list) {
        job *j = list;
        list = j->next;
        atomic_fetch_sub(&p->pending, 1);
        j->done(j->arg, j->status);
        free(j);
    }
}

static void on_async(uv_async_t *a)
{
    run_done(a->data);
}

int srv_pool_create(uv_loop_t *loop, int threads, size_t queue_max, srv_pool **out)
{
    if (!loop || threads < 1 || queue_max < 1 || !out)
        return MA_EINVAL;
    srv_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return MA_ENOMEM;
    p->loop = loop;
    p->queue_max = queue_max;
    p->threads = calloc((size_t)threads, sizeof(pthread_t));
    if (!p->threads)
        goto fail_free;
    if (pthread_mutex_init(&p->mu, NULL) != 0)
        goto fail_free;
    if (pthread_cond_init(&p->cv, NULL) != 0)
        goto fail_mutex;
    if (uv_async_init(loop, &p->async, on_async) != 0)
        goto fail_cond;
    p->async.data = p;
    for (; p->nthreads < threads; p->nthreads++)
        if (pthread_create(&p->threads[p->nthreads], NULL, worker_main, p) != 0)
            break;
    if (p->nthreads == 0) {
        uv_close((uv_handle_t *)&p->async, NULL);
        goto fail_cond;
    }
    *out = p;
    return 0;
fail_cond:
    pthread_cond_destroy(&p->cv);
fail_mutex:
    pthread_mutex_destroy(&p->mu);
fail_free:
    free(p->threads);
    free(p);
    return MA_ENOMEM;
}

int srv_pool_submit(srv_pool *p, const char *key, srv_job_mode mode, srv_work_fn work,
                    srv_done_fn done, void *arg)
{
    if (!p || !work || !done)
        return MA_EINVAL;
    job *j = calloc(1, sizeof(*j));
    if (!j)
        return MA_ENOMEM;
    j->mode = mode == SRV_JOB_EXCLUSIVE ? SRV_JOB_EXCLUSIVE : SRV_JOB_SHARED;
    j->work = work;
    j->done = done;
    j->arg = arg;

    int rc = 0;
    pthread_mutex_lock(&p->mu);
    if (p->stopping || atomic_load(&p->waiting) >= p->queue_max) {
        rc = MA_EBUSY;
        goto out;
    }
    if (key) {
        keyent *k = key_get(p, key, true);
        if (!k) {
            rc = MA_ENOMEM;
            goto out;
        }
        j->key = k;
        q_push(&k->fifo, j);
        dispatch(p, k);
    } else {
        q_push(&p->ready, j);
        pthread_cond_signal(&p->cv);
    }
    atomic_fetch_add(&p->waiting, 1);
    atomic_fetch_add(&p->pending, 1);
out:
    pthread_mutex_unlock(&p->mu);
    if (rc < 0)
        free(j);
    return rc;
}

size_t srv_pool_waiting(const srv_pool *p)
{
    return atomic_load(&((srv_pool *)p)->waiting);
}

size_t srv_pool_pending(const srv_pool *p)
{
    return atomic_load(&((srv_pool *)p)->pending);
}

static void on_close(uv_handle_t *h)
{
    free(h->data);
}

void srv_pool_destroy(srv_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    /* Jobs that have not started are cancelled: keep their arrival order in `done`. */
    for (job *j; (j = q_pop(&p->ready));) {
        j->status = MA_EBUSY;
        q_push(&p->done, j);
    }
    for (size_t b = 0; b < NBUCKETS; b++)
        for (keyent *k = p->buckets[b]; k; k = k->next)
            for (job *j; (j = q_pop(&k->fifo));) {
                j->status = MA_EBUSY;
                q_push(&p->done, j);
            }
    atomic_store(&p->waiting, 0);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    run_done(p);

    for (size_t b = 0; b < NBUCKETS; b++)
        while (p->buckets[b]) {
            keyent *k = p->buckets[b];
            p->buckets[b] = k->next;
            free(k->name);
            free(k);
        }
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    uv_close((uv_handle_t *)&p->async, on_close);
}
