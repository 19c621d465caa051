/*
 * server/worker.h — the worker pool: compute and disk work off the loop thread, with per-key ordering.
 *
 * Design. N threads take jobs from one ready queue. Each job carries a key (the session id) and a mode:
 *   SRV_JOB_EXCLUSIVE (a mutation) runs alone for its key: after every earlier job of the key has
 *     finished and before any later one starts;
 *   SRV_JOB_SHARED (a read) may run in parallel with neighbouring shared jobs of the same key, never
 *     alongside an exclusive one, and never before an earlier exclusive job has finished.
 * So jobs of one key take effect in arrival order (a read sees exactly the mutations submitted before
 * it); different keys run in parallel. A job with a NULL key has no ordering at all.
 * The queue is bounded: srv_pool_submit() fails with MA_EBUSY when `queue_max` jobs are waiting (not
 * yet running), and the handler answers 503 `overloaded`.
 * `work` runs on a worker thread; `done` runs afterwards on the loop thread (woken by a uv_async), so
 * request and connection state is only ever touched on the loop thread. OpenBLAS's own threading is
 * process-wide: main() sets it to one thread so it does not fight these workers.
 *
 * Not done here: priorities, cancelling a running job, timeouts (a job runs to completion).
 */
#ifndef SRV_WORKER_H
#define SRV_WORKER_H

#include <stddef.h>
#include <uv.h>

typedef struct srv_pool srv_pool;

typedef enum { SRV_JOB_SHARED = 0, SRV_JOB_EXCLUSIVE = 1 } srv_job_mode;

/* Runs on a worker thread. Must not touch requests, connections or anything else of the loop. */
typedef void (*srv_work_fn)(void *arg);

/* Runs on the loop thread after `work`. status is 0 when `work` ran, MA_EBUSY when the job was
 * cancelled before it started because the pool is being destroyed (work did not run). `done` owns
 * `arg` from then on (frees it). */
typedef void (*srv_done_fn)(void *arg, int status);

/* Starts `threads` (>= 1) workers attached to `loop`, with at most `queue_max` (>= 1) waiting jobs.
 * Returns 0 and *out, or MA_EINVAL / MA_ENOMEM. Call on the loop thread. */
int srv_pool_create(uv_loop_t *loop, int threads, size_t queue_max, srv_pool **out);

/* Queues a job. `key` (copied; NULL = unordered) and `mode` define its ordering (see above).
 * Returns 0: `done` will be called exactly once, later, on the loop thread (never from inside this
 * call). MA_EBUSY: the queue is full or the pool is shutting down; MA_ENOMEM; MA_EINVAL (NULL work
 * or done). On error nothing was queued and neither callback will be called.
 * Call on the loop thread. */
int srv_pool_submit(srv_pool *p, const char *key, srv_job_mode mode, srv_work_fn work,
                    srv_done_fn done, void *arg);

/* Jobs waiting to run (not yet started), and jobs started or waiting whose `done` has not run yet.
 * Any thread (approximate while workers run). */
size_t srv_pool_waiting(const srv_pool *p);
size_t srv_pool_pending(const srv_pool *p);

/* Stops the pool: jobs not yet started are cancelled (their `done` gets MA_EBUSY), running jobs are
 * waited for, every pending `done` is called, the threads are joined and the pool is freed. Call on
 * the loop thread, outside any `done` callback. NULL is a no-op. */
void srv_pool_destroy(srv_pool *p);

#endif
