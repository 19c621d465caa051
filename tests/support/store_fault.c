/*
 * tests/support/store_fault.c — the fault-injection VFS shim of tests/support/store_fault.h (tests only).
 *
 * Design: a sqlite3_vfs whose xOpen opens the real file through the default VFS into the tail of our
 * own sqlite3_file, and whose io methods forward every call to it. Four of them (xWrite, xRead, xSync,
 * and xWrite again for "disk full") first ask fault_hit(), which counts calls of the armed kind and
 * fails the ones past the threshold. Only main-database, WAL and journal files are affected; the -shm
 * file is memory-mapped by sqlite and not written through xWrite anyway.
 *
 * Deliberately not done: short writes, torn pages, or lying fsyncs — sqlite documents what it needs
 * from the OS, and this shim reproduces only the failures the OS reports.
 */
#include "tests/support/store_fault.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/error.h"

#define SHIM_NAME "memattn-fault"

typedef struct {
    sqlite3_file base;        /* pMethods = &shim_io (set only once the real file is open) */
    sqlite3_file *real;       /* the default VFS's file, allocated right after this struct */
} shim_file;

static sqlite3_vfs shim_vfs;
static sqlite3_vfs *real_vfs;
static sqlite3_io_methods shim_io;
static pthread_once_t shim_once = PTHREAD_ONCE_INIT;
static int shim_ok;

static atomic_int fault_kind;
static atomic_ulong fault_after;
static atomic_ulong fault_count;
static atomic_ulong fault_hits_n;
static atomic_ulong fault_limit;     /* 0: every call past fault_after fails */

void ma_store_fault_set_limited(ma_store_fault_kind kind, unsigned long after, unsigned long count)
{
    atomic_store(&fault_kind, MA_FAULT_NONE);
    atomic_store(&fault_count, 0);
    atomic_store(&fault_hits_n, 0);
    atomic_store(&fault_after, after);
    atomic_store(&fault_limit, count);
    atomic_store(&fault_kind, (int)kind);
}

void ma_store_fault_set(ma_store_fault_kind kind, unsigned long after)
{
    ma_store_fault_set_limited(kind, after, 0);
}

unsigned long ma_store_fault_hits(void)
{
    return atomic_load(&fault_hits_n);
}

int ma_store_fault_parse(const char *spec, ma_store_fault_kind *kind, unsigned long *after, unsigned long *count)
{
    static const struct { const char *name; ma_store_fault_kind kind; } kinds[] = {
        {"write", MA_FAULT_WRITE}, {"read", MA_FAULT_READ}, {"sync", MA_FAULT_SYNC}, {"full", MA_FAULT_FULL},
    };
    const char *colon = spec ? strchr(spec, ':') : NULL;
    if (!colon || colon[1] < '0' || colon[1] > '9')
        return MA_EINVAL;
    char *end;
    unsigned long n = strtoul(colon + 1, &end, 10), c = 0;
    if (*end == ':') {
        if (end[1] < '0' || end[1] > '9')
            return MA_EINVAL;
        c = strtoul(end + 1, &end, 10);
    }
    if (*end != '\0')
        return MA_EINVAL;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (strlen(kinds[i].name) == (size_t)(colon - spec) && !strncmp(spec, kinds[i].name, (size_t)(colon - spec))) {
            *kind = kinds[i].kind;
            *after = n;
            *count = c;
            return 0;
        }
    }
    return MA_EINVAL;
}

/* True when this call of `kind` must fail. "full" is a write fault with another error code. */
static bool fault_hit(ma_store_fault_kind kind)
{
    int armed = atomic_load(&fault_kind);
    if (armed == MA_FAULT_NONE || armed != (int)kind)
        return false;
    unsigned long nth = atomic_fetch_add(&fault_count, 1), after = atomic_load(&fault_after);
    unsigned long limit = atomic_load(&fault_limit);
    if (nth < after || (limit > 0 && nth - after >= limit))
        return false;
    atomic_fetch_add(&fault_hits_n, 1);
    return true;
}

static sqlite3_file *real_of(sqlite3_file *f)
{
    return ((shim_file *)f)->real;
}

static int shim_close(sqlite3_file *f)
{
    return real_of(f)->pMethods->xClose(real_of(f));
}

static int shim_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
    if (fault_hit(MA_FAULT_READ))
        return SQLITE_IOERR_READ;
    return real_of(f)->pMethods->xRead(real_of(f), buf, amt, off);
}

static int shim_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
    if (fault_hit(MA_FAULT_WRITE))
        return SQLITE_IOERR_WRITE;
    if (fault_hit(MA_FAULT_FULL))
        return SQLITE_FULL;
    return real_of(f)->pMethods->xWrite(real_of(f), buf, amt, off);
}

static int shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return real_of(f)->pMethods->xTruncate(real_of(f), size);
}

static int shim_sync(sqlite3_file *f, int flags)
{
    if (fault_hit(MA_FAULT_SYNC))
        return SQLITE_IOERR_FSYNC;
    return real_of(f)->pMethods->xSync(real_of(f), flags);
}

static int shim_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return real_of(f)->pMethods->xFileSize(real_of(f), size);
}

static int shim_lock(sqlite3_file *f, int lock)
{
    return real_of(f)->pMethods->xLock(real_of(f), lock);
}

static int shim_unlock(sqlite3_file *f, int lock)
{
    return real_of(f)->pMethods->xUnlock(real_of(f), lock);
}

static int shim_check_reserved(sqlite3_file *f, int *out)
{
    return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}

static int shim_file_control(sqlite3_file *f, int op, void *arg)
{
    return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}

static int shim_sector_size(sqlite3_file *f)
{
    return real_of(f)->pMethods->xSectorSize(real_of(f));
}

static int shim_device_chars(sqlite3_file *f)
{
    return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}

static int shim_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return real_of(f)->pMethods->xShmMap(real_of(f), pg, pgsz, extend, pp);
}

static int shim_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return real_of(f)->pMethods->xShmLock(real_of(f), offset, n, flags);
}

static void shim_shm_barrier(sqlite3_file *f)
{
    real_of(f)->pMethods->xShmBarrier(real_of(f));
}

static int shim_shm_unmap(sqlite3_file *f, int del)
{
    return real_of(f)->pMethods->xShmUnmap(real_of(f), del);
}

static int shim_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
    return real_of(f)->pMethods->xFetch(real_of(f), off, amt, pp);
}

static int shim_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return real_of(f)->pMethods->xUnfetch(real_of(f), off, p);
}

static int shim_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    (void)vfs;
    shim_file *sf = (shim_file *)f;
    sf->base.pMethods = NULL;   /* sqlite calls xClose only if pMethods is set */
    sf->real = (sqlite3_file *)(sf + 1);
    int rc = real_vfs->xOpen(real_vfs, name, sf->real, flags, out_flags);
    if (rc == SQLITE_OK && sf->real->pMethods)
        sf->base.pMethods = &shim_io;
    return rc;
}

static int shim_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
    (void)v;
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}

static int shim_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
    (void)v;
    return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int shim_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
    (void)v;
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static void *shim_dlopen(sqlite3_vfs *v, const char *name)
{
    (void)v;
    return real_vfs->xDlOpen(real_vfs, name);
}

static void shim_dlerror(sqlite3_vfs *v, int n, char *msg)
{
    (void)v;
    real_vfs->xDlError(real_vfs, n, msg);
}

static void (*shim_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
    (void)v;
    return real_vfs->xDlSym(real_vfs, h, sym);
}

static void shim_dlclose(sqlite3_vfs *v, void *h)
{
    (void)v;
    real_vfs->xDlClose(real_vfs, h);
}

static int shim_randomness(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return real_vfs->xRandomness(real_vfs, n, out);
}

static int shim_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return real_vfs->xSleep(real_vfs, us);
}

static int shim_current_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return real_vfs->xCurrentTime(real_vfs, out);
}

static int shim_last_error(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return real_vfs->xGetLastError ? real_vfs->xGetLastError(real_vfs, n, out) : 0;
}

static int shim_current_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

static void shim_register(void)
{
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs || real_vfs->iVersion < 2)
        return;
    shim_io = (sqlite3_io_methods){
        .iVersion = 3,
        .xClose = shim_close, .xRead = shim_read, .xWrite = shim_write, .xTruncate = shim_truncate,
        .xSync = shim_sync, .xFileSize = shim_file_size, .xLock = shim_lock, .xUnlock = shim_unlock,
        .xCheckReservedLock = shim_check_reserved, .xFileControl = shim_file_control,
        .xSectorSize = shim_sector_size, .xDeviceCharacteristics = shim_device_chars,
        .xShmMap = shim_shm_map, .xShmLock = shim_shm_lock, .xShmBarrier = shim_shm_barrier,
        .xShmUnmap = shim_shm_unmap, .xFetch = shim_fetch, .xUnfetch = shim_unfetch,
    };
    shim_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(shim_file) + real_vfs->szOsFile,
        .mxPathname = real_vfs->mxPathname,
        .zName = SHIM_NAME,
        .xOpen = shim_open, .xDelete = shim_delete, .xAccess = shim_access,
        .xFullPathname = shim_full_pathname, .xDlOpen = shim_dlopen, .xDlError = shim_dlerror,
        .xDlSym = shim_dlsym, .xDlClose = shim_dlclose, .xRandomness = shim_randomness,
        .xSleep = shim_sleep, .xCurrentTime = shim_current_time, .xGetLastError = shim_last_error,
        .xCurrentTimeInt64 = shim_current_time64,
    };
    shim_ok = sqlite3_vfs_register(&shim_vfs, 0) == SQLITE_OK;
}

const char *ma_store_fault_vfs(void)
{
    pthread_once(&shim_once, shim_register);
    return shim_ok ? SHIM_NAME : NULL;
}

int ma_store_fault_make_default(void)
{
    if (!ma_store_fault_vfs())
        return MA_EIO;
    /* Registering a registered VFS again with makeDflt moves it to the default position. */
    return sqlite3_vfs_register(&shim_vfs, 1) == SQLITE_OK ? 0 : MA_EIO;
}
