/*
 * sched_driver.c: the scheduling benchmark, linked with one adapter
 * (bench/sched_peer.h): delayed tasks, their cancellation, priorities.
 *
 * Usage:
 *   bench_sched_<peer> timer    [--mode idle|busy] [--delays N] [--min-ms A]
 *                               [--max-ms B] [--inflight C] [--workers W]
 *                               [--flood-us U] [--flood-depth D]
 *   bench_sched_<peer> cancel   [--pending P] [--ops N] [--workers W]
 *   bench_sched_<peer> priority [--samples N] [--wake-samples M]
 *                               [--workers W] [--task-us U] [--depth D]
 *
 * Output (stdout, nothing else goes there), as bench/driver.c:
 *   peer=<p> scenario=<s> config=<c> figure=<f> value=<v> unit=<u>
 *     better=lower|higher version=<v> [k=v ...]
 *   peer=<p> scenario=<s> config=<c> figure=<f> skip="<why>"
 *   peer=<p> scenario=<s> config=<c> error="<what>"       (exit status 1)
 *
 * Scenarios:
 *  sched-timer: how late a delayed task starts (its first instruction on a
 *    worker minus the driver's clock before the submit plus the delay).
 *    N delays drawn uniformly (1 us steps) from [A, B] ms by a fixed seed,
 *    so every peer gets the same ones, C of them in flight at a time (each
 *    start lets the driver submit the next): with C = 100 and 1-100 ms, a
 *    delay falls due every ~0.5 ms, so the figure is timer accuracy, not a
 *    burst. Mode busy adds a flood: W + D tasks of U us of CPU time (a spin)
 *    that each submit themselves again when they end, so the W workers are
 *    always busy and D tasks always wait; a due task queues behind them as in any FIFO, the
 *    same load for every peer (flood_tasks_per_s shows it).
 *  sched-cancel: ns per (submit a delayed task + cancel it + give its
 *    handle back) with P delayed tasks already pending, delays 1-2 h (so
 *    the timer's order is random, never a plain append). The clock runs
 *    over N pairs, on the timer's own thread for libraries whose timers
 *    belong to a loop (libuv, GLib, asio), and until every cancelled
 *    notification of the N has arrived (libuv's close callbacks, asio's
 *    aborted handlers run after the calls).
 *  sched-priority: submit-to-start of a high-priority task while W workers
 *    run low-priority U us tasks and D more wait (each resubmits itself),
 *    N samples at random gaps of 0.3-1.3 ms. Printed with the longest low
 *    task (no pool may pre-empt one: a worker is free at the earliest when
 *    one ends), hi_after_free (start minus the first end of a low task after
 *    the submit: the pool's own hand-over) and the pool's wake latency on
 *    the same pool, idle (M samples, 1 ms apart, before the flood).
 *
 * Self-checks (an error line and exit 1, never a figure): every task runs
 * or is cancelled exactly once, no delayed task starts before it is due,
 * every cancel of a far-future task succeeds, no flood task is lost.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <time.h>

#include "sched_peer.h"

#define MSEC INT64_C(1000000)
#define HOUR (INT64_C(3600) * 1000000000)

/* ---- output ------------------------------------------------------------- */

static const struct sched_peer *peer;
static const char *scenario = "?";
static char        config[64] = "?";
static char        version[64];

/* Copies s into a single key=value token: no spaces, no quotes. */
static void token_copy(char *dst, size_t size, const char *s)
{
	size_t i;

	for (i = 0; s != NULL && s[i] != '\0' && i + 1 < size; i++)
		dst[i] = (s[i] == ' ' || s[i] == '"' || s[i] == '\t' ||
		          s[i] == '\n') ? '_' : s[i];
	dst[i] = '\0';
}

static void out_prefix(void)
{
	printf("peer=%s scenario=%s config=%s", peer->name, scenario, config);
}

static void print_quoted(const char *s)
{
	putchar('"');
	for (; s != NULL && *s != '\0'; s++)
		putchar(*s == '"' ? '\'' : *s == '\n' ? ' ' : *s);
	putchar('"');
}

/* One figure, better=lower unless the unit is a rate (tasks/s: load
 * information, not a score). */
static void out_value(const char *figure, double value, int decimals,
                      const char *unit, const char *extra_fmt, ...)
{
	out_prefix();
	printf(" figure=%s value=%.*f unit=%s better=%s version=%s", figure,
	       decimals, value, unit,
	       strcmp(unit, "tasks/s") == 0 ? "higher" : "lower", version);
	if (extra_fmt != NULL) {
		va_list ap;

		putchar(' ');
		va_start(ap, extra_fmt);
		vprintf(extra_fmt, ap);
		va_end(ap);
	}
	putchar('\n');
	fflush(stdout);
}

static void out_skip(const char *figure, const char *why)
{
	out_prefix();
	printf(" figure=%s skip=", figure);
	print_quoted(why != NULL ? why : "not offered by this peer");
	putchar('\n');
	fflush(stdout);
}

static noreturn void fail(const char *fmt, ...)
{
	char    msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	out_prefix();
	printf(" error=");
	print_quoted(msg);
	putchar('\n');
	fflush(stdout);
	exit(1);
}

/* ---- small tools -------------------------------------------------------- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Spins for ns of this thread's CPU time: a task that needs its worker's
 * CPU for that long (if the thread is preempted, the task lasts longer on
 * the wall clock, as real work would, instead of ending at once when its
 * thread gets a CPU back). */
static void spin_cpu_ns(int64_t ns)
{
	struct timespec ts;
	int64_t         t, end;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	end = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + ns;
	do {
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
		t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
	} while (t < end);
}

/* splitmix64: the same sequence for every peer. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* Uniform in [lo, hi], in steps of `step` ns. */
static int64_t rng_range(int64_t lo, int64_t hi, int64_t step)
{
	uint64_t n = (uint64_t)((hi - lo) / step) + 1;

	return lo + (int64_t)(rng_next() % n) * step;
}

static void sem_init_or_fail(sem_t *s, unsigned value)
{
	if (sem_init(s, 0, value) != 0)
		fail("sem_init: %s", strerror(errno));
}

/* Waits for a post, at most 60 s: a task that never runs is an error. */
static void sem_wait_or_fail(sem_t *s, const char *what)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 60;
	while (sem_timedwait(s, &ts) != 0) {
		if (errno == ETIMEDOUT)
			fail("%s: nothing after 60 s", what);
		if (errno != EINTR)
			fail("%s: sem_timedwait: %s", what, strerror(errno));
	}
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (p == NULL)
		fail("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n), in microseconds. */
static double pct_us(const int64_t *v, size_t n, unsigned p)
{
	size_t rank = (p * n + 99) / 100;

	return (double)v[rank > 0 ? rank - 1 : 0] / 1000.0;
}

/* p50 and p99 lines of n samples (sorted here), min and max as fields. */
static void out_pcts(const char *prefix, int64_t *v, size_t n)
{
	char name[64];

	qsort(v, n, sizeof(*v), cmp_i64);
	snprintf(name, sizeof(name), "%s_p50_us", prefix);
	out_value(name, pct_us(v, n, 50), 1, "us", "samples=%zu min=%.1f "
	          "max=%.1f", n, (double)v[0] / 1e3, (double)v[n - 1] / 1e3);
	snprintf(name, sizeof(name), "%s_p99_us", prefix);
	out_value(name, pct_us(v, n, 99), 1, "us", "samples=%zu min=%.1f "
	          "max=%.1f", n, (double)v[0] / 1e3, (double)v[n - 1] / 1e3);
}

static void *create_pool(unsigned workers, size_t capacity, int priorities)
{
	void *pool = peer->create(workers, capacity, priorities);

	if (pool == NULL)
		fail("create(%u workers, capacity %zu) failed", workers,
		     capacity);
	return pool;
}

static void timer_thread_call(void *pool, void (*fn)(void *), void *arg)
{
	if (peer->on_timer_thread != NULL)
		peer->on_timer_thread(pool, fn, arg);
	else
		fn(arg);
}

/* ---- counted items: every run and every cancel counted per item --------- */

struct counted {
	struct sched_item base;
	int64_t           due;      /* driver's clock before submit + delay */
	int64_t           start;    /* first instruction of run */
	atomic_uchar      runs;
	atomic_uchar      cancels;
};

static sem_t       slots;          /* timer: room for one more in flight */
static atomic_long early_ns;       /* timer: a start before due (> 0) */
static atomic_long cancel_total;   /* cancel: cancelled notifications */
static long        cancel_target;  /* cancel: posts cancel_reached */
static sem_t       cancel_reached;

static void timed_run(struct sched_item *self)
{
	struct counted *c = (struct counted *)self;
	int64_t         t = now_ns();

	c->start = t;
	if (t < c->due)
		atomic_store(&early_ns, c->due - t);
	atomic_fetch_add(&c->runs, 1);
	sem_post(&slots);
}

static void counted_cancelled(struct sched_item *self)
{
	struct counted *c = (struct counted *)self;

	atomic_fetch_add(&c->cancels, 1);
	if (atomic_fetch_add(&cancel_total, 1) + 1 == cancel_target)
		sem_post(&cancel_reached);
}

/* Every item ran `runs` times and was cancelled `cancels` times. */
static void check_counted(struct counted *items, size_t n, unsigned runs,
                          unsigned cancels)
{
	for (size_t i = 0; i < n; i++) {
		unsigned r = atomic_load(&items[i].runs);
		unsigned c = atomic_load(&items[i].cancels);

		if (r != runs || c != cancels)
			fail("task %zu of %zu ran %u time(s) and was cancelled "
			     "%u time(s), expected %u and %u", i, n, r, c, runs,
			     cancels);
	}
}

/* ---- the flood: W + D tasks of U us always submitted -------------------- */

/*
 * The driver submits W + D flood tasks; each spins for its CPU time and,
 * unless
 * the flood is stopping, submits itself again as its last act (from the
 * worker: every adapter's submit takes any thread), so W workers stay busy
 * and D tasks always wait, with no feeder thread competing for the CPUs.
 * Once stopping, a task posts `ended` instead. `busy` catches a task run
 * twice or never; `ran` and `submitted` are compared once all have ended.
 * In the priority scenario the flood is the low-priority load and also
 * records the task durations and the first end after an armed instant.
 */
#define FLOOD_HIST 20000 /* us; the last bin holds everything longer */

struct flood_item {
	struct sched_item base;
	atomic_bool       busy;  /* submitted and not yet run */
};

static struct {
	void              *pool;
	int64_t            task_ns;
	unsigned           count;     /* W + D items */
	struct flood_item *items;
	sem_t              ended;     /* a task ended without resubmitting */
	atomic_bool        stop;
	atomic_ulong       submitted, ran;
	atomic_uint        bad;       /* ran while not submitted, cancelled */
	atomic_uint        failed;    /* a resubmit failed */
	atomic_long        longest;   /* ns, longest run */
	atomic_uint        hist[FLOOD_HIST]; /* runs by duration, 1 us bins */
	atomic_llong       armed_at;  /* 0, or first_end counts ends after it */
	atomic_llong       first_end;
} flood;

static void flood_submit(struct flood_item *f)
{
	atomic_store(&f->busy, true);
	atomic_fetch_add(&flood.submitted, 1);
	if (peer->submit(flood.pool, &f->base) != 0) {
		atomic_fetch_add(&flood.submitted, -1ul);
		atomic_store(&f->busy, false);
		atomic_fetch_add(&flood.failed, 1);
		sem_post(&flood.ended);
	}
}

/* Records the run's duration and whether it is the first end after the
 * armed instant. */
static void flood_record(int64_t t0, int64_t t1)
{
	long    d = (long)(t1 - t0), old = atomic_load(&flood.longest);
	int64_t armed = atomic_load(&flood.armed_at), zero = 0;

	while (d > old && !atomic_compare_exchange_weak(&flood.longest, &old, d))
		;
	atomic_fetch_add_explicit(&flood.hist[d / 1000 < FLOOD_HIST ? d / 1000 :
	    FLOOD_HIST - 1], 1, memory_order_relaxed);
	if (armed != 0 && t1 >= armed)
		atomic_compare_exchange_strong(&flood.first_end, &zero, t1);
}

static void flood_run(struct sched_item *self)
{
	struct flood_item *f = (struct flood_item *)self;
	int64_t            t0 = now_ns();

	if (!atomic_exchange(&f->busy, false))
		atomic_fetch_add(&flood.bad, 1);
	spin_cpu_ns(flood.task_ns);
	flood_record(t0, now_ns());
	atomic_fetch_add(&flood.ran, 1);
	if (atomic_load(&flood.stop))
		sem_post(&flood.ended);
	else
		flood_submit(f);
}

static void flood_cancelled(struct sched_item *self)
{
	(void)self;
	atomic_fetch_add(&flood.bad, 1); /* nobody cancels the flood */
	sem_post(&flood.ended);
}

static void flood_start(void *pool, unsigned count, int64_t task_ns, int prio)
{
	flood.pool = pool;
	flood.task_ns = task_ns;
	flood.count = count;
	flood.items = xcalloc(count, sizeof(*flood.items));
	sem_init_or_fail(&flood.ended, 0);
	for (unsigned i = 0; i < count; i++) {
		flood.items[i].base.run = flood_run;
		flood.items[i].base.cancelled = flood_cancelled;
		flood.items[i].base.priority = prio;
		flood_submit(&flood.items[i]);
	}
	sleep_ns(50 * MSEC); /* reach the steady state */
}

/* The p-th percentile of the flood tasks' durations, in us (bin top). */
static double flood_pct_us(unsigned p)
{
	unsigned long total = 0, seen = 0;

	for (unsigned i = 0; i < FLOOD_HIST; i++)
		total += atomic_load(&flood.hist[i]);
	for (unsigned i = 0; i < FLOOD_HIST; i++) {
		seen += atomic_load(&flood.hist[i]);
		if (seen * 100 >= total * p)
			return i + 1;
	}
	return FLOOD_HIST;
}

/* Stops the flood, waits for every flood task to end, checks them. */
static void flood_stop(void)
{
	atomic_store(&flood.stop, true);
	for (unsigned i = 0; i < flood.count; i++)
		sem_wait_or_fail(&flood.ended, "a flood task to end");
	if (atomic_load(&flood.failed) != 0)
		fail("%u flood submits failed", atomic_load(&flood.failed));
	if (atomic_load(&flood.bad) != 0 ||
	    atomic_load(&flood.ran) != atomic_load(&flood.submitted))
		fail("flood tasks lost or duplicated: %lu submitted, %lu ran, "
		     "%u ran while not submitted or were cancelled",
		     atomic_load(&flood.submitted), atomic_load(&flood.ran),
		     atomic_load(&flood.bad));
	sem_destroy(&flood.ended);
	free(flood.items);
}

/* ---- options ------------------------------------------------------------ */

struct options {
	const char *mode;
	size_t      delays, pending, ops, samples, wake_samples;
	int64_t     min_ns, max_ns, task_ns, flood_ns;
	unsigned    inflight, workers, depth, flood_depth;
};

/* ---- a) timer accuracy -------------------------------------------------- */

static void timer_submit_all(void *pool, struct counted *items,
                             const struct options *o)
{
	for (size_t i = 0; i < o->delays; i++) {
		struct counted *c = &items[i];
		int64_t         delay = rng_range(o->min_ns, o->max_ns, 1000);

		sem_wait_or_fail(&slots, "a delayed task to start");
		c->base.run = timed_run;
		c->base.cancelled = counted_cancelled;
		c->due = now_ns() + delay;
		if (peer->submit_delayed(pool, &c->base, delay) != 0)
			fail("submit_delayed failed at task %zu", i);
	}
	for (unsigned k = 0; k < o->inflight; k++)
		sem_wait_or_fail(&slots, "the last delayed tasks to start");
}

static void run_timer(const struct options *o)
{
	bool            busy = strcmp(o->mode, "busy") == 0;
	unsigned        nflood = o->workers + o->flood_depth;
	struct counted *items;
	int64_t        *late, t0, t1;
	unsigned long   f0 = 0, f1 = 0;
	void           *pool;

	if (peer->submit_delayed == NULL) {
		out_skip("late_p50_us", peer->why_no_delay);
		out_skip("late_p99_us", peer->why_no_delay);
		return;
	}
	items = xcalloc(o->delays, sizeof(*items));
	late = xcalloc(o->delays, sizeof(*late));
	sem_init_or_fail(&slots, o->inflight);
	pool = create_pool(o->workers, o->inflight + nflood + 64, 0);
	if (busy) {
		flood_start(pool, nflood, o->flood_ns, SCHED_PRIO_NORMAL);
		f0 = atomic_load(&flood.ran);
	}
	t0 = now_ns();
	timer_submit_all(pool, items, o);
	t1 = now_ns();
	if (busy) {
		f1 = atomic_load(&flood.ran);
		flood_stop();
	}
	peer->destroy(pool);
	if (atomic_load(&early_ns) != 0)
		fail("a delayed task started %ld ns before it was due",
		     atomic_load(&early_ns));
	check_counted(items, o->delays, 1, 0);
	for (size_t i = 0; i < o->delays; i++)
		late[i] = items[i].start - items[i].due;
	out_pcts("late", late, o->delays);
	if (busy)
		out_value("flood_tasks_per_s", (double)(f1 - f0) * 1e9 /
		          (double)(t1 - t0), 0, "tasks/s", "task_us=%.0f "
		          "depth=%u", (double)o->flood_ns / 1e3, o->flood_depth);
	sem_destroy(&slots);
	free(late);
	free(items);
}

/* ---- b) submit + cancel with P pending ---------------------------------- */

struct cancel_run {
	void           *pool;
	struct counted *items;
	void          **handles;
	size_t          first, count;
	size_t          failed;   /* cancels that said "too late" */
};

static void noop_run(struct sched_item *self)
{
	atomic_fetch_add(&((struct counted *)self)->runs, 1);
}

static void fill_fn(void *arg)
{
	struct cancel_run *r = arg;

	for (size_t i = r->first; i < r->first + r->count; i++) {
		r->handles[i] = peer->submit_handle(r->pool, &r->items[i].base,
		                                    rng_range(HOUR, 2 * HOUR, 1));
		if (r->handles[i] == NULL)
			return; /* reported by the caller */
	}
}

static void pairs_fn(void *arg)
{
	struct cancel_run *r = arg;

	for (size_t i = r->first; i < r->first + r->count; i++) {
		void *h = peer->submit_handle(r->pool, &r->items[i].base,
		                              rng_range(HOUR, 2 * HOUR, 1));

		if (h == NULL || peer->cancel(r->pool, h) != 1)
			r->failed++;
		if (h != NULL)
			peer->release(r->pool, h);
	}
}

static void cancel_all_fn(void *arg)
{
	struct cancel_run *r = arg;

	for (size_t i = r->first; i < r->first + r->count; i++) {
		r->failed += peer->cancel(r->pool, r->handles[i]) != 1;
		peer->release(r->pool, r->handles[i]);
	}
}

/* Runs fn on the timer's thread and waits until cancel_total reaches
 * target (the cancelled notifications may come after fn returns). */
static void cancel_phase(struct cancel_run *r, void (*fn)(void *), long target)
{
	cancel_target = target;
	timer_thread_call(r->pool, fn, r);
	if (r->failed != 0)
		fail("%zu of %zu cancels of far-future tasks failed", r->failed,
		     r->count);
	if (target > 0)
		sem_wait_or_fail(&cancel_reached, "the cancelled notifications");
}

static void run_cancel(const struct options *o)
{
	size_t            p = o->pending, n = o->ops;
	struct cancel_run r = { 0 };
	int64_t           t0, t1, t2, t3;

	if (peer->submit_handle == NULL) {
		out_skip("submit_cancel_ns", peer->why_no_cancel);
		return;
	}
	r.items = xcalloc(p + n, sizeof(*r.items));
	r.handles = xcalloc(p, sizeof(*r.handles));
	for (size_t i = 0; i < p + n; i++) {
		r.items[i].base.run = noop_run;
		r.items[i].base.cancelled = counted_cancelled;
	}
	sem_init_or_fail(&cancel_reached, 0);
	r.pool = create_pool(o->workers, p + n + 64, 0);
	r.count = p;
	t0 = now_ns();
	timer_thread_call(r.pool, fill_fn, &r);
	t1 = now_ns();
	for (size_t i = 0; i < p; i++)
		if (r.handles[i] == NULL)
			fail("submit_handle failed at pending task %zu", i);
	r.first = p;
	r.count = n;
	t2 = now_ns();
	cancel_phase(&r, pairs_fn, (long)n);
	t3 = now_ns();
	r.first = 0;
	r.count = p;
	cancel_phase(&r, cancel_all_fn, (long)(p + n));
	peer->destroy(r.pool);
	check_counted(r.items, p + n, 0, 1);
	out_value("submit_cancel_ns", (double)(t3 - t2) / (double)n, 0, "ns",
	          "pending=%zu ops=%zu fill_ns_per_submit=%.0f", p, n,
	          (double)(t1 - t0) / (double)p);
	sem_destroy(&cancel_reached);
	free(r.handles);
	free(r.items);
}

/* ---- c) high priority under a low-priority flood ------------------------ */

struct probe {
	struct sched_item base;
	int64_t           start;
	sem_t             started;
};

static void probe_run(struct sched_item *self)
{
	struct probe *p = (struct probe *)self;

	p->start = now_ns();
	sem_post(&p->started);
}

static void probe_cancelled(struct sched_item *self)
{
	(void)self;
	fail("a probe task was cancelled");
}

/* Submit-to-start on the idle pool, 1 ms apart (after 20 warm-ups). */
static void measure_wake(void *pool, struct probe *pr, size_t n)
{
	int64_t *v = xcalloc(n, sizeof(*v));

	for (size_t i = 0; i < 20 + n; i++) {
		int64_t t0;

		sleep_ns(MSEC);
		t0 = now_ns();
		if (peer->submit(pool, &pr->base) != 0)
			fail("submit failed");
		sem_wait_or_fail(&pr->started, "the wake task to run");
		if (i >= 20)
			v[i - 20] = pr->start - t0;
	}
	out_pcts("wake", v, n);
	free(v);
}

/* One high-priority sample: start - submit, and start - first free. */
static void hi_sample(void *pool, struct probe *pr, int64_t *start,
                      int64_t *after_free, unsigned *idle)
{
	int64_t t0, fe;

	atomic_store(&flood.first_end, 0);
	t0 = now_ns();
	atomic_store(&flood.armed_at, t0);
	if (peer->submit(pool, &pr->base) != 0)
		fail("submit of the high-priority task failed");
	sem_wait_or_fail(&pr->started, "the high-priority task to run");
	atomic_store(&flood.armed_at, 0);
	fe = atomic_load(&flood.first_end);
	*start = pr->start - t0;
	if (fe == 0 || fe > pr->start) { /* a worker was free already */
		*after_free = pr->start - t0;
		(*idle)++;
	} else {
		*after_free = pr->start - fe;
	}
}

static void run_priority(const struct options *o)
{
	size_t       n = o->samples;
	bool         prio = peer->why_no_priority == NULL;
	unsigned     nflood = o->workers + o->depth, idle = 0;
	struct probe pr = { .base = { probe_run, probe_cancelled, 0 } };
	int64_t     *st, *af, t0, t1;
	unsigned long f0, f1;
	void        *pool;

	sem_init_or_fail(&pr.started, 0);
	pool = create_pool(o->workers, nflood + 64, prio);
	measure_wake(pool, &pr, o->wake_samples);
	if (!prio) {
		static const char *const figs[] = { "hi_start_p50_us",
		    "hi_start_p99_us", "hi_after_free_p50_us",
		    "hi_after_free_p99_us", "low_task_p99_us", "low_task_max_us",
		    "low_tasks_per_s" };

		for (int i = 0; i < 7; i++)
			out_skip(figs[i], peer->why_no_priority);
		peer->destroy(pool);
		return;
	}
	st = xcalloc(n, sizeof(*st));
	af = xcalloc(n, sizeof(*af));
	flood_start(pool, nflood, o->task_ns, SCHED_PRIO_LOW);
	pr.base.priority = SCHED_PRIO_HIGH;
	f0 = atomic_load(&flood.ran);
	t0 = now_ns();
	for (size_t i = 0; i < n; i++) {
		sleep_ns(rng_range(300000, 1300000, 1000));
		hi_sample(pool, &pr, &st[i], &af[i], &idle);
	}
	t1 = now_ns();
	f1 = atomic_load(&flood.ran);
	flood_stop();
	peer->destroy(pool);
	out_pcts("hi_start", st, n);
	out_pcts("hi_after_free", af, n);
	out_value("low_task_p99_us", flood_pct_us(99), 0, "us", "task_us=%.0f "
	          "depth=%u", (double)o->task_ns / 1e3, o->depth);
	out_value("low_task_max_us", (double)atomic_load(&flood.longest) / 1e3,
	          1, "us", "task_us=%.0f depth=%u idle_worker_samples=%u",
	          (double)o->task_ns / 1e3, o->depth, idle);
	out_value("low_tasks_per_s", (double)(f1 - f0) * 1e9 / (double)(t1 - t0),
	          0, "tasks/s", "task_us=%.0f depth=%u",
	          (double)o->task_ns / 1e3, o->depth);
	sem_destroy(&pr.started);
	free(st);
	free(af);
}

/* ---- main --------------------------------------------------------------- */

static noreturn void usage(const char *argv0)
{
	fprintf(stderr,
	    "usage: %s timer [--mode idle|busy] [--delays N] [--min-ms A]\n"
	    "          [--max-ms B] [--inflight C] [--workers W] [--flood-us U]\n"
	    "          [--flood-depth D]\n"
	    "       %s cancel [--pending P] [--ops N] [--workers W]\n"
	    "       %s priority [--samples N] [--wake-samples M] [--workers W]\n"
	    "          [--task-us U] [--depth D]\n", argv0, argv0, argv0);
	exit(2);
}

static unsigned long parse_count(const char *argv0, const char *opt,
                                 const char *s, unsigned long max)
{
	char         *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 1 || v > max ||
	    s[0] == '-') {
		fprintf(stderr, "%s: bad value for %s: %s (1..%lu)\n", argv0,
		        opt, s, max);
		usage(argv0);
	}
	return v;
}

/* Sets the option named opt from val; false when there is no such one. */
static bool parse_opt(struct options *o, const char *argv0, const char *opt,
                      const char *val)
{
	static const struct { const char *name; size_t off; int kind;
	                      unsigned long max; } t[] = {
#define SZ(f)  offsetof(struct options, f), 0
#define UN(f)  offsetof(struct options, f), 1
#define MS(f)  offsetof(struct options, f), 2
#define US(f)  offsetof(struct options, f), 3
		{ "--delays", SZ(delays), 10000000 },
		{ "--pending", SZ(pending), 100000000 },
		{ "--ops", SZ(ops), 100000000 },
		{ "--samples", SZ(samples), 10000000 },
		{ "--wake-samples", SZ(wake_samples), 10000000 },
		{ "--min-ms", MS(min_ns), 3600000 },
		{ "--max-ms", MS(max_ns), 3600000 },
		{ "--task-us", US(task_ns), 1000000 },
		{ "--flood-us", US(flood_ns), 1000000 },
		{ "--inflight", UN(inflight), 100000 },
		{ "--workers", UN(workers), 64 },
		{ "--depth", UN(depth), 1000000 },
		{ "--flood-depth", UN(flood_depth), 1000000 },
#undef SZ
#undef UN
#undef MS
#undef US
	};

	if (strcmp(opt, "--mode") == 0) {
		if (strcmp(val, "idle") != 0 && strcmp(val, "busy") != 0)
			usage(argv0);
		o->mode = val;
		return true;
	}
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char         *f = (char *)o + t[i].off;
		unsigned long v;

		if (strcmp(opt, t[i].name) != 0)
			continue;
		v = parse_count(argv0, opt, val, t[i].max);
		if (t[i].kind == 0)
			*(size_t *)(void *)f = v;
		else if (t[i].kind == 1)
			*(unsigned *)(void *)f = (unsigned)v;
		else
			*(int64_t *)(void *)f = (int64_t)v *
			    (t[i].kind == 2 ? MSEC : 1000);
		return true;
	}
	return false;
}

int main(int argc, char **argv)
{
	struct options o = {
		.mode = "idle", .delays = 10000, .pending = 1000000,
		.ops = 200000, .samples = 1000, .wake_samples = 200,
		.min_ns = 1 * MSEC, .max_ns = 100 * MSEC, .task_ns = 100000,
		.flood_ns = 50000, .inflight = 100, .workers = 2, .depth = 256,
		.flood_depth = 2,
	};

	peer = sched_peer_get();
	token_copy(version, sizeof(version), peer->version);
	if (argc < 2)
		usage(argv[0]);
	for (int i = 2; i < argc; i += 2)
		if (i + 1 >= argc || !parse_opt(&o, argv[0], argv[i], argv[i + 1]))
			usage(argv[0]);
	if (o.min_ns > o.max_ns)
		usage(argv[0]);
	rng_state = 20240601; /* the same draws for every peer */
	if (strcmp(argv[1], "timer") == 0) {
		scenario = "sched-timer";
		snprintf(config, sizeof(config), "%s", o.mode);
		run_timer(&o);
	} else if (strcmp(argv[1], "cancel") == 0) {
		scenario = "sched-cancel";
		snprintf(config, sizeof(config), "pending%zu", o.pending);
		run_cancel(&o);
	} else if (strcmp(argv[1], "priority") == 0) {
		scenario = "sched-priority";
		snprintf(config, sizeof(config), "w%u", o.workers);
		run_priority(&o);
	} else {
		usage(argv[0]);
	}
	return 0;
}
