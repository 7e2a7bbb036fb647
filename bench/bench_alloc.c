/*
 * bench_alloc: malloc calls per submit in steady state.
 *
 * Usage: bench_alloc [submits-per-round]   (default 1000000)
 *
 * The program defines malloc/calloc/realloc itself (ELF interposition: the
 * library's calls land here too) and counts them. A 2-worker pool runs rounds
 * of submits that exercise every allocation site a submit can reach: a
 * handle, a deadline (timer heap), and a third cancelled while queued
 * (tombstones in the ring). The first round grows the task free list and the
 * timer heap to their peak; the later rounds show the steady state.
 * Output: one parsable line per round,
 *   bench=alloc round=<r> submits=<n> mallocs=<m> per_submit=<m/n>
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctpool.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static atomic_long allocs;

void *malloc(size_t n)
{
	atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
	return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
	atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
	return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
	return __libc_realloc(p, n);
}

static int nop_fn(void *arg, ctp_token *token)
{
	(void)arg;
	(void)token;
	return 0;
}

static void nop_done(void *arg, int status)
{
	(void)arg;
	(void)status;
}

static int round_of(ctp_pool *pool, long n)
{
	ctp_task_opts o = { .done = nop_done, .queue_wait = CTP_FOREVER,
	                    .timeout = CTP_SEC(60) };

	for (long i = 0; i < n; i++) {
		ctp_task *t;
		int rc = ctp_pool_submit(pool, nop_fn, NULL, &o, &t);

		if (rc != 0) {
			fprintf(stderr, "submit: %s\n", ctp_strerror(rc));
			return 1;
		}
		if (i % 3 == 0)
			ctp_task_cancel(t); /* any answer is fine here */
		ctp_task_release(t);
	}
	return ctp_pool_wait_idle(pool, CTP_FOREVER) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	ctp_pool_opts po = { .threads = 2 };
	ctp_pool *pool;

	if (n <= 0 || ctp_pool_create(&pool, &po) != 0)
		return 1;
	for (int r = 0; r < 3; r++) {
		long before = atomic_load(&allocs), m;

		if (round_of(pool, n) != 0)
			return 1;
		m = atomic_load(&allocs) - before;
		printf("bench=alloc round=%d submits=%ld mallocs=%ld "
		       "per_submit=%.6f\n", r, n, m, (double)m / (double)n);
	}
	return ctp_pool_destroy(pool) == 0 ? 0 : 1;
}
