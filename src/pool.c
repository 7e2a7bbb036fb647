/*
 * pool.c: the pool, its workers, submit and shutdown.
 *
 * Design notes
 *   Queue. Tasks wait in pool->queue (queue.c): admission is a CAS on
 *   queue.count (<= capacity: the "queued" figure), the pointers travel
 *   through a ck_ring of twice the capacity. A task cancelled while queued
 *   leaves `count` at once but its pointer stays in the ring (a tombstone)
 *   until someone dequeues it and drops the ring's reference. If tombstones
 *   ever fill the ring while every worker is busy, the submitter compacts
 *   it (compact()): it takes every pointer out, drops the tombstones and
 *   puts the live ones back in order.
 *
 *   Worker loop (worker_main / next_task / run_task). Per task, under its
 *   own uncontended lock, a worker: drops the previous task, checks
 *   `stopping`, dequeues, and starts the task with the CAS QUEUED -> RUNNING
 *   (which fails for a cancelled task), records it as `current`, and gives
 *   its admission slot back. Then it runs fn outside the lock. With nothing
 *   to do it sleeps on queue.not_empty (snapshot first, then look: no lost
 *   wake-up). Who wakes a worker: a submit (bump after the enqueue) and the
 *   shutdown's cancel step (bump after setting `stopping`).
 *
 *   Shutdown. (1) The queue's CLOSED bit is set in its count word (so no
 *   admission CAS can succeed after it) and blocked submitters wake.
 *   (2) Drain: wait on `unfinished` (a futex counting accepted tasks whose
 *   done has not returned) for up to `drain`. (3) Cancel step: set `stopping`, bump not_empty (idle workers
 *   exit at once), then take and release each worker's lock: after that no
 *   worker starts a task, and every started one is in some worker's
 *   `current`, which we reference and fire with -ESHUTDOWN. Then empty the
 *   ring, firing each queued task with -ESHUTDOWN (their done runs here),
 *   until queue.count is 0: a submit admitted just before the close may still
 *   be pushing, and its bump wakes us. Stop the timer. (4) Grace: wait on
 *   `alive` (a futex counting our threads) up to `grace`, then join.
 *
 *   Lifetime. pool->refs counts the owner, every thread, and every task
 *   object (in use or on the free list). Abandoned threads keep the pool
 *   alive after ctp_pool_destroy; the last reference frees it.
 *
 *   Memory order. Statistics are relaxed counters (snapshots). `stopping`,
 *   `alive`, `unfinished`, `idle_waiters` and `started` use seq_cst: each
 *   pairs a counter with a futex sleeper (raise waiters, re-read, sleep).
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_CAPACITY 4096

/* ---- lifetime ----------------------------------------------------------- */

void ctp__pool_ref(ctp_pool *pool)
{
	atomic_fetch_add_explicit(&pool->refs, 1, memory_order_relaxed);
}

static void pool_free(ctp_pool *pool)
{
	unsigned i;

	for (i = 0; i < pool->nthreads; i++)
		pthread_mutex_destroy(&pool->workers[i].lock);
	free(pool->workers);
	free(pool->scan);
	free(pool->scratch);
	ctp__timer_fini(&pool->timer);
	ctp__queue_fini(&pool->queue);
	pthread_mutex_destroy(&pool->lock);
	pthread_mutex_destroy(&pool->free_lock);
	pthread_mutex_destroy(&pool->compact_lock);
	free(pool);
}

void ctp__pool_put(ctp_pool *pool)
{
	if (atomic_fetch_sub_explicit(&pool->refs, 1, memory_order_acq_rel) == 1)
		pool_free(pool);
}

void ctp__pool_thread_exit(ctp_pool *pool)
{
	if (atomic_fetch_sub(&pool->alive, 1) == 1)
		ctp__futex_wake(&pool->alive, INT_MAX);
	ctp__pool_put(pool); /* may free the pool: the last thing we do */
}

void ctp__pool_unfinished_dec(ctp_pool *pool)
{
	if (atomic_fetch_sub(&pool->unfinished, 1) == 1 &&
	    atomic_load(&pool->idle_waiters) != 0)
		ctp__futex_wake(&pool->unfinished, INT_MAX);
}

/* Waits up to `timeout` ns (0: only looks; CTP_FOREVER: no limit) for
 * `word` to read 0; `waiters` (may be NULL) tells the decrementer to wake. */
static int wait_zero(_Atomic uint32_t *word, _Atomic uint32_t *waiters,
                     int64_t timeout)
{
	struct timespec deadline;
	const struct timespec *abs =
	    ctp__deadline(timeout, &deadline) ? &deadline : NULL;

	for (;;) {
		uint32_t v = atomic_load(word);
		int r;

		if (v == 0)
			return 0;
		if (timeout == 0)
			return -ETIMEDOUT;
		if (waiters != NULL)
			atomic_fetch_add(waiters, 1);
		v = atomic_load(word); /* re-read after announcing */
		r = v == 0 ? 0 : ctp__futex_wait(word, v, abs);
		if (waiters != NULL)
			atomic_fetch_sub(waiters, 1);
		if (r == -ETIMEDOUT)
			return atomic_load(word) == 0 ? 0 : -ETIMEDOUT;
	}
}

/* ---- the worker loop ---------------------------------------------------- */

/* Returns the next task to run, started and recorded as current, or NULL
 * when the worker must exit. */
static ctp_task *next_task(ctp_pool *pool, struct ctp__worker *w)
{
	struct ctp_queue *q = &pool->queue;

	for (;;) {
		uint32_t snap = ctp__ec_value(&q->not_empty);
		ctp_task *prev, *t = NULL;
		bool stopping;
		void *item;

		pthread_mutex_lock(&w->lock);
		prev = w->current;
		w->current = NULL;
		stopping = atomic_load(&pool->stopping);
		while (!stopping && ctp__ring_pop(&q->ring, &item)) {
			CTP__PERTURB(); /* popped, not started */
			if (ctp__task_start(item)) {
				t = item;
				w->current = t;
				/* it leaves the queue inside the lock, so the
				 * cancel step never waits for its slot */
				ctp__queue_unreserve(q);
				break;
			}
			ctp__token_put(item); /* a tombstone: the ring's ref */
		}
		pthread_mutex_unlock(&w->lock);
		CTP__PERTURB();
		if (prev != NULL)
			ctp__token_put(&prev->token); /* the ring's ref */
		if (t != NULL)
			return t;
		if (stopping)
			return NULL;
		ctp__ec_wait(&q->not_empty, snap, NULL, NULL);
	}
}

static void run_task(ctp_pool *pool, ctp_task *t)
{
	int status;

	atomic_fetch_add_explicit(&pool->st_running, 1, memory_order_relaxed);
	ctp__tls.task = t;
	status = t->fn(t->arg, &t->token);
	ctp__tls.task = NULL;
	ctp__task_finish_ran(t, status);
}

static void *worker_main(void *arg)
{
	struct ctp__worker *w = arg;
	ctp_pool *pool = w->pool;
	char index[12];
	ctp_task *t;

	ctp__tls.pool = pool;
	snprintf(index, sizeof(index), "%u", w->index);
	ctp__set_thread_name(pool->name, index);
	if (pool->opts.on_thread_start != NULL)
		pool->opts.on_thread_start(w->index, pool->opts.user);
	atomic_fetch_add(&pool->started, 1);
	ctp__futex_wake(&pool->started, INT_MAX);

	while ((t = next_task(pool, w)) != NULL)
		run_task(pool, t);

	if (pool->opts.on_thread_stop != NULL)
		pool->opts.on_thread_stop(w->index, pool->opts.user);
	atomic_fetch_sub(&pool->st_threads, 1);
	ctp__pool_thread_exit(pool);
	return NULL;
}

/* ---- create ------------------------------------------------------------- */

static unsigned cpu_count(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return 1;
	return CPU_COUNT(&set) > 0 ? (unsigned)CPU_COUNT(&set) : 1;
}

static int pool_alloc(ctp_pool **out, const ctp_pool_opts *o, unsigned n,
                      size_t cap)
{
	ctp_pool *pool = calloc(1, sizeof(*pool));
	int r = -ENOMEM;

	if (pool == NULL)
		return -ENOMEM;
	pool->workers = calloc(n, sizeof(*pool->workers));
	pool->scan = calloc(n, sizeof(*pool->scan));
	pool->scratch = calloc(cap, sizeof(*pool->scratch));
	if (pool->workers == NULL || pool->scan == NULL ||
	    pool->scratch == NULL || (r = ctp__queue_init(&pool->queue, cap)))
		goto fail;
	r = ctp__timer_init(&pool->timer);
	if (r != 0) {
		ctp__queue_fini(&pool->queue);
		goto fail;
	}
	pthread_mutex_init(&pool->lock, NULL);
	pthread_mutex_init(&pool->free_lock, NULL);
	pthread_mutex_init(&pool->compact_lock, NULL);
	pool->opts = *o;
	snprintf(pool->name, sizeof(pool->name), "%s",
	    o->name != NULL ? o->name : "ctp");
	pool->opts.name = pool->name; /* the caller's string may not live on */
	pool->nthreads = n;
	atomic_init(&pool->refs, 1); /* the owner's */
	for (unsigned i = 0; i < n; i++) {
		pthread_mutex_init(&pool->workers[i].lock, NULL);
		pool->workers[i].pool = pool;
		pool->workers[i].index = i;
	}
	*out = pool;
	return 0;
fail:
	free(pool->workers);
	free(pool->scan);
	free(pool->scratch);
	free(pool);
	return r;
}

/* Starts worker w; the pool's threads block every signal. */
static int start_worker(ctp_pool *pool, struct ctp__worker *w)
{
	sigset_t all, old;
	int r;

	ctp__pool_ref(pool);
	atomic_fetch_add(&pool->alive, 1);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&w->thread, NULL, worker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		atomic_fetch_sub(&pool->alive, 1);
		ctp__pool_put(pool);
		return -r;
	}
	w->started = true;
	atomic_fetch_add(&pool->st_threads, 1);
	return 0;
}

static void join_all(ctp_pool *pool);

int ctp_pool_create(ctp_pool **out, const ctp_pool_opts *opts)
{
	ctp_pool_opts o = { 0 };
	ctp_pool *pool;
	unsigned n, i;
	size_t cap;
	int r;

	if (out == NULL)
		return -EINVAL;
	if (opts != NULL)
		o = *opts;
	n = o.threads != 0 ? o.threads : cpu_count();
	cap = ctp__round_capacity(o.queue_capacity != 0 ? o.queue_capacity :
	    DEFAULT_CAPACITY);
	if (n > CTP_MAX_THREADS || cap == 0)
		return -EINVAL;
	r = pool_alloc(&pool, &o, n, cap);
	if (r != 0)
		return r;
	for (i = 0; i < n; i++) {
		r = start_worker(pool, &pool->workers[i]);
		if (r != 0)
			break;
	}
	if (r != 0) {
		/* the started workers see `stopping`, run on_thread_stop, exit */
		atomic_store(&pool->stopping, true);
		ctp__ec_bump(&pool->queue.not_empty);
		join_all(pool);
		ctp__pool_put(pool);
		return r;
	}
	/* every worker has run on_thread_start before we return */
	for (uint32_t v; (v = atomic_load(&pool->started)) < n;)
		ctp__futex_wait(&pool->started, v, NULL);
	*out = pool;
	return 0;
}

/* ---- submit ------------------------------------------------------------- */

/* A pointer compact() took out of the ring: a live task is kept in scratch,
 * a tombstone loses the ring's reference. Fewer than `capacity` live tasks
 * can be in the ring: the submitter's own admitted task is outside it. */
static void compact_take(ctp_pool *pool, void *item, size_t *n)
{
	if (ctp_task_state(item) == CTP_TASK_QUEUED) {
		assert(*n < pool->queue.capacity);
		pool->scratch[(*n)++] = item;
	} else {
		ctp__token_put(item);
	}
}

/* Takes every pointer out of the ring, drops tombstones, puts the live ones
 * back in order. Only when tombstones have filled the ring. */
static void compact(ctp_pool *pool)
{
	struct ctp__ring *ring = &pool->queue.ring;
	size_t n = 0, i;
	void *item;

	pthread_mutex_lock(&pool->compact_lock);
	while (ctp__ring_pop(ring, &item))
		compact_take(pool, item, &n);
	for (i = 0; i < n; i++) {
		/* other producers may refill the ring meanwhile: make room */
		while (!ctp__ring_push(ring, pool->scratch[i])) {
			if (ctp__ring_pop(ring, &item))
				compact_take(pool, item, &n);
		}
	}
	pthread_mutex_unlock(&pool->compact_lock);
}

static void enqueue(ctp_pool *pool, ctp_task *t)
{
	while (!ctp__ring_push(&pool->queue.ring, t))
		compact(pool);
	ctp__ec_bump(&pool->queue.not_empty);
}

/* Undoes a submit whose task was never visible to anyone else. */
static void discard(ctp_task *t)
{
	atomic_store_explicit(&t->token.refs, 1, memory_order_relaxed);
	ctp__token_put(&t->token);
}

/* Takes a queue slot, waiting up to queue_wait; a parent that fires while we
 * wait ends the wait with its reason. */
static int admit(ctp_pool *pool, int64_t queue_wait, ctp_token *parent)
{
	struct timespec abs;
	bool timed = ctp__deadline(queue_wait, &abs);
	int r;

	r = ctp__queue_reserve(&pool->queue, parent, queue_wait == 0,
	    timed ? &abs : NULL);
	if (r == -EAGAIN || r == -ETIMEDOUT) {
		atomic_fetch_add_explicit(&pool->st_rejected, 1,
		    memory_order_relaxed);
		return -EAGAIN;
	}
	return r;
}

int ctp_pool_submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                    const ctp_task_opts *opts, ctp_task **task)
{
	ctp_task_opts o = { 0 };
	bool deadline;
	ctp_task *t;
	int r;

	if (pool == NULL || fn == NULL)
		return -EINVAL;
	if (opts != NULL)
		o = *opts;
	if (!ctp__duration_ok(o.timeout) || !ctp__duration_ok(o.queue_wait))
		return -EINVAL;
	if (ctp__queue_closed(&pool->queue))
		return -ESHUTDOWN;
	if (o.parent != NULL && ctp_token_cancelled(o.parent))
		return ctp_token_reason(o.parent);
	deadline = o.timeout > 0;

	t = ctp__task_alloc(pool);
	if (t == NULL)
		return -ENOMEM;
	t->fn = fn;
	t->arg = arg;
	t->done = o.done;
	/* Everything that can fail comes before the task becomes visible. */
	if (deadline && (r = ctp__timer_reserve(pool)) != 0) {
		discard(t);
		return r;
	}
	r = admit(pool, o.queue_wait, o.parent);
	if (r != 0)
		goto undo_timer;
	/* the pool's reference, the ring's, and the handle's */
	atomic_store_explicit(&t->token.refs, task != NULL ? 3 : 2,
	    memory_order_relaxed);
	atomic_fetch_add(&pool->unfinished, 1);
	/* The deadline is written before the link makes the task visible: a
	 * cascade that finishes it at once must see it to take it out of the
	 * heap (ctp__timer_add then refuses the finished task). */
	if (deadline) {
		int64_t now = ctp__now_ns();

		t->deadline = o.timeout > INT64_MAX - now ? INT64_MAX :
		    now + o.timeout;
	}
	if (o.parent != NULL && (r = ctp__token_link(o.parent, &t->token))) {
		ctp__pool_unfinished_dec(pool);
		ctp__queue_unreserve(&pool->queue);
		goto undo_timer;
	}
	CTP__PERTURB();
	/* Accepted. From here a cascade from the parent may finish it. */
	if (deadline)
		ctp__timer_add(pool, t);
	CTP__PERTURB();
	atomic_fetch_add_explicit(&pool->st_submitted, 1, memory_order_relaxed);
	enqueue(pool, t);
	if (task != NULL)
		*task = t;
	return 0;

undo_timer:
	if (deadline)
		ctp__timer_unreserve(pool);
	discard(t);
	return r;
}

/* ---- shutdown ----------------------------------------------------------- */

static void drop_queued(ctp_pool *pool)
{
	struct ctp_queue *q = &pool->queue;
	void *item;

	for (;;) {
		uint32_t snap = ctp__ec_value(&q->not_empty);

		while (ctp__ring_pop(&q->ring, &item)) {
			/* live: dropped, done(-ESHUTDOWN) runs here;
			 * tombstone: -EALREADY, nothing to do */
			ctp__token_fire(item, -ESHUTDOWN);
			ctp__token_put(item);
		}
		if (ctp__queue_count(q) == 0)
			return;
		/* an admitted submit is still pushing, or a canceller or a
		 * backing-out submitter still has to release its slot: the
		 * push's bump, or the release's (the queue is closed), wakes
		 * us */
		ctp__ec_wait(&q->not_empty, snap, NULL, NULL);
	}
}

static void cancel_step(ctp_pool *pool)
{
	unsigned i, n = 0;

	atomic_store(&pool->stopping, true);
	ctp__ec_bump(&pool->queue.not_empty); /* idle workers exit now */
	CTP__PERTURB();
	for (i = 0; i < pool->nthreads; i++) {
		struct ctp__worker *w = &pool->workers[i];

		pthread_mutex_lock(&w->lock);
		if (w->current != NULL) {
			ctp__token_ref(&w->current->token);
			pool->scan[n++] = w->current;
		}
		pthread_mutex_unlock(&w->lock);
	}
	CTP__PERTURB();
	/* running tasks first: the sooner they hear, the sooner they stop */
	for (i = 0; i < n; i++) {
		ctp__token_fire(&pool->scan[i]->token, -ESHUTDOWN);
		ctp__token_put(&pool->scan[i]->token);
	}
	drop_queued(pool);
	ctp__timer_stop(pool);
}

/* Joins every thread once they have all exited. */
static void join_all(ctp_pool *pool)
{
	bool timer;

	pthread_mutex_lock(&pool->lock);
	if (!pool->joined) {
		for (unsigned i = 0; i < pool->nthreads; i++) {
			if (pool->workers[i].started)
				pthread_join(pool->workers[i].thread, NULL);
		}
		pthread_mutex_lock(&pool->timer.lock);
		timer = pool->timer.started;
		pthread_mutex_unlock(&pool->timer.lock);
		if (timer)
			pthread_join(pool->timer.thread, NULL);
		pool->joined = true;
	}
	pthread_mutex_unlock(&pool->lock);
}

int ctp_pool_shutdown(ctp_pool *pool, int64_t drain, int64_t grace)
{
	bool first;
	int r;

	if (pool == NULL || !ctp__duration_ok(drain) ||
	    !ctp__duration_ok(grace))
		return -EINVAL;
	if (ctp__is_pool_context(pool))
		return -EDEADLK;
	pthread_mutex_lock(&pool->lock);
	first = !pool->shutdown_called;
	pool->shutdown_called = true;
	pthread_mutex_unlock(&pool->lock);

	if (first) {
		/* no admission after this; blocked submitters wake */
		ctp__queue_shut(&pool->queue);
		(void)wait_zero(&pool->unfinished, &pool->idle_waiters, drain);
		CTP__PERTURB();
		cancel_step(pool);
	}
	r = wait_zero(&pool->alive, NULL, grace);
	if (r == 0)
		join_all(pool);
	return r;
}

int ctp_pool_destroy(ctp_pool *pool)
{
	ctp_task *list, *t;
	bool called;
	void *item;

	if (pool == NULL)
		return -EINVAL;
	if (ctp__is_pool_context(pool))
		return -EDEADLK;
	pthread_mutex_lock(&pool->lock);
	called = pool->shutdown_called;
	pthread_mutex_unlock(&pool->lock);
	if (!called)
		ctp_pool_shutdown(pool, 0, CTP_FOREVER);

	/* tombstones left in the ring still hold the ring's reference */
	while (ctp__ring_pop(&pool->queue.ring, &item))
		ctp__token_put(item);

	pthread_mutex_lock(&pool->lock);
	if (!pool->joined) {
		/* abandoned: let them finish on their own; the last frees */
		for (unsigned i = 0; i < pool->nthreads; i++) {
			if (pool->workers[i].started)
				pthread_detach(pool->workers[i].thread);
		}
		pthread_mutex_lock(&pool->timer.lock);
		if (pool->timer.started)
			pthread_detach(pool->timer.thread);
		pthread_mutex_unlock(&pool->timer.lock);
		pool->joined = true;
	}
	pthread_mutex_unlock(&pool->lock);

	pthread_mutex_lock(&pool->free_lock);
	pool->dead = true;
	list = pool->free_list;
	pool->free_list = NULL;
	pthread_mutex_unlock(&pool->free_lock);
	while ((t = list) != NULL) {
		list = t->free_next;
		free(t);
		ctp__pool_put(pool);
	}
	ctp__pool_put(pool); /* the owner's */
	return 0;
}

int ctp_pool_wait_idle(ctp_pool *pool, int64_t timeout)
{
	if (pool == NULL || !ctp__duration_ok(timeout))
		return -EINVAL;
	if (ctp__is_pool_context(pool))
		return -EDEADLK;
	return wait_zero(&pool->unfinished, &pool->idle_waiters, timeout);
}

void ctp_pool_stats(ctp_pool *pool, ctp_stats *s)
{
	if (pool == NULL || s == NULL)
		return;
#define LOAD(x) atomic_load_explicit(&pool->x, memory_order_relaxed)
	s->submitted = LOAD(st_submitted);
	s->completed = LOAD(st_completed);
	s->cancelled = LOAD(st_cancelled);
	s->timed_out = LOAD(st_timed_out);
	s->rejected = LOAD(st_rejected);
	s->dropped = LOAD(st_dropped);
	s->queued = ctp__queue_count(&pool->queue);
	s->running = LOAD(st_running);
	s->threads = LOAD(st_threads);
#undef LOAD
}
