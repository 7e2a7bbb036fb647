/*
 * bench_submit: what one ctp_pool_submit costs its caller, by options.
 *
 * Usage: bench_submit [submits] [rounds]   (defaults 1000000, 5)
 *
 * One thread submits `submits` empty tasks to a 2-worker pool whose queue
 * holds them all (no submit waits for room), then waits for the pool to be
 * idle; rounds alternate between the option sets, so drift in the machine
 * hits each the same. Options: "null" (NULL opts: queue_wait 0, the
 * default), "forever" (queue_wait CTP_FOREVER, what bench/driver.c uses),
 * "handle" (NULL opts and a handle, released at once). Checks that every
 * task ran once. Output: one parsable line per round and option set,
 *   bench=submit opts=<o> round=<r> submits=<n> submit_ns=<loop / n>
 *   tasks_per_s=<n / (loop + drain)>
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ctpool.h"

static atomic_long ran;

static int empty(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	atomic_fetch_add_explicit(&ran, 1, memory_order_relaxed);
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const ctp_task_opts forever = { .queue_wait = CTP_FOREVER };
	static const char *const names[] = { "null", "forever", "handle" };
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	int rounds = argc > 2 ? atoi(argv[2]) : 5;

	if (n <= 0 || rounds <= 0) {
		fprintf(stderr, "usage: bench_submit [submits] [rounds]\n");
		return 2;
	}
	for (int r = 0; r < rounds; r++) {
		for (int o = 0; o < 3; o++) {
			ctp_pool *pool;
			double t0, t1, t2;
			int rc = ctp_pool_create(&pool, &(ctp_pool_opts){
			    .threads = 2, .queue_capacity = (size_t)n });

			if (rc != 0) {
				fprintf(stderr, "ctp_pool_create: %s\n",
				    ctp_strerror(rc));
				return 1;
			}
			atomic_store(&ran, 0);
			t0 = now_s();
			for (long i = 0; i < n; i++) {
				const ctp_task_opts *opts = o == 1 ? &forever :
				    NULL;
				ctp_task *t = NULL;

				rc = ctp_pool_submit(pool, empty, NULL, opts,
				    o == 2 ? &t : NULL);
				if (rc != 0) {
					fprintf(stderr, "ctp_pool_submit: %s\n",
					    ctp_strerror(rc));
					return 1;
				}
				ctp_task_release(t);
			}
			t1 = now_s();
			ctp_pool_wait_idle(pool, CTP_FOREVER);
			t2 = now_s();
			ctp_pool_destroy(pool);
			if (atomic_load(&ran) != n) {
				fprintf(stderr, "ran %ld tasks of %ld\n",
				    atomic_load(&ran), n);
				return 1;
			}
			printf("bench=submit opts=%s round=%d submits=%ld "
			    "submit_ns=%.1f tasks_per_s=%.0f\n", names[o], r, n,
			    (t1 - t0) / (double)n * 1e9, (double)n / (t2 - t0));
		}
	}
	return 0;
}
