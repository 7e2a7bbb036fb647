/*
 * Hostile suite: callers that do what a careless or unlucky program does,
 * at the worst moment, many times over.
 *
 *   cancel_one_handle_from_8_threads   8 cancels of one handle at once
 *   cancel_after_done_twice            cancels after the task finished
 *   task_cancels_itself_and_sibling    a task cancels itself and a queued
 *                                      sibling from its own worker
 *   parent_cancel_mid_run_bounds_executions
 *                                      a group cancelled while it runs
 *   token_trees_released_in_random_order
 *                                      random token trees, random releases
 *   handle_released_while_worker_finishes
 *   timed_waits_edge_values            0, CTP_FOREVER, INT64_MAX, -2,
 *                                      INT64_MIN on every timed wait
 *   item_arriving_as_pop_times_out     lost or doubled items at a timeout
 *   reversed_enqueues_with_idle_workers
 *                                      lost wake-ups with idle workers and
 *                                      blocked consumers
 *   create_destroy_100k                threads come back to the baseline
 *   huge_counts_and_capacities         limits are -EINVAL, never a crash
 *   fork_with_live_pool                fork() and exit in the child
 *
 * Rules: events are ordered with semaphores, barriers and atomics, never
 * sleeps. Only two loops wait on the kernel rather than on the library:
 * wait_blocked() polls /proc until a thread sleeps in a call (so that a test
 * really races a wake-up against a sleeper), and the thread count and
 * waitpid() loops give the kernel a bounded time to reap. Worker and helper
 * threads only record; checks run on the test's own thread, counted by
 * CHECK so that a failing round still cleans up, and each test asserts its
 * failure count is 0 at the end.
 *
 * CTP_STRESS_SCALE=<n> divides every iteration count by n (default 1), with
 * a floor of a few iterations per case.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctpool.h"
#include "testutil.h"
#include "fixtures.h"

/* ---- sanitizers --------------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__)
#define HOSTILE_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define HOSTILE_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOSTILE_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define HOSTILE_TSAN 1
#endif
#endif

/* ---- helpers ------------------------------------------------------------ */

static int failures; /* test thread only */


static double secs_since(int64_t t0)
{
	return (double)(tu_now_ns() - t0) / 1e9;
}


static unsigned rng_below(uint32_t *s, unsigned n)
{
	return tu_rng_next(s) % n;
}

/* Log-uniform in [0, 512) pauses. */
static unsigned rng_delay(uint32_t *s)
{
	unsigned bits = tu_rng_next(s) % 10;

	return tu_rng_next(s) & ((1u << bits) - 1);
}

static void barrier_init(pthread_barrier_t *b, unsigned n)
{
	if (pthread_barrier_init(b, NULL, n) != 0)
		abort();
}

static void barrier_wait(pthread_barrier_t *b)
{
	int rc = pthread_barrier_wait(b);

	if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD)
		abort();
}

static pid_t my_tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* The scheduler state of one of our threads ('R', 'S', ...), '?' if unknown. */
static char thread_state(pid_t tid)
{
	char    path[64], buf[512];
	char   *p;
	ssize_t n;
	int     fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' ? p[2] : '?';
}

/* Waits (bounded) until thread tid sleeps in the kernel. Callers make the
 * thread announce itself right before the call under test, so a sleep seen
 * here is that call blocking: the event that follows races a real sleeper,
 * not one still on its way in. This polls the kernel; it orders nothing. */
static bool wait_blocked(pid_t tid)
{
	int64_t limit = tu_now_ns() + BOUND;

	while (thread_state(tid) != 'S') {
		if (tu_now_ns() > limit)
			return false;
		sched_yield();
	}
	return true;
}

/* A gate task: holds its worker until gate_open. Detached, no done. */
static int gate_fn(void *arg, ctp_token *tok)
{
	(void)tok;
	tu_sem_wait(arg);
	return 0;
}

/* ---- cancel one handle from 8 threads ----------------------------------- */

#define C8_THREADS 8
#define C8_RAN     8088

enum { C8_OPEN_AT_START, C8_OPEN_BEFORE, C8_OPEN_AFTER };

struct c8_target {
	atomic_int ran;
	atomic_int sleep_rc;
	atomic_int calls;
	atomic_int status;
	pthread_t  done_thread;
};

struct c8 {
	pthread_barrier_t start, end; /* C8_THREADS cancellers + the test */
	ctp_task         *task;       /* written before start, read after */
	atomic_int        quit;
	atomic_int        rc[C8_THREADS];
	atomic_uint       jitter[C8_THREADS]; /* pauses before the cancel */
};

struct c8_arg {
	struct c8 *c;
	int        idx;
};

static int c8_fn(void *arg, ctp_token *tok)
{
	struct c8_target *t = arg;

	atomic_fetch_add(&t->ran, 1);
	/* Stays running until a cancel answers -EINPROGRESS (bounded). */
	atomic_store(&t->sleep_rc, ctp_token_sleep(tok, BOUND));
	return C8_RAN;
}

static void c8_done(void *arg, int status)
{
	struct c8_target *t = arg;

	t->done_thread = pthread_self();
	atomic_store(&t->status, status);
	atomic_fetch_add(&t->calls, 1);
}

static void *c8_canceller(void *arg)
{
	struct c8_arg *a = arg;
	struct c8     *c = a->c;

	for (;;) {
		barrier_wait(&c->start);
		if (atomic_load(&c->quit))
			break;
		tu_delay_loop(atomic_load(&c->jitter[a->idx]));
		atomic_store(&c->rc[a->idx], ctp_task_cancel(c->task));
		barrier_wait(&c->end);
	}
	return NULL;
}

/* Checks one round; returns the winning answer (0 or -EINPROGRESS) or 1. */
static int c8_check(unsigned long r, int mode, struct c8 *c,
                    struct c8_target *t, pthread_t *th, int wait_rc,
                    int status, int state)
{
	int win = -1, already = 0, answer = 1;

	for (int i = 0; i < C8_THREADS; i++) {
		int rc = atomic_load(&c->rc[i]);

		if (rc == 0 || rc == -EINPROGRESS) {
			CHECK(win < 0, "round %lu: threads %d and %d both won "
			      "(%d, %d)", r, win, i, atomic_load(&c->rc[win]),
			      rc);
			win = i;
			answer = rc;
		} else if (rc == -EALREADY) {
			already++;
		} else {
			CHECK(0, "round %lu: thread %d: cancel returned %d (%s)",
			      r, i, rc, ctp_strerror(rc));
		}
	}
	CHECK(win >= 0 && already == C8_THREADS - 1,
	      "round %lu: %d x -EALREADY, winner %d", r, already, win);
	CHECK(wait_rc == 0, "round %lu: wait: %s", r, ctp_strerror(wait_rc));
	CHECK(atomic_load(&t->calls) == 1, "round %lu: done called %d times",
	      r, atomic_load(&t->calls));
	CHECK(status == atomic_load(&t->status), "round %lu: status %d/%d", r,
	      status, atomic_load(&t->status));
	if (mode == C8_OPEN_AFTER)
		CHECK(answer == 0, "round %lu: task surely queued, cancel "
		      "answered %d", r, answer);
	if (answer == 0) {
		CHECK(atomic_load(&t->ran) == 0, "round %lu: cancel 0 but fn "
		      "ran", r);
		CHECK(status == -ECANCELED, "round %lu: status %d", r, status);
		CHECK(state == CTP_TASK_CANCELLED, "round %lu: state %d", r,
		      state);
		CHECK(pthread_equal(t->done_thread, th[win]),
		      "round %lu: done(-ECANCELED) not on the winner", r);
	} else if (answer == -EINPROGRESS) {
		CHECK(atomic_load(&t->ran) == 1, "round %lu: -EINPROGRESS, ran "
		      "%d", r, atomic_load(&t->ran));
		CHECK(atomic_load(&t->sleep_rc) == -ECANCELED,
		      "round %lu: -EINPROGRESS but the token sleep gave %d", r,
		      atomic_load(&t->sleep_rc));
		CHECK(status == C8_RAN, "round %lu: status %d", r, status);
		CHECK(state == CTP_TASK_DONE, "round %lu: state %d", r, state);
	}
	return answer;
}

static void test_hostile_cancel_one_handle_from_8_threads(void **state)
{
	ctp_pool_opts  popts = { .threads = 1, .name = "c8" };
	ctp_task_opts  topts = { .done = c8_done };
	ctp_pool      *pool = NULL;
	struct c8      c;
	struct c8_arg  args[C8_THREADS];
	pthread_t      th[C8_THREADS];
	sem_t          gate;
	ctp_stats      st;
	unsigned long  rounds = tu_scaled(20000, 50), r, n0 = 0, nin = 0;
	uint32_t       rng = 0x1234567u;
	int64_t        t0 = tu_now_ns();

	(void)state;
	failures = 0;
	memset(&c, 0, sizeof(c));
	barrier_init(&c.start, C8_THREADS + 1);
	barrier_init(&c.end, C8_THREADS + 1);
	tu_sem_init(&gate, 0);
	assert_int_equal(ctp_pool_create(&pool, &popts), 0);
	for (int i = 0; i < C8_THREADS; i++) {
		args[i] = (struct c8_arg){ .c = &c, .idx = i };
		th[i] = tu_spawn(c8_canceller, &args[i]);
	}
	for (r = 0; r < rounds && failures == 0; r++) {
		struct c8_target t;
		int              mode = (int)(r % 3), rc, wait_rc, status = UNSET;
		int              answer;

		memset(&t, 0, sizeof(t));
		atomic_init(&t.sleep_rc, UNSET);
		atomic_init(&t.status, UNSET);
		for (int i = 0; i < C8_THREADS; i++) {
			atomic_store(&c.rc[i], UNSET);
			atomic_store(&c.jitter[i], rng_delay(&rng) / 4);
		}
		rc = ctp_pool_submit(pool, gate_fn, &gate, NULL, NULL);
		CHECK(rc == 0, "round %lu: gate: %s", r, ctp_strerror(rc));
		rc = ctp_pool_submit(pool, c8_fn, &t, &topts, &c.task);
		CHECK(rc == 0, "round %lu: submit: %s", r, ctp_strerror(rc));
		if (rc != 0) {
			tu_sem_post(&gate);
			break;
		}
		if (mode == C8_OPEN_BEFORE)
			tu_sem_post(&gate);
		barrier_wait(&c.start);
		if (mode == C8_OPEN_AT_START)
			tu_sem_post(&gate);
		barrier_wait(&c.end);
		if (mode == C8_OPEN_AFTER)
			tu_sem_post(&gate);
		wait_rc = ctp_task_wait(c.task, CTP_SEC(30), &status);
		if (wait_rc != 0) {
			/* t is on this stack: never leave it to the pool. */
			print_error("round %lu: task never finished: %s\n", r,
			            ctp_strerror(wait_rc));
			abort();
		}
		answer = c8_check(r, mode, &c, &t, th, wait_rc, status,
		                  ctp_task_state(c.task));
		ctp_task_release(c.task);
		n0 += answer == 0;
		nin += answer == -EINPROGRESS;
	}
	atomic_store(&c.quit, 1);
	barrier_wait(&c.start);
	for (int i = 0; i < C8_THREADS; i++)
		tu_join(th[i]);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_pool_stats(pool, &st);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	pthread_barrier_destroy(&c.start);
	pthread_barrier_destroy(&c.end);
	sem_destroy(&gate);
	print_message("cancel_one_handle_from_8_threads: %lu rounds in %.2f s: "
	              "0=%lu -EINPROGRESS=%lu\n", r, secs_since(t0), n0, nin);
	assert_int_equal(failures, 0);
	assert_int_equal(r, rounds);
	assert_int_equal(n0 + nin, rounds);
	assert_int_equal(st.submitted, 2 * rounds);
	assert_int_equal(st.cancelled, n0);
	assert_int_equal(st.completed, rounds + nin);
	assert_identity(&st);
}

/* ---- cancel after done -------------------------------------------------- */

static void test_hostile_cancel_after_done_twice(void **state)
{
	ctp_pool     *pool = pool_new(2, 0);
	unsigned long rounds = tu_scaled(2000, 20);
	ctp_stats     st;

	(void)state;
	failures = 0;
	for (unsigned long i = 0; i < rounds && failures == 0; i++) {
		struct rec r;
		ctp_task  *t = NULL;
		int        ret = (int)(i % 7) - 3; /* negatives are statuses too */
		int        status = UNSET, status2 = UNSET, rc1, rc2;

		rec_init(&r, ret);
		assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
		assert_int_equal(ctp_task_wait(t, BOUND, &status), 0);
		rc1 = ctp_task_cancel(t);
		rc2 = ctp_task_cancel(t);
		CHECK(rc1 == -EALREADY && rc2 == -EALREADY,
		      "task %lu: cancels after done gave %d, %d", i, rc1, rc2);
		CHECK(ctp_task_state(t) == CTP_TASK_DONE, "task %lu: state %d",
		      i, ctp_task_state(t));
		CHECK(ctp_task_wait(t, 0, &status2) == 0, "task %lu: re-wait",
		      i);
		CHECK(status == ret && status2 == ret &&
		      atomic_load(&r.status) == ret,
		      "task %lu: status %d then %d, done got %d, want %d", i,
		      status, status2, atomic_load(&r.status), ret);
		CHECK(atomic_load(&r.calls) == 1 && atomic_load(&r.ran) == 1,
		      "task %lu: done %d ran %d", i, atomic_load(&r.calls),
		      atomic_load(&r.ran));
		ctp_task_release(t);
		rec_fini(&r);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	st = stats_of(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(failures, 0);
	assert_int_equal(st.submitted, rounds);
	assert_int_equal(st.completed, rounds);
	assert_identity(&st);
}

/* ---- a task cancels itself and a queued sibling ------------------------- */

#define SC_RAN 11

struct sc {
	struct rec  r;        /* the cancelling task; first member */
	struct rec *sibrec;   /* the sibling's record */
	ctp_task   *self;     /* filled before go */
	ctp_task   *sib;
	int         sib_first;
	sem_t       go;
	atomic_int  self_rc, self_rc2, sib_rc, fired, reason, sleep_rc;
	atomic_int  sib_calls, sib_status, sib_done_here;
};

static void sc_cancel_sibling(struct sc *s)
{
	atomic_store(&s->sib_rc, ctp_task_cancel(s->sib));
	/* Its done has returned, on this thread, before the cancel did. */
	atomic_store(&s->sib_calls, atomic_load(&s->sibrec->calls));
	atomic_store(&s->sib_status, atomic_load(&s->sibrec->status));
	atomic_store(&s->sib_done_here, done_here(s->sibrec));
}

static int sc_fn(void *arg, ctp_token *tok)
{
	struct sc *s = arg;

	atomic_fetch_add(&s->r.ran, 1);
	tu_sem_wait(&s->go);
	if (s->sib_first)
		sc_cancel_sibling(s);
	atomic_store(&s->self_rc, ctp_task_cancel(s->self));
	atomic_store(&s->fired, ctp_token_cancelled(tok));
	atomic_store(&s->reason, ctp_token_reason(tok));
	atomic_store(&s->sleep_rc, ctp_token_sleep(tok, BOUND));
	atomic_store(&s->self_rc2, ctp_task_cancel(s->self));
	if (!s->sib_first)
		sc_cancel_sibling(s);
	return s->r.ret;
}

static void sc_check(unsigned long i, struct sc *s, struct rec *sib,
                     int st_self, int st_sib, int status)
{
	CHECK(atomic_load(&s->self_rc) == -EINPROGRESS,
	      "round %lu: self cancel %d", i, atomic_load(&s->self_rc));
	CHECK(atomic_load(&s->self_rc2) == -EALREADY,
	      "round %lu: second self cancel %d", i,
	      atomic_load(&s->self_rc2));
	CHECK(atomic_load(&s->fired) && atomic_load(&s->reason) == -ECANCELED &&
	      atomic_load(&s->sleep_rc) == -ECANCELED,
	      "round %lu: own token fired %d reason %d sleep %d", i,
	      atomic_load(&s->fired), atomic_load(&s->reason),
	      atomic_load(&s->sleep_rc));
	CHECK(atomic_load(&s->sib_rc) == 0, "round %lu: sibling cancel %d", i,
	      atomic_load(&s->sib_rc));
	CHECK(atomic_load(&s->sib_calls) == 1 &&
	      atomic_load(&s->sib_status) == -ECANCELED &&
	      atomic_load(&s->sib_done_here),
	      "round %lu: at cancel return sibling done %d status %d here %d",
	      i, atomic_load(&s->sib_calls), atomic_load(&s->sib_status),
	      atomic_load(&s->sib_done_here));
	CHECK(atomic_load(&sib->ran) == 0 && atomic_load(&sib->calls) == 1,
	      "round %lu: sibling ran %d done %d", i, atomic_load(&sib->ran),
	      atomic_load(&sib->calls));
	CHECK(st_self == CTP_TASK_DONE && st_sib == CTP_TASK_CANCELLED,
	      "round %lu: states %d %d", i, st_self, st_sib);
	CHECK(status == SC_RAN && atomic_load(&s->r.calls) == 1 &&
	      atomic_load(&s->r.status) == SC_RAN,
	      "round %lu: status %d, done %d with %d", i, status,
	      atomic_load(&s->r.calls), atomic_load(&s->r.status));
}

static void test_hostile_task_cancels_itself_and_sibling(void **state)
{
	ctp_pool     *pool = pool_new(1, 0);
	unsigned long rounds = tu_scaled(5000, 20);
	ctp_stats     st;

	(void)state;
	failures = 0;
	for (unsigned long i = 0; i < rounds && failures == 0; i++) {
		struct sc  s;
		struct rec sib;
		int        status = UNSET;

		memset(&s, 0, sizeof(s));
		rec_init(&s.r, SC_RAN);
		rec_init(&sib, 99);
		tu_sem_init(&s.go, 0);
		s.sibrec = &sib;
		s.sib_first = (int)(i & 1);
		assert_int_equal(submit(pool, sc_fn, &s, NO_OPTS, &s.self), 0);
		assert_int_equal(submit_rec(pool, &sib, NO_OPTS, &s.sib), 0);
		tu_sem_post(&s.go); /* the handles are in s now */
		assert_int_equal(ctp_task_wait(s.self, BOUND, &status), 0);
		assert_int_equal(ctp_task_wait(s.sib, BOUND, NULL), 0);
		sc_check(i, &s, &sib, ctp_task_state(s.self),
		         ctp_task_state(s.sib), status);
		ctp_task_release(s.self);
		ctp_task_release(s.sib);
		sem_destroy(&s.go);
		rec_fini(&s.r);
		rec_fini(&sib);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	st = stats_of(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(failures, 0);
	assert_int_equal(st.submitted, 2 * rounds);
	assert_int_equal(st.completed, rounds);
	assert_int_equal(st.cancelled, rounds);
	assert_identity(&st);
}

/* ---- parent cancelled mid-run ------------------------------------------- */

#define PC_THREADS 4
#define PC_RAN     777

/* Every task counts itself in `executed` as it starts, then looks at
 * `freeze`. The test sets freeze, reads executed_at_cancel and cancels: a
 * task whose count came after that read saw freeze (both seq_cst), and it
 * holds its worker until the cancel wakes it. So at most PC_THREADS tasks
 * can start after the read, however late the cancel lands. Until freeze,
 * tasks run freely and workers race the cancel for the queue. */
struct pc {
	atomic_int executed;
	atomic_int freeze;
	int        threshold; /* the task counted here posts hit */
	sem_t      hit;
};

struct pc_rec {
	struct pc *pc;
	atomic_int ran, calls, status;
};

static int pc_fn(void *arg, ctp_token *tok)
{
	struct pc_rec *r = arg;
	int            n = atomic_fetch_add(&r->pc->executed, 1) + 1;

	atomic_store(&r->ran, 1);
	if (n == r->pc->threshold)
		tu_sem_post(&r->pc->hit);
	if (atomic_load(&r->pc->freeze))
		(void)ctp_token_sleep(tok, BOUND);
	else
		(void)ctp_token_sleep(tok, CTP_USEC(20));
	return PC_RAN;
}

static void pc_done(void *arg, int status)
{
	struct pc_rec *r = arg;

	atomic_store(&r->status, status);
	atomic_fetch_add(&r->calls, 1);
}

static void pc_round(unsigned long round, size_t n, uint32_t *rng)
{
	ctp_pool_opts  popts = { .threads = PC_THREADS, .queue_capacity = n,
	                         .name = "pc" };
	ctp_task_opts  topts = { .done = pc_done };
	struct pc      pc;
	struct pc_rec *recs = calloc(n, sizeof(*recs));
	ctp_pool      *pool = NULL;
	ctp_token     *parent = NULL;
	ctp_stats      st;
	int            e, x, rc;
	size_t         ran = 0;

	CHECK(recs != NULL, "calloc");
	if (recs == NULL)
		return;
	memset(&pc, 0, sizeof(pc));
	tu_sem_init(&pc.hit, 0);
	pc.threshold = 1 + (int)rng_below(rng, (unsigned)n / 2);
	assert_int_equal(ctp_pool_create(&pool, &popts), 0);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	topts.parent = parent;
	for (size_t i = 0; i < n; i++) {
		recs[i].pc = &pc;
		atomic_init(&recs[i].status, UNSET);
		rc = ctp_pool_submit(pool, pc_fn, &recs[i], &topts, NULL);
		CHECK(rc == 0, "round %lu: submit %zu: %s", round, i,
		      ctp_strerror(rc));
	}
	tu_sem_wait(&pc.hit);
	atomic_store(&pc.freeze, 1);
	e = atomic_load(&pc.executed); /* executed_at_cancel */
	rc = ctp_token_cancel(parent);
	CHECK(rc == 0, "round %lu: cancel: %s", round, ctp_strerror(rc));
	rc = ctp_pool_wait_idle(pool, BOUND);
	CHECK(rc == 0, "round %lu: wait_idle: %s", round, ctp_strerror(rc));
	x = atomic_load(&pc.executed);
	ctp_token_release(parent);
	st = stats_of(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);

	CHECK(x >= e && x <= e + PC_THREADS, "round %lu: executed %d, %d at "
	      "the cancel", round, x, e);
	for (size_t i = 0; i < n; i++) {
		int calls = atomic_load(&recs[i].calls);
		int status = atomic_load(&recs[i].status);
		int did = atomic_load(&recs[i].ran);

		ran += did;
		CHECK(calls == 1, "round %lu: task %zu: done %d times", round,
		      i, calls);
		CHECK(status == (did ? PC_RAN : -ECANCELED),
		      "round %lu: task %zu: ran %d status %d", round, i, did,
		      status);
	}
	CHECK(ran == (size_t)x, "round %lu: %zu ran, executed %d", round, ran,
	      x);
	CHECK(st.submitted == n && st.completed == ran &&
	      st.cancelled == n - ran &&
	      st.timed_out + st.dropped + st.rejected == 0 &&
	      st.queued + st.running == 0,
	      "round %lu: stats submitted %llu completed %llu cancelled %llu "
	      "(ran %zu of %zu)", round, (unsigned long long)st.submitted,
	      (unsigned long long)st.completed,
	      (unsigned long long)st.cancelled, ran, n);
	print_message("  round %lu: %zu tasks, threshold %d, executed %d at "
	              "the cancel, %d in all\n", round, n, pc.threshold, e, x);
	sem_destroy(&pc.hit);
	free(recs);
}

static void test_hostile_parent_cancel_mid_run_bounds_executions(void **s)
{
	size_t        n = tu_scaled(20000, 200);
	unsigned long rounds = tu_scaled(5, 2);
	uint32_t      rng = 0xc0ffee11u;
	int64_t       t0 = tu_now_ns();

	(void)s;
	failures = 0;
	for (unsigned long r = 0; r < rounds && failures == 0; r++)
		pc_round(r, n, &rng);
	print_message("parent_cancel_mid_run_bounds_executions: %lu rounds of "
	              "%zu in %.2f s\n", rounds, n, secs_since(t0));
	assert_int_equal(failures, 0);
}

/* ---- token trees released in random order ------------------------------- */

#define TT_MAX    72 /* tokens per round, late children included */
#define TT_BUILD  56 /* at most this many built up front */
#define TT_DEPTH  5

struct tt {
	ctp_token *tok[TT_MAX];
	int        parent[TT_MAX]; /* index, or -1 for a root */
	int        depth[TT_MAX];  /* 1 for a root */
	bool       held[TT_MAX];   /* not released yet */
	bool       fired[TT_MAX];  /* expected */
	int        n;
	struct rec task[TT_MAX];   /* at most one task per built token */
	int        task_tok[TT_MAX];
	int        ntasks;
};

static bool tt_under(const struct tt *t, int i, int anc)
{
	for (; i >= 0; i = t->parent[i])
		if (i == anc)
			return true;
	return false;
}

static void tt_build(struct tt *t, ctp_pool *pool, uint32_t *rng)
{
	int want = 40 + (int)rng_below(rng, TT_BUILD - 40 + 1);

	for (int i = 0; i < want; i++) {
		int p = -1, rc;

		if (i > 0 && rng_below(rng, 8) != 0) {
			p = (int)rng_below(rng, (unsigned)i);
			while (t->depth[p] >= TT_DEPTH)
				p = t->parent[p];
		}
		t->parent[i] = p;
		t->depth[i] = p < 0 ? 1 : t->depth[p] + 1;
		rc = ctp_token_create(&t->tok[i], p < 0 ? NULL : t->tok[p]);
		CHECK(rc == 0, "token_create: %s", ctp_strerror(rc));
		if (rc != 0)
			abort(); /* the arrays would lie from here on */
		t->held[i] = true;
		t->n++;
		if (rng_below(rng, 3) == 0) {
			struct rec   *r = &t->task[t->ntasks];
			ctp_task_opts o = { .parent = t->tok[i] };

			rec_init(r, 0);
			t->task_tok[t->ntasks++] = i;
			rc = submit_rec(pool, r, o, NULL);
			CHECK(rc == 0, "submit under token %d: %s", i,
			      ctp_strerror(rc));
		}
	}
}

/* Held tokens fire exactly as expected; tasks under fired tokens got their
 * done(-ECANCELED) on this thread, the others are untouched. */
static void tt_check(struct tt *t, unsigned long round, const char *when)
{
	for (int i = 0; i < t->n; i++) {
		if (!t->held[i])
			continue;
		CHECK(ctp_token_cancelled(t->tok[i]) == t->fired[i] &&
		      ctp_token_reason(t->tok[i]) ==
		      (t->fired[i] ? -ECANCELED : 0),
		      "round %lu %s: token %d (depth %d) fired %d reason %d, "
		      "want %d", round, when, i, t->depth[i],
		      ctp_token_cancelled(t->tok[i]),
		      ctp_token_reason(t->tok[i]), t->fired[i]);
	}
	for (int k = 0; k < t->ntasks; k++) {
		struct rec *r = &t->task[k];
		bool        f = t->fired[t->task_tok[k]];
		int         calls = atomic_load(&r->calls);

		CHECK(f ? calls == 1 && atomic_load(&r->status) == -ECANCELED &&
		          done_here(r) : calls == 0,
		      "round %lu %s: task %d under token %d (fired %d): done %d "
		      "status %d", round, when, k, t->task_tok[k], f, calls,
		      atomic_load(&r->status));
		CHECK(atomic_load(&r->ran) == 0, "round %lu: task %d ran while "
		      "the worker was parked", round, k);
	}
}

/* Fires node c; marks what should fire now. */
static void tt_fire(struct tt *t, int c, unsigned long round)
{
	int want = t->fired[c] ? -EALREADY : 0;
	int rc = ctp_token_cancel(t->tok[c]);

	CHECK(rc == want, "round %lu: cancel of token %d: %d, want %d", round,
	      c, rc, want);
	for (int i = 0; i < t->n; i++)
		if (tt_under(t, i, c))
			t->fired[i] = true;
}

/* Children made now start fired iff their parent has; a submit under a
 * fired token is refused with its reason and never calls done. */
static void tt_late_children(struct tt *t, ctp_pool *pool, uint32_t *rng,
                             unsigned long round)
{
	for (int k = 0; k < 6 && t->n < TT_MAX; k++) {
		int        h = (int)rng_below(rng, (unsigned)t->n);
		int        i = t->n, rc;
		struct rec x;

		if (!t->held[h])
			continue;
		rc = ctp_token_create(&t->tok[i], t->tok[h]);
		CHECK(rc == 0, "round %lu: late child: %s", round,
		      ctp_strerror(rc));
		if (rc != 0)
			continue;
		t->parent[i] = h;
		t->depth[i] = t->depth[h] + 1;
		t->held[i] = true;
		t->fired[i] = t->fired[h];
		t->n++;
		CHECK(ctp_token_cancelled(t->tok[i]) == t->fired[h] &&
		      ctp_token_reason(t->tok[i]) ==
		      (t->fired[h] ? -ECANCELED : 0),
		      "round %lu: child of token %d (fired %d) made late: "
		      "fired %d reason %d", round, h, t->fired[h],
		      ctp_token_cancelled(t->tok[i]),
		      ctp_token_reason(t->tok[i]));
		if (!t->fired[h])
			continue;
		rec_init(&x, 0);
		rc = submit_rec(pool, &x, (ctp_task_opts){ .parent = t->tok[i] },
		                NULL);
		CHECK(rc == -ECANCELED && atomic_load(&x.calls) == 0,
		      "round %lu: submit under a fired token: %d, done %d",
		      round, rc, atomic_load(&x.calls));
		rec_fini(&x);
	}
}

static void tt_shuffle(int *a, int n, uint32_t *rng)
{
	for (int i = n - 1; i > 0; i--) {
		int j = (int)rng_below(rng, (unsigned)i + 1), x = a[i];

		a[i] = a[j];
		a[j] = x;
	}
}

static void tt_round(ctp_pool *pool, struct parked *park, uint32_t *rng,
                     unsigned long round, unsigned long *tasks_ran)
{
	struct tt *t = calloc(1, sizeof(*t));
	int        order[TT_MAX], split, c, i;

	assert_non_null(t);
	saturate(pool, park, 1);
	tt_build(t, pool, rng);
	/* Maybe an earlier fire somewhere: its subtree is fired already. */
	if (rng_below(rng, 2) == 0)
		tt_fire(t, (int)rng_below(rng, (unsigned)t->n), round);
	tt_check(t, round, "after the first fire");
	/* Release a random part first, never the node about to be cancelled:
	 * released ancestors and descendants must live on through it. */
	c = (int)rng_below(rng, (unsigned)t->n);
	for (i = 0; i < t->n; i++)
		order[i] = i;
	tt_shuffle(order, t->n, rng);
	split = (int)rng_below(rng, (unsigned)t->n + 1);
	for (i = 0; i < split; i++) {
		if (order[i] == c)
			continue;
		ctp_token_release(t->tok[order[i]]);
		t->held[order[i]] = false;
	}
	tt_fire(t, c, round);
	tt_check(t, round, "after the cancel");
	tt_late_children(t, pool, rng, round);
	/* The rest, late children included, in a fresh random order. */
	for (i = 0; i < t->n; i++)
		order[i] = i;
	tt_shuffle(order, t->n, rng);
	for (i = 0; i < t->n; i++) {
		if (t->held[order[i]]) {
			ctp_token_release(t->tok[order[i]]);
			t->held[order[i]] = false;
		}
	}
	unpark(park, 1);
	CHECK(ctp_pool_wait_idle(pool, BOUND) == 0, "round %lu: wait_idle",
	      round);
	for (int k = 0; k < t->ntasks; k++) {
		struct rec *r = &t->task[k];
		bool        f = t->fired[t->task_tok[k]];

		CHECK(atomic_load(&r->calls) == 1 &&
		      atomic_load(&r->ran) == !f &&
		      atomic_load(&r->status) == (f ? -ECANCELED : 0),
		      "round %lu: task %d (fired %d): done %d ran %d status %d",
		      round, k, f, atomic_load(&r->calls),
		      atomic_load(&r->ran), atomic_load(&r->status));
		*tasks_ran += !f;
		rec_fini(r);
	}
	free(t);
}

static void test_hostile_token_trees_released_in_random_order(void **state)
{
	ctp_pool     *pool = pool_new(1, 128);
	struct parked park;
	unsigned long rounds = tu_scaled(20000, 30), r, ran = 0;
	uint32_t      rng = 0x7ee5eedu;
	ctp_stats     st;
	int64_t       t0 = tu_now_ns();

	(void)state;
	failures = 0;
	parked_init(&park, 0);
	for (r = 0; r < rounds && failures == 0; r++)
		tt_round(pool, &park, &rng, r, &ran);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	st = stats_of(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&park);
	print_message("token_trees_released_in_random_order: %lu rounds in "
	              "%.2f s (seed 0x7ee5eed), %llu tasks, %lu ran\n", r,
	              secs_since(t0),
	              (unsigned long long)(st.submitted - r), ran);
	assert_int_equal(failures, 0);
	/* parked tasks + tasks that ran complete; the rest were cancelled */
	assert_int_equal(st.completed, r + ran);
	assert_int_equal(st.cancelled, st.submitted - r - ran);
	assert_identity(&st);
}

/* ---- handle released while the worker finishes -------------------------- */

#define HR_RAN 5

struct hr {
	struct rec         r;       /* first member */
	pthread_barrier_t *b;
	int                in_done; /* meet in done rather than at fn's end */
	unsigned           delay;   /* pauses after the barrier */
};

static int hr_fn(void *arg, ctp_token *tok)
{
	struct hr *h = arg;

	(void)tok;
	atomic_fetch_add(&h->r.ran, 1);
	if (!h->in_done) {
		barrier_wait(h->b);
		tu_delay_loop(h->delay);
	}
	return HR_RAN;
}

static void hr_done(void *arg, int status)
{
	struct hr *h = arg;

	if (h->in_done) {
		barrier_wait(h->b);
		tu_delay_loop(h->delay);
	}
	rec_done(&h->r, status); /* its last act is the post */
}

static void test_hostile_handle_released_while_worker_finishes(void **state)
{
	ctp_pool         *pool = pool_new(1, 0);
	ctp_task_opts     o = { .done = hr_done };
	pthread_barrier_t b;
	unsigned long     rounds = tu_scaled(100000, 200);
	uint32_t          rng = 0x5eed1234u;
	ctp_stats         st;
	int64_t           t0 = tu_now_ns();

	(void)state;
	failures = 0;
	barrier_init(&b, 2);
	for (unsigned long i = 0; i < rounds && failures == 0; i++) {
		struct hr h;
		ctp_task *t = NULL;
		unsigned  mine;

		memset(&h, 0, sizeof(h));
		rec_init(&h.r, HR_RAN);
		h.b = &b;
		h.in_done = (int)(i & 1);
		h.delay = rng_delay(&rng) / 2;
		mine = rng_delay(&rng) / 2;
		assert_int_equal(ctp_pool_submit(pool, hr_fn, &h, &o, &t), 0);
		barrier_wait(&b);
		tu_delay_loop(mine);
		ctp_task_release(t);
		tu_sem_wait(&h.r.done_sem);
		CHECK(atomic_load(&h.r.calls) == 1 &&
		      atomic_load(&h.r.ran) == 1 &&
		      atomic_load(&h.r.status) == HR_RAN,
		      "round %lu: done %d ran %d status %d", i,
		      atomic_load(&h.r.calls), atomic_load(&h.r.ran),
		      atomic_load(&h.r.status));
		rec_fini(&h.r);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	st = stats_of(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	pthread_barrier_destroy(&b);
	print_message("handle_released_while_worker_finishes: %lu rounds in "
	              "%.2f s\n", rounds, secs_since(t0));
	assert_int_equal(failures, 0);
	assert_int_equal(st.submitted, rounds);
	assert_int_equal(st.completed, rounds);
	assert_identity(&st);
}

/* ---- timed waits: edge values ------------------------------------------- */

/* A helper thread blocked in one timed call. */
struct blk {
	int       (*call)(struct blk *b);
	void       *obj;
	int64_t     timeout;
	void       *item;
	int         status;
	int         rc;
	pid_t       tid;
	sem_t       entered, returned;
	pthread_t   th;
};

static void *blk_main(void *arg)
{
	struct blk *b = arg;

	b->tid = my_tid();
	tu_sem_post(&b->entered);
	b->rc = b->call(b);
	tu_sem_post(&b->returned);
	return NULL;
}

static int blk_pop(struct blk *b)
{
	return ctp_queue_pop(b->obj, &b->item, NULL, b->timeout);
}

static int blk_push(struct blk *b)
{
	return ctp_queue_push(b->obj, b->item, NULL, b->timeout);
}

static int blk_sleep(struct blk *b)
{
	return ctp_token_sleep(b->obj, b->timeout);
}

static int blk_task_wait(struct blk *b)
{
	return ctp_task_wait(b->obj, b->timeout, &b->status);
}

static int blk_wait_idle(struct blk *b)
{
	return ctp_pool_wait_idle(b->obj, b->timeout);
}

static int blk_shutdown(struct blk *b)
{
	return ctp_pool_shutdown(b->obj, b->timeout, b->timeout);
}

/* Starts call(obj, timeout) on a thread; returns once it sleeps in it. */
static void blk_start(struct blk *b, int (*call)(struct blk *), void *obj,
                      int64_t timeout, const char *what)
{
	b->call = call;
	b->obj = obj;
	b->timeout = timeout;
	b->rc = UNSET;
	b->status = UNSET;
	tu_sem_init(&b->entered, 0);
	tu_sem_init(&b->returned, 0);
	b->th = tu_spawn(blk_main, b);
	tu_sem_wait(&b->entered);
	CHECK(wait_blocked(b->tid), "%s (timeout %lld) never slept", what,
	      (long long)timeout);
}

/* The call must return (bounded) once the event happened; its result. */
static int blk_finish(struct blk *b, const char *what)
{
	int64_t t0 = tu_now_ns();

	if (!sem_wait_for(&b->returned, BOUND)) {
		print_error("%s (timeout %lld) did not return after its "
		            "event\n", what, (long long)b->timeout);
		abort(); /* the thread still uses objects on our stack */
	}
	CHECK(tu_now_ns() - t0 < CTP_SEC(2), "%s (timeout %lld) took %.3f s "
	      "to return after its event", what, (long long)b->timeout,
	      secs_since(t0));
	tu_join(b->th);
	sem_destroy(&b->entered);
	sem_destroy(&b->returned);
	return b->rc;
}

static const int64_t tw_long[] = { CTP_FOREVER, INT64_MAX };
static const int64_t tw_bad[] = { -2, INT64_MIN };

static void tw_queue(void)
{
	ctp_queue *q = NULL;
	void      *item = NULL;
	int        x = 0, y = 0;

	assert_int_equal(ctp_queue_create(&q, 1), 0);
	CHECK(ctp_queue_pop(q, &item, NULL, 0) == -EAGAIN, "pop 0 on empty");
	for (size_t k = 0; k < 2; k++) {
		CHECK(ctp_queue_pop(q, &item, NULL, tw_bad[k]) == -EINVAL,
		      "pop %lld", (long long)tw_bad[k]);
		CHECK(ctp_queue_push(q, &x, NULL, tw_bad[k]) == -EINVAL,
		      "push %lld on empty", (long long)tw_bad[k]);
	}
	for (size_t k = 0; k < 2; k++) {
		struct blk b;

		/* pop blocked on an empty queue wakes for a push */
		blk_start(&b, blk_pop, q, tw_long[k], "queue_pop");
		CHECK(ctp_queue_push(q, &x, NULL, 0) == 0, "push");
		CHECK(blk_finish(&b, "queue_pop") == 0 && b.item == &x,
		      "pop %lld: rc %d", (long long)tw_long[k], b.rc);
		CHECK(ctp_queue_size(q) == 0, "size after pop");
		/* push blocked on a full queue wakes for a pop */
		CHECK(ctp_queue_push(q, &y, NULL, 0) == 0, "fill");
		CHECK(ctp_queue_push(q, &x, NULL, 0) == -EAGAIN, "push 0 full");
		for (size_t j = 0; j < 2; j++)
			CHECK(ctp_queue_push(q, &x, NULL, tw_bad[j]) == -EINVAL,
			      "push %lld on full", (long long)tw_bad[j]);
		b.item = &x;
		blk_start(&b, blk_push, q, tw_long[k], "queue_push");
		CHECK(ctp_queue_pop(q, &item, NULL, 0) == 0 && item == &y,
		      "pop the filler");
		CHECK(blk_finish(&b, "queue_push") == 0, "push %lld: rc %d",
		      (long long)tw_long[k], b.rc);
		/* a bad timeout takes nothing from a queue that has an item */
		CHECK(ctp_queue_pop(q, &item, NULL, -2) == -EINVAL &&
		      ctp_queue_size(q) == 1, "pop -2 with an item");
		CHECK(ctp_queue_pop(q, &item, NULL, 0) == 0 && item == &x,
		      "pop the pushed item");
	}
	ctp_queue_destroy(q);
}

static void tw_token(void)
{
	for (size_t k = 0; k < 2; k++) {
		ctp_token *t = NULL;
		struct blk b;

		assert_int_equal(ctp_token_create(&t, NULL), 0);
		CHECK(ctp_token_sleep(t, 0) == 0, "sleep 0");
		for (size_t j = 0; j < 2; j++)
			CHECK(ctp_token_sleep(t, tw_bad[j]) == -EINVAL,
			      "sleep %lld", (long long)tw_bad[j]);
		blk_start(&b, blk_sleep, t, tw_long[k], "token_sleep");
		CHECK(ctp_token_cancel(t) == 0, "cancel");
		CHECK(blk_finish(&b, "token_sleep") == -ECANCELED,
		      "sleep %lld: rc %d", (long long)tw_long[k], b.rc);
		CHECK(ctp_token_sleep(t, 0) == -ECANCELED &&
		      ctp_token_sleep(t, INT64_MAX) == -ECANCELED,
		      "sleep on a fired token");
		ctp_token_release(t);
	}
}

static void tw_task_and_idle(void)
{
	ctp_pool *pool = pool_new(1, 0);

	CHECK(ctp_pool_wait_idle(pool, 0) == 0, "wait_idle 0 when idle");
	for (size_t k = 0; k < 2; k++) {
		struct parked p;
		ctp_task     *t = NULL;
		struct blk    b, w;
		int           status = UNSET;

		parked_init(&p, 21);
		assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &t), 0);
		tu_sem_wait(&p.started);
		CHECK(ctp_task_wait(t, 0, &status) == -ETIMEDOUT, "task_wait 0");
		CHECK(ctp_pool_wait_idle(pool, 0) == -ETIMEDOUT,
		      "wait_idle 0 busy");
		for (size_t j = 0; j < 2; j++) {
			CHECK(ctp_task_wait(t, tw_bad[j], &status) == -EINVAL,
			      "task_wait %lld", (long long)tw_bad[j]);
			CHECK(ctp_pool_wait_idle(pool, tw_bad[j]) == -EINVAL,
			      "wait_idle %lld", (long long)tw_bad[j]);
		}
		blk_start(&b, blk_task_wait, t, tw_long[k], "task_wait");
		blk_start(&w, blk_wait_idle, pool, tw_long[k], "wait_idle");
		unpark(&p, 1);
		CHECK(blk_finish(&b, "task_wait") == 0 && b.status == 21,
		      "task_wait %lld: rc %d status %d", (long long)tw_long[k],
		      b.rc, b.status);
		CHECK(blk_finish(&w, "wait_idle") == 0, "wait_idle %lld: rc %d",
		      (long long)tw_long[k], w.rc);
		/* on a finished task: 0 at once; bad values still -EINVAL */
		CHECK(ctp_task_wait(t, 0, &status) == 0 && status == 21,
		      "task_wait 0 when done");
		CHECK(ctp_task_wait(t, -2, &status) == -EINVAL &&
		      ctp_task_wait(t, INT64_MIN, NULL) == -EINVAL,
		      "task_wait bad when done");
		CHECK(atomic_load(&p.r.calls) == 1, "done %d",
		      atomic_load(&p.r.calls));
		ctp_task_release(t);
		parked_fini(&p);
	}
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

static void tw_shutdown(void)
{
	for (size_t k = 0; k < 2; k++) {
		ctp_pool     *pool = pool_new(1, 0);
		struct parked p;
		struct rec    q, late;
		struct blk    b;

		parked_init(&p, 3);
		rec_init(&q, 4);
		rec_init(&late, 5);
		for (size_t j = 0; j < 2; j++) {
			CHECK(ctp_pool_shutdown(pool, tw_bad[j], 0) == -EINVAL,
			      "shutdown drain %lld", (long long)tw_bad[j]);
			CHECK(ctp_pool_shutdown(pool, 0, tw_bad[j]) == -EINVAL,
			      "shutdown grace %lld", (long long)tw_bad[j]);
		}
		assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
		tu_sem_wait(&p.started);
		assert_int_equal(submit_rec(pool, &q, NO_OPTS, NULL), 0);
		/* drain and grace both huge: runs the queue, then returns as
		 * soon as the last task has */
		blk_start(&b, blk_shutdown, pool, tw_long[k], "shutdown");
		CHECK(submit_rec(pool, &late, NO_OPTS, NULL) == -ESHUTDOWN,
		      "submit during shutdown");
		unpark(&p, 1);
		CHECK(blk_finish(&b, "shutdown") == 0, "shutdown %lld: rc %d",
		      (long long)tw_long[k], b.rc);
		CHECK(atomic_load(&p.r.calls) == 1 && p.r.status == 3 &&
		      atomic_load(&q.calls) == 1 && q.status == 4 &&
		      atomic_load(&late.calls) == 0,
		      "shutdown %lld: parked %d/%d, queued %d/%d, late %d",
		      (long long)tw_long[k], atomic_load(&p.r.calls),
		      atomic_load(&p.r.status), atomic_load(&q.calls),
		      atomic_load(&q.status), atomic_load(&late.calls));
		assert_int_equal(ctp_pool_destroy(pool), 0);
		parked_fini(&p);
		rec_fini(&q);
		rec_fini(&late);
	}
}

/* shutdown(0, 0) with a task ignoring its token: -ETIMEDOUT at once; then
 * shutdown(0, INT64_MAX) waits for it and returns 0. */
static void tw_shutdown_zero(void)
{
	ctp_pool     *pool = pool_new(1, 0);
	struct parked p;
	struct blk    b;

	parked_init(&p, 3);
	assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, NULL), 0);
	tu_sem_wait(&p.started);
	CHECK(ctp_pool_shutdown(pool, 0, 0) == -ETIMEDOUT, "shutdown(0, 0)");
	blk_start(&b, blk_shutdown, pool, INT64_MAX, "second shutdown");
	unpark(&p, 1);
	CHECK(blk_finish(&b, "second shutdown") == 0, "second shutdown: %d",
	      b.rc);
	CHECK(atomic_load(&p.reason) == -ESHUTDOWN &&
	      atomic_load(&p.r.calls) == 1, "parked saw %d, done %d",
	      atomic_load(&p.reason), atomic_load(&p.r.calls));
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&p);
}

static void test_hostile_timed_waits_edge_values(void **state)
{
	(void)state;
	failures = 0;
	tw_queue();
	tw_token();
	tw_task_and_idle();
	tw_shutdown();
	tw_shutdown_zero();
	assert_int_equal(failures, 0);
}

/* ---- an item arriving as pop times out ---------------------------------- */

#define IA_TIMEOUT CTP_USEC(200)

struct ia {
	ctp_queue        *q;
	pthread_barrier_t b;
	atomic_int        quit;
	int               rc;      /* written by the consumer between the */
	void             *item;    /* barriers, read by the test after */
	int64_t           elapsed;
};

static void *ia_consumer(void *arg)
{
	struct ia *a = arg;

	for (;;) {
		int64_t t0;

		barrier_wait(&a->b);
		if (atomic_load(&a->quit))
			break;
		t0 = tu_now_ns();
		a->rc = ctp_queue_pop(a->q, &a->item, NULL, IA_TIMEOUT);
		a->elapsed = tu_now_ns() - t0;
		barrier_wait(&a->b);
	}
	return NULL;
}

static void ia_check(struct ia *a, unsigned long r, void *x,
                     unsigned long *got, unsigned long *left)
{
	void *item = NULL;
	int   rc;

	if (a->rc == 0) {
		CHECK(a->item == x, "round %lu: popped %p, pushed %p", r,
		      a->item, x);
		(*got)++;
	} else if (a->rc == -ETIMEDOUT) {
		CHECK(a->elapsed >= IA_TIMEOUT, "round %lu: timed out early "
		      "after %lld ns", r, (long long)a->elapsed);
		rc = ctp_queue_pop(a->q, &item, NULL, 0);
		CHECK(rc == 0 && item == x, "round %lu: pop timed out and the "
		      "item is not in the queue: %d (%s), %p", r, rc,
		      ctp_strerror(rc), item);
		(*left)++;
	} else {
		CHECK(0, "round %lu: pop returned %d (%s)", r, a->rc,
		      ctp_strerror(a->rc));
	}
	rc = ctp_queue_pop(a->q, &item, NULL, 0);
	CHECK(rc == -EAGAIN, "round %lu: the queue still holds something: %d "
	      "(%p)", r, rc, item);
}

static void test_hostile_item_arriving_as_pop_times_out(void **state)
{
	struct ia     a;
	pthread_t     th;
	unsigned long rounds = tu_scaled(5000, 100), r, got = 0, left = 0;
	uint32_t      rng = 0xfeedbeefu;
	int64_t       t0 = tu_now_ns(), edge = IA_TIMEOUT;

	(void)state;
	failures = 0;
	memset(&a, 0, sizeof(a));
	assert_int_equal(ctp_queue_create(&a.q, 4), 0);
	barrier_init(&a.b, 2);
	th = tu_spawn(ia_consumer, &a);
	for (r = 0; r < rounds && failures == 0; r++) {
		/* NULL is an item too, so every 16th round pushes NULL */
		void   *x = r % 16 == 0 ? NULL : (void *)(uintptr_t)(8 * r + 8);
		int64_t at;
		int     rc;

		unsigned long was_got = got;

		/* Odd rounds push at `edge` ns after the start, a staircase
		 * that steps later after a timeout and earlier after a pop,
		 * so it settles where the pop's wake-up and the push meet;
		 * even rounds push anywhere in 0..2 timeouts. */
		barrier_wait(&a.b);
		at = tu_now_ns() + (r & 1 ? edge + (int64_t)rng_below(&rng,
		     2000) : (int64_t)rng_below(&rng, 2 * IA_TIMEOUT));
		while (tu_now_ns() < at)
			tu_cpu_relax();
		rc = ctp_queue_push(a.q, x, NULL, 0);
		CHECK(rc == 0, "round %lu: push: %s", r, ctp_strerror(rc));
		barrier_wait(&a.b);
		ia_check(&a, r, x, &got, &left);
		if (r & 1)
			edge += got != was_got ? CTP_USEC(2) : -CTP_USEC(2);
		if (edge < 0)
			edge = 0;
	}
	atomic_store(&a.quit, 1);
	barrier_wait(&a.b);
	tu_join(th);
	pthread_barrier_destroy(&a.b);
	ctp_queue_destroy(a.q);
	print_message("item_arriving_as_pop_times_out: %lu rounds in %.2f s: "
	              "%lu popped, %lu left in the queue (edge at %lld us)\n",
	              r, secs_since(t0), got, left, (long long)edge / 1000);
	assert_int_equal(failures, 0);
	assert_int_equal(got + left, rounds);
}

/* ---- two enqueues at once with everyone asleep -------------------------- */

struct re {
	ctp_pool         *pool;
	ctp_queue        *q;
	pthread_barrier_t b;        /* 2 submitters/producers + the test */
	atomic_int        quit;
	atomic_int        ran, dones;
	int               rc[2];
	int               use_queue;
	pid_t             wtid[2];  /* the pool's workers (on_thread_start) */
};

struct re_arg {
	struct re *re;
	int        idx;
};

static int re_fn(void *arg, ctp_token *tok)
{
	(void)tok;
	atomic_fetch_add(&((struct re *)arg)->ran, 1);
	return 0;
}

static void re_done(void *arg, int status)
{
	(void)status;
	atomic_fetch_add(&((struct re *)arg)->dones, 1);
}

static void re_thread_start(unsigned index, void *user)
{
	struct re *re = user;

	if (index < 2)
		re->wtid[index] = my_tid(); /* before ctp_pool_create returns */
}

static void *re_submitter(void *arg)
{
	struct re_arg *a = arg;
	struct re     *re = a->re;
	ctp_task_opts  o = { .done = re_done };

	for (;;) {
		barrier_wait(&re->b);
		if (atomic_load(&re->quit))
			break;
		if (re->use_queue)
			re->rc[a->idx] = ctp_queue_push(re->q,
			    (void *)(uintptr_t)(a->idx + 1), NULL, 0);
		else
			re->rc[a->idx] = ctp_pool_submit(re->pool, re_fn, re,
			                                 &o, NULL);
		barrier_wait(&re->b);
	}
	return NULL;
}

struct rc_cons {
	ctp_queue *q;
	sem_t      go, ready, got;
	atomic_int quit;
	pid_t      tid;
	int        rc;
	void      *item;
};

static void *re_consumer(void *arg)
{
	struct rc_cons *c = arg;

	c->tid = my_tid();
	for (;;) {
		tu_sem_wait(&c->go);
		if (atomic_load(&c->quit))
			break;
		tu_sem_post(&c->ready);
		c->rc = ctp_queue_pop(c->q, &c->item, NULL, CTP_FOREVER);
		tu_sem_post(&c->got);
	}
	return NULL;
}

static void re_pool_rounds(struct re *re, unsigned long rounds)
{
	unsigned long r;

	for (r = 0; r < rounds && failures == 0; r++) {
		int rc;

		/* Even rounds: both workers surely asleep on an empty queue.
		 * Odd rounds: maybe still on their way to sleep. */
		for (int i = 0; i < 2 && r % 2 == 0; i++)
			CHECK(wait_blocked(re->wtid[i]), "round %lu: worker %d "
			      "never slept", r, i);
		barrier_wait(&re->b);
		barrier_wait(&re->b);
		CHECK(re->rc[0] == 0 && re->rc[1] == 0, "round %lu: submits %d "
		      "%d", r, re->rc[0], re->rc[1]);
		rc = ctp_pool_wait_idle(re->pool, CTP_SEC(10));
		CHECK(rc == 0, "round %lu: wait_idle: %s (lost wake-up?)", r,
		      ctp_strerror(rc));
		CHECK(atomic_load(&re->ran) == (int)(2 * r + 2) &&
		      atomic_load(&re->dones) == (int)(2 * r + 2),
		      "round %lu: ran %d done %d, want %lu", r,
		      atomic_load(&re->ran), atomic_load(&re->dones),
		      2 * r + 2);
	}
}

/* Two consumers asleep on an empty queue; two pushes at once. */
static void re_queue_rounds(struct re *re, struct rc_cons *c,
                            unsigned long rounds)
{
	for (unsigned long r = 0; r < rounds && failures == 0; r++) {
		bool seen[3] = { false, false, false };
		bool ok = true;

		for (int i = 0; i < 2; i++)
			tu_sem_post(&c[i].go);
		for (int i = 0; i < 2; i++) {
			tu_sem_wait(&c[i].ready);
			CHECK(wait_blocked(c[i].tid), "round %lu: consumer %d "
			      "never slept", r, i);
		}
		barrier_wait(&re->b);
		barrier_wait(&re->b);
		CHECK(re->rc[0] == 0 && re->rc[1] == 0, "round %lu: pushes %d "
		      "%d", r, re->rc[0], re->rc[1]);
		for (int i = 0; i < 2; i++) {
			if (!sem_wait_for(&c[i].got, BOUND)) {
				CHECK(0, "round %lu: consumer %d never woke "
				      "(%zu left in the queue)", r, i,
				      ctp_queue_size(re->q));
				ok = false;
			}
		}
		if (!ok) {
			/* wakes the sleepers with -ESHUTDOWN */
			ctp_queue_close(re->q);
			for (int i = 0; i < 2; i++)
				tu_sem_wait(&c[i].got);
			return;
		}
		for (int i = 0; i < 2; i++) {
			uintptr_t v = (uintptr_t)c[i].item;

			CHECK(c[i].rc == 0 && (v == 1 || v == 2) && !seen[v],
			      "round %lu: consumer %d: %d, item %p", r, i,
			      c[i].rc, c[i].item);
			if (v == 1 || v == 2)
				seen[v] = true;
		}
	}
}

static void test_hostile_reversed_enqueues_with_idle_workers(void **state)
{
	struct re      re;
	struct re_arg  args[2];
	struct rc_cons c[2];
	pthread_t      sub[2], cons[2];
	unsigned long  rounds = tu_scaled(50000, 100);
	unsigned long  qrounds = tu_scaled(20000, 50);
	ctp_pool_opts  popts = { .threads = 2, .name = "re",
	                         .on_thread_start = re_thread_start,
	                         .user = &re };
	int64_t        t0 = tu_now_ns();

	(void)state;
	failures = 0;
	memset(&re, 0, sizeof(re));
	assert_int_equal(ctp_pool_create(&re.pool, &popts), 0);
	assert_int_equal(ctp_queue_create(&re.q, 4), 0);
	barrier_init(&re.b, 3);
	for (int i = 0; i < 2; i++) {
		args[i] = (struct re_arg){ .re = &re, .idx = i };
		sub[i] = tu_spawn(re_submitter, &args[i]);
	}
	re_pool_rounds(&re, rounds);
	print_message("reversed_enqueues_with_idle_workers: pool: %lu rounds "
	              "in %.2f s\n", rounds, secs_since(t0));
	t0 = tu_now_ns();
	memset(c, 0, sizeof(c));
	for (int i = 0; i < 2; i++) {
		c[i].q = re.q;
		tu_sem_init(&c[i].go, 0);
		tu_sem_init(&c[i].ready, 0);
		tu_sem_init(&c[i].got, 0);
		cons[i] = tu_spawn(re_consumer, &c[i]);
	}
	re.use_queue = 1; /* the submitters read it after the next barrier */
	if (failures == 0)
		re_queue_rounds(&re, c, qrounds);
	print_message("reversed_enqueues_with_idle_workers: queue: %lu rounds "
	              "in %.2f s\n", qrounds, secs_since(t0));
	atomic_store(&re.quit, 1);
	barrier_wait(&re.b);
	for (int i = 0; i < 2; i++) {
		atomic_store(&c[i].quit, 1);
		tu_sem_post(&c[i].go);
	}
	for (int i = 0; i < 2; i++) {
		tu_join(sub[i]);
		tu_join(cons[i]);
		sem_destroy(&c[i].go);
		sem_destroy(&c[i].ready);
		sem_destroy(&c[i].got);
	}
	pthread_barrier_destroy(&re.b);
	assert_int_equal(ctp_pool_destroy(re.pool), 0);
	ctp_queue_destroy(re.q);
	assert_int_equal(failures, 0);
}

/* ---- 100k create / destroy ---------------------------------------------- */

static void cd_done(void *arg, int status)
{
	(void)status;
	atomic_fetch_add((atomic_int *)arg, 1);
}

static void test_hostile_create_destroy_100k(void **state)
{
	ctp_pool_opts popts = { .threads = 2, .name = "cd" };
	ctp_task_opts topts = { .done = cd_done };
	unsigned long cycles = tu_scaled(100000, 100), i, submitted = 0;
	atomic_int    dones = 0;
	tu_threads    base;
	char          left[256];
	int           baseline = tu_threads_baseline(&base), now = -1, extra;
	int64_t       t0 = tu_now_ns();

	(void)state;
	failures = 0;
	assert_true(baseline > 0);
	for (i = 0; i < cycles && failures == 0; i++) {
		ctp_pool *pool = NULL;
		int       rc = ctp_pool_create(&pool, &popts);

		CHECK(rc == 0, "cycle %lu: create: %s", i, ctp_strerror(rc));
		if (rc != 0)
			break;
		if (i % 100 == 0) {
			rc = ctp_pool_submit(pool, noop_fn, &dones, &topts,
			                     NULL);
			CHECK(rc == 0, "cycle %lu: submit: %s", i,
			      ctp_strerror(rc));
			submitted += rc == 0;
		}
		if (i % 1000 == 0) {
			rc = ctp_pool_shutdown(pool, 0, CTP_FOREVER);
			CHECK(rc == 0, "cycle %lu: shutdown: %s", i,
			      ctp_strerror(rc));
		}
		rc = ctp_pool_destroy(pool);
		CHECK(rc == 0, "cycle %lu: destroy: %s", i, ctp_strerror(rc));
	}
	/* every pool was joined: none of their threads may be left (a joined
	 * one may take a moment to leave /proc/self/task) */
	extra = tu_threads_back_to(&base, CTP_SEC(2), &now, left, sizeof(left));
	print_message("create_destroy_100k: %lu cycles in %.2f s, threads %d "
	              "-> %d\n", i, secs_since(t0), baseline, now);
	if (extra != 0)
		print_error("threads left after ctp_pool_destroy: %s\n", left);
	assert_int_equal(failures, 0);
	assert_int_equal(i, cycles);
	/* dropped or ran, every accepted task's done ran */
	assert_int_equal(atomic_load(&dones), submitted);
	assert_int_equal(extra, 0);
}

/* ---- huge counts and capacities ----------------------------------------- */

static void test_hostile_huge_counts_and_capacities(void **state)
{
	ctp_pool  *pool = NULL;
	ctp_queue *q = NULL;
	int        rc;

	(void)state;
	failures = 0;
	rc = ctp_pool_create(&pool, &(ctp_pool_opts){
	                     .threads = CTP_MAX_THREADS + 1 });
	CHECK(rc == -EINVAL && pool == NULL, "threads max+1: %d", rc);
	rc = ctp_pool_create(&pool, &(ctp_pool_opts){
	                     .threads = 1,
	                     .queue_capacity = CTP_MAX_CAPACITY + 1 });
	CHECK(rc == -EINVAL && pool == NULL, "capacity max+1: %d", rc);
	rc = ctp_pool_create(&pool, &(ctp_pool_opts){
	                     .threads = CTP_MAX_THREADS + 1,
	                     .queue_capacity = CTP_MAX_CAPACITY + 1 });
	CHECK(rc == -EINVAL && pool == NULL, "both max+1: %d", rc);
	rc = ctp_queue_create(&q, CTP_MAX_CAPACITY + 1);
	CHECK(rc == -EINVAL && q == NULL, "queue max+1: %d", rc);
	rc = ctp_queue_create(&q, SIZE_MAX);
	CHECK(rc == -EINVAL && q == NULL, "queue SIZE_MAX: %d", rc);
	rc = ctp_queue_create(&q, SIZE_MAX / 2 + 1);
	CHECK(rc == -EINVAL && q == NULL, "queue SIZE_MAX/2+1: %d", rc);

	/* CTP_MAX_THREADS: works, or the machine says no; never a crash. */
	rc = ctp_pool_create(&pool, &(ctp_pool_opts){
	                     .threads = CTP_MAX_THREADS, .name = "huge" });
	CHECK(rc == 0 || rc == -EAGAIN || rc == -ENOMEM, "threads max: %d (%s)",
	      rc, ctp_strerror(rc));
	if (rc == 0) {
		CHECK(stats_of(pool).threads == CTP_MAX_THREADS,
		      "threads max: stats.threads %u", stats_of(pool).threads);
		CHECK(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL) == 0,
		      "submit");
		CHECK(ctp_pool_wait_idle(pool, BOUND) == 0, "wait_idle");
		CHECK(ctp_pool_destroy(pool) == 0, "destroy");
	}
	print_message("huge_counts_and_capacities: CTP_MAX_THREADS pool: %s\n",
	              ctp_strerror(rc));
#if defined(HOSTILE_ASAN) || defined(HOSTILE_TSAN)
	print_message("huge_counts_and_capacities: CTP_MAX_CAPACITY skipped "
	              "under a sanitizer (a huge allocation may abort)\n");
#else
	/* With MALLOC_PERTURB_ set, glibc's calloc writes every page of the
	 * 16 GiB ring and 8 GiB scratch array: the OOM killer, not ENOMEM. */
	if (getenv("MALLOC_PERTURB_") != NULL &&
	    atoi(getenv("MALLOC_PERTURB_")) != 0) {
		print_message("huge_counts_and_capacities: CTP_MAX_CAPACITY "
		              "skipped: MALLOC_PERTURB_ is set\n");
		assert_int_equal(failures, 0);
		return;
	}
	pool = NULL;
	rc = ctp_pool_create(&pool, &(ctp_pool_opts){
	                     .threads = 1, .queue_capacity = CTP_MAX_CAPACITY });
	CHECK(rc == 0 || rc == -ENOMEM, "capacity max: %d (%s)", rc,
	      ctp_strerror(rc));
	if (rc == 0) {
		CHECK(ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL) == 0,
		      "submit");
		CHECK(ctp_pool_wait_idle(pool, BOUND) == 0, "wait_idle");
		CHECK(ctp_pool_destroy(pool) == 0, "destroy");
	}
	print_message("huge_counts_and_capacities: CTP_MAX_CAPACITY pool: "
	              "%s\n", ctp_strerror(rc));
	q = NULL;
	rc = ctp_queue_create(&q, CTP_MAX_CAPACITY);
	CHECK(rc == 0 || rc == -ENOMEM, "queue max: %d (%s)", rc,
	      ctp_strerror(rc));
	if (rc == 0) {
		void *item = NULL;

		CHECK(ctp_queue_push(q, q, NULL, 0) == 0 &&
		      ctp_queue_pop(q, &item, NULL, 0) == 0 && item == q,
		      "push/pop");
		ctp_queue_destroy(q);
	}
	print_message("huge_counts_and_capacities: CTP_MAX_CAPACITY queue: "
	              "%s\n", ctp_strerror(rc));
#endif
	assert_int_equal(failures, 0);
}

/* ---- fork with a live pool ---------------------------------------------- */

#if !defined(HOSTILE_TSAN)

#define FK_PARKED 2

static void fork_round(int use_exit)
{
	ctp_pool     *pool = pool_new(FK_PARKED, 0);
	struct parked p;
	struct rec    more[8];
	ctp_task     *held[FK_PARKED];
	pid_t         pid;
	int           ws;

	parked_init(&p, 6);
	for (int i = 0; i < FK_PARKED; i++)
		assert_int_equal(submit(pool, parked_fn, &p, NO_OPTS, &held[i]),
		                 0);
	for (int i = 0; i < FK_PARKED; i++)
		tu_sem_wait(&p.started);
	fflush(NULL); /* the child must not flush our buffers again */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (use_exit)
			exit(0);
		_exit(0);
	}
	ws = tu_reap(pid, BOUND);
#if defined(__SANITIZE_ADDRESS__)
	/* exit() runs LeakSanitizer in the child, where the pool's threads no
	 * longer exist, so what only they referenced may be reported (LSan's
	 * exit code 23). This case is about the child exiting at once. */
	if (use_exit && ws != -1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 23)
		ws = 0;
#endif
	CHECK(ws != -1 && WIFEXITED(ws) && WEXITSTATUS(ws) == 0,
	      "child (%s) wait status %#x", use_exit ? "exit" : "_exit", ws);
	/* The parent's pool goes on. */
	unpark(&p, FK_PARKED);
	for (int i = 0; i < 8; i++)
		rec_init(&more[i], i);
	for (int i = 0; i < 8; i++)
		assert_int_equal(submit_rec(pool, &more[i], NO_OPTS, NULL), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	for (int i = 0; i < 8; i++) {
		CHECK(atomic_load(&more[i].calls) == 1 &&
		      atomic_load(&more[i].status) == i,
		      "task %d after fork: done %d status %d", i,
		      atomic_load(&more[i].calls), atomic_load(&more[i].status));
		rec_fini(&more[i]);
	}
	for (int i = 0; i < FK_PARKED; i++) {
		int status = UNSET;

		CHECK(ctp_task_wait(held[i], BOUND, &status) == 0 && status == 6,
		      "parked %d: status %d", i, status);
		ctp_task_release(held[i]);
	}
	CHECK(atomic_load(&p.r.calls) == FK_PARKED, "parked done %d",
	      atomic_load(&p.r.calls));
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&p);
}

#endif /* !HOSTILE_TSAN */

static void test_hostile_fork_with_live_pool(void **state)
{
	(void)state;
#if defined(HOSTILE_TSAN)
	print_message("fork_with_live_pool: skipped under TSan (fork in a "
	              "multithreaded process is unsupported there)\n");
	skip();
#else
	failures = 0;
	fork_round(0);
	fork_round(1);
	assert_int_equal(failures, 0);
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hostile_cancel_one_handle_from_8_threads),
		cmocka_unit_test(test_hostile_cancel_after_done_twice),
		cmocka_unit_test(test_hostile_task_cancels_itself_and_sibling),
		cmocka_unit_test(test_hostile_parent_cancel_mid_run_bounds_executions),
		cmocka_unit_test(test_hostile_token_trees_released_in_random_order),
		cmocka_unit_test(test_hostile_handle_released_while_worker_finishes),
		cmocka_unit_test(test_hostile_timed_waits_edge_values),
		cmocka_unit_test(test_hostile_item_arriving_as_pop_times_out),
		cmocka_unit_test(test_hostile_reversed_enqueues_with_idle_workers),
		cmocka_unit_test(test_hostile_create_destroy_100k),
		cmocka_unit_test(test_hostile_huge_counts_and_capacities),
		cmocka_unit_test(test_hostile_fork_with_live_pool),
	};

	return cmocka_run_group_tests_name("hostile", tests, NULL, NULL);
}
