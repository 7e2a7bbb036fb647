/*
 * peer_libuv.c: the benchmark adapter for libuv's threadpool (libuv 1.44
 * here; the version string is taken from the library at run time).
 *
 * libuv has one threadpool per process, shared by every loop, sized once
 * from UV_THREADPOOL_SIZE when it is first used. Work goes in with
 * uv_queue_work(loop, req, work_cb, after_work_cb): work_cb runs on a pool
 * thread, after_work_cb later on the loop's own thread, from uv_run(). A
 * loop may only be used from one thread, so each submitting thread needs
 * its own uv_loop_t.
 *
 * Mapping (see peer.h for each hook's contract):
 * - create: setenv("UV_THREADPOOL_SIZE", workers) before the first
 *   uv_queue_work of the process, uv_loop_init() of the pool's loop (used
 *   by the driver's main thread), then one no-op uv_queue_work + uv_run:
 *   libuv starts its threads lazily, on the first request, and waits there
 *   until all of them run, so after this warm-up every worker exists. The
 *   pool size cannot change afterwards: a later create() with another
 *   worker count fails. `capacity` is ignored (unbounded queue).
 * - producer_begin: a uv_loop_t of that thread's own (uv_loop_init);
 *   producer_end: uv_run(UV_RUN_DEFAULT) on it, which returns once every
 *   request queued from that loop has had its after_work_cb, then
 *   uv_loop_close().
 * - submit: malloc() a uv_work_t (libuv requests are caller-owned memory;
 *   users allocate one per request and free it in the after_work_cb, as
 *   done here), req->data = item, uv_queue_work(loop, req, ...) on the
 *   calling thread's loop. The work_cb runs item->run(item). Every 256th
 *   submit on a loop first runs one non-blocking turn of that loop
 *   (uv_run(UV_RUN_NOWAIT)), which runs the after_work_cbs of the requests
 *   completed so far: a libuv program queues work from its loop thread and
 *   that loop keeps turning, so completions come back between batches.
 *   Without those turns, 1,000,000 requests pile up unreaped until
 *   producer_end; measured with the real driver, that ran at ~0.3-0.65 M
 *   jobs/s against ~1.0-2.0 M with the turns (every config, 2 cores).
 * - wait_idle: uv_run(main loop, UV_RUN_DEFAULT): returns when the loop
 *   has no active request left, i.e. every request queued from the main
 *   thread has completed and its after_work_cb ran (producer loops were
 *   already drained by producer_end).
 * - shutdown: uv_run (to reap whatever is left) and uv_loop_close().
 * - cancel by handle: submit_handle is submit() with a request that also
 *   carries done/released flags; cancel = uv_cancel((uv_req_t *)req),
 *   0 (success) meaning the work_cb will never run: its after_work_cb
 *   still comes, with UV_ECANCELED, from the next uv_run (wait_idle). The
 *   request is freed by whichever comes second, release() or its
 *   after_work_cb, so nothing leaks and nothing is freed twice.
 * - busy stop: the driver's flag loop (start_waiters NULL) through submit
 *   and shutdown, which runs the main loop until every request's
 *   after_work_cb ran (so the waiters have returned), then closes it.
 * - cancel by group: none (NULL hooks, see why_no_group).
 *
 * What is different or unfair here:
 * - Threads are never joined: joins_threads = 0. The pool threads live
 *   until the process exits, whatever happens to the loops. libuv does have
 *   uv_library_shutdown(), which joins them (checked: 5 tasks before it, 1
 *   after), but it may be called only once per process and no libuv call
 *   may follow it, so a second pool in the same process (the driver's
 *   idle-stop and busy-stop samples create 100-200 pools in one process)
 *   could not work; users leave it to libuv's own destructor at exit. So
 *   shutdown() does not call it. The driver's "threads alive 100 ms after
 *   shutdown" figure shows all `workers` threads still there (measured: 4),
 *   and shutdown() itself is cheap because it stops nothing.
 * - The pool is process-wide: in one process, every pool this adapter
 *   creates is the same set of threads (only the first create() sets the
 *   size, and pays the thread start-up in its warm-up).
 * - One malloc per job (the uv_work_t, 128 bytes here), forced by the API:
 *   the driver's malloc counter sees it (1 call, 136 usable bytes per
 *   queued job). The completion side costs more than in the other peers:
 *   every job comes back to its loop (pushed on the loop's queue under
 *   the loop's wq mutex, plus an eventfd write when the loop is not already
 *   signalled), and the loop's thread, i.e. the producer itself, runs the
 *   after_work_cbs and frees the requests, inside the timed region.
 * - One global mutex serializes every uv_queue_work and every worker's
 *   dequeue. Idle workers park in uv_cond_wait (no spinning): a submit to
 *   an idle pool is one futex wake.
 * - uv_cancel() only works while the request is still queued; it is O(1)
 *   per request: under the global mutex and the loop's wq mutex it unlinks
 *   the request from the pool's queue, then queues its completion on the
 *   loop (UV_ECANCELED) and signals the loop, whose uv_run (wait_idle,
 *   outside the driver's clock) later runs the after_work_cbs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "peer.h"

/* One per submitting thread: the main thread's is inside struct uvpool. */
struct uvloop {
	uv_loop_t loop;
	unsigned queued; /* requests queued since the last loop turn */
};

/* A loop thread that queues work in bulk gets back to its loop between
 * batches: one non-blocking turn every TURN_EVERY requests. */
#define TURN_EVERY 256

struct uvpool {
	struct uvloop main;
};

/* A request submitted with a handle. */
struct uvhandle {
	uv_work_t req; /* first */
	int done;      /* after_work_cb ran (only touched on the loop thread) */
	int released;  /* release() was called */
};

static unsigned pool_size; /* the process-wide threadpool's, once set */

static void work_cb(uv_work_t *req)
{
	struct bench_item *item = req->data;

	item->run(item);
}

/* Plain submit: the request is freed here, as libuv users do. */
static void after_work_cb(uv_work_t *req, int status)
{
	(void)status;
	free(req);
}

static void after_handle_cb(uv_work_t *req, int status)
{
	struct uvhandle *h = (struct uvhandle *)req;

	(void)status; /* UV_ECANCELED when cancelled */
	h->done = 1;
	if (h->released)
		free(h);
}

static void noop_work(uv_work_t *req)
{
	(void)req;
}

static void noop_after(uv_work_t *req, int status)
{
	(void)req;
	(void)status;
}

static int loop_open(struct uvloop *l)
{
	int rc = uv_loop_init(&l->loop);

	if (rc != 0)
		fprintf(stderr, "uv_loop_init: %s\n", uv_strerror(rc));
	return rc;
}

static void loop_close(struct uvloop *l)
{
	int rc;

	uv_run(&l->loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(&l->loop);
	if (rc != 0)
		fprintf(stderr, "uv_loop_close: %s\n", uv_strerror(rc));
}

static void *luv_create(unsigned workers, size_t capacity)
{
	struct uvpool *p;
	uv_work_t warm;
	char buf[16];
	int rc;

	(void)capacity; /* unbounded queue */
	if (pool_size != 0 && pool_size != workers) {
		fprintf(stderr, "libuv: the process-wide threadpool already has "
		        "%u threads, cannot make %u\n", pool_size, workers);
		return NULL;
	}
	if (pool_size == 0) {
		snprintf(buf, sizeof(buf), "%u", workers);
		setenv("UV_THREADPOOL_SIZE", buf, 1);
	}
	p = calloc(1, sizeof(*p));
	if (p == NULL || loop_open(&p->main) != 0) {
		free(p);
		return NULL;
	}
	/* Warm-up: the first request of the process starts every pool thread
	 * and waits until they all run. */
	rc = uv_queue_work(&p->main.loop, &warm, noop_work, noop_after);
	if (rc != 0) {
		fprintf(stderr, "uv_queue_work: %s\n", uv_strerror(rc));
		loop_close(&p->main);
		free(p);
		return NULL;
	}
	uv_run(&p->main.loop, UV_RUN_DEFAULT);
	pool_size = workers;
	return p;
}

static void *luv_producer_begin(void *pool)
{
	struct uvloop *l = calloc(1, sizeof(*l));

	(void)pool;
	if (l == NULL || loop_open(l) != 0) {
		free(l);
		return NULL;
	}
	return l;
}

static void luv_producer_end(void *pool, void *producer)
{
	(void)pool;
	if (producer == NULL)
		return;
	loop_close(producer); /* runs it until its requests completed */
	free(producer);
}

static struct uvloop *loop_of(struct uvpool *p, void *producer)
{
	return producer ? producer : &p->main;
}

/* uv_queue_work on the calling thread's loop, turning the loop now and
 * then so that completed requests are reaped (and their memory reused). */
static int queue(struct uvloop *l, uv_work_t *req, uv_after_work_cb after)
{
	int rc;

	if (++l->queued == TURN_EVERY) {
		l->queued = 0;
		uv_run(&l->loop, UV_RUN_NOWAIT);
	}
	rc = uv_queue_work(&l->loop, req, work_cb, after);
	if (rc != 0)
		fprintf(stderr, "uv_queue_work: %s\n", uv_strerror(rc));
	return rc;
}

static int luv_submit(void *pool, void *producer, struct bench_item *item)
{
	/* Caller-owned request memory: one malloc per submit, freed in
	 * after_work_cb. */
	uv_work_t *req = malloc(sizeof(*req));

	if (req == NULL)
		return -1;
	req->data = item;
	if (queue(loop_of(pool, producer), req, after_work_cb) != 0) {
		free(req);
		return -1;
	}
	return 0;
}

static void luv_wait_idle(void *pool)
{
	struct uvpool *p = pool;

	uv_run(&p->main.loop, UV_RUN_DEFAULT);
}

static void luv_shutdown(void *pool)
{
	struct uvpool *p = pool;

	loop_close(&p->main);
	free(p);
}

static void *luv_submit_handle(void *pool, struct bench_item *item)
{
	struct uvpool *p = pool;
	struct uvhandle *h = malloc(sizeof(*h));

	if (h == NULL)
		return NULL;
	h->req.data = item;
	h->done = 0;
	h->released = 0;
	if (queue(&p->main, &h->req, after_handle_cb) != 0) {
		free(h);
		return NULL;
	}
	return h;
}

static int luv_cancel_handle(void *pool, void *handle)
{
	struct uvhandle *h = handle;

	(void)pool;
	/* 0: dequeued, work_cb will never run; UV_EBUSY: running or done. */
	return uv_cancel((uv_req_t *)&h->req) == 0;
}

static void luv_release(void *pool, void *handle)
{
	struct uvhandle *h = handle;

	(void)pool;
	if (h->done)
		free(h);
	else
		h->released = 1; /* after_handle_cb frees it */
}

static const struct bench_peer peer = {
	.name = "libuv",
	.version = NULL, /* set by bench_peer_get */
	.joins_threads = 0,
	.create = luv_create,
	.producer_begin = luv_producer_begin,
	.producer_end = luv_producer_end,
	.submit = luv_submit,
	.wait_idle = luv_wait_idle,
	.shutdown = luv_shutdown,
	.start_waiters = NULL, /* the driver's flag loop */
	.stop_waiters = NULL,
	.waiters_failed = NULL,
	.submit_handle = luv_submit_handle,
	.cancel = luv_cancel_handle,
	.release = luv_release,
	.why_no_cancel = NULL,
	.why_no_group = "libuv has no request groups: uv_cancel takes one request at a time",
	.why_no_alloc_count = NULL,
};

const struct bench_peer *bench_peer_get(void)
{
	static struct bench_peer p;

	if (p.name == NULL) {
		p = peer;
		p.version = uv_version_string();
	}
	return &p;
}
