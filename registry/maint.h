/*
 * registry/maint.h — the registry's maintenance thread: background jobs keyed by session id (today one
 * kind, the archive index build of registry/registry.c; docs/ARCHIVE.md, "Builds in the background").
 *
 * Design. One thread, one job at a time, at low priority (nice +10 for the thread: the request path's
 * workers come first on a busy machine), and a second thread at normal priority for what a job does while
 * it holds a session's gate (reg_maint_urgent). Jobs are session ids in a FIFO without duplicates: enqueuing an
 * id that is queued does nothing, enqueuing the id that is running queues it once more (the job looks
 * again when it ends). The job function gets a cancel flag, which reg_maint_cancel sets for its id and
 * reg_maint_destroy for any; a job checks it between its steps and returns early. Nothing here knows what
 * a job does.
 *
 * Threads: every function may be called from any thread (one mutex); the job runs on the maintenance
 * thread, never under that mutex.
 */
#ifndef REG_MAINT_H
#define REG_MAINT_H

#include <stdatomic.h>
#include <stdbool.h>

typedef struct reg_maint reg_maint;

/* Runs one job for session `id`; returns when done or when *cancel became non-zero. */
typedef void (*reg_maint_fn)(void *ctx, const char *id, const atomic_int *cancel);

/* Starts the thread. 0, MA_ENOMEM, MA_EIO (no thread). */
int reg_maint_create(reg_maint_fn fn, void *ctx, reg_maint **out);

/* Drops the queued jobs, cancels the running one, waits for it and stops the thread. NULL: no-op. */
void reg_maint_destroy(reg_maint *m);

/* Queues a job for id (see the design above). Never fails the caller: on out-of-memory the job is
 * dropped (the next enqueue for the id queues it again). */
void reg_maint_enqueue(reg_maint *m, const char *id);

/* Drops a queued job of id and cancels it if it runs (without waiting for it). */
void reg_maint_cancel(reg_maint *m, const char *id);

/* From the job only: runs fn(arg) on the maintenance module's second thread, which keeps the process's
 * normal priority, and returns its result (for the steps that hold a session's gate exclusively: every
 * request of that session waits for them, so they must not run at the job's nice +10). */
int reg_maint_urgent(reg_maint *m, int (*fn)(void *), void *arg);

/* True while a job of id is queued or running. */
bool reg_maint_busy(reg_maint *m, const char *id);

/* Waits until no job is queued or running (tests). */
void reg_maint_wait_idle(reg_maint *m);

#endif
