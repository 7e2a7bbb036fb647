/*
 * ctpool internals shared by the source files.
 *
 * Map of the sources
 *   ring.c      the ck_ring calls of ctp_queue (the only file built
 *               without TSan)
 *   platform.c  futex, clocks, ck_ec ops, thread names, ctp_strerror
 *   queue.c     ctp_queue (public) and the event-count waits that
 *               everything uses
 *   token.c     tokens: the state word, sleepers, fd, watchers, trees
 *   task.c      the task state machine, completion, handles, free list
 *   timer.c     the per-pool deadline and due heaps and their thread
 *   pool.c      pool lifetime, the run queue, scheduling (delays,
 *               priorities, periodic tasks), the worker loop, submit,
 *               shutdown
 *   proc.c      worker processes: the fork server, the worker process's
 *               loop, the messages (knows nothing of pools)
 *   isolated.c  isolated tasks: the pool's side (slots, dispatch, kill)
 *
 * Lock order (a lock may be taken while holding only locks above it):
 *   pool->lock            shutdown / join bookkeeping
 *   token->lock           one at a time (firing walks a tree holding only
 *                         the lock of the token whose children it marks;
 *                         unlinking a child takes only its parent's); a
 *                         task's retire, under its parent's lock, takes
 *                         the timer lock below
 *   timer->lock
 *   pool->runq.lock       the run queue: queued tasks, admission count,
 *                         idle workers, each worker's current (taken
 *                         under a token lock by a fire's retire; no
 *                         other lock is taken while it is held)
 *                         A quiet batch's end (task.c) runs under a
 *                         token lock too, after its unqueue: it frees
 *                         objects, which takes no lock (a CAS per batch
 *                         of 32; for a destroyed pool, perhaps the
 *                         pool's last free, which takes none either)
 *   pool->alloc_lock      the allocators' part of the task free list
 *                         (taken once per batch of objects)
 *   iso->lock             the worker-process slots (isolated.c; never
 *                         held while another lock is taken)
 *   server->lock          the fork server's control socket (proc.c;
 *                         never with iso->lock held)
 * No user code (task fn, done, watcher, thread hook) ever runs under any of
 * them. Debug builds assert the lock a function needs (CTP__ASSERT_HELD)
 * and that no reference count is taken from 0 or dropped below it.
 *
 * The protocols: every announce-then-look (Dekker) pair, and every other
 * shared atomic whose order matters. "A | B" = one side stores/RMWs A and
 * then loads B, the other side the reverse; both seq_cst, so at least one
 * of them sees the other. (Statistics are relaxed snapshots; single-writer
 * counters are a relaxed load and a store.)
 *
 *  word (file)               writers -> readers            pairs with / order
 *  -------------------------  ---------------------------  --------------------
 *  token.state (token.c)      firer CAS, worker start CAS  the one winner of
 *                             and finish -> everyone       QUEUED; acquire on
 *                                                          start/read
 *  token.state|linked         adder: linked=1, load state  firer: CAS state,
 *                             (child, watch, fd; lock; a   load linked
 *                             child's skips a 1 it reads)
 *  token.state|sleepers       sleeper: sleepers++, load    firer: CAS state,
 *                             state, futex wait            load sleepers, wake
 *  token.state FIRING|        fire-end waiter: sleepers++, end_fire: clear bit,
 *    sleepers                 load state, futex wait       load sleepers, wake
 *  token.refs                 any holder                   acq_rel on the drop
 *                                                          that frees (a load
 *                                                          of n by the last
 *                                                          holder of a task
 *                                                          nobody can find:
 *                                                          drop_unfindable)
 *  watch.state (token.c)      firer under token lock       unwatcher under the
 *                                                          lock; futex wake
 *                                                          inside the lock
 *  token.state FINISHED|      task waiter: sleepers++,     finisher: status,
 *    sleepers (task.c)        load state, futex wait       fetch_or FINISHED,
 *                                                          load sleepers, wake
 *  queue.count|full_waiters   producer: full_waiters++,    releaser: count -=,
 *    (queue.c, ctp_queue)     load count                   load full_waiters,
 *                                                          bump not_full
 *  queue.count CLOSED bit     close: fetch_or; admission   no CAS admits after
 *                             CAS fails on it              the bit
 *  ck_ec32 not_empty/not_full waiter: snapshot, look,      changer: change,
 *    (queue.c), and runq's    wait while equal (runq: the  bump (runq: after
 *    not_full/drained         snapshot under runq.lock)    the lock)
 *  runq (pool.c)              everything under runq.lock; the scout's poll
 *                             of `head` is a relaxed hint, then the lock
 *  finished,accepted|         finisher: count, load        waiter: waiters++,
 *    idle_waiters (pool.c)    idle_waiters, bump idle_seq  snapshot idle_seq,
 *                                                          pool_idle, wait
 *  finished, accepted         pool_idle reads finished     admission counts
 *    (pool.c; finished: the   (modulo 2^32), then          accepted with the
 *    workers' and the high    accepted                     slot, under
 *    half of finishing)                                    runq.lock, before
 *                                                          the task can run
 *  timer.armed|token.state    arm (first due-heap          fire: CAS the token,
 *    (pool.c, timer.c)        reservation), then look at   then load armed; true
 *                             the token (reschedule,       -> take timer->lock
 *                             under the locks; submit:     to take the task out
 *                             before the task is visible)  of the due heap
 *  task ext's ran (pool.c)    worker, before its CAS       fire that caught it
 *                             RUNNING -> QUEUED (release)  queued (after its CAS)
 *  pool.stopping (pool.c)     shutdown: store under        worker reads it
 *                             runq.lock                    under runq.lock
 *  pool.alive (pool.c)        threads (exit)               shutdown: futex wait
 *                                                          for 0 (grace)
 *  pool.finishing (pool.c)    fire-call segments: +1       shutdown after the
 *                             before their first slot is   drop step: loads
 *                             given back, -1 after dones   finishing_seq, then
 *                             (off the workers, with their finishing; CASes
 *                             finished count, high half);  WAITER in, futex
 *                             the last bumps finishing_seq wait on the seq
 *                             and wakes if WAITER          (grace)
 *  fire guard: finishing|     firer: finishing +1 (its     popper (worker, drop
 *    task.state, and          task's pool), then the CAS   step): slot back,
 *    alive|finishing          on the task (task.c "Fire    its start CAS or
 *    (task.c, pool.c)         guards"); -1 after its       fire fails on the
 *                             retire pass                  fired state
 *                                                          (acquire); exit;
 *                                                          shutdown reads
 *                                                          alive, then
 *                                                          finishing
 *  worker.busy, timer.cb_busy worker (clear, then the      shutdown past grace:
 *                             finished count's release)    alive <= their sum
 *                                                          -> abandon
 *  pool.stopped (pool.c)      first shutdown after its     later shutdowns:
 *                             cancel step; wake            futex wait for 1
 *  pool.freed (task.c)        pushers CAS release (a       allocator exchange
 *                             batch); DEAD under           acquire, DEAD check
 *                             alloc_lock                   under alloc_lock
 *  pool.started (pool.c)      worker after on_thread_start create waits for n
 *  pool.refs                  owner, threads, task objects acq_rel on the drop
 *                                                          that frees
 *  ring commit_waiters        producer waiting for an      committer: commit,
 *    (ring.c)                 earlier commit: count, load  fence, load count,
 *                             p_tail, futex wait           wake
 *  ctp__fork_gen (platform.c) child handler, one thread    relaxed
 *  page token.state|sleepers  parent: CAS RUNNING ->        worker sleeper:
 *    and |linked (proc.c,     fired|PENDING, load          sleepers++ / link,
 *    across processes)        sleepers, linked; shared     load state; shared
 *                             futex wakes                  futex wait
 *  page relay (proc.c)        parent: bump, wake           relay thread: load,
 *                                                          check PENDING, wait
 *  fire_ctx.armed             the watch, before its        dispatcher after
 *    (isolated.c)             writes                       unwatch (ordered by
 *                                                          the unwatch)
 */
#ifndef CTP_INTERNAL_H
#define CTP_INTERNAL_H

#include <assert.h>
#include <ck_ec.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctpool.h"

#define CTP__HIDDEN __attribute__((visibility("hidden")))

/* Debug builds (meson debug and debugoptimized; release sets NDEBUG):
 * assert that the calling thread holds mutex m, from glibc's record of
 * its owner (the library is for Linux and glibc, like its futexes). */
#ifndef NDEBUG
#include <unistd.h>
#define CTP__ASSERT_HELD(m) assert((m)->__data.__owner == gettid())
#else
#define CTP__ASSERT_HELD(m) ((void)0)
#endif

struct ctp__worker;

/* ---- platform.c --------------------------------------------------------- */

/* Absolute CLOCK_MONOTONIC deadline for a relative duration. Returns false
 * for CTP_FOREVER (no deadline). Saturates instead of overflowing. */
CTP__HIDDEN bool ctp__deadline(int64_t ns, struct timespec *abs);
CTP__HIDDEN int64_t ctp__now_ns(void);
CTP__HIDDEN bool ctp__duration_ok(int64_t ns);

/* Futex on a 32-bit word. wait returns 0 (woken or value differed),
 * -ETIMEDOUT, or -EINTR; abs may be NULL (no limit). */
CTP__HIDDEN int  ctp__futex_wait(_Atomic uint32_t *word, uint32_t expected,
                                 const struct timespec *abs);
CTP__HIDDEN void ctp__futex_wake(_Atomic uint32_t *word, int count);
/* The same on a word shared with another process (not FUTEX_PRIVATE). */
CTP__HIDDEN int  ctp__futex_wait_shared(_Atomic uint32_t *word,
                                        uint32_t expected,
                                        const struct timespec *abs);
CTP__HIDDEN void ctp__futex_wake_shared(_Atomic uint32_t *word, int count);

/* Initialises a mutex for short critical sections that several threads
 * take often (the run queue's, a token's): glibc's adaptive kind. Cannot
 * fail. */
CTP__HIDDEN void ctp__mutex_init_spin(pthread_mutex_t *m);

CTP__HIDDEN extern const struct ck_ec_mode ctp__ec_mode;

CTP__HIDDEN void ctp__set_thread_name(const char *prefix, const char *suffix);

/* Fork generation: 0 in the process that loaded the library, one more in
 * each child of fork() (a pthread_atfork child handler, registered when
 * the library is loaded). The library's only global; written only in the
 * child right after the fork, when it has one thread. Every pool, token
 * and queue records the generation it was made in; in a child the calls
 * that would lock, wait or write a shared fd on an object from before the
 * fork return -ECHILD instead (its locks may be held by threads that do
 * not exist in the child, and its pool has no threads there). */
CTP__HIDDEN extern _Atomic uint32_t ctp__fork_gen;

static inline uint32_t ctp__gen(void)
{
	return atomic_load_explicit(&ctp__fork_gen, memory_order_relaxed);
}

/* True for an object made before this process was forked from its maker. */
static inline bool ctp__forked(uint32_t gen)
{
	return gen != ctp__gen();
}

/* Schedule perturbation, compiled in only by test builds (meson
 * -Dperturb=true): at each CTP__PERTURB() point a thread may yield or sleep
 * a few microseconds, chosen by a per-thread PRNG seeded from the
 * environment (CTP_PERTURB_SEED, CTP_PERTURB_RATE; platform.c). It widens
 * the race windows between the steps of submit, dequeue, cancel, token
 * firing and shutdown so the stress tests visit more interleavings. */
#ifdef CTP_PERTURB
CTP__HIDDEN void ctp__perturb(void);
#define CTP__PERTURB() ctp__perturb()
#else
#define CTP__PERTURB() ((void)0)
#endif

/* ---- ring.c ------------------------------------------------------------- */

/* A ck_ring of pointers in MPMC mode. size is a power of two >= 2 and the
 * ring holds at most size - 1 items. */
struct ctp__ring {
	void    *ck;    /* ck_ring_t, allocated in ring.c (cache-line aligned) */
	void    *buf;   /* ck_ring_buffer_t[size] */
	unsigned size;
	_Atomic uint32_t commit_waiters; /* producers asleep on ck's p_tail */
};

CTP__HIDDEN int  ctp__ring_init(struct ctp__ring *r, unsigned size);
CTP__HIDDEN void ctp__ring_fini(struct ctp__ring *r);
/* Returns after a full fence that follows the commit (a Dekker store for
 * whoever then reads a sleeper count). */
CTP__HIDDEN bool ctp__ring_push(struct ctp__ring *r, void *item);
CTP__HIDDEN bool ctp__ring_pop(struct ctp__ring *r, void **item);
/* A snapshot: no committed item (reservations not yet committed do not
 * count; tombstones do). */
CTP__HIDDEN bool ctp__ring_empty(const struct ctp__ring *r);

/* ---- queue.c ------------------------------------------------------------ */

/*
 * A bounded queue: a ring of twice the capacity, with admission counted apart
 * in `count`, so the ring never refuses an admitted item (public queue) and
 * a pool can retire an admitted item without removing it from the ring.
 */
#define CTP__CACHELINE 64
#define CTP__LINE _Alignas(CTP__CACHELINE) /* apart from the fields before */

struct ctp_queue {
	struct ctp__ring ring;      /* the items; written by ring.c only */
	size_t           capacity;  /* immutable: a power of two */
	uint32_t         gen;       /* fork generation it was made in */
	CTP__LINE _Atomic size_t count; /* admitted items (<= capacity), and the
	                               CTP__QUEUE_CLOSED bit once closed: one
	                               word, so no admission CAS can succeed
	                               after the close */
	CTP__LINE ck_ec32_t not_empty; /* bumped after every ring push and on
	                               close (producers' line) */
	CTP__LINE ck_ec32_t not_full; /* bumped on close and after a slot
	                               release while full_waiters != 0 */
	_Atomic uint32_t full_waiters; /* producers that may sleep on not_full */
};

#define CTP__QUEUE_CLOSED ((size_t)1 << (sizeof(size_t) * 8 - 1))

static inline size_t ctp__queue_count(const struct ctp_queue *q)
{
	return atomic_load(&q->count) & ~CTP__QUEUE_CLOSED;
}

static inline bool ctp__queue_closed(const struct ctp_queue *q)
{
	return (atomic_load(&q->count) & CTP__QUEUE_CLOSED) != 0;
}

/* Closes admission (idempotent) and wakes every waiter. */
CTP__HIDDEN void ctp__queue_shut(struct ctp_queue *q);
CTP__HIDDEN int  ctp__queue_init(struct ctp_queue *q, size_t capacity);
CTP__HIDDEN void ctp__queue_fini(struct ctp_queue *q);
CTP__HIDDEN size_t ctp__round_capacity(size_t capacity);

/* Takes a slot, waiting on not_full up to abs (NULL: no limit; nowait: do not
 * wait). Returns 0, -EAGAIN (full, nowait), -ETIMEDOUT, -ESHUTDOWN (closed),
 * or the token's reason. */
CTP__HIDDEN int  ctp__queue_reserve(struct ctp_queue *q, ctp_token *token,
                                    bool nowait, const struct timespec *abs);
/* Gives back a slot taken by reserve (an item that left, or a reservation
 * that was not used) and wakes waiting producers; once the queue is closed
 * also not_empty's waiters (a pop of a closed queue waits there for the
 * slots still held). */
CTP__HIDDEN void ctp__queue_unreserve(struct ctp_queue *q);
CTP__HIDDEN void ctp__queue_unreserve_n(struct ctp_queue *q, size_t n);

/* Waits until the event count moves away from snap, token fires, or abs
 * passes. Returns 0 (moved, or a spurious wake: re-check), -ETIMEDOUT or the
 * token's reason (within about 1 ms of the fire when a task's token's first
 * wait could not get its ext: queue.c). token and abs may be NULL. */
CTP__HIDDEN int  ctp__ec_wait(ck_ec32_t *ec, uint32_t snap, ctp_token *token,
                              const struct timespec *abs);
CTP__HIDDEN uint32_t ctp__ec_value(const ck_ec32_t *ec);
CTP__HIDDEN void ctp__ec_bump(ck_ec32_t *ec);

/* ---- token.c ------------------------------------------------------------ */

/*
 * The token state word (32 bits, also a futex word):
 *   bits 0..7   -reason, 0 while not fired      (CTP__REASON_MASK)
 *   bits 8..10  task phase, 0 for standalone tokens (CTP__PHASE_*)
 * Firing and a task's start are one CAS on this word, so "fired before it
 * started" and "started before it fired" cannot both be true.
 */
#define CTP__REASON_MASK 0xffu
#define CTP__PHASE_SHIFT 8
#define CTP__PHASE_MASK  (0x7u << CTP__PHASE_SHIFT)
#define CTP__PHASE(p)    ((uint32_t)(p) << CTP__PHASE_SHIFT)
#define CTP__PHASE_NONE      CTP__PHASE(0)
#define CTP__PHASE_QUEUED    CTP__PHASE(CTP_TASK_QUEUED)
#define CTP__PHASE_RUNNING   CTP__PHASE(CTP_TASK_RUNNING)
#define CTP__PHASE_DONE      CTP__PHASE(CTP_TASK_DONE)
#define CTP__PHASE_CANCELLED CTP__PHASE(CTP_TASK_CANCELLED)
/* Set with the reason by the CAS that wins a ctp__token_fire on this token
 * (the root of that fire call) when it has a parent (only an ancestor's
 * firer can wait for it), cleared when the call has finished the whole
 * subtree it fired (token.c, "Two firers in one tree"). */
#define CTP__FIRING          (1u << 11)
/* A remote token only (below): set with the reason by the parent process's
 * CAS, which fires the word but not the rest of the token (children,
 * internal and user watches); cleared by the worker process's thread that
 * then runs that part (ctp__token_adopt). */
#define CTP__PENDING         (1u << 12)
/* A task's only: its status is published (task.c, publish: after its
 * terminal phase, its done and `status`; set only when it has a handle,
 * the one thing that can wait for it). ctp_task_wait sleeps on `state`
 * counted in `sleepers`, like ctp_token_sleep. */
#define CTP__FINISHED        (1u << 13)

/* A remote token is the token an isolated task's function gets in its
 * worker process (proc.c). It lives in a page shared with the parent, which
 * fires its state word directly (CAS RUNNING -> RUNNING|reason|PENDING and
 * a shared futex wake), so ctp_token_cancelled and ctp_token_sleep see the
 * fire with no hop through another thread; every futex op on its `state`
 * is therefore a shared one. Its phase is RUNNING while a function runs and
 * DONE between functions (a fire then fails), and it has no parent. */
enum ctp__token_kind { CTP__TOKEN_STANDALONE = 1, CTP__TOKEN_TASK = 2,
                       CTP__TOKEN_REMOTE = 3 };

/*
 * A token's rare parts: what only a token with children, watches or an fd
 * uses (a child's own links are in its tree node, struct ctp__tnode: a
 * group of n child tasks needs no ext but its parent's). A standalone token and an isolated
 * task's page token carry theirs inline (ctp__token_init); a task object
 * gets one the first time its token needs it (ctp__token_ext_get: its fn
 * making children, watching it, waiting on it, asking for its fd) and
 * keeps it until the object is freed for good, so steady state allocates
 * nothing and a plain task's object is not made bigger by any of it.
 */
struct ctp__token_ext {
	pthread_mutex_t  lock;      /* protects children, watches, fd, fire */
	uint32_t         gen;       /* a standalone or page token's fork
	                               generation, set by ctp__token_init (a
	                               task's is its pool's) */
	struct ctp__fire *fire;     /* the fire call that fired this token, set
	                               when it walks it (only tokens that are
	                               `linked`); lock. A token fires once, so
	                               while one of its watches is pending after
	                               the fire, this record is live */
	ctp_token       *children;  /* first child (tokens and task tokens) */
	struct ctp_watch *watches;  /* pending watches, in registration order */
	struct ctp_watch *watches_tail;
	int              fd;        /* eventfd, -1 until ctp_token_fd */
};

/* A task token's queue bits: runq.lock (pool.c). */
struct ctp__tq {
	uint8_t state : 3;      /* enum ctp__qstate */
	uint8_t ref_owed : 1;   /* a fire unlinked it (runq.lock): that
	                           fire drops the queue's reference with
	                           the pool's, at the task's completion
	                           (read by the fire's own threads, in
	                           order) */
};

/* A task token's submit bits: set before publication (submit), or while
 * the object is nobody else's (allocation, free), and only read
 * meanwhile, so one byte of bits is safe (no two threads write it at
 * once). */
struct ctp__topt { /* one byte (ctp__topt_any reads it whole) */
	uint8_t handle : 1;     /* submitted with a handle */
	uint8_t prio : 2;       /* list index (CTP__NPRIO) */
	uint8_t periodic : 1;   /* period > 0 */
	uint8_t timed : 1;      /* has a deadline (ext.deadline) */
	uint8_t isolated : 1;   /* ext.iso is set */
	uint8_t done : 1;       /* submitted with a done: its word (which
	                           every object of size 1 or 3 has) is not
	                           NULL. A bit here too, so a fire's quiet
	                           check reads no line past the token */
};
_Static_assert(sizeof(struct ctp__topt) == 1, "the submit bits are a byte");

struct ctp_token {
	/* what firing a tree reads per token comes first, together (the
	 * token is 8-byte aligned, after its tree node in a malloc'd block
	 * or part of a task carved from a slab: these share lines with
	 * their neighbours, not a line of their own; no field needs more
	 * than 8) */
	_Atomic uint32_t state;     /* reason | phase; see above */
	_Atomic uint32_t sleepers;  /* threads asleep on `state`:
	                               ctp_token_sleep, a fire's end waiting
	                               for FIRING, ctp_task_wait */
	_Atomic uint32_t refs;      /* for a task token: the task's references */
	_Atomic uint8_t  linked;    /* 1 once it may have children, watches or
	                               an fd: firing must then take ext->lock
	                               (ext is attached before it is set) */
	/* immutable for the object's life (a byte of its own: the bytes
	 * beside it are written while it is read) */
	uint8_t          kind : 2;  /* enum ctp__token_kind; set again, to
	                               the same, when a task object is reused */
	uint8_t          tree : 1;  /* 1: a struct ctp__tnode comes right
	                               before the token in memory (a
	                               standalone token, a task submitted with
	                               a parent); only such a token can have a
	                               parent */
	uint8_t          dslot : 1; /* a task object only: a word for its done
	                               comes right after the object (task.c,
	                               "Sizes") */
	/* A task token's, kept for its task in bytes the token would pad
	 * (task.c: a plain task's object is 56 bytes); 0 in other tokens.
	 * Two bytes, so a queue write never shares a location with a read
	 * of the submit bits. */
	struct ctp__tq   q;         /* runq.lock */
	struct ctp__topt opt;       /* set before publication */
	/* NULL until attached (a task's token only), then fixed until the
	 * object is freed for good: set once by a CAS (acq_rel), read with
	 * acquire, or after `linked` (whoever sets linked attached it first) */
	struct ctp__token_ext *_Atomic ext;
};

_Static_assert(sizeof(struct ctp_token) == 24,
    "a token's hot part is 24 bytes");

/*
 * A token's place in a tree: its parent and siblings, and the links of
 * the fire calls that reach it from above. Only a token that can have a
 * parent has one, just before the token in the same allocation
 * (ctp__tn): a standalone token, a task submitted with a parent. A root
 * of a fire call is never on that call's lists (struct ctp__fire keeps
 * it apart), and only a call that fired its parent can put a token on
 * one, so a task with no parent (a plain task, a handle's) needs none
 * of it, and its object is 32 bytes smaller (task.c, "Sizes").
 */
struct ctp__tnode {
	_Atomic uintptr_t parent;   /* the parent (a token is 8-byte aligned)
	                               | CTP__UNLISTED; read and written
	                               through ctp__tn_word and
	                               ctp__tn_set_word
	                               (relaxed: the parent's firer sets the
	                               bit while a direct cancel of this
	                               token may read the word; every other
	                               order comes from the locks and refs).
	                               The parent is immutable while
	                               referenced, and alive while the
	                               token is in its children (its list
	                               holds a reference: token.c, "Trees
	                               and lifetime"); once the bit is set
	                               it is only compared with NULL, never
	                               followed: it may dangle.
	                               The bit (unlisted): the firer of its
	                               parent caught it queued and took it
	                               out of the parent's children (token.c,
	                               mark_children); its death then takes
	                               no lock of the parent's. Set under
	                               the parent's lock before that firer
	                               drops the task's references; read at
	                               the death, which the last drop
	                               (acq_rel on refs) orders after it, and
	                               by that firer itself when it drops
	                               them (drop_unfindable) */
	ctp_token       *sib_next;  /* in parent's ext->children: protected
	                               by the parent's lock, not by ours */
	/* One word for a link the token needs while it is in its parent's
	 * children and one it needs only after it has left them: a task on
	 * a caught list was unlisted first, by the same call, under the
	 * parent's lock (token.c, mark_children), and nothing reads or
	 * writes an unlisted token's sib_prev (its death skips the unlink,
	 * the walk relinks only the children it keeps, and a fired parent
	 * gets no new children). */
	union {
		ctp_token   *sib_prev;  /* in parent's ext->children, as
		                           sib_next; stale once `unlisted` */
		ctp_token   *caught_next; /* the caught list of the fire call
		                           that fired it (a periodic task
		                           between runs is on its walk list
		                           too); written only by that call's
		                           thread, after it unlisted the task */
	};
	/* One word for two lists a token is never on at once. Only the
	 * call whose CAS fired the token from above puts it on its walk
	 * list; only a call that lost the CAS to a call firing the token as
	 * its root (CTP__FIRING, which only a root's CAS sets) puts it on
	 * its wait list, and a root is on none of its own call's lists. A
	 * token fires once, so one of the two, if either, uses the word. */
	union {
		ctp_token   *fire_next; /* the walk list of the fire call that
		                           fired it from above; written only by
		                           the thread whose CAS fired this
		                           token */
		ctp_token   *wait_next; /* list of the subtrees one fire call
		                           waits for; written only by the firer
		                           of this token's parent (the one
		                           thread that walks the parent's
		                           children), when another call fired
		                           this token as its root */
	};
};
/* 32 bytes: a child task's object is 88, 96 with a done word (task.c,
 * "Sizes"; bench_ctpool cancel --by group, 100,000 children, alternated
 * run by run: a tree node 8 bytes longer cost 6.7% of the rate) */
_Static_assert(sizeof(struct ctp__tnode) == 32, "a tree node is 4 words");

/* The token right after it is 8-byte aligned, all any of its fields
 * needs (a standalone token's block is malloc's, 16-byte aligned; a task
 * object carved from a slab is 8-byte aligned: task.c, "Slabs"). */
_Static_assert(sizeof(struct ctp__tnode) % 8 == 0, "tnode keeps alignment");

/* The tree node of a token that has one (t->tree). */
static inline struct ctp__tnode *ctp__tn(const ctp_token *t)
{
	assert(t->tree);
	return (struct ctp__tnode *)(void *)((char *)(uintptr_t)t -
	    sizeof(struct ctp__tnode));
}

/* The parent word's bit: unlisted (struct ctp__tnode, `parent`). */
#define CTP__UNLISTED ((uintptr_t)1)

/* t's parent word (t has a tree node): 0, or the parent | CTP__UNLISTED */
static inline uintptr_t ctp__tn_word(const ctp_token *t)
{
	return atomic_load_explicit(&ctp__tn(t)->parent, memory_order_relaxed);
}

static inline void ctp__tn_set_word(ctp_token *t, uintptr_t w)
{
	atomic_store_explicit(&ctp__tn(t)->parent, w, memory_order_relaxed);
}

enum ctp__watch_state { CTP__WATCH_PENDING, CTP__WATCH_RUNNING,
                        CTP__WATCH_DONE };

struct ctp_watch {
	ctp_token       *token;     /* public watches hold a token reference */
	void           (*fn)(void *arg);
	void            *arg;
	struct ctp_watch *next;     /* in token->watches; token->lock */
	struct ctp_watch *prev;
	_Atomic uint32_t state;     /* enum ctp__watch_state; futex word */
	pthread_t        runner;    /* thread running fn; token->lock */
	bool             free_on_done; /* unwatched from inside fn; token->lock */
	bool             internal;  /* on a waiter's stack: never freed */
};

/* ext: the token's inline ext (standalone and page tokens), or NULL (a
 * task's: attached when needed). */
/* tree: a struct ctp__tnode comes right before t (ctp__tn). */
CTP__HIDDEN void ctp__token_init(ctp_token *t, uint8_t kind, uint32_t state,
                                 struct ctp__token_ext *ext, bool tree);
/* Closes the fd and, with free_ext, frees a task's attached ext. */
CTP__HIDDEN void ctp__token_fini(ctp_token *t, bool free_ext);
/* A task object's token between uses (task.c): its ext (if any) stays
 * with the object, its mutex made once; free closes the fd only, reuse
 * resets the rest. */
CTP__HIDDEN void ctp__token_reset(ctp_token *t, uint8_t kind, uint32_t state);
CTP__HIDDEN void ctp__token_release_fd(ctp_token *t);
/* t's ext, attached now if it had none; NULL when out of memory. */
CTP__HIDDEN struct ctp__token_ext *ctp__token_ext_get(ctp_token *t);
/* One fire call in progress (token.c). On the firer's stack, or for the
 * timer's fires in the task's `dfire`, carried from the timer thread
 * (begin) to the timer-callback thread (end). */
struct ctp__fire {
	ctp_token        *root;    /* the token this call fired first */
	ctp_token        *list;    /* the walk list below the root: every
	                              token it fired but the tasks it caught
	                              queued (except periodic ones with
	                              something linked), and finished tasks it
	                              walked through, breadth first, by
	                              ctp__tn(t)->fire_next; each with a
	                              reference of this call */
	ctp_token        *caught;  /* the tasks below the root it caught
	                              queued, in the order it caught them, by
	                              ctp__tn(t)->caught_next, each on the
	                              pool's reference (borrowed until its
	                              done has run); not the quiet ones, which
	                              the mark pass finished (task.c,
	                              ctp__task_retire_quiet) */
	bool              walk_root;   /* the root is walked, before `list`
	                                  (it lives on the caller's reference) */
	bool              caught_root; /* the root was caught queued: it is
	                                  completed before `caught` */
	ctp_token        *waits;   /* subtrees other fire calls are firing
	                              (CTP__FIRING), by wait_next, each with a
	                              reference; waited for before `end` returns */
	int               reason;
	struct ctp__fire *prev;    /* ctp__tls.fires: the fire calls this
	                              thread is inside */
	struct ctp__fire *next;    /* the timer-callback thread's queue */
};

/* Fires t with reason (a negative errno). Returns the phase the token had
 * when this call fired it (CTP__PHASE_*), or -EALREADY if it had already
 * fired or its task had finished. Before it returns: every descendant has
 * fired, every sleeper, fd and internal wait of the tree woke, every task
 * caught queued is finished (done ran), user watchers ran, and every
 * subtree that another fire call was firing has been finished by it. */
CTP__HIDDEN int  ctp__token_fire(ctp_token *t, int reason);
/* The same in two steps, for the timer: begin fires the tree, wakes its
 * waiters and retires the tasks caught queued (slots given back, counted,
 * off the deadline heap); it runs no user code. end (on another thread, in
 * order) runs their done, the user watchers, waits for other firers and
 * ends the fire. begin returns like ctp__token_fire; end only after begin
 * returned >= 0. */
CTP__HIDDEN int  ctp__token_fire_begin(ctp_token *t, int reason,
                                       struct ctp__fire *f);
CTP__HIDDEN void ctp__token_fire_end(struct ctp__fire *f);
/* A remote token whose word the parent fired (CTP__PENDING): clears the
 * bit and runs the rest of the fire here (children, wakes, watches).
 * Returns 0, or -EALREADY if no fire was pending. */
CTP__HIDDEN int  ctp__token_adopt(ctp_token *t);
/* Links child under parent unless parent has fired (a first child takes
 * the children list's reference on parent); returns 0 or the parent's
 * reason. */
CTP__HIDDEN int  ctp__token_link(ctp_token *parent, ctp_token *child);
CTP__HIDDEN void ctp__token_ref(ctp_token *t);
CTP__HIDDEN bool ctp__token_tryref(ctp_token *t);
CTP__HIDDEN void ctp__token_put(ctp_token *t);
CTP__HIDDEN void ctp__token_put_n(ctp_token *t, uint32_t n);
/* A worker's dying children of one parent, still in its list: taken out
 * and freed together, under one taking of the parent's lock (token.c,
 * "Deferred detach"). Only its worker touches it. */
#define CTP__DETACH_BATCH 32
struct ctp__detach_batch {
	unsigned   n;
	ctp_token *t[CTP__DETACH_BATCH];
};
/* ctp__token_put_n, except that a token whose last reference this is,
 * still in its parent's list and with no ext, goes into db instead of
 * being taken out at once (db is flushed first when full or when it holds
 * another parent's children) */
CTP__HIDDEN void ctp__token_put_n_deferred(ctp_token *t, uint32_t n,
                                           struct ctp__detach_batch *db);
/* Takes every token of db out of their parent's list and frees them */
CTP__HIDDEN void ctp__token_detach_flush(struct ctp__detach_batch *db);
/* Flushes db unless next (NULL: nothing) is a child of the same parent as
 * db's tokens: a worker calls it before it runs next, or waits, so its
 * batch holds nothing alive that next's run does not hold anyway. */
CTP__HIDDEN void ctp__token_detach_before(struct ctp__detach_batch *db,
                                          const ctp_token *next);
/*
 * Dropping references of a token no other thread can find without a
 * reference of its own: it has no parent, or its parent's firer took it
 * out of the parent's children (unlisted), and it is in no queue, heap
 * or list of the library. References are taken by holders (counted
 * already) and by ctp__token_tryref, which only the firer of a token's
 * parent calls, under the parent's lock, on the children listed there:
 * not on this one. So its count can only fall, and reading n proves the
 * caller's n are the last: no other thread can use the object, and the
 * read-modify-write is not needed (a group cancel's tasks: one atomic
 * fewer each). acquire: pairs with the acq_rel drops of the holders
 * before, as the RMW would (every use of the object happens before its
 * free). Not for a listed token (ctp__token_listed): that one is
 * dropped with ctp__token_put_n, which takes it out of its parent's list.
 * Returns true when the references were the last: the token holds no
 * reference on a parent, and the caller frees the object; false when
 * someone else frees it.
 */
static inline bool ctp__token_listed(const ctp_token *t)
{
	uintptr_t w;

	if (!t->tree)
		return false;
	w = ctp__tn_word(t);
	return w != 0 && (w & CTP__UNLISTED) == 0;
}
static inline bool ctp__token_drop_unfindable(ctp_token *t, uint32_t n)
{
	assert(!ctp__token_listed(t));
	/* the store keeps a free object's count at 0, as the RMW would;
	 * relaxed: no other thread reads it before the object is reused,
	 * which passes through the free lists' own release/acquire */
	if (atomic_load_explicit(&t->refs, memory_order_acquire) == n)
		atomic_store_explicit(&t->refs, 0, memory_order_relaxed);
	else if (atomic_fetch_sub_explicit(&t->refs, n,
	    memory_order_acq_rel) != n)
		return false;
	/* put_n's detach, without its call: no reference on a parent */
	if (t->tree)
		ctp__tn_set_word(t, 0);
	return true;
}
/* Registers an internal watch living on the caller's stack; returns false
 * when the token had already fired (fn is then not called). t's ext must
 * be attached (ctp__token_ext_get returned non-NULL). */
CTP__HIDDEN bool ctp__token_watch_internal(ctp_token *t, struct ctp_watch *w,
                                           void (*fn)(void *), void *arg);
CTP__HIDDEN void ctp__token_unwatch_internal(struct ctp_watch *w);

static inline int ctp__reason_of(uint32_t state)
{
	return -(int)(state & CTP__REASON_MASK);
}

/* ---- task.c ------------------------------------------------------------- */

struct ctp_task {
	ctp_token        token;     /* first member: &task->token == task;
	                               its q and opt bytes are the task's */
	/* What the queue, a cancel and completion read, together, right
	 * after the token (measured: a group cancel of 100,000 queued tasks
	 * touches each object's first line and these; spreading them over
	 * more lines cost a miss per task). Its pool is its slab's
	 * (ctp__task_pool); its done, if the object has a word for one, is
	 * right after it (ctp__task_done). */
	union {
		ctp_task *free_next; /* the next object of its free batch
		                        (task.c), owned by whoever holds the
		                        batch */
		ctp_task *qnext;     /* in the run queue (pool.c): runq.lock;
		                        a task leaves the queue before it can be
		                        freed */
	};
	union {
		ctp_task *qprev;     /* runq.lock; stale in a list's first
		                        task (pool.c, q_unhook) */
		ctp_task *free_batch; /* a batch's first object: the next batch
		                        in pool->freed or pool->spare */
	};
	void            *arg;
	union {
		ctp_task_fn fn;     /* set before publication, read by the
		                       worker that runs it; dead once it can
		                       no longer run (its last run returned, or
		                       a fire caught it queued), which is when
		                       `status` is written */
		int      status;    /* written by the task's finisher before
		                       CTP__FINISHED is set (publish) */
		unsigned free_count; /* the first object of a batch in
		                        pool->freed or pool->spare: how many
		                        objects the batch holds (task.c), so
		                        taking a batch walks none of them */
	};
};

/* The word for a task's done: right after the object (task.c, "Sizes").
 * NULL when the object has none (then its done is NULL). Set before
 * publication, then only read. */
static inline ctp_done_fn *ctp__task_done_slot(const ctp_task *t)
{
	if (!t->token.dslot)
		return NULL;
	return (ctp_done_fn *)(void *)((char *)(uintptr_t)t + sizeof(*t));
}

static inline ctp_done_fn ctp__task_done(const ctp_task *t)
{
	ctp_done_fn *d = ctp__task_done_slot(t);

	return d != NULL ? *d : NULL;
}

/* A slab of task objects of one size (task.c, "Slabs"): this header, then
 * the objects, each object_bytes apart, in a block of CTP__SLAB_BYTES
 * aligned to its size, so an object finds its header by masking its
 * address. */
struct ctp__slab {
	struct ctp__slab *next;     /* a chunk's first slab: the next chunk's,
	                               in pool->slabs; alloc_lock (task.c,
	                               "Slabs") */
	ctp_pool         *pool;     /* immutable */
};

#define CTP__SLAB_BYTES ((size_t)16384)

/* A task's pool: its slab's (the header is immutable). The object holds
 * a reference on it. */
static inline ctp_pool *ctp__task_pool(const ctp_task *t)
{
	return ((const struct ctp__slab *)(uintptr_t)((uintptr_t)t &
	    ~(uintptr_t)(CTP__SLAB_BYTES - 1)))->pool;
}

/*
 * A task's rare parts: its token's ext (first, so the token layer treats
 * it as one) and what only deadlines, delays, periods and isolated tasks
 * use. Attached at submit when the task is timed, delayed, periodic or
 * isolated (ctp__token_ext_get makes a task token's ext this size), or
 * when its token first needs its ext; kept with the object until it is
 * freed for good, so steady state allocates nothing.
 */
struct ctp__task_ext {
	struct ctp__token_ext tok;
	int64_t          deadline;  /* ns, CLOCK_MONOTONIC; valid if timed */
	size_t           heap_idx;  /* timer heap slot; timer->lock */
	struct ctp__fire *dfire;    /* the timer's fire record for this object
	                               (made for its first deadline, kept with
	                               the object, freed with it); written by
	                               the timer thread, then read by the
	                               timer-callback thread after the queue's
	                               lock */
	struct ctp__iso *iso;       /* an isolated task's record, else NULL;
	                               set before publication, freed with the
	                               object */
	/* scheduling (pool.c, "Scheduling") */
	int64_t          due;       /* when it is (or was last) due, ns; the
	                               due heap's key; timer->lock and
	                               runq.lock to write (while the task can
	                               be seen), either to read */
	int64_t          period;    /* > 0: periodic; set before publication */
	int64_t          resched;   /* a reschedule made while a periodic run
	                               went on: its next due time; -1 = none;
	                               runq.lock */
	size_t           due_idx;   /* due heap slot; timer->lock */
	bool             ran;       /* a periodic task ran once: written by its
	                               worker before the CAS that queues it
	                               again, read by a fire that catches it
	                               queued (after its CAS); cleared when
	                               the object is allocated (a new ext is
	                               calloc'd) */
	bool             dres;      /* holds a due heap reservation (the heap
	                               can always take it); timer->lock, set
	                               before publication or under runq.lock
	                               while it waits (a worker reads it after
	                               its pop); cleared when the object is
	                               allocated (a new ext is calloc'd) */
};

/* The ext of a task that has one (timed, scheduled, isolated, or its
 * token was linked). acquire: pairs with the attaching CAS. */
static inline struct ctp__task_ext *ctp__tx(const ctp_task *t)
{
	struct ctp__task_ext *x = (struct ctp__task_ext *)
	    atomic_load_explicit(&((ctp_task *)t)->token.ext,
	    memory_order_acquire);

	assert(x != NULL);
	return x;
}

/* The same, or NULL if it has none. */
static inline struct ctp__task_ext *ctp__tx_or_null(const ctp_task *t)
{
	return (struct ctp__task_ext *)atomic_load_explicit(
	    &((ctp_task *)t)->token.ext, memory_order_acquire);
}

/* Whether a task holds a due heap reservation (only a delayed, periodic
 * or rescheduled task, which has an ext by then, ever does). */
static inline bool ctp__task_dres(const ctp_task *t)
{
	struct ctp__task_ext *x = ctp__tx_or_null(t);

	return x != NULL && x->dres;
}

#define CTP__HEAP_NONE ((size_t)-1)

/* False for a task whose deadline comes no later than its due time: it is
 * never made due (linked) by its due time; its deadline ends it (pool.c
 * place and pool_promote, timer.c). Read under timer->lock. */
static inline bool ctp__task_due_first(const ctp_task *t)
{
	return !t->token.opt.timed || ctp__tx(t)->deadline > ctp__tx(t)->due;
}
/* pool->freed after ctp_pool_destroy: a freed task object goes to free() */
#define CTP__FREED_DEAD ((ctp_task *)(uintptr_t)1)

/* A task object for a submit (tree: with a tree node, for a task with a
 * parent; done: with a word for its done): 0, -ENOMEM, or -ESHUTDOWN once
 * the pool is destroyed (an abandoned thread of the pool submitting). */
CTP__HIDDEN int  ctp__task_alloc(ctp_pool *pool, bool tree, bool done,
                                  ctp_task **t);
/* Frees an object for good (the pool is destroyed): its pool reference. */
CTP__HIDDEN void ctp__task_dealloc(ctp_task *t);
/* Called when a task's last reference is dropped (from ctp__token_put). */
CTP__HIDDEN void ctp__task_free(ctp_task *t);
/* Gives a worker's cached free task objects to the pool. */
CTP__HIDDEN void ctp__task_cache_flush(struct ctp__worker *w);
/* ctp_pool_destroy: frees the pool's free lists (with this thread's
 * cache of its objects) and makes them DEAD, so objects freed later are
 * freed for good. */
CTP__HIDDEN void ctp__task_free_lists(ctp_pool *pool);
/* Frees the pool's slabs: called when its last reference goes, so no
 * object carved from them is in use. */
CTP__HIDDEN void ctp__task_slabs_free(ctp_pool *pool);
/*
 * A fire call finishes the tasks it caught queued in two passes over its
 * list, one pool at a time (a run of the list's tasks of one pool is a
 * "segment"; both passes cut the list the same way); a quiet one (no
 * done, no handle) in one pass, in batches of its own (below,
 * ctp__task_retire_quiet):
 *   retire   (no user code): off the deadline heap, the slot and the
 *            statistic counted in the batch; at each segment's start the
 *            pool's `finishing` is raised (before any slot is given back,
 *            so a shutdown that sees the queue empty sees it too), and at
 *            its end the batch's slots and statistics go to the pool;
 *   complete (done runs): done, publish, the finished count in the batch,
 *            the borrowed reference dropped; at each segment's end the
 *            finished count goes to the pool and `finishing` comes down.
 * The fire call borrows the pool's reference of every task it caught
 * queued until that task's done has run, and the last one of a complete
 * segment's until the segment's end: that object's own reference on its
 * pool keeps the pool valid under the pass.
 */
struct ctp__batch {
	ctp_pool *pool;
	ctp_task *held;   /* complete: the segment's last task, its borrowed
	                     reference dropped only at the segment's end (the
	                     object holds the pool meanwhile) */
	uint64_t  finished, cancelled, timed_out, dropped;
	uint64_t  completed; /* periodic series that ran (t->ran) */
	/* retire: tasks to take out of the run queue, in one lock */
	size_t    nout;
	ctp_task *out[32];
};
/* An empty batch for pool (NULL: none yet). `out` is left as it is:
 * only its first `nout` entries are read, and zeroing its 32 pointers
 * was most of the stores of a cancel by handle (callgrind). */
static inline void ctp__batch_init(struct ctp__batch *b, ctp_pool *pool)
{
	b->pool = pool;
	b->held = NULL;
	b->finished = b->cancelled = b->timed_out = b->dropped = 0;
	b->completed = 0;
	b->nout = 0;
}
CTP__HIDDEN void ctp__task_retire(ctp_task *t, int reason,
                                  struct ctp__batch *b);
/* A task a fire caught queued under a parent (unlisted by that fire) with
 * nothing linked or asleep on it (token.c, waited_on): if it is quiet (no
 * handle, no done, neither periodic nor isolated) it is retired into b
 * and returns true, and it is finished in one pass with the rest of b, at
 * b's end (ctp__batch_end_quiet: unqueue, count, free), in the fire's
 * mark phase: nothing of it is left for the complete pass. A batch of
 * quiet tasks holds its own segment of the pool's `finishing`, ended
 * when a task finds it full (32) or of another pool, or by the caller at
 * the end of the mark pass (so a full batch keeps its slots until the
 * next quiet task or that end: the same fire call). False:
 * untouched, the caller retires and completes it the two-pass way. */
CTP__HIDDEN bool ctp__task_retire_quiet(ctp_task *t, int reason,
                                        struct ctp__batch *b);
CTP__HIDDEN void ctp__batch_end_quiet(struct ctp__batch *b);

/* Counts a retired task's end by the fire's reason. */
static inline void ctp__batch_count(struct ctp__batch *b, int reason)
{
	if (reason == -ETIMEDOUT)
		b->timed_out++;
	else if (reason == -ESHUTDOWN)
		b->dropped++;
	else
		b->cancelled++;
}

/* Whether any of the submit bits set in `m` is set in t's (one test of
 * the byte: the compiler folds the mask) */
static inline bool ctp__topt_any(const ctp_task *t, struct ctp__topt m)
{
	uint8_t bits, mask;

	memcpy(&bits, &t->token.opt, 1);
	memcpy(&mask, &m, 1);
	return (bits & mask) != 0;
}

/* The submit bits that make a task other than quiet when a fire
 * catches it queued with nothing linked or asleep on it (token.c,
 * waited_on): a handle (publish, ctp_task_wait), a done, a periodic
 * series (it may have run: retire's DONE), an isolated task's record.
 * Such tasks take the two passes. */
#define CTP__TOPT_LOUD .handle = 1, .periodic = 1, .isolated = 1, .done = 1

static inline bool ctp__task_quiet(const ctp_task *t)
{
	return !ctp__topt_any(t, (struct ctp__topt){ CTP__TOPT_LOUD });
}

/* ctp__task_retire_quiet's common case, inline in the fire's walk (no
 * call per child): a quiet task with no deadline either (a timed one
 * takes the call, which takes it out of the heap) that joins the batch
 * already open for its pool, not full. Only writes b. False: nothing
 * done, the caller makes the call. */
static inline bool ctp__batch_add_quiet(struct ctp__batch *b, ctp_task *t,
                                        const ctp_pool *pool, int reason)
{
	if (ctp__topt_any(t, (struct ctp__topt){ CTP__TOPT_LOUD,
	    .timed = 1 }) || b->pool != pool ||
	    b->nout == sizeof(b->out) / sizeof(b->out[0]))
		return false;
	b->out[b->nout++] = t;
	ctp__batch_count(b, reason);
	return true;
}
/*
 * Fire guards. Before its CAS on a task's token a fire raises the task's
 * pool's `finishing` (a shutdown waits for it to come down), and lowers it
 * once its retire pass is over (the retire's own segment then holds it
 * until the dones have run). Without it, a worker or the shutdown's drop
 * step that pops the task between the firer's CAS and its retire would
 * give the last slot back, and a shutdown could return before the task's
 * done ran (found by the spin model, tests/model/ctpool.pml). One guard
 * per pool per fire call (a few pools); past that, one per task.
 */
struct ctp__guards {
	ctp_pool *pool[4];
	unsigned  n;
};
/* Guards t's pool for this fire call; true when it took a guard for t
 * alone, which the caller drops with ctp__task_unguard_one after t's CAS
 * (and retire). */
CTP__HIDDEN bool ctp__task_guard(struct ctp__guards *g, const ctp_task *t);
CTP__HIDDEN void ctp__task_unguard_one(const ctp_task *t);
/* After the retire pass: drops every pool guard of the fire call. */
CTP__HIDDEN void ctp__guards_drop(struct ctp__guards *g);
CTP__HIDDEN void ctp__task_complete_unrun(ctp_task *t, int reason,
                                          struct ctp__batch *b);
/* Ends the batch's segment (of either pass); the batch is then empty. */
CTP__HIDDEN void ctp__batch_end_retire(struct ctp__batch *b);
CTP__HIDDEN void ctp__batch_end_complete(struct ctp__batch *b);
/* A fire call's whole work on its root t, a task it caught queued with no
 * parent and nothing waiting on it (token.c, waited_on): retire and
 * complete in one pass (done runs here, under no library lock). The guard
 * the call raised on t's pool before its CAS serves as the segment's
 * `finishing` and is lowered here, after done. */
CTP__HIDDEN void ctp__task_fire_queued(ctp_task *t, int reason);
/* A worker ran the task: finish it with fn's status. */
CTP__HIDDEN void ctp__task_finish_ran(ctp_task *t, int status);
/* True once the task's done has returned (only for a handle's task). */
CTP__HIDDEN bool ctp__task_finished(const ctp_task *t);
/* QUEUED -> RUNNING unless its token fired first. */
CTP__HIDDEN bool ctp__task_start(ctp_task *t);

/* Per-thread context: which pool owns this thread, which task runs here, and
 * the done callbacks on this thread's stack (for -EDEADLK). */
struct ctp__done_frame {
	const ctp_pool         *pool;
	const ctp_task         *task;
	struct ctp__done_frame *prev;
};
/* A thread's allocation cache of one object size (task.c): task objects
 * of one pool, taken a batch at a time from the pool's free list or freed
 * by this thread. */
struct ctp__acache {
	ctp_pool *pool;      /* whose objects `list` holds; NULL when empty */
	ctp_task *list;      /* chained by free_next */
	unsigned  n;
};
/* Task object sizes (task.c, "Sizes"): 0 plain, 1 with a word for its
 * done, 2 with a tree node, 3 with both (task.c, size_for) */
#define CTP__NSIZES 4

struct ctp__tls {
	const ctp_pool         *pool;   /* worker or timer thread of this pool */
	struct ctp__worker     *worker; /* this thread's worker, if it is one */
	const ctp_task         *task;   /* task whose fn runs on this thread */
	struct ctp__done_frame *dones;  /* innermost done callback first */
	struct ctp__fire       *fires;  /* fire calls in progress here,
	                                   innermost first */
	struct ctp__acache      alloc[CTP__NSIZES]; /* this thread's spare
	                                   task objects, by size */
	bool                    alloc_keyed; /* the exit destructor that
	                                   gives them back is registered */
};
/* initial-exec: one instruction per access instead of a __tls_get_addr
 * call (the library is linked, not dlopen'ed late: glibc keeps room for a
 * small static TLS block of a later dlopen anyway) */
CTP__HIDDEN extern __thread struct ctp__tls ctp__tls
    __attribute__((tls_model("initial-exec")));
/* True when waiting for pool from this thread could deadlock. */
CTP__HIDDEN bool ctp__is_pool_context(const ctp_pool *pool);

/* ---- timer.c ------------------------------------------------------------ */

struct ctp__timer {
	pthread_mutex_t lock;
	pthread_cond_t  cond;       /* the timer thread sleeps here (MONOTONIC) */
	ctp_task      **heap;       /* min-heap on deadline; lock */
	size_t          len;        /* lock */
	size_t          cap;        /* lock */
	size_t          reserved;   /* slots promised to submits; lock */
	/* the due heap: delayed tasks (and periodic ones between runs) in
	 * CTP__Q_DELAYED, min-heap on task->due; each task that may wait in
	 * it holds a reservation (its ext's dres), so an insert never fails */
	ctp_task      **dues;       /* lock */
	size_t          dlen, dcap, dres; /* lock */
	_Atomic bool    armed;      /* set once, under lock, before the first
	                               reservation: a fire that reads it false
	                               (seq_cst, after its CAS) caught no task
	                               that can be in the due heap (pool.c,
	                               pool_unqueue) */
	bool            started;    /* both threads created; lock */
	bool            running;    /* the timer thread has not exited; lock */
	bool            stop;       /* lock */
	pthread_t       thread;     /* written under lock before `started` */
	/* the timer-callback thread: runs the end of the timer's fire calls
	 * (done callbacks, user watchers), so no callback delays a deadline */
	pthread_cond_t  cb_cond;    /* it sleeps here; lock */
	struct ctp__fire *cb_head;  /* fire calls whose end is due, FIFO; lock */
	struct ctp__fire *cb_tail;  /* lock */
	bool            cb_started; /* lock */
	pthread_t       cb_thread;  /* written under lock before `cb_started` */
	_Atomic uint32_t cb_busy;   /* 1 while it runs an end (user code);
	                               single writer, seq_cst clear */
};

CTP__HIDDEN int  ctp__timer_init(struct ctp__timer *tm);
CTP__HIDDEN void ctp__timer_fini(struct ctp__timer *tm);
/* Starts the threads if needed and promises a heap slot: 0, -ESHUTDOWN,
 * -ENOMEM (no memory, or a thread could not be started). */
CTP__HIDDEN int  ctp__timer_reserve(ctp_pool *pool);
CTP__HIDDEN void ctp__timer_unreserve(ctp_pool *pool);
/* Uses a promised slot: the task's token fires at t->deadline. */
CTP__HIDDEN void ctp__timer_add(ctp_pool *pool, ctp_task *t);
CTP__HIDDEN void ctp__timer_remove(ctp_pool *pool, ctp_task *t);
/* The due heap (timer->lock held): a reservation for one more task (starts
 * the threads, sets `armed`; 0, -ENOMEM, -ESHUTDOWN), its release, and the
 * heap operations; pool.c decides what goes in and comes out (the timer
 * thread calls pool_promote when the first task is due). */
CTP__HIDDEN int  ctp__timer_dreserve(ctp_pool *pool);
CTP__HIDDEN void ctp__timer_dunreserve(ctp_pool *pool);
CTP__HIDDEN void ctp__timer_dinsert(ctp_pool *pool, ctp_task *t);
CTP__HIDDEN void ctp__timer_ddelete(ctp_pool *pool, ctp_task *t);
/* Rebuilds the heap after its array was compacted (dues[0..dlen)). */
CTP__HIDDEN void ctp__timer_dheapify(ctp_pool *pool);
/* No more deadlines fire; the callback thread ends what is queued, then
 * both threads exit. */
CTP__HIDDEN void ctp__timer_stop(ctp_pool *pool);
/* Joins (or detaches) both threads, if they were started. */
CTP__HIDDEN void ctp__timer_join(ctp_pool *pool, bool detach);
/* 1 while the callback thread runs user code. */
CTP__HIDDEN uint32_t ctp__timer_busy(ctp_pool *pool);
/* If t's own timer fire call waits in the callback queue, takes it out
 * and returns it: the caller, which would otherwise wait for it, ends it
 * on its own thread (so no end waits for one queued behind it). */
CTP__HIDDEN struct ctp__fire *ctp__timer_claim(ctp_task *t);

/* ---- proc.c ------------------------------------------------------------- */

#define CTP__CHUNK      (64 * 1024) /* inline input, output chunks */
#define CTP__MAX_IO_DEFAULT ((size_t)64 << 20) /* ctp_pool_opts.max_io 0 */
#define CTP__PAGE_SIZE  4096        /* a worker process's shared page */
#define CTP__MSG_MAXFDS 4

enum ctp__msg_type {
	CTP__MSG_RUN = 1, /* parent -> worker: u fn, v input size if a memfd
	                     comes with it; else the input is the payload */
	CTP__MSG_OUT,     /* worker -> parent: payload = output bytes */
	CTP__MSG_RESULT,  /* worker -> parent: a status, b retire; payload =
	                     the last output bytes */
	CTP__MSG_DIED,    /* fork server -> parent, on the dead worker's
	                     socket: a 0 or -errno (replacement), b si_code, c
	                     si_status, u the replacement's pid; its 4 fds */
	CTP__MSG_HELLO,   /* fork server -> parent (control): a 0 or -errno,
	                     u pid; 4 fds: socket, pidfd, page, eventfd */
	CTP__MSG_SPAWN,   /* parent -> fork server: a slot */
	CTP__MSG_EXIT,    /* parent -> fork server */
};

struct ctp__msg {
	uint32_t type;
	int32_t  a, b, c;
	uint64_t u, v;
};

/* A worker process's page, shared with the parent. */
struct ctp__page {
	ctp_token        token; /* the function's token (CTP__TOKEN_REMOTE) */
	_Atomic uint32_t relay; /* futex: bumped by the parent's fire when
	                           token.linked (children or watches to run:
	                           the worker's relay thread adopts it) */
	_Atomic uint32_t taken; /* RUN messages the worker has read: a
	                           process that died before reading its task
	                           did not run it (the parent retries) */
	struct ctp__token_ext token_ext; /* token's, inline: only the worker
	                           process uses it (the parent fires the
	                           word alone) */
};
_Static_assert(sizeof(struct ctp__page) <= CTP__PAGE_SIZE, "page");

/* What the fork server and the workers are told at start. */
struct ctp__spawn_ctx {
	unsigned n;        /* worker processes (slots) */
	size_t   memory;   /* RLIMIT_AS, 0 = none */
	size_t   max_io;
	pid_t    parent;
	pid_t    server;   /* set by the fork server */
	char     name[16];
};

/* The parent's side of one worker process. */
struct ctp__proc {
	int               sock;  /* P: SEQPACKET to the worker */
	int               pidfd; /* to kill it (a pid is never reused under
	                            a pidfd) */
	int               efd;   /* its token's eventfd: written on fire,
	                            polled by the dispatcher */
	struct ctp__page *page;
	pid_t             pid;
};

/* The parent's side of the fork server. */
struct ctp__server {
	pthread_mutex_t lock;  /* the control socket: one request at a time */
	int             ctl;   /* lock; -1 once stopped */
	int             pidfd; /* lock */
	pid_t           pid;
};

CTP__HIDDEN int  ctp__pidfd_open(pid_t pid);
CTP__HIDDEN int  ctp__pidfd_kill(int pidfd);
CTP__HIDDEN int  ctp__msg_send(int fd, const struct ctp__msg *m,
                               const void *data, size_t len, const int *fds,
                               int nfds);
/* 0 (payload length in *len), -EPIPE at EOF, -EPROTO, -errno. Received
 * fds beyond *nfds are closed. */
CTP__HIDDEN int  ctp__msg_recv(int fd, struct ctp__msg *m, void *data,
                               size_t cap, size_t *len, int *fds, int *nfds);
/* Forks the fork server and cx->n workers into procs[] (s->lock must be
 * initialised): 0 or -errno; on failure nothing is left. */
CTP__HIDDEN int  ctp__server_start(struct ctp__server *s,
                                   const struct ctp__spawn_ctx *cx,
                                   struct ctp__proc *procs);
/* A new worker for slot (whose process is dead) into *p: 0 or -errno. */
CTP__HIDDEN int  ctp__server_spawn(struct ctp__server *s, unsigned slot,
                                   struct ctp__proc *p);
/* The fork server kills and reaps every worker, exits and is reaped.
 * Idempotent. */
CTP__HIDDEN void ctp__server_stop(struct ctp__server *s);
/* Takes a HELLO's or DIED's four fds into *p: 0 or -errno (fds closed). */
CTP__HIDDEN int  ctp__proc_adopt(struct ctp__proc *p, const struct ctp__msg *m,
                                 const int *fds, int nfds);
CTP__HIDDEN void ctp__proc_close(struct ctp__proc *p);

/* ---- isolated.c --------------------------------------------------------- */

struct ctp__iso;       /* one isolated task's record (ctp_task.iso) */
struct ctp__iso_pool;  /* a pool's worker processes (ctp_pool.iso) */

enum ctp__iso_outcome {
	CTP__ISO_RAN,      /* fn returned (or never reached a process: see
	                      unrun) */
	CTP__ISO_KILLED,   /* killed after its token fired: stats.killed */
	CTP__ISO_CRASHED,  /* its process died: stats.crashed */
	CTP__ISO_UNRUN,    /* the token fired before it reached a process:
	                      counted by reason, state CANCELLED */
	CTP__ISO_NOPROC,   /* no process could be made: -EAGAIN, crashed,
	                      state CANCELLED */
};

CTP__HIDDEN int  ctp__iso_create(ctp_pool *pool);
/* At the end of a shutdown's grace: kill every running isolated task. */
CTP__HIDDEN void ctp__iso_kill_all(ctp_pool *pool);
/* Stops the fork server and every worker (idempotent). */
CTP__HIDDEN void ctp__iso_stop(ctp_pool *pool);
CTP__HIDDEN void ctp__iso_free(ctp_pool *pool);
/* One isolated task's record, kept with its task object (task->iso):
 * written by isolated.c, freed with the object (task.c). */
struct ctp__iso {
	ctp_isolated_fn fn;
	void           *in;       /* the input copy, freed once sent */
	size_t          in_len;
	char           *out;      /* output received; written by the
	                             dispatcher, read after the task finished */
	size_t          out_len, out_cap;
	int             exit_signal;
	enum ctp__iso_outcome outcome;
};

static inline void ctp__iso_task_free(struct ctp__iso *iso)
{
	free(iso->in);
	free(iso->out);
	free(iso);
}
/* Makes the record of an isolated task of pool (ctp_pool_submit_isolated
 * checked the arguments): 0 with *out and the task function *run, or
 * -ENOTSUP (no processes), -EMSGSIZE, -ENOMEM. */
CTP__HIDDEN int  ctp__iso_new(ctp_pool *pool, ctp_isolated_fn fn,
                              const void *in, size_t in_len,
                              struct ctp__iso **out, ctp_task_fn *run);
/* The outcome of a finished isolated task (RAN for others). */
static inline enum ctp__iso_outcome ctp__iso_outcome(const ctp_task *t)
{
	return t->token.opt.isolated ? ctp__tx(t)->iso->outcome : CTP__ISO_RAN;
}
CTP__HIDDEN void ctp__iso_stats(ctp_pool *pool, ctp_stats *s);
/* Counts a finished isolated task whose outcome is not RAN. */
CTP__HIDDEN void ctp__iso_count(ctp_pool *pool, const ctp_task *t,
                                int status);

/* ---- pool.c ------------------------------------------------------------- */

struct ctp__worker {
	ctp_task       *current;    /* started task, the queue's ref held;
	                               pool->runq.lock */
	uint32_t        current_refs; /* references this worker drops on
	                               `current` when it takes the next one:
	                               the queue's, and the pool's once it
	                               finished it (pool_worker_finished); only
	                               this thread */
	/* statistics written only by this worker (single writer: a relaxed
	 * load and store, no read-modify-write); summed by ctp_pool_stats */
	CTP__LINE _Atomic uint64_t st_completed;
	_Atomic uint32_t st_running; /* 0 or 1 */
	_Atomic uint32_t busy;      /* 1 while it runs user code (a task from
	                               its start until its done returned, or
	                               on_thread_stop): what a shutdown past
	                               its grace may abandon; 2 while it
	                               dispatches an isolated task (killed,
	                               never abandoned: isolated.c); single
	                               writer,
	                               relaxed; its clear is ordered by the
	                               release of `finished` that follows */
	_Atomic uint64_t finished;  /* tasks this worker finished (pool.c,
	                               "Idle"); single writer, seq_cst store */
	/* task objects this worker freed, pushed to pool->freed in batches
	 * (task.c) or taken by its own submits; only this thread touches
	 * them */
	ctp_task       *cache[CTP__NSIZES], *cache_tail[CTP__NSIZES];
	unsigned        ncache[CTP__NSIZES];
	/* tasks whose last reference this worker dropped, still listed under
	 * a parent: detached and freed in one batch (token.c, "Deferred
	 * detach"); only this thread */
	struct ctp__detach_batch detach;
	_Atomic uint32_t park;      /* futex word: 1 while it sleeps unclaimed;
	                               a waker that took it off the idle list
	                               (under runq.lock) stores 0 and wakes it */
	struct ctp__worker *park_next; /* runq.idle; runq.lock */
	/* immutable after create */
	ctp_pool       *pool;
	unsigned        index;
	pthread_t       thread;
	bool            started;    /* pthread_create succeeded */
};

/* Where a task is with respect to its pool's run queue (runq.lock). */
enum ctp__qstate {
	CTP__Q_OUT = 0,   /* holds no slot: not admitted yet, or left */
	CTP__Q_RESERVED,  /* admitted (holds a slot), not yet linked */
	CTP__Q_LINKED,    /* holds a slot and waits in its priority's list */
	CTP__Q_DELAYED,   /* holds a slot and waits in the timer's due heap
	                     (changed only under timer->lock and runq.lock) */
	CTP__Q_HELD,      /* a periodic task a worker took: it keeps its slot
	                     while it runs (runq.held counts these) */
};

/* Priority lists: index = priority - CTP_PRIORITY_LOW; the highest first. */
#define CTP__NPRIO 3

/*
 * The pool's run queue (pool.c, "Queue"): one lock over a FIFO of tasks,
 * the admission count and the idle workers. Whoever moves a task to
 * CTP__Q_OUT gives its slot back: the worker that pops it, or the fire
 * that catches it queued (which unlinks it at once).
 */
struct ctp__runq {
	CTP__LINE pthread_mutex_t lock;
	_Atomic size_t     count;   /* admitted tasks (RESERVED or LINKED);
	                               written under lock, read without it
	                               only by stats (relaxed) */
	size_t             linked;  /* tasks in the lists; lock */
	_Atomic uint64_t   accepted; /* tasks accepted, ever: counted by
	                               admission, with the slot (a submit that
	                               backs out after it takes it back);
	                               written under the lock (a load and a
	                               store), read without it by pool_idle
	                               (seq_cst) and stats (relaxed) */
	/* a second line, read by every submit and take, written seldom
	 * (workers parking and waking): kept apart from the lines the
	 * submitters write (`tail`) and the takers write (`head`) */
	CTP__LINE size_t   capacity; /* immutable: a power of two */
	uint32_t           waking;  /* workers claimed but not yet back under
	                               the lock; lock */
	uint32_t           full_waiters; /* submitters waiting for room; lock */
	_Atomic bool       closed;  /* written under lock (the close); read
	                               without it only as a hint */
	bool               scout;   /* a worker polls `head` before it parks;
	                               lock */
	struct ctp__worker *idle;   /* parked workers not yet claimed; lock */
	/* The CPU cap (pool.c, "Awake workers"): */
	uint32_t           awake;   /* workers neither parked nor the
	                               sentinel (running, polling, or on their
	                               way back after a claim); lock */
	uint32_t           cap;     /* at most this many awake workers are
	                               woken for queued tasks while they make
	                               progress: the CPUs of the pool's
	                               affinity mask (UINT32_MAX when the pool
	                               has no more workers than that);
	                               immutable */
	/* written by every submit (by a take only when it empties a list) */
	CTP__LINE ctp_task *tail[CTP__NPRIO]; /* lock */
	/* the rest, apart from the lines above (those of every submit and
	 * take): */
	CTP__LINE struct ctp__worker *sentinel; /* the worker that looks every
	                               STALL_NS whether the awake ones are
	                               stuck, while a wake is held back by the
	                               cap; lock */
	_Atomic uint32_t   blocked; /* awake workers blocked in a library
	                               wait (ctp__worker_blocked): not counted
	                               against the cap. Changed by the worker
	                               itself (relaxed RMW), read under the
	                               lock as a hint: a
	                               stale value only delays a wake to the
	                               sentinel's next look, or wakes one
	                               worker too many */
	_Atomic size_t     held;    /* periodic tasks in CTP__Q_HELD: they
	                               count in `count` but are not waiting
	                               (stats.queued, the drop step);
	                               written under lock, read without it
	                               only by stats (relaxed) */
	/* what fire calls retired (pool_unqueue: counted with the slots
	 * they give back, in the same lock); written under the lock (a load
	 * and a store), read without it by stats (relaxed); the rest of
	 * each count is in the pool's st_ fields */
	_Atomic uint64_t   st_cancelled, st_timed_out, st_dropped;
	_Atomic uint64_t   st_completed;
	/* on its own line: the scout polls it, and must not pull the lock's
	 * line away from its holder while it does */
	CTP__LINE _Atomic(ctp_task *) head[CTP__NPRIO]; /* lock; peeked
	                               without it (relaxed) by the scout,
	                               which then takes the lock */
	/* bumped after the lock is dropped: */
	CTP__LINE ck_ec32_t not_full; /* a slot released while full_waiters */
	ck_ec32_t          drained;  /* once closed: a slot released or a task
	                               linked (shutdown's drop step waits) */
};

/*
 * The way up. Files call only the layers below them (platform, ring ->
 * token -> queue, proc -> timer -> task -> isolated -> pool); what a lower
 * file must have done above it goes through this one table, which pool.c
 * (the top) fills and every pool points to (pool->up, immutable): a task
 * telling its pool it finished, the timer making tasks due, and a token's
 * fire retiring and completing the tasks it catches (reached through the
 * task's pool).
 */
struct ctp__pool_up {
	/* the last reference went (ctp__pool_put): free the pool */
	void (*free)(ctp_pool *pool);
	/* a thread of the pool (the timer's) exits; drops its reference */
	void (*thread_exit)(ctp_pool *pool);
	/* the end of a fire's complete segment or quiet batch (task.c): its
	 * n tasks' done have returned (or they have none): counts them
	 * finished and lowers the segment's
	 * `finishing` (off the pool's workers, one atomic; on one, its own
	 * count then finishing_done), and wakes idle waiters */
	void (*segment_done)(ctp_pool *pool, uint64_t n);
	/* the calling worker's task is over (its done returned): it leaves
	 * user code, then counts the task finished; the task's pool
	 * reference passes to the worker (dropped at its next lock) */
	void (*worker_finished)(ctp_pool *pool);
	/* a fire call's segment of this pool's tasks caught queued (or a
	 * quiet batch: task.c): begins before any of their slots is given
	 * back, is done once their done returned (task.c); the shutdown
	 * waits for it as for a thread */
	void (*finishing_begin)(ctp_pool *pool);
	void (*finishing_done)(ctp_pool *pool);
	/* the tasks a fire caught queued (b->out, b->nout; b->pool) leave
	 * the run queue: each one still in it (linked, or admitted and not
	 * yet linked) gives its slot back now, and a linked one is unlinked;
	 * its queue reference is then owed (q.ref_owed) and dropped with the
	 * pool's when the fire completes the task (its complete pass, or a
	 * quiet batch's end). The batch's statistics are
	 * counted in the same lock, before any slot is free; one taking of
	 * runq.lock for the lot */
	void (*unqueue)(struct ctp__batch *b);
	/* timer thread, timer->lock held: moves the tasks due by `now` from
	 * the due heap to their priority lists (at most a batch per call) */
	void (*promote)(ctp_pool *pool, int64_t now);
	/* token.c, a fire's work on the task tokens of this pool it meets
	 * (task.c, "transitions and completion"; a token knows no task):
	 * guard the pool before the CAS, retire and complete a task caught
	 * queued in two passes, free an object whose last reference went;
	 * and a waiter ends a timer fire itself (timer.c) */
	bool (*task_guard)(struct ctp__guards *g, const ctp_task *t);
	void (*task_unguard_one)(const ctp_task *t);
	void (*guards_drop)(struct ctp__guards *g);
	void (*task_retire)(ctp_task *t, int reason, struct ctp__batch *b);
	void (*batch_end_retire)(struct ctp__batch *b);
	bool (*task_retire_quiet)(ctp_task *t, int reason,
	                          struct ctp__batch *b);
	void (*batch_end_quiet)(struct ctp__batch *b);
	void (*task_complete_unrun)(ctp_task *t, int reason,
	                            struct ctp__batch *b);
	void (*batch_end_complete)(struct ctp__batch *b);
	/* both passes at once for a fire whose root is a leaf task caught
	 * queued (token.c, ctp__token_fire); lowers the root's guard */
	void (*task_fire_queued)(ctp_task *t, int reason);
	void (*task_free)(ctp_task *t);
	struct ctp__fire *(*timer_claim)(ctp_task *t);
};

/*
 * Fields are grouped by who writes them, one cache line per group, so a
 * submitter and the workers do not pass lines back and forth for counters
 * the other side never touches.
 */
struct ctp_pool {
	struct ctp__runq   runq;       /* admission + the queued tasks */

	/* written by submitters */
	CTP__LINE _Atomic uint64_t st_rejected; /* relaxed */

	/* written by whoever finishes a task (workers, cancellers, timer) */
	/* One word, so that a fire's segment counts its tasks finished and
	 * lowers its guard with one atomic (pool.c, pool_segment_done):
	 *   low 32 bits: fire calls' segments of this pool's tasks caught
	 *     queued whose done has not returned (task.c), with
	 *     FINISHING_WAITER once a shutdown waited for them to end (it
	 *     stays set: later last segments bump finishing_seq and wake);
	 *   high 32 bits: tasks whose done has returned, finished by
	 *     threads other than the pool's workers (each worker counts its
	 *     own), modulo 2^32; unfinished = accepted - all of them. */
	CTP__LINE _Atomic uint64_t finishing;
	_Atomic uint32_t   finishing_seq; /* futex: bumped when the last
	                                  segment ends while FINISHING_WAITER
	                                  is set */
	_Atomic uint64_t   st_cancelled, st_timed_out, st_dropped; /* relaxed */
	_Atomic uint64_t   st_completed; /* periodic series that ran and were
	                                  ended between runs (relaxed) */

	/* rarely written: read on every submit or finish */
	CTP__LINE _Atomic uint32_t idle_waiters; /* threads in wait_idle or the
	                                  drain: finishers then bump idle_seq */
	_Atomic uint32_t   idle_seq;   /* futex word for them */
	_Atomic bool       stopping;   /* cancel step reached: workers exit;
	                                  written under runq.lock, read under
	                                  it by workers (and as a hint by the
	                                  scout) */
	_Atomic uint32_t   stopped;    /* 1 once the first shutdown call has
	                                  ended its cancel step (futex: later
	                                  calls wait for it) */
	_Atomic uint32_t   refs;       /* owner + threads + task objects */
	_Atomic uint32_t   alive;      /* threads not yet exited (futex) */
	_Atomic uint32_t   started;    /* workers past on_thread_start (futex) */
	_Atomic uint32_t   st_threads;
	/* shutdown bookkeeping */
	pthread_mutex_t    lock;
	bool               shutdown_called; /* lock */
	bool               joined;          /* lock: every thread joined or
	                                       (abandoned, at destroy) detached */
	struct ctp__timer  timer;
	/* task free list: a stack of batches (up to CACHE_BATCH objects
	 * each, chained by free_next; batches by free_batch), in two parts
	 * so that workers (which free) never contend with submitters (which
	 * allocate) on a lock, and a submitter takes the lock once per
	 * batch (task.c): */
	struct {
		/* one line each: the sizes' pushers do not share one */
		CTP__LINE _Atomic(ctp_task *) head;
	} freed[CTP__NSIZES];               /* by size: pushed by any thread
	                                       with a CAS; taken whole by an
	                                       allocator (exchange, so no
	                                       ABA); once destroyed:
	                                       CTP__FREED_DEAD */
	CTP__LINE pthread_mutex_t alloc_lock; /* allocators refilling their
	                                       caches among themselves */
	ctp_task          *spare[CTP__NSIZES]; /* alloc_lock: the allocators'
	                                       part, batches */
	/* slabs (task.c, "Slabs"): where new objects are carved from */
	struct ctp__slab  *slabs;           /* the first slab of every chunk
	                                       of the pool, freed with the pool
	                                       (pool_free); alloc_lock */
	char              *chunk_next;      /* the current chunk's next free
	                                       slab; alloc_lock */
	unsigned           chunk_left;      /* its free slabs; alloc_lock */
	unsigned           chunk_slabs;     /* its size in slabs (0: none
	                                       yet); alloc_lock */
	char              *carve[CTP__NSIZES]; /* the next uncarved object's
	                                       allocation start in the
	                                       current slab of that size;
	                                       alloc_lock */
	unsigned           carve_left[CTP__NSIZES]; /* uncarved objects left
	                                       there; alloc_lock */
	/* immutable after create */
	CTP__LINE ctp_pool_opts opts;
	char               name[16];
	uint32_t           gen;     /* fork generation it was made in */
	unsigned           nthreads;
	struct ctp__worker *workers;
	uint64_t          *stall;           /* nthreads slots: the sentinel's
	                                       last look at each worker
	                                       (finished << 1 | busy); runq.lock */
	ctp_task          **scan;           /* nthreads slots: cancel step only,
	                                       run by the first shutdown caller */
	struct ctp__iso_pool *iso;          /* worker processes, or NULL */
	const struct ctp__pool_up *up;      /* pool.c's table */
};

/* A worker of a pool enters (d = 1) or leaves (d = -1) a wait of the
 * library that takes no CPU (a token sleep or queue wait, an isolated
 * task's process): meanwhile it does not count against its pool's CPU cap
 * (pool.c, "Awake workers"). Relaxed: the count is a hint (struct
 * ctp__runq, `blocked`). No-op on other threads. */
static inline void ctp__worker_blocked(int d)
{
	struct ctp__worker *w = ctp__tls.worker;

	if (w != NULL)
		atomic_fetch_add_explicit(&w->pool->runq.blocked,
		    (uint32_t)d, memory_order_relaxed);
}

/* The pool's references (pool->refs): the owner, every thread, every task
 * object. */
static inline void ctp__pool_ref(ctp_pool *pool)
{
	/* the caller holds a reference: relaxed is enough */
	uint32_t old = atomic_fetch_add_explicit(&pool->refs, 1,
	    memory_order_relaxed);

	assert(old != 0);
	(void)old;
}

static inline void ctp__pool_put(ctp_pool *pool)
{
	uint32_t old = atomic_fetch_sub_explicit(&pool->refs, 1,
	    memory_order_acq_rel);

	assert(old != 0);
	if (old == 1)
		pool->up->free(pool);
}

/* The fork generation a token was made in: a task's is its pool's (a
 * task is made only in its pool's process), a standalone or page token's
 * is in its inline ext. */
static inline uint32_t ctp__token_gen(const ctp_token *t)
{
	if (t->kind == CTP__TOKEN_TASK)
		return ctp__task_pool((const ctp_task *)t)->gen;
	return atomic_load_explicit(&((ctp_token *)t)->ext,
	    memory_order_relaxed)->gen;
}

#endif /* CTP_INTERNAL_H */
