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
 *     event count after its commit (queue.c, pool.c): the late commit always
 *     wakes whoever saw the false "empty".
 *   - ThreadSanitizer cannot see ck's inline-asm atomics. This file is built
 *     with -fno-sanitize=thread under TSan, and publishes each item with
 *     __tsan_release before the enqueue and __tsan_acquire after the dequeue,
 *     so TSan sees the hand-over that the ring really provides (ck's
 *     enqueue commit is a release store, its dequeue CAS an acquire).
 */
#include <ck_ring.h>
#include <errno.h>
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
	return 0;
}

void ctp__ring_fini(struct ctp__ring *r)
{
	free(r->buf);
	free(r->ck);
	r->buf = NULL;
	r->ck = NULL;
}

bool ctp__ring_push(struct ctp__ring *r, void *item)
{
	TSAN_RELEASE(SYNC_ADDR(r, item));
	return ck_ring_enqueue_mpmc(r->ck, r->buf, item);
}

bool ctp__ring_pop(struct ctp__ring *r, void **item)
{
	void *p;

	/* The data argument is the address of the slot to fill. */
	if (!ck_ring_dequeue_mpmc(r->ck, r->buf, &p))
		return false;
	TSAN_ACQUIRE(SYNC_ADDR(r, p));
	*item = p;
	return true;
}
