/* tests/unit/test_worker.c — the worker pool: per-key order, shared/exclusive rules, parallelism,
 * bounded queue, completion on the loop thread, cancellation at destroy; prepares that run ahead of
 * their key's turn, pipelined jobs held past their step (later pipelined jobs go on, reads wait for
 * the releases, `done` after the release), and a destroy that waits for held jobs. No timing is asserted: the
 * waits below only bound how long a broken pool can hang the test. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "core/error.h"
#include "server/worker.h"

static pthread_t loop_thread;

typedef struct {
    int id;
    atomic_int *seq;         /* global event counter */
    int start, end;          /* sequence numbers at work start / end */
    int done_status;
    bool done_on_loop;
    bool done_called;
    atomic_int *active;      /* jobs of this key running now */
    atomic_int *active_excl;
    bool overlap_violation;
    srv_job_mode mode;
    atomic_int *gate;        /* work waits (bounded) until *gate != 0, if set */
    atomic_int *meet;        /* work increments and waits (bounded) until it reaches meet_n */
    int meet_n;
    int meet_ms;             /* how long to wait for the meeting */
    bool met;
    int *done_count;
} tjob;

static void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static void work(void *arg)
{
    tjob *j = arg;
    j->start = atomic_fetch_add(j->seq, 1);
    if (j->active) {
        int a = atomic_fetch_add(j->active, 1);
        int e = atomic_load(j->active_excl);
        if (j->mode == SRV_JOB_EXCLUSIVE) {
            atomic_fetch_add(j->active_excl, 1);
            if (a != 0)
                j->overlap_violation = true;
        } else if (e != 0) {
            j->overlap_violation = true;
        }
    }
    if (j->meet) {
        atomic_fetch_add(j->meet, 1);
        for (int i = 0; i < j->meet_ms && atomic_load(j->meet) < j->meet_n; i++)
            sleep_us(1000);
        j->met = atomic_load(j->meet) >= j->meet_n;
    }
    if (j->gate)
        for (int i = 0; i < 10000 && !atomic_load(j->gate); i++)
            sleep_us(1000);
    sleep_us(50);   /* widen the window in which a wrong overlap would show */
    if (j->active) {
        if (j->mode == SRV_JOB_EXCLUSIVE)
            atomic_fetch_sub(j->active_excl, 1);
        atomic_fetch_sub(j->active, 1);
    }
    j->end = atomic_fetch_add(j->seq, 1);
}

static void done(void *arg, int status)
{
    tjob *j = arg;
    j->done_status = status;
    j->done_on_loop = pthread_equal(pthread_self(), loop_thread);
    j->done_called = true;
    if (j->done_count)
        (*j->done_count)++;
}

static void run_until(uv_loop_t *loop, const int *count, int target)
{
    while (*count < target)
        uv_run(loop, UV_RUN_ONCE);
}

static void test_exclusive_order(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 4, 1000, &p), 0);
    enum { N = 200 };
    static tjob jobs[N];
    atomic_int seq = 0, active = 0, excl = 0;
    int ndone = 0;
    for (int i = 0; i < N; i++) {
        jobs[i] = (tjob){ .id = i, .seq = &seq, .active = &active, .active_excl = &excl,
                          .mode = SRV_JOB_EXCLUSIVE, .done_count = &ndone };
        assert_int_equal(srv_pool_submit(p, "a", SRV_JOB_EXCLUSIVE, work, done, &jobs[i]), 0);
    }
    assert_int_equal(ndone, 0);   /* never completed inside submit */
    run_until(&loop, &ndone, N);
    for (int i = 0; i < N; i++) {
        assert_true(jobs[i].done_called);
        assert_int_equal(jobs[i].done_status, 0);
        assert_true(jobs[i].done_on_loop);
        assert_false(jobs[i].overlap_violation);
        if (i > 0)
            assert_true(jobs[i].start > jobs[i - 1].end);
    }
    assert_int_equal(srv_pool_pending(p), 0);
    srv_pool_destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A random mix of shared and exclusive jobs on three keys: no exclusive job overlaps another job of
 * its key, and each job of a key starts after every earlier exclusive job of that key has ended and
 * (if exclusive) after every earlier job of the key has ended. */
static void test_shared_exclusive_mix(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 4, 1000, &p), 0);
    enum { N = 300, K = 3 };
    static tjob jobs[N];
    static int key_of[N];
    atomic_int seq = 0, active[K], excl[K];
    for (int k = 0; k < K; k++) {
        atomic_init(&active[k], 0);
        atomic_init(&excl[k], 0);
    }
    const char *keys[K] = { "s1", "s2", "s3" };
    srand(7);
    int ndone = 0;
    for (int i = 0; i < N; i++) {
        int k = rand() % K;
        key_of[i] = k;
        srv_job_mode mode = rand() % 3 == 0 ? SRV_JOB_EXCLUSIVE : SRV_JOB_SHARED;
        jobs[i] = (tjob){ .id = i, .seq = &seq, .active = &active[k], .active_excl = &excl[k], .mode = mode,
                          .done_count = &ndone };
        assert_int_equal(srv_pool_submit(p, keys[k], mode, work, done, &jobs[i]), 0);
    }
    run_until(&loop, &ndone, N);
    for (int i = 0; i < N; i++) {
        assert_false(jobs[i].overlap_violation);
        assert_int_equal(jobs[i].done_status, 0);
        for (int e = 0; e < i; e++) {
            if (key_of[e] != key_of[i])
                continue;
            if (jobs[e].mode == SRV_JOB_EXCLUSIVE || jobs[i].mode == SRV_JOB_EXCLUSIVE)
                assert_true(jobs[i].start > jobs[e].end);
        }
    }
    srv_pool_destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Two jobs that can only both finish "met" when they run at the same time. */
static void run_meeting(srv_job_mode mode, const char *k1, const char *k2, bool expect_met)
{
    /* Expected meetings return as soon as both run; the expected non-meeting waits 300 ms. */
    int wait_ms = expect_met ? 10000 : 300;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 2, 10, &p), 0);
    atomic_int seq = 0, meet = 0;
    int ndone = 0;
    tjob a = { .seq = &seq, .meet = &meet, .meet_n = 2, .meet_ms = wait_ms, .mode = mode, .done_count = &ndone };
    tjob b = a;
    assert_int_equal(srv_pool_submit(p, k1, mode, work, done, &a), 0);
    assert_int_equal(srv_pool_submit(p, k2, mode, work, done, &b), 0);
    run_until(&loop, &ndone, 2);
    assert_int_equal(a.met, expect_met);
    if (!expect_met)
        assert_true(b.start > a.end);
    srv_pool_destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_parallelism(void **state)
{
    (void)state;
    run_meeting(SRV_JOB_SHARED, "k", "k", true);       /* reads of one key run together */
    run_meeting(SRV_JOB_EXCLUSIVE, "k1", "k2", true);  /* different keys run together */
    run_meeting(SRV_JOB_EXCLUSIVE, NULL, NULL, true);  /* unordered jobs run together */
}

static void test_exclusive_serialises(void **state)
{
    (void)state;
    /* The first waits (bounded) for a partner that cannot start: the pool must not run them together. */
    run_meeting(SRV_JOB_EXCLUSIVE, "k", "k", false);
}

typedef struct {
    srv_pool *p;
    atomic_int *gate;
} releaser;

static void *release_when_cancelled(void *arg)
{
    releaser *r = arg;
    while (srv_pool_waiting(r->p) != 0)
        sleep_us(1000);
    atomic_store(r->gate, 1);
    return NULL;
}

static void test_bounded_queue_and_cancel(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 1, 3, &p), 0);
    atomic_int seq = 0, gate = 0, meet = 0;
    int ndone = 0;
    /* The blocker occupies the only thread; `meet` tells us it has started (it is no longer waiting). */
    tjob blocker = { .seq = &seq, .gate = &gate,
                     .meet = &meet, .meet_n = 1, .meet_ms = 1, .done_count = &ndone };
    assert_int_equal(srv_pool_submit(p, "x", SRV_JOB_EXCLUSIVE, work, done, &blocker), 0);
    while (atomic_load(&meet) == 0)
        sleep_us(1000);
    tjob q[4];
    for (int i = 0; i < 3; i++) {
        q[i] = (tjob){ .seq = &seq, .done_count = &ndone };
        assert_int_equal(srv_pool_submit(p, i == 0 ? "x" : NULL, SRV_JOB_SHARED, work, done, &q[i]), 0);
    }
    assert_int_equal(srv_pool_waiting(p), 3);
    q[3] = (tjob){ .seq = &seq, .done_count = &ndone };
    assert_int_equal(srv_pool_submit(p, "y", SRV_JOB_SHARED, work, done, &q[3]), MA_EBUSY);
    assert_int_equal(srv_pool_submit(p, NULL, SRV_JOB_SHARED, NULL, done, &q[3]), MA_EINVAL);

    /* Destroy while the blocker runs: the three waiting jobs are cancelled, the blocker completes. */
    releaser r = { p, &gate };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_when_cancelled, &r), 0);
    srv_pool_destroy(p);
    pthread_join(t, NULL);
    assert_int_equal(ndone, 4);
    assert_int_equal(blocker.done_status, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(q[i].done_status, MA_EBUSY);
        assert_int_equal(q[i].start, 0);   /* work never ran */
        assert_true(q[i].done_on_loop);
    }
    assert_false(q[3].done_called);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- prepares and pipelined holds ------------------------------------------------------------- */

/* Waits (bounded: a broken pool fails the test instead of hanging it) until *v >= n. */
static bool wait_for(atomic_int *v, int n)
{
    for (int i = 0; i < 10000 && atomic_load(v) < n; i++)
        sleep_us(1000);
    return atomic_load(v) >= n;
}

typedef struct {
    tjob t;
    atomic_int *prepared;    /* incremented by the prepare */
    int prep_seq;            /* sequence number when the prepare ran */
    srv_hold *hold;          /* pipelined: the hold handed over */
    atomic_int *stepped;     /* pipelined: incremented when the step ran */
    bool release_inside;     /* pipelined: release the hold before the step returns */
    bool hold_it;            /* pipelined: return true */
} pjob;

static void pprepare(void *arg)
{
    pjob *j = arg;
    j->prep_seq = atomic_fetch_add(j->t.seq, 1);
    atomic_fetch_add(j->prepared, 1);
}

static void pwork(void *arg)
{
    work(&((pjob *)arg)->t);
}

static bool ppipe(void *arg, srv_hold *h)
{
    pjob *j = arg;
    j->t.start = atomic_fetch_add(j->t.seq, 1);
    j->hold = h;
    if (j->stepped)
        atomic_fetch_add(j->stepped, 1);
    if (j->release_inside)
        srv_pool_release(h);
    j->t.end = atomic_fetch_add(j->t.seq, 1);
    return j->hold_it;
}

static void pdone(void *arg, int status)
{
    done(&((pjob *)arg)->t, status);
}

/* A job's prepare runs while an earlier exclusive job of its key still runs; its ordered step waits. */
static void test_prepare_ahead_of_turn(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 2, 100, &p), 0);
    atomic_int seq = 0, gate = 0, prepared = 0, meet = 0;
    int ndone = 0;
    pjob a = {.t = {.seq = &seq, .gate = &gate, .meet = &meet, .meet_n = 1, .meet_ms = 1, .mode = SRV_JOB_EXCLUSIVE,
                    .done_count = &ndone}};
    pjob b = {.t = {.seq = &seq, .mode = SRV_JOB_EXCLUSIVE, .done_count = &ndone}, .prepared = &prepared};
    srv_job_spec sa = {.mode = SRV_JOB_EXCLUSIVE, .work = pwork, .done = pdone, .arg = &a};
    srv_job_spec sb = {.mode = SRV_JOB_EXCLUSIVE, .prepare = pprepare, .work = pwork, .done = pdone, .arg = &b};
    assert_int_equal(srv_pool_submit_job(p, "k", &sa), 0);
    assert_true(wait_for(&meet, 1));              /* a runs (and waits for the gate) */
    assert_int_equal(srv_pool_submit_job(p, "k", &sb), 0);
    assert_true(wait_for(&prepared, 1));          /* b's prepare ran meanwhile */
    assert_int_equal(b.t.start, 0);               /* but not its step */
    assert_int_equal(srv_pool_waiting(p), 1);
    atomic_store(&gate, 1);
    run_until(&loop, &ndone, 2);
    assert_true(b.prep_seq < a.t.end);
    assert_true(b.t.start > a.t.end);
    assert_int_equal(b.t.done_status, 0);
    /* a spec without its step function is refused */
    srv_job_spec bad = {.mode = SRV_JOB_PIPELINED, .work = pwork, .done = pdone, .arg = &b};
    assert_int_equal(srv_pool_submit_job(p, "k", &bad), MA_EINVAL);
    srv_pool_destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Pipelined steps of one key run one after the other while earlier ones are held; a read queued behind
 * them starts only once every hold was released; a held job's `done` runs after its release; a release
 * from inside the step finishes the job normally. */
static void test_pipelined_holds(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 2, 100, &p), 0);
    atomic_int seq = 0, stepped = 0, prepared = 0;
    int ndone = 0;
    pjob j1 = {.t = {.seq = &seq, .done_count = &ndone}, .stepped = &stepped, .hold_it = true, .prepared = &prepared};
    pjob j2 = j1, j3 = j1;
    j3.release_inside = true;
    pjob r = {.t = {.seq = &seq, .mode = SRV_JOB_SHARED, .done_count = &ndone}};
    srv_job_spec s1 = {.mode = SRV_JOB_PIPELINED, .prepare = pprepare, .pipe = ppipe, .done = pdone, .arg = &j1};
    srv_job_spec s2 = s1, s3 = s1;
    s2.arg = &j2;
    s3.arg = &j3;
    srv_job_spec sr = {.mode = SRV_JOB_SHARED, .work = pwork, .done = pdone, .arg = &r};
    assert_int_equal(srv_pool_submit_job(p, "k", &s1), 0);
    assert_int_equal(srv_pool_submit_job(p, "k", &s2), 0);
    assert_int_equal(srv_pool_submit_job(p, "k", &s3), 0);
    assert_int_equal(srv_pool_submit_job(p, "k", &sr), 0);
    assert_true(wait_for(&stepped, 3));           /* all three steps ran though 1 and 2 are held */
    assert_true(j1.t.end < j2.t.start && j2.t.end < j3.t.start);
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    /* j3 released itself: done. Held j1 and j2: not done. The read: not started (it waits for both). */
    run_until(&loop, &ndone, 1);
    assert_true(j3.t.done_called);
    assert_false(j1.t.done_called || j2.t.done_called);
    sleep_us(20000);
    assert_int_equal(r.t.start, 0);
    int before_release = atomic_fetch_add(&seq, 1);
    srv_pool_release(j2.hold);                    /* out of order: fine */
    run_until(&loop, &ndone, 2);
    assert_true(j2.t.done_called);
    sleep_us(20000);
    assert_int_equal(r.t.start, 0);               /* j1 still held */
    srv_pool_release(j1.hold);
    run_until(&loop, &ndone, 4);
    assert_true(r.t.start > before_release);
    for (pjob *j = &j1; j; j = j == &j1 ? &j2 : j == &j2 ? &j3 : NULL) {
        assert_int_equal(j->t.done_status, 0);
        assert_true(j->t.done_on_loop);
    }
    assert_int_equal(srv_pool_pending(p), 0);
    srv_pool_destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct {
    pjob *j;
    srv_pool *p;
} late_releaser;

static void *release_late(void *arg)
{
    late_releaser *l = arg;
    sleep_us(50000);   /* most likely after srv_pool_destroy started waiting; correct either way */
    srv_pool_release(l->j->hold);
    return NULL;
}

/* srv_pool_destroy waits for a held job's release (its done then runs with status 0), and cancels a
 * job queued behind it whose prepare may have run. */
static void test_destroy_waits_for_holds(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    srv_pool *p;
    assert_int_equal(srv_pool_create(&loop, 1, 100, &p), 0);
    atomic_int seq = 0, stepped = 0, prepared = 0;
    int ndone = 0;
    pjob h = {.t = {.seq = &seq, .done_count = &ndone}, .stepped = &stepped, .hold_it = true, .prepared = &prepared};
    pjob e = {.t = {.seq = &seq, .mode = SRV_JOB_EXCLUSIVE, .done_count = &ndone}, .prepared = &prepared};
    srv_job_spec sh = {.mode = SRV_JOB_PIPELINED, .pipe = ppipe, .done = pdone, .arg = &h};
    srv_job_spec se = {.mode = SRV_JOB_EXCLUSIVE, .prepare = pprepare, .work = pwork, .done = pdone, .arg = &e};
    assert_int_equal(srv_pool_submit_job(p, "k", &sh), 0);
    assert_true(wait_for(&stepped, 1));
    assert_int_equal(srv_pool_submit_job(p, "k", &se), 0);   /* waits for the hold */
    assert_true(wait_for(&prepared, 1));
    late_releaser l = {&h, p};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_late, &l), 0);
    srv_pool_destroy(p);
    pthread_join(t, NULL);
    assert_int_equal(ndone, 2);
    assert_int_equal(h.t.done_status, 0);
    assert_int_equal(e.t.done_status, MA_EBUSY);
    assert_int_equal(e.t.start, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exclusive_order),
        cmocka_unit_test(test_shared_exclusive_mix),
        cmocka_unit_test(test_parallelism),
        cmocka_unit_test(test_exclusive_serialises),
        cmocka_unit_test(test_bounded_queue_and_cancel),
        cmocka_unit_test(test_prepare_ahead_of_turn),
        cmocka_unit_test(test_pipelined_holds),
        cmocka_unit_test(test_destroy_waits_for_holds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
