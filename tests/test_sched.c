/*
 * test_sched.c: scheduling (ctp_task_opts.delay, .period, .priority, .flags
 * and ctp_task_reschedule).
 *
 * Covers bad input (negative delay or period, unknown priority or flags,
 * reschedule of NULL or with a negative delay; INT64_MAX delay and period
 * accepted); delayed tasks (QUEUED, counted in submitted and queued, holding
 * a place of queue_capacity, never starting before their delay, cancel at
 * once, a timeout not longer than the delay, FIFO by due time within a
 * priority, a parent token cancelling a delayed task); a many-task run of
 * random delays, cancels and reschedules; priorities (exact start order,
 * delayed tasks that became due while the worker was busy); periodic tasks
 * (fixed rate from submission, cancel between runs and during a run, failing
 * runs, no overlap, skipped runs, a run ending its own series, ctp_task_wait,
 * timeouts, cancel before the first run, a parent token, children of a run's
 * token firing with the series); reschedule (queued, moved to the end of its
 * priority, running, finished, cancelled, periodic between and during runs);
 * shutdown (delays due within the drain run, later ones are dropped, periodic
 * series end at its start, a run in progress when the token fires gives done
 * its status); and stats.queued for a periodic task between runs and during
 * one.
 *
 * Determinism: workers are parked on semaphores so tasks stay queued exactly
 * as long as a test needs; a periodic series is held "between runs" either by
 * a period of an hour or by a run that submits a HIGH-priority parked task to
 * its own one-thread pool (the worker takes that task when the run ends, so
 * the series waits, QUEUED, until the test unparks it). Timing is asserted
 * only as contract lower bounds (a task never starts before its due time,
 * with CLOCK_MONOTONIC read before the submit or reschedule call) or as
 * generous upper bounds (BOUND). Two cases (delayed tasks becoming due
 * while the worker is busy, then started by priority and due order) must let
 * the timer make them due and have no event to wait for: they sleep 200 ms
 * past the last delay. The many-task case is scaled down under the
 * sanitizers and by CTP_STRESS_SCALE. A run's end becoming "between runs"
 * is seen by a bounded poll of ctp_task_state (and of the stats), and two
 * short sleeps only check that an ended series does not run again.
 * Only the test's own thread calls assert_*; tasks and done callbacks record
 * into the structs below.
 */
#include <sys/syscall.h>

#include "fixtures.h"

static int failures;

/* The many-task case runs in the fast suite under the sanitizers too: it
 * starts smaller there (and CTP_STRESS_SCALE divides it further). */
#if defined(__SANITIZE_THREAD__)
#define MANY_DIV 10
#elif defined(__SANITIZE_ADDRESS__)
#define MANY_DIV 4
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MANY_DIV 10
#elif __has_feature(address_sanitizer)
#define MANY_DIV 4
#endif
#endif
#ifndef MANY_DIV
#define MANY_DIV 1
#endif

static void sleep_ns(int64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Polls (bounded) until the task's state is `want`; false if it never was. */
static bool wait_state(ctp_task *t, int want, int64_t bound)
{
	int64_t limit = tu_now_ns() + bound;

	while (ctp_task_state(t) != want) {
		if (tu_now_ns() > limit)
			return false;
		sleep_ns(CTP_USEC(100));
	}
	return true;
}

/* Polls (bounded) until stats.queued and stats.running are as given. */
static bool wait_stats(ctp_pool *pool, uint64_t queued, uint64_t running,
                       int64_t bound)
{
	int64_t limit = tu_now_ns() + bound;

	for (;;) {
		ctp_stats s = stats_of(pool);

		if (s.queued == queued && s.running == running)
			return true;
		if (tu_now_ns() > limit)
			return false;
		sleep_ns(CTP_USEC(100));
	}
}

/* ---- a task that records when it started and in which order ------------- */

struct stamp {
	struct rec       r;
	int              id;
	atomic_int      *next;    /* shared order counter (may be NULL) */
	int             *order;   /* order[next++] = id */
	_Atomic int64_t  start_ns;
};

static void stamp_init(struct stamp *s, int id, atomic_int *next, int *order)
{
	memset(s, 0, sizeof(*s));
	rec_init(&s->r, id);
	s->id = id;
	s->next = next;
	s->order = order;
}

static int stamp_fn(void *arg, ctp_token *tok)
{
	struct stamp *s = arg;

	(void)tok;
	atomic_store(&s->start_ns, tu_now_ns());
	if (s->next != NULL)
		s->order[atomic_fetch_add(s->next, 1)] = s->id;
	atomic_fetch_add(&s->r.ran, 1);
	return s->r.ret;
}

static int submit_stamp(ctp_pool *pool, struct stamp *s, ctp_task_opts o,
                        ctp_task **t)
{
	return submit(pool, stamp_fn, s, o, t);
}

/* ---- a periodic task ------------------------------------------------------ */

#define MAXRUNS 256

struct per {
	struct rec      r;
	ctp_pool       *pool;       /* for the blocker */
	atomic_int      runs;
	atomic_int      in_run;
	atomic_int      overlap;
	int             fail_ret;   /* what runs return (but stop_at's) */
	int             stop_at;    /* run that cancels its own token */
	int             stop_ret;   /* and returns this */
	atomic_int      own_cancel; /* ctp_token_cancel's result there */
	int64_t         stop_after; /* or: first run at least this long after
	                               t0 cancels its own token (0: not used) */
	int             stop_min;   /* ... and is run stop_min or later */
	int64_t         t0;
	int             gate_at;    /* run that posts started, waits release */
	int             gate_ret;   /* and returns this */
	sem_t           started, release, run_end;
	int             block_at;   /* run that submits a HIGH blocker */
	struct parked  *blocker;
	atomic_int      block_ret;
	int             slow_runs;  /* runs 1..slow_runs sleep slow_ns */
	int64_t         slow_ns;
	int             spawn_at;   /* run that makes a child token and task */
	ctp_pool       *child_pool;
	struct rec     *child;
	ctp_task       *child_task;
	ctp_token      *child_tok;
	atomic_int      spawn_tok_ret, spawn_task_ret;
	_Atomic int64_t start_ns[MAXRUNS + 1];
	_Atomic int64_t end_ns[MAXRUNS + 1];
	_Atomic int64_t done_ns;
};

static void per_init(struct per *p, ctp_pool *pool)
{
	memset(p, 0, sizeof(*p));
	rec_init(&p->r, 0);
	p->pool = pool;
	tu_sem_init(&p->started, 0);
	tu_sem_init(&p->release, 0);
	tu_sem_init(&p->run_end, 0);
	atomic_init(&p->own_cancel, UNSET);
	atomic_init(&p->block_ret, UNSET);
	atomic_init(&p->spawn_tok_ret, UNSET);
	atomic_init(&p->spawn_task_ret, UNSET);
}

static void per_fini(struct per *p)
{
	sem_destroy(&p->started);
	sem_destroy(&p->release);
	sem_destroy(&p->run_end);
	rec_fini(&p->r);
}

static int per_fn(void *arg, ctp_token *tok)
{
	struct per *p = arg;
	int         k = atomic_fetch_add(&p->runs, 1) + 1;
	int64_t     now = tu_now_ns();
	int         ret = p->fail_ret;

	if (atomic_fetch_add(&p->in_run, 1) != 0)
		atomic_fetch_add(&p->overlap, 1);
	if (k <= MAXRUNS)
		atomic_store(&p->start_ns[k], now);
	if (k <= p->slow_runs)
		sleep_ns(p->slow_ns);
	if (k == p->spawn_at) {
		atomic_store(&p->spawn_tok_ret,
		             ctp_token_create(&p->child_tok, tok));
		atomic_store(&p->spawn_task_ret,
		             ctp_pool_submit(p->child_pool, rec_fn, p->child,
		                             &(ctp_task_opts){ .done = rec_done,
		                                               .parent = tok },
		                             &p->child_task));
	}
	if (k == p->block_at)
		atomic_store(&p->block_ret,
		             ctp_pool_submit(p->pool, parked_fn, p->blocker,
		                             &(ctp_task_opts){
		                                     .priority = CTP_PRIORITY_HIGH },
		                             NULL));
	if (k == p->gate_at) {
		tu_sem_post(&p->started);
		tu_sem_wait(&p->release);
		ret = p->gate_ret;
	}
	if (k == p->stop_at ||
	    (p->stop_after > 0 && now - p->t0 >= p->stop_after &&
	     k >= p->stop_min &&
	     atomic_load(&p->own_cancel) == UNSET)) {
		atomic_store(&p->own_cancel, ctp_token_cancel(tok));
		ret = p->stop_ret;
	}
	if (k <= MAXRUNS)
		atomic_store(&p->end_ns[k], tu_now_ns());
	atomic_fetch_sub(&p->in_run, 1);
	tu_sem_post(&p->run_end);
	return ret;
}

static void per_done(void *arg, int status)
{
	struct per *p = arg;

	atomic_store(&p->done_ns, tu_now_ns());
	rec_done(&p->r, status);
}

static int submit_per(ctp_pool *pool, struct per *p, ctp_task_opts o,
                      ctp_task **t)
{
	o.done = per_done;
	return ctp_pool_submit(pool, per_fn, p, &o, t);
}

/* ---- bad input -------------------------------------------------------------- */

static void test_sched_bad_input_einval(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec r;
	ctp_task *t = NULL;
	const ctp_task_opts bad[] = {
		{ .delay = -1 },
		{ .delay = CTP_FOREVER },
		{ .delay = INT64_MIN },
		{ .period = -1 },
		{ .period = INT64_MIN },
		{ .priority = 2 },
		{ .priority = -2 },
		{ .priority = 1000 },
		{ .flags = 1 },
		{ .flags = 0x80000000u },
	};

	rec_init(&r, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = NULL;
		assert_int_equal(submit_rec(pool, &r, bad[i], &t), -EINVAL);
		assert_null(t);
	}
	assert_int_equal(ctp_task_reschedule(NULL, 0), -EINVAL);
	assert_int_equal(ctp_task_reschedule(NULL, CTP_MSEC(1)), -EINVAL);

	/* a negative delay on a real, queued task */
	assert_int_equal(submit_rec(pool, &r,
	                 (ctp_task_opts){ .delay = CTP_SEC(3600) }, &t), 0);
	assert_int_equal(ctp_task_reschedule(t, -1), -EINVAL);
	assert_int_equal(ctp_task_reschedule(t, INT64_MIN), -EINVAL);
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, -ECANCELED);
	ctp_task_release(t);

	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 1);
	assert_int_equal(s.cancelled, 1);
	assert_int_equal(s.rejected, 0);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.ran, 0);
	assert_int_equal(r.calls, 1);
	rec_fini(&r);
}

static void test_sched_int64_max_delay_and_period(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec a, b;
	struct per p;
	ctp_task *ta = NULL, *tb = NULL, *tp = NULL;

	rec_init(&a, 0);
	rec_init(&b, 0);
	per_init(&p, pool);

	/* delay INT64_MAX: accepted, waits */
	assert_int_equal(submit_rec(pool, &a,
	                 (ctp_task_opts){ .delay = INT64_MAX }, &ta), 0);
	/* delay and period INT64_MAX */
	assert_int_equal(submit_rec(pool, &b,
	                 (ctp_task_opts){ .delay = INT64_MAX,
	                                  .period = INT64_MAX,
	                                  .timeout = INT64_MAX }, &tb), 0);
	/* period INT64_MAX: runs at once, then is due in ~292 years */
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = INT64_MAX }, &tp), 0);
	tu_sem_wait(&p.run_end);
	assert_true(wait_state(tp, CTP_TASK_QUEUED, BOUND));
	assert_int_equal(ctp_task_state(ta), CTP_TASK_QUEUED);
	assert_int_equal(ctp_task_state(tb), CTP_TASK_QUEUED);
	assert_true(wait_stats(pool, 3, 0, BOUND));

	assert_int_equal(ctp_task_reschedule(ta, INT64_MAX), 0);
	assert_int_equal(ctp_task_cancel(ta), 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.status, -ECANCELED);
	assert_int_equal(ctp_task_cancel(tb), 0);
	assert_int_equal(b.calls, 1);
	assert_int_equal(b.status, -ECANCELED);
	assert_int_equal(ctp_task_cancel(tp), 0);
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(p.r.status, -ECANCELED);
	assert_int_equal(p.runs, 1);
	assert_int_equal(ctp_task_state(ta), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_state(tb), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_state(tp), CTP_TASK_DONE);

	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 3);
	assert_int_equal(s.cancelled, 2);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(ta);
	ctp_task_release(tb);
	ctp_task_release(tp);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(a.ran, 0);
	assert_int_equal(b.ran, 0);
	assert_int_equal(p.runs, 1);
	rec_fini(&a);
	rec_fini(&b);
	per_fini(&p);
}

/* ---- delay ------------------------------------------------------------------ */

static void test_sched_delay_queued_holds_place(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 2);
	struct rec d[2], x;
	ctp_task *t[2] = { NULL, NULL }, *tx = NULL;

	rec_init(&d[0], 0);
	rec_init(&d[1], 0);
	rec_init(&x, 5);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(submit_rec(pool, &d[i],
		                 (ctp_task_opts){ .delay = CTP_SEC(3600) }, &t[i]),
		                 0);
		assert_int_equal(ctp_task_state(t[i]), CTP_TASK_QUEUED);
	}
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 2);
	assert_int_equal(s.queued, 2);
	assert_int_equal(s.running, 0);

	/* the worker is idle, but both places are held */
	assert_int_equal(submit_rec(pool, &x, (ctp_task_opts){ .queue_wait = 0 },
	                            &tx), -EAGAIN);
	s = stats_of(pool);
	assert_int_equal(s.submitted, 2);
	assert_int_equal(s.rejected, 1);

	/* cancel: done has returned, and the place is free at once */
	assert_int_equal(ctp_task_cancel(t[0]), 0);
	assert_int_equal(d[0].calls, 1);
	assert_int_equal(d[0].status, -ECANCELED);
	assert_true(done_here(&d[0]));
	assert_int_equal(ctp_task_state(t[0]), CTP_TASK_CANCELLED);
	assert_int_equal(submit_rec(pool, &x, (ctp_task_opts){ .queue_wait = 0 },
	                            &tx), 0);
	int st = UNSET;
	assert_int_equal(ctp_task_wait(tx, BOUND, &st), 0);
	assert_int_equal(st, 5);

	assert_int_equal(ctp_task_cancel(t[1]), 0);
	assert_int_equal(d[1].status, -ECANCELED);
	assert_int_equal(ctp_task_cancel(t[1]), -EALREADY);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	s = stats_of(pool);
	assert_int_equal(s.submitted, 3);
	assert_int_equal(s.cancelled, 2);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	for (int i = 0; i < 2; i++)
		ctp_task_release(t[i]);
	ctp_task_release(tx);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(d[i].ran, 0);
		assert_int_equal(d[i].calls, 1);
		rec_fini(&d[i]);
	}
	rec_fini(&x);
}

static void test_sched_delay_never_starts_early(void **state)
{
	(void)state;
	enum { N = 8 };
	ctp_pool *pool = pool_new(2, 0);
	struct stamp s[N];
	ctp_task *t[N];
	int64_t t0[N], delay[N];

	for (int i = 0; i < N; i++) {
		stamp_init(&s[i], i, NULL, NULL);
		delay[i] = CTP_MSEC(5) * (i + 1);
		t0[i] = tu_now_ns();
		assert_int_equal(submit_stamp(pool, &s[i],
		                 (ctp_task_opts){ .delay = delay[i] }, &t[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		int st = UNSET;

		assert_int_equal(ctp_task_wait(t[i], BOUND, &st), 0);
		assert_int_equal(st, i);
		assert_int_equal(s[i].r.ran, 1);
		assert_true(s[i].start_ns >= t0[i] + delay[i]);
		assert_true(s[i].start_ns < t0[i] + delay[i] + BOUND);
		ctp_task_release(t[i]);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats st = stats_of(pool);
	assert_int_equal(st.completed, N);
	assert_identity(&st);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++)
		rec_fini(&s[i].r);
}

static void test_sched_delay_timeout_not_longer_times_out(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec a, b;
	ctp_task *ta = NULL, *tb = NULL;
	int st = UNSET;

	rec_init(&a, 0);
	rec_init(&b, 0);
	assert_int_equal(submit_rec(pool, &a,
	                 (ctp_task_opts){ .delay = CTP_MSEC(60),
	                                  .timeout = CTP_MSEC(20) }, &ta), 0);
	/* equal: "not longer than the delay" */
	assert_int_equal(submit_rec(pool, &b,
	                 (ctp_task_opts){ .delay = CTP_MSEC(30),
	                                  .timeout = CTP_MSEC(30) }, &tb), 0);
	assert_int_equal(ctp_task_wait(ta, BOUND, &st), 0);
	assert_int_equal(st, -ETIMEDOUT);
	assert_int_equal(ctp_task_wait(tb, BOUND, &st), 0);
	assert_int_equal(st, -ETIMEDOUT);
	assert_int_equal(ctp_task_state(ta), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_state(tb), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.timed_out, 2);
	assert_int_equal(s.completed, 0);
	assert_identity(&s);
	ctp_task_release(ta);
	ctp_task_release(tb);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(a.ran, 0);
	assert_int_equal(b.ran, 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(b.calls, 1);
	rec_fini(&a);
	rec_fini(&b);
}

/* ---- many delayed tasks, cancels and reschedules ------------------------ */

struct many {
	atomic_int      ran;
	atomic_int      calls;
	atomic_int      status;
	_Atomic int64_t start_ns;
};

static int many_fn(void *arg, ctp_token *tok)
{
	struct many *m = arg;

	(void)tok;
	atomic_store(&m->start_ns, tu_now_ns());
	atomic_fetch_add(&m->ran, 1);
	return 3;
}

static void many_done(void *arg, int status)
{
	struct many *m = arg;

	atomic_store(&m->status, status);
	atomic_fetch_add(&m->calls, 1);
}

static void test_sched_many_delays_cancels_reschedules(void **state)
{
	(void)state;
	const unsigned long n = tu_scaled(100000 / MANY_DIV, 2000);
	ctp_pool_opts po = { .threads = 2, .queue_capacity = 1u << 17 };
	ctp_pool *pool = NULL;
	struct many *m = calloc(n, sizeof(*m));
	ctp_task **t = calloc(n, sizeof(*t));
	int64_t *due = calloc(n, sizeof(*due));
	uint32_t rng = 0x5eed1234u;
	uint64_t cancels = 0, resched = 0;

	assert_non_null(m);
	assert_non_null(t);
	assert_non_null(due);
	failures = 0;
	assert_int_equal(ctp_pool_create(&pool, &po), 0);
	for (unsigned long i = 0; i < n; i++) {
		int64_t d = (int64_t)(tu_rng_next(&rng) % 50001) * 1000;
		int64_t now = tu_now_ns();
		int     rc;

		atomic_init(&m[i].status, UNSET);
		rc = ctp_pool_submit(pool, many_fn, &m[i],
		                     &(ctp_task_opts){ .done = many_done,
		                                       .delay = d }, &t[i]);
		CHECK(rc == 0, "submit %lu: %d", i, rc);
		if (rc != 0) {
			t[i] = NULL;
			continue;
		}
		due[i] = now + d;
		/* now and then, act on an earlier task */
		uint32_t r = tu_rng_next(&rng);
		if (r % 8 == 0) {
			unsigned long j = tu_rng_next(&rng) % (i + 1);

			if (t[j] == NULL)
				continue;
			if (r % 16 == 0) {
				rc = ctp_task_cancel(t[j]);
				CHECK(rc == 0 || rc == -EINPROGRESS || rc == -EALREADY,
				      "cancel %lu: %d", j, rc);
				if (rc == 0) {
					cancels++;
					CHECK(atomic_load(&m[j].calls) == 1,
					      "cancel %lu: done not called", j);
				}
			} else {
				int64_t nd = (int64_t)(tu_rng_next(&rng) % 50001) *
				             1000;
				int64_t before = tu_now_ns();

				rc = ctp_task_reschedule(t[j], nd);
				CHECK(rc == 0 || rc == -EINPROGRESS || rc == -EALREADY,
				      "reschedule %lu: %d", j, rc);
				if (rc == 0) {
					resched++;
					due[j] = before + nd;
				}
			}
		}
	}
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_SEC(60)), 0);
	uint64_t ran = 0, cancelled = 0;
	for (unsigned long i = 0; i < n; i++) {
		int st;

		if (t[i] == NULL)
			continue;
		CHECK(atomic_load(&m[i].calls) == 1, "task %lu: done %d times",
		      i, atomic_load(&m[i].calls));
		st = atomic_load(&m[i].status);
		if (atomic_load(&m[i].ran)) {
			ran++;
			CHECK(atomic_load(&m[i].ran) == 1, "task %lu ran %d times",
			      i, atomic_load(&m[i].ran));
			CHECK(st == 3, "task %lu: status %d", i, st);
			CHECK(atomic_load(&m[i].start_ns) >= due[i],
			      "task %lu started %lld ns early", i,
			      (long long)(due[i] - atomic_load(&m[i].start_ns)));
			CHECK(ctp_task_state(t[i]) == CTP_TASK_DONE, "task %lu", i);
		} else {
			cancelled++;
			CHECK(st == -ECANCELED, "task %lu: status %d", i, st);
			CHECK(ctp_task_state(t[i]) == CTP_TASK_CANCELLED,
			      "task %lu", i);
		}
		ctp_task_release(t[i]);
	}
	ctp_stats s = stats_of(pool);
	assert_int_equal(failures, 0);
	assert_int_equal(cancelled, cancels);
	assert_int_equal(s.submitted, n);
	assert_int_equal(s.completed, ran);
	assert_int_equal(s.cancelled, cancels);
	assert_true(resched > 0);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	free(m);
	free(t);
	free(due);
}

/* ---- priority ----------------------------------------------------------- */

static void test_sched_priority_start_order(void **state)
{
	(void)state;
	enum { N = 9 };
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct stamp s[N];
	ctp_task *t[N];
	atomic_int next = 0;
	int order[N];
	/* submission order: ids with their priorities */
	const int ids[N] = { 20, 10, 0, 21, 1, 11, 2, 22, 12 };
	const int pri[N] = { CTP_PRIORITY_LOW, CTP_PRIORITY_NORMAL,
	                     CTP_PRIORITY_HIGH, CTP_PRIORITY_LOW,
	                     CTP_PRIORITY_HIGH, CTP_PRIORITY_NORMAL,
	                     CTP_PRIORITY_HIGH, CTP_PRIORITY_LOW,
	                     CTP_PRIORITY_NORMAL };
	const int want[N] = { 0, 1, 2, 10, 11, 12, 20, 21, 22 };

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < N; i++) {
		stamp_init(&s[i], ids[i], &next, order);
		assert_int_equal(submit_stamp(pool, &s[i],
		                 (ctp_task_opts){ .priority = pri[i] }, &t[i]), 0);
	}
	assert_int_equal(stats_of(pool).queued, N);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(next, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(order[i], want[i]);

	/* a HIGH task on an idle pool starts */
	struct rec h;
	ctp_task *th = NULL;
	int st = UNSET;

	rec_init(&h, 4);
	assert_int_equal(submit_rec(pool, &h,
	                 (ctp_task_opts){ .priority = CTP_PRIORITY_HIGH }, &th),
	                 0);
	assert_int_equal(ctp_task_wait(th, BOUND, &st), 0);
	assert_int_equal(st, 4);
	ctp_task_release(th);
	/* and a LOW one */
	assert_int_equal(submit_rec(pool, &h,
	                 (ctp_task_opts){ .priority = CTP_PRIORITY_LOW }, &th),
	                 0);
	assert_int_equal(ctp_task_wait(th, BOUND, &st), 0);
	assert_int_equal(st, 4);
	ctp_task_release(th);

	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats ss = stats_of(pool);
	assert_int_equal(ss.completed, N + 3);
	assert_identity(&ss);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++) {
		ctp_task_release(t[i]);
		rec_fini(&s[i].r);
	}
	rec_fini(&h);
	parked_fini(&blk);
}

static void test_sched_priority_delayed_due_while_busy(void **state)
{
	(void)state;
	enum { N = 6 };
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct stamp s[N];
	ctp_task *t[N];
	atomic_int next = 0;
	int order[N];
	/* they become due in this order: LOW, LOW, NORMAL, NORMAL, HIGH, HIGH */
	const int pri[N] = { CTP_PRIORITY_LOW, CTP_PRIORITY_LOW,
	                     CTP_PRIORITY_NORMAL, CTP_PRIORITY_NORMAL,
	                     CTP_PRIORITY_HIGH, CTP_PRIORITY_HIGH };
	const int want[N] = { 4, 5, 2, 3, 0, 1 };
	int64_t t0 = tu_now_ns();

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < N; i++) {
		stamp_init(&s[i], i, &next, order);
		assert_int_equal(submit_stamp(pool, &s[i],
		                 (ctp_task_opts){ .priority = pri[i],
		                                  .delay = CTP_MSEC(2) * (i + 1) },
		                 &t[i]), 0);
	}
	/* let the timer make every one due (no event to wait for) */
	while (tu_now_ns() < t0 + CTP_MSEC(12) + CTP_MSEC(200))
		sleep_ns(CTP_MSEC(10));
	assert_int_equal(next, 0);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(next, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(order[i], want[i]);
	ctp_stats ss = stats_of(pool);
	assert_int_equal(ss.completed, N + 1);
	assert_identity(&ss);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++) {
		ctp_task_release(t[i]);
		rec_fini(&s[i].r);
	}
	parked_fini(&blk);
}

/* ---- periodic ----------------------------------------------------------- */

static void test_sched_periodic_cancel_between_runs(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&blk, 0);
	per_init(&p, pool);
	p.block_at = 3;
	p.blocker = &blk;
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_MSEC(2) }, &t), 0);
	/* after run 3 the worker takes the HIGH blocker: the series waits */
	tu_sem_wait(&blk.started);
	assert_int_equal(p.block_ret, 0);
	assert_true(wait_state(t, CTP_TASK_QUEUED, BOUND));
	assert_int_equal(p.runs, 3);
	assert_int_equal(p.overlap, 0);
	assert_int_equal(p.r.calls, 0);

	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(p.r.status, -ECANCELED);
	assert_true(done_here(&p.r));
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_wait(t, 0, &st), 0);
	assert_int_equal(st, -ECANCELED);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(ctp_task_reschedule(t, 0), -EALREADY);

	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 2);
	assert_int_equal(s.completed, 2); /* the series and the blocker */
	assert_int_equal(s.cancelled, 0);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(p.runs, 3);
	assert_int_equal(p.r.calls, 1);
	per_fini(&p);
	parked_fini(&blk);
}

static void test_sched_periodic_failing_runs_go_on_own_cancel_ends(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	p.fail_ret = -EIO;
	p.stop_at = 5;
	p.stop_ret = 77;
	int64_t t0 = tu_now_ns();
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_MSEC(2),
	                                  .delay = CTP_MSEC(10) }, &t), 0);
	/* ctp_task_wait waits for the end of the series */
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 77);
	assert_int_equal(p.runs, 5);
	assert_int_equal(p.own_cancel, 0);
	/* first after the delay, then at delay + k * period */
	for (int k = 1; k <= 5; k++)
		assert_true(p.start_ns[k] >=
		            t0 + CTP_MSEC(10) + (k - 1) * CTP_MSEC(2));
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(p.r.status, 77);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(ctp_task_reschedule(t, CTP_MSEC(1)), -EALREADY);
	/* never runs again */
	sleep_ns(CTP_MSEC(20));
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(p.runs, 5);
	assert_int_equal(p.overlap, 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 1);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(p.r.calls, 1);
	per_fini(&p);
}

static void test_sched_periodic_cancel_during_run(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	p.gate_at = 2;
	p.gate_ret = 9;
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_MSEC(2) }, &t), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	assert_int_equal(ctp_task_cancel(t), -EINPROGRESS);
	assert_int_equal(p.r.calls, 0);
	tu_sem_post(&p.release);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 9);
	assert_int_equal(p.r.status, 9);
	assert_int_equal(p.runs, 2);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	sleep_ns(CTP_MSEC(10));
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(p.runs, 2);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(p.r.calls, 1);
	per_fini(&p);
}

static void test_sched_periodic_no_overlap_skips_missed(void **state)
{
	(void)state;
	const int64_t period = CTP_MSEC(5);
	ctp_pool *pool = pool_new(2, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	/* runs 1..3 take 8 periods each, the later ones nothing */
	p.slow_runs = 3;
	p.slow_ns = 8 * period;
	p.stop_at = 9;
	p.stop_ret = 1;
	p.t0 = tu_now_ns();
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = period }, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 1);
	assert_int_equal(p.overlap, 0);
	assert_int_equal(p.runs, 9);
	/* fixed rate from submission: run k never before t0 + (k-1) period */
	for (int k = 1; k <= 9; k++)
		assert_true(p.start_ns[k] >= p.t0 + (k - 1) * period);
	/* runs never overlap */
	for (int k = 2; k <= 9; k++)
		assert_true(p.start_ns[k] >= p.end_ns[k - 1]);
	/* missed runs are skipped, not queued up: runs 5..9 use due times
	 * after the end of run 3, one period apart */
	assert_true(p.start_ns[9] >= p.end_ns[3] + 3 * period);
	int64_t elapsed = p.start_ns[9] - p.t0;
	assert_true(9 <= elapsed / period + 2);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	per_fini(&p);
}

static void test_sched_periodic_long_runs_never_overlap(void **state)
{
	(void)state;
	const int64_t period = CTP_MSEC(1);
	ctp_pool *pool = pool_new(4, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	p.slow_runs = MAXRUNS;
	p.slow_ns = 3 * period;
	p.stop_after = CTP_MSEC(60);
	p.stop_min = 5;
	p.stop_ret = 2;
	p.t0 = tu_now_ns();
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = period }, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 2);
	assert_int_equal(p.own_cancel, 0);
	assert_int_equal(p.overlap, 0);
	int runs = p.runs;
	assert_true(runs >= 5);
	assert_true(runs <= MAXRUNS);
	int64_t elapsed = p.start_ns[runs] - p.t0;
	assert_true(runs <= elapsed / period + 2);
	/* each run takes 3 periods: back to back at most */
	for (int k = 2; k <= runs; k++)
		assert_true(p.start_ns[k] >= p.end_ns[k - 1]);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	per_fini(&p);
}

static void test_sched_periodic_timeout_ends_series(void **state)
{
	(void)state;
	const int64_t timeout = CTP_MSEC(300);
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;
	int64_t t0;

	parked_init(&blk, 0);
	per_init(&p, pool);
	p.block_at = 2;
	p.blocker = &blk;
	t0 = tu_now_ns();
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_MSEC(2),
	                                  .timeout = timeout }, &t), 0);
	assert_true(sem_wait_for(&p.r.done_sem, BOUND));
	bool blocked = atomic_load(&p.block_ret) == 0;
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	if (blocked)
		unpark(&blk, 1);
	assert_true(blocked);
	assert_int_equal(st, -ETIMEDOUT);
	assert_int_equal(p.r.status, -ETIMEDOUT);
	assert_int_equal(p.runs, 2);
	assert_true(p.done_ns >= t0 + timeout);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 2);
	assert_int_equal(s.completed, 2); /* it ran: completed, not timed_out */
	assert_int_equal(s.timed_out, 0);
	assert_identity(&s);

	ctp_task_release(t);

	/* never ran: counted timed_out, state CANCELLED */
	struct per q;
	per_init(&q, pool);
	assert_int_equal(submit_per(pool, &q,
	                 (ctp_task_opts){ .period = CTP_MSEC(2),
	                                  .delay = CTP_MSEC(50),
	                                  .timeout = CTP_MSEC(10) }, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, -ETIMEDOUT);
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	s = stats_of(pool);
	assert_int_equal(s.timed_out, 1);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(q.runs, 0);
	assert_int_equal(p.runs, 2);
	per_fini(&q);
	per_fini(&p);
	parked_fini(&blk);
}

static void test_sched_periodic_cancel_before_first_run(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_MSEC(1),
	                                  .delay = CTP_SEC(3600) }, &t), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(p.r.status, -ECANCELED);
	assert_int_equal(ctp_task_state(t), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_wait(t, 0, &st), 0);
	assert_int_equal(st, -ECANCELED);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 1);
	assert_int_equal(s.cancelled, 1);
	assert_int_equal(s.completed, 0);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(p.runs, 0);
	per_fini(&p);
}

static void test_sched_periodic_children_fire_with_series(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	ctp_pool *other = pool_new(1, 0);
	struct parked blk;
	struct per p;
	struct rec child;
	ctp_task *t = NULL;

	parked_init(&blk, 0);
	per_init(&p, pool);
	rec_init(&child, 0);
	saturate(other, &blk, 1);
	p.spawn_at = 1;
	p.child_pool = other;
	p.child = &child;
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_SEC(3600) }, &t), 0);
	tu_sem_wait(&p.run_end);
	assert_true(wait_state(t, CTP_TASK_QUEUED, BOUND));
	assert_int_equal(p.spawn_tok_ret, 0);
	assert_int_equal(p.spawn_task_ret, 0);
	/* the run is over; its children are still alive */
	assert_false(ctp_token_cancelled(p.child_tok));
	assert_int_equal(ctp_task_state(p.child_task), CTP_TASK_QUEUED);
	assert_int_equal(child.calls, 0);

	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(p.r.status, -ECANCELED);
	/* the series' token fired: so did its children */
	assert_true(ctp_token_cancelled(p.child_tok));
	assert_int_equal(ctp_token_reason(p.child_tok), -ECANCELED);
	assert_int_equal(child.calls, 1);
	assert_int_equal(child.status, -ECANCELED);
	assert_int_equal(ctp_task_state(p.child_task), CTP_TASK_CANCELLED);

	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(other, BOUND), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(child.ran, 0);
	ctp_stats s = stats_of(other);
	assert_int_equal(s.cancelled, 1);
	assert_identity(&s);
	s = stats_of(pool);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(p.child_task);
	ctp_token_release(p.child_tok);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(ctp_pool_destroy(other), 0);
	assert_int_equal(p.runs, 1);
	rec_fini(&child);
	per_fini(&p);
	parked_fini(&blk);
}

/*
 * A periodic task's first run gives its token to a thread that sleeps on
 * it (ctp_token_sleep, 60 s). Between runs the task is queued with nothing
 * linked: a cancel by handle catches it queued and must still wake that
 * sleeper (found by review: the fire woke only tokens it walked, and a
 * task caught queued with nothing linked was not walked).
 */
struct handed {
	ctp_token  *tok;
	sem_t       given, ran, woke;
	atomic_int  runs, ret;
	_Atomic pid_t tid;
};

static int handed_fn(void *arg, ctp_token *token)
{
	struct handed *h = arg;

	if (atomic_fetch_add(&h->runs, 1) == 0) {
		h->tok = token;
		tu_sem_post(&h->given);
		tu_sem_post(&h->ran); /* RUNNING until after we return */
	}
	return 0;
}

static void *handed_sleeper(void *arg)
{
	struct handed *h = arg;

	tu_sem_wait(&h->given);
	atomic_store(&h->tid, (pid_t)syscall(SYS_gettid));
	atomic_store(&h->ret, ctp_token_sleep(h->tok, CTP_SEC(60)));
	tu_sem_post(&h->woke);
	return NULL;
}

/* True once thread tid is asleep (state S), within bound. This polls the
 * kernel (tu_thread_info); it orders nothing. */
static bool thread_asleep(pid_t tid, int64_t bound)
{
	int64_t end = tu_now_ns() + bound;
	char st = '?';

	while (tu_now_ns() < end) {
		if (tu_thread_info(tid, NULL, &st) && st == 'S')
			return true;
		sched_yield();
	}
	return false;
}

static void test_sched_periodic_cancel_between_runs_wakes_sleeper(
    void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	/* static: on a failure below the sleeper may outlive this frame */
	static struct handed h;
	ctp_task *t = NULL;
	pthread_t th;

	memset(&h, 0, sizeof(h));
	tu_sem_init(&h.given, 0);
	tu_sem_init(&h.ran, 0);
	tu_sem_init(&h.woke, 0);
	th = tu_spawn(handed_sleeper, &h);
	assert_int_equal(ctp_pool_submit(pool, handed_fn, &h,
	                 &(ctp_task_opts){ .period = CTP_SEC(3600) }, &t), 0);
	/* QUEUED after its run started: the run is over (between runs) */
	tu_sem_wait(&h.ran);
	assert_true(wait_state(t, CTP_TASK_QUEUED, BOUND));
	while (atomic_load(&h.tid) == 0)
		sched_yield(); /* set right after `given`, which the run posted */
	assert_true(thread_asleep(atomic_load(&h.tid), BOUND));
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_true(sem_wait_for(&h.woke, BOUND)); /* not its 60 s */
	tu_join(th);
	assert_int_equal(atomic_load(&h.ret), -ECANCELED);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(atomic_load(&h.runs), 1);
	sem_destroy(&h.given);
	sem_destroy(&h.ran);
	sem_destroy(&h.woke);
}

static void test_sched_periodic_stats_queued_between_runs(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct per p;
	ctp_task *t = NULL;

	per_init(&p, pool);
	p.gate_at = 1;
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_SEC(3600) }, &t), 0);
	tu_sem_wait(&p.started);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.queued, 0);
	assert_int_equal(s.running, 1);
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	tu_sem_post(&p.release);
	assert_true(wait_state(t, CTP_TASK_QUEUED, BOUND));
	assert_true(wait_stats(pool, 1, 0, BOUND));
	s = stats_of(pool);
	assert_int_equal(s.queued, 1);
	assert_int_equal(s.running, 0);
	assert_int_equal(s.submitted, 1);
	assert_int_equal(s.completed, 0);
	/* between runs the series has not ended: a wait times out */
	assert_int_equal(ctp_task_wait(t, CTP_MSEC(5), NULL), -ETIMEDOUT);
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	s = stats_of(pool);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	per_fini(&p);
}

/* ---- reschedule --------------------------------------------------------- */

static void test_sched_reschedule_queued_delays_start(void **state)
{
	(void)state;
	const int64_t delay = CTP_MSEC(40);
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct stamp s;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&blk, 0);
	stamp_init(&s, 6, NULL, NULL);
	saturate(pool, &blk, 1);
	assert_int_equal(submit_stamp(pool, &s, NO_OPTS, &t), 0);
	int64_t before = tu_now_ns();
	assert_int_equal(ctp_task_reschedule(t, delay), 0);
	assert_int_equal(ctp_task_state(t), CTP_TASK_QUEUED);
	unpark(&blk, 1);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 6);
	assert_true(s.start_ns >= before + delay);
	/* finished */
	assert_int_equal(ctp_task_reschedule(t, 0), -EALREADY);
	ctp_task_release(t);

	/* a delayed task moved earlier */
	rec_fini(&s.r);
	stamp_init(&s, 7, NULL, NULL);
	assert_int_equal(submit_stamp(pool, &s,
	                 (ctp_task_opts){ .delay = CTP_SEC(3600) }, &t), 0);
	before = tu_now_ns();
	assert_int_equal(ctp_task_reschedule(t, CTP_MSEC(5)), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 7);
	assert_true(s.start_ns >= before + CTP_MSEC(5));
	ctp_task_release(t);

	/* cancelled */
	rec_fini(&s.r);
	stamp_init(&s, 8, NULL, NULL);
	assert_int_equal(submit_stamp(pool, &s,
	                 (ctp_task_opts){ .delay = CTP_SEC(3600) }, &t), 0);
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(ctp_task_reschedule(t, 0), -EALREADY);
	assert_int_equal(ctp_task_reschedule(t, CTP_SEC(1)), -EALREADY);
	ctp_task_release(t);

	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats ss = stats_of(pool);
	assert_int_equal(ss.completed, 3);
	assert_int_equal(ss.cancelled, 1);
	assert_identity(&ss);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&s.r);
	parked_fini(&blk);
}

static void test_sched_reschedule_zero_moves_to_end(void **state)
{
	(void)state;
	enum { N = 5 };
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct stamp s[N];
	ctp_task *t[N];
	atomic_int next = 0;
	int order[N];
	/* A B C NORMAL, H1 H2 HIGH */
	const int pri[N] = { CTP_PRIORITY_NORMAL, CTP_PRIORITY_NORMAL,
	                     CTP_PRIORITY_NORMAL, CTP_PRIORITY_HIGH,
	                     CTP_PRIORITY_HIGH };
	/* after reschedule(A, 0) and reschedule(H1, 0): H2 H1 B C A */
	const int want[N] = { 4, 3, 1, 2, 0 };

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < N; i++) {
		stamp_init(&s[i], i, &next, order);
		assert_int_equal(submit_stamp(pool, &s[i],
		                 (ctp_task_opts){ .priority = pri[i] }, &t[i]), 0);
	}
	assert_int_equal(ctp_task_reschedule(t[0], 0), 0);
	assert_int_equal(ctp_task_reschedule(t[3], 0), 0);
	assert_int_equal(ctp_task_state(t[0]), CTP_TASK_QUEUED);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(next, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(order[i], want[i]);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++) {
		ctp_task_release(t[i]);
		rec_fini(&s[i].r);
	}
	parked_fini(&blk);
}

static void test_sched_reschedule_running_einprogress(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked p;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&p, 3);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &t), 0);
	tu_sem_wait(&p.started);
	assert_int_equal(ctp_task_reschedule(t, 0), -EINPROGRESS);
	assert_int_equal(ctp_task_reschedule(t, CTP_MSEC(10)), -EINPROGRESS);
	unpark(&p, 1);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 3);
	assert_int_equal(p.r.ran, 1);
	assert_int_equal(ctp_task_reschedule(t, 0), -EALREADY);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(p.r.ran, 1);
	parked_fini(&p);
}

static void test_sched_reschedule_periodic_between_runs(void **state)
{
	(void)state;
	const int64_t delay = CTP_MSEC(30);
	ctp_pool *pool = pool_new(1, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	p.stop_at = 2;
	p.stop_ret = 4;
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_SEC(3600) }, &t), 0);
	tu_sem_wait(&p.run_end);
	assert_true(wait_state(t, CTP_TASK_QUEUED, BOUND));
	int64_t before = tu_now_ns();
	assert_int_equal(ctp_task_reschedule(t, delay), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 4);
	assert_int_equal(p.runs, 2);
	assert_true(p.start_ns[2] >= before + delay);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	per_fini(&p);
}

static void test_sched_reschedule_periodic_during_run(void **state)
{
	(void)state;
	const int64_t delay = CTP_MSEC(40);
	ctp_pool *pool = pool_new(2, 0);
	struct per p;
	ctp_task *t = NULL;
	int st = UNSET;

	per_init(&p, pool);
	p.gate_at = 1;
	p.stop_at = 2;
	p.stop_ret = 4;
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_MSEC(1) }, &t), 0);
	tu_sem_wait(&p.started);
	int64_t before = tu_now_ns();
	assert_int_equal(ctp_task_reschedule(t, delay), -EINPROGRESS);
	tu_sem_post(&p.release);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 4);
	assert_int_equal(p.runs, 2);
	assert_true(p.start_ns[2] >= before + delay);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	per_fini(&p);
}

/* ---- shutdown ----------------------------------------------------------- */

struct shut {
	ctp_pool  *pool;
	int64_t    drain;
	atomic_int ret;
};

static void *shut_thread(void *arg)
{
	struct shut *s = arg;

	atomic_store(&s->ret, ctp_pool_shutdown(s->pool, s->drain, BOUND));
	return NULL;
}

static void test_sched_shutdown_delays_and_periodic(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct per waiting, never, running;
	struct stamp soon;
	struct rec late;
	ctp_task *tw = NULL, *tn = NULL, *tr = NULL, *ts = NULL, *tl = NULL;
	int64_t t0;
	struct shut sh = { .pool = pool, .drain = CTP_MSEC(600) };

	per_init(&waiting, pool);
	per_init(&never, pool);
	per_init(&running, pool);
	stamp_init(&soon, 11, NULL, NULL);
	rec_init(&late, 0);

	/* a series that ran once and waits an hour for its next run */
	assert_int_equal(submit_per(pool, &waiting,
	                 (ctp_task_opts){ .period = CTP_SEC(3600) }, &tw), 0);
	tu_sem_wait(&waiting.run_end);
	assert_true(wait_state(tw, CTP_TASK_QUEUED, BOUND));
	/* a series that never ran */
	assert_int_equal(submit_per(pool, &never,
	                 (ctp_task_opts){ .period = CTP_MSEC(1),
	                                  .delay = CTP_SEC(3600) }, &tn), 0);
	/* a series whose first run is in progress at the shutdown */
	running.gate_at = 1;
	running.gate_ret = 5;
	assert_int_equal(submit_per(pool, &running,
	                 (ctp_task_opts){ .period = CTP_MSEC(1) }, &tr), 0);
	tu_sem_wait(&running.started);
	/* one-shots: due within the drain, and far beyond it */
	t0 = tu_now_ns();
	assert_int_equal(submit_stamp(pool, &soon,
	                 (ctp_task_opts){ .delay = CTP_MSEC(50) }, &ts), 0);
	assert_int_equal(submit_rec(pool, &late,
	                 (ctp_task_opts){ .delay = CTP_SEC(3600) }, &tl), 0);

	pthread_t th = tu_spawn(shut_thread, &sh);
	/* the shutdown ends the waiting series at its start */
	tu_sem_wait(&waiting.r.done_sem);
	assert_int_equal(waiting.r.status, -ESHUTDOWN);
	/* the never-run series too (no event to order on: check after) */
	tu_sem_post(&running.release);
	tu_join(th);
	assert_int_equal(sh.ret, 0);

	assert_int_equal(waiting.runs, 1);
	assert_int_equal(waiting.r.calls, 1);
	assert_int_equal(ctp_task_state(tw), CTP_TASK_DONE);

	assert_int_equal(never.runs, 0);
	assert_int_equal(never.r.calls, 1);
	assert_int_equal(never.r.status, -ESHUTDOWN);
	assert_int_equal(ctp_task_state(tn), CTP_TASK_CANCELLED);

	assert_int_equal(running.runs, 1);
	assert_int_equal(running.r.calls, 1);
	assert_int_equal(running.r.status, -ESHUTDOWN);
	assert_int_equal(ctp_task_state(tr), CTP_TASK_DONE);

	assert_int_equal(soon.r.ran, 1);
	assert_int_equal(soon.r.status, 11);
	assert_true(soon.start_ns >= t0 + CTP_MSEC(50));

	assert_int_equal(late.ran, 0);
	assert_int_equal(late.calls, 1);
	assert_int_equal(late.status, -ESHUTDOWN);
	assert_int_equal(ctp_task_state(tl), CTP_TASK_CANCELLED);

	assert_int_equal(ctp_task_cancel(tw), -EALREADY);
	assert_int_equal(ctp_task_reschedule(tr, 0), -EALREADY);

	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 5);
	assert_int_equal(s.completed, 3);
	assert_int_equal(s.dropped, 2);
	assert_identity(&s);
	ctp_task_release(tw);
	ctp_task_release(tn);
	ctp_task_release(tr);
	ctp_task_release(ts);
	ctp_task_release(tl);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(waiting.runs, 1);
	assert_int_equal(running.runs, 1);
	per_fini(&waiting);
	per_fini(&never);
	per_fini(&running);
	rec_fini(&soon.r);
	rec_fini(&late);
}

static void test_sched_delayed_fifo_by_due_time(void **state)
{
	(void)state;
	enum { N = 6, Z = N };            /* Z: the undelayed task's index */
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct stamp s[N + 1];
	ctp_task *t[N + 1];
	atomic_int next = 0;
	int order[N + 1], sure = 0;
	/* each task's due time lies in [due_lo, due_hi]: its delay after
	 * the clock read before its submit and after it */
	int64_t due_lo[N + 1], due_hi[N + 1];

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	/* submitted 0..5, due 5..0, and last one without a delay (due at
	 * once): within one priority, due order wins over submit order */
	for (int i = 0; i <= N; i++) {
		int64_t delay = i == Z ? 0 : CTP_MSEC(5) * (N - i);

		stamp_init(&s[i], i, &next, order);
		due_lo[i] = tu_now_ns() + delay;
		assert_int_equal(submit_stamp(pool, &s[i],
		                 (ctp_task_opts){ .delay = delay }, &t[i]), 0);
		due_hi[i] = tu_now_ns() + delay;
	}
	/* let the timer make every one due (no event to wait for) */
	while (tu_now_ns() < due_hi[0] + CTP_MSEC(200))
		sleep_ns(CTP_MSEC(10));
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(next, N + 1);
	/* The run order never contradicts the due order: no task ran
	 * after one that was surely due later. Which pairs are sure depends
	 * on how long the submits took (5 ms apart, a sanitizer build
	 * stalled by its machine can make two overlap: a test that asserted
	 * 5..0 failed so once); normally every pair is. */
	for (int p = 0; p <= N; p++) {
		for (int q = p + 1; q <= N; q++) {
			int a = order[p], b = order[q]; /* a ran before b */

			assert_true(a >= 0 && a <= N && b >= 0 && b <= N);
			assert_false(due_hi[b] < due_lo[a]);
			sure += due_hi[a] < due_lo[b];
		}
	}
	/* and the order was really tested: at least N of the 21 pairs
	 * were sure (a pair 5 ms apart is unsure only if its submits
	 * stalled that long) */
	assert_true(sure >= N);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i <= N; i++) {
		ctp_task_release(t[i]);
		rec_fini(&s[i].r);
	}
	parked_fini(&blk);
}

static void test_sched_parent_cancel_delayed_and_periodic(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	ctp_token *parent = NULL;
	struct rec d;
	struct per p;
	ctp_task *td = NULL, *tp = NULL;

	rec_init(&d, 0);
	per_init(&p, pool);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	assert_int_equal(submit_rec(pool, &d,
	                 (ctp_task_opts){ .delay = CTP_SEC(3600),
	                                  .parent = parent }, &td), 0);
	assert_int_equal(submit_per(pool, &p,
	                 (ctp_task_opts){ .period = CTP_SEC(3600),
	                                  .parent = parent }, &tp), 0);
	tu_sem_wait(&p.run_end);
	assert_true(wait_state(tp, CTP_TASK_QUEUED, BOUND));
	assert_int_equal(ctp_token_cancel(parent), 0);
	/* both caught between runs / waiting: done has returned */
	assert_int_equal(d.calls, 1);
	assert_int_equal(d.status, -ECANCELED);
	assert_int_equal(p.r.calls, 1);
	assert_int_equal(p.r.status, -ECANCELED);
	assert_int_equal(ctp_task_state(td), CTP_TASK_CANCELLED);
	assert_int_equal(ctp_task_state(tp), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(tp), -EALREADY);
	assert_int_equal(ctp_task_reschedule(td, 0), -EALREADY);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 2);
	assert_int_equal(s.cancelled, 1);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(td);
	ctp_task_release(tp);
	ctp_token_release(parent);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(d.ran, 0);
	assert_int_equal(p.runs, 1);
	rec_fini(&d);
	per_fini(&p);
}

/* A run that sleeps on its token: a shutdown without a drain fires it while
 * it runs, so done gets that run's status, and it never runs again. */
static int token_sleep_run(void *arg, ctp_token *tok)
{
	struct sleeper *s = arg;

	atomic_fetch_add(&s->r.ran, 1);
	tu_sem_post(&s->started);
	atomic_store(&s->ret, ctp_token_sleep(tok, CTP_FOREVER));
	atomic_store(&s->reason, ctp_token_reason(tok));
	return s->r.ret;
}

static void test_sched_shutdown_fires_running_periodic(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper sl;
	ctp_task *t = NULL;
	int st = UNSET;

	sleeper_init(&sl, CTP_FOREVER);
	assert_int_equal(submit(pool, token_sleep_run, &sl,
	                 (ctp_task_opts){ .period = CTP_MSEC(1) }, &t), 0);
	tu_sem_wait(&sl.started);
	assert_int_equal(ctp_pool_shutdown(pool, 0, BOUND), 0);
	assert_int_equal(sl.ret, -ESHUTDOWN);
	assert_int_equal(sl.reason, -ESHUTDOWN);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 7);
	assert_int_equal(sl.r.status, 7);
	assert_int_equal(sl.r.calls, 1);
	assert_int_equal(sl.r.ran, 1);
	assert_int_equal(ctp_task_state(t), CTP_TASK_DONE);
	assert_int_equal(ctp_task_cancel(t), -EALREADY);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 1);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(sl.r.ran, 1);
	sleeper_fini(&sl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sched_bad_input_einval),
		cmocka_unit_test(test_sched_int64_max_delay_and_period),
		cmocka_unit_test(test_sched_delay_queued_holds_place),
		cmocka_unit_test(test_sched_delay_never_starts_early),
		cmocka_unit_test(test_sched_delay_timeout_not_longer_times_out),
		cmocka_unit_test(test_sched_many_delays_cancels_reschedules),
		cmocka_unit_test(test_sched_priority_start_order),
		cmocka_unit_test(test_sched_priority_delayed_due_while_busy),
		cmocka_unit_test(test_sched_periodic_cancel_between_runs),
		cmocka_unit_test(test_sched_periodic_failing_runs_go_on_own_cancel_ends),
		cmocka_unit_test(test_sched_periodic_cancel_during_run),
		cmocka_unit_test(test_sched_periodic_no_overlap_skips_missed),
		cmocka_unit_test(test_sched_periodic_long_runs_never_overlap),
		cmocka_unit_test(test_sched_periodic_timeout_ends_series),
		cmocka_unit_test(test_sched_periodic_cancel_before_first_run),
		cmocka_unit_test(test_sched_periodic_children_fire_with_series),
		cmocka_unit_test(
		    test_sched_periodic_cancel_between_runs_wakes_sleeper),
		cmocka_unit_test(test_sched_periodic_stats_queued_between_runs),
		cmocka_unit_test(test_sched_reschedule_queued_delays_start),
		cmocka_unit_test(test_sched_reschedule_zero_moves_to_end),
		cmocka_unit_test(test_sched_reschedule_running_einprogress),
		cmocka_unit_test(test_sched_reschedule_periodic_between_runs),
		cmocka_unit_test(test_sched_reschedule_periodic_during_run),
		cmocka_unit_test(test_sched_shutdown_delays_and_periodic),
		cmocka_unit_test(test_sched_delayed_fifo_by_due_time),
		cmocka_unit_test(test_sched_parent_cancel_delayed_and_periodic),
		cmocka_unit_test(test_sched_shutdown_fires_running_periodic),
	};

	if (getenv("CTP_TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("CTP_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
