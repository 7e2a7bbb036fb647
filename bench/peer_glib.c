/*
 * peer_glib.c: the benchmark adapter for GLib's GThreadPool (glib 2.74 here;
 * the version string is taken from the library at run time).
 *
 * Mapping (see peer.h for each hook's contract):
 * - create: g_thread_pool_new(run_item, pool, max_threads = workers,
 *   exclusive = TRUE, &err). An exclusive pool starts all its threads at
 *   once and keeps them attached to it, so every worker exists on return.
 *   `capacity` is ignored: the pool's GAsyncQueue is unbounded.
 * - submit: g_thread_pool_push(pool, item, &err). Any thread may push, so
 *   producer_begin/end are NULL.
 * - wait_idle: GLib has no such call. This adapter counts outstanding jobs
 *   the way GLib users do: an atomic counter raised in submit, lowered
 *   after item->run; the worker that brings it to zero takes a GMutex and
 *   broadcasts a GCond the waiter sleeps on.
 * - shutdown: g_thread_pool_free(pool, immediate = TRUE, wait = TRUE).
 * - busy stop: the driver's flag loop (start_waiters NULL) through submit
 *   and shutdown: g_thread_pool_free(pool, TRUE, TRUE) returns once every
 *   running task has returned (see below: the threads themselves are not
 *   waited for).
 * - cancel by handle, cancel by group: none (NULL hooks, see the why
 *   strings). g_thread_pool_free(immediate) drops the whole queue, but
 *   nothing withdraws one task or a chosen subset.
 *
 * What is different or unfair here:
 * - Threads are not joined. GLib starts pool threads with g_thread_new()
 *   and unrefs them at once; g_thread_pool_free(immediate, wait = TRUE)
 *   waits until no task is running (every thread idle on the queue), then
 *   pushes a stop marker per thread and returns without waiting for them.
 *   Each thread then leaves the pool on its own and either parks in GLib's
 *   process-wide queue of unused threads (kept for the next pool) or
 *   exits, detached. GLib 2.74's defaults are max_unused_threads = 2
 *   and max_idle_time = 15 s, and a thread parks only while fewer than
 *   max_unused_threads - 1 others are parked. Observed here through
 *   /proc/self/task after shutting down an idle 4-worker exclusive pool:
 *   5 tasks during (main + 4), 2 tasks 100 ms after shutdown (main + one
 *   parked "unused" thread: g_thread_pool_get_num_unused_threads() = 1),
 *   1 task 16 s later (the parked thread timed out). The other 3 threads
 *   exit on their own, unjoined; shutdown returns before they are gone
 *   (3-4 tasks right after it returns). The driver's idle-stop creates 200
 *   pools in one process: each new exclusive pool takes the parked thread
 *   back first, and after the last one threads_alive_after = 1.
 *   A normal user does not call g_thread_pool_set_max_unused_threads() or
 *   g_thread_pool_stop_unused_threads(), so neither does this adapter.
 *   joins_threads = 0; the driver's "threads alive 100 ms after shutdown"
 *   figure shows the parked thread.
 * - Every push allocates, but not through malloc: GAsyncQueue keeps its
 *   items in a GQueue, one GList node (24 bytes) per queued item, from
 *   g_slice_alloc(). In GLib 2.74 GSlice is still the magazine (slab)
 *   allocator: it carves nodes out of slabs it gets from posix_memalign()
 *   and recycles freed nodes through per-thread magazines. The driver's
 *   interposer counts posix_memalign too, so it sees the slabs: the bytes
 *   figure is GLib's real heap cost (measured 36.1 bytes per queued job:
 *   the nodes plus slab and magazine overhead), and the calls figure
 *   counts slab refills, not nodes (measured 0.0001 calls per submit in
 *   the steady state: the magazines recycle the nodes, much like a free
 *   list). With G_SLICE=always-malloc (a debugging switch users do not
 *   set) the same run shows 24.0 bytes and 1.0 malloc per submit; GLib
 *   2.76 and later made GSlice a plain malloc wrapper, so there a node is
 *   one malloc per push.
 * - One mutex (the GAsyncQueue lock) serializes every push and every pop;
 *   idle workers park in g_cond_wait on it (no spinning), so a submit to
 *   an idle pool is one futex wake; wake latency is a plain thread wake.
 * - wait_idle costs the adapter's own atomic counter per job (one atomic
 *   increment in submit, one atomic decrement on the worker), which
 *   GThreadPool would not need if the caller did not wait for idle.
 * - g_thread_pool_push() does not block: the queue grows without bound.
 */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>

#include "peer.h"

struct gpool {
	GThreadPool *tp;
	gint outstanding;     /* jobs submitted and not yet finished */
	GMutex lock;          /* with `idle`: wait_idle's sleep */
	GCond idle;
};

/* The pool's function: every task (job or waiter) is a bench_item. */
static void run_item(gpointer data, gpointer user_data)
{
	struct bench_item *item = data;
	struct gpool *p = user_data;

	item->run(item);
	if (g_atomic_int_dec_and_test(&p->outstanding)) {
		g_mutex_lock(&p->lock);
		g_cond_broadcast(&p->idle);
		g_mutex_unlock(&p->lock);
	}
}

static void *glib_create(unsigned workers, size_t capacity)
{
	struct gpool *p = g_new0(struct gpool, 1);
	GError *err = NULL;

	(void)capacity; /* unbounded queue */
	g_mutex_init(&p->lock);
	g_cond_init(&p->idle);
	p->tp = g_thread_pool_new(run_item, p, (gint)workers, TRUE, &err);
	if (p->tp == NULL) {
		fprintf(stderr, "g_thread_pool_new: %s\n",
		        err ? err->message : "failed");
		g_clear_error(&err);
		g_mutex_clear(&p->lock);
		g_cond_clear(&p->idle);
		g_free(p);
		return NULL;
	}
	return p;
}

static int glib_submit(void *pool, void *producer, struct bench_item *item)
{
	struct gpool *p = pool;
	GError *err = NULL;

	(void)producer;
	g_atomic_int_inc(&p->outstanding);
	if (!g_thread_pool_push(p->tp, item, &err)) {
		/* Only fails when an exclusive pool cannot start a thread. */
		fprintf(stderr, "g_thread_pool_push: %s\n",
		        err ? err->message : "failed");
		g_clear_error(&err);
		g_atomic_int_add(&p->outstanding, -1);
		return -1;
	}
	return 0;
}

static void glib_wait_idle(void *pool)
{
	struct gpool *p = pool;

	g_mutex_lock(&p->lock);
	while (g_atomic_int_get(&p->outstanding) != 0)
		g_cond_wait(&p->idle, &p->lock);
	g_mutex_unlock(&p->lock);
}

static void glib_free(struct gpool *p)
{
	/* immediate: queued tasks are dropped; wait: returns once no task is
	 * running. The threads leave afterwards, on their own (not joined). */
	g_thread_pool_free(p->tp, TRUE, TRUE);
	g_mutex_clear(&p->lock);
	g_cond_clear(&p->idle);
	g_free(p);
}

static void glib_shutdown(void *pool)
{
	glib_free(pool);
}

static char version[32];

static const struct bench_peer peer = {
	.name = "glib",
	.version = version,
	.joins_threads = 0,
	.create = glib_create,
	.producer_begin = NULL,
	.producer_end = NULL,
	.submit = glib_submit,
	.wait_idle = glib_wait_idle,
	.shutdown = glib_shutdown,
	.start_waiters = NULL, /* the driver's flag loop */
	.stop_waiters = NULL,
	.waiters_failed = NULL,
	.why_no_cancel = "GThreadPool has no way to remove one queued task",
	.why_no_group = "GThreadPool has no task groups; g_thread_pool_free(immediate) drops the whole queue only",
	.why_no_alloc_count = NULL, /* seen: GSlice slabs are posix_memalign'd */
};

const struct bench_peer *bench_peer_get(void)
{
	if (version[0] == '\0')
		snprintf(version, sizeof(version), "%u.%u.%u", glib_major_version,
		         glib_minor_version, glib_micro_version);
	return &peer;
}
