/*
 * tests/unit/test_store_full.c — issue 12, item 6: with the disk full, a session can still be deleted,
 * and the space it freed serves new writes. Two full disks: the store's max_pages option (PRAGMA
 * max_page_count), and a real 2 MiB tmpfs. Sessions are filled with batches until no batch fits, then
 * with ever smaller writes (one event, then a session creation) until nothing fits at all; then DELETE
 * must succeed, and a write after it too.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#define _XOPEN_SOURCE_EXTENDED 1
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include "core/error.h"
#include "store/store.h"

#define KF 32
#define VF 32

static char errbuf[512];

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int commit_n(ma_store *st, const char *id, uint64_t from, size_t n)
{
    float *k = calloc(n * KF, sizeof(float)), *v = calloc(n * VF, sizeof(float));
    char **pl = calloc(n, sizeof(char *));
    assert_true(k && v && pl);
    for (size_t i = 0; i < n * KF; i++)
        k[i] = (float)(from * KF + i);
    for (size_t i = 0; i < n * VF; i++)
        v[i] = -(float)(from * VF + i);
    for (size_t i = 0; i < n; i++)
        pl[i] = i % 2 ? "{\"payload\":\"some text to take some room in the payload table\"}" : NULL;
    char blob[200];
    memset(blob, 'b', sizeof blob);
    ma_store_delta d = { .first_event = from, .n_events = n, .k_floats = KF, .v_floats = VF, .k = k, .v = v,
                         .payloads = (const char *const *)pl, .backbone = { blob, sizeof blob },
                         .slots_blob = { blob, 100 }, .archive_meta = { blob, 50 }, .length = from + n,
                         .slots = 0, .updated_at = (int64_t)(from + n) };
    int rc = ma_store_commit(st, id, &d, errbuf, sizeof errbuf);
    free(k);
    free(v);
    free(pl);
    return rc;
}

/* Fills the store in dir until nothing fits, then deletes: see the file's comment. */
static void full_then_delete(const char *dir, const ma_store_options *o)
{
    ma_store *st;
    assert_int_equal(ma_store_open_with(dir, o, &st, errbuf, sizeof errbuf), 0);
    enum { S = 4 };
    uint64_t len[S] = { 0 };
    char id[S][16];
    for (int s = 0; s < S; s++) {
        snprintf(id[s], sizeof id[s], "s%d", s);
        assert_int_equal(ma_store_session_create(st, id[s], "{}", 0, errbuf, sizeof errbuf), 0);
    }
    /* Fill: batches of 64 round robin until none fits, then 16, 4, 1 events, then creations. */
    int rc;
    for (size_t batch = 64; batch >= 1; batch /= 4) {
        bool any = true;
        while (any) {
            any = false;
            for (int s = 0; s < S; s++)
                if ((rc = commit_n(st, id[s], len[s], batch)) == 0) {
                    len[s] += batch;
                    any = true;
                } else if (rc != MA_EIO) {
                    fail_msg("filling: %d %s", rc, errbuf);
                }
        }
    }
    int extra = 0;
    for (;;) {
        char nid[16];
        snprintf(nid, sizeof nid, "x%d", extra);
        if (ma_store_session_create(st, nid, "{\"a config text that takes a little room\":true}", 0, errbuf,
                                    sizeof errbuf) != 0)
            break;
        extra++;
        assert_true(extra < 100000);
    }
    print_message("full at %llu + %llu + %llu + %llu events, %d extra sessions: %s\n", (unsigned long long)len[0],
                  (unsigned long long)len[1], (unsigned long long)len[2], (unsigned long long)len[3], extra, errbuf);
    /* Nothing fits: deleting must still work. */
    rc = ma_store_session_delete(st, "s1", errbuf, sizeof errbuf);
    if (rc != 0)
        fail_msg("DELETE with the disk full: %d %s", rc, errbuf);
    if (extra > 0)
        assert_int_equal(ma_store_session_delete(st, "x0", errbuf, sizeof errbuf), 0);
    /* The purge of the deleted sessions' rows (store/purge.c) works on the full disk too. */
    ma_store_purge_result pr = {.purging = 1};
    int steps = 0;
    while (pr.purging) {
        rc = ma_store_purge_step(st, 1 << 20, &pr, errbuf, sizeof errbuf);
        if (rc != 0)
            fail_msg("purge step %d with the disk full: %d %s", steps, rc, errbuf);
        steps++;
        print_message("purge step: %llu rows%s, %llu left\n", (unsigned long long)pr.rows,
                      pr.fast ? " (secure_delete FAST: the disk is full)" : "", (unsigned long long)pr.purging);
    }

    /* The space freed serves new writes. */
    rc = commit_n(st, "s0", len[0], 16);
    if (rc != 0)
        fail_msg("a write after the delete: %d %s", rc, errbuf);
    ma_store_close(st);
    /* After a reopen the store is consistent, and a delete at the brim works again. */
    assert_int_equal(ma_store_open_with(dir, o, &st, errbuf, sizeof errbuf), 0);
    while (commit_n(st, "s2", len[2], 8) == 0)
        len[2] += 8;
    rc = ma_store_session_delete(st, "s3", errbuf, sizeof errbuf);
    if (rc != 0)
        fail_msg("DELETE with the disk full, after a reopen: %d %s", rc, errbuf);
    ma_store_close(st);
}

/* The database capped by max_pages (PRAGMA max_page_count): the WAL may still grow. */
static void test_delete_when_max_pages(void **state)
{
    (void)state;
    char dir[] = "/tmp/ma_store_full_XXXXXX";
    assert_non_null(mkdtemp(dir));
    ma_store_options o;
    ma_store_options_default(&o);
    o.max_pages = 200;   /* 800 KiB */
    full_then_delete(dir, &o);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A really full file system: a 2 MiB tmpfs in a mount namespace of this process (root only; skipped
 * where mounting is not allowed). Every write that needs a new block fails with ENOSPC, the WAL's too. */
static void test_delete_when_disk_full(void **state)
{
    (void)state;
    char dir[] = "/tmp/ma_store_tmpfs_XXXXXX";
    assert_non_null(mkdtemp(dir));
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", dir, "tmpfs", 0, "size=2m") != 0) {
        rmdir(dir);
        print_message("cannot mount a tmpfs here (not root?): skipped\n");
        skip();
    }
    ma_store_options o;
    ma_store_options_default(&o);
    full_then_delete(dir, &o);
    umount(dir);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delete_when_max_pages),
        cmocka_unit_test(test_delete_when_disk_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
