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
 * Two additions for a mutation whose durable write can overlap the next one's compute (srv_pool_submit_job):
 *   prepare  an optional first step that runs on any free worker as soon as the job is queued, outside
 *            its key's order (alongside earlier jobs of the key, exclusive ones included): work that
 *            needs no session state, e.g. decoding a request body. The job's ordered step starts only
 *            after its prepare finished (and its turn came). Workers take ordered steps before prepares.
 *   SRV_JOB_PIPELINED  exclusive like SRV_JOB_EXCLUSIVE, but its step may end *holding* the job: it
 *            returns true after handing its srv_hold to someone (a commit thread) who calls
 *            srv_pool_release() later, from any thread. While a key has held jobs, only later
 *            PIPELINED jobs of the key may start (one at a time, at most SRV_MAX_HOLDS held); SHARED and
 *            EXCLUSIVE jobs wait until every hold was released. A held job's `done` runs after its
 *            release. So a read (SHARED) never runs between a pipelined mutation's step and its release.
 *
 * Not done here: priorities, cancelling a running job, timeouts (a job runs to completion).
 */
#ifndef SRV_WORKER_H
#define SRV_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct srv_pool srv_pool;

typedef enum { SRV_JOB_SHARED = 0, SRV_JOB_EXCLUSIVE = 1, SRV_JOB_PIPELINED = 2 } srv_job_mode;

/* Held pipelined jobs per key before later pipelined jobs of the key wait: bounds how far mutations
 * applied in memory may run ahead of their durable writes. */
#define SRV_MAX_HOLDS 16

/* A held job (the token a SRV_JOB_PIPELINED step hands on). */
typedef struct srv_hold srv_hold;

/* Runs on a worker thread. Must not touch requests, connections or anything else of the loop. */
typedef void (*srv_work_fn)(void *arg);

/* The ordered step of a SRV_JOB_PIPELINED job, on a worker thread: false when the job is finished
 * (`done` follows), true when `h` was handed to someone who will call srv_pool_release(h) exactly once
 * (possibly before this function returns). */
typedef bool (*srv_pipe_fn)(void *arg, srv_hold *h);

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

/* A job of srv_pool_submit_job: `mode` as above; `prepare` (optional) the unordered first step; `work`
 * (SHARED, EXCLUSIVE) or `pipe` (PIPELINED) the ordered step; `done` and `arg` as for srv_pool_submit.
 * A cancelled job (pool destroyed before its ordered step) may have run its prepare. */
typedef struct {
    srv_job_mode mode;
    srv_work_fn prepare;
    srv_work_fn work;
    srv_pipe_fn pipe;
    srv_done_fn done;
    void *arg;
} srv_job_spec;

/* srv_pool_submit with the spec's steps: same results and rules (MA_EINVAL also for a spec whose mode
 * lacks its step function). Call on the loop thread. */
int srv_pool_submit_job(srv_pool *p, const char *key, const srv_job_spec *spec);

/* Ends the hold of a pipelined job (any thread, once per hold): later jobs of its key may start, and its
 * `done` is queued to the loop. */
void srv_pool_release(srv_hold *h);

/* Jobs waiting to run (not yet started), and jobs started or waiting whose `done` has not run yet.
 * Any thread (approximate while workers run). */
size_t srv_pool_waiting(const srv_pool *p);
size_t srv_pool_pending(const srv_pool *p);

/* Stops the pool: jobs not yet started are cancelled (their `done` gets MA_EBUSY), running jobs are
 * waited for, and so are held jobs (their holders must release them: keep the commit thread alive until
 * this returns), every pending `done` is called, the threads are joined and the pool is freed. Call on
 * the loop thread, outside any `done` callback. NULL is a no-op. */
void srv_pool_destroy(srv_pool *p);

#endif
