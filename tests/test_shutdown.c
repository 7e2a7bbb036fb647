/*
 * test_shutdown.c: ctp_pool_shutdown and ctp_pool_destroy.
 *
 * Covers draining everything (drain CTP_FOREVER, and huge durations), the
 * drain ending early, dropping everything (drain 0: done(-ESHUTDOWN) on the
 * caller's thread before it returns, stats.dropped), running tokens firing
 * with -ESHUTDOWN, a bounded drain followed by the cancel step, submit
 * returning -ESHUTDOWN after shutdown and from tasks run during the drain, a
 * submitter blocked in queue_wait woken by shutdown, the grace timeout (then
 * a second call, or destroy abandoning the worker), concurrent and repeated
 * calls, shutdown of an idle pool and of sleeping tasks being prompt, destroy
 * without shutdown, the stats identity afterwards, and bad arguments.
 *
 * Determinism: workers are parked on semaphores. To learn that a shutdown has
 * started without sleeping, a helper thread submits into a full queue with
 * queue_wait CTP_FOREVER while the only worker is parked: that submit can
 * only return once shutdown begins (-ESHUTDOWN). Timing is only checked as a
 * generous upper bound ("woken, not timed out") or as "not early". Only the
 * test's own thread calls assert_*.
 */

#include "fixtures.h"

/* ---- helpers ------------------------------------------------------------ */

/* A queued task that tries a submit while it runs. */
struct job {
	struct rec r;
	ctp_pool  *pool;
	atomic_int submit;
};

static int job_fn(void *arg, ctp_token *tok)
{
	struct job *j = arg;

	(void)tok;
	atomic_fetch_add(&j->r.ran, 1);
	atomic_store(&j->submit, ctp_pool_submit(j->pool, noop_fn, NULL, NULL,
	                                         NULL));
	return j->r.ret;
}

/*
 * The shutdown detector: a submit with queue_wait CTP_FOREVER into a full
 * queue whose only worker is parked returns only once shutdown has begun.
 * Then (when unpark is set) it releases the parked worker.
 */
struct probe {
	ctp_pool      *pool;
	struct parked *unpark;
	sem_t          returned;
	atomic_int     ret;
};

static void *probe_main(void *arg)
{
	struct probe *p = arg;
	ctp_task_opts o = { .queue_wait = CTP_FOREVER };

	atomic_store(&p->ret, ctp_pool_submit(p->pool, noop_fn, NULL, &o, NULL));
	tu_sem_post(&p->returned);
	if (p->unpark)
		tu_sem_post(&p->unpark->release);
	return NULL;
}

static pthread_t probe_start(struct probe *p, ctp_pool *pool,
                             struct parked *unpark)
{
	p->pool = pool;
	p->unpark = unpark;
	atomic_init(&p->ret, UNSET);
	tu_sem_init(&p->returned, 0);
	return tu_spawn(probe_main, p);
}

struct shutter {
	ctp_pool          *pool;
	int64_t            drain, grace;
	pthread_barrier_t *barrier;   /* may be NULL */
	atomic_int         ret;
	_Atomic int64_t    took_ns;
	sem_t              returned;
};

static void *shutter_main(void *arg)
{
	struct shutter *s = arg;

	if (s->barrier)
		pthread_barrier_wait(s->barrier);
	int64_t t0 = tu_now_ns();
	atomic_store(&s->ret, ctp_pool_shutdown(s->pool, s->drain, s->grace));
	atomic_store(&s->took_ns, tu_now_ns() - t0);
	tu_sem_post(&s->returned);
	return NULL;
}

static pthread_t shutter_start(struct shutter *s, ctp_pool *pool,
                               int64_t drain, int64_t grace,
                               pthread_barrier_t *barrier)
{
	s->pool = pool;
	s->drain = drain;
	s->grace = grace;
	s->barrier = barrier;
	atomic_init(&s->ret, UNSET);
	tu_sem_init(&s->returned, 0);
	return tu_spawn(shutter_main, s);
}

/* ---- drain -------------------------------------------------------------- */

/*
 * One parked worker, a full queue of N jobs, and a probe that releases the
 * worker once shutdown(drain, grace) has started: every job must run, and
 * every submit made during the drain fails with -ESHUTDOWN.
 */
static void drain_all_with(int64_t drain, int64_t grace)
{
	enum { N = 8 };
	ctp_pool *pool = pool_new(1, N);
	struct parked blk;
	struct job j[N];
	struct probe p;
	struct rec x;

	parked_init(&blk, 1);
	blk.pool = pool;
	rec_init(&x, 0);
	assert_int_equal(submit(pool, parked_fn, &blk, NO_OPTS, NULL), 0);
	tu_sem_wait(&blk.started);
	for (int i = 0; i < N; i++) {
		memset(&j[i], 0, sizeof(j[i]));
		rec_init(&j[i].r, 100 + i);
		j[i].pool = pool;
		atomic_init(&j[i].submit, UNSET);
		assert_int_equal(submit(pool, job_fn, &j[i], NO_OPTS, NULL), 0);
	}
	pthread_t th = probe_start(&p, pool, &blk);

	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_shutdown(pool, drain, grace), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(5)); /* the drain ended early */
	tu_join(th);
	assert_int_equal(p.ret, -ESHUTDOWN);

	/* every worker has exited, so every done has returned */
	assert_int_equal(blk.r.calls, 1);
	assert_int_equal(blk.r.status, 1);
	assert_int_equal(blk.reason, 0); /* undisturbed by the drain */
	assert_int_equal(blk.late_submit, -ESHUTDOWN);
	for (int i = 0; i < N; i++) {
		assert_int_equal(j[i].r.ran, 1);
		assert_int_equal(j[i].r.calls, 1);
		assert_int_equal(j[i].r.status, 100 + i);
		assert_int_equal(j[i].submit, -ESHUTDOWN);
	}
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.completed, N + 1);
	assert_int_equal(s.dropped, 0);
	assert_int_equal(s.threads, 0);
	assert_identity(&s);

	/* and after it returned */
	assert_int_equal(submit_rec(pool, &x, NO_OPTS, NULL), -ESHUTDOWN);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(x.ran, 0);
	assert_int_equal(x.calls, 0);
	for (int i = 0; i < N; i++)
		rec_fini(&j[i].r);
	rec_fini(&x);
	sem_destroy(&p.returned);
	parked_fini(&blk);
}

static void test_shutdown_drain_forever_runs_every_task(void **state)
{
	(void)state;
	drain_all_with(CTP_FOREVER, CTP_FOREVER);
}

static void test_shutdown_drain_ends_early_when_idle(void **state)
{
	(void)state;
	drain_all_with(CTP_SEC(30), CTP_SEC(30));
}

static void test_shutdown_huge_durations_drain_all(void **state)
{
	(void)state;
	drain_all_with(INT64_MAX, INT64_MAX);
}

static void test_shutdown_drop_all_reports_on_caller(void **state)
{
	(void)state;
	enum { N = 4 };
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper blk;
	struct rec q[N];
	ctp_task *tb = NULL, *tq[N];
	int st = UNSET;

	start_sleeper(pool, &blk, &tb);
	submit_recs(pool, q, N, tq);

	assert_int_equal(ctp_pool_shutdown(pool, 0, CTP_FOREVER), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(q[i].calls, 1);
		assert_int_equal(q[i].status, -ESHUTDOWN);
		assert_true(done_here(&q[i]));
		assert_int_equal(q[i].ran, 0);
		assert_int_equal(ctp_task_state(tq[i]), CTP_TASK_CANCELLED);
		assert_int_equal(ctp_task_wait(tq[i], 0, &st), 0);
		assert_int_equal(st, -ESHUTDOWN);
		assert_int_equal(ctp_task_cancel(tq[i]), -EALREADY);
	}
	/* the running task's token fired with -ESHUTDOWN */
	assert_int_equal(blk.ret, -ESHUTDOWN);
	assert_int_equal(blk.reason, -ESHUTDOWN);
	assert_int_equal(ctp_task_wait(tb, 0, &st), 0);
	assert_int_equal(st, 7);
	assert_int_equal(ctp_task_state(tb), CTP_TASK_DONE);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.dropped, N);
	assert_int_equal(s.completed, 1);
	assert_int_equal(s.threads, 0);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_task_release(tb);
	for (int i = 0; i < N; i++) {
		ctp_task_release(tq[i]);
		rec_fini(&q[i]);
	}
	sleeper_fini(&blk);
}

/* Drain 50 ms while the only worker sleeps until its token fires: the drain
 * lasts its full length, then the token fires and the queue is dropped. */
static void test_shutdown_bounded_drain_then_cancel(void **state)
{
	(void)state;
	enum { N = 3 };
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper blk;
	struct rec q[N];

	start_sleeper(pool, &blk, NULL);
	submit_recs(pool, q, N, NULL);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_shutdown(pool, CTP_MSEC(50), CTP_FOREVER), 0);
	int64_t el = tu_now_ns() - t0;
	assert_true(el >= CTP_MSEC(50));
	assert_true(el < CTP_SEC(5));
	assert_int_equal(blk.ret, -ESHUTDOWN);
	assert_true(blk.woke_ns - t0 >= CTP_MSEC(50)); /* not during the drain */
	assert_int_equal(blk.r.calls, 1);
	for (int i = 0; i < N; i++) {
		assert_int_equal(q[i].ran, 0);
		assert_int_equal(q[i].calls, 1);
		assert_int_equal(q[i].status, -ESHUTDOWN);
		assert_true(done_here(&q[i]));
	}
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.dropped, N);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++)
		rec_fini(&q[i]);
	sleeper_fini(&blk);
}

/* ---- submitters --------------------------------------------------------- */

static void test_shutdown_submit_after_shutdown_fails(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct rec x;
	ctp_task *t = NULL;

	rec_init(&x, 0);
	assert_int_equal(ctp_pool_shutdown(pool, CTP_FOREVER, CTP_FOREVER), 0);
	assert_int_equal(submit_rec(pool, &x, NO_OPTS, &t), -ESHUTDOWN);
	assert_int_equal(submit_rec(pool, &x,
	                 (ctp_task_opts){ .queue_wait = CTP_FOREVER }, NULL),
	                 -ESHUTDOWN);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(x.ran, 0);
	assert_int_equal(x.calls, 0);
	rec_fini(&x);
}

/* A submitter blocked in queue_wait CTP_FOREVER returns -ESHUTDOWN as soon
 * as shutdown starts, while the drain is still waiting on a parked worker. */
static void test_shutdown_wakes_blocked_submitter(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 1);
	struct parked blk;
	struct rec q;
	struct probe p;
	struct shutter sh;

	parked_init(&blk, 0);
	rec_init(&q, 0);
	assert_int_equal(submit(pool, parked_fn, &blk, NO_OPTS, NULL), 0);
	tu_sem_wait(&blk.started);
	assert_int_equal(submit_rec(pool, &q, NO_OPTS, NULL), 0);
	pthread_t pt = probe_start(&p, pool, NULL);
	pthread_t st = shutter_start(&sh, pool, CTP_FOREVER, CTP_FOREVER, NULL);

	bool woke = sem_wait_for(&p.returned, BOUND);
	bool shut_early = sem_wait_for(&sh.returned, 0);
	unpark(&blk, 1);
	if (!woke)
		fail_msg("a blocked submit was not woken by shutdown");
	tu_join(pt);
	tu_join(st);
	assert_false(shut_early); /* the drain was still waiting on blk */
	assert_int_equal(p.ret, -ESHUTDOWN);
	assert_int_equal(sh.ret, 0);
	assert_int_equal(q.ran, 1); /* drained */
	assert_int_equal(q.calls, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&p.returned);
	sem_destroy(&sh.returned);
	rec_fini(&q);
	parked_fini(&blk);
}

/* ---- grace -------------------------------------------------------------- */

static void test_shutdown_grace_times_out_then_second_call_succeeds(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked ign;
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&ign, 3);
	assert_int_equal(submit(pool, parked_fn, &ign, NO_OPTS, &t), 0);
	tu_sem_wait(&ign.started);

	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_shutdown(pool, 0, CTP_MSEC(50)), -ETIMEDOUT);
	int64_t el = tu_now_ns() - t0;
	assert_true(el >= CTP_MSEC(50));
	assert_true(el < CTP_SEC(5));
	assert_int_equal(ctp_task_state(t), CTP_TASK_RUNNING);
	/* later calls wait for their own grace, from their own start */
	assert_int_equal(ctp_pool_shutdown(pool, 0, 0), -ETIMEDOUT);
	t0 = tu_now_ns();
	assert_int_equal(ctp_pool_shutdown(pool, CTP_FOREVER, CTP_MSEC(20)),
	                 -ETIMEDOUT);
	assert_true(tu_now_ns() - t0 >= CTP_MSEC(20));

	unpark(&ign, 1);
	assert_int_equal(ctp_pool_shutdown(pool, 0, CTP_FOREVER), 0);
	assert_int_equal(ign.r.calls, 1);
	assert_int_equal(ign.r.status, 3);
	assert_int_equal(ign.reason, -ESHUTDOWN); /* its token had fired */
	assert_int_equal(ctp_task_wait(t, 0, &st), 0);
	assert_int_equal(st, 3);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.threads, 0);
	assert_int_equal(s.completed, 1);
	assert_identity(&s);
	assert_int_equal(ctp_pool_shutdown(pool, 0, 0), 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_task_release(t);
	parked_fini(&ign);
}

struct destroyer {
	ctp_pool       *pool;
	atomic_int      ret;
	_Atomic int64_t took_ns;
	sem_t           returned;
};

static void *destroyer_main(void *arg)
{
	struct destroyer *d = arg;
	int64_t t0 = tu_now_ns();

	atomic_store(&d->ret, ctp_pool_destroy(d->pool));
	atomic_store(&d->took_ns, tu_now_ns() - t0);
	tu_sem_post(&d->returned);
	return NULL;
}

/* After -ETIMEDOUT, destroy returns at once and the abandoned worker frees
 * the pool when its task finally returns. The test waits for that thread to
 * be gone so LSan sees the final state. */
static void test_shutdown_grace_times_out_then_destroy_abandons(void **state)
{
	(void)state;
	tu_threads base;
	char left[256];
	int now = -1;
	int baseline = tu_threads_baseline(&base);
	ctp_pool *pool = pool_new(1, 0);
	struct parked ign;
	struct destroyer d = { .pool = pool };
	ctp_task *t = NULL;
	int st = UNSET;

	parked_init(&ign, 3);
	atomic_init(&d.ret, UNSET);
	tu_sem_init(&d.returned, 0);
	assert_int_equal(submit(pool, parked_fn, &ign, NO_OPTS, &t), 0);
	tu_sem_wait(&ign.started);
	assert_int_equal(ctp_pool_shutdown(pool, 0, CTP_MSEC(50)), -ETIMEDOUT);

	pthread_t th = tu_spawn(destroyer_main, &d);
	bool returned = sem_wait_for(&d.returned, BOUND);
	unpark(&ign, 1); /* let the abandoned task finish */
	tu_join(th);
	assert_true(returned);
	assert_int_equal(d.ret, 0);
	assert_true(d.took_ns < CTP_SEC(1));

	tu_sem_wait(&ign.r.done_sem);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0); /* handle outlives */
	assert_int_equal(st, 3);
	assert_int_equal(ign.r.calls, 1);
	assert_int_equal(ign.reason, -ESHUTDOWN);
	ctp_task_release(t);

	/* the worker exits on its own; bounded wait for it to be gone */
	int extra = tu_threads_back_to(&base, BOUND, &now, left, sizeof(left));
	if (extra != 0)
		print_error("threads %d -> %d, left: %s\n", baseline, now, left);
	assert_int_equal(extra, 0);
	sem_destroy(&d.returned);
	parked_fini(&ign);
}

/* ---- concurrent and repeated calls -------------------------------------- */

static void test_shutdown_concurrent_callers(void **state)
{
	(void)state;
	enum { N = 3 };
	ctp_pool *pool = pool_new(2, 0);
	struct sleeper s[2];
	struct rec q[N];
	struct shutter sh[2];
	pthread_t th[2];
	pthread_barrier_t barrier;

	for (int i = 0; i < 2; i++) {
		sleeper_init(&s[i], CTP_FOREVER);
		assert_int_equal(submit(pool, sleeper_fn, &s[i], NO_OPTS, NULL), 0);
	}
	for (int i = 0; i < 2; i++)
		tu_sem_wait(&s[i].started);
	submit_recs(pool, q, N, NULL);
	assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
	for (int i = 0; i < 2; i++)
		th[i] = shutter_start(&sh[i], pool, 0, BOUND, &barrier);
	for (int i = 0; i < 2; i++)
		tu_join(th[i]);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(sh[i].ret, 0);
		assert_int_equal(s[i].ret, -ESHUTDOWN);
		assert_int_equal(s[i].r.calls, 1);
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(q[i].calls, 1);
		assert_int_equal(q[i].status, -ESHUTDOWN);
		assert_int_equal(q[i].ran, 0);
		/* on one of the two shutdown callers */
		assert_true(pthread_equal(q[i].done_thread, th[0]) ||
		            pthread_equal(q[i].done_thread, th[1]));
	}
	ctp_stats st = stats_of(pool);
	assert_int_equal(st.dropped, N);
	assert_int_equal(st.threads, 0);
	assert_identity(&st);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	pthread_barrier_destroy(&barrier);
	for (int i = 0; i < 2; i++) {
		sem_destroy(&sh[i].returned);
		sleeper_fini(&s[i]);
	}
	for (int i = 0; i < N; i++)
		rec_fini(&q[i]);
}

static void test_shutdown_twice_sequentially(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 0);
	struct rec r;

	rec_init(&r, 0);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, NULL), 0);
	assert_int_equal(ctp_pool_shutdown(pool, CTP_FOREVER, CTP_FOREVER), 0);
	assert_int_equal(r.calls, 1);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_shutdown(pool, CTP_FOREVER, CTP_FOREVER), 0);
	assert_int_equal(ctp_pool_shutdown(pool, 0, 0), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(1));
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(r.calls, 1);
	rec_fini(&r);
}

/* ---- promptness --------------------------------------------------------- */

/* Idle workers notice shutdown at once (not at some periodic timeout): it
 * should take ~100 us; 500 ms is a generous bound. */
static void test_shutdown_idle_pool_is_prompt(void **state)
{
	(void)state;
	for (int round = 0; round < 3; round++) {
		ctp_pool *pool = pool_new(4, 0);
		int64_t drain = round == 0 ? 0 : CTP_FOREVER;

		int64_t t0 = tu_now_ns();
		assert_int_equal(ctp_pool_shutdown(pool, drain, CTP_FOREVER), 0);
		int64_t el = tu_now_ns() - t0;
		assert_true(el < CTP_MSEC(500));
		assert_int_equal(stats_of(pool).threads, 0);
		assert_int_equal(ctp_pool_destroy(pool), 0);
	}
	/* destroy alone, too */
	ctp_pool *pool = pool_new(4, 0);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_true(tu_now_ns() - t0 < CTP_MSEC(500));
}

static void test_shutdown_wakes_sleeping_tasks(void **state)
{
	(void)state;
	enum { N = 4 };
	ctp_pool *pool = pool_new(N, 0);
	struct sleeper s[N];

	for (int i = 0; i < N; i++) {
		sleeper_init(&s[i], CTP_SEC(30));
		assert_int_equal(submit(pool, sleeper_fn, &s[i], NO_OPTS, NULL), 0);
	}
	for (int i = 0; i < N; i++)
		tu_sem_wait(&s[i].started);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_shutdown(pool, 0, CTP_FOREVER), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(5)); /* woken, not timed out */
	for (int i = 0; i < N; i++) {
		assert_int_equal(s[i].ret, -ESHUTDOWN);
		assert_int_equal(s[i].reason, -ESHUTDOWN);
		assert_int_equal(s[i].r.calls, 1);
		assert_int_equal(s[i].r.status, 7);
	}
	assert_int_equal(stats_of(pool).completed, N);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++)
		sleeper_fini(&s[i]);
}

/* ---- destroy ------------------------------------------------------------ */

static void test_shutdown_destroy_without_shutdown_drops_and_fires(void **state)
{
	(void)state;
	enum { N = 3 };
	ctp_pool *pool = pool_new(1, 0);
	struct sleeper blk;
	struct rec q[N];
	ctp_task *tb = NULL, *tq[N];
	int st = UNSET;

	start_sleeper(pool, &blk, &tb);
	submit_recs(pool, q, N, tq);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_true(tu_now_ns() - t0 < CTP_SEC(5));
	for (int i = 0; i < N; i++) {
		assert_int_equal(q[i].calls, 1);
		assert_int_equal(q[i].status, -ESHUTDOWN);
		assert_true(done_here(&q[i]));
		assert_int_equal(q[i].ran, 0);
		assert_int_equal(ctp_task_state(tq[i]), CTP_TASK_CANCELLED);
		assert_int_equal(ctp_task_wait(tq[i], 0, &st), 0);
		assert_int_equal(st, -ESHUTDOWN);
		ctp_task_release(tq[i]);
		rec_fini(&q[i]);
	}
	assert_int_equal(blk.ret, -ESHUTDOWN);
	assert_int_equal(blk.r.calls, 1);
	assert_int_equal(ctp_task_wait(tb, 0, &st), 0);
	assert_int_equal(st, 7);
	ctp_task_release(tb);
	sleeper_fini(&blk);
}

/* ---- stats and arguments ------------------------------------------------ */

static void test_shutdown_stats_identity(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec quick[2], can, late, drop[2];
	struct sleeper blk;
	ctp_task *tc = NULL;

	submit_recs(pool, quick, 2, NULL);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	start_sleeper(pool, &blk, NULL);
	rec_init(&can, 0);
	assert_int_equal(submit_rec(pool, &can, NO_OPTS, &tc), 0);
	assert_int_equal(ctp_task_cancel(tc), 0);
	rec_init(&late, 0);
	assert_int_equal(submit_rec(pool, &late,
	                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, NULL), 0);
	tu_sem_wait(&late.done_sem);
	submit_recs(pool, drop, 2, NULL);
	assert_int_equal(ctp_pool_shutdown(pool, 0, CTP_FOREVER), 0);

	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 7);
	assert_int_equal(s.completed, 3);
	assert_int_equal(s.cancelled, 1);
	assert_int_equal(s.timed_out, 1);
	assert_int_equal(s.dropped, 2);
	assert_int_equal(s.threads, 0);
	assert_identity(&s);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(can.status, -ECANCELED);
	assert_int_equal(late.status, -ETIMEDOUT);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(drop[i].status, -ESHUTDOWN);
		rec_fini(&drop[i]);
		rec_fini(&quick[i]);
	}
	ctp_task_release(tc);
	rec_fini(&can);
	rec_fini(&late);
	sleeper_fini(&blk);
}

static void test_shutdown_bad_args_einval(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct rec r;
	ctp_task *t = NULL;

	rec_init(&r, 4);
	assert_int_equal(ctp_pool_shutdown(pool, -2, CTP_FOREVER), -EINVAL);
	assert_int_equal(ctp_pool_shutdown(pool, 0, -2), -EINVAL);
	assert_int_equal(ctp_pool_shutdown(pool, INT64_MIN, 0), -EINVAL);
	assert_int_equal(ctp_pool_shutdown(pool, CTP_FOREVER, CTP_MSEC(-1)),
	                 -EINVAL);
	assert_int_equal(ctp_pool_shutdown(NULL, 0, 0), -EINVAL);
	assert_int_equal(ctp_pool_shutdown(NULL, CTP_FOREVER, CTP_FOREVER),
	                 -EINVAL);
	/* none of these started a shutdown */
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, NULL), 0);
	assert_int_equal(r.status, 4);
	assert_int_equal(stats_of(pool).threads, 1);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shutdown_drain_forever_runs_every_task),
		cmocka_unit_test(test_shutdown_drain_ends_early_when_idle),
		cmocka_unit_test(test_shutdown_huge_durations_drain_all),
		cmocka_unit_test(test_shutdown_drop_all_reports_on_caller),
		cmocka_unit_test(test_shutdown_bounded_drain_then_cancel),
		cmocka_unit_test(test_shutdown_submit_after_shutdown_fails),
		cmocka_unit_test(test_shutdown_wakes_blocked_submitter),
		cmocka_unit_test(test_shutdown_grace_times_out_then_second_call_succeeds),
		cmocka_unit_test(test_shutdown_grace_times_out_then_destroy_abandons),
		cmocka_unit_test(test_shutdown_concurrent_callers),
		cmocka_unit_test(test_shutdown_twice_sequentially),
		cmocka_unit_test(test_shutdown_idle_pool_is_prompt),
		cmocka_unit_test(test_shutdown_wakes_sleeping_tasks),
		cmocka_unit_test(test_shutdown_destroy_without_shutdown_drops_and_fires),
		cmocka_unit_test(test_shutdown_stats_identity),
		cmocka_unit_test(test_shutdown_bad_args_einval),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
