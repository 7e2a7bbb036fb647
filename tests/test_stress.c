/*
 * Stress suite: long hammering runs of the races that the fast suite only
 * touches once.
 *
 *   cancel_vs_start         ctp_task_cancel lined up against a worker starting
 *                           the task; every answer must match what the task
 *                           saw.
 *   exactly_once_mixed      100k tasks that complete, are cancelled by handle
 *                           or by a parent token, hit tiny deadlines or are
 *                           dropped by shutdown; done runs exactly once each
 *                           and the statuses add up to the stats.
 *   shutdown_under_submit   shutdown while two threads keep submitting.
 *   create_destroy          pools come and go without leaking threads.
 *
 * Rules: events are ordered with semaphores and atomic flags, never sleeps;
 * worker threads only record what they saw, and every check runs on the
 * test's own thread, after the library has said the task is finished. Checks
 * are counted (CHECK) rather than asserted mid-run so that a failing round
 * still cleans up; each test asserts its failure count is 0 at the end.
 *
 * CTP_STRESS_SCALE=<n> divides every iteration count by n (default 1), so
 * the sanitizer runs can use fewer rounds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctpool.h"
#include "testutil.h"

/* Tight spins before yielding in tu_spin_until_ge: long enough (~100 us)
 * to cover a submit on the other side, so a thread back from sched_yield
 * does not spoil the alignment of a race. */
#define SPIN_TIGHT 4096u

/* ---- helpers ------------------------------------------------------------ */

static int failures; /* test thread only */



/* Log-uniform in [0, 512) pauses: most delays are shorter than the time a
 * worker takes to pop and start the next task (a few dozen pauses), some
 * cover the whole window and beyond. */
static unsigned rng_delay(uint32_t *s)
{
	unsigned bits = tu_rng_next(s) % 10;

	return tu_rng_next(s) & ((1u << bits) - 1);
}

/* ---- cancel vs start ---------------------------------------------------- */

#define CVS_RAN 7001 /* what the target returns: >= 0 and distinctive */

/* The gate task occupies the single worker until the test says go, so that
 * the target (queued right behind it) is started the instant the gate
 * returns. Rounds are numbered so a gate left over from an earlier round
 * never mistakes a later round's flags for its own. */
static struct {
	atomic_int ready;      /* round whose gate is running */
	atomic_int go;         /* round whose gate may return */
	atomic_int gate_delay; /* pauses the gate burns after go */
} cvs_gate;

struct cvs_target {
	int        wait_mode;       /* fn waits for the cancel to return */
	atomic_int ran;             /* fn started */
	atomic_int finished;        /* fn is about to return */
	atomic_int seen_reason;     /* ctp_token_reason as fn last saw it */
	atomic_int cancel_returned; /* set by the test after ctp_task_cancel */
	atomic_int done_calls;
	atomic_int done_status;
};

static int cvs_gate_fn(void *arg, ctp_token *token)
{
	int round = (int)(intptr_t)arg;

	(void)token;
	atomic_store_explicit(&cvs_gate.ready, round, memory_order_release);
	tu_spin_until_ge(&cvs_gate.go, round, SPIN_TIGHT);
	tu_delay_loop((unsigned)atomic_load_explicit(&cvs_gate.gate_delay,
	                                          memory_order_relaxed));
	return 0;
}

static int cvs_target_fn(void *arg, ctp_token *token)
{
	struct cvs_target *t = arg;

	atomic_store(&t->ran, 1);
	/* In wait mode the reason is read only after the cancel has returned:
	 * if it answered -EINPROGRESS, the token must have fired by then. */
	if (t->wait_mode)
		tu_spin_until_ge(&t->cancel_returned, 1, SPIN_TIGHT);
	atomic_store(&t->seen_reason, ctp_token_reason(token));
	atomic_store(&t->finished, 1);
	return CVS_RAN;
}

static void cvs_done(void *arg, int status)
{
	struct cvs_target *t = arg;

	atomic_store(&t->done_status, status);
	atomic_fetch_add(&t->done_calls, 1);
}

/* Checks one round's answer against what the task did. Returns the slot
 * for the answer's counter: 0, 1 (-EINPROGRESS), 2 (-EALREADY). */
static int cvs_check(int round, int rc, int finished_at_cancel,
                     struct cvs_target *t, int wait_rc, int status,
                     int state)
{
	int ran = atomic_load(&t->ran);
	int seen = atomic_load(&t->seen_reason);

	CHECK(wait_rc == 0, "round %d: ctp_task_wait: %s", round,
	      ctp_strerror(wait_rc));
	CHECK(atomic_load(&t->done_calls) == 1, "round %d: done called %d times",
	      round, atomic_load(&t->done_calls));
	CHECK(status == atomic_load(&t->done_status),
	      "round %d: wait status %d, done status %d", round, status,
	      atomic_load(&t->done_status));
	switch (rc) {
	case 0:
		CHECK(!ran, "round %d: cancel said 0 but fn ran", round);
		CHECK(status == -ECANCELED, "round %d: status %d", round, status);
		CHECK(state == CTP_TASK_CANCELLED, "round %d: state %d", round,
		      state);
		return 0;
	case -EINPROGRESS:
		CHECK(ran, "round %d: -EINPROGRESS but fn never ran", round);
		CHECK(status == CVS_RAN, "round %d: status %d", round, status);
		CHECK(state == CTP_TASK_DONE, "round %d: state %d", round, state);
		if (t->wait_mode)
			CHECK(seen == -ECANCELED,
			      "round %d: -EINPROGRESS but fn saw reason %d after "
			      "the cancel returned", round, seen);
		else
			CHECK(seen == 0 || seen == -ECANCELED,
			      "round %d: fn saw reason %d", round, seen);
		return 1;
	case -EALREADY:
		CHECK(!t->wait_mode,
		      "round %d: -EALREADY while fn was waiting for the cancel",
		      round);
		CHECK(finished_at_cancel,
		      "round %d: -EALREADY but fn had not finished", round);
		CHECK(seen == 0, "round %d: -EALREADY but fn saw reason %d",
		      round, seen);
		CHECK(status == CVS_RAN, "round %d: status %d", round, status);
		CHECK(state == CTP_TASK_DONE, "round %d: state %d", round, state);
		return 2;
	default:
		CHECK(0, "round %d: ctp_task_cancel returned %d (%s)", round, rc,
		      ctp_strerror(rc));
		return -1;
	}
}

/* How each round shifts the race. Half the rounds delay the cancel by
 * `edge` pauses, a staircase that climbs after a 0 and steps down after any
 * other answer, so it settles where both answers are equally likely: right
 * on the instant the worker starts the task. The other rounds delay either
 * side at random to cover the whole window. */
struct cvs_jitter {
	uint32_t rng;
	unsigned edge;
};

enum { CVS_EDGE, CVS_GATE_LATE, CVS_CANCEL_LATE };

/* One round: gate, target, then cancel lined up with the gate's return. */
static int cvs_round(ctp_pool *pool, int round, struct cvs_jitter *j)
{
	struct cvs_target  t = { .wait_mode = round & 1 };
	ctp_task_opts      gate_opts = { .queue_wait = CTP_FOREVER };
	ctp_task_opts      opts = { .done = cvs_done, .queue_wait = CTP_FOREVER };
	ctp_task          *task = NULL;
	unsigned           r = tu_rng_next(&j->rng) % 4;
	unsigned           side = r < 2 ? CVS_EDGE : r == 2 ? CVS_GATE_LATE
	                                                   : CVS_CANCEL_LATE;
	unsigned           d = side == CVS_EDGE
	                       ? j->edge + tu_rng_next(&j->rng) % 5
	                       : rng_delay(&j->rng);
	int                rc, wait_rc, status = 0, state, finished;

	atomic_store_explicit(&cvs_gate.gate_delay,
	                      side == CVS_GATE_LATE ? (int)d : 0,
	                      memory_order_relaxed);
	rc = ctp_pool_submit(pool, cvs_gate_fn, (void *)(intptr_t)round,
	                     &gate_opts, NULL);
	CHECK(rc == 0, "round %d: submit gate: %s", round, ctp_strerror(rc));
	if (rc != 0)
		return -1;
	rc = ctp_pool_submit(pool, cvs_target_fn, &t, &opts, &task);
	CHECK(rc == 0, "round %d: submit target: %s", round, ctp_strerror(rc));
	if (rc != 0) {
		/* Let the gate go so the pool can be shut down. */
		atomic_store_explicit(&cvs_gate.go, round, memory_order_release);
		return -1;
	}
	tu_spin_until_ge(&cvs_gate.ready, round, SPIN_TIGHT);
	atomic_store_explicit(&cvs_gate.go, round, memory_order_release);
	if (side != CVS_GATE_LATE)
		tu_delay_loop(d);
	rc = ctp_task_cancel(task);
	if (side == CVS_EDGE && rc == 0)
		j->edge++;
	else if (side == CVS_EDGE && j->edge > 0)
		j->edge--;
	finished = atomic_load(&t.finished);
	atomic_store_explicit(&t.cancel_returned, 1, memory_order_release);

	wait_rc = ctp_task_wait(task, CTP_SEC(30), &status);
	state = ctp_task_state(task);
	ctp_task_release(task);
	if (wait_rc != 0) {
		/* t is on this stack: never leave with the task unfinished. */
		CHECK(0, "round %d: task did not finish: %s", round,
		      ctp_strerror(wait_rc));
		abort();
	}
	return cvs_check(round, rc, finished, &t, wait_rc, status, state);
}

static void test_stress_cancel_vs_start(void **state)
{
	ctp_pool_opts     popts = { .threads = 1, .name = "cvs" };
	ctp_pool         *pool = NULL;
	ctp_stats         st;
	unsigned long     rounds = tu_scaled(100000, 1);
	unsigned long     count[3] = { 0, 0, 0 };
	struct cvs_jitter jit = { .rng = 0x9e3779b9u, .edge = 0 };
	int64_t           t0 = tu_now_ns();

	(void)state;
	failures = 0;
	atomic_store(&cvs_gate.ready, 0);
	atomic_store(&cvs_gate.go, 0);
	assert_int_equal(ctp_pool_create(&pool, &popts), 0);
	for (unsigned long r = 1; r <= rounds; r++) {
		int slot = cvs_round(pool, (int)r, &jit);

		if (slot < 0)
			break;
		count[slot]++;
	}
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_SEC(30)), 0);
	ctp_pool_stats(pool, &st);
	assert_int_equal(ctp_pool_destroy(pool), 0);

	print_message("cancel_vs_start: %lu rounds in %.2f s: 0=%lu "
	              "-EINPROGRESS=%lu -EALREADY=%lu (edge at %u pauses)\n",
	              rounds, (double)(tu_now_ns() - t0) / 1e9, count[0],
	              count[1], count[2], jit.edge);
	assert_int_equal(failures, 0);
	assert_int_equal(count[0] + count[1] + count[2], rounds);
	/* Gates always complete; targets complete or are cancelled. */
	assert_int_equal(st.submitted, 2 * rounds);
	assert_int_equal(st.cancelled, count[0]);
	assert_int_equal(st.completed, rounds + count[1] + count[2]);
	assert_int_equal(st.timed_out + st.dropped + st.rejected, 0);
}

/* ---- exactly once, mixed outcomes --------------------------------------- */

#define MIX_RAN       4242 /* every fn returns this: "it ran" */
#define MIX_THREADS   4
#define MIX_BLOCK     1000 /* tasks per parent-token group */
#define MIX_CAPACITY  256  /* a short queue: late cancels find tasks running */
#define MIX_LAG       64   /* handles kept for a late cancel */
#define MIX_TAIL      256  /* tasks queued behind the plugs at shutdown */
#define MIX_NO_CANCEL 1    /* cancel_rc when no cancel was made */

enum mix_kind {
	MIX_RUN,          /* just runs */
	MIX_CANCEL_NOW,   /* cancelled by handle right after submit */
	MIX_CANCEL_LATER, /* cancelled by handle MIX_LAG such tasks later */
	MIX_DEADLINE,     /* timeout 1..50 us */
	MIX_GROUP,        /* parent token cancelled midway through its block */
	MIX_PLUG,         /* holds a worker until shutdown fires its token */
	MIX_TAIL_RUN,     /* queued behind the plugs: must be dropped */
	MIX_TAIL_DEADLINE /* same, with a tiny deadline */
};

struct mix_rec {
	atomic_int     done_calls;
	atomic_int     status;
	atomic_int     ran;
	enum mix_kind  kind;
	int64_t        sleep_ns;  /* fn sleeps on its token this long */
	sem_t         *plug_sem;  /* MIX_PLUG: posted once running */
	ctp_task      *handle;    /* test thread only */
	int            accepted;  /* test thread only */
	int            cancel_rc; /* test thread only */
};

struct mix {
	ctp_pool       *pool;
	struct mix_rec *recs;
	size_t          n;          /* recs used */
	ctp_token      *group;      /* the current block's parent */
	size_t          group_first; /* first rec of the current block */
	int             group_fired;
	struct mix_rec *lag[MIX_LAG]; /* ring of handles awaiting a late cancel */
	size_t          lag_len, lag_head;
	unsigned long   refused;    /* submits refused by a fired parent */
	unsigned long   answers[3]; /* cancel answers: 0, -EINPROGRESS, -EALREADY */
	sem_t           plug_sem;
};

static int mix_fn(void *arg, ctp_token *token)
{
	struct mix_rec *r = arg;

	atomic_store(&r->ran, 1);
	if (r->kind == MIX_PLUG) {
		tu_sem_post(r->plug_sem);
		(void)ctp_token_sleep(token, CTP_FOREVER);
	} else if (r->sleep_ns > 0) {
		(void)ctp_token_sleep(token, r->sleep_ns);
	}
	return MIX_RAN;
}

static void mix_done(void *arg, int status)
{
	struct mix_rec *r = arg;

	atomic_store(&r->status, status);
	atomic_fetch_add(&r->done_calls, 1);
}

static enum mix_kind mix_kind_of(size_t i)
{
	switch (i % 20) {
	case 8: case 9:   return MIX_CANCEL_NOW;
	case 10: case 11: return MIX_CANCEL_LATER;
	case 12: case 13: case 14: case 15: return MIX_DEADLINE;
	case 16: case 17: case 18: case 19: return MIX_GROUP;
	default:          return MIX_RUN;
	}
}

static void mix_cancel(struct mix *m, struct mix_rec *r)
{
	int rc = ctp_task_cancel(r->handle);

	r->cancel_rc = rc;
	if (rc == 0) {
		m->answers[0]++;
		/* done(-ECANCELED) has returned before the cancel returns. */
		CHECK(atomic_load(&r->done_calls) == 1 &&
		      atomic_load(&r->status) == -ECANCELED,
		      "rec %zu: cancel 0 but done calls %d status %d",
		      (size_t)(r - m->recs), atomic_load(&r->done_calls),
		      atomic_load(&r->status));
	} else if (rc == -EINPROGRESS) {
		m->answers[1]++;
	} else if (rc == -EALREADY) {
		m->answers[2]++;
	} else {
		CHECK(0, "ctp_task_cancel: %d (%s)", rc, ctp_strerror(rc));
	}
	ctp_task_release(r->handle);
	r->handle = NULL;
}

/* Keeps r for a late cancel. Tasks in the ring that have started are
 * cancelled now (mostly while running); when the ring is full the oldest is
 * cancelled wherever it is. */
static void mix_lag_push(struct mix *m, struct mix_rec *r)
{
	while (m->lag_len > 0 &&
	       ctp_task_state(m->lag[m->lag_head]->handle) != CTP_TASK_QUEUED) {
		mix_cancel(m, m->lag[m->lag_head]);
		m->lag_head = (m->lag_head + 1) % MIX_LAG;
		m->lag_len--;
	}
	if (m->lag_len == MIX_LAG) {
		mix_cancel(m, m->lag[m->lag_head]);
		m->lag[m->lag_head] = r;
		m->lag_head = (m->lag_head + 1) % MIX_LAG;
		return;
	}
	m->lag[(m->lag_head + m->lag_len++) % MIX_LAG] = r;
}

static void mix_lag_drain(struct mix *m)
{
	while (m->lag_len > 0) {
		mix_cancel(m, m->lag[m->lag_head]);
		m->lag_head = (m->lag_head + 1) % MIX_LAG;
		m->lag_len--;
	}
}

/* Fires the current group and checks that none of its tasks is still
 * queued: each has started, or never will and its done has returned. */
static void mix_group_fire(struct mix *m)
{
	int rc = ctp_token_cancel(m->group);

	CHECK(rc == 0, "ctp_token_cancel(group): %s", ctp_strerror(rc));
	m->group_fired = 1;
	for (size_t i = m->group_first; i < m->n; i++) {
		struct mix_rec *r = &m->recs[i];
		int             st;

		if (r->kind != MIX_GROUP || !r->accepted)
			continue;
		st = ctp_task_state(r->handle);
		CHECK(st == CTP_TASK_RUNNING || st == CTP_TASK_DONE ||
		      st == CTP_TASK_CANCELLED,
		      "rec %zu: state %d after its group fired", i, st);
		if (st == CTP_TASK_CANCELLED)
			CHECK(atomic_load(&r->done_calls) == 1 &&
			      atomic_load(&r->status) == -ECANCELED,
			      "rec %zu: cancelled by group but done calls %d "
			      "status %d", i, atomic_load(&r->done_calls),
			      atomic_load(&r->status));
	}
}

static void mix_group_end(struct mix *m)
{
	if (m->group == NULL)
		return;
	if (!m->group_fired)
		mix_group_fire(m);
	for (size_t i = m->group_first; i < m->n; i++) {
		if (m->recs[i].kind != MIX_GROUP)
			continue;
		ctp_task_release(m->recs[i].handle);
		m->recs[i].handle = NULL;
	}
	ctp_token_release(m->group);
	m->group = NULL;
}

static void mix_group_begin(struct mix *m)
{
	int rc = ctp_token_create(&m->group, NULL);

	CHECK(rc == 0, "ctp_token_create: %s", ctp_strerror(rc));
	if (rc != 0)
		m->group = NULL;
	m->group_first = m->n;
	m->group_fired = 0;
}

/* Submits recs[m->n] as kind k and advances m->n. */
static void mix_submit(struct mix *m, enum mix_kind k, size_t i)
{
	struct mix_rec *r = &m->recs[m->n++];
	ctp_task_opts   o = { .done = mix_done, .queue_wait = CTP_FOREVER };
	int             want_handle = k == MIX_CANCEL_NOW ||
	                              k == MIX_CANCEL_LATER || k == MIX_GROUP;
	int             rc;

	r->kind = k;
	r->cancel_rc = MIX_NO_CANCEL;
	r->plug_sem = &m->plug_sem;
	if (k == MIX_RUN && i % 16 == 0)
		r->sleep_ns = CTP_USEC(20);
	if (k == MIX_CANCEL_LATER)
		r->sleep_ns = CTP_USEC(50);
	if (k == MIX_DEADLINE || k == MIX_TAIL_DEADLINE)
		o.timeout = CTP_USEC(1 + (i / 20) % 50);
	if (k == MIX_GROUP)
		o.parent = m->group;
	rc = ctp_pool_submit(m->pool, mix_fn, r, &o,
	                     want_handle ? &r->handle : NULL);
	if (rc == 0) {
		r->accepted = 1;
	} else if (k == MIX_GROUP && m->group_fired && rc == -ECANCELED) {
		m->refused++;
		return;
	} else {
		CHECK(0, "submit %zu (kind %d): %d (%s)", i, (int)k, rc,
		      ctp_strerror(rc));
		return;
	}
	if (k == MIX_CANCEL_NOW)
		mix_cancel(m, r);
	else if (k == MIX_CANCEL_LATER)
		mix_lag_push(m, r);
}

/* Is status an outcome that kind k may end with? */
static int mix_status_ok(const struct mix_rec *r, int status)
{
	switch (r->kind) {
	case MIX_RUN:
		/* -ESHUTDOWN only if a reorder put it behind the plugs. */
		return status == MIX_RAN || status == -ESHUTDOWN;
	case MIX_CANCEL_NOW:
	case MIX_CANCEL_LATER:
		if (r->cancel_rc == 0)
			return status == -ECANCELED;
		return (r->cancel_rc == -EINPROGRESS ||
		        r->cancel_rc == -EALREADY) && status == MIX_RAN;
	case MIX_DEADLINE:
		return status == MIX_RAN || status == -ETIMEDOUT ||
		       status == -ESHUTDOWN;
	case MIX_GROUP:
		return status == MIX_RAN || status == -ECANCELED;
	case MIX_PLUG:
		return status == MIX_RAN;
	case MIX_TAIL_RUN:
		return status == -ESHUTDOWN;
	case MIX_TAIL_DEADLINE:
		return status == -ETIMEDOUT || status == -ESHUTDOWN;
	}
	return 0;
}

/* Checks every rec once the pool has shut down; fills counts per outcome:
 * [0] ran, [1] -ECANCELED, [2] -ETIMEDOUT, [3] -ESHUTDOWN. */
static unsigned long mix_verify(struct mix *m, unsigned long out[4])
{
	unsigned long accepted = 0;

	for (size_t i = 0; i < m->n; i++) {
		struct mix_rec *r = &m->recs[i];
		int             calls = atomic_load(&r->done_calls);
		int             status = atomic_load(&r->status);
		int             ran = atomic_load(&r->ran);

		if (!r->accepted) {
			CHECK(calls == 0 && !ran,
			      "rec %zu: refused but done %d ran %d", i, calls, ran);
			continue;
		}
		accepted++;
		CHECK(calls == 1, "rec %zu (kind %d): done called %d times", i,
		      (int)r->kind, calls);
		CHECK(mix_status_ok(r, status),
		      "rec %zu (kind %d, cancel %d): status %d", i, (int)r->kind,
		      r->cancel_rc, status);
		CHECK(ran == (status >= 0), "rec %zu: ran %d but status %d", i,
		      ran, status);
		if (status >= 0)
			out[0]++;
		else if (status == -ECANCELED)
			out[1]++;
		else if (status == -ETIMEDOUT)
			out[2]++;
		else if (status == -ESHUTDOWN)
			out[3]++;
	}
	return accepted;
}

/* Parks every worker on a plug, queues a tail behind them, then shuts down
 * with a short drain: the tail is dropped (or timed out first). */
static void mix_plug_and_stop(struct mix *m, size_t tail)
{
	int rc;

	for (int p = 0; p < MIX_THREADS; p++)
		mix_submit(m, MIX_PLUG, m->n);
	for (int p = 0; p < MIX_THREADS; p++)
		tu_sem_wait(&m->plug_sem);
	for (size_t i = 0; i < tail; i++)
		mix_submit(m, i % 2 ? MIX_TAIL_DEADLINE : MIX_TAIL_RUN, i);
	rc = ctp_pool_shutdown(m->pool, CTP_MSEC(1), CTP_FOREVER);
	CHECK(rc == 0, "ctp_pool_shutdown: %s", ctp_strerror(rc));
}

static void test_stress_exactly_once_mixed(void **state)
{
	ctp_pool_opts popts = { .threads = MIX_THREADS,
	                        .queue_capacity = MIX_CAPACITY, .name = "mix" };
	struct mix    m;
	size_t        ntasks = tu_scaled(100000, 1);
	unsigned long out[4] = { 0, 0, 0, 0 }, accepted;
	ctp_stats     st;

	(void)state;
	failures = 0;
	memset(&m, 0, sizeof(m));
	tu_sem_init(&m.plug_sem, 0);
	m.recs = calloc(ntasks + MIX_THREADS + MIX_TAIL, sizeof(*m.recs));
	assert_non_null(m.recs);
	assert_int_equal(ctp_pool_create(&m.pool, &popts), 0);

	for (size_t i = 0; i < ntasks; i++) {
		if (i % MIX_BLOCK == 0) {
			mix_group_end(&m);
			mix_group_begin(&m);
		}
		if (i % MIX_BLOCK == MIX_BLOCK / 2)
			mix_group_fire(&m);
		mix_submit(&m, mix_kind_of(i), i);
	}
	mix_group_end(&m);
	mix_lag_drain(&m);
	mix_plug_and_stop(&m, MIX_TAIL);

	ctp_pool_stats(m.pool, &st);
	accepted = mix_verify(&m, out);
	assert_int_equal(ctp_pool_destroy(m.pool), 0);
	free(m.recs);
	sem_destroy(&m.plug_sem);

	print_message("exactly_once_mixed: %lu accepted, %lu refused by a "
	              "fired parent; ran=%lu cancelled=%lu timed_out=%lu "
	              "dropped=%lu; cancel answers 0=%lu -EINPROGRESS=%lu "
	              "-EALREADY=%lu\n", accepted, m.refused, out[0], out[1],
	              out[2], out[3], m.answers[0], m.answers[1],
	              m.answers[2]);
	assert_int_equal(failures, 0);
	assert_int_equal(st.submitted, accepted);
	assert_int_equal(st.submitted,
	                 st.completed + st.cancelled + st.timed_out + st.dropped);
	assert_int_equal(st.completed, out[0]);
	assert_int_equal(st.cancelled, out[1]);
	assert_int_equal(st.timed_out, out[2]);
	assert_int_equal(st.dropped, out[3]);
	assert_int_equal(st.rejected, 0);
	assert_int_equal(st.queued + st.running, 0);
	/* The tail's plain tasks cannot run: some tasks were surely dropped. */
	assert_true(out[3] >= MIX_TAIL / 2);
}

/* ---- shutdown under submit ---------------------------------------------- */

#define SUS_RAN        5150
#define SUS_CHUNK      4096
#define SUS_MAX_CHUNKS 256 /* 1M tasks per submitter per round at most */

struct sus_rec {
	atomic_int done_calls;
	atomic_int status;
};

struct sus_submitter {
	ctp_pool       *pool;
	sem_t          *started;      /* posted once a few submits went in */
	struct sus_rec *chunks[SUS_MAX_CHUNKS];
	size_t          accepted;
	int             final_rc;     /* the refusal that ended the loop */
};

/* Slow enough (the queue holds 16, two workers) that a 1 ms drain cannot
 * empty the queue: shutdown drops some tasks and fires running ones. */
static int sus_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)ctp_token_sleep(token, CTP_USEC(200));
	return SUS_RAN;
}

static void sus_done(void *arg, int status)
{
	struct sus_rec *r = arg;

	atomic_store(&r->status, status);
	atomic_fetch_add(&r->done_calls, 1);
}

static struct sus_rec *sus_slot(struct sus_submitter *s, size_t i)
{
	size_t c = i / SUS_CHUNK;

	if (c >= SUS_MAX_CHUNKS)
		return NULL;
	if (s->chunks[c] == NULL)
		s->chunks[c] = calloc(SUS_CHUNK, sizeof(struct sus_rec));
	return s->chunks[c] == NULL ? NULL : &s->chunks[c][i % SUS_CHUNK];
}

/* Submits until refused. Records only; the test thread checks. */
static void *sus_thread(void *arg)
{
	struct sus_submitter *s = arg;
	ctp_task_opts         o = { .done = sus_done, .queue_wait = CTP_FOREVER };
	int                   posted = 0;

	for (;;) {
		struct sus_rec *r = sus_slot(s, s->accepted);
		ctp_task       *h = NULL;
		int             rc;

		if (r == NULL) {
			s->final_rc = -ENOMEM;
			break;
		}
		rc = ctp_pool_submit(s->pool, sus_fn, r, &o,
		                     s->accepted % 4 == 0 ? &h : NULL);
		if (rc != 0) {
			s->final_rc = rc;
			break;
		}
		ctp_task_release(h);
		if (++s->accepted == 8) {
			tu_sem_post(s->started);
			posted = 1;
		}
	}
	if (!posted)
		tu_sem_post(s->started);
	return NULL;
}

/* Checks one submitter's records; adds outcomes: [0] ran, [1] dropped. */
static void sus_verify(struct sus_submitter *s, int round, int who,
                       unsigned long out[2])
{
	CHECK(s->final_rc == -ESHUTDOWN, "round %d: submitter %d ended with %d "
	      "(%s)", round, who, s->final_rc, ctp_strerror(s->final_rc));
	for (size_t i = 0; i < s->accepted; i++) {
		struct sus_rec *r = &s->chunks[i / SUS_CHUNK][i % SUS_CHUNK];
		int             calls = atomic_load(&r->done_calls);
		int             status = atomic_load(&r->status);

		CHECK(calls == 1, "round %d: submitter %d task %zu: done called "
		      "%d times", round, who, i, calls);
		CHECK(status == SUS_RAN || status == -ESHUTDOWN,
		      "round %d: submitter %d task %zu: status %d", round, who,
		      i, status);
		out[status == SUS_RAN ? 0 : 1]++;
	}
	for (size_t c = 0; c < SUS_MAX_CHUNKS; c++)
		free(s->chunks[c]);
}

static void sus_round(int round, uint32_t *rng, unsigned long *total)
{
	ctp_pool_opts        popts = { .threads = 2, .queue_capacity = 16,
	                               .name = "sus" };
	struct sus_submitter s[2];
	unsigned long        out[2] = { 0, 0 };
	pthread_t            th[2];
	sem_t                started;
	ctp_stats            st;
	ctp_pool            *pool = NULL;
	int                  rc;

	rc = ctp_pool_create(&pool, &popts);
	CHECK(rc == 0, "round %d: ctp_pool_create: %s", round, ctp_strerror(rc));
	if (rc != 0)
		return;
	tu_sem_init(&started, 0);
	memset(s, 0, sizeof(s));
	for (int i = 0; i < 2; i++) {
		s[i].pool = pool;
		s[i].started = &started;
		th[i] = tu_spawn(sus_thread, &s[i]);
	}
	tu_sem_wait(&started);
	tu_sem_wait(&started);
	tu_delay_loop(rng_delay(rng) * 4);
	rc = ctp_pool_shutdown(pool, CTP_MSEC(1), CTP_FOREVER);
	CHECK(rc == 0, "round %d: ctp_pool_shutdown: %s", round,
	      ctp_strerror(rc));
	for (int i = 0; i < 2; i++)
		tu_join(th[i]);
	rc = ctp_pool_submit(pool, sus_fn, NULL, NULL, NULL);
	CHECK(rc == -ESHUTDOWN, "round %d: submit after shutdown: %d", round,
	      rc);
	ctp_pool_stats(pool, &st);
	rc = ctp_pool_destroy(pool);
	CHECK(rc == 0, "round %d: ctp_pool_destroy: %s", round, ctp_strerror(rc));
	sem_destroy(&started);

	for (int i = 0; i < 2; i++)
		sus_verify(&s[i], round, i, out);
	CHECK(st.submitted == s[0].accepted + s[1].accepted,
	      "round %d: submitted %llu, accepted %zu", round,
	      (unsigned long long)st.submitted, s[0].accepted + s[1].accepted);
	CHECK(st.completed == out[0] && st.dropped == out[1] &&
	      st.cancelled + st.timed_out + st.rejected == 0,
	      "round %d: stats completed %llu dropped %llu cancelled %llu "
	      "timed_out %llu rejected %llu; saw ran %lu dropped %lu", round,
	      (unsigned long long)st.completed, (unsigned long long)st.dropped,
	      (unsigned long long)st.cancelled,
	      (unsigned long long)st.timed_out,
	      (unsigned long long)st.rejected, out[0], out[1]);
	total[0] += out[0];
	total[1] += out[1];
}

static void test_stress_shutdown_under_submit(void **state)
{
	unsigned long rounds = tu_scaled(200, 1);
	unsigned long total[2] = { 0, 0 };
	uint32_t      rng = 0x2545f491u;

	(void)state;
	failures = 0;
	for (unsigned long r = 0; r < rounds && failures == 0; r++)
		sus_round((int)r, &rng, total);
	print_message("shutdown_under_submit: %lu rounds: ran=%lu "
	              "dropped=%lu\n", rounds, total[0], total[1]);
	assert_int_equal(failures, 0);
}

/* ---- create / destroy ---------------------------------------------------- */

static void cd_done(void *arg, int status)
{
	(void)status;
	atomic_fetch_add((atomic_int *)arg, 1);
}

static int cd_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

static void test_stress_create_destroy(void **state)
{
	ctp_pool_opts popts = { .threads = 2, .name = "cd" };
	ctp_task_opts topts = { .done = cd_done, .queue_wait = CTP_FOREVER };
	unsigned long cycles = tu_scaled(2000, 1), submitted = 0;
	atomic_int    done_calls = 0;
	tu_threads    base;
	char          left[256];
	int           baseline = tu_threads_baseline(&base), now = -1, extra;

	(void)state;
	failures = 0;
	assert_true(baseline > 0);
	for (unsigned long i = 0; i < cycles && failures == 0; i++) {
		ctp_pool *pool = NULL;
		ctp_stats st;
		int       rc = ctp_pool_create(&pool, &popts);

		CHECK(rc == 0, "cycle %lu: ctp_pool_create: %s", i,
		      ctp_strerror(rc));
		if (rc != 0)
			break;
		ctp_pool_stats(pool, &st);
		CHECK(st.threads == 2, "cycle %lu: stats.threads %u", i,
		      st.threads);
		if (i % 3 == 0) {
			rc = ctp_pool_submit(pool, cd_fn, &done_calls, &topts,
			                     NULL);
			CHECK(rc == 0, "cycle %lu: submit: %s", i,
			      ctp_strerror(rc));
			submitted += rc == 0;
		}
		if (i % 5 == 0) {
			rc = ctp_pool_shutdown(pool, 0, CTP_FOREVER);
			CHECK(rc == 0, "cycle %lu: shutdown: %s", i,
			      ctp_strerror(rc));
		}
		rc = ctp_pool_destroy(pool);
		CHECK(rc == 0, "cycle %lu: destroy: %s", i, ctp_strerror(rc));
	}
	/* Every pool was joined (shutdown with grace CTP_FOREVER, or destroy's
	 * own): no thread of ours may be left. A joined thread may take a
	 * moment to leave /proc/self/task; one still live after 2 s outlived
	 * its ctp_pool_destroy. */
	extra = tu_threads_back_to(&base, CTP_SEC(2), &now, left, sizeof(left));
	print_message("create_destroy: %lu cycles, threads %d -> %d\n", cycles,
	              baseline, now);
	if (extra != 0)
		print_error("threads left after ctp_pool_destroy: %s\n", left);
	assert_int_equal(failures, 0);
	assert_int_equal(atomic_load(&done_calls), submitted);
	assert_int_equal(extra, 0);
}


/* ---- a parent firing while a task with a deadline is being submitted ----- */

/* Regression (found by the API fuzzer): ctp_pool_submit linked the task to
 * its parent before it put the deadline in the timer heap. A cancel of the
 * parent in between finished the task at once, and the submit then put the
 * finished task in the heap, unreferenced: when its deadline came the timer
 * fired whatever task had reused the object. Here each round races a submit
 * (parent + 1 ms deadline) against the parent's cancel, then submits a task
 * without any deadline that sleeps on its token past that 1 ms (it likely
 * reuses the object): it must never see -ETIMEDOUT. */

#define PDR_PLAIN 6161

struct pdr_round {
	pthread_barrier_t *bar;
	ctp_token         *parent;
	int                cancel_rc;
};

static void *pdr_canceller(void *arg)
{
	struct pdr_round *r = arg;

	pthread_barrier_wait(r->bar);
	r->cancel_rc = ctp_token_cancel(r->parent);
	return NULL;
}

static int pdr_noop(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

/* Sleeps on its token a little longer than the racing task's deadline. */
static int pdr_plain(void *arg, ctp_token *token)
{
	int rc = ctp_token_sleep(token, CTP_MSEC(2));

	(void)arg;
	return rc == 0 ? PDR_PLAIN : rc;
}

static void test_stress_parent_cancel_races_deadline_submit(void **state)
{
	unsigned long rounds = tu_scaled(5000, 1), i;
	ctp_pool_opts po = { .threads = 2, .name = "pdr" };
	pthread_barrier_t bar;
	ctp_pool *pool;

	(void)state;
	failures = 0;
	assert_int_equal(ctp_pool_create(&pool, &po), 0);
	assert_int_equal(pthread_barrier_init(&bar, NULL, 2), 0);
	for (i = 0; i < rounds; i++) {
		struct pdr_round r = { .bar = &bar };
		ctp_task_opts o = { .timeout = CTP_MSEC(1) };
		ctp_task_opts plain = { .queue_wait = CTP_FOREVER };
		ctp_task *t = NULL, *p = NULL;
		pthread_t th;
		int rc, st = 0;

		assert_int_equal(ctp_token_create(&r.parent, NULL), 0);
		o.parent = r.parent;
		o.queue_wait = CTP_FOREVER;
		th = tu_spawn(pdr_canceller, &r);
		pthread_barrier_wait(&bar);
		rc = ctp_pool_submit(pool, pdr_noop, NULL, &o, &t);
		tu_join(th);
		CHECK(rc == 0 || rc == -ECANCELED, "round %lu: submit: %s", i,
		      ctp_strerror(rc));
		if (rc == 0) {
			CHECK(ctp_task_wait(t, CTP_SEC(10), NULL) == 0,
			      "round %lu: wait", i);
			ctp_task_release(t);
		}
		ctp_token_release(r.parent);
		/* a task with no deadline, likely in the recycled object */
		rc = ctp_pool_submit(pool, pdr_plain, NULL, &plain, &p);
		CHECK(rc == 0, "round %lu: plain submit: %s", i,
		      ctp_strerror(rc));
		if (rc == 0) {
			CHECK(ctp_task_wait(p, CTP_SEC(10), &st) == 0,
			      "round %lu: plain wait", i);
			CHECK(st == PDR_PLAIN, "round %lu: a task without a "
			      "deadline ended with %d (%s)", i, st,
			      ctp_strerror(st));
			ctp_task_release(p);
		}
	}
	pthread_barrier_destroy(&bar);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	print_message("parent_cancel_races_deadline_submit: %lu rounds\n",
	              rounds);
	assert_int_equal(failures, 0);
}


/* ---- shutdown racing a group cancel and its submitter --------------------- */

/* Regression (found by the spin model and the API fuzzer): shutdown's
 * drop step slept until the queue's count reached 0, but a slot given back
 * by someone else (a canceller finishing a task it caught queued, or a
 * submitter backing out because its parent fired after admission) bumped
 * only not_full, so shutdown could sleep forever. Each round: one thread
 * submits into a group until refused, one cancels the group, the test
 * thread shuts down; the shutdown must return (bounded: 10 s) and every
 * accepted task's done runs exactly once. */

struct sgc_round {
	ctp_pool        *pool;
	ctp_token       *group;
	atomic_int       go;
	atomic_long      accepted;
	atomic_long      dones;
	unsigned         spin_cancel;
	sem_t            shut;      /* posted when shutdown returned */
	int              shut_rc;
};

static int sgc_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

static void sgc_done(void *arg, int status)
{
	struct sgc_round *r = arg;

	(void)status;
	atomic_fetch_add(&r->dones, 1);
}

static void sgc_spin(unsigned n)
{
	for (volatile unsigned k = 0; k < n; k++)
		;
}

static void *sgc_submitter(void *arg)
{
	struct sgc_round *r = arg;
	ctp_task_opts o = { .done = sgc_done, .parent = r->group };

	while (atomic_load(&r->go) == 0)
		;
	for (;;) {
		int rc = ctp_pool_submit(r->pool, sgc_fn, r, &o, NULL);

		if (rc == 0)
			atomic_fetch_add(&r->accepted, 1);
		else if (rc == -ESHUTDOWN || rc == -ECANCELED)
			break;
	}
	return NULL;
}

static void *sgc_canceller(void *arg)
{
	struct sgc_round *r = arg;

	while (atomic_load(&r->go) == 0)
		;
	sgc_spin(r->spin_cancel);
	ctp_token_cancel(r->group);
	return NULL;
}

static void *sgc_shutter(void *arg)
{
	struct sgc_round *r = arg;

	r->shut_rc = ctp_pool_shutdown(r->pool, 0, CTP_FOREVER);
	tu_sem_post(&r->shut);
	return NULL;
}

static void test_stress_shutdown_races_group_cancel(void **state)
{
	unsigned long rounds = tu_scaled(3000, 1), i;
	unsigned seed = 12345;

	(void)state;
	failures = 0;
	for (i = 0; i < rounds; i++) {
		ctp_pool_opts po = { .threads = 1, .queue_capacity = 1024 };
		struct sgc_round r = { 0 };
		pthread_t s, c, sh;
		struct timespec ts;

		seed = seed * 1103515245u + 12345u;
		r.spin_cancel = (seed >> 16) % 2000;
		assert_int_equal(ctp_pool_create(&r.pool, &po), 0);
		assert_int_equal(ctp_token_create(&r.group, NULL), 0);
		tu_sem_init(&r.shut, 0);
		s = tu_spawn(sgc_submitter, &r);
		c = tu_spawn(sgc_canceller, &r);
		atomic_store(&r.go, 1);
		sgc_spin((seed >> 8) % 2000);
		sh = tu_spawn(sgc_shutter, &r);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 10;
		if (sem_timedwait(&r.shut, &ts) != 0) {
			/* a hung shutdown cannot be cleaned up: fail loudly */
			print_error("round %lu: ctp_pool_shutdown did not return "
			            "within 10 s\n", i);
			abort();
		}
		tu_join(sh);
		tu_join(s);
		tu_join(c);
		CHECK(r.shut_rc == 0, "round %lu: shutdown: %s", i,
		      ctp_strerror(r.shut_rc));
		CHECK(atomic_load(&r.dones) == atomic_load(&r.accepted),
		      "round %lu: %ld dones for %ld accepted", i,
		      atomic_load(&r.dones), atomic_load(&r.accepted));
		assert_int_equal(ctp_pool_destroy(r.pool), 0);
		ctp_token_release(r.group);
		sem_destroy(&r.shut);
	}
	print_message("shutdown_races_group_cancel: %lu rounds\n", rounds);
	assert_int_equal(failures, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stress_cancel_vs_start),
		cmocka_unit_test(test_stress_exactly_once_mixed),
		cmocka_unit_test(test_stress_shutdown_under_submit),
		cmocka_unit_test(test_stress_create_destroy),
		cmocka_unit_test(test_stress_parent_cancel_races_deadline_submit),
		cmocka_unit_test(test_stress_shutdown_races_group_cancel),
	};

	return cmocka_run_group_tests_name("stress", tests, NULL, NULL);
}
