/*
 * test_pool.c: pools, and the library-wide conventions.
 *
 * Covers create with NULL and zero opts, threads = 0 following the affinity
 * mask, every worker started (and on_thread_start run) before create returns,
 * queue capacity (default 4096, rounding up to a power of two), the limits,
 * NULL arguments, thread names ("<name>-<index>", "<name>-timer", default
 * "ctp", cut to 15 characters), the thread hooks, the stats identity after a
 * mix of outcomes, ctp_pool_wait_idle (idle, busy, waiting for done, several
 * waiters), -EDEADLK for calls that would wait for the pool from its own
 * threads (task, worker done, done run by a canceller, timer done), calls
 * into another pool and submits from inside a task, task objects cached by a
 * thread across pools, its exit and a destroy on another thread,
 * ctp_strerror, and that
 * ctpool.h pulls in no Concurrency Kit header.
 *
 * Determinism: workers are parked on semaphores; only the test's own thread
 * calls assert_*.
 */
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctpool.h"

/* Conventions: public headers include no Concurrency Kit header. */
#if defined(CK_CC_H) || defined(CK_PR_H) || defined(CK_RING_H) || \
	defined(CK_EC_H) || defined(CK_MD_H)
#error "ctpool.h must not include Concurrency Kit headers"
#endif

#include "fixtures.h"

/* ---- helpers ------------------------------------------------------------ */

static unsigned affinity_cpus(void)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		abort();
	return (unsigned)CPU_COUNT(&set);
}

/* Runs one task with a done to completion: the pool works. */
static void assert_pool_runs_tasks(ctp_pool *pool)
{
	struct rec r;
	ctp_task *t = NULL;
	int st = UNSET;

	rec_init(&r, 31);
	assert_int_equal(submit_rec(pool, &r, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, &st), 0);
	assert_int_equal(st, 31);
	assert_int_equal(r.calls, 1);
	ctp_task_release(t);
	rec_fini(&r);
}

/* ---- create ------------------------------------------------------------- */

static void test_pool_create_null_opts(void **state)
{
	(void)state;
	ctp_pool *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, NULL), 0);
	assert_non_null(pool);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.threads, affinity_cpus());
	assert_pool_runs_tasks(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

static void test_pool_create_zero_opts(void **state)
{
	(void)state;
	ctp_pool_opts o = { 0 };
	ctp_pool *pool = NULL;

	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	assert_non_null(pool);
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.threads, affinity_cpus());
	assert_int_equal(s.submitted, 0);
	assert_int_equal(s.queued, 0);
	assert_int_equal(s.running, 0);
	assert_pool_runs_tasks(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

/* threads = 0 counts the CPUs in the affinity mask, not the online CPUs:
 * narrowing the mask to one CPU gives one worker. */
static void test_pool_create_threads_zero_follows_affinity(void **state)
{
	(void)state;
	cpu_set_t orig, one;
	ctp_pool *pool = NULL;

	CPU_ZERO(&orig);
	assert_int_equal(sched_getaffinity(0, sizeof(orig), &orig), 0);
	assert_int_equal(ctp_pool_create(&pool, &(ctp_pool_opts){ 0 }), 0);
	assert_int_equal(stats_of(pool).threads, (unsigned)CPU_COUNT(&orig));
	assert_int_equal(ctp_pool_destroy(pool), 0);
	if (CPU_COUNT(&orig) < 2)
		return;

	CPU_ZERO(&one);
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (CPU_ISSET(c, &orig)) {
			CPU_SET(c, &one);
			break;
		}
	}
	assert_int_equal(sched_setaffinity(0, sizeof(one), &one), 0);
	int rc = ctp_pool_create(&pool, NULL);
	unsigned n = rc == 0 ? stats_of(pool).threads : 0;
	int drc = rc == 0 ? ctp_pool_destroy(pool) : 0;
	assert_int_equal(sched_setaffinity(0, sizeof(orig), &orig), 0);
	assert_int_equal(rc, 0);
	assert_int_equal(n, 1);
	assert_int_equal(drc, 0);
}

/* Thread hooks: which index ran where, with which user pointer. */
enum { MAXW = 8 };
struct hooks {
	atomic_int start[MAXW];
	atomic_int stop[MAXW];
	atomic_int bad;          /* index out of range or wrong user */
	pthread_t  start_thr[MAXW];
	pthread_t  stop_thr[MAXW];
};
static struct hooks hk;

static void on_start(unsigned i, void *user)
{
	if (user != &hk || i >= MAXW) {
		atomic_fetch_add(&hk.bad, 1);
		return;
	}
	hk.start_thr[i] = pthread_self();
	atomic_fetch_add(&hk.start[i], 1);
}

static void on_stop(unsigned i, void *user)
{
	if (user != &hk || i >= MAXW) {
		atomic_fetch_add(&hk.bad, 1);
		return;
	}
	hk.stop_thr[i] = pthread_self();
	atomic_fetch_add(&hk.stop[i], 1);
}

static void test_pool_create_starts_every_worker(void **state)
{
	(void)state;
	ctp_pool_opts o = { .threads = 3, .on_thread_start = on_start,
	                    .user = &hk };
	ctp_pool *pool = NULL;

	memset(&hk, 0, sizeof(hk));
	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	/* at once: no waiting between create and these checks */
	ctp_stats s = stats_of(pool);
	assert_int_equal(s.threads, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(hk.start[i], 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(hk.bad, 0);
}

static void test_pool_thread_hooks_once_per_index(void **state)
{
	(void)state;
	enum { N = 4 };
	ctp_pool_opts o = { .threads = N, .on_thread_start = on_start,
	                    .on_thread_stop = on_stop, .user = &hk };
	ctp_pool *pool = NULL;

	memset(&hk, 0, sizeof(hk));
	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(hk.start[i], 1);
		assert_int_equal(hk.stop[i], 0);
		assert_false(pthread_equal(hk.start_thr[i], pthread_self()));
		for (int j = 0; j < i; j++)
			assert_false(pthread_equal(hk.start_thr[i], hk.start_thr[j]));
	}
	assert_pool_runs_tasks(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < MAXW; i++) {
		assert_int_equal(hk.start[i], i < N);
		assert_int_equal(hk.stop[i], i < N);
	}
	/* each index stops on the thread that started it */
	for (int i = 0; i < N; i++)
		assert_true(pthread_equal(hk.stop_thr[i], hk.start_thr[i]));
	assert_int_equal(hk.bad, 0);
}

/*
 * Create failure: in a forked child whose address space is capped just above
 * its current size, a pool of CTP_MAX_THREADS workers cannot start them all.
 * create must fail with -EAGAIN/-ENOMEM, every index that ran
 * on_thread_start must also have run on_thread_stop, and no thread may be
 * left. Skipped under ASan/TSan, whose runtimes do not survive a capped
 * address space.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif

struct bighooks {
	atomic_int start[CTP_MAX_THREADS];
	atomic_int stop[CTP_MAX_THREADS];
	atomic_int bad;
};
static struct bighooks bh;

static void big_start(unsigned i, void *user)
{
	if (user != &bh || i >= CTP_MAX_THREADS)
		atomic_fetch_add(&bh.bad, 1);
	else
		atomic_fetch_add(&bh.start[i], 1);
}

static void big_stop(unsigned i, void *user)
{
	if (user != &bh || i >= CTP_MAX_THREADS)
		atomic_fetch_add(&bh.bad, 1);
	else
		atomic_fetch_add(&bh.stop[i], 1);
}

static long vm_size_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSize: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* Runs in the child; the exit code says what went wrong. */
static int create_failure_child(void)
{
	ctp_pool_opts o = { .threads = CTP_MAX_THREADS,
	                    .on_thread_start = big_start,
	                    .on_thread_stop = big_stop, .user = &bh };
	ctp_pool *pool = NULL;
	long kb = vm_size_kb();
	struct rlimit rl;
	tu_threads base; /* the child's only thread */

	if (kb < 0 || tu_threads_baseline(&base) != 1)
		return 2;
	rl.rlim_cur = rl.rlim_max = (rlim_t)kb * 1024 + ((rlim_t)32 << 20);
	if (setrlimit(RLIMIT_AS, &rl) != 0)
		return 2;
	int rc = ctp_pool_create(&pool, &o);
	if (rc == 0) {
		ctp_pool_destroy(pool);
		return 77; /* the machine held them all: nothing to test */
	}
	if (rc != -EAGAIN && rc != -ENOMEM)
		return 3;
	for (unsigned i = 0; i < CTP_MAX_THREADS; i++)
		if (bh.start[i] > 1 || bh.stop[i] != bh.start[i])
			return 4;
	if (bh.bad != 0)
		return 5;
	/* every started worker was joined: a moment to leave /proc, no more */
	if (tu_threads_back_to(&base, CTP_SEC(2), NULL, NULL, 0) != 0)
		return 6;
	return 0;
}

static void test_pool_create_failure_cleans_up(void **state)
{
	(void)state;
	int status = 0;

	if (UNDER_SANITIZER)
		skip();
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(create_failure_child());
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77)
		skip();
	/* 3: wrong error, 4: start/stop unbalanced, 5: bad hook args,
	 * 6: threads left behind */
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* How many tasks a pool of one parked worker queues before -EAGAIN. */
static unsigned queued_until_full(size_t capacity)
{
	ctp_pool *pool = pool_new(1, capacity);
	struct parked blk;
	unsigned n = 0;
	int rc;

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	while ((rc = ctp_pool_submit(pool, noop_fn, NULL, NULL, NULL)) == 0 &&
	       n <= 2 * 4096)
		n++;
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&blk);
	assert_int_equal(rc, -EAGAIN);
	return n;
}

static void test_pool_queue_capacity_rounds_up(void **state)
{
	(void)state;
	assert_int_equal(queued_until_full(3), 4);
	assert_int_equal(queued_until_full(1), 1);
	assert_int_equal(queued_until_full(4), 4);
	assert_int_equal(queued_until_full(5), 8);
}

static void test_pool_queue_capacity_default_4096(void **state)
{
	(void)state;
	assert_int_equal(queued_until_full(0), 4096);
}

static void test_pool_create_rejects_limits(void **state)
{
	(void)state;
	ctp_pool *pool = NULL;
	const unsigned bad_threads[] = { CTP_MAX_THREADS + 1, UINT_MAX };
	const size_t bad_caps[] = { CTP_MAX_CAPACITY + 1, CTP_MAX_CAPACITY * 2,
	                            SIZE_MAX / 2 + 2, SIZE_MAX };

	for (size_t i = 0; i < sizeof(bad_threads) / sizeof(bad_threads[0]); i++)
		assert_int_equal(ctp_pool_create(&pool, &(ctp_pool_opts){
		                 .threads = bad_threads[i] }), -EINVAL);
	for (size_t i = 0; i < sizeof(bad_caps) / sizeof(bad_caps[0]); i++)
		assert_int_equal(ctp_pool_create(&pool, &(ctp_pool_opts){
		                 .threads = 1, .queue_capacity = bad_caps[i] }),
		                 -EINVAL);
	assert_int_equal(ctp_pool_create(NULL, NULL), -EINVAL);
	assert_int_equal(ctp_pool_create(NULL, &(ctp_pool_opts){ .threads = 1 }),
	                 -EINVAL);
}

static void test_pool_null_args(void **state)
{
	(void)state;
	ctp_stats s, ref;
	ctp_pool *pool = pool_new(1, 0);

	assert_int_equal(ctp_pool_destroy(NULL), -EINVAL);
	assert_int_equal(ctp_pool_shutdown(NULL, 0, 0), -EINVAL);
	assert_int_equal(ctp_pool_shutdown(NULL, CTP_FOREVER, CTP_FOREVER),
	                 -EINVAL);
	assert_int_equal(ctp_pool_wait_idle(NULL, 0), -EINVAL);
	assert_int_equal(ctp_pool_wait_idle(NULL, CTP_FOREVER), -EINVAL);
	memset(&s, 0xab, sizeof(s));
	memcpy(&ref, &s, sizeof(s));
	ctp_pool_stats(NULL, &s); /* no-op: s untouched */
	assert_memory_equal(&s, &ref, sizeof(s));
	ctp_pool_stats(pool, NULL); /* no-op */
	assert_int_equal(ctp_pool_destroy(pool), 0);
}

/* ---- thread names ------------------------------------------------------- */

static void read_comm(char *buf, size_t len)
{
	char path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%ld/comm",
	         (long)syscall(SYS_gettid));
	f = fopen(path, "r");
	if (!f || !fgets(buf, (int)len, f))
		snprintf(buf, len, "<unreadable>");
	if (f)
		fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
}

/* Parks on its worker and reports the worker's name. */
struct namer {
	struct parked p;
	char          name[32];
};

static int namer_fn(void *arg, ctp_token *tok)
{
	struct namer *n = arg;

	read_comm(n->name, sizeof(n->name));
	return parked_fn(&n->p, tok);
}

/* Reports the name of the thread that runs done (the timer, here). */
struct timer_namer {
	struct rec r;
	char       name[32];
};

static void timer_namer_done(void *arg, int status)
{
	struct timer_namer *t = arg;

	read_comm(t->name, sizeof(t->name));
	rec_done(arg, status);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* Checks the names of n workers and of the timer for prefix `name` (NULL:
 * default), each "<prefix>-<suffix>" cut to 15 characters. */
static void check_names(const char *name, unsigned n)
{
	const char *prefix = name ? name : "ctp";
	ctp_pool_opts o = { .threads = n, .name = name };
	ctp_pool *pool = NULL;
	struct namer nm[MAXW];
	struct timer_namer tn;
	char got[MAXW][32], want[MAXW][32], timer[32];

	assert_true(n <= MAXW);
	assert_int_equal(ctp_pool_create(&pool, &o), 0);
	for (unsigned i = 0; i < n; i++) {
		memset(&nm[i], 0, sizeof(nm[i]));
		parked_init(&nm[i].p, 0);
		assert_int_equal(ctp_pool_submit(pool, namer_fn, &nm[i], NULL,
		                                 NULL), 0);
	}
	/* all n parked at once: each on its own worker */
	for (unsigned i = 0; i < n; i++)
		tu_sem_wait(&nm[i].p.started);

	/* a deadline passes while queued: the timer-callback thread runs done */
	memset(&tn, 0, sizeof(tn));
	rec_init(&tn.r, 0);
	assert_int_equal(ctp_pool_submit(pool, rec_fn, &tn,
	                 &(ctp_task_opts){ .done = timer_namer_done,
	                                   .timeout = CTP_MSEC(1) }, NULL), 0);
	tu_sem_wait(&tn.r.done_sem);

	for (unsigned i = 0; i < n; i++) {
		unpark(&nm[i].p, 1);
		snprintf(want[i], 16, "%s-%u", prefix, i);
		strcpy(got[i], nm[i].name);
	}
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (unsigned i = 0; i < n; i++)
		parked_fini(&nm[i].p);
	rec_fini(&tn.r);

	qsort(got, n, sizeof(got[0]), cmp_str);
	qsort(want, n, sizeof(want[0]), cmp_str);
	for (unsigned i = 0; i < n; i++)
		assert_string_equal(got[i], want[i]);
	snprintf(timer, 16, "%s-tcb", prefix); /* the timer-callback thread */
	assert_string_equal(tn.name, timer);
}

static void test_pool_thread_names_default_prefix(void **state)
{
	(void)state;
	check_names(NULL, 2);
}

static void test_pool_thread_names_custom_prefix(void **state)
{
	(void)state;
	check_names("wrk", 3);
}

static void test_pool_thread_names_cut_to_15(void **state)
{
	(void)state;
	/* every worker is "averyverylongpr": the prefix alone fills 15 chars */
	check_names("averyverylongprefix", 2);
	/* "abcdefghijkl-1" is 14 characters: kept whole */
	check_names("abcdefghijkl", 2);
}

/* ---- stats -------------------------------------------------------------- */

static void test_pool_stats_identity_after_mix(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 8);
	struct parked blk;
	ctp_token *parent = NULL;
	struct rec quick[3], can[2], late[2], grp, x;
	ctp_task *tc[2];

	parked_init(&blk, 0);
	assert_int_equal(ctp_token_create(&parent, NULL), 0);
	saturate(pool, &blk, 1);
	submit_recs(pool, quick, 3, NULL);
	submit_recs(pool, can, 2, tc);
	for (int i = 0; i < 2; i++) {
		rec_init(&late[i], 0);
		assert_int_equal(submit_rec(pool, &late[i],
		                 (ctp_task_opts){ .timeout = CTP_MSEC(20) }, NULL), 0);
	}
	rec_init(&grp, 0);
	assert_int_equal(submit_rec(pool, &grp,
	                 (ctp_task_opts){ .parent = parent }, NULL), 0);
	rec_init(&x, 0);
	assert_int_equal(submit_rec(pool, &x, NO_OPTS, NULL), -EAGAIN);

	for (int i = 0; i < 2; i++)
		assert_int_equal(ctp_task_cancel(tc[i]), 0);
	assert_int_equal(ctp_token_cancel(parent), 0);
	for (int i = 0; i < 2; i++)
		tu_sem_wait(&late[i].done_sem);
	unpark(&blk, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);

	ctp_stats s = stats_of(pool);
	assert_int_equal(s.submitted, 9);
	assert_int_equal(s.completed, 4);
	assert_int_equal(s.cancelled, 3);
	assert_int_equal(s.timed_out, 2);
	assert_int_equal(s.dropped, 0);
	assert_int_equal(s.rejected, 1);
	assert_identity(&s);
	assert_int_equal(s.threads, 1);

	assert_int_equal(ctp_pool_destroy(pool), 0);
	ctp_token_release(parent);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(quick[i].status, 0);
		rec_fini(&quick[i]);
	}
	for (int i = 0; i < 2; i++) {
		assert_int_equal(can[i].status, -ECANCELED);
		assert_int_equal(late[i].status, -ETIMEDOUT);
		ctp_task_release(tc[i]);
		rec_fini(&can[i]);
		rec_fini(&late[i]);
	}
	assert_int_equal(grp.status, -ECANCELED);
	assert_int_equal(x.calls, 0);
	rec_fini(&grp);
	rec_fini(&x);
	parked_fini(&blk);
}

/* ---- wait_idle ---------------------------------------------------------- */

struct idle_waiter {
	ctp_pool  *pool;
	int64_t    timeout;
	sem_t      calling;
	atomic_int ret;
};

static void *idle_waiter_main(void *arg)
{
	struct idle_waiter *w = arg;

	tu_sem_post(&w->calling);
	atomic_store(&w->ret, ctp_pool_wait_idle(w->pool, w->timeout));
	return NULL;
}

static void test_pool_wait_idle_returns_0_when_idle(void **state)
{
	(void)state;
	enum { N = 16 };
	ctp_pool *pool = pool_new(2, 0);
	struct rec r[N];

	assert_int_equal(ctp_pool_wait_idle(pool, 0), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_FOREVER), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, INT64_MAX), 0);
	for (int i = 0; i < N; i++) {
		rec_init(&r[i], i);
		assert_int_equal(submit_rec(pool, &r[i], NO_OPTS, NULL), 0);
	}
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_FOREVER), 0);
	/* every done has returned */
	for (int i = 0; i < N; i++)
		assert_int_equal(r[i].calls, 1);
	assert_int_equal(ctp_pool_wait_idle(pool, 0), 0);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	for (int i = 0; i < N; i++)
		rec_fini(&r[i]);
}

/* fn has returned but done still runs: the pool is not idle yet. */
struct slow_done {
	struct rec r;
	sem_t      in_done;
	sem_t      release;
	atomic_int returned;
};

static void slow_done_done(void *arg, int status)
{
	struct slow_done *d = arg;

	tu_sem_post(&d->in_done);
	tu_sem_wait(&d->release);
	rec_done(arg, status);
	atomic_store(&d->returned, 1);
}

static void test_pool_wait_idle_waits_for_done(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct slow_done d;

	memset(&d, 0, sizeof(d));
	rec_init(&d.r, 0);
	tu_sem_init(&d.in_done, 0);
	tu_sem_init(&d.release, 0);
	assert_int_equal(ctp_pool_submit(pool, rec_fn, &d,
	                 &(ctp_task_opts){ .done = slow_done_done }, NULL), 0);
	tu_sem_wait(&d.in_done);
	assert_int_equal(ctp_pool_wait_idle(pool, 0), -ETIMEDOUT);
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_MSEC(20)), -ETIMEDOUT);
	tu_sem_post(&d.release);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	assert_int_equal(d.returned, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&d.in_done);
	sem_destroy(&d.release);
	rec_fini(&d.r);
}

static void test_pool_wait_idle_times_out_when_busy(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct rec q;

	parked_init(&blk, 0);
	rec_init(&q, 0);
	saturate(pool, &blk, 1);
	assert_int_equal(submit_rec(pool, &q, NO_OPTS, NULL), 0);
	assert_int_equal(ctp_pool_wait_idle(pool, 0), -ETIMEDOUT);
	int64_t t0 = tu_now_ns();
	assert_int_equal(ctp_pool_wait_idle(pool, CTP_MSEC(20)), -ETIMEDOUT);
	int64_t el = tu_now_ns() - t0;
	assert_true(el >= CTP_MSEC(20));
	assert_true(el < CTP_SEC(5));
	assert_int_equal(ctp_pool_wait_idle(pool, -2), -EINVAL);
	assert_int_equal(ctp_pool_wait_idle(pool, INT64_MIN), -EINVAL);

	/* a huge timeout waits: it must not wrap into an expired deadline */
	struct idle_waiter w = { .pool = pool, .timeout = INT64_MAX };
	tu_sem_init(&w.calling, 0);
	pthread_t th = tu_spawn(idle_waiter_main, &w);
	tu_sem_wait(&w.calling);
	unpark(&blk, 1);
	tu_join(th);
	assert_int_equal(w.ret, 0);
	assert_int_equal(q.calls, 1);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&w.calling);
	rec_fini(&q);
	parked_fini(&blk);
}

static void test_pool_wait_idle_two_waiters(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct idle_waiter w[2];
	pthread_t th[2];

	parked_init(&blk, 0);
	saturate(pool, &blk, 1);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct idle_waiter){ .pool = pool, .timeout = BOUND };
		atomic_init(&w[i].ret, UNSET);
		tu_sem_init(&w[i].calling, 0);
		th[i] = tu_spawn(idle_waiter_main, &w[i]);
	}
	for (int i = 0; i < 2; i++)
		tu_sem_wait(&w[i].calling);
	unpark(&blk, 1);
	for (int i = 0; i < 2; i++) {
		tu_join(th[i]);
		assert_int_equal(w[i].ret, 0);
		sem_destroy(&w[i].calling);
	}
	assert_int_equal(ctp_pool_destroy(pool), 0);
	parked_fini(&blk);
}

/* ---- -EDEADLK from the pool's own threads ------------------------------- */

/* Calls that would wait for `pool`, made from fn and/or done. Destroy is only
 * tried once shutdown has said -EDEADLK, so a broken check cannot free the
 * pool under the test. */
struct selfcall {
	struct rec r;
	ctp_pool  *pool;
	atomic_int idle0, idle, shut, destroy;          /* from fn */
	atomic_int d_idle0, d_idle, d_shut, d_destroy;  /* from done */
};

static void selfcall_init(struct selfcall *s, ctp_pool *pool)
{
	memset(s, 0, sizeof(*s));
	rec_init(&s->r, 0);
	s->pool = pool;
	atomic_init(&s->idle0, UNSET);
	atomic_init(&s->idle, UNSET);
	atomic_init(&s->shut, UNSET);
	atomic_init(&s->destroy, UNSET);
	atomic_init(&s->d_idle0, UNSET);
	atomic_init(&s->d_idle, UNSET);
	atomic_init(&s->d_shut, UNSET);
	atomic_init(&s->d_destroy, UNSET);
}

static void call_pool(ctp_pool *pool, atomic_int *idle0, atomic_int *idle,
                      atomic_int *shut, atomic_int *destroy)
{
	atomic_store(idle0, ctp_pool_wait_idle(pool, 0));
	atomic_store(idle, ctp_pool_wait_idle(pool, CTP_MSEC(200)));
	atomic_store(shut, ctp_pool_shutdown(pool, CTP_MSEC(200),
	                                     CTP_MSEC(200)));
	if (atomic_load(shut) == -EDEADLK)
		atomic_store(destroy, ctp_pool_destroy(pool));
}

static int selfcall_fn(void *arg, ctp_token *tok)
{
	struct selfcall *s = arg;

	(void)tok;
	atomic_fetch_add(&s->r.ran, 1);
	call_pool(s->pool, &s->idle0, &s->idle, &s->shut, &s->destroy);
	return s->r.ret;
}

static void selfcall_done(void *arg, int status)
{
	struct selfcall *s = arg;

	call_pool(s->pool, &s->d_idle0, &s->d_idle, &s->d_shut, &s->d_destroy);
	rec_done(arg, status);
}

static const ctp_task_opts SELFCALL_OPTS = { .done = selfcall_done };

static void assert_edeadlk(atomic_int *idle0, atomic_int *idle,
                           atomic_int *shut, atomic_int *destroy)
{
	assert_int_equal(*idle0, -EDEADLK);
	assert_int_equal(*idle, -EDEADLK);
	assert_int_equal(*shut, -EDEADLK);
	assert_int_equal(*destroy, -EDEADLK);
}

static void test_pool_calls_from_task_edeadlk(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct selfcall s;
	ctp_task *t = NULL;

	selfcall_init(&s, pool);
	assert_int_equal(ctp_pool_submit(pool, selfcall_fn, &s, &SELFCALL_OPTS,
	                                 &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, NULL), 0);
	assert_edeadlk(&s.idle0, &s.idle, &s.shut, &s.destroy);
	/* its done ran on the worker */
	assert_edeadlk(&s.d_idle0, &s.d_idle, &s.d_shut, &s.d_destroy);
	/* nothing was shut down or freed */
	assert_pool_runs_tasks(pool);
	assert_int_equal(stats_of(pool).threads, 1);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&s.r);
}

static void test_pool_calls_from_cancelled_done_edeadlk(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct selfcall s;
	ctp_task *t = NULL;

	parked_init(&blk, 0);
	selfcall_init(&s, pool);
	saturate(pool, &blk, 1);
	assert_int_equal(ctp_pool_submit(pool, selfcall_fn, &s, &SELFCALL_OPTS,
	                                 &t), 0);
	/* done runs here, on the test thread, inside ctp_task_cancel */
	assert_int_equal(ctp_task_cancel(t), 0);
	assert_int_equal(s.r.calls, 1);
	assert_true(done_here(&s.r));
	assert_edeadlk(&s.d_idle0, &s.d_idle, &s.d_shut, &s.d_destroy);
	unpark(&blk, 1);
	assert_pool_runs_tasks(pool);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	assert_int_equal(s.r.ran, 0);
	rec_fini(&s.r);
	parked_fini(&blk);
}

static void test_pool_calls_from_timer_done_edeadlk(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct parked blk;
	struct selfcall s;
	ctp_task_opts o = { .done = selfcall_done, .timeout = CTP_MSEC(5) };

	parked_init(&blk, 0);
	selfcall_init(&s, pool);
	saturate(pool, &blk, 1);
	assert_int_equal(ctp_pool_submit(pool, selfcall_fn, &s, &o, NULL), 0);
	tu_sem_wait(&s.r.done_sem); /* the timer ran done */
	assert_int_equal(s.r.status, -ETIMEDOUT);
	assert_edeadlk(&s.d_idle0, &s.d_idle, &s.d_shut, &s.d_destroy);
	unpark(&blk, 1);
	assert_pool_runs_tasks(pool);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&s.r);
	parked_fini(&blk);
}

/* A task of pool A drives pool B all the way to destroy. */
struct cross {
	struct rec r;
	ctp_pool  *other;
	struct rec kid;
	atomic_int submit, wait, kid_status, idle, shut, destroy;
};

static int cross_fn(void *arg, ctp_token *tok)
{
	struct cross *c = arg;
	ctp_task *k = NULL;
	int st = UNSET;

	(void)tok;
	atomic_fetch_add(&c->r.ran, 1);
	atomic_store(&c->submit, submit_rec(c->other, &c->kid, NO_OPTS, &k));
	atomic_store(&c->wait, ctp_task_wait(k, BOUND, &st));
	atomic_store(&c->kid_status, st);
	ctp_task_release(k);
	atomic_store(&c->idle, ctp_pool_wait_idle(c->other, BOUND));
	atomic_store(&c->shut, ctp_pool_shutdown(c->other, BOUND, BOUND));
	atomic_store(&c->destroy, ctp_pool_destroy(c->other));
	return c->r.ret;
}

static void test_pool_calls_into_other_pool_from_task(void **state)
{
	(void)state;
	ctp_pool *a = pool_new(1, 0);
	ctp_pool *b = pool_new(1, 0);
	struct cross c;
	ctp_task *t = NULL;

	memset(&c, 0, sizeof(c));
	rec_init(&c.r, 0);
	rec_init(&c.kid, 27);
	c.other = b;
	assert_int_equal(submit(a, cross_fn, &c, NO_OPTS, &t), 0);
	assert_int_equal(ctp_task_wait(t, BOUND, NULL), 0);
	assert_int_equal(c.submit, 0);
	assert_int_equal(c.wait, 0);
	assert_int_equal(c.kid_status, 27);
	assert_int_equal(c.idle, 0);
	assert_int_equal(c.shut, 0);
	assert_int_equal(c.destroy, 0);
	assert_int_equal(c.kid.calls, 1);
	ctp_task_release(t);
	assert_int_equal(ctp_pool_destroy(a), 0);
	rec_fini(&c.r);
	rec_fini(&c.kid);
}

struct spawner {
	struct rec r;
	ctp_pool  *pool;
	struct rec kid[2];
	atomic_int ret[2];
};

static int spawner_fn(void *arg, ctp_token *tok)
{
	struct spawner *s = arg;
	ctp_task *t = NULL;

	(void)tok;
	atomic_fetch_add(&s->r.ran, 1);
	atomic_store(&s->ret[0], submit_rec(s->pool, &s->kid[0], NO_OPTS, NULL));
	atomic_store(&s->ret[1], submit_rec(s->pool, &s->kid[1], NO_OPTS, &t));
	ctp_task_release(t);
	return s->r.ret;
}

static void test_pool_submit_from_task(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(1, 0);
	struct spawner s;

	memset(&s, 0, sizeof(s));
	rec_init(&s.r, 0);
	rec_init(&s.kid[0], 1);
	rec_init(&s.kid[1], 2);
	s.pool = pool;
	assert_int_equal(submit(pool, spawner_fn, &s, NO_OPTS, NULL), 0);
	tu_sem_wait(&s.r.done_sem);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(s.ret[i], 0);
		assert_int_equal(s.kid[i].ran, 1);
		assert_int_equal(s.kid[i].calls, 1);
		assert_int_equal(s.kid[i].status, i + 1);
	}
	assert_int_equal(stats_of(pool).completed, 3);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	rec_fini(&s.r);
	rec_fini(&s.kid[0]);
	rec_fini(&s.kid[1]);
}

/*
 * Task objects travel in per-thread batches (task.c): a thread keeps a
 * few spare objects of the last pool it allocated from. Nothing may leak
 * or be touched after free (the ASan build checks) when that pool is
 * destroyed by another thread while the cache still holds its objects, when
 * the thread then allocates from another pool, when it cancels (its frees
 * go to its cache) and when it exits with a full cache.
 */
struct hopper {
	ctp_pool        *a, *b;
	sem_t            a_done;  /* the hopper is through with pool a */
	sem_t            a_gone;  /* main destroyed pool a */
	_Atomic unsigned ran;
	int              ret;     /* first failure, or 0 */
};

static int hop_fn(void *arg, ctp_token *token)
{
	struct hopper *h = arg;

	(void)token;
	atomic_fetch_add(&h->ran, 1);
	return 0;
}

static void hop_note(struct hopper *h, int r)
{
	if (r != 0 && h->ret == 0)
		h->ret = r;
}

static void *hopper_main(void *arg)
{
	struct hopper *h = arg;
	ctp_task_opts o = { .queue_wait = CTP_FOREVER };

	for (int i = 0; i < 200; i++)
		hop_note(h, ctp_pool_submit(h->a, hop_fn, h, &o, NULL));
	hop_note(h, ctp_pool_wait_idle(h->a, BOUND));
	tu_sem_post(&h->a_done);
	tu_sem_wait(&h->a_gone);
	/* the cache still holds pool a's objects: this gives them back */
	for (int i = 0; i < 200; i++)
		hop_note(h, ctp_pool_submit(h->b, hop_fn, h, &o, NULL));
	/* cancels free objects on this thread, into its cache */
	for (int i = 0; i < 100; i++) {
		ctp_task *t = NULL;
		ctp_task_opts d = { .queue_wait = CTP_FOREVER,
		                    .delay = CTP_SEC(3600) };

		hop_note(h, ctp_pool_submit(h->b, hop_fn, h, &d, &t));
		hop_note(h, ctp_task_cancel(t));
		ctp_task_release(t);
	}
	hop_note(h, ctp_pool_wait_idle(h->b, BOUND));
	return NULL; /* exits with pool b's objects in its cache */
}

static void test_pool_task_objects_follow_threads_and_pools(void **state)
{
	(void)state;
	struct hopper h;
	pthread_t th;

	memset(&h, 0, sizeof(h));
	h.a = pool_new(2, 0);
	h.b = pool_new(2, 0);
	tu_sem_init(&h.a_done, 0);
	tu_sem_init(&h.a_gone, 0);
	assert_int_equal(pthread_create(&th, NULL, hopper_main, &h), 0);
	tu_sem_wait(&h.a_done);
	assert_int_equal(ctp_pool_destroy(h.a), 0);
	tu_sem_post(&h.a_gone);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(h.ret, 0);
	assert_int_equal(atomic_load(&h.ran), 400);
	assert_int_equal(stats_of(h.b).cancelled, 100);
	/* and this thread's own cache, given back by the destroy */
	for (int i = 0; i < 50; i++)
		assert_int_equal(ctp_pool_submit(h.b, hop_fn, &h, NULL, NULL), 0);
	assert_int_equal(ctp_pool_wait_idle(h.b, BOUND), 0);
	assert_int_equal(ctp_pool_destroy(h.b), 0);
	assert_int_equal(atomic_load(&h.ran), 450);
	sem_destroy(&h.a_done);
	sem_destroy(&h.a_gone);
}

/*
 * A submit waiting for room whose parent fires with -ETIMEDOUT (the parent
 * task's own deadline) returns the parent's reason, as for any other
 * reason, and is not a rejection (before: -EAGAIN, counted rejected).
 */
struct parent_to {
	ctp_pool *pool;
	sem_t     blocker_go;  /* the blocker waits here */
	sem_t     in;          /* posted by the blocker and the parent task */
	sem_t     submit_go;   /* the parent submits once the queue is full */
	int       submit_ret;
};

static int pto_blocker_fn(void *arg, ctp_token *token)
{
	struct parent_to *p = arg;

	(void)token;
	tu_sem_post(&p->in);
	tu_sem_wait(&p->blocker_go);
	return 0;
}

static int pto_noop_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

static int pto_parent_fn(void *arg, ctp_token *token)
{
	struct parent_to *p = arg;
	ctp_task_opts o = { .parent = token, .queue_wait = CTP_FOREVER };

	tu_sem_post(&p->in);
	tu_sem_wait(&p->submit_go);
	/* the queue is full: this waits until our own deadline fires */
	p->submit_ret = ctp_pool_submit(p->pool, pto_noop_fn, NULL, &o, NULL);
	return 0;
}

static void test_pool_submit_parent_timed_out_while_waiting(void **state)
{
	(void)state;
	ctp_pool *pool = pool_new(2, 1);
	struct parent_to p = { .pool = pool, .submit_ret = 1 };
	ctp_task_opts timed = { .timeout = CTP_MSEC(300) };
	ctp_task *parent;
	int status = 1;

	tu_sem_init(&p.blocker_go, 0);
	tu_sem_init(&p.in, 0);
	tu_sem_init(&p.submit_go, 0);
	/* one at a time: the queue has one place */
	assert_int_equal(ctp_pool_submit(pool, pto_blocker_fn, &p, NULL,
	                 NULL), 0);
	tu_sem_wait(&p.in);
	assert_int_equal(ctp_pool_submit(pool, pto_parent_fn, &p, &timed,
	                 &parent), 0);
	tu_sem_wait(&p.in); /* both workers busy */
	assert_int_equal(ctp_pool_submit(pool, pto_noop_fn, NULL, NULL, NULL),
	                 0); /* the one place of the queue */
	tu_sem_post(&p.submit_go);
	assert_int_equal(ctp_task_wait(parent, BOUND, &status), 0);
	assert_int_equal(p.submit_ret, -ETIMEDOUT);
	assert_int_equal(status, 0); /* it ran: its own return value */
	assert_int_equal(stats_of(pool).rejected, 0);
	tu_sem_post(&p.blocker_go);
	assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	ctp_task_release(parent);
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&p.blocker_go);
	sem_destroy(&p.in);
	sem_destroy(&p.submit_go);
}

/* ---- idle workers ------------------------------------------------------- */

struct rendezvous {
	sem_t in;  /* posted by each task once it runs */
	sem_t go;  /* the tasks wait here until every one has started */
};

static int rendezvous_fn(void *arg, ctp_token *token)
{
	struct rendezvous *rv = arg;

	(void)token;
	tu_sem_post(&rv->in);
	tu_sem_wait(&rv->go);
	return 0;
}

/* `rounds` times: n tasks submitted at once to a pool of n workers, each
 * waiting until all n have started */
static void rendezvous_rounds(unsigned n, int rounds)
{
	ctp_pool *pool = pool_new(n, 0);
	struct rendezvous rv;

	tu_sem_init(&rv.in, 0);
	tu_sem_init(&rv.go, 0);
	for (int round = 0; round < rounds; round++) {
		for (unsigned i = 0; i < n; i++)
			assert_int_equal(ctp_pool_submit(pool, rendezvous_fn,
			    &rv, NULL, NULL), 0);
		for (unsigned i = 0; i < n; i++)
			tu_sem_wait(&rv.in);
		for (unsigned i = 0; i < n; i++)
			tu_sem_post(&rv.go);
		assert_int_equal(ctp_pool_wait_idle(pool, BOUND), 0);
	}
	assert_int_equal(ctp_pool_destroy(pool), 0);
	sem_destroy(&rv.in);
	sem_destroy(&rv.go);
}

/* N tasks submitted at once to N idle workers all start together: none of
 * them waits in the queue for a busy worker while another worker sleeps.
 * (A regression: the submits saw the polling worker and woke nobody, and
 * the one worker it woke did not wake the next.) With more workers than
 * CPUs the cap holds the wakes back, and the sentinel wakes the rest as
 * the awake ones are seen stuck (test_pool_cpu_cap_stuck_workers). A task
 * that never starts makes tu_sem_wait abort after 30 s. */
static void test_pool_idle_workers_all_start(void **state)
{
	(void)state;
	static const unsigned sizes[] = { 2, 4, 8 };

	for (unsigned k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
		rendezvous_rounds(sizes[k], 200);
}

/* The CPU cap (pool.c, "Awake workers"): a pool created on 1 CPU wakes
 * one worker for queued tasks while it makes progress. Tasks that block
 * until all N have started (a rendezvous) still all start: each time the
 * awake workers are all stuck, the sentinel becomes one more and claims
 * the next sentinel. Without the sentinel (the model's
 * BUG_CAP_NO_SENTINEL) the second task never starts and tu_sem_wait
 * aborts after 30 s. */
static void test_pool_cpu_cap_stuck_workers(void **state)
{
	(void)state;
	static const unsigned sizes[] = { 2, 3, 8 };
	cpu_set_t old, one;
	int cpu = -1;

	assert_int_equal(sched_getaffinity(0, sizeof(old), &old), 0);
	for (int i = 0; i < CPU_SETSIZE && cpu < 0; i++)
		if (CPU_ISSET(i, &old))
			cpu = i;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	/* the workers inherit the mask, and the pool counts its CPUs in it */
	assert_int_equal(sched_setaffinity(0, sizeof(one), &one), 0);
	for (unsigned k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
		rendezvous_rounds(sizes[k], 20);
	assert_int_equal(sched_setaffinity(0, sizeof(old), &old), 0);
}

/* ---- ctp_strerror ------------------------------------------------------- */

static void test_pool_strerror_names_every_code(void **state)
{
	(void)state;
	const int codes[] = { 0, -EINVAL, -ENOMEM, -EAGAIN, -EDEADLK,
	                      -ESHUTDOWN, -ETIMEDOUT, -ECANCELED, -EINPROGRESS,
	                      -EALREADY, -EMFILE, -ENFILE };
	enum { N = sizeof(codes) / sizeof(codes[0]) };
	const char *s[N];

	for (int i = 0; i < N; i++) {
		s[i] = ctp_strerror(codes[i]);
		assert_non_null(s[i]);
		assert_true(s[i][0] != '\0');
		/* static: the same string every time */
		assert_ptr_equal(ctp_strerror(codes[i]), s[i]);
		for (int j = 0; j < i; j++)
			assert_string_not_equal(s[i], s[j]);
	}
	/* others: the system's text */
	assert_string_equal(ctp_strerror(-ENOENT), strerror(ENOENT));
	assert_string_equal(ctp_strerror(-EROFS), strerror(EROFS));
	assert_non_null(ctp_strerror(-123456));
	assert_non_null(ctp_strerror(123456));
	assert_non_null(ctp_strerror(INT_MIN));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_create_null_opts),
		cmocka_unit_test(test_pool_create_zero_opts),
		cmocka_unit_test(test_pool_create_threads_zero_follows_affinity),
		cmocka_unit_test(test_pool_create_starts_every_worker),
		cmocka_unit_test(test_pool_thread_hooks_once_per_index),
		cmocka_unit_test(test_pool_create_failure_cleans_up),
		cmocka_unit_test(test_pool_queue_capacity_rounds_up),
		cmocka_unit_test(test_pool_queue_capacity_default_4096),
		cmocka_unit_test(test_pool_create_rejects_limits),
		cmocka_unit_test(test_pool_null_args),
		cmocka_unit_test(test_pool_thread_names_default_prefix),
		cmocka_unit_test(test_pool_thread_names_custom_prefix),
		cmocka_unit_test(test_pool_thread_names_cut_to_15),
		cmocka_unit_test(test_pool_stats_identity_after_mix),
		cmocka_unit_test(test_pool_wait_idle_returns_0_when_idle),
		cmocka_unit_test(test_pool_wait_idle_waits_for_done),
		cmocka_unit_test(test_pool_wait_idle_times_out_when_busy),
		cmocka_unit_test(test_pool_wait_idle_two_waiters),
		cmocka_unit_test(test_pool_calls_from_task_edeadlk),
		cmocka_unit_test(test_pool_calls_from_cancelled_done_edeadlk),
		cmocka_unit_test(test_pool_calls_from_timer_done_edeadlk),
		cmocka_unit_test(test_pool_calls_into_other_pool_from_task),
		cmocka_unit_test(test_pool_submit_from_task),
		cmocka_unit_test(test_pool_submit_parent_timed_out_while_waiting),
		cmocka_unit_test(test_pool_task_objects_follow_threads_and_pools),
		cmocka_unit_test(test_pool_idle_workers_all_start),
		cmocka_unit_test(test_pool_cpu_cap_stuck_workers),
		cmocka_unit_test(test_pool_strerror_names_every_code),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
