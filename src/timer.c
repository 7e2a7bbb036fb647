/*
 * timer.c: task deadlines and due times. Two threads per pool, started on
 * the first task with a timeout or a delay (or period): the timer thread
 * sleeps on a CLOCK_MONOTONIC condition variable until the earliest
 * deadline or due time in two binary min-heaps (never a polling loop); it
 * fires a deadline, and hands due tasks to the pool (pool->up->promote,
 * pool.c's, which links them in their priority's list); the timer-callback thread
 * ("<name>-tcb") runs the user code of the deadline fires, so no done or
 * watcher delays a deadline.
 *
 * Design notes
 *   - The due heap (dues) holds the tasks in CTP__Q_DELAYED; pool.c
 *     decides what goes in and out, under timer->lock and then runq.lock
 *     (pool.c, "Scheduling"); here are only the heap operations and the
 *     reservations (dres: every task that may wait in the heap holds one,
 *     so the array always has room). On a tie a deadline is handled
 *     before a due time, so a timeout not longer than a delay fires first.
 *   - Everything here is protected by timer->lock. A task is in the heap
 *     from its acceptance until it finishes or its deadline fires; its slot
 *     index lives in task->heap_idx so finishing removes it in O(log n).
 *   - A heap entry holds no reference: a task in the heap has not finished,
 *     so the pool's own reference keeps it alive, and finishing takes it out
 *     under the lock first. The thread takes a reference when it pops an
 *     entry, then fires the token outside the lock.
 *   - Firing is split (token.c): the timer thread runs
 *     ctp__token_fire_begin (mark the tree, wake its sleepers, fds and
 *     internal waits, retire the tasks caught queued: no user code), and
 *     queues the fire record (task->dfire, made at submit and kept with the
 *     object) for the callback thread, which runs ctp__token_fire_end (done
 *     callbacks, watchers, waits for other firers) in order. A thread that
 *     must wait for such a fire to end and finds its record still queued
 *     takes it out and ends it itself (ctp__timer_claim).
 *   - Submit reserves a heap slot (and starts the threads) before the task
 *     is accepted, so that nothing can fail after acceptance; ctp__timer_add
 *     then only uses the promised slot. A task that a parent's cascade
 *     finished between its acceptance and ctp__timer_add is not inserted
 *     (found by the fuzzer: it used to stay in the heap, unreferenced).
 *   - Who wakes whom: ctp__timer_add wakes the timer thread when the new
 *     task becomes the earliest; the timer thread wakes the callback thread
 *     when it queues a record; ctp__timer_stop (the pool's cancel step)
 *     wakes both. The timer thread exits once `stop` is set; the callback
 *     thread once `stop` is set, the timer thread has left (`running`) and
 *     its queue is empty, so no fire's end is lost. Both count among the
 *     pool's threads for the grace wait; the callback thread is abandoned
 *     past grace only while it runs user code (cb_busy).
 */
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>

#include "internal.h"

int ctp__timer_init(struct ctp__timer *tm)
{
	pthread_condattr_t attr;
	int r;

	r = pthread_condattr_init(&attr);
	if (r != 0)
		return -r;
	r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (r == 0)
		r = pthread_cond_init(&tm->cond, &attr);
	pthread_condattr_destroy(&attr);
	if (r != 0)
		return -r;
	r = pthread_mutex_init(&tm->lock, NULL);
	if (r != 0) {
		pthread_cond_destroy(&tm->cond);
		return -r;
	}
	r = pthread_cond_init(&tm->cb_cond, NULL);
	if (r != 0) {
		pthread_mutex_destroy(&tm->lock);
		pthread_cond_destroy(&tm->cond);
		return -r;
	}
	tm->heap = NULL;
	tm->len = tm->cap = tm->reserved = 0;
	tm->dues = NULL;
	tm->dlen = tm->dcap = tm->dres = 0;
	atomic_init(&tm->armed, false);
	tm->started = tm->running = tm->stop = false;
	tm->cb_head = tm->cb_tail = NULL;
	tm->cb_started = false;
	atomic_init(&tm->cb_busy, 0);
	return 0;
}

void ctp__timer_fini(struct ctp__timer *tm)
{
	/* every task that held a place has finished */
	assert(tm->dres == 0 && tm->dlen == 0);
	free(tm->heap);
	free(tm->dues);
	pthread_mutex_destroy(&tm->lock);
	pthread_cond_destroy(&tm->cond);
	pthread_cond_destroy(&tm->cb_cond);
}

/* ---- heaps ------------------------------------------------------------- */

/* Both heaps are binary min-heaps of tasks: the deadline heap (`heap`, on
 * the task ext's deadline, slot in its heap_idx) and the due heap (`dues`,
 * on its due, slot in its due_idx). `due` picks which. A task in either
 * has its ext (internal.h, struct ctp__task_ext). */
static inline int64_t key(const ctp_task *t, bool due)
{
	return due ? ctp__tx(t)->due : ctp__tx(t)->deadline;
}

static void heap_set(struct ctp__timer *tm, bool due, size_t i, ctp_task *t)
{
	CTP__ASSERT_HELD(&tm->lock);
	if (due) {
		tm->dues[i] = t;
		ctp__tx(t)->due_idx = i;
	} else {
		tm->heap[i] = t;
		ctp__tx(t)->heap_idx = i;
	}
}

static void sift_up(struct ctp__timer *tm, bool due, size_t i)
{
	ctp_task **a = due ? tm->dues : tm->heap;
	ctp_task *t = a[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (key(a[parent], due) <= key(t, due))
			break;
		heap_set(tm, due, i, a[parent]);
		i = parent;
	}
	heap_set(tm, due, i, t);
}

static void sift_down(struct ctp__timer *tm, bool due, size_t i)
{
	ctp_task **a = due ? tm->dues : tm->heap;
	size_t len = due ? tm->dlen : tm->len;
	ctp_task *t = a[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= len)
			break;
		if (c + 1 < len && key(a[c + 1], due) < key(a[c], due))
			c++;
		if (key(t, due) <= key(a[c], due))
			break;
		heap_set(tm, due, i, a[c]);
		i = c;
	}
	heap_set(tm, due, i, t);
}

static void heap_delete(struct ctp__timer *tm, bool due, size_t i)
{
	ctp_task **a = due ? tm->dues : tm->heap;
	size_t *len = due ? &tm->dlen : &tm->len;
	ctp_task *last = a[--*len];

	if (due)
		ctp__tx(a[i])->due_idx = CTP__HEAP_NONE;
	else
		ctp__tx(a[i])->heap_idx = CTP__HEAP_NONE;
	if (i == *len)
		return;
	heap_set(tm, due, i, last);
	sift_down(tm, due, i);
	sift_up(tm, due, due ? ctp__tx(last)->due_idx : ctp__tx(last)->heap_idx);
}

/* ---- threads ----------------------------------------------------------- */

static void *timer_main(void *arg)
{
	ctp_pool *pool = arg;
	struct ctp__timer *tm = &pool->timer;

	ctp__tls.pool = pool;
	ctp__set_thread_name(pool->name, "timer");
	/* the kernel may otherwise wake this thread's timed waits up to
	 * 50 us late (the default timer slack): deadlines and due times are
	 * what it exists for */
	(void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
	pthread_mutex_lock(&tm->lock);
	while (!tm->stop) {
		int64_t now = ctp__now_ns();
		int64_t dl = tm->len != 0 ? ctp__tx(tm->heap[0])->deadline :
		    INT64_MAX;
		/* a first due task whose deadline is not later waits for
		 * that deadline (here, or a fire in progress elsewhere,
		 * whose unqueue takes it out of the heap and signals us) */
		int64_t due = tm->dlen != 0 &&
		    ctp__task_due_first(tm->dues[0]) ? ctp__tx(tm->dues[0])->due :
		    INT64_MAX;
		int64_t next = dl < due ? dl : due;
		struct ctp__fire *f;
		ctp_task *t;
		int r;

		/* a deadline first on a tie: a task whose timeout is not
		 * longer than its delay times out without running */
		if (due <= now && due < dl) {
			pool->up->promote(pool, now);
			continue;
		}
		if (dl > now) {
			struct timespec abs = {
				.tv_sec = next / 1000000000,
				.tv_nsec = next % 1000000000,
			};

			if (next == INT64_MAX)
				pthread_cond_wait(&tm->cond, &tm->lock);
			else
				pthread_cond_timedwait(&tm->cond, &tm->lock,
				    &abs);
			continue;
		}
		t = tm->heap[0];
		heap_delete(tm, false, 0);
		ctp__token_ref(&t->token);
		pthread_mutex_unlock(&tm->lock);
		CTP__PERTURB();
		/* fire, wake, retire: no user code; the rest (done calls,
		 * watchers) goes to the callback thread */
		f = ctp__tx(t)->dfire;
		r = ctp__token_fire_begin(&t->token, -ETIMEDOUT, f);
		pthread_mutex_lock(&tm->lock);
		if (r >= 0) {
			f->next = NULL;
			if (tm->cb_tail != NULL)
				tm->cb_tail->next = f;
			else
				tm->cb_head = f;
			tm->cb_tail = f;
			pthread_cond_signal(&tm->cb_cond);
		}
		pthread_mutex_unlock(&tm->lock);
		/* queued: our reference goes with the record, dropped after
		 * its end (callback_main, or a claimer in token.c) */
		if (r < 0)
			ctp__token_put(&t->token);
		pthread_mutex_lock(&tm->lock);
	}
	tm->running = false;
	pthread_cond_signal(&tm->cb_cond);
	pthread_mutex_unlock(&tm->lock);
	pool->up->thread_exit(pool);
	return NULL;
}

static void *callback_main(void *arg)
{
	ctp_pool *pool = arg;
	struct ctp__timer *tm = &pool->timer;

	ctp__tls.pool = pool;
	ctp__set_thread_name(pool->name, "tcb");
	pthread_mutex_lock(&tm->lock);
	for (;;) {
		struct ctp__fire *f = tm->cb_head;
		ctp_token *root;

		if (f == NULL) {
			/* nothing can be queued once the timer thread left */
			if (tm->stop && !tm->running)
				break;
			pthread_cond_wait(&tm->cb_cond, &tm->lock);
			continue;
		}
		tm->cb_head = f->next;
		if (tm->cb_head == NULL)
			tm->cb_tail = NULL;
		/* relaxed: read only by a shutdown past its grace */
		atomic_store_explicit(&tm->cb_busy, 1, memory_order_relaxed);
		pthread_mutex_unlock(&tm->lock);
		root = f->root; /* f lives in the root task */
		ctp__token_fire_end(f);
		ctp__token_put(root); /* the timer thread's reference */
		atomic_store(&tm->cb_busy, 0); /* seq_cst: see wait_quiet */
		pthread_mutex_lock(&tm->lock);
	}
	pthread_mutex_unlock(&tm->lock);
	pool->up->thread_exit(pool);
	return NULL;
}

/* Starts fn as a thread of the pool that takes no signals. */
static int start_thread(ctp_pool *pool, pthread_t *thread,
                        void *(*fn)(void *))
{
	sigset_t all, old;
	int r;

	ctp__pool_ref(pool);
	atomic_fetch_add(&pool->alive, 1);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(thread, NULL, fn, pool);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		atomic_fetch_sub(&pool->alive, 1);
		ctp__pool_put(pool);
	}
	return r;
}

/* Starts what is not started yet: the callback thread, then the timer
 * thread (a failure leaves the other for the next try). Called with the
 * lock held. A thread that cannot be started is -ENOMEM for the submit:
 * -EAGAIN is a full queue. */
static int start_threads(ctp_pool *pool)
{
	struct ctp__timer *tm = &pool->timer;

	if (!tm->cb_started) {
		if (start_thread(pool, &tm->cb_thread, callback_main) != 0)
			return -ENOMEM;
		tm->cb_started = true;
	}
	if (start_thread(pool, &tm->thread, timer_main) != 0)
		return -ENOMEM;
	tm->running = true;
	tm->started = true;
	return 0;
}

/* ---- interface ---------------------------------------------------------- */

int ctp__timer_reserve(ctp_pool *pool)
{
	struct ctp__timer *tm = &pool->timer;
	int r = 0;

	pthread_mutex_lock(&tm->lock);
	if (tm->stop) {
		r = -ESHUTDOWN;
	} else if (!tm->started) {
		r = start_threads(pool);
	}
	if (r == 0 && tm->len + tm->reserved == tm->cap) {
		size_t cap = tm->cap != 0 ? tm->cap * 2 : 64;
		ctp_task **heap = realloc(tm->heap, cap * sizeof(*heap));

		if (heap == NULL) {
			r = -ENOMEM;
		} else {
			tm->heap = heap;
			tm->cap = cap;
		}
	}
	if (r == 0)
		tm->reserved++;
	pthread_mutex_unlock(&tm->lock);
	return r;
}

void ctp__timer_unreserve(ctp_pool *pool)
{
	pthread_mutex_lock(&pool->timer.lock);
	pool->timer.reserved--;
	pthread_mutex_unlock(&pool->timer.lock);
}

void ctp__timer_add(ctp_pool *pool, ctp_task *t)
{
	struct ctp__timer *tm = &pool->timer;
	uint32_t phase;

	pthread_mutex_lock(&tm->lock);
	tm->reserved--;
	/* A parent's cascade may have finished the task since its acceptance:
	 * its finish ran ctp__timer_remove before this lock (found nothing),
	 * and its firing CAS came before that, so we see the phase here. A
	 * finish that comes after this lock removes what we insert. */
	phase = atomic_load(&t->token.state) & CTP__PHASE_MASK;
	if (phase == CTP__PHASE_CANCELLED || phase == CTP__PHASE_DONE) {
		pthread_mutex_unlock(&tm->lock);
		return;
	}
	tm->heap[tm->len] = t;
	ctp__tx(t)->heap_idx = tm->len++;
	sift_up(tm, false, ctp__tx(t)->heap_idx);
	if (tm->heap[0] == t) /* a new earliest deadline: re-arm the wait */
		pthread_cond_signal(&tm->cond);
	pthread_mutex_unlock(&tm->lock);
}

void ctp__timer_remove(ctp_pool *pool, ctp_task *t)
{
	struct ctp__timer *tm = &pool->timer;

	pthread_mutex_lock(&tm->lock);
	if (ctp__tx(t)->heap_idx != CTP__HEAP_NONE) /* a timed task's */
		heap_delete(tm, false, ctp__tx(t)->heap_idx);
	pthread_mutex_unlock(&tm->lock);
}

/* ---- the due heap (pool.c decides what goes in and out) ----------------- */

int ctp__timer_dreserve(ctp_pool *pool)
{
	struct ctp__timer *tm = &pool->timer;
	int r;

	CTP__ASSERT_HELD(&tm->lock);
	if (tm->stop)
		return -ESHUTDOWN;
	if (!tm->started && (r = start_threads(pool)) != 0)
		return r;
	if (tm->dres == tm->dcap) {
		size_t cap = tm->dcap != 0 ? tm->dcap * 2 : 64;
		ctp_task **a = realloc(tm->dues, cap * sizeof(*a));

		if (a == NULL)
			return -ENOMEM;
		tm->dues = a;
		tm->dcap = cap;
	}
	tm->dres++;
	/* seq_cst, before any task can be in the heap (pool_unqueue) */
	atomic_store(&tm->armed, true);
	return 0;
}

void ctp__timer_dunreserve(ctp_pool *pool)
{
	CTP__ASSERT_HELD(&pool->timer.lock);
	pool->timer.dres--;
}

void ctp__timer_dinsert(ctp_pool *pool, ctp_task *t)
{
	struct ctp__timer *tm = &pool->timer;

	CTP__ASSERT_HELD(&tm->lock);
	assert(tm->dlen < tm->dres && ctp__task_dres(t));
	tm->dues[tm->dlen] = t;
	ctp__tx(t)->due_idx = tm->dlen++;
	sift_up(tm, true, ctp__tx(t)->due_idx);
	/* a new earliest due time: re-arm the timer thread's wait */
	if (tm->dues[0] == t)
		pthread_cond_signal(&tm->cond);
}

void ctp__timer_ddelete(ctp_pool *pool, ctp_task *t)
{
	CTP__ASSERT_HELD(&pool->timer.lock);
	if (ctp__tx(t)->due_idx == CTP__HEAP_NONE)
		return;
	/* the first one leaves: the timer thread may be waiting for a
	 * later time than the next one's (it skips a first task that
	 * waits for its deadline) */
	if (ctp__tx(t)->due_idx == 0)
		pthread_cond_signal(&pool->timer.cond);
	heap_delete(&pool->timer, true, ctp__tx(t)->due_idx);
}

void ctp__timer_dheapify(ctp_pool *pool)
{
	struct ctp__timer *tm = &pool->timer;

	CTP__ASSERT_HELD(&tm->lock);
	for (size_t i = 0; i < tm->dlen; i++)
		ctp__tx(tm->dues[i])->due_idx = i;
	for (size_t i = tm->dlen / 2; i-- > 0;)
		sift_down(tm, true, i);
	pthread_cond_signal(&tm->cond);
}

void ctp__timer_stop(ctp_pool *pool)
{
	struct ctp__timer *tm = &pool->timer;

	pthread_mutex_lock(&tm->lock);
	tm->stop = true;
	pthread_cond_signal(&tm->cond);
	pthread_cond_signal(&tm->cb_cond);
	pthread_mutex_unlock(&tm->lock);
}

void ctp__timer_join(ctp_pool *pool, bool detach)
{
	struct ctp__timer *tm = &pool->timer;
	bool timer, cb;

	pthread_mutex_lock(&tm->lock);
	timer = tm->started;
	cb = tm->cb_started;
	pthread_mutex_unlock(&tm->lock);
	if (timer)
		detach ? pthread_detach(tm->thread) :
		    pthread_join(tm->thread, NULL);
	if (cb)
		detach ? pthread_detach(tm->cb_thread) :
		    pthread_join(tm->cb_thread, NULL);
}

uint32_t ctp__timer_busy(ctp_pool *pool)
{
	return atomic_load(&pool->timer.cb_busy);
}

struct ctp__fire *ctp__timer_claim(ctp_task *t)
{
	struct ctp__timer *tm = &ctp__task_pool(t)->timer;
	struct ctp__task_ext *x = ctp__tx_or_null(t);
	struct ctp__fire *f = NULL, **pp;

	/* a task that was never timed has no fire record */
	if (x == NULL || x->dfire == NULL)
		return NULL;
	pthread_mutex_lock(&tm->lock);
	for (pp = &tm->cb_head; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == x->dfire) {
			f = *pp;
			*pp = f->next;
			if (tm->cb_tail == f) {
				/* the new tail: the entry whose next was f */
				tm->cb_tail = tm->cb_head == NULL ? NULL :
				    (struct ctp__fire *)((char *)pp -
				    offsetof(struct ctp__fire, next));
			}
			break;
		}
	}
	pthread_mutex_unlock(&tm->lock);
	return f;
}
