/*
 * task.c: the task state machine, completion and handles.
 *
 * Design notes
 *   States live in the task token's state word (token.c):
 *
 *       QUEUED --start (worker CAS)--> RUNNING --fn returns--> DONE
 *        ^ \                               |
 *        |  `--token fires (firer CAS)--> CANCELLED   (fn never runs)
 *        `--- periodic: run over, unfired (worker CAS; pool.c requeue)
 *
 *   A periodic series that ran and is caught queued between runs is
 *   retired like any queued task, but counted completed and set DONE
 *   (its fire's CAS made it CANCELLED; the retire fixes the phase before
 *   any done runs). A series whose token fires during a run ends like a
 *   one-shot task (ctp__task_finish_ran) with that run's status.
 *
 *   Start and fire are CASes on the same word, so a cancel racing a start
 *   has one winner. Completion happens exactly once, by the one thread that
 *   won the transition out of QUEUED: the worker (ctp__task_finish_ran:
 *   leave the deadline heap, done, publish, count finished, drop the pool's
 *   reference) or the fire call that caught it queued (the canceller, an
 *   ancestor's canceller, the shutdown caller, the timer), in two passes
 *   over the fire's list (internal.h, struct ctp__batch):
 *     retire:   leave the deadline heap, count the statistic and the slot
 *               in the batch; the slots and statistics go to the pool at
 *               the end of each pool's segment (one runq.lock for
 *               both), before any done runs;
 *     complete: done (outside every lock), publish the status
 *               (CTP__FINISHED, waking ctp_task_wait); the finished
 *               count goes to the pool at the segment's end.
 *   A segment raises its pool's `finishing` before its first slot is given
 *   back and lowers it after its dones (off the pool's workers, in the
 *   same atomic that counts them finished: pool.c, pool_segment_done), so
 *   a shutdown that sees the queue empty still waits for those dones.
 *   The fire call borrows the pool's reference of every task it caught
 *   queued until its done has run, and the last task of a complete
 *   segment until the segment's end,
 *   whose object holds a reference on the pool: the pool cannot be freed
 *   while a pass touches it, even if the user destroys it as soon as
 *   wait_idle returns. Cancelling a tree of n tasks
 *   of one pool costs a few shared read-modify-writes on the pool, not 3n.
 *   Quiet tasks take one pass. A child a fire catches queued (so its
 *   firer took it out of the parent's children) with no done, no handle,
 *   nothing linked or asleep on it, and neither periodic nor isolated
 *   has nothing to run and nobody to tell: ctp__task_retire_quiet (or,
 *   when a batch of its pool is open and not full and the task has no
 *   deadline, ctp__batch_add_quiet inline in the walk: internal.h) puts
 *   it in a batch of its own, and at the batch's end (the next quiet task
 *   finds it full at 32 or of another pool, or the mark pass ends: the
 *   same fire call) ctp__batch_end_quiet does the
 *   whole of it while the objects are still in cache: unqueue (slots and
 *   statistics, one runq.lock), count finished and lower the batch's own
 *   `finishing` segment (raised at its first task, under the fire's
 *   guard: one atomic), then drop each task's references. Nobody else can
 *   find such a task, so when its count is what the fire drops, the fire
 *   frees it without an atomic (internal.h, ctp__token_drop_unfindable),
 *   and the batch's freed objects go to the pool's free list as one
 *   batch (one CAS, push_freed), not one by one into a cache.
 *   A group cancel of 20,000 such tasks: 339 -> 203 instructions and
 *   2.09 -> 1.16 atomics per task, then 134 instructions with the inline
 *   check, the rebuilt list and the one push (callgrind, bench_ctpool
 *   cancel --by group --tasks 20000).
 *
 *   References (token.refs): the pool's (dropped after done returns; by
 *   a worker that ran the task, together with the queue's, when it takes
 *   its next task), the queue's (dropped by whoever takes the task out of
 *   the run queue: the worker that popped it, when it takes its next task
 *   or finds it cancelled; the fire that caught it linked, which unlinks
 *   it at once; the shutdown's drop step; or its own submit, if a fire
 *   retired it before it was linked), the handle's (if the caller asked
 *   for one), and temporary ones (timer, fire calls, shutdown).
 *   The object goes back to the pool's free list when the last one goes, or is
 *   freed for good if the pool has been destroyed (`freed` is DEAD): its ext
 *   goes and so does its pool reference (the memory is its slab's, below).
 *   Objects travel in batches of up to 32, so no thread touches a shared word
 *   per task: a worker keeps the objects it frees in its own cache (its own
 *   submits take from it) and pushes them to the pool's list as one batch (one
 *   CAS) when 32 are there, and before it parks or exits; a thread that
 *   allocates takes one batch into its own cache (ctp__tls.alloc) under
 *   alloc_lock and allocates from it without any lock until it is empty;
 *   objects it frees itself (a cancel) go there too, and a full cache (32)
 *   goes back to the pool as one batch. A batch's first object carries its
 *   count (free_count, written when the batch is pushed: a thread's or
 *   worker's own cache keeps its count in c->n or ncache), so taking a batch
 *   touches one object, not 32 whose lines are all in the freeing thread's
 *   cache (only a thread without an exit destructor, which keeps one object,
 *   walks the rest to give them back); each allocation prefetches the next
 *   object's lines, for writing. (Walking the batch was 75 of a submitter's
 *   420 CPU ns per task: bench/profile/profile.sh, throughput p1w2.) A
 *   thread's caches (one per size) hold one pool's objects (never, once empty,
 *   those of a destroyed pool): allocating from another pool, or keeping an
 *   object it freed of another pool, gives them back first (acache_claim), and
 *   so do the thread's exit (a pthread_key destructor; it does not run for the
 *   main thread's exit(), whose caches stay until the process ends) and
 *   ctp_pool_destroy on that thread; another thread's caches keep the
 *   destroyed pool's memory until one of those happens. Each object holds a
 *   reference on its pool, so a handle or a cache can outlive
 *   ctp_pool_destroy; and as the memory is the slabs', one such object keeps
 *   all of its pool's slabs (after a queue a million deep, 56 MB). A thread
 *   whose destructor could not be registered keeps no cache. The refill checks
 *   DEAD under alloc_lock, which ctp_pool_destroy holds while it frees the
 *   list: an abandoned thread of the pool that submits gets -ESHUTDOWN (from
 *   the refill, or from the closed queue if its cache still had an object).
 *
 *   Sizes. A task submitted with no parent and no done is a 56-byte
 *   object: its token's hot part (state, sleepers, references, the
 *   token's flag byte, the task's queue byte and submit byte, ext: 24
 *   bytes) and the task's queue links, arg, and fn or status. A done
 *   costs a word right after the object (64 bytes: ctp__task_done_slot;
 *   where the done was before, next to fn), a parent a struct ctp__tnode
 *   too (its parent, with the `unlisted` bit in its low bit, the sibling
 *   links and the fire calls' list links, 32 bytes) right before the
 *   token (88 bytes, 96 with a done; token.c:
 *   only a token with a parent is ever on another fire call's lists).
 *   `token.tree` and `token.dslot` say which,
 *   for the object's whole life, so each size has its own free list in the
 *   pool (freed[k], spare[k]), its own cache in a thread (alloc[k]) and
 *   in a worker (cache[k]); everything above is per size. (bench_ctpool
 *   memory: 136 -> 88 heap bytes per queued task for the tree node's
 *   move; 72.3 -> 59.9 at 100,000 queued for the done word's, the task's
 *   flags moving into the token's bytes, and the slabs' alignment below:
 *   56 of it the object, the rest the pool and its last chunk's part not
 *   carved yet. A child without a done lost its word later, and the tree
 *   node its `unlisted` byte (now a bit of the parent word): 120 -> 104
 *   bytes, what a group cancel walks per child; then two pairs of
 *   links that are never used at once one word each (internal.h, struct
 *   ctp__tnode): 88.)
 *   What a deadline, a delay, a period or
 *   an isolated run needs (and its token's lock, children, watches and fd)
 *   is in its ext (internal.h, struct
 *   ctp__task_ext), attached at submit for such a task or when its token
 *   is first linked, and kept with the object (reset on reuse, freed by
 *   ctp__task_dealloc): a plain task never touches it, and the `timed`
 *   and `isolated` flags say whether the ext's deadline and iso are set.

 *   Slabs. New objects are carved from slabs: blocks of CTP__SLAB_BYTES
 *   (16 KB: 291 plain objects after a line of header) aligned to that
 *   size, each for one size of object, which come in chunks (one
 *   aligned_alloc: 1 slab for a pool's first, twice the last up to 16;
 *   ctp__task_slabs_free frees them with the pool, when its last
 *   reference goes: each object holds one, so no object is in use by
 *   then). A refill that finds no free batch carves a batch (one object
 *   for a thread without a cache) under alloc_lock and makes the objects
 *   after it. So a queue that grows by n costs n/4,600 allocations, not
 *   n, and a queued task costs its object's bytes, not malloc's chunk
 *   (8 bytes of header, rounded to 16). (bench_ctpool throughput, 2
 *   submitters and 2 workers, 1,000,000 tasks: 251,767 objects were
 *   malloc'd one by one, the queue that deep; alternated with the build
 *   before, 8 of 8 runs faster, medians 1.98 -> 2.74 M/s.) The price: a
 *   destroyed pool's task memory goes only with its last object (a
 *   handle not yet released, another thread's cache), not object by
 *   object, and a pool's first task of each size costs a whole slab. An
 *   object's pool is its slab's: masking the object's address finds the
 *   header, which holds the pool (ctp__task_pool), so the object carries
 *   no pool pointer and no offset to the header.

 *   Finished (publish). The finisher writes `status` (in fn's place: fn
 *   is dead by then), sets CTP__FINISHED in the token's state word
 *   (seq_cst RMW, after the terminal phase, so no CAS that expects a
 *   phase meets it) and wakes the word's sleepers if `sleepers` says
 *   there are any; ctp_task_wait counts itself there, then looks at the
 *   word, then sleeps on it: the same announce-then-look as
 *   ctp_token_sleep, with no word of its own. Only a handle can wait, so
 *   a task without one skips it. (Both moved into words the object
 *   already had: 88 -> 80 bytes, bench_ctpool memory.)
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "internal.h"

/* its (un)poisoning macros are no-ops outside an ASan build */
#include <sanitizer/asan_interface.h>


bool ctp__is_pool_context(const ctp_pool *pool)
{
	const struct ctp__done_frame *f;

	if (ctp__tls.pool == pool)
		return true;
	for (f = ctp__tls.dones; f != NULL; f = f->prev) {
		if (f->pool == pool)
			return true;
	}
	return false;
}

static bool in_own_task(const ctp_task *t)
{
	const struct ctp__done_frame *f;

	if (ctp__tls.task == t)
		return true;
	for (f = ctp__tls.dones; f != NULL; f = f->prev) {
		if (f->task == t)
			return true;
	}
	return false;
}

/* ---- allocation --------------------------------------------------------- */

/* Objects move between threads in batches of up to this many: a worker
 * pushes what it freed to the pool's list one batch per CAS, and an
 * allocating thread takes one batch per alloc_lock. */
#define CACHE_BATCH 32

static pthread_key_t  cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

/* The size index (struct ctp__tls.alloc, pool->freed) of an object for a
 * task with a parent (tree) or a done: 0 plain, 1 with a done word, 2
 * with a tree node, 3 with both. */
static unsigned size_for(bool tree, bool done)
{
	return (tree ? 2u : 0u) + done;
}

/* An object's size index: its flags say which it was made for. */
static unsigned size_of_class(const ctp_task *t)
{
	return size_for(t->token.tree, t->token.dslot);
}

/* The bytes before an object of size k in its allocation: its tree
 * node, if it has one. */
static size_t head_bytes(unsigned k)
{
	return k >= 2 ? sizeof(struct ctp__tnode) : 0;
}

/* The bytes after it: its done word, if it has one. */
static size_t tail_bytes(unsigned k)
{
	return (k & 1) != 0 ? sizeof(ctp_done_fn) : 0;
}

/* The bytes of an object of size k: its head, itself and its tail. */
static size_t object_bytes(unsigned k)
{
	return head_bytes(k) + sizeof(ctp_task) + tail_bytes(k);
}

/* AddressSanitizer sees a slab as one malloc'd block, so it cannot tell
 * a free object from one in use. The ASan build tells it: a free object's
 * token word and sleepers, its arg, its done word and its tree node are
 * poisoned while it waits on a free list (and a slab's uncarved part until
 * it is carved), so a stale handle's cancel, state or wait, or a thread
 * that kept a token past its task, is reported as a use after free. What
 * the free lists themselves use stays readable: the links (in qnext,
 * qprev and fn's place), refs, the flag bytes (tree and dslot: the size)
 * and ext (ASan poisons whole 8-byte words, and those share theirs). */
static void object_poison(ctp_task *t)
{
	/* state and sleepers */
	ASAN_POISON_MEMORY_REGION(&t->token.state, 2 * sizeof(uint32_t));
	ASAN_POISON_MEMORY_REGION(&t->arg, sizeof(t->arg));
	if (t->token.dslot)
		ASAN_POISON_MEMORY_REGION(ctp__task_done_slot(t),
		    sizeof(ctp_done_fn));
	if (t->token.tree)
		ASAN_POISON_MEMORY_REGION(ctp__tn(&t->token),
		    sizeof(struct ctp__tnode));
}

static void object_unpoison(ctp_task *t, unsigned k)
{
	ASAN_UNPOISON_MEMORY_REGION((char *)t - head_bytes(k), object_bytes(k));
}

/* ---- slabs -------------------------------------------------------------- */

/* The plain task's object, as "Sizes" and bench_ctpool memory say: a
 * field added here costs every queued task 8 bytes. */
_Static_assert(sizeof(ctp_task) == 56, "a plain task object is 56 bytes");

/* A slab (internal.h): a block of CTP__SLAB_BYTES aligned to its size,
 * its header, then objects of one size carved in order at that size (56,
 * 64, 88 or 96 bytes): every object is 8-byte aligned, not 16, which is all
 * any of their fields needs (atomics of at most 8 bytes, pointers; the
 * ext, its mutex and the timer's records are malloc'd apart). */
_Static_assert(sizeof(struct ctp__slab) % 8 == 0 &&
    sizeof(ctp_task) % 8 == 0 && sizeof(struct ctp__tnode) % 8 == 0 &&
    _Alignof(ctp_task) <= 8 && _Alignof(struct ctp__tnode) <= 8,
    "objects carved from a slab are aligned enough at 8 bytes");

/* Slabs come in chunks, one aligned_alloc each, of 1 slab for a pool's
 * first, then twice the last up to CHUNK_MAX (256 KB): a small pool stays
 * small, a deep queue costs one allocation per 16 slabs, and the slabs
 * of a chunk are contiguous (measured: a slab per aligned_alloc leaves
 * up to a slab's size of free memory between each two, and a group
 * cancel of 100,000 queued tasks, which walks them, ran at 20-25 M/s
 * against 24-33 from contiguous slabs, 5 alternated runs). */
#define CHUNK_MAX 16

/* A slab's objects start a line after its header: the header, read by
 * every ctp__task_pool, shares its line with no object's writes, and a
 * 64-byte object (one with a done word) is one line. */
#define SLAB_HEAD 64
_Static_assert(sizeof(struct ctp__slab) <= SLAB_HEAD, "a slab's header fits");

/* alloc_lock held: carves up to `want` new objects of size k from the
 * pool's current slab of that size (a new slab when it has none left);
 * returns how many (0: out of memory) and the first one's allocation
 * start (the others follow it, object_bytes(k) apart). */
static unsigned slab_carve(ctp_pool *pool, unsigned k, unsigned want,
                           char **first)
{
	if (pool->carve_left[k] == 0) {
		size_t n = (CTP__SLAB_BYTES - SLAB_HEAD) / object_bytes(k);
		struct ctp__slab *sl;

		if (pool->chunk_left == 0) {
			/* a new chunk, twice the last, up to CHUNK_MAX */
			unsigned c = pool->chunk_slabs == 0 ? 1 :
			    pool->chunk_slabs < CHUNK_MAX ?
			    2 * pool->chunk_slabs : CHUNK_MAX;
			char *chunk = aligned_alloc(CTP__SLAB_BYTES,
			    c * CTP__SLAB_BYTES);

			if (chunk == NULL)
				return 0;
			/* its first slab's header links it */
			((struct ctp__slab *)(void *)chunk)->next =
			    pool->slabs;
			pool->slabs = (struct ctp__slab *)(void *)chunk;
			pool->chunk_next = chunk;
			pool->chunk_left = c;
			pool->chunk_slabs = c;
		}
		sl = (struct ctp__slab *)(void *)pool->chunk_next;
		pool->chunk_next += CTP__SLAB_BYTES;
		pool->chunk_left--;
		/* uncarved */
		ASAN_POISON_MEMORY_REGION((char *)sl + SLAB_HEAD,
		    n * object_bytes(k));
		sl->pool = pool;
		pool->carve[k] = (char *)sl + SLAB_HEAD;
		pool->carve_left[k] = (unsigned)n;
	}
	if (want > pool->carve_left[k])
		want = pool->carve_left[k];
	*first = pool->carve[k];
	pool->carve[k] += (size_t)want * object_bytes(k);
	pool->carve_left[k] -= want;
	return want;
}

/* Makes the n objects carved at `first` free objects of pool (each holds
 * a pool reference, its token made once) chained by free_next; returns
 * the first. The caller holds a pool reference. */
static ctp_task *slab_init(ctp_pool *pool, unsigned k, char *first,
                           unsigned n)
{
	ctp_task *head = NULL;

	/* relaxed: the caller's reference keeps the count above 0 */
	atomic_fetch_add_explicit(&pool->refs, n, memory_order_relaxed);
	for (unsigned i = n; i-- > 0;) {
		ctp_task *t = (ctp_task *)(void *)(first +
		    (size_t)i * object_bytes(k) + head_bytes(k));

		object_unpoison(t, k); /* carved */
		ctp__token_init(&t->token, CTP__TOKEN_TASK, CTP__PHASE_QUEUED,
		    NULL, k >= 2);
		t->token.dslot = (k & 1) != 0;
		t->free_next = head;
		head = t;
		assert(ctp__task_pool(t) == pool && size_of_class(t) == k);
		object_poison(t); /* free until allocated */
	}
	return head;
}

void ctp__task_slabs_free(ctp_pool *pool)
{
	struct ctp__slab *sl;

	while ((sl = pool->slabs) != NULL) { /* a chunk's first slab */
		pool->slabs = sl->next;
		free(sl); /* poisoned parts too: free's poisoning replaces it */
	}
}

/* Pushes the batch first..last of n objects of one size (chained by
 * free_next, last->free_next NULL; first->free_count = n) onto that
 * size's pool->freed (release: the objects' last writes and links before
 * an allocator takes them). Only whole-list exchanges take from
 * it, so a head seen here cannot be popped and pushed back under us (no
 * ABA). Once the pool is destroyed the head stays DEAD for good and no
 * push can succeed: the objects are freed. */
static void push_freed(ctp_pool *pool, ctp_task *first, ctp_task *last,
                       unsigned n)
{
	_Atomic(ctp_task *) *freed = &pool->freed[size_of_class(first)].head;
	ctp_task *head = atomic_load_explicit(freed, memory_order_relaxed);

	last->free_next = NULL;
	first->free_count = n;
	do {
		if (head == CTP__FREED_DEAD) {
			while (first != NULL) {
				ctp_task *next = first->free_next;

				ctp__task_dealloc(first);
				first = next;
			}
			return;
		}
		first->free_batch = head;
	} while (!atomic_compare_exchange_weak_explicit(freed, &head,
	    first, memory_order_release, memory_order_relaxed));
}

/* Gives one of this thread's caches back to its pool as one batch. */
static void acache_flush(struct ctp__acache *c)
{
	ctp_task *last;

	if (c->list == NULL)
		return;
	for (last = c->list; last->free_next != NULL; last = last->free_next)
		; /* at most CACHE_BATCH, lines this thread wrote or will */
	/* may free the pool (DEAD) */
	push_freed(c->pool, c->list, last, c->n);
	c->list = NULL;
	c->pool = NULL;
	c->n = 0;
}

static void acache_exit(void *arg)
{
	struct ctp__tls *tls = arg;

	for (unsigned k = 0; k < CTP__NSIZES; k++)
		acache_flush(&tls->alloc[k]);
	tls->alloc_keyed = false; /* a later use on this thread registers
	                             again */
}

static void cache_key_create(void)
{
	if (pthread_key_create(&cache_key, acache_exit) != 0)
		abort(); /* only EAGAIN (out of keys) at the first alloc */
}

/* Asks for the lines of the object the next allocation will take, for
 * writing: it was freed on another thread (a worker), so without this
 * the next submit would stall on each of its lines in turn, first to
 * read free_next, then to write. (bench_ctpool throughput, alternated
 * with a build without it: p1w2 faster in 15 of 20 runs, medians 2.21
 * and 2.42 M/s against 1.81 and 2.29; p2w2 level.) The caller gives
 * the size (k): reading token.tree would be a demand load of the line
 * being prefetched (and GCC at -O2 then dropped the whole call as pure);
 * each size is a constant, so the loop unrolls. */
static inline __attribute__((always_inline)) void
prefetch_lines(const char *p, size_t n) /* n: a constant, so unrolled */
{
	for (size_t off = 0; off < n; off += 64)
		__builtin_prefetch(p + off, 1, 3);
	__builtin_prefetch(p + n - 1, 1, 3);
}

static inline __attribute__((always_inline)) void
prefetch_object(const ctp_task *t, unsigned k)
{
	if (k == 3)
		prefetch_lines((const char *)t - head_bytes(3), object_bytes(3));
	else if (k == 2)
		prefetch_lines((const char *)t - head_bytes(2), object_bytes(2));
	else if (k == 1)
		prefetch_lines((const char *)t, object_bytes(1));
	else
		prefetch_lines((const char *)t, object_bytes(0));
}

/* A thread's caches hold one pool's objects (ctp_pool_destroy's
 * contract): before it keeps an object of pool, it gives back any other
 * pool's, of any size. */
static void acache_claim(ctp_pool *pool)
{
	for (unsigned k = 0; k < CTP__NSIZES; k++) {
		struct ctp__acache *c = &ctp__tls.alloc[k];

		if (c->pool != NULL && c->pool != pool)
			acache_flush(c);
	}
}

/* Takes one batch of pool's free objects of size k into this thread's
 * (empty) cache c. Returns -ESHUTDOWN once the pool is destroyed (only
 * an abandoned thread of the pool can get here then). */
static int acache_refill(struct ctp__acache *c, unsigned k, ctp_pool *pool)
{
	ctp_task *b;
	char *fresh = NULL;
	unsigned n = 0;

	if (!ctp__tls.alloc_keyed) {
		/* the destructor gives the caches back when the thread exits
		 * (pthread_exit or its function's return; not the main
		 * thread's exit()); without it, no cache: one object a call */
		pthread_once(&cache_once, cache_key_create);
		ctp__tls.alloc_keyed = pthread_setspecific(cache_key,
		    &ctp__tls) == 0;
	}
	pthread_mutex_lock(&pool->alloc_lock);
	if (pool->spare[k] == NULL) {
		/* ctp__task_free_lists makes the lists DEAD under this lock */
		if (atomic_load_explicit(&pool->freed[k].head,
		    memory_order_relaxed) == CTP__FREED_DEAD) {
			pthread_mutex_unlock(&pool->alloc_lock);
			return -ESHUTDOWN;
		}
		/* acquire: the pushers' writes to the objects and links */
		pool->spare[k] = atomic_exchange_explicit(
		    &pool->freed[k].head, NULL, memory_order_acquire);
	}
	b = pool->spare[k];
	if (b != NULL) {
		pool->spare[k] = b->free_batch;
	} else {
		/* no free object: new ones, a batch of them (one without
		 * an exit destructor keeps no cache: one) */
		n = slab_carve(pool, k, ctp__tls.alloc_keyed ? CACHE_BATCH : 1,
		    &fresh);
		if (n == 0) {
			pthread_mutex_unlock(&pool->alloc_lock);
			return -ENOMEM;
		}
	}
	pthread_mutex_unlock(&pool->alloc_lock);
	if (b != NULL) {
		/* its count, not a walk: each object's lines are still with
		 * the thread that freed it, and ctp__task_alloc asks for them
		 * one object ahead */
		prefetch_object(b, k);
		n = b->free_count;
	} else {
		b = slab_init(pool, k, fresh, n);
	}
	if (!ctp__tls.alloc_keyed && n > 1) {
		/* no exit destructor: keep one object, give the rest back */
		ctp_task *last = b->free_next;

		while (last->free_next != NULL)
			last = last->free_next;
		push_freed(pool, b->free_next, last, n - 1);
		b->free_next = NULL;
		n = 1;
	}
	c->list = b;
	c->n = n;
	c->pool = b != NULL ? pool : NULL;
	return 0;
}

int ctp__task_alloc(ctp_pool *pool, bool tree, bool done, ctp_task **out)
{
	struct ctp__worker *w = ctp__tls.worker;
	unsigned k = size_for(tree, done);
	struct ctp__task_ext *x;
	struct ctp__acache *c = &ctp__tls.alloc[k];
	ctp_task *t = NULL;
	int r;

	if (w != NULL && w->pool == pool && w->cache[k] != NULL) {
		/* a task submitting from a worker: what the worker freed */
		t = w->cache[k];
		w->cache[k] = t->free_next;
		if (w->cache[k] == NULL)
			w->cache_tail[k] = NULL;
		w->ncache[k]--;
	} else {
		if (c->list == NULL || c->pool != pool) {
			acache_claim(pool); /* another pool's objects */
			if ((r = acache_refill(c, k, pool)) != 0)
				return r;
		}
		if ((t = c->list) != NULL) {
			c->list = t->free_next;
			if (--c->n == 0)
				c->pool = NULL;
			else
				prefetch_object(c->list, k);
		}
	}
	/* a refill always gives at least one object, or fails */
	assert(t != NULL);
	object_unpoison(t, k);
	/* its token's ext (if any) lives as long as the object */
	ctp__token_reset(&t->token, CTP__TOKEN_TASK, CTP__PHASE_QUEUED);
	t->fn = NULL;
	t->arg = NULL;
	if ((k & 1) != 0)
		*ctp__task_done_slot(t) = NULL;
	t->free_next = NULL;
	/* the ext's deadline, heap slots, due times and isolated record are
	 * written only for a task that uses them (submit, reschedule): a
	 * plain task never touches the ext (token_reset zeroed q and opt;
	 * submit sets opt) */
	if ((x = ctp__tx_or_null(t)) != NULL) {
		x->ran = false;
		x->dres = false;
	}
	*out = t;
	return 0;
}

void ctp__task_dealloc(ctp_task *t)
{
	ctp_pool *pool = ctp__task_pool(t);
	struct ctp__task_ext *x = ctp__tx_or_null(t);

	object_unpoison(t, size_of_class(t)); /* its token is finished */
	if (x != NULL) {
		free(x->dfire);
		if (x->iso != NULL)
			ctp__iso_task_free(x->iso);
	}
	ctp__token_fini(&t->token, true);
	/* its memory is its slab's, freed with the pool: this reference
	 * may be the pool's last */
	ctp__pool_put(pool);
}

void ctp__task_free_lists(ctp_pool *pool)
{
	for (unsigned k = 0; k < CTP__NSIZES; k++) {
		ctp_task *list, *spare, *t;

		if (ctp__tls.alloc[k].pool == pool)
			acache_flush(&ctp__tls.alloc[k]);
		pthread_mutex_lock(&pool->alloc_lock);
		list = atomic_exchange_explicit(&pool->freed[k].head,
		    CTP__FREED_DEAD, memory_order_acquire);
		spare = pool->spare[k];
		pool->spare[k] = NULL;
		pthread_mutex_unlock(&pool->alloc_lock);
		for (int part = 0; part < 2; part++) {
			while (list != NULL) {
				ctp_task *batch = list;

				list = batch->free_batch;
				while ((t = batch) != NULL) {
					batch = t->free_next;
					ctp__task_dealloc(t);
				}
			}
			list = spare;
		}
	}
}

/* Gives worker w's cache of size k to its pool as one batch. */
static void worker_flush(struct ctp__worker *w, unsigned k)
{
	if (w->cache[k] == NULL)
		return;
	push_freed(w->pool, w->cache[k], w->cache_tail[k], w->ncache[k]);
	w->cache[k] = w->cache_tail[k] = NULL;
	w->ncache[k] = 0;
}

void ctp__task_cache_flush(struct ctp__worker *w)
{
	for (unsigned k = 0; k < CTP__NSIZES; k++)
		worker_flush(w, k);
}

/* What a freed object gives up before it goes on a free list: its fd and
 * its isolated record (its ext stays for the next use; only a token with
 * one can have an fd: no call for the others); then it is poisoned,
 * before another thread can take it. */
static inline __attribute__((always_inline)) void
object_release(ctp_task *t)
{
	if (atomic_load_explicit(&t->token.ext, memory_order_acquire) != NULL)
		ctp__token_release_fd(&t->token);
	if (t->token.opt.isolated) {
		ctp__iso_task_free(ctp__tx(t)->iso);
		ctp__tx(t)->iso = NULL;
		t->token.opt.isolated = false;
	}
	object_poison(t);
}

/* t's last reference went: to this thread's cache for its pool and size
 * (a worker's, or an allocating thread's), or to the pool's list */
void ctp__task_free(ctp_task *t)
{
	ctp_pool *pool = ctp__task_pool(t);
	unsigned k = size_of_class(t);
	struct ctp__worker *w = ctp__tls.worker;
	struct ctp__acache *c = &ctp__tls.alloc[k];

	object_release(t);
	if (w != NULL && w->pool == pool) {
		t->free_next = w->cache[k];
		w->cache[k] = t;
		if (w->cache_tail[k] == NULL)
			w->cache_tail[k] = t;
		if (++w->ncache[k] >= CACHE_BATCH)
			worker_flush(w, k);
		return;
	}
	if (ctp__tls.alloc_keyed && (c->pool == pool || (c->pool == NULL &&
	    atomic_load_explicit(&pool->freed[k].head, memory_order_relaxed) !=
	    CTP__FREED_DEAD))) {
		/* a canceller's or submitter's own next allocation; a full
		 * cache goes to the pool as one batch (a group cancel frees
		 * its children with a done or a handle here); an object of
		 * a destroyed pool is freed at once below, unless this cache
		 * already holds that pool's */
		if (c->pool == NULL)
			acache_claim(pool);
		t->free_next = c->list;
		c->list = t;
		c->pool = pool;
		if (++c->n >= CACHE_BATCH)
			acache_flush(c);
		return;
	}
	push_freed(pool, t, t, 1);
}

/* ---- transitions and completion ----------------------------------------- */

bool ctp__task_start(ctp_task *t)
{
	uint32_t expected = CTP__PHASE_QUEUED;

	/* acquire: pairs with the submitter's publication of fn/arg (also
	 * carried by the run queue's lock); fails if the token fired
	 * first, and then also acquires: the firer's guard (raised before
	 * its CAS) happens before whatever this worker does next, such as
	 * its exit, which a shutdown reads before `finishing` (pool.c,
	 * wait_quiet) */
	return atomic_compare_exchange_strong_explicit(&t->token.state,
	    &expected, CTP__PHASE_RUNNING, memory_order_acquire,
	    memory_order_acquire);
}

static void call_done(ctp_task *t, int status)
{
	struct ctp__done_frame frame;
	ctp_done_fn done = ctp__task_done(t);

	if (done == NULL)
		return;
	frame.pool = ctp__task_pool(t);
	frame.task = t;
	frame.prev = ctp__tls.dones;
	ctp__tls.dones = &frame;
	done(t->arg, status);
	ctp__tls.dones = frame.prev;
}

/* Publishes the status to ctp_task_wait (only a handle can wait). fn is
 * dead by now: `status` takes its place. */
static void publish(ctp_task *t, int status)
{
	if (t->token.opt.handle) {
		t->status = status;
		/* seq_cst: the release of status and of everything done did,
		 * and the Dekker with a waiter's sleepers++ (it announces,
		 * then loads state; we set the bit, then load sleepers) */
		atomic_fetch_or(&t->token.state, CTP__FINISHED);
		if (atomic_load(&t->token.sleepers) != 0)
			ctp__futex_wake(&t->token.state, INT_MAX);
	}
	CTP__PERTURB();
}

/* The tasks leave the run queue, their statistics counted in the same
 * lock before their slots are free (once a slot is free a submit can
 * follow, and a done, which comes later, sees them counted). Every
 * counted task is in out[]. */
static void flush_out(struct ctp__batch *b)
{
	if (b->nout != 0)
		b->pool->up->unqueue(b);
	b->cancelled = b->timed_out = b->dropped = b->completed = 0;
	b->nout = 0;
}

bool ctp__task_guard(struct ctp__guards *g, const ctp_task *t)
{
	ctp_pool *pool = ctp__task_pool(t);

	for (unsigned i = 0; i < g->n; i++) {
		if (g->pool[i] == pool)
			return false;
	}
	/* seq_cst, before the CAS: a shutdown that sees the slot given back
	 * by whoever pops the task next sees this */
	pool->up->finishing_begin(pool);
	if (g->n < sizeof(g->pool) / sizeof(g->pool[0])) {
		g->pool[g->n++] = pool;
		return false;
	}
	return true;
}

void ctp__task_unguard_one(const ctp_task *t)
{
	ctp_pool *pool = ctp__task_pool(t);

	pool->up->finishing_done(pool);
}

void ctp__guards_drop(struct ctp__guards *g)
{
	for (unsigned i = 0; i < g->n; i++)
		g->pool[i]->up->finishing_done(g->pool[i]);
	g->n = 0;
}

void ctp__task_retire(ctp_task *t, int reason, struct ctp__batch *b)
{
	ctp_pool *pool = ctp__task_pool(t);

	if (b->pool != pool) {
		if (b->pool != NULL)
			ctp__batch_end_retire(b);
		b->pool = pool;
		pool->up->finishing_begin(pool);
	}
	if (t->token.opt.timed)
		ctp__timer_remove(pool, t);
	if (b->nout == sizeof(b->out) / sizeof(b->out[0]))
		flush_out(b);
	b->out[b->nout++] = t;
	if (t->token.opt.periodic && ctp__tx(t)->ran) {
		/* a periodic series that ran, ended between runs: it counts
		 * as completed, and its state is DONE (the fire's CAS made it
		 * CANCELLED; nobody else changes the phase now) */
		uint32_t s = atomic_load(&t->token.state);

		while (!atomic_compare_exchange_weak(&t->token.state, &s,
		    (s & ~CTP__PHASE_MASK) | CTP__PHASE_DONE))
			;
		b->completed++;
		return;
	}
	ctp__batch_count(b, reason);
}

/* Drops the references a fire borrowed from a task it caught queued: the
 * pool's, and the queue's when the fire unlinked it (q.ref_owed). A task
 * the fire unlisted, or one with no parent, nobody else can find, so when
 * they are the last they go without an atomic (internal.h,
 * ctp__token_drop_unfindable); a task still listed under its parent
 * takes ctp__token_put_n's way, which unlinks it. True when the caller
 * frees the object. */
static inline bool drop_borrowed(ctp_task *t)
{
	uint32_t n = t->token.q.ref_owed ? 2 : 1;

	if (ctp__token_listed(&t->token)) {
		ctp__token_put_n(&t->token, n);
		return false;
	}
	return ctp__token_drop_unfindable(&t->token, n);
}

bool ctp__task_retire_quiet(ctp_task *t, int reason, struct ctp__batch *b)
{
	ctp_pool *pool = ctp__task_pool(t);

	if (!ctp__task_quiet(t))
		return false;
	if (b->pool != pool || b->nout == sizeof(b->out) / sizeof(b->out[0])) {
		if (b->pool != NULL)
			ctp__batch_end_quiet(b);
		b->pool = pool;
		/* the segment's: raised under the caller's guard, before any
		 * of its slots is given back, as retire's */
		pool->up->finishing_begin(pool);
	}
	if (t->token.opt.timed)
		ctp__timer_remove(pool, t);
	b->out[b->nout++] = t;
	ctp__batch_count(b, reason);
	return true;
}

void ctp__batch_end_quiet(struct ctp__batch *b)
{
	ctp_pool *pool = b->pool;
	size_t n = b->nout;

	/* out of the run queue (their slots back, counted), then finished:
	 * counted and the segment's `finishing` lowered in one atomic; no
	 * done to run, nobody to tell (no handle). The objects hold the
	 * pool until they are freed (task.c, "Slabs"), so it is still
	 * there for the puts after wait_idle may have returned. */
	ctp_task *first = NULL, *last = NULL; /* the freed, chained */
	unsigned nfreed = 0;

	pool->up->unqueue(b);
	pool->up->segment_done(pool, n);
	for (size_t i = 0; i < n; i++) {
		ctp_task *t = b->out[i];

		/* the pool's reference, and the queue's when unqueue took
		 * it out of a list: nobody else can find t now (unlisted by
		 * the firer of its parent, out of every queue and heap);
		 * freed here, without a call each (a child: size 2, never
		 * isolated), all of them in one batch below */
		assert(size_of_class(t) == 2 && !t->token.opt.isolated);
		if (!drop_borrowed(t))
			continue; /* another holder frees it: the timer that
			           * popped its deadline, a worker that popped
			           * it and fails its start, a submitter that
			           * finds it caught while RESERVED */
		object_release(t);
		t->free_next = first;
		if (last == NULL)
			last = t;
		first = t;
		nfreed++;
	}
	/* to the pool's list in one CAS (at most 32, a cache's batch),
	 * not one by one into this thread's cache: may free the pool */
	if (first != NULL)
		push_freed(pool, first, last, nfreed);
	ctp__batch_init(b, NULL);
}

void ctp__batch_end_retire(struct ctp__batch *b)
{
	flush_out(b);
	ctp__batch_init(b, NULL);
}

/* A completed task's borrowed references (drop_borrowed), and its free
 * when they were the last */
static void put_caught(ctp_task *t)
{
	if (drop_borrowed(t))
		ctp__task_free(t);
}

void ctp__task_complete_unrun(ctp_task *t, int reason, struct ctp__batch *b)
{
	ctp_pool *pool = ctp__task_pool(t);

	if (b->pool != pool && b->pool != NULL)
		ctp__batch_end_complete(b);
	b->pool = pool;
	call_done(t, reason);
	publish(t, reason);
	b->finished++;
	/* the pool's reference, lent to the fire; the segment's last task is
	 * held until its end, so the pool outlives the segment */
	if (b->held != NULL)
		put_caught(b->held);
	b->held = t;
}

void ctp__task_fire_queued(ctp_task *t, int reason)
{
	ctp_pool *pool = ctp__task_pool(t);
	/* b.pool set: the retire raises no `finishing` of its own (the
	 * caller's guard, raised before its CAS, is this segment's) */
	struct ctp__batch b;

	ctp__batch_init(&b, pool);
	ctp__task_retire(t, reason, &b);
	flush_out(&b);
	call_done(t, reason);
	publish(t, reason);
	/* as a complete segment's end: counted and the guard lowered (one
	 * atomic), then the borrowed references (the object holds the pool
	 * until then) */
	pool->up->segment_done(pool, 1);
	ctp__token_put_n(&t->token, t->token.q.ref_owed ? 2 : 1);
}

void ctp__batch_end_complete(struct ctp__batch *b)
{
	ctp_pool *pool = b->pool;
	ctp_task *held = b->held;

	/* wait_idle may return once this is counted: the held task's
	 * reference on its pool keeps the pool valid until the last line */
	pool->up->segment_done(pool, b->finished);
	ctp__batch_init(b, NULL);
	put_caught(held);
}

/* A worker's end of task t: RUNNING -> end (keeping a reason that fired
 * meanwhile), off the timer's heaps, done(status), publish, finished. */
static void finish_worker(ctp_task *t, int status, uint32_t end)
{
	ctp_pool *pool = ctp__task_pool(t);
	uint32_t s = atomic_load_explicit(&t->token.state,
	    memory_order_relaxed);

	while (!atomic_compare_exchange_weak_explicit(&t->token.state, &s,
	    (s & (CTP__REASON_MASK | CTP__FIRING)) | end,
	    memory_order_release,
	    memory_order_relaxed))
		;
	CTP__PERTURB();
	if (t->token.opt.timed)
		ctp__timer_remove(pool, t);
	if (ctp__task_dres(t)) {
		/* a delayed or periodic task: its place in the due heap */
		pthread_mutex_lock(&pool->timer.lock);
		ctp__tx(t)->dres = false;
		ctp__timer_dunreserve(pool);
		pthread_mutex_unlock(&pool->timer.lock);
	}
	call_done(t, status);
	publish(t, status);
	/* takes over the pool's reference: the worker drops it with the
	 * queue's, in one atomic, when it takes its next task */
	pool->up->worker_finished(pool);
}

void ctp__task_finish_ran(ctp_task *t, int status)
{
	uint32_t end = CTP__PHASE_DONE;

	/* an isolated task that never reached a process never ran (the
	 * outcome is asked only of isolated tasks: no call per task) */
	if (t->token.opt.isolated) {
		enum ctp__iso_outcome o = ctp__iso_outcome(t);

		if (o == CTP__ISO_UNRUN || o == CTP__ISO_NOPROC)
			end = CTP__PHASE_CANCELLED;
	}
	finish_worker(t, status, end);
}

/* ---- public API --------------------------------------------------------- */

int ctp_task_cancel(ctp_task *task)
{
	int r;

	if (task == NULL)
		return -EINVAL;
	if (ctp__forked(ctp__task_pool(task)->gen))
		return -ECHILD;
	r = ctp__token_fire(&task->token, -ECANCELED);
	if (r < 0)
		return r;                /* -EALREADY */
	return r == CTP_TASK_QUEUED ? 0 : -EINPROGRESS;
}

int ctp_task_wait(ctp_task *task, int64_t timeout, int *status)
{
	struct timespec abs;
	bool timed;

	if (task == NULL || !ctp__duration_ok(timeout))
		return -EINVAL;
	if (ctp__forked(ctp__task_pool(task)->gen))
		return -ECHILD;
	if (in_own_task(task))
		return -EDEADLK;
	timed = ctp__deadline(timeout, &abs);
	if (!ctp__task_finished(task)) {
		int r = 0;

		if (timeout == 0)
			return -ETIMEDOUT;
		/* announced, then looked at (seq_cst: the Dekker with
		 * publish); the word also changes with the task's phase and
		 * fires, and a fire's wake may be for token sleepers: each
		 * only makes us look again */
		atomic_fetch_add(&task->token.sleepers, 1);
		for (;;) {
			uint32_t s = atomic_load(&task->token.state);

			if ((s & CTP__FINISHED) != 0 || r == -ETIMEDOUT)
				break;
			r = ctp__futex_wait(&task->token.state, s,
			    timed ? &abs : NULL);
		}
		atomic_fetch_sub(&task->token.sleepers, 1);
		if (!ctp__task_finished(task))
			return -ETIMEDOUT;
	}
	if (status != NULL)
		*status = task->status;
	return 0;
}

bool ctp__task_finished(const ctp_task *t)
{
	/* acquire: pairs with publish's RMW (status, done's writes) */
	return (atomic_load_explicit(&t->token.state, memory_order_acquire) &
	    CTP__FINISHED) != 0;
}

int ctp_task_state(const ctp_task *task)
{
	uint32_t s;

	if (task == NULL)
		return -EINVAL;
	s = atomic_load_explicit(&task->token.state, memory_order_acquire);
	return (int)((s & CTP__PHASE_MASK) >> CTP__PHASE_SHIFT);
}

void ctp_task_release(ctp_task *task)
{
	if (task != NULL && !ctp__forked(ctp__task_pool(task)->gen))
		ctp__token_put(&task->token);
}
