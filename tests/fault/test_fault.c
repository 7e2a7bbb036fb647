/*
 * test_fault.c: fault injection. The library's objects are linked into this
 * executable with -Wl,--wrap=malloc,calloc,realloc,aligned_alloc,
 * pthread_create (tests/fault/meson.build), so every call the library makes
 * to them lands in __wrap_* below, which can fail the k-th one.
 *
 * Design notes
 *   Arming. One global counter, armed only around the call under test, so
 *   calls from the library's own threads (workers, timer) count too. The test
 *   never allocates while armed (cmocka lives in a shared library and is not
 *   wrapped; printf's buffers are libc-internal and not wrapped either).
 *   Modes: ONE fails only the k-th call; FROM fails the k-th and every later
 *   one (a machine that stays out of memory).
 *
 *   Sweep. For k = 1, 2, ... run the scenario with the k-th call failing,
 *   until a run sees fewer than k calls: then every fault point has been hit.
 *   Each run checks: the call returned 0 or the clean negative errno for the
 *   fault (-ENOMEM for memory, -EAGAIN for pthread_create); a refused object
 *   is not created (the out pointer keeps its sentinel); what exists stays
 *   usable (a later call succeeds, wait_idle, destroy); done runs exactly
 *   once for accepted tasks and never for refused ones; every thread that
 *   ran on_thread_start runs on_thread_stop; no library thread is left
 *   running (the pthread_create wrapper counts live threads); LeakSanitizer
 *   checks the memory at exit.
 *
 *   Real failures, no wrapper: RLIMIT_NPROC (in a forked child that drops
 *   root, which ignores the limit) makes pthread_create fail in the kernel;
 *   RLIMIT_NOFILE makes ctp_token_fd's eventfd fail.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "ctpool.h"
#include "../testutil.h"

#if defined(__SANITIZE_THREAD__)
#define FAULT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FAULT_TSAN 1
#endif
#endif

/* An out pointer the library must leave alone when it fails. */
#define SENTINEL ((void *)(uintptr_t)0x5e5e5e5e)

/* ---- the wrappers ------------------------------------------------------- */

enum fault_kind { FK_MALLOC, FK_CALLOC, FK_REALLOC, FK_ALIGNED, FK_THREAD,
                  FK_N };

static const char *const kind_name[FK_N] = {
	"malloc", "calloc", "realloc", "aligned_alloc", "pthread_create",
};

#define MAX_INJECT 4096

static _Atomic bool          f_armed;
static _Atomic bool          f_from;     /* FROM mode */
static _Atomic unsigned long f_fail_at;  /* 1-based */
static _Atomic unsigned long f_calls;    /* calls seen while armed */
static _Atomic unsigned long f_injected; /* failures injected */
static _Atomic int           f_kinds[MAX_INJECT]; /* kind of each failure */
static _Atomic unsigned      live_threads; /* started via the wrapper, not
                                              yet returned */

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__real_aligned_alloc(size_t align, size_t size);
int __real_pthread_create(pthread_t *t, const pthread_attr_t *attr,
                          void *(*fn)(void *), void *arg);

static bool should_fail(enum fault_kind kind)
{
	unsigned long n, at, i;

	if (!atomic_load(&f_armed))
		return false;
	n = atomic_fetch_add(&f_calls, 1) + 1;
	at = atomic_load(&f_fail_at);
	if (n != at && !(atomic_load(&f_from) && n > at))
		return false;
	i = atomic_fetch_add(&f_injected, 1);
	if (i < MAX_INJECT)
		atomic_store(&f_kinds[i], kind);
	return true;
}

void *__wrap_malloc(size_t size)
{
	if (should_fail(FK_MALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
	if (should_fail(FK_CALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
	if (should_fail(FK_REALLOC)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_realloc(p, size);
}

void *__wrap_aligned_alloc(size_t align, size_t size)
{
	if (should_fail(FK_ALIGNED)) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_aligned_alloc(align, size);
}

/* Threads go through a trampoline that keeps live_threads: a fixed table of
 * slots, so that starting a thread allocates nothing of ours. */
#define TRAMP_SLOTS 256

struct tramp {
	_Atomic bool used;
	void      *(*fn)(void *);
	void        *arg;
};

static struct tramp tramps[TRAMP_SLOTS];

static void *trampoline(void *p)
{
	struct tramp *s = p;
	void *(*fn)(void *) = s->fn;
	void *arg = s->arg, *ret;

	atomic_store(&s->used, false);
	ret = fn(arg);
	atomic_fetch_sub(&live_threads, 1);
	return ret;
}

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *attr,
                          void *(*fn)(void *), void *arg)
{
	struct tramp *s = NULL;
	int r;

	if (should_fail(FK_THREAD))
		return EAGAIN;
	for (unsigned i = 0; s == NULL; i = (i + 1) % TRAMP_SLOTS) {
		bool no = false;

		if (atomic_compare_exchange_strong(&tramps[i].used, &no, true))
			s = &tramps[i];
	}
	s->fn = fn;
	s->arg = arg;
	atomic_fetch_add(&live_threads, 1);
	r = __real_pthread_create(t, attr, trampoline, s);
	if (r != 0) {
		atomic_fetch_sub(&live_threads, 1);
		atomic_store(&s->used, false);
	}
	return r;
}

/* ---- arming ------------------------------------------------------------- */

struct fault_res {
	unsigned long calls;     /* calls seen while armed */
	unsigned long injected;  /* failures injected */
	int           kind;      /* kind of the first failure, or -1 */
};

static void fault_arm(unsigned long k, bool from)
{
	atomic_store(&f_calls, 0);
	atomic_store(&f_injected, 0);
	atomic_store(&f_fail_at, k);
	atomic_store(&f_from, from);
	atomic_store(&f_armed, true);
}

static struct fault_res fault_disarm(void)
{
	struct fault_res r;

	atomic_store(&f_armed, false);
	r.calls = atomic_load(&f_calls);
	r.injected = atomic_load(&f_injected);
	r.kind = r.injected != 0 ? atomic_load(&f_kinds[0]) : -1;
	return r;
}

/* Failures injected so far in this armed window (read while armed). */
static unsigned long fault_mark(void)
{
	return atomic_load(&f_injected);
}

/* The error a call must return when its first injected failure is `kind`. */
static int expected_err(int kind)
{
	return kind == FK_THREAD ? -EAGAIN : -ENOMEM;
}

/* The error for the failures injected from mark `before` on. */
static int expected_since(unsigned long before)
{
	return expected_err(atomic_load(&f_kinds[before]));
}

static uint64_t stats_rejected(ctp_pool *pool)
{
	ctp_stats st;

	ctp_pool_stats(pool, &st);
	return st.rejected;
}

/* A submit answers -ENOMEM to every injected failure: memory, and a timer
 * thread that cannot start (-EAGAIN is reserved for a full queue). */
static int expected_submit(void)
{
	return -ENOMEM;
}

/* ---- the sweep ---------------------------------------------------------- */

typedef bool (*scenario_fn)(const void *param, unsigned long k, bool from);

static unsigned long total_points;
static unsigned long total_runs;

/* Runs scenario `run` with k = 1, 2, ... in both modes until a run sees no
 * injected failure. The scenario returns whether a failure was injected. */
static void sweep(const char *name, scenario_fn run, const void *param)
{
	unsigned long k, points = 0, per_kind[FK_N] = { 0 };
	char detail[160] = "";
	size_t len = 0;

	for (k = 1; run(param, k, false); k++) {
		points++;
		per_kind[atomic_load(&f_kinds[0])]++;
		assert_true(k < 100000);
	}
	total_runs += k;
	for (k = 1; run(param, k, true); k++)
		assert_true(k < 100000);
	total_runs += k;
	for (unsigned i = 0; i < FK_N && len < sizeof(detail); i++) {
		if (per_kind[i] != 0)
			len += snprintf(detail + len, sizeof(detail) - len,
			    "%s%s %lu", len != 0 ? ", " : "", kind_name[i],
			    per_kind[i]);
	}
	printf("fault: %s: %lu points (%s)\n", name, points, detail);
	fflush(stdout);
	total_points += points;
}

/* ---- shared fixtures ---------------------------------------------------- */

#define MAX_HOOK 8

static _Atomic unsigned hook_started[MAX_HOOK], hook_stopped[MAX_HOOK];

static void on_start(unsigned index, void *user)
{
	(void)user;
	if (index < MAX_HOOK)
		atomic_fetch_add(&hook_started[index], 1);
}

static void on_stop(unsigned index, void *user)
{
	(void)user;
	if (index < MAX_HOOK)
		atomic_fetch_add(&hook_stopped[index], 1);
}

static void hooks_reset(void)
{
	for (unsigned i = 0; i < MAX_HOOK; i++) {
		atomic_store(&hook_started[i], 0);
		atomic_store(&hook_stopped[i], 0);
	}
}

/* Every thread that ran on_thread_start also ran on_thread_stop, once. */
static void assert_hooks_balanced(void)
{
	for (unsigned i = 0; i < MAX_HOOK; i++) {
		assert_true(atomic_load(&hook_started[i]) <= 1);
		assert_int_equal(atomic_load(&hook_started[i]),
		    atomic_load(&hook_stopped[i]));
	}
}

/* One record per task: how often done ran and with what. */
#define MAX_TASKS 128

struct slot {
	_Atomic int calls;
	_Atomic int status;
};

static struct slot slots[MAX_TASKS];

static void slots_reset(void)
{
	for (unsigned i = 0; i < MAX_TASKS; i++) {
		atomic_store(&slots[i].calls, 0);
		atomic_store(&slots[i].status, 1);
	}
}

static void done_cb(void *arg, int status)
{
	struct slot *s = arg;

	atomic_store(&s->status, status);
	atomic_fetch_add(&s->calls, 1);
}

static int quick_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

/* Parks a worker until its token fires (ctp_task_cancel on it). */
static sem_t blocker_running;

static int blocker_fn(void *arg, ctp_token *token)
{
	(void)arg;
	tu_sem_post(&blocker_running);
	return ctp_token_sleep(token, CTP_FOREVER);
}

static ctp_pool *make_pool(unsigned threads)
{
	ctp_pool_opts o = { .threads = threads, .queue_capacity = 128,
	                    .name = "fault" };
	ctp_pool *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	return pool;
}

/* A pool still works: a task runs, the pool goes idle. */
static void assert_pool_usable(ctp_pool *pool)
{
	struct slot s = { 0, 1 };
	ctp_task_opts o = { .done = done_cb };
	ctp_task *t = NULL;
	int st = 1;

	assert_int_equal(ctp_pool_submit(pool, quick_fn, &s, &o, &t), 0);
	assert_int_equal(ctp_task_wait(t, CTP_SEC(30), &st), 0);
	assert_int_equal(st, 0);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_SEC(30)), 0);
	assert_int_equal(atomic_load(&s.calls), 1);
	assert_int_equal(atomic_load(&s.status), 0);
}

/* ---- pool_create -------------------------------------------------------- */

static bool run_pool_create(const void *param, unsigned long k, bool from)
{
	unsigned n = *(const unsigned *)param;
	ctp_pool_opts o = { .threads = n, .name = "fault",
	                    .on_thread_start = on_start,
	                    .on_thread_stop = on_stop };
	unsigned live0 = atomic_load(&live_threads);
	ctp_pool *pool = SENTINEL;
	struct fault_res f;
	ctp_stats st;
	int r;

	hooks_reset();
	fault_arm(k, from);
	r = ctp_pool_create(&pool, &o);
	f = fault_disarm();
	if (f.injected != 0) {
		assert_int_equal(r, expected_err(f.kind));
		assert_ptr_equal(pool, SENTINEL);
		assert_hooks_balanced();
		assert_int_equal(atomic_load(&live_threads), live0);
		return true;
	}
	assert_int_equal(r, 0);
	ctp_pool_stats(pool, &st);
	assert_int_equal(st.threads, n);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(atomic_load(&hook_started[i]), 1);
	assert_pool_usable(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(atomic_load(&hook_stopped[i]), 1);
	assert_int_equal(atomic_load(&live_threads), live0);
	return false;
}

static void test_fault_pool_create(void **state)
{
	static const unsigned counts[] = { 1, 2, 3, 4 };
	char name[64];

	(void)state;
	for (unsigned i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "pool_create threads=%u",
		    counts[i]);
		sweep(name, run_pool_create, &counts[i]);
	}
}

/* ---- pool_submit -------------------------------------------------------- */

struct submit_param {
	const char *name;
	unsigned    n;        /* tasks submitted while armed */
	bool        handle;
	bool        timeout;
	bool        parent;
};

/*
 * One worker parked on a blocker, then n submits while armed (every one
 * takes a fresh task object, and the first deadline starts the timer thread
 * and the heap), then one more unarmed submit that must succeed. With a
 * parent, cancelling it finishes every accepted queued task at once.
 */
static bool run_submit(const void *param, unsigned long k, bool from)
{
	const struct submit_param *p = param;
	unsigned live0 = atomic_load(&live_threads);
	ctp_task *h[MAX_TASKS], *blocker = NULL;
	int res[MAX_TASKS], expect[MAX_TASKS];
	ctp_token *parent = NULL;
	unsigned i, n = p->n, accepted = 0;
	ctp_task_opts o = { .done = done_cb };
	struct fault_res f;
	ctp_pool *pool;
	ctp_stats st;

	assert_true(n + 1 <= MAX_TASKS);
	slots_reset();
	pool = make_pool(1);
	if (p->parent)
		assert_int_equal(ctp_token_create(&parent, NULL), 0);
	o.parent = parent;
	o.timeout = p->timeout ? CTP_SEC(60) : 0;
	assert_int_equal(ctp_pool_submit(pool, blocker_fn, NULL, NULL,
	    &blocker), 0);
	tu_sem_wait(&blocker_running);
	for (i = 0; i <= n; i++)
		h[i] = SENTINEL;

	fault_arm(k, from);
	for (i = 0; i < n; i++) {
		unsigned long before = fault_mark();

		res[i] = ctp_pool_submit(pool, quick_fn, &slots[i], &o,
		    p->handle ? &h[i] : NULL);
		expect[i] = fault_mark() != before ? expected_submit() : 0;
	}
	f = fault_disarm();

	for (i = 0; i < n; i++) {
		assert_int_equal(res[i], expect[i]);
		if (res[i] == 0)
			accepted++;
		else
			assert_ptr_equal(h[i], SENTINEL);
	}
	/* the pool is still usable: one more submit is accepted */
	assert_int_equal(ctp_pool_submit(pool, quick_fn, &slots[n], &o,
	    p->handle ? &h[n] : NULL), 0);
	res[n] = 0;
	accepted++;
	if (p->parent) {
		/* queued tasks of the tree finish before cancel returns */
		assert_int_equal(ctp_token_cancel(parent), 0);
		for (i = 0; i <= n; i++) {
			assert_int_equal(atomic_load(&slots[i].calls),
			    res[i] == 0 ? 1 : 0);
			if (res[i] == 0)
				assert_int_equal(atomic_load(&slots[i].status),
				    -ECANCELED);
		}
	}
	assert_int_equal(ctp_task_cancel(blocker), -EINPROGRESS);
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_SEC(30)), 0);
	for (i = 0; i <= n; i++) {
		int want = p->parent ? -ECANCELED : 0, s = 1;

		assert_int_equal(atomic_load(&slots[i].calls),
		    res[i] == 0 ? 1 : 0);
		if (res[i] != 0)
			continue;
		assert_int_equal(atomic_load(&slots[i].status), want);
		if (p->handle) {
			assert_int_equal(ctp_task_wait(h[i], 0, &s), 0);
			assert_int_equal(s, want);
			ctp_task_release(h[i]);
		}
	}
	ctp_pool_stats(pool, &st);
	assert_int_equal(st.submitted, accepted + 1);
	assert_int_equal(st.rejected, 0);
	assert_int_equal(st.queued, 0);
	assert_int_equal(st.submitted,
	    st.completed + st.cancelled + st.timed_out + st.dropped);
	ctp_task_release(blocker);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_token_release(parent);
	assert_int_equal(atomic_load(&live_threads), live0);
	return f.injected != 0;
}

static void test_fault_pool_submit(void **state)
{
	static const struct submit_param ps[] = {
		{ "pool_submit plain x4", 4, false, false, false },
		{ "pool_submit handle x4", 4, true, false, false },
		{ "pool_submit timeout x72 (timer start, heap growth)", 72,
		  false, true, false },
		{ "pool_submit parent x4", 4, false, false, true },
		{ "pool_submit timeout+parent+handle x4", 4, true, true,
		  true },
	};

	(void)state;
	for (unsigned i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
		sweep(ps[i].name, run_submit, &ps[i]);
}

/* ---- task_reschedule ---------------------------------------------------- */

/*
 * One worker parked on a blocker, a plain task queued behind it (it has no
 * ext yet: the reschedule attaches one for its due time, and makes the due
 * heap and the timer thread), then ctp_task_reschedule(1 ms) while armed.
 * A failure leaves the task queued as it was; either way it runs once,
 * after the blocker.
 */
static bool run_reschedule(const void *param, unsigned long k, bool from)
{
	unsigned live0 = atomic_load(&live_threads);
	ctp_task_opts o = { .done = done_cb };
	ctp_task *h = NULL, *blocker = NULL;
	struct fault_res f;
	ctp_pool *pool;
	int r, s = 1;

	(void)param;
	slots_reset();
	pool = make_pool(1);
	assert_int_equal(ctp_pool_submit(pool, blocker_fn, NULL, NULL,
	    &blocker), 0);
	tu_sem_wait(&blocker_running);
	assert_int_equal(ctp_pool_submit(pool, quick_fn, &slots[0], &o, &h),
	    0);
	fault_arm(k, from);
	r = ctp_task_reschedule(h, CTP_MSEC(1));
	f = fault_disarm();
	assert_int_equal(r, f.injected != 0 ? expected_submit() : 0);
	assert_int_equal(ctp_task_state(h), CTP_TASK_QUEUED);
	assert_int_equal(ctp_task_cancel(blocker), -EINPROGRESS);
	assert_int_equal(ctp_task_wait(h, CTP_SEC(30), &s), 0);
	assert_int_equal(s, 0);
	assert_int_equal(atomic_load(&slots[0].calls), 1);
	assert_int_equal(atomic_load(&slots[0].status), 0);
	ctp_task_release(h);
	ctp_task_release(blocker);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(atomic_load(&live_threads), live0);
	return f.injected != 0;
}

static void test_fault_task_reschedule(void **state)
{
	(void)state;
	sweep("task_reschedule plain, 1 ms", run_reschedule, NULL);
}

/* ---- token_create ------------------------------------------------------- */

enum parent_kind { PARENT_NONE, PARENT_LIVE, PARENT_FIRED };

static bool run_token_create(const void *param, unsigned long k, bool from)
{
	enum parent_kind pk = *(const enum parent_kind *)param;
	ctp_token *parent = NULL, *t = SENTINEL;
	struct fault_res f;
	int r;

	if (pk != PARENT_NONE)
		assert_int_equal(ctp_token_create(&parent, NULL), 0);
	if (pk == PARENT_FIRED)
		assert_int_equal(ctp_token_cancel(parent), 0);
	fault_arm(k, from);
	r = ctp_token_create(&t, parent);
	f = fault_disarm();
	if (f.injected != 0) {
		assert_int_equal(r, expected_err(f.kind));
		assert_ptr_equal(t, SENTINEL);
		if (parent != NULL)
			assert_int_equal(ctp_token_cancel(parent),
			    pk == PARENT_FIRED ? -EALREADY : 0);
		ctp_token_release(parent);
		return true;
	}
	assert_int_equal(r, 0);
	assert_int_equal(ctp_token_reason(t),
	    pk == PARENT_FIRED ? -ECANCELED : 0);
	if (pk == PARENT_LIVE) {
		assert_int_equal(ctp_token_cancel(parent), 0);
		assert_int_equal(ctp_token_reason(t), -ECANCELED);
	}
	ctp_token_release(parent); /* parent first: any order is allowed */
	ctp_token_release(t);
	return false;
}

static void test_fault_token_create(void **state)
{
	static const enum parent_kind kinds[] = {
		PARENT_NONE, PARENT_LIVE, PARENT_FIRED,
	};
	static const char *const names[] = {
		"token_create", "token_create parent", "token_create fired parent",
	};

	(void)state;
	for (unsigned i = 0; i < 3; i++)
		sweep(names[i], run_token_create, &kinds[i]);
}

/* ---- token_watch -------------------------------------------------------- */

static void watch_fn(void *arg)
{
	atomic_fetch_add((_Atomic int *)arg, 1);
}

static bool run_token_watch(const void *param, unsigned long k, bool from)
{
	bool fired = *(const bool *)param;
	ctp_watch *w = SENTINEL;
	_Atomic int ran = 0;
	struct fault_res f;
	ctp_token *t;
	int r;

	assert_int_equal(ctp_token_create(&t, NULL), 0);
	if (fired)
		assert_int_equal(ctp_token_cancel(t), 0);
	fault_arm(k, from);
	r = ctp_token_watch(t, watch_fn, &ran, &w);
	f = fault_disarm();
	if (f.injected != 0) {
		assert_int_equal(r, expected_err(f.kind));
		assert_ptr_equal(w, SENTINEL);
		assert_int_equal(atomic_load(&ran), 0);
		ctp_token_cancel(t);
		assert_int_equal(atomic_load(&ran), 0);
		ctp_token_release(t);
		return true;
	}
	assert_int_equal(r, 0);
	assert_int_equal(atomic_load(&ran), fired ? 1 : 0);
	ctp_token_cancel(t);
	assert_int_equal(atomic_load(&ran), 1);
	ctp_token_unwatch(w);
	ctp_token_release(t);
	return false;
}

static void test_fault_token_watch(void **state)
{
	static const bool fired[] = { false, true };

	(void)state;
	sweep("token_watch", run_token_watch, &fired[0]);
	sweep("token_watch fired token", run_token_watch, &fired[1]);
}

/* ---- queue_create ------------------------------------------------------- */

static bool run_queue_create(const void *param, unsigned long k, bool from)
{
	size_t cap = *(const size_t *)param;
	ctp_queue *q = SENTINEL;
	struct fault_res f;
	void *item = NULL;
	int r;

	fault_arm(k, from);
	r = ctp_queue_create(&q, cap);
	f = fault_disarm();
	if (f.injected != 0) {
		assert_int_equal(r, expected_err(f.kind));
		assert_ptr_equal(q, SENTINEL);
		return true;
	}
	assert_int_equal(r, 0);
	assert_int_equal(ctp_queue_push(q, &item, NULL, 0), 0);
	assert_int_equal(ctp_queue_pop(q, &item, NULL, 0), 0);
	assert_ptr_equal(item, &item);
	ctp_queue_destroy(q);
	return false;
}

static void test_fault_queue_create(void **state)
{
	static const size_t caps[] = { 1, 1000 };

	(void)state;
	sweep("queue_create capacity=1", run_queue_create, &caps[0]);
	sweep("queue_create capacity=1000", run_queue_create, &caps[1]);
}

/* ---- inside a task ------------------------------------------------------ */

/*
 * From inside a running task (so the calls come from a worker thread):
 * wait on a queue with the task's token (its first use of the token's
 * rare part, which a task object gets only when needed), submit a child
 * task with the task's token as parent, create a child token of it, and
 * watch it. The test arms around the task's calls only.
 */
struct in_task {
	ctp_pool   *pool;
	ctp_queue  *queue;          /* empty */
	sem_t       ready, go, finished;
	int         r_pop, r_submit, r_token, r_watch;
	int         e_pop, e_submit, e_token, e_watch;
	ctp_token  *child;
	ctp_watch  *watch;
	_Atomic int watched;
};

static int in_task_fn(void *arg, ctp_token *token)
{
	struct in_task *it = arg;
	ctp_task_opts o = { .done = done_cb, .parent = token };
	ctp_pool *pool = it->pool;
	unsigned long before;
	void *item;

	tu_sem_post(&it->ready);
	tu_sem_wait(&it->go);
	it->r_pop = ctp_queue_pop(it->queue, &item, token, CTP_USEC(1));
	/* a wait never fails for memory: without its watch it polls the
	 * token (test_fault_pop_without_memory_polls_its_token) */
	it->e_pop = -ETIMEDOUT;
	before = fault_mark();
	it->r_submit = ctp_pool_submit(pool, quick_fn, &slots[0], &o, NULL);
	it->e_submit = fault_mark() != before ? expected_submit() : 0;
	before = fault_mark();
	it->r_token = ctp_token_create(&it->child, token);
	it->e_token = fault_mark() != before ? expected_since(before) : 0;
	before = fault_mark();
	it->r_watch = ctp_token_watch(token, watch_fn, &it->watched,
	    &it->watch);
	it->e_watch = fault_mark() != before ? expected_since(before) : 0;
	tu_sem_post(&it->finished);
	return 0;
}

static bool run_in_task(const void *param, unsigned long k, bool from)
{
	unsigned live0 = atomic_load(&live_threads);
	struct in_task it;
	struct fault_res f;
	ctp_pool *pool;
	ctp_task *t;
	int st = 1;

	(void)param;
	memset(&it, 0, sizeof(it));
	tu_sem_init(&it.ready, 0);
	tu_sem_init(&it.go, 0);
	tu_sem_init(&it.finished, 0);
	it.child = SENTINEL;
	it.watch = SENTINEL;
	slots_reset();
	pool = make_pool(2);
	it.pool = pool;
	assert_int_equal(ctp_queue_create(&it.queue, 1), 0);
	assert_int_equal(ctp_pool_submit(pool, in_task_fn, &it, NULL, &t), 0);
	tu_sem_wait(&it.ready);
	fault_arm(k, from);
	tu_sem_post(&it.go);
	tu_sem_wait(&it.finished);
	f = fault_disarm();
	assert_int_equal(ctp_task_wait(t, CTP_SEC(30), &st), 0);
	assert_int_equal(st, 0);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_SEC(30)), 0);

	assert_int_equal(it.r_pop, it.e_pop);
	ctp_queue_destroy(it.queue);
	assert_int_equal(it.r_submit, it.e_submit);
	assert_int_equal(atomic_load(&slots[0].calls), it.r_submit == 0);
	if (it.r_submit == 0)
		assert_int_equal(atomic_load(&slots[0].status), 0);
	assert_int_equal(it.r_token, it.e_token);
	if (it.r_token != 0)
		assert_ptr_equal(it.child, SENTINEL);
	else
		ctp_token_release(it.child);
	assert_int_equal(it.r_watch, it.e_watch);
	if (it.r_watch != 0) {
		assert_ptr_equal(it.watch, SENTINEL);
	} else {
		/* the task's token never fired: the watch never ran */
		assert_int_equal(atomic_load(&it.watched), 0);
		ctp_token_unwatch(it.watch);
	}
	assert_pool_usable(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(atomic_load(&live_threads), live0);
	sem_destroy(&it.ready);
	sem_destroy(&it.go);
	sem_destroy(&it.finished);
	return f.injected != 0;
}

static void test_fault_in_task(void **state)
{
	(void)state;
	sweep("in task: queue_pop(task token) + submit(parent=task) + "
	    "token_create + token_watch",
	    run_in_task, NULL);
}

/*
 * A wait on a task's token whose watch cannot be had (the token's ext, the
 * first allocation of the pop, fails; here every allocation fails while the
 * test watches) is still ended by a cancel: it polls the token every
 * millisecond, and every second its caller waits again and tries the
 * allocation again. The test sees both, not a time: the thread's voluntary
 * context switches go up by POLLS while the queue stays empty and the token
 * unfired (ck_ec's own backoff, 2 ms then x8, would take minutes for that
 * many), a second failed allocation comes, then the cancel ends the pop
 * with the token's reason. (The test's own /proc reads allocate inside
 * libc, which is not wrapped.)
 */
#define POLLS 20

struct poller {
	ctp_queue  *queue;
	sem_t       ready, go;
	_Atomic int tid;
	atomic_bool popping;
	_Atomic int r_pop;
};

static int poller_fn(void *arg, ctp_token *token)
{
	struct poller *p = arg;
	void *item;

	atomic_store(&p->tid, (int)gettid());
	tu_sem_post(&p->ready);
	tu_sem_wait(&p->go);
	atomic_store(&p->popping, true);
	int r = ctp_queue_pop(p->queue, &item, token, CTP_FOREVER);

	atomic_store(&p->r_pop, r);
	return r;
}

/* The thread's voluntary context switches (each sleep that ended), or -1. */
static long vcsw(int tid)
{
	char path[64], buf[4096], *at;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	at = strstr(buf, "\nvoluntary_ctxt_switches:");
	return at != NULL ? strtol(at + 26, NULL, 10) : -1;
}

static void test_fault_pop_without_memory_polls_its_token(void **state)
{
	struct poller p = { .r_pop = 1 };
	struct fault_res f;
	ctp_pool *pool = make_pool(1);
	ctp_task *t;
	int64_t end = tu_now_ns() + CTP_SEC(30);
	long first = -1, now = -1;
	char st = '?';
	int status = 1, cancel;

	(void)state;
	tu_sem_init(&p.ready, 0);
	tu_sem_init(&p.go, 0);
	assert_int_equal(ctp_queue_create(&p.queue, 1), 0);
	/* a new pool's first task object: its token has no ext yet */
	assert_int_equal(ctp_pool_submit(pool, poller_fn, &p, NULL, &t), 0);
	tu_sem_wait(&p.ready);
	fault_arm(1, true);
	tu_sem_post(&p.go);
	/* the pop's allocation failed and its thread sleeps */
	while (atomic_load(&p.popping) == false || fault_mark() == 0 ||
	    !tu_thread_info(atomic_load(&p.tid), NULL, &st) || st != 'S') {
		if (tu_now_ns() > end)
			break;
		sched_yield();
	}
	first = vcsw(atomic_load(&p.tid));
	/* it polls: POLLS wake-ups with nothing to wake it */
	do {
		if (tu_now_ns() > end)
			break;
		usleep(1000);
		now = vcsw(atomic_load(&p.tid));
	} while (now - first < POLLS);
	/* and tries the allocation again */
	while (fault_mark() < 2 && tu_now_ns() < end)
		usleep(1000);
	cancel = atomic_load(&p.r_pop) == 1 ? ctp_task_cancel(t) : 1;
	f = fault_disarm();
	/* checked once disarmed: a failure here must not leave it armed */
	assert_true(first >= 0);
	assert_true(now - first >= POLLS);
	assert_true(f.injected >= 2);
	assert_int_equal(cancel, -EINPROGRESS); /* it was still in the pop */
	assert_int_equal(ctp_task_wait(t, CTP_SEC(30), &status), 0);
	assert_int_equal(status, -ECANCELED);
	assert_int_equal(atomic_load(&p.r_pop), -ECANCELED);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_queue_destroy(p.queue);
	sem_destroy(&p.ready);
	sem_destroy(&p.go);
}

/* ---- calls that must not allocate --------------------------------------- */

/*
 * Cancel, wait, stats, queue operations, shutdown and destroy: armed to fail
 * the first call, and none may come, from any thread (the workers and the
 * timer run their tasks, done callbacks and deadlines meanwhile).
 */
static int sleeper_fn(void *arg, ctp_token *token)
{
	(void)arg;
	return ctp_token_sleep(token, CTP_FOREVER);
}

static void test_fault_no_alloc_paths(void **state)
{
	ctp_task_opts od = { .done = done_cb, .timeout = CTP_MSEC(1) };
	ctp_task_opts oq = { .done = done_cb };
	unsigned live0 = atomic_load(&live_threads);
	ctp_task *blocker, *run2, *q1, *q2;
	ctp_token *group, *tok;
	ctp_queue *queue;
	struct fault_res f;
	ctp_pool *pool;
	ctp_stats st;
	void *item;
	int s;

	(void)state;
	slots_reset();
	pool = make_pool(2);
	assert_int_equal(ctp_token_create(&group, NULL), 0);
	assert_int_equal(ctp_token_create(&tok, NULL), 0);
	assert_int_equal(ctp_queue_create(&queue, 4), 0);
	/* both workers parked, the timer started, tasks queued */
	assert_int_equal(ctp_pool_submit(pool, blocker_fn, NULL, NULL,
	    &blocker), 0);
	tu_sem_wait(&blocker_running);
	assert_int_equal(ctp_pool_submit(pool, blocker_fn, NULL, NULL,
	    &run2), 0);
	tu_sem_wait(&blocker_running);
	assert_int_equal(ctp_pool_submit(pool, quick_fn, &slots[0], &od,
	    NULL), 0);                                 /* deadline fires */
	assert_int_equal(ctp_pool_submit(pool, quick_fn, &slots[1], &oq,
	    &q1), 0);                                  /* cancelled */
	oq.parent = group;
	assert_int_equal(ctp_pool_submit(pool, quick_fn, &slots[2], &oq,
	    NULL), 0);                                 /* group cancelled */
	oq.parent = NULL;
	assert_int_equal(ctp_pool_submit(pool, quick_fn, &slots[3], &oq,
	    &q2), 0);                                  /* dropped */
	assert_int_equal(ctp_pool_submit(pool, sleeper_fn, &slots[4], &oq,
	    NULL), 0);                                 /* dropped */

	fault_arm(1, false);
	s = ctp_task_cancel(q1);
	(void)ctp_token_cancel(group);
	(void)ctp_token_sleep(tok, CTP_MSEC(5)); /* the deadline passes */
	(void)ctp_token_cancel(tok);
	(void)ctp_queue_push(queue, NULL, NULL, 0);
	(void)ctp_queue_pop(queue, &item, NULL, 0);
	(void)ctp_queue_pop(queue, &item, tok, CTP_MSEC(1));
	ctp_queue_close(queue);
	ctp_queue_destroy(queue);
	ctp_pool_stats(pool, &st);
	(void)ctp_pool_wait_idle(pool, 0);
	(void)ctp_task_state(q2);
	(void)ctp_pool_shutdown(pool, 0, CTP_FOREVER);
	(void)ctp_task_wait(q2, CTP_SEC(30), NULL);
	ctp_task_release(q1);
	ctp_task_release(q2);
	ctp_task_release(run2);
	ctp_task_release(blocker);
	(void)ctp_pool_destroy(pool);
	ctp_token_release(group);
	ctp_token_release(tok);
	f = fault_disarm();

	printf("fault: no-alloc paths (cancel, token, queue ops, shutdown, "
	    "destroy): %lu calls\n", f.calls);
	assert_int_equal(f.calls, 0);
	assert_int_equal(s, 0);
	/* its deadline passed during the 5 ms sleep; a timer thread that was
	 * not scheduled by the shutdown loses to it: either reason is right */
	assert_true(atomic_load(&slots[0].status) == -ETIMEDOUT ||
	    atomic_load(&slots[0].status) == -ESHUTDOWN);
	assert_int_equal(atomic_load(&slots[1].status), -ECANCELED);
	assert_int_equal(atomic_load(&slots[2].status), -ECANCELED);
	assert_int_equal(atomic_load(&slots[3].status), -ESHUTDOWN);
	assert_int_equal(atomic_load(&slots[4].status), -ESHUTDOWN);
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(atomic_load(&slots[i].calls), 1);
	assert_int_equal(atomic_load(&live_threads), live0);
}

/* ---- ctp_token_fd: eventfd fails for real ------------------------------- */

static void test_fault_token_fd_emfile(void **state)
{
	struct rlimit old, none;
	ctp_token *t, *fired;
	struct pollfd pfd;
	int r1, r2, fd, fd2;

	(void)state;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(ctp_token_create(&t, NULL), 0);
	assert_int_equal(ctp_token_create(&fired, NULL), 0);
	assert_int_equal(ctp_token_cancel(fired), 0);
	none = old;
	none.rlim_cur = 0; /* no new descriptor at all */
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &none), 0);
	r1 = ctp_token_fd(t);
	r2 = ctp_token_fd(fired);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(r1, -EMFILE);
	assert_int_equal(r2, -EMFILE);
	/* the token is unharmed: the fd is made on the next call */
	fd = ctp_token_fd(t);
	assert_true(fd >= 0);
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, 0), 0);
	assert_int_equal(ctp_token_cancel(t), 0);
	assert_int_equal(poll(&pfd, 1, 0), 1);
	fd2 = ctp_token_fd(fired);
	assert_true(fd2 >= 0);
	pfd = (struct pollfd){ .fd = fd2, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, 0), 1);
	ctp_token_release(t);
	ctp_token_release(fired);
	printf("fault: token_fd under RLIMIT_NOFILE=0: -EMFILE, then usable\n");
}

/* ---- RLIMIT_NPROC: pthread_create fails in the kernel ------------------- */

enum { NPROC_OK = 0, NPROC_SKIP = 77 };

/* Child: exit code 0 on success, NPROC_SKIP, or the failing line. */
#define CHILD_CHECK(c) do { if (!(c)) { \
	fprintf(stderr, "nproc child: %s:%d: %s\n", __FILE__, __LINE__, #c); \
	fflush(stderr); _exit(__LINE__ % 200 + 1); } } while (0)

static void set_nproc(rlim_t cur)
{
	struct rlimit rl;

	CHILD_CHECK(getrlimit(RLIMIT_NPROC, &rl) == 0);
	rl.rlim_cur = cur < rl.rlim_max ? cur : rl.rlim_max;
	CHILD_CHECK(setrlimit(RLIMIT_NPROC, &rl) == 0);
}

static int nproc_child(void)
{
	ctp_pool_opts o = { .threads = 4, .name = "nproc",
	                    .on_thread_start = on_start,
	                    .on_thread_stop = on_stop };
	ctp_task_opts ot = { .done = done_cb, .timeout = CTP_SEC(60) };
	unsigned eagain = 0, limit, partial = 0;
	struct rlimit rl;
	ctp_pool *pool = SENTINEL;
	int r = -1;

	if (geteuid() == 0) {
		if (setgroups(0, NULL) != 0 || setgid(65534) != 0 ||
		    setuid(65534) != 0)
			return NPROC_SKIP;
	}
	/* raise the limit one process at a time: 0..3 workers start, then 4 */
	for (limit = 1; limit <= 256; limit++) {
		hooks_reset();
		set_nproc(limit);
		r = ctp_pool_create(&pool, &o);
		set_nproc(RLIM_INFINITY);
		if (r == 0)
			break;
		CHILD_CHECK(r == -EAGAIN);
		CHILD_CHECK(pool == SENTINEL);
		for (unsigned i = 0; i < MAX_HOOK; i++)
			CHILD_CHECK(atomic_load(&hook_started[i]) ==
			    atomic_load(&hook_stopped[i]));
		if (atomic_load(&hook_started[0]) != 0)
			partial++;
		eagain++;
	}
	CHILD_CHECK(r == 0);
	CHILD_CHECK(eagain >= 1); /* limit 1 always fails */
	/* the timer thread cannot start: the deadline submit is refused */
	slots_reset();
	set_nproc(1);
	r = ctp_pool_submit(pool, quick_fn, &slots[0], &ot, NULL);
	set_nproc(RLIM_INFINITY);
	CHILD_CHECK(r == -ENOMEM);
	CHILD_CHECK(atomic_load(&slots[0].calls) == 0);
	CHILD_CHECK(stats_rejected(pool) == 0); /* not a full queue */
	CHILD_CHECK(ctp_pool_submit(pool, quick_fn, &slots[1], &ot, NULL) == 0);
	CHILD_CHECK(ctp_pool_wait_idle(pool, CTP_SEC(30)) == 0);
	CHILD_CHECK(atomic_load(&slots[1].calls) == 1);
	CHILD_CHECK(ctp_pool_destroy(pool) == 0);
	for (unsigned i = 0; i < 4; i++)
		CHILD_CHECK(atomic_load(&hook_stopped[i]) == 1);
	CHILD_CHECK(atomic_load(&live_threads) == 0);
	CHILD_CHECK(getrlimit(RLIMIT_NPROC, &rl) == 0);
	printf("fault: RLIMIT_NPROC: pool_create threads=4 -> -EAGAIN at %u "
	    "limits (%u after a partial start), timer start -> -ENOMEM\n",
	    eagain, partial);
	fflush(stdout);
	return NPROC_OK;
}

static void test_fault_nproc(void **state)
{
	int status = 0;
	pid_t pid;

	(void)state;
#ifdef FAULT_TSAN
	printf("fault: RLIMIT_NPROC: skipped under TSan (no fork)\n");
	skip();
#endif
	assert_int_equal(atomic_load(&live_threads), 0);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		exit(nproc_child()); /* exit, not _exit: LSan checks the child */
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == NPROC_SKIP) {
		printf("fault: RLIMIT_NPROC: skipped (cannot drop root)\n");
		skip();
	}
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- main --------------------------------------------------------------- */

static int group_setup(void **state)
{
	(void)state;
	tu_sem_init(&blocker_running, 0);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	printf("fault points swept: %lu (%lu runs)\n", total_points,
	    total_runs);
	sem_destroy(&blocker_running);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fault_pool_create),
		cmocka_unit_test(test_fault_pool_submit),
		cmocka_unit_test(test_fault_task_reschedule),
		cmocka_unit_test(test_fault_token_create),
		cmocka_unit_test(test_fault_token_watch),
		cmocka_unit_test(test_fault_queue_create),
		cmocka_unit_test(test_fault_in_task),
		cmocka_unit_test(test_fault_pop_without_memory_polls_its_token),
		cmocka_unit_test(test_fault_no_alloc_paths),
		cmocka_unit_test(test_fault_token_fd_emfile),
		cmocka_unit_test(test_fault_nproc),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
