/*
 * tests/support/store_fault.h — fault injection for the store: a sqlite3 VFS shim. Tests only: it is
 * linked into the test binaries and into the test daemon $(BUILD)/memattnd-test, never into
 * $(BUILD)/memattnd (`make check` verifies that with nm).
 *
 * The shim "memattn-fault" wraps the default VFS and forwards every call; when armed it makes the
 * chosen kind of I/O call fail the way the OS would make it fail (EIO on write/read/fsync, ENOSPC on
 * write), so the store's error paths run through sqlite exactly as on real hardware. Two ways in:
 *   - unit tests open a store with ma_store_options.vfs = ma_store_fault_vfs() and arm it with
 *     ma_store_fault_set;
 *   - the test daemon (tests/support/memattnd_test.c) reads the environment variable
 *     MEMATTN_STORE_FAULT before main and makes the shim sqlite's default VFS (end-to-end tests of the
 *     daemon, docs/STORE.md):
 *
 *     MEMATTN_STORE_FAULT=<kind>:<n>[:<count>]
 *                                        kind = write | read | sync | full; the first n calls of that
 *                                        kind succeed, every later one fails (sticky), or only the next
 *                                        `count` of them when given (a transient fault).
 *
 * The fault state is process-wide (atomics), like a failing disk would be.
 */
#ifndef MA_STORE_FAULT_H
#define MA_STORE_FAULT_H

#include <stdbool.h>

typedef enum {
    MA_FAULT_NONE = 0,
    MA_FAULT_WRITE,   /* xWrite returns SQLITE_IOERR_WRITE (EIO) */
    MA_FAULT_READ,    /* xRead returns SQLITE_IOERR_READ (EIO) */
    MA_FAULT_SYNC,    /* xSync returns SQLITE_IOERR_FSYNC (EIO on fsync) */
    MA_FAULT_FULL,    /* xWrite returns SQLITE_FULL (ENOSPC) */
} ma_store_fault_kind;

/* Arms the shim: the first `after` calls of `kind` succeed, later ones fail. MA_FAULT_NONE disarms.
 * Thread-safe. */
void ma_store_fault_set(ma_store_fault_kind kind, unsigned long after);

/* Like ma_store_fault_set, but only `count` calls fail (a transient fault); count 0 = all later ones. */
void ma_store_fault_set_limited(ma_store_fault_kind kind, unsigned long after, unsigned long count);

/* How many calls failed because of the armed fault since the last ma_store_fault_set. */
unsigned long ma_store_fault_hits(void);

/* Parses "<kind>:<n>[:<count>]" (the MEMATTN_STORE_FAULT syntax; count 0 when absent). 0 or MA_EINVAL. */
int ma_store_fault_parse(const char *spec, ma_store_fault_kind *kind, unsigned long *after, unsigned long *count);

/* Registers the shim with sqlite once (not as the default VFS) and returns its name, or NULL if
 * registration failed. Thread-safe. */
const char *ma_store_fault_vfs(void);

/* Registers the shim (if not yet) and makes it sqlite's default VFS, so every database this process
 * opens without naming a VFS goes through it. 0 or MA_EIO. For the test daemon; call before any
 * database is opened. */
int ma_store_fault_make_default(void);

#endif
