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
 *   own uncontended lock, a worker: takes the previous task out of
 *   `current`, checks `stopping`, dequeues, and starts the task with the
 *   CAS QUEUED -> RUNNING (which fails for a cancelled task: its ring
 *   reference is dropped there), records it as `current`, and gives its
 *   admission slot back. After the unlock it drops the previous task's ring
 *   reference, then runs fn; `busy` is 1 from just before fn until its
 *   done has returned (ctp__pool_worker_finished).
 *
 *   Parking (idle_wait / park / wake_for_push / pass_baton). A worker with
 *   nothing to do either becomes the scout (pool->spinning, taken by CAS, at
 *   most one) and polls the ring for SPIN_NS, or parks: it puts itself on
 *   park_list, looks at the ring and `stopping` once more, and sleeps on its
 *   own futex word until a waker takes it off the list. A submit, after its
 *   push, wakes one parked worker unless there is a scout, which sees the
 *   task before it runs user code or parks. Every worker that takes a task
 *   passes the baton before fn: tasks still in the ring while workers are
 *   parked wake one more. So a stream of tiny tasks costs no wake-up per
 *   submit (the scout takes them), a waker claims one specific worker (the
 *   submits that follow while it wakes up do not wake it again), and no
 *   queued task waits for a busy worker while another sleeps. The Dekker
 *   pairs: push, fence, read spinning/parked (submit) against listing, fence,
 *   read ring/stopping (park) and releasing spinning, fence, read ring
 *   (scout_leave then pass_baton). The shutdown sets `stopping`, then wakes
 *   every parked worker (unpark_all).

 *   Shutdown. (1) The queue's CLOSED bit is set in its count word (so no
 *   admission CAS can succeed after it) and blocked submitters wake.
 *   (2) Drain: wait until no accepted task is unfinished (pool_idle) for up
 *   to `drain`; a task admitted before the close holds its slot until it
 *   starts, so the drain never ends before it has run. (3) Cancel step: set
 *   `stopping`, wake every parked worker (idle workers exit at once), then
 *   take and release each worker's lock: after that no worker starts a
 *   task, and every started one is in some worker's `current`, which we
 *   reference and fire with -ESHUTDOWN. Then empty the ring, firing each
 *   queued task with -ESHUTDOWN (their done runs here), until queue.count
 *   is 0: a submit admitted just before the close may still be pushing,
 *   and its bump wakes us. Stop the timer. Set `stopped`: later shutdown
 *   calls wait for it. (4) Grace (wait_quiet): wait on `finishing` for every
 *   fire call's segment of this pool (a group cancel on another thread
 *   running the done of a task it caught queued) to complete, and on
 *   `alive` for every thread to exit, up to `grace`; past it, go on
 *   waiting for what runs no user code (idle workers leaving) and abandon
 *   only what does. Then join.
 *
 *   Lifetime. pool->refs counts the owner, every thread, and every task
 *   object (in use or on the free list). Abandoned threads keep the pool
 *   alive after ctp_pool_destroy; the last reference frees it. Such a
 *   thread may still call the pool: submit meets the closed queue, or the
 *   DEAD free list (-ESHUTDOWN), and a task it pushed after destroy's drain
 *   is dropped by its own enqueue (`destroyed`).
 *
 *   Idle. `accepted` (submitters' cache line) counts accepted tasks; the
 *   finished ones are counted by each worker in its own struct (one writer,
 *   a store) and by any other finisher (canceller, timer, shutdown) in
 *   pool->finished. The pool is idle when their sum equals `accepted`, so
 *   no line is written per task by both sides or by two workers.
 *   wait_idle and the drain announce themselves in idle_waiters, then look;
 *   a finisher counts, then reads idle_waiters and, when the pool is idle,
 *   wakes them (idle_seq).

 *   Memory order. Statistics are relaxed counters (snapshots); a worker's
 *   own (completed, running) have one writer and are summed when read.
 *   `stopping`, `stopped`, `destroyed`, `alive`, `finishing`, `busy`,
 *   `accepted`, `finished`, `idle_waiters`, `spinning`, `parked` and
 *   `started` use seq_cst: each pairs a state change with a sleeper's
 *   announce-then-look (the table in internal.h).
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
	/* the caller holds a reference: relaxed is enough */
	uint32_t old = atomic_fetch_add_explicit(&pool->refs, 1,
	    memory_order_relaxed);

	assert(old != 0);
	(void)old;
}

static void pool_free(ctp_pool *pool)
{
	unsigned i;

	for (i = 0; i < pool->nthreads; i++)
		pthread_mutex_destroy(&pool->workers[i].lock);
	free(pool->workers);
	free(pool->scan);
	free(pool->scratch);
	ctp__iso_free(pool);
	ctp__timer_fini(&pool->timer);
	ctp__queue_fini(&pool->queue);
	pthread_mutex_destroy(&pool->lock);
	pthread_mutex_destroy(&pool->alloc_lock);
	pthread_mutex_destroy(&pool->park_lock);
	pthread_mutex_destroy(&pool->compact_lock);
	free(pool);
}

void ctp__pool_put(ctp_pool *pool)
{
	uint32_t old = atomic_fetch_sub_explicit(&pool->refs, 1,
	    memory_order_acq_rel);

	assert(old != 0);
	if (old == 1)
		pool_free(pool);
}

void ctp__pool_thread_exit(ctp_pool *pool)
{
	if (atomic_fetch_sub(&pool->alive, 1) == 1)
		ctp__futex_wake(&pool->alive, INT_MAX);
	ctp__pool_put(pool); /* may free the pool: the last thing we do */
}

/* In pool->finishing, above any count: a shutdown waits for 0. */
#define FINISHING_WAITER 0x80000000u

void ctp__pool_finishing_begin(ctp_pool *pool)
{
	/* seq_cst, before any slot of the segment is given back: a shutdown
	 * that then sees its queue empty sees this */
	atomic_fetch_add(&pool->finishing, 1);
}

void ctp__pool_finishing_done(ctp_pool *pool)
{
	/* the last segment wakes a shutdown that flagged itself */
	if (atomic_fetch_sub(&pool->finishing, 1) == (FINISHING_WAITER | 1))
		ctp__futex_wake(&pool->finishing, INT_MAX);
}

/* Adds d to a counter only one thread writes: a load and a store, no
 * read-modify-write on a shared line. */
static void own_add64(_Atomic uint64_t *c, uint64_t d, memory_order order)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) +
	    d, order);
}

/* True when no accepted task is unfinished (queued, running, or its done
 * not yet returned). Read in this order, each seq_cst:
 *   1. the queue's count: an admitted task holds its slot from its
 *      admission CAS until a worker starts it or a firer retires it, so a
 *      task admitted before this read and not yet counted in `accepted`
 *      (a submit between the two steps) makes it non-zero;
 *   2. the finished counts, then 3. `accepted`. The finished total never
 *      exceeds `accepted` (a task is counted accepted before it can
 *      finish; `accepted` goes down only for a submit backing out, whose
 *      task never finishes), so a sum read before `accepted` that equals
 *      it was the total, and equal to it, when `accepted` was read.
 * So a task admitted before the call is never missed; one admitted during
 * it may be (as if it came after). */
static bool pool_idle(ctp_pool *pool)
{
	uint64_t f;

	if (ctp__queue_count(&pool->queue) != 0)
		return false;
	f = atomic_load(&pool->finished);
	for (unsigned i = 0; i < pool->nthreads; i++)
		f += atomic_load(&pool->workers[i].finished);
	return f == atomic_load(&pool->accepted);
}

/* Wakes the threads in wait_idle_for once nothing is unfinished. Called
 * after a seq_cst change of a finished count or `accepted`: the change,
 * then the load of idle_waiters (pairs with wait_idle_for's
 * announce-then-look). */
static void idle_check(ctp_pool *pool)
{
	/* While a task is still queued the pool is not idle, and that task's
	 * finisher checks again: skip the sum over the workers. */
	if (atomic_load(&pool->idle_waiters) != 0 && pool_idle(pool)) {
		atomic_fetch_add(&pool->idle_seq, 1);
		ctp__futex_wake(&pool->idle_seq, INT_MAX);
	}
}

void ctp__pool_worker_finished(ctp_pool *pool)
{
	struct ctp__worker *w = ctp__tls.worker;

	/* before the count, which is a release: a thread that saw the task
	 * finished (wait_idle) and then shuts down past its grace sees this
	 * worker out of user code, and waits for its exit instead of
	 * abandoning it */
	atomic_store_explicit(&w->busy, 0, memory_order_relaxed);
	own_add64(&w->finished, 1, memory_order_seq_cst);
	idle_check(pool);
}

void ctp__pool_tasks_finished(ctp_pool *pool, uint64_t n)
{
	struct ctp__worker *w = ctp__tls.worker;

	if (w != NULL && w->pool == pool)
		own_add64(&w->finished, n, memory_order_seq_cst);
	else
		atomic_fetch_add(&pool->finished, n);
	idle_check(pool);
}

/* Waits up to `timeout` ns (0: only looks; CTP_FOREVER: no limit) until the
 * pool is idle. */
static int wait_idle_for(ctp_pool *pool, int64_t timeout)
{
	struct timespec deadline;
	const struct timespec *abs =
	    ctp__deadline(timeout, &deadline) ? &deadline : NULL;
	int r = 0;

	if (pool_idle(pool))
		return 0;
	if (timeout == 0)
		return -ETIMEDOUT;
	atomic_fetch_add(&pool->idle_waiters, 1);
	for (;;) {
		uint32_t seq = atomic_load(&pool->idle_seq);

		if (pool_idle(pool)) {
			r = 0;
			break;
		}
		if (r == -ETIMEDOUT)
			break;
		r = ctp__futex_wait(&pool->idle_seq, seq, abs);
	}
	atomic_fetch_sub(&pool->idle_waiters, 1);
	return r;
}

/* ---- parking ------------------------------------------------------------ */

/* How long a worker that ran out of work polls the ring before it parks. */
#define SPIN_NS 20000

static bool work_or_stop(ctp_pool *pool)
{
	return !ctp__ring_empty(&pool->queue.ring) ||
	    atomic_load(&pool->stopping);
}

/* Claims one parked worker (takes it off the list) and wakes it. A claimed
 * worker is no longer counted, so the submits that follow while it wakes
 * up do not wake it again: at most one wake-up per parked worker. */
static void unpark_one(ctp_pool *pool)
{
	struct ctp__worker *w;

	pthread_mutex_lock(&pool->park_lock);
	w = pool->park_list;
	if (w != NULL) {
		pool->park_list = w->park_next;
		atomic_fetch_sub(&pool->parked, 1);
	}
	pthread_mutex_unlock(&pool->park_lock);
	if (w != NULL) {
		atomic_store(&w->park, 0);
		ctp__futex_wake(&w->park, 1);
	}
}

/* Wakes every parked worker; `stopping` is set first. */
static void unpark_all(ctp_pool *pool)
{
	struct ctp__worker *list, *w;

	pthread_mutex_lock(&pool->park_lock);
	list = pool->park_list;
	pool->park_list = NULL;
	atomic_store(&pool->parked, 0);
	pthread_mutex_unlock(&pool->park_lock);
	while ((w = list) != NULL) {
		list = w->park_next;
		atomic_store(&w->park, 0);
		ctp__futex_wake(&w->park, 1);
	}
}

/* Parks worker w until a waker claims it, unless there is work or
 * `stopping` once it is listed. */
static void park(ctp_pool *pool, struct ctp__worker *w)
{
	struct ctp__worker **pp;
	bool claimed = true;

	ctp__task_cache_flush(w); /* submitters may need them meanwhile */
	atomic_store(&w->park, 1);
	pthread_mutex_lock(&pool->park_lock);
	w->park_next = pool->park_list;
	pool->park_list = w;
	atomic_fetch_add(&pool->parked, 1);
	pthread_mutex_unlock(&pool->park_lock);
	/* listed before we look (pairs with wake_for_push's loads after the
	 * push, and with cancel_step's stopping-then-unpark_all) */
	atomic_thread_fence(memory_order_seq_cst);
	if (work_or_stop(pool)) {
		/* take ourselves off, unless a waker already claimed us */
		pthread_mutex_lock(&pool->park_lock);
		for (pp = &pool->park_list; *pp != NULL; pp = &(*pp)->park_next) {
			if (*pp == w) {
				*pp = w->park_next;
				atomic_fetch_sub(&pool->parked, 1);
				claimed = false;
				break;
			}
		}
		pthread_mutex_unlock(&pool->park_lock);
		if (!claimed)
			return;
	}
	while (atomic_load(&w->park) != 0)
		ctp__futex_wait(&w->park, 1, NULL);
}

/* Called by a submitter after its push (ctp__ring_push ends with a full
 * fence after the commit: the push is visible before these loads). The
 * scout, if any, sees the task before it runs user code. */
static void wake_for_push(ctp_pool *pool)
{
	if (atomic_load(&pool->spinning) == 0 && atomic_load(&pool->parked) != 0)
		unpark_one(pool);
}

/* Takes the scout role if it is free (a plain load first, so busy workers
 * do not write the shared line when someone holds it). */
static bool scout_take(ctp_pool *pool)
{
	uint32_t expected = 0;

	return atomic_load_explicit(&pool->spinning, memory_order_relaxed) == 0 &&
	    atomic_compare_exchange_strong(&pool->spinning, &expected, 1);
}

/* The scout gives up its role (it is about to run user code or to park):
 * submits from now on wake parked workers themselves. */
static void scout_leave(ctp_pool *pool)
{
	atomic_store(&pool->spinning, 0);
	atomic_thread_fence(memory_order_seq_cst); /* pairs with wake_for_push */
}

/* A worker that took a task passes the baton before it runs user code:
 * tasks left in the ring while workers are parked get one of them. The
 * submits that saw the scout did not wake anyone, the worker the scout
 * wakes here wakes the next, and so on: no queued task waits for a busy
 * worker while another sleeps. */
static void pass_baton(ctp_pool *pool)
{
	if (atomic_load(&pool->parked) != 0 &&
	    !ctp__ring_empty(&pool->queue.ring))
		unpark_one(pool);
}

/* A worker found no task: returns when there may be one, or `stopping`.
 * The scout polls the ring for SPIN_NS first, so a stream of submits keeps
 * it awake without a wake-up per submit; the others park at once. A
 * spurious return is fine: the caller looks again. */
static void idle_wait(ctp_pool *pool, struct ctp__worker *w, bool *scout)
{
	if (!*scout)
		*scout = scout_take(pool);
	if (*scout) {
		int64_t end = ctp__now_ns() + SPIN_NS;

		for (unsigned i = 1; !work_or_stop(pool); i++) {
			ck_pr_stall();
			if (i % 64 == 0 && ctp__now_ns() > end) {
				*scout = false;
				scout_leave(pool); /* then park() looks */
				break;
			}
		}
		if (*scout)
			return;
	}
	park(pool, w);
}

/* ---- the worker loop ---------------------------------------------------- */

/* Returns the next task to run, started and recorded as current, or NULL
 * when the worker must exit. */
static ctp_task *next_task(ctp_pool *pool, struct ctp__worker *w,
                           bool *scout)
{
	struct ctp_queue *q = &pool->queue;

	for (;;) {
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
		idle_wait(pool, w, scout);
	}
}

static void run_task(struct ctp__worker *w, ctp_task *t, bool *scout)
{
	ctp_pool *pool = w->pool;
	int status;

	if (*scout) {
		*scout = false;
		scout_leave(pool);
	}
	pass_baton(pool);
	/* relaxed: read only by a shutdown past its grace, after `stopping`
	 * and the lock pass (which ordered this store before it) */
	atomic_store_explicit(&w->busy, 1, memory_order_relaxed);
	atomic_store_explicit(&w->st_running, 1, memory_order_relaxed);
	ctp__tls.task = t;
	status = t->fn(t->arg, &t->token);
	ctp__tls.task = NULL;
	/* counted before the task can be seen finished (wait_idle) */
	atomic_store_explicit(&w->st_running, 0, memory_order_relaxed);
	if (t->iso == NULL || ctp__iso_outcome(t) == CTP__ISO_RAN)
		own_add64(&w->st_completed, 1, memory_order_relaxed);
	else
		ctp__iso_count(pool, t, status); /* killed, crashed, unrun */
	/* Heading back to an empty ring: scout, so that the submits that
	 * come meanwhile need not wake a parked worker. With tasks waiting in
	 * the ring there is no need, and busy workers would pass the role's
	 * cache line back and forth for nothing. */
	if (t->done == NULL && ctp__ring_empty(&pool->queue.ring))
		*scout = scout_take(pool);
	ctp__task_finish_ran(t, status); /* clears w->busy */
	if (!*scout && ctp__ring_empty(&pool->queue.ring))
		*scout = scout_take(pool);
}

static void *worker_main(void *arg)
{
	struct ctp__worker *w = arg;
	ctp_pool *pool = w->pool;
	char index[12];
	bool scout = false; /* this worker holds pool->spinning */
	ctp_task *t;

	ctp__tls.pool = pool;
	ctp__tls.worker = w;
	snprintf(index, sizeof(index), "%u", w->index);
	ctp__set_thread_name(pool->name, index);
	if (pool->opts.on_thread_start != NULL)
		pool->opts.on_thread_start(w->index, pool->opts.user);
	atomic_fetch_add(&pool->started, 1);
	ctp__futex_wake(&pool->started, INT_MAX);

	while ((t = next_task(pool, w, &scout)) != NULL)
		run_task(w, t, &scout);
	if (scout)
		atomic_store(&pool->spinning, 0);
	ctp__task_cache_flush(w);
	ctp__tls.worker = NULL;

	if (pool->opts.on_thread_stop != NULL) {
		atomic_store(&w->busy, 1);
		pool->opts.on_thread_stop(w->index, pool->opts.user);
	}
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
	ctp_pool *pool = aligned_alloc(CTP__CACHELINE, sizeof(*pool));
	int r = -ENOMEM;

	if (pool == NULL)
		return -ENOMEM;
	memset(pool, 0, sizeof(*pool));
	pool->workers = aligned_alloc(CTP__CACHELINE, n * sizeof(*pool->workers));
	if (pool->workers != NULL)
		memset(pool->workers, 0, n * sizeof(*pool->workers));
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
	pthread_mutex_init(&pool->alloc_lock, NULL);
	pthread_mutex_init(&pool->park_lock, NULL);
	pthread_mutex_init(&pool->compact_lock, NULL);
	pool->opts = *o;
	snprintf(pool->name, sizeof(pool->name), "%s",
	    o->name != NULL ? o->name : "ctp");
	pool->opts.name = pool->name; /* the caller's string may not live on */
	pool->nthreads = n;
	pool->gen = ctp__gen();
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
	if (n > CTP_MAX_THREADS || cap == 0 ||
	    o.processes > CTP_MAX_PROCESSES || !ctp__duration_ok(o.kill_after))
		return -EINVAL;
	r = pool_alloc(&pool, &o, n, cap);
	if (r != 0)
		return r;
	/* the fork server before any thread of the pool */
	r = ctp__iso_create(pool);
	if (r != 0) {
		ctp__pool_put(pool);
		return r;
	}
	for (i = 0; i < n; i++) {
		r = start_worker(pool, &pool->workers[i]);
		if (r != 0)
			break;
	}
	if (r != 0) {
		/* the started workers see `stopping`, run on_thread_stop, exit */
		atomic_store(&pool->stopping, true);
		unpark_all(pool);
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

/* The live tasks compact() holds out of the ring: scratch used as a FIFO
 * of `len` items from `head` (mod capacity). */
struct held {
	size_t head, len;
};

/* A pointer compact() took out of the ring: a live task is held, a
 * tombstone loses the ring's reference. Fewer than `capacity` live tasks
 * exist outside other submitters' hands at any moment (the compacting
 * submitter's own admitted task is not in the ring), and a held task is
 * not in the ring, so `len` stays below capacity. */
static void compact_take(ctp_pool *pool, void *item, struct held *h)
{
	size_t cap = pool->queue.capacity;

	CTP__ASSERT_HELD(&pool->compact_lock);
	if (ctp_task_state(item) == CTP_TASK_QUEUED) {
		assert(h->len < cap);
		pool->scratch[(h->head + h->len++) % cap] = item;
	} else {
		ctp__token_put(item);
	}
}

/* Takes every pointer out of the ring, drops tombstones, puts the live ones
 * back in order. Only when tombstones have filled the ring. Other producers
 * may refill the ring meanwhile: then it takes the oldest pointer out to
 * make room, which may be a task it has just put back; it is held again,
 * at the end, never counted twice. */
static void compact(ctp_pool *pool)
{
	struct ctp__ring *ring = &pool->queue.ring;
	size_t cap = pool->queue.capacity;
	struct held h = { 0, 0 };
	void *item;

	pthread_mutex_lock(&pool->compact_lock);
	while (ctp__ring_pop(ring, &item))
		compact_take(pool, item, &h);
	while (h.len > 0) {
		if (ctp__ring_push(ring, pool->scratch[h.head])) {
			h.head = (h.head + 1) % cap;
			h.len--;
		} else if (ctp__ring_pop(ring, &item)) {
			compact_take(pool, item, &h);
		}
	}
	pthread_mutex_unlock(&pool->compact_lock);
}

/* Drops the ring's reference of every pointer left in the ring. */
static void drain_ring(ctp_pool *pool)
{
	void *item;

	while (ctp__ring_pop(&pool->queue.ring, &item))
		ctp__token_put(item);
}

static void enqueue(ctp_pool *pool, ctp_task *t)
{
	while (!ctp__ring_push(&pool->queue.ring, t))
		compact(pool);
	/* The push ends with a full fence. A submit admitted before the
	 * close whose task a cascade or its deadline finished meanwhile may
	 * push after ctp_pool_destroy emptied the ring (only a thread of the
	 * pool can still be here then): it empties the ring itself, or
	 * destroy's drain, which comes after `destroyed`, sees the push. */
	if (atomic_load(&pool->destroyed)) {
		drain_ring(pool);
		return;
	}
	ctp__ec_bump(&pool->queue.not_empty); /* shutdown's drop step */
	wake_for_push(pool);
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

/* Submits fn; iso (may be NULL) is the isolated record, owned by the task
 * object once it is allocated (freed with it), freed here before. */
static int submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                  const ctp_task_opts *opts, ctp_task **task,
                  struct ctp__iso *iso)
{
	ctp_task_opts o = { 0 };
	bool deadline;
	ctp_task *t;
	int r;

	if (opts != NULL)
		o = *opts;
	if (ctp__forked(pool->gen) ||
	    (o.parent != NULL && ctp__forked(o.parent->gen)))
		r = -ECHILD;
	else if (!ctp__duration_ok(o.timeout) ||
	    !ctp__duration_ok(o.queue_wait))
		r = -EINVAL;
	else if (ctp__queue_closed(&pool->queue))
		r = -ESHUTDOWN;
	else if (o.parent != NULL && ctp_token_cancelled(o.parent))
		r = ctp_token_reason(o.parent);
	else
		r = ctp__task_alloc(pool, &t);
	if (r != 0) {
		if (iso != NULL)
			ctp__iso_task_free(iso);
		return r;
	}
	deadline = o.timeout > 0;
	t->iso = iso;
	t->fn = fn;
	t->arg = arg;
	t->done = o.done;
	t->handle = task != NULL;
	/* Everything that can fail comes before the task becomes visible:
	 * for a deadline, the timer's fire record (kept with the object) and
	 * a heap slot. */
	if (deadline && t->dfire == NULL &&
	    (t->dfire = malloc(sizeof(*t->dfire))) == NULL) {
		discard(t);
		return -ENOMEM;
	}
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
	atomic_fetch_add(&pool->accepted, 1);
	/* counted before anyone can finish it (a cascade, below), so a
	 * wait_idle that returns sees it (the statistics identity) */
	atomic_fetch_add_explicit(&pool->st_submitted, 1, memory_order_relaxed);
	/* The deadline is written before the link makes the task visible: a
	 * cascade that finishes it at once must see it to take it out of the
	 * heap (ctp__timer_add then refuses the finished task). */
	if (deadline) {
		int64_t now = ctp__now_ns();

		t->deadline = o.timeout > INT64_MAX - now ? INT64_MAX :
		    now + o.timeout;
	}
	if (o.parent != NULL && (r = ctp__token_link(o.parent, &t->token))) {
		/* slot first: idle_check looks only at an empty queue */
		ctp__queue_unreserve(&pool->queue);
		atomic_fetch_sub_explicit(&pool->st_submitted, 1,
		    memory_order_relaxed);
		atomic_fetch_sub(&pool->accepted, 1);
		idle_check(pool);
		goto undo_timer;
	}
	CTP__PERTURB();
	/* Accepted. From here a cascade from the parent may finish it. */
	if (deadline)
		ctp__timer_add(pool, t);
	CTP__PERTURB();
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

int ctp_pool_submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                    const ctp_task_opts *opts, ctp_task **task)
{
	if (pool == NULL || fn == NULL)
		return -EINVAL;
	return submit(pool, fn, arg, opts, task, NULL);
}

int ctp__pool_submit_iso(ctp_pool *pool, ctp_task_fn fn, void *arg,
                         const ctp_task_opts *opts, ctp_task **task,
                         struct ctp__iso *iso)
{
	return submit(pool, fn, arg, opts, task, iso);
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
	unpark_all(pool); /* idle workers exit now */
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
	pthread_mutex_lock(&pool->lock);
	if (!pool->joined) {
		for (unsigned i = 0; i < pool->nthreads; i++) {
			if (pool->workers[i].started)
				pthread_join(pool->workers[i].thread, NULL);
		}
		ctp__timer_join(pool, false);
		pool->joined = true;
	}
	pthread_mutex_unlock(&pool->lock);
}

/* Threads of the pool in user code now (a task and its done, a timer
 * callback, a thread hook): what a shutdown past its grace may abandon,
 * with the fire calls' segments (dones on other threads). */
static uint32_t in_user_code(ctp_pool *pool)
{
	uint32_t n = 0;

	/* busy 2: an isolated task's dispatcher, which a kill ends */
	for (unsigned i = 0; i < pool->nthreads; i++)
		n += atomic_load(&pool->workers[i].busy) == 1;
	return n + ctp__timer_busy(pool);
}

/* Waits until every fire call's segment of this pool is complete (no done
 * of a task caught queued still runs) and every thread of the pool has
 * exited, up to abs (NULL: no limit). Past abs it still waits for what is
 * not in user code, so an idle worker on its way out is never abandoned:
 * only what runs user code can be. That last wait re-checks every
 * millisecond, as entering user code changes no futex word; it lasts as
 * long as a thread takes to leave. */
static int wait_quiet(ctp_pool *pool, const struct timespec *abs)
{
	bool late = false;

	for (;;) {
		uint32_t f = atomic_load(&pool->finishing);
		uint32_t v = atomic_load(&pool->alive);
		const struct timespec *lim = abs;
		struct timespec ms;
		int r;

		if ((f & ~FINISHING_WAITER) == 0 && v == 0)
			return 0;
		if (late) {
			/* isolated tasks are killed, not abandoned */
			ctp__iso_kill_all(pool);
			if (v <= in_user_code(pool))
				return -ETIMEDOUT;
			ctp__deadline(CTP_MSEC(1), &ms);
			lim = &ms;
		}
		if ((f & ~FINISHING_WAITER) != 0) {
			/* flag ourselves: the last segment then wakes us */
			if (!(f & FINISHING_WAITER) &&
			    !atomic_compare_exchange_strong(&pool->finishing,
			    &f, f | FINISHING_WAITER))
				continue;
			r = ctp__futex_wait(&pool->finishing,
			    f | FINISHING_WAITER, lim);
		} else {
			r = ctp__futex_wait(&pool->alive, v, lim);
		}
		if (r == -ETIMEDOUT)
			late = true;
	}
}

int ctp_pool_shutdown(ctp_pool *pool, int64_t drain, int64_t grace)
{
	struct timespec deadline;
	const struct timespec *abs;
	bool first;
	int r = 0;

	if (pool == NULL || !ctp__duration_ok(drain) ||
	    !ctp__duration_ok(grace))
		return -EINVAL;
	if (ctp__forked(pool->gen))
		return -ECHILD;
	if (ctp__is_pool_context(pool))
		return -EDEADLK;
	pthread_mutex_lock(&pool->lock);
	first = !pool->shutdown_called;
	pool->shutdown_called = true;
	pthread_mutex_unlock(&pool->lock);

	if (first) {
		/* no admission after this; blocked submitters wake */
		ctp__queue_shut(&pool->queue);
		(void)wait_idle_for(pool, drain);
		CTP__PERTURB();
		cancel_step(pool);
		atomic_store(&pool->stopped, 1);
		ctp__futex_wake(&pool->stopped, INT_MAX);
	}
	/* grace: the first call's from the end of its cancel step, a later
	 * call's from its start; a later call first waits for the first
	 * call's cancel step (its done(-ESHUTDOWN) calls) to end */
	abs = ctp__deadline(grace, &deadline) ? &deadline : NULL;
	while (atomic_load(&pool->stopped) == 0 && r != -ETIMEDOUT)
		r = ctp__futex_wait(&pool->stopped, 0, abs);
	if (atomic_load(&pool->stopped) == 0)
		return -ETIMEDOUT;
	r = wait_quiet(pool, abs);
	if (r == 0) {
		join_all(pool);
		ctp__iso_stop(pool); /* every worker process reaped */
	}
	return r;
}

int ctp_pool_destroy(ctp_pool *pool)
{
	ctp_task *list, *spare, *t;
	bool called;

	if (pool == NULL)
		return -EINVAL;
	if (ctp__forked(pool->gen))
		return -ECHILD;
	if (ctp__is_pool_context(pool))
		return -EDEADLK;
	pthread_mutex_lock(&pool->lock);
	called = pool->shutdown_called;
	pthread_mutex_unlock(&pool->lock);
	if (!called)
		ctp_pool_shutdown(pool, 0, CTP_FOREVER);
	/* after a shutdown that abandoned threads too (none of them is an
	 * isolated task's dispatcher: those are killed, never abandoned) */
	ctp__iso_stop(pool);

	/* tombstones left in the ring still hold the ring's reference; a
	 * submit that pushes after this empties the ring itself (enqueue) */
	atomic_store(&pool->destroyed, true);
	drain_ring(pool);

	pthread_mutex_lock(&pool->lock);
	if (!pool->joined) {
		/* abandoned: let them finish on their own; the last frees */
		for (unsigned i = 0; i < pool->nthreads; i++) {
			if (pool->workers[i].started)
				pthread_detach(pool->workers[i].thread);
		}
		ctp__timer_join(pool, true);
		pool->joined = true;
	}
	pthread_mutex_unlock(&pool->lock);

	/* Free both parts of the free list. An abandoned thread of the pool
	 * may be allocating (its submit then fails with -ESHUTDOWN): the list
	 * turns DEAD under alloc_lock, and objects freed later see DEAD. */
	pthread_mutex_lock(&pool->alloc_lock);
	list = atomic_exchange_explicit(&pool->freed, CTP__FREED_DEAD,
	    memory_order_acquire);
	spare = pool->spare;
	pool->spare = NULL;
	pthread_mutex_unlock(&pool->alloc_lock);
	for (int part = 0; part < 2; part++) {
		while ((t = list) != NULL) {
			list = t->free_next;
			ctp__task_dealloc(t);
		}
		list = spare;
	}
	ctp__pool_put(pool); /* the owner's */
	return 0;
}

int ctp_pool_wait_idle(ctp_pool *pool, int64_t timeout)
{
	if (pool == NULL || !ctp__duration_ok(timeout))
		return -EINVAL;
	if (ctp__forked(pool->gen))
		return -ECHILD;
	if (ctp__is_pool_context(pool))
		return -EDEADLK;
	return wait_idle_for(pool, timeout);
}

void ctp_pool_stats(ctp_pool *pool, ctp_stats *s)
{
	if (pool == NULL || s == NULL)
		return;
#define LOAD(x) atomic_load_explicit(&pool->x, memory_order_relaxed)
	s->submitted = LOAD(st_submitted);
	s->completed = 0;
	s->running = 0;
	for (unsigned i = 0; i < pool->nthreads; i++) {
		struct ctp__worker *w = &pool->workers[i];

		s->running += atomic_load_explicit(&w->st_running,
		    memory_order_relaxed);
		s->completed += atomic_load_explicit(&w->st_completed,
		    memory_order_relaxed);
	}
	s->cancelled = LOAD(st_cancelled);
	s->timed_out = LOAD(st_timed_out);
	s->rejected = LOAD(st_rejected);
	s->dropped = LOAD(st_dropped);
	s->queued = ctp__queue_count(&pool->queue);
	s->threads = LOAD(st_threads);
#undef LOAD
	ctp__iso_stats(pool, s);
}
