/*
 * pool.c: the pool, its workers, submit and shutdown.
 *
 * Design notes
 *   Queue (struct ctp__runq). One lock, runq.lock, over three FIFOs of
 *   the queued tasks, one per priority (intrusive: task->qnext/qprev, the
 *   first task's qprev stale, so a pop writes nothing into the next task;
 *   a worker pops the first task of the highest non-empty one), the
 *   admission count (<= capacity: the "queued" figure, less the `held`
 *   ones), `closed`, the idle workers and each worker's `current`. Each
 *   task's queue state (token.q.state) says where it is:
 *
 *       OUT --admit--> RESERVED --link--> LINKED --pop/unlink--> OUT
 *                        |   \_____________^_|__________________/^
 *                        |   retired by a fire before its link     |
 *                        `--> DELAYED --due (timer) / reschedule-->'
 *                                 `----- fire / drop step -------> OUT
 *     periodic:  LINKED --pop--> HELD --run ends, re-placed--> LINKED or
 *                DELAYED; HELD --series ends (fire during the run, or a
 *                fire between the requeue CAS and the re-place)--> OUT
 *
 *   A submit with no parent and no deadline is admitted and linked in one
 *   taking of the lock. One with a parent or a deadline is admitted
 *   first (so it can wait for room before anyone sees it), then linked to
 *   its parent and the timer, then linked in the queue (enqueue): a fire
 *   may catch it between the two, in which case enqueue finds it OUT and
 *   drops the queue's reference itself. Whoever moves a task to OUT gives
 *   its slot back, under the lock: the worker that pops it, the fire that
 *   catches it queued (pool_unqueue, from task.c's retire: it unlinks
 *   the task at once, so a cancelled task frees its place and its memory
 *   at once, and no tombstone is left behind), a submit backing out, the
 *   shutdown's drop step. Wake-ups (a claimed worker, not_full, drained)
 *   are decided under the lock and made after it (struct after), so no
 *   futex call is made under it. The lock is glibc's adaptive mutex
 *   (platform.c, ctp__mutex_init_spin): a waiter tries it again for a
 *   bounded, self-tuned number of pauses (at most a few microseconds)
 *   before it sleeps, which saves the two futex calls a sleep-at-once
 *   lock makes per contended taking (pool_alloc has the figures).
 *
 *   Worker loop (worker_main / next_task / run_task). Under runq.lock a
 *   worker drops its previous task from `current`, checks `stopping`,
 *   pops the first task and records it as `current`. After the unlock it
 *   drops the previous task's queue reference (and the pool's, in the
 *   same atomic, if this worker finished it; a child so freed joins the
 *   worker's batch for its parent's lock, which goes out before the
 *   worker runs a task of another parent or waits: put_task, token.c
 *   "Deferred detach") and starts the task (the
 *   CAS QUEUED -> RUNNING, which fails for a task whose token fired
 *   first: it then loops, and the next lock drops it), then runs fn;
 *   `busy` is 1 from just before fn until its done has returned
 *   (pool_worker_finished). The CAS is outside the lock because
 *   the task's line is usually in its submitter's cache: the miss is not
 *   paid while others wait for the lock.
 *
 *   Idle workers (next_task). A worker that finds the queue empty either
 *   becomes the scout (runq.scout: at most one), which polls `head` (on a
 *   line of its own, without the lock, yielding its CPU between looks)
 *   for SPIN_NS before it parks, or
 *   parks: under the lock it lists itself on runq.idle and sleeps on its
 *   own futex word until a waker takes it off the list (a claim) and
 *   wakes it. A submit that links a task claims one idle worker unless
 *   there is a scout (which will see the task) or enough workers are
 *   already on their way (runq.waking >= linked tasks); a worker that
 *   takes a task with more left claims the next one in the same way. So a
 *   stream of tiny tasks costs no wake-up per submit while the scout
 *   polls, a claimed worker is woken once, and no queued task waits for a
 *   busy worker while another sleeps. Every decision is made under the
 *   lock: there is no announce-then-look protocol between submitters and
 *   idle workers.
 *
 *   Awake workers (the CPU cap). With more workers than CPUs (runq.cap:
 *   the CPUs of the creating thread's affinity mask), waking a worker
 *   for every queued task makes them fight for the CPUs and the lock.
 *   With the cap, `bench_ctpool throughput --tasks 1000000` on 2 CPUs,
 *   alternated with the build before it: 2 submitters and 4 workers,
 *   medians of 9 runs 1.43 -> 1.94 M tasks/s (8 of 9 pairs won); 1 and
 *   4, 7 runs, 1.71 -> 1.85 (7 of 7). So
 *   q_wake_for_work wakes a worker only while the awake ones (runq.awake:
 *   not parked and not the sentinel, less runq.blocked, those asleep in
 *   a wait of the library: a token sleep, a queue wait, an isolated
 *   task's process; ctp__worker_blocked) are fewer than the CPUs. At
 *   the cap it claims one parked worker as the sentinel instead, if there
 *   is none: the sentinel sleeps STALL_NS at a time (on its park word,
 *   with a timeout) and at each look, under the lock (q_keep_watch), ends
 *   its watch and becomes an awake worker when tasks are no longer
 *   queued, the awake ones are below the cap, or one of them is stuck:
 *   in the same task as at the sentinel's last look (`busy` both times,
 *   `finished` unchanged: q_stalled), so it is blocked (I/O, a lock, a
 *   task waiting for one still queued) or runs long. The new awake worker
 *   takes a task, and its own q_wake_for_work claims the next sentinel
 *   while tasks remain: a queue behind k stuck workers gets k more
 *   workers, one each 1-2 STALL_NS. States of a worker, all under the
 *   lock: awake --park--> parked (runq.idle) --claim--> awake, or
 *   --claim as sentinel--> sentinel --look: stuck, empty or below the
 *   cap--> awake; the cancel step wakes the sentinel with the parked ones
 *   (q_wake_all). The cap costs the hot path nothing: a comparison under
 *   the lock the wake decision already takes; the sentinel reads the
 *   workers' own `finished` and `busy`, which they write anyway. A pool
 *   with no more workers than CPUs has no cap (runq.cap = UINT32_MAX).
 *   The spin model (ctpool.pml, -DNCPU=1 -DBLOCKS) checks that a task
 *   queued behind a stuck one starts, and catches a cap without a
 *   sentinel (BUG_CAP_NO_SENTINEL).
 *
 *   Shutdown. (1) close_queue sets `closed` under the lock (no admission
 *   after it) and wakes blocked submitters. Every shutdown call runs it
 *   before it can return, not only the first: a later call may return
 *   (its grace over) before the first one has closed. Steps 2-3 are the
 *   first call's. (2) Drain: wait until no
 *   accepted task is unfinished (pool_idle) for up to `drain`. (3) Cancel
 *   step: under the lock, set `stopping`, claim and wake every idle
 *   worker (they exit), and take a reference on every worker's `current`:
 *   a worker starts a task only under the lock, so after it no task
 *   starts, and every started one was seen. Fire those with -ESHUTDOWN.
 *   Then drop_queued pops every queued task and fires it with -ESHUTDOWN
 *   (their done runs here), until no slot is held: a submit admitted
 *   before the close may still link its task, a canceller may still give
 *   a slot back; either bumps `drained` after a snapshot taken under the
 *   lock. Stop the timer. Set `stopped`: later shutdown calls wait for
 *   it. (4) Grace (wait_quiet): wait (futex on `finishing_seq`) for
 *   every fire call's segment of this pool counted in `finishing` (a
 *   group cancel on another thread running the done of a task it caught
 *   queued) to complete, and on `alive` for
 *   every thread to exit, up to `grace`; past it, go on waiting for what
 *   runs no user code (idle workers leaving) and abandon only what does.
 *   Then join.
 *
 *   Scheduling. A delayed task is admitted (it holds its slot) and then,
 *   instead of being linked, waits in the timer's due heap (DELAYED,
 *   keyed on task->due); the timer thread moves it to its priority's list
 *   when due (pool_promote, under timer->lock then runq.lock), so a
 *   due task is FIFO behind the tasks already due. Moves in and out of
 *   the due heap take both locks (timer first), so DELAYED always means
 *   "in the heap". Each task that may wait there (delayed, periodic, or
 *   rescheduled with a delay) holds a reservation of a heap place
 *   (its ext's dres) from its submit (or reschedule) until it finishes, so an
 *   insert after acceptance never fails. A fire that catches a task
 *   queued takes it out of the heap in pool_unqueue, which takes the
 *   timer lock only when `timer.armed` (set before the first reservation)
 *   is: whoever puts a task in the heap arms first and looks at the token
 *   after, the fire CASes the token first and reads `armed` after, both
 *   seq_cst, so a fire that reads it false caught no task that can be in
 *   the heap (internal.h, protocol table). A periodic task keeps its slot
 *   for the whole series: a worker's pop makes it HELD (not counted in
 *   stats.queued nor waited for by the drop step); after a run the worker
 *   CASes RUNNING -> QUEUED (failing if the token fired during the run:
 *   the series ends, done gets the run's status) and re-places it for
 *   next_due (fixed rate; late runs skipped) under both locks, unless a
 *   fire caught it meanwhile (it is then OUT) or the queue is closed (it
 *   fires it with -ESHUTDOWN itself). A worker that pops a periodic task
 *   once the queue is closed fires it the same way before its start
 *   (next_task), so every start runs fn: a cancel's -EINPROGRESS is
 *   never the answer for a run that does not happen. close_queue ends
 *   every periodic series waiting in a list or the heap (it takes them
 *   out, like the drop step, and fires them); the drop step also takes
 *   the delayed tasks. ctp_task_reschedule moves a LINKED or DELAYED task
 *   under both locks; a running or taken (HELD, popped) periodic task gets
 *   `resched`, which its requeue uses.
 *
 *   Layers. This file is the top of the library: it calls every file
 *   below it (task, isolated, timer, token, queue) and none of them calls
 *   it by name. What they must have done up here goes through one table,
 *   pool_up (pool->up, internal.h "The way up"): a task telling its pool it
 *   finished, the timer making tasks due and ending its threads, the last
 *   reference freeing the pool, and a token's fire retiring and completing
 *   the tasks it catches (task.c's functions, which the token reaches
 *   through the task's pool).
 *
 *   Lifetime. pool->refs counts the owner, every thread, and every task
 *   object (in use, on the free list or in a thread's cache). Abandoned
 *   threads, and another thread's cache (task.c), keep the pool alive
 *   after ctp_pool_destroy; the last reference frees it. Such a
 *   thread may still call the pool: submit meets the closed queue, or the
 *   DEAD free list (-ESHUTDOWN).
 *
 *   Idle. `accepted` (runq, under its lock: admission counts a task
 *   with its slot, no atomic of its own) counts accepted tasks; the
 *   finished ones are counted by each worker in its own struct (one writer,
 *   a store) and by any other finisher (canceller, timer, shutdown) in
 *   the high half of pool->finishing, whose low half counts the fire
 *   segments a shutdown waits for: a segment's end counts its tasks and
 *   lowers its guard in one atomic. The pool is idle when their sum
 *   equals `accepted` (modulo 2^32: pool_idle), so no line is written
 *   per task by both sides or by two workers.
 *   wait_idle and the drain announce themselves in idle_waiters, then look;
 *   a finisher counts, then reads idle_waiters and, when the pool is idle,
 *   wakes them (idle_seq).

 *   Memory order. Statistics are relaxed counters (snapshots); a worker's
 *   own (completed, running) have one writer and are summed when read.
 *   `stopped`, `alive`, `finishing`, `finishing_seq`, `busy`,
 *   `accepted`, the workers' `finished`, `idle_waiters` and `started`
 *   use seq_cst: each pairs a state change
 *   with a sleeper's announce-then-look (the table in internal.h). The
 *   run queue's fields are under its lock; the few read without it
 *   (`head` by the scout, `count` by stats, `closed` by submit's early
 *   check, `stopping` by the scout) are hints, relaxed, acted on only
 *   after the lock is taken.
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

/* t's ext, attached now if it had none; NULL when out of memory (a task
 * token's ext is a struct ctp__task_ext: ctp__token_ext_get) */
static struct ctp__task_ext *tx_get(ctp_task *t)
{
	return (struct ctp__task_ext *)ctp__token_ext_get(&t->token);
}

/* ---- lifetime ----------------------------------------------------------- */

static void pool_free(ctp_pool *pool)
{
	free(pool->workers);
	free(pool->scan);
	free(pool->stall);
	ctp__iso_free(pool);
	ctp__timer_fini(&pool->timer);
	ctp__task_slabs_free(pool); /* every object is gone: each held a
	                               reference */
	pthread_mutex_destroy(&pool->runq.lock);
	pthread_mutex_destroy(&pool->lock);
	pthread_mutex_destroy(&pool->alloc_lock);
	free(pool);
}

static void pool_thread_exit(ctp_pool *pool)
{
	if (atomic_fetch_sub(&pool->alive, 1) == 1)
		ctp__futex_wake(&pool->alive, INT_MAX);
	ctp__pool_put(pool); /* may free the pool: the last thing we do */
}

/* In pool->finishing's low half, above any count of segments: a
 * shutdown waits for 0 (internal.h, struct ctp_pool). */
#define FINISHING_WAITER 0x80000000u
#define FINISHING_SEGS(v) ((uint32_t)(v) & ~FINISHING_WAITER)
#define FINISHING_DONE(v) ((uint32_t)((v) >> 32)) /* finished, mod 2^32 */

static void pool_finishing_begin(ctp_pool *pool)
{
	/* seq_cst, before any slot of the segment is given back: a shutdown
	 * that then sees its queue empty sees this */
	atomic_fetch_add(&pool->finishing, 1);
}

/* old: pool->finishing before a segment's end took its 1 off: the last
 * segment wakes a shutdown that flagged itself */
static void finishing_wake(ctp_pool *pool, uint64_t old)
{
	if ((uint32_t)old == (FINISHING_WAITER | 1)) {
		atomic_fetch_add(&pool->finishing_seq, 1);
		ctp__futex_wake(&pool->finishing_seq, INT_MAX);
	}
}

static void pool_finishing_done(ctp_pool *pool)
{
	finishing_wake(pool, atomic_fetch_sub(&pool->finishing, 1));
}

/* Adds d to a counter only one thread writes at a time (its owner's, or
 * one written only under a lock): a load and a store, no
 * read-modify-write on a shared line. */
static void own_add64(_Atomic uint64_t *c, uint64_t d, memory_order order)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) +
	    d, order);
}

/* True when no accepted task is unfinished (queued, running, or its done
 * not yet returned). Admission counts a task in `accepted` with its slot,
 * under runq.lock, before it can be linked, fired or run (a submit that
 * backs out afterwards takes it back in the same lock), so every task in
 * the pool is counted there. Read in this order, each seq_cst: the
 * finished counts, then `accepted`. The finished total never exceeds
 * `accepted` (a task is counted accepted before it can finish; `accepted`
 * goes down only for a submit backing out, whose task never finishes), so
 * a sum read before `accepted` that equals it was the total, and equal to
 * it, when `accepted` was read. So a task submitted before the call is
 * never missed; one submitted during it may be (as if it came after). */
static bool pool_idle(ctp_pool *pool)
{
	/* Modulo 2^32 (the outside threads' count is kept so): the totals
	 * differ by the tasks unfinished when `accepted` is read plus those
	 * that finished while the counts were being read, so a false "idle"
	 * would take 2^32 of them at once: 584 GB of task objects, or four
	 * billion tasks finishing within one call. */
	uint32_t f;

	f = FINISHING_DONE(atomic_load(&pool->finishing));
	for (unsigned i = 0; i < pool->nthreads; i++)
		f += (uint32_t)atomic_load(&pool->workers[i].finished);
	return f == (uint32_t)atomic_load(&pool->runq.accepted);
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

static void pool_worker_finished(ctp_pool *pool)
{
	struct ctp__worker *w = ctp__tls.worker;

	/* before the count, which is a release: a thread that saw the task
	 * finished (wait_idle) and then shuts down past its grace sees this
	 * worker out of user code, and waits for its exit instead of
	 * abandoning it */
	atomic_store_explicit(&w->busy, 0, memory_order_relaxed);
	own_add64(&w->finished, 1, memory_order_seq_cst);
	idle_check(pool);
	/* the pool's reference on `current` is ours now: dropped with the
	 * queue's at the next lock (put_task) */
	w->current_refs = 2;
}

static void pool_segment_done(ctp_pool *pool, uint64_t n)
{
	struct ctp__worker *w = ctp__tls.worker;
	uint64_t old;

	if (w != NULL && w->pool == pool) {
		own_add64(&w->finished, n, memory_order_seq_cst);
		idle_check(pool);
		pool_finishing_done(pool);
		return;
	}
	/* n finished in the high half and the segment's 1 off the low half,
	 * in one seq_cst atomic: adding n * 2^32 - 1 (the low half is at
	 * least 1, ours, so nothing borrows from the high one). Counted
	 * before the guard is seen down, as they must be, and at once. */
	old = atomic_fetch_add(&pool->finishing, (n << 32) - 1);
	idle_check(pool);
	finishing_wake(pool, old);
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

/* ---- the run queue ------------------------------------------------------ */

/* What a holder of runq.lock decided to do once it has dropped it: no
 * futex call is made under the lock. */
struct after {
	struct ctp__worker *wake;     /* a worker it claimed off the idle list */
	bool                not_full; /* bump not_full */
	bool                drained;  /* bump drained */
};

static void q_lock(struct ctp__runq *q)
{
	pthread_mutex_lock(&q->lock);
}

static void q_unlock(struct ctp__runq *q, struct after *a)
{
	struct ctp__worker *w = a->wake;

	pthread_mutex_unlock(&q->lock);
	if (w != NULL) {
		/* the claimed worker loops until it sees 0: it cannot leave
		 * (and the pool outlives this call: the caller holds it) */
		atomic_store_explicit(&w->park, 0, memory_order_release);
		ctp__futex_wake(&w->park, 1);
	}
	if (a->not_full)
		ctp__ec_bump(&q->not_full);
	if (a->drained)
		ctp__ec_bump(&q->drained);
}

/* lock held: a slot is given back */
static void q_release_n(struct ctp__runq *q, uint32_t n, struct after *a)
{
	CTP__ASSERT_HELD(&q->lock);
	/* relaxed: written under the lock, read without it only by stats */
	atomic_store_explicit(&q->count, atomic_load_explicit(&q->count,
	    memory_order_relaxed) - n, memory_order_relaxed);
	if (q->full_waiters != 0)
		a->not_full = true;
	if (atomic_load_explicit(&q->closed, memory_order_relaxed))
		a->drained = true; /* shutdown's drop step waits for 0 */
}

static void q_release(struct ctp__runq *q, struct after *a)
{
	q_release_n(q, 1, a);
}

/* lock held: appends t to its priority's list (-> LINKED); the caller
 * also sees to the wake-ups (q_wake_for_work, q_linked_closed) */
static void q_link(struct ctp__runq *q, ctp_task *t)
{
	unsigned p = t->token.opt.prio;

	CTP__ASSERT_HELD(&q->lock);
	t->token.q.state = CTP__Q_LINKED;
	t->qnext = NULL;
	t->qprev = q->tail[p]; /* stale once t is first (q_unhook) */
	if (q->tail[p] != NULL)
		q->tail[p]->qnext = t;
	else
		atomic_store_explicit(&q->head[p], t, memory_order_relaxed);
	q->tail[p] = t;
	q->linked++;
}

/* lock held: once the queue is closed, a newly linked task is for the
 * shutdown's drop step */
static void q_linked_closed(struct ctp__runq *q, struct after *a)
{
	if (atomic_load_explicit(&q->closed, memory_order_relaxed))
		a->drained = true;
}

/* lock held: takes t out of its list, keeping its slot (the state is the
 * caller's to set). A list's first task has a stale qprev (the task before
 * it, long gone): taking the first task, what a worker does for every
 * task, writes nothing into the next one, whose line then goes from its
 * submitter to the worker that takes it, not through this one. */
static void q_unhook(struct ctp__runq *q, ctp_task *t)
{
	unsigned p = t->token.opt.prio;
	bool first = atomic_load_explicit(&q->head[p],
	    memory_order_relaxed) == t;

	CTP__ASSERT_HELD(&q->lock);
	if (first)
		atomic_store_explicit(&q->head[p], t->qnext,
		    memory_order_relaxed);
	else
		t->qprev->qnext = t->qnext;
	if (t->qnext == NULL)
		q->tail[p] = first ? NULL : t->qprev;
	else if (!first)
		t->qnext->qprev = t->qprev;
	q->linked--;
}

/* lock held: takes t out of the list (LINKED -> OUT) and gives its slot
 * back; the caller now owns the queue's reference */
static void q_unlink(struct ctp__runq *q, ctp_task *t, struct after *a)
{
	q_unhook(q, t);
	t->token.q.state = CTP__Q_OUT;
	q_release(q, a);
}

/* lock held: the first task of the highest priority, or NULL */
static ctp_task *q_first(struct ctp__runq *q)
{
	for (unsigned p = CTP__NPRIO; p-- > 0;) {
		ctp_task *t = atomic_load_explicit(&q->head[p],
		    memory_order_relaxed);

		if (t != NULL)
			return t;
	}
	return NULL;
}

/* lock held: the awake workers, less those blocked in a library wait,
 * already number the CPUs ("Awake workers") */
static bool q_capped(const struct ctp__runq *q)
{
	uint32_t blocked = atomic_load_explicit(&q->blocked,
	    memory_order_relaxed);

	return q->awake >= q->cap && q->awake - q->cap >= blocked;
}

/* lock held: claims one idle worker to wake when queued tasks outnumber
 * the workers already on their way, unless the scout will see them; when
 * the awake workers already number the CPUs, the one claimed is the
 * sentinel instead (unless there is one), which wakes another only once
 * an awake one is stuck */
static void q_wake_for_work(struct ctp__runq *q, struct after *a)
{
	struct ctp__worker *w = q->idle;

	CTP__ASSERT_HELD(&q->lock);
	if (w == NULL || q->scout || a->wake != NULL ||
	    q->linked <= q->waking)
		return;
	if (!q_capped(q))
		q->awake++;
	else if (q->sentinel == NULL)
		q->sentinel = w;
	else
		return;
	q->idle = w->park_next;
	q->waking++;
	a->wake = w;
}

/* lock held: claims every idle worker (stopping is set) and wakes them */
static void q_wake_all(struct ctp__runq *q)
{
	struct ctp__worker *w;

	CTP__ASSERT_HELD(&q->lock);
	while ((w = q->idle) != NULL) {
		q->idle = w->park_next;
		q->waking++;
		q->awake++;
		atomic_store_explicit(&w->park, 0, memory_order_release);
		ctp__futex_wake(&w->park, 1); /* rare: create's failure, the
		                                 cancel step */
	}
	/* the sentinel, between two looks or on its way (claimed) */
	if ((w = q->sentinel) != NULL) {
		q->sentinel = NULL;
		q->awake++;
		atomic_store_explicit(&w->park, 0, memory_order_release);
		ctp__futex_wake(&w->park, 1);
	}
}

static void pool_unqueue(struct ctp__batch *b)
{
	ctp_pool *pool = b->pool;
	ctp_task *const *tasks = b->out;
	size_t n = b->nout;
	struct ctp__runq *q = &pool->runq;
	struct after a = { 0 };
	/* seq_cst, after the fire's CAS on every task here: a task can be
	 * in the due heap (or hold a reservation) only if `armed` was set
	 * before the CAS of whoever put it there read the token unfired
	 * (submit: before the task could be caught; reschedule: before its
	 * look), so reading it false means none of these is there */
	bool timed = atomic_load(&pool->timer.armed);
	ctp_task *t;
	uint32_t freed = 0; /* slots given back: counted once, at the end */

	if (timed)
		pthread_mutex_lock(&pool->timer.lock);
	q_lock(q);
	/* the statistics (here, not one atomic each outside the lock) */
	own_add64(&q->st_cancelled, b->cancelled, memory_order_relaxed);
	own_add64(&q->st_timed_out, b->timed_out, memory_order_relaxed);
	own_add64(&q->st_dropped, b->dropped, memory_order_relaxed);
	own_add64(&q->st_completed, b->completed, memory_order_relaxed);
	for (size_t i = 0; i < n; i++) {
		bool slot = true; /* t still held a slot */

		t = tasks[i];
		switch (t->token.q.state) {
		case CTP__Q_LINKED:
			q_unhook(q, t);
			/* its queue reference goes with the pool's when the
			 * fire completes it: one atomic (or none), not two */
			t->token.q.ref_owed = true;
			break;
		case CTP__Q_DELAYED:
			assert(timed);
			ctp__timer_ddelete(pool, t);
			t->token.q.ref_owed = true;
			break;
		case CTP__Q_HELD:
			/* a periodic task a worker took and has not started
			 * (its start CAS fails), or is queueing again: the
			 * worker drops the reference it holds */
			q->held--;
			break;
		case CTP__Q_RESERVED:
			/* its submit has not linked it yet: it sees OUT and
			 * drops the queue's reference itself */
			break;
		default:
			slot = false; /* a worker or the drop step took it */
			break;
		}
		if (slot) {
			/* given back (counted below, at once), and OUT */
			t->token.q.state = CTP__Q_OUT;
			freed++;
		}
		/* a reservation implies `armed` (above): without it, no
		 * task here holds one, and its ext is not looked at */
		assert(timed || !ctp__task_dres(t));
		if (timed && ctp__task_dres(t)) {
			ctp__tx(t)->dres = false;
			ctp__timer_dunreserve(pool);
		}
	}
	if (freed != 0)
		q_release_n(q, freed, &a);
	q_unlock(q, &a);
	if (timed)
		pthread_mutex_unlock(&pool->timer.lock);
}

/* ---- scheduling --------------------------------------------------------- */

static int64_t add_sat(int64_t a, int64_t b) /* a, b >= 0 */
{
	return b > INT64_MAX - a ? INT64_MAX : a + b;
}

/* A task whose deadline comes no later than its due time must time out
 * without running: it is never linked by its due time, only its deadline
 * ends it (found by the fuzzer: linked at once because its due time had
 * passed, it could start before the late timer fired its deadline);
 * internal.h, ctp__task_due_first. */
_Static_assert(CTP_PRIORITY_LOW == -1 && CTP_PRIORITY_HIGH == 1,
    "submit's priority check and the list index assume -1..1");

/* timer->lock and runq.lock held: t holds a slot and is in no list and not
 * in the due heap; it waits for its due time: linked at once if that has come,
 * else in the due heap (its ext's dres then holds its place there) */
static void place(ctp_pool *pool, ctp_task *t, int64_t now, struct after *a)
{
	struct ctp__runq *q = &pool->runq;

	CTP__ASSERT_HELD(&pool->timer.lock);
	if (ctp__tx(t)->due <= now && ctp__task_due_first(t)) {
		q_link(q, t);
		q_wake_for_work(q, a);
	} else {
		t->token.q.state = CTP__Q_DELAYED;
		ctp__timer_dinsert(pool, t);
	}
	/* either way, once closed: the drop step may be waiting for this
	 * slot's task to show up (found by the spin model: a delayed task
	 * enqueued after its look made shutdown(0) wait out the delay) */
	q_linked_closed(q, a);
}

static void pool_promote(ctp_pool *pool, int64_t now)
{
	struct ctp__timer *tm = &pool->timer;
	struct ctp__runq *q = &pool->runq;
	struct after a = { 0 };

	q_lock(q);
	/* a batch per lock: workers and submitters get their turn */
	for (unsigned i = 0; i < 64 && tm->dlen != 0; i++) {
		ctp_task *t = tm->dues[0];

		/* one whose deadline is not later waits for that (the
		 * timer handles a deadline before a due time on a tie) */
		if (ctp__tx(t)->due > now || !ctp__task_due_first(t))
			break;
		ctp__timer_ddelete(pool, t);
		q_link(q, t);
		q_wake_for_work(q, &a);
		q_linked_closed(q, &a);
	}
	q_unlock(q, &a);
}

/* runq.lock held: when a periodic task that just ran is due next: a
 * reschedule made during the run, else the next point of its fixed-rate
 * grid; if that has passed, at once, and the missed runs are skipped */
static int64_t next_due(ctp_task *t, int64_t now)
{
	struct ctp__task_ext *x = ctp__tx(t);
	int64_t next;

	if (x->resched >= 0) {
		next = x->resched;
		x->resched = -1;
		return next;
	}
	next = add_sat(x->due, x->period);
	if (next > now)
		return next;
	return x->due + (now - x->due) / x->period * x->period;
}

/* A periodic run is over: the task is queued again for its next run.
 * False when its token fired meanwhile: the series ends, and the caller
 * finishes it. Once a shutdown has begun the series ends here, as if its
 * token had fired with -ESHUTDOWN between runs (its done runs on this
 * worker). */
static bool requeue(ctp_pool *pool, ctp_task *t)
{
	struct ctp__runq *q = &pool->runq;
	uint32_t s = CTP__PHASE_RUNNING;
	struct after a = { 0 };
	bool shut = false;

	ctp__tx(t)->ran = true; /* periodic: it has an ext */
	CTP__PERTURB();
	pthread_mutex_lock(&pool->timer.lock);
	q_lock(q);
	/* seq_cst (a release of `ran`): RUNNING -> QUEUED unless it fired.
	 * Under the locks, so whoever looks under them (a reschedule) never
	 * sees the task QUEUED between runs but not yet placed. From here
	 * a fire may catch it queued, and then finishes the series (its
	 * unqueue, after our unlock, finds it placed, or HELD when closed) */
	if (!atomic_compare_exchange_strong(&t->token.state, &s,
	    CTP__PHASE_QUEUED)) {
		q_unlock(q, &a);
		pthread_mutex_unlock(&pool->timer.lock);
		return false;
	}
	/* a fire catches it queued only from here: it is still HELD */
	assert(t->token.q.state == CTP__Q_HELD);
	if (atomic_load_explicit(&q->closed, memory_order_relaxed)) {
		shut = true;
	} else {
		int64_t now = ctp__now_ns();

		q->held--;
		/* the queue's reference for the next run (the one we popped
		 * goes at this worker's next lock) */
		ctp__token_ref(&t->token);
		ctp__tx(t)->due = next_due(t, now);
		place(pool, t, now, &a);
	}
	q_unlock(q, &a);
	pthread_mutex_unlock(&pool->timer.lock);
	if (shut)
		(void)ctp__token_fire(&t->token, -ESHUTDOWN);
	return true;
}

/* A periodic series ended during its run: its slot comes back. */
static void release_held(ctp_pool *pool, ctp_task *t)
{
	struct ctp__runq *q = &pool->runq;
	struct after a = { 0 };

	q_lock(q);
	/* a fire catches only a queued task: a running one stays HELD */
	assert(t->token.q.state == CTP__Q_HELD);
	t->token.q.state = CTP__Q_OUT;
	q->held--;
	q_release(q, &a);
	q_unlock(q, &a);
}

int ctp_task_reschedule(ctp_task *t, int64_t delay)
{
	struct ctp__task_ext *x;
	struct ctp__runq *q;
	struct after a = { 0 };
	bool reserved = false, heap;
	ctp_pool *pool;
	int64_t now, due;
	uint32_t s, phase;
	int r = 0;

	if (t == NULL || delay < 0)
		return -EINVAL;
	if (ctp__forked(ctp__task_pool(t)->gen))
		return -ECHILD;
	/* a task submitted without a timeout, delay or period (and not
	 * isolated) has no ext for its due time yet: attached here, before
	 * the locks; without it only a task that would be placed fails */
	x = tx_get(t);
	pool = ctp__task_pool(t);
	q = &pool->runq;
	pthread_mutex_lock(&pool->timer.lock);
	now = ctp__now_ns();
	due = add_sat(now, delay);
	/* where place() will put it: the due heap unless it is due now and
	 * its deadline is later (deadline: immutable since its submit) */
	heap = due > now || (t->token.opt.timed && x->deadline <= due);
	/* a place in the due heap first (it arms the fire's side before
	 * the look at the token below: pool_unqueue); a failure only
	 * matters if the task turns out to wait */
	if (heap && x != NULL && !x->dres) { /* x NULL: -ENOMEM below */
		r = ctp__timer_dreserve(pool);
		reserved = r == 0;
	}
	q_lock(q);
	s = atomic_load(&t->token.state);
	phase = s & CTP__PHASE_MASK;
	if ((s & CTP__REASON_MASK) != 0 || phase == CTP__PHASE_DONE ||
	    phase == CTP__PHASE_CANCELLED) {
		r = -EALREADY;
	} else if (phase == CTP__PHASE_RUNNING ||
	    (t->token.q.state != CTP__Q_LINKED &&
	    t->token.q.state != CTP__Q_DELAYED)) {
		/* running, or a worker has taken it (a periodic one's next
		 * run is then due `delay` from now) */
		if (t->token.opt.periodic)
			ctp__tx(t)->resched = due;
		r = -EINPROGRESS;
	} else if (x == NULL) {
		r = -ENOMEM; /* no ext for its due time (above) */
	} else if (heap && !x->dres && !reserved) {
		/* r: why the due heap could not take it */
	} else {
		if (t->token.q.state == CTP__Q_LINKED)
			q_unhook(q, t);
		else
			ctp__timer_ddelete(pool, t);
		if (heap && !x->dres) {
			x->dres = true; /* our reservation is the task's now */
			reserved = false;
		}
		x->due = due;
		place(pool, t, now, &a);
		r = 0;
	}
	q_unlock(q, &a);
	if (reserved)
		ctp__timer_dunreserve(pool);
	pthread_mutex_unlock(&pool->timer.lock);
	return r;
}

/* ---- the worker loop ---------------------------------------------------- */

/* How long the scout polls the queue before it parks. */
#define SPIN_NS 5000

/* lock held: pops the first task of the highest priority, or NULL; a
 * periodic one keeps its slot (HELD) for its next run */
static ctp_task *q_take(struct ctp__runq *q, struct after *a)
{
	ctp_task *t = q_first(q);

	if (t == NULL)
		return NULL;
	if (t->token.opt.periodic) {
		q_unhook(q, t);
		t->token.q.state = CTP__Q_HELD;
		q->held++;
	} else {
		q_unlink(q, t, a);
	}
	return t;
}

/* Drops the n references this worker held on its previous task t: the
 * queue's, and the pool's too if it finished the task (current_refs, read
 * when the task stopped being `current`: one atomic for both). Called
 * before the worker starts `next` (NULL: before it polls, parks or exits).
 * A child that this frees may wait in w->detach for its parent's lock
 * (token.c, "Deferred detach") while the worker goes on with children of
 * the same parent; the batch goes out before anything else is started or
 * the worker waits. */
static void put_task(struct ctp__worker *w, ctp_task *t, uint32_t n,
                     const ctp_task *next)
{
	/* a task with no parent, most of them, takes put_n's way */
	if (t != NULL && !t->token.tree)
		ctp__token_put_n(&t->token, n);
	else if (t != NULL)
		ctp__token_put_n_deferred(&t->token, n, &w->detach);
	if (w->detach.n != 0)
		ctp__token_detach_before(&w->detach, next != NULL ?
		    &next->token : NULL);
}

/* The scout polls `head` (no lock, no write) until a task is there or the
 * pool stops (true), or `end` passes (false). Between looks it yields its
 * CPU: with a CPU idle the yield returns at once, and when the CPUs are
 * oversubscribed (more workers and submitters than CPUs: the throughput
 * rows of bench/) the submitter or a busy worker runs instead of the spin.
 * With a pause there instead, 4 workers and 1 submitter on 2 CPUs made
 * about 0.63x the tasks per second (`bench_ctpool throughput --producers 1
 * --workers 4`, old and new builds alternated; bench/results/profile.md,
 * item 1, for where the spin's time went). */
static bool scout_poll(ctp_pool *pool, int64_t end)
{
	struct ctp__runq *q = &pool->runq;

	for (unsigned i = 1;; i++) {
		for (unsigned p = 0; p < CTP__NPRIO; p++) {
			if (atomic_load_explicit(&q->head[p],
			    memory_order_relaxed) != NULL)
				return true;
		}
		if (atomic_load_explicit(&pool->stopping,
		    memory_order_relaxed))
			return true;
		sched_yield();
		if (i % 16 == 0 && ctp__now_ns() > end)
			return false;
	}
}

/* How often the sentinel looks whether the awake workers are stuck. */
#define STALL_NS 1000000

/* runq.lock held, by the sentinel: whether another worker has been in
 * the same task since the sentinel's last look (busy then and now, and
 * its `finished` count unchanged: it finishes a task only after `busy`
 * went to 0). A stuck worker's CPU may be idle: it is blocked (I/O, a
 * lock, a wait for a task still queued), or runs a long task, which the
 * queued ones should not wait behind either. */
static bool q_stalled(ctp_pool *pool, const struct ctp__worker *self)
{
	bool stalled = false;

	for (unsigned i = 0; i < pool->nthreads; i++) {
		const struct ctp__worker *w = &pool->workers[i];
		uint64_t v;

		if (w == self)
			continue;
		/* relaxed: a hint; a stale value delays the decision by one
		 * look, or wakes one worker too many */
		v = atomic_load_explicit(&w->finished, memory_order_relaxed)
		    << 1 | (atomic_load_explicit(&w->busy,
		    memory_order_relaxed) != 0);
		if ((v & 1) != 0 && v == pool->stall[i])
			stalled = true;
		pool->stall[i] = v;
	}
	return stalled;
}

/* runq.lock held, by the sentinel: whether it goes on looking (true), or
 * gives the role up and becomes an awake worker (false): tasks are no
 * longer queued, the awake ones are fewer than the CPUs, or one of them is
 * stuck */
static bool q_keep_watch(ctp_pool *pool, struct ctp__worker *w)
{
	struct ctp__runq *q = &pool->runq;

	if (q->linked != 0 && q_capped(q) && !q_stalled(pool, w))
		return true;
	q->sentinel = NULL;
	q->awake++;
	return false;
}

/* Returns the next task popped and recorded as `current` (not yet
 * started), or NULL when the worker must exit. The previous task's queue
 * reference (and pool reference, if this worker finished it) is dropped
 * after the lock. */
static ctp_task *next_popped(ctp_pool *pool, struct ctp__worker *w)
{
	struct ctp__runq *q = &pool->runq;
	ctp_task *prev, *t = NULL;
	uint32_t prev_refs = w->current_refs; /* before a pop resets it */
	bool scout = false;   /* this worker holds q->scout */
	bool spun = false;    /* its polling ran out of time: park next */
	int64_t end = 0;

	q_lock(q);
	prev = w->current;
	w->current = NULL;
	for (;;) {
		struct after a = { 0 };

		if (atomic_load_explicit(&pool->stopping,
		    memory_order_relaxed)) {
			if (scout)
				q->scout = false;
			q_unlock(q, &a);
			break;
		}
		if (q->sentinel == w && q_keep_watch(pool, w)) {
			/* the next look in STALL_NS, or at once when the
			 * cancel step wakes us (q_wake_all) */
			struct timespec next;

			/* a sentinel was claimed off the idle list: it
			 * dropped its previous task before it parked */
			assert(prev == NULL);
			atomic_store_explicit(&w->park, 1,
			    memory_order_relaxed);
			q_unlock(q, &a);
			(void)ctp__deadline(STALL_NS, &next);
			if (atomic_load_explicit(&w->park,
			    memory_order_acquire) != 0)
				ctp__futex_wait(&w->park, 1, &next);
			q_lock(q);
			continue;
		}
		t = q_take(q, &a);
		if (t != NULL) {
			w->current = t;
			w->current_refs = 1; /* the queue's */
			if (scout)
				q->scout = false;
			/* tasks left while workers sleep: wake one (which
			 * wakes the next when it takes one, and so on) */
			q_wake_for_work(q, &a);
			q_unlock(q, &a);
			break;
		}
		if (!spun && (scout || !q->scout)) {
			/* the scout polls before it parks, so a stream of
			 * submits needs no wake-up per task (they see
			 * q->scout and wake nobody) */
			if (!scout) {
				q->scout = scout = true;
				end = ctp__now_ns() + SPIN_NS;
			}
			q_unlock(q, &a);
			put_task(w, prev, prev_refs, NULL);
			prev = NULL;
			spun = !scout_poll(pool, end);
			q_lock(q);
			if (spun)
				q->scout = scout = false; /* looks once more */
			continue;
		}
		/* park: listed under the lock, so a submit that links after
		 * this sees us; it claims us (takes us off) and wakes us */
		atomic_store_explicit(&w->park, 1, memory_order_relaxed);
		w->park_next = q->idle;
		q->idle = w;
		q->awake--;
		q_unlock(q, &a);
		put_task(w, prev, prev_refs, NULL);
		prev = NULL;
		ctp__task_cache_flush(w); /* submitters may need them */
		while (atomic_load_explicit(&w->park, memory_order_acquire) != 0)
			ctp__futex_wait(&w->park, 1, NULL);
		q_lock(q);
		q->waking--; /* the claimer counted us */
		spun = false;
	}
	put_task(w, prev, prev_refs, t); /* t NULL: the worker exits */
	return t;
}

/* Returns the next task, started (QUEUED -> RUNNING), or NULL when the
 * worker must exit. The start CAS is made after the lock: a task whose
 * token fired first (a cancel racing the pop, or the cancel step, which
 * fires every `current`) stays `current` until the next lock, which drops
 * its queue reference. After the cancel step no task starts: every
 * popped one was seen and fired. */
static ctp_task *next_task(ctp_pool *pool, struct ctp__worker *w)
{
	ctp_task *t;

	while ((t = next_popped(pool, w)) != NULL) {
		CTP__PERTURB(); /* popped, not started */
		/* a periodic series is not started again once a shutdown has
		 * begun: it ends here, before the start, as if its token had
		 * fired with -ESHUTDOWN between runs (its done runs on this
		 * worker, and the start CAS below fails). Not a started run
		 * that is then skipped: a ctp_task_cancel meanwhile would
		 * answer -EINPROGRESS for a run that never happens. A close
		 * racing this look may still let one run through (requeue
		 * then ends the series). */
		if (t->token.opt.periodic &&
		    atomic_load_explicit(&pool->runq.closed,
		    memory_order_relaxed))
			(void)ctp__token_fire(&t->token, -ESHUTDOWN);
		if (ctp__task_start(t))
			return t;
	}
	return NULL;
}

static void run_task(struct ctp__worker *w, ctp_task *t)
{
	ctp_pool *pool = w->pool;
	int status;

	/* relaxed: read only by a shutdown past its grace, after `stopping`
	 * and the lock pass (which ordered this store before it) */
	atomic_store_explicit(&w->busy, 1, memory_order_relaxed);
	atomic_store_explicit(&w->st_running, 1, memory_order_relaxed);
	ctp__tls.task = t;
	status = t->fn(t->arg, &t->token);
	ctp__tls.task = NULL;
	/* counted before the task can be seen finished (wait_idle) */
	atomic_store_explicit(&w->st_running, 0, memory_order_relaxed);
	if (t->token.opt.periodic) {
		if (requeue(pool, t)) {
			atomic_store_explicit(&w->busy, 0,
			    memory_order_relaxed);
			return;
		}
		/* its token fired during the run: the series ends here */
		release_held(pool, t);
	}
	if (!t->token.opt.isolated || ctp__iso_outcome(t) == CTP__ISO_RAN)
		own_add64(&w->st_completed, 1, memory_order_relaxed);
	else
		ctp__iso_count(pool, t, status); /* killed, crashed, unrun */
	ctp__task_finish_ran(t, status); /* clears w->busy */
}

static void *worker_main(void *arg)
{
	struct ctp__worker *w = arg;
	ctp_pool *pool = w->pool;
	char index[12];
	ctp_task *t;

	ctp__tls.pool = pool;
	ctp__tls.worker = w;
	snprintf(index, sizeof(index), "%u", w->index);
	ctp__set_thread_name(pool->name, index);
	if (pool->opts.on_thread_start != NULL)
		pool->opts.on_thread_start(w->index, pool->opts.user);
	atomic_fetch_add(&pool->started, 1);
	ctp__futex_wake(&pool->started, INT_MAX);

	while ((t = next_task(pool, w)) != NULL)
		run_task(w, t);
	ctp__task_cache_flush(w);
	ctp__tls.worker = NULL;

	if (pool->opts.on_thread_stop != NULL) {
		atomic_store(&w->busy, 1);
		pool->opts.on_thread_stop(w->index, pool->opts.user);
	}
	atomic_fetch_sub(&pool->st_threads, 1);
	pool_thread_exit(pool);
	return NULL;
}

/* What the files below call up into (internal.h, "The way up"). */
static const struct ctp__pool_up pool_up = {
	.free                = pool_free,
	.thread_exit         = pool_thread_exit,
	.segment_done        = pool_segment_done,
	.worker_finished     = pool_worker_finished,
	.finishing_begin     = pool_finishing_begin,
	.finishing_done      = pool_finishing_done,
	.unqueue             = pool_unqueue,
	.promote             = pool_promote,
	.task_guard          = ctp__task_guard,
	.task_unguard_one    = ctp__task_unguard_one,
	.guards_drop         = ctp__guards_drop,
	.task_retire         = ctp__task_retire,
	.batch_end_retire    = ctp__batch_end_retire,
	.task_retire_quiet   = ctp__task_retire_quiet,
	.batch_end_quiet     = ctp__batch_end_quiet,
	.task_complete_unrun = ctp__task_complete_unrun,
	.batch_end_complete  = ctp__batch_end_complete,
	.task_fire_queued    = ctp__task_fire_queued,
	.task_free           = ctp__task_free,
	.timer_claim         = ctp__timer_claim,
};

/* ---- create ------------------------------------------------------------- */

static unsigned cpu_count(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return 1;
	return CPU_COUNT(&set) > 0 ? (unsigned)CPU_COUNT(&set) : 1;
}

static int pool_alloc(ctp_pool **out, const ctp_pool_opts *o, unsigned n,
                      unsigned cpus, size_t cap)
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
	pool->stall = calloc(n, sizeof(*pool->stall));
	if (pool->workers == NULL || pool->scan == NULL || pool->stall == NULL)
		goto fail;
	r = ctp__timer_init(&pool->timer);
	if (r != 0)
		goto fail;
	/* the spinning kind (platform.c, ctp__mutex_init_spin): with the
	 * plain one, about one futex call per task in 2 x 2 below.
	 * bench_ctpool throughput --tasks 1000000 on 2 vCPUs, one binary
	 * alternating the two kinds (2026-12-05): 2 producers x 2 workers,
	 * futex calls per task 0.78 -> 0.01, CPU time per task 486 -> 371
	 * ns, medians of 12 runs 2.87 -> 3.40 M tasks/s (8 of 12 won); 1 x
	 * 2: 2.66 -> 3.12 (10 of 12); 2 x 4: 2.75 -> 3.19 (12 of 12); 1 x 4:
	 * 3.00 -> 3.21 (11 of 12). Wake, idle stop and cancel (uncontended)
	 * showed no difference. An earlier design, whose scout spun with
	 * `pause` instead of yielding and held the lock longer, measured the
	 * opposite (2.0 spinning, 3.1 plain). */
	ctp__mutex_init_spin(&pool->runq.lock);
	pool->runq.capacity = cap;
	/* every worker is awake until it parks */
	pool->runq.awake = n;
	pool->runq.cap = n > cpus ? cpus : UINT32_MAX;
	ck_ec32_init(&pool->runq.not_full, 0);
	ck_ec32_init(&pool->runq.drained, 0);
	pthread_mutex_init(&pool->lock, NULL);
	pthread_mutex_init(&pool->alloc_lock, NULL);
	pool->opts = *o;
	snprintf(pool->name, sizeof(pool->name), "%s",
	    o->name != NULL ? o->name : "ctp");
	pool->opts.name = pool->name; /* the caller's string may not live on */
	pool->nthreads = n;
	pool->gen = ctp__gen();
	atomic_init(&pool->refs, 1); /* the owner's */
	pool->up = &pool_up;
	for (unsigned i = 0; i < n; i++) {
		pool->workers[i].pool = pool;
		pool->workers[i].index = i;
	}
	*out = pool;
	return 0;
fail:
	free(pool->workers);
	free(pool->scan);
	free(pool->stall);
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
	unsigned n, i, cpus;
	size_t cap;
	int r;

	if (out == NULL)
		return -EINVAL;
	if (opts != NULL)
		o = *opts;
	cpus = cpu_count();
	n = o.threads != 0 ? o.threads : cpus;
	cap = ctp__round_capacity(o.queue_capacity != 0 ? o.queue_capacity :
	    DEFAULT_CAPACITY);
	if (n > CTP_MAX_THREADS || cap == 0 ||
	    o.processes > CTP_MAX_PROCESSES || !ctp__duration_ok(o.kill_after))
		return -EINVAL;
	r = pool_alloc(&pool, &o, n, cpus, cap);
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
		struct after a = { 0 };

		q_lock(&pool->runq);
		atomic_store(&pool->stopping, true);
		q_wake_all(&pool->runq);
		q_unlock(&pool->runq, &a);
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

/* Undoes a submit whose task was never visible to anyone else. */
static void discard(ctp_task *t)
{
	atomic_store_explicit(&t->token.refs, 1, memory_order_relaxed);
	ctp__token_put(&t->token);
}

/*
 * Admission: takes a slot for t (RESERVED), waiting up to queue_wait for
 * room (counted from the first time it finds none); with `link`, also
 * links it in the same lock (the common submit: no parent, no deadline,
 * so nothing else can see it before). A parent that fires while we wait
 * ends the wait with its reason; a fired parent wins over a free slot and
 * a closed queue.
 */
static int admit(ctp_pool *pool, ctp_task *t, int64_t queue_wait,
                 ctp_token *parent, bool link)
{
	struct ctp__runq *q = &pool->runq;
	struct timespec abs;
	bool timed = false;   /* abs is set: the first wait set it */
	bool counted = false; /* we are in full_waiters */
	bool fired = false;   /* r is the parent's reason */
	int r;

	q_lock(q);
	for (;;) {
		struct after a = { 0 };
		uint32_t snap;

		if (parent != NULL && ctp_token_cancelled(parent)) {
			r = ctp_token_reason(parent);
			fired = true;
			break;
		}
		if (atomic_load_explicit(&q->closed, memory_order_relaxed)) {
			r = -ESHUTDOWN;
			break;
		}
		if (atomic_load_explicit(&q->count, memory_order_relaxed) <
		    q->capacity) {
			atomic_store_explicit(&q->count,
			    atomic_load_explicit(&q->count,
			    memory_order_relaxed) + 1, memory_order_relaxed);
			/* accepted with its slot, before anyone can take it:
			 * the unlock orders this before whatever finishes it,
			 * so pool_idle never sees it finished uncounted
			 * (relaxed: the lock gives that order) */
			own_add64(&q->accepted, 1, memory_order_relaxed);
			t->token.q.state = CTP__Q_RESERVED;
			r = 0;
			break;
		}
		if (queue_wait == 0) {
			r = -EAGAIN;
			break;
		}
		/* full: wait for a release (it bumps not_full after the
		 * lock, so a snapshot taken under it cannot miss it) */
		if (!counted) {
			q->full_waiters++;
			counted = true;
		}
		snap = ctp__ec_value(&q->not_full);
		q_unlock(q, &a);
		/* queue_wait counts from the first time the queue was full:
		 * a submit that finds room (or may not wait) reads no clock */
		if (!timed && queue_wait != CTP_FOREVER)
			timed = ctp__deadline(queue_wait, &abs);
		CTP__PERTURB();
		r = ctp__ec_wait(&q->not_full, snap, parent,
		    timed ? &abs : NULL);
		q_lock(q);
		if (r != 0) {
			/* the parent's reason (which may be -ETIMEDOUT, its
			 * own deadline) or our queue_wait's -ETIMEDOUT */
			if (parent != NULL && ctp_token_cancelled(parent)) {
				r = ctp_token_reason(parent);
				fired = true;
			}
			break;
		}
	}
	if (counted)
		q->full_waiters--;
	{
		struct after a = { 0 };

		if (r == 0 && link) {
			q_link(q, t);
			q_wake_for_work(q, &a);
		}
		q_unlock(q, &a);
	}
	if (!fired && (r == -EAGAIN || r == -ETIMEDOUT)) {
		atomic_fetch_add_explicit(&pool->st_rejected, 1,
		    memory_order_relaxed);
		return -EAGAIN;
	}
	return r;
}

/* Links an admitted task (or, `timed`: a delayed or periodic one, which
 * holds a due-heap reservation, places it by its due time), unless
 * a fire (its parent's cascade, or its deadline) retired it meanwhile: it
 * then drops the queue's reference. A periodic task admitted before a
 * shutdown began and queued after it ends here (-ESHUTDOWN). */
static void enqueue(ctp_pool *pool, ctp_task *t, bool timed)
{
	struct ctp__runq *q = &pool->runq;
	struct after a = { 0 };
	bool retired, shut = false;

	if (timed)
		pthread_mutex_lock(&pool->timer.lock);
	q_lock(q);
	retired = t->token.q.state != CTP__Q_RESERVED;
	if (retired) {
		/* a fire took it out */
	} else if (t->token.opt.periodic &&
	    atomic_load_explicit(&q->closed, memory_order_relaxed)) {
		shut = true;
	} else if (timed) {
		place(pool, t, ctp__now_ns(), &a);
	} else {
		q_link(q, t);
		q_wake_for_work(q, &a);
		q_linked_closed(q, &a); /* shutdown's drop step takes it */
	}
	q_unlock(q, &a);
	if (timed)
		pthread_mutex_unlock(&pool->timer.lock);
	if (shut)
		(void)ctp__token_fire(&t->token, -ESHUTDOWN);
	if (retired || shut)
		ctp__token_put(&t->token);
}

/* Gives back the slot of an admitted task that is not linked (a submit
 * backing out). */
static void unreserve(ctp_pool *pool, ctp_task *t)
{
	struct ctp__runq *q = &pool->runq;
	struct after a = { 0 };

	q_lock(q);
	if (t->token.q.state == CTP__Q_RESERVED) {
		t->token.q.state = CTP__Q_OUT;
		q_release(q, &a);
		/* no longer accepted; seq_cst: the caller's idle_check loads
		 * idle_waiters after it */
		own_add64(&q->accepted, (uint64_t)-1, memory_order_seq_cst);
	}
	q_unlock(q, &a);
}

/* Submits fn; iso (may be NULL) is the isolated record, owned by the task
 * object once it is allocated (freed with it), freed here before. */
static int submit(ctp_pool *pool, ctp_task_fn fn, void *arg,
                  const ctp_task_opts *opts, ctp_task **task,
                  struct ctp__iso *iso)
{
	static const ctp_task_opts defaults; /* all zero */
	const ctp_task_opts *o = opts != NULL ? opts : &defaults;
	struct ctp__task_ext *x = NULL;
	bool deadline, fast, sched;
	ctp_task *t;
	int r;

	if (ctp__forked(pool->gen) ||
	    (o->parent != NULL && ctp__forked(ctp__token_gen(o->parent))))
		r = -ECHILD;
	else if (!ctp__duration_ok(o->timeout) ||
	    !ctp__duration_ok(o->queue_wait) || (o->delay | o->period) < 0 ||
	    (unsigned)o->priority + 1u > 2u /* LOW (-1) .. HIGH (1) */ ||
	    o->flags != 0)
		r = -EINVAL;
	else if (iso != NULL && o->period > 0)
		r = -ENOTSUP; /* a run's output and outcome are per task */
	else if (atomic_load_explicit(&pool->runq.closed,
	    memory_order_relaxed))
		r = -ESHUTDOWN; /* a hint: admission checks under the lock */
	else if (o->parent != NULL && ctp_token_cancelled(o->parent))
		r = ctp_token_reason(o->parent);
	else
		r = ctp__task_alloc(pool, o->parent != NULL, o->done != NULL,
		    &t);
	if (r != 0) {
		if (iso != NULL)
			ctp__iso_task_free(iso);
		return r;
	}
	deadline = o->timeout > 0;
	sched = (o->delay | o->period) != 0; /* both >= 0 here */
	fast = !deadline && o->parent == NULL && o->delay == 0;
	t->token.opt.prio = (uint8_t)(o->priority - CTP_PRIORITY_LOW);
	t->token.opt.periodic = o->period > 0;
	t->fn = fn;
	t->arg = arg;
	if (o->done != NULL) {
		*ctp__task_done_slot(t) = o->done; /* its object has the word */
		t->token.opt.done = true;
	}
	t->token.opt.handle = task != NULL;
	/* token.q: OUT, nothing owed (the allocation zeroed it) */
	/* Everything that can fail comes before the task becomes visible:
	 * the ext of a timed, delayed, periodic or isolated task (kept with
	 * the object: steady state allocates nothing; an isolated task's
	 * dispatch also watches its token there), and for a deadline the
	 * timer's fire record (kept with the object too) and a heap slot. */
	if (deadline || sched || iso != NULL) {
		if ((x = tx_get(t)) == NULL) {
			if (iso != NULL)
				ctp__iso_task_free(iso);
			discard(t);
			return -ENOMEM;
		}
		x->iso = iso;
		t->token.opt.isolated = iso != NULL;
		x->heap_idx = CTP__HEAP_NONE;
	}
	if (deadline && x->dfire == NULL &&
	    (x->dfire = malloc(sizeof(*x->dfire))) == NULL) {
		discard(t);
		return -ENOMEM;
	}
	if (deadline && (r = ctp__timer_reserve(pool)) != 0) {
		discard(t);
		return r;
	}
	/* a delayed or periodic task: a place in the due heap (it may wait
	 * there, now or between runs) */
	if (sched) {
		pthread_mutex_lock(&pool->timer.lock);
		r = ctp__timer_dreserve(pool);
		pthread_mutex_unlock(&pool->timer.lock);
		if (r != 0) {
			if (deadline)
				ctp__timer_unreserve(pool);
			discard(t);
			return r;
		}
		x->dres = true;
		x->period = o->period;
		x->resched = -1;
		x->due_idx = CTP__HEAP_NONE;
		/* a delay-0 periodic task's grid starts now (it may be
		 * linked at its admission); a delayed one's due time is set
		 * below, from its acceptance, like its deadline */
		x->due = ctp__now_ns();
	}
	/* the pool's reference, the queue's, and the handle's: set before
	 * the fast path's link publishes it */
	atomic_store_explicit(&t->token.refs, task != NULL ? 3 : 2,
	    memory_order_relaxed);
	/* admit counts it accepted (stats.submitted) with its slot */
	r = admit(pool, t, o->queue_wait, o->parent, fast);
	if (r != 0)
		goto back_out;
	if (fast)
		goto out;
	/* The deadline is written before the link makes the task visible: a
	 * cascade that finishes it at once must see it to take it out of the
	 * heap (ctp__timer_add then refuses the finished task). */
	if (deadline || o->delay > 0) {
		/* one instant for both: a timeout not longer than the delay
		 * fires first (the timer takes a deadline first on a tie) */
		int64_t now = ctp__now_ns();

		if (deadline) {
			x->deadline = add_sat(now, o->timeout);
			t->token.opt.timed = true;
		}
		x->due = add_sat(now, o->delay);
	}
	if (o->parent != NULL && (r = ctp__token_link(o->parent, &t->token))) {
		unreserve(pool, t);
		idle_check(pool); /* it left `accepted` */
		goto back_out;
	}
	CTP__PERTURB();
	/* Accepted. From here a cascade from the parent may finish it. */
	if (deadline)
		ctp__timer_add(pool, t);
	CTP__PERTURB();
	enqueue(pool, t, sched);
out:
	if (task != NULL)
		*task = t;
	return 0;

back_out:
	if (deadline)
		ctp__timer_unreserve(pool);
	if (ctp__task_dres(t)) {
		pthread_mutex_lock(&pool->timer.lock);
		ctp__timer_dunreserve(pool);
		pthread_mutex_unlock(&pool->timer.lock);
		ctp__tx(t)->dres = false;
	}
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

/* An isolated task is a task whose fn (isolated.c) dispatches it to a
 * worker process; its record goes with the object. */
int ctp_pool_submit_isolated(ctp_pool *pool, ctp_isolated_fn fn,
                             const void *in, size_t in_len, void *arg,
                             const ctp_task_opts *opts, ctp_task **task)
{
	struct ctp__iso *iso;
	ctp_task_fn run;
	int r;

	if (pool == NULL || fn == NULL || (in == NULL && in_len > 0))
		return -EINVAL;
	if (ctp__forked(pool->gen))
		return -ECHILD;
	if ((r = ctp__iso_new(pool, fn, in, in_len, &iso, &run)) != 0)
		return r;
	return submit(pool, run, arg, opts, task, iso);
}

/* ---- shutdown ----------------------------------------------------------- */

/* Takes every queued task out and drops it (done(-ESHUTDOWN) runs here),
 * until no slot is held: a submit admitted before the close may still
 * link its task, and a canceller or a backing-out submitter may still
 * have to give its slot back; either bumps `drained` (the queue is
 * closed), after a snapshot we took under the lock. */
static void drop_queued(ctp_pool *pool)
{
	struct ctp__runq *q = &pool->runq;
	struct ctp__timer *tm = &pool->timer;

	for (;;) {
		struct after a = { 0 };
		uint32_t snap;
		ctp_task *t;
		size_t count;

		pthread_mutex_lock(&tm->lock);
		q_lock(q);
		snap = ctp__ec_value(&q->drained);
		t = q_first(q);
		if (t != NULL) {
			q_unlink(q, t, &a);
		} else if (tm->dlen != 0) {
			/* a delayed task (or a periodic one between runs) */
			t = tm->dues[0];
			ctp__timer_ddelete(pool, t);
			t->token.q.state = CTP__Q_OUT;
			q_release(q, &a);
		}
		/* periodic tasks running (HELD) are not waited for: their
		 * worker ends the series after the run (requeue) */
		count = atomic_load_explicit(&q->count, memory_order_relaxed) -
		    q->held;
		a.drained = false; /* only we wait on it */
		q_unlock(q, &a);
		pthread_mutex_unlock(&tm->lock);
		if (t != NULL) {
			/* live: dropped, its done runs here; already fired
			 * (its canceller is finishing it): -EALREADY */
			ctp__token_fire(&t->token, -ESHUTDOWN);
			ctp__token_put(&t->token); /* the queue's */
			continue;
		}
		if (count == 0)
			return;
		ctp__ec_wait(&q->drained, snap, NULL, NULL);
	}
}

static void cancel_step(ctp_pool *pool)
{
	struct ctp__runq *q = &pool->runq;
	struct after a = { 0 };
	unsigned i, n = 0;

	/* Under the lock: a worker pops a task only under it, and records
	 * it as `current` there before it tries to start it, so after this
	 * no task is popped, and every popped one (started or about to try)
	 * is some worker's `current`, which we fire: a task not yet started
	 * then never starts. A worker drops its current's queue reference
	 * only under the lock: ours is taken first. */
	q_lock(q);
	atomic_store(&pool->stopping, true);
	q_wake_all(q); /* idle workers exit now */
	for (i = 0; i < pool->nthreads; i++) {
		struct ctp__worker *w = &pool->workers[i];

		if (w->current != NULL) {
			ctp__token_ref(&w->current->token);
			pool->scan[n++] = w->current;
		}
	}
	q_unlock(q, &a);
	CTP__PERTURB();
	/* running tasks first: the sooner they hear, the sooner they stop */
	for (i = 0; i < n; i++) {
		ctp__token_fire(&pool->scan[i]->token, -ESHUTDOWN);
		ctp__token_put(&pool->scan[i]->token);
	}
	drop_queued(pool);
	ctp__timer_stop(pool);
}

/* Closes admission: blocked submitters wake (they see `closed`). Every
 * periodic series waiting between runs (or for its first run) ends now,
 * as if its token had fired with -ESHUTDOWN (its done runs here); one
 * that runs ends after its run (requeue), one being submitted in its
 * enqueue. */
static void close_queue(ctp_pool *pool)
{
	struct ctp__runq *q = &pool->runq;
	struct ctp__timer *tm = &pool->timer;
	struct after a = { .not_full = true, .drained = true };
	ctp_task *ended = NULL, *t, *next;
	size_t k = 0;

	pthread_mutex_lock(&tm->lock);
	q_lock(q);
	atomic_store(&q->closed, true);
	for (unsigned p = 0; p < CTP__NPRIO; p++) {
		for (t = atomic_load_explicit(&q->head[p],
		    memory_order_relaxed); t != NULL; t = next) {
			next = t->qnext;
			if (t->token.opt.periodic) {
				q_unlink(q, t, &a);
				t->qnext = ended;
				ended = t;
			}
		}
	}
	for (size_t i = 0; i < tm->dlen; i++) {
		t = tm->dues[i];
		if (t->token.opt.periodic) {
			ctp__tx(t)->due_idx = CTP__HEAP_NONE;
			t->token.q.state = CTP__Q_OUT;
			q_release(q, &a);
			t->qnext = ended;
			ended = t;
		} else {
			tm->dues[k++] = t;
		}
	}
	if (k != tm->dlen) {
		tm->dlen = k;
		ctp__timer_dheapify(pool);
	}
	q_unlock(q, &a);
	pthread_mutex_unlock(&tm->lock);
	/* out of the queue, the queue's reference ours: like the drop step */
	for (t = ended; t != NULL; t = next) {
		next = t->qnext;
		(void)ctp__token_fire(&t->token, -ESHUTDOWN);
		ctp__token_put(&t->token);
	}
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
		/* the wake-up count before `finishing`: a last segment that
		 * ends after our look bumps it, and our futex wait then
		 * returns at once. alive before `finishing`: a worker that
		 * exits after popping a task whose firer won (and raised
		 * `finishing` before its CAS) is seen gone only together
		 * with that guard */
		uint32_t seq = atomic_load(&pool->finishing_seq);
		uint32_t v = atomic_load(&pool->alive);
		uint64_t f = atomic_load(&pool->finishing);
		const struct timespec *lim = abs;
		struct timespec ms;
		int r;

		if (FINISHING_SEGS(f) == 0 && v == 0)
			return 0;
		if (late) {
			/* isolated tasks are killed, not abandoned */
			ctp__iso_kill_all(pool);
			if (v <= in_user_code(pool))
				return -ETIMEDOUT;
			ctp__deadline(CTP_MSEC(1), &ms);
			lim = &ms;
		}
		if (FINISHING_SEGS(f) != 0) {
			/* flag ourselves: the last segment then wakes us (a
			 * segment that ended since our look fails the CAS) */
			if (!(f & FINISHING_WAITER) &&
			    !atomic_compare_exchange_strong(&pool->finishing,
			    &f, f | FINISHING_WAITER))
				continue;
			r = ctp__futex_wait(&pool->finishing_seq, seq, lim);
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

	/* No admission after this; blocked submitters wake. Every call
	 * closes, not only the first: a later call may run out of its grace
	 * before the first has got here, and a submit after any call
	 * returned must meet the closed queue. The second close finds no
	 * periodic task left to end (none is re-placed once closed). */
	close_queue(pool);
	if (first) {
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

	/* Free both parts of the free list, with this thread's cache. An
	 * abandoned thread of the pool may be allocating (its submit then
	 * fails with -ESHUTDOWN): the list turns DEAD under alloc_lock, and
	 * objects freed later see DEAD. Another thread's caches keep their
	 * objects (at most 32 of each size) and with them the pool's memory
	 * (its slabs too: task.c) until that thread allocates from another
	 * pool or exits. */
	ctp__task_free_lists(pool);
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
	s->submitted = LOAD(runq.accepted);
	s->completed = 0;
	s->running = 0;
	for (unsigned i = 0; i < pool->nthreads; i++) {
		struct ctp__worker *w = &pool->workers[i];

		s->running += atomic_load_explicit(&w->st_running,
		    memory_order_relaxed);
		s->completed += atomic_load_explicit(&w->st_completed,
		    memory_order_relaxed);
	}
	s->cancelled = LOAD(st_cancelled) + LOAD(runq.st_cancelled);
	s->timed_out = LOAD(st_timed_out) + LOAD(runq.st_timed_out);
	s->rejected = LOAD(st_rejected);
	s->dropped = LOAD(st_dropped) + LOAD(runq.st_dropped);
	{
		/* two snapshots: the held ones are among the counted */
		size_t count = atomic_load_explicit(&pool->runq.count,
		    memory_order_relaxed);
		size_t held = atomic_load_explicit(&pool->runq.held,
		    memory_order_relaxed);

		s->queued = count > held ? count - held : 0;
	}
	s->completed += LOAD(st_completed) + LOAD(runq.st_completed);
	s->threads = LOAD(st_threads);
#undef LOAD
	ctp__iso_stats(pool, s);
}
