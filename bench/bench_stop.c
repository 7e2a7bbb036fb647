/*
 * bench_stop: how long ctp_pool_shutdown(pool, 0, CTP_FOREVER) takes.
 *
 * Usage: bench_stop [runs]   (default 200)
 *
 * Each run makes a fresh 4-thread pool; only the shutdown call is timed
 * (creation, ctp_pool_destroy and queue teardown are outside the clock).
 * Scenarios:
 *   idle   no task: every worker is parked waiting for work.
 *   sleep  4 tasks blocked in ctp_token_sleep(token, 10 s).
 *   poll   4 tasks blocked in poll() on ctp_token_fd(token), 10 s timeout.
 *   queue  4 tasks blocked in ctp_queue_pop on an empty queue, with their
 *          token and a 10 s timeout.
 * In the busy scenarios the clock starts once all 4 tasks have posted a
 * semaphore right before they block, so the figure is how fast a fired token
 * wakes each kind of wait plus joining the workers.
 *
 * Output: one parsable line per scenario,
 *   bench=stop scenario=<s> threads=4 runs=<n> p50_us=.. p99_us=.. min_us=..
 *   max_us=..
 * It never judges the times; it exits non-zero only when a call fails or a
 * blocked task wakes for any reason other than the shutdown.
 */
#include <errno.h>
#include <poll.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ctpool.h"

#define THREADS 4

enum scenario { SC_IDLE, SC_SLEEP, SC_POLL, SC_QUEUE, SC_COUNT };

static const char *const scenario_name[SC_COUNT] = {
	"idle", "sleep", "poll", "queue"
};

struct run {
	enum scenario sc;
	sem_t         inside;  /* posted by each task right before it blocks */
	ctp_queue    *queue;   /* SC_QUEUE: the empty queue the tasks pop */
	atomic_int    bad;     /* first unexpected result a task saw, or 0 */
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, int rc)
{
	printf("bench=stop error=\"%s: %s\"\n", what, ctp_strerror(rc));
	exit(1);
}

/* Records the first unexpected result; the main thread reports it. */
static void task_bad(struct run *r, int rc)
{
	int expected = 0;

	atomic_compare_exchange_strong(&r->bad, &expected, rc != 0 ? rc : -1);
}

static void post_inside(struct run *r)
{
	if (sem_post(&r->inside) != 0)
		task_bad(r, -errno);
}

static int wait_poll(struct run *r, ctp_token *token)
{
	int           fd = ctp_token_fd(token);
	struct pollfd p;
	int           n;

	if (fd < 0) {
		post_inside(r); /* the main thread must not wait for us */
		return fd;
	}
	p.fd = fd;
	p.events = POLLIN;
	post_inside(r);
	do
		n = poll(&p, 1, 10000);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		return n < 0 ? -errno : -ETIMEDOUT;
	return ctp_token_reason(token);
}

static int blocked_task(void *arg, ctp_token *token)
{
	struct run *r = arg;
	void       *item;
	int         rc;

	switch (r->sc) {
	case SC_SLEEP:
		post_inside(r);
		rc = ctp_token_sleep(token, CTP_SEC(10));
		break;
	case SC_POLL:
		rc = wait_poll(r, token);
		break;
	case SC_QUEUE:
		post_inside(r);
		rc = ctp_queue_pop(r->queue, &item, token, CTP_SEC(10));
		break;
	default:
		rc = -EINVAL;
		break;
	}
	if (rc != -ESHUTDOWN)
		task_bad(r, rc);
	return rc;
}

static void wait_inside(struct run *r)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	while (sem_timedwait(&r->inside, &ts) != 0) {
		if (errno != EINTR)
			die("a task did not start", -errno);
	}
}

/* One run: returns the shutdown time in ns. */
static int64_t one_run(enum scenario sc)
{
	ctp_pool_opts opts = { .threads = THREADS, .name = "bench" };
	struct run    r = { .sc = sc };
	ctp_pool     *pool;
	int64_t       t0, t1;
	int           rc;

	if (sem_init(&r.inside, 0, 0) != 0)
		die("sem_init", -errno);
	if (sc == SC_QUEUE && (rc = ctp_queue_create(&r.queue, 4)) != 0)
		die("ctp_queue_create", rc);
	if ((rc = ctp_pool_create(&pool, &opts)) != 0)
		die("ctp_pool_create", rc);
	for (int i = 0; sc != SC_IDLE && i < THREADS; i++) {
		rc = ctp_pool_submit(pool, blocked_task, &r, NULL, NULL);
		if (rc != 0)
			die("ctp_pool_submit", rc);
	}
	for (int i = 0; sc != SC_IDLE && i < THREADS; i++)
		wait_inside(&r);

	t0 = now_ns();
	rc = ctp_pool_shutdown(pool, 0, CTP_FOREVER);
	t1 = now_ns();

	if (rc != 0)
		die("ctp_pool_shutdown", rc);
	if ((rc = ctp_pool_destroy(pool)) != 0)
		die("ctp_pool_destroy", rc);
	if (atomic_load(&r.bad) != 0)
		die("a blocked task woke without the shutdown",
		    atomic_load(&r.bad));
	ctp_queue_destroy(r.queue);
	sem_destroy(&r.inside);
	return t1 - t0;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct_us(const int64_t *v, int n, int p)
{
	int rank = (p * n + 99) / 100;

	return (double)v[rank > 0 ? rank - 1 : 0] / 1000.0;
}

static void bench(enum scenario sc, int runs, int64_t *v)
{
	for (int i = 0; i < runs; i++)
		v[i] = one_run(sc);
	qsort(v, (size_t)runs, sizeof(*v), cmp_i64);
	printf("bench=stop scenario=%s threads=%d runs=%d p50_us=%.1f "
	       "p99_us=%.1f min_us=%.1f max_us=%.1f\n", scenario_name[sc],
	       THREADS, runs, pct_us(v, runs, 50), pct_us(v, runs, 99),
	       (double)v[0] / 1000.0, (double)v[runs - 1] / 1000.0);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int      runs = 200;
	int64_t *v;

	if (argc > 1) {
		char *end;
		long  n = strtol(argv[1], &end, 10);

		if (*end != '\0' || n < 1 || n > 1000000) {
			printf("usage: %s [runs]   (runs: 1..1000000, default "
			       "200)\n", argv[0]);
			return 2;
		}
		runs = (int)n;
	}
	v = malloc((size_t)runs * sizeof(*v));
	if (v == NULL) {
		printf("bench=stop error=\"out of memory\"\n");
		return 1;
	}
	for (int sc = 0; sc < SC_COUNT; sc++)
		bench((enum scenario)sc, runs, v);
	free(v);
	return 0;
}
