/*
 * store/store_fault.h — fault injection for the store: a sqlite3 VFS shim (a test build hook).
 *
 * The shim "memattn-fault" wraps the default VFS and forwards every call; when armed it makes the
 * chosen kind of I/O call fail the way the OS would make it fail (EIO on write/read/fsync, ENOSPC on
 * write), so the store's error paths run through sqlite exactly as on real hardware. It is used only by
 * stores opened with ma_store_options.fault_vfs (tests) or when the environment variable
 * MEMATTN_STORE_FAULT is set at ma_store_open (end-to-end tests of the daemon, see docs/STORE.md):
 *
 *     MEMATTN_STORE_FAULT=<kind>:<n>     kind = write | read | sync | full; the first n calls of that
 *                                        kind succeed, every later one fails (sticky).
 *
 * The fault state is process-wide (atomics), like a failing disk would be. Not for production use;
 * a store opened without the shim never consults it.
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

/* How many calls failed because of the armed fault since the last ma_store_fault_set. */
unsigned long ma_store_fault_hits(void);

/* Parses "<kind>:<n>" (the MEMATTN_STORE_FAULT syntax). 0 or MA_EINVAL. */
int ma_store_fault_parse(const char *spec, ma_store_fault_kind *kind, unsigned long *after);

/* Registers the shim with sqlite once (not as the default VFS) and returns its name, or NULL if
 * registration failed. Thread-safe. */
const char *ma_store_fault_vfs(void);

#endif
