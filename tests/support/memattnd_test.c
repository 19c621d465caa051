/*
 * tests/support/memattnd_test.c — what makes $(BUILD)/memattnd-test out of memattnd: the daemon's own
 * objects (server/main.o and libmemattn.a) plus this file and the fault-injection VFS
 * (tests/support/store_fault.c). The shipped build/memattnd has neither and ignores MEMATTN_STORE_FAULT.
 *
 * Design: a constructor, run before main, reads MEMATTN_STORE_FAULT=<write|read|sync|full>:<n>[:<count>]
 * (tests/support/store_fault.h). When it is set, the fault is armed and the shim becomes sqlite's default
 * VFS, so the store the daemon opens (it names no VFS) goes through it; no hook in store/ or server/ is
 * needed. No sqlite I/O happens before the store's open, so "the first n calls succeed" counts from the
 * open, as it did when the store read the variable itself. A malformed value stops the process with
 * exit status 1 and a message, before anything is served. Unset or empty: the test daemon is memattnd.
 *
 * Second fault point, "killed after the commit, before the answer" (docs/API.md, "Safe retries"):
 * MEMATTN_KILL_AFTER_COMMIT=<n> makes the n-th store change that succeeds — a session change
 * (ma_store_commit, or one of the changes of a group transaction, ma_store_commit_group: the commit
 * queue's pipelined event batches), a create or a delete (ma_store_session_create_idem / _delete_idem, the
 * registry's calls) — raise SIGKILL as soon as the store returns, so its transaction is durable and its
 * client gets no answer. The Makefile links the test daemon with `-Wl,--wrap=` for those four functions: the
 * registry's calls land in the __wrap_ functions below, which call the store's (__real_). The shipped
 * daemon is linked without it and has none of this.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "store/store.h"
#include "tests/support/store_fault.h"

static atomic_ulong kill_after;   /* 0: off */
static atomic_ulong changes;

/* After `count` store changes that succeeded (one transaction): the one that holds the n-th change kills
 * the process (no answer is sent). */
static int kill_point(int rc, unsigned long count)
{
    unsigned long n = atomic_load(&kill_after);
    unsigned long before = rc == 0 && n && count ? atomic_fetch_add(&changes, count) : 0;
    if (rc == 0 && n && count && before < n && before + count >= n) {
        fprintf(stderr, "memattnd-test: MEMATTN_KILL_AFTER_COMMIT=%lu: killed after the commit\n", n);
        raise(SIGKILL);
    }
    return rc;
}

int __real_ma_store_commit(ma_store *st, const char *id, const ma_store_delta *d, char *err, size_t errlen);
int __wrap_ma_store_commit(ma_store *st, const char *id, const ma_store_delta *d, char *err, size_t errlen);
int __real_ma_store_commit_group(ma_store *st, size_t n, const char *const *ids, const ma_store_delta *const *deltas,
                                 char *err, size_t errlen);
int __wrap_ma_store_commit_group(ma_store *st, size_t n, const char *const *ids, const ma_store_delta *const *deltas,
                                 char *err, size_t errlen);
int __real_ma_store_session_create_idem(ma_store *st, const char *id, const char *config_json, int64_t now,
                                        const ma_store_idem *k, char *err, size_t errlen);
int __wrap_ma_store_session_create_idem(ma_store *st, const char *id, const char *config_json, int64_t now,
                                        const ma_store_idem *k, char *err, size_t errlen);
int __real_ma_store_session_delete_idem(ma_store *st, const char *id, const ma_store_idem *k, char *err,
                                        size_t errlen);
int __wrap_ma_store_session_delete_idem(ma_store *st, const char *id, const ma_store_idem *k, char *err,
                                        size_t errlen);

int __wrap_ma_store_commit(ma_store *st, const char *id, const ma_store_delta *d, char *err, size_t errlen)
{
    return kill_point(__real_ma_store_commit(st, id, d, err, errlen), 1);
}

int __wrap_ma_store_commit_group(ma_store *st, size_t n, const char *const *ids, const ma_store_delta *const *deltas,
                                 char *err, size_t errlen)
{
    return kill_point(__real_ma_store_commit_group(st, n, ids, deltas, err, errlen), n);
}

int __wrap_ma_store_session_create_idem(ma_store *st, const char *id, const char *config_json, int64_t now,
                                        const ma_store_idem *k, char *err, size_t errlen)
{
    return kill_point(__real_ma_store_session_create_idem(st, id, config_json, now, k, err, errlen), 1);
}

int __wrap_ma_store_session_delete_idem(ma_store *st, const char *id, const ma_store_idem *k, char *err,
                                        size_t errlen)
{
    return kill_point(__real_ma_store_session_delete_idem(st, id, k, err, errlen), 1);
}

__attribute__((constructor)) static void memattnd_test_arm_kill(void)
{
    const char *spec = getenv("MEMATTN_KILL_AFTER_COMMIT");
    char *end;
    if (!spec || !*spec)
        return;
    unsigned long n = strtoul(spec, &end, 10);
    if (*end || n == 0) {
        fprintf(stderr, "memattnd: MEMATTN_KILL_AFTER_COMMIT=%s: expected a count >= 1\n", spec);
        exit(1);
    }
    atomic_store(&kill_after, n);
}

__attribute__((constructor)) static void memattnd_test_arm_faults(void)
{
    const char *spec = getenv("MEMATTN_STORE_FAULT");
    if (!spec || !*spec)
        return;
    ma_store_fault_kind kind;
    unsigned long after, count;
    if (ma_store_fault_parse(spec, &kind, &after, &count)) {
        fprintf(stderr, "memattnd: store: MEMATTN_STORE_FAULT=%s: expected <write|read|sync|full>:<n>[:<count>]\n",
                spec);
        exit(1);
    }
    ma_store_fault_set_limited(kind, after, count);
    if (ma_store_fault_make_default()) {
        fprintf(stderr, "memattnd: store: cannot register the fault-injection VFS\n");
        exit(1);
    }
}
