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
 * Prepares and holds (worker.h). A job with a `prepare` enters its key's FIFO *and* the `prep` queue;
 * dispatch() stops at a FIFO head whose prepare has not finished, and a worker that finishes a prepare
 * dispatches the key again. Workers take jobs from `ready` (ordered steps) before `prep`. A pipelined
 * step that returns true leaves its job held: the key counts it in `holds` (dispatch lets only pipelined
 * jobs pass while holds > 0) and the pool in `held`; srv_pool_release() undoes both and queues `done`.
 * A release that arrives while the step is still running (the commit thread was quicker) is remembered
 * in the job and applied when the step returns. srv_pool_destroy waits for `held` to reach 0.
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
#include "core/hash.h"

#define NBUCKETS 1024   /* keys with queued or running jobs; chains stay short at queue_max ~ 1e3 */

typedef struct keyent keyent;
typedef struct job job;

typedef struct {
    job *head, *tail;
} jobq;

struct job {
    struct job *next;       /* ready, prep or done queue */
    struct job *knext;      /* its key's FIFO */
    srv_pool *pool;
    keyent *key;            /* NULL for unordered jobs */
    srv_job_mode mode;
    srv_work_fn prepare;    /* NULL once it ran (or if none) */
    srv_work_fn work;
    srv_pipe_fn pipe;
    srv_done_fn done;
    void *arg;
    int status;
    bool preparing;         /* its prepare is running */
    bool cancelled;         /* cancelled by srv_pool_destroy while preparing: the worker finishes it */
    bool stepping;          /* its ordered step is running */
    bool released;          /* srv_pool_release came while stepping */
};

struct keyent {
    keyent *next;           /* hash chain */
    char *name;
    job *fhead, *ftail;     /* FIFO (through knext): arrived, not yet released to the ready queue */
    int shared_running;     /* released shared jobs whose work has not finished */
    bool excl_running;      /* a released exclusive or pipelined job has not finished its step */
    int holds;              /* pipelined jobs of this key held (not yet srv_pool_release'd) */
};

struct srv_pool {
    uv_loop_t *loop;
    uv_async_t async;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    jobq ready;             /* ordered steps that may start */
    jobq prep;              /* prepares that may start (taken after `ready`) */
    jobq done;
    size_t held;            /* held pipelined jobs */
    pthread_cond_t held_cv; /* signalled when held drops to 0 while stopping */
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

static void f_push(keyent *k, job *j)
{
    j->knext = NULL;
    if (k->ftail)
        k->ftail->knext = j;
    else
        k->fhead = j;
    k->ftail = j;
}

static job *f_pop(keyent *k)
{
    job *j = k->fhead;
    if (j) {
        k->fhead = j->knext;
        if (!k->fhead)
            k->ftail = NULL;
    }
    return j;
}

/* The hash chain of key `name` (core/hash.h's FNV-1a). */
static size_t bucket(const char *name)
{
    return (size_t)(ma_fnv1a64(name, strlen(name)) % NBUCKETS);
}

/* Finds (or with create, adds) the entry of `name`. Caller holds the lock. */
static keyent *key_get(srv_pool *p, const char *name, bool create)
{
    keyent **b = &p->buckets[bucket(name)];
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
    if (k->fhead || k->shared_running || k->excl_running || k->holds)
        return;
    keyent **b = &p->buckets[bucket(k->name)];
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
    while (k->fhead && !k->excl_running) {
        job *j = k->fhead;
        if (j->prepare || j->preparing)
            break;   /* its prepare has not finished: everything behind it waits too */
        if (j->mode == SRV_JOB_PIPELINED) {
            if (k->shared_running || k->holds >= SRV_MAX_HOLDS)
                break;
            k->excl_running = true;
        } else if (j->mode == SRV_JOB_EXCLUSIVE) {
            if (k->shared_running || k->holds)
                break;
            k->excl_running = true;
        } else {
            if (k->holds)
                break;
            k->shared_running++;
        }
        f_pop(k);
        q_push(&p->ready, j);
        woke = true;
        if (j->mode != SRV_JOB_SHARED)
            break;
    }
    if (woke)
        pthread_cond_broadcast(&p->cv);
}

/* A job's end: `done` queued to the loop. Caller holds the lock. */
static void finish_locked(srv_pool *p, job *j, int status)
{
    j->status = status;
    q_push(&p->done, j);
    uv_async_send(&p->async);
}

/* The ordered step of j returned (held: a pipelined step kept it). Caller holds the lock. */
static void step_ended(srv_pool *p, job *j, bool held)
{
    j->stepping = false;
    held = held && !j->released;   /* released while it ran: nothing left to hold */
    keyent *k = j->key;
    if (k) {
        if (j->mode == SRV_JOB_SHARED)
            k->shared_running--;
        else
            k->excl_running = false;
        if (held)
            k->holds++;
        dispatch(p, k);
        if (!held) {
            key_free_if_idle(p, k);
            j->key = NULL;
        }
    }
    if (held)
        p->held++;
    else
        finish_locked(p, j, 0);
}

/* A prepare finished (caller holds the lock): the job may now take its turn. */
static void prepared(srv_pool *p, job *j)
{
    j->preparing = false;
    if (j->cancelled || (p->stopping && !j->key)) {
        finish_locked(p, j, MA_EBUSY);   /* srv_pool_destroy took it out of its queues meanwhile */
        return;
    }
    if (j->key)
        dispatch(p, j->key);
    else {
        q_push(&p->ready, j);
        pthread_cond_signal(&p->cv);
    }
}

static void *worker_main(void *arg)
{
    srv_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->ready.head && !p->prep.head && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        job *j = q_pop(&p->ready);
        if (!j && (j = q_pop(&p->prep))) {
            srv_work_fn prep = j->prepare;
            j->prepare = NULL;
            j->preparing = true;
            pthread_mutex_unlock(&p->mu);
            prep(j->arg);
            pthread_mutex_lock(&p->mu);
            prepared(p, j);
            continue;
        }
        if (!j)
            break;   /* stopping and nothing left */
        atomic_fetch_sub(&p->waiting, 1);
        j->stepping = true;
        pthread_mutex_unlock(&p->mu);

        bool held = false;
        if (j->mode == SRV_JOB_PIPELINED)
            held = j->pipe(j->arg, (srv_hold *)j);
        else
            j->work(j->arg);

        pthread_mutex_lock(&p->mu);
        step_ended(p, j, held);
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
    if (pthread_cond_init(&p->held_cv, NULL) != 0) {
        pthread_cond_destroy(&p->cv);
        goto fail_mutex;
    }
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
    pthread_cond_destroy(&p->held_cv);
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
    srv_job_spec s = {.mode = mode == SRV_JOB_EXCLUSIVE ? SRV_JOB_EXCLUSIVE : SRV_JOB_SHARED, .work = work,
                      .done = done, .arg = arg};
    return srv_pool_submit_job(p, key, &s);
}

int srv_pool_submit_job(srv_pool *p, const char *key, const srv_job_spec *spec)
{
    if (!p || !spec || !spec->done || (spec->mode == SRV_JOB_PIPELINED ? !spec->pipe : !spec->work) ||
        (spec->mode != SRV_JOB_SHARED && spec->mode != SRV_JOB_EXCLUSIVE && spec->mode != SRV_JOB_PIPELINED))
        return MA_EINVAL;
    job *j = calloc(1, sizeof(*j));
    if (!j)
        return MA_ENOMEM;
    j->pool = p;
    j->mode = spec->mode;
    j->prepare = spec->prepare;
    j->work = spec->work;
    j->pipe = spec->pipe;
    j->done = spec->done;
    j->arg = spec->arg;

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
        f_push(k, j);
        dispatch(p, k);
    } else if (!j->prepare) {
        q_push(&p->ready, j);
        pthread_cond_signal(&p->cv);
    }
    if (j->prepare) {
        q_push(&p->prep, j);
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

void srv_pool_release(srv_hold *h)
{
    job *j = (job *)h;
    srv_pool *p = j->pool;
    pthread_mutex_lock(&p->mu);
    if (j->stepping) {
        j->released = true;   /* the step is still running: step_ended finishes the job */
        pthread_mutex_unlock(&p->mu);
        return;
    }
    keyent *k = j->key;
    if (k) {
        k->holds--;
        dispatch(p, k);
        key_free_if_idle(p, k);
        j->key = NULL;
    }
    finish_locked(p, j, 0);
    if (--p->held == 0)
        pthread_cond_broadcast(&p->held_cv);
    pthread_mutex_unlock(&p->mu);
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
    /* Jobs that have not started are cancelled: keep their arrival order in `done`. A job whose
     * prepare is running is finished by its worker (prepared()); one whose prepare waits in `prep` is
     * also in its key's FIFO (or, unordered, in neither other queue) and is cancelled once. */
    for (job *j; (j = q_pop(&p->ready));) {
        j->status = MA_EBUSY;
        q_push(&p->done, j);
    }
    for (job *j; (j = q_pop(&p->prep));) {
        j->prepare = NULL;
        if (!j->key) {
            j->status = MA_EBUSY;
            q_push(&p->done, j);
        }
    }
    for (size_t b = 0; b < NBUCKETS; b++)
        for (keyent *k = p->buckets[b]; k; k = k->next)
            for (job *j; (j = f_pop(k));) {
                if (j->preparing) {
                    j->cancelled = true;
                    continue;
                }
                j->status = MA_EBUSY;
                q_push(&p->done, j);
            }
    atomic_store(&p->waiting, 0);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* Held jobs end when their holders release them (the registry's commit thread). */
    pthread_mutex_lock(&p->mu);
    while (p->held)
        pthread_cond_wait(&p->held_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    run_done(p);

    for (size_t b = 0; b < NBUCKETS; b++)
        while (p->buckets[b]) {
            keyent *k = p->buckets[b];
            p->buckets[b] = k->next;
            free(k->name);
            free(k);
        }
    pthread_cond_destroy(&p->held_cv);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    uv_close((uv_handle_t *)&p->async, on_close);
}
