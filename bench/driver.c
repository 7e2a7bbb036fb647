/*
 * driver.c: the side-by-side benchmark, linked with one adapter (peer.h).
 *
 * Usage:
 *   bench_<peer> <scenario> [--tasks N] [--producers P] [--workers W]
 *                [--samples N] [--wait flag|sleep|poll|queue]
 *                [--by handle|group] [--into pool|group]
 *                [--samples-out FILE]
 * Scenarios: throughput, wake, idle-stop, busy-stop, cancel, memory.
 * --into group (throughput only): every job goes into one shared group.
 *
 * Output (stdout, and nothing else goes there): one line per figure,
 *   peer=<p> scenario=<s> config=<c> figure=<f> value=<v> unit=<u> [k=v ...]
 *   peer=<p> scenario=<s> config=<c> figure=<f> skip="<why>"
 * and, when a self-check fails or a call fails,
 *   peer=<p> scenario=<s> config=<c> error="<what>"      (exit status 1).
 * Every value line carries better=higher|lower and the peer's version.
 *
 * Fairness, in general:
 * - The driver owns every job body and every clock (CLOCK_MONOTONIC); the
 *   adapters only wrap their library's documented API (peer.h). Every peer
 *   runs the very same job functions on the very same items.
 * - One process per (peer, scenario, repetition) (scripts/bench.sh), so no
 *   library's process-wide state survives into another measurement.
 * - The driver verifies its own counts: a lost, duplicated or wrongly
 *   cancelled job is an error line, never a number.
 * - malloc is interposed below for the memory scenario only; in every other
 *   scenario the wrappers forward after one relaxed load of a flag, so
 *   malloc-heavy peers pay nothing for the instrumentation.
 */
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
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

#include "peer.h"

/* ---- malloc interposition (memory scenario) ----------------------------- */

/*
 * The executable defines the allocation functions itself; by ELF symbol
 * interposition every call in the process lands here, from the libraries
 * (libglib, libuv, libtbb, libstdc++'s operator new, ctpool) as well as from
 * this file. They forward to glibc's own entry points (__libc_malloc ...),
 * which need no initialisation, so calls before main and from any thread are
 * safe. While `counting` is off they only forward.
 *   alloc_calls: every malloc, calloc, realloc, reallocarray, posix_memalign,
 *                aligned_alloc, memalign, valloc, pvalloc call.
 *   live_bytes:  += malloc_usable_size of each block handed out, -= of each
 *                block freed (or moved by realloc). Blocks allocated before
 *                counting began and freed while it is on make it drift low;
 *                the memory scenario turns counting on first thing in main.
 */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void  __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

static atomic_bool counting;
static atomic_long alloc_calls;
static atomic_long live_bytes;

static inline bool is_counting(void)
{
	return atomic_load_explicit(&counting, memory_order_relaxed);
}

static inline void *count_alloc(void *p)
{
	atomic_fetch_add_explicit(&alloc_calls, 1, memory_order_relaxed);
	if (p != NULL)
		atomic_fetch_add_explicit(&live_bytes,
		    (long)malloc_usable_size(p), memory_order_relaxed);
	return p;
}

static inline void count_free(void *p)
{
	if (p != NULL)
		atomic_fetch_sub_explicit(&live_bytes,
		    (long)malloc_usable_size(p), memory_order_relaxed);
}

void *malloc(size_t n)
{
	void *p = __libc_malloc(n);

	return is_counting() ? count_alloc(p) : p;
}

void *calloc(size_t a, size_t b)
{
	void *p = __libc_calloc(a, b);

	return is_counting() ? count_alloc(p) : p;
}

void free(void *p)
{
	if (p == NULL)
		return;
	if (is_counting())
		count_free(p);
	__libc_free(p);
}

void *realloc(void *old, size_t n)
{
	bool  on = is_counting();
	long  before = (on && old != NULL) ? (long)malloc_usable_size(old) : 0;
	void *p = __libc_realloc(old, n);

	if (!on)
		return p;
	/* realloc(p, 0) frees p and may return NULL: the old block is gone;
	 * a failed realloc (NULL with n != 0) leaves it in place */
	if (p != NULL || n == 0)
		atomic_fetch_sub_explicit(&live_bytes, before,
		    memory_order_relaxed);
	return count_alloc(p);
}

void *reallocarray(void *old, size_t a, size_t b)
{
	size_t n;

	if (__builtin_mul_overflow(a, b, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(old, n);
}

void *memalign(size_t align, size_t n)
{
	void *p = __libc_memalign(align, n);

	return is_counting() ? count_alloc(p) : p;
}

void *aligned_alloc(size_t align, size_t n)
{
	return memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
	void *p;

	if (align < sizeof(void *) || (align & (align - 1)) != 0)
		return EINVAL;
	p = memalign(align, n);
	if (p == NULL)
		return ENOMEM;
	*out = p;
	return 0;
}

void *valloc(size_t n)
{
	void *p = __libc_valloc(n);

	return is_counting() ? count_alloc(p) : p;
}

void *pvalloc(size_t n)
{
	void *p = __libc_pvalloc(n);

	return is_counting() ? count_alloc(p) : p;
}

/* ---- output --------------------------------------------------------------- */

static const struct bench_peer *peer;
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

/* Prints a quoted string with no quote or newline inside it. */
static void print_quoted(const char *s)
{
	putchar('"');
	for (; s != NULL && *s != '\0'; s++)
		putchar(*s == '"' ? '\'' : *s == '\n' ? ' ' : *s);
	putchar('"');
}

static void out_prefix(void)
{
	printf("peer=%s scenario=%s config=%s", peer->name, scenario, config);
}

/* One figure: value with `decimals` digits, and optional extra fields. */
static void out_value(const char *figure, double value, int decimals,
                      const char *unit, const char *better,
                      const char *extra_fmt, ...)
{
	out_prefix();
	printf(" figure=%s value=%.*f unit=%s better=%s version=%s", figure,
	       decimals, value, unit, better, version);
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

/* A failed call or self-check: one error line, exit status 1. */
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

/* ---- small tools ---------------------------------------------------------- */

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

static void sem_init_or_fail(sem_t *s)
{
	if (sem_init(s, 0, 0) != 0)
		fail("sem_init: %s", strerror(errno));
}

/* Waits for a post, at most 60 s: a job that never runs is an error. */
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

/* Threads of this process now: entries of /proc/self/task. */
static int count_threads(void)
{
	DIR           *d = opendir("/proc/self/task");
	struct dirent *e;
	int            n = 0;

	if (d == NULL)
		fail("opendir /proc/self/task: %s", strerror(errno));
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (p == NULL)
		fail("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

static void *create_pool(unsigned workers, size_t capacity)
{
	void *pool = peer->create(workers, capacity);

	if (pool == NULL)
		fail("create(%u workers, capacity %zu) failed", workers,
		     capacity);
	return pool;
}

static void submit_or_fail(void *pool, void *producer,
                           struct bench_item *item)
{
	if (peer->submit(pool, producer, item) != 0)
		fail("submit failed");
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

/* ---- counted jobs: every run is counted per item and in total ----------- */

/*
 * A counted job does the least work a job can do that still proves it ran
 * exactly once: one relaxed increment of its own 8-bit counter and one of a
 * global total. All peers run exactly this body, so the figures compare the
 * libraries' per-job overhead (submit, hand-over, wake-up, completion
 * tracking), not the jobs.
 */
struct counted {
	struct bench_item base;
	size_t            index;
};

static _Atomic unsigned char *run_count; /* per item */
static atomic_ulong           total_runs;

static void counted_run(struct bench_item *self)
{
	struct counted *c = (struct counted *)self;

	atomic_fetch_add_explicit(&run_count[c->index], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&total_runs, 1, memory_order_relaxed);
}

static struct counted *make_counted(size_t n)
{
	struct counted *items = xcalloc(n, sizeof(*items));

	run_count = xcalloc(n, sizeof(*run_count));
	atomic_store(&total_runs, 0);
	for (size_t i = 0; i < n; i++) {
		items[i].base.run = counted_run;
		items[i].index = i;
	}
	return items;
}

/* Self-check: every item ran exactly `expected` times. */
static void check_counts(size_t n, unsigned expected)
{
	size_t bad = 0, lost = 0, extra = 0, first_bad = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned c = atomic_load_explicit(&run_count[i],
		                                  memory_order_relaxed);

		if (c == expected)
			continue;
		if (bad++ == 0)
			first_bad = i;
		if (c < expected)
			lost += expected - c;
		else
			extra += c - expected;
	}
	if (bad != 0 || atomic_load(&total_runs) != (unsigned long)n * expected)
		fail("jobs lost or duplicated: %zu of %zu items did not run "
		     "exactly %u time(s): %zu runs missing, %zu extra, %lu in "
		     "total (expected %zu), first bad item %zu", bad, n,
		     expected, lost, extra, atomic_load(&total_runs),
		     n * expected, first_bad);
}

/* ---- blockers: occupy every worker until the gate opens ------------------ */

/*
 * The cancel and memory scenarios need jobs that stay queued: one blocker per
 * worker posts `inside` and then waits for the gate, so once all have posted
 * no worker can start anything else.
 */
static sem_t       blocker_inside, blocker_gate;
static atomic_uint blocker_runs;

static void blocker_run(struct bench_item *self)
{
	(void)self;
	atomic_fetch_add(&blocker_runs, 1);
	sem_post(&blocker_inside);
	while (sem_wait(&blocker_gate) != 0 && errno == EINTR)
		;
}

static void block_workers(void *pool, struct bench_item *blockers,
                          unsigned workers)
{
	for (unsigned i = 0; i < workers; i++) {
		blockers[i].run = blocker_run;
		submit_or_fail(pool, NULL, &blockers[i]);
	}
	for (unsigned i = 0; i < workers; i++)
		sem_wait_or_fail(&blocker_inside, "a blocker job to start");
}

static void open_gate(unsigned workers)
{
	for (unsigned i = 0; i < workers; i++)
		sem_post(&blocker_gate);
}

/* ---- options --------------------------------------------------------------- */

struct options {
	size_t      tasks;
	unsigned    producers;
	unsigned    workers;
	size_t      samples;
	const char *wait;
	const char *by;
	const char *into;       /* throughput: "pool" or "group" */
	const char *samples_out;
};

/* Stop samples for the plot: "<peer> <scenario>/<config> <us>" lines. */
static void write_samples(const struct options *o, const int64_t *v, size_t n)
{
	FILE *f;

	if (o->samples_out == NULL)
		return;
	f = fopen(o->samples_out, "a");
	if (f == NULL)
		fail("open %s: %s", o->samples_out, strerror(errno));
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s %s/%s %.3f\n", peer->name, scenario, config,
		        (double)v[i] / 1000.0);
	if (fclose(f) != 0)
		fail("write %s: %s", o->samples_out, strerror(errno));
}

/* Threads still alive 100 ms after the last shutdown, beyond `baseline`. */
static void out_threads_alive(int baseline)
{
	int alive;

	sleep_ns(100 * 1000000LL);
	alive = count_threads() - baseline;
	out_value("threads_alive_after", alive, 0, "threads", "lower",
	          "joins=%d", peer->joins_threads);
}

static void out_stop_figures(const char *prefix, const struct options *o,
                             int64_t *v, size_t n)
{
	char p50[64], p99[64];

	qsort(v, n, sizeof(*v), cmp_i64);
	snprintf(p50, sizeof(p50), "%s_p50_us", prefix);
	snprintf(p99, sizeof(p99), "%s_p99_us", prefix);
	out_value(p50, pct_us(v, n, 50), 1, "us", "lower",
	          "samples=%zu min=%.1f max=%.1f joins=%d", n,
	          (double)v[0] / 1000.0, (double)v[n - 1] / 1000.0,
	          peer->joins_threads);
	out_value(p99, pct_us(v, n, 99), 1, "us", "lower",
	          "samples=%zu joins=%d", n, peer->joins_threads);
	write_samples(o, v, n);
}

/* ---- a) throughput ------------------------------------------------------- */

/*
 * Jobs per second with P producer threads submitting N counted jobs into W
 * workers, from the moment the producers are released together until
 * wait_idle returns: submit cost, queue contention, hand-over and completion
 * tracking, all included. Every peer gets the same threads, the same jobs and
 * a queue that holds all N (capacity = N), so no peer blocks for room.
 * producer_begin runs before the start line (it is setup, like create);
 * producer_end runs inside the clock (libuv runs its loop there).
 *
 * --into group: every job goes into one group that all the producers share
 * (submit_group from each producer thread; the group is made before the
 * clock and destroyed after it), the way a server files the jobs of one
 * request or tenant so that one call cancels them all. Nothing is
 * cancelled: the figure is what membership costs the submit and the
 * finish. Peers without groups are skipped.
 */
struct producer {
	pthread_t        thread;
	void            *pool;
	void            *group;  /* --into group, else NULL */
	struct counted  *items;
	size_t           count;
	int              rc;
};

static pthread_barrier_t ready, go;

static void *producer_main(void *arg)
{
	struct producer *p = arg;
	void *prod = peer->producer_begin != NULL ?
	    peer->producer_begin(p->pool) : NULL;

	pthread_barrier_wait(&ready);
	pthread_barrier_wait(&go);
	for (size_t i = 0; i < p->count; i++) {
		struct bench_item *item = &p->items[i].base;
		int rc = p->group != NULL ?
		    peer->submit_group(p->pool, p->group, item) :
		    peer->submit(p->pool, prod, item);

		if (rc != 0) {
			p->rc = -1;
			break;
		}
	}
	if (peer->producer_end != NULL)
		peer->producer_end(p->pool, prod);
	return NULL;
}

static void run_throughput(const struct options *o)
{
	size_t           n = o->tasks, first = 0;
	unsigned         np = o->producers;
	struct counted  *items;
	struct producer *prods;
	void            *pool, *group = NULL;
	int64_t          t0, t1;

	if (strcmp(o->into, "group") == 0 && peer->group_create == NULL) {
		out_skip("tasks_per_s", peer->why_no_group);
		return;
	}
	items = make_counted(n);
	prods = xcalloc(np, sizeof(*prods));
	pool = create_pool(o->workers, n);
	if (strcmp(o->into, "group") == 0) {
		group = peer->group_create(pool);
		if (group == NULL)
			fail("group_create failed");
	}
	pthread_barrier_init(&ready, NULL, np + 1);
	pthread_barrier_init(&go, NULL, np + 1);
	for (unsigned i = 0; i < np; i++) {
		struct producer *p = &prods[i];

		p->pool = pool;
		p->group = group;
		p->items = items + first;
		p->count = n / np + (i < n % np);
		first += p->count;
		if (pthread_create(&p->thread, NULL, producer_main, p) != 0)
			fail("pthread_create: producer %u", i);
	}
	/* Everyone is past setup; the clock starts just before the main
	 * thread releases the producers (it is the last to reach `go` in
	 * practice, and never starts the clock late). */
	pthread_barrier_wait(&ready);
	t0 = now_ns();
	pthread_barrier_wait(&go);
	for (unsigned i = 0; i < np; i++)
		pthread_join(prods[i].thread, NULL);
	for (unsigned i = 0; i < np; i++)
		if (prods[i].rc != 0)
			fail("submit failed in producer %u", i);
	peer->wait_idle(pool);
	t1 = now_ns();

	check_counts(n, 1);
	if (group != NULL)
		peer->group_destroy(pool, group);
	peer->shutdown(pool);
	out_value("tasks_per_s", (double)n * 1e9 / (double)(t1 - t0), 0,
	          "tasks/s", "higher", "tasks=%zu elapsed_ms=%.3f", n,
	          (double)(t1 - t0) / 1e6);
	pthread_barrier_destroy(&ready);
	pthread_barrier_destroy(&go);
	free(prods);
	free(items);
	free((void *)run_count);
}

/* ---- b) wake --------------------------------------------------------------- */

/*
 * Latency from submit to the job starting on a parked worker: each sample
 * first sleeps 1 ms so every worker has gone idle (parked, however the
 * library parks: spin then futex, condvar ...), then times submit() -> first
 * instruction of the job. One job at a time, so no queueing is measured.
 */
struct wake_item {
	struct bench_item base;
	int64_t           start;
	sem_t             done;
};

static void wake_run(struct bench_item *self)
{
	struct wake_item *w = (struct wake_item *)self;

	w->start = now_ns();
	sem_post(&w->done);
}

static void run_wake(const struct options *o)
{
	const size_t     warmup = 50;
	size_t           n = o->samples;
	int64_t         *v = xcalloc(n, sizeof(*v));
	struct wake_item w = { .base.run = wake_run };
	void            *pool = create_pool(o->workers, 64);

	sem_init_or_fail(&w.done);
	for (size_t i = 0; i < warmup + n; i++) {
		int64_t t0;

		sleep_ns(1000000);
		t0 = now_ns();
		submit_or_fail(pool, NULL, &w.base);
		sem_wait_or_fail(&w.done, "the wake job to run");
		if (i >= warmup)
			v[i - warmup] = w.start - t0;
	}
	peer->wait_idle(pool);
	peer->shutdown(pool);
	qsort(v, n, sizeof(*v), cmp_i64);
	out_value("wake_p50_us", pct_us(v, n, 50), 2, "us", "lower",
	          "samples=%zu min=%.2f max=%.2f", n, (double)v[0] / 1000.0,
	          (double)v[n - 1] / 1000.0);
	out_value("wake_p99_us", pct_us(v, n, 99), 2, "us", "lower",
	          "samples=%zu min=%.2f max=%.2f", n, (double)v[0] / 1000.0,
	          (double)v[n - 1] / 1000.0);
	sem_destroy(&w.done);
	free(v);
}

/* ---- c) idle stop ---------------------------------------------------------- */

/*
 * Time of shutdown() on an idle pool whose workers are all parked: how fast
 * the library can wake its idle workers, make them exit and join them (for
 * peers that join: joins_threads). One job + wait_idle first proves the
 * workers run, 2 ms of sleep lets them park. Peers that do not join their
 * threads return sooner but leave threads behind: threads_alive_after shows
 * it, and the report ranks only peers that joined everything.
 */
struct flag_item {
	struct bench_item base;
	atomic_int        ran;
};

static void flag_run(struct bench_item *self)
{
	atomic_fetch_add(&((struct flag_item *)self)->ran, 1);
}

static void run_idle_stop(const struct options *o)
{
	size_t  n = o->samples;
	int64_t *v = xcalloc(n, sizeof(*v));
	int     baseline = count_threads();

	for (size_t i = 0; i < n; i++) {
		struct flag_item j = { .base.run = flag_run };
		void    *pool = create_pool(o->workers, 64);
		int64_t  t0;

		submit_or_fail(pool, NULL, &j.base);
		peer->wait_idle(pool);
		if (atomic_load(&j.ran) != 1)
			fail("the warm-up job ran %d times", atomic_load(&j.ran));
		sleep_ns(2000000);
		t0 = now_ns();
		peer->shutdown(pool);
		v[i] = now_ns() - t0;
	}
	out_stop_figures("idle_stop", o, v, n);
	out_threads_alive(baseline);
	free(v);
}

/* ---- d) busy stop -------------------------------------------------------- */

/*
 * Time to stop a pool whose W workers are all inside a blocking job: each
 * peer waits its own way (peer.h, enum bench_wait): the other libraries have
 * no way to interrupt a running job, so their jobs poll a stop flag every
 * 10 ms, the pattern their users write; ctpool's jobs block in a cancellable
 * wait (token sleep, poll on the token's fd, queue pop) that its shutdown
 * fires. Once every job has posted `inside` right before it blocks, the
 * driver waits a phase spread evenly over 0..10 ms across the samples (the
 * same phases for every peer), so the stop request lands anywhere in a flag
 * poller's 10 ms period, as a real one would (without it the pollers would
 * always wait a whole period). The clock starts after that pause and stops
 * when stop_waiters has joined every worker.
 */
static const char no_such_wait[] = "this peer does not offer this kind of "
    "wait (bench/peer.h: ctpool waits on its tokens, the others poll a flag)";

/*
 * The flag loop, the pattern the other libraries' users write, defined once
 * here for every peer without waits of its own (peer->start_waiters NULL):
 * a job posts `inside`, then checks a stop flag every 10 ms; one not
 * stopped within 10 s (as ctpool's waits) gives up and counts as failed.
 * The stop raises the flag and calls the peer's shutdown, which returns
 * once the running jobs have (bench/peer.h).
 */
struct flag_waiter {
	struct bench_item item; /* first: the pool hands us this pointer */
	sem_t            *inside;
};

static atomic_bool flag_raised;
static atomic_uint flag_failed;

static void flag_wait_run(struct bench_item *self)
{
	struct flag_waiter *w = (struct flag_waiter *)self;
	int64_t give_up = now_ns() + 10 * (int64_t)1000000000;

	sem_post(w->inside);
	while (!atomic_load(&flag_raised)) {
		if (now_ns() >= give_up) {
			atomic_fetch_add(&flag_failed, 1); /* never stopped */
			return;
		}
		sleep_ns(10 * 1000 * 1000);
	}
}

static int flag_start(void *pool, struct flag_waiter *w, unsigned n,
                      sem_t *inside)
{
	atomic_store(&flag_raised, false);
	atomic_store(&flag_failed, 0);
	for (unsigned i = 0; i < n; i++) {
		w[i].item.run = flag_wait_run;
		w[i].inside = inside;
		if (peer->submit(pool, NULL, &w[i].item) != 0)
			return -1;
	}
	return 0;
}

static void run_busy_stop(const struct options *o, enum bench_wait how)
{
	size_t   n = o->samples;
	int64_t *v = xcalloc(n, sizeof(*v));
	struct flag_waiter *fw = xcalloc(o->workers, sizeof(*fw));
	bool     flag = peer->start_waiters == NULL;
	int      baseline = count_threads();
	sem_t    inside;

	sem_init_or_fail(&inside);
	if (flag && how != BENCH_WAIT_FLAG) {
		out_skip("busy_stop_p50_us", no_such_wait);
		out_skip("busy_stop_p99_us", no_such_wait);
		out_skip("threads_alive_after", no_such_wait);
		free(fw);
		free(v);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		void    *pool = create_pool(o->workers, 64);
		int64_t  t0;
		unsigned bad;
		int      rc = flag ? flag_start(pool, fw, o->workers, &inside) :
		    peer->start_waiters(pool, o->workers, how, &inside);

		if (rc != 0) {
			if (i != 0)
				fail("start_waiters failed on sample %zu", i);
			peer->shutdown(pool);
			out_skip("busy_stop_p50_us", no_such_wait);
			out_skip("busy_stop_p99_us", no_such_wait);
			out_skip("threads_alive_after", no_such_wait);
			free(fw);
			free(v);
			return;
		}
		for (unsigned k = 0; k < o->workers; k++)
			sem_wait_or_fail(&inside, "a waiter to block");
		/* phase frac(i * 0.618...) of the 10 ms period (a golden-ratio
		 * sequence: evenly spread for any sample count) */
		sleep_ns((int64_t)((((uint64_t)i * 0x9E3779B97F4A7C15ull) >> 40) *
		    10000000u >> 24));
		t0 = now_ns();
		if (flag) {
			atomic_store(&flag_raised, true);
			peer->shutdown(pool);
		} else {
			peer->stop_waiters(pool);
		}
		v[i] = now_ns() - t0;
		bad = flag ? atomic_load(&flag_failed) : peer->waiters_failed();
		if (bad != 0)
			fail("%u waiter(s) woke for a reason other than the "
			     "stop (sample %zu)", bad, i);
	}
	out_stop_figures("busy_stop", o, v, n);
	out_threads_alive(baseline);
	sem_destroy(&inside);
	free(fw);
	free(v);
}

/* ---- e) cancel ------------------------------------------------------------- */

/*
 * Cancels per second of N queued jobs, by handle (one cancel call per job)
 * or by group (one call for all). Every worker is held by a blocker first,
 * so all N jobs are still queued when the clock starts: each cancel must
 * succeed and none of the N may run. Submitting, releasing handles and
 * destroying the group are outside the clock.
 */
static void run_cancel(const struct options *o, bool by_group)
{
	size_t             n = o->tasks, cancelled = 0;
	unsigned           w = o->workers;
	struct counted    *items;
	struct bench_item *blockers;
	void             **handles = NULL;
	void              *pool, *group = NULL;
	int64_t            t0, t1;

	if (!by_group && peer->submit_handle == NULL) {
		out_skip("cancels_per_s", peer->why_no_cancel);
		return;
	}
	if (by_group && peer->group_create == NULL) {
		out_skip("cancels_per_s", peer->why_no_group);
		return;
	}
	items = make_counted(n);
	blockers = xcalloc(w, sizeof(*blockers));
	pool = create_pool(w, n + w);
	block_workers(pool, blockers, w);

	if (by_group) {
		group = peer->group_create(pool);
		if (group == NULL)
			fail("group_create failed");
		for (size_t i = 0; i < n; i++)
			if (peer->submit_group(pool, group, &items[i].base) != 0)
				fail("submit_group failed at job %zu", i);
	} else {
		handles = xcalloc(n, sizeof(*handles));
		for (size_t i = 0; i < n; i++) {
			handles[i] = peer->submit_handle(pool, &items[i].base);
			if (handles[i] == NULL)
				fail("submit_handle failed at job %zu", i);
		}
	}

	t0 = now_ns();
	if (by_group) {
		peer->cancel_group(pool, group);
		cancelled = n; /* checked below: none of them may run */
	} else {
		for (size_t i = 0; i < n; i++)
			cancelled += peer->cancel(pool, handles[i]) == 1;
	}
	t1 = now_ns();

	open_gate(w);
	peer->wait_idle(pool);
	if (by_group) {
		peer->group_destroy(pool, group);
	} else {
		for (size_t i = 0; i < n; i++)
			peer->release(pool, handles[i]);
	}
	if (atomic_load(&blocker_runs) != w)
		fail("blockers ran %u times, expected %u",
		     atomic_load(&blocker_runs), w);
	if (cancelled != n)
		fail("only %zu of %zu cancels succeeded although no worker "
		     "was free", cancelled, n);
	check_counts(n, 0);
	peer->shutdown(pool);

	out_value("cancels_per_s", (double)n * 1e9 / (double)(t1 - t0), 0,
	          "cancels/s", "higher", "tasks=%zu elapsed_ms=%.3f", n,
	          (double)(t1 - t0) / 1e6);
	free(handles);
	free(blockers);
	free(items);
	free((void *)run_count);
}

/* ---- f) memory ------------------------------------------------------------- */

/*
 * Heap cost of queued jobs and malloc calls per submit, seen through the
 * interposer above (blocks from glibc's malloc family only: thread stacks
 * and other mmap'ed memory are not counted, the same for every peer).
 * bytes_per_queued_task = (live heap with N jobs queued behind blocked
 * workers - live heap before create) / N. It deliberately includes the
 * pool's own fixed structures (and a bounded pool's preallocated queue of
 * `capacity` slots) amortised over N: that is what holding N jobs costs.
 * mallocs_per_submit counts malloc-family calls (any thread) during N submits
 * in a second round, after the first round has warmed any caches or free
 * lists: the steady state.
 */
static void run_memory(const struct options *o)
{
	size_t             n = o->tasks;
	unsigned           w = o->workers;
	struct counted    *items;
	struct bench_item *blockers;
	void              *pool;
	long               b0, b1, c0, c1;

	if (peer->why_no_alloc_count != NULL) {
		out_skip("bytes_per_queued_task", peer->why_no_alloc_count);
		out_skip("mallocs_per_submit", peer->why_no_alloc_count);
		return;
	}
	items = make_counted(n);
	blockers = xcalloc(w, sizeof(*blockers));

	b0 = atomic_load(&live_bytes);
	pool = create_pool(w, n + w);
	block_workers(pool, blockers, w);
	for (size_t i = 0; i < n; i++)
		submit_or_fail(pool, NULL, &items[i].base);
	b1 = atomic_load(&live_bytes);
	open_gate(w);
	peer->wait_idle(pool);
	check_counts(n, 1);

	block_workers(pool, blockers, w);
	c0 = atomic_load(&alloc_calls);
	for (size_t i = 0; i < n; i++)
		submit_or_fail(pool, NULL, &items[i].base);
	c1 = atomic_load(&alloc_calls);
	open_gate(w);
	peer->wait_idle(pool);
	check_counts(n, 2);
	if (atomic_load(&blocker_runs) != 2 * w)
		fail("blockers ran %u times, expected %u",
		     atomic_load(&blocker_runs), 2 * w);
	peer->shutdown(pool);

	out_value("bytes_per_queued_task", (double)(b1 - b0) / (double)n, 1,
	          "bytes", "lower", "tasks=%zu live_before=%ld live_queued=%ld",
	          n, b0, b1);
	out_value("mallocs_per_submit", (double)(c1 - c0) / (double)n, 4,
	          "calls", "lower", "tasks=%zu calls=%ld", n, c1 - c0);
	free(blockers);
	free(items);
	free((void *)run_count);
}

/* ---- main ------------------------------------------------------------------ */

static noreturn void usage(const char *argv0)
{
	fprintf(stderr,
	    "usage: %s <scenario> [--tasks N] [--producers P] [--workers W]\n"
	    "          [--samples N] [--wait flag|sleep|poll|queue]\n"
	    "          [--by handle|group] [--into pool|group]\n"
	    "          [--samples-out FILE]\n"
	    "scenarios: throughput wake idle-stop busy-stop cancel memory\n",
	    argv0);
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

static enum bench_wait parse_wait(const char *argv0, const char *s)
{
	static const char *const names[] = { "flag", "sleep", "poll", "queue" };

	for (int i = 0; i < 4; i++)
		if (strcmp(s, names[i]) == 0)
			return (enum bench_wait)i;
	fprintf(stderr, "%s: bad --wait %s\n", argv0, s);
	usage(argv0);
}

int main(int argc, char **argv)
{
	struct options o = { .wait = "flag", .by = "handle", .into = "pool" };
	size_t         tasks = 0, samples = 0;
	unsigned       workers = 0;
	enum bench_wait how;

	peer = bench_peer_get();
	token_copy(version, sizeof(version), peer->version);
	if (argc < 2)
		usage(argv[0]);
	scenario = argv[1];
	if (strcmp(scenario, "memory") == 0)
		atomic_store(&counting, true); /* first thing: see above */

	o.producers = 1;
	for (int i = 2; i < argc; i++) {
		const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (val == NULL)
			usage(argv[0]);
		i++;
		if (strcmp(opt, "--tasks") == 0)
			tasks = parse_count(argv[0], opt, val, 100000000);
		else if (strcmp(opt, "--producers") == 0)
			o.producers = (unsigned)parse_count(argv[0], opt, val, 64);
		else if (strcmp(opt, "--workers") == 0)
			workers = (unsigned)parse_count(argv[0], opt, val, 64);
		else if (strcmp(opt, "--samples") == 0)
			samples = parse_count(argv[0], opt, val, 10000000);
		else if (strcmp(opt, "--wait") == 0)
			o.wait = val;
		else if (strcmp(opt, "--by") == 0)
			o.by = val;
		else if (strcmp(opt, "--into") == 0)
			o.into = val;
		else if (strcmp(opt, "--samples-out") == 0)
			o.samples_out = val;
		else
			usage(argv[0]);
	}
	how = parse_wait(argv[0], o.wait);
	if (strcmp(o.by, "handle") != 0 && strcmp(o.by, "group") != 0)
		usage(argv[0]);
	if (strcmp(o.into, "pool") != 0 && (strcmp(o.into, "group") != 0 ||
	    strcmp(scenario, "throughput") != 0))
		usage(argv[0]);

	/* defaults per scenario */
	if (strcmp(scenario, "throughput") == 0) {
		o.tasks = tasks ? tasks : 1000000;
		o.workers = workers ? workers : 4;
		snprintf(config, sizeof(config), "p%uw%u%s", o.producers,
		         o.workers, strcmp(o.into, "group") == 0 ? "-group" : "");
		run_throughput(&o);
	} else if (strcmp(scenario, "wake") == 0) {
		o.samples = samples ? samples : 2000;
		o.workers = workers ? workers : 4;
		snprintf(config, sizeof(config), "w%u", o.workers);
		run_wake(&o);
	} else if (strcmp(scenario, "idle-stop") == 0) {
		o.samples = samples ? samples : 200;
		o.workers = workers ? workers : 4;
		snprintf(config, sizeof(config), "w%u", o.workers);
		run_idle_stop(&o);
	} else if (strcmp(scenario, "busy-stop") == 0) {
		o.samples = samples ? samples : 100;
		o.workers = workers ? workers : 4;
		snprintf(config, sizeof(config), "%s", o.wait);
		run_busy_stop(&o, how);
	} else if (strcmp(scenario, "cancel") == 0) {
		o.tasks = tasks ? tasks : 100000;
		o.workers = workers ? workers : 2;
		snprintf(config, sizeof(config), "%s", o.by);
		sem_init_or_fail(&blocker_inside);
		sem_init_or_fail(&blocker_gate);
		run_cancel(&o, strcmp(o.by, "group") == 0);
	} else if (strcmp(scenario, "memory") == 0) {
		o.tasks = tasks ? tasks : 100000;
		o.workers = workers ? workers : 2;
		snprintf(config, sizeof(config), "w%u", o.workers);
		sem_init_or_fail(&blocker_inside);
		sem_init_or_fail(&blocker_gate);
		run_memory(&o);
	} else {
		fprintf(stderr, "%s: unknown scenario %s\n", argv[0], scenario);
		usage(argv[0]);
	}
	return 0;
}
