/*
 * registry/purge.h — the registry's purge thread: deletes the rows of deleted sessions in the background
 * (store/purge.c does each step; docs/STORE.md, "Deleting a session").
 *
 * Design. One thread at low priority (nice +10, like the maintenance thread of registry/maint.h) runs
 * ma_store_purge_step until the store's purge queue is empty, then sleeps until kicked (a delete) or
 * stopped. A step is one small transaction (256 KiB of rows), and steps are 2 ms apart, so a mutation
 * waits at most about one step for the store's writer.
 * A step that fails (a full or failing disk) is retried after a delay that doubles from 1 s to 30 s; a
 * kick retries at once. At start the thread looks at the queue, so a purge interrupted by a stop or a
 * crash resumes when the daemon starts again.
 *
 * Threads: every function may be called from any thread.
 */
#ifndef REG_PURGE_H
#define REG_PURGE_H

#include <stdbool.h>
#include <stddef.h>

#include "store/store.h"

typedef struct reg_purge reg_purge;

/* Starts the thread over st, which must outlive it; step_bytes is the byte budget of a step (0: the
 * default, 256 KiB). 0, MA_ENOMEM, MA_EIO (no thread). */
int reg_purge_create(ma_store *st, size_t step_bytes, reg_purge **out);

/* Stops the thread after its current step (the rest of the queue waits for the next start). NULL: no-op. */
void reg_purge_destroy(reg_purge *p);

/* A session was deleted: purge now (also retries at once after a failure). NULL: no-op. */
void reg_purge_kick(reg_purge *p);

/* Runs fn(arg) on the purge thread, before its next steps (the registry frees a deleted session's memory
 * there: O(its size), so not in the request). false (nothing queued: the caller runs it) when p is NULL,
 * stopping, or out of memory. Jobs still queued at reg_purge_destroy run before it returns. */
bool reg_purge_defer(reg_purge *p, void (*fn)(void *), void *arg);

/* Waits until the queue is empty or a step has failed since the call (tests, benches): 0 when empty,
 * else the failure's MA_E* code. */
int reg_purge_wait_idle(reg_purge *p);

#endif
