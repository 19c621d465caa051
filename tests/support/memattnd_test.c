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
 */
#include <stdio.h>
#include <stdlib.h>

#include "tests/support/store_fault.h"

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
