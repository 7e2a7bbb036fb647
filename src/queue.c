/*
 * queue.c: the bounded MPMC queue and the event-count waits.
 *
 * Design notes
 *   - Items travel through a ck_ring (ring.c) of twice the capacity. Whether
 *     an item may enter is decided apart, by a CAS on `count` (the admitted
 *     items, never above `capacity`): push reserves a slot, then enqueues;
 *     pop dequeues, then gives the slot back. So the ring holds at most
 *     `count` <= capacity < 2 * capacity - 1 items and its enqueue never
 *     fails, and the queue holds exactly `capacity` items, as the contract
 *     asks (a ck_ring alone holds size - 1). (The pool's run queue is not
 *     this queue: it is one lock over a list, pool.c.)
 *   - Blocking uses two ck_ec32 event counts: not_empty (bumped after each
 *     enqueue and on close) and not_full (bumped on close, and after a slot
 *     release while `full_waiters` is non-zero: a producer announces itself
 *     there before it looks at `count` the last time before sleeping, so a
 *     release that saw no waiter happened before that look; the common case
 *     with nobody waiting costs the consumers no write to a shared line).
 *     A waiter takes a snapshot of the count *before* it looks at
 *     the ring or at `count`, then sleeps only while the count still equals
 *     the snapshot. Every change a waiter could miss is followed by a bump,
 *     so there is no lost wake-up, also when a producer is preempted between
 *     its ring CAS and its commit (consumers see "empty" meanwhile; the
 *     producer's bump after the commit wakes them).
 *   - ck_ec's slow path backs off 2 ms, then x8, without looking at the
 *     caller's deadline (a 100 ms wait would return after 128 ms). We always
 *     wait through ck_ec32_wait_pred with a predicate that clamps each
 *     iteration's deadline to ours, so a timed wait ends on time.
 *   - A token-aware wait registers an internal watch (on the waiter's stack)
 *     whose function bumps the event count being waited on; the predicate
 *     then sees the fired token. Registration happens only on the slow path,
 *     just before sleeping. The watch list is in the token's ext, which a
 *     task's token gets the first time it needs it (token.c): when that
 *     allocation fails the wait registers nothing and its predicate caps
 *     every sleep at 1 ms (POLL_NS) instead, so it sees the fire within
 *     about a millisecond; after a second of that (RETRY_NS) it returns
 *     as a spurious wake, and its caller's next wait tries the allocation
 *     again. No wait answers -ENOMEM (API.md lists none).
 *   - Closing is a bit in the same word as the count (CTP__QUEUE_CLOSED),
 *     set with fetch_or: an admission is a CAS from a value without the
 *     bit, so none can succeed once the bit is set. (With `closed` apart, a
 *     submitter could read "open", be preempted, and then admit a task after
 *     the pool's shutdown had already emptied the queue and returned: the
 *     spin model found it.)
 *   - Slot releases bump not_full, and also not_empty once the queue is
 *     closed: ctp_queue_pop on a closed queue whose slots are still held (a
 *     pop that took the last item and has not given its slot back) sleeps
 *     on not_empty until the release (test_regress_stress,
 *     queue_closed_pop). The bit comes free with the fetch_sub's old
 *     value.
 *   - Memory order: `count` uses seq_cst (on x86 its RMWs are full barriers
 *     anyway). The items themselves are published by the ring.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

uint32_t ctp__ec_value(const ck_ec32_t *ec)
{
	return ck_ec32_value(ec);
}

void ctp__ec_bump(ck_ec32_t *ec)
{
	/* ck_ec32_inc only enters the kernel when a waiter flagged the count */
	ck_ec32_inc(ec, &ctp__ec_mode);
}

size_t ctp__round_capacity(size_t capacity)
{
	size_t c = 1;

	if (capacity > CTP_MAX_CAPACITY)
		return 0;
	while (c < capacity)
		c <<= 1;
	return c;
}

int ctp__queue_init(struct ctp_queue *q, size_t capacity)
{
	int r;

	r = ctp__ring_init(&q->ring, (unsigned)(capacity * 2));
	if (r != 0)
		return r;
	q->capacity = capacity;
	q->gen = ctp__gen();
	atomic_init(&q->count, 0);
	ck_ec32_init(&q->not_empty, 0);
	ck_ec32_init(&q->not_full, 0);
	atomic_init(&q->full_waiters, 0);
	return 0;
}

void ctp__queue_fini(struct ctp_queue *q)
{
	ctp__ring_fini(&q->ring);
}

/* ---- waits -------------------------------------------------------------- */

struct wait_ctx {
	ctp_token             *token;
	const struct timespec *abs;
	bool                   poll;  /* no watch: look at the token each ms */
};

/* How often a wait that could not register its watch looks at its token,
 * and how long it polls before its caller waits again (and so tries the
 * allocation again). */
#define POLL_NS  1000000L
#define RETRY_NS 1000000000L

#define WAIT_TOKEN 1 /* predicate result: the token fired */
#define WAIT_AGAIN 2 /* predicate result: a polling wait gives its caller a
                        spurious wake, so its next wait tries the watch's
                        allocation again */

static bool ts_after(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec > b->tv_sec ||
	    (a->tv_sec == b->tv_sec && a->tv_nsec > b->tv_nsec);
}

/* Called by ck_ec before each sleep of its backoff loop. */
static int wait_pred(const struct ck_ec_wait_state *st, struct timespec *iter)
{
	const struct wait_ctx *c = st->data;

	if (c->token != NULL && ctp_token_cancelled(c->token))
		return WAIT_TOKEN;
	if (c->poll) {
		struct timespec next = st->now;

		if ((st->now.tv_sec - st->start.tv_sec) * 1000000000L +
		    (st->now.tv_nsec - st->start.tv_nsec) >= RETRY_NS)
			return WAIT_AGAIN;

		next.tv_nsec += POLL_NS;
		if (next.tv_nsec >= 1000000000L) {
			next.tv_sec++;
			next.tv_nsec -= 1000000000L;
		}
		if (ts_after(iter, &next))
			*iter = next;
	}
	if (c->abs != NULL && ts_after(iter, c->abs))
		*iter = *c->abs; /* the clamp: never sleep past our deadline */
	return 0;
}

static void wake_ec(void *ec)
{
	ctp__ec_bump(ec);
}

int ctp__ec_wait(ck_ec32_t *ec, uint32_t snap, ctp_token *token,
                 const struct timespec *abs)
{
	struct wait_ctx c = { .token = token, .abs = abs };
	struct ctp_watch w;
	int r;

	/* A task's token gets its ext (where the watch list is) the first
	 * time it is waited on. Without memory for it the wait cannot be
	 * woken by the fire, so it looks at the token every POLL_NS instead:
	 * a wait never fails for memory, it only sees a fire later. */
	if (token != NULL && ctp__token_ext_get(token) == NULL)
		c.poll = true;
	if (token != NULL && !c.poll &&
	    !ctp__token_watch_internal(token, &w, wake_ec, ec))
		return ctp_token_reason(token);
	ctp__worker_blocked(1);
	r = ck_ec32_wait_pred(ec, &ctp__ec_mode, snap, wait_pred, &c, abs);
	ctp__worker_blocked(-1);
	if (token != NULL && !c.poll)
		ctp__token_unwatch_internal(&w);
	/* a fire wins over our deadline: ck_ec looks at the deadline before
	 * the predicate, so a fire just before it (within a poll's
	 * millisecond, or the watch's wake-up) ends here */
	if (token != NULL && (r == WAIT_TOKEN || (r == -1 &&
	    ctp_token_cancelled(token))))
		return ctp_token_reason(token);
	return r == -1 ? -ETIMEDOUT : 0;
}

/* ---- admission ---------------------------------------------------------- */

static int try_reserve(struct ctp_queue *q)
{
	size_t c = atomic_load(&q->count);

	for (;;) {
		if (c & CTP__QUEUE_CLOSED)
			return -ESHUTDOWN;
		if (c >= q->capacity)
			return -EAGAIN;
		/* fails if the count moved or the queue closed meanwhile */
		if (atomic_compare_exchange_weak(&q->count, &c, c + 1))
			return 0;
	}
}

int ctp__queue_reserve(struct ctp_queue *q, ctp_token *token, bool nowait,
                       const struct timespec *abs)
{
	bool counted = false; /* we are in full_waiters */
	int r;

	for (;;) {
		uint32_t snap;

		/* a fired token wins over a free slot and a closed queue */
		if (token != NULL && ctp_token_cancelled(token)) {
			r = ctp_token_reason(token);
			break;
		}
		snap = ctp__ec_value(&q->not_full);
		CTP__PERTURB();
		r = try_reserve(q);
		if (r != -EAGAIN || nowait)
			break;
		if (!counted) {
			/* releases bump not_full only while someone waits:
			 * announce, then look again before sleeping */
			atomic_fetch_add(&q->full_waiters, 1);
			counted = true;
			continue;
		}
		r = ctp__ec_wait(&q->not_full, snap, token, abs);
		if (r != 0)
			break;
	}
	if (counted)
		atomic_fetch_sub(&q->full_waiters, 1);
	return r;
}

void ctp__queue_unreserve_n(struct ctp_queue *q, size_t n)
{
	size_t old = atomic_fetch_sub(&q->count, n);

	/* seq_cst RMW, then the load: pairs with reserve's announce-then-look
	 * (whoever announced after our load sees the slot we freed) */
	if (atomic_load(&q->full_waiters) != 0)
		ctp__ec_bump(&q->not_full);
	if (old & CTP__QUEUE_CLOSED) /* shutdown may wait for count 0 */
		ctp__ec_bump(&q->not_empty);
}

void ctp__queue_unreserve(struct ctp_queue *q)
{
	ctp__queue_unreserve_n(q, 1);
}

void ctp__queue_shut(struct ctp_queue *q)
{
	atomic_fetch_or(&q->count, CTP__QUEUE_CLOSED);
	ctp__ec_bump(&q->not_empty);
	ctp__ec_bump(&q->not_full);
}

/* ---- public queue ------------------------------------------------------- */

int ctp_queue_create(ctp_queue **queue, size_t capacity)
{
	ctp_queue *q;
	size_t cap;
	int r;

	if (queue == NULL || capacity == 0)
		return -EINVAL;
	cap = ctp__round_capacity(capacity);
	if (cap == 0)
		return -EINVAL;
	q = aligned_alloc(CTP__CACHELINE, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	memset(q, 0, sizeof(*q));
	r = ctp__queue_init(q, cap);
	if (r != 0) {
		free(q);
		return r;
	}
	*queue = q;
	return 0;
}

int ctp_queue_push(ctp_queue *queue, void *item, ctp_token *token,
                   int64_t timeout)
{
	struct timespec abs;
	bool timed;
	int r;

	if (queue == NULL || !ctp__duration_ok(timeout))
		return -EINVAL;
	if (ctp__forked(queue->gen) ||
	    (token != NULL && ctp__forked(ctp__token_gen(token))))
		return -ECHILD;
	timed = ctp__deadline(timeout, &abs);
	r = ctp__queue_reserve(queue, token, timeout == 0, timed ? &abs : NULL);
	if (r != 0)
		return r;
	/* cannot fail: the ring has room for twice the admitted items */
	if (!ctp__ring_push(&queue->ring, item))
		abort();
	ctp__ec_bump(&queue->not_empty);
	return 0;
}

int ctp_queue_pop(ctp_queue *queue, void **item, ctp_token *token,
                  int64_t timeout)
{
	struct timespec abs;
	bool timed;

	if (queue == NULL || item == NULL || !ctp__duration_ok(timeout))
		return -EINVAL;
	if (ctp__forked(queue->gen) ||
	    (token != NULL && ctp__forked(ctp__token_gen(token))))
		return -ECHILD;
	timed = ctp__deadline(timeout, &abs);
	for (;;) {
		uint32_t snap;
		bool closed;
		int r;

		/* a fired token wins over an available item */
		if (token != NULL && ctp_token_cancelled(token))
			return ctp_token_reason(token);
		snap = ctp__ec_value(&queue->not_empty);
		CTP__PERTURB();
		if (ctp__ring_pop(&queue->ring, item)) {
			ctp__queue_unreserve(queue);
			return 0;
		}
		/* closed and empty; an admitted push still under way is not
		 * "empty": its item will arrive */
		if (atomic_load(&queue->count) == CTP__QUEUE_CLOSED)
			return -ESHUTDOWN;
		/* Closed with slots still held: a push under way, or a pop
		 * that took the last item and has not given its slot back.
		 * Both are steps of running calls, and each ends with a bump
		 * of not_empty (the push's, or the release's on a closed
		 * queue): wait for it even with timeout 0, so a closed queue
		 * with nothing left always answers -ESHUTDOWN. */
		closed = ctp__queue_closed(queue);
		if (timeout == 0 && !closed)
			return -EAGAIN;
		r = ctp__ec_wait(&queue->not_empty, snap, token,
		    timed && !closed ? &abs : NULL);
		if (r != 0)
			return r;
	}
}

void ctp_queue_close(ctp_queue *queue)
{
	if (queue != NULL)
		ctp__queue_shut(queue);
}

size_t ctp_queue_size(const ctp_queue *queue)
{
	return queue == NULL ? 0 : ctp__queue_count(queue);
}

void ctp_queue_destroy(ctp_queue *queue)
{
	if (queue == NULL)
		return;
	ctp__queue_fini(queue);
	free(queue);
}
