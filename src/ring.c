/*
 * ring.c: the only file that calls ck_ring.
 *
 * Design notes
 *   - ck_ring in MPMC mode (ck_ring_enqueue_mpmc / ck_ring_dequeue_mpmc):
 *     bounded, a power-of-two size, holding at most size - 1 pointers, no
 *     memory reclamation. We never use ck_ring_trydequeue_mpmc: its single CAS
 *     can fail on a non-empty ring, and a false "empty" must never send a
 *     consumer to sleep. ck_ring_dequeue_mpmc retries until it really sees
 *     the ring empty.
 *   - A producer preempted between its CAS and its commit makes consumers see
 *     "empty" for a while. That is safe because every caller takes an event
 *     count snapshot before it looks at the ring, and every producer bumps the
 *     event count after its commit (queue.c): the late commit always
 *     wakes whoever saw the false "empty".
 *   - Producer commits are ordered: a producer that reserved slot n must wait
 *     until slot n-1 is committed (ck's p_tail). ck's own enqueue waits with a
 *     bare spin, and when threads outnumber CPUs the producer being waited
 *     for is often descheduled: every waiter then burns a whole time slice
 *     (measured here: 4 producers and 4 consumers on 2 CPUs took 0.2 s to
 *     94 s for 200,000 items). So we enqueue with ck's reserve/commit pair
 *     and do the wait ourselves: a short spin, then a futex wait on p_tail.
 *     After each commit a producer wakes p_tail's sleepers if there are any
 *     (`commit_waiters`; a Dekker pair: the committer stores p_tail, fences,
 *     reads the count; a sleeper raises the count, re-reads p_tail, and the
 *     futex re-compares it).
 *   - ThreadSanitizer cannot see ck's inline-asm atomics. This file is built
 *     with -fno-sanitize=thread under TSan, and publishes each item with
 *     __tsan_release before the enqueue and __tsan_acquire after the dequeue,
 *     so TSan sees the hand-over that the ring really provides (ck's
 *     enqueue commit is a release store, its dequeue CAS an acquire).
 */
#include <ck_ring.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "internal.h"

#if defined(CTP_TSAN_HOOKS)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_RELEASE(p) __tsan_release(p)
#define TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define TSAN_RELEASE(p) ((void)(p))
#define TSAN_ACQUIRE(p) ((void)(p))
#endif

/* The TSan sync object for an item: the item itself, or the ring for NULL. */
#define SYNC_ADDR(r, item) ((item) != NULL ? (item) : (void *)(r))

int ctp__ring_init(struct ctp__ring *r, unsigned size)
{
	ck_ring_t *ck;
	ck_ring_buffer_t *buf;

	/* ck_ring_t pads its heads to cache lines: keep that alignment. */
	ck = aligned_alloc(CK_MD_CACHELINE,
	    (sizeof(*ck) + CK_MD_CACHELINE - 1) / CK_MD_CACHELINE *
	    CK_MD_CACHELINE);
	if (ck == NULL)
		return -ENOMEM;
	buf = calloc(size, sizeof(*buf));
	if (buf == NULL) {
		free(ck);
		return -ENOMEM;
	}
	ck_ring_init(ck, size); /* does not check the power of two: we did */
	r->ck = ck;
	r->buf = buf;
	r->size = size;
	atomic_init(&r->commit_waiters, 0);
	return 0;
}

void ctp__ring_fini(struct ctp__ring *r)
{
	free(r->buf);
	free(r->ck);
	r->buf = NULL;
	r->ck = NULL;
}

/* Spins this many times for the previous producer's commit, then sleeps. */
#define COMMIT_SPIN 256

/* Waits until every earlier reservation is committed: p_tail == ticket. */
static void wait_turn(struct ctp__ring *r, ck_ring_t *ck, unsigned ticket)
{
	_Atomic uint32_t *tail = (_Atomic uint32_t *)&ck->p_tail;
	uint32_t v;

	for (int i = 0; i < COMMIT_SPIN; i++) {
		if (ck_pr_load_uint(&ck->p_tail) == ticket)
			return;
		ck_pr_stall();
	}
	atomic_fetch_add(&r->commit_waiters, 1); /* seq_cst: Dekker */
	while ((v = ck_pr_load_uint(&ck->p_tail)) != ticket)
		ctp__futex_wait(tail, v, NULL);
	atomic_fetch_sub(&r->commit_waiters, 1);
}

bool ctp__ring_push(struct ctp__ring *r, void *item)
{
	ck_ring_t *ck = r->ck;
	unsigned ticket;
	void **slot;

	slot = ck_ring_enqueue_reserve_mpmc(ck, r->buf, &ticket);
	if (slot == NULL)
		return false;
	TSAN_RELEASE(SYNC_ADDR(r, item));
	*slot = item;
	CTP__PERTURB();
	wait_turn(r, ck, ticket);
	/* p_tail == ticket now: ck's commit stores ticket + 1 without waiting */
	ck_ring_enqueue_commit_mpmc(ck, ticket);
	/* the store above before the load below: pairs with wait_turn */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&r->commit_waiters, memory_order_relaxed) != 0)
		ctp__futex_wake((_Atomic uint32_t *)&ck->p_tail, INT_MAX);
	return true;
}

bool ctp__ring_empty(const struct ctp__ring *r)
{
	return ck_ring_size(r->ck) == 0;
}

bool ctp__ring_pop(struct ctp__ring *r, void **item)
{
	void *p;

	CTP__PERTURB();
	/* The data argument is the address of the slot to fill. */
	if (!ck_ring_dequeue_mpmc(r->ck, r->buf, &p))
		return false;
	TSAN_ACQUIRE(SYNC_ADDR(r, p));
	*item = p;
	return true;
}
