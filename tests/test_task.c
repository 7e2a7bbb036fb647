/*
 * test_task.c: tasks and their handles.
 *
 * Covers submit/wait and the status (fn's return value), done called exactly
 * once, submit argument errors, detached tasks, submission order, cancel by
 * handle (queued, running, finished, twice, racing the start), task states,
 * deadlines (queued: the timer reports it; running: the token fires), parent
 * tokens and the reason children inherit, the first reason winning,
 * ctp_task_wait (timeouts, -EDEADLK on itself, waiting on another task,
 * waiters sharing the state word with the task token's sleepers),
 * releasing handles early and keeping them past the pool (and, in the ASan
 * build, a released object poisoned), NULL arguments, and
 * a full queue (-EAGAIN, queue_wait, slots freed by cancel and by deadline).
 *
 * Determinism: workers are parked on semaphores (libuv's saturate_threadpool)
 * so tasks stay queued exactly as long as a test needs. Only the test's own
 * thread calls assert_*; tasks, done callbacks and helper threads record into
 * the structs in fixtures.h and below.
 */
#include <sys/syscall.h>

#include "fixtures.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

/* ---- submit, wait, status ----------------------------------------------- */

static void test_task_submit_wait_returns_status(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct rec r, neg, plain;
	ctp_task *t = NULL, *tn = NULL, *tp = NULL;
	int st = UNSET;

	rec_init(&r, 42);
	rec_init(&neg, -EIO);
	rec_init(&plain, 5);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	assert_non_null(t);
	assert_int_equal(submit_rec(pool, &neg, NO_OPTS, &tn), 0);
	/* opts NULL: no done, all defaults */
	assert_int_equal(ctp_pool_submit(pool, rec_fn, &plain, NULL, &tp), 0);

	assert_int_equal(ctp_task_wait(t, CTP_FOREVER, &st), 0);
	assert_int_equal(st, 42);
	/* done has returned before wait does */
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 42);
	assert_int_equal(r.ran, 1);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_wait(t, 0, NULL), 0); /* again, status NULL */

	assert_int_equal(ctp_task_wait(tn, BOUND, &st), 0);
	assert_int_equal(st, -EIO);
	assert_int_equal(neg.status, -EIO);
	assert_int_equal(ctp_task_wait(tp, BOUND, &st), 0);
	assert_int_equal(st, 5);
	assert_int_equal(plain.calls, 0);

	ctp_task_release(t);
	ctp_task_release(tn);
	ctp_task_release(tp);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(neg.calls, 1);
	rec_fini(&r);
	rec_fini(&neg);
	rec_fini(&plain);
}

static void test_task_done_called_exactly_once(void **state)
{
	(void)state;
	enum { N = 64 };
	ctp_pool *pool = pool_new(2, 0);
	struct rec r[N];
	ctp_task *t[N];

	for (int i = 0; i < N; i++) {
		rec_init(&r[i], i);
		t[i] = NULL;
		/* every other task keeps a handle */
		assert_int_equal(submit_rec(pool, &r[i], NO_OPTS,
		                            i % 2 ? &t[i] : NULL), 0);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].status, i);
		assert_int_equal(r[i].ran, 1);
		ctp_task_release(t[i]);
	}
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, N);
	assert_int_equal(s.completed, N);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(r[i].calls, 1);
		rec_fini(&r[i]);
	}
}

/* A task object is reused: one that had a done (a word for it after the
 * object, task.c "Sizes") and then carries a task without one must not
 * call the old done. Tasks with a parent always have the word, with or
 * without a done; the worker's frees reach the pool in batches (32, or
 * what it holds when it parks), and the submitter's later refills take
 * those objects again (without the clearing in ctp__task_alloc, this
 * test fails). */
static void test_task_reused_object_keeps_no_done(void **state)
{
	(void)state;
	enum { N = 256 };
	ctp_pool *pool = pool_new(1, 0);
	ctp_token *parent;
	struct rec *r = calloc(N, sizeof(*r));

	assert_non_null(r);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	for (int i = 0; i < N; i++) {
		ctp_task_opts o = { 0 };

		rec_init(&r[i], i);
		if (i % 4 < 2)
			o.parent = parent;
		if (i % 2 == 0)
			o.done = rec_done;
		assert_int_equal(ctp_pool_submit(pool, rec_fn, &r[i], &o, NULL),
		                 0);
		assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(r[i].ran, 1);
		assert_int_equal(r[i].calls, i % 2 == 0 ? 1 : 0);
		if (i % 2 == 0)
			assert_int_equal(r[i].status, i);
		rec_fini(&r[i]);
	}
	ctp_token_release(parent);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	free(r);
}

static void test_task_submit_rejects_bad_args(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec r;
	ctp_task *t = NULL;
	const int64_t bad[] = { -2, CTP_MSEC(-5), INT64_MIN };

	rec_init(&r, 0);
	assert_int_equal(ctp_pool_submit(NULL, rec_fn, &r,
	                 &(ctp_task_opts){ .done = rec_done }, &t), -EINVAL);
	assert_int_equal(ctp_pool_submit(NULL, rec_fn, &r, NULL, NULL), -EINVAL);
	assert_int_equal(ctp_pool_submit(pool, NULL, &r,
	                 &(ctp_task_opts){ .done = rec_done }, &t), -EINVAL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(submit_rec(pool, &r,
		                 (ctp_task_opts){ .timeout = bad[i] }, &t), -EINVAL);
		assert_int_equal(submit_rec(pool, &r,
		                 (ctp_task_opts){ .queue_wait = bad[i] }, &t),
		                 -EINVAL);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 0);
	assert_int_equal(s.rejected, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	/* not accepted: never ran, done never called, arg is still ours */
	assert_int_equal(r.ran, 0);
	assert_int_equal(r.calls, 0);
	rec_fini(&r);
}

/* Records what a task's token looked like while it ran. */
struct probe {
	struct rec r;
	atomic_int fired;
	atomic_int reason;
};

static int probe_fn(void *arg, ctp_token *tok)
{
	struct probe *p = arg;

	atomic_fetch_add(&p->r.ran, 1);
	atomic_store(&p->fired, ctp_token_cancelled(tok));
	atomic_store(&p->reason, ctp_token_reason(tok));
	return p->r.ret;
}

static void test_task_submit_accepts_forever_and_huge_durations(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	const int64_t ok[] = { 0, CTP_FOREVER, INT64_MAX, INT64_MAX - 1 };

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct probe p;
		ctp_task *t = NULL;
		int st = UNSET;

		memset(&p, 0, sizeof(p));
		rec_init(&p.r, 11);
		assert_int_equal(submit(pool, probe_fn, &p,
		                 (ctp_task_opts){ .timeout = ok[i],
		                                  .queue_wait = ok[i] }, &t), 0);
		assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
		/* a huge deadline is no deadline: it must not wrap into the past */
		assert_int_equal(st, 11);
		assert_int_equal(p.r.ran, 1);
		assert_int_equal(p.fired, 0);
		assert_int_equal(p.reason, 0);
		assert_int_equal(p.r.status, 11);
		ctp_task_release(t);
		rec_fini(&p.r);
	}
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

static void test_task_detached_runs(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec r;

	rec_init(&r, 3);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, NULL), 0);
	tu_sem_wait(&r.done_sem);
	assert_int_equal(r.ran, 1);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 3);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.calls, 1);
	rec_fini(&r);
}

struct order {
	atomic_int next;
	int        seen[8];
};

struct order_arg {
	struct order *o;
	int           idx;
};

static int order_fn(void *arg, ctp_token *tok)
{
	struct order_arg *a = arg;

	(void)tok;
	a->o->seen[atomic_fetch_add(&a->o->next, 1)] = a->idx;
	return 0;
}

static void test_task_start_in_submission_order(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct order o;
	struct order_arg a[8];

	memset(&o, 0, sizeof(o));
	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < 8; i++) {
		a[i] = (struct order_arg){ &o, i };
		assert_int_equal(ctp_pool_submit(pool, order_fn, &a[i], NULL, NULL),
		                 0);
	}
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(o.next, 8);
	for (int i = 0; i < 8; i++)
		assert_int_equal(o.seen[i], i);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&blk);
}

/* ---- cancel ------------------------------------------------------------- */

static void test_task_cancel_queued(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct rec r;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&blk, 0);
	rec_init(&r, 1);
	saturate(pool, &blk, 1);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);

	assert_int_equal(ctp_task_cancel(t), 0);
	/* done(-ECANCELED) has already returned, on this thread */
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, -ECANCELED);
	assert_true(done_here(&r));
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_wait(t, 0, &st), 0);
	assert_int_equal(st, -ECANCELED);

	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(r.ran, 0);
	assert_int_equal(r.calls, 1);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.cancelled, 1);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.ran, 0);
	rec_fini(&r);
	parked_fini(&blk);
}

static void test_task_cancel_running_fires_token(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper s;
	ctp_task *t = NULL;
	int st = UNSET;

	start_sleeper(pool, &s, &t);
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);

	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	/* its ctp_token_sleep(CTP_FOREVER) wakes */
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(s.ret, -ECANCELED);
	assert_int_equal(s.fired, 1);
	assert_int_equal(s.reason, -ECANCELED);
	/* it ran: its status is what fn returned */
	assert_int_equal(st, 7);
	assert_int_equal(s.r.status, 7);
	assert_int_equal(s.r.calls, 1);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);

	ctp_stats ps = stats_of(pool);
	assert_int_equal(ps.completed, 1);
	assert_int_equal(ps.cancelled, 0);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sleeper_fini(&s);
}

static void test_task_cancel_finished_returns_ealready(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec r;
	ctp_task *t = NULL;

	rec_init(&r, 9);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, NULL), 0);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 9);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&r);
}

static void test_task_cancel_twice_returns_ealready(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct rec r;
	ctp_task *t = NULL;

	parked_init(&blk, 0);
	rec_init(&r, 1);
	saturate(pool, &blk, 1);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, -ECANCELED);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.ran, 0);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&r);
	parked_fini(&blk);
}

/* The task sleeps until its token fires, so a cancel can only answer 0 (it
 * never ran) or -EINPROGRESS (it ran and its sleep woke with -ECANCELED). */
static void test_task_cancel_racing_start_is_consistent(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	int never_ran = 0, in_progress = 0;

	for (int i = 0; i < 200; i++) {
		struct sleeper s;
		ctp_task *t = NULL;
		int st = UNSET;

		sleeper_init(&s, CTP_FOREVER);
		assert_int_equal(submit(pool, sleeper_fn, &s, NO_OPTS, &t), 0);
		int rc = ctp_task_cancel(t);
		if (rc == 0) {
			never_ran++;
			assert_int_equal(s.r.calls, 1);
			assert_int_equal(s.r.status, -ECANCELED);
			assert_true(done_here(&s.r));
			assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
			assert_int_equal(st, -ECANCELED);
			assert_int_equal(s.r.ran, 0);
			assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
		} else {
			in_progress++;
			assert_int_equal(rc, -EINPROGRESS);
			assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
			assert_int_equal(s.r.ran, 1);
			assert_int_equal(s.ret, -ECANCELED);
			assert_int_equal(st, 7);
			assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
		}
		assert_int_equal(s.r.calls, 1);
		ctp_task_release(t);
		sleeper_fini(&s);
	}
	assert_int_equal(never_ran + in_progress, 200);
	ctp_stats ps = stats_of(pool);
	assert_int_equal(ps.cancelled, (uint64_t)never_ran);
	assert_int_equal(ps.completed, (uint64_t)in_progress);
	assert_identity(&ps);
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

/* ---- states ------------------------------------------------------------- */

static void test_task_state_queued_running_done(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk, p;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&blk, 0);
	parked_init(&p, 4);
	saturate(pool, &blk, 1);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);
	unpark(&blk, 1);
	tu_sem_wait(&p.started);
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	unpark(&p, 1);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 4);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);

	/* the four constants are distinct and positive */
	const int k[] = { CTP_TASK_QUEUED, CTP_TASK_RUNNING, CTP_TASK_DONE,
	                  CTP_TASK_CANCELLED };
	for (int i = 0; i < 4; i++) {
		assert_true(k[i] > 0);
		for (int j = 0; j < i; j++)
			assert_int_not_equal(k[i], k[j]);
	}
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&p);
	parked_fini(&blk);
}

/* ---- deadlines ---------------------------------------------------------- */

static void test_task_timeout_while_queued_timer_calls_done(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct rec r;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&blk, 0);
	rec_init(&r, 1);
	saturate(pool, &blk, 1);
	int64_t t0 = tu_now_ns();
	assert_int_equal(submit_rec(pool, &r,
	                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, &t), 0);
	/* the only worker stays parked: the timer must report it */
	tu_sem_wait(&r.done_sem);
	int64_t el = tu_now_ns() - t0;
	assert_true(el >= CTP_MSEC(20));
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, -ETIMEDOUT);
	assert_false(done_here(&r));
	assert_int_equal(r.ran, 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	/* done has posted but may not have returned yet: wait, don't poll */
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, -ETIMEDOUT);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.timed_out, 1);
	assert_int_equal(s.queued, 0);
	assert_int_equal(s.running, 1);

	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	s = stats_of(pool);
	assert_int_equal(s.timed_out, 1);
	assert_int_equal(s.completed, 1);
	assert_int_equal(s.cancelled, 0);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.ran, 0);
	assert_int_equal(r.calls, 1);
	rec_fini(&r);
	parked_fini(&blk);
}

static void test_task_timeout_while_running_fires_token(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper s;
	ctp_task *t = NULL;
	int st = UNSET;

	sleeper_init(&s, CTP_FOREVER);
	int64_t t0 = tu_now_ns();
	assert_int_equal(submit(pool, sleeper_fn, &s,
	                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(s.ret, -ETIMEDOUT);
	assert_int_equal(s.reason, -ETIMEDOUT);
	assert_true(s.woke_ns - t0 >= CTP_MSEC(20));
	/* it ran: completed, with fn's status */
	assert_int_equal(st, 7);
	assert_int_equal(s.r.status, 7);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	ctp_stats ps = stats_of(pool);
	assert_int_equal(ps.completed, 1);
	assert_int_equal(ps.timed_out, 0);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sleeper_fini(&s);
}

/* ---- parent tokens ------------------------------------------------------ */

static void test_task_parent_cancel_drops_queued(void **state)
{
	(void)state;
	enum { N = 4 };
	ctp_pool *pool = pool_new(1, 0);
	ctp_token *parent = NULL, *child = NULL;
	struct parked blk;
	struct rec r[N];
	ctp_task *t[N];

	parked_init(&blk, 0);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	assert_int_equal(ctp_token_create(&child, parent), 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < N; i++) {
		rec_init(&r[i], 1);
		/* the last one hangs off a child token of parent */
		ctp_token *p = i == N - 1 ? child : parent;
		assert_int_equal(submit_rec(pool, &r[i],
		                 (ctp_task_opts){ .parent = p }, &t[i]), 0);
		assert_int_equal(ctp_task_state(t[i]), CTP_TASK_QUEUED);
	}

	assert_int_equal(ctp_token_cancel(parent), 0);
	/* every done has returned, on this thread, before cancel returned */
	for (int i = 0; i < N; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].status, -ECANCELED);
		assert_true(done_here(&r[i]));
		assert_int_equal(ctp_task_state(t[i]), CTP_TASK_CANCELLED);
		assert_int_equal(ctp_task_cancel(t[i]), -EALREADY);
	}
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.cancelled, N);
	assert_identity(&s);
	ctp_token_release(parent); /* any order */
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(r[i].ran, 0);
		assert_int_equal(r[i].calls, 1);
		ctp_task_release(t[i]);
		rec_fini(&r[i]);
	}
	ctp_token_release(child);
	parked_fini(&blk);
}

static void test_task_parent_cancel_fires_running(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	ctp_token *parent = NULL;
	struct sleeper s[2];
	ctp_task *t[2];

	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	for (int i = 0; i < 2; i++) {
		sleeper_init(&s[i], CTP_FOREVER);
		assert_int_equal(submit(pool, sleeper_fn, &s[i],
		                 (ctp_task_opts){ .parent = parent }, &t[i]), 0);
	}
	for (int i = 0; i < 2; i++)
		tu_sem_wait(&s[i].started);
	assert_int_equal(ctp_token_cancel(parent), 0);
	assert_int_equal(ctp_token_cancel(parent), -EALREADY);
	for (int i = 0; i < 2; i++) {
		int st = UNSET;

		assert_int_equal(ctp_task_wait(t[i], BOUND, &st), 0);
		assert_int_equal(s[i].ret, -ECANCELED);
		assert_int_equal(s[i].reason, -ECANCELED);
		assert_int_equal(st, 7);
		assert_int_equal(ctp_task_cancel(t[i]), -EALREADY);
		ctp_task_release(t[i]);
	}
	ctp_token_release(parent);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < 2; i++)
		sleeper_fini(&s[i]);
}

static void test_task_submit_with_fired_parent_fails(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	ctp_token *parent = NULL, *child = NULL;
	struct rec r;
	ctp_task *t = NULL;

	rec_init(&r, 0);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	assert_int_equal(ctp_token_cancel(parent), 0);
	assert_int_equal(ctp_token_create(&child, parent), 0);
	assert_int_equal(submit_rec(pool, &r,
	                 (ctp_task_opts){ .parent = parent }, &t), -ECANCELED);
	assert_int_equal(submit_rec(pool, &r,
	                 (ctp_task_opts){ .parent = child }, NULL), -ECANCELED);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.ran, 0);
	assert_int_equal(r.calls, 0);
	ctp_token_release(child);
	ctp_token_release(parent);
	rec_fini(&r);
}

/* A task with a deadline submits children under its own token, then sleeps.
 * The deadline fires the children while queued: they take -ETIMEDOUT from
 * their ancestor and count as timed_out. */
struct outer {
	struct rec r;
	ctp_pool  *pool;
	struct rec kids[2];
	struct rec late;
	atomic_int submit_ret[2];
	atomic_int sleep_ret;
	atomic_int kids_done;  /* kids' done seen before fn returned */
	atomic_int late_ret;   /* submit under the fired token */
};

static int outer_fn(void *arg, ctp_token *tok)
{
	struct outer *o = arg;
	int kids_done = 0;

	atomic_fetch_add(&o->r.ran, 1);
	for (int i = 0; i < 2; i++)
		atomic_store(&o->submit_ret[i],
		             submit_rec(o->pool, &o->kids[i],
		                        (ctp_task_opts){ .parent = tok }, NULL));
	atomic_store(&o->sleep_ret, ctp_token_sleep(tok, CTP_FOREVER));
	/* the timer calls the kids' done as part of firing this token */
	for (int i = 0; i < 2; i++)
		kids_done += sem_wait_for(&o->kids[i].done_sem, BOUND);
	atomic_store(&o->kids_done, kids_done);
	atomic_store(&o->late_ret, submit_rec(o->pool, &o->late,
	             (ctp_task_opts){ .parent = tok }, NULL));
	return o->r.ret;
}

static void test_task_parent_reason_passes_to_children(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct outer o;
	ctp_task *t = NULL;
	int st = UNSET;

	memset(&o, 0, sizeof(o));
	rec_init(&o.r, 8);
	rec_init(&o.kids[0], 1);
	rec_init(&o.kids[1], 1);
	rec_init(&o.late, 1);
	o.pool = pool;
	assert_int_equal(submit(pool, outer_fn, &o,
	                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 8);
	assert_int_equal(o.submit_ret[0], 0);
	assert_int_equal(o.submit_ret[1], 0);
	assert_int_equal(o.sleep_ret, -ETIMEDOUT);
	assert_int_equal(o.kids_done, 2);
	/* a submit under a fired parent gets the parent's reason */
	assert_int_equal(o.late_ret, -ETIMEDOUT);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(o.kids[i].ran, 0);
		assert_int_equal(o.kids[i].calls, 1);
		assert_int_equal(o.kids[i].status, -ETIMEDOUT);
	}
	assert_int_equal(o.late.ran, 0);
	assert_int_equal(o.late.calls, 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 3);
	assert_int_equal(s.completed, 1);
	assert_int_equal(s.timed_out, 2);
	assert_int_equal(s.cancelled, 0);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&o.r);
	rec_fini(&o.kids[0]);
	rec_fini(&o.kids[1]);
	rec_fini(&o.late);
}

/* A deadline fired while queued, then a cancel, then a shutdown: each task
 * keeps the first reason. */
static void test_task_first_reason_wins(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper blk;
	struct rec a, b, c;
	ctp_task *ta = NULL, *tb = NULL, *tc = NULL;
	int st = UNSET;

	sleeper_init(&blk, CTP_FOREVER);
	rec_init(&a, 1);
	rec_init(&b, 1);
	rec_init(&c, 1);
	assert_int_equal(ctp_pool_submit(pool, sleeper_fn, &blk, NULL, NULL), 0);
	tu_sem_wait(&blk.started);
	assert_int_equal(submit_rec(pool, &a,
	                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, &ta), 0);
	assert_int_equal(submit_rec(pool, &b, NO_OPTS, &tb), 0);
	assert_int_equal(submit_rec(pool, &c, NO_OPTS, &tc), 0);
	tu_sem_wait(&a.done_sem);
	assert_int_equal(ctp_task_cancel(tb), 0);
	assert_int_equal(ctp_task_cancel(ta), -EALREADY);

	assert_int_equal(ctp_pool_shutdown(pool, 0, BOUND), 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.status, -ETIMEDOUT);
	assert_int_equal(b.calls, 1);
	assert_int_equal(b.status, -ECANCELED);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.status, -ESHUTDOWN);
	assert_int_equal(ctp_task_wait(ta, BOUND, &st), 0);
	assert_int_equal(st, -ETIMEDOUT);
	assert_int_equal(ctp_task_wait(tb, 0, &st), 0);
	assert_int_equal(st, -ECANCELED);
	assert_int_equal(ctp_task_wait(tc, 0, &st), 0);
	assert_int_equal(st, -ESHUTDOWN);
	assert_int_equal(blk.reason, -ESHUTDOWN);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.timed_out, 1);
	assert_int_equal(s.cancelled, 1);
	assert_int_equal(s.dropped, 1);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(a.calls + b.calls + c.calls, 3);
	assert_int_equal(a.ran + b.ran + c.ran, 0);
	ctp_task_release(ta);
	ctp_task_release(tb);
	ctp_task_release(tc);
	rec_fini(&a);
	rec_fini(&b);
	rec_fini(&c);
	sleeper_fini(&blk);
}

/* ---- wait --------------------------------------------------------------- */

struct waiter {
	ctp_task  *task;
	int64_t    timeout;
	sem_t      calling;
	_Atomic pid_t tid;     /* set before calling is posted */
	atomic_int ret;
	atomic_int status;
};

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;
	int st = UNSET;

	atomic_store(&w->tid, (pid_t)syscall(SYS_gettid));
	tu_sem_post(&w->calling);
	atomic_store(&w->ret, ctp_task_wait(w->task, w->timeout, &st));
	atomic_store(&w->status, st);
	return NULL;
}

static void test_task_wait_times_out_on_running_task(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&p, 6);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &t), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(ctp_task_wait(t, 0, &st), -ETIMEDOUT);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_task_wait(t, CTP_MSEC(20), &st), -ETIMEDOUT);
	assert_true(tu_now_ns() - t0 >= CTP_MSEC(20));
	assert_int_equal(ctp_task_wait(t, -2, &st), -EINVAL);
	assert_int_equal(ctp_task_wait(t, INT64_MIN, &st), -EINVAL);

	/* a huge timeout is "no limit", not an overflowed past deadline */
	struct waiter w = { .task = t, .timeout = INT64_MAX };
	tu_sem_init(&w.calling, 0);
	pthread_t th = tu_spawn(waiter_main, &w);
	tu_sem_wait(&w.calling);
	unpark(&p, 1);
	tu_join(th);
	assert_int_equal(w.ret, 0);
	assert_int_equal(w.status, 6);
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(ctp_task_wait(t, 0, &st), 0);
	assert_int_equal(st, 6);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&w.calling);
	parked_fini(&p);
}

/* True once thread tid is asleep in a futex wait on addr, within bound
 * (/proc/self/task/TID/syscall: the system call's number and its first
 * argument). This polls the kernel; it orders nothing. */
static bool futex_asleep_on(pid_t tid, const void *addr, int64_t bound)
{
	int64_t end = tu_now_ns() + bound;

	while (tu_now_ns() < end) {
		unsigned long a[3];
		long nr = -1;
		int in = tu_thread_syscall(tid, &nr, a);

		if (in < 0)
			return false;
		if (in > 0 && nr == SYS_futex &&
		    a[0] == (unsigned long)(uintptr_t)addr)
			return true;
		sched_yield();
	}
	return false;
}

/* ctp_task_wait sleeps on the task token's state word, counted in its
 * sleepers like ctp_token_sleep (task.c, "Finished"): waiters and the
 * task's own token sleep share both. A waiter that times out leaves the
 * count as it found it, the fire wakes the waiters too (they look and
 * sleep again: not finished), and the finish wakes them all. The waiters
 * are seen asleep on the word before the cancel (the word is the task
 * token's first: at the handle's address), so the fire's wake and the
 * finish's reach threads that sleep there. */
static void test_task_waiters_share_the_word_with_token_sleep(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper s;
	struct waiter w[3];
	pthread_t th[3];
	ctp_task *t = NULL;
	int st = UNSET;

	start_sleeper(pool, &s, &t);
	/* one waiter runs out of time while fn sleeps on its token */
	assert_int_equal(ctp_task_wait(t, CTP_MSEC(5), &st), -ETIMEDOUT);
	assert_int_equal(st, UNSET);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct waiter){ .task = t, .timeout = CTP_FOREVER };
		atomic_init(&w[i].ret, UNSET);
		atomic_init(&w[i].status, UNSET);
		tu_sem_init(&w[i].calling, 0);
		atomic_init(&w[i].tid, 0);
		th[i] = tu_spawn(waiter_main, &w[i]);
		tu_sem_wait(&w[i].calling);
		assert_true(futex_asleep_on(atomic_load(&w[i].tid), t,
		                            BOUND));
	}
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	for (int i = 0; i < 3; i++) {
		tu_join(th[i]);
		assert_int_equal(w[i].ret, 0);
		assert_int_equal(w[i].status, 7);
		sem_destroy(&w[i].calling);
	}
	assert_int_equal(s.ret, -ECANCELED);
	assert_int_equal(ctp_task_wait(t, 0, &st), 0);
	assert_int_equal(st, 7);
	assert_int_equal(s.r.calls, 1);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sleeper_fini(&s);
}

/* A task (and its done) waiting on its own handle. */
struct selfwait {
	struct rec r;
	sem_t      go;
	ctp_task  *self;       /* filled after submit, before go */
	atomic_int in_task;    /* ctp_task_wait from fn */
	atomic_int in_task0;   /* same, timeout 0 */
	atomic_int in_done;    /* ctp_task_wait from done */
};

static int selfwait_fn(void *arg, ctp_token *tok)
{
	struct selfwait *s = arg;

	(void)tok;
	atomic_fetch_add(&s->r.ran, 1);
	tu_sem_wait(&s->go);
	atomic_store(&s->in_task, ctp_task_wait(s->self, CTP_SEC(5), NULL));
	atomic_store(&s->in_task0, ctp_task_wait(s->self, 0, NULL));
	return s->r.ret;
}

static void selfwait_done(void *arg, int status)
{
	struct selfwait *s = arg;

	atomic_store(&s->in_done, ctp_task_wait(s->self, CTP_SEC(5), NULL));
	rec_done(arg, status);
}

static void selfwait_init(struct selfwait *s)
{
	memset(s, 0, sizeof(*s));
	rec_init(&s->r, 2);
	tu_sem_init(&s->go, 0);
	atomic_init(&s->in_task, UNSET);
	atomic_init(&s->in_task0, UNSET);
	atomic_init(&s->in_done, UNSET);
}

static void selfwait_fini(struct selfwait *s)
{
	sem_destroy(&s->go);
	rec_fini(&s->r);
}

static void test_task_wait_on_itself_edeadlk(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct selfwait s, q;
	struct parked blk;
	ctp_task *t = NULL, *tq = NULL;
	int st = UNSET;
	ctp_task_opts o = { .done = selfwait_done };

	selfwait_init(&s);
	selfwait_init(&q);
	parked_init(&blk, 0);

	/* from fn, and from its done on the worker */
	assert_int_equal(ctp_pool_submit(pool, selfwait_fn, &s, &o, &t), 0);
	s.self = t;
	tu_sem_post(&s.go);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 2);
	assert_int_equal(s.in_task, -EDEADLK);
	assert_int_equal(s.in_task0, -EDEADLK);
	assert_int_equal(s.in_done, -EDEADLK);

	/* from its done, run by ctp_task_cancel on this thread */
	saturate(pool, &blk, 1);
	assert_int_equal(ctp_pool_submit(pool, selfwait_fn, &q, &o, &tq), 0);
	q.self = tq;
	assert_int_equal(ctp_task_cancel(tq), 0);
	assert_int_equal(q.r.calls, 1);
	assert_int_equal(q.in_done, -EDEADLK);
	unpark(&blk, 1);

	ctp_task_release(t);
	ctp_task_release(tq);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(q.r.ran, 0);
	selfwait_fini(&s);
	selfwait_fini(&q);
	parked_fini(&blk);
}

struct waits_other {
	struct rec r;
	ctp_task  *other;
	atomic_int ret;
	atomic_int status;
};

static int waits_other_fn(void *arg, ctp_token *tok)
{
	struct waits_other *w = arg;
	int st = UNSET;

	(void)tok;
	atomic_fetch_add(&w->r.ran, 1);
	atomic_store(&w->ret, ctp_task_wait(w->other, BOUND, &st));
	atomic_store(&w->status, st);
	return w->r.ret;
}

static void test_task_wait_on_other_task_from_task(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct parked b;
	struct waits_other w;
	ctp_task *tb = NULL, *tw = NULL;

	parked_init(&b, 13);
	memset(&w, 0, sizeof(w));
	rec_init(&w.r, 0);
	assert_int_equal(submit(pool, parked_fn, &b, NO_OPTS, &tb), 0);
	tu_sem_wait(&b.started);
	w.other = tb;
	assert_int_equal(submit(pool, waits_other_fn, &w, NO_OPTS, &tw), 0);
	unpark(&b, 1);
	assert_int_equal(ctp_task_wait(tw, BOUND, NULL), 0);
	assert_int_equal(w.ret, 0);
	assert_int_equal(w.status, 13);
	ctp_task_release(tb);
	ctp_task_release(tw);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&w.r);
	parked_fini(&b);
}

/* ---- handles ------------------------------------------------------------ */

static void test_task_release_while_queued(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct rec r;
	ctp_task *t = NULL;

	parked_init(&blk, 0);
	rec_init(&r, 5);
	saturate(pool, &blk, 1);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	ctp_task_release(t);
	unpark(&blk, 1);
	tu_sem_wait(&r.done_sem);
	assert_int_equal(r.ran, 1);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 5);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&r);
	parked_fini(&blk);
}

/* Task objects live in slabs, one malloc block each, so AddressSanitizer
 * cannot see one freed on its own: the ASan build poisons a free object's
 * token word (task.c, object_poison), so that a handle used after its
 * release is reported. Ordered: the worker drops t's queue and pool
 * references when it takes the second task, which finishes before
 * wait_idle returns; the release is then the last reference. Skipped in
 * the other builds. */
static void test_task_released_object_poisoned_under_asan(void **state)
{
	(void)state;
#if defined(__SANITIZE_ADDRESS__)
	ctp_pool *pool = pool_new(1, 0);
	struct rec a, b;
	ctp_task *t = NULL;
	int st = UNSET;

	rec_init(&a, 4);
	rec_init(&b, 5);
	assert_int_equal(submit_rec(pool, &a, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 4);
	assert_false(__asan_address_is_poisoned(t));
	assert_int_equal(submit_rec(pool, &b, NO_OPTS, NULL), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_false(__asan_address_is_poisoned(t)); /* the handle's */
	ctp_task_release(t);
	assert_true(__asan_address_is_poisoned(t));
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&a);
	rec_fini(&b);
#else
	skip();
#endif
}

static void test_task_release_while_running(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	ctp_task *t = NULL;

	parked_init(&p, 5);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &t), 0);
	tu_sem_wait(&p.started);
	ctp_task_release(t);
	unpark(&p, 1);
	tu_sem_wait(&p.r.done_sem);
	assert_int_equal(p.r.ran, 1);
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(p.r.status, 5);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&p);
}

static void test_task_handle_outlives_pool(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec f, q;
	struct sleeper blk;
	ctp_task *tf = NULL, *tq = NULL, *tb = NULL;
	int st = UNSET;

	rec_init(&f, 21);
	rec_init(&q, 1);
	sleeper_init(&blk, CTP_FOREVER);
	assert_int_equal(submit_rec(pool, &f, NO_OPTS, &tf), 0);
	assert_int_equal(ctp_task_wait(tf, BOUND, NULL), 0);
	assert_int_equal(submit(pool, sleeper_fn, &blk, NO_OPTS, &tb), 0);
	tu_sem_wait(&blk.started);
	assert_int_equal(submit_rec(pool, &q, NO_OPTS, &tq), 0);

	/* destroy: drops q, fires blk's token */
	assert_int_equal(ctp_pool_destroy(pool), 0);

	assert_int_equal(ctp_task_state(tf), CTP_TASK_DONE);
	assert_int_equal(ctp_task_state(tb), CTP_TASK_DONE);
	assert_int_equal(ctp_task_state(tq), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_wait(tf, 0, &st), 0);
	assert_int_equal(st, 21);
	assert_int_equal(ctp_task_wait(tb, BOUND, &st), 0);
	assert_int_equal(st, 7);
	assert_int_equal(blk.ret, -ESHUTDOWN);
	assert_int_equal(ctp_task_wait(tq, 0, &st), 0);
	assert_int_equal(st, -ESHUTDOWN);
	assert_int_equal(ctp_task_cancel(tq), -EALREADY);
	assert_int_equal(ctp_task_cancel(tb), -EALREADY);
	assert_int_equal(q.calls, 1);
	assert_int_equal(q.ran, 0);
	ctp_task_release(tf);
	ctp_task_release(tq);
	ctp_task_release(tb);
	rec_fini(&f);
	rec_fini(&q);
	sleeper_fini(&blk);
}

static void test_task_null_args_einval(void **state)
{
	(void)state;
	int st = UNSET;

	assert_int_equal(ctp_task_cancel(NULL), -EINVAL);
	assert_int_equal(ctp_task_wait(NULL, 0, &st), -EINVAL);
	assert_int_equal(ctp_task_wait(NULL, CTP_FOREVER, NULL), -EINVAL);
	assert_int_equal(ctp_task_state(NULL), -EINVAL);
	ctp_task_release(NULL); /* no-op */
}

/* ---- a full queue ------------------------------------------------------- */

static void test_task_submit_queue_full_eagain(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct parked blk;
	struct rec q[2], x;

	parked_init(&blk, 0);
	rec_init(&x, 0);
	saturate(pool, &blk, 1);
	submit_recs(pool, q, 2, NULL);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.queued, 2);
	assert_int_equal(s.running, 1);
	assert_int_equal(submit_rec(pool, &x, NO_OPTS, NULL), -EAGAIN);
	assert_int_equal(submit_rec(pool, &x, NO_OPTS, NULL), -EAGAIN);
	s = stats_of(pool);
	assert_int_equal(s.rejected, 2);
	assert_int_equal(s.submitted, 3);

	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	s = stats_of(pool);
	assert_int_equal(s.rejected, 2);
	assert_int_equal(s.completed, 3);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(x.ran, 0);
	assert_int_equal(x.calls, 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(q[i].ran, 1);
		rec_fini(&q[i]);
	}
	rec_fini(&x);
	parked_fini(&blk);
}

static void test_task_submit_queue_wait_runs_out_eagain(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct parked blk;
	struct rec x;

	parked_init(&blk, 0);
	rec_init(&x, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < 2; i++)
		assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL), 0);
	int64_t t0 = tu_now_ns();
	assert_int_equal(submit_rec(pool, &x,
	                 (ctp_task_opts){ .queue_wait = CTP_MSEC(20) }, NULL),
	                 -EAGAIN);
	int64_t el = tu_now_ns() - t0;
	assert_true(el >= CTP_MSEC(20));
	assert_true(el < CTP_SEC(5));
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.rejected, 1);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(x.ran, 0);
	assert_int_equal(x.calls, 0);
	rec_fini(&x);
	parked_fini(&blk);
}

static void test_task_cancel_frees_queue_slot(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct parked blk;
	struct rec q[2], n;
	ctp_task *t[2];

	parked_init(&blk, 0);
	rec_init(&n, 0);
	saturate(pool, &blk, 1);
	submit_recs(pool, q, 2, t);
	assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL),
	                 -EAGAIN);
	assert_int_equal(ctp_task_cancel(t[0]), 0);
	/* the worker is still parked: the slot was freed by the cancel */
	assert_int_equal(submit_rec(pool, &n, NO_OPTS, NULL), 0);
	/* and the queue holds exactly two again */
	assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL),
	                 -EAGAIN);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(q[0].ran, 0);
	assert_int_equal(q[1].ran, 1);
	assert_int_equal(n.ran, 1);
	assert_int_equal(n.calls, 1);
	for (int i = 0; i < 2; i++) {
		ctp_task_release(t[i]);
		rec_fini(&q[i]);
	}
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&n);
	parked_fini(&blk);
}

/* Cancelled tasks stay in the ring as tombstones until a worker takes them
 * out. With the only worker parked, 40 cancels fill the ring (capacity 2:
 * 3 pointers) many times over: each submit that finds it full compacts it.
 * Nothing is refused, the live tasks keep their order, and every cancelled
 * task is counted once. */
struct ordered {
	atomic_int *seq;  /* shared start counter */
	int         pos;  /* this task's start position */
};

static int ordered_fn(void *arg, ctp_token *tok)
{
	struct ordered *o = arg;

	(void)tok;
	o->pos = atomic_fetch_add(o->seq, 1);
	return 0;
}

static void test_task_tombstones_filling_the_ring_are_compacted(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	ctp_task_opts now = { .done = rec_done }; /* queue_wait 0 */
	struct parked blk;
	struct rec c[40];
	atomic_int seq = 0;
	struct ordered first = { &seq, -1 }, second = { &seq, -1 };
	ctp_task *t, *a, *b;
	ctp_stats st;

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	assert_int_equal(ctp_pool_submit(pool, ordered_fn, &first, NULL, &a),
	                 0);
	for (int i = 0; i < 40; i++) {
		rec_init(&c[i], 0);
		assert_int_equal(ctp_pool_submit(pool, rec_fn, &c[i], &now, &t),
		                 0);
		assert_int_equal(ctp_task_cancel(t), 0);
		ctp_task_release(t);
	}
	assert_int_equal(ctp_pool_submit(pool, ordered_fn, &second, NULL, &b),
	                 0);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(first.pos, 0);
	assert_int_equal(second.pos, 1);
	for (int i = 0; i < 40; i++) {
		assert_int_equal(c[i].ran, 0);
		assert_int_equal(c[i].calls, 1);
		assert_int_equal(c[i].status, -ECANCELED);
		rec_fini(&c[i]);
	}
	st = stats_of(pool);
	assert_int_equal(st.cancelled, 40);
	assert_int_equal(st.rejected, 0);
	assert_identity(&st);
	ctp_task_release(a);
	ctp_task_release(b);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&blk);
}

static void test_task_deadline_frees_queue_slot(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct parked blk;
	struct rec q[2];
	ctp_task *t[2];

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < 2; i++) {
		rec_init(&q[i], 0);
		assert_int_equal(submit_rec(pool, &q[i],
		                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, &t[i]),
		                 0);
	}
	for (int i = 0; i < 2; i++) {
		assert_int_equal(ctp_task_wait(t[i], BOUND, NULL), 0);
		ctp_task_release(t[i]);
	}
	/* both slots are free while the worker is still parked */
	for (int i = 0; i < 2; i++)
		assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL),
		                 0);
	assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL),
	                 -EAGAIN);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(q[i].status, -ETIMEDOUT);
		assert_int_equal(q[i].ran, 0);
		rec_fini(&q[i]);
	}
	parked_fini(&blk);
}

/* A submit from a helper thread into a full queue. */
struct blocked_submit {
	ctp_pool  *pool;
	int64_t    queue_wait;
	struct rec r;
	sem_t      calling;
	sem_t      returned;
	atomic_int ret;
};

static void *blocked_submit_main(void *arg)
{
	struct blocked_submit *b = arg;

	tu_sem_post(&b->calling);
	atomic_store(&b->ret, submit_rec(b->pool, &b->r,
	             (ctp_task_opts){ .queue_wait = b->queue_wait }, NULL));
	tu_sem_post(&b->returned);
	return NULL;
}

static void blocked_submit_init(struct blocked_submit *b, ctp_pool *pool,
                                int64_t queue_wait)
{
	memset(b, 0, sizeof(*b));
	b->pool = pool;
	b->queue_wait = queue_wait;
	rec_init(&b->r, 17);
	tu_sem_init(&b->calling, 0);
	tu_sem_init(&b->returned, 0);
	atomic_init(&b->ret, UNSET);
}

static void blocked_submit_fini(struct blocked_submit *b)
{
	sem_destroy(&b->calling);
	sem_destroy(&b->returned);
	rec_fini(&b->r);
}

/* A done callback that tries to use the slot its task just left. */
struct slot_probe {
	ctp_pool *pool;
	int       submit_rc;   /* ctp_pool_submit from inside done */
	uint64_t  queued;      /* stats.queued seen inside done */
	uint64_t  cancelled;   /* stats.cancelled seen inside done */
	sem_t     done_sem;
};

static void slot_probe_done(void *arg, int status)
{
	struct slot_probe *p = arg;
	ctp_stats s;

	(void)status;
	ctp_pool_stats(p->pool, &s);
	p->queued = s.queued;
	p->cancelled = s.cancelled;
	p->submit_rc = ctp_pool_submit(p->pool, noop_fn, NULL, NULL, NULL);
	tu_sem_post(&p->done_sem);
}

/* A cancelled queued task has left the queue and is counted before its
 * done runs: done can reuse the slot (queue_wait 0) at once, by handle and
 * through a parent. */
static void test_task_cancelled_slot_free_before_done(void **state)
{
	(void)state;

	for (int by_parent = 0; by_parent < 2; by_parent++) {
		ctp_pool *pool = pool_new(1, 1);
		struct parked blk;
		struct slot_probe p = { .pool = pool, .submit_rc = 1 };
		ctp_token *parent = NULL;
		ctp_task *t = NULL;
		ctp_task_opts o = { .done = slot_probe_done };

		tu_sem_init(&p.done_sem, 0);
		parked_init(&blk, 0);
		saturate(pool, &blk, 1);
		if (by_parent) {
			assert_int_equal(ctp_token_create(&parent, NULL), 0);
			o.parent = parent;
		}
		assert_int_equal(ctp_pool_submit(pool, noop_fn, &p, &o,
		                 by_parent ? NULL : &t), 0);
		if (by_parent)
			assert_int_equal(ctp_token_cancel(parent), 0);
		else
			assert_int_equal(ctp_task_cancel(t), 0);
		tu_sem_wait(&p.done_sem);
		assert_int_equal(p.queued, 0);
		assert_int_equal(p.cancelled, 1);
		assert_int_equal(p.submit_rc, 0);
		unpark(&blk, 1);
		assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
		if (t != NULL)
			ctp_task_release(t);
		if (parent != NULL)
			ctp_token_release(parent);
		assert_int_equal(ctp_pool_destroy(pool), 0);
		parked_fini(&blk);
		sem_destroy(&p.done_sem);
	}
}

static void test_task_submit_queue_wait_forever_proceeds(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct parked blk;
	struct blocked_submit b;

	parked_init(&blk, 0);
	blocked_submit_init(&b, pool, CTP_FOREVER);
	saturate(pool, &blk, 1);
	for (int i = 0; i < 2; i++)
		assert_int_equal(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL), 0);
	pthread_t th = tu_spawn(blocked_submit_main, &b);
	tu_sem_wait(&b.calling);
	unpark(&blk, 1); /* the worker takes the queued tasks: room appears */
	tu_join(th);
	assert_int_equal(b.ret, 0);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(b.r.ran, 1);
	assert_int_equal(b.r.calls, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	blocked_submit_fini(&b);
	parked_fini(&blk);
}

static void test_task_submit_queue_wait_wakes_on_cancel(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct parked blk;
	struct blocked_submit b;
	struct rec q[2];
	ctp_task *t[2];

	parked_init(&blk, 0);
	blocked_submit_init(&b, pool, INT64_MAX); /* huge: must not overflow */
	saturate(pool, &blk, 1);
	submit_recs(pool, q, 2, t);
	pthread_t th = tu_spawn(blocked_submit_main, &b);
	tu_sem_wait(&b.calling);
	assert_int_equal(ctp_task_cancel(t[1]), 0);
	/* the worker stays parked: only the freed slot can let it through */
	bool returned = sem_wait_for(&b.returned, BOUND);
	unpark(&blk, 1);
	tu_join(th);
	assert_true(returned);
	assert_int_equal(b.ret, 0);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(b.r.ran, 1);
	assert_int_equal(q[0].ran, 1);
	assert_int_equal(q[1].ran, 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < 2; i++) {
		ctp_task_release(t[i]);
		rec_fini(&q[i]);
	}
	blocked_submit_fini(&b);
	parked_fini(&blk);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_task_submit_wait_returns_status),
		cmocka_unit_test(test_task_done_called_exactly_once),
		cmocka_unit_test(test_task_reused_object_keeps_no_done),
		cmocka_unit_test(test_task_submit_rejects_bad_args),
		cmocka_unit_test(test_task_submit_accepts_forever_and_huge_durations),
		cmocka_unit_test(test_task_detached_runs),
		cmocka_unit_test(test_task_start_in_submission_order),
		cmocka_unit_test(test_task_cancel_queued),
		cmocka_unit_test(test_task_cancel_running_fires_token),
		cmocka_unit_test(test_task_cancel_finished_returns_ealready),
		cmocka_unit_test(test_task_cancel_twice_returns_ealready),
		cmocka_unit_test(test_task_cancel_racing_start_is_consistent),
		cmocka_unit_test(test_task_state_queued_running_done),
		cmocka_unit_test(test_task_timeout_while_queued_timer_calls_done),
		cmocka_unit_test(test_task_timeout_while_running_fires_token),
		cmocka_unit_test(test_task_parent_cancel_drops_queued),
		cmocka_unit_test(test_task_parent_cancel_fires_running),
		cmocka_unit_test(test_task_submit_with_fired_parent_fails),
		cmocka_unit_test(test_task_parent_reason_passes_to_children),
		cmocka_unit_test(test_task_first_reason_wins),
		cmocka_unit_test(test_task_wait_times_out_on_running_task),
		cmocka_unit_test(test_task_waiters_share_the_word_with_token_sleep),
		cmocka_unit_test(test_task_wait_on_itself_edeadlk),
		cmocka_unit_test(test_task_wait_on_other_task_from_task),
		cmocka_unit_test(test_task_release_while_queued),
		cmocka_unit_test(test_task_release_while_running),
		cmocka_unit_test(test_task_released_object_poisoned_under_asan),
		cmocka_unit_test(test_task_handle_outlives_pool),
		cmocka_unit_test(test_task_null_args_einval),
		cmocka_unit_test(test_task_submit_queue_full_eagain),
		cmocka_unit_test(test_task_submit_queue_wait_runs_out_eagain),
		cmocka_unit_test(test_task_cancel_frees_queue_slot),
		cmocka_unit_test(test_task_deadline_frees_queue_slot),
		cmocka_unit_test(test_task_cancelled_slot_free_before_done),
		cmocka_unit_test(test_task_tombstones_filling_the_ring_are_compacted),
		cmocka_unit_test(test_task_submit_queue_wait_forever_proceeds),
		cmocka_unit_test(test_task_submit_queue_wait_wakes_on_cancel),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
