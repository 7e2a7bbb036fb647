/*
 * token.c: cancellation tokens.
 *
 * Design notes
 *   Three parts. What every fire, sleep and cancel touches is in
 *   ctp_token (state, sleepers, refs, flags, the ext pointer: 24 bytes,
 *   so a task object stays small). A token that can have a parent (a
 *   standalone token, a task submitted with one: `tree`) has a tree node
 *   right before it in the same allocation (internal.h, struct
 *   ctp__tnode, ctp__tn): its parent and sibling links and the links of
 *   the lists of the fire call that fires it from above. A fire call
 *   keeps its root off its own lists (struct ctp__fire: walk_root,
 *   caught_root), and only the firer of a token's parent puts it on a
 *   list (walk, caught, waits), so a token with no parent never needs a
 *   node. What
 *   only a token with children, watches or an fd uses is in its ext
 *   (internal.h, struct ctp__token_ext: the lock, the children, the watch
 *   list, the fd). A standalone token and a worker process's page token
 *   carry their ext inline; a task's token gets one the first time it
 *   needs it (ctp__token_ext_get: a CAS from NULL, the loser frees its
 *   copy) and keeps it until its object is freed for good, so steady
 *   state allocates nothing. `linked` is set only after the ext is
 *   attached, so a firer that reads `linked` set finds the ext; everything
 *   else reads it only where it must exist (a parent, a watched token).
 *   Attaching is the one thing here that can fail: link, watch and fd
 *   answer -ENOMEM then, before anything changed; a wait on a task's token
 *   (queue.c) waits without a watch instead, looking at the token every
 *   millisecond.
 *
 *   State. One 32-bit word, `state` (internal.h): the reason in the low byte
 *   (0 = not fired) and, for a task's token, the task's phase. A token fires
 *   once, by one CAS that sets the reason; the first reason stays. For a task
 *   token the same CAS moves QUEUED to CANCELLED, and the worker's start is a
 *   CAS QUEUED -> RUNNING on the same word, so exactly one of "cancelled
 *   before start" and "started before cancel" happens, and ctp_task_cancel's
 *   answer is read off the phase the firing CAS replaced.
 *
 *   Transitions of `state`:
 *     standalone:  0 -> reason
 *     task:        QUEUED -> RUNNING -> DONE            (worker)
 *                  QUEUED -> CANCELLED|reason           (firer: never runs)
 *                  RUNNING -> RUNNING|reason -> DONE|reason
 *     Firing a DONE task does nothing (-EALREADY).
 *
 *   Who wakes whom. A fire call (ctp__token_fire) on token t:
 *     1. mark: the CAS on t, which also sets CTP__FIRING on t if t has a
 *        parent (only an ancestor's firer could wait for it); then the
 *        tree, breadth first: for t (unless a task caught queued with
 *        nothing linked) and then each token of the call's walk list
 *        (the tokens below t it fired, in the order it fired them),
 *        under that token's lock (the only lock held), the CAS on each
 *        child; a task it caught queued goes to the caught list (on the
 *        pool's reference, lent until its done ran) and is retired at
 *        once: slots back, statistics, deadline heap (task.c), unless it
 *        is quiet (no done, no handle, nothing linked or asleep: task.c,
 *        ctp__task_retire_quiet; the common case inline, internal.h,
 *        ctp__batch_add_quiet), which is finished and freed here, in
 *        batches of 32, and goes on no list; any other
 *        token it fired joins the walk list (with a reference;
 *        `fire_next` is written only by the CAS winner), so a tree of any
 *        depth or width needs one lock at a time and no recursion, and a
 *        group of n queued tasks costs one pass over the quiet ones and
 *        two over the others (retire here, complete below);
 *     2a. wake, for t and every token of the walk list: sleepers (futex on
 *        `state`, only if `sleepers` > 0), the eventfd, and the library's
 *        internal watches (the event-count bumps of ctp_queue_pop/push
 *        and submit's wait); no user code, so nothing user-made delays
 *        any wake-up in the tree;
 *     2b. complete the caught tasks: done(reason) on this thread, each
 *        lent reference dropped once its done ran;
 *     2c. user watchers, token by token, t first, then in walk-list
 *        order;
 *     3. wait for the subtrees another call was firing (below);
 *     then clear CTP__FIRING on t and drop the walk list's references.
 *   The timer splits the call: it runs 1-2a (ctp__token_fire_begin, no
 *   user code), and its callback thread runs 2b-3 (ctp__token_fire_end).
 *   A leaf (ctp__token_fire on a task it catches queued, with no parent,
 *   nothing linked and no sleeper: a cancel by handle, the shutdown's drop
 *   step) needs none of the lists: task.c retires and completes it in one
 *   pass (ctp__task_fire_queued), under the pool guard taken before the
 *   CAS (callgrind, bench_ctpool cancel --by handle: 751 -> 451
 *   instructions and 11 -> 9 atomics per cancel). A task caught queued
 *   that is not a leaf that way is walked (waited_on).
 *   What a fire does to a task token (guard its pool, retire, complete,
 *   and free the object when its last reference goes) is task.c's, reached
 *   through the task's pool (pool->up, internal.h "The way up"): this file
 *   calls nothing above it.
 *
 *   Two firers in one tree. A's walk meets a child c that another call B
 *   fired first. Without CTP__FIRING set, B's call has ended: c's subtree
 *   is done. With it set, B may be between its CAS on c and its marking of
 *   c's children, or inside their done callbacks: A keeps c (with a
 *   reference) in its wait list and, after its own phases, waits until B
 *   clears the bit (futex on c's `state`; `sleepers` announces the waiter,
 *   seq_cst on both sides: B clears, then reads sleepers; A counts, then
 *   reads the bit). So when A's call returns, every queued task of t's tree
 *   has had its done. A call made from inside a fire call's callbacks (a
 *   done or watcher; ctp__tls.fires is not empty) waits for no other
 *   call: it holds its outer fire open, and an outer fire lower in the
 *   tree than what it would wait for could close a cycle (T fires R, in a
 *   done of R cancels A; Y fires X between A and R and waits for R; T
 *   would wait for X). Every other wait goes down the tree (B's call walks
 *   only c's subtree, which A's walk never enters, and waits only below
 *   it), so waits cannot form a cycle. A timer fire
 *   whose end still waits in the callback queue is ended by the waiter
 *   itself (ctp__timer_claim), so no end waits for one queued behind it.
 *   A call whose CAS lost (-EALREADY) waits for nothing.
 *   `linked` lets a token that never had a child, watch or fd fire with no
 *   lock at all. It is a Dekker pair with `state`: whoever adds a child,
 *   watch or fd sets `linked` (seq_cst) and then reads `state` (seq_cst)
 *   under the lock; the firer CASes `state` (seq_cst) and then reads `linked`.
 *   So either the adder sees the token fired (and acts at once) or the firer
 *   sees `linked` and takes the lock, after the adder's insertion.
 *   The same pair protects sleepers: a sleeper raises `sleepers` and then
 *   re-reads `state` before its futex wait, which re-compares the word.
 *
 *   Watches. PENDING (in the list) -> RUNNING (taken out by the firer under
 *   the lock, fn runs outside it) -> DONE (stored under the lock, with a
 *   futex wake). Internal watches run under the lock at the wake (phase
 *   2a), user watches at phase 2c. ctp_token_unwatch unlinks a PENDING
 *   watch of a token that has not fired; once it has fired, every watch
 *   pending at the CAS belongs to the firer, and the unwatcher waits for
 *   DONE (a sleeper that wakes at 2a and unwatches must not lose a watch
 *   that was registered before the fire), unless this thread is inside
 *   that fire call (t->fire in ctp__tls.fires: a done or watcher of the
 *   same fire), which takes it out unrun. It waits for a RUNNING one to
 *   become DONE, or, when called by fn itself (runner == self), asks the
 *   firer to free the watch after fn returns. The firer stores DONE under
 *   the lock and the unwatcher re-takes the lock before freeing, so the
 *   firer never touches a freed watch.
 *
 *   Trees and lifetime. A child (token or task) sits in its parent's
 *   `children` list (protected by the parent's lock) until its own last
 *   reference goes; then it is unlinked under the parent's lock (by
 *   itself in detach, or by its worker's batch, below: "Deferred
 *   detach"), and freed only after, so a child seen under that lock is
 *   valid memory. The list holds one
 *   reference on the parent while it is not empty, for all its children:
 *   the link that finds it empty takes it, and whoever empties it drops
 *   it after the lock (a dying child in detach, a worker's batch in
 *   ctp__token_detach_flush, the firer's mark), so a
 *   child's link and death cost no atomic on the parent's count, which
 *   children submitted from several threads would all write
 *   (bench/probes/token-lock/group_submit.c). A listed child so keeps its
 *   parent alive. One exception: a task the parent's firer catches queued
 *   is taken out of the list by that firer, under the same lock, in its
 *   mark (unlist): its death then takes no lock of the parent's. The mark
 *   rebuilds the list as it walks it: an unlisted child is skipped, with no
 *   write to its neighbours' links, and the children that stay are linked
 *   again one after the other (mark_children). Nothing walks a fired
 *   parent's children again, and the task's parent and sibling links are
 *   never followed after (the parent word's CTP__UNLISTED bit, internal.h:
 *   a bit, not a byte of its own, so a child task's object is 88 bytes,
 *   what a group cancel reads per child). A group cancel of queued tasks
 *   with no handle and
 *   no deadline so costs no lock and no atomic per task beyond its CAS:
 *   nobody else can find such a task any more, so its last references go
 *   with a load and a store when nobody else holds it (internal.h,
 *   ctp__token_drop_unfindable; callgrind, bench_ctpool cancel --by
 *   group: 340 -> 295 instructions and 5.1 -> 2.1 atomics per task with
 *   the unlisting, 203 and 1.16 with the quiet batches, 134 with the
 *   quiet check inline, the list rebuilt and each batch freed in one
 *   push; a handle adds the publish's RMW (CTP__FINISHED), a deadline the
 *   timer's lock).
 *   Marking takes a reference on each child it fires with "increment if not
 *   zero" (a task it catches queued rides on its pool's reference instead,
 *   lent until its done ran): a child already being freed has no task,
 *   sleeper or watch left.
 *   ctp__token_put frees up a chain in a loop: the freed child's reference
 *   on its parent is dropped by the same loop, never by a recursive call.
 *
 *   Deferred detach. A worker that drops the last reference of a task
 *   still listed under a parent does not unlink it at once: the task goes
 *   into the worker's batch (ctp__token_put_n_deferred, pool.c put_task),
 *   and the batch is unlinked under one taking of the parent's lock, then
 *   freed (ctp__token_detach_flush). A batch holds the children of one
 *   parent, at most CTP__DETACH_BATCH, and goes out before the worker runs
 *   a task that is not a child of that parent, and before it polls, parks
 *   or exits (ctp__token_detach_before). Only a task with nothing attached
 *   (no ext: no fd, no isolated run's record or output, no watch) is
 *   batched: a batch holds at most 32 task objects of 88-96 bytes and the
 *   parent, which the running sibling's place in the list holds anyway,
 *   for as long as that sibling runs; an idle worker holds nothing.
 *   Between the last reference and the flush the task is what any dying
 *   child is between its last reference and its detach's lock: listed,
 *   its count 0, its phase DONE or CANCELLED. A firer that walks it
 *   meanwhile loses its CAS (fire_cas), cannot take a reference
 *   (ctp__token_tryref), and keeps it in the list; the list, not empty,
 *   keeps its reference on the parent until the flush empties it. Why:
 *   every child's death took the parent's lock, whose line then went
 *   between the submitter linking children and each worker finishing
 *   them. `bench_ctpool throughput --into group --tasks 1000000` (every
 *   job a child of one parent, 2 workers), 12 runs alternated with the
 *   build before, medians: 1 submitter 1.54 -> 2.23 M jobs/s (12 of 12
 *   won), 2 submitters 1.36 -> 2.12 (11 of 12), in one of the machine's
 *   slow phases; 3.91 -> 4.22 (11 of 12) and 2.51 -> 3.01 (10 of 12) in
 *   a faster one. The rows without a parent did not move (p2w2: 9 of 16
 *   won, p1w2: 6 of 12). A batch of 8 lost 10 of 10 runs to one of 32;
 *   one of 128 won nothing more.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

/* What a task token's layer above offers (its pool's table: internal.h,
 * "The way up"). */
static inline const struct ctp__pool_up *up_of(const ctp_token *t)
{
	return ctp__task_pool((const ctp_task *)(const void *)t)->up;
}

/* Drops the pool guards of a fire call (task.c, through the pool). */
static void guards_drop(struct ctp__guards *g)
{
	if (g->n != 0)
		g->pool[0]->up->guards_drop(g);
}

static bool fired(uint32_t state)
{
	return (state & CTP__REASON_MASK) != 0;
}

/* A task caught queued is walked by its fire (woken, its watchers run)
 * only if something hangs on its token: children, watches or an fd from a
 * periodic task's earlier runs (`linked`), or a thread sleeping on it: in
 * ctp_token_sleep (a run gave the token away) or in ctp_task_wait (which
 * counts itself in `sleepers` too, task.c: the walk's wake is then one
 * more look for it, the finish's is the one it waits for). Read after the
 * fire's CAS (seq_cst: the Dekker pairs with the adders and with
 * ctp_token_sleep), so whatever comes later sees the token fired by
 * itself. */
static bool waited_on(ctp_token *t)
{
	return atomic_load(&t->linked) != 0 || atomic_load(&t->sleepers) != 0;
}

/* A remote token's word is shared with another process (internal.h). */
static int token_futex_wait(ctp_token *t, uint32_t v,
                            const struct timespec *abs)
{
	if (t->kind == CTP__TOKEN_REMOTE)
		return ctp__futex_wait_shared(&t->state, v, abs);
	return ctp__futex_wait(&t->state, v, abs);
}

static void token_futex_wake(ctp_token *t)
{
	if (t->kind == CTP__TOKEN_REMOTE)
		ctp__futex_wake_shared(&t->state, INT_MAX);
	else
		ctp__futex_wake(&t->state, INT_MAX);
}

/* t's ext, or NULL if a task's token has none yet. acquire: pairs with
 * the attaching CAS (the ext's initialisation before its use). */
static struct ctp__token_ext *ext_of(const ctp_token *t)
{
	return atomic_load_explicit(&((ctp_token *)t)->ext,
	    memory_order_acquire);
}

/* The ext of a token known to have one: one with `linked` set, a parent,
 * children, watches, or an fd. */
static struct ctp__token_ext *X(const ctp_token *t)
{
	struct ctp__token_ext *x = ext_of(t);

	assert(x != NULL);
	return x;
}

static void lock(ctp_token *t)
{
	pthread_mutex_lock(&X(t)->lock);
}

static void unlock(ctp_token *t)
{
	pthread_mutex_unlock(&X(t)->lock);
}

static void ext_clear(struct ctp__token_ext *x)
{
	x->fire = NULL;
	x->children = NULL;
	x->watches = x->watches_tail = NULL;
	x->fd = -1;
}

static void ext_init(struct ctp__token_ext *x)
{
	/* the spinning kind, as the run queue's (platform.c,
	 * ctp__mutex_init_spin): a parent's lock is taken by every child's
	 * submit (the link) and every child's finish (the unlink), so
	 * children submitted from several threads and run by several workers
	 * contend for it. bench/probes/token-lock/group_submit.c (2
	 * submitters x 500,000 children of one parent, 2 workers, 2 vCPUs),
	 * alternated with the plain kind's build (2026-12-05): futex calls
	 * per task 0.59-0.85 -> 0.03-0.06, CPU time per task 1.39-1.76 ->
	 * 1.14-1.47 us, medians of 8 runs 1.25 -> 1.49 M tasks/s (8 of 8
	 * won); in the machine's fast phase, minutes before, two pairs were
	 * level (3.66 -> 3.57, 3.58 -> 3.54) with the same drop in futex
	 * calls. Only a token with an ext has the lock; ext_init runs once
	 * per ext. */
	ctp__mutex_init_spin(&x->lock);
	ext_clear(x);
}

void ctp__token_init(ctp_token *t, uint8_t kind, uint32_t state,
                     struct ctp__token_ext *ext, bool tree)
{
	t->tree = tree;
	t->dslot = 0; /* a task object's is set by task.c */
	if (ext != NULL) {
		ext_init(ext);
		ext->gen = ctp__gen(); /* a task's is its pool's */
	}
	atomic_init(&t->ext, ext);
	ctp__token_reset(t, kind, state);
}

void ctp__token_reset(ctp_token *t, uint8_t kind, uint32_t state)
{
	/* the object is the caller's alone: relaxed */
	struct ctp__token_ext *x = atomic_load_explicit(&t->ext,
	    memory_order_relaxed);

	atomic_init(&t->state, state);
	atomic_init(&t->sleepers, 0);
	atomic_init(&t->refs, 1);
	atomic_init(&t->linked, 0);
	t->kind = kind & 3u;
	t->q = (struct ctp__tq){ 0 };
	t->opt = (struct ctp__topt){ 0 };
	if (t->tree) /* fixed for the object's life (ctp__token_init) */
		*ctp__tn(t) = (struct ctp__tnode){ 0 };
	if (x != NULL)
		ext_clear(x); /* its fd was closed when the object was freed */
}

struct ctp__token_ext *ctp__token_ext_get(ctp_token *t)
{
	struct ctp__token_ext *x = ext_of(t), *seen = NULL;

	if (x != NULL)
		return x;
	/* a task token's ext is the task's (struct ctp__task_ext, its
	 * token part first): its task part starts zeroed (no fire record,
	 * no isolated record) and is the task layer's to fill */
	if (t->kind == CTP__TOKEN_TASK)
		x = calloc(1, sizeof(struct ctp__task_ext));
	else
		x = malloc(sizeof(*x));
	if (x == NULL)
		return NULL;
	ext_init(x);
	/* acq_rel: our initialisation before any use of x by a thread that
	 * reads it (acquire); on a lost race, the winner's before ours */
	if (!atomic_compare_exchange_strong_explicit(&t->ext, &seen, x,
	    memory_order_acq_rel, memory_order_acquire)) {
		pthread_mutex_destroy(&x->lock);
		free(x);
		x = seen;
	}
	return x;
}

void ctp__token_release_fd(ctp_token *t)
{
	struct ctp__token_ext *x = ext_of(t);

	if (x != NULL && x->fd >= 0) {
		close(x->fd);
		x->fd = -1;
	}
}

void ctp__token_fini(ctp_token *t, bool free_ext)
{
	struct ctp__token_ext *x = ext_of(t);

	ctp__token_release_fd(t);
	if (x == NULL)
		return;
	pthread_mutex_destroy(&x->lock);
	if (free_ext)
		free(x);
}

/* ---- references --------------------------------------------------------- */

void ctp__token_ref(ctp_token *t)
{
	/* the caller already holds a reference: relaxed is enough */
	uint32_t old = atomic_fetch_add_explicit(&t->refs, 1,
	    memory_order_relaxed);

	assert(old != 0);
	(void)old;
}

bool ctp__token_tryref(ctp_token *t)
{
	uint32_t r = atomic_load_explicit(&t->refs, memory_order_relaxed);

	while (r != 0) {
		if (atomic_compare_exchange_weak_explicit(&t->refs, &r, r + 1,
		    memory_order_relaxed, memory_order_relaxed))
			return true;
	}
	return false;
}

/* Under p's lock: takes a dying c out of p's children (detach; p's firer
 * leaves out those it unlists as it walks: mark_children). */
static void children_remove(ctp_token *p, ctp_token *c)
{
	struct ctp__tnode *n = ctp__tn(c);

	CTP__ASSERT_HELD(&X(p)->lock);
	if (n->sib_prev != NULL)
		ctp__tn(n->sib_prev)->sib_next = n->sib_next;
	else
		X(p)->children = n->sib_next;
	if (n->sib_next != NULL)
		ctp__tn(n->sib_next)->sib_prev = n->sib_prev;
	n->sib_prev = n->sib_next = NULL;
}

/* t's parent: NULL for a token that has no tree node (it has none). */
static ctp_token *parent_of(const ctp_token *t)
{
	return t->tree ? (ctp_token *)(ctp__tn_word(t) & ~CTP__UNLISTED) :
	    NULL;
}

/* Takes a dying child out of its parent's children, under the parent's
 * lock. Returns the parent when that emptied the list: the list's
 * reference on it is now the caller's to drop; else NULL (the children
 * left hold it; p may go as soon as the lock is released). A child its
 * parent's firer unlisted is out already (mark_children): NULL. */
static ctp_token *detach(ctp_token *child)
{
	uintptr_t w = child->tree ? ctp__tn_word(child) : 0;
	ctp_token *p = (ctp_token *)(w & ~CTP__UNLISTED);
	bool last;

	if (w == 0)
		return NULL;
	ctp__tn_set_word(child, 0); /* the dying child is ours alone */
	if ((w & CTP__UNLISTED) != 0)
		return NULL;
	lock(p);
	children_remove(p, child);
	last = X(p)->children == NULL;
	unlock(p);
	return last ? p : NULL;
}

void ctp__token_put(ctp_token *t)
{
	ctp__token_put_n(t, 1);
}

/* t's last reference went: out of its parent's list (detach), then
 * freed. Returns the parent when that emptied the list (the list's
 * reference on it is then the caller's to drop), else NULL. */
static ctp_token *token_free(ctp_token *t)
{
	ctp_token *parent = detach(t);

	/* a list with children holds a reference: none is left */
	assert(ext_of(t) == NULL || ext_of(t)->children == NULL);
	if (t->kind == CTP__TOKEN_TASK) {
		up_of(t)->task_free((ctp_task *)t);
	} else {
		/* a standalone token: its ext is inline */
		ctp__token_fini(t, false);
		free(ctp__tn(t)); /* struct standalone's start */
	}
	return parent;
}

void ctp__token_put_n(ctp_token *t, uint32_t n)
{
	/* Freeing a token drops its reference on its parent, which may free
	 * the parent, and so on up a chain of any length: a loop, never a
	 * recursion per level. acq_rel: every use of an object happens
	 * before its free. */
	while (t != NULL) {
		uint32_t old = atomic_fetch_sub_explicit(&t->refs, n,
		    memory_order_acq_rel);

		assert(old >= n);
		if (old != n)
			return;
		n = 1; /* the list's reference, if t was its last child */
		t = token_free(t);
	}
}

/* Deferred detach (see the design notes). */
void ctp__token_put_n_deferred(ctp_token *t, uint32_t n,
                               struct ctp__detach_batch *db)
{
	uint32_t old = atomic_fetch_sub_explicit(&t->refs, n,
	    memory_order_acq_rel); /* as put_n's */

	assert(old >= n);
	if (old != n)
		return;
	/* acquire: pairs with the CAS that attached an ext (token_ext_get),
	 * though only NULL is acted on */
	if (!ctp__token_listed(t) ||
	    atomic_load_explicit(&t->ext, memory_order_acquire) != NULL) {
		/* in no list, or with something attached (an fd, an
		 * isolated run's record and output, watches): no batch, so
		 * nothing but the object waits (no parent reference to drop
		 * either when in no list: detach returns NULL then) */
		ctp_token *parent = token_free(t);

		if (parent != NULL)
			ctp__token_put_n(parent, 1); /* the list emptied */
		return;
	}
	/* one parent per batch (ctp__token_detach_before) */
	if (db->n == CTP__DETACH_BATCH ||
	    (db->n != 0 && parent_of(db->t[0]) != parent_of(t)))
		ctp__token_detach_flush(db);
	db->t[db->n++] = t;
}

void ctp__token_detach_before(struct ctp__detach_batch *db,
                              const ctp_token *next)
{
	/* a pointer compared, not followed: next's parent is alive (db's
	 * children of it, listed, hold it) whenever the two are equal */
	if (db->n != 0 && (next == NULL ||
	    parent_of(db->t[0]) != parent_of(next)))
		ctp__token_detach_flush(db);
}

void ctp__token_detach_flush(struct ctp__detach_batch *db)
{
	ctp_token *p;
	bool last;

	if (db->n == 0)
		return;
	/* the batch's one parent (put_n_deferred), alive: our children of
	 * it, listed, hold the list's reference until the last is out */
	p = parent_of(db->t[0]);
	lock(p);
	for (unsigned i = 0; i < db->n; i++) {
		assert(parent_of(db->t[i]) == p);
		/* as detach: the dying child is ours alone */
		ctp__tn_set_word(db->t[i], 0);
		children_remove(p, db->t[i]);
	}
	last = X(p)->children == NULL;
	unlock(p);
	/* p may go now unless `last` made its reference ours */
	for (unsigned i = 0; i < db->n; i++)
		(void)token_free(db->t[i]); /* out: detach is a no-op */
	db->n = 0;
	if (last)
		ctp__token_put_n(p, 1);
}

/* ---- trees -------------------------------------------------------------- */

int ctp__token_link(ctp_token *parent, ctp_token *child)
{
	struct ctp__tnode *cn = ctp__tn(child); /* made with one */
	struct ctp__token_ext *px;
	uint32_t s;

	if ((px = ctp__token_ext_get(parent)) == NULL)
		return -ENOMEM;
	pthread_mutex_lock(&px->lock);
	/* seq_cst: Dekker with the firer. `linked` is stored only under
	 * this lock, so a 1 read here was stored before our lock was taken:
	 * that store precedes our load of the state in the seq_cst order
	 * (happens-before), and a firer that read 0 fired before it, so
	 * before our load. Storing it again would only take the parent's
	 * line from the other submitters of its children, at each child. */
	if (atomic_load_explicit(&parent->linked, memory_order_relaxed) == 0)
		atomic_store(&parent->linked, 1);
	s = atomic_load(&parent->state);
	if (fired(s)) {
		pthread_mutex_unlock(&px->lock);
		return ctp__reason_of(s);
	}
	/* the list's one reference on its parent, for all its children */
	if (px->children == NULL)
		ctp__token_ref(parent);
	ctp__tn_set_word(child, (uintptr_t)parent);
	/* prepended: a fire walks the children newest first, so a queued
	 * task at the front of its queue (a worker's next) is fired last,
	 * after the running children whose fire frees their workers. Oldest
	 * first let those workers take queued siblings the walk had not
	 * reached yet: faster walks, but more tasks started after the cancel
	 * than there are workers (test_hostile's
	 * parent_cancel_mid_run_bounds_executions) */
	cn->sib_prev = NULL;
	cn->sib_next = px->children;
	if (px->children != NULL)
		ctp__tn(px->children)->sib_prev = child;
	px->children = child;
	pthread_mutex_unlock(&px->lock);
	return 0;
}

/* ---- watches ------------------------------------------------------------ */

static void watch_free(struct ctp_watch *w)
{
	if (w->internal)
		return;
	ctp__token_put(w->token);
	free(w);
}

/* Takes w out of t's pending list. Called with t's lock held. */
static void watch_unlink(ctp_token *t, struct ctp_watch *w)
{
	struct ctp__token_ext *x = X(t);

	CTP__ASSERT_HELD(&x->lock);
	if (w->prev != NULL)
		w->prev->next = w->next;
	else
		x->watches = w->next;
	if (w->next != NULL)
		w->next->prev = w->prev;
	else
		x->watches_tail = w->prev;
	w->next = w->prev = NULL;
}

/* w has run. Called with t's lock held: the unwatcher re-takes the lock
 * before it frees w (or leaves the stack frame of an internal one), so
 * the wake cannot touch a freed watch. */
static void watch_done(struct ctp_watch *w)
{
	/* release: fn's effects before the unwatcher returns */
	atomic_store_explicit(&w->state, CTP__WATCH_DONE, memory_order_release);
	ctp__futex_wake(&w->state, INT_MAX);
}

/* The library's own watches of a fired token: they only bump an event
 * count, so they run under the lock, all of them before any user code. */
static void run_internal_watches(ctp_token *t)
{
	struct ctp_watch *w, *next;

	CTP__ASSERT_HELD(&X(t)->lock);
	for (w = X(t)->watches; w != NULL; w = next) {
		next = w->next;
		if (!w->internal)
			continue;
		watch_unlink(t, w);
		w->fn(w->arg);
		watch_done(w);
	}
}

/* The user's watches of a fired token, in registration order, each outside
 * the lock. Only user watches are left: the internal ones ran at the wake,
 * and no watch can be added once the token has fired. */
static void run_user_watches(ctp_token *t)
{
	struct ctp_watch *w;

	lock(t);
	while ((w = X(t)->watches) != NULL) {
		watch_unlink(t, w);
		w->runner = pthread_self();
		atomic_store_explicit(&w->state, CTP__WATCH_RUNNING,
		    memory_order_relaxed); /* read under the lock */
		unlock(t);
		w->fn(w->arg);
		lock(t);
		if (w->free_on_done) {
			/* fn unwatched itself: it is ours to free */
			unlock(t);
			watch_free(w);
			lock(t);
			continue;
		}
		watch_done(w);
	}
	unlock(t);
}

static void watch_init(struct ctp_watch *w, ctp_token *t, void (*fn)(void *),
                       void *arg, bool internal)
{
	w->token = t;
	w->fn = fn;
	w->arg = arg;
	w->next = w->prev = NULL;
	atomic_init(&w->state, CTP__WATCH_PENDING);
	w->free_on_done = false;
	w->internal = internal;
}

/* Appends w unless t has fired; returns false if it had. t has an ext. */
static bool watch_add(ctp_token *t, struct ctp_watch *w)
{
	struct ctp__token_ext *x = X(t);

	pthread_mutex_lock(&x->lock);
	atomic_store(&t->linked, 1);  /* seq_cst: Dekker with the firer */
	if (fired(atomic_load(&t->state))) {
		pthread_mutex_unlock(&x->lock);
		return false;
	}
	w->prev = x->watches_tail;
	if (x->watches_tail != NULL)
		x->watches_tail->next = w;
	else
		x->watches = w;
	x->watches_tail = w;
	pthread_mutex_unlock(&x->lock);
	return true;
}

/* True when this thread is inside fire call f (its own, or a done or a
 * watcher that f runs). */
static bool on_this_thread(const struct ctp__fire *f)
{
	const struct ctp__fire *g;

	for (g = ctp__tls.fires; g != NULL; g = g->prev) {
		if (g == f)
			return true;
	}
	return false;
}

/* Returns true when the caller must free w now. */
static bool watch_remove(struct ctp_watch *w)
{
	ctp_token *t = w->token;

	lock(t);
	for (;;) {
		uint32_t s = atomic_load_explicit(&w->state,
		    memory_order_acquire);

		if (s == CTP__WATCH_DONE)
			break;
		if (s == CTP__WATCH_PENDING) {
			/* Not fired: it will never run. Fired: the fire call
			 * runs every watch that was pending at its CAS, so
			 * wait for it, unless this thread is inside that
			 * call (a watcher or done of the same fire): then it
			 * is taken out unrun, rather than wait for itself.
			 * t->fire is live here: t fired, its watches have not
			 * all run. It is NULL until the firer walked t, and
			 * the firer is not this thread then. */
			if (!fired(atomic_load(&t->state)) ||
			    (X(t)->fire != NULL &&
			    on_this_thread(X(t)->fire))) {
				watch_unlink(t, w);
				break;
			}
		} else if (pthread_equal(w->runner, pthread_self())) {
			/* called from inside fn: the firer frees it later */
			w->free_on_done = true;
			unlock(t);
			return false;
		}
		unlock(t);
		ctp__futex_wait(&w->state, s, NULL);
		lock(t);
	}
	unlock(t);
	return true;
}

bool ctp__token_watch_internal(ctp_token *t, struct ctp_watch *w,
                               void (*fn)(void *), void *arg)
{
	watch_init(w, t, fn, arg, true);
	return watch_add(t, w);
}

void ctp__token_unwatch_internal(struct ctp_watch *w)
{
	(void)watch_remove(w);
}

int ctp_token_watch(ctp_token *token, void (*fn)(void *arg), void *arg,
                    ctp_watch **watch)
{
	struct ctp_watch *w;

	if (token == NULL || fn == NULL || watch == NULL)
		return -EINVAL;
	if (ctp__forked(ctp__token_gen(token)))
		return -ECHILD;
	if (ctp__token_ext_get(token) == NULL)
		return -ENOMEM;
	w = malloc(sizeof(*w));
	if (w == NULL)
		return -ENOMEM;
	ctp__token_ref(token);
	watch_init(w, token, fn, arg, false);
	*watch = w;
	if (!watch_add(token, w)) {
		/* already fired: run it here, now; it counts as done */
		atomic_store_explicit(&w->state, CTP__WATCH_DONE,
		    memory_order_relaxed);
		fn(arg);
	}
	return 0;
}

void ctp_token_unwatch(ctp_watch *watch)
{
	if (watch != NULL && !ctp__forked(ctp__token_gen(watch->token)) &&
	    watch_remove(watch))
		watch_free(watch);
}

/* ---- firing ------------------------------------------------------------- */

/* The CAS that fires t, setting `extra` (CTP__FIRING for the root of a
 * fire call) with the reason; false if it had fired or its task had
 * finished. */
static bool fire_cas(ctp_token *t, int reason, uint32_t extra,
                     uint32_t *old_phase)
{
	uint32_t old = atomic_load_explicit(&t->state, memory_order_relaxed);
	uint32_t phase, next;

	do {
		phase = old & CTP__PHASE_MASK;
		if (fired(old) || phase == CTP__PHASE_DONE ||
		    phase == CTP__PHASE_CANCELLED)
			return false;
		next = (uint32_t)-reason | extra |
		    (phase == CTP__PHASE_QUEUED ? CTP__PHASE_CANCELLED : phase);
		/* seq_cst: the Dekker pairs with `sleepers` and `linked` */
	} while (!atomic_compare_exchange_weak(&t->state, &old, next));
	*old_phase = phase;
	return true;
}

/* The walk of fire call f: its root first if it is walked, then its walk
 * list (the root is on no list: it may have no tree node). next is read
 * when asked, so a walk list that grows while it is walked (phase 1) is
 * walked whole. */
static ctp_token *walk_first(const struct ctp__fire *f)
{
	return f->walk_root ? f->root : f->list;
}

static ctp_token *walk_next(const struct ctp__fire *f, ctp_token *c)
{
	return c == f->root ? f->list : ctp__tn(c)->fire_next;
}

/* The tasks f caught queued, its root first if it was one of them. */
static ctp_token *caught_first(const struct ctp__fire *f)
{
	return f->caught_root ? f->root : f->caught;
}

static ctp_token *next_caught(const struct ctp__fire *f, ctp_token *c)
{
	return c == f->root ? f->caught : ctp__tn(c)->caught_next;
}

/* Appends t to the list at **tail (fire_next is written only by the fire
 * call that owns t's place in the list). */
static void append(ctp_token *t, ctp_token ***tail)
{
	ctp__tn(t)->fire_next = NULL;
	**tail = t;
	*tail = &ctp__tn(t)->fire_next;
}

/* Appends a task caught queued to the caught list (caught_next: a task
 * may also be on the walk list, below). */
static void append_caught(ctp_token *t, ctp_token ***tail)
{
	ctp__tn(t)->caught_next = NULL;
	**tail = t;
	*tail = &ctp__tn(t)->caught_next;
}

/* Under t's lock, by t's firer in mark_children: a task caught queued
 * leaves t's children (the list's reference on t is the firer's to drop
 * if this empties it), so its death takes no lock of t's and drops
 * nothing on t (detach): a group cancel costs no lock per task. Only the
 * firer of t walks t's children (a token fires once; a finished task is
 * walked through by its parent's firer only), and nothing follows the
 * child's `parent` or its sibling links any more: they are left as they
 * are (stale), and the walk relinks the children it keeps (see
 * mark_children). */
static void unlist(ctp_token *c)
{
	ctp__tn_set_word(c, ctp__tn_word(c) | CTP__UNLISTED);
}

/* Phase 1 for f's root or one token t of f's walk list (t has fired, or
 * is a finished task walked through): under t's lock (the only lock held), fires each
 * child. A task caught queued goes to f's caught list on the pool's
 * reference (borrowed until the end) and is retired at once (no user
 * code), unless it is quiet: then it goes into qb, whose batches are
 * finished and freed here, each at its end (task.c,
 * ctp__task_retire_quiet); any other token it fired goes, with a
 * reference, to the walk
 * list, which the caller walks breadth first, so a tree of any depth or
 * width needs one lock at a time and no recursion (a queued task has no
 * child: its fn never ran). A child that another fire call is firing
 * (CTP__FIRING) goes, with a reference, to f->waits, unless this thread
 * is inside a fire call's callbacks (see "Two firers"). Children cannot be
 * added to a fired token, and a child seen under t's lock is valid memory
 * (it unlinks itself under that lock before it is freed, unless this
 * call unlists it here: a task caught queued, see unlist). */
static void mark_children(ctp_token *t, struct ctp__fire *f,
                          ctp_token ***walk, ctp_token ***caught,
                          struct ctp__batch *b, struct ctp__batch *qb,
                          struct ctp__guards *g)
{
	ctp_token *c, *next;
	const ctp_pool *guarded = NULL; /* a pool of g, the last seen */
	ctp_token *kept = NULL; /* the last child left in t's list */
	uint32_t phase;
	bool listed; /* t's list had children: it held a reference on t */

	if (atomic_load(&t->linked) == 0) /* seq_cst: Dekker with link */
		return;
	lock(t);
	X(t)->fire = f;
	listed = X(t)->children != NULL;
	/* The list is rebuilt as it is walked: a child unlisted writes
	 * nothing (no neighbour's link: most children of a group cancel go
	 * so), one kept is linked after the last one kept. Nothing reads
	 * the list before the walk ends: it is t's lock's, held throughout,
	 * and nothing called here takes that lock or looks at t's
	 * children. */
	for (c = X(t)->children; c != NULL; c = next) {
		const struct ctp__pool_up *up = NULL; /* c's, if a task */
		const ctp_pool *cp = NULL;            /* c's, if a task */
		uint32_t s;
		bool one = false; /* a guard for c alone (task.c) */
		bool won;

		next = ctp__tn(c)->sib_next;
		if (c->kind == CTP__TOKEN_TASK) {
			cp = ctp__task_pool((ctp_task *)c);

			up = cp->up;
			/* a pool this call guards already needs no look */
			if (cp != guarded) {
				one = up->task_guard(g, (ctp_task *)c);
				guarded = one ? NULL : cp;
			}
		}
		won = fire_cas(c, f->reason, 0, &phase);
		if (won && phase == CTP__PHASE_QUEUED) {
			unlist(c);
			/* quiet (task.c): finished with its batch, here;
			 * the common case joins the open batch inline */
			if (!waited_on(c) && (ctp__batch_add_quiet(qb,
			    (ctp_task *)c, cp, f->reason) ||
			    up->task_retire_quiet((ctp_task *)c, f->reason, qb)))
				goto next;
			append_caught(c, caught);
			up->task_retire((ctp_task *)c, f->reason, b);
			/* something sleeps on it (a periodic task between
			 * runs, a ctp_task_wait): walk it too */
			if (waited_on(c) && ctp__token_tryref(c))
				append(c, walk);
			goto next;
		}
		if (won && ctp__token_tryref(c))
			append(c, walk);
		/* else if won: dying, no sleeper, watch or child left */
		ctp__tn(c)->sib_prev = kept; /* kept: linked after `kept` */
		if (kept != NULL)
			ctp__tn(kept)->sib_next = c;
		else
			X(t)->children = c;
		kept = c;
	next:
		if (one)
			up->task_unguard_one((ctp_task *)c);
		if (won)
			continue;
		s = atomic_load(&c->state);
		if (!fired(s) && (s & CTP__PHASE_MASK) == CTP__PHASE_DONE) {
			/* A task that finished unfired: its token does not
			 * fire (its task is over), but tokens and tasks linked
			 * under it while its fn ran are in the tree: walk it,
			 * unfired (wake and watchers skip it). */
			if (ctp__token_tryref(c))
				append(c, walk);
		} else if (ctp__tls.fires == NULL && (s & CTP__FIRING) &&
		    ctp__token_tryref(c)) {
			ctp__tn(c)->wait_next = f->waits;
			f->waits = c;
		}
	}
	if (kept != NULL)
		ctp__tn(kept)->sib_next = NULL;
	else
		X(t)->children = NULL;
	unlock(t);
	/* every child unlisted: the list's reference on t goes; this call
	 * holds its own (the caller's or the walk list's), so t stays */
	if (listed && kept == NULL)
		ctp__token_put(t);
}

/* Phase 2a: wakes whatever waits on t inside the library: sleepers, the
 * fd, the internal watches of ctp_queue_pop/push. No user code. */
static void wake(ctp_token *t)
{
	if (!fired(atomic_load(&t->state)))
		return; /* a finished task walked through, not fired */
	if (atomic_load(&t->sleepers) != 0)
		token_futex_wake(t);
	if (atomic_load(&t->linked) == 0)
		return;
	lock(t);
	if (X(t)->fd >= 0) {
		uint64_t one = 1;

		/* cannot block (EFD_NONBLOCK) or overflow (at most 2 writes) */
		(void)!write(X(t)->fd, &one, sizeof(one));
	}
	run_internal_watches(t);
	unlock(t);
}

/* Waits until the fire call whose root is t has ended. If that is a timer
 * fire whose end still waits in the callback queue, ends it here instead:
 * the callback thread may be the one waiting (an end it runs meets a
 * subtree the timer fired later), and no end waits for one queued behind
 * it. */
static void wait_fire_end(ctp_token *t)
{
	uint32_t s;

	if (t->kind == CTP__TOKEN_TASK) {
		ctp_task *task = (ctp_task *)t;
		struct ctp__fire *f = up_of(&task->token)->timer_claim(task);

		if (f != NULL) {
			ctp__token_fire_end(f);
			ctp__token_put(t); /* the timer's, handed over */
		}
	}

	atomic_fetch_add(&t->sleepers, 1); /* seq_cst: Dekker with end_fire */
	while ((s = atomic_load(&t->state)) & CTP__FIRING)
		ctp__futex_wait(&t->state, s, NULL);
	atomic_fetch_sub(&t->sleepers, 1);
}

static void end_fire(ctp_token *t)
{
	if (parent_of(t) == NULL)
		return; /* no CTP__FIRING was set */
	atomic_fetch_and(&t->state, ~CTP__FIRING);
	if (atomic_load(&t->sleepers) != 0)
		ctp__futex_wake(&t->state, INT_MAX);
}

/* Phases 1 and 2a of a fire call whose CAS on t won (phase: t's phase
 * before it). */
static void fire_walk(ctp_token *t, int reason, uint32_t phase,
                      struct ctp__fire *f)
{
	struct ctp__batch batch, quiet;
	struct ctp__guards guards = { .n = 0 };
	ctp_token **walk = &f->list, **caught = &f->caught, *c;

	ctp__batch_init(&batch, NULL);
	ctp__batch_init(&quiet, NULL);
	CTP__PERTURB();
	/* t lives on the caller's reference until the end has returned; it
	 * is on none of the lists (the root may have no tree node) */
	f->root = t;
	f->list = f->caught = f->waits = NULL;
	f->reason = reason;
	f->walk_root = true;
	f->caught_root = false;
	if (phase == CTP__PHASE_QUEUED) {
		/* a queued task: nothing below it, nothing waits on it,
		 * unless it is a periodic task between runs (waited_on):
		 * walk it too */
		f->caught_root = true;
		up_of(t)->task_retire((ctp_task *)t, reason, &batch);
		f->walk_root = waited_on(t);
	}
	/* Phase 1: mark, breadth first (the walk list grows as it is
	 * walked); the tasks caught queued leave their queues at once */
	for (c = walk_first(f); c != NULL; c = walk_next(f, c))
		mark_children(c, f, &walk, &caught, &batch, &quiet, &guards);
	if (batch.pool != NULL)
		batch.pool->up->batch_end_retire(&batch);
	if (quiet.pool != NULL)
		quiet.pool->up->batch_end_quiet(&quiet);
	/* the retire segments now hold their pools' `finishing` */
	guards_drop(&guards);
	CTP__PERTURB();
	/* Phase 2a: wake: it is what makes running work stop */
	for (c = walk_first(f); c != NULL; c = walk_next(f, c))
		wake(c);
}

/* The start of every fire call: guards a task's pool (task.c, fire
 * guards: before the CAS), then the CAS on t. False if it lost (the guard
 * is dropped). */
static bool fire_start(ctp_token *t, int reason, struct ctp__guards *g,
                       uint32_t *phase)
{
	if (t->kind == CTP__TOKEN_TASK)
		(void)up_of(t)->task_guard(g, (ctp_task *)t);
	/* Only a firer of an ancestor can wait for this call: a token with
	 * no parent (immutable while referenced) needs no CTP__FIRING */
	if (!fire_cas(t, reason, parent_of(t) != NULL ? CTP__FIRING : 0,
	    phase)) {
		guards_drop(g);
		return false;
	}
	return true;
}

int ctp__token_fire_begin(ctp_token *t, int reason, struct ctp__fire *f)
{
	struct ctp__guards guard = { .n = 0 };
	uint32_t phase;

	if (!fire_start(t, reason, &guard, &phase))
		return -EALREADY;
	fire_walk(t, reason, phase, f);
	guards_drop(&guard);
	return (int)(phase >> CTP__PHASE_SHIFT);
}

int ctp__token_adopt(ctp_token *t)
{
	struct ctp__fire f;
	uint32_t s = atomic_load(&t->state);

	/* only the worker process's adopters (under its relay lock) clear
	 * the bit, so it cannot vanish between the load and the and */
	if (!(s & CTP__PENDING))
		return -EALREADY;
	atomic_fetch_and(&t->state, ~CTP__PENDING);
	fire_walk(t, ctp__reason_of(s), s & CTP__PHASE_MASK, &f);
	ctp__token_fire_end(&f);
	return 0;
}

void ctp__token_fire_end(struct ctp__fire *f)
{
	struct ctp__batch batch;
	ctp_token *c, *next, *root = f->root;

	ctp__batch_init(&batch, NULL);
	f->prev = ctp__tls.fires;
	ctp__tls.fires = f;
	/* Phase 2b: finish every task caught queued (done runs here); each
	 * drops the pool's reference it lent us (the batch holds the pool) */
	for (c = caught_first(f); c != NULL; c = next) {
		next = next_caught(f, c);
		up_of(c)->task_complete_unrun((ctp_task *)c, f->reason,
		    &batch);
	}
	if (batch.pool != NULL)
		batch.pool->up->batch_end_complete(&batch);
	CTP__PERTURB();
	/* Phase 2c: the user's watchers (the root lives on its caller's
	 * reference, the others on ours) */
	for (c = walk_first(f); c != NULL; c = walk_next(f, c)) {
		if (atomic_load(&c->linked) != 0 &&
		    fired(atomic_load(&c->state)))
			run_user_watches(c);
	}
	/* Phase 3: subtrees other calls were firing when we met them */
	for (c = f->waits; c != NULL; c = next) {
		next = ctp__tn(c)->wait_next;
		wait_fire_end(c);
		ctp__token_put(c);
	}
	ctp__tls.fires = f->prev;
	/* Drop the walk list's references (the root is on none: it lives on
	 * its caller's). f may live in the root task (dfire): read nothing
	 * of it after the root's caller may drop it, and no list pointer
	 * after a put. */
	c = f->list;
	end_fire(root);
	for (; c != NULL; c = next) {
		next = ctp__tn(c)->fire_next;
		ctp__token_put(c);
	}
}

int ctp__token_fire(ctp_token *t, int reason)
{
	struct ctp__guards guard = { .n = 0 };
	struct ctp__fire f;
	uint32_t phase;

	if (!fire_start(t, reason, &guard, &phase))
		return -EALREADY;
	/* A leaf: a task caught queued with no parent and nothing sleeping
	 * or hanging on it (waited_on; a cancel by handle, the shutdown's
	 * drop step; a thread in ctp_task_wait on it sends the cancel the
	 * long way, which is as correct and only slower). Nothing is below
	 * it, nobody can wait for this call (no CTP__FIRING): task.c retires
	 * and completes it in one pass, under the guard taken before the
	 * CAS. The call is on this thread's fire list while done runs, as
	 * in ctp__token_fire_end. */
	if (phase == CTP__PHASE_QUEUED && parent_of(t) == NULL &&
	    !waited_on(t)) {
		f.root = t;
		f.list = f.caught = f.waits = NULL;
		f.walk_root = f.caught_root = false;
		f.reason = reason;
		f.prev = ctp__tls.fires;
		ctp__tls.fires = &f;
		up_of(t)->task_fire_queued((ctp_task *)t, reason);
		ctp__tls.fires = f.prev;
		return CTP_TASK_QUEUED;
	}
	fire_walk(t, reason, phase, &f);
	guards_drop(&guard);
	ctp__token_fire_end(&f);
	return (int)(phase >> CTP__PHASE_SHIFT);
}

/* ---- public API --------------------------------------------------------- */

bool ctp_token_cancelled(const ctp_token *token)
{
	/* acquire: what the firer did before firing is visible after this */
	return fired(atomic_load_explicit(&token->state, memory_order_acquire));
}

int ctp_token_reason(const ctp_token *token)
{
	if (token == NULL)
		return -EINVAL;
	return ctp__reason_of(atomic_load_explicit(&token->state,
	    memory_order_acquire));
}

int ctp_token_sleep(ctp_token *token, int64_t ns)
{
	struct timespec abs;
	bool timed;

	if (token == NULL || !ctp__duration_ok(ns))
		return -EINVAL;
	if (ctp__forked(ctp__token_gen(token)))
		return -ECHILD;
	timed = ctp__deadline(ns, &abs);
	for (;;) {
		uint32_t s = atomic_load(&token->state);
		int r;

		if (fired(s))
			return ctp__reason_of(s);
		if (ns == 0)
			return 0;
		atomic_fetch_add(&token->sleepers, 1);
		s = atomic_load(&token->state); /* re-check after announcing */
		if (fired(s)) {
			atomic_fetch_sub(&token->sleepers, 1);
			return ctp__reason_of(s);
		}
		ctp__worker_blocked(1);
		r = token_futex_wait(token, s, timed ? &abs : NULL);
		ctp__worker_blocked(-1);
		atomic_fetch_sub(&token->sleepers, 1);
		if (r == -ETIMEDOUT)
			return ctp_token_reason(token);
	}
}

int ctp_token_fd(ctp_token *token)
{
	struct ctp__token_ext *x;
	int fd;

	if (token == NULL)
		return -EINVAL;
	if (ctp__forked(ctp__token_gen(token)))
		return -ECHILD;
	if ((x = ctp__token_ext_get(token)) == NULL)
		return -ENOMEM;
	lock(token);
	if (x->fd < 0) {
		fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fd < 0) {
			fd = -errno;
			unlock(token);
			return fd;
		}
		x->fd = fd;
		atomic_store(&token->linked, 1); /* seq_cst: Dekker with firer */
		if (fired(atomic_load(&token->state))) {
			uint64_t one = 1;

			(void)!write(fd, &one, sizeof(one));
		}
	}
	fd = x->fd;
	unlock(token);
	return fd;
}

/* A standalone token, its tree node and its ext, one allocation (the
 * node first: freed as ctp__tn(t)) */
struct standalone {
	struct ctp__tnode     n;
	ctp_token             t;
	struct ctp__token_ext x;
};
_Static_assert(offsetof(struct standalone, t) == sizeof(struct ctp__tnode),
    "the node right before the token");

int ctp_token_create(ctp_token **token, ctp_token *parent)
{
	struct standalone *s;
	ctp_token *t;
	int r;

	if (token == NULL)
		return -EINVAL;
	if (parent != NULL && ctp__forked(ctp__token_gen(parent)))
		return -ECHILD;
	s = malloc(sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	t = &s->t;
	ctp__token_init(t, CTP__TOKEN_STANDALONE, 0, &s->x, true);
	if (parent != NULL) {
		r = ctp__token_link(parent, t);
		if (r == -ENOMEM) { /* the parent's ext */
			ctp__token_fini(t, false);
			free(s);
			return r;
		}
		if (r != 0) /* born fired, with the parent's reason */
			atomic_store(&t->state, (uint32_t)-r);
	}
	*token = t;
	return 0;
}

int ctp_token_cancel(ctp_token *token)
{
	int r;

	if (token == NULL)
		return -EINVAL;
	if (ctp__forked(ctp__token_gen(token)))
		return -ECHILD;
	r = ctp__token_fire(token, -ECANCELED);
	return r < 0 ? r : 0;
}

void ctp_token_release(ctp_token *token)
{
	/* a task's token belongs to its task: releasing it is a no-op */
	if (token != NULL && token->kind == CTP__TOKEN_STANDALONE &&
	    !ctp__forked(ctp__token_gen(token)))
		ctp__token_put(token);
}
